"""Dead-code elimination: remove every node that no output depends on."""

from __future__ import annotations

from ..ir.graph import Graph
from .pipeline import register_pass


@register_pass("dce")
def dce(graph: Graph) -> Graph:
    """Erase the nodes whose values cannot reach a graph output.

    Requires: a verified graph.
    Guarantees: every remaining node is an output, an ancestor of one, or a graph input
    (inputs are the function's signature: they stay even when unused). Outputs are unchanged.

        before:  %e = exp(%x) : f32[4]
                 %y = neg(%x) : f32[4]
                 return %y
        after:   %y = neg(%x) : f32[4]          (%e computed nothing anybody reads)
    """
    live = set(graph.inputs)
    reached = list(graph.outputs)  # walk back from the outputs through operands
    while reached:
        node = reached.pop()
        if node not in live:
            live.add(node)
            reached.extend(node.operands)
    for node in reversed(graph.nodes()):  # users before their operands, so erase never refuses
        if node not in live:
            graph.erase(node)
    return graph
