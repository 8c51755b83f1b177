"""``minicomp demo``: the compiler on real workloads, end to end, checked against NumPy.

For now (the foundation): trace an MLP and a softmax written in plain NumPy, print their graphs
and statistics, run them through ``@minicomp.jit`` and check the results against NumPy; then
trace all nine benchmark workloads and check each one the same way.
"""

from __future__ import annotations

import time

import numpy as np

from . import jit, trace
from .stats import format_stats, graph_stats, human
from .testing import assert_close
from .workloads import WORKLOADS


def _section(title: str) -> None:
    print(f"\n{'=' * 8} {title} {'=' * (70 - len(title))}")


def mlp(x, w1, b1, w2):
    """linear -> relu -> linear, the seed article's first example."""
    return np.maximum(x @ w1 + b1, 0) @ w2


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _show(fn, *args) -> None:
    graph = trace(fn, *args)
    print(graph)
    print()
    print(format_stats(graph))
    compiled = jit(fn, target="numpy")
    assert_close(compiled(*args), fn(*args))
    print(f"\n@minicomp.jit(target='numpy') matches NumPy on {', '.join(str(a.shape) for a in args)}")


def run_demo() -> None:
    """Print the demo to standard output; raises if any result disagrees with NumPy."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    _section("1. an MLP, traced from plain NumPy")
    _show(mlp, rng.standard_normal((64, 256), f32), rng.standard_normal((256, 512), f32) * f32(0.06),
          rng.standard_normal(512, f32), rng.standard_normal((512, 128), f32) * f32(0.04))
    _section("2. a softmax")
    _show(softmax, rng.standard_normal((128, 1000), f32))
    _section("3. the nine benchmark workloads (CPU sizes), traced and checked")
    print(f"{'workload':<14} {'ops':>4} {'FLOPs':>12} {'bytes (eager)':>14} {'trace ms':>9}  result")
    for workload in WORKLOADS.values():
        args = workload.inputs("cpu")
        start = time.perf_counter()
        graph = trace(workload.fn, *args)
        traced_ms = (time.perf_counter() - start) * 1e3
        stats = graph_stats(graph)
        assert_close(jit(workload.fn, target="numpy")(*args), workload.fn(*args))
        print(f"{workload.name:<14} {len(stats.nodes):>4} {human(stats.flops, 'FLOP'):>12} "
              f"{human(stats.bytes_read + stats.bytes_written):>14} {traced_ms:>9.1f}  matches NumPy")
    print("\nEvery graph above ran through minicomp's reference interpreter and matched NumPy.")
