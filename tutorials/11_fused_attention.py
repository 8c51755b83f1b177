"""Tutorial 11: the FlashAttention idea. Online softmax, and no S x S matrix.

What you learn:

* Attention, ``softmax(q @ k^T / sqrt(d)) @ v``, written eagerly, materialises the score
  matrix: ``Sq x Sk`` floats per head, written and read several times (scores, exp, the
  divide, the second matmul). It grows with the *square* of the sequence length.
* The **online softmax**: a softmax over a row can be computed one block of keys at a time,
  keeping per query row only a running max ``m``, a running sum ``l`` and a running output
  ``acc``. When a new block raises the max, everything so far is rescaled by
  ``exp(m_old - m_new)``. We write it in ten lines of NumPy first and check it.
* The fused attention kernel minicomp builds from the traced graph: lowering writes the
  online softmax of Step 2, one query row at a time, as a plain loop nest (the same for every
  machine); the ``flash_attention`` schedule (``schedules/cpu/flash_attention.py``) then tiles
  it for this CPU: tiles of queries x keys, both matmuls (``Q K^T`` and ``P V``) on the
  register-blocked micro-kernel of tutorial 10, the softmax bookkeeping in between on a tile
  that stays in L1.
* Checking the claim: every buffer of the lowered program and every local array of the kernel
  listed with its size; none is ``Sq x Sk``, and the workspace grows linearly with the
  sequence, not quadratically. Causal attention (``nn.scaled_dot_product_attention(causal=
  True)``) fuses the same way.
* Measured: NumPy eager vs minicomp (fused, and with fusion off) and, if installed, PyTorch's
  ``scaled_dot_product_attention``.

Run from the repository root:  python tutorials/11_fused_attention.py
(command-line twin: ``minicomp dump --workload attention --emit loops``)
"""

# A fresh compile cache in a temporary directory, set before minicomp is imported: the
# tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial11-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import sys
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp import TensorType, nn
from minicomp.bench import machine_description, measure
from minicomp.codegen import gemm
from minicomp.ir.loops import Allocate, Block, For, If, Stmt
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import loop_program
from minicomp.stats import human
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS, attention

F32 = np.float32
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


# ----------------------------------------------------------------------------------------------
step("Step 1: attention, eagerly")
# ----------------------------------------------------------------------------------------------
# The attention workload of minicomp/workloads.py, plain NumPy:
#
#     def attention(q, k, v):
#         scores = q @ k.swapaxes(-1, -2) * q.shape[-1] ** -0.5
#         e = np.exp(scores - scores.max(axis=-1, keepdims=True))
#         return (e / e.sum(axis=-1, keepdims=True)) @ v
#
# At its benchmark size (8 heads, 512 queries and keys, head size 64) the inputs are 1 MiB
# each, the score matrix alone 8 MiB, and NumPy writes four matrices of that size
# (scores, scores - max, e, e / sum), reading each back.
shapes = WORKLOADS["attention"].shapes["cpu"]
heads, seq, head_dim = shapes["q"]
print(f"q, k, v: {heads} x {seq} x {head_dim} float32 = {human(heads * seq * head_dim * 4)} each; "
      f"scores: {heads} x {seq} x {seq} = {human(heads * seq * seq * 4)}")

# ----------------------------------------------------------------------------------------------
step("Step 2: the online softmax, in NumPy")
# ----------------------------------------------------------------------------------------------
# For any constant m, softmax(s)_j = exp(s_j - m) / sum_i exp(s_i - m): subtracting the row
# max is only there to keep exp from overflowing. So walk the keys in blocks, keeping per query
# row the max m seen so far, l = sum of exp(s - m) so far, and acc = sum of exp(s - m) * v so
# far. When a block brings a larger max m_new, the old terms were computed against m: multiply
# l and acc by exp(m - m_new) and they are as if computed against m_new. At the end,
# acc / l is the attention output. No more than one block of scores ever exists.


def online_attention(q, k, v, block: int, trace_row: int | None = None):
    scale = F32(q.shape[-1] ** -0.5)
    m = np.full(q.shape[:-1] + (1,), -np.inf, F32)        # running row max
    l = np.zeros(q.shape[:-1] + (1,), F32)                 # running sum of exp(s - m)
    acc = np.zeros(q.shape[:-1] + (v.shape[-1],), F32)     # running sum of exp(s - m) @ v
    for start in range(0, k.shape[-2], block):
        s = q @ k[..., start:start + block, :].swapaxes(-1, -2) * scale   # (Sq, block) scores
        m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
        correction = np.exp(m - m_new)                     # rescales what came before
        p = np.exp(s - m_new)
        l = l * correction + p.sum(axis=-1, keepdims=True)
        acc = acc * correction + p @ v[..., start:start + block, :]
        m = m_new
        if trace_row is not None:
            print(f"  keys {start:>2}..{min(start + block, k.shape[-2]) - 1:>2}: block max "
                  f"{s[trace_row].max():7.3f}  m = {m[trace_row, 0]:7.3f}  correction = "
                  f"{correction[trace_row, 0]:6.3f}  l = {l[trace_row, 0]:7.3f}")
    return acc / l


# A single head, 6 queries, 20 keys in blocks of 8 (the last block is short), head size 16.
# Scores scaled up a little so the running max visibly moves.
q_small = rng.standard_normal((6, 16), dtype=F32) * F32(2)
k_small, v_small = rng.standard_normal((20, 16), dtype=F32), rng.standard_normal((20, 16), dtype=F32)
print("query row 0, block by block:")
online = online_attention(q_small, k_small, v_small, block=8, trace_row=0)
assert_close(online, attention(q_small, k_small, v_small))
# (the first correction is exp(-inf - m) = 0: there was nothing before to rescale.)
print("online_attention == attention (softmax over all 20 keys at once): checked")
# Batched (the ... axes), any block size, the same answer:
q4, k4, v4 = (rng.standard_normal((2, 37, 16), dtype=F32) for _ in range(3))
for block in (1, 5, 16, 37):
    assert_close(online_attention(q4, k4, v4, block), attention(q4, k4, v4))
print("batched, blocks of 1, 5, 16, 37 keys: checked")

# ----------------------------------------------------------------------------------------------
step("Step 3: minicomp finds attention in the traced graph")
# ----------------------------------------------------------------------------------------------
# Nobody calls a special attention op: the traced graph is transpose, matmul, mul, max, sub,
# exp, sum, div, matmul. The fusion pass recognises the shape of it (a matmul, a row softmax
# of its scores, a matmul by v) and makes one kernel with pattern "attention".
q, k, v = (rng.standard_normal((2, 100, 64), dtype=F32) for _ in range(3))
k, v = (rng.standard_normal((2, 150, 64), dtype=F32) for _ in range(2))   # 150 keys
traced = minicomp.trace(attention, q, k, v)
print(traced)
fused_graph, _ = run_pipeline(traced)
print("\n--- after the default pipeline ---\n")
print(fused_graph)
[node] = fused_graph.op_nodes()
assert node.attrs["pattern"] == "attention"

# ----------------------------------------------------------------------------------------------
step("Step 4: the fused attention kernel")
# ----------------------------------------------------------------------------------------------
# Lowering writes Step 2's recurrence one key at a time, per query row: the plain nest, the
# same for every machine (lower() is the first loop-level stage).
plain = lower(fused_graph)
print(plain.kernels[0])
assert plain.kernels[0].schedule == [] and "m_new" in str(plain.kernels[0])
# The schedule stage gives each kernel its pattern's default steps for this CPU; for attention
# the flash_attention strategy, with tiles from the micro-kernel's shape. The scheduled kernel
# prints its schedule line first, then (compare with Step 2):
#   parallel for t_pack: pack K^T and V into micro-kernel B panels, once per call;
#   parallel for t: one task per (batch, block of bq queries), each with its own small arrays
#     (local ...) on the thread's stack:
#       pack the Q block; o = 0, row_max = -inf, row_sum = 0;
#       for kb (a block of bk keys):
#         s = Q K^T for this tile: micro-kernel calls, mr query rows each;
#         per query row: scale (and mask), block max -> m_new, correction = exp(m_old - shift),
#           s = exp(s - shift) (now P), block sum, l = l*correction + sum, o row *= correction;
#         o += P V for this tile: micro-kernel again, accumulating, reading P's rows in s;
#       out = o / row_sum for the query rows that exist.
# `shift` is m_new, or 0 while a row has seen only -inf (masked or padding) scores, so that
# exp(-inf - -inf) never makes a NaN.
program = loop_program(fused_graph)
[kernel] = program.kernels
print()
print(kernel)
print(f"\n{len(program.kernels)} kernel; its schedule: {kernel.schedule[0]}")
text = str(kernel)
micro_kernel = gemm.kernel_name(F32)
assert text.count(f"{micro_kernel}(") == 2 and "correction" in text   # Q K^T and P V
run = minicomp.compile(traced, target="c")
assert_close(run(q, k, v)[0], attention(q, k, v))
print("compiled: matches NumPy")

# ----------------------------------------------------------------------------------------------
step("Step 5: no buffer of Sq x Sk")
# ----------------------------------------------------------------------------------------------
# Everything a program touches is a parameter (inputs, constants, outputs), a workspace
# buffer (intermediates and scratch, e.g. packed panels) or a local array of a kernel. List
# them all, fused and with fusion disabled, at the benchmark's shape with 1024 queries and
# keys. Tracing needs only shapes (TensorType): no data, nothing is run here.


def local_arrays(stmt: Stmt):
    """The Allocate'd buffers inside a statement (per thread, on its stack)."""
    if isinstance(stmt, Allocate):
        yield stmt.buffer
    elif isinstance(stmt, For):
        yield from local_arrays(stmt.body)
    elif isinstance(stmt, Block):
        for sub in stmt.stmts:
            yield from local_arrays(sub)
    elif isinstance(stmt, If):
        yield from local_arrays(stmt.then)
        if stmt.otherwise is not None:
            yield from local_arrays(stmt.otherwise)


def all_buffers(program):
    """(where, buffer) for every buffer of a lowered program."""
    rows = [("parameter", b) for b in program.params]
    rows += [("workspace", b) for b in program.workspace]
    for kernel in program.kernels:
        rows += [(f"local in {kernel.name}", b) for b in dict.fromkeys(local_arrays(kernel.body))]
    return rows


def lowered(fn, shape, disable=()):
    """The loop program of ``fn`` at ``shape`` after the loop stages (lowered and scheduled)."""
    types = [TensorType(shape, "f32")] * 3
    return loop_program(run_pipeline(minicomp.trace(fn, *types), disable=disable)[0])


long_shape = (heads, 1024, head_dim)
sq = sk = long_shape[1]
for label, disable in [("fused", ()), ("fusion off", ("fusion",))]:
    prog = lowered(attention, long_shape, disable)
    print(f"\n{label}: {len(prog.kernels)} kernel(s), workspace {human(prog.workspace_bytes)}")
    print(f"  {'buffer':<22}{'where':<30}{'elements':>10}   {'Sq x Sk?'}")
    biggest_per_head = 0
    for where, buf in all_buffers(prog):
        per_head = buf.size // heads if buf.shape[:1] == (heads,) else buf.size
        print(f"  {buf.name:<22}{where:<30}{buf.size:>10}   {'yes' if sq * sk <= per_head else ''}")
        if where != "parameter":
            biggest_per_head = max(biggest_per_head, per_head)
    if label == "fused":
        assert biggest_per_head < sq * sk and prog.workspace_bytes < heads * sq * sk * 4 // 4
    else:
        assert biggest_per_head >= sq * sk
# With fusion off, every score-shaped value (matmul, mul, sub, exp, div) is an 8 x 1024 x 1024
# workspace buffer (the memory plan lets some share bytes). Fused, the workspace holds only
# the packed copies of K and V: as big as K and V themselves. The local arrays are one
# bq x bk tile of scores (s, overwritten by the probabilities), the Q block and the output block.

# How the memory grows with the sequence length: fused linearly, unfused quadratically.
print(f"\n{'sequence':>9}{'scores per head':>17}{'workspace fused':>17}{'fusion off':>13}")
for length in (256, 512, 1024, 2048):
    shape = (heads, length, head_dim)
    fused_ws = lowered(attention, shape).workspace_bytes
    unfused_ws = lowered(attention, shape, ("fusion",)).workspace_bytes
    print(f"{length:>9}{human(length * length * 4):>17}{human(fused_ws):>17}{human(unfused_ws):>13}")
    assert fused_ws <= 2 * 4 * heads * length * head_dim * 1.5   # two panels of K/V's size

# ----------------------------------------------------------------------------------------------
step("Step 6: causal attention")
# ----------------------------------------------------------------------------------------------
# minicomp.nn.scaled_dot_product_attention(causal=True) is NumPy code too: it hides the keys
# after each query with np.where(np.triu(ones, k=1), -inf, scores). Traced, the mask is a
# bool *constant*; fusion puts the where into the score expression of the attention kernel.


def causal_attention(q, k, v):
    return nn.scaled_dot_product_attention(q, k, v, causal=True)


qc, kc, vc = (rng.standard_normal((2, 100, 64), dtype=F32) for _ in range(3))
causal_graph, _ = run_pipeline(minicomp.trace(causal_attention, qc, kc, vc))
print(causal_graph)
[causal_node] = causal_graph.op_nodes()
assert causal_node.attrs["pattern"] == "attention"
causal_program = loop_program(causal_graph)
score_line = next(line.strip() for line in str(causal_program).splitlines() if "select(" in line
                  and "-inf" in line and " s[" in line)
print(f"\nthe score expression in the kernel:\n  {score_line}")
causal_fn = minicomp.jit(causal_attention)
assert_close(causal_fn(qc, kc, vc), causal_attention(qc, kc, vc))
print("compiled causal attention: matches NumPy's nn.scaled_dot_product_attention(causal=True)")
[(mask_buffer, mask)] = causal_program.constants
print(f"constants: {mask_buffer} (the triu mask, {human(mask.nbytes)}, shared by all heads)")
assert mask.dtype == np.bool_ and mask.shape == (100, 100)
# One Sq x Sk array is left, the mask constant: one byte per score, not per head. The
# flash_attention schedule reads it at compile time: key blocks it hides entirely (above the
# diagonal) are skipped ("if kb < ..."), blocks it leaves entirely visible run the score
# without it, and only the tiles on the diagonal load it (the two score loops printed above).
assert "if kb < " in str(causal_program)

# ----------------------------------------------------------------------------------------------
step("Step 7: measured: NumPy vs minicomp (vs PyTorch)")
# ----------------------------------------------------------------------------------------------
# The attention workload at its CPU size, non-causal and causal. Results are asserted against
# NumPy; times are medians over rounds that call each implementation once in turn (rotating
# who goes first), minicomp.bench.measure: a fairer comparison on a busy machine than timing
# one implementation after the other. Timings are only reported.
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
big = WORKLOADS["attention"].inputs("cpu")
cases = [("attention", attention, lambda q, k, v: F.scaled_dot_product_attention(q, k, v)),
         ("causal", causal_attention,
          lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))]
print(f"q, k, v: {' x '.join(map(str, big[0].shape))}; {machine_description()}"
      + (f"; torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else "; torch not installed"))
header = f"{'':<11}{'implementation':<22}{'workspace':>10}{'ms':>9}{'vs NumPy':>10}"
print(header)
print("-" * len(header))
results = {}
for case, fn, torch_fn in cases:
    expected = fn(*big)
    fused, unfused = minicomp.jit(fn), minicomp.jit(fn, disable=["fusion"])
    impls = {"NumPy": lambda: fn(*big), "minicomp": lambda: fused(*big),
             "minicomp, fusion off": lambda: unfused(*big)}
    workspace = {"minicomp": fused.inspect(*big).program.workspace_bytes,
                 "minicomp, fusion off": unfused.inspect(*big).program.workspace_bytes}
    assert_close(fused(*big), expected)
    assert_close(unfused(*big), expected)
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(a) for a in big)
        with torch.no_grad():
            assert_close(torch_fn(tq, tk, tv).numpy(), expected)

        def run_torch(tq=tq, tk=tk, tv=tv, torch_fn=torch_fn):
            with torch.no_grad():
                return torch_fn(tq, tk, tv)
        impls["torch SDPA (eager)"] = run_torch
    medians, rounds = measure(impls, min_rounds=5, min_seconds=0)
    results[case] = medians
    for name, ms in medians.items():
        ws = human(workspace[name]) if name in workspace else "-"
        print(f"{case:<11}{name:<22}{ws:>10}{ms:>9.2f}{medians['NumPy'] / ms:>9.2f}x")
print(f"(medians of {rounds} rounds; load average {os.getloadavg()[0]:.1f} while measuring)")
for case, medians in results.items():
    on, off = medians["minicomp"], medians["minicomp, fusion off"]
    print(f"{case}: the fused kernel was {'faster' if on < off else 'slower'} than fusion off here "
          f"({off:.2f} ms -> {on:.2f} ms), and {medians['NumPy'] / on:.1f}x NumPy's speed")
# How to read it (numbers depend on the machine and its load):
#  * NumPy runs nine separate passes, four of them over 8 MiB score matrices, its exp on one
#    core; only the two matmuls are multi-threaded BLAS.
#  * "fusion off" is minicomp's one-kernel-per-op code: the matmuls are packed micro-kernels,
#    the softmax ops compiled and threaded, but every score matrix goes through memory. At this
#    size (8 MiB of scores) much of that traffic can stay in a large L2/L3 cache, so it is
#    not necessarily slower: the fused kernel pays for its bookkeeping (the row max and sum
#    per tile, the rescaling of o) on every key block.
#  * What fusion always buys is memory: the workspace column. With longer sequences (Step 5)
#    the unfused scores stop fitting in any cache, then in memory at all; the fused kernel's
#    working set stays a few tiles per thread.
#  * PyTorch's CPU scaled_dot_product_attention is itself a fused flash-attention kernel
#    (hand-written, with a causal block skip): the yardstick for this one.
#  * On a busy machine (load average above the core count) every threaded implementation here
#    slows down, often minicomp most: at each of a kernel's OpenMP barriers, threads spin-wait
#    for one that lost its core to another process. OMP_WAIT_POLICY=passive (set before the
#    run) makes waiting threads sleep instead, and is much faster there.
print("\nall results matched NumPy")
