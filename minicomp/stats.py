"""Graph statistics: op histogram, FLOPs and bytes moved, per node and in total.

Every computing node is one kernel: a single op (the eager picture the seed article starts
from) or a ``fused`` node (one kernel for a whole group of ops). A kernel reads each distinct
operand once and writes its result once, so a fused node counts only its own operands and
output: the intermediates of its body never reach memory. Injective ops (views in NumPy) are
counted as copies, which is what they cost once they must be materialised.
FLOPs: one per output element for elementwise ops, one per input element for reductions,
``2*M*N*K`` for matmul and ``2*N*O*OH*OW*(C/groups)*R*S`` for conv2d; a fused node's FLOPs are
its body's.

``kernel_summary(graph)`` gives the kernel count and the estimated bytes moved: compare the
traced graph (one kernel per op) with the optimised one to see what fusion saves.
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
    if node.op == "fused":  # one kernel computing its whole body
        return sum(node_flops(n) for n in node.attrs["body"].op_nodes())
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
    """FLOPs and bytes read/written by ``node`` as a kernel of its own.

    A ``fused`` node is one kernel: it reads its distinct operands once and writes its output
    once (its body's intermediates stay in registers and caches).
    """
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


@dataclass
class KernelSummary:
    """What running a graph costs, kernel by kernel: one kernel per computing node."""

    kernels: int
    flops: int
    bytes_read: int
    bytes_written: int

    @property
    def bytes_moved(self) -> int:
        """Estimated memory traffic: every kernel reads its operands and writes its result."""
        return self.bytes_read + self.bytes_written

    def __str__(self) -> str:
        return (f"{self.kernels} kernel{'s' if self.kernels != 1 else ''}, "
                f"{human(self.bytes_moved)} moved, {human(self.flops, 'FLOP')}")


def kernel_summary(graph: Graph) -> KernelSummary:
    """Kernel count (computing nodes) and estimated bytes moved by ``graph``.

    On a traced graph that is one kernel per op; after fusion a fused node counts once, with
    only its operands and output as traffic (``node_stats``).
    """
    stats = graph_stats(graph)
    return KernelSummary(len(stats.nodes), stats.flops, stats.bytes_read, stats.bytes_written)


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
    fused = stats.histogram.get("fused", 0)
    kernels = f"{len(stats.nodes)} kernel{'s' if len(stats.nodes) != 1 else ''}"
    per = "one kernel per op" if not fused else f"{kernels}, {fused} of them fused"
    lines = rows + [
        "",
        f"ops: {len(stats.nodes)} ({hist})",
        f"FLOPs: {human(stats.flops, 'FLOP')}",
        f"bytes read: {human(stats.bytes_read)}, written: {human(stats.bytes_written)}, "
        f"total: {human(total)} ({per})",
        f"minimum bytes (inputs + outputs once): {human(minimum_bytes(graph))}",
    ]
    if stats.flops and total:
        lines.append(f"arithmetic intensity: {stats.flops / total:.2f} FLOP/byte ({per})")
    return "\n".join(lines)
