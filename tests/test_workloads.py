"""The nine benchmark workloads trace from their plain NumPy form and the interpreter matches
NumPy: at "cpu" size in float32, at "tiny" size in float32 and float64; at "gpu" size they trace
from types alone (no data) into graphs with the right output shapes.
"""

import numpy as np
import pytest

import minicomp
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS

NAMES = sorted(WORKLOADS)

# The output shape of each workload, from its argument shapes (written out independently).
OUTPUT_SHAPE = {
    "ew_chain": lambda s: s["x"],
    "linear_gelu": lambda s: s["x"][:-1] + s["w"][-1:],
    "mlp": lambda s: s["x"][:-1] + s["w2"][-1:],
    "softmax": lambda s: s["x"],
    "layernorm": lambda s: s["x"],
    "attention": lambda s: s["q"][:-1] + s["v"][-1:],
    "matmul": lambda s: s["a"][:-1] + s["b"][-1:],
    "block": lambda s: s["x"],
    "conv_bn_relu": lambda s: (s["x"][0], s["w"][0]) + s["x"][2:],  # 3x3, padding 1: same H, W
}


def test_there_are_nine_workloads_with_three_sizes():
    assert set(WORKLOADS) == set(OUTPUT_SHAPE)
    for workload in WORKLOADS.values():
        assert set(workload.shapes) == {"tiny", "cpu", "gpu"}
        assert workload.description


def run_and_compare(workload, args):
    graph = minicomp.trace(workload.fn, *args)
    graph.verify()
    assert len(graph.inputs) == len(args)  # every argument is a graph input: no large constants
    actual = minicomp.interpret(graph, *args)
    assert len(actual) == 1
    assert_close(actual[0], workload.fn(*args))
    return graph


@pytest.mark.parametrize("name", NAMES)
def test_cpu_size_matches_numpy(name):
    workload = WORKLOADS[name]
    args = workload.inputs("cpu")
    graph = run_and_compare(workload, args)
    assert [i.name for i in graph.inputs] == list(workload.shapes["cpu"])
    assert graph.outputs[0].shape == OUTPUT_SHAPE[name](workload.shapes["cpu"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_size_matches_numpy(name, dtype):
    workload = WORKLOADS[name]
    args = workload.inputs("tiny", dtype=dtype, seed=1)
    assert all(a.dtype == dtype for a in args)
    graph = run_and_compare(workload, args)
    assert graph.outputs[0].dtype == dtype
    assert graph.outputs[0].shape == OUTPUT_SHAPE[name](workload.shapes["tiny"])


@pytest.mark.parametrize("name", NAMES)
def test_gpu_size_traces_from_types(name):
    workload = WORKLOADS[name]
    shapes = workload.shapes["gpu"]
    graph = minicomp.trace(workload.fn, *[minicomp.TensorType(s, "f32") for s in shapes.values()])
    graph.verify()
    assert [i.type for i in graph.inputs] == [minicomp.TensorType(s, "f32") for s in shapes.values()]
    assert len(graph.outputs) == 1
    assert graph.outputs[0].type == minicomp.TensorType(OUTPUT_SHAPE[name](shapes), "f32")


def test_inputs_are_reproducible_and_sized():
    workload = WORKLOADS["layernorm"]
    a, b = workload.inputs("tiny", seed=3), workload.inputs("tiny", seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert [x.shape for x in a] == list(workload.shapes["tiny"].values())
    conv = WORKLOADS["conv_bn_relu"].inputs("tiny")
    assert conv[3].min() > 0  # the variance argument is positive
