"""The building blocks every lowering uses: output indices, accumulators, loop nests.

Lowering (``minicomp.lower.program``, ``minicomp.lower.fused``) and the schedules that rebuild
its nests (``minicomp.schedules.cpu``) share these, so each is written once::

    output_index((4, 1, 8))          ->  [i0, 0, i2]        (an axis of extent 1 is index 0)
    reduce_into(acc, sum over r1)    ->  f32 acc = 0;  for r1: acc = acc + x[i0*8 + r1]
    nest([(i0, 4), (i2, 8)], body)   ->  for i0 in 0..4: for i2 in 0..8: body
"""

from __future__ import annotations

import numpy as np

from ..ir.compute import Reduce, Tensor
from ..ir.graph import Node
from ..ir.loops import BOOL, Assign, Binary, Buffer, Call, Const, Declare, For, Stmt, Var, const
from ..ir.symbolic import Sym


def is_inline_constant(node: Node) -> bool:
    """Constants with one element are written into the code as literals."""
    return node.op == "constant" and node.type.size == 1


def operand_tensor(operand: Node, buffers: dict[Node, Buffer]) -> Tensor:
    """How a kernel reads ``operand``: its buffer, or the literal of a one-element constant."""
    if is_inline_constant(operand):
        value = const(operand.attrs["value"].reshape(-1)[0], operand.dtype)
        return Tensor(operand.type, lambda idx: value)
    return Tensor.of_buffer(buffers[operand])


def output_index(shape: tuple[int, ...]) -> list:
    """One loop variable ``i<axis>`` per output axis; axes of extent 1 are just index 0."""
    return [Const(0) if extent == 1 else Var(f"i{axis}") for axis, extent in enumerate(shape)]


def combine(combiner: str, acc, value, first_wins: bool = False):
    """``acc + value``, or NumPy's NaN-propagating max/min (``||``/``&&`` for bool).

    On a tie of max/min (-0.0 and 0.0) ``value`` wins, as in NumPy's float32/64 loops, or
    ``acc`` if ``first_wins`` (NumPy's float16 loop: ``mc_maximum_first``).
    """
    if combiner == "sum":
        return Binary("+", acc, value, acc.dtype)
    if acc.dtype == BOOL:
        return Binary("||" if combiner == "max" else "&&", acc, value, BOOL)
    name = f"mc_{'maximum' if combiner == 'max' else 'minimum'}{'_first' if first_wins else ''}"
    return Call(name, (acc, value), acc.dtype)


def reduction_init(combiner: str, dtype: np.dtype):
    """The identity of the combiner: 0 for sum, the lowest value for max, the highest for min."""
    if combiner == "sum":
        return const(0, dtype)
    if dtype == BOOL:
        return const(combiner == "min", dtype)
    if dtype.kind == "f":
        return const(-np.inf if combiner == "max" else np.inf, dtype)
    info = np.iinfo(dtype)
    return const(info.min if combiner == "max" else info.max, dtype)


def reduce_into(acc: Var, r: Reduce) -> list[Stmt]:
    """``acc = init; for r...: acc = combine(acc, body)``: one scalar accumulator."""
    return [Declare(acc, reduction_init(r.combiner, r.dtype)),
            nest(r.axes, Assign(acc, combine(r.combiner, acc, r.body, r.first_wins)))]


def nest(loops: list[tuple[Var, int]], body: Stmt, parallel: bool = False) -> Stmt:
    """Wrap ``body`` in loops (outermost first); the outermost is parallel if asked."""
    for depth, (var, extent) in reversed(list(enumerate(loops))):
        symbolic = isinstance(extent, Sym)
        kind = "parallel" if parallel and depth == 0 and (symbolic or extent > 1) else "serial"
        body = For(var, extent if symbolic else int(extent), body, kind)
    return body
