"""The text form and DOT export: exact round trips, pinned examples, and clear parse errors.

``Graph.parse(g.to_text(None))`` must rebuild a graph that prints identically and computes
the same results (checked on random graphs); malformed text must raise ``ParseError`` naming
the offending line, never another exception.
"""

from __future__ import annotations

import base64
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minicomp
from minicomp import Graph, TensorType
from minicomp.errors import ParseError
from minicomp.testing.graphs import random_graphs


def assert_same_results(g1, g2, inputs):
    for a, b in zip(minicomp.interpret(g1, *inputs), minicomp.interpret(g2, *inputs)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@given(random_graphs())
def test_round_trip_is_exact(gen):
    text = gen.graph.to_text(None)
    parsed = Graph.parse(text)
    assert parsed.to_text(None) == text
    parsed.verify()
    assert_same_results(gen.graph, parsed, gen.inputs)


@given(random_graphs())
def test_default_text_parses_unless_a_constant_was_elided(gen):
    text = str(gen.graph)
    if any(n.op == "constant" and n.type.size > 16 for n in gen.graph.nodes()):
        with pytest.raises(ParseError, match="elided"):
            Graph.parse(text)
    else:
        assert Graph.parse(text).to_text(None) == gen.graph.to_text(None)


def pinned_graph():
    g = Graph("pinned")
    x = g.add_input("x", TensorType((2, 3), "f32"))
    mask = g.add_input("mask", TensorType((3,), "bool"))
    half = g.add_constant(np.float32(0.5), name="half")
    sq = g.add_op("mul", [x, x], loc="model.py:3")
    total = g.add_op("sum", [sq], {"axes": -1, "keepdims": True}, loc="model.py:4")
    flipped = g.add_op("transpose", [x])
    picked = g.add_op("where", [mask, x, half])
    ints = g.add_op("cast", [picked], {"dtype": "i64"})
    part = g.add_op("slice", [x], {"starts": [None, 1], "stops": [None, None], "steps": [1, 2]})
    k = g.add_constant(np.array([[1, 2, 3]], np.int32), name="k")
    biggest = g.add_op("maximum", [ints, k])
    g.set_outputs([total, flipped, biggest, part, total])
    return g


PINNED = """\
graph pinned(%x: f32[2,3], %mask: bool[3]) {
  %half = constant() {value=0.5} : f32[]
  %mul = mul(%x, %x) : f32[2,3]  # model.py:3
  %sum = sum(%mul) {axes=[1], keepdims=true} : f32[2,1]  # model.py:4
  %transpose = transpose(%x) {perm=[1,0]} : f32[3,2]
  %where = where(%mask, %x, %half) : f32[2,3]
  %cast = cast(%where) {dtype=i64} : i64[2,3]
  %slice = slice(%x) {starts=[0,1], stops=[2,3], steps=[1,2]} : f32[2,1]
  %k = constant() {value=[[1,2,3]]} : i32[1,3]
  %maximum = maximum(%cast, %k) : i64[2,3]
  return %sum, %transpose, %maximum, %slice, %sum
}"""


def test_pinned_text():
    g = pinned_graph()
    assert str(g) == PINNED
    assert Graph.parse(PINNED).to_text(None) == PINNED


def test_pinned_values_and_base64_constants():
    g = Graph("consts")
    small = g.add_constant(np.array([[True, False]]), name="flags")
    big = g.add_constant(np.arange(17, dtype=np.int32), name="big")
    g.set_outputs([small, big])
    text = g.to_text(None)
    assert "%flags = constant() {value=[[true,false]]} : bool[1,2]" in text
    raw = np.arange(17, dtype="<i4").tobytes()
    assert f'%big = constant() {{value=base64"{base64.b64encode(raw).decode()}"}} : i32[17]' in text
    parsed = Graph.parse(text)
    np.testing.assert_array_equal(parsed.find("big").attrs["value"], np.arange(17))
    assert parsed.find("big").dtype == np.int32


def test_float_constants_print_shortest_and_read_back_exactly():
    g = Graph("floats")
    values = np.array([0.1, -2.5e-8, 1 / 3, np.inf, -0.0], np.float32)
    g.set_outputs([g.add_constant(values, name="v"), g.add_constant(np.float16(0.1), name="h")])
    text = g.to_text(None)
    assert "value=[0.1,-2.5e-08,0.33333334,inf,-0.0]" in text
    parsed = Graph.parse(text)
    assert parsed.find("v").attrs["value"].tobytes() == values.tobytes()
    assert parsed.find("h").attrs["value"].tobytes() == np.float16(0.1).tobytes()


def test_elided_constant_gives_a_clear_error():
    g = Graph("weights")
    w = g.add_constant(np.ones((5, 5), np.float32), name="w")
    g.set_outputs([w])
    text = str(g)
    assert re.search(r"%w = constant\(\) \{value=<elided sha256:[0-9a-f]{16}>\} : f32\[5,5\]", text)
    with pytest.raises(ParseError, match=r"line 2: this constant was elided.*"
                                         r"elide_constants_over=None"):
        Graph.parse(text)


HEADER = "graph g(%x: f32[3]) {"
MALFORMED = {
    "unknown op": ("%y = frob(%x) : f32[3]", r"line 2: unknown op 'frob'; known ops: abs, add"),
    "use before definition": ("%y = neg(%z) : f32[3]\n%z = neg(%x) : f32[3]",
                              r"line 2: %z is used before it is defined"),
    "wrong declared type": ("%y = neg(%x) : f64[3]", r"line 2: %y is declared f64\[3\] but neg "
                                                     r"gives f32\[3\]"),
    "unknown attribute": ("%y = sum(%x) {axis=0} : f32[]",
                          r"line 2: sum: unknown attribute\(s\) \['axis'\]; sum takes"),
    "unreadable attribute": ("%y = sum(%x) {axes=[0], keepdims=maybe} : f32[]",
                             r"line 2: cannot read attribute value 'maybe'"),
    "attribute of the wrong kind": ("%y = reshape(%x) {shape=[none]} : f32[3]",
                                    r"line 2: reshape: shape \(None,\) is not an integer or a sequence of integers"),
    "unclosed list": ("%y = sum(%x) {axes=[0} : f32[]", r"line 2: attributes end too early"),
    "bad constant value": ("%c = constant() {value=[1,abc]} : f32[2]",
                           r"line 2: cannot read a constant of type f32\[2\]"),
    "constant of the wrong size": ("%c = constant() {value=[1,2]} : f32[3]",
                                   r"line 2: constant has 2 values but type f32\[3\]"),
    "integer constant overflow": ("%c = constant() {value=[1,99999999999]} : i32[2]",
                                  r"line 2: cannot read a constant of type i32\[2\]"),
    "op that does not fit": ("%y = squeeze(%x) {axes=[0]} : f32[]",
                             r"line 2: squeeze: cannot select an axis to squeeze out"),
    "defined twice": ("%y = neg(%x) : f32[3]\n%y = abs(%x) : f32[3]",
                      r"line 3: %y is defined twice"),
    "not a node": ("this is not a node", r"line 2: expected '%name = op"),
    "input in the body": ("%y = input() {type=type<f32[3]>} : f32[3]",
                          r"line 2: inputs are declared in the header"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_body_names_the_line(case):
    body, pattern = MALFORMED[case]
    text = HEADER + "\n" + "\n".join("  " + ln for ln in body.splitlines()) + "\n  return %x\n}"
    with pytest.raises(ParseError, match=pattern):
        Graph.parse(text)


@pytest.mark.parametrize("text, pattern", [
    ("graph g(%x: f32[3]) {\n  %y = neg(%x) : f32[3]\n}", r"line 3: missing 'return' line"),
    ("graph g(%x: f32[3]) {\n  return\n}", r"line 2: 'return' needs the returned values"),
    ("graph g(%x: f32[3]) {\n  return %q\n}", r"line 2: %q is used before it is defined"),
    ("graph g(%x: f33[3]) {\n  return %x\n}", r"line 1: cannot read tensor type 'f33\[3\]'"),
    ("graph g(%x: f32[3])\n  return %x\n}", r"line 1: expected 'graph NAME"),
    ("graph g(%x: f32[3]) {\n  return %x", r"missing closing '\}'"),
    ("", r"empty text"),
])
def test_malformed_structure(text, pattern):
    with pytest.raises(ParseError, match=pattern):
        Graph.parse(text)


@given(random_graphs(max_nodes=4), st.data())
def test_damaged_text_raises_only_parse_errors(gen, data):
    text = gen.graph.to_text(None)
    for _ in range(data.draw(st.integers(1, 3))):
        i, j = data.draw(st.integers(0, len(text))), data.draw(st.integers(0, len(text)))
        junk = data.draw(st.sampled_from(["", "[", "]", "(", ")", "{", "}", "%", ",", "=", ":",
                                          '"', "-", "0", "a", ".", " ", "\n", "none"]))
        text = text[:min(i, j)] + junk + text[max(i, j):]
    try:
        Graph.parse(text)
    except ParseError:
        pass


def _dot_nodes_and_edges(dot: str):
    names = dict(re.findall(r'^  (n\d+) \[label="\w+\\n%([\w.]+)\\n', dot, re.M))
    edges = Counter((names[a], names[b], int(i))
                    for a, b, i in re.findall(r'^  (n\d+) -> (n\d+) \[label="(\d+)"\];', dot, re.M))
    outputs = [names[n] for n, _ in re.findall(r"^  (n\d+) -> (out\d+);", dot, re.M)]
    return list(names.values()), edges, outputs


def test_dot_of_pinned_graph():
    dot = pinned_graph().to_dot()
    assert dot.startswith('digraph "pinned" {') and dot.endswith("}")
    assert '  n3 [label="mul\\n%mul\\nf32[2,3]", fillcolor=lightblue];' in dot
    assert '  n0 -> n3 [label="0"];\n  n0 -> n3 [label="1"];' in dot
    nodes, edges, outputs = _dot_nodes_and_edges(dot)
    assert edges[("mask", "where", 0)] == 1 and edges[("half", "where", 2)] == 1
    assert outputs == ["sum", "transpose", "maximum", "slice", "sum"]


@given(random_graphs())
def test_dot_has_every_node_and_edge(gen):
    g = gen.graph
    nodes, edges, outputs = _dot_nodes_and_edges(g.to_dot())
    assert sorted(nodes) == sorted(n.name for n in g.nodes())
    expected = Counter((o.name, n.name, i) for n in g.nodes() for i, o in enumerate(n.operands))
    assert edges == expected
    assert outputs == [o.name for o in g.outputs]


@given(st.text(min_size=1, max_size=20))
def test_any_graph_name_round_trips(name):
    """A name that is not a plain identifier (``my model-v2``, a quote, a newline, ``}``) is
    printed quoted and escaped, also where a fused node refers to its body (``@"..."``); the
    text parses back to the same names and prints identically. (It used to print bare, and
    the text could not be parsed.)"""
    x = np.ones(3, np.float32)
    traced = minicomp.trace(lambda x: np.exp(x + 1).sum(), x, name=name)
    fused = minicomp.jit(lambda x: np.exp(x + 1).sum()).inspect(x).graph
    fused.name = name
    for graph in (traced, fused):
        text = str(graph)
        parsed = Graph.parse(text)
        assert parsed.name == name and str(parsed) == text
    assert minicomp.ir.text.format_graph_name("mlp") == "mlp"
    assert minicomp.ir.text.format_graph_name('my "big" model') == r'graph "my \"big\" model"'[6:]
