"""Tutorial 09: memory optimisation. Recompute or store; buffer reuse; peak memory.

What you learn:

* When one cheap value feeds several kernels, fusion alone must **store** it: one kernel writes
  it, every consumer reads it back. **Rematerialisation** (remat) instead **recomputes** it
  inside each consumer, trading FLOPs for bytes (PyTorch's activation checkpointing makes the
  same trade for training memory; here it is for memory traffic at inference).
* How minicomp decides: a **minimum cut** in a small flow network, whose edge capacities are
  the cost of storing each value and of recomputing it, in one currency (bytes-equivalent).
  You will print that network, read the cut, and move the balance (more consumers, a costlier
  ``exp``, another machine) until the decision flips to "store".
* The kernels after remat + fusion, the bytes they move, and both versions compiled to C and
  checked against NumPy.
* **Memory planning**: intermediates that are never alive at the same time share workspace
  bytes, and an elementwise op may write over its operand (in place). Liveness intervals,
  the offsets the greedy-by-size planner picks, peak bytes before/after, for a layer norm
  and for a whole GPT-2 block.
* Measured, through the C target: remat on/off, memory planning on/off, and what the
  measurement says about the cost model's constants on *this* machine.

Run from the repository root:  python tutorials/09_remat_and_memory.py
(command-line twin of steps 1-3: ``minicomp explain``, which prints the remat decisions)
"""

# A fresh compile cache in a temporary directory, set before minicomp is imported: the
# tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial09-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import contextlib
import ctypes
import ctypes.util
import statistics
import sys
import time
from pathlib import Path

import networkx as nx
import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

import minicomp.passes.remat as remat
from minicomp import TensorType
from minicomp.passes.fusion import explain_fusion, find_groups
from minicomp.lower.program import lower
from minicomp.passes.memory import live_intervals, memory_plan, memory_report
from minicomp.passes.pipeline import run_pipeline
from minicomp.passes.remat import FLOP_WEIGHT, min_cut, plan_remat, recompute_cost
from minicomp.stats import human, kernel_summary, node_stats
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS, layernorm

F32 = np.float32
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def kernel_table(graph) -> None:
    """One line per kernel: what it computes, bytes it reads and writes."""
    print(f"  {'kernel':<18}{'pattern':<10}{'ops':<28}{'reads':>10}{'writes':>10}")
    for node in graph.op_nodes():
        body = node.attrs["body"].op_nodes() if node.op == "fused" else [node]
        s = node_stats(node)
        reads = ", ".join("%" + o.name for o in node.operands if o.op != "constant")
        print(f"  %{node.name:<17}{node.attrs.get('pattern', '-'):<10}"
              f"{' '.join(n.op for n in body):<28}{human(s.bytes_read):>10}{human(s.bytes_written):>10}"
              f"   reads {reads}")


# ----------------------------------------------------------------------------------------------
step("Step 1: one cheap value, three kernels want it")
# ----------------------------------------------------------------------------------------------
# e = exp(x / 2) is cheap to compute (two ops per element) and used three times: a row sum, a
# column max, and softplus(x / 2) @ w = log(e + 1) @ w. Think of a normaliser, a statistic
# and a projection of the same activation.


def shared_exp(x, w):
    e = np.exp(x * 0.5)
    return e.sum(axis=1), e.max(axis=0), np.log(e + 1.0) @ w


ROWS, COLS, OUT = 256, 128, 16          # small enough to print; step 5 measures a bigger size
x = rng.standard_normal((ROWS, COLS), dtype=F32)
w = rng.standard_normal((COLS, OUT), dtype=F32) / F32(np.sqrt(COLS))
expected = shared_exp(x, w)
graph = minicomp.trace(shared_exp, x, w)
print(graph)

# Fusion alone (tutorial 04). The three consumers cannot be one kernel: a row sum and a column
# max walk the matrix in different orders, and the log(e + 1) kernel feeds a matmul. So e is
# "used by 3 kernels": fusion stores it once and each consumer reads it back.
fused_only, _ = run_pipeline(graph, ["fusion"])
print("\n--- fusion only ---\n")
print(fused_only)
_, decisions = explain_fusion(graph)
[refusal] = [d for d in decisions if not d.fused and d.producer == "%exp"]
print(f"\nfusion on %exp: {refusal.reason}")
print("\nkernels (estimated traffic: each kernel reads its operands once, writes its result once):")
kernel_table(fused_only)
e_bytes = graph.find("exp").type.nbytes
print(f"\n%exp is {human(e_bytes)}: written once, read by 3 kernels = {human(4 * e_bytes)} of traffic "
      f"that only carries e from one kernel to the others")
assert "used by 3 kernels" in refusal.reason
assert_close(minicomp.interpret(fused_only, x, w), list(expected))

# ----------------------------------------------------------------------------------------------
step("Step 2: the min cut: store e, or recompute it in every consumer?")
# ----------------------------------------------------------------------------------------------
# The alternative: every consumer computes exp(x * 0.5) itself from x (fused into it), and
# e is never stored. That costs 2 extra evaluations of mul and exp, and reading x 3 times
# instead of once. Which is cheaper? minicomp.passes.remat puts FLOPs and bytes in one
# currency: a FLOP costs BYTES_PER_FLOP bytes-equivalent (the machine balance: ~0.25, a core
# moving ~25 GB/s while its vector units do ~100 GFLOP/s), a transcendental counts as several
# FLOPs (FLOP_WEIGHT).
print(f"BYTES_PER_FLOP = {remat.BYTES_PER_FLOP}, FLOP_WEIGHT['exp'] = {FLOP_WEIGHT['exp']}, "
      f"mul: 1 (the default)")

# The question is asked of the whole group of ops that computes e (fusion's group: mul, exp),
# because the answer can be mixed: store an intermediate and recompute only the rest. For
# that, min_cut builds a flow network. Every value n of the group becomes two vertices
# n_in -> n_out, joined by an edge whose capacity is the cost of STORING n (written once,
# read by k consumers: nbytes * (1 + k)). The source feeds each n_in with the cost of
# RECOMPUTING n in the k - 1 extra consumers. Infinite edges follow the dataflow, and e_out
# drains into the sink (the consumers need e). Drawn, for the group mul -> exp:
#
#   source --recompute mul--> mul_in --store mul--> mul_out
#     |                                                |
#     |                                               inf
#     |                                                v
#     +---------------recompute exp---------------> exp_in --store exp--> exp_out --inf--> sink
#
# A cut separates source from sink; its cost is the capacity of the edges it crosses, and
# networkx's minimum_cut finds the cheapest. Below, the same network min_cut builds
# (remat.py), rebuilt here so that we can print it:

groups = find_groups(graph)
group_of = {n: g for g in groups for n in g.nodes}
value = graph.find("exp")
nodes = group_of[value].nodes                      # {mul, exp}: the kernel that computes e
k = len({id(group_of[u]) for u, _ in value.users})  # consumer kernels


def flow_network(value, nodes, k) -> nx.DiGraph:
    flow = nx.DiGraph()
    for n in sorted(nodes, key=lambda n: n.index):
        flow.add_edge("source", f"{n.name}_in", capacity=recompute_cost(n, k - 1),
                      why=f"recompute %{n.name} in {k - 1} more kernels")
        flow.add_edge(f"{n.name}_in", f"{n.name}_out", capacity=n.type.nbytes * (1 + k),
                      why=f"store %{n.name}: 1 write + {k} reads")
        for user, _ in n.users:
            if user in nodes:
                flow.add_edge(f"{n.name}_out", f"{user.name}_in", capacity=float("inf"),
                              why=f"%{user.name} reads %{n.name}")
    flow.add_edge(f"{value.name}_out", "sink", capacity=float("inf"), why="the consumers need it")
    return flow


def print_cut(flow: nx.DiGraph) -> tuple[float, set]:
    cost, (source_side, _) = nx.minimum_cut(flow, "source", "sink")
    for u, v, data in flow.edges(data=True):
        cut = u in source_side and v not in source_side
        capacity = "inf" if data["capacity"] == float("inf") else f"{data['capacity']:,.0f}"
        print(f"  {u:>8} -> {v:<8}{capacity:>11}   {data['why']:<34}{'<- CUT' if cut else ''}".rstrip())
    return cost, source_side


flow = flow_network(value, nodes, k)
print(f"\nflow network for %exp (k = {k} consumer kernels), capacities in bytes-equivalent:")
cost, source_side = print_cut(flow)
print(f"minimum cut: {cost:,.0f}")
# Reading it, per element of e (f32: 4 bytes):
#   store e           : 4 B x (1 write + 3 reads)                         = 16   B
#   recompute exp     : 2 extra x 8 FLOP x 0.25 B/FLOP                    =  4   B
#   recompute mul     : 2 extra x (1 FLOP x 0.25 + reading x again: 4 B)  =  8.5 B
# Cutting both source edges (recompute mul and exp: 12.5 B) is cheaper than cutting the store
# edge of e (16 B) or of mul (16 B, and then exp must still be recomputed: 20 B).
# Vertices left on the source side would stay in e's own kernel; cut store edges are stored;
# vertices on the sink side are recomputed in every consumer. Here: both on the sink side.
assert cost == min_cut(value, nodes, k)[0]      # the same network as the pass's
assert source_side == {"source"}

[decision] = plan_remat(graph)                  # what the "remat" pass will do
print(f"\nplan_remat: {decision}")
assert decision.recomputed == ["exp", "mul"] and decision.stored == []
assert decision.cut_cost == cost < decision.store_bytes

# Now move the balance. Storing costs nbytes * (1 + k): one more read per consumer. Recomputing
# costs (k - 1) x (the ops + reading their inputs). Both grow with k, recomputing faster
# (6.25 B against 4 B per extra consumer), so with enough consumers storing wins. And the
# dearer the ops (exp on a machine without fast vector exp), or the cheaper memory is relative
# to arithmetic (BYTES_PER_FLOP), the sooner. A function with k consumers of e:
CONSUMERS = [lambda e, w: e.sum(axis=1), lambda e, w: e.max(axis=0),
             lambda e, w: np.log(e + 1.0) @ w, lambda e, w: e.min(axis=1),
             lambda e, w: e.mean(axis=0), lambda e, w: (e * e).sum(axis=1)]


def fan_out(k: int):
    def shared_by_k(x, w):
        e = np.exp(x * 0.5)
        return tuple(consumer(e, w) for consumer in CONSUMERS[:k])
    return shared_by_k


@contextlib.contextmanager
def cost_model(exp_weight: float, bytes_per_flop: float):
    """Run the remat cost model with other machine constants, then restore them."""
    saved = FLOP_WEIGHT["exp"], remat.BYTES_PER_FLOP
    FLOP_WEIGHT["exp"], remat.BYTES_PER_FLOP = exp_weight, bytes_per_flop
    try:
        yield
    finally:
        FLOP_WEIGHT["exp"], remat.BYTES_PER_FLOP = saved


def verdict(decision) -> str:
    if not decision.recomputed:
        return "store"
    return "recompute" if not decision.stored else "mixed"


fan_graphs = {k: minicomp.trace(fan_out(k), x, w) for k in range(2, len(CONSUMERS) + 1)}
settings = [("default", 8, 0.25), ("exp twice as dear", 16, 0.25), ("exp 4x as dear", 32, 0.25),
            ("arithmetic-rich (GPU-like)", 8, 0.05)]
print(f"\n{'cost model':<28}{'exp':>5}{'B/FLOP':>8}" + "".join(f"{f'k={k}':>11}" for k in fan_graphs))
verdicts = {}
for label, exp_weight, bytes_per_flop in settings:
    with cost_model(exp_weight, bytes_per_flop):
        row = [verdict(plan_remat(g)[0]) for g in fan_graphs.values()]
    verdicts[label] = row
    print(f"{label:<28}{exp_weight:>5}{bytes_per_flop:>8}" + "".join(f"{v:>11}" for v in row))
# Per element, default model: recompute-all costs 6.25 B x (k-1), storing 4 B x (k+1):
# 6.25 at k=2 vs 12, 12.5 vs 16, 18.75 vs 20, then 25 vs 24 at k=5: store.
assert verdicts["default"] == ["recompute"] * 3 + ["store"] * 2
assert verdicts["exp twice as dear"][1] == "store"  # k=3, exp weight 16: 16.5 B > 16 B
assert "store" not in verdicts["arithmetic-rich (GPU-like)"]

# The cut can also fall in the middle: store an intermediate, recompute only what follows it.
# That pays when the intermediate is smaller than the value, e.g. a float32 result that
# is cast to float64 for its consumers: store the 4-byte exp, recompute the cast (one cheap op,
# no input read) in each consumer, never store the 8-byte value.


def upcast_shared(x):
    e = np.exp(x * 0.5).astype(np.float64)
    return e.sum(axis=1), e.max(axis=0), e.min(axis=1), e.mean(axis=0), (e * e).sum(axis=1)


[mixed] = plan_remat(minicomp.trace(upcast_shared, x))
print(f"\nupcast_shared: {mixed}   -> stored: {mixed.stored}")
assert verdict(mixed) == "mixed" and mixed.stored == ["exp"] and mixed.recomputed == ["cast"]

# And a consumer that cannot recompute at all: a matmul reads each element of its input many
# times (once per output column), so fusion never inlines a producer into it (tutorial 04).
# If e itself feeds a matmul, e is stored for the matmul whatever the others do, and copies
# for them would save nothing: remat leaves such values alone.


def feeds_matmul(x, w):
    e = np.exp(x * 0.5)
    return e.sum(axis=1), e.max(axis=0), e @ w


print(f"feeds_matmul: plan_remat -> {plan_remat(minicomp.trace(feeds_matmul, x, w))} (nothing to decide)")
assert plan_remat(minicomp.trace(feeds_matmul, x, w)) == []

# ----------------------------------------------------------------------------------------------
step("Step 3: after remat + fusion: the kernels, the bytes, the C")
# ----------------------------------------------------------------------------------------------
# The remat pass only duplicates nodes: one copy of mul and exp per consumer kernel (named
# *_re). Fusion, which runs after it, then fuses each copy into its consumer.
with_remat, report = run_pipeline(graph, ["remat", "fusion"])
print(report)
print()
print(with_remat)
print("\nkernels:")
kernel_table(with_remat)
assert not any(n.op == "exp" for n in with_remat.op_nodes())   # no kernel stores e any more
assert sum(n.op == "fused" for n in with_remat.op_nodes()) == 3

before, after = kernel_summary(fused_only), kernel_summary(with_remat)
print(f"\n{'':<16}{'kernels':>8}{'bytes moved':>13}{'FLOPs':>12}")
for label, s in [("fusion only", before), ("remat + fusion", after)]:
    print(f"{label:<16}{s.kernels:>8}{human(s.bytes_moved):>13}{human(s.flops, ''):>12}")
print(f"saved {human(before.bytes_moved - after.bytes_moved)} (e's write and one read: the other "
      f"two reads of e became reads of x), for {human(after.flops - before.flops, '')} more FLOPs")
assert before.bytes_moved - after.bytes_moved == 2 * e_bytes
# What one consumer looks like as loops: the column max now reads x and computes exp itself.
program = lower(with_remat)
[max_kernel] = [k for k in program.kernels if "max" in k.name]
print()
print(max_kernel)
assert "exp(" in str(max_kernel)

# Compiled to C, both plans give NumPy's results (the C target, passes given explicitly):
for passes in (["fusion"], ["remat", "fusion"]):
    run = minicomp.compile(graph, target="c", passes=passes)
    assert_close(run(x, w), list(expected))
    print(f"C with passes {passes}: matches NumPy")

# ----------------------------------------------------------------------------------------------
step("Step 4a: memory planning, on an unfused layer norm")
# ----------------------------------------------------------------------------------------------
# Every intermediate needs workspace bytes between the kernel that writes it and the last
# kernel that reads it: its *live interval*. Two values never alive at the same time can
# share bytes. The memory_plan pass (the last pass of the pipeline, on the graph exactly as
# it will be lowered) numbers the kernels 0, 1, 2, ..., computes each interval, lets an
# elementwise op write over an operand it is the last reader of (in place), and then places
# the values largest first, each in the smallest gap that fits among those alive with it.
# Layer norm without fusion has one kernel per op and values of two sizes: rows (512 KB here)
# and per-row statistics (1 KB).
ln_args = [rng.standard_normal((256, 512), dtype=F32), rng.standard_normal(512, dtype=F32),
           rng.standard_normal(512, dtype=F32)]
ln_graph, _ = run_pipeline(minicomp.trace(layernorm, *ln_args), disable=["fusion"])
print(ln_graph)
intervals = live_intervals(ln_graph)
steps = len(ln_graph.op_nodes())
print(f"\n{'value':<9}{'type':<14}{'live':<8}{'kernel step 0..' + str(steps - 1):<{steps * 2 + 2}}"
      f"{'offset':>9}{'bytes':>9}  in place of")
for node, (first, last) in intervals.items():
    bar = " ".join("#" if first <= t <= last else "." for t in range(steps))
    offset, nbytes = node.meta["storage"]
    print(f"%{node.name:<8}{str(node.type):<14}{f'{first}..{last}':<8}{bar:<{steps * 2 + 2}}"
          f"{offset:>9}{nbytes:>9}  {'%' + node.meta['inplace_of'] if 'inplace_of' in node.meta else ''}")
# How to read it: %sub is read by %mul (step 2) and by %div (step 6), so it stays alive from 1
# to 6 and nothing else may use its bytes then. %mul dies at step 3, and %mean (dead after step
# 1) sits in the same bytes as %mul: their intervals do not meet. %add, %sqrt are computed in
# place of the value before them (same shape, last reader), and so are %div and %mul_1, in
# %sub's bytes. The graph output (%add_1) is the caller's array, not planned.

# The same bytes over time: one row per storage slot (offset), one column per kernel step.
letters = {node: chr(ord("a") + i) for i, node in enumerate(intervals)}
print("\nworkspace map (rows: offsets; columns: kernel steps; letter: the value held there):")
for offset in sorted({n.meta["storage"][0] for n in intervals}):
    cells = []
    for t in range(steps):
        here = [n for n, (a, b) in intervals.items() if a <= t <= b and n.meta["storage"][0] == offset]
        cells.append(letters[here[-1]] if here else ".")  # in place: the value written at t
    print(f"  {offset:>8}: {' '.join(cells)}")
print("  " + ", ".join(f"{c}=%{n.name}" for n, c in letters.items()))

plan = memory_report(ln_graph)
print(f"\nmemory_report: {plan}")
assert plan.planned_bytes == plan.peak_live_bytes < plan.unplanned_bytes   # the plan is optimal
assert plan.in_place == 4

# Does in place matter? Plan again by liveness alone (memory_plan(graph, in_place=False)).
# In layer norm the peak is at step 2-3, where %sub and %mul are both alive anyway, so in place
# only moves values around. In an unfused softmax, the exp kernel is the last reader of
# x - max: in place, exp overwrites it and one buffer of x's size serves both; by liveness
# alone a kernel's output may not land on its own input (it is still being read), so two.
sm_args = [ln_args[0]]
sm_graph, _ = run_pipeline(minicomp.trace(WORKLOADS["softmax"].fn, *sm_args), disable=["fusion"])
print(f"\n{'unfused':<11}{'no plan':>10}{'liveness':>10}{'+ in place':>12}")
for name, g in [("layernorm", ln_graph), ("softmax", sm_graph)]:
    on, off = memory_report(g), memory_report(memory_plan(g.copy(), in_place=False))
    print(f"{name:<11}{human(on.unplanned_bytes):>10}{human(off.planned_bytes):>10}{human(on.planned_bytes):>12}")
    assert off.in_place == 0 and on.planned_bytes <= off.planned_bytes
    if name == "softmax":
        assert on.planned_bytes < 0.51 * off.planned_bytes  # one x-sized buffer, not two
# Lowering uses the plan: the workspace the compiled code allocates is the planned size.
with_plan = minicomp.jit(layernorm, disable=["fusion"])
without_plan = minicomp.jit(layernorm, disable=["fusion", "memory_plan"])
ln_expected = layernorm(*ln_args)
for label, fn in [("memory plan on ", with_plan), ("memory plan off", without_plan)]:
    assert_close(fn(*ln_args), ln_expected)
    print(f"C, {label}: workspace {human(fn.inspect(*ln_args).program.workspace_bytes)}, matches NumPy")
assert with_plan.inspect(*ln_args).program.workspace_bytes == plan.planned_bytes
assert without_plan.inspect(*ln_args).program.workspace_bytes == plan.unplanned_bytes

# ----------------------------------------------------------------------------------------------
step("Step 4b: peak memory of a GPT-2 block")
# ----------------------------------------------------------------------------------------------
# The `block` workload (pre-LN attention + MLP, 256 tokens x 768) at its benchmark size. Only
# shapes are needed to plan memory, so we trace with TensorTypes: no data.
block = WORKLOADS["block"]
shapes = [TensorType(s, "f32") for s in block.shapes["cpu"].values()]
traced = minicomp.trace(block.fn, *shapes)
rows = [("as traced (one kernel per op)", traced),
        ("all passes but fusion", run_pipeline(traced, disable=["fusion"])[0]),
        ("all passes", run_pipeline(traced)[0])]
print(f"{'':<31}{'kernels':>8}{'values':>7}{'no plan':>10}{'planned':>10}{'lower bound':>12}"
      f"{'slots':>6}{'in place':>9}")
reports = {}
for label, g in rows:
    r = reports[label] = memory_report(g)
    print(f"{label:<31}{len(g.op_nodes()):>8}{r.values:>7}{human(r.unplanned_bytes):>10}"
          f"{human(r.planned_bytes):>10}{human(r.peak_live_bytes):>12}{r.slots:>6}{r.in_place:>9}")
traced_r, all_r = reports[rows[0][0]], reports[rows[2][0]]
print(f"peak intermediate memory: {human(traced_r.unplanned_bytes)} (every op's result kept) -> "
      f"{human(all_r.planned_bytes)} with all passes ({traced_r.unplanned_bytes / all_r.planned_bytes:.0f}x less)")
assert all_r.planned_bytes < traced_r.planned_bytes < traced_r.unplanned_bytes
program = lower(rows[2][1])
scratch = {b for kernel in program.kernels for b in kernel.scratch}  # packed matmul panels
assert max(program.workspace[b] + b.size * b.dtype.itemsize for b in program.workspace
           if b not in scratch) <= all_r.planned_bytes
# "no plan" is the sum of all intermediates (what lowering allocates without memory_plan);
# "planned" what the plan needs; "lower bound" the most bytes alive at any one kernel, which
# no plan can beat: the greedy plan meets it. Fusion removes most intermediates (they live in
# registers and caches inside a kernel); planning then packs the few left (the residual
# stream, the normalised activations, the qkv and MLP hidden activations) into fewer bytes.
# Correctness with and without the plan, at the workload's tiny size, through C:
tiny = block.inputs("tiny")
block_expected = block.fn(*tiny)
for disable in ([], ["memory_plan"]):
    assert_close(minicomp.jit(block.fn, disable=disable)(*tiny), block_expected)
print("block through C, memory plan on and off: matches NumPy")

# ----------------------------------------------------------------------------------------------
step("Step 5: measured: remat and memory planning on/off, through C")
# ----------------------------------------------------------------------------------------------
# shared_exp at a moderate size: x is 2000 x 1000 float32 (8 MB). Times are medians of
# repeated calls after a warm-up, on ONE thread (the comparison is about work and bytes, not
# about threads on a shared machine); results are asserted against NumPy, timings only
# reported. Each row is jit(shared_exp, disable=[...]).
libgomp = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
all_threads = libgomp.omp_get_max_threads()


def median_ms(fn, args, repeats: int = 7) -> float:
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


big_x = rng.standard_normal((2000, 1000), dtype=F32)
big_w = rng.standard_normal((1000, 8), dtype=F32) / F32(np.sqrt(1000))
big_args = (big_x, big_w)
big_expected = shared_exp(*big_args)
variants = [("remat on,  plan on", []), ("remat off, plan on", ["remat"]),
            ("remat on,  plan off", ["memory_plan"]), ("remat off, plan off", ["remat", "memory_plan"])]
libgomp.omp_set_num_threads(1)
try:
    numpy_ms = median_ms(shared_exp, big_args)
    print(f"{'shared_exp 2000x1000':<22}{'kernels':>8}{'bytes moved':>13}{'workspace':>11}{'ms':>9}"
          f"{'vs NumPy':>10}")
    print(f"{'NumPy':<22}{'':>8}{'':>13}{'':>11}{numpy_ms:>9.2f}{1:>9.2f}x")
    measured = {}
    for label, disable in variants:
        fn = minicomp.jit(shared_exp, disable=disable)
        assert_close(fn(*big_args), big_expected)
        inspection = fn.inspect(*big_args)
        ms = measured[label] = median_ms(fn, big_args)
        print(f"{label:<22}{len(inspection.program.kernels):>8}"
              f"{human(kernel_summary(inspection.graph).bytes_moved):>13}"
              f"{human(inspection.program.workspace_bytes):>11}{ms:>9.2f}{ms / numpy_ms:>9.2f}x")

    # What does an exp cost on this machine, in the model's currency? Time one pass of
    # exp(x * 0.5) and one pass of x * 0.5 over the same 8 MB (one read, one write each): the
    # difference is 2M exps; the mul pass says what moving 8 bytes per element costs.
    exp_pass, mul_pass = minicomp.jit(lambda x: np.exp(x * 0.5)), minicomp.jit(lambda x: x * 0.5)
    assert_close(exp_pass(big_x), np.exp(big_x * 0.5))
    exp_ms, mul_ms = median_ms(exp_pass, (big_x,)), median_ms(mul_pass, (big_x,))
finally:
    libgomp.omp_set_num_threads(all_threads)
print(f"({os.cpu_count()} CPU cores, one thread used, load average {os.getloadavg()[0]:.1f})")

bytes_per_exp = max(exp_ms - mul_ms, 0.0) / mul_ms * 8             # bytes-equivalent of one exp
calibrated = bytes_per_exp / remat.BYTES_PER_FLOP                  # ... as an exp FLOP weight
with cost_model(calibrated, remat.BYTES_PER_FLOP):
    calibrated_plan = plan_remat(graph)[0]
faster = "remat on" if measured["remat on,  plan on"] < measured["remat off, plan on"] else "remat off"
print(f"\none pass of exp(x*0.5): {exp_ms:.2f} ms; of x*0.5: {mul_ms:.2f} ms -> one exp costs about "
      f"{bytes_per_exp:.1f} bytes of traffic here (the model assumes "
      f"{FLOP_WEIGHT['exp'] * remat.BYTES_PER_FLOP:g})")
print(f"with FLOP_WEIGHT['exp'] = {calibrated:.0f} the cut says: {verdict(calibrated_plan)} "
      f"({calibrated_plan}); measured faster here: {faster}")
# How to read it (timings depend on the machine and its load; they are only printed):
#  * "bytes moved" is the model's view: remat saves e's write and one of its reads (16 of
#    56 MB). What it costs is exps: every consumer now computes exp for every element, three
#    times as many as before. The default model prices an exp at FLOP_WEIGHT 8 x 0.25 B/FLOP
#    = 2 bytes, about right for code with a SIMD exp (NumPy has one). Our C calls scalar
#    expf once per element (gcc vectorises it only under -ffast-math), worth tens of bytes
#    of memory time: on the machine this was written on, remat off was clearly faster.
#  * The last two lines close the loop: measure what an exp costs here, put that price into
#    the model (FLOP_WEIGHT), and the cut decides what the measurement found. A cost model is
#    a description of the machine, and must be calibrated on it (autotuning, tutorial 13,
#    measures instead of trusting it). Cheap shared values (a scale, a shift, a ReLU) are
#    where the trade is most favourable: recomputing them costs little more than re-reading
#    their inputs. Whether that wins also depends on the consumers' loops (next point).
#  * Our reductions do one scalar add or compare per element in a dependent chain, and the
#    column max walks down columns: those kernels are bound by latency rather than memory, so
#    saved bytes buy little until loop schedules (tutorials 07, 08) make them fast.
#  * Memory planning changes the workspace, not the work: with remat off, e and the
#    log(e + 1) result share one buffer (the log kernel runs in place of e, its last reader),
#    halving the workspace; with remat on only one intermediate is left to plan. Less
#    workspace is less memory held at peak (what limits batch size and sequence length on
#    an accelerator); at this size the time barely moves.
print("\nall results matched NumPy")
