"""The CUDA renderer (``codegen/cuda.py``) and nvcc (``runtime/nvcc.py``), without a GPU.

Hand-built kernels in SIMT form (what ``fuse_threads`` makes of a GPU schedule) are rendered
and compiled by nvcc, all of this module's in one batch (``build_many``: one translation unit,
one nvcc run for the PTX and one for ptxas), and ptxas's report says that none spills. Their
text is checked where a renderer could go wrong and still compile: each launch's grid, block,
shared memory and parameters; a ``__syncthreads()`` per ``Barrier``; the butterfly of a warp
reduce, offset by offset; float16 converted to and from float once per operation; 64-bit
offsets; the status parameter only where a kernel can fail; CUDA's names never taken by a
user's. Kernels not in SIMT form are refused, naming the kernel. Then nvcc itself: found or
missing, its report parsed, a batch built as single builds are (byte for byte), the cache
checked before it is believed, PTX for reading.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp.testing.backends import has_nvcc
from minicomp import TensorType
from minicomp.codegen.cuda import CUDA_RESERVED, CudaRenderer, render_cuda, simt_form
from minicomp.errors import CompileError
from minicomp.ir.loops import (BOOL, Allocate, Assign, Barrier, Binary, Block, Buffer, Cast, Const, Declare, For, If,
                               Intrinsic, Kernel, Load, Select, Size, Store, Var, WarpReduce, const)
from minicomp.ir.rewrite import declared_names, rename_vars, statements
from minicomp.ir.schedule import Bind, Fuse, Split, Tile, apply_schedule
from minicomp.ir.symbolic import Sym, ceil_div, evaluate
from minicomp.lower.program import lower
from minicomp.lower.rules import combine, reduction_init
from minicomp.runtime import cache, nvcc
from minicomp.stages import cuda_ptx, render_cuda_source
from minicomp.target import cuda_target

from test_loop_ir_gpu import tree_reduction

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)
ROWS, COLS = 5, 77



needs_nvcc = pytest.mark.skipif(not has_nvcc(), reason="nvcc (the CUDA toolkit) is not installed")


# ----------------------------------------------------------------------------------------------
# Kernels in SIMT form, built by hand
# ----------------------------------------------------------------------------------------------


def lowered(fn, *types):
    """``fn`` traced at ``types`` (TensorTypes) and lowered to plain nests."""
    return lower(minicomp.trace(fn, *types))


def bind_flat(kernel: Kernel, threads: int) -> Kernel:
    """An elementwise nest as a grid of blocks of ``threads``: its loops fused, split, bound."""
    names, s = [], kernel.body
    while isinstance(s, For):
        names.append(s.var.name)
        s = s.body
    steps, name = [], names[0]
    for other in names[1:]:
        steps.append(Fuse(name, other))
        name = f"{name}_{other}"
    steps += [Split(name, threads), Bind(f"{name}_o", "blockIdx.x"), Bind(f"{name}_i", "threadIdx.x")]
    return apply_schedule(kernel, steps)


def bound_program(fn, *types, threads: int = 64):
    """``fn``'s program with every kernel an elementwise grid (``bind_flat``)."""
    program = lowered(fn, *types)
    return replace(program, kernels=[bind_flat(k, threads) for k in program.kernels])


def lt(a, b):
    return Binary("<", a, b, BOOL)


def eq(a, b):
    return Binary("==", a, b, BOOL)


def cast(e, dtype):
    return e if e.dtype == dtype else Cast(e, dtype)


def add_2d():
    """x[9,13] + y[13] in blocks of 4 x 8 threads: a 2 x 3 grid (x, y)."""
    program = lowered(lambda x, y: x + y, TensorType((9, 13), "f32"), TensorType((13,), "f32"))
    kernel = apply_schedule(program.kernels[0], [
        Tile("i0", "i1", 4, 8), Bind("i0_o", "blockIdx.y"), Bind("i1_o", "blockIdx.x"),
        Bind("i0_i", "threadIdx.y"), Bind("i1_i", "threadIdx.x")])
    return replace(program, kernels=[kernel])


def warp_rows(combiner: str, dtype: np.dtype, width: int = 32, threads: int = 64):
    """Row reductions (x: [5, 77] of ``dtype``), a block per row: each thread combines a strided
    share (float16 in float32), each group of ``width`` lanes warp-reduces it, lane 0 of each
    stores into shared ``part``; after a barrier the first ``width`` lanes warp-reduce those
    and thread 0 stores the row's result."""
    reduce = {"sum": np.sum, "max": np.max, "min": np.min}[combiner]
    program = lowered(lambda x: reduce(x, axis=1), TensorType((ROWS, COLS), dtype))
    [x], out = program.inputs, program.outputs[0]
    arith = F32 if dtype == F16 else dtype
    b, t, c, col = Var("b"), Var("t"), Var("c"), Var("col")
    acc, warp_total, total = Var("acc", arith), Var("warp_total", dtype), Var("total", dtype)
    groups = threads // width
    part = Buffer("part", dtype, (groups,))
    share = Block([Declare(col, c * threads + t),
                   If(lt(col, Const(COLS)), Assign(acc, combine(combiner, acc, cast(Load(x, b * COLS + col), arith))))])
    identity = reduction_init(combiner, dtype)
    body = [Declare(acc, reduction_init(combiner, arith)), For(c, -(-COLS // threads), share),
            WarpReduce(warp_total, combiner, cast(acc, dtype), width),
            If(eq(t % width, Const(0)), Store(part, t / width, warp_total)),
            Barrier(),
            If(lt(t, Const(width)), Block([
                WarpReduce(total, combiner, Select(lt(t, Const(groups)), Load(part, t), identity), width),
                If(eq(t, Const(0)), Store(out, b, cast(total, out.dtype)))]))]
    nest = For(b, ROWS, Block([Allocate(part, "shared"), For(t, threads, Block(body), "gpu_thread", "x")]),
               "gpu_block", "x")
    return replace(program, kernels=[Kernel(f"row_{combiner}", [x], out, nest)])


def float16_elementwise():
    def fn(x, y):
        return np.tanh(x) * y + np.float16(1.5), x > y, x.astype(np.int32), y.astype(np.float64) / 3
    return bound_program(fn, TensorType((6, 40), "f16"), TensorType((6, 40), "f16"))


def numpy_helpers():
    def fn(x, y, a, b):
        return x // y, x % y, np.maximum(x, y), np.minimum(x, y), np.sign(x), a // b, a % b, a * b - a
    return bound_program(fn, TensorType((3, 50), "f32"), TensorType((3, 50), "f32"),
                         TensorType((3, 50), "i32"), TensorType((3, 50), "i32"))


T = Sym.symbol("T")


def symbolic_grid():
    """x[T, 100] + y[100] by flat blocks of 256: ceil(100 T / 256) blocks, the tail guarded."""
    program = lowered(lambda x, y: x + y, TensorType((T, 100), "f32"), TensorType((100,), "f32"))
    kernel = program.kernels[0]
    [x, y], out = kernel.inputs, kernel.output
    b, t, n = Var("b"), Var("t"), 100 * T
    flat = b * 256 + t
    store = Store(out, flat, Binary("+", Load(x, flat), Load(y, flat % 100), F32))
    body = For(b, ceil_div(n, 256), For(t, 256, If(lt(flat, Size(n)), store), "gpu_thread", "x"), "gpu_block", "x")
    return replace(program, kernels=[replace(kernel, body=body)])


BIG_ROWS, BIG_COLS = 65537, 32771  # 2^31 + 163840 elements: offsets past 2^31


def big_offsets():
    """Elementwise over more than 2^31 elements: the fused index as a flat grid of 256."""
    types = TensorType((BIG_ROWS, BIG_COLS), "f32"), TensorType((BIG_COLS,), "f32")
    return bound_program(lambda x, y: x * y, *types, threads=256)


def gather():
    """np.take (an index that can be out of range: the status) then an elementwise multiply."""
    return bound_program(lambda x, i: np.take(x, i, axis=0) * 2, TensorType((50, 8), "f32"),
                         TensorType((7,), "i32"), threads=32)


def big_shared():
    """Rows of x[4, 16384] through 64 KiB of shared memory (and a small second array): more
    than a static __shared__ array may have, so dynamic shared memory."""
    program = lowered(lambda x: x * 2, TensorType((4, 16384), "f32"))
    [x], out = program.inputs, program.outputs[0]
    row, small = Buffer("row", F32, (16384,)), Buffer("small", F32, (100,))
    b, t, c = Var("b"), Var("t"), Var("c")
    col = c * 256 + t
    body = Block([For(c, 64, Store(row, col, Load(x, b * 16384 + col))),
                  If(lt(t, Const(100)), Store(small, t, Load(row, t))),
                  Barrier(),
                  For(c, 64, Store(out, b * 16384 + col,
                                   Binary("+", Load(row, Const(16383) - col), Load(small, col % 100), F32)))])
    nest = For(b, 4, Block([Allocate(row, "shared"), Allocate(small, "shared"), For(t, 256, body, "gpu_thread", "x")]),
               "gpu_block", "x")
    return replace(program, kernels=[Kernel("shared_rows", [x], out, nest)])


def loop_kinds():
    """A thread's own loops of each kind: unrolled, vectorized, parallel, serial."""
    program = lowered(lambda x: x * 2, TensorType((8, 16), "f32"))
    [x], out = program.inputs, program.outputs[0]
    b, t, i, j = Var("b"), Var("t"), Var("i"), Var("j")
    mine = Buffer("mine", F32, (4,))
    body = Block([Allocate(mine),
                  For(i, 4, Store(mine, i, Load(x, b * 16 + t * 4 + i)), "unrolled"),
                  For(i, 4, Store(mine, i, Binary("*", Load(mine, i), const(2, F32), F32)), "vectorized"),
                  For(j, 4, Store(out, b * 16 + t * 4 + j, Load(mine, j)), "parallel")])
    nest = For(b, 8, For(t, 4, body, "gpu_thread", "x"), "gpu_block", "x")
    return replace(program, kernels=[Kernel("kinds", [x], out, nest)])


HOSTILE = ["threadIdx", "blockIdx", "blockDim", "gridDim", "warpSize", "half", "__syncthreads", "atomicOr",
           "__half", "__shfl_xor_sync", "class", "new", "this", "float4", "dim3", "mc_shared", "max", "NAN",
           "expf", "namespace", "x */ int y;", ""]


def hostile_names():
    """The tree reduction and a warp reduction with every name (variables, buffers, kernels,
    source lines) one CUDA means something by, or text that tries to leave a comment."""
    kernels = []
    for n, program in enumerate([tree_reduction(), warp_rows("max", F32)]):
        [kernel] = program.kernels
        names = {v: HOSTILE[(i + n) % len(HOSTILE)] for i, v in enumerate(sorted(declared_names(kernel.body)))}
        body = rename_vars(kernel.body, names)
        buffers = list(kernel.params) + [s.buffer for s in statements(body) if isinstance(s, Allocate)]
        for i, buffer in enumerate(buffers):
            buffer.name = HOSTILE[-1 - (i + n) % len(HOSTILE)]
        kernels.append(replace(kernel, body=body, name=HOSTILE[n], source=["evil */ int x; /* \u00e9"]))
    return replace(program, kernels=kernels, workspace={})


PROGRAMS = {"add_2d": add_2d, "tree_sum": tree_reduction, "float16": float16_elementwise,
            "helpers": numpy_helpers, "symbolic": symbolic_grid, "big_offsets": big_offsets, "gather": gather,
            "big_shared": big_shared, "loop_kinds": loop_kinds, "hostile": hostile_names,
            "warp_sum_f32_16": lambda: warp_rows("sum", F32, width=16)}
for _combiner in ("sum", "max", "min"):
    for _dtype in (F16, F32, F64, I32, I64):
        PROGRAMS[f"warp_{_combiner}_{_dtype}"] = lambda c=_combiner, d=_dtype: warp_rows(c, d)


@pytest.fixture(scope="module")
def built():
    """Every program of ``PROGRAMS`` rendered and compiled by nvcc in one batch: name -> Cubin."""
    if not has_nvcc():
        pytest.skip("nvcc (the CUDA toolkit) is not installed")
    names = sorted(PROGRAMS)
    cubins = nvcc.build_many([render_cuda(PROGRAMS[name]()).text for name in names])
    return dict(zip(names, cubins))


def function_text(source, name: str) -> str:
    """The text of kernel function ``name`` in a CUDA file."""
    start = source.text.index(f" {name}(") + 1
    return source.text[start:source.text.index("\n}\n", start)]


# ----------------------------------------------------------------------------------------------
# Every kernel compiles, none spills
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_kernel_compiles_with_nvcc_without_spills(built, name):
    source = render_cuda(PROGRAMS[name]())
    report = built[name].report
    for launch in source.launches:
        info = report[launch.function]  # ptxas compiled every kernel, under its own name
        assert info.registers > 0 and not info.spills, (launch.function, info)
    assert built[name].data[:4] == b"\x7fELF"


# ----------------------------------------------------------------------------------------------
# What the text says
# ----------------------------------------------------------------------------------------------


def test_a_two_dimensional_grid_of_two_dimensional_blocks(built):
    source = render_cuda(add_2d())
    [launch] = source.launches
    assert (launch.function, launch.grid, launch.block, launch.shared_bytes, launch.params, launch.status) == (
        "k_add", (2, 3, 1), (8, 4, 1), 0, ["x", "y", "add"], False)
    text = function_text(source, "k_add")
    assert text.startswith('k_add(const float *__restrict__ b_x, const float *__restrict__ b_y, '
                           'float *__restrict__ b_add) {')
    assert 'extern "C" __global__ void __launch_bounds__(32) k_add(' in source.text
    for var, index in [("i0_o", "blockIdx.y"), ("i1_o", "blockIdx.x"), ("i0_i", "threadIdx.y"), ("i1_i", "threadIdx.x")]:
        assert f"const int64_t {var} = (int64_t){index};" in text
    assert "for (" not in text  # block and thread loops are indices, not loops


def test_shared_memory_and_a_syncthreads_per_barrier(built):
    program = tree_reduction()
    barriers = sum(isinstance(s, Barrier) for s in statements(program.kernels[0].body))
    source = render_cuda(program)
    text = function_text(source, "k_row_sum")
    assert barriers == 5 and text.count("__syncthreads();") == barriers
    assert "__shared__ __align__(16) float b_part[16];" in text
    assert source.launches[0].shared_bytes == 0  # static: nothing to ask for at launch
    assert built["tree_sum"].report["k_row_sum"].shared_bytes == 16 * 4


@pytest.mark.parametrize("combiner", ["sum", "max", "min"])
@pytest.mark.parametrize("dtype", [F16, F32, F64, I32, I64], ids=str)
def test_a_warp_reduce_is_the_butterfly_of_its_docstring(combiner, dtype):
    source = render_cuda(warp_rows(combiner, dtype))
    text = function_text(source, f"k_row_{combiner}")
    ctype = {F16: "__half", F32: "float", F64: "double", I32: "int32_t", I64: "int64_t"}[dtype]
    assert f"{ctype} warp_total = " in text and f"{ctype} total = " in text
    shuffles = re.findall(r"^ *warp_total = (.*);$", text, re.M)
    assert [re.search(r"__shfl_xor_sync\(0xffffffffu, warp_total, (\d+), 32\)", s)[1] for s in shuffles] == [
        "16", "8", "4", "2", "1"]  # own value first, the other lane's second, offsets halving
    suffix = {F16: "f32", F32: "f32", F64: "f64", I32: "i32", I64: "i64"}[dtype]
    other = "__shfl_xor_sync(0xffffffffu, warp_total, 16, 32)"
    own, theirs = ("__half2float(warp_total)", f"__half2float({other})") if dtype == F16 else ("warp_total", other)
    expected = {"sum": f"({own} + {theirs})", "max": f"mc_maximum_{suffix}({own}, {theirs})",
                "min": f"mc_minimum_{suffix}({own}, {theirs})"}[combiner]
    if combiner == "sum" and dtype == I32:
        expected = f"((int32_t)((uint32_t){own} + (uint32_t){theirs}))"  # wraps, as NumPy
    if dtype == F16:
        expected = f"__float2half_rn({expected})"  # combined in float, rounded once
    assert shuffles[0] == expected
    assert text.count("__syncthreads();") == 1


def test_a_warp_reduce_over_part_of_a_warp_shuffles_among_its_lanes():
    text = function_text(render_cuda(warp_rows("sum", F32, width=16)), "k_row_sum")
    assert [int(m) for m in re.findall(r"__shfl_xor_sync\(mc_group_mask\(16\), warp_total, (\d+), 16\)", text)] == [
        8, 4, 2, 1]
    assert "0xffffffffu" not in text


def test_float16_is_half_with_arithmetic_in_float():
    source = render_cuda(float16_elementwise())
    kernels = source.text[source.text.index(nvcc_prelude_end()):]
    assert "_Float16" not in source.text and "const __half *__restrict__ b_x" in kernels
    assert "__half2float(b_x[" in kernels and "__float2half_rn(" in kernels
    assert "tanhf(__half2float(" in kernels  # float16 math in float
    assert "mc_from_f64_i32((double)__half2float(" in kernels  # float16 -> int32 as NumPy
    assert "((double)__half2float(" in kernels  # -> float64 through float, exactly
    assert "__float2half_rn(1.5f)" in kernels  # a float16 literal
    assert "uint8_t *__restrict__" in kernels  # bool results are bytes


def nvcc_prelude_end() -> str:
    from minicomp.codegen.cuda import PRELUDE_END

    return PRELUDE_END


def test_numpy_helpers_are_device_functions():
    source = render_cuda(numpy_helpers())
    prelude, kernels = source.text.split(nvcc_prelude_end())
    for helper in ("float mc_floordiv_f32(float a, float b)", "float mc_mod_f32(float a, float b)",
                   "float mc_maximum_f32(float a, float b)", "int32_t mc_floordiv_i32(int32_t a, int32_t b)",
                   "int64_t mc_index_i64(int64_t i, int64_t n, int *status)"):
        assert f"__device__ __forceinline__ {helper}" in prelude
    assert "static inline" not in prelude
    for call in ("mc_floordiv_f32(", "mc_mod_f32(", "mc_maximum_f32(", "mc_minimum_f32(", "mc_sign_f32(",
                 "mc_floordiv_i32(", "mc_mod_i32("):
        assert call in kernels
    assert "(int32_t)((uint32_t)" in kernels  # a * b - a in int32 wraps as NumPy
    assert all(not launch.status for launch in source.launches)


def test_a_symbolic_size_makes_a_symbolic_grid():
    source = render_cuda(symbolic_grid())
    [launch] = source.launches
    assert isinstance(launch.grid[0], Sym) and launch.grid[1:] == (1, 1) and launch.block == (256, 1, 1)
    assert [evaluate(launch.grid[0], {"T": t}) for t in (1, 2, 3, 1000)] == [1, 1, 2, 391]
    assert launch.params == ["x", "y", "add", "T"]
    text = function_text(source, "k_add")
    assert "int64_t mc_size_T) {" in text and "< (100*mc_size_T))" in text


def test_offsets_past_two_to_the_31_are_int64(built):
    source = render_cuda(big_offsets())
    [launch] = source.launches
    assert launch.grid == (-(-BIG_ROWS * BIG_COLS // 256), 1, 1) and BIG_ROWS * BIG_COLS > 2**31
    text = function_text(source, "k_mul")
    assert "const int64_t i0_i1_o = (int64_t)blockIdx.x;" in text
    assert f"INT64_C({BIG_ROWS * BIG_COLS})" in text  # the guard's bound as a 64-bit literal
    code = re.sub(r"/\*.*?\*/", "", text)
    assert not re.search(r"\b(int|unsigned|int32_t|uint32_t|long)\b", code)  # no narrower index anywhere


def test_a_kernel_that_can_fail_takes_the_status():
    source = render_cuda(gather())
    gather_launch, mul_launch = source.launches
    assert gather_launch.status and not mul_launch.status
    assert gather_launch.params == ["x", "i", "gather"] and mul_launch.params == ["gather", "mul"]
    assert function_text(source, "k_gather").split(") {")[0].endswith(", int *mc_status")
    assert "mc_index_i64(" in function_text(source, "k_gather") and "mc_status" not in function_text(source, "k_mul")
    assert "atomicOr(status, code)" in source.text


def test_more_than_48_kib_of_shared_memory_is_dynamic(built):
    source = render_cuda(big_shared())
    [launch] = source.launches
    assert launch.shared_bytes == 16384 * 4 + 400 + 0  # 16-byte aligned: 400 is a multiple of 16
    text = function_text(source, "k_shared_rows")
    assert "extern __shared__ __align__(16) unsigned char mc_shared[];" in text
    assert "float *b_row = (float *)(mc_shared + 0);" in text and "float *b_small = (float *)(mc_shared + 65536);" in text
    assert built["big_shared"].report["k_shared_rows"].shared_bytes == 0  # none static


def test_loops_of_every_kind_are_plain_loops_on_a_thread():
    text = function_text(render_cuda(loop_kinds()), "k_kinds")
    assert text.count("#pragma unroll\n") == 1 and text.count("#pragma") == 1
    assert text.count("for (int64_t ") == 3 and "float b_mine[4];" in text


def test_no_name_a_user_gives_takes_a_cuda_name(built):
    source = render_cuda(hostile_names())
    code = re.sub(r"/\*.*?\*/", " ", source.text.split(nvcc_prelude_end())[1], flags=re.S)
    assert source.text.isascii() and "evil" not in code and "int y;" not in code and "*/" not in code
    tokens = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code)
    assert tokens.count("threadIdx") == 2 and tokens.count("blockIdx") == 2  # the loops' indices only
    for name in ("blockDim", "gridDim", "warpSize", "half", "class", "new", "this", "float4", "dim3", "max",
                 "namespace", "expf", "NAN", "mc_shared", "atomicOr", "__half", "__syncthreads"):
        uses = {"__syncthreads": 5 + 1, "__half": 0}.get(name, 0)
        assert tokens.count(name) == uses, name
    assert "v_threadIdx" in tokens and "v_blockIdx" in tokens and "k_threadIdx" in tokens
    assert {"threadIdx", "blockIdx", "half", "class", "float4", "atomicOr"} <= CUDA_RESERVED


# ----------------------------------------------------------------------------------------------
# What is refused
# ----------------------------------------------------------------------------------------------


def test_a_kernel_without_a_gpu_schedule_is_refused_naming_it():
    program = lowered(lambda x: np.exp(x), TensorType((4, 8), "f32"))
    with pytest.raises(CompileError, match=r"kernel exp is not in SIMT form.*needs a GPU schedule"):
        render_cuda(program)


def test_the_thread_serial_form_is_refused_until_threads_are_fused():
    program = lowered(lambda x: x * 2, TensorType((2, 8), "f32"))
    [x], out = program.inputs, program.outputs[0]
    b, t = Var("i0"), Var("i1")
    phase = For(t, 8, Store(out, b * 8 + t, Load(x, b * 8 + t)), "gpu_thread", "x")
    nest = For(b, 2, Block([phase, replace(phase)]), "gpu_block", "x")  # two phases
    with pytest.raises(CompileError, match="kernel twice is not in SIMT form.*fuse_threads"):
        render_cuda(replace(program, kernels=[Kernel("twice", [x], out, nest)]))


def test_intrinsics_too_many_threads_and_odd_shared_memory_are_refused():
    program = lowered(lambda x: x * 2, TensorType((2, 8), "f32"))
    [x], out = program.inputs, program.outputs[0]
    b, t = Var("b"), Var("t")

    def kernel(body, threads=8, shared=()):
        inner = For(t, threads, body, "gpu_thread", "x")
        return replace(program, kernels=[Kernel("odd", [x], out, For(
            b, 2, Block([Allocate(s, "shared") for s in shared] + [inner]), "gpu_block", "x"))])

    store = Store(out, b * 8 + t, Load(x, t))
    with pytest.raises(CompileError, match="kernel odd: the CUDA renderer has no intrinsic mc_gemm"):
        render_cuda(kernel(Intrinsic("mc_gemm", ())))
    with pytest.raises(CompileError, match="kernel odd: 2048 threads per block"):
        render_cuda(kernel(store, threads=2048))
    with pytest.raises(CompileError, match="shared array s has a symbolic size"):
        render_cuda(kernel(store, shared=[Buffer("s", F32, (T,))]))
    with pytest.raises(CompileError, match="bytes of shared memory per block"):
        render_cuda(kernel(store, shared=[Buffer("s", F32, (300 * 1024,))]))
    assert simt_form(kernel(store).kernels[0]).thread_count == 8


def test_the_renderer_has_no_host_entry_point():
    with pytest.raises(CompileError, match="no host entry point"):
        CudaRenderer().entry(add_2d())


# ----------------------------------------------------------------------------------------------
# nvcc
# ----------------------------------------------------------------------------------------------

PTXAS_OUTPUT = """\
ptxas info    : 296 bytes gmem
ptxas info    : Compiling entry function 'k_big' for 'sm_90'
ptxas info    : Function properties for k_big
    72 bytes stack frame, 40 bytes spill stores, 36 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 72 bytes cumulative stack size, 512 bytes smem
ptxas info    : Compile time = 17.596 ms
ptxas info    : Compiling entry function 'k_small' for 'sm_90'
ptxas info    : Function properties for k_small
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, used 0 barriers
ptxas info    : Function properties for __internal_trig_reduction_slowpathd
    16 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
"""


def test_ptxas_report_reads_registers_spills_shared_memory_and_stack():
    report = nvcc.ptxas_report(PTXAS_OUTPUT)
    assert report == {
        "k_big": nvcc.PtxasInfo(registers=255, spill_stores=40, spill_loads=36, shared_bytes=512, stack_bytes=72),
        "k_small": nvcc.PtxasInfo(registers=14),
        "__internal_trig_reduction_slowpathd": nvcc.PtxasInfo(stack_bytes=16)}
    assert report["k_big"].spills and not report["k_small"].spills


def test_nvcc_is_looked_for_on_path_then_cuda_home_then_the_usual_place(tmp_path, monkeypatch):
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setattr(nvcc, "FALLBACK_CUDA_BIN", str(tmp_path / "not-there"))
    monkeypatch.setenv("CUDA_HOME", str(home))
    with pytest.raises(CompileError, match=r"nvcc not found.*looked on \$PATH, in \$CUDA_HOME/bin \(.*cuda/bin\) "
                                           r"and in .*not-there.*CUDA_HOME"):
        nvcc.find_nvcc()
    fake = home / "bin" / "nvcc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert nvcc.find_nvcc() == str(fake)
    monkeypatch.delenv("CUDA_HOME")
    with pytest.raises(CompileError, match=r"\$CUDA_HOME is not set"):
        nvcc.find_nvcc()


@needs_nvcc
def test_nvcc_version():
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*", nvcc.nvcc_version())


@needs_nvcc
def test_a_batch_builds_what_single_builds_build(built, monkeypatch):
    """``build_cubin`` of two sources alone gives the very bytes and report the batch gave, and
    each batch entry is in the cache under its own source's key: built again, nvcc does not run."""
    names = ["tree_sum", "warp_max_float32"]
    texts = [render_cuda(PROGRAMS[name]()).text for name in names]
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(cache.cache_dir() / ".." / "single-builds"))
    for name, text in zip(names, texts):
        alone = nvcc.build_cubin(text)
        assert alone.data == built[name].data and alone.report == built[name].report
    monkeypatch.undo()

    def no_nvcc(*args):
        raise AssertionError("nvcc ran for a source in the cache")

    monkeypatch.setattr(nvcc, "_run", no_nvcc)
    assert nvcc.compile_many(texts) == [built[name].data for name in names]
    assert nvcc.compile_cubin(texts[0]) == built[names[0]].data


@needs_nvcc
def test_an_altered_cubin_is_rebuilt_never_loaded():
    text = render_cuda(add_2d()).text
    key = nvcc.cubin_key(text)
    good = nvcc.compile_cubin(text)
    path = cache.cache_dir() / f"{key}.cubin"
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert nvcc.compile_cubin(text) == good and path.read_bytes() == good


@needs_nvcc
def test_a_batch_with_a_broken_source_names_it():
    texts = [render_cuda(add_2d()).text, render_cuda(add_2d()).text.replace("b_add[", "b_nowhere[")]
    with pytest.raises(CompileError, match=r"(?s)nvcc failed on the CUDA code generated for.*b_nowhere"):
        nvcc.build_many(texts)


def test_split_ptx_keeps_each_sources_kernels_and_what_they_use():
    ptx = """\
//
// Generated by NVIDIA NVVM Compiler
.version 9.0
.target sm_90
.address_size 64

.func  (.param .b64 func_retval0) helper
(
\t.param .b64 helper_param_0
)
;
.global .align 4 .b8 table[2] = {1, 2};
.extern .shared .align 16 .b8 mc_shared[];
\t// .globl\tmc_u0__k_a
.visible .entry mc_u0__k_a(
\t.param .u64 mc_u0__k_a_param_0
)
.maxntid 64, 1, 1
{
\tld.param.u64 %rd1, [mc_u0__k_a_param_0];
\tld.global.u8 %r1, [table];
\t{ // callseq 0, 0
\tcall.uni (retval0), helper, (param0);
\t} // callseq 0
\tret;
}
.visible .entry mc_u1__k_a(
\t.param .u64 mc_u1__k_a_param_0
)
{
\tst.shared.u32 [mc_shared], %r1;
\tret;
}
.func  (.param .b64 func_retval0) helper(
\t.param .b64 helper_param_0
)
{
\tret;
}
"""
    first, second = nvcc.split_ptx(ptx, ["mc_u0__", "mc_u1__"])
    assert first.startswith(".version 9.0\n.target sm_90\n.address_size 64\n")
    assert ".visible .entry k_a(" in first and "[k_a_param_0]" in first and "mc_u" not in first
    assert "table[2]" in first and first.count("helper\n(") == 1 and "helper(" in first and "mc_shared" not in first
    assert ".visible .entry k_a(" in second and "mc_shared[]" in second
    assert "table" not in second and "helper" not in second and "ld.param" not in second


# ----------------------------------------------------------------------------------------------
# minicomp dump --emit cuda / ptx
# ----------------------------------------------------------------------------------------------


@needs_nvcc
def test_the_cuda_and_ptx_a_dump_prints():
    target = cuda_target("sm_90")
    source = render_cuda_source(add_2d(), target)
    assert source.text == render_cuda(add_2d()).text
    ptx = cuda_ptx(source, target)
    assert ".target sm_90" in ptx and ".visible .entry k_add(" in ptx and ".maxntid 32, 1, 1" in ptx
