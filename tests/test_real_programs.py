"""NumPy programs written the way other people write them (``tests/programs/``) compile unchanged
under ``@minicomp.jit`` and match NumPy: results, written arguments (a KV cache) and the shapes
of what they return (tuples of gradient lists). Small sizes here; ``minicomp bench
tests/programs/FILE.py:FUNC --args-from tests/programs/FILE.py:make_args`` times the real ones."""

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp.errors import MinicompWarning
from minicomp.testing import assert_close
from minicomp.testing.backends import cuda_available

sys.path.insert(0, str(Path(__file__).resolve().parent))
from programs import cnn_im2col, gpt2_state_dict, llama_block, training_step  # noqa: E402


def same_tree(got, want):
    """``got`` has ``want``'s nesting (tuple vs list included) and matches it leaf by leaf."""
    assert type(got) is type(want) or (np.isscalar(want) and np.ndim(got) == 0), (type(got), type(want))
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            same_tree(g, w)
    else:
        assert_close(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)


def test_gpt2_embedding_and_block_from_a_flat_state_dict():
    f = minicomp.jit(gpt2_state_dict.embed_and_block)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)  # no fallback to static sizes
        for batch, seq in [(2, 16), (2, 9), (2, 1), (2, 30)]:  # the second length: one symbolic compile
            args = gpt2_state_dict.make_args(batch=batch, seq=seq, n_embd=64, n_head=4, n_vocab=101, n_ctx=32)
            same_tree(f(**args), gpt2_state_dict.embed_and_block(**args))
    assert f.cache_size == 2


def test_llama_block_prefill_then_decode_writes_the_kv_cache_as_numpy():
    ours = llama_block.make_args(batch=2, seq=7, dim=64, n_heads=4, n_kv_heads=2, hidden=96, max_seq=16)
    theirs = copy.deepcopy(ours)
    f = minicomp.jit(llama_block.llama_block)
    same_tree(f(**ours), llama_block.llama_block(**theirs))  # the prompt: 7 positions, causal mask
    rng = np.random.default_rng(1)
    for position in range(7, 12):  # one token at a time
        x = rng.standard_normal((2, 1, 64)).astype(np.float32)
        ours.update(x=x, start_pos=position)
        theirs.update(x=x.copy(), start_pos=position)
        same_tree(f(**ours), llama_block.llama_block(**theirs))
        for cache in ("cache_k", "cache_v"):  # written in place, as NumPy wrote them
            assert_close(ours[cache], theirs[cache], rtol=1e-5, atol=1e-6)
    assert np.abs(ours["cache_k"][:, 12:]).max() == 0  # nothing written past the last position
    assert f.cache_size == 2  # the prompt; then one compile with start_pos as a size for every step


def test_cnn_with_pad_and_im2col_fancy_indexing():
    f = minicomp.jit(cnn_im2col.cnn_forward)
    for batch in (3, 1):
        args = cnn_im2col.make_args(batch=batch, size=8, channels=3, filters=(4, 8), classes=5)
        same_tree(f(**args), cnn_im2col.cnn_forward(**args))
    graph = str(f.trace(**args))
    assert "gather" in graph and "pad" not in graph.split("{")[0]  # im2col is a gather of the padded input


def test_training_step_returns_loss_and_a_tuple_of_gradient_lists():
    f = minicomp.jit(training_step.train_step, dynamic=False)  # probs[range(N), y] needs N's value
    for batch in (32, 5):
        args = training_step.make_args(batch=batch, sizes=(20, 16, 12, 4))
        got, want = f(**args), training_step.train_step(**args)
        assert isinstance(got, tuple) and isinstance(got[1], tuple) and isinstance(got[1][0], list)
        same_tree(got, want)


@pytest.mark.parametrize("module, function", [(gpt2_state_dict, "embed_and_block"), (llama_block, "llama_block"),
                                              (cnn_im2col, "cnn_forward"), (training_step, "train_step")])
def test_each_program_runs_unchanged_in_numpy_at_its_benchmark_size(module, function):
    """The bench sizes of ``make_args`` are valid for the program itself (a cheap NumPy call of
    each, so that ``minicomp bench ... --args-from`` is known to work)."""
    if module is gpt2_state_dict:
        args = module.make_args(seq=8)
    elif module is llama_block:
        args = module.make_args(seq=4)
    else:
        args = module.make_args()
    result = getattr(module, function)(**args)
    assert np.all(np.isfinite(np.asarray(result[0] if isinstance(result, tuple) else result)))


# -- the same programs through the GPU schedules -----------------------------------------------------

GPU_TARGETS = [pytest.param("gpu-serial-c", id="gpu-serial-c"),  # their thread-serial form, as C: here and in CI
               pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
                   cuda_available() is not None, reason=f"needs a GPU: {cuda_available()}")])]


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_the_programs_through_the_gpu_schedules(target):
    """Each program compiled for a GPU target, unchanged: the GPT-2 block (symbolic sequence
    length), the llama block writing its KV cache in place (prefill, then decode steps), the CNN's
    im2col gather and the training step's tuple of gradient lists."""
    gpt2 = minicomp.jit(gpt2_state_dict.embed_and_block, target=target)
    for seq in (9, 16):
        args = gpt2_state_dict.make_args(batch=2, seq=seq, n_embd=64, n_head=4, n_vocab=101, n_ctx=32)
        same_tree(gpt2(**args), gpt2_state_dict.embed_and_block(**args))

    ours = llama_block.make_args(batch=2, seq=7, dim=64, n_heads=4, n_kv_heads=2, hidden=96, max_seq=16)
    theirs = copy.deepcopy(ours)
    llama = minicomp.jit(llama_block.llama_block, target=target)
    same_tree(llama(**ours), llama_block.llama_block(**theirs))
    for position in (7, 8):
        x = np.random.default_rng(position).standard_normal((2, 1, 64)).astype(np.float32)
        ours.update(x=x, start_pos=position)
        theirs.update(x=x.copy(), start_pos=position)
        same_tree(llama(**ours), llama_block.llama_block(**theirs))
    for cache in ("cache_k", "cache_v"):
        assert_close(ours[cache], theirs[cache], rtol=1e-5, atol=1e-6)

    args = cnn_im2col.make_args(batch=3, size=8, channels=3, filters=(4, 8), classes=5)
    same_tree(minicomp.jit(cnn_im2col.cnn_forward, target=target)(**args), cnn_im2col.cnn_forward(**args))

    args = training_step.make_args(batch=5, sizes=(20, 16, 12, 4))
    step = minicomp.jit(training_step.train_step, target=target, dynamic=False)
    same_tree(step(**args), training_step.train_step(**args))
