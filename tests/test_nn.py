"""``minicomp.nn``: each function, run eagerly on NumPy arrays, equals an independent NumPy formula
written out here; traced and interpreted, it equals the eager result. float32 and float64.
"""

import math

import numpy as np
import pytest

import minicomp
from minicomp import nn
from minicomp.testing import assert_close

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


def traced(fn, *arrays):
    """``fn(*arrays)`` traced into a graph and run by the interpreter."""
    return minicomp.interpret(minicomp.trace(fn, *arrays), *arrays)[0]


def check(fn, expected, *arrays):
    """Eager ``fn`` equals ``expected``; traced ``fn`` equals eager ``fn``."""
    eager = fn(*arrays)
    assert isinstance(eager, np.ndarray)
    assert_close(eager, expected)
    assert_close(traced(fn, *arrays), eager)


def normal(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def math_erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Elementwise
# ----------------------------------------------------------------------------------------------


def test_erf_matches_math_erf(rng, dtype):
    x = normal(rng, dtype, 5, 7) * 2
    x[0, :3] = [0, 6, -6]
    check(nn.erf, math_erf(x), x)


def test_sigmoid(rng, dtype):
    x = normal(rng, dtype, 4, 9) * 4
    check(nn.sigmoid, 1 / (1 + np.exp(-x)), x)


def test_sigmoid_does_not_overflow(dtype):
    x = np.array([-1000, -50, 0, 50, 1000], dtype)
    expected = np.array([0, math.exp(-50) / (1 + math.exp(-50)), 0.5, 1 / (1 + math.exp(-50)), 1], dtype)
    with np.errstate(over="raise", invalid="raise"):  # (underflow to 0 is fine)
        check(nn.sigmoid, expected, x)


def test_rsqrt(rng, dtype):
    x = np.abs(normal(rng, dtype, 6, 5)) + dtype(0.1)
    check(nn.rsqrt, 1 / np.sqrt(x), x)


def test_relu(rng, dtype):
    x = normal(rng, dtype, 3, 8)
    check(nn.relu, x * (x > 0), x)


def test_silu(rng, dtype):
    x = normal(rng, dtype, 3, 8) * 3
    check(nn.silu, x / (1 + np.exp(-x)), x)


def test_gelu_tanh_form(rng, dtype):
    x = normal(rng, dtype, 4, 10) * 2
    c = dtype(math.sqrt(2 / math.pi))
    expected = dtype(0.5) * x * (1 + np.tanh(c * (x + dtype(0.044715) * x ** 3)))
    check(nn.gelu, expected, x)
    check(lambda x: nn.gelu(x, approximate="tanh"), expected, x)


def test_gelu_erf_form(rng, dtype):
    x = normal(rng, dtype, 4, 10) * 2
    expected = (x * (1 + math_erf(x / dtype(math.sqrt(2)))) / 2).astype(dtype)
    check(lambda x: nn.gelu(x, approximate="none"), expected, x)


def test_gelu_rejects_an_unknown_form(rng):
    with pytest.raises(ValueError, match="approximate"):
        nn.gelu(np.ones(2), approximate="fast")


# ----------------------------------------------------------------------------------------------
# Normalisations
# ----------------------------------------------------------------------------------------------


def test_softmax(rng, dtype):
    x = normal(rng, dtype, 5, 11)
    e = np.exp(x)
    check(nn.softmax, e / e.sum(axis=-1, keepdims=True), x)
    e0 = np.exp(x)
    check(lambda x: nn.softmax(x, axis=0), e0 / e0.sum(axis=0, keepdims=True), x)


def test_softmax_of_large_values_is_stable(dtype):
    x = np.array([[1000, 1001, 1002], [-1000, -1000, -1000]], dtype)
    expected = np.array([[np.exp(-2), np.exp(-1), 1], [1, 1, 1]]) / np.array([[1 + np.exp(-1) + np.exp(-2)], [3]])
    check(nn.softmax, expected.astype(dtype), x)


def test_log_softmax(rng, dtype):
    x = normal(rng, dtype, 5, 11)
    check(nn.log_softmax, x - np.log(np.exp(x).sum(axis=-1, keepdims=True)), x)
    check(lambda x: nn.log_softmax(x, axis=0), x - np.log(np.exp(x).sum(axis=0, keepdims=True)), x)


def test_layer_norm(rng, dtype):
    x, gamma, beta = normal(rng, dtype, 6, 16), normal(rng, dtype, 16), normal(rng, dtype, 16)
    eps = 1e-5
    normalized = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + dtype(eps))
    check(lambda x, g, b: nn.layer_norm(x, g, b), normalized * gamma + beta, x, gamma, beta)
    check(nn.layer_norm, normalized, x)


def test_layer_norm_over_another_axis_with_eps(rng, dtype):
    x = normal(rng, dtype, 6, 4)
    expected = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + dtype(0.1))
    check(lambda x: nn.layer_norm(x, eps=0.1, axis=0), expected, x)


def test_rms_norm(rng, dtype):
    x, gamma = normal(rng, dtype, 6, 16), normal(rng, dtype, 16)
    rms = np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + dtype(1e-6))
    check(lambda x, g: nn.rms_norm(x, g), x / rms * gamma, x, gamma)
    check(nn.rms_norm, x / rms, x)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_batch_norm(rng, dtype, layout):
    x = normal(rng, dtype, 2, 3, 5, 5) if layout == "NCHW" else normal(rng, dtype, 2, 5, 5, 3)
    mean, gamma, beta = normal(rng, dtype, 3), normal(rng, dtype, 3), normal(rng, dtype, 3)
    var = np.abs(normal(rng, dtype, 3)) + dtype(0.5)
    channel = (slice(None), None, None) if layout == "NCHW" else (slice(None),)  # per-channel broadcast
    m, v, g, b = (a[channel] for a in (mean, var, gamma, beta))
    expected = (x - m) / np.sqrt(v + dtype(1e-5)) * g + b
    check(lambda *a: nn.batch_norm(*a, layout=layout), expected, x, mean, var, gamma, beta)
    check(lambda x, mean, var: nn.batch_norm(x, mean, var, layout=layout),
          (x - m) / np.sqrt(v + dtype(1e-5)), x, mean, var)


# ----------------------------------------------------------------------------------------------
# conv2d
# ----------------------------------------------------------------------------------------------


def direct_conv_nchw(x, w, bias, stride, padding, dilation):
    """Cross-correlation, one output pixel at a time: x (N,C,H,W), w (O,C,R,S)."""
    n, c, h, wd = x.shape
    o, _, r, s = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    ow = (wd + 2 * padding - dilation * (s - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow), x.dtype)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * stride: i * stride + dilation * (r - 1) + 1: dilation,
                        j * stride: j * stride + dilation * (s - 1) + 1: dilation]
            out[:, :, i, j] = np.tensordot(window, w, axes=([1, 2, 3], [1, 2, 3]))
    return out + bias[:, None, None]


@pytest.mark.parametrize("stride, padding, dilation", [(1, 0, 1), (1, 1, 1), (2, 1, 1), (1, 2, 2)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv2d_with_bias(rng, dtype, layout, stride, padding, dilation):
    x, w, bias = normal(rng, dtype, 2, 3, 9, 8), normal(rng, dtype, 4, 3, 3, 3), normal(rng, dtype, 4)
    expected = direct_conv_nchw(x, w, bias, stride, padding, dilation)
    if layout == "NHWC":  # NHWC input with an HWIO weight
        x, w, expected = x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), expected.transpose(0, 2, 3, 1)

    def conv(x, w, bias):
        return nn.conv2d(x, w, bias, stride=stride, padding=padding, dilation=dilation, layout=layout)
    check(conv, expected, x, w, bias)


def test_conv2d_without_bias_and_with_groups(rng, dtype):
    x, w = normal(rng, dtype, 1, 4, 6, 6), normal(rng, dtype, 6, 2, 3, 3)
    halves = [direct_conv_nchw(x[:, 2 * g: 2 * g + 2], w[3 * g: 3 * g + 3], np.zeros(3, dtype), 1, 1, 1)
              for g in range(2)]
    check(lambda x, w: nn.conv2d(x, w, padding=1, groups=2), np.concatenate(halves, axis=1), x, w)
    check(lambda x, w: nn.conv2d(x[:, :2], w[:3]), direct_conv_nchw(x[:, :2], w[:3], np.zeros(3, dtype), 1, 0, 1), x, w)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


def direct_attention(q, k, v, scale, keep):
    scores = np.einsum("...qd,...kd->...qk", q, k) * scale
    scores = np.where(keep, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("...qk,...kd->...qd", e / e.sum(axis=-1, keepdims=True), v).astype(q.dtype)


@pytest.fixture
def qkv(rng, dtype):
    return normal(rng, dtype, 2, 3, 5, 8), normal(rng, dtype, 2, 3, 7, 8), normal(rng, dtype, 2, 3, 7, 4)


def test_attention(qkv):
    q, k, v = qkv
    expected = direct_attention(q, k, v, 1 / math.sqrt(8), np.ones((5, 7), bool))
    check(nn.scaled_dot_product_attention, expected, q, k, v)


def test_causal_attention(qkv):
    q, k, v = qkv
    causal = np.tril(np.ones((5, 7), bool))  # query i sees keys 0..i (top-left aligned)
    expected = direct_attention(q, k, v, 1 / math.sqrt(8), causal)
    check(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v, causal=True), expected, q, k, v)


def test_attention_with_a_mask(qkv, rng):
    q, k, v = qkv
    mask = rng.random((2, 1, 5, 7)) < 0.5
    mask[..., 0] = True  # every query keeps at least one key
    expected = direct_attention(q, k, v, 1 / math.sqrt(8), mask)
    check(lambda q, k, v, m: nn.scaled_dot_product_attention(q, k, v, mask=m), expected, q, k, v, mask)


def test_attention_with_a_scale_and_a_mask_and_causal(qkv):
    q, k, v = qkv
    mask = np.ones((5, 7), bool)
    mask[:, 1] = False
    keep = mask & np.tril(np.ones((5, 7), bool))
    keep[0, 0] = True
    expected = direct_attention(q, k, v, 0.3, keep)
    check(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v, causal=True, scale=0.3, mask=mask),
          expected, q, k, v)


def test_attention_with_a_scale(qkv):
    q, k, v = qkv
    expected = direct_attention(q, k, v, 0.05, np.ones((5, 7), bool))
    check(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v, scale=0.05), expected, q, k, v)


def test_eager_nn_accepts_lists_and_scalars():
    assert_close(nn.relu([-1.0, 2.0]), np.array([0.0, 2.0]))
    assert_close(nn.erf(0.5), np.asarray(math.erf(0.5)))
    assert_close(nn.sigmoid(0.0), np.asarray(0.5))
