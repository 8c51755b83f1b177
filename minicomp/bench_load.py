"""``minicomp bench --under-load``: the workloads timed while another process keeps a core busy.

Users' machines are rarely idle. A parallel kernel that splits its loop into one equal share
per thread waits, at its closing barrier, for the thread that shares its core with someone else;
on a 2-core machine with one core busy that can cost several times the idle time. This
benchmark measures it: one child process spins on the last core (``BusyCore``), and each
implementation (NumPy, minicomp, the peers) is timed in interleaved blocks, alternately with the
spinner stopped (``SIGSTOP``: idle) and running (``SIGCONT``: loaded), so that both states see
the same machine; each implementation is warmed up in each state before it is timed. It prints, per workload and implementation, the median and the 90th
percentile of each state and their ratios loaded / idle::

    workload       impl            idle ms   p90 ms   loaded ms   p90 ms   median x   p90 x
    softmax        minicomp          2.10     2.31        2.95     3.60       1.40    1.56

The targets of issue "Trust" are median x <= 2 and p90 x <= 3 for minicomp.

``minicomp bench --parallel-threshold`` measures the other side of sharing the machine: below
how much work one thread beats all of them (``measure_parallel_threshold``), which is where
``schedules.cpu.work.PARALLEL_MIN_WORK`` is set.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .bench import CALLS_PER_BLOCK, SETTLE_S, _call, _time_once, machine_description, prepare_peers
from .errors import MinicompError
from .peers import available_peers
from .testing import assert_close
from .workloads import WORKLOADS, Workload

STATES = ("idle", "loaded")
SPIN = "import os, sys\nif hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass\n"


class BusyCore:
    """A child process that spins on one core (the last one), stopped until ``on()``.

    ``with BusyCore() as busy: busy.on(); ...; busy.off()``. The child is killed on exit.
    """

    def __init__(self, core: int | None = None):
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        self.core = cores[-1] if core is None else core
        self.process = subprocess.Popen([sys.executable, "-c", SPIN, str(self.core)])
        self.off()

    def on(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def off(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def __enter__(self) -> "BusyCore":
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def percentile_90(times: list[float]) -> float:
    """The 90th percentile (inclusive method; the largest sample below 10 samples)."""
    return statistics.quantiles(times, n=10, method="inclusive")[-1] if len(times) > 1 else times[0]


@dataclass
class LoadResult:
    """Samples in ms per state ("idle", "loaded") and implementation, for one workload."""

    workload: str
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def median(self, state: str, name: str) -> float:
        return statistics.median(self.samples[state][name])

    def p90(self, state: str, name: str) -> float:
        return percentile_90(self.samples[state][name])

    def slowdown(self, name: str) -> tuple[float, float]:
        """(loaded median / idle median, loaded p90 / idle p90)."""
        return (self.median("loaded", name) / self.median("idle", name),
                self.p90("loaded", name) / self.p90("idle", name))


WARM_CALLS, WARM_SECONDS = 20, 0.5  # untimed calls in each new state before timing: the steady state


def measure_under_load(implementations: dict[str, Callable], busy: BusyCore, min_blocks: int) -> dict:
    """Samples (ms) per state and implementation: ``min_blocks`` rounds, each timing every
    implementation in a block once idle and once loaded, the order of implementations rotating
    from round to round. A block is: settle, untimed calls for at least ``WARM_CALLS`` calls
    and ``WARM_SECONDS`` (what is measured is the steady state under each condition: minicomp
    notices a change of load within 16 calls, ``runtime/threads.py``), ``CALLS_PER_BLOCK``
    timed calls."""
    samples = {state: {name: [] for name in implementations} for state in STATES}
    names = list(implementations)
    for block in range(min_blocks):
        for state in STATES if block % 2 == 0 else STATES[::-1]:
            busy.on() if state == "loaded" else busy.off()
            for name in names[block % len(names):] + names[:block % len(names)]:
                time.sleep(SETTLE_S)
                _warm(implementations[name])
                samples[state][name] += [_time_once(implementations[name]) for _ in range(CALLS_PER_BLOCK)]
    busy.off()
    return samples


def _warm(fn: Callable) -> None:
    """Call ``fn`` untimed for at least ``WARM_CALLS`` calls and ``WARM_SECONDS``."""
    start, calls = time.perf_counter(), 0
    while calls < WARM_CALLS or time.perf_counter() - start < WARM_SECONDS:
        fn()
        calls += 1


def bench_under_load(workload: Workload, size: str, target: str, busy: BusyCore, min_blocks: int,
                     peers=()) -> LoadResult:
    """Compile and check one workload, then time it (and NumPy and ``peers``) idle and loaded."""
    from . import jit

    args = workload.inputs(size)
    compiled = jit(workload.fn, target=target)
    expected = workload.fn(*args)
    assert_close(compiled(*args), expected)
    calls = {"numpy": _call(workload.fn, args), "minicomp": _call(compiled, args)}
    peer_calls, _ = prepare_peers(workload, args, expected, peers)
    return LoadResult(workload.name, measure_under_load(calls | peer_calls, busy, min_blocks))


def format_load_table(results: list[LoadResult]) -> str:
    """Median and p90 per state, and the loaded / idle ratios, per workload and implementation."""
    head = (f"{'workload':<14} {'impl':<15} {'idle ms':>9} {'p90 ms':>8} {'loaded ms':>10} {'p90 ms':>8}"
            f" {'median x':>9} {'p90 x':>7}")
    lines = [head, "-" * len(head)]
    for r in results:
        for name in r.samples["idle"]:
            median_x, p90_x = r.slowdown(name)
            lines.append(f"{r.workload:<14} {name:<15} {r.median('idle', name):>9.3f} {r.p90('idle', name):>8.3f}"
                         f" {r.median('loaded', name):>10.3f} {r.p90('loaded', name):>8.3f}"
                         f" {median_x:>9.2f} {p90_x:>7.2f}")
    lines.append("loaded: another process spins on one core; median x / p90 x = loaded / idle")
    return "\n".join(lines)


def run_load_bench(names: list[str] | None = None, size: str = "cpu", target: str = "c",
                   min_blocks: int = 8, peers: bool = True) -> list[LoadResult]:
    """Time the named workloads (default: all nine) idle and under load, print the table."""
    unknown = set(names or []) - set(WORKLOADS)
    if unknown:
        raise MinicompError(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    usable, notes = available_peers() if peers else ([], [])
    results = []
    with BusyCore() as busy:
        for name in names or list(WORKLOADS):
            results.append(bench_under_load(WORKLOADS[name], size, target, busy, min_blocks, usable))
            print(f"  {name}: done", flush=True)
    print(f"\nminicomp bench --under-load: {size} sizes, target {target}, on {machine_description()}; "
          f"busy process on core {busy.core}" + "".join(f"; {note}" for note in notes))
    print(format_load_table(results))
    return results


# ----------------------------------------------------------------------------------------------
# Where threads start to pay: the measurement behind ``schedules.cpu.work.PARALLEL_MIN_WORK``
# ----------------------------------------------------------------------------------------------

#: kernel kinds timed by ``measure_parallel_threshold``: name -> (function, shape for n elements)
THRESHOLD_KERNELS = {
    "add": (lambda x: x + 1.0, lambda n: (n // 256, 256)),
    "gelu": (lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x * x * x))),
             lambda n: (n // 256, 256)),
    "softmax rows": (lambda x: np.exp(x - x.max(axis=-1, keepdims=True))
                     / np.exp(x - x.max(axis=-1, keepdims=True)).sum(axis=-1, keepdims=True),
                     lambda n: (n // 256, 256)),
    "column sum": (lambda x: x.sum(axis=0), lambda n: (n // 256, 256)),
}


def _compiled_with_threshold(fn, x, threshold: int):
    """``fn`` compiled with ``PARALLEL_MIN_WORK = threshold`` (0: always parallel, huge: never)."""
    from . import jit
    from .schedules.cpu import work

    saved = work.PARALLEL_MIN_WORK
    work.PARALLEL_MIN_WORK = threshold
    try:
        compiled = jit(fn)
        compiled(x)
    finally:
        work.PARALLEL_MIN_WORK = saved
    return compiled


def measure_parallel_threshold(sizes=tuple(1 << k for k in range(10, 22)), calls: int = 200) -> dict:
    """Per kernel kind and size (elements): (serial ms, parallel ms), medians of ``calls``.

    Each size is compiled twice, one kernel on one thread and on all, and both are timed
    interleaved. The crossover (the smallest size from which parallel is faster at every larger
    size) is where ``PARALLEL_MIN_WORK`` belongs.
    """
    table = {}
    rng = np.random.default_rng(0)
    for kind, (fn, shape_of) in THRESHOLD_KERNELS.items():
        for n in sizes:
            x = rng.standard_normal(shape_of(n)).astype(np.float32)
            serial = _compiled_with_threshold(fn, x, 1 << 62)
            parallel = _compiled_with_threshold(fn, x, 0)
            times = {"serial": [], "parallel": []}
            for _ in range(calls // 10):
                for name, f in (("serial", serial), ("parallel", parallel)):
                    f(x)
                    times[name] += [_time_once(lambda: f(x)) for _ in range(10)]
            table[(kind, n)] = (statistics.median(times["serial"]), statistics.median(times["parallel"]))
    return table


def crossover(table: dict, kind: str) -> int | None:
    """The smallest size from which the parallel kernel of ``kind`` is faster at every size."""
    sizes = sorted(n for k, n in table if k == kind)
    faster = [n for n in sizes if table[(kind, n)][1] < table[(kind, n)][0]]
    return next((n for n in sizes if all(m in faster for m in sizes if m >= n)), None)


def run_parallel_threshold() -> dict:
    """Print serial vs parallel times per kernel kind and size, and each kind's crossover."""
    from .schedules.cpu.work import PARALLEL_MIN_WORK

    table = measure_parallel_threshold()
    print(f"serial vs parallel kernels on {machine_description()} (medians, ms)")
    print(f"{'kernel':<14} {'elements':>9} {'serial':>9} {'parallel':>9} {'speed-up':>9}")
    for (kind, n), (serial, parallel) in table.items():
        print(f"{kind:<14} {n:>9} {serial:>9.4f} {parallel:>9.4f} {serial / parallel:>9.2f}")
    for kind in THRESHOLD_KERNELS:
        print(f"{kind}: parallel pays from {crossover(table, kind)} elements")
    print(f"PARALLEL_MIN_WORK now: {PARALLEL_MIN_WORK}")
    return table
