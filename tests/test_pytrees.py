"""Arguments and results as pytrees (``frontend/pytree.py``): nested tuples, lists and dicts of
arrays in and out, static leaves keyed exactly by value, traced values stored into the caller's
containers written back (never leaked), and the program cache keyed on all of it."""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicomp
from minicomp.errors import UnsupportedError
from minicomp.frontend.pytree import flatten, unflatten
from minicomp.frontend.tracer import TracedArray
from minicomp.testing import assert_close

f32 = np.float32


def leaves_of(value) -> list:
    arrays: list = []
    flatten(value, arrays)
    return arrays


def scalars_as_arrays(tree):
    """NumPy returns a NumPy scalar where minicomp returns a 0-d array: the same value; and a
    Python number in a result comes back as a 0-d array (JAX's convention too)."""
    if isinstance(tree, (np.generic, bool, int, float)):
        return np.asarray(tree)
    if isinstance(tree, dict):
        return type(tree)((key, scalars_as_arrays(value)) for key, value in tree.items())
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(scalars_as_arrays(value) for value in tree)
    return tree


def assert_same_tree(actual, expected) -> None:
    """Same structure and static leaves, array leaves equal within rounding."""
    actual_leaves, expected_leaves = [], []
    assert flatten(actual, actual_leaves) == flatten(scalars_as_arrays(expected), expected_leaves)
    for a, e in zip(actual_leaves, expected_leaves):
        assert_close(a, e)


# ----------------------------------------------------------------------------------------------
# Nested arguments and results against NumPy
# ----------------------------------------------------------------------------------------------


def trees(shape):
    """Pytrees of float32 arrays of ``shape`` (and static leaves) up to three levels deep."""
    leaf = st.integers(0, 9).map(lambda seed: np.random.default_rng(seed).standard_normal(shape).astype(f32))
    static = st.sampled_from([None, 2, 0.5, "tag", True])
    return st.recursive(leaf | static, lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                        | st.dictionaries(st.sampled_from("abc"), inner, max_size=3), max_leaves=8)


def double_every_array(tree):
    """NumPy code walking a pytree: every array doubled plus one, static leaves as they are."""
    if isinstance(tree, np.ndarray) or hasattr(tree, "shape"):
        return tree * 2 + 1
    if isinstance(tree, dict):
        return {key: double_every_array(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(double_every_array(value) for value in tree)
    return tree


@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), data=st.data())
def test_nested_arguments_and_results_match_numpy(shape, data):
    tree = data.draw(trees(shape))
    x = np.ones(shape, f32)
    fast = minicomp.jit(lambda x, tree: (x, double_every_array(tree)), target="numpy")
    assert_same_tree(fast(x, tree), (x, double_every_array(tree)))
    assert fast.cache_size == 1


def test_a_gpt2_style_block_with_weights_in_dicts_compiles_to_c():
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(f32)  # noqa: E731
    params = {"ln": {"g": r(8), "b": r(8)}, "attn": [{"w": r(8, 8), "b": r(8)}, {"w": r(8, 8)}],
              "out": (r(8, 4), None)}

    def block(x, params):
        h = (x - x.mean(-1, keepdims=True)) * params["ln"]["g"] + params["ln"]["b"]
        first, second = params["attn"]
        h = np.tanh(h @ first["w"] + first["b"]) @ second["w"]
        return {"logits": h @ params["out"][0], "hidden": [h, h.sum()], "note": "ok"}

    fast = minicomp.jit(block)
    x = r(5, 8)
    assert_same_tree(fast(x, params), block(x, params))
    names = [node.name for node in fast.trace(x, params).inputs]
    assert names == ["x", "params.ln.g", "params.ln.b", "params.attn.0.w", "params.attn.0.b", "params.attn.1.w",
                     "params.out.0"]


def test_results_keep_their_container_types():
    Pair = collections.namedtuple("Pair", "first second")
    fast = minicomp.jit(lambda x: (Pair(x + 1, [x * 2, None]), collections.OrderedDict(y=x), "label", 3))
    x = np.arange(3, dtype=f32)
    pair, ordered, label, three = fast(x)
    assert type(pair) is Pair and type(ordered) is collections.OrderedDict and label == "label"
    assert_close(pair.first, x + 1) and pair.second[1] is None
    assert_close(ordered["y"], x)
    assert isinstance(three, np.ndarray) and three == 3  # a returned number is an output, as before


def test_namedtuples_and_ordered_dicts_as_arguments():
    Params = collections.namedtuple("Params", "w b")
    fast = minicomp.jit(lambda x, p, extra: x @ p.w + p.b + extra["c"])
    x, p = np.ones((2, 3), f32), Params(np.ones((3, 4), f32), np.arange(4, dtype=f32))
    extra = collections.OrderedDict(c=np.float32(2))
    assert_close(fast(x, p, extra), x @ p.w + p.b + 2)


# ----------------------------------------------------------------------------------------------
# Static leaves are keyed by value, exactly
# ----------------------------------------------------------------------------------------------


def test_equal_looking_different_arrays_in_a_dict_give_different_results():
    w1 = np.zeros((40, 40), f32)
    w2 = w1.copy()
    w2[20, 20] = 1.0  # the printed corners (repr elides the middle) are the same
    assert repr(w1) == repr(w2)
    fast = minicomp.jit(lambda x, p: x @ p["w"])
    x = np.ones((1, 40), f32)
    assert_close(fast(x, {"w": w1}), x @ w1)
    assert_close(fast(x, {"w": w2}), x @ w2)
    assert fast.cache_size == 1  # arrays are inputs: one compiled function serves both


def test_plus_and_minus_zero_are_different_keys():
    traces = []

    def f(x, k):
        traces.append(k)
        return 1 / (x * k)  # +inf or -inf: the sign of the static zero decides

    fast = minicomp.jit(f)
    x = np.ones(2, f32)
    assert np.all(fast(x, 0.0) == np.inf) and np.all(fast(x, -0.0) == -np.inf)
    assert fast.cache_size == 2 and [math.copysign(1, k) for k in traces] == [1, -1]


def test_a_nan_static_argument_compiles_once():
    fast = minicomp.jit(lambda x, k: x + k)
    x = np.ones(2, f32)
    for _ in range(3):
        assert np.all(np.isnan(fast(x, float("nan"))))  # a new NaN object each call
    assert np.all(np.isnan(fast(x, {"k": [float("nan")]}["k"][0])))
    assert fast.cache_size == 1


def test_one_and_one_point_zero_and_true_do_not_collide():
    fast = minicomp.jit(lambda x, k: x + k)
    x = np.arange(3, dtype=np.int32)
    assert fast(x, 1).dtype == np.int32 and fast(x, 1.0).dtype == np.float64 and fast(x, True).dtype == np.int32
    assert fast.cache_size == 3
    config = minicomp.jit(lambda x, cfg: x * cfg[1])
    assert config(x, {1: 2}).dtype == np.int32 and config(x, {True: 2}).dtype == np.int32
    assert config.cache_size == 2  # {1: ...} and {True: ...} are different keys


def test_keys_hold_structure_and_static_values():
    a = np.ones((2, 3), f32)
    assert flatten({"w": a, "n": 1}, []) == flatten({"w": a * 2, "n": 1}, [])
    assert flatten({"w": a, "n": 1}, []) != flatten({"n": 1, "w": a}, [])  # order is part of the structure
    assert flatten([a], []) != flatten((a,), []) != flatten(a, [])
    assert flatten({"w": a}, []) != flatten({"w": a.astype(np.float64)}, [])
    key = flatten({"w": [a, None, -0.0, "s"]}, [])
    rebuilt = unflatten(key, [a * 3])
    assert rebuilt["w"][1:3] == [None, -0.0] and math.copysign(1, rebuilt["w"][2]) == -1
    assert_close(rebuilt["w"][0], a * 3)


def test_an_unhashable_leaf_or_a_cycle_is_refused():
    loop = []
    loop.append(loop)
    fast = minicomp.jit(lambda x, tree: x, target="numpy")
    with pytest.raises(UnsupportedError, match="'tree'.*nested more than"):
        fast(np.ones(2), loop)
    with pytest.raises(UnsupportedError, match="'tree'.*bytearray"):
        fast(np.ones(2), {"a": [bytearray(1)]})


def test_a_result_object_is_refused_naming_the_line():
    class Box:
        pass

    with pytest.raises(UnsupportedError, match=r"returned a Box inside its result \(at .*test_pytrees.py"):
        minicomp.jit(lambda x: (x, Box()))(np.ones(2))


def test_returning_nothing_is_refused():
    with pytest.raises(UnsupportedError, match="returned None and stored no traced array"):
        minicomp.jit(lambda x: None)(np.ones(2))


# ----------------------------------------------------------------------------------------------
# Traced values never leak into the caller's objects
# ----------------------------------------------------------------------------------------------


def no_traced_arrays(value) -> bool:
    return not any(isinstance(leaf, TracedArray) for leaf in leaves_of(value))


def test_a_value_stored_into_an_argument_dict_is_written_back_computed():
    def attend(x, cache):
        k = x * 2
        cache["k"] = k
        cache.setdefault("history", []).append(k.sum())
        return x + 1

    fast = minicomp.jit(attend)
    x = np.arange(3, dtype=f32)
    cache, expected_cache = {}, {}
    for _ in range(2):
        assert_close(fast(x, cache), attend(x, expected_cache))
    assert no_traced_arrays(cache)
    assert_close(cache["k"], expected_cache["k"])
    assert type(cache["k"]) is np.ndarray
    assert fast.cache_size == 2  # the second call's cache has keys: a new signature


def test_a_value_appended_to_an_argument_list_is_appended_after_each_call():
    def log(x, outputs):
        outputs.append(x * 3)
        return x

    fast = minicomp.jit(log)
    outputs = []
    x = np.ones(2, f32)
    fast(x, outputs)
    assert len(outputs) == 1 and type(outputs[0]) is np.ndarray and np.all(outputs[0] == 3)


def test_a_closure_list_gets_the_computed_value_not_a_proxy():
    seen = []

    def f(x):
        seen.append(x + 1)
        return x * 2

    fast = minicomp.jit(f)
    x = np.ones(2, f32)
    fast(x)
    fast(x)
    assert [type(v) for v in seen] == [np.ndarray, np.ndarray] and all(np.all(v == 2) for v in seen)


def test_a_failing_trace_leaves_the_callers_objects_as_they_were():
    cache = {"w": np.ones(2, f32)}

    def broken(x, cache):
        cache["k"] = x * 2
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        minicomp.jit(broken)(np.ones(2, f32), cache)
    assert list(cache) == ["w"] and type(cache["w"]) is np.ndarray


def test_trace_takes_stored_values_out_too():
    stash = {}
    graph = minicomp.trace(lambda x: stash.update(y=x * 2) or x + 1, np.ones(2, f32))
    assert len(graph.outputs) == 1 and stash == {}


# ----------------------------------------------------------------------------------------------
# Program cache: a warm start must match pytree structure and lifted inputs
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(directory))
    return directory


def test_a_warm_start_with_pytrees_and_lifted_weights_gives_the_right_results(empty_cache):
    weights = {"w": np.ones((3, 3), f32)}

    def f(x, p):
        return {"y": x @ p["a"] @ weights["w"], "z": [p["b"] * 2]}

    x, p = np.ones((2, 3), f32), {"a": np.eye(3, dtype=f32), "b": np.arange(3, dtype=f32)}
    cold = minicomp.jit(f)(x, p)
    weights["w"] = np.full((3, 3), 2, f32)  # a new weight: a warm start must read it, not the old one
    warm_fn = minicomp.jit(f)
    warm = warm_fn(x, p)
    assert_same_tree(warm, f(x, p))
    assert not np.allclose(warm["y"], cold["y"])
    frozen_fn = minicomp.jit(f, freeze=True)  # a frozen weight is a constant: another program
    with pytest.warns(minicomp.MinicompWarning):
        assert_same_tree(frozen_fn(x, p), f(x, p))


# ----------------------------------------------------------------------------------------------
# Dataclasses are pytree nodes too; bisect takes pytrees
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Params:
    w: np.ndarray
    b: np.ndarray
    activation: str = "relu"


@dataclasses.dataclass(frozen=True)
class Output:
    y: np.ndarray
    layers: int


def test_dataclass_arguments_and_results():
    def dense(x, p):
        return Output(np.maximum(x @ p.w + p.b, 0) if p.activation == "relu" else x @ p.w, 1)

    fast = minicomp.jit(dense)
    x = np.ones((2, 3), f32)
    for scale in (1, -2):
        p = Params(np.full((3, 4), scale, f32), np.arange(4, dtype=f32))  # a new object each call
        out = fast(x, p)
        assert type(out) is Output and out.layers == 1
        assert_close(out.y, dense(x, p).y)
    assert fast.cache_size == 1
    assert [n.name for n in fast.trace(x, p).inputs] == ["x", "p.w", "p.b"]
    assert_close(fast(x, Params(p.w, p.b, "linear")).y, x @ p.w)  # a static field: a new signature
    assert fast.cache_size == 2


def test_bisect_takes_pytree_arguments():
    from minicomp.tools.bisect import bisect

    result = bisect(lambda x, p: {"y": np.tanh(x @ p["w"]), "z": [x.sum()]}, np.ones((2, 3), f32),
                    {"w": np.ones((3, 4), f32)}, trials=2)
    assert result.ok
