"""``minicomp bench``: the benchmark workloads, timed against peers in the same process.

Method (BENCHMARKS.md): every implementation of a workload runs in this process on the same
inputs; compilation and one warm-up call happen before timing and are reported apart; then the
implementations are timed *interleaved in short blocks* (a few calls of each per round, in an
order that rotates from round to round, so a noisy neighbour hits all of them alike) and the
median over all timed calls is reported, with the ratio
``minicomp time / peer time`` (below 1 means minicomp is faster).

Peers besides NumPy come from ``minicomp.peers`` (torch eager and ``torch.compile`` when torch
imports). Each workload also gets its roofline floor: ``max(FLOPs / peak rate, minimum bytes /
copy bandwidth)``, from the traced graph (``minicomp.stats``) and the machine's ceilings measured
once per run (``measure_ceilings``: NumPy copy bandwidth, NumPy float32 matmul 2048³).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import MinicompError
from .peers import available_peers
from .testing import assert_close
from .workloads import WORKLOADS, Workload


@dataclass(frozen=True)
class Ceilings:
    """The machine's measured ceilings: copy bandwidth (GB/s) and peak sgemm rate (GFLOP/s)."""

    bandwidth_gbs: float
    peak_gflops: float

    def __str__(self) -> str:
        return f"copy {self.bandwidth_gbs:.1f} GB/s, sgemm {self.peak_gflops:.1f} GFLOP/s"


def _median_seconds(fn: Callable, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_ceilings(copy_elements: int = 1 << 25, n: int = 2048, repeats: int = 5) -> Ceilings:
    """Copy bandwidth (bytes read + written by ``np.copyto`` of a 128 MB float32 array) and peak
    sgemm rate (NumPy float32 ``n``³ matmul, ``2n³`` FLOPs), each the median of ``repeats``."""
    src, dst = np.ones(copy_elements, np.float32), np.zeros(copy_elements, np.float32)
    copy_s = _median_seconds(lambda: np.copyto(dst, src), repeats)
    a, b = np.ones((n, n), np.float32), np.ones((n, n), np.float32)
    out = np.empty((n, n), np.float32)
    gemm_s = _median_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return Ceilings(2 * src.nbytes / copy_s / 1e9, 2 * n**3 / gemm_s / 1e9)


def roofline_floor_ms(flops: int, nbytes: int, ceilings: Ceilings) -> float:
    """The roofline floor in ms: ``max(flops / peak rate, bytes / copy bandwidth)``."""
    return max(flops / (ceilings.peak_gflops * 1e9), nbytes / (ceilings.bandwidth_gbs * 1e9)) * 1e3


def workload_cost(workload: Workload, args) -> tuple[int, int]:
    """FLOPs and minimum bytes (inputs read, outputs written) of the workload's traced graph."""
    from .frontend import trace
    from .stats import graph_stats, minimum_bytes

    graph = trace(workload.fn, *args)
    return graph_stats(graph).flops, minimum_bytes(graph)


@dataclass
class Result:
    """Timings of one workload: medians in milliseconds per implementation, and its roofline."""

    workload: str
    shapes: str
    compile_ms: float
    median_ms: dict[str, float] = field(default_factory=dict)
    rounds: int = 0
    flops: int = 0
    min_bytes: int = 0
    floor_ms: float = 0.0
    peer_compile_ms: dict[str, float] = field(default_factory=dict)

    def ratio(self, peer: str, of: str = "minicomp") -> float:
        """``of`` median / ``peer`` median (below 1: ``of`` is faster)."""
        return self.median_ms[of] / self.median_ms[peer]

    @property
    def of_floor(self) -> float:
        """minicomp's fraction of the roofline floor: floor / minicomp time (1 = at the roof)."""
        return self.floor_ms / self.median_ms["minicomp"]


def _time_once(fn: Callable) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


SETTLE_S = 0.2      # OpenBLAS's idle threads keep spinning ~0.1-0.2 s after a NumPy matmul
CALLS_PER_BLOCK = 3


def measure(implementations: dict[str, Callable], min_rounds: int, min_seconds: float) -> tuple[dict, int]:
    """Timing of argument-less calls in interleaved blocks, until both minimums are met (at
    most 200 timed calls each); returns medians in ms and the number of timed calls each.

    A block is: wait ``SETTLE_S``, one untimed call, ``CALLS_PER_BLOCK`` timed calls. The wait
    matters: after NumPy's matmul, OpenBLAS's worker threads spin (yielding) for about 0.1 s
    and halve the speed of any multi-threaded code that runs next on a 2-core machine, so
    timing calls back to back measures the neighbour, not the implementation.
    """
    samples: dict[str, list[float]] = {name: [] for name in implementations}
    start = time.perf_counter()
    blocks = 0
    names = list(implementations)
    while blocks * CALLS_PER_BLOCK < min_rounds or time.perf_counter() - start < min_seconds:
        for name in names[blocks % len(names):] + names[:blocks % len(names)]:  # rotate who goes first
            time.sleep(SETTLE_S)
            implementations[name]()
            samples[name] += [_time_once(implementations[name]) for _ in range(CALLS_PER_BLOCK)]
        blocks += 1
        if blocks * CALLS_PER_BLOCK >= 200:
            break
    return {name: statistics.median(times) for name, times in samples.items()}, blocks * CALLS_PER_BLOCK


def _call(fn: Callable, args) -> Callable:
    return lambda: fn(*args)


def prepare_peers(workload: Workload, args, expected, peers) -> tuple[dict[str, Callable], dict[str, float]]:
    """Prepare each peer, check its result against NumPy's, return timed calls and compile ms."""
    calls, compile_ms = {}, {}
    for peer in peers:
        prepared = peer.prepare(workload, args)
        if prepared is None:  # the peer has no version of this workload
            continue
        assert_close(prepared.to_numpy(prepared.fn(*prepared.args)), expected)
        calls[peer.name] = _call(prepared.fn, prepared.args)
        compile_ms[peer.name] = prepared.compile_ms
    return calls, compile_ms


def bench_workload(workload: Workload, size: str, target: str, min_rounds: int,
                   min_seconds: float, without_passes: bool = False, peers=(),
                   ceilings: Ceilings | None = None) -> Result:
    """Compile, check and time one workload against NumPy eager and ``peers``.

    ``without_passes`` adds the column ``no passes``: the same target with every graph pass
    disabled (one kernel per op), to measure what the passes buy. With ``ceilings`` the result
    carries the workload's roofline floor.
    """
    from . import jit

    args = workload.inputs(size)
    compiled = jit(workload.fn, target=target)
    start = time.perf_counter()
    compiled.compiled_for(*args)  # trace, lower, render, compile (or hit the cache), load
    compile_ms = (time.perf_counter() - start) * 1e3
    expected = workload.fn(*args)
    assert_close(compiled(*args), expected)  # also the warm-up call
    calls = {"numpy": _call(workload.fn, args), "minicomp": _call(compiled, args)}
    if without_passes:
        unoptimised = jit(workload.fn, target=target, passes=[])
        assert_close(unoptimised(*args), expected)
        calls["no passes"] = _call(unoptimised, args)
    peer_calls, peer_compile_ms = prepare_peers(workload, args, expected, peers)
    medians, rounds = measure(calls | peer_calls, min_rounds, min_seconds)
    shapes = " ".join("x".join(map(str, s)) for s in workload.shapes[size].values())
    flops, nbytes = workload_cost(workload, args)
    floor = roofline_floor_ms(flops, nbytes, ceilings) if ceilings else 0.0
    return Result(workload.name, shapes, compile_ms, medians, rounds, flops, nbytes, floor, peer_compile_ms)


def bench_function(name: str, fn: Callable, args: list, target: str = "c", min_rounds: int = 10,
                   min_seconds: float = 1.0, ceilings: Ceilings | None = None) -> Result:
    """Compile, check and time ``fn(*args)`` (arguments may be pytrees) against NumPy eager.

    Requires: ``fn`` runs under NumPy on ``args``. Guarantees: the compiled result matches NumPy's
    (every array leaf, ``assert_close``) before anything is timed.

    >>> bench_function("mlp", mlp, [x, {"w": w}]).median_ms    # {'numpy': 1.2, 'minicomp': 0.8}
    """
    from . import jit
    from .frontend.dynamic import map_key
    from .frontend.pytree import flatten
    from .stats import graph_stats, minimum_bytes

    compiled = jit(fn, target=target)
    start = time.perf_counter()
    traced = compiled.trace(*args)
    compile_ms = (time.perf_counter() - start) * 1e3
    expected_leaves, actual_leaves = [], []
    plain = lambda key: map_key(key, lambda leaf: leaf[:3], lambda leaf: leaf)  # noqa: E731  (NumPy's scalars: 0-d)
    if plain(flatten(fn(*args), expected_leaves)) != plain(flatten(compiled(*args), actual_leaves)):
        raise MinicompError(f"{name}: the compiled function returned a different structure than NumPy")
    for actual, expected in zip(actual_leaves, expected_leaves):
        assert_close(actual, expected)
    medians, rounds = measure({"numpy": _call(fn, args), "minicomp": _call(compiled, args)}, min_rounds, min_seconds)
    shapes = " ".join("x".join(map(str, node.shape)) for node in traced.inputs[:4])
    shapes += f" (+{len(traced.inputs) - 4} inputs)" if len(traced.inputs) > 4 else ""
    flops, nbytes = graph_stats(traced).flops, minimum_bytes(traced)
    floor = roofline_floor_ms(flops, nbytes, ceilings or measure_ceilings())
    return Result(name, shapes, compile_ms, medians, rounds, flops, nbytes, floor)


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


def _columns(results: list[Result]) -> list[str]:
    """Every timed implementation after numpy and minicomp, in first-seen order."""
    seen: dict[str, None] = {}
    for r in results:
        seen.update(dict.fromkeys(n for n in r.median_ms if n not in ("numpy", "minicomp")))
    return list(seen)


def _cell(r: Result, name: str, width: int) -> str:
    if name not in r.median_ms:
        return f" {'-':>{width}} {'-':>7}"
    ratio = r.ratio("numpy", of=name) if name == "no passes" else r.ratio(name)
    return f" {r.median_ms[name]:>{width}.3f} {ratio:>7.2f}"


def format_table(results: list[Result]) -> str:
    """The human-readable report: medians, ratios, roofline floor, compile times."""
    extra = _columns(results)
    head = f"{'workload':<14} {'numpy ms':>10} {'minicomp ms':>12} {'ratio':>7}"
    head += "".join(f" {name + ' ms':>{max(len(name) + 3, 10)}} {'ratio':>7}" for name in extra)
    head += f" {'floor ms':>10} {'of roof':>8} {'compile ms':>11}  calls"
    lines = [head, "-" * len(head)]
    for r in results:
        row = f"{r.workload:<14} {r.median_ms['numpy']:>10.3f} {r.median_ms['minicomp']:>12.3f} {r.ratio('numpy'):>7.2f}"
        row += "".join(_cell(r, name, max(len(name) + 3, 10)) for name in extra)
        row += f" {r.floor_ms:>10.3f} {r.of_floor:>8.1%} {r.compile_ms:>11.1f}  {r.rounds}"
        lines.append(row)
    lines.append("ratio = minicomp median / numpy median (below 1: minicomp is faster)")
    if "no passes" in extra:
        lines.append("no passes ratio = no-passes median / numpy median")
    if set(extra) - {"no passes"}:
        lines.append("peer ratio = minicomp median / peer median; peer compile time excluded:")
        lines += [f"  {r.workload}: " + ", ".join(f"{n} {ms:.0f} ms" for n, ms in r.peer_compile_ms.items() if ms)
                  for r in results if any(r.peer_compile_ms.values())]
    lines.append("floor = max(FLOPs / peak sgemm, minimum bytes / copy bandwidth); "
                 "of roof = floor / minicomp median")
    return "\n".join(lines)


def plot_roofline(results: list[Result], ceilings: Ceilings, path: str) -> None:
    """Write a log-log roofline chart to ``path``: arithmetic intensity (FLOPs / minimum byte) on
    x, GFLOP/s on y, the two ceilings as lines, one point per workload per implementation."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import NullFormatter
    except ImportError:
        raise MinicompError("--plot needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [(r.flops / r.min_bytes, r) for r in results if r.flops and r.min_bytes]
    xs = [x for x, _ in points] + [ceilings.peak_gflops / ceilings.bandwidth_gbs]  # + the ridge
    x = np.geomspace(min(xs) / 4, max(xs) * 4, 200)
    ax.plot(x, np.minimum(ceilings.bandwidth_gbs * x, ceilings.peak_gflops), "k-", lw=3, alpha=0.3,
            label="roofline")
    ax.axhline(ceilings.peak_gflops, color="grey", ls=":", label=f"sgemm {ceilings.peak_gflops:.0f} GFLOP/s")
    ax.plot(x, ceilings.bandwidth_gbs * x, color="grey", ls="--", label=f"copy {ceilings.bandwidth_gbs:.0f} GB/s")
    markers = dict(zip(["numpy", "minicomp", *_columns(results)], "os^vDP*Xh"))
    for name, marker in markers.items():
        pts = [(xi, r.flops / r.median_ms[name] / 1e6) for xi, r in points if name in r.median_ms]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=name)
    for xi, r in points:
        ax.annotate(r.workload, (xi, r.flops / r.median_ms["minicomp"] / 1e6), fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte)", ylabel="GFLOP/s",
           title="minicomp bench roofline")
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: minor ones overlap
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def run_bench(names: list[str] | None = None, size: str = "cpu", target: str = "c",
              min_rounds: int = 10, min_seconds: float = 1.0, as_json: bool = False,
              without_passes: bool = False, plot: str | None = None,
              ceilings: Ceilings | None = None) -> list[Result]:
    """Benchmark the named workloads (default: all nine) against NumPy and every available peer,
    print the report (or JSON) and, with ``plot``, write the roofline chart there. ``ceilings``
    defaults to ``measure_ceilings()``, run once here."""
    unknown = set(names or []) - set(WORKLOADS)
    if unknown:
        raise MinicompError(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    ceilings = ceilings or measure_ceilings()
    peers, notes = available_peers()
    results = []
    for name in names or list(WORKLOADS):
        results.append(bench_workload(WORKLOADS[name], size, target, min_rounds, min_seconds,
                                      without_passes, peers, ceilings))
        if not as_json:
            print(f"  {name}: done", flush=True)
    if as_json:
        print(json.dumps({"machine": machine_description(), "size": size, "target": target,
                          "ceilings": asdict(ceilings), "peers": [p.name for p in peers], "notes": notes,
                          "results": [asdict(r) | {"of_floor": r.of_floor} for r in results]}, indent=2))
    else:
        print(f"\nminicomp bench: {size} sizes, target {target}, on {machine_description()}")
        print(f"ceilings: {ceilings}" + "".join(f"; {note}" for note in notes))
        print(format_table(results))
    if plot:
        plot_roofline(results, ceilings, plot)
    return results
