"""``minicomp demo``: the compiler on real workloads, end to end, checked against NumPy.

1. an MLP and a softmax written in plain NumPy are traced; their graphs and statistics printed;
2. the softmax goes through the pass pipeline (5 ops -> 1 fused kernel), is lowered to loops
   and rendered as C, compiled and run;
3. the nine benchmark workloads are traced, compiled to C through ``@minicomp.jit``, checked
   against NumPy and timed against it (a quick look; ``minicomp bench`` measures properly).

It grows with each capability of the compiler (fusion, schedules, CUDA ...).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from . import jit, trace
from .bench import SETTLE_S
from .codegen.c import render_c
from .lower.program import lower
from .stages import loop_program
from .passes.pipeline import run_pipeline
from .stats import format_stats, graph_stats, human
from .testing import assert_close
from .workloads import WORKLOADS


def _section(title: str) -> None:
    print(f"\n{'=' * 8} {title} {'=' * max(4, 70 - len(title))}")


def mlp(x, w1, b1, w2):
    """linear -> relu -> linear, the seed article's first example."""
    return np.maximum(x @ w1 + b1, 0) @ w2


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _median_ms(fn, args, repeats: int = 3) -> float:
    time.sleep(SETTLE_S)  # let the other implementation's idle threads go to sleep (see bench)
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _show_graph(fn, *args) -> None:
    graph = trace(fn, *args)
    print(graph)
    print()
    print(format_stats(graph))
    assert_close(jit(fn, target="numpy")(*args), fn(*args))
    print(f"\nthe reference interpreter matches NumPy on {', '.join(str(a.shape) for a in args)}")


def _show_c(x: np.ndarray) -> None:
    graph = trace(softmax, x)
    print(f"one kernel per op: {len(lower(graph).kernels)} kernels; after the passes:\n")
    optimised, report = run_pipeline(graph)
    print(report)
    program = loop_program(optimised)
    print(f"\n{len(program.kernels)} kernel, as loops (the row is reduced twice, then written once):\n")
    print(program.kernels[0])
    source = render_c(program)
    start = source.index("/* %fused")
    print("\nand as C:\n")
    print(source[start:source.index("\n}\n", start) + 2])
    compiled = jit(softmax)
    assert_close(compiled(x), softmax(x))
    print(f"compiled with gcc, loaded with cffi: matches NumPy on {x.shape}")


def run_demo(size: str = "cpu") -> None:
    """Print the demo to standard output; raises if any result disagrees with NumPy."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    _section("1. an MLP, traced from plain NumPy")
    _show_graph(mlp, rng.standard_normal((64, 256), f32), rng.standard_normal((256, 512), f32) * f32(0.06),
                rng.standard_normal(512, f32), rng.standard_normal((512, 128), f32) * f32(0.04))
    _section("2. a softmax, traced")
    _show_graph(softmax, rng.standard_normal((128, 1000), f32))
    _section("3. the softmax through the passes, as loops and as C")
    _show_c(rng.standard_normal((128, 1000), f32))
    _section(f"4. the nine benchmark workloads ({size} sizes): traced, compiled to C, checked")
    print(f"{'workload':<14} {'ops':>4} {'kernels':>8} {'FLOPs':>11} {'compile ms':>11} {'numpy ms':>9} "
          f"{'minicomp ms':>12}  result")
    for workload in WORKLOADS.values():
        args = workload.inputs(size)
        start = time.perf_counter()
        compiled = jit(workload.fn)
        result = compiled(*args)
        compile_ms = (time.perf_counter() - start) * 1e3
        assert_close(result, workload.fn(*args))
        stats = graph_stats(compiled.trace(*args))
        kernels = len(compiled.compiled_for(*args).graph.op_nodes())
        print(f"{workload.name:<14} {len(stats.nodes):>4} {kernels:>8} {human(stats.flops, 'FLOP'):>11} {compile_ms:>11.0f} "
              f"{_median_ms(workload.fn, args):>9.2f} {_median_ms(compiled, args):>12.2f}  matches NumPy")
    print("\nPasses: cleanups, layout, rematerialisation, fusion, memory planning; then default")
    print("schedules: packed matmul micro-kernel, tiled attention, SIMD lanes, parallel loops.")
    print("`minicomp bench` times it properly (more rounds, torch columns when torch imports).")
    print("Every graph above was compiled, run and matched NumPy.")
