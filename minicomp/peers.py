"""Peer implementations that ``minicomp bench`` times beside NumPy and minicomp.

A ``Peer`` is a named column of the benchmark table. Given a workload and its NumPy inputs it
returns a ``Prepared``: a function, the peer's own copies of the inputs (torch tensors, device
arrays, ...), how long compiling took (excluded from the timings) and how to turn a result back
into NumPy for the correctness check. A peer that needs a module (``torch``, ``numba``, ...)
names it; when that module cannot be imported the column is left out and the report says why.
Later peers (numba, CUDA) plug in the same way: ``register_peer(Peer(...))``.

The torch peers run the nine workloads written line for line with torch ops (``TORCH_FUNCTIONS``)
on tensors sharing memory with the NumPy inputs (``torch.from_numpy``): ``torch eager`` calls
them as they are, ``torch.compile`` wraps them in ``torch.compile(fn)`` (default mode).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .workloads import Workload


@dataclass
class Prepared:
    """A peer ready to time: ``fn(*args)`` computes the workload."""

    fn: Callable
    args: tuple
    compile_ms: float = 0.0
    to_numpy: Callable = np.asarray


@dataclass(frozen=True)
class Peer:
    """A benchmark column: ``prepare(workload, numpy_args)`` -> ``Prepared``, or None to skip."""

    name: str
    prepare: Callable[[Workload, list[np.ndarray]], "Prepared | None"]
    requires: tuple[str, ...] = ()  # modules that must import

    def missing(self) -> str | None:
        """The first required module that does not import, or None when the peer can run."""
        for module in self.requires:
            try:
                importlib.import_module(module)
            except ImportError:
                return module
        return None


PEERS: dict[str, Peer] = {}


def register_peer(peer: Peer) -> Peer:
    """Add (or replace) a peer column; returns it."""
    PEERS[peer.name] = peer
    return peer


def available_peers() -> tuple[list[Peer], list[str]]:
    """The peers that can run here, and a note (``"torch not installed"``) per missing module."""
    usable, notes = [], []
    for peer in PEERS.values():
        module = peer.missing()
        if module is None:
            usable.append(peer)
        elif f"{module} not installed" not in notes:
            notes.append(f"{module} not installed")
    return usable, notes


# ----------------------------------------------------------------------------- torch versions

def _gelu(torch, v):
    return 0.5 * v * (1 + torch.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def _softmax(torch, s):
    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _layernorm(torch, x, gamma, beta):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) * (x - mean)).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * gamma + beta


def _block(torch, x, ln1_g, ln1_b, w_qkv, b_qkv, w_out, b_out, ln2_g, ln2_b, w_fc, b_fc, w_proj, b_proj):
    *batch, seq, dim = x.shape
    heads = dim // 64
    q, k, v = torch.split(_layernorm(torch, x, ln1_g, ln1_b) @ w_qkv + b_qkv, dim, dim=-1)

    def split_heads(t):
        return t.reshape(*batch, seq, heads, dim // heads).transpose(-2, -3)

    q, k, v = split_heads(q), split_heads(k), split_heads(v)
    scores = q @ k.transpose(-1, -2) * (dim // heads) ** -0.5
    future = torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=x.device), diagonal=1)
    a = _softmax(torch, scores.masked_fill(future, float("-inf"))) @ v
    x = x + a.transpose(-2, -3).reshape(*batch, seq, dim) @ w_out + b_out
    h = _layernorm(torch, x, ln2_g, ln2_b)
    return x + _gelu(torch, h @ w_fc + b_fc) @ w_proj + b_proj


def _conv_bn_relu(torch, x, w, mean, var, gamma, beta):
    y = torch.nn.functional.conv2d(x, w, padding=1)
    c = (1, -1, 1, 1)
    y = (y - mean.reshape(c)) / torch.sqrt(var.reshape(c) + 1e-5) * gamma.reshape(c) + beta.reshape(c)
    return torch.clamp_min(y, 0)


TORCH_FUNCTIONS: dict[str, Callable] = {  # workload name -> fn(torch, *tensors)
    "ew_chain": lambda torch, x, a, b: _gelu(torch, x * a + b),
    "linear_gelu": lambda torch, x, w, b: _gelu(torch, x @ w + b),
    "mlp": lambda torch, x, w1, w2: torch.clamp_min(x @ w1, 0) @ w2,
    "softmax": _softmax,
    "layernorm": _layernorm,
    "attention": lambda torch, q, k, v: _softmax(torch, q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5) @ v,
    "matmul": lambda torch, a, b: a @ b,
    "block": _block,
    "conv_bn_relu": _conv_bn_relu,
}


def prepare_torch_eager(workload: Workload, args: list[np.ndarray]) -> Prepared | None:
    """The torch version of ``workload`` on ``torch.from_numpy`` tensors, run eagerly.

    The torch module itself is the first argument: the bodies stay plain functions with one
    code object each, which is what ``torch.compile`` caches its compiled graphs by.
    """
    import torch

    body = TORCH_FUNCTIONS.get(workload.name)
    if body is None:
        return None
    return Prepared(body, (torch, *(torch.from_numpy(a) for a in args)), 0.0, _torch_numpy)


def _torch_numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def prepare_torch_compile(workload: Workload, args: list[np.ndarray]) -> Prepared | None:
    """``torch.compile`` (default mode) of the torch version; the first call's time is compile time."""
    import torch

    eager = prepare_torch_eager(workload, args)
    if eager is None:
        return None
    compiled = torch.compile(eager.fn)
    start = time.perf_counter()
    compiled(*eager.args)  # compiles; later calls hit the compiled graph
    compile_ms = (time.perf_counter() - start) * 1e3
    return Prepared(compiled, eager.args, compile_ms, _torch_numpy)


register_peer(Peer("torch eager", prepare_torch_eager, requires=("torch",)))
register_peer(Peer("torch.compile", prepare_torch_compile, requires=("torch",)))
