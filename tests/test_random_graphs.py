"""The random-graph generator (``minicomp.testing.graphs``) and the interpreter on its graphs.

For every generated graph, ``minicomp.interpret`` must give what the generator's independent
NumPy function gives, and the graph must verify. The generator itself is checked too: its
options (``dtypes``, ``allow_ops``, ``max_nodes``) are obeyed, its values stay finite and
tame, and it really produces each op and each feature the later test suites rely on.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings

import minicomp
from minicomp.ir import Interpreter
from minicomp.testing import assert_close
from minicomp.testing.graphs import (
    DISCONTINUOUS_OPS,
    GENERATED_OPS,
    LIMIT,
    MAX_SIZE,
    GeneratedGraph,
    random_graphs,
)

SOURCES = {"input", "constant"}


def check_against_numpy(gen: GeneratedGraph) -> None:
    gen.graph.verify()
    assert_close(minicomp.interpret(gen.graph, *gen.inputs), gen.numpy_fn(*gen.inputs))


@given(random_graphs())
def test_interpreter_matches_numpy(gen):
    check_against_numpy(gen)


@given(random_graphs(max_nodes=24, dtypes=("f32", "f64")))
def test_interpreter_matches_numpy_on_bigger_float_graphs(gen):
    check_against_numpy(gen)


@given(random_graphs(allow_ops=GENERATED_OPS - DISCONTINUOUS_OPS))
def test_continuous_graphs_match_numpy(gen):
    check_against_numpy(gen)
    assert {n.op for n in gen.graph.nodes()} <= (GENERATED_OPS - DISCONTINUOUS_OPS) | SOURCES


class _Recorder(Interpreter):
    """Keeps every value the interpreter computes."""

    def run_node(self, node, values):
        result = super().run_node(node, values)
        self.seen.append((node, result))
        return result


@given(random_graphs())
def test_values_are_finite_tame_and_small(gen):
    recorder = _Recorder(gen.graph)
    recorder.seen = [(node, array) for node, array in zip(gen.graph.inputs, gen.inputs)]
    recorder.run(*gen.inputs)
    for node, array in recorder.seen:
        assert array.size <= MAX_SIZE, node
        if array.dtype.kind == "f":
            assert np.all(np.isfinite(array)), node
        assert np.all(np.abs(array.astype(np.float64)) <= LIMIT), node


@given(random_graphs(max_nodes=5, dtypes=["f32"], allow_ops=["add", "mul", "exp", "sum"]))
def test_options_are_obeyed(gen):
    assert {n.op for n in gen.graph.nodes()} <= {"add", "mul", "exp", "sum"} | SOURCES
    assert {str(n.dtype) for n in gen.graph.nodes()} <= {"float32"}
    # no guard op (tanh, maximum, abs) is allowed here, so no step goes past max_nodes
    assert len(gen.graph.op_nodes()) <= 5
    check_against_numpy(gen)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="cannot generate.*fused"):
        random_graphs(allow_ops=["add", "fused"])
    with pytest.raises(ValueError, match="max_nodes"):
        random_graphs(max_nodes=0)
    with pytest.raises(minicomp.errors.DTypeError):
        random_graphs(dtypes=["complex64"])
    with pytest.raises(ValueError, match=r"none of \['div'\].*'div': \{'a"):
        random_graphs(allow_ops=["div"])  # div needs its guards, abs and add


@given(random_graphs(allow_ops=["log", "exp", "neg"]))
def test_ops_needing_a_missing_guard_are_left_out(gen):
    assert {n.op for n in gen.graph.op_nodes()} <= {"exp", "neg"}  # log needs abs and add
    check_against_numpy(gen)


def _attr_test(op, predicate):
    return lambda g: any(n.op == op and predicate(n) for n in g.graph.nodes())


def _binary_nodes(g):
    return [n for n in g.graph.nodes() if len(n.operands) == 2]


FEATURES = {
    "x * x": lambda g: any(n.operands[0] is n.operands[1] for n in _binary_nodes(g)),
    "value used by several ops": lambda g: any(len({u for u, _ in n.users}) >= 3
                                               for n in g.graph.nodes()),
    "several outputs": lambda g: len(g.graph.outputs) >= 2,
    "an output twice": lambda g: len(set(g.graph.outputs)) < len(g.graph.outputs),
    "unused input": lambda g: any(not i.users and i not in g.graph.outputs
                                  for i in g.graph.inputs),
    "size-0 broadcast": lambda g: any(0 in n.shape and n.operands[0].shape != n.operands[1].shape
                                      for n in _binary_nodes(g) if n.op != "matmul"),
    "size-1 broadcast": lambda g: any(n.operands[0].type.ndim == n.operands[1].type.ndim
                                      and n.operands[0].shape != n.operands[1].shape
                                      for n in _binary_nodes(g) if n.op != "matmul"),
    "rank broadcast": lambda g: any(n.operands[0].type.ndim != n.operands[1].type.ndim
                                    for n in _binary_nodes(g) if n.op != "matmul"),
    "0-d input": lambda g: any(i.shape == () for i in g.graph.inputs),
    "scalar constant": _attr_test("constant", lambda n: n.shape == ()),
    "array constant": _attr_test("constant", lambda n: 1 < n.type.size <= 16),
    "big constant": _attr_test("constant", lambda n: n.type.size > 16),
    "mixed dtypes": lambda g: any(n.operands[0].dtype != n.operands[1].dtype
                                  for n in _binary_nodes(g)),
    "negative slice step": _attr_test("slice", lambda n: min(n.attrs["steps"], default=1) < 0),
    "slice step 2": _attr_test("slice", lambda n: 2 in n.attrs["steps"]),
    "keepdims": lambda g: any(n.kind.value == "reduction" and n.attrs["keepdims"]
                              and n.attrs["axes"] for n in g.graph.nodes()),
    "partial reduction": _attr_test(
        "max", lambda n: 0 < len(n.attrs["axes"]) < n.operands[0].type.ndim),
    "batched matmul": _attr_test("matmul", lambda n: len(n.shape) >= 3),
    "matrix-vector": _attr_test("matmul", lambda n: n.operands[1].type.ndim == 1),
    "vector-matrix": _attr_test("matmul", lambda n: n.operands[0].type.ndim == 1),
    "rank-changing reshape": _attr_test("reshape", lambda n: n.type.ndim != n.operands[0].type.ndim),
    "concatenate 3": _attr_test("concatenate", lambda n: len(n.operands) == 3),
    "where of a comparison": _attr_test(
        "where", lambda n: n.operands[0].op in ("lt", "gt", "le", "ge", "eq", "ne")),
    "cast float to int": _attr_test(
        "cast", lambda n: n.dtype.kind == "i" and n.operands[0].dtype.kind == "f"),
    "guarded log": _attr_test("log", lambda n: n.operands[0].op == "add"),
    "source locations": lambda g: any(n.loc for n in g.graph.nodes()),
    "no source locations": lambda g: not any(n.loc for n in g.graph.nodes()),
}


def test_generator_produces_every_op_and_feature():
    """A fixed (derandomized) batch of graphs must contain every op and every feature, so the
    suites that run on random graphs keep testing what they claim to."""
    ops, features = set(), set()

    # 2,000, not 700: even derandomized, hypothesis's draws can depend on the process (recent
    # versions mix in constants from the modules loaded so far), and in a full-suite worker 700
    # graphs once missed the rarest feature (a float-to-int cast) that a lone run drew
    @settings(max_examples=2000, derandomize=True, database=None, phases=[Phase.generate])
    @given(random_graphs())
    def collect(gen):
        ops.update(n.op for n in gen.graph.nodes())
        features.update(name for name, present in FEATURES.items() if present(gen))

    collect()
    assert sorted((GENERATED_OPS | SOURCES) - ops) == []
    assert sorted(set(FEATURES) - features) == []
