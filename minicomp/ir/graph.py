"""The graph IR: a dataflow graph of ops over ``networkx.MultiDiGraph``.

Each value is a ``Node``: an op from the op table, its attributes, its static ``TensorType``, a
unique name and the user's source line. An edge ``producer -> user`` carries the operand index
as its key, so ``x * x`` is two parallel edges (keys 0 and 1) and operand order is never lost.

The API keeps the graph consistent by construction (the torch.fx way):

* ``add_input`` / ``add_constant`` / ``add_op`` infer the new node's type through the op table
  and refuse operands that do not fit, naming the op, the shapes and the source line;
* ``node.replace_all_uses_with(other)`` moves every use (outputs included) in one step;
* ``erase(node)`` refuses while the node still has users or is an output;
* ``verify()`` re-checks every invariant and says how to fix what it finds.

Passes read operands and the topological order over and over, so the graph keeps both (and
what ``verify`` last found sound) up to date as it is edited through this API. An edit made
directly on ``graph.nx`` is invisible to those caches until the next ``verify()``, which reads
the edges themselves and rebuilds them.

``str(graph)`` is the text form (``minicomp.ir.text``), ``Graph.parse`` reads it back, and
``to_dot`` draws the graph for Graphviz.
"""

from __future__ import annotations

import heapq
import itertools
import re
from typing import Iterable, Iterator

import networkx as nx
import numpy as np

from ..errors import GraphError, MinicompError, at
from .dtypes import TensorType
from .ops import OPS, Kind, fill_attrs, get_op


def in_edges(g: nx.MultiDiGraph, node) -> list[tuple[int, "Node"]]:
    """``(operand index, operand)`` for every edge into ``node``, in no particular order.

    Reads networkx's adjacency dicts (``g._pred[node]`` is ``{operand: {key: data}}``) rather
    than ``g.in_edges(node, keys=True)``, whose view objects cost about five times as much:
    this is the innermost loop of ``verify`` and of operand lookups.
    """
    return [(key, src) for src, keys in g._pred[node].items() for key in keys]


def topological_order(g: nx.MultiDiGraph) -> list["Node"] | None:
    """The nodes in topological order, ties broken by creation order; None if there is a cycle.

    The same order as ``nx.lexicographical_topological_sort(g, key=lambda n: n.index)``, several
    times faster because it reads the adjacency dicts directly (see ``in_edges``). Usually every
    operand was created before its users; then creation order is the answer (networkx keeps the
    nodes in insertion order). Otherwise: Kahn's algorithm with a heap of the ready nodes.
    """
    in_creation_order = _in_creation_order(g)
    if in_creation_order is not None:
        return in_creation_order
    waiting: dict = {}  # node -> how many of its incoming edges come from unplaced nodes
    ready = []  # (index, tie-break, node): a broken graph may hold another graph's node
    tiebreak = itertools.count()
    for node, producers in g._pred.items():
        count = sum(len(keys) for keys in producers.values())
        if count:
            waiting[node] = count
        else:
            ready.append((node.index, next(tiebreak), node))
    heapq.heapify(ready)
    order = []
    while ready:
        node = heapq.heappop(ready)[2]
        order.append(node)
        for user, keys in g._succ[node].items():
            left = waiting[user] - len(keys)
            if left:
                waiting[user] = left
            else:
                del waiting[user]
                heapq.heappush(ready, (user.index, next(tiebreak), user))
    return order if len(order) == len(g) else None


def _in_creation_order(g: nx.MultiDiGraph) -> list["Node"] | None:
    """The nodes in insertion order if that is creation order and every edge runs forward in
    it (then it is the tie-broken topological order: each next node is ready, and the smallest
    ready one); None otherwise."""
    nodes = list(g)
    previous = -1
    for node in nodes:
        if node.index <= previous:
            return None
        previous = node.index
        for operand in g._pred[node]:
            if operand.index >= node.index:
                return None
    return nodes


def node_fingerprint(node: "Node", operand_types: list[TensorType]) -> tuple:
    """What the type check of ``node`` depends on: its op, type, operand types, attribute dict
    and attribute values (see ``minicomp.ir.verify``: unchanged, the check needs no re-run)."""
    return (node.op, node.type, tuple(operand_types), node.attrs, tuple(node.attrs.values()))


def same_fingerprint(old: tuple | None, new: tuple) -> bool:
    """Equal op, type and operand types; the very same attribute dict holding the very same
    values. Attributes compare by identity: ``==`` on arrays is elementwise, and a dict edited
    in place is still equal to itself, while its values snapshot is not."""
    if old is None:
        return False
    return (old[0] == new[0] and old[1] == new[1] and old[2] == new[2] and old[3] is new[3]
            and len(old[4]) == len(new[4]) and all(a is b for a, b in zip(old[4], new[4])))


class Node:
    """One value of a graph: ``%name = op(operands) {attrs} : type  # loc``.

    Nodes are created by the ``Graph`` (never directly) and compare by identity.
    """

    __slots__ = ("graph", "op", "attrs", "type", "name", "loc", "index", "meta")

    def __init__(self, graph: "Graph", op: str, attrs: dict, type: TensorType, name: str,
                 loc: str | None, index: int):
        self.graph = graph
        self.op = op
        self.attrs = attrs
        self.type = type
        self.name = name
        self.loc = loc
        self.index = index  # creation order: a stable tie-break for topological order
        self.meta: dict = {}  # free space for analyses (costs, fusion groups, ...)

    @property
    def operands(self) -> list["Node"]:
        """The operand nodes, in order (a node used twice appears twice).

        Read from the edges once and remembered by the graph until an edit changes them.
        """
        known = self.graph._operands.get(self)
        if known is None:
            edges = sorted(in_edges(self.graph.nx, self), key=lambda edge: edge[0])
            known = self.graph._operands[self] = tuple(src for _, src in edges)
        return list(known)

    @property
    def users(self) -> list[tuple["Node", int]]:
        """``(user, operand index)`` for every use of this node, in a stable order."""
        uses = [(dst, key) for dst, keys in self.graph.nx._succ[self].items() for key in keys]
        return sorted(uses, key=lambda use: (use[0].index, use[1]))

    @property
    def kind(self) -> Kind:
        """The op's pattern kind (elemwise, broadcast, ...)."""
        opdef = OPS.get(self.op)  # (asked for every node by every pass: no call in the common case)
        return (opdef or get_op(self.op)).kind  # get_op names the known ops in its KeyError

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> np.dtype:
        return self.type.dtype

    def replace_all_uses_with(self, new: "Node") -> None:
        """Make every user of ``self`` (and every graph output) use ``new`` instead."""
        self.graph.replace_all_uses(self, new)

    def describe(self) -> str:
        """``%add_1 (add at model.py:12)``: how error messages name a node."""
        return f"%{self.name} ({self.op}{at(self.loc)})"

    def __repr__(self) -> str:
        return f"<Node %{self.name} = {self.op} : {self.type}>"


class Graph:
    """A dataflow graph of ``Node`` s with ordered inputs and outputs.

    >>> g = Graph("double")
    >>> x = g.add_input("x", TensorType((4,), "f32"))
    >>> g.set_outputs([g.add_op("add", [x, x])])
    >>> print(g)
    graph double(%x: f32[4]) {
      %add = add(%x, %x) : f32[4]
      return %add
    }
    """

    def __init__(self, name: str = "main"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.inputs: list[Node] = []
        self.outputs: list[Node] = []
        # input number -> output number: the traced function wrote into that argument (a KV
        # cache); jit copies the output into the caller's array after each call
        self.updated_inputs: dict[int, int] = {}
        self._counter = itertools.count()
        self._names: set[str] = set()
        # Caches, kept right by the editing methods below (an edit behind their back, through
        # ``self.nx``, must be followed by ``verify()``, which rebuilds them from the edges):
        self._order: list[Node] | None = []  # topological order (see ``nodes``); None: unknown
        self._operands: dict[Node, tuple[Node, ...]] = {}  # node -> its operands, in order
        # node -> its fingerprint when last found sound (by add_op or verify; see ``verify``):
        self._fingerprints: dict[Node, tuple] = {}

    # -- building -------------------------------------------------------------------------------

    def add_input(self, name: str, type: TensorType, loc: str | None = None) -> Node:
        """Append a graph argument of the given type."""
        node = self._new_node("input", {"type": type}, type, name, loc)
        self.inputs.append(node)
        self._fingerprints[node] = node_fingerprint(node, [])  # sound by construction
        return node

    def add_constant(self, value, name: str = "const", loc: str | None = None) -> Node:
        """Add a constant array (copied and made read-only)."""
        value = np.array(value, copy=True)
        return self.add_op("constant", [], {"value": value}, loc=loc, name=name)

    def add_op(self, op: str, operands: Iterable[Node], attrs: dict | None = None,
               loc: str | None = None, name: str | None = None) -> Node:
        """Add ``op(*operands)`` with ``attrs``; its type is inferred through the op table.

        Raises the op's ``ShapeError``/``DTypeError`` reworded to name the op, the operand
        types and ``loc``, e.g. ``add: shapes (3, 4) and (5,) cannot be broadcast together;
        operands f32[3,4], f32[5] (at model.py:12)``.
        """
        operands = list(operands)
        opdef = get_op(op)
        for operand in operands:
            if not isinstance(operand, Node) or operand.graph is not self:
                raise GraphError(f"{op}: operand {operand!r} is not a node of graph {self.name!r}")
        if opdef.arity is not None and len(operands) != opdef.arity:
            raise GraphError(f"{op} takes {opdef.arity} operand(s), got {len(operands)}{at(loc)}")
        types = [o.type for o in operands]
        try:
            full_attrs = fill_attrs(opdef, types, attrs or {})
            out_type = opdef.infer(types, full_attrs)
        except MinicompError as exc:
            raise type(exc)(
                f"{op}: {exc}; operands {', '.join(map(str, types)) or 'none'}{at(loc)}"
            ) from None
        node = self._new_node(op, full_attrs, out_type, name or op, loc)
        for index, operand in enumerate(operands):
            self.nx.add_edge(operand, node, key=index)
        self._operands[node] = tuple(operands)
        self._fingerprints[node] = node_fingerprint(node, types)  # add_op just type-checked it
        return node

    def set_outputs(self, outputs: Iterable[Node]) -> None:
        """Declare the graph's results, in order (a node may appear more than once)."""
        outputs = list(outputs)
        for out in outputs:
            if not isinstance(out, Node) or out.graph is not self:
                raise GraphError(f"output {out!r} is not a node of graph {self.name!r}")
        self.outputs = outputs

    def _new_node(self, op, attrs, type, name, loc) -> Node:
        node = Node(self, op, attrs, type, self._unique_name(name), loc, next(self._counter))
        self.nx.add_node(node)
        if self._order is not None:
            # Nothing uses the new node yet and its index is the largest: the tie-broken order
            # (see ``nodes``) places it last, and leaves every other node where it was.
            self._order.append(node)
        return node

    def _unique_name(self, base: str) -> str:
        base = re.sub(r"[^\w.]", "_", base) or "v"
        name, suffix = base, 1
        while name in self._names:
            name, suffix = f"{base}_{suffix}", suffix + 1
        self._names.add(name)
        return name

    # -- editing --------------------------------------------------------------------------------

    def set_operand(self, user: Node, index: int, new: Node) -> None:
        """Make ``user``'s operand ``index`` be ``new`` (types must agree, so users stay valid)."""
        old = user.operands[index]
        if new.type != old.type:
            raise GraphError(
                f"cannot replace {old.describe()} : {old.type} by {new.describe()} : {new.type} "
                f"in {user.describe()}: types differ"
            )
        self.nx.remove_edge(old, user, key=index)
        self.nx.add_edge(new, user, key=index)
        self._operands.pop(user, None)
        self._order = None

    def replace_all_uses(self, old: Node, new: Node) -> None:
        """Every use of ``old``, as an operand or an output, becomes a use of ``new``."""
        if old is new:
            return
        if new.type != old.type:
            raise GraphError(
                f"cannot replace {old.describe()} : {old.type} by {new.describe()} : {new.type}: "
                "types differ (insert a cast, reshape or broadcast first)"
            )
        for user, index in old.users:
            self.set_operand(user, index, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    def erase(self, node: Node) -> None:
        """Remove a node nobody uses; ``GraphError`` while it has users or is an output."""
        if node.users:
            users = ", ".join(u.describe() for u, _ in node.users)
            raise GraphError(f"cannot erase {node.describe()}: still used by {users}")
        if any(o is node for o in self.outputs):
            raise GraphError(f"cannot erase {node.describe()}: it is a graph output")
        if node.op == "input":
            raise GraphError(f"cannot erase {node.describe()}: it is a graph input")
        self.nx.remove_node(node)
        self._names.discard(node.name)
        self._operands.pop(node, None)
        self._order = None  # recomputed when asked (usually in one pass: see topological_order)

    # -- reading --------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """All nodes in topological order (ties broken by creation order, so it is stable).

        The order is computed once and kept up to date by the editing methods of this class:
        a new node goes last; ``set_operand`` and ``erase`` forget the order.
        """
        if self._order is None:
            order = topological_order(self.nx)
            if order is None:
                raise GraphError(f"graph {self.name!r} has a cycle")
            self._order = order
        return list(self._order)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes())

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def op_nodes(self) -> list[Node]:
        """The nodes that compute something (not inputs or constants), topologically."""
        return [n for n in self.nodes() if n.kind is not Kind.SOURCE]

    def find(self, name: str) -> Node:
        """The node called ``name`` (with or without the leading ``%``)."""
        name = name.lstrip("%")
        for node in self.nx:
            if node.name == name:
                return node
        raise GraphError(f"no node named %{name} in graph {self.name!r}")

    # -- checking, printing ---------------------------------------------------------------------

    def verify(self, incremental: bool = False) -> "Graph":
        """Check every invariant; raise ``GraphError`` listing all problems, or return ``self``.

        ``incremental=True`` re-runs the shape and dtype rules only for the nodes that changed
        since the last successful ``verify`` (see ``minicomp.ir.verify``); the structure is
        always checked in full.
        """
        from .verify import verify

        # Forget the caches: a test (or a buggy pass) may have edited ``self.nx`` directly.
        # ``verify`` reads the edges themselves, and fills the caches again when they are sound.
        self._order = None
        self._operands = {}
        verify(self, incremental)
        return self

    def to_text(self, elide_constants_over: int | None = 16, locations: bool = True) -> str:
        """The text form; constants over ``elide_constants_over`` elements are elided (as their
        SHA-256); ``locations=False`` leaves out every ``# file:line``."""
        from .text import print_graph

        return print_graph(self, elide_constants_over, locations)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self)} nodes>"

    @classmethod
    def parse(cls, text: str) -> "Graph":
        """Read the text form back (``Graph.parse(g.to_text(None))`` reprints identically)."""
        from .text import parse_graph

        return parse_graph(text)

    def to_dot(self) -> str:
        """Graphviz DOT source of the graph (render with ``dot -Tsvg``)."""
        from .text import graph_to_dot

        return graph_to_dot(self)

    def copy(self) -> "Graph":
        """A deep copy (constant arrays are shared: they are read-only).

        Every node is cloned as it is, attributes and type included (not re-inferred through
        ``add_op``: a copy of a sound graph is sound, and a copy of a broken one is as broken,
        for ``verify`` to report). A clone of a node known sound is known sound.
        """
        new = Graph(self.name)
        mapping: dict[Node, Node] = {}
        for node in self.nodes():
            clone = new._new_node(node.op, dict(node.attrs), node.type, node.name, node.loc)
            operands = tuple(mapping[o] for o in node.operands)
            for index, operand in enumerate(operands):
                new.nx.add_edge(operand, clone, key=index)
            new._operands[clone] = operands
            types = [o.type for o in operands]
            if same_fingerprint(self._fingerprints.get(node), node_fingerprint(node, types)):
                new._fingerprints[clone] = node_fingerprint(clone, types)  # sound as the original
            clone.meta = dict(node.meta)
            mapping[node] = clone
        new.inputs = [mapping[i] for i in self.inputs]
        new.outputs = [mapping[o] for o in self.outputs]
        new.updated_inputs = dict(self.updated_inputs)
        return new
