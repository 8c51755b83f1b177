"""Tracing unchanged NumPy functions: the graph, run by the interpreter, must equal NumPy.

Every test calls the *same* Python function twice: once on NumPy arrays (the expected result)
and once through ``minicomp.trace`` + ``minicomp.interpret``. Operators, ufuncs, methods,
attributes, every function in ``FUNCTIONS``, basic indexing, constants, Python scalars,
in-place operators and the things the tracer must refuse are covered, as is the ``file:line``
every node records.
"""

import collections
import inspect
import os

import numpy as np
import pytest

import minicomp
from minicomp import nn
from minicomp.errors import DTypeError, ShapeError, UnsupportedError
from minicomp.frontend.functions import FUNCTIONS, _numpy_name
from minicomp.testing import assert_close

f32, f64, i32, i64 = np.float32, np.float64, np.int32, np.int64


def run_traced(fn, *args):
    """Trace ``fn`` on ``args``, interpret the graph on the same arrays, shape it like ``fn``'s result."""
    graph = minicomp.trace(fn, *args)
    outputs = minicomp.interpret(graph, *[a for a in args if isinstance(a, (np.ndarray, np.generic))])
    with np.errstate(all="ignore"):  # log(0), 0/0 ...: NumPy's warnings, same results
        expected = fn(*args)
    if isinstance(expected, (tuple, list)):
        return type(expected)(outputs), expected
    assert len(outputs) == 1
    return outputs[0], expected


def check(fn, *args):
    """``fn`` traced and interpreted equals ``fn`` run by NumPy (shape, dtype, values)."""
    actual, expected = run_traced(fn, *args)
    assert_close(actual, expected)
    return actual


def here() -> int:
    """The line number of the caller (for checking the ``loc`` of nodes)."""
    return inspect.currentframe().f_back.f_lineno


def loc_is_this_file(loc: str, line: int) -> bool:
    path, _, lineno = loc.rpartition(":")
    return os.path.abspath(path) == os.path.abspath(__file__) and int(lineno) == line


@pytest.fixture
def x(rng):
    return rng.standard_normal((3, 4)).astype(f32)


@pytest.fixture
def x3(rng):
    return rng.standard_normal((2, 3, 4)).astype(f32)


# ----------------------------------------------------------------------------------------------
# Operators
# ----------------------------------------------------------------------------------------------


ARITHMETIC = [
    "x + 1.5", "x - 2", "x * x", "x / 3.0", "x // 0.7", "x % 0.7", "x ** 2", "-x", "+x", "abs(x)",
    "2 - x", "1 / x", "3 // x", "2.0 ** x", "1.5 + x", "0.5 * x", "2 % x", "x @ x.T", "x.T @ x",
]


@pytest.mark.parametrize("expr", ARITHMETIC)
def test_arithmetic_operators(expr, x):
    check(eval(f"lambda x: {expr}"), x)


def test_matmul_with_a_numpy_array_on_either_side(rng, x):
    a = rng.standard_normal((5, 3)).astype(f32)
    b = rng.standard_normal((4, 2)).astype(f32)
    check(lambda x: a @ x, x)  # reflected: ndarray.__matmul__ defers to the proxy
    check(lambda x: x @ b, x)
    check(lambda x: np.matmul(a, x), x)


def test_matmul_with_1d_and_batched_operands(rng, x3):
    v = rng.standard_normal(4).astype(f32)
    check(lambda x, v: (x @ v, v @ x.swapaxes(-1, -2), v @ v), x3, v)


def test_comparisons(x):
    check(lambda x: (x < 0, x <= 0.1, x > 0, x >= -0.1, x == x, x != 0, 0 < x), x)


def test_bool_operators(x):
    check(lambda x: ((x > 0) & (x < 1), (x > 0) | (x < -1), ~(x > 0), (x > 0) & True, False | (x > 0)), x)


def test_bool_operators_against_numpy_bool_arrays(x):
    mask = np.array([True, False, True, False])
    check(lambda x: (mask & (x > 0), (x > 0) | mask, np.bitwise_and(x > 0, mask),
                     np.bitwise_or(mask, x > 0), np.invert(x > 0)), x)


@pytest.mark.parametrize("op", ["&", "|", "~"])
def test_bitwise_operators_on_numbers_are_refused(op, x):
    fn = {"&": lambda x: x & x, "|": lambda x: x | 1, "~": lambda x: ~x}[op]
    with pytest.raises(UnsupportedError, match="bool"):
        minicomp.trace(fn, x.astype(i32))


def test_integer_operators(rng):
    a = rng.integers(-9, 9, (3, 4)).astype(i32)
    b = rng.integers(1, 5, (4,)).astype(i64)
    check(lambda a, b: (a + b, a * 3, a // b, a % b, a / b, -a, abs(a), a ** 2, a == b), a, b)


# ----------------------------------------------------------------------------------------------
# Ufuncs
# ----------------------------------------------------------------------------------------------

UNARY_UFUNCS = [np.negative, np.absolute, np.exp, np.tanh, np.sin, np.cos, np.floor, np.ceil,
                np.sign, np.reciprocal, np.positive, np.square, np.isnan]
BINARY_UFUNCS = [np.add, np.subtract, np.multiply, np.true_divide, np.floor_divide, np.remainder,
                 np.power, np.maximum, np.minimum, np.equal, np.not_equal, np.less,
                 np.less_equal, np.greater, np.greater_equal]


@pytest.mark.parametrize("ufunc", UNARY_UFUNCS, ids=lambda u: u.__name__)
def test_unary_ufuncs(ufunc, x):
    check(ufunc, x)


@pytest.mark.parametrize("ufunc", [np.log, np.sqrt], ids=lambda u: u.__name__)
def test_ufuncs_of_positive_numbers(ufunc, x):
    check(lambda x: ufunc(np.abs(x) + 0.1), x)


@pytest.mark.parametrize("ufunc", BINARY_UFUNCS, ids=lambda u: u.__name__)
def test_binary_ufuncs(ufunc, rng, x):
    y = (rng.standard_normal(4) + 2).astype(f32)
    check(lambda x, y: (ufunc(x, y), ufunc(y, x), ufunc(x, 2.0)), x, y)


def test_logical_ufuncs(x):
    check(lambda x: (np.logical_and(x > 0, x < 1), np.logical_or(x > 0, x < -1), np.logical_not(x > 0)), x)


def test_ufunc_dtype_argument(x):
    check(lambda x: np.add(x, 1, dtype=np.float64), x)


def test_nan_and_inf_values_flow_like_numpy():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -1.0, 2.0], f32)
    check(lambda x: (np.maximum(x, 0), np.exp(x), np.log(x), x / 0, np.isnan(x), np.sign(x)), x)


def test_ufunc_reduce(x3):
    check(lambda x: (np.add.reduce(x), np.add.reduce(x, axis=-1), np.maximum.reduce(x),
                     np.maximum.reduce(x, axis=(0, 2), keepdims=True), np.minimum.reduce(x, axis=1),
                     np.add.reduce(x, axis=None)), x3)


def test_unsupported_ufunc_method_is_refused(x):
    with pytest.raises(UnsupportedError, match="np.add.accumulate"):
        minicomp.trace(lambda x: np.add.accumulate(x), x)


# ----------------------------------------------------------------------------------------------
# Methods and attributes
# ----------------------------------------------------------------------------------------------


def test_reduction_methods(x3):
    check(lambda x: (x.sum(), x.sum(axis=-1, keepdims=True), x.sum(axis=(0, 2)), x.mean(),
                     x.mean(axis=1), x.max(), x.max(axis=0), x.min(axis=-1, keepdims=True),
                     x.var(), x.var(axis=-1, ddof=1), x.std(), x.std(axis=(0, 1), keepdims=True)), x3)


def test_reduction_methods_on_integers_and_bools(rng):
    a = rng.integers(-9, 9, (3, 4)).astype(i32)
    check(lambda a: (a.sum(), a.sum(axis=0), a.mean(axis=1), a.max(), a.var(), a.std(axis=0),
                     (a > 0).sum(), (a > 0).sum(axis=1), a.sum(dtype=np.float32)), a)


def test_transposing_methods(x, x3):
    check(lambda x: (x.T, x.mT, x.transpose(), x.transpose(1, 0), x.transpose((1, 0)), x.swapaxes(0, 1)), x)
    check(lambda x: (x.T, x.mT, x.transpose(2, 0, 1), x.transpose((1, 2, 0)), x.swapaxes(0, -1)), x3)


def test_reshape_in_both_spellings(x3):
    check(lambda x: (x.reshape(6, 4), x.reshape((4, 6)), x.reshape([2, -1]), x.reshape(-1),
                     x.reshape(24), x.ravel(), x.flatten(), x.squeeze()), x3)


def test_astype(x):
    check(lambda x: (x.astype(np.float64), x.astype("int32"), x.astype(np.int64), x.astype(bool),
                     x.astype(np.float16), x.astype(x.dtype)), x)


def test_other_methods(rng, x):
    v = rng.standard_normal(4).astype(f32)
    check(lambda x: (x.copy(), x.clip(-0.5, 0.5), x.clip(max=0.2), x.dot(v)), x)


def test_static_attributes(x3):
    def fn(x):
        assert (x.shape, x.ndim, x.size, x.dtype, len(x)) == ((2, 3, 4), 3, 24, np.dtype(f32), 2)
        assert (x.itemsize, x.nbytes) == (4, 96)
        return x * x.shape[-1] + x.ndim + x.size + len(x) + np.zeros((), x.dtype)
    check(fn, x3)


def test_len_and_iteration_over_the_first_axis(x3):
    check(lambda x: [row * 2 for row in x] + [len(x) * x], x3)
    check(lambda x: tuple(x[0]), x3)


def test_len_of_a_0d_array_is_a_type_error():
    with pytest.raises(TypeError, match="unsized"):
        minicomp.trace(lambda x: len(x), np.float32(1.0))


# ----------------------------------------------------------------------------------------------
# NumPy functions: every entry of FUNCTIONS
# ----------------------------------------------------------------------------------------------


def test_sum_mean_max_min(x3):
    check(lambda x: (np.sum(x), np.sum(x, axis=0), np.sum(x, axis=(0, 2), keepdims=True),
                     np.sum(x, dtype=np.float64), np.mean(x), np.mean(x, axis=-1),
                     np.mean(x, axis=(0, 1), keepdims=True), np.max(x), np.amax(x, axis=1),
                     np.max(x, axis=-1, keepdims=True), np.min(x, 0), np.amin(x, axis=(1, 2))), x3)


def test_var_std(rng, x3):
    check(lambda x: (np.var(x), np.var(x, axis=1), np.var(x, axis=-1, ddof=1, keepdims=True),
                     np.std(x), np.std(x, axis=0, ddof=1), np.var(x, dtype=np.float64)), x3)
    check(lambda a: (np.var(a), np.std(a, axis=0)), rng.integers(-5, 5, (3, 4)).astype(i32))


def test_transpose_reshape_ravel(x3):
    check(lambda x: (np.transpose(x), np.transpose(x, (1, 0, 2)), np.transpose(x, axes=[2, 0, 1]),
                     np.reshape(x, (6, 4)), np.reshape(x, -1), np.reshape(x, (4, -1)),
                     np.reshape(x, shape=(2, 12)), np.ravel(x)), x3)


def test_swapaxes_moveaxis(x3):
    check(lambda x: (np.swapaxes(x, 0, 2), np.swapaxes(x, -1, 1), np.moveaxis(x, 0, -1),
                     np.moveaxis(x, -1, 0), np.moveaxis(x, [0, 1], [2, 0])), x3)


def test_squeeze_expand_dims(rng, x):
    y = rng.standard_normal((1, 3, 1, 4)).astype(f32)
    check(lambda y: (np.squeeze(y), np.squeeze(y, 0), np.squeeze(y, axis=(0, 2)), y.squeeze(-2)), y)
    check(lambda x: (np.expand_dims(x, 0), np.expand_dims(x, -1), np.expand_dims(x, (0, 3))), x)


def test_broadcast_to_copy_astype(x):
    check(lambda x: (np.broadcast_to(x, (5, 3, 4)), np.broadcast_to(x[:, :1], (3, 4)),
                     np.copy(x), np.astype(x, np.int32), np.astype(x, np.float64)), x)


def test_concatenate(rng, x, x3):
    a = rng.integers(0, 5, (3, 4)).astype(i32)
    check(lambda x, y: (np.concatenate([x, x]), np.concatenate((x, x * 2), axis=1),
                        np.concatenate([x, y[0]], axis=-1), np.concatenate([x, y], axis=None),
                        np.concatenate([x, a]), np.concatenate([x, x], dtype=np.float64)), x, x3)


def test_stack(x):
    check(lambda x: (np.stack([x, x + 1]), np.stack([x, x], axis=1), np.stack((x, x, x), axis=-1)), x)


def test_split_and_array_split(x):
    check(lambda x: np.split(x, 2, axis=1) + np.split(x, [1, 2]) + np.split(x, 3), x)
    check(lambda x: np.array_split(x, 3, axis=1) + np.array_split(x, [1, 5], axis=1)
          + np.array_split(x, 2), x)


def test_split_into_unequal_sections_is_a_shape_error(x):
    with pytest.raises(ShapeError, match="array_split"):
        minicomp.trace(lambda x: np.split(x, 3, axis=1), x)


def test_where(rng, x):
    a = rng.integers(-5, 5, (3, 4)).astype(i32)
    check(lambda x: (np.where(x > 0, x, 0), np.where(x > 0, 1.0, x), np.where(x > 0, x, a),
                     np.where(x > 0, 1.0, 0.0)), x)


def test_where_with_one_argument_is_refused(x):
    with pytest.raises(UnsupportedError, match="data-dependent"):
        minicomp.trace(lambda x: np.where(x > 0), x)


def test_clip(x):
    check(lambda x: (np.clip(x, -0.5, 0.5), np.clip(x, None, 0.1), np.clip(x, -0.1, None)), x)


def test_dot(rng, x):
    v = rng.standard_normal(4).astype(f32)
    check(lambda x, v: (np.dot(x, x.T), np.dot(x, v), np.dot(v, v), np.dot(x, 2.0)), x, v)


def test_filled_likes(rng, x):
    a = rng.integers(0, 5, (2, 3)).astype(i64)
    check(lambda x: (np.zeros_like(x), np.ones_like(x), np.full_like(x, 3.5),
                     np.zeros_like(x, dtype=np.int32), np.ones_like(x, dtype=bool),
                     np.full_like(x, 7, dtype=np.int64)), x)
    check(lambda a: (np.full_like(a, 2.7), np.ones_like(a), np.zeros_like(a, dtype=np.float32)), a)


def test_empty_like_has_the_shape_and_dtype():
    graph = minicomp.trace(lambda x: (np.empty_like(x), np.empty_like(x, dtype=np.int32)),
                           np.ones((2, 5), f64))
    outputs = minicomp.interpret(graph, np.ones((2, 5), f64))
    assert [(o.shape, o.dtype) for o in outputs] == [((2, 5), np.dtype(f64)), ((2, 5), np.dtype(i32))]


def test_shape_ndim_size_functions(x3):
    def fn(x):
        assert (np.shape(x), np.ndim(x), np.size(x), np.size(x, 1)) == ((2, 3, 4), 3, 24, 3)
        return x * np.size(x, -1)
    check(fn, x3)


def test_take_and_take_along_axis(rng, x3):
    ids = rng.integers(-3, 3, (2, 5)).astype(i64)
    order = rng.integers(0, 4, (2, 3, 2)).astype(i32)
    check(lambda x, ids: (np.take(x, ids, axis=1), np.take(x, ids), np.take(x, [7, -30], axis=2, mode="wrap"),
                          np.take(x, 9, axis=-1, mode="clip"), np.take(x, [], axis=0)), x3, ids)
    check(lambda x, o: (np.take_along_axis(x, o, axis=2), np.take_along_axis(x, o[:, :1], -1),
                        np.take_along_axis(x, o.reshape(-1), axis=None)), x3, order)


def test_numpy_surface_of_real_programs(x3):
    """The functions of frontend/surface.py and einsum.py (tests/test_numpy_surface.py tests each
    through C on drawn shapes; here each is traced once and interpreted)."""
    windows = np.lib.stride_tricks.sliding_window_view
    check(lambda x: (np.hstack([x, x]), np.vstack([x, x]), np.dstack([x, x]), np.column_stack([x[0], x[1]]),
                     np.atleast_1d(x[0, 0, 0]), np.atleast_2d(x[0, 0]), np.atleast_3d(x[0]),
                     np.pad(x, 1), np.pad(x, ((0, 1), (2, 0), (1, 1)), "reflect"), np.repeat(x, 2, axis=1),
                     np.tile(x, 2), np.tril(x), np.triu(x, 1), np.argmax(x, axis=-1), np.argmin(x),
                     np.any(x > 0, axis=0), np.all(x > 0), np.cumsum(x, axis=1), np.cumprod(x[0]),
                     np.einsum("abc,adc->abd", x, x), np.lib.stride_tricks.sliding_window_view(x, 2, axis=-1),
                     windows(x, (2, 2), axis=(0, 2))), x3)


def test_every_registered_function_is_tested_here():
    """A function added to FUNCTIONS must get a test in this file too."""
    source = open(__file__).read()
    missing = [_numpy_name(f) for f in FUNCTIONS if f"{_numpy_name(f)}(" not in source]
    assert not missing, f"no test calls {missing}"


# ----------------------------------------------------------------------------------------------
# Basic indexing
# ----------------------------------------------------------------------------------------------

INDEXES = [
    0, -1, 3, (1, 2), (-1, -2, -3), (0, 0, 0), slice(1, 3), slice(None, None, 2),
    slice(None, None, -1), slice(3, 0, -2), slice(-2, None), slice(-100, 100), slice(5, 1),
    slice(0, 0), (slice(None), slice(4, None, -2)), (slice(-1, None, -1), 2),
    (slice(None, None, -2), slice(None, None, -1), slice(None, None, -3)),
    None, (None, 0), (0, None, None), Ellipsis, (Ellipsis, 0), (0, Ellipsis), (0, Ellipsis, None),
    (Ellipsis, None, slice(1, -1)), (1, None, slice(None, None, -1), -1), (), (slice(None),),
    (np.int64(1), slice(np.int64(1), None)),
]


@pytest.mark.parametrize("key", INDEXES, ids=repr)
def test_basic_indexing(key, rng):
    x = rng.standard_normal((4, 5, 6)).astype(f32)
    check(lambda x: x[key], x)


def test_chained_indexing_and_slices_of_results(rng):
    x = rng.standard_normal((4, 5, 6)).astype(f32)
    check(lambda x: ((x * 2)[1:, ::-1][..., 0][::2], x[::-1][::-1], x[:, None][2, :, 1:4]), x)


def test_index_out_of_bounds_is_a_shape_error(x):
    with pytest.raises(ShapeError, match="out of bounds"):
        minicomp.trace(lambda x: x[3], x)
    with pytest.raises(ShapeError, match="too many indices"):
        minicomp.trace(lambda x: x[0, 0, 0], x)
    with pytest.raises(ValueError):
        x[::0]  # NumPy's error too
    with pytest.raises(ShapeError, match="step cannot be zero"):
        minicomp.trace(lambda x: x[::0], x)


def test_reversed_slices_survive_the_text_form_and_copying(rng):
    x = rng.standard_normal((5, 4)).astype(f32)
    graph = minicomp.trace(lambda x: (x[::-1], x[2::-2, ::-3], x[:0:-1]), x)
    for again in (minicomp.Graph.parse(graph.to_text(None)), graph.copy()):
        again.verify()
        assert_close(minicomp.interpret(again, x), [x[::-1], x[2::-2, ::-3], x[:0:-1]])


# ----------------------------------------------------------------------------------------------
# Constants, Python scalars, outputs
# ----------------------------------------------------------------------------------------------


def test_closed_over_arrays_become_constants(rng, x):
    c = rng.standard_normal(4).astype(f32)
    graph = minicomp.trace(lambda x: x * c + 1.0, x)
    constants = [n for n in graph.nodes() if n.op == "constant"]
    assert any(n.shape == (4,) and np.array_equal(n.attrs["value"], c) for n in constants)
    assert_close(minicomp.interpret(graph, x)[0], x * c + 1.0)


def test_the_same_array_used_twice_is_one_constant(rng, x):
    c = rng.standard_normal(4).astype(f32)
    graph = minicomp.trace(lambda x: x * c + c - c, x)
    assert [n.op for n in graph.nodes()].count("constant") == 1
    other = c.copy()  # an equal but distinct array is a second constant
    graph = minicomp.trace(lambda x: x * c + other, x)
    assert [n.op for n in graph.nodes()].count("constant") == 2


def test_constants_are_snapshots(x):
    c = np.ones(4, f32)
    graph = minicomp.trace(lambda x: x + c, x)
    c[:] = 100  # changing the array after tracing does not change the graph
    assert_close(minicomp.interpret(graph, x)[0], x + np.float32(1))


DTYPES = [np.float16, f32, f64, i32, i64, np.bool_]
SCALARS = [2, 2.5, True, -3]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
def test_python_scalars_are_typed_as_numpy_2_does(dtype, scalar):
    a = np.arange(1, 4).astype(dtype)
    for fn in (lambda a: a + scalar, lambda a: scalar * a, lambda a: a / scalar,
               lambda a: np.maximum(a, scalar), lambda a: np.where(a > 1, a, scalar)):
        try:
            expected = fn(a)
        except TypeError:  # NumPy refuses it (e.g. bool - bool): minicomp must refuse it too
            with pytest.raises(minicomp.MinicompError):
                minicomp.trace(fn, a)
            continue
        actual = check(fn, a)
        assert actual.dtype == expected.dtype


def test_numpy_scalars_promote_like_arrays(x):
    check(lambda x: (x * np.float64(2.5), x + np.float32(1), x * np.int64(3)), x)


def test_a_python_int_too_large_for_the_array_dtype_is_refused():
    a = np.arange(3, dtype=i32)
    with pytest.raises(OverflowError):
        a + 2 ** 40  # NumPy 2 refuses it as well
    with pytest.raises(UnsupportedError, match="out of bounds for int32"):
        minicomp.trace(lambda a: a + 2 ** 40, a)


def test_tuple_and_list_outputs(x):
    actual, expected = run_traced(lambda x: (x + 1, x * 2), x)
    assert isinstance(actual, tuple) and len(actual) == 2
    assert_close(actual, expected)
    actual, expected = run_traced(lambda x: [x, x.sum(), x], x)
    assert isinstance(actual, list) and len(actual) == 3
    assert_close(actual, expected)


def test_returning_an_input_or_a_constant(rng, x):
    c = rng.standard_normal(2).astype(f32)
    graph = minicomp.trace(lambda x: (x, c, 1.5), x)
    assert graph.outputs[0] is graph.inputs[0]
    assert [o.op for o in graph.outputs[1:]] == ["constant", "constant"]
    got = minicomp.interpret(graph, x)
    assert_close(got, [x, c, np.asarray(1.5)])
    assert got[0] is not x and not np.shares_memory(got[0], x)


def test_static_arguments_are_passed_through(x3):
    check(lambda x, axis, scale: x.sum(axis=axis) * scale, x3, 1, 0.5)
    graph = minicomp.trace(lambda x, axis: x.max(axis=axis), x3, (0, 2))
    assert len(graph.inputs) == 1 and graph.outputs[0].shape == (3,)


def test_returning_something_that_is_not_an_array_is_refused(x):
    with pytest.raises(UnsupportedError, match="returned a bytearray"):
        minicomp.trace(lambda x: {"y": x, "raw": bytearray(2)}, x)


def test_tensor_types_trace_without_data():
    graph = minicomp.trace(lambda x, w: np.maximum(x @ w, 0), minicomp.TensorType((8, 16), "f32"),
                           minicomp.TensorType((16, 4), "f32"))
    assert [i.name for i in graph.inputs] == ["x", "w"]
    assert graph.outputs[0].type == minicomp.TensorType((8, 4), "f32")


# ----------------------------------------------------------------------------------------------
# In-place operators
# ----------------------------------------------------------------------------------------------


def test_inplace_update_of_a_local_array_is_seen_by_aliases(x):
    def fn(x):
        y = x + 1
        alias = y
        y += 2
        y *= x
        y -= 0.5
        y /= 3
        y **= 2
        y //= 0.25
        y %= 7
        return y, alias
    actual = check(fn, x)
    assert_close(actual[1], actual[0])


def test_inplace_update_keeps_the_dtype_as_numpy_does(x):
    def fn(x):
        y = x * 2
        y += np.ones(4, np.float64)  # NumPy casts the float64 result into the float32 array
        n = (x > 0).astype(np.int32)
        n += np.int64(3)
        return y, n
    check(fn, x)


def test_inplace_update_that_numpy_cannot_cast_is_refused(x):
    def fn(x):
        n = (x > 0).astype(np.int32)
        n += 1.5
        return n
    with pytest.raises(TypeError):
        fn(x)
    with pytest.raises(DTypeError, match="same_kind"):
        minicomp.trace(fn, x)


def test_inplace_update_that_would_broadcast_is_refused(x):
    def fn(x):
        y = x + 1
        y += np.ones((2, 3, 4), f32)
        return y
    with pytest.raises(ValueError):
        fn(x)
    with pytest.raises(ShapeError, match="non-broadcastable"):
        minicomp.trace(fn, x)


def test_inplace_update_of_an_argument_becomes_an_output_that_updates_it(x):
    def fn(x):
        x += 1
        return x * 2
    graph = minicomp.trace(fn, x)
    assert graph.updated_inputs == {0: 1} and len(graph.outputs) == 2  # tests/test_inplace.py runs it


@pytest.mark.parametrize("make_view", [lambda y: y[1:], lambda y: y[None], lambda y: y[..., 0]])
def test_inplace_update_of_a_basic_index_view_writes_through_into_its_base(make_view, x):
    def fn(x):
        y = x + 1
        v = make_view(y)
        v += 1
        return y, v
    check(fn, x)


_BASIC_INDEX_VIEWS = [lambda y: y[1:], lambda y: y[None]]


@pytest.mark.parametrize("make_view", [
    lambda y: y.T, *_BASIC_INDEX_VIEWS, lambda y: y.reshape(-1),
    lambda y: np.broadcast_to(y, (2, 3, 4)), lambda y: np.expand_dims(y, 0),
])
def test_inplace_update_of_a_view_or_of_an_array_with_a_view(make_view, x):
    def update_view(x):
        v = make_view(x + 1)
        v += 1
        return v

    def update_base(x):
        y = x + 1
        v = make_view(y)
        y += 1
        return y, v

    check(update_base, x)  # the view is made again from the written base: as NumPy
    if make_view in _BASIC_INDEX_VIEWS:
        check(update_view, x)  # written through into the base: as NumPy
    else:
        with pytest.raises(UnsupportedError, match="view"):
            minicomp.trace(update_view, x)


# ----------------------------------------------------------------------------------------------
# Refused constructs
# ----------------------------------------------------------------------------------------------


def data_dependent_if(x):
    if x > 0:
        return x
    return -x


def item_assignment_into_a_transpose(x):
    y = (x + 1).T
    y[0] = 1
    return y


@pytest.mark.parametrize("fn, words", [
    (data_dependent_if, ["bool()", "np.where"]),
    (lambda x: x if x else x, ["bool()", "control flow"]),
    (lambda x: np.asarray(x), ["np.asarray", "tracing"]),
    (lambda x: np.array(x), ["np.array", "tracing"]),
    (lambda x: float(x[0, 0]), ["float()"]),
    (lambda x: x.item(), [".item()"]),
    (lambda x: x.tolist(), [".tolist()"]),
    (lambda x: x[x > 0], ["traced boolean mask", "data-dependent shape", "np.where(mask, x, 0)"]),
    (lambda x: x[x.astype(np.float64)], ["float64 array", "integer", "astype"]),
    (lambda x: x[True], ["advanced indexing", "bool"]),  # NumPy: a new axis, not x[1]
    (lambda x: x[np.True_, 0], ["advanced indexing", "bool"]),
    (lambda x: x["a"], ["is a str, not an index", "f32[3,4]"]),
    (item_assignment_into_a_transpose, ["writing into a reshaped, transposed", "copy"]),
    (lambda x: np.sort(x), ["np.sort", "supported NumPy functions", "np.sum"]),
    (lambda x: np.fft.fft(x), ["np.fft.fft", "supported NumPy functions"]),
    (lambda x: np.unique(x), ["np.unique", "supported NumPy functions"]),
    (lambda x: np.linalg.norm(x), ["np.linalg.norm"]),
    (lambda x: np.logaddexp(x, x), ["np.logaddexp", "supported ufuncs", "np.exp"]),
    (lambda x: np.sum(x, where=x > 0), ["np.sum", "where"]),
    (lambda x: np.exp(x, out=np.zeros((3, 4), np.float32)), ["np.exp", "out=a", "a = np.add(...)"]),
    (lambda x: x.reshape(4, 3, order="F"), ["order='F'"]),
], ids=lambda v: v.__name__ if callable(v) else None)
def test_untraceable_code_raises_unsupported_error_with_a_helpful_message(fn, words, x):
    with pytest.raises(UnsupportedError) as info:
        minicomp.trace(fn, x)
    message = str(info.value)
    for word in words:
        assert word in message
    assert os.path.basename(__file__) in message  # the user's line


def test_a_proxy_from_another_trace_is_refused(x):
    leaked = collections.deque()  # a library's container: minicomp does not take stored values out of it
    minicomp.trace(lambda x: leaked.append(x) or x, x)
    line = inspect.currentframe().f_lineno + 2
    with pytest.raises(UnsupportedError, match=f"another trace.*test_tracing.py:{line}"):
        minicomp.trace(lambda y: y + leaked[0], x)


# ----------------------------------------------------------------------------------------------
# Source locations
# ----------------------------------------------------------------------------------------------


def test_every_node_records_the_users_line(x):
    lines = {}

    def fn(x):
        y = np.exp(x) * 2.0; lines["exp"] = here()  # noqa: E702
        z = y.sum(axis=-1, keepdims=True); lines["sum"] = here()  # noqa: E702
        w = (y / z)[:, 1:]; lines["div"] = here()  # noqa: E702
        return w

    graph = minicomp.trace(fn, x); trace_line = here()  # noqa: E702
    by_op = {n.op: n for n in graph.nodes()}
    assert loc_is_this_file(by_op["input"].loc, trace_line)
    assert loc_is_this_file(by_op["exp"].loc, lines["exp"])
    assert loc_is_this_file(by_op["mul"].loc, lines["exp"])
    assert loc_is_this_file(by_op["constant"].loc, lines["exp"])  # the 2.0
    assert loc_is_this_file(by_op["sum"].loc, lines["sum"])
    assert loc_is_this_file(by_op["div"].loc, lines["div"])
    assert loc_is_this_file(by_op["slice"].loc, lines["div"])
    assert all(n.loc for n in graph.nodes())


def test_locations_through_numpy_functions_point_at_the_caller(x):
    lines = {}

    def fn(x):
        y = np.var(x, axis=0) + np.clip(x, 0, 1).mean(); lines["y"] = here()  # noqa: E702
        return y

    graph = minicomp.trace(fn, x)
    assert all(loc_is_this_file(n.loc, lines["y"]) for n in graph.nodes() if n.op != "input")


@pytest.mark.parametrize("fn", [
    lambda x: nn.softmax(x), lambda x: nn.gelu(x, approximate="none"), lambda x: nn.layer_norm(x),
    lambda x: nn.scaled_dot_product_attention(x, x, x, causal=True), lambda x: nn.silu(x),
])
def test_nn_nodes_point_at_the_callers_line_not_at_nn_py(fn, x):
    graph = minicomp.trace(fn, x)
    ops = [n for n in graph.nodes() if n.op != "input"]
    assert len(ops) > 1 and all("nn.py" not in n.loc for n in ops)
    assert all(loc_is_this_file(n.loc, fn.__code__.co_firstlineno) for n in ops)


def test_nn_called_directly_from_the_traced_function_points_there(x):
    lines = {}

    def fn(x):
        y = nn.layer_norm(x, eps=1e-3); lines["ln"] = here()  # noqa: E702
        return y

    graph = minicomp.trace(fn, x)
    assert all(loc_is_this_file(n.loc, lines["ln"]) for n in graph.nodes() if n.op != "input")


def test_the_text_form_shows_the_location(x):
    graph = minicomp.trace(lambda x: np.tanh(x), x); line = here()  # noqa: E702
    assert f"{os.path.basename(__file__)}:{line}" in graph.to_text()


# ----------------------------------------------------------------------------------------------
# Operators added for completeness: exact NumPy results where the table has the op
# ----------------------------------------------------------------------------------------------


def test_xor_of_bools_and_logical_xor(rng):
    a, b = rng.random(12) > 0.5, rng.random(12) > 0.5
    check(lambda a, b: (a ^ b, np.bitwise_xor(a, b), np.logical_xor(a, b), True ^ a), a, b)
    x = rng.integers(-2, 3, 12).astype(f32)
    x[0] = np.nan
    check(lambda x, y: np.logical_xor(x, y), x, x[::-1].copy())


def test_divmod_is_floor_division_and_remainder(rng):
    a = rng.integers(-9, 9, (3, 4)).astype(i32)
    b = rng.integers(1, 5, 4).astype(i32) * rng.choice([-1, 1], 4).astype(i32)
    check(lambda a, b: divmod(a, b), a, b)
    check(lambda a: divmod(7.5, a), a.astype(f64))


def test_in_place_xor_and_or_rebind_like_numpy(rng):
    def fn(a, b):
        c = a & b
        alias = c
        c |= b
        c ^= a
        return alias
    check(fn, rng.random(8) > 0.5, rng.random(8) > 0.5)


def test_copy_module_copies_a_proxy(x):
    import copy

    check(lambda x: copy.copy(x) + copy.deepcopy(x), x)


def test_byte_swapped_arguments_trace_as_their_native_dtype(x):
    graph = minicomp.trace(lambda x: x * 2, x.astype(">f4"))
    assert graph.inputs[0].dtype == np.float32
    assert_close(minicomp.interpret(graph, x.astype(">f4"))[0], x * 2)
