"""Compute rules: each op's output element as an expression over input elements.

This is TVM's ``te.compute`` idea. A rule receives the output index (one loop variable per
output axis) and one ``Tensor`` accessor per operand, and returns the scalar expression of the
output element at that index, e.g. for ``add``::

    out[i, j] = x[i, j] + b[j]          # rule: lambda idx, x, b: x.at(idx) + b.at(idx)

Reductions return a ``Reduce``: a combiner, extra reduction loops and the body over them:

    out[i] = sum over k of  a[i, k] * b[k]

Lowering (``minicomp.lower.program``) turns a rule into loops; fusion (later) inlines one rule
into another by handing a producer's rule in place of a ``Load``.

Dtype discipline follows NumPy: inputs are cast to the dtypes NumPy's ufunc loop would use
(``ufunc.resolve_dtypes``), float16 arithmetic is done in float32 and rounded once per op (as
NumPy does), and NumPy's meanings C lacks are helper calls (``mc_floordiv``, ``mc_fmax`` ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .dtypes import TensorType
from .loops import (BOOL, INDEX, Binary, Buffer, Call, Cast, Const, Expr, Load, Select, Size, Unary,
                    Var, as_expr, const)
from .ops import conv2d_dims
from .symbolic import Sym

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


class Tensor:
    """An operand as a rule sees it: its type, and element access by a multi-index."""

    def __init__(self, type: TensorType, load: Callable[[list[Expr]], Expr]):
        self.type = type
        self._load = load

    @classmethod
    def of_buffer(cls, buffer: Buffer) -> "Tensor":
        """A tensor stored row-major in ``buffer``."""
        def load(idx):
            return Load(buffer, linear_index(idx, buffer.shape))
        return cls(TensorType(buffer.shape, buffer.dtype), load)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __getitem__(self, idx) -> Expr:
        """The element at a full multi-index (one expression per axis)."""
        idx = [as_expr(i) for i in (idx if isinstance(idx, (list, tuple)) else [idx])]
        assert len(idx) == len(self.shape), f"{len(idx)} indices for shape {self.shape}"
        return self._load(idx)

    def at(self, out_idx: list[Expr]) -> Expr:
        """The element NumPy broadcasting pairs with output index ``out_idx``.

        Axes are aligned from the right; an axis of size 1 is read at index 0.
        """
        tail = out_idx[len(out_idx) - len(self.shape):] if self.shape else []
        return self[[Const(0) if dim == 1 else i for dim, i in zip(self.shape, tail)]]


def linear_index(idx: list[Expr], shape: tuple[int, ...]) -> Expr:
    """Row-major linear index of ``idx`` in ``shape``: ``((i0*d1 + i1)*d2 + i2)``."""
    result: Expr = Const(0)
    for i, dim in zip(idx, shape):
        result = result * dim + i
    return result


@dataclass
class Reduce:
    """A reduction: ``combiner`` (sum, max, min) of ``body`` over ``axes`` (Var, extent) pairs.

    ``finish`` turns the accumulated value into the output (e.g. divide by the count for mean).
    """

    combiner: str
    axes: list[tuple[Var, int]]
    body: Expr
    dtype: np.dtype  # accumulator dtype
    finish: Callable[[Expr], Expr] = lambda acc: acc
    # max/min: on a tie (-0.0 and 0.0) the earlier element wins, in index order, as NumPy's
    # float16 loop does; such a reduction runs in order (no lanes, no reordering)
    first_wins: bool = False


# ----------------------------------------------------------------------------------------------
# dtype helpers
# ----------------------------------------------------------------------------------------------


def arith_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype arithmetic happens in: float16 is computed in float32, like NumPy's loops."""
    return F32 if dtype == F16 else dtype


def cast(expr: Expr, dtype) -> Expr:
    """``expr`` converted to ``dtype`` (nothing if it already is)."""
    dtype = np.dtype(dtype)
    return expr if expr.dtype == dtype else Cast(expr, dtype)


def to_arith(expr: Expr, dtype) -> Expr:
    """Cast to ``dtype``, then widen float16 to float32 for arithmetic."""
    return cast(cast(expr, dtype), arith_dtype(np.dtype(dtype)))


def _finish(expr: Expr, out_dtype) -> Expr:
    return cast(expr, out_dtype)


# ----------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------

RULES: dict[str, Callable] = {}


def rule(*names: str):
    """Register the decorated function as the compute rule of ops ``names``."""
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn
    return register


_MATH = {"exp", "log", "sqrt", "tanh", "sin", "cos", "floor", "ceil", "erf"}


@rule("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "reciprocal",
      "sin", "cos", "floor", "ceil", "sign", "logical_not")
def _unary(node, idx, x: Tensor):
    out = node.dtype
    if node.op == "logical_not":
        return Unary("!", cast(x.at(idx), BOOL), BOOL)
    if node.op == "reciprocal" and out.kind == "i":  # NumPy: 1/x in double, cast back
        return Cast(Binary("/", const(1.0, F64), cast(x.at(idx), F64), F64), out)
    v = to_arith(x.at(idx), out)
    t = v.dtype
    if node.op == "neg":
        value = Unary("-", v, t)
    elif node.op == "abs":
        value = v if t == BOOL else Call("mc_abs", (v,), t)
    elif node.op in ("floor", "ceil") and t.kind != "f":  # NumPy: the identity on ints and bools
        value = v  # (a trip through double would round int64 values above 2**53)
    elif node.op in _MATH:
        value = Call(node.op, (v,), t)
    elif node.op == "rsqrt":
        value = Binary("/", const(1, t), Call("sqrt", (v,), t), t)
    elif node.op == "reciprocal":
        value = Binary("/", const(1, t), v, t)
    else:  # sigmoid, sign
        value = Call(f"mc_{node.op}", (v,), t)
    return _finish(value, out)


_BINARY_C = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_COMPARE_C = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_BINARY_UFUNC = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
                 "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
                 "maximum": np.maximum, "minimum": np.minimum, "eq": np.equal, "ne": np.not_equal,
                 "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                 "logical_and": np.logical_and, "logical_or": np.logical_or}


@rule(*_BINARY_UFUNC)
def _binary(node, idx, a: Tensor, b: Tensor):
    ufunc = _BINARY_UFUNC[node.op]
    in_a, in_b, out = ufunc.resolve_dtypes((a.dtype, b.dtype, None))
    x, y = to_arith(a.at(idx), in_a), to_arith(b.at(idx), in_b)
    t = x.dtype
    op = node.op
    if op in ("logical_and", "logical_or"):
        return Binary("&&" if op == "logical_and" else "||", cast(x, BOOL), cast(y, BOOL), BOOL)
    if op in _COMPARE_C:
        return Binary(_COMPARE_C[op], x, y, BOOL)
    if t == BOOL and op in ("add", "mul", "maximum", "minimum"):  # bool + bool is logical or
        return Binary("||" if op in ("add", "maximum") else "&&", x, y, BOOL)
    if op in _BINARY_C:
        value = Binary(_BINARY_C[op], x, y, t)
    else:  # floordiv, mod, pow, maximum, minimum: NumPy's meaning via helpers
        if op in ("maximum", "minimum") and in_a == np.float16:
            x, y = y, x  # on a tie (-0.0, 0.0) NumPy's float16 loop keeps the first operand, mc_ the second
        value = Call(f"mc_{op}", (x, y), t)
    return _finish(value, out)


@rule("cast")
def _cast(node, idx, x: Tensor):
    return cast(x.at(idx), node.dtype)


@rule("where")
def _where(node, idx, c: Tensor, a: Tensor, b: Tensor):
    return Select(c.at(idx), cast(a.at(idx), node.dtype), cast(b.at(idx), node.dtype))


# -- reductions ---------------------------------------------------------------------------------


def _reduce_index(node, idx, x: Tensor) -> tuple[list[Expr], list[tuple[Var, int]]]:
    """The input index of a reduction: output axes where kept, new loop variables elsewhere."""
    axes, keep = node.attrs["axes"], node.attrs["keepdims"]
    out_axes = iter(idx)
    in_idx, loops = [], []
    for axis, dim in enumerate(x.shape):
        if axis in axes:
            var = Var(f"r{axis}")
            loops.append((var, dim))
            in_idx.append(var)
            if keep:
                next(out_axes)
        else:
            in_idx.append(next(out_axes))
    return in_idx, loops


@rule("sum", "mean", "max", "min")
def _reduction(node, idx, x: Tensor):
    in_idx, loops = _reduce_index(node, idx, x)
    out = node.dtype
    acc = arith_dtype(out)
    body = cast(cast(x[in_idx], out), acc)
    if node.op in ("max", "min"):
        return Reduce(node.op, loops, body, acc, lambda v: cast(v, out), first_wins=out == F16)
    if node.op == "sum":
        return Reduce("sum", loops, body, acc, lambda v: cast(v, out))
    count = math.prod(d for _, d in loops)  # a Sym over a symbolic axis: its value at call time
    divisor = Cast(Size(count), acc) if isinstance(count, Sym) else const(count, acc)
    return Reduce("sum", loops, body, acc, lambda v: cast(Binary("/", v, divisor, acc), out))


# -- matmul and conv2d ----------------------------------------------------------------------------


@rule("matmul")
def _matmul(node, idx, a: Tensor, b: Tensor):
    in_a, in_b, out = np.matmul.resolve_dtypes((a.dtype, b.dtype, None))
    k_var, k_dim = Var("rk"), a.shape[-1]
    a_vec, b_vec = len(a.shape) == 1, len(b.shape) == 1
    # Re-insert the axes NumPy drops for 1-D operands, then index like 2-D batched matmul.
    full = list(idx)
    if b_vec:
        full.append(Const(0))
    if a_vec:
        full.insert(len(full) - 1, Const(0))
    batch, i, j = full[:-2], full[-2], full[-1]
    a_idx = [k_var] if a_vec else _batch_index(batch, a.shape[:-2]) + [i, k_var]
    b_idx = [k_var] if b_vec else _batch_index(batch, b.shape[:-2]) + [k_var, j]
    acc = arith_dtype(out)
    if out == BOOL:
        body = Binary("&&", cast(a[a_idx], BOOL), cast(b[b_idx], BOOL), BOOL)
        return Reduce("max", [(k_var, k_dim)], body, BOOL)  # any(a and b)
    body = Binary("*", to_arith(a[a_idx], in_a), to_arith(b[b_idx], in_b), acc)
    return Reduce("sum", [(k_var, k_dim)], body, acc, lambda v: cast(v, out))


def _batch_index(batch: list[Expr], shape: tuple[int, ...]) -> list[Expr]:
    """Broadcast the output batch index onto an operand's (shorter or size-1) batch axes."""
    tail = batch[len(batch) - len(shape):] if shape else []
    return [Const(0) if dim == 1 else i for dim, i in zip(shape, tail)]


@rule("conv2d")
def _conv2d(node, idx, x: Tensor, w: Tensor):
    attrs = node.attrs
    d = conv2d_dims(x.shape, w.shape, attrs)
    in_x, in_w, out = np.matmul.resolve_dtypes((x.dtype, w.dtype, None))
    nchw = attrs["layout"] == "NCHW"
    n, o, oh, ow = (idx[0], idx[1], idx[2], idx[3]) if nchw else (idx[0], idx[3], idx[1], idx[2])
    groups = attrs["groups"]
    cin = d["C"] // groups
    c, r, s = Var("rc"), Var("rr"), Var("rs")
    (pt, _, pl, _), (sh, sw), (dh, dw) = attrs["padding"], attrs["strides"], attrs["dilation"]
    channel = c if groups == 1 else Binary("/", o, Const(d["O"] // groups), INDEX) * cin + c
    h = oh * sh + r * dh - pt
    wi = ow * sw + s * dw - pl
    inside = _all([Binary(">=", h, Const(0), BOOL), Binary("<", h, Const(d["H"]), BOOL),
                   Binary(">=", wi, Const(0), BOOL), Binary("<", wi, Const(d["W"]), BOOL)])
    x_val = x[[n, channel, h, wi]] if nchw else x[[n, h, wi, channel]]
    w_val = w[[o, c, r, s]] if nchw else w[[r, s, c, o]]
    acc = arith_dtype(out)
    product = Binary("*", to_arith(x_val, in_x), to_arith(w_val, in_w), acc)
    body = Select(inside, product, const(0, acc)) if any(attrs["padding"]) else product
    loops = [(c, cin), (r, d["R"]), (s, d["S"])]
    return Reduce("sum", loops, body, acc, lambda v: cast(v, out))


def _all(conds: list[Expr]) -> Expr:
    result = conds[0]
    for cond in conds[1:]:
        result = Binary("&&", result, cond, BOOL)
    return result


# -- data movement ------------------------------------------------------------------------------


@rule("transpose")
def _transpose(node, idx, x: Tensor):
    in_idx = [None] * len(idx)
    for out_axis, in_axis in enumerate(node.attrs["perm"]):
        in_idx[in_axis] = idx[out_axis]
    return x[in_idx]


@rule("reshape")
def _reshape(node, idx, x: Tensor):
    """Axes the reshape leaves alone at either end map straight through; the axes between are
    flattened and split again (``[B, T, C] -> [B, T, H, C/H]``: ``x[b, t, h*(C/H) + d]``). With
    a symbolic size only there would a division by a run-time size appear."""
    out_shape, in_shape = list(node.shape), list(x.shape)
    head = 0
    while head < min(len(out_shape), len(in_shape)) and out_shape[head] == in_shape[head]:
        head += 1
    tail = 0
    while (tail < min(len(out_shape), len(in_shape)) - head
           and out_shape[len(out_shape) - 1 - tail] == in_shape[len(in_shape) - 1 - tail]):
        tail += 1
    middle_out, middle_in = slice(head, len(out_shape) - tail), slice(head, len(in_shape) - tail)
    rest = linear_index(list(idx[middle_out]), out_shape[middle_out])
    split = []
    for stride in _strides(in_shape[middle_in]):
        split.append(Binary("/", rest, as_expr(stride), INDEX) if stride != 1 else rest)
        rest = Binary("%", rest, as_expr(stride), INDEX) if stride != 1 else Const(0)
    return x[list(idx[:head]) + split + list(idx[len(out_shape) - tail:])]


def _strides(shape):
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return list(reversed(strides))


@rule("broadcast_to")
def _broadcast_to(node, idx, x: Tensor):
    return x.at(idx)


@rule("expand_dims")
def _expand_dims(node, idx, x: Tensor):
    return x[[i for axis, i in enumerate(idx) if axis not in node.attrs["axes"]]]


@rule("squeeze")
def _squeeze(node, idx, x: Tensor):
    out_axes = iter(idx)
    return x[[Const(0) if axis in node.attrs["axes"] else next(out_axes) for axis in range(len(x.shape))]]


@rule("slice")
def _slice(node, idx, x: Tensor):
    a = node.attrs
    return x[[as_expr(start) + i * step for i, start, step in zip(idx, a["starts"], a["steps"])]]


@rule("concatenate")
def _concatenate(node, idx, *xs: Tensor):
    axis = node.attrs["axis"]
    pieces, offset = [], 0
    for x in xs:
        shifted = list(idx)
        shifted[axis] = idx[axis] - offset
        pieces.append((offset + x.shape[axis], cast(x[shifted], node.dtype)))
        offset += x.shape[axis]
    value = pieces[-1][1]
    for end, piece in reversed(pieces[:-1]):
        value = Select(Binary("<", idx[axis], Const(end), BOOL), piece, value)
    return value


@rule("gather")
def _gather(node, idx, x: Tensor, *indices: Tensor):
    """``out[a, p, b] = x[a, i0[p], i1[p], ..., b]``: each index read at the picked position ``p``
    (broadcast) and checked (``checked_index``) before ``x`` is read: never outside ``x``."""
    axis, mode = node.attrs["axis"], node.attrs["mode"]
    picked_ndim = len(node.shape) - len(x.shape) + len(indices)
    picked = list(idx[axis:axis + picked_ndim])
    chosen = [checked_index(i.at(picked), x.shape[axis + n], mode) for n, i in enumerate(indices)]
    return x[list(idx[:axis]) + chosen + list(idx[axis + picked_ndim:])]


def checked_index(index: Expr, size: int, mode: str = "raise") -> Expr:
    """An index expression (an integer dtype) as an int64 in ``0..size-1`` (``size >= 1``).

    ``raise``: ``mc_index`` counts a negative index from the end and, for one out of range, sets
    the call's status (an ``IndexOutOfBoundsError`` after the call) and gives 0, so the load it
    feeds stays inside the buffer. ``wrap``: Python's modulo; ``clip``: clamped, as ``np.take``.

        before: i (an int32 from an index array), size 50
        after:  mc_index(i, 50)
    """
    wide = cast(index, INDEX)
    if mode == "wrap":
        return Call("mc_mod", (wide, Const(size)), INDEX)
    if mode == "clip":
        last = Select(Binary(">=", wide, Const(size), BOOL), Const(size - 1), wide)
        return Select(Binary("<", wide, Const(0), BOOL), Const(0), last)
    return Call("mc_index", (wide, Const(size)), INDEX)
@rule("as_strided")
def _as_strided(node, idx, x: Tensor):
    """``x.flat[offset + sum(i * stride)]``, the flat index split back into ``x``'s axes."""
    a = node.attrs
    flat: Expr = Const(a["offset"])
    for i, stride in zip(idx, a["strides"]):
        flat = flat + i * stride if stride else flat
    in_idx, rest = [], flat
    for stride in _strides(x.shape):
        in_idx.append(Binary("/", rest, Const(stride), INDEX) if stride != 1 else rest)
        rest = Binary("%", rest, Const(stride), INDEX) if stride != 1 else Const(0)
    return x[in_idx]


@rule("constant")
def _constant(node, idx, *args):
    value = node.attrs["value"]
    return const(value.reshape(-1)[0], node.dtype)  # only scalars are inlined; arrays are buffers


def compute(node, idx: list[Expr], operands: list[Tensor]):
    """The compute rule of ``node`` applied at output index ``idx``: an ``Expr`` or a ``Reduce``."""
    return RULES[node.op](node, idx, *operands)
