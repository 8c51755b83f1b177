"""How NumPy's ufuncs and functions map onto graph ops while tracing.

``dispatch_ufunc`` handles ``__array_ufunc__`` (``np.exp(x)``, ``a + x`` with a NumPy ``a``,
``np.maximum.reduce(x)``); ``dispatch_function`` handles ``__array_function__`` (``np.sum``,
``np.where``, ``np.concatenate`` ...). Functions are written with the same parameter names as
NumPy's, so keyword arguments work as users expect. Anything not listed here raises
``UnsupportedError`` naming the function and listing what is supported.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from ..errors import DTypeError, ShapeError, UnsupportedError, at
from ..ir.dtypes import to_dtype
from ..ir.ops import normalize_axes
from .tracer import TracedArray, Tracer, checked_axis, find_tracer, user_location

# ufuncs that are exactly one table op
UFUNC_OPS: dict[np.ufunc, str] = {
    np.add: "add", np.subtract: "sub", np.multiply: "mul", np.true_divide: "div",
    np.floor_divide: "floordiv", np.remainder: "mod", np.power: "pow",
    np.maximum: "maximum", np.minimum: "minimum",
    np.equal: "eq", np.not_equal: "ne", np.less: "lt", np.less_equal: "le",
    np.greater: "gt", np.greater_equal: "ge",
    np.logical_and: "logical_and", np.logical_or: "logical_or", np.logical_not: "logical_not",
    np.negative: "neg", np.absolute: "abs", np.exp: "exp", np.log: "log", np.sqrt: "sqrt",
    np.tanh: "tanh", np.reciprocal: "reciprocal", np.sin: "sin", np.cos: "cos",
    np.floor: "floor", np.ceil: "ceil", np.sign: "sign", np.matmul: "matmul",
}
# bitwise ufuncs that are a table op on bool arrays (a ^ b is a != b)
BOOL_BITWISE_OPS: dict[np.ufunc, str] = {np.bitwise_and: "logical_and", np.bitwise_or: "logical_or",
                                         np.bitwise_xor: "ne"}
# ufunc.reduce that is a table reduction
REDUCE_OPS: dict[np.ufunc, str] = {np.add: "sum", np.maximum: "max", np.minimum: "min"}


def _as_traced(tracer: Tracer, value) -> TracedArray:
    return value if isinstance(value, TracedArray) else TracedArray(tracer, tracer.node_of(value))


def _unsupported_kwargs(name: str, kwargs: dict, allowed=()) -> None:
    extra = [k for k, v in kwargs.items() if k not in allowed and v is not None]
    if extra:
        raise UnsupportedError(f"{name}: argument(s) {extra} are not supported while tracing{at(user_location())}")


def dispatch_ufunc(tracer: Tracer, ufunc: np.ufunc, method: str, inputs, kwargs):
    """Record a ufunc call (``method`` is ``"__call__"`` or ``"reduce"``)."""
    name = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    if method == "at":
        from .updates import ufunc_at

        return ufunc_at(tracer, ufunc, inputs)
    if method == "__call__" and kwargs.get("out") is not None:
        from .updates import ufunc_out

        out = kwargs.pop("out")
        return ufunc_out(name, _as_traced(tracer, dispatch_ufunc(tracer, ufunc, method, inputs, kwargs)), out)
    if method == "reduce" and ufunc in REDUCE_OPS:
        _unsupported_kwargs(name, kwargs, ("axis", "keepdims", "dtype"))
        x = _as_traced(tracer, inputs[0])
        if kwargs.get("dtype") is not None:
            x = x.astype(kwargs["dtype"])
        return x._apply(REDUCE_OPS[ufunc], x, axes=kwargs.get("axis", 0), keepdims=kwargs.get("keepdims", False))
    if method != "__call__":
        raise UnsupportedError(f"{name} is not supported{at(user_location())}; supported ufunc methods: "
                               "__call__, reduce of add, maximum and minimum, and at (np.add.at ...)")
    _unsupported_kwargs(name, kwargs, ("dtype",))
    if kwargs.get("dtype") is not None:
        inputs = [_as_traced(tracer, x).astype(kwargs["dtype"]) for x in inputs]
    if ufunc in UFUNC_OPS:
        return tracer.apply(UFUNC_OPS[ufunc], inputs)
    return _special_ufunc(tracer, ufunc, inputs, name)


def _dtype_of(value) -> np.dtype:
    """The dtype of a proxy, array or Python scalar (``np.result_type`` would call NumPy on a proxy)."""
    return value.dtype if isinstance(value, TracedArray) else np.result_type(value)


def _special_ufunc(tracer: Tracer, ufunc: np.ufunc, inputs, name: str):
    """Ufuncs that are a small composition of table ops."""
    x = _as_traced(tracer, inputs[0])
    if ufunc is np.positive:
        return x.copy()
    if ufunc is np.square:
        if x.dtype == np.bool_:  # NumPy squares bool to int8, a dtype minicomp lacks
            raise DTypeError(f"np.square of a bool array gives int8, which minicomp does not "
                             f"support; operand {x.node.type}{at(user_location())}")
        return tracer.apply("mul", [x, x])
    if ufunc is np.isnan:
        return tracer.apply("ne", [x, x])  # NaN is the only value unequal to itself
    if ufunc in BOOL_BITWISE_OPS and all(_dtype_of(i) == np.bool_ for i in inputs):
        return tracer.apply(BOOL_BITWISE_OPS[ufunc], inputs)
    if ufunc is np.logical_xor:  # truth values differ: (a != 0) != (b != 0)
        return tracer.apply("ne", [tracer.apply("ne", [i, False]) for i in inputs])
    if ufunc is np.invert and x.dtype == np.bool_:
        return tracer.apply("logical_not", [x])
    supported = sorted(f"np.{u.__name__}" for u in UFUNC_OPS) + ["np.positive", "np.square", "np.isnan",
                                                                 "np.logical_xor"]
    raise UnsupportedError(f"{name} is not supported by minicomp's tracer{at(user_location())}; "
                           f"supported ufuncs: {', '.join(supported)}")


# ----------------------------------------------------------------------------------------------
# NumPy functions (NEP 18)
# ----------------------------------------------------------------------------------------------

FUNCTIONS: dict = {}


def implements(*numpy_functions):
    """Register the decorated function as the traced version of ``numpy_functions``."""
    def register(fn):
        for f in numpy_functions:
            FUNCTIONS[f] = fn
        return fn
    return register


def dispatch_function(func, args, kwargs):
    """Record ``func(*args, **kwargs)`` for a NumPy function ``func`` given a proxy argument."""
    if func not in FUNCTIONS:
        supported = ", ".join(sorted(f"np.{f.__name__}" for f in FUNCTIONS))
        raise UnsupportedError(
            f"{_numpy_name(func)} is not supported by minicomp's tracer{at(user_location())}; "
            f"supported NumPy functions: {supported}; and the ufuncs np.exp, np.maximum, ..."
        )
    return FUNCTIONS[func](*args, **kwargs)


def _numpy_name(func) -> str:
    """``np.fft.fft`` for ``numpy.fft.fft``, ``np.einsum`` for ``numpy.einsum``."""
    module = getattr(func, "__module__", None) or "numpy"
    prefix = "np" + module[len("numpy"):] if module.startswith("numpy") else module
    return f"{prefix}.{getattr(func, '__name__', func)}"


def _traced(value, *others) -> TracedArray:
    tracer = find_tracer((value,) + others)
    return _as_traced(tracer, value)


@implements(np.sum)
def _sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=None, where=None):
    _unsupported_kwargs("np.sum", {"initial": initial, "where": where})
    return _traced(a).sum(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


@implements(np.mean)
def _mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=None):
    _unsupported_kwargs("np.mean", {"where": where})
    return _traced(a).mean(axis=axis, dtype=dtype, out=out, keepdims=keepdims)


@implements(np.max, np.amax)
def _max(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _unsupported_kwargs("np.max", {"initial": initial, "where": where})
    return _traced(a).max(axis=axis, out=out, keepdims=keepdims)


@implements(np.min, np.amin)
def _min(a, axis=None, out=None, keepdims=False, initial=None, where=None):
    _unsupported_kwargs("np.min", {"initial": initial, "where": where})
    return _traced(a).min(axis=axis, out=out, keepdims=keepdims)


@implements(np.var)
def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, *, where=None, mean=None,
        correction=None):
    """``np.var`` as mean, subtract, square, sum and divide, exactly as NumPy computes it."""
    _unsupported_kwargs("np.var", {"out": out, "where": where, "mean": mean})
    x = _traced(a)
    if correction is not None:  # the array API's name for ddof
        if ddof != 0:
            raise UnsupportedError(f"np.var: ddof and correction are the same; pass one{at(user_location())}")
        ddof = correction
    if not isinstance(ddof, (int, float, np.integer, np.floating)):
        raise UnsupportedError(f"np.var: ddof={ddof!r:.40} is not a number; operand {x.node.type}{at(user_location())}")
    if dtype is not None:
        x = x.astype(dtype)
    elif x.dtype.kind in "bi":
        x = x.astype(np.float64)
    try:
        axes = normalize_axes(axis, x.ndim)
    except ShapeError as exc:
        raise ShapeError(f"np.var: {exc}; operand {x.node.type}{at(user_location())}") from None
    count = int(np.prod([x.shape[i] for i in axes], dtype=np.int64))
    if count - ddof <= 0:  # NumPy warns on every call; the trace warns once, the results are NumPy's
        warnings.warn(f"np.var: Degrees of freedom <= 0 for slice (ddof={ddof}, {count} element(s))"
                      f"{at(user_location())}", RuntimeWarning, stacklevel=2)
    deviation = x - x.mean(axis=axes, keepdims=True)
    return (deviation * deviation).sum(axis=axes, keepdims=keepdims) / max(count - ddof, 0)


@implements(np.std)
def _std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **kwargs):
    return np.sqrt(var(a, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims, **kwargs))


@implements(np.transpose)
def _transpose(a, axes=None):
    return _traced(a).transpose(axes)


@implements(np.reshape)
def _reshape(a, shape=None, order="C", *, newshape=None, copy=None):
    return _traced(a).reshape(shape if shape is not None else newshape, order=order)


@implements(np.ravel)
def _ravel(a, order="C"):
    return _traced(a).reshape(-1, order=order)


@implements(np.swapaxes)
def _swapaxes(a, axis1, axis2):
    x = _traced(a)
    perm = list(range(x.ndim))
    i, j = checked_axis("np.swapaxes", axis1, x), checked_axis("np.swapaxes", axis2, x)
    perm[i], perm[j] = perm[j], perm[i]
    return x.transpose(perm)


@implements(np.moveaxis)
def _moveaxis(a, source, destination):
    x = _traced(a)
    source = [checked_axis("np.moveaxis", s, x) for s in _axis_list(source)]
    destination = [checked_axis("np.moveaxis", d, x) for d in _axis_list(destination)]
    if len(source) != len(destination):
        raise ShapeError(f"np.moveaxis: source and destination must have the same number of elements; got "
                         f"{len(source)} and {len(destination)}; operand {x.node.type}{at(user_location())}")
    if len(set(source)) != len(source) or len(set(destination)) != len(destination):
        raise ShapeError(f"np.moveaxis: repeated axis in source {source} or destination {destination}; "
                         f"operand {x.node.type}{at(user_location())}")
    order = [n for n in range(x.ndim) if n not in source]
    for dest, src in sorted(zip(destination, source)):
        order.insert(dest, src)
    return x.transpose(order)


@implements(np.squeeze)
def _squeeze(a, axis=None):
    return _traced(a).squeeze(axis)


@implements(np.expand_dims)
def _expand_dims(a, axis):
    return _traced(a)._view("expand_dims", axes=axis)


@implements(np.broadcast_to)
def _broadcast_to(array, shape, subok=False):
    return _traced(array)._view("broadcast_to", shape=shape)


@implements(np.copy)
def _copy(a, order="K", subok=False):
    return _traced(a).copy()


@implements(np.astype)
def _astype(x, dtype, /, *, copy=True, device=None):
    return _traced(x).astype(dtype)


@implements(np.concatenate)
def _concatenate(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    _unsupported_kwargs("np.concatenate", {"out": out})
    tracer = find_tracer(arrays)
    arrays = [_as_traced(tracer, a) for a in arrays]
    if axis is None:
        arrays, axis = [a.reshape(-1) for a in arrays], 0
    if dtype is not None:
        arrays = [a.astype(dtype) for a in arrays]
    return tracer.apply("concatenate", arrays, axis=axis)


@implements(np.stack)
def _stack(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    tracer = find_tracer(arrays)
    arrays = [_as_traced(tracer, a) for a in arrays]
    if len({a.shape for a in arrays}) > 1:
        raise ShapeError(f"np.stack: all input arrays must have the same shape, got "
                         f"{[a.shape for a in arrays]}{at(user_location())}")
    axis = checked_axis("np.stack", axis, arrays[0], arrays[0].ndim + 1)
    expanded = [a._view("expand_dims", axes=axis) for a in arrays]
    return _concatenate(expanded, axis=axis, out=out, dtype=dtype)


def _axis_list(axes) -> list:
    """``2 -> [2]``, ``(0, 1) -> [0, 1]``: np.moveaxis takes either."""
    return list(axes) if isinstance(axes, (tuple, list, np.ndarray)) else [axes]


def _split_bounds(length: int, indices_or_sections, even: bool) -> list[int]:
    name = f"np.{'split' if even else 'array_split'}"
    try:
        sections = operator.index(indices_or_sections)
        if sections > length + 2**20:  # NumPy would make that many empty arrays
            raise ShapeError(f"{name}: {sections} sections of an axis of length {length} is too many")
    except TypeError:
        try:
            return [0] + [operator.index(i) for i in indices_or_sections] + [length]
        except TypeError:
            raise ShapeError(f"{name}: {indices_or_sections!r:.40} is neither a number of sections nor a "
                             "sequence of indices") from None
    if sections <= 0:
        raise ShapeError(f"{name}: number sections must be larger than 0")
    base, extra = divmod(length, sections)
    if even and extra:
        raise ShapeError(f"np.split: an axis of length {length} does not divide into {sections} "
                         "equal sections (use np.array_split)")
    sizes = [base + (1 if i < extra else 0) for i in range(sections)]
    return np.cumsum([0] + sizes).tolist()


def _split_at(ary, indices_or_sections, axis: int, even: bool) -> list[TracedArray]:
    x = _traced(ary)
    axis = checked_axis("np.split" if even else "np.array_split", axis, x)
    try:
        bounds = _split_bounds(x.shape[axis], indices_or_sections, even)
    except ShapeError as exc:
        raise ShapeError(f"{exc}; operand {x.node.type}{at(user_location())}") from None
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop)
        pieces.append(x[tuple(index)])
    return pieces


@implements(np.split)
def _split(ary, indices_or_sections, axis=0):
    return _split_at(ary, indices_or_sections, axis, even=True)


@implements(np.array_split)
def _array_split(ary, indices_or_sections, axis=0):
    return _split_at(ary, indices_or_sections, axis, even=False)


@implements(np.where)
def _where(condition, x=None, y=None):
    if x is None or y is None:
        raise UnsupportedError(f"np.where(condition) with one argument returns data-dependent "
                               f"indices and cannot be traced{at(user_location())}")
    tracer = find_tracer((condition, x, y))
    return tracer.apply("where", [_truth(tracer, condition), x, y])


def _truth(tracer: Tracer, condition):
    """A condition as NumPy reads it: any dtype, nonzero (or NaN) is True."""
    if isinstance(condition, TracedArray):
        return condition if condition.dtype == np.bool_ else condition != 0
    return np.asarray(condition).astype(bool)


@implements(np.clip)
def _clip(a, a_min=np._NoValue, a_max=np._NoValue, out=None, *, min=np._NoValue, max=np._NoValue, **kwargs):
    """``np.clip``: ``minimum(maximum(a, a_min), a_max)``; a bound may be None, an array, or
    given as ``min=``/``max=`` (NumPy 2's names)."""
    _unsupported_kwargs("np.clip", {"out": out, **kwargs})
    a_min = _one_bound("a_min", a_min, "min", min)
    a_max = _one_bound("a_max", a_max, "max", max)
    x = _traced(a, a_min, a_max)
    if a_min is None and a_max is None and x.dtype == np.bool_:  # NumPy's np.positive, which refuses bools
        raise DTypeError(f"np.clip with no bounds is np.positive, which NumPy refuses for bool arrays; operand "
                         f"{x.node.type}{at(user_location())}")
    bounds = [b for b in (a_min, a_max) if b is not None]
    result = np.result_type(x.dtype, *[b if isinstance(b, (bool, int, float)) else np.asarray(b).dtype
                                       if not hasattr(b, "node") else b.dtype for b in bounds])
    if result != x.dtype:  # one ufunc over all three in NumPy: a float16 x clipped by int32 bounds is float64
        x = x.astype(result)
    if a_min is not None:
        x = np.maximum(x, a_min)
    if a_max is not None:
        x = np.minimum(x, a_max)
    return x


def _one_bound(name: str, value, alias: str, alias_value):
    if value is not np._NoValue and alias_value is not np._NoValue:
        raise UnsupportedError(f"np.clip: pass {name} or {alias}, not both{at(user_location())}")
    value = alias_value if value is np._NoValue else value
    return None if value is np._NoValue else value


@implements(np.dot)
def _dot(a, b, out=None):
    _unsupported_kwargs("np.dot", {"out": out})
    tracer = find_tracer((a, b))
    a, b = _as_traced(tracer, a), _as_traced(tracer, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.ndim > 2 or b.ndim > 2:
        raise UnsupportedError(f"np.dot of arrays with more than 2 dimensions is not supported"
                               f"{at(user_location())}; use np.matmul (@), which batches")
    return a @ b


def _filled_like(name: str, a, fill_value, dtype):
    x = _traced(a)
    try:
        dtype = to_dtype(dtype if dtype is not None else x.dtype)
    except DTypeError as exc:
        raise DTypeError(f"{name}: {exc}; operand {x.node.type}{at(user_location())}") from None
    try:
        value = np.asarray(fill_value, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DTypeError(f"{name}: the fill value {fill_value!r:.40} is not a {dtype} ({exc}); operand "
                         f"{x.node.type}{at(user_location())}") from None
    return x.tracer.apply("broadcast_to", [value], shape=x.shape)


@implements(np.zeros_like, np.empty_like)
def _zeros_like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
    _unsupported_kwargs("np.zeros_like", {"shape": shape})
    return _filled_like("np.zeros_like", a, 0, dtype)


@implements(np.ones_like)
def _ones_like(a, dtype=None, order="K", subok=True, shape=None, **kwargs):
    _unsupported_kwargs("np.ones_like", {"shape": shape})
    return _filled_like("np.ones_like", a, 1, dtype)


@implements(np.full_like)
def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, **kwargs):
    _unsupported_kwargs("np.full_like", {"shape": shape})
    return _filled_like("np.full_like", a, fill_value, dtype)


@implements(np.shape)
def _shape(a):
    return _traced(a).shape


@implements(np.ndim)
def _ndim(a):
    return _traced(a).ndim


@implements(np.size)
def _size(a, axis=None):
    x = _traced(a)
    return x.size if axis is None else x.shape[checked_axis("np.size", axis, x)]


from . import gather  # noqa: E402,F401  (registers np.take, np.take_along_axis)
