"""Schedule primitives: small records that reshape a kernel's loop nest without changing its meaning.

A *schedule* is a list of steps applied to a lowered ``Kernel`` (TVM's ``s[op].split(...)``,
Halide's ``f.split(...)``). Each step is a frozen dataclass that

* prints as one line (``split(i1, 16) -> i1_o, i1_i``), so a kernel shows how it was shaped;
* replays: ``apply(kernel)`` returns a new kernel and never mutates its argument, so a list of
  steps can be applied again to a fresh lowering (what an autotuner searches over);
* checks its legality first and raises ``ScheduleError`` (naming the step and the kernel)
  instead of producing a wrong program.

Loops are named by their variable (``i0``, ``i1`` ...); ``loop_names(kernel)`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

from ..errors import MinicompError
from .loops import For, Kernel, Stmt


class ScheduleError(MinicompError):
    """A schedule step that does not apply to this kernel, or would change its meaning."""


@dataclass(frozen=True)
class Primitive:
    """Base class of schedule steps: ``apply`` checks legality, then rewrites a copy."""

    def apply(self, kernel: Kernel) -> Kernel:
        """The kernel with this step applied (a new ``Kernel``; ``kernel`` is unchanged)."""
        body = self.rewrite(kernel)
        return replace(kernel, body=body, schedule=list(kernel.schedule) + [self])

    def rewrite(self, kernel: Kernel) -> Stmt:
        """The new loop nest; subclasses implement this (raising ``ScheduleError`` if illegal)."""
        raise NotImplementedError

    def fail(self, kernel: Kernel, why: str) -> ScheduleError:
        """A ``ScheduleError`` naming this step and the kernel."""
        return ScheduleError(f"schedule step {self} does not apply to kernel {kernel.name}: {why}")


def apply_schedule(kernel: Kernel, steps: list[Primitive]) -> Kernel:
    """Apply ``steps`` in order (each checks its legality)."""
    for step in steps:
        kernel = step.apply(kernel)
    return kernel


def loops(stmt: Stmt) -> Iterator[For]:
    """Every ``For`` in ``stmt``, outermost first (pre-order)."""
    from .loops import Block, If

    if isinstance(stmt, For):
        yield stmt
        yield from loops(stmt.body)
    elif isinstance(stmt, Block):
        for sub in stmt.stmts:
            yield from loops(sub)
    elif isinstance(stmt, If):
        yield from loops(stmt.then)
        if stmt.otherwise is not None:
            yield from loops(stmt.otherwise)


def loop_names(kernel: Kernel) -> list[str]:
    """The names of the kernel's loop variables, outermost first."""
    return [loop.var.name for loop in loops(kernel.body)]


def map_stmt(stmt: Stmt, fn: Callable[[Stmt], Stmt | None]) -> Stmt:
    """Rebuild ``stmt`` top-down: ``fn(s)`` returns a replacement for ``s``, or None to recurse into it."""
    from .loops import Block, If

    new = fn(stmt)
    if new is not None:
        return new
    if isinstance(stmt, For):
        return replace(stmt, body=map_stmt(stmt.body, fn))
    if isinstance(stmt, Block):
        return Block([map_stmt(s, fn) for s in stmt.stmts])
    if isinstance(stmt, If):
        otherwise = None if stmt.otherwise is None else map_stmt(stmt.otherwise, fn)
        return If(stmt.cond, map_stmt(stmt.then, fn), otherwise)
    return stmt
