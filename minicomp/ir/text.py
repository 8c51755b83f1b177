"""The text form of a graph: printing, parsing, and Graphviz DOT.

One line per node, in topological order, MLIR-like::

    graph mlp(%x: f32[256,1024], %w1: f32[1024,4096]) {
      %const = constant() {value=0.0} : f32[]
      %matmul = matmul(%x, %w1) : f32[256,4096]  # model.py:12
      %maximum = maximum(%matmul, %const) : f32[256,4096]  # model.py:12
      return %maximum
    }

Attribute values are ints, floats, ``true``/``false``, ``none``, ``"strings"``, dtypes
(``f32``), lists ``[1,2]`` (read back as tuples), and for constants the array: a nested list
when small, ``base64"..."`` (raw little-endian bytes) when large, or ``<elided sha256:…>`` when
the printer was asked to leave big constants out (such text cannot be parsed back).
The trailing ``# file:line`` is the user's source line, kept on its line: a backslash or a
character that is not printable (a newline in a file name) is escaped as in a Python string.

``parse_graph(print_graph(g, None))`` rebuilds the graph so that it prints identically.
"""

from __future__ import annotations

import base64
import hashlib
import re

import numpy as np

from ..errors import MinicompError, ParseError
from .dtypes import DTYPES, TensorType, short_name, to_dtype
from .graph import Graph, Node
from .symbolic import Sym

# ----------------------------------------------------------------------------------------------
# Printing
# ----------------------------------------------------------------------------------------------


def print_graph(graph: Graph, elide_constants_over: int | None = 16, locations: bool = True) -> str:
    """The text form of ``graph``; constants with more elements than the limit are elided;
    without ``locations``, no ``# file:line`` (what the graph computes, wherever it was traced).

    The bodies of ``fused`` nodes are printed first, as graphs of their own that the node
    names with ``body=@name`` (like TVM's primitive functions after FuseOps).
    """
    bodies = [print_graph(body, elide_constants_over, locations) for body in subgraphs(graph)]
    return "\n\n".join(bodies + [_print_one(graph, elide_constants_over, locations)])


def subgraphs(graph: Graph) -> list[Graph]:
    """The graphs held in node attributes (bodies of fused nodes), in order of first use."""
    found: dict[int, Graph] = {}
    for node in graph.nodes():
        for value in node.attrs.values():
            if isinstance(value, Graph):
                found.setdefault(id(value), value)
    return list(found.values())


def _print_one(graph: Graph, elide_constants_over: int | None, locations: bool = True) -> str:
    params = ", ".join(f"%{i.name}: {i.type}" for i in graph.inputs)
    lines = [f"graph {format_graph_name(graph.name)}({params}) {{"]
    for node in graph.nodes():
        if node.op != "input":
            lines.append("  " + print_node(node, elide_constants_over, locations))
    lines.append("  return " + ", ".join(f"%{o.name}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def print_node(node: Node, elide_constants_over: int | None = 16, locations: bool = True) -> str:
    """``%name = op(%a, %b) {k=v} : type  # loc`` (``# loc`` only with ``locations``)."""
    operands = ", ".join(f"%{o.name}" for o in node.operands)
    attrs = ""
    if node.attrs:
        items = []
        for key, value in node.attrs.items():
            if key == "value":
                items.append(f"value={_format_array(value, elide_constants_over)}")
            else:
                items.append(f"{key}={format_attr(value)}")
        attrs = " {" + ", ".join(items) + "}"
    loc = f"  # {format_loc(node.loc)}" if node.loc and locations else ""
    return f"%{node.name} = {node.op}({operands}){attrs} : {node.type}{loc}"


def format_loc(loc: str) -> str:
    """A source location as the text form writes it, on one line: a backslash and every
    character that is not printable escaped as Python does (a newline becomes ``\\n``)."""
    return "".join(ch if ch.isprintable() and ch != "\\" else ascii(ch)[1:-1] for ch in loc)


_LOC_ESCAPE = re.compile(r'\\(\\|"|n|r|t|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')


def parse_loc(text: str) -> str:
    """The location ``format_loc`` wrote as ``text`` (a backslash starting no escape stays)."""
    def unescape(match: re.Match) -> str:
        code = match.group(1)
        simple = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}
        return simple[code] if code in simple else chr(min(int(code[1:], 16), 0x10FFFF))

    return _LOC_ESCAPE.sub(unescape, text)


def format_graph_name(name: str) -> str:
    """A graph's name as the text form writes it: as is when it is a plain name (letters,
    digits, ``_``, ``.``), else in double quotes, escaped as ``format_loc`` does (and ``\\"``):
    ``graph mlp(...)``, ``graph "my model-v2"(...)``."""
    if re.fullmatch(r"[\w.]+", name):
        return name
    return '"' + format_loc(name).replace('"', '\\"') + '"'


def parse_graph_name(text: str) -> str:
    """The name ``format_graph_name`` wrote as ``text``."""
    return parse_loc(text[1:-1]) if text.startswith('"') else text


def format_attr(value) -> str:
    """One attribute value in the text form (the parser reads it back exactly)."""
    if value is None:
        return "none"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, np.dtype):
        return short_name(value)
    if isinstance(value, TensorType):
        return f"type<{value}>"
    if isinstance(value, Graph):
        return f"@{format_graph_name(value.name)}"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, Sym):  # a symbolic size (printed only: attributes do not parse it back yet)
        return str(value).replace(" ", "")
    raise ParseError(f"attribute value {value!r} has no text form")


def _format_scalar(value) -> str:
    if value.dtype == np.bool_:
        return "true" if value else "false"
    return str(value)  # NumPy prints the shortest text that reads back to the same value


def _format_array(value: np.ndarray, elide_over: int | None) -> str:
    if elide_over is not None and value.size > elide_over:
        digest = hashlib.sha256(value.tobytes()).hexdigest()[:16]
        return f"<elided sha256:{digest}>"
    if value.size > 16:
        raw = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
        return 'base64"' + base64.b64encode(raw).decode("ascii") + '"'

    def nested(v):
        if v.ndim == 0:
            return _format_scalar(v[()])
        return "[" + ",".join(nested(item) for item in v) + "]"

    return nested(value)


# ----------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------

_HEADER = re.compile(r'graph\s+([\w.]+|"(?:[^"\\]|\\.)*")\s*\((.*)\)\s*\{$')
_PARAM = re.compile(r"%([\w.]+)\s*:\s*(\w+\[[\d,\s]*\])")
_NODE = re.compile(r"%([\w.]+)\s*=\s*(\w+)\((.*?)\)\s*(\{.*\})?\s*:\s*(\w+\[[\d,\s]*\])\s*(?:#\s*(.*))?$")
_RETURN = re.compile(r"return\s+(.*)$")


def parse_graph(text: str) -> Graph:
    """Read a graph from its text form; ``ParseError`` naming the line on malformed input.

    The text may hold several graphs: bodies of fused nodes come first, referred to as
    ``@name``; the last graph is the one returned.
    """
    lines = [(i + 1, ln.strip()) for i, ln in enumerate(text.strip().splitlines()) if ln.strip()]
    if not lines:
        raise ParseError("empty text: expected 'graph NAME(...) {'")
    graphs: dict[str, Graph] = {}
    while True:
        end = next((k for k, (_, line) in enumerate(lines) if line == "}"), len(lines) - 1)
        graph = _parse_one(lines[:end + 1], graphs)
        lines = lines[end + 1:]
        if not lines:
            return graph
        graphs[graph.name] = graph


def _parse_one(lines: list[tuple[int, str]], graphs: dict[str, Graph]) -> Graph:
    lineno, header = lines[0]
    match = _HEADER.match(header)
    if not match:
        raise ParseError(f"line {lineno}: expected 'graph NAME(%x: f32[...], ...) {{', got {header!r}")
    graph = Graph(parse_graph_name(match.group(1)))
    env: dict[str, Node] = {}
    for name, type_text in _PARAM.findall(match.group(2)):
        env[name] = graph.add_input(name, _parse_type(type_text, lineno))
    for lineno, line in lines[1:]:
        if line == "}":
            break
        if line.startswith("return"):
            if not _RETURN.match(line):
                raise ParseError(f"line {lineno}: 'return' needs the returned values, e.g. 'return %y'")
            names = _RETURN.match(line).group(1)
            graph.set_outputs([_lookup(env, n, lineno) for n in _split_names(names)])
            continue
        node = _parse_node_line(graph, env, line, lineno, graphs)
        env[node.name] = node
    else:
        raise ParseError("missing closing '}'")
    if not graph.outputs:
        raise ParseError(f"line {lineno}: missing 'return' line before the closing '}}'")
    return graph


def _parse_node_line(graph: Graph, env: dict, line: str, lineno: int, graphs: dict) -> Node:
    match = _NODE.match(line)
    if not match:
        raise ParseError(f"line {lineno}: expected '%name = op(%a, ...) {{attrs}} : type', got {line!r}")
    name, op, operand_text, attr_text, type_text, loc = match.groups()
    declared = _parse_type(type_text, lineno)
    if op == "input":
        raise ParseError(f"line {lineno}: inputs are declared in the header: graph NAME(%{name}: {declared})")
    if name in env:
        raise ParseError(f"line {lineno}: %{name} is defined twice")
    operands = [_lookup(env, n, lineno) for n in _split_names(operand_text)]
    attrs = _AttrReader(attr_text[1:-1] if attr_text else "", lineno, graphs).read_dict(declared)
    try:
        node = graph.add_op(op, operands, attrs, loc=parse_loc(loc.strip()) if loc else None, name=name)
    except (MinicompError, KeyError) as exc:
        raise ParseError(f"line {lineno}: {exc.args[0] if isinstance(exc, KeyError) else exc}") from None
    except (TypeError, ValueError) as exc:  # an attribute value of the wrong kind
        raise ParseError(f"line {lineno}: {op}: bad attribute value in {attrs}: {exc}") from None
    if node.name != name:
        raise ParseError(f"line {lineno}: %{name} is defined twice")
    if node.type != declared:
        raise ParseError(f"line {lineno}: %{name} is declared {declared} but {op} gives {node.type}")
    return node


def _split_names(text: str) -> list[str]:
    return [n.strip().lstrip("%") for n in text.split(",") if n.strip()]


def _lookup(env: dict, name: str, lineno: int) -> Node:
    if name not in env:
        raise ParseError(f"line {lineno}: %{name} is used before it is defined")
    return env[name]


def _parse_type(text: str, lineno: int) -> TensorType:
    try:
        return TensorType.parse(text)
    except MinicompError as exc:
        raise ParseError(f"line {lineno}: {exc}") from None


class _AttrReader:
    """A small recursive-descent reader for ``key=value, ...`` attribute lists."""

    _TOKEN = re.compile(r'\s*(base64"[^"]*"|@?"(?:[^"\\]|\\.)*"|<elided[^>]*>|type<[^>]*>|[\[\],=]'
                        r"|@?[-+\w.]+)")

    def __init__(self, text: str, lineno: int, graphs: dict | None = None):
        self.lineno = lineno
        self.graphs = graphs or {}
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[str]:
        tokens, pos = [], 0
        while pos < len(text):
            match = self._TOKEN.match(text, pos)
            if not match:
                if text[pos:].strip() == "":
                    break
                raise ParseError(f"line {self.lineno}: cannot read attributes at {text[pos:]!r}")
            tokens.append(match.group(1))
            pos = match.end()
        return tokens

    def _next(self) -> str:
        if self.pos >= len(self.tokens):
            raise ParseError(f"line {self.lineno}: attributes end too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _peek(self) -> str:
        if self.pos >= len(self.tokens):
            raise ParseError(f"line {self.lineno}: attributes end too early")
        return self.tokens[self.pos]

    def _expect(self, token: str) -> None:
        got = self._next()
        if got != token:
            raise ParseError(f"line {self.lineno}: expected {token!r} in attributes, got {got!r}")

    def read_dict(self, declared: TensorType) -> dict:
        attrs = {}
        while self.pos < len(self.tokens):
            key = self._next()
            self._expect("=")
            attrs[key] = self._array(declared) if key == "value" else self._value()
            if self.pos < len(self.tokens):
                self._expect(",")
        return attrs

    def _value(self):
        token = self._next()
        if token == "[":
            items = []
            while self._peek() != "]":
                items.append(self._value())
                if self._peek() == ",":
                    self.pos += 1
            self.pos += 1
            return tuple(items)
        if token.startswith("@"):
            name = parse_graph_name(token[1:])
            if name not in self.graphs:
                raise ParseError(f"line {self.lineno}: {token} names no graph printed before it")
            return self.graphs[name]
        if token.startswith('"'):
            return re.sub(r"\\(.)", r"\1", token[1:-1])
        if token.startswith("type<"):
            return _parse_type(token[5:-1], self.lineno)
        if token in ("true", "false"):
            return token == "true"
        if token == "none":
            return None
        if token in DTYPES:
            return to_dtype(token)
        try:
            return int(token)
        except ValueError:
            pass
        try:
            return float(token)
        except ValueError:
            raise ParseError(f"line {self.lineno}: cannot read attribute value {token!r}") from None

    def _array(self, declared: TensorType) -> np.ndarray:
        token = self._peek()
        if token.startswith("<elided"):
            raise ParseError(
                f"line {self.lineno}: this constant was elided when printed; print the graph "
                "with graph.to_text(elide_constants_over=None) to keep its data"
            )
        if token.startswith('base64"'):
            self.pos += 1
            try:
                raw = base64.b64decode(token[7:-1])
            except ValueError as exc:
                raise ParseError(f"line {self.lineno}: cannot read constant data: {exc}") from None
            little = declared.dtype.newbyteorder("<")
            if len(raw) != declared.size * little.itemsize:
                raise ParseError(f"line {self.lineno}: constant data does not match type {declared}")
            return np.frombuffer(raw, little).astype(declared.dtype).reshape(declared.shape)
        flat = self._flat_scalars()
        try:
            if declared.dtype == np.bool_:
                if set(flat) - {"true", "false"}:
                    raise ValueError("bool values are written true or false")
                values = np.array([s == "true" for s in flat], dtype=np.bool_)
            else:
                values = np.array([declared.dtype.type(s) for s in flat], dtype=declared.dtype)
        except (ValueError, OverflowError) as exc:
            raise ParseError(f"line {self.lineno}: cannot read a constant of type {declared}: {exc}") from None
        if values.size != declared.size:
            raise ParseError(f"line {self.lineno}: constant has {values.size} values but type {declared}")
        return values.reshape(declared.shape)

    def _flat_scalars(self) -> list[str]:
        token = self._next()
        if token != "[":
            return [token]
        flat = []
        while self._peek() != "]":
            flat += self._flat_scalars()
            if self._peek() == ",":
                self.pos += 1
        self.pos += 1
        return flat


# ----------------------------------------------------------------------------------------------
# Graphviz
# ----------------------------------------------------------------------------------------------

_COLORS = {"source": "lightgrey", "elemwise": "lightblue", "broadcast": "lightblue",
           "injective": "khaki", "reduction": "salmon", "out_ew_fusable": "palegreen",
           "opaque": "white"}


def graph_to_dot(graph: Graph) -> str:
    """DOT source: one box per node (op, name, type), edges labelled with operand indices."""
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes())}
    quoted = graph.name.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'digraph "{quoted}" {{', "  rankdir=TB;",
             '  node [shape=box, style=filled, fontname="monospace"];']
    for node, ident in ids.items():
        label = f"{node.op}\\n%{node.name}\\n{node.type}"
        lines.append(f'  {ident} [label="{label}", fillcolor={_COLORS[node.kind.value]}];')
    for node, ident in ids.items():
        for index, operand in enumerate(node.operands):
            lines.append(f'  {ids[operand]} -> {ident} [label="{index}"];')
    for index, out in enumerate(graph.outputs):
        lines.append(f'  out{index} [label="output {index}", shape=oval, fillcolor=white];')
        lines.append(f"  {ids[out]} -> out{index};")
    lines.append("}")
    return "\n".join(lines)
