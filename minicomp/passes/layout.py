"""Layout: run each chain of convolutions in NCHW or NHWC, whichever the cost model says is faster.

The idea
--------
A batch of images can be stored as ``x[n, c, h, w]`` (NCHW: every channel is a contiguous 2-D
picture) or as ``x[n, h, w, c]`` (NHWC: the channels of one pixel sit side by side). They hold the
same numbers in a different order, and ``np.transpose(x, (0, 2, 3, 1))`` turns one into the other.
``conv2d`` accepts both (an NCHW input with an OIHW weight, an NHWC input with an HWIO weight),
so the question is only which order makes *minicomp's loops* faster, and whether that gain pays
for the transposes needed where a chain of convolutions meets the rest of the program.

Why the layout matters here: ``minicomp.lower.program`` turns a conv2d into loops whose innermost
loop runs along the output's *last* axis, adding one weight times one input to a whole output
row (``accumulates_in_output``)::

    NCHW:  for n, o, oh:  for c, r, s:  for ow in 0..OW:             (inner loop along OW)
               out[n, o, oh, ow] += (inside(h, wi) ? x[n, c, h, wi] : 0) * w[o, c, r, s]
    NHWC:  for n, oh, ow: for c, r, s:  for o in 0..O:               (inner loop along O)
               out[n, oh, ow, o] += (inside(h, wi) ? x[n, h, wi, c] : 0) * w[r, s, c, o]

    with h = oh*sh + r - pt and wi = ow*sw + s - pl (input row and column; padding is 0)

gcc turns an inner loop into SIMD code (8 or 16 floats per instruction) only when every access in
it is contiguous or constant and no test in it depends on the loop variable. In NHWC that holds
(``x[...]`` and the padding test do not depend on ``o``; ``w`` and ``out`` are contiguous in ``o``)
unless ``groups`` splits the channels (then the input channel is ``o / (O/groups) * ...``). In
NCHW the test on the column ``wi`` changes with ``ow`` (only left/right padding makes gcc keep it;
the row test does not depend on ``ow``), and a stride > 1 reads ``x`` with gaps: either keeps the
loop scalar. So the model is:

* ``conv_ns = MACs * (NS_PER_MAC_VECTOR + NS_PER_INNER_LOOP / L)`` when the inner loop (length
  ``L``: ``OW`` in NCHW, ``O`` in NHWC) vectorises, ``MACs * NS_PER_MAC_SCALAR`` when it does not;
* ``transpose_ns = NS_PER_TRANSPOSED_BYTE * bytes`` for every transpose converting adds: the chain's
  inputs, its outputs (transposed back), its weights when they are arguments (constant weights
  are transposed at compile time, for free);
* a chain changes layout only when the other layout's convolutions plus the transposes are
  strictly cheaper. Elementwise ops cost the same in both layouts and are left out.

Calibration (gcc 12 -O3 -march=native, one thread of an AVX-512 Xeon, ``OMP_NUM_THREADS=1``,
single conv2d graphs through the C target; ns per multiply-accumulate):

    ====================================================  ===========  ===========
    conv (C -> O, 56x56, 3x3 unless said)                  NCHW ns/MAC  NHWC ns/MAC
    ====================================================  ===========  ===========
    64 -> 64, padding 1 (the conv_bn_relu workload)        0.8 - 1.2    0.097
    64 -> 64, padding 0                                    0.135        0.098
    64 -> 64, padding only top/bottom                      0.131        0.094
    64 -> 64, stride 2, padding 1                          0.76         0.100
    64 -> 4, 1x1, padding 0                                0.125        0.81
    64 -> 16 / 8 / 4, padding 1                            0.81 / 0.79  0.24 / 0.55 / 0.81
    64 -> 64, groups 4                                     1.13         0.75
    64 -> 64, groups 64 (depthwise)                        0.81         0.13
    ====================================================  ===========  ===========

A scalar loop costs ~0.8 ns/MAC, a vectorised one ~0.05 ns/MAC plus ~3 ns per start of the inner
loop (which is why a short ``O`` of 4 or 8 gains little). A transpose through the C target moves
0.1 - 0.3 ns/byte. The model gets every row above right but one: with groups 4 it sees two scalar
loops, calls it a tie and keeps NCHW, where NHWC measured 1.5x faster.

On the conv_bn_relu workload at "cpu" size (1x64x56x56, 64 3x3 filters, padding 1, batch norm,
ReLU; ``jit(passes=["layout"])`` against no passes) the graph took 93 - 103 ms in NCHW and
9 - 11 ms in NHWC, the transposes of x, w and the result included (one thread, median of 15, two
runs; on a machine loaded by other jobs 190 - 210 ms and 17 ms). The model predicts 92.5 ms and
11.6 ms. With the default pipeline (fusion included) it was 11 - 16 ms with this pass and
140 - 200 ms without (loaded machine). So by default the pass converts padded or strided
convolutions to NHWC and leaves unpadded stride-1 convolutions with few output channels in NCHW.
These constants describe the loops lowering makes *today*: if lowering learns to split off the
padded border, NCHW gets fast too and the model must be measured again.

What the pass does
------------------
1. ``find_chains``: the convolutions in one layout, plus the elementwise and broadcasting ops that
   read them (bias, batch norm, ReLU, residual adds), split into connected chains.
2. ``estimate``: the cost of each chain in both layouts (above).
3. ``convert_chain`` for the chains worth converting, in three local rewrites:

   * insert: ``conv2d(x, w)  ->  transpose(conv2d_nhwc(transpose(x), transpose(w)))``;
   * sink:   ``op(transpose(a), b)  ->  transpose(op(a, b'))``, where ``b'`` is ``b`` moved into
     the new layout (a per-channel ``(C, 1, 1)`` becomes ``(C,)``, a scalar stays);
   * cancel: ``transpose(transpose(x, p), q)  ->  transpose(x, p then q)``, which is ``x`` when
     the two undo each other.

Requires a verified graph; guarantees the same outputs, with the same shapes and dtypes (only the
inside of each converted chain changes layout). A graph without conv2d is left untouched.

Before / after (conv -> relu -> conv, constant weights)::

    %c1 = conv2d(%x, %w1) {layout="NCHW"} : f32[1,8,6,6]
    %r = maximum(%c1, %zero) : f32[1,8,6,6]
    %c2 = conv2d(%r, %w2) {layout="NCHW"} : f32[1,8,6,6]
  becomes
    %x_to_nhwc = transpose(%x) {perm=[0,2,3,1]} : f32[1,6,6,8]
    %c1_nhwc = conv2d(%x_to_nhwc, %w1_hwio) {layout="NHWC"} : f32[1,6,6,8]
    %r_nhwc = maximum(%c1_nhwc, %zero) : f32[1,6,6,8]
    %c2_nhwc = conv2d(%r_nhwc, %w2_hwio) {layout="NHWC"} : f32[1,6,6,8]
    %c2_to_nchw = transpose(%c2_nhwc) {perm=[0,3,1,2]} : f32[1,8,6,6]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import networkx as nx
import numpy as np

from ..ir.compute import arith_dtype
from ..ir.graph import Graph, Node
from ..ir.ops import Kind, conv2d_dims
from .pipeline import register_pass

LAYOUTS = ("NCHW", "NHWC")
#: np.transpose axes taking an activation from the other layout into this one
INTO = {"NHWC": (0, 2, 3, 1), "NCHW": (0, 3, 1, 2)}
#: np.transpose axes taking a weight into the form this layout's conv2d reads (OIHW <-> HWIO)
WEIGHT_INTO = {"NHWC": (2, 3, 1, 0), "NCHW": (3, 2, 0, 1)}
WEIGHT_NAME = {"NHWC": "hwio", "NCHW": "oihw"}

# The cost model (see the module docstring): nanoseconds on one core, measured.
NS_PER_MAC_SCALAR = 0.8  # inner loop not vectorised
NS_PER_MAC_VECTOR = 0.05  # inner loop vectorised ...
NS_PER_INNER_LOOP = 3.0  # ... plus this per start of the inner loop (short loops gain little)
NS_PER_TRANSPOSED_BYTE = 0.2  # a transpose kernel, per byte of its result


def other(layout: str) -> str:
    return "NHWC" if layout == "NCHW" else "NCHW"


def compose(first: tuple[int, ...], then: tuple[int, ...]) -> tuple[int, ...]:
    """``np.transpose(np.transpose(x, first), then) == np.transpose(x, compose(first, then))``."""
    return tuple(first[i] for i in then)


def is_identity(perm: tuple[int, ...]) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


# ----------------------------------------------------------------------------------------------
# Finding the chains
# ----------------------------------------------------------------------------------------------


@dataclass
class Chain:
    """Convolutions in ``layout`` and the elementwise ops that follow them, in graph order."""

    layout: str
    members: list[Node]

    @property
    def convs(self) -> list[Node]:
        return [n for n in self.members if n.op == "conv2d"]

    def __str__(self) -> str:
        ops = " -> ".join(f"%{n.name}" for n in self.members)
        others = len(self.members) - len(self.convs)
        return f"{self.layout} chain of {len(self.convs)} conv2d and {others} other ops: {ops}"


def find_chains(graph: Graph, layout: str) -> list[Chain]:
    """The chains of ``layout`` conv2d ops: each conv, plus every elementwise/broadcast op that reads
    a chain value and could follow it into the other layout (``can_follow``), connected ones together.
    """
    into = INTO[other(layout)]
    members: set[Node] = set()
    fed: set[Node] = set()  # outside values some conv of a chain reads: converting transposes them anyway
    order = graph.nodes()
    for node in order:
        if node.op == "conv2d" and node.attrs["layout"] == layout:
            members.add(node)
            if node.operands[0] not in members:
                fed.add(node.operands[0])
        elif can_follow(node, members, fed, into):
            members.add(node)
    position = {node: i for i, node in enumerate(order)}
    parts = nx.weakly_connected_components(graph.nx.subgraph(members))
    chains = [Chain(layout, sorted(part, key=position.__getitem__)) for part in parts]
    return sorted(chains, key=lambda c: position[c.members[0]])


def can_follow(node: Node, members: set[Node], fed: set[Node], into: tuple[int, ...]) -> bool:
    """Whether ``node`` can run in the chain's new layout: a 4-D elementwise/broadcast op reading a
    chain value, whose other full-size operands need no transpose of their own (they are chain
    values, constants, or inputs a conv of the chain reads anyway, like a residual connection).
    """
    if node.kind not in (Kind.ELEMWISE, Kind.BROADCAST) or node.op == "broadcast_to" or node.type.ndim != 4:
        return False
    if not any(o in members for o in node.operands):
        return False
    return all(o in members or o in fed or o.type.size < node.type.size or free_to_move(o, into)
               for o in node.operands)


def free_to_move(node: Node, perm: tuple[int, ...]) -> bool:
    """Whether ``transpose(node, perm)`` costs nothing at run time: one element, a constant
    (transposed now), or a transpose that ``perm`` undoes."""
    return (node.type.size == 1 or node.op == "constant"
            or (node.op == "transpose" and len(node.attrs["perm"]) == len(perm)  # a 3-D one may broadcast in
                and is_identity(compose(node.attrs["perm"], perm))))


# ----------------------------------------------------------------------------------------------
# The cost model
# ----------------------------------------------------------------------------------------------


def inner_loop(conv: Node, layout: str) -> tuple[int, bool]:
    """The innermost loop lowering gives ``conv`` in ``layout``: its length, and whether gcc
    vectorises it (see the module docstring)."""
    x, w = conv.operands
    d = conv2d_dims(x.shape, w.shape, conv.attrs)
    last = d["OW"] if layout == "NCHW" else d["O"]
    if conv.dtype.kind == "b" or arith_dtype(conv.dtype) != conv.dtype or last == 1:
        # no accumulation in the output row (lower.accumulates_in_output): a scalar accumulator
        # over the kernel width is the inner loop, in both layouts
        return d["S"], False
    if layout == "NCHW":
        (_, _, left, right), (_, stride_w) = conv.attrs["padding"], conv.attrs["strides"]
        return last, stride_w == 1 and left == right == 0
    groups = conv.attrs["groups"]
    return last, groups == 1 or groups == d["O"]  # else the input channel is o / (O/groups) ...


def conv_ns(conv: Node, layout: str) -> float:
    """Estimated nanoseconds (one core) of ``conv`` computed in ``layout``."""
    x, w = conv.operands
    d = conv2d_dims(x.shape, w.shape, conv.attrs)
    macs = d["N"] * d["O"] * d["OH"] * d["OW"] * (d["C"] // conv.attrs["groups"]) * d["R"] * d["S"]
    length, vectorised = inner_loop(conv, layout)
    return macs * (NS_PER_MAC_VECTOR + NS_PER_INNER_LOOP / length if vectorised else NS_PER_MAC_SCALAR)


def transposed_bytes(chain: Chain) -> int:
    """Bytes the transposes cost that converting ``chain`` to the other layout inserts."""
    members, target = set(chain.members), other(chain.layout)
    back = INTO[chain.layout]
    moved: dict[Node, int] = {}
    for node in chain.members:
        for index, operand in enumerate(node.operands):
            perm = WEIGHT_INTO[target] if node.op == "conv2d" and index == 1 else INTO[target]
            if operand not in members and not free_to_move(operand, perm):
                moved[operand] = operand.type.nbytes
        outside = [u for u, _ in node.users if u not in members and not free_to_move_user(u, back)]
        if outside or node in node.graph.outputs:
            moved[node] = node.type.nbytes  # transposed back for users outside the chain
    return sum(moved.values())


def free_to_move_user(user: Node, back: tuple[int, ...]) -> bool:
    """A user that transposes into the new layout anyway (it cancels with the transpose back)."""
    return user.op == "transpose" and is_identity(compose(back, user.attrs["perm"]))


@dataclass
class Estimate:
    """The cost model's verdict on one chain: estimated ns per layout, and the transposes' bytes."""

    chain: Chain
    conv_ns: dict[str, float]  # layout -> estimated time of the chain's convolutions
    transposed_bytes: int  # what converting to the other layout adds in transposes

    @property
    def ns(self) -> dict[str, float]:
        """Estimated ns of the chain staying as it is, and converted (transposes included)."""
        target = other(self.chain.layout)
        return {self.chain.layout: self.conv_ns[self.chain.layout],
                target: self.conv_ns[target] + NS_PER_TRANSPOSED_BYTE * self.transposed_bytes}

    @property
    def best(self) -> str:
        """The cheaper layout; the current one unless the other is strictly cheaper."""
        ns, target = self.ns, other(self.chain.layout)
        return target if ns[target] < ns[self.chain.layout] else self.chain.layout

    def __str__(self) -> str:
        lines = [str(self.chain)]
        for layout in LAYOUTS:
            loops = ", ".join(f"%{c.name}: L={length} {'vector' if vector else 'scalar'}"
                              for c in self.chain.convs for length, vector in [inner_loop(c, layout)])
            extra = "" if layout == self.chain.layout else f" (+ {self.transposed_bytes} bytes transposed)"
            lines.append(f"  {layout}: {self.ns[layout] / 1e6:9.3f} ms estimated{extra}  [inner loops {loops}]")
        lines.append(f"  -> {self.best}")
        return "\n".join(lines)


def estimate(chain: Chain) -> Estimate:
    """Cost both layouts of ``chain`` (see the module docstring for the model)."""
    return Estimate(chain, {layout: sum(conv_ns(c, layout) for c in chain.convs) for layout in LAYOUTS},
                    transposed_bytes(chain))


def estimates(graph: Graph) -> list[Estimate]:
    """The estimate of every chain of ``graph``, NCHW chains first."""
    return [estimate(chain) for layout in LAYOUTS for chain in find_chains(graph, layout)]


# ----------------------------------------------------------------------------------------------
# Converting a chain: insert, sink, cancel
# ----------------------------------------------------------------------------------------------


def renamed(node: Node, suffix: str) -> str:
    """``%conv2d -> conv2d_nhwc``, and ``%conv2d_nhwc -> conv2d_nchw`` (not ``conv2d_nhwc_nchw``)."""
    return re.sub(r"(_to)?_(nchw|nhwc|hwio|oihw)(_\d+)?$", "", node.name) + "_" + suffix.lower()


class Rewriter:
    """Makes the transposes and reshapes of one conversion: each at most once, constants folded,
    and remembers what it made (only those may be cancelled) and what may have become dead."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.made: dict[tuple, Node] = {}
        self.created: set[Node] = set()
        self.maybe_dead: set[Node] = set()

    def transpose(self, node: Node, perm: tuple[int, ...], layout: str) -> Node:
        """``np.transpose(node, perm)``, called ``%<node>_to_<layout>``; a new constant
        ``%<node>_<layout>`` when ``node`` is one."""
        if is_identity(perm):
            return node
        key = (node, "transpose", perm)
        if key not in self.made:
            if node.op == "constant":
                new = self.graph.add_constant(np.transpose(node.attrs["value"], perm),
                                              name=renamed(node, layout), loc=node.loc)
                self.maybe_dead.add(node)
            else:
                new = self.graph.add_op("transpose", [node], {"perm": perm}, loc=node.loc,
                                        name=renamed(node, "to_" + layout))
            self.made[key] = new
            self.created.add(new)
        return self.made[key]

    def reshape(self, node: Node, shape: tuple[int, ...], name: str) -> Node:
        """``np.reshape(node, shape)``, looking through an earlier reshape; a constant stays one."""
        while node.op == "reshape" and node.shape != shape:
            self.maybe_dead.add(node)
            node = node.operands[0]
        if node.shape == shape:
            return node
        key = (node, "reshape", shape)
        if key not in self.made:
            if node.op == "constant":
                new = self.graph.add_constant(node.attrs["value"].reshape(shape), name=name, loc=node.loc)
            else:
                new = self.graph.add_op("reshape", [node], {"shape": shape}, loc=node.loc, name=name)
            self.made[key] = new
            self.created.add(new)
        return self.made[key]

    def into(self, node: Node, perm: tuple[int, ...], layout: str) -> Node:
        """An operand broadcast against a 4-D value, moved into the new layout: ``b'`` such that
        ``transpose(b' broadcast to shape', perm undone) == b broadcast to shape``.

        A 4-D operand is transposed (the same node a conv of the chain may read). A shorter one
        is padded with leading 1s to 4-D and permuted; when only size-1 axes move that is a
        reshape, and leading 1s are dropped again (``(C, 1, 1) -> (C,)``).
        """
        if node.type.size == 1 and node.type.ndim <= 4:
            return node  # a scalar broadcasts the same in any layout
        if node.type.ndim == 4:
            return self.transpose(node, perm, layout)
        padded = (1,) * (4 - node.type.ndim) + node.shape
        moved = tuple(padded[p] for p in perm)
        if [a for a in perm if padded[a] != 1] == [a for a in range(4) if padded[a] != 1]:
            while len(moved) > 1 and moved[0] == 1:
                moved = moved[1:]
            return self.reshape(node, moved, renamed(node, layout))
        return self.transpose(self.reshape(node, padded, node.name), perm, layout)

    def replace(self, old: Node, new: Node) -> None:
        """Every use of ``old`` becomes a use of ``new``; ``old`` may now be dead."""
        self.graph.replace_all_uses(old, new)
        self.maybe_dead.add(old)

    def remove_dead(self) -> None:
        """Erase what the rewrites left unused (never inputs, outputs, or nodes that were dead before)."""
        work = list(self.maybe_dead)
        self.maybe_dead = set()
        while work:
            node = work.pop()
            if node.graph is not self.graph or node not in self.graph.nx:
                continue
            if node.users or node.op == "input" or any(o is node for o in self.graph.outputs):
                continue
            work.extend(node.operands)
            self.graph.erase(node)
            self.created.discard(node)
            self.made = {k: v for k, v in self.made.items() if v is not node and k[0] is not node}


def insert_transposes(rw: Rewriter, chain: Chain) -> None:
    """``conv2d(x, w) -> transpose(conv2d'(transpose(x), transpose(w)))`` for every conv of ``chain``."""
    source, target = chain.layout, other(chain.layout)
    for conv in chain.convs:
        x, w = conv.operands
        x_new = rw.transpose(x, INTO[target], target)
        w_new = rw.transpose(w, WEIGHT_INTO[target], WEIGHT_NAME[target])
        new = rw.graph.add_op("conv2d", [x_new, w_new], {**conv.attrs, "layout": target},
                              loc=conv.loc, name=renamed(conv, target))
        rw.replace(conv, rw.transpose(new, INTO[source], source))


def sink_transposes(rw: Rewriter, chain: Chain) -> None:
    """``op(transpose(a), b) -> transpose(op(a, b'))`` for every elementwise op of ``chain``, in order:
    each one's chain operands are transposes by then (made by the convs or by earlier sinks)."""
    source, target = chain.layout, other(chain.layout)
    back, into = INTO[source], INTO[target]
    for node in chain.members:
        if node.op == "conv2d":
            continue
        operands = [o.operands[0] if o.op == "transpose" and o.attrs["perm"] == back
                    else rw.into(o, into, target) for o in node.operands]
        new = rw.graph.add_op(node.op, operands, node.attrs, loc=node.loc, name=renamed(node, target))
        rw.replace(node, rw.transpose(new, back, source))


def cancel_transposes(rw: Rewriter) -> None:
    """``transpose(transpose(x, p), q) -> transpose(x, compose(p, q))``, which is ``x`` when ``q``
    undoes ``p``; only where the conversion made one of the two."""
    for node in rw.graph.nodes():
        if node.op != "transpose":
            continue
        inner = node.operands[0]
        if inner.op == "transpose" and (node in rw.created or inner in rw.created):
            perm = compose(inner.attrs["perm"], node.attrs["perm"])
            rw.replace(node, rw.transpose(inner.operands[0], perm, "t"))


def convert_chain(graph: Graph, chain: Chain,
                  show: Callable[[str, Graph], None] | None = None) -> Graph:
    """Move ``chain`` into the other layout in place; ``show(step, graph)`` sees each step."""
    rw = Rewriter(graph)
    for step, rewrite in [("insert", lambda: insert_transposes(rw, chain)),
                          ("sink", lambda: sink_transposes(rw, chain)),
                          ("cancel", lambda: cancel_transposes(rw))]:
        rewrite()
        rw.remove_dead()
        if show:
            show(step, graph)
    return graph


def convert_to(graph: Graph, layout: str, show: Callable[[str, Graph], None] | None = None) -> Graph:
    """Put every chain of conv2d ops into ``layout`` ("NCHW" or "NHWC") in place, whatever the cost
    model says: for tests, tutorials and measuring both layouts."""
    layout = layout.upper()
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    for chain in find_chains(graph, other(layout)):
        convert_chain(graph, chain, show)
    return graph


@register_pass("layout")
def layout(graph: Graph) -> Graph:
    """Run every chain of conv2d ops in the layout the cost model prefers (module docstring).

    Requires: a verified graph.
    Guarantees: same outputs (shapes and dtypes included); a converted chain has transposes only
    at its edges; a chain stays as it is unless the other layout is estimated strictly faster.

        before:  %y = conv2d(%x, %w) {padding=[1,1,1,1], layout="NCHW"} : f32[1,64,56,56]
        after:   %y_nhwc = conv2d(%x_to_nhwc, %w_to_hwio) {..., layout="NHWC"} : f32[1,56,56,64]
                 %y_to_nchw = transpose(%y_nhwc) {perm=[0,3,1,2]} : f32[1,64,56,56]
    """
    for source in LAYOUTS:
        for chain in find_chains(graph, source):
            if estimate(chain).best != source:
                convert_chain(graph, chain)
    return graph
