"""``verify(graph)``: check every invariant of the graph IR and explain each violation.

Invariants:

1. every node's op is in the op table and it has the op's number of operands;
2. operand edges are keyed 0..n-1 without gaps, so operand order is defined;
3. operands belong to the graph and the graph has no cycle;
4. every node's attributes are canonical and its stored type is what the op's shape and dtype
   rule infers from its operands (passes that rewrite must keep types exact);
5. inputs are exactly the ``input`` nodes, outputs are nodes of the graph, names are unique.

All problems are collected and raised together in one ``GraphError``.

Checking invariant 4 means running each op's shape and dtype rule again: most of the cost.
``incremental=True`` (what the pass pipeline uses after every pass, and tracing at its end)
skips it for a node whose *fingerprint* (``graph.node_fingerprint``: its op, type, operand
types, attribute dict and each attribute value) is the one it had when last found sound:
by ``Graph.add_op``, which runs the same rules on every node it creates, by ``Graph.copy`` of a
sound node, or by an earlier ``verify``. A node whose ``op``, ``attrs``, ``type`` or an
operand's type was assigned behind the API's back has a new fingerprint and is checked in
full. The only edit it cannot see is one that mutates a mutable attribute *value* in place
(canonical values are ints, tuples and read-only arrays, which cannot be); edges, cycles,
inputs, outputs and names are always checked in full. ``incremental=False`` (the default of
``Graph.verify``) re-derives every node.
"""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np

from ..errors import GraphError, MinicompError
from .graph import in_edges, node_fingerprint, same_fingerprint, topological_order
from .ops import OPS, fill_attrs


def verify(graph, incremental: bool = False) -> None:
    """Raise ``GraphError`` listing every broken invariant of ``graph``; return None if sound.

    Edges and order are read from ``graph.nx`` itself, never from the graph's cached operand
    lists and order; those of a sound graph, and its node fingerprints, are handed back to the
    graph (``Graph.verify`` empties the caches first), so verifying after every pass does not
    make the next pass recompute them. ``incremental``: see the module docstring.
    """
    problems: list[str] = []
    operands: dict = {}
    fingerprints: dict = {}
    previous = graph._fingerprints if incremental else {}
    for node in graph.nx:
        problems += _check_node(graph, node, operands, fingerprints, previous)
    order, structure_problems = _check_structure(graph)
    problems += structure_problems
    if problems:
        lines = "\n  - ".join(problems)
        raise GraphError(f"graph {graph.name!r} failed verification:\n  - {lines}")
    graph._operands = operands
    graph._order = order
    graph._fingerprints = fingerprints


def _check_node(graph, node, operand_lists: dict, fingerprints: dict, previous: dict) -> list[str]:
    """The problems of one node. When it is sound, records its operands in ``operand_lists`` and
    its fingerprint in ``fingerprints``; ``previous`` holds those of the last sound verify."""
    if node.op not in OPS:
        return [f"{node.describe()}: unknown op {node.op!r}; register it in minicomp.ir.ops"]
    opdef = OPS[node.op]
    edges = sorted(in_edges(graph.nx, node), key=lambda edge: edge[0])
    keys = [key for key, _ in edges]
    if keys != list(range(len(keys))):
        return [f"{node.describe()}: operand indices {keys} are not 0..{len(keys) - 1}; "
                "use Graph.set_operand"]
    if opdef.arity is not None and len(keys) != opdef.arity:
        return [f"{node.describe()}: has {len(keys)} operand(s) but {node.op} takes {opdef.arity}"]
    operands = tuple(src for _, src in edges)
    operand_lists[node] = operands
    foreign = [o for o in operands if o.graph is not graph]
    if foreign:
        return [f"{node.describe()}: operand {foreign[0].describe()} belongs to another graph"]
    types = [o.type for o in operands]
    fingerprint = node_fingerprint(node, types)
    if same_fingerprint(previous.get(node), fingerprint):
        fingerprints[node] = fingerprint
        return []
    try:
        canonical = fill_attrs(opdef, types, node.attrs)
        inferred = opdef.infer(types, canonical)
    except MinicompError as exc:
        shown = ", ".join(map(str, types))
        return [f"{node.describe()}: operands {shown} no longer fit the op: {exc}"]
    problems = []
    if not _same_attrs(canonical, node.attrs):
        problems.append(f"{node.describe()}: attributes {node.attrs} are not canonical "
                        f"(expected {canonical}); create nodes through Graph.add_op")
    if inferred != node.type:
        problems.append(f"{node.describe()}: stored type {node.type} but its operands give "
                        f"{inferred}; a rewrite changed an operand's type without updating this node")
    if not problems:
        fingerprints[node] = fingerprint
    return problems


def _same_attrs(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):  # never ``array != list``
            if (type(x) is not type(y) or x.shape != y.shape or x.dtype != y.dtype
                    or x.tobytes() != y.tobytes()):
                return False
        elif x != y:
            return False
    return True


def _check_structure(graph) -> tuple[list | None, list[str]]:
    """The topological order (None if there is a cycle) and the graph-wide problems."""
    problems = []
    order = topological_order(graph.nx)  # the order ``Graph.nodes`` uses; None: a cycle
    if order is None:
        cycle = nx.find_cycle(graph.nx)
        problems.append("cycle through " + " -> ".join(f"%{u.name}" for u, *_ in cycle)
                        + "; a node cannot depend on itself")
    input_nodes = {n for n in graph.nx if n.op == "input"}
    if set(graph.inputs) != input_nodes or len(graph.inputs) != len(input_nodes):
        problems.append("graph.inputs does not list each input node exactly once; "
                        "add inputs with Graph.add_input")
    if not graph.outputs:
        problems.append("graph has no outputs; call Graph.set_outputs")
    for out in graph.outputs:
        if out not in graph.nx:
            problems.append(f"output %{out.name} is not a node of the graph (was it erased?)")
    duplicates = sorted(name for name, count in Counter(n.name for n in graph.nx).items() if count > 1)
    if duplicates:
        problems.append(f"duplicate node names {duplicates}; names must be unique")
    return order, problems
