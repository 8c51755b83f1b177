"""The NumPy surface real programs use, compiled to C and checked against NumPy.

Every test calls one unchanged NumPy function twice: through ``minicomp.jit`` (the default C
target) and through NumPy; values, dtype and shape must agree for every dtype minicomp has,
on hypothesis-drawn shapes with 0- and 1-sized dimensions and negative axes. Where NumPy
raises, minicomp raises a ``MinicompError`` of the same family (ValueError, TypeError), and
what cannot be traced is refused naming the construct, the user's line and what to write.
"""

from __future__ import annotations

import inspect
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minicomp
from minicomp.errors import MinicompError, ShapeError, UnsupportedError
from minicomp.ir.dtypes import DTYPES
from minicomp.testing import assert_close

DTYPE_NAMES = list(DTYPES.values())  # f16 f32 f64 i32 i64 bool
dtypes = st.sampled_from(DTYPE_NAMES)
swv = np.lib.stride_tricks.sliding_window_view


def shapes(min_dims=0, max_dims=3, min_side=0, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


@st.composite
def arrays(draw, dtype, shape, specials=True):
    """Small integers (ties are common) in ``dtype``; NaN and infinities now and then for floats."""
    values = draw(hnp.arrays(np.int8, shape, elements=st.integers(-3, 3))).astype(dtype)
    if specials and np.dtype(dtype).kind == "f" and values.size and draw(st.integers(0, 3)) == 0:
        flat = values.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return values


def numpy_result(fn, *args):
    """NumPy's result, or the exception it raises (warnings silenced: NumPy's, same results)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except (ValueError, TypeError, IndexError, OverflowError) as exc:
            return exc


def check(fn, *args):
    """``minicomp.jit(fn)`` (C) equals NumPy; where NumPy raises, a MinicompError of its family."""
    expected = numpy_result(fn, *args)
    compiled = minicomp.jit(fn)
    if isinstance(expected, Exception):
        family = TypeError if isinstance(expected, TypeError) else ValueError  # IndexError, OverflowError too
        with pytest.raises(MinicompError) as info:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compiled(*args)
        assert isinstance(info.value, family), f"NumPy: {expected!r}; minicomp: {info.value!r}"
        assert "test_numpy_surface.py:" in str(info.value), info.value  # the user's line
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual = compiled(*args)
    assert_close(actual, expected)
    return actual


def axis_or_none(ndim):
    return st.one_of(st.none(), st.integers(-ndim, ndim - 1)) if ndim else st.none()


# ----------------------------------------------------------------------------------------------
# Stacking
# ----------------------------------------------------------------------------------------------


@settings(max_examples=15)
@given(data=st.data(), shape=shapes(max_dims=3), count=st.integers(1, 3))
def test_stacks(data, shape, count):
    """hstack, vstack, dstack, column_stack, stack and atleast_Nd of arrays of one shape and
    (possibly) different dtypes: NumPy promotes."""
    parts = [data.draw(arrays(data.draw(dtypes), shape)) for _ in range(count)]
    which = data.draw(st.sampled_from(["hstack", "vstack", "dstack", "column_stack", "stack",
                                       "atleast_1d", "atleast_2d", "atleast_3d"]))
    if which.startswith("atleast"):
        fn = lambda *xs: getattr(np, which)(*xs)  # noqa: E731
    elif which == "stack":
        axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
        fn = lambda *xs: np.stack(list(xs), axis=axis)  # noqa: E731
    else:
        fn = lambda *xs: getattr(np, which)(list(xs))  # noqa: E731
    check(fn, *parts)


def test_stacks_of_different_lengths():
    a, b = np.arange(6.0).reshape(2, 3), np.ones((2, 1), np.float32)
    check(lambda a, b: np.hstack((a, b)), a, b)
    check(lambda a, b: np.vstack([a.T, b.T]), a, b)
    check(lambda a, b: np.dstack([a, a * 2]), a, b)
    check(lambda a, b: np.column_stack([a[0], b[:, 0].repeat(3)]), a, b)
    check(lambda a, b: np.hstack([a[0], 1.5]), a, b)
    check(lambda a, b: np.hstack([a, a], dtype=np.float32), a, b)


# ----------------------------------------------------------------------------------------------
# np.pad
# ----------------------------------------------------------------------------------------------


@st.composite
def pad_widths(draw, ndim):
    """Every form NumPy takes: n, (n,), (before, after), ((b, a),), one pair per axis."""
    side = st.integers(0, 5)
    form = draw(st.integers(0, 4))
    if form == 0:
        return draw(side)
    if form == 1:
        return (draw(side),)
    if form == 2:
        return (draw(side), draw(side))
    if form == 3:
        return ((draw(side), draw(side)),)
    return tuple((draw(side), draw(side)) for _ in range(ndim))


@settings(max_examples=40)
@given(data=st.data(), dtype=dtypes, shape=shapes(min_dims=1, max_side=3),
       mode=st.sampled_from(["constant", "edge", "reflect", "symmetric", "wrap"]))
def test_pad(data, dtype, shape, mode):
    """Widths wider than the axis too (reflect and wrap repeat); empty axes (only constant
    mode pads them; the others are NumPy's ValueError)."""
    x = data.draw(arrays(dtype, shape))
    width = data.draw(pad_widths(len(shape)))
    kwargs = {}
    if mode == "constant" and data.draw(st.booleans()):
        kwargs["constant_values"] = data.draw(st.sampled_from([
            1, -2, (3,), (1, 2), tuple((i, -i) for i in range(len(shape)))]))
    check(lambda a: np.pad(a, width, mode, **kwargs), x)


def test_pad_examples():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    check(lambda a: np.pad(a, ((1, 2), (3, 0)), constant_values=((1, 2), (3, 4))), x)  # corners: later axis
    check(lambda a: np.pad(a, 7, mode="reflect"), x)
    check(lambda a: np.pad(a, ((0, 0), (2, 2)), "symmetric"), x)
    check(lambda a: np.pad(a[:1], 3, "reflect"), x)  # an axis of one element
    check(lambda a: np.pad(a, 1, constant_values=np.nan), x)
    check(lambda a: np.pad(a.astype(np.int32), 1, constant_values=2.7), x)  # cast as NumPy assigns
    check(lambda a: np.pad(a.astype(np.int32), 1, constant_values=np.nan), x)  # NumPy's ValueError
    check(lambda a: np.pad(a.astype(np.int32), 1, constant_values=2**70), x)  # NumPy's OverflowError


def test_pad_refusals_name_the_mode_and_line():
    x = np.ones((3, 3), np.float32)
    with pytest.raises(UnsupportedError, match=r"np\.pad: mode 'mean' is not supported.*test_numpy_surface.py:\d+.*"
                                               "supported modes: constant, edge, reflect"):
        minicomp.jit(lambda a: np.pad(a, 1, mode="mean"))(x)
    with pytest.raises(UnsupportedError, match="reflect_type='odd'"):
        minicomp.jit(lambda a: np.pad(a, 1, mode="reflect", reflect_type="odd"))(x)
    with pytest.raises(UnsupportedError, match="pad_width is a traced array.*pass a Python int"):
        minicomp.jit(lambda a, w: np.pad(a, w))(x, np.ones(2, np.int64))
    with pytest.raises(ShapeError, match="negative"):
        minicomp.jit(lambda a: np.pad(a, -1))(x)


# ----------------------------------------------------------------------------------------------
# repeat, tile
# ----------------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=3))
def test_repeat(data, dtype, shape):
    """A count, or one count per element (0 included), along an axis or the flattened array."""
    x = data.draw(arrays(dtype, shape))
    axis = data.draw(axis_or_none(x.ndim))
    length = x.size if axis is None else x.shape[axis]
    repeats = data.draw(st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), min_size=length, max_size=length),
                                  st.just([2])))
    if data.draw(st.booleans()):
        check(lambda a: np.repeat(a, repeats, axis=axis), x)
    else:
        check(lambda a: a.repeat(repeats, axis), x)


@settings(max_examples=25)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=3))
def test_tile(data, dtype, shape):
    x = data.draw(arrays(dtype, shape))
    reps = data.draw(st.one_of(st.integers(0, 3), st.lists(st.integers(0, 3), max_size=4).map(tuple)))
    check(lambda a: np.tile(a, reps), x)


def test_repeat_refuses_counts_that_are_arrays():
    x = np.ones(3, np.float32)
    with pytest.raises(UnsupportedError, match=r"np\.repeat: repeats is a traced array.*test_numpy_surface.py"):
        minicomp.jit(lambda a, r: np.repeat(a, r))(x, np.ones(3, np.int64))
    check(lambda a: np.repeat(a, [1, 2]), x)  # NumPy's ValueError: 2 counts for 3 elements
    check(lambda a: np.repeat(a, -1), x)


# ----------------------------------------------------------------------------------------------
# tril, triu
# ----------------------------------------------------------------------------------------------


@settings(max_examples=25)
@given(data=st.data(), dtype=dtypes, shape=shapes(min_dims=1, max_dims=4), k=st.integers(-4, 4),
       lower=st.booleans())
def test_tril_triu(data, dtype, shape, k, lower):
    """On the last two axes (batched), any k; a 1-D array gives a square, as NumPy."""
    x = data.draw(arrays(dtype, shape))
    fn = np.tril if lower else np.triu
    check(lambda a: fn(a, k), x)


# ----------------------------------------------------------------------------------------------
# argmax, argmin, any, all
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=4), largest=st.booleans(),
       keepdims=st.booleans(), method=st.booleans())
def test_argmax_argmin(data, dtype, shape, largest, keepdims, method):
    """Ties give the first occurrence; the first NaN wins; an empty axis is NumPy's ValueError."""
    x = data.draw(arrays(dtype, shape))
    axis = data.draw(axis_or_none(x.ndim))
    name = "argmax" if largest else "argmin"
    if method:
        check(lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), x)
    else:
        check(lambda a: getattr(np, name)(a, axis, keepdims=keepdims), x)


def test_argmax_nan_and_tie_rules():
    x = np.array([[1.0, 3.0, 3.0, np.nan, np.nan], [-0.0, 0.0, -1.0, -1.0, np.inf]], np.float32)
    assert check(lambda a: np.argmax(a, axis=1), x).tolist() == [3, 4]
    assert check(lambda a: np.argmin(a, axis=1), x).tolist() == [3, 2]
    assert check(lambda a: a.argmax(), x) == 3


@settings(max_examples=40)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=3), every=st.booleans(),
       keepdims=st.booleans(), method=st.booleans())
def test_any_all(data, dtype, shape, every, keepdims, method):
    """Axes None, an int or a tuple (negative ones too); NaN is true; empty axes give NumPy's identity."""
    x = data.draw(arrays(dtype, shape))
    axis = data.draw(st.one_of(axis_or_none(x.ndim), st.lists(st.integers(0, max(x.ndim - 1, 0)), unique=True,
                                                                max_size=x.ndim).map(tuple)))
    name = "all" if every else "any"
    if method:
        check(lambda a: getattr(a, name)(axis=axis, keepdims=keepdims), x)
    else:
        check(lambda a: getattr(np, name)(a, axis=axis, keepdims=keepdims), x)


# ----------------------------------------------------------------------------------------------
# cumsum, cumprod
# ----------------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=5), product=st.booleans(), method=st.booleans())
def test_cumsum_cumprod(data, dtype, shape, product, method):
    """Axis None flattens; bools and ints accumulate in int64 as NumPy; ``dtype=`` too."""
    x = data.draw(arrays(dtype, shape))
    axis = data.draw(axis_or_none(x.ndim))
    result_dtype = data.draw(st.sampled_from([None] + DTYPE_NAMES))
    name = "cumprod" if product else "cumsum"
    if method:
        check(lambda a: getattr(a, name)(axis=axis, dtype=result_dtype), x)
    else:
        check(lambda a: getattr(np, name)(a, axis, result_dtype), x)


def test_cumsum_wraps_and_rounds_as_numpy():
    x = np.array([2**62, 2**62, 2**62, 1], np.int64)
    check(lambda a: np.cumsum(a), x)
    check(lambda a: np.cumsum(a.astype(np.int32), dtype=np.int32), x)
    h = np.full(3000, 0.1, np.float16)  # float16 rounds every step: the sum stalls, as NumPy's
    assert np.array_equal(minicomp.jit(lambda a: np.cumsum(a))(h), np.cumsum(h))


# ----------------------------------------------------------------------------------------------
# clip, var, std, where, astype
# ----------------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=3))
def test_clip(data, dtype, shape):
    """Scalar, array (broadcasting) and None bounds; NumPy 2's min=/max= names; the method."""
    x = data.draw(arrays(dtype, shape))
    bound = st.one_of(st.none(), st.integers(-2, 2), st.floats(-2.5, 2.5),
                      arrays(data.draw(dtypes), data.draw(st.sampled_from([shape, shape[-1:], ()]))))
    low, high = data.draw(bound), data.draw(bound)
    form = data.draw(st.integers(0, 2))
    if form == 0:
        check(lambda a: np.clip(a, low, high), x)
    elif form == 1:
        check(lambda a: np.clip(a, min=low, max=high), x)
    else:
        check(lambda a: a.clip(low, high), x)


def test_clip_promotes_over_all_three_operands():
    """NumPy's clip is one ufunc over x and both bounds: a float16 x with an int32 bound is
    float64, and a Python-float bound is not rounded to float16 first (hypothesis found it)."""
    x = np.array([-3.0, 0.1, 2.0], np.float16)
    high = np.array([1, 0, 3], np.int32)
    check(lambda a: np.clip(a, -2.4, high), x)
    assert minicomp.jit(lambda a: np.clip(a, -2.4, high))(x)[0] == -2.4


@settings(max_examples=30)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=4), ddof=st.integers(0, 5),
       keepdims=st.booleans(), root=st.booleans())
def test_var_std(data, dtype, shape, ddof, keepdims, root):
    """ddof up to past the count (NumPy: inf or NaN, and a warning), axes None/int/tuple."""
    x = data.draw(arrays(dtype, shape, specials=False))
    axis = data.draw(st.one_of(axis_or_none(x.ndim), st.lists(st.integers(0, max(x.ndim - 1, 0)), unique=True,
                                                                max_size=x.ndim).map(tuple)))
    fn = np.std if root else np.var
    check(lambda a: fn(a, axis=axis, ddof=ddof, keepdims=keepdims), x)
    check(lambda a: getattr(a, fn.__name__)(axis, None, None, ddof, keepdims), x)


def test_var_with_too_few_degrees_of_freedom_warns_as_numpy():
    x = np.arange(3.0)
    with warnings.catch_warnings():  # the compiler itself warns of nothing
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="Degrees of freedom <= 0"):
            minicomp.jit(lambda a: np.var(a, ddof=3), target="numpy")(x)
    with pytest.warns(RuntimeWarning, match="Degrees of freedom <= 0"):
        result = minicomp.jit(lambda a: np.var(a, ddof=3))(x)
    assert np.isinf(result)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(minicomp.jit(lambda a: np.var(a * 0, ddof=4))(x))


@settings(max_examples=20)
@given(data=st.data(), dtype=dtypes, shape=shapes(max_side=3))
def test_where_condition_of_any_dtype(data, dtype, shape):
    """The condition is true where nonzero (NaN too), as NumPy reads it."""
    cond = data.draw(arrays(dtype, shape))
    x = data.draw(arrays(np.float32, shape))
    check(lambda c, a: np.where(c, a, -a), cond, x)
    check(lambda a: np.where(2, a, 0), x)


SPECIALS = np.array([0.0, -0.0, 0.5, -0.5, 1.7, -1.7, 255.5, 65504.0, 70000.0, 3e9, -3e9, 2**31, -2**31 - 1.0,
                     9.3e18, -9.3e18, 1e300, np.nan, np.inf, -np.inf])


@pytest.mark.parametrize("source", DTYPE_NAMES)
def test_astype_between_every_pair_of_dtypes(source):
    """Every source to every target in one function: floats to ints truncate; NaN, inf and out of
    range give the minimum integer (what NumPy does on x86-64); to bool is != 0 (NaN is True);
    to float16 rounds and overflows to inf."""
    with np.errstate(all="ignore"):
        x = SPECIALS.astype(source)
    targets = DTYPE_NAMES

    def casts(a):
        return tuple(a.astype(t) for t in targets)

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = casts(x)
        actual = minicomp.jit(casts)(x)
    for t, got, want in zip(targets, actual, expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"{source} -> {t}")


# ----------------------------------------------------------------------------------------------
# sliding_window_view, as_strided
# ----------------------------------------------------------------------------------------------


@settings(max_examples=30)
@given(data=st.data(), dtype=dtypes, shape=shapes(min_dims=1, max_side=5))
def test_sliding_window_view(data, dtype, shape):
    """One window per axis (axis None), or windows on chosen axes (repeated and negative ones);
    too large a window is NumPy's ValueError. Used as NumPy programs use it: reduced, multiplied."""
    x = data.draw(arrays(dtype, shape))
    if data.draw(st.booleans()):
        window = tuple(data.draw(st.integers(0, d + 1)) for d in shape)
        check(lambda a: swv(a, window), x)
    else:
        axes = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=3))
        window = [data.draw(st.integers(0, 3)) for _ in axes]
        check(lambda a: swv(a, window, axis=axes), x)


def test_windows_as_numpy_programs_use_them():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)

    def conv(x, w):  # im2col by windows, then one einsum
        cols = swv(x, (3, 3), axis=(2, 3))  # (n, c, 6, 6, 3, 3)
        return np.einsum("nchwrs,ocrs->nohw", cols, w)

    check(conv, x, w)
    check(lambda a: swv(a, 3, axis=-1).max(axis=-1), x)  # a max pool of width 3
    as_strided = np.lib.stride_tricks.as_strided
    flat = np.arange(10, dtype=np.float64)
    expected = as_strided(flat, (4, 3), (16, 8))
    assert_close(minicomp.jit(lambda a: minicomp.nn.as_strided(a, (4, 3), (16, 8)))(flat), expected)
    assert_close(minicomp.nn.as_strided(flat, (4, 3), (16, 8)), expected)


def test_as_strided_refusals():
    x = np.ones(6, np.float32)
    with pytest.raises(UnsupportedError, match=r"as_strided needs the memory.*test_numpy_surface.py:\d+.*"
                                               r"minicomp\.nn\.as_strided"):
        minicomp.jit(lambda a: np.lib.stride_tricks.as_strided(a, (3, 2), (4, 4)))(x)
    with pytest.raises(ShapeError, match="outside the 6"):
        minicomp.jit(lambda a: minicomp.nn.as_strided(a, (4, 2), (8, 4)))(x)
    with pytest.raises(ShapeError, match="not multiples of the itemsize"):
        minicomp.jit(lambda a: minicomp.nn.as_strided(a, (2, 2), (6, 4)))(x)
    with pytest.raises(UnsupportedError, match="writeable=True"):
        minicomp.jit(lambda a: swv(a, 2, writeable=True))(x)


# ----------------------------------------------------------------------------------------------
# einsum
# ----------------------------------------------------------------------------------------------

EINSUMS = [
    ("ij,jk->ik", [("i", "j"), ("j", "k")]), ("bhqd,bhkd->bhqk", [("b", "h", "q", "d"), ("b", "h", "k", "d")]),
    ("ii->i", [("i", "i")]), ("ij->", [("i", "j")]), ("...ij,...jk", [("z", "i", "j"), ("j", "k")]),
    ("ij,jk", [("i", "j"), ("j", "k")]), ("ii", [("i", "i")]), ("i,j->ij", [("i",), ("j",)]),
    ("ij,ij->ij", [("i", "j"), ("i", "j")]), ("ijk->kji", [("i", "j", "k")]), ("iij->ji", [("i", "i", "j")]),
    ("ij,jk,kl->il", [("i", "j"), ("j", "k"), ("k", "l")]), ("i,i", [("i",), ("i",)]),
    ("bij,bjk->bik", [("b", "i", "j"), ("b", "j", "k")]), ("...i,...i->...", [("z", "i"), ("i",)]),
    ("ba,ca", [("b", "a"), ("c", "a")]), ("ij->ji", [("i", "j")]), ("i,i->i", [("i",), ("i",)]),
]


@settings(max_examples=40)
@given(data=st.data(), case=st.sampled_from(EINSUMS), dtype=dtypes)
def test_einsum(data, case, dtype):
    """NumPy's subscripts, explicit and implicit output, '...', diagonals, 3 operands; sizes of
    0 and 1 (1 broadcasts against another size, as NumPy's einsum does)."""
    subscripts, labels = case
    sizes = {label: data.draw(st.integers(0, 4)) for spec in labels for label in spec}
    operands = []
    for spec in labels:
        shape = tuple(1 if data.draw(st.integers(0, 5)) == 0 else sizes[label] for label in spec)
        if "i" in spec and spec.count("i") == 2:  # a diagonal needs equal sizes
            shape = tuple(sizes[label] for label in spec)
        operands.append(data.draw(arrays(dtype, shape, specials=False)))
    check(lambda *xs: np.einsum(subscripts, *xs), *operands)


def test_einsum_contractions_run_as_matmul():
    q = np.ones((2, 3, 4, 5), np.float32)
    k = np.ones((2, 3, 6, 5), np.float32)
    graph = minicomp.trace(lambda q, k: np.einsum("bhqd,bhkd->bhqk", q, k), q, k)
    assert [n.op for n in graph.op_nodes()] == ["transpose", "matmul"]
    graph = minicomp.trace(lambda a, b: np.einsum("ij,jk->ik", a, b), q[0, 0], q[0, 0].T)
    assert [n.op for n in graph.op_nodes()] == ["matmul"]


def test_einsum_errors():
    a = np.ones((2, 3), np.float32)
    check(lambda a: np.einsum("ij,jk", a, a), a)  # sizes 3 and 2 for j
    check(lambda a: np.einsum("ijk", a), a)  # too many subscripts
    check(lambda a: np.einsum("...ij->ij", a[None]), a)  # '...' dropped from the output
    with pytest.raises(UnsupportedError, match="subscripts-string form.*np.einsum\\('ij,jk->ik', a, b\\)"):
        minicomp.jit(lambda a: np.einsum(a, [0, 1], [1, 0]))(a)


# ----------------------------------------------------------------------------------------------
# Refusals name the construct, the line and what to write
# ----------------------------------------------------------------------------------------------


def test_out_arguments_are_refused_by_name():
    x = np.ones((2, 3), np.float32)
    for fn in (lambda a: np.cumsum(a, out=a), lambda a: np.argmax(a, out=a), lambda a: np.any(a, out=a)):
        with pytest.raises(UnsupportedError, match=r"argument\(s\) \['out'\].*test_numpy_surface.py"):
            minicomp.jit(fn)(x)


def test_every_function_here_has_a_docstring():
    from minicomp.frontend import einsum, surface

    for module in (surface, einsum):
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and not name.startswith("_") and fn.__module__ == module.__name__:
                assert fn.__doc__, f"{module.__name__}.{name} has no docstring"
