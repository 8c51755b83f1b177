"""Loop stage ``fuse_threads``: the thread-serial form of GPU kernels becomes the SIMT form.

The GPU schedules (``minicomp.schedules.gpu``) write each kernel in the **thread-serial form**,
which means the same on a CPU (MCUDA: every loop a plain loop, the C renderer runs it)::

    gpu_block.x for b in 0..G:             # 1-3 directly nested gpu_block loops
      shared part: f32[8]                  # one per block
      local v: f32[256]                    # per-thread storage of ALL threads: threads x k elements,
                                           #   every access at index t*k + c (t the flat thread index)
      gpu_thread.x for t in 0..256:        # a phase: 1-3 directly nested gpu_thread loops
        v[t] = ...
      gpu_thread.x for t in 0..256:        # the next phase: every thread finished the one before
        f32 r = warp_sum(v[t])             #   (a warp reduce's value: Load(buf, e + t), or a
        if t % 32 == 0: part[t / 32] = r   #    block-level local's t*k + c; buf not written in
                                           #    this phase)
      for s in 0..3:                       # uniform loops, ifs and scalars (block variables,
        gpu_thread.x for t in 0..256: ...  #   sizes, memory no phase writes) may hold phases

A GPU runs a kernel the other way round: every thread runs the whole body, meeting the others
at barriers. ``fuse_threads`` turns the one into the other, the **SIMT form** that the CUDA
renderer writes and the loop interpreter runs in lockstep::

    gpu_block.x for b in 0..G:
      shared part: f32[8]
      gpu_thread.x for t in 0..256:
        local v: f32[1]                    # each thread's own k elements: v[t*k + c] -> v[c]
        v[0] = ...
        barrier
        f32 r = warp_sum(v[0])
        if t % 32 == 0: part[t / 32] = r
        barrier
        for s in 0..3: { ...; barrier }

Requires: every kernel in thread-serial form (the phases of a block all with the same thread
loops: extents and axes; their variables may differ and are renamed to the first's; thread
extents known ints; nothing at block level but ``Allocate``, phases and uniform ``For``/``If``/
``Declare``). Guarantees: the SIMT form (block loops -> shared allocations -> thread loops ->
statements without GPU loops), with a ``Barrier`` at each boundary between two phases (none
after the last; one at the end of a uniform loop's body that holds phases), except where
nothing another thread can see is written on one side of it and touched on the other (a
barrier that protects nothing is left out: per-thread ``local`` arrays and warp reduces need
none). Scalars that two phases declare alike get fresh names. ``ThreadFormError`` names the
kernel and what breaks the form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ...errors import MinicompError
from ...ir.affine import affine, to_expr
from ...ir.loops import (Address, Allocate, Barrier, Block, Buffer, Const, Declare, Expr, For, If, Intrinsic,
                         Kernel, Load, Stmt, Store, WarpReduce, walk)
from ...ir.rewrite import (all_exprs, declared_names, exprs_of, map_accesses, rename_vars, statements,
                           stored_buffers)
from ...ir.loop_text import print_expr
from ...ir.symbolic import Sym


class ThreadFormError(MinicompError):
    """A kernel that is not in the thread-serial form ``fuse_threads`` requires."""


def fuse_threads(program, target=None):
    """``program`` with every kernel in SIMT form (see the module docstring)."""
    return replace(program, kernels=[fuse_kernel_threads(k) for k in program.kernels])


def fuse_kernel_threads(kernel: Kernel) -> Kernel:
    """One kernel from the thread-serial form to the SIMT form (see the module docstring)."""
    return replace(kernel, body=Fuser(kernel).fused())


def thread_chain(s: Stmt) -> list[For] | None:
    """The directly nested ``gpu_thread`` loops that start at ``s`` (a phase), or None."""
    chain = []
    while isinstance(s, For) and s.kind == "gpu_thread":
        chain.append(s)
        s = s.body
    return chain or None


def flat_thread_index(chain: list[For]) -> Expr:
    """CUDA's linear thread number over a block's thread loops: x fastest, then y, then z."""
    by_axis = {loop.axis: loop for loop in chain}
    flat: Expr = Const(0)
    for axis in ("z", "y", "x"):
        if axis in by_axis:
            flat = flat * by_axis[axis].extent + by_axis[axis].var
    return flat


@dataclass
class Accesses:
    """The memory other threads can see that a piece of code writes and touches."""

    written: set = field(default_factory=set)
    touched: set = field(default_factory=set)
    everything: bool = False  # unknown: conflicts with all

    def conflicts(self, other: "Accesses") -> bool:
        if self.everything or other.everything:
            return True
        return bool(self.written & other.touched or other.written & self.touched)

    def merge(self, other: "Accesses") -> None:
        self.written |= other.written
        self.touched |= other.touched
        self.everything |= other.everything


class Fuser:
    """The rewrite of one kernel; ``fused()`` gives its new body."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.blocks, body = self._block_chain(kernel.body)
        self.shared: list[Allocate] = []
        self.locals: dict[Buffer, Buffer] = {}  # block-level per-thread array -> each thread's own
        self.phases: list[list[For]] = []
        self._collect(body)
        if not self.phases:
            raise self.error("no gpu_thread loop (phase) at block level")
        first = self.phases[0]
        self.signature = [(loop.axis, loop.extent) for loop in first]
        for chain in self.phases[1:]:
            if [(loop.axis, loop.extent) for loop in chain] != self.signature:
                raise self.error(f"its phases run different thread loops ({self._shown(first)} and "
                                 f"{self._shown(chain)}): every phase of a block has the same threads")
        if any(not isinstance(extent, int) for _, extent in self.signature):
            raise self.error("a thread loop has a symbolic extent: a block's threads are a number known when compiling")
        self.thread_vars = [loop.var for loop in first]
        self.threads = math.prod(extent for _, extent in self.signature)
        self.flat = flat_thread_index(first)
        self.body = body
        self.written = stored_buffers(kernel.body) | {a.buffer for a in self.shared}
        self.declared = declared_names(kernel.body)  # no fresh name takes one of these
        self.seen: set[str] = {v.name for v in self.thread_vars} | {loop.var.name for loop in self.blocks}
        self._check_locals()
        for chain in self.phases:
            self._check_phase(chain)

    def error(self, why: str) -> ThreadFormError:
        return ThreadFormError(f"fuse_threads: kernel {self.kernel.name} is not in thread-serial form: {why}")

    @staticmethod
    def _shown(chain: list[For]) -> str:
        return ", ".join(f"{loop.axis} 0..{loop.extent}" for loop in chain)

    # -- reading the thread-serial form ---------------------------------------------------------

    def _block_chain(self, s: Stmt) -> tuple[list[For], Stmt]:
        blocks = []
        while isinstance(s, For) and s.kind == "gpu_block":
            blocks.append(s)
            s = s.body
        if not blocks:
            raise self.error("its body is not a gpu_block loop (was it scheduled for a GPU?)")
        if len(blocks) > 3:
            raise self.error(f"{len(blocks)} nested gpu_block loops (at most 3: x, y, z)")
        return blocks, s

    def _collect(self, s: Stmt) -> None:
        """Find the allocations and phases at block level, checking everything else there."""
        if isinstance(s, Block):
            for sub in s.stmts:
                self._collect(sub)
        elif isinstance(s, Allocate):
            if s.scope == "shared":
                self.shared.append(s)
            else:
                self.locals[s.buffer] = s.buffer
        elif thread_chain(s):
            chain = thread_chain(s)
            if len(chain) > 3:
                raise self.error(f"{len(chain)} nested gpu_thread loops (at most 3: x, y, z)")
            self.phases.append(chain)
        elif isinstance(s, For) and s.kind == "serial":
            self._collect(s.body)
        elif isinstance(s, If):
            self._collect(s.then)
            if s.otherwise is not None:
                self._collect(s.otherwise)
        elif not isinstance(s, Declare):
            what = f"a {s.kind} loop {s.var.name}" if isinstance(s, For) else f"a {type(s).__name__}"
            raise self.error(f"{what} at block level, outside every phase (only allocations, phases and "
                             "uniform loops, ifs and scalars may be there)")

    def _check_phase(self, chain: list[For]) -> None:
        body = chain[-1].body
        for s in statements(body):
            if isinstance(s, Barrier):
                raise self.error("a barrier inside a phase (the boundaries between phases are the barriers)")
            if isinstance(s, For) and s.kind in ("gpu_block", "gpu_thread"):
                raise self.error(f"the {s.kind} loop {s.var.name} inside a phase")
            if isinstance(s, WarpReduce):
                self._check_warp_reduce(s, chain, body)

    def _check_warp_reduce(self, s: WarpReduce, chain: list[For], body: Stmt) -> None:
        value, flat = s.value, flat_thread_index(chain)
        thread_names = {loop.var.name for loop in chain}
        ok = isinstance(value, Load) and value.buffer not in stored_buffers(body)
        if ok:
            # a block-level local holds k values of each thread at t*k + c: lane t reduces its own
            k = self.locals[value.buffer].shape[0] if value.buffer in self.locals else 1
            form, t = affine(value.index), affine(flat * k if k != 1 else flat)
            ok = form is not None and not ({n for n in (form - t).names()} & thread_names)
        if not ok:
            raise self.error(f"the warp reduce of {s.var.name} reduces {_text(value)}: in a phase a warp "
                             "reduce's value is buf[e + t] (t the flat thread index; t*k + c for a "
                             "block-level local array of k values a thread), buf not written in that phase")

    def _check_locals(self) -> None:
        for buffer in list(self.locals):
            size = buffer.size
            if isinstance(size, Sym) or size % self.threads:
                raise self.error(f"the block-level local array {buffer.name} has {size} elements, not a "
                                 f"multiple of the block's {self.threads} threads (threads x k)")
            self.locals[buffer] = Buffer(buffer.name, buffer.dtype, (size // self.threads,))

    # -- writing the SIMT form --------------------------------------------------------------------

    def fused(self) -> Stmt:
        own = [Allocate(mine, "local") for mine in self.locals.values()]
        statements_, _ = self._fuse_list(_stmts(self.body), top=True)
        body: Stmt = Block(own + statements_)
        for var, (axis, extent) in reversed(list(zip(self.thread_vars, self.signature))):
            body = For(var, extent, body, "gpu_thread", axis)
        block_body: Stmt = Block(list(self.shared) + [body]) if self.shared else body
        for loop in reversed(self.blocks):
            block_body = replace(loop, body=block_body)
        return block_body

    def _fuse_list(self, stmts: list[Stmt], top: bool = False) -> tuple[list[Stmt], bool]:
        """The SIMT statements of a block-level list, and whether it held a phase. A barrier
        goes before each phase (or construct holding phases) that follows another, unless
        nothing written on one side is touched on the other since the last barrier."""
        out: list[Stmt] = []
        since: Accesses | None = None  # what ran since the last barrier, once a phase ran
        for s in stmts:
            if isinstance(s, Allocate):
                continue
            chain = thread_chain(s)
            if chain is not None:
                body = self._phase_body(chain)
                accesses = self._accesses(body)
            elif _holds_phase(s):
                body, accesses = self._uniform(s), Accesses(everything=True)
            else:
                self._check_uniform(s)
                if isinstance(s, Declare):
                    self.seen.add(s.var.name)
                out.append(s)
                continue
            if since is not None and since.conflicts(accesses):
                out.append(Barrier())
                since = accesses
            elif since is None:
                since = accesses
            else:
                since.merge(accesses)
            out += _stmts(body)
        return out, since is not None

    def _uniform(self, s: Stmt) -> Stmt:
        """A uniform loop or if holding phases, its bodies fused (a loop's body ends with a
        barrier: the next iteration's first phase follows its last)."""
        self._check_uniform(s)
        if isinstance(s, For):
            body, held = self._fuse_list(_stmts(s.body))
            return replace(s, body=Block(body + [Barrier()] * held))
        if isinstance(s, If):
            then, _ = self._fuse_list(_stmts(s.then))
            otherwise = None if s.otherwise is None else Block(self._fuse_list(_stmts(s.otherwise))[0])
            return If(s.cond, Block(then), otherwise)
        return Block(self._fuse_list(s.stmts)[0])

    def _check_uniform(self, s: Stmt) -> None:
        """A block-level statement depends on nothing a thread could see differently."""
        if isinstance(s, For) and s.kind != "serial":
            raise self.error(f"the {s.kind} loop {s.var.name} at block level")
        for e in exprs_of(s):
            for sub in walk(e):
                if isinstance(sub, (Load, Address)) and (sub.buffer in self.written or sub.buffer in self.locals):
                    raise self.error(f"a block-level {type(s).__name__} reads {sub.buffer.name}, which the "
                                     "kernel writes: threads could see different values (not uniform)")

    def _phase_body(self, chain: list[For]) -> Stmt:
        """A phase's statements for the fused thread body: its thread variables renamed to the
        first phase's, block-level locals indexed per thread, clashing scalars renamed."""
        names = {loop.var.name: var.name for loop, var in zip(chain, self.thread_vars) if loop.var.name != var.name}
        body = rename_vars(chain[-1].body, names) if names else chain[-1].body
        body = self._own_locals(body)
        top = [s.var.name for s in _stmts(body) if isinstance(s, (Declare, WarpReduce))]
        clashes = {name: self._fresh(name) for name in top if name in self.seen}
        if clashes:
            body = rename_vars(body, clashes)
        self.seen |= {clashes.get(name, name) for name in top}
        return body

    def _fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.declared or name in self.seen:
            name, n = f"{base}_{n}", n + 1
        self.declared.add(name)
        return name

    def _own_locals(self, body: Stmt) -> Stmt:
        """Accesses ``buf[t*k + c]`` of block-level locals become ``mine[c]``."""
        if not self.locals:
            return body
        thread_names = {v.name for v in self.thread_vars}

        def own(buffer: Buffer, index: Expr) -> Expr:
            k = self.locals[buffer].shape[0]
            form, offset = affine(index), affine(self.flat * k) if k != 1 else affine(self.flat)
            rest = None if form is None else form - offset
            if rest is None or rest.names() & thread_names:
                raise self.error(f"{buffer.name} (per-thread storage of every thread) is accessed at "
                                 f"{_text(index)}, not at t*{k} + c")
            return to_expr(rest)

        def mine(buffer: Buffer, index: Expr) -> tuple[Buffer, Expr] | None:
            return (self.locals[buffer], own(buffer, index)) if buffer in self.locals else None

        for e in all_exprs(body):
            for sub in walk(e):
                if isinstance(sub, Address) and sub.buffer in self.locals:
                    raise self.error(f"an intrinsic takes the address of {sub.buffer.name}")
        return map_accesses(body, mine)

    def _accesses(self, body: Stmt) -> Accesses:
        """What a phase body writes and touches of memory other threads see (not its own locals)."""
        own = set(self.locals.values()) | {s.buffer for s in statements(body) if isinstance(s, Allocate)}
        found = Accesses()

        def key(buffer: Buffer):
            return "aliases" if buffer in self.kernel.aliases else buffer

        for s in statements(body):
            if isinstance(s, Intrinsic):
                found.everything = True
            if isinstance(s, Store) and s.buffer not in own:
                found.written.add(key(s.buffer))
                found.touched.add(key(s.buffer))
            for e in exprs_of(s):
                for sub in walk(e):
                    if isinstance(sub, (Load, Address)) and sub.buffer not in own:
                        found.touched.add(key(sub.buffer))
                        if isinstance(sub, Address):
                            found.written.add(key(sub.buffer))
        return found


def _stmts(s: Stmt) -> list[Stmt]:
    return list(s.stmts) if isinstance(s, Block) else [s]


def _holds_phase(s: Stmt) -> bool:
    return any(isinstance(sub, For) and sub.kind == "gpu_thread" for sub in statements(s))


def _text(e: Expr) -> str:
    return print_expr(e)
