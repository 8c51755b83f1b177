"""Re-creations of NumPy programs as other people write them (GPT-2 with weights in dicts, a
LLaMA block with a KV cache, a CNN with im2col, a training step): plain NumPy, compiled unchanged
by ``tests/test_real_programs.py``, and timed with ``minicomp bench FILE.py:FUNC --args-from
FILE.py:make_args``."""
