"""Attention: the plain online-softmax nest (``lower_attention``) and the ``flash_attention``
strategy that tiles it (``schedules/cpu/flash_attention.py``).

Every check compares with NumPy: the plain nest in the loop interpreter and through C, the
tiled nest through C (the interpreter does not run the micro-kernel). Tiles are chosen as
multiples of this machine's micro-kernel tile, so the tests hold on any x86-64 CPU.
"""

from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import nn
from minicomp.codegen import gemm
from minicomp.codegen.c import render_c
from minicomp.driver import jit
from minicomp.ir.loops import BOOL, Binary, Call, Const, Intrinsic, Select, Var, const
from minicomp.ir.rewrite import statements
from minicomp.ir.schedule import ScheduleError, apply_schedule, schedule_program
from minicomp.lower.online_softmax import online_softmax
from minicomp.lower.program import lower, place_scratch
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.executable import Executable
from minicomp.schedules import Strategy
from minicomp.schedules.cpu import flash_attention
from minicomp.schedules.cpu.flash_attention import (QUERY_PANELS, flash_attention_steps, mask_grid, query_panels,
                                                    read_plain_attention)
from minicomp.stages import loop_program
from minicomp.target import Target
from minicomp.testing import assert_close
from minicomp.testing.loop_interpreter import run_program

F32, F64 = np.float32, np.float64


@pytest.fixture
def always_tiled(monkeypatch):
    monkeypatch.setattr(flash_attention, "MIN_WORK", 0)


def randn(rng, shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def sdpa(causal=False, mask=None):
    def attention(q, k, v):
        return nn.scaled_dot_product_attention(q, k, v, causal=causal, mask=mask)
    return attention


def fused_graph(fn, *args):
    return run_pipeline(minicomp.trace(fn, *args))[0]


def attention_kernel(program):
    [kernel] = [k for k in program.kernels if k.pattern == "attention"]
    return kernel


def tiled(program, bq: int, bk: int):
    """``program`` (plain) with its attention kernel tiled ``bq`` x ``bk``."""
    steps = {attention_kernel(program).name: [Strategy("flash_attention", bq=bq, bk=bk)]}
    return place_scratch(schedule_program(program, steps))


def run_c(program, *args):
    return Executable(program, render_c(program))(*args)


def tile_multiples(dtype, queries: int, keys: int) -> dict:
    """``bq`` and ``bk`` as that many of this machine's micro-kernel rows and columns."""
    mr, nr = gemm.tile_shape(dtype)
    return dict(bq=queries * mr, bk=keys * nr)


def intrinsics(kernel) -> list[str]:
    return [s.fn for s in statements(kernel.body) if isinstance(s, Intrinsic)]


# -- the plain nest --------------------------------------------------------------------------------


def test_lowering_writes_the_plain_online_softmax():
    rng = np.random.default_rng(0)
    q, k, v = randn(rng, (2, 300, 32)), randn(rng, (2, 300, 32)), randn(rng, (2, 300, 32))
    [kernel] = lower(fused_graph(sdpa(causal=True), q, k, v)).kernels
    text = str(kernel)
    assert kernel.pattern == "attention" and kernel.schedule == [] and kernel.scratch == []
    assert "parallel" not in text and "vectorized" not in text and not intrinsics(kernel)
    assert "m_new" in text and "correction" in text and "constant[" in text
    plain = read_plain_attention(kernel)
    assert [loop.var.name for loop in plain.loops] == ["i0", "i1"] and plain.row.keys == 300


@pytest.mark.parametrize("shapes", [((2, 9, 8), (2, 9, 8), (2, 9, 8)), ((1, 4), (1, 4), (1, 4)),
                                    ((2, 3, 6, 4), (3, 7, 4), (1, 7, 5))])
@pytest.mark.parametrize("causal", [False, True])
def test_plain_nest_in_the_loop_interpreter(shapes, causal):
    rng = np.random.default_rng(1)
    q, k, v = (randn(rng, s) for s in shapes)
    fn = sdpa(causal=causal and shapes[0][-2] == shapes[1][-2])
    program = lower(fused_graph(fn, q, k, v))
    assert [kernel.pattern for kernel in program.kernels] == ["attention"]
    [out] = run_program(program, q, k, v)
    assert_close(out, fn(q, k, v))


# -- the strategy against the plain nest and NumPy ---------------------------------------------------


@pytest.mark.parametrize("b, sq, sk, d, dv", [(1, 1, 1, 1, 1), (2, 7, 5, 3, 17), (3, 13, 40, 9, 16),
                                              (1, 1, 300, 64, 64), (2, 50, 33, 16, 33)])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("causal", [False, True])
def test_tiles_match_the_plain_nest_and_numpy(always_tiled, b, sq, sk, d, dv, dtype, causal):
    rng = np.random.default_rng(2)
    q, k, v = randn(rng, (b, sq, d), dtype), randn(rng, (b, sk, d), dtype), randn(rng, (b, sk, dv), dtype)
    fn = sdpa(causal=causal)
    expected = fn(q, k, v)
    plain = lower(fused_graph(fn, q, k, v))
    assert_close(run_c(plain, q, k, v)[0], expected)
    for queries, keys in ((1, 1), (3, 2)):
        program = tiled(plain, **tile_multiples(dtype, queries, keys))
        kernel = attention_kernel(program)
        assert str(kernel.schedule[-1]).startswith("flash_attention(") and intrinsics(kernel)
        assert_close(run_c(program, q, k, v)[0], expected)


def test_default_tiles_are_chosen_from_the_target():
    rng = np.random.default_rng(3)
    q = randn(rng, (2, 100, 32))
    kernel = attention_kernel(lower(fused_graph(sdpa(), q, q, q)))
    avx2 = Target("cpu", "avx2", vector_bytes=32, vector_registers=16)
    avx512 = Target("cpu", "avx512", vector_bytes=64, vector_registers=32)
    assert [str(s) for s in flash_attention_steps(kernel, avx2)] == ["flash_attention(bq=12, bk=32, mr=6, nr=16, lanes=16)"]
    assert [str(s) for s in flash_attention_steps(kernel, avx512)] == ["flash_attention(bq=12, bk=128, mr=6, nr=64, lanes=32)"]
    avx512_loops_256 = replace(avx512, loop_vector_bytes=32)  # gcc's tuning for most Intel AVX-512 CPUs
    assert [str(s) for s in flash_attention_steps(kernel, avx512_loops_256)] == [
        "flash_attention(bq=12, bk=128, mr=6, nr=64, lanes=16)"]
    short = attention_kernel(lower(fused_graph(sdpa(), q[:, :4], q[:, :16], q[:, :16])))
    assert [str(s) for s in flash_attention_steps(short, avx2)] == ["flash_attention(bq=6, bk=16, mr=6, nr=16, lanes=16)"]


def test_the_score_tile_takes_at_most_a_quarter_of_l1():
    """``query_panels``: QUERY_PANELS panels of queries, fewer where the bq x bk score tile would
    outgrow a quarter of L1d (never on today's machines: 1.5 KiB with AVX2, 6 KiB with AVX-512)."""
    avx512 = Target("cpu", "avx512", vector_bytes=64, vector_registers=32, l1_bytes=48 << 10)
    assert query_panels(avx512, 6, 128, 4) == 2 == QUERY_PANELS      # 12 x 128 float32: 6 KiB <= 12 KiB
    assert query_panels(replace(avx512, l1_bytes=16 << 10), 6, 128, 4) == 1  # 6 KiB > 4 KiB: one panel
    assert query_panels(replace(avx512, l1_bytes=1 << 10), 6, 128, 8) == 1   # at least one
    rng = np.random.default_rng(3)
    q = randn(rng, (2, 100, 32))
    kernel = attention_kernel(lower(fused_graph(sdpa(), q, q, q)))
    small_l1 = replace(avx512, l1_bytes=16 << 10)
    assert [str(s) for s in flash_attention_steps(kernel, small_l1)] == [
        "flash_attention(bq=6, bk=128, mr=6, nr=64, lanes=32)"]


def test_a_record_names_its_micro_kernel_tile_and_replays_with_it():
    """``flash_attention(..., mr, nr, lanes)`` tiles with the micro-kernel and the lane count it
    names, not this machine's: the AVX-512 tile (6 x 64 float32) replayed here gives that kernel,
    and NumPy's result (64 columns are whole vectors at any x86 width, so it renders on any CPU)."""
    rng = np.random.default_rng(8)
    q, k, v = randn(rng, (2, 40, 24)), randn(rng, (2, 70, 24)), randn(rng, (2, 70, 24))
    plain = lower(fused_graph(sdpa(), q, k, v))
    for lanes in (8, 32):  # SSE's lane count, and AVX-512's with 512-bit loops
        steps = {attention_kernel(plain).name: [Strategy("flash_attention", bq=12, bk=64, mr=6, nr=64, lanes=lanes)]}
        program = place_scratch(schedule_program(plain, steps))
        assert set(intrinsics(attention_kernel(program))) == {"mc_gemm_6x64_f32"}  # QK^T and PV
        assert f"_lanes: f32[{lanes}]" in str(program)
        assert_close(run_c(program, q, k, v)[0], sdpa()(q, k, v))


def test_replaying_the_recorded_steps_on_a_fresh_lowering_gives_the_same_nest():
    rng = np.random.default_rng(4)
    q = randn(rng, (2, 300, 32))
    small = randn(rng, (64, 16, 8))  # too small to tile, enough work for threads
    for fn, args, first in [(sdpa(causal=True), (q, q, q), "flash_attention("),
                            (sdpa(causal=True), (small, small, small), "parallel(")]:
        graph = fused_graph(fn, *args)
        [scheduled] = loop_program(graph, stop_after="schedule").kernels
        assert str(scheduled.schedule[0]).startswith(first)
        [fresh] = lower(graph).kernels
        assert str(apply_schedule(fresh, scheduled.schedule)) == str(scheduled)
        assert_close(jit(fn)(*args), fn(*args))


# -- what the strategy refuses ------------------------------------------------------------------------


def test_refusals_leave_the_plain_nest():
    rng = np.random.default_rng(5)
    q = randn(rng, (2, 100, 32))
    kernel = attention_kernel(lower(fused_graph(sdpa(), q, q, q)))
    mr, nr = gemm.tile_shape(F32)
    for bq, bk in ((mr + 1, nr), (mr, nr + 1), (0, nr)):
        with pytest.raises(ScheduleError, match="multiple"):
            Strategy("flash_attention", bq=bq, bk=bk).apply(kernel)
    [elementwise] = lower(fused_graph(lambda x: x * 2, q)).kernels
    with pytest.raises(ScheduleError, match="online softmax"):
        Strategy("flash_attention", bq=mr, bk=nr).apply(elementwise)
    small = attention_kernel(lower(fused_graph(sdpa(), q[:, :8, :8], q[:, :8, :8], q[:, :8, :8])))
    with pytest.raises(ScheduleError, match="MIN_WORK"):
        Strategy("flash_attention", bq=mr, bk=nr).apply(small)
    with pytest.raises(ScheduleError, match="power of two"):
        Strategy("flash_attention", bq=mr, bk=nr, lanes=12).apply(kernel)


def test_scores_in_another_dtype_than_the_output_stay_plain():
    """float32 scores, float64 values: the micro-kernel would need one dtype for both matmuls."""
    rng = np.random.default_rng(6)
    q, k, v = randn(rng, (4, 64, 32)), randn(rng, (4, 64, 32)), randn(rng, (4, 64, 32), F64)
    fn = sdpa()
    kernel = attention_kernel(loop_program(fused_graph(fn, q, k, v)))
    assert [str(s) for s in kernel.schedule] == ["parallel(i0)"]
    with pytest.raises(ScheduleError, match="micro-kernel"):
        Strategy("flash_attention", **tile_multiples(F64, 1, 1)).apply(attention_kernel(lower(fused_graph(fn, q, k, v))))
    assert_close(jit(fn)(q, k, v), fn(q, k, v), rtol=1e-5)  # float32 scores, summed in another order


def test_symbolic_length_runs_in_tiles_with_guarded_tails():
    """Over a symbolic length T the tiles are ceil(T / bq) query blocks and ceil(T / bk) key
    blocks; the rows and keys past T are guarded, in the loop interpreter and in C."""
    heads, dim = 4, 8

    @minicomp.jit(dynamic={"x": [0]})
    def f(x):
        q = x.reshape(x.shape[0], heads, dim).transpose(1, 0, 2)
        s = q @ q.transpose(0, 2, 1)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ q

    rng = np.random.default_rng(7)
    for n in (1, 7, 13, 300):
        x = randn(rng, (n, heads * dim))
        assert_close(f(x), f.fn(x))
    program = f.inspect(x).program
    assert [s.name for s in attention_kernel(program).schedule] == ["flash_attention"]
    assert "/32)" in f.inspect(x).source or "/16)" in f.inspect(x).source  # ceil(T / bk) in C
    plain = lower(program.graph)
    for bq, bk in ((1, 1), (2, 1)):
        tiles = tiled(plain, **tile_multiples(F32, bq, bk))
        for n in (1, 5, 2 * gemm.tile_shape(F32)[1] + 3):
            x = randn(rng, (n, heads * dim))
            [out] = run_program(tiles, x)
            assert_close(out, f.fn(x))


def test_causal_attention_over_a_symbolic_length_matches_numpy():
    """picoGPT's mask, ``np.tri`` of the length, is computed in the program over a symbolic
    length: every tile loads it (nothing is skipped), and the answer is NumPy's."""
    def attention(q, k, v):
        mask = (1 - np.tri(q.shape[0], dtype=q.dtype)) * np.float32(-1e10)
        s = q @ k.T * np.float32(1 / np.sqrt(q.shape[-1])) + mask
        e = np.exp(s - np.max(s, axis=-1, keepdims=True))
        return (e / np.sum(e, axis=-1, keepdims=True)) @ v

    f = jit(attention, dynamic={"q": [0], "k": [0], "v": [0]})
    rng = np.random.default_rng(9)
    for n in (1, 2, 12, 13, 33, 100):
        q, k, v = (randn(rng, (n, 64)) for _ in range(3))
        assert_close(f(q, k, v), attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert f.cache_size == 1
    assert [s.name for s in attention_kernel(f.inspect(q, k, v).program).schedule] == ["flash_attention"]


# -- masks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_causal_and_padding_masks_skip_hidden_tiles(dtype):
    rng = np.random.default_rng(8)
    sq, sk = 130, 200
    q, k, v = randn(rng, (2, sq, 16), dtype), randn(rng, (2, sk, 16), dtype), randn(rng, (2, sk, 24), dtype)
    padding = np.arange(sk) < 100  # the keys past 100 are padding
    for fn in (sdpa(causal=True), sdpa(mask=padding), sdpa(causal=True, mask=padding)):
        kernel = attention_kernel(loop_program(fused_graph(fn, q, k, v)))
        assert "if kb < " in str(kernel)  # hidden key blocks are skipped
        assert_close(jit(fn)(q, k, v), fn(q, k, v))


def test_a_mask_that_differs_by_batch_skips_no_tile():
    rng = np.random.default_rng(9)
    q = randn(rng, (2, 200, 16))
    per_batch = np.ones((2, 1, 200), bool)
    per_batch[0, :, 100:] = False  # batch 0 sees half the keys, batch 1 all of them
    fn = sdpa(mask=per_batch)
    kernel = attention_kernel(loop_program(fused_graph(fn, q, q, q)))
    assert str(kernel.schedule[0]).startswith("flash_attention(") and "if kb <" not in str(kernel)
    assert_close(jit(fn)(q, q, q), fn(q, q, q))
    both = sdpa(causal=True, mask=per_batch)  # the causal mask is shared: its hidden tiles are skipped
    assert "if kb < " in str(attention_kernel(loop_program(fused_graph(both, q, q, q))))
    assert_close(jit(both)(q, q, q), both(q, q, q))


def test_rows_that_see_no_key_are_nan_as_in_numpy():
    rng = np.random.default_rng(10)
    sq = sk = 100
    q = randn(rng, (2, sq, 16))
    mask = np.ones((sq, sk), bool)
    mask[:30] = False  # the first query blocks see nothing: their key loop is skipped entirely
    mask[50] = False
    fn = sdpa(mask=mask)
    kernel = attention_kernel(loop_program(fused_graph(fn, q, q, q)))
    assert "if kb < " in str(kernel)
    with np.errstate(invalid="ignore"):
        expected = fn(q, q, q)
    assert np.isnan(expected[:, :30]).all() and np.isnan(expected[:, 50]).all()
    assert_close(jit(fn)(q, q, q), expected)


def with_score(kernel, score_of):
    """``kernel`` (a plain attention nest) with the score expression ``score_of(dot, i, j)``."""
    plain = read_plain_attention(kernel)
    row = replace(plain.row, score=score_of(plain.row.dot, plain.query, plain.row.j))
    body = online_softmax(row)
    for loop in reversed(plain.loops):
        body = replace(loop, body=body)
    return replace(kernel, body=body)


def test_a_mask_computed_from_the_indices_is_found_and_one_that_is_no_longer_minus_inf_is_not():
    """``select(j > i, -inf, s)`` reads no array at all: still a mask. Under ``exp`` the hidden
    scores are 0, not -inf: those tiles must run (a skipped tile would leave its zeros out)."""
    rng = np.random.default_rng(11)
    sq = 100
    q, k, v = randn(rng, (2, sq, 16)), randn(rng, (2, sq, 16)), randn(rng, (2, sq, 16))
    program = lower(fused_graph(sdpa(), q, k, v))
    future = np.triu(np.ones((sq, sq), bool), k=1)
    scores = q @ k.swapaxes(-1, -2) * F32(0.25)
    for wrap, reference, skips in [(lambda s: s, np.where(future, -np.inf, scores), True),
                                   (lambda s: Call("exp", (s,), s.dtype), np.exp(np.where(future, -np.inf, scores)),
                                    False)]:
        def score_of(dot, i, j):
            later = Binary(">", j, i, BOOL)
            return wrap(Select(later, const(-np.inf, F32), Binary("*", dot, const(0.25, F32), dot.dtype)))
        kernel = with_score(attention_kernel(program), score_of)
        plain = replace(program, kernels=[kernel])
        e = np.exp(reference - reference.max(axis=-1, keepdims=True))
        expected = (e / e.sum(axis=-1, keepdims=True)) @ v
        [interpreted] = run_program(plain, q, k, v)
        assert_close(interpreted, expected)
        program_tiled = tiled(plain, **tile_multiples(F32, 2, 2))
        assert ("if kb < " in str(program_tiled)) == skips
        assert_close(run_c(program_tiled, q, k, v)[0], expected)


def test_mask_grid_evaluates_conditions_over_the_batch(monkeypatch):
    rng = np.random.default_rng(12)
    q = randn(rng, (3, 20, 4))
    program = lower(fused_graph(sdpa(), q, q, q))
    plain = read_plain_attention(attention_kernel(program))
    i, j, batch = plain.query, plain.row.j, plain.batch[0].var
    causal = Binary(">", j, i, BOOL)
    assert (mask_grid(causal, plain, {}, 20) == np.triu(np.ones((20, 20), bool), k=1)).all()
    monkeypatch.setattr(flash_attention, "MASK_GRID", 50)  # two query rows at a time: the same grid
    assert (mask_grid(causal, plain, {}, 20) == np.triu(np.ones((20, 20), bool), k=1)).all()
    assert mask_grid(Binary("<", batch, Const(1), BOOL), plain, {}, 20) is None  # differs by batch
    shared = Binary("&&", Binary("<", batch, Const(5), BOOL), causal, BOOL)  # the same for every batch
    assert (mask_grid(shared, plain, {}, 20) == mask_grid(causal, plain, {}, 20)).all()
    assert mask_grid(Binary(">", plain.row.dot, const(0, F32), BOOL), plain, {}, 20) is None  # reads a score
    assert mask_grid(Binary(">", Var("other"), Const(0), BOOL), plain, {}, 20) is None
