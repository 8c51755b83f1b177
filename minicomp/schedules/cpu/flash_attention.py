"""FlashAttention on a CPU: the ``flash_attention`` strategy tiles the plain attention nest.

Requires the nest ``lower_attention`` writes (per query row, the online softmax of
``minicomp.lower.online_softmax``) for float32 or float64, with static head, depth and batch
sizes, and at least ``MIN_WORK`` of ``Sq x Sk x head`` where the lengths are static. ``Sq`` and
``Sk`` may be symbolic (``T``): there are ``ceil_div(T, bq)`` query blocks (C: ``(T + bq - 1)/bq``),
the rows and keys past ``T`` are guarded as any tail is, and a mask is loaded in every tile. Guarantees the same results within rounding, and that the
``Sq x Sk`` score matrix never exists: every row statistic is still kept per query row, the
keys come in blocks, and both matmuls run on the register-blocked micro-kernel
(``codegen/gemm.py``). Queries are taken ``bq`` rows at a time; for each block of ``bk`` keys::

    S[bq, bk]  = Qblock @ Kblock^T                 # micro-kernel, Q panel packed once per task
    S          = f(S)   (scale, causal mask ...)   # the plain nest's score expression, in L1
    m_new      = max(m, rowmax(S)); c = exp(m - m_new)
    P          = exp(S - m_new); l = l*c + rowsum(P)   # P overwrites S
    O[bq, D]   = O * c + P @ Vblock                 # micro-kernel again, reading P's rows in place
    out        = O / l   (after the last key block)

Before and after ``flash_attention(bq=12, bk=32, mr=6, nr=16, lanes=16)`` (AVX2, 8 float32 per vector: the micro-kernel is 6 x 16)::

    for i0 in 0..8:                              parallel for t_pack in 0..128:  # K^T, V into panels
      for i1 in 0..512:                          parallel for t in 0..344:       # (batch, 12 queries)
        acc[e] = 0; m = -inf; l = 0                pack Q; o = 0; row_max = -inf; row_sum = 0
        for j in 0..512:                  --->     for kb in 0..16:
          dot = sum over rk of q.k                   mc_gemm_6x16_f32(...)        # S = Q K^T
          score = dot * 0.125                        per row: score, max, exp, sum, rescale o
          m_new = ...; acc[e] = ...                  mc_gemm_6x16_f32(...)        # O += P V
        out[i0, i1, e] = acc[e] / l                out[...] = o / row_sum

The micro-kernel is this machine's (``gemm.tile_shape``: what the C renderer defines), so
``bq`` must be a multiple of its MR rows and ``bk`` of its NR columns.

A constant mask is read at compile time: a ``select(c, -inf, s)`` (or ``select(c, s, -inf)``)
of the score whose condition reads only constant arrays and the query and key indices, the
same for every batch element (causal attention's ``constant[i*Sk + j]``). Tiles it hides
entirely are skipped, tiles it leaves entirely visible run the score with the mask folded
away, and only the mixed tiles (causal: on the diagonal) load it.

``K^T`` and ``V`` are packed into micro-kernel panels once per call, before the parallel loop
over (batch, query block) tasks. Row max and row sum run over ``lanes`` SIMD lanes
(``lanes.reduce_into_lanes``).

The default rules: ``flash_attention_steps`` picks the tile for the target (its micro-kernel,
``query_panels`` of it per task, its ``lane_count``); where the
strategy is refused (small sizes, integer scores, a symbolic head size) ``parallel_query_rows`` runs the plain
nest's outermost loop on all cores when there is enough work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ...codegen import gemm
from ...ir.compute import Reduce, linear_index
from ...ir.loops import (BOOL, INDEX, Address, Allocate, Binary, Block, Buffer, Call, Cast, Const, Declare,
                         Expr, For, If, Intrinsic, Kernel, Load, Select, Stmt, Store, Unary, Var, as_expr, const,
                         walk)
from ...ir.rewrite import free_vars, loads, map_expr, substitute
from ...ir.schedule import Parallel, ScheduleError
from ...ir.symbolic import Sym, ceil_div
from ...lower.online_softmax import OnlineSoftmax, online_softmax
from ...target import Target, host_target
from ..strategy import Strategy, register_strategy
from .lanes import lane_count, reduce_into_lanes
from .packed_gemm import micro_kernel_name
from .work import worth_parallel

# The tile counts micro-kernel panels: their size is the machine's (MR x NR), the counts are not
# cache sizes. 2 query panels (12 queries) keep a causal mask's diagonal blocks from wasting much
# (measured on the AVX2 VM, attention 8 x 512 x 64: 4 or 8 panels 5-8% slower causal, within 2%
# unmasked); the S tile (1.5 KiB at 2 panels, 6 KiB at 8) stays in L1 either way. The cache rule
# is query_panels' bound: the S tile within a quarter of L1d.
QUERY_PANELS = 2  # MR-row panels of queries per task (measured: 12 queries, not 48, made attention 10-15% faster)
KEY_PANELS = 2  # NR-column panels of keys per block: halves the per-row bookkeeping per key
S_TILE_L1_SHARE = 4  # the S tile takes at most a quarter of L1d: it shares L1 with Q, O and the K, V panels
# Not machine properties: a ratio of work to packing, and the compile-time mask grid's memory.
MIN_WORK = 1 << 15  # Sq x Sk x head below which packing K and V costs more than the tiles save
MASK_GRID = 1 << 22  # points of a mask condition evaluated at once (a few query rows at a time)


# ----------------------------------------------------------------------------------------------
# The strategy and its default rules
# ----------------------------------------------------------------------------------------------


@register_strategy("flash_attention")
def flash_attention(kernel: Kernel, bq: int, bk: int, mr: int | None = None, nr: int | None = None,
                    lanes: int | None = None) -> Kernel:
    """The plain attention nest of ``kernel`` in FlashAttention tiles of ``bq`` queries x ``bk`` keys,
    both matmuls on the ``mr x nr`` micro-kernel (default: this machine's, ``gemm.tile_shape``),
    row max and row sum over ``lanes`` partial accumulators (default: this machine's
    ``lane_count``; a power of two).

    Raises ``ScheduleError`` where the kernel is not the plain nest or the tiles do not apply
    (see the module docstring).
    """
    plain = read_plain_attention(kernel)
    if mr is None or nr is None:
        mr, nr = gemm.tile_shape(kernel.output.dtype)
    tiles = FlashTiles(kernel, plain, bq, bk, mr, nr, lane_count(host_target()) if lanes is None else lanes)
    return replace(kernel, body=tiles.body(), scratch=list(kernel.scratch) + [tiles.kpack, tiles.vpack])


def flash_attention_steps(kernel: Kernel, target: Target) -> list[Strategy]:
    """``flash_attention`` with the tile of ``target``'s micro-kernel (MR x NR): ``bk`` =
    ``KEY_PANELS`` x NR keys (one panel where the keys fit in one), ``bq`` = ``query_panels`` x
    MR queries (fewer where the queries are fewer), ``lane_count(target)`` lanes. Nothing for a
    kernel it cannot tile."""
    plain = _plain_or_none(kernel)
    dtype = kernel.output.dtype
    if plain is None or not gemm.supported(dtype):
        return []
    sq, sk = kernel.output.shape[-2], plain.row.keys
    mr, nr = gemm.tile_shape(dtype, target)
    bk = nr * (KEY_PANELS if isinstance(sk, Sym) or sk > nr else 1)
    panels = query_panels(target, mr, bk, dtype.itemsize)
    bq = panels * mr if isinstance(sq, Sym) else min(panels * mr, -(-sq // mr) * mr)
    return [Strategy("flash_attention", bq=bq, bk=bk, mr=mr, nr=nr, lanes=lane_count(target))]


def query_panels(target: Target, mr: int, bk: int, itemsize: int) -> int:
    """MR-row panels of queries per task: ``QUERY_PANELS``, fewer where the ``bq x bk`` score
    tile would take more than ``1 / S_TILE_L1_SHARE`` of ``target``'s L1d (each key block reads
    it four times: scale and mask, max, exp and sum, P @ V). At least one. No machine probed so
    far has an L1d that small:

        AVX2, float32: 12 x 32 S tile = 1.5 KiB of 32 KiB -> 2    AVX-512: 12 x 128 = 6 KiB of 32 KiB -> 2
    """
    return max(1, min(QUERY_PANELS, target.l1_bytes // S_TILE_L1_SHARE // (mr * bk * itemsize)))


def parallel_query_rows(kernel: Kernel, target=None) -> list:
    """Threads for a plain attention nest that does enough work (``worth_parallel``): its
    outermost loop (batch, else query rows) marked ``parallel``, by the ``Parallel`` primitive
    where its dependence test can tell (static sizes), else by ``parallel_attention_rows``.
    Nothing for a tiled nest (already parallel)."""
    plain = _plain_or_none(kernel)
    if plain is None or not plain.loops:
        return []
    out = kernel.output
    depth = math.prod(extent for _, extent in plain.row.qk.axes)
    if not worth_parallel(math.prod(out.shape[:-1]) * plain.row.keys * (depth + out.shape[-1])):
        return []
    step = Parallel(plain.loops[0].var.name)
    try:
        step.apply(kernel)
    except ScheduleError:  # symbolic strides: not affine to the dependence test
        return [Strategy("parallel_attention_rows")]
    return [step]


@register_strategy("parallel_attention_rows")
def parallel_attention_rows(kernel: Kernel) -> Kernel:
    """The outermost loop of a plain attention nest marked ``parallel``.

    Legal by the nest's construction, which ``read_plain_attention`` checks: every (batch,
    query) iteration writes its own output row, reads only the inputs, and keeps its running
    max, sum and output row in locals of its own. For the nests the ``Parallel`` primitive
    cannot prove (a symbolic size makes the indices non-affine)::

        for i0 in 0..4:                     parallel for i0 in 0..4:
          for i1 in 0..T:           --->      for i1 in 0..T:
            ... out[(i0*T + i1)*8 + e]          ... out[(i0*T + i1)*8 + e]
    """
    plain = read_plain_attention(kernel)
    if not plain.loops:
        raise ScheduleError(f"kernel {kernel.name} has no loop over rows to run in parallel")
    outer = plain.loops[0]
    return replace(kernel, body=replace(outer, kind="parallel"))


# ----------------------------------------------------------------------------------------------
# Reading the plain nest back
# ----------------------------------------------------------------------------------------------


@dataclass
class PlainAttention:
    """An attention kernel as ``lower_attention`` wrote it: its loops and the parts of its row."""

    loops: list[For]  # the batch loops, then the query loop (an axis of extent 1 has none)
    batch: list[For]  # the batch loops alone
    query: Var  # the query index (a variable of its own when there is one query)
    row: OnlineSoftmax


def read_plain_attention(kernel: Kernel) -> PlainAttention:
    """The loops and row parts of ``kernel``'s plain attention nest; ``ScheduleError`` if it is not one.

    The parts are read where ``online_softmax`` puts them, then the row is written again from
    them: only a nest identical to what ``lower_attention`` writes is accepted.
    """
    out, loops, stmt = kernel.output, [], kernel.body
    while isinstance(stmt, For):
        loops.append(stmt)
        stmt = stmt.body
    row = _read_row(stmt)
    outer = out.shape[:-1]
    if len(outer) < 1 or [loop.extent for loop in loops] != [d for d in outer if not _is_one(d)]:
        raise ScheduleError(f"kernel {kernel.name}: the loops are not one per output row axis")
    it = iter(loops)
    idx = [Const(0) if _is_one(d) else next(it).var for d in outer]
    if row.out is not out or not same(row.out_at, linear_index(idx + [row.e], out.shape)) \
            or not same(online_softmax(row), stmt):
        raise ScheduleError(f"kernel {kernel.name} is not the online softmax that lower_attention writes")
    query = idx[-1] if isinstance(idx[-1], Var) else Var(f"i{len(outer) - 1}")
    return PlainAttention(loops, loops[:len(loops) - isinstance(idx[-1], Var)], query, row)


def _read_row(stmt: Stmt) -> OnlineSoftmax:
    """The parts of a query row, read where ``online_softmax`` puts them (not yet checked)."""
    try:
        alloc, _, _, _, keys, store_loop = stmt.stmts
        dot_decl, reduction, score_decl, *_, update_loop, _ = keys.body.stmts
        axes, assign = [], reduction
        while isinstance(assign, For):
            axes.append((assign.var, assign.extent))
            assign = assign.body
        qk = Reduce("sum", axes, assign.value.b, dot_decl.var.dtype)
        v = update_loop.body.value.b.b  # acc[e] = acc[e]*correction + p*v
        store = store_loop.body
        return OnlineSoftmax(dot_decl.var, qk, score_decl.init, v, keys.var, keys.extent, alloc.buffer,
                             store_loop.var, store.buffer, store.index)
    except (AttributeError, TypeError, ValueError):
        raise ScheduleError("not the online softmax that lower_attention writes") from None


def _plain_or_none(kernel: Kernel) -> PlainAttention | None:
    try:
        return read_plain_attention(kernel)
    except ScheduleError:
        return None


def _is_one(extent) -> bool:
    return not isinstance(extent, Sym) and extent == 1


def same(a, b) -> bool:
    """Whether two loop-IR trees are the same: same node types and fields, variables by name
    and dtype, buffers by identity."""
    if a is b:
        return True
    if isinstance(a, Var) or isinstance(b, Var):
        return isinstance(a, Var) and isinstance(b, Var) and a.name == b.name and a.dtype == b.dtype
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, (Expr, Stmt)):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, Buffer) or isinstance(b, (Expr, Stmt, Buffer)):
        return False
    return bool(a == b)


# ----------------------------------------------------------------------------------------------
# Constant masks
# ----------------------------------------------------------------------------------------------


@dataclass
class Mask:
    """A ``select(c, -inf, s)`` (``hidden_when`` True) or ``select(c, s, -inf)`` of the score
    that makes the whole score -inf where it hides, ``c`` known at compile time."""

    select: Select
    value: np.ndarray  # c over the Sq x Sk grid (the same for every batch element)
    hidden_when: bool

    @property
    def visible(self) -> Expr:
        """The branch the select takes where the mask shows the score."""
        return self.select.b if self.hidden_when else self.select.a


def score_masks(plain: PlainAttention, constants: dict, sq: int) -> list[Mask]:
    """The masks of the score expression (see ``Mask``). A select whose condition reads
    anything else, or differs between batch elements, is no mask: it stays in every tile."""
    score, masks = plain.row.score, []
    for select in (e for e in walk(score) if isinstance(e, Select)):
        for branch, hidden_when in ((select.a, True), (select.b, False)):
            if not (_is_minus_inf(branch) and _forces_minus_inf(score, select)):
                continue
            value = mask_grid(select.cond, plain, constants, sq)
            if value is not None:
                masks.append(Mask(select, value, hidden_when))
    return masks


def mask_grid(cond: Expr, plain: PlainAttention, constants: dict, sq: int) -> np.ndarray | None:
    """``cond`` at every (query, key) as an ``Sq x Sk`` bool array, evaluated with NumPy a few
    query rows at a time (at most ``MASK_GRID`` points each); None where it reads anything but
    constant arrays and the batch, query and key indices, or differs between batch elements."""
    sk, names = plain.row.keys, free_vars(cond)
    axes = [(loop.var.name, loop.extent) for loop in plain.batch] + [(plain.query.name, sq), (plain.row.j.name, sk)]
    if not names <= {name for name, _ in axes} or any(load.buffer not in constants for load in loads(cond)):
        return None
    batch_shape = [n if name in names else 1 for name, n in axes[:-2]]
    rows = max(1, MASK_GRID // (math.prod(batch_shape) * max(sk, 1)))
    chunks = [np.zeros((0, sk), bool)]
    for first in range(0, sq, rows):
        count = min(rows, sq - first)
        starts = [0] * len(batch_shape) + [first, 0]
        grid = {name: np.arange(start, start + n).reshape([-1 if k == axis else 1 for k in range(len(axes))])
                for axis, ((name, _), start, n) in enumerate(zip(axes, starts, batch_shape + [count, sk]))
                if name in names}
        with np.errstate(all="ignore"):
            value = grid_value(cond, grid, constants)
        if value is None:
            return None
        value = np.broadcast_to(value.astype(bool), batch_shape + [count, sk]).reshape(-1, count, sk)
        if not (value == value[0]).all():
            return None
        chunks.append(value[0])
    return np.concatenate(chunks)


_NUMPY_OPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "<": np.less, "<=": np.less_equal,
              ">": np.greater, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal,
              "&&": np.logical_and, "||": np.logical_or}


def grid_value(e: Expr, grid: dict[str, np.ndarray], constants: dict) -> np.ndarray | None:
    """``e`` over NumPy arrays of its variables' values (``grid``), loading from the constant
    arrays (``constants``: buffer -> array), with C's meaning; None for anything else (a call,
    a load out of range)."""
    if isinstance(e, Const):
        return np.asarray(e.value, e.dtype)
    if isinstance(e, Var):
        return grid.get(e.name)
    parts = [grid_value(child, grid, constants) for child in e.children()]
    if any(part is None for part in parts):
        return None
    if isinstance(e, Load):
        if e.buffer not in constants:
            return None
        flat, (index,) = np.asarray(constants[e.buffer]).reshape(-1), parts
        inside = index.size == 0 or (index.min() >= 0 and index.max() < flat.size)
        return flat[index].astype(e.dtype) if inside else None
    if isinstance(e, Binary):
        return _binary(e, *parts)
    if isinstance(e, Unary):
        return (np.logical_not(parts[0]) if e.op == "!" else np.negative(parts[0])).astype(e.dtype)
    if isinstance(e, Cast):
        return parts[0].astype(e.dtype)
    if isinstance(e, Select):
        return np.where(*parts).astype(e.dtype)
    return None


def _binary(e: Binary, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if e.op in ("/", "%") and e.dtype.kind in "iu":  # C's: the quotient rounds toward zero
        if (b == 0).any():
            return None
        quotient = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        return (quotient if e.op == "/" else a - quotient * b).astype(e.dtype)
    if e.op == "/":
        return np.true_divide(a, b).astype(e.dtype)
    return _NUMPY_OPS[e.op](a, b).astype(e.dtype) if e.op in _NUMPY_OPS else None


def _is_minus_inf(e: Expr) -> bool:
    return isinstance(e, Const) and e.dtype.kind == "f" and e.value == -np.inf


def _forces_minus_inf(e: Expr, select: Select) -> bool:
    """Whether ``e`` is -inf wherever ``select`` is: ``select`` itself, a select whose branches
    both are, or one of them times a positive constant."""
    if e is select:
        return True
    if isinstance(e, Select):
        return all(_is_minus_inf(branch) or _forces_minus_inf(branch, select) for branch in (e.a, e.b))
    if isinstance(e, Binary) and e.op == "*":
        return any(isinstance(c, Const) and c.dtype.kind == "f" and 0 < c.value < np.inf
                   and _forces_minus_inf(x, select) for x, c in ((e.a, e.b), (e.b, e.a)))
    return False


def dead_scores(masks: list[Mask], shape: tuple[int, int]) -> np.ndarray | None:
    """Where (Sq x Sk, shared by the batch) one of the masks forces the score to -inf, or None."""
    dead = np.zeros(shape, bool)
    for mask in masks:
        dead |= mask.value == mask.hidden_when
    return dead if dead.any() else None


def without_masks(score: Expr, masks: list[Mask]) -> Expr:
    """``score`` with every mask replaced by its visible branch (folded away)."""
    visible = {id(mask.select): mask.visible for mask in masks}

    def fold(e: Expr):
        return map_expr(visible[id(e)], fold) if id(e) in visible else None
    return map_expr(score, fold)


# ----------------------------------------------------------------------------------------------
# Building the tiled nest
# ----------------------------------------------------------------------------------------------


def _less(a, b) -> Expr:
    return Binary("<", as_expr(a), as_expr(b), BOOL)


def _at_least(a, b) -> Expr:
    return Binary(">=", as_expr(a), as_expr(b), BOOL)


def _both(a: Expr, b: Expr) -> Expr:
    return Binary("&&", a, b, BOOL)


def _quotient(a: Expr, n: int) -> Expr:
    """``a / n`` on indices (C's division: ``a`` is never negative here)."""
    return Binary("/", a, as_expr(n), INDEX)


def _remainder(a: Expr, n: int) -> Expr:
    return Binary("%", a, as_expr(n), INDEX)


def _per_block(qb: Var, values: list[int]) -> Expr:
    """``values[qb]`` as an expression (a chain of selects; query blocks are few)."""
    expr = as_expr(values[-1])
    if len(set(values)) == 1:
        return expr
    for index in range(len(values) - 2, -1, -1):
        expr = Select(Binary("==", qb, as_expr(index), BOOL), as_expr(values[index]), expr)
    return expr


def _uses_only(expr: Expr, names: set[str], inputs: list[Buffer]) -> bool:
    return free_vars(expr) <= names and all(load.buffer in inputs for load in loads(expr))


def dot_factors(row: OnlineSoftmax) -> tuple[Expr, Expr] | None:
    """``(q_expr, k_expr)`` of the dot product's ``q_expr * k_expr``; k is the one using ``j``."""
    body = row.qk.body
    if not (isinstance(body, Binary) and body.op == "*"):
        return None
    return (body.b, body.a) if row.j.name in free_vars(body.a) else (body.a, body.b)


def row_parts_problem(kernel: Kernel, plain: PlainAttention) -> str | None:
    """Why the parts of the row cannot be moved into tiles, or None: the dot product must be one
    sum of ``q * k``, and q, k, v and the score read only the kernel's inputs at their own
    indices (the batch, query, key, depth and head indices; the score also the dot product)."""
    row = plain.row
    if len(row.qk.axes) != 1 or dot_factors(row) is None:
        return "the dot product is not one sum of q times k"
    batch = {loop.var.name for loop in plain.batch}
    i, j, d, e = plain.query.name, row.j.name, row.qk.axes[0][0].name, row.e.name
    q_expr, k_expr = dot_factors(row)
    parts = [(q_expr, {i, d}), (k_expr, {j, d}), (row.v, {j, e}), (row.score, {i, j, row.dot.name})]
    if not all(_uses_only(expr, batch | names, kernel.inputs) for expr, names in parts):
        return "q, k, v or the score reads something other than the inputs at its indices"
    return None


def live_key_blocks(masks: list[Mask], sq: int, sk: int, bq: int, bk: int) -> list[tuple[int, int]] | None:
    """Per block of ``bq`` queries, the range [lo, hi) of blocks of ``bk`` keys the masks leave
    visible.

    A tile where every score is forced to -inf adds exp(-inf) = 0 to every sum, so it is
    skipped. None when nothing can be skipped, or the visible blocks of a query block are
    not one range.
    """
    dead = dead_scores(masks, (sq, sk)) if masks else None
    if dead is None:
        return None
    nqb, nkb, live = -(-sq // bq), -(-sk // bk), []
    for qb in range(nqb):
        rows = dead[qb * bq:(qb + 1) * bq]
        blocks = [kb for kb in range(nkb) if not rows[:, kb * bk:(kb + 1) * bk].all()]
        if blocks and blocks != list(range(blocks[0], blocks[-1] + 1)):
            return None
        live.append((blocks[0], blocks[-1] + 1) if blocks else (0, 0))
    return None if all(span == (0, nkb) for span in live) else live


def mixed_key_blocks(masks: list[Mask], live, sq: int, sk: int, bq: int, bk: int) -> list[tuple[int, int]] | None:
    """Per block of ``bq`` queries, the range [lo, hi) of key blocks where a mask hides some scores.

    The other visible tiles (causal: below the diagonal) see every mask visible, and run
    the score expression without loading the masks. None when there is no mask, or the
    mixed tiles of a query block are not one range (then every tile loads them).
    """
    if not masks:
        return None
    nqb, nkb, mixed = -(-sq // bq), -(-sk // bk), []
    for qb in range(nqb):
        lo, hi = live[qb] if live is not None else (0, nkb)
        rows = slice(qb * bq, (qb + 1) * bq)
        blocks = [kb for kb in range(lo, hi)
                  if any((m.value[rows, kb * bk:(kb + 1) * bk] == m.hidden_when).any() for m in masks)]
        if blocks and blocks != list(range(blocks[0], blocks[-1] + 1)):
            return None
        mixed.append((blocks[0], blocks[-1] + 1) if blocks else (0, 0))
    return mixed


class FlashTiles:
    """The tiled nest of one plain attention kernel: its sizes, buffers and statements."""

    def __init__(self, kernel: Kernel, plain: PlainAttention, bq: int, bk: int, mr: int, nr: int, lanes: int):
        row, out = plain.row, kernel.output
        self.dtype = dt = out.dtype
        self.sq, self.sk, self.head = out.shape[-2], row.keys, out.shape[-1]
        self.batch_shape = out.shape[:-2]
        self.symbolic = isinstance(self.sq, Sym) or isinstance(self.sk, Sym)
        self._check(kernel, plain, bq, bk, mr, nr, lanes)
        self.out, self.out_at, self.batch = out, row.out_at, plain.batch
        self.i, self.j, self.e = plain.query, row.j, row.e
        (self.d, self.depth), = row.qk.axes
        self.q_expr, self.k_expr = dot_factors(row)
        self.v_expr, self.dot, self.score = row.v, row.dot, row.score
        # a mask over a symbolic length cannot be read at compile time: every tile loads it
        self.masks = [] if self.symbolic else score_masks(plain, kernel.constants, self.sq)
        self.mr, self.nr = mr, nr
        self.ukernel = micro_kernel_name(mr, nr, dt)
        self.nbatch = math.prod(self.batch_shape)
        self.bq, self.bk, self.lanes = bq, bk, lanes
        self.halves = bk // self.nr  # NR-wide panels of keys per block
        self.nqb, self.nkb = ceil_div(self.sq, bq), ceil_div(self.sk, bk)  # ceil(T / bq) when T is symbolic
        self.dp = -(-self.head // self.nr) * self.nr  # head size padded to whole panels
        self.neb = self.dp // self.nr
        self.kpack = Buffer(f"{out.name}_kpack", dt, (self.nbatch * self.nkb * self.depth * bk,))
        self.vpack = Buffer(f"{out.name}_vpack", dt, (self.nbatch * self.neb * self.nkb * bk * self.nr,))
        # per task, on its thread's stack: the Q panel, the score/P tile, O and the row statistics
        self.qpanel = Buffer("qpanel", dt, (bq * self.depth,))
        self.s = Buffer("s", dt, (bq * bk,))
        self.o = Buffer("o", dt, (bq * self.dp,))
        self.m = Buffer("row_max", dt, (bq,))
        self.l = Buffer("row_sum", dt, (bq,))

    def _check(self, kernel: Kernel, plain: PlainAttention, bq, bk, mr, nr, lanes) -> None:
        """``ScheduleError`` unless the tiles apply (see the module docstring)."""
        row, dt = plain.row, self.dtype

        def refuse(why: str):
            return ScheduleError(f"flash_attention(bq={bq}, bk={bk}, mr={mr}, nr={nr}, lanes={lanes}) does not apply to "
                                 f"kernel {kernel.name}: {why}",
                                 why)
        if not gemm.supported(dt) or row.dot.dtype != dt or row.score.dtype != dt:
            raise refuse(f"no micro-kernel for {dt} scores")
        sizes = (self.head, *self.batch_shape, *(extent for _, extent in row.qk.axes))
        if any(isinstance(size, Sym) for size in sizes):
            raise refuse("the tiles need the head size, batch and depth, and one is symbolic")
        if not self.symbolic and self.sq * self.sk * self.head < MIN_WORK:
            raise refuse(f"Sq x Sk x head = {self.sq * self.sk * self.head} is less than MIN_WORK = {MIN_WORK}")
        if not all(isinstance(size, (int, np.integer)) and size > 0 for size in (bq, bk, mr, nr)) or bq % mr or bk % nr:
            raise refuse(f"bq must be a positive multiple of {mr} and bk of {nr} (the micro-kernel's tile)")
        if not (isinstance(lanes, int) and lanes >= 2 and lanes & (lanes - 1) == 0):
            raise refuse(f"lanes must be a power of two >= 2, not {lanes!r}")
        problem = row_parts_problem(kernel, plain)
        if problem is not None:
            raise refuse(problem)

    def body(self) -> Stmt:
        """Pack K^T and V, then one parallel task per (batch, query block)."""
        return Block([self.pack_kv(), self.tasks()])

    def _declare_batch(self, flat: Var) -> list[Stmt]:
        """Each batch index from the flat batch number ``flat`` (the last batch axis fastest)."""
        stmts: list[Stmt] = []
        for n, loop in enumerate(reversed(self.batch)):
            rest = flat if n == 0 else _quotient(flat, math.prod(inner.extent for inner in self.batch[-n:]))
            stmts.append(Declare(loop.var, rest if n == len(self.batch) - 1 else _remainder(rest, loop.extent)))
        return stmts

    def pack_kv(self) -> Stmt:
        """kpack[b][kb][d][c] = k[b, kb*bk + c, d]; vpack[b][eb][key][jj] = v[b, key, eb*NR + jj]."""
        bf, kb, c, jj, eb, h, c2 = (Var(name) for name in ("bf", "kb", "c", "jj", "eb", "h", "c2"))
        nr, bk, zero = self.nr, self.bk, const(0, self.dtype)
        k_at = (((bf * self.nkb + kb) * self.halves + h) * self.depth + self.d) * nr + c2
        k_store = Block([Declare(self.j, kb * bk + (h * nr + c2)),
                         Store(self.kpack, k_at, Select(_less(self.j, self.sk), self.k_expr, zero))])
        v_at = (((bf * self.neb + eb) * (self.nkb * bk) + (kb * bk + c)) * nr) + jj
        inside = _both(_less(self.j, self.sk), _less(self.e, self.head))
        v_store = Block([Declare(self.j, kb * bk + c), Declare(self.e, eb * nr + jj),
                         Store(self.vpack, v_at, Select(inside, self.v_expr, zero))])
        per_block = Block(self._declare_batch(bf) + [
            For(h, self.halves, For(self.d, self.depth, For(c2, nr, k_store))),
            For(eb, self.neb, For(c, bk, For(jj, nr, v_store)))])
        task = Var("t_pack")
        return For(task, self.nbatch * self.nkb,
                   Block([Declare(bf, _quotient(task, self.nkb)), Declare(kb, _remainder(task, self.nkb)), per_block]),
                   "parallel")

    def tasks(self) -> Stmt:
        """One task per (batch, query block): Q panel, then the loop over key blocks, then O / l."""
        t, bf, qb, q0, kb = Var("t"), Var("bf"), Var("qb"), Var("q0"), Var("kb")
        stmts = [Declare(bf, _quotient(t, self.nqb)), Declare(qb, _remainder(t, self.nqb)),
                 Declare(q0, qb * self.bq)] + self._declare_batch(bf)
        stmts += [Allocate(b) for b in (self.qpanel, self.s, self.o, self.m, self.l)]
        live = self.live_key_blocks()
        mixed = self.mixed_key_blocks(live)
        masked = None if mixed is None else _both(_at_least(kb, _per_block(qb, [lo for lo, _ in mixed])),
                                                  _less(kb, _per_block(qb, [hi for _, hi in mixed])))
        key_block = Block([self.scores_tile(bf, kb), self.softmax_rows(q0, kb, masked), self.accumulate_pv(bf, kb)])
        if live is not None:  # skip key blocks a constant mask hides entirely (causal: above the diagonal)
            visible = _less(kb, _per_block(qb, [hi for _, hi in live]))
            if any(lo for lo, _ in live):
                visible = _both(_at_least(kb, _per_block(qb, [lo for lo, _ in live])), visible)
            key_block = If(visible, key_block)
        stmts += [self.pack_q(q0), self.init_rows(), For(kb, self.nkb, key_block), self.store_out(q0)]
        return For(t, self.nbatch * self.nqb, Block(stmts), "parallel")

    def live_key_blocks(self) -> list[tuple[int, int]] | None:
        """Per query block, the key blocks the masks leave visible (``live_key_blocks``)."""
        return live_key_blocks(self.masks, self.sq, self.sk, self.bq, self.bk)

    def mixed_key_blocks(self, live) -> list[tuple[int, int]] | None:
        """Per query block, the key blocks a mask hides some scores of (``mixed_key_blocks``)."""
        return mixed_key_blocks(self.masks, live, self.sq, self.sk, self.bq, self.bk)

    def pack_q(self, q0: Var) -> Stmt:
        """qpanel[r][d] = q[b, q0 + r, d] (0 past the last query): the rows the micro-kernel reads."""
        panel, r = Var("panel"), Var("r")
        at = (panel * self.mr + r) * self.depth + self.d
        value = Select(_less(self.i, self.sq), self.q_expr, const(0, self.dtype))
        row = Block([Declare(self.i, q0 + (panel * self.mr + r)),
                     For(self.d, self.depth, Store(self.qpanel, at, value))])
        return self._rows(panel, r, row)

    def _rows(self, panel: Var, r: Var, body: Stmt) -> Stmt:
        """``for panel, r: body`` over the bq rows of a task, MR rows per micro-kernel panel."""
        return For(panel, self.bq // self.mr, For(r, self.mr, body))

    def init_rows(self) -> Stmt:
        row, x = Var("row"), Var("x")
        return Block([For(x, self.bq * self.dp, Store(self.o, x, const(0, self.dtype))),
                      For(row, self.bq, Block([Store(self.m, row, const(-np.inf, self.dtype)),
                                               Store(self.l, row, const(0, self.dtype))]))])

    def scores_tile(self, bf: Var, kb: Var) -> Stmt:
        """S = Qblock @ Kblock^T: one micro-kernel call per MR query rows and NR keys."""
        p, h = Var("p"), Var("h")
        k_panel = Address(self.kpack, ((bf * self.nkb + kb) * self.halves + h) * (self.depth * self.nr))
        s_at = Address(self.s, p * (self.mr * self.bk) + h * self.nr)
        call = Intrinsic(self.ukernel, (as_expr(self.depth), Address(self.qpanel, p * (self.mr * self.depth)),
                                        as_expr(self.depth), k_panel, s_at, as_expr(self.bk), as_expr(0)))
        return For(p, self.bq // self.mr, For(h, self.halves, call))

    def softmax_rows(self, q0: Var, kb: Var, masked: Expr | None) -> Stmt:
        """Per query row: the score expression, then the online max/sum update with P = exp(S - max).

        ``masked``: the condition for a tile that needs the constant masks (None: every tile).
        """
        panel, r, c, row = Var("panel"), Var("r"), Var("c"), Var("row")
        dt = self.dtype
        at = row * self.bk + c
        qk_value = Var("qk", dt)  # loaded before the score expression: no load in a branch of it
        score = substitute(self.score, {self.dot.name: qk_value})
        neg_inf = const(-np.inf, dt)

        def over_keys(value) -> Stmt:
            return For(c, self.bk, Block([Declare(self.j, kb * self.bk + c),
                                          Declare(qk_value, Load(self.s, at)), Store(self.s, at, value)]),
                       "vectorized")

        # the padding guards: per key inside the loop (folded away when Sk is whole blocks), per
        # row outside it, so that the loop body has no branch around a load and vectorises
        key_exists = _less(self.j, self.sk)
        apply_f = over_keys(Select(key_exists, score, neg_inf))
        if masked is not None:
            visible = substitute(without_masks(self.score, self.masks), {self.dot.name: qk_value})
            apply_f = If(masked, apply_f, over_keys(Select(key_exists, visible, neg_inf)))
        apply_f = If(_less(self.i, self.sq), apply_f, over_keys(neg_inf))
        m_old, m_new, shift, corr = Var("m_old", dt), Var("m_new", dt), Var("shift", dt), Var("correction", dt)
        s_val = Load(self.s, at)
        p_val = Call("exp", (Binary("-", s_val, shift, dt),), dt)
        mx, total, x = Var("mx", dt), Var("sum", dt), Var("x")
        o_at = row * self.dp + x
        stmts = [Declare(row, panel * self.mr + r), Declare(self.i, q0 + row), apply_f,
                 Declare(m_old, Load(self.m, row))]
        stmts += reduce_into_lanes(mx, Reduce("max", [(c, self.bk)], s_val, dt), self.lanes)
        stmts += [Declare(m_new, Call("mc_maximum", (m_old, mx), dt)),
                  # all scores so far -inf (masked): shift by 0 so exp(-inf - 0) = 0, not NaN
                  Declare(shift, Select(Binary("==", m_new, neg_inf, BOOL), const(0, dt), m_new)),
                  Declare(corr, Call("exp", (Binary("-", m_old, shift, dt),), dt)),
                  For(c, self.bk, Store(self.s, at, p_val), "vectorized")]
        stmts += reduce_into_lanes(total, Reduce("sum", [(c, self.bk)], s_val, dt), self.lanes)
        stmts += [Store(self.l, row, Binary("+", Binary("*", Load(self.l, row), corr, dt), total, dt)),
                  Store(self.m, row, m_new),
                  For(x, self.dp, Store(self.o, o_at, Binary("*", Load(self.o, o_at), corr, dt)), "vectorized")]
        return self._rows(panel, r, Block(stmts))

    def accumulate_pv(self, bf: Var, kb: Var) -> Stmt:
        """O += P @ Vblock: micro-kernel per (MR query rows, NR head columns), P's rows read in place."""
        p, eb = Var("p"), Var("eb")
        v_panel = Address(self.vpack, ((bf * self.neb + eb) * (self.nkb * self.bk) + kb * self.bk) * self.nr)
        call = Intrinsic(self.ukernel, (as_expr(self.bk), Address(self.s, p * (self.mr * self.bk)),
                                        as_expr(self.bk), v_panel,
                                        Address(self.o, p * (self.mr * self.dp) + eb * self.nr),
                                        as_expr(self.dp), as_expr(1)))
        return For(p, self.bq // self.mr, For(eb, self.neb, call))

    def store_out(self, q0: Var) -> Stmt:
        """out[b, q0 + row, e] = O[row, e] / l[row] for the rows that exist."""
        row = Var("row")
        value = Binary("/", Load(self.o, row * self.dp + self.e), Load(self.l, row), self.dtype)
        store = Store(self.out, self.out_at, value)
        return For(row, self.bq, Block([Declare(self.i, q0 + row),
                                        If(_less(self.i, self.sq), For(self.e, self.head, store))]))
