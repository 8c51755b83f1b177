"""Operator fusion: the patterns, the refusals, kernel counts, and results with fusion on and off.

* Textual before/after: each fusion pattern (elementwise chain, reduction with producers,
  softmax and layer-norm rows, matmul + bias + GELU and conv + batch norm + ReLU epilogues,
  attention) on a small function: the fused node's pattern, the ops of its body, and the text
  form round-trips with the bodies (``Graph.parse(g.to_text(None))`` reprints identically).
* Every refusal rule of ``minicomp.passes.fusion`` with the reason ``explain_fusion`` gives.
* Statistics of fused graphs: a fused node is one kernel (its body's FLOPs, its operands read
  once, its output written once); the nine workloads' kernel counts after the default pipeline.
* Results equal with fusion on and off: random graphs through the interpreter and through C,
  the nine workloads in float32 and float64, attention with a causal mask and odd sizes.
* The attention kernel never stores the S x S scores (no such workspace buffer; the loop IR
  holds the online-softmax locals).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp
from minicomp import Graph, nn
from minicomp.ir.loops import Allocate, Block, Declare, For
from minicomp.passes.fusion import explain_fusion, fuse
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.stats import graph_stats, kernel_summary, node_flops, node_stats
from minicomp.testing import assert_close
from minicomp.testing.graphs import DISCONTINUOUS_OPS, GENERATED_OPS, assert_outputs_close, random_graphs
from minicomp.workloads import WORKLOADS

F32 = np.float32


def zeros(*shape, dtype=F32):
    return np.zeros(shape, dtype)


def fused(fn, *args) -> tuple[Graph, Graph]:
    """(traced graph, graph after fusion alone)."""
    graph = minicomp.trace(fn, *args)
    after, _ = run_pipeline(graph, ["fusion"])
    return graph, after


def fused_nodes(graph: Graph):
    return [n for n in graph.op_nodes() if n.op == "fused"]


def body_ops(node) -> list[str]:
    return [n.op for n in node.attrs["body"].op_nodes()]


def assert_round_trips(graph: Graph) -> None:
    text = graph.to_text(None)
    assert Graph.parse(text).to_text(None) == text


# ----------------------------------------------------------------------------------------------
# Textual before/after
# ----------------------------------------------------------------------------------------------


def test_elementwise_chain_text_before_and_after():
    before = """graph f(%x: f32[4,8], %a: f32[8], %b: f32[8]) {
  %mul = mul(%x, %a) : f32[4,8]
  %add = add(%mul, %b) : f32[4,8]
  %const = constant() {value=0.5} : f32[]
  %mul_1 = mul(%add, %const) : f32[4,8]
  %tanh = tanh(%mul_1) : f32[4,8]
  return %tanh
}"""
    after = """graph f_fused_0(%x: f32[4,8], %a: f32[8], %b: f32[8]) {
  %mul = mul(%x, %a) : f32[4,8]
  %add = add(%mul, %b) : f32[4,8]
  %const = constant() {value=0.5} : f32[]
  %mul_1 = mul(%add, %const) : f32[4,8]
  %tanh = tanh(%mul_1) : f32[4,8]
  return %tanh
}

graph f(%x: f32[4,8], %a: f32[8], %b: f32[8]) {
  %fused_tanh = fused(%x, %a, %b) {body=@f_fused_0, pattern="elemwise"} : f32[4,8]
  return %fused_tanh
}"""
    graph = fuse(Graph.parse(before))
    assert graph.to_text(None) == after  # the scalar constant moved into the body as a literal
    assert_round_trips(graph)


def test_softmax_row_text_before_and_after():
    before = """graph softmax(%x: f32[3,5]) {
  %max = max(%x) {axes=[1], keepdims=true} : f32[3,1]
  %sub = sub(%x, %max) : f32[3,5]
  %exp = exp(%sub) : f32[3,5]
  %sum = sum(%exp) {axes=[1], keepdims=true} : f32[3,1]
  %div = div(%exp, %sum) : f32[3,5]
  return %div
}"""
    graph = fuse(Graph.parse(before))
    main = graph.to_text(None).split("\n\n")[-1]
    assert main == """graph softmax(%x: f32[3,5]) {
  %fused_div = fused(%x) {body=@softmax_fused_0, pattern="row"} : f32[3,5]
  return %fused_div
}"""
    body = graph.to_text(None).split("\n\n")[0]
    assert body.replace("graph softmax_fused_0(", "graph softmax(") == before  # the body is the old graph
    assert_round_trips(graph)


def gelu(v):
    return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def layernorm(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g + b


GELU_OPS = ["mul", "mul", "mul", "mul", "add", "mul", "tanh", "add", "mul"]

#: name -> (function, example arguments, pattern, ops of the fused body in order)
PATTERNS = {
    "elemwise chain": (lambda x, a, b: gelu(x * a + b), [zeros(4, 8), zeros(8), zeros(8)], "elemwise",
                       ["mul", "add"] + GELU_OPS),
    "reduction with producers": (lambda x: np.sum(np.exp(x) * x, axis=-1), [zeros(4, 8)], "reduce",
                                 ["exp", "mul", "sum"]),
    "softmax row": (lambda x: nn.softmax(x), [zeros(4, 8)], "row", ["max", "sub", "exp", "sum", "div"]),
    "layernorm row": (layernorm, [zeros(4, 8), zeros(8), zeros(8)], "row",
                      ["mean", "sub", "pow", "mean", "sub", "add", "sqrt", "div", "mul", "add"]),
    "matmul + bias + gelu": (lambda x, w, b: gelu(x @ w + b), [zeros(4, 8), zeros(8, 6), zeros(6)],
                             "epilogue", ["matmul", "add"] + GELU_OPS),
    "conv + bn + relu": (lambda x, w, m, v, g, b: np.maximum(nn.batch_norm(nn.conv2d(x, w, padding=1),
                                                                           m, v, g, b), 0),
                         [zeros(2, 3, 5, 5), zeros(4, 3, 3, 3)] + [zeros(4)] * 4, "epilogue", None),
    "attention": (lambda q, k, v: nn.scaled_dot_product_attention(q, k, v),
                  [zeros(2, 5, 4), zeros(2, 7, 4), zeros(2, 7, 4)], "attention",
                  ["transpose", "matmul", "mul", "max", "sub", "exp", "sum", "div", "matmul"]),
}


@pytest.mark.parametrize("name", PATTERNS)
def test_each_pattern_becomes_one_fused_kernel(name):
    fn, args, pattern, ops = PATTERNS[name]
    graph, after = fused(fn, *args)
    [node] = after.op_nodes()  # one kernel for the whole function
    assert node.op == "fused" and node.attrs["pattern"] == pattern
    traced_ops = [n.op for n in graph.op_nodes()]
    assert sorted(body_ops(node)) == sorted(traced_ops)  # every op of the function, once
    if ops is not None:
        assert body_ops(node) == ops
    else:
        assert body_ops(node)[0] == "conv2d" and body_ops(node)[-1] == "maximum"
    text = after.to_text(None)
    assert f'pattern="{pattern}"' in text and f"body=@{node.attrs['body'].name}" in text
    assert_round_trips(after)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(a.shape).astype(a.dtype) for a in args]
    if name == "conv + bn + relu":
        inputs[3] = np.abs(inputs[3]) + F32(0.5)  # a variance
    assert_close(minicomp.interpret(after, *inputs)[0], fn(*inputs))


def test_a_value_used_twice_inside_one_kernel_is_computed_once():
    graph, after = fused(lambda x: np.exp(x) * np.exp(x).sum(axis=-1, keepdims=True) + x, zeros(3, 4))
    [node] = after.op_nodes()
    assert node.attrs["pattern"] == "row"
    assert_round_trips(after)


def test_fusion_keeps_shared_values_and_outputs_materialised():
    def f(x, w):
        h = np.maximum(x @ w, 0)
        return h, np.tanh(h) + 1

    _, after = fused(f, zeros(4, 8), zeros(8, 6))
    kinds = sorted((n.op, n.attrs.get("pattern")) for n in after.op_nodes())
    assert kinds == [("fused", "elemwise"), ("fused", "epilogue")]
    assert_round_trips(after)


# ----------------------------------------------------------------------------------------------
# Refusals: every rule, with its reason
# ----------------------------------------------------------------------------------------------


def _output_twice(x):
    e = np.exp(x)
    return e, e + 1


def _shared_by_two_kernels(x):
    e = np.exp(x)
    return e.sum(axis=0), e.max(axis=1)


#: name -> (function, arguments, refused producer's op, reason (a substring))
REFUSALS = {
    "graph output": (_output_twice, [zeros(4, 8)], "exp", "graph output: it must be stored"),
    "users in two kernels": (_shared_by_two_kernels, [zeros(4, 8)], "exp", "used by 2 kernels"),
    "matmul inputs": (lambda x, w: np.maximum(x, 0) @ w, [zeros(4, 8), zeros(8, 5)], "maximum",
                      "it feeds matmul: its inputs are read many times"),
    "attention takes only data movement": (
        lambda q, k, v: nn.scaled_dot_product_attention(q * 2, k, v), [zeros(3, 4), zeros(5, 4), zeros(5, 4)],
        "mul", "only data movement"),
    "reduction into an epilogue": (lambda x, w: x.sum(axis=-1, keepdims=True) + x @ w,
                                   [zeros(4, 8), zeros(8, 8)], "sum",
                                   "a reduction does not fuse into a matmul/conv epilogue"),
    "output not the reduced shape": (lambda x: x.sum(axis=-1, keepdims=True) * 2, [zeros(4, 8)], "sum",
                                     "the kernel's output is not the shape the reduction reduces"),
    "other axes": (lambda x: x - x.max(axis=-1, keepdims=True) - x.mean(axis=0, keepdims=True),
                   [zeros(4, 8)], "max", "it reduces other axes or another shape"),
    "keepdims": (lambda x: x - x.sum(axis=-1)[:, None], [zeros(4, 8)], "sum",
                 "only reductions that keep their axes"),
    "data movement after a reduction": (lambda x: x - x.sum(axis=0, keepdims=True).T, [zeros(6, 6)], "sum",
                                        "data movement after the reduction would break the row order"),
    "epilogue changes dtype": (lambda x, w: (x @ w).astype(np.float64) + 1, [zeros(4, 8), zeros(8, 5)],
                               "matmul", "differs in shape or dtype"),
    "epilogue broadcasts to a bigger shape": (lambda x, w, b: x @ w + b,
                                              [zeros(4, 8), zeros(8, 5), zeros(3, 4, 5)], "matmul",
                                              "differs in shape or dtype"),
    "epilogue moves the result": (lambda x, w: (x @ w).T + 1, [zeros(6, 6), zeros(6, 6)], "matmul",
                                  "the epilogue moves or broadcasts the result"),
    "one matmul per epilogue": (lambda x, w, y, v: x @ w + y @ v,
                                [zeros(4, 8), zeros(8, 5), zeros(4, 3), zeros(3, 5)], "matmul",
                                "holds one matmul/conv2d and no reductions"),
    "no reduction after a matmul": (lambda x, w: (x @ w).sum(axis=-1), [zeros(4, 8), zeros(8, 5)], "matmul",
                                    "holds one matmul/conv2d and no reductions"),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_each_refusal_rule_gives_its_reason(name):
    fn, args, op, reason = REFUSALS[name]
    graph = minicomp.trace(fn, *args)
    groups, decisions = explain_fusion(graph)
    refused = [d for d in decisions if not d.fused and reason in d.reason]
    assert refused, f"no refusal '{reason}' in {decisions}"
    assert graph.find(refused[0].producer).op == op
    assert refused[0].bytes_saved == 0
    # fuse() follows the decision: the refused producer stays outside every fused body
    after = fuse(graph.copy())
    assert any(n.name == refused[0].producer.lstrip("%") for n in after.op_nodes())


def test_an_already_fused_node_is_opaque():
    graph = fuse(minicomp.trace(lambda x: x * 2 + 1, zeros(4, 8)))
    graph.set_outputs([graph.add_op("exp", [graph.outputs[0]])])
    _, decisions = explain_fusion(graph)
    assert [(d.producer, d.fused, d.reason) for d in decisions] == [
        ("%fused_add", False, "fused is opaque: it does not fuse")]


def test_taken_decisions_name_the_kernel_and_the_bytes_saved():
    graph = minicomp.trace(lambda x: np.tanh(np.exp(x) + 1), zeros(4, 8))
    groups, decisions = explain_fusion(graph)
    assert len(groups) == 1 and groups[0].pattern == "elemwise"
    assert {(d.producer, d.consumer) for d in decisions} == {("%exp", "%tanh"), ("%add", "%tanh")}
    assert all(d.fused and d.reason == "into the elemwise kernel" for d in decisions)
    assert all(d.bytes_saved == 2 * 4 * 8 * 4 for d in decisions)  # stored and loaded once each


def test_attention_members_are_explained():
    q, k = zeros(5, 4), zeros(7, 4)
    graph = minicomp.trace(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v), q, k, k)
    groups, decisions = explain_fusion(graph)
    [group] = groups
    assert group.pattern == "attention"
    members = {d.producer for d in decisions if d.fused}
    assert members == {f"%{n.name}" for n in group.nodes if n is not group.root}
    scores = next(d for d in decisions if graph.find(d.producer).op == "exp")
    assert scores.bytes_saved == 2 * 5 * 7 * 4  # the S x S matrix, never stored nor loaded


# ----------------------------------------------------------------------------------------------
# Statistics of fused graphs
# ----------------------------------------------------------------------------------------------


def test_a_fused_node_counts_as_one_kernel():
    graph, after = fused(lambda x, a: np.tanh(x * a) + x, zeros(16, 32), zeros(32))
    [node] = after.op_nodes()
    stats = node_stats(node)
    assert stats.flops == node_flops(node) == sum(node_flops(n) for n in graph.op_nodes()) == 3 * 16 * 32
    assert stats.bytes_read == (16 * 32 + 32) * 4  # x and a once each, though x is used twice
    assert stats.bytes_written == 16 * 32 * 4
    before, now = kernel_summary(graph), kernel_summary(after)
    assert (before.kernels, now.kernels) == (3, 1)
    assert before.flops == now.flops
    # before: mul reads x, a; tanh reads mul; add reads tanh, x; each writes 2 KB
    assert before.bytes_moved == (2048 + 128) + 2048 + 2 * 2048 + 3 * 2048
    assert now.bytes_moved == 2048 + 128 + 2048
    assert str(now) == "1 kernel, 4.2 KB moved, 1.5 KFLOP"


def test_format_stats_of_a_fused_graph():
    from minicomp.stats import format_stats

    _, after = fused(lambda x, w, w2: np.maximum(x @ w, 0) @ w2, zeros(4, 8), zeros(8, 8), zeros(8, 8))
    text = format_stats(after)
    assert "fused x1" in text and "2 kernels, 1 of them fused" in text
    assert graph_stats(after).histogram == {"fused": 1, "matmul": 1}


def default_pipeline(workload: str, size: str = "tiny") -> tuple[Graph, Graph]:
    w = WORKLOADS[workload]
    graph = minicomp.trace(w.fn, *[minicomp.TensorType(s, "f32") for s in w.shapes[size].values()])
    return graph, run_pipeline(graph)[0]


#: kernels after the default pipeline (at most, for block)
KERNELS = {"ew_chain": 1, "linear_gelu": 1, "mlp": 2, "softmax": 1, "layernorm": 1, "attention": 1,
           "matmul": 1, "block": 9, "conv_bn_relu": 1}


def test_kernels_of_the_nine_workloads():
    assert set(KERNELS) == set(WORKLOADS)
    for name, most in KERNELS.items():
        traced, optimised = default_pipeline(name)
        before, after = kernel_summary(traced), kernel_summary(optimised)
        assert after.kernels <= most if name == "block" else after.kernels == most, (name, after)
        assert before.kernels == len(traced.op_nodes())
        if name != "matmul":
            assert after.bytes_moved < before.bytes_moved, name
    assert kernel_summary(default_pipeline("mlp")[0]).kernels == 3


# ----------------------------------------------------------------------------------------------
# Results with fusion on and off
# ----------------------------------------------------------------------------------------------


@settings(max_examples=60)
@given(random_graphs())
def test_random_graphs_fused_match_the_interpreter(gen):
    fused_graph, _ = run_pipeline(gen.graph, ["fusion"])
    expected = minicomp.interpret(gen.graph, *gen.inputs)
    assert_close(minicomp.interpret(fused_graph, *gen.inputs), expected)
    assert_close(expected, gen.expected())
    assert_round_trips(fused_graph)


@settings(max_examples=8)
@given(random_graphs(max_nodes=10, dtypes=("f32", "f64", "i32"),
                     allow_ops=GENERATED_OPS - DISCONTINUOUS_OPS))
def test_random_graphs_fused_match_on_c(gen):
    expected = gen.expected()
    assert_outputs_close(minicomp.compile(gen.graph, target="c", passes=["fusion"])(*gen.inputs), expected, gen.graph)
    assert_outputs_close(minicomp.compile(gen.graph, target="c", passes=[])(*gen.inputs), expected, gen.graph)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", WORKLOADS)
def test_workloads_with_fusion_on_and_off_on_c(name, dtype):
    workload = WORKLOADS[name]
    args = workload.inputs("tiny", dtype=dtype)
    expected = workload.fn(*args)
    on = minicomp.jit(workload.fn)
    assert_close(on(*args), expected)
    assert_close(minicomp.jit(workload.fn, disable=["fusion"])(*args), expected)
    assert_close(minicomp.jit(workload.fn, target="numpy")(*args), expected)
    assert any(n.op == "fused" for n in on.inspect(*args).graph.op_nodes()) or name == "matmul"


def _attention_cases():
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(F32)

    return {
        "causal": (dict(causal=True), r(2, 9, 8), r(2, 9, 8), r(2, 9, 8)),
        "causal, more keys": (dict(causal=True), r(5, 4), r(11, 4), r(11, 4)),
        "more queries than keys": (dict(causal=True), r(3, 13, 4), r(3, 6, 4), r(3, 6, 4)),
        "Sq != Sk": ({}, r(2, 3, 17, 8), r(2, 3, 5, 8), r(2, 3, 5, 8)),
        "head size 1": ({}, r(4, 7, 1), r(4, 9, 1), r(4, 9, 1)),
        "value head differs": ({}, r(6, 3), r(8, 3), r(8, 5)),
        "batch broadcasting": ({}, r(2, 3, 6, 4), r(3, 7, 4), r(1, 7, 4)),
        "one query, one key": ({}, r(1, 4), r(1, 4), r(1, 4)),
        # the first keys of each query masked: the online softmax starts from max = -inf
        # (it once computed exp(-inf + inf) = NaN there)
        "leading keys masked": (dict(mask=np.triu(np.ones((5, 6), bool))), r(5, 4), r(6, 4), r(6, 3)),
        "a row fully masked": (dict(mask=np.arange(6) < np.array([[0], [2], [6]])), r(2, 3, 4), r(2, 6, 4),
                               r(2, 6, 3)),  # row 0 sees no key: NaN, as NumPy
        "float64": ({}, r(2, 7, 8).astype(np.float64), r(2, 5, 8).astype(np.float64),
                    r(2, 5, 8).astype(np.float64)),
    }


ATTENTION = _attention_cases()


@pytest.mark.parametrize("case", ATTENTION)
def test_attention_variants_fuse_and_match(case):
    options, q, k, v = ATTENTION[case]

    def attention(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, **options)

    expected = attention(q, k, v)
    compiled = minicomp.jit(attention)
    assert_close(compiled(q, k, v), expected)
    graph = compiled.inspect(q, k, v).graph
    assert [n.attrs.get("pattern") for n in graph.op_nodes()] == ["attention"]
    assert_close(minicomp.jit(attention, target="numpy")(q, k, v), expected)
    assert_close(minicomp.jit(attention, disable=["fusion"])(q, k, v), expected)


def statements(stmt):
    """Every statement of a loop-IR statement tree, itself first."""
    yield stmt
    children = [stmt.body] if isinstance(stmt, For) else stmt.stmts if isinstance(stmt, Block) else []
    for child in children:
        yield from statements(child)


def _scores_buffers(program, sq: int, sk: int) -> list:
    return [b for b in program.workspace if b.size % (sq * sk) == 0 and b.size >= sq * sk]


@pytest.mark.parametrize("causal", [False, True])
def test_attention_never_stores_the_scores(causal):
    b, sq, sk, d = 2, 19, 23, 8
    q, k = zeros(b, sq, d), zeros(b, sk, d)
    graph = minicomp.trace(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v, causal=causal), q, k, k)
    unfused = lower(graph)
    assert _scores_buffers(unfused, sq, sk)  # without fusion: the scores are stored
    program = lower(run_pipeline(graph)[0])
    assert _scores_buffers(program, sq, sk) == []
    [kernel] = program.kernels
    text = str(kernel)
    for local in ("m_new", "correction", "score", "acc"):
        assert re.search(rf"\b{local}\b", text), local
    allocations = [s for s in statements(kernel.body) if isinstance(s, Allocate)]
    assert [a.buffer.shape for a in allocations] == [(d,)]  # one output row of the head
    declared = {s.var.name for s in statements(kernel.body) if isinstance(s, Declare)}
    assert {"m", "l", "m_new", "correction", "p", "score"} <= declared  # the online softmax


def test_block_attention_kernel_is_online():
    traced, optimised = default_pipeline("block")
    program = lower(optimised)
    seq = WORKLOADS["block"].shapes["tiny"]["x"][0]
    assert _scores_buffers(program, seq, seq) == []
    assert any("m_new" in str(k) for k in program.kernels)
