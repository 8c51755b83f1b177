"""The default CPU schedules of reduce, row, epilogue and scan kernels.

Lowering writes every reduction with one scalar accumulator per value (``schedules/cpu/plain.py``
reads that form). On a CPU that order is slow in two ways, and each rule here picks the
strategy that fixes it, with its parameters, from the kernel's sizes:

* **a float reduction along a row** stays scalar (gcc may not reorder a float sum): split it
  into SIMD lanes (``lanes.py``: ``lanes``, ``lane_count(target)`` of them);
* **a reduction that keeps the contiguous axis** (``x.sum(axis=0)``, a matmul's ``b[k, j]``)
  walks memory with a stride: loop over the reduction outside the row and accumulate in the
  output row (``accumulate.py``: ``accumulate_in_output``, with ``column_block(target)``
  columns per thread task when the row is all there is);
* **softmax computes exp twice**: keep it in the output row (``keep_operand.py``) when the row
  stays in L2 between the passes (``cached_row_bytes(target)``);
* **a matmul big enough** is packed around the micro-kernel (``packed_gemm.py``);

and the outermost loop runs on all cores (``Parallel``) where ``worth_parallel`` says the
work pays for the threads. The numbers that depend on the machine are small rules of the
``Target`` every rule receives (each with its reason, below); the steps record the numbers they
chose, so a recorded schedule replays the same nest anywhere. Softmax over rows of 1000, on an
AVX2 machine (16 lanes), the steps and the result::

    # schedule: parallel(i0), keep_operand(), lanes(lanes=16)
    parallel for i0 in 0..4096:
      (the row max over 16 lanes); (the row sum over 16 lanes, storing each exp in the row)
      for i1 in 0..1000: out[i0*1000 + i1] = out[i0*1000 + i1] / v_sum

The FlashAttention schedule reduces its score tiles with the same lanes
(``lanes.reduce_into_lanes``, ``lane_count(target)`` of them).
"""

from __future__ import annotations

import math

from ...ir.affine import affine
from ...ir.loops import Block, For, If, Kernel, Store
from ...ir.rewrite import loads
from ...ir.schedule import Parallel, Primitive
from ...ir.symbolic import Sym
from ...schedules.cpu.work import worth_parallel
from ...target import Target
from ..strategy import Strategy
from .accumulate import GROUPS_PER_BLOCK
from .lanes import lane_count, splits_into_lanes
from .plain import ScalarReduction, output_loops, reductions_in, row_major, same_index, scalar_reduction, statements_of


def column_block(target: Target) -> int:
    """Columns per parallel task of a column reduction with no other kept axis:
    ``GROUPS_PER_BLOCK`` groups of ``lane_count(target)`` (256 with AVX2), so each task's row
    segment is a few vector loop trips long and its blocks split at whole vectors."""
    return GROUPS_PER_BLOCK * lane_count(target)


def cached_row_bytes(target: Target) -> int:
    """The longest output row (bytes) kept between the passes of a row kernel: half of L2
    (256 KiB of 512 KiB), so it and the input row the passes read again both stay in L2."""
    return target.l2_bytes // 2


def reduce_steps(kernel: Kernel, target: Target) -> list[Primitive]:
    """``reduce`` kernels: the outermost loop parallel when the work pays; a reduction keeping
    its contiguous axis accumulates in the output row (in parallel column blocks when the row
    is all there is), any other is split into lanes."""
    chain, body = output_loops(kernel)
    stmts = statements_of(body)
    red = scalar_reduction(*stmts[:2]) if len(stmts) == 3 else None
    if red is None:
        return []
    worth = worth_parallel(_extents(chain) * red.length)
    if _accumulates_in_row(kernel, chain, red, stmts[2]):
        *others, last = chain
        block = column_block(target)
        if worth and not others and not isinstance(last.extent, Sym) and last.extent >= 2 * block:
            return [Strategy("accumulate_in_output", column_block=block)]
        return parallel_steps(kernel, others, worth) + [Strategy("accumulate_in_output")]
    return parallel_steps(kernel, chain, worth) + _lanes(target, red)


def row_steps(kernel: Kernel, target: Target) -> list[Primitive]:
    """``row`` kernels (softmax, layer norm): the rows on all cores when the work pays, the last
    reduction's operand kept in the output row when the row stays in L2, reductions in lanes."""
    chain, body = output_loops(kernel)
    reductions = reductions_in(Block(statements_of(body)))
    if not reductions:
        return []
    row = reductions[0].length
    steps = parallel_steps(kernel, chain, worth_parallel(_extents(chain) * row * (len(reductions) + 1)))
    last = reductions[-1].length
    if not isinstance(last, Sym) and last * kernel.output.dtype.itemsize <= cached_row_bytes(target):
        steps.append(Strategy("keep_operand"))
    return steps + _lanes(target, *reductions)


def epilogue_steps(kernel: Kernel, target=None) -> list[Primitive]:
    """``epilogue`` kernels that ``packed_gemm`` left plain: the i-k-j order, accumulating each
    output row in place, the epilogue finishing the row while it is in cache; the loops outside
    the row parallel when the work pays."""
    if kernel.schedule:  # packed
        return []
    chain, body = output_loops(kernel)
    stmts = statements_of(body)
    red = scalar_reduction(*stmts[:2]) if len(stmts) == 3 else None
    if red is None or not chain:
        return []
    worth = worth_parallel(_extents(chain) * red.length)
    return parallel_steps(kernel, chain[:-1], worth) + [Strategy("accumulate_in_output")]


def scan_steps(kernel: Kernel, target=None) -> list[Primitive]:
    """``scan`` kernels: the loops before the scanned axis on all cores when the work pays (not
    where the scan's length is known only at the call: its nest is guarded by an ``if``)."""
    chain, body = output_loops(kernel)
    if isinstance(body, If) or not _shares(chain) or not worth_parallel(kernel.output.size):
        return []
    return [Parallel(chain[0].var.name)]


def parallel_steps(kernel: Kernel, loops: list[For], worth: bool) -> list[Primitive]:
    """The outermost of ``loops`` (the kernel's outermost loop) on all threads, when ``worth``
    it: ``Parallel`` where the output's strides are known sizes, else ``parallel_rows``, which
    reads a symbolic row length (``i0*T + i1``)."""
    if not (worth and _shares(loops)):
        return []
    if any(isinstance(d, Sym) for d in kernel.output.shape[1:]):
        return [Strategy("parallel_rows")]
    return [Parallel(loops[0].var.name)]


def _shares(loops: list[For]) -> bool:
    """Whether the outermost of ``loops`` has iterations to share out."""
    return bool(loops) and (isinstance(loops[0].extent, Sym) or loops[0].extent > 1)


def _lanes(target: Target, *reductions: ScalarReduction) -> list[Primitive]:
    """``lanes`` (``lane_count(target)`` of them) when one of ``reductions`` splits."""
    lanes = lane_count(target)
    return [Strategy("lanes", lanes=lanes)] if any(splits_into_lanes(r.reduce(), lanes) for r in reductions) else []


def _extents(loops: list[For]):
    return math.prod(loop.extent for loop in loops)


def _accumulates_in_row(kernel: Kernel, chain: list[For], red: ScalarReduction, store: Store) -> bool:
    """Whether the reduction keeps the axis its operands are contiguous along (the last output
    loop ``j``: every load that moves with ``j`` moves by one element), and the output can hold
    the running value (same dtype, stored row-major)."""
    if not chain or kernel.output.dtype != red.acc.dtype or not same_index(store.index, row_major(chain)):
        return False
    j = chain[-1].var.name
    strides = []
    for load in loads(red.value):
        form = affine(load.index)
        if form is None:
            return False
        strides.append(form.coeff(j))
    return any(strides) and all(stride in (0, 1) for stride in strides)
