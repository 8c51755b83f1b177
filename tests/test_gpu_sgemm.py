"""``gpu_sgemm`` (``minicomp/schedules/gpu/sgemm.py``), checked on a CPU and by nvcc.

* **the form** it makes: block tiles through shared memory, a register tile per thread, one
  barrier per k tile with double buffering (two without), the register tile in registers
  after ``fuse_threads``;
* **values** against NumPy at awkward sizes (1, 7, 33, 100, 129, 257: multiples of no tile)
  through several tilings, float32 and float64, batched, with a bias + GELU epilogue, an
  epilogue ending in a transpose, ``x.T @ w``, NHWC convolutions (implicit GEMM), symbolic
  ``M``, ``K`` and ``N``: in C (the thread-serial form, ``gpu-serial-c``) and in lockstep (the
  SIMT form in the loop interpreter: threads shuffled, shared memory NaN at each block's start,
  races reported; tiny sizes);
* **the record**: it replays on a fresh lowering, refuses what it does not know, and the
  default rule picks it (and its tiles) for float matmuls above a small amount of work;
* **nvcc**: the kernels compile for sm_90 without spills or stack, the register tile's
  multiply-adds all in registers (PTX: no ``.local``), shared memory within 48 KiB.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import TensorType, nn
from minicomp.codegen.cuda import render_cuda
from minicomp.ir.loops import Barrier
from minicomp.ir.schedule import ScheduleError, loops
from minicomp.ir.symbolic import Sym
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime import nvcc
from minicomp.schedules import Strategy, schedule
from minicomp.schedules.gpu import sgemm
from minicomp.schedules.gpu.fuse_threads import fuse_threads
from minicomp.stages import loop_program, run_stages, simplify_indices
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.testing.backends import BACKENDS, has_nvcc, load_c
from minicomp.testing.loop_interpreter import SynchronisationError, run_program
from minicomp.workloads import WORKLOADS

CUDA = cuda_target("sm_90")
T, K, N = Sym.symbol("T"), Sym.symbol("K"), Sym.symbol("N")
ORDERS = ["reversed", 7]  # last to first; a fresh shuffle at every step from seed 7

#: tilings in C: the default ones and odd ones (tiles of no power of two, thread counts that do
#: not divide a tile's loads, one stage)
TILINGS = {
    "128x128": dict(sgemm.TILES[128, 128], double_buffer=True),
    "64x64": dict(sgemm.SMALL, double_buffer=True),
    "128x64": dict(sgemm.TILES[128, 64], double_buffer=True),
    "f64": dict(sgemm.SMALL_F64, double_buffer=True),
    "strided": dict(sgemm.STRIDED, double_buffer=True),
    "odd": dict(bm=24, bn=40, bk=5, tm=3, tn=5, double_buffer=True),
    "one stage": dict(bm=32, bn=32, bk=4, tm=4, tn=2, double_buffer=False),
    "vec4 grouped odd": dict(bm=24, bn=40, bk=8, tm=4, tn=4, lanes=4, group_rows=3, double_buffer=True),
    "vec2 one stage": dict(bm=32, bn=16, bk=6, tm=4, tn=2, lanes=2, group_rows=2, double_buffer=False),
}
#: tilings small enough for the loop interpreter
TINY_TILINGS = {
    "16x16": dict(bm=16, bn=16, bk=4, tm=2, tn=2, double_buffer=True),
    "odd": dict(bm=12, bn=8, bk=3, tm=3, tn=2, double_buffer=True),
    "one stage": dict(bm=8, bn=16, bk=2, tm=2, tn=4, double_buffer=False),
    "vec4": dict(bm=16, bn=16, bk=4, tm=4, tn=4, lanes=4, double_buffer=True),
    "vec4 grouped one stage": dict(bm=8, bn=16, bk=8, tm=4, tn=4, lanes=4, group_rows=2, double_buffer=False),
}


def for_dtype(tiling: dict, dtype) -> dict:
    """``tiling`` with its groups at most 16 bytes for ``dtype`` (float64: ``lanes`` 2 for 4)."""
    lanes = tiling.get("lanes", 1)
    return dict(tiling, lanes=min(lanes, 16 // np.dtype(dtype).itemsize)) if lanes > 1 else tiling


def gelu(x):
    return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))


def matmul(a, b):
    return a @ b


def linear_gelu(x, w, b):
    return gelu(x @ w + b)


def lowered(fn, *types, disable=()):
    """The plain nests of ``fn`` (default passes but ``disable``, no schedule)."""
    types = [t if isinstance(t, TensorType) else TensorType(t.shape, t.dtype) for t in types]
    return lower(run_pipeline(minicomp.trace(fn, *types).verify(), disable=disable)[0])


def with_sgemm(program, **tiling):
    """``program`` with ``gpu_sgemm(**tiling)`` on its matmul kernel (the last one) and the
    default GPU schedule on the others (a transpose before it)."""
    *others, last = program.kernels
    others = schedule(replace(program, kernels=others), CUDA).kernels if others else []
    return replace(program, kernels=list(others) + [Strategy("gpu_sgemm", **tiling).apply(last)])


def run_serial_c(program, *arrays):
    return load_c(simplify_indices(program))(*arrays)


def run_simt(program, *arrays, order="reversed"):
    return run_program(fuse_threads(program), *arrays, order=order)


def rand(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def steps(program) -> list[str]:
    return [str(step) for kernel in program.kernels for step in kernel.schedule]


# ----------------------------------------------------------------------------------------------
# The form
# ----------------------------------------------------------------------------------------------


def test_the_thread_serial_form_of_a_tile():
    program = with_sgemm(lowered(matmul, TensorType((33, 7), "f32"), TensorType((7, 29), "f32")),
                         **TINY_TILINGS["16x16"])
    printed = str(program.kernels[0])
    assert """\
  gpu_block.x for b in 0..6:
    shared a_tile: f32[320]
    shared b_tile: f32[128]
    local acc_tile: f32[256]
    i64 n0 = (b % 2) * 16
    i64 m0 = (b / 2) * 16
    gpu_thread.x for t in 0..64:
      unrolled for c in 0..4:
        acc_tile[(t * 4) + c] = 0.0_f32""" in printed
    assert "    for kt in 0..2:\n      gpu_thread.x for t in 0..64:\n" in printed  # one phase per k tile
    # the compute: fragments of A and B from the current stage, the 2 x 2 register tile
    assert "a_frag[r] = a_tile[((((kt % 2) * 160) + (kk * 40)) + ty) + (r * 8)]" in printed
    assert "acc_tile[((t * 4) + (r * 2)) + c_1] = acc_tile[((t * 4) + (r * 2)) + c_1] + (a_frag[r] * b_frag[c_1])" \
        in printed
    # the edges: 33 rows, 29 columns and 7 of k are multiples of no tile: loads and the store guarded
    assert "select((((m0 + (((i * 64) + t) / 4)) < 33) && ((((i * 64) + t) % 4) < 7))" in printed
    assert "if m < 33:" in printed and "if n < 29:" in printed


def test_no_guard_where_the_tiles_divide_the_sizes():
    program = with_sgemm(lowered(matmul, TensorType((32, 8), "f32"), TensorType((8, 16), "f32")),
                         **TINY_TILINGS["16x16"])
    printed = str(program.kernels[0])
    assert "select" not in printed and " if " not in printed.replace("if (kt + 1) < 2", "")


@pytest.mark.parametrize("double_buffer, per_k_tile", [(True, 1), (False, 2)])
def test_barriers_per_k_tile(double_buffer, per_k_tile):
    """Double buffering: one barrier per k tile (the next tile goes into the other stage while
    this one is read); one stage: a barrier after loading and one after computing."""
    tiling = dict(TINY_TILINGS["16x16"], double_buffer=double_buffer)
    program = fuse_threads(with_sgemm(lowered(matmul, TensorType((33, 7), "f32"), TensorType((7, 29), "f32")),
                                      **tiling))
    [k_loop] = [loop for loop in loops(program.kernels[0].body) if loop.var.name == "kt"]
    assert sum(isinstance(s, Barrier) for s in k_loop.body.stmts) == per_k_tile
    assert sum(1 for _ in loops(program.kernels[0].body) if _.kind == "gpu_thread") == 1


def test_the_register_tile_is_each_threads_own_after_fuse_threads():
    program = fuse_threads(with_sgemm(lowered(matmul, TensorType((300, 70), "f32"), TensorType((70, 200), "f32")),
                                      **TILINGS["128x128"]))
    printed = str(program.kernels[0])
    assert "local acc_tile: f32[64]" in printed and "local a_frag: f32[8]" in printed
    assert "acc_tile[(r * 8) + c_1] = acc_tile[(r * 8) + c_1] + (a_frag[r] * b_frag[c_1])" in printed
    assert all(loop.kind == "unrolled" for loop in loops(program.kernels[0].body)
               if loop.var.name in ("kk", "r", "c", "c_1"))


def test_vector_fragments_and_groups_of_the_tiles():
    """``lanes=4``: a thread's rows and columns in groups of 4 consecutive ones, each fragment
    group a vectorized loop at ``base + v``; the tiles' loads and C's store in groups of 4
    consecutive ``k``, ``n`` and columns, a group-wide guard an ``if`` (0 where it fails), one that
    differs between lanes (K = 7: no multiple of 4) a select per lane."""
    program = with_sgemm(lowered(matmul, TensorType((33, 12), "f32"), TensorType((12, 36), "f32")),
                         **TINY_TILINGS["vec4"])
    printed = str(program.kernels[0])
    assert """          unrolled for r in 0..1:
            vectorized for v in 0..4:
              a_frag[(r * 4) + v] = a_tile[(((((kt % 2) * 64) + (kk * 16)) + (r * 16)) + (ty * 4)) + v]""" in printed
    assert "b_frag[(c_1 * 4) + v] = b_tile[(((((kt % 2) * 64) + (kk * 16)) + (c_1 * 16)) + (tx * 4)) + v]" in printed
    assert """        if (m0 + ((i * 16) + t)) < 33:
          vectorized for v in 0..4:
            a_tile[((v * 16) + (i * 16)) + t] = a[(((m0 * 12) + (i * 192)) + (t * 12)) + v]
        else:
          vectorized for v in 0..4:
            a_tile[((v * 16) + (i * 16)) + t] = 0.0_f32""" in printed  # A's rows: 33 of 48
    assert """              if n < 36:
                vectorized for v in 0..4:
                  f32 acc = acc_tile[((((t * 16) + (g * 16)) + (w * 4)) + (g_1 * 4)) + v]
                  matmul[((i0 * 36) + n) + v] = acc""" in printed  # 36 columns of 48: whole groups
    odd_k = str(with_sgemm(lowered(matmul, TensorType((32, 7), "f32"), TensorType((7, 16), "f32")),
                           **TINY_TILINGS["vec4"]).kernels[0])
    assert """\
        vectorized for v in 0..4:
          a_tile[((v * 16) + (i * 16)) + t] = select((v < 7), a[(((m0 * 7) + (i * 112)) + (t * 7)) + v], 0.0_f32)""" \
        in odd_k


def test_grouped_block_order():
    """``group_rows=2``: block ``q`` runs down 2 row tiles, then the next column tile; the last
    group (5 row tiles: 1 left) takes what is left."""
    program = with_sgemm(lowered(matmul, TensorType((80, 8), "f32"), TensorType((8, 48), "f32")),
                         **dict(TINY_TILINGS["vec4"], group_rows=2))
    printed = str(program.kernels[0])
    assert """    i64 q = b
    i64 first = (q / 6) * 2
    i64 rows = select(((first + 1) < 5), 2, (5 - first))
    i64 n0 = ((q % 6) / rows) * 16
    i64 m0 = (first + ((q % 6) % rows)) * 16""" in printed
    tiles = []
    for q in range(15):  # the formula as printed: each tile once
        first = q // 6 * 2
        rows = 2 if first + 1 < 5 else 5 - first
        tiles.append(((first + q % 6 % rows), q % 6 // rows))
    assert sorted(tiles) == [(r, c) for r in range(5) for c in range(3)] and tiles[:3] == [(0, 0), (1, 0), (0, 1)]


def test_a_missing_barrier_between_k_tiles_is_a_race(rng):
    """The lockstep run is a real test of the barriers: without the one that ends each k tile,
    a thread stores the next stage while another still reads it."""
    program = fuse_threads(with_sgemm(lowered(matmul, TensorType((16, 12), "f32"), TensorType((12, 16), "f32")),
                                      **TINY_TILINGS["16x16"]))
    kernel = program.kernels[0]
    [k_loop] = [loop for loop in loops(kernel.body) if loop.var.name == "kt"]
    a, b = rand(rng, 16, 12), rand(rng, 12, 16)
    assert_close(run_program(program, a, b)[0], a @ b)
    k_loop.body.stmts = [s for s in k_loop.body.stmts if not isinstance(s, Barrier)]  # (a copy of the program)
    for order in ORDERS:
        with pytest.raises(SynchronisationError, match=r"[ab]_tile\[\d+\] between two barriers"):
            run_program(program, a, b, order=order)


# ----------------------------------------------------------------------------------------------
# Values: awkward sizes, both forms
# ----------------------------------------------------------------------------------------------

AWKWARD = [(1, 7, 33), (7, 1, 129), (129, 33, 1), (100, 257, 7), (257, 100, 129), (33, 129, 257),
           (37, 100, 36)]  # (K and N multiples of 4 but of no tile: a whole group in or out)


@pytest.mark.parametrize("name", sorted(TILINGS))
def test_awkward_sizes_in_c(name, rng):
    tiling = TILINGS[name]
    dtype = np.float64 if name == "f64" else np.float32
    for m, k, n in AWKWARD:
        a, b = rand(rng, m, k, dtype=dtype), rand(rng, k, n, dtype=dtype)
        program = with_sgemm(lowered(matmul, a, b), **tiling)
        assert_close(run_serial_c(program, a, b)[0], a @ b), (m, k, n)


@pytest.mark.parametrize("name", sorted(TILINGS))
def test_symbolic_m_k_and_n_in_c(name, rng):
    """One program over symbolic ``M``, ``K`` and ``N`` (ceil_div grids and k tiles, every edge
    guarded) at every awkward size, ``K = 0`` (no k tile runs: zeros) and ``M = 0`` (no block)."""
    tiling = TILINGS[name]
    dtype = np.float64 if name == "f64" else np.float32
    program = with_sgemm(lowered(matmul, TensorType((T, K), dtype), TensorType((K, N), dtype)), **tiling)
    assert isinstance(program.kernels[0].body.extent, Sym)
    run = load_c(simplify_indices(program))
    for m, k, n in AWKWARD + [(1, 1, 1), (5, 0, 3), (0, 4, 9)]:
        a, b = rand(rng, m, k, dtype=dtype), rand(rng, k, n, dtype=dtype)
        assert_close(run(a, b)[0], a @ b), (m, k, n)


@pytest.mark.parametrize("name", sorted(TINY_TILINGS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_awkward_sizes_in_simt_form(name, dtype, rng):
    tiling = for_dtype(TINY_TILINGS[name], dtype)
    for m, k, n in [(1, 3, 2), (7, 5, 9), (17, 8, 16), (9, 12, 20)]:
        a, b = rand(rng, m, k, dtype=dtype), rand(rng, k, n, dtype=dtype)
        program = with_sgemm(lowered(matmul, a, b), **tiling)
        for order in ORDERS:
            assert_close(run_simt(program, a, b, order=order)[0], a @ b), (m, k, n, order)


def test_the_large_tiles_in_simt_form(rng):
    """128 x 128 tiles, 8 x 8 per thread, over two k tiles (the interpreter's 256 threads: slow)."""
    a, b = rand(rng, 5, 9), rand(rng, 9, 7)
    assert_close(run_simt(with_sgemm(lowered(matmul, a, b), **TILINGS["128x128"]), a, b, order=3)[0], a @ b)


def test_symbolic_m_in_simt_form(rng):
    program = with_sgemm(lowered(matmul, TensorType((T, 6), "f32"), TensorType((6, 10), "f32")),
                         **TINY_TILINGS["odd"])
    for m in (0, 1, 13):
        a, b = rand(rng, m, 6), rand(rng, 6, 10)
        assert_close(run_simt(program, a, b, order=5)[0], a @ b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_matmuls(dtype, rng):
    """Batch loops (``b_expr`` uses them) become blocks; leading axes of ``x`` alone are rows."""
    cases = [(rand(rng, 3, 33, 7, dtype=dtype), rand(rng, 3, 7, 100, dtype=dtype)),
             (rand(rng, 2, 3, 17, 9, dtype=dtype), rand(rng, 2, 3, 9, 5, dtype=dtype)),
             (rand(rng, 2, 3, 17, 9, dtype=dtype), rand(rng, 9, 5, dtype=dtype))]  # rows 2*3*17
    for a, b in cases:
        assert_close(run_serial_c(with_sgemm(lowered(matmul, a, b), **TILINGS["odd"]), a, b)[0], a @ b)
    a, b = rand(rng, 2, 5, 3, dtype=dtype), rand(rng, 2, 3, 7, dtype=dtype)
    assert_close(run_simt(with_sgemm(lowered(matmul, a, b), **TINY_TILINGS["odd"]), a, b, order=2)[0], a @ b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_and_gelu_in_registers_before_the_one_store(dtype, rng):
    x, w, bias = rand(rng, 100, 33, dtype=dtype), rand(rng, 33, 129, dtype=dtype), rand(rng, 129, dtype=dtype)
    program = with_sgemm(lowered(linear_gelu, x, w, bias), **for_dtype(TILINGS["64x64"], dtype))
    [kernel] = program.kernels
    stores = [line for line in str(kernel).splitlines() if f"{kernel.output.name}[" in line.split("=")[0]]
    assert len(stores) == 1 and "tanh" in stores[0]  # one store of C, the epilogue in it
    assert_close(run_serial_c(program, x, w, bias)[0], linear_gelu(x, w, bias))
    x, w, bias = x[:7, :5], w[:5, :9], bias[:9]
    program = with_sgemm(lowered(linear_gelu, x, w, bias), **TINY_TILINGS["16x16"])
    assert_close(run_simt(program, x, w, bias, order=1)[0], linear_gelu(x, w, bias))


def test_an_epilogue_ending_in_a_transpose_stores_each_value_moved(rng):
    def relu_t(x, w, b):
        return np.maximum(x @ w + b, 0).T

    def batched_t(x, w):
        return (x @ w * 2).transpose(2, 0, 1)

    x, w, b = rand(rng, 33, 7), rand(rng, 7, 100), rand(rng, 100)
    assert_close(run_serial_c(with_sgemm(lowered(relu_t, x, w, b), **TILINGS["odd"]), x, w, b)[0], relu_t(x, w, b))
    xb = rand(rng, 2, 9, 7)
    assert_close(run_serial_c(with_sgemm(lowered(batched_t, xb, w), **TILINGS["odd"]), xb, w)[0], batched_t(xb, w))
    x, w, b = x[:5, :3], w[:3, :6], b[:6]
    assert_close(run_simt(with_sgemm(lowered(relu_t, x, w, b), **TINY_TILINGS["odd"]), x, w, b)[0], relu_t(x, w, b))


def test_transposed_operands(rng):
    def xt_w(x, w):
        return x.T @ w

    x, w = rand(rng, 33, 100), rand(rng, 33, 7)
    program = with_sgemm(lowered(xt_w, x, w), **TILINGS["odd"])
    assert_close(run_serial_c(program, x, w)[0], xt_w(x, w))
    x, w = x[:5, :6], w[:5, :7]
    assert_close(run_simt(with_sgemm(lowered(xt_w, x, w), **TINY_TILINGS["16x16"]), x, w)[0], xt_w(x, w))


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (3, (1, 0, 2, 1), 1)])
def test_nhwc_conv_as_an_implicit_gemm(stride, padding, dilation, rng):
    """Rows ``N*H*W``, reduction ``(kh, kw, c)``: loading A's tile gathers the windows (im2col
    one tile at a time), the padding's zeros included. (The layout pass, whose cost model is a
    CPU's, would run these small ones in NCHW, which is no matmul nest: it is left out.)"""
    def conv(x, w):
        return nn.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, layout="NHWC")

    x, w = rand(rng, 2, 11, 13, 5), rand(rng, 3, 3, 5, 7)
    expected = minicomp.jit(conv, target="numpy")(x, w)
    program = with_sgemm(lowered(conv, x, w, disable=["layout"]), **TILINGS["odd"])
    assert_close(run_serial_c(program, x, w)[0], expected)
    x, w = x[:1, :5, :4, :2], w[:, :, :2, :3]
    expected = minicomp.jit(conv, target="numpy")(x, w)
    program = with_sgemm(lowered(conv, x, w, disable=["layout"]), **TINY_TILINGS["odd"])
    assert_close(run_simt(program, x, w, order=4)[0], expected)


def test_conv_bn_relu_at_cpu_size_through_gpu_serial_c():
    workload = WORKLOADS["conv_bn_relu"]
    args = workload.inputs("cpu", seed=3)
    program = loop_program(run_pipeline(minicomp.trace(workload.fn, *args))[0], CUDA, stop_after="schedule")
    assert steps(program)[-1].startswith("gpu_sgemm(")
    assert_close(BACKENDS["gpu-serial-c"].run(program, *args)[0], workload.fn(*args))


def test_symbolic_rows_through_jit():
    """One compile of the default GPU schedule (symbolic ``M``: 64 x 64 tiles) for every number of rows."""
    rng = np.random.default_rng(2)
    w, b = rand(rng, 129, 257), rand(rng, 257)
    jitted = minicomp.jit(linear_gelu, target="gpu-serial-c", dynamic={"x": [0]})
    for m in (1, 7, 33, 100, 129):
        x = rand(rng, m, 129)
        assert_close(jitted(x, w, b), linear_gelu(x, w, b))
    assert jitted.cache_size == 1
    program = schedule(lowered(linear_gelu, TensorType((T, 129), "f32"), w, b), CUDA)
    assert steps(program) == ["gpu_sgemm(bm=64, bn=64, bk=16, tm=4, tn=4, lanes=4, double_buffer=True)"]


# ----------------------------------------------------------------------------------------------
# The record: replay, refusals, the default rule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, types", [
    (matmul, [TensorType((300, 200), "f32"), TensorType((200, 100), "f32")]),
    (matmul, [TensorType((T, 256), "f64"), TensorType((256, 300), "f64")]),
    (linear_gelu, [TensorType((200, 64), "f32"), TensorType((64, 300), "f32"), TensorType((300,), "f32")]),
    (matmul, [TensorType((4, 50, 60), "f32"), TensorType((4, 60, 70), "f32")]),
])
def test_the_record_replays_on_a_fresh_lowering(fn, types):
    program = schedule(lowered(fn, *types), CUDA)
    [kernel] = program.kernels
    [step] = kernel.schedule
    assert step.name == "gpu_sgemm"
    assert str(step.apply(lowered(fn, *types).kernels[0])) == str(kernel)


def test_gpu_sgemm_refuses_what_it_does_not_know():
    program = lowered(matmul, TensorType((40, 30), "f32"), TensorType((30, 20), "f32"))
    [kernel] = program.kernels

    def refused(kernel, why, **params):
        with pytest.raises(ScheduleError, match=why):
            Strategy("gpu_sgemm", **params).apply(kernel)

    refused(kernel, "tm must divide bm", bm=64, tm=5)
    refused(kernel, "2048 threads per block", bm=64, bn=128, tm=2, tn=2)
    refused(kernel, "must be positive ints", bk=0)
    refused(kernel, "must be positive ints", bm=64.0)
    refused(kernel, "double_buffer must be True or False", double_buffer=1)
    refused(kernel, "lanes must be one of", lanes=3)
    refused(kernel, "lanes=4 must divide tm, tn and bk", bm=64, bn=64, tm=4, tn=4, bk=6, lanes=4)
    refused(kernel, "group_rows must be a positive int", group_rows=0)
    refused(lowered(matmul, TensorType((40, 30), "f64"), TensorType((30, 20), "f64")).kernels[0],
            "lanes=4 of float64 pass the 16 bytes", bm=64, bn=64, tm=4, tn=4, lanes=4)
    refused(Strategy("gpu_threads").apply(kernel), "bound to blockIdx")
    refused(lowered(np.negative, TensorType((40, 30), "f32")).kernels[0], "no float matmul")
    refused(lowered(matmul, TensorType((40, 30), "i32"), TensorType((30, 20), "i32")).kernels[0], "no float matmul")
    refused(replace(kernel, aliases=frozenset({kernel.output})), "shares memory with an input")


SMALL_STEP = "bm=64, bn=64, bk=16, tm=4, tn=4, lanes=4, double_buffer=True"


@pytest.mark.parametrize("types, chosen", [
    ([(4096, 4096), (4096, 4096)], "gpu_sgemm(bm=128, bn=128, bk=8, tm=8, tn=8, lanes=4, double_buffer=True)"),
    ([(100352, 576), (576, 64)], "gpu_sgemm(bm=128, bn=64, bk=8, tm=8, tn=4, lanes=4, double_buffer=True)"),
    ([(64, 4096), (4096, 32768)], "gpu_sgemm(bm=64, bn=128, bk=8, tm=4, tn=8, lanes=4, double_buffer=True)"),
    ([(200, 300), (300, 200)], f"gpu_sgemm({SMALL_STEP})"),  # 4 big tiles
    ([(T, 768), (768, 768)], f"gpu_sgemm({SMALL_STEP})"),
    ([(8, 1000, 50), (8, 50, 60)], f"gpu_sgemm({SMALL_STEP})"),
    ([(500, 500, "f64"), (500, 500, "f64")], "gpu_sgemm(bm=64, bn=64, bk=8, tm=4, tn=4, double_buffer=True)"),
    ([(20, 20), (20, 20)], "gpu_threads(threads=256)"),  # 8000 multiply-adds
    ([(8, 1000), (1000, 1000)], "gpu_threads(threads=256)"),  # 8 rows: a thread per column
    ([(300, 300, "i32"), (300, 300, "i32")], "gpu_threads(threads=256)"),
])
def test_the_default_rule(types, chosen):
    tensor_types = [TensorType(t[:-1], t[-1]) if isinstance(t[-1], str) else TensorType(t, "f32") for t in types]
    program = schedule(lowered(matmul, *tensor_types), CUDA)
    assert steps(program) == [chosen]


def test_the_default_tiles_follow_the_targets_sms():
    """200 x 200 of C is 4 tiles of 128 x 128: too few for 132 SMs, enough for 4."""
    program = lowered(matmul, TensorType((200, 300), "f32"), TensorType((300, 200), "f32"))
    assert steps(schedule(program, CUDA)) == [f"gpu_sgemm({SMALL_STEP})"]
    assert steps(schedule(program, replace(CUDA, sm_count=4))) == [
        "gpu_sgemm(bm=128, bn=128, bk=8, tm=8, tn=8, lanes=4, double_buffer=True)"]


def test_the_tiling_record():
    large = sgemm.Tiling(**sgemm.STRIDED)
    assert (large.threads, large.loads_per_thread(), large.a_stride) == (256, (4, 4), 132)
    assert large.shared_bytes(np.float32) == 2 * (8 * 132 + 8 * 128) * 4 <= 48 * 1024
    small = sgemm.Tiling(**dict(sgemm.SMALL, lanes=1))
    assert (small.threads, small.loads_per_thread(), small.a_stride) == (256, (4, 4), 66)
    assert sgemm.Tiling(**sgemm.SMALL_F64).shared_bytes(np.float64) <= 48 * 1024
    vector = sgemm.Tiling(**sgemm.TILES[128, 128])  # one float4 of A and one of B per thread and k tile
    assert (vector.threads, vector.loads_per_thread(), vector.a_stride) == (256, (1, 1), 132)


@pytest.mark.parametrize("bk, conflicts", [(4, 1), (8, 1), (16, 2), (32, 4)])
def test_a_tiles_rows_padded_for_vector_loads_and_few_conflicts(bk, conflicts):
    """With lanes, ``a_tile``'s rows stay multiples of 4 (aligned ``float4`` fragments), padded
    so that the transposed stores of a warp's groups of A hit as few threads per bank as any
    such padding can: none for ``bk <= 8`` (2 and 4 groups of 4 per row), two for 16."""
    tiling = sgemm.Tiling(bm=128, bn=128, bk=bk, tm=8, tn=8, lanes=4)
    assert tiling.a_stride % 4 == 0 and 128 <= tiling.a_stride < 160
    best = tiling.store_conflicts(tiling.a_stride - 128)
    assert best == conflicts == min(tiling.store_conflicts(pad) for pad in range(0, 32, 4))
    assert sgemm.Tiling(bm=128, bn=128, bk=8, tm=8, tn=8, lanes=4).store_conflicts(0) == 2  # unpadded: 2-way


# ----------------------------------------------------------------------------------------------
# nvcc: compiled for sm_90 without spills, the register tile in registers
# ----------------------------------------------------------------------------------------------



needs_nvcc = pytest.mark.skipif(not has_nvcc(), reason="nvcc (the CUDA toolkit) is not installed")


def cuda_source(fn, *types):
    """The CUDA source of ``fn`` at ``types`` and its kernels' schedule steps."""
    graph, _ = run_pipeline(minicomp.trace(fn, *types))
    return run_stages(graph, CUDA, stop_after="render")[0], steps(loop_program(graph, CUDA, stop_after="schedule"))


def conv_nhwc(x, w):
    return nn.conv2d(x, w, padding=1, layout="NHWC")


NVCC_CASES = {
    "matmul 4096 f32": (matmul, [TensorType((4096, 4096), "f32"), TensorType((4096, 4096), "f32")]),
    "matmul 129x257x100": (matmul, [TensorType((129, 257), "f32"), TensorType((257, 100), "f32")]),
    "matmul f64": (matmul, [TensorType((1000, 1000), "f64"), TensorType((1000, 1000), "f64")]),
    "matmul symbolic": (matmul, [TensorType((T, 4096), "f32"), TensorType((4096, N), "f32")]),
    "batched": (matmul, [TensorType((16, 512, 64), "f32"), TensorType((16, 64, 512), "f32")]),
    "linear gelu": (linear_gelu, [TensorType((4096, 4096), "f32"), TensorType((4096, 16384), "f32"),
                                  TensorType((16384,), "f32")]),
    "conv nhwc": (conv_nhwc, [TensorType((32, 56, 56, 64), "f32"), TensorType((3, 3, 64, 64), "f32")]),
}


#: a tiling whose two stages of 128 x 32 and 32 x 128 take 64 KiB: the renderer's dynamic shared memory
DEEP = dict(bm=128, bn=128, bk=32, tm=8, tn=8, double_buffer=True)
#: matmul 4096^3 with tilings the default rule does not pick: deep tiles, the strided layout, groups
FORCED = {"deep tiles": DEEP, "strided": dict(sgemm.STRIDED, double_buffer=True),
          "vec4 bk16 grouped": dict(sgemm.TILES[128, 128], bk=16, group_rows=8, double_buffer=True)}


def forced_cuda_source(fn, types, **tiling):
    """The CUDA source of ``fn`` at ``types`` with ``gpu_sgemm(**tiling)`` on its matmul."""
    graph, _ = run_pipeline(minicomp.trace(fn, *types))
    program = with_sgemm(loop_program(graph, CUDA, stop_after="lower"), **tiling)
    return render_cuda(simplify_indices(fuse_threads(program)), CUDA), [f"gpu_sgemm({tiling})"]


@pytest.fixture(scope="module")
def sgemm_cubins():
    """name -> (CudaSource of its program, Cubin, schedule steps), all built in one nvcc batch."""
    made = {name: cuda_source(fn, *types) for name, (fn, types) in NVCC_CASES.items()}
    for name, tiling in FORCED.items():
        made[name] = forced_cuda_source(matmul, NVCC_CASES["matmul 4096 f32"][1], **tiling)
    cubins = nvcc.build_many([source.text for source, _ in made.values()], nvcc.arch_of(CUDA))
    return {name: (source, cubin, chosen) for (name, (source, chosen)), cubin in zip(made.items(), cubins)}


@needs_nvcc
@pytest.mark.parametrize("name", sorted(NVCC_CASES))
def test_sgemm_kernels_compile_without_spills(sgemm_cubins, name):
    """Every kernel (the matmul's is the last) compiles with no spill and no stack frame, in
    at most 255 registers a thread; the matmul's tiles take shared memory, at most 48 KiB."""
    source, cubin, chosen = sgemm_cubins[name]
    assert chosen[-1].startswith("gpu_sgemm(")
    for launch in source.launches:
        info = cubin.report[launch.function]
        assert not info.spills and info.stack_bytes == 0 and 0 < info.registers <= 255, (launch.function, info)
    info = cubin.report[source.launches[-1].function]
    assert 0 < info.shared_bytes <= 48 * 1024 and source.launches[-1].threads == 256, info


@needs_nvcc
@pytest.mark.parametrize("name", sorted(FORCED))
def test_other_tilings_compile_without_spills(sgemm_cubins, name):
    source, cubin, _ = sgemm_cubins[name]
    [launch] = source.launches
    info = cubin.report[launch.function]
    assert not info.spills and info.stack_bytes == 0 and 0 < info.registers <= 255, info


@needs_nvcc
def test_tiles_past_48_kib_take_dynamic_shared_memory(sgemm_cubins):
    source, cubin, _ = sgemm_cubins["deep tiles"]
    [launch] = source.launches
    assert launch.shared_bytes == 2 * (32 * 129 + 32 * 128) * 4 > 48 * 1024 and "extern __shared__" in source.text
    info = cubin.report[launch.function]
    assert not info.spills and info.stack_bytes == 0 and 0 < info.registers <= 255, info


@needs_nvcc
def test_the_register_tile_stays_in_registers():
    """The PTX of the 4096^3 kernel (the default rule: ``lanes=4``): no local memory, and per k
    tile the 8 x 8 x 8 multiply-adds of the unrolled register tile (512 ``fma``) from 8 x (2 + 2)
    ``float4`` shared loads and no scalar one; the tiles' loads one ``float4`` of A and one of B
    per thread and k tile (and the first tile's), B's stored into ``b_tile`` as one, the 64
    values of C 16 ``float4`` stores."""
    fn, types = NVCC_CASES["matmul 4096 f32"]
    source, _ = cuda_source(fn, *types)
    assert "#pragma unroll" in source.text
    ptx = nvcc.compile_ptx(source.text, nvcc.arch_of(CUDA))
    assert ".local" not in ptx
    assert len(re.findall(r"\bfma\.rn\.f32\b", ptx)) == 8 * 8 * 8
    assert len(re.findall(r"\bld\.shared\.v4\.f32\b", ptx)) == 8 * (2 + 2)
    assert len(re.findall(r"\bld\.shared\.f32\b", ptx)) == 0
    assert len(re.findall(r"\bld\.global(\.nc)?\.v4\.f32\b", ptx)) == 2 * 2
    assert len(re.findall(r"\bst\.global(\.wb)?\.v4\.f32\b", ptx)) == 16  # C (__stwb)
    assert len(re.findall(r"\bst\.shared\.v4\.f32\b", ptx)) == 2  # B's tile: the first, then each next one
    [launch] = source.launches
    assert launch.grid == (1024, 1, 1) and launch.block == (256, 1, 1) and launch.shared_bytes == 0
    assert launch.aligned == ("a", "b", "matmul")  # (the runtime copies a misaligned argument)


@needs_nvcc
def test_the_strided_layout_reads_scalar_fragments():
    """The layout before ``lanes`` (still a choice): 8 x (8 + 8) scalar shared loads per k tile."""
    source, _ = forced_cuda_source(matmul, NVCC_CASES["matmul 4096 f32"][1], **FORCED["strided"])
    ptx = nvcc.compile_ptx(source.text, nvcc.arch_of(CUDA))
    assert len(re.findall(r"\bfma\.rn\.f32\b", ptx)) == 8 * 8 * 8
    assert len(re.findall(r"\bld\.shared\.f32\b", ptx)) == 8 * (8 + 8)
    assert "v4" not in ptx


def test_the_epilogue_stores_float4_and_reads_the_bias_so():
    """linear_gelu at 4096: C's columns and the bias in ``float4`` groups (``n`` is a multiple of
    4: the renderer reads it through ``n0 = ... * 128``); an epilogue ending in a transpose keeps
    scalar stores (its lanes are not consecutive in the output)."""
    source, _ = cuda_source(*[NVCC_CASES["linear gelu"][0]], *NVCC_CASES["linear gelu"][1])
    kernel = source.text[source.text.index("__global__"):]
    assert re.search(r"__stwb\(reinterpret_cast<float4 \*>\(&b_\w+\[\(\(i0 \* 16384\) \+ n\)\]\)", kernel)
    assert re.search(r"const float4 mc_vec\d+ = \*reinterpret_cast<const float4 \*>\(&b_b\[n\]\)", kernel)

    def relu_t(x, w, b):
        return np.maximum(x @ w + b, 0).T

    types = [TensorType((256, 128), "f32"), TensorType((128, 256), "f32"), TensorType((256,), "f32")]
    transposed, chosen = cuda_source(relu_t, *types)
    assert chosen[-1].startswith("gpu_sgemm(") and "lanes=4" in chosen[-1]
    last = transposed.text[transposed.text.rindex("__global__"):]
    assert "__stwb" not in last and "float4 mc_vec" in last
