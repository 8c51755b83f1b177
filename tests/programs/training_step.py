"""One SGD training step of a fully connected network, as CS231n's two-layer net writes it:
forward with ReLU, softmax cross-entropy with ``probs[range(N), y]``, the backward pass by hand
(``dscores[range(N), y] -= 1``), returning the loss and a tuple of gradient lists.

    minicomp bench tests/programs/training_step.py:train_step --args-from tests/programs/training_step.py:make_args
"""

import numpy as np


def forward(X, weights, biases):
    """The hidden activations of every layer and the class scores."""
    activations = [X]
    for W, b in zip(weights[:-1], biases[:-1]):
        activations.append(np.maximum(0, activations[-1] @ W + b))
    scores = activations[-1] @ weights[-1] + biases[-1]
    return activations, scores


def softmax_loss(scores, y):
    """Mean cross-entropy of the softmax of ``scores`` against labels ``y``; and d loss / d scores."""
    N = scores.shape[0]
    shifted = scores - np.max(scores, axis=1, keepdims=True)
    exp_scores = np.exp(shifted)
    probs = exp_scores / np.sum(exp_scores, axis=1, keepdims=True)
    loss = np.sum(-np.log(probs[range(N), y])) / N
    dscores = probs.copy()
    dscores[range(N), y] -= 1
    return loss, dscores / N


def train_step(X, y, weights, biases, reg=1e-3):
    """Loss (with L2 regularisation) and the gradients: ``loss, ([dW1, dW2, ...], [db1, ...])``."""
    activations, scores = forward(X, weights, biases)
    loss, dout = softmax_loss(scores, y)
    loss += 0.5 * reg * sum(np.sum(W * W) for W in weights)
    grads_W, grads_b = [], []
    for layer in reversed(range(len(weights))):
        h = activations[layer]
        grads_W.insert(0, h.T @ dout + reg * weights[layer])
        grads_b.insert(0, np.sum(dout, axis=0))
        if layer > 0:
            dout = dout @ weights[layer].T
            dout[h <= 0] = 0  # ReLU's gradient
    return loss, (grads_W, grads_b)


def make_args(batch=256, sizes=(784, 512, 256, 10), seed=0):
    """MNIST-shaped inputs, labels and a 3-layer network's weights."""
    rng = np.random.default_rng(seed)
    weights = [(rng.standard_normal((m, n)) * np.sqrt(2.0 / m)).astype(np.float32)
               for m, n in zip(sizes[:-1], sizes[1:])]
    biases = [np.zeros(n, np.float32) for n in sizes[1:]]
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    return {"X": X, "y": y, "weights": weights, "biases": biases}
