"""The NumPy functions real programs use, built from the graph ops minicomp already has.

Each function here traces exactly what NumPy computes (values, dtype, shape), with NumPy's
argument forms, and lowers to ops that fuse well:

=====================  =============================================================
NumPy                  graph ops
=====================  =============================================================
hstack, vstack, ...    reshape (NumPy's atleast_Nd) + concatenate
pad                    concatenate of constant slabs and slices of the input
repeat, tile           expand_dims + broadcast_to + reshape (a scalar count), or
                       concatenate of slices (counts per element)
tril, triu             where with an index mask (j - i <= k) from two small iotas
argmax, argmin         max/min, ==, where with an iota, min: the first hit wins
any, all               != 0, then max/min over the axes (bool)
cumsum, cumprod        the cumsum/cumprod ops (a scan: serial along the axis)
sliding_window_view    the as_strided op (an affine index map); minicomp.nn.as_strided
=====================  =============================================================

Everything a trace cannot know (a count that is an array, a mode NumPy has but minicomp
lacks) is a ``MinicompError`` naming the function, the user's line and what to write instead.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError, UnsupportedError, at
from ..ir.ops import normalize_axes
from .functions import _as_traced, _traced, _unsupported_kwargs, implements
from .tracer import TracedArray, checked_axis, find_tracer, user_location


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _static_ints(name: str, what: str, value, x: TracedArray) -> np.ndarray:
    """``value`` as an int64 array known at trace time; refused (naming ``what``) otherwise."""
    if isinstance(value, TracedArray) or find_tracer([value]) is not None:
        raise UnsupportedError(f"{name}: {what} is a traced array, but it must be known at trace time"
                               f"{at(user_location())}; pass a Python int or a list of ints")
    array = np.asarray(value)
    if array.size and (array.dtype.kind not in "iu"):
        raise ShapeError(f"{name}: {what} {value!r:.60} must be integers; operand {x.node.type}"
                         f"{at(user_location())}")
    return array.astype(np.int64)


def _constant(x: TracedArray, value, shape, name: str = "np.pad") -> TracedArray:
    """A ``shape`` array filled with ``value`` in ``x``'s dtype (a broadcast scalar constant).

    ``value`` is assigned as NumPy assigns it (``2.7`` into ints is 2; NaN into ints is refused).
    """
    scalar = np.empty((), x.dtype)
    try:
        scalar[...] = value
    except (ValueError, OverflowError, TypeError) as exc:
        raise ShapeError(f"{name}: the value {value!r:.40} does not fit the {x.dtype} array ({exc}); operand "
                         f"{x.node.type}{at(user_location())}") from None
    return x.tracer.apply("broadcast_to", [scalar], shape=tuple(shape))


def _axis_slice(x: TracedArray, axis: int, start: int, stop: int, step: int = 1) -> TracedArray:
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, stop, step)
    return x[tuple(index)]


def _concat(pieces: list[TracedArray], axis: int) -> TracedArray:
    pieces = [p for p in pieces if p.shape[axis] > 0] or pieces[:1]
    if len(pieces) == 1:
        return pieces[0]
    return pieces[0].tracer.apply("concatenate", pieces, axis=axis)


def take_static(x: TracedArray, axis: int, indices) -> TracedArray:
    """``np.take(x, indices, axis)`` for indices known at trace time, as slices and broadcasts.

    Requires: ``0 <= indices < x.shape[axis]``. Runs of consecutive indices (step +1 or -1)
    become one slice; a run of one index repeated becomes a broadcast of that row.

    >>> take_static(x, 0, [2, 3, 4, 1, 1, 1])   # x[2:5], then x[1:2] broadcast to 3 rows
    """
    indices = [int(i) for i in indices]
    pieces, start = [], 0
    while start < len(indices):
        stop = _run_end(indices, start)
        first, last = indices[start], indices[stop - 1]
        if stop - start > 1 and first == last:  # the same row, repeated
            row = _axis_slice(x, axis, first, first + 1)
            shape = list(row.shape)
            shape[axis] = stop - start
            pieces.append(row._view("broadcast_to", shape=tuple(shape)))
        elif last >= first:
            pieces.append(_axis_slice(x, axis, first, last + 1))
        else:
            pieces.append(_axis_slice(x, axis, first, last - 1 if last > 0 else None, -1))
        start = stop
    if not pieces:
        return _axis_slice(x, axis, 0, 0)
    return _concat(pieces, axis)


def _run_end(indices: list[int], start: int) -> int:
    """End of the longest run from ``start`` with a constant step of -1, 0 or +1."""
    if start + 1 >= len(indices):
        return start + 1
    step = indices[start + 1] - indices[start]
    if step not in (-1, 0, 1):
        return start + 1
    end = start + 1
    while end < len(indices) and indices[end] - indices[end - 1] == step:
        end += 1
    return end


def _reduced_axes(name: str, axis, x: TracedArray) -> tuple[int, ...]:
    try:
        return normalize_axes(axis, x.ndim)
    except ShapeError as exc:
        raise ShapeError(f"{name}: {exc}; operand {x.node.type}{at(user_location())}") from None


# ----------------------------------------------------------------------------------------------
# Stacking
# ----------------------------------------------------------------------------------------------


def _atleast(x: TracedArray, ndim: int) -> TracedArray:
    """NumPy's ``atleast_1d/2d/3d``: 0-d -> (1,..), 1-D (n,) -> (1,n) or (1,n,1), 2-D -> (m,n,1)."""
    if x.ndim >= ndim:
        return x
    if x.ndim == 0:
        return x.reshape((1,) * ndim)
    if x.ndim == 1:
        return x.reshape((1, x.shape[0]) if ndim == 2 else (1, x.shape[0], 1))
    return x.reshape(x.shape + (1,))


def _arrays(name: str, tup) -> list[TracedArray]:
    if isinstance(tup, TracedArray) or not isinstance(tup, (list, tuple)):
        raise UnsupportedError(f"{name} takes a list or tuple of arrays{at(user_location())}; "
                               f"write {name}([a, b, ...])")
    if not tup:
        raise ShapeError(f"{name}: need at least one array to concatenate{at(user_location())}")
    tracer = find_tracer(tup)
    return [_as_traced(tracer, a) for a in tup]


def _joined(name: str, tup, ndim: int, axis: int, dtype, casting) -> TracedArray:
    arrays = [_atleast(a, ndim) for a in _arrays(name, tup)]
    if dtype is not None:
        arrays = [a.astype(dtype) for a in arrays]
    return arrays[0].tracer.apply("concatenate", arrays, axis=axis)


@implements(np.atleast_1d)
def atleast_1d(*arys):
    """``np.atleast_1d``: a 0-d array becomes shape (1,); others are unchanged."""
    result = [_atleast(_traced(a, *arys), 1) for a in arys]
    return result[0] if len(result) == 1 else tuple(result)


@implements(np.atleast_2d)
def atleast_2d(*arys):
    """``np.atleast_2d``: () -> (1, 1), (n,) -> (1, n); 2-D and more unchanged."""
    result = [_atleast(_traced(a, *arys), 2) for a in arys]
    return result[0] if len(result) == 1 else tuple(result)


@implements(np.atleast_3d)
def atleast_3d(*arys):
    """``np.atleast_3d``: () -> (1,1,1), (n,) -> (1,n,1), (m,n) -> (m,n,1)."""
    result = [_atleast(_traced(a, *arys), 3) for a in arys]
    return result[0] if len(result) == 1 else tuple(result)


@implements(np.hstack)
def hstack(tup, *, dtype=None, casting="same_kind"):
    """``np.hstack``: concatenate along axis 1, or axis 0 when all arrays are 1-D (or 0-d).

    ``hstack([f32[2,3], f32[2,1]])`` -> ``concatenate(axis=1) : f32[2,4]``
    """
    arrays = [_atleast(a, 1) for a in _arrays("np.hstack", tup)]
    axis = 0 if all(a.ndim == 1 for a in arrays) else 1
    return _joined("np.hstack", arrays, 1, axis, dtype, casting)


@implements(np.vstack)
def vstack(tup, *, dtype=None, casting="same_kind"):
    """``np.vstack``: 1-D arrays become rows (1, n), then concatenate along axis 0."""
    return _joined("np.vstack", tup, 2, 0, dtype, casting)


@implements(np.dstack)
def dstack(tup):
    """``np.dstack``: arrays made at least 3-D ((n,) -> (1,n,1)), concatenated along axis 2."""
    return _joined("np.dstack", tup, 3, 2, None, None)


@implements(np.column_stack)
def column_stack(tup):
    """``np.column_stack``: 0-d and 1-D arrays become columns (n, 1), then concatenate on axis 1."""
    arrays = _arrays("np.column_stack", tup)
    columns = [a.reshape(-1, 1) if a.ndim < 2 else a for a in arrays]
    return columns[0].tracer.apply("concatenate", columns, axis=1)


# ----------------------------------------------------------------------------------------------
# np.pad
# ----------------------------------------------------------------------------------------------

_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _pad_pairs(name: str, what: str, value, x: TracedArray, integral: bool) -> np.ndarray:
    """NumPy's pad argument forms (``n``, ``(n,)``, ``(before, after)``, one pair per axis) as (ndim, 2)."""
    if not integral and find_tracer([value]) is not None:
        raise UnsupportedError(f"{name}: {what} is a traced array, but it must be known at trace time"
                               f"{at(user_location())}; pass numbers, or pad with 0 and add a traced border")
    array = _static_ints(name, what, value, x) if integral else np.asarray(value)
    try:
        return np.broadcast_to(array, (x.ndim, 2))
    except ValueError:
        raise ShapeError(f"{name}: {what} {value!r:.60} does not fit an array of dimension {x.ndim} "
                         f"(NumPy takes n, (n,), (before, after) or one pair per axis); operand "
                         f"{x.node.type}{at(user_location())}") from None


@implements(np.pad)
def pad(array, pad_width, mode="constant", **kwargs):
    """``np.pad`` in modes constant (``constant_values``), edge, reflect, symmetric and wrap.

    Requires: ``pad_width`` known at trace time. Pads one axis after the other, as NumPy does
    (so in constant mode a corner takes the later axis' value); each axis is a concatenate of
    the padding (a constant slab, or slices of the input) and the array.

    ``np.pad(f32[2,3], 1)`` -> ``concatenate(axis=0)`` of zeros and ``concatenate(axis=1)`` ...
    """
    x = _traced(array)
    if not isinstance(mode, str) or mode not in _PAD_MODES:
        raise UnsupportedError(f"np.pad: mode {mode!r:.40} is not supported{at(user_location())}; "
                               f"supported modes: {', '.join(_PAD_MODES)}")
    allowed = {"constant": ("constant_values",), "reflect": ("reflect_type",),
               "symmetric": ("reflect_type",)}.get(mode, ())
    _unsupported_kwargs(f"np.pad(mode={mode!r})", kwargs, allowed)
    if kwargs.get("reflect_type", "even") != "even":
        raise UnsupportedError(f"np.pad: reflect_type={kwargs['reflect_type']!r:.20} is not supported"
                               f"{at(user_location())}; only 'even' (the default)")
    widths = _pad_pairs("np.pad", "pad_width", pad_width, x, integral=True)
    if (widths < 0).any():
        raise ShapeError(f"np.pad: index can't contain negative values ({pad_width!r:.60}); operand "
                         f"{x.node.type}{at(user_location())}")
    values = _pad_pairs("np.pad", "constant_values", kwargs.get("constant_values", 0), x, integral=False)
    for axis in range(x.ndim):
        before, after = int(widths[axis][0]), int(widths[axis][1])
        if before == 0 and after == 0:
            continue
        if mode == "constant":
            x = _pad_constant(x, axis, before, after, values[axis])
        else:
            x = _pad_from_input(x, axis, before, after, mode)
    return x.copy()


def _pad_constant(x: TracedArray, axis: int, before: int, after: int, values) -> TracedArray:
    pieces = []
    for width, value, place in ((before, values[0], 0), (after, values[1], 1)):
        shape = list(x.shape)
        shape[axis] = width
        pieces.insert(len(pieces) if place else 0, _constant(x, value, shape))
    return _concat([pieces[0], x, pieces[1]], axis)


def _pad_from_input(x: TracedArray, axis: int, before: int, after: int, mode: str) -> TracedArray:
    n = x.shape[axis]
    if n == 0:
        raise ShapeError(f"np.pad: can't extend empty axis {axis} using modes other than 'constant' "
                         f"or 'empty'; operand {x.node.type}{at(user_location())}")
    positions = range(-before, n + after)
    return take_static(x, axis, [_pad_source(i, n, mode) for i in positions])


def _pad_source(i: int, n: int, mode: str) -> int:
    """The input index NumPy's pad copies to padded position ``i`` (input starts at 0)."""
    if mode == "edge" or (mode == "reflect" and n == 1):
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    if mode == "reflect":  # ... 2 1 | 0 1 2 3 | 2 1 0 1 ...: period 2n - 2
        j = i % (2 * n - 2)
        return j if j < n else 2 * n - 2 - j
    j = i % (2 * n)  # symmetric: ... 1 0 | 0 1 2 3 | 3 2 ...: period 2n
    return j if j < n else 2 * n - 1 - j


# ----------------------------------------------------------------------------------------------
# repeat, tile
# ----------------------------------------------------------------------------------------------


@implements(np.repeat)
def repeat(a, repeats, axis=None):
    """``np.repeat``: each element ``repeats`` times along ``axis`` (the flattened array if None).

    Requires: ``repeats`` known at trace time (an int, or one int per element). A single count
    is expand_dims + broadcast_to + reshape; counts per element are slices and broadcasts.

    ``np.repeat(f32[2,3], 2, axis=0)`` -> ``f32[4,3]`` (rows 0 0 1 1)
    """
    x = _traced(a)
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = checked_axis("np.repeat", axis, x)
    counts = _static_ints("np.repeat", "repeats", repeats, x)
    if (counts < 0).any():
        raise ShapeError(f"np.repeat: negative repeats {repeats!r:.60}; operand {x.node.type}"
                         f"{at(user_location())}")
    n = x.shape[axis]
    if counts.ndim == 0 or counts.size == 1:
        return _repeat_each(x, axis, int(counts.reshape(-1)[0]))
    if counts.shape != (n,):
        raise ShapeError(f"np.repeat: {counts.size} repeats for an axis of length {n}; operand "
                         f"{x.node.type}{at(user_location())}")
    return take_static(x, axis, np.repeat(np.arange(n), counts))


def _repeat_each(x: TracedArray, axis: int, count: int) -> TracedArray:
    spread = x._view("expand_dims", axes=axis + 1)
    shape = list(spread.shape)
    shape[axis + 1] = count
    result_shape = list(x.shape)
    result_shape[axis] *= count
    return spread._view("broadcast_to", shape=tuple(shape)).reshape(tuple(result_shape))


@implements(np.tile)
def tile(A, reps):
    """``np.tile``: the whole array repeated ``reps`` times per axis (known at trace time).

    One reshape to (1, d0, 1, d1, ...), a broadcast to (r0, d0, r1, d1, ...), one reshape.

    ``np.tile(f32[2], (3, 2))`` -> ``f32[3,4]``
    """
    x = _traced(A)
    reps = _static_ints("np.tile", "reps", reps, x).reshape(-1)
    if (reps < 0).any():
        raise ShapeError(f"np.tile: negative reps {tuple(reps.tolist())}; operand {x.node.type}{at(user_location())}")
    ndim = max(x.ndim, len(reps))
    dims = (1,) * (ndim - x.ndim) + x.shape
    reps = (1,) * (ndim - len(reps)) + tuple(int(r) for r in reps)
    interleaved = tuple(v for d in dims for v in (1, d))
    spread = tuple(v for r, d in zip(reps, dims) for v in (r, d))
    result = x.reshape(interleaved)._view("broadcast_to", shape=spread)
    return result.reshape(tuple(r * d for r, d in zip(reps, dims)))


# ----------------------------------------------------------------------------------------------
# tril, triu
# ----------------------------------------------------------------------------------------------


def _triangle(name: str, m, k, lower: bool) -> TracedArray:
    x = _traced(m)
    if x.ndim == 0:
        raise ShapeError(f"{name} needs an array of at least 1 dimension; operand {x.node.type}"
                         f"{at(user_location())}")
    k = int(_static_ints(name, "k", k, x))
    rows, cols = (x.shape[-2], x.shape[-1]) if x.ndim >= 2 else (x.shape[0], x.shape[0])
    i = np.arange(rows, dtype=np.int64).reshape(rows, 1)
    j = np.arange(cols, dtype=np.int64).reshape(1, cols)
    offset = x.tracer.apply("sub", [j, i])  # j - i on the diagonals: 0, 1 above, -1 below
    mask = x.tracer.apply("le" if lower else "ge", [offset, np.int64(k)])
    return x.tracer.apply("where", [mask, x, np.zeros((), x.dtype)])


@implements(np.tril)
def tril(m, k=0):
    """``np.tril``: elements on and below the k-th diagonal of the last two axes; zeros above.

    ``np.tril(f32[B,n,n])`` -> ``where(j - i <= 0, x, 0)``; a 1-D ``m`` gives a square, as NumPy.
    """
    return _triangle("np.tril", m, k, lower=True)


@implements(np.triu)
def triu(m, k=0):
    """``np.triu``: elements on and above the k-th diagonal of the last two axes; zeros below."""
    return _triangle("np.triu", m, k, lower=False)


# ----------------------------------------------------------------------------------------------
# argmax, argmin, any, all
# ----------------------------------------------------------------------------------------------


def arg_extreme(name: str, a, axis, keepdims: bool, largest: bool) -> TracedArray:
    """``np.argmax``/``np.argmin`` as reductions: the first index holding the extreme (or a NaN).

    ``m = max(x)`` (NaN if any is NaN); ``hit = (x == m) | isnan(x)``; the result is the
    smallest ``where(hit, index, n)``. So ties give the first occurrence and the first NaN
    wins, as in NumPy. Result dtype int64 (``np.intp``).
    """
    x = _traced(a)
    if axis is None:
        flat = x.reshape(-1)
        result = arg_extreme(name, flat, 0, False, largest)
        return result.reshape((1,) * x.ndim) if keepdims else result
    axis = checked_axis(name, axis, x)
    n = x.shape[axis]
    if n == 0:
        raise ShapeError(f"{name}: attempt to get {name[3:]} of an empty sequence (axis {axis}); operand "
                         f"{x.node.type}{at(user_location())}")
    extreme = (x.max if largest else x.min)(axis=axis, keepdims=True)
    hit = x == extreme
    if x.dtype.kind == "f":
        hit = hit | (x != x)
    index = np.arange(n, dtype=np.int64).reshape((n,) + (1,) * (x.ndim - 1 - axis))
    candidates = x.tracer.apply("where", [hit, index, np.int64(n)])
    return candidates.min(axis=axis, keepdims=bool(keepdims))


@implements(np.argmax)
def argmax(a, axis=None, out=None, *, keepdims=False):
    """``np.argmax``: index of the first maximum along ``axis`` (of the flattened array if None)."""
    _unsupported_kwargs("np.argmax", {"out": out})
    return arg_extreme("np.argmax", a, axis, keepdims, largest=True)


@implements(np.argmin)
def argmin(a, axis=None, out=None, *, keepdims=False):
    """``np.argmin``: index of the first minimum along ``axis`` (of the flattened array if None)."""
    _unsupported_kwargs("np.argmin", {"out": out})
    return arg_extreme("np.argmin", a, axis, keepdims, largest=False)


def truth_reduce(name: str, a, axis, keepdims: bool, every: bool) -> TracedArray:
    """``np.any``/``np.all``: ``x != 0`` reduced by max (any) or min (all) over ``axis``.

    An empty reduction is NumPy's identity: False for any, True for all.
    """
    x = _traced(a)
    axes = _reduced_axes(name, axis, x)
    truth = x if x.dtype == np.bool_ else x != 0
    if any(x.shape[i] == 0 for i in axes):
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keepdims else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return _constant(truth, every, shape, name)
    return (truth.min if every else truth.max)(axis=axes, keepdims=bool(keepdims))


@implements(np.any)
def any_(a, axis=None, out=None, keepdims=False, *, where=None):
    """``np.any``: is any element along ``axis`` nonzero (NaN counts as true)."""
    _unsupported_kwargs("np.any", {"out": out, "where": where})
    return truth_reduce("np.any", a, axis, keepdims, every=False)


@implements(np.all)
def all_(a, axis=None, out=None, keepdims=False, *, where=None):
    """``np.all``: is every element along ``axis`` nonzero."""
    _unsupported_kwargs("np.all", {"out": out, "where": where})
    return truth_reduce("np.all", a, axis, keepdims, every=True)


# ----------------------------------------------------------------------------------------------
# cumsum, cumprod
# ----------------------------------------------------------------------------------------------


def scan(name: str, a, axis, dtype, op: str) -> TracedArray:
    """``np.cumsum``/``np.cumprod`` as the ``cumsum``/``cumprod`` op (a scan along one axis).

    ``axis=None`` scans the flattened array. Dtype: NumPy's (bools and ints accumulate in
    int64), or ``dtype``: the input is cast to it, scanned, and the result cast back (integer
    sums and products wrap the same way in int64 and then int32; for bools, nonzero is NumPy's
    logical or/and).

    ``np.cumsum(f32[2,5], axis=-1)`` -> ``cumsum(x) {axis=1} : f32[2,5]``
    """
    x = _traced(a)
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = checked_axis(name, axis, x)
    if dtype is not None:
        x = x.astype(dtype)
    result = x._apply(op, x, axis=axis)
    return result.astype(x.dtype) if dtype is not None else result


@implements(np.cumsum)
def cumsum(a, axis=None, dtype=None, out=None):
    """``np.cumsum``: running sums along ``axis`` (the flattened array if None); see ``scan``."""
    _unsupported_kwargs("np.cumsum", {"out": out})
    return scan("np.cumsum", a, axis, dtype, "cumsum")


@implements(np.cumprod)
def cumprod(a, axis=None, dtype=None, out=None):
    """``np.cumprod``: running products along ``axis`` (the flattened array if None); see ``scan``."""
    _unsupported_kwargs("np.cumprod", {"out": out})
    return scan("np.cumprod", a, axis, dtype, "cumprod")


# ----------------------------------------------------------------------------------------------
# Strided views: sliding_window_view, as_strided
# ----------------------------------------------------------------------------------------------


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Element strides of a C-order array: ``(3, 4) -> (4, 1)``."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


@implements(np.lib.stride_tricks.sliding_window_view)
def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    """``sliding_window_view``: every window of ``window_shape`` along ``axis``, as one ``as_strided``.

    Requires: ``window_shape`` and ``axis`` known at trace time, no window larger than its axis.
    The windows' axes come last, in the order of ``axis`` (which may repeat, as in NumPy).

    ``sliding_window_view(f32[5], 3)`` -> ``as_strided(shape=(3, 3), strides=(1, 1)) : f32[3,3]``
    """
    name = "sliding_window_view"
    a = _traced(x)
    if writeable:
        raise UnsupportedError(f"{name}(writeable=True): compiled functions do not write through views"
                               f"{at(user_location())}; drop writeable=True")
    window = tuple(int(w) for w in _static_ints(name, "window_shape", window_shape, a).reshape(-1))
    if axis is None:
        axes = tuple(range(a.ndim))
        if len(window) != a.ndim:
            raise ShapeError(f"{name}: since axis is None, window_shape {window} must have one entry per "
                             f"axis of the input; operand {a.node.type}{at(user_location())}")
    else:
        axes = tuple(checked_axis(name, ax, a) for ax in (axis if isinstance(axis, (tuple, list)) else (axis,)))
        if len(window) != len(axes):
            raise ShapeError(f"{name}: window_shape {window} and axis {axis!r} must have the same length"
                             f"{at(user_location())}")
    if any(w < 0 for w in window):
        raise ShapeError(f"{name}: window_shape {window} cannot contain negative values{at(user_location())}")
    shape, strides = list(a.shape), c_strides(a.shape)
    for ax, w in zip(axes, window):
        if shape[ax] < w:
            raise ShapeError(f"{name}: window shape {window} cannot be larger than the input array shape; "
                             f"operand {a.node.type}{at(user_location())}")
        shape[ax] -= w - 1
    return a._view("as_strided", shape=tuple(shape) + window,
                   strides=strides + tuple(strides[ax] for ax in axes))


def as_strided(x, shape, strides):
    """NumPy's ``as_strided(x, shape, strides)`` for an array in C order (strides in bytes).

    Requires: strides multiples of the itemsize that only read elements of ``x``; otherwise a
    ``ShapeError`` (NumPy would read memory outside the array). Works on NumPy arrays and, inside
    ``@minicomp.jit``, on traced ones (NumPy's own ``as_strided`` cannot be traced: it asks for
    the array's memory).

    ``as_strided(f32[6], (4, 3), (4, 4))`` -> the 4 windows of 3 elements
    """
    tracer = find_tracer([x])
    itemsize = x.dtype.itemsize
    byte_strides = tuple(int(s) for s in np.asarray(strides).reshape(-1))
    if any(s % itemsize for s in byte_strides):
        raise ShapeError(f"as_strided: strides {byte_strides} are not multiples of the itemsize {itemsize}"
                         f"{at(user_location())}")
    element_strides = tuple(s // itemsize for s in byte_strides)
    from .tracer import apply_op

    if tracer is None and not np.asarray(x).flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return apply_op("as_strided", x, shape=tuple(shape), strides=element_strides)
