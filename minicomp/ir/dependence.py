"""Which iterations of a loop nest may touch the same memory: the legality test of schedules.

A schedule step may run iterations in another order (``reorder``) or at the same time
(``parallel``, ``vectorize``). That is safe when no two iterations *conflict*: touch the same
element with at least one of them writing, or pass a value through a local scalar::

    for i: for j: out[i*8 + j] = x[j*4 + i]      # each (i, j) writes its own element: free
    for i: acc = acc + x[i]                      # acc carries a value: i is ordered
    for i: for k: out[i] = out[i] + a[i*4 + k]   # k revisits out[i]: keep k's order

The test here is deliberately simple and conservative (a "no" is never wrong, a "yes" may be
missed): every access of a written buffer inside the nest must use *one* affine index ``f``,
and ``f`` must pin down the loop variables that change between conflicting iterations
(``affine.determines``). Loops whose variable ``f`` ignores only revisit elements; their
relative order must stay, unless every write is an accumulation ``b[f] = b[f] + e`` (or max,
min ...), which any order computes, up to floating-point rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

from .affine import Affine, affine, bounds, determines, guards_of
from .symbolic import Sym
from .loops import (Address, Allocate, Assign, Barrier, Binary, Block, Buffer, Call, Declare, Expr, For, If, Intrinsic,
                    Kernel, Load, Stmt, Store, Unary, WarpReduce)
from .rewrite import declared_names, exprs_of, loads, statements

ACCUMULATORS = {"+", "*", "||", "&&", "mc_maximum", "mc_minimum"}  # associative and commutative


@dataclass
class Access:
    """One load or store of ``buffer`` at ``index``, under the conditions ``conds``.

    ``address``: an intrinsic receives ``&buffer[index]`` (and may read or write from there).
    """

    buffer: Buffer
    index: Expr
    store: bool
    conds: tuple[Expr, ...]
    stmt: Stmt
    address: bool = False


def accesses(s: Stmt, conds: tuple[Expr, ...] = ()) -> list[Access]:
    """Every load, store and ``Address`` in ``s`` (an address counts as a store)."""
    found: list[Access] = []
    if isinstance(s, For):
        return accesses(s.body, conds)
    if isinstance(s, Block):
        return [a for sub in s.stmts for a in accesses(sub, conds)]
    for e in exprs_of(s):
        found += [Access(load.buffer, load.index, False, conds, s) for load in loads(e)]
        found += [Access(sub.buffer, sub.index, True, conds, s, address=True) for sub in _addresses(e)]
    if isinstance(s, Store):
        found.append(Access(s.buffer, s.index, True, conds, s))
    if isinstance(s, If):
        found += accesses(s.then, conds + tuple(conjuncts(s.cond)))
        if s.otherwise is not None:
            found += accesses(s.otherwise, conds + (Unary("!", s.cond, s.cond.dtype),))
    return found


def conjuncts(cond: Expr) -> list[Expr]:
    """``a && b && c`` as ``[a, b, c]``."""
    if isinstance(cond, Binary) and cond.op == "&&":
        return conjuncts(cond.a) + conjuncts(cond.b)
    return [cond]


def _addresses(e: Expr):
    if isinstance(e, Address):
        yield e
    for child in e.children():
        yield from _addresses(child)


def loop_ranges(s: Stmt) -> dict[str, int]:
    """Loop variable -> extent for every loop inside ``s`` (the largest, for repeated names).

    A name that ``s`` also declares as a local scalar is left out: its values are unknown.
    """
    ranges: dict[str, int] = {}
    for sub in statements(s):
        if isinstance(sub, For):
            seen = ranges.get(sub.var.name, 0)
            ranges[sub.var.name] = sub.extent if seen == 0 or seen == sub.extent else max(seen, sub.extent)
    return {name: extent for name, extent in ranges.items() if name not in scalar_names(s)}


def scalar_names(s: Stmt) -> set[str]:
    """The local scalars declared inside ``s``."""
    return {sub.var.name for sub in statements(s) if isinstance(sub, (Declare, WarpReduce))}


def common_guards(group: list[Access]) -> list:
    """The ``affine < bound`` facts that hold at every access of ``group``."""
    per_access = [{g for cond in a.conds for g in guards_of(cond)} for a in group]
    return list(set.intersection(*per_access)) if per_access else []


def carried_scalars(body: Stmt) -> list[str]:
    """Local scalars assigned in ``body`` but declared outside it: values carried between iterations."""
    inside = declared_names(body)
    return sorted({s.var.name for s in statements(body) if isinstance(s, Assign)} - inside)


def conflict(kernel: Kernel, scope: list[For], body: Stmt, every_var: bool,
             keeps_order=lambda unused: True) -> str | None:
    """Why iterations of the ``scope`` loops (around ``body``) may conflict, or None if they cannot.

    ``every_var``: each scope variable must select distinct elements (parallel, vectorize).
    Otherwise scope loops whose variable a buffer's index ignores may revisit its elements, if
    ``keeps_order(names)`` says their relative order is kept, or every write is an accumulation.
    """
    if any(isinstance(s, Intrinsic) for s in statements(body)):
        return "the body calls an intrinsic, whose memory accesses are not analysed"
    if any(isinstance(s, (Barrier, WarpReduce)) for s in statements(body)):
        return "the body synchronises GPU threads (a barrier or warp reduce), which orders its iterations"
    carried = carried_scalars(body)
    if carried:
        return (f"the body assigns {', '.join(carried)}, declared outside the loop: "
                "a value carried from one iteration to the next")
    names = [loop.var.name for loop in scope]
    if set(names) & scalar_names(body):
        return f"{sorted(set(names) & scalar_names(body))[0]} is also the name of a scalar inside the loop"
    ranges = {loop.var.name: loop.extent for loop in scope} | loop_ranges(body)
    local = {sub.buffer for sub in statements(body) if isinstance(sub, Allocate)}
    found = accesses(body)
    for group in _written_groups(kernel, found, local):
        why = _group_conflict(group, names, ranges, declared_names(body), every_var, keeps_order)
        if why:
            return why
    return None


def _written_groups(kernel: Kernel, found: list[Access], local: set) -> list[list[Access]]:
    """Accesses grouped by memory (aliased parameters are one memory), for memory written here."""
    def key(buffer):
        return "aliases" if buffer in kernel.aliases else buffer

    groups: dict = {}
    for a in found:
        if a.buffer not in local:
            groups.setdefault(key(a.buffer), []).append(a)
    return [g for g in groups.values() if any(a.store for a in g)]


def _group_conflict(group: list[Access], names: list[str], ranges: dict[str, int],
                    declared: set[str], every_var: bool, keeps_order) -> str | None:
    name = group[0].buffer.name
    forms = [affine(a.index) for a in group]
    if any(f is None for f in forms):
        return f"{name} is accessed at an index that is not affine in the loop variables"
    inner = set(ranges) - set(names)
    signatures = [signature(a.conds, f, inner, ranges) for a, f in zip(group, forms)]
    if all(sig.key == signatures[0].key for sig in signatures):
        form, ranges = signatures[0].form, ranges | signatures[0].ranges
        guards = list(set.intersection(*[sig.guards for sig in signatures]))
    else:
        stacked = _stacked(group, forms, names, ranges)
        if stacked is None:
            shown = sorted({str(f) for f in forms})
            return f"{name} is read and written at different indices ({'; '.join(shown)})"
        form, ranges, guards = stacked[0], ranges | stacked[1], []
    varying, _ = form.split(set(ranges))
    if (form.names() - varying.names()) & (set(ranges) | declared):
        return f"the index of {name} mixes loop variables with other values in a way not analysed"
    ignored = []
    for var in names:
        if not isinstance(ranges[var], Sym) and ranges[var] <= 1:  # one iteration (or none) conflicts with nothing
            continue
        if var not in varying.names():
            ignored.append(var)
        elif not determines(varying, var, ranges, guards):
            return (f"different iterations of {var} may touch the same element of {name} "
                    f"(index {forms[0]})")
    if ignored and every_var:
        return f"every iteration of {ignored[0]} touches the same element of {name} (index {forms[0]})"
    if ignored and not keeps_order(ignored) and not _accumulates(group):
        return (f"loops {', '.join(ignored)} revisit elements of {name} and their order changes, "
                f"but {name} is not only accumulated into")
    return None


@dataclass
class Signature:
    """An access's index with its inner loop variables renamed ``_x0, _x1 ...`` (by coefficient).

    Two accesses in sibling loops that differ only in their loops' names (a matmul's ``i1`` that
    initialises and ``j`` that accumulates) then have equal ``key`` s: they touch the same
    elements. ``ranges`` holds the extents of the renamed variables, ``guards`` the access's
    ``affine < bound`` facts over loop variables, renamed alike.
    """

    form: Affine
    ranges: dict[str, int]
    guards: set
    names: dict[str, str]  # original name -> placeholder

    @property
    def key(self):
        """What two accesses must share to touch the same elements: the form and the extents."""
        return self.form, tuple(sorted(self.ranges.items()))


def signature(conds: tuple[Expr, ...], form: Affine, inner: set[str], ranges: dict[str, int]) -> Signature:
    """The ``Signature`` of an access at affine index ``form`` under ``conds``; see there."""
    order = _ordered_names(form)
    coeff = dict(form.terms)
    chosen = sorted((n for n in order if n in inner),
                    key=lambda n: (-abs(coeff.get(n, 0)), ranges[n], order.index(n)))
    names = {n: f"_x{k}" for k, n in enumerate(chosen)}
    guards = {(g.rename(names), bound) for cond in conds for g, bound in guards_of(cond)
              if g.names() <= set(ranges)}
    return Signature(form.rename(names), {names[n]: ranges[n] for n in chosen}, guards, names)


def _ordered_names(form: Affine) -> list[str]:
    out: list[str] = []
    for atom, _ in form.terms:
        for n in ([atom] if isinstance(atom, str) else _ordered_names(atom.inner)):
            if n not in out:
                out.append(n)
    return out


def _stacked(group: list[Access], forms: list[Affine], names: list[str], ranges: dict[str, int]):
    """Accesses whose indices differ only below the scope loops' strides, as one index.

    ``out[i*7 + j]`` in one inner loop and ``out[i*7 + j_o*4 + j_i]`` (guarded ``< 7``) in
    another both add 0..6 to ``i*7``: the index ``i*7 + _inner`` with ``_inner`` in 0..6 stands
    for both. Returns (that index, the range of ``_inner``), or None if the parts over the scope
    and outer variables differ.
    """
    inner = set(ranges) - set(names)
    fixed, low, high = None, [], []
    for access, form in zip(group, forms):
        moving, rest = form.split(inner)
        if fixed is not None and Affine.of(dict(rest.terms)) != fixed:
            return None
        fixed = Affine.of(dict(rest.terms))
        guards = [g for cond in access.conds for g in guards_of(cond)]
        span = bounds(moving, ranges, guards)
        if span is None:
            return None
        low.append(span[0] + rest.const)
        high.append(span[1] + rest.const)
    size = max(high) - min(low) + 1
    return fixed + Affine((("_inner", 1),), min(low)), {"_inner": size}


def _accumulates(group: list[Access]) -> bool:
    """Whether every write is ``b[f] = combine(b[f], e)`` with one combiner and ``e`` not reading b."""
    stores = [a.stmt for a in group if a.store]
    if not all(isinstance(s, Store) for s in stores):
        return False
    combiners = {_combiner(s) for s in stores}
    loads_ = [a for a in group if not a.store]
    return None not in combiners and len(combiners) == 1 and len(loads_) == len(stores)


def _combiner(store: Store) -> str | None:
    value = store.value
    if isinstance(value, Binary) and value.op in ACCUMULATORS:
        first = value.a
    elif isinstance(value, Call) and value.fn in ACCUMULATORS and len(value.args) == 2:
        first = value.args[0]
    else:
        return None
    if isinstance(first, Load) and first.buffer is store.buffer and affine(first.index) == affine(store.index):
        return value.op if isinstance(value, Binary) else value.fn
    return None
