"""Indexing of traced arrays: basic (``x[1:, ::2]``, ``x[0]``, ``x[..., None]``) and advanced
(``wte[ids]``, ``h[:, [-1], :]``, ``P[np.arange(N), y]``, ``x[mask]`` with a constant mask).

A NumPy basic index becomes at most three graph ops:

    x[2, 1:5:2, None]   ->   slice (one range per axis)  ->  squeeze (axes indexed by an int)
                        ->   expand_dims (one new axis per None)

An advanced index (integer arrays, traced or constant, and constant boolean masks) becomes one
``gather`` after the new axes and the slices, with NumPy's rule for where the picked axes go:

    x[:, [1, 2], idx]   ->   gather(x, [1, 2], idx, axis=1)         (adjacent: picked in place)
    x[idx, :, 0]        ->   transpose (picked axes first)  ->  gather(.., idx, 0, axis=0)

An int next to an index array is an index array of one element (NumPy's rule too). A traced
boolean mask has a data-dependent shape and is refused (write ``np.where(mask, x, 0)``).
Writes (``x[key] = v``) index the same way: see ``updates.positions``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError, UnsupportedError, at
from ..ir.ops import whole_symbolic_axis
from ..ir.symbolic import Sym, SymbolicShapeError, require
from .tracer import TracedArray, user_location


def getitem(x: TracedArray, key) -> TracedArray:
    """``x[key]`` as NumPy defines it: slice/squeeze/expand_dims for a basic index, a gather
    for an advanced one (see the module docstring)."""
    items = key if isinstance(key, tuple) else (key,)
    if any(_is_advanced(item) for item in items):
        return _advanced_getitem(x, items)
    return _basic_getitem(x, items)


def is_view_key(key) -> bool:
    """Whether ``x[key]`` is a view of ``x`` in NumPy (a basic index) rather than a copy."""
    return not any(_is_advanced(item) for item in (key if isinstance(key, tuple) else (key,)))


def _basic_getitem(x: TracedArray, items: tuple) -> TracedArray:
    items = _expand_ellipsis(items, x)
    ranges, int_axes, new_axes = [], [], []
    axis, out_dim = 0, 0
    for item in items:
        if item is None:
            new_axes.append(out_dim)
            out_dim += 1
        elif isinstance(item, slice):
            if item.step == 0:
                raise ShapeError(f"slice step cannot be zero{at(user_location())}")
            if any(isinstance(v, Sym) for v in (x.shape[axis], item.start, item.stop)):
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
    normalized = [whole_symbolic_axis(d, *r) if isinstance(d, Sym) else
                  r if isinstance(r[0], Sym) or isinstance(r[1], Sym) else slice(*r).indices(d)
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


def _bound(value, size, why: str):
    """``value`` (a start or stop) along an axis of ``size``, one of them symbolic, guarded to
    lie in it: ``-1`` -> ``size - 1`` (guard ``size >= 1``), ``2`` -> ``2`` (guard ``size >= 2``),
    ``T`` on an axis of 1024 -> ``T`` (guard ``1024 - T >= 0``: NumPy would clamp beyond)."""
    if isinstance(value, Sym):
        require(size - value, 0, why)
        return value
    value = int(value)
    if not isinstance(size, Sym):  # a static axis: NumPy's clamping
        return min(max(size + value if value < 0 else value, 0), size)
    require(size, abs(value), why)
    return size + value if value < 0 else value


def _symbolic_slice(item: slice, x: TracedArray, axis: int) -> tuple:
    """The canonical range of ``item`` along axis ``axis`` of ``x`` where the axis or a bound is
    symbolic (``x[:, :T]``), with its guards."""
    size, why = x.shape[axis], f"slice {item.start}:{item.stop} of axis {axis} of {x.node.type}{at(user_location())}"
    if item.step not in (None, 1):
        raise SymbolicShapeError(f"{why}: a step other than 1 with a symbolic size is not supported yet")
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


# ----------------------------------------------------------------------------------------------
# Advanced indexing: integer arrays and constant masks -> gather
# ----------------------------------------------------------------------------------------------


def _is_advanced(item) -> bool:
    return isinstance(item, (TracedArray, np.ndarray, list, range)) and not isinstance(item, np.generic)


def _advanced_getitem(x: TracedArray, items: tuple) -> TracedArray:
    """``x[items]`` with at least one index array: new axes, slices, then one gather."""
    entries = _per_axis(x, [_as_index(item, x) for item in items])
    new_axes = [axis for axis, entry in enumerate(entries) if entry is None]
    if new_axes:
        x = x._apply("expand_dims", x, axes=tuple(new_axes))
        entries = [slice(None) if entry is None else entry for entry in entries]
    sliced = [(entry.start, entry.stop, entry.step if entry.step is not None else 1)
              if isinstance(entry, slice) else (None, None, 1) for entry in entries]
    if any(r != (None, None, 1) for r in sliced):
        starts, stops, steps = zip(*sliced)
        x = x._apply("slice", x, starts=starts, stops=stops, steps=steps)
    picked = [axis for axis, entry in enumerate(entries) if not isinstance(entry, slice)]
    indices = [entries[axis] for axis in picked]
    refuse_unchecked_indices(x, indices)
    if picked == list(range(picked[0], picked[-1] + 1)):  # adjacent: the picked axes stay in place
        return x._apply("gather", x, *indices, axis=picked[0])
    rest = [axis for axis in range(x.ndim) if axis not in picked]  # else they go first (NumPy)
    moved = x._apply("transpose", x, perm=tuple(picked + rest))
    return x._apply("gather", moved, *indices, axis=0)


def refuse_unchecked_indices(x: TracedArray, indices: list) -> None:
    """Index arrays that broadcast to an empty shape pick nothing, and a gather checks nothing;
    NumPy still checks each non-empty one, so a traced non-empty one is refused (constant ones
    were checked already)."""
    shapes = [tuple(np.shape(i)) if not isinstance(i, TracedArray) else i.shape for i in indices]
    if len(indices) == 1:
        return  # one index array: when it is empty, there is no value to check
    if any(isinstance(d, Sym) for shape in shapes for d in shape):
        raise SymbolicShapeError(f"several index arrays with a symbolic size {shapes}: whether they pick "
                                 "nothing (and NumPy still checks them) depends on the size")
    traced = [i for i in indices if isinstance(i, TracedArray) and i.size]
    try:
        empty = not math.prod(np.broadcast_shapes(*shapes))
    except ValueError:
        return  # they do not broadcast: the gather says so
    if traced and empty:
        raise ShapeError(
            f"index arrays of shapes {', '.join(map(str, shapes))} pick nothing, but NumPy still checks the "
            f"values of {traced[0]!r}, which the compiled code cannot; operand {x.node.type}"
            f"{at(user_location())}; leave the indexing out when nothing is picked")


def _as_index(item, x: TracedArray):
    """An index item as the advanced path reads it: a traced int array, a NumPy int array, a
    ``_Mask`` for a constant boolean mask, or a basic item unchanged (refusing anything else)."""
    if isinstance(item, TracedArray):
        if item.dtype == np.bool_:
            raise UnsupportedError(
                f"x[mask] with a traced boolean mask ({item.node.type}) has a data-dependent shape; "
                f"operand {x.node.type}{at(user_location())}; write np.where(mask, x, 0) (or another "
                "fill value), or (x * mask).sum() for a masked sum")
        if item.dtype.kind not in "iu":
            raise UnsupportedError(f"index {item!r} is a {item.dtype} array; arrays used as indices must be of "
                                   f"integer (or boolean) type; operand {x.node.type}{at(user_location())}; "
                                   "write idx.astype(np.int64)")
        return item
    if isinstance(item, (np.ndarray, list, range)):
        array = np.asarray(item)
        if array.size == 0 and array.dtype.kind not in "iub":
            array = array.astype(np.intp)  # x[[]] picks nothing (NumPy reads [] as integers)
        if array.dtype == np.bool_:
            return _Mask(array) if array.ndim else _refuse(item, x)
        if array.dtype.kind not in "iu":
            _refuse(item, x)
        return array
    if isinstance(item, (bool, np.bool_)) or not (
            item is None or item is Ellipsis or isinstance(item, (slice, int, np.integer))):
        _refuse(item, x)
    return item


def _refuse(item, x: TracedArray):
    raise UnsupportedError(
        f"index {item!r:.60} is not an integer array, a constant boolean mask, an int, a slice, None or "
        f"...; operand {x.node.type}{at(user_location())}; arrays used as indices must be of integer "
        "(or boolean) type")


def _per_axis(x: TracedArray, items: list) -> list:
    """One entry per axis of ``x`` after its new axes: None (a new axis), a slice, or an index
    array (a mask expanded to its ``nonzero`` arrays; an int as an index array of one element)."""
    consumed = sum(i.mask.ndim if isinstance(i, _Mask) else 0 if i is None or i is Ellipsis else 1 for i in items)
    if sum(i is Ellipsis for i in items) > 1:
        raise ShapeError(f"an index can only have a single ellipsis ('...'); operand {x.node.type}{at(user_location())}")
    if consumed > x.ndim:
        raise ShapeError(f"too many indices for array: array is {x.ndim}-dimensional, but {consumed} "
                         f"were indexed; operand {x.node.type}{at(user_location())}")
    if not any(i is Ellipsis for i in items):
        items = items + [Ellipsis]
    entries, axis = [], 0
    for item in items:
        if isinstance(item, _Mask):  # a constant mask over mask.ndim axes: its nonzero arrays
            entries += item.indices(x, axis)
            axis += item.mask.ndim
        elif item is Ellipsis:
            entries += [slice(None)] * (x.ndim - consumed)
            axis += x.ndim - consumed
            consumed = x.ndim  # a second, implicit one adds nothing
        elif item is None or isinstance(item, slice):
            entries.append(item)
            axis += item is not None
        elif isinstance(item, (int, np.integer)):
            entries.append(np.asarray(_int_index(item, x, axis)[0], dtype=np.int64))
            axis += 1
        else:
            _check_constant_bounds(x, axis, item)
            entries.append(item if isinstance(item, TracedArray) else item.astype(np.int64))
            axis += 1
    return entries


class _Mask:
    """A constant boolean mask: a static gather of the elements where it is true."""

    def __init__(self, mask: np.ndarray):
        self.mask = mask

    def indices(self, x: TracedArray, axis: int) -> list[np.ndarray]:
        """``np.nonzero(mask)``, once the mask is checked against axes ``axis``... of ``x``."""
        for n, size in enumerate(self.mask.shape):
            if axis + n >= x.ndim or x.shape[axis + n] != size:
                have = x.shape[axis + n] if axis + n < x.ndim else "missing"
                raise ShapeError(f"boolean index did not match indexed array along axis {axis + n}; size of "
                                 f"axis is {have} but size of corresponding boolean axis is {size}; operand "
                                 f"{x.node.type}{at(user_location())}")
        return [n.astype(np.int64) for n in np.nonzero(self.mask)]


def _check_constant_bounds(x: TracedArray, axis: int, index) -> None:
    """A constant index array out of range is an error now, at the user's line (NumPy's IndexError)."""
    if isinstance(index, TracedArray) or index.size == 0:
        return
    size = x.shape[axis]
    low, high = index.min(), index.max()
    if high >= size or (index.dtype.kind == "i" and low < -size):
        bad = high if high >= size else low
        raise ShapeError(f"index {bad} is out of bounds for axis {axis} with size {size}; operand "
                         f"{x.node.type}{at(user_location())}")
