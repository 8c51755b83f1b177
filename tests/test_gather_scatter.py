"""The gather and scatter ops, and integer-array indexing traced into them, against NumPy.

* **ops** (graph API): ``gather`` with 1..3 index arrays that broadcast together, on any axis,
  in the modes raise/wrap/clip, every dtype and both index dtypes, negative and repeated
  indices, empty index arrays, 0- and 1-sized dims; ``scatter`` with repeated positions in every
  mode (set: the last write wins; add ...: accumulated as ``ufunc.at``). Each graph runs in C and
  in the interpreter and both must equal NumPy.
* **out of range**: an index outside its axis is an ``IndexOutOfBoundsError`` (an ``IndexError``,
  as NumPy's) from C and from the interpreter alike, never a read or write outside the buffers
  (``tests/test_sanitize.py`` re-runs these under AddressSanitizer).
* **tracing**: ``wte[ids]``, ``h[:, [-1], :]``, ``P[np.arange(N), y]``, index arrays separated
  by a slice (NumPy moves the picked axes first), mixed with ints, slices, None and ``...``,
  constant masks, ``np.take``/``np.take_along_axis``: compiled for both targets, on
  hypothesis-drawn shapes, equal to NumPy. Writes (``x[idx] = v``) are in ``tests/test_inplace.py``.
"""

from __future__ import annotations

import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minicomp
from minicomp import Graph, TensorType
from minicomp.errors import IndexOutOfBoundsError, ShapeError, UnsupportedError
from minicomp.ir.dtypes import DTYPES
from minicomp.ir.ops import SCATTER_UFUNCS
from minicomp.testing import assert_close

TARGETS = ["c", "numpy"]
INDEX_DTYPES = [np.int32, np.int64]


def values(rng, dtype, shape):
    """Small exact values of ``dtype`` (multiples of 1/4 for floats)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "f":
        return (rng.integers(-16, 16, shape) / 4).astype(dtype)
    return rng.integers(-9, 9, shape).astype(dtype)


def run_both(graph: Graph, *arrays) -> list[np.ndarray]:
    """Run in C and in the interpreter; they must agree; return C's outputs."""
    actual = minicomp.compile(graph, target="c")(*arrays)
    assert_close(actual, minicomp.interpret(graph, *arrays))
    return actual


# ----------------------------------------------------------------------------------------------
# gather: the op
# ----------------------------------------------------------------------------------------------


@st.composite
def gathers(draw):
    """``(x, indices, axis, mode)`` for a gather NumPy defines: the index arrays broadcast."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
    axis = draw(st.integers(0, len(shape) - 1))
    count = draw(st.integers(1, min(3, len(shape) - axis)))
    picked = draw(hnp.mutually_broadcastable_shapes(num_shapes=count, max_dims=3, min_side=0, max_side=3))
    mode = draw(st.sampled_from(["raise", "wrap", "clip"]))
    x = values(rng, draw(st.sampled_from(list(DTYPES.values()))), shape)
    if any(x.shape[axis + n] == 0 for n in range(count)):
        x = values(rng, x.dtype, tuple(max(d, 1) for d in shape))  # any index of a size-0 axis is out of range
    indices = []
    for n, index_shape in enumerate(picked.input_shapes):
        size = max(x.shape[axis + n], 1)
        low, high = (-size, size) if mode == "raise" else (-3 * size, 3 * size)
        index_dtype = draw(st.sampled_from(INDEX_DTYPES))
        indices.append(rng.integers(low, high, index_shape).astype(index_dtype))
    return x, indices, axis, mode


def numpy_gather(x, indices, axis, mode):
    sizes = [x.shape[axis + n] for n in range(len(indices))]
    if mode == "wrap":
        indices = [i % s for i, s in zip(indices, sizes)]
    elif mode == "clip":
        indices = [np.clip(i, 0, s - 1) for i, s in zip(indices, sizes)]
    return x[(slice(None),) * axis + tuple(indices)]


@settings(max_examples=min(25, settings.default.max_examples))
@given(case=gathers())
def test_gather_op_equals_numpy(case):
    x, indices, axis, mode = case
    graph = Graph("gather")
    nodes = [graph.add_input(f"x{n}", TensorType.of(a)) for n, a in enumerate([x, *indices])]
    picked = graph.add_op("gather", nodes, {"axis": axis, "mode": mode})
    graph.set_outputs([picked])
    expected = numpy_gather(x, indices, axis, mode)
    assert picked.type == TensorType.of(expected)
    assert_close(run_both(graph, x, *indices)[0], expected)


def test_gather_fuses_with_elementwise_ops_and_stays_correct(rng):
    """An embedding lookup followed by elementwise ops: one kernel, NumPy's values."""
    def embed(wte, ids, scale):
        return np.tanh(wte[ids] * scale + 1.0)
    wte, scale = rng.standard_normal((50, 8)).astype(np.float32), np.float32(0.5)
    ids = rng.integers(-50, 50, (3, 7)).astype(np.int32)
    jitted = minicomp.jit(embed)
    assert_close(jitted(wte, ids, scale), embed(wte, ids, scale))
    kernels = jitted.inspect(wte, ids, scale).program.kernels
    assert len(kernels) == 1, [k.name for k in kernels]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("bad", [5, -6, 2**31 - 1, -2**31])
def test_an_index_out_of_range_is_an_index_error_never_a_read_outside(target, index_dtype, bad):
    wte = np.arange(15, dtype=np.float32).reshape(5, 3)
    ids = np.array([0, 4, -5, bad], index_dtype)
    embed = minicomp.jit(lambda wte, ids: wte[ids] + 1, target=target)
    assert_close(embed(wte, ids[:3]), wte[ids[:3]] + 1)
    with pytest.raises(IndexError):
        wte[ids]
    with pytest.raises(IndexOutOfBoundsError, match="out of bounds"):
        embed(wte, ids)


@pytest.mark.parametrize("target", TARGETS)
def test_out_of_range_in_take_along_axis_and_a_second_index_array(target):
    x = np.zeros((3, 4), np.float32)
    rows, cols = np.array([0, 1, 2]), np.array([1, 3, 4])
    with pytest.raises(IndexOutOfBoundsError):
        minicomp.jit(lambda x, r, c: x[r, c], target=target)(x, rows, cols)
    with pytest.raises(IndexOutOfBoundsError):
        minicomp.jit(lambda x, c: np.take_along_axis(x, c[:, None], axis=1), target=target)(x, cols)


def test_an_index_into_an_empty_axis_is_refused_when_traced():
    with pytest.raises(ShapeError, match="size 0"):
        minicomp.trace(lambda x, i: x[i], np.zeros((0, 3), np.float32), np.zeros(2, np.int64))
    with pytest.raises(ShapeError, match=r"pick nothing.*NumPy still checks"):  # x[[7], []]: NumPy raises
        minicomp.trace(lambda x, i, j: x[i, j], np.zeros((3, 4), np.float32), np.zeros(1, np.int64),
                       np.zeros(0, np.int64))
    picks_nothing = minicomp.jit(lambda x, j: x[np.arange(3)[:, None], j])  # constant rows: checked now
    assert picks_nothing(np.zeros((3, 4), np.float32), np.zeros(0, np.int64)).shape == (3, 0)
    out = minicomp.jit(lambda x, i: x[i])(np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    assert out.shape == (0, 3)


# ----------------------------------------------------------------------------------------------
# scatter: the op
# ----------------------------------------------------------------------------------------------


@st.composite
def scatters(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4))
    mode = draw(st.sampled_from(["set", *SCATTER_UFUNCS]))
    dtype = draw(st.sampled_from(["f16", "f32", "f64"] if mode != "set" else list(DTYPES)))
    x = values(rng, DTYPES[dtype], shape)
    size = x.size
    where_shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=6))
    positions = rng.integers(-size, size, where_shape).astype(draw(st.sampled_from(INDEX_DTYPES)))
    written = values(rng, x.dtype if mode == "set" else draw(st.sampled_from([x.dtype, np.float32])), where_shape)
    return x, positions, written, mode


def numpy_scatter(x, positions, written, mode):
    out = x.copy().reshape(-1)
    if mode == "set":
        for p, v in zip(positions.reshape(-1), written.reshape(-1)):  # in order: the last write wins
            out[p] = v
    else:
        SCATTER_UFUNCS[mode].at(out, positions.reshape(-1), written.reshape(-1))
    return out.reshape(x.shape)


@settings(max_examples=min(25, settings.default.max_examples))
@given(case=scatters())
def test_scatter_op_equals_numpy(case):
    x, positions, written, mode = case
    graph = Graph("scatter")
    nodes = [graph.add_input(name, TensorType.of(a)) for name, a in zip("xpv", (x, positions, written))]
    graph.set_outputs([graph.add_op("scatter", nodes, {"mode": mode})])
    assert_close(run_both(graph, x, positions, written)[0], numpy_scatter(x, positions, written, mode))


@pytest.mark.parametrize("bad", [6, -7])
def test_a_scatter_position_out_of_range_is_an_index_error(bad):
    graph = Graph("scatter")
    x, p, v = (graph.add_input(n, TensorType(s, d)) for n, s, d in
               [("x", (2, 3), np.float32), ("p", (2,), np.int64), ("v", (2,), np.float32)])
    graph.set_outputs([graph.add_op("scatter", [x, p, v], {"mode": "add"})])
    args = np.zeros((2, 3), np.float32), np.array([0, bad]), np.ones(2, np.float32)
    for run in (minicomp.compile(graph, target="c"), lambda *a: minicomp.interpret(graph, *a)):
        with pytest.raises(IndexOutOfBoundsError):
            run(*args)


# ----------------------------------------------------------------------------------------------
# Tracing: NumPy's advanced indexing
# ----------------------------------------------------------------------------------------------

# (name, index builder from (shape, traced int index array, rng) -> key, min dims)
KEYS = {
    "x[ids]": (lambda s, i, r: i, 1),
    "x[:, [-1], :]": (lambda s, i, r: (slice(None), [-1], slice(None)), 3),
    "x[arange(N), y]": (lambda s, i, r: (np.arange(s[0]).reshape((-1,) + (1,) * i.ndim), i % s[1]), 2),
    "x[ids, :, 0]": (lambda s, i, r: (i, slice(None), 0), 3),
    "x[0, :, ids]": (lambda s, i, r: (0, slice(None), i % s[2] - s[2]), 3),
    "x[:, 0, ids]": (lambda s, i, r: (slice(None), -1, i % s[2]), 3),
    "x[None, ids, ..., ::-2]": (lambda s, i, r: (None, i, Ellipsis, slice(None, None, -2)), 2),
    "x[ids, None, ids2]": (lambda s, i, r: (i, None, (i + 1) % s[1]), 2),
    "x[[]]": (lambda s, i, r: [], 1),
    "x[range(..), 1:]": (lambda s, i, r: (range(s[0] - 1, -1, -1), slice(1, None)), 2),
    "x[const mask]": (lambda s, i, r: r.random(s[:1]) < 0.5, 1),
    "x[:, const 2-d mask]": (lambda s, i, r: (slice(None), r.random(s[1:3]) < 0.5), 3),
    "x[ids[0]] (0-d)": (lambda s, i, r: i.reshape(-1)[0] if i.size else 0, 1),
    "x[..., const ids]": (lambda s, i, r: (Ellipsis, np.array([[0, -1]])), 1),
}


@pytest.mark.parametrize("name", KEYS)
@settings(max_examples=8)
@given(data=st.data())
def test_advanced_indexing_equals_numpy(name, data):
    make_key, min_dims = KEYS[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = data.draw(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=1, max_side=4))
    x = values(rng, data.draw(st.sampled_from(list(DTYPES.values()))), shape)
    ids_shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3))
    ids = rng.integers(-shape[0], shape[0], ids_shape).astype(data.draw(st.sampled_from(INDEX_DTYPES)))
    key_of = _keys_with_one_rng(make_key, shape, rng)

    def index(x, ids):
        return x[key_of(ids)]

    expected = index(x, ids)
    for target in TARGETS:
        assert_close(minicomp.jit(index, target=target)(x, ids), expected)


def _keys_with_one_rng(make_key, shape, rng):
    """``key(ids)``: the key with the same constant parts on each call (masks drawn once)."""
    seed = int(rng.integers(2**32))
    return lambda ids: make_key(shape, ids, np.random.default_rng(seed))


def test_a_traced_index_of_a_constant_array_is_not_called_control_flow(rng):
    """``W[ids]`` with ``W`` a closed-over NumPy array cannot be traced (NumPy indexes W itself,
    never asking the traced ids); the message says to pass W as an argument, which works."""
    weights = rng.standard_normal((6, 4)).astype(np.float32)
    ids = np.array([5, 0, -1])
    assert_close(minicomp.jit(lambda w, ids: w[ids])(weights, ids), weights[ids])
    for gather in (lambda ids: weights[ids], lambda ids: np.take(weights, ids, axis=0)):
        with pytest.raises(UnsupportedError) as info:
            minicomp.trace(gather, ids)
        assert "pass W as an argument" in str(info.value) and "control flow" not in str(info.value)


def test_a_traced_boolean_mask_is_refused_with_the_fix():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(UnsupportedError, match=r"data-dependent shape.*np.where\(mask, x, 0\)"):
        minicomp.trace(lambda x: x[x > 0], x)


def test_a_constant_index_out_of_range_is_refused_at_its_line():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"index 4 is out of bounds for axis 1 with size 4.*test_gather_scatter"):
        minicomp.trace(lambda x: x[:, [0, 4]], x)
    with pytest.raises(ShapeError, match="boolean index did not match"):
        minicomp.trace(lambda x: x[np.array([True, False])], x)
    with pytest.raises(ShapeError, match="np.take: index -5"):
        minicomp.trace(lambda x: np.take(x, [-5], axis=1), x)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.uint64, np.intp])
def test_constant_index_arrays_of_every_numpy_integer_dtype(dtype):
    """minicomp's inputs are int32/int64; a constant index array may be any NumPy integer dtype
    (jit reads closed-over arrays at every call: freeze=True folds it as a constant)."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    index = np.array([2, 0, 2], dtype)
    fn = lambda x: (x[index], x[:, index], np.take(x, index, axis=1))  # noqa: E731
    for target in TARGETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", minicomp.MinicompWarning)
            result = minicomp.jit(fn, target=target, freeze=True)(x)
        assert_close(result, fn(x))
