"""Render a lowered ``Program`` as one C99 (GNU) translation unit, run on the CPU with OpenMP.

The output is meant to be read: one ``static void`` function per kernel, named after its graph
node, with a comment tying it to the user's source line, and one entry point that runs the
kernels in order on the buffers it is given::

    /* %add = add  at model.py:12 */
    static __attribute__((noinline)) void k_add(const float *restrict b_x, const float *restrict b_b,
                                                float *restrict b_add, bool mc_serial) {
      #pragma omp parallel for schedule(dynamic, mc_chunk(4096)) if(!mc_serial)
      for (int64_t i0 = 0; i0 < 4096; ++i0) {
        for (int64_t i1 = 0; i1 < 1024; ++i1) {
          b_add[i0 * 1024 + i1] = b_x[i0 * 1024 + i1] + b_b[i1];
        }
      }
    }

    int minicomp_entry(void **args) { ... k_add(b_x, b_b, b_add, mc_serial); ... return mc_status; }

``CRenderer`` is the C dialect of ``codegen/cstyle.py``'s ``CStyleRenderer``, which renders
statements, expressions, kernels and the entry point for any C-family language and leaves
every spelling to hooks. C's spellings, all set here: C99 type names (bool arrays as
``uint8_t``), ``restrict``, ``static __attribute__((noinline))`` kernels, OpenMP and GCC
pragmas for parallel, vectorised and unrolled loops, 64-byte aligned local arrays, the
prelude of helper functions, ``codegen/vmath.py``'s float32 math, and the register-blocked
matmul micro-kernels of ``codegen/gemm.py``.

The entry point ``int minicomp_entry(void **args)`` reads ``args``: the program's parameters
(``Program.params`` order), the workspace, then one more pointer: NULL, or non-NULL to run
every loop on the calling thread (``mc_serial``: the OpenMP ``if`` clause of each parallel
loop; a process forked after OpenMP started its threads must not use them, see
``runtime/executable.py``), then, for a program with dynamic dimensions, a pointer to the
call's sizes (``int64_t``, in ``program_sizes`` order): every kernel of such a program takes
them as ``int64_t mc_size_<symbol>`` parameters after its buffers, and symbolic extents,
indices and workspace offsets are C expressions of them (``(768*mc_size_T)``). It returns ``mc_status``: 0, or the code of the NumPy error case a
kernel hit (``STATUS_MESSAGES``). The status belongs to the call, a local of the entry point:
only kernels that can fail (integer ``x ** y`` with ``y < 0``, an index out of range) get a pointer to it, and their
threads store into it atomically, so concurrent calls from several threads never see each
other's errors.

Semantics are NumPy's, not C's, wherever the two differ: integer floor division and modulo
(``mc_floordiv``/``mc_mod``, zero divisors give 0), NaN-propagating ``maximum``/``minimum``
that return the second operand on a tie (``maximum(-0.0, 0.0)`` is ``0.0``), float-to-int
casts that never hit C's undefined behaviour, signed overflow that wraps (``-fwrapv``), float16
arithmetic done in float32 and rounded once per op. Floats are written as the shortest decimal
that reads back to the same value, so constants are exact. float32 exp, tanh, erf and log use
the vectorisable implementations of ``codegen/vmath.py``. Every index is an ``int64_t``.
``restrict`` is used because lowering never lets two parameters of a kernel share memory unless
both are only read, or the kernel lists them in ``Kernel.aliases`` (an op computed in place of
its operand, see ``minicomp.passes.memory``): those two are rendered without ``restrict``.

No user text reaches C unchecked. Every name (graph values, buffers, kernels, loop variables)
becomes an identifier of ``[A-Za-z0-9_]`` through ``Identifiers``: a name that already is one
keeps its spelling (``%add`` -> ``b_add``), any other is spelled out (``%x\u00e9`` ->
``b_x_e9_``) and numbered where two would clash. Everything else the user wrote (source lines,
file names, the graph's name) appears only inside ``/* ... */`` comments, through
``comment_text``: printable ASCII, other characters escaped, never ``*/``. (Both live in
``codegen/cstyle.py``, and C's hooks below only ever receive identifiers and rendered text.)
"""

from __future__ import annotations

import math
from string import Template

import numpy as np

from ..errors import CompileError, IndexOutOfBoundsError
from ..ir import intrinsics
from ..ir.affine import affine
from ..ir.loops import INDEX, Block, Buffer, For, If, Intrinsic, Kernel, Load, WarpReduce
from ..ir.rewrite import statements
from ..ir.schedule import collapsed
from ..ir.symbolic import Sym
from ..schedules.cpu import work
from ..schedules.gpu.fuse_threads import flat_thread_index
from . import gemm  # noqa: F401  (registers the micro-kernel's C with minicomp.ir.intrinsics)
from .cstyle import HELPER_SUFFIXES, CStyleRenderer, _check_function, declared_length
from .cstyle import Identifiers, comment_text, program_sizes  # noqa: F401  (also found here, as before)
from .vmath import FUNCTIONS_F32 as VECTOR_MATH_F32
from .vmath import source as vector_math_source

C_TYPES = {
    np.dtype(np.float16): "_Float16", np.dtype(np.float32): "float", np.dtype(np.float64): "double",
    np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t", np.dtype(np.bool_): "bool",
}
# Arrays of bools are declared as bytes (NumPy's bool is one byte holding 0 or 1): gcc 12 does not
# vectorise a loop that branches on a loaded _Bool (attention's mask), but does on a loaded byte.
# Scalars and casts keep C's bool, which turns any nonzero value into 1.
ARRAY_C_TYPES = {**C_TYPES, np.dtype(np.bool_): "uint8_t"}
# libm's float32 functions (float64's keep their names: exp, tanh)
_MATH_F32 = {"exp": "expf", "log": "logf", "sqrt": "sqrtf", "tanh": "tanhf", "sin": "sinf",
             "cos": "cosf", "floor": "floorf", "ceil": "ceilf", "erf": "erff"}

ENTRY = "minicomp_entry"

# NumPy's meanings, once per arithmetic type: $T is the C type, $S its suffix, $F libm's suffix.
_FLOAT_HELPERS = Template("""
static inline $T mc_abs_$S($T x) { return x < 0 ? -x : (x == 0 ? ($T)0 : x); }
static inline $T mc_sign_$S($T x) { return x > 0 ? ($T)1 : (x < 0 ? ($T)-1 : (x == 0 ? ($T)0 : x)); }
static inline $T mc_sigmoid_$S($T x) {          /* never overflows: exp of a non-positive number */
  $T e = exp$F(-(x < 0 ? -x : x));
  return x >= 0 ? ($T)1 / (($T)1 + e) : e / (($T)1 + e);
}
/* as np.maximum/np.minimum: a NaN wins, and on a tie (-0.0 and 0.0) the second operand */
static inline $T mc_maximum_$S($T a, $T b) { return (a > b || a != a) ? a : b; }
static inline $T mc_minimum_$S($T a, $T b) { return (a < b || a != a) ? a : b; }
/* the same, but on a tie the first operand: NumPy's float16 loop, and so its float16 max() */
static inline $T mc_maximum_first_$S($T a, $T b) { return (a >= b || a != a) ? a : b; }
static inline $T mc_minimum_first_$S($T a, $T b) { return (a <= b || a != a) ? a : b; }
static inline $T mc_pow_$S($T a, $T b) { return pow$F(a, b); }
static inline $T mc_mod_$S($T a, $T b) {        /* Python's a % b: the sign of b */
  $T mod = fmod$F(a, b);
  if (b == 0) return mod;
  if (mod != 0) { if ((b < 0) != (mod < 0)) mod += b; }
  else mod = copysign$F(($T)0, b);
  return mod;
}
static inline $T mc_floordiv_$S($T a, $T b) {   /* NumPy's floor_divide, from its divmod */
  if (b == 0) return a / b;
  $T mod = fmod$F(a, b);
  $T div = (a - mod) / b;
  if (mod != 0 && ((b < 0) != (mod < 0))) div -= ($T)1;
  if (div == 0) return copysign$F(($T)0, a / b);
  $T floordiv = floor$F(div);
  if (div - floordiv > ($T)0.5) floordiv += ($T)1;
  return floordiv;
}
""")

_INT_HELPERS = Template("""
static inline $T mc_abs_$S($T x) { return x < 0 ? -x : x; }
static inline $T mc_sign_$S($T x) { return ($T)((x > 0) - (x < 0)); }
static inline $T mc_maximum_$S($T a, $T b) { return a >= b ? a : b; }
static inline $T mc_minimum_$S($T a, $T b) { return a <= b ? a : b; }
static inline $T mc_floordiv_$S($T a, $T b) {   /* rounds toward -inf; x // 0 == 0, as NumPy */
  if (b == 0) return 0;
  if (b == -1) return -a;                       /* wraps for the minimum value, as NumPy */
  $T q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
  return q;
}
static inline $T mc_mod_$S($T a, $T b) {
  if (b == 0 || b == -1) return 0;
  $T r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}
static inline $T mc_pow_$S($T a, $T b, int *status) {  /* by squaring; negative powers fail */
  if (b < 0) { mc_fail(status, MC_ERR_NEGATIVE_POWER); return 0; }
  $T result = 1;
  while (b) { if (b & 1) result *= a; a *= a; b >>= 1; }
  return result;
}
static inline $T mc_from_f64_$S(double x) {     /* NaN, out of range -> the minimum, as NumPy on x86 */
  return (x != x || x >= $LIMIT || x < -$LIMIT) ? ($T)(-$MAX - 1) : ($T)x;
}
""")

PRELUDE = """\
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define MC_ERR_NEGATIVE_POWER 1
#define MC_ERR_INDEX 2
/* a kernel hit a NumPy error case: record it in its call's status (any thread may) */
static inline void mc_fail(int *status, int code) { __atomic_store_n(status, code, __ATOMIC_RELAXED); }
/* an index into an axis of n >= 1 elements: negatives count from the end; out of range fails
   and gives 0, so that the load it feeds never leaves the buffer */
static inline int64_t mc_index_i64(int64_t i, int64_t n, int *status) {
  if (i < 0) i += n;
  if (i < 0 || i >= n) { mc_fail(status, MC_ERR_INDEX); return 0; }
  return i;
}

/* Iterations a thread takes at a time from a parallel loop of n: about an eighth of its share,
   so a thread whose core is busy with another process takes fewer chunks, instead of making
   the others wait for its fixed half at the loop's end. */
static inline int64_t mc_chunk(int64_t n) {
#ifdef _OPENMP
  int64_t chunk = n / (8 * (int64_t)omp_get_max_threads());
#else
  int64_t chunk = n;
#endif
  return chunk > 0 ? chunk : 1;
}
"""

#: mc_status codes -> the error NumPy raises in the same case
STATUS_MESSAGES = {1: "Integers to negative integer powers are not allowed.",
                   2: "an index array holds an index out of bounds for its axis (an integer-array "
                      "index, np.take, np.take_along_axis or a write x[idx] = v)"}
#: mc_status codes whose error is not a plain MinicompRuntimeError
STATUS_ERRORS = {2: IndexOutOfBoundsError}


def prelude() -> str:
    """The helper functions every generated file starts with."""
    parts = [PRELUDE, vector_math_source()]
    parts.append(_FLOAT_HELPERS.substitute(T="float", S="f32", F="f"))
    parts.append(_FLOAT_HELPERS.substitute(T="double", S="f64", F=""))
    parts.append(_INT_HELPERS.substitute(T="int32_t", S="i32", LIMIT="2147483648.0", MAX="INT32_MAX"))
    parts.append(_INT_HELPERS.substitute(T="int64_t", S="i64", LIMIT="9223372036854775808.0",
                                         MAX="INT64_MAX"))
    return "".join(parts)


class CRenderer(CStyleRenderer):
    """Loop IR -> C99 with GNU extensions and OpenMP: ``CStyleRenderer`` with C's spellings."""

    types = C_TYPES
    array_types = ARRAY_C_TYPES
    restrict = "restrict"
    # noinline: GCC 12 at -O3 miscompiles some kernels once inlined into the entry point
    # (restrict pointers of two kernels into one workspace, vectorised: wrong values)
    kernel_prefix = "static __attribute__((noinline)) void"
    # float32 exp, tanh, erf, log: minicomp's branch-free versions (<= 2 ulp), which gcc
    # vectorises; libm's expf/tanhf are opaque calls that keep the loop scalar.
    math_functions = {np.dtype(np.float32): {**_MATH_F32, **VECTOR_MATH_F32}}
    entry_name = ENTRY

    def prelude(self) -> str:
        """The includes, status codes and NumPy-meaning helpers every C file starts with."""
        return prelude()

    def __init__(self, indent: str = "  "):
        super().__init__(indent)
        self.thread_loops: list[For] = []  # the gpu_thread loops around the statement being rendered

    def intrinsic_definitions(self, program) -> list[str]:
        """The intrinsics the program's kernels call (the matmul micro-kernels), after what they
        need once per file (vector types), from the registry (``minicomp.ir.intrinsics``); then
        the warp reduce helpers of a GPU program's thread-serial form, if it has warp reduces."""
        helpers = [warp_helper(combiner, dtype) for combiner, dtype in warp_reduces(program.kernels)]
        return intrinsic_sources(intrinsics_used(program.kernels)) + helpers

    def bound_loop(self, loop: For, depth: int) -> list[str]:
        """As ``CStyleRenderer.bound_loop``; the thread loops around are remembered (a warp
        reduce of the thread-serial form reads them)."""
        if loop.kind != "gpu_thread":
            return super().bound_loop(loop, depth)
        self.thread_loops.append(loop)
        try:
            return super().bound_loop(loop, depth)
        finally:
            self.thread_loops.pop()

    def warp_reduce_statement(self, s: WarpReduce, depth: int) -> list[str]:
        """A warp reduce of the thread-serial form has a C meaning (``warp_reduce``); any
        other is refused, as by ``CStyleRenderer``."""
        if self._serial_warp_reduce(s):
            return self.warp_reduce(s, depth)
        return super().warp_reduce_statement(s, depth)

    def _serial_warp_reduce(self, s: WarpReduce) -> bool:
        """Whether ``s`` is a warp reduce of the thread-serial form: ``buf[e + t]`` reduced, or
        ``buf[t*k + c]`` of a per-thread array of ``k`` values a thread (``_lane_stride``), ``t``
        the flat index of the thread loops around (``buf`` not written in that phase: the form
        guarantees it, ``fuse_threads`` checks it)."""
        if not (self.thread_loops and isinstance(s.value, Load)):
            return False
        form, flat = affine(s.value.index), affine(self._flat_thread() * self._lane_stride(s))
        names = {loop.var.name for loop in self.thread_loops}
        return form is not None and not ((form - flat).names() & names)

    def _flat_thread(self):
        return flat_thread_index(self.thread_loops)

    def _lane_stride(self, s: WarpReduce) -> int:
        """How far apart two neighbouring threads' values of ``s`` lie: ``k`` where its buffer
        holds ``k`` values of each thread (``size = threads x k``) and ``t`` appears in its
        index as ``t*k``; else 1."""
        threads = math.prod(loop.extent for loop in self.thread_loops)
        size = s.value.buffer.size
        if isinstance(size, Sym) or not isinstance(threads, int) or size % threads or size == threads:
            return 1
        k = size // threads
        form, flat = affine(s.value.index), affine(self._flat_thread() * k)
        names = {loop.var.name for loop in self.thread_loops}
        return k if form is not None and not ((form - flat).names() & names) else 1

    def warp_reduce(self, s: WarpReduce, depth: int) -> list[str]:
        """``float r = mc_warp_sum_f32(&b_v[e + t - lane], lane, 32, 1);`` with ``lane = t & 31``:
        this thread's value of the butterfly over its group's ``width`` values (``warp_helper``),
        which lie ``k`` apart in a per-thread array of ``k`` values a thread (``t*k + c``)."""
        stride = self._lane_stride(s)
        lane = f"({self.expr(self._flat_thread())} & {self.literal(s.width - 1, INDEX)})"
        back = lane if stride == 1 else f"{lane} * {self.literal(stride, INDEX)}"
        group = f"&{self.name(s.value.buffer)}[{self.expr(s.value.index)} - {back}]"
        function = f"mc_warp_{s.combiner}_{_helper_suffix(s.var.dtype)}"
        return [f"{self.indent * depth}{self.types[s.var.dtype]} {self.var(s.var)} = "
                f"{function}({group}, {lane}, {s.width}, {self.literal(stride, INDEX)});"]

    def parallel_loop_prefix(self, loop: For) -> list[str]:
        """``#pragma omp parallel for schedule(dynamic, mc_chunk(n)) if(!mc_serial)``, with
        ``collapse(2)`` over a collapsed pair and, for a symbolic extent, a work threshold."""
        collapse, iterations = "", self.size(loop.extent)
        if collapsed(loop):
            collapse, iterations = " collapse(2)", self.size(loop.extent * loop.body.extent)
        # dynamic: threads take chunks as they go (mc_chunk), so one slowed by a busy core
        # holds nobody up; if: a forked child runs the loop on its one thread
        self.uses.add("mc_serial")
        condition = "!mc_serial"
        if isinstance(loop.extent, Sym):  # threads only when this call's sizes make enough work
            condition += f" && {self.size(nest_work(loop))} >= {work.PARALLEL_MIN_WORK}"
        return [f"#pragma omp parallel for schedule(dynamic, mc_chunk({iterations})){collapse} if({condition})"]

    def vectorized_loop_prefix(self, loop: For) -> list[str]:
        """``#pragma omp simd``."""
        return ["#pragma omp simd"]

    def unrolled_loop_prefix(self, loop: For) -> list[str]:
        """``#pragma GCC unroll n`` (GCC unrolls at most 64 times)."""
        return [f"#pragma GCC unroll {min(loop.extent, 64)}"]

    def local_array(self, buffer: Buffer) -> str:
        """``float b_t[64] __attribute__((aligned(64)));``: aligned for the widest vectors."""
        length = declared_length(buffer)
        return f"{self.array_types[buffer.dtype]} {self.name(buffer)}[{length}] __attribute__((aligned(64)));"


def nest_work(loop: For):
    """Iterations of every loop nested in ``loop``, summed over sibling loops, times its own
    extent (a ``Sym`` when a size is symbolic): the work a symbolic parallel loop compares with
    ``PARALLEL_MIN_WORK`` at run time. A row kernel over ``T`` rows of 1024 is about ``3000*T``."""
    return loop.extent * _iterations(loop.body)


def _iterations(stmt) -> int:
    """Statements ``stmt`` runs, counting each loop's iterations (1 for a plain statement)."""
    if isinstance(stmt, For):
        return stmt.extent * _iterations(stmt.body)
    if isinstance(stmt, Block):
        total = sum((_iterations(s) for s in stmt.stmts), 0)
        return total if isinstance(total, Sym) or total else 1
    if isinstance(stmt, If):
        return _iterations(stmt.then) + (_iterations(stmt.otherwise) if stmt.otherwise is not None else 0)
    return 1


def intrinsics_used(kernels: list[Kernel]) -> list[str]:
    """Names of the ``Intrinsic`` routines the kernels call, each once, in order of first use."""
    calls = (s.fn for k in kernels for s in statements(k.body) if isinstance(s, Intrinsic))
    return list(dict.fromkeys(calls))


def intrinsic_sources(names: list[str], language: str = "c") -> list[str]:
    """The definitions of the intrinsics ``names`` in ``language``, from the registry
    (``minicomp.ir.intrinsics``): what they need once per file (vector types), then each routine.
    Raises ``CompileError`` for a name that has no definition or no implementation there."""
    supports, routines = [], []
    for name in names:
        try:
            support, routine = intrinsics.source(_check_function(name), language)
        except LookupError as error:
            raise CompileError(f"cannot emit intrinsic {name}: {error}") from None
        supports += [support] if support else []
        routines.append(routine)
    return list(dict.fromkeys(supports)) + routines


# A warp reduce of the thread-serial form (minicomp.schedules.gpu.fuse_threads), lane by lane: lane
# ``lane`` of the group of ``width`` threads whose values start at ``group``, ``stride`` apart,
# gets the value WarpReduce's butterfly gives it (v = combine(v, v of lane ^ off) for off =
# width/2 ... 1), combined in the same order: v[j] holds the butterfly's value of lane ``lane ^ j`` so far.
_WARP_HELPER = Template("""
static inline $T mc_warp_${C}_$S(const $T *group, int64_t lane, int64_t width, int64_t stride) {
  $T v[32];
  for (int64_t j = 0; j < width; ++j) v[j] = group[(lane ^ j) * stride];
  for (int64_t off = width / 2; off > 0; off /= 2)
    for (int64_t j = 0; j < off; ++j) v[j] = $COMBINE;
  return v[0];
}""")
_WARP_COMBINE = {"sum": "v[j] + v[j + off]", "max": "mc_maximum_$S(v[j], v[j + off])",
                 "min": "mc_minimum_$S(v[j], v[j + off])"}


def warp_helper(combiner: str, dtype) -> str:
    """The C helper ``mc_warp_<combiner>_<suffix>`` that gives one lane's warp reduce value."""
    suffix = _helper_suffix(dtype)
    combine = Template(_WARP_COMBINE[combiner]).substitute(S=suffix)
    return _WARP_HELPER.substitute(T=C_TYPES[np.dtype(dtype)], C=combiner, S=suffix, COMBINE=combine)


def _helper_suffix(dtype) -> str:
    if np.dtype(dtype) not in HELPER_SUFFIXES:
        raise CompileError(f"no warp reduce over {np.dtype(dtype)} values")
    return HELPER_SUFFIXES[np.dtype(dtype)]


def warp_reduces(kernels: list[Kernel]) -> list[tuple[str, object]]:
    """(combiner, dtype) of each kind of warp reduce the kernels hold, in order of first use."""
    found = ((s.combiner, s.var.dtype) for k in kernels for s in statements(k.body) if isinstance(s, WarpReduce))
    return list(dict.fromkeys(found))


def render_c(program) -> str:
    """C source of a lowered program (see the module docstring)."""
    return CRenderer().program(program)
