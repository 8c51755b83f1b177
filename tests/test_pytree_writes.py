"""Pytree arguments and in-place writes together: an array leaf inside an argument (a KV cache in
a dict), or an array read from outside (a closed-over weight), written in place is updated in
the caller's array after the call exactly as NumPy leaves it; traced values stored into the
caller's containers are written back too; the results are any pytree. Each case runs the same
function on copies under NumPy and under ``jit`` (C and interpreter) and compares results and
every argument afterwards.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import minicomp
from minicomp.errors import MinicompRuntimeError
from minicomp.testing import assert_close

TARGETS = ["c", "numpy"]


def assert_same_tree(actual, expected) -> None:
    """Same containers, same keys and lengths, arrays equal to float tolerance."""
    assert type(actual) is type(expected), (type(actual), type(expected))
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            assert_same_tree(actual[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_tree(a, e)
    elif isinstance(expected, np.ndarray):
        assert actual.shape == expected.shape and actual.dtype == expected.dtype
        assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    else:
        assert actual == expected


def leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaves(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in leaves(value)]
    return [tree]


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------------
# A KV cache inside a dict argument, written in place
# ----------------------------------------------------------------------------------------------


def attend_with_cache(x, w, cache, s):
    """One attention step: this step's keys and values go into ``cache["k"]``/``cache["v"]`` in
    place at positions ``s:s+L``; the queries attend to everything cached so far."""
    L = x.shape[1]
    q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
    cache["k"][:, s:s + L] = k
    cache["v"][:, s:s + L] = v
    keys, values = cache["k"][:, :s + L], cache["v"][:, :s + L]
    scores = q @ keys.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    return softmax(scores) @ values


@pytest.mark.parametrize("target", TARGETS)
def test_a_kv_cache_in_a_dict_argument_is_written_in_place_as_numpy_leaves_it(rng, target):
    B, T, L, D = 2, 8, 3, 4
    w = {name: rng.standard_normal((D, D)).astype(np.float32) for name in "qkv"}
    expected_cache = {"k": np.zeros((B, T, D), np.float32), "v": np.zeros((B, T, D), np.float32)}
    cache = copy.deepcopy(expected_cache)
    k_array, v_array = cache["k"], cache["v"]
    step = minicomp.jit(attend_with_cache, target=target)
    for s in (0, L):  # two steps: the second reads what the first wrote
        x = rng.standard_normal((B, L, D)).astype(np.float32)
        expected = attend_with_cache(x, w, expected_cache, s)
        assert_close(step(x, w, cache, s), expected, rtol=1e-4, atol=1e-5)
        assert cache["k"] is k_array and cache["v"] is v_array  # updated in place, not replaced
        assert_same_tree(cache, expected_cache)
    assert step.cache_size == 2  # one compile per static s


def test_a_read_only_cache_leaf_is_refused_naming_it(rng):
    w = {name: np.eye(4, dtype=np.float32) for name in "qkv"}
    cache = {"k": np.zeros((1, 4, 4), np.float32), "v": np.zeros((1, 4, 4), np.float32)}
    cache["v"].flags.writeable = False
    with pytest.raises(MinicompRuntimeError, match=r"cache\.v.*read-only"):
        minicomp.jit(attend_with_cache)(np.ones((1, 2, 4), np.float32), w, cache, 0)


# ----------------------------------------------------------------------------------------------
# picoGPT style: **params of nested dicts, wte[ids], a (logits, new_cache) result
# ----------------------------------------------------------------------------------------------


def layer_norm(x, g, b, eps=1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):
    return x @ w + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def block(x, kv, mlp, attn, ln_1, ln_2, n_head):
    """One GPT-2 block; ``kv`` is this layer's cache ``{"k", "v"}`` (earlier positions) or None."""
    n, d = x.shape
    qkv = linear(layer_norm(x, **ln_1), **attn["c_attn"])
    q, k, v = np.split(qkv, 3, axis=-1)
    if kv is not None:
        k, v = np.concatenate([kv["k"], k]), np.concatenate([kv["v"], v])
    heads = []
    for h in range(n_head):
        cols = slice(h * d // n_head, (h + 1) * d // n_head)
        scores = q[:, cols] @ k[:, cols].T / np.sqrt(d // n_head)
        mask = np.triu(np.full((n, k.shape[0]), -1e10, np.float32), k=k.shape[0] - n + 1)
        heads.append(softmax(scores + mask) @ v[:, cols])
    x = x + linear(np.hstack(heads), **attn["c_proj"])
    x = x + linear(gelu(linear(layer_norm(x, **ln_2), **mlp["c_fc"])), **mlp["c_proj"])
    return x, {"k": k, "v": v}


def gpt2(ids, wte, wpe, blocks, ln_f, n_head, cache=None, start=0):
    """picoGPT's forward, with a cache: logits of every position and the new cache (a list of
    dicts, one per block)."""
    x = wte[ids] + wpe[start:start + len(ids)]
    new_cache = []
    for i, params in enumerate(blocks):
        x, kv = block(x, None if cache is None else cache[i], **params, n_head=n_head)
        new_cache.append(kv)
    return layer_norm(x, **ln_f) @ wte.T, new_cache


def gpt2_params(rng, vocab=11, context=16, d=8, layers=2):
    def dense(n_in, n_out):
        return {"w": (0.3 * rng.standard_normal((n_in, n_out))).astype(np.float32),
                "b": (0.1 * rng.standard_normal(n_out)).astype(np.float32)}

    def norm():
        return {"g": np.ones(d, np.float32), "b": np.zeros(d, np.float32)}

    return {
        "wte": rng.standard_normal((vocab, d)).astype(np.float32),
        "wpe": rng.standard_normal((context, d)).astype(np.float32),
        "blocks": [{"mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
                    "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
                    "ln_1": norm(), "ln_2": norm()} for _ in range(layers)],
        "ln_f": norm(),
    }


@pytest.mark.parametrize("target", TARGETS)
def test_picogpt_style_params_with_an_embedding_gather_return_logits_and_a_new_cache(rng, target):
    params = gpt2_params(rng)
    before = copy.deepcopy(params)
    jitted = minicomp.jit(gpt2, target=target)
    prompt = np.array([3, 1, 4, 1, 5])
    logits, cache = jitted(prompt, **params, n_head=2)
    expected_logits, expected_cache = gpt2(prompt, **params, n_head=2)
    assert_same_tree((logits, cache), (expected_logits, expected_cache))
    # one more token through the cache, as generation does; negative ids wrap as in NumPy
    for token in (np.array([9]), np.array([-2])):
        start = len(prompt)
        logits, cache = jitted(token, **params, n_head=2, cache=cache, start=start)
        expected_logits, expected_cache = gpt2(token, **params, n_head=2, cache=expected_cache, start=start)
        assert_same_tree((logits, cache), (expected_logits, expected_cache))
        prompt = np.concatenate([prompt, token])
    assert_same_tree(params, before)  # the weights are only read


@pytest.mark.parametrize("target", TARGETS)
def test_picogpt_with_a_preallocated_cache_in_params_written_in_place(rng, target):
    """The cache lives in the params dict (``params["cache"]``) and is written in place at
    ``start``; the function returns ``(logits, cache)``: the caller's arrays hold what NumPy
    leaves, and the returned cache is equal to them."""
    d, context = 8, 16

    def forward(ids, wte, wpe, ln_f, cache, start):
        x = wte[ids] + wpe[start:start + len(ids)]
        cache["x"][start:start + len(ids)] = x  # this step's activations
        cache["count"][ids] += 1  # repeated ids: NumPy's += does not accumulate
        context_x = cache["x"][:start + len(ids)]
        h = layer_norm(x + context_x.mean(axis=0), **ln_f)
        return h @ wte.T, cache

    params = gpt2_params(rng, context=context, d=d)
    del params["blocks"]
    params["cache"] = {"x": np.zeros((context, d), np.float32), "count": np.zeros(11, np.int64)}
    expected_params = copy.deepcopy(params)
    jitted = minicomp.jit(forward, target=target)
    start = 0
    for ids in (np.array([1, 2, 2, 7]), np.array([0, -1])):
        logits, cache = jitted(ids, **params, start=start)
        expected_logits, expected_cache = forward(ids, **expected_params, start=start)
        assert_same_tree((logits, cache), (expected_logits, expected_cache))
        assert_same_tree(params, expected_params)
        start += len(ids)


# ----------------------------------------------------------------------------------------------
# Lifted arrays written in place, and stores and in-place writes in one function
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_a_closed_over_weight_updated_in_place_is_updated_in_the_callers_array(rng, target):
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    expected_weights = weights.copy()
    original = weights

    def sgd_step(x, y, lr):
        grad = x.T @ (x @ weights - y)
        weights[...] -= lr * grad  # the closure's array, updated in place
        return ((x @ weights - y) ** 2).mean()

    def numpy_step(x, y, lr):
        grad = x.T @ (x @ expected_weights - y)
        expected_weights[...] -= lr * grad
        return ((x @ expected_weights - y) ** 2).mean()

    jitted = minicomp.jit(sgd_step, target=target)
    for _ in range(3):  # each call reads the weights the previous one wrote
        x = rng.standard_normal((5, 4)).astype(np.float32)
        y = rng.standard_normal((5, 3)).astype(np.float32)
        assert_close(jitted(x, y, 0.05), numpy_step(x, y, 0.05), rtol=1e-4, atol=1e-5)
        assert weights is original
        assert_close(weights, expected_weights, rtol=1e-4, atol=1e-5)
    assert jitted.cache_size == 1


@pytest.mark.parametrize("target", TARGETS)
def test_stored_values_and_in_place_writes_in_one_state_dict(rng, target):
    """``state["h"] = h`` rebinds (written back as a new array); ``state["sums"] += h`` writes the
    caller's array in place; ``state["history"].append(h)`` appends: all as NumPy."""

    def rnn_step(x, w, state):
        h = np.tanh(x @ w + state["h"])
        state["h"] = h
        state["sums"] += h
        state["history"].append(h * 2)
        return h.sum()

    w = rng.standard_normal((3, 3)).astype(np.float32)
    state = {"h": np.zeros(3, np.float32), "sums": np.zeros(3, np.float32), "history": []}
    expected_state = copy.deepcopy(state)
    sums = state["sums"]
    jitted = minicomp.jit(rnn_step, target=target)
    for _ in range(3):
        x = rng.standard_normal(3).astype(np.float32)
        assert_close(jitted(x, w, state), rnn_step(x, w, expected_state), rtol=1e-5, atol=1e-5)
        assert_same_tree(state, expected_state)
        assert state["sums"] is sums
    assert not any(isinstance(leaf, minicomp.TracedArray) for leaf in leaves(state))
