"""What the GPU strategies share: which output loops are independent, fresh names, flat indices.

A GPU strategy turns a plain nest into the *thread-serial form* (``fuse_threads.py`` says
what that is): block and thread loops around the work, each thread's iterations found from
one flat position. Three questions come up in each, answered here:

* **which output loops may run at once** (``independent_loops``): the outermost loops of the
  nest whose iterations touch different elements, by the dependence test of ``Parallel`` and
  ``Bind`` (``minicomp.ir.dependence.conflict``), or, where a symbolic size makes an index
  non-affine (``i0*T + i1``), by the row-major test of ``parallel_rows``;
* **which names are free** (``Namer``): new loops and scalars never shadow the kernel's own;
* **where a flat position lies** (``unravel``): ``n`` in ``0..N0*N1`` is ``i0 = n / N1``,
  ``i1 = n % N1``, extents ints or symbolic sizes::

      for i0 in 0..4:                          gpu_block.x for b in 0..1:
        for i1 in 0..10:               --->      gpu_thread.x for t in 0..64:
          y[i0*10 + i1] = x[...]                   if (b*64 + t) < 40: y[b*64 + t] = x[...]
"""

from __future__ import annotations

import math

from ...ir.dependence import carried_scalars, conflict, scalar_names
from ...ir.loops import (BOOL, GPU_LOOPS, INDEX, Binary, Const, Expr, For, Intrinsic, Kernel, Size, Stmt,
                         Store, as_expr)
from ...ir.rewrite import allocated, declared_names, loaded_buffers, statements
from ...ir.symbolic import Sym, SymbolicShapeError, ceil_div
from ..cpu.parallel_rows import row_major_position
from ..cpu.plain import refuse

#: CUDA's limit on blocks along x: a longer grid loops grid-stride inside each thread instead
MAX_BLOCKS = 2**31 - 1
WARP = 32


class Namer:
    """Fresh names for new loops and scalars: none shadows a name the kernel declares."""

    def __init__(self, kernel: Kernel):
        self.taken = declared_names(kernel.body)

    def __call__(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2`` ... the first not taken (then taken)."""
        name, n = base, 1
        while name in self.taken:
            name, n = f"{base}_{n}", n + 1
        self.taken.add(name)
        return name


def check_plain(strategy: str, kernel: Kernel) -> None:
    """Refuse a kernel that is not a plain nest: GPU strategies start from what lowering wrote."""
    for s in statements(kernel.body):
        if isinstance(s, Intrinsic):
            raise refuse(strategy, kernel, "it calls an intrinsic (scheduled for a CPU already)")
        if isinstance(s, For) and s.kind != "serial":
            kind = s.kind if s.kind not in GPU_LOOPS else f"bound to {GPU_LOOPS[s.kind]}"
            raise refuse(strategy, kernel, f"the loop {s.var.name} is {kind}: not a plain nest")


def independent_loops(kernel: Kernel, chain: list[For]) -> int:
    """How many of the outermost loops of ``chain`` (a perfect nest) may run all their
    iterations at once: the largest ``k`` for which ``chain[:k]`` never touch one element from
    two iterations (0: none may). A nest with an empty loop runs nothing: all are independent."""
    if any(not isinstance(loop.extent, Sym) and loop.extent == 0 for loop in chain):
        return len(chain)
    for k in range(len(chain), 0, -1):
        body = chain[k - 1].body
        if free_of_conflicts(kernel, chain[:k], body) or rows_apart(kernel, chain[:k], body):
            return k
    return 0


def free_of_conflicts(kernel: Kernel, loops: list[For], body: Stmt) -> bool:
    """Whether no two iterations of ``loops`` (around ``body``) touch one element, one writing
    (``conflict``; an answer that depends on a symbolic size counts as a conflict)."""
    try:
        return conflict(kernel, loops, body, every_var=True) is None
    except SymbolicShapeError:
        return False


def rows_apart(kernel: Kernel, loops: list[For], body: Stmt) -> bool:
    """``parallel_rows``' test for indices an affine analysis cannot read (symbolic strides):
    only the output is written (and buffers allocated inside), it is never read nor shares
    memory, no scalar is carried, and every store of it is at a row-major position of distinct
    loop variables among which are all of ``loops``."""
    out = kernel.output
    if kernel.aliases or carried_scalars(body) or out in loaded_buffers(body):
        return False
    inside = list(statements(body))
    written = {s.buffer for s in inside if isinstance(s, Store)}
    if written - {out} - set(allocated(body)):
        return False
    extents: dict[str, object] = {}
    for s in statements(kernel.body):  # the loops around ``loops`` too: a position reads their variables
        if isinstance(s, For) and str(extents.setdefault(s.var.name, s.extent)) != str(s.extent):
            return False
    for name in scalar_names(kernel.body):  # a scalar named like a loop is not that loop's variable
        extents.pop(name, None)
    names = {loop.var.name for loop in loops}
    for store in (s for s in inside if isinstance(s, Store) and s.buffer is out):
        position = row_major_position(store.index, extents)
        if position is None or len(set(position)) != len(position) or not names <= set(position):
            return False
    return True


def extent_product(extents: list) -> int | Sym:
    """The number of positions of loops with these extents (a ``Sym`` where one is symbolic)."""
    return math.prod(extents) if extents else 1


def unravel(flat: Expr, loops: list[tuple[str, object]]) -> dict[str, Expr]:
    """Loop variable -> its value at row-major position ``flat`` of ``loops`` (``(name, extent)``,
    outermost first): the innermost is ``flat % n_last``, the outermost ``flat / (the rest)``."""
    values: dict[str, Expr] = {}
    inner = 1
    for k in range(len(loops) - 1, -1, -1):
        name, extent = loops[k]
        quotient = divide(flat, inner)
        values[name] = quotient if k == 0 else remainder(quotient, extent)
        inner = inner * extent
    return values


def divide(a: Expr, n) -> Expr:
    """``a / n`` for an index and a size (int or ``Sym``); ``a`` itself for 1."""
    if not isinstance(n, Sym) and n == 1:
        return a
    return Binary("/", a, as_expr(n), INDEX)


def remainder(a: Expr, n) -> Expr:
    """``a % n`` for an index and a size; 0 for 1."""
    if not isinstance(n, Sym) and n == 1:
        return Const(0)
    return Binary("%", a, as_expr(n), INDEX)


def less(a: Expr, n) -> Expr:
    """``a < n`` for an index and a size."""
    return Binary("<", a, as_expr(n), BOOL)


def equal(a: Expr, n: int) -> Expr:
    """``a == n`` for an index."""
    return Binary("==", a, Const(n), BOOL)


def divides(n, k: int) -> bool:
    """Whether ``k`` divides the size ``n`` for every value of its symbols (``4*T``: 4 does)."""
    try:
        return k == 1 or n % k == 0
    except SymbolicShapeError:
        return False


def size_expr(n) -> Expr:
    """A size as an expression: an index constant, or ``Size``."""
    return Size(n) if isinstance(n, Sym) else Const(n)


def grid(count, per_block: int, max_blocks: int) -> tuple[object, object]:
    """``(blocks, rounds)`` that cover ``count`` items, ``per_block`` per block and round:
    ``ceil(count / per_block)`` blocks in one round, or, where that is more than
    ``max_blocks`` (a static count), ``max_blocks`` blocks and as many rounds as needed
    (grid-stride). A symbolic count gets its ``ceil_div`` size: more than 2^31-1 blocks of
    ``per_block`` would be more elements than a GPU's memory holds."""
    blocks = ceil_div(count, per_block)
    if isinstance(blocks, Sym) or blocks <= max_blocks:
        return blocks, 1
    return max_blocks, -(-blocks // max_blocks)
