"""A CNN forward pass as CS231n writes it: ``np.pad``, im2col by fancy indexing with index
arrays built by ``np.repeat``/``np.tile``, convolution as one matmul, ReLU, 2x2 max pooling by
reshape, a fully connected layer and a softmax.

    minicomp bench tests/programs/cnn_im2col.py:cnn_forward --args-from tests/programs/cnn_im2col.py:make_args
"""

import numpy as np


def get_im2col_indices(x_shape, field_height, field_width, padding=1, stride=1):
    """The (channel, row, column) index arrays that pick every receptive field of an image."""
    N, C, H, W = x_shape
    out_height = (H + 2 * padding - field_height) // stride + 1
    out_width = (W + 2 * padding - field_width) // stride + 1
    i0 = np.repeat(np.arange(field_height), field_width)
    i0 = np.tile(i0, C)
    i1 = stride * np.repeat(np.arange(out_height), out_width)
    j0 = np.tile(np.arange(field_width), field_height * C)
    j1 = stride * np.tile(np.arange(out_width), out_height)
    i = i0.reshape(-1, 1) + i1.reshape(1, -1)
    j = j0.reshape(-1, 1) + j1.reshape(1, -1)
    k = np.repeat(np.arange(C), field_height * field_width).reshape(-1, 1)
    return k, i, j


def im2col_indices(x, field_height, field_width, padding=1, stride=1):
    """Every receptive field of ``x`` as a column: [C * fh * fw, N * out_h * out_w]."""
    x_padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), mode="constant")
    k, i, j = get_im2col_indices(x.shape, field_height, field_width, padding, stride)
    cols = x_padded[:, k, i, j]
    C = x.shape[1]
    return cols.transpose(1, 2, 0).reshape(field_height * field_width * C, -1)


def conv_forward(x, w, b, stride=1, pad=1):
    N, C, H, W = x.shape
    num_filters, _, filter_height, filter_width = w.shape
    out_height = (H + 2 * pad - filter_height) // stride + 1
    out_width = (W + 2 * pad - filter_width) // stride + 1
    x_cols = im2col_indices(x, filter_height, filter_width, pad, stride)
    res = w.reshape((w.shape[0], -1)) @ x_cols + b.reshape(-1, 1)
    out = res.reshape(num_filters, out_height, out_width, x.shape[0])
    return out.transpose(3, 0, 1, 2)


def max_pool_2x2(x):
    N, C, H, W = x.shape
    return x.reshape(N, C, H // 2, 2, W // 2, 2).max(axis=3).max(axis=4)


def cnn_forward(x, model):
    """conv - relu - pool - conv - relu - pool - affine - softmax: class probabilities."""
    h = max_pool_2x2(np.maximum(0, conv_forward(x, model["W1"], model["b1"])))
    h = max_pool_2x2(np.maximum(0, conv_forward(h, model["W2"], model["b2"])))
    scores = h.reshape(h.shape[0], -1) @ model["W3"] + model["b3"]
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    probs = np.exp(shifted)
    return probs / np.sum(probs, axis=1, keepdims=True)


def make_args(batch=16, size=32, channels=3, filters=(16, 32), classes=10, seed=0):
    """CIFAR-10 shaped images and a small model's weights (He-scaled)."""
    rng = np.random.default_rng(seed)
    f1, f2 = filters

    def he(*shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    features = f2 * (size // 4) ** 2
    model = {"W1": he(f1, channels, 3, 3, fan_in=channels * 9), "b1": np.zeros(f1, np.float32),
             "W2": he(f2, f1, 3, 3, fan_in=f1 * 9), "b2": np.zeros(f2, np.float32),
             "W3": he(features, classes, fan_in=features), "b3": np.zeros(classes, np.float32)}
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    return {"x": x, "model": model}
