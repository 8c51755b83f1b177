"""The nine benchmark workloads of BENCHMARKS.md, in their plain NumPy form.

Each ``Workload`` has the NumPy function (the thing minicomp compiles, unchanged), and a maker
of its inputs at three sizes: ``"tiny"`` (tests), ``"cpu"`` and ``"gpu"`` (BENCHMARKS.md). All
tensors are arguments, so graphs carry no large constants. ``gelu`` is written ``v*v*v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import nn


@dataclass(frozen=True)
class Workload:
    """A named NumPy function and the shapes of its arguments at each size."""

    name: str
    fn: Callable
    shapes: dict[str, dict[str, tuple[int, ...]]]  # size -> argument name -> shape
    description: str

    def inputs(self, size: str = "cpu", dtype=np.float32, seed: int = 0) -> list[np.ndarray]:
        """Random arguments (``random_argument``) at ``size``."""
        rng = np.random.default_rng(seed)
        return [random_argument(arg, shape, dtype, rng) for arg, shape in self.shapes[size].items()]


def random_argument(name: str, shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    """A random float argument drawn the way the workloads draw theirs, judged by its name.

    Standard normal, except a variance (``*var``: positive, at least 0.5) and a 2-D weight
    (``w*``: scaled by 1/sqrt(fan-in), so that ``x @ w`` stays O(1) however wide it is, as
    initialised weights do). ``minicomp bisect`` draws its inputs with this too.
    """
    a = rng.standard_normal(shape).astype(dtype)
    if name.endswith("var"):
        a = np.abs(a) + np.asarray(0.5, dtype)
    if name.startswith("w") and len(shape) == 2:
        a *= np.asarray(1 / np.sqrt(max(shape[0], 1)), dtype)  # keep activations O(1)
    return a


def gelu(v):
    """The tanh GELU of BENCHMARKS.md, cube written v*v*v."""
    return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def ew_chain(x, a, b):
    return gelu(x * a + b)


def linear_gelu(x, w, b):
    return gelu(x @ w + b)


def mlp(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def attention(q, k, v):
    scores = q @ k.swapaxes(-1, -2) * q.shape[-1] ** -0.5
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ v


def matmul(a, b):
    return a @ b


def block(x, ln1_g, ln1_b, w_qkv, b_qkv, w_out, b_out, ln2_g, ln2_b, w_fc, b_fc, w_proj, b_proj):
    """A GPT-2 layer: pre-LN, causal multi-head attention, residual, LN, 4x MLP with GELU, residual."""
    *batch, seq, dim = x.shape
    heads = dim // 64  # head size 64, as in GPT-2 (768 -> 12 heads, 1024 -> 16)
    h = nn.layer_norm(x, ln1_g, ln1_b)
    q, k, v = np.split(h @ w_qkv + b_qkv, 3, axis=-1)

    def split_heads(t):  # (..., T, C) -> (..., H, T, C/H)
        return t.reshape(*batch, seq, heads, dim // heads).swapaxes(-2, -3)

    a = nn.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v), causal=True)
    x = x + a.swapaxes(-2, -3).reshape(*batch, seq, dim) @ w_out + b_out
    h = nn.layer_norm(x, ln2_g, ln2_b)
    return x + gelu(h @ w_fc + b_fc) @ w_proj + b_proj


def conv_bn_relu(x, w, mean, var, gamma, beta):
    y = nn.conv2d(x, w, padding=1)
    return np.maximum(nn.batch_norm(y, mean, var, gamma, beta), 0)


def _block_shapes(batch: tuple[int, ...], seq: int, dim: int) -> dict[str, tuple[int, ...]]:
    return {"x": batch + (seq, dim), "ln1_g": (dim,), "ln1_b": (dim,),
            "w_qkv": (dim, 3 * dim), "b_qkv": (3 * dim,), "w_out": (dim, dim), "b_out": (dim,),
            "ln2_g": (dim,), "ln2_b": (dim,), "w_fc": (dim, 4 * dim), "b_fc": (4 * dim,),
            "w_proj": (4 * dim, dim), "b_proj": (dim,)}


def _conv_shapes(n: int, c: int, hw: int, o: int) -> dict[str, tuple[int, ...]]:
    return {"x": (n, c, hw, hw), "w": (o, c, 3, 3), "mean": (o,), "var": (o,), "gamma": (o,), "beta": (o,)}


WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("ew_chain", ew_chain, {
        "tiny": {"x": (33, 40), "a": (40,), "b": (40,)},
        "cpu": {"x": (4096, 1024), "a": (1024,), "b": (1024,)},
        "gpu": {"x": (16384, 8192), "a": (8192,), "b": (8192,)}}, "gelu(x*a + b)"),
    Workload("linear_gelu", linear_gelu, {
        "tiny": {"x": (17, 24), "w": (24, 40), "b": (40,)},
        "cpu": {"x": (512, 1024), "w": (1024, 4096), "b": (4096,)},
        "gpu": {"x": (4096, 4096), "w": (4096, 16384), "b": (16384,)}}, "gelu(x @ w + b)"),
    Workload("mlp", mlp, {
        "tiny": {"x": (9, 24), "w1": (24, 48), "w2": (48, 24)},
        "cpu": {"x": (256, 1024), "w1": (1024, 4096), "w2": (4096, 1024)},
        "gpu": {"x": (4096, 4096), "w1": (4096, 16384), "w2": (16384, 4096)}},
        "np.maximum(x @ w1, 0) @ w2"),
    Workload("softmax", softmax, {
        "tiny": {"x": (13, 37)}, "cpu": {"x": (4096, 1024)}, "gpu": {"x": (32768, 4096)}},
        "row softmax, max subtracted"),
    Workload("layernorm", layernorm, {
        "tiny": {"x": (13, 37), "gamma": (37,), "beta": (37,)},
        "cpu": {"x": (4096, 1024), "gamma": (1024,), "beta": (1024,)},
        "gpu": {"x": (32768, 4096), "gamma": (4096,), "beta": (4096,)}},
        "layer norm over the last axis, eps 1e-5"),
    Workload("attention", attention, {
        "tiny": {"q": (2, 19, 8), "k": (2, 23, 8), "v": (2, 23, 8)},
        "cpu": {"q": (8, 512, 64), "k": (8, 512, 64), "v": (8, 512, 64)},
        "gpu": {"q": (8, 16, 2048, 64), "k": (8, 16, 2048, 64), "v": (8, 16, 2048, 64)}},
        "softmax(q @ k^T / sqrt(d)) @ v, non-causal"),
    Workload("matmul", matmul, {
        "tiny": {"a": (31, 17), "b": (17, 29)},
        "cpu": {"a": (1024, 1024), "b": (1024, 1024)},
        "gpu": {"a": (4096, 4096), "b": (4096, 4096)}}, "a @ b"),
    Workload("block", block, {
        "tiny": _block_shapes((), 10, 128), "cpu": _block_shapes((), 256, 768),
        "gpu": _block_shapes((8,), 1024, 1024)}, "GPT-2 layer (pre-LN, causal attention, 4x MLP)"),
    Workload("conv_bn_relu", conv_bn_relu, {
        "tiny": _conv_shapes(2, 3, 7, 4), "cpu": _conv_shapes(1, 64, 56, 64),
        "gpu": _conv_shapes(32, 64, 56, 64)}, "conv2d 3x3 pad 1 + batch norm + relu, NCHW"),
]}
