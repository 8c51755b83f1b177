"""Tutorial 07: tiling. Split and reorder loops so the data stays in cache; matmul time vs tile size.

What you learn:

* A *schedule* changes how a loop nest runs, never what it computes (TVM's and Halide's
  split/reorder; minicomp's ``minicomp.ir.schedule``). Each step is a small record applied to
  a lowered ``Kernel``: ``Split("k", 256)`` turns ``for k`` into ``for k_o: for k_i``,
  ``Reorder("j_o", "k_o", "i", ...)`` permutes perfectly nested loops. Steps check their own
  legality (a reorder that would change the result is refused) and are printed with the
  kernel, so a kernel shows how it was shaped.
* Why loop order matters for a matmul: which of the three matrices each loop walks, with which
  stride, and how many times the whole of ``b`` streams through the caches.
* **Tiling** (split two loops, move the outer halves out): a block of ``b`` small enough for
  the cache is reused by every row of ``a`` before moving on. Measured: time against tile size.
* Where this leaves us against minicomp's default packed micro-kernel matmul (tutorial 10) and
  NumPy's BLAS. Tutorial 08 continues from the best tile here with unrolling and SIMD.

Everything here runs on **one thread** (NumPy's BLAS too), so the table compares loop nests,
not core counts.

Run from the repository root:  python tutorials/07_tiling.py
"""

# One thread everywhere: OpenBLAS (NumPy's matmul) and OpenMP (minicomp's parallel loops) read
# these when they start, so they are set before NumPy and minicomp are imported. A fresh
# compile cache in a temporary directory, likewise, so nothing is left behind.
import atexit
import os
import shutil
import tempfile

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial07-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp.bench import machine_description
from minicomp.tools.asm import assembly, simd_summary
from minicomp.codegen.c import CRenderer, render_c
from minicomp.ir.loops import Binary, Block, For, Kernel, Load, Store, Var, const
from minicomp.ir.schedule import Parallel, Reorder, ScheduleError, Split, apply_schedule, loop_names
from minicomp.lower.program import lower
from minicomp.runtime.executable import Executable
from minicomp.testing import assert_close

F32 = np.float32
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def median_ms(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def cache_size(level: int) -> str:
    """This CPU's data cache size at ``level`` (from Linux's sysfs), or '?'."""
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")) if root.exists() else []:
        try:
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                return (index / "size").read_text().strip()
        except (OSError, ValueError):
            pass
    return "?"


# ----------------------------------------------------------------------------------------------
step("Step 1: the textbook matmul, as loop IR")
# ----------------------------------------------------------------------------------------------
# c = a @ b with a: 256 x 1024, b: 1024 x 1024 (4 MiB: more than this CPU's L2 cache per core,
# printed below), c: 256 x 1024. 0.5 GFLOP.
M, K, N = 256, 1024, 1024
a = rng.standard_normal((M, K), dtype=F32)
b = rng.standard_normal((K, N), dtype=F32) / F32(np.sqrt(K))
expected = a @ b
FLOPS = 2 * M * N * K
print(f"a: {M} x {K}, b: {K} x {N}, c: {M} x {N}; L1d {cache_size(1)}, L2 {cache_size(2)}, "
      f"L3 {cache_size(3)} (per core for L1, L2 on most CPUs)")

# Lowering a matmul gives the plain nest of its definition, one scalar accumulator per element
# of c (minicomp's default CPU schedule then packs it around a micro-kernel: tutorial 10). To
# see each step's effect on its own we take the lowered program for its buffers (a, b and the
# output) and put in a kernel built by hand from the loop IR (minicomp.ir.loops): zero c, then
# the three loops of the definition, c[i, j] += a[i, k] * b[k, j].
program = lower(minicomp.trace(lambda a, b: a @ b, a, b))
A, B = program.inputs
C = program.outputs[0]
i, j, k, zi, zj = (Var(name) for name in ("i", "j", "k", "zi", "zj"))
f32 = C.dtype


def at(row, col, width):   # the row-major linear index row * width + col
    return row * width + col


zero_c = For(zi, M, For(zj, N, Store(C, at(zi, zj, N), const(0, f32))))
multiply_add = Store(C, at(i, j, N), Binary("+", Load(C, at(i, j, N)),
                                            Binary("*", Load(A, at(i, k, K)), Load(B, at(k, j, N)), f32), f32))
naive = Kernel("matmul", [A, B], C, Block([zero_c, For(i, M, For(j, N, For(k, K, multiply_add)))]),
               source=["c = a @ b, the textbook i-j-k loops"])
print(naive)
print(f"loops: {loop_names(naive)}")


def compiled(kernel: Kernel) -> Executable:
    """The lowered program with its one kernel replaced by ``kernel``, compiled to C and loaded."""
    scheduled = replace(program, kernels=[kernel], workspace={}, workspace_bytes=0)
    return Executable(scheduled, render_c(scheduled))


def run_and_time(kernel: Kernel) -> float:
    """Compile ``kernel``, check it against NumPy, return its median time in ms."""
    executable = compiled(kernel)
    assert_close(executable(a, b)[0], expected)
    return median_ms(lambda: executable(a, b))


def gflops(ms: float) -> float:
    return FLOPS / ms / 1e6


naive_ms = run_and_time(naive)
print(f"\ni-j-k: {naive_ms:.1f} ms, {gflops(naive_ms):.1f} GFLOP/s (matches NumPy)")
# The innermost loop k walks a column of b: stride N floats (4 KiB) per step, a new cache
# line every time. gcc -O3 softens that by itself: it vectorises the *j* loop (outer-loop
# vectorisation), so each k step reads 16 (AVX-512) or 8 (AVX2) neighbouring floats of a row
# of b at once. The assembly shows it: packed vector instructions on zmm/ymm registers.
simd = simd_summary(assembly(replace(program, kernels=[naive], workspace={}, workspace_bytes=0)))
print(f"its assembly, vector instructions by register width: {simd['matmul']}")

# ----------------------------------------------------------------------------------------------
step("Step 2: reorder: i-k-j")
# ----------------------------------------------------------------------------------------------
# Reorder("k", "j") puts k outside j (the names are given outermost first): now the innermost
# loop j runs along a row of b and a row of c, unit stride, and a[i, k] is a constant for it.
# This is the order minicomp's default schedule gives a matmul too small to pack (the
# accumulate_in_output strategy: minicomp/schedules/cpu/accumulate.py).
ikj = Reorder("k", "j").apply(naive)
print(ikj)
ikj_ms = run_and_time(ikj)
print(f"\ni-k-j: {ikj_ms:.1f} ms, {gflops(ikj_ms):.1f} GFLOP/s (i-j-k was {naive_ms:.1f} ms)")
# How much the reorder alone gains depends on the compiler more than one would think: gcc had
# already vectorised the i-j-k nest over j, so both read b along rows. What the two orders
# share is the real problem: for every row i of a, the j and k loops sweep the *whole* of b,
# 4 MiB, so b streams from the L3 cache 256 times (1 GiB of traffic for 0.5 GFLOP), and the
# loop runs at the speed of that stream.
#
# Every step checks that it keeps the kernel's meaning, and refuses otherwise. Loops can only
# be permuted within one perfect nest (the zeroing loops are a nest of their own), and a loop
# whose iterations write the same elements of c may not be split across threads (Parallel:
# OpenMP's parallel for); the rows i may:
for attempt in (Reorder("zj", "k"), Parallel("k"), Parallel("i")):
    try:
        attempt.apply(ikj)
        print(f"{str(attempt):<16} accepted")
    except ScheduleError as error:
        print(f"{str(attempt):<16} refused: {error.why}")

# ----------------------------------------------------------------------------------------------
step("Step 3: tiling: split k and j, move the blocks out")
# ----------------------------------------------------------------------------------------------
# Split k into (k_o, k_i) and j into (j_o, j_i), then order the loops j_o, k_o, i, k_i, j_i:
# for one block of b (kc rows x nc columns), run *every* row i of a over it, then move to the
# next block. The block is read from memory once and reused 256 times from cache; each row i
# touches kc floats of a and nc floats of c. Legal: for each element of c the k values are
# still added in increasing order (k_o, then k_i).


def tiled(kc: int, nc: int) -> list:
    """The schedule: split k by kc and j by nc, block loops outermost."""
    return [Split("k", kc), Split("j", nc), Reorder("j_o", "k_o", "i", "k_i", "j_i")]


example = apply_schedule(naive, tiled(256, 256))
print(example)
inner_c = CRenderer().kernel(example)
print("\nthe multiply's loops in C:\n" + inner_c[inner_c.index("  for (int64_t j_o"):].rstrip()[:-1])
# Each step of the schedule is one "# schedule:" line: the kernel says how it was made, and
# the same list of steps can be applied to a fresh lowering again (what an autotuner does).

# ----------------------------------------------------------------------------------------------
step("Step 4: measured: time against tile size")
# ----------------------------------------------------------------------------------------------
# Blocks of b from tiny to the whole matrix. "b block" is the bytes of b one (j_o, k_o)
# iteration reuses across all rows i; the rows of a and c each iteration of i touches are
# kc and nc floats on top of it. Medians of 5 runs after a warm-up; results asserted. The
# last row is the i-k-j kernel of Step 2 (its time from there).
print(f"{'kc x nc':<13}{'b block':>10}{'ms':>9}{'GFLOP/s':>9}{'vs i-k-j':>10}")
sweep = [(16, 16), (32, 32), (64, 64), (128, 128), (256, 256), (64, 256), (512, 512), (1024, 1024)]
timings = {}
for kc, nc in sweep:
    untiled = (kc, nc) == (K, N)
    ms = timings[kc, nc] = ikj_ms if untiled else run_and_time(apply_schedule(naive, tiled(kc, nc)))
    block = kc * nc * 4
    label = f"{kc} x {nc}" + ("  (untiled)" if untiled else "")
    print(f"{label:<13}{block / 1024:>8.0f} K{ms:>9.1f}{gflops(ms):>9.1f}{ikj_ms / ms:>9.1f}x")
best = min(timings, key=timings.get)
print(f"\nbest tile here: kc x nc = {best[0]} x {best[1]} ({timings[best]:.1f} ms, "
      f"{ikj_ms / timings[best]:.1f}x the untiled i-k-j)")
# How to read it (the numbers depend on the machine and its load; the shape is the point):
#  * the whole matrix as one "tile" (4 MiB of b) is the untiled loop: b streams from L3 for
#    every row of a. Blocks of b that fit in the L2 cache (hundreds of KiB here), with a row
#    piece of c that fits in L1, are reused by all 256 rows: several times faster.
#  * small tiles (32 x 32 ...) fit even in L1 but make every loop short, so loop overhead and
#    re-reading c's row for every k block (K / kc times) eat the gain.
#  * 16 x 16 is special: each inner loop is one vector long and the k_i loop 16 steps, so
#    gcc unrolls both completely and keeps that piece of c in a register for all 16 k steps.
#    If it comes out on top, that is the effect of *registers*, not of the cache: the topic
#    of tutorial 08, which builds such a register tile on purpose.
# Tiling is about which data is reused while it is still close to the core.

# ----------------------------------------------------------------------------------------------
step("Step 5: against the packed micro-kernel and NumPy")
# ----------------------------------------------------------------------------------------------
# minicomp's default schedule of this matmul: packed panels and a register-blocked
# micro-kernel (tutorial 10). Its schedule line says which tiles it uses.
default = minicomp.jit(lambda a, b: a @ b)
assert_close(default(a, b), expected)
[packed_kernel] = default.inspect(a, b).program.kernels
print(f"default schedule: {packed_kernel.schedule[0]}")
rows = [("i-j-k (textbook)", naive_ms), ("i-k-j (reordered)", ikj_ms),
        (f"tiled {best[0]} x {best[1]}", timings[best]),
        ("minicomp default (packed)", median_ms(lambda: default(a, b))),
        ("NumPy (OpenBLAS)", median_ms(lambda: a @ b))]
print(f"\n{machine_description()}; one thread")
print(f"{'':<28}{'ms':>9}{'GFLOP/s':>9}{'vs NumPy':>10}")
for label, ms in rows:
    print(f"{label:<28}{ms:>9.1f}{gflops(ms):>9.1f}{rows[-1][1] / ms:>9.2f}x")
print(f"(load average {os.getloadavg()[0]:.1f} while measuring)")
# How to read it: tiling fixes where the data comes from, but the innermost loop still loads
# and stores a piece of c's row for every single k: one multiply-add per load and store. The
# packed kernel and BLAS keep a tile of c in *registers* across the whole k loop and copy the
# blocks of a and b into contiguous panels first. Registers are the next level of the same
# idea: tutorial 08 gets there with three more schedule steps (split, unroll, vectorize)
# plus a cache_write, and tutorial 10 shows the hand-written micro-kernel.
print("\nall results matched NumPy")
