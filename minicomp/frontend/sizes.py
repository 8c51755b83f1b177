"""NumPy functions that take sizes, called with a symbolic size while tracing.

Inside a function compiled with a dynamic dimension, ``x.shape[0]`` is a size symbol (``Sym``),
not an int. ``np.tri(x.shape[0])`` (picoGPT's causal mask) hands that symbol to NumPy, which
asks for its value (``operator.index``): unknown until the call. These functions take no array,
so NumPy's dispatch (``__array_function__``) never asks minicomp. So while a trace with symbolic
sizes runs, ``sized_creation(tracer)`` puts a wrapper in front of each of them in the ``numpy``
module. A wrapper builds the array from graph ops when a size is symbolic, and calls NumPy
unchanged otherwise:

    np.arange(T)            ->  cumsum(broadcast_to(1, [T])) - 1       (int64, as NumPy)
    np.arange(a, T)         ->  np.arange(T - a) + a
    np.ones((T, C))         ->  broadcast_to(1.0, [T, C])               (zeros, full, empty alike)
    np.tri(T, k=0)          ->  arange(T)[:, None] + k >= arange(T)[None, :]
    np.eye(T)               ->  tri's comparison with ==

Only names looked up on the module while tracing see a wrapper: ``from numpy import tri`` made
before the trace keeps NumPy's own function (which then asks for the value: the signature is
compiled with static sizes, with a warning naming the line).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np

from ..errors import UnsupportedError
from ..ir.symbolic import Sym, SymbolicShapeError

_state = threading.local()  # .tracer: the trace with symbolic sizes running in this thread
_lock = threading.Lock()
_installed = 0  # traces with symbolic sizes running (in any thread) while the wrappers are in


def _is_sym(value) -> bool:
    return isinstance(value, Sym)


def _shape(shape) -> tuple:
    return tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)


def _symbolic(*sizes) -> bool:
    return any(_is_sym(d) for size in sizes for d in _shape(size))


def _tracer():
    tracer = getattr(_state, "tracer", None)
    if tracer is None:  # a symbol used outside its trace (kept from an earlier call)
        raise UnsupportedError("a symbolic size was used outside the trace that made it")
    return tracer


def _filled(shape, value, dtype):
    """``np.full(shape, value, dtype)`` for a shape with a symbolic size."""
    dtype = np.dtype(dtype) if dtype is not None else np.asarray(value).dtype
    return _tracer().apply("broadcast_to", [np.asarray(value, dtype)], shape=_shape(shape))


def _iota(length, dtype=None):
    """``np.arange(length)`` for a symbolic length (int64 unless ``dtype``)."""
    tracer = _tracer()
    ones = tracer.apply("broadcast_to", [np.int64(1)], shape=(length,))
    values = tracer.apply("sub", [tracer.apply("cumsum", [ones], axis=0), np.int64(1)])
    return values if dtype is None else values.astype(dtype)


def arange(*args, dtype=None, like=None, **kwargs):
    """``np.arange`` with a symbolic stop (step 1): start, start + 1, ..., stop - 1."""
    if not _symbolic(*args, *kwargs.values()):
        return _numpy["arange"](*args, dtype=dtype, like=like, **kwargs)
    bound = dict(zip(("start", "stop", "step"), args if len(args) > 1 else (0,) + args), **kwargs)
    start, stop, step = bound.get("start", 0), bound.get("stop"), bound.get("step", 1)
    if step != 1 or _is_sym(start) or not isinstance(start, (int, np.integer)):
        raise SymbolicShapeError(f"np.arange({start}, {stop}, {step}) with a symbolic size: only an int start "
                                 "and step 1 are supported")
    values = _iota(stop - start)
    if start:
        values = values + np.int64(start)
    return values if dtype is None else values.astype(dtype)


def full(shape, fill_value, dtype=None, order="C", **kwargs):
    """``np.full``; with a symbolic size, a broadcast of ``fill_value`` (its dtype unless ``dtype``)."""
    if not _symbolic(shape):
        return _numpy["full"](shape, fill_value, dtype=dtype, order=order, **kwargs)
    return _filled(shape, fill_value, dtype)


def ones(shape, dtype=None, order="C", **kwargs):
    """``np.ones``; with a symbolic size, a broadcast of 1 (float64 unless ``dtype``)."""
    if not _symbolic(shape):
        return _numpy["ones"](shape, dtype=dtype, order=order, **kwargs)
    return _filled(shape, 1, dtype or np.float64)


def zeros(shape, dtype=float, order="C", **kwargs):
    """``np.zeros``; with a symbolic size, a broadcast of 0."""
    if not _symbolic(shape):
        return _numpy["zeros"](shape, dtype=dtype, order=order, **kwargs)
    return _filled(shape, 0, dtype)


def empty(shape, dtype=float, order="C", **kwargs):
    """``np.empty``: with a symbolic size, zeros (its contents are unspecified anyway)."""
    if not _symbolic(shape):
        return _numpy["empty"](shape, dtype=dtype, order=order, **kwargs)
    return _filled(shape, 0, dtype)


def _diagonals(n, m, k, compare: str, dtype):
    """``arange(n)[:, None] + k  <compare>  arange(m)[None, :]`` as ``dtype``."""
    tracer = _tracer()
    m = n if m is None else m
    if _is_sym(k):
        raise SymbolicShapeError("a symbolic diagonal offset k")
    rows = tracer.apply("reshape", [_iota(n)], shape=(n, 1))
    cols = tracer.apply("reshape", [_iota(m)], shape=(1, m))
    mask = tracer.apply(compare, [tracer.apply("add", [rows, np.int64(k)]), cols])
    return mask.astype(dtype)


def tri(N, M=None, k=0, dtype=float, **kwargs):
    """``np.tri``: ones at and below diagonal ``k`` (``j <= i + k``); graph ops for a symbolic N or M."""
    if not _symbolic(N, M if M is not None else 0):
        return _numpy["tri"](N, M, k, dtype=dtype, **kwargs)
    return _diagonals(N, M, k, "ge", dtype)


def eye(N, M=None, k=0, dtype=float, order="C", **kwargs):
    """``np.eye``: ones on diagonal ``k`` (``j == i + k``); graph ops for a symbolic N or M."""
    if not _symbolic(N, M if M is not None else 0):
        return _numpy["eye"](N, M, k, dtype=dtype, order=order, **kwargs)
    return _diagonals(N, M, k, "eq", dtype)


_WRAPPERS = {"arange": arange, "full": full, "ones": ones, "zeros": zeros, "empty": empty, "tri": tri,
             "eye": eye}
_numpy = {name: getattr(np, name) for name in _WRAPPERS}  # NumPy's own functions


@contextmanager
def sized_creation(tracer, symbolic: bool):
    """While the block runs (a trace; ``symbolic``: its graph has symbolic sizes), the ``numpy``
    module's size-taking functions accept symbolic sizes from this thread's ``tracer``.

    Other threads calling them meanwhile get NumPy's result (the wrappers pass plain sizes on)."""
    global _installed
    if not symbolic:
        yield
        return
    previous = getattr(_state, "tracer", None)
    _state.tracer = tracer
    with _lock:
        _installed += 1
        if _installed == 1:
            for name, wrapper in _WRAPPERS.items():
                setattr(np, name, wrapper)
    try:
        yield
    finally:
        _state.tracer = previous
        with _lock:
            _installed -= 1
            if _installed == 0:
                for name, original in _numpy.items():
                    setattr(np, name, original)

