"""The GPU schedules, checked on a CPU: the thread-serial form in C, the SIMT form in the interpreter.

* **strategies** (``minicomp.schedules.gpu``): ``gpu_threads`` (a thread per independent
  output position, a ``ceil_div`` grid for a symbolic size, grid-stride past CUDA's 2^31-1
  blocks, one thread where nothing is independent) and ``gpu_row_reduce`` (a warp or a block
  per row): what they make, what they refuse, that their records replay, which one the
  default rules pick;
* **rows** of softmax, layer norm and sums at 1, 31, 32, 33, 1000 and 4097 columns and 0, 1 and
  more rows, through every row schedule, in C (thread-serial form) and in the loop
  interpreter (SIMT form: threads shuffled or last to first, shared memory NaN at each block's
  start, races reported); float16, float64, int32 and bool rows; symbolic sizes;
* **fuse_threads**: the SIMT form it makes (barriers where they protect something), and the
  thread-serial form it refuses to guess at;
* **the C meaning of a warp reduce** is bit for bit the butterfly of the SIMT form;
* **the nine workloads** through both, and **random graphs** (``minicomp fuzz``'s generator)
  through the GPU schedules in C.

Every op of the op tests also runs through both (``tests/conftest.py``: the ``backend``
fixture's ``gpu-serial-c`` and ``gpu-simt-interp``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minicomp
from minicomp import TensorType
from minicomp.codegen.c import render_c
from minicomp.errors import CompileError, MinicompWarning
from minicomp.ir.loops import (BOOL, Allocate, Barrier, Binary, Block, Buffer, Const, For, If, Load,
                               Store, Var, WarpReduce)
from minicomp.ir.schedule import Parallel, ScheduleError, loops
from minicomp.ir.symbolic import Sym
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.schedules import Strategy, schedule
from minicomp.schedules.gpu.fuse_threads import ThreadFormError, fuse_threads
from minicomp.runtime import nvcc
from minicomp.stages import loop_program, run_stages, simplify_indices, stage_names
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.testing.backends import BACKENDS, cuda_available, has_nvcc, load_c
from minicomp.testing import fuzz
from minicomp.testing.fuzz import FuzzOptions, fuzz_command, run_fuzz
from minicomp.testing.loop_interpreter import SynchronisationError, ThreadOrder, run_program
from minicomp.workloads import WORKLOADS, _block_shapes, random_argument

CUDA = cuda_target("sm_90")
F32 = np.dtype(np.float32)
T = Sym.symbol("T")
ORDERS = ["reversed", 7]  # last to first; a fresh shuffle at every step from seed 7


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5)


def row_sum(x):
    return x.sum(axis=-1)


ROW_KERNELS = {"softmax": softmax, "layernorm": layernorm, "sum": row_sum}


def optimised(fn, *types):
    """``fn`` traced at ``types`` (``TensorType`` s or arrays), after the default passes."""
    types = [t if isinstance(t, TensorType) else TensorType(t.shape, t.dtype) for t in types]
    return run_pipeline(minicomp.trace(fn, *types).verify())[0]


def lowered(fn, *types):
    """The plain nests of ``fn`` (default passes, no schedule)."""
    return lower(optimised(fn, *types))


def scheduled(program, *steps):
    """``program`` (one kernel) with ``steps`` applied to its kernel."""
    [kernel] = program.kernels
    for step in steps:
        kernel = step.apply(kernel)
    return replace(program, kernels=[kernel])


def run_serial_c(program, *arrays):
    """A program in thread-serial form, indices simplified, rendered to C and run."""
    return load_c(simplify_indices(program))(*arrays)


def run_simt(program, *arrays, order="reversed"):
    """A program in thread-serial form, fused to the SIMT form and run in the loop interpreter."""
    return run_program(fuse_threads(program), *arrays, order=order)


def text(program) -> str:
    return "\n".join(str(k) for k in program.kernels)


def kernel_text(program) -> str:
    """The first kernel's loops and statements, without its header lines."""
    return "\n".join(line for line in str(program.kernels[0]).splitlines()
                     if not line.startswith(("kernel ", "#")) and not line.lstrip().startswith("# schedule"))


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# gpu_threads
# ----------------------------------------------------------------------------------------------


def test_gpu_threads_gives_each_position_a_thread_and_guards_the_last_block(rng):
    program = scheduled(lowered(lambda x, y: x + y, TensorType((5, 70), "f32"), TensorType((70,), "f32")),
                        Strategy("gpu_threads", threads=64))
    assert kernel_text(program) == """\
  gpu_block.x for b in 0..6:
    gpu_thread.x for t in 0..64:
      if ((b * 64) + t) < 350:
        add[(b * 64) + t] = x[(b * 64) + t] + y[((b * 64) + t) % 70]"""
    x, y = rand(rng, 5, 70), rand(rng, 70)
    for out in (run_serial_c(program, x, y), run_simt(program, x, y, order=7)):
        assert_close(out[0], x + y)


def test_a_symbolic_size_gives_a_ceil_div_grid(rng):
    program = schedule(lowered(lambda x, y: x + y, TensorType((T, 3), "f32"), TensorType((3,), "f32")), CUDA)
    block = program.kernels[0].body
    assert block.kind == "gpu_block" and isinstance(block.extent, Sym) and str(block.extent) == "((3*T + 255)/256)"
    run = load_c(simplify_indices(program))
    for rows in (0, 1, 100):
        x, y = rand(rng, rows, 3), rand(rng, 3)
        assert_close(run(x, y)[0], x + y)
    x, y = rand(rng, 2, 3), rand(rng, 3)
    assert_close(run_simt(program, x, y)[0], x + y)


def test_the_grid_never_has_more_than_2_31_blocks(rng):
    huge = schedule(lowered(np.negative, TensorType((2**20, 2**22), "f32")), CUDA).kernels[0]  # 2 x 4 a thread
    assert str(huge.schedule[-1]) == "gpu_threads(threads=256, lanes=4, groups=2)"
    assert [(loop.kind, loop.extent) for loop in loops(huge.body)][:3] == [
        ("gpu_block", 2**31 - 1), ("gpu_thread", 256), ("serial", 2)]  # grid-stride rounds inside the thread
    # the same with a small cap, run: 11 blocks' worth over 3 blocks of 32 threads, 4 rounds
    program = scheduled(lowered(np.negative, TensorType((7, 50), "f32")),
                        Strategy("gpu_threads", threads=32, max_blocks=3))
    assert [(loop.kind, loop.extent) for loop in loops(program.kernels[0].body)] == [
        ("gpu_block", 3), ("gpu_thread", 32), ("serial", 4)]
    x = rand(rng, 7, 50)
    for out in (run_serial_c(program, x), run_simt(program, x, order=3)):
        assert_close(out[0], -x)


def test_a_kernel_with_no_independent_loop_runs_in_one_thread(rng):
    x = rand(rng, 40)
    for fn in (np.cumsum, np.sum):
        program = scheduled(lowered(fn, x), Strategy("gpu_threads"))
        assert [(loop.kind, loop.extent) for loop in loops(program.kernels[0].body)][:2] == [
            ("gpu_block", 1), ("gpu_thread", 1)]
        for out in (run_serial_c(program, x), run_simt(program, x)):
            assert_close(out[0], fn(x))


def test_gpu_threads_refuses_what_is_no_plain_nest_and_bad_parameters():
    program = lowered(np.negative, TensorType((5, 70), "f32"))
    with pytest.raises(ScheduleError, match="i0 is parallel: not a plain nest"):
        scheduled(program, Parallel("i0"), Strategy("gpu_threads"))
    with pytest.raises(ScheduleError, match="bound to blockIdx"):
        scheduled(program, Strategy("gpu_threads"), Strategy("gpu_threads"))
    for threads in (0, 2048, "256"):
        with pytest.raises(ScheduleError, match="threads must be an int in 1..1024"):
            scheduled(program, Strategy("gpu_threads", threads=threads))


# ----------------------------------------------------------------------------------------------
# gpu_row_reduce
# ----------------------------------------------------------------------------------------------


def test_a_block_per_row_reduces_in_warps_then_in_shared_memory():
    program = scheduled(lowered(row_sum, TensorType((4, 1000), "f32")), Strategy("gpu_row_reduce", threads=64))
    printed = kernel_text(program)
    assert printed.startswith("""\
  gpu_block.x for b in 0..4:
    local acc_part: f32[64]
    shared acc_warps: f32[32]
    gpu_thread.x for t in 0..64:
      f32 acc = 0.0_f32
      for c in 0..16:
        if ((c * 64) + t) < 1000:
          acc = acc + x[((b * 1000) + (c * 64)) + t]
      acc_part[t] = acc
    gpu_thread.x for t in 0..64:
      f32 acc_warp = warp_sum(acc_part[t])""")
    assert printed.endswith("""\
    gpu_thread.x for t in 0..64:
      if t < 32:
        f32 acc_block = warp_sum(acc_warps[t])
        if t == 0:
          f32 acc = acc_block
          sum[b] = acc""")


def test_a_warp_per_row_several_rows_a_block():
    program = scheduled(lowered(softmax, TensorType((5, 100), "f32")),
                        Strategy("gpu_row_reduce", threads=32, rows_per_block=2))
    printed = kernel_text(program)
    assert printed.startswith("  gpu_block.x for b in 0..3:\n") and "shared" not in printed
    assert printed.count("gpu_thread.y for w in 0..2:") == 5  # max, its warp reduce, sum, its warp reduce, epilogue
    assert printed.count("if ((b * 2) + w) < 5:") == 5  # the last block's second row is past the end
    simt = text(fuse_threads(program))
    assert "barrier" not in simt  # warps only talk through shuffles: no barrier protects anything
    assert "local acc_max_part: f32[1]" in simt


def test_rows_past_the_grid_loop_over_rounds_of_blocks(rng):
    """More rows than blocks (``max_blocks``, 2^31-1 by default): each block takes rows
    ``b``, ``b + blocks``, ... in a uniform loop around its phases."""
    x = rand(rng, 7, 40)
    for threads, rows_per_block in ((64, 1), (32, 2)):
        program = scheduled(lowered(softmax, x), Strategy("gpu_row_reduce", threads=threads,
                                                          rows_per_block=rows_per_block, max_blocks=2))
        block = program.kernels[0].body
        assert block.extent == 2 and isinstance(block.body.stmts[-1], For)  # the rounds
        for out in (run_serial_c(program, x), run_simt(program, x, order=4)):
            assert_close(out[0], softmax(x))


def test_row_reduce_refuses_what_it_does_not_know():
    def refused(fn, dtype, why, **params):
        program = lowered(fn, TensorType((3, 40), dtype))
        with pytest.raises(ScheduleError, match=why):
            scheduled(program, Strategy("gpu_row_reduce", **params))

    refused(np.negative, "f32", "no scalar reduction")
    refused(lambda x: x.max(axis=-1), "f16", r"combines by max \(first wins\)")
    refused(lambda x: x.any(axis=-1), "bool", "accumulates in bool")
    refused(lambda x: np.cumsum(x, axis=-1), "f32", "a row holds a statement other than")
    refused(row_sum, "f32", "threads must be one of", threads=48)
    refused(row_sum, "f32", "several rows per block need a warp per row", rows_per_block=2)
    refused(row_sum, "f32", "rows_per_block must be", threads=32, rows_per_block=64)


@pytest.mark.parametrize("fn", [softmax, layernorm, row_sum, lambda x: x.sum(axis=0), np.cumsum])
def test_the_records_replay_on_a_fresh_lowering(fn):
    types = [TensorType((5, 1000), "f32")] if fn is not np.cumsum else [TensorType((50,), "f32")]
    program = schedule(lowered(fn, *types), CUDA)
    [kernel] = program.kernels
    assert kernel.schedule and all(isinstance(step, Strategy) for step in kernel.schedule)
    assert str(scheduled(lowered(fn, *types), *kernel.schedule).kernels[0]) == str(kernel)


@pytest.mark.parametrize("fn, shape, dtype, chosen", [
    (softmax, (13, 1000), "f32", "gpu_row_reduce(threads=32, rows_per_block=8, keep_row=True, lanes=4)"),
    (softmax, (3, 1000), "f32", "gpu_row_reduce(threads=32, rows_per_block=4, keep_row=True, lanes=4)"),
    (softmax, (3, 1000), "f64", "gpu_row_reduce(threads=32, rows_per_block=4, keep_row=True, lanes=2)"),
    (layernorm, (3, 4097), "f32", "gpu_row_reduce(threads=256, rows_per_block=1, keep_row=True)"),  # odd: no groups
    (layernorm, (3, 1000), "f16", "gpu_row_reduce(threads=32, rows_per_block=4, keep_row=True)"),  # no half4
    (softmax, (2, 20000), "f32", "gpu_row_reduce(threads=1024, rows_per_block=1)"),  # 20 values a thread: too many
    (softmax, (2, T), "f32", "gpu_row_reduce(threads=256, rows_per_block=1)"),  # a share of unknown size
    (row_sum, (2, 10000), "f32", "gpu_row_reduce(threads=1024, rows_per_block=1)"),
    (row_sum, (7, (T)), "f32", "gpu_row_reduce(threads=256, rows_per_block=1)"),
    (lambda x: x.sum(), (40, 100), "f32", "gpu_row_reduce(threads=256, rows_per_block=1)"),
    (row_sum, (300, 31), "f32", "gpu_threads(threads=256)"),  # short rows: a thread per row
    (lambda x: x.sum(axis=0), (100, 30), "f32", "gpu_threads(threads=32)"),  # strided: a thread per column
    (lambda x: x.max(axis=-1), (5, 100), "f16", "gpu_threads(threads=32)"),  # first-wins max
    (lambda x: x @ x, (20, 20), "f32", "gpu_threads(threads=256)"),
    (np.exp, (3, 5), "f32", "gpu_threads(threads=32, lanes=4)"),  # 4 consecutive elements a thread
    (np.exp, (3, 5), "f64", "gpu_threads(threads=32, lanes=2)"),
    (np.exp, (3, 5), "f16", "gpu_threads(threads=32)"),
])
def test_the_default_rules(fn, shape, dtype, chosen):
    program = schedule(lowered(fn, TensorType(shape, dtype)), CUDA)
    assert [str(step) for step in program.kernels[-1].schedule] == [chosen]


def test_every_kernel_of_the_nine_workloads_runs_on_blocks_and_threads():
    for name, workload in WORKLOADS.items():
        program = loop_program(optimised(workload.fn, *workload.inputs("tiny")), CUDA, stop_after="fuse_threads")
        for kernel in program.kernels:
            assert kernel.body.kind == "gpu_block", (name, kernel.name)


# ----------------------------------------------------------------------------------------------
# Rows: every schedule, awkward sizes, both forms
# ----------------------------------------------------------------------------------------------

ROW_SCHEDULES = {  # name -> steps (None: the default rules)
    "default": None,
    "warp": [Strategy("gpu_row_reduce", threads=32)],
    "warps of 4 rows": [Strategy("gpu_row_reduce", threads=32, rows_per_block=4)],
    "block": [Strategy("gpu_row_reduce", threads=256)],
}


def row_program(kernel: str, rows, cols: int, steps):
    program = lowered(ROW_KERNELS[kernel], TensorType((rows, cols), "f32"))
    return schedule(program, CUDA) if steps is None else scheduled(program, *steps)


@pytest.mark.parametrize("cols", [1, 31, 32, 33, 1000, 4097])
@pytest.mark.parametrize("kernel", sorted(ROW_KERNELS))
def test_rows_in_c(kernel, cols, rng):
    """Rows of every awkward length through each row schedule in C, over a symbolic number of
    rows: 0, 1 and 5 rows through the same code."""
    fn = ROW_KERNELS[kernel]
    for name, steps in ROW_SCHEDULES.items():
        run = load_c(simplify_indices(row_program(kernel, T, cols, steps)))
        for rows in (0, 1, 5):
            x = rand(rng, rows, cols)
            assert_close(run(x)[0], fn(x)), (name, rows)


@pytest.mark.parametrize("name", sorted(ROW_SCHEDULES))
@pytest.mark.parametrize("kernel", sorted(ROW_KERNELS))
def test_rows_in_simt_form(kernel, name, rng):
    """The same in lockstep: threads shuffled and last to first, shared memory NaN at each
    block's start (a read before the write shows), races reported."""
    fn, steps = ROW_KERNELS[kernel], ROW_SCHEDULES[name]
    for rows, cols in [(0, 33), (1, 31), (3, 33), (5, 64)]:
        program = row_program(kernel, rows, cols, steps)
        x = rand(rng, rows, cols)
        for order in ORDERS:
            assert_close(run_simt(program, x, order=order)[0], fn(x)), (rows, cols, order)


@pytest.mark.parametrize("cols", [1000, 4097])
def test_long_rows_in_simt_form(cols, rng):
    x = rand(rng, 1, cols)
    for steps in (None, [Strategy("gpu_row_reduce", threads=128)]):
        assert_close(run_simt(row_program("softmax", 1, cols, steps), x, order=5)[0], softmax(x))


@pytest.mark.parametrize("fn, dtype", [
    (softmax, np.float16), (softmax, np.float64), (layernorm, np.float64), (row_sum, np.int32),
    (lambda x: x.max(axis=-1), np.int32), (lambda x: x.min(axis=-1), np.float16),
    (lambda x: x.any(axis=-1), np.bool_), (lambda x: x.mean(axis=-1), np.int32)])
def test_row_dtypes(fn, dtype, rng):
    x = rng.standard_normal((3, 40)) * 4
    x = (x > 0) if dtype == np.bool_ else x.astype(dtype)
    program = schedule(lowered(fn, x), CUDA)
    assert_close(run_serial_c(program, x)[0], fn(x))
    assert_close(run_simt(program, x, order=1)[0], fn(x))


def test_nan_and_signed_zeros_in_row_reductions(rng):
    x = rand(rng, 4, 100)
    x[1, 57], x[2] = np.nan, 0.0
    x[2, ::3] = -0.0
    for fn in (lambda v: v.max(axis=-1), lambda v: v.min(axis=-1), softmax):
        for steps in ([Strategy("gpu_row_reduce", threads=32)], [Strategy("gpu_row_reduce", threads=64)]):
            program = scheduled(lowered(fn, x), *steps)
            for out in (run_serial_c(program, x), run_simt(program, x)):
                assert_close(out[0], fn(x))


@settings(max_examples=25, deadline=None)
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40), data=st.data())
def test_any_reduction_through_the_row_schedules(shape, data):
    """Whatever the axes, dtype and row schedule: ``gpu_row_reduce`` gives each output element
    a warp or a block (the default rules keep it for contiguous rows of 32 and more, which
    small random shapes seldom are)."""
    dtype = data.draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    op = data.draw(st.sampled_from(["sum", "max", "min", "mean"]))
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple))
    if op in ("max", "min") and any(shape[a] == 0 for a in axes):
        axes = tuple(a for a in axes if shape[a])  # NumPy refuses max of nothing
        if not axes:
            return
    threads, rows = data.draw(st.sampled_from([(32, 1), (32, 2), (32, 8), (64, 1), (128, 1)]))
    x = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(-9, 10, shape).astype(dtype)
    fn = lambda v: getattr(np, op)(v, axis=axes)  # noqa: E731
    program = scheduled(lowered(fn, x), Strategy("gpu_row_reduce", threads=threads, rows_per_block=rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of nothing
        expected = fn(x)
    assert_close(run_serial_c(program, x)[0], expected)
    if x.size <= 2000:
        assert_close(run_simt(program, x, order=data.draw(st.integers(0, 99)))[0], expected)


def test_symbolic_sizes_through_jit():
    """One compile of the GPU schedules serves every size (``jit(dynamic=...)``)."""
    def bias_gelu(x, b):
        return 0.5 * (x + b) * (1 + np.tanh(x + b))

    rng = np.random.default_rng(0)
    cases = [(softmax, {"x": [0, 1]}, lambda n: [rand(rng, n, n + 3)]),
             (layernorm, {"x": [0, 1]}, lambda n: [rand(rng, 3, n)]),
             (bias_gelu, {"x": [0]}, lambda n: [rand(rng, n, 5), rand(rng, 5)])]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)  # no fallback to static sizes
        for fn, dynamic, make in cases:
            jitted = minicomp.jit(fn, target="gpu-serial-c", dynamic=dynamic)
            for n in (1, 2, 7, 33, 100):
                args = make(n)
                assert_close(jitted(*args), fn(*args))
            assert jitted.cache_size == 1


def test_the_simt_form_is_a_jit_target(rng):
    """``target="gpu-simt-interp"`` (what ``minicomp fuzz --target gpu-simt-interp`` and its
    reproducers compile for): the SIMT form in the loop interpreter, any argument layout in."""
    x = rand(rng, 40, 6).T  # a transposed view: rows of 40, strided
    for order in (None, "reversed"):
        options = {} if order is None else {"order": order}
        assert_close(minicomp.jit(softmax, target="gpu-simt-interp", **options)(x), softmax(x))
    with pytest.raises(minicomp.MinicompError, match="target 'gpu-simt-interp' takes only order="):
        minicomp.jit(softmax, target="gpu-simt-interp", threads=64)(x)


def test_symbolic_sizes_in_simt_form(rng):
    program = schedule(lowered(layernorm, TensorType((T, 37), "f32")), CUDA)
    for rows in (0, 2):
        x = rand(rng, rows, 37)
        assert_close(run_simt(program, x, order=2)[0], layernorm(x))


# ----------------------------------------------------------------------------------------------
# fuse_threads
# ----------------------------------------------------------------------------------------------


def test_fuse_threads_makes_one_thread_loop_with_barriers_where_threads_talk():
    program = fuse_threads(scheduled(lowered(layernorm, TensorType((4, 2000), "f32")),
                                     Strategy("gpu_row_reduce", threads=256)))
    block = program.kernels[0].body
    allocations, thread = block.body.stmts[:-1], block.body.stmts[-1]
    assert [(a.buffer.name, a.scope, a.buffer.shape) for a in allocations] == [
        ("acc_mean_warps", "shared", (32,)), ("acc_mean_1_warps", "shared", (32,))]
    assert thread.kind == "gpu_thread" and not any(loop.kind.startswith("gpu") for loop in loops(thread.body))
    stmts = thread.body.stmts
    assert [(s.buffer.name, s.scope, s.buffer.shape) for s in stmts[:3]] == [
        ("acc_mean_part", "local", (1,)), ("acc_mean_partials", "local", (1,)), ("acc_mean_row", "local", (1,))]
    # per reduction: partials -> warp reduce (no barrier: shuffles) | every warp's final warp reduce,
    # whose value each thread keeps in registers (no barrier)
    assert sum(isinstance(s, Barrier) for s in stmts) == 2
    assert "acc_mean_part[0] = acc_mean" in kernel_text(program)


def test_the_stages_of_a_cuda_target():
    graph = optimised(softmax, TensorType((4, 100), "f32"))
    assert stage_names("simplify_indices", target=CUDA) == ["lower", "schedule", "fuse_threads", "simplify_indices"]
    assert "fuse_threads" not in stage_names()  # a CPU target runs no such stage
    serial, simt = (loop_program(graph, CUDA, stop_after=stop) for stop in ("schedule", "fuse_threads"))
    assert text(serial).count("gpu_thread") > text(simt).count("gpu_thread") == 2  # y and x, once
    assert text(fuse_threads(serial)) == text(simt)
    with pytest.raises(ValueError, match="stop_after must be one of lower, schedule, simplify_indices"):
        loop_program(graph, stop_after="fuse_threads")


def negative_64():
    """A lowered program x: f32[64] -> out: f32[64], its input and output buffers."""
    program = lowered(np.negative, TensorType((64,), "f32"))
    return program, program.inputs[0], program.outputs[0]


def hand_built(program, phases: list, allocations: list = (), blocks: int = 2):
    """``program`` (one kernel) with the kernel's body ``phases`` at block level."""
    [kernel] = program.kernels
    body = For(Var("b"), blocks, Block(list(allocations) + list(phases)), "gpu_block", "x")
    return replace(program, kernels=[replace(kernel, body=body, schedule=[])])


def phase(stmt_of_t, threads: int = 32, name: str = "t"):
    t = Var(name)
    return For(t, threads, stmt_of_t(t), "gpu_thread", "x")


def test_fuse_threads_refuses_what_is_not_in_thread_serial_form():
    program, x, out = negative_64()
    shared, own = Buffer("s", F32, (32,)), Buffer("v", F32, (32,))
    copy = phase(lambda t: Store(out, t, Load(x, t)))

    def refused(prog, why):
        with pytest.raises(ThreadFormError, match=why):
            fuse_threads(prog)

    refused(program, "its body is not a gpu_block loop")
    refused(hand_built(program, [copy, phase(lambda t: Store(out, t, Load(x, t)), threads=64)]),
            "its phases run different thread loops")
    refused(hand_built(program, [phase(lambda t: Block([Store(out, t, Load(x, t)), Barrier()]))]), "a barrier inside a phase")
    refused(hand_built(program, [Store(out, Const(0), Load(x, Const(0))), copy]), "a Store at block level")
    refused(hand_built(program, [If(Binary("<", Load(out, Const(0)), Load(x, Const(0)), BOOL), copy)]),
            "reads neg, which the kernel writes")
    refused(hand_built(program, [phase(lambda t: Block([WarpReduce(Var("r", F32), "sum", Load(x, Const(0)), 32),
                                               Store(out, t, Var("r", F32))]))]),
            r"reduces x\[0\]: in a phase a warp reduce's value is buf\[e \+ t\]")
    refused(hand_built(program, [phase(lambda t: Block([Store(shared, t, Load(x, t)),
                                               WarpReduce(Var("r", F32), "sum", Load(shared, t), 32),
                                               Store(out, t, Var("r", F32))]))], [Allocate(shared, "shared")]),
            "buf not written in that phase")
    refused(hand_built(program, [phase(lambda t: Store(own, Const(0), Load(x, t)))], [Allocate(own)]),
            r"v \(per-thread storage of every thread\) is accessed at 0, not at t\*1 \+ c")
    refused(hand_built(program, [copy], [Allocate(Buffer("w", F32, (40,)))]), "40 elements, not a multiple of the block's 32")
    refused(hand_built(program, [phase(lambda t: Store(out, t, Load(x, t)), threads=T)]), "a thread loop has a symbolic extent")


def test_a_barrier_stays_between_phases_that_talk_across_a_quiet_one(rng):
    """Phase 1 writes shared memory, phase 2 touches none, phase 3 reads what another thread of
    phase 1 wrote: one barrier between them is needed (and one is enough)."""
    program, x, out = negative_64()
    shared, own = Buffer("s", F32, (32,)), Buffer("v", F32, (32,))
    b = Var("b")
    write = phase(lambda t: Store(shared, t, Load(x, b * 32 + t)))
    quiet = phase(lambda t: Store(own, t, Load(x, b * 32 + t)), name="u")
    read = phase(lambda t: Store(out, b * 32 + t, Binary("+", Load(shared, Const(31) - t), Load(own, t), F32)))
    made = hand_built(program, [write, quiet, read], [Allocate(shared, "shared"), Allocate(own)])
    fused = fuse_threads(made)
    assert sum(isinstance(s, Barrier) for s in fused.kernels[0].body.body.stmts[1].body.stmts) == 1
    v = rand(rng, 64)
    expected = v.reshape(2, 32)[:, ::-1].reshape(-1) + v
    for order in ORDERS:
        assert_close(run_program(fused, v, order=order)[0], expected)
    assert_close(run_serial_c(made, v)[0], expected)
    # a uniform loop holding phases ends its body with a barrier (the next round's writes)
    looped = hand_built(program, [For(Var("k"), 2, Block([write, read]))], [Allocate(shared, "shared")])
    body = fuse_threads(looped).kernels[0].body.body.stmts[1].body.stmts[0].body.stmts
    assert [type(s).__name__ for s in body] == ["Store", "Barrier", "Store", "Barrier"]


def test_a_missing_barrier_in_the_simt_form_is_a_race_in_any_order(rng):
    fused = fuse_threads(scheduled(lowered(row_sum, TensorType((2, 100), "f32")), Strategy("gpu_row_reduce", threads=64)))
    kernel = fused.kernels[0]
    thread = kernel.body.body.stmts[-1]
    unsynchronised = replace(thread, body=Block([s for s in thread.body.stmts if not isinstance(s, Barrier)]))
    broken = replace(fused, kernels=[replace(kernel, body=replace(kernel.body, body=Block(
        kernel.body.body.stmts[:-1] + [unsynchronised])))])
    x = rand(rng, 2, 100)
    assert_close(run_program(fused, x)[0], row_sum(x))
    for order in ORDERS:
        with pytest.raises(SynchronisationError, match=r"acc_warps\[\d+\] between two barriers"):
            run_program(broken, x, order=order)


def test_shared_memory_is_nan_at_each_blocks_start():
    """Block 0 writes its shared element, block 1 only reads its own: never written, NaN."""
    program = lowered(np.negative, TensorType((64,), "f32"))
    out = program.outputs[0]
    shared = Buffer("s", F32, (1,))
    b, t = Var("b"), Var("t")
    body = Block([If(Binary("==", b, Const(0), BOOL), Store(shared, Const(0), Const(np.float32(1.0), F32))),
                  Store(out, b, Load(shared, Const(0)))])
    kernel = replace(program.kernels[0], body=For(b, 2, Block([Allocate(shared, "shared"), For(t, 1, body, "gpu_thread", "x")]),
                                                  "gpu_block", "x"))
    for order in ORDERS:
        result = run_program(replace(program, kernels=[kernel]), np.zeros(64, F32), order=order)[0]
        assert result[0] == 1 and np.isnan(result[1])


def test_a_seeded_thread_order_is_a_reproducible_shuffle():
    assert ThreadOrder()(range(5)) == [4, 3, 2, 1, 0]
    first, again = ThreadOrder(11), ThreadOrder(11)
    draws = [first(range(64)) for _ in range(3)]
    assert draws == [again(range(64)) for _ in range(3)]
    assert all(sorted(d) == list(range(64)) for d in draws) and draws[0] != draws[1]
    assert draws[0] not in (list(range(64)), list(range(63, -1, -1)))


# ----------------------------------------------------------------------------------------------
# The C meaning of a warp reduce
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [32, 4])
@pytest.mark.parametrize("combiner", ["sum", "max", "min"])
def test_the_c_warp_reduce_is_the_butterfly_bit_for_bit(combiner, width, rng):
    """Thread-serial C (each lane's butterfly from the array) and the SIMT form in lockstep give
    every lane the same bits: sums of values of wildly different sizes (where the order shows),
    NaN and signed zeros for max and min."""
    program, x, out = negative_64()
    own, r = Buffer("v", F32, (64,)), Var("r", F32)
    made = hand_built(program, [phase(lambda t: Store(own, t, Load(x, t)), threads=64),
                       phase(lambda u: Block([WarpReduce(r, combiner, Load(own, u), width), Store(out, u, r)]),
                             threads=64, name="u")], [Allocate(own)], blocks=1)
    assert "mc_warp" not in render_c(lowered(np.negative, TensorType((64,), "f32")))  # CPU programs: no helper
    v = (rng.standard_normal(64) * 10.0 ** rng.integers(-8, 9, 64)).astype(F32)
    if combiner != "sum":
        v[rng.choice(64, 16, replace=False)] = 0.0
        v[rng.choice(64, 16, replace=False)] = -0.0
        v[5] = np.nan
    in_c = run_serial_c(made, v)[0]
    assert f"mc_warp_{combiner}_f32" in render_c(made)
    for order in ORDERS:
        in_lockstep = run_program(fuse_threads(made), v, order=order)[0]
        assert in_c.tobytes() == in_lockstep.tobytes()


# ----------------------------------------------------------------------------------------------
# Workloads and random graphs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["gpu-serial-c", "gpu-simt-interp"])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_the_nine_workloads(name, backend):
    workload = WORKLOADS[name]
    args = workload.inputs("tiny", seed=1)
    if name == "block" and backend == "gpu-simt-interp":  # the tiny GPT-2 layer is 2M multiply-adds
        rng = np.random.default_rng(1)
        args = [random_argument(a, s, np.float32, rng) for a, s in _block_shapes((), 3, 64).items()]
    program = loop_program(optimised(workload.fn, *args))
    assert_close(BACKENDS[backend].run(program, *args)[0], workload.fn(*args))


GPU_FUZZ_GRAPHS = 320
FUZZ_SEED = int(os.environ.get("MINICOMP_FUZZ_SEED") or int.from_bytes(os.urandom(3), "little"))


def test_random_graphs_through_the_gpu_schedules_in_c(tmp_path):
    report = run_fuzz(FuzzOptions(seed=FUZZ_SEED, graphs=GPU_FUZZ_GRAPHS, target="gpu-serial-c", out=str(tmp_path),
                                  shrink_seconds=60, max_shrunk=2, timeout=600))
    again = f"minicomp fuzz --target gpu-serial-c --seed {FUZZ_SEED} --graphs {GPU_FUZZ_GRAPHS} --jobs 0"
    assert not report.failures, f"{again}\n{report.summary()}"
    assert report.graphs >= 0.95 * GPU_FUZZ_GRAPHS and report.batched and report.single, report.summary()
    assert report.schedules["gpu_row_reduce"] and report.schedules["gpu_threads"], report.summary()


@pytest.mark.skipif(not has_nvcc(), reason="needs nvcc (the CUDA toolkit) on PATH or in CUDA_HOME")
def test_random_graphs_render_cuda_that_nvcc_compiles():
    """The CUDA of the C run's graphs (same seed, both pass lists of each), rendered for sm_90
    and compiled by nvcc in one batch, as a GPU run would compile it: code that C takes but
    nvcc refuses (``double * __half``, an array of 0 elements) shows here, without a GPU.
    About 40 s (2 cores) for some 640 sources."""
    sources, cases = [], []
    for round_index in range(-(-GPU_FUZZ_GRAPHS // fuzz.ROUND)):
        for case in fuzz.generate_round(FUZZ_SEED, round_index):
            for passes in case.pipelines:
                optimised_graph, _ = run_pipeline(case.graph, list(passes))
                source, _ = run_stages(optimised_graph, CUDA, stop_after="render")
                sources.append(source.text)
                cases.append(case.number)
    assert len(set(cases)) >= 0.95 * GPU_FUZZ_GRAPHS
    try:
        nvcc.build_many(sources)
    except CompileError as exc:  # which graph: build_many compiled each alone and named its source
        failed = [str(n) for n, text in zip(cases, sources) if nvcc.cubin_key(text) in str(exc)]
        pytest.fail(f"minicomp fuzz --target cuda --seed {FUZZ_SEED} --graphs {GPU_FUZZ_GRAPHS}: "
                    f"graph {', '.join(failed) or '?'}:\n{exc}")


#: 20 rounds: a round of 32 graphs has a row reduction with odds of about 1 in 3, so that 20 of
#: them go without one about once in 4000 runs (10 rounds: once in 60)
GPU_SIMT_FUZZ_GRAPHS = 640


def test_random_graphs_through_the_gpu_schedules_in_simt_form(tmp_path):
    """``minicomp fuzz --target gpu-simt-interp``: each graph's GPU schedules fused into the SIMT
    form and run by the loop interpreter (threads in lockstep in a shuffled order, shared memory
    NaN at each block's start, a race an error), every argument layout of the fuzzer, compared
    with the graph interpreter.

    The loop interpreter is Python: the one graph in ten with big values has values of at most
    ``fuzz.BIG_SIZES["gpu-simt-interp"]`` (1024) elements here, not the 65536 of the C run (a
    graph of 10K elements takes a minute), so these are not the C run's graphs of the same seed.
    About 30 s (2 cores)."""
    assert fuzz.big_size("gpu-simt-interp") == 1024
    report = run_fuzz(FuzzOptions(seed=FUZZ_SEED, graphs=GPU_SIMT_FUZZ_GRAPHS, target="gpu-simt-interp",
                                  out=str(tmp_path), shrink_seconds=60, max_shrunk=2, timeout=600))
    again = f"minicomp fuzz --target gpu-simt-interp --seed {FUZZ_SEED} --graphs {GPU_SIMT_FUZZ_GRAPHS} --jobs 0"
    assert not report.failures, f"{again}\n{report.summary()}"
    assert report.graphs >= 0.95 * GPU_SIMT_FUZZ_GRAPHS and report.single >= report.graphs, report.summary()
    assert report.big and len(report.ops) >= 45, report.summary()
    assert report.schedules["gpu_row_reduce"] and report.schedules["gpu_threads"], report.summary()


@pytest.mark.cuda
@pytest.mark.skipif(cuda_available() is not None, reason=f"cuda: {cuda_available()}")
def test_random_graphs_on_the_gpu(tmp_path, capsys):
    """``minicomp fuzz --target cuda``: the C run's graphs (same seed, same sizes) through every
    stage for this machine's GPU (schedules, fuse_threads, CUDA, nvcc, pycuda), compared with
    the graph interpreter. In worker processes, one per CPU: nvcc takes a second or two a graph."""
    options = FuzzOptions(seed=FUZZ_SEED, graphs=GPU_FUZZ_GRAPHS, target="cuda", out=str(tmp_path),
                          shrink_seconds=60, max_shrunk=2, timeout=600)
    code = fuzz_command(options)
    out = capsys.readouterr().out
    again = f"minicomp fuzz --target cuda --seed {FUZZ_SEED} --graphs {GPU_FUZZ_GRAPHS}"
    assert code == 0, f"{again}\n{out}"
    assert f"--seed {FUZZ_SEED}: {GPU_FUZZ_GRAPHS} graphs in" in out and "gpu_row_reduce" in out and "gpu_threads" in out, out
