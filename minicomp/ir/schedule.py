"""Schedule primitives: small records that reshape a kernel's loop nest without changing its meaning.

A *schedule* is a list of steps applied to a lowered ``Kernel`` (TVM's ``s[op].split(...)``,
Halide's ``f.split(...)``). Each step is a frozen dataclass that

* prints as one line (``split(i1, 16) -> i1_o, i1_i``), so a kernel shows how it was shaped;
* replays: ``apply(kernel)`` returns a new kernel and never mutates its argument, so a list of
  steps can be applied again to a fresh lowering (what an autotuner searches over);
* checks its legality first and raises ``ScheduleError`` (naming the step and the kernel)
  instead of producing a wrong program.

Loops are named by their variable (``i0``, ``i1`` ...); ``loop_names(kernel)`` lists them. New
loops get names derived from the old ones (``i1_o``, ``i1_i``; ``i0_i1`` for a fuse), and a
step refuses to create a name already in use. Lowering may give two sibling loops one name
(a matmul's ``i1`` loops): ``Rename`` tells them apart before a step names one of them.

    for i0 in 0..4:                          split(i1, 3) -> i1_o, i1_i
      for i1 in 0..8:                        for i0 in 0..4:
        y[i0*8 + i1] = x[i0*8 + i1]  --->      for i1_o in 0..3:
                                                 for i1_i in 0..3:
                                                   if (i1_o*3 + i1_i) < 8:
                                                     y[i0*8 + i1_o*3 + i1_i] = ...

The loop steps live here: ``Split``, ``Tile``, ``Reorder``, ``Fuse``, ``Unroll``,
``Vectorize``, ``Parallel``, ``Rename`` and ``Bind`` (a loop becomes a GPU block or thread
axis). The memory steps (``CacheRead``, ``CacheWrite``, ``ComputeAt``, ``ComputeInline``) are
in ``minicomp.ir.schedule_memory``. Legality comes from
``minicomp.ir.dependence`` (can two iterations touch the same element?), built on the affine
index analysis of ``minicomp.ir.affine``. After every step the indices are rewritten in one
flat canonical form (``tidy``), so printed kernels stay readable and replays compare equal.
``schedule_program`` applies schedules to chosen kernels of a lowered ``Program``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

from ..errors import MinicompError
from .affine import guard_cond, simplify_index
from .dependence import conflict
from .symbolic import Sym
from .loops import (BOOL, GPU_AXES, GPU_LOOPS, INDEX, Address, Binary, Block, Buffer, Const, Expr, For, If, Kernel,
                    Load, Stmt, Store, Var)
from .rewrite import (allocated, declared_names, map_expr, map_stmt_exprs, rename_vars, replace_buffer,
                      statements, substitute_stmt)

MAX_UNROLL = 64      # iterations a real (not pragma) unroll may replicate
COLLAPSE_BELOW = 64  # the C renderer collapses a parallel loop shorter than this with a serial loop nested in it


class ScheduleError(MinicompError):
    """A schedule step that does not apply to this kernel, or would change its meaning.

    ``why`` holds the reason alone, without the step and kernel that the message names.
    """

    def __init__(self, message: str, why: str = ""):
        super().__init__(message)
        self.why = why or message


@dataclass(frozen=True)
class Primitive:
    """Base class of schedule steps: ``apply`` checks legality, then rewrites a copy."""

    def apply(self, kernel: Kernel) -> Kernel:
        """The kernel with this step applied (a new ``Kernel``; ``kernel`` is unchanged)."""
        body = tidy(self.rewrite(kernel))
        return replace(kernel, body=body, schedule=list(kernel.schedule) + [self])

    def rewrite(self, kernel: Kernel) -> Stmt:
        """The new loop nest; subclasses implement this (raising ``ScheduleError`` if illegal)."""
        raise NotImplementedError

    def fail(self, kernel: Kernel, why: str) -> ScheduleError:
        """A ``ScheduleError`` naming this step and the kernel."""
        return ScheduleError(f"schedule step {self} does not apply to kernel {kernel.name}: {why}", why)

    # -- helpers for subclasses ------------------------------------------------------------------

    def find(self, kernel: Kernel, name: str) -> For:
        """The loop named ``name``; fails if there is none or more than one."""
        found = [loop for loop in loops(kernel.body) if loop.var.name == name]
        if not found:
            raise self.fail(kernel, f"there is no loop {name} (loops: {', '.join(loop_names(kernel)) or 'none'})")
        if len(found) > 1:
            raise self.fail(kernel, f"{len(found)} loops are named {name}; tell them apart first, "
                                    f"e.g. with Rename({name!r}, 'j', occurrence=1)")
        return found[0]

    def check_fresh(self, kernel: Kernel, *names: str) -> None:
        """Fail if a new name is already a variable of the kernel."""
        taken = declared_names(kernel.body) & set(names)
        if taken:
            raise self.fail(kernel, f"the name {sorted(taken)[0]} is already in use; rename that loop first")


def apply_schedule(kernel: Kernel, steps: list[Primitive]) -> Kernel:
    """Apply ``steps`` in order (each checks its legality)."""
    for step in steps:
        kernel = step.apply(kernel)
    return kernel


def schedule_program(program, schedules: dict[str, list[Primitive]]):
    """A copy of a lowered ``Program`` with ``schedules[kernel_name]`` applied to those kernels.

    The program and its kernels are unchanged; kernels not named keep their loop nests.
    """
    names = [k.name for k in program.kernels]
    unknown = sorted(set(schedules) - set(names))
    if unknown:
        raise ScheduleError(f"no kernel named {unknown[0]} (kernels: {', '.join(names)})")
    kernels = [apply_schedule(k, schedules.get(k.name, [])) for k in program.kernels]
    return replace(program, kernels=kernels)


# ----------------------------------------------------------------------------------------------
# Walking and rebuilding loop nests
# ----------------------------------------------------------------------------------------------


def loops(stmt: Stmt) -> Iterator[For]:
    """Every ``For`` in ``stmt``, outermost first (pre-order)."""
    return (s for s in statements(stmt) if isinstance(s, For))


def loop_names(kernel: Kernel) -> list[str]:
    """The names of the kernel's loop variables, outermost first."""
    return [loop.var.name for loop in loops(kernel.body)]


def map_stmt(stmt: Stmt, fn: Callable[[Stmt], Stmt | None]) -> Stmt:
    """Rebuild ``stmt`` top-down: ``fn(s)`` returns a replacement for ``s``, or None to recurse into it."""
    new = fn(stmt)
    if new is not None:
        return new
    if isinstance(stmt, For):
        return replace(stmt, body=map_stmt(stmt.body, fn))
    if isinstance(stmt, Block):
        return Block([map_stmt(s, fn) for s in stmt.stmts])
    if isinstance(stmt, If):
        otherwise = None if stmt.otherwise is None else map_stmt(stmt.otherwise, fn)
        return If(stmt.cond, map_stmt(stmt.then, fn), otherwise)
    return stmt


def replace_stmt(root: Stmt, target: Stmt, new: Stmt) -> Stmt:
    """``root`` rebuilt with the statement ``target`` (found by identity) replaced by ``new``."""
    return map_stmt(root, lambda s: new if s is target else None)


def path_to(root: Stmt, target: Stmt) -> list[Stmt] | None:
    """The statements from ``root`` down to ``target`` (both included), or None if absent."""
    if root is target:
        return [root]
    children = {For: lambda s: [s.body], Block: lambda s: s.stmts,
                If: lambda s: [s.then] + ([s.otherwise] if s.otherwise is not None else [])}
    for child in children.get(type(root), lambda s: [])(root):
        path = path_to(child, target)
        if path is not None:
            return [root] + path
    return None


def tidy(stmt: Stmt) -> Stmt:
    """``stmt`` with every load, store and address index in canonical affine form."""
    def fix(e: Expr) -> Expr:
        def fn(sub):
            if isinstance(sub, (Load, Address)):
                return type(sub)(sub.buffer, simplify_index(fix(sub.index)))
            return None
        return map_expr(e, fn)

    def walk_(s: Stmt) -> Stmt:
        if isinstance(s, Store):
            return Store(s.buffer, simplify_index(fix(s.index)), fix(s.value))
        if isinstance(s, (For, Block, If)):
            return _tidy_children(s, walk_, fix)
        return map_stmt_exprs(s, fix)

    return walk_(stmt)


def _tidy_children(s: Stmt, walk_, fix) -> Stmt:
    if isinstance(s, For):
        return replace(s, body=walk_(s.body))
    if isinstance(s, Block):
        return Block([walk_(sub) for sub in s.stmts])
    otherwise = None if s.otherwise is None else walk_(s.otherwise)
    return If(fix(s.cond), walk_(s.then), otherwise)


def sink_guard(stmt: Stmt, cond: Expr) -> Stmt:
    """``if cond: stmt``, the ``if`` pushed inside a perfect nest (so the loops stay reorderable)."""
    if isinstance(stmt, For):
        return replace(stmt, body=sink_guard(stmt.body, cond))
    if isinstance(stmt, If) and stmt.otherwise is None:  # one condition: a && b
        return If(Binary("&&", stmt.cond, cond, BOOL), stmt.then)
    return If(cond, stmt)


def with_suffix(stmt: Stmt, suffix: str) -> tuple[Stmt, dict[str, str]]:
    """A copy of ``stmt`` whose declared loops, scalars and local buffers all end in ``suffix``."""
    names = {name: name + suffix for name in declared_names(stmt)}
    stmt = rename_vars(stmt, names)
    for buffer in allocated(stmt):
        renamed = Buffer(buffer.name + suffix, buffer.dtype, buffer.shape)
        stmt = replace_buffer(stmt, buffer, renamed, lambda index: index)
    return stmt, names


def parallel_problem(kernel: Kernel, body: Stmt, loop: For) -> str | None:
    """Why ``loop`` (inside ``body``) may not run its iterations in parallel threads, or None."""
    path = path_to(body, loop) or []
    nearby = [s for s in path[:-1] + list(statements(loop.body)) if isinstance(s, For)]  # around or inside
    if any(s.kind == "parallel" for s in nearby):
        return "it would nest one parallel loop in another"
    if any(s.kind in GPU_LOOPS for s in nearby):
        return "a loop around or inside it is bound to a GPU axis (threads of a GPU already run it)"
    scope = [loop]
    if collapsed(loop):
        scope.append(loop.body)  # the C renderer runs both loops' iterations in parallel (collapse)
    return conflict(kernel, scope, scope[-1].body, every_var=True)


def collapsed(loop: For) -> bool:
    """Whether the C renderer parallelises ``loop`` together with the serial loop directly inside it."""
    return (not isinstance(loop.extent, Sym) and loop.extent < COLLAPSE_BELOW  # symbolic: never collapsed
            and isinstance(loop.body, For) and loop.body.kind == "serial")


def binding_problem(body: Stmt, around: tuple[Stmt, ...] = ()) -> str | None:
    """Why the GPU bindings in ``body`` (inside the statements ``around``) could not run on a GPU, or None.

    Block axes lie outside thread axes, an axis is bound once on a path, no loop around or
    inside a bound loop is parallel on CPU threads, and the thread loops of a block are
    directly nested (together they number the block's threads).
    """
    loops_around = [s for s in around if isinstance(s, For)]
    bound = [loop for loop in loops_around if loop.kind in GPU_LOOPS]
    if isinstance(body, For) and body.kind == "parallel" and bound:
        return f"the parallel loop {body.var.name} lies inside {bound[-1].var.name}, bound to a GPU axis"
    if isinstance(body, For) and body.kind in GPU_LOOPS:
        axis, threads = gpu_axis(body), [loop for loop in bound if loop.kind == "gpu_thread"]
        if any(loop.kind == "parallel" for loop in loops_around):
            return f"{body.var.name} is bound to {axis} inside a parallel loop"
        if any(gpu_axis(loop) == axis for loop in bound):
            return f"{axis} is bound to two nested loops"
        if body.kind == "gpu_block" and threads:
            return f"the block loop {body.var.name} lies inside the thread loop {threads[-1].var.name}"
        if body.kind == "gpu_thread" and threads and around[-1] is not threads[-1]:
            return (f"the thread loop {body.var.name} is not directly inside the thread loop "
                    f"{threads[-1].var.name}: the thread loops of a block must be directly nested")
    children = {For: lambda s: [s.body], Block: lambda s: s.stmts,
                If: lambda s: [s.then] + ([s.otherwise] if s.otherwise is not None else [])}
    for child in children.get(type(body), lambda s: [])(body):
        why = binding_problem(child, around + (body,))
        if why:
            return why
    return None


def gpu_axis(loop: For) -> str:
    """The CUDA index a bound loop runs over: ``blockIdx.x``, ``threadIdx.y`` ..."""
    return f"{GPU_LOOPS[loop.kind]}.{loop.axis}"


def check_unbound(step: Primitive, kernel: Kernel, loop: For) -> None:
    """Fail if ``loop`` is bound to a GPU axis: loops are split, fused and marked before binding."""
    if loop.kind in GPU_LOOPS:
        raise step.fail(kernel, f"{loop.var.name} is bound to {gpu_axis(loop)}; shape loops before binding them")


def vectorize_problem(kernel: Kernel, body: Stmt, loop: For) -> str | None:
    """Why ``loop`` (inside ``body``) may not run its iterations in SIMD lanes, or None."""
    if any(isinstance(s, For) for s in statements(loop.body)):
        return f"{loop.var.name} is not an innermost loop"
    return conflict(kernel, [loop], loop.body, every_var=True)


def check_marks(step: Primitive, kernel: Kernel, body: Stmt, touched: list[For]) -> None:
    """Re-check the parallel and vectorized marks of the loops a step rebuilt."""
    for loop in touched:
        why = None
        if loop.kind == "parallel":
            why = parallel_problem(kernel, body, loop)
        elif loop.kind == "vectorized":
            why = vectorize_problem(kernel, body, loop)
        elif loop.kind in GPU_LOOPS:
            why = conflict(kernel, [loop], loop.body, every_var=True) or binding_problem(body)
        if why:
            raise step.fail(kernel, f"the {loop.kind} loop {loop.var.name} would become illegal: {why}")


# ----------------------------------------------------------------------------------------------
# Loop steps
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split(Primitive):
    """``for i in 0..n`` -> ``for i_o in 0..ceil(n/f): for i_i in 0..f`` with ``i = i_o*f + i_i``.

    When ``f`` does not divide ``n``, ``tail="guard"`` runs the last tile under
    ``if i < n`` (sunk into the innermost loop of a perfect nest, so tiles stay reorderable);
    ``tail="peel"`` runs ``n // f`` full tiles, then a loop ``i_t`` over the ``n % f`` rest
    (whose inner loops get the suffix ``_t``). ``i_o`` keeps a parallel mark, ``i_i`` a
    vectorized or unrolled one. Always legal: the iterations run in the same order.
    """

    loop: str
    factor: int
    tail: str = "guard"

    @property
    def outer(self) -> str:
        """The name of the loop over tiles."""
        return f"{self.loop}_o"

    @property
    def inner(self) -> str:
        """The name of the loop inside a tile."""
        return f"{self.loop}_i"

    @property
    def rest(self) -> str:
        """The name of the peeled remainder loop."""
        return f"{self.loop}_t"

    def __str__(self) -> str:
        if self.tail == "peel":
            return f"split({self.loop}, {self.factor}, tail=peel) -> {self.outer}, {self.inner}, {self.rest}"
        return f"split({self.loop}, {self.factor}) -> {self.outer}, {self.inner}"

    def rewrite(self, kernel: Kernel) -> Stmt:
        if not isinstance(self.factor, int) or self.factor < 1:
            raise self.fail(kernel, f"the factor must be a positive integer, not {self.factor!r}")
        if self.tail not in ("guard", "peel"):
            raise self.fail(kernel, f"tail must be 'guard' or 'peel', not {self.tail!r}")
        loop = self.find(kernel, self.loop)
        check_unbound(self, kernel, loop)
        n, f = loop.extent, self.factor
        self.check_fresh(kernel, self.outer, self.inner)
        outer_kind = "parallel" if loop.kind == "parallel" else "serial"
        inner_kind = loop.kind if loop.kind in ("vectorized", "unrolled") else "serial"
        o, i = Var(self.outer), Var(self.inner)
        body = substitute_stmt(loop.body, {self.loop: o * f + i})
        if self.tail == "peel":
            new = self._peeled(kernel, loop, body, outer_kind, inner_kind)
        else:
            if n % f:
                body = sink_guard(body, guard_cond(o * f + i, n))
            new = For(o, -(-n // f), For(i, f, body, inner_kind), outer_kind)
        return replace_stmt(kernel.body, loop, new)

    def _peeled(self, kernel: Kernel, loop: For, body: Stmt, outer_kind: str, inner_kind: str) -> Stmt:
        n, f = loop.extent, self.factor
        main = For(Var(self.outer), n // f, For(Var(self.inner), f, body, inner_kind), outer_kind)
        if n % f == 0:
            return main
        self.check_fresh(kernel, self.rest)
        rest_body, renamed = with_suffix(loop.body, "_t")
        self.check_fresh(kernel, *renamed.values())
        rest_body = substitute_stmt(rest_body, {self.loop: Const(n // f * f) + Var(self.rest)})
        return Block([main, For(Var(self.rest), n % f, rest_body, loop.kind)])


@dataclass(frozen=True, init=False)
class Reorder(Primitive):
    """Permute perfectly nested loops: ``Reorder("i1", "i0")`` puts ``i1`` outside ``i0``.

    The named loops must lie on one chain of directly nested loops (unnamed loops between them
    keep their places); they take the chain's positions in the order given. Legal when no
    dependence is reversed (``minicomp.ir.dependence``): every written buffer is accessed at one
    affine index that tells apart the iterations of the loops it depends on, and the loops it
    does not depend on (reduction loops) keep their relative order, or the buffer is only
    accumulated into (a float sum then rounds differently, as any reordering of a sum does).
    A loop that carries a local scalar (an accumulator declared outside) is never moved.
    """

    order: tuple[str, ...]

    def __init__(self, *order: str):
        object.__setattr__(self, "order", tuple(order))

    def __str__(self) -> str:
        return f"reorder({', '.join(self.order)})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        if len(self.order) < 2 or len(set(self.order)) != len(self.order):
            raise self.fail(kernel, "name at least two different loops")
        named = [self.find(kernel, name) for name in self.order]
        chain = self._chain(kernel, named)
        positions = [k for k, loop in enumerate(chain) if loop in named]
        new_chain = list(chain)
        for position, loop in zip(positions, named):
            new_chain[position] = loop
        kept = lambda names: _relative(chain, names) == _relative(new_chain, names)  # noqa: E731
        why = conflict(kernel, chain, chain[-1].body, every_var=False, keeps_order=kept)
        if why:
            raise self.fail(kernel, why)
        if any(loop.kind == "vectorized" for loop in new_chain[:-1]):
            raise self.fail(kernel, "a vectorized loop would no longer be innermost")
        body = chain[-1].body
        for loop in reversed(new_chain):
            body = replace(loop, body=body)
        result = replace_stmt(kernel.body, chain[0], body)
        check_marks(self, kernel, result, [s for s in loops(body) if s.var.name in {c.var.name for c in chain}])
        return result

    def _chain(self, kernel: Kernel, named: list[For]) -> list[For]:
        top = min(named, key=lambda loop: len(path_to(kernel.body, loop)))
        chain, current = [top], top
        while not all(loop in chain for loop in named):
            if not isinstance(current.body, For):
                missing = [loop.var.name for loop in named if loop not in chain]
                raise self.fail(kernel, f"{', '.join(missing)} is not perfectly nested inside "
                                        f"{current.var.name} (other statements or a condition lie between)")
            current = current.body
            chain.append(current)
        return chain


def _relative(chain: list[For], names: list[str]) -> list[str]:
    return [loop.var.name for loop in chain if loop.var.name in names]


@dataclass(frozen=True)
class Tile(Primitive):
    """Split two directly nested loops and interchange the middle: ``for io, jo, ii, ji``.

    Sugar for ``split(outer, fo)``, ``split(inner, fi)``, ``reorder(outer_o, inner_o, outer_i,
    inner_i)``; legal when that reorder is.
    """

    outer: str
    inner: str
    outer_factor: int
    inner_factor: int

    def steps(self) -> list[Primitive]:
        """The split, split and reorder this tile stands for."""
        return [Split(self.outer, self.outer_factor), Split(self.inner, self.inner_factor),
                Reorder(f"{self.outer}_o", f"{self.inner}_o", f"{self.outer}_i", f"{self.inner}_i")]

    def __str__(self) -> str:
        return (f"tile({self.outer}, {self.inner}, {self.outer_factor}, {self.inner_factor}) -> "
                f"{self.outer}_o, {self.inner}_o, {self.outer}_i, {self.inner}_i")

    def rewrite(self, kernel: Kernel) -> Stmt:
        outer = self.find(kernel, self.outer)
        if not (isinstance(outer.body, For) and outer.body.var.name == self.inner):
            raise self.fail(kernel, f"{self.inner} is not directly inside {self.outer}")
        try:
            return apply_schedule(kernel, self.steps()).body
        except ScheduleError as error:
            raise self.fail(kernel, error.why) from None


@dataclass(frozen=True)
class Fuse(Primitive):
    """Two directly nested loops become one: ``for o_i in 0..no*ni`` with ``o = o_i / ni``, ``i = o_i % ni``.

    Always legal (same iterations, same order); the fused loop keeps the outer loop's parallel
    mark, or the inner one's vectorized mark, when those stay legal for the fused loop.
    """

    outer: str
    inner: str

    @property
    def fused(self) -> str:
        """The name of the fused loop."""
        return f"{self.outer}_{self.inner}"

    def __str__(self) -> str:
        return f"fuse({self.outer}, {self.inner}) -> {self.fused}"

    def rewrite(self, kernel: Kernel) -> Stmt:
        outer = self.find(kernel, self.outer)
        inner = outer.body
        if not (isinstance(inner, For) and inner.var.name == self.inner):
            raise self.fail(kernel, f"{self.inner} is not directly inside {self.outer}")
        check_unbound(self, kernel, outer)
        check_unbound(self, kernel, inner)
        self.check_fresh(kernel, self.fused)
        fused, n = Var(self.fused), max(inner.extent, 1)
        body = substitute_stmt(inner.body, {self.outer: _div(fused, n), self.inner: _mod(fused, n)})
        kind = "parallel" if outer.kind == "parallel" else (
            inner.kind if inner.kind in ("vectorized", "unrolled") else "serial")
        loop = For(fused, outer.extent * inner.extent, body, kind)
        result = replace_stmt(kernel.body, outer, loop)
        check_marks(self, kernel, result, [loop])
        return result


def _div(a: Expr, n: int) -> Expr:
    return a if n == 1 else Binary("/", a, Const(n), INDEX)


def _mod(a: Expr, n: int) -> Expr:
    return Const(0) if n == 1 else Binary("%", a, Const(n), INDEX)


@dataclass(frozen=True)
class Unroll(Primitive):
    """Replicate a loop's body once per iteration, the variable replaced by 0, 1, ...

    At most ``MAX_UNROLL`` iterations. Copy ``k``'s own loops, scalars and local buffers get
    the suffix ``_u<k>`` (names stay unique; C sees no duplicate declarations). Always legal.
    ``pragma=True`` only marks the loop ``unrolled`` (``#pragma GCC unroll``): the C compiler
    replicates it.
    """

    loop: str
    pragma: bool = False

    def __str__(self) -> str:
        return f"unroll({self.loop}{', pragma' if self.pragma else ''})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        loop = self.find(kernel, self.loop)
        check_unbound(self, kernel, loop)
        if self.pragma:
            return replace_stmt(kernel.body, loop, replace(loop, kind="unrolled"))
        if loop.extent > MAX_UNROLL:
            raise self.fail(kernel, f"{loop.extent} iterations is more than the {MAX_UNROLL} an unroll "
                                    f"replicates; split it first or use Unroll({self.loop!r}, pragma=True)")
        copies = []
        for k in range(loop.extent):
            body, renamed = with_suffix(loop.body, f"_u{k}") if loop.extent > 1 else (loop.body, {})
            self.check_fresh(kernel, *renamed.values())
            copies.append(substitute_stmt(body, {self.loop: Const(k)}))
        return replace_stmt(kernel.body, loop, copies[0] if len(copies) == 1 else Block(copies))


@dataclass(frozen=True)
class Vectorize(Primitive):
    """Mark an innermost loop ``vectorized``: its iterations run in SIMD lanes (``#pragma omp simd``).

    Legal when no iteration depends on another: no local scalar declared outside is assigned
    (a reduction; use a ``CacheWrite`` or leave it to the C compiler), and every written buffer
    is accessed at one affine index that differs between iterations.
    """

    loop: str

    def __str__(self) -> str:
        return f"vectorize({self.loop})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        loop = self.find(kernel, self.loop)
        check_unbound(self, kernel, loop)
        why = vectorize_problem(kernel, kernel.body, loop)
        if why:
            raise self.fail(kernel, why)
        return replace_stmt(kernel.body, loop, replace(loop, kind="vectorized"))


@dataclass(frozen=True)
class Parallel(Primitive):
    """Mark a loop ``parallel``: OpenMP threads share its iterations.

    Legal when different iterations never write the same element or a shared scalar (the test
    of ``Vectorize``), and no other loop around or inside it is parallel. The C renderer runs a
    parallel loop shorter than ``COLLAPSE_BELOW`` together with a loop directly inside it
    (``collapse(2)``): that loop must then be free of conflicts too.
    """

    loop: str

    def __str__(self) -> str:
        return f"parallel({self.loop})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        loop = self.find(kernel, self.loop)
        check_unbound(self, kernel, loop)
        why = parallel_problem(kernel, kernel.body, loop)
        if why:
            raise self.fail(kernel, why)
        return replace_stmt(kernel.body, loop, replace(loop, kind="parallel"))


@dataclass(frozen=True)
class Rename(Primitive):
    """Give the ``occurrence``-th loop named ``loop`` (pre-order, from 0) the name ``to``.

    Lowering names sibling loops alike (a matmul's initialising and accumulating ``i1``); a
    step that names a loop needs it unique. Always legal.
    """

    loop: str
    to: str
    occurrence: int = 0

    def __str__(self) -> str:
        which = self.loop if self.occurrence == 0 else f"{self.loop}#{self.occurrence}"
        return f"rename({which}, {self.to})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        found = [loop for loop in loops(kernel.body) if loop.var.name == self.loop]
        if not 0 <= self.occurrence < len(found):
            raise self.fail(kernel, f"there are {len(found)} loops named {self.loop}")
        if not self.to.isidentifier():
            raise self.fail(kernel, f"{self.to!r} is not a valid name")
        self.check_fresh(kernel, self.to)
        loop = found[self.occurrence]
        return replace_stmt(kernel.body, loop, rename_vars(loop, {self.loop: self.to}))


@dataclass(frozen=True)
class Bind(Primitive):
    """Bind a serial loop to a GPU axis: ``Bind("i0", "blockIdx.x")``, ``Bind("i1", "threadIdx.x")``.

    Each iteration becomes one block of the grid (``blockIdx``) or one thread of a block
    (``threadIdx``); on a CPU the loop keeps its meaning, a serial loop (Halide's
    ``gpu_blocks``/``gpu_threads``: the un-fused thread loops mean the same thing on a CPU).
    Legal, as ``Parallel``, when different iterations never write the same element or a shared
    scalar, and the bindings stay well formed (``binding_problem``: blocks outside threads, each
    axis once on a path, no CPU-parallel loop around or inside, a block's thread loops directly
    nested). Split and fuse loops before binding them::

        for i0 in 0..4:                      bind(i0, blockIdx.x), bind(i1, threadIdx.x)
          for i1 in 0..64:          --->     gpu_block.x for i0 in 0..4:
            y[i0*64 + i1] = ...                gpu_thread.x for i1 in 0..64:
                                                 y[i0*64 + i1] = ...
    """

    loop: str
    axis: str

    def __str__(self) -> str:
        return f"bind({self.loop}, {self.axis})"

    @property
    def kind_and_axis(self) -> tuple[str, str] | None:
        """``("gpu_block", "x")`` for ``blockIdx.x`` ...; None for a name that is no GPU axis."""
        index, _, axis = self.axis.partition(".")
        kinds = {name: kind for kind, name in GPU_LOOPS.items()}
        return (kinds[index], axis) if index in kinds and axis in GPU_AXES else None

    def rewrite(self, kernel: Kernel) -> Stmt:
        if self.kind_and_axis is None:
            raise self.fail(kernel, f"{self.axis!r} is not a GPU axis (blockIdx.x/y/z, threadIdx.x/y/z)")
        loop = self.find(kernel, self.loop)
        if loop.kind != "serial":
            what = f"bound to {gpu_axis(loop)}" if loop.kind in GPU_LOOPS else f"a {loop.kind} loop"
            raise self.fail(kernel, f"{self.loop} is {what}; only a serial loop can be bound")
        why = conflict(kernel, [loop], loop.body, every_var=True)
        if why:
            raise self.fail(kernel, why)
        kind, axis = self.kind_and_axis
        result = replace_stmt(kernel.body, loop, replace(loop, kind=kind, axis=axis))
        why = binding_problem(result)
        if why:
            raise self.fail(kernel, why)
        return result
