"""Memory planning (``minicomp.passes.memory``): liveness, reuse, in place, and the C that uses it.

* **Hand-built graphs**: a chain of 10 elementwise ops needs 2 buffers, 1 when run in place; a
  diamond keeps both branches alive at once; graph outputs, inputs and constants are never
  planned; reductions, matmul, transposes, broadcast operands and dtype changes never run in
  place; a ``fused`` node runs in place only when its body is purely elementwise.
* **Random graphs** (property): intervals checked against offsets: no two values live at the
  same time share a byte, except an in-place pair; lowering uses exactly the plan's offsets
  and size; the kernels whose parameters share bytes are exactly the in-place ones. With the
  pass on and off, the interpreter and the C target give the same results.
* **Workloads**: the nine at "tiny" size give the same results with and without the plan
  (with and without fusion); the plan strictly lowers the workspace of ``block`` and
  ``layernorm``; the generated C has no ``restrict`` on aliased parameters and keeps it on
  every other one.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp
from minicomp import Graph, TensorType
from minicomp.lower.program import lower
from minicomp.passes.memory import ALIGNMENT
from minicomp.passes.memory import (live_intervals, may_run_in_place, memory_plan,
                                    memory_report)
from minicomp.passes.pipeline import pipeline_names, run_pipeline
from minicomp.testing import assert_close
from minicomp.testing.graphs import assert_outputs_close, random_graphs
from minicomp.workloads import WORKLOADS

N = 1000  # float32: 4000 bytes, not a multiple of the 64-byte alignment
UNARY = ("exp", "tanh", "sin", "cos", "neg")


def aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def chain(length: int = 10) -> Graph:
    """``x -> op1 -> op2 -> ... -> op<length>``: the last op is the output."""
    g = Graph("chain")
    v = g.add_input("x", TensorType((N,), "f32"))
    for i in range(length):
        v = g.add_op(UNARY[i % len(UNARY)], [v])
    g.set_outputs([v])
    return g


def diamond() -> Graph:
    """``a = exp(x); b = sin(a); c = cos(a); d = b + c``: b and c are live together."""
    g = Graph("diamond")
    x = g.add_input("x", TensorType((N,), "f32"))
    a = g.add_op("exp", [x], name="a")
    b = g.add_op("sin", [a], name="b")
    c = g.add_op("cos", [a], name="c")
    g.set_outputs([g.add_op("add", [b, c], name="d")])
    return g


def storage(g: Graph) -> dict[str, tuple[int, int]]:
    return {n.name: n.meta["storage"] for n in g.op_nodes() if "storage" in n.meta}


def disjoint(r1: tuple[int, int], r2: tuple[int, int]) -> bool:
    (o1, n1), (o2, n2) = r1, r2
    return o1 + n1 <= o2 or o2 + n2 <= o1


# ----------------------------------------------------------------------------------------------
# Hand-built graphs
# ----------------------------------------------------------------------------------------------


def test_chain_of_ten_elementwise_ops_needs_two_buffers():
    g = memory_plan(chain(), in_place=False)
    offsets = [offset for offset, _ in storage(g).values()]
    assert len(offsets) == 9  # the tenth op is the output: the caller's array
    assert len(set(offsets)) == 2
    assert all(a != b for a, b in zip(offsets, offsets[1:]))  # a value and its reader differ
    report = memory_report(g)
    assert (report.slots, report.in_place) == (2, 0)
    assert report.unplanned_bytes == 8 * aligned(4 * N) + 4 * N
    assert report.planned_bytes == aligned(4 * N) + 4 * N


def test_chain_of_ten_elementwise_ops_in_place_needs_one_buffer():
    g = memory_plan(chain())
    assert set(storage(g).values()) == {(0, 4 * N)}
    nodes = g.op_nodes()
    for prev, node in zip(nodes[:8], nodes[1:9]):
        assert node.meta["inplace_of"] == prev.name
    assert "inplace_of" not in nodes[0].meta  # its operand is the graph input
    report = memory_report(g)
    assert (report.values, report.slots, report.in_place) == (9, 1, 8)
    assert report.planned_bytes == report.peak_live_bytes == 4 * N


@pytest.mark.parametrize("in_place", [False, True])
def test_diamond_keeps_both_branches_alive(in_place):
    g = memory_plan(diamond(), in_place=in_place)
    s = storage(g)
    assert set(s) == {"a", "b", "c"}
    assert disjoint(s["b"], s["c"])  # both read by d
    assert disjoint(s["a"], s["b"])  # a is still read by c when b is written
    if in_place:
        assert g.find("c").meta["inplace_of"] == "a" and s["c"] == s["a"]
        assert memory_report(g).slots == 2
    else:
        assert disjoint(s["a"], s["c"])
        assert memory_report(g).slots == 3


def test_outputs_inputs_and_constants_are_not_planned():
    g = Graph("outs")
    x = g.add_input("x", TensorType((N,), "f32"))
    w = g.add_constant(np.arange(N, dtype=np.float32), name="w")
    a = g.add_op("mul", [x, w], name="a")
    b = g.add_op("exp", [a], name="b")  # an output that is also read
    c = g.add_op("tanh", [b], name="c")
    g.set_outputs([b, g.add_op("neg", [c], name="d")])
    g = memory_plan(g)
    assert set(storage(g)) == {"a", "c"}
    program = lower(g)
    assert sorted(buffer.name for buffer in program.workspace) == ["a", "c"]
    assert program.workspace_bytes == memory_report(g).planned_bytes == 4 * N


def _consumer_graph(op: str, operand_shape=(4, 4), attrs=None, other=None) -> Graph:
    """``p = exp(x); q = op(p, [other]); return neg(q)``: p dies at q, q is an intermediate."""
    g = Graph(op)
    x = g.add_input("x", TensorType(operand_shape, "f32"))
    p = g.add_op("exp", [x], name="p")
    operands = [p] + ([g.add_input("y", TensorType(other, "f32"))] if other else [])
    q = g.add_op(op, operands, attrs, name="q")
    g.set_outputs([g.add_op("neg", [q])])
    return g


@pytest.mark.parametrize("op, operand_shape, attrs, other", [
    ("sum", (4, 4), {"axes": ()}, None),  # a reduction, even one of the same shape
    ("matmul", (4, 4), None, (4, 4)),  # accumulates into its output while reading p
    ("transpose", (4, 4), None, None),  # out[i, j] reads p[j, i]
    ("add", (1, 4), None, (3, 4)),  # p is broadcast: read at three output rows
    ("cast", (4, 4), {"dtype": "i32"}, None),  # same size, other dtype
])
def test_never_in_place(op, operand_shape, attrs, other):
    g = memory_plan(_consumer_graph(op, operand_shape, attrs, other))
    assert "inplace_of" not in g.find("q").meta
    assert disjoint(g.find("p").meta["storage"], g.find("q").meta["storage"])


@pytest.mark.parametrize("op, other", [("tanh", None), ("add", (4,)), ("maximum", (4, 4))])
def test_elementwise_and_broadcast_ops_run_in_place(op, other):
    g = memory_plan(_consumer_graph(op, (4, 4), None, other))
    assert g.find("q").meta["inplace_of"] == "p"
    assert g.find("q").meta["storage"] == g.find("p").meta["storage"]


def _fused_graph(pattern: str, inner_ops: list[str]) -> Graph:
    """``p = exp(x); f = fused(p) {body: inner ops}; return neg(f)``."""
    body = Graph("body")
    v = body.add_input("i", TensorType((4, 4), "f32"))
    for op in inner_ops:
        v = body.add_op(op, [v])
    body.set_outputs([v])
    g = Graph("with_fused")
    p = g.add_op("exp", [g.add_input("x", TensorType((4, 4), "f32"))], name="p")
    f = g.add_op("fused", [p], {"body": body, "pattern": pattern}, name="f")
    g.set_outputs([g.add_op("neg", [f])])
    return g


@pytest.mark.parametrize("pattern, inner_ops, in_place", [
    ("elemwise", ["tanh", "neg"], True),
    ("elemwise", ["tanh", "transpose"], False),  # an injective op inside: reads p[j, i]
    ("reduce", ["tanh", "neg"], False),  # other patterns: conservatively never
    ("row", ["tanh", "neg"], False),
])
def test_fused_nodes_run_in_place_only_when_purely_elementwise(pattern, inner_ops, in_place):
    g = _fused_graph(pattern, inner_ops)
    assert may_run_in_place(g.find("f")) is in_place
    g = memory_plan(g)
    assert ("inplace_of" in g.find("f").meta) is in_place
    if pattern == "elemwise":  # the lowering of elemwise fused kernels runs it correctly
        x = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
        program = lower(g)
        assert bool(program.kernels[1].aliases) is in_place
        compiled = minicomp.compile(g, target="c", passes=[])
        assert_close(compiled(x)[0], minicomp.interpret(g, x)[0])


def test_the_plan_changes_only_meta():
    g = diamond()
    text = g.to_text(None)
    planned = memory_plan(g.copy())
    assert planned.to_text(None) == text
    x = np.linspace(-1, 1, N, dtype=np.float32)
    np.testing.assert_array_equal(minicomp.interpret(planned, x)[0], minicomp.interpret(g, x)[0])


def test_planning_twice_gives_the_same_plan():
    g = memory_plan(diamond())
    first = {n.name: dict(n.meta) for n in g.op_nodes()}
    memory_plan(g)
    assert {n.name: dict(n.meta) for n in g.op_nodes()} == first


def test_memory_plan_is_the_last_pass():
    assert pipeline_names()[-1] == "memory_plan"
    assert "memory_plan" not in pipeline_names(disable=["memory_plan"])


# ----------------------------------------------------------------------------------------------
# Random graphs
# ----------------------------------------------------------------------------------------------


def check_plan(g: Graph) -> None:
    """The plan against intervals computed here, independently of the pass."""
    order = g.op_nodes()
    step = {node: t for t, node in enumerate(order)}
    outputs = set(g.outputs)
    values = [n for n in order if n not in outputs]
    first = {v: step[v] for v in values}
    last = {v: max([step[v]] + [step[u] for u, _ in v.users]) for v in values}
    assert {v: (first[v], last[v]) for v in values} == live_intervals(g)
    for node in g.nodes():
        assert ("storage" in node.meta) is (node in first)
    for v in values:
        offset, nbytes = v.meta["storage"]
        assert offset % ALIGNMENT == 0 and nbytes == v.type.nbytes
        if "inplace_of" in v.meta:  # legal: an elementwise op over a same-typed dying operand
            donor = g.find(v.meta["inplace_of"])
            assert donor in first and last[donor] == first[v] and may_run_in_place(v)
            assert any(o is donor for o in v.operands)
            assert (donor.shape, donor.dtype) == (v.shape, v.dtype)
            assert donor.meta["storage"] == v.meta["storage"]
    for i, u in enumerate(values):
        for v in values[i + 1:]:
            if first[u] <= last[v] and first[v] <= last[u] and v.meta.get("inplace_of") != u.name:
                assert disjoint(u.meta["storage"], v.meta["storage"]), (u, v)


def check_lowering(g: Graph, unplanned: Graph) -> None:
    """Lowering places buffers at the plan's offsets; aliased parameters are the in-place ones."""
    report = memory_report(g)
    program = lower(g)
    assert program.workspace_bytes == report.planned_bytes
    assert lower(unplanned).workspace_bytes == report.unplanned_bytes
    assert report.peak_live_bytes <= report.planned_bytes <= report.unplanned_bytes
    nodes = g.op_nodes()  # one kernel per node, in this order, then copies of returned inputs
    buffer_of = {node: kernel.output for node, kernel in zip(nodes, program.kernels)}
    for node, kernel in zip(nodes, program.kernels):
        if "storage" in node.meta:
            assert program.workspace[kernel.output] == node.meta["storage"][0]
        else:
            assert kernel.output not in program.workspace
        donor = node.meta.get("inplace_of")
        assert set(kernel.aliases) == ({kernel.output, buffer_of[g.find(donor)]} if donor else set())
    assert not any(kernel.aliases for kernel in program.kernels[len(nodes):])


@pytest.mark.parametrize("in_place", [False, True])
@given(random_graphs(max_nodes=16))
def test_random_graphs_no_two_live_values_overlap(in_place, gen):
    g = memory_plan(gen.graph.copy(), in_place=in_place)
    check_plan(g)
    check_lowering(g, gen.graph)


@settings(max_examples=12)
@given(random_graphs(max_nodes=16))
def test_random_graphs_same_results_with_and_without_the_plan(gen):
    with_plan = minicomp.compile(gen.graph, target="c", passes=["memory_plan"])
    without = minicomp.compile(gen.graph, target="c", passes=[])
    reference = minicomp.interpret(gen.graph, *gen.inputs)
    planned = minicomp.interpret(memory_plan(gen.graph.copy()), *gen.inputs)
    planned_outputs = with_plan(*gen.inputs)
    for a, b, ref, ref_planned in zip(planned_outputs, without(*gen.inputs), reference, planned):
        np.testing.assert_array_equal(a, b)  # the same kernels, other addresses: same bits
        np.testing.assert_array_equal(ref_planned, ref)
    assert_outputs_close(planned_outputs, reference, gen.graph)


# ----------------------------------------------------------------------------------------------
# Workloads and generated C
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workloads_same_results_with_and_without_the_plan(name):
    w = WORKLOADS[name]
    args = w.inputs("tiny")
    expected = w.fn(*args)
    results = {}
    for disable in [(), ("fusion",), ("memory_plan",), ("fusion", "memory_plan")]:
        results[disable] = minicomp.jit(w.fn, target="c", disable=disable)(*args)
        assert_close(results[disable], expected)
    np.testing.assert_array_equal(results[()], results[("memory_plan",)])
    np.testing.assert_array_equal(results[("fusion",)], results[("fusion", "memory_plan")])


def workload_graph(name: str, size: str = "tiny", disable=()) -> Graph:
    w = WORKLOADS[name]
    types = [TensorType(shape, "f32") for shape in w.shapes[size].values()]
    graph, _ = run_pipeline(minicomp.trace(w.fn, *types), disable=disable)
    return graph


@pytest.mark.parametrize("name, disable", [
    ("block", ()), ("block", ("fusion",)), ("layernorm", ("fusion",)),  # fused layernorm: no intermediates
])
def test_plan_strictly_lowers_peak_bytes(name, disable):
    g = workload_graph(name, disable=disable)
    report = memory_report(g)
    assert report.planned_bytes < report.unplanned_bytes
    unplanned = workload_graph(name, disable=disable + ("memory_plan",))
    assert lower(g).workspace_bytes < lower(unplanned).workspace_bytes


def assert_restrict_only_where_not_aliased(inspection) -> None:
    """Every kernel parameter is ``restrict`` exactly when the kernel does not alias it."""
    for k in inspection.program.kernels:
        signature = re.search(rf"void k_{k.name}\((.*)\) {{", inspection.source).group(1)
        for param, buffer in zip(signature.split(", "), k.params):
            assert param.endswith("b_" + buffer.name)
            assert ("restrict" in param) is (buffer not in k.aliases), (k.name, param)


def test_generated_c_has_no_restrict_on_aliased_parameters():
    w = WORKLOADS["ew_chain"]
    inspection = minicomp.jit(w.fn, target="c", disable=["fusion"]).inspect(*w.inputs("tiny"))
    assert any(k.aliases for k in inspection.program.kernels)
    assert_restrict_only_where_not_aliased(inspection)


def two_heads(x, w, w2):
    m = x @ w  # read by two kernels: materialised; the second writes over it
    return np.tanh(m) @ w2, (np.sin(m) * 2) @ w2


def test_a_fused_kernel_in_place_through_the_default_pipeline():
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32) for s in [(8, 16), (16, 32), (32, 4)]]
    jitted = minicomp.jit(two_heads, target="c")
    assert_close(jitted(*args), [np.asarray(r) for r in two_heads(*args)])
    inspection = jitted.inspect(*args)
    in_place = [n for n in inspection.graph.op_nodes() if "inplace_of" in n.meta]
    assert [(n.op, n.attrs.get("pattern"), n.meta["inplace_of"]) for n in in_place] == [
        ("fused", "elemwise", "matmul")], "fusion changed: find another example of a fused in-place op"
    assert_restrict_only_where_not_aliased(inspection)
