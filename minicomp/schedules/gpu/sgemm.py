"""Strategy ``gpu_sgemm``: matmul and conv2d (with their epilogue) in shared-memory tiles and
per-thread register tiles, the classic SGEMM of a GPU.

The plain nest of ``C = A @ B`` with a thread per output value (``gpu_threads``) reads a row
of A and a column of B from global memory for every value: 2 FLOPs per 8 bytes. A block that
computes a ``BM x BN`` tile of C instead reads ``BM x BK`` values of A and ``BK x BN`` of B per
step of ``BK`` through shared memory, which every thread of the block then reads from there;
each thread keeps a ``TM x TN`` tile of C in registers and per ``k`` reads ``TM + TN`` values
from shared memory for ``TM x TN`` multiply-adds. One block of ``128 x 128`` (``TM = TN = 8``:
256 threads) does ``2*128*128*BK`` FLOPs per ``(128 + 128)*BK*4`` bytes from global memory,
32 FLOPs per byte; one thread 64 multiply-adds per 16 shared loads.

In the thread-serial form (``fuse_threads.py``), for a block of the grid::

    gpu_block.x for b in 0..batch*ceil(M/BM)*ceil(N/BN):
      shared a_tile: f32[2*BK*(BM+pad)]       # A's tile, k-major (a_tile[k][m]): two stages
      shared b_tile: f32[2*BK*BN]             # B's tile, b_tile[k][n]
      local acc_tile: f32[threads*TM*TN]      # each thread's register tile (t*TM*TN + r*TN + c)
      i64 n0 = (b % col_tiles)*BN;  i64 m0 = ((b / col_tiles) % row_tiles)*BM;  <batch indices>
      gpu_thread.x for t in 0..threads:       # phase: zero the register tile, load k tile 0
        acc_tile[t*64 + c] = 0 ...;  a_tile[k][m] = m < M && k < K ? A[m, k] : 0 ...
      for kt in 0..ceil(K/BK):                # a uniform loop: one barrier per k tile
        gpu_thread.x for t in 0..threads:     # phase: load tile kt+1 into registers, compute
          a_next[i] = A[...]                  #   on stage kt%2, store the registers into
          for kk, r, c (unrolled):            #   stage (kt+1)%2 (read after the barrier)
            acc_tile[t*64 + r*8 + c] += a_tile[kt%2][kk][ty + 16r] * b_tile[kt%2][kk][tx + 16c]
          a_tile[(kt+1)%2][...] = a_next[i]
      gpu_thread.x for t in 0..threads:       # phase: the epilogue, in registers, one store
        if m < M && n < N: out[index(m, n)] = value(acc_tile[t*64 + r*8 + c])

``double_buffer=False`` loads and computes in two phases per k tile instead (two barriers,
one stage). Thread ``t`` is ``(ty, tx) = (t / (BN/TN), t % (BN/TN))`` and owns rows
``ty + i*(BM/TM)`` and columns ``tx + j*(BN/TN)`` of the tile: neighbouring threads read
neighbouring columns of ``b_tile`` (no bank conflict) and write neighbouring columns of C
(coalesced); the threads that load a tile read consecutive ``k`` of A and ``n`` of B
(coalesced) and store A transposed into ``a_tile`` with its rows padded so that those stores
fall in different banks. Tiles overhanging ``M``, ``N`` or ``K`` are filled with zeros at
loading (guarded loads; no guard where a size is a static multiple of the tile), so the
compute never tests anything, and the epilogue stores only what exists. A symbolic ``M``, ``N``
or ``K`` gives ``ceil_div`` counts of tiles (a symbolic grid, a symbolic number of k tiles;
``K = 0`` runs no k tile and stores ``value(0)``). The inner loops over ``BK``, ``TM`` and
``TN`` are ``unrolled`` (CUDA: ``#pragma unroll``), so each thread's register tile and its
fragments of A and B live in registers after ``fuse_threads`` (constant indices).

**Vector fragments** (``lanes=4``, the default rule's float32 choice). With the layout above,
a thread reads its fragments as ``tm + tn`` scalar shared loads per ``kk`` (16 per 64
multiply-adds for 8 x 8), and with their address arithmetic the loop issues ~80 instructions
per 64 multiply-adds: issue-bound. With ``lanes`` the thread owns rows in groups of ``lanes``
consecutive ones, ``thread_rows*lanes`` apart (8 x 8, 16 x 16 threads: rows ``ty*4 + 0..3``
and ``64 + ty*4 + 0..3``), likewise columns, so each group is one ``float4`` load
(``LDS.128``) of ``a_tile[k][m]`` or ``b_tile[k][n]``: 4 per 64 multiply-adds::

    unrolled for g in 0..2:                      # the thread's A fragment at kk
      vectorized for v in 0..4:
        a_frag[g*4 + v] = a_tile[stage + kk*a_stride + g*64 + ty*4 + v]

A ``vectorized`` loop is a plain loop in C and in the interpreter; the CUDA renderer makes each
access at ``base + v`` with ``base`` a provable multiple of 4 one vector access (``a_stride``
is then padded by a multiple of 4, the one whose transposed stores of A conflict least). The
tiles' loads take groups of 4 consecutive ``k`` of A and ``n`` of B (one ``float4`` load from
global memory where the sizes make it aligned, else 4 scalar ones; a guard that holds for the
whole group is an ``if`` around it, one that differs between its lanes a ``select`` each), and
the epilogue stores 4 consecutive columns of C (one ``float4`` store where aligned).
``group_rows=G`` orders the blocks down ``G`` row tiles before the next column tile
(``grouped_place``), so that the blocks running at once share their tiles of A and B in L2.

Requires a plain matmul-like nest as ``packed_gemm`` finds it (``find_matmul``: output loops
around ``acc = 0; for k...: acc += a_expr * b_expr; out[index] = value(acc)``, float32 or
float64): a matmul, a batched matmul (batch loops, which ``b_expr`` uses, become blocks), a
matmul with its elementwise epilogue (``gelu(x @ w + b)``, applied in registers before the
one store; an epilogue ending in a transpose stores each value moved), conv2d in NHWC as an
implicit GEMM (the rows are ``N*H*W``, the reduction ``(kh, kw, c)``: loading A's tile *is*
im2col, one tile at a time). The output may not share memory with an input. Guarantees the
same values up to float rounding (each value's sum runs in order of ``k``, in one thread).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...ir.loops import (INDEX, Allocate, Binary, Block, Buffer, Const, Declare, Expr, For, If, Kernel, Load, Select,
                         Stmt, Store, Var, const)
from ...ir.rewrite import free_vars, substitute, substitute_stmt
from ...ir.schedule import ScheduleError, tidy
from ...ir.symbolic import Sym, ceil_div
from ..cpu.packed_gemm import MatmulNest, declare_rows, find_matmul
from ..cpu.plain import refuse, shares_output
from ..strategy import Strategy, register_strategy
from .common import (MAX_BLOCKS, WARP, Namer, check_plain, divide, divides, extent_product, less, remainder,
                     size_expr, unravel)
from .threads import VECTOR_BYTES

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
LANES = (1, 2, 4)  # consecutive rows (columns) of C in a group of a thread's (4: float4 fragments)


@dataclass(frozen=True)
class Tiling:
    """The tile sizes of one ``gpu_sgemm``: a block computes ``bm x bn`` of C in steps of
    ``bk`` of the reduction, a thread ``tm x tn`` of it; ``double_buffer``: two stages of
    shared tiles, the next one loaded while the current one is computed; ``lanes``: the
    thread's rows and columns of C come in groups of that many consecutive ones, its
    fragments of A and B are vector loads from shared memory and the tiles' loads from
    global memory and C's stores vector accesses where aligned (1: one row and column at a
    time, ``thread_rows`` apart); ``group_rows``: the blocks run down ``group_rows`` row tiles
    before the next column tile (1: along a row of tiles)."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    double_buffer: bool = True
    lanes: int = 1
    group_rows: int = 1

    @property
    def thread_rows(self) -> int:
        """Threads along a tile's rows (``bm / tm``)."""
        return self.bm // self.tm

    @property
    def thread_cols(self) -> int:
        """Threads along a tile's columns (``bn / tn``)."""
        return self.bn // self.tn

    @property
    def threads(self) -> int:
        return self.thread_rows * self.thread_cols

    @property
    def stages(self) -> int:
        return 2 if self.double_buffer else 1

    @property
    def a_stride(self) -> int:
        """The row length of ``a_tile`` (``a_tile[k][m]``): ``bm`` padded so that the loading
        threads, which store ``32 / bk`` rows of ``m`` for each of ``bk`` values of ``k`` per
        warp, hit 32 different banks: ``bm + 32/bk`` (mod 32) for ``bk <= 32``. With
        ``lanes``, padded by a multiple of the lanes (each row's groups stay aligned for vector
        loads) that gives the fewest ``store_conflicts``."""
        if self.lanes > 1:
            return self.bm + min(range(0, 32, self.lanes), key=self.store_conflicts)
        if self.bk >= 32 or 32 % self.bk:
            return self.bm + 1
        return self.bm + (32 // self.bk - self.bm) % 32

    def store_conflicts(self, pad: int) -> int:
        """With ``lanes``: the most threads of a warp that store into one bank of ``a_tile``
        (its rows ``bm + pad`` long) at once. Thread ``t`` loads lanes ``k .. k+lanes-1`` of
        row ``t / (bk/lanes)`` of A's tile and stores them one at a time (transposed)."""
        groups_per_row = self.bk // self.lanes
        banks = [0] * 32
        for t in range(min(WARP, self.threads)):
            row, k = t // groups_per_row, t % groups_per_row * self.lanes
            banks[(k * (self.bm + pad) + row) % 32] += 1
        return max(banks)

    def shared_elements(self) -> tuple[int, int]:
        """Elements of ``a_tile`` and ``b_tile`` (all stages)."""
        return self.stages * self.bk * self.a_stride, self.stages * self.bk * self.bn

    def shared_bytes(self, dtype) -> int:
        """Bytes of shared memory per block."""
        return sum(self.shared_elements()) * np.dtype(dtype).itemsize

    def loads_per_thread(self) -> tuple[int, int]:
        """Groups of ``lanes`` values of A's and of B's tile that each thread loads per k tile."""
        groups = self.bm * self.bk // self.lanes, self.bk * self.bn // self.lanes
        return -(-groups[0] // self.threads), -(-groups[1] // self.threads)

    def check(self, fail) -> None:
        """Refuse (``fail(why)``) sizes that make no tiling."""
        sizes = (self.bm, self.bn, self.bk, self.tm, self.tn)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes):
            raise fail(f"bm, bn, bk, tm, tn must be positive ints, not {sizes}")
        if self.bm % self.tm or self.bn % self.tn:
            raise fail(f"tm must divide bm and tn divide bn (bm={self.bm}, tm={self.tm}, bn={self.bn}, tn={self.tn})")
        if not 1 <= self.threads <= 1024:
            raise fail(f"(bm/tm) x (bn/tn) = {self.threads} threads per block; CUDA allows 1 to 1024")
        if not isinstance(self.double_buffer, bool):
            raise fail(f"double_buffer must be True or False, not {self.double_buffer!r}")
        if self.lanes not in LANES:
            raise fail(f"lanes must be one of {LANES}, not {self.lanes!r}")
        if any(side % self.lanes for side in (self.tm, self.tn, self.bk)):
            raise fail(f"lanes={self.lanes} must divide tm, tn and bk (tm={self.tm}, tn={self.tn}, bk={self.bk})")
        if not (isinstance(self.group_rows, int) and not isinstance(self.group_rows, bool) and self.group_rows >= 1):
            raise fail(f"group_rows must be a positive int, not {self.group_rows!r}")


@register_strategy("gpu_sgemm")
def gpu_sgemm(kernel: Kernel, bm: int = 128, bn: int = 128, bk: int = 8, tm: int = 8, tn: int = 8,
              double_buffer: bool = True, lanes: int = 1, group_rows: int = 1) -> Kernel:
    """``kernel``'s matmul in ``bm x bn`` block tiles of C, ``bk`` steps of the reduction per
    shared tile, a ``tm x tn`` register tile per thread in groups of ``lanes``, blocks in
    groups of ``group_rows`` row tiles (see the module docstring)."""
    def fail(why: str) -> ScheduleError:
        return refuse("gpu_sgemm", kernel, why)

    tiling = Tiling(bm, bn, bk, tm, tn, double_buffer, lanes, group_rows)
    tiling.check(fail)
    check_plain("gpu_sgemm", kernel)
    found = find_matmul(kernel)
    if found is None:
        raise fail("no float matmul accumulating in the output's dtype (see find_matmul)")
    if found.tiles.dtype not in FLOATS:
        raise fail(f"it accumulates in {found.tiles.dtype} (float32 or float64 only)")
    if lanes * found.tiles.dtype.itemsize > VECTOR_BYTES:
        raise fail(f"lanes={lanes} of {found.tiles.dtype} pass the {VECTOR_BYTES} bytes of a vector access")
    if shares_output(kernel):
        raise fail(f"{kernel.output.name} shares memory with an input")
    builder = SgemmBuilder(kernel, found, tiling)
    if not isinstance(builder.blocks, Sym) and builder.blocks > MAX_BLOCKS:
        raise fail(f"{builder.blocks} tiles of {bm} x {bn}: more blocks than CUDA's {MAX_BLOCKS}")
    return replace(kernel, body=tidy(builder.build()))


class SgemmBuilder:
    """Builds the thread-serial form of one matmul nest (see the module docstring).

    Names: ``b`` the block, ``t`` the thread, ``m0``/``n0`` the tile's first row and column,
    ``kt`` the k tile, ``ty``/``tx`` the thread's row and column in the tile's grid of threads,
    ``v`` a lane of a group (``lanes > 1``).
    """

    def __init__(self, kernel: Kernel, found: MatmulNest, tiling: Tiling):
        s = self.shape = found.shape
        self.found, self.tiling, self.dtype = found, tiling, found.tiles.dtype
        name = self.name = Namer(kernel)
        self.b, self.t = Var(name("b")), Var(name("t"))
        self.m0, self.n0, self.kt = Var(name("m0")), Var(name("n0")), Var(name("kt"))
        self.lane = Var(name("v"))
        self.m_size, self.n_size = s.m, s.n
        self.k_size = math.prod(e for _, e in s.red)
        self.row_tiles, self.col_tiles = ceil_div(s.m, tiling.bm), ceil_div(s.n, tiling.bn)
        self.k_tiles = ceil_div(self.k_size, tiling.bk)
        self.blocks = extent_product([e for _, e in s.batch]) * self.row_tiles * self.col_tiles
        a_size, b_size = tiling.shared_elements()
        self.a_tile = Buffer(name("a_tile"), self.dtype, (a_size,))
        self.b_tile = Buffer(name("b_tile"), self.dtype, (b_size,))
        self.acc_tile = Buffer(name("acc_tile"), self.dtype, (tiling.threads * tiling.tm * tiling.tn,))
        self.zero = const(0, self.dtype)

    # -- the block ---------------------------------------------------------------------------

    def build(self) -> Stmt:
        """The block loop around the allocations, the tile's place and the phases."""
        tl = self.tiling
        allocations = [Allocate(self.a_tile, "shared"), Allocate(self.b_tile, "shared"), Allocate(self.acc_tile)]
        first = [self.zero_registers()]
        if tl.double_buffer:
            first += self.load_tile(Const(0), Const(0))
            k_loop = For(self.kt, self.k_tiles, self.phase(self.step_double_buffered()))
        else:
            k_loop = For(self.kt, self.k_tiles, Block([self.phase(self.load_tile(self.kt, Const(0))),
                                                       self.phase(self.compute(Const(0)))]))
        body = Block(allocations + self.place() + [self.phase(first), k_loop, self.phase(self.epilogue())])
        return For(self.b, self.blocks, body, "gpu_block", "x")

    def place(self) -> list[Stmt]:
        """The block's tile: ``n0``, ``m0`` and the batch indices from the block number (column
        tiles fastest, so neighbouring blocks share a row tile of A; in ``grouped_place`` order
        with ``group_rows``)."""
        batch = [(var.name, extent) for var, extent in self.shape.batch]
        if self.tiling.group_rows > 1:
            return self.grouped_place(batch)
        tiles = [("col", self.col_tiles), ("row", self.row_tiles)]
        where = unravel(self.b, batch + tiles[::-1])
        stmts: list[Stmt] = [Declare(self.n0, where["col"] * self.tiling.bn),
                             Declare(self.m0, where["row"] * self.tiling.bm)]
        return stmts + [Declare(var, where[var.name]) for var, _ in self.shape.batch]

    def grouped_place(self, batch: list) -> list[Stmt]:
        """The tile of block ``q`` (of one batch) in groups of ``G = group_rows`` row tiles: the
        blocks of a group run down its ``G`` row tiles of one column tile, then the next column
        tile, so that the blocks running at once share a few row tiles of A *and* a few column
        tiles of B in L2 (the last group has the row tiles left, ``rows``)::

            q = 0 1 2 3 4 5 ...  (G = 2)   ->   (row, col) = (0,0) (1,0) (0,1) (1,1) (0,2) ...
        """
        group = self.tiling.group_rows
        q, first, rows = Var(self.name("q")), Var(self.name("first")), Var(self.name("rows"))
        where = unravel(self.b, batch + [(q.name, self.row_tiles * self.col_tiles)])
        per_group = group * self.col_tiles
        stmts: list[Stmt] = [Declare(q, where[q.name]), Declare(first, divide(q, per_group) * group)]
        if divides(self.row_tiles, group):
            rows_here: Expr = Const(group)
        else:
            stmts.append(Declare(rows, Select(less(first + (group - 1), self.row_tiles), Const(group),
                                              size_expr(self.row_tiles) - first)))
            rows_here = rows
        within = remainder(q, per_group)
        stmts += [Declare(self.n0, Binary("/", within, rows_here, INDEX) * self.tiling.bn),
                  Declare(self.m0, (first + Binary("%", within, rows_here, INDEX)) * self.tiling.bm)]
        return stmts + [Declare(var, where[var.name]) for var, _ in self.shape.batch]

    def phase(self, stmts: list[Stmt]) -> Stmt:
        """One barrier phase: every thread of the block runs ``stmts``."""
        return For(self.t, self.tiling.threads, Block(stmts), "gpu_thread", "x")

    def register(self, c: Expr) -> Expr:
        """Index of this thread's register ``c`` in the block-level ``acc_tile``."""
        return self.t * (self.tiling.tm * self.tiling.tn) + c

    def zero_registers(self) -> Stmt:
        c = Var(self.name("c"))
        return For(c, self.tiling.tm * self.tiling.tn, Store(self.acc_tile, self.register(c), self.zero), "unrolled")

    # -- loading the tiles ---------------------------------------------------------------------

    def row_and_column(self, e: Expr, row_length: int, v: Var | None) -> tuple[Expr, Expr]:
        """Row and column of loaded value ``e`` in a tile whose rows are ``row_length`` long;
        with ``lanes``, of lane ``v`` of group ``e`` (a row holds ``row_length / lanes`` groups)."""
        if v is None:
            return e / row_length, e % row_length
        groups = row_length // self.tiling.lanes
        return e / groups, (e % groups) * self.tiling.lanes + v

    def a_value(self, e: Expr, kt: Expr, v: Var | None) -> tuple[Expr, Expr, list]:
        """Loaded value ``e`` of A's tile at k tile ``kt`` (with ``lanes``: lane ``v`` of group
        ``e``), where it goes in a stage of ``a_tile``, and its guards, ``(index, size)`` pairs
        (``k`` fastest: consecutive threads read consecutive ``k`` of a row)."""
        tl = self.tiling
        row, kk = self.row_and_column(e, tl.bk, v)
        m, k = self.m0 + row, kt * tl.bk + kk
        values = {**self.row_values(m), **self.red_values(k)}
        guards = [(m, self.m_size)] if not divides(self.m_size, tl.bm) else []
        guards += [(k, self.k_size)] if not divides(self.k_size, tl.bk) else []
        return substitute(self.shape.a_expr, values), kk * tl.a_stride + row, guards

    def b_value(self, e: Expr, kt: Expr, v: Var | None) -> tuple[Expr, Expr, list]:
        """Loaded value ``e`` of B's tile at k tile ``kt`` (lane ``v`` of group ``e``), where it
        goes in a stage of ``b_tile``, and its guards (``n`` fastest)."""
        tl = self.tiling
        kk, col = self.row_and_column(e, tl.bn, v)
        n, k = self.n0 + col, kt * tl.bk + kk
        values = {self.shape.col[0].name: n, **self.red_values(k)}
        guards = [(k, self.k_size)] if not divides(self.k_size, tl.bk) else []
        guards += [(n, self.n_size)] if not divides(self.n_size, tl.bn) else []
        return substitute(self.shape.b_expr, values), kk * tl.bn + col, guards

    def guarded(self, conditions: list[Expr], value: Expr) -> Expr:
        """``value`` where every condition holds, else 0 (the value is not read then)."""
        if not conditions:
            return value
        return Select(self.all_of(conditions), value, self.zero)

    @staticmethod
    def all_of(conditions: list[Expr]) -> Expr:
        cond = conditions[0]
        for more in conditions[1:]:
            cond = cond & more
        return cond

    def move(self, operand, e: Expr, kt: Expr, write) -> Stmt:
        """The store ``write(v, at, value)`` of value ``e`` of ``operand`` (``a_value`` or
        ``b_value``) at k tile ``kt``, guarded; with ``lanes``, of the group ``e``: a
        ``vectorized`` loop over its lanes ``v`` (a vector load where aligned), under an ``if``
        for the guards that hold for the whole group (0 stored where they fail) and with a
        ``select`` for those that differ between its lanes (a size that ``lanes`` does not divide)."""
        if self.tiling.lanes == 1:
            value, at, guards = operand(e, kt, None)
            return write(None, at, self.guarded([less(i, size) for i, size in guards], value))
        v = self.lane
        value, at, guards = operand(e, kt, v)
        whole, each = [], []
        for index, size in guards:
            if v.name not in free_vars(index):
                whole.append(less(index, size))
            elif divides(size, self.tiling.lanes):  # the group is inside where its first lane is
                whole.append(less(substitute(index, {v.name: Const(0)}), size))
            else:
                each.append(less(index, size))
        lanes = For(v, self.tiling.lanes, write(v, at, self.guarded(each, value)), "vectorized")
        if not whole:
            return lanes
        return If(self.all_of(whole), lanes, For(v, self.tiling.lanes, write(v, at, self.zero), "vectorized"))

    def row_values(self, m: Expr) -> dict[str, Expr]:
        return unravel(m, [(var.name, extent) for var, extent in self.shape.rows])

    def red_values(self, k: Expr) -> dict[str, Expr]:
        return unravel(k, [(var.name, extent) for var, extent in self.shape.red])

    def each_load(self, count: int, total: int, body) -> Stmt:
        """``body(i, e)`` for this thread's ``count`` loads ``e = i*threads + t`` of ``total``
        values or groups (the last guarded where ``threads`` does not divide ``total``)."""
        i = Var(self.name("i"))
        e = i * self.tiling.threads + self.t
        stmt = body(i, e)
        if count * self.tiling.threads != total:
            stmt = If(less(e, total), stmt)
        return For(i, count, stmt, "unrolled")

    def groups(self) -> tuple[int, int]:
        """Values (groups of ``lanes``) of A's and of B's tile per k tile."""
        tl = self.tiling
        return tl.bm * tl.bk // tl.lanes, tl.bk * tl.bn // tl.lanes

    def register_of(self, i: Expr, v: Var | None) -> Expr:
        """Where load ``i`` (lane ``v``) of this thread waits in its ``a_next``/``b_next``."""
        return i if v is None else i * self.tiling.lanes + v

    def stage(self, buffer: Buffer, stage: Expr) -> Expr:
        """The first element of ``stage`` in ``buffer`` (a_tile or b_tile)."""
        per_stage = buffer.size // self.tiling.stages
        return stage * per_stage

    def load_tile(self, kt: Expr, stage: Expr) -> list[Stmt]:
        """This thread's share of k tile ``kt`` of A and of B, stored into ``stage``."""
        a_count, b_count = self.tiling.loads_per_thread()
        a_total, b_total = self.groups()

        def into(tile, operand):
            return lambda i, e: self.move(operand, e, kt,
                                          lambda v, at, value: Store(tile, self.stage(tile, stage) + at, value))

        return [self.each_load(a_count, a_total, into(self.a_tile, self.a_value)),
                self.each_load(b_count, b_total, into(self.b_tile, self.b_value))]

    # -- computing ---------------------------------------------------------------------------

    def thread_place(self) -> tuple[list[Stmt], Var, Var]:
        """Declarations of ``ty`` and ``tx``, the thread's row and column in the tile's grid of threads."""
        ty, tx = Var(self.name("ty")), Var(self.name("tx"))
        cols = self.tiling.thread_cols
        return [Declare(ty, self.t / cols), Declare(tx, self.t % cols)], ty, tx

    def fragment(self, frag: Buffer, tile: Buffer, start: Expr, owner: Var, threads: int, j: Var) -> Stmt:
        """``frag`` (the thread's ``len(frag)`` rows of A or columns of B at one ``k``) from
        ``tile`` at ``start`` (``j`` the loop's variable): element ``owner + j*threads``
        (``lanes`` 1), or group ``j`` at ``(j*threads + owner)*lanes``, one vector load each."""
        lanes = self.tiling.lanes
        if lanes == 1:
            return For(j, frag.size, Store(frag, j, Load(tile, start + owner + j * threads)), "unrolled")
        v = self.lane
        at = start + j * (threads * lanes) + owner * lanes + v
        return For(j, frag.size // lanes, For(v, lanes, Store(frag, j * lanes + v, Load(tile, at)), "vectorized"),
                   "unrolled")

    def compute(self, stage: Expr) -> list[Stmt]:
        """The thread's ``tm x tn`` register tile += its rows of ``a_tile`` times its columns of
        ``b_tile`` over the ``bk`` values of ``stage``; ``a`` and ``b`` fragments in registers."""
        tl = self.tiling
        place, ty, tx = self.thread_place()
        a_frag = Buffer(self.name("a_frag"), self.dtype, (tl.tm,))
        b_frag = Buffer(self.name("b_frag"), self.dtype, (tl.tn,))
        kk, r, c = Var(self.name("kk")), Var(self.name("r")), Var(self.name("c"))
        acc_at = self.register(r * tl.tn + c)
        product = Binary("*", Load(a_frag, r), Load(b_frag, c), self.dtype)
        update = Store(self.acc_tile, acc_at, Binary("+", Load(self.acc_tile, acc_at), product, self.dtype))
        a_start = self.stage(self.a_tile, stage) + kk * tl.a_stride
        b_start = self.stage(self.b_tile, stage) + kk * tl.bn
        step = Block([self.fragment(a_frag, self.a_tile, a_start, ty, tl.thread_rows, r),
                      self.fragment(b_frag, self.b_tile, b_start, tx, tl.thread_cols, c),
                      For(r, tl.tm, For(c, tl.tn, update, "unrolled"), "unrolled")])
        return place + [Allocate(a_frag), Allocate(b_frag), For(kk, tl.bk, step, "unrolled")]

    def step_double_buffered(self) -> list[Stmt]:
        """One k tile with two stages: tile ``kt + 1`` loaded into registers first (its loads in
        flight while the thread computes), stage ``kt % 2`` computed, then the registers stored
        into stage ``(kt + 1) % 2``, which the next k tile reads after the loop's barrier."""
        tl = self.tiling
        a_count, b_count = tl.loads_per_thread()
        a_total, b_total = self.groups()
        a_next = Buffer(self.name("a_next"), self.dtype, (a_count * tl.lanes,))
        b_next = Buffer(self.name("b_next"), self.dtype, (b_count * tl.lanes,))
        following = self.kt + 1
        more = less(following, self.k_tiles)
        current, other = self.kt % 2, following % 2

        def fetch(buffer, operand):
            return lambda i, e: self.move(operand, e, following,
                                          lambda v, at, value: Store(buffer, self.register_of(i, v), value))

        def keep(tile, buffer, operand):
            def body(i, e):
                v = None if tl.lanes == 1 else self.lane
                at = operand(e, following, v)[1]
                store = Store(tile, self.stage(tile, other) + at, Load(buffer, self.register_of(i, v)))
                return store if v is None else For(v, tl.lanes, store, "vectorized")
            return body

        loads = [self.each_load(a_count, a_total, fetch(a_next, self.a_value)),
                 self.each_load(b_count, b_total, fetch(b_next, self.b_value))]
        stores = [self.each_load(a_count, a_total, keep(self.a_tile, a_next, self.a_value)),
                  self.each_load(b_count, b_total, keep(self.b_tile, b_next, self.b_value))]
        return [Allocate(a_next), Allocate(b_next), If(more, Block(loads))] + self.compute(current) + [
            If(more, Block(stores))]

    # -- the epilogue --------------------------------------------------------------------------

    def epilogue(self) -> list[Stmt]:
        """Each value of the thread's register tile that lies inside C through the nest's own
        store (``out[index] = value(acc)``), the batch, row and column indices declared; with
        ``lanes``, a group of columns at a time (``column_group``)."""
        tl = self.tiling
        place, ty, tx = self.thread_place()
        r, m = Var(self.name("r")), Var(self.name("m"))
        if tl.lanes == 1:
            row_at: Expr = ty + r * tl.thread_rows
            reg_row: Expr = r
            loops = [(r, tl.tm)]
        else:
            g, w = Var(self.name("g")), Var(self.name("w"))
            row_at = g * (tl.thread_rows * tl.lanes) + ty * tl.lanes + w
            reg_row = g * tl.lanes + w
            loops = [(g, tl.tm // tl.lanes), (w, tl.lanes)]
        columns = self.columns(tx, reg_row) if tl.lanes == 1 else self.column_groups(tx, reg_row)
        row: Stmt = Block(declare_rows(self.shape.rows, m) + [columns])
        if not divides(self.m_size, tl.bm):
            row = If(less(m, self.m_size), row)
        row = Block([Declare(m, self.m0 + row_at), row])
        for var, extent in reversed(loops):
            row = For(var, extent, row, "unrolled")
        return place + [row]

    def columns(self, tx: Var, reg_row: Expr) -> Stmt:
        """The thread's ``tn`` columns of its register row ``reg_row``, ``thread_cols`` apart."""
        tl, found = self.tiling, self.found
        c, n = Var(self.name("c")), Var(self.name("n"))
        value = Declare(found.acc, Load(self.acc_tile, self.register(reg_row * tl.tn + c)))
        column: Stmt = Block([Declare(self.shape.col[0], n), value, found.store])
        if not divides(self.n_size, tl.bn):
            column = If(less(n, self.n_size), column)
        return For(c, tl.tn, Block([Declare(n, self.n0 + tx + c * tl.thread_cols), column]), "unrolled")

    def column_groups(self, tx: Var, reg_row: Expr) -> Stmt:
        """The thread's ``tn`` columns of register row ``reg_row`` in groups of ``lanes``
        consecutive ones, each a ``vectorized`` loop whose store (and bias load ...) the CUDA
        renderer makes one vector access where aligned: the column variable is ``n + v`` in
        every index, ``n`` a multiple of the lanes, so that the lane is a term of its own."""
        tl, found, v = self.tiling, self.found, self.lane
        g, n = Var(self.name("g")), Var(self.name("n"))
        value = Declare(found.acc, Load(self.acc_tile, self.register(reg_row * tl.tn + g * tl.lanes + v)))
        column: Stmt = Block([value, substitute_stmt(found.store, {self.shape.col[0].name: n + v})])
        whole = divides(self.n_size, tl.bn) or divides(self.n_size, tl.lanes)
        if not whole:
            column = If(less(n + v, self.n_size), column)
        group: Stmt = For(v, tl.lanes, column, "vectorized")
        if not divides(self.n_size, tl.bn) and whole:
            group = If(less(n, self.n_size), group)
        start = self.n0 + g * (tl.thread_cols * tl.lanes) + tx * tl.lanes
        return For(g, tl.tn // tl.lanes, Block([Declare(n, start), group]), "unrolled")


# ----------------------------------------------------------------------------------------------
# The default rule
# ----------------------------------------------------------------------------------------------

MIN_WORK = 1 << 16  # M*N*K below which a thread per value (gpu_threads) is as good: one block or two
MIN_ROWS = 16  # fewer rows (a matrix-vector product): a thread per column reads B once, coalesced
#: float32 tiles by (bm, bn): 256 threads each; 128 x 128 keeps 64 values of C per thread (32 FLOPs
#: per byte loaded), 64 wide where that side of C is at most 64 (a conv's 64 channels: no half-empty tile).
#: ``lanes=4``: each thread's rows and columns in groups of 4, its fragments one ``float4`` shared
#: load per group (an 8 x 8 tile: 4 vector loads per 64 multiply-adds instead of 16 scalar ones,
#: which leave the loop issue-bound), the tiles' loads and C's stores ``float4`` where aligned
TILES = {(128, 128): dict(bm=128, bn=128, bk=8, tm=8, tn=8, lanes=4),
         (128, 64): dict(bm=128, bn=64, bk=8, tm=8, tn=4, lanes=4),
         (64, 128): dict(bm=64, bn=128, bk=8, tm=4, tn=8, lanes=4),
         (64, 64): dict(bm=64, bn=64, bk=16, tm=4, tn=4, lanes=4)}
SMALL = TILES[64, 64]  # four times the blocks of 128 x 128: small or symbolic sizes
SMALL_F64 = dict(bm=64, bn=64, bk=8, tm=4, tn=4)  # float64's 16 values of C take 32 registers
#: the layout before ``lanes``: a thread's rows and columns ``bm/tm`` and ``bn/tn`` apart (still a choice)
STRIDED = dict(bm=128, bn=128, bk=8, tm=8, tn=8)


def gpu_sgemm_steps(kernel: Kernel, target=None) -> list:
    """The rule for matmul-like nests on a GPU: ``gpu_sgemm`` for a float32 or float64 matmul
    of at least ``MIN_WORK`` multiply-adds (``estimated_work``) and ``MIN_ROWS`` rows or a
    symbolic number of them; tiles from ``default_tiling``."""
    try:
        check_plain("gpu_sgemm", kernel)
    except ScheduleError:
        return []
    found = find_matmul(kernel)
    if found is None or found.tiles.dtype not in FLOATS or shares_output(kernel):
        return []
    s = found.shape
    if estimated_work(s) < MIN_WORK or (not isinstance(s.m, Sym) and s.m < MIN_ROWS):
        return []
    return [Strategy("gpu_sgemm", **default_tiling(s, found.tiles.dtype, target))]


def estimated_work(s) -> float:
    """``M*N*K`` for the ``MIN_WORK`` test, a symbolic ``M`` counted as ``MIN_ROWS`` rows and a
    symbolic ``N`` or ``K`` as large. A GPU packs nothing: a tile whose rows are mostly past
    ``M`` (a decode step's one row) reads B once as a thread per column would, so a symbolic
    ``M`` needs only enough work in ``N*K`` for the calls where it is large."""
    m = MIN_ROWS if isinstance(s.m, Sym) else s.m
    n, k = (math.inf if isinstance(size, Sym) else size for size in (s.n, s.k))
    return m * n * k


def default_tiling(s, dtype, target=None) -> dict:
    """Tiles for ``target``, double buffered: float64 ``SMALL_F64`` (scalar fragments);
    float32 ``TILES[bm, bn]`` (``lanes=4``: ``float4`` fragments),
    each side 128 where C is longer than 64 along it, else 64, where those tiles give every SM
    of ``target`` a block at least; else (small or symbolic sizes) ``SMALL``, 64 x 64."""
    if np.dtype(dtype) == np.float64:
        return dict(SMALL_F64, double_buffer=True)
    if isinstance(s.m, Sym) or isinstance(s.n, Sym):
        return dict(SMALL, double_buffer=True)
    tiling = TILES[128 if s.m > 64 else 64, 128 if s.n > 64 else 64]
    sms = getattr(target, "sm_count", None) or 1
    blocks = extent_product([e for _, e in s.batch]) * ceil_div(s.m, tiling["bm"]) * ceil_div(s.n, tiling["bn"])
    if isinstance(blocks, Sym) or blocks < sms:
        tiling = SMALL
    return dict(tiling, double_buffer=True)
