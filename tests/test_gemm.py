"""The packed matmul (``schedules/cpu/packed_gemm.py``) and tiled attention (``schedules/cpu/flash_attention.py``).

Both paths only start above a work threshold (``packed_gemm.MIN_WORK``); the tests lower it to
0 where they need the packed path on small, awkward shapes, and check through the kernel's
printed schedule that the path they test really ran. ``tests/test_cpu_strategies.py`` runs the
``packed_gemm`` strategy with chosen parameters against the plain nest.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicomp
from minicomp import nn
from minicomp.codegen import gemm
from minicomp.driver import jit
from minicomp.ir.rewrite import allocated
from minicomp.schedules.cpu import flash_attention
from minicomp.schedules.cpu import packed_gemm
from minicomp.codegen.c import render_c
from minicomp.ir.schedule import schedule_program
from minicomp.lower.program import lower, place_scratch
from minicomp.runtime.executable import Executable
from minicomp.schedules import Strategy
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import loop_program
from minicomp.target import Target, host_target
from minicomp.testing import assert_close

F32, F64 = np.float32, np.float64


@pytest.fixture
def always_packed(monkeypatch):
    monkeypatch.setattr(packed_gemm, "MIN_WORK", 0)
    monkeypatch.setattr(packed_gemm, "MIN_ROW_PANELS", 0)


def schedules(fn, *args) -> list[str]:
    """The printed schedule steps of every kernel ``fn`` compiles to for ``args``."""
    program = loop_program(run_pipeline(minicomp.trace(fn, *args))[0])
    return [str(step) for kernel in program.kernels for step in kernel.schedule]


def randn(rng, shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def matmul(a, b):
    return a @ b


@pytest.mark.parametrize("target, tile", [
    (Target(isa="sse", vector_bytes=16, vector_registers=16), (6, 8)),
    (Target(isa="avx2", vector_bytes=32, vector_registers=16), (6, 16)),
    (Target(isa="avx512", vector_bytes=64, vector_registers=32), (6, 64)),
    (Target(isa="avx512", vector_bytes=64, loop_vector_bytes=32, vector_registers=32), (6, 64)),
    (Target(isa="neon", vector_bytes=16, vector_registers=32), (6, 16)),
    (None, None),  # this machine: whatever it is, the same rules
])
def test_micro_kernel_tile_fits_the_target(target, tile):
    """NR is 2 register-wide vectors per row with 16 registers, 4 with 32: 6 x NV accumulators,
    NV loads of B and one broadcast fit the register file. The width is the register width,
    whatever width the compiler gives auto-vectorised loops."""
    mr, nr = gemm.tile_shape(F32, target)
    lanes = gemm.vector_bytes(target) // 4
    assert tile is None or (mr, nr) == tile
    assert nr % lanes == 0 and nr // lanes == gemm.vectors_per_row(target)
    assert mr * (nr // lanes) + nr // lanes + 1 <= (target or host_target()).vector_registers
    assert gemm.tile_shape(F64, target)[1] * 2 == nr
    assert f"vector_size({gemm.vector_bytes(target)})" in gemm.types_source("f32", target)
    source = gemm.source(gemm.kernel_name(F32, target), target)
    assert "acc[r][v] += a * b[v]" in source and "ap[r * lda + k]" in source
    assert f"acc[{mr}][{nr // lanes}]" in source


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 80), k=st.integers(1, 70), n=st.integers(2, 150), f64=st.booleans(),
       seed=st.integers(0, 2**16))
def test_packed_matmul_matches_numpy_on_any_shape(m, k, n, f64, seed):
    saved = packed_gemm.MIN_WORK, packed_gemm.MIN_ROW_PANELS
    packed_gemm.MIN_WORK, packed_gemm.MIN_ROW_PANELS = 0, 0
    try:
        rng = np.random.default_rng(seed)
        dtype = F64 if f64 else F32
        a, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype)
        assert any(s.startswith("packed_gemm(") for s in schedules(matmul, a, b))
        assert_close(jit(matmul)(a, b), a @ b)
    finally:
        packed_gemm.MIN_WORK, packed_gemm.MIN_ROW_PANELS = saved


@pytest.mark.parametrize("m, k, n", [(1024 // 4, 400, 1030), (7, 1000, 130), (145, 385, 65)])
def test_packed_matmul_across_cache_blocks(m, k, n):
    """Sizes that cross the kc, mc and nc blocks, with a partial last block of each."""
    rng = np.random.default_rng(1)
    a, b = randn(rng, (m, k)), randn(rng, (k, n))
    assert any(s.startswith("packed_gemm(") for s in schedules(matmul, a, b))
    assert_close(jit(matmul)(a, b), a @ b)


@pytest.mark.parametrize("shapes", [((3, 20, 30), (30, 40)), ((3, 20, 30), (3, 30, 40)),
                                    ((1, 20, 30), (4, 30, 40)), ((2, 1, 9, 30), (3, 30, 17))],
                         ids=["weights shared", "batched", "broadcast a", "broadcast both"])
def test_packed_batched_matmul(always_packed, shapes):
    rng = np.random.default_rng(2)
    a, b = randn(rng, shapes[0]), randn(rng, shapes[1])
    assert_close(jit(matmul)(a, b), a @ b)


def test_packed_matmul_reads_transposed_and_non_contiguous_operands(always_packed):
    rng = np.random.default_rng(3)
    a, b = randn(rng, (40, 33)), randn(rng, (50, 40))
    fn = lambda a, b: a.T @ b.T  # noqa: E731  transposes are read by the packing loops
    assert_close(jit(fn)(a, b), a.T @ b.T)
    strided = randn(rng, (66, 80))[::2, ::2]
    assert_close(jit(matmul)(strided, b.T[:40, :33].T.copy().T), strided @ b.T[:40, :33].T.copy().T)


def test_packed_matmul_propagates_nan_and_inf(always_packed):
    a, b = np.ones((13, 9), F32), np.ones((9, 70), F32)
    a[2, 3], b[4, 5] = np.nan, np.inf
    assert_close(jit(matmul)(a, b), a @ b)


def gelu(v):
    return 0.5 * v * (1 + np.tanh(0.7978845608 * (v + 0.044715 * v * v * v)))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("m, k, n", [(5, 17, 70), (64, 64, 128), (200, 500, 77)])
def test_epilogue_runs_on_each_tile(always_packed, dtype, m, k, n):
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    fn = lambda x, w, b: gelu(x @ w + b)  # noqa: E731
    steps = schedules(fn, x, w, b)
    assert len(steps) == 1 and steps[0].startswith("packed_gemm(")  # one kernel: the epilogue is fused
    assert_close(jit(fn)(x, w, b), fn(x, w, b))
    relu = lambda x, w: np.maximum(x @ w, 0) * 2  # noqa: E731
    assert_close(jit(relu)(x, w), relu(x, w))


@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (3, (1, 0, 2, 1), 1)])
def test_nhwc_conv_is_an_implicit_gemm(always_packed, stride, padding, dilation):
    rng = np.random.default_rng(5)
    x, w = randn(rng, (2, 11, 13, 5)), randn(rng, (3, 3, 5, 7))

    def conv(x, w):
        return nn.conv2d(x, w, stride=stride, padding=padding, dilation=dilation, layout="NHWC")

    assert any(s.startswith("packed_gemm(") for s in schedules(conv, x, w))
    assert_close(jit(conv)(x, w), jit(conv, target="numpy")(x, w))


def test_conv_bn_relu_workload_takes_the_gemm_path():
    workload = minicomp.workloads.WORKLOADS["conv_bn_relu"]
    args = workload.inputs("cpu")
    assert any(s.startswith("packed_gemm(") for s in schedules(workload.fn, *args))
    assert_close(jit(workload.fn)(*args), workload.fn(*args))


# -- tiled attention (the flash_attention schedule; more in test_flash_attention.py) -------------


def attention_cases():
    from tests.test_fusion import ATTENTION
    return ATTENTION


@pytest.fixture
def always_tiled(monkeypatch):
    monkeypatch.setattr(flash_attention, "MIN_WORK", 0)


def scheduled(fn, *args):
    """The program ``fn`` compiles to for ``args``, after the default schedules."""
    return loop_program(run_pipeline(minicomp.trace(fn, *args))[0])


def attention_schedules(fn, *args) -> list[str]:
    """The printed schedule steps of every scheduled kernel of ``fn``."""
    return [str(step) for kernel in scheduled(fn, *args).kernels for step in kernel.schedule]


@pytest.mark.parametrize("case", list(attention_cases()))
def test_tiled_attention_variants(always_tiled, case):
    options, q, k, v = attention_cases()[case]

    def attention(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, **options)

    assert any(s.startswith("flash_attention(") for s in attention_schedules(attention, q, k, v))
    assert_close(jit(attention)(q, k, v), attention(q, k, v))


@pytest.mark.parametrize("b, sq, sk, d, dv", [(3, 37, 70, 24, 24), (2, 100, 130, 80, 80), (1, 65, 64, 64, 130)])
@pytest.mark.parametrize("causal", [False, True])
def test_tiled_attention_odd_tiles(b, sq, sk, d, dv, causal):
    rng = np.random.default_rng(6)
    q, k, v = randn(rng, (b, sq, d)), randn(rng, (b, sk, d)), randn(rng, (b, sk, dv))

    def attention(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, causal=causal)

    assert any(s.startswith("flash_attention(") for s in attention_schedules(attention, q, k, v))
    assert_close(jit(attention)(q, k, v), attention(q, k, v))


def test_tiled_attention_stores_no_score_matrix():
    rng = np.random.default_rng(8)
    sq = sk = 256
    q, k, v = (randn(rng, (4, sq, 64)) for _ in range(3))
    program = scheduled(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v), q, k, v)
    [kernel] = program.kernels
    assert "flash_attention(" in str(kernel)
    # the workspace holds the packed K^T and V panels only: 2 x 4 x 256 x 64 floats, less than
    # the 4 x 256 x 256 scores; the per-task tiles are small locals
    assert program.workspace_bytes == 2 * 4 * sq * 64 * 4 < 4 * sq * sk * 4
    assert max(b.size for b in allocated(kernel.body)) < sq * sk // 8  # tiles, not rows of S


def run_variant(fn, args, **variant):
    """``fn`` on ``args`` with its matmul packed by this machine's default tiles in the variant
    a ``Strategy`` record forces (``a_per_task=True`` or ``b_per_task=True``); the program too."""
    plain = lower(run_pipeline(minicomp.trace(fn, *args))[0])
    [kernel] = [k for k in plain.kernels if packed_gemm.find_matmul(k) is not None]
    found = packed_gemm.find_matmul(kernel)
    tiles = packed_gemm.default_tiling(found.shape, found.tiles.dtype, host_target())
    step = Strategy("packed_gemm", **(tiles | dict(a_per_task=False, b_per_task=False) | variant))
    program = place_scratch(schedule_program(plain, {kernel.name: [step]}))
    return Executable(program, render_c(program))(*args)[0], program


@pytest.mark.parametrize("m, k, n", [(300, 50, 70), (7, 20, 200)])
def test_packed_matmul_with_per_task_a_blocks(m, k, n):
    """A big A (here: any A, by the record) is packed by each task for its own MC rows, not all at once."""
    rng = np.random.default_rng(9)
    a, b = randn(rng, (m, k)), randn(rng, (k, n))
    out, program = run_variant(matmul, (a, b), a_per_task=True)
    assert "a_block" in str(program.kernels[0]) and len(program.kernels[0].scratch) == 1
    assert "a_per_task=True" in str(program.kernels[0].schedule[0])
    assert_close(out, a @ b)
    fn = lambda x, w, b: gelu(x @ w + b)  # noqa: E731
    bias = randn(rng, (n,))
    assert_close(run_variant(fn, (a, b, bias), a_per_task=True)[0], fn(a, b, bias))


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 40), k=st.integers(1, 900), n=st.integers(2, 200), f64=st.booleans(),
       batch=st.integers(1, 2), seed=st.integers(0, 2**16))
def test_packed_matmul_with_per_task_b_panels(m, k, n, f64, batch, seed):
    """Small A, many panels (here: any number, by the record): tasks are NR panels of B, each
    packed by its own task.

    k up to 900 crosses kc blocks, so tiles accumulate over several passes; the epilogue
    (bias + GELU) must still run once per tile, after the last one.
    """
    rng = np.random.default_rng(seed)
    dtype = F64 if f64 else F32
    a, b, bias = randn(rng, (batch, m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    out, program = run_variant(matmul, (a, b), b_per_task=True)
    assert "b_per_task=True" in str(program.kernels[0].schedule[0])
    assert_close(out, a @ b)
    fn = lambda x, w, b: gelu(x @ w + b)  # noqa: E731
    assert_close(run_variant(fn, (a, b, bias), b_per_task=True)[0], fn(a, b, bias))


@pytest.mark.parametrize("m, k, n", [(3, 4, 5), (70, 90, 130)])  # the naive and the packed path
@pytest.mark.parametrize("dtype", [F32, F64])
def test_epilogue_ending_in_a_transpose_writes_each_tile_moved(m, k, n, dtype):
    rng = np.random.default_rng(10)
    x, w, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), randn(rng, (n,), dtype)
    fn = lambda x, w, b: np.maximum(x @ w + b, 0).T  # noqa: E731
    graph = run_pipeline(minicomp.trace(fn, x, w, b))[0]
    assert [node.attrs.get("pattern") for node in graph.op_nodes()] == ["epilogue"]
    assert_close(jit(fn)(x, w, b), fn(x, w, b))
    batched = lambda x, w: (x @ w * 2).transpose(2, 0, 1)  # noqa: E731
    xb = randn(rng, (2, m, k), dtype)
    assert_close(jit(batched)(xb, w), batched(xb, w))


def test_conv_bn_relu_is_one_kernel_at_cpu_size():
    workload = minicomp.workloads.WORKLOADS["conv_bn_relu"]
    args = workload.inputs("cpu")
    graph = run_pipeline(minicomp.trace(workload.fn, *args))[0]
    fused = [n for n in graph.op_nodes() if n.op == "fused"]
    assert [n.attrs["pattern"] for n in fused] == ["epilogue"]  # conv + BN + ReLU + back to NCHW
    assert fused[0].attrs["body"].nodes()[-1].op == "transpose"


@pytest.mark.parametrize("sq, sk", [(300, 300), (130, 400), (400, 130)])
def test_causal_attention_skips_hidden_key_blocks(sq, sk):
    rng = np.random.default_rng(11)
    q, k, v = randn(rng, (2, sq, 32)), randn(rng, (2, sk, 32)), randn(rng, (2, sk, 32))

    def causal(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, causal=True)

    program = scheduled(causal, q, k, v)
    assert "if kb < select((qb ==" in str(program.kernels[0])  # blocks above the diagonal skipped
    assert_close(jit(causal)(q, k, v), causal(q, k, v))


@pytest.mark.parametrize("sq, sk", [(300, 300), (400, 130)])
def test_tiles_a_constant_mask_leaves_whole_skip_the_mask(sq, sk):
    """Below the diagonal every score is visible: those tiles run the score without the mask."""
    rng = np.random.default_rng(13)
    q, k = randn(rng, (2, sq, 32)), randn(rng, (2, sk, 32))

    def causal(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, causal=True)

    text = str(scheduled(causal, q, k, k).kernels[0])
    score_lines = [line for line in text.splitlines() if "* 0.17677669_f32" in line]  # qk / sqrt(32)
    assert len(score_lines) == 2 and sum("constant[" in line for line in score_lines) == 1
    assert_close(jit(causal)(q, k, k), causal(q, k, k))


def test_band_mask_written_the_other_way_round():
    """``where(visible, s, -inf)``: the visible value is True; a band leaves mixed tiles at both ends."""
    rng = np.random.default_rng(14)
    q = randn(rng, (2, 400, 16))
    rows, cols = np.indices((400, 400))
    band = np.abs(rows - cols) < 150

    def banded(q, k, v):
        s = q @ k.swapaxes(-1, -2)
        s = np.where(band, s, -np.inf)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ v

    assert any(s.startswith("flash_attention(") for s in attention_schedules(banded, q, q, q))
    assert_close(jit(banded)(q, q, q), banded(q, q, q))


def test_masks_that_hide_no_whole_block_or_vary_by_batch_are_not_skipped():
    rng = np.random.default_rng(12)
    q = randn(rng, (2, 200, 16))
    stripes = np.ones((200, 200), bool)
    stripes[:, 64:128] = False  # the middle key block hidden: visible blocks are not one range
    per_batch = rng.random((2, 1, 200)) > 0.5
    for mask in (stripes, per_batch):
        def masked(q, k, v, mask=mask):
            return nn.scaled_dot_product_attention(q, k, v, mask=mask)
        program = scheduled(masked, q, q, q)
        assert "if kb <" not in str(program.kernels[0])
        assert_close(jit(masked)(q, q, q), masked(q, q, q))


def test_a_matmul_with_fewer_rows_than_the_micro_kernel_is_not_packed():
    """A decode step's ``x[1, K] @ W[K, N]`` reads W once: packing W would copy it for nothing."""
    rng = np.random.default_rng(3)
    for m in (1, 5):
        a, b = randn(rng, (m, 512), F32), randn(rng, (512, 384), F32)
        assert not any(s.startswith("packed_gemm(") for s in schedules(matmul, a, b))
        assert_close(jit(matmul)(a, b), a @ b)
    a = randn(rng, (6, 512), F32)
    assert any(s.startswith("packed_gemm(") for s in schedules(matmul, a, b))
