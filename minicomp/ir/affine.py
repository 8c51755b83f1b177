"""Affine index analysis: an index expression as ``{variable: coefficient} + constant``.

Every legality check of the schedule primitives asks questions about index expressions:
*which elements does this loop touch, and can two iterations touch the same one?* Lowered
indices are affine in the loop variables, so they are analysed in that form::

    x[(i0*8 + i1_o*4 + i1_i) + 1]   ->   Affine(i0: 8, i1_o: 4, i1_i: 1; const 1)

After ``fuse`` an index also holds ``f / 8`` and ``f % 8``: those become *atoms* of their own
(``DivMod``), and ``(f/8)*8 + f%8`` folds back to ``f``.

Three questions are answered here, each with the loop extents (``ranges``) and the *guards*
that ``split`` adds around a tail (``i1_o*4 + i1_i < 7``: the guarded sum is one atom whose
values are 0..6, which is what makes split loops analysable):

* ``determines(f, v, ...)``: does the value of ``f`` pin down ``v``? (Different iterations of
  ``v`` then write different elements: the test of ``parallel`` and ``vectorize``.)
* ``bounds(f, ...)``: the smallest and largest value of ``f`` (regions to copy, buffer sizes).
* ``delinearize(f, shape, ...)``: a flat index as one index per axis of a row-major buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from .loops import INDEX, Binary, Const, Expr, Unary, Var, simplify_binary
from .rewrite import c_div, c_mod, map_expr

Atom = Union[str, "DivMod"]  # a variable name, or a quotient/remainder of an affine form


@dataclass(frozen=True)
class DivMod:
    """``inner / k`` or ``inner % k`` (C's truncating meaning; indices are non-negative)."""

    op: str
    inner: "Affine"
    k: int

    def __str__(self) -> str:
        return f"({self.inner}){self.op}{self.k}"


@dataclass(frozen=True)
class Affine:
    """``sum(coefficient * atom) + const``; terms keep the order they first appeared in."""

    terms: tuple[tuple[Atom, int], ...] = ()
    const: int = 0

    @staticmethod
    def of(terms: dict, const: int = 0) -> "Affine":
        """Normalise: drop zero coefficients, fold ``(x/k)*k*c + (x%k)*c`` into ``x*c``."""
        terms = {a: c for a, c in terms.items() if c != 0}
        for atom in list(terms):
            if isinstance(atom, DivMod) and atom.op == "/" and atom in terms:
                rem = DivMod("%", atom.inner, atom.k)
                if rem in terms and terms[atom] == terms[rem] * atom.k:
                    scale = terms.pop(rem)
                    del terms[atom]
                    folded = atom.inner.scale(scale)
                    return Affine.of(_merge(terms, dict(folded.terms)), const + folded.const)
        return Affine(tuple(terms.items()), int(const))

    def __add__(self, other: "Affine") -> "Affine":
        return Affine.of(_merge(dict(self.terms), dict(other.terms)), self.const + other.const)

    def __sub__(self, other: "Affine") -> "Affine":
        return self + other.scale(-1)

    def scale(self, k: int) -> "Affine":
        """``k * self``."""
        return Affine.of({a: c * k for a, c in self.terms}, self.const * k)

    @property
    def is_const(self) -> bool:
        """Whether the form reads no variable."""
        return not self.terms

    def coeff(self, atom: Atom) -> int:
        """The coefficient of ``atom`` (0 if absent)."""
        return dict(self.terms).get(atom, 0)

    def names(self) -> set[str]:
        """Every variable the form reads, also inside quotients and remainders."""
        out = set()
        for atom, _ in self.terms:
            out |= {atom} if isinstance(atom, str) else atom.inner.names()
        return out

    def split(self, inside: set[str]) -> tuple["Affine", "Affine"]:
        """(the terms that read only variables in ``inside``, the rest plus the constant)."""
        keep = {a: c for a, c in self.terms if _atom_names(a) <= inside}
        rest = {a: c for a, c in self.terms if a not in keep}
        return Affine.of(keep), Affine.of(rest, self.const)

    def rename(self, names: dict[str, str]) -> "Affine":
        """The same form over renamed variables."""
        def atom(a):
            return names.get(a, a) if isinstance(a, str) else DivMod(a.op, a.inner.rename(names), a.k)
        return Affine.of({atom(a): c for a, c in self.terms}, self.const)

    def __str__(self) -> str:
        from .loop_text import print_expr

        return print_expr(to_expr(self))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for atom, c in b.items():
        out[atom] = out.get(atom, 0) + c
    return out


def _atom_names(atom: Atom) -> set[str]:
    return {atom} if isinstance(atom, str) else atom.inner.names()


# ----------------------------------------------------------------------------------------------
# Expressions <-> affine forms
# ----------------------------------------------------------------------------------------------


def affine(e: Expr) -> Affine | None:
    """The affine form of an index expression, or None if it is not affine (loads, calls ...)."""
    if isinstance(e, Const) and e.dtype.kind in "iu":
        return Affine((), int(e.value))
    if isinstance(e, Var) and e.dtype == INDEX:
        return Affine(((e.name, 1),))
    if isinstance(e, Unary) and e.op == "-" and e.dtype == INDEX:
        a = affine(e.a)
        return None if a is None else a.scale(-1)
    if not (isinstance(e, Binary) and e.dtype == INDEX):
        return None
    a, b = affine(e.a), affine(e.b)
    if a is None or b is None:
        return None
    if e.op == "+":
        return a + b
    if e.op == "-":
        return a - b
    if e.op == "*" and (a.is_const or b.is_const):
        return b.scale(a.const) if a.is_const else a.scale(b.const)
    if e.op in ("/", "%") and b.is_const and b.const > 0:
        return divmod_form(e.op, a, b.const)
    return None


def divmod_form(op: str, x: Affine, k: int) -> Affine:
    """``x / k`` or ``x % k`` as an affine form (folded when ``x`` is constant or ``k`` is 1)."""
    if x.is_const:
        return Affine((), (c_div if op == "/" else c_mod)(x.const, k))
    if k == 1:
        return x if op == "/" else Affine()
    return Affine(((DivMod(op, x, k), 1),))


def atom_expr(atom: Atom) -> Expr:
    """The expression of one atom."""
    if isinstance(atom, str):
        return Var(atom)
    return Binary(atom.op, to_expr(atom.inner), Const(atom.k), INDEX)


def to_expr(a: Affine) -> Expr:
    """An index expression for ``a``: ``(i0 * 8) + i1 - 1``."""
    result: Expr | None = None
    for atom, c in a.terms:
        term = simplify_binary("*", atom_expr(atom), Const(abs(c)))
        if result is None:
            result = term if c > 0 else Binary("-", Const(0), term, INDEX)
        else:
            result = simplify_binary("+" if c > 0 else "-", result, term)
    if result is None:
        return Const(a.const)
    if a.const:
        result = simplify_binary("+" if a.const > 0 else "-", result, Const(abs(a.const)))
    return result


def simplify_index(e: Expr) -> Expr:
    """``e`` with each maximal affine sub-expression rewritten in its canonical, flat form."""
    def fn(sub: Expr):
        if sub.dtype != INDEX:
            return None
        form = affine(sub)
        return None if form is None else to_expr(form)
    return map_expr(e, fn)


# ----------------------------------------------------------------------------------------------
# Guards: the conditions split adds around a tail
# ----------------------------------------------------------------------------------------------

Guard = tuple[Affine, int]  # sum < bound


def guards_of(cond: Expr) -> list[Guard]:
    """The ``affine < constant`` facts a condition states (``&&`` splits; others say nothing)."""
    if isinstance(cond, Binary) and cond.op == "&&":
        return guards_of(cond.a) + guards_of(cond.b)
    if isinstance(cond, Binary) and cond.op in ("<", "<=") and isinstance(cond.b, Const):
        form = affine(cond.a)
        if form is not None and cond.b.dtype.kind in "iu":
            return [(form, int(cond.b.value) + (cond.op == "<="))]
    return []


def guard_cond(sum_: Expr, bound: int) -> Expr:
    """The condition ``sum_ < bound``."""
    from .loops import BOOL

    return Binary("<", sum_, Const(bound), BOOL)


# ----------------------------------------------------------------------------------------------
# Atoms: the independent pieces of an index, each with a range
# ----------------------------------------------------------------------------------------------


@dataclass
class Piece:
    """One independent term of an index: ``coeff * value`` with ``value`` in ``0..size-1``."""

    coeff: int
    size: int
    what: object  # a variable name, a DivMod, or an Affine (a guarded sum)

    @property
    def span(self) -> int:
        """How far the piece's term can move: ``|coeff| * (size - 1)``."""
        return abs(self.coeff) * max(self.size - 1, 0)


def _plain_bounds(form: Affine, ranges: dict[str, int]) -> tuple[int, int] | None:
    """Bounds of a form over the box of its variables' ranges (no guards)."""
    pieces = pieces_of(form, ranges, [])
    return None if pieces is None else _sum_bounds(pieces, form.const)


def _sum_bounds(pieces: list[Piece], const: int) -> tuple[int, int]:
    lo = const + sum(min(0, p.coeff * max(p.size - 1, 0)) for p in pieces)
    hi = const + sum(max(0, p.coeff * max(p.size - 1, 0)) for p in pieces)
    return lo, hi


def _atom_piece(atom: Atom, coeff: int, ranges: dict[str, int]) -> Piece | None:
    if isinstance(atom, str):
        return Piece(coeff, ranges[atom], atom) if atom in ranges else None
    inner = _plain_bounds(atom.inner, ranges)
    if inner is None or inner[0] < 0:
        return None
    size = inner[1] // atom.k + 1 if atom.op == "/" else min(atom.k, inner[1] + 1)
    return Piece(coeff, size, atom)


def pieces_of(form: Affine, ranges: dict[str, int], guards: list[Guard]) -> list[Piece] | None:
    """``form`` (its constant aside) as independent pieces, or None if a variable has no range.

    A guard ``g < n`` whose terms appear in ``form`` scaled by one factor ``s`` becomes a single
    piece ``s * g`` with ``g`` in ``0..n-1``: tighter than the box of its variables.
    """
    terms = dict(form.terms)
    pieces = []
    for g, bound in sorted(guards, key=lambda guard: -len(guard[0].terms)):
        scale = _guard_scale(g, terms)
        if scale is None:
            continue
        box = _plain_bounds(Affine.of(dict(g.terms)), ranges)
        if box is None:
            continue
        for atom, _ in g.terms:
            del terms[atom]
        size = max(min(bound - g.const, box[1] + 1), 1)
        pieces.append(Piece(scale, size, Affine.of(dict(g.terms))))
    for atom, c in terms.items():
        piece = _atom_piece(atom, c, ranges)
        if piece is None:
            return None
        pieces.append(piece)
    return pieces


def _guard_scale(g: Affine, terms: dict) -> int | None:
    """The ``s`` with ``terms ⊇ s * g`` (plain variables, positive coefficients), else None."""
    if not g.terms or any(not isinstance(a, str) or c <= 0 or a not in terms for a, c in g.terms):
        return None
    first, c0 = g.terms[0]
    if terms[first] % c0:
        return None
    scale = terms[first] // c0
    return scale if all(terms[a] == scale * c for a, c in g.terms) else None


def _piece_pinned(piece: Piece, pieces: list[Piece]) -> bool:
    """Whether the value of the sum pins down this piece's value (a mixed-radix argument).

    Smaller pieces must sum to less than its coefficient, and every larger coefficient must be
    a multiple of something beyond all of those: then ``sum mod G`` isolates the piece.
    """
    c = abs(piece.coeff)
    others = [p for p in pieces if p is not piece and p.size > 1]
    low = sum(p.span for p in others if abs(p.coeff) <= c)
    high = [abs(p.coeff) for p in others if abs(p.coeff) > c]
    if low >= c:
        return False
    return not high or math.gcd(*high) > low + piece.span


def determines(form: Affine, var: str, ranges: dict[str, int], guards: list[Guard]) -> bool:
    """Whether two points of the loop box with equal ``form`` always have equal ``var``.

    ``ranges`` holds the extents of the variables that vary; ``form`` must read no others.
    """
    pieces = pieces_of(form, ranges, guards)
    if pieces is None:
        return False
    hits = [p for p in pieces if var in _piece_names(p)]
    if not hits or not all(_piece_pinned(p, pieces) for p in hits):
        return False
    if len(hits) == 1:
        what = hits[0].what
        if what == var:
            return True
        if not isinstance(what, Affine):
            return False
        inner_guards = [g for g in guards if Affine.of(dict(g[0].terms)) != what]
        return determines(what, var, ranges, inner_guards)
    if len(hits) == 2 and all(isinstance(p.what, DivMod) for p in hits):
        a, b = hits[0].what, hits[1].what
        return (a.inner == b.inner and a.k == b.k and a.op != b.op
                and determines(a.inner, var, ranges, guards))
    return False


def _piece_names(piece: Piece) -> set[str]:
    what = piece.what
    return {what} if isinstance(what, str) else (what.names() if isinstance(what, Affine) else what.inner.names())


def bounds(form: Affine, ranges: dict[str, int], guards: list[Guard]) -> tuple[int, int] | None:
    """The least and greatest value of ``form`` over the box and the guards, or None if unknown."""
    pieces = pieces_of(form, ranges, guards)
    return None if pieces is None else _sum_bounds(pieces, form.const)


# ----------------------------------------------------------------------------------------------
# Flat index -> one index per axis
# ----------------------------------------------------------------------------------------------


def row_major_strides(shape: tuple[int, ...]) -> list[int]:
    """Element strides of a row-major array of ``shape``."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return strides[::-1]


def delinearize(form: Affine, shape: tuple[int, ...], ranges: dict[str, int],
                guards: list[Guard]) -> list[Affine] | None:
    """Per-axis indices ``d`` with ``form == sum(d[k] * stride[k])`` and each ``d[k]`` in its axis.

    Each term goes to the axis of the largest stride dividing its coefficient; the constant is
    then spread so every axis stays in range. None when no such split exists (the index wraps
    across rows, or reads variables without a range).
    """
    if not shape or 0 in shape:
        return None
    strides = row_major_strides(shape)
    parts: list[dict] = [{} for _ in shape]
    for atom, c in form.terms:
        axis = next(k for k, s in enumerate(strides) if c % s == 0)
        parts[axis][atom] = c // strides[axis]
    spans = []
    for part in parts:
        b = bounds(Affine.of(part), ranges, guards)
        if b is None:
            return None
        spans.append(b)
    consts = _spread_constant(form.const, shape, spans)
    if consts is None:
        return None
    return [Affine.of(part, c) for part, c in zip(parts, consts)]


def _spread_constant(total: int, shape, spans) -> list[int] | None:
    consts = [0] * len(shape)
    for k in range(len(shape) - 1, 0, -1):
        m, (lo, hi) = shape[k], spans[k]
        value = -lo + (total + lo) % m
        if value > m - 1 - hi:
            return None
        consts[k], total = value, (total - value) // m
    lo, hi = spans[0]
    if lo + total < 0 or hi + total > shape[0] - 1:
        return None
    consts[0] = total
    return consts
