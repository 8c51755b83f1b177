"""Tutorial 14: a transformer block with ``@minicomp.jit``, end to end, against NumPy (and torch).

What you learn:

* The whole compiler on a real layer: a GPT-2 block (pre-LN causal multi-head attention and a
  4x MLP with GELU, both with residuals), written in plain NumPy (``minicomp.workloads.block``),
  compiled by decorating it. Nothing in the function knows about minicomp.
* Where compile time goes: tracing, the passes, lowering, rendering C, and gcc, which costs
  the most. The **on-disk compile cache** makes the second compile of the same code, in this
  process or a new one, skip gcc: cold vs warm.
* What the passes did: 58 traced ops, one kernel each without passes, 8 kernels with them;
  each kernel's fusion pattern and loop schedule (packed micro-kernel matmuls with their
  epilogues, flash attention, row kernels for the layer norms).
* Correctness against NumPy, then the steady-state time per call against NumPy and, when it
  is installed, PyTorch eager.

Run from the repository root:  python tutorials/14_jit_end_to_end.py
(command-line twins: ``minicomp explain --workload block``, ``minicomp bench block``)
"""

# The compile cache is a directory of compiled libraries. Point it at a fresh temporary
# directory *before* importing minicomp: this tutorial measures a cold compile, and leaves
# nothing behind in ~/.cache when it ends.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial14-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import inspect
import subprocess
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

from minicomp.bench import machine_description, measure
from minicomp.codegen.c import render_c
from minicomp.runtime.compiler import compile_c, load_library
from minicomp.passes.pipeline import run_pipeline
from minicomp.peers import PEERS
from minicomp.runtime import cache
from minicomp.stages import loop_program
from minicomp.stats import graph_stats, human, kernel_summary
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS

BLOCK = WORKLOADS["block"]


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def seconds(fn):
    """(result of fn(), wall seconds it took)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
step("Step 1: the model, in NumPy")
# ----------------------------------------------------------------------------------------------
print(inspect.getsource(BLOCK.fn))
# At the benchmark's CPU size: 256 tokens of width 768 (GPT-2 small: 12 heads of 64), 7.1 M
# parameters. The NumPy function is our reference for everything below.
args = BLOCK.inputs("cpu")
names = list(BLOCK.shapes["cpu"])
print(", ".join(f"{n} {'x'.join(map(str, a.shape))}" for n, a in zip(names, args)))
print(f"parameters: {sum(a.size for a in args[1:]) / 1e6:.1f} M")
expected = BLOCK.fn(*args)

# ----------------------------------------------------------------------------------------------
step("Step 2: a cold compile, stage by stage")
# ----------------------------------------------------------------------------------------------
# What jit does on the first call with a new signature, one stage at a time. The cache
# directory is empty, so gcc really runs.
traced, t_trace = seconds(lambda: minicomp.trace(BLOCK.fn, *args))
(optimised, report), t_passes = seconds(lambda: run_pipeline(traced))
program, t_lower = seconds(lambda: loop_program(optimised))  # lower, schedule, simplify indices
source, t_render = seconds(lambda: render_c(program))
library, t_gcc = seconds(lambda: compile_c(source, "block"))
_, t_load = seconds(lambda: load_library(library))
stages = [("trace", t_trace), ("passes", t_passes), ("loop stages", t_lower), ("render C", t_render),
          ("gcc (cold)", t_gcc), ("load (cffi)", t_load)]
total = sum(t for _, t in stages)
for name, t in stages:
    print(f"  {name:<12}{t * 1e3:>9.1f} ms  {'#' * round(40 * t / total)}")
print(f"  {'total':<12}{total * 1e3:>9.1f} ms   ({len(source.splitlines())} lines of C)")
print("\nwhat each pass did:")
print(report)
# gcc dominates: -O3 over a few thousand lines of C (the passes are pure Python, and still
# small next to it). That is what the compile cache is for.

# ----------------------------------------------------------------------------------------------
step("Step 3: cold and warm, with @minicomp.jit")
# ----------------------------------------------------------------------------------------------
# jit's first call runs all of the above; a second JitFunction of the same code (or the same
# code in a new process) renders the same C, finds its library in the cache and skips gcc.
# Start from an empty cache again (cache.clear() empties MINICOMP_CACHE_DIR, ours).
cache.clear()
cold_fn = minicomp.jit(BLOCK.fn)
_, cold_s = seconds(lambda: cold_fn.compiled_for(*args))   # compile only (what a first call adds)
warm_fn = minicomp.jit(BLOCK.fn)          # a new function object: traces and lowers again
_, warm_s = seconds(lambda: warm_fn.compiled_for(*args))
warm_fn(*args)
_, call_s = seconds(lambda: warm_fn(*args))  # compiled: a call just runs the kernels
info = cache.info()
print(f"compile, empty cache (cold)           : {cold_s * 1e3:8.1f} ms")
print(f"compile, new jit, cache hit (warm)    : {warm_s * 1e3:8.1f} ms   ({cold_s / warm_s:.0f}x faster)")
print(f"(one call, once compiled              : {call_s * 1e3:8.1f} ms)")
print(f"cache: {info['entries']} librar{'y' if info['entries'] == 1 else 'ies'}, {human(info['bytes'])} "
      f"in a temporary MINICOMP_CACHE_DIR")
assert info["entries"] == 1   # one library: the second compile found the first one's

# A new Python process, same cache directory: the library is found on disk. The child times
# its own compile (its imports are not counted).
child = """
import time
from minicomp.workloads import WORKLOADS
import minicomp
block = WORKLOADS["block"]
args = block.inputs("cpu")
fn = minicomp.jit(block.fn)
start = time.perf_counter()
fn.compiled_for(*args)
print(time.perf_counter() - start)
"""
env = dict(os.environ, MINICOMP_CACHE_DIR=CACHE_DIR)
package_root = str(Path(minicomp.__file__).resolve().parent.parent)
env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
result = subprocess.run([sys.executable, "-c", child], env=env, cwd=CACHE_DIR, capture_output=True,
                        text=True, check=True)
new_process_s = float(result.stdout.split()[-1])
print(f"compile in a new process (warm)       : {new_process_s * 1e3:8.1f} ms")
assert cache.info()["entries"] == 1   # nothing new was compiled

# ----------------------------------------------------------------------------------------------
step("Step 4: kernels before and after the passes")
# ----------------------------------------------------------------------------------------------
# Without passes every traced op is a kernel (jit(fn, passes=[])); with the default pipeline,
# fusion leaves 8. Op histogram of the traced graph:
histogram = Counter(n.op for n in traced.op_nodes())
print(f"traced: {len(traced.op_nodes())} ops: " + ", ".join(f"{op} x{c}" for op, c in histogram.most_common()))
no_passes = minicomp.jit(BLOCK.fn, passes=[])
unoptimised_program = no_passes.inspect(*args).program
before, after = kernel_summary(traced), kernel_summary(optimised)
print(f"kernels: {len(unoptimised_program.kernels)} without passes -> {len(program.kernels)} with all passes; "
      f"estimated bytes moved {human(before.bytes_moved)} -> {human(after.bytes_moved)}; "
      f"workspace {human(unoptimised_program.workspace_bytes)} -> {human(program.workspace_bytes)}")
assert len(program.kernels) < len(unoptimised_program.kernels)

nodes = {n.name.replace(".", "_"): n for n in optimised.op_nodes()}
print(f"\n{'kernel':<16}{'pattern':<11}{'ops':>4}  {'schedule':<50}  ops fused")
for kernel in program.kernels:
    node = nodes.get(kernel.name)
    body = node.attrs["body"].op_nodes() if node is not None and node.op == "fused" else [node]
    pattern = node.attrs.get("pattern", "-") if node is not None else "-"
    schedule = str(kernel.schedule[0]).split(":")[0] if kernel.schedule else "plain loops"
    ops = Counter(n.op for n in body if n is not None)
    print(f"{kernel.name:<16}{pattern:<11}{sum(ops.values()):>4}  {schedule:<50}  "
          + ", ".join(f"{op}" + (f" x{c}" if c > 1 else "") for op, c in ops.items()))
tiled = [k for k in program.kernels if any(str(step).startswith(("gemm(", "flash_attention(")) for step in k.schedule)]
assert len(tiled) == 5   # 4 matmul kernels + attention
# How to read it: the two layer norms (each with the residual add before it) are "row"
# kernels; the four matmuls (qkv, attention output, MLP up, MLP down) are packed micro-kernel
# matmuls whose epilogue is the bias, GELU and the residual adds; attention is the flash
# kernel of tutorial 11 (the causal mask inside); one elementwise kernel is left: moving the
# heads back, swapaxes + reshape, a copy.

# ----------------------------------------------------------------------------------------------
step("Step 5: correctness")
# ----------------------------------------------------------------------------------------------
result = cold_fn(*args)
assert_close(result, expected)
assert_close(no_passes(*args), expected)
print(f"minicomp (all passes, and no passes) matches NumPy: max abs diff "
      f"{np.abs(result - expected).max():.1e}, max |value| {np.abs(expected).max():.1f}")
# And at another size (a new signature: traced and compiled again, tiny shapes, a batch axis):
tiny = [a[None] if n == "x" else a for n, a in zip(names, BLOCK.inputs("tiny"))]
assert_close(cold_fn(*tiny), BLOCK.fn(*tiny))
print(f"and at a second signature (x {'x'.join(map(str, tiny[0].shape))}): matches; "
      f"compiled signatures: {cold_fn.cache_size}")

# ----------------------------------------------------------------------------------------------
step("Step 6: measured: steady state, NumPy vs minicomp vs torch eager")
# ----------------------------------------------------------------------------------------------
# Times per call after compiling, medians over rounds that call each implementation once in
# turn, rotating the order (minicomp.bench.measure). Results are asserted; timings reported.
# torch eager (if installed) runs the same block written line for line with torch ops
# (minicomp.peers, what `minicomp bench` compares with), and once more with torch's own
# fused library ops (F.layer_norm, F.scaled_dot_product_attention, F.gelu).
impls = {"NumPy": lambda: BLOCK.fn(*args), "minicomp, all passes": lambda: cold_fn(*args),
         "minicomp, no passes": lambda: no_passes(*args)}
kernels = {"minicomp, all passes": len(program.kernels), "minicomp, no passes": len(unoptimised_program.kernels)}
torch_note = "torch not installed"
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
if torch is not None:
    torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    peer = PEERS["torch eager"].prepare(BLOCK, args)
    assert_close(peer.to_numpy(peer.fn(*peer.args)), expected)
    impls["torch eager, line for line"] = lambda: peer.fn(*peer.args)

    def torch_block(x, ln1_g, ln1_b, w_qkv, b_qkv, w_out, b_out, ln2_g, ln2_b, w_fc, b_fc, w_proj, b_proj):
        seq, dim = x.shape
        heads = dim // 64
        q, k, v = (F.layer_norm(x, (dim,), ln1_g, ln1_b, 1e-5) @ w_qkv + b_qkv).split(dim, dim=-1)
        q, k, v = (t.reshape(seq, heads, 64).transpose(0, 1) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.transpose(0, 1).reshape(seq, dim) @ w_out + b_out
        h = F.layer_norm(x, (dim,), ln2_g, ln2_b, 1e-5)
        return x + F.gelu(h @ w_fc + b_fc, approximate="tanh") @ w_proj + b_proj

    tensors = [torch.from_numpy(a) for a in args]
    with torch.no_grad():
        assert_close(torch_block(*tensors).numpy(), expected)

    def run_torch_library():
        with torch.no_grad():
            return torch_block(*tensors)
    impls["torch eager, F.* ops"] = run_torch_library

medians, rounds = measure(impls, min_rounds=5, min_seconds=0)
per_node = graph_stats(traced)
matmul_flops = sum(s.flops for s in per_node.nodes if s.node.op == "matmul")
all_flops = per_node.flops
print(f"{human(all_flops, 'FLOP')} per call, {matmul_flops / all_flops:.1%} of them in the 6 matmuls "
      "(4 linear layers, 2 in attention)")
print(f"block, x {'x'.join(map(str, args[0].shape))}; {machine_description()}; {torch_note}")
tokens = args[0].shape[0]
print(f"{'':<28}{'kernels':>8}{'ms':>9}{'tokens/s':>10}{'vs NumPy':>10}")
for name, ms in medians.items():
    print(f"{name:<28}{kernels.get(name, '-'):>8}{ms:>9.2f}{tokens / ms * 1e3:>10.0f}"
          f"{medians['NumPy'] / ms:>9.2f}x")
print(f"(medians of {rounds} rounds; load average {os.getloadavg()[0]:.1f} while measuring)")
fast, numpy_ms = medians["minicomp, all passes"], medians["NumPy"]
print(f"\nminicomp with all passes ran at {numpy_ms / fast:.2f}x NumPy's speed here; "
      f"{medians['minicomp, no passes'] / fast:.2f}x the speed of one kernel per op (no passes).")
if torch is not None:
    best_torch = min(v for k, v in medians.items() if k.startswith("torch"))
    print(f"{'minicomp' if fast < best_torch else 'torch eager'} was the fastest of minicomp and torch eager "
          f"({fast:.2f} ms vs {best_torch:.2f} ms).")
# How to read it (the numbers depend on the machine and how busy it is; every implementation
# here uses threads, and threaded code suffers most when other processes hold the cores):
#  * Nearly all FLOPs are matmuls (the share is printed above the table); NumPy and torch run
#    them on a tuned BLAS, minicomp on its own micro-kernel (tutorial 10). The rest (layer
#    norms, softmax, GELU, residuals) does few FLOPs but is where eager frameworks pay one
#    pass over memory per op, and where fusion pays off.
#  * "no passes" is one kernel per op (58 of them): the matmuls are still packed
#    micro-kernels, but attention materialises its 12 x 256 x 256 scores and every
#    elementwise op is a round trip through memory.
#  * torch's F.* version calls hand-fused library kernels for layer norm and attention: what a
#    framework does without a compiler. `minicomp bench block --plot` adds torch.compile.
#  * On a busy machine (load average above the core count) every threaded implementation here
#    slows down, often minicomp most: at each of a kernel's OpenMP barriers, threads spin-wait
#    for one that lost its core to another process. OMP_WAIT_POLICY=passive (set before the
#    run) makes waiting threads sleep instead, and is much faster there.
print("\nall results matched NumPy")
