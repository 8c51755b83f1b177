"""Tutorial 06: from graph to machine code. Lowering to loops, rendering C, compiling with cffi.

What you learn:

* A *compute rule* says what one output element of an op is, as an expression over input
  elements at a symbolic index (TVM's ``te.compute``): ``sub[i0, i1] = x[i0, i1] - max[i0, 0]``.
  It says *what* to compute, nothing about loop order, threads or memory.
* *Lowering* wraps each rule in loops: one loop per output axis, plus an accumulator and a
  loop per reduced axis for reductions. The result is the loop IR, a small language of
  ``for``, ``load``, ``store`` and scalar arithmetic (TVM's TIR, MLIR's scf/memref level).
* In this chapter every op is **its own kernel** (graph fusion arrives with issue 4 and
  tutorial 04). We count what that costs: every intermediate is stored to memory by one kernel
  and loaded back by the next. We then build by hand, from the same rules, the fused softmax
  kernel a fusion pass will produce, and see those loads and stores disappear.
* The C renderer turns loop IR into readable C: ``int64_t`` indices, ``restrict`` pointers,
  an OpenMP pragma on the outer loop, a comment naming the line of *your* code, and helper
  functions wherever NumPy's meaning differs from C's (NaN-propagating ``mc_maximum``).
* Compiling it yourself: ``compile_c`` runs gcc (flags from ``cflags()``) into an on-disk
  cache keyed by a hash of the source; ``load_library`` opens the ``.so`` with cffi; you call
  ``minicomp_entry`` with raw pointers to NumPy arrays and a workspace. A second compile of
  the same source is a cache hit.
* ``@minicomp.jit(target="c")`` does all of it, and ``.inspect()`` shows every stage.
* The measured, honest result: one plain C loop nest per op is *not* faster than NumPy yet,
  core for core (threads can hide that on an idle machine). Fusion (issue 4) and schedules
  (tiling, vectorisation: issue 5) are what make compiled code fast.

Run from the repository root:  python tutorials/06_loops_and_c.py
"""

# The compile cache is a directory of compiled libraries. Point it at a fresh temporary
# directory *before* importing minicomp, so this tutorial starts cold (every compile really
# runs gcc) and leaves nothing behind in ~/.cache when it ends.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial06-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import ctypes
import ctypes.util
import linecache
import statistics
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

from minicomp.codegen.c import CRenderer, prelude, render_c
from minicomp.runtime.compiler import cflags, compile_c, compile_key, compiler, compiler_version, load_library
from minicomp.ir.compute import RULES, Reduce, Tensor, compute, linear_index
from minicomp.ir.loop_text import print_expr
from minicomp.ir.loops import (Allocate, Assign, Block, Buffer, Const, Declare, For, Kernel, Load,
                               Stmt, Store, Var, walk)
from minicomp.lower.program import lower
from minicomp.lower.rules import combine, nest, reduction_init
from minicomp.runtime import cache
from minicomp.runtime.executable import Executable, aligned_empty
from minicomp.schedules.cpu.lanes import lane_count
from minicomp.stages import loop_program
from minicomp.target import host_target
from minicomp.testing import assert_close
from minicomp.workloads import ew_chain, layernorm, softmax

THIS_FILE = Path(__file__).name


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def median_seconds(fn, repeats: int = 7) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------------------------
step("Step 1: trace a softmax")
# ----------------------------------------------------------------------------------------------
# The row softmax of minicomp's benchmark workloads, plain NumPy (minicomp/workloads.py):
#
#     def softmax(x):
#         e = np.exp(x - x.max(axis=-1, keepdims=True))
#         return e / e.sum(axis=-1, keepdims=True)
#
# Small enough to read every kernel, yet it has both kinds of op a compiler must handle:
# elementwise ops (sub, exp, div, with broadcasting) and reductions (max, sum over a row).
ROWS, COLS = 256, 512  # 131072 elements: just enough for minicomp to use threads (step 4)
rng = np.random.default_rng(0)
x = rng.standard_normal((ROWS, COLS), dtype=np.float32)
expected = softmax(x)

graph = minicomp.trace(softmax, x)
print(graph)
assert [n.op for n in graph.op_nodes()] == ["max", "sub", "exp", "sum", "div"]
# Five ops, so five kernels once lowered. Eager NumPy runs the same five passes over memory.

# ----------------------------------------------------------------------------------------------
step("Step 2: a compute rule says what one output element is")
# ----------------------------------------------------------------------------------------------
# Each op has a rule in minicomp.ir.compute.RULES. A rule gets the output index as *symbolic*
# loop variables (no numbers yet) and one Tensor per operand, and returns the expression of the
# output element there. That is TVM's tensor expression:
#     te.compute((256, 512), lambda i0, i1: x[i0, i1] - m[i0, 0])
# It fixes *what* is computed, and leaves *how* (loop order, tiling, threads) to a schedule.
print(f"{len(RULES)} ops have a compute rule, e.g. RULES['sub'] = {RULES['sub'].__name__}()")

max_node, sub_node, exp_node, sum_node, div_node = graph.op_nodes()
i0, i1 = Var("i0"), Var("i1")  # symbolic loop variables (int64)
# Operands live in flat row-major buffers; Tensor.of_buffer turns a multi-index into a Load
# at the linear offset i0*COLS + i1.
x_buf = Buffer("x", x.dtype, x.shape)
max_buf = Buffer("max", max_node.dtype, max_node.shape)
sub_expr = compute(sub_node, [i0, i1], [Tensor.of_buffer(x_buf), Tensor.of_buffer(max_buf)])
print(f"sub[i0, i1] = {print_expr(sub_expr)}")
# %max is f32[256,1] and broadcasts against f32[256,512]: the rule reads it at column 0 whatever
# i1 is, exactly NumPy's broadcasting. The linear index (i0 * 1) + 0 folded to plain i0.
# The expression is a small tree of objects (minicomp.ir.loops), not text:
print(f"  as a tree: {type(sub_expr).__name__}({sub_expr.op!r}, "
      f"{type(sub_expr.a).__name__}({sub_expr.a.buffer.name}, ...), "
      f"{type(sub_expr.b).__name__}({sub_expr.b.buffer.name}, index={sub_expr.b.index.name}))")
assert isinstance(sub_expr.b, Load) and sub_expr.b.index is i0

sub_buf = Buffer("sub", sub_node.dtype, sub_node.shape)
exp_expr = compute(exp_node, [i0, i1], [Tensor.of_buffer(sub_buf)])
print(f"exp[i0, i1] = {print_expr(exp_expr)}")

# A reduction's rule returns a Reduce: a combiner, the reduced axes as new loop variables, and
# the body to combine over them. The output index keeps axis 1 (keepdims) at size 1.
red = compute(max_node, [i0, i1], [Tensor.of_buffer(x_buf)])
assert isinstance(red, Reduce)
axes = ", ".join(f"{v.name} in 0..{extent}" for v, extent in red.axes)
print(f"max[i0, i1] = {red.combiner} over {axes} of {print_expr(red.body)}"
      f"   (accumulated in {red.dtype})")

# ----------------------------------------------------------------------------------------------
step("Step 3: lower the graph to loops, one kernel per op")
# ----------------------------------------------------------------------------------------------
# lower(graph) applies each node's rule at (i0, i1, ...) and wraps it in one loop per output
# axis: a Kernel. A reduction also declares an accumulator `acc`, loops over the reduced axis
# and stores the result. That is all lowering does: the plainest nest, the same for any
# machine. Text form: `buffer[linear index]` is a load or (left of `=`) a store.
plain = lower(graph)
print(plain.kernels[0])
assert "parallel" not in str(plain) and "lane" not in str(plain)
# The schedule stage then shapes each kernel for this CPU (minicomp/schedules/cpu/, run by
# minicomp.stages.loop_program, as jit does): a float reduction keeps a few partial
# accumulators, `acc_lanes`, one per SIMD lane (minicomp/schedules/cpu/lanes.py says why; how
# many is a rule of the machine, `lane_count(target)`: two vectors of its vectorised loops, 16
# floats with AVX2), and the outer loop of a kernel with enough work runs on all cores
# (`parallel`). Each kernel lists its steps.
program = loop_program(graph)
print()
print(program)
assert len(program.kernels) == 5
LANE_COUNT = lane_count(host_target())
assert [str(step) for step in program.kernels[0].schedule] == ["parallel(i0)", f"lanes(lanes={LANE_COUNT})"]

# Where does every value live? Inputs and outputs are the caller's arrays; each intermediate
# gets a slice of one workspace, at an offset fixed at compile time (a static buffer plan).
print("\nentry parameters:", ", ".join(str(b) for b in program.params))
print(f"workspace ({program.workspace_bytes} bytes):",
      ", ".join(f"{b.name}@{offset}" for b, offset in program.workspace.items()))
intermediates = set(program.workspace)


def count_accesses(stmt: Stmt, times: int = 1, counts: Counter | None = None) -> Counter:
    """How many element loads and stores of each buffer a statement executes."""
    counts = Counter() if counts is None else counts
    if isinstance(stmt, For):  # its body runs `extent` times
        return count_accesses(stmt.body, times * stmt.extent, counts)
    if isinstance(stmt, Block):
        for sub in stmt.stmts:
            count_accesses(sub, times, counts)
        return counts
    if isinstance(stmt, Allocate):  # a small local array: no memory access by itself
        return counts
    if isinstance(stmt, Store):
        counts[stmt.buffer, "store"] += times
        exprs = [stmt.index, stmt.value]
    else:  # Declare or Assign of a local scalar (the accumulator): no store to memory
        exprs = [stmt.init if isinstance(stmt, Declare) else stmt.value]
    for e in exprs:
        for sub in walk(e):
            if isinstance(sub, Load):
                counts[sub.buffer, "load"] += times
    return counts


def traffic_table(kernels: list[Kernel]) -> dict:
    """Print loads/stores per kernel, split into intermediates and inputs/outputs; totals."""
    print(f"{'kernel':<15}{'loads in/out':>14}{'loads interm.':>15}{'stores interm.':>16}"
          f"{'stores out':>12}")
    totals = Counter()
    for k in kernels:
        row = Counter()
        for (buffer, access), n in count_accesses(k.body).items():
            if buffer in k.params:  # not a local array (the SIMD lanes of an accumulator: registers)
                row[access, buffer in intermediates] += n
        totals.update(row)
        print(f"{k.name:<15}{row['load', False]:>14}{row['load', True]:>15}"
              f"{row['store', True]:>16}{row['store', False]:>12}")
    print(f"{'total':<15}{totals['load', False]:>14}{totals['load', True]:>15}"
          f"{totals['store', True]:>16}{totals['store', False]:>12}")
    return totals


print("\nelement loads and stores executed, per kernel:")
unfused = traffic_table(program.kernels)
carried = unfused["store", True] + unfused["load", True]
print(f"-> {carried} of the {sum(unfused.values())} element loads and stores "
      f"({100 * carried / sum(unfused.values()):.0f}%) only carry an intermediate from one kernel "
      "to the next.")
# Every %sub, %exp element is written to memory by one kernel and read back by the next, and
# %max/%sum are re-read for every element of their row. NumPy does the same: five passes.
assert unfused["store", True] == 2 * ROWS * COLS + 2 * ROWS

# What fusion will do (issue 4), built here by hand from the same compute rules: instead of a
# Load of %sub, hand the consumer the producer's *rule*, so the value is computed where it is
# needed and never stored. The row reductions become local scalars (registers): m and s. One
# kernel, parallel over rows, three short loops per row: the row max; exp(x - m) written
# straight into the output row while summing it into s; the output row divided by s.


def inlined(node, *operands: Tensor) -> Tensor:
    """A tensor whose elements are computed on the spot by ``node``'s rule: never stored."""
    return Tensor(node.type, lambda idx: compute(node, idx, list(operands)))


def in_register(node, var: Var) -> Tensor:
    """A per-row value (a reduction's result) held in the local scalar ``var``."""
    return Tensor(node.type, lambda idx: var)


def fuse_softmax_by_hand(graph, x_buf: Buffer, out_buf: Buffer) -> Kernel:
    """One kernel for the whole softmax graph (max, sub, exp, sum, div), from the ops' rules."""
    max_n, sub_n, exp_n, sum_n, div_n = graph.op_nodes()
    rows, cols = x_buf.shape
    x_t, out_t = Tensor.of_buffer(x_buf), Tensor.of_buffer(out_buf)
    m, s = Var("m", max_n.dtype), Var("s", sum_n.dtype)
    row_max = compute(max_n, [i0, Const(0)], [x_t])            # a Reduce over r1
    exp_t = inlined(exp_n, inlined(sub_n, x_t, in_register(max_n, m)))
    at = linear_index([i0, i1], out_buf.shape)
    body = For(i0, rows, Block([
        Declare(m, reduction_init("max", m.dtype)),
        nest(row_max.axes, Assign(m, combine("max", m, row_max.body)), parallel=False),
        Declare(s, reduction_init("sum", s.dtype)),
        For(i1, cols, Block([Store(out_buf, at, exp_t[[i0, i1]]),             # out = exp(x - m)
                             Assign(s, combine("sum", s, out_t[[i0, i1]]))])),  # s += out
        For(i1, cols, Store(out_buf, at, compute(div_n, [i0, i1], [out_t, in_register(sum_n, s)]))),
    ]), kind="parallel")
    return Kernel("softmax_fused", [x_buf], out_buf, body,
                  source=["%max %sub %exp %sum %div, fused by hand"])


out_buf = Buffer("out", div_node.dtype, div_node.shape)
fused = fuse_softmax_by_hand(graph, x_buf, out_buf)
print("\na fused kernel, as fusion will produce:")
print(fused)
print("\nits loads and stores:")
fused_counts = traffic_table([fused])
assert fused_counts["load", True] == fused_counts["store", True] == 0
# The same arithmetic, and no intermediate buffer at all. It still loads and stores, but only
# within one row of x and of the output: 2 KiB each, which stay in the L1 cache between the
# three loops, instead of whole 128 KiB tensors going out to memory between kernels.

# ----------------------------------------------------------------------------------------------
step("Step 4: render C")
# ----------------------------------------------------------------------------------------------
# render_c(program) gives one C file: a prelude of helper functions, one `static void k_<name>`
# per kernel, and `int minicomp_entry(void **args)` that calls them in order.
source = render_c(program)
print(f"{len(source.splitlines())} lines of C; the max kernel:\n")
max_kernel_c = CRenderer().kernel(program.kernels[0])
print(max_kernel_c)
# What to notice:
#  * the comment above the function: the graph node and the line of user code it came from;
#  * `const float *restrict b_x`: inputs are read-only, and `restrict` promises the compiler
#    that no two pointers overlap, so it may keep values in registers and vectorise;
#  * `int64_t` loop variables and indices: 32-bit `int` overflows beyond 2^31 elements;
#  * `#pragma omp parallel for schedule(dynamic, mc_chunk(...))`: compiled with -fopenmp, the
#    rows are run by a pool of threads (OpenMP's runtime, libgomp), each taking a chunk of
#    rows at a time (about an eighth of its share: a thread slowed by a busy core takes fewer);
#    `if(!mc_serial)`: a process forked after the threads started runs it on one thread;
#  * `mc_maximum_f32` (the loop IR's mc_maximum, one helper per C type), not C's
#    `a > b ? a : b` nor fmaxf: NumPy's np.maximum and .max() propagate NaN, and so does the
#    helper, defined in the prelude at the top of the file:
assert "int64_t i0" in max_kernel_c and "*restrict b_x" in max_kernel_c
assert "#pragma omp parallel for" in max_kernel_c and "mc_maximum_f32(" in max_kernel_c
loc_file, loc_line = max_node.loc.rsplit(":", 1)
assert f"/* %max = max  at {max_node.loc} */" in max_kernel_c
print(f"\nthat comment's line, {Path(loc_file).name}:{loc_line}:  "
      f"{linecache.getline(loc_file, int(loc_line)).strip()}")
print("\nthe helper, from the prelude:")
print(next(line for line in prelude().splitlines() if "mc_maximum_f32" in line))

entry = source[source.index("int minicomp_entry"):].rstrip()
print("\nthe entry point:\n" + entry)
# args[] holds the parameters in program.params order, the workspace, then NULL (non-NULL runs
# every loop on the calling thread: what a forked child must do, see runtime/executable.py).
# Each intermediate pointer is the workspace plus its planned offset; every kernel runs in
# order, in C. The status it returns is the call's own: 0, or the NumPy error a kernel hit.

# ----------------------------------------------------------------------------------------------
step("Step 5: compile and call it yourself, with cffi")
# ----------------------------------------------------------------------------------------------
# compile_c(source) writes the source into the cache directory and runs the C compiler with
# these flags: -shared -fPIC make a loadable library; -fwrapv gives signed overflow NumPy's
# wrap-around meaning; -fno-math-errno lets the compiler inline sqrt; -O3 -march=native
# optimise for this very CPU (set MINICOMP_CFLAGS to replace them); -fopenmp honours the pragma.
# (On some compiler/CPU pairs cflags() adds a flag steering around a known compiler bug.)
print(f"compiler: {compiler()} ({compiler_version(compiler())})")
print("flags   :", " ".join(cflags()))
start = time.perf_counter()
library_path = compile_c(source, "softmax")
cold_first_s = time.perf_counter() - start
print(f"library : {library_path}  ({library_path.stat().st_size} bytes, {cold_first_s:.2f} s)")

# load_library: cffi dlopen()s the .so, knowing one C declaration, the entry point's:
#     int minicomp_entry(void **args);
ffi, lib = load_library(library_path)
print("loaded  :", lib.minicomp_entry)

# Calling it is what Executable.__call__ does: C-contiguous arrays (x already is), a fresh
# output, a workspace for the intermediates (aligned to a cache line), and an array of raw
# pointers in program.params order, then the workspace, then NULL.
out = np.empty(out_buf.shape, np.float32)
workspace = aligned_empty(program.workspace_bytes)   # uint8 array of workspace_bytes
arrays = [x, out, workspace]
assert [b.name for b in program.params] == ["x", "div"]
pointers = ffi.new("void *[]", [ffi.cast("void *", a.ctypes.data) for a in arrays] + [ffi.NULL])
status = lib.minicomp_entry(pointers)   # runs all 5 kernels; 0 means no NumPy error case
assert status == 0
assert_close(out, expected)
print(f"minicomp_entry -> {status}; out matches NumPy's softmax (max abs diff "
      f"{np.abs(out - expected).max():.1e})")

# The intermediates really were written to memory: read %max back out of the workspace.
planned = next(b for b in program.workspace if b.name == "max")   # the Buffer lowering made
offset, nbytes = program.workspace[planned], planned.size * planned.dtype.itemsize
row_maxes = workspace[offset:offset + nbytes].view(planned.dtype).reshape(planned.shape)
assert_close(row_maxes, x.max(axis=-1, keepdims=True))
print(f"workspace bytes {offset}..{offset + nbytes} hold %max: "
      "x.max(axis=-1, keepdims=True)")

# ----------------------------------------------------------------------------------------------
step("Step 6: the compile cache")
# ----------------------------------------------------------------------------------------------
# Running gcc costs a good fraction of a second per graph; a served model would pay it on every
# start. So compile_c keys each library by SHA-256(source, flags, compiler version, minicomp
# version) and keeps it on disk. A new source compiles (cold); the same source again is a hit:
# only hashing and a checksum of the stored .so. Here: the layernorm workload, not yet compiled.
ln_args = [rng.standard_normal(s, dtype=np.float32) for s in [(ROWS, COLS), (COLS,), (COLS,)]]
ln_source = render_c(loop_program(minicomp.trace(layernorm, *ln_args)))
start = time.perf_counter()
cold_path = compile_c(ln_source, "layernorm")
cold_s = time.perf_counter() - start
start = time.perf_counter()
hit_path = compile_c(ln_source, "layernorm")
hit_s = time.perf_counter() - start
assert hit_path == cold_path
print(f"first compile (cold, runs gcc): {cold_s * 1e3:8.1f} ms")
print(f"second compile (cache hit)    : {hit_s * 1e3:8.1f} ms   ({cold_s / hit_s:.0f}x faster)")
print(f"cache {cache.cache_dir()}:")
for path in sorted(Path(CACHE_DIR).iterdir(), key=lambda p: (p.stem, p.suffix)):
    print(f"  {path.name[:16]}...{path.suffix:<6}{path.stat().st_size:>8} bytes")
# Per key: .c (the source, kept for reading and debugging), .so (the library), .json (size and
# checksum, written last: an entry without it, or with a wrong checksum, is rebuilt, never
# loaded), .lock (so two processes compiling the same graph at once run gcc once). The key
# covers the source without its comments, the flags, the compiler and the CPU it targets.
key = compile_key(ln_source, cflags(), compiler())
assert cold_path.name == f"{key}.so"
other = compile_key(ln_source, [f.replace("-O3", "-O0") for f in cflags()], compiler())
print(f"key with -O3: {key[:16]}...   with -O0: {other[:16]}...  (other flags, other library)")

# ----------------------------------------------------------------------------------------------
step('Step 7: @minicomp.jit(target="c") does all of this')
# ----------------------------------------------------------------------------------------------
# trace -> lower -> render_c -> compile_c -> load_library, once per argument signature, behind
# a decorator. The first call compiles; later calls with the same shapes and dtypes just run.


@minicomp.jit(target="c")
def scaled_relu(x, scale):
    return np.maximum(x * scale, 0)


small = rng.standard_normal((3, 4), dtype=np.float32)
scale = np.float32(2.5)
assert_close(scaled_relu(small, scale), np.maximum(small * scale, 0))
# inspect() shows every stage compiled for these arguments: the graph, the loops, the C.
inspection = scaled_relu.inspect(small, scale)
print(inspection.graph)
print(inspection.loops)
kernels_c = [part.strip() for part in inspection.source.split("\n\n")
             if part.strip().startswith("/* %")]     # the kernels, without the prelude
print("\n" + "\n\n".join(kernels_c))
# Here the comment points at *this* file, at the line of scaled_relu's body:
assert f"{THIS_FILE}:{scaled_relu.fn.__code__.co_firstlineno + 2} */" in kernels_c[0]

start = time.perf_counter()
scaled_relu(small, scale)   # same signature: no tracing, no compiling
print(f"\nsecond call: {(time.perf_counter() - start) * 1e6:.0f} us, compiled signatures: "
      f"{scaled_relu.cache_size}")
assert_close(scaled_relu(x, scale), np.maximum(x * scale, 0))  # new shape: traced and compiled
assert scaled_relu.cache_size == 2

# ----------------------------------------------------------------------------------------------
step("Step 8: measured: NumPy eager vs minicomp C, one kernel per op")
# ----------------------------------------------------------------------------------------------
# A moderate size: 1024 rows of 1024 float32 (4 MiB per tensor). Each time is the median of
# repeated calls after a warm-up; results are asserted against NumPy, timings only reported.
# NumPy runs these elementwise ops and reductions on one core, so the fair comparison is the
# C column with one thread. The next column lets OpenMP use every core (the parallel pragma
# of step 4); we switch the thread count with OpenMP's own omp_set_num_threads(), called in
# libgomp, the OpenMP runtime the compiled libraries loaded.
N, D = 1024, 1024
big_x = rng.standard_normal((N, D), dtype=np.float32)
vec_a, vec_b = (rng.standard_normal(D, dtype=np.float32) for _ in range(2))
cases = [("softmax", softmax, (big_x,)),
         ("layernorm", layernorm, (big_x, vec_a, vec_b)),
         ("ew_chain: gelu(x*a+b)", ew_chain, (big_x, vec_a, vec_b))]

# The hand-fused softmax of step 3 at this size, compiled by Executable (compile_c and
# load_library, as jit does): the lowered program with its five kernels swapped for one.
big_program = lower(minicomp.trace(softmax, big_x))
big_program.kernels = [fuse_softmax_by_hand(big_program.graph, *big_program.inputs,
                                             *big_program.outputs)]
big_program.workspace, big_program.workspace_bytes = {}, 0    # no intermediates left
hand_fused = Executable(big_program, render_c(big_program))
rows = []  # (name, compiled function, NumPy function, arguments, lowered program)
for name, fn, args in cases:
    compiled = minicomp.jit(fn, target="c")
    rows.append((name, compiled, fn, args, compiled.inspect(*args).program))
rows.append(("softmax, fused by hand", lambda x: hand_fused(x)[0], softmax, (big_x,), big_program))

libgomp = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
all_threads = libgomp.omp_get_max_threads()   # OMP_NUM_THREADS, or else one per core


def time_c(fn, args, threads: int) -> float:
    """Median time of ``fn(*args)`` with OpenMP limited to ``threads`` threads."""
    libgomp.omp_set_num_threads(threads)
    try:
        return median_seconds(lambda: fn(*args))
    finally:
        libgomp.omp_set_num_threads(all_threads)


header = (f"{'function':<24}{'kernels':>8}{'workspace':>11}{'NumPy ms':>10}{'C 1 thread':>12}"
          f"{f'C {all_threads} threads':>14}{'C / NumPy':>16}")
print(header)
print("-" * len(header))
times = {}  # name -> (C on one thread, C on all threads)
numpy_times = {}  # NumPy function -> its time
for name, compiled, fn, args, lowered in rows:
    assert_close(compiled(*args), fn(*args))
    if fn not in numpy_times:   # the fused softmax is compared with the same NumPy timing
        numpy_times[fn] = median_seconds(lambda: fn(*args))
    numpy_s = numpy_times[fn]
    one_s, all_s = times[name] = time_c(compiled, args, 1), time_c(compiled, args, all_threads)
    ratios = f"{one_s / numpy_s:.2f} / {all_s / numpy_s:.2f}"
    print(f"{name:<24}{len(lowered.kernels):>8}{lowered.workspace_bytes / 2**20:>7.0f} MiB"
          f"{numpy_s * 1e3:>10.2f}{one_s * 1e3:>12.2f}{all_s * 1e3:>14.2f}{ratios:>16}")
print(f"(ms per call; C flags: {' '.join(cflags())}; {os.cpu_count()} CPU cores, load average "
      f"{os.getloadavg()[0]:.1f} while measuring)")
print()
for threads, column in [(1, 0), (all_threads, 1)]:
    before, after = times["softmax"][column], times["softmax, fused by hand"][column]
    print(f"softmax, 5 kernels -> 1 fused, {threads:>2} thread(s): {before * 1e3:6.2f} ms -> "
          f"{after * 1e3:6.2f} ms (speed-up {before / after:.2f}x)")
# How to read it. "workspace" is the intermediates each call writes and reads back; "C / NumPy"
# is C's time over NumPy's, C on one thread / on all (below 1: C is faster).
#  * One thread against one thread, the one-kernel-per-op rows make the same passes over memory
#    as NumPy, and at best they tie. NumPy's inner loops are hand-vectorised (AVX2/AVX-512,
#    with SIMD exp and tanh); ours are plain scalar C that gcc vectorises only where the C's
#    meaning allows. It cannot for calls to libm's expf/tanhf (minicomp calls its own
#    vectorisable versions instead: minicomp/codegen/vmath.py), nor split a float max or sum
#    across SIMD lanes by itself (the C fixes the order of the float additions; another order
#    rounds differently): the default schedule writes the lanes out explicitly (`acc_lanes`
#    above, minicomp/schedules/cpu/lanes.py), so the reductions vectorise too.
#  * On all cores C can come out ahead, but that is parallelism, not better code: NumPy runs
#    these ops on one core. Threads pay only on an idle machine: every kernel ends with each
#    thread waiting for the slowest, and if other processes hold the cores (load average
#    above the core count), that wait is long and threads make it slower instead.
#  * The last row previews fusion: one kernel, nothing in the workspace. It saves time where
#    memory traffic was the bottleneck, typically with many threads, whose cores together
#    outrun memory; but the hand-written kernel keeps step 3's plain reductions (one scalar
#    accumulator, no SIMD lanes), and a large cache may hold the 4 MiB intermediates anyway:
#    little gain, or a loss against the lane-split kernels. Automatic fusion has both.
# That is where the next issues come in: automatic fusion (issue 4, tutorial 04) removes the
# round trips, and schedules (tiling, unrolling, vectorisation: issue 5, tutorials 07 and 08)
# make each remaining kernel fast. Together they are how compiled code beats eager NumPy;
# neither is here yet.
