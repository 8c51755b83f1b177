"""``gpu_flash_attention`` (``minicomp/schedules/gpu/flash_attention.py``), checked on a CPU and by nvcc.

* **the form** it makes: a query tile per block, K and V tiles through shared memory, the
  scores and the output in per-thread registers, the row max by a warp reduce over the
  threads of a row, two barriers per key tile (three without ``prefetch``);
* **values** against NumPy at awkward sizes (1, 3, 65, 130 queries and keys: multiples of no
  tile; heads of 1, 5, 6, 20, 32; depths of 3 to 32; a scale; causal; float64; a symbolic token count; an empty
  batch) in C (the thread-serial form, ``gpu-serial-c``) and in lockstep (the SIMT form in the
  loop interpreter: threads shuffled, shared memory NaN at each block's start, races
  reported; tiny tiles and sizes);
* **causal attention**: key tiles above the diagonal skipped, the mask loaded on the diagonal only;
* **the rule**: its tiles for the benchmark's shape, causal attention, wide heads and float64,
  what it leaves to ``gpu_threads``, and a record that replays;
* **nvcc**: the kernels compile for sm_90 without spills or stack.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import TensorType, nn
from minicomp.codegen.cuda import render_cuda
from minicomp.ir.loop_text import print_expr, print_stmt
from minicomp.ir.loops import Barrier, If
from minicomp.ir.rewrite import statements
from minicomp.ir.schedule import ScheduleError, apply_schedule, loops
from minicomp.ir.symbolic import Sym
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime import nvcc
from minicomp.schedules import Strategy, schedule
from minicomp.schedules.gpu import flash_attention as fa
from minicomp.schedules.gpu.fuse_threads import fuse_threads
from minicomp.stages import simplify_indices
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.testing.backends import BACKENDS, has_nvcc, load_c
from minicomp.testing.loop_interpreter import SynchronisationError, run_program
from minicomp.workloads import WORKLOADS

CUDA = cuda_target("sm_90")
T, S = Sym.symbol("T"), Sym.symbol("S")
#: tiles small enough for the loop interpreter: 16 threads (4 of a row), runs of 2; odd ones
#: (3 rows a thread: runs of 1; 2 threads a row)
TINY = {"8x8": dict(bq=8, bk=8, tm=2, tn=2), "odd": dict(bq=6, bk=4, tm=3, tn=2),
        "8x8 no prefetch": dict(bq=8, bk=8, tm=2, tn=2, prefetch=False)}
#: tiles for C: the rule's two, and odd ones
TILES = {"float32": fa.FLOAT32_TILES, "small": fa.SMALL_TILES, "odd": dict(bq=24, bk=16, tm=3, tn=4),
         "no prefetch": dict(fa.SMALL_TILES, prefetch=False)}


def sdpa(causal=False, scale=None):
    def attention(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, causal=causal, scale=scale)
    return attention


def lowered(fn, *types):
    """The plain nests of ``fn`` at ``types`` (arrays or TensorTypes), default passes, no schedule."""
    types = [t if isinstance(t, TensorType) else TensorType(t.shape, t.dtype) for t in types]
    return lower(run_pipeline(minicomp.trace(fn, *types).verify())[0])


def attention_kernel(program):
    [kernel] = [k for k in program.kernels if k.pattern == "attention"]
    return kernel


def with_flash(program, **tiles):
    """``program`` with ``gpu_flash_attention(**tiles)`` on its attention kernel and the default
    GPU schedules on the others (a causal mask over a symbolic length is a kernel of its own)."""
    target = attention_kernel(program)
    others = schedule(replace(program, kernels=[k for k in program.kernels if k is not target]), CUDA).kernels
    mine = Strategy("gpu_flash_attention", **tiles).apply(target)
    it = iter(others)
    return replace(program, kernels=[mine if k is target else next(it) for k in program.kernels])


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def qkv(rng, b, sq, sk, d, dv, dtype=np.float32):
    return rand(rng, b, sq, d, dtype=dtype), rand(rng, b, sk, d, dtype=dtype), rand(rng, b, sk, dv, dtype=dtype)


def run_serial_c(program, *arrays):
    return load_c(simplify_indices(program))(*arrays)


def run_simt(program, *arrays, order="reversed"):
    return run_program(fuse_threads(program), *arrays, order=order)


def steps(program) -> list[str]:
    return [str(step) for kernel in program.kernels for step in kernel.schedule]


# ----------------------------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------------------------


def test_the_thread_serial_form():
    program = with_flash(lowered(sdpa(), TensorType((2, 7, 4), "f32"), TensorType((2, 5, 4), "f32"),
                                 TensorType((2, 5, 6), "f32")), **TINY["8x8"])
    printed = str(attention_kernel(program))
    for line in ["gpu_block.x for b in 0..2:", "shared q_s: f32[32]", "shared k_s: f32[32]",
                 "local o_acc: f32[64]",  # 16 threads x 2 rows x 2 head columns (6 padded to 8)
                 "local row_max: f32[32]", "i64 kb_hi = 1", "for kb in 0..1:",
                 "gpu_thread.x for t in 0..16:", "i64 ty = t / 4"]:
        assert line in printed, line
    # the row's 4 threads combine their parts of the tile's max, and at the end of the row sum
    assert "f32 tile_max_row = warp_max(tile_max[(t * 2) + r_3], width=4)" in printed
    assert "f32 row_total = warp_sum(row_sum[(t * 2) + r_5], width=4)" in printed
    # a thread's two rows and two keys are neighbours: ty*2 + r, tx*2 + c
    assert "a_frag[r_1] = q_s[((d * 8) + (ty * 2)) + r_1]" in printed
    # 5 keys, 6 head columns: the tails are guarded; 7 queries: the 8th row's score (no load in
    # it) is computed and never stored
    assert "if j < 5:" in printed and "if e < 6:" in printed and "if i1 < 7:" in printed
    assert "i1 < 7) &&" not in printed


@pytest.mark.parametrize("prefetch, per_key_tile", [(True, 2), (False, 3)])
def test_barriers_per_key_tile(prefetch, per_key_tile):
    """Before P @ V and at the end of the tile; without prefetch also after loading K and V."""
    program = fuse_threads(with_flash(lowered(sdpa(), *[TensorType((1, 20, 8), "f32")] * 3),
                                      **dict(TINY["8x8"], prefetch=prefetch)))
    [key_loop] = [loop for loop in loops(program.kernels[0].body) if loop.var.name == "kb"]
    assert sum(isinstance(s, Barrier) for s in statements(key_loop.body)) == per_key_tile
    assert "local o_acc: f32[4]" in str(program.kernels[0])  # each thread's own registers: 2 rows x 2 columns


def test_a_missing_barrier_before_p_times_v_is_a_race(rng):
    """The lockstep run is a real test of the barriers: without the one between storing P and
    reading it for P @ V, a thread reads P that another has not yet written."""
    q, k, v = qkv(rng, 1, 8, 8, 4, 4)
    program = fuse_threads(with_flash(lowered(sdpa(), q, k, v), **TINY["8x8"]))
    assert_close(run_program(program, q, k, v)[0], sdpa()(q, k, v))
    [key_loop] = [loop for loop in loops(program.kernels[0].body) if loop.var.name == "kb"]
    [tile] = [s.then for s in key_loop.body.stmts if isinstance(s, If)]
    tile.stmts = [s for s in tile.stmts if not isinstance(s, Barrier)]  # (a copy of the program)
    with pytest.raises(SynchronisationError, match=r"p_s\[\d+\] between two barriers"):
        run_program(program, q, k, v)


# ----------------------------------------------------------------------------------------------
# Values: awkward sizes, both forms
# ----------------------------------------------------------------------------------------------

AWKWARD = [(1, 1), (3, 65), (65, 3), (130, 130)]  # (queries, keys)


@pytest.mark.parametrize("name", sorted(TILES))
def test_awkward_sizes_in_c(name, rng):
    """One program over ``T`` queries and ``S`` keys (C compiles slowly what the tiles unroll),
    a head of 20 (padded to whole columns of threads: 3 columns a thread of 8, the last 4 not
    stored), at every awkward size."""
    program = with_flash(lowered(sdpa(), TensorType((2, T, 16), "f32"), TensorType((2, S, 16), "f32"),
                                 TensorType((2, S, 20), "f32")), **TILES[name])
    run = load_c(simplify_indices(program))
    for sq, sk in AWKWARD:
        q, k, v = qkv(rng, 2, sq, sk, 16, 20)
        assert_close(run(q, k, v)[0], sdpa()(q, k, v)), (sq, sk)


@pytest.mark.parametrize("d, dv", [(32, 32), (3, 5)])
def test_static_sizes_and_causal_in_c(d, dv, rng):
    """Static tails (130 = 2 x 64 + 2 queries and keys), causal and not, heads of 32 and of 5."""
    for causal in (False, True):
        q, k, v = qkv(rng, 2, 130, 130, d, dv)
        program = with_flash(lowered(sdpa(causal), q, k, v), **fa.SMALL_TILES)
        assert_close(run_serial_c(program, q, k, v)[0], sdpa(causal)(q, k, v)), causal


def test_a_scale_and_float64_in_c(rng):
    q, k, v = qkv(rng, 3, 33, 65, 16, 24, dtype=np.float64)
    fn = sdpa(scale=0.3)
    assert_close(run_serial_c(with_flash(lowered(fn, q, k, v), **fa.SMALL_TILES), q, k, v)[0], fn(q, k, v))


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_awkward_sizes_in_simt_form(name, dtype, rng):
    for b, sq, sk, d, dv, causal in [(1, 1, 1, 1, 1, False), (2, 3, 9, 3, 5, False), (1, 9, 9, 4, 8, True)]:
        q, k, v = qkv(rng, b, sq, sk, d, dv, dtype)
        program = with_flash(lowered(sdpa(causal), q, k, v), **TINY[name])
        for order in ("reversed", 7):
            assert_close(run_simt(program, q, k, v, order=order)[0], sdpa(causal)(q, k, v)), (sq, sk, order)


def test_a_symbolic_token_count(rng):
    """One program over T tokens (ceil_div blocks and key tiles, every tail guarded, a mask over
    T x T loaded in every tile), at 0, 1, 3, 65 and 130 tokens in C and 1 and 9 in lockstep."""
    for causal in (False, True):
        fn = sdpa(causal)
        program = with_flash(lowered(fn, *[TensorType((2, T, 16), "f32")] * 3), **fa.SMALL_TILES)
        assert isinstance(attention_kernel(program).body.extent, Sym)
        run = load_c(simplify_indices(program))
        assert run(*[rand(rng, 2, 0, 16)] * 3)[0].shape == (2, 0, 16)
        for n in (1, 3, 65, 130):
            q, k, v = (rand(rng, 2, n, 16) for _ in range(3))
            assert_close(run(q, k, v)[0], fn(q, k, v)), (causal, n)
        program = with_flash(lowered(fn, *[TensorType((1, T, 3), "f32")] * 3), **TINY["odd"])
        for n in (1, 9):
            q, k, v = (rand(rng, 1, n, 3) for _ in range(3))
            assert_close(run_simt(program, q, k, v, order=3)[0], fn(q, k, v)), (causal, n)


def test_an_empty_batch(rng):
    q = rand(rng, 0, 5, 8)
    program = with_flash(lowered(sdpa(), q, q, q), **TINY["8x8"])
    assert attention_kernel(program).body.extent == 0
    assert run_serial_c(program, q, q, q)[0].shape == (0, 5, 8)


def test_the_workloads_through_the_gpu_backends():
    """The default schedules end to end: attention (non-causal) and the causal GPT-2 layer."""
    for name in ("attention",):
        workload = WORKLOADS[name]
        args = workload.inputs("tiny", seed=1)
        program = lower(run_pipeline(minicomp.trace(workload.fn, *args))[0])
        assert any(s.startswith("gpu_flash_attention(") for s in steps(schedule(program, CUDA)))
        for backend in ("gpu-serial-c", "gpu-simt-interp"):
            assert_close(BACKENDS[backend].run(program, *args)[0], workload.fn(*args)), backend


# ----------------------------------------------------------------------------------------------
# Causal attention: tiles skipped, the mask loaded on the diagonal only
# ----------------------------------------------------------------------------------------------


def test_causal_tiles_above_the_diagonal_are_skipped(rng):
    q, k, v = qkv(rng, 2, 40, 40, 8, 8)
    program = with_flash(lowered(sdpa(True), q, k, v), **TINY["8x8"])
    printed = str(attention_kernel(program))
    assert "i64 qb = 4 - (b % 5)" in printed  # the longest query tiles first
    assert "i64 kb_lo = 0" in printed and "i64 kb_hi = qb + 1" in printed  # tiles 0..qb: a line, no table
    assert "if (kb_lo <= kb) && (kb < kb_hi):" in printed
    # the mask is read on the diagonal tile only; the others run the score alone
    [mixed] = [s for s in statements(attention_kernel(program).body)
               if isinstance(s, If) and print_expr(s.cond) == "((qb <= kb) && (kb < (qb + 1)))"]
    assert "constant[" in "".join(print_stmt(mixed.then, 0)) and "constant[" not in "".join(print_stmt(mixed.otherwise, 0))
    assert_close(run_serial_c(program, q, k, v)[0], sdpa(True)(q, k, v))


# ----------------------------------------------------------------------------------------------
# The strategy's refusals and the default rule
# ----------------------------------------------------------------------------------------------


def test_refusals(rng):
    q = rand(rng, 2, 9, 8)
    kernel = attention_kernel(lowered(sdpa(), q, q, q))
    for tiles, why in [(dict(bq=8, bk=12, tm=2, tn=2), "power of two"), (dict(bq=8, bk=8, tm=3, tn=2), "must divide"),
                       (dict(bq=2048, bk=32, tm=1, tn=1), "1024"), (dict(bq=0, bk=8, tm=2, tn=2), "positive ints")]:
        with pytest.raises(ScheduleError, match=why):
            Strategy("gpu_flash_attention", **tiles).apply(kernel)
    matmul = lowered(lambda a, b: a @ b, TensorType((8, 8), "f32"), TensorType((8, 8), "f32")).kernels[0]
    with pytest.raises(ScheduleError, match="online softmax"):
        Strategy("gpu_flash_attention", **TINY["8x8"]).apply(matmul)


@pytest.mark.parametrize("fn, shapes, dtype, expected", [
    (WORKLOADS["attention"].fn, [(8, 16, 2048, 64)] * 3, "f32", fa.FLOAT32_TILES),  # the benchmark
    (sdpa(True), [(8, 16, 2048, 64)] * 3, "f32", fa.SMALL_TILES),  # causal: key tiles skipped
    (sdpa(), [(4, 1000, 128)] * 3, "f32", fa.SMALL_TILES),  # a wide head
    (sdpa(), [(4, 40, 64)] * 3, "f32", fa.SMALL_TILES),  # few queries
    (sdpa(), [(4, T, 64)] * 3, "f32", fa.FLOAT32_TILES),
    (sdpa(), [(4, 1000, 64)] * 3, "f64", fa.SMALL_TILES),
    (sdpa(), [(4, 1000, 128)] * 3, "f64", dict(fa.SMALL_TILES, prefetch=False)),
])
def test_the_default_rule(fn, shapes, dtype, expected):
    program = schedule(lowered(fn, *[TensorType(s, dtype) for s in shapes]), CUDA)
    assert steps(program) == [str(Strategy("gpu_flash_attention", **expected))]


def test_what_the_rule_leaves_to_gpu_threads():
    for shapes in ([(2, 50, 200)] * 3, [(2, 50, 8), (2, 50, 8), (2, 50, 130)]):  # head over MAX_HEAD, depth ok
        program = schedule(lowered(sdpa(), *[TensorType(s, "f32") for s in shapes]), CUDA)
        assert steps(program)[-1].startswith("gpu_threads(")


def test_the_record_replays_on_a_fresh_lowering():
    program = lowered(sdpa(True), *[TensorType((2, 300, 32), "f32")] * 3)
    [scheduled] = schedule(program, CUDA).kernels
    assert str(scheduled.schedule[0]).startswith("gpu_flash_attention(")
    assert str(apply_schedule(program.kernels[0], scheduled.schedule)) == str(scheduled)


# ----------------------------------------------------------------------------------------------
# nvcc: compiled for sm_90 without spills
# ----------------------------------------------------------------------------------------------



NVCC_CASES = {  # name -> (fn, shapes, dtype)
    "benchmark": (WORKLOADS["attention"].fn, [(8, 16, 2048, 64)] * 3, "f32"),
    "causal": (sdpa(True), [(8, 16, 2048, 64)] * 3, "f32"),
    "symbolic causal": (sdpa(True), [(8, T, 64)] * 3, "f32"),
    "symbolic": (sdpa(), [(8, T, 64)] * 3, "f32"),
    "tails": (sdpa(), [(2, 200, 64)] * 3, "f32"),  # 200 = 128 + 72 queries, 6 x 32 + 8 keys
    "float64 head 128": (sdpa(), [(4, 1000, 128)] * 3, "f64"),
}


@pytest.mark.skipif(not has_nvcc(), reason="nvcc (the CUDA toolkit) is not installed")
def test_the_kernels_compile_without_spills():
    sources = {}
    for name, (fn, shapes, dtype) in NVCC_CASES.items():
        program = schedule(lowered(fn, *[TensorType(s, dtype) for s in shapes]), CUDA)
        assert steps(program)[-1].startswith("gpu_flash_attention("), name
        sources[name] = render_cuda(simplify_indices(fuse_threads(program)), CUDA)
    cubins = nvcc.build_many([s.text for s in sources.values()], nvcc.arch_of(CUDA))
    for (name, source), cubin in zip(sources.items(), cubins):
        launch = source.launches[-1]
        info = cubin.report[launch.function]
        assert not info.spills and info.stack_bytes == 0 and 0 < info.registers <= 255, (name, info)
        assert launch.threads == 128 and launch.shared_bytes <= CUDA.shared_bytes, (name, launch)
    [launch] = sources["benchmark"].launches
    assert launch.grid == (8 * 16 * 2048 // 128, 1, 1)


@pytest.mark.parametrize("causal", [False, True])
def test_no_queries_against_some_keys(causal, rng):
    """Zero queries (a static ``Sq = 0``): no query tile, so the per-tile key ranges of a causal
    mask are empty lists; the schedule still applies and the result is empty (found by the
    random-graph run in SIMT form)."""
    q, kv = rand(rng, 2, 0, 8), rand(rng, 2, 5, 8)
    fn = sdpa(causal)
    program = with_flash(lowered(fn, q, kv, kv), **TINY["8x8"])
    assert run_serial_c(program, q, kv, kv)[0].shape == (2, 0, 8)
    assert run_simt(program, q, kv, kv)[0].shape == (2, 0, 8)


def test_attention_with_fewer_scores_than_min_scores_keeps_a_thread_per_output(rng):
    """Below ``MIN_SCORES`` scores per (batch, head) the rule leaves attention to
    ``gpu_threads``; at the threshold it takes the tiles."""
    small = lower(run_pipeline(minicomp.trace(sdpa(), *[TensorType((2, 8, 16), "f32")] * 3))[0])
    assert not any(s.startswith("gpu_flash_attention(") for s in steps(schedule(small, CUDA)))
    q, kv = TensorType((2, 8, 16), "f32"), TensorType((2, fa.MIN_SCORES // 8, 16), "f32")
    enough = lower(run_pipeline(minicomp.trace(sdpa(), q, kv, kv))[0])
    assert any(s.startswith("gpu_flash_attention(") for s in steps(schedule(enough, CUDA)))
