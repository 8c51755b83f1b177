"""``minicomp bench``: the benchmark workloads, timed against peers in the same process.

Method (BENCHMARKS.md): every implementation of a workload runs in this process on the same
inputs; compilation and one warm-up call happen before timing and are reported apart; then the
implementations are timed *interleaved* (one call of each per round, in an order that rotates
from round to round, so a noisy neighbour hits all of them alike) and the median over rounds
is reported, with the ratio
``minicomp time / peer time`` (below 1 means minicomp is faster).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .testing import assert_close
from .workloads import WORKLOADS, Workload


@dataclass
class Result:
    """Timings of one workload: medians in milliseconds per implementation."""

    workload: str
    shapes: str
    compile_ms: float
    median_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0

    def ratio(self, peer: str, of: str = "minicomp") -> float:
        return self.median_ms[of] / self.median_ms[peer]


def _time_once(fn: Callable, args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def measure(implementations: dict[str, Callable], args, min_rounds: int, min_seconds: float) -> tuple[dict, int]:
    """Interleaved timing: rounds of one call per implementation, until both minimums are met."""
    samples: dict[str, list[float]] = {name: [] for name in implementations}
    start = time.perf_counter()
    rounds = 0
    names = list(implementations)
    while rounds < min_rounds or time.perf_counter() - start < min_seconds:
        # Rotate who goes first: OpenBLAS threads spin for a while after NumPy's matmul and
        # slow down whatever runs next, so a fixed order would favour one implementation.
        for name in names[rounds % len(names):] + names[:rounds % len(names)]:
            samples[name].append(_time_once(implementations[name], args))
        rounds += 1
        if rounds >= 200:
            break
    return {name: statistics.median(times) for name, times in samples.items()}, rounds


def bench_workload(workload: Workload, size: str, target: str, min_rounds: int,
                   min_seconds: float, without_passes: bool = False) -> Result:
    """Compile, check and time one workload against NumPy eager.

    ``without_passes`` adds the column ``no passes``: the same target with every graph pass
    disabled (one kernel per op), to measure what the passes buy.
    """
    from . import jit

    args = workload.inputs(size)
    compiled = jit(workload.fn, target=target)
    start = time.perf_counter()
    compiled.compiled_for(*args)  # trace, lower, render, compile (or hit the cache), load
    compile_ms = (time.perf_counter() - start) * 1e3
    assert_close(compiled(*args), workload.fn(*args))  # also the warm-up call
    implementations = {"numpy": workload.fn, "minicomp": compiled}
    if without_passes:
        unoptimised = jit(workload.fn, target=target, passes=[])
        assert_close(unoptimised(*args), workload.fn(*args))
        implementations["no passes"] = unoptimised
    medians, rounds = measure(implementations, args, min_rounds, min_seconds)
    shapes = " ".join("x".join(map(str, s)) for s in workload.shapes[size].values())
    return Result(workload.name, shapes, compile_ms, medians, rounds)


def machine_description() -> str:
    """CPU model and core count, for the report header."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    return f"{model}, {os.cpu_count()} cores, NumPy {np.__version__}"


def format_table(results: list[Result]) -> str:
    """The human-readable report: medians, ratios against NumPy, compile times."""
    extra = results and "no passes" in results[0].median_ms
    head = f"{'workload':<14} {'numpy ms':>10} {'minicomp ms':>12} {'ratio':>7}"
    head += f" {'no passes ms':>13} {'ratio':>7}" if extra else ""
    lines = [head + f" {'compile ms':>11}  rounds", "-" * (66 + 22 * bool(extra))]
    for r in results:
        row = f"{r.workload:<14} {r.median_ms['numpy']:>10.3f} {r.median_ms['minicomp']:>12.3f} {r.ratio('numpy'):>7.2f}"
        if extra:
            row += f" {r.median_ms['no passes']:>13.3f} {r.ratio('numpy', of='no passes'):>7.2f}"
        lines.append(row + f" {r.compile_ms:>11.1f}  {r.rounds}")
    lines.append("ratio = minicomp median / numpy median (below 1: minicomp is faster)")
    return "\n".join(lines)


def run_bench(names: list[str] | None = None, size: str = "cpu", target: str = "c",
              min_rounds: int = 10, min_seconds: float = 1.0, as_json: bool = False,
              without_passes: bool = False) -> list[Result]:
    """Benchmark the named workloads (default: all nine) and print the report."""
    unknown = set(names or []) - set(WORKLOADS)
    if unknown:
        from .errors import MinicompError

        raise MinicompError(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    results = []
    for name in names or list(WORKLOADS):
        results.append(bench_workload(WORKLOADS[name], size, target, min_rounds, min_seconds, without_passes))
        if not as_json:
            print(f"  {name}: done", flush=True)
    if as_json:
        print(json.dumps({"machine": machine_description(), "size": size, "target": target,
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"\nminicomp bench: {size} sizes, target {target}, on {machine_description()}")
        print(format_table(results))
    return results
