"""``Graph.verify``: it accepts sound graphs and explains each way a graph can be broken.

Every broken graph here is broken behind the API (through ``graph.nx`` or by assigning node
fields), the way a buggy pass would break it; each test checks the message says what is wrong
and how to fix it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from minicomp import Graph, TensorType
from minicomp.errors import GraphError
from minicomp.ir import verify as verify_module
from minicomp.passes.pipeline import (DEFAULT_PIPELINE, PASSES, pipeline_names, register_pass,
                                      run_pipeline)
from minicomp.testing.graphs import random_graphs


def small_graph():
    """``out = sum(exp(a) + b)`` with named nodes."""
    g = Graph("small")
    a = g.add_input("a", TensorType((2, 3), "f32"))
    b = g.add_input("b", TensorType((3,), "f32"))
    e = g.add_op("exp", [a], name="e")
    s = g.add_op("add", [e, b], name="s")
    out = g.add_op("sum", [s], {"axes": -1}, name="out")
    g.set_outputs([out])
    return g, a, b, e, s, out


def broken(g, match):
    """The full and the incremental check (see ``minicomp.ir.verify``) both find the damage."""
    messages = []
    for incremental in (False, True):
        with pytest.raises(GraphError, match=match) as info:
            g.verify(incremental=incremental)
        assert "graph 'small' failed verification" in str(info.value)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    return messages[0]


def test_sound_graph_passes():
    g = small_graph()[0]
    assert g.verify() is g


def test_removed_edge_leaves_an_operand_gap():
    g, a, b, e, s, out = small_graph()
    g.nx.remove_edge(e, s, key=0)
    broken(g, r"%s \(add\): operand indices \[1\] are not 0\.\.0; use Graph\.set_operand")


def test_extra_edge_is_an_extra_operand():
    g, a, b, e, s, out = small_graph()
    g.nx.add_edge(a, s, key=2)
    broken(g, r"%s \(add\): has 3 operand\(s\) but add takes 2")


def test_wrong_stored_type():
    g, a, b, e, s, out = small_graph()
    out.type = TensorType((5,), "f32")
    broken(g, r"%out \(sum\): stored type f32\[5\] but its operands give f32\[2\]; "
              r"a rewrite changed an operand's type")


def test_operands_that_no_longer_fit():
    g, a, b, e, s, out = small_graph()
    b.type = TensorType((4,), "f32")
    broken(g, r"%s \(add\): operands f32\[2,3\], f32\[4\] no longer fit the op: .*broadcast")


def test_non_canonical_attributes():
    g, a, b, e, s, out = small_graph()
    out.attrs = {"axes": -1, "keepdims": False}
    broken(g, r"%out \(sum\): attributes .*'axes': -1.* are not canonical "
              r"\(expected .*'axes': \(1,\).*\); create nodes through Graph\.add_op")


def test_cycle():
    g, a, b, e, s, out = small_graph()
    neg = g.add_op("neg", [s], name="n")
    g.nx.remove_edge(e, s, key=0)
    g.nx.add_edge(neg, s, key=0)  # s = add(neg(s), b): same types, but a cycle
    neg.type = s.type
    broken(g, r"cycle through (%s -> %n|%n -> %s); a node cannot depend on itself")


def test_input_missing_from_graph_inputs():
    g, a, b, e, s, out = small_graph()
    g.inputs.remove(b)
    broken(g, r"graph\.inputs does not list each input node exactly once; "
              r"add inputs with Graph\.add_input")


def test_input_listed_twice():
    g, a, *_ = small_graph()
    g.inputs.append(a)
    broken(g, r"graph\.inputs does not list each input node exactly once")


def test_output_erased_behind_the_api():
    g, a, b, e, s, out = small_graph()
    g.nx.remove_node(out)
    broken(g, r"output %out is not a node of the graph \(was it erased\?\)")


def test_no_outputs():
    g = small_graph()[0]
    g.outputs = []
    broken(g, r"graph has no outputs; call Graph\.set_outputs")


def test_duplicate_names():
    g, a, b, e, s, out = small_graph()
    s.name = "e"
    broken(g, r"duplicate node names \['e'\]; names must be unique")


def test_unknown_op():
    g, a, b, e, s, out = small_graph()
    e.op = "frobnicate"
    broken(g, r"%e \(frobnicate\): unknown op 'frobnicate'; register it in minicomp\.ir\.ops")


def test_operand_from_another_graph():
    g, a, b, e, s, out = small_graph()
    other = Graph("other").add_input("a", a.type)
    g.nx.remove_edge(a, e, key=0)
    g.nx.add_edge(other, e, key=0)
    broken(g, r"%e \(exp\): operand %a \(input\) belongs to another graph")


def test_every_problem_is_reported_at_once():
    g, a, b, e, s, out = small_graph()
    e.op = "frobnicate"
    s.name = "out"
    g.outputs = []
    message = broken(g, "unknown op")
    assert "duplicate node names" in message and "no outputs" in message
    assert message.count("\n  - ") == 3


def test_changed_constant_is_not_canonical():
    g = Graph("small")
    c = g.add_constant(np.arange(3, dtype=np.float32), name="c")
    g.set_outputs([c])
    c.attrs = {"value": [0.0, 1.0, 2.0]}  # a list, not the read-only array add_op stores
    broken(g, r"%c \(constant\): attributes .* are not canonical")


@given(random_graphs())
def test_random_graphs_verify(gen):
    assert gen.graph.verify() is gen.graph
    assert gen.graph.copy().verify().to_text(None) == gen.graph.to_text(None)


# -- incremental verification: the shape and dtype rules re-run only where something changed ----


@pytest.fixture
def rule_runs(monkeypatch):
    """Counts how many nodes ``verify`` runs the op table's rules on."""
    count = [0]
    fill_attrs = verify_module.fill_attrs

    def counting_fill_attrs(*args):
        count[0] += 1
        return fill_attrs(*args)

    monkeypatch.setattr(verify_module, "fill_attrs", counting_fill_attrs)
    return count


def test_incremental_verify_rechecks_only_what_changed(rule_runs):
    g, a, b, e, s, out = small_graph()
    g.verify(incremental=True)
    assert rule_runs[0] == 0  # add_input and add_op checked every node as they made it
    g.verify()  # the default re-derives every node
    assert rule_runs[0] == len(g)
    rule_runs[0] = 0
    out.type = TensorType((2,), "f32")  # an equal type: the same check, nothing to re-run
    out.attrs = dict(out.attrs)  # a new dict (equal, but it could have been anything): re-run
    g.verify(incremental=True)
    assert rule_runs[0] == 1


def test_incremental_verify_sees_an_attribute_replaced_in_place():
    g, a, b, e, s, out = small_graph()
    g.verify()
    out.attrs["keepdims"] = True  # the same dict, a new value
    broken(g, r"%out \(sum\): stored type f32\[2\] but its operands give f32\[2,1\]")


def test_incremental_verify_sees_an_operand_type_change():
    g, a, b, e, s, out = small_graph()
    g.verify()
    e.type = TensorType((2, 3), "f64")  # e is now inconsistent, and so is its user s
    message = broken(g, r"%e \(exp\): stored type f64\[2,3\]")
    assert "%s (add): stored type f32[2,3] but its operands give f64[2,3]" in message


def test_copy_of_a_sound_graph_needs_no_rechecks(rule_runs):
    g = small_graph()[0]
    g.verify()
    rule_runs[0] = 0
    g.copy().verify(incremental=True)
    assert rule_runs[0] == 0


@pytest.fixture
def type_breaking_pass():
    """A pass that changes a stored type behind the API, registered for one test."""
    def break_a_type(graph):
        graph.op_nodes()[-1].type = TensorType((7,), "f32")
        return graph

    pipeline_names()  # load the real passes first, so that the saved pipeline is complete
    saved_pipeline = list(DEFAULT_PIPELINE)
    register_pass("test_break_a_type", default=False)(break_a_type)
    try:
        yield "test_break_a_type"
    finally:
        PASSES.pop("test_break_a_type", None)
        DEFAULT_PIPELINE[:] = saved_pipeline


def test_pipeline_names_the_pass_that_broke_the_graph(type_breaking_pass):
    with pytest.raises(GraphError, match=r"(?s)pass 'test_break_a_type' left a broken graph:.*"
                                         r"%out \(sum\): stored type f32\[7\]"):
        run_pipeline(small_graph()[0], passes=["dce", type_breaking_pass])


@pytest.mark.parametrize("how", ["default", "argument", "environment"])
def test_pipeline_full_verification_on_request(how, rule_runs, monkeypatch):
    g = small_graph()[0]
    monkeypatch.delenv("MINICOMP_VERIFY", raising=False)
    if how == "environment":
        monkeypatch.setenv("MINICOMP_VERIFY", "full")
    run_pipeline(g, passes=["cse", "dce"], full_verify=True if how == "argument" else None)
    assert rule_runs[0] == (0 if how == "default" else 2 * len(g))  # after each of the 2 passes
