"""Every op of the op table, compiled to C, against the interpreter and NumPy itself.

Each test builds a graph with the graph API (often several ops in one graph, since one gcc run
costs ~0.1-0.5 s), compiles it with ``minicomp.compile(graph, target="c")`` and checks the
outputs twice: against ``minicomp.interpret`` (the meaning of the graph) and against NumPy run
directly on the same arrays. ``assert_close`` checks shape, dtype and values (NaN matches NaN,
tolerances only where C's libm may round a transcendental function differently).

Two kinds of tests:

* **property tests** (hypothesis): shapes of up to 4 dimensions with sides 0..4 (so size-0 and
  size-1 axes and 0-d arrays occur), operand shapes that broadcast, negative axes, all six
  dtypes (f16 f32 f64 i32 i64 bool, where NumPy accepts them), values that are small multiples
  of 1/4 with a sprinkling of 0, -0.0, NaN and +-inf (integers: a sprinkling of the extreme
  values), and inputs in every memory layout (C order, Fortran order, negative strides, a
  strided view, a transposed view);
* **trap tests**: fixed values where C's meaning and NumPy's differ and the backend must have
  NumPy's: integer ``//`` and ``%`` by zero and by -1 (``INT_MIN // -1``), float ``//`` and
  ``%`` with inf, zero and negative operands, NaN in ``maximum``/``minimum`` and ``max``/``min``,
  float-to-int casts of NaN, inf and out-of-range values, float-to-bool of NaN, integer
  ``reciprocal``, ``sign`` of NaN and -0.0, integer ``pow`` (a negative exponent raises
  ``MinicompRuntimeError`` where NumPy raises ``ValueError``), float16 rounding after every op,
  reductions of empty axes, matmul and conv2d in all their forms. Those compare bit for bit
  (``assert_identical``: the sign of zero too).

Most tests run on every program backend (the ``backend`` fixture of ``conftest.py``: the C
compiler and the loop interpreter, which must agree with NumPy on the same edge cases); those
with floor division, modulo of floats or powers run on C only, until the loop interpreter
knows ``mc_floordiv`` and ``mc_pow``.
"""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minicomp
from minicomp import Graph, TensorType
from minicomp.errors import MinicompError, MinicompRuntimeError
from minicomp.ir.dtypes import DTYPES
from minicomp.ir.ops import OPS, fill_attrs
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import loop_program
from minicomp.testing import assert_close

DTYPE_NAMES = list(DTYPES)  # f16 f32 f64 i32 i64 bool
FLOATS = ["f16", "f32", "f64"]
INTS = ["i32", "i64"]


# ----------------------------------------------------------------------------------------------
# Running and checking
# ----------------------------------------------------------------------------------------------


def run_c(graph: Graph, *arrays) -> list[np.ndarray]:
    """Compile ``graph`` for the C target and run it once."""
    return minicomp.compile(graph, target="c")(*arrays)


def numpy_quietly(fn, *args):
    """``fn(*args)`` as an array, NumPy's warnings (division by zero, ...) silenced."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return np.asarray(fn(*args))


def run_on(backend, graph: Graph, *arrays) -> list[np.ndarray]:
    """``graph`` after the default passes and the loop stages, run once on ``backend``
    (the ``backend`` fixture of conftest.py: C or the loop interpreter)."""
    return backend.run(loop_program(run_pipeline(graph.verify())[0]), *arrays)


def check(graph: Graph, arrays, expected=None, backend=None) -> list[np.ndarray]:
    """``backend`` (default: C, through ``minicomp.compile``) must match the interpreter and,
    when given, NumPy's ``expected`` outputs."""
    actual = run_c(graph, *arrays) if backend is None else run_on(backend, graph, *arrays)
    assert_close(actual, minicomp.interpret(graph, *arrays))
    if expected is not None:
        assert_close(actual, list(expected))
    return actual


def assert_identical(actual, expected) -> None:
    """Same shape, dtype and bits: NaN matches NaN, and -0.0 only matches -0.0."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype)
    if expected.dtype.kind == "f":
        same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
        same |= np.isnan(actual) & np.isnan(expected)
    else:
        same = actual == expected
    assert same.all(), f"C gives {actual[~same]} where NumPy gives {expected[~same]}"


def graph_of(name: str, *arrays) -> tuple[Graph, list]:
    """A graph with one input per array (``x0``, ``x1`` ...) and its input nodes."""
    graph = Graph(name)
    return graph, [graph.add_input(f"x{i}", TensorType.of(a)) for i, a in enumerate(arrays)]


# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------


def shapes(min_dims=0, max_dims=4, max_side=4):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side)


@st.composite
def broadcastable_shapes(draw, n=2, max_dims=4, max_side=4):
    """``n`` shapes that broadcast together: suffixes of one shape with some sides set to 1."""
    full = draw(shapes(0, max_dims, max_side))
    result = []
    for _ in range(n):
        rank = draw(st.integers(0, len(full)))
        result.append(tuple(1 if draw(st.booleans()) else d for d in full[len(full) - rank:]))
    return tuple(result)


@st.composite
def arrays(draw, dtype, shape, specials=True, extremes=True):
    """An array of ``dtype`` and ``shape``: multiples of 1/4 in [-4, 4] for floats (sometimes
    with 0, -0.0, nan, +-inf mixed in), integers in [-4, 4] (sometimes with the dtype's minimum
    and maximum mixed in), random bools."""
    dtype = np.dtype(DTYPES.get(dtype, dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "i":
        values = rng.integers(-4, 5, shape).astype(dtype)
        if extremes and draw(st.booleans()):
            info = np.iinfo(dtype)
            mask = rng.random(shape) < 0.2
            values = np.where(mask, rng.choice(np.array([info.min, info.max], dtype), shape), values)
        return values.astype(dtype)
    values = rng.integers(-16, 17, shape) / 4
    if specials and draw(st.booleans()):
        mask = rng.random(shape) < 0.25
        values = np.where(mask, rng.choice([0.0, -0.0, np.nan, np.inf, -np.inf], shape), values)
    return values.astype(dtype)


LAYOUTS = ["C", "F", "reversed", "strided", "transposed"]


def in_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``array`` in another memory layout (a view, never C-contiguous
    unless the array is too small for the layout to differ)."""
    if array.ndim == 0 or layout == "C":
        return array
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "reversed":  # negative strides on every axis
        return np.flip(np.flip(array).copy())
    if layout == "strided":  # every other element of a buffer twice as long
        doubled = np.repeat(array, 2, axis=-1)
        return doubled[..., ::2]
    return np.ascontiguousarray(array.T).T  # transposed view


@st.composite
def laid_out(draw, array):
    """``array`` in a layout drawn by hypothesis (see ``in_layout``)."""
    result = in_layout(array, draw(st.sampled_from(LAYOUTS)))
    assert np.array_equal(result, array, equal_nan=True)
    return result


def accepts(op: str, types, attrs=None) -> bool:
    """True if the op table accepts ``op`` on operands of ``types`` (as NumPy would)."""
    try:
        opdef = OPS[op]
        opdef.infer(list(types), fill_attrs(opdef, list(types), attrs or {}))
        return True
    except MinicompError:
        return False


# ----------------------------------------------------------------------------------------------
# Every op is covered
# ----------------------------------------------------------------------------------------------


def _float_type(x):
    """The float dtype NumPy's exp gives for ``x`` (f16 for bool, f64 for integers)."""
    return np.exp(np.zeros((), x.dtype)).dtype


def _sigmoid(x):
    return (1 / (1 + np.exp(-x.astype(np.float64)))).astype(_float_type(x))


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(_float_type(x))


def _rsqrt(x):
    root = np.sqrt(x)
    return (np.ones((), root.dtype) / root).astype(root.dtype)


UNARY = {
    "neg": np.negative, "abs": np.absolute, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "rsqrt": _rsqrt, "tanh": np.tanh, "sigmoid": _sigmoid, "erf": _erf,
    "reciprocal": np.reciprocal, "sin": np.sin, "cos": np.cos, "floor": np.floor,
    "ceil": np.ceil, "sign": np.sign, "logical_not": np.logical_not,
}
BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
    "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
    "maximum": np.maximum, "minimum": np.minimum, "eq": np.equal, "ne": np.not_equal,
    "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}
REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}
MOVEMENT = ("transpose", "reshape", "broadcast_to", "expand_dims", "squeeze", "slice",
            "as_strided")
OTHERS = ("input", "constant", "cast", "where", "matmul", "conv2d", "concatenate",
          "gather", "scatter")  # these two: tests/test_gather_scatter.py
SCANS = ("cumsum", "cumprod")


def test_every_op_is_covered_by_this_file():
    # "fused" (a subgraph as one kernel) is made by the fusion pass: tests/test_fusion.py
    assert set(OPS) - {"fused"} == set(UNARY) | set(BINARY) | set(REDUCTIONS) | set(MOVEMENT) | set(OTHERS) | set(SCANS)


# ----------------------------------------------------------------------------------------------
# Elementwise: unary, binary, where, cast, constants
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@settings(max_examples=6)
@given(data=st.data(), shape=shapes())
def test_unary_ops(dtype, shape, data, backend):
    """All unary ops NumPy accepts for ``dtype`` in one graph, on one input."""
    x = data.draw(arrays(dtype, shape))
    graph, (node,) = graph_of("unary", x)
    ops = [op for op in UNARY if accepts(op, [node.type])]
    graph.set_outputs([graph.add_op(op, [node]) for op in ops])
    check(graph, [data.draw(laid_out(x))], [numpy_quietly(UNARY[op], x) for op in ops], backend)


def pow_exponent(b: np.ndarray) -> np.ndarray:
    """An exponent like ``b`` for integer powers: non-negative and small (NumPy raises on
    negative integer exponents; see test_integer_pow for that)."""
    return b % 4 if b.dtype.kind == "i" else b


@pytest.mark.parametrize("dtype_a", DTYPE_NAMES)
@settings(max_examples=6)
@given(data=st.data(), dtype_b=st.sampled_from(DTYPE_NAMES), shapes=broadcastable_shapes())
def test_binary_ops(dtype_a, dtype_b, shapes, data):
    """All binary ops NumPy accepts for the dtype pair in one graph, with broadcasting."""
    a = data.draw(arrays(dtype_a, shapes[0]))
    b = data.draw(arrays(dtype_b, shapes[1]))
    e = pow_exponent(b)
    graph, (na, nb, ne) = graph_of("binary", a, b, e)
    ops = [op for op in BINARY if accepts(op, [na.type, nb.type])]
    graph.set_outputs([graph.add_op(op, [na, ne if op == "pow" else nb]) for op in ops])
    expected = [numpy_quietly(BINARY[op], a, e if op == "pow" else b) for op in ops]
    args = [data.draw(laid_out(v)) for v in (a, b, e)]
    check(graph, args, expected)


@pytest.mark.parametrize("dtype_a", DTYPE_NAMES)
def test_binary_promotion_of_every_dtype_pair(dtype_a, rng):
    """``a op b`` with ``b`` of each of the six dtypes: the C code computes in the dtype NumPy's
    ufunc loop uses and returns NumPy's result dtype."""
    if dtype_a == "bool":
        a = rng.random((3, 4)) < 0.5
    else:
        a = rng.integers(-8, 9, (3, 4)).astype(DTYPES[dtype_a])
    base = rng.integers(1, 5, 4) * 0.75  # 0.75 ... 3.0: fractions for floats, 0 ... 3 for ints
    others = [base > 1 if d == "bool" else base.astype(DTYPES[d]) for d in DTYPE_NAMES]
    graph, (na, *nbs) = graph_of("promotion", a, *others)
    outputs, expected = [], []
    for nb, b in zip(nbs, others):
        for op in ("add", "div", "floordiv", "maximum", "lt"):
            if accepts(op, [na.type, nb.type]):
                outputs.append(graph.add_op(op, [na, nb]))
                expected.append(numpy_quietly(BINARY[op], a, b))
    graph.set_outputs(outputs)
    check(graph, [a, *others], expected)


@settings(max_examples=12)
@given(data=st.data(), shapes=broadcastable_shapes(3),
       dtypes=st.tuples(st.sampled_from(DTYPE_NAMES), st.sampled_from(DTYPE_NAMES)))
def test_where(shapes, dtypes, data, backend):
    cond = data.draw(arrays("bool", shapes[0]))
    a, b = data.draw(arrays(dtypes[0], shapes[1])), data.draw(arrays(dtypes[1], shapes[2]))
    graph, nodes = graph_of("where", cond, a, b)
    graph.set_outputs([graph.add_op("where", nodes)])
    check(graph, [data.draw(laid_out(v)) for v in (cond, a, b)], [np.where(cond, a, b)], backend)


def cast_inputs(dtype: str, rng) -> np.ndarray:
    """Values whose casts go wrong in naive C: fractions of both signs, NaN, +-inf, -0.0, and
    values just inside and outside the int32 and int64 ranges (for the dtypes that hold them)."""
    values = [0.0, -0.0, 0.75, -0.75, 1.5, -2.5, 7.0, np.nan, np.inf, -np.inf, 65504.0]
    if dtype in ("f32", "f64"):
        values += [2.0**31 - 128, -2.0**31, 2.0**31, -2.0**31 - 256, 3e9, -3e9, 2.0**62,
                   2.0**63, -2.0**63, 1e19, -1e19, 1e30]
    if dtype == "f64":  # and values that round wrongly to float16 through float32 (twice)
        values += [2.0**31 - 0.5, -2.0**31 - 0.5, 1e300, 1 + 2.0**-11 + 2.0**-30,
                   -(2049 + 2.0**-20), 65519.99]
    if dtype in INTS:
        info = np.iinfo(DTYPES[dtype])
        return np.array([0, 1, -1, 3, -3, 2049, 65519, 70000, -70000, info.min, info.max,
                         info.max - 1, 2**24 + 1], dtype=DTYPES[dtype])
    if dtype == "bool":
        return np.array([True, False, True])
    with np.errstate(over="ignore"):
        return rng.permutation(np.array(values, DTYPES[dtype]))


@pytest.mark.parametrize("source", DTYPE_NAMES)
def test_cast_to_every_dtype(source, rng, backend):
    """``x.astype(d)`` for all six ``d``, including NaN/inf/out-of-range floats to integers
    (NumPy on x86 gives the minimum integer) and NaN to bool (True)."""
    x = cast_inputs(source, rng)
    graph, (node,) = graph_of("cast", x)
    graph.set_outputs([graph.add_op("cast", [node], {"dtype": d}) for d in DTYPE_NAMES])
    actual = check(graph, [x], backend=backend)
    for result, d in zip(actual, DTYPE_NAMES):
        assert_identical(result, numpy_quietly(lambda v: v.astype(DTYPES[d]), x))


@settings(max_examples=10)
@given(data=st.data(), dtype=st.sampled_from(DTYPE_NAMES), shapes=broadcastable_shapes())
def test_constants(dtype, shapes, data, backend):
    """Array constants (parameters of the C code) and one-element constants (inlined literals),
    used in arithmetic and returned directly."""
    x = data.draw(arrays(dtype, shapes[0]))
    array_value = data.draw(arrays(dtype, shapes[1]))
    scalar_value = data.draw(arrays(dtype, ()))
    graph, (node,) = graph_of("constants", x)
    array_const = graph.add_constant(array_value, "table")
    scalar_const = graph.add_constant(scalar_value, "scalar")
    graph.set_outputs([graph.add_op("maximum", [node, array_const]),
                       graph.add_op("minimum", [scalar_const, node]),
                       array_const, scalar_const])
    expected = [np.maximum(x, array_value), np.minimum(scalar_value, x), array_value, scalar_value]
    check(graph, [x], expected, backend)


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------


@st.composite
def axes_args(draw, ndim):
    """``axes``: None, an int or a tuple (negative axes included, the empty tuple too)."""
    if ndim == 0:
        return draw(st.sampled_from([None, ()]))
    axis = st.integers(-ndim, ndim - 1)
    unique = st.lists(axis, max_size=ndim, unique_by=lambda a: a % ndim).map(tuple)
    return draw(st.one_of(st.none(), axis, unique))


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@settings(max_examples=6)
@given(data=st.data(), shape=shapes())
def test_reductions(dtype, shape, data, backend):
    """sum, mean, max and min over the same axes in one graph (max/min only when no reduced
    axis is empty: NumPy raises there); NaN and inf inputs included."""
    x = data.draw(arrays(dtype, shape))
    axes = data.draw(axes_args(len(shape)))
    keepdims = data.draw(st.booleans())
    graph, (node,) = graph_of("reduce", x)
    attrs = {"axes": axes, "keepdims": keepdims}
    ops = [op for op in REDUCTIONS if accepts(op, [node.type], attrs)]
    graph.set_outputs([graph.add_op(op, [node], attrs) for op in ops])
    expected = [numpy_quietly(lambda v: REDUCTIONS[op](v, axis=axes, keepdims=keepdims), x)
                for op in ops]
    inputs = [data.draw(laid_out(x))]
    actual, reference = run_on(backend, graph, *inputs), minicomp.interpret(graph, *inputs)
    for op, a, r, e in zip(ops, actual, reference, expected):
        atol = cancellation_atol(x) if op == "mean" and x.dtype.kind in "iu" else None
        assert_close(a, r, atol=atol)
        assert_close(a, e, atol=atol)


def cancellation_atol(x: np.ndarray) -> float | None:
    """The float64 mean of integers is only as exact as its sum of float64 values, which loses
    ``size * eps * max|x|`` where large values cancel (``[1, 2**63-1, -2**63, 3]``: NumPy's
    pairwise order gives 0.0, a straight loop 0.375, the exact mean is 0.75)."""
    if x.size == 0:
        return None
    return 1e-12 + 2 * x.size * np.finfo(np.float64).eps * float(np.abs(x.astype(np.float64)).max())


def test_the_mean_of_cancelling_integers_is_within_the_float64_bound():
    x = np.array([[1, 2**63 - 1, -1, 3], [-2, 3, -2**63, 3]], np.int64)
    graph, (node,) = graph_of("reduce", x)
    graph.set_outputs([graph.add_op("mean", [node], {"axes": None, "keepdims": False})])
    [actual] = run_c(graph, x)
    assert abs(float(actual) - 0.75) <= cancellation_atol(x)  # the exact mean is 6 / 8
    assert abs(float(x.mean()) - 0.75) <= cancellation_atol(x)  # NumPy's own 0.0 is as far off


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_reductions_of_empty_axes(dtype, backend):
    """Reducing a size-0 axis: the sum is 0 (of the sum's dtype) and the mean is NaN."""
    x = np.zeros((3, 0, 2), DTYPES[dtype])
    graph, (node,) = graph_of("empty", x)
    graph.set_outputs([graph.add_op("sum", [node], {"axes": 1}),
                       graph.add_op("mean", [node], {"axes": (-2, 0), "keepdims": True}),
                       graph.add_op("sum", [node], {"axes": None}),
                       graph.add_op("max", [node], {"axes": 2})])  # shape (3, 0): no max taken
    actual = check(graph, [x], backend=backend)
    assert_identical(actual[0], numpy_quietly(lambda v: v.sum(axis=1), x))
    assert np.isnan(actual[1]).all() and actual[1].shape == (1, 1, 2)
    assert actual[2].shape == () and actual[2] == 0
    assert actual[3].shape == (3, 0)


def test_large_kernels_run_in_parallel_and_match_numpy(rng):
    """Kernels with enough work to get OpenMP loops (one collapsed over two axes), reductions
    and matmul among them, match NumPy."""
    x = rng.standard_normal((3, 50, 300)).astype(np.float32)
    w = rng.standard_normal((300, 40)).astype(np.float32)
    graph, (nx, nw) = graph_of("large", x, w)
    graph.set_outputs([graph.add_op("sum", [nx], {"axes": -1}),
                       graph.add_op("max", [nx], {"axes": (0, 2)}),
                       graph.add_op("mean", [nx], {"axes": 1, "keepdims": True}),
                       graph.add_op("matmul", [nx, nw]),
                       graph.add_op("add", [graph.add_op("exp", [nx]), nx])])
    compiled = minicomp.compile(graph, target="c")
    assert compiled.source.count("#pragma omp parallel for") >= 4
    assert "collapse(2)" in compiled.source
    expected = [x.sum(axis=-1), x.max(axis=(0, 2)), x.mean(axis=1, keepdims=True), x @ w, np.exp(x) + x]
    assert_close(compiled(x, w), expected)


# ----------------------------------------------------------------------------------------------
# Data movement
# ----------------------------------------------------------------------------------------------


@st.composite
def movement_attrs(draw, shape):
    """Attributes for transpose, reshape, broadcast_to, expand_dims, squeeze and slice of an
    array of ``shape``, each with negative values where the op allows them."""
    ndim = len(shape)
    perm = draw(st.permutations(range(ndim)))
    perm = tuple(p - ndim if draw(st.booleans()) else p for p in perm)
    size = int(np.prod(shape))
    if size == 0:
        new_shape = (0, 5) if draw(st.booleans()) else (2, -1, 3)
    else:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        first = draw(st.sampled_from(divisors))
        new_shape = draw(st.sampled_from([(first, -1), (-1,), (size // first, 1, first)]))
    target = tuple(draw(st.integers(0, 3)) if d == 1 else d for d in shape)
    target = tuple(draw(st.lists(st.integers(1, 2), max_size=2))) + target
    expand = draw(st.integers(-ndim - 1, ndim))
    ones = [i for i, d in enumerate(shape) if d == 1]
    squeeze = tuple(draw(st.lists(st.sampled_from(ones), unique=True))) if ones else ()
    squeeze = tuple(a - ndim if draw(st.booleans()) else a for a in squeeze)
    bound = st.one_of(st.none(), st.integers(-6, 6))
    index = tuple(slice(draw(bound), draw(bound), draw(st.sampled_from([1, 2, 3, -1, -2])))
                  for _ in shape)
    window = tuple(draw(st.integers(0, d)) for d in shape)  # sliding_window_view's windows
    window_shape = tuple(d - w + 1 for d, w in zip(shape, window)) + window
    window_strides = tuple(math.prod(shape[i + 1:]) for i in range(ndim)) * 2
    return {
        "transpose": ({"perm": perm}, lambda a: np.transpose(a, perm)),
        "reshape": ({"shape": new_shape}, lambda a: np.reshape(a, new_shape)),
        "broadcast_to": ({"shape": target}, lambda a: np.broadcast_to(a, target)),
        "expand_dims": ({"axes": expand}, lambda a: np.expand_dims(a, expand)),
        "squeeze": ({"axes": squeeze}, lambda a: np.squeeze(a, squeeze)),
        "slice": ({"starts": [s.start for s in index], "stops": [s.stop for s in index],
                   "steps": [s.step for s in index]}, lambda a: a[index]),
        "as_strided": ({"shape": window_shape, "strides": window_strides},
                       lambda a: np.lib.stride_tricks.sliding_window_view(a, window).copy()),
    }


@settings(max_examples=15)
@given(data=st.data(), dtype=st.sampled_from(DTYPE_NAMES), shape=shapes(max_side=5))
def test_movement_ops(dtype, shape, data, backend):
    """transpose, reshape, broadcast_to, expand_dims, squeeze, slice and as_strided of one input, each
    also applied to the transposed input (a movement op reading through another one)."""
    x = data.draw(arrays(dtype, shape))
    ops = data.draw(movement_attrs(shape))
    graph, (node,) = graph_of("movement", x)
    outputs, expected = [], []
    for op, (attrs, numpy_fn) in ops.items():
        outputs.append(graph.add_op(op, [node], attrs))
        expected.append(numpy_fn(x))
    flipped = graph.add_op("transpose", [node])
    outputs.append(graph.add_op("slice", [flipped], {"starts": [None] * len(shape),
                                                     "stops": [None] * len(shape),
                                                     "steps": [-1] * len(shape)}))
    expected.append(x.T[(slice(None, None, -1),) * len(shape)])
    graph.set_outputs(outputs)
    check(graph, [data.draw(laid_out(x))], expected, backend)


@settings(max_examples=12)
@given(data=st.data(), shape=shapes(min_dims=1), n=st.integers(1, 3))
def test_concatenate(shape, n, data, backend):
    """Concatenate 1 to 3 operands of possibly different dtypes (the result promotes) along an
    axis drawn negative or positive; sides may be 0."""
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    parts = []
    for _ in range(n):
        part_shape = list(shape)
        part_shape[axis] = data.draw(st.integers(0, 3))
        parts.append(data.draw(arrays(data.draw(st.sampled_from(DTYPE_NAMES)), tuple(part_shape))))
    graph, nodes = graph_of("concat", *parts)
    graph.set_outputs([graph.add_op("concatenate", nodes, {"axis": axis})])
    check(graph, [data.draw(laid_out(p)) for p in parts], [np.concatenate(parts, axis=axis)], backend)


@settings(max_examples=12)
@given(data=st.data(), dtype=st.sampled_from(DTYPE_NAMES), shape=shapes(min_dims=1, max_side=5))
def test_scans(dtype, shape, data, backend):
    """cumsum and cumprod along every axis of one input (NaN, inf and extremes among the
    values), through C: serial along the axis, NumPy's order and rounding per step."""
    x = data.draw(arrays(dtype, shape))
    graph, (node,) = graph_of("scans", x)
    outputs, expected = [], []
    for axis in range(-len(shape), len(shape)):
        for op, fn in (("cumsum", np.cumsum), ("cumprod", np.cumprod)):
            outputs.append(graph.add_op(op, [node], {"axis": axis}))
            with np.errstate(all="ignore"):
                expected.append(fn(x, axis=axis))
    graph.set_outputs(outputs)
    check(graph, [data.draw(laid_out(x))], expected, backend)


def test_scan_runs_in_parallel_over_the_other_axes(rng):
    """A large cumsum along the last axis: the rows are a parallel loop, and match NumPy."""
    x = rng.standard_normal((512, 300)).astype(np.float32)
    graph, (node,) = graph_of("big_scan", x)
    graph.set_outputs([graph.add_op("cumsum", [node], {"axis": -1})])
    compiled = minicomp.compile(graph, target="c")
    assert "#pragma omp parallel for" in compiled.source
    assert_close(compiled(x), [np.cumsum(x, axis=-1)])


# ----------------------------------------------------------------------------------------------
# Matmul
# ----------------------------------------------------------------------------------------------


@st.composite
def matmul_shapes(draw):
    """Shapes NumPy's matmul accepts: 1-D on either side, 2-D, batched with broadcasting
    (size-1 and missing batch axes), and size-0 sides (K = 0 sums nothing)."""
    m, k, n = (draw(st.integers(0, 4)) for _ in range(3))
    batch_a, batch_b = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    a = (k,) if draw(st.integers(0, 4)) == 0 else batch_a + (m, k)
    b = (k,) if draw(st.integers(0, 4)) == 0 else batch_b + (k, n)
    return a, b


@settings(max_examples=15)
@given(data=st.data(), shapes=matmul_shapes(),
       dtypes=st.tuples(st.sampled_from(DTYPE_NAMES), st.sampled_from(DTYPE_NAMES)))
def test_matmul(shapes, dtypes, data, backend):
    a = data.draw(arrays(dtypes[0], shapes[0], specials=False, extremes=False))
    b = data.draw(arrays(dtypes[1], shapes[1], specials=False, extremes=False))
    graph, nodes = graph_of("matmul", a, b)
    graph.set_outputs([graph.add_op("matmul", nodes)])
    check(graph, [data.draw(laid_out(a)), data.draw(laid_out(b))], [a @ b], backend)


MATMUL_CASES = {
    "vector @ vector": ((5,), (5,)),
    "vector @ matrix": ((3,), (3, 4)),
    "matrix @ vector": ((2, 3), (3,)),
    "vector @ batch": ((3,), (2, 3, 4)),
    "batch @ vector": ((2, 2, 3), (3,)),
    "batch broadcast": ((2, 1, 2, 3), (3, 3, 2)),
    "K = 0": ((2, 0), (0, 3)),
    "M = 0": ((0, 3), (3, 2)),
}


@pytest.mark.parametrize("dtypes", [("f32", "f32"), ("f16", "f64"), ("i32", "i64"),
                                    ("bool", "bool"), ("bool", "i32"), ("i32", "f32")],
                         ids="-".join)
def test_matmul_forms_and_dtypes(dtypes, rng, backend):
    """Every matmul form in one graph per dtype pair; bool @ bool is ``any(a and b)``, integer
    matmul accumulates in the integer type (wrapping as NumPy does)."""
    arrays_, expected = [], []
    for shape_a, shape_b in MATMUL_CASES.values():
        a, b = (rng.integers(-3, 4, s).astype(DTYPES[d]) if d != "bool" else rng.random(s) < 0.5
                for s, d in ((shape_a, dtypes[0]), (shape_b, dtypes[1])))
        arrays_ += [a, b]
        expected.append(a @ b)
    graph, nodes = graph_of("matmuls", *arrays_)
    graph.set_outputs([graph.add_op("matmul", nodes[i:i + 2]) for i in range(0, len(nodes), 2)])
    check(graph, arrays_, expected, backend)


def test_integer_matmul_wraps_like_numpy():
    a = np.full((2, 3), 2**30, np.int32)
    b = np.full((3,), 3, np.int32)
    graph, nodes = graph_of("wrap", a, b)
    graph.set_outputs([graph.add_op("matmul", nodes)])
    assert_identical(run_c(graph, a, b)[0], a @ b)


# ----------------------------------------------------------------------------------------------
# Conv2d
# ----------------------------------------------------------------------------------------------


def conv_arrays(rng, layout, n, c, h, w, o, r, s, groups, dtype):
    x_shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    w_shape = (o, c // groups, r, s) if layout == "NCHW" else (r, s, c // groups, o)
    x = rng.integers(-4, 5, x_shape).astype(DTYPES[dtype])
    weight = (rng.integers(-4, 5, w_shape) / 4).astype(DTYPES[dtype])
    return x, weight


def check_conv(layout, dtype, n, c, h, w, o, r, s, attrs, rng, backend):
    x, weight = conv_arrays(rng, layout, n, c, h, w, o, r, s, attrs.get("groups", 1), dtype)
    graph, nodes = graph_of("conv", x, weight)
    attrs = dict(attrs, layout=layout)
    graph.set_outputs([graph.add_op("conv2d", nodes, attrs)])
    expected = _direct_conv(x, weight, layout=layout, **{k: v for k, v in attrs.items() if k != "layout"})
    check(graph, [in_layout(x, "transposed"), weight], [expected], backend)


def _direct_conv(x, w, layout, strides=(1, 1), padding=0, dilation=(1, 1), groups=1):
    """A plain-loop convolution, written independently of the op table's reference."""
    if layout == "NHWC":
        out = _direct_conv(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), "NCHW",
                           strides, padding, dilation, groups)
        return out.transpose(0, 2, 3, 1)
    if isinstance(padding, int):
        padding = (padding,) * 4
    elif len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    if isinstance(strides, int):
        strides = (strides, strides)
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = strides, dilation, padding
    n, c, h, wd = x.shape
    o, cg, r, s = w.shape
    oh = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (s - 1) - 1) // sw + 1
    dtype = np.result_type(x.dtype, w.dtype)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))).astype(dtype)
    out = np.zeros((n, o, oh, ow), dtype)
    per_group = o // groups
    for oc in range(o):
        g = oc // per_group
        for i in range(oh):
            for j in range(ow):
                window = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + dh * (r - 1) + 1:dh,
                            j * sw:j * sw + dw * (s - 1) + 1:dw]
                out[:, oc, i, j] = (window * w[oc]).sum(axis=(1, 2, 3), dtype=dtype)
    return out


CONV_CASES = {  # name: (n, c, h, w, o, r, s, attrs)
    "plain 3x3": (2, 3, 5, 6, 4, 3, 3, {}),
    "stride 2": (1, 2, 7, 6, 3, 3, 3, {"strides": (2, 2)}),
    "padding 1": (1, 2, 4, 4, 2, 3, 3, {"padding": 1}),
    "asymmetric padding": (1, 1, 4, 5, 2, 2, 3, {"padding": (0, 2, 1, 0)}),
    "dilation 2": (1, 2, 7, 7, 2, 3, 3, {"dilation": (2, 2)}),
    "groups 2": (2, 4, 5, 5, 6, 3, 3, {"groups": 2, "padding": 1}),
    "depthwise": (1, 3, 4, 4, 3, 3, 3, {"groups": 3, "padding": (1, 1)}),
    "everything": (2, 4, 9, 8, 4, 3, 2, {"strides": (2, 1), "padding": (1, 0, 2, 1),
                                         "dilation": (1, 2), "groups": 2}),
    "1x1": (1, 5, 3, 3, 2, 1, 1, {}),
}


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d(case, layout, rng, backend):
    n, c, h, w, o, r, s, attrs = CONV_CASES[case]
    check_conv(layout, "f32", n, c, h, w, o, r, s, attrs, rng, backend)


@pytest.mark.parametrize("dtype", ["f16", "f64", "i32", "i64"])
def test_conv2d_dtypes(dtype, rng, backend):
    check_conv("NCHW", dtype, 1, 2, 5, 5, 2, 3, 3, {"padding": 1, "strides": 2}, rng, backend)


# ----------------------------------------------------------------------------------------------
# Traps: where C and NumPy differ
# ----------------------------------------------------------------------------------------------


def grid(values, dtype):
    """Every pair of ``values``: a column and a row that broadcast to the full table."""
    column = np.array(values, dtype)[:, None]
    return column, column.reshape(1, -1)


def run_binary_table(ops, a, b, backend=None):
    """``op(a, b)`` for every op, compiled in one graph; each compared bit for bit with NumPy."""
    graph, nodes = graph_of("table", a, b)
    graph.set_outputs([graph.add_op(op, nodes) for op in ops])
    actual = check(graph, [a, b], backend=backend)
    for op, result in zip(ops, actual):
        assert_identical(result, numpy_quietly(BINARY[op], a, b))


@pytest.mark.parametrize("dtype", INTS)
def test_integer_floordiv_and_mod(dtype):
    """Rounding toward -inf with negative operands, ``x // 0 == 0`` and ``x % 0 == 0`` (C: a
    crash), ``INT_MIN // -1 == INT_MIN`` and ``INT_MIN % -1 == 0`` (C: a crash)."""
    info = np.iinfo(DTYPES[dtype])
    a, b = grid([0, 1, -1, 2, -2, 7, -7, info.min, info.max, info.min + 1], DTYPES[dtype])
    run_binary_table(["floordiv", "mod", "div"], a, b)


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_floordiv_and_mod(dtype):
    """NumPy's float ``//`` and ``%``: sign of the divisor, -0.0 results, inf and NaN operands,
    division by (signed) zero."""
    a, b = grid([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 7.0, -7.0, 0.5, np.inf, -np.inf, np.nan, 1e4],
                DTYPES[dtype])
    run_binary_table(["floordiv", "mod", "div"], a, b)


@pytest.mark.parametrize("dtype", FLOATS)
def test_maximum_and_minimum_propagate_nan(dtype, backend):
    """``maximum``/``minimum`` (and ``max``/``min`` reductions) give NaN if either side is NaN,
    wherever the NaN is (C's fmax ignores NaN; ``a > b ? a : b`` depends on the order), and on
    a tie of -0.0 and 0.0 the zero NumPy gives: the second operand for float32/64, the first for
    float16 (bit for bit; tests/test_codegen_safety.py checks fused and matmul kernels too)."""
    a, b = grid([np.nan, 1.0, -1.0, np.inf, -np.inf, 0.0, -0.0, 2.5], DTYPES[dtype])
    run_binary_table(["maximum", "minimum"], a, b, backend)
    x = np.array([[1.0, np.nan, 3.0], [np.nan, 2.0, 1.0], [5.0, -1.0, np.inf]], DTYPES[dtype])
    graph, (node,) = graph_of("nan_reduce", x)
    graph.set_outputs([graph.add_op(op, [node], {"axes": axis})
                       for op in ("max", "min") for axis in (0, 1, None)])
    for result, (op, axis) in zip(check(graph, [x], backend=backend), [(o, a) for o in ("max", "min") for a in (0, 1, None)]):
        assert_identical(result, REDUCTIONS[op](x, axis=axis))


def test_cast_of_nan_inf_and_out_of_range():
    """Explicitly: float -> int of NaN, +-inf and out-of-range values gives NumPy's result
    (x86: the minimum integer, never C's undefined behaviour); float -> bool of NaN is True."""
    x = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 1e19, -1e19, 2.5, -2.5, -0.0], np.float64)
    graph, (node,) = graph_of("bad_casts", x)
    dtypes = ["i32", "i64", "bool"]
    graph.set_outputs([graph.add_op("cast", [node], {"dtype": d}) for d in dtypes])
    for result, d in zip(run_c(graph, x), dtypes):
        assert_identical(result, numpy_quietly(lambda v: v.astype(DTYPES[d]), x))
    assert run_c(graph, x)[2][0]  # bool(nan) is True


@pytest.mark.parametrize("dtype", INTS)
def test_integer_reciprocal(dtype, backend):
    """NumPy's integer reciprocal is ``1 / x`` in double cast back: 1, -1, 0 otherwise, and
    ``reciprocal(0)`` is the minimum integer on x86."""
    info = np.iinfo(DTYPES[dtype])
    x = np.array([1, -1, 2, -2, 0, 7, info.min, info.max], DTYPES[dtype])
    graph, (node,) = graph_of("reciprocal", x)
    graph.set_outputs([graph.add_op("reciprocal", [node])])
    assert_identical(run_on(backend, graph, x)[0], numpy_quietly(np.reciprocal, x))


@pytest.mark.parametrize("dtype", FLOATS + INTS)
def test_sign_abs_floor_ceil_of_special_values(dtype, backend):
    """``sign`` of NaN is NaN and of -0.0 is 0; ``abs(-0.0)`` is 0.0; floor/ceil keep -0.0 and
    are the identity on integers (the extremes included: no trip through double)."""
    if dtype in INTS:
        info = np.iinfo(DTYPES[dtype])
        x = np.array([0, 3, -3, info.min, info.max, info.max - 1], DTYPES[dtype])
    else:
        x = np.array([np.nan, -0.0, 0.0, -0.25, 0.25, -np.inf, np.inf, -2.5], DTYPES[dtype])
    ops = ["sign", "abs", "floor", "ceil", "neg"]
    graph, (node,) = graph_of("special", x)
    graph.set_outputs([graph.add_op(op, [node]) for op in ops])
    for op, result in zip(ops, check(graph, [x], backend=backend)):
        assert_identical(result, numpy_quietly(UNARY[op], x))


@pytest.mark.parametrize("dtype", INTS)
def test_integer_pow(dtype):
    """Integer powers by squaring, wrapping on overflow as NumPy; ``0 ** 0 == 1``."""
    a, b = grid([0, 1, -1, 2, -3, 5, 12], DTYPES[dtype])
    b = b.copy()
    b[0, :] = [0, 1, 2, 3, 0, 7, 31]
    run_binary_table(["pow"], a, b)


@pytest.mark.parametrize("dtype", INTS)
def test_negative_integer_power_raises_like_numpy(dtype):
    """NumPy raises ValueError for an integer to a negative integer power; the compiled code
    raises MinicompRuntimeError with NumPy's message (and works again on good arguments)."""
    a, b = np.array([2, 3], DTYPES[dtype]), np.array([1, -1], DTYPES[dtype])
    with pytest.raises(ValueError, match="negative integer powers"):
        np.power(a, b)
    graph, nodes = graph_of("negative_power", a, b)
    graph.set_outputs([graph.add_op("pow", nodes)])
    compiled = minicomp.compile(graph, target="c")
    with pytest.raises(MinicompRuntimeError, match="negative integer powers"):
        compiled(a, b)
    assert_identical(compiled(a, np.abs(b))[0], a ** np.abs(b))


def test_float16_rounds_after_every_op(backend):
    """float16 arithmetic is done in float32 and rounded to float16 after each op, like NumPy:
    ``(2048 + 1) + 1`` is 2048 in float16 (each +1 rounds away), ``x * x`` overflows to inf
    above 255.9, and division rounds once."""
    x = np.array([2048.0, 300.0, 1.0 / 3.0, 0.1, -65504.0, 6e-8], np.float16)
    one = np.array(1.0, np.float16)
    graph, (nx, n1) = graph_of("f16", x, one)
    step = graph.add_op("add", [nx, n1])
    twice = graph.add_op("add", [step, n1])
    square = graph.add_op("mul", [nx, nx])
    third = graph.add_op("div", [nx, graph.add_constant(np.float16(3.0))])
    fma = graph.add_op("sub", [graph.add_op("mul", [nx, nx]), nx])
    graph.set_outputs([twice, square, third, fma, graph.add_op("sum", [nx])])
    actual = check(graph, [x, one], backend=backend)
    with np.errstate(all="ignore"):
        expected = [(x + one) + one, x * x, x / np.float16(3), x * x - x]
    for result, want in zip(actual, expected):
        assert_identical(result, want)
    assert actual[0][0] == 2048 and np.isinf(actual[1][1])


def test_negated_negative_constants(backend):
    """``-c`` of a negative one-element constant (inlined as a literal: ``- -3``, never the
    decrement ``--3``), the minimum integers (wrapping) and -inf, and ``x - c``."""
    x = np.array([1, -2], np.int32)
    graph, (node,) = graph_of("negate", x)
    outputs, expected = [], []
    for value, dtype in [(-3, np.int32), (-1.75, np.float64), (-2**31, np.int32),
                         (-2**63, np.int64), (-np.inf, np.float32), (-0.0, np.float16)]:
        value = np.array([value], dtype)
        constant = graph.add_constant(value)
        outputs += [graph.add_op("neg", [constant]), graph.add_op("sub", [node, constant])]
        expected += [numpy_quietly(np.negative, value), numpy_quietly(np.subtract, x, value)]
    graph.set_outputs(outputs)
    for result, want in zip(check(graph, [x], backend=backend), expected):
        assert_identical(result, want)


def test_bool_arrays_are_bytes_holding_exactly_0_or_1():
    """Bool arrays are uint8_t in C (gcc vectorises a branch on a loaded byte, not on a _Bool);
    every bool the kernels store must still be the byte 0 or 1, as NumPy's are."""
    from minicomp.codegen.c import render_c

    rng = np.random.default_rng(0)
    a, b = rng.random(1000) > 0.5, rng.random(1000) > 0.3
    x = rng.standard_normal(1000).astype(np.float32)

    def fn(a, b, x):
        return ~a, a & ~b, a != b, x > 0, (x * 3).astype(bool), np.where(a, x, 0) != 0

    compiled = minicomp.jit(fn)
    for got, want in zip(compiled(a, b, x), fn(a, b, x)):
        assert got.dtype == np.bool_ and np.array_equal(got, want)
        assert set(np.unique(got.view(np.uint8))) <= {0, 1}
    source = render_c(compiled.compiled_for(a, b, x).run.program)
    assert "const uint8_t *restrict b_a" in source and "bool *" not in source
