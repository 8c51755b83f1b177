"""Graph statistics: op histogram, FLOPs and bytes moved, per node and in total.

Bytes are counted as if every op were its own kernel (the eager picture the seed article starts
from): a node reads each distinct operand once and writes its result once. Injective ops (views
in NumPy) are counted as copies, which is what they cost once they must be materialised.
FLOPs: one per output element for elementwise ops, one per input element for reductions,
``2*M*N*K`` for matmul and ``2*N*O*OH*OW*(C/groups)*R*S`` for conv2d.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


from .ir.graph import Graph, Node
from .ir.ops import Kind, conv2d_dims


@dataclass
class NodeStats:
    node: Node
    flops: int
    bytes_read: int
    bytes_written: int


def node_flops(node: Node) -> int:
    """Floating-point (or integer) operations to compute ``node`` once."""
    kind = node.kind
    if kind in (Kind.ELEMWISE, Kind.BROADCAST) and node.op != "broadcast_to":
        return node.type.size
    if kind is Kind.REDUCTION:
        return node.operands[0].type.size
    if node.op == "matmul":
        a, b = (o.shape for o in node.operands)
        k = a[-1]
        return 2 * node.type.size * k
    if node.op == "conv2d":
        x, w = (o.shape for o in node.operands)
        d = conv2d_dims(x, w, node.attrs)
        return 2 * node.type.size * (d["C"] // node.attrs["groups"]) * d["R"] * d["S"]
    return 0


def node_stats(node: Node) -> NodeStats:
    """FLOPs and bytes read/written by ``node`` as a kernel of its own."""
    distinct = {id(o): o for o in node.operands}.values()
    read = sum(o.type.nbytes for o in distinct)
    return NodeStats(node, node_flops(node), read, node.type.nbytes)


@dataclass
class GraphStats:
    nodes: list[NodeStats]
    histogram: Counter

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.nodes)

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.nodes)

    @property
    def bytes_written(self) -> int:
        return sum(s.bytes_written for s in self.nodes)


def graph_stats(graph: Graph) -> GraphStats:
    """Statistics of every computing node of ``graph`` (inputs and constants excluded)."""
    nodes = [node_stats(n) for n in graph.op_nodes()]
    return GraphStats(nodes, Counter(n.op for n in graph.op_nodes()))


def minimum_bytes(graph: Graph) -> int:
    """Bytes any implementation must move: read every input and constant, write every output."""
    sources = sum(n.type.nbytes for n in graph.nodes() if n.kind is Kind.SOURCE and n.users)
    return sources + sum(o.type.nbytes for o in {id(o): o for o in graph.outputs}.values())


def human(n: float, unit: str = "B") -> str:
    """``1536 -> '1.5 KB'`` (powers of 1000, as bandwidth figures are quoted)."""
    for prefix in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or prefix == "T":
            return f"{n:.0f} {prefix}{unit}" if prefix == "" else f"{n:.1f} {prefix}{unit}"
        n /= 1000
    return f"{n} {unit}"


def format_stats(graph: Graph) -> str:
    """A printable report: per-node table, op histogram and totals."""
    stats = graph_stats(graph)
    rows = [f"{'node':<24} {'op':<12} {'type':<22} {'FLOPs':>10} {'read':>10} {'written':>10}"]
    for s in stats.nodes:
        rows.append(f"%{s.node.name:<23} {s.node.op:<12} {str(s.node.type):<22} {human(s.flops, ''):>10} "
                    f"{human(s.bytes_read):>10} {human(s.bytes_written):>10}")
    hist = ", ".join(f"{op} x{count}" for op, count in sorted(stats.histogram.items()))
    total = stats.bytes_read + stats.bytes_written
    lines = rows + [
        "",
        f"ops: {len(stats.nodes)} ({hist})",
        f"FLOPs: {human(stats.flops, 'FLOP')}",
        f"bytes read: {human(stats.bytes_read)}, written: {human(stats.bytes_written)}, "
        f"total: {human(total)} (one kernel per op)",
        f"minimum bytes (inputs + outputs once): {human(minimum_bytes(graph))}",
    ]
    if stats.flops and total:
        lines.append(f"arithmetic intensity: {stats.flops / total:.2f} FLOP/byte (one kernel per op)")
    return "\n".join(lines)
