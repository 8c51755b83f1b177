"""The layout pass: NCHW or NHWC per conv chain, transposes inserted, sunk and cancelled.

Textual before/after on conv -> bn -> relu -> conv; the cost model's choices; equal results with
the pass on and off on random conv chains (interpreter, and a few through C); the conv_bn_relu
workload in both layouts against NumPy; graphs without convs untouched.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp
from minicomp import Graph, TensorType, nn
from minicomp.passes import layout as L
from minicomp.passes.pipeline import get_pass, pipeline_names, run_pipeline
from minicomp.stages import build
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS


def ops(graph: Graph, op: str) -> list:
    return [n for n in graph.op_nodes() if n.op == op]


def conv_layouts(graph: Graph) -> list[str]:
    return [n.attrs["layout"] for n in ops(graph, "conv2d")]


# ----------------------------------------------------------------------------------------------
# conv -> bn -> relu -> conv, by tracing NumPy code
# ----------------------------------------------------------------------------------------------

RNG = np.random.default_rng(7)
W1 = (RNG.standard_normal((8, 4, 3, 3)) / 6).astype(np.float32)
W2 = (RNG.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32)
MEAN, GAMMA, BETA = (RNG.standard_normal(8).astype(np.float32) for _ in range(3))
VAR = (np.abs(RNG.standard_normal(8)) + 0.5).astype(np.float32)


def conv_bn_relu_conv(x):
    """Weights closed over: they become constants, which the pass transposes at compile time."""
    y = nn.conv2d(x, W1, padding=1)
    y = np.maximum(nn.batch_norm(y, MEAN, VAR, GAMMA, BETA), 0)
    return nn.conv2d(y, W2, padding=1)


def conv_bn_relu_conv_args(x, w1, w2):
    """Weights as arguments: each one needs a transpose node (OIHW -> HWIO) at run time."""
    y = nn.conv2d(x, w1, padding=1)
    y = np.maximum(nn.batch_norm(y, MEAN, VAR, GAMMA, BETA), 0)
    return nn.conv2d(y, w2, padding=1)


X = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)


def test_conv_bn_relu_conv_has_transposes_only_at_the_edges():
    before = minicomp.trace(conv_bn_relu_conv, X)
    assert conv_layouts(before) == ["NCHW", "NCHW"] and not ops(before, "transpose")
    after = L.convert_to(before.copy(), "NHWC")
    after.verify()
    text = after.to_text()
    # exactly one transpose in (the input) and one out (the result), nothing in between
    assert conv_layouts(after) == ["NHWC", "NHWC"]
    transposes = ops(after, "transpose")
    assert len(transposes) == 2, text
    assert "%x_to_nhwc = transpose(%x) {perm=[0,2,3,1]} : f32[2,9,9,4]" in text
    assert after.outputs[0].op == "transpose" and after.outputs[0].attrs["perm"] == (0, 3, 1, 2)
    assert after.outputs[0].operands[0].op == "conv2d"
    assert 'layout="NCHW"' not in text
    # batch norm and relu run in NHWC on per-channel vectors of shape (C,)
    for node in after.op_nodes():
        if node.op in ("sub", "div", "mul", "add", "maximum") and node.type.ndim == 4:
            assert node.shape == (2, 9, 9, 8)
            assert all(o.type.ndim in (0, 1, 4) for o in node.operands), text
    assert after.outputs[0].type == before.outputs[0].type
    assert_close(minicomp.interpret(after, X)[0], conv_bn_relu_conv(X))


def test_weights_as_arguments_get_one_transpose_each():
    w1, w2 = W1.copy(), W2.copy()
    after = L.convert_to(minicomp.trace(conv_bn_relu_conv_args, X, w1, w2), "NHWC")
    perms = sorted(t.attrs["perm"] for t in ops(after, "transpose"))
    assert perms == [(0, 2, 3, 1), (0, 3, 1, 2), (2, 3, 1, 0), (2, 3, 1, 0)]
    assert {t.operands[0].name for t in ops(after, "transpose") if t.attrs["perm"] == (2, 3, 1, 0)} == {"w1", "w2"}
    assert_close(minicomp.interpret(after, X, w1, w2)[0], conv_bn_relu_conv_args(X, w1, w2))


def test_steps_insert_sink_cancel():
    graph = minicomp.trace(conv_bn_relu_conv, X)
    (chain,) = L.find_chains(graph, "NCHW")
    assert [n.op for n in chain.members] == ["conv2d", "sub", "div", "mul", "add", "maximum", "conv2d"]
    counts = {}
    L.convert_chain(graph, chain, show=lambda step, g: counts.setdefault(step, len(ops(g, "transpose"))))
    # insert: in and out around each conv (4); sink: relu's transpose moved down, still 4 (two
    # of them an inverse pair); cancel: the pair between the convs is gone
    assert counts == {"insert": 4, "sink": 4, "cancel": 2}


def test_round_trip_back_to_nchw_leaves_no_transposes():
    graph = minicomp.trace(conv_bn_relu_conv_args, X, W1, W2)
    back = L.convert_to(L.convert_to(graph.copy(), "NHWC"), "NCHW")
    assert conv_layouts(back) == ["NCHW", "NCHW"] and not ops(back, "transpose")
    assert_close(minicomp.interpret(back, X, W1, W2)[0], conv_bn_relu_conv_args(X, W1, W2))


def test_registered_and_in_the_default_pipeline():
    assert get_pass("layout") is L.layout
    names = pipeline_names()
    assert names.index("dce") < names.index("layout") < names.index("fusion")


# ----------------------------------------------------------------------------------------------
# The cost model
# ----------------------------------------------------------------------------------------------


def single_conv(c, o, hw, k, padding, stride=1, groups=1, layout="NCHW") -> Graph:
    g = Graph("conv")
    if layout == "NCHW":
        x = g.add_input("x", TensorType((1, c, hw, hw), "f32"))
        w = g.add_input("w", TensorType((o, c // groups, k, k), "f32"))
    else:
        x = g.add_input("x", TensorType((1, hw, hw, c), "f32"))
        w = g.add_input("w", TensorType((k, k, c // groups, o), "f32"))
    g.set_outputs([g.add_op("conv2d", [x, w], {"padding": padding, "strides": stride,
                                                "groups": groups, "layout": layout})])
    return g


def test_cost_model_prefers_nhwc_for_the_cpu_workload():
    wl = WORKLOADS["conv_bn_relu"]
    shapes = wl.shapes["cpu"]
    graph = minicomp.trace(wl.fn, *[np.zeros(s, np.float32) for s in shapes.values()])
    (est,) = L.estimates(graph)
    assert est.best == "NHWC"
    assert est.ns["NCHW"] > 5 * est.ns["NHWC"]  # measured: ~93 ms vs ~10 ms on one core
    # transposed: x in, the result out, and the weight (an argument), plus 4 vectors of 64
    assert est.transposed_bytes == 4 * (64 * 56 * 56 * 2 + 64 * 64 * 9) + 4 * 4 * 64
    after = L.layout(graph)
    assert conv_layouts(after) == ["NHWC"]


@pytest.mark.parametrize("case, expected", [
    (dict(c=64, o=64, hw=56, k=3, padding=1), "NHWC"),            # padding: NCHW inner loop scalar
    (dict(c=64, o=64, hw=56, k=3, padding=1, stride=2), "NHWC"),  # stride: NCHW reads x with gaps
    (dict(c=64, o=4, hw=56, k=1, padding=0), "NCHW"),             # NHWC inner loop only 4 long
    (dict(c=64, o=64, hw=56, k=3, padding=1, groups=4), "NCHW"),  # both scalar: a tie keeps NCHW
    (dict(c=64, o=4, hw=56, k=1, padding=0, layout="NHWC"), "NCHW"),  # and the other way round
])
def test_cost_model_choices(case, expected):
    graph = single_conv(**case)
    before = graph.to_text()
    after = L.layout(graph.copy())
    assert conv_layouts(after) == [expected]
    if expected == case.get("layout", "NCHW"):
        assert after.to_text() == before  # kept: untouched


def test_pass_is_idempotent():
    graph = minicomp.trace(conv_bn_relu_conv_args, X, W1, W2)
    once = L.layout(L.convert_to(graph.copy(), "NHWC"))
    assert L.layout(once.copy()).to_text() == once.to_text()


def test_graph_without_convs_is_unchanged():
    g = Graph("no_convs")
    x = g.add_input("x", TensorType((2, 3, 4, 5), "f32"))
    t = g.add_op("transpose", [x], {"perm": (0, 2, 3, 1)})
    back = g.add_op("transpose", [t], {"perm": (0, 3, 1, 2)})  # a pair the pass must not touch
    y = g.add_op("maximum", [back, g.add_constant(np.float32(0))])
    g.set_outputs([g.add_op("exp", [y]), t])
    before = g.to_text()
    after, _ = run_pipeline(g, ["layout"])
    assert after.to_text() == before
    assert L.convert_to(g.copy(), "NHWC").to_text() == before


# ----------------------------------------------------------------------------------------------
# Random conv chains: equal results with the pass on and off
# ----------------------------------------------------------------------------------------------


def four_pads(padding) -> tuple[int, int, int, int]:
    """conv2d's padding attribute as (top, bottom, left, right)."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0],) * 2 + (padding[1],) * 2
    return tuple(padding)


@st.composite
def conv_chains(draw):
    """A random chain: 1-3 convs (any kernel, stride, padding, dilation, groups) in either
    layout, each followed by some of bias, batch norm, relu, a residual add, a scale, tanh, or an
    add of a full-size argument; weights constants or arguments; sometimes two outputs."""
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, c, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    const_weights = draw(st.booleans())
    g = Graph("chain")
    args = []

    def argument(name, shape, positive=False):
        value = rng.standard_normal(shape).astype(np.float32)
        if positive:
            value = np.abs(value) + np.float32(0.5)
        args.append(value)
        return g.add_input(name, TensorType(shape, "f32"))

    def per_channel(name, o, positive=False):
        shape = (o, 1, 1) if layout == "NCHW" else (o,)
        if draw(st.booleans()):
            return argument(name, shape, positive)
        value = rng.standard_normal(shape).astype(np.float32)
        return g.add_constant(np.abs(value) + np.float32(0.5) if positive else value, name=name)

    def channels(shape):
        return shape[1] if layout == "NCHW" else shape[3]

    act = argument("x", (n, c, h, w) if layout == "NCHW" else (n, h, w, c))
    outputs = []
    for layer in range(draw(st.integers(1, 3))):
        cin, height, width = channels(act.shape), *(act.shape[2:] if layout == "NCHW" else act.shape[1:3])
        o = draw(st.integers(1, 5))
        groups = draw(st.sampled_from([gr for gr in range(1, cin + 1) if cin % gr == 0 and o % gr == 0]))
        padding = draw(st.sampled_from([0, 1, 2, (1, 0), (0, 1, 1, 0)]))
        top, bottom, left, right = four_pads(padding)
        pt_pb, pl_pr = top + bottom, left + right
        r = min(draw(st.integers(1, 3)), height + pt_pb)
        s = min(draw(st.integers(1, 3)), width + pl_pr)
        dilation = draw(st.sampled_from([1, 2]))
        if dilation * (r - 1) + 1 > height + pt_pb or dilation * (s - 1) + 1 > width + pl_pr:
            dilation = 1
        stride = draw(st.sampled_from([1, 2, (2, 1)]))
        wshape = (o, cin // groups, r, s) if layout == "NCHW" else (r, s, cin // groups, o)
        if const_weights:
            weight = g.add_constant((rng.standard_normal(wshape) / np.sqrt(cin * r * s)).astype(np.float32), name="w")
        else:
            weight = argument(f"w{layer}", wshape)
        residual = act
        act = g.add_op("conv2d", [act, weight], {"padding": padding, "strides": stride, "dilation": dilation,
                                                 "groups": groups, "layout": layout})
        for extra in draw(st.lists(st.sampled_from(["bias", "bn", "relu", "residual", "scale", "tanh", "outside"]),
                                   max_size=3)):
            if extra == "bias":
                act = g.add_op("add", [act, per_channel("bias", o)])
            elif extra == "bn":
                act = g.add_op("sub", [act, per_channel("mean", o)])
                act = g.add_op("div", [act, g.add_op("sqrt", [per_channel("var", o, positive=True)])])
                act = g.add_op("add", [g.add_op("mul", [act, per_channel("gamma", o)]), per_channel("beta", o)])
            elif extra == "relu":
                act = g.add_op("maximum", [act, g.add_constant(np.float32(0), name="zero")])
            elif extra == "residual" and residual.shape == act.shape:
                act = g.add_op("add", [act, residual])
            elif extra == "scale":
                act = g.add_op("mul", [g.add_constant(np.float32(0.5), name="half"), act])
            elif extra == "tanh":
                act = g.add_op("tanh", [act])
            elif extra == "outside":  # a full-size argument: the chain cannot take it along
                act = g.add_op("add", [act, argument("other", act.shape)])
        if draw(st.booleans()):
            outputs.append(act)
    g.set_outputs(outputs + [act])
    g.verify()
    return g, args


def variants(graph: Graph):
    yield "NHWC", L.convert_to(graph.copy(), "NHWC")
    yield "NCHW", L.convert_to(graph.copy(), "NCHW")
    yield "pass", run_pipeline(graph, ["layout"])[0]


@given(conv_chains())
def test_random_chains_same_results_interpreter(chain):
    graph, args = chain
    expected = minicomp.interpret(graph, *args)
    for name, converted in variants(graph):
        converted.verify()
        assert [o.type for o in converted.outputs] == [o.type for o in graph.outputs], name
        if name != "pass":
            assert set(conv_layouts(converted)) == {name}
        for t in ops(converted, "transpose"):  # every inverse pair was cancelled
            assert t.operands[0].op != "transpose", converted
        assert_close(minicomp.interpret(converted, *args), expected)
    original = conv_layouts(graph)[0]
    there_and_back = L.convert_to(L.convert_to(graph.copy(), L.other(original)), original)
    assert not ops(there_and_back, "transpose"), f"{graph}\n{there_and_back}"
    assert_close(minicomp.interpret(there_and_back, *args), expected)


@settings(max_examples=4)
@given(conv_chains())
def test_random_chains_same_results_c(chain):
    graph, args = chain
    expected = minicomp.interpret(graph, *args)
    converted = L.convert_to(graph.copy(), L.other(conv_layouts(graph)[0]))
    assert_close(build(converted)(*args), expected)


# ----------------------------------------------------------------------------------------------
# The conv_bn_relu workload
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_conv_bn_relu_tiny_matches_numpy_in_both_layouts(layout):
    wl = WORKLOADS["conv_bn_relu"]
    args = wl.inputs("tiny")
    expected = wl.fn(*args)
    graph = L.convert_to(minicomp.trace(wl.fn, *args), layout)
    assert conv_layouts(graph) == [layout]
    assert_close(minicomp.interpret(graph, *args)[0], expected)
    assert_close(build(graph)(*args)[0], expected)


def test_conv_bn_relu_tiny_through_jit_with_the_pass():
    wl = WORKLOADS["conv_bn_relu"]
    args = wl.inputs("tiny")
    assert_close(minicomp.jit(wl.fn, target="c", passes=["layout"])(*args), wl.fn(*args))
    assert_close(minicomp.jit(wl.fn, target="c")(*args), wl.fn(*args))  # the default pipeline


def test_a_transpose_of_fewer_dimensions_broadcast_into_a_chain_is_not_free_to_move():
    """A 3-D transpose of the same size as a 4-D conv result (it broadcasts in) is not undone by
    the 4-D layout change: it stays out of the chain (it raised an IndexError; the fuzzer found it)."""
    g = Graph("g")
    x = g.add_input("x", TensorType((1, 2, 3, 3), np.float32))
    w = g.add_input("w", TensorType((2, 2, 1, 1), np.float32))
    y = g.add_input("y", TensorType((3, 3, 2), np.float32))
    conv = g.add_op("conv2d", [x, w])
    g.set_outputs([g.add_op("add", [conv, g.add_op("transpose", [y], {"perm": (2, 0, 1)})])])
    assert [c.members for c in L.find_chains(g, "NCHW")] == [[conv]]
    args = [np.random.default_rng(0).standard_normal(t.shape).astype(np.float32) for t in (x.type, w.type, y.type)]
    expected = minicomp.interpret(g, *args)
    assert_close(minicomp.compile(g, target="c")(*args), expected)  # the default passes, layout among them
