"""``minicomp bench --target cuda``: the workloads on an NVIDIA GPU, timed against torch.

Method (BENCHMARKS.md, GPU): the inputs are made once at the GPU sizes and put on the device as
torch tensors; minicomp reads them in place (``__cuda_array_interface__``), so no copy between
host and device is timed. Every implementation is checked against torch eager (float32, TF32
off) before it is timed. Then the implementations are timed interleaved: each round times a
block of calls of each (at least 5, and at least about 5 ms) with CUDA events on the current
stream, in an order that rotates from round to round, and the median per call over all rounds
is reported. One call is queued before a block's start event, so the block starts on a busy
GPU; host time between launches counts: a program whose launches cost more than its kernels
shows it.

Peers, all from the same run: torch eager, ``torch.compile`` (default mode) and, for attention,
``scaled_dot_product_attention``. Ceilings, measured first: the device-to-device copy bandwidth
(a tensor copy, bytes read plus written) and cuBLAS's float32 rate (a 4096³ matmul, TF32 off).
Each workload's row gives its bandwidth as a fraction of the copy's (minimum bytes: inputs read
and outputs written once) and its FLOP rate as a fraction of cuBLAS's.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import MinicompError
from .testing import assert_close
from .workloads import WORKLOADS, Workload

CALLS_PER_BLOCK = 5   # at least this many calls between two events ...
BLOCK_MS = 5.0        # ... and enough for a block of about this long (short kernels: more calls)


@dataclass(frozen=True)
class GpuCeilings:
    """The GPU's measured ceilings: copy bandwidth (GB/s) and cuBLAS float32 rate (TFLOP/s)."""

    device: str
    copy_gbs: float
    cublas_tflops: float

    def __str__(self) -> str:
        return f"{self.device}: copy {self.copy_gbs:.0f} GB/s, cuBLAS fp32 {self.cublas_tflops:.1f} TFLOP/s (TF32 off)"


@dataclass
class GpuResult:
    """One workload's medians (ms per call) by implementation, and its cost."""

    workload: str
    shapes: str
    compile_ms: float
    median_ms: dict[str, float] = field(default_factory=dict)
    spread_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # 10th and 90th percentiles
    rounds: int = 0
    flops: int = 0
    min_bytes: int = 0

    def ratio(self, peer: str) -> float:
        """minicomp's median / ``peer``'s (below 1: minicomp is faster)."""
        return self.median_ms["minicomp"] / self.median_ms[peer]

    def of_copy(self, ceilings: GpuCeilings) -> float:
        """minicomp's bandwidth as a fraction of the device-to-device copy's."""
        return self.min_bytes / (self.median_ms["minicomp"] * 1e-3) / 1e9 / ceilings.copy_gbs

    def of_cublas(self, ceilings: GpuCeilings) -> float:
        """minicomp's FLOP rate as a fraction of cuBLAS's float32 rate."""
        return self.flops / (self.median_ms["minicomp"] * 1e-3) / 1e12 / ceilings.cublas_tflops


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MinicompError("minicomp bench --target cuda times against torch on the GPU: install torch") from exc
    if not torch.cuda.is_available():
        raise MinicompError("minicomp bench --target cuda needs an NVIDIA GPU: torch sees none")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def event_ms(torch, fn: Callable, calls: int) -> float:
    """Milliseconds per call of ``fn`` over ``calls`` calls, between two CUDA events.

    One call is queued before the start event, so that the window opens on a busy GPU: the
    host's time to its first launch (idle GPU before the first kernel, tens of microseconds
    against kernels of a third of a millisecond) is not timed, while host time between the
    launches inside the window still is."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def calls_per_block(torch, fn: Callable) -> int:
    """How many calls of ``fn`` one timed block holds: ``CALLS_PER_BLOCK``, or more where that
    many last less than ``BLOCK_MS``, so that the events' own cost and jitter (microseconds)
    stay small next to the block."""
    ms = event_ms(torch, fn, CALLS_PER_BLOCK)
    return max(CALLS_PER_BLOCK, min(200, math.ceil(BLOCK_MS / max(ms, 1e-3))))


def measure_gpu_ceilings(torch) -> GpuCeilings:
    """Copy bandwidth (a 1 GiB float32 tensor copied on the device) and cuBLAS float32 4096³."""
    src = torch.ones(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_ms = statistics.median(event_ms(torch, lambda: dst.copy_(src), 5) for _ in range(5))
    a, b = torch.randn(4096, 4096, device="cuda"), torch.randn(4096, 4096, device="cuda")
    a @ b
    gemm_ms = statistics.median(event_ms(torch, lambda: a @ b, 5) for _ in range(5))
    return GpuCeilings(torch.cuda.get_device_name(), 2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9,
                       2 * 4096**3 / (gemm_ms * 1e-3) / 1e12)


def peer_functions(torch, workload: Workload, tensors: list) -> dict[str, Callable]:
    """torch eager, torch.compile and (attention) scaled_dot_product_attention on ``tensors``."""
    from .peers import TORCH_FUNCTIONS

    body = TORCH_FUNCTIONS.get(workload.name)
    if body is None:
        return {}
    compiled = torch.compile(body)
    peers = {"torch eager": lambda: body(torch, *tensors), "torch.compile": lambda: compiled(torch, *tensors)}
    if workload.name == "attention":
        sdpa = torch.nn.functional.scaled_dot_product_attention
        peers["sdpa"] = lambda: sdpa(*tensors)
    return peers


def _as_numpy(value) -> np.ndarray:
    """A result on the device (GPUArray, torch tensor) or the host, as a NumPy array."""
    if hasattr(value, "get"):
        return value.get()
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def bench_gpu_workload(torch, workload: Workload, min_rounds: int) -> GpuResult:
    """Compile, check and time one workload at its GPU size against the torch peers."""
    from . import jit
    from .bench import workload_cost

    host = workload.inputs("gpu")
    tensors = [torch.from_numpy(a).cuda() for a in host]
    compiled = jit(workload.fn, target="cuda")
    start = time.perf_counter()
    compiled(*tensors)
    torch.cuda.synchronize()
    compile_ms = (time.perf_counter() - start) * 1e3
    from .peers import TORCH_FUNCTIONS

    expected = TORCH_FUNCTIONS[workload.name](torch, *tensors).cpu().numpy()
    assert_close(_as_numpy(compiled(*tensors)), expected)
    calls = {"minicomp": lambda: compiled(*tensors)} | peer_functions(torch, workload, tensors)
    for name, fn in calls.items():
        if name != "minicomp":
            result = fn()  # also compiles torch.compile's version
            assert_close(_as_numpy(result[0] if isinstance(result, tuple) else result), expected)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    per_block = {name: calls_per_block(torch, fn) for name, fn in calls.items()}
    for round_ in range(min_rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(event_ms(torch, calls[name], per_block[name]))
    flops, nbytes = workload_cost(workload, host)
    shapes = " ".join("x".join(map(str, s)) for s in workload.shapes["gpu"].values())
    return GpuResult(workload.name, shapes, compile_ms, {n: statistics.median(t) for n, t in times.items()},
                     {n: (float(np.percentile(t, 10)), float(np.percentile(t, 90))) for n, t in times.items()},
                     min_rounds, flops, nbytes)


def format_gpu_table(results: list[GpuResult], ceilings: GpuCeilings) -> str:
    """The report: ms per call (median [p10-p90]), minicomp's ratio to each peer, and the
    fractions of the copy bandwidth and of cuBLAS's rate."""
    peers = ["torch eager", "torch.compile", "sdpa"]
    rows = [f"{'workload':<14}{'minicomp ms':>22}" + "".join(f"{p + ' ms':>18}" for p in peers)
            + "".join(f"{'/ ' + p:>17}" for p in peers) + f"{'% copy BW':>11}{'% cuBLAS':>10}"]
    for r in results:
        low, high = r.spread_ms["minicomp"]
        cells = [f"{r.workload:<14}", f"{r.median_ms['minicomp']:.3f} [{low:.3f}-{high:.3f}]".rjust(22)]
        cells += [f"{r.median_ms[p]:18.3f}" if p in r.median_ms else f"{'-':>18}" for p in peers]
        cells += [f"{r.ratio(p):17.2f}" if p in r.median_ms else f"{'-':>17}" for p in peers]
        cells += [f"{100 * r.of_copy(ceilings):10.1f}%", f"{100 * r.of_cublas(ceilings):9.0f}%"]
        rows.append("".join(cells))
    return "\n".join(rows)


def run_cuda_bench(names: list[str] | None = None, min_rounds: int = 10, as_json: bool = False) -> list[GpuResult]:
    """Benchmark the named workloads (default: all nine) at GPU sizes; print the report or JSON."""
    unknown = set(names or []) - set(WORKLOADS)
    if unknown:
        raise MinicompError(f"unknown workload(s) {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    torch = _torch()
    ceilings = measure_gpu_ceilings(torch)
    results = []
    for name in names or list(WORKLOADS):
        results.append(bench_gpu_workload(torch, WORKLOADS[name], min_rounds))
        if not as_json:
            print(f"  {name}: done", flush=True)
    if as_json:
        print(json.dumps({"ceilings": asdict(ceilings), "results": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"\nminicomp bench: gpu sizes, target cuda, on {ceilings}")
        print(format_gpu_table(results, ceilings))
    return results
