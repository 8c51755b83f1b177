"""Strategy ``gpu_row_reduce``: a block (or a warp) per row of a reduction or row kernel.

Row kernels (softmax, layer norm, logsumexp) and reductions along the last axis (sum, max,
min, mean) read each row once per reduction and write one value or one row. On a GPU each row
gets ``threads`` threads: a block per row, or, with ``threads=32``, a warp per row and
``rows_per_block`` rows in one block. Per reduction, in barrier phases (the thread-serial form:
``fuse_threads.py``):

1. each thread combines a strided share of the row (elements ``lane``, ``lane + threads``, ...:
   neighbouring threads read neighbouring elements, so a warp's loads coalesce) into its
   per-thread slot of a ``local`` array;
2. each warp combines its 32 lanes (``WarpReduce``, the shuffle butterfly); with one warp per
   row that is the row's value, which every lane keeps in a per-thread ``local`` array; with
   more warps lane 0 of each stores its partial into ``shared`` memory (32 slots, the unused
   ones the identity);
3. (more warps) after the one barrier of the reduction, every warp combines the 32 partials
   (a second ``WarpReduce``, the same in each warp) and keeps the row's value in registers,
   as a warp per row does: a single warp 0 doing it would need a second barrier, before the
   others could read its value from shared memory. Only a reduce kernel's last reduction,
   whose value lane 0 stores, leaves it to warp 0.

Then the row's elementwise epilogue runs over the row by all its threads (same strided
order), or, for a reduction, lane 0 stores the finished value. More rows than ``max_blocks``
(CUDA allows 2^31-1 blocks) loop over rounds of blocks around the phases. Softmax over rows
of 1000::

    # schedule: gpu_row_reduce(threads=32, rows_per_block=8)         (row = b*8 + w)
    gpu_block.x for b in 0..ceil(R/8):
      local acc_max_part: f32[256];  local acc_max_row: f32[256];  ...
      gpu_thread.y for w in 0..8:  gpu_thread.x for l in 0..32:        # phase: max partials
        f32 acc_max = -inf;  for c in 0..32: if c*32 + l < 1000: acc_max = max(acc_max, x[row, c*32 + l])
        acc_max_part[w*32 + l] = acc_max
      gpu_thread.y for w in 0..8:  gpu_thread.x for l in 0..32:        # phase: the warp's max
        f32 acc_max_warp = warp_max(acc_max_part[w*32 + l]);  acc_max_row[w*32 + l] = acc_max_warp
      ... the same for the sum of exp(x - max) ..., then the epilogue phase:
      gpu_thread.y for w in 0..8:  gpu_thread.x for l in 0..32:
        f32 acc_max = acc_max_row[w*32 + l];  f32 v_max = acc_max;  ... f32 v_sum = acc_sum
        for c in 0..32: if c*32 + l < 1000: out[row, c*32 + l] = exp(x[row, c*32 + l] - v_max) / v_sum

Scalars never cross phases: each phase declares again the row's scalars it reads (``v_max``,
``v_sqrt`` ...) from where the reductions left their values.

**A row kept in registers** (``keep_row=True``, the default rule's choice where it applies).
Softmax reads ``x`` in three passes (max, sum, epilogue), layer norm likewise: three times the
bytes of a copy. Where two or more passes load the same elements (same buffer, same index at
a position of the row) and the row has a static length whose share, ``k = ceil(n/threads)``
values a thread, fits ``kept_limit`` (32 values; 16 in blocks of 1024), each thread loads its
share once, at the start of the first pass, into a per-thread ``local`` array indexed
``t*k + c``, which ``fuse_threads`` makes each thread's own ``[k]`` (registers: the loops over
``c`` are unrolled, so every index is a constant), and every pass reads it there. Global
memory then sees one read and one write per element; the loads stay coalesced (lane ``l``
reads element ``c*threads + l``).

With ``lanes`` (with ``keep_row``; the default rule's 4 for float32, 2 for float64: 16 bytes,
where the row's length is a multiple of it) a thread's share is groups of that many
consecutive elements, group ``c`` of lane ``l`` at ``(c*threads + l)*lanes``: the fill and the
epilogue loop over a group's lanes in a ``vectorized`` loop (one ``float4`` load of ``x``, one
store of the output: ``codegen/cuda.py``), the reductions over the registers in an unrolled
one; a warp still reads contiguous memory, 512 bytes a load. Softmax over rows of 4096::

    # schedule: gpu_row_reduce(threads=256, rows_per_block=1, keep_row=True, lanes=4)
    gpu_block.x for b in 0..R:
      local x_row: f32[4096]                                  # 256 threads x 16 values
      gpu_thread.x for t in 0..256:
        unrolled for c in 0..4: vectorized for v in 0..4:     # the one read of x: 4 float4 loads
          x_row[t*16 + c*4 + v] = x[b*4096 + (c*256 + t)*4 + v]
        unrolled for c in 0..4: unrolled for v in 0..4: acc_max = max(acc_max, x_row[t*16 + c*4 + v])
      ...  acc_sum = acc_sum + exp(x_row[t*16 + c*4 + v] - v_max)
      ...  unrolled for c in 0..4: vectorized for v in 0..4:
             out[b*4096 + (c*256 + t)*4 + v] = exp(x_row[t*16 + c*4 + v] - v_max) / v_sum

Longer rows, and rows of a symbolic length, keep reading the row once per pass.

Requires a plain row nest: independent output loops around, per row, scalar reductions (sum,
max or min, not float16's first-wins max/min: those keep gpu_threads; accumulators of
float32/64 or int32/64) and scalar declarations, ending in a store of the output or an
elementwise loop nest over the row whose iterations are independent. Refuses anything else.
Guarantees the thread-serial form, the same stores of the same values up to the order of the
reductions' combining (float sums round differently, as any reordering does).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ...ir.affine import affine
from ...ir.dependence import carried_scalars
from ...ir.loop_text import print_expr
from ...ir.loops import (BOOL, INDEX, Allocate, Assign, Binary, Block, Buffer, Const, Declare, Expr, For, If, Kernel,
                         Load, Stmt, Store, Var, WarpReduce, walk)
from ...ir.rewrite import (declared_names, exprs_of, free_vars, loads, map_expr, map_stmt_exprs, statements,
                           stored_buffers, substitute_stmt, unconditional_loads)
from ...ir.schedule import ScheduleError, tidy
from ...ir.symbolic import Sym, ceil_div
from ...lower.rules import reduction_init
from ..cpu.plain import ScalarReduction, loop_chain, output_loops, refuse, scalar_reduction, statements_of
from ..strategy import Strategy, register_strategy
from .common import (MAX_BLOCKS, WARP, Namer, check_plain, divides, equal, extent_product, free_of_conflicts,
                     grid, independent_loops, less, rows_apart, unravel)

#: accumulator dtypes the warp shuffles combine (float16 rows accumulate in float32)
REDUCED_DTYPES = {np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64)}
COMBINERS = ("sum", "max", "min")
BLOCK_THREADS = (32, 64, 128, 256, 512, 1024)
KEPT_PER_THREAD = 32   # keep_row: at most this many of a row's values in a thread's registers
KEPT_PER_BLOCK = 16384  # ... and at most this many in a block's (a quarter of an SM's register file)
VECTOR_BYTES = 16  # the widest load or store of one thread (float4): the lanes of a kept row


@dataclass
class RowPlan:
    """A row nest read by ``row_plan``: the output loops (the rows), the per-row statements
    (``("reduce", ScalarReduction)`` or ``("declare", Declare)``) and the final store or
    epilogue loop nest."""

    chain: list[For]
    items: list[tuple[str, object]]
    final: Stmt

    @property
    def reductions(self) -> list[ScalarReduction]:
        return [item for kind, item in self.items if kind == "reduce"]


def row_plan(kernel: Kernel) -> RowPlan:
    """The ``RowPlan`` of ``kernel``, or ``ScheduleError`` saying why it is no row nest."""
    def fail(why: str) -> ScheduleError:
        return refuse("gpu_row_reduce", kernel, why)

    check_plain("gpu_row_reduce", kernel)
    chain, body = output_loops(kernel)
    if independent_loops(kernel, chain) != len(chain):
        raise fail("the rows (output loops) are not independent of each other")
    stmts = statements_of(body)
    items, k = [], 0
    while k < len(stmts) - 1:
        found = scalar_reduction(stmts[k], stmts[k + 1])
        if found is not None:
            _check_reduction(found, fail)
            items.append(("reduce", found))
            k += 2
        elif isinstance(stmts[k], Declare):
            items.append(("declare", stmts[k]))
            k += 1
        else:
            raise fail(f"a row holds a statement other than reductions and scalars: {type(stmts[k]).__name__}")
    final = stmts[-1] if stmts else None
    if not any(kind == "reduce" for kind, _ in items):
        raise fail("no scalar reduction in the row")
    if isinstance(final, For):
        _check_epilogue(kernel, final, fail)
    elif not (isinstance(final, Store) and final.buffer is kernel.output):
        raise fail("the row does not end in a store of the output or an elementwise loop nest")
    return RowPlan(chain, items, final)


def _check_reduction(red: ScalarReduction, fail) -> None:
    if red.combiner not in COMBINERS or red.first_wins:
        raise fail(f"{red.acc.name} combines by {red.combiner}{' (first wins)' if red.first_wins else ''}")
    if red.acc.dtype not in REDUCED_DTYPES:
        raise fail(f"{red.acc.name} accumulates in {red.acc.dtype}, which no warp shuffle here combines")
    if red.per_element:
        raise fail(f"{red.acc.name} does more than accumulate per element")


def _check_epilogue(kernel: Kernel, nest: For, fail) -> None:
    loops, inner = loop_chain(nest)
    if any(isinstance(s, For) for s in statements(inner)) or carried_scalars(inner):
        raise fail("the epilogue is not a perfect nest of independent iterations")
    body = loops[-1].body
    if not free_of_conflicts(kernel, loops, body) and not rows_apart(kernel, loops, body):
        raise fail("the epilogue's iterations are not independent of each other")


def unit_stride(red: ScalarReduction) -> bool:
    """Whether the reduction's innermost loop walks its operands contiguously: every load
    moves by 0 or 1 element along it, one by 1 (a symbolic index ``i0*T + r1`` is read by its
    terms)."""
    var = red.axes[-1][0].name if red.axes else None
    strides = [_stride(load.index, var) for load in loads(red.value)]
    return var is not None and all(s in (0, 1) for s in strides) and 1 in strides


def _stride(index: Expr, var: str):
    form = affine(index)
    if form is not None:
        return form.coeff(var)
    terms = _terms(index)
    moving = [term for term in terms if var in free_vars(term)]
    if not moving:
        return 0
    return 1 if len(moving) == 1 and isinstance(moving[0], Var) and moving[0].name == var else None


def _terms(e: Expr) -> list[Expr]:
    if isinstance(e, Binary) and e.op == "+" and e.dtype == INDEX:
        return _terms(e.a) + _terms(e.b)
    return [e]


# ----------------------------------------------------------------------------------------------
# The strategy
# ----------------------------------------------------------------------------------------------


@register_strategy("gpu_row_reduce")
def gpu_row_reduce(kernel: Kernel, threads: int = 256, rows_per_block: int = 1,
                   max_blocks: int = MAX_BLOCKS, keep_row: bool = False, lanes: int = 1) -> Kernel:
    """``kernel`` with ``threads`` threads per row, ``rows_per_block`` rows (of one warp each,
    ``threads=32``) per block; ``keep_row``: each thread loads its share of the row once, into
    registers, and every pass reads it there (refused where the row is symbolic, longer than
    ``kept_limit`` values per thread, or read by one pass only); ``lanes`` (2 or 4, with
    ``keep_row``): the share in groups of that many consecutive elements, loaded and stored as
    vectors; see the module docstring."""
    def fail(why: str) -> ScheduleError:
        return refuse("gpu_row_reduce", kernel, why)

    if threads not in BLOCK_THREADS:
        raise fail(f"threads must be one of {BLOCK_THREADS}, not {threads!r}")
    if not (isinstance(rows_per_block, int) and rows_per_block >= 1 and threads * rows_per_block <= 1024):
        raise fail(f"rows_per_block must be a positive int with threads x rows_per_block <= 1024, "
                   f"not {rows_per_block!r}")
    if rows_per_block > 1 and threads != WARP:
        raise fail("several rows per block need a warp per row (threads=32)")
    if not (isinstance(max_blocks, int) and max_blocks >= 1):
        raise fail(f"max_blocks must be a positive int, not {max_blocks!r}")
    if not isinstance(keep_row, bool):
        raise fail(f"keep_row must be True or False, not {keep_row!r}")
    if lanes not in (1, 2, 4) or (lanes > 1 and not keep_row):
        raise fail(f"lanes must be 1, or 2 or 4 with keep_row=True, not {lanes!r}")
    plan = row_plan(kernel)
    builder = RowBuilder(kernel, plan, threads, rows_per_block, max_blocks, lanes)
    if keep_row:
        builder.keep_row(fail)
    return replace(kernel, body=tidy(builder.build()))


class RowBuilder:
    """Builds the thread-serial form of one row nest (see the module docstring)."""

    def __init__(self, kernel: Kernel, plan: RowPlan, threads: int, rows_per_block: int, max_blocks: int,
                 lanes: int = 1):
        self.plan, self.threads, self.rows_per_block, self.lanes = plan, threads, rows_per_block, lanes
        self.name = Namer(kernel)
        self.block = Var(self.name("b"))
        if rows_per_block == 1:
            self.lane = Var(self.name("t"))
            self.flat: Expr = self.lane
            self.thread_loops = [("x", self.lane, threads)]
            warp = Const(0)
        else:
            warp, self.lane = Var(self.name("w")), Var(self.name("l"))
            self.flat = warp * WARP + self.lane
            self.thread_loops = [("y", warp, rows_per_block), ("x", self.lane, WARP)]
        self.total_threads = threads * rows_per_block
        rows = extent_product([loop.extent for loop in plan.chain])
        self.blocks, self.rounds = grid(rows, rows_per_block, max_blocks)
        self.round = Var(self.name("s")) if self.rounds > 1 else None
        block_index = self.block if self.round is None else self.round * self.blocks + self.block
        row = block_index * rows_per_block + warp
        self.guard = None if self.rounds == 1 and divides(rows, rows_per_block) else less(row, rows)
        self.row_values = unravel(row, [(loop.var.name, loop.extent) for loop in plan.chain])
        self.allocations: list[Stmt] = []
        self.phases: list[Stmt] = []
        self.context: list[Declare] = []  # the row's scalars so far, as a later phase declares them
        self.v = Var(self.name("v")) if lanes > 1 else None  # a lane of a group of consecutive elements
        self.own_vars = {var.name for var in (self.block, self.lane, warp, self.round, self.v) if isinstance(var, Var)}
        self.written = stored_buffers(kernel.body)
        # keep_row: the position variable every pass shares, the per-thread arrays that hold the
        # kept elements (by load), their length, and the loop that fills them (first pass)
        self.c: Var | None = None
        self.kept: dict[tuple, Buffer] = {}
        self.kept_count = 0
        self.loading: Stmt | None = None

    def build(self) -> Stmt:
        """The block loop around the allocations and the phases."""
        items, final = self.plan.items, self.plan.final
        last = max(k for k, (kind, _) in enumerate(items) if kind == "reduce")
        for k, (kind, item) in enumerate(items):
            if kind == "declare" and not (k > last and isinstance(final, Store)):
                self.context.append(self.at_row(item))
            elif kind == "reduce":
                finish = None
                if k == last and isinstance(final, Store):
                    finish = [self.at_row(d) for _, d in items[k + 1:]] + [self.at_row(final)]
                self.reduction(item, finish)
        if isinstance(final, For):
            self.epilogue(final)
        phases: Stmt = Block(self.phases)
        if self.round is not None:
            phases = For(self.round, self.rounds, phases)
        return For(self.block, self.blocks, Block(self.allocations + [phases]), "gpu_block", "x")

    def at_row(self, s: Stmt) -> Stmt:
        """``s`` with the output loops' variables replaced by this thread's row."""
        return substitute_stmt(s, self.row_values)

    def phase(self, stmts: list[Stmt]) -> None:
        """One barrier phase: the block's thread loops around the row's scalars ``stmts`` need
        and ``stmts``, under the row guard where rows overhang."""
        body: Stmt = Block(self.needed_context(stmts) + stmts)
        if self.guard is not None:
            body = If(self.guard, body)
        for axis, var, extent in reversed(self.thread_loops):
            body = For(var, extent, body, "gpu_thread", axis)
        self.phases.append(body)

    def needed_context(self, stmts: list[Stmt]) -> list[Stmt]:
        """The declarations of ``context`` that ``stmts`` read, directly or through another."""
        inside = Block(stmts)
        needed = {name for e in _all_exprs(inside) for name in free_vars(e)} - declared_names(inside)
        kept = []
        for declare in reversed(self.context):
            if declare.var.name in needed:
                kept.append(declare)
                needed |= free_vars(declare.init)
        return kept[::-1]

    def allocate(self, base: str, dtype, size: int, scope: str) -> Buffer:
        buffer = Buffer(self.name(base), dtype, (size,))
        self.allocations.append(Allocate(buffer, scope))
        return buffer

    def strided(self, loops: list[tuple[str, object]], body: Stmt, independent: bool = False) -> list[Stmt]:
        """``body`` at this thread's share of the positions of ``loops``: ``c*threads + lane``
        for ``c`` in ``0..ceil(n/threads)``, guarded where the last round overhangs. With a
        kept row, the loop is unrolled, reads the kept elements from registers and, in the
        first pass, follows the loop that loads them; with lanes, ``c`` counts groups and a
        loop over the lanes (``vectorized`` where the iterations are ``independent``) is inside."""
        c = self.c or Var(self.name("c"))
        body = self.at_position(loops, body, c)
        if self.kept:
            body = self.from_registers(body)
        loop = For(c, self.rounds_of(loops), self.guarded(loops, self.in_lanes(body, independent), c),
                   "unrolled" if self.kept else "serial")
        loading, self.loading = self.loading, None
        return [loading, loop] if loading is not None else [loop]

    @staticmethod
    def count(loops: list[tuple[str, object]]):
        return extent_product([extent for _, extent in loops])

    def group_start(self, c: Expr) -> Expr:
        """The position of this thread's ``c``-th element (group of ``lanes``) in the row."""
        start = c * self.threads + self.lane
        return start if self.lanes == 1 else start * self.lanes

    def rounds_of(self, loops: list[tuple[str, object]]):
        """How many elements (groups) of a pass over ``loops`` each thread takes."""
        return ceil_div(self.count(loops), self.threads * self.lanes)

    def at_position(self, loops: list[tuple[str, object]], body: Stmt, c: Var) -> Stmt:
        """``body`` at position ``c*threads + lane`` (with lanes: ``(c*threads + lane)*lanes +
        v``) of ``loops`` of this thread's row."""
        position = self.group_start(c) if self.v is None else self.group_start(c) + self.v
        return substitute_stmt(body, {**self.row_values, **unravel(position, loops)})

    def guarded(self, loops: list[tuple[str, object]], body: Stmt, c: Var) -> Stmt:
        """``body`` under ``c*threads + lane < n`` (the group's start) where the last round
        overhangs the row (a group is whole or past the end: ``lanes`` divides ``n``)."""
        count = self.count(loops)
        if divides(count, self.threads * self.lanes):
            return body
        return If(less(self.group_start(c), count), body)

    def in_lanes(self, body: Stmt, independent: bool) -> Stmt:
        """``body`` in a loop over the lanes of a group (none without lanes)."""
        if self.v is None:
            return body
        return For(self.v, self.lanes, body, "vectorized" if independent else "unrolled")

    # -- keep_row: the row in registers ------------------------------------------------------------

    def passes(self) -> list[tuple[list[tuple[str, object]], Stmt]]:
        """The passes over the row: each reduction's update over its axes, then the epilogue's
        body over its loops (``(loops, body)``, loops as ``(name, extent)``)."""
        found = [([(var.name, extent) for var, extent in red.axes], red.update) for red in self.plan.reductions]
        if isinstance(self.plan.final, For):
            loops, inner = loop_chain(self.plan.final)
            found.append(([(loop.var.name, loop.extent) for loop in loops], inner))
        return found

    def keep_row(self, fail) -> None:
        """Plan the registers that hold this thread's share of the row: one per-thread array
        (``local``, ``k = ceil(n/threads)`` values) for each element that two or more passes
        load (same buffer, same index at the same position), one of them at every position
        (``unconditional_loads``: the fill then reads nothing the passes would not), filled by
        one unrolled loop at the start of the first pass; every pass then reads them there.
        Refused (``fail``) where the passes run over different or symbolic lengths (or one that
        ``lanes`` does not divide), nothing is loaded twice, or the arrays need more than
        ``kept_limit`` values per thread."""
        passes = self.passes()
        count = self.count(passes[0][0])
        if isinstance(count, Sym):
            raise fail("keep_row: the row's length is symbolic, so a thread's share of it has no size known "
                       "when compiling")
        if any(str(self.count(loops)) != str(count) for loops, _ in passes):
            raise fail("keep_row: the passes over the row run over different lengths")
        if not divides(count, self.lanes):
            raise fail(f"lanes={self.lanes}: the row's {count} elements are no whole number of groups (a group "
                       "would straddle two rows, misaligned)")
        self.c = Var(self.name("c"))
        seen: dict[tuple, tuple[Load, set]] = {}
        always = set()  # the elements some pass loads at every position (the fill may load them)
        for n, (loops, body) in enumerate(passes):
            body = self.at_position(loops, body, self.c)
            for e in _all_exprs(body):
                for load in loads(e):
                    if self.keepable(load):
                        seen.setdefault(_load_key(load), (load, set()))[1].add(n)
            always |= {_load_key(load) for load in unconditional_loads(body)}
        kept = [load for key, (load, used) in seen.items() if len(used) >= 2 and key in always]
        if not kept:
            raise fail("keep_row: no element of the row is loaded by two passes, one of them at every position "
                       "(nothing to keep)")
        k = self.rounds_of(passes[0][0]) * self.lanes
        limit = kept_limit(self.total_threads)
        if len(kept) * k > limit:
            raise fail(f"keep_row: each thread would keep {len(kept) * k} values ({len(kept)} of {k}), more than "
                       f"the {limit} registers a thread of {self.total_threads} may spend on them")
        self.kept_count = k
        fills = []
        for load in kept:
            buffer = self.allocate(f"{load.buffer.name}_row", load.dtype, self.total_threads * k, "local")
            self.kept[_load_key(load)] = buffer
            fills.append(Store(buffer, self.kept_slot(), load))
        self.loading = For(self.c, self.rounds_of(passes[0][0]),
                           self.guarded(passes[0][0], self.in_lanes(Block(fills), True), self.c), "unrolled")

    def kept_slot(self) -> Expr:
        """Where this thread's element ``c`` (lane ``v``) of the row is kept: ``t*k + c*lanes + v``."""
        mine = self.flat * self.kept_count
        return mine + self.c if self.v is None else mine + self.c * self.lanes + self.v

    def keepable(self, load: Load) -> bool:
        """Whether ``load`` reads an element of this thread's share of the row: a buffer the
        kernel never writes, at an index of the position and the row only (no load in it)."""
        names = free_vars(load.index)
        return (load.buffer not in self.written and self.c.name in names and names <= self.own_vars | {self.c.name}
                and not any(isinstance(sub, Load) for sub in walk(load.index)))

    def from_registers(self, body: Stmt) -> Stmt:
        """``body`` with the kept elements read from their per-thread arrays."""
        def fn(e: Expr):
            if isinstance(e, Load):
                buffer = self.kept.get(_load_key(e))
                if buffer is not None:
                    return Load(buffer, self.kept_slot())
            return None
        return map_stmt_exprs(body, lambda e: map_expr(e, fn))

    def reduction(self, red: ScalarReduction, finish: list[Stmt] | None) -> None:
        """The phases of one reduction; ``finish``: the statements that store the output from
        its value (the last reduction of a ``reduce`` kernel), run by lane 0."""
        acc, dtype = red.acc, red.acc.dtype
        identity = reduction_init(red.combiner, dtype)
        partial = self.allocate(f"{acc.name}_part", dtype, self.total_threads, "local")
        axes = [(var.name, extent) for var, extent in red.axes]
        self.phase([red.declare, *self.strided(axes, red.update), Store(partial, self.flat, acc)])
        in_warp = Var(self.name(f"{acc.name}_warp"), dtype)
        stmts: list[Stmt] = [WarpReduce(in_warp, red.combiner, Load(partial, self.flat), WARP)]
        if self.threads == WARP:
            stmts.append(self.finished(acc, in_warp, finish))
            self.phase(stmts)
            return
        warps = self.allocate(f"{acc.name}_warps", dtype, WARP, "shared")
        stmts.append(If(equal(Binary("%", self.lane, Const(WARP), INDEX), 0),
                        Store(warps, Binary("/", self.lane, Const(WARP), INDEX), in_warp)))
        used = self.threads // WARP
        if used < WARP:  # the slots no warp fills hold the identity
            unused = Binary("&&", Binary(">=", self.lane, Const(used), BOOL), less(self.lane, WARP), BOOL)
            stmts.append(If(unused, Store(warps, self.lane, identity)))
        self.phase(stmts)
        in_block = Var(self.name(f"{acc.name}_block"), dtype)
        if finish is not None:  # the kernel's last phase: warp 0 combines the partials, lane 0 stores
            final = [WarpReduce(in_block, red.combiner, Load(warps, self.lane), WARP),
                     self.finished(acc, in_block, finish)]
            self.phase([If(less(self.lane, WARP), Block(final))])
            return
        # every warp combines the 32 partials itself (lane l takes partial l into its own slot,
        # which the warp reduce reads): after this one barrier the row's value is in every
        # thread's registers, where warp 0 alone would need a second one before the others
        # could read its value from shared memory
        partials = self.allocate(f"{acc.name}_partials", dtype, self.total_threads, "local")
        self.phase([Store(partials, self.flat, Load(warps, Binary("%", self.lane, Const(WARP), INDEX)))])
        self.phase([WarpReduce(in_block, red.combiner, Load(partials, self.flat), WARP),
                    self.finished(acc, in_block, finish)])

    def finished(self, acc: Var, value: Var, finish: list[Stmt] | None) -> Stmt:
        """What follows the row's value ``value`` of ``acc``: lane 0 stores the output
        (``finish``), or every lane keeps the value for the later phases in its per-thread
        ``local`` slot."""
        if finish is not None:
            return If(equal(self.lane, 0), Block([Declare(acc, value)] + finish))
        kept = self.allocate(f"{acc.name}_row", acc.dtype, self.total_threads, "local")
        self.context.append(Declare(acc, Load(kept, self.flat)))
        return Store(kept, self.flat, value)

    def epilogue(self, nest: For) -> None:
        """The phase that runs the row's elementwise loop nest, strided over the row's threads."""
        loops, inner = loop_chain(nest)
        self.phase(self.strided([(loop.var.name, loop.extent) for loop in loops], inner, independent=True))


def _load_key(load: Load) -> tuple:
    """What identifies the element a load reads: its buffer and its index's text."""
    return load.buffer, print_expr(load.index)


def kept_limit(block_threads: int) -> int:
    """The most values a thread may keep of its row (``keep_row``): ``KEPT_PER_THREAD``, fewer
    in big blocks (a quarter of an SM's 64K registers for the block: 16 at 1024 threads)."""
    return min(KEPT_PER_THREAD, KEPT_PER_BLOCK // block_threads)


def _all_exprs(s: Stmt):
    """Every expression ``s`` reads, an assigned scalar counted as read."""
    for sub in statements(s):
        yield from exprs_of(sub)
        if isinstance(sub, Assign):
            yield sub.var


# ----------------------------------------------------------------------------------------------
# The default rule
# ----------------------------------------------------------------------------------------------

SHORT_ROW = 1024   # up to this many elements a warp per row (8 rows a block), longer rows a block
LONG_ROW = 8192    # from here on, 1024 threads per row


def gpu_row_reduce_steps(kernel: Kernel, target=None) -> list:
    """The rule for ``reduce`` and ``row`` kernels: ``gpu_row_reduce`` where the first
    reduction runs along contiguous memory over at least a warp's worth of elements (a shorter
    or strided one is better served by a thread per row, ``gpu_threads``): a warp per row up
    to ``SHORT_ROW`` elements, 256 threads up to ``LONG_ROW``, 1024 beyond."""
    try:
        plan = row_plan(kernel)
    except ScheduleError:
        return []
    first = plan.reductions[0]
    length = first.length
    if not unit_stride(first) or (not isinstance(length, Sym) and length < WARP):
        return []
    if isinstance(length, Sym):
        threads = 256
    else:
        threads = WARP if length <= SHORT_ROW else 256 if length <= LONG_ROW else 1024
    if target is not None and target.max_threads_per_block:
        threads = min(threads, target.max_threads_per_block)
    rows_per_block = 1
    if threads == WARP:
        rows = extent_product([loop.extent for loop in plan.chain])
        rows_per_block = 8 if isinstance(rows, Sym) or rows >= 8 else 1 << max(rows - 1, 0).bit_length()
    params = {"threads": threads, "rows_per_block": rows_per_block}
    itemsize = max((load.buffer.dtype.itemsize for load in loads(first.value)), default=0)
    lanes = VECTOR_BYTES // itemsize if itemsize in (4, 8) else 1
    # the row in registers, read from memory once, where it fits and two passes read it; in
    # 16-byte groups where its length allows
    for extra in ([{"keep_row": True, "lanes": lanes}] if lanes > 1 else []) + [{"keep_row": True}]:
        try:
            gpu_row_reduce(kernel, **params, **extra)
        except ScheduleError:
            continue
        params.update(extra)
        break
    return [Strategy("gpu_row_reduce", **params)]
