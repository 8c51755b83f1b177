"""Tutorial 01: why compile? Eager ``linear -> relu -> linear``, one kernel per op.

What you learn:

* Eager NumPy (and eager PyTorch) runs a model as a *sequence of separate kernels*, one per
  op. Each kernel reads all of its operands from memory and writes its whole result back,
  even when the very next op reads it straight away.
* How to *count* what each kernel costs: FLOPs and bytes read/written (``minicomp.stats``),
  and how that compares with the minimum any implementation must move (inputs and outputs
  once).
* How to *measure* it: timing each op on its own shows two kinds of kernel. The matmuls are
  compute-bound (judge them in GFLOP/s); the bias adds and the ReLU do almost no arithmetic
  and are memory-bound (judge them in GB/s): a twentieth of a percent of the FLOPs, but a
  third of the bytes and a measurable slice of the time.
* What a compiler does about it: it sees the whole graph, so it can apply bias and ReLU to the
  matmul's result while it is still in registers (an *epilogue*) instead of in separate passes
  over memory. Later tutorials build exactly that (04 operator fusion, 10 fused linear+GELU).

Run from the repository root:  python tutorials/01_why_compile.py
"""

import statistics
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp.ir.ops import Kind
from minicomp.stats import format_stats, graph_stats, human, minimum_bytes
from minicomp.testing import assert_close


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


# ----------------------------------------------------------------------------------------------
step("Step 1: the model, written eagerly in NumPy")
# ----------------------------------------------------------------------------------------------
# A two-layer MLP, the feed-forward block of every transformer: linear -> relu -> linear.
# Nothing special: this is the NumPy you would write anyway. Every line is executed the moment
# Python reaches it ("eager" execution), and every NumPy call is one kernel: a loop over the
# whole tensor that reads its operands from memory and writes a brand-new result array.


def linear(x, w, b):
    return x @ w + b             # two kernels: matmul, then a bias add over the whole result


def relu(h):
    return np.maximum(h, 0)      # one more kernel: read h, write a new h


def mlp(x, w1, b1, w2, b2):
    return linear(relu(linear(x, w1, b1)), w2, b2)


# The shapes of minicomp's "mlp" benchmark at CPU size: 256 tokens, model width 1024, hidden
# width 4096 (4x, as in GPT-2), float32.
TOKENS, DIM, HIDDEN = 256, 1024, 4096
rng = np.random.default_rng(0)
x = rng.standard_normal((TOKENS, DIM), dtype=np.float32)
w1 = rng.standard_normal((DIM, HIDDEN), dtype=np.float32) / np.float32(np.sqrt(DIM))
b1 = rng.standard_normal(HIDDEN, dtype=np.float32)
w2 = rng.standard_normal((HIDDEN, DIM), dtype=np.float32) / np.float32(np.sqrt(HIDDEN))
b2 = rng.standard_normal(DIM, dtype=np.float32)
args = (x, w1, b1, w2, b2)

y = mlp(*args)  # the eager result: our reference for everything below
print(f"mlp(x) : {x.dtype}{list(x.shape)} -> {y.dtype}{list(y.shape)}")
assert y.shape == (TOKENS, DIM) and y.dtype == np.float32

# ----------------------------------------------------------------------------------------------
step("Step 2: the same function, seen as the sequence of kernels NumPy launches")
# ----------------------------------------------------------------------------------------------
# minicomp.trace runs the *unchanged* function on stand-in arrays that record each NumPy call
# instead of computing it (tutorial 02 explains how). The result is a graph: one line per op,
# in execution order, with its result type and the source line it came from. Except for the
# constant 0 (data, not work), every line is one kernel eager NumPy runs.
graph = minicomp.trace(mlp, *args)
print(graph)

kernels = graph.op_nodes()
print("\nkernels, in order:", " -> ".join(n.op for n in kernels))
assert [n.op for n in kernels] == ["matmul", "add", "maximum", "matmul", "add"]

# The graph *means* the same as the NumPy code: running it op by op with NumPy (minicomp's
# reference interpreter) gives the eager result.
(y_graph,) = minicomp.interpret(graph, *args)
assert_close(y_graph, y)
print("minicomp.interpret(graph) matches eager NumPy")

# ----------------------------------------------------------------------------------------------
step("Step 3: what each kernel costs on paper: FLOPs and bytes moved")
# ----------------------------------------------------------------------------------------------
# minicomp.stats counts, for each op *as a kernel of its own*: FLOPs (2*M*N*K for a matmul, one
# per element for an add or a max), bytes read (each operand once) and bytes written (the
# result once). "Minimum bytes" is what any implementation, however clever, must move: read
# every input and weight once, write the output once.
print(format_stats(graph))

stats = graph_stats(graph)
eager_bytes = stats.bytes_read + stats.bytes_written
min_bytes = minimum_bytes(graph)
# If bias and ReLU ran inside the first matmul's epilogue and the second bias inside the
# second's, only the hidden activation h (the relu's result) would still make a round trip
# through memory: written by kernel 1, read by kernel 2.
hidden = next(n for n in kernels if n.op == "maximum")
fused_bytes = min_bytes + 2 * hidden.type.nbytes
print(f"\n  eager, 5 kernels                          : {human(eager_bytes):>9}")
print(f"  bias+relu fused into matmul epilogues, 2  : {human(fused_bytes):>9}")
print(f"  minimum (inputs + outputs once)           : {human(min_bytes):>9}")
assert min_bytes < fused_bytes < eager_bytes

# ----------------------------------------------------------------------------------------------
step("Step 4: measure the machine: memory bandwidth and matmul speed")
# ----------------------------------------------------------------------------------------------
# To say whether a kernel is "fast" we need two yardsticks from this machine:
#   * bandwidth: a plain copy of an array as big as the hidden activation (read + write) - no
#     arithmetic at all, so its speed is the memory system's;
#   * compute: the GFLOP/s of the first matmul itself (OpenBLAS, all cores).
# Their ratio, the *machine balance* in FLOP/byte, splits kernels in two: a kernel doing fewer
# FLOPs per byte than that is memory-bound (it waits for data); more, compute-bound.
REPEATS = 9


def median_seconds(fn, repeats: int = REPEATS) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()  # warm-up: the first call pays for page faults, BLAS thread start-up, ...
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


h = relu(linear(x, w1, b1))
copy_dst = np.empty_like(h)
copy_s = median_seconds(lambda: np.copyto(copy_dst, h))
bandwidth = 2 * h.nbytes / copy_s                      # bytes per second
matmul_s = median_seconds(lambda: x @ w1)
compute = 2 * TOKENS * DIM * HIDDEN / matmul_s         # FLOPs per second
balance = compute / bandwidth
print(f"{'copy of ' + human(h.nbytes):<20}: {copy_s * 1e3:7.3f} ms -> {bandwidth / 1e9:6.1f} GB/s")
print(f"{'x @ w1, ' + human(2 * TOKENS * DIM * HIDDEN, 'FLOP'):<20}: {matmul_s * 1e3:7.3f} ms -> "
      f"{compute / 1e9:6.1f} GFLOP/s")
print(f"machine balance: {balance:.1f} FLOP/byte")

# ----------------------------------------------------------------------------------------------
step("Step 5: time each kernel eagerly")
# ----------------------------------------------------------------------------------------------
# minicomp's Interpreter runs a graph one node at a time by calling each op's NumPy function
# (np.matmul, np.add, np.maximum): exactly the calls eager NumPy makes. A subclass that times
# every call gives the eager cost of each kernel, with its real inputs.


class TimingInterpreter(minicomp.Interpreter):
    """The reference interpreter, timing each op's NumPy call (median of repeats)."""

    def __init__(self, graph):
        super().__init__(graph)
        self.seconds = {}

    def run_node(self, node, values):
        def run():
            return minicomp.Interpreter.run_node(self, node, values)

        if node.kind is not Kind.SOURCE:
            self.seconds[node] = median_seconds(run)
        return run()


timer = TimingInterpreter(graph)
(y_timed,) = timer.run(*args)
assert_close(y_timed, y)
whole_s = median_seconds(lambda: mlp(*args))  # the plain eager function, for comparison

total_s = sum(timer.seconds.values())
header = (f"{'kernel':<11}{'op':<9}{'FLOPs':>9}{'bytes':>10}{'FLOP/B':>8}{'time ms':>9}"
          f"{'% time':>8}{'GFLOP/s':>9}{'GB/s':>7}  bound")
print(header)
print("-" * len(header))
for s in stats.nodes:
    seconds = timer.seconds[s.node]
    moved = s.bytes_read + s.bytes_written
    intensity = s.flops / moved
    print(f"%{s.node.name:<10}{s.node.op:<9}{human(s.flops, ''):>9}{human(moved):>10}"
          f"{intensity:>8.2f}{seconds * 1e3:>9.3f}{100 * seconds / total_s:>7.1f}%"
          f"{s.flops / seconds / 1e9:>9.1f}{moved / seconds / 1e9:>7.1f}  "
          f"{'memory' if intensity < balance else 'compute'}")
print("-" * len(header))
print(f"{'sum of kernels':<20}{human(stats.flops, ''):>9}{human(eager_bytes):>10}"
      f"{stats.flops / eager_bytes:>8.2f}{total_s * 1e3:>9.3f}")
print(f"{'mlp(*args) eagerly':<47}{whole_s * 1e3:>9.3f}")
print(f"\n(bandwidth yardstick {bandwidth / 1e9:.1f} GB/s, compute yardstick "
      f"{compute / 1e9:.1f} GFLOP/s, balance {balance:.1f} FLOP/byte)")

# ----------------------------------------------------------------------------------------------
step("Step 6: the lesson")
# ----------------------------------------------------------------------------------------------
small = [s for s in stats.nodes if s.node.op != "matmul"]
small_flops = sum(s.flops for s in small) / stats.flops
small_bytes = sum(s.bytes_read + s.bytes_written for s in small) / eager_bytes
small_time = sum(timer.seconds[s.node] for s in small) / total_s
paragraphs = [
    f"The {len(small)} bias/relu kernels do {100 * small_flops:.2f}% of the FLOPs but move "
    f"{100 * small_bytes:.0f}% of the bytes and take {100 * small_time:.1f}% of the time. They are "
    f"memory-bound: each one reads a whole activation (up to {human(hidden.type.nbytes)}) from "
    "memory and writes a new one back, for a single add or max per element, so bandwidth, not "
    "arithmetic, sets their speed (compare their GB/s with the copy's).",
    f"Here the matmuls take {100 * (1 - small_time):.0f}% of the time. The elementwise share grows "
    "with more elementwise work per matmul (the tanh GELU is 9 ops, layer norm and softmax add "
    "reductions) and on accelerators whose arithmetic outruns their memory much further than "
    f"this machine's {balance:.0f} FLOP/byte (an H100's tensor cores: about 300). On a GPU every "
    "kernel also pays a launch of a few microseconds, once per op in eager mode.",
    "Eager execution cannot avoid any of this: when NumPy runs the first matmul it does not "
    "know that a bias add and np.maximum come next. A compiler sees the whole graph printed in step "
    "2, so it can apply the bias and the ReLU to each tile of the matmul's result while it is "
    f"still in registers (an epilogue) and write h once: {human(eager_bytes)} moved in 5 kernels "
    f"becomes {human(fused_bytes)} in 2 (the floor is {human(min_bytes)}). Tutorials 04 and 10 "
    "build and measure exactly that.",
]
print("\n\n".join(textwrap.fill(p, 92) for p in paragraphs))
