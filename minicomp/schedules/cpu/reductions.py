"""The default CPU schedules of reduce, row, epilogue and scan kernels.

Lowering writes every reduction with one scalar accumulator per value (``schedules/cpu/plain.py``
reads that form). On a CPU that order is slow in two ways, and each rule here picks the
strategy that fixes it, with its parameters, from the kernel's sizes:

* **a float reduction along a row** stays scalar (gcc may not reorder a float sum): split it
  into SIMD lanes (``lanes.py``: ``lanes``);
* **a reduction that keeps the contiguous axis** (``x.sum(axis=0)``, a matmul's ``b[k, j]``)
  walks memory with a stride: loop over the reduction outside the row and accumulate in the
  output row (``accumulate.py``: ``accumulate_in_output``, with ``COLUMN_BLOCK`` blocks as the
  threads' tasks when the row is all there is);
* **softmax computes exp twice**: keep it in the output row (``keep_operand.py``);
* **a matmul big enough** is packed around the micro-kernel (``packed_gemm.py``);

and the outermost loop runs on all cores (``Parallel``) where ``worth_parallel`` says the
work pays for the threads. Softmax over rows of 1000, the steps and the result::

    # schedule: parallel(i0), keep_operand(), lanes(lanes=16)
    parallel for i0 in 0..4096:
      (the row max over 16 lanes); (the row sum over 16 lanes, storing each exp in the row)
      for i1 in 0..1000: out[i0*1000 + i1] = out[i0*1000 + i1] / v_sum

``reduce_into_lanes`` and ``fold_lanes`` (``lanes.py``) are importable from here too: the
FlashAttention schedule reduces its score tiles with them.
"""

from __future__ import annotations

import math

from ...ir.affine import affine
from ...ir.loops import Block, For, If, Kernel, Store
from ...ir.rewrite import loads
from ...ir.schedule import Parallel, Primitive
from ...ir.symbolic import Sym
from ...schedules.cpu.work import worth_parallel
from ..strategy import Strategy
from .lanes import LANES, fold_lanes, reduce_into_lanes, splits_into_lanes  # noqa: F401  (re-exported)
from .plain import ScalarReduction, output_loops, reductions_in, row_major, same_index, scalar_reduction, statements_of

COLUMN_BLOCK = 256  # columns per parallel task of a column reduction with no other kept axis
CACHED_ROW_BYTES = 1 << 18  # rows up to this size stay in L2 between the passes of a row kernel


def reduce_steps(kernel: Kernel, target=None) -> list[Primitive]:
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
        if worth and not others and not isinstance(last.extent, Sym) and last.extent >= 2 * COLUMN_BLOCK:
            return [Strategy("accumulate_in_output", column_block=COLUMN_BLOCK)]
        return parallel_steps(kernel, others, worth) + [Strategy("accumulate_in_output")]
    return parallel_steps(kernel, chain, worth) + _lanes(red)


def row_steps(kernel: Kernel, target=None) -> list[Primitive]:
    """``row`` kernels (softmax, layer norm): the rows on all cores when the work pays, the last
    reduction's operand kept in the output row when the row stays in L2, reductions in lanes."""
    chain, body = output_loops(kernel)
    reductions = reductions_in(Block(statements_of(body)))
    if not reductions:
        return []
    row = reductions[0].length
    steps = parallel_steps(kernel, chain, worth_parallel(_extents(chain) * row * (len(reductions) + 1)))
    last = reductions[-1].length
    if not isinstance(last, Sym) and last * kernel.output.dtype.itemsize <= CACHED_ROW_BYTES:
        steps.append(Strategy("keep_operand"))
    return steps + _lanes(*reductions)


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


def _lanes(*reductions: ScalarReduction) -> list[Primitive]:
    """``lanes`` when one of ``reductions`` splits."""
    return [Strategy("lanes", lanes=LANES)] if any(splits_into_lanes(r.reduce(), LANES) for r in reductions) else []


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
