"""The Graph API: ordered operands, users, rewiring, erasing, order, copies and lookup."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given

import minicomp
from minicomp import Graph, TensorType
from minicomp.errors import GraphError, ShapeError
from minicomp.ir.graph import topological_order
from minicomp.testing.graphs import random_graphs

F32_3 = TensorType((3,), "f32")


def two_inputs():
    g = Graph("g")
    return g, g.add_input("a", F32_3), g.add_input("b", F32_3)


def test_x_times_x_is_two_ordered_uses():
    g, a, _ = two_inputs()
    sq = g.add_op("mul", [a, a])
    assert sq.operands == [a, a]
    assert a.users == [(sq, 0), (sq, 1)]
    assert g.nx.number_of_edges(a, sq) == 2


def test_operand_order_is_kept():
    g, a, b = two_inputs()
    ab, ba = g.add_op("sub", [a, b]), g.add_op("sub", [b, a])
    g.set_outputs([ab, ba])
    assert ab.operands == [a, b] and ba.operands == [b, a]
    x, y = np.array([5, 7, 9], np.float32), np.array([1, 2, 3], np.float32)
    got_ab, got_ba = minicomp.interpret(g, x, y)
    np.testing.assert_array_equal(got_ab, x - y)
    np.testing.assert_array_equal(got_ba, y - x)


def test_users_are_listed_in_creation_order_with_operand_index():
    g, a, b = two_inputs()
    first = g.add_op("add", [b, a])
    second = g.add_op("neg", [a])
    third = g.add_op("where", [g.add_op("gt", [a, b]), b, a])
    assert a.users == [(first, 1), (second, 0), (third.operands[0], 0), (third, 2)]
    assert second.users == []


def test_replace_all_uses_moves_operands_and_outputs():
    g, a, b = two_inputs()
    old = g.add_op("exp", [a])
    user = g.add_op("mul", [old, old])
    g.set_outputs([old, user, old])
    new = g.add_op("tanh", [b])
    old.replace_all_uses_with(new)
    assert user.operands == [new, new]
    assert g.outputs == [new, user, new]
    assert old.users == []
    g.erase(old)
    g.verify()


def test_replace_all_uses_refuses_a_type_change():
    g, a, _ = two_inputs()
    old = g.add_op("exp", [a])
    g.add_op("neg", [old])
    other = g.add_op("sum", [a])
    with pytest.raises(GraphError, match=r"types differ.*insert a cast"):
        g.replace_all_uses(old, other)
    assert len(old.users) == 1


def test_set_operand_changes_one_use():
    g, a, b = two_inputs()
    sq = g.add_op("mul", [a, a])
    g.set_operand(sq, 1, b)
    assert sq.operands == [a, b]
    assert a.users == [(sq, 0)] and b.users == [(sq, 1)]


def test_set_operand_refuses_a_type_change():
    g, a, _ = two_inputs()
    sq = g.add_op("mul", [a, a])
    with pytest.raises(GraphError, match=r"f32\[3\].*f32\[\].*types differ"):
        g.set_operand(sq, 0, g.add_constant(np.float32(2)))
    assert sq.operands == [a, a]


def test_erase_refuses_while_used():
    g, a, _ = two_inputs()
    e = g.add_op("exp", [a])
    g.add_op("neg", [e], name="user")
    with pytest.raises(GraphError, match=r"cannot erase %exp .*still used by %user"):
        g.erase(e)
    assert e in g.nx


def test_erase_refuses_an_output():
    g, a, _ = two_inputs()
    e = g.add_op("exp", [a])
    g.set_outputs([e])
    with pytest.raises(GraphError, match="graph output"):
        g.erase(e)


def test_erase_refuses_an_input():
    g, a, _ = two_inputs()
    with pytest.raises(GraphError, match="graph input"):
        g.erase(a)


def test_erase_removes_the_node_and_frees_its_name():
    g, a, _ = two_inputs()
    e = g.add_op("exp", [a])
    g.erase(e)
    assert e not in g.nx and a.users == []
    assert g.add_op("neg", [a], name="exp").name == "exp"


def test_names_are_made_unique_and_valid():
    g, a, _ = two_inputs()
    names = [g.add_op("neg", [a]).name for _ in range(3)]
    assert names == ["neg", "neg_1", "neg_2"]
    assert g.add_op("neg", [a], name="layer 1/out").name == "layer_1_out"


def test_topological_order_follows_creation_and_is_stable():
    g, a, b = two_inputs()
    first = g.add_op("exp", [a])
    second = g.add_op("neg", [b])
    assert g.nodes() == [a, b, first, second]
    g.set_operand(first, 0, second)  # first now depends on the later node
    assert g.nodes() == [a, b, second, first]
    assert g.nodes() == g.nodes()
    assert g.op_nodes() == [second, first]


def test_copy_is_independent():
    g, a, b = two_inputs()
    e = g.add_op("exp", [a], loc="m.py:1")
    e.meta["cost"] = 3
    g.set_outputs([g.add_op("add", [e, b])])
    text = g.to_text(None)

    c = g.copy()
    assert c.to_text(None) == text
    assert not set(c.nx) & set(g.nx)
    assert all(n.graph is c for n in c.nodes())
    c_exp = c.find("exp")
    assert c_exp.meta == {"cost": 3}
    c_exp.meta["cost"] = 4
    c_exp.replace_all_uses_with(c.find("b"))
    c.erase(c_exp)
    c.add_input("extra", F32_3)

    assert g.to_text(None) == text and e.meta == {"cost": 3}
    assert [n.name for n in g.inputs] == ["a", "b"]


def test_find_by_name():
    g, a, _ = two_inputs()
    e = g.add_op("exp", [a])
    assert g.find("exp") is e and g.find("%exp") is e and g.find("a") is a
    with pytest.raises(GraphError, match=r"no node named %nope in graph 'g'"):
        g.find("nope")


def test_add_op_checks_operands():
    g, a, _ = two_inputs()
    other = Graph("other").add_input("z", F32_3)
    with pytest.raises(GraphError, match="not a node of graph 'g'"):
        g.add_op("neg", [other])
    with pytest.raises(GraphError, match="add takes 2 operand"):
        g.add_op("add", [a])
    m = g.add_input("m", TensorType((4,), "f32"))
    with pytest.raises(ShapeError, match=r"add: .*\(3,\).*\(4,\).*f32\[3\], f32\[4\] \(at m.py:7\)"):
        g.add_op("add", [a, m], loc="m.py:7")
    assert len(g) == 3  # nothing was added by the failed calls


def test_set_outputs_allows_repeats_and_refuses_foreign_nodes():
    g, a, b = two_inputs()
    g.set_outputs([a, a, b])
    assert g.outputs == [a, a, b]
    with pytest.raises(GraphError, match="not a node of graph 'g'"):
        g.set_outputs([Graph("other").add_input("z", F32_3)])


def test_constants_are_copied_and_read_only():
    g = Graph()
    value = np.arange(3, dtype=np.float32)
    c = g.add_constant(value)
    value[0] = 99
    assert c.attrs["value"][0] == 0
    with pytest.raises(ValueError):
        c.attrs["value"][0] = 1


# -- caches: operand lists and the topological order stay right across every edit --------------


def edge_operands(g, node):
    """``node``'s operands read from the edges themselves, not from the graph's cache."""
    return [src for src, _, _ in sorted(g.nx.in_edges(node, keys=True), key=lambda e: e[2])]


def networkx_order(g):
    return list(nx.lexicographical_topological_sort(g.nx, key=lambda n: n.index))


def assert_caches_match_edges(g):
    assert g.nodes() == networkx_order(g)
    for node in g.nodes():
        assert node.operands == edge_operands(g, node)


def test_operand_cache_follows_every_edit():
    g, a, b = two_inputs()
    s = g.add_op("add", [a, b])
    m = g.add_op("mul", [s, s])
    assert m.operands == [s, s]
    n = g.add_op("neg", [a])
    g.set_operand(s, 1, n)
    assert s.operands == [a, n]
    sub = g.add_op("sub", [a, b])
    s.replace_all_uses_with(sub)
    assert m.operands == [sub, sub]
    g.erase(s)
    assert_caches_match_edges(g)
    m.operands.append(a)  # a fresh list each time: the cache cannot be changed through it
    assert m.operands == [sub, sub]


def test_verify_rebuilds_the_caches_after_edits_behind_the_api():
    g, a, b = two_inputs()
    e = g.add_op("exp", [a])
    f = g.add_op("neg", [b])
    s = g.add_op("add", [e, f])
    g.set_outputs([s])
    assert e.operands == [a] and g.nodes() == [a, b, e, f, s]
    g.nx.remove_edge(a, e, key=0)  # e now reads f: behind the API, so the caches are stale
    g.nx.add_edge(f, e, key=0)
    g.verify()
    assert e.operands == [f] and g.nodes() == [a, b, f, e, s]


@given(random_graphs())
def test_caches_match_the_edges_through_passes(gen):
    from minicomp.passes.cse import cse
    from minicomp.passes.dce import dce

    g = gen.graph
    assert_caches_match_edges(g)  # built op by op: the order was never recomputed
    g = dce(cse(g))  # set_operand, replace_all_uses and erase, without a verify in between
    assert_caches_match_edges(g)
    assert_caches_match_edges(g.copy())


@given(random_graphs())
def test_topological_order_is_networkx_lexicographical_order(gen):
    assert topological_order(gen.graph.nx) == networkx_order(gen.graph)


def test_topological_order_of_a_cycle_is_none():
    g, a, b = two_inputs()
    e = g.add_op("exp", [a])
    f = g.add_op("neg", [e])
    g.nx.remove_edge(a, e, key=0)
    g.nx.add_edge(f, e, key=0)
    assert topological_order(g.nx) is None
    with pytest.raises(GraphError, match="cycle through"):
        g.verify()
    with pytest.raises(GraphError, match="graph 'g' has a cycle"):
        g.nodes()  # verify forgot the stale order; a new one cannot be computed
