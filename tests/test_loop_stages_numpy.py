"""Every workload's kernels, after each loop stage, run by the loop interpreter against NumPy.

For each of the nine workloads (``minicomp.workloads``) at a size the loop interpreter runs in
seconds (Python, ~30 us a multiply-add), the graph after the default passes goes through the
loop stages (``minicomp.stages``: ``lower``, ``schedule``, ``simplify_indices``); the program
after each one is run by ``minicomp.testing.loop_interpreter`` (parallel and vectorized loops
backwards, local buffers NaN-filled: an illegal schedule shows every time) and compared with
NumPy running the workload itself.

Two settings:

* ``as compiled``: the default thresholds, so what these sizes really compile to;
* ``every strategy``: the thresholds below which a CPU strategy is not worth it set to zero,
  so that at these small, awkward sizes (not multiples of any tile) every kernel gets what the
  benchmark sizes get: packed matmul panels with edge tiles, tiled attention, parallel loops.

The sizes are the workloads' ``tiny`` ones, except ``block``: its tiny size (128 wide) is two
million multiply-adds a run; here it is one head of 64 over 3 positions.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicomp
from minicomp.schedules.cpu import work
from minicomp.passes.pipeline import run_pipeline
from minicomp.schedules.cpu import packed_gemm
from minicomp.stages import LOOP_STAGES, loop_program
from minicomp.testing import assert_close
from minicomp.testing.backends import BACKENDS
from minicomp.workloads import WORKLOADS, random_argument


def _block(seq: int, dim: int) -> dict[str, tuple[int, ...]]:
    return {"x": (seq, dim), "ln1_g": (dim,), "ln1_b": (dim,), "w_qkv": (dim, 3 * dim), "b_qkv": (3 * dim,),
            "w_out": (dim, dim), "b_out": (dim,), "ln2_g": (dim,), "ln2_b": (dim,), "w_fc": (dim, 4 * dim),
            "b_fc": (4 * dim,), "w_proj": (4 * dim, dim), "b_proj": (dim,)}


SHAPES = {name: workload.shapes["tiny"] for name, workload in WORKLOADS.items()} | {"block": _block(3, 64)}


def arguments(name: str, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [random_argument(arg, shape, np.float32, rng) for arg, shape in SHAPES[name].items()]


@pytest.fixture(params=["as compiled", "every strategy"])
def thresholds(request, monkeypatch):
    """The strategies' size thresholds as they are, or all at zero (see the module docstring)."""
    if request.param == "every strategy":
        monkeypatch.setattr(work, "PARALLEL_MIN_WORK", 0)
        monkeypatch.setattr(packed_gemm, "MIN_WORK", 0)  # tiled attention reads it too
        monkeypatch.setattr(packed_gemm, "MIN_ROW_PANELS", 0)
    return request.param


@pytest.mark.parametrize("stage", LOOP_STAGES)
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_loop_stage_of_every_workload_matches_numpy(name, stage, thresholds, rng):
    workload = WORKLOADS[name]
    args = arguments(name, int(rng.integers(2**31)))
    graph, _ = run_pipeline(minicomp.trace(workload.fn, *args))
    program = loop_program(graph, stop_after=stage)
    assert_close(BACKENDS["loop_interpreter"].run(program, *args), [workload.fn(*args)])


def test_every_strategy_changes_the_programs(monkeypatch):
    """The ``every strategy`` setting does what it says: at these sizes it packs matmuls and
    marks loops parallel where ``as compiled`` does not (else the second setting tests nothing new)."""
    def shown(name):
        args = arguments(name, 0)
        return str(loop_program(run_pipeline(minicomp.trace(WORKLOADS[name].fn, *args))[0]))

    before = {name: shown(name) for name in ("matmul", "ew_chain")}
    monkeypatch.setattr(work, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(packed_gemm, "MIN_WORK", 0)
    assert "mc_gemm" not in before["matmul"] and "mc_gemm" in shown("matmul")
    assert "parallel for" not in before["ew_chain"] and "parallel for" in shown("ew_chain")
