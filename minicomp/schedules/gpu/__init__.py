"""The default GPU schedules: which steps each pattern of kernel gets on a CUDA target.

Every GPU schedule produces the *thread-serial form* (``fuse_threads.py``): loops bound to
blocks and threads, each thread's work serial inside, barrier phases as sibling thread
loops. On a CPU that form is plain loops (the C renderer runs it, MCUDA-style); the
``fuse_threads`` stage turns it into the SIMT form the CUDA renderer writes.

``DEFAULTS[pattern]`` lists the rules, in order; each looks at the kernel (as the rules before
it left it) and the target and returns the steps to apply:

* ``reduce`` and ``row``: ``gpu_row_reduce`` (a warp or a block per row: ``row_reduce.py``)
  where the reduction runs along contiguous memory over at least a warp's worth of elements;
* ``epilogue``: ``gpu_sgemm`` (shared-memory tiles, a register tile per thread: ``sgemm.py``)
  for float32/float64 matmuls, batched matmuls, their epilogues and NHWC convolutions above a
  small amount of work;
* every pattern (and what the rule before left unbound): ``gpu_threads``, a thread per
  iteration of the independent output loops (``threads.py``): elementwise, broadcast,
  gather, column and scalar reductions, scans, small matmuls, and attention that
  ``gpu_flash_attention`` refuses;
* ``attention``: ``gpu_flash_attention`` (FlashAttention-2 tiles: a block per query tile, K and
  V through shared memory, the online softmax in registers: ``flash_attention.py``).

A kernel every rule refuses keeps its plain nest, which ``fuse_threads`` then refuses.
"""

from __future__ import annotations

from .flash_attention import gpu_flash_attention_steps  # (importing each module registers its strategy)
from .row_reduce import gpu_row_reduce_steps
from .sgemm import gpu_sgemm_steps
from .threads import gpu_threads_steps

#: the fusion patterns (``minicomp.passes.fusion``) and None: a kernel lowering gave no pattern
PATTERNS = ("elemwise", "reduce", "row", "epilogue", "scan", "attention", None)

DEFAULTS = {pattern: [gpu_threads_steps] for pattern in PATTERNS}
DEFAULTS["reduce"] = [gpu_row_reduce_steps, gpu_threads_steps]
DEFAULTS["row"] = [gpu_row_reduce_steps, gpu_threads_steps]
DEFAULTS["epilogue"] = [gpu_sgemm_steps, gpu_threads_steps]
DEFAULTS["attention"] = [gpu_flash_attention_steps, gpu_threads_steps]
