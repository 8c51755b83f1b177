"""Writes while tracing: functional updates that keep NumPy's results exactly.

``x[idx] = v``, ``x[idx] += v`` (and -=, *=, /=), in-place operators, ``out=`` and ``np.add.at``
(and subtract, multiply, maximum, minimum) with basic and advanced indices, traced and constant,
compiled for C and for the interpreter, against the same function run by NumPy:

* repeated indices: ``x[idx] += v`` does not accumulate (the last write wins) but
  ``np.add.at(x, idx, v)`` does;
* views: a write into ``y = x[0]`` changes ``x`` (written through); a view read after its base
  was written, and writes into transposed/reshaped views, are refused, never silently stale;
* arguments written (a KV cache ``cache[:B, s:s+L] = xk``): after the call the caller's array
  holds what NumPy would have left in it, and the return values match.
"""

from __future__ import annotations

import copy

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minicomp
from minicomp.errors import DTypeError, IndexOutOfBoundsError, MinicompRuntimeError, ShapeError, UnsupportedError
from minicomp.ir.dtypes import DTYPES
from minicomp.testing import assert_close

TARGETS = ["c", "numpy"]


def check_against_numpy(fn, *args, targets=TARGETS):
    """``fn`` compiled for each target returns what NumPy returns and leaves its array arguments
    as NumPy leaves them (each run gets fresh copies)."""
    expected_args = copy.deepcopy(args)
    expected = fn(*expected_args)
    for target in targets:
        actual_args = copy.deepcopy(args)
        actual = minicomp.jit(fn, target=target)(*actual_args)
        assert_close(actual, expected)
        for a, e in zip(actual_args, expected_args):
            if isinstance(e, np.ndarray):
                assert_close(a, e)


@pytest.fixture
def x(rng):
    return rng.standard_normal((4, 5)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# x[idx] = v, x[idx] op= v, np.ufunc.at
# ----------------------------------------------------------------------------------------------

UPDATES = {  # y: (rows, cols), i: an index array of rows, v: one row (cols,)
    "y[i] = 7": lambda y, i, v: y.__setitem__(i, 7),
    "y[i] = v": lambda y, i, v: y.__setitem__(i, v),
    "y[i, 1:] = v[1:]": lambda y, i, v: y.__setitem__((i, slice(1, None)), v[1:]),
    "y[i] += v": lambda y, i, v: _iadd(y, i, v),
    "y[:, i % cols] -= 1": lambda y, i, v: _isub(y, (slice(None), i % y.shape[1]), 1),
    "y[1:3, ::2] *= 2": lambda y, i, v: _imul(y, (slice(1, 3), slice(None, None, 2)), 2),
    "y[..., -1] = v[0]": lambda y, i, v: y.__setitem__((Ellipsis, -1), v[0]),
    "y[mask] = 0": lambda y, i, v: y.__setitem__(np.arange(y.shape[0]) % 2 == 0, 0),
    "y[-1] = a list": lambda y, i, v: y.__setitem__(-1, [1.5] * y.shape[1]),
    "y[i, i % cols] = v[0]": lambda y, i, v: y.__setitem__((i, i % y.shape[1]), v[0]),
    "np.add.at(y, i, v)": lambda y, i, v: np.add.at(y, i, v),
    "np.subtract.at(y, (i, 0), 1)": lambda y, i, v: np.subtract.at(y, (i, 0), 1.0),
    "np.maximum.at(y, i, v)": lambda y, i, v: np.maximum.at(y, i, v),
    "np.multiply.at(y, (i, i % cols), 3)": lambda y, i, v: np.multiply.at(y, (i, i % y.shape[1]), 3.0),
    "np.minimum.at(y, [], 0)": lambda y, i, v: np.minimum.at(y, [], 0.0),
}


def _iadd(y, key, value):
    y[key] += value


def _isub(y, key, value):
    y[key] -= value


def _imul(y, key, value):
    y[key] *= value


@pytest.mark.parametrize("name", UPDATES)
@settings(max_examples=6)
@given(data=st.data())
def test_updates_equal_numpy(name, data):
    update = UPDATES[name]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rows, cols = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    dtype = data.draw(st.sampled_from(["f16", "f32", "f64"] if ".at" in name else list(DTYPES)))
    x = (rng.integers(-8, 8, (rows, cols)) / 2).astype(DTYPES[dtype])
    v = (rng.integers(-8, 8, cols) / 2).astype(DTYPES[dtype])
    index_shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=4))
    i = rng.integers(-rows, rows, index_shape).astype(data.draw(st.sampled_from([np.int32, np.int64])))
    def fn(x, i, v):
        y = x * 1  # a local array: the argument is not written here
        update(y, i, v)
        return y

    check_against_numpy(fn, x, i, v)


def test_repeated_indices_last_write_wins_but_add_at_accumulates(x):
    i = np.array([1, 1, 1, -3, 0])

    def fn(x, i):
        plus = x.copy()
        plus[i] += 1.0          # each of the three writes of row 1 is x[1] + 1: no accumulation
        at = x.copy()
        np.add.at(at, i, 1.0)   # row 1 gets + 3 (and row -3 == 1 once more: + 4)
        return plus, at

    check_against_numpy(fn, x, i)
    plus, at = minicomp.jit(fn)(x, i)
    assert_close(plus[1], x[1] + 1) and assert_close(at[1], x[1] + 4)


def test_a_traced_index_out_of_range_in_a_write_is_an_index_error(x):
    def fn(x, i):
        y = x * 2
        y[i] = 0
        return y
    for target in TARGETS:
        with pytest.raises(IndexOutOfBoundsError):
            minicomp.jit(fn, target=target)(x, np.array([0, 4]))
        with pytest.raises(IndexOutOfBoundsError):
            minicomp.jit(lambda x, i: (np.add.at(x, i, 1.0), x)[1], target=target)(x.copy(), np.array([-5]))


def test_a_constant_index_out_of_range_in_a_write_is_refused_at_its_line(x):
    def fn(x):
        y = x * 2
        y[:, 5] = 0
        return y
    with pytest.raises(ShapeError, match=r"index 5 is out of bounds.*test_inplace.py"):
        minicomp.trace(fn, x)


def test_a_value_that_does_not_broadcast_is_refused(x):
    def fn(x):
        y = x * 2
        y[1:3] = np.ones(3, np.float32)
        return y
    with pytest.raises(ValueError):
        fn(x)
    with pytest.raises(ShapeError, match=r"could not broadcast input array from shape \(3,\) into shape \(2, 5\)"):
        minicomp.trace(fn, x)


# ----------------------------------------------------------------------------------------------
# In-place operators and out=
# ----------------------------------------------------------------------------------------------


def test_out_and_inplace_operators_rebind_the_array(x):
    def fn(x):
        y = x + 1
        np.multiply(y, 3, out=y)
        np.exp(x, out=y)
        np.add(y, x, out=(y,))
        z = y
        z /= 2                  # z is y: both see it
        w = np.add(x, 1.0, out=np.empty_like(x))
        return y, z, w
    check_against_numpy(fn, x)


def test_out_that_numpy_cannot_cast_into_is_refused(x):
    def fn(x):
        n = (x > 0).astype(np.int32)
        np.add(n, 1.5, out=n)
        return n
    with pytest.raises(DTypeError, match="same_kind"):
        minicomp.trace(fn, x)


def test_out_into_a_numpy_array_is_refused_with_the_fix(x):
    def fn(x):
        a = np.zeros((4, 5), np.float32)
        a += x                   # NumPy: np.add(a, x, out=(a,)) with a NumPy a
        return a
    with pytest.raises(UnsupportedError, match=r"out=a.*a = a \+ t"):
        minicomp.trace(fn, x)


# ----------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------


def test_writes_into_basic_index_views_change_the_base(x):
    def fn(x):
        y = x * 1
        row = y[0]
        row[:] = 1              # y[0] becomes ones
        block = y[1:3, 1:]
        block *= 2              # through a 2-d view
        inner = block[0]
        inner += 10             # a view of a view: both block and y change
        for r in y[3:]:         # iteration gives views too
            r -= 5
        return y, row, block
    check_against_numpy(fn, x)


@pytest.mark.parametrize("write_after_the_view", [
    lambda y: (y[0], y.__setitem__(0, 5.0))[0],         # v = y[0]; y[0] = 5: v shows 5
    lambda y: (y.T, y.__iadd__(1.0))[0],               # v = y.T; y += 1
    lambda y: (y[1:], np.add.at(y, [1], 1.0))[0],
    lambda y: (y.reshape(-1)[2:], y.__setitem__((1, 1), -1.0))[0],
    lambda y: (np.broadcast_to(y, (2, 4, 5)), np.multiply(y, 2, out=y))[0],
])
def test_a_view_read_after_its_base_was_written_shows_the_write(write_after_the_view, x):
    def fn(x):
        y = x * 1
        view = write_after_the_view(y)
        return view * 2, y
    check_against_numpy(fn, x)


def test_a_write_into_a_transposed_view_is_refused_with_the_fix(x):
    def fn(x):
        y = x * 1
        t = y.T
        t[0] = 1
        return y
    with pytest.raises(UnsupportedError, match=r"transposed.*y = x.T.copy\(\)"):
        minicomp.trace(fn, x)


def test_a_view_copied_before_the_write_is_fine(x):
    def fn(x):
        y = x * 1
        kept = y[0].copy()
        y[0] = 5.0
        return kept, y
    check_against_numpy(fn, x)


# ----------------------------------------------------------------------------------------------
# Arguments written in place: a KV cache
# ----------------------------------------------------------------------------------------------


def attention_step(cache_k, cache_v, xk, xv, q, start):
    """Append this step's keys and values to the caches (in place), attend over all of them."""
    batch, length = xk.shape[:2]
    cache_k[:batch, start:start + length] = xk
    cache_v[:batch, start:start + length] = xv
    keys, vals = cache_k[:batch, :start + length], cache_v[:batch, :start + length]
    scores = q @ keys.transpose(0, 2, 1) / float(np.sqrt(q.shape[-1]))  # a Python float keeps f32
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return (scores / scores.sum(-1, keepdims=True)) @ vals


@settings(max_examples=6)
@given(start=st.integers(0, 5), length=st.integers(1, 3), batch=st.integers(1, 2))
def test_kv_cache_written_in_place_is_left_as_numpy_leaves_it(start, length, batch):
    rng = np.random.default_rng(start * 31 + length)
    cache_k, cache_v = (rng.standard_normal((2, 8, 4)).astype(np.float32) for _ in range(2))
    xk, xv, q = (rng.standard_normal((batch, length, 4)).astype(np.float32) for _ in range(3))
    check_against_numpy(attention_step, cache_k, cache_v, xk, xv, q, start)


def test_a_generation_loop_updates_the_cache_each_call(rng):
    step = minicomp.jit(attention_step)
    cache_k, cache_v = np.zeros((1, 6, 4), np.float32), np.zeros((1, 6, 4), np.float32)
    ref_k, ref_v = cache_k.copy(), cache_v.copy()
    for position in range(6):
        xk, xv, q = (rng.standard_normal((1, 1, 4)).astype(np.float32) for _ in range(3))
        assert_close(step(cache_k, cache_v, xk, xv, q, position), attention_step(ref_k, ref_v, xk, xv, q, position))
        assert_close(cache_k, ref_k) and assert_close(cache_v, ref_v)


def test_inplace_operators_and_ufunc_at_on_arguments(x):
    def fn(x, counts, ids):
        x += 1
        x[0] *= 2
        np.add.at(counts, ids, 1)
        return x.sum()
    counts, ids = np.zeros(4, np.int64), np.array([0, 3, 3, -1])
    check_against_numpy(fn, x, counts, ids)


def test_a_read_only_argument_that_is_written_is_refused(x):
    def fn(x):
        x[0] = 0
        return x * 2
    frozen = x.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError):
        fn(frozen.copy().view()) if False else fn(frozen)
    with pytest.raises(MinicompRuntimeError, match="read-only"):
        minicomp.jit(fn)(frozen)
    assert_close(minicomp.jit(fn)(x.copy()), fn(x.copy()))


def test_an_argument_that_is_not_written_stays_as_it_was(x):
    before = x.copy()
    minicomp.jit(lambda x: x[[0, 0]] * 2)(x)
    assert_close(x, before)


def test_a_traced_mask_write_of_one_value_is_a_where(x):
    def fn(x, g):
        y = x * 1
        y[y < 0] = 0            # ReLU's way
        dx = g * 1
        dx[x <= 0.5] = -1.0     # a backward pass's way
        rows = x * 1
        rows[x[:, 0] > 0] = 7   # a mask over the leading axis: whole rows
        return y, dx, rows
    check_against_numpy(fn, x, x[::-1].copy())


def test_a_traced_mask_write_of_many_values_is_refused_with_the_fix(x):
    def fn(x):
        y = x * 1
        y[x > 0] = np.arange(3, dtype=np.float32)
        return y
    with pytest.raises(UnsupportedError, match=r"data-dependent count.*np.where\(mask, v, x\)"):
        minicomp.trace(fn, x)
