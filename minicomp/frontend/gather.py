"""``np.take`` and ``np.take_along_axis`` while tracing: each one ``gather`` op.

    np.take(wte, ids, axis=0)               ->  gather(wte, ids, axis=0)
    np.take(x, i, axis=1, mode="wrap")      ->  gather(x, i, axis=1, mode="wrap")
    np.take_along_axis(x, i, axis=1)        ->  gather(x, arange(d0)[:, None], i, axis=0)   (x 2-d)

The indices may be traced or constant (lists, ranges, arrays, ints). (NumPy dispatches
``np.take`` on its array alone: ``np.take(W, ids)`` with ``W`` a closed-over NumPy array never
reaches the tracer; ``W`` must be an argument, as for ``W[ids]``.)
"""

from __future__ import annotations

import numpy as np

from ..errors import DTypeError, ShapeError, UnsupportedError, at
from ..ir.ops import GATHER_MODES
from .functions import _traced, _unsupported_kwargs, implements
from .indexing import refuse_unchecked_indices
from .tracer import TracedArray, checked_axis, find_tracer, user_location


def _index_operand(name: str, indices, x: TracedArray, axis: int | None, mode: str):
    """Traced indices as they are; constant ones as an int64 array, checked now when mode is raise."""
    if isinstance(indices, TracedArray):
        if indices.dtype.kind not in "iu":
            raise DTypeError(f"{name}: indices must be integers, got {indices.node.type}{at(user_location())}; "
                             "write idx.astype(np.int64)")
        return indices
    array = np.asarray(indices)
    if array.size == 0 and array.dtype.kind == "f":
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise DTypeError(f"{name}: indices must be integers, got {array.dtype}{at(user_location())}")
    if mode == "raise" and array.size and axis is not None:
        size = x.shape[axis]
        bad = array[(array >= size) | (array < -size)]
        if bad.size:
            raise ShapeError(f"{name}: index {bad.reshape(-1)[0]} is out of bounds for axis {axis} with size "
                             f"{size}; operand {x.node.type}{at(user_location())}")
    return array.astype(np.int64)


@implements(np.take)
def _take(a, indices, axis=None, out=None, mode="raise"):
    """``np.take``: one index array along ``axis`` (the flattened array when None)."""
    _unsupported_kwargs("np.take", {"out": out})
    if mode not in GATHER_MODES:
        raise UnsupportedError(f"np.take: mode {mode!r:.40} is not one of {', '.join(GATHER_MODES)}{at(user_location())}")
    x = _traced(a, indices)
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = checked_axis("np.take", axis, x)
    index = _index_operand("np.take", indices, x, axis, mode)
    return x._apply("gather", x, index, axis=axis, mode=mode)


@implements(np.take_along_axis)
def _take_along_axis(arr, indices, axis=-1):
    """``np.take_along_axis``: ``indices`` (of ``arr``'s rank) picks along ``axis``, every other
    axis indexed by its own position (a constant arange), all broadcast together."""
    x = _traced(arr, indices)
    if axis is None:
        x, axis = x.reshape(-1), 0
    ndim = np.ndim(indices) if not isinstance(indices, TracedArray) else indices.ndim
    if ndim != x.ndim:
        raise ShapeError(f"np.take_along_axis: `indices` and `arr` must have the same number of dimensions, "
                         f"got {ndim} and {x.ndim}; operand {x.node.type}{at(user_location())}")
    if x.ndim == 0:
        raise ShapeError(f"np.take_along_axis: arr is 0-d; operand {x.node.type}{at(user_location())}")
    axis = checked_axis("np.take_along_axis", axis, x)
    index = _index_operand("np.take_along_axis", indices, x, axis, "raise")
    grids = [np.arange(d, dtype=np.int64).reshape([-1 if a == k else 1 for a in range(x.ndim)])
             for k, d in enumerate(x.shape)]
    grids[axis] = index
    refuse_unchecked_indices(x, grids)
    return find_tracer((x,)).apply("gather", [x, *grids], axis=0)
