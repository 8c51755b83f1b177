"""Common-subexpression elimination: compute each distinct value once."""

from __future__ import annotations

import hashlib

import numpy as np

from ..ir.graph import Graph, Node
from .pipeline import register_pass

#: Ops whose two operands may be swapped without changing a single bit of the result.
#: Not maximum/minimum: NumPy's np.maximum(-0.0, 0.0) and np.maximum(0.0, -0.0) differ in sign.
COMMUTATIVE = frozenset({"add", "mul", "eq", "ne", "logical_and", "logical_or"})


@register_pass("cse")
def cse(graph: Graph) -> Graph:
    """Merge nodes that compute the same value: same op, same operands, equal attributes.

    Requires: a verified graph.
    Guarantees: no two nodes have the same key (``_key``); the first node of each key (in
    topological order) stays and takes over the uses of the others, which are erased. Equal
    constants (same dtype, shape and bytes) are merged too; the operands of a commutative op
    are compared in sorted order, so ``a + b`` and ``b + a`` merge.

        before:  %d = sub(%x, %mean) : f32[4,8]
                 %d_1 = sub(%x, %mean) : f32[4,8]
                 %sq = mul(%d, %d_1) : f32[4,8]
        after:   %d = sub(%x, %mean) : f32[4,8]
                 %sq = mul(%d, %d) : f32[4,8]
    """
    first: dict[tuple, Node] = {}
    for node in graph.nodes():  # operands before users: a user's key sees merged operands
        if node.op == "input":
            continue
        key = _key(node)
        if key in first:
            graph.replace_all_uses(node, first[key])
            graph.erase(node)
        else:
            first[key] = node
    return graph


def _key(node: Node) -> tuple:
    """What makes two nodes compute the same value."""
    if node.op == "constant":
        value = node.attrs["value"]
        digest = hashlib.sha256(np.ascontiguousarray(value).data).hexdigest()
        return ("constant", value.dtype.str, value.shape, digest)
    operands = node.operands
    if node.op in COMMUTATIVE:
        operands = sorted(operands, key=lambda o: o.index)
    attrs = tuple(sorted((name, _hashable(v)) for name, v in node.attrs.items()))
    return (node.op, tuple(operands), attrs)


def _hashable(value):
    """Attribute values are ints, floats, bools, None, strings, dtypes and tuples of them."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value
