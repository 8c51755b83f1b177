"""Neural-network building blocks written as compositions of primitive ops.

Every function here is plain NumPy code: called on NumPy arrays it computes eagerly, called on
traced arrays (inside ``minicomp.trace`` or ``@minicomp.jit``) it records primitive ops. Nothing
here is a fused "softmax op": the compiler has to *earn* the fusion from max, sub, exp, sum, div.

The few primitives NumPy lacks (``erf``, ``sigmoid``, ``rsqrt``, ``conv2d``) go through
``apply_op``, which records a table op when tracing and runs its NumPy reference otherwise.
"""

from __future__ import annotations

import math

import numpy as np

from .frontend.surface import as_strided  # noqa: F401  (NumPy's, for C-order arrays; traceable)
from .frontend.tracer import TracedArray, apply_op

SQRT_2_OVER_PI = 0.7978845608  # sqrt(2/pi), as written in the GELU paper's tanh approximation


def _array(x):
    return x if isinstance(x, (TracedArray, np.ndarray)) else np.asarray(x)


def erf(x):
    """The error function, elementwise (NumPy has none)."""
    return apply_op("erf", _array(x))


def sigmoid(x):
    """``1 / (1 + exp(-x))``, elementwise, computed without overflow."""
    return apply_op("sigmoid", _array(x))


def rsqrt(x):
    """``1 / sqrt(x)``, elementwise."""
    return apply_op("rsqrt", _array(x))


def relu(x):
    """``max(x, 0)``."""
    return np.maximum(_array(x), 0)


def silu(x):
    """``x * sigmoid(x)`` (also called swish)."""
    x = _array(x)
    return x * sigmoid(x)


def gelu(x, approximate: str = "tanh"):
    """GELU. ``approximate="tanh"``: ``0.5x(1+tanh(sqrt(2/pi)(x+0.044715x³)))``; ``"none"``: erf form.

    The cube is written ``x*x*x``: NumPy's float32 ``x**3`` goes through ``powf``, 13x slower.
    """
    x = _array(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    if approximate == "none":
        return 0.5 * x * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
    raise ValueError(f"gelu: approximate must be 'tanh' or 'none', got {approximate!r}")


def softmax(x, axis: int = -1):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis`` (max subtracted for stability)."""
    x = _array(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis: int = -1):
    """``x - max - log(sum(exp(x - max)))`` along ``axis``."""
    x = _array(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def layer_norm(x, gamma=None, beta=None, eps: float = 1e-5, axis: int = -1):
    """``(x - mean) / sqrt(var + eps) * gamma + beta`` over ``axis`` (biased variance)."""
    x = _array(x)
    mean = x.mean(axis=axis, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=axis, keepdims=True)
    y = centered / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def rms_norm(x, gamma=None, eps: float = 1e-6, axis: int = -1):
    """``x / sqrt(mean(x²) + eps) * gamma`` over ``axis`` (LLaMA's RMSNorm)."""
    x = _array(x)
    y = x / np.sqrt((x * x).mean(axis=axis, keepdims=True) + eps)
    return y * gamma if gamma is not None else y


def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups: int = 1, layout: str = "NCHW"):
    """2-D convolution (cross-correlation). NCHW input with OIHW weight, or NHWC with HWIO.

    ``padding`` is an int, ``(ph, pw)`` or ``(top, bottom, left, right)``; ``bias`` has one
    value per output channel.
    """
    y = apply_op("conv2d", _array(x), _array(w), strides=stride, padding=padding,
                 dilation=dilation, groups=groups, layout=layout)
    if bias is not None:
        y = y + _per_channel(_array(bias), layout)
    return y


def _per_channel(v, layout: str):
    """Reshape a per-channel vector so it broadcasts along the channel axis of ``layout``."""
    return v.reshape(-1, 1, 1) if layout.upper() == "NCHW" else v


def batch_norm(x, mean, var, gamma=None, beta=None, eps: float = 1e-5, layout: str = "NCHW"):
    """Inference batch norm: ``(x - mean) / sqrt(var + eps) * gamma + beta`` per channel."""
    x = _array(x)
    mean, var = _per_channel(_array(mean), layout), _per_channel(_array(var), layout)
    y = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * _per_channel(_array(gamma), layout)
    if beta is not None:
        y = y + _per_channel(_array(beta), layout)
    return y


def scaled_dot_product_attention(q, k, v, causal: bool = False, scale: float | None = None, mask=None):
    """``softmax(q @ kᵀ * scale [+ mask]) @ v`` over the last two axes (batched, broadcasting).

    ``scale`` defaults to ``1/sqrt(head_dim)``. ``causal=True`` hides keys after each query
    (top-left aligned, as PyTorch's ``is_causal``). ``mask`` is a bool array, True = keep.
    """
    q, k, v = _array(q), _array(k), _array(v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.swapaxes(-1, -2)) * scale
    if causal:
        future = np.triu(np.ones((q.shape[-2], k.shape[-2]), dtype=bool), k=1)
        scores = np.where(future, -np.inf, scores)
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    return softmax(scores, axis=-1) @ v
