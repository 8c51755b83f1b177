"""Loop IR -> source text in a language of the C family, each spelling of the language a hook.

Kernels read the same in every language of the C family: a statement per ``Store``, a ``for``
per ``For``, fully parenthesised expressions, a function per kernel; and so does the host entry
point that runs them: it binds the program's buffers from ``void **args`` and calls each kernel.
What differs between languages is spelled in one place each, a class attribute or a short
method of ``CStyleRenderer``, and a language is a subclass that sets them: ``codegen/c.py``'s
``CRenderer`` is C99 with GNU extensions and OpenMP; ``codegen/cuda.py``'s ``CudaRenderer``
overrides the same hooks for CUDA C++.
The hooks, with what C spells there:

* ``types``, ``array_types``: a scalar's and an array element's type (``float``, ``int64_t``;
  an array of bools is ``uint8_t``);
* ``restrict``: the qualifier of a pointer no other parameter aliases (``restrict``);
* ``kernel_prefix``: what precedes a kernel's name (``static __attribute__((noinline)) void``);
* ``math_functions``: libm's functions per dtype (float32 ``exp`` -> ``mc_vexp_f32``);
* ``parallel_loop_prefix``, ``vectorized_loop_prefix``, ``unrolled_loop_prefix``: the lines
  before the ``for`` of a loop of that kind (``#pragma omp parallel for ...``, ``#pragma omp
  simd``, ``#pragma GCC unroll 8``); a serial loop has none;
* ``loop_opening``: how a loop introduces its index (``for (int64_t i0 = 0; i0 < 8; ++i0) {``);
* ``local_array``: an array a kernel allocates (``float b_t[64] __attribute__((aligned(64)));``);
  ``shared_array``: one a GPU block's threads share (C: a local array too);
* ``bound_loop``: a loop bound to a GPU block or thread axis (C: a serial loop; CUDA: the
  index read from ``blockIdx``/``threadIdx``); ``barrier_statement``, ``warp_reduce_statement``:
  the threads of a block synchronising (C refuses a barrier);
* ``kernel_signature``: the line that opens a kernel's function (``kernel_prefix``, the name,
  the parameters); ``reserved``: the names a variable may not take (C's keywords, types, libm);
* ``prelude``, ``intrinsic_definitions``: what a file starts with (``#include``s, the ``mc_*``
  helpers, the matmul micro-kernels the kernels call);
* ``entry_name``, ``entry_signature``, ``entry_bindings``, ``kernel_call``, ``entry_return``:
  the host entry point (``int minicomp_entry(void **args) {``, a local per buffer,
  ``k_add(b_x, b_y);``, ``return mc_status;``).

Kernel text and host glue are apart: ``kernels(program)`` renders the kernels (device code),
``entry(program)`` the entry point (host code), which calls each kernel with what its body
turned out to need (``uses``: ``mc_serial``, ``mc_status``); ``program`` puts a file together.

No user text reaches the output unchecked. Every name (graph values, buffers, kernels, loop
variables) becomes an identifier of ``[A-Za-z0-9_]`` through ``Identifiers``: a name that
already is one keeps its spelling (``%add`` -> ``b_add``), any other is spelled out (``%x\u00e9``
-> ``b_x_e9_``) and numbered where two would clash. Everything else the user wrote (source
lines, file names, the graph's name) appears only inside ``/* ... */`` comments, through
``comment_text``: printable ASCII, other characters escaped, never ``*/``. A hook spells a
buffer or variable through ``name``/``var`` only, so every language keeps both guarantees.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Iterable

import numpy as np

from ..errors import CompileError
from ..ir.loop_text import print_stmt
from ..ir.loops import (BOOL, GPU_LOOPS, INDEX, Address, Allocate, Assign, Barrier, Binary, Block, Buffer, Call, Cast,
                        Const, Declare, Expr, For, If, Intrinsic, Kernel, Load, Select, Size, Stmt, Store, Unary, Var,
                        WarpReduce)
from ..ir.symbolic import Sym, shape_symbols

# the suffix of minicomp's helpers (mc_maximum_f32): one helper per arithmetic type
HELPER_SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64",
                   np.dtype(np.int32): "i32", np.dtype(np.int64): "i64"}


def can_fail(call: Call) -> bool:
    """Whether the helper ``call`` renders to may hit a NumPy error case (it takes ``mc_status``)."""
    return (call.fn == "mc_pow" and call.dtype.kind in "iu") or call.fn == "mc_index"


# -- names and comments: what the user wrote reaches the text only as a checked identifier or a comment --

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
def _safe(prefix: str, name: str, reserved: frozenset = RESERVED) -> bool:
    """Whether ``prefix + name`` can be used as it is: ``b_``/``k_`` + ASCII letters, digits and
    underscores, or for a local variable (no prefix) an ASCII identifier that no keyword, type,
    libm function (``reserved``: the language's), macro (all capitals) or minicomp name (``mc_``)
    could mean."""
    if not _SAFE_NAME.fullmatch(name):
        return prefix != "" and re.fullmatch(r"[A-Za-z0-9_]+", name) is not None
    return prefix != "" or not (name in reserved or name.startswith("mc_") or name.upper() == name)


class Identifiers:
    """The C identifiers of one scope (the file, a kernel, the entry point), unique within it.

    ``ids.buffers[name]`` is ``b_`` + the buffer's name, ``ids.variables[name]`` a loop
    variable's or local scalar's (no prefix), each a dict from IR name to C identifier, so a
    lookup costs no Python call. A name that is safe as it is keeps its spelling (``add`` ->
    ``b_add``); any other is ``mangle``d (a variable's gets ``v_``); a clash with an identifier
    taken earlier adds a number (``b_x_e9_``, ``b_x_e9__1``). The buffers given to the
    constructor are placed safe ones first, so a mangled name never takes their spelling; a
    name not given there is placed when first asked for (a loop variable named ``b_x`` after
    buffer ``x`` is ``b_x_1``). Distinct names always get distinct identifiers. ``reserved``:
    the names a variable may not take as they are (the language's keywords, types and the
    functions its kernels call; C's by default).
    """

    def __init__(self, buffers: Iterable[str] = (), reserved: frozenset = RESERVED):
        self._taken: set[str] = set()
        self.reserved = reserved
        self.buffers = _Kind(self, "b_")
        self.variables = _Kind(self, "")
        buffers = list(dict.fromkeys(buffers))
        for name in [b for b in buffers if _safe("b_", b)] + [b for b in buffers if not _safe("b_", b)]:
            self.buffers[name]

    def fresh(self, prefix: str, name: str) -> str:
        """A new identifier for ``name``, even if the name was asked for before."""
        base = prefix + name if _safe(prefix, name, self.reserved) else (prefix or "v_") + mangle(name)
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


def declared_length(buffer: Buffer):
    """The length an array for ``buffer`` is declared with: its size, but at least 1. C and CUDA
    have no arrays of 0 elements (gcc takes them as an extension, nvcc refuses them); the array
    of an empty buffer is never read or written, so one element costs nothing::

        local acc: f64[0]   ->   double b_acc[1];
    """
    return buffer.size if isinstance(buffer.size, Sym) or buffer.size > 0 else 1


class CStyleRenderer:
    """Loop IR -> text of a C-family language; a language subclass sets the spellings.

    Out of the box it spells plain C99 with no helpers, no pragmas and no qualifiers beyond
    ``restrict``: every loop a serial ``for``. ``program(p)`` is the whole file,
    ``kernel(k)`` one kernel's function, ``entry(p)`` the host entry point.
    """

    #: a scalar's type name, per dtype
    types = {np.dtype(np.float16): "_Float16", np.dtype(np.float32): "float", np.dtype(np.float64): "double",
             np.dtype(np.int32): "int32_t", np.dtype(np.int64): "int64_t", np.dtype(np.bool_): "bool"}
    #: an array element's type name, per dtype (a kernel's buffers, the entry point's pointers)
    array_types = types
    #: the qualifier of a pointer parameter no other parameter aliases ("" for none)
    restrict = "restrict"
    #: what precedes a kernel function's name: storage class, attributes, return type
    kernel_prefix = "static void"
    #: libm-level function name (``Call.fn``) -> its spelling, per dtype; a dtype not here keeps ``fn``
    math_functions: dict[np.dtype, dict[str, str]] = {}
    #: the host entry point's name
    entry_name = "minicomp_entry"
    #: names a local variable may not take as they are: the language's keywords, types, functions
    reserved = RESERVED

    def __init__(self, indent: str = "  "):
        self.indent = indent
        self.names = Identifiers(reserved=self.reserved)  # the identifiers of the function being rendered
        self.uses: set[str] = set()     # what its body needs: "mc_serial", "mc_status" (added
                                        # by loop prefixes and expr as they render)
        self.functions: dict[Kernel, str] = {}  # the file's kernel function names
        self.kernel_uses: dict[Kernel, set[str]] = {}  # each rendered kernel's ``uses``
        self.sizes: list[str] = []  # the program's size symbols: parameters of every kernel

    # -- the language's spellings: hooks a subclass overrides -------------------------------------

    def prelude(self) -> str:
        """Text every file starts with: includes, macros, helper functions (none here)."""
        return ""

    def intrinsic_definitions(self, program) -> list[str]:
        """The definitions of the ``Intrinsic`` routines the program's kernels call (none here)."""
        return []

    def parallel_loop_prefix(self, loop: For) -> list[str]:
        """The lines before a parallel loop's ``for`` (none here: it runs serially)."""
        return []

    def vectorized_loop_prefix(self, loop: For) -> list[str]:
        """The lines before a vectorised loop's ``for`` (none here)."""
        return []

    def unrolled_loop_prefix(self, loop: For) -> list[str]:
        """The lines before an unrolled loop's ``for`` (none here)."""
        return []

    def loop_opening(self, loop: For) -> str:
        """The line that introduces ``loop``'s index and opens its body:
        ``for (int64_t i0 = 0; i0 < 8; ++i0) {`` (closed by ``}``)."""
        v = self.var(loop.var)
        return f"for ({self.types[INDEX]} {v} = 0; {v} < {self.size(loop.extent)}; ++{v}) {{"

    def local_array(self, buffer: Buffer) -> str:
        """The declaration of an array a kernel allocates for itself: ``float b_t[64];``."""
        return f"{self.array_types[buffer.dtype]} {self.name(buffer)}[{declared_length(buffer)}];"

    def shared_array(self, buffer: Buffer) -> str:
        """The declaration of an array shared by the threads of a GPU block (``Allocate`` of
        scope ``shared``); on a CPU, where a block's threads are loops, a local array."""
        return self.local_array(buffer)

    def bound_loop(self, loop: For, depth: int) -> list[str]:
        """The lines of a loop bound to a GPU block or thread axis; on a CPU a serial loop,
        its axis in a comment: ``for (...) {  /* blockIdx.x */``, the body, ``}``."""
        return self.loop_header(loop, depth) + self.stmt(loop.body, depth + 1) + [self.indent * depth + "}"]

    def barrier_statement(self, s: Barrier, depth: int) -> list[str]:
        """The lines of a ``Barrier``: none in C, which refuses it."""
        raise CompileError(f"the C renderer cannot express '{print_stmt(s, 0)[0]}': threads of a GPU "
                           "block synchronising need the CUDA renderer; the loop interpreter "
                           "(minicomp.testing.loop_interpreter) can run it")

    def warp_reduce_statement(self, s: WarpReduce, depth: int) -> list[str]:
        """The lines of a ``WarpReduce`` (here refused, as ``barrier_statement``)."""
        return self.barrier_statement(s, depth)

    def kernel_signature(self, k: Kernel, function: str, params: list[str]) -> str:
        """The line that opens kernel ``k``'s function: ``static void k_add(const float *restrict b_x, ...) {``."""
        return f"{self.kernel_prefix} {function}({', '.join(params)}) {{"

    def math_function(self, fn: str, dtype: np.dtype) -> str:
        """libm's function ``fn`` for ``dtype``, as ``math_functions`` spells it."""
        spellings = self.math_functions.get(dtype)
        return fn if spellings is None else spellings[fn]

    # -- expressions ----------------------------------------------------------------------------

    def expr(self, e: Expr) -> str:
        """Text of an expression (fully parenthesised where precedence could matter)."""
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
        """An exact literal: shortest round-tripping decimals, INT64_C for 64-bit integers."""
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
            return f"(({self.types[dtype]}){text})" if dtype == np.float16 else text
        v = int(value)
        if dtype == np.int32:
            return "(-2147483647 - 1)" if v == -2**31 else str(v)
        if v == -2**63:
            return "(-INT64_C(9223372036854775807) - 1)"
        return str(v) if dtype == INDEX and abs(v) < 2**31 else f"INT64_C({v})"

    def function_name(self, call: Call) -> str:
        """A helper gets its type's suffix (``mc_maximum`` -> ``mc_maximum_f32``); libm's
        functions are spelled by ``math_function`` (float32 ``exp`` -> ``mc_vexp_f32`` in C)."""
        _check_function(call.fn)
        if call.fn.startswith("mc_"):
            return f"{call.fn}_{HELPER_SUFFIXES[call.dtype]}"
        return self.math_function(call.fn, call.dtype)

    def cast(self, e: Cast) -> str:
        """A conversion with NumPy's meaning: to bool is ``!= 0``; float to integer never
        reaches C's undefined behaviour (``mc_from_f64_i32``)."""
        src, dst, inner = e.a.dtype, e.dtype, self.expr(e.a)
        if dst == BOOL:
            return f"({inner} != 0)"
        if src.kind == "f" and dst.kind in "iu":
            return f"mc_from_f64_{HELPER_SUFFIXES[dst]}((double){inner})"
        return f"(({self.types[dst]}){inner})"

    # -- statements -----------------------------------------------------------------------------

    def stmt(self, s: Stmt, depth: int) -> list[str]:
        """The lines of a statement, indented ``depth`` levels."""
        pad = self.indent * depth
        if isinstance(s, For):
            if s.kind in GPU_LOOPS:
                return self.bound_loop(s, depth)
            return self.loop_header(s, depth) + self.stmt(s.body, depth + 1) + [pad + "}"]
        if isinstance(s, Store):
            return [f"{pad}{self.name(s.buffer)}[{self.expr(s.index)}] = {self.expr(s.value)};"]
        if isinstance(s, Declare):
            return [f"{pad}{self.types[s.var.dtype]} {self.var(s.var)} = {self.expr(s.init)};"]
        if isinstance(s, Assign):
            return [f"{pad}{self.var(s.var)} = {self.expr(s.value)};"]
        if isinstance(s, Block):
            return [line for sub in s.stmts for line in self.stmt(sub, depth)]
        if isinstance(s, Allocate):
            return [pad + (self.shared_array(s.buffer) if s.scope == "shared" else self.local_array(s.buffer))]
        if isinstance(s, If):
            lines = [f"{pad}if ({self.expr(s.cond)}) {{"] + self.stmt(s.then, depth + 1)
            if s.otherwise is not None:
                lines += [f"{pad}}} else {{"] + self.stmt(s.otherwise, depth + 1)
            return lines + [pad + "}"]
        if isinstance(s, Intrinsic):
            return [f"{pad}{_check_function(s.fn)}({', '.join(self.expr(a) for a in s.args)});"]
        if isinstance(s, Barrier):
            return self.barrier_statement(s, depth)
        if isinstance(s, WarpReduce):
            return self.warp_reduce_statement(s, depth)
        raise TypeError(f"cannot render {s!r}")

    def loop_header(self, loop: For, depth: int) -> list[str]:
        """The lines that open ``loop``: what its kind puts before it, then ``loop_opening``."""
        pad = self.indent * depth
        opening = self.loop_opening(loop)
        if loop.kind in GPU_LOOPS:  # a loop bound to a GPU axis means a serial loop on a CPU
            opening += f"  /* {GPU_LOOPS[loop.kind]}.{loop.axis} */"
        return [pad + line for line in self.loop_prefix(loop)] + [pad + opening]

    def loop_prefix(self, loop: For) -> list[str]:
        """The lines before ``loop``'s opening that its kind asks for (a serial loop: none)."""
        if loop.kind == "parallel":
            return self.parallel_loop_prefix(loop)
        if loop.kind == "vectorized":
            return self.vectorized_loop_prefix(loop)
        if loop.kind == "unrolled":
            return self.unrolled_loop_prefix(loop)
        return []

    # -- kernels (device code) -------------------------------------------------------------------

    def name(self, buffer: Buffer) -> str:
        """Identifier of a buffer: ``b_`` + its graph name, so no name clashes with C (``const``, ``exp``)."""
        return self.names.buffers[buffer.name]

    def var(self, var: Var) -> str:
        """Identifier of a loop variable or local scalar (``i0``, ``acc_max``)."""
        return self.names.variables[var.name]

    def param(self, buffer: Buffer, written: bool, aliased: bool = False) -> str:
        """``const float *restrict b_x``; no ``restrict`` on a buffer aliased in the kernel."""
        qualifier = "" if written else "const "
        pointer = "*" if aliased or not self.restrict else f"*{self.restrict} "
        return f"{qualifier}{self.array_types[buffer.dtype]} {pointer}{self.name(buffer)}"

    def uses_params(self, uses: set[str]) -> list[str]:
        """The parameters a kernel takes for what its body ``uses``: ``bool mc_serial`` if a
        parallel loop asked for it, ``int *mc_status`` if the kernel can fail."""
        return ["bool mc_serial"] * ("mc_serial" in uses) + ["int *mc_status"] * ("mc_status" in uses)

    def uses_args(self, uses: set[str]) -> list[str]:
        """What the entry point passes for ``uses_params``: ``mc_serial``, ``&mc_status``."""
        return ["mc_serial"] * ("mc_serial" in uses) + ["&mc_status"] * ("mc_status" in uses)

    def kernel(self, k: Kernel) -> str:
        """One kernel as a function, after its source comment.

        Its parameters are its buffers, then the program's sizes (``int64_t mc_size_T``), then
        ``uses_params`` (see the module docstring).
        """
        self.names, self.uses = Identifiers((b.name for b in k.params), self.reserved), set()
        params = [self.param(b, written=b is k.output or b in k.scratch, aliased=b in k.aliases)
                  for b in k.params]
        body = self.stmt(k.body, 1)
        params += [f"{self.types[INDEX]} {size_name(name)}" for name in self.sizes]
        params += self.uses_params(self.uses)
        self.kernel_uses[k] = self.uses
        lines = [f"/* {comment_text(line)} */" for line in k.source]
        function = self.functions.get(k) or function_names([k])[k]
        lines.append(self.kernel_signature(k, function, params))
        lines += body
        lines.append("}")
        return "\n".join(lines)

    def kernels(self, program) -> list[str]:
        """Every kernel of ``program``, in order (``kernel``)."""
        return [self.kernel(k) for k in program.kernels]

    # -- the whole file -------------------------------------------------------------------------

    def program(self, program) -> str:
        """The whole translation unit: prelude, intrinsics, kernels, and the entry point."""
        self.functions = function_names(program.kernels)
        self.sizes = program_sizes(program)
        parts = [f"/* generated by minicomp from graph '{comment_text(program.graph.name)}' */", self.prelude()]
        parts += self.intrinsic_definitions(program)
        parts += self.kernels(program)
        parts.append(self.entry(program))
        return "\n\n".join(parts) + "\n"

    # -- the host entry point (host code) ---------------------------------------------------------

    def entry(self, program) -> str:
        """The host entry point: bind parameters and workspace, run every kernel (each
        rendered by ``kernel`` before, which tells what it takes), return the status."""
        if any(k not in self.functions for k in program.kernels):
            self.functions = function_names(program.kernels)
        for k in program.kernels:
            if k not in self.kernel_uses:
                self.kernel(k)
        self.names = Identifiers((b.name for b in [*program.params, *program.workspace]), self.reserved)
        uses = [self.kernel_uses[k] for k in program.kernels]
        lines = [self.entry_signature()]
        lines += [self.indent + line for line in self.entry_bindings(program, set().union(*uses))]
        for k, k_uses in zip(program.kernels, uses):
            lines += [self.indent + line for line in self.kernel_call(k, self.kernel_args(k, k_uses))]
        lines += [self.indent + line for line in self.entry_return()]
        lines.append("}")
        return "\n".join(lines)

    def entry_signature(self) -> str:
        """The entry point's first line: ``int minicomp_entry(void **args) {``."""
        return f"int {self.entry_name}(void **args) {{"

    def entry_bindings(self, program, uses: set[str]) -> list[str]:
        """The entry point's locals, from ``args``: the program's parameters (in order), the
        workspace and the buffers in it, the call's sizes, and what the kernels ``uses``."""
        n_params = len(program.params)
        lines = [self.pointer_from(buffer, f"args[{i}]") for i, buffer in enumerate(program.params)]
        lines.append(f"char *workspace = (char *)args[{n_params}];")
        for n, name in enumerate(self.sizes):  # dynamic dimensions: the sizes of this call
            lines.append(f"int64_t {size_name(name)} = ((const int64_t *)args[{n_params + 2}])[{n}];")
        lines += [self.pointer_from(buffer, f"(workspace + {self.size(offset)})")
                  for buffer, offset in program.workspace.items()]
        lines.append("(void)workspace;")
        if "mc_serial" in uses:
            lines.append(f"bool mc_serial = args[{n_params + 1}] != NULL;  /* run every loop on this thread */")
        lines.append("int mc_status = 0;  /* this call's: a NumPy error case a kernel hit */")
        return lines

    def pointer_from(self, buffer: Buffer, address: str) -> str:
        """A buffer's pointer in the entry point: ``float *b_x = (float *)args[0];``."""
        ctype = self.array_types[buffer.dtype]
        return f"{ctype} *{self.name(buffer)} = ({ctype} *){address};"

    def kernel_args(self, k: Kernel, uses: set[str]) -> list[str]:
        """What the entry point passes kernel ``k``: its buffers, the sizes, then ``uses_args``."""
        return [self.name(b) for b in k.params] + [size_name(name) for name in self.sizes] + self.uses_args(uses)

    def kernel_call(self, k: Kernel, args: list[str]) -> list[str]:
        """The statement(s) of the entry point that run kernel ``k``: ``k_add(b_x, b_y);``."""
        return [f"{self.functions[k]}({', '.join(args)});"]

    def entry_return(self) -> list[str]:
        """The entry point's last statement(s): ``return mc_status;``."""
        return ["return mc_status;"]
