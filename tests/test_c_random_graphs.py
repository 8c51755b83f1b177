"""The C target on fixed graphs that random graphs once broke, and deterministic compilation.

Random graphs through the C target are ``tests/test_fuzz.py``'s job (``minicomp fuzz``: over
3,000 graphs per run, every op, odd argument layouts, random pass subsets). Kept here: the
graphs it (or this file's earlier random test) found, as fixed regression tests, and the
determinism of compilation: the same graph (rebuilt independently, or in another Python
process with another hash seed) renders the same C source, and compiling it again is a cache
hit that runs no compiler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp
from minicomp.runtime import compiler
from minicomp.codegen.c import render_c
from minicomp.ir.graph import Graph
from minicomp.lower.program import lower
from minicomp.testing import assert_close
from minicomp.testing.graphs import assert_outputs_close, random_graphs

ROOT = Path(__file__).resolve().parents[1]

# Graphs the generator found that once broke the C target, kept as fixed regression tests.
REGRESSIONS = {
    # GCC 12 -march=native (AVX512-FP16) emitted zero-masked vmovsh stores, which the
    # assembler rejects, once the kernels were inlined into the entry point
    "float16 select": """graph random(%x0: f16[3,1,2], %x1: f32[2,1,1], %x2: f16[]) {
      %add = add(%x0, %x0) : f16[3,1,2]
      %lt = lt(%x0, %x2) : bool[3,1,2]
      %where = where(%lt, %x0, %lt) : f16[3,1,2]
      %concatenate = concatenate(%x1, %x1) {axis=0} : f32[4,1,1]
      return %where, %concatenate, %add
    }""",
    # ... and again for a scalar float16 select once fusion inlined the comparison: now the
    # flags leave AVX512-FP16 out (minicomp computes float16 in float32 anyway)
    "fused float16 select": """graph random(%x0: f16[], %x1: bool[], %x2: bool[]) {
      %lt = lt(%x0, %x2) : bool[]
      %c = constant() {value=false} : bool[]
      %where = where(%lt, %x0, %c) : f16[]
      return %where
    }""",
    # GCC 12 -O3 miscompiled the two where kernels once both were inlined into the entry
    # point (wrong values, zeros); fixed by keeping kernels out of line
    "inlined kernels": """graph random(%x0: f32[6,6], %x1: f16[]) {
      %slice = slice(%x0) {starts=[0,0], stops=[3,6], steps=[2,2]} : f32[2,3]
      %concatenate = concatenate(%slice, %slice) {axis=1} : f32[2,6]
      %ne = ne(%concatenate, %x1) : bool[2,6]
      %where = where(%ne, %concatenate, %x1) : f32[2,6]
      %broadcast_to = broadcast_to(%where) {shape=[3,2,6]} : f32[3,2,6]
      %lt = lt(%x1, %concatenate) : bool[2,6]
      %where_1 = where(%lt, %broadcast_to, %x1) : f32[3,2,6]
      return %where_1
    }""",
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_regressions(name):
    graph = Graph.parse(REGRESSIONS[name])
    rng = np.random.default_rng(0)
    inputs = [np.asarray(rng.uniform(-2, 2, node.shape)).astype(node.dtype) for node in graph.inputs]
    inputs[-1] = np.ones_like(inputs[-1])  # a threshold some elements pass and some do not
    compiled = minicomp.compile(graph, target="c")
    assert_outputs_close(compiled(*inputs), minicomp.interpret(graph, *inputs), graph)


# GCC 12.2 loaded every vector of an SLP group of masked loads under the first vector's mask
# (tests/gcc_reproducers/slp_masked_load.c); the random graphs met it three times, in the
# three graphs below. Fixed by --param=max-completely-peel-times=1 (minicomp/runtime/flags.py);
# tests/test_compiler_flags.py sweeps the concatenate over shapes and dtypes.


def test_short_concatenate_regression():
    """A concatenate of 2 parts (a short select between two reads of x0) read zeros: wrong with
    GCC's defaults, right with -fno-tree-vrp (minicomp's first workaround, which moved the bug
    to the concatenate of 3 parts below)."""
    graph = Graph.parse("""graph random(%x0: i32[3,1,2]) {
      %concatenate = concatenate(%x0, %x0) {axis=0} : i32[6,1,2]
      return %concatenate
    }""")
    x0 = np.array([[[2, 1]], [[4, -2]], [[-1, -3]]], np.int32)  # no zeros: a zero read must show
    [result] = minicomp.compile(graph, target="c")(x0)
    np.testing.assert_array_equal(result, np.concatenate([x0, x0]))


@pytest.mark.parametrize("dtype", ["f16", "f32", "f64", "i32", "i64", "bool"])
def test_three_part_concatenate_regression(dtype):
    """Issue 10: 3 parts of 2 columns along axis 0 read zeros under -fno-tree-vrp (f32, f64,
    i32, i64 with AVX2; every dtype with AVX-512, which masks 8- and 16-bit loads too)."""
    graph = Graph.parse(f"""graph random(%x0: {dtype}[1,2], %x1: {dtype}[2,2], %x2: {dtype}[3,2]) {{
      %concatenate = concatenate(%x0, %x1, %x2) {{axis=0}} : {dtype}[6,2]
      return %concatenate
    }}""")
    parts = [np.arange(1, 2 * rows + 1).reshape(rows, 2) + 10 * k for k, rows in enumerate([1, 2, 3])]
    parts = [p.astype(graph.inputs[0].dtype) if dtype != "bool" else p > 0 for p in parts]  # no zeros
    [result] = minicomp.compile(graph, target="c")(*parts)
    np.testing.assert_array_equal(result, np.concatenate(parts))


@pytest.mark.parametrize("cols", [3, 6])
def test_short_select_regression(cols):
    """``x0 == x1 ? x0 : x2`` over a [6, 3] nest (the inner loop of 3 or 6 fully unrolled, then
    SLP with masked loads): lanes where the compare is false read 0. Right with
    --param=max-completely-peel-times=2 (the second workaround, which hid groups of 3 and 6
    but not of 2: the 3-part concatenate above)."""
    graph = Graph.parse(f"""graph random(%x0: f32[6,{cols}], %x1: f32[6,{cols}], %x2: f32[6,{cols}]) {{
      %eq = eq(%x0, %x1) : bool[6,{cols}]
      %where = where(%eq, %x0, %x2) : f32[6,{cols}]
      return %where
    }}""")
    rng = np.random.default_rng(cols)
    x0 = rng.choice(np.float32([-1.75, -1.5, -0.75, 0, 1.5, 2]), (6, cols))
    x1 = rng.choice(np.float32([-1.75, -1.5, 0, 2]), (6, cols))
    x2 = np.arange(100, 100 + 6 * cols, dtype=np.float32).reshape(6, cols)  # no zeros
    [result] = minicomp.compile(graph, target="c")(x0, x1, x2)
    np.testing.assert_array_equal(result, np.where(x0 == x1, x0, x2))


# ----------------------------------------------------------------------------------------------
# Determinism and the compile cache
# ----------------------------------------------------------------------------------------------


def source_of(graph: Graph) -> str:
    return render_c(lower(graph))


@settings(max_examples=15)
@given(random_graphs(max_nodes=8))
def test_same_graph_same_source_and_a_cache_hit(gen):
    """Rebuilding a graph from its text form renders identical C; compiling it a second time
    finds the library in the cache without starting the compiler."""
    rebuilt = Graph.parse(gen.graph.to_text(None))
    assert source_of(rebuilt) == source_of(gen.graph)
    first = minicomp.compile(gen.graph, target="c")
    no_compiler = AssertionError("the compiler ran although the library was in the cache")
    with mock.patch.object(compiler.subprocess, "run", side_effect=no_compiler):
        second = minicomp.compile(rebuilt, target="c")
    assert second.library_path == first.library_path
    assert_close(second(*gen.inputs), first(*gen.inputs))


RENDER_SCRIPT = """
import json, sys
from minicomp.codegen.c import render_c
from minicomp.ir.graph import Graph
from minicomp.lower.program import lower
texts = json.load(sys.stdin)
json.dump([render_c(lower(Graph.parse(t))) for t in texts], sys.stdout)
"""


def test_source_does_not_depend_on_the_process():
    """Another Python process, with other hash seeds, renders the same C for the same graphs
    (so nothing in lowering or rendering depends on set order or object ids)."""
    graphs = []

    @settings(max_examples=12, database=None)
    @given(random_graphs())
    def collect(gen):
        graphs.append(gen.graph)

    collect()
    texts = [g.to_text(None) for g in graphs]
    expected = [source_of(g) for g in graphs]
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(ROOT))
        result = subprocess.run([sys.executable, "-c", RENDER_SCRIPT], input=json.dumps(texts),
                                capture_output=True, text=True, env=env, check=True)
        for text, mine, theirs in zip(texts, expected, json.loads(result.stdout)):
            assert theirs == mine, f"PYTHONHASHSEED={seed} renders another source for\n{text}"


def test_identical_arrays_give_identical_results():
    """Running one compiled graph twice on the same inputs gives bit-identical outputs (no
    uninitialised memory, no data races in the parallel loops)."""
    x = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32)

    def fn(x):
        return (np.exp(x) * x).sum(axis=1) + np.tanh(x).max(axis=0).sum()

    compiled = minicomp.jit(fn, target="c")
    first = compiled(x)
    for _ in range(3):
        np.testing.assert_array_equal(compiled(x), first)
    assert_close(first, fn(x))
