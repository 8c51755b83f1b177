"""Schedule primitives: what each step prints, what it refuses, and that it never changes a result.

Three kinds of tests:

* **before/after**: each primitive on a small lowered kernel, the loop nest pinned as text;
* **refusals**: each primitive's legality check raises ``ScheduleError`` with a message that
  says why (a reduction's carried scalar, a reversed dependence, a copy that would go stale ...);
* **properties** (hypothesis): random schedules (splits with factors that do not divide the
  extents, both tail strategies, reorders, fuses, tiles, unrolls, parallel and vectorized
  loops, local copies, producers moved or inlined) on lowered elementwise, reduction, matmul
  and producer/consumer kernels, compiled to C and checked against NumPy; steps that are
  illegal where they are drawn must be refused, and replaying the applied steps on a fresh
  lowering must print the same loops. Each schedule also runs in the loop interpreter
  (``minicomp.testing.loop_interpreter``), which runs parallel and vectorized loops backwards
  and fills local buffers with NaN: an illegal parallel mark or a missing copy shows there
  every time, not only when threads happen to race.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import minicomp
from minicomp import TensorType
from minicomp.codegen.c import render_c
from minicomp.ir.dtypes import to_dtype
from minicomp.ir.loop_text import print_stmt
from minicomp.ir.loops import Binary, Buffer, For, Kernel, Load, Store, Var, const
from minicomp.ir.schedule import (MAX_UNROLL, Fuse, Parallel, Rename, Reorder, ScheduleError, Split, Tile, Unroll,
                                  Vectorize, apply_schedule, loop_names, loops, schedule_program)
from minicomp.ir.schedule_memory import CacheRead, CacheWrite, ComputeAt, ComputeInline, merge_stages
from minicomp.lower.program import lower
from minicomp.runtime.executable import Executable
from minicomp.schedules import Strategy
from minicomp.testing import assert_close
from minicomp.testing.loop_interpreter import run_program as run_loops

EXAMPLES = max(2, settings.default.max_examples // 4)  # ci: 15; every example compiles C once
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------
# Building, printing and running kernels
# ----------------------------------------------------------------------------------------------


def lowered(fn, *shapes, dtype="f32"):
    """``fn`` traced at ``shapes`` and lowered (no passes): one kernel per op."""
    return lower(minicomp.trace(fn, *[TensorType(s, dtype) for s in shapes]))


def kernel(program, name: str) -> Kernel:
    return next(k for k in program.kernels if k.name == name)


def text(k: Kernel) -> str:
    """The loop nest alone (no signature or source line, which name this file)."""
    return "\n".join(print_stmt(k.body, 0))


def run(program, *arrays):
    """Render, compile (cached by content) and run a lowered program."""
    return Executable(program, render_c(program))(*arrays)


def add_bias(x, b):
    return x + b


def matmul(a, b):
    return a @ b


def row_sum(x):
    return x.sum(axis=1)


def total(x):
    return x.sum()


def exp_times(x, y):
    return np.exp(x) * y


ADD = kernel(lowered(add_bias, (5, 7), (7,)), "add")
# the matmul in the i-k-j order (the CPU strategy accumulate_in_output): the row of the output
# is initialised, then accumulated over rk; the primitives below reshape that nest
IKJ = Strategy("accumulate_in_output")
MATMUL = IKJ.apply(kernel(lowered(matmul, (5, 6), (6, 7)), "matmul"))
SUM = kernel(lowered(row_sum, (5, 6)), "sum")


def merged_exp_times():
    """``exp(x) * y`` as one kernel: the producer fills a local ``exp``, the consumer reads it."""
    return merge_stages(lowered(exp_times, (4, 6), (6,)), "exp", "mul")


# ----------------------------------------------------------------------------------------------
# Before / after
# ----------------------------------------------------------------------------------------------


def test_lowered_kernels_before_scheduling():
    assert text(ADD) == """\
for i0 in 0..5:
  for i1 in 0..7:
    add[(i0 * 7) + i1] = x[(i0 * 7) + i1] + b[i1]"""


def test_split_guards_the_tail():
    assert text(Split("i1", 3).apply(ADD)) == """\
for i0 in 0..5:
  for i1_o in 0..3:
    for i1_i in 0..3:
      if ((i1_o * 3) + i1_i) < 7:
        add[((i0 * 7) + (i1_o * 3)) + i1_i] = x[((i0 * 7) + (i1_o * 3)) + i1_i] + b[(i1_o * 3) + i1_i]"""


def test_split_peels_the_tail():
    step = Split("i1", 3, tail="peel")
    assert str(step) == "split(i1, 3, tail=peel) -> i1_o, i1_i, i1_t"
    assert text(step.apply(ADD)) == """\
for i0 in 0..5:
  for i1_o in 0..2:
    for i1_i in 0..3:
      add[((i0 * 7) + (i1_o * 3)) + i1_i] = x[((i0 * 7) + (i1_o * 3)) + i1_i] + b[(i1_o * 3) + i1_i]
  for i1_t in 0..1:
    add[((i0 * 7) + i1_t) + 6] = x[((i0 * 7) + i1_t) + 6] + b[i1_t + 6]"""


def test_split_that_divides_adds_no_guard_and_peel_renames_the_tail_copy():
    assert "if" not in text(Split("i1", 7).apply(ADD))
    peeled = Split("i0", 2, tail="peel").apply(ADD)
    assert loop_names(peeled) == ["i0_o", "i0_i", "i1", "i0_t", "i1_t"]


def test_tile():
    step = Tile("i0", "i1", 2, 4)
    assert str(step) == "tile(i0, i1, 2, 4) -> i0_o, i1_o, i0_i, i1_i"
    assert text(step.apply(ADD)) == """\
for i0_o in 0..3:
  for i1_o in 0..2:
    for i0_i in 0..2:
      for i1_i in 0..4:
        if (((i0_o * 2) + i0_i) < 5) && (((i1_o * 4) + i1_i) < 7):
          add[(((i0_o * 14) + (i0_i * 7)) + (i1_o * 4)) + i1_i] = x[(((i0_o * 14) + (i0_i * 7)) + (i1_o * 4)) + i1_i] + b[(i1_o * 4) + i1_i]"""


def test_reorder_moves_the_reduction_loop_inward():
    steps = [Rename("i1", "j", occurrence=1), Reorder("j", "rk")]
    assert [str(s) for s in steps] == ["rename(i1#1, j)", "reorder(j, rk)"]
    assert text(apply_schedule(MATMUL, steps)) == """\
for i0 in 0..5:
  for i1 in 0..7:
    matmul[(i0 * 7) + i1] = 0.0_f32
  for j in 0..7:
    for rk in 0..6:
      matmul[(i0 * 7) + j] = matmul[(i0 * 7) + j] + (a[(i0 * 6) + rk] * b[(rk * 7) + j])"""


def test_fuse_folds_the_index_back():
    step = Fuse("i0", "i1")
    assert str(step) == "fuse(i0, i1) -> i0_i1"
    assert text(step.apply(ADD)) == """\
for i0_i1 in 0..35:
  add[i0_i1] = x[i0_i1] + b[i0_i1 % 7]"""


def test_unroll_replicates_the_body():
    k = apply_schedule(SUM, [Split("r1", 4), Unroll("r1_i")])
    assert text(k) == """\
for i0 in 0..5:
  f32 acc = 0.0_f32
  for r1_o in 0..2:
    if (r1_o * 4) < 6:
      acc = acc + x[(i0 * 6) + (r1_o * 4)]
    if ((r1_o * 4) + 1) < 6:
      acc = acc + x[((i0 * 6) + (r1_o * 4)) + 1]
    if ((r1_o * 4) + 2) < 6:
      acc = acc + x[((i0 * 6) + (r1_o * 4)) + 2]
    if ((r1_o * 4) + 3) < 6:
      acc = acc + x[((i0 * 6) + (r1_o * 4)) + 3]
  sum[i0] = acc"""


def test_unroll_renames_what_each_copy_declares():
    k = Unroll("i0").apply(kernel(lowered(row_sum, (2, 3)), "sum"))
    assert text(k) == """\
f32 acc_u0 = 0.0_f32
for r1_u0 in 0..3:
  acc_u0 = acc_u0 + x[r1_u0]
sum[0] = acc_u0
f32 acc_u1 = 0.0_f32
for r1_u1 in 0..3:
  acc_u1 = acc_u1 + x[r1_u1 + 3]
sum[1] = acc_u1"""
    assert text(Unroll("r1", pragma=True).apply(SUM)).splitlines()[2] == "  unrolled for r1 in 0..6:"


def test_vectorize_and_parallel_mark_loops():
    k = apply_schedule(ADD, [Split("i1", 4), Parallel("i0"), Vectorize("i1_i")])
    assert text(k).splitlines()[:3] == ["parallel for i0 in 0..5:", "  for i1_o in 0..2:",
                                        "    vectorized for i1_i in 0..4:"]
    source = render_c(schedule_program(lowered(add_bias, (5, 7), (7,)),
                                       {"add": [Split("i1", 4), Parallel("i0"), Vectorize("i1_i")]}))
    assert "#pragma omp parallel for" in source and "#pragma omp simd" in source


def test_cache_read_packs_a_panel():
    steps = [Rename("i1", "j", occurrence=1), Split("rk", 4), Split("j", 3), Reorder("j_o", "rk_i"),
             CacheRead("b", "rk_o", layout=("j_o", "rk_i", "j_i"))]
    assert str(steps[-1]) == "cache_read(b, rk_o, layout=j_o,rk_i,j_i) -> b_local"
    assert text(apply_schedule(MATMUL, steps)) == """\
for i0 in 0..5:
  for i1 in 0..7:
    matmul[(i0 * 7) + i1] = 0.0_f32
  for rk_o in 0..2:
    local b_local: f32[3,4,3]
    for j_o_b in 0..3:
      for rk_i_b in 0..4:
        for j_i_b in 0..3:
          if (((rk_o * 4) + rk_i_b) < 6) && (((j_o_b * 3) + j_i_b) < 7):
            b_local[((j_o_b * 12) + (rk_i_b * 3)) + j_i_b] = b[(((rk_o * 28) + (rk_i_b * 7)) + (j_o_b * 3)) + j_i_b]
    for j_o in 0..3:
      for rk_i in 0..4:
        for j_i in 0..3:
          if (((rk_o * 4) + rk_i) < 6) && (((j_o * 3) + j_i) < 7):
            matmul[((i0 * 7) + (j_o * 3)) + j_i] = matmul[((i0 * 7) + (j_o * 3)) + j_i] + (a[((i0 * 6) + (rk_o * 4)) + rk_i] * b_local[((j_o * 12) + (rk_i * 3)) + j_i])"""


def test_cache_write_accumulates_a_row_locally():
    assert text(CacheWrite("matmul", "i0").apply(MATMUL)) == """\
for i0 in 0..5:
  local matmul_local: f32[7]
  for i1 in 0..7:
    matmul_local[i1] = 0.0_f32
  for rk in 0..6:
    for i1 in 0..7:
      matmul_local[i1] = matmul_local[i1] + (a[(i0 * 6) + rk] * b[(rk * 7) + i1])
  for i1_matmul_out in 0..7:
    matmul[(i0 * 7) + i1_matmul_out] = matmul_local[i1_matmul_out]"""


def test_cache_write_copies_in_when_the_body_reads_first():
    k = CacheWrite("matmul", "rk").apply(MATMUL)
    assert "matmul_local[i1_matmul] = matmul[(i0 * 7) + i1_matmul]" in text(k)


def test_merge_stages_builds_a_producer_consumer_kernel():
    merged = merged_exp_times()
    assert [k.name for k in merged.kernels] == ["mul"]
    assert text(merged.kernels[0]) == """\
local exp: f32[4,6]
for i0_exp in 0..4:
  for i1_exp in 0..6:
    exp[(i0_exp * 6) + i1_exp] = exp(x[(i0_exp * 6) + i1_exp])
for i0 in 0..4:
  for i1 in 0..6:
    mul[(i0 * 6) + i1] = exp[(i0 * 6) + i1] * y[i1]"""


def test_compute_inline():
    assert text(ComputeInline("exp").apply(merged_exp_times().kernels[0])) == """\
for i0 in 0..4:
  for i1 in 0..6:
    mul[(i0 * 6) + i1] = exp(x[(i0 * 6) + i1]) * y[i1]"""


def test_compute_at_computes_one_row_per_iteration():
    k = apply_schedule(merged_exp_times().kernels[0], [Split("i1", 4), ComputeAt("exp", "i1_o")])
    assert text(k) == """\
for i0 in 0..4:
  for i1_o in 0..2:
    local exp: f32[1,4]
    for i1_exp in 0..4:
      if ((i1_o * 4) + i1_exp) < 6:
        exp[i1_exp] = exp(x[((i0 * 6) + (i1_o * 4)) + i1_exp])
    for i1_i in 0..4:
      if ((i1_o * 4) + i1_i) < 6:
        mul[((i0 * 6) + (i1_o * 4)) + i1_i] = exp[i1_i] * y[(i1_o * 4) + i1_i]"""


def test_the_kernel_prints_its_schedule_and_steps_do_not_mutate():
    before = str(ADD)
    k = apply_schedule(ADD, [Split("i1", 4), Vectorize("i1_i")])
    assert str(ADD) == before and ADD.schedule == []
    assert [line.strip() for line in str(k).splitlines()[1:3]] == [
        "# schedule: split(i1, 4) -> i1_o, i1_i", "# schedule: vectorize(i1_i)"]


def test_replay_on_a_fresh_lowering_prints_the_same_loops():
    steps = [Rename("i1", "j", occurrence=1), Split("j", 4), Split("i1", 4), CacheWrite("matmul", "i0"),
             CacheRead("a", "i0"), Split("rk", 4, tail="peel"), Unroll("rk_i"), Parallel("i0")]
    first = apply_schedule(MATMUL, steps)
    again = apply_schedule(kernel(lowered(matmul, (5, 6), (6, 7)), "matmul"), list(first.schedule))
    assert str(again) == str(first) and again.schedule == [IKJ] + steps


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


def refused(k: Kernel, step, *fragments: str) -> None:
    with pytest.raises(ScheduleError) as info:
        step.apply(k)
    message = str(info.value)
    assert f"schedule step {step}" in message and k.name in message
    for fragment in fragments:
        assert fragment in message, message


def shifted() -> Kernel:
    """``a[i+1, j] = a[i, j+1] + 1``: each row reads the row before, one column to the right."""
    a, i, j = Buffer("a", np.dtype("f4"), (4, 4)), Var("i"), Var("j")
    value = Binary("+", Load(a, i * 4 + j + 1), const(1, "f4"), np.dtype("f4"))
    return Kernel("shifted", [a], a, For(i, 3, For(j, 3, Store(a, (i + 1) * 4 + j, value))))


def test_unknown_and_ambiguous_loops_are_refused():
    refused(ADD, Split("k", 2), "there is no loop k", "i0, i1")
    refused(MATMUL, Split("i1", 2), "2 loops are named i1", "Rename")
    refused(ADD, Split("i1", 0), "positive integer")
    refused(ADD, Rename("i0", "i1"), "already in use")


def test_reorder_refusals():
    refused(SUM, Reorder("r1", "i0"), "not perfectly nested")
    refused(kernel(lowered(total, (3, 4)), "sum"), Reorder("r1", "r0"), "assigns acc", "carried")
    refused(shifted(), Reorder("j", "i"), "may touch the same element of a")
    refused(Split("i1", 2).apply(ADD), Tile("i0", "i1_i", 2, 2), "not directly inside")


def reduce_twice(accumulate: bool) -> Kernel:
    """``out[i] (+)= x[i, r1, r2]`` over two reduction loops: a sum, or the last element wins."""
    f4 = np.dtype("f4")
    x, out = Buffer("x", f4, (2, 3, 4)), Buffer("out", f4, (2,))
    i, r1, r2 = Var("i"), Var("r1"), Var("r2")
    element = Load(x, i * 12 + r1 * 4 + r2)
    value = Binary("+", Load(out, i), element, f4) if accumulate else element
    return Kernel("reduce", [x], out, For(i, 2, For(r1, 3, For(r2, 4, Store(out, i, value)))))


def test_reordering_reduction_loops_needs_an_accumulation():
    assert loop_names(Reorder("r2", "r1").apply(reduce_twice(accumulate=True))) == ["i", "r2", "r1"]
    assert loop_names(Reorder("r1", "i").apply(reduce_twice(accumulate=False))) == ["r1", "i", "r2"]
    refused(reduce_twice(accumulate=False), Reorder("r2", "r1"), "order changes", "not only accumulated")


def test_fuse_and_unroll_refusals():
    refused(SUM, Fuse("i0", "r1"), "not directly inside")
    refused(kernel(lowered(add_bias, (2, MAX_UNROLL + 1), (MAX_UNROLL + 1,)), "add"), Unroll("i1"),
            "more than the 64")


def test_vectorize_refusals():
    refused(SUM, Vectorize("r1"), "assigns acc")
    refused(ADD, Vectorize("i0"), "not an innermost loop")
    refused(shifted(), Vectorize("j"), "may touch the same element of a")


def test_parallel_refusals():
    k = Rename("i1", "j", occurrence=1).apply(MATMUL)
    refused(k, Parallel("rk"), "every iteration of rk touches the same element of matmul")
    refused(Parallel("i0").apply(ADD), Parallel("i1"), "nest one parallel loop in another")
    # a short parallel loop runs collapsed with a serial loop directly inside it: that one must be free too
    f4, i, j = np.dtype("f4"), Var("i"), Var("j")
    x, out = Buffer("x", f4, (3, 4)), Buffer("out", f4, (3,))
    row_sums = Kernel("row_sums", [x], out, For(i, 3, For(j, 4, Store(out, i, Binary("+", Load(out, i),
                                                                                     Load(x, i * 4 + j), f4)))))
    refused(row_sums, Parallel("i"), "j")
    # ... but not with a vectorized one (the C renderer then does not collapse)
    short = apply_schedule(ADD, [Split("i1", 4), Vectorize("i1_i"), Parallel("i1_o")])
    assert [loop.kind for loop in loops(short.body)][-2:] == ["parallel", "vectorized"]


def test_cache_refusals():
    refused(MATMUL, CacheRead("matmul", "i0"), "also writes matmul", "stale")
    refused(kernel(lowered(add_bias, (2, 20000), (20000,)), "add"), CacheRead("x", "i0"), "more than 65536")
    refused(apply_schedule(MATMUL, [Rename("i1", "j", occurrence=1), Split("j", 4)]), CacheWrite("matmul", "i0"),
            "different indices")
    aliased = Kernel(ADD.name, ADD.inputs, ADD.output, ADD.body, aliases=frozenset({ADD.output, ADD.inputs[0]}))
    refused(aliased, CacheWrite("add", "i0"), "shares memory")
    refused(ADD, CacheRead("nothing", "i0"), "no buffer nothing")
    f4, i, j = np.dtype("f4"), Var("i"), Var("j")
    x, out = Buffer("x", f4, (3, 4)), Buffer("out", f4, (3, 6))
    diagonals = Kernel("diagonals", [x], out, For(i, 3, For(j, 4, Store(out, i * 7 + j, Load(x, i * 4 + j)))))
    assert CacheWrite("out", "i").apply(diagonals)  # out[i, i + j]: one element per j
    toeplitz = Kernel("toeplitz", [x], out, For(i, 3, For(j, 4, Store(out, i + j, Load(x, i * 4 + j)))))
    refused(Split("i", 3).apply(toeplitz), CacheWrite("out", "i_o"), "write the same element of out")


def test_compute_refusals():
    merged = merged_exp_times().kernels[0]
    refused(ADD, ComputeInline("x"), "no local buffer x")
    refused(merged, ComputeAt("exp", "i0_exp"), "not after the producer")
    refused(Split("i0", 3, tail="peel").apply(merged), ComputeAt("exp", "i1"), "also read outside i1")
    refused(Split("i0_exp", 3, tail="peel").apply(merged), ComputeInline("exp"), "written by one loop nest")
    with pytest.raises(ScheduleError, match="right after"):
        merge_stages(lowered(exp_times, (4, 6), (6,)), "mul", "exp")
    with pytest.raises(ScheduleError, match="no kernel named nope"):
        schedule_program(lowered(add_bias, (5, 7), (7,)), {"nope": []})


def accumulate_rows(rows: int) -> Kernel:
    """``out[i] += x[i, r]`` with the reduction loop ``r`` directly inside ``i``."""
    x, out, i, r = Buffer("x", np.dtype("f4"), (rows, 3)), Buffer("out", np.dtype("f4"), (rows,)), Var("i"), Var("r")
    value = Binary("+", Load(out, i), Load(x, i * 3 + r), np.dtype("f4"))
    return Kernel("rows", [x], out, For(i, rows, For(r, 3, Store(out, i, value))))


def test_a_short_parallel_loop_needs_its_inner_loop_free_too():
    # the C renderer runs a parallel loop shorter than 64 together with the loop directly inside
    refused(accumulate_rows(8), Parallel("i"), "every iteration of r touches the same element of out")
    assert Parallel("i").apply(accumulate_rows(64)).body.kind == "parallel"


# ----------------------------------------------------------------------------------------------
# Properties: random schedules keep NumPy's results
# ----------------------------------------------------------------------------------------------

LOOP_STEPS = ["split", "split", "reorder", "fuse", "tile", "unroll", "vectorize", "parallel", "rename"]


def draw_step(data, k: Kernel, kinds: list[str], buffers: dict[str, list[str]]):
    """One step of a kind drawn from ``kinds`` on loops of ``k`` (it may well be illegal there)."""
    names = loop_names(k)
    kind = data.draw(st.sampled_from(kinds))
    loop = data.draw(st.sampled_from(names))
    inside = [l.body.var.name for l in loops(k.body) if l.var.name == loop and isinstance(l.body, For)]
    other = data.draw(st.sampled_from(inside + [n for n in names if n != loop] or names))
    factor = st.integers(1, 6)
    if kind == "split":
        return Split(loop, data.draw(factor), data.draw(st.sampled_from(["guard", "peel"])))
    if kind == "reorder":
        return Reorder(loop, other)
    if kind == "fuse":
        return Fuse(loop, other)
    if kind == "tile":
        return Tile(loop, other, data.draw(factor), data.draw(factor))
    if kind == "unroll":
        extent = max(l.extent for l in loops(k.body) if l.var.name == loop)
        return Unroll(loop, pragma=extent > 6 or data.draw(st.booleans()))
    if kind == "vectorize":
        return Vectorize(loop)
    if kind == "parallel":
        return Parallel(loop)
    if kind == "rename":
        return Rename(loop, f"{loop}r", occurrence=data.draw(st.integers(0, 1)))
    if kind == "cache_read":
        return CacheRead(data.draw(st.sampled_from(buffers["read"])), loop)
    if kind == "cache_write":
        return CacheWrite(k.output.name, loop)
    if kind == "compute_at":
        return ComputeAt(data.draw(st.sampled_from(buffers["local"])), loop)
    return ComputeInline(data.draw(st.sampled_from(buffers["local"])))


def random_schedule(data, k: Kernel, kinds: list[str], buffers=None, max_steps: int = 5) -> Kernel:
    """``k`` after up to ``max_steps`` random steps; refused steps are skipped (and must be refusals)."""
    for _ in range(data.draw(st.integers(0, max_steps))):
        if not loop_names(k):
            break
        step = draw_step(data, k, kinds, buffers or {})
        try:
            k = step.apply(k)
        except ScheduleError:
            continue
    return k


def check_random_program(data, program, kinds, buffers, arrays, expected):
    """Schedule every kernel at random, compare with NumPy, and replay the steps."""
    chosen = {k.name: random_schedule(data, k, kinds, buffers.get(k.name)) for k in program.kernels}
    scheduled = schedule_program(program, {name: list(k.schedule) for name, k in chosen.items()})
    for k in scheduled.kernels:
        assert str(k) == str(chosen[k.name])  # replay gives the same loops
    expected = [np.asarray(e) for e in expected]
    assert_close(run_loops(scheduled, *arrays), expected)  # parallel loops run backwards here
    assert_close(run(scheduled, *arrays), expected)


def values(rng, shape, dtype):
    dtype = to_dtype(dtype)
    if dtype.kind == "i":
        return rng.integers(-5, 6, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def elementwise_and_reductions(x, y):
    return (x * y + 2).T, x.sum(axis=1), x.max(axis=0)


@PROPERTY
@given(st.data(), st.integers(1, 7), st.integers(0, 7), st.sampled_from(["f32", "f64", "i32"]))
def test_random_schedules_of_elementwise_and_reduction_kernels(data, m, n, dtype):
    program = lowered(elementwise_and_reductions, (m, n), (n,), dtype=dtype)
    rng = np.random.default_rng(m * 10 + n)
    arrays = [values(rng, (m, n), dtype), values(rng, (n,), dtype)]
    kinds = LOOP_STEPS + ["cache_read", "cache_write"]
    buffers = {k.name: {"read": [b.name for b in k.inputs]} for k in program.kernels}
    check_random_program(data, program, kinds, buffers, arrays, elementwise_and_reductions(*arrays))


def matmul_bias(a, b, c):
    return a @ b + c


@PROPERTY
@given(st.data(), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.sampled_from(["f32", "f64", "i32"]))
def test_random_schedules_of_matmul(data, m, k, n, dtype):
    program = lowered(matmul_bias, (m, k), (k, n), (n,), dtype=dtype)
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    arrays = [values(rng, (m, k), dtype), values(rng, (k, n), dtype), values(rng, (n,), dtype)]
    kinds = LOOP_STEPS + ["rename", "cache_read", "cache_read", "cache_write"]
    buffers = {kk.name: {"read": [b.name for b in kk.inputs]} for kk in program.kernels}
    check_random_program(data, program, kinds, buffers, arrays, [matmul_bias(*arrays)])


CONSUMERS = {
    "mul": lambda t, y: t * y,
    "slice": lambda t, y: t[:, ::-1] * y,
    "sum": lambda t, y: t.sum(axis=1),
    "transpose": lambda t, y: t.T,
    "reshape": lambda t, y: t.reshape(-1),
}


@PROPERTY
@given(st.data(), st.integers(2, 6), st.integers(1, 6), st.sampled_from(sorted(CONSUMERS)),
       st.sampled_from(["f32", "f64"]))
def test_random_schedules_of_producer_consumer_kernels(data, m, n, consumer, dtype):
    def fn(x, y):
        return CONSUMERS[consumer](np.exp(x), y)

    program = lowered(fn, (m, n), (n,), dtype=dtype)
    program = merge_stages(program, "exp", program.kernels[1].name)
    rng = np.random.default_rng(m * 10 + n)
    arrays = [values(rng, (m, n), dtype), values(rng, (n,), dtype)]
    kinds = LOOP_STEPS + ["compute_at", "compute_at", "compute_inline", "cache_read"]
    buffers = {k.name: {"read": [b.name for b in k.inputs], "local": ["exp"]} for k in program.kernels}
    check_random_program(data, program, kinds, buffers, arrays, [fn(*arrays)])


FAMILIES = {  # name -> (function, operand shapes for sizes m, n, k)
    "elementwise": (elementwise_and_reductions, lambda m, n, k: [(m, n), (n,)]),
    "matmul": (matmul_bias, lambda m, n, k: [(m, k), (k, n), (n,)]),
    "producer": (lambda x, y: np.exp(x)[:, ::-1] * y, lambda m, n, k: [(m, n), (n,)]),
    "row": (lambda x, y: np.exp(x).sum(axis=1), lambda m, n, k: [(m, n), (n,)]),
}


@settings(max_examples=4 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(sorted(FAMILIES)), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6))
def test_longer_random_schedules_in_the_loop_interpreter(data, family, m, n, k):
    fn, shapes = FAMILIES[family]
    program = lowered(fn, *shapes(m, n, k), dtype="f64")
    if family in ("producer", "row"):
        program = merge_stages(program, "exp", program.kernels[1].name)
    rng = np.random.default_rng(0)
    arrays = [values(rng, s, "f64") for s in shapes(m, n, k)]
    kinds = LOOP_STEPS + ["cache_read", "cache_write", "compute_at", "compute_inline"]
    buffers = {kk.name: {"read": [b.name for b in kk.inputs], "local": ["exp"]} for kk in program.kernels}
    chosen = {kk.name: random_schedule(data, kk, kinds, buffers.get(kk.name), max_steps=8)
              for kk in program.kernels}
    scheduled = schedule_program(program, {name: list(kk.schedule) for name, kk in chosen.items()})
    expected = fn(*arrays)
    assert_close(run_loops(scheduled, *arrays), list(expected) if isinstance(expected, tuple) else [expected])


def test_the_loop_interpreter_catches_an_illegal_parallel_mark(rng):
    program = lowered(matmul, (3, 4), (4, 5), dtype="f64")
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    assert_close(run_loops(program, a, b), [a @ b])
    rk = next(l for l in loops(program.kernels[0].body) if l.var.name == "rk")
    rk.kind = "parallel"  # what Parallel("rk") refuses: every iteration of rk adds into one row
    with pytest.raises(AssertionError):
        assert_close(run_loops(program, a, b), [a @ b], rtol=0, atol=0)


def test_a_full_matmul_schedule_runs(rng):
    program = lowered(matmul_bias, (9, 7), (7, 10), (10,))
    steps = [IKJ, Rename("i1", "j", occurrence=1), Split("j", 4), Split("i1", 4), Split("rk", 3),
             Reorder("j_o", "rk_i"), CacheRead("b", "rk_o", layout=("j_o", "rk_i", "j_i")), CacheRead("a", "i0"),
             CacheWrite("matmul", "i0"), Vectorize("j_i"), Parallel("i0")]
    scheduled = schedule_program(program, {"matmul": steps, "add": [Fuse("i0", "i1"), Split("i0_i1", 16),
                                                                    Vectorize("i0_i1_i")]})
    a, b, c = (rng.standard_normal(s).astype(np.float32) for s in [(9, 7), (7, 10), (10,)])
    assert_close(run(scheduled, a, b, c), [a @ b + c])
