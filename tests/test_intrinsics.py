"""The intrinsic registry (``minicomp.ir.intrinsics``) and the loop interpreter on every kernel.

* **the registry**: every intrinsic the C renderer can emit has a reference meaning, and that
  meaning computes what the C routine computes (both run on one hand-built kernel); a name
  without a definition or without C is refused with a ``CompileError``, never emitted;
* **the loop interpreter runs every kernel**: packed matmuls (plain packing, A packed per
  task, B packed per task, several k blocks, edge tiles, an epilogue, float64, batches),
  convolutions in NHWC and tiled attention (causal too) execute their micro-kernel calls
  through the reference meaning and agree with NumPy; random graphs over every op and dtype
  run at every loop stage (plain nests, scheduled, simplified).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given

import minicomp
from minicomp import TensorType, nn
from minicomp.codegen import gemm
from minicomp.codegen.c import render_c
from minicomp.errors import CompileError
from minicomp.ir import intrinsics
from minicomp.ir.loops import INDEX, Address, Block, Const, For, Intrinsic, Kernel, Load, Store, Var
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.executable import Executable
from minicomp.target import KiB, Target
from minicomp.stages import LOOP_STAGES, loop_program
from minicomp.testing import assert_close
from minicomp.testing.graphs import assert_outputs_close, random_graphs
from minicomp.testing.loop_interpreter import run_program

F32, F64 = np.float32, np.float64


def randn(rng, shape, dtype=F32):
    return rng.standard_normal(shape).astype(dtype)


def shell(*types: TensorType, out: TensorType):
    """A lowered program whose inputs and output have these types; its kernels are replaced."""
    def fn(*args):
        return np.zeros(out.shape, out.dtype) + args[0].reshape(-1)[0] * 0
    return lower(minicomp.trace(fn, *types))


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


def gemm_kernel(dtype, kc: int, lda: int, ldc: int, accumulate: int):
    """A program of one kernel: ``out = c0``, then the micro-kernel on rows 1.. of ``a`` and ``out``."""
    mr, nr = gemm.tile_shape(dtype)
    types = [TensorType((mr + 1, lda), dtype), TensorType((kc * nr,), dtype), TensorType((mr + 1, ldc), dtype)]
    program = shell(*types, out=types[2])
    a, b, c0 = program.inputs
    [out] = program.outputs
    i = Var("i")
    copy = For(i, out.size, Store(out, i, Load(c0, i)))
    call = Intrinsic(gemm.kernel_name(dtype), (Const(kc, INDEX), Address(a, Const(lda)), Const(lda, INDEX),
                                               Address(b, Const(0)), Address(out, Const(ldc + 1)),
                                               Const(ldc, INDEX), Const(accumulate, INDEX)))
    kernel = Kernel("gemm", [a, b, c0], out, Block([copy, call]))
    return replace(program, kernels=[kernel]), types


def check_gemm_in_c_and_interpreter(rng):
    for dtype in (F32, F64):
        for kc, accumulate in [(7, 1), (1, 0), (0, 1)]:
            mr, nr = gemm.tile_shape(dtype)
            program, types = gemm_kernel(dtype, kc, lda=kc + 3, ldc=nr + 5, accumulate=accumulate)
            a, b, c0 = (randn(rng, t.shape, dtype) for t in types)
            [in_c] = Executable(program, render_c(program))(a, b, c0)
            [interpreted] = run_program(program, a, b, c0)
            expected = c0.copy()
            tile = a[1:, :kc] @ b.reshape(kc, nr)
            expected[1:, 1:nr + 1] = (expected[1:, 1:nr + 1] if accumulate else 0) + tile
            assert_close(interpreted, expected)
            assert_close(in_c, interpreted)


# intrinsic family -> a test that its C and its reference meaning compute the same
C_AGREES_WITH_MEANING = {"mc_gemm": check_gemm_in_c_and_interpreter}


def test_every_intrinsic_the_c_renderer_can_emit_has_a_checked_reference_meaning(rng):
    emitted = [d for d in intrinsics.definitions() if "c" in d.implementations]
    assert "mc_gemm" in [d.family for d in emitted]  # the micro-kernel, registered by codegen/gemm.py
    for definition in emitted:
        assert callable(definition.meaning) and definition.params and definition.summary
        assert definition.family in C_AGREES_WITH_MEANING, (
            f"intrinsic {definition.family} has C but no test that its meaning agrees with it")
        C_AGREES_WITH_MEANING[definition.family](rng)


def test_names_resolve_to_their_definition_and_fields():
    bound = intrinsics.lookup("mc_gemm_6x16_f32")
    assert bound.definition.family == "mc_gemm" and bound.fields == {"mr": 6, "nr": 16, "dtype": "f32"}
    assert bound.definition.params == ("kc", "a", "lda", "b", "c", "ldc", "accumulate")
    for name in ("mc_gemm_6x16_f16", "mc_gemm_6x16_f32x", "mc_gemm", "mc_frobnicate"):
        with pytest.raises(LookupError, match="no intrinsic is registered"):
            intrinsics.lookup(name)


def test_a_definition_needs_a_meaning_and_an_implementation_needs_a_definition():
    with pytest.raises(TypeError, match="reference meaning"):
        intrinsics.define("mc_nothing", "mc_nothing_{n}", {"n": r"\d+"}, ("x",), None, "nothing")
    with pytest.raises(LookupError, match="before implementing"):
        intrinsics.implement("mc_undefined", "c", lambda name: "")
    with pytest.raises(ValueError, match="already defined"):
        intrinsics.define("mc_gemm", "mc_gemm_{x}", {"x": "y"}, ("x",), lambda *a: None, "again")
    assert "mc_nothing" not in [d.family for d in intrinsics.definitions()]


def test_the_renderer_refuses_an_intrinsic_without_a_definition_or_without_c(monkeypatch):
    program, _ = gemm_kernel(F32, 3, 3, gemm.tile_shape(F32)[1], 0)
    [kernel] = program.kernels
    unknown = replace(program, kernels=[replace(kernel, body=Intrinsic("mc_frobnicate_4", (Const(1, INDEX),)))])
    with pytest.raises(CompileError, match="mc_frobnicate_4.*no intrinsic is registered"):
        render_c(unknown)
    scale = intrinsics.Definition("mc_scale", "mc_scale_{n}", {"n": r"\d+"}, ("x",), lambda fields, x: None,
                                  "x[0:n] *= 2")
    monkeypatch.setitem(intrinsics._REGISTRY, "mc_scale", scale)
    call = Intrinsic("mc_scale_4", (Address(kernel.output, Const(0)),))
    no_c = replace(program, kernels=[replace(kernel, body=call)])
    with pytest.raises(CompileError, match="mc_scale_4 has no c implementation"):
        render_c(no_c)


def test_the_micro_kernel_meaning_refuses_a_block_outside_its_buffer():
    mr, nr = gemm.tile_shape(F32)
    a, b, c = np.ones(mr * 4, F32), np.ones(4 * nr, F32), np.zeros(mr * nr, F32)
    P = intrinsics.Pointer
    intrinsics.run(gemm.kernel_name(F32), [4, P(a, 0), 4, P(b, 0), P(c, 0), nr, 0])
    assert (c == 4).all()
    with pytest.raises(IndexError, match="outside a buffer"):
        intrinsics.run(gemm.kernel_name(F32), [4, P(a, 1), 4, P(b, 0), P(c, 0), nr, 0])
    with pytest.raises(TypeError, match="takes 7 arguments"):
        intrinsics.run(gemm.kernel_name(F32), [4, P(a, 0)])
    with pytest.raises(TypeError, match="float64 buffer"):
        intrinsics.run(gemm.kernel_name(F32), [4, P(a.astype(F64), 0), 4, P(b, 0), P(c, 0), nr, 0])


# ----------------------------------------------------------------------------------------------
# The loop interpreter runs matmul, conv and attention kernels (through the meaning)
# ----------------------------------------------------------------------------------------------


# The machine the packed matmuls below are scheduled for, whatever this one is: its cache rules
# give kc = 384 float32 and B's panels as the tasks from 8 panels (packed_gemm.cache_blocks).
AVX2_2_CORES = Target(isa="avx2", vector_bytes=32, vector_registers=16, cores=2, l1_bytes=32 * KiB, l2_bytes=512 * KiB)


def scheduled(fn, *args, target=AVX2_2_CORES):
    """The loop program of ``fn`` after the graph passes and every loop stage, for ``target``."""
    return loop_program(run_pipeline(minicomp.trace(fn, *args))[0], target)


def steps(program) -> str:
    return "\n".join(str(step) for kernel in program.kernels for step in kernel.schedule)


def interpret_and_check(fn, *args):
    program = scheduled(fn, *args)
    [out] = run_program(program, *args)
    assert_close(out, fn(*args))
    return program


NR = gemm.tile_shape(F32, AVX2_2_CORES)[1]


@pytest.mark.parametrize("m, k, n, variant", [
    (13, 70, 2 * NR + 5, "b_per_task=False"),    # A and B packed whole; edge tiles in M and N
    (7, 400, NR + 3, "b_per_task=False"),        # two k blocks (kc = 384): tiles accumulate
    (7, 40, 8 * NR - 3, "b_per_task=True"),      # many panels of B: tasks are B panels, each packing its own
])
def test_packed_matmul_runs_in_the_loop_interpreter(rng, m, k, n, variant):
    a, b = randn(rng, (m, k)), randn(rng, (k, n))
    program = interpret_and_check(lambda a, b: a @ b, a, b)
    assert "packed_gemm(" in steps(program) and variant in steps(program)
    assert "mc_gemm_" in str(program.kernels[0])


def test_packed_matmul_with_per_task_a_blocks_runs_in_the_loop_interpreter(rng):
    a, b = randn(rng, (20, 50)), randn(rng, (50, 2 * NR + 3))
    tiny_l2 = replace(AVX2_2_CORES, l2_bytes=KiB)  # A is "big": each task packs its rows
    program = scheduled(lambda a, b: a @ b, a, b, target=tiny_l2)
    assert_close(run_program(program, a, b)[0], a @ b)
    assert "a_block" in str(program.kernels[0]) and "a_per_task=True" in steps(program)


def test_packed_matmul_with_an_epilogue_float64_and_a_batch_runs_in_the_loop_interpreter(rng):
    x, w, bias = randn(rng, (2, 9, 50), F64), randn(rng, (50, 45), F64), randn(rng, (45,), F64)
    program = interpret_and_check(lambda x, w, b: np.maximum(x @ w + b, 0), x, w, bias)
    assert "packed_gemm(" in steps(program) and "mc_gemm_6x" in str(program.kernels[0])
    assert "_f64" in str(program.kernels[0])


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1)])
def test_nhwc_conv_runs_in_the_loop_interpreter(rng, stride, padding):
    x, w = randn(rng, (2, 9, 8, 8)), randn(rng, (3, 3, 8, 21))
    program = interpret_and_check(
        lambda x, w: np.maximum(nn.conv2d(x, w, stride=stride, padding=padding, layout="NHWC"), 0), x, w)
    assert "packed_gemm(" in steps(program)


def test_tiled_attention_runs_in_the_loop_interpreter(rng):
    keys = 4 * NR + 5  # two key blocks and a partial one; two query blocks and a partial one
    q, k, v = randn(rng, (2, 13, 16)), randn(rng, (2, keys, 16)), randn(rng, (2, keys, 40))
    program = interpret_and_check(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v), q, k, v)
    assert "flash_attention(" in steps(program)


def test_causal_tiled_attention_runs_in_the_loop_interpreter(rng):
    s = 4 * NR + 5  # two key blocks and a partial one: blocks above the diagonal are skipped
    q, k, v = randn(rng, (1, s, 8)), randn(rng, (1, s, 8)), randn(rng, (1, s, 8))
    program = interpret_and_check(lambda q, k, v: nn.scaled_dot_product_attention(q, k, v, causal=True), q, k, v)
    assert "flash_attention(" in steps(program) and "if kb < select((qb ==" in str(program.kernels[0])


# ----------------------------------------------------------------------------------------------
# Every kernel of every loop stage, on random graphs over every op and dtype
# ----------------------------------------------------------------------------------------------


def interpret(program, graph, inputs) -> list[np.ndarray]:
    """The interpreter's value of each output of ``graph`` (a value returned twice, twice)."""
    by_node = dict(zip(program.output_nodes, run_program(program, *inputs)))
    return [by_node[node] for node in graph.outputs]


@given(gen=random_graphs(max_size=400))
def test_every_loop_stage_of_random_graphs_runs_in_the_loop_interpreter(gen):
    graph = run_pipeline(gen.graph)[0]
    for stage in LOOP_STAGES:
        program = loop_program(graph, stop_after=stage)
        assert_outputs_close(interpret(program, graph, gen.inputs), gen.expected(), gen.graph)
