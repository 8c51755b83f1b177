"""``minicomp.jit``: its three spellings, the per-signature compile cache, argument handling,
results that never alias the inputs, and compiling once when many threads call at once.
"""

import inspect
import threading
import warnings

import numpy as np
import pytest

import minicomp
from minicomp.errors import MinicompError, MinicompWarning, UnsupportedError
from minicomp.driver import TARGETS
from minicomp.testing import assert_close

f32 = np.float32


def mlp(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


@pytest.fixture
def args(rng):
    return (rng.standard_normal((8, 16)).astype(f32), rng.standard_normal((16, 32)).astype(f32),
            rng.standard_normal((32, 4)).astype(f32))


# ----------------------------------------------------------------------------------------------
# The three spellings
# ----------------------------------------------------------------------------------------------


def test_bare_decorator(args):
    @minicomp.jit
    def fast(x, w1, w2):
        return np.maximum(x @ w1, 0) @ w2

    assert_close(fast(*args), mlp(*args))
    assert fast.target == "c" and fast.__name__ == "fast"


def test_decorator_with_a_target(args):
    @minicomp.jit(target="numpy")
    def fast(x, w1, w2):
        return np.maximum(x @ w1, 0) @ w2

    assert_close(fast(*args), mlp(*args))
    assert fast.target == "numpy"


def test_called_on_a_function(args):
    fast = minicomp.jit(mlp, target="numpy")
    assert_close(fast(*args), mlp(*args))
    assert fast.fn is mlp and fast.__doc__ == mlp.__doc__


def test_results_equal_numpy_for_several_functions(rng):
    x = rng.standard_normal((5, 7))
    for fn in (lambda x: np.exp(x - x.max(axis=-1, keepdims=True)), lambda x: (x.T @ x, x.sum()),
               lambda x: [x[::-1], np.where(x > 0, x, 0.1 * x)], lambda x: x.astype(np.float32) * 2):
        assert_close(minicomp.jit(fn)(x), fn(x))


def test_tuple_and_list_results_keep_their_type(rng):
    x = rng.standard_normal(3)
    assert isinstance(minicomp.jit(lambda x: (x, x + 1))(x), tuple)
    assert isinstance(minicomp.jit(lambda x: [x, x + 1])(x), list)
    assert isinstance(minicomp.jit(lambda x: x + 1)(x), np.ndarray)


def test_unknown_target_lists_the_targets():
    for make in (lambda: minicomp.jit(mlp, target="tpu"), lambda: minicomp.jit(target="tpu")(mlp)):
        with pytest.raises(MinicompError) as info:
            make()
        assert "'tpu'" in str(info.value)
        assert all(name in str(info.value) for name in TARGETS)


def test_numpy_target_refuses_options(args):
    fast = minicomp.jit(mlp, target="numpy", unroll=4)
    with pytest.raises(MinicompError, match="unroll"):
        fast(*args)


# ----------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------


def test_reuses_the_compiled_signature():
    traces = []

    def double(x):
        traces.append(x.shape)  # runs only while tracing (a traced x is stored at every call)
        return x * 2

    fast = minicomp.jit(double)
    x = np.ones((2, 3), f32)
    for _ in range(3):
        assert_close(fast(x), x * 2)
    assert fast.cache_size == 1 and len(traces) == 1
    assert_close(fast(np.full((2, 3), 5, f32)), np.full((2, 3), 10, f32))  # same signature
    assert fast.cache_size == 1 and len(traces) == 1


def test_retraces_when_shapes_or_dtypes_change():
    traces = []

    def double(x):
        traces.append(x.shape)
        return x * 2

    fast = minicomp.jit(double)
    inputs = [np.ones((2, 3), f32), np.ones((3, 2), f32), np.ones((2, 3), np.float64),
              np.ones((2, 3), np.int32), np.ones(6, f32), np.float32(1)]
    for i, x in enumerate(inputs, start=1):
        assert_close(fast(x), x * 2)
        assert fast.cache_size == i and len(traces) == i
    assert_close(fast(np.ones((3, 2), f32)), np.full((3, 2), 2, f32))  # seen before
    assert fast.cache_size == len(inputs) and len(traces) == len(inputs)


def test_static_arguments_are_part_of_the_key():
    traces = []

    def scale(x, k):
        traces.append(k)
        return x * k

    fast = minicomp.jit(scale, dynamic=False)  # (by default, the second int would be tried as a size too)
    x = np.arange(4, dtype=f32)
    assert_close(fast(x, 2), x * 2)
    assert_close(fast(x, 3), x * 3)
    assert_close(fast(x, 2.5), x * 2.5)
    assert_close(fast(x, 2), x * 2)
    assert fast.cache_size == 3 and traces == [2, 3, 2.5]


def test_an_int_used_as_a_value_stays_static_quietly():
    """Automatic dynamic tries a varying int as a size once; ``x * k`` needs its value, so
    every value compiles on its own, as without automatic dynamic, and nothing is printed."""
    fast = minicomp.jit(lambda x, k: x * k)
    x = np.arange(4, dtype=f32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k in [2, 3, 4, 3]:
            assert_close(fast(x, k), x * k)
    assert fast.cache_size == 3


def test_unhashable_static_arguments_are_keyed_by_value():
    fast = minicomp.jit(lambda x, axes: x.sum(axis=tuple(axes)))
    x = np.ones((2, 3, 4), f32)
    assert_close(fast(x, [0, 2]), x.sum(axis=(0, 2)))
    assert_close(fast(x, [0, 2]), x.sum(axis=(0, 2)))
    assert_close(fast(x, [1]), x.sum(axis=1))
    assert fast.cache_size == 2


def test_keyword_arguments(args):
    fast = minicomp.jit(mlp)
    assert_close(fast(*args), mlp(*args))
    assert_close(fast(args[0], w2=args[2], w1=args[1]), mlp(*args))
    assert_close(fast(x=args[0], w1=args[1], w2=args[2]), mlp(*args))
    assert fast.cache_size == 1


def test_defaults_and_keyword_static_arguments():
    def scale(x, factor=2.0, offset=0):
        return x * factor + offset

    fast = minicomp.jit(scale)
    x = np.arange(3, dtype=f32)
    assert_close(fast(x), scale(x))
    assert_close(fast(x, factor=2.0), scale(x))  # the default, spelled out: same signature
    assert fast.cache_size == 1
    assert_close(fast(x, offset=1), scale(x, offset=1))
    assert_close(fast(x, 3.0, offset=1), scale(x, 3.0, offset=1))
    assert fast.cache_size == 3


def test_keyword_only_parameters_are_refused_not_ignored():
    def scale(x, *, factor=2.0):
        return x * factor

    with pytest.raises(UnsupportedError, match="keyword-only"):
        minicomp.jit(scale)(np.ones(3), factor=5.0)


def test_trace_method_returns_the_graph(args):
    fast = minicomp.jit(mlp)
    graph = fast.trace(*args)
    assert [n.op for n in graph.op_nodes()] == ["matmul", "maximum", "matmul"]
    assert fast.cache_size == 1 and fast.trace(*args) is graph


# ----------------------------------------------------------------------------------------------
# Outputs never alias inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [
    lambda x: x, lambda x: x.T, lambda x: x[0], lambda x: x[:, ::-1], lambda x: x.reshape(-1),
    lambda x: x.astype(np.float32), lambda x: np.copy(x), lambda x: (x, x), lambda x: x + 0,
    lambda x: np.broadcast_to(x, (2, 2, 3)), lambda x: np.squeeze(x[None]),
])
def test_mutating_a_result_leaves_the_input_intact(fn):
    x = np.arange(6, dtype=f32).reshape(2, 3)
    original = x.copy()
    results = minicomp.jit(fn)(x)
    for result in results if isinstance(results, tuple) else (results,):
        assert not np.shares_memory(result, x)
        result[...] = -1  # writable, and owned by the caller
    assert np.array_equal(x, original)


def test_two_outputs_of_the_same_value_are_distinct_arrays():
    a, b = minicomp.jit(lambda x: (x * 2, x * 2))(np.ones(3))
    c, d = minicomp.jit(lambda x: (x, x))(np.ones(3))
    assert not np.shares_memory(c, d)
    c[0] = 5
    assert d[0] == 1


def test_a_constant_result_is_fresh_each_call():
    table = np.arange(3, dtype=f32)
    fast = minicomp.jit(lambda x: table)
    first = fast(np.ones(1))
    first[:] = 7
    assert np.array_equal(fast(np.ones(1)), np.arange(3, dtype=f32))
    assert np.array_equal(table, np.arange(3, dtype=f32))


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------


def test_eight_threads_at_once_compile_exactly_once():
    traces = []

    def slow_model(x):
        traces.append(threading.get_ident())
        y = x
        for _ in range(30):  # a graph that takes a while to trace, so the threads overlap
            y = np.tanh(y) * 0.5 + x
        return y

    fast = minicomp.jit(slow_model)
    x = np.linspace(-1, 1, 12).reshape(3, 4)
    barrier = threading.Barrier(8)
    results, failures = [None] * 8, []

    def worker(i):
        try:
            barrier.wait()
            results[i] = fast(x)
        except Exception as exc:  # noqa: BLE001 -- reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(traces) == 1 and fast.cache_size == 1
    for r in results:
        assert_close(r, slow_model(x))


# ----------------------------------------------------------------------------------------------
# Random numbers drawn while tracing are frozen: one MinicompWarning per compilation
# ----------------------------------------------------------------------------------------------


GLOBAL_RNG = np.random.default_rng(0)


def draws_from_the_global_state(x):
    return x + np.random.standard_normal(x.shape)


def draws_from_a_global_generator(x):
    return x * GLOBAL_RNG.random(x.shape)


def makes_its_own_generator(x):
    rng = np.random.default_rng(1)
    return x + rng.random(x.shape)


def draws_from_a_closure():
    rng = np.random.RandomState(2)
    return lambda x: x - rng.standard_normal(x.shape)


class Dropout:
    def __init__(self):
        self.rng = np.random.default_rng(3)

    def __call__(self, x):
        return x * (self.rng.random(x.shape) > 0.5)


def frozen_warnings(fn, *args) -> list:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minicomp.jit(fn, target="numpy")(*args)
    return [w for w in caught if issubclass(w.category, MinicompWarning)]


def draw_line(fn) -> int:
    """The line of ``fn`` that draws (the first with ``random`` or ``rng.`` in it)."""
    source, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(source)
                        if ("random" in text or "rng." in text) and "def " not in text)


@pytest.mark.parametrize("fn, source", [
    (draws_from_the_global_state, "the global np.random state"),
    (draws_from_a_global_generator, "the global 'GLOBAL_RNG'"),
    (makes_its_own_generator, "default_rng"),
    (draws_from_a_closure(), "the closure variable 'rng'"),
    (Dropout(), "the attribute self.rng"),
])
def test_random_numbers_drawn_while_tracing_warn_once_naming_function_source_and_line(fn, source):
    caught = frozen_warnings(fn, np.ones(3))
    assert len(caught) == 1
    message, line = str(caught[0].message), draw_line(fn if inspect.isfunction(fn) else type(fn).__call__)
    assert source in message and "constants" in message and "pass them as an argument" in message
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)
    assert f"(at {__file__}:{line})" in message


def test_a_generator_passed_as_a_static_argument_warns():
    caught = frozen_warnings(lambda x, rng: x + rng.random(3), np.ones(3), np.random.default_rng(0))
    assert len(caught) == 1 and "the static argument 'rng'" in str(caught[0].message)


def test_the_warning_comes_once_per_compilation_not_per_call():
    fast = minicomp.jit(draws_from_the_global_state, target="numpy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fast(np.ones(3))
        assert np.array_equal(fast(np.ones(3)), first)  # frozen: the same "random" numbers
        fast(np.ones(4))  # a new signature traces, and draws, again
    assert sum(issubclass(w.category, MinicompWarning) for w in caught) == 2


def test_no_warning_without_random_draws():
    rng = np.random.default_rng(0)
    noise = rng.random(3)  # drawn outside: an argument or a constant, both fine
    assert not frozen_warnings(lambda x, n: x + n + noise, np.ones(3), noise)
    assert not frozen_warnings(lambda x: x * rng.bit_generator.state["state"]["inc"] % 7, np.ones(3))


def test_jit_of_a_numpy_ufunc():
    x = np.linspace(-1, 1, 5, dtype=f32)
    assert_close(minicomp.jit(np.exp)(x), np.exp(x))
