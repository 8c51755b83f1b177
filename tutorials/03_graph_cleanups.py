"""Tutorial 03: graph cleanups. Constant folding, algebraic rewrites, CSE and DCE, before/after.

What you learn:

* What a *pass* is: a plain function ``Graph -> Graph``, registered under a name, that rewrites
  the graph and leaves it meaning exactly what it meant. ``run_pipeline`` runs passes in order,
  verifies the graph after each one, and can print it in between (``print_between=True``).
* The four cleanups every compiler runs first, and what each one needs to be *correct*:
  constant folding (``constant_fold``), algebraic rewrites (``algebraic``), common-subexpression
  elimination (``cse``) and dead-code elimination (``dce``).
* Why "x + 0 -> x" is not always allowed on floats (signed zeros), and why NumPy decides.
* Why rewriting ``v**3`` into ``v*v*v`` is worth it: NumPy's float32 ``**`` calls ``powf``.

Run from anywhere:  python tutorials/03_graph_cleanups.py
"""

import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp import Graph
from minicomp.passes.pipeline import run_pipeline
from minicomp.testing import assert_close

CLEANUPS = ["constant_fold", "algebraic", "cse", "dce"]


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def text(graph: Graph) -> list[str]:
    """The graph's text form without the ``# file:line`` comments (shorter to read)."""
    return [re.sub(r"  # .*$", "", line) for line in graph.to_text().splitlines()]


def show_diff(before: Graph, after: Graph) -> None:
    """Print the lines a pass removed (-), then the lines it added (+)."""
    old, new = text(before), text(after)
    for line in old:
        if line not in new:
            print("  -", line.strip())
    for line in new:
        if line not in old:
            print("  +", line.strip())


def op_counts(graph: Graph) -> str:
    counts = Counter(n.op for n in graph.op_nodes())
    return f"{sum(counts.values())} ops: " + ", ".join(f"{op} x{k}" for op, k in sorted(counts.items()))


# ----------------------------------------------------------------------------------------------
step("Step 1: a function with things to clean up")
# ----------------------------------------------------------------------------------------------
# A layer as people write it: weights closed over, a normalisation that computes `h - mu`
# twice, a constant built from `np.ones_like`, a leftover debug value, a scale factor that is
# 1.0 in this configuration, a transpose of a transpose, and GELU with `h ** 3`.

rng = np.random.default_rng(0)
W = (rng.standard_normal((32, 16)) / 4).astype(np.float32)  # closed over: becomes a constant
b = rng.standard_normal(32).astype(np.float32)
GAIN = np.float32(1.5)
SCALE = 1.0  # a configuration knob, 1.0 today


def layer(x):
    h = x.T.T @ W.T + b                                     # x.T.T: traced; W.T: a NumPy array
    mu = h.mean(axis=-1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)      # h - mu ...
    h = (h - mu) / np.sqrt(var + 1e-5)                      # ... and h - mu again
    h = h * (np.ones_like(h) * GAIN)                        # a constant built inside the function
    debug = np.abs(h).max()                                 # noqa: F841  (never used)
    return 0.5 * h * (1.0 + np.tanh(0.7978845608 * (h + 0.044715 * h ** 3))) * SCALE


x = rng.standard_normal((8, 16)).astype(np.float32)
expected = layer(x)
graph = minicomp.trace(layer, x)
print("\n".join(text(graph)))
print(op_counts(graph))
# Two things happened while tracing already. `W.T` ran in NumPy (W is a plain array), so the
# graph holds the transposed weight as one constant: for closed-over weights, tracing is the
# first constant folder. And `np.ones_like(h)` became broadcast_to(1.0): a value computed from
# constants only, inside the graph. That is constant_fold's job.
assert_close(minicomp.interpret(graph, x)[0], expected)

# ----------------------------------------------------------------------------------------------
step("Step 2: constant_fold")
# ----------------------------------------------------------------------------------------------
# Any op whose operands are all constants is computed now, with the op's NumPy reference (the
# interpreter's run_node), and replaced by its value. Then the next op may have only constant
# operands, and so on: ones_like(h) * GAIN becomes one constant array full of 1.5.
# One rule keeps it sane: the result may not be huge next to its operands. broadcast_to(0.0,
# (4096, 4096)) stays a broadcast: 16M stored elements would be worse than computing it.
folded, _ = run_pipeline(graph, passes=["constant_fold"])
show_diff(graph, folded)
assert_close(minicomp.interpret(folded, x)[0], expected)

# ----------------------------------------------------------------------------------------------
step("Step 3: algebraic")
# ----------------------------------------------------------------------------------------------
# Small local identities, each a function with a one-line algebra comment (read
# minicomp/passes/algebraic.py), applied until none fires:
#   transpose(transpose(x)) -> x       x * 1 -> x        x**2 -> x*x      x**3 -> x*x*x
#   f(constant full of 1.5, y) -> f(1.5, y)   (the op broadcasts a 0-d constant by itself)
simplified, _ = run_pipeline(folded, passes=["algebraic"])
show_diff(folded, simplified)
assert_close(minicomp.interpret(simplified, x)[0], expected)
assert "pow" not in [n.op for n in simplified.op_nodes()]
# The replaced nodes are gone; what they read and nobody reads any more (the inner transpose,
# the constants 3.0 and 1.0) is still there: removing it is dce's job.

# A rewrite must keep every value bit for bit, so some tempting ones are wrong on floats:
with np.errstate(all="ignore"):
    zero, neg_zero = np.float32(0.0), np.float32(-0.0)
    print(f"\n1 / (-0.0 + 0.0) = {1 / (neg_zero + zero)} but 1 / -0.0 = {1 / neg_zero}:"
          "  x + 0.0 -> x is wrong for x = -0.0 (x - 0.0 -> x is right)")
    print(f"inf * 0 = {np.float32(np.inf) * zero}:  x * 0 -> 0 is wrong")
    print(f"exp(log(-1)) = {np.exp(np.log(np.float32(-1)))}:  exp(log(x)) -> x only where x >= 0"
          " is certain (x = abs(..), exp(..), a*a, sums of those ...)")
    print(f"(-inf) ** 0.5 = {np.power(np.float32(-np.inf), np.full(1, 0.5, np.float32))[0]}"
          f" but sqrt(-inf) = {np.sqrt(np.float32(-np.inf))}:  x ** 0.5 -> sqrt(x) needs x >= 0 too")

# ----------------------------------------------------------------------------------------------
step("Step 4: cse (common-subexpression elimination)")
# ----------------------------------------------------------------------------------------------
# Two nodes with the same op, the same operands and equal attributes compute the same value:
# keep the first, point the users of the second at it. Equal constants merge too. Going in
# topological order, a merge makes users equal in turn (h - mu twice -> (h-mu)*(h-mu) once).
merged, _ = run_pipeline(simplified, passes=["cse"])
show_diff(simplified, merged)
subs = [n for n in merged.op_nodes() if n.op == "sub"]
assert len(subs) == 1, "h - mu is computed once"
assert_close(minicomp.interpret(merged, x)[0], expected)

# ----------------------------------------------------------------------------------------------
step("Step 5: dce (dead-code elimination)")
# ----------------------------------------------------------------------------------------------
# Keep what an output depends on (and the inputs: they are the signature); erase the rest.
# Here: the debug max, and everything the earlier passes left unused.
clean, _ = run_pipeline(merged, passes=["dce"])
show_diff(merged, clean)
print()
print("\n".join(text(clean)))
assert_close(minicomp.interpret(clean, x)[0], expected)
print(f"before: {op_counts(graph)}\nafter:  {op_counts(clean)}")
assert len(clean.op_nodes()) < len(graph.op_nodes())

# ----------------------------------------------------------------------------------------------
step("Step 6: the pipeline, printing between passes")
# ----------------------------------------------------------------------------------------------
# The same four passes in one call. print_between=True prints the graph after each pass (here
# we only count lines, to keep the output short); the report gives ops before -> after.
# The verifier runs after every pass: a pass that breaks the graph is named at once.
printed = []
final, report = run_pipeline(graph, passes=CLEANUPS, print_between=True, printer=printed.append)
print(f"{len(printed)} printouts: " + ", ".join(p.splitlines()[0] for p in printed))
print(report)
assert final.to_text() == clean.to_text()

# ----------------------------------------------------------------------------------------------
step("Step 7: constant folding where weights live in the graph")
# ----------------------------------------------------------------------------------------------
# Graphs that come from elsewhere (an ONNX file, a hand-written text graph, another pass) keep
# their weights as constants *with ops on them*: a transposed weight, a causal mask built from
# positions. Constant folding computes those once at compile time.
imported = Graph.parse("""
graph attend(%s: f32[4,4], %v: f32[4,2]) {
  %w = constant() {value=[[1.0,0.0,2.0,0.0],[0.0,1.0,0.0,3.0]]} : f32[2,4]
  %wt = transpose(%w) {perm=[1,0]} : f32[4,2]
  %pos = constant() {value=[0,1,2,3]} : i64[4]
  %row = reshape(%pos) {shape=[4,1]} : i64[4,1]
  %col = reshape(%pos) {shape=[1,4]} : i64[1,4]
  %keep = ge(%row, %col) : bool[4,4]
  %ninf = constant() {value=-inf} : f32[]
  %masked = where(%keep, %s, %ninf) : f32[4,4]
  %e = exp(%masked) : f32[4,4]
  %y = matmul(%e, %v) : f32[4,2]
  %out = add(%y, %wt) : f32[4,2]
  return %out
}""")
clean_import, report = run_pipeline(imported, passes=CLEANUPS)
print("\n".join(text(clean_import)))
assert [n.op for n in clean_import.op_nodes()] == ["where", "exp", "matmul", "add"]
s_in, v_in = rng.standard_normal((4, 4)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
mask = np.arange(4)[:, None] >= np.arange(4)[None, :]
w_in = np.array([[1, 0, 2, 0], [0, 1, 0, 3]], np.float32)
assert_close(minicomp.interpret(clean_import, s_in, v_in)[0],
             np.exp(np.where(mask, s_in, -np.inf)) @ v_in + w_in.T)

# ----------------------------------------------------------------------------------------------
step("Step 8: why x**3 -> x*x*x matters")
# ----------------------------------------------------------------------------------------------
# NumPy evaluates float32 `v ** 3` with the C library's powf, a general (and slow) function;
# v*v*v is two multiplications that vectorise. Same values within rounding, very different time.
v = rng.standard_normal(1 << 20).astype(np.float32)


def median_seconds(fn, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


assert_close(v * v * v, v ** 3)
t_pow = median_seconds(lambda: v ** 3)
t_mul = median_seconds(lambda: v * v * v)
print(f"v ** 3 : {t_pow * 1e3:7.2f} ms    v * v * v : {t_mul * 1e3:7.2f} ms    "
      f"({t_pow / t_mul:.1f}x) for {v.size} float32 values")
# (Timings vary from machine to machine; nothing here asserts them.)

# ----------------------------------------------------------------------------------------------
step("Step 9: in jit, and switching a pass off")
# ----------------------------------------------------------------------------------------------
# minicomp.jit runs the default pipeline (these cleanups first, then the passes of later
# tutorials) before compiling. Any pass can be switched off by name, to see what it buys or to
# find the pass that broke something.
fast = minicomp.jit(layer, target="numpy", passes=CLEANUPS, disable=["cse"])
assert_close(fast(x), expected)
print(fast.inspect(x).report)
assert [n.op for n in fast.inspect(x).graph.op_nodes()].count("sub") == 2  # h - mu twice, no CSE
