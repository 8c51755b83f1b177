"""Default schedules: how each kind of kernel is shaped before it becomes C.

Lowering writes the plainest loop nest that computes a kernel; the schedule then decides how
it runs on the machine. Every step is a schedule primitive (``minicomp.ir.schedule``), so the
printed kernel lists what was done (``# schedule: ...``) and every step was legality-checked.

* **elementwise** (and broadcast): the outermost loop runs on all cores (``parallel``) once
  there is enough work (elements x ``element_cost``: a gelu element counts more than an add),
  and the innermost loop is marked ``vectorized`` when every input is
  read contiguously along it (a strided read would become a slow gather)::

      for i0 in 0..4096:                # schedule: parallel(i0), vectorize(i1)
        for i1 in 0..1024:              parallel for i0 in 0..4096:
          y[i0*1024 + i1] = ...    ->     vectorized for i1 in 0..1024: ...

* **elementwise that transposes** (an input read with a large stride along the innermost
  loop, and unit stride along another, e.g. NHWC -> NCHW): the two loops are tiled
  ``tile_size(target)`` x ``tile_size(target)`` (16 x 16 with 64-byte cache lines) so both the
  reads and the writes of a tile use whole cache lines::

      for c in 0..64:                   # schedule: reorder(h, c, w), tile(c, w, 16, 16), parallel(h)
        for h in 0..56:
          for w in 0..56:
            y[c, h, w] = x[h, w, c]      (x read with stride 64 along w)

* **rows** (softmax, layer norm), **reductions**, **matmul** and **conv2d** get their own
  rules and strategies (``reductions.py``: lanes, accumulation in the output row, a kept
  operand; ``packed_gemm.py``: packed panels around the micro-kernel);
* **attention** is tiled FlashAttention-style (``flash_attention.py``).
"""

from __future__ import annotations

import math

import numpy as np

from ...ir.affine import affine
from ...ir.loops import Block, Call, For, Kernel, Load, Store, walk
from ...ir.symbolic import Sym
from ...ir.schedule import Parallel, Primitive, Reorder, Tile, Vectorize
from ...schedules.cpu.work import worth_parallel
from ...target import Target

VECTOR_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def perfect_nest(kernel: Kernel) -> tuple[list[For], Store] | None:
    """The loops of a kernel that is one perfect nest around a single store, or None."""
    chain, stmt = [], kernel.body
    while isinstance(stmt, For):
        chain.append(stmt)
        stmt = stmt.body
    if isinstance(stmt, Block) and len(stmt.stmts) == 1:
        stmt = stmt.stmts[0]
    return (chain, stmt) if isinstance(stmt, Store) and chain else None


def tile_size(target: Target) -> int:
    """Rows and columns of a transposing tile: one cache line of float32 per side (16 with
    64-byte lines), so each row of the tile read and each row written is a whole line."""
    return target.line_bytes // 4


def transposed_loop(chain: list[For], store: Store, tile: int) -> str | None:
    """A loop of at least ``tile`` iterations along which some input is read with unit stride
    while the innermost is not."""
    inner = chain[-1].var.name
    names = {loop.var.name for loop in chain}
    for load in (e for e in walk(store.value) if isinstance(e, Load)):
        form = affine(load.index)
        if form is None:
            continue
        coefficients = {atom: c for atom, c in form.terms if isinstance(atom, str)}
        if abs(coefficients.get(inner, 0)) <= 1:
            continue
        unit = [name for name, c in coefficients.items() if c == 1 and name in names and name != inner]
        if unit and next(loop for loop in chain if loop.var.name == unit[0]).extent >= tile:
            return unit[0]
    return None


def unit_stride(chain: list[For], store: Store) -> bool:
    """Whether every load walks memory contiguously (or stays put) along the innermost loop."""
    inner = chain[-1].var.name
    for load in (e for e in walk(store.value) if isinstance(e, Load)):
        form = affine(load.index)
        if form is None or abs(dict((a, c) for a, c in form.terms if isinstance(a, str)).get(inner, 0)) > 1:
            return False
    return True


def elementwise_steps(kernel: Kernel, target: Target) -> list[Primitive]:
    """The default steps for an elementwise kernel on ``target`` (see the module docstring)."""
    nest = perfect_nest(kernel)
    if nest is None:
        return []
    chain, store = nest
    work = math.prod(loop.extent for loop in chain) * element_cost(store.value)  # a Sym for symbolic extents
    inner = chain[-1]
    static_inner = not isinstance(inner.extent, Sym)
    steps: list[Primitive] = []
    tile = tile_size(target)
    moved = transposed_loop(chain, store, tile) if static_inner and inner.extent >= tile else None
    if moved is not None:
        order = [loop.var.name for loop in chain if loop.var.name not in (moved, inner.var.name)]
        order += [moved, inner.var.name]
        if order != [loop.var.name for loop in chain]:
            steps.append(Reorder(*order))
        steps.append(Tile(moved, inner.var.name, tile, tile))
        outermost = order[0] if len(order) > 2 else f"{moved}_o"
    else:
        outermost = chain[0].var.name
        if store.buffer.dtype in VECTOR_DTYPES and static_inner and inner.extent >= 8 and unit_stride(chain, store):
            steps.append(Vectorize(inner.var.name))
    if worth_parallel(work):
        steps.append(Parallel(outermost))
    return steps


# The weights of element_cost: ratios between kinds of work, the same on any CPU (not machine
# properties: what a unit of work costs on a machine is measured once, in PARALLEL_MIN_WORK).
CALL_COST = 8   # a vectorised exp, tanh, erf or log costs about as much as 8 additions
COPY_COST = 3   # what element_cost counts for one load, one constant and one operation


def element_cost(value) -> int:
    """How much work computing one element is, in units of ``out = x + 1`` (at least 1).

    A gelu element costs about 15 of them: threads pay for a gelu chain from a few thousand
    elements, for an addition from tens of thousands (``minicomp bench --parallel-threshold``).
    """
    return max(1, _value_nodes(value) // COPY_COST)


def _value_nodes(e) -> int:
    """Nodes of an expression, a call counting ``CALL_COST``; a load counts 1 (not its index)."""
    if isinstance(e, Load):
        return 1
    return (CALL_COST if isinstance(e, Call) else 1) + sum(_value_nodes(c) for c in e.children())
