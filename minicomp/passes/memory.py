"""Memory planning: intermediates share workspace storage by liveness, some ops run in place.

Pass ``memory_plan``. **Requires** the graph exactly as it will be lowered, so it runs *last*,
after fusion: one kernel per computing node, run in the order of ``graph.op_nodes()`` (the
order lowering emits kernels in). **Guarantees** no node, edge or attribute changes; only
``node.meta`` is written:

* every intermediate (a computing node that is not a graph output) gets
  ``meta["storage"] = (offset, nbytes)``, a byte range of the workspace, 64-byte aligned; two
  values alive at the same time never overlap, except an in-place pair (below), which shares
  exactly the same bytes;
* a node computed in place of one of its operands gets ``meta["inplace_of"] = operand name``.

Lowering (``minicomp.lower.program``) places buffers at these offsets and sizes the workspace
to the plan. Graph inputs, array constants and graph outputs are not planned: they are the
caller's arrays::

    before:  %a = exp(%x)   %b = sin(%a)   %c = cos(%b)   %d = tanh(%c)    # a, b, c: 3 buffers
    after:   the same graph; %a at 0, %b at 0 in place of %a, %c at 0 in place of %b
             (one buffer; without in-place two: %c reuses %a's bytes once %a is dead)

The algorithm is interval scheduling over byte ranges (the *dynamic storage allocation*
problem, NP-hard in general: Garey & Johnson, *Computers and Intractability*, problem SR2),
solved greedily as TFLite's GPU planner does: Pisarchyk & Lee, "Efficient Memory Management
for Deep Neural Net Inference", 2020, *greedy by size for offset calculation*. Liveness is the
textbook analysis of live variables (Aho, Lam, Sethi, Ullman, *Compilers*, 2nd ed., §9.2.5)
on straight-line code:

1. **Liveness.** Number the kernels 0, 1, ... in execution order. A value is live over the
   closed interval ``[step of the kernel that writes it, step of the last kernel that reads
   it]`` (a value nobody reads: just its own step). An operand whose last reader is kernel
   ``t`` is still live *during* ``t``, so the output of ``t`` never lands on it by accident.
2. **In place.** Walking the kernels in order, a value that may be written over one of its
   operands (see below) joins that operand's *chain*; a chain is planned as one value, live
   from its first value's first step to its last value's last step.
3. **Placement, largest first.** Sort the chains by size, largest first (ties: earliest
   first). For each, look at the byte ranges already given to chains whose intervals overlap
   its own (those it must not touch) and put it in the *best-fitting gap* between them: the
   smallest hole, at a 64-byte-aligned offset, that is large enough; if none is, just after
   the highest of them. Values never live together may share bytes (dtype-agnostic: an ``f32``
   buffer may later hold ``i32`` or ``bool`` data).
4. The workspace needs ``max(offset + nbytes)`` bytes. Should the chains laid one after
   another in execution order (no reuse) need fewer (this happens with a few values of some
   bytes each, through alignment padding), that is the plan: it is never worse than none.

Large values first is what makes the greedy good: they fix the layout, and the small ones fill
the holes they leave. ``MemoryReport.peak_live_bytes`` (the most bytes ever live at once) is a
lower bound on any plan; on the nine workloads the plan meets it.

**In place** is legal for kernel ``t`` computing ``n`` from operand ``o`` when:

* ``n`` is elementwise or broadcast (pattern kind ELEMWISE/BROADCAST: every output element
  ``i`` is computed from operand elements read in the same loop iteration, before ``out[i]`` is
  stored). Reductions, matmul and conv (which accumulate into the output while still reading
  their operands) and injective data movement (``transpose``: ``out[i]`` reads ``o[j]``,
  ``j != i``) are never in place. A ``"fused"`` node (kind OPAQUE) is treated as opaque, and so
  never in place, unless ``node.attrs["pattern"] == "elemwise"`` (one loop over the output,
  one store per element) *and* every op of its body is elementwise or broadcast: an
  ``elemwise`` group may also hold injective ops (a transpose inside would read ``o[j]`` while
  writing ``out[i]``). Then an operand with the output's shape is read at the output's own
  index only (broadcasting never shrinks a shape, so every value computed from it inside the
  body has the output's shape too), as for a single elementwise op. The ``reduce``, ``row``,
  ``epilogue`` and ``attention`` patterns never run in place (``epilogue`` zeroes its output
  row before reading the epilogue's operands);
* ``o`` is an intermediate whose last reader is ``t``;
* ``o`` has the output's shape (it is not broadcast: a broadcast operand is read at many
  output indices) and dtype (hence byte size; equal dtypes also keep C's type-based alias
  analysis out of the picture).

The aliasing reaches the C renderer: lowering records the kernel parameters whose workspace
bytes overlap in ``Kernel.aliases``, and ``CRenderer`` drops ``restrict`` on those (with
``restrict`` the C compiler may assume the two pointers never meet and miscompile).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Graph, Node
from ..ir.ops import Kind
from ..ir.symbolic import shape_symbols
from .pipeline import register_pass

ALIGNMENT = 64  # bytes: every workspace buffer starts on a cache line


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def intermediates(graph: Graph) -> list[Node]:
    """The computing nodes that are not graph outputs, in execution order: what needs planning.

    Values of symbolic size (dynamic dimensions) are left out: lowering places them after the
    planned ones, one after another (their offsets are expressions of the sizes).
    """
    outputs = set(graph.outputs)
    return [n for n in graph.op_nodes() if n not in outputs and not shape_symbols(n.shape)]


def live_intervals(graph: Graph) -> dict[Node, tuple[int, int]]:
    """``value -> (first step, last step)`` over kernel steps, for every intermediate.

    Step ``t`` is the ``t``-th node of ``graph.op_nodes()``; the interval is closed: the value
    is written at its first step and last read at its last step.
    """
    step = {node: t for t, node in enumerate(graph.op_nodes())}
    return {v: (step[v], max([step[v]] + [step[user] for user, _ in v.users]))
            for v in intermediates(graph)}


def may_run_in_place(node: Node) -> bool:
    """Whether ``node``'s kernel reads each same-shaped operand element only at the index it
    writes, before writing it (elementwise and broadcast ops; see the module docstring)."""
    if node.op == "fused":  # one loop over the output, reading operands through the body
        body = node.attrs.get("body")
        return node.attrs.get("pattern") == "elemwise" and body is not None and all(
            inner.kind in (Kind.ELEMWISE, Kind.BROADCAST) for inner in body.op_nodes())
    return node.kind in (Kind.ELEMWISE, Kind.BROADCAST)


@register_pass("memory_plan")
def memory_plan(graph: Graph, in_place: bool = True) -> Graph:
    """Assign workspace storage to every intermediate; see the module docstring.

    ``in_place=False`` plans by liveness alone (no op writes over its operand).
    """
    for node in graph.nodes():  # a plan made before a rewrite must not survive it
        node.meta.pop("storage", None)
        node.meta.pop("inplace_of", None)
    intervals = live_intervals(graph)  # 1. liveness

    chain_of: dict[Node, Node] = {}  # 2. in place: value -> first value of its chain
    for t, node in enumerate(graph.op_nodes()):
        if node not in intervals or node.type.nbytes == 0:  # (size 0: no bytes to place)
            continue
        donor = _in_place_donor(node, t, intervals, chain_of) if in_place else None
        chain_of[node] = chain_of[donor] if donor is not None else node
        if donor is not None:
            node.meta["inplace_of"] = donor.name
    spans: dict[Node, tuple[int, int]] = {}  # chain -> (first step, last step)
    for value, head in chain_of.items():
        first, last = spans.get(head, intervals[value])
        spans[head] = (min(first, intervals[value][0]), max(last, intervals[value][1]))

    offset_of = _largest_first(spans)  # 3.
    one_after_another, end = {}, 0  # 4. no reuse at all, in execution order
    for head in spans:
        one_after_another[head] = _align(end)
        end = one_after_another[head] + head.type.nbytes
    if end < _end(offset_of):
        offset_of = one_after_another

    for value in intervals:
        offset = offset_of[chain_of[value]] if value in chain_of else 0
        value.meta["storage"] = (offset, value.type.nbytes)
    return graph


def _largest_first(spans: dict[Node, tuple[int, int]]) -> dict[Node, int]:
    """Offsets: each chain, largest first, in the best-fitting gap among those live with it."""
    placed: list[tuple[int, int, tuple[int, int]]] = []  # (offset, end, span)
    offset_of: dict[Node, int] = {}
    for head in sorted(spans, key=lambda h: (-h.type.nbytes, spans[h])):
        busy = sorted((start, end) for start, end, span in placed if _overlap(span, spans[head]))
        offset_of[head] = _best_gap(busy, head.type.nbytes)
        placed.append((offset_of[head], offset_of[head] + head.type.nbytes, spans[head]))
    return offset_of


def _end(offset_of: dict[Node, int]) -> int:
    """The bytes a placement needs."""
    return max((offset + head.type.nbytes for head, offset in offset_of.items()), default=0)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether two closed intervals share a point."""
    return a[0] <= b[1] and b[0] <= a[1]


def _best_gap(busy: list[tuple[int, int]], nbytes: int) -> int:
    """The aligned offset of the smallest hole of at least ``nbytes`` between the byte ranges
    ``busy`` (sorted by start; they may overlap each other), else the end of the highest."""
    best = None  # (hole size, offset)
    free_from = 0
    for start, end in busy:
        if start - free_from >= nbytes and (best is None or start - free_from < best[0]):
            best = (start - free_from, free_from)
        free_from = max(free_from, _align(end))
    return best[1] if best else free_from


def _in_place_donor(node: Node, t: int, intervals, chain_of) -> Node | None:
    """The operand whose bytes ``node`` may be written over at step ``t`` (None: no such)."""
    if not may_run_in_place(node):
        return None
    for operand in node.operands:
        if (operand in chain_of and intervals[operand][1] == t
                and operand.shape == node.shape and operand.dtype == node.dtype):
            return operand
    return None


@dataclass
class MemoryReport:
    """Workspace bytes for a graph's intermediates without and with the memory plan.

    * ``unplanned_bytes``: one buffer per intermediate, each on its own cache line (the sum of
      all intermediates: what lowering allocates without a plan);
    * ``planned_bytes``: the workspace the plan needs (``max(offset + nbytes)``);
    * ``peak_live_bytes``: the most bytes live at any one kernel (an in-place pair counted
      once): no plan can do with less;
    * ``values``, ``slots``, ``in_place``: intermediates, distinct offsets (storage slots), values
      computed in place of an operand.
    """

    values: int
    unplanned_bytes: int
    planned_bytes: int
    peak_live_bytes: int
    slots: int
    in_place: int

    def __str__(self) -> str:
        from ..stats import human

        saved = 1 - self.planned_bytes / self.unplanned_bytes if self.unplanned_bytes else 0.0
        return (f"intermediates: {self.values}, workspace {human(self.unplanned_bytes)} -> "
                f"{human(self.planned_bytes)} ({saved:.0%} less; lower bound "
                f"{human(self.peak_live_bytes)}), {self.slots} slot(s), {self.in_place} in place")


def memory_report(graph: Graph) -> MemoryReport:
    """What the memory plan of ``graph`` saves (planning a copy first if it has no plan)."""
    values = intermediates(graph)
    if any("storage" not in v.meta for v in values):
        return memory_report(memory_plan(graph.copy()))
    unplanned = 0
    for v in values:  # exactly as lowering places buffers without a plan
        unplanned = _align(unplanned) + v.type.nbytes
    intervals = live_intervals(graph)
    live_at = [0] * len(graph.op_nodes())
    for v, (first, last) in intervals.items():
        handed_over = any(u.meta.get("inplace_of") == v.name for u, _ in v.users)
        for t in range(first, last if handed_over else last + 1):  # donor's bytes: its user's
            live_at[t] += v.type.nbytes
    storages = {v.meta["storage"] for v in values if v.type.nbytes > 0}
    return MemoryReport(
        values=len(values),
        unplanned_bytes=unplanned,
        planned_bytes=max((offset + nbytes for offset, nbytes in storages), default=0),
        peak_live_bytes=max(live_at, default=0),
        slots=len({offset for offset, _ in storages}),
        in_place=sum("inplace_of" in v.meta for v in values),
    )
