"""Tutorial 12: the same kernels for a GPU. Threads, shared memory, coalescing, the bytes saved.

What you learn:

* The CUDA target runs the loop stages of tutorial 06 with GPU rules, and most of them need
  no GPU at all (this tutorial prints everything on a plain CPU)::

      lower          the plain nest: the same for every machine
      schedule       a GPU strategy (schedules/gpu/): the *thread-serial form*, where block
                     loops, thread loops and barrier phases are still ordinary loops
      fuse_threads   the *SIMT form*: one thread loop per kernel, barriers between phases
      render         CUDA C (codegen/cuda.py): blockIdx, threadIdx, __shared__, __syncthreads
      compile        nvcc -> a cubin; ptxas reports registers and spills
      load           pycuda: needs the GPU

* **Softmax** with ``gpu_row_reduce``: a block of 256 threads (8 warps) per row, each thread
  keeping 16 values of the row in registers; the max and the sum combined across a warp by
  register shuffles (``__shfl_xor_sync``) and across the warps through 32 floats of shared
  memory. Global memory sees one read and one write of each element.
* **Coalescing**: the 32 threads of a warp load at once; when neighbouring threads read
  neighbouring addresses, one instruction is served by a few full 32-byte sectors of memory.
  We compute, from the kernel's own index expressions, the sectors one warp's load touches,
  against a thread-per-row schedule that uses 1 byte in 8 of what it fetches.
* **Bytes**: the HBM traffic of the softmax as one kernel per op, fused but reading the row
  once per pass, and fused with the row kept in registers, counted from the loop IR.
* **Fused linear + GELU** with ``gpu_sgemm``: shared-memory tiles of ``x`` and ``w``, a
  register tile of the output per thread, double buffering (the next tile loaded while this
  one is multiplied), and GELU applied to the register tile before the one store: what a
  separate GELU kernel would have cost in bytes.
* Checking without a GPU: target ``"gpu-serial-c"`` renders the thread-serial form as C
  (every thread and block a loop iteration, MCUDA-style) and runs it against NumPy.
* With a GPU (pycuda and a device): ``minicomp.jit(fn, target="cuda")``, checked against NumPy,
  timed with CUDA events (medians), fused against fusion off and against torch.

Run from the repository root:  python tutorials/12_cuda_codegen.py
(command-line twins: ``minicomp dump --workload softmax --target cuda --emit schedule``,
``... --emit fuse_threads``, ``... --emit cuda``, ``... --emit ptx``; ``minicomp bench
--target cuda`` on a GPU)
"""

# A fresh compile cache (C libraries and cubins) in a temporary directory, set before
# minicomp is imported: the tutorial compiles cold and leaves nothing behind.
import atexit
import os
import shutil
import tempfile

CACHE_DIR = tempfile.mkdtemp(prefix="minicomp-tutorial12-")
os.environ["MINICOMP_CACHE_DIR"] = CACHE_DIR
atexit.register(shutil.rmtree, CACHE_DIR, ignore_errors=True)

import importlib
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

from minicomp import MinicompError, TensorType
from minicomp.ir.loops import Const, For, Store
from minicomp.ir.rewrite import all_exprs, free_vars, loads, statements, substitute
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.nvcc import build_cubin, find_nvcc, nvcc_version
from minicomp.schedules.strategy import Strategy
from minicomp.stages import fuse_gpu_threads, loop_program, render_cuda_source, simplify_indices
from minicomp.stats import human, kernel_summary
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS, linear_gelu, softmax

F32 = np.float32
GPU = cuda_target("sm_90")   # an H100 / H200 as its architecture describes it: no GPU needed
SECTOR = 32                  # bytes: the unit in which a GPU's L2 and DRAM serve loads
rng = np.random.default_rng(0)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


def kernel_function(cuda_text: str, name: str) -> str:
    """The ``__global__`` function ``name`` of a CUDA file (the file also holds a prelude of
    NumPy-meaning helpers, which ``minicomp dump --emit cuda`` prints whole)."""
    lines = cuda_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('extern "C"') and f" {name}(" in line)
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return "\n".join(lines[start:end + 1])


def ptxas_summary(cuda_text: str, name: str) -> str | None:
    """nvcc's cubin of ``cuda_text`` for sm_90 and ptxas's report on kernel ``name`` as one line;
    None (after printing why) where there is no nvcc."""
    try:
        find_nvcc()
    except MinicompError as exc:
        print(f"(skipped: {exc})")
        return None
    info = build_cubin(cuda_text, "sm_90").report[name]
    assert not info.spills, f"{name} spills registers to local memory: {info}"
    return (f"nvcc {nvcc_version()} -cubin -arch=sm_90: {name}: {info.registers} registers per thread, "
            f"{info.shared_bytes} bytes of shared memory, spills: {info.spill_stores} bytes stored, "
            f"{info.spill_loads} loaded")


def gpu_program(fn, *args, disable=()):
    """``fn`` traced at ``args`` (arrays or ``TensorType`` s), the graph passes run, then the
    loop stages for the GPU up to simplify_indices: the program that is rendered as CUDA."""
    graph, _ = run_pipeline(minicomp.trace(fn, *args), disable=disable)
    return loop_program(graph, GPU)


def global_bytes(kernel) -> tuple[int, int]:
    """(bytes read, bytes written) of global memory by ``kernel``, counting each load or store
    site of a parameter buffer as one pass over the whole buffer. True of the row and
    elementwise kernels here (a site in a loop over the row visits each element once); a
    tiled matmul reads its tiles many times, and is counted apart below."""
    params = set(kernel.params)
    read = sum(load.buffer.size * load.buffer.dtype.itemsize
               for e in all_exprs(kernel.body) for load in loads(e) if load.buffer in params)
    written = sum(s.buffer.size * s.buffer.dtype.itemsize
                  for s in statements(kernel.body) if isinstance(s, Store) and s.buffer in params)
    return read, written


def warp_load(kernel, buffer_name: str) -> tuple[int, int, int]:
    """What the 32 threads of the first warp of block 0 fetch for the first load of
    ``buffer_name`` in ``kernel`` (in the SIMT form), all other loop variables 0 and a
    ``vectorized`` loop's lanes one instruction: (bytes used, 32-byte sectors, stride in
    elements between neighbouring threads)."""
    loops = {s.var.name: s for s in statements(kernel.body) if isinstance(s, For)}
    load = next(ld for e in all_exprs(kernel.body) for ld in loads(e) if ld.buffer.name == buffer_name)
    threads = sorted((loop for loop in loops.values() if loop.kind == "gpu_thread"), key=lambda loop: loop.axis)
    vector = [loops[v] for v in free_vars(load.index) if v in loops and loops[v].kind == "vectorized"]
    addresses = []
    for lane in range(32):                      # thread x is the fastest, then y (a warp is 32 in a row)
        position = {}
        for loop in threads:
            position[loop.var.name], lane = lane % loop.extent, lane // loop.extent
        for element in range(vector[0].extent if vector else 1):
            values = {name: Const(0) for name in free_vars(load.index)}
            values |= {name: Const(v) for name, v in position.items()}
            if vector:
                values[vector[0].var.name] = Const(element)
            addresses.append(substitute(load.index, values).value * load.buffer.dtype.itemsize)
    stride = (addresses[len(addresses) // 32] - addresses[0]) // load.buffer.dtype.itemsize
    return len(addresses) * load.buffer.dtype.itemsize, len({a // SECTOR for a in addresses}), stride


# ----------------------------------------------------------------------------------------------
step("Step 1: softmax, traced and fused, as a plain nest")
# ----------------------------------------------------------------------------------------------
# The row softmax of minicomp/workloads.py (tutorial 06), rows of 4096 floats as in the GPU
# benchmark (`minicomp bench --target cuda`: 32768 of them); 37 rows here, enough to read the
# code and to run it on a CPU below. Fusion makes the five ops one "row" kernel; lowering
# writes its plain nest, the same as for the CPU: per row, a max, a sum of exp, the divide.
ROWS, COLS = 37, 4096
x = rng.standard_normal((ROWS, COLS), dtype=F32)
fused_graph, _ = run_pipeline(minicomp.trace(softmax, x))
[plain] = loop_program(fused_graph, GPU, stop_after="lower").kernels
print(plain)
assert plain.pattern == "row" and plain.schedule == []

# ----------------------------------------------------------------------------------------------
step("Step 2: the GPU schedule: a block per row, the row in registers (thread-serial form)")
# ----------------------------------------------------------------------------------------------
# The schedule stage for a CUDA target picks gpu_row_reduce (schedules/gpu/row_reduce.py). Its
# result is the *thread-serial form*: the loops a GPU runs in parallel are still loops, so it
# reads like sequential code (and the C renderer runs it, Step 6):
#   gpu_block.x for b        a block of threads per row: blockIdx.x, rows spread over the SMs
#   gpu_thread.x for t       the block's 256 threads (8 warps of 32): threadIdx.x. Each
#                            sibling `gpu_thread` loop is a *phase*: all threads finish one
#                            phase before any starts the next (a barrier between them)
#   local x_row: f32[4096]   per-thread storage of all the threads, 16 values each at t*16 + c:
#                            after fuse_threads each thread's own f32[16], in registers
#   shared acc_max_warps     32 slots, one per warp (8 used, the rest the identity), in the
#                            block's shared memory (on-chip SRAM, seen by all its threads);
#   warp_max / warp_sum      a WarpReduce: the 32 lanes of a warp combine their values by
#                            register shuffles, no memory at all
# Phases: (1) load the row once into registers (float4 loads: `vectorized for v`), each thread
# its max; (2) each warp's max by shuffles, lane 0 of each warp stores it into shared memory;
# (3) after the barrier every warp combines the 8 warp maxima itself (a second warp_max: the
# same value in every thread's registers, so no second barrier is needed to share it); then the
# same for the sum of exp(x - max); then every thread writes its 16 outputs from its registers.
serial = loop_program(fused_graph, GPU, stop_after="schedule")
[serial_kernel] = serial.kernels
print(serial_kernel)
[row_schedule] = serial_kernel.schedule
assert row_schedule.name == "gpu_row_reduce" and row_schedule["threads"] == 256 and row_schedule["keep_row"]
text = str(serial_kernel)
assert "shared" in text and "warp_max(" in text and "warp_sum(" in text

# The default rule picks the threads by the row's length (gpu_row_reduce_steps): a warp per
# row for short rows (8 rows in a block of 8 warps), 256 threads, then 1024; the row stays in
# registers while a thread's share fits (32 values; 16 in blocks of 1024).
print("\nthe schedule chosen by row length (64 rows):")
for length in (100, 1000, 4096, 16384, 100_000):
    [k] = gpu_program(softmax, TensorType((64, length), "f32")).kernels
    print(f"  {length:>7} columns: {k.schedule[0]}")

# ----------------------------------------------------------------------------------------------
step("Step 3: coalescing: what one warp's load touches")
# ----------------------------------------------------------------------------------------------
# A warp issues each load for its 32 threads at once; memory serves it in 32-byte sectors. In
# the fill phase, thread t reads x[b*4096 + (c*256 + t)*4 + v], v = 0..3 in one float4 load:
# neighbouring threads read neighbouring 16-byte groups, so the warp's instruction covers 512
# contiguous bytes, 16 full sectors. The other way to put a row kernel on a GPU, the CPU way,
# is a thread per row (Strategy gpu_threads on the plain nest: what the default gives rows
# shorter than a warp): thread t reads row t, 16 KiB from its neighbour, a sector per thread
# of which it uses 4 bytes. Both counted from the kernels' own index expressions:
simt_kernel = fuse_gpu_threads(serial, GPU).kernels[0]
per_row_program = replace(serial, kernels=[Strategy("gpu_threads", threads=256).apply(plain)])
per_row_kernel = fuse_gpu_threads(per_row_program, GPU).kernels[0]
print(f"{'schedule':<70}{'stride':>7}{'bytes used':>11}{'sectors':>8}{'efficiency':>11}")
efficiency = {}
for label, kernel in [(str(row_schedule), simt_kernel), (str(per_row_kernel.schedule[0]), per_row_kernel)]:
    used, sectors, stride = warp_load(kernel, "x")
    efficiency[label] = used / (sectors * SECTOR)
    print(f"{label:<70}{stride:>7}{used:>11}{sectors:>8}{efficiency[label]:>11.1%}")
assert list(efficiency.values()) == [1.0, 0.125]
# (stride: elements between neighbouring threads' first addresses.) The thread-per-row kernel
# fetches 8 times the bytes it uses on every load: at the same DRAM bandwidth, an eighth of
# the speed, and its later sectors may be evicted before the thread comes back for them.

# ----------------------------------------------------------------------------------------------
step("Step 4: fuse_threads (the SIMT form), then CUDA")
# ----------------------------------------------------------------------------------------------
# fuse_threads (schedules/gpu/fuse_threads.py) turns the phases into one thread loop: the body
# is what *one* thread runs, phases separated by `barrier` (dropped where nothing in shared
# memory is handed across it). Per-thread arrays become each thread's own: x_row is f32[16].
print(simt_kernel)
assert "local x_row: f32[16]" in str(simt_kernel) and "barrier" in str(simt_kernel)
# The renderer (codegen/cuda.py) writes it as CUDA: loop variables become blockIdx/threadIdx,
# local arrays with constant indices (unrolled loops) become registers, shared arrays
# __shared__, a barrier __syncthreads(), a WarpReduce a butterfly of __shfl_xor_sync, a
# vectorized loop over 4 floats one float4 load or store (the store __stwb: streamed, the
# output is not read again). Index arithmetic is int64 (no overflow past 2^31 elements).
softmax_program = loop_program(fused_graph, GPU)
softmax_cuda = render_cuda_source(softmax_program, GPU)
[softmax_launch] = softmax_cuda.launches
print()
print(kernel_function(softmax_cuda.text, softmax_launch.function))
print(f"\nlaunch: {softmax_launch.function}<<<grid {softmax_launch.grid}, block {softmax_launch.block}>>>"
      f"({', '.join(softmax_launch.params)})   (the whole file: {softmax_cuda.text.count(chr(10))} lines, "
      "with the prelude of NumPy helpers)")
kernel_text = kernel_function(softmax_cuda.text, softmax_launch.function)
assert "__shfl_xor_sync" in kernel_text and "__syncthreads()" in kernel_text and "float4" in kernel_text
assert softmax_launch.grid[0] == ROWS and softmax_launch.block == (256, 1, 1)

# ----------------------------------------------------------------------------------------------
step("Step 5: nvcc: the cubin, and what ptxas says")
# ----------------------------------------------------------------------------------------------
# `nvcc -cubin -arch=sm_90 -O3 -Xptxas -v` (runtime/nvcc.py) compiles without a GPU. ptxas
# reports each kernel's registers and any *spills* (registers that did not fit, stored to
# local memory: slow, off-chip). The row's 16 values must stay registers: the loops over
# them are unrolled, so every index into x_row is a constant.
report = ptxas_summary(softmax_cuda.text, softmax_launch.function)
if report:
    print(report)

# ----------------------------------------------------------------------------------------------
step("Step 6: right, without a GPU: the thread-serial form as C")
# ----------------------------------------------------------------------------------------------
# Target "gpu-serial-c" compiles the thread-serial form of Step 2 with the C renderer: blocks,
# threads and phases are plain loops (a warp reduction a helper that combines in the
# butterfly's order). The same schedule, the same arithmetic, on this CPU.
serial_softmax = minicomp.jit(softmax, target="gpu-serial-c")
assert_close(serial_softmax(x), softmax(x))
short_rows = rng.standard_normal((13, 1000), dtype=F32) * F32(10)   # a warp per row, ragged tail
assert_close(serial_softmax(short_rows), softmax(short_rows))
print(f"softmax {ROWS} x {COLS} (block per row) and 13 x 1000 (warp per row, 8 rows a block, 1000 "
      "not a multiple of 128): match NumPy")
# (The tests also run the SIMT form of Step 4 in the loop interpreter, threads in lockstep and
# shared memory poisoned with NaN: tests/test_gpu_memory_bound.py.)

# ----------------------------------------------------------------------------------------------
step("Step 7: the bytes: one kernel per op, one read per pass, the row kept")
# ----------------------------------------------------------------------------------------------
# At the GPU benchmark's size, 32768 rows of 4096 (512 MiB per array; tracing needs only the
# shape), the global-memory traffic of three programs, counted from their kernels:
#   one kernel per op (fusion off): max, sub, exp, sum, div, each a pass over memory;
#   fused, reading the row once per pass: gpu_row_reduce without keep_row (what rows too long
#     for the registers get): x read three times (max, sum, output);
#   fused, the row kept in registers (the default): x read once, the output written once.
big = TensorType(WORKLOADS["softmax"].shapes["gpu"]["x"], "f32")
traced_big = minicomp.trace(softmax, big)
unfused = gpu_program(softmax, big, disable=("fusion",))
kept = gpu_program(softmax, big)
passes_graph, _ = run_pipeline(traced_big)
[plain_big] = loop_program(passes_graph, GPU, stop_after="lower").kernels
per_pass = simplify_indices(replace(kept, kernels=[
    Strategy("gpu_row_reduce", threads=256, rows_per_block=1).apply(plain_big)]))
minimum = kernel_summary(passes_graph).bytes_moved        # read x once, write the result once
print(f"softmax of {big}: {human(minimum)} at the least (x read once, the output written once)")
print(f"{'':<36}{'kernels':>8}{'read':>10}{'written':>10}{'total':>10}{'x minimum':>11}")
totals = {}
for label, program in [("one kernel per op (fusion off)", unfused), ("fused, row read once per pass", per_pass),
                       ("fused, row kept in registers", kept)]:
    read = sum(global_bytes(k)[0] for k in program.kernels)
    written = sum(global_bytes(k)[1] for k in program.kernels)
    totals[label] = read + written
    print(f"{label:<36}{len(program.kernels):>8}{human(read):>10}{human(written):>10}"
          f"{human(read + written):>10}{(read + written) / minimum:>10.1f}x")
assert totals["fused, row kept in registers"] == minimum
assert totals["fused, row read once per pass"] == 2 * minimum
# A softmax is memory-bound: per element a few flops and an exp against 8 bytes moved, so its
# time is its bytes over the bandwidth (about 3.3 TB/s on an H100, 4.8 on an H200). Fusing
# saves the intermediates' round trips (4x -> 2x); keeping the row in registers saves the
# re-reads (2x -> 1x). Only the last one reaches the floor of one read and one write.

# ----------------------------------------------------------------------------------------------
step("Step 8: linear + GELU: shared-memory tiles, register tiles (thread-serial form)")
# ----------------------------------------------------------------------------------------------
# gelu(x @ w + b) of tutorial 10 fuses into one "epilogue" kernel. On a GPU the default is
# gpu_sgemm (schedules/gpu/sgemm.py). A small awkward size to read it: 200 x 300 @ 300 x 500,
# no size a multiple of a tile.
M, K, N = 200, 300, 500
lx = rng.standard_normal((M, K), dtype=F32)
lw = rng.standard_normal((K, N), dtype=F32) / F32(np.sqrt(K))
lb = rng.standard_normal(N, dtype=F32)
gelu_graph, _ = run_pipeline(minicomp.trace(linear_gelu, lx, lw, lb))
[gemm_serial] = loop_program(gelu_graph, GPU, stop_after="schedule").kernels
print(gemm_serial)
[gemm_schedule] = gemm_serial.schedule
bm, bn, bk, tm, tn = (gemm_schedule[p] for p in ("bm", "bn", "bk", "tm", "tn"))
assert gemm_schedule.name == "gpu_sgemm" and gemm_schedule["double_buffer"]
# How to read it:
#   gpu_block.x for b         one block per bm x bn tile of the output (m0, n0 its corner)
#   shared a_tile, b_tile     a bk-deep slice of x's rows and of w's columns, in shared memory,
#                             two of each (double buffering: stage kt % 2 is multiplied while
#                             stage (kt+1) % 2 is filled; one barrier per k step)
#   local acc_tile            each thread's tm x tn piece of the output: registers
#   phase 1                   zero the register tile, load k tile 0 (guarded: zeros past the
#                             edges, so the multiply never tests anything)
#   for kt (uniform loop)     load tile kt+1 from global memory into registers (a_next,
#                             b_next), multiply tile kt out of shared memory (per kk: tm values
#                             of a, tn of b -> tm*tn multiply-adds), store a_next/b_next into
#                             the other stage
#   last phase                the epilogue: bias and GELU on the register tile, one store of
#                             each output element that exists (the edge tiles' guards)
print(f"\nper k step a thread loads {tm} + {tn} values from shared memory for {tm * tn} multiply-adds; "
      f"a block reads ({bm} + {bn}) x {bk} floats from global memory for {bm} x {bn} x {bk} multiply-adds")
gemm_text = str(gemm_serial)
assert "shared a_tile" in gemm_text and "local acc_tile" in gemm_text and "tanh(" in gemm_text

# At the benchmark's size (4096 x 4096 @ 4096 x 16384) the tiles are larger:
lg_shapes = WORKLOADS["linear_gelu"].shapes["gpu"]
lg_types = [TensorType(s, "f32") for s in lg_shapes.values()]
[big_gemm] = gpu_program(linear_gelu, *lg_types).kernels
print(f"at {' @ '.join('x'.join(map(str, s)) for s in list(lg_shapes.values())[:2])}: {big_gemm.schedule[0]}")

# ----------------------------------------------------------------------------------------------
step("Step 9: the linear + GELU kernel in CUDA, through nvcc")
# ----------------------------------------------------------------------------------------------
# In the SIMT form a __syncthreads() follows the first tile's load and each k step (the
# stage just filled is read by other threads after it); the GELU (tanhf) is computed from
# acc_tile, a register, right before the only store.
gelu_cuda = render_cuda_source(loop_program(gelu_graph, GPU), GPU)
[gelu_launch] = gelu_cuda.launches
gelu_kernel_text = kernel_function(gelu_cuda.text, gelu_launch.function)
print(gelu_kernel_text)
print(f"\nlaunch: {gelu_launch.function}<<<grid {gelu_launch.grid}, block {gelu_launch.block}>>>"
      f"({', '.join(gelu_launch.params)})")
assert "__syncthreads()" in gelu_kernel_text and "__shared__" in gelu_kernel_text
gelu_lines = [line for line in gelu_kernel_text.splitlines() if "tanhf(" in line]
assert gelu_lines and not any("b_acc_tile" in line.split("=")[0] for line in gelu_lines)  # GELU of a register
assert any("b_fused" in line and ("] = " in line or "__stwb(" in line) for line in gelu_kernel_text.splitlines())
report = ptxas_summary(gelu_cuda.text, gelu_launch.function)
if report:
    print(report)
# (The register tile, the fragments of a and b and the prefetched a_next/b_next must all be
# registers: ptxas would report spills otherwise, and the test suite fails on any.)

serial_gelu = minicomp.jit(linear_gelu, target="gpu-serial-c")
assert_close(serial_gelu(lx, lw, lb), linear_gelu(lx, lw, lb))
print(f"\nthread-serial form as C (target gpu-serial-c), {M} x {K} @ {K} x {N}: matches NumPy")

# ----------------------------------------------------------------------------------------------
step("Step 10: the bytes the GELU epilogue saves")
# ----------------------------------------------------------------------------------------------
# Fused, the matmul's result never reaches memory: GELU runs on registers. With a separate
# GELU kernel, the matmul (with its bias) writes h = x @ w + b, M x N floats, and the GELU
# kernel reads it back and writes the output. One kernel per op (fusion off) does that for
# each of the ten elementwise ops.
(gm, gk), (_, gn) = lg_shapes["x"], lg_shapes["w"]
fused_bytes = kernel_summary(run_pipeline(minicomp.trace(linear_gelu, *lg_types))[0]).bytes_moved
separate_bytes = fused_bytes + 2 * gm * gn * 4          # h written, then read back
unfused_lg = run_pipeline(minicomp.trace(linear_gelu, *lg_types), disable=["fusion"])[0]
unfused_summary = kernel_summary(unfused_lg)
flops = 2 * gm * gn * gk
print(f"{gm} x {gk} @ {gk} x {gn}: {flops / 1e9:.0f} GFLOP")
print(f"{'':<38}{'kernels':>8}{'HBM bytes':>11}")
for label, kernels, nbytes in [("fused: GELU on the register tile", 1, fused_bytes),
                               ("matmul + bias, then a GELU kernel", 2, separate_bytes),
                               ("one kernel per op (fusion off)", unfused_summary.kernels,
                                unfused_summary.bytes_moved)]:
    print(f"{label:<38}{kernels:>8}{human(nbytes):>11}")
# A block's tiles are read from global memory once per block that needs them: x's rows once
# for every column of blocks, w's columns once for every row of blocks. Mostly the 50 MB L2
# serves those repeats; it is the traffic the SMs ask for:
big_bm, big_bn = big_gemm.schedule[0]["bm"], big_gemm.schedule[0]["bn"]
tile_reads = 4 * (gm * gk * -(-gn // big_bn) + gk * gn * -(-gm // big_bm))
print(f"tile loads the SMs issue ({big_bm} x {big_bn} tiles): {human(tile_reads)}, "
      f"{flops / tile_reads:.0f} FLOPs per byte")
assert separate_bytes - fused_bytes == 2 * gm * gn * 4 and unfused_summary.bytes_moved > separate_bytes
# Unlike the softmax, this kernel is compute-bound: ~550 GFLOP at ~50 TFLOP/s (an H100's
# float32, no tensor cores) is about 11 ms, and the separate GELU kernel's 0.5 GB at ~3 TB/s
# costs ~0.2 ms more: fusion saves a few percent here. With fusion off, ten elementwise
# kernels over 256 MB each add ~2 ms, and 0.8 GB of intermediates in the workspace.

# ----------------------------------------------------------------------------------------------
step("Step 11: on a GPU: run, check, time")
# ----------------------------------------------------------------------------------------------
# minicomp.jit(fn, target="cuda") runs every stage, the last one (load) through pycuda. It
# needs pycuda and an NVIDIA GPU; minicomp's runtime says which is missing, and so do we.
from minicomp.runtime.cuda import cuda_driver  # noqa: E402  (imports nothing of pycuda yet)

try:
    cuda_driver()
    gpu_error = None
except MinicompError as exc:
    gpu_error = str(exc)
if gpu_error is not None:
    print(f"no GPU run here: {gpu_error}")
else:
    # Device arrays in give pycuda GPUArrays out, and pycuda frees a GPUArray in the context
    # current when it is collected: keep the device's primary context (the one minicomp and
    # torch use) current in this thread, or freeing one outside minicomp's calls aborts.
    importlib.import_module("pycuda.autoprimaryctx")

    from minicomp.bench_cuda import event_ms
    from minicomp.peers import TORCH_FUNCTIONS
    from minicomp.target import probe_cuda_target

    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    small = bool(os.environ.get("MINICOMP_TUTORIAL_SMALL"))
    cases = [("softmax", softmax, [np.random.default_rng(1).standard_normal((4096 if small else 32768, 4096),
                                                                            dtype=F32)]),
             ("linear_gelu", linear_gelu, WORKLOADS["linear_gelu"].inputs("cpu" if small else "gpu"))]
    print(f"device: {probe_cuda_target().name}")
    for name, fn, host in cases:
        expected = fn(*host)
        fused_fn, unfused_fn = minicomp.jit(fn, target="cuda"), minicomp.jit(fn, target="cuda", disable=["fusion"])
        assert_close(fused_fn(*host), expected)        # NumPy arrays in: copied to the GPU and back
        assert_close(unfused_fn(*host), expected)
        shapes = ", ".join("x".join(map(str, a.shape)) for a in host)
        print(f"\n{name} ({shapes}): minicomp fused and fusion off match NumPy")
        if torch is None:
            print("  (timing uses torch's CUDA events, as `minicomp bench --target cuda` does: torch with CUDA "
                  "is not installed here)")
            continue
        # Timed as minicomp bench does (minicomp/bench_cuda.py): inputs on the device as torch
        # tensors, which minicomp reads in place (no copies timed); blocks of 5 calls between
        # two CUDA events, in rotating order, the median over rounds.
        tensors = [torch.from_numpy(a).cuda() for a in host]
        calls = {"minicomp fused": lambda: fused_fn(*tensors), "minicomp fusion off": lambda: unfused_fn(*tensors),
                 "torch eager": lambda: TORCH_FUNCTIONS[name](torch, *tensors)}
        if name == "softmax":
            calls["torch.softmax"] = lambda: torch.softmax(tensors[0], dim=-1)
        times = {label: [] for label in calls}
        for label, call in calls.items():
            call()                                      # compile (minicomp) and warm up
        for round_ in range(10):
            order = list(calls)[round_ % len(calls):] + list(calls)[:round_ % len(calls)]
            for label in order:
                times[label].append(event_ms(torch, calls[label], 5))
        minimum = sum(a.nbytes for a in host) + expected.nbytes
        work = 2 * host[0].shape[0] * host[1].shape[1] * host[0].shape[1] if name == "linear_gelu" else 0
        for label, samples in times.items():
            ms = statistics.median(samples)
            rate = f"{work / ms / 1e9:8.1f} TFLOP/s" if work else f"{minimum / ms / 1e6:8.0f} GB/s"
            print(f"  {label:<22}{ms:9.3f} ms  {rate}")
    # How to read it: the softmax's GB/s (x read once, the output written once) against the
    # device's copy bandwidth, which moves the same bytes; fusion off and torch eager (five
    # kernels) pay Step 7's extra bytes. linear + GELU's TFLOP/s against cuBLAS's float32 rate
    # (torch eager's matmul is cuBLAS; `minicomp bench --target cuda` measures both ceilings).
    # Seen once on an H100 at the full sizes: softmax fused 0.44 ms (2.4 TB/s, as fast as
    # torch.softmax), fusion off 1.8 ms; linear + GELU fused 17.6 ms (31 TFLOP/s), fusion off
    # 20.9 ms, torch eager 12.9 ms: the sgemm is short of cuBLAS, and fusion off's ten extra
    # passes over memory cost 3.3 ms, of the order of Step 10's estimate.
print("\nall results matched NumPy")
