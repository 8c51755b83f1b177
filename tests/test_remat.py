"""Rematerialisation: the min-cut decision, its printed numbers, and unchanged results."""

import numpy as np
from hypothesis import given, settings

import minicomp
from minicomp.passes.pipeline import run_pipeline
from minicomp.passes.remat import BYTES_PER_FLOP, min_cut, plan_remat
from minicomp.testing import assert_close
from minicomp.testing.graphs import random_graphs

F32 = np.float32


def shared_exp(x, y):
    e = np.exp(x * 2.0)  # one cheap value, three kernels want it
    return e.sum(axis=0), e.max(axis=1), np.tanh(e) @ y


def args(n=64, m=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, m)).astype(F32), np.ones((m, 8), F32)


def test_cheap_shared_value_is_recomputed_in_each_consumer():
    graph = minicomp.trace(shared_exp, *args())
    (decision,) = plan_remat(graph)
    assert decision.value == "exp" and decision.consumers == 3
    assert decision.recomputed == ["exp", "mul"] and decision.stored == []
    store = 64 * 32 * 4 * (1 + 3)
    assert decision.store_bytes == store and decision.cut_cost < store
    assert "recompute exp, mul in each of 3 kernels" in str(decision)


def test_after_remat_and_fusion_every_consumer_computes_its_own_copy():
    graph, _ = run_pipeline(minicomp.trace(shared_exp, *args()), passes=["remat", "fusion"])
    kernels = [(n.op, n.attrs.get("pattern")) for n in graph.op_nodes()]
    assert kernels.count(("fused", "reduce")) == 2 and ("fused", "elemwise") in kernels
    assert not any(n.op == "exp" for n in graph.op_nodes())  # no exp kernel stores e any more


def test_an_expensive_value_is_stored():
    """With FLOPs made expensive, the cut stores the value instead."""
    graph = minicomp.trace(shared_exp, *args())
    value = graph.find("exp")
    nodes = {value, graph.find("mul")}
    cost, recomputed, stored = min_cut(value, nodes, 3)
    assert recomputed  # the default balance recomputes
    import minicomp.passes.remat as remat

    old = remat.BYTES_PER_FLOP
    try:
        remat.BYTES_PER_FLOP = 1000 * BYTES_PER_FLOP
        cost, recomputed, stored = min_cut(value, nodes, 3)
        assert not recomputed and stored == {value} and cost == value.type.nbytes * 4
    finally:
        remat.BYTES_PER_FLOP = old


def test_results_unchanged_through_c():
    x, y = args(33, 17)
    expected = list(shared_exp(x, y))
    for passes in (["remat", "fusion"], ["fusion"], []):
        assert_close(minicomp.compile(minicomp.trace(shared_exp, x, y), target="c", passes=passes)(x, y),
                     expected)


@settings(max_examples=60)
@given(random_graphs(max_nodes=14))
def test_random_graphs_same_with_remat_on_and_off(gen):
    graph, _ = run_pipeline(gen.graph, passes=["remat", "fusion"])
    assert_close(minicomp.interpret(graph, *gen.inputs), gen.expected())


def test_a_value_a_matmul_reads_directly_is_not_recomputed():
    """Fusion never inlines into a matmul's operand: a copy would be stored anyway."""
    def feeds_matmul(x, y):
        e = np.exp(x)
        return e.sum(axis=0), e @ y

    assert plan_remat(minicomp.trace(feeds_matmul, *args())) == []


def test_one_copy_per_consumer_kernel_not_per_use():
    def two_rows(x):
        e = np.exp(x)
        return e / e.sum(axis=1, keepdims=True), (e * e).max(axis=0)

    graph, _ = run_pipeline(minicomp.trace(two_rows, args()[0]), passes=["remat", "fusion"])
    for node in graph.op_nodes():
        assert node.op == "fused"
        assert sum(n.op == "exp" for n in node.attrs["body"].op_nodes()) == 1
    x = args()[0]
    assert_close(minicomp.compile(minicomp.trace(two_rows, x), target="c")(x), list(two_rows(x)))
