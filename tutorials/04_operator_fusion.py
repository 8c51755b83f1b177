"""Tutorial 04: operator fusion. Which ops become one kernel, what it saves, and why (not).

What you learn:

* Run one kernel per op and every intermediate makes a round trip through memory: written by
  one kernel, read back by the next. *Fusion* groups ops into one kernel, so intermediates stay
  in registers and caches. On memory-bound code (most of a network that is not a matmul) the
  bytes moved are the time spent.
* The kinds of fusion minicomp does, each decided from the ops' *pattern kinds* (the op
  table's ``kind``, as TVM's FuseOps does): **elemwise** chains, producers inlined into a
  **reduce**, a reduction with its epilogue per **row** (softmax, layer norm), **epilogue**s of
  matmul and conv2d (bias, GELU, batch norm, ReLU), and **attention** (FlashAttention's online
  softmax: the S x S scores never exist).
* Reading the result: the fused graph, each fused node's *body* (a small graph of its own),
  kernels and estimated bytes before and after (``minicomp.stats.kernel_summary``).
* Why something was *not* fused: ``minicomp.explain`` lists every decision, taken or refused,
  with its reason and the bytes it saves.
* What a fused kernel looks like as loops: the softmax row kernel and the online-softmax
  attention kernel.
* Measured: fusion on vs off through the C target (``jit(fn, disable=["fusion"])``).

Run from the repository root:  python tutorials/04_operator_fusion.py
(command-line twins: ``minicomp explain --workload softmax``, ``minicomp dump ... --disable
fusion --print-between-passes``)
"""

# A fresh compile cache in a temporary directory, set before minicomp is imported: the
# tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial04-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

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

from minicomp import TensorType, nn
from minicomp.tools.explain import explanation
from minicomp.passes.fusion import explain_fusion
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.stats import human, kernel_summary, minimum_bytes
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS

F32 = np.float32
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def fuse_only(fn, *args):
    """(graph as traced, graph after the fusion pass alone)."""
    graph = minicomp.trace(fn, *args)
    return graph, run_pipeline(graph, ["fusion"])[0]


def fused_nodes(graph):
    return [n for n in graph.op_nodes() if n.op == "fused"]


def before_after(graph, after) -> str:
    b, a = kernel_summary(graph), kernel_summary(after)
    return (f"kernels {b.kernels} -> {a.kernels}, estimated bytes moved {human(b.bytes_moved)} -> "
            f"{human(a.bytes_moved)} ({a.bytes_moved / b.bytes_moved:.0%})")


# ----------------------------------------------------------------------------------------------
step("Step 1: elementwise chains (pattern 'elemwise')")
# ----------------------------------------------------------------------------------------------
# gelu(x*a + b) is eleven elementwise ops. One kernel per op writes ten intermediates of x's
# size and reads each back. Fused, one loop reads x, a, b once and writes the result once:
# the whole expression is inlined at each index (the ops' compute rules, tutorial 06).


def gelu(v):
    return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def bias_gelu(x, a, b):
    return gelu(x * a + b)


x = rng.standard_normal((256, 512), dtype=F32)
a, b = rng.standard_normal(512, dtype=F32), rng.standard_normal(512, dtype=F32)
graph, after = fuse_only(bias_gelu, x, a, b)
print(graph)
print("\n--- after fusion: the fused node, and its body printed as a graph of its own ---\n")
print(after)
[node] = fused_nodes(after)
assert node.attrs["pattern"] == "elemwise" and len(node.attrs["body"].op_nodes()) == 11
print("\n" + before_after(graph, after))
# The text form names the body (body=@bias_gelu_fused_0) and prints it first; Graph.parse reads
# the whole thing back, bodies included:
assert minicomp.Graph.parse(after.to_text(None)).to_text(None) == after.to_text(None)
assert_close(minicomp.interpret(after, x, a, b)[0], bias_gelu(x, a, b))

# ----------------------------------------------------------------------------------------------
step("Step 2: producers into a reduction ('reduce') and rows ('row')")
# ----------------------------------------------------------------------------------------------
# A reduction inlines the elementwise ops that feed it: sum(x*x) never stores x*x.
# A reduction whose result is broadcast back over the row it reduced (keepdims=True) fuses
# with the ops around it: softmax (max, sub, exp, sum, div) is one kernel per row, the row
# read from memory once and then from cache; layer norm likewise.


def sum_of_squares(x):
    return np.sum(x * x, axis=-1)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


for fn, args, pattern in [(sum_of_squares, (x,), "reduce"), (softmax, (x,), "row"),
                          (layernorm, (x, a, b), "row")]:
    graph, after = fuse_only(fn, *args)
    [node] = fused_nodes(after)
    ops = [n.op for n in node.attrs["body"].op_nodes()]
    print(f"{fn.__name__:<15} pattern {node.attrs['pattern']!r:<9} body {', '.join(ops)}")
    print(f"{'':<15} {before_after(graph, after)}")
    assert node.attrs["pattern"] == pattern and len(after.op_nodes()) == 1
    assert_close(minicomp.interpret(after, *args)[0], fn(*args))
print("\nthe softmax, fused:\n")
print(fuse_only(softmax, x)[1])

# ----------------------------------------------------------------------------------------------
step("Step 3: epilogues of matmul and conv2d ('epilogue')")
# ----------------------------------------------------------------------------------------------
# matmul accumulates one output row; the elementwise ops after it (bias, GELU, ReLU, a batch
# norm folded into scale and shift, a residual) finish that row while it is still in cache.
# The matmul's result is never written and read back; the epilogue costs no extra pass.


def linear_gelu(x, w, b):
    return gelu(x @ w + b)


def conv_bn_relu(x, w, mean, var, gamma, beta):
    return np.maximum(nn.batch_norm(nn.conv2d(x, w, padding=1), mean, var, gamma, beta), 0)


w = rng.standard_normal((512, 256), dtype=F32) / F32(np.sqrt(512))
bias = rng.standard_normal(256, dtype=F32)
img = rng.standard_normal((2, 8, 16, 16), dtype=F32)
kernel_w = rng.standard_normal((16, 8, 3, 3), dtype=F32) / F32(8)
stats = [rng.standard_normal(16, dtype=F32), np.abs(rng.standard_normal(16, dtype=F32)) + F32(0.5),
         rng.standard_normal(16, dtype=F32), rng.standard_normal(16, dtype=F32)]
for fn, args in [(linear_gelu, (x, w, bias)), (conv_bn_relu, (img, kernel_w, *stats))]:
    graph, after = fuse_only(fn, *args)
    [node] = fused_nodes(after)
    ops = [n.op for n in node.attrs["body"].op_nodes()]
    print(f"{fn.__name__:<13} pattern {node.attrs['pattern']!r} body {', '.join(ops)}")
    print(f"{'':<13} {before_after(graph, after)}")
    assert node.attrs["pattern"] == "epilogue" and ops[0] in ("matmul", "conv2d")
    assert_close(minicomp.interpret(after, *args)[0], fn(*args))

# ----------------------------------------------------------------------------------------------
step("Step 4: attention ('attention')")
# ----------------------------------------------------------------------------------------------
# softmax(q k^T * scale) v. Unfused, the S x S score matrix is written, read for the max,
# written again after exp, read for the sum and again for the divide, then read by the second
# matmul. The attention kernel keeps, per query row, a running max m, a running sum l and one
# output row acc; each new key's score rescales what came before by exp(m_old - m_new): the
# online softmax of FlashAttention. Scores exist one at a time, in a register.


def attention(q, k, v):
    return nn.scaled_dot_product_attention(q, k, v, causal=True)


q, k, v = (rng.standard_normal((4, 128, 64), dtype=F32) for _ in range(3))
graph, after = fuse_only(attention, q, k, v)
print(after)
[node] = fused_nodes(after)
assert node.attrs["pattern"] == "attention"
print("\n" + before_after(graph, after))
assert_close(minicomp.interpret(after, q, k, v)[0], attention(q, k, v))

# ----------------------------------------------------------------------------------------------
step("Step 5: why (not) fused: explain")
# ----------------------------------------------------------------------------------------------
# Fusion walks from the outputs back to the inputs and asks, for each op: do all its users
# sit in one kernel, and may it join that kernel? minicomp.explain prints every answer with
# its reason, the kernels formed, and a before/after summary (the default pipeline, so the
# cleanup passes ran first). An MLP: the first matmul takes the ReLU as its epilogue, but the
# ReLU's result may not fuse into the *second* matmul: a matmul reads each input element
# many times (once per output column), so an inlined producer would be recomputed each time.


def mlp(x, w1, w2):
    return np.maximum(x @ w1, 0) @ w2


w1 = rng.standard_normal((512, 1024), dtype=F32) / F32(np.sqrt(512))
w2 = rng.standard_normal((1024, 256), dtype=F32) / F32(32)
print(minicomp.explain(mlp, x, w1, w2))
result = explanation(mlp, x, w1, w2)
[refused] = result.refused_decisions
assert refused.producer == "%maximum" and "it feeds matmul" in refused.reason
assert (result.before.kernels, result.after.kernels) == (3, 2)

# More refusals, one line each (explain_fusion is what explain prints from):


def shared(x):  # e feeds two reductions over different axes: two kernels
    e = np.exp(x)
    return e.sum(axis=0), e.max(axis=1)


def returned(x):  # e is returned *and* used: it must be stored anyway
    e = np.exp(x)
    return e, e * 2


def transposed_sum(x):  # a row's result, moved to another layout, no longer matches the rows
    return x - x.sum(axis=0, keepdims=True).T


print()
for fn in (shared, returned, transposed_sum):
    _, decisions = explain_fusion(minicomp.trace(fn, np.zeros((64, 64), F32)))
    for d in decisions:
        if not d.fused:
            print(f"{fn.__name__:<15} refused {d.producer} -> {d.consumer}: {d.reason}")
            assert d.reason

# ----------------------------------------------------------------------------------------------
step("Step 6: a fused kernel as loops")
# ----------------------------------------------------------------------------------------------
# Lowering turns each fused node into ONE loop nest. The softmax row kernel: per row, the max
# and the sum are reductions held in locals (v_max, v_sum); one last loop stores the result.
# x is read three times per row, but a row of 512 floats (2 KB) stays in L1 after the first.
program = lower(run_pipeline(minicomp.trace(softmax, x))[0])
assert len(program.kernels) == 1 and program.workspace_bytes == 0  # no intermediates at all
print(program.kernels[0])
# The attention kernel as lowering writes it, the same for every machine: per query row the
# running max m, the correction factor and the rescaled sum l, one output row acc on the stack.
# (The flash_attention schedule then tiles it for this CPU: tutorial 11.)
program = lower(run_pipeline(minicomp.trace(attention, q, k, v))[0])
[attention_kernel] = program.kernels
print()
print(attention_kernel)
text = str(attention_kernel)
assert "m_new" in text and "correction" in text
# no S x S buffer anywhere: no workspace at all, never the 4 x 128 x 128 scores (the tiled
# kernel of tutorial 11 adds packed K and V panels, as big as K and V)
assert program.workspace_bytes <= k.nbytes + v.nbytes
assert not any(len(buf.shape) > 1 and buf.shape[-2:] == (128, 128) for buf in program.workspace)

# ----------------------------------------------------------------------------------------------
step("Step 7: the nine workloads: kernels and bytes before/after the default pipeline")
# ----------------------------------------------------------------------------------------------
# Tracing needs only shapes (TensorType), so the benchmark sizes cost nothing to analyse.
print(f"{'workload':<14}{'kernels':>14}{'bytes moved (estimated)':>32}{'minimum':>11}")
for name, workload in WORKLOADS.items():
    traced = minicomp.trace(workload.fn, *[TensorType(s, "f32") for s in workload.shapes["cpu"].values()])
    optimised, _ = run_pipeline(traced)
    before, now = kernel_summary(traced), kernel_summary(optimised)
    print(f"{name:<14}{before.kernels:>6} -> {now.kernels:<5}{human(before.bytes_moved):>13} -> "
          f"{human(now.bytes_moved):<12}{now.bytes_moved / before.bytes_moved:>5.0%}"
          f"{human(minimum_bytes(traced)):>11}")
    assert now.kernels <= before.kernels and now.bytes_moved <= before.bytes_moved
# "minimum" reads every input and writes every output once: what any implementation moves.
# Fused, the elementwise, row, epilogue and attention workloads reach it: one kernel, no
# intermediates. mlp keeps its hidden activation (it feeds the second matmul, step 5); block
# keeps the values shared by several kernels (the residual stream, the layer norms' inputs).
# Where a workload keeps more than one kernel, explain says why; for instance conv_bn_relu
# (at this size the layout pass may run the convolution in NHWC between two transposes):
conv = WORKLOADS["conv_bn_relu"]
conv_explained = explanation(conv.fn, *[TensorType(s, "f32") for s in conv.shapes["cpu"].values()])
print(f"\nconv_bn_relu: {conv_explained.before.kernels} -> {conv_explained.after.kernels} kernels")
for d in conv_explained.refused_decisions:
    print(f"  refused {d.producer} -> {d.consumer}: {d.reason}")

# ----------------------------------------------------------------------------------------------
step("Step 8: measured: fusion on vs off, compiled to C")
# ----------------------------------------------------------------------------------------------
# The same functions through the C target, with the default pipeline and with fusion
# disabled. Times are medians of repeated calls after a warm-up; results are asserted against
# NumPy, the timings only reported (they depend on the machine and its load).


def median_ms(fn, args, repeats: int = 5) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


big = rng.standard_normal((1024, 1024), dtype=F32)
va, vb = rng.standard_normal(1024, dtype=F32), rng.standard_normal(1024, dtype=F32)
qa, ka, vv = (rng.standard_normal((4, 256, 64), dtype=F32) for _ in range(3))
cases = [("bias_gelu", bias_gelu, (big, va, vb)), ("softmax", softmax, (big,)),
         ("layernorm", layernorm, (big, va, vb)), ("linear_gelu", linear_gelu, (x, w, bias)),
         ("attention (causal)", attention, (qa, ka, vv))]
print(f"{'function':<20}{'kernels off/on':>16}{'NumPy ms':>10}{'fusion off':>12}{'fusion on':>11}{'speed-up':>10}")
for name, fn, args in cases:
    on, off = minicomp.jit(fn), minicomp.jit(fn, disable=["fusion"])
    expected = fn(*args)
    assert_close(on(*args), expected)
    assert_close(off(*args), expected)
    kernels = f"{len(off.inspect(*args).program.kernels)}/{len(on.inspect(*args).program.kernels)}"
    numpy_ms, off_ms, on_ms = median_ms(fn, args), median_ms(off, args), median_ms(on, args)
    print(f"{name:<20}{kernels:>16}{numpy_ms:>10.2f}{off_ms:>12.2f}{on_ms:>11.2f}{off_ms / on_ms:>9.1f}x")
print(f"({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} while measuring)")
# How to read it: "fusion off" is one plain loop nest per op, as in tutorial 06; "fusion on"
# the same arithmetic in fewer kernels that no longer write and re-read their intermediates.
# The gain is largest where the unfused version moves the most bytes per FLOP (the elementwise
# chain, the rows). Attention also stops allocating its S x S scores. Loop schedules (tiling,
# vectorisation: tutorial 05) are what close the remaining gap to NumPy's hand-tuned loops.
print("\nall results matched NumPy")
