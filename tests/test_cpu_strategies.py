"""The CPU strategies of reduce, row, epilogue and scan kernels (``minicomp/schedules/cpu/``).

Lowering writes every reduction one plain way; each strategy recognises that nest and reshapes
it. Here each one is applied by hand, with chosen parameters, to the nest ``lower`` wrote, and
the result is checked against NumPy and against the plain nest: compiled to C, and run by the
loop interpreter (which runs parallel and vectorized loops backwards and fills local arrays
with NaN, so a wrong mark or a read before a write shows every time) wherever the nest calls no
intrinsic. Sizes are the awkward ones: 0, 1, around the lane count and the tiles, every float
and int dtype where the strategy applies. Also: each strategy refuses nests it does not know,
lowering writes no CPU step, and a kernel's recorded steps replayed on a fresh lowering give
the same nest. Last, the default rules' machine-specific numbers (lanes, column blocks, the
rows kept in L2, transposing tiles) for hand-made targets of other machines, and the programs
scheduled for those targets, compiled and run here (their C is portable).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import nn
from minicomp.codegen import gemm
from minicomp.codegen.c import render_c
from minicomp.ir.dtypes import TensorType
from minicomp.ir.loops import Allocate, For, Intrinsic
from minicomp.ir.rewrite import statements
from minicomp.ir.schedule import ScheduleError, apply_schedule
from minicomp.ir.symbolic import Sym
from minicomp.frontend.tracer import trace_with_structure
from minicomp.lower.program import lower, place_scratch
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.executable import Executable
from minicomp.schedules import Strategy, schedule
from minicomp.schedules.cpu.elementwise import tile_size
from minicomp.schedules.cpu.lanes import lane_count
from minicomp.schedules.cpu.reductions import cached_row_bytes, column_block
from minicomp.stages import loop_program
from minicomp.target import Target
from minicomp.testing import assert_close
from minicomp.testing.loop_interpreter import run_program
from minicomp.workloads import WORKLOADS, layernorm
from test_reductions import row_reductions  # sum, mean, max, min along rows

MINE = ("reduce", "row", "epilogue", "scan")  # the patterns these strategies shape
FLOATS = ["float32", "float64", "float16"]
INTS = ["int32", "int64"]


def graph_of(fn, *args):
    """``fn`` traced at the types of ``args`` (arrays or ``TensorType``) after the default passes."""
    types = tuple(a if isinstance(a, TensorType) else TensorType(a.shape, a.dtype) for a in args)
    return run_pipeline(trace_with_structure(fn, types)[0])[0]


def lowered(fn, *arrays):
    """The plain program of ``fn`` at the arrays' types."""
    return lower(graph_of(fn, *arrays))


def shaped(program, steps, pattern: str) -> tuple:
    """``program`` with ``steps`` applied to every kernel of ``pattern`` where they apply (a
    refused step leaves that kernel as it was); and how many kernels took every step."""
    kernels, taken = [], 0
    for kernel in program.kernels:
        if kernel.pattern == pattern:
            try:
                kernel = apply_schedule(kernel, steps)
                taken += 1
            except ScheduleError:
                pass
        kernels.append(kernel)
    return place_scratch(replace(program, kernels=kernels, workspace=dict(program.workspace))), taken


def results(program, arrays, interpret: bool = True) -> list:
    """The program's outputs through C and, where asked, the loop interpreter (they must agree)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        c = Executable(program, render_c(program))(*arrays)
        if interpret:
            assert_close(run_program(program, *arrays), c)
    return c


def check(fn, arrays, steps, pattern: str, interpret: bool = True, applies: bool | None = True):
    """Apply ``steps`` to ``fn``'s plain kernels of ``pattern``; the result equals NumPy's and the
    plain program's. ``applies``: whether at least one kernel must take the steps (None: either)."""
    plain = lowered(fn, *arrays)
    program, taken = shaped(plain, steps, pattern)
    if applies is not None:
        assert (taken > 0) == applies, (taken, [str(k) for k in plain.kernels])
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = fn(*arrays)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    actual = results(program, arrays, interpret)
    assert_close(actual, expected)
    assert_close(actual, results(plain, arrays, interpret=False))
    return program


def sample(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "i":
        return rng.integers(-50, 50, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


LANES_16 = Strategy("lanes", lanes=16)  # a record names its count: the same nest on any machine
IKJ = Strategy("accumulate_in_output")
KEEP = Strategy("keep_operand")


# ----------------------------------------------------------------------------------------------
# Lowering writes plain nests; the default steps replay
# ----------------------------------------------------------------------------------------------


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


T = Sym.symbol("T")
EXTRA = {  # graphs beyond the workloads: each pattern's awkward corners, symbolic sizes
    "int matmul": (lambda a, b: a @ b, TensorType((9, 20), "i32"), TensorType((20, 7), "i32")),
    "matmul, transposed epilogue": (lambda a, b: np.maximum(a @ b, 0).T, TensorType((70, 90), "f32"),
                                    TensorType((90, 130), "f32")),
    "column sums": (lambda x: x.sum(axis=0), TensorType((160, 1000), "f32")),
    "means over axis 1": (lambda x: x.mean(axis=1), TensorType((4, 300, 50), "f32")),
    "logsumexp": (lambda x: np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)), TensorType((64, 300), "f32")),
    "conv NCHW": (lambda x, w: np.maximum(nn.conv2d(x, w, padding=1), 0), TensorType((1, 4, 9, 9), "f32"),
                  TensorType((5, 4, 3, 3), "f32")),
    "conv NHWC": (lambda x, w: nn.conv2d(x, w, layout="NHWC"), TensorType((2, 20, 20, 8), "f32"),
                  TensorType((3, 3, 8, 16), "f32")),
    "cumsum": (lambda x: np.cumsum(x, axis=1), TensorType((512, 300), "f32")),
    "symbolic rows": (softmax, TensorType((T, 40), "f32")),
    "symbolic row length": (softmax, TensorType((40, T), "f32")),
    "symbolic matmul rows": (lambda x, w: np.tanh(x @ w), TensorType((T, 768), "f32"), TensorType((768, 2304), "f32")),
    "symbolic scan": (lambda x: np.cumsum(x, axis=0), TensorType((T, 8), "f32")),
}


def all_graphs():
    for name, workload in WORKLOADS.items():
        for size in ("tiny", "cpu"):
            yield f"{name} {size}", workload.fn, [TensorType(s, "f32") for s in workload.shapes[size].values()]
    for name, (fn, *types) in EXTRA.items():
        yield name, fn, types


GRAPHS = {name: (fn, types) for name, fn, types in all_graphs()}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_lowering_writes_plain_nests_and_the_default_steps_replay(name):
    """``lower`` gives nests with no CPU step; the scheduled kernel's recorded steps, applied to
    a fresh lowering of the same graph, give the same nest (printed: loops, scratch, steps)."""
    fn, types = GRAPHS[name]
    graph = graph_of(fn, *types)
    plain, scheduled = lower(graph), loop_program(graph, stop_after="schedule")
    for kernel in (k for k in plain.kernels if k.pattern in MINE):
        inside = list(statements(kernel.body))
        assert kernel.schedule == [] and kernel.scratch == [], str(kernel)
        assert all(s.kind == "serial" for s in inside if isinstance(s, For)), str(kernel)
        assert not any(isinstance(s, (Allocate, Intrinsic)) for s in inside), str(kernel)
    fresh = lower(graph)
    for done, again in zip(scheduled.kernels, fresh.kernels):
        if done.pattern in MINE:
            assert str(apply_schedule(again, list(done.schedule))) == str(done)


# ----------------------------------------------------------------------------------------------
# lanes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 16, 17, 33])
@pytest.mark.parametrize("lanes", [4, 16])
def test_lanes_split_float_reductions(dtype, n, lanes, rng):
    x = sample(rng, (3, n), dtype)
    x[1, n // 2:] = np.nan if n else x[1, n // 2:]  # a NaN still wins max and min in every lane
    check(row_reductions, [x], [Strategy("lanes", lanes=lanes)], "reduce", applies=n >= lanes)


@pytest.mark.parametrize("dtype", INTS + ["bool"])
def test_lanes_leave_exact_reductions_alone(dtype, rng):
    x = sample(rng, (3, 40), dtype)
    if dtype == "bool":
        check(lambda x: (x.any(axis=-1), x.all(axis=-1)), [x], [LANES_16], "reduce", applies=False)
    else:  # (the mean of integers sums in float64: that one splits)
        check(lambda x: (x.sum(axis=-1), x.max(axis=-1), x.min(axis=-1)), [x], [LANES_16], "reduce", applies=False)


@pytest.mark.parametrize("shape, axes", [((3, 4, 37), (1, 2)), ((3, 4, 37), None), ((5, 33, 2), 1)])
def test_lanes_split_the_innermost_reduction_loop(shape, axes, rng):
    x = sample(rng, shape, "float32")
    check(lambda x: (x.sum(axis=axes), x.max(axis=axes)), [x], [LANES_16], "reduce", applies=None)


def test_lanes_refuse_a_nest_without_a_long_float_reduction():
    [kernel] = lowered(lambda x: x.sum(axis=-1), np.zeros((4, 9), np.float32)).kernels
    with pytest.raises(ScheduleError, match="no float reduction"):
        LANES_16.apply(kernel)
    with pytest.raises(ScheduleError, match="power of two"):
        Strategy("lanes", lanes=12).apply(kernel)


# ----------------------------------------------------------------------------------------------
# accumulate_in_output
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
@pytest.mark.parametrize("shape, axes", [((0, 20), 0), ((1, 20), 0), ((7, 33), 0), ((3, 50, 17), 1),
                                         ((2, 3, 40), (0, 1)), ((5, 0, 3), 1)])
def test_column_reductions_accumulate_in_the_output_row(dtype, shape, axes, rng):
    x = sample(rng, shape, dtype)

    def columns(x):
        if x.dtype == np.bool_:
            return x.any(axis=axes), x.all(axis=axes, keepdims=True)
        out = [x.sum(axis=axes), x.mean(axis=axes, keepdims=True)]
        return tuple(out + ([x.max(axis=axes), x.min(axis=axes)] if x.size else []))

    check(columns, [x], [IKJ], "reduce", applies=None if 0 in shape else True)  # empty: folded to constants


@pytest.mark.parametrize("columns, block", [(40, 16), (1000, 256), (1000, 16), (33, 16)])
def test_column_blocks_cover_every_column_once(columns, block, rng):
    x = sample(rng, (9, columns), "float32")
    program = check(lambda x: (x.sum(axis=0), x.max(axis=0)), [x],
                    [Strategy("accumulate_in_output", column_block=block)], "reduce")
    assert "parallel for i0_b" in str(program)


def test_column_blocks_need_two_blocks_and_the_row_alone(rng):
    [few] = lowered(lambda x: x.sum(axis=0), np.zeros((9, 31), np.float32)).kernels
    with pytest.raises(ScheduleError, match="fewer than two blocks"):
        Strategy("accumulate_in_output", column_block=16).apply(few)
    [other_axes] = lowered(lambda x: x.sum(axis=1), np.zeros((3, 9, 64), np.float32)).kernels
    with pytest.raises(ScheduleError, match="last axis alone"):
        Strategy("accumulate_in_output", column_block=16).apply(other_axes)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
@pytest.mark.parametrize("m, k, n", [(1, 1, 2), (1, 7, 5), (6, 0, 3), (9, 17, 13), (0, 4, 3)])
def test_matmul_in_the_ikj_order(dtype, m, k, n, rng):
    a, b, c = sample(rng, (m, k), dtype), sample(rng, (k, n), dtype), sample(rng, (n,), dtype)
    check(lambda a, b: a @ b, [a, b], [IKJ], "epilogue")
    check(lambda a, b, c: np.maximum(a @ b + c, 0) * 2, [a, b, c], [IKJ], "epilogue")


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_epilogue_ending_in_a_transpose_accumulates_in_scratch(dtype, rng):
    a, b, c = sample(rng, (5, 7), dtype), sample(rng, (7, 11), dtype), sample(rng, (11,), dtype)
    program = check(lambda a, b, c: (a @ b + c).T, [a, b, c], [IKJ], "epilogue")
    [kernel] = program.kernels
    assert [s.name for s in kernel.scratch] == [f"{kernel.output.name}_acc"]
    x = sample(rng, (2, 3, 7), dtype)
    check(lambda x, b: (x @ b * 2).transpose(2, 0, 1), [x, b], [IKJ], "epilogue")


def test_conv_and_batched_matmul_in_the_ikj_order(rng):
    x, w = sample(rng, (2, 3, 6, 5), "float32"), sample(rng, (4, 3, 3, 3), "float32")
    check(lambda x, w: np.maximum(nn.conv2d(x, w, padding=1), 0), [x, w], [IKJ], "epilogue")
    a, b = sample(rng, (3, 4, 5), "float64"), sample(rng, (3, 5, 6), "float64")
    check(lambda a, b: a @ b, [a, b], [IKJ], "epilogue")


def test_accumulate_in_output_refusals():
    [half] = lowered(lambda x: x.sum(axis=0), np.zeros((9, 20), np.float16)).kernels
    with pytest.raises(ScheduleError, match="cannot hold the float32 accumulator"):
        IKJ.apply(half)  # float16 sums in float32: not in its output
    [row] = lowered(softmax, np.zeros((4, 20), np.float32)).kernels
    with pytest.raises(ScheduleError, match="one reduction and its store"):
        IKJ.apply(row)


# ----------------------------------------------------------------------------------------------
# keep_operand
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [2, 15, 16, 17, 40])
def test_softmax_keeps_exp_in_the_output_row(dtype, n, rng):
    x = sample(rng, (5, n), dtype)
    x[1, 0] = np.nan
    program = check(softmax, [x], [KEEP], "row")
    assert str(program).count("exp(") == 1  # computed once, read back by the epilogue
    if n >= 16:
        check(softmax, [x], [KEEP, LANES_16], "row")


@pytest.mark.parametrize("fn", [
    lambda x: np.exp(x) / np.exp(x).sum(axis=(1, 2), keepdims=True),          # two reduced axes
    lambda x: np.exp(x) / (np.exp(x) * 2).sum(axis=-1, keepdims=True),       # a part of the operand
    lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True) + np.exp(x) * x,
    lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True) + np.exp(x)[..., ::-1],  # read elsewhere
])
def test_kept_operand_is_read_back_only_where_it_was_stored(fn, rng):
    check(fn, [sample(rng, (3, 4, 9), "float32")], [KEEP], "row")


@pytest.mark.parametrize("fn, why", [
    (lambda x: (x - x.mean(axis=-1, keepdims=True)) * 2, "no part"),              # nothing with a call
    (lambda x: np.exp(x).sum(axis=-1, keepdims=True) * x, "no part"),              # the epilogue has no exp
    (lambda x: np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True), "ending in a loop"),
])
def test_keep_operand_refusals(fn, why, rng):
    x = sample(rng, (4, 20), "float32")
    [kernel] = lowered(fn, x).kernels
    with pytest.raises(ScheduleError, match=why):
        KEEP.apply(kernel)


# ----------------------------------------------------------------------------------------------
# packed_gemm (C only: the micro-kernel is an intrinsic)
# ----------------------------------------------------------------------------------------------


def gemm_params(dtype, variant: str, parallel: bool = True) -> dict:
    """Small blocks, so that a few rows and columns already cross kc, mc and nc."""
    mr, nr = gemm.tile_shape(dtype)
    return dict(mr=mr, nr=nr, kc=8, mc=2 * mr, nc=2 * nr, a_per_task=variant == "a_per_task",
                b_per_task=variant == "b_per_task", parallel=parallel)


@pytest.mark.parametrize("variant", ["whole", "a_per_task", "b_per_task"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, k, n", [(1, 1, 2), (1, 20, 3), (7, 13, 29), (13, 40, 37), (24, 9, 50)])
def test_packed_gemm_variants_on_awkward_shapes(variant, dtype, m, k, n, rng):
    a, b, c = sample(rng, (m, k), dtype), sample(rng, (k, n), dtype), sample(rng, (n,), dtype)
    step = Strategy("packed_gemm", **gemm_params(dtype, variant, parallel=m % 2 == 0))
    check(lambda a, b: a @ b, [a, b], [step], "epilogue", interpret=False)
    check(lambda a, b, c: np.tanh(a @ b + c), [a, b, c], [step], "epilogue", interpret=False)
    check(lambda a, b, c: np.maximum(a @ b + c, 0).T, [a, b, c], [step], "epilogue", interpret=False)


@pytest.mark.parametrize("variant", ["whole", "b_per_task"])
def test_packed_gemm_batched_and_conv(variant, rng):
    step = Strategy("packed_gemm", **gemm_params("float32", variant))
    x, w = sample(rng, (2, 9, 11, 5), "float32"), sample(rng, (3, 3, 5, 7), "float32")
    check(lambda x, w: nn.conv2d(x, w, padding=1, layout="NHWC"), [x, w], [step], "epilogue", interpret=False)
    a, b = sample(rng, (3, 10, 20), "float32"), sample(rng, (20, 30), "float32")
    check(lambda a, b: (a @ b * 2).transpose(2, 0, 1), [a, b], [step], "epilogue", interpret=False)


def test_packed_gemm_refusals():
    params = gemm_params("float32", "whole")
    [ints] = lowered(lambda a, b: a @ b, np.zeros((9, 8), np.int32), np.zeros((8, 7), np.int32)).kernels
    [floats] = lowered(lambda a, b: a @ b, np.zeros((9, 8), np.float32), np.zeros((8, 7), np.float32)).kernels
    with pytest.raises(ScheduleError, match="no float matmul"):
        Strategy("packed_gemm", **params).apply(ints)
    with pytest.raises(ScheduleError, match="mc a multiple of mr"):
        Strategy("packed_gemm", **(params | {"mc": params["mr"] + 1})).apply(floats)
    with pytest.raises(ScheduleError, match="two different variants"):
        Strategy("packed_gemm", **(params | {"a_per_task": True, "b_per_task": True})).apply(floats)
    [symbolic] = lower(graph_of(lambda a, b: a @ b, TensorType((T, 8), "f32"), TensorType((8, 7), "f32"))).kernels
    packed = Strategy("packed_gemm", **params).apply(symbolic)  # symbolic sizes: every variant (test_gemm_symbolic.py)
    assert "mc_gemm_" in str(packed) and "((T + 5)/6)" in str(packed)


# ----------------------------------------------------------------------------------------------
# parallel_rows, and Parallel on scans
# ----------------------------------------------------------------------------------------------


def test_parallel_rows_on_plain_nests(rng):
    x = sample(rng, (6, 20), "float32")
    program = check(softmax, [x], [Strategy("parallel_rows"), KEEP, LANES_16], "row")
    assert str(program).count("parallel for i0") == 1
    check(lambda x: x.T.sum(axis=1) * 2, [x], [Strategy("parallel_rows")], "reduce")
    a, b = sample(rng, (6, 5), "float32"), sample(rng, (5, 7), "float32")
    check(lambda a, b: (a @ b).T, [a, b], [Strategy("parallel_rows"), IKJ], "epilogue")


def test_parallel_rows_refusals(rng):
    a, b = sample(rng, (6, 5), "float32"), sample(rng, (5, 7), "float32")
    [ikj] = lowered(lambda a, b: a @ b, a, b).kernels
    with pytest.raises(ScheduleError, match="reads"):
        Strategy("parallel_rows").apply(IKJ.apply(ikj))  # accumulates in its output
    [scan] = lowered(lambda x: np.cumsum(x, axis=1), a).kernels
    with pytest.raises(ScheduleError, match="reads"):
        Strategy("parallel_rows").apply(scan)


def test_rows_of_symbolic_length_run_in_parallel(rng):
    f = minicomp.jit(softmax, dynamic={"x": [1]})
    for n in (1, 17, 300):
        x = sample(rng, (200, n), "float32")
        assert_close(f(x), softmax(x))
    [kernel] = f.inspect(x).program.kernels
    assert [str(s) for s in kernel.schedule][:1] == ["parallel_rows()"]


@pytest.mark.parametrize("shape, axis", [((300, 500), 1), ((0, 4), 1), ((5, 1), 0), ((3, 600, 100), 1)])
def test_scans_run_their_outer_loop_in_parallel(shape, axis, rng):
    x = sample(rng, shape, "float32")
    graph = graph_of(lambda x: np.cumsum(x, axis=axis), x)
    program = loop_program(graph)
    [kernel] = program.kernels
    assert_close(results(program, [x], interpret=x.size < 20000), [np.cumsum(x, axis=axis)])
    assert (kernel.schedule != []) == (x.size >= 1 << 17 and axis > 0)


# ----------------------------------------------------------------------------------------------
# The machine-specific numbers are rules of the Target: other machines, by hand
# ----------------------------------------------------------------------------------------------

KiB, MiB = 1 << 10, 1 << 20
AVX512 = Target(isa="avx512", vector_bytes=64, loop_vector_bytes=64, vector_registers=32,  # -mprefer-vector-width=512
                l1_bytes=48 * KiB, l2_bytes=2 * MiB)
MACHINES = {  # name -> (target, lanes, column block, longest row kept, transposing tile), worked out by hand
    "avx512, 512-bit loops": (AVX512, 32, 512, 1 * MiB, 16),
    "avx512, 256-bit loops": (replace(AVX512, loop_vector_bytes=32), 16, 256, 1 * MiB, 16),  # gcc's usual tuning
    "avx2": (Target(isa="avx2", vector_bytes=32, vector_registers=16, l2_bytes=512 * KiB), 16, 256, 256 * KiB, 16),
    "sse": (Target(isa="sse", vector_bytes=16, vector_registers=16), 8, 128, 128 * KiB, 16),
    "loops not vectorised": (Target(isa="avx2", vector_bytes=32, loop_vector_bytes=0), 8, 128, 128 * KiB, 16),
    "128-byte lines": (Target(isa="neon", vector_bytes=16, vector_registers=32, l2_bytes=4 * MiB, line_bytes=128),
                       8, 128, 2 * MiB, 32),
}


@pytest.mark.parametrize("name", list(MACHINES))
def test_the_rules_give_each_machine_its_numbers(name):
    target, lanes, block, row_bytes, tile = MACHINES[name]
    assert lane_count(target) == lanes
    assert column_block(target) == block
    assert cached_row_bytes(target) == row_bytes
    assert tile_size(target) == tile


def scheduled_for(target: Target, fn, *arrays):
    """``fn``'s program at the arrays' types with the default schedules of ``target``."""
    return schedule(lowered(fn, *arrays), target)


def steps_of(program, pattern: str) -> list[str]:
    return [str(step) for kernel in program.kernels if kernel.pattern == pattern for step in kernel.schedule]


@pytest.mark.parametrize("name", list(MACHINES))
@pytest.mark.parametrize("n", [1, 7, 33, 1000])
def test_rows_scheduled_for_other_machines_run_here(name, n, rng):
    """Softmax, layer norm and row reductions with another machine's lane count: split exactly
    where a row has that many elements, and NumPy's results from the C built here."""
    target, lanes = MACHINES[name][:2]
    x = sample(rng, (5, n), "float32")
    for fn, arrays, pattern in [(softmax, [x], "row"), (layernorm, [x, x[0], x[1]], "row"),
                                (row_reductions, [x], "reduce")]:
        program = scheduled_for(target, fn, *arrays)
        assert (f"lanes(lanes={lanes})" in steps_of(program, pattern)) == (n >= lanes), steps_of(program, pattern)
        assert_close(results(program, arrays, interpret=n < 1000), list(fn(*arrays)) if pattern == "reduce"
                     else [fn(*arrays)])


@pytest.mark.parametrize("name", list(MACHINES))
def test_column_blocks_and_kept_rows_scheduled_for_other_machines_run_here(name, rng):
    """Column sums in tasks of the machine's column block (2100 columns: two blocks even of
    512), and a softmax row of 600 KiB kept in the output only where half of L2 holds it."""
    target, lanes, block, row_bytes = MACHINES[name][:4]
    x = sample(rng, (64, 2100), "float32")
    program = scheduled_for(target, lambda x: (x.sum(axis=0), x.max(axis=0)), x)
    assert f"accumulate_in_output(column_block={block})" in steps_of(program, "reduce")
    assert_close(results(program, [x], interpret=False), [x.sum(axis=0), x.max(axis=0)])
    wide = sample(rng, (2, 150_000), "float32")
    program = scheduled_for(target, softmax, wide)
    assert ("keep_operand()" in steps_of(program, "row")) == (wide.shape[1] * 4 <= row_bytes)
    assert_close(results(program, [wide], interpret=False), [softmax(wide)])


@pytest.mark.parametrize("name", ["avx2", "128-byte lines"])
@pytest.mark.parametrize("shape, perm", [((40, 70), (1, 0)), ((2, 33, 47, 20), (0, 3, 1, 2))])
def test_transposes_tiled_for_other_line_sizes_run_here(name, shape, perm, rng):
    """A transposing copy in tiles of one cache line of float32 per side: 16 x 16 with 64-byte
    lines, 32 x 32 with 128-byte ones (where both loops are that long), and NumPy's result."""
    target, tile = MACHINES[name][0], MACHINES[name][4]
    x = sample(rng, shape, "float32")

    def fn(x):
        return np.maximum(x.transpose(perm), 0) * 3

    program = scheduled_for(target, fn, x)
    tiles = [step for step in steps_of(program, "elemwise") if step.startswith("tile(")]
    # the output's innermost loop and the one the input is contiguous along (its last axis)
    assert len(tiles) == (shape[perm[-1]] >= tile and shape[-1] >= tile), steps_of(program, "elemwise")
    assert all(f", {tile}, {tile})" in step for step in tiles)
    assert_close(results(program, [x]), [fn(x)])
