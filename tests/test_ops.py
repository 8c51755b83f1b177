"""Every op of the op table against NumPy, on hypothesis-drawn shapes, dtypes and attributes.

Each op family has one parametrized test (unary, binary, where/cast/constant, reductions,
movement ops, concatenate, matmul, conv2d). Every example is checked twice:

(a) **graph API**: the op is built directly with ``Graph.add_input`` + ``Graph.add_op`` (attrs
    as the op table spells them); its inferred ``node.type`` must be the shape and dtype of
    NumPy's own result, and ``minicomp.interpret`` must give exactly NumPy's result;
(b) **tracing**: the natural NumPy spelling (``x + y``, ``np.exp(x)``, ``x.sum(axis=-1)``,
    ``x[1:, ::2]``, ``x @ y``, ``x.astype(d)``, ...) is traced and interpreted, and must give
    what NumPy gives when the same function runs on the arrays directly.

Where NumPy raises (``-x`` on bool, ``max`` over a zero-size axis, shapes that do not broadcast,
a matmul contraction mismatch, a bad axis, ...), minicomp must raise already while building or
tracing: ``DTypeError`` where NumPy raises ``TypeError``, ``ShapeError`` where it raises
``ValueError``/``IndexError`` (``i32_array + 2**40``: NumPy's ``OverflowError``, any
``MinicompError``). Where NumPy's result has a dtype outside minicomp's six (``bool // bool``
is int8), minicomp must refuse with ``DTypeError``.

Inputs: shapes of up to 4 dimensions with sides 0..4 (so size-0 and size-1 axes and 0-d arrays
occur), all six dtypes, and values that are small multiples of 1/4 (exact in every float dtype)
with, in the elementwise and reduction families, a sprinkling of 0, -0.0, nan and +-inf: every
op here is defined by a NumPy function, so nan and inf results must match NumPy's too
(``assert_close`` compares with ``equal_nan=True``). Integer floor division and modulo by zero
*are* included on purpose: NumPy returns 0 (with a warning) and minicomp must return the same 0.

Excluded on purpose, each said again where it happens: integers raised to negative integer
powers (NumPy's error depends on the data, which a trace does not have); ``bool_array ** 2``
(NumPy's fast path makes it int8, np.power makes it int64); ``axis=0``/``-1`` on 0-d arrays
(NumPy's legacy exception; minicomp refuses it, see ``test_0d_axis_is_refused``); and a
non-bool ``np.where`` condition (minicomp asks for a bool one, ``test_where_needs_a_bool_condition``).
"""

from __future__ import annotations

import math
import operator
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicomp
from minicomp import Graph, TensorType
from minicomp.errors import DTypeError, MinicompError, ShapeError
from minicomp.ir.dtypes import DTYPES
from minicomp.ir.ops import OPS
from minicomp.testing import assert_close

DTYPE_NAMES = list(DTYPES)  # f16 f32 f64 i32 i64 bool
SUPPORTED = set(DTYPES.values())


# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------

dtypes = st.sampled_from(DTYPE_NAMES)


def shapes(min_dims=0, max_dims=4, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side)


@st.composite
def broadcastable_shapes(draw, n=2, max_dims=4, max_side=4):
    """``n`` shapes that broadcast together under NumPy's rules.

    Each is a suffix of one common shape with some dimensions replaced by 1, so ranks differ,
    0-d shapes occur, and size-0 axes meet size-1 axes (which broadcast to 0).
    """
    full = draw(shapes(0, max_dims, max_side))
    result = []
    for _ in range(n):
        rank = draw(st.integers(0, len(full)))
        result.append(tuple(1 if draw(st.booleans()) else d for d in full[len(full) - rank:]))
    return tuple(result)


@st.composite
def arrays(draw, dtype, shape, specials=False, low=-4, high=4):
    """A NumPy array of ``dtype`` and ``shape``: small multiples of 1/4 for floats, integers in
    ``[low, high]``, random bools; with ``specials``, some float elements become 0, -0.0, nan
    or +-inf. Values come from a NumPy generator seeded by hypothesis (fast for any size)."""
    dtype = np.dtype(DTYPES.get(dtype, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "i":
        return rng.integers(low, high + 1, shape).astype(dtype)
    values = rng.integers(4 * low, 4 * high + 1, shape) / 4
    if specials and draw(st.booleans()):
        mask = rng.random(shape) < 0.25
        values = np.where(mask, rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf], shape), values)
    return values.astype(dtype)


def axis_args(ndim):
    """``axis=`` arguments: None, an int or a tuple, negative and out-of-range ones included
    (so are repeated axes, which NumPy refuses)."""
    axis = st.integers(-ndim - 1, ndim)
    return st.one_of(st.none(), axis, st.lists(axis, max_size=min(ndim + 1, 3)).map(tuple))


def numpy_0d_axis_quirk(ndim, axis) -> bool:
    """NumPy's legacy exception: ufunc reductions and np.squeeze accept ``axis=0``/``-1`` on a
    0-d array (np.mean does not). minicomp refuses those like any out-of-range axis; this is a
    deliberate difference, kept out of the random tests (see test_0d_axis_is_refused)."""
    return ndim == 0 and isinstance(axis, int) and axis in (0, -1)


# ----------------------------------------------------------------------------------------------
# The two checks
# ----------------------------------------------------------------------------------------------


def numpy_result(fn, *args):
    """``fn(*args)`` as an array, or the exception NumPy raised (warnings silenced)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return np.asarray(fn(*args))
        except (TypeError, ValueError, IndexError, OverflowError) as exc:
            return exc


def error_like(exc: Exception) -> type[MinicompError]:
    """The error minicomp must raise where NumPy raised ``exc``: ``DTypeError`` for a
    ``TypeError``, ``ShapeError`` for a ``ValueError``/``IndexError`` (bad shape or axis)."""
    if isinstance(exc, TypeError):
        return DTypeError
    return ShapeError if isinstance(exc, (ValueError, IndexError)) else MinicompError


def check_graph(op: str, arrays, attrs: dict | None, numpy_fn) -> None:
    """(a): ``op(*arrays, **attrs)`` built with the graph API agrees with ``numpy_fn(*arrays)``."""
    expected = numpy_result(numpy_fn, *arrays)
    graph = Graph(op)
    inputs = [graph.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]
    if isinstance(expected, Exception):
        with pytest.raises(error_like(expected)):
            graph.add_op(op, inputs, attrs)
        return
    if expected.dtype not in SUPPORTED:
        with pytest.raises(DTypeError):
            graph.add_op(op, inputs, attrs)
        return
    node = graph.add_op(op, inputs, attrs)
    assert node.type == TensorType.of(expected), f"inferred {node.type}, NumPy gives {TensorType.of(expected)}"
    graph.set_outputs([node])
    graph.verify()  # among others: the attributes add_op stored are canonical (normalize twice)
    assert_close(minicomp.interpret(graph, *arrays)[0], expected)


def check_trace(fn, arrays, numpy_fn=None) -> None:
    """(b): tracing ``fn`` and interpreting agrees with NumPy running ``numpy_fn`` (default:
    ``fn`` itself) on the arrays directly; where NumPy raises, the trace must raise."""
    expected = numpy_result(numpy_fn or fn, *arrays)
    if isinstance(expected, Exception):
        with pytest.raises(error_like(expected)):
            minicomp.trace(fn, *arrays)
        return
    if expected.dtype not in SUPPORTED:
        with pytest.raises(DTypeError):
            minicomp.trace(fn, *arrays)
        return
    graph = minicomp.trace(fn, *arrays)
    assert_close(minicomp.interpret(graph, *arrays)[0], expected)


# ----------------------------------------------------------------------------------------------
# Elementwise unary ops
# ----------------------------------------------------------------------------------------------


def _float_type(x):
    """The float dtype NumPy's exp gives for ``x`` (f16 for bool, f64 for integers)."""
    return np.exp(np.zeros((), x.dtype)).dtype


def _sigmoid(x):
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(_float_type(x))


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(_float_type(x))


def _invert_bool(x):
    """``~x`` on bool arrays (elsewhere it is bitwise not, which minicomp does not have)."""
    return ~x if x.dtype == np.bool_ else np.logical_not(x)


# op -> (NumPy meaning, [(traced spelling, NumPy spelling or None for the same), ...])
UNARY = {
    "neg": (np.negative, [(lambda x: -x, None), (np.negative, None)]),
    "abs": (np.absolute, [(abs, None), (np.abs, None)]),
    "exp": (np.exp, [(np.exp, None)]),
    "log": (np.log, [(np.log, None)]),
    "sqrt": (np.sqrt, [(np.sqrt, None)]),
    "rsqrt": (lambda x: 1 / np.sqrt(x), [(minicomp.nn.rsqrt, lambda x: 1 / np.sqrt(x))]),
    "tanh": (np.tanh, [(np.tanh, None)]),
    "sigmoid": (_sigmoid, [(minicomp.nn.sigmoid, _sigmoid)]),
    "erf": (_erf, [(minicomp.nn.erf, _erf)]),
    "reciprocal": (np.reciprocal, [(np.reciprocal, None)]),
    "sin": (np.sin, [(np.sin, None)]),
    "cos": (np.cos, [(np.cos, None)]),
    "floor": (np.floor, [(np.floor, None)]),
    "ceil": (np.ceil, [(np.ceil, None)]),
    "sign": (np.sign, [(np.sign, None)]),
    "logical_not": (np.logical_not, [(np.logical_not, None), (_invert_bool, None)]),
}


@pytest.mark.parametrize("op", sorted(UNARY))
@given(data=st.data(), dtype=dtypes, shape=shapes())
def test_unary(op, data, dtype, shape):
    numpy_fn, spellings = UNARY[op]
    x = data.draw(arrays(dtype, shape, specials=True), "x")
    check_graph(op, [x], None, numpy_fn)
    fn, numpy_spelling = data.draw(st.sampled_from(spellings), "spelling")
    check_trace(fn, [x], numpy_spelling)


# ----------------------------------------------------------------------------------------------
# Broadcasting binary ops
# ----------------------------------------------------------------------------------------------


def _and_bool(x, y):
    return x & y if x.dtype == y.dtype == np.bool_ else np.logical_and(x, y)


def _or_bool(x, y):
    return x | y if x.dtype == y.dtype == np.bool_ else np.logical_or(x, y)


# op -> (NumPy ufunc, Python operator spelling)
BINARY = {
    "add": (np.add, operator.add), "sub": (np.subtract, operator.sub),
    "mul": (np.multiply, operator.mul), "div": (np.true_divide, operator.truediv),
    "floordiv": (np.floor_divide, operator.floordiv), "mod": (np.remainder, operator.mod),
    "pow": (np.power, operator.pow),
    "maximum": (np.maximum, np.maximum), "minimum": (np.minimum, np.minimum),
    "eq": (np.equal, operator.eq), "ne": (np.not_equal, operator.ne),
    "lt": (np.less, operator.lt), "le": (np.less_equal, operator.le),
    "gt": (np.greater, operator.gt), "ge": (np.greater_equal, operator.ge),
    "logical_and": (np.logical_and, _and_bool), "logical_or": (np.logical_or, _or_bool),
}


@st.composite
def binary_operands(draw, op, shape_pair=broadcastable_shapes()):
    (sa, sb), da, db = draw(shape_pair), draw(dtypes), draw(dtypes)
    a, b = draw(arrays(da, sa, specials=True), "a"), draw(arrays(db, sb, specials=True), "b")
    if op == "pow" and a.dtype.kind in "bi" and b.dtype.kind in "bi":
        b = np.abs(b)  # integer ** negative integer: NumPy raises depending on the data
    return a, b


def trace_binary(fn, a, b, mode):
    """Trace ``fn`` with both operands as arguments, or one of them a closed-over constant."""
    if mode == "args":
        check_trace(fn, [a, b])
    elif mode == "const_left":
        check_trace(lambda y: fn(a, y), [b])
    else:
        check_trace(lambda x: fn(x, b), [a])


@pytest.mark.parametrize("op", sorted(BINARY))
@given(data=st.data(), mode=st.sampled_from(["args", "const_left", "const_right"]))
def test_binary(op, data, mode):
    ufunc, spelled = BINARY[op]
    a, b = data.draw(binary_operands(op))
    check_graph(op, [a, b], None, ufunc)
    trace_binary(data.draw(st.sampled_from([ufunc, spelled]), "spelling"), a, b, mode)


@given(operands=binary_operands("add", st.tuples(shapes(), shapes())))
def test_binary_shapes_that_may_not_broadcast(operands):
    """Independent shapes: minicomp raises ShapeError exactly where NumPy refuses."""
    check_graph("add", list(operands), None, np.add)
    check_trace(operator.add, list(operands))


def test_bool_negative_and_subtract_are_refused():
    b = np.array([True, False])
    for fn in (lambda x: -x, lambda x: x - x, np.sign):
        with pytest.raises(DTypeError):
            minicomp.trace(fn, b)


# (spelling, Python scalars to try with it)
SCALAR_CASES = [
    (lambda x, s: x + s, [0, 2, -3, 2.5, True, 2**40]),
    (lambda x, s: s + x, [2, 2.5, False]),
    (lambda x, s: x - s, [2, -0.5, True]),
    (lambda x, s: s - x, [3, 1.5]),
    (lambda x, s: x * s, [2, 2.0, -1.5, True, 2**40]),
    (lambda x, s: x / s, [2, 0.5, 0]),
    (lambda x, s: s / x, [1, 1.0]),
    (lambda x, s: x // s, [2, 0, 1.5]),
    (lambda x, s: x % s, [3, 0, 2.5]),
    # no negative ints (a data-dependent error), no 2: NumPy computes bool ** 2 as np.square,
    # which gives int8 where np.power(bool, 2) gives int64
    (lambda x, s: x ** s, [3, 0, 0.5, 2.0]),
    (lambda x, s: s ** x, [2.0, 0.5]),
    (lambda x, s: x < s, [1, 0.5, True]),
    (lambda x, s: x == s, [1, 1.0, False]),
    (lambda x, s: np.maximum(x, s), [0, 0.5]),
    (lambda x, s: np.where(x > 1, x, s), [0, -1.5, True]),
]


@pytest.mark.parametrize("case", range(len(SCALAR_CASES)))
@given(data=st.data(), dtype=dtypes, shape=shapes(max_dims=2))
def test_python_scalar_promotion(case, data, dtype, shape):
    """Python scalars are weakly typed as in NumPy 2: f32 * 2.0 is f32, f16 + 2 is f16,
    i32 + 2.5 is f64, bool + 1 is i64, and i32 + 2**40 overflows (an error in both)."""
    fn, scalars = SCALAR_CASES[case]
    scalar = data.draw(st.sampled_from(scalars), "scalar")
    x = data.draw(arrays(dtype, shape), "x")
    check_trace(lambda x: fn(x, scalar), [x])


def test_python_scalar_promotion_examples():
    f16, f32, i32, x_bool = (np.ones(3, d) for d in (np.float16, np.float32, np.int32, np.bool_))
    for fn, x, dtype in [(lambda x: x * 2.0, f32, np.float32), (lambda x: x + 2, f16, np.float16),
                         (lambda x: x + 2.5, i32, np.float64), (lambda x: 2 * x, i32, np.int32),
                         (lambda x: x + 1, x_bool, np.int64), (lambda x: x > 1, f16, np.bool_)]:
        assert fn(x).dtype == dtype  # NumPy's own answer
        assert minicomp.trace(fn, x).outputs[0].dtype == dtype


# ----------------------------------------------------------------------------------------------
# where, cast, constant
# ----------------------------------------------------------------------------------------------


@given(data=st.data(), shapes=broadcastable_shapes(3), da=dtypes, db=dtypes)
def test_where(data, shapes, da, db):
    cond = data.draw(arrays("bool", shapes[0]), "cond")
    a, b = data.draw(arrays(da, shapes[1], specials=True), "a"), data.draw(arrays(db, shapes[2]), "b")
    check_graph("where", [cond, a, b], None, np.where)
    check_trace(np.where, [cond, a, b])
    check_trace(lambda c, a: np.where(c, a, b), [cond, a])


@pytest.mark.parametrize("dtype", DTYPE_NAMES[:-1])
def test_where_op_needs_a_bool_condition_np_where_reads_any(dtype):
    """The where op takes a bool condition; np.where reads any condition by its truth value, as
    NumPy does (traced as ``c != 0``: NaN is true)."""
    cond, x = np.array([0, 1, -2]).astype(DTYPES[dtype]), np.arange(3, dtype=np.float32)
    check_trace(lambda c, x: np.where(c, x, 0.0), [cond, x])
    graph = Graph()
    with pytest.raises(DTypeError):
        graph.add_op("where", [graph.add_input(n, TensorType.of(v)) for n, v in
                               (("c", cond), ("x", x), ("y", x))])


@given(data=st.data(), source=dtypes, target=dtypes, shape=shapes(),
       spell=st.sampled_from(["short", "numpy"]))
def test_cast(data, source, target, shape, spell):
    # nan/inf only where the cast is defined for them (not float -> int)
    x = data.draw(arrays(source, shape, specials=target[0] == "f" or target == "bool"), "x")
    dtype = target if spell == "short" else DTYPES[target]
    check_graph("cast", [x], {"dtype": dtype}, lambda x: x.astype(DTYPES[target]))
    check_trace(lambda x: x.astype(DTYPES[target]), [x])
    check_trace(lambda x: np.astype(x, DTYPES[target]), [x])


@given(data=st.data(), dtype=dtypes, shape=shapes())
def test_constant(data, dtype, shape):
    value = data.draw(arrays(dtype, shape, specials=True), "value")
    check_graph("constant", [], {"value": value}, lambda: value.copy())
    check_trace(lambda x: x + value, [np.zeros((), value.dtype)])


def test_constant_of_an_unsupported_dtype_is_refused():
    with pytest.raises(DTypeError):
        Graph().add_op("constant", [], {"value": np.zeros(3, np.uint8)})


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------

# op -> NumPy spellings: the NumPy function, the method, the ufunc's reduce where there is one
REDUCTIONS = {
    "sum": [np.sum, "sum", np.add.reduce],
    "mean": [np.mean, "mean"],
    "max": [np.max, "max", np.amax, np.maximum.reduce],
    "min": [np.min, "min", np.amin, np.minimum.reduce],
}


def _reduce_fn(spelling, axis, keepdims):
    if isinstance(spelling, str):
        return lambda x: getattr(x, spelling)(axis=axis, keepdims=keepdims)
    return lambda x: spelling(x, axis=axis, keepdims=keepdims)


@pytest.mark.parametrize("op", sorted(REDUCTIONS))
@given(data=st.data(), dtype=dtypes, shape=shapes(), keepdims=st.booleans())
def test_reduction(op, data, dtype, shape, keepdims):
    x = data.draw(arrays(dtype, shape, specials=True), "x")
    axis = data.draw(axis_args(x.ndim).filter(lambda a: not numpy_0d_axis_quirk(x.ndim, a)), "axis")
    check_graph(op, [x], {"axes": axis, "keepdims": keepdims}, _reduce_fn(REDUCTIONS[op][0], axis, keepdims))
    spelling = data.draw(st.sampled_from(REDUCTIONS[op]), "spelling")
    check_trace(_reduce_fn(spelling, axis, keepdims), [x])


def test_0d_axis_is_refused():
    """minicomp treats axis 0 of a 0-d array as out of range everywhere (see numpy_0d_axis_quirk)."""
    x = np.array(1.0, np.float32)
    for fn in (lambda x: x.sum(axis=0), lambda x: np.max(x, axis=-1), lambda x: np.squeeze(x, 0)):
        with pytest.raises(ShapeError):
            minicomp.trace(fn, x)


def test_reduction_over_a_zero_size_axis():
    x = np.zeros((2, 0), np.float32)
    with pytest.raises(ShapeError):
        minicomp.trace(lambda x: x.max(axis=-1), x)
    check_trace(lambda x: x.max(axis=0), [x])  # reduces the size-2 axis: shape (0,)
    check_trace(lambda x: x.sum(axis=-1), [x])  # sum has an identity: zeros
    check_trace(lambda x: x.mean(axis=1), [x])  # nan, as NumPy


# ----------------------------------------------------------------------------------------------
# Movement (injective) ops and broadcast_to. Each strategy takes the input array and draws
# (attrs, NumPy meaning, [traced spellings]); invalid attributes are drawn now and then.
# ----------------------------------------------------------------------------------------------


@st.composite
def transpose_cases(draw, x):
    perm = list(draw(st.permutations(range(x.ndim))))
    perm = [p - x.ndim if draw(st.booleans()) else p for p in perm]  # negative axes
    perm = draw(st.sampled_from([tuple(perm), None, tuple(perm[:-1]), tuple(perm) + (0,)]))
    spellings = [lambda x: np.transpose(x, perm), lambda x: x.transpose(perm)]
    if perm is None:
        spellings.append(lambda x: x.T)
    return {"perm": perm}, lambda x: np.transpose(x, perm), spellings


@st.composite
def reshape_cases(draw, x):
    dims = list(draw(st.permutations(x.shape)))
    target = []  # the dims, shuffled, with neighbours multiplied together and 1s inserted
    while dims:
        take = draw(st.integers(1, len(dims)))
        target.append(math.prod(dims[:take]))
        dims = dims[take:]
        if draw(st.integers(0, 3)) == 0:
            target.append(1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1  # NumPy refuses -1 next to a 0
    if draw(st.integers(0, 5)) == 0:
        target = list(draw(shapes(max_dims=3)))  # usually the wrong size
    target = tuple(target)
    spellings = [lambda x: x.reshape(target), lambda x: np.reshape(x, target)]
    if target:
        spellings.append(lambda x: x.reshape(*target))
    if target == (-1,):
        spellings.append(lambda x: x.ravel())
    return {"shape": target}, lambda x: np.reshape(x, target), spellings


def _broadcast(a, b):
    """The shape ``a`` and ``b`` broadcast to, or ``b`` if they do not."""
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        return b


@st.composite
def broadcast_to_cases(draw, x):
    (other,) = draw(broadcastable_shapes(1))
    target = draw(st.sampled_from([_broadcast(x.shape, other), other]))  # other: often invalid
    return {"shape": target}, lambda x: np.broadcast_to(x, target), [lambda x: np.broadcast_to(x, target)]


@st.composite
def expand_dims_cases(draw, x):
    out_ndim = x.ndim + 1
    axis = draw(st.one_of(st.integers(-out_ndim - 1, out_ndim),
                          st.lists(st.integers(-x.ndim - 2, x.ndim + 1), min_size=1, max_size=3).map(tuple)))
    return ({"axes": axis}, lambda x: np.expand_dims(x, axis),
            [lambda x: np.expand_dims(x, axis)])


@st.composite
def squeeze_cases(draw, x):
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    axis = draw(st.one_of(axis_args(x.ndim), st.lists(st.sampled_from(ones), unique=True).map(tuple))
                if ones else axis_args(x.ndim))
    if numpy_0d_axis_quirk(x.ndim, axis):
        axis = None
    return {"axes": axis}, lambda x: np.squeeze(x, axis), [lambda x: np.squeeze(x, axis), lambda x: x.squeeze(axis)]


bounds = st.one_of(st.none(), st.integers(-6, 6))
steps = st.sampled_from([None, 1, 1, 2, 3, -1, -1, -2, 0])


@st.composite
def slice_cases(draw, x):
    """Graph API: one (start, stop, step) per axis. Tracing: a basic index with slices, ints
    (out of bounds now and then), None and ``...``."""
    per_axis = [(draw(bounds), draw(bounds), draw(steps)) for _ in range(x.ndim)]
    starts, stops, steps_ = zip(*per_axis) if per_axis else ((), (), ())
    attrs = {"starts": starts, "stops": stops, "steps": steps_}
    key = [slice(*s) if draw(st.integers(0, 3)) else draw(st.integers(-5, 4)) for s in per_axis]
    key = key[:draw(st.integers(0, len(key)))] if draw(st.booleans()) else key
    if draw(st.integers(0, 9)) == 0:
        key.append(0)  # now and then too many indices
    for _ in range(draw(st.integers(0, 2))):
        key.insert(draw(st.integers(0, len(key))), None)
    if draw(st.booleans()):
        start = draw(st.integers(0, len(key)))
        key[start:draw(st.integers(start, len(key)))] = [Ellipsis]
    key = tuple(key) if len(key) != 1 or draw(st.booleans()) else key[0]
    return attrs, lambda x: x[tuple(slice(*s) for s in per_axis)], [lambda x: x[key]]


def strided_reference(dims, strides, offset=0):
    """NumPy's ``as_strided`` over the C-order elements from ``offset`` (strides in elements), copied;
    ValueError where a window would read outside the array."""
    def reference(a):
        low = offset + sum(s * (d - 1) for d, s in zip(dims, strides) if s < 0)
        high = offset + sum(s * (d - 1) for d, s in zip(dims, strides) if s > 0)
        if math.prod(dims) == 0:
            return np.zeros(dims, a.dtype)
        if low < 0 or high >= a.size:
            raise ValueError("outside the array")
        flat = np.ascontiguousarray(a).reshape(-1)
        return np.lib.stride_tricks.as_strided(flat[offset:], dims, [s * a.itemsize for s in strides]).copy()
    return reference


@st.composite
def as_strided_cases(draw, x):
    """Graph API: windows (element strides, as sliding_window_view makes them, or drawn with
    zero and negative strides and an offset). Tracing: ``sliding_window_view`` (too large a
    window now and then: NumPy's ValueError) and ``minicomp.nn.as_strided``."""
    window = tuple(draw(st.integers(0, d + (draw(st.integers(0, 5)) == 0))) for d in x.shape)
    c_strides = tuple(math.prod(x.shape[i + 1:]) for i in range(x.ndim))
    shape = tuple(d - w + 1 for d, w in zip(x.shape, window)) + window
    spellings = [lambda a: np.lib.stride_tricks.sliding_window_view(a, window),
                 lambda a: minicomp.nn.as_strided(a, shape, [s * a.itemsize for s in c_strides * 2])]
    if draw(st.booleans()) and min(shape, default=0) >= 0:
        return {"shape": shape, "strides": c_strides * 2}, strided_reference(shape, c_strides * 2), spellings
    dims = tuple(draw(st.integers(0, 3)) for _ in range(draw(st.integers(1, 3))))
    strides = tuple(draw(st.integers(-2, 2)) for _ in dims)
    offset = draw(st.integers(0, 6))
    return {"shape": dims, "strides": strides, "offset": offset}, strided_reference(dims, strides, offset), spellings


MOVEMENT = {
    "as_strided": as_strided_cases,
    "transpose": transpose_cases, "reshape": reshape_cases, "broadcast_to": broadcast_to_cases,
    "expand_dims": expand_dims_cases, "squeeze": squeeze_cases, "slice": slice_cases,
}


@pytest.mark.parametrize("op", sorted(MOVEMENT))
@given(data=st.data(), dtype=dtypes, shape=shapes())
def test_movement(op, data, dtype, shape):
    x = data.draw(arrays(dtype, shape), "x")
    attrs, numpy_fn, spellings = data.draw(MOVEMENT[op](x), "case")
    check_graph(op, [x], attrs, numpy_fn)
    check_trace(data.draw(st.sampled_from(spellings), "spelling"), [x])


def test_slice_examples():
    x = np.arange(20.0).reshape(4, 5)
    for fn in (lambda x: x[1:, ::2], lambda x: x[::-1], lambda x: x[-10::-1], lambda x: x[:, 3:0:-2],
               lambda x: x[-1], lambda x: x[..., None, 2], lambda x: x[5:], lambda x: x[::-1, ::-1][1:]):
        check_trace(fn, [x])


# ----------------------------------------------------------------------------------------------
# concatenate
# ----------------------------------------------------------------------------------------------


@st.composite
def concatenate_operands(draw):
    """1-3 arrays equal in shape except along ``axis`` (and, now and then, elsewhere too)."""
    base = list(draw(shapes(max_dims=3)))
    axis = draw(st.integers(-len(base) - 1, len(base)))
    pieces = []
    for _ in range(draw(st.integers(1, 3))):
        shape = list(base)
        if -len(base) <= axis < len(base):
            shape[axis] = draw(st.integers(0, 3))
        if draw(st.integers(0, 7)) == 0 and shape:
            shape[draw(st.integers(0, len(shape) - 1))] += 1  # mismatch: NumPy refuses
        pieces.append(draw(arrays(draw(dtypes), tuple(shape))))
    return pieces, axis


@given(operands=concatenate_operands(), axis_none=st.integers(0, 4))
def test_concatenate(operands, axis_none):
    arrays_, axis = operands
    check_graph("concatenate", arrays_, {"axis": axis}, lambda *xs: np.concatenate(xs, axis=axis))
    axis = None if axis_none == 0 else axis  # axis=None concatenates the flattened arrays
    check_trace(lambda *xs: np.concatenate(xs, axis=axis), arrays_)
    check_trace(lambda x: np.concatenate([x] + arrays_[1:], axis=axis), arrays_[:1])


# ----------------------------------------------------------------------------------------------
# matmul
# ----------------------------------------------------------------------------------------------


@st.composite
def matmul_shapes(draw):
    """Batched shapes whose batch dimensions broadcast, 1-D operands, and now and then a
    contraction mismatch or a 0-d operand (NumPy refuses both)."""
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    m, k, n = (draw(st.integers(0, 3)) for _ in range(3))
    a, b = batch_a + (m, k), batch_b + (k, n)
    kind = draw(st.sampled_from(["batched", "batched", "a 1-d", "b 1-d", "both 1-d", "mismatch", "0-d"]))
    if kind in ("a 1-d", "both 1-d"):
        a = (k,)
    if kind in ("b 1-d", "both 1-d"):
        b = (k,)
    if kind == "mismatch":
        b = batch_b + (k + 1, n)
    if kind == "0-d":
        a = ()
    return a, b


@given(data=st.data(), shapes=matmul_shapes(), da=dtypes, db=dtypes,
       spelling=st.sampled_from([operator.matmul, np.matmul]))
def test_matmul(data, shapes, da, db, spelling):
    a, b = data.draw(arrays(da, shapes[0]), "a"), data.draw(arrays(db, shapes[1]), "b")
    check_graph("matmul", [a, b], None, np.matmul)
    trace_binary(spelling, a, b, data.draw(st.sampled_from(["args", "const_left", "const_right"])))
    if a.ndim <= 2 and b.ndim <= 2:
        check_trace(np.dot, [a, b])


# ----------------------------------------------------------------------------------------------
# conv2d: NumPy has none, so the expected result comes from an independent implementation
# ----------------------------------------------------------------------------------------------


def conv2d_expected(x, w, strides, padding, dilation, groups, layout):
    """Convolution by gathering every (output pixel, kernel tap) patch at once with fancy
    indexing, then one einsum per group; exact (int64/float64), cast to NumPy's matmul dtype."""
    dtype = np.matmul(np.zeros((1, 1), x.dtype), np.zeros((1, 1), w.dtype)).dtype
    if layout == "NHWC":
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    (n, c, h, wd), (o, ci, r, s) = x.shape, w.shape
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = padding, strides, dilation
    oh, ow = (h + pt + pb - dh * (r - 1) - 1) // sh + 1, (wd + pl + pr - dw * (s - 1) - 1) // sw + 1
    if c != ci * groups or o % groups or oh < 1 or ow < 1:
        raise ValueError("conv2d shapes do not fit")
    acc = np.float64 if dtype.kind == "f" else np.int64
    xp = np.pad(x.astype(acc), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    rows = (np.arange(oh) * sh)[:, None] + np.arange(r) * dh  # [oh, r]
    cols = (np.arange(ow) * sw)[:, None] + np.arange(s) * dw  # [ow, s]
    patches = xp[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [n, c, oh, ow, r, s]
    out = np.concatenate([
        np.einsum("ncpqrs,ocrs->nopq", patches[:, g * ci:(g + 1) * ci], part)
        for g, part in enumerate(np.split(w.astype(acc), groups))
    ], axis=1)
    out = out != 0 if dtype == np.bool_ else out.astype(dtype)
    return out.transpose(0, 2, 3, 1) if layout == "NHWC" else out


@st.composite
def conv2d_operands(draw):
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    groups, cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n, h, w_, r, s = (draw(st.integers(lo, hi)) for lo, hi in ((0, 2), (1, 5), (1, 5), (1, 3), (1, 3)))
    c = cin * groups + (1 if draw(st.integers(0, 9)) == 0 else 0)  # now and then a mismatch
    x = (n, c, h, w_) if layout == "NCHW" else (n, h, w_, c)
    w = (cout * groups, cin, r, s) if layout == "NCHW" else (r, s, cin, cout * groups)
    dtype_x, dtype_w = draw(dtypes), draw(st.one_of(st.just(None), dtypes))
    x = draw(arrays(dtype_x, x, low=-3, high=3), "x")
    w = draw(arrays(dtype_w or dtype_x, w, low=-3, high=3), "w")
    pad = st.integers(0, 2)
    padding = draw(st.one_of(pad, st.tuples(pad, pad), st.tuples(pad, pad, pad, pad)))
    attrs = {"strides": draw(st.sampled_from([1, 2, (1, 2)])), "padding": padding,
             "dilation": draw(st.sampled_from([1, 2, (2, 1)])), "groups": groups, "layout": layout}
    return x, w, attrs


def _canonical_conv_attrs(a):
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    p = a["padding"]
    padding = (p,) * 4 if isinstance(p, int) else (p[0], p[0], p[1], p[1]) if len(p) == 2 else p
    return dict(strides=pair(a["strides"]), padding=padding, dilation=pair(a["dilation"]),
                groups=a["groups"], layout=a["layout"])


@given(operands=conv2d_operands(), with_bias=st.booleans())
def test_conv2d(operands, with_bias):
    x, w, attrs = operands
    expected = lambda x, w: conv2d_expected(x, w, **_canonical_conv_attrs(attrs))
    check_graph("conv2d", [x, w], attrs, expected)
    kwargs = dict(stride=attrs["strides"], padding=attrs["padding"], dilation=attrs["dilation"],
                  groups=attrs["groups"], layout=attrs["layout"])
    if not with_bias:
        check_trace(lambda x, w: minicomp.nn.conv2d(x, w, **kwargs), [x, w], expected)
        return
    channels = w.shape[0] if attrs["layout"] == "NCHW" else w.shape[-1]
    bias = np.arange(channels, dtype=np.float32)
    per_channel = bias.reshape(-1, 1, 1) if attrs["layout"] == "NCHW" else bias
    check_trace(lambda x, w: minicomp.nn.conv2d(x, w, bias, **kwargs), [x, w],
                lambda x, w: expected(x, w) + per_channel)


# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Scans
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["cumsum", "cumprod"])
@given(data=st.data(), dtype=dtypes, shape=shapes(min_dims=1))
def test_scan(op, data, dtype, shape):
    """cumsum/cumprod along an axis drawn negative or positive (bools and ints give int64)."""
    x = data.draw(arrays(dtype, shape), "x")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), "axis")
    fn = getattr(np, op)
    check_graph(op, [x], {"axis": axis}, lambda a: fn(a, axis=axis))
    check_trace(lambda a: fn(a, axis=axis), [x])


def test_every_op_is_covered():
    """A new op in the table needs a row in one of the families above."""
    covered = {*UNARY, *BINARY, *REDUCTIONS, *MOVEMENT, "where", "cast", "constant", "concatenate",
               "matmul", "conv2d", "cumsum", "cumprod",
               "gather", "scatter",  # tests/test_gather_scatter.py (against NumPy, C and interpreter)
               "fused"}  # fused nodes come from the fusion pass: tests/test_fusion.py
    missing = set(OPS) - {"input"} - covered
    assert not missing, f"ops without a test in tests/test_ops.py: {sorted(missing)}"
