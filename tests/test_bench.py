"""``minicomp bench``: ceilings, roofline floors, the peer registry, JSON and the roofline plot.

No test needs torch: the peer logic is tested with fake peers, and "torch not installed" by
hiding torch from ``sys.modules``.
"""

import json
import sys

import pytest

from minicomp import bench, peers
from minicomp.bench import Ceilings, Result, format_table, plot_roofline, roofline_floor_ms, run_bench
from minicomp.cli import main
from minicomp.errors import MinicompError
from minicomp.peers import Peer, Prepared, available_peers
from minicomp.workloads import WORKLOADS

FIXED = Ceilings(bandwidth_gbs=20.0, peak_gflops=100.0)
TORCH_PEERS = dict(peers.PEERS)  # the registry as shipped (torch eager, torch.compile)
MEASURE_CEILINGS = bench.measure_ceilings  # the real one; the fixture below patches it


def numpy_peer(name="fake"):
    """A peer that runs the NumPy function itself (so its results are exact)."""
    return Peer(name, lambda workload, args: Prepared(workload.fn, tuple(args), compile_ms=1.5))


@pytest.fixture(autouse=True)
def no_real_peers(monkeypatch):
    """Tests choose their peers; a locally installed torch is not timed unless asked for."""
    monkeypatch.setattr(peers, "PEERS", {})
    monkeypatch.setattr(bench, "measure_ceilings", lambda: FIXED)


def quick(names, **kwargs):
    return run_bench(names, size="tiny", min_rounds=2, min_seconds=0, ceilings=FIXED, **kwargs)


def test_ceilings_positive_and_plausible():
    ceilings = MEASURE_CEILINGS(copy_elements=1 << 23, n=512, repeats=3)  # smaller than a real run
    assert 0.5 < ceilings.bandwidth_gbs < 5000  # GB/s: a laptop to an HBM GPU host
    assert 0.5 < ceilings.peak_gflops < 200_000  # GFLOP/s
    assert "GB/s" in str(ceilings) and "GFLOP/s" in str(ceilings)


def test_roofline_floor_by_hand():
    m, k, n = 31, 17, 29  # matmul at size tiny: (31, 17) @ (17, 29), float32
    workload = WORKLOADS["matmul"]
    flops, nbytes = bench.workload_cost(workload, workload.inputs("tiny"))
    assert flops == 2 * m * n * k
    assert nbytes == 4 * (m * k + k * n + m * n)
    compute_ms, memory_ms = flops / 100e9 * 1e3, nbytes / 20e9 * 1e3
    assert roofline_floor_ms(flops, nbytes, FIXED) == pytest.approx(max(compute_ms, memory_ms))
    # memory bound: 1 GB at 20 GB/s = 50 ms; compute bound: 1 TFLOP at 100 GFLOP/s = 10 s
    assert roofline_floor_ms(1, 10**9, FIXED) == pytest.approx(50.0)
    assert roofline_floor_ms(10**12, 1, FIXED) == pytest.approx(10_000.0)


def test_fake_peer_is_a_column_with_its_ratio(monkeypatch, capsys):
    monkeypatch.setitem(peers.PEERS, "fake", numpy_peer())
    [result] = quick(["matmul"])
    assert set(result.median_ms) == {"numpy", "minicomp", "fake"}
    assert result.ratio("fake") == result.median_ms["minicomp"] / result.median_ms["fake"]
    assert result.peer_compile_ms == {"fake": 1.5}
    assert result.floor_ms == pytest.approx(roofline_floor_ms(result.flops, result.min_bytes, FIXED))
    assert 0 < result.of_floor == result.floor_ms / result.median_ms["minicomp"]
    out = capsys.readouterr().out
    assert "fake ms" in out and "floor ms" in out and "ceilings: copy 20.0 GB/s, sgemm 100.0 GFLOP/s" in out


def test_peer_without_a_version_leaves_a_gap(monkeypatch):
    only_softmax = Peer("partial", lambda w, a: Prepared(w.fn, tuple(a)) if w.name == "softmax" else None)
    monkeypatch.setitem(peers.PEERS, "partial", only_softmax)
    results = quick(["softmax", "matmul"])
    assert "partial" in results[0].median_ms and "partial" not in results[1].median_ms
    matmul_row = next(line for line in format_table(results).splitlines() if line.startswith("matmul"))
    assert " - " in matmul_row


def test_wrong_peer_fails_the_check(monkeypatch):
    monkeypatch.setitem(peers.PEERS, "wrong", Peer("wrong", lambda w, a: Prepared(lambda *x: w.fn(*x) + 1, tuple(a))))
    with pytest.raises(AssertionError):
        quick(["softmax"])


def test_json_has_ceilings_floors_and_peers(monkeypatch, capsys):
    monkeypatch.setitem(peers.PEERS, "fake", numpy_peer())
    assert main(["bench", "softmax", "layernorm", "--size", "tiny", "--rounds", "2", "--seconds", "0",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ceilings"] == {"bandwidth_gbs": 20.0, "peak_gflops": 100.0}
    assert report["peers"] == ["fake"] and report["notes"] == []
    for r in report["results"]:
        assert set(r["median_ms"]) == {"numpy", "minicomp", "fake"}
        assert r["flops"] > 0 and r["min_bytes"] > 0 and r["floor_ms"] > 0 and r["of_floor"] > 0
        assert r["peer_compile_ms"] == {"fake": 1.5}


def test_torch_not_installed(monkeypatch, capsys):
    monkeypatch.setattr(peers, "PEERS", dict(TORCH_PEERS))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert available_peers() == ([], ["torch not installed"])
    [result] = quick(["softmax"])
    assert set(result.median_ms) == {"numpy", "minicomp"}
    out = capsys.readouterr().out
    assert "torch not installed" in out and "torch eager" not in out and "torch.compile" not in out


def test_torch_peers_registered():
    assert list(TORCH_PEERS) == ["torch eager", "torch.compile"]
    assert all(p.requires == ("torch",) for p in TORCH_PEERS.values())
    assert set(peers.TORCH_FUNCTIONS) == set(WORKLOADS)


def _result() -> Result:
    return Result("matmul", "31x17 17x29", 1.0, {"numpy": 0.01, "minicomp": 0.02, "fake": 0.015},
                  3, flops=30566, min_bytes=7728, floor_ms=0.0004)


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MinicompError, match="pip install matplotlib"):
        plot_roofline([_result()], FIXED, str(tmp_path / "roof.png"))


def test_plot_writes_png(tmp_path):
    path = tmp_path / "roof.png"
    plot_roofline([_result()], FIXED, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_plot(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(peers.PEERS, "fake", numpy_peer())
    path = tmp_path / "roof.png"
    assert main(["bench", "softmax", "matmul", "--size", "tiny", "--rounds", "2", "--seconds", "0",
                 "--plot", str(path)]) == 0
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_bench_function_takes_numpys_scalars_for_the_0d_arrays_minicomp_returns(monkeypatch):
    """NumPy returns a loss as a NumPy scalar where minicomp returns a 0-d array: the same
    structure for ``bench FILE.py:FUNC`` (a training step's ``loss, (grads, ...)`` was refused)."""
    import numpy as np

    monkeypatch.setattr(bench, "measure_ceilings", lambda: Ceilings(10.0, 100.0))

    def loss_and_grads(x, w):
        return np.sum(x @ w) / 4, [x.T @ x]

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    assert isinstance(loss_and_grads(x, w)[0], np.generic)
    result = bench.bench_function("loss", loss_and_grads, [x, w], min_rounds=2, min_seconds=0.0)
    assert set(result.median_ms) == {"numpy", "minicomp"}


class FakeCudaTorch:
    """Just enough of torch.cuda for ``bench_cuda.event_ms``: a stream whose work is logged in
    order, and events that take the time of the work queued before them (1 ms a call)."""

    def __init__(self):
        self.log: list[str] = []
        torch = self

        class Event:
            def __init__(self, enable_timing):
                self.at = None

            def record(self):
                torch.log.append("event")
                self.at = torch.log.count("call")

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return float(other.at - self.at)

        self.cuda = type("cuda", (), {"Event": Event})

    def call(self):
        self.log.append("call")


def test_a_cuda_timing_block_starts_after_a_call_already_queued():
    from minicomp import bench_cuda

    torch = FakeCudaTorch()
    assert bench_cuda.event_ms(torch, torch.call, 3) == 1.0
    assert torch.log == ["call", "event", "call", "call", "call", "event"]
    # short calls get longer blocks (BLOCK_MS), long ones the minimum
    assert bench_cuda.calls_per_block(torch, torch.call) == max(bench_cuda.CALLS_PER_BLOCK, 5)


def test_the_gpu_table_keeps_its_columns_apart():
    from minicomp.bench_cuda import GpuCeilings, GpuResult, format_gpu_table

    result = GpuResult("layernorm", "32768x4096", 1.0, {"minicomp": 0.362, "torch eager": 0.53, "torch.compile": 0.36},
                       {"minicomp": (0.36, 0.37)}, 5, flops=0, min_bytes=2 * 32768 * 4096 * 4)
    header, row = format_gpu_table([result], GpuCeilings("GPU", 3000.0, 50.0)).splitlines()
    assert "ms torch" not in header and "ms/ " not in header  # each heading stands apart
    assert len(header) == len(row) and row.split()[-2:] == ["98.9%", "0%"]
