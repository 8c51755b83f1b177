"""Strategy ``gpu_threads``: one GPU thread per iteration of the independent output loops.

The generic GPU schedule, for any kernel: elementwise, broadcast, gather, and every kernel no
better rule takes (a matmul, a column reduction, a scan, attention's plain nest: correct,
one output element or row per thread, the rest serial inside the thread). The outermost
loops whose iterations are independent (the test of ``Parallel`` and ``Bind``:
``common.independent_loops``) become one flat position, split into blocks of ``threads``
threads; the last block's overhang is guarded; everything inside runs serially in its
thread::

    for i0 in 0..4:                              # schedule: gpu_threads(threads=256)
      for i1 in 0..1000:               --->      gpu_block.x for b in 0..16:
        y[i0*1000 + i1] = x[...] + 1               gpu_thread.x for t in 0..256:
                                                     if (b*256 + t) < 4000:
                                                       y[b*256 + t] = x[...] + 1

A symbolic count of positions gives a symbolic grid (``ceil_div``: ``ceil(T/256)`` blocks).
A static count needing more than ``max_blocks`` blocks (CUDA allows 2^31-1) gets that many
blocks and a grid-stride loop inside the thread (``for s in 0..rounds``). A kernel with no
independent loop (a scalar output, a scan along its only axis) runs in one block of one
thread.

**Lanes.** With ``lanes`` of 2 or 4 (the default rule's choice for elementwise kernels of 4-
or 8-byte values: 16 bytes a thread), each thread takes that many consecutive elements, as a
``vectorized`` loop that the CUDA renderer writes as one ``float4`` (``double2`` ...) load per
buffer and one store (``codegen/cuda.py``: ``vector_loop``); neighbouring threads take
neighbouring groups, so a warp's accesses stay coalesced. The groups lie along a *run* of
innermost loops that every buffer moving along them reads contiguously (row-major, the run
last; a buffer may also not move along it: a broadcast), chosen as long as possible: the
last axis where a broadcast operand has that axis (``a[i1]`` of ew_chain), every axis where
all buffers are read at the flat position. A group must not straddle two rows of a buffer
(its first element would be misaligned), so a run shorter than all the loops needs a length
that ``lanes`` divides; over all the loops, the last group is the *tail*, done element by
element under a guard::

    for i0 in 0..5:                          # schedule: gpu_threads(threads=32, lanes=4)
      for i1 in 0..37:             --->      gpu_block.x for b in 0..2:
        y[i0*37 + i1] = x[...] * 2             gpu_thread.x for t in 0..32:
                                                 if (b*32 + t) < 47:
                                                   if (b*32 + t)*4 + 3 < 185:
                                                     vectorized for v in 0..4: y[(b*32 + t)*4 + v] = x[...] * 2
                                                   else:
                                                     for v in 0..4: if (b*32 + t)*4 + v < 185: y[...] = ...

The indices of the run are rewritten ``before * run_length + g*lanes + v``, so that ``v`` is a
term of its own and the group's start visibly a multiple of ``lanes``, whatever the extents.
Lanes are refused where no run qualifies, a thread runs a loop (a reduction: not
elementwise), or no loop is independent.

**Groups.** More bytes in flight per thread: the usual remedy where a thread that loads one
16-byte vector and waits for it leaves memory idle. (Measured on an H100, ew_chain at the GPU
size: 1, 2 and 4 groups all at 97-99% of copy bandwidth; 2048 resident threads of one float4
each already keep enough in flight there. The rule's 2 measured no worse, and stays.) With
``groups=G`` (2 or 4: the default rule's 2 for large elementwise kernels in float4,
``gpu_threads_steps``) each
thread takes ``G`` positions (element groups with lanes), ``threads*lanes`` elements apart (so
each warp's accesses stay coalesced), and the grid is ``G`` times smaller. The thread first
loads, for all ``G`` positions, every element its computation surely reads (``unconditional_loads``
of buffers the kernel does not write) into per-thread ``local`` arrays (registers after
``fuse_threads``), then computes and stores the ``G`` positions from there: the ``G`` vector
loads of each buffer stand before the first computation, independent of each other. Each
position is guarded where the last block overhangs::

    for i0 in 0..5:                          # schedule: gpu_threads(threads=32, lanes=4, groups=2)
      for i1 in 0..64:             --->      gpu_block.x for b in 0..2:
        y[i0*64 + i1] = x[...] * 2             local x_in: f32[256]                # 32 threads x 2 groups x 4 lanes
                                               gpu_thread.x for t in 0..32:
                                                 unrolled for j in 0..2:
                                                   if ((b*2 + j)*32 + t) < 80:
                                                     vectorized for v in 0..4: x_in[t*8 + j*4 + v] = x[...]
                                                 unrolled for j in 0..2:
                                                   if ((b*2 + j)*32 + t) < 80:
                                                     vectorized for v in 0..4: y[...] = x_in[t*8 + j*4 + v] * 2

Groups need an elementwise nest (a thread that runs a loop is refused), with or without lanes.

Requires a plain nest (as lowering wrote it). Guarantees the thread-serial form
(``fuse_threads.py``) with a single phase: the same stores of the same values, each position
in exactly one thread.
"""

from __future__ import annotations

from dataclasses import replace

from ...ir.loop_text import print_expr
from ...ir.loops import Allocate, Block, Buffer, Const, Expr, For, If, Kernel, Load, Stmt, Store, Var
from ...ir.rewrite import (exprs_of, free_vars, loads, map_accesses, map_expr, map_stmt_exprs, statements,
                           substitute_stmt, unconditional_loads)
from ...ir.schedule import ScheduleError, loops, tidy
from ...ir.symbolic import Sym, ceil_div
from ..cpu.parallel_rows import row_major_position
from ..cpu.plain import loop_chain, refuse
from ..strategy import Strategy, register_strategy
from .common import (MAX_BLOCKS, WARP, Namer, check_plain, divides, extent_product, grid, independent_loops,
                     less, size_expr, unravel)

THREADS = 256  # threads per block of the generic rule: 8 warps, a common choice for memory-bound kernels
LANES = (1, 2, 4)  # consecutive elements per thread
GROUPS = (1, 2, 4)  # positions (elements, or groups of lanes) per thread, loaded before any is computed
GROUPS_RULE = 2  # the default rule's groups for large kernels in float4 (``gpu_threads_steps``)
RESIDENT_THREADS = 2048  # threads an SM holds at once (sm_80/sm_90): the rule's measure of a large kernel
VECTOR_BYTES = 16  # the widest load or store of one thread (float4)
NOT_READ = ("not read",)  # an index that does not read the loops of a run (``LaneGroups._run_part``)


@register_strategy("gpu_threads")
def gpu_threads(kernel: Kernel, threads: int = THREADS, max_blocks: int = MAX_BLOCKS, lanes: int = 1,
                groups: int = 1) -> Kernel:
    """``kernel`` with a GPU thread per iteration of its independent output loops, or, with
    ``lanes`` of 2 or 4, per ``lanes`` consecutive elements; with ``groups`` of 2 or 4, each
    thread takes that many of those positions, loaded before any is computed (module docstring)."""
    if not (isinstance(threads, int) and 1 <= threads <= 1024):
        raise refuse("gpu_threads", kernel, f"threads must be an int in 1..1024, not {threads!r}")
    if not (isinstance(max_blocks, int) and max_blocks >= 1):
        raise refuse("gpu_threads", kernel, f"max_blocks must be a positive int, not {max_blocks!r}")
    if lanes not in LANES:
        raise refuse("gpu_threads", kernel, f"lanes must be one of {LANES}, not {lanes!r}")
    if groups not in GROUPS:
        raise refuse("gpu_threads", kernel, f"groups must be one of {GROUPS}, not {groups!r}")
    check_plain("gpu_threads", kernel)
    chain, _ = loop_chain(kernel.body)
    count = independent_loops(kernel, chain)
    name = Namer(kernel)
    b, t = Var(name("b")), Var(name("t"))
    if count == 0:
        if lanes > 1 or groups > 1:
            what = f"lanes={lanes}" if lanes > 1 else f"groups={groups}"
            raise refuse("gpu_threads", kernel, f"{what}: no independent loop to take groups of elements from")
        return replace(kernel, body=For(b, 1, For(t, 1, kernel.body, "gpu_thread", "x"), "gpu_block", "x"))
    loops = chain[:count]
    if lanes > 1:
        work = LaneGroups(kernel, loops, lanes, name)
        positions, place = work.groups, work.body
    else:
        positions = extent_product([loop.extent for loop in loops])
        place = lambda position, inner: substitute_stmt(  # noqa: E731
            inner, unravel(position, [(loop.var.name, loop.extent) for loop in loops]))
    blocks, rounds = grid(positions, threads * groups, max_blocks)
    if rounds == 1:
        block = b
    else:
        s = Var(name("s"))
        block = s * blocks + b
    guarded = rounds > 1 or not divides(positions, threads * groups)
    inner = loops[-1].body
    if groups == 1:
        position = block * threads + t
        body = place(position, inner)
        allocations: list[Stmt] = []
        if guarded:
            body = If(less(position, positions), body)
    else:
        staging = Staging(kernel, loops, inner, groups, lanes, threads, t, name,
                          work.lane if lanes > 1 else None)
        j = staging.group

        def each_group(stmt: Stmt) -> Stmt:
            position = (block * groups + j) * threads + t
            placed = place(position, stmt)
            return For(j, groups, If(less(position, positions), placed) if guarded else placed, "unrolled")

        body = Block([each_group(staging.fill), each_group(staging.compute)])
        allocations = staging.allocations
    if rounds > 1:
        body = For(s, rounds, body)
    threaded = For(t, threads, body, "gpu_thread", "x")
    return replace(kernel, body=tidy(For(b, blocks, Block(allocations + [threaded]) if allocations else threaded,
                                         "gpu_block", "x")))


class Staging:
    """A thread's ``groups`` positions of an elementwise nest, loaded before computed (module
    docstring, **Groups**): ``fill`` stores each element that ``inner`` surely reads, of a
    buffer the kernel does not write, into this thread's slot of a per-thread ``local`` array
    (``allocations``: ``threads * groups * lanes`` elements, slot ``t*groups*lanes + j*lanes +
    v``); ``compute`` is ``inner`` reading those slots instead. Both are in terms of the
    nest's loop variables (and ``group`` ``j``, lane ``v``), to be placed at a position as
    ``inner`` is."""

    def __init__(self, kernel: Kernel, loops: list[For], inner: Stmt, groups: int, lanes: int, threads: int,
                 t: Var, name: Namer, lane: Var | None):
        if any(isinstance(s, For) for s in statements(inner)):
            raise refuse("gpu_threads", kernel, f"groups={groups} needs an elementwise nest (a thread runs a loop)")
        self.group = Var(name("j"))
        per_thread = groups * lanes
        self.slot = t * per_thread + (self.group * lanes + lane if lane is not None else self.group)
        written = {s.buffer for s in statements(inner) if isinstance(s, Store)}
        loop_vars = {loop.var.name for loop in loops}
        self.staged: dict[tuple, Buffer] = {}
        self.allocations: list[Stmt] = []
        fills: list[Stmt] = []
        for load in unconditional_loads(inner):
            key = (load.buffer, print_expr(load.index))
            if key in self.staged or load.buffer in written or not free_vars(load.index) <= loop_vars:
                continue
            buffer = Buffer(name(f"{load.buffer.name}_in"), load.dtype, (threads * per_thread,))
            self.staged[key] = buffer
            self.allocations.append(Allocate(buffer, "local"))
            fills.append(Store(buffer, self.slot, load))
        self.fill: Stmt = Block(fills)
        self.compute: Stmt = map_stmt_exprs(inner, lambda e: map_expr(e, self._from_registers))

    def _from_registers(self, e: Expr) -> Expr | None:
        if isinstance(e, Load):
            buffer = self.staged.get((e.buffer, print_expr(e.index)))
            if buffer is not None:
                return Load(buffer, self.slot)
        return None


class LaneGroups:
    """The elements of an elementwise nest in groups of ``lanes`` consecutive ones along its
    innermost loops (module docstring): ``groups`` of them; ``body(q)`` is what the thread of
    group ``q`` runs. Refuses (``ScheduleError``) a nest that is not elementwise, or in which
    no run of innermost loops is contiguous in every buffer that moves along it with a length
    that ``lanes`` divides (or, over all the loops, any length: the last group is the tail)."""

    def __init__(self, kernel: Kernel, loops: list[For], lanes: int, name: Namer):
        self.kernel, self.loops, self.lanes = kernel, loops, lanes
        self.inner = loops[-1].body
        if any(isinstance(s, For) for s in statements(self.inner)):
            raise refuse("gpu_threads", kernel, f"lanes={lanes} needs an elementwise nest (a thread runs a loop)")
        self.extents = {loop.var.name: loop.extent for loop in loops}
        self.split = self._contiguous_run()
        if self.split is None:
            raise refuse("gpu_threads", kernel, f"lanes={lanes}: no innermost loops are contiguous in every buffer "
                         f"that moves along them with a multiple of {lanes} elements")
        self.outer, self.run = loops[:self.split], loops[self.split:]
        self.run_length = extent_product([loop.extent for loop in self.run])
        per_outer = ceil_div(self.run_length, lanes)
        self.groups = extent_product([loop.extent for loop in self.outer] + [per_outer])
        self.tail = not divides(self.run_length, lanes)  # (only where the run is every loop)
        self.group, self.lane = Var(name("g")), Var(name("v"))

    def _contiguous_run(self) -> int | None:
        """The first loop of the longest run of innermost loops that every access reads
        row-major (or not at all) whose length ``lanes`` divides, or which is every loop."""
        for split in range(len(self.loops)):
            names = [loop.var.name for loop in self.loops[split:]]
            length = extent_product([loop.extent for loop in self.loops[split:]])
            if (split == 0 or divides(length, self.lanes)) and all(
                    self._run_part(index, names) is not None for index in self._indices()):
                return split
        return None

    def _indices(self) -> list[Expr]:
        found = []
        for s in statements(self.inner):
            if isinstance(s, Store):
                found.append(s.index)
            for e in exprs_of(s):
                found += [load.index for load in loads(e)]
        return found

    def _run_part(self, index: Expr, names: list[str]) -> tuple | None:
        """How ``index`` reads the run's loops (``names``): ``NOT_READ``, or the variables it
        reads row-major before the run, which comes last; None if it reads the run otherwise."""
        if not free_vars(index) & set(names):
            return NOT_READ
        position = row_major_position(index, self.extents)
        if position is None or position[len(position) - len(names):] != names or set(position[:-len(names)]) & set(names):
            return None
        return tuple(position[:-len(names)])

    def body(self, q: Expr, inner: Stmt | None = None) -> Stmt:
        """What the thread of group ``q`` runs: a vectorized loop over the group's lanes (the
        tail group, where there is one, element by element under a guard) of ``inner`` (default:
        the nest's innermost body; another statement in terms of its loop variables)."""
        inner = self.inner if inner is None else inner
        outer = unravel(q, [(loop.var.name, loop.extent) for loop in self.outer]
                        + [(self.group.name, ceil_div(self.run_length, self.lanes))])
        start = outer.pop(self.group.name) * self.lanes
        position = start + self.lane  # the element's position in the run
        values = {**outer, **unravel(position, [(loop.var.name, loop.extent) for loop in self.run])}
        inner = substitute_stmt(self._run_indices(inner, position), values)
        whole = For(self.lane, self.lanes, inner, "vectorized")
        if not self.tail:
            return whole
        last = less(start + (self.lanes - 1), self.run_length)
        return If(last, whole, For(self.lane, self.lanes, If(less(position, self.run_length), inner)))

    def _run_indices(self, s: Stmt, position: Expr) -> Stmt:
        """``s`` with each index that reads the run row-major written ``before * run_length +
        position`` (so that the lane is a term of its own, whatever the loops' extents)."""
        names = [loop.var.name for loop in self.run]

        def index(e: Expr) -> Expr:
            before = self._run_part(e, names)
            if before is NOT_READ:
                return e
            head: Expr = Const(0)
            for var in before:
                head = head * size_expr(self.extents[var]) + Var(var)
            return head * size_expr(self.run_length) + position

        return map_accesses(s, lambda buffer, e: (buffer, index(e)))


def gpu_threads_steps(kernel: Kernel, target=None) -> list:
    """The generic rule: ``gpu_threads`` for a kernel no rule before it bound, ``THREADS`` per
    block, fewer (a multiple of the warp) where the whole kernel has fewer positions; an
    elementwise kernel of 4- or 8-byte values in 16-byte groups (``lanes`` 4 or 2) where its
    buffers allow, so that each thread's loads and stores are one vector access each; a large
    one in float4 (``large_for_groups``) ``GROUPS_RULE`` groups of them a thread, loaded before
    computed. Another choice is a step of one's own: ``Strategy("gpu_threads", lanes=4, groups=4)``."""
    if any(loop.kind != "serial" for loop in loops(kernel.body)):
        return []
    chain, _ = loop_chain(kernel.body)
    positions = extent_product([loop.extent for loop in chain[:independent_loops(kernel, chain)]])
    lanes = VECTOR_BYTES // kernel.output.dtype.itemsize if kernel.output.dtype.itemsize in (4, 8) else 1
    if lanes > 1:
        try:
            gpu_threads(kernel, lanes=lanes)
        except ScheduleError:
            lanes = 1
    groups = positions if lanes == 1 else ceil_div(positions, lanes)
    threads = THREADS
    if not isinstance(groups, Sym) and groups < THREADS:
        threads = max(WARP, -(-groups // WARP) * WARP)
    params = {"threads": threads} if lanes == 1 else {"threads": threads, "lanes": lanes}
    if lanes == 4 and large_for_groups(positions, target):
        try:
            gpu_threads(kernel, lanes=lanes, groups=GROUPS_RULE)
            params["groups"] = GROUPS_RULE
        except ScheduleError:
            pass
    return [Strategy("gpu_threads", **params)]


def large_for_groups(elements, target) -> bool:
    """Whether an elementwise kernel of ``elements`` (a static count) is large enough on a
    ``cuda`` ``target`` for ``GROUPS_RULE`` groups of 4 lanes a thread: every SM still gets its
    full ``RESIDENT_THREADS`` threads once the grid is ``GROUPS_RULE`` times smaller."""
    if target is None or target.kind != "cuda" or not target.sm_count or isinstance(elements, Sym):
        return False
    return elements >= target.sm_count * RESIDENT_THREADS * 4 * GROUPS_RULE
