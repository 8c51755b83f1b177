"""Strategy ``packed_gemm``: matmul and conv2d (with their epilogue) in packed, blocked loops
around a register-blocked micro-kernel.

The plain nest of ``C = A @ B`` does 2 FLOPs per value it loads; a CPU needs about 20 to run
at its FMA rate. The schedule OpenBLAS and BLIS use (Goto's algorithm), which this strategy
builds, reaches that by reusing every loaded value from registers and cache::

    for jc in N by NC:                      # a block of columns of B, sized for the L2/L3 cache
      for pc in K by KC:                    # a block of the reduction
        parallel for jb: pack B[pc.., jc..]    into panels of NR columns, k-major   (cache_read)
        parallel for ib: pack A[.., pc..]      row-major, KC values per row          (cache_read)
        parallel for (ic, jb):              # MC rows x one NR panel per task: both threads busy
          for ir in MC by MR:
            mc_gemm_MRxNR(kc, A rows, Bpanel, C tile)   # register-blocked micro-kernel (tensorize)
            if pc is the last block: epilogue over the MR x NR tile, while it is in L1

A is packed row-major, not in BLIS's k-major MR-row panels: the micro-kernel broadcasts its
MR values of A from MR rows (``a[r * kc + k]``) as cheaply as from one interleaved panel, and
the copy into rows is contiguous runs, so it vectorises. That matters for conv, whose packing
of A (im2col) writes 9 values per input value: k-major panels made it a stream of scalar
stores costing a fifth of conv_bn_relu's time.

Two variants change who packs what: ``a_per_task``, each task packs its own MC rows of A (for
an A too big for L2, or of a size unknown until the call); ``b_per_task``, the tasks are B's NR
panels and each packs its own into L2 (for a small A and many panels: a layer's weights), so B
is read once and no packed copy of it goes back to memory. Edge tiles (``M`` or ``N`` not a
multiple of the tile) run the same micro-kernel into a local tile and copy the valid part out,
so the packed panels are zero-padded and never overrun.

Symbolic sizes (``T``, the tokens of a sequence), in every variant: any row axis (so ``M``),
any batch axis, the column axis ``N`` and the outermost reduction axis ``K`` may be symbolic.
The block *sizes* stay static (``kc``, ``mc``, ``nc``: the packed panels of B and the per-task
buffers have sizes known at compile time); the *counts* of panels and blocks are
``ceil_div(size, block)`` (C: ``((T + 5)/6)``), and the tails are guarded as for a static size
that is not a multiple of the block (``m0 < M``, ``jb*NR < nc``, the k block's ``inside``
test). Packed A of a symbolic ``M`` is a scratch buffer of ``ceil_div(M, MR)*MR*kc`` values.
A symbolic ``K`` may be 0 at a call, where no k block would run: the plain nest (which stores
``value(0)``) runs instead. The inner reduction axes of conv (the window and the channels
packed with it) must be known sizes.

Requires a plain matmul-like nest (``find_matmul``): output loops around ``acc = 0; for k...:
acc = acc + a_expr * b_expr; out[index] = value(acc)``, where ``b_expr`` uses the last output
loop ``j`` and ``a_expr`` does not, in float32/float64 accumulated in the output's dtype. Output
loops that ``b_expr`` also uses are batch loops; the others are flattened into the rows ``M``.
So conv2d in NHWC, whose ``a_expr`` reads the input through the window arithmetic, is an
implicit GEMM: packing A *is* im2col, done one panel at a time. Several reduction loops
(conv's ``rc, rr, rs``) are packed in the order of A's memory strides, blocked on the
outermost. ``index`` row-major over the output loops: the tiles accumulate in the output and
the epilogue ``value`` rewrites each finished tile in place; any other index (an epilogue
ending in a transpose): the tiles accumulate in a scratch buffer ``<out>_acc`` and the
epilogue stores them moved. Guarantees the same values up to float rounding (the sum runs in
blocks of ``kc``, in order within a tile).

The default schedule (``packed_gemm_steps``) takes every size from the ``Target``: the
micro-kernel's tile from its registers (``gemm.tile_shape``), the cache blocks from its L1 and
L2 (``cache_blocks``), who packs what from its L2 and cores (``choose_variant``); the rules are
the small functions under "The cache rules" below, one rationale each. It leaves small matmuls
(below ``MIN_WORK``, or fewer rows than the micro-kernel) to the plain order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...codegen import gemm
from ...ir.affine import affine
from ...ir.compute import linear_index
from ...ir.loops import (Address, Allocate, Binary, Block, Buffer, Const, Declare, Expr, For, If, Intrinsic, Kernel,
                         Load, Select, Stmt, Store, Var, as_expr, const, walk)
from ...ir.symbolic import Sym, ceil_div
from ..strategy import Strategy, register_strategy
from .plain import (output_loops, refuse, replace_var, row_major, same_index, scalar_reduction, shares_output,
                    statements_of)

MIN_WORK = 1 << 15  # M*N*K below which packing costs more than it saves
MIN_ROW_PANELS = 1  # fewer rows than this many micro-kernel panels (MR rows each): packing B costs a copy of it
PARALLEL_WORK = 1 << 20  # M*N*K from which the packing and the tiles run on all threads


# ----------------------------------------------------------------------------------------------
# Finding the matmul in a plain nest
# ----------------------------------------------------------------------------------------------


@dataclass
class MatmulShape:
    """The matmul inside a nest: ``out[batch, rows, col] = sum_red a_expr * b_expr``."""

    batch: list[tuple[Var, int]]
    rows: list[tuple[Var, int]]
    col: tuple[Var, int]
    red: list[tuple[Var, int]]
    a_expr: Expr
    b_expr: Expr

    @property
    def m(self) -> int:
        """Rows (a ``Sym`` when a row axis is symbolic)."""
        return math.prod(e for _, e in self.rows)

    @property
    def n(self) -> int:
        return self.col[1]

    @property
    def k(self) -> int:
        return math.prod(e for _, e in self.red)


@dataclass
class MatmulNest:
    """A plain matmul nest: its output ``loops``, its ``MatmulShape``, and the ``store`` of each
    value it sums (``out[index] = value(acc)``).

    ``tiles`` is the buffer the tiles accumulate in, row-major over the output loops: the
    output itself, or a scratch buffer when ``store`` writes elsewhere (a transpose).
    """

    loops: list[For]
    shape: MatmulShape
    tiles: Buffer
    acc: Var
    store: Store

    @property
    def in_place(self) -> bool:
        """Whether the tiles accumulate in the output itself."""
        return self.tiles is self.store.buffer

    def finish(self) -> Store | None:
        """The nest's store with the matmul read back from ``tiles``; None where it would store
        each value onto itself."""
        if self.in_place and _is_acc(self.store.value, self.acc):
            return None
        value = replace_var(self.store.value, self.acc, Load(self.tiles, row_major(self.loops)))
        return Store(self.store.buffer, self.store.index, value)


def _is_acc(e: Expr, acc: Var) -> bool:
    return isinstance(e, Var) and e.name == acc.name


def uses(expr: Expr, var: Var) -> bool:
    """Whether ``var`` (by name) occurs in ``expr``."""
    return any(isinstance(e, Var) and e.name == var.name for e in walk(expr))


def find_matmul(kernel: Kernel) -> MatmulNest | None:
    """The matmul of a plain nest (see the module docstring), or None."""
    loops, body = output_loops(kernel)
    stmts = statements_of(body)
    if not loops or len(stmts) != 3 or not isinstance(stmts[2], Store) or stmts[2].buffer is not kernel.output:
        return None
    red, store = scalar_reduction(stmts[0], stmts[1]), stmts[2]
    out = kernel.output
    if red is None or red.per_element or red.combiner != "sum" or not gemm.supported(red.acc.dtype):
        return None
    if out.dtype != red.acc.dtype or any(_empty(loop.extent) for loop in loops) or _empty(red.length):
        return None
    j = loops[-1].var
    product, cond = red.value, None
    if isinstance(product, Select) and isinstance(product.b, Const) and product.b.value == 0:
        product, cond = product.a, product.cond
    if not (isinstance(product, Binary) and product.op == "*"):
        return None
    a_expr, b_expr = (product.b, product.a) if uses(product.a, j) else (product.a, product.b)
    if uses(a_expr, j) or not uses(b_expr, j) or (cond is not None and uses(cond, j)):
        return None
    if cond is not None:
        a_expr = Select(cond, a_expr, const(0, a_expr.dtype))
    axes = [(loop.var, loop.extent) for loop in loops[:-1]]
    last_batch = max((n for n, (v, _) in enumerate(axes) if uses(b_expr, v)), default=-1)
    shape = MatmulShape(axes[:last_batch + 1], axes[last_batch + 1:], (j, loops[-1].extent),
                        _order_by_stride(list(red.axes), a_expr), a_expr, b_expr)
    in_place = same_index(store.index, row_major(loops))
    tiles = out if in_place else Buffer(f"{out.name}_acc", out.dtype, tuple(loop.extent for loop in loops))
    return MatmulNest(loops, shape, tiles, red.acc, store)


def _empty(extent) -> bool:
    return not isinstance(extent, Sym) and extent == 0


def _order_by_stride(red: list[tuple[Var, int]], a_expr: Expr) -> list[tuple[Var, int]]:
    """Reduction axes, largest stride in A first, so packing A reads memory in order."""
    forms = [affine(e.index) for e in walk(a_expr) if isinstance(e, Load)]
    if len(red) < 2 or not forms or forms[0] is None:
        return red
    strides = {atom: c for atom, c in forms[0].terms if isinstance(atom, str)}
    if any(isinstance(c, Sym) for c in strides.values()):  # a symbolic size in the strides: no order to prove
        return red
    return sorted(red, key=lambda axis: abs(strides.get(axis[0].name, 0)), reverse=True)


# ----------------------------------------------------------------------------------------------
# The strategy and its default parameters
# ----------------------------------------------------------------------------------------------


@register_strategy("packed_gemm")
def packed_gemm(kernel: Kernel, mr: int, nr: int, kc: int, mc: int, nc: int, a_per_task: bool = False,
                b_per_task: bool = False, parallel: bool = True) -> Kernel:
    """``kernel``'s matmul packed and tiled: ``mr x nr`` the micro-kernel's register tile,
    ``kc`` the reduction values one packed block holds, ``mc`` the rows one task computes,
    ``nc`` the columns of B packed at once; ``a_per_task``/``b_per_task`` the variants of the
    module docstring; ``parallel`` runs the packing and the tiles on all threads.

    Equivalent to split(i, mc, mr), split(j, nc, nr), split(k, kc), reorder, cache_read of A
    and B with packed layouts, parallel over (mc, nr) tiles and tensorize of the ``mr x nr x
    kc`` block. Every variant takes symbolic rows, batch, columns and outermost reduction axis
    (the counts of blocks are ``ceil_div``s, the block sizes these static ints); the inner
    reduction axes (conv's window) must be known sizes.
    """
    def fail(why: str):
        return refuse("packed_gemm", kernel, why)

    if not all(isinstance(v, int) and v >= 1 for v in (mr, nr, kc, mc, nc)) or mc % mr or nc % nr:
        raise fail("mr, nr, kc, mc, nc must be positive integers, mc a multiple of mr and nc of nr")
    if a_per_task and b_per_task:
        raise fail("a_per_task and b_per_task are two different variants")
    found = find_matmul(kernel)
    if found is None:
        raise fail("no float matmul accumulating in the output's dtype (see find_matmul)")
    if shares_output(kernel):
        raise fail(f"{kernel.output.name} shares memory with an input")
    if _symbolic_inner(found.shape):
        raise fail("an inner reduction axis (conv's window or channels) has a symbolic size; only the outermost "
                   "reduction axis may")
    builder = GemmBuilder(found, mr, nr, kc, mc, nc, a_per_task, b_per_task, "parallel" if parallel else "serial")
    scratch = [] if found.in_place else [found.tiles]
    scratch += [b for b in (None if a_per_task else builder.a_pack, builder.b_pack) if b is not None]
    body = builder.body()
    if isinstance(builder.k0, Sym):  # K = 0 at a call: no k block runs, so the plain nest stores value(0)
        body = If(as_expr(builder.k0).eq(0), kernel.body, body)
    return replace(kernel, body=body, scratch=list(kernel.scratch) + scratch)


def packed_gemm_steps(kernel: Kernel, target) -> list[Strategy]:
    """The default rule: ``packed_gemm`` with tiles for ``target``, for a matmul worth packing
    (``estimated_work`` at least ``MIN_WORK``, and a full micro-kernel panel of rows or a
    symbolic number of them)."""
    found = find_matmul(kernel)
    if found is None or _symbolic_inner(found.shape):
        return []
    s, dtype = found.shape, found.tiles.dtype
    work = estimated_work(s)
    mr = gemm.tile_shape(dtype, target)[0]
    if work < MIN_WORK or (not isinstance(s.m, Sym) and s.m < MIN_ROW_PANELS * mr):
        return []  # a decode step's x @ W: B is read once anyway
    return [Strategy("packed_gemm", **default_tiling(s, dtype, target), parallel=work >= PARALLEL_WORK)]


def estimated_work(s: MatmulShape) -> float:
    """``M*N*K`` for the ``MIN_WORK`` and ``PARALLEL_WORK`` tests, with a symbolic ``M`` counted
    as one row (the call may be a decode step: the work of one row must pay for packing B) and
    a symbolic ``N`` or ``K`` as large (``inf``: a layer's width, not known to be small)."""
    m = 1 if isinstance(s.m, Sym) else s.m
    n, k = (math.inf if isinstance(size, Sym) else size for size in (s.n, s.k))
    return m * n * k


def default_tiling(s: MatmulShape, dtype, target) -> dict:
    """Tile sizes and variant for ``target``: the micro-kernel's tile (``gemm.tile_shape``), the
    cache blocks (``cache_blocks``), who packs what (``choose_variant``), and MC balanced over a
    static number of rows (``balanced``; with ``a_per_task``, whose tasks are the row blocks,
    into a multiple of the cores). Holds for every value of the symbolic sizes."""
    mr, nr = gemm.tile_shape(dtype, target)
    kc, mc, nc = cache_blocks(target, dtype, mr, nr)
    a_per_task, b_per_task = choose_variant(s, mr, nr, kc, np.dtype(dtype).itemsize, target)
    if not isinstance(s.m, Sym):
        mc = balanced(mc, mr, s.m, target.cores if a_per_task else 1)
    if b_per_task:  # the tasks are all of B's panels: one block of columns
        nc = ceil_div(s.n, nr) * nr
    return dict(mr=mr, nr=nr, kc=kc, mc=mc, nc=nc, a_per_task=a_per_task, b_per_task=b_per_task)


def balanced(mc: int, mr: int, m: int, tasks: int = 1) -> int:
    """``mc`` shrunk so that ``m`` rows split into equal blocks, their number a multiple of
    ``tasks`` (the cores, where the blocks are the tasks) up to one block per panel of ``mr``
    rows (256 rows: 2 x 132, not 168 + 88; 1024 rows on 2 cores: 8 x 132, not 7 x 150, which
    left one core a block more to do; 1000 rows on 4 cores with mc = 1818: 4 x 252)."""
    blocks = min(ceil_div(ceil_div(m, mc), tasks) * tasks, ceil_div(m, mr))
    return min(mc, ceil_div(ceil_div(m, blocks), mr) * mr)


# ----------------------------------------------------------------------------------------------
# The cache rules: every block size and threshold from the Target
# ----------------------------------------------------------------------------------------------
# One function per rule, each with its reason, so that a rule measured better on another
# machine changes in one place. On a 2-core AVX2 machine with 32 KiB of L1d and 512 KiB of L2
# (float32 tile 6 x 16) they give kc = 384, mc = 168, nc = 1024, A packed whole up to 1 MiB
# and panel tasks from 8 panels.

KC_RANGE = (64, 1024)  # below 64, the micro-kernel's loads and stores of C outweigh its FMAs


def k_block(target, nr: int, itemsize: int) -> int:
    """``kc``, the reduction values of one packed block: B's micro-panel (``kc x nr``), which
    every row panel of a sweep reuses, fills 3/4 of L1 (the rest holds the A rows and the C
    tile passing through). Rounded down to a multiple of 8, clamped to ``KC_RANGE``.

        32 KiB L1, nr = 16 float32  ->  384;     48 KiB L1, nr = 64 float32  ->  144
    """
    kc = (3 * target.l1_bytes // 4) // (nr * itemsize) // 8 * 8
    return min(max(kc, KC_RANGE[0]), KC_RANGE[1])


def cache_blocks(target, dtype, mr: int, nr: int) -> tuple[int, int, int]:
    """``(kc, mc, nc)`` for an ``mr x nr`` micro-kernel on ``target``:

    * ``kc``: ``k_block``;
    * ``mc``: A's block (``mc x kc``), which one task sweeps over every panel of B, fills half
      of L2 (the other half: the panels of B streaming through); a multiple of ``mr``, at least
      ``mr`` (``default_tiling`` then balances it over the rows);
    * ``nc``: B's packed block (``kc x nc``), which every row block of a pass reads, is three
      L2s (it is read from L3; a bigger block makes fewer passes over C); a multiple of ``nr``,
      at least ``nr``.

        32 KiB L1, 512 KiB L2, float32 6 x 16  ->  (384, 168, 1024)
    """
    itemsize = np.dtype(dtype).itemsize
    kc = k_block(target, nr, itemsize)
    mc = max(mr, (target.l2_bytes // 2) // (kc * itemsize) // mr * mr)
    nc = max(nr, 3 * target.l2_bytes // (kc * itemsize) // nr * nr)
    return kc, mc, nc


def a_pack_limit(target) -> int:
    """Bytes of packed A that all tasks may share: two L2s. A bigger one would go back to memory
    between its packing and its use, so each task packs its own MC rows (``a_per_task``)."""
    return 2 * target.l2_bytes


def b_task_panels(target) -> int:
    """NR panels of B from which the tasks are B's panels (``b_per_task``): 4 per core, so they
    share out evenly (at most a quarter of a core's work left over)."""
    return 4 * target.cores


def choose_variant(s: MatmulShape, mr: int, nr: int, kc: int, itemsize: int, target) -> tuple[bool, bool]:
    """``(a_per_task, b_per_task)`` for ``s`` on ``target``, a choice that holds for every value
    of its symbolic sizes:

    * ``b_per_task`` where B has a known number of panels, at least ``b_task_panels`` (a layer's
      weights), and A packs whole: it is at most ``a_pack_limit``, or its rows are symbolic (a
      sequence: its length is not known to be large, the weights are);
    * else ``a_per_task`` where A may be bigger than ``a_pack_limit`` (its rows symbolic, or
      that many);
    * else neither: A and B packed whole, shared by all tasks.
    """
    many_panels = not isinstance(s.n, Sym) and ceil_div(s.n, nr) >= b_task_panels(target)
    if isinstance(s.m, Sym):
        return not many_panels, many_panels
    a_bytes = ceil_div(s.m, mr) * mr * _k_block(s, kc) * _inner(s) * itemsize
    a_per_task = a_bytes > a_pack_limit(target)
    return a_per_task, not a_per_task and many_panels


def _inner(s: MatmulShape) -> int:
    """Values of the reduction per step of its outermost (blocked) axis."""
    return math.prod(e for _, e in s.red[1:])


def _symbolic_inner(s: MatmulShape) -> bool:
    """Whether an inner reduction axis (not the blocked one) has a symbolic size."""
    return any(isinstance(e, Sym) for _, e in s.red[1:])


def _k_block(s: MatmulShape, kc: int) -> int:
    """Steps of the outermost reduction axis in one block of about ``kc`` values (``kc``'s worth
    for a symbolic axis: the packed buffers keep a static size)."""
    steps = max(1, kc // max(_inner(s), 1))
    return steps if isinstance(s.red[0][1], Sym) else min(s.red[0][1], steps)


# ----------------------------------------------------------------------------------------------
# Building the loop nest
# ----------------------------------------------------------------------------------------------


def smaller(a, b) -> Expr:
    """``a < b ? a : b`` on indices."""
    a, b = as_expr(a), as_expr(b)
    return Select(a.lt(b), a, b)


def declare_rows(rows: list[tuple[Var, int]], m: Expr) -> list[Stmt]:
    """Declare each row variable from the flat row number ``m`` (last axis fastest)."""
    stmts: list[Stmt] = []
    for n, (var, extent) in enumerate(reversed(rows)):
        rest = m if n == 0 else m / math.prod(e for _, e in rows[len(rows) - n:])
        stmts.append(Declare(var, rest if n == len(rows) - 1 else rest % extent))
    return stmts


class GemmBuilder:
    """Builds the packed nest of one ``MatmulNest``; see the module docstring for its shape.

    Names: ``jc``/``pc`` the NC column and KC reduction blocks, ``nc``/``kc`` their sizes now
    (the last ones are shorter), ``jb`` an NR panel, ``ic`` an MC row block, ``ir`` an MR row
    panel in it, ``m0``/``n0`` a tile's first row and column.
    """

    def __init__(self, found: MatmulNest, mr: int, nr: int, kc: int, mc: int, nc: int,
                 a_per_task: bool, b_per_task: bool, kind: str):
        s = self.s = found.shape
        self.found, self.tiles, self.dtype = found, found.tiles, found.tiles.dtype
        self.mr, self.nr, self.mc, self.nc = mr, nr, mc, nc
        self.a_per_task, self.b_per_task, self.kind = a_per_task, b_per_task, kind
        self.micro_kernel = micro_kernel_name(mr, nr, self.dtype)
        self.k0, self.inner = s.red[0][1], _inner(s)
        self.chunk = _k_block(s, kc)  # steps of the outermost reduction axis per block (static)
        self.kce = self.chunk * self.inner  # reduction values per block (static)
        # counts of panels and blocks: ceil(size / block), a Sym with a CeilDiv factor for a symbolic size
        self.row_panels = ceil_div(s.m, mr)  # MR panels of rows
        self.mp = self.row_panels * mr  # rows of packed A: M rounded up to whole MR panels
        self.a_pack = Buffer(f"{self.tiles.name}_apack", self.dtype, (self.mp * self.kce,))
        # columns per NC block, in whole NR panels (static: nc itself for a symbolic N)
        self.nce = nc if isinstance(s.n, Sym) else min(nc, ceil_div(s.n, nr) * nr)
        self.n_jb = self.nce // nr  # NR panels per NC block
        self.n_ic = ceil_div(s.m, mc)  # MC row blocks
        # B packed whole per (jc, pc) block, except when each task packs its own panel
        self.b_pack = None if b_per_task else Buffer(f"{self.tiles.name}_bpack", self.dtype, (self.kce * self.nce,))
        self.jc, self.pc = Var("jc"), Var("pc")
        self.nc_now, self.kc_now = Var("nc"), Var("kc")
        self.n_jc, self.n_pc = ceil_div(s.n, nc), ceil_div(self.k0, self.chunk)

    def body(self) -> Stmt:
        """The whole nest."""
        if self.a_per_task:  # A is too big to pack at once: each task packs its MC rows
            work = [self.pack_b(), self.compute_per_row_block()]
        elif self.b_per_task:
            work = [self.pack_a(self.a_pack, Const(0), self.row_panels, self.kind), self.compute_per_panel()]
        else:
            work = [self.pack_b(), self.pack_a(self.a_pack, Const(0), self.row_panels, self.kind), self.compute()]
        block = Block([Declare(self.nc_now, smaller(self.nc, self.s.n - self.jc * self.nc)),
                       Declare(self.kc_now, smaller(self.chunk, self.k0 - self.pc * self.chunk) * self.inner)] + work)
        nest: Stmt = For(self.jc, self.n_jc, For(self.pc, self.n_pc, block))
        for var, extent in reversed(self.s.batch):
            nest = For(var, extent, nest)
        return nest

    def _reduction_loops(self, leaf_for_kk) -> Stmt:
        """Loops over the current k block; ``leaf_for_kk(kk)`` is the statement at packed row ``kk``."""
        (k0var, _), inner = self.s.red[0], self.s.red[1:]
        k0l = Var("k0l")
        kk: Expr = k0l
        for var, extent in inner:
            kk = kk * extent + var
        stmt: Stmt = leaf_for_kk(kk)
        for var, extent in reversed(inner):
            stmt = For(var, extent, stmt)
        start = Declare(k0var, self.pc * self.chunk + k0l)
        inside = (self.pc * self.chunk + k0l).lt(self.k0)
        return For(k0l, self.chunk, If(inside, Block([start, stmt])))

    def _col(self, jb: Expr, jj) -> Expr:
        return self.jc * self.nc + jb * self.nr + jj

    def pack_b(self) -> Stmt:
        """``bpack[jb][kk][jj] = B[k, jc*NC + jb*NR + jj]`` (0 past the last column)."""
        jb = Var("jb")
        panel = self.pack_b_panel(self.b_pack, jb, jb * self.kce)
        return For(jb, self.n_jb, If((jb * self.nr).lt(self.nc_now), panel), self.kind)

    def pack_b_panel(self, into: Buffer, jb: Expr, first_row: Expr) -> Stmt:
        """``into[first_row + kk][jj] = B[k, jc*NC + jb*NR + jj]``: one k-major panel of NR columns."""
        jj, j = Var("jj"), self.s.col[0]
        zero = const(0, self.dtype)

        def leaf(kk):
            at = (first_row + kk) * self.nr + jj
            value = Select(j.lt(self.s.n), self.s.b_expr, zero)
            return For(jj, self.nr, Block([Declare(j, self._col(jb, jj)), Store(into, at, value)]))

        return self._reduction_loops(leaf)

    def pack_a(self, into: Buffer, first_panel: Expr, panels, kind: str) -> Stmt:
        """``into[p*MR + r][kk] = A[(first_panel + p)*MR + r, k]``, rows of KC (0 past the last row)."""
        p, r, m = Var("p"), Var("r"), Var("m")

        def store(value):
            return lambda kk: Store(into, (p * self.mr + r) * self.kce + kk, value)

        row = Block([Declare(m, (first_panel + p) * self.mr + r),
                     If(m.lt(self.s.m),
                        Block(declare_rows(self.s.rows, m) + [self._reduction_loops(store(self.s.a_expr))]),
                        self._reduction_loops(store(const(0, self.dtype))))])
        return For(p, panels, For(r, self.mr, row), kind)

    def _c_offset(self, m: Expr, n0: Expr) -> Expr:
        batch = linear_index([v for v, _ in self.s.batch], tuple(e for _, e in self.s.batch))
        return (batch * self.s.m + m) * self.s.n + n0

    def _tile(self, m0: Var, jb: Expr, a_panel: Expr, b_panel: Expr | None = None) -> Stmt:
        """One MR x NR tile at rows ``m0``, panel ``jb``: micro-kernel, then the epilogue if last."""
        n0 = Var("n0")
        accumulate = self.pc.gt(0)
        if b_panel is None:
            b_panel = Address(self.b_pack, jb * self.kce * self.nr)
        out_at = Address(self.tiles, self._c_offset(m0, n0))
        direct = Intrinsic(self.micro_kernel, (self.kc_now, a_panel, as_expr(self.kce), b_panel, out_at,
                                               as_expr(self.s.n), accumulate))
        last = self.pc.eq(self.n_pc - 1)
        full = (m0 + self.mr).le(self.s.m) & (jb * self.nr + self.nr).le(self.nc_now)
        tile_case = Block([direct, If(last, self.tile_epilogue(m0, n0, True))])
        edge_case = Block([self._edge_tile(m0, n0, a_panel, b_panel, accumulate),
                           If(last, self.tile_epilogue(m0, n0, False))])
        return If(m0.lt(self.s.m), Block([Declare(n0, self._col(jb, 0)), If(full, tile_case, edge_case)]))

    def compute(self) -> Stmt:
        """Parallel over (MC rows x NR panel) tasks; micro-kernel per MR x NR tile.

        Tasks are numbered panel-major (all row blocks of panel 0, then of panel 1 ...), so the
        contiguous share of tasks each thread gets covers every row block equally.
        """
        t, ic, jb, ir, m0 = Var("t"), Var("ic"), Var("jb"), Var("ir"), Var("m0")
        a_panel = Address(self.a_pack, m0 * self.kce)
        per_tile = Block([Declare(m0, ic * self.mc + ir * self.mr), self._tile(m0, jb, a_panel)])
        task = Block([Declare(jb, t / self.n_ic), Declare(ic, t % self.n_ic),
                      If((jb * self.nr).lt(self.nc_now), For(ir, self.mc // self.mr, per_tile))])
        return For(t, self.n_ic * self.n_jb, task, self.kind)

    def compute_per_panel(self) -> Stmt:
        """Parallel over NR panels of B; each task packs its panel (into L2), then sweeps all rows.

        With A packed whole (it is small) and many panels, this reads B once and never writes
        a packed copy of all of B back to memory: for a layer's weights (M = 256 tokens,
        K x N = 768 x 2304) the separate packing pass moved as many bytes as the weights.
        """
        jb, ir, m0 = Var("jb"), Var("ir"), Var("m0")
        panel = Buffer("b_panel", self.dtype, (self.kce * self.nr,))
        a_panel = Address(self.a_pack, m0 * self.kce)
        per_tile = Block([Declare(m0, ir * self.mr), self._tile(m0, jb, a_panel, Address(panel, Const(0)))])
        task: Stmt = Block([Allocate(panel), self.pack_b_panel(panel, jb, Const(0)), For(ir, self.row_panels, per_tile)])
        if self.panels_past_n():
            task = If((jb * self.nr).lt(self.nc_now), task)
        return For(jb, self.n_jb, task, self.kind)

    def panels_past_n(self) -> bool:
        """Whether some NR panel of some NC block holds no column of B (a symbolic N, or several
        NC blocks, the last one short): those need the ``jb*NR < nc`` guard."""
        return isinstance(self.s.n, Sym) or self.n_jc * self.nce - self.s.n >= self.nr

    def compute_per_row_block(self) -> Stmt:
        """Parallel over MC-row blocks; each packs its own A block (in L2), then sweeps all panels."""
        ic, jb, ir, m0 = Var("ic"), Var("jb"), Var("ir"), Var("m0")
        panels = self.mc // self.mr
        block = Buffer("a_block", self.dtype, (self.mc * self.kce,))
        a_panel = Address(block, ir * self.mr * self.kce)
        per_tile = Block([Declare(m0, ic * self.mc + ir * self.mr), self._tile(m0, jb, a_panel)])
        sweep = For(jb, self.n_jb, If((jb * self.nr).lt(self.nc_now), For(ir, panels, per_tile)))
        return For(ic, self.n_ic, Block([Allocate(block), self.pack_a(block, ic * panels, panels, "serial"), sweep]),
                   self.kind)

    def _edge_tile(self, m0, n0, a_panel, b_panel, accumulate) -> Stmt:
        """Micro-kernel into a local tile, then add the rows and columns that exist into C."""
        mr, nr = self.mr, self.nr
        tile = Buffer("tile", self.dtype, (mr * nr,))
        r, jj = Var("r"), Var("jj")
        at = self._c_offset(m0 + r, n0) + jj
        old = Select(accumulate, Load(self.tiles, at), const(0, self.dtype))
        add = Store(self.tiles, at, Binary("+", old, Load(tile, r * nr + jj), self.dtype))
        inside = (m0 + r).lt(self.s.m) & (n0 + jj).lt(self.s.n)
        return Block([Allocate(tile),
                      Intrinsic(self.micro_kernel, (self.kc_now, a_panel, as_expr(self.kce), b_panel,
                                                    Address(tile, Const(0)), as_expr(nr), as_expr(0))),
                      For(r, mr, For(jj, nr, If(inside, add)))])

    def tile_epilogue(self, m0, n0, full: bool) -> Stmt:
        """The nest's own store of each value over one finished MR x NR tile (guarded at the
        edges), the matmul read back from the tile; nothing when that store is a no-op."""
        store = self.found.finish()
        if store is None:
            return Block([])
        r, jj, m = Var("r"), Var("jj"), Var("m")
        j = self.s.col[0]
        col = Block([Declare(j, n0 + jj), store if full else If(j.lt(self.s.n), store)])
        row = Block([Declare(m, m0 + r)] + declare_rows(self.s.rows, m) + [For(jj, self.nr, col)])
        return For(r, self.mr, row if full else If((m0 + r).lt(self.s.m), row))


def micro_kernel_name(mr: int, nr: int, dtype) -> str:
    """``mc_gemm_6x16_f32``: the micro-kernel (``codegen/gemm.py``) of an ``mr x nr`` tile.

    The renderer writes it with the vector width it compiles for: ``nr`` must be a multiple
    of that many values (``gemm.tile_shape(dtype, target)`` always is).
    """
    return f"mc_gemm_{mr}x{nr}_{'f32' if np.dtype(dtype) == np.float32 else 'f64'}"
