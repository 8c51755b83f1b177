"""Checking a loop-IR program: every name it uses is declared, every buffer one it may touch.

The graph pipeline runs ``graph.verify`` after each pass; the loop-level pipeline
(``minicomp.stages``) runs ``verify_program`` after each loop stage, so a stage that leaves a
loop variable undeclared or reads a buffer nobody passes in is named at once, instead of as a
C compile error (or a ``KeyError`` in the loop interpreter) two stages later::

    kernel add(x: f32[4]) -> add: f32[4]
      for i0 in 0..4:
        add[i0] = x[i1]          -> LoopIRError: kernel add: i1 is used outside any loop or
                                    declaration of it

What is checked, in one walk over each kernel (cheap next to lowering itself):

* every ``Var`` an expression reads is in scope: the variable of an enclosing ``For``, or a
  scalar ``Declare`` d (or a ``WarpReduce``'s result) earlier in an enclosing body (C's scoping: a ``Block`` opens no scope, a
  loop body and each branch of an ``If`` do); every ``Assign`` assigns a declared scalar;
* every buffer loaded, stored or addressed is a parameter of its kernel (inputs, output,
  scratch) or ``Allocate`` d in it;
* every kernel parameter is a parameter of the program (input, constant, output) or has a
  place in its workspace;
* floating-point arithmetic (``+ - * /`` of a float dtype) combines operands of its own dtype:
  a mixed one (``f64 * f16``) needs an explicit ``Cast``, which C would insert silently but
  CUDA refuses for ``__half`` (``double * __half`` matches two operators).
"""

from __future__ import annotations

from ..errors import MinicompError
from .loops import (Address, Allocate, Assign, Binary, Block, Declare, Expr, For, If, Kernel, Load, Stmt, Store,
                    Var, WarpReduce, walk)
from .loop_text import print_expr
from .rewrite import exprs_of, statements


class LoopIRError(MinicompError):
    """A loop-IR program breaks an invariant of ``verify_program``."""


def verify_kernel(kernel: Kernel, program_buffers: set | None = None) -> None:
    """Raise ``LoopIRError`` listing what ``kernel`` breaks (see the module docstring).

    ``program_buffers``: the buffers the program gives its kernels (parameters and workspace);
    None: parameters are not checked against the program.
    """
    allowed = set(kernel.params) | {s.buffer for s in statements(kernel.body) if isinstance(s, Allocate)}
    problems: list[str] = []
    _check_stmt(kernel.body, set(), allowed, problems)
    if program_buffers is not None:
        problems += [f"parameter {b.name} is neither a buffer of the program nor in its workspace"
                     for b in kernel.params if b not in program_buffers]
    if problems:
        shown = "; ".join(dict.fromkeys(problems))
        raise LoopIRError(f"kernel {kernel.name}: {shown}")


def verify_program(program) -> None:
    """``verify_kernel`` on every kernel of a lowered ``Program``, its parameters included.

    Requires: a ``minicomp.lower.program.Program``. Guarantees: returns only when every check
    of the module docstring holds, else raises ``LoopIRError`` naming the first broken kernel.
    """
    buffers = set(program.params) | set(program.workspace)
    for kernel in program.kernels:
        verify_kernel(kernel, buffers)


def _check_stmt(s: Stmt, scope: set[str], allowed: set, problems: list[str]) -> None:
    """Check ``s`` with the names in ``scope`` visible; a ``Declare`` adds to ``scope``."""
    if isinstance(s, For):
        _check_stmt(s.body, scope | {s.var.name}, allowed, problems)
    elif isinstance(s, Block):
        for sub in s.stmts:
            _check_stmt(sub, scope, allowed, problems)
    elif isinstance(s, If):
        _check_expr(s.cond, scope, allowed, problems)
        _check_stmt(s.then, set(scope), allowed, problems)
        if s.otherwise is not None:
            _check_stmt(s.otherwise, set(scope), allowed, problems)
    else:
        for e in exprs_of(s):
            _check_expr(e, scope, allowed, problems)
        if isinstance(s, (Declare, WarpReduce)):  # a warp reduce declares its result
            scope.add(s.var.name)
        elif isinstance(s, Assign) and s.var.name not in scope:
            problems.append(f"{s.var.name} is assigned but never declared")
        elif isinstance(s, Store) and s.buffer not in allowed:
            problems.append(f"it stores to {s.buffer.name}, neither a parameter nor allocated")


def _check_expr(e: Expr, scope: set[str], allowed: set, problems: list[str]) -> None:
    for sub in walk(e):
        if isinstance(sub, Var) and sub.name not in scope:
            problems.append(f"{sub.name} is used outside any loop or declaration of it")
        elif isinstance(sub, (Load, Address)) and sub.buffer not in allowed:
            problems.append(f"it uses {sub.buffer.name}, neither a parameter nor allocated")
        elif isinstance(sub, Binary) and sub.op in ("+", "-", "*", "/") and sub.dtype.kind == "f":
            mixed = [o.dtype for o in (sub.a, sub.b) if o.dtype != sub.dtype]
            if mixed:
                problems.append(f"{print_expr(sub)}: {sub.dtype} arithmetic on a {mixed[0]} operand (cast it first)")
