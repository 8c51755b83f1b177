"""Tutorial 10: matmul + bias + GELU in one kernel (the seed's example).

What you learn:

* ``gelu(x @ w + b)`` traced is eleven ops: a matmul, a bias add and nine elementwise ops of
  the tanh GELU. Fusion (tutorial 04) makes them **one kernel** with pattern ``epilogue``:
  the matmul is the anchor, everything after it is applied to its result in place.
* How that kernel is shaped: lowering writes the plain nest (per output element, the sum,
  then bias and GELU); the default CPU schedule recognises the matmul in it and applies the
  ``packed_gemm`` strategy, the loop nest OpenBLAS and BLIS use (Goto's algorithm), printed
  with a ``# schedule: packed_gemm(mr=.., nr=.., kc=.., mc=.., nc=.., ...)`` line that records it:

  - **packing**: a block of ``kc`` rows of ``w`` is copied into panels of ``nr`` columns
    stored k-major, so the inner loop streams through contiguous memory, and the matching
    ``kc`` columns of ``x`` into rows of ``kc`` values (TVM's ``cache_read``);
  - the **register-blocked micro-kernel**: an ``mr x nr`` tile of the result lives in vector
    registers for a whole ``kc`` block, and every value loaded is used ``mr`` or ``nr`` times
    (TVM's ``tensorize``; the one routine minicomp writes by hand, ``codegen/gemm.py``);
  - the **epilogue**: after the *last* k block of a tile, bias and GELU run over that
    ``mr x nr`` tile while it is still in the L1 cache. The matmul result never makes a round
    trip through memory, and GELU's tanh is a vectorised polynomial (``codegen/vmath.py``).
* We check each piece against NumPy: the packed panels read back from the workspace, one
  micro-kernel call as ``einsum`` on them, the whole result.
* Measured: NumPy eager vs minicomp with every pass vs minicomp with fusion disabled, in
  GFLOP/s.

Run from the repository root:  python tutorials/10_fused_linear_gelu.py
(command-line twins: ``minicomp explain --workload linear_gelu``,
``minicomp dump --workload linear_gelu --emit loops``)
"""

# A fresh compile cache in a temporary directory, set before minicomp is imported: the
# tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial10-")
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

from minicomp.bench import machine_description
from minicomp.codegen import gemm
from minicomp.codegen.c import CRenderer, render_c
from minicomp.runtime.compiler import compile_c, load_library
from minicomp.lower.program import lower
from minicomp.schedules.cpu.packed_gemm import b_task_panels, balanced, cache_blocks
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import loop_program
from minicomp.runtime.executable import aligned_empty
from minicomp.stats import human, kernel_summary
from minicomp.target import host_target
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS, gelu

F32 = np.float32
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def median_ms(fn, args, repeats: int = 5) -> float:
    """Median wall time of ``fn(*args)`` in ms over ``repeats`` runs, after one warm-up run."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------------------------
step("Step 1: the function, traced and fused")
# ----------------------------------------------------------------------------------------------
# The feed-forward layer of a transformer, first half: a linear layer and the tanh GELU of
# minicomp/workloads.py (the cube written v*v*v, so it traces into plain multiplies):
#
#     def gelu(v):
#         return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


def linear_gelu(x, w, b):
    return gelu(x @ w + b)


# A small size to read the code: 64 rows (not a multiple of the micro-kernel's 6: edge
# tiles), a reduction two k blocks long (kc is 384 floats with a 32 KiB L1, so 768), and 4
# panels of nr output columns (256 with AVX-512's 64-column tiles, 64 with AVX2's 16). With
# fewer panels than b_task_panels (4 per core), w is packed once per k block for all tasks:
# the layout read back below. Every size comes from the Target, this machine's as probed
# (`minicomp target` prints it); packed_gemm.cache_blocks holds the rules.
target = host_target()
mr, nr = gemm.tile_shape(F32, target)              # the micro-kernel's tile on this machine
kc, mc, nc = cache_blocks(target, F32, mr, nr)     # the cache blocks: kc is the reduction block, in floats
panels = min(4, b_task_panels(target) - 1)         # 3 on a 1-core machine
M, K, N = 64, 2 * kc, panels * nr
x = rng.standard_normal((M, K), dtype=F32)
w = rng.standard_normal((K, N), dtype=F32) / F32(np.sqrt(K))
b = rng.standard_normal(N, dtype=F32)
expected = linear_gelu(x, w, b)

traced = minicomp.trace(linear_gelu, x, w, b)
print(traced)
optimised, _ = run_pipeline(traced)
print("\n--- after the default pipeline ---\n")
print(optimised)
[fused] = optimised.op_nodes()
body_ops = [n.op for n in fused.attrs["body"].op_nodes()]
assert fused.attrs["pattern"] == "epilogue" and body_ops[0] == "matmul" and len(body_ops) == 11
before, after = kernel_summary(traced), kernel_summary(optimised)
print(f"\nkernels {before.kernels} -> {after.kernels}; estimated bytes moved "
      f"{human(before.bytes_moved)} -> {human(after.bytes_moved)}")
# Why each op joined the matmul's kernel: print(minicomp.explain(linear_gelu, x, w, b)), or
# `minicomp explain --workload linear_gelu` (tutorial 04).

# ----------------------------------------------------------------------------------------------
step("Step 2: the fused kernel as loops")
# ----------------------------------------------------------------------------------------------
# lower() the optimised graph into a Program: the plain nest, the same for any machine. Per
# output element: the sum over k in a scalar accumulator, then bias and GELU of it, stored.
[plain] = lower(optimised).kernels
print(plain)
# What `minicomp dump --emit loops` prints: the loop stages up to index simplification
# (minicomp.stages.loop_program), the schedule stage in between. This CPU's default schedule
# finds the matmul in the plain nest (a sum of a[.., k] * b[k, j]) and applies the
# packed_gemm strategy with tiles for this machine; the kernel prints that step first.
program = loop_program(optimised)
[kernel] = program.kernels
print()
print(kernel)
[schedule] = kernel.schedule
# mc shrinks so that the rows split into equal blocks (here one block of all 64 rows + edge)
assert schedule.name == "packed_gemm" and (schedule["mr"], schedule["nr"], schedule["kc"]) == (mr, nr, kc)
assert schedule["mc"] == balanced(mc, mr, M)
print(f"\nmicro-kernel tile mr x nr = {mr} x {nr}: {gemm.vector_bytes() * 8}-bit vectors "
      f"({gemm.vector_bytes() // 4} floats), {gemm.vectors_per_row()} per row of the tile")
# How to read the nest, outside in:
#   for jc:  blocks of nc columns of w (here all N fit in one);
#   for pc:  blocks of kc steps of the reduction (here 2: kc + kc);
#     parallel for jb: pack w[pc block, jc block] into panels of nr columns  -> *_bpack
#     parallel for ib: pack x[:, pc block] into rows of kc values             -> *_apack
#     parallel for t:  one task per (mc rows, nr panel): for each mr x nr tile,
#         mc_gemm_...(kc, A rows, lda = kc, B panel, C tile, ldc, accumulate = pc > 0)
#         if pc == last: the epilogue over that tile (bias, GELU), in place
# A tile that sticks out past row 64 (the last one: rows 60..65) runs the same micro-kernel
# into a local `tile` and copies the rows that exist: the panels are zero-padded, so the
# micro-kernel never needs to know about edges.
text = str(kernel)
assert f"if pc == {K // kc - 1}:" in text and "local tile" in text

# ----------------------------------------------------------------------------------------------
step("Step 3: packing, checked against NumPy")
# ----------------------------------------------------------------------------------------------
# Compile the program ourselves (as tutorial 06 does) so that we own the workspace the
# packed panels live in, and can read them back after the call.
ffi, lib = load_library(compile_c(render_c(program), "linear_gelu"))
out = np.empty((M, N), F32)
workspace = aligned_empty(program.workspace_bytes)
pointers = [ffi.cast("void *", a.ctypes.data) for a in (x, w, b, out, workspace)] + [ffi.NULL]
assert lib.minicomp_entry(ffi.new("void *[]", pointers)) == 0
assert_close(out, expected)
print(f"compiled and ran: matches NumPy (max abs diff {np.abs(out - expected).max():.1e})")


def from_workspace(name_end: str) -> np.ndarray:
    """The scratch buffer of the kernel whose name ends in ``name_end``, as floats."""
    [buffer] = [s for s in kernel.scratch if s.name.endswith(name_end)]
    offset = program.workspace[buffer]
    return workspace[offset:offset + buffer.size * 4].view(F32)


# The layouts, in NumPy. B: panels of nr columns, k-major: panel[k, j] = B[k, p*nr + j], so
# each micro-kernel step k reads nr consecutive values of B. A: the kc columns of the block,
# rows padded with zeros to a multiple of mr, cut into panels of mr rows: panel[r, k] =
# A[p*mr + r, k]. Step k broadcasts A[r, k] from each of the mr rows (BLIS stores A k-major
# too; from rows the broadcasts cost the same, and packing rows is a contiguous copy).

def pack_a(a_block):          # (M, kc) -> (panels, mr, kc)
    rows = -(-a_block.shape[0] // mr) * mr
    padded = np.zeros((rows, a_block.shape[1]), F32)
    padded[:a_block.shape[0]] = a_block
    return padded.reshape(rows // mr, mr, -1)


def pack_b(b_block):          # (kc, N) -> (panels, kc, nr)
    cols = -(-b_block.shape[1] // nr) * nr
    padded = np.zeros((b_block.shape[0], cols), F32)
    padded[:, :b_block.shape[1]] = b_block
    return padded.reshape(b_block.shape[0], cols // nr, nr).transpose(1, 0, 2)


# After the call the panels hold the *last* k block, x[:, kc:2kc] and w[kc:2kc, :]:
a_panels = from_workspace("_apack").reshape(-1, mr, kc)
b_panels = from_workspace("_bpack").reshape(-1, kc, nr)
assert np.array_equal(a_panels, pack_a(x[:, kc:]))
assert np.array_equal(b_panels, pack_b(w[kc:, :]))
print(f"A packed: {a_panels.shape[0]} panels of {mr} x {kc} (the last one zero-padded: rows "
      f"{M}..{a_panels.shape[0] * mr - 1}); B packed: {b_panels.shape[0]} panels of {kc} x {nr}")
print("first panel of A, first 3 k steps (each column = the mr values one k step broadcasts):")
print(a_panels[0, :, :3])

# One micro-kernel call, in NumPy: C_tile += sum over k of outer(A panel[k], B panel[k]),
# which is A_panel @ B_panel. Tile (0, 0) after both k blocks is the matmul's top-left tile.
tile = sum(np.einsum("rk,kj->rj", pack_a(x[:, p:p + kc])[0], pack_b(w[p:p + kc, :])[0])
           for p in range(0, K, kc))
assert_close(tile, (x @ w)[:mr, :nr])
print(f"micro-kernel, as einsum on the panels: tile (0, 0) = (x @ w)[:{mr}, :{nr}]")

# ----------------------------------------------------------------------------------------------
step("Step 4: the micro-kernel, in C")
# ----------------------------------------------------------------------------------------------
# The routine the kernel calls (codegen/gemm.py), written with GCC's vector extensions so it
# compiles to whatever SIMD width -march=native offers.
micro_kernel = gemm.kernel_name(F32)
print(gemm.source(micro_kernel))
nv = gemm.vectors_per_row()
print(f"per k step: {nv} vector loads of B + {mr} broadcasts of A feed {mr * nv} vector FMAs "
      f"({2 * mr * nr} FLOPs); the {mr * nv} accumulators stay in registers for all kc steps.")
# Why that ratio matters: a core does (on this kind of CPU) two vector FMAs per cycle but only
# two or three loads; the naive i-j-k loop does one FMA per load of each operand. Holding the
# tile in registers is what lets the FMA units, not the loads, set the speed.

# ----------------------------------------------------------------------------------------------
step("Step 5: the epilogue, in C")
# ----------------------------------------------------------------------------------------------
# The full-tile branch of the generated kernel: the micro-kernel call, then, after the last k
# block only, bias + GELU over the mr x nr tile that was just written (still in L1).
c_lines = CRenderer().kernel(kernel).splitlines()
start = next(i for i, line in enumerate(c_lines) if micro_kernel in line)
end = next(i for i in range(start, len(c_lines)) if "} else {" in c_lines[i])
print("\n".join(line[14:] for line in c_lines[start:end]))
epilogue_c = "\n".join(c_lines[start:end])
assert "mc_vtanh_f32(" in epilogue_c and "b_b[i1]" in epilogue_c
# Notice: the bias add `fused_mul_5[..] + b[i1]` appears several times in the expression
# (v is used four times in gelu); the C compiler computes it once. The tanh is
# mc_vtanh_f32, the branch-free polynomial of codegen/vmath.py that gcc vectorises (libm's
# tanhf would be one call per element). And the epilogue only runs when pc is the last block:
# before that the tile holds a partial sum.

# ----------------------------------------------------------------------------------------------
step("Step 6: without fusion")
# ----------------------------------------------------------------------------------------------
# jit(fn, disable=["fusion"]) runs every other pass. The matmul is still a packed
# micro-kernel kernel (the default schedule packs any big float matmul), but the bias add and
# each GELU op are kernels of their own, each reading and writing an M x N tensor.
unfused_graph, _ = run_pipeline(traced, disable=["fusion"])
unfused_program = loop_program(unfused_graph)
print(f"{len(unfused_program.kernels)} kernels: "
      + ", ".join(f"{k.name}{' [gemm]' if any(str(s).startswith('packed_gemm(') for s in k.schedule) else ''}"
                   for k in unfused_program.kernels))
print(f"workspace for the intermediates: {human(unfused_program.workspace_bytes)} "
      f"(fused: {human(program.workspace_bytes)}, all of it the packed panels)")
assert len(unfused_program.kernels) > 1 and sum(any(str(step).startswith("packed_gemm(") for step in k.schedule)
                                                for k in unfused_program.kernels) == 1
assert set(program.workspace) == set(kernel.scratch)  # fused: no intermediate in memory at all

# ----------------------------------------------------------------------------------------------
step("Step 7: measured: NumPy vs minicomp, fused and unfused")
# ----------------------------------------------------------------------------------------------
# The linear_gelu benchmark workload at its CPU size: x 512 x 1024, w 1024 x 4096 (4.3 GFLOP).
# Medians of repeated calls after a warm-up; results are asserted against NumPy, timings only
# reported. GFLOP/s counts the matmul's 2*M*N*K (the epilogue adds ~15 FLOPs per output,
# under 1%). Also timed: the matmul alone, in NumPy (its BLAS) and in minicomp, as the
# ceiling the fused kernel is compared with.
workload = WORKLOADS["linear_gelu"]
big = workload.inputs("cpu")
bm, bk = big[0].shape
bn = big[1].shape[1]
flops = 2 * bm * bn * bk
big_expected = linear_gelu(*big)
fused_fn = minicomp.jit(linear_gelu)
unfused_fn = minicomp.jit(linear_gelu, disable=["fusion"])
matmul_fn = minicomp.jit(lambda x, w: x @ w)
assert_close(fused_fn(*big), big_expected)
assert_close(unfused_fn(*big), big_expected)
assert_close(matmul_fn(*big[:2]), big[0] @ big[1])
rows = [("NumPy gelu(x @ w + b)", linear_gelu, big, 1),
        ("minicomp, all passes", fused_fn, big, len(fused_fn.inspect(*big).program.kernels)),
        ("minicomp, fusion off", unfused_fn, big, len(unfused_fn.inspect(*big).program.kernels)),
        ("NumPy x @ w alone", lambda x, w: x @ w, big[:2], 1),
        ("minicomp x @ w alone", matmul_fn, big[:2], 1)]
print(f"{bm} x {bk} @ {bk} x {bn}, {machine_description()}")
print(f"{'':<24}{'kernels':>8}{'ms':>9}{'GFLOP/s':>9}{'vs NumPy':>10}")
ms = {}
for label, fn, args, kernels in rows:
    ms[label] = median_ms(fn, args)
    kernels_text = str(kernels) if label.startswith("minicomp") else "-"
    print(f"{label:<24}{kernels_text:>8}{ms[label]:>9.2f}{flops / ms[label] / 1e6:>9.1f}"
          f"{ms['NumPy gelu(x @ w + b)'] / ms[label]:>9.2f}x")
print(f"(load average {os.getloadavg()[0]:.1f} while measuring)")
fused_ms, unfused_ms = ms["minicomp, all passes"], ms["minicomp, fusion off"]
numpy_ms, matmul_ms = ms["NumPy gelu(x @ w + b)"], ms["minicomp x @ w alone"]
print(f"\nfusion {'saved' if fused_ms < unfused_ms else 'did not save'} time here: "
      f"{unfused_ms:.2f} ms -> {fused_ms:.2f} ms ({unfused_ms / fused_ms:.2f}x)")
print(f"minicomp fused is {numpy_ms / fused_ms:.2f}x NumPy's speed; bias + GELU cost it "
      f"{fused_ms - matmul_ms:+.2f} ms over the bare matmul "
      f"(NumPy: {numpy_ms - ms['NumPy x @ w alone']:+.2f} ms)")
# How to read it (the numbers depend on the machine and its load):
#  * NumPy's matmul is a tuned BLAS and uses every core; then bias and the nine GELU ops run as
#    separate passes over a 512 x 4096 tensor (8 MiB), one core each, with a libm tanh. That
#    last part is where its extra milliseconds over the bare matmul go.
#  * minicomp's fused kernel does the same matmul with its micro-kernel, and the epilogue costs
#    a pass over each tile while it sits in L1: close to the bare matmul's time.
#  * With fusion off, minicomp's matmul is the same, but the bias add and GELU ops are ten
#    more kernels, each a full pass over memory: the gap between the two minicomp rows is
#    the price of those round trips (smaller than NumPy's, since each of those kernels is
#    compiled, vectorised and run on every core).
#  * On a busy machine (load average above the core count) every threaded implementation here
#    slows down, often minicomp most: at each of a kernel's OpenMP barriers, threads spin-wait
#    for one that lost its core to another process. OMP_WAIT_POLICY=passive (set before the
#    run) makes waiting threads sleep instead, and is much faster there.
print("\nall results matched NumPy")
