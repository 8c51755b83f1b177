"""Strategy ``lanes``: float reductions split into SIMD lanes, without ``-ffast-math``.

A float reduction written the plain way keeps one accumulator, and gcc leaves it scalar:
turning it into SIMD means adding the elements in another order, and float addition is not
associative, so C forbids it (``-ffast-math`` would allow it for the whole file). This strategy
changes the order *explicitly*, in the loop IR, so the C compiler has nothing to prove:
``lanes`` partial accumulators, lane ``l`` summing the elements ``l, l + lanes, l + 2*lanes,
...``; the lane loop is a few SIMD instructions, and the lanes are combined at the end as a
tree. This is how NumPy's own pairwise summation adds 8 partial sums at a time; the result
stays within float32 rounding of NumPy's. Max and min keep NumPy's NaN rule lane by lane
(``mc_maximum``: a NaN wins), so a NaN anywhere in a row still gives NaN.

How many lanes is the one machine-specific choice, and the strategy's record names it
(``lanes(lanes=16)``: a record replays the same nest on any machine). The default rules ask
``lane_count(target)``: two vectors of the width the target's auto-vectorised loops get, so
each step of the lane loop is two independent vector adds (16 float32 with AVX2 or with
AVX-512 where gcc prefers 256-bit loops, 32 with ``-mprefer-vector-width=512``, 8 with SSE).

Requires a kernel holding plain scalar reductions (``plain.ScalarReduction``). Guarantees each
float one whose innermost loop has at least ``lanes`` iterations (and whose result does not
depend on the order, as float16's ``first_wins`` max/min does for signed zeros) split into
lanes; the others, and every integer reduction (exact in any order: gcc vectorises those
itself), stay as they are. Refuses a kernel with no reduction to split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...ir.compute import Reduce
from ...ir.loops import Allocate, Assign, Block, Buffer, Const, Declare, For, If, Kernel, Load, Stmt, Store, Var
from ...ir.symbolic import Sym
from ...lower.rules import combine, nest, reduction_init
from ...target import Target
from ..strategy import register_strategy
from .plain import refuse, scalar_reduction

MIN_LANES = 8  # even where loops stay scalar: 8 chains hide the latency of a float add (3-4 cycles)


def lane_count(target: Target) -> int:
    """Partial accumulators of a lane reduction on ``target``: two vectors of the width its
    auto-vectorised loops get, in float32 values (two independent vector adds per step of the
    lane loop), at least ``MIN_LANES``. Vector widths are powers of two, so this is one, as the
    strategy requires.

        AVX2, or AVX-512 with 256-bit loops: 16     AVX-512 with 512-bit loops: 32     SSE: 8
    """
    return max(MIN_LANES, 2 * target.loop_lanes(np.float32))


def splits_into_lanes(r: Reduce, lanes: int) -> bool:
    """Float reductions whose innermost loop has at least ``lanes`` iterations (and whose
    result does not depend on the order, as ``first_wins`` max/min does for signed zeros)."""
    return (r.dtype.kind == "f" and bool(r.axes) and not isinstance(r.axes[-1][1], Sym)  # symbolic: plain
            and r.axes[-1][1] >= lanes and not r.first_wins)


def reduce_into_lanes(acc: Var, r: Reduce, lanes: int, per_element: list[Stmt] = ()) -> list[Stmt]:
    """Declare ``acc`` and reduce ``r`` into it, the innermost loop split over ``lanes`` lanes.

    ``per_element`` runs before each element is accumulated (``keep_operand``'s store).
    Reductions that do not split (``splits_into_lanes``) keep the plain loop. The sum of 1000
    elements, before and after (16 lanes)::

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
    if not splits_into_lanes(r, lanes):
        step = Block([*per_element, Assign(acc, combine(r.combiner, acc, r.body, r.first_wins))])
        return [Declare(acc, reduction_init(r.combiner, r.dtype)), nest(r.axes, step, parallel=False)]
    partial = Buffer(f"{acc.name}_lanes", r.dtype, (lanes,))
    lane = Var("lane")
    (var, extent), full = r.axes[-1], r.axes[-1][1] // lanes * lanes

    def accumulate(first) -> Stmt:  # element first + lane into lane `lane`
        value = combine(r.combiner, Load(partial, lane), r.body)
        return Block([Declare(var, first + lane), *per_element, Store(partial, lane, value)])

    outer = Var(f"{var.name}_o")
    sweep = [For(outer, extent // lanes, For(lane, lanes, accumulate(outer * lanes), "vectorized"))]
    if extent > full:
        sweep.append(For(lane, extent - full, accumulate(Const(full))))
    return [Allocate(partial),
            For(lane, lanes, Store(partial, lane, reduction_init(r.combiner, r.dtype)), "vectorized"),
            nest(r.axes[:-1], Block(sweep), parallel=False),
            *fold_lanes(partial, r.combiner),
            Declare(acc, Load(partial, Const(0)))]


def fold_lanes(lanes: Buffer, combiner: str) -> list[Stmt]:
    """Combine ``lanes[0..n]`` (``n`` a power of two) into ``lanes[0]`` as a tree: 4 dependent
    steps for 16 lanes, not 15.

    The row max of softmax is on the critical path (every exp waits for it), so the depth of
    this last step shows in the time of a short row::

        for lane in 0..8: lanes[lane] = max(lanes[lane], lanes[lane + 8])
        for lane in 0..4: lanes[lane] = max(lanes[lane], lanes[lane + 4])   ... 2, 1
    """
    lane, steps, half = Var("lane"), [], lanes.shape[0] // 2
    while half:
        value = combine(combiner, Load(lanes, lane), Load(lanes, lane + half))
        steps.append(For(lane, half, Store(lanes, lane, value), "vectorized" if half > 1 else "serial"))
        half //= 2
    return steps


@register_strategy("lanes")
def split_into_lanes(kernel: Kernel, lanes: int) -> Kernel:
    """``kernel`` with each of its float scalar reductions that splits (``splits_into_lanes``)
    reduced into ``lanes`` partial accumulators (``reduce_into_lanes``); see the module docstring."""
    if not (isinstance(lanes, int) and lanes >= 2 and lanes & (lanes - 1) == 0):
        raise refuse("lanes", kernel, f"lanes must be a power of two >= 2, not {lanes!r}")
    split = []

    def in_block(block: Block) -> Block:
        stmts, out, k = block.stmts, [], 0
        while k < len(stmts):
            found = scalar_reduction(stmts[k], stmts[k + 1]) if k + 1 < len(stmts) else None
            if found is not None and splits_into_lanes(found.reduce(), lanes):
                out += reduce_into_lanes(found.acc, found.reduce(), lanes, found.per_element)
                split.append(found.acc.name)
                k += 2
            else:
                out.append(walk(stmts[k]))
                k += 1
        return Block(out)

    def walk(stmt: Stmt) -> Stmt:
        if isinstance(stmt, Block):
            return in_block(stmt)
        if isinstance(stmt, For):
            return replace(stmt, body=walk(stmt.body))
        if isinstance(stmt, If):
            return If(stmt.cond, walk(stmt.then), None if stmt.otherwise is None else walk(stmt.otherwise))
        return stmt

    body = walk(kernel.body)
    if not split:
        raise refuse("lanes", kernel, f"no float reduction whose innermost loop has {lanes} iterations or more")
    return replace(kernel, body=body)
