"""Memory-bound GPU kernels move each byte once, checked without a GPU: in the loop IR, the
CUDA text and nvcc's PTX.

A memory-bound kernel can only reach the copy bandwidth if it reads and writes no more bytes
than a copy of its data does, in wide enough accesses. Two schedules see to that:

* **a row kept in registers** (``gpu_row_reduce(keep_row=True)``): softmax and layer norm read
  each row once into a per-thread array (registers after ``fuse_threads``), run every pass and
  the epilogue from there, and write the output once: 4 bytes read and 4 written per float32
  element, as a copy. Rows too long for a thread's registers, or of a symbolic length, keep
  the pass-by-pass schedule. Checked: rows of 1 to 8192 and symbolic through the thread-serial
  form in C and the SIMT form in the interpreter; the CUDA of softmax at its GPU size loads ``x``
  at one place, in the unrolled loop that fills the registers, with no local memory.
* **lanes** (``gpu_threads(lanes=4)``): each thread of an elementwise kernel takes 4
  consecutive elements, a ``vectorized`` loop that the CUDA renderer writes as one ``float4``
  load per input and one store (``ld.global.nc.v4.f32``/``st.global.wb.v4.f32`` in the PTX), with
  a scalar tail where the element count is no multiple of 4. Kernels read buffers at 16-byte
  aligned addresses only: ``Launch.aligned`` names them and the runtime copies a misaligned
  device argument first (``runtime/cuda.misaligned``).
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import TensorType
from minicomp.codegen.cuda import lane_base, multiple_of, render_cuda, vector_plan
from minicomp.ir.loop_text import print_expr
from minicomp.ir.loops import INDEX, Binary, Block, Buffer, Const, For, If, Load, Select, Size, Store, Var, const
from minicomp.ir.rewrite import map_expr, map_stmt_exprs, unconditional_loads
from minicomp.ir.schedule import ScheduleError, loops
from minicomp.ir.symbolic import Sym
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime import cuda as cuda_runtime
from minicomp.runtime.nvcc import build_many, compile_ptx
from minicomp.schedules import Strategy, schedule
from minicomp.schedules.gpu.fuse_threads import fuse_threads
from minicomp.stages import loop_program, run_stages, simplify_indices
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.testing.backends import BACKENDS, has_nvcc, load_c
from minicomp.testing.loop_interpreter import run_program
from minicomp.workloads import WORKLOADS

from test_gpu_schedules import layernorm, lowered, rand, scheduled, softmax

CUDA = cuda_target("sm_90")
T = Sym.symbol("T")
F32 = np.dtype(np.float32)


def logsumexp(x):
    m = x.max(axis=-1, keepdims=True)
    return (np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m)[..., 0]


ROWS = {"softmax": softmax, "layernorm": layernorm, "logsumexp": logsumexp}



needs_nvcc = pytest.mark.skipif(not has_nvcc(), reason="nvcc (the CUDA toolkit) is not installed")


def row_steps(program):
    return [str(step) for kernel in program.kernels for step in kernel.schedule]


# ----------------------------------------------------------------------------------------------
# Rows kept in registers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cols", [1, 31, 32, 33, 1000, 4096, 4097, 8192])
@pytest.mark.parametrize("kernel", sorted(ROWS))
def test_rows_through_the_default_gpu_schedules_in_c(kernel, cols, rng):
    """Each row length through the default schedules' thread-serial form in C, over a
    symbolic number of rows (0, 1 and 3 rows through the same code)."""
    fn = ROWS[kernel]
    program = schedule(lowered(fn, TensorType((T, cols), "f32")), CUDA)
    kept = any("keep_row=True" in step for step in row_steps(program))
    assert kept == (kernel != "logsumexp" and cols >= 32), row_steps(program)  # (logsumexp: 2 kernels of 1 pass)
    run = load_c(simplify_indices(program))
    for rows in (0, 1, 3):
        x = rand(rng, rows, cols) * 3
        assert_close(run(x)[0], fn(x)), (rows, cols)


@pytest.mark.parametrize("kernel", sorted(ROWS))
def test_rows_of_a_symbolic_length_keep_the_pass_by_pass_schedule(kernel, rng):
    program = schedule(lowered(ROWS[kernel], TensorType((3, T), "f32")), CUDA)
    assert not any("keep_row" in step for step in row_steps(program))
    run = load_c(simplify_indices(program))
    for cols in (1, 33, 1000):
        x = rand(rng, 3, cols)
        assert_close(run(x)[0], ROWS[kernel](x))


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 31), (5, 33), (2, 100), (1, 1000)])
@pytest.mark.parametrize("kernel", sorted(ROWS))
def test_rows_through_the_gpu_backends(kernel, rows, cols, rng):
    """The default GPU schedules end to end (``gpu-serial-c``, and ``gpu-simt-interp``: the
    SIMT form in lockstep, threads shuffled, shared memory NaN at each block's start)."""
    fn, x = ROWS[kernel], rand(rng, rows, cols)
    program = loop_program(run_pipeline(minicomp.trace(fn, TensorType(x.shape, "f32")))[0])
    for backend in ("gpu-serial-c", "gpu-simt-interp"):
        assert_close(BACKENDS[backend].run(program, x)[0], fn(x)), backend


KEPT_SCHEDULES = {  # name -> (threads, rows_per_block, max_blocks)
    "warp per row": (32, 1, 2**31 - 1),
    "4 warps of a row each": (32, 4, 2**31 - 1),
    "block of 64": (64, 1, 2**31 - 1),
    "rounds of 2 blocks": (64, 1, 2),
    "rounds of warps": (32, 2, 2),
}
KEPT_SHAPES = {1: [(1, 7), (3, 64), (5, 65), (7, 100)],  # lanes -> (rows, cols): cols a multiple of lanes
               4: [(1, 4), (3, 64), (5, 68), (7, 100), (2, 260)]}


@pytest.mark.parametrize("lanes", sorted(KEPT_SHAPES))
@pytest.mark.parametrize("name", sorted(KEPT_SCHEDULES))
@pytest.mark.parametrize("kernel", ["softmax", "layernorm"])
def test_kept_rows_in_both_forms(kernel, name, lanes, rng):
    """``keep_row`` (one element or groups of 4 at a time) under every shape of the schedule
    (a warp or a block per row, several rows a block, more rows than blocks), rows shorter
    than, equal to and past a whole number of rounds of threads: thread-serial C and the SIMT
    form in two thread orders."""
    threads, rows_per_block, max_blocks = KEPT_SCHEDULES[name]
    fn = ROWS[kernel]
    for rows, cols in KEPT_SHAPES[lanes]:
        x = rand(rng, rows, cols)
        program = scheduled(lowered(fn, x), Strategy("gpu_row_reduce", threads=threads, rows_per_block=rows_per_block,
                                                     max_blocks=max_blocks, keep_row=True, lanes=lanes))
        assert_close(load_c(simplify_indices(program))(x)[0], fn(x)), (rows, cols)
        for order in ("reversed", 3):
            assert_close(run_program(fuse_threads(program), x, order=order)[0], fn(x)), (rows, cols, order)


def test_a_kept_row_is_loaded_once_into_a_local_array_every_pass_reads():
    program = scheduled(lowered(softmax, TensorType((4, 1000), "f32")),
                        Strategy("gpu_row_reduce", threads=256, keep_row=True))
    text = str(program.kernels[0])
    assert "local x_row: f32[1024]" in text  # 256 threads x 4 values
    assert text.count("x[") == 1 and "x_row[(t * 4) + c] = x[((b * 1000) + (c * 256)) + t]" in text
    assert text.count("x_row[(t * 4) + c]") == 4  # filled once, read by max, sum and the epilogue
    assert text.count("unrolled for c in 0..4:") == 4
    simt = str(fuse_threads(program).kernels[0])
    assert "local x_row: f32[4]" in simt and "x_row[c]" in simt


def test_keep_row_refuses_what_it_cannot_keep():
    def refused(fn, shape, why, **params):
        with pytest.raises(ScheduleError, match=why):
            scheduled(lowered(fn, TensorType(shape, "f32")), Strategy("gpu_row_reduce", keep_row=True, **params))

    refused(softmax, (3, T), "the row's length is symbolic")
    refused(lambda x: x.sum(axis=-1), (3, 100), "no element of the row is loaded by two passes")
    refused(softmax, (3, 9000), r"each thread would keep 36 values \(1 of 36\), more than the 32", threads=256)
    refused(softmax, (3, 20000), r"keep 20 values \(1 of 20\), more than the 16 registers a thread of 1024", threads=1024)
    refused(softmax, (3, 102), "lanes=4: the row's 102 elements are no whole number of groups", lanes=4)
    with pytest.raises(ScheduleError, match="keep_row must be True or False"):
        scheduled(lowered(softmax, TensorType((3, 100), "f32")), Strategy("gpu_row_reduce", keep_row=1))
    with pytest.raises(ScheduleError, match="lanes must be 1, or 2 or 4 with keep_row=True, not 4"):
        scheduled(lowered(softmax, TensorType((3, 100), "f32")), Strategy("gpu_row_reduce", lanes=4))


def test_an_element_only_read_under_a_condition_is_not_kept(rng):
    """Softmax with every load of x under a select (as a padded or shifted read would be): the
    fill loop would read elements no pass reads for sure, so nothing is kept."""
    program = lowered(softmax, TensorType((3, 40), "f32"))
    [kernel] = program.kernels
    [x] = kernel.inputs
    yes = Binary("<", Const(0), Const(1), np.dtype(bool))

    def guarded(e):
        return map_expr(e, lambda sub: Select(yes, Load(x, sub.index), const(0, F32))
                        if isinstance(sub, Load) and sub.buffer is x else None)
    guarded_kernel = replace(kernel, body=map_stmt_exprs(kernel.body, guarded))
    guarded_program = replace(program, kernels=[guarded_kernel])
    with pytest.raises(ScheduleError, match="loaded by two passes, one of them at every position"):
        scheduled(guarded_program, Strategy("gpu_row_reduce", threads=32, keep_row=True))
    x_value = rand(rng, 3, 40)
    fallback = schedule(guarded_program, CUDA)
    assert row_steps(fallback) == ["gpu_row_reduce(threads=32, rows_per_block=4)"]
    assert_close(load_c(simplify_indices(fallback))(x_value)[0], softmax(x_value))


def test_unconditional_loads():
    x, i = Buffer("x", F32, (8,)), Var("i")
    cond = Binary("<", i, Const(3), np.dtype(bool))
    body = Block([Store(x, i, add(Load(x, i), Select(cond, Load(x, i + 1), Load(x, i + 2)))),
                  If(Binary("&&", Binary("<", Load(x, Const(5)), Const(np.float32(0), F32), np.dtype(bool)),
                            Binary("<", Load(x, Const(6)), Const(np.float32(0), F32), np.dtype(bool)), np.dtype(bool)),
                     Store(x, Const(7), Load(x, Const(7))))])
    assert [print_expr(load) for load in unconditional_loads(For(i, 4, body))] == ["x[i]", "x[5]"]


def workload_source(name: str, size: str = "gpu"):
    workload = WORKLOADS[name]
    types = [TensorType(shape, "f32") for shape in workload.shapes[size].values()]
    graph, _ = run_pipeline(minicomp.trace(workload.fn, *types))
    source, _ = run_stages(graph, CUDA, stop_after="render")
    return source


def function_text(source, function: str) -> str:
    text = source.text
    start = text.index(f" {function}(")
    return text[start:text.index("\n}\n", start)]


@pytest.fixture(scope="module")
def memory_bound():
    """name -> (source, its only kernel's text, cubin, PTX) of ew_chain, softmax and layernorm at
    their GPU sizes."""
    names = ["ew_chain", "softmax", "layernorm"]
    sources = [workload_source(name) for name in names]
    cubins = build_many([source.text for source in sources])
    found = {}
    for name, source, cubin in zip(names, sources, cubins):
        [launch] = source.launches
        found[name] = (source, function_text(source, launch.function), cubin, compile_ptx(source.text))
    return found


def ptx_counts(ptx: str) -> dict[str, int]:
    """How many global and local memory instructions of each kind a PTX kernel has."""
    body = ptx[ptx.index(".entry"):]
    counts: dict[str, int] = {}
    for op in re.findall(r"\b((?:ld|st)\.(?:global|local)[\w.]*)", body):
        counts[op] = counts.get(op, 0) + 1
    return counts


@needs_nvcc
@pytest.mark.parametrize("name", ["softmax", "layernorm"])
def test_the_gpu_size_row_kernels_read_each_element_once(memory_bound, name):
    """At 32768 x 4096 (a block of 256 per row, 16 values a thread in 4 groups of 4): one load
    site of x, a float4 load in the unrolled loop that fills the registers; no spill, no
    local memory; 4 float4 loads of x and 4 float4 stores a thread in the PTX, nothing
    scalar: 4 bytes read and 4 written per element, as a copy."""
    source, text, cubin, ptx = memory_bound[name]
    [launch] = source.launches
    assert launch.grid == (32768, 1, 1) and launch.block == (256, 1, 1)
    assert text.count("b_x[") == 1
    fill = re.search(r"#pragma unroll\n\s*for \(int64_t c = 0; c < 4; \+\+c\) \{\n.*vectorized.*\n"
                     r"\s*const float4 mc_vec0 = \*reinterpret_cast<const float4 \*>\(&b_x\[", text)
    assert fill, text
    assert text.count("b_x_row[((c * 4) + 0)] = mc_vec0.x;") == 1
    info = cubin.report[launch.function]
    assert not info.spills and info.stack_bytes == 0, info
    others = 8 if name == "layernorm" else 0  # gamma and beta: 4096 values each, the same for every row
    assert ptx_counts(ptx) == {"ld.global.nc.v4.f32": 4 + others, "st.global.wb.v4.f32": 4}


@needs_nvcc
@pytest.mark.parametrize("cols", [1000, 1024])
@pytest.mark.parametrize("name", ["softmax", "layernorm"])
def test_a_warp_per_row_reads_and_writes_in_float4_too(name, cols):
    """Rows of 1000 and 1024 (the CPU size), a warp per row, 8 rows a block: 8 groups of 4
    a lane (the last one guarded at 1000), each one float4 load of x and one float4 store;
    no spill."""
    workload = WORKLOADS[name]
    types = [TensorType((4096, cols), "f32")] + [TensorType((cols,), "f32")] * (len(workload.shapes["gpu"]) - 1)
    source, _ = run_stages(run_pipeline(minicomp.trace(workload.fn, *types))[0], CUDA, stop_after="render")
    [launch] = source.launches
    assert launch.block == (32, 8, 1)
    [cubin] = build_many([source.text])
    assert not cubin.report[launch.function].spills
    others = 16 if name == "layernorm" else 0  # gamma and beta
    assert ptx_counts(compile_ptx(source.text)) == {"ld.global.nc.v4.f32": 8 + others, "st.global.wb.v4.f32": 8}


@needs_nvcc
def test_ew_chain_at_its_gpu_size_is_float4_loads_and_stores(memory_bound):
    """x [16384, 8192] times a, plus b (8192 each), 2 groups of 4 a thread (the default rule at
    this size): each thread two float4 of x, a and b and two float4 stores, no scalar access:
    ``ld.global.nc.v4.f32`` x 6, ``st.global.wb.v4.f32`` x 2; all 6 loads stand before the
    first computation in the PTX (each thread has 96 bytes in flight before it waits); no spill."""
    source, text, cubin, ptx = memory_bound["ew_chain"]
    [launch] = source.launches
    assert launch.grid == (16384 * 8192 // 4 // 256 // 2, 1, 1) and launch.aligned == ("x", "a", "b", "fused_mul_6")
    assert text.count("const float4 mc_vec") == 3 and text.count("__stwb(reinterpret_cast<float4 *>(") == 1
    assert text.index("const float4 mc_vec") < text.index("tanhf(")  # the loads' loop before the computing one
    assert counts_are(ptx_counts(ptx), {"ld.global.nc.v4.f32": 6, "st.global.wb.v4.f32": 2})
    body = ptx[ptx.index(".entry"):]
    last_load = max(m.start() for m in re.finditer(r"ld\.global\.nc\.v4", body))
    assert last_load < re.search(r"\b(fma|mul|add)\.(rn\.)?f32", body).start()
    info = cubin.report[launch.function]
    assert not info.spills and info.stack_bytes == 0, info


def counts_are(counts: dict, expected: dict) -> bool:
    assert counts == expected, counts
    return True


# ----------------------------------------------------------------------------------------------
# Lanes: elementwise kernels in groups of 4
# ----------------------------------------------------------------------------------------------

LANE_CASES = {  # what the groups of 4 lie in -> (fn, shapes)
    "the last axis (ew_chain)": (WORKLOADS["ew_chain"].fn, [(6, 64), (64,), (64,)]),
    "the last axis, a column broadcast": (lambda x, c: x / c, [(3, 8), (3, 1)]),
    "the last two axes (a [4, 5] broadcast)": (lambda x, y: x + y, [(3, 4, 5), (4, 5)]),
    "all axes, a tail of 1": (lambda x, y: x * y - 1, [(5, 37), (5, 37)]),
    "all axes, only the tail": (lambda x: x * 2, [(3,)]),
}


@pytest.mark.parametrize("name", sorted(LANE_CASES))
def test_lanes_in_both_forms(name, rng):
    """Groups of 4 elements a thread wherever every buffer that moves along the innermost
    loops does so contiguously: thread-serial C and the SIMT form, two thread orders."""
    fn, shapes = LANE_CASES[name]
    args = [rand(rng, *shape) + (2.5 if k else 0) for k, shape in enumerate(shapes)]
    program = schedule(lowered(fn, *args), CUDA)
    assert row_steps(program)[-1].endswith("lanes=4)"), row_steps(program)
    assert any(loop.kind == "vectorized" for loop in loops(program.kernels[-1].body))
    assert_close(load_c(simplify_indices(program))(*args)[0], fn(*args))
    for order in ("reversed", 5):
        assert_close(run_program(fuse_threads(program), *args, order=order)[0], fn(*args))


DTYPES = {"f32": (np.float32, 4), "f64": (np.float64, 2), "i32": (np.int32, 4), "i64": (np.int64, 2)}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_lanes_by_dtype_and_the_scalar_tail(dtype, rng):
    """16 bytes a thread (4 or 2 lanes); every count of elements from 0 to 13 over a
    symbolic size: whole groups vectorized, the last, partial one element by element."""
    numpy_type, lanes = DTYPES[dtype]
    program = schedule(lowered(lambda x, y: x * y + x, TensorType((T,), dtype), TensorType((T,), dtype)), CUDA)
    assert row_steps(program) == [f"gpu_threads(threads=256, lanes={lanes})"]
    run = load_c(simplify_indices(program))
    for n in range(14):
        x, y = (rng.integers(-50, 50, n).astype(numpy_type) for _ in range(2))
        assert_close(run(x, y)[0], x * y + x), n
    x, y = (rng.integers(-50, 50, 7).astype(numpy_type) for _ in range(2))
    assert_close(run_program(fuse_threads(program), x, y, order=2)[0], x * y + x)


def test_what_takes_no_lanes(rng):
    """Broadcast rows of an odd length (a row's first element is misaligned), float16 (no
    float4), a reduction (a thread runs a loop) and a transposed read: one element a thread."""
    cases = [(lambda x, y: x + y, [TensorType((3, 37), "f32"), TensorType((37,), "f32")]),
             (np.exp, [TensorType((4, 8), "f16")]),
             (lambda x: x.sum(axis=0), [TensorType((30, 8), "f32")]),
             (lambda x: x.T + 1, [TensorType((8, 8), "f32")])]
    for fn, types in cases:
        assert "lanes" not in row_steps(schedule(lowered(fn, *types), CUDA))[-1]
    with pytest.raises(ScheduleError, match="lanes=4: no innermost loops are contiguous"):
        scheduled(lowered(lambda x, y: x + y, *cases[0][1]), Strategy("gpu_threads", lanes=4))
    with pytest.raises(ScheduleError, match="lanes=4 needs an elementwise nest"):
        scheduled(lowered(lambda x: x.sum(axis=0), *cases[2][1]), Strategy("gpu_threads", lanes=4))
    with pytest.raises(ScheduleError, match="lanes=4: no independent loop"):
        scheduled(lowered(np.cumsum, TensorType((8,), "f32")), Strategy("gpu_threads", lanes=4))
    with pytest.raises(ScheduleError, match=r"lanes must be one of \(1, 2, 4\)"):
        scheduled(lowered(np.exp, TensorType((8,), "f32")), Strategy("gpu_threads", lanes=3))


def test_lanes_with_a_grid_stride_loop(rng):
    """More groups than blocks: each thread's groups ``s*blocks + b`` in rounds, the last
    round guarded, the tail group element by element."""
    x = rand(rng, 7, 51)
    program = scheduled(lowered(np.negative, x), Strategy("gpu_threads", threads=32, lanes=4, max_blocks=2))
    assert [(loop.kind, loop.extent) for loop in loops(program.kernels[0].body)][:3] == [
        ("gpu_block", 2), ("gpu_thread", 32), ("serial", 2)]
    assert_close(load_c(simplify_indices(program))(x)[0], -x)
    assert_close(run_program(fuse_threads(program), x, order=4)[0], -x)


# ----------------------------------------------------------------------------------------------
# Groups: several positions a thread, all loaded before any is computed
# ----------------------------------------------------------------------------------------------

GROUP_CASES = {  # name -> (fn, shapes of the arguments, lanes): the groups' positions and their tails
    "ew_chain, broadcast rows": (WORKLOADS["ew_chain"].fn, [(5, 24), (24,), (24,)], 4),
    "all axes, a tail of 1": (lambda x, y: x * y - 1, [(5, 37), (5, 37)], 4),
    "odd rows, one element a position": (lambda x, y: x + y, [(3, 37), (37,)], 1),
    "a value read twice, one element a position": (lambda x: np.exp(x) * x, [(7, 9)], 1),
}


def with_groups(fn, args, threads, lanes, groups, max_blocks=2**31 - 1):
    return scheduled(lowered(fn, *args), Strategy("gpu_threads", threads=threads, lanes=lanes, groups=groups,
                                                  max_blocks=max_blocks))


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("name", sorted(GROUP_CASES))
def test_groups_in_both_forms(name, groups, rng):
    """``groups`` positions a thread, ``threads*lanes`` elements apart: the last block's
    overhang guarded group by group, a grid-stride loop where blocks run out; thread-serial C
    and the SIMT form in two thread orders."""
    fn, shapes, lanes = GROUP_CASES[name]
    args = [rand(rng, *shape) + (2.5 if k else 0) for k, shape in enumerate(shapes)]
    for threads, max_blocks in ((32, 2**31 - 1), (8, 2**31 - 1), (8, 1)):
        program = with_groups(fn, args, threads, lanes, groups, max_blocks)
        assert_close(load_c(simplify_indices(program))(*args)[0], fn(*args)), (threads, max_blocks)
        for order in ("reversed", 5):
            assert_close(run_program(fuse_threads(program), *args, order=order)[0], fn(*args)), (threads, order)


@pytest.mark.parametrize("lanes", [1, 4])
def test_groups_over_a_symbolic_size_and_every_small_count(lanes, rng):
    """One program for every count of elements from 0 to 41 (no tail, a partial group of lanes,
    a partial block of groups), through both GPU backends."""
    fn = lambda x, y: x * y + x  # noqa: E731
    program = scheduled(lowered(fn, TensorType((T,), "f32"), TensorType((T,), "f32")),
                        Strategy("gpu_threads", threads=4, lanes=lanes, groups=2))
    assert "unrolled for j in 0..2" in str(program.kernels[0])
    run = load_c(simplify_indices(program))
    for n in list(range(42)) + [1000]:
        x, y = rand(rng, n), rand(rng, n)
        assert_close(run(x, y)[0], fn(x, y)), n
    for n in (0, 1, 5, 33):
        x, y = rand(rng, n), rand(rng, n)
        assert_close(run_program(fuse_threads(program), x, y, order=3)[0], fn(x, y)), n


def test_groups_load_everything_first_into_registers():
    """The thread-serial form: one ``local`` array per loaded buffer (threads x groups x lanes),
    filled in one unrolled loop, read by the next; the SIMT form keeps groups x lanes a thread;
    the CUDA: each buffer's float4 load once, before the loop that computes."""
    fn, shapes, _ = GROUP_CASES["ew_chain, broadcast rows"]
    program = scheduled(lowered(fn, *[TensorType(shape, "f32") for shape in shapes]),
                        Strategy("gpu_threads", threads=32, lanes=4, groups=2))
    assert row_steps(program) == ["gpu_threads(threads=32, lanes=4, groups=2)"]
    text = str(program.kernels[0])
    for name in ("x", "a", "b"):
        assert f"local {name}_in: f32[256]" in text and text.count(f" = {name}[") == 1, text
    assert text.count("unrolled for j in 0..2:") == 2 and text.count("if ((((b * 2) + j) * 32) + t) < 30:") == 2
    simt = simplify_indices(fuse_threads(program))
    assert "local x_in: f32[8]" in str(simt.kernels[0])
    cuda = function_text(render_cuda(simt), render_cuda(simt).launches[0].function)
    assert cuda.count("*reinterpret_cast<const float4 *>(") == 3
    assert cuda.rindex("*reinterpret_cast<const float4 *>(") < cuda.index("tanhf(")


def test_groups_refuse_what_they_cannot_take():
    with pytest.raises(ScheduleError, match="groups=2 needs an elementwise nest"):
        scheduled(lowered(lambda x: x.sum(axis=0), TensorType((30, 8), "f32")), Strategy("gpu_threads", groups=2))
    with pytest.raises(ScheduleError, match=r"groups must be one of \(1, 2, 4\)"):
        scheduled(lowered(np.exp, TensorType((8,), "f32")), Strategy("gpu_threads", groups=3))
    with pytest.raises(ScheduleError, match="groups=2: no independent loop"):
        scheduled(lowered(np.cumsum, TensorType((8,), "f32")), Strategy("gpu_threads", groups=2))


def test_the_default_rule_takes_groups_for_large_float4_kernels_only():
    """2 groups from ``sm_count x 2048 x 4 x 2`` elements (132 SMs on sm_90: 2162688) in float4;
    fewer elements, a symbolic count, 2 lanes (float64) or a CPU-less target: one group."""
    def steps(shape, dtype="f32", target=CUDA):
        return row_steps(schedule(lowered(lambda x: x * 2, TensorType(shape, dtype)), target))

    threshold = CUDA.sm_count * 2048 * 4 * 2
    assert steps((threshold,)) == ["gpu_threads(threads=256, lanes=4, groups=2)"]
    assert steps((threshold - 4,)) == ["gpu_threads(threads=256, lanes=4)"]
    assert steps((T,)) == ["gpu_threads(threads=256, lanes=4)"]
    assert steps((threshold,), "f64") == ["gpu_threads(threads=256, lanes=2)"]
    assert steps((threshold,), target=replace(CUDA, sm_count=0)) == ["gpu_threads(threads=256, lanes=4)"]


# ----------------------------------------------------------------------------------------------
# The renderer's vector accesses
# ----------------------------------------------------------------------------------------------

def test_lane_base_and_multiple_of():
    q, v, n = Var("q"), Var("v"), Size(4 * T)
    assert str(lane_base(q * 4 + v, "v")) == str(q * 4) and str(lane_base(v, "v")) == str(Const(0))
    assert lane_base(q * 4 + v * 2, "v") is None and lane_base((q + v) * 4, "v") is None
    assert lane_base(Binary("-", q * 4, v, INDEX), "v") is None
    assert multiple_of(q * 4, 4) and multiple_of(Binary("%", q * 8, Const(2048), INDEX), 4)
    assert multiple_of(q * n + Const(8), 4) and multiple_of(n, 2)
    assert not multiple_of(q * 4 + Const(2), 4) and not multiple_of(Size(T), 4) and not multiple_of(q * 2, 4)
    assert not multiple_of(Binary("/", q * 8, Const(2), INDEX), 4)


def vector_kernel(body_of, lanes: int = 4):
    """A kernel x[64], y[64] -> out[64] of one block of 16 threads, each running ``body_of(t, v)``
    in a vectorized loop of ``lanes``."""
    program = lowered(lambda x, y: x + y, TensorType((64,), "f32"), TensorType((64,), "f32"))
    [kernel] = program.kernels
    (x, y), out = kernel.inputs, kernel.output
    t, v = Var("t"), Var("v")
    loop = For(v, lanes, body_of(t, v, x, y, out), "vectorized")
    body = For(Var("b"), 1, For(t, 64 // lanes, loop, "gpu_thread", "x"), "gpu_block", "x")
    return replace(program, kernels=[replace(kernel, body=body, schedule=[])]), loop, (x, y, out)


def add(a, b):
    return Binary("+", a, b, F32)


def test_a_vector_plan_takes_aligned_unconditional_accesses_only():
    def body(t, v, x, y, out):
        start = t * 4
        return Block([Store(out, start + v, add(Load(x, start + v),  # a float4 of x
                                               Select(Binary("<", v, Const(2), np.dtype(bool)),
                                                      Load(y, start + v), Load(x, Const(0))))),
                      If(Binary("<", t, Const(3), np.dtype(bool)), Store(out, start + v, Load(y, start + v)))])

    program, loop, (x, y, out) = vector_kernel(body)
    plan = vector_plan(loop, program.kernels[0])
    assert [key[0] for key in plan.loads] == [x]  # y only under a select and an if: not read by every lane
    assert not plan.stores  # out is also written under an if: stores stay scalar

    def shifted(t, v, x, y, out):  # x[4t + 1 + v] is not aligned; out[4t + v] is
        return Store(out, t * 4 + v, Load(x, t * 4 + Const(1) + v))
    program, loop, (x, y, out) = vector_kernel(shifted)
    plan = vector_plan(loop, program.kernels[0])
    assert not plan.loads and [key[0] for key in plan.stores] == [out]

    def in_place(t, v, x, y, out):  # reads what it writes: a plain loop
        return Store(x, t * 4 + v, Load(x, t * 4 + v))
    program, loop, _ = vector_kernel(in_place)
    assert vector_plan(loop, program.kernels[0]) is None
    program, loop, _ = vector_kernel(lambda t, v, x, y, out: Store(out, t * 3 + v, Load(x, t * 3 + v)), lanes=3)
    assert vector_plan(loop, program.kernels[0]) is None  # 3 lanes: no vector type


def test_the_cuda_of_a_vectorized_loop_and_its_tail():
    program = simplify_indices(fuse_threads(schedule(lowered(lambda x, y: x * y, TensorType((5, 37), "f32"),
                                                             TensorType((5, 37), "f32")), CUDA)))
    source = render_cuda(program)
    [launch] = source.launches
    text = function_text(source, launch.function)
    assert launch.aligned == ("x", "y", "mul")
    assert text.count("*reinterpret_cast<const float4 *>(&b_x[") == 1
    assert text.count("*reinterpret_cast<const float4 *>(&b_y[") == 1
    assert "mc_vec2.w = (mc_vec0.w * mc_vec1.w);" in text
    assert "__stwb(reinterpret_cast<float4 *>(&b_mul[" in text
    assert "} else {" in text and text.count("for (int64_t v = 0; v < 4; ++v)") == 1  # the tail, scalar


@needs_nvcc
@pytest.mark.parametrize("dtype, load, store", [("f32", "v4.f32", "v4.f32"), ("f64", "v2.f64", "v2.f64"),
                                               ("i32", "v4.u32", "v4.s32"), ("i64", "v2.u64", "v2.s64")])
def test_vector_accesses_of_every_type_compile_to_vector_instructions(dtype, load, store):
    """x[T, 8] * y[8] + x: two vector loads (x, y) and one vector store a thread, nothing scalar."""
    source = render_cuda(simplify_indices(fuse_threads(schedule(
        lowered(lambda x, y: x * y + x, TensorType((T, 8), dtype), TensorType((8,), dtype)), CUDA))))
    assert ptx_counts(compile_ptx(source.text)) == {f"ld.global.nc.{load}": 2, f"st.global.wb.{store}": 1}


# ----------------------------------------------------------------------------------------------
# The runtime: misaligned device arguments
# ----------------------------------------------------------------------------------------------


class Launchy:
    def __init__(self, aligned):
        self.aligned = aligned


def test_misaligned_names_buffers_that_vector_kernels_need_aligned():
    launches = [Launchy(("x", "out")), Launchy(()), Launchy(("y", "x", "tmp"))]
    pointers = {"x": 0x7F0000000004, "y": 0x7F0000000100, "out": 0x7F0000000200, "tmp": 0x7F0000000308,
                "z": 0x7F0000000001}
    assert cuda_runtime.misaligned(pointers, launches) == ["x", "tmp"]  # z: no vector kernel reads it
    assert cuda_runtime.misaligned({"x": 16, "y": 32}, launches) == []


class FakeDriver:
    """Device memory as numbers: each allocation at the next multiple of 256; copies recorded."""

    def __init__(self):
        self.next, self.copies = 0x10000, []

    def mem_alloc(self, nbytes):
        address = self.next
        self.next += -(-max(nbytes, 1) // 256) * 256
        return address

    allocate = mem_alloc  # also the executable's memory pool for results left on the device

    def memcpy_htod_async(self, *args):
        pass

    def memcpy_dtod_async(self, dest, src, nbytes, stream):
        self.copies.append((dest, src, nbytes))

    def memset_d32_async(self, *args):
        pass


class DeviceArray:
    def __init__(self, pointer, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (pointer, False), "version": 3}


def test_a_misaligned_device_argument_is_copied_before_a_vector_kernel_reads_it():
    """``CudaExecutable``'s argument path with a stand-in driver: a device array 4 bytes past
    a 16-byte boundary goes through an aligned copy; an aligned one is used where it is."""
    from minicomp.runtime.executable import CallPlan
    from minicomp.stages import run_stages as stages

    graph = run_pipeline(minicomp.trace(lambda x, y: x * y, TensorType((4, 8), "f32"), TensorType((4, 8), "f32")))[0]
    source, program = stages(graph, CUDA, stop_after="render")
    program = source.program
    assert source.launches[0].aligned == ("x", "y", "mul")
    driver = FakeDriver()
    executable = object.__new__(cuda_runtime.CudaExecutable)
    executable.program, executable.source, executable.plan = program, source, CallPlan.of(program)
    executable.driver, executable.stream = driver, None
    executable.memory, executable.constants = cuda_runtime.DeviceBuffers(driver), []
    executable._status, executable._memory_pool = False, driver
    seen = {}
    executable._run = lambda pointers, sizes, status, replayable: seen.update(pointers)
    executable._results = lambda outputs, shapes, on_device, wait: outputs
    executable._call([DeviceArray(0x7F0000000004, (4, 8)), DeviceArray(0x7F0000000100, (4, 8))])
    assert seen["y"] == 0x7F0000000100 and seen["x"] % 16 == 0 and seen["mul"] % 16 == 0
    assert driver.copies == [(seen["x"], 0x7F0000000004, 4 * 8 * 4)]


def test_a_device_array_written_in_place_gets_its_new_value_by_a_device_copy():
    """``x[0] = 0`` on a device argument: after the kernels, the executable copies the written
    value (an output buffer) over the caller's array, device to device, without waiting."""
    from minicomp.runtime.executable import CallPlan
    from minicomp.stages import run_stages as stages

    def zero_first_row(x):
        x[0] = 0.0
        return x * 2

    graph = run_pipeline(minicomp.trace(zero_first_row, TensorType((4, 8), "f32")))[0]
    assert graph.updated_inputs  # the write is an output the caller's array must receive
    source, program = stages(graph, CUDA, stop_after="render")
    driver = FakeDriver()
    executable = object.__new__(cuda_runtime.CudaExecutable)
    executable.program, executable.source, executable.plan = source.program, source, CallPlan.of(source.program)
    executable.driver, executable.stream = driver, None
    executable.memory, executable.constants = cuda_runtime.DeviceBuffers(driver), []
    executable._status, executable._memory_pool = False, driver
    waited = []
    executable._run = lambda pointers, sizes, status, replayable: None
    executable._results = lambda outputs, shapes, on_device, wait: waited.append(wait) or outputs
    outputs = executable._call([DeviceArray(0x7F0000000100, (4, 8))])
    written = outputs[executable.plan.output_order[graph.updated_inputs[0]]]
    assert driver.copies == [(0x7F0000000100, written, 4 * 8 * 4)] and waited == [False]
