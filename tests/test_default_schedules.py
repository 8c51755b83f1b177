"""Default schedules (``schedules/cpu/``): each kernel kind shaped by legality-checked steps and strategies."""

import numpy as np
import pytest

import minicomp
from minicomp.driver import jit
from minicomp.frontend.tracer import trace_with_structure
from minicomp.ir.dtypes import TensorType
from minicomp.ir.symbolic import Sym
from minicomp.workloads import layernorm
from minicomp.passes.pipeline import run_pipeline
from minicomp.schedules.cpu.lanes import lane_count
from minicomp.schedules.cpu.reductions import column_block
from minicomp.stages import loop_program
from minicomp.target import host_target
from minicomp.testing import assert_close


def program_of(fn, *args, schedules=True):
    return loop_program(run_pipeline(minicomp.trace(fn, *args))[0], disable=() if schedules else ("schedule",))


def steps(kernel) -> list[str]:
    return [str(step) for step in kernel.schedule]


def test_elementwise_is_parallel_and_vectorized():
    x = np.ones((256, 512), np.float32)
    [kernel] = program_of(lambda x: np.tanh(x) * 2 + 1, x).kernels
    assert steps(kernel) == ["vectorize(i1)", "parallel(i0)"]
    text = str(kernel)
    assert "# schedule: vectorize(i1)" in text and "parallel for i0" in text and "vectorized for i1" in text
    [plain] = program_of(lambda x: np.tanh(x) * 2 + 1, x, schedules=False).kernels
    assert plain.schedule == [] and "parallel" not in str(plain) and "vectorized" not in str(plain)


def test_small_elementwise_stays_on_one_thread():
    [kernel] = program_of(lambda x: x * 2, np.ones((4, 9), np.float32)).kernels
    assert steps(kernel) == ["vectorize(i1)"]


def test_threads_pay_sooner_for_costly_elements():
    """The parallel threshold counts work, not elements: 16384 gelu elements (each ~8 additions'
    worth, ``element_cost``) run on all cores, 16384 additions stay on one."""
    from minicomp.schedules.cpu.elementwise import element_cost, perfect_nest
    from minicomp.workloads import gelu

    x = np.ones((64, 256), np.float32)
    [add] = program_of(lambda x: x + 1, x).kernels
    [costly] = program_of(gelu, x).kernels
    assert element_cost(perfect_nest(add)[1].value) == 1
    assert element_cost(perfect_nest(costly)[1].value) >= 4
    assert "parallel(i0)" not in steps(add) and "parallel(i0)" in steps(costly)


@pytest.mark.parametrize("shape, perm", [((64, 56, 56), (1, 2, 0)), ((1, 33, 47, 20), (0, 3, 1, 2)),
                                         ((17, 300), (1, 0)), ((40, 3, 50), (2, 1, 0))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_transposing_kernels_are_tiled_and_correct(shape, perm, dtype):
    x = (np.random.default_rng(0).standard_normal(shape) * 10).astype(dtype)

    def fn(x):
        return np.maximum(x.transpose(perm), 0) * 3

    [kernel] = program_of(fn, x).kernels
    assert any(step.startswith("tile(") for step in steps(kernel)), steps(kernel)
    assert_close(jit(fn)(x), fn(x))


def test_gemm_and_attention_kernels_record_their_tiling():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((64, 80), np.float32), rng.standard_normal((80, 96), np.float32)
    [kernel] = program_of(lambda a, b: a @ b, a, b).kernels
    assert steps(kernel)[0].startswith("packed_gemm(mr=") and "# schedule: packed_gemm(" in str(kernel)
    q = rng.standard_normal((2, 64, 32), np.float32)
    [kernel] = program_of(lambda q, k, v: minicomp.nn.scaled_dot_product_attention(q, k, v), q, q, q).kernels
    assert steps(kernel)[0].startswith("flash_attention(")


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


F32 = np.float32
T = Sym.symbol("T")
# the numbers the rules read from this machine (16 lanes and column blocks of 256 with AVX2)
LANES = f"lanes(lanes={lane_count(host_target())})"
BLOCKS = f"accumulate_in_output(column_block={column_block(host_target())})"


@pytest.mark.parametrize("fn, types, expected", [
    (softmax, [((256, 512), F32)], ["parallel(i0)", "keep_operand()", LANES]),
    (softmax, [((4, 7), F32)], ["keep_operand()"]),                       # short rows: no lanes (8 at least)
    (layernorm, [((256, 512), F32), ((512,), F32), ((512,), F32)],
     ["parallel(i0)", LANES]),                                             # nothing worth keeping
    (softmax, [((40, T), F32)], ["parallel_rows()"]),                       # a row of symbolic length
    (lambda x: x.sum(axis=-1), [((512, 1000), F32)], ["parallel(i0)", LANES]),
    (lambda x: x.sum(axis=-1), [((512, 1000), np.int32)], ["parallel(i0)"]),   # exact: gcc's to vectorise
    (lambda x: x.sum(axis=0), [((160, 2100), F32)], [BLOCKS]),           # 2100: two blocks even of 512
    (lambda x: x.max(axis=0), [((7, 33), F32)], ["accumulate_in_output()"]),
    (lambda x: x.sum(axis=1), [((64, 512, 256), F32)], ["parallel(i0)", "accumulate_in_output()"]),
    (lambda x: x.sum(axis=0), [((40, 33), np.float16)], [LANES]),       # sums in float32, not in its output
    (lambda a, b: a @ b, [((9, 20), np.int32), ((20, 7), np.int32)], ["accumulate_in_output()"]),
    (lambda a, b: a @ b, [((1, 512), F32), ((512, 512), F32)], ["accumulate_in_output()"]),  # one row
    (lambda a, b: a @ b, [((300, 200), np.int64), ((200, 40), np.int64)], ["parallel(i0)", "accumulate_in_output()"]),
    (lambda x: np.cumsum(x, axis=1), [((512, 300), F32)], ["parallel(i0)"]),
    (lambda x: np.cumsum(x, axis=0), [((T, 8), F32)], []),                   # scan length known at the call
])
def test_reduction_kernels_default_steps(fn, types, expected):
    """The rules of schedules/cpu/reductions.py: which strategies each kernel gets, in order."""
    graph, _ = trace_with_structure(fn, tuple(TensorType(shape, dtype) for shape, dtype in types))
    [kernel] = loop_program(run_pipeline(graph)[0]).kernels
    assert steps(kernel) == expected


def test_a_big_float_matmul_is_packed_for_the_target():
    from minicomp.codegen import gemm
    from minicomp.schedules.cpu import packed_gemm
    from minicomp.target import host_target

    a, b = np.ones((256, 768), F32), np.ones((768, 2304), F32)
    [kernel] = program_of(lambda a, b: a @ b, a, b).kernels
    [step] = kernel.schedule
    assert step.name == "packed_gemm" and (step["mr"], step["nr"]) == gemm.tile_shape(F32, host_target())
    many_panels = 2304 // step["nr"] >= packed_gemm.b_task_panels(host_target())  # 144 panels on AVX2
    assert step["b_per_task"] == (many_panels and not step["a_per_task"]) and step["nc"] % step["nr"] == 0
    assert step["parallel"]
