"""Tutorial 02: the graph IR. Tracing NumPy into a graph; printing, parsing, verifying, drawing it.

What you learn:

* How a compiler gets hold of your model without you rewriting it: ``minicomp.trace`` calls
  your unchanged NumPy function with stand-in arrays (``TracedArray``) that *record* each
  operation instead of computing it. The recording is a graph: the intermediate
  representation (IR) every later pass reads and rewrites.
* What is in a node: an op from the op table, its pattern kind (what fusion may do with it),
  its static type (shape + dtype), its operands and users, and the line of *your* code it came
  from. Types follow NumPy exactly, dtype promotion included (``f32 * 2.0`` stays f32).
* The graph's text form, which ``Graph.parse`` reads back (so you can save, diff and hand-write
  IR); building a graph by hand; ``verify()`` catching a graph a buggy pass has broken.
* The graph *is* a ``networkx`` graph, so graph algorithms come for free (here: the critical
  path by FLOPs); Graphviz DOT for drawing it.
* Errors point at your line, and ``minicomp.interpret`` runs any graph with NumPy: the meaning
  every optimised version is checked against.

Run from the repository root:  python tutorials/02_graph_ir.py
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import networkx as nx
import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp import Graph, TensorType
from minicomp.errors import GraphError, MinicompRuntimeError, ParseError, ShapeError, UnsupportedError
from minicomp.ir.ops import OPS
from minicomp.stats import node_flops
from minicomp.testing import assert_close

THIS_FILE = Path(__file__).name


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


# ----------------------------------------------------------------------------------------------
step("Step 1: trace an unchanged NumPy function")
# ----------------------------------------------------------------------------------------------
# One head of self-attention, batched over the leading axis, in plain NumPy: project x to
# queries, keys and values, then softmax(q k^T / sqrt(d)) v. Nothing in it knows about minicomp.


def attention(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = q @ k.swapaxes(-1, -2) * q.shape[-1] ** -0.5
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return weights @ v


rng = np.random.default_rng(0)
x = rng.standard_normal((2, 6, 16), dtype=np.float32)          # (batch, tokens, model dim)
wq, wk, wv = (rng.standard_normal((16, 8), dtype=np.float32) for _ in range(3))  # head dim 8
args = (x, wq, wk, wv)
expected = attention(*args)                                     # run eagerly: the reference

# trace() only looks at the examples' shapes and dtypes: the graph is specialised to them.
graph = minicomp.trace(attention, *args)
print(graph)
# One line per op, in an order where every value is defined before it is used:
#   %name = op(%operands) {attributes} : type  # your file:line
# Inputs are the parameters (named after them); `q.shape[-1] ** -0.5` was plain Python
# arithmetic on an int (the shape is static), so it arrives as the constant 0.35355338.
assert [n.op for n in graph.op_nodes()] == [
    "matmul", "matmul", "matmul", "transpose", "matmul", "mul", "max", "sub", "exp", "sum", "div",
    "matmul"]

# ----------------------------------------------------------------------------------------------
step("Step 2: what a TracedArray is")
# ----------------------------------------------------------------------------------------------
# During tracing your function receives TracedArrays: objects with a shape and a dtype but no
# data. Python operators (x + y, x @ w, x[1:]) reach its dunder methods; NumPy functions
# (np.exp, np.sum, np.where) reach it through NumPy's dispatch protocols (__array_ufunc__,
# __array_function__). Each one adds a node to the graph and returns a new TracedArray.


def spy(x):
    print("  x              :", repr(x), "shape", x.shape, "dtype", x.dtype)
    y = np.exp(x) + 1.0
    print("  np.exp(x) + 1.0:", repr(y))
    try:
        if y.sum() > 10:   # Python needs True or False *now*, but there is no data yet
            y = -y
    except UnsupportedError as exc:
        print("  `if` on an array ->", type(exc).__name__ + ":", str(exc).split(";")[0])
    return y


spy_graph = minicomp.trace(spy, np.zeros((3, 4), np.float32))
print(spy_graph)
# The function body ran once, in Python, at trace time: the print()s happened then, and they
# are not in the graph. The abandoned sum and comparison are (nothing uses them: a later
# tutorial's dead-code elimination removes them).

# ----------------------------------------------------------------------------------------------
step("Step 3: walk the nodes")
# ----------------------------------------------------------------------------------------------
# graph.nodes() lists every node in topological order (operands before users). Each is a Node:
print(f"{'node':<12}{'op':<11}{'kind':<16}{'type':<13}{'operands':<22}{'users':<31}loc")
for node in graph.nodes():
    operands = ", ".join("%" + o.name for o in node.operands)
    users = ", ".join("%" + u.name for u, _ in node.users)
    print(f"%{node.name:<11}{node.op:<11}{node.kind.value:<16}{str(node.type):<13}"
          f"{operands:<22}{users:<31}{Path(node.loc).name}")
# `kind` is the op's *pattern kind*, which decides what fusion may do with it (tutorial 04):
# elementwise/broadcast ops fuse freely, reductions end a fused group, matmul ("out_ew_fusable")
# can take an elementwise epilogue.
scores = next(n for n in graph.op_nodes() if n.op == "matmul" and n.operands[1].op == "transpose")
assert scores.type == TensorType((2, 6, 6), "f32")
assert scores.loc.endswith(f"{THIS_FILE}:{attention.__code__.co_firstlineno + 2}")

# ----------------------------------------------------------------------------------------------
step("Step 4: the op table")
# ----------------------------------------------------------------------------------------------
# Everything the compiler knows about an op is one row of minicomp.ir.ops.OPS: its kind, its
# number of operands, its shape/dtype rule (`infer`, taken from NumPy's own rules) and a NumPy
# reference implementation that *defines* what the op means.
row = OPS["add"]
print(f"OPS['add']: kind={row.kind.value}, arity={row.arity}, reference=np.{row.reference.__name__},"
      f" doc={row.doc!r}")
for a, b in [(TensorType((4, 1), "f32"), TensorType((3,), "f32")),
             (TensorType((4, 3), "f32"), TensorType((3,), "i64"))]:
    out = row.infer([a, b], {})
    numpy_out = np.add(np.zeros(a.shape, a.dtype), np.zeros(b.shape, b.dtype))
    print(f"  infer: {a} + {b} -> {out}    (NumPy: {numpy_out.dtype}{list(numpy_out.shape)})")
    assert out == TensorType.of(numpy_out)
try:
    row.infer([TensorType((3, 4), "f32"), TensorType((5,), "f32")], {})
except ShapeError as exc:
    print(f"  infer: f32[3,4] + f32[5] -> ShapeError: {exc}")
print(f"OPS['matmul']: kind={OPS['matmul'].kind.value}, OPS['sum']: kind={OPS['sum'].kind.value}"
      f" attrs={OPS['sum'].attrs}")

# ----------------------------------------------------------------------------------------------
step("Step 5: NumPy's dtype promotion, kept")
# ----------------------------------------------------------------------------------------------
# The compiled code must return exactly what NumPy returns, dtype included. NumPy 2 treats a
# Python scalar as "weak" (it adapts to the array), but a NumPy scalar as a real float64.
x32 = np.ones((2, 3), np.float32)
i32 = np.ones((2, 3), np.int32)
cases = [
    ("x32 * 2.0", lambda x: x * 2.0, x32),
    ("x32 * np.float64(2.0)", lambda x: x * np.float64(2.0), x32),
    ("x32 / np.sqrt(64)", lambda x: x / np.sqrt(64), x32),   # np.sqrt(64) is a float64 scalar
    ("x32 / np.float32(8.0)", lambda x: x / np.float32(8.0), x32),
    ("i32 / i32", lambda x: x / x, i32),
    ("i32 // 2", lambda x: x // 2, i32),
]
for text, fn, example in cases:
    traced = minicomp.trace(fn, example).outputs[0].dtype
    numpy = fn(example).dtype
    print(f"  {text:<24} traced: {traced!s:<8} NumPy: {numpy}")
    assert traced == numpy
# The third line is a classic: `scores / np.sqrt(d)` silently turns a float32 attention into
# float64 (twice the bytes, slower math). The graph shows where: an f64 constant, an f64 div.
print(minicomp.trace(lambda x: x / np.sqrt(64), x32, name="div_by_sqrt"))

# ----------------------------------------------------------------------------------------------
step("Step 6: the text form reads back")
# ----------------------------------------------------------------------------------------------
# str(graph) is not just for looking at: Graph.parse reads it back. Big constants are elided
# when printing by default; to_text(elide_constants_over=None) keeps all data, so the round
# trip is exact.
text = graph.to_text(elide_constants_over=None)
reparsed = Graph.parse(text)
assert reparsed.to_text(elide_constants_over=None) == text
assert_close(minicomp.interpret(reparsed, *args)[0], expected)
print(f"parse(print(graph)) prints identically ({len(text.splitlines())} lines) and computes the same")

# So you can write IR by hand. The parser re-infers every type and checks what you declared:
hand_text = """
graph scale_shift(%x: f32[2,3], %b: f32[3]) {
  %two = constant() {value=2.0} : f32[]
  %y = mul(%x, %two) : f32[2,3]
  %z = add(%y, %b) : f32[2,3]
  return %z
}"""
hand = Graph.parse(hand_text)
xb, bb = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)
assert_close(minicomp.interpret(hand, xb, bb)[0], xb * 2.0 + bb)
try:
    Graph.parse(hand_text.replace("%z = add(%y, %b) : f32[2,3]", "%z = add(%y, %b) : f32[3,3]"))
except ParseError as exc:
    print("a wrong declared type ->", type(exc).__name__ + ":", exc)

# ----------------------------------------------------------------------------------------------
step("Step 7: build a graph with the Graph API")
# ----------------------------------------------------------------------------------------------
# Passes and frontends build graphs directly. add_input/add_constant/add_op infer each new
# node's type through the op table, so a graph built this way is well-typed by construction.
layer = Graph("linear_relu")
gx = layer.add_input("x", TensorType((4, 8), "f32"))
gw = layer.add_input("w", TensorType((8, 3), "f32"))
gb = layer.add_input("b", TensorType((3,), "f32"))
h = layer.add_op("matmul", [gx, gw], name="h")
h = layer.add_op("add", [h, gb], name="h_bias")
zero = layer.add_constant(np.float32(0.0), name="zero")
out = layer.add_op("maximum", [h, zero], name="relu")
layer.set_outputs([out])
print(layer)
layer.verify()

lx = rng.standard_normal((4, 8), dtype=np.float32)
lw = rng.standard_normal((8, 3), dtype=np.float32)
lb = rng.standard_normal(3, dtype=np.float32)
assert_close(minicomp.interpret(layer, lx, lw, lb)[0], np.maximum(lx @ lw + lb, 0))
try:
    layer.add_op("matmul", [gx, gx])          # (4,8) @ (4,8) cannot work: refused at once
except ShapeError as exc:
    print("add_op refuses a bad op ->", type(exc).__name__ + ":", exc)

# ----------------------------------------------------------------------------------------------
step("Step 8: verify() catches a broken graph")
# ----------------------------------------------------------------------------------------------
# Optimisation passes rewrite graphs, and a buggy pass can leave a graph inconsistent in ways
# that surface much later as wrong numbers. verify() re-checks every invariant and says what
# is wrong, listing every problem it finds. We break copies of the layer behind the API's
# back (editing node fields and graph.nx directly), as a buggy pass might.
broken = layer.copy()
broken.find("h").type = TensorType((4, 4), "f32")   # a "rewrite" that forgot to update a type
try:
    broken.verify()
except GraphError as exc:
    print(exc)
    assert "stored type f32[4,4] but its operands give f32[4,3]" in str(exc)

broken = layer.copy()
broken.nx.add_edge(broken.find("relu"), broken.find("h"), key=2)  # h now also reads relu
try:
    broken.verify()
except GraphError as exc:
    print(exc)
    assert "cycle" in str(exc)

# ----------------------------------------------------------------------------------------------
step("Step 9: the networkx view")
# ----------------------------------------------------------------------------------------------
# graph.nx is a networkx.MultiDiGraph whose nodes are the Node objects and whose edges run
# producer -> user, keyed by operand index (so `x * x` is two parallel edges, keys 0 and 1).
# Any networkx algorithm works on it directly.
g = graph.nx
print(f"graph.nx: {type(g).__name__} with {g.number_of_nodes()} nodes, {g.number_of_edges()} edges")
print(f"edges into %{scores.name}:", [(f"%{u.name}", key) for u, _, key in g.in_edges(scores, keys=True)])
print("ops that could run in parallel, level by level:")
for level, nodes in enumerate(nx.topological_generations(g)):
    print(f"  {level}: " + ", ".join(f"%{n.name}" for n in sorted(nodes, key=lambda n: n.index)))

# The critical path by FLOPs: the chain of dependent ops doing the most work, which no amount
# of parallelism can shorten. Weight each edge by the FLOPs of the op it feeds.
weighted = nx.DiGraph()
weighted.add_weighted_edges_from(((u, v, node_flops(v)) for u, v in g.edges()), weight="flops")
path = nx.dag_longest_path(weighted, weight="flops")
path_flops = sum(node_flops(n) for n in path)
total_flops = sum(node_flops(n) for n in graph.nodes())
print("critical path:", " -> ".join(f"%{n.name}" for n in path),
      f"({path_flops} of {total_flops} FLOPs)")
assert [n.op for n in path].count("matmul") == 3   # one projection, q k^T, weights @ v
# The other two projections are off the critical path: given two cores, they could run
# alongside it (level 1 above).

# ----------------------------------------------------------------------------------------------
step("Step 10: drawing it (Graphviz DOT)")
# ----------------------------------------------------------------------------------------------
# to_dot() gives Graphviz source: one box per node coloured by pattern kind, edges labelled
# with the operand index. Render it with `dot -Tsvg attention.dot > attention.svg`, or paste
# it into an online Graphviz viewer. (The CLI does the same: minicomp dump ... --format dot.)
with tempfile.TemporaryDirectory() as tmp:
    dot_path = Path(tmp) / "attention.dot"
    dot_path.write_text(graph.to_dot())
    dot_text = dot_path.read_text()
    assert dot_text.startswith('digraph "attention"')
    print("\n".join(dot_text.splitlines()[:6]) + "\n  ...")
    print(f"({len(dot_text.splitlines())} lines written to {dot_path.name})")
    if shutil.which("dot"):
        svg_path = dot_path.with_suffix(".svg")
        subprocess.run(["dot", "-Tsvg", str(dot_path), "-o", str(svg_path)], check=True, timeout=60)
        print(f"rendered with Graphviz: {svg_path.name}, {svg_path.stat().st_size} bytes")
    else:
        print("(no Graphviz `dot` on this machine: not rendered)")

# ----------------------------------------------------------------------------------------------
step("Step 11: errors point at your line")
# ----------------------------------------------------------------------------------------------
# Shapes are checked while tracing, op by op, so a mistake is reported where you made it: the
# op, the shapes as you passed them, and your file:line (not a line inside minicomp).


def buggy_attention(x, wq, wk, wv):
    q, k, v = x @ wq, x @ wk, x @ wv
    scores = q @ k            # forgot to transpose k
    return scores @ v


try:
    minicomp.trace(buggy_attention, *args)
except ShapeError as exc:
    print(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
    assert f"{THIS_FILE}:{buggy_attention.__code__.co_firstlineno + 2})" in str(exc)
    assert isinstance(exc, ValueError)   # ShapeError is also what NumPy would raise: ValueError
else:
    raise AssertionError("the shape error was not caught")

# ----------------------------------------------------------------------------------------------
step("Step 12: run the graph")
# ----------------------------------------------------------------------------------------------
# minicomp.interpret runs any graph op by op with each op's NumPy reference. It is the meaning
# of a graph: every optimisation and backend in later tutorials is checked against it.
(result,) = minicomp.interpret(graph, *args)
assert_close(result, expected)
print(f"interpret(graph, x, wq, wk, wv): {result.dtype}{list(result.shape)}, matches NumPy")

# The graph is specialised to the example shapes and dtypes; other arguments are refused
# (minicomp.jit traces once per new signature instead).
try:
    minicomp.interpret(graph, x[:, :3], wq, wk, wv)
except MinicompRuntimeError as exc:
    print("other shapes ->", type(exc).__name__ + ":", exc)
