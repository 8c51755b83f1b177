"""Every combination of the default pipeline's passes keeps random graphs' results.

A pass may rely on another having run first (fusion after the cleanups, memory planning after
fusion), but the pipeline lets any pass be switched off (``jit(disable=[...])``, CLI
``--disable``), so every subset must still compile to the same results. For each of the 2^n
subsets of ``DEFAULT_PIPELINE`` (in pipeline order), two random graphs run through the
interpreter after those passes and must match their NumPy twins, and so does one of the nine
workloads at "tiny" size (float32 or float64, in turn): random graphs seldom hold the row,
epilogue and attention patterns that the workloads are made of. A deterministic sample of the
subsets also goes through the C target.

The random graphs come from one pool drawn once per process with a fixed seed (derandomised
hypothesis), and subset ``i`` takes graphs ``2i`` and ``2i + 1`` of it (modulo its size), so
each graph meets several subsets and a failure names its subset and graph index. Discontinuous
ops (comparisons, floor, casts to int ...) are left out: passes that reorder floating-point
work (``algebraic``, fused kernels in C) may move a result by a rounding error, which those
ops would turn into a different answer.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import Phase, given, settings

import minicomp
from minicomp.passes.pipeline import DEFAULT_PIPELINE, _load_passes
from minicomp.passes.pipeline import run_pipeline
from minicomp.testing import assert_close
from minicomp.testing.graphs import DISCONTINUOUS_OPS, GENERATED_OPS, assert_outputs_close, random_graphs
from minicomp.workloads import WORKLOADS

_load_passes()
PASSES = list(DEFAULT_PIPELINE)
SUBSETS = [list(c) for r in range(len(PASSES) + 1) for c in itertools.combinations(PASSES, r)]
#: every C_EVERY-th subset (and the full pipeline) also runs through C
C_EVERY = 11
C_SUBSETS = sorted({i for i in range(0, len(SUBSETS), C_EVERY)} | {len(SUBSETS) - 1})
POOL_SIZE = 64
CONTINUOUS = GENERATED_OPS - DISCONTINUOUS_OPS


def _subset_id(subset: list[str]) -> str:
    return "+".join(subset) or "no-passes"


@lru_cache(maxsize=None)
def pool(dtypes: tuple[str, ...] | None = None) -> list:
    """Random graphs (``GeneratedGraph``), the same ones in every run and every process."""
    graphs = []
    strategy = random_graphs(max_nodes=16, allow_ops=CONTINUOUS) if dtypes is None else \
        random_graphs(max_nodes=10, dtypes=dtypes, allow_ops=CONTINUOUS)

    @settings(max_examples=POOL_SIZE, derandomize=True, database=None, phases=[Phase.generate],
              deadline=None)
    @given(strategy)
    def collect(gen):
        graphs.append(gen)

    collect()
    assert len(graphs) >= POOL_SIZE // 2
    return graphs


WORKLOAD_CASES = [(name, dtype) for name in WORKLOADS for dtype in (np.float32, np.float64)]


@lru_cache(maxsize=None)
def workload_case(index: int):
    """(graph, inputs, expected outputs) of workload case ``index`` (cycled)."""
    name, dtype = WORKLOAD_CASES[index % len(WORKLOAD_CASES)]
    workload = WORKLOADS[name]
    inputs = workload.inputs("tiny", dtype=dtype, seed=index)
    return minicomp.trace(workload.fn, *inputs), inputs, [workload.fn(*inputs)]


def test_every_subset_is_listed():
    assert len(SUBSETS) == 2 ** len(PASSES)
    assert len({_subset_id(s) for s in SUBSETS}) == len(SUBSETS)
    assert ["fusion" in PASSES, "memory_plan" in PASSES] == [True, True]


def test_the_pool_gives_the_passes_work():
    patterns = set()
    for gen in pool():
        optimised, _ = run_pipeline(gen.graph)
        patterns |= {n.attrs["pattern"] for n in optimised.op_nodes() if n.op == "fused"}
    assert "elemwise" in patterns, patterns
    for index in range(len(WORKLOAD_CASES)):
        optimised, _ = run_pipeline(workload_case(index)[0])
        patterns |= {n.attrs["pattern"] for n in optimised.op_nodes() if n.op == "fused"}
    assert patterns == {"elemwise", "reduce", "row", "epilogue", "attention"}, patterns


@pytest.mark.parametrize("index", range(len(SUBSETS)), ids=[_subset_id(s) for s in SUBSETS])
def test_subset_through_the_interpreter(index):
    subset, graphs = SUBSETS[index], pool()
    for k in (2 * index, 2 * index + 1):
        gen = graphs[k % len(graphs)]
        optimised, _ = run_pipeline(gen.graph, subset)
        actual = minicomp.interpret(optimised, *gen.inputs)
        try:
            assert_close(actual, gen.expected())
        except AssertionError as exc:
            raise AssertionError(f"passes {subset} on pool graph {k % len(graphs)}:\n{gen!r}\n"
                                 f"after the passes:\n{optimised}\n{exc}") from None
    graph, inputs, expected = workload_case(index)
    optimised, _ = run_pipeline(graph, subset)
    assert_close(minicomp.interpret(optimised, *inputs), expected)


@pytest.mark.parametrize("index", C_SUBSETS, ids=[_subset_id(SUBSETS[i]) for i in C_SUBSETS])
def test_subset_through_c(index):
    subset, graphs = SUBSETS[index], pool(("f32", "f64", "i32"))
    gen = graphs[index % len(graphs)]
    actual = minicomp.compile(gen.graph, target="c", passes=subset)(*gen.inputs)
    assert_outputs_close(actual, gen.expected(), gen.graph)
