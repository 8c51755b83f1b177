"""Lowering matmul and conv2d (with a fused epilogue) to packed, blocked loops around a micro-kernel.

The naive loop nest of ``C = A @ B`` does 2 FLOPs per value it loads; a CPU needs about 20
to run at its FMA rate. The schedule OpenBLAS and BLIS use (Goto's algorithm), which this
module builds, reaches that by reusing every loaded value from registers and cache::

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

Two variants change who packs what, by size: when all of A would not fit in L2
(``A_PACK_BYTES``) each task packs its own MC rows of A; when A is small and B has many
panels (a layer's weights), the tasks are B's panels and each packs its own into L2
(``compute_per_panel``), so B is read once and no packed copy of it goes back to memory.

Edge tiles (``M`` or ``N`` not a multiple of the tile) run the same micro-kernel into a local
tile and copy the valid part out, so the packed panels are zero-padded and never overrun.

A symbolic ``M`` (a dynamic dimension: the tokens of a sequence) is packed in the variant where
the tasks are B's panels (A packed whole, rows ``0..M`` guarded by ``m < M``; packed A sized for
``M + MR - 1`` rows). Any other variant, or a symbolic ``N`` or ``K``, raises
``SymbolicShapeError``: the caller then lowers the plain loop nest.

The matmul is found *in the compute rule*, not by op name: the reduction body is
``a_expr * b_expr`` where ``b_expr`` uses the output's last axis ``j`` and ``a_expr`` does not.
Output axes that ``b_expr`` also uses are batch loops; the others are flattened into the rows
``M``. So conv2d in NHWC, whose ``a_expr`` reads the input through the window arithmetic, is an
implicit GEMM: packing A *is* im2col, done one panel at a time. Several reduction axes
(conv's ``r, s, c``) are packed in the order of A's memory strides, blocked on the outermost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...codegen import gemm
from ...ir.affine import affine
from ...ir.compute import Reduce, linear_index
from ...ir.graph import Node
from ...ir.symbolic import Sym, SymbolicShapeError
from ...ir.loops import (BOOL, INDEX, Address, Allocate, Binary, Block, Buffer, Const, Declare, Expr, For,
                        If, Intrinsic, Load, Select, Stmt, Store, Var, as_expr, const, simplify_binary, walk)

MIN_WORK = 1 << 15  # M*N*K below which packing costs more than it saves
MIN_ROWS = 6  # fewer rows than the micro-kernel's MR: packing B costs a copy of B and saves nothing
PARALLEL_WORK = 1 << 20
A_PACK_BYTES = 1 << 20  # packed A above this: each task packs its own MC rows instead (stays in L2)
B_TASK_PANELS = 8  # with A packed whole and this many NR panels or more: tasks are panels, each packs its B


@dataclass(frozen=True)
class GemmTiling:
    """The schedule of a packed matmul: tile sizes, printed with the kernel and replayable.

    ``mr x nr`` is the micro-kernel's register tile; ``kc`` the reduction block (A and B
    panels of ``kc`` rows stay in L1/L2), ``mc`` the rows one task computes, ``nc`` the columns
    of B packed at once. Equivalent to split(i, mc, mr), split(j, nc, nr), split(k, kc),
    reorder, cache_read of A and B with packed layouts, parallel over (mc, nr) tiles and
    tensorize of the ``mr x nr x kc`` block.
    """

    mr: int
    nr: int
    kc: int
    mc: int
    nc: int
    micro_kernel: str
    b_per_task: bool = False  # tasks are NR panels of B, each packed by its task (see GemmBuilder)

    def __str__(self) -> str:
        how = ("pack A, parallel over nr panels each packing its B panel" if self.b_per_task
               else "pack A and B panels, parallel over mc x nr tiles")
        return (f"gemm(mr={self.mr}, nr={self.nr}, kc={self.kc}, mc={self.mc}, nc={self.nc}): "
                f"{how}, tensorize {self.micro_kernel}")


def default_tiling(dtype: np.dtype) -> GemmTiling:
    """Tile sizes for this machine: the micro-kernel's tile, cache blocks for ~1 MiB of L2."""
    mr, nr = gemm.tile_shape(dtype)
    itemsize = np.dtype(dtype).itemsize  # blocks are sized in bytes: float64 ones hold half the values
    return GemmTiling(mr, nr, kc=1536 // itemsize, mc=24 * mr, nc=max(nr, 4096 // itemsize // nr * nr),
                      micro_kernel=gemm.kernel_name(dtype))


def balanced(tiling: GemmTiling, m: int) -> GemmTiling:
    """``tiling`` with MC shrunk so that M splits into equal row blocks (256 rows: 2 x 132, not 144 + 112)."""
    blocks = -(-m // tiling.mc)
    rows = -(-m // blocks)
    return replace(tiling, mc=min(tiling.mc, -(-rows // tiling.mr) * tiling.mr))


@dataclass
class MatmulShape:
    """The matmul inside a compute rule: ``out[batch, rows, col] = sum_red a_expr * b_expr``."""

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


def uses(expr: Expr, var: Var) -> bool:
    """Whether ``var`` occurs in ``expr``."""
    return any(e is var for e in walk(expr))


def find_matmul(anchor: Node, idx: list, r: Reduce) -> MatmulShape | None:
    """Split ``r`` (the anchor's reduction at output index ``idx``) into A and B, or None."""
    if r.combiner != "sum" or not gemm.supported(r.dtype) or r.dtype != anchor.dtype:
        return None
    shape = anchor.shape
    if len(shape) < 2 or not isinstance(idx[-1], Var) or any(d == 0 for d in shape):
        return None
    body, cond = r.body, None
    if isinstance(body, Select) and isinstance(body.b, Const) and body.b.value == 0:
        body, cond = body.a, body.cond
    if not (isinstance(body, Binary) and body.op == "*"):
        return None
    j = idx[-1]
    a_expr, b_expr = (body.b, body.a) if uses(body.a, j) else (body.a, body.b)
    if uses(a_expr, j) or not uses(b_expr, j) or (cond is not None and uses(cond, j)):
        return None
    if cond is not None:
        a_expr = Select(cond, a_expr, const(0, a_expr.dtype))
    axes = [(v, e) for v, e in zip(idx[:-1], shape[:-1]) if isinstance(v, Var)]
    last_batch = max((n for n, (v, _) in enumerate(axes) if uses(b_expr, v)), default=-1)
    batch, rows = axes[:last_batch + 1], axes[last_batch + 1:]
    red = _order_by_stride(list(r.axes), a_expr)
    return MatmulShape(batch, rows, (j, shape[-1]), red, a_expr, b_expr)


def _order_by_stride(red: list[tuple[Var, int]], a_expr: Expr) -> list[tuple[Var, int]]:
    """Reduction axes, largest stride in A first, so packing A reads memory in order."""
    forms = [affine(e.index) for e in walk(a_expr) if isinstance(e, Load)]
    if len(red) < 2 or not forms or forms[0] is None:
        return red
    strides = {atom: abs(c) for atom, c in forms[0].terms if isinstance(atom, str)}
    return sorted(red, key=lambda axis: strides.get(axis[0].name, 0), reverse=True)


# ----------------------------------------------------------------------------------------------
# Building the loop nest
# ----------------------------------------------------------------------------------------------


def as_index(value) -> Expr:
    """An index expression: Python ints become constants."""
    return Const(int(value), INDEX) if isinstance(value, (int, np.integer)) else as_expr(value)


def index_op(op: str, a, b) -> Expr:
    """``a op b`` on indices (``+ - *`` fold constants; comparisons and ``&&`` give bool)."""
    if op in ("+", "-", "*"):
        return simplify_binary(op, as_index(a), as_index(b))
    return Binary(op, as_index(a), as_index(b), BOOL if op in ("<", "<=", "==", "&&", ">", ">=") else INDEX)


def _min(a, b) -> Expr:
    return Select(index_op("<", a, b), as_index(a), as_index(b))


def declare_rows(rows: list[tuple[Var, int]], m: Expr) -> list[Stmt]:
    """Declare each row variable from the flat row number ``m`` (last axis fastest)."""
    stmts: list[Stmt] = []
    for n, (var, extent) in enumerate(reversed(rows)):
        rest = m if n == 0 else index_op("/", m, int(np.prod([e for _, e in rows[len(rows) - n:]])))
        stmts.append(Declare(var, rest if n == len(rows) - 1 else index_op("%", rest, extent)))
    return stmts


class GemmBuilder:
    """Builds the kernel body for one ``MatmulShape``; see the module docstring for the nest."""

    def __init__(self, shape: MatmulShape, out: Buffer, out_index: list, tiling: GemmTiling, name: str):
        self.s, self.out, self.out_index, self.t = shape, out, out_index, tiling
        self.dtype = out.dtype
        self.k0, self.inner = shape.red[0][1], int(np.prod([e for _, e in shape.red[1:]], dtype=np.int64))
        self.chunk = max(1, min(self.k0, tiling.kc // max(self.inner, 1)))
        self.kce = self.chunk * self.inner
        self.symbolic = isinstance(shape.m, Sym)
        if self.symbolic and (len(shape.rows) != 1 or isinstance(shape.n, Sym) or isinstance(self.k0, Sym)):
            raise SymbolicShapeError(f"packed matmul with {shape.m} rows: only one symbolic row axis")
        # rows of packed A: M rounded up to whole MR panels (for a symbolic M, an upper bound)
        self.mp = shape.m + tiling.mr - 1 if self.symbolic else -(-shape.m // tiling.mr) * tiling.mr
        # loop over MR panels of rows: ceil(M / MR), or for a symbolic M, M iterations guarded by m0 < M
        self.row_panels = shape.m if self.symbolic else self.mp // tiling.mr
        self.a_pack = Buffer(f"{name}_apack", self.dtype, (self.mp * self.kce,))
        self.a_per_task = not self.symbolic and self.mp * self.kce * out.dtype.itemsize > A_PACK_BYTES
        n_padded = -(-shape.n // tiling.nr) * tiling.nr  # N in whole NR panels
        if not self.a_per_task and n_padded // tiling.nr >= B_TASK_PANELS:
            self.t = tiling = replace(tiling, nc=n_padded, b_per_task=True)
        elif self.symbolic:
            raise SymbolicShapeError(f"packed matmul with {shape.m} rows needs {B_TASK_PANELS} panels of B")
        self.nce = min(tiling.nc, n_padded)
        self.n_jb = self.nce // tiling.nr  # NR panels per NC block
        self.n_ic = None if self.symbolic else -(-shape.m // tiling.mc)  # MC row blocks
        # B packed whole per (jc, pc) block, except when each task packs its own panel
        self.b_pack = None if tiling.b_per_task else Buffer(f"{name}_bpack", self.dtype, (self.kce * self.nce,))
        self.jc, self.pc = Var("jc"), Var("pc")
        self.nc_now, self.kc_now = Var("nc"), Var("kc")
        work = shape.n * shape.k if self.symbolic else shape.m * shape.n * shape.k  # symbolic: at one row
        self.parallel = "parallel" if work >= PARALLEL_WORK else "serial"

    @property
    def n_jc(self) -> int:
        return -(-self.s.n // self.t.nc)

    @property
    def n_pc(self) -> int:
        return -(-self.k0 // self.chunk)

    def body(self, epilogue) -> Stmt:
        """The whole nest; ``epilogue(m, n0, full)`` finishes a tile after the last k block."""
        if self.a_per_task:  # A is too big to pack at once: each task packs its MC rows
            work = [self.pack_b(), self.compute_per_row_block(epilogue)]
        elif self.t.b_per_task:
            work = [self.pack_a(self.a_pack, Const(0), self.row_panels, self.parallel),
                    self.compute_per_panel(epilogue)]
        else:
            work = [self.pack_b(), self.pack_a(self.a_pack, Const(0), self.mp // self.t.mr, self.parallel),
                    self.compute(epilogue)]
        block = Block([
            Declare(self.nc_now, _min(self.t.nc, index_op("-", self.s.n, index_op("*", self.jc, self.t.nc)))),
            Declare(self.kc_now, index_op("*", _min(self.chunk, index_op("-", self.k0, index_op("*", self.pc, self.chunk))),
                                     self.inner))] + work)
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
            kk = index_op("+", index_op("*", kk, extent), var)
        stmt: Stmt = leaf_for_kk(kk)
        for var, extent in reversed(inner):
            stmt = For(var, extent, stmt)
        start = Declare(k0var, index_op("+", index_op("*", self.pc, self.chunk), k0l))
        guard = index_op("<", index_op("+", index_op("*", self.pc, self.chunk), k0l), self.k0)
        return For(k0l, self.chunk, If(guard, Block([start, stmt])))

    def _col(self, jb: Expr, jj: Expr) -> Expr:
        return index_op("+", index_op("+", index_op("*", self.jc, self.t.nc), index_op("*", jb, self.t.nr)), jj)

    def pack_b(self) -> Stmt:
        """``bpack[jb][kk][jj] = B[k, jc*NC + jb*NR + jj]`` (0 past the last column)."""
        jb = Var("jb")
        return For(jb, self.n_jb, If(index_op("<", index_op("*", jb, self.t.nr), self.nc_now),
                                  self.pack_b_panel(self.b_pack, jb, index_op("*", jb, self.kce))), self.parallel)

    def pack_b_panel(self, into: Buffer, jb: Expr, first_row: Expr) -> Stmt:
        """``into[first_row + kk][jj] = B[k, jc*NC + jb*NR + jj]``: one k-major panel of NR columns."""
        jj, j = Var("jj"), self.s.col[0]
        zero = const(0, self.dtype)

        def leaf(kk):
            at = index_op("+", index_op("*", index_op("+", first_row, kk), self.t.nr), jj)
            value = Select(index_op("<", j, self.s.n), self.s.b_expr, zero)
            return For(jj, self.t.nr, Block([Declare(j, self._col(jb, jj)), Store(into, at, value)]))

        return self._reduction_loops(leaf)

    def pack_a(self, into: Buffer, first_panel: Expr, panels: int, kind: str) -> Stmt:
        """``into[p*MR + r][kk] = A[(first_panel + p)*MR + r, k]``, rows of KC (0 past the last row)."""
        p, r, m = Var("p"), Var("r"), Var("m")
        mr = self.t.mr

        def store(value):
            return lambda kk: Store(into, index_op("+", index_op("*", index_op("+", index_op("*", p, mr), r), self.kce), kk), value)

        row = Block([Declare(m, index_op("+", index_op("*", index_op("+", first_panel, p), mr), r)),
                     If(index_op("<", m, self.s.m),
                        Block(declare_rows(self.s.rows, m) + [self._reduction_loops(store(self.s.a_expr))]),
                        self._reduction_loops(store(const(0, self.dtype))))])
        rows = For(r, mr, row)
        if self.symbolic:  # M iterations: only the first ceil(M / MR) are panels of A
            rows = If(index_op("<", index_op("*", p, mr), self.s.m), rows)
        return For(p, panels, rows, kind)

    def _c_offset(self, m: Expr, n0: Expr) -> Expr:
        batch = linear_index([v for v, _ in self.s.batch], tuple(e for _, e in self.s.batch))
        return index_op("+", index_op("*", index_op("+", index_op("*", batch, self.s.m), m), self.s.n), n0)

    def _tile(self, epilogue, m0: Var, jb: Expr, a_panel: Expr, b_panel: Expr | None = None) -> Stmt:
        """One MR x NR tile at rows ``m0``, panel ``jb``: micro-kernel, then the epilogue if last."""
        n0 = Var("n0")
        accumulate = index_op(">", self.pc, 0)
        if b_panel is None:
            b_panel = Address(self.b_pack, index_op("*", index_op("*", jb, self.kce), self.t.nr))
        out_at = Address(self.out, self._c_offset(m0, n0))
        direct = Intrinsic(self.t.micro_kernel, (self.kc_now, a_panel, as_index(self.kce), b_panel, out_at,
                                                 as_index(self.s.n), accumulate))
        last = index_op("==", self.pc, self.n_pc - 1)
        full = index_op("&&", index_op("<=", index_op("+", m0, self.t.mr), self.s.m),
                   index_op("<=", index_op("+", index_op("*", jb, self.t.nr), self.t.nr), self.nc_now))
        tile_case = Block([direct, If(last, epilogue(m0, n0, True))])
        edge_case = Block([self._edge_tile(m0, n0, a_panel, b_panel, accumulate), If(last, epilogue(m0, n0, False))])
        return If(index_op("<", m0, self.s.m), Block([Declare(n0, self._col(jb, 0)), If(full, tile_case, edge_case)]))

    def compute(self, epilogue) -> Stmt:
        """Parallel over (MC rows x NR panel) tasks; micro-kernel per MR x NR tile.

        Tasks are numbered panel-major (all row blocks of panel 0, then of panel 1 ...), so the
        contiguous share of tasks each thread gets covers every row block equally.
        """
        t, ic, jb, ir, m0 = Var("t"), Var("ic"), Var("jb"), Var("ir"), Var("m0")
        a_panel = Address(self.a_pack, index_op("*", m0, self.kce))
        per_tile = Block([Declare(m0, index_op("+", index_op("*", ic, self.t.mc), index_op("*", ir, self.t.mr))),
                          self._tile(epilogue, m0, jb, a_panel)])
        task = Block([Declare(jb, index_op("/", t, self.n_ic)), Declare(ic, index_op("%", t, self.n_ic)),
                      If(index_op("<", index_op("*", jb, self.t.nr), self.nc_now), For(ir, self.t.mc // self.t.mr, per_tile))])
        return For(t, self.n_ic * self.n_jb, task, self.parallel)

    def compute_per_panel(self, epilogue) -> Stmt:
        """Parallel over NR panels of B; each task packs its panel (into L2), then sweeps all rows.

        With A packed whole (it is small) and many panels, this reads B once and never writes
        a packed copy of all of B back to memory: for a layer's weights (M = 256 tokens,
        K x N = 768 x 2304) the separate packing pass moved as many bytes as the weights.
        """
        jb, ir, m0 = Var("jb"), Var("ir"), Var("m0")
        panel = Buffer("b_panel", self.dtype, (self.kce * self.t.nr,))
        a_panel = Address(self.a_pack, index_op("*", m0, self.kce))
        per_tile = Block([Declare(m0, index_op("*", ir, self.t.mr)),
                          self._tile(epilogue, m0, jb, a_panel, Address(panel, Const(0)))])
        return For(jb, self.n_jb, Block([Allocate(panel), self.pack_b_panel(panel, jb, Const(0)),
                                    For(ir, self.row_panels, per_tile)]), self.parallel)

    def compute_per_row_block(self, epilogue) -> Stmt:
        """Parallel over MC-row blocks; each packs its own A block (in L2), then sweeps all panels."""
        ic, jb, ir, m0 = Var("ic"), Var("jb"), Var("ir"), Var("m0")
        panels = self.t.mc // self.t.mr
        block = Buffer("a_block", self.dtype, (self.t.mc * self.kce,))
        a_panel = Address(block, index_op("*", index_op("*", ir, self.t.mr), self.kce))
        per_tile = Block([Declare(m0, index_op("+", index_op("*", ic, self.t.mc), index_op("*", ir, self.t.mr))),
                          self._tile(epilogue, m0, jb, a_panel)])
        sweep = For(jb, self.n_jb, If(index_op("<", index_op("*", jb, self.t.nr), self.nc_now), For(ir, panels, per_tile)))
        return For(ic, self.n_ic, Block([Allocate(block), self.pack_a(block, index_op("*", ic, panels), panels, "serial"),
                                    sweep]), self.parallel)

    def _edge_tile(self, m0, n0, a_panel, b_panel, accumulate) -> Stmt:
        """Micro-kernel into a local tile, then add the rows and columns that exist into C."""
        mr, nr = self.t.mr, self.t.nr
        tile = Buffer("tile", self.dtype, (mr * nr,))
        r, jj = Var("r"), Var("jj")
        at = index_op("+", self._c_offset(index_op("+", m0, r), n0), jj)
        old = Select(accumulate, Load(self.out, at), const(0, self.dtype))
        add = Store(self.out, at, Binary("+", old, Load(tile, index_op("+", index_op("*", r, nr), jj)), self.dtype))
        inside = index_op("&&", index_op("<", index_op("+", m0, r), self.s.m), index_op("<", index_op("+", n0, jj), self.s.n))
        return Block([Allocate(tile),
                      Intrinsic(self.t.micro_kernel, (self.kc_now, a_panel, as_index(self.kce), b_panel,
                                                      Address(tile, Const(0)), as_index(nr), as_index(0))),
                      For(r, mr, For(jj, nr, If(inside, add)))])

    def tile_epilogue(self, m0, n0, full: bool, value_at, store_at) -> Stmt:
        """``store_at(idx) = value_at(idx)`` over one MR x NR tile (guarded at the edges)."""
        r, jj, m = Var("r"), Var("jj"), Var("m")
        j = self.s.col[0]
        idx = self.out_index
        buffer, index = store_at(idx)
        store = Store(buffer, index, value_at(idx))
        col = Block([Declare(j, index_op("+", n0, jj)), store if full else If(index_op("<", j, self.s.n), store)])
        row = Block([Declare(m, index_op("+", m0, r))] + declare_rows(self.s.rows, m) + [For(jj, self.t.nr, col)])
        return For(r, self.t.mr, row if full else If(index_op("<", index_op("+", m0, r), self.s.m), row))


def lower_gemm(anchor: Node, idx: list, r: Reduce, acc: Buffer, value_at=None,
               store_at=None) -> tuple[Stmt, list[Buffer], GemmTiling] | None:
    """The packed nest accumulating ``anchor`` into ``acc`` (its shape, row-major), or None.

    With ``value_at(idx)`` (the epilogue's value at an output index) every finished tile is
    also written through ``store_at(idx) -> (buffer, linear index)``: in place in ``acc``, or
    elsewhere when the epilogue ends in a transpose. None when the anchor is not a float
    matmul-like reduction big enough to pay for packing. Returns the statement, the scratch
    buffers (packed panels) and the tiling used.
    """
    shape = find_matmul(anchor, idx, r)
    symbolic = shape is not None and isinstance(shape.m, Sym)
    if shape is None or (shape.n * shape.k if symbolic else shape.m * shape.n * shape.k) < MIN_WORK:
        return None
    if not symbolic and shape.m < MIN_ROWS:
        return None  # a decode step's x @ W: each packed element of B would be read once
    tiling = default_tiling(acc.dtype) if symbolic else balanced(default_tiling(acc.dtype), shape.m)
    builder = GemmBuilder(shape, acc, idx, tiling, acc.name)

    def epilogue(m0, n0, full):
        if value_at is None:
            return Block([])
        return builder.tile_epilogue(m0, n0, full, value_at, store_at)

    scratch = [b for b in (None if builder.a_per_task else builder.a_pack, builder.b_pack) if b is not None]
    return builder.body(epilogue), scratch, builder.t
