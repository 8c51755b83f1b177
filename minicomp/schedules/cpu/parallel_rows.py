"""Strategy ``parallel_rows``: the outermost loop of a plain nest on all threads, where the
``parallel`` primitive cannot read the output's index.

``Parallel`` (``minicomp.ir.schedule``) proves a loop's iterations independent from affine
indices. A row of symbolic length ``T`` (a dynamic dimension) makes the output's index
``i0*T + i1`` a product of two unknowns, which that analysis does not read, though the nest is
as independent as any::

    for i0 in 0..R:                              parallel for i0 in 0..R:
      f32 acc = 0;  for r1 in 0..T: ...     ->     (the same body)
      for i1 in 0..T: out[i0*T + i1] = ...

Requires a plain nest (as lowering writes it: reduce, row or epilogue): the output is only
written, never read; nothing else is written but buffers allocated inside; and every store of
the output is at a *row-major position* of distinct loop variables, ``(i0*d1 + i1)*d2 + i2``
with each ``d`` the extent of the loop it multiplies (in any order: a transposed store is one
too). Such an index takes a different value for every iteration of those loops, so two
iterations of the outermost loop never write the same element. Guarantees the same nest, the
outermost loop marked ``parallel``.
"""

from __future__ import annotations

from dataclasses import replace

from ...ir.loops import Binary, Const, Declare, Expr, For, Intrinsic, Kernel, Size, Store, Var
from ...ir.rewrite import allocated, loaded_buffers, statements
from ..strategy import register_strategy
from .plain import refuse


@register_strategy("parallel_rows")
def parallel_rows(kernel: Kernel) -> Kernel:
    """``kernel`` with its outermost loop parallel (see the module docstring)."""
    def fail(why: str):
        return refuse("parallel_rows", kernel, why)

    loop, out = kernel.body, kernel.output
    if not isinstance(loop, For) or loop.kind != "serial":
        raise fail("the kernel is not one serial loop outermost")
    inside = list(statements(loop))
    if any(isinstance(s, Intrinsic) or (isinstance(s, For) and s.kind == "parallel") for s in inside):
        raise fail("it calls an intrinsic or already has a parallel loop")
    written = {s.buffer for s in inside if isinstance(s, Store)}
    if written - {out} - set(allocated(loop)) or out in loaded_buffers(loop):
        raise fail(f"it writes buffers other than {out.name}, or reads {out.name}")
    extents: dict[str, object] = {}
    for s in inside:
        if isinstance(s, For) and str(extents.setdefault(s.var.name, s.extent)) != str(s.extent):
            raise fail(f"two loops named {s.var.name} run over different extents")
    for s in inside:  # a scalar named like a loop is not that loop's variable
        if isinstance(s, Declare):
            extents.pop(s.var.name, None)
    for store in (s for s in inside if isinstance(s, Store) and s.buffer is out):
        if not _distinct(row_major_position(store.index, extents)):
            raise fail(f"{out.name} is stored at {store.index}, not a row-major position of loop variables")
    return replace(kernel, body=replace(loop, kind="parallel"))


def row_major_position(index: Expr, extents: dict) -> list[str] | None:
    """The loop variables of ``index`` if it reads ``(v0*e1 + v1)*e2 + v2 ...`` with each ``e``
    the extent of the loop of the variable it is followed by (``extents``), else None."""
    if isinstance(index, Var) and index.name in extents:
        return [index.name]
    if not (isinstance(index, Binary) and index.op == "+" and isinstance(index.b, Var) and index.b.name in extents):
        return None
    head, var = index.a, index.b.name
    if not (isinstance(head, Binary) and head.op == "*" and _is_extent(head.b, extents[var])):
        return None
    before = row_major_position(head.a, extents)
    return None if before is None else before + [var]


def _is_extent(e: Expr, extent) -> bool:
    if isinstance(e, Const):
        return e.value == extent
    return isinstance(e, Size) and str(e.value) == str(extent)


def _distinct(names: list[str] | None) -> bool:
    return names is not None and len(set(names)) == len(names)
