"""``verify(graph)``: check every invariant of the graph IR and explain each violation.

Invariants:

1. every node's op is in the op table and it has the op's number of operands;
2. operand edges are keyed 0..n-1 without gaps, so operand order is defined;
3. operands belong to the graph and the graph has no cycle;
4. every node's attributes are canonical and its stored type is what the op's shape and dtype
   rule infers from its operands (passes that rewrite must keep types exact);
5. inputs are exactly the ``input`` nodes, outputs are nodes of the graph, names are unique.

All problems are collected and raised together in one ``GraphError``.
"""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np

from ..errors import GraphError, MinicompError
from .ops import OPS, fill_attrs


def verify(graph) -> None:
    """Raise ``GraphError`` listing every broken invariant of ``graph``; return None if sound."""
    problems: list[str] = []
    for node in graph.nx:
        problems += _check_node(graph, node)
    problems += _check_structure(graph)
    if problems:
        lines = "\n  - ".join(problems)
        raise GraphError(f"graph {graph.name!r} failed verification:\n  - {lines}")


def _check_node(graph, node) -> list[str]:
    where = node.describe()
    if node.op not in OPS:
        return [f"{where}: unknown op {node.op!r}; register it in minicomp.ir.ops"]
    opdef = OPS[node.op]
    keys = sorted(k for _, _, k in graph.nx.in_edges(node, keys=True))
    if keys != list(range(len(keys))):
        return [f"{where}: operand indices {keys} are not 0..{len(keys) - 1}; use Graph.set_operand"]
    if opdef.arity is not None and len(keys) != opdef.arity:
        return [f"{where}: has {len(keys)} operand(s) but {node.op} takes {opdef.arity}"]
    operands = node.operands
    foreign = [o for o in operands if o.graph is not graph]
    if foreign:
        return [f"{where}: operand {foreign[0].describe()} belongs to another graph"]
    types = [o.type for o in operands]
    try:
        canonical = fill_attrs(opdef, types, node.attrs)
        inferred = opdef.infer(types, canonical)
    except MinicompError as exc:
        shown = ", ".join(map(str, types))
        return [f"{where}: operands {shown} no longer fit the op: {exc}"]
    problems = []
    if not _same_attrs(canonical, node.attrs):
        problems.append(f"{where}: attributes {node.attrs} are not canonical (expected {canonical}); "
                        "create nodes through Graph.add_op")
    if inferred != node.type:
        problems.append(f"{where}: stored type {node.type} but its operands give {inferred}; "
                        "a rewrite changed an operand's type without updating this node")
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


def _check_structure(graph) -> list[str]:
    problems = []
    if not nx.is_directed_acyclic_graph(graph.nx):
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
    return problems
