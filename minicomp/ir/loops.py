"""The loop IR: loops, loads, stores and scalar expressions (TVM's TIR, Halide's statements).

A graph node (later: a fused group of nodes) is lowered into a ``Kernel``: a loop nest that
reads input buffers and writes an output buffer element by element. Everything is explicit:

    kernel add(x: f32[4,8], y: f32[8]) -> out: f32[4,8]
      parallel for i0 in 0..4:
        for i1 in 0..8:
          out[i0*8 + i1] = x[i0*8 + i1] + y[i1]

Expressions are immutable trees with a dtype (``Const``, ``Var``, ``Load``, ``Binary``,
``Unary``, ``Call``, ``Cast``, ``Select``, and ``Address``: a pointer into a buffer);
statements are ``For``, ``Store``, ``Block``, ``If``, ``Declare`` and ``Assign`` (local
scalars, e.g. reduction accumulators), ``Allocate`` (small local arrays) and ``Intrinsic``: a
call of a hand-written routine that replaces a whole loop nest (TVM's *tensorize*; minicomp's
register-blocked matmul micro-kernel is one; ``minicomp.ir.intrinsics`` says what each
computes). Buffers are flat and row-major: a ``Load`` takes one linear index expression.
Index arithmetic is in int64.

GPU concepts have a meaning on a CPU too (Halide's lesson): a loop bound to a GPU block or
thread axis (``For.kind`` ``gpu_block``/``gpu_thread``, ``For.axis`` x, y, z) is a serial loop;
a ``shared`` ``Allocate`` is one array per block; a ``Barrier`` and a ``WarpReduce`` synchronise
the threads of a block, which the loop interpreter runs in lockstep::

    gpu_block.x for b in 0..8:
      shared part: f32[64]
      gpu_thread.x for t in 0..64:
        part[t] = x[b*64 + t]
        barrier
        ...

Binary operators keep C's meaning here (``/`` on integers truncates); NumPy's meanings that C
lacks (floor division, Python-style modulo, NaN-propagating max) are ``Call`` s of helper
functions that the C renderer defines once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .dtypes import short_name, to_dtype
from .symbolic import Sym

INDEX = np.dtype(np.int64)  # the dtype of every loop variable and index expression
BOOL = np.dtype(np.bool_)
GPU_LOOPS = {"gpu_block": "blockIdx", "gpu_thread": "threadIdx"}  # loop kind -> CUDA's index name
GPU_AXES = ("x", "y", "z")

# ----------------------------------------------------------------------------------------------
# Buffers
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Buffer:
    """A flat, row-major array a kernel reads or writes. Compared by identity."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of elements (a ``Sym`` when a dimension is a symbolic size)."""
        if any(isinstance(d, Sym) for d in self.shape):
            return math.prod(self.shape)
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def strides(self) -> tuple[int, ...]:
        """Element strides of the row-major layout."""
        strides, step = [], 1
        for dim in reversed(self.shape):
            strides.append(step)
            step *= dim
        return tuple(reversed(strides))

    def __str__(self) -> str:
        return f"{self.name}: {short_name(self.dtype)}[{','.join(map(str, self.shape))}]"


# ----------------------------------------------------------------------------------------------
# Expressions
# ----------------------------------------------------------------------------------------------


class Expr:
    """Base class of scalar expressions; every expression has a ``dtype``."""

    dtype: np.dtype

    def children(self) -> tuple["Expr", ...]:
        return ()

    # Arithmetic sugar for building index expressions in lowering code: i * 8 + j.
    def __add__(self, other):
        return simplify_binary("+", self, as_expr(other))

    def __radd__(self, other):
        return simplify_binary("+", as_expr(other), self)

    def __sub__(self, other):
        return simplify_binary("-", self, as_expr(other))

    def __mul__(self, other):
        return simplify_binary("*", self, as_expr(other))

    def __rmul__(self, other):
        return simplify_binary("*", as_expr(other), self)

    def __rsub__(self, other):
        return simplify_binary("-", as_expr(other), self)

    # Index division and remainder with C's meaning (they truncate; on the non-negative
    # values of indices that is Python's // and %): (m / 8) % 6.
    def __truediv__(self, other):
        return Binary("/", self, as_expr(other), INDEX)

    def __mod__(self, other):
        return Binary("%", self, as_expr(other), INDEX)

    # Conditions (``==`` keeps Python's meaning, so comparisons are methods): m.lt(M) & n.lt(N).
    def lt(self, other) -> "Binary":
        """``self < other`` (bool)."""
        return Binary("<", self, as_expr(other), BOOL)

    def le(self, other) -> "Binary":
        """``self <= other`` (bool)."""
        return Binary("<=", self, as_expr(other), BOOL)

    def gt(self, other) -> "Binary":
        """``self > other`` (bool)."""
        return Binary(">", self, as_expr(other), BOOL)

    def ge(self, other) -> "Binary":
        """``self >= other`` (bool)."""
        return Binary(">=", self, as_expr(other), BOOL)

    def eq(self, other) -> "Binary":
        """``self == other`` (bool)."""
        return Binary("==", self, as_expr(other), BOOL)

    def __and__(self, other):
        return Binary("&&", self, as_expr(other), BOOL)


@dataclass(frozen=True, eq=False)
class Const(Expr):
    """A literal of a given dtype."""

    value: object
    dtype: np.dtype = INDEX


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A loop variable or a local scalar."""

    name: str
    dtype: np.dtype = INDEX


@dataclass(frozen=True, eq=False)
class Size(Expr):
    """A symbolic size (``minicomp.ir.symbolic.Sym``, e.g. ``768*T``): a value known at call
    time, which every kernel of a program with dynamic dimensions receives as a parameter."""

    value: Sym
    dtype: np.dtype = INDEX


@dataclass(frozen=True, eq=False)
class Load(Expr):
    """``buffer[index]`` with a linear index."""

    buffer: Buffer
    index: Expr

    @property
    def dtype(self):
        return self.buffer.dtype

    def children(self):
        return (self.index,)


@dataclass(frozen=True, eq=False)
class Binary(Expr):
    """``a op b`` with C's meaning; ``op`` in + - * / < <= > >= == != && ||."""

    op: str
    a: Expr
    b: Expr
    dtype: np.dtype

    def children(self):
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class Unary(Expr):
    """``-a`` or ``!a``."""

    op: str
    a: Expr
    dtype: np.dtype

    def children(self):
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """A math function (``exp``, ``tanh``, ...) or a minicomp helper (``mc_floordiv``, ...)."""

    fn: str
    args: tuple[Expr, ...]
    dtype: np.dtype

    def children(self):
        return self.args


@dataclass(frozen=True, eq=False)
class Cast(Expr):
    """Convert ``a`` to ``dtype`` with NumPy's ``astype`` meaning."""

    a: Expr
    dtype: np.dtype

    def children(self):
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Select(Expr):
    """``cond ? a : b``; only the chosen side is evaluated (so guarded loads are safe)."""

    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self):
        return self.a.dtype

    def children(self):
        return (self.cond, self.a, self.b)


@dataclass(frozen=True, eq=False)
class Address(Expr):
    """``&buffer[index]``: where an intrinsic reads or writes a block of ``buffer``."""

    buffer: Buffer
    index: Expr

    @property
    def dtype(self):
        return self.buffer.dtype

    def children(self):
        return (self.index,)


def as_expr(value) -> Expr:
    """Python ints become index constants; expressions pass through."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, (int, np.integer)):
        return Const(int(value), INDEX)
    if isinstance(value, Sym):
        return Size(value)
    raise TypeError(f"cannot use {value!r} as a loop-IR expression")


def const(value, dtype) -> Const:
    """A literal of ``dtype`` (the value is converted through NumPy, so it is exact)."""
    dtype = to_dtype(dtype)
    return Const(np.asarray(value).astype(dtype)[()], dtype)


def simplify_binary(op: str, a: Expr, b: Expr) -> Expr:
    """Build an index expression, folding the trivial cases (x*1, x+0, 0*x, constants)."""
    ca = a.value if isinstance(a, Const) and a.dtype == INDEX else None
    cb = b.value if isinstance(b, Const) and b.dtype == INDEX else None
    if isinstance(a, Size) or isinstance(b, Size):  # sizes and constants fold into one size
        sa, sb = (e.value if isinstance(e, Size) else c for e, c in ((a, ca), (b, cb)))
        if sa is not None and sb is not None:
            return as_expr({"+": lambda: sa + sb, "-": lambda: sa - sb, "*": lambda: sa * sb}[op]())
    if ca is not None and cb is not None:
        return Const({"+": ca + cb, "-": ca - cb, "*": ca * cb}[op], INDEX)
    if op == "+" and ca == 0:
        return b
    if op in "+-" and cb == 0:
        return a
    if op == "*" and (ca == 0 or cb == 0):
        return Const(0, INDEX)
    if op == "*" and ca == 1:
        return b
    if op == "*" and cb == 1:
        return a
    return Binary(op, a, b, INDEX)


def walk(expr: Expr) -> Iterator[Expr]:
    """Every sub-expression of ``expr``, itself first."""
    yield expr
    for child in expr.children():
        yield from walk(child)


# ----------------------------------------------------------------------------------------------
# Statements
# ----------------------------------------------------------------------------------------------


class Stmt:
    """Base class of statements."""


@dataclass(eq=False)
class For(Stmt):
    """``for var in 0..extent: body``. ``kind``: serial, parallel, vectorized or unrolled, or a
    GPU axis the loop is bound to (``gpu_block``/``gpu_thread``, with ``axis`` x, y or z; see
    ``schedule.Bind``): on a CPU a bound loop is a serial loop."""

    var: Var
    extent: int
    body: Stmt
    kind: str = "serial"
    axis: str | None = None


@dataclass(eq=False)
class Store(Stmt):
    """``buffer[index] = value``."""

    buffer: Buffer
    index: Expr
    value: Expr


@dataclass(eq=False)
class Declare(Stmt):
    """A local scalar with an initial value: ``f32 acc = 0``."""

    var: Var
    init: Expr


@dataclass(eq=False)
class Assign(Stmt):
    """``var = value`` for a declared local scalar."""

    var: Var
    value: Expr


@dataclass(eq=False)
class Allocate(Stmt):
    """A small local array, e.g. one output row of attention. ``scope``: ``local``, each
    thread's own (registers or stack), or ``shared``: one per GPU block, which all threads of
    the block see (CUDA's ``__shared__``); on a CPU both are arrays where the ``Allocate`` stands."""

    buffer: Buffer
    scope: str = "local"


@dataclass(eq=False)
class Barrier(Stmt):
    """No thread of a GPU block goes on before every thread of it got here (``__syncthreads()``).

    Only inside ``gpu_thread`` loops, reached by every thread of the block or by none.
    """


@dataclass(eq=False)
class WarpReduce(Stmt):
    """Declare ``var`` as the ``combiner`` (sum, max, min) of ``value`` over the ``width`` lanes
    of each group of ``width`` consecutive threads of a block (a warp, or an aligned part of one);
    every lane gets the result. Only inside ``gpu_thread`` loops; ``width`` a power of two <= 32.

    Combined as a butterfly, so that CUDA's ``__shfl_xor_sync`` computes it in the same order::

        v = value;  for off in width/2, width/4, ..., 1:  v = combine(v, v of lane ^ off);  var = v

    ``max``/``min`` propagate NaN, as NumPy's (the ``mc_maximum``/``mc_minimum`` helpers).
    """

    var: Var
    combiner: str
    value: Expr
    width: int = 32


@dataclass(eq=False)
class If(Stmt):
    """``if cond: then else: otherwise`` (``otherwise`` may be None)."""

    cond: Expr
    then: Stmt
    otherwise: Stmt | None = None


@dataclass(eq=False)
class Intrinsic(Stmt):
    """A call of a hand-written routine, e.g. ``mc_gemm_6x64_f32(kc, &a[..], &b[..], &c[..], ldc, 1)``.

    ``fn`` names a function the renderer defines (see ``codegen/gemm.py``); ``args`` are
    expressions, pointers given as ``Address``.
    """

    fn: str
    args: tuple[Expr, ...]


@dataclass(eq=False)
class Block(Stmt):
    """Statements in order."""

    stmts: list[Stmt] = field(default_factory=list)


@dataclass(eq=False)
class Kernel:
    """One generated function: reads ``inputs``, writes ``output`` through ``body``.

    ``source`` names the graph nodes the kernel computes and their user source lines.
    ``aliases`` holds the parameters that share memory with another parameter (an op computed
    in place of its operand): renderers must not declare those ``restrict``.
    ``scratch`` holds buffers the kernel needs only while it runs (packed matmul panels): they
    are extra parameters placed in the workspace, shared by all kernels since kernels run one
    after another. ``schedule`` is the list of schedule steps that shaped the loop nest
    (``minicomp.ir.schedule``), printed with the kernel. ``pattern`` is the fusion pattern
    lowering wrote the nest for (``elemwise``, ``reduce``, ``row``, ``epilogue``, ``attention``,
    ``scan``; None: no default schedule), which picks the default schedule; ``constants`` the
    values of the constant arrays among its inputs, which a schedule may read (a causal mask
    tells which attention tiles to skip).
    """

    name: str
    inputs: list[Buffer]
    output: Buffer
    body: Stmt
    source: list[str] = field(default_factory=list)
    aliases: frozenset = frozenset()
    scratch: list[Buffer] = field(default_factory=list)
    schedule: list = field(default_factory=list)
    pattern: str | None = None
    constants: dict = field(default_factory=dict)

    @property
    def params(self) -> list[Buffer]:
        """Inputs (without repeats), the output, then scratch: the kernel's parameter list."""
        unique = list(dict.fromkeys(self.inputs))
        return unique + [self.output] + list(self.scratch)

    def __str__(self) -> str:
        from .loop_text import print_kernel

        return print_kernel(self)
