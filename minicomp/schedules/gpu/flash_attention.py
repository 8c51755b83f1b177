"""Strategy ``gpu_flash_attention``: attention in FlashAttention-2 tiles on a GPU.

The plain attention nest (``lower_attention``: per query row, the online softmax of
``minicomp.lower.online_softmax``) with a thread per row (``gpu_threads``) reads all of K and
V from global memory for every query, with a dot product of ``depth`` values and an output row
of ``head`` values serial in one thread. Here a block takes a tile of ``bq`` queries of one
batch element, keeps it in shared memory, and streams the keys through shared memory
``bk`` at a time; each thread keeps a ``tm x tn`` tile of the scores ``S`` and a ``tm x te``
tile of the output ``O`` in registers (``te = head / (bk/tn)``), as the SGEMM does
(``sgemm.py``). For each tile of keys::

    S      = Qtile @ Ktile^T                 # registers: tm x tn a thread, from shared Q^T, K^T
    S      = f(S)   (scale, causal mask ...) # the plain nest's score expression, in registers
    m_new  = max(m, rowmax(S))               # the row's bk/tn threads: one warp reduce (shuffles)
    P      = exp(S - m_new); l = l*c + rowsum(P); O = O*c   (c = exp(m - m_new))
    Ptile  -> shared memory (P^T)            # a thread needs every key of its rows for P @ V
    O     += P @ Vtile                       # registers: tm x te a thread, from shared P^T and V
    out    = O / l   (after the last tile; l summed over the row's threads by a warp reduce)

The threads that share query rows are ``bk/tn`` consecutive lanes of one warp (``tx = t %
(bk/tn)``, ``ty = t / (bk/tn)``), so the row max and the final row sum are butterflies of
``WarpReduce`` over them; each thread keeps its own running max (the same in every lane of
the row) and its partial sum of its columns in per-thread ``local`` arrays (registers after
``fuse_threads``: every loop over a register tile is unrolled). A thread's rows, keys and
head columns are groups of up to 4 neighbouring ones (``ty*4 + 0..3``, then ``4*rows_of_threads``
further on), so that its reads of shared memory are 16-byte aligned runs (nvcc's ``LDS.128``)
that neighbouring threads take from different banks.

In the thread-serial form (``fuse_threads.py``), ``gpu_flash_attention(bq=128, bk=32, tm=8,
tn=4)`` (the default for float32), attention 8 x 16 heads x 2048 x 64 (128 threads: 16 rows of
threads x 8 along the keys; a thread's rows ``ty*4 + 0..3`` and ``64 + ty*4 + 0..3``)::

    for i0 in 0..8:                              gpu_block.x for b in 0..2048:    # (batch*head, 128 queries)
      for i1 in 0..16:                             shared q_s: f32[64*132]        # Q^T, rows padded
        for i2 in 0..2048:                         shared k_s: f32[64*36]         # K^T of a key tile
          acc[e] = 0; m = -inf; l = 0              shared v_s: f32[32*64]; shared p_s: f32[32*132]
          for j in 0..2048:               --->     local o_acc: f32[128*64]; local s_acc: f32[128*32] ...
            dot = sum over rk of q.k                 gpu_thread.x for t in 0..128:  # Q, K tile 0, V tile 0 (registers)
            score = dot * 0.125                      for kb in 0..64:
            m_new = ...; acc[e] = ...                  gpu_thread.x for t in 0..128:  # S, f(S), partial row max
          out[i0, i1, i2, e] = acc[e] / l                v_s[...] = v_next[...]; s_acc[t*32 + r*4 + c] += q_s[..] * k_s[..]
                                                       gpu_thread.x for t in 0..128:  # row max, P, l, O*c
                                                         warp_max(tile_max[t*8 + r], 8); p_s[...] = exp(...)
                                                       gpu_thread.x for t in 0..128:  # O += P V; next K, V
                                                         k_next = K tile kb+1; v_next = V tile kb+1 (loads in flight)
                                                         o_acc[t*64 + r*8 + c] += p_s[..] * v_s[..]; k_s = k_next
                                                     gpu_thread.x for t in 0..128:  # out = O / warp_sum(l)

nvcc turns the runs of 4 into 128-bit shared loads (``ld.shared.v4.f32``) and keeps both
register tiles in registers (219 a thread, no spill: two blocks an SM).

Two barriers per key tile (before ``P @ V``, and at the end of the tile); with ``prefetch``
(the default) the next tile's K and V are loaded into registers during ``P @ V`` and stored
into shared memory after it (K) and at the start of the next tile (V), so their latency hides
behind the arithmetic; without it, a third phase per tile loads them first.

Tails and sizes: query rows past ``Sq`` and keys past ``Sk`` load as zeros; keys past ``Sk``
score -inf, and so do rows past ``Sq`` where the score expression reads memory (it is not
evaluated there: it may read a mask or a bias at ``(i, j)``); rows past ``Sq`` are not stored, head columns past ``head`` (``te`` rounds up) load as zeros and are
not stored; none of these guards exists where the tiles divide the sizes. ``Sq`` and ``Sk``
may be symbolic (``ceil_div`` blocks and key tiles); the batch, depth and head sizes may not.
A constant mask (causal attention's ``constant[i*Sk + j]``) is read at compile time as the
CPU strategy reads it (``cpu/flash_attention.py``: ``score_masks``): key tiles it hides
entirely are skipped (the block's loop over key tiles runs its live range only), tiles it
leaves entirely visible run the score with the mask folded away, and only the mixed tiles
(causal: the diagonal ones) load it; the blocks of causal attention run the longest query
tiles first.

Requires the plain attention nest (``read_plain_attention``) of float32 or float64, whose
output shares memory with no input; ``bk/tn`` a power of two up to a warp, at most 1024
threads. Guarantees the thread-serial form, and the plain nest's results up to float
rounding (a row's sums are combined in another order).

The default rule, ``gpu_flash_attention_steps``: ``FLOAT32_TILES`` (128 queries x 32 keys, 8 x
4 scores a thread, 128 threads) for float32 with a head up to 64, a score that reads no mask
or bias, and more than 64 queries; ``SMALL_TILES`` (64 x 32, 4 x 4 a thread) otherwise (causal
attention, heads up to ``MAX_HEAD``, float64, few queries); where the strategy is refused, or
the head or depth is wider, ``gpu_threads`` runs the plain nest. Measured on an H100,
attention 8 x 16 heads x 2048 x 64, float32: 3.7 ms (37 TFLOP/s of useful work) against 4.0
ms for torch's ``scaled_dot_product_attention`` and 6.4 ms eager; causal 2.4 ms against 2.2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ...ir.loops import (BOOL, Allocate, Binary, Block, Buffer, Call, Const, Declare, Expr, For, If, Kernel, Load,
                         Select, Stmt, Store, Var, WarpReduce, as_expr, const)
from ...ir.rewrite import loads, substitute
from ...ir.schedule import ScheduleError, tidy
from ...ir.symbolic import Sym, ceil_div
from ..cpu.flash_attention import (PlainAttention, dot_factors, live_key_blocks, mixed_key_blocks,
                                   read_plain_attention, row_parts_problem, score_masks, without_masks)
from ..cpu.flash_attention import _per_block as select_per_block
from ..cpu.plain import refuse, shares_output
from ..strategy import Strategy, register_strategy
from .common import MAX_BLOCKS, WARP, Namer, check_plain, divide, divides, less, remainder, unravel

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
VECTOR = 4  # a thread's rows, keys and head columns in runs of up to 4: 16-byte shared loads (float32)
SHARED_PAD = 4  # floats added to a transposed tile's rows of a multiple of 32: the stores spread over banks


@dataclass(frozen=True)
class FlashTiling:
    """The tiles of one ``gpu_flash_attention``: a block takes ``bq`` queries and ``bk`` keys at a
    time, a thread ``tm`` queries x ``tn`` keys of the scores; ``prefetch``: the next key tile
    loaded into registers while the current one is used."""

    bq: int
    bk: int
    tm: int
    tn: int
    prefetch: bool = True

    @property
    def cols(self) -> int:
        """Threads along the keys: the lanes that share a query row (a warp reduce's width)."""
        return self.bk // self.tn

    @property
    def rows(self) -> int:
        """Threads along the queries."""
        return self.bq // self.tm

    @property
    def threads(self) -> int:
        return self.rows * self.cols

    def problem(self) -> str | None:
        """Why these tiles cannot be used, or None."""
        sizes = (self.bq, self.bk, self.tm, self.tn)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
            return f"bq, bk, tm and tn must be positive ints, not {sizes}"
        if self.bq % self.tm or self.bk % self.tn:
            return f"tm={self.tm} must divide bq={self.bq} and tn={self.tn} bk={self.bk}"
        if self.cols & (self.cols - 1) or self.cols > WARP:
            return f"bk/tn = {self.cols} threads share a query row: a power of two up to {WARP} (one warp reduce)"
        if self.threads > 1024:
            return f"{self.threads} threads a block, more than CUDA's 1024"
        if not isinstance(self.prefetch, bool):
            return f"prefetch must be True or False, not {self.prefetch!r}"
        return None


def padded(n: int) -> int:
    """The row length of a transposed shared tile of ``n`` columns: ``n + SHARED_PAD`` where ``n``
    is a multiple of 32 (a column's elements would all lie in one bank), else ``n``."""
    return n + SHARED_PAD if n % 32 == 0 else n


def run_length(count: int) -> int:
    """How many neighbouring rows (keys, columns) a thread takes together: the largest of
    ``VECTOR``, 2 and 1 that divides its ``count``."""
    return next(n for n in (VECTOR, 2, 1) if count % n == 0)


# ----------------------------------------------------------------------------------------------
# The strategy and its default rule
# ----------------------------------------------------------------------------------------------


@register_strategy("gpu_flash_attention")
def gpu_flash_attention(kernel: Kernel, bq: int = 128, bk: int = 32, tm: int = 8, tn: int = 4,
                        prefetch: bool = True) -> Kernel:
    """The plain attention nest of ``kernel`` as FlashAttention-2 tiles on a GPU: a block per
    ``bq`` queries of a batch element, ``bk`` keys at a time through shared memory, ``tm x tn``
    scores a thread (module docstring). ``ScheduleError`` where it does not apply."""
    def fail(why: str) -> ScheduleError:
        return refuse("gpu_flash_attention", kernel, why)

    tiling = FlashTiling(bq, bk, tm, tn, prefetch)
    problem = tiling.problem()
    if problem:
        raise fail(problem)
    check_plain("gpu_flash_attention", kernel)
    try:
        plain = read_plain_attention(kernel)
    except ScheduleError as error:
        raise fail(error.args[0]) from None
    row, dtype = plain.row, kernel.output.dtype
    if dtype not in FLOATS or row.dot.dtype != dtype or row.score.dtype != dtype:
        raise fail(f"its scores are {row.score.dtype}, its output {dtype} (float32 or float64 only)")
    if shares_output(kernel):
        raise fail(f"{kernel.output.name} shares memory with an input")
    sizes = (kernel.output.shape[-1], *kernel.output.shape[:-2], *(extent for _, extent in row.qk.axes))
    if any(isinstance(size, Sym) for size in sizes):
        raise fail("the head size, batch or depth is symbolic: the tiles need them when compiling")
    problem = row_parts_problem(kernel, plain)
    if problem:
        raise fail(problem)
    builder = FlashBuilder(kernel, plain, tiling)
    if not isinstance(builder.blocks, Sym) and builder.blocks > MAX_BLOCKS:
        raise fail(f"{builder.blocks} blocks: more than CUDA's {MAX_BLOCKS}")
    return replace(kernel, body=tidy(builder.build()))


#: float32 up to a head of 64: 128 queries x 32 keys, 8 x 4 scores and 8 x head/8 outputs a thread, 128
#: threads (219 registers at a head of 64: two blocks an SM). Measured on an H100, attention 8 x 16 heads x
#: 2048 x 64: 3.7 ms, against 4.4 ms for 128 x 64 keys at 4 x 8 scores and 8.4 ms at 8 x 8 (255 registers)
FLOAT32_TILES = dict(bq=128, bk=32, tm=8, tn=4)
#: where the score reads a mask or a bias (causal: key tiles are skipped, the blocks' work differs and
#: smaller blocks balance it: 2.4 ms against 2.7 ms with FLOAT32_TILES on the H100; a mask over a symbolic
#: length, loaded in every tile, would spill FLOAT32_TILES' registers), a head of 65..128 (its outputs
#: take twice the registers), float64
SMALL_TILES = dict(bq=64, bk=32, tm=4, tn=4)
MAX_HEAD = 128  # a wider head (more output columns a thread than registers hold): gpu_threads
MAX_DEPTH = 256  # a longer dot product unrolls into too much code: gpu_threads
#: fewer scores a (batch, head) than this (an 8 x 32 corner of one 64 x 32 tile): the tile's
#: threads would mostly compute padding, and a thread per output value (gpu_threads) does the
#: little work there is sooner
MIN_SCORES = 256


def gpu_flash_attention_steps(kernel: Kernel, target=None) -> list:
    """The rule for attention on a GPU: ``gpu_flash_attention`` with ``FLOAT32_TILES`` (float32,
    a head up to 64, a score that reads no mask or bias, more queries than ``SMALL_TILES``
    takes), else ``SMALL_TILES`` (float64 with a head over 64
    without ``prefetch``: its registers would spill), where the strategy applies, the head is
    at most ``MAX_HEAD`` and the depth ``MAX_DEPTH``, there are at least ``MIN_SCORES`` scores
    per (batch, head) where the lengths are static, and the tiles' shared memory fits
    ``target``; nothing otherwise (the plain nest then gets ``gpu_threads``)."""
    try:
        check_plain("gpu_flash_attention", kernel)
        plain = read_plain_attention(kernel)
    except ScheduleError:
        return []
    head, dtype = kernel.output.shape[-1], kernel.output.dtype
    depth = plain.row.qk.axes[0][1] if len(plain.row.qk.axes) == 1 else None
    if isinstance(head, Sym) or isinstance(depth, Sym) or depth is None or head > MAX_HEAD or depth > MAX_DEPTH:
        return []
    sq, sk = kernel.output.shape[-2], plain.row.keys
    if not isinstance(sq, Sym) and not isinstance(sk, Sym) and sq * sk < MIN_SCORES:
        return []
    tiles = dict(FLOAT32_TILES) if dtype == np.float32 and head <= 64 else dict(SMALL_TILES)
    if dtype == np.float64 and head > 64:
        tiles["prefetch"] = False
    try:
        gpu_flash_attention(kernel, **tiles)
    except ScheduleError:
        return []
    if tiles == FLOAT32_TILES and ((not isinstance(sq, Sym) and sq <= SMALL_TILES["bq"]) or list(loads(plain.row.score))):
        tiles = dict(SMALL_TILES)  # few queries (no block of mostly idle threads), or a mask or bias
    limit = getattr(target, "shared_bytes", None)
    if limit and shared_bytes(FlashTiling(**tiles), depth, head, dtype.itemsize) > limit:
        return []
    return [Strategy("gpu_flash_attention", **tiles)]


def shared_bytes(tiling: FlashTiling, depth: int, head: int, itemsize: int) -> int:
    """The shared memory of a block: Q^T, K^T, V and P^T tiles."""
    dp = -(-head // tiling.cols) * tiling.cols
    elements = depth * (padded(tiling.bq) + padded(tiling.bk)) + tiling.bk * (dp + padded(tiling.bq))
    return elements * itemsize


# ----------------------------------------------------------------------------------------------
# Building the thread-serial form
# ----------------------------------------------------------------------------------------------


def per_query_tile(qb: Expr, values: list[int]) -> Expr:
    """``values[qb]`` as an expression: ``a*qb + c`` where the values are that line (causal
    attention's live key tiles), else ``select_per_block``'s chain of selects. No values (no
    query tile: zero queries, an empty grid): 0, never evaluated."""
    if not values:
        return as_expr(0)
    if len(values) >= 2:
        a, c = values[1] - values[0], values[0]
        if all(v == a * n + c for n, v in enumerate(values)):
            return qb * a + c if a else as_expr(c)
    return select_per_block(qb, values)


class FlashBuilder:
    """Builds the thread-serial form of one plain attention nest (module docstring).

    Names: ``b`` the block, ``t`` the thread, ``ty``/``tx`` its row and column among the
    block's threads, ``qb``/``q0`` the query tile and its first query, ``kb`` the key tile.
    """

    def __init__(self, kernel: Kernel, plain: PlainAttention, tiling: FlashTiling):
        row, out = plain.row, kernel.output
        self.kernel, self.plain, self.tl = kernel, plain, tiling
        self.dtype = out.dtype
        self.sq, self.sk, self.head = out.shape[-2], row.keys, out.shape[-1]
        (self.d, self.depth), = row.qk.axes
        self.q_expr, self.k_expr = dot_factors(row)
        self.v_expr, self.dot, self.score = row.v, row.dot, row.score
        self.i, self.j, self.e = plain.query, row.j, row.e
        self.out, self.out_at = out, row.out_at
        self.batch = [(loop.var, loop.extent) for loop in plain.batch]
        self.nbatch = math.prod(extent for _, extent in self.batch)
        self.nqb, self.nkb = ceil_div(self.sq, tiling.bq), ceil_div(self.sk, tiling.bk)
        self.blocks = self.nbatch * self.nqb
        self.te = -(-self.head // tiling.cols)  # head columns a thread
        self.dp = self.te * tiling.cols  # the head padded to whole columns of threads
        self.runs = (run_length(tiling.tm), run_length(tiling.tn), run_length(self.te))
        static = not isinstance(self.sq, Sym) and not isinstance(self.sk, Sym)
        self.masks = score_masks(plain, kernel.constants, self.sq) if static else []
        self.live = live_key_blocks(self.masks, self.sq, self.sk, tiling.bq, tiling.bk) if self.masks else None
        self.mixed = mixed_key_blocks(self.masks, self.live, self.sq, self.sk, tiling.bq, tiling.bk)
        self.zero, self.minus_inf = const(0, self.dtype), const(-np.inf, self.dtype)
        name = self.name = Namer(kernel)
        self.b, self.t, self.ty, self.tx = (Var(name(n)) for n in ("b", "t", "ty", "tx"))
        self.bf, self.qb, self.q0, self.kb = (Var(name(n)) for n in ("bf", "qb", "q0", "kb"))
        self.lo, self.hi = Var(name("kb_lo")), Var(name("kb_hi"))
        tl, dt, threads = tiling, self.dtype, tiling.threads
        self.q_stride, self.k_stride, self.p_stride = padded(tl.bq), padded(tl.bk), padded(tl.bq)
        self.q_s = Buffer(name("q_s"), dt, (self.depth * self.q_stride,))
        self.k_s = Buffer(name("k_s"), dt, (self.depth * self.k_stride,))
        self.v_s = Buffer(name("v_s"), dt, (tl.bk * self.dp,))
        self.p_s = Buffer(name("p_s"), dt, (tl.bk * self.p_stride,))
        self.o_acc = Buffer(name("o_acc"), dt, (threads * tl.tm * self.te,))
        self.s_acc = Buffer(name("s_acc"), dt, (threads * tl.tm * tl.tn,))
        self.m_run = Buffer(name("row_max"), dt, (threads * tl.tm,))
        self.l_run = Buffer(name("row_sum"), dt, (threads * tl.tm,))
        self.mx_part = Buffer(name("tile_max"), dt, (threads * tl.tm,))
        self.v_vec = run_length(self.dp) if self.head % run_length(self.dp) == 0 else 1
        self.v_loads = -(-tl.bk * self.dp // (threads * self.v_vec)) * self.v_vec  # V values a thread loads
        self.v_next = Buffer(name("v_next"), dt, (threads * self.v_loads,))

    # -- the block ---------------------------------------------------------------------------

    def build(self) -> Stmt:
        shared = [Allocate(buf, "shared") for buf in (self.q_s, self.k_s, self.v_s, self.p_s)]
        local = [Allocate(buf) for buf in (self.o_acc, self.s_acc, self.m_run, self.l_run, self.mx_part)]
        if self.tl.prefetch:
            local.append(Allocate(self.v_next))
        body = shared + local + self.place() + [self.prologue(), self.key_tiles(), self.epilogue()]
        return For(self.b, self.blocks, Block(body), "gpu_block", "x")

    def place(self) -> list[Stmt]:
        """The block's batch element and query tile (query tiles fastest: the blocks of one batch
        element, which read the same K and V, run together), and its live key tiles."""
        stmts: list[Stmt] = []
        tile = remainder(self.b, self.nqb)
        if self.live is not None:  # the longest tiles first (causal: the last queries)
            tile = (as_expr(self.nqb) - 1) - tile
        stmts += [Declare(self.qb, tile), Declare(self.q0, self.qb * self.tl.bq)]
        if self.batch:
            stmts.append(Declare(self.bf, divide(self.b, self.nqb)))
            where = unravel(self.bf, [(var.name, extent) for var, extent in self.batch])
            stmts += [Declare(var, where[var.name]) for var, _ in self.batch]
        if self.live is None:
            stmts += [Declare(self.lo, Const(0)), Declare(self.hi, as_expr(self.nkb))]
        else:
            stmts += [Declare(self.lo, per_query_tile(self.qb, [lo for lo, _ in self.live])),
                      Declare(self.hi, per_query_tile(self.qb, [hi for _, hi in self.live]))]
        return stmts

    def phase(self, stmts: list[Stmt]) -> Stmt:
        """One barrier phase: every thread of the block runs ``stmts`` (its ``ty``, ``tx`` declared)."""
        cols = self.tl.cols
        place = [Declare(self.ty, divide(self.t, cols)), Declare(self.tx, remainder(self.t, cols))]
        return For(self.t, self.tl.threads, Block(place + stmts), "gpu_thread", "x")

    def mine(self, buffer: Buffer, c: Expr) -> Expr:
        """Index of this thread's value ``c`` in a block-level per-thread array (``t*k + c``)."""
        return self.t * (buffer.size // self.tl.threads) + c

    def loop(self, var: Var, extent: int, body: Stmt) -> Stmt:
        return For(var, extent, body, "unrolled")

    # -- which rows, keys and head columns a thread owns -----------------------------------------

    @staticmethod
    def owned(k: Expr, coord: Var, threads: int, run: int, count: int) -> Expr:
        """Position of a thread's ``k``-th of ``count`` values along an axis that ``threads``
        threads share, in runs of ``run``: ``(k/run)*(threads*run) + coord*run + k%run``."""
        if run == count:
            return coord * run + k
        if run == 1:
            return k * threads + coord
        return (k / run) * (threads * run) + coord * run + k % run

    def query_row(self, r: Expr) -> Expr:
        return self.owned(r, self.ty, self.tl.rows, self.runs[0], self.tl.tm)

    def key_col(self, c: Expr) -> Expr:
        return self.owned(c, self.tx, self.tl.cols, self.runs[1], self.tl.tn)

    def head_col(self, c: Expr) -> Expr:
        return self.owned(c, self.tx, self.tl.cols, self.runs[2], self.te)

    # -- loading tiles -------------------------------------------------------------------------

    def spread(self, rows: int, width: int, vec: int, body) -> Stmt:
        """``body(n, row, col)`` for this thread's groups of ``vec`` neighbouring columns of a
        ``rows x width`` tile: group ``n*threads + t`` (row-major, so neighbouring threads take
        neighbouring columns: coalesced), the last round guarded where it overhangs."""
        threads, per_row = self.tl.threads, width // vec
        total = rows * per_row
        n = Var(self.name("n"))
        g = n * threads + self.t
        stmt = body(n, g / per_row, (g % per_row) * vec)
        if total % threads:
            stmt = If(less(g, total), stmt)
        return self.loop(n, -(-total // threads), stmt)

    def lanes(self, vec: int, body, valid: Expr | None, store_zero) -> Stmt:
        """``body(v)`` over the ``vec`` lanes of a group (``vectorized``: one vector load of global
        memory), or ``store_zero(v)`` where ``valid`` fails."""
        v = Var(self.name("v"))
        loop = For(v, vec, body(v), "vectorized")
        if valid is None:
            return loop
        return If(valid, loop, For(v, vec, store_zero(v), "unrolled"))

    def q_value(self, row: Expr, d: Expr) -> tuple[Expr, Expr | None]:
        i = self.q0 + row
        valid = None if divides(self.sq, self.tl.bq) else less(i, self.sq)
        return substitute(self.q_expr, {self.i.name: i, self.d.name: d}), valid

    def k_value(self, kb: Expr, key: Expr, d: Expr) -> tuple[Expr, Expr | None]:
        j = kb * self.tl.bk + key
        valid = None if divides(self.sk, self.tl.bk) else less(j, self.sk)
        return substitute(self.k_expr, {self.j.name: j, self.d.name: d}), valid

    def v_value(self, kb: Expr, key: Expr, e: Expr) -> tuple[Expr, Expr | None]:
        """V's value at key ``key`` of tile ``kb``, head column ``e`` (the first of a group: whole
        groups lie inside the head or past it)."""
        j = kb * self.tl.bk + key
        conditions = [] if divides(self.sk, self.tl.bk) else [less(j, self.sk)]
        conditions += [] if self.dp == self.head else [less(e, self.head)]
        valid = None if not conditions else conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]
        return substitute(self.v_expr, {self.j.name: j, self.e.name: e}), valid

    def transposed(self, buffer: Buffer, stride: int, rows: int, value_of) -> Stmt:
        """``buffer[d*stride + row] = value(row, d)`` for the ``rows x depth`` tile (Q or K,
        whose rows are contiguous in ``d``: read in groups of 4 along ``d``)."""
        vec = run_length(self.depth)

        def group(n, row, d0):
            _, valid = value_of(row, d0)
            at = lambda v: (d0 + v) * stride + row  # noqa: E731
            return self.lanes(vec, lambda v: Store(buffer, at(v), value_of(row, d0 + v)[0]), valid,
                              lambda v: Store(buffer, at(v), self.zero))
        return self.spread(rows, self.depth, vec, group)

    def load_q(self) -> Stmt:
        return self.transposed(self.q_s, self.q_stride, self.tl.bq, self.q_value)

    def load_k(self, kb: Expr) -> Stmt:
        return self.transposed(self.k_s, self.k_stride, self.tl.bk, lambda key, d: self.k_value(kb, key, d))

    def k_into_registers(self, kb: Expr, k_next: Buffer) -> tuple[Stmt, Stmt]:
        """K tile ``kb`` loaded into ``k_next`` (this thread's share), and stored from there
        into ``k_s`` (the two ends of a prefetch)."""
        vec = run_length(self.depth)

        def fetch(n, key, d0):
            _, valid = self.k_value(kb, key, Const(0))
            at = lambda v: n * vec + v  # noqa: E731
            return self.lanes(vec, lambda v: Store(k_next, at(v), self.k_value(kb, key, d0 + v)[0]), valid,
                              lambda v: Store(k_next, at(v), self.zero))

        def keep(n, key, d0):
            v = Var(self.name("v"))
            return For(v, vec, Store(self.k_s, (d0 + v) * self.k_stride + key, Load(k_next, n * vec + v)), "unrolled")
        return (self.spread(self.tl.bk, self.depth, vec, fetch), self.spread(self.tl.bk, self.depth, vec, keep))

    def load_v(self, kb: Expr, into_registers: bool) -> Stmt:
        """V tile ``kb`` into ``v_s`` (``v_s[key*dp + e]``), or into this thread's ``v_next``."""
        vec = self.v_vec

        def group(n, key, e0):
            _, valid = self.v_value(kb, key, e0)
            if into_registers:
                at = lambda v: self.mine(self.v_next, n * vec + v)  # noqa: E731
                target = self.v_next
            else:
                at = lambda v: key * self.dp + (e0 + v)  # noqa: E731
                target = self.v_s
            return self.lanes(vec, lambda v: Store(target, at(v), self.v_value(kb, key, e0 + v)[0]), valid,
                              lambda v: Store(target, at(v), self.zero))
        return self.spread(self.tl.bk, self.dp, vec, group)

    def v_from_registers(self) -> Stmt:
        vec = self.v_vec

        def group(n, key, e0):
            v = Var(self.name("v"))
            return For(v, vec, Store(self.v_s, key * self.dp + (e0 + v), Load(self.v_next, self.mine(self.v_next, n * vec + v))),
                       "unrolled")
        return self.spread(self.tl.bk, self.dp, vec, group)

    # -- the phases ------------------------------------------------------------------------------

    def prologue(self) -> Stmt:
        """Zero O, the running max -inf, the sums 0; Q into shared memory, the first key tile."""
        tl = self.tl
        r, c = Var(self.name("r")), Var(self.name("c"))
        stmts = [self.loop(c, tl.tm * self.te, Store(self.o_acc, self.mine(self.o_acc, c), self.zero)),
                 self.loop(r, tl.tm, Block([Store(self.m_run, self.mine(self.m_run, r), self.minus_inf),
                                            Store(self.l_run, self.mine(self.l_run, r), self.zero)])),
                 self.load_q()]
        if tl.prefetch:
            stmts += [If(less(self.lo, self.hi), Block([self.load_k(self.lo), self.load_v(self.lo, True)]))]
        return self.phase(stmts)

    def key_tiles(self) -> Stmt:
        """The loop over key tiles, the live ones run: scores and P, then O += P V."""
        kb = self.kb
        phases = []
        if not self.tl.prefetch:
            phases.append(self.phase([self.load_k(kb), self.load_v(kb, False)]))
        phases += [self.phase(self.scores(kb)), self.phase(self.softmax()), self.phase(self.accumulate(kb))]
        live = self.lo.le(kb) & kb.lt(self.hi)
        return For(kb, self.nkb, If(live, Block(phases)))

    def scores(self, kb: Var) -> list[Stmt]:
        """S = Q K^T in registers, then the score expression and the thread's part of each row's max."""
        tl, dt = self.tl, self.dtype
        r, c, d = Var(self.name("r")), Var(self.name("c")), Var(self.name("d"))
        a_frag, b_frag = Buffer(self.name("a_frag"), dt, (tl.tm,)), Buffer(self.name("b_frag"), dt, (tl.tn,))
        step = self.rank_one_update(self.s_acc, r, a_frag, Load(self.q_s, d * self.q_stride + self.query_row(r)),
                                    c, b_frag, Load(self.k_s, d * self.k_stride + self.key_col(c)))
        stmts: list[Stmt] = []
        if tl.prefetch:
            stmts.append(self.v_from_registers())
        stmts += [Allocate(a_frag), Allocate(b_frag),
                  self.loop(c, tl.tm * tl.tn, Store(self.s_acc, self.mine(self.s_acc, c), self.zero)),
                  self.loop(d, self.depth, step)]
        apply = self.apply_score(kb, self.score)
        if self.mixed is not None:
            los = per_query_tile(self.qb, [lo for lo, _ in self.mixed])
            his = per_query_tile(self.qb, [hi for _, hi in self.mixed])
            mixed = los.le(kb) & kb.lt(his)
            apply = If(mixed, apply, self.apply_score(kb, without_masks(self.score, self.masks)))
        return stmts + [apply]

    def apply_score(self, kb: Var, score: Expr) -> Stmt:
        """Each score ``f(dot)`` (-inf past the last key, and past the last query where f reads
        memory: f is not evaluated there; a row past the last query is never stored, and a
        score that reads nothing is harmless there), and the thread's part of its rows' max."""
        tl, dt = self.tl, self.dtype
        r, c = Var(self.name("r")), Var(self.name("c"))
        qk = Var(self.name("qk"), dt)
        s_at, mx_at = self.mine(self.s_acc, r * tl.tn + c), self.mine(self.mx_part, r)
        reads = any(True for _ in loads(score))
        conditions = [] if divides(self.sq, tl.bq) or not reads else [less(self.i, self.sq)]
        conditions += [] if divides(self.sk, tl.bk) else [less(self.j, self.sk)]
        value: Stmt = Store(self.s_acc, s_at, substitute(score, {self.dot.name: qk}))
        if conditions:
            cond = conditions[0] if len(conditions) == 1 else conditions[0] & conditions[1]
            value = If(cond, value, Store(self.s_acc, s_at, self.minus_inf))
        per_key = Block([Declare(self.j, kb * tl.bk + self.key_col(c)), Declare(qk, Load(self.s_acc, s_at)), value,
                         Store(self.mx_part, mx_at, Call("mc_maximum", (Load(self.mx_part, mx_at), Load(self.s_acc, s_at)), dt))])
        return self.loop(r, tl.tm, Block([Declare(self.i, self.q0 + self.query_row(r)),
                                           Store(self.mx_part, mx_at, self.minus_inf),
                                           self.loop(c, tl.tn, per_key)]))

    def softmax(self) -> list[Stmt]:
        """Per row of the thread: the tile's max over the row's threads, the new running max,
        P = exp(S - max) into shared memory (P^T), the partial sum and O rescaled."""
        tl, dt = self.tl, self.dtype
        r, c = Var(self.name("r")), Var(self.name("c"))
        mx, m_old, m_new = Var(self.name("tile_max_row"), dt), Var(self.name("m_old"), dt), Var(self.name("m_new"), dt)
        shift, corr, p = Var(self.name("shift"), dt), Var(self.name("correction"), dt), Var(self.name("p"), dt)
        m_at, l_at = self.mine(self.m_run, r), self.mine(self.l_run, r)
        o_at = self.mine(self.o_acc, r * self.te + c)
        s_at = self.mine(self.s_acc, r * tl.tn + c)
        exp = lambda x: Call("exp", (x,), dt)  # noqa: E731
        per_key = Block([Declare(p, exp(Binary("-", Load(self.s_acc, s_at), shift, dt))),
                         Store(self.l_run, l_at, Binary("+", Load(self.l_run, l_at), p, dt)),
                         Store(self.p_s, self.key_col(c) * self.p_stride + self.query_row(r), p)])
        row = Block([
            WarpReduce(mx, "max", Load(self.mx_part, self.mine(self.mx_part, r)), tl.cols),
            Declare(m_old, Load(self.m_run, m_at)),
            Declare(m_new, Call("mc_maximum", (m_old, mx), dt)),
            # every score so far -inf (masked or past the end): shift by 0, so exp(-inf) = 0, not NaN
            Declare(shift, Select(Binary("==", m_new, self.minus_inf, BOOL), self.zero, m_new)),
            Declare(corr, exp(Binary("-", m_old, shift, dt))),
            Store(self.m_run, m_at, m_new),
            Store(self.l_run, l_at, Binary("*", Load(self.l_run, l_at), corr, dt)),
            self.loop(c, self.te, Store(self.o_acc, o_at, Binary("*", Load(self.o_acc, o_at), corr, dt))),
            self.loop(c, tl.tn, per_key)])
        return [self.loop(r, tl.tm, row)]

    def accumulate(self, kb: Var) -> list[Stmt]:
        """O += P V from shared memory; with prefetch, the next key tile's K and V loaded into
        registers first and K stored into shared memory after (its last reader was the scores)."""
        tl, dt = self.tl, self.dtype
        r, c, key = Var(self.name("r")), Var(self.name("c")), Var(self.name("key"))
        a_frag, b_frag = Buffer(self.name("p_frag"), dt, (tl.tm,)), Buffer(self.name("v_frag"), dt, (self.te,))
        step = self.rank_one_update(self.o_acc, r, a_frag, Load(self.p_s, key * self.p_stride + self.query_row(r)),
                                    c, b_frag, Load(self.v_s, key * self.dp + self.head_col(c)))
        compute: list[Stmt] = [Allocate(a_frag), Allocate(b_frag), self.loop(key, tl.bk, step)]
        if not tl.prefetch:
            return compute
        k_next = Buffer(self.name("k_next"), dt, (-(-tl.bk * self.depth // (tl.threads * run_length(self.depth)))
                                                   * run_length(self.depth),))
        following = kb + 1
        more = following.lt(self.hi)
        fetch, keep = self.k_into_registers(following, k_next)
        return [Allocate(k_next), If(more, Block([fetch, self.load_v(following, True)]))] + compute + [If(more, keep)]

    def rank_one_update(self, acc: Buffer, r: Var, a_frag: Buffer, a_value: Expr, c: Var, b_frag: Buffer,
                        b_value: Expr) -> Stmt:
        """One step of a register-tile product (S = Q K^T, O += P V): ``a_frag[r] = a_value`` for
        the thread's rows, ``b_frag[c] = b_value`` for its columns, then
        ``acc[r, c] += a_frag[r] * b_frag[c]`` on the thread's tile of ``acc``."""
        rows, cols, dt = a_frag.size, b_frag.size, self.dtype
        at = self.mine(acc, r * cols + c)
        product = Binary("*", Load(a_frag, r), Load(b_frag, c), dt)
        return Block([self.loop(r, rows, Store(a_frag, r, a_value)), self.loop(c, cols, Store(b_frag, c, b_value)),
                      self.loop(r, rows, self.loop(c, cols, Store(acc, at, Binary("+", Load(acc, at), product, dt))))])

    def epilogue(self) -> Stmt:
        """out = O / l: each row's sum over its threads (a warp reduce), the rows and head columns
        that exist stored."""
        tl, dt = self.tl, self.dtype
        r, c = Var(self.name("r")), Var(self.name("c"))
        total = Var(self.name("row_total"), dt)
        value = Binary("/", Load(self.o_acc, self.mine(self.o_acc, r * self.te + c)), total, dt)
        store: Stmt = Store(self.out, self.out_at, value)
        if self.dp != self.head:
            store = If(less(self.e, self.head), store)
        columns: Stmt = self.loop(c, self.te, Block([Declare(self.e, self.head_col(c)), store]))
        if not divides(self.sq, tl.bq):
            columns = If(less(self.i, self.sq), columns)
        row = Block([WarpReduce(total, "sum", Load(self.l_run, self.mine(self.l_run, r)), tl.cols),
                     Declare(self.i, self.q0 + self.query_row(r)), columns])
        return self.phase([self.loop(r, tl.tm, row)])
