"""Writes into traced arrays, and the NumPy functions that gather: functional updates (SSA).

A trace has no memory to write into, so a write makes a new value and rebinds the array to it
(torch.compile's functionalisation); every Python name bound to that array object sees it:

    x[idx] = v           ->   x = scatter(x, positions, v)                 (the last write wins)
    x[idx] += v          ->   x = scatter(x, positions, x[idx] + v)        (no accumulation: NumPy)
    np.add.at(x, idx, v) ->   x = scatter(x, positions, v, mode="add")     (accumulates: NumPy)
    np.add(a, b, out=x)  ->   x = a + b
    x[mask] = 0          ->   x = where(mask, 0, x)                        (a traced mask, one value)

``positions`` are the flat element numbers ``x[idx]`` reads (``np.arange(x.size).reshape(x.shape)[idx]``):
computed by NumPy when ``idx`` is constant, traced (with bounds checks) when it holds a traced
array. A view (``y = x[0]``) writes through into its base (``TracedArray.assign``); a written
input (an argument's array, or an array lifted from outside) is copied into the caller's
array after the call (``written_inputs``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DTypeError, ShapeError, UnsupportedError, at
from ..ir.graph import Node
from ..ir.symbolic import Sym
from .indexing import getitem
from .tracer import TracedArray, Tracer, describe_operand, find_tracer, user_location

#: ufuncs whose ``.at`` is a scatter that accumulates, and its mode
AT_MODES = {np.add: "add", np.subtract: "sub", np.multiply: "mul", np.maximum: "maximum",
            np.minimum: "minimum"}


def write(x: TracedArray, key, value, mode: str = "set", what: str = "x[...] = v") -> None:
    """``x[key] = value`` (mode set) or ``ufunc.at(x, key, value)``: rebind ``x`` to the scatter.

    ``value`` is broadcast to the shape of ``x[key]`` (leading axes of size 1 dropped, as NumPy)
    and, for mode set, cast to ``x.dtype`` (NumPy's unsafe casting for assignment).
    """
    tracer = x.tracer
    if isinstance(key, TracedArray) and key.dtype == np.bool_ and mode == "set":
        return _masked_write(x, key, value)
    where = positions(x, key)
    shape = tuple(where.shape)
    values = _fit(tracer, value, shape, x, what)
    if mode == "set" and values.dtype != x.dtype:
        values = values.astype(x.dtype)
    if math.prod(shape) == 0:
        return  # nothing written (the checks above still ran)
    x.assign(tracer.apply("scatter", [x, where, values], mode=mode).node)


def _masked_write(x: TracedArray, mask: TracedArray, value) -> None:
    """``x[mask] = v`` with a traced mask and one value: ``x = np.where(mask, v, x)`` (the mask
    spread over x's trailing axes). An array of values would go to the true elements in order:
    a data-dependent count, refused.

        before: x[x < 0] = 0        after: x = where(x < 0, 0, x)
    """
    if mask.shape != x.shape[:mask.ndim]:
        raise ShapeError(f"x[mask] = v: the boolean mask {mask.node.type} does not match the leading axes of "
                         f"{x.node.type}{at(user_location())}")
    count = value.size if isinstance(value, TracedArray) else np.size(value)
    if count != 1:
        raise UnsupportedError(
            f"x[mask] = v with a traced boolean mask and {count} values ({describe_operand(value)}) puts the "
            f"values into the true elements in order, a data-dependent count; operand {x.node.type}"
            f"{at(user_location())}; write x = np.where(mask, v, x) with v of x's shape")
    one = _fit(x.tracer, value, (), x, "x[mask] = v")
    spread = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    x.assign(x.tracer.apply("where", [spread, one.astype(x.dtype), x]).node)


def positions(x: TracedArray, key):
    """The flat element numbers of ``x[key]``, of its shape: a NumPy array for a constant key, a
    traced one (``sum over axes of stride * grid[key]``, each grid a broadcast arange, so nothing of
    ``x``'s size is stored) for a key holding traced index arrays."""
    items = key if isinstance(key, tuple) else (key,)
    constant = not any(isinstance(item, TracedArray) or _symbolic_slice(item) for item in items)
    if x.ndim == 0:
        return _constant_positions(x, key, lambda: np.zeros((), np.int64))
    total, stride = None, 1
    for axis in reversed(range(x.ndim)):
        grid = np.arange(x.shape[axis], dtype=np.int64) * stride
        grid = grid.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        if constant:  # NumPy indexes a broadcast view (no memory of x's size)
            part = _constant_positions(x, key, lambda: np.broadcast_to(grid, x.shape))
        else:
            part = getitem(x.tracer.apply("broadcast_to", [grid], shape=x.shape), key)
        total = part if total is None else part + total
        stride *= x.shape[axis]
    return total


def _symbolic_slice(item) -> bool:
    """Whether ``item`` is a slice with a symbolic bound (``cache[:, pos:pos + T]``): NumPy cannot
    index with it, so its positions are traced."""
    return isinstance(item, slice) and any(isinstance(v, Sym) for v in (item.start, item.stop, item.step))


def _constant_positions(x: TracedArray, key, grid) -> np.ndarray:
    """``grid()[key]`` by NumPy; its errors as minicomp's, naming the operand and the line."""
    try:
        return np.asarray(grid()[key], dtype=np.int64)
    except (IndexError, TypeError, ValueError) as exc:
        getitem(_shape_only(x), key)  # minicomp's own message where it has one
        raise ShapeError(f"{exc}; operand {x.node.type}{at(user_location())}") from None


def _shape_only(x: TracedArray) -> TracedArray:
    """A stand-in of ``x``'s shape and dtype (a constant of zeros) for indexing checks."""
    return TracedArray(x.tracer, x.tracer.node_of(np.zeros(x.shape, x.dtype)))


def _fit(tracer: Tracer, value, shape: tuple, x: TracedArray, what: str) -> TracedArray:
    """``value`` as a traced array of ``shape`` (NumPy's broadcasting for assignment)."""
    if isinstance(value, (list, tuple)) and find_tracer(value) is None:
        value = np.asarray(value)  # x[0] = [1, 2, 3]
    values = value if isinstance(value, TracedArray) else TracedArray(tracer, tracer.node_of(value, (x.dtype,)))
    while values.ndim > len(shape) and values.shape[0] == 1:
        values = values.reshape(values.shape[1:])
    if values.shape == shape:
        return values
    try:
        np.broadcast_shapes(values.shape, shape)
        if len(values.shape) > len(shape) or np.broadcast_shapes(values.shape, shape) != shape:
            raise ValueError
    except ValueError:
        raise ShapeError(f"{what}: could not broadcast input array from shape {values.shape} into shape "
                         f"{shape}; value {describe_operand(value)}, array {x.node.type}"
                         f"{at(user_location())}") from None
    return tracer.apply("broadcast_to", [values], shape=shape)


def ufunc_at(tracer: Tracer, ufunc: np.ufunc, inputs) -> None:
    """``np.add.at(x, idx, v)`` and the like: an accumulating scatter into traced ``x``."""
    name = f"np.{ufunc.__name__}.at"
    if ufunc not in AT_MODES:
        raise UnsupportedError(f"{name} is not supported{at(user_location())}; supported: "
                               + ", ".join(f"np.{u.__name__}.at" for u in AT_MODES))
    if len(inputs) != 3:
        raise UnsupportedError(f"{name} needs an array, indices and values (x, idx, v){at(user_location())}")
    x, key, value = inputs
    if not isinstance(x, TracedArray):
        raise UnsupportedError(
            f"{name} writes into a NumPy array ({describe_operand(x)}) that is not an argument of the "
            f"compiled function{at(user_location())}; it would be changed behind the compiled code: "
            "pass it as an argument, or start from a traced copy (x = np.zeros_like(...))")
    x.check_writable(name)
    write(x, key, value, mode=AT_MODES[ufunc], what=name)


def ufunc_out(ufunc_name: str, result: TracedArray, out) -> TracedArray:
    """``np.add(a, b, out=x)`` and ``a += b``: ``x`` takes the result (cast as NumPy's same_kind)."""
    if isinstance(out, tuple):
        if len(out) != 1:
            raise UnsupportedError(f"{ufunc_name}: out= with {len(out)} arrays{at(user_location())}; "
                                   "minicomp's ufuncs have one output")
        out = out[0]
    if not isinstance(out, TracedArray):
        raise UnsupportedError(
            f"{ufunc_name}(..., out=a) writes a traced result into a NumPy array a ({describe_operand(out)}), "
            f"made in the function or read from outside{at(user_location())}; a NumPy array cannot hold "
            "a traced value: write a = np.add(...) (for a += t: a = a + t), or make a traced "
            "(a = np.zeros_like(x))")
    out.check_writable(f"{ufunc_name}(out=...)")
    result = fitted_for_write(result, out, ufunc_name, "array out=",
                              f"; write x = {ufunc_name}(...).astype(x.dtype)")
    out.assign(result.node)
    return out


def written_inputs(tracer: Tracer) -> list[tuple[int, Node]]:
    """``(input number, new value)`` for each graph input the function wrote into: an array leaf
    of an argument (a KV cache, ``cache["k"]``) or an array lifted from outside (``self.W``)."""
    return [(n, proxy.node) for n, proxy in enumerate(tracer.inputs)
            if proxy.node is not tracer.graph.inputs[n]]


def fitted_for_write(result: TracedArray, target: TracedArray, op: str, target_role: str,
                     advice: str = "") -> TracedArray:
    """``result`` as NumPy writes it into ``target`` (``out=``, ``x += v``): the same shape, else
    NumPy's "non-broadcastable output operand" ``ShapeError``; cast to ``target``'s dtype when
    NumPy's 'same_kind' rule allows it, else a ``DTypeError``.

        fitted_for_write(f64 [2,3], f32 [2,3] target, "add", "array out=")  ->  f32 [2,3]
    """
    if result.shape != target.shape:
        raise ShapeError(f"{op}: non-broadcastable output operand with shape {target.shape} doesn't "
                         f"match the broadcast shape {result.shape}{at(user_location())}")
    if result.dtype == target.dtype:
        return result
    if not np.can_cast(result.dtype, target.dtype, "same_kind"):
        raise DTypeError(f"{op}: cannot cast the {result.dtype} result into the {target.dtype} {target_role} "
                         f"(NumPy's 'same_kind' rule){at(user_location())}{advice}")
    return result.astype(target.dtype)  # NumPy casts into the existing buffer
