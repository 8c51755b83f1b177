"""Range-aware simplification of index arithmetic in a lowered kernel.

Lowering a reshape or a head split writes indices through a flat position: an element of
``q`` in ``[256, 12, 64]`` read from the fused QKV matrix ``[256, 2304]`` is at::

    ((((i1*12 + h)*64 + d) / 768) * 2304) + (((i1*12 + h)*64 + d) % 768)

Integer division and remainder cost tens of cycles each and stop gcc from vectorising the
loop. But the loops say ``h < 12`` and ``d < 64``, so ``h*64 + d < 768``: the quotient is
``i1`` and the remainder is ``h*64 + d``, and the index is ``i1*2304 + h*64 + d``. TVM's
arithmetic simplifier proves the same facts from loop ranges; this is the small version:

* ``x / k`` and ``x % k`` where ``x = k*q + r`` with ``q >= 0`` and ``0 <= r < k`` over the
  ranges of the enclosing loops become ``q`` and ``r``;
* a guard ``i < n`` that always holds (or never does) becomes a constant, and the ``Select``,
  ``&&`` or ``If`` it steers is folded.

Ranges come from ``For`` extents and from index scalars declared once (``int64_t j = kb*128
+ c``): their range is the bounds of their definition. A scalar that is ever assigned again
gets no range.
"""

from __future__ import annotations

from dataclasses import replace

from .affine import Affine, DivMod, affine, bounds, to_expr
from .loops import (BOOL, INDEX, Assign, Binary, Block, Const, Declare, Expr, For, If, Kernel,
                    Select, Stmt, WarpReduce)
from .rewrite import map_expr, map_stmt_exprs, statements

Ranges = dict[str, int]  # variable -> n: its values lie in 0..n-1


def simplify_kernel_indices(kernel: Kernel) -> Kernel:
    """``kernel`` with quotients, remainders and guards its loop ranges decide folded away.

    Requires: a lowered kernel. Guarantees: the same stores of the same values; only index
    and guard expressions change. Before/after (``h < 12``, ``d < 64``)::

        x[((h*64 + d) / 768)*2304 + (h*64 + d) % 768]   ->   x[h*64 + d]
    """
    assigned = {s.var.name for s in statements(kernel.body) if isinstance(s, Assign)}
    return replace(kernel, body=_simplify_stmt(kernel.body, {}, assigned))


def _simplify_stmt(s: Stmt, ranges: Ranges, assigned: set[str]) -> Stmt:
    if isinstance(s, For):
        inner = dict(ranges)
        if isinstance(s.extent, int):
            inner[s.var.name] = s.extent
        return replace(s, body=_simplify_stmt(s.body, inner, assigned))
    if isinstance(s, Block):
        scope = dict(ranges)
        out = []
        for sub in s.stmts:
            out.append(_simplify_stmt(sub, scope, assigned))
            if isinstance(sub, Declare) and sub.var.dtype == INDEX and sub.var.name not in assigned:
                _declare_range(out[-1], scope)
            elif isinstance(sub, WarpReduce):  # a value the loop ranges do not bound
                scope.pop(sub.var.name, None)
        return Block(out)
    if isinstance(s, If):
        cond = simplify_expr(s.cond, ranges) if _has_work(s.cond) else s.cond
        if isinstance(cond, Const):
            taken = s.then if cond.value else s.otherwise
            return Block([]) if taken is None else _simplify_stmt(taken, ranges, assigned)
        otherwise = None if s.otherwise is None else _simplify_stmt(s.otherwise, ranges, assigned)
        return If(cond, _simplify_stmt(s.then, ranges, assigned), otherwise)
    return map_stmt_exprs(s, lambda e: simplify_expr(e, ranges) if _has_work(e) else e)


_DECIDABLE = ("/", "%", "<", "<=")


def _has_work(e: Expr) -> bool:
    """Whether ``e`` holds a quotient, remainder or guard (most indices are plain sums: skip them)."""
    if isinstance(e, Binary) and e.op in _DECIDABLE:
        return True
    return any(_has_work(child) for child in e.children())


def _declare_range(declare: Declare, scope: Ranges) -> None:
    form = affine(declare.init)
    span = None if form is None else bounds(form, scope, [])
    if span is not None and span[0] >= 0:
        scope[declare.var.name] = span[1] + 1
    else:
        scope.pop(declare.var.name, None)


def simplify_expr(e: Expr, ranges: Ranges) -> Expr:
    """``e`` with the index quotients, remainders and guards that ``ranges`` decide folded."""
    def fn(sub: Expr):
        if isinstance(sub, Select):
            cond = simplify_expr(sub.cond, ranges)
            if isinstance(cond, Const):
                return simplify_expr(sub.a if cond.value else sub.b, ranges)
            return None
        if sub.dtype == INDEX:
            return _simplify_index(sub, ranges)
        if isinstance(sub, Binary) and sub.op in ("<", "<="):
            return _decide_guard(sub, ranges)
        if isinstance(sub, Binary) and sub.op == "&&":
            return _and(simplify_expr(sub.a, ranges), simplify_expr(sub.b, ranges))
        return None
    return map_expr(e, fn)


def _simplify_index(e: Expr, ranges: Ranges) -> Expr | None:
    form = affine(e)
    if form is None:
        return None  # not affine (a select, a load ...): recurse into the parts
    if not any(isinstance(atom, DivMod) for atom, _ in form.terms):
        return e  # affine without a quotient: nothing inside to resolve
    simpler = simplify_form(form, ranges)
    return e if simpler == form else to_expr(simpler)


def simplify_form(form: Affine, ranges: Ranges) -> Affine:
    """``form`` with every quotient and remainder that ``ranges`` decide replaced by its value."""
    out = Affine((), form.const)
    for atom, c in form.terms:
        if isinstance(atom, DivMod):
            out = out + resolve_divmod(atom.op, simplify_form(atom.inner, ranges), atom.k, ranges).scale(c)
        else:
            out = out + Affine(((atom, c),))
    return out


def resolve_divmod(op: str, x: Affine, k: int, ranges: Ranges) -> Affine:
    """``x / k`` or ``x % k`` without the division when ``x = k*q + r``, ``q >= 0``, ``0 <= r < k``."""
    quotient = {a: c // k for a, c in x.terms if c % k == 0}
    remainder = {a: c for a, c in x.terms if c % k}
    q = Affine.of(quotient, x.const // k)
    r = Affine.of(remainder, x.const % k)
    q_span, r_span = bounds(q, ranges, []), bounds(r, ranges, [])
    if q_span is None or r_span is None or q_span[0] < 0 or r_span[0] < 0 or r_span[1] >= k:
        return _resolve_by_a_divisor(op, x, k, ranges)
    return q if op == "/" else r


def _resolve_by_a_divisor(op: str, x: Affine, k: int, ranges: Ranges) -> Affine:
    """``x / k`` through a divisor ``c`` of ``k``: when ``x = c*y + r`` with ``y >= 0`` and
    ``0 <= r < c``, ``x / k = y / (k/c)`` and ``x % k = (y % (k/c))*c + r`` (a smaller division,
    often resolved in turn). A row ``h`` of a ``repeat`` along an axis: ``(h*T*D + t*D + d) / (2*T*D)``
    -> ``h / 2``.
    """
    for c in sorted({abs(coef) for _, coef in x.terms if 1 < abs(coef) < k and k % abs(coef) == 0}, reverse=True):
        y = Affine.of({a: coef // c for a, coef in x.terms if coef % c == 0}, x.const // c)
        r = Affine.of({a: coef for a, coef in x.terms if coef % c}, x.const % c)
        y_span, r_span = bounds(y, ranges, []), bounds(r, ranges, [])
        if y_span is None or r_span is None or y_span[0] < 0 or r_span[0] < 0 or r_span[1] >= c:
            continue
        m = k // c
        return resolve_divmod("/", y, m, ranges) if op == "/" else resolve_divmod("%", y, m, ranges).scale(c) + r
    return Affine(((DivMod(op, x, k), 1),))


def _decide_guard(cond: Binary, ranges: Ranges) -> Expr | None:
    form = affine(cond.a)
    if form is None or not isinstance(cond.b, Const) or cond.b.dtype.kind not in "iu":
        return None
    span = bounds(simplify_form(form, ranges), ranges, [])
    if span is None:
        return None
    limit = int(cond.b.value) + (cond.op == "<=")  # the guard is form < limit
    if span[1] < limit:
        return Const(True, BOOL)
    if span[0] >= limit:
        return Const(False, BOOL)
    return None


def _and(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const):
        return b if a.value else a
    if isinstance(b, Const):
        return a if b.value else b
    return Binary("&&", a, b, BOOL)
