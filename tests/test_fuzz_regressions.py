"""Bugs the random-graph fuzzer (``minicomp fuzz``, ``minicomp.testing.graphs``) found, each
kept as a fixed graph with fixed inputs, compiled for C and compared with the interpreter under
the fuzzer's tolerance policy (``assert_outputs_close``)."""

from __future__ import annotations

import numpy as np
import pytest

import minicomp
from minicomp.ir.graph import Graph
from minicomp.passes.fusion import fuse
from minicomp.testing.graphs import assert_outputs_close


def check(text: str, inputs: list[np.ndarray], passes=None) -> None:
    """The graph compiled for C computes what the interpreter computes."""
    graph = Graph.parse(text)
    compiled = minicomp.compile(graph, target="c", passes=passes)
    assert_outputs_close(compiled(*inputs), minicomp.interpret(graph, *inputs), graph)


# The attention pattern took softmax's max (or its sub, or its sum) into the fused kernel even
# when another op read it too: fusion then erased a node still in use ("cannot erase %max
# (max): still used by %transpose_1"). Found by tests/test_c_random_graphs.py after the
# generator learned attention; shrunk by hypothesis.
ATTENTION_WITH_A_SHARED_MAX = """graph random(%q: f32[1,1], %k: f32[1,1], %v: f32[1,1]) {
  %kt = transpose(%k) {perm=[1,0]} : f32[1,1]
  %scores = matmul(%q, %kt) : f32[1,1]
  %max = max(%scores) {axes=[1], keepdims=true} : f32[1,1]
  %sub = sub(%scores, %max) : f32[1,1]
  %exp = exp(%sub) : f32[1,1]
  %sum = sum(%exp) {axes=[1], keepdims=true} : f32[1,1]
  %div = div(%exp, %sum) : f32[1,1]
  %out = matmul(%div, %v) : f32[1,1]
  %other = transpose(%SHARED) {perm=[1,0]} : f32[1,1]
  return %out, %other
}"""


@pytest.mark.parametrize("shared", ["max", "sub", "sum"])
def test_attention_whose_softmax_parts_are_read_elsewhere(shared):
    text = ATTENTION_WITH_A_SHARED_MAX.replace("%SHARED", f"%{shared}")
    inputs = [np.array([[0.5]], np.float32), np.array([[-1.0]], np.float32), np.array([[-0.75]], np.float32)]
    fused = fuse(Graph.parse(text))  # raised GraphError
    patterns = {n.attrs["pattern"] for n in fused.op_nodes() if n.op == "fused"}
    assert "attention" not in patterns  # its max, sub or sum must stay a value of its own
    check(text, inputs)


# softmax(q @ k) @ v where v has a batch axis the probabilities lack (p: [1,1], v: [1,1,1]):
# the attention kernel indexed p by the output's batch axes ("3 indices for shape (1, 1)").
# Found by tests/test_fuzz.py (seed 59475258, graph 375).
ATTENTION_WITH_A_BATCHED_V = """graph random(%q: f32[1,2], %k: f32[1,2], %v: f32[1,1,1]) {
  %kt = transpose(%k) {perm=[1,0]} : f32[2,1]
  %scores = matmul(%q, %kt) : f32[1,1]
  %max = max(%scores) {axes=[1], keepdims=true} : f32[1,1]
  %sub = sub(%scores, %max) : f32[1,1]
  %exp = exp(%sub) : f32[1,1]
  %sum = sum(%exp) {axes=[1], keepdims=true} : f32[1,1]
  %div = div(%exp, %sum) : f32[1,1]
  %out = matmul(%div, %v) : f32[1,1,1]
  return %out
}"""


def test_attention_whose_values_add_a_batch_axis():
    inputs = [np.array([[0.5, 1.0]], np.float32), np.array([[-1.0, 0.25]], np.float32),
              np.array([[[-0.75]]], np.float32)]
    check(ATTENTION_WITH_A_BATCHED_V, inputs)


# softmax(q @ k^T) @ v with v of another float dtype than the scores: the attention lowering
# multiplied the probabilities by v's elements as loaded. C promoted silently; CUDA refused it
# (`double * __half`: two operators match), so nvcc failed. Found on an H100 by `minicomp fuzz
# --target cuda` (seed 3627910837, graph 228: f64 scores, f16 v; seed 12957056, graph 129: f32
# scores, f16 v). The lowering now casts, and verify_program refuses mixed float arithmetic
# in any target's loop IR.
def mixed_attention(q, k, v):
    scores = q @ k.transpose(0, 2, 1) * 0.25
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("scores, values", [("float64", "float16"), ("float32", "float16"),
                                            ("float32", "float64"), ("float16", "float32")])
def test_attention_whose_values_have_another_dtype(scores, values):
    from minicomp.ir.verify_loops import verify_program
    from minicomp.runtime import nvcc
    from minicomp.stages import run_stages
    from minicomp.target import cuda_target
    from minicomp.testing.backends import has_nvcc

    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((2, 3, 5)).astype(scores), rng.standard_normal((2, 4, 5)).astype(scores)
    v = rng.standard_normal((2, 4, 6)).astype(values)
    graph = minicomp.trace(mixed_attention, q, k, v)
    fused = fuse(graph)
    assert "attention" in {n.attrs["pattern"] for n in fused.op_nodes() if n.op == "fused"}
    for target in ("c", "gpu-serial-c"):
        assert_outputs_close(minicomp.compile(graph, target=target)(q, k, v), minicomp.interpret(graph, q, k, v),
                             graph)
    program, _ = run_stages(fused, cuda_target("sm_90"), stop_after="schedule")
    verify_program(program)
    if has_nvcc():  # the CUDA it renders compiles
        source, _ = run_stages(fused, cuda_target("sm_90"), stop_after="render")
        nvcc.build_cubin(source.text, "sm_90", name="mixed_attention")


# Attention whose v has no columns: the row's accumulator is a local array of 0 elements, which
# C renders as `double b_acc[0];` (gcc takes it) and nvcc refuses ("zero-sized variable is not
# allowed in device code"). Found by test_random_graphs_render_cuda_that_nvcc_compiles (seed
# 123, graph 118). Arrays are declared with at least one element.
def test_attention_whose_values_have_no_columns():
    from minicomp.runtime import nvcc
    from minicomp.stages import run_stages
    from minicomp.target import cuda_target
    from minicomp.testing.backends import has_nvcc

    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), np.zeros((2, 5, 0))
    graph = minicomp.trace(mixed_attention, q, k, v)
    for target in ("c", "gpu-serial-c"):
        [out] = minicomp.compile(graph, target=target)(q, k, v)
        assert out.shape == (2, 3, 0)
    source, _ = run_stages(fuse(graph), cuda_target("sm_90"), stop_after="render")
    assert "[0];" not in source.text and "b_acc[1];" in source.text
    if has_nvcc():
        nvcc.build_cubin(source.text, "sm_90", name="empty_head")
