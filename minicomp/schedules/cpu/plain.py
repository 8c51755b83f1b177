"""Reading the plain nests lowering writes: what the CPU strategies recognise.

``minicomp.lower`` writes every reduction in one form: per value, a scalar accumulator
declared with the combiner's identity, the reduction loops assigning ``combine(acc, value)``,
then a store of ``finish(acc)``::

    for i0 in 0..M:                       <- output loops          (output_loops)
      f32 acc = 0                         <- a ScalarReduction:    the Declare,
      for r1 in 0..K:                                              its loops,
        acc = acc + x[i0*K + r1]                                   combine(acc, value)
      out[i0] = acc / 64                  <- the store of finish(acc)

The strategies (``packed_gemm``, ``accumulate_in_output``, ``lanes``, ``keep_operand``) find
these pieces by their structure, not by how they were made, check what they need and raise
``ScheduleError`` otherwise. Loop variables and local scalars are matched by name, as the
renderers scope them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ...ir.affine import affine
from ...ir.compute import Reduce
from ...ir.loops import (INDEX, Address, Assign, Binary, Block, Call, Cast, Const, Declare, Expr, For, Kernel,
                         Load, Select, Size, Stmt, Store, Unary, Var)
from ...ir.rewrite import exprs_of, free_vars, map_expr, statements
from ...ir.schedule import ScheduleError
from ...lower.rules import reduction_init

#: the helpers ``lower.program.combine`` writes for max and min: name -> (combiner, first wins)
COMBINER_CALLS = {"mc_maximum": ("max", False), "mc_minimum": ("min", False),
                  "mc_maximum_first": ("max", True), "mc_minimum_first": ("min", True)}


@dataclass
class ScalarReduction:
    """``acc = init; for axes: per_element...; acc = combine(acc, value)`` inside a block.

    ``declare`` and ``nest`` are the two statements of the block it occupies (found by
    identity when a strategy replaces them).
    """

    declare: Declare
    nest: For
    axes: list[tuple[Var, int]]
    per_element: list[Stmt]
    update: Assign  # acc = combine(acc, value)
    combiner: str
    value: Expr
    first_wins: bool

    @property
    def acc(self) -> Var:
        """The accumulator."""
        return self.declare.var

    def reduce(self) -> Reduce:
        """The same reduction as a compute-rule ``Reduce`` (what ``reduce_into_lanes`` takes)."""
        return Reduce(self.combiner, list(self.axes), self.value, self.acc.dtype, first_wins=self.first_wins)

    @property
    def length(self):
        """Iterations of its loops (a ``Sym`` where a loop is symbolic)."""
        return math.prod(extent for _, extent in self.axes)


def read_combine(acc: Var, value: Expr) -> tuple[str, Expr, bool] | None:
    """``(combiner, element, first_wins)`` of an accumulation ``combine(acc, element)``, or None."""
    if isinstance(value, Binary) and _is_var(value.a, acc):
        kinds = {"+": "sum", "||": "max", "&&": "min"}
        if value.op in kinds and (value.op == "+" or acc.dtype.kind == "b"):
            return kinds[value.op], value.b, False
    if isinstance(value, Call) and value.fn in COMBINER_CALLS and len(value.args) == 2 and _is_var(value.args[0], acc):
        combiner, first_wins = COMBINER_CALLS[value.fn]
        return combiner, value.args[1], first_wins
    return None


def scalar_reduction(declare: Stmt, loops: Stmt) -> ScalarReduction | None:
    """The reduction that ``declare`` and the loop nest ``loops`` (two statements in a row) form,
    or None. Per element it may also declare locals and store (``keep_operand``'s form)."""
    if not (isinstance(declare, Declare) and isinstance(loops, For)):
        return None
    acc = declare.var
    chain, body = loop_chain(loops)
    axes = [(loop.var, loop.extent) for loop in chain]
    stmts = statements_of(body)
    if not stmts or not isinstance(stmts[-1], Assign) or stmts[-1].var.name != acc.name:
        return None
    found = read_combine(acc, stmts[-1].value)
    if found is None:
        return None
    combiner, value, first_wins = found
    per_element = stmts[:-1]
    if acc.name in free_vars(value) or any(not isinstance(s, (Declare, Store)) or _reads(s, acc) for s in per_element):
        return None
    if not _same_const(declare.init, reduction_init(combiner, acc.dtype)):
        return None  # starts from another value than the identity: not a plain reduction
    return ScalarReduction(declare, loops, axes, per_element, stmts[-1], combiner, value, first_wins)


def reductions_in(block: Block) -> list[ScalarReduction]:
    """The scalar reductions among the statements of ``block``, in order."""
    stmts = block.stmts
    found = (scalar_reduction(a, b) for a, b in zip(stmts, stmts[1:]))
    return [r for r in found if r is not None]


def loop_chain(stmt: Stmt) -> tuple[list[For], Stmt]:
    """The loops of the perfect nest ``stmt`` (outermost first) and the statement inside them."""
    chain = []
    while isinstance(stmt, For):
        chain.append(stmt)
        stmt = stmt.body
    return chain, stmt


def output_loops(kernel: Kernel) -> tuple[list[For], Stmt]:
    """The perfect nest of loops around the kernel's per-value statements, and those statements."""
    return loop_chain(kernel.body)


def statements_of(stmt: Stmt) -> list[Stmt]:
    """A block's statements, or the statement alone."""
    return list(stmt.stmts) if isinstance(stmt, Block) else [stmt]


def row_major(loops: list[For]) -> Expr:
    """The row-major linear index over ``loops`` (outermost first): ``(i0*N1 + i1)*N2 + i2``."""
    index: Expr = Const(0)
    for loop in loops:
        index = index * loop.extent + loop.var
    return index


def same_index(a: Expr, b: Expr) -> bool:
    """Whether two index expressions are the same affine function of the loop variables."""
    fa, fb = affine(a), affine(b)
    if fa is None or fb is None:
        return expr_key(a) == expr_key(b)
    return dict(fa.terms) == dict(fb.terms) and fa.const == fb.const


def expr_key(e: Expr):
    """A hashable key equal for expressions that compute the same thing the same way.

    Variables compare by name, buffers by identity, index arithmetic by its affine form (so
    ``i*8 + j`` and ``j + i*8`` are one key).
    """
    if e.dtype == INDEX:
        form = affine(e)
        if form is not None:
            return ("index", frozenset(form.terms), form.const)
    if isinstance(e, Const):
        return ("const", str(e.dtype), repr(e.value))
    if isinstance(e, Var):
        return ("var", e.name, str(e.dtype))
    if isinstance(e, Size):
        return ("size", str(e.value))
    if isinstance(e, (Load, Address)):
        return (type(e).__name__, id(e.buffer), expr_key(e.index))
    if isinstance(e, (Binary, Unary)):
        return (type(e).__name__, e.op, str(e.dtype), tuple(expr_key(c) for c in e.children()))
    if isinstance(e, Call):
        return ("call", e.fn, str(e.dtype), tuple(expr_key(c) for c in e.args))
    if isinstance(e, (Cast, Select)):
        return (type(e).__name__, str(e.dtype), tuple(expr_key(c) for c in e.children()))
    raise TypeError(f"no key for {e!r}")


def replace_var(e: Expr, var: Var, value: Expr) -> Expr:
    """``e`` with the variable named like ``var`` replaced by ``value``."""
    return map_expr(e, lambda sub: value if _is_var(sub, var) else None)


def _is_var(e: Expr, var: Var) -> bool:
    return isinstance(e, Var) and e.name == var.name


def _reads(stmt: Stmt, var: Var) -> bool:
    return any(var.name in free_vars(e) for e in exprs_of(stmt))


def _same_const(a: Expr, b: Expr) -> bool:
    return isinstance(a, Const) and isinstance(b, Const) and a.dtype == b.dtype and repr(a.value) == repr(b.value)


def stores_in(stmt: Stmt) -> list[Store]:
    """The stores of ``stmt`` (and of the statements nested in it)."""
    return [s for s in statements(stmt) if isinstance(s, Store)]


def innermost(loops: For) -> Stmt:
    """The body of the innermost loop of a perfect nest."""
    return loop_chain(loops)[1]


def with_innermost(loops: For, body: Stmt) -> For:
    """The perfect nest ``loops`` (same loops, same kinds) around a new innermost ``body``."""
    if isinstance(loops.body, For):
        return replace(loops, body=with_innermost(loops.body, body))
    return replace(loops, body=body)


def shares_output(kernel: Kernel) -> bool:
    """Whether the kernel's output shares memory with an input (an op computed in place): a
    strategy that writes the output before the last read of every input must refuse it."""
    return kernel.output in kernel.aliases


def refuse(strategy: str, kernel: Kernel, why: str) -> ScheduleError:
    """The ``ScheduleError`` of a strategy that does not apply to ``kernel``."""
    return ScheduleError(f"strategy {strategy} does not apply to kernel {kernel.name}: {why}", why)
