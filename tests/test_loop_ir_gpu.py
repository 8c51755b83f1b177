"""GPU concepts in the loop IR, with their meaning on a CPU.

* **Bind**: loops bound to GPU block and thread axes print their axis, compute the same in the
  loop interpreter and in C (where they are serial loops), and are refused where the iterations
  depend on each other or the bindings could not run on a GPU;
* **threads in lockstep**: hand-built block reductions (a shared buffer and a tree of
  barriers; warp reduces) run in the loop interpreter against NumPy, with the threads of a
  block meeting at every barrier; a missing barrier, a barrier some threads skip and a warp
  split between statements are caught; the C renderer refuses them with a ``CompileError``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import TensorType
from minicomp.codegen.c import render_c
from minicomp.errors import CompileError
from minicomp.ir.loop_text import print_stmt
from minicomp.ir.loops import (BOOL, INDEX, Allocate, Assign, Barrier, Binary, Block, Buffer, Call, Cast, Const,
                               Declare, For, If, Kernel, Load, Select, Store, Var, WarpReduce, const)
from minicomp.schedules import Strategy
from minicomp.ir.schedule import (Bind, Fuse, Parallel, Reorder, ScheduleError, Split, Tile, Vectorize,
                                  apply_schedule)
from minicomp.lower.program import lower
from minicomp.runtime.executable import Executable
from minicomp.testing import assert_close
from minicomp.testing.loop_interpreter import SynchronisationError, run_program

F32 = np.dtype(np.float32)


def lowered(fn, *shapes, dtype="f32"):
    """``fn`` traced at ``shapes`` and lowered to plain nests (no passes, no schedule)."""
    return lower(minicomp.trace(fn, *[TensorType(s, dtype) for s in shapes]))


def text(kernel: Kernel) -> str:
    return "\n".join(print_stmt(kernel.body, 0))


def with_kernel(program, kernel: Kernel):
    return replace(program, kernels=[kernel])


def run_both(program, *arrays) -> list[np.ndarray]:
    """The program's outputs from the loop interpreter, checked equal to C's."""
    interpreted = run_program(program, *arrays)
    for mine, theirs in zip(interpreted, Executable(program, render_c(program))(*arrays)):
        assert_close(theirs, mine)
    return interpreted


def add(x, y):
    return x + y


# ----------------------------------------------------------------------------------------------
# Bind
# ----------------------------------------------------------------------------------------------


def test_bind_makes_blocks_and_threads_that_mean_serial_loops_on_a_cpu(rng):
    program = lowered(add, (5, 70), (70,))
    steps = [Fuse("i0", "i1"), Split("i0_i1", 64), Bind("i0_i1_o", "blockIdx.x"), Bind("i0_i1_i", "threadIdx.x")]
    kernel = apply_schedule(program.kernels[0], steps)
    assert [str(s) for s in kernel.schedule][2:] == ["bind(i0_i1_o, blockIdx.x)", "bind(i0_i1_i, threadIdx.x)"]
    assert text(kernel) == """\
gpu_block.x for i0_i1_o in 0..6:
  gpu_thread.x for i0_i1_i in 0..64:
    if ((i0_i1_o * 64) + i0_i1_i) < 350:
      add[(i0_i1_o * 64) + i0_i1_i] = x[(i0_i1_o * 64) + i0_i1_i] + y[((i0_i1_o * 64) + i0_i1_i) % 70]"""
    source = render_c(with_kernel(program, kernel))
    function = source[source.index("void k_add("):source.index("int minicomp_entry")]
    assert "/* blockIdx.x */" in function and "/* threadIdx.x */" in function and "#pragma" not in function
    x, y = rng.standard_normal((5, 70)).astype(F32), rng.standard_normal(70).astype(F32)
    [out] = run_both(with_kernel(program, kernel), x, y)
    assert_close(out, x + y)


def test_two_dimensional_blocks_and_threads(rng):
    program = lowered(add, (9, 13), (13,))
    kernel = apply_schedule(program.kernels[0], [
        Tile("i0", "i1", 4, 8), Bind("i0_o", "blockIdx.y"), Bind("i1_o", "blockIdx.x"),
        Bind("i0_i", "threadIdx.y"), Bind("i1_i", "threadIdx.x")])
    assert [line.split(" for")[0].strip() for line in text(kernel).splitlines()[:4]] == [
        "gpu_block.y", "gpu_block.x", "gpu_thread.y", "gpu_thread.x"]
    x, y = rng.standard_normal((9, 13)).astype(F32), rng.standard_normal(13).astype(F32)
    [out] = run_both(with_kernel(program, kernel), x, y)
    assert_close(out, x + y)


def refused(kernel: Kernel, steps, why: str) -> None:
    *before, last = steps
    kernel = apply_schedule(kernel, before)
    with pytest.raises(ScheduleError, match=why):
        last.apply(kernel)


def test_bind_is_refused_where_iterations_depend_on_each_other():
    row_sum = lowered(lambda x: x.sum(axis=1), (5, 6)).kernels[0]
    refused(row_sum, [Bind("r1", "threadIdx.x")], "carried from one iteration to the next")
    matmul = lowered(lambda a, b: a @ b, (5, 6), (6, 7)).kernels[0]
    reduction = next(loop for loop in ("rk", "r1", "k") if loop in text(matmul))
    refused(matmul, [Bind(reduction, "threadIdx.x")], "carried from one iteration to the next")
    in_output = Strategy("accumulate_in_output").apply(matmul)  # the sum kept in out[i, j]
    refused(in_output, [Bind(reduction, "threadIdx.x")], "touches the same element")


def test_bind_is_refused_where_the_bindings_could_not_run_on_a_gpu():
    kernel = lowered(add, (5, 70), (70,)).kernels[0]
    refused(kernel, [Bind("i0", "warpIdx.x")], "not a GPU axis")
    refused(kernel, [Bind("i0", "threadIdx.w")], "not a GPU axis")
    refused(kernel, [Bind("i0", "threadIdx.x"), Bind("i1", "blockIdx.x")],
            "block loop i1 lies inside the thread loop i0")
    refused(kernel, [Bind("i0", "blockIdx.x"), Bind("i1", "blockIdx.x")], "blockIdx.x is bound to two nested loops")
    refused(kernel, [Bind("i0", "blockIdx.x"), Bind("i0", "threadIdx.x")], "only a serial loop can be bound")
    refused(kernel, [Vectorize("i1"), Bind("i1", "threadIdx.x")], "i1 is a vectorized loop")
    refused(kernel, [Parallel("i0"), Bind("i1", "threadIdx.x")], "inside a parallel loop")
    refused(kernel, [Bind("i1", "threadIdx.x"), Parallel("i0")], "bound to a GPU axis")
    refused(kernel, [Bind("i0", "blockIdx.x"), Split("i0", 2)], "bound to blockIdx.x; shape loops before")
    refused(kernel, [Bind("i1", "threadIdx.x"), Fuse("i0", "i1")], "bound to threadIdx.x")
    refused(kernel, [Bind("i0", "blockIdx.x"), Bind("i1", "threadIdx.x"), Reorder("i1", "i0")],
            "block loop i0 lies inside the thread loop i1")


def test_thread_loops_of_a_block_must_be_directly_nested():
    x, y = Buffer("x", F32, (4, 8)), Buffer("y", F32, (4, 8))
    i, j = Var("i"), Var("j")
    body = For(i, 4, If(lt(i, Const(3)), For(j, 8, Store(y, i * 8 + j, Load(x, i * 8 + j)))))
    kernel = Kernel("copy", [x], y, body)
    refused(kernel, [Bind("i", "threadIdx.y"), Bind("j", "threadIdx.x")], "not directly inside the thread loop i")


# ----------------------------------------------------------------------------------------------
# Threads in lockstep: shared buffers, barriers, warp reduces
# ----------------------------------------------------------------------------------------------

ROWS, COLS = 3, 37


def reduction_program():
    """A lowered program of the right signature (x: f32[3,37] -> f32[3]) for hand-built kernels."""
    return lowered(lambda x: x.sum(axis=1), (ROWS, COLS))


def lt(a, b):
    return Binary("<", a, b, BOOL)


def strided_partial(x: Buffer, b: Var, t: Var, threads: int, acc: Var, combine) -> list:
    """``acc`` = this thread's share of row ``b``: columns t, t + threads, ... combined."""
    c, col = Var("c"), Var("col")
    step = Block([Declare(col, Binary("+", Binary("*", c, Const(threads), INDEX), t, INDEX)),
                  If(lt(col, Const(COLS)), Assign(acc, combine(acc, Load(x, b * COLS + col))))])
    return [For(c, -(-COLS // threads), step)]


def tree_reduction(threads: int = 16, barriers: bool = True) -> Kernel:
    """Row sums by a block per row: each thread sums a strided share into shared ``part``, then
    a tree of halving steps, each after a barrier; thread 0 writes the row's sum."""
    program = reduction_program()
    [x], out = program.inputs, program.outputs[0]
    b, t, acc = Var("b"), Var("t"), Var("acc", F32)
    part = Buffer("part", F32, (threads,))
    add_ = lambda a, v: Binary("+", a, v, F32)  # noqa: E731
    body = [Declare(acc, const(0, F32))] + strided_partial(x, b, t, threads, acc, add_)
    body += [Store(part, t, acc)] + [Barrier()] * barriers
    half = threads // 2
    while half:
        body.append(If(lt(t, Const(half)), Store(part, t, add_(Load(part, t), Load(part, t + half)))))
        body += [Barrier()] * barriers
        half //= 2
    body.append(If(Binary("==", t, Const(0), BOOL), Store(out, b, Load(part, Const(0)))))
    nest = For(b, ROWS, Block([Allocate(part, "shared"), For(t, threads, Block(body), "gpu_thread", "x")]),
               "gpu_block", "x")
    return with_kernel(program, Kernel("row_sum", [x], out, nest))


def test_a_block_reduction_through_shared_memory_and_barriers(rng):
    program = tree_reduction()
    printed = text(program.kernels[0])
    assert printed.startswith("gpu_block.x for b in 0..3:\n  shared part: f32[16]\n  gpu_thread.x for t in 0..16:")
    assert printed.count("barrier") == 5
    x = rng.standard_normal((ROWS, COLS)).astype(F32)
    [out] = run_program(program, x)
    assert_close(out, x.sum(axis=1))


def test_the_c_renderer_refuses_a_barrier():
    with pytest.raises(CompileError, match="'barrier'.*need the CUDA renderer.*loop interpreter"):
        render_c(tree_reduction())


def test_a_missing_barrier_is_a_race_the_interpreter_reports(rng):
    x = rng.standard_normal((ROWS, COLS)).astype(F32)
    with pytest.raises(SynchronisationError, match=r"both touch part\[\d+\] between two barriers"):
        run_program(tree_reduction(barriers=False), x)


def test_a_barrier_that_some_threads_skip_is_reported(rng):
    program = tree_reduction()
    kernel = program.kernels[0]
    thread_loop = kernel.body.body.stmts[1]
    stmts = list(thread_loop.body.stmts)
    stmts[-1] = If(lt(Var("t"), Const(4)), Barrier())  # only threads 0..3 wait
    divergent = replace(kernel, body=replace(kernel.body, body=Block([kernel.body.body.stmts[0],
                                                                      replace(thread_loop, body=Block(stmts))])))
    with pytest.raises(SynchronisationError, match="4 of 16 threads of a block wait"):
        run_program(with_kernel(program, divergent), rng.standard_normal((ROWS, COLS)).astype(F32))


def warp_reduction(combiner: str, threads: int = 64, width: int = 32) -> Kernel:
    """Row reductions by a block of two warps per row: each lane reduces a strided share, each
    warp combines its lanes (warp reduce), lane 0 of each warp stores into shared ``part``;
    after a barrier, the first warp combines those partials (the other lanes give the
    identity) and thread 0 writes the result."""
    program = reduction_program()
    [x], out = program.inputs, program.outputs[0]
    b, t, acc, warp_total, total = Var("b"), Var("t"), Var("acc", F32), Var("warp_total", F32), Var("total", F32)
    warps = threads // width
    part = Buffer("part", F32, (warps,))
    identity = {"sum": 0.0, "max": -np.inf, "min": np.inf}[combiner]
    helper = {"sum": None, "max": "mc_maximum", "min": "mc_minimum"}[combiner]

    def combine(a, v):
        return Binary("+", a, v, F32) if helper is None else Call(helper, (a, v), F32)

    is_first_lane = Binary("==", Binary("%", t, Const(width), INDEX), Const(0), BOOL)
    body = [Declare(acc, const(identity, F32))] + strided_partial(x, b, t, threads, acc, combine)
    body += [WarpReduce(warp_total, combiner, acc, width),
             If(is_first_lane, Store(part, Binary("/", t, Const(width), INDEX), warp_total)),
             Barrier(),
             If(lt(t, Const(width)), Block([
                 WarpReduce(total, combiner, Select(lt(t, Const(warps)), Load(part, t), const(identity, F32)), width),
                 If(Binary("==", t, Const(0), BOOL), Store(out, b, total))]))]
    nest = For(b, ROWS, Block([Allocate(part, "shared"), For(t, threads, Block(body), "gpu_thread", "x")]),
               "gpu_block", "x")
    return with_kernel(program, Kernel("row_reduce", [x], out, nest))


@pytest.mark.parametrize("combiner, reference", [("sum", np.sum), ("max", np.max), ("min", np.min)])
def test_a_block_reduction_through_warp_reduces(rng, combiner, reference):
    program = warp_reduction(combiner)
    printed = text(program.kernels[0])
    assert f"f32 warp_total = warp_{combiner}(acc)" in printed and "barrier" in printed
    x = rng.standard_normal((ROWS, COLS)).astype(F32)
    [out] = run_program(program, x)
    assert_close(out, reference(x, axis=1))


def test_a_warp_reduce_propagates_nan_as_numpy(rng):
    x = rng.standard_normal((ROWS, COLS)).astype(F32)
    x[1, 20] = np.nan
    [out] = run_program(warp_reduction("max"), x)
    assert np.isnan(out[1]) and not np.isnan(out[[0, 2]]).any()


def test_the_c_renderer_refuses_a_warp_reduce():
    with pytest.raises(CompileError, match="warp_sum.*need the CUDA renderer"):
        render_c(warp_reduction("sum"))


def test_a_warp_whose_lanes_are_split_between_statements_is_reported(rng):
    program = warp_reduction("sum", threads=64, width=32)
    kernel = program.kernels[0]
    thread_loop = kernel.body.body.stmts[1]
    stmts = list(thread_loop.body.stmts)
    # only lanes 0..15 of each warp reach the second warp reduce
    stmts[-1] = If(lt(Var("t"), Const(16)), stmts[-1].then)
    broken = replace(kernel, body=replace(kernel.body, body=Block([kernel.body.body.stmts[0],
                                                                   replace(thread_loop, body=Block(stmts))])))
    with pytest.raises(SynchronisationError, match="lanes 0..31 of a warp do not all wait"):
        run_program(with_kernel(program, broken), rng.standard_normal((ROWS, COLS)).astype(F32))


def test_local_buffers_are_each_threads_own_and_shared_ones_the_blocks():
    """A local array allocated outside the thread loop is one per thread: each thread reads
    back what it wrote, after a barrier at which all the others wrote theirs."""
    program = lowered(lambda x: x + 1, (2, 8))
    [x], out = program.inputs, program.outputs[0]
    b, t = Var("i0"), Var("i1")
    mine = Buffer("mine", INDEX, (1,))
    body = Block([Store(mine, Const(0), t), Barrier(),
                  Store(out, b * 8 + t, Binary("+", Load(x, b * 8 + t), Cast(Load(mine, Const(0)), F32), F32))])
    nest = For(b, 2, Block([Allocate(mine), For(t, 8, body, "gpu_thread", "x")]), "gpu_block", "x")
    x_value = np.zeros((2, 8), F32)
    [result] = run_program(with_kernel(program, Kernel("own", [x], out, nest)), x_value)
    assert_close(result, np.tile(np.arange(8, dtype=F32), (2, 1)))
    shared = replace(nest, body=Block([Allocate(mine, "shared"), nest.body.stmts[1]]))
    with pytest.raises(SynchronisationError, match=r"both touch mine\[0\]"):
        run_program(with_kernel(program, Kernel("own", [x], out, shared)), x_value)


def test_a_barrier_outside_every_thread_loop_is_refused(rng):
    program = lowered(lambda x: x + 1, (2, 8))
    kernel = program.kernels[0]
    with pytest.raises(SynchronisationError, match="outside every gpu_thread loop"):
        run_program(with_kernel(program, replace(kernel, body=Block([Barrier(), kernel.body]))),
                    np.zeros((2, 8), F32))
