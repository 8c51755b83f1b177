"""Algebraic rewrites: small local identities, each exact where NumPy's arithmetic is exact.

Each rewrite is a function ``node -> replacement or None`` registered for some ops with
``@rewrite``, and carries a one-line algebra comment. The pass applies them until none fires
(a fixed point). A replacement has exactly the node's type: where NumPy's promotion or
broadcasting would change it (``x_f32 * ones_f64``, ``x * ones((4, 3))``), it is wrapped in an
explicit ``cast`` / ``broadcast_to``.

"Exact" is meant bit for bit, signed zeros included (``1 / -0.0 = -inf``), except where a
comment says "within rounding". What is deliberately *not* rewritten:

* ``x * 0 -> 0``: for floats ``inf * 0`` and ``nan * 0`` are NaN, and ``-3.0 * 0 = -0.0``.
* ``x + 0.0 -> x`` for float ``x``: ``-0.0 + 0.0 = +0.0``. (``x + -0.0`` and ``x - 0.0`` are x.)
* ``log(exp(x)) -> x``: ``exp`` overflows to inf for x > 88.7 (float32) and underflows to 0.
* ``exp(log(x)) -> x`` and ``x ** 0.5 -> sqrt(x)`` unless ``x`` is provably ``>= +0.0`` or
  NaN (see ``nonnegative``): for x < 0 ``exp(log(x))`` is NaN; ``exp(log(-0.0)) = +0.0``;
  ``(-inf) ** 0.5 = inf`` but ``sqrt(-inf) = nan``; ``(-0.0) ** 0.5 = +0.0`` but
  ``sqrt(-0.0) = -0.0``. NumPy itself does not agree with itself there: with a 0-d float32 or
  float64 exponent ``np.power`` takes a sqrt fast path (NaN, -0.0), with an array exponent it
  calls ``pow`` (inf, +0.0). On values ``>= +0.0`` all of them agree.
* ``x / c -> x * (1/c)`` unless ``1/c`` is exact (c a power of two): ``x / 10 != x * 0.1``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir.graph import Graph, Node
from ..ir.ops import broadcast_shapes, ufunc_dtype
from ..ir.symbolic import SymbolicShapeError
from .pipeline import register_pass

Rewrite = Callable[[Node], "Node | None"]
#: op name -> the rewrites tried on nodes of that op, in order
REWRITES: dict[str, list[Rewrite]] = {}


def rewrite(*ops: str):
    """Register the decorated function as a rewrite of nodes whose op is one of ``ops``."""
    def register(fn: Rewrite) -> Rewrite:
        for op in ops:
            REWRITES.setdefault(op, []).append(fn)
        return fn
    return register


@register_pass("algebraic")
def algebraic(graph: Graph) -> Graph:
    """Apply the rewrites of this module until none applies.

    Requires: a verified graph.
    Guarantees: every node's value is unchanged (bit for bit, or within rounding where a
    rewrite says so) and keeps its type; outputs compute what they computed. Rewritten nodes
    are erased; values they read that nobody reads any more are left for ``dce``.

        before:  %t = transpose(%x) {perm=[1,0]} : f32[3,2]
                 %u = transpose(%t) {perm=[1,0]} : f32[2,3]
                 %y = pow(%u, %three) : f32[2,3]
        after:   %mul = mul(%x, %x) : f32[2,3]
                 %mul_1 = mul(%mul, %x) : f32[2,3]
    """
    while _rewrite_once(graph):
        pass
    return graph


def _rewrite_once(graph: Graph) -> bool:
    """One sweep over the graph in topological order; True if anything changed."""
    changed = False
    outputs = set(graph.outputs)
    for node in graph.op_nodes():
        if not node.users and node not in outputs:
            continue  # dead: nothing to gain, dce removes it
        for fn in REWRITES.get(node.op, ()):
            try:
                new = fn(node)
            except SymbolicShapeError:  # the rule needs a symbolic size's value: not applied
                continue  # (rules build their replacement before using it: at most dead nodes)
            if new is not None:
                graph.replace_all_uses(node, new)
                graph.erase(node)
                outputs = set(graph.outputs)
                changed = True
                break
    return changed


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def scalar(node: Node):
    """The value of a constant whose elements are all the same, bit for bit; else None."""
    if node.op != "constant" or node.type.size == 0:
        return None
    value = node.attrs["value"]
    first = value.reshape(-1)[0]
    same = value == first
    if value.dtype.kind == "f":
        same &= np.signbit(value) == np.signbit(first)  # 0.0 == -0.0, but they differ
    return first.item() if np.all(same) else None


def cast_to(value: Node, dtype: np.dtype, loc: str | None) -> Node:
    """``value`` as ``dtype`` (NumPy's promotion made explicit); ``value`` itself if it is."""
    if value.dtype == dtype:
        return value
    return value.graph.add_op("cast", [value], {"dtype": dtype}, loc=loc)


def broadcast_to(value: Node, shape: tuple[int, ...], loc: str | None) -> Node:
    """``value`` broadcast to ``shape`` (NumPy's broadcasting made explicit)."""
    if value.shape == shape:
        return value
    return value.graph.add_op("broadcast_to", [value], {"shape": shape}, loc=loc)


def as_type_of(value: Node, node: Node) -> Node:
    """``value`` cast and broadcast to ``node``'s type: a replacement for ``node``."""
    return broadcast_to(cast_to(value, node.dtype, node.loc), node.shape, node.loc)


def nonnegative(node: Node, depth: int = 0) -> bool:
    """True if every element of ``node`` is ``>= +0.0`` or NaN: never negative, never -0.0.

    A small sign analysis: abs, exp, sigmoid and ``x*x`` are; sums, products, quotients,
    square roots, reductions and float casts of such values are; so are such constants.
    """
    if node.op == "constant":
        v = node.attrs["value"]
        if v.dtype.kind != "f":
            return bool(np.all(v >= 0))
        return bool(np.all((v > 0) | (v == 0) & ~np.signbit(v) | np.isnan(v)))
    if node.dtype.kind != "f" or depth > 8:  # integers wrap around: 2**31 - 1 + 1 < 0
        return False
    if node.op in ("abs", "exp", "sigmoid"):
        return True
    if node.op == "mul" and node.operands[0] is node.operands[1]:
        return True  # x*x, and (-0.0)*(-0.0) = +0.0
    if node.op in ("add", "mul", "div", "sqrt", "rsqrt", "sum", "mean", "max", "min", "cast",
                   "maximum", "minimum"):
        return all(nonnegative(o, depth + 1) for o in node.operands)
    return False


# ----------------------------------------------------------------------------------------------
# Identities: x*1, 1*x, x/1, x+0, 0+x, x-0 -> x
# ----------------------------------------------------------------------------------------------


def adds_nothing(zero: Node, x: Node) -> bool:
    """``x + zero == x``: zero is 0; for float x it must be -0.0 (``-0.0 + 0.0 = +0.0``)."""
    value = scalar(zero)
    if value is None or value != 0:
        return False
    return x.dtype.kind != "f" or (zero.dtype.kind == "f" and bool(np.signbit(value)))


@rewrite("mul")
def multiply_by_one(node: Node) -> Node | None:
    # x * 1 -> x,  1 * x -> x
    a, b = node.operands
    if scalar(b) == 1:
        return as_type_of(a, node)
    if scalar(a) == 1:
        return as_type_of(b, node)
    return None


@rewrite("div")
def divide_by_one(node: Node) -> Node | None:
    # x / 1 -> x
    x, one = node.operands
    return as_type_of(x, node) if scalar(one) == 1 else None


@rewrite("add")
def add_zero(node: Node) -> Node | None:
    # x + 0 -> x,  0 + x -> x   (floats: only -0.0, see adds_nothing)
    a, b = node.operands
    if adds_nothing(b, a):
        return as_type_of(a, node)
    if adds_nothing(a, b):
        return as_type_of(b, node)
    return None


@rewrite("sub")
def subtract_zero(node: Node) -> Node | None:
    # x - 0 -> x   (floats: only +0.0, since x - (-0.0) = x + 0.0)
    x, zero = node.operands
    value = scalar(zero)
    if value is None or value != 0 or (zero.dtype.kind == "f" and np.signbit(value)):
        return None
    return as_type_of(x, node)


# ----------------------------------------------------------------------------------------------
# Negation
# ----------------------------------------------------------------------------------------------


@rewrite("neg")
def double_negation(node: Node) -> Node | None:
    # -(-x) -> x   (integers too: -INT_MIN wraps to INT_MIN, twice)
    (inner,) = node.operands
    return inner.operands[0] if inner.op == "neg" else None


@rewrite("sub")
def subtract_negation(node: Node) -> Node | None:
    # x - (-y) -> x + y   (IEEE defines x - z as x + (-z))
    x, inner = node.operands
    if inner.op != "neg":
        return None
    return node.graph.add_op("add", [x, inner.operands[0]], loc=node.loc)


@rewrite("add")
def add_negation(node: Node) -> Node | None:
    # x + (-y) -> x - y,  (-x) + y -> y - x
    a, b = node.operands
    if b.op == "neg":
        return node.graph.add_op("sub", [a, b.operands[0]], loc=node.loc)
    if a.op == "neg":
        return node.graph.add_op("sub", [b, a.operands[0]], loc=node.loc)
    return None


# ----------------------------------------------------------------------------------------------
# Data movement: transpose, reshape chains, no-op casts and broadcasts
# ----------------------------------------------------------------------------------------------

RESHAPES = ("reshape", "squeeze", "expand_dims")  # all three keep the elements in C order


@rewrite("transpose")
def identity_transpose(node: Node) -> Node | None:
    # transpose(x, (0, 1, ..., n-1)) -> x
    return node.operands[0] if node.attrs["perm"] == tuple(range(node.type.ndim)) else None


@rewrite("transpose")
def transpose_of_transpose(node: Node) -> Node | None:
    # transpose(transpose(x, p), q) -> transpose(x, p[q])
    (inner,) = node.operands
    if inner.op != "transpose":
        return None
    p, q = inner.attrs["perm"], node.attrs["perm"]
    return node.graph.add_op("transpose", inner.operands, {"perm": tuple(p[i] for i in q)},
                             loc=node.loc)


@rewrite(*RESHAPES, "broadcast_to")
def same_shape(node: Node) -> Node | None:
    # reshape(x, shape of x) -> x   (and squeeze, expand_dims, broadcast_to that change nothing)
    x = node.operands[0]
    return x if x.shape == node.shape else None


@rewrite(*RESHAPES)
def reshape_chain(node: Node) -> Node | None:
    # reshape(reshape(x, s1), s2) -> reshape(x, s2)   (squeeze and expand_dims are reshapes)
    (inner,) = node.operands
    if inner.op not in RESHAPES:
        return None
    return node.graph.add_op("reshape", inner.operands, {"shape": node.shape}, loc=node.loc)


@rewrite("broadcast_to")
def broadcast_chain(node: Node) -> Node | None:
    # broadcast_to(broadcast_to(x, s1), s2) -> broadcast_to(x, s2)
    (inner,) = node.operands
    if inner.op != "broadcast_to":
        return None
    return broadcast_to(inner.operands[0], node.shape, node.loc)


@rewrite("cast")
def cast_to_same_dtype(node: Node) -> Node | None:
    # cast(x, dtype of x) -> x
    x = node.operands[0]
    return x if x.dtype == node.dtype else None


BROADCASTING = ("add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum", "eq",
                "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "where")


@rewrite(*BROADCASTING)
def let_the_op_broadcast(node: Node) -> Node | None:
    # f(broadcast_to(y, s), z) -> f(y, z)   when f's own broadcasting gives the same shape
    for i, operand in enumerate(node.operands):
        if operand.op == "broadcast_to" and keeps_shape(node, i, operand.operands[0].shape):
            return with_operand(node, i, operand.operands[0])
    return None


@rewrite(*BROADCASTING)
def splat_to_scalar(node: Node) -> Node | None:
    # f(full(s, c), z) -> f(c, z)   a constant with all elements equal is a broadcast 0-d constant
    for i, operand in enumerate(node.operands):
        if operand.type.size > 1 and scalar(operand) is not None and keeps_shape(node, i, ()):
            value = np.asarray(operand.attrs["value"].reshape(-1)[0])  # 0-d, same dtype
            return with_operand(node, i, node.graph.add_constant(value, loc=operand.loc))
    return None


def keeps_shape(node: Node, index: int, shape: tuple[int, ...]) -> bool:
    """Would ``node`` have the same shape if its operand ``index`` had ``shape``?"""
    others = [o.shape for i, o in enumerate(node.operands) if i != index]
    return broadcast_shapes(shape, *others) == node.shape


def with_operand(node: Node, index: int, new: Node) -> Node:
    """A new node like ``node`` but reading ``new`` as operand ``index``."""
    operands = node.operands
    operands[index] = new
    return node.graph.add_op(node.op, operands, node.attrs, loc=node.loc)


# ----------------------------------------------------------------------------------------------
# exp and log
# ----------------------------------------------------------------------------------------------


@rewrite("exp")
def exp_of_log(node: Node) -> Node | None:
    # exp(log(x)) -> x   for x >= +0.0 only (see the module docstring); within rounding
    (inner,) = node.operands
    if inner.op != "log":
        return None
    x = inner.operands[0]
    return x if x.type == node.type and nonnegative(x) else None


# ----------------------------------------------------------------------------------------------
# Powers
# ----------------------------------------------------------------------------------------------


@rewrite("pow")
def small_integer_power(node: Node) -> Node | None:
    # x**2 -> x*x,  x**3 -> x*x*x   (exact for integers, within rounding for floats; NumPy's
    # float32 x**3 calls powf, 13x and more slower than two multiplications: see tutorial 03)
    x, exponent = node.operands
    n = scalar(exponent)
    if n not in (2, 3) or node.dtype.kind not in "fi":
        return None
    x = cast_to(x, node.dtype, node.loc)
    power = node.graph.add_op("mul", [x, x], loc=node.loc)
    if n == 3:
        power = node.graph.add_op("mul", [power, x], loc=node.loc)
    return broadcast_to(power, node.shape, node.loc)


@rewrite("pow")
def power_of_one(node: Node) -> Node | None:
    # x**1 -> x
    x, exponent = node.operands
    return as_type_of(x, node) if scalar(exponent) == 1 else None


@rewrite("pow")
def power_of_minus_one(node: Node) -> Node | None:
    # x**-1 -> reciprocal(x)   (floats only: integers to negative powers are an error)
    x, exponent = node.operands
    if scalar(exponent) != -1 or node.dtype.kind != "f":
        return None
    inverse = node.graph.add_op("reciprocal", [cast_to(x, node.dtype, node.loc)], loc=node.loc)
    return broadcast_to(inverse, node.shape, node.loc)


@rewrite("pow")
def power_of_one_half(node: Node) -> Node | None:
    # x**0.5 -> sqrt(x)   for x >= +0.0 only (see the module docstring)
    x, exponent = node.operands
    if scalar(exponent) != 0.5 or x.dtype != node.dtype or not nonnegative(x):
        return None
    return broadcast_to(node.graph.add_op("sqrt", [x], loc=node.loc), node.shape, node.loc)


# ----------------------------------------------------------------------------------------------
# Division by a constant
# ----------------------------------------------------------------------------------------------


@rewrite("div")
def divide_by_power_of_two(node: Node) -> Node | None:
    # x / 2**k -> x * 2**-k   (exact: both round the same real number once)
    x, divisor = node.operands
    if divisor.op != "constant" or divisor.dtype.kind != "f":
        return None
    if ufunc_dtype(np.multiply, x.dtype, divisor.dtype) != node.dtype:
        return None
    inverse = exact_reciprocal(divisor.attrs["value"])
    if inverse is None:
        return None
    factor = node.graph.add_constant(inverse, loc=divisor.loc)
    return node.graph.add_op("mul", [x, factor], loc=node.loc)


def exact_reciprocal(value: np.ndarray) -> np.ndarray | None:
    """``1 / value`` if every element is a power of two whose reciprocal is exact; else None."""
    with np.errstate(all="ignore"):  # 1 / 0 is inf, and inf * 0 NaN: not exact, and no warning
        inverse = np.reciprocal(value)
        powers_of_two = (np.abs(np.frexp(value)[0]) == 0.5) & (np.abs(np.frexp(inverse)[0]) == 0.5)
        exact = inverse.astype(np.float64) * value == 1  # a product of powers of two is exact
    return inverse if np.all(powers_of_two & exact) else None

