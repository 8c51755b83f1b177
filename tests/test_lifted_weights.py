"""Weights are never stale (``frontend/state.py``): arrays a jitted function reads through its
closure, its globals and ``self`` are inputs read at every call, guarded by shape and dtype;
``freeze=True`` folds them as constants and says so; values stored on ``self`` are written back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import minicomp
from minicomp.errors import MinicompWarning, UnsupportedError
from minicomp.frontend.tracer import TracedArray
from minicomp.testing import assert_close

f32 = np.float32
X = np.arange(6, dtype=f32).reshape(2, 3)
W_GLOBAL = np.eye(3, dtype=f32)


def uses_the_global(x):
    return x @ W_GLOBAL


def helper(x):
    return x @ W_GLOBAL.T  # read by a function the jitted one calls


def calls_a_helper(x):
    return helper(x) + 1


@pytest.fixture(autouse=True)
def fresh_global():
    global W_GLOBAL
    W_GLOBAL = np.eye(3, dtype=f32)
    yield
    W_GLOBAL = np.eye(3, dtype=f32)


# ----------------------------------------------------------------------------------------------
# Closures, globals, self: in-place updates and rebinding are seen
# ----------------------------------------------------------------------------------------------


def test_a_closure_weight_updated_in_place_or_rebound_is_read_at_each_call():
    def make():
        w = np.eye(3, dtype=f32)

        def f(x):
            return x @ w

        def rebind(new):
            nonlocal w
            w = new
        return f, lambda: w, rebind

    f, current, rebind = make()
    fast = minicomp.jit(f)
    assert_close(fast(X), X)
    current()[:] *= 2  # in place
    assert_close(fast(X), X * 2)
    rebind(np.full((3, 3), 3, f32))  # a new array object of the same shape and dtype
    assert_close(fast(X), f(X))
    assert fast.cache_size == 1
    assert [n.name for n in fast.trace(X).inputs] == ["x", "w"]


def test_a_global_weight_updated_in_place_rebound_or_reshaped():
    global W_GLOBAL
    fast = minicomp.jit(uses_the_global)
    assert_close(fast(X), X)
    W_GLOBAL *= 4
    assert_close(fast(X), X * 4)
    W_GLOBAL = np.ones((3, 3), f32)
    assert_close(fast(X), uses_the_global(X))
    assert fast.cache_size == 1
    W_GLOBAL = np.ones((3, 5), f32)  # a new shape traces again
    assert_close(fast(X), uses_the_global(X))
    W_GLOBAL = np.ones((3, 5), np.float64)  # and so does a new dtype
    assert_close(fast(X), uses_the_global(X))
    assert fast.cache_size == 3


def test_a_global_read_by_a_called_helper_is_lifted_too():
    global W_GLOBAL
    fast = minicomp.jit(calls_a_helper)
    assert_close(fast(X), calls_a_helper(X))
    W_GLOBAL = np.arange(9, dtype=f32).reshape(3, 3)
    assert_close(fast(X), calls_a_helper(X))


class Linear:
    def __init__(self, d_in, d_out, seed=0):
        rng = np.random.default_rng(seed)
        self.W = rng.standard_normal((d_in, d_out)).astype(f32)
        self.b = np.zeros(d_out, f32)

    def __call__(self, x):
        return x @ self.W + self.b


class MLP:
    def __init__(self):
        self.layers = [Linear(3, 4, 0), Linear(4, 2, 1)]
        self.config = {"scale": np.float32(1.0)}

    def feedforward(self, x):
        for layer in self.layers:
            x = np.maximum(layer(x), 0)
        return x

    @minicomp.jit
    def forward(self, x):
        return self.feedforward(x)

    def train_step(self, x, lr=0.1):
        for layer in self.layers:  # a stand-in for a gradient step
            layer.W -= lr * np.ones_like(layer.W)
            layer.b = layer.b + lr


def test_after_a_training_step_the_jitted_method_returns_the_new_outputs():
    model = MLP()
    fast = minicomp.jit(model.feedforward)
    for _ in range(3):
        assert_close(fast(X), model.feedforward(X))
        model.train_step(X)  # W in place, b rebound
    assert fast.cache_size == 1
    names = [n.name for n in fast.trace(X).inputs]
    assert names == ["x", "self.layers.0.W", "self.layers.0.b", "self.layers.1.W", "self.layers.1.b"]
    assert not any(isinstance(v, TracedArray) for layer in model.layers for v in vars(layer).values())


def test_jit_as_a_method_decorator_reads_self_at_each_call():
    first, second = MLP(), MLP()
    second.layers[0].W = second.layers[0].W * -1
    assert_close(first.forward(X), first.feedforward(X))
    assert_close(second.forward(X), second.feedforward(X))
    first.train_step(X)
    assert_close(first.forward(X), first.feedforward(X))


def test_a_state_stored_on_self_is_written_back_after_each_call():
    class RNN:
        def __init__(self):
            self.Wh = np.eye(3, dtype=f32) * 0.5
            self.h = np.zeros(3, f32)

        def step(self, x):
            self.h = np.tanh(self.h @ self.Wh + x)
            return self.h * 2

    fast, plain = RNN(), RNN()
    step = minicomp.jit(fast.step)
    for x in np.random.default_rng(0).standard_normal((4, 3)).astype(f32):
        assert_close(step(x), plain.step(x))
        assert_close(fast.h, plain.h)
        assert type(fast.h) is np.ndarray
    assert step.cache_size == 1


# ----------------------------------------------------------------------------------------------
# freeze=True: constants, said so
# ----------------------------------------------------------------------------------------------


def test_freeze_folds_outside_arrays_as_constants_and_warns():
    global W_GLOBAL
    fast = minicomp.jit(uses_the_global, freeze=True)
    with pytest.warns(MinicompWarning, match=r"freeze=True.*W_GLOBAL"):
        assert_close(fast(X), X)
    assert [n.name for n in fast.trace(X).inputs] == ["x"]
    W_GLOBAL *= 2  # frozen: the compiled function keeps the value it was traced with
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: nothing is compiled again
        assert_close(fast(X), X)


def test_without_freeze_nothing_is_said():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(minicomp.jit(uses_the_global)(X), X)


def test_needing_a_lifted_arrays_values_suggests_freeze():
    scale = np.full((), 2.0, f32)

    def f(x):
        return x * float(scale)

    with pytest.raises(UnsupportedError, match="scale is an array read from outside.*freeze=True"):
        minicomp.jit(f)(X)
    assert_close(minicomp.jit(f, freeze=True)(X), X * 2)  # float(scale) read once, at trace time


def test_an_exception_while_tracing_leaves_no_proxy_behind():
    model = MLP()

    def broken(x):
        model.feedforward(x)
        raise KeyError("boom")

    with pytest.raises(KeyError):
        minicomp.jit(broken)(X)
    assert all(type(v) is np.ndarray for layer in model.layers for v in vars(layer).values())
    assert type(W_GLOBAL) is np.ndarray
