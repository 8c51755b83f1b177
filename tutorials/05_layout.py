"""Tutorial 05: layout. NCHW vs NHWC for a conv chain; transposes placed and cancelled.

What you learn:

* The same images can be stored channels-first (NCHW: ``x[n, c, h, w]``) or channels-last
  (NHWC: ``x[n, h, w, c]``). Same numbers, another order in memory, and a transpose in between.
* Why the order matters for speed: which loop ends up innermost, and whether the C compiler can
  turn that loop into SIMD instructions. We look at the loops minicomp generates for a conv in
  each layout and see why one is ~8x faster than the other *with minicomp's current lowering*.
* A *cost model*: a few measured constants that estimate a conv's time in either layout, plus
  what the transposes cost, so the compiler can choose instead of guessing.
* The ``layout`` pass, in three local rewrites printed one after the other: *insert* a pair of
  transposes around every conv, *sink* the transposes down through batch norm and ReLU, *cancel*
  the pairs that meet (``transpose(transpose(x, p), p^-1) -> x``). What remains: one transpose
  where the chain starts and one where it ends.
* Measured: both layouts through the C target, against the model's estimate.

Run from anywhere:  python tutorials/05_layout.py
"""

# The compile cache is a directory of compiled libraries: use a fresh temporary one, so this
# tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial05-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import ctypes
import ctypes.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp import Graph, TensorType, nn
from minicomp.codegen.c import render_c
from minicomp.passes import layout
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import build
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def transposes(graph: Graph) -> int:
    return sum(node.op == "transpose" for node in graph.op_nodes())


def conv_layouts(graph: Graph) -> list[str]:
    return [node.attrs["layout"] for node in graph.op_nodes() if node.op == "conv2d"]


# ----------------------------------------------------------------------------------------------
step("Step 1: the same numbers in two orders")
# ----------------------------------------------------------------------------------------------
# A batch of 1 image with 3 channels of 2x2 pixels. NCHW keeps each channel's picture together;
# NHWC keeps each pixel's channels together. np.transpose(x, (0, 2, 3, 1)) goes from the first
# to the second (axis 1, the channels, moves to the end); (0, 3, 1, 2) goes back.
x = np.arange(12, dtype=np.float32).reshape(1, 3, 2, 2)
x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
print("NCHW in memory:", x.ravel())
print("NHWC in memory:", x_nhwc.ravel())
print(f"strides in elements, NCHW {tuple(s // 4 for s in x.strides)}, NHWC {tuple(s // 4 for s in x_nhwc.strides)}")
# Stepping to the next channel is a jump of 4 elements in NCHW, 1 in NHWC; stepping to the next
# column is 1 in NCHW, 3 in NHWC. Which one is "good" depends on what the innermost loop walks.
assert np.array_equal(x_nhwc.transpose(0, 3, 1, 2), x)

# ----------------------------------------------------------------------------------------------
step("Step 2: a conv chain, traced")
# ----------------------------------------------------------------------------------------------
# conv -> batch norm -> ReLU -> conv, as in every ResNet block. The weights are closed over, so
# they become constants of the graph (the pass can transpose constants at compile time).
rng = np.random.default_rng(0)
C, O, HW = 4, 8, 6
w1 = (rng.standard_normal((O, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
w2 = (rng.standard_normal((O, O, 3, 3)) / np.sqrt(9 * O)).astype(np.float32)
mean, gamma, beta = (rng.standard_normal(O).astype(np.float32) for _ in range(3))
var = (np.abs(rng.standard_normal(O)) + 0.5).astype(np.float32)


def block(x):
    y = nn.conv2d(x, w1, padding=1)
    y = np.maximum(nn.batch_norm(y, mean, var, gamma, beta), 0)
    return nn.conv2d(y, w2, padding=1)


small_x = rng.standard_normal((1, C, HW, HW)).astype(np.float32)
graph = minicomp.trace(block, small_x)
print(graph)
# nn.batch_norm reshapes each per-channel vector to (C, 1, 1) so that it broadcasts along the
# channel axis of NCHW: those are the f32[8,1,1] constants.

# ----------------------------------------------------------------------------------------------
step("Step 3: why the layout matters: the loops minicomp makes for a conv")
# ----------------------------------------------------------------------------------------------
# Lowering makes the innermost loop run along the output's LAST axis and adds "one input value
# times one weight" to a whole output row. That axis is the width OW in NCHW, the output
# channels O in NHWC. Here is the generated C for one padded 3x3 conv in each layout:


def conv_graph(layout_name: str) -> Graph:
    g = Graph(f"conv_{layout_name.lower()}")
    if layout_name == "NCHW":
        xs, ws = (1, C, HW, HW), (O, C, 3, 3)
    else:
        xs, ws = (1, HW, HW, C), (3, 3, C, O)
    gx, gw = g.add_input("x", TensorType(xs, "f32")), g.add_input("w", TensorType(ws, "f32"))
    g.set_outputs([g.add_op("conv2d", [gx, gw], {"padding": 1, "layout": layout_name}, name="conv")])
    return g


for layout_name in layout.LAYOUTS:
    source = render_c(lower(conv_graph(layout_name)))
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines) if "void k_conv(" in line)
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    print(f"--- {layout_name} ---")
    print("\n".join(lines[start:end + 1]))
# Read the innermost `for` of each:
#  * NCHW (loop over i3 = ow): the test "is column i3+rs-1 inside the image?" changes with i3,
#    so each element needs its own test (the zero padding), and x is read at i3+rs-1. gcc gives
#    up on SIMD: one multiply-add at a time.
#  * NHWC (loop over i3 = o): x[...rc] and the padding test do not depend on i3; the weight
#    row w[..., i3] and the output row are contiguous. That is "out += scalar * vector": gcc
#    emits SIMD code doing 8 or 16 multiply-adds per instruction.
# So here NHWC wins, but only because of how *this* lowering is written. A conv without padding
# and stride 1 vectorises in NCHW too; a conv with few output channels has too short an inner
# loop in NHWC to gain; a grouped conv reads x at o / (O/groups) in NHWC, which does not vectorise.

# ----------------------------------------------------------------------------------------------
step("Step 4: the cost model")
# ----------------------------------------------------------------------------------------------
# minicomp.passes.layout turns that into numbers measured on one core (its docstring has the
# table): a multiply-accumulate costs NS_PER_MAC_SCALAR when the inner loop stays scalar, and
# NS_PER_MAC_VECTOR plus NS_PER_INNER_LOOP / (loop length) when it vectorises; a transpose costs
# NS_PER_TRANSPOSED_BYTE per byte. A chain moves to the other layout only if its convs there plus
# the transposes converting adds are strictly cheaper.
print(f"NS_PER_MAC_SCALAR={layout.NS_PER_MAC_SCALAR}  NS_PER_MAC_VECTOR={layout.NS_PER_MAC_VECTOR}  "
      f"NS_PER_INNER_LOOP={layout.NS_PER_INNER_LOOP}  NS_PER_TRANSPOSED_BYTE={layout.NS_PER_TRANSPOSED_BYTE}")
(chain,) = layout.find_chains(graph, "NCHW")
print(layout.estimate(chain))
# The chain is both convs with the five batch-norm/ReLU ops between them. "+ N bytes" is what the
# transposes of x and of the result move (the weights are constants: transposed for free).

# ----------------------------------------------------------------------------------------------
step("Step 5: converting, one rewrite at a time")
# ----------------------------------------------------------------------------------------------
# convert_chain runs the three rewrites and calls `show` after each one.
converted = graph.copy()
(chain,) = layout.find_chains(converted, "NCHW")
counts = {}


def show(step_name: str, g: Graph) -> None:
    counts[step_name] = transposes(g)
    print(f"--- after {step_name}: {counts[step_name]} transposes ---")
    print(g)


layout.convert_chain(converted, chain, show)
# insert: each conv became  transpose(conv2d_NHWC(transpose(x), w_hwio))  (4 transposes); the
#         OIHW weights became HWIO constants at once.
# sink:   transpose(a) op b -> transpose(a op b'): the batch norm and the ReLU now run in NHWC,
#         each (8, 1, 1) vector became an (8,) vector (it broadcasts along the last axis), the
#         scalar 0 stayed as it was. The transpose moved down to just before the second conv's
#         own input transpose: two transposes that undo each other.
# cancel: transpose(transpose(x, (0,3,1,2)), (0,2,3,1)) -> x. Two transposes are left: the
#         input into NHWC, the result back into NCHW. The outputs keep their shape and dtype.
assert counts == {"insert": 4, "sink": 4, "cancel": 2}
assert conv_layouts(converted) == ["NHWC", "NHWC"]
assert converted.outputs[0].type == graph.outputs[0].type
converted.verify()

# ----------------------------------------------------------------------------------------------
step("Step 6: same results, interpreter and C")
# ----------------------------------------------------------------------------------------------
expected = block(small_x)
for name, g in [("NCHW (as traced)", graph), ("NHWC (converted)", converted)]:
    assert_close(minicomp.interpret(g, small_x)[0], expected)
    assert_close(build(g)(small_x)[0], expected)
    print(f"{name:<18} interpreter and C match NumPy")
# convert_to does it for every chain, in either direction: back to NCHW, everything cancels.
back = layout.convert_to(converted.copy(), "NCHW")
assert conv_layouts(back) == ["NCHW", "NCHW"] and transposes(back) == 0
assert_close(minicomp.interpret(back, small_x)[0], expected)
print(f"converted back to NCHW: {transposes(back)} transposes left, same result")

# ----------------------------------------------------------------------------------------------
step("Step 7: the pass in the pipeline, and when it says no")
# ----------------------------------------------------------------------------------------------
# "layout" runs in the default pipeline after the cleanups. Weights passed as arguments cannot be
# transposed at compile time, so each gets a transpose node (OIHW -> HWIO) of its own.
wl = WORKLOADS["conv_bn_relu"]
tiny_args = wl.inputs("tiny")
fn = minicomp.jit(wl.fn, target="c", passes=["layout"])
assert_close(fn(*tiny_args), wl.fn(*tiny_args))
print(fn.inspect(*tiny_args).graph)
# At this tiny size (4 output channels, 7x7) the model keeps NCHW: the NHWC inner loop would be
# 4 long, and gains nothing over a scalar loop. The same conv at "cpu" size (64 channels, 56x56):
cpu_graph = minicomp.trace(wl.fn, *[np.zeros(s, np.float32) for s in wl.shapes["cpu"].values()])
print(layout.estimate(layout.find_chains(cpu_graph, "NCHW")[0]))
assert conv_layouts(fn.inspect(*tiny_args).graph) == ["NCHW"]
assert conv_layouts(layout.layout(cpu_graph.copy())) == ["NHWC"]

# ----------------------------------------------------------------------------------------------
step("Step 8: measured: both layouts through the C target")
# ----------------------------------------------------------------------------------------------
# At "cpu" size: the conv_bn_relu workload, and the conv -> bn -> relu -> conv block with 64
# channels; and, as a counter-example, a 1x1 conv from 64 to 4 channels without padding, which
# the model keeps in NCHW. Each layout is forced with convert_to, then the rest of the default
# pipeline runs (fusion included). Times are medians of repeated calls after a warm-up, on one
# thread (what the model describes) and on all of them; results are asserted, timings reported.
libgomp = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
all_threads = libgomp.omp_get_max_threads()


def median_ms(call, threads: int, repeats: int = 5) -> float:
    libgomp.omp_set_num_threads(threads)
    try:
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3
    finally:
        libgomp.omp_set_num_threads(all_threads)


c64 = 64
big_w1, big_w2 = ((rng.standard_normal((c64, c64, 3, 3)) / 24).astype(np.float32) for _ in range(2))
big_bn = [rng.standard_normal(c64).astype(np.float32) for _ in range(4)]
big_bn[1] = np.abs(big_bn[1]) + np.float32(0.5)  # the variance


def big_block(x, w1, w2, mean, var, gamma, beta):
    y = nn.conv2d(x, w1, padding=1)
    y = np.maximum(nn.batch_norm(y, mean, var, gamma, beta), 0)
    return nn.conv2d(y, w2, padding=1)


def pointwise(x, w):
    return nn.conv2d(x, w)


big_x = rng.standard_normal((1, c64, 56, 56)).astype(np.float32)
cases = [("conv_bn_relu (workload)", wl.fn, wl.inputs("cpu")),
         ("conv-bn-relu-conv", big_block, [big_x, big_w1, big_w2, *big_bn]),
         ("1x1 conv 64->4, no pad", pointwise, [big_x, (rng.standard_normal((4, c64, 1, 1)) / 8).astype(np.float32)])]
header = (f"{'graph':<25}{'layout':<8}{'model ms':>10}{'1 thread ms':>13}"
          f"{f'{all_threads} threads ms':>14}   chosen by the pass")
print(header)
print("-" * len(header))
for name, function, args in cases:
    traced = minicomp.trace(function, *args)
    (estimate,) = layout.estimates(traced)
    reference = function(*args)
    for layout_name in layout.LAYOUTS:
        forced = layout.convert_to(traced.copy(), layout_name)
        optimised, _ = run_pipeline(forced, disable=["layout"])
        executable = build(optimised)
        assert_close(executable(*args)[0], reference)
        one = median_ms(lambda: executable(*args), 1)
        many = median_ms(lambda: executable(*args), all_threads)
        chosen = "<-" if estimate.best == layout_name else ""
        print(f"{name:<25}{layout_name:<8}{estimate.ns[layout_name] / 1e6:>10.2f}{one:>13.2f}{many:>14.2f}   {chosen}")
print(f"({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} while measuring; "
      f"the model ms are one-core estimates)")
# How to read it: on one thread the padded 3x3 convs run several times faster in NHWC, close to
# what the model predicts, and the transposes at the edges cost well under a millisecond. The
# 1x1 conv to 4 channels goes the other way: NCHW's inner loop is 56 long and vectorises, NHWC's
# is 4 long. With all threads the ratios usually hold, unless other processes busy the cores
# (a high load average): then every thread waits for the slowest and times scatter.
