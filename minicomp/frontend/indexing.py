"""Basic indexing of traced arrays: ``x[1:, ::2]``, ``x[0]``, ``x[..., None]``.

A NumPy basic index becomes at most three graph ops:

    x[2, 1:5:2, None]   ->   slice (one range per axis)  ->  squeeze (axes indexed by an int)
                        ->   expand_dims (one new axis per None)

Advanced indexing (integer arrays, boolean masks) picks elements by data and is refused.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError, UnsupportedError, at
from ..ir.ops import whole_symbolic_axis
from ..ir.symbolic import Sym, SymbolicShapeError, require
from .tracer import TracedArray, user_location


def getitem(x: TracedArray, key) -> TracedArray:
    """``x[key]`` for a basic-indexing ``key``, recorded as slice/squeeze/expand_dims."""
    items = _expand_ellipsis(key if isinstance(key, tuple) else (key,), x)
    ranges, int_axes, new_axes = [], [], []
    axis, out_dim = 0, 0
    for item in items:
        if item is None:
            new_axes.append(out_dim)
            out_dim += 1
        elif isinstance(item, slice):
            if item.step == 0:
                raise ShapeError(f"slice step cannot be zero{at(user_location())}")
            if isinstance(x.shape[axis], Sym):
                ranges.append(_symbolic_slice(item, x, axis))
            else:
                ranges.append((item.start, item.stop, item.step if item.step is not None else 1))
            axis, out_dim = axis + 1, out_dim + 1
        else:
            ranges.append(_int_index(item, x, axis))
            int_axes.append(axis)
            axis += 1
    result = x
    full = [(0, d, 1) for d in x.shape]
    normalized = [whole_symbolic_axis(d, *r) if isinstance(d, Sym) else slice(*r).indices(d)
                  for r, d in zip(ranges, x.shape)]
    if normalized != full:
        starts, stops, steps = zip(*ranges) if ranges else ((), (), ())
        result = x._apply("slice", x, starts=starts, stops=stops, steps=steps)
    if int_axes:
        result = result._apply("squeeze", result, axes=tuple(int_axes))
    if new_axes:
        result = result._apply("expand_dims", result, axes=tuple(new_axes))
    return result if result is not x else x.copy()


def _expand_ellipsis(items: tuple, x: TracedArray) -> list:
    ndim = x.ndim
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not (
                item is None or item is Ellipsis or isinstance(item, (slice, int, np.integer))):
            raise UnsupportedError(
                f"index {item!r:.60} {_why_not_basic(item)}; operand {x.node.type}{at(user_location())}; "
                "only basic indexing (ints, slices, None, ...) can be traced"
            )
    if sum(item is Ellipsis for item in items) > 1:
        raise ShapeError(f"an index can only have a single ellipsis ('...'); operand {x.node.type}{at(user_location())}")
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if used > ndim:
        raise ShapeError(f"too many indices for array: array is {ndim}-dimensional, but {used} "
                         f"were indexed; operand {x.node.type}{at(user_location())}")
    expanded = []
    for item in items:
        expanded += [slice(None)] * (ndim - used) if item is Ellipsis else [item]
    if Ellipsis not in items:
        expanded += [slice(None)] * (ndim - used)
    return expanded


def _why_not_basic(item) -> str:
    if isinstance(item, (bool, np.bool_, list, np.ndarray, TracedArray)):
        return "is advanced indexing (an array, list, mask or bool)"
    return f"is a {type(item).__name__}, not an index"


def _bound(value: int, size: Sym, why: str):
    """``value`` (an int start or stop) along an axis of symbolic ``size``, guarded to lie in it:
    ``-1`` -> ``size - 1`` (guard ``size >= 1``), ``2`` -> ``2`` (guard ``size >= 2``)."""
    value = int(value)
    require(size, abs(value), why)
    return size + value if value < 0 else value


def _symbolic_slice(item: slice, x: TracedArray, axis: int) -> tuple:
    """The canonical range of ``item`` along symbolic axis ``axis`` of ``x``, with its guards."""
    size, why = x.shape[axis], f"slice {item.start}:{item.stop} of axis {axis} of {x.node.type}{at(user_location())}"
    if item.step not in (None, 1):
        raise SymbolicShapeError(f"{why}: a step other than 1 along a symbolic axis is not supported yet")
    start = 0 if item.start is None else _bound(item.start, size, why)
    stop = size if item.stop is None else _bound(item.stop, size, why)
    require(stop - start, 0, why)
    return (start, stop, 1)


def _int_index(index, x: TracedArray, axis: int) -> tuple[int, int, int]:
    index, size = int(index), x.shape[axis]
    if isinstance(size, Sym):  # x[-1] along a symbolic axis: guard that the index exists
        why = f"index {index} of axis {axis} of {x.node.type}{at(user_location())}"
        start = _bound(index, size, why) if index < 0 else index
        require(size, start + 1 if index >= 0 else 1, why)
        return (start, start + 1, 1)
    if not -size <= index < size:
        raise ShapeError(f"index {index} is out of bounds for axis {axis} with size {size}; operand "
                         f"{x.node.type}{at(user_location())}")
    index %= size
    return (index, index + 1, 1)
