"""Reduction loops that the C compiler can vectorise, without ``-ffast-math``.

A float reduction written the plain way keeps one accumulator::

    f32 acc = 0
    for r1 in 0..1000:
      acc = acc + x[i0*1000 + r1]

and gcc leaves it scalar: turning it into SIMD means adding the elements in another order, and
float addition is not associative, so C forbids it (``-ffast-math`` would allow it for the
whole file). The lowerings here change the order *explicitly*, in the loop IR, so the C
compiler has nothing to prove:

* ``reduce_into_lanes``: ``LANES`` partial accumulators, lane ``l`` summing the elements
  ``l, l + 16, l + 32, ...``; the lane loop is one SIMD instruction, and the lanes are combined
  at the end. This is how NumPy's own pairwise summation adds 8 partial sums at a time; the
  result stays within float32 rounding of NumPy's. Max and min keep NumPy's NaN rule lane by
  lane (``mc_maximum``: a NaN wins), so a NaN anywhere in a row still gives NaN.
* ``reduce_columns``: a reduction over a non-last axis (``x.sum(axis=0)``) loops over the
  reduced axis *outside* the contiguous kept axis and accumulates into the output row, so the
  innermost loop is elementwise and unit-stride (no reordering at all: each output element
  still adds its inputs in order).
* ``reduce_keeping_operand``: the last reduction of a row kernel stores its operand into the
  output row as it goes (softmax: ``exp(x - m)``), so the epilogue reads it back from cache
  instead of computing it again (one ``exp`` per element instead of two).

Integer reductions are left scalar: integer addition wraps (``-fwrapv``) and so is
associative, and gcc vectorises those loops itself.
"""

from __future__ import annotations

import re

from ...ir.compute import Reduce, compute, linear_index
from ...ir.graph import Node
from ...ir.loops import (Allocate, Assign, Block, Buffer, Call, Const, Declare, Expr, For, Load, Stmt,
                        Store, Var, walk)
from ...ir.ops import Kind
from ...ir.symbolic import Sym
from ...lower.program import combine, nest, reduction_init

LANES = 16  # partial accumulators: one AVX-512 register of float32, two AVX2 registers
COLUMN_BLOCK = 256  # columns per parallel task of a column reduction with no other kept axis
CACHED_ROW_BYTES = 1 << 18  # rows up to this size stay in L2 between the passes of a row kernel


# ----------------------------------------------------------------------------------------------
# Lane-wise partial accumulators
# ----------------------------------------------------------------------------------------------


def splits_into_lanes(r: Reduce) -> bool:
    """Float reductions whose innermost loop has at least ``LANES`` iterations (and whose
    result does not depend on the order, as ``first_wins`` max/min does for signed zeros)."""
    return (r.dtype.kind == "f" and bool(r.axes) and not isinstance(r.axes[-1][1], Sym)  # symbolic: plain
            and r.axes[-1][1] >= LANES and not r.first_wins)


def reduce_into_lanes(acc: Var, r: Reduce, per_element: list[Stmt] = ()) -> list[Stmt]:
    """Declare ``acc`` and reduce ``r`` into it, the innermost loop split over ``LANES`` lanes.

    ``per_element`` runs before each element is accumulated (``reduce_keeping_operand``'s
    store). Reductions that do not split (``splits_into_lanes``) keep the plain loop. The
    sum of 1000 elements, before and after::

        f32 acc = 0                               local acc_lanes: f32[16]
        for r1 in 0..1000:                        vectorized for lane in 0..16:
          acc = acc + x[i0*1000 + r1]               acc_lanes[lane] = 0
                                                  for r1_o in 0..62:
                                                    vectorized for lane in 0..16:
                                                      i64 r1 = (r1_o * 16) + lane
                                                      acc_lanes[lane] = acc_lanes[lane] + x[i0*1000 + r1]
                                                  for lane in 0..8:          # the tail: 1000 = 62*16 + 8
                                                    i64 r1 = 992 + lane
                                                    acc_lanes[lane] = acc_lanes[lane] + x[i0*1000 + r1]
                                                  for lane in 0..8:          # then 4, 2, 1
                                                    acc_lanes[lane] = acc_lanes[lane] + acc_lanes[lane + 8]
                                                  f32 acc = acc_lanes[0]
    """
    if not splits_into_lanes(r):
        step = Block([*per_element, Assign(acc, combine(r.combiner, acc, r.body, r.first_wins))])
        return [Declare(acc, reduction_init(r.combiner, r.dtype)), nest(r.axes, step, parallel=False)]
    lanes = Buffer(f"{acc.name}_lanes", r.dtype, (LANES,))
    lane = Var("lane")
    (var, extent), full = r.axes[-1], r.axes[-1][1] // LANES * LANES

    def accumulate(first) -> Stmt:  # element first + lane into lane `lane`
        value = combine(r.combiner, Load(lanes, lane), r.body)
        return Block([Declare(var, first + lane), *per_element, Store(lanes, lane, value)])

    outer = Var(f"{var.name}_o")
    sweep = [For(outer, extent // LANES, For(lane, LANES, accumulate(outer * LANES), "vectorized"))]
    if extent > full:
        sweep.append(For(lane, extent - full, accumulate(Const(full))))
    return [Allocate(lanes),
            For(lane, LANES, Store(lanes, lane, reduction_init(r.combiner, r.dtype)), "vectorized"),
            nest(r.axes[:-1], Block(sweep), parallel=False),
            *fold_lanes(lanes, r.combiner),
            Declare(acc, Load(lanes, Const(0)))]


def fold_lanes(lanes: Buffer, combiner: str) -> list[Stmt]:
    """Combine ``lanes[0..LANES]`` into ``lanes[0]`` as a tree: 4 dependent steps, not 15.

    The row max of softmax is on the critical path (every exp waits for it), so the depth of
    this last step shows in the time of a short row::

        for lane in 0..8: lanes[lane] = max(lanes[lane], lanes[lane + 8])
        for lane in 0..4: lanes[lane] = max(lanes[lane], lanes[lane + 4])   ... 2, 1
    """
    lane, steps, half = Var("lane"), [], LANES // 2
    while half:
        value = combine(combiner, Load(lanes, lane), Load(lanes, lane + half))
        steps.append(For(lane, half, Store(lanes, lane, value), "vectorized" if half > 1 else "serial"))
        half //= 2
    return steps


# ----------------------------------------------------------------------------------------------
# Column reductions: accumulate into the output row
# ----------------------------------------------------------------------------------------------


def reduces_columns(root: Node, r: Reduce) -> bool:
    """A sum/mean/max/min that keeps the last (contiguous) axis, longer than 1, and whose
    accumulator is the output's dtype (so the output can hold the running value exactly)."""
    last = len(root.operands[0].shape) - 1
    return (root.kind is Kind.REDUCTION and bool(r.axes) and r.dtype == root.dtype
            and last not in root.attrs["axes"] and (isinstance(root.shape[-1], Sym) or root.shape[-1] > 1))


def reduce_columns(r: Reduce, out: Buffer, idx: list, shape: tuple[int, ...], parallel: bool) -> Stmt:
    """``out = reduction r`` with the reduction loops outside the last output axis.

    Column sums of ``x: f32[4096, 1024]``, before and after::

        parallel for i0 in 0..1024:               parallel for i0_b in 0..4:
          f32 acc = 0                               for i0_i in 0..256:
          for r0 in 0..4096:                          i64 i0 = (i0_b * 256) + i0_i
            acc = acc + x[r0*1024 + i0]               out[i0] = 0
          out[i0] = acc                             for r0 in 0..4096:
                                                      for i0_i in 0..256:
                                                        i64 i0 = (i0_b * 256) + i0_i
                                                        out[i0] = out[i0] + x[r0*1024 + i0]

    The other kept axes, if any, stay outermost (and parallel); without them the last axis is
    cut into blocks of at least ``COLUMN_BLOCK`` columns for the threads (the few left over:
    one serial block).
    """
    *others, (j, extent) = [(i, d) for i, d in zip(idx, shape) if isinstance(i, Var)]
    at = linear_index(idx, shape)
    init = Store(out, at, reduction_init(r.combiner, r.dtype))
    step = Store(out, at, combine(r.combiner, Load(out, at), r.body, r.first_wins))
    finish = r.finish(Load(out, at))  # mean divides by the count; sum, max, min: no pass
    last = [] if _is_load_of(finish, out) else [Store(out, at, finish)]

    def columns(first, count: int) -> Stmt:  # the passes over columns first .. first + count
        if isinstance(first, Const) and first.value == 0 and count == extent:
            sweep = lambda s: For(j, extent, s)  # noqa: E731
        else:
            inner = Var(f"{j.name}_i")
            sweep = lambda s: For(inner, count, Block([Declare(j, first + inner), s]))  # noqa: E731
        return Block([sweep(init), nest(r.axes, sweep(step), parallel=False)] + [sweep(s) for s in last])

    if others or not parallel or extent < 2 * COLUMN_BLOCK:
        return nest(others, columns(Const(0), extent), parallel)
    count = extent // COLUMN_BLOCK
    width = extent // count // LANES * LANES  # >= COLUMN_BLOCK; leaves a tail < count * LANES
    block, rest = Var(f"{j.name}_b"), extent - count * width
    blocks = For(block, count, columns(block * width, width), "parallel")
    return Block([blocks] + ([columns(Const(extent - rest), rest)] if rest else []))


def _is_load_of(e: Expr, buffer: Buffer) -> bool:
    return isinstance(e, Load) and e.buffer is buffer


# ----------------------------------------------------------------------------------------------
# Row kernels: keep the last reduction's operand in the output row
# ----------------------------------------------------------------------------------------------


def keeps_operand(reduction: Node, root: Node, out: Buffer, inline) -> bool:
    """Whether ``reduce_keeping_operand`` applies to the last reduction of a row kernel.

    Its operand must be computed in the kernel with a call in it (worth not recomputing), have
    the output's type (so the output holds it exactly), fit in cache as a row, and be read by
    the epilogue only at the element being written (``_read_in_place``), so that no element
    is read after the epilogue overwrote it.
    """
    operand = reduction.operands[0]
    if (root.kind is Kind.REDUCTION or operand in inline.bound or operand.kind is Kind.SOURCE
            or operand.type != root.type or out.shape != root.shape or out.dtype != root.dtype):
        return False
    row = 1
    for axis in reduction.attrs["axes"]:
        row *= operand.shape[axis]
    if isinstance(row, Sym) or row * operand.dtype.itemsize > CACHED_ROW_BYTES:  # a symbolic row: any length
        return False
    probe = inline.tensor(operand)[[Var(f"i{a}") for a in range(len(operand.shape))]]
    return any(isinstance(e, Call) for e in walk(probe)) and _read_in_place(root, operand)


def _read_in_place(root: Node, operand: Node) -> bool:
    """``root`` reads ``operand``, and only through same-shape elementwise or broadcast ops
    (which read each operand of the output's shape at the output's own index).

    The walk stops at nodes of another shape (inputs, per-row values held in locals: those
    never read the operand at another element) and at reductions (held in locals too).
    """
    found, stack = False, [root]
    while stack:
        node = stack.pop()
        if node is operand:
            found = True
        elif node.shape == root.shape and node.kind not in (Kind.SOURCE, Kind.REDUCTION):
            if node.kind not in (Kind.ELEMWISE, Kind.BROADCAST):
                return False
            stack.extend(node.operands)
    return found


def reduce_keeping_operand(reduction: Node, at: list, acc: Var, inline, out: Buffer) -> list[Stmt]:
    """Reduce ``reduction`` into ``acc``, storing each element of its operand into ``out``;
    from then on the operand reads ``out`` (``keeps_operand`` says when this is right).

    Softmax's sum pass and epilogue, before and after::

        for r1 in 0..1024:                              for r1 in 0..1024:  (split into lanes)
          acc = acc + exp(x[i0*1024 + r1] - v_max)        f32 e_exp = exp(x[i0*1024 + r1] - v_max)
        ...                                               out[i0*1024 + r1] = e_exp
        for i1 in 0..1024:                                acc = acc + e_exp
          out[i0*1024 + i1] =                           ...
            exp(x[i0*1024 + i1] - v_max) / v_sum        for i1 in 0..1024:
                                                          out[i0*1024 + i1] = out[i0*1024 + i1] / v_sum
    """
    operand = reduction.operands[0]
    element = Var("e_" + re.sub(r"\W", "_", operand.name), operand.dtype)
    computed, where = inline.tensor(operand), []
    inline.bind(operand, lambda idx: where.append(idx) or element)
    r = compute(reduction, at, [inline.tensor(operand)])
    [idx] = where  # a reduction's rule reads its operand once
    keep = [Declare(element, computed[idx]), Store(out, linear_index(idx, operand.shape), element)]
    inline.bind(operand, lambda i: Load(out, linear_index(i, operand.shape)))
    return reduce_into_lanes(acc, r, keep)
