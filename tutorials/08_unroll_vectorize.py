"""Tutorial 08: unrolling and SIMD. Seeing the vector instructions.

What you learn:

* A modern core does the same operation on 8 (AVX2) or 16 (AVX-512) floats at once: *SIMD*.
  Whether a loop gets SIMD instructions is decided by the C compiler, and we can look:
  ``minicomp.tools.asm`` compiles the generated C with ``-S`` and counts each kernel's
  vector instructions by register width (``zmm`` 512-bit, ``ymm`` 256-bit, ``xmm`` 128-bit);
  ``minicomp dump --emit asm`` is the command-line twin.
* The schedule steps ``Vectorize`` (``#pragma omp simd``: run this loop's iterations in SIMD
  lanes) and ``Unroll`` (replicate the body, or ``#pragma GCC unroll``) state that intent in
  the loop IR. Both check legality: a float sum cannot be vectorised as written, because SIMD
  adds in another order (and float addition is not associative).
* Three experiments, each measured on one thread and checked against NumPy:

  1. an elementwise kernel: gcc vectorises it by itself; with its auto-vectoriser switched off
     it runs one element at a time, and ``Vectorize`` brings the SIMD back;
  2. a reduction: the one-accumulator loop lowering writes stays scalar; minicomp's default
     schedule (the ``lanes`` strategy) sums into 16 partial sums instead (with AVX2: two
     vectors of the machine's vectorised loops), which vectorises;
  3. the tiled matmul of tutorial 07, turned into a **register tile**: split and reorder so an
     ``mr x nr`` block of the result is computed across the whole k loop, ``cache_write`` it
     into a local array the compiler keeps in registers, ``Vectorize`` the columns and
     ``Unroll`` the rows. This is the micro-kernel of tutorial 10, built from schedule steps.

Run from the repository root:  python tutorials/08_unroll_vectorize.py
"""

# One thread everywhere (OpenBLAS for NumPy's matmul, OpenMP for minicomp's parallel loops),
# set before NumPy and minicomp are imported; a temporary compile cache, left behind nowhere.
import atexit
import os
import shutil
import tempfile

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"
CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial08-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import shlex
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp.bench import machine_description
from minicomp.codegen import gemm
from minicomp.tools.asm import assembly, kernel_sections, simd_summary
from minicomp.codegen.c import CRenderer, render_c
from minicomp.runtime.compiler import DEFAULT_OPT_FLAGS, build_flags
from minicomp.ir.loops import Binary, Block, For, Kernel, Load, Store, Var, const
from minicomp.ir.schedule import (Reorder, ScheduleError, Split, Unroll, Vectorize, apply_schedule,
                                  schedule_program)
from minicomp.ir.schedule_memory import CacheWrite
from minicomp.lower.program import lower
from minicomp.stages import simplify_indices
from minicomp.target import host_target
from minicomp.passes.pipeline import run_pipeline
from minicomp.schedules import Strategy
from minicomp.schedules.cpu.lanes import lane_count
from minicomp.runtime.executable import Executable
from minicomp.testing import assert_close
from minicomp.workloads import ew_chain

F32 = np.float32
f32 = np.dtype(F32)   # the loop IR's dtypes are np.dtype objects
rng = np.random.default_rng(0)
OPT = shlex.split(os.environ.get("MINICOMP_CFLAGS", "")) or DEFAULT_OPT_FLAGS   # the build's flags
NO_AUTOVEC = OPT + ["-fno-tree-vectorize"]  # ... with gcc's own loop vectoriser switched off


# What minicomp thinks this machine is (`minicomp target` prints it): among other things, the
# width of the vectors gcc gives the loops it vectorises by itself under the build's flags. It
# is not always the register width: on most Intel AVX-512 CPUs gcc's tuning prefers 256-bit
# (ymm) vectors for loops, while code written with explicit vector types (the micro-kernel of
# tutorial 10) gets the full 512 bits. minicomp.target probed it by compiling a plain loop.
TARGET = host_target()
WIDE = {64: "zmm", 32: "ymm"}.get(TARGET.loop_vector_bytes, "xmm")   # the registers of vectorised loops
LANES = TARGET.loop_lanes(F32)                                        # floats per such register
LANE_COUNT = lane_count(TARGET)       # partial sums of a lane reduction: two such vectors (16 with AVX2)


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


@contextmanager
def optimisation_flags(flags: list[str]):
    """Compile with ``flags`` instead of the defaults (through MINICOMP_CFLAGS) inside the block."""
    old = os.environ.get("MINICOMP_CFLAGS")
    os.environ["MINICOMP_CFLAGS"] = shlex.join(flags)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINICOMP_CFLAGS"]
        else:
            os.environ["MINICOMP_CFLAGS"] = old


def build(program, flags: list[str]):
    """(Executable, that kernel's assembly) of a one-kernel program compiled with ``flags``."""
    with optimisation_flags(flags):
        executable = Executable(program, render_c(program))
    asm = assembly(program, flags=build_flags(flags))  # the build's flags, workarounds included
    return executable, asm


def vector_count(asm: str) -> int:
    """Packed instructions on the widest registers, over all kernels of ``asm``."""
    return sum(counts[WIDE] for counts in simd_summary(asm).values())


def describe(asm: str) -> str:
    [counts] = simd_summary(asm).values()
    return f"{WIDE} {counts[WIDE]:>3}, scalar {counts['scalar']:>3}"


print(f"{machine_description()}; one thread\ntarget: {TARGET}")
print(f"gcc vectorises loops with {WIDE} registers for these flags ({LANES} floats)")

# ----------------------------------------------------------------------------------------------
step("Step 1: an elementwise kernel, and its assembly")
# ----------------------------------------------------------------------------------------------
# gelu(x * a + b) (the ew_chain workload), fused into one kernel (tutorial 04). 256 x 1024
# floats: 1 MiB in, 1 MiB out, in the L2 cache, so arithmetic rather than memory sets the pace.
x = rng.standard_normal((256, 1024), dtype=F32)
va, vb = rng.standard_normal(1024, dtype=F32), rng.standard_normal(1024, dtype=F32)
ew_expected = ew_chain(x, va, vb)
# lower(): the plain loop nest, before the default schedule (minicomp/schedules/cpu/
# elementwise.py), which would already mark i1 vectorized and i0 parallel
ew_program = simplify_indices(lower(run_pipeline(minicomp.trace(ew_chain, x, va, vb))[0]))
[ew_kernel] = ew_program.kernels
print(ew_kernel)

auto_exe, auto_asm = build(ew_program, OPT)
assert_close(auto_exe(x, va, vb)[0], ew_expected)
[(section_name, lines)] = kernel_sections(auto_asm).items()
vector_lines = [line.strip() for line in lines if f"%{WIDE}" in line]
arithmetic = [line for line in vector_lines if line.startswith(("vfmadd", "vmulps", "vaddps", "vsubps"))]
print(f"\ngcc {' '.join(OPT)}: k_{section_name} has {len(vector_lines)} instructions on {WIDE} registers; "
      "the first arithmetic ones:")
print("\n".join(f"    {line}" for line in arithmetic[:8]))
assert len(vector_lines) > 0
# `vfmadd132ps` on zmm registers is 16 fused multiply-adds in one instruction ("ps": packed
# single; 8 on ymm); its scalar twin `vfmadd132ss` works on one float in an xmm register. gcc vectorised the inner loop on its
# own: unit stride, restrict pointers, no dependence between iterations, and the tanh is a
# branch-free polynomial (codegen/vmath.py) it can inline into vector code.

# ----------------------------------------------------------------------------------------------
step("Step 2: switch gcc's vectoriser off, and Vectorize back on")
# ----------------------------------------------------------------------------------------------
# -fno-tree-vectorize stops gcc from vectorising loops by its own analysis. A loop marked
# `vectorized` in the loop IR is printed with `#pragma omp simd`, which asks for SIMD
# explicitly (OpenMP 4's simd construct; -fopenmp enables it): the schedule decides, not the
# compiler's heuristics.
vectorized_program = schedule_program(ew_program, {ew_kernel.name: [Vectorize("i1")]})
[vectorized_kernel] = vectorized_program.kernels
print(vectorized_kernel)
c_text = CRenderer().kernel(vectorized_kernel)
pragma_at = c_text.index("#pragma omp simd")
print("\nin C:\n" + c_text[c_text.rindex("\n", 0, c_text.rindex("\n", 0, pragma_at)) + 1:
                          c_text.index("\n", c_text.index("for (int64_t i1", pragma_at)) + 1].rstrip())

rows = []
for label, program, flags in [("gcc auto-vectorised", ew_program, OPT),
                              ("-fno-tree-vectorize", ew_program, NO_AUTOVEC),
                              ("-fno-tree-vectorize + Vectorize", vectorized_program, NO_AUTOVEC)]:
    executable, asm = build(program, flags)
    assert_close(executable(x, va, vb)[0], ew_expected)
    rows.append((label, asm, median_ms(lambda: executable(x, va, vb))))
numpy_ms = median_ms(lambda: ew_chain(x, va, vb))
print(f"\n{'gelu(x*a + b), 256 x 1024':<34}{'instructions':>20}{'ms':>8}{'vs NumPy':>10}")
for label, asm, ms in rows:
    print(f"{label:<34}{describe(asm):>20}{ms:>8.3f}{numpy_ms / ms:>9.2f}x")
print(f"{'NumPy (one pass per op)':<34}{'':>20}{numpy_ms:>8.3f}{1:>9.2f}x")
assert vector_count(rows[1][1]) < vector_count(rows[0][1]) and vector_count(rows[2][1]) > 0
print(f"SIMD vs one element at a time, measured here: {rows[1][2] / rows[0][2]:.1f}x "
      f"(auto), {rows[1][2] / rows[2][2]:.1f}x (Vectorize)")

# ----------------------------------------------------------------------------------------------
step(f"Step 3: a reduction: one accumulator stays scalar, {LANE_COUNT} lanes vectorise")
# ----------------------------------------------------------------------------------------------
# Row sums of a 256 x 4096 array, written the plain way: one scalar accumulator per row.
# Every add needs the previous one's result: a chain of 4096 dependent additions, each
# waiting a few cycles for the last. Vectorising it would add the elements in another order
# (interleaved partial sums), which rounds differently: C forbids that for floats (unless
# -ffast-math), and Vectorize refuses it too.
rows_x = rng.standard_normal((256, 4096), dtype=F32)
sum_program = lower(minicomp.trace(lambda x: x.sum(axis=-1), rows_x))
[plain] = sum_program.kernels   # lowering writes every reduction this plain way
print(plain)
try:
    Vectorize("r1").apply(plain)
except ScheduleError as error:
    print(f"\nVectorize('r1') refused: {error.why}")

# minicomp's default schedule of a float reduction, the `lanes` strategy (a schedule step like
# Vectorize, with a name and parameters: minicomp/schedules/cpu/lanes.py), changes the order
# explicitly, in the loop IR: LANE_COUNT partial sums in a local array (lane_count(TARGET): two
# vectors of the width gcc gives loops here, 16 floats with AVX2), lane l adding elements l,
# l+LANE_COUNT, l+2*LANE_COUNT, ...; the lane loop is `vectorized` (two independent SIMD adds
# per LANE_COUNT elements); the lanes are combined at the end. Same values to float32 rounding (NumPy itself sums
# pairwise, in yet another order).
lanes_kernel = Strategy("lanes", lanes=LANE_COUNT).apply(plain)
print()
print(lanes_kernel)
sum_rows = []
for label, kernel in [("one accumulator", plain), (f"{LANE_COUNT} lanes (minicomp)", lanes_kernel)]:
    executable, asm = build(replace(sum_program, kernels=[kernel]), OPT)
    assert_close(executable(rows_x)[0], rows_x.sum(axis=-1))
    sum_rows.append((label, asm, median_ms(lambda: executable(rows_x))))
numpy_sum_ms = median_ms(lambda: rows_x.sum(axis=-1))
print(f"\n{'row sums, 256 x 4096':<34}{'instructions':>20}{'ms':>8}{'vs NumPy':>10}")
for label, asm, ms in sum_rows:
    print(f"{label:<34}{describe(asm):>20}{ms:>8.3f}{numpy_sum_ms / ms:>9.2f}x")
print(f"{'NumPy x.sum(axis=-1)':<34}{'':>20}{numpy_sum_ms:>8.3f}{1:>9.2f}x")
assert vector_count(sum_rows[1][1]) > vector_count(sum_rows[0][1])

# ----------------------------------------------------------------------------------------------
step("Step 4: a register tile for the matmul, from schedule steps")
# ----------------------------------------------------------------------------------------------
# Tutorial 07's tiled matmul (b in blocks of 256 x 256) still loads and stores c[i, j..] for
# every k: one multiply-add per load and store. A register tile computes an mr x nr block of
# c across the *whole* k loop in registers. Its shape is the micro-kernel's (tutorial 10):
# mr = 6 rows of 2 vectors with 16 vector registers, of 4 with 32, but in vectors as wide as
# gcc gives vectorised loops (LANES floats), since gcc vectorises this tile: mr x nr = 6 x 16
# with AVX2, 6 x 64 with AVX-512 at full width, 6 x 32 where gcc prefers 256-bit vectors:
#   Split("i", mr), Split("j_i", nr), Reorder(i_o, j_i_o, k_i, i_i, j_i_i):
#       for each (mr rows, nr columns) tile, for each k: for each row i_i: for each column;
#   CacheWrite("matmul", "j_i_o"): the tile lives in a local array matmul_local[mr, nr],
#       copied out once after the k loop (the compiler can keep a small local in registers;
#       it cannot do that with c, which other pointers might see);
#   Vectorize("j_i_i"): the nr columns in SIMD lanes (nr / LANES vectors);
#   Unroll("i_i"): the mr rows replicated, so the mr x (nr / LANES) accumulators are
#       independent vector registers (and a[i, k] for each row is one broadcast).
mr, nr = gemm.MR, LANES * gemm.vectors_per_row(TARGET)
M, K, N = 48 * mr, 1024, 1024        # rows: a multiple of mr, so no tile needs a guard
a = rng.standard_normal((M, K), dtype=F32)
b = rng.standard_normal((K, N), dtype=F32) / F32(np.sqrt(K))
mm_expected = a @ b
mm_program = lower(minicomp.trace(lambda a, b: a @ b, a, b))    # for its buffers (tutorial 07)
A, B, C = *mm_program.inputs, mm_program.outputs[0]
i, j, k, zi, zj = (Var(name) for name in ("i", "j", "k", "zi", "zj"))
naive = Kernel("matmul", [A, B], C, Block([
    For(zi, M, For(zj, N, Store(C, zi * N + zj, const(0, f32)))),
    For(i, M, For(j, N, For(k, K, Store(C, i * N + j, Binary(
        "+", Load(C, i * N + j), Binary("*", Load(A, i * K + k), Load(B, k * N + j), f32), f32)))))]),
    source=["c = a @ b, the textbook i-j-k loops"])
tiled = [Split("k", 256), Split("j", 256), Reorder("j_o", "k_o", "i", "k_i", "j_i")]
register_tile = [Split("i", mr), Split("j_i", nr), Reorder("i_o", "j_i_o", "k_i", "i_i", "j_i_i")]
stages = [("tiled (tutorial 07)", tiled),
          ("+ split/reorder: tile loops", tiled + register_tile),
          ("+ cache_write", tiled + register_tile + [CacheWrite("matmul", "j_i_o")]),
          ("+ vectorize + unroll", tiled + register_tile + [CacheWrite("matmul", "j_i_o"),
                                                          Vectorize("j_i_i"), Unroll("i_i")])]
final = apply_schedule(naive, stages[-1][1])
print(final)
# Read it: per (i_o, j_i_o) tile, matmul_local is filled from c, then for each of the 256
# k_i steps, mr copies of a vectorized loop (one per row, suffixes _u0 ...) each add
# a[row, k] * b[k, nr columns] into the tile; after the k loop the tile goes back to c.

flops = 2 * M * N * K
print(f"\nmatmul {M} x {K} @ {K} x {N}, one thread; FMAs = fused multiply-add instructions on {WIDE}; "
      f"build flags: {' '.join(OPT)}")
print(f"{'schedule':<30}{'compiled with':<22}{'FMAs':>5}{'ms':>8}{'GFLOP/s':>9}")
measured = {}
for label, steps in stages:
    kernel = apply_schedule(naive, steps)
    for flags_label, flags in [("build flags", OPT), ("-fno-tree-vectorize", NO_AUTOVEC)]:
        executable, asm = build(replace(mm_program, kernels=[kernel], workspace={}, workspace_bytes=0), flags)
        assert_close(executable(a, b)[0], mm_expected)
        fmas = sum(1 for line in asm.splitlines() if "vfmadd" in line and f"%{WIDE}" in line)
        ms = measured[label, flags_label] = median_ms(lambda: executable(a, b), repeats=3)
        print(f"{label if flags is OPT else '':<30}{flags_label:<22}{fmas:>5}{ms:>8.1f}{flops / ms / 1e6:>9.1f}")

default_fn = minicomp.jit(lambda a, b: a @ b)
assert_close(default_fn(a, b), mm_expected)
packed_ms, blas_ms = median_ms(lambda: default_fn(a, b)), median_ms(lambda: a @ b)
print(f"{'minicomp default (packed)':<52}{packed_ms:>8.1f}{flops / packed_ms / 1e6:>9.1f}")
print(f"{'NumPy (OpenBLAS)':<52}{blas_ms:>8.1f}{flops / blas_ms / 1e6:>9.1f}")
print(f"(load average {os.getloadavg()[0]:.1f} while measuring)")
best = min(measured, key=measured.get)
start = measured["tiled (tutorial 07)", "build flags"]
print(f"\nfastest schedule here: {best[0]!r} with {best[1]}: {start / measured[best]:.1f}x the tiled "
      f"loop, {measured[best] / packed_ms:.2f}x the time of minicomp's packed micro-kernel")
# How to read it (the numbers depend on the machine and its load):
#  * "FMAs" counts vector fused multiply-add instructions in the kernel's code (static, not
#    executed): a register tile has mr x nr / LANES of them in its k loop.
#  * With the build flags (-O3), gcc vectorises the tile's loops itself (FMAs from the first
#    stage on), but it does not fully unroll loops on its own under minicomp's flags (see
#    codegen/flags.py): Unroll is what makes the mr rows of the tile mr independent sets of
#    registers. Keeping the tile of c in a local array (cache_write) is what lets it live in
#    registers at all.
#  * With -fno-tree-vectorize, the same schedules stay scalar until Vectorize asks for SIMD:
#    the schedule, not the compiler's judgement, then decides, which is what a compiler that
#    has to be predictable (or an autotuner, tutorial 13) needs.
#  * The packed micro-kernel (tutorial 10) adds what is still missing here: packing a and b
#    into contiguous panels (no TLB and cache-set conflicts from the 4 KiB row stride), and a
#    k loop written so every loaded value feeds mr or nr FMAs.
print("\nall results matched NumPy")
