"""Render a program in SIMT form as one CUDA C++ file: a ``__global__`` function per kernel.

``CudaRenderer`` is the CUDA dialect of ``codegen/cstyle.py``'s ``CStyleRenderer``: statements
and expressions read as in C, and CUDA's spellings are its hooks. It renders kernels in the
*SIMT form* that ``fuse_threads`` makes of a GPU schedule (one program per thread)::

    gpu_block.x for b in 0..G:                 extern "C" __global__ void __launch_bounds__(64)
      shared part: f32[2]                      k_row_sum(const float *__restrict__ b_x, float *__restrict__ b_out) {
      gpu_thread.x for t in 0..64:               const int64_t b = (int64_t)blockIdx.x;  /* gpu_block.x in 0..G */
        f32 acc = ...                            __shared__ __align__(16) float b_part[2];
        f32 s = warp_sum(acc)                    const int64_t t = (int64_t)threadIdx.x;  /* gpu_thread.x in 0..64 */
        if t % 32 == 0: part[t / 32] = s         float acc = ...;
        barrier                                  float s = acc;  /* warp_sum over 32 lanes: a butterfly */
        ...                                      s = (s + __shfl_xor_sync(0xffffffffu, s, 16, 32)); ...
                                                 if (((t % 32) == 0)) { b_part[(t / 32)] = s; }
                                                 __syncthreads(); ...

that is: 1-3 directly nested ``gpu_block`` loops, the ``shared`` arrays of a block, 1-3
directly nested ``gpu_thread`` loops, then a body without GPU loops (``simt_form`` checks it;
a kernel not in that form, such as a plain nest no GPU schedule shaped, is a ``CompileError``).
A block or thread loop is not a loop here: its variable is the block's or thread's index, an
``int64_t``, so that index arithmetic is 64-bit throughout (offsets pass 2^31 elements safely).
Each kernel comes with a ``Launch``: its grid (ints, or ``Sym`` sizes to evaluate per call), its
block, the dynamic shared memory it asks for, and the names of its parameters in order.

CUDA's spellings, set here: ``__restrict__`` pointers, ``extern "C" __global__`` kernels with
``__launch_bounds__``, ``__shared__`` arrays (carved from dynamic shared memory when a block
needs more than the 48 KiB a static array may have), ``__syncthreads()`` for a ``Barrier``,
``__shfl_xor_sync`` butterflies for a ``WarpReduce`` (in exactly the order of its docstring),
float16 as ``__half`` (``cuda_fp16.h``) with every operation done in float and rounded once,
as C does with ``_Float16``; serial and parallel loops as plain ``for`` loops and unrolled
ones under ``#pragma unroll``; CUDA's math functions (float32 ``exp`` -> ``expf``).

A ``vectorized`` loop of 2 or 4 lanes (``gpu_threads(lanes=4)``, ``gpu_sgemm(lanes=4)``) whose
accesses to a kernel buffer or a shared array sit at ``base + lane`` with ``base`` a provable
multiple of the lanes (through index scalars declared once: ``index_scalars``) becomes one
vector load per buffer read (``float4``, ``double2``, ``int4``, ``longlong2``: 16 bytes at
most), its body once per lane, and one vector store per buffer written (``vector_loop``);
any other vectorized loop is a plain loop. The vector accesses assume the buffers start on a
16-byte boundary (``VECTOR_ALIGNMENT``): ``Launch.aligned`` names them, minicomp's own
buffers always are, and the runtime copies a misaligned device argument before the launch.

Semantics are NumPy's as in C: the helpers of ``codegen/c.py``'s prelude (floor division,
Python's modulo, NaN-propagating maximum/minimum, integer powers, sign, sigmoid, float-to-int
casts that never hit undefined behaviour, ``mc_index``) are ``__device__ __forceinline__``
functions made from the same templates; int32 ``+ - *`` wrap as NumPy's (through ``uint32_t``;
nvcc has no ``-fwrapv``; int64 arithmetic, which is also every index's, is left as it is). A kernel whose body can hit a NumPy error case (``can_fail``: integer
``x ** y`` with ``y < 0``, an index out of range) takes ``int *mc_status`` last, into which a
failing thread ORs its code (``STATUS_MESSAGES``' codes are bits: 1 | 2 = both happened);
its ``Launch.status`` says so. nvcc contracts ``a * b + c`` into fused multiply-adds by
default (``-fmad=true``), as gcc does in the C build (``-ffp-contract=fast``).

No user text reaches the file unchecked (``cstyle``'s ``Identifiers`` and ``comment_text``),
and a variable never takes a CUDA name (``threadIdx``, ``__syncthreads``, ``half``, ...:
``CUDA_RESERVED``). ``Intrinsic`` statements (the CPU's micro-kernels) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from string import Template

import numpy as np

from ..errors import CompileError
from ..ir.loop_text import print_expr
from ..ir.loops import (BOOL, GPU_LOOPS, INDEX, Allocate, Assign, Barrier, Binary, Block, Buffer, Cast, Const,
                        Declare, For, Intrinsic, Kernel, Load, Size, Stmt, Store, Unary, Var, WarpReduce)
from ..ir.rewrite import (declared_names, free_vars, loaded_buffers, statements, stored_buffers,
                          unconditional_loads)
from ..ir.symbolic import Sym, SymbolicShapeError
from ..target import KiB, Target, cuda_target
from . import c
from .cstyle import (HELPER_SUFFIXES, RESERVED, CStyleRenderer, comment_text, declared_length, function_names,
                     program_sizes)

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)

CUDA_TYPES = {F16: "__half", F32: "float", F64: "double", I32: "int32_t", I64: "int64_t", BOOL: "bool"}
ARRAY_CUDA_TYPES = {**CUDA_TYPES, BOOL: "uint8_t"}  # bool arrays are bytes, as in C and NumPy

#: the most bytes of ``__shared__`` arrays a kernel may declare statically; above, dynamic memory
STATIC_SHARED_LIMIT = 48 * KiB

# C++'s keywords and CUDA's built-in names, types and functions, which a local variable named
# like them would hide (C's RESERVED covers C's keywords, types and libm; names beginning with
# an underscore are never used as they are)
_CPP_KEYWORDS = """alignas alignof and and_eq bitand bitor catch char16_t char32_t char8_t class compl concept
    const_cast consteval constexpr constinit co_await co_return co_yield decltype delete dynamic_cast explicit
    export friend mutable namespace new noexcept not not_eq nullptr operator or or_eq private protected public
    reinterpret_cast requires static_assert static_cast template this thread_local throw try typeid typename
    using virtual wchar_t xor xor_eq std""".split()
_CUDA_NAMES = """threadIdx blockIdx blockDim gridDim warpSize dim3 half half2 nv_bfloat16 nv_bfloat162
    atomicAdd atomicSub atomicOr atomicAnd atomicXor atomicMax atomicMin atomicExch atomicCAS atomicInc atomicDec
    min max fminf fmaxf fmin fmax rsqrtf rsqrt fmaf fma exp2f exp2 printf assert malloc free memcpy memset
    clock clock64 uint ushort ulong longlong ulonglong uchar""".split()
_VECTOR_TYPES = [f"{base}{n}" for base in ("char", "uchar", "short", "ushort", "int", "uint", "long", "ulong",
                                           "longlong", "ulonglong", "float", "double") for n in (1, 2, 3, 4)]
CUDA_RESERVED = RESERVED | frozenset(_CPP_KEYWORDS + _CUDA_NAMES + _VECTOR_TYPES)

# float32's spellings of the math functions (float64's keep their names: exp, tanh)
_MATH_F32 = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "tanh": "tanhf", "sin": "sinf",
             "cos": "cosf", "floor": "floorf", "ceil": "ceilf", "erf": "erff"}

PRELUDE = """\
#ifndef MC_CUDA_PRELUDE
#define MC_CUDA_PRELUDE
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#define MC_ERR_NEGATIVE_POWER 1
#define MC_ERR_INDEX 2
/* a kernel hit a NumPy error case: OR its code into the launch's status (any thread may) */
__device__ __forceinline__ void mc_fail(int *status, int code) { atomicOr(status, code); }
/* an index into an axis of n >= 1 elements: negatives count from the end; out of range fails
   and gives 0, so that the load it feeds never leaves the buffer */
__device__ __forceinline__ int64_t mc_index_i64(int64_t i, int64_t n, int *status) {
  if (i < 0) i += n;
  if (i < 0 || i >= n) { mc_fail(status, MC_ERR_INDEX); return 0; }
  return i;
}
/* the lanes of this thread's group of `width` consecutive lanes of its warp: the mask of a
   shuffle among them (all 32 when width is 32) */
__device__ __forceinline__ unsigned mc_group_mask(int width) {
  if (width == 32) return 0xffffffffu;
  unsigned lane = (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u;
  return ((1u << width) - 1u) << (lane & ~(unsigned)(width - 1));
}
"""
PRELUDE_END = "#endif  /* MC_CUDA_PRELUDE */\n"


def _device(template: Template) -> Template:
    """One of ``codegen/c.py``'s helper templates with its functions made CUDA device functions."""
    return Template(template.template.replace("static inline", "__device__ __forceinline__"))


def prelude() -> str:
    """What every CUDA file starts with: includes, status codes and the NumPy-meaning helpers,
    the same as C's (``codegen/c.py``'s templates) as ``__device__`` functions, in an include
    guard so that several files can be compiled as one (``runtime/nvcc.py``'s ``compile_many``)."""
    float_helpers, int_helpers = _device(c._FLOAT_HELPERS), _device(c._INT_HELPERS)
    parts = [PRELUDE,
             float_helpers.substitute(T="float", S="f32", F="f"),
             float_helpers.substitute(T="double", S="f64", F=""),
             int_helpers.substitute(T="int32_t", S="i32", LIMIT="2147483648.0", MAX="INT32_MAX"),
             int_helpers.substitute(T="int64_t", S="i64", LIMIT="9223372036854775808.0", MAX="INT64_MAX"),
             PRELUDE_END]
    return "".join(parts)


# -- what the host needs to launch a kernel ---------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """How to launch one kernel of a ``CudaSource``.

    ``function``: its name in the module (``k_add``); ``grid``: blocks along x, y, z, each an
    int or a ``Sym`` (evaluate with the call's sizes: ``minicomp.ir.symbolic.evaluate``; a grid
    with a 0 launches nothing); ``block``: threads along x, y, z; ``shared_bytes``: the dynamic
    shared memory to ask for (0 when the kernel's ``__shared__`` arrays are static, above 48 KiB
    the runtime must first raise the function's ``MAX_DYNAMIC_SHARED_SIZE_BYTES``); ``params``:
    the kernel's parameters in order, buffer names (``Buffer.name`` of the program's parameters
    and workspace buffers) then size symbols (``T``: an ``int64_t``); ``status``: whether an
    ``int *`` to the call's status follows them (zeroed before the call; nonzero after it is
    the OR of the codes of ``codegen/c.py``'s ``STATUS_MESSAGES`` that happened); ``aligned``:
    the buffers (names among ``params``) the kernel reads or writes with vector accesses
    (``float4``: ``vector_loop``), whose addresses must be multiples of ``VECTOR_ALIGNMENT``
    bytes: the runtime checks and copies a misaligned argument to an aligned buffer first.
    """

    function: str
    grid: tuple
    block: tuple[int, int, int]
    shared_bytes: int = 0
    params: list[str] = field(default_factory=list)
    status: bool = False
    aligned: tuple[str, ...] = ()

    @property
    def threads(self) -> int:
        """Threads per block."""
        return self.block[0] * self.block[1] * self.block[2]


@dataclass(frozen=True)
class CudaSource:
    """What ``render_cuda`` makes: one self-contained ``.cu`` file (``text``) and a ``Launch``
    per kernel, in program order. ``str`` is the text."""

    text: str
    launches: list[Launch]

    def __str__(self) -> str:
        return self.text


# -- the SIMT form ---------------------------------------------------------------------------------


@dataclass
class SimtKernel:
    """A kernel in SIMT form, taken apart: its block loops and thread loops (outermost first),
    the block's shared arrays, and what each thread runs."""

    blocks: list[For]
    shared: list[Buffer]
    threads: list[For]
    body: Stmt

    def extents(self, loops: list[For]) -> tuple:
        """The extents of ``loops`` by axis x, y, z (1 for an axis no loop has)."""
        by_axis = {loop.axis: loop.extent for loop in loops}
        return tuple(by_axis.get(axis, 1) for axis in ("x", "y", "z"))

    @property
    def thread_count(self) -> int:
        return int(np.prod(self.extents(self.threads)))


def _single(s: Stmt) -> Stmt:
    """``s`` without the ``Block`` s of one statement around it."""
    while isinstance(s, Block) and len(s.stmts) == 1:
        s = s.stmts[0]
    return s


def _chain(s: Stmt, kind: str) -> tuple[list[For], Stmt]:
    """The directly nested loops of ``kind`` at the top of ``s`` (outermost first), and what is inside."""
    loops = []
    s = _single(s)
    while isinstance(s, For) and s.kind == kind:
        loops.append(s)
        s = _single(s.body)
    return loops, s


def simt_form(kernel: Kernel, target: Target | None = None) -> SimtKernel:
    """``kernel`` taken apart as SIMT form (see the module docstring), or a ``CompileError``
    naming the kernel and what is missing: a GPU schedule (no block loops), ``fuse_threads``
    (block-level statements besides shared arrays), thread counts or shared memory beyond
    ``target`` (default ``cuda_target()``), an intrinsic.

        gpu_block.x for b: [shared part; gpu_thread.x for t: body]  ->  SimtKernel([b], [part], [t], body)
    """
    target = target or cuda_target()
    name = kernel.name
    blocks, inside = _chain(kernel.body, "gpu_block")
    if not blocks:
        raise CompileError(f"kernel {name} is not in SIMT form: it has no gpu_block loop at the top, so it "
                           "needs a GPU schedule (minicomp.schedules.gpu) and fuse_threads before the CUDA "
                           "renderer can run it")
    stmts = inside.stmts if isinstance(inside, Block) else [inside]
    shared = [s.buffer for s in stmts if isinstance(s, Allocate) and s.scope == "shared"]
    rest = [s for s in stmts if not (isinstance(s, Allocate) and s.scope == "shared")]
    threads, body = _chain(rest[0], "gpu_thread") if len(rest) == 1 else ([], None)
    if not threads:
        raise CompileError(f"kernel {name} is not in SIMT form: inside its block loops it needs the shared "
                           "arrays and then one chain of gpu_thread loops, nothing else (run fuse_threads on "
                           "the GPU schedule's thread-serial form)")
    _check_axes(name, blocks, "block")
    _check_axes(name, threads, "thread")
    for s in statements(body):
        if isinstance(s, For) and s.kind in GPU_LOOPS:
            raise CompileError(f"kernel {name}: a {s.kind} loop ({s.var.name}) inside its thread loops; "
                               "SIMT form has them all at the top")
        if isinstance(s, Allocate) and s.scope == "shared":
            raise CompileError(f"kernel {name}: shared array {s.buffer.name} is allocated inside the thread "
                               "loops; a block's shared arrays come before them")
        if isinstance(s, Intrinsic):
            raise CompileError(f"kernel {name}: the CUDA renderer has no intrinsic {s.fn} (the CPU's "
                               "micro-kernels); schedule the kernel for the GPU instead")
    form = SimtKernel(blocks, shared, threads, body)
    if any(isinstance(loop.extent, Sym) for loop in threads):
        raise CompileError(f"kernel {name}: a thread loop has a symbolic extent; a block's threads are fixed")
    if not 1 <= form.thread_count <= target.max_threads_per_block:
        raise CompileError(f"kernel {name}: {form.thread_count} threads per block; {target} allows 1 to "
                           f"{target.max_threads_per_block}")
    _check_grid(name, form.extents(blocks))
    _check_shared(name, shared, target)
    return form


def _check_axes(name: str, loops: list[For], what: str) -> None:
    axes = [loop.axis for loop in loops]
    if len(set(axes)) != len(axes) or not set(axes) <= {"x", "y", "z"}:
        raise CompileError(f"kernel {name}: its {what} loops are bound to axes {axes}; each of x, y, z at most once")


def _check_grid(name: str, grid: tuple) -> None:
    """Grids of at most 2^31 - 1 blocks along x and 65535 along y and z (CUDA's limits)."""
    for axis, extent, limit in zip("xyz", grid, (2**31 - 1, 65535, 65535)):
        if not isinstance(extent, Sym) and extent > limit:
            raise CompileError(f"kernel {name}: {extent} blocks along {axis}; CUDA allows at most {limit}")


def shared_layout(buffers: list[Buffer]) -> tuple[dict[Buffer, int], int]:
    """Each shared array's byte offset in the block's shared memory (16-byte aligned), and the total."""
    offsets, total = {}, 0
    for buffer in buffers:
        offsets[buffer] = total
        total += -(-buffer.size * buffer.dtype.itemsize // 16) * 16
    return offsets, total


def _check_shared(name: str, buffers: list[Buffer], target: Target) -> None:
    for buffer in buffers:
        if isinstance(buffer.size, Sym):
            raise CompileError(f"kernel {name}: shared array {buffer.name} has a symbolic size ({buffer.size}); "
                               "a block's shared memory is fixed")
    total = shared_layout(buffers)[1]
    if total > target.shared_bytes:
        raise CompileError(f"kernel {name}: {total} bytes of shared memory per block; {target} has "
                           f"{target.shared_bytes}")


# -- vectorized loops: which accesses become vector loads and stores ---------------------------------

#: (element dtype, lanes) -> CUDA's vector type of that many elements (at most 16 bytes)
VECTOR_TYPES = {(F32, 2): "float2", (F32, 4): "float4", (F64, 2): "double2", (I32, 2): "int2", (I32, 4): "int4",
                (I64, 2): "longlong2"}
LANE_FIELDS = "xyzw"
#: the alignment, in bytes, of the buffers a kernel accesses with vector loads and stores
VECTOR_ALIGNMENT = 16


@dataclass
class VectorPlan:
    """The vector accesses of one vectorized loop: ``loads``/``stores`` by key (buffer, base
    text) -> (an access, its vector type, its base index), and each ``Load``'s or top-level
    ``Store``'s ``id`` -> its key."""

    loads: dict = field(default_factory=dict)
    load_keys: dict = field(default_factory=dict)
    stores: dict = field(default_factory=dict)
    store_keys: dict = field(default_factory=dict)


@dataclass(frozen=True)
class VectorLanes:
    """The lane of a vectorized loop being rendered: its variable's name, its number, and the
    vector variable of each vector-loaded ``Load`` (by ``id``)."""

    var: str
    lane: int
    loads: dict


def _stmts(s: Stmt) -> list[Stmt]:
    return [x for sub in s.stmts for x in _stmts(sub)] if isinstance(s, Block) else [s]


def lane_base(index, lane: str):
    """``base`` if ``index`` is ``base + lane`` (terms of ``+`` in any order, the lane
    variable nowhere else), else None."""
    terms = _plus_terms(index)
    mine = [t for t in terms if isinstance(t, Var) and t.name == lane]
    rest = [t for t in terms if not (isinstance(t, Var) and t.name == lane)]
    if len(mine) != 1 or any(lane in free_vars(t) for t in rest):
        return None
    base = rest[0] if rest else Const(0)
    for term in rest[1:]:
        base = Binary("+", base, term, INDEX)
    return base


def _plus_terms(e) -> list:
    if isinstance(e, Binary) and e.op == "+" and e.dtype == INDEX:
        return _plus_terms(e.a) + _plus_terms(e.b)
    return [e]


def multiple_of(e, n: int, known: dict | None = None) -> bool:
    """Whether the index ``e`` is a multiple of ``n`` whatever its variables and sizes:
    constants and sizes that ``n`` divides, sums of multiples, products with one, remainders
    of one by one (``(q % 2048) * 4``, ``b*1024 + t*4``, ``4*T``), and scalars whose one
    value ``known`` gives (``index_scalars``) is one (``n0`` of ``n0 = (b % 32)*128``)."""
    known = known or {}
    if isinstance(e, Var) and e.name in known:
        return multiple_of(known[e.name], n, known)
    if isinstance(e, Const):
        return int(e.value) % n == 0
    if isinstance(e, Size):
        try:
            return e.value % n == 0  # a Sym: exactly when n divides every term
        except SymbolicShapeError:
            return False
    if isinstance(e, Binary) and e.dtype == INDEX:
        if e.op in ("+", "-"):
            return multiple_of(e.a, n, known) and multiple_of(e.b, n, known)
        if e.op == "*":
            return multiple_of(e.a, n, known) or multiple_of(e.b, n, known)
        if e.op == "%":
            return multiple_of(e.a, n, known) and multiple_of(e.b, n, known)
    return False


def index_scalars(body: Stmt) -> dict:
    """The index scalars of ``body`` that have one value throughout: name -> the value of
    its ``Declare``, for each name declared exactly once (no loop, scalar or warp reduce of
    that name elsewhere) and never assigned. ``multiple_of`` reads through them::

        i64 n0 = (b % 32) * 128;  ...  y[i0*4096 + n0 + tx*4 + v]   ->   {"n0": (b % 32) * 128}
    """
    counts: dict[str, int] = {}
    values, assigned = {}, set()
    for s in statements(body):
        if isinstance(s, (For, Declare, WarpReduce)):
            counts[s.var.name] = counts.get(s.var.name, 0) + 1
        if isinstance(s, Declare) and s.var.dtype == INDEX:
            values[s.var.name] = s.init
        if isinstance(s, Assign):
            assigned.add(s.var.name)
    return {name: value for name, value in values.items() if counts[name] == 1 and name not in assigned}


def vector_plan(loop: For, kernel: Kernel | None, shared: list[Buffer] = (),
                known: dict | None = None) -> VectorPlan | None:
    """Which accesses of a vectorized loop become vector loads and stores, or None to render
    it as a plain loop: a loop of 2 or 4 lanes whose body is straight-line code (stores,
    scalars, ifs), touches no buffer it also writes nor one that aliases another, and has at
    least one access to a kernel buffer or one of the block's ``shared`` arrays (16-byte
    aligned, as ``shared_array`` declares them) at ``base + lane`` with ``base`` a multiple
    of the lanes (``multiple_of``, through the ``known`` scalars of ``index_scalars``) and a
    vector type for its dtype (``VECTOR_TYPES``). Loads are
    vectorised where every lane runs them (``unconditional_loads``), stores where they are
    top-level statements of the body, alone in writing their buffer."""
    lanes, var = loop.extent, loop.var.name
    if not isinstance(lanes, int) or lanes not in (2, 4) or kernel is None:
        return None
    body = loop.body
    inside = list(statements(body))
    if any(isinstance(sub, (For, WarpReduce, Barrier, Allocate, Intrinsic)) for sub in inside):
        return None
    read, written = loaded_buffers(body), stored_buffers(body)
    params = set(kernel.params)
    if read & written or (read | written) & set(kernel.aliases):
        return None
    plan = VectorPlan()
    declared = declared_names(body)

    def vector_access(buffer, index):
        vtype = VECTOR_TYPES.get((buffer.dtype, lanes))
        if vtype is None or (buffer not in params and buffer not in shared):
            return None
        base = lane_base(index, var)
        if base is None or not multiple_of(base, lanes, known) or free_vars(base) & declared:
            return None
        return vtype, base

    for load in unconditional_loads(body):  # (not those under an if: only what every lane reads)
        found = vector_access(load.buffer, load.index)
        if found is not None:
            key = (load.buffer, print_expr(found[1]))
            plan.loads.setdefault(key, (load, *found))
            plan.load_keys[id(load)] = key
    top = _stmts(body)
    for store in (sub for sub in top if isinstance(sub, Store)):
        found = vector_access(store.buffer, store.index)
        others = [sub for sub in inside if isinstance(sub, Store) and sub.buffer is store.buffer]
        if found is None or any(other not in top or vector_access(other.buffer, other.index) is None
                                or print_expr(vector_access(other.buffer, other.index)[1]) != print_expr(found[1])
                                for other in others):
            continue
        key = (store.buffer, print_expr(found[1]))
        plan.stores.setdefault(key, (store, *found))
        plan.store_keys[id(store)] = key
    return plan if plan.loads or plan.stores else None


# -- the renderer ----------------------------------------------------------------------------------


class CudaRenderer(CStyleRenderer):
    """Loop IR in SIMT form -> CUDA C++: ``CStyleRenderer`` with CUDA's spellings (module docstring)."""

    types = CUDA_TYPES
    array_types = ARRAY_CUDA_TYPES
    restrict = "__restrict__"
    kernel_prefix = 'extern "C" __global__ void'
    math_functions = {F32: _MATH_F32}
    reserved = CUDA_RESERVED

    def __init__(self, target: Target | None = None, indent: str = "  "):
        super().__init__(indent)
        self.target = target or cuda_target()
        self.form: SimtKernel | None = None  # the kernel being rendered, taken apart
        self.shared_offsets: dict[Buffer, int] = {}  # its shared arrays' offsets, when dynamic
        self.launches: dict[Kernel, Launch] = {}
        self.current: Kernel | None = None  # the kernel being rendered
        self.aligned: set[str] = set()  # the buffers it accesses with vector loads and stores
        self.vectors = 0  # the vector variables it declared so far (mc_vec0, mc_vec1 ...)
        self.lane: VectorLanes | None = None  # inside a vectorized loop: the lane being rendered
        self.known: dict = {}  # its index scalars of one value (``index_scalars``)

    # -- the file --------------------------------------------------------------------------------

    def prelude(self) -> str:
        """The includes, status codes and NumPy-meaning device helpers (``prelude()``)."""
        return prelude()

    def program(self, program) -> str:
        """The whole ``.cu`` file: a comment, the prelude and every kernel (no host code: the
        runtime launches the kernels, as ``launches`` say)."""
        self.functions = function_names(program.kernels)
        self.sizes = program_sizes(program)
        self.launches = {}
        parts = [f"/* generated by minicomp from graph '{comment_text(program.graph.name)}' */", self.prelude()]
        parts += self.kernels(program)
        return "\n\n".join(parts) + "\n"

    def kernel(self, k: Kernel) -> str:
        """One kernel as a ``__global__`` function (``simt_form`` must accept it); its ``Launch``
        goes to ``launches[k]``."""
        form = self.form = simt_form(k, self.target)
        self.current, self.aligned, self.vectors = k, set(), 0
        self.known = index_scalars(k.body)
        offsets, total = shared_layout(form.shared)
        self.shared_offsets = offsets if total > STATIC_SHARED_LIMIT else {}
        text = super().kernel(k)
        function = self.functions.get(k) or function_names([k])[k]
        self.launches[k] = Launch(function, form.extents(form.blocks), form.extents(form.threads),
                                  total if self.shared_offsets else 0,
                                  [b.name for b in k.params] + list(self.sizes), "mc_status" in self.kernel_uses[k],
                                  tuple(b.name for b in k.params if b.name in self.aligned))
        return text

    def kernel_signature(self, k: Kernel, function: str, params: list[str]) -> str:
        """``extern "C" __global__ void __launch_bounds__(256) k_add(...) {``: at most the block's threads."""
        return f"{self.kernel_prefix} __launch_bounds__({self.form.thread_count}) {function}({', '.join(params)}) {{"

    def entry(self, program) -> str:
        """No host entry point in CUDA: ``minicomp.runtime.cuda`` launches the kernels."""
        raise CompileError("a CUDA file has no host entry point; the runtime launches each kernel (Launch)")

    # -- blocks, threads, shared memory, synchronisation -----------------------------------------

    def bound_loop(self, loop: For, depth: int) -> list[str]:
        """A block or thread loop is this block's or thread's index, as an ``int64_t``:
        ``const int64_t b = (int64_t)blockIdx.x;  /* gpu_block.x in 0..6 */``, then its body."""
        pad = self.indent * depth
        extent = comment_text(str(loop.extent))
        lines = [f"{pad}const {self.types[INDEX]} {self.var(loop.var)} = ({self.types[INDEX]}){GPU_LOOPS[loop.kind]}."
                 f"{loop.axis};  /* {loop.kind}.{loop.axis} in 0..{extent} */"]
        if loop is self.form.blocks[-1] and self.shared_offsets:
            lines.append(f"{pad}extern __shared__ __align__(16) unsigned char mc_shared[];  /* the block's "
                         f"{shared_layout(self.form.shared)[1]} bytes of shared memory */")
        return lines + self.stmt(loop.body, depth)

    def shared_array(self, buffer: Buffer) -> str:
        """``__shared__ __align__(16) float b_part[64];``, or, when the block's shared arrays pass
        48 KiB, a pointer into its dynamic shared memory: ``float *b_part = (float *)(mc_shared + 256);``."""
        ctype = self.array_types[buffer.dtype]
        if buffer in self.shared_offsets:
            return (f"{ctype} *{self.name(buffer)} = ({ctype} *)(mc_shared + {self.shared_offsets[buffer]});"
                    f"  /* [{buffer.size}] */")
        return f"__shared__ __align__(16) {ctype} {self.name(buffer)}[{declared_length(buffer)}];"

    def barrier_statement(self, s: Barrier, depth: int) -> list[str]:
        """``__syncthreads();``."""
        return [self.indent * depth + "__syncthreads();"]

    def warp_reduce_statement(self, s: WarpReduce, depth: int) -> list[str]:
        """The butterfly of ``WarpReduce``'s docstring, one ``__shfl_xor_sync`` a line::

            float s = acc;  /* warp_sum of acc over 32 lanes: a butterfly */
            s = (s + __shfl_xor_sync(0xffffffffu, s, 16, 32));   ... offsets 8, 4, 2, 1

        ``combine(own, other)`` as the loop interpreter does: ``+``, ``mc_maximum``, ``mc_minimum``
        (NaN-propagating); float16 is combined in float and rounded to ``__half`` at each step.
        """
        pad, dtype, width = self.indent * depth, s.var.dtype, s.width
        if dtype not in (F16, F32, F64, I32, I64) or s.combiner not in ("sum", "max", "min"):
            raise CompileError(f"a warp reduce {s.combiner} of {dtype} (sum, max or min of float16, float32, "
                               "float64, int32 or int64)")
        if width < 1 or width > 32 or width & (width - 1):
            raise CompileError(f"a warp reduce over {width} lanes (a power of two up to 32)")
        v = self.var(s.var)
        lines = [f"{pad}{self.types[dtype]} {v} = {self.expr(s.value)};  /* warp_{s.combiner} of "
                 f"{width} lanes: a butterfly */"]
        mask = "0xffffffffu" if width == 32 else f"mc_group_mask({width})"
        offset = width // 2
        while offset:
            other = f"__shfl_xor_sync({mask}, {v}, {offset}, {width})"
            lines.append(f"{pad}{v} = {self.combine(s.combiner, dtype, v, other)};")
            offset //= 2
        return lines

    def combine(self, combiner: str, dtype: np.dtype, a: str, b: str) -> str:
        """The text of ``combine(a, b)`` for a warp reduce (float16: in float, rounded once)."""
        if dtype == F16:
            inner = self.combine(combiner, F32, f"__half2float({a})", f"__half2float({b})")
            return f"__float2half_rn({inner})"
        if combiner == "sum":
            if dtype == I32:
                return f"((int32_t)((uint32_t){a} + (uint32_t){b}))"
            return f"({a} + {b})"
        helper = "mc_maximum" if combiner == "max" else "mc_minimum"
        return f"{helper}_{HELPER_SUFFIXES[dtype]}({a}, {b})"

    # -- loops: all plain on a GPU thread, except vectorized ones with aligned accesses -------------

    def unrolled_loop_prefix(self, loop: For) -> list[str]:
        """``#pragma unroll``."""
        return ["#pragma unroll"]

    def stmt(self, s: Stmt, depth: int) -> list[str]:
        """As C's; a vectorized loop with aligned unit-stride accesses is ``vector_loop``."""
        if isinstance(s, For) and s.kind == "vectorized":
            plan = vector_plan(s, self.current, self.form.shared, self.known)
            if plan is not None:
                return self.vector_loop(s, plan, depth)
        return super().stmt(s, depth)

    def vector_loop(self, loop: For, plan: "VectorPlan", depth: int) -> list[str]:
        """A vectorized loop of 2 or 4 lanes as one vector load per buffer it reads at
        ``base + lane`` (``base`` a multiple of the lanes), its body once per lane, and one
        vector store per buffer it writes so::

            vectorized for v in 0..4:          {  /* vectorized for v in 0..4: ... */
              y[q*4 + v] = x[q*4 + v] * 2        const float4 mc_vec0 = *reinterpret_cast<const float4 *>(&b_x[(q * 4)]);
                                                 float4 mc_vec1;
                                                 mc_vec1.x = (mc_vec0.x * 2.0f);  ... .y, .z, .w
                                                 __stwb(reinterpret_cast<float4 *>(&b_y[(q * 4)]), mc_vec1);
                                               }

        The store is CUDA's ``__stwb`` (a store with the default write-back caching, as ``=``
        is), since nvcc sometimes splits a ``float4`` assignment into 4 scalar stores; into a
        shared array (``__stwb`` stores to global memory) a ``float4`` assignment.
        """
        pad, inner = self.indent * depth, self.indent * (depth + 1)
        names: dict[tuple, str] = {}
        lines = [f"{pad}{{  /* vectorized for {comment_text(loop.var.name)} in 0..{loop.extent}: vector loads "
                 f"and stores of aligned elements */"]
        loads_ = {}
        for key, (load, vtype, base) in plan.loads.items():
            name = names[key] = self.vector_name()
            lines.append(f"{inner}const {vtype} {name} = *reinterpret_cast<const {vtype} *>(&{self.name(load.buffer)}"
                         f"[{self.expr(base)}]);")
            self.aligned.add(load.buffer.name)
        for load_id, key in plan.load_keys.items():
            loads_[load_id] = names[key]
        stores = {}
        for key, (store, vtype, base) in plan.stores.items():
            name = names[key] = self.vector_name()
            lines.append(f"{inner}{vtype} {name};")
            self.aligned.add(store.buffer.name)
        for store_id, key in plan.store_keys.items():
            stores[store_id] = names[key]
        body = _stmts(loop.body)
        scoped = any(isinstance(sub, Declare) for sub in body)
        for lane in range(loop.extent):
            self.lane = VectorLanes(loop.var.name, lane, loads_)
            try:
                lane_lines = []
                at = depth + 1 + scoped
                for sub in body:
                    if id(sub) in stores:
                        lane_lines.append(f"{self.indent * at}{stores[id(sub)]}.{LANE_FIELDS[lane]} = "
                                          f"{self.expr(sub.value)};")
                    else:
                        lane_lines += self.stmt(sub, at)
            finally:
                self.lane = None
            lines += [f"{inner}{{  /* lane {lane} */", *lane_lines, f"{inner}}}"] if scoped else lane_lines
        for key, (store, vtype, base) in plan.stores.items():  # (__stwb: a plain store, never split in 4)
            address = f"reinterpret_cast<{vtype} *>(&{self.name(store.buffer)}[{self.expr(base)}])"
            if store.buffer in self.form.shared:  # (__stwb is a global store: st.global.wb)
                lines.append(f"{inner}*{address} = {names[key]};")
            else:
                lines.append(f"{inner}__stwb({address}, {names[key]});")
        return lines + [pad + "}"]

    def vector_name(self) -> str:
        """A fresh vector variable of the kernel: ``mc_vec0``, ``mc_vec1`` ... (no IR name
        renders as ``mc_...``: ``cstyle.Identifiers``)."""
        self.vectors += 1
        return f"mc_vec{self.vectors - 1}"

    # -- expressions with CUDA's types ----------------------------------------------------------

    def expr(self, e) -> str:
        """As C's, except int32 ``+ - *`` and negation wrap as NumPy's (through ``uint32_t``);
        inside a vectorized loop rendered lane by lane, its variable is the lane's number and a
        vector-loaded element the lane's field (``mc_vec0.y``)."""
        if self.lane is not None:
            if isinstance(e, Var) and e.name == self.lane.var:
                return str(self.lane.lane)
            if isinstance(e, Load) and id(e) in self.lane.loads:
                return f"{self.lane.loads[id(e)]}.{LANE_FIELDS[self.lane.lane]}"
        if isinstance(e, Binary) and e.dtype == I32 and e.op in ("+", "-", "*"):
            return f"((int32_t)((uint32_t){self.expr(e.a)} {e.op} (uint32_t){self.expr(e.b)}))"
        if isinstance(e, Unary) and e.dtype == I32 and e.op == "-":
            return f"((int32_t)(0u - (uint32_t){self.expr(e.a)}))"
        return super().expr(e)

    def literal(self, value, dtype: np.dtype) -> str:
        """C's exact literals; a float16 one is its float value rounded (exactly): ``__float2half_rn(1.5f)``."""
        if dtype == F16:
            return f"__float2half_rn({super().literal(value, F32)})"
        return super().literal(value, dtype)

    def cast(self, e: Cast) -> str:
        """C's conversions (``cstyle``), with float16 through float: ``__half2float(h)`` first
        when converting from it; to it, the conversion that rounds once (``__float2half_rn``,
        ``__double2half``, ``__int2half_rn``, ``__ll2half_rn``)."""
        src, dst = e.a.dtype, e.dtype
        if src == F16 and dst == F16:
            return self.expr(e.a)
        if src == F16:
            inner = f"__half2float({self.expr(e.a)})"
            if dst == BOOL:
                return f"({inner} != 0)"
            if dst.kind in "iu":
                return f"mc_from_f64_{HELPER_SUFFIXES[dst]}((double){inner})"
            return inner if dst == F32 else f"(({self.types[dst]}){inner})"
        if dst == F16:
            inner = self.expr(e.a)
            if src == BOOL:
                return f"__float2half_rn((float){inner})"
            convert = {F32: "__float2half_rn", F64: "__double2half", I32: "__int2half_rn", I64: "__ll2half_rn"}[src]
            return f"{convert}({inner})"
        return super().cast(e)


def render_cuda(program, target: Target | None = None) -> CudaSource:
    """CUDA source of a program whose kernels are in SIMT form (see the module docstring), for
    ``target`` (default ``cuda_target("sm_90")``), with a ``Launch`` per kernel in order."""
    renderer = CudaRenderer(target)
    text = renderer.program(program)
    return CudaSource(text, [renderer.launches[k] for k in program.kernels])
