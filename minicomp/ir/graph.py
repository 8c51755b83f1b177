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

``str(graph)`` is the text form (``minicomp.ir.text``), ``Graph.parse`` reads it back, and
``to_dot`` draws the graph for Graphviz.
"""

from __future__ import annotations

import itertools
import re
from typing import Iterable, Iterator

import networkx as nx
import numpy as np

from ..errors import GraphError, MinicompError, at
from .dtypes import TensorType
from .ops import Kind, fill_attrs, get_op


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
        """The operand nodes, in order (a node used twice appears twice)."""
        edges = self.graph.nx.in_edges(self, keys=True)
        return [src for src, _, _ in sorted(edges, key=lambda e: e[2])]

    @property
    def users(self) -> list[tuple["Node", int]]:
        """``(user, operand index)`` for every use of this node, in a stable order."""
        edges = self.graph.nx.out_edges(self, keys=True)
        return sorted(((dst, key) for _, dst, key in edges), key=lambda u: (u[0].index, u[1]))

    @property
    def kind(self) -> Kind:
        """The op's pattern kind (elemwise, broadcast, ...)."""
        return get_op(self.op).kind

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
        self._counter = itertools.count()
        self._names: set[str] = set()
        self._order: list[Node] | None = None  # topological order, until the next edit

    # -- building -------------------------------------------------------------------------------

    def add_input(self, name: str, type: TensorType, loc: str | None = None) -> Node:
        """Append a graph argument of the given type."""
        node = self._new_node("input", {"type": type}, type, name, loc)
        self.inputs.append(node)
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
        self._order = None
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
        self._order = None
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
        self._order = None

    # -- reading --------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """All nodes in topological order (ties broken by creation order, so it is stable).

        The order is computed once and kept until the graph is edited (every edit goes
        through this class, which forgets it).
        """
        if self._order is None:
            try:
                self._order = list(nx.lexicographical_topological_sort(self.nx, key=lambda n: n.index))
            except nx.NetworkXUnfeasible:
                raise GraphError(f"graph {self.name!r} has a cycle") from None
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

    def verify(self) -> "Graph":
        """Check every invariant; raise ``GraphError`` listing all problems, or return ``self``."""
        from .verify import verify

        self._order = None  # recompute: a test may have broken the graph through .nx directly
        verify(self)
        return self

    def to_text(self, elide_constants_over: int | None = 16) -> str:
        """The text form; constants over ``elide_constants_over`` elements are elided."""
        from .text import print_graph

        return print_graph(self, elide_constants_over)

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
        """A deep copy (constant arrays are shared: they are read-only)."""
        new = Graph(self.name)
        mapping: dict[Node, Node] = {}
        for node in self.nodes():
            if node.op == "input":
                clone = new.add_input(node.name, node.type, node.loc)
            else:
                clone = new.add_op(node.op, [mapping[o] for o in node.operands], node.attrs,
                                   node.loc, node.name)
            clone.meta = dict(node.meta)
            mapping[node] = clone
        new.inputs = [mapping[i] for i in self.inputs]
        new.outputs = [mapping[o] for o in self.outputs]
        return new
