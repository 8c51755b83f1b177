"""Rematerialisation: store a value shared by several kernels once, or recompute it in each.

When the fusion plan makes a cheap value ``b`` (an elementwise kernel) feed ``k`` other kernels,
there are two ways to run it:

* **store**: one kernel computes ``b`` and writes it; each of the ``k`` consumers reads it.
  Cost: ``bytes(b) * (1 + k)`` moved through memory.
* **recompute**: each consumer computes ``b`` itself from ``b``'s inputs (fused into it).
  Cost: ``k - 1`` extra evaluations of ``b``'s ops, plus reading ``b``'s inputs ``k`` times.

Mixed answers exist too: store an intermediate of ``b``'s kernel and recompute the rest. The
choice is a **minimum cut** (as in functorch's partitioner): every value ``n`` of ``b``'s
kernel becomes two vertices ``n_in -> n_out`` joined by an edge whose capacity is the cost of
storing ``n``; the source feeds each ``n_in`` with the cost of recomputing ``n`` in every
consumer; ``b_out`` drains into the sink (the consumers need ``b``). Values on the source side
of the cut stay in ``b``'s kernel, cut ``n_in -> n_out`` edges are stored, values on the sink
side are recomputed inside each consumer. FLOPs are weighed against bytes by ``BYTES_PER_FLOP``
(the machine balance: a copy moves ~25 GB/s while vector units do ~100 GFLOP/s), and
transcendental functions count as several FLOPs (``FLOP_WEIGHT``).

The pass only duplicates nodes; fusion (which runs after it) then fuses each copy into its
consumer. ``plan_remat(graph)`` returns the decisions with their numbers for ``explain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ..ir.graph import Graph, Node
from ..ir.ops import Kind
from .fusion import INLINABLE, find_groups, is_scalar_constant
from .pipeline import register_pass

BYTES_PER_FLOP = 0.25
FLOP_WEIGHT = {"exp": 8, "log": 8, "tanh": 8, "erf": 8, "sigmoid": 8, "sin": 8, "cos": 8,
               "pow": 16, "sqrt": 4, "rsqrt": 4, "div": 4, "floordiv": 4, "mod": 4}
INFINITE = float("inf")


@dataclass
class RematDecision:
    """What the cut decided for one shared value and what it cost."""

    value: str
    consumers: int
    store_bytes: float  # cost of storing the value itself
    cut_cost: float  # cost of the cheapest plan (bytes-equivalent)
    recomputed: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        choice = (f"recompute {', '.join(self.recomputed)} in each of {self.consumers} kernels"
                  if self.recomputed else f"store it once, read by {self.consumers} kernels")
        return (f"%{self.value}: {choice} (store {self.store_bytes:,.0f} B vs best plan "
                f"{self.cut_cost:,.0f} B-equivalent)")


def recompute_cost(node: Node, extra: int) -> float:
    """Bytes-equivalent of computing ``node`` ``extra`` more times (its FLOPs and input reads)."""
    flops = FLOP_WEIGHT.get(node.op, 1) * node.type.size
    reads = sum(o.type.nbytes for o in node.operands if o.kind is Kind.SOURCE and not is_scalar_constant(o))
    return extra * (flops * BYTES_PER_FLOP + reads)


def _candidates(graph: Graph):
    """Shared values of elementwise-only kernels: (value, its kernel's nodes, consumer count)."""
    groups = find_groups(graph)
    group_of = {n: g for g in groups for n in g.nodes}
    outputs = set(graph.outputs)
    for group in groups:
        value = group.root
        consumers = {id(group_of[u]) for u, _ in value.users}
        if value in outputs or len(consumers) < 2 or any(n.kind not in INLINABLE for n in group.nodes):
            continue
        if any(not _recomputable_in(value, group_of[u]) for u, _ in value.users):
            continue  # one consumer needs it in memory anyway: copies would be stored too
        yield value, group.nodes, len(consumers)


def _recomputable_in(value: Node, consumer) -> bool:
    """Whether fusion would inline a copy of ``value`` into the ``consumer`` group. Not into an
    attention kernel, nor as a matmul/conv2d operand (read many times, never recomputed): such
    a consumer reads ``value`` from memory, so it is stored whatever the other consumers do."""
    users = [u for u, _ in value.users if u in consumer.nodes]
    return consumer.pattern != "attention" and not any(u.kind is Kind.OUT_EW_FUSABLE for u in users)


def min_cut(value: Node, nodes: set, consumers: int) -> tuple[float, set, set]:
    """The cheapest plan for ``value``: (cost, nodes recomputed, nodes stored)."""
    flow = nx.DiGraph()
    for node in nodes:
        store = node.type.nbytes * (1 + consumers)
        flow.add_edge("source", ("in", node), capacity=recompute_cost(node, consumers - 1))
        flow.add_edge(("in", node), ("out", node), capacity=store)
        for user, _ in node.users:
            if user in nodes:
                flow.add_edge(("out", node), ("in", user), capacity=INFINITE)
    flow.add_edge(("out", value), "sink", capacity=INFINITE)
    cost, (source_side, sink_side) = nx.minimum_cut(flow, "source", "sink")
    recomputed = {n for n in nodes if ("in", n) in sink_side}
    stored = {n for n in nodes if ("in", n) in source_side and ("out", n) in sink_side}
    return cost, recomputed, stored


def plan_remat(graph: Graph) -> list[RematDecision]:
    """The decision for every shared value of an elementwise kernel (nothing is changed)."""
    decisions = []
    for value, nodes, consumers in _candidates(graph):
        cost, recomputed, stored = min_cut(value, nodes, consumers)
        decisions.append(RematDecision(value.name, consumers, value.type.nbytes * (1 + consumers), cost,
                                       sorted(n.name for n in recomputed), sorted(n.name for n in stored)))
    return decisions


def duplicate_into_users(graph: Graph, value: Node, recomputed: set, consumer_of=None) -> None:
    """Give each consumer kernel of ``value`` its own copy of the ``recomputed`` nodes it
    depends on. ``consumer_of(user)`` names the kernel (fusion group) of a user: the users in one
    kernel, and the operands of one user (``e * e``), share one copy (default: one per user)."""
    order = [n for n in graph.nodes() if n in recomputed]
    copies_for: dict[object, dict[Node, Node]] = {}
    for user, index in value.users:
        key = consumer_of(user) if consumer_of is not None else user
        copies = copies_for.get(key)
        if copies is None:
            copies = copies_for[key] = {}
            for node in order:
                operands = [copies.get(o, o) for o in node.operands]
                copies[node] = graph.add_op(node.op, operands, node.attrs, node.loc, f"{node.name}_re")
        graph.set_operand(user, index, copies[value])
    for node in reversed(order):
        if not node.users:
            graph.erase(node)


@register_pass("remat")
def rematerialize(graph: Graph) -> Graph:
    """Recompute shared cheap values inside their consumers where the min cut says it is cheaper.

    Requires: a verified graph (run before fusion). Guarantees: the same results; only
    elementwise values shared by several kernels are duplicated, one copy per consumer.

        %e = exp(%x)                    %e_re = exp(%x)      (fused into the first consumer)
        %a = sum(%e) ; %b = max(%e)  -> %e_re_1 = exp(%x)    (fused into the second)
    """
    for decision in plan_remat(graph):
        if decision.recomputed and decision.value in {n.name for n in graph.nodes()}:
            value = graph.find(decision.value)
            recomputed = {graph.find(name) for name in decision.recomputed}
            group_of = {n: id(g) for g in find_groups(graph) for n in g.nodes}
            duplicate_into_users(graph, value, recomputed, group_of.__getitem__)
    return graph


def explain_remat(graph: Graph) -> list[str]:
    """One printable line per decision (see ``RematDecision``)."""
    return [str(d) for d in plan_remat(graph)]
