"""Running loop IR in Python: a slow, obvious reference for the schedule tests.

``run_program(program, *arrays)`` executes a lowered ``Program`` statement by statement with
NumPy scalars, no C involved. Two choices make it a sharp test of schedule legality:

* loops marked ``parallel`` or ``vectorized`` run their iterations *last to first* (and so does
  the loop a short parallel loop is collapsed with, as in the C renderer): if a schedule marked
  a loop whose iterations depend on each other, the result changes, every time; the C code,
  with a few threads on tiny test sizes, would show such a race only by chance;
* local buffers (``Allocate``) start full of NaN (or the dtype's minimum), so reading an
  element before it was written shows in the result.

Arithmetic is done in Python/NumPy scalars, so results match C within rounding only (compare
with ``assert_close``). ``Intrinsic`` calls are not supported.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from ..ir.loops import (Allocate, Assign, Binary, Block, Buffer, Call, Cast, Const, Declare, Expr, For,
                        If, Load, Select, Stmt, Store, Unary, Var)
from ..ir.rewrite import c_div, c_mod

COLLAPSE_BELOW = 64  # as the C renderer: a shorter parallel loop runs together with its inner loop

_CALLS = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "floor": np.floor, "ceil": np.ceil, "erf": np.vectorize(math.erf),
    "mc_abs": abs, "mc_maximum": lambda a, b: a if (a > b or a != a) else b,  # a tie: b, as C's
    "mc_minimum": lambda a, b: a if (a < b or a != a) else b,
    "mc_maximum_first": lambda a, b: a if (a >= b or a != a) else b,  # a tie: a
    "mc_minimum_first": lambda a, b: a if (a <= b or a != a) else b,
    "mc_sigmoid": lambda x: 1 / (1 + np.exp(-x)), "mc_sign": np.sign,
    "mc_index": lambda i, n: (i + n if i < 0 else i) if -n <= i < n else 0,  # (C also sets the status)
    "mc_mod": lambda a, b: a % b if b else 0,
}

_BINARY = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "&&": lambda a, b: bool(a) and bool(b), "||": lambda a, b: bool(a) or bool(b),
}


class LoopInterpreter:
    """Executes statements on ``memory`` (buffer -> flat array) and local scalars."""

    def __init__(self, memory: dict[Buffer, np.ndarray]):
        self.memory = memory
        self.scalars: dict[str, object] = {}

    def expr(self, e: Expr):
        """The value of an expression, with the dtype of the expression."""
        if isinstance(e, Const):
            return e.dtype.type(e.value)
        if isinstance(e, Var):
            return self.scalars[e.name]
        if isinstance(e, Load):
            return self.memory[e.buffer][int(self.expr(e.index))]
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Unary):
            value = self.expr(e.a)
            return e.dtype.type(not value) if e.op == "!" else -value
        if isinstance(e, Call):
            if e.fn not in _CALLS:
                raise NotImplementedError(f"the loop interpreter does not know {e.fn}")
            return e.dtype.type(_CALLS[e.fn](*[self.expr(a) for a in e.args]))
        if isinstance(e, Cast):
            return np.asarray(self.expr(e.a)).astype(e.dtype)[()]
        if isinstance(e, Select):
            return self.expr(e.a) if self.expr(e.cond) else self.expr(e.b)
        raise NotImplementedError(f"the loop interpreter cannot evaluate {e!r}")

    def binary(self, e: Binary):
        """A binary operation with C's meaning (integer ``/`` and ``%`` truncate)."""
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in ("/", "%") and e.dtype.kind in "iu":
            return e.dtype.type((c_div if e.op == "/" else c_mod)(int(a), int(b)))
        if e.op == "/":
            return e.dtype.type(a / b)
        return e.dtype.type(_BINARY[e.op](a, b))

    def stmt(self, s: Stmt, reversed_: bool = False) -> None:
        """Execute ``s``; ``reversed_``: run this loop's iterations backwards."""
        if isinstance(s, For):
            backwards = reversed_ or s.kind in ("parallel", "vectorized")
            collapsed = s.kind == "parallel" and s.extent < COLLAPSE_BELOW and isinstance(s.body, For)
            for i in (range(s.extent - 1, -1, -1) if backwards else range(s.extent)):
                self.scalars[s.var.name] = np.int64(i)
                self.stmt(s.body, reversed_=collapsed)
        elif isinstance(s, Block):
            for sub in s.stmts:
                self.stmt(sub)
        elif isinstance(s, Store):
            self.memory[s.buffer][int(self.expr(s.index))] = self.expr(s.value)
        elif isinstance(s, (Declare, Assign)):
            self.scalars[s.var.name] = self.expr(s.init if isinstance(s, Declare) else s.value)
        elif isinstance(s, Allocate):
            self.memory[s.buffer] = unwritten(s.buffer)
        elif isinstance(s, If):
            if self.expr(s.cond):
                self.stmt(s.then)
            elif s.otherwise is not None:
                self.stmt(s.otherwise)
        else:
            raise NotImplementedError(f"the loop interpreter cannot execute {type(s).__name__}")


def unwritten(buffer: Buffer) -> np.ndarray:
    """A flat array for ``buffer`` whose every element says "never written" (NaN, or the minimum)."""
    if buffer.dtype.kind == "f":
        return np.full(buffer.size, np.nan, buffer.dtype)
    if buffer.dtype.kind == "b":
        return np.zeros(buffer.size, buffer.dtype)
    return np.full(buffer.size, np.iinfo(buffer.dtype).min, buffer.dtype)


def run_program(program, *arrays) -> list[np.ndarray]:
    """The outputs of a lowered ``Program`` run by the ``LoopInterpreter`` (see the module docstring)."""
    memory = {b: np.asarray(a, b.dtype).reshape(-1).copy() for b, a in zip(program.inputs, arrays)}
    memory |= {b: np.asarray(v, b.dtype).reshape(-1).copy() for b, v in program.constants}
    memory |= {b: unwritten(b) for b in list(program.outputs) + list(program.workspace)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for kernel in program.kernels:
            LoopInterpreter(memory).stmt(kernel.body)
    return [memory[b].reshape(b.shape) for b in program.outputs]
