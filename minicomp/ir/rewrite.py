"""Rebuilding loop-IR trees: substitute variables, rename them, replace loads, visit statements.

Loop-IR expressions are immutable and statements are never changed in place by the schedule
primitives, so every rewrite builds new nodes bottom-up and shares the untouched ones::

    substitute(x[i*8 + j], {"i": i_o*4 + i_i})   ->   x[((i_o*4 + i_i)*8) + j]

Variables are matched by *name* (the C renderer scopes them by name, and a kernel's loop names
are unique). Index arithmetic is rebuilt with ``simplify_binary``, so substituting constants
folds: ``substitute(x[i*8 + j], {"i": 2})`` is ``x[16 + j]``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

from .loops import (INDEX, Address, Allocate, Assign, Binary, Block, Buffer, Call, Cast, Const, Declare, Expr,
                    For, If, Intrinsic, Load, Select, Stmt, Store, Unary, Var, WarpReduce, simplify_binary)

# ----------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------


def c_div(a: int, b: int) -> int:
    """C's integer division: the quotient rounded toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def c_mod(a: int, b: int) -> int:
    """C's ``%``: the remainder with the sign of ``a`` (so ``a == c_div(a, b)*b + c_mod(a, b)``)."""
    return a - c_div(a, b) * b


def _rebuild_binary(e: Binary, a: Expr, b: Expr) -> Expr:
    """``a e.op b``, folding index constants and trivial index arithmetic."""
    if e.dtype == INDEX and e.op in ("+", "-", "*"):
        return simplify_binary(e.op, a, b)
    if e.dtype == INDEX and e.op in ("/", "%") and isinstance(b, Const) and b.value != 0:
        if isinstance(a, Const):
            return Const((c_div if e.op == "/" else c_mod)(int(a.value), int(b.value)), INDEX)
        if b.value == 1:
            return a if e.op == "/" else Const(0, INDEX)
    if a is e.a and b is e.b:
        return e
    return Binary(e.op, a, b, e.dtype)


def map_expr(e: Expr, fn: Callable[[Expr], Expr | None]) -> Expr:
    """Rebuild ``e`` top-down: ``fn(sub)`` returns a replacement for ``sub``, or None to recurse."""
    new = fn(e)
    if new is not None:
        return new
    if isinstance(e, Binary):
        return _rebuild_binary(e, map_expr(e.a, fn), map_expr(e.b, fn))
    if isinstance(e, Load):
        return Load(e.buffer, map_expr(e.index, fn))
    if isinstance(e, Address):
        return Address(e.buffer, map_expr(e.index, fn))
    if isinstance(e, Unary):
        return Unary(e.op, map_expr(e.a, fn), e.dtype)
    if isinstance(e, Call):
        return Call(e.fn, tuple(map_expr(a, fn) for a in e.args), e.dtype)
    if isinstance(e, Cast):
        return Cast(map_expr(e.a, fn), e.dtype)
    if isinstance(e, Select):
        return Select(map_expr(e.cond, fn), map_expr(e.a, fn), map_expr(e.b, fn))
    return e  # Const, Var


def substitute(e: Expr, values: dict[str, Expr]) -> Expr:
    """``e`` with every variable named in ``values`` replaced (all at once) by its expression."""
    return map_expr(e, lambda sub: values.get(sub.name) if isinstance(sub, Var) else None)


def free_vars(e: Expr) -> set[str]:
    """The names of the variables ``e`` reads."""
    names: set[str] = set()
    map_expr(e, lambda sub: names.add(sub.name) if isinstance(sub, Var) else None)
    return names


def loads(e: Expr) -> Iterator[Load]:
    """Every ``Load`` inside ``e`` (outermost first)."""
    if isinstance(e, Load):
        yield e
    for child in e.children():
        yield from loads(child)


# ----------------------------------------------------------------------------------------------
# Statements
# ----------------------------------------------------------------------------------------------


def exprs_of(s: Stmt) -> list[Expr]:
    """The expressions a statement holds directly (not those of nested statements)."""
    if isinstance(s, Store):
        return [s.index, s.value]
    if isinstance(s, Declare):
        return [s.init]
    if isinstance(s, Assign):
        return [s.value]
    if isinstance(s, If):
        return [s.cond]
    if isinstance(s, Intrinsic):
        return list(s.args)
    if isinstance(s, WarpReduce):
        return [s.value]
    return []


def map_stmt_exprs(s: Stmt, fn: Callable[[Expr], Expr]) -> Stmt:
    """A copy of ``s`` with ``fn`` applied to every expression in it (nested statements too)."""
    if isinstance(s, For):
        return replace(s, body=map_stmt_exprs(s.body, fn))
    if isinstance(s, Block):
        return Block([map_stmt_exprs(sub, fn) for sub in s.stmts])
    if isinstance(s, If):
        otherwise = None if s.otherwise is None else map_stmt_exprs(s.otherwise, fn)
        return If(fn(s.cond), map_stmt_exprs(s.then, fn), otherwise)
    if isinstance(s, Store):
        return Store(s.buffer, fn(s.index), fn(s.value))
    if isinstance(s, Declare):
        return Declare(s.var, fn(s.init))
    if isinstance(s, Assign):
        return Assign(s.var, fn(s.value))
    if isinstance(s, Intrinsic):
        return Intrinsic(s.fn, tuple(fn(a) for a in s.args))
    if isinstance(s, WarpReduce):
        return replace(s, value=fn(s.value))
    return s  # Allocate, Barrier


def substitute_stmt(s: Stmt, values: dict[str, Expr]) -> Stmt:
    """``s`` with the variables named in ``values`` replaced in every expression."""
    return map_stmt_exprs(s, lambda e: substitute(e, values))


def rename_vars(s: Stmt, names: dict[str, str]) -> Stmt:
    """``s`` with loop variables and local scalars renamed (declarations and every use)."""
    def var(v: Var) -> Var:
        return Var(names[v.name], v.dtype) if v.name in names else v

    def rename(e: Expr) -> Expr:
        return map_expr(e, lambda sub: var(sub) if isinstance(sub, Var) and sub.name in names else None)

    def walk_(s: Stmt) -> Stmt:
        if isinstance(s, For):
            return replace(s, var=var(s.var), body=walk_(s.body))
        if isinstance(s, Block):
            return Block([walk_(sub) for sub in s.stmts])
        if isinstance(s, If):
            otherwise = None if s.otherwise is None else walk_(s.otherwise)
            return If(rename(s.cond), walk_(s.then), otherwise)
        if isinstance(s, Declare):
            return Declare(var(s.var), rename(s.init))
        if isinstance(s, Assign):
            return Assign(var(s.var), rename(s.value))
        if isinstance(s, WarpReduce):
            return replace(s, var=var(s.var), value=rename(s.value))
        return map_stmt_exprs(s, rename)

    return walk_(s)


def replace_buffer(s: Stmt, old: Buffer, new: Buffer, index: Callable[[Expr], Expr]) -> Stmt:
    """``s`` with every load and store of ``old`` turned into one of ``new`` at ``index(old_index)``
    (and its ``Allocate``, if ``s`` holds it, into one of ``new``)."""
    moved = map_accesses(s, lambda buffer, i: (new, index(i)) if buffer is old else None)
    return map_stmts(moved, lambda sub: replace(sub, buffer=new)
                     if isinstance(sub, Allocate) and sub.buffer is old else None)


def map_accesses(s: Stmt, access: Callable[[Buffer, Expr], tuple[Buffer, Expr] | None]) -> Stmt:
    """``s`` with every load and store rewritten: ``access(buffer, index)`` returns the buffer and
    index to use instead, or None to keep them. The index it is given has its own loads rewritten
    already (inner first); a store's index is rewritten before its value. Addresses (intrinsic
    arguments) and ``Allocate`` are left as they are::

        map_accesses(y[i] = x[i] + x[x[i]], lambda b, e: (b, e + 1) if b is x else None)
          ->  y[i] = x[i + 1] + x[x[i + 1] + 1]
    """
    def load(sub: Expr) -> Expr | None:
        if not isinstance(sub, Load):
            return None
        buffer, index = accessed(sub.buffer, map_expr(sub.index, load))
        return Load(buffer, index)

    def expr(e: Expr) -> Expr:
        return map_expr(e, load)

    def store(sub: Stmt) -> Stmt | None:
        if not isinstance(sub, Store):
            return None
        buffer, index = accessed(sub.buffer, expr(sub.index))
        return Store(buffer, index, expr(sub.value))

    def accessed(buffer: Buffer, index: Expr) -> tuple[Buffer, Expr]:
        return access(buffer, index) or (buffer, index)

    return map_stmts(s, store, expr)


def map_stmts(s: Stmt, fn: Callable[[Stmt], Stmt | None], expr_fn: Callable[[Expr], Expr] | None = None) -> Stmt:
    """Rebuild ``s`` top-down, the statement analogue of ``map_expr``: ``fn(sub)`` returns a
    replacement for ``sub``, or None to go on into the bodies of a ``For``, ``Block`` or ``If``.
    With ``expr_fn``, every expression of the statements ``fn`` leaves (an ``If``'s condition
    too) is rebuilt by it; without, they are kept::

        map_stmts(for i: {y[i] = 1; barrier}, lambda sub: Block([]) if isinstance(sub, Barrier) else None)
          ->  for i: {y[i] = 1; {}}
    """
    new = fn(s)
    if new is not None:
        return new
    if isinstance(s, (For, Block, If)):
        return _map_children(s, lambda sub: map_stmts(sub, fn, expr_fn), expr_fn or (lambda e: e))
    return s if expr_fn is None else map_stmt_exprs(s, expr_fn)


def _map_children(s: Stmt, stmt_fn, expr_fn) -> Stmt:
    if isinstance(s, For):
        return replace(s, body=stmt_fn(s.body))
    if isinstance(s, Block):
        return Block([stmt_fn(sub) for sub in s.stmts])
    otherwise = None if s.otherwise is None else stmt_fn(s.otherwise)
    return If(expr_fn(s.cond), stmt_fn(s.then), otherwise)


def statements(s: Stmt) -> Iterator[Stmt]:
    """Every statement inside ``s``, itself first (pre-order)."""
    yield s
    if isinstance(s, For):
        yield from statements(s.body)
    elif isinstance(s, Block):
        for sub in s.stmts:
            yield from statements(sub)
    elif isinstance(s, If):
        yield from statements(s.then)
        if s.otherwise is not None:
            yield from statements(s.otherwise)


def all_exprs(s: Stmt) -> Iterator[Expr]:
    """Every expression held by a statement inside ``s`` (top-level expressions only)."""
    for sub in statements(s):
        yield from exprs_of(sub)


def declared_names(s: Stmt) -> set[str]:
    """Names of loop variables and local scalars declared inside ``s``."""
    names = set()
    for sub in statements(s):
        if isinstance(sub, For):
            names.add(sub.var.name)
        elif isinstance(sub, (Declare, WarpReduce)):
            names.add(sub.var.name)
    return names


def allocated(s: Stmt) -> list[Buffer]:
    """The local buffers allocated inside ``s``."""
    return [sub.buffer for sub in statements(s) if isinstance(sub, Allocate)]


def stored_buffers(s: Stmt) -> set[Buffer]:
    """The buffers ``s`` stores to (``Intrinsic`` outputs are not seen: callers refuse those)."""
    return {sub.buffer for sub in statements(s) if isinstance(sub, Store)}


def loaded_buffers(s: Stmt) -> set[Buffer]:
    """The buffers ``s`` loads from."""
    return {load.buffer for e in all_exprs(s) for load in loads(e)}


def unconditional_loads(s: Stmt) -> Iterator[Load]:
    """The loads ``s`` runs every time it runs (each time a loop in it iterates): those of its
    straight-line statements, not inside an ``If``, the branches of a ``Select`` or the right
    side of ``&&``/``||`` (which C evaluates only sometimes). Reading their elements earlier,
    or once for all, reads nothing the code would not read anyway (no index out of range)::

        y[i] = x[i] + Select(i > 0, x[i - 1], 0)   ->   x[i] (not x[i - 1]: at i = 0 it is x[-1])
    """
    def of(e: Expr) -> Iterator[Load]:
        if isinstance(e, Load):
            yield e
            yield from of(e.index)
        elif isinstance(e, Select):
            yield from of(e.cond)
        elif isinstance(e, Binary) and e.op in ("&&", "||"):
            yield from of(e.a)
        else:
            for child in e.children():
                yield from of(child)

    if isinstance(s, Block):
        for sub in s.stmts:
            yield from unconditional_loads(sub)
    elif isinstance(s, For):
        yield from unconditional_loads(s.body)
    elif isinstance(s, If):
        yield from of(s.cond)
    elif not isinstance(s, Intrinsic):
        for e in exprs_of(s):
            yield from of(e)
