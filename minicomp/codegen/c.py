"""Render a lowered ``Program`` as one C99 (GNU) translation unit.

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
``comment_text``: printable ASCII, other characters escaped, never ``*/``.

``CRenderer`` is a class so that the CUDA renderer can override the few hooks that differ.
"""

from __future__ import annotations

import functools
import math
import re
from string import Template
from typing import Iterable

import numpy as np

from ..errors import CompileError, IndexOutOfBoundsError
from ..ir import intrinsics
from ..ir.loop_text import print_stmt
from ..ir.loops import (BOOL, INDEX, Address, Allocate, If, Intrinsic, Assign, Binary, Block, Buffer, Call, Cast, Const, Declare,
                        Expr, For, Kernel, Load, Select, Size, Stmt, Store, Unary, Var)
from ..ir.loops import GPU_LOOPS, Barrier, WarpReduce
from ..ir.rewrite import statements
from ..ir.schedule import collapsed
from ..ir.symbolic import Sym, shape_symbols
from ..lower.program import PARALLEL_MIN_WORK
from . import gemm  # noqa: F401  (registers the micro-kernel's C with minicomp.ir.intrinsics)
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
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64",
           np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}
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


def can_fail(call: Call) -> bool:
    """Whether the helper ``call`` renders to may hit a NumPy error case (it takes ``mc_status``)."""
    return (call.fn == "mc_pow" and call.dtype.kind in "iu") or call.fn == "mc_index"


def prelude() -> str:
    """The helper functions every generated file starts with."""
    parts = [PRELUDE, vector_math_source()]
    parts.append(_FLOAT_HELPERS.substitute(T="float", S="f32", F="f"))
    parts.append(_FLOAT_HELPERS.substitute(T="double", S="f64", F=""))
    parts.append(_INT_HELPERS.substitute(T="int32_t", S="i32", LIMIT="2147483648.0", MAX="INT32_MAX"))
    parts.append(_INT_HELPERS.substitute(T="int64_t", S="i64", LIMIT="9223372036854775808.0",
                                         MAX="INT64_MAX"))
    return "".join(parts)


# -- names and comments: what the user wrote reaches C only as a checked identifier or a comment --

_SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_C_KEYWORDS = """auto break case char const continue default do double else enum extern float for goto
    if inline int long register restrict return short signed sizeof static struct switch typedef
    union unsigned void volatile while asm typeof bool true false math_errhandling
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t ptrdiff_t""".split()
# libm's functions, which a local variable of that name would hide inside a kernel (as one named
# like a type would hide the type)
_LIBM = {f + suffix for f in ("exp", "log", "sqrt", "tanh", "sin", "cos", "floor", "ceil", "erf", "pow",
                              "fmod", "copysign", "fabs") for suffix in ("", "f")}
RESERVED = frozenset(_C_KEYWORDS) | _LIBM


def mangle(name: str) -> str:
    """``name`` spelled with ``[A-Za-z0-9_]`` only: any other character becomes ``_<hex code>_``.

    ``"x.y"`` -> ``"x_2e_y"``, ``"x\\u00e9"`` -> ``"x_e9_"``; a name made of those already is unchanged.
    """
    return "".join(ch if ch.isascii() and (ch.isalnum() or ch == "_") else f"_{ord(ch):x}_" for ch in name)


def comment_text(text: str) -> str:
    """``text`` made safe to put inside a C ``/* ... */`` comment on one line.

    Printable ASCII is kept; a backslash, control or non-ASCII character is written as Python
    writes it in a string (``\\\\``, ``\\n``, ``\\xe9``, ``\\u2028``), and ``*/`` and ``/*`` get a
    space (``* /``): ``"a.py:3 */ int evil; /*"`` -> ``"a.py:3 * / int evil; / *"``.
    """
    if not (text.isascii() and text.isprintable() and "\\" not in text):
        text = "".join(ch if " " <= ch <= "~" and ch != "\\" else ascii(ch)[1:-1] for ch in text)
    return text.replace("*/", "* /").replace("/*", "/ *")


@functools.lru_cache(maxsize=4096)
def _safe(prefix: str, name: str) -> bool:
    """Whether ``prefix + name`` can be used as it is: ``b_``/``k_`` + ASCII letters, digits and
    underscores, or for a local variable (no prefix) an ASCII identifier that no keyword, type,
    libm function, macro (all capitals) or minicomp name (``mc_``) could mean."""
    if not _SAFE_NAME.fullmatch(name):
        return prefix != "" and re.fullmatch(r"[A-Za-z0-9_]+", name) is not None
    return prefix != "" or not (name in RESERVED or name.startswith("mc_") or name.upper() == name)


class Identifiers:
    """The C identifiers of one scope (the file, a kernel, the entry point), unique within it.

    ``ids.buffers[name]`` is ``b_`` + the buffer's name, ``ids.variables[name]`` a loop
    variable's or local scalar's (no prefix), each a dict from IR name to C identifier, so a
    lookup costs no Python call. A name that is safe as it is keeps its spelling (``add`` ->
    ``b_add``); any other is ``mangle``d (a variable's gets ``v_``); a clash with an identifier
    taken earlier adds a number (``b_x_e9_``, ``b_x_e9__1``). The buffers given to the
    constructor are placed safe ones first, so a mangled name never takes their spelling; a
    name not given there is placed when first asked for (a loop variable named ``b_x`` after
    buffer ``x`` is ``b_x_1``). Distinct names always get distinct identifiers.
    """

    def __init__(self, buffers: Iterable[str] = ()):
        self._taken: set[str] = set()
        self.buffers = _Kind(self, "b_")
        self.variables = _Kind(self, "")
        buffers = list(dict.fromkeys(buffers))
        for name in [b for b in buffers if _safe("b_", b)] + [b for b in buffers if not _safe("b_", b)]:
            self.buffers[name]

    def fresh(self, prefix: str, name: str) -> str:
        """A new identifier for ``name``, even if the name was asked for before."""
        base = prefix + name if _safe(prefix, name) else (prefix or "v_") + mangle(name)
        ident, n = base, 1
        while ident in self._taken:
            ident, n = f"{base}_{n}", n + 1
        self._taken.add(ident)
        return ident


class _Kind(dict):
    """IR name -> C identifier for one kind of name in a scope; placed on first lookup."""

    def __init__(self, scope: Identifiers, prefix: str):
        super().__init__()
        self.scope, self.prefix = scope, prefix

    def __missing__(self, name: str) -> str:
        ident = self[name] = self.scope.fresh(self.prefix, name)
        return ident


def function_names(kernels: list[Kernel]) -> dict[Kernel, str]:
    """Each kernel's C function name, ``k_`` + its name: distinct even where two names are equal."""
    ids = Identifiers()
    readable_first = sorted(kernels, key=lambda k: not _safe("k_", k.name))
    return {k: ids.fresh("k_", k.name) for k in readable_first}


@functools.lru_cache(maxsize=None)
def _check_function(fn: str) -> str:
    """A helper's or intrinsic's name, refused unless it is an identifier (they come from minicomp)."""
    if not _SAFE_NAME.fullmatch(fn):
        raise ValueError(f"not a C function name: {fn!r}")
    return fn


class CRenderer:
    """Loop IR -> C source. Subclasses override ``kernel_signature``, ``loop_header`` etc."""

    def __init__(self, indent: str = "  "):
        self.indent = indent
        self.names = Identifiers()      # the identifiers of the function being rendered
        self.uses: set[str] = set()     # what its body needs: "mc_serial", "mc_status" (added
                                        # by loop_header and expr as they render)
        self.functions: dict[Kernel, str] = {}  # the file's kernel function names
        self.kernel_uses: dict[Kernel, set[str]] = {}  # each rendered kernel's ``uses``
        self.sizes: list[str] = []  # the program's size symbols: parameters of every kernel

    # -- expressions ----------------------------------------------------------------------------

    def expr(self, e: Expr) -> str:
        """C text of an expression (fully parenthesised where precedence could matter)."""
        if isinstance(e, Const):
            return self.literal(e.value, e.dtype)
        if isinstance(e, Var):
            return self.names.variables[e.name]  # (inlined self.var: the hottest path)
        if isinstance(e, Size):
            return self.size(e.value)
        if isinstance(e, Load):
            return f"{self.names.buffers[e.buffer.name]}[{self.expr(e.index)}]"
        if isinstance(e, Binary):
            return f"({self.expr(e.a)} {e.op} {self.expr(e.b)})"
        if isinstance(e, Unary):
            inner = self.expr(e.a)  # a space keeps "-" and "-3" apart: "--3" is a decrement
            return f"({e.op}{' ' if inner[0] in '+-' else ''}{inner})"
        if isinstance(e, Call):
            args = [self.expr(a) for a in e.args]
            if can_fail(e):
                self.uses.add("mc_status")
                args.append("mc_status")
            return f"{self.function_name(e)}({', '.join(args)})"
        if isinstance(e, Cast):
            return self.cast(e)
        if isinstance(e, Select):
            return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"
        if isinstance(e, Address):
            return f"&{self.name(e.buffer)}[{self.expr(e.index)}]"
        raise TypeError(f"cannot render {e!r}")

    def size(self, value) -> str:
        """A size: an int literal, or a symbolic size over the sizes the function receives
        (``768*T`` -> ``(768*mc_size_T)``; every size is an ``int64_t``)."""
        if not isinstance(value, Sym):
            return self.literal(value, INDEX)
        return f"({value.render(size_name)})"

    def literal(self, value, dtype: np.dtype) -> str:
        """An exact C literal: hexadecimal floats, INT*_C for 64-bit integers."""
        if dtype == BOOL:
            return "true" if value else "false"
        if dtype.kind == "f":
            v = float(value)
            if math.isnan(v):
                text = "NAN"
            elif math.isinf(v):
                text = "INFINITY" if v > 0 else "(-INFINITY)"
            else:
                # the shortest decimal that reads back to the same value (C rounds correctly)
                text = repr(v) if dtype == np.float64 else str(np.float32(v)) + "f"
            return f"((_Float16){text})" if dtype == np.float16 else text
        v = int(value)
        if dtype == np.int32:
            return "(-2147483647 - 1)" if v == -2**31 else str(v)
        if v == -2**63:
            return "(-INT64_C(9223372036854775807) - 1)"
        return str(v) if dtype == INDEX and abs(v) < 2**31 else f"INT64_C({v})"

    def function_name(self, call: Call) -> str:
        """``exp`` -> ``expf`` for float32; ``mc_maximum`` -> ``mc_maximum_f32``."""
        _check_function(call.fn)
        if call.fn.startswith("mc_"):
            return f"{call.fn}_{_SUFFIX[call.dtype]}"
        if call.dtype != np.float32:
            return call.fn
        # float32 exp, tanh, erf, log: minicomp's branch-free versions (<= 2 ulp), which gcc
        # vectorises; libm's expf/tanhf are opaque calls that keep the loop scalar.
        return VECTOR_MATH_F32.get(call.fn, _MATH_F32[call.fn])

    def cast(self, e: Cast) -> str:
        src, dst, inner = e.a.dtype, e.dtype, self.expr(e.a)
        if dst == BOOL:
            return f"({inner} != 0)"
        if src.kind == "f" and dst.kind in "iu":
            return f"mc_from_f64_{_SUFFIX[dst]}((double){inner})"
        return f"(({C_TYPES[dst]}){inner})"

    # -- statements -----------------------------------------------------------------------------

    def stmt(self, s: Stmt, depth: int) -> list[str]:
        pad = self.indent * depth
        if isinstance(s, For):
            return self.loop_header(s, depth) + self.stmt(s.body, depth + 1) + [pad + "}"]
        if isinstance(s, Store):
            return [f"{pad}{self.name(s.buffer)}[{self.expr(s.index)}] = {self.expr(s.value)};"]
        if isinstance(s, Declare):
            return [f"{pad}{C_TYPES[s.var.dtype]} {self.var(s.var)} = {self.expr(s.init)};"]
        if isinstance(s, Assign):
            return [f"{pad}{self.var(s.var)} = {self.expr(s.value)};"]
        if isinstance(s, Block):
            return [line for sub in s.stmts for line in self.stmt(sub, depth)]
        if isinstance(s, Allocate):
            ctype = ARRAY_C_TYPES[s.buffer.dtype]
            return [f"{pad}{ctype} {self.name(s.buffer)}[{s.buffer.size}] __attribute__((aligned(64)));"]
        if isinstance(s, If):
            lines = [f"{pad}if ({self.expr(s.cond)}) {{"] + self.stmt(s.then, depth + 1)
            if s.otherwise is not None:
                lines += [f"{pad}}} else {{"] + self.stmt(s.otherwise, depth + 1)
            return lines + [pad + "}"]
        if isinstance(s, Intrinsic):
            return [f"{pad}{_check_function(s.fn)}({', '.join(self.expr(a) for a in s.args)});"]
        if isinstance(s, (Barrier, WarpReduce)):
            raise CompileError(f"the C renderer cannot express '{print_stmt(s, 0)[0]}': threads of a GPU "
                               "block synchronising need the CUDA renderer; the loop interpreter "
                               "(minicomp.testing.loop_interpreter) can run it")
        raise TypeError(f"cannot render {s!r}")

    def loop_header(self, loop: For, depth: int) -> list[str]:
        pad = self.indent * depth
        lines = []
        if loop.kind == "parallel":
            collapse, iterations = "", self.size(loop.extent)
            if collapsed(loop):
                collapse, iterations = " collapse(2)", self.size(loop.extent * loop.body.extent)
            # dynamic: threads take chunks as they go (mc_chunk), so one slowed by a busy core
            # holds nobody up; if: a forked child runs the loop on its one thread
            self.uses.add("mc_serial")
            condition = "!mc_serial"
            if isinstance(loop.extent, Sym):  # threads only when this call's sizes make enough work
                condition += f" && {self.size(nest_work(loop))} >= {PARALLEL_MIN_WORK}"
            lines.append(f"{pad}#pragma omp parallel for schedule(dynamic, mc_chunk({iterations}))"
                         f"{collapse} if({condition})")
        elif loop.kind == "vectorized":
            lines.append(f"{pad}#pragma omp simd")
        elif loop.kind == "unrolled":
            lines.append(f"{pad}#pragma GCC unroll {min(loop.extent, 64)}")
        v = self.var(loop.var)
        header = f"{pad}for (int64_t {v} = 0; {v} < {self.size(loop.extent)}; ++{v}) {{"
        if loop.kind in GPU_LOOPS:  # a loop bound to a GPU axis means a serial loop on a CPU
            header += f"  /* {GPU_LOOPS[loop.kind]}.{loop.axis} */"
        lines.append(header)
        return lines

    # -- kernels and the whole file ---------------------------------------------------------------

    def name(self, buffer: Buffer) -> str:
        """C name of a buffer: ``b_`` + its graph name, so no name clashes with C (``const``, ``exp``)."""
        return self.names.buffers[buffer.name]

    def var(self, var: Var) -> str:
        """C name of a loop variable or local scalar (``i0``, ``acc_max``)."""
        return self.names.variables[var.name]

    def param(self, buffer: Buffer, written: bool, aliased: bool = False) -> str:
        """``const float *restrict b_x``; no ``restrict`` on a buffer aliased in the kernel."""
        qualifier = "" if written else "const "
        pointer = "*" if aliased else "*restrict "
        return f"{qualifier}{ARRAY_C_TYPES[buffer.dtype]} {pointer}{self.name(buffer)}"

    def kernel(self, k: Kernel) -> str:
        """One kernel as a static C function with its source comment.

        Its parameters are its buffers, then ``bool mc_serial`` if it has a parallel loop and
        ``int *mc_status`` if it can fail (see the module docstring).
        """
        self.names, self.uses = Identifiers(b.name for b in k.params), set()
        params = [self.param(b, written=b is k.output or b in k.scratch, aliased=b in k.aliases)
                  for b in k.params]
        body = self.stmt(k.body, 1)
        params += [f"int64_t {size_name(name)}" for name in self.sizes]
        params += ["bool mc_serial"] * ("mc_serial" in self.uses)
        params += ["int *mc_status"] * ("mc_status" in self.uses)
        self.kernel_uses[k] = self.uses
        lines = [f"/* {comment_text(line)} */" for line in k.source]
        # noinline: GCC 12 at -O3 miscompiles some kernels once inlined into the entry point
        # (restrict pointers of two kernels into one workspace, vectorised: wrong values)
        function = self.functions.get(k) or function_names([k])[k]
        lines.append(f"static __attribute__((noinline)) void {function}({', '.join(params)}) {{")
        lines += body
        lines.append("}")
        return "\n".join(lines)

    def program(self, program) -> str:
        """The whole translation unit: prelude, kernels, and the entry point."""
        self.functions = function_names(program.kernels)
        self.sizes = program_sizes(program)
        parts = [f"/* generated by minicomp from graph '{comment_text(program.graph.name)}' */", prelude()]
        parts += intrinsic_sources(intrinsics_used(program.kernels))
        parts += [self.kernel(k) for k in program.kernels]
        parts.append(self.entry(program))
        return "\n\n".join(parts) + "\n"

    def entry(self, program) -> str:
        """``int minicomp_entry(void **args)``: bind parameters and workspace, run every kernel
        (each rendered by ``kernel`` before, which tells what it takes)."""
        if any(k not in self.functions for k in program.kernels):
            self.functions = function_names(program.kernels)
        for k in program.kernels:
            if k not in self.kernel_uses:
                self.kernel(k)
        self.names = Identifiers(b.name for b in [*program.params, *program.workspace])
        lines = [f"int {ENTRY}(void **args) {{"]
        pad = self.indent
        for i, buffer in enumerate(program.params):
            ctype = ARRAY_C_TYPES[buffer.dtype]
            lines.append(f"{pad}{ctype} *{self.name(buffer)} = ({ctype} *)args[{i}];")
        lines.append(f"{pad}char *workspace = (char *)args[{len(program.params)}];")
        for n, name in enumerate(self.sizes):  # dynamic dimensions: the sizes of this call
            lines.append(f"{pad}int64_t {size_name(name)} = ((const int64_t *)args[{len(program.params) + 2}])[{n}];")
        for buffer, offset in program.workspace.items():
            ctype = ARRAY_C_TYPES[buffer.dtype]
            lines.append(f"{pad}{ctype} *{self.name(buffer)} = ({ctype} *)(workspace + {self.size(offset)});")
        lines.append(f"{pad}(void)workspace;")
        uses = [self.kernel_uses[k] for k in program.kernels]
        if any("mc_serial" in u for u in uses):
            lines.append(f"{pad}bool mc_serial = args[{len(program.params) + 1}] != NULL;  "
                         "/* run every loop on this thread */")
        lines.append(f"{pad}int mc_status = 0;  /* this call's: a NumPy error case a kernel hit */")
        for k, k_uses in zip(program.kernels, uses):
            args = [self.name(b) for b in k.params] + [size_name(name) for name in self.sizes]
            args += ["mc_serial"] * ("mc_serial" in k_uses) + ["&mc_status"] * ("mc_status" in k_uses)
            lines.append(f"{pad}{self.functions[k]}({', '.join(args)});")
        lines.append(f"{pad}return mc_status;")
        lines.append("}")
        return "\n".join(lines)


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


def size_name(symbol: str) -> str:
    """The C name of size symbol ``symbol`` (an identifier of ``[A-Za-z0-9_]``): ``mc_size_T``."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", symbol):
        raise ValueError(f"not a size symbol: {symbol!r}")
    return f"mc_size_{symbol}"


def program_sizes(program) -> list[str]:
    """The size symbols of a program's buffers and workspace, sorted: the order of the sizes
    array the entry point receives (``runtime/executable.py`` binds it)."""
    shapes = [b.shape for b in program.params] + [b.shape for b in program.workspace]
    shapes += [b.shape for k in program.kernels for b in k.params]
    return sorted(shape_symbols([d for shape in shapes for d in shape]))


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


def render_c(program) -> str:
    """C source of a lowered program (see the module docstring)."""
    return CRenderer().program(program)
