"""Memory schedule steps: local copies (cache_read, cache_write) and moving producers (compute_at, inline).

``CacheRead(b, L)`` copies, at the start of each iteration of loop ``L``, the part of ``b`` the
iteration reads into a small local buffer, and makes the body read the copy. With a
``layout`` the copy is stored in another order: how matmul panels get *packed*::

    for rk_o in 0..2:                          for rk_o in 0..2:
      for i0 in 0..M:                            local b_local: f32[4,16]
        for rk_i in 0..16:           --->        for rk_i_b in 0..16: for i1_b in 0..4:
          for i1 in 0..4:                          b_local[rk_i_b*4 + i1_b] = b[(rk_o*16 + rk_i_b)*4 + i1_b]
            ... b[(rk_o*16 + rk_i)*4 + i1]       for i0 ...: ... b_local[rk_i*4 + i1]

``CacheWrite(c, L)`` is the mirror image: the body accumulates into a local tile (a register
tile of C in matmul), copied out after the iteration (and in before, if the body reads it).

``ComputeInline(t)`` and ``ComputeAt(t, L)`` act on a kernel holding a *producer* nest that
fills a local buffer ``t`` and consumers that read it (``merge_stages`` builds such a kernel
from two lowered kernels). Inlining replaces every read of ``t`` by the producer's expression
(Halide's ``compute_inline``); compute_at moves the producer into loop ``L``, computing only
the part of ``t`` one iteration of ``L`` reads, into a local buffer of that size (Halide's
``compute_at``)::

    local t: f32[4,8]                          for i0 in 0..4:
    for i0_t: for i1_t: t[..] = exp(x[..])       local t: f32[1,8]
    for i0 in 0..4:                 --->         for i1_t in 0..8: t[i1_t] = exp(x[i0*8 + i1_t])
      for i1 in 0..8: y[..] = t[i0*8 + i1]       for i1 in 0..8: y[..] = t[i1]
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .affine import Affine, affine, bounds, delinearize, guards_of, row_major_strides, to_expr
from .dependence import accesses, conjuncts, loop_ranges, signature
from .loops import (BOOL, Allocate, Binary, Block, Buffer, Cast, Const, Expr, For, If, Intrinsic, Kernel, Load, Stmt,
                    Store, Var)
from .rewrite import (declared_names, free_vars, loaded_buffers, map_expr, map_stmt_exprs, replace_buffer,
                      statements, stored_buffers, substitute)
from .schedule import Primitive, ScheduleError, path_to, replace_stmt, with_suffix

LOCAL_LIMIT = 64 * 1024  # bytes: a local buffer lives on a thread's stack


def _buffer(step: Primitive, kernel: Kernel, name: str) -> Buffer:
    """The parameter or local buffer of ``kernel`` named ``name``."""
    for b in kernel.params + [s.buffer for s in statements(kernel.body) if isinstance(s, Allocate)]:
        if b.name == name:
            return b
    raise step.fail(kernel, f"there is no buffer {name}")


def _buffer_names(kernel: Kernel) -> set[str]:
    return {b.name for b in kernel.params} | {s.buffer.name for s in statements(kernel.body)
                                              if isinstance(s, Allocate)}


def _check_size(step: Primitive, kernel: Kernel, name: str, shape, dtype) -> None:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes > LOCAL_LIMIT:
        raise step.fail(kernel, f"the local buffer {name} would take {nbytes} bytes "
                                f"({'x'.join(map(str, shape))}), more than {LOCAL_LIMIT}; use an inner loop")


def lin(exprs: list[Expr], extents: list[int]) -> Expr:
    """Row-major linear index of ``exprs`` in a box of ``extents``."""
    result: Expr = Const(0)
    for e, n in zip(exprs, extents):
        result = result * n + e
    return result


def conjunction(conds: list[Expr]) -> Expr:
    """``a && b && ...`` of a non-empty list of conditions."""
    result = conds[0]
    for cond in conds[1:]:
        result = Binary("&&", result, cond, BOOL)
    return result


def guarded(stmt: Stmt, conds: list[Expr]) -> Stmt:
    """``if (all conds): stmt``, or ``stmt`` itself when there are none."""
    return If(conjunction(conds), stmt) if conds else stmt


def loop_nest(loop_vars: list[tuple[str, int]], body: Stmt) -> Stmt:
    """Serial loops ``(name, extent)`` (outermost first) around ``body``."""
    for name, extent in reversed(loop_vars):
        body = For(Var(name), extent, body)
    return body


# ----------------------------------------------------------------------------------------------
# The footprint of a buffer in a loop body
# ----------------------------------------------------------------------------------------------


@dataclass
class Footprint:
    """The elements of ``buffer`` one iteration of a loop touches: a box over its inner loops.

    Every access must read the same affine index up to the names of the inner loops
    (``dependence.Signature``): ``form`` is that index over placeholders ``_x0, _x1 ...`` (one
    per local axis, in ``order``) and the outer variables. ``conds`` are the conditions that
    decide *which* elements are touched (split guards), over the same names.
    """

    buffer: Buffer
    form: Affine
    order: list[str]
    extents: dict[str, int]
    conds: list[Expr]
    guards: list
    names: dict[str, str]      # placeholder -> a loop name it stands for (for naming copies)
    inner: set[str]
    ranges: dict[str, int]

    def local_index(self, index: Expr) -> Expr:
        """The local buffer's index for an access of ``buffer`` at ``index``."""
        sig = signature((), affine(index), self.inner, self.ranges)
        back = {ph: name for name, ph in sig.names.items()}
        return lin([Var(back[ph]) for ph in self.order], [self.extents[ph] for ph in self.order])


def footprint(step: Primitive, kernel: Kernel, loop: For, buffer: Buffer, layout=None) -> Footprint:
    """The ``Footprint`` of ``buffer`` in ``loop``'s body; fails with the reason if there is none."""
    body = loop.body
    found = [a for a in accesses(body) if a.buffer is buffer]
    if not found:
        raise step.fail(kernel, f"{loop.var.name} does not access {buffer.name}")
    if any(a.address for a in found):
        raise step.fail(kernel, f"an intrinsic takes the address of {buffer.name}")
    ranges = loop_ranges(body)
    inner, scalars = set(ranges), declared_names(body) - set(ranges)
    sigs = []
    for a in found:
        form = affine(a.index)
        if form is None:
            raise step.fail(kernel, f"{buffer.name} is accessed at a non-affine index")
        sig = signature(a.conds, form, inner, ranges)
        placeholders = set(sig.ranges)
        if any(not isinstance(atom, str) and atom.inner.names() & placeholders for atom, _ in sig.form.terms) \
                or form.names() & scalars:
            raise step.fail(kernel, f"the index of {buffer.name} is not affine in the loops inside {loop.var.name}")
        sigs.append((a, sig))
    if any(sig.key != sigs[0][1].key for _, sig in sigs):
        shown = sorted({str(affine(a.index)) for a, _ in sigs})
        raise step.fail(kernel, f"{buffer.name} is accessed at different indices ({'; '.join(shown)})")
    conds = _domain_conds(step, kernel, sigs, inner | scalars)
    first = sigs[0][1]
    order = _layout(step, kernel, sigs, layout)
    back = {ph: name for name, ph in first.names.items()}
    names = {ph: back[ph] for ph in order}
    guards = list(set.intersection(*[sig.guards for _, sig in sigs]))
    return Footprint(buffer, first.form, order, dict(first.ranges), conds, guards, names, inner, ranges)


def _domain_conds(step, kernel, sigs, inner: set[str]) -> list[Expr]:
    """The conditions every access is under that decide which elements it touches.

    A condition over outer variables and the access's own index loops (a split guard) is kept,
    renamed to placeholders; one over other inner loops only (a reduction's guard) says *when*,
    not *where*, and is ignored. All accesses must agree.
    """
    from .loop_text import print_expr

    per_access = []
    for a, sig in sigs:
        kept = {}
        for cond in a.conds:
            touched = free_vars(cond) & inner
            if touched and not touched <= set(sig.names):
                if touched & set(sig.names):
                    raise step.fail(kernel, f"a condition mixes the index loops of {a.buffer.name} with others")
                continue
            renamed = substitute(cond, {n: Var(ph) for n, ph in sig.names.items()})
            kept[print_expr(renamed)] = renamed
        per_access.append(kept)
    if any(set(k) != set(per_access[0]) for k in per_access):
        raise step.fail(kernel, f"{sigs[0][0].buffer.name} is accessed under different conditions")
    return list(per_access[0].values())


def _layout(step, kernel, sigs, layout) -> list[str]:
    placeholders = sorted(sigs[0][1].ranges, key=lambda ph: int(ph[2:]))
    if layout is None:
        return placeholders
    lookup = {n: ph for _, sig in sigs for n, ph in sig.names.items()}
    order = [lookup.get(n) for n in layout]
    if None in order or sorted(order) != sorted(placeholders):
        loops_ = sorted({n for _, sig in sigs for n in sig.names})
        raise step.fail(kernel, f"the layout must order the loops the index reads: {', '.join(loops_)}")
    return order


def _copy(step: Primitive, kernel: Kernel, fp: Footprint, local: Buffer, inward: bool) -> Stmt:
    """The loop nest copying the footprint between ``fp.buffer`` and ``local`` (``inward``: into it).

    Its loops are named after the body's: ``i1`` -> ``i1_<buffer>`` (in), ``i1_<buffer>_out``.
    """
    suffix = fp.buffer.name if inward else f"{fp.buffer.name}_out"
    names = {ph: f"{fp.names[ph]}_{suffix}" for ph in fp.order}
    step.check_fresh(kernel, *names.values())
    rename = {ph: Var(n) for ph, n in names.items()}
    form = fp.form.rename(names)
    outer = to_expr(form)
    inside = lin([Var(names[ph]) for ph in fp.order], [fp.extents[ph] for ph in fp.order])
    conds = [substitute(c, rename) for c in fp.conds] + _bounds_conds(kernel, fp, form, names)
    copy = (Store(local, inside, Load(fp.buffer, outer)) if inward
            else Store(fp.buffer, outer, Load(local, inside)))
    return loop_nest([(names[ph], fp.extents[ph]) for ph in fp.order], guarded(copy, conds))


def _bounds_conds(kernel: Kernel, fp: Footprint, form: Affine, names: dict[str, str]) -> list[Expr]:
    """``0 <= index < size`` where the copy's box might leave the buffer."""
    ranges = loop_ranges(kernel.body) | {names[ph]: fp.extents[ph] for ph in fp.order}
    guards = [g for c in fp.conds for g in guards_of(substitute(c, {ph: Var(n) for ph, n in names.items()}))]
    span = bounds(form, ranges, guards) if form.names() <= set(ranges) else None
    index, conds = to_expr(form), []
    if span is None or span[0] < 0:
        conds.append(Binary(">=", index, Const(0), BOOL))
    if span is None or span[1] >= fp.buffer.size:
        conds.append(Binary("<", index, Const(fp.buffer.size), BOOL))
    return conds


def _local(step: Primitive, kernel: Kernel, fp: Footprint, name: str) -> Buffer:
    if name in _buffer_names(kernel):
        raise step.fail(kernel, f"the name {name} is already in use")
    shape = tuple(fp.extents[ph] for ph in fp.order)
    _check_size(step, kernel, name, shape, fp.buffer.dtype)
    return Buffer(name, fp.buffer.dtype, shape)


# ----------------------------------------------------------------------------------------------
# cache_read, cache_write
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheRead(Primitive):
    """Per iteration of ``at``, copy the part of ``buffer`` its body reads into ``<buffer>_local``.

    The body then reads the copy. Requires: the body does not write ``buffer`` (or memory it
    shares), reads it at one affine index (up to the inner loops' names) and the copy fits in
    ``LOCAL_LIMIT`` bytes. ``layout`` orders the copy's axes by the inner loops they follow
    (default: the buffer's own order): ``layout=("i1_o", "rk_i", "i1_i")`` packs a matmul's B
    panel k-major in blocks of columns.
    """

    buffer: str
    at: str
    layout: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.layout is not None:  # a tuple, so that steps stay hashable (searchable)
            object.__setattr__(self, "layout", tuple(self.layout))

    @property
    def local(self) -> str:
        """The name of the local copy."""
        return f"{self.buffer}_local"

    def __str__(self) -> str:
        layout = f", layout={','.join(self.layout)}" if self.layout else ""
        return f"cache_read({self.buffer}, {self.at}{layout}) -> {self.local}"

    def rewrite(self, kernel: Kernel) -> Stmt:
        loop = self.find(kernel, self.at)
        buffer = _buffer(self, kernel, self.buffer)
        if loop.kind == "vectorized":
            raise self.fail(kernel, f"{self.at} is vectorized: the copy loops cannot go inside it")
        written = stored_buffers(loop.body)
        if buffer in written or (buffer in kernel.aliases and written & kernel.aliases):
            raise self.fail(kernel, f"{self.at} also writes {self.buffer}: the copy would go stale")
        fp = footprint(self, kernel, loop, buffer, self.layout)
        local = _local(self, kernel, fp, self.local)
        copy_in = _copy(self, kernel, fp, local, inward=True)
        body = replace_buffer(loop.body, buffer, local, fp.local_index)
        return replace_stmt(kernel.body, loop, replace(loop, body=Block([Allocate(local), copy_in, body])))


@dataclass(frozen=True)
class CacheWrite(Primitive):
    """Per iteration of ``at``, the body writes (and reads) ``buffer`` through ``<buffer>_local``.

    The local tile is copied out after the body, and copied in before it unless the body
    starts by overwriting the whole tile (a matmul's zeroing loop): elements the body does not
    write go back unchanged. Requires what
    ``CacheRead`` does, that different inner iterations address different elements (two local
    slots for one element would diverge), and that ``buffer`` shares memory with no other
    parameter.
    """

    buffer: str
    at: str

    @property
    def local(self) -> str:
        """The name of the local copy."""
        return f"{self.buffer}_local"

    def __str__(self) -> str:
        return f"cache_write({self.buffer}, {self.at}) -> {self.local}"

    def rewrite(self, kernel: Kernel) -> Stmt:
        from .affine import determines

        loop = self.find(kernel, self.at)
        buffer = _buffer(self, kernel, self.buffer)
        if loop.kind == "vectorized":
            raise self.fail(kernel, f"{self.at} is vectorized: the copy loops cannot go inside it")
        if buffer in kernel.aliases:
            raise self.fail(kernel, f"{self.buffer} shares memory with another parameter (computed in place)")
        if buffer not in stored_buffers(loop.body):
            raise self.fail(kernel, f"{self.at} does not write {self.buffer}")
        fp = footprint(self, kernel, loop, buffer)
        inner_form, _ = fp.form.split(set(fp.order))
        for ph in fp.order:
            if not determines(inner_form, ph, fp.extents, fp.guards):
                raise self.fail(kernel, f"two iterations of the loops inside {self.at} write the same "
                                        f"element of {self.buffer}; a local copy would split it in two")
        local = _local(self, kernel, fp, self.local)
        body = replace_buffer(loop.body, buffer, local, fp.local_index)
        stmts = [Allocate(local)]
        if not _overwrites_first(loop.body, buffer, fp):
            stmts.append(_copy(self, kernel, fp, local, inward=True))
        stmts += [body, _copy(self, kernel, fp, local, inward=False)]
        return replace_stmt(kernel.body, loop, replace(loop, body=Block(stmts)))


def _overwrites_first(body: Stmt, buffer: Buffer, fp: Footprint) -> bool:
    """Whether the first statement touching ``buffer`` is a nest storing every element of the tile.

    The nest may guard its store by the footprint's own conditions (a split tail).
    """
    from .loop_text import print_expr

    stmts = body.stmts if isinstance(body, Block) else [body]
    first = next(s for s in stmts if any(a.buffer is buffer for a in accesses(s)))
    loops_, inner = [], first
    while isinstance(inner, For):
        loops_.append(inner)
        inner = inner.body
    conds = []
    if isinstance(inner, If) and inner.otherwise is None:
        conds, inner = conjuncts(inner.cond), inner.then
    if not (isinstance(inner, Store) and inner.buffer is buffer) or buffer in loaded_buffers(inner):
        return False
    sig = signature((), affine(inner.index), fp.inner, fp.ranges)
    renamed = {print_expr(substitute(c, {n: Var(ph) for n, ph in sig.names.items()})) for c in conds}
    covered = {loop.var.name for loop in loops_}
    return (set(sig.names) <= covered and all(loop.extent >= 1 for loop in loops_)
            and renamed <= {print_expr(c) for c in fp.conds})


# ----------------------------------------------------------------------------------------------
# Producers: compute_inline, compute_at
# ----------------------------------------------------------------------------------------------


@dataclass
class Producer:
    """The nest that fills local buffer ``buffer``: ``for v...: buffer[index(v)] = value(v)``.

    ``axis_vars[k]`` is the loop variable indexing axis ``k`` (None for an axis of size 1); the
    nest computes every element exactly once, from memory nothing after it writes.
    """

    block: Block
    alloc: Allocate
    nest: Stmt
    store: Store
    axis_vars: list[str | None]

    @property
    def buffer(self) -> Buffer:
        """The local buffer the producer fills."""
        return self.alloc.buffer

    @property
    def after(self) -> list[Stmt]:
        """The statements of the block after the producer: where the consumers are."""
        return self.block.stmts[self.block.stmts.index(self.nest) + 1:]


def find_producer(step: Primitive, kernel: Kernel, name: str) -> Producer:
    """The ``Producer`` of local buffer ``name``; fails with the reason if the kernel has none."""
    alloc = next((s for s in statements(kernel.body) if isinstance(s, Allocate) and s.buffer.name == name), None)
    if alloc is None:
        raise step.fail(kernel, f"there is no local buffer {name} (merge_stages makes one of an intermediate)")
    path = path_to(kernel.body, alloc)
    block = path[-2] if len(path) > 1 else None
    buffer = alloc.buffer
    if not isinstance(block, Block):
        raise step.fail(kernel, f"{name} is not allocated in a block of statements")
    writers = [s for s in block.stmts if buffer in stored_buffers(s)]
    stores = sum(isinstance(s, Store) and s.buffer is buffer for s in statements(kernel.body))
    if len(writers) != 1 or stores != 1:
        raise step.fail(kernel, f"{name} must be written by one loop nest")
    nest_, loops_ = writers[0], []
    store = nest_
    while isinstance(store, For):
        loops_.append(store)
        store = store.body
    if not isinstance(store, Store) or block.stmts.index(nest_) < block.stmts.index(alloc):
        raise step.fail(kernel, f"the producer of {name} must be a loop nest around a single store")
    axis_vars = _axis_vars(step, kernel, buffer, store, loops_)
    enclosing = {s.var.name for s in path if isinstance(s, For)}
    producer = Producer(block, alloc, nest_, store, axis_vars)
    _check_value(step, kernel, producer, enclosing | {loop.var.name for loop in loops_})
    return producer


def _axis_vars(step, kernel, buffer: Buffer, store: Store, loops_: list[For]) -> list[str | None]:
    ranges = {loop.var.name: loop.extent for loop in loops_}
    form = affine(store.index)
    axes = None if form is None else delinearize(form, buffer.shape, ranges, [])
    axis_vars = []
    for k, extent in enumerate(buffer.shape):
        d = None if axes is None else axes[k]
        if extent == 1 and d == Affine():
            axis_vars.append(None)
        elif d is not None and len(d.terms) == 1 and d.const == 0 and d.terms[0][1] == 1 \
                and ranges.get(d.terms[0][0]) == extent:
            axis_vars.append(d.terms[0][0])
        else:
            raise step.fail(kernel, f"the producer of {buffer.name} does not write it one element "
                                    f"per loop iteration (index {form})")
    if sorted(v for v in axis_vars if v) != sorted(ranges):
        raise step.fail(kernel, f"the producer of {buffer.name} has loops its index does not use")
    return axis_vars


def _check_value(step, kernel, producer: Producer, visible: set[str]) -> None:
    value = producer.store.value
    if producer.buffer in loaded_buffers(producer.store):
        raise step.fail(kernel, f"the producer of {producer.buffer.name} reads it")
    if not free_vars(value) <= visible:
        raise step.fail(kernel, f"the producer's value reads local scalars: {sorted(free_vars(value) - visible)}")
    later = Block(producer.after)
    if loaded_buffers(producer.store) & stored_buffers(later) or \
            any(isinstance(s, Intrinsic) for s in statements(later)):
        raise step.fail(kernel, f"memory the producer of {producer.buffer.name} reads is written after it")


def map_loads(stmt: Stmt, fn, conds: tuple = ()) -> Stmt:
    """``stmt`` with ``fn(load, conds)`` (an expression, or None to keep it) applied to every load.

    ``conds`` are the conditions of the ``If`` s around the load, for index analysis.
    """
    def expr(e: Expr) -> Expr:
        def visit(sub):
            if isinstance(sub, Load):
                inner = Load(sub.buffer, map_expr(sub.index, visit))
                return fn(inner, conds) or inner
            return None
        return map_expr(e, visit)

    if isinstance(stmt, For):
        return replace(stmt, body=map_loads(stmt.body, fn, conds))
    if isinstance(stmt, Block):
        return Block([map_loads(s, fn, conds) for s in stmt.stmts])
    if isinstance(stmt, If):
        otherwise = None if stmt.otherwise is None else map_loads(stmt.otherwise, fn, conds)
        return If(expr(stmt.cond), map_loads(stmt.then, fn, conds + (stmt.cond,)), otherwise)
    return map_stmt_exprs(stmt, expr)


def _axes_of(load: Load, conds, ranges) -> list[Affine] | None:
    form = affine(load.index)
    guards = [g for c in conds for g in guards_of(c)]
    return None if form is None else delinearize(form, load.buffer.shape, ranges, guards)


@dataclass(frozen=True)
class ComputeInline(Primitive):
    """Replace every read of local buffer ``buffer`` by its producer's expression, and drop both.

    ``t[i*8 + j]`` becomes ``exp(x[i*8 + j])``: nothing is stored, values are recomputed at each
    use. Requires a producer nest (``find_producer``) and reads of ``buffer`` only after it.
    """

    buffer: str

    def __str__(self) -> str:
        return f"compute_inline({self.buffer})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        producer = find_producer(self, kernel, self.buffer)
        buffer = producer.buffer
        reads_after = sum(1 for a in accesses(Block(producer.after)) if a.buffer is buffer)
        if reads_after != sum(1 for a in accesses(kernel.body) if a.buffer is buffer and not a.store) \
                or any(a.store for a in accesses(Block(producer.after)) if a.buffer is buffer):
            raise self.fail(kernel, f"{self.buffer} is read before its producer or through an address")
        ranges = loop_ranges(kernel.body)
        strides = row_major_strides(buffer.shape)
        value = producer.store.value

        def inline(load: Load, conds) -> Expr | None:
            if load.buffer is not buffer:
                return None
            axes = _axes_of(load, conds, ranges)
            index = [to_expr(a) for a in axes] if axes else _div_mod_axes(load.index, buffer.shape, strides)
            values = {v: index[k] for k, v in enumerate(producer.axis_vars) if v}
            result = substitute(value, values)
            return result if result.dtype == buffer.dtype else Cast(result, buffer.dtype)

        stmts = [map_loads(s, inline) for s in producer.after]
        before = producer.block.stmts[:producer.block.stmts.index(producer.nest)]
        new_block = Block([s for s in before if s is not producer.alloc] + stmts)
        return replace_stmt(kernel.body, producer.block, new_block)


def _div_mod_axes(index: Expr, shape, strides) -> list[Expr]:
    """Per-axis indices of a flat index by division and remainder (when no affine split exists)."""
    axes = []
    for k, (extent, stride) in enumerate(zip(shape, strides)):
        e = index if stride == 1 else Binary("/", index, Const(stride), index.dtype)
        axes.append(e if k == 0 else Binary("%", e, Const(extent), index.dtype))
    return axes


@dataclass(frozen=True)
class ComputeAt(Primitive):
    """Move the producer of local buffer ``buffer`` into loop ``at``: per iteration, only what it reads.

    The part of ``buffer`` one iteration of ``at`` reads is a box (per axis: from the outer
    loops' position, as wide as the inner loops reach); the producer computes that box into a
    local buffer of its size at the start of each iteration, and the reads are shifted into it.
    Requires a producer nest (``find_producer``), every read of ``buffer`` inside ``at``, at
    indices that split into one affine index per axis, moving alike with the outer loops.
    """

    buffer: str
    at: str

    def __str__(self) -> str:
        return f"compute_at({self.buffer}, {self.at})"

    def rewrite(self, kernel: Kernel) -> Stmt:
        producer = find_producer(self, kernel, self.buffer)
        loop = self.find(kernel, self.at)
        if not any(path_to(s, loop) for s in producer.after):
            raise self.fail(kernel, f"{self.at} is not after the producer of {self.buffer}")
        if loop.kind == "vectorized":
            raise self.fail(kernel, f"{self.at} is vectorized: the producer's loops cannot go inside it")
        buffer = producer.buffer
        inside = [a for a in accesses(loop.body) if a.buffer is buffer]
        everywhere = [a for a in accesses(kernel.body) if a.buffer is buffer and not a.store]
        if len(inside) != len(everywhere) or any(a.store for a in inside):
            raise self.fail(kernel, f"{self.buffer} is also read outside {self.at}")
        ranges = loop_ranges(kernel.body)
        region = self._region(kernel, loop, inside, ranges)
        local = Buffer(buffer.name, buffer.dtype, tuple(extent for _, extent in region))
        _check_size(self, kernel, local.name, local.shape, local.dtype)
        compute = self._producer_nest(kernel, producer, region, local, ranges)
        starts = [start for start, _ in region]

        def shift(load: Load, conds) -> Expr | None:
            if load.buffer is not buffer:
                return None
            axes = _axes_of(load, conds, ranges)
            offsets = [to_expr(a - s) for a, s in zip(axes, starts)]
            return Load(local, lin(offsets, list(local.shape)))

        new_loop = replace(loop, body=Block([Allocate(local), compute, map_loads(loop.body, shift)]))
        stmts = [replace_stmt(s, loop, new_loop) for s in producer.block.stmts
                 if s is not producer.alloc and s is not producer.nest]
        return replace_stmt(kernel.body, producer.block, Block(stmts))

    def _region(self, kernel, loop: For, inside, ranges) -> list[tuple[Affine, int]]:
        """Per axis: (first element as an affine form of outer variables, extent)."""
        inner = set(loop_ranges(loop.body))
        per_axis: list[list] = [[] for _ in inside[0].buffer.shape]
        for a in inside:
            axes = _axes_of(Load(a.buffer, a.index), a.conds, ranges)
            if axes is None:
                raise self.fail(kernel, f"the index {a.index} of {self.buffer} does not split into one per axis")
            guards = [g for c in a.conds for g in guards_of(c)]
            for k, axis in enumerate(axes):
                moving, fixed = axis.split(inner)
                span = bounds(moving, ranges, guards)
                if fixed.names() & inner or span is None:
                    raise self.fail(kernel, f"the reads of {self.buffer} are not affine in the loops of {self.at}")
                per_axis[k].append((Affine.of(dict(fixed.terms)), fixed.const + span[0], fixed.const + span[1]))
        region = []
        for k, reads in enumerate(per_axis):
            if any(r[0] != reads[0][0] for r in reads):
                raise self.fail(kernel, f"the reads of {self.buffer} move differently with the outer loops")
            lo, hi = min(r[1] for r in reads), max(r[2] for r in reads)
            region.append((reads[0][0] + Affine((), lo), hi - lo + 1))
        return region

    def _producer_nest(self, kernel, producer: Producer, region, local: Buffer, ranges) -> Stmt:
        values, loop_vars, offsets, conds = {}, [], [], []
        for var, (start, extent), size in zip(producer.axis_vars, region, producer.buffer.shape):
            offset = Var(var) if var and extent > 1 else Const(0)
            if var:
                values[var] = to_expr(start + (affine(offset)))
                if extent > 1:
                    loop_vars.append((var, extent))
            offsets.append(offset)
            conds += _axis_bounds(start, extent, size, ranges, to_expr(start + affine(offset)))
        value = substitute(producer.store.value, values)
        order = [loop.var.name for loop in _nest_loops(producer.nest)]
        loop_vars.sort(key=lambda item: order.index(item[0]))
        store = Store(local, lin(offsets, list(local.shape)), value)
        return loop_nest(loop_vars, guarded(store, conds))


def _nest_loops(stmt: Stmt) -> list[For]:
    found = []
    while isinstance(stmt, For):
        found.append(stmt)
        stmt = stmt.body
    return found


def _axis_bounds(start: Affine, extent: int, size: int, ranges, index: Expr) -> list[Expr]:
    """``0 <= index < size`` where the region may stick out of the buffer's axis."""
    span = bounds(start, ranges, []) if start.names() <= set(ranges) else None
    conds = []
    if span is None or span[0] < 0:
        conds.append(Binary(">=", index, Const(0), BOOL))
    if span is None or span[1] + extent - 1 >= size:
        conds.append(Binary("<", index, Const(size), BOOL))
    return conds


# ----------------------------------------------------------------------------------------------
# Building producer/consumer kernels
# ----------------------------------------------------------------------------------------------


def merge_stages(program, producer: str, consumer: str):
    """A copy of ``program`` where kernel ``producer`` runs inside kernel ``consumer``, its output local.

    The merged kernel (named after the consumer) allocates the intermediate, runs the producer's
    loops (their names get the suffix ``_<producer>``), then the consumer's: the input of
    ``ComputeAt`` and ``ComputeInline``. Requires the consumer to come right after the producer,
    to be the only reader of the intermediate (a workspace value of at most ``LOCAL_LIMIT``
    bytes), and no shared memory between the merged kernel's inputs and its output.
    """
    names = [k.name for k in program.kernels]
    if producer not in names or consumer not in names or names.index(consumer) != names.index(producer) + 1:
        raise ScheduleError(f"merge_stages: {consumer} must be the kernel right after {producer} (kernels: "
                            f"{', '.join(names)})")
    first, second = program.kernels[names.index(producer)], program.kernels[names.index(consumer)]
    tmp = first.output
    readers = [k.name for k in program.kernels if tmp in k.inputs]
    if tmp not in program.workspace or readers != [consumer]:
        raise ScheduleError(f"merge_stages: {tmp.name} must be an intermediate read only by {consumer}")
    nbytes = tmp.size * tmp.dtype.itemsize
    if nbytes > LOCAL_LIMIT:
        raise ScheduleError(f"merge_stages: {tmp.name} takes {nbytes} bytes, more than a local buffer's {LOCAL_LIMIT}")
    inputs = list(dict.fromkeys(first.inputs + [b for b in second.inputs if b is not tmp]))
    if _shares_memory(program.workspace, inputs, second.output):
        raise ScheduleError(f"merge_stages: an input of {producer} shares memory with {second.output.name}")
    body, _ = with_suffix(first.body, f"_{producer}")
    merged = Kernel(second.name, inputs, second.output, Block([Allocate(tmp), body, second.body]),
                    first.source + second.source, frozenset((first.aliases | second.aliases) - {tmp}),
                    first.scratch + second.scratch)
    kernels = [k for k in program.kernels if k is not first and k is not second]
    kernels.insert(names.index(producer), merged)
    workspace = {b: offset for b, offset in program.workspace.items() if b is not tmp}
    return replace(program, kernels=kernels, workspace=workspace)


def _shares_memory(workspace: dict, inputs: list[Buffer], output: Buffer) -> bool:
    if output not in workspace:
        return False
    start = workspace[output]
    end = start + output.size * output.dtype.itemsize
    return any(b in workspace and workspace[b] < end and start < workspace[b] + b.size * b.dtype.itemsize
               for b in inputs)
