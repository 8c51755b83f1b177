"""The packed matmul (``schedules/cpu/packed_gemm.py``) over symbolic sizes, and its tile sizes
read from the ``Target``.

* **symbolic sizes**: each variant (A and B packed whole, ``a_per_task``, ``b_per_task``)
  forced by a ``Strategy`` record on a nest whose rows, columns, outermost reduction axis, two
  row axes or batch axis is symbolic, compiled once and run at sizes 0 to 300 (not multiples of
  the tiles or blocks) in C and in the loop interpreter, against NumPy; the epilogues (bias and
  GELU; a transposed output) over symbolic rows; the default rule packs a symbolic matmul
  (one compile serves every size);
* **the cache rules**: ``k_block``, ``cache_blocks``, ``a_pack_limit``, ``b_task_panels`` on
  hand-made targets (an AVX-512 Sapphire Rapids, an SSE machine, a 1-core machine: numbers
  worked out by hand below), and the matmul scheduled for those targets replayed here where
  this machine's vectors divide the target's micro-kernel tile.

The blocks of the forced records are small (``kc`` 8, ``mc`` two micro-kernel panels, ``nc`` two
NR panels), so that these sizes cross every block with a partial last one.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp.codegen import gemm
from minicomp.codegen.c import render_c
from minicomp.errors import MinicompWarning
from minicomp.frontend.tracer import trace_with_structure
from minicomp.ir.dtypes import TensorType
from minicomp.ir.loops import For
from minicomp.ir.schedule import ScheduleError, map_stmt, schedule_program
from minicomp.ir.symbolic import Sym, ceil_div
from minicomp.lower.program import lower, place_scratch
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.executable import Executable
from minicomp.schedules import Strategy
from minicomp.schedules.cpu.packed_gemm import (a_pack_limit, b_task_panels, balanced, cache_blocks,
                                                default_tiling, find_matmul, k_block, packed_gemm_steps)
from minicomp.stages import loop_program, simplify_indices
from minicomp.target import KiB, MiB, Target
from minicomp.testing import assert_close
from minicomp.workloads import gelu

F32, F64 = np.float32, np.float64
T, B = Sym.symbol("T"), Sym.symbol("B")
SIZES = [0, 1, 5, 7, 13, 64, 100, 300]  # empty, one, around MR = 6 and NR, past every block
MR, NR = gemm.tile_shape(F32)  # this machine's micro-kernel tile: the forced records render here
K, N = 20, 2 * NR + 5  # static sizes: K crosses kc = 8 twice, N crosses nc = 2*NR with a partial panel

VARIANTS = {"A and B packed whole": {}, "a_per_task": {"a_per_task": True}, "b_per_task": {"b_per_task": True}}


def variant_step(variant: str) -> Strategy:
    """A ``packed_gemm`` record of ``variant`` with small blocks (see the module docstring)."""
    return Strategy("packed_gemm", mr=MR, nr=NR, kc=8, mc=2 * MR, nc=2 * NR, **VARIANTS[variant])


def graph_of(fn, *types: TensorType):
    """``fn`` traced at ``types`` (symbolic sizes allowed), after the default graph passes."""
    return run_pipeline(trace_with_structure(fn, types)[0])[0]


def forced(fn, types, step: Strategy):
    """``fn``'s program at ``types`` with ``step`` on its matmul kernel (it must take it), then
    the index simplification the compiler runs after scheduling."""
    plain = lower(graph_of(fn, *types))
    [kernel] = [k for k in plain.kernels if find_matmul(k) is not None]
    program = place_scratch(schedule_program(plain, {kernel.name: [step]}))
    [scheduled] = [k for k in program.kernels if k.name == kernel.name]
    assert [s.name for s in scheduled.schedule] == ["packed_gemm"] and "mc_gemm_" in str(scheduled)
    return simplify_indices(program)


def runs_like_numpy(backend, program, fn, shapes_at, sizes=SIZES, dtype=F32):
    """``program`` (one compile) matches ``fn`` in NumPy at each size of ``sizes``."""
    rng = np.random.default_rng(0)
    for n in sizes:
        args = [rng.standard_normal(shape).astype(dtype) for shape in shapes_at(n)]
        with np.errstate(all="ignore"):
            assert_close(backend.run(program, *args), [fn(*args)])


def matmul(a, b):
    return a @ b


GPU_BACKENDS = ("gpu-serial-c", "gpu-simt-interp", "cuda")


def only_once_on_a_gpu_backend(backend, variant: str) -> None:
    """The GPU backends schedule the program's graph afresh for a GPU: the forced CPU variant
    never reaches them, so they run its sizes once (with the first variant), not per variant."""
    if backend.name in GPU_BACKENDS and variant != next(iter(VARIANTS)):
        pytest.skip(f"{backend.name} schedules the graph for a GPU: the CPU variant {variant!r} does not reach it "
                    f"(run with {next(iter(VARIANTS))!r})")


# The symbolic axis -> (argument types, their shapes at size n). "rows": M = T; "columns": N = T;
# "reduction": K = T; "two row axes": M = 3*T, (3, T, K) @ (K, N); "batch": (T, 7, 9) @ (T, 9, NR + 3),
# smaller matrices, as there are up to 300 of them.
SYMBOLIC_AXES = {
    "rows": ([(T, K), (K, N)], lambda n: [(n, K), (K, N)]),
    "columns": ([(13, K), (K, T)], lambda n: [(13, K), (K, n)]),
    "reduction": ([(13, T), (T, N)], lambda n: [(13, n), (n, N)]),
    "two row axes": ([(3, T, K), (K, N)], lambda n: [(3, n, K), (K, N)]),
    "batch": ([(T, 7, 9), (T, 9, NR + 3)], lambda n: [(n, 7, 9), (n, 9, NR + 3)]),
}


@pytest.mark.parametrize("axis", list(SYMBOLIC_AXES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_runs_over_every_symbolic_axis(backend, variant, axis):
    only_once_on_a_gpu_backend(backend, variant)
    types, shapes_at = SYMBOLIC_AXES[axis]
    program = forced(matmul, [TensorType(shape, "f32") for shape in types], variant_step(variant))
    runs_like_numpy(backend, program, matmul, shapes_at)


def test_symbolic_counts_are_ceil_divisions_and_the_buffers_of_b_stay_static():
    """Over a symbolic M, N and K the counts of blocks are ``ceil_div``s (C: ``((T + 5)/6)``);
    packed B and the per-task buffers keep their static sizes; packed A is ``ceil(T/MR)*MR*kc``."""
    program = forced(matmul, [TensorType((T, T), "f32"), TensorType((T, T), "f32")], variant_step("A and B packed whole"))
    [kernel] = program.kernels
    text = str(kernel)
    for divisor in (MR, 2 * MR, 2 * NR, 8):  # row panels, row blocks, column blocks, k blocks
        assert f"(T + {divisor - 1})/{divisor})" in text
    sizes = {buffer.name: buffer.size for buffer in kernel.scratch}
    assert sizes[f"{kernel.output.name}_bpack"] == 8 * 2 * NR
    assert sizes[f"{kernel.output.name}_apack"] == ceil_div(T, MR) * MR * 8
    assert "if T == 0:" in text  # K = 0 at a call: the plain nest stores the zeros


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_epilogues_over_symbolic_rows(backend, variant):
    only_once_on_a_gpu_backend(backend, variant)
    """Bias and GELU on each finished tile, and an epilogue ending in a transpose (the tiles
    accumulate in a scratch buffer of T x N, stored moved), over symbolic rows."""
    types = [TensorType((T, K), "f32"), TensorType((K, N), "f32"), TensorType((N,), "f32")]

    def shapes_at(n):
        return [(n, K), (K, N), (N,)]

    for fn in (lambda x, w, b: gelu(x @ w + b), lambda x, w, b: np.maximum(x @ w + b, 0).T):
        runs_like_numpy(backend, forced(fn, types, variant_step(variant)), fn, shapes_at, sizes=[0, 1, 7, 13, 100])


def test_float64_over_two_symbolic_sizes(backend):
    mr, nr = gemm.tile_shape(F64)
    step = Strategy("packed_gemm", mr=mr, nr=nr, kc=8, mc=2 * mr, nc=2 * nr)
    program = forced(matmul, [TensorType((B, T, 9), "f64"), TensorType((9, T), "f64")], step)
    runs_like_numpy(backend, program, matmul, lambda n: [(2, n, 9), (9, n)], sizes=[1, 7, 2 * nr + 1], dtype=F64)


def test_a_symbolic_inner_reduction_axis_is_refused():
    """Only the outermost (blocked) reduction axis may be symbolic: conv's window is not."""
    from minicomp import nn

    types = [TensorType((2, 9, 9, 4), "f32"), TensorType((3, 3, 4, 8), "f32")]
    [kernel] = lower(graph_of(lambda x, w: nn.conv2d(x, w, layout="NHWC"), *types)).kernels
    inner = find_matmul(kernel).shape.red[-1][0]
    window = map_stmt(kernel.body, lambda s: For(s.var, T, s.body) if isinstance(s, For) and s.var is inner else None)
    kernel = replace(kernel, body=window)
    assert find_matmul(kernel).shape.red[-1][1] == T
    with pytest.raises(ScheduleError, match="inner reduction axis"):
        variant_step("a_per_task").apply(kernel)
    assert packed_gemm_steps(kernel, Target()) == []


# -- the default rule over symbolic sizes ----------------------------------------------------------


AVX2_2_CORES = Target(isa="avx2", vector_bytes=32, vector_registers=16, cores=2, l1_bytes=32 * KiB, l2_bytes=512 * KiB)


@pytest.mark.parametrize("types, variant", [
    ([(T, 256), (256, 200)], "b_per_task=True"),     # 13 panels of 16, at least 4 per core
    ([(T, 512), (512, 100)], "a_per_task=True"),     # 7 panels: too few to be the tasks
    ([(2, T, 256), (256, T)], "a_per_task=True"),    # M and N symbolic
    ([(300, 256), (256, T)], "a_per_task=False, b_per_task=False"),  # A (300 x 256) fits two L2s: packed whole
    ([(3000, 256), (256, T)], "a_per_task=True"),    # A does not
    ([(100, T), (T, 200)], "b_per_task=True"),       # K symbolic: kc values per block as ever
])
def test_the_default_rule_packs_symbolic_sizes(types, variant):
    """For the 2-core AVX2 machine of the cache rules, every symbolic case gets a variant that
    holds for every size: symbolic M takes B's panels as tasks where there are at least 4 per
    core, else each task packs its own rows; a symbolic N packs A whole only where it is small."""
    graph = graph_of(matmul, *(TensorType(shape, "f32") for shape in types))
    [kernel] = loop_program(graph, AVX2_2_CORES, stop_after="schedule").kernels
    [step] = kernel.schedule
    assert step.name == "packed_gemm" and variant in str(step) and "# schedule: packed_gemm(" in str(kernel)


def test_a_jitted_symbolic_matmul_is_packed_once_for_every_size():
    """The jit's default schedule over dynamic rows and columns: packed, one compile, NumPy's values."""
    f = minicomp.jit(lambda x, w, b: gelu(x @ w + b), dynamic={"x": [0], "w": [1], "b": [0]})
    rng = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)  # no fallback to static sizes
        for m, n in [(1, 5), (5, 7), (13, 64), (100, 300), (300, 13)]:  # (a size-1 N compiles apart: it broadcasts)
            x, w, b = rng.standard_normal((m, 256), F32), rng.standard_normal((256, n), F32), rng.standard_normal(n, F32)
            assert_close(f(x, w, b), f.fn(x, w, b))
    assert f.cache_size == 1
    [kernel] = f.inspect(x, w, b).program.kernels
    assert [step.name for step in kernel.schedule] == ["packed_gemm"] and "mc_gemm_" in f.inspect(x, w, b).source


# -- the cache rules, from the Target ----------------------------------------------------------------


SAPPHIRE_RAPIDS = Target(isa="avx512", vector_bytes=64, vector_registers=32, cores=56, l1_bytes=48 * KiB,
                         l2_bytes=2 * MiB)
SSE_4_CORES = Target(isa="sse", vector_bytes=16, vector_registers=16, cores=4, l1_bytes=32 * KiB, l2_bytes=256 * KiB)
AVX2_1_CORE = Target(isa="avx2", vector_bytes=32, vector_registers=16, cores=1, l1_bytes=16 * KiB, l2_bytes=256 * KiB)


@pytest.mark.parametrize("target, dtype, expected", [
    # kc = (3/4 L1) / (nr * itemsize), to a multiple of 8; mc = (L2/2) / (kc * itemsize), to a
    # multiple of 6; nc = 3 L2 / (kc * itemsize), to a multiple of nr
    (AVX2_2_CORES, F32, (6, 16, 384, 168, 1024)),         # 24576/64; 262144/1536 = 170; 1572864/1536
    (AVX2_2_CORES, F64, (6, 8, 384, 84, 512)),            # 24576/64; 262144/3072 = 85;  1572864/3072
    (SAPPHIRE_RAPIDS, F32, (6, 64, 144, 1818, 10880)),    # 36864/256; 1048576/576 = 1820; 6291456/576 = 10922
    (SAPPHIRE_RAPIDS, F64, (6, 32, 144, 906, 5440)),      # 36864/256; 1048576/1152 = 910; 6291456/1152 = 5461
    (SSE_4_CORES, F32, (6, 8, 768, 42, 256)),             # 24576/32; 131072/3072 = 42; 786432/3072
    (SSE_4_CORES, F64, (6, 4, 768, 18, 128)),             # 24576/32; 131072/6144 = 21; 786432/6144
    (AVX2_1_CORE, F32, (6, 16, 192, 168, 1024)),          # 12288/64; 131072/768 = 170; 786432/768
])
def test_cache_blocks_follow_the_target(target, dtype, expected):
    mr, nr = gemm.tile_shape(dtype, target)
    assert (mr, nr, *cache_blocks(target, dtype, mr, nr)) == expected


def test_who_packs_what_follows_the_target():
    assert [a_pack_limit(t) for t in (AVX2_2_CORES, SAPPHIRE_RAPIDS, SSE_4_CORES)] == [MiB, 4 * MiB, 512 * KiB]
    assert [b_task_panels(t) for t in (AVX2_2_CORES, SAPPHIRE_RAPIDS, AVX2_1_CORE)] == [8, 224, 4]


def test_the_reduction_block_is_clamped():
    """3/4 of a 4 KiB L1 over 64 float32 columns is 12: kc stays at 64; a 2 MiB L1 would give
    6144: kc stops at 1024; 3/4 of 33 KiB over 16 float32 is 396, rounded down to 392."""
    assert k_block(Target(l1_bytes=4 * KiB), 64, 4) == 64
    assert k_block(Target(l1_bytes=2 * MiB), 16, 4) == 1024
    assert k_block(Target(l1_bytes=33 * KiB), 16, 4) == 392


@pytest.mark.parametrize("target, variant", [
    (SAPPHIRE_RAPIDS, "a_per_task=False, b_per_task=False"),  # 11 panels of 64, far from 224; A is 169 KiB
    (SSE_4_CORES, "a_per_task=True"),                         # A 300 x 500 floats: 586 KiB > two 256 KiB L2s
    (AVX2_1_CORE, "b_per_task=True"),                         # 44 panels of 16, at least 4
    (AVX2_2_CORES, "b_per_task=True"),
])
def test_a_matmul_scheduled_for_another_machine_replays_here(target, variant):
    """(300 x 500) @ (500 x 700) scheduled for each hand-made target takes the variant its rules
    give; the record renders here where this machine's vectors divide the target's NR, and
    matches NumPy."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 500), F32), rng.standard_normal((500, 700), F32)
    program = loop_program(graph_of(matmul, TensorType(a.shape, "f32"), TensorType(b.shape, "f32")), target)
    [kernel] = program.kernels
    [step] = kernel.schedule
    mr, nr = gemm.tile_shape(F32, target)
    kc, _, _ = cache_blocks(target, F32, mr, nr)
    assert (step["mr"], step["nr"], step["kc"]) == (mr, nr, kc) and variant in str(step)
    if nr % (gemm.vector_bytes() // 4):
        pytest.skip(f"this machine's vectors do not divide NR = {nr}")
    assert_close(Executable(program, render_c(program))(a, b)[0], a @ b)


def test_row_blocks_are_the_tasks_of_a_per_task_so_they_share_out_over_the_cores():
    """An A of 8000 x 1024 float32 is packed per task on both machines, and a_per_task's tasks
    are the row blocks: Sapphire Rapids' half-L2 block (1818 rows) would make 5 tasks for 56
    cores, so mc shrinks to 56 blocks of 144 rows; the 2-core machine's 48 blocks of 168 rows
    share out evenly as they are. 1024 rows on 2 cores: 8 blocks of 132, not 7 of 150, which
    left one core a whole block more (measured 6-9% slower on the benchmark's matmul)."""
    graph = graph_of(matmul, TensorType((8000, 1024), "f32"), TensorType((1024, 1024), "f32"))
    found = find_matmul(lower(graph).kernels[0])
    for target, mc in ((SAPPHIRE_RAPIDS, 144), (AVX2_2_CORES, 168)):
        tiles = default_tiling(found.shape, F32, target)
        assert tiles["a_per_task"] and tiles["mc"] == mc
    assert balanced(168, 6, 1024, tasks=2) == 132 and balanced(168, 6, 1024) == 150
    assert balanced(168, 6, 256) == 132 and balanced(168, 6, 13, tasks=56) == 6  # one panel a task at most
