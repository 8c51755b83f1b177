"""Operator fusion: group ops into kernels, so intermediates stay in registers and caches.

Every group of two or more ops becomes one ``fused`` node whose ``body`` is the subgraph it
replaces; lowering turns each fused node into a single loop nest. The decision is made from
each op's *pattern kind* (the op table's ``kind``), as TVM's FuseOps does. The rules:

1. **Elementwise chains** (``elemwise``): elementwise, broadcast and injective ops fuse into the
   elementwise, broadcast or injective ops that consume them. ``gelu(x*a + b)`` (11 ops) is one
   kernel that reads ``x`` once and writes the result once.
2. **Producers into a reduction** (``reduce``): elementwise/injective producers are inlined into
   a reduction's body: ``sum(x*x)`` never stores ``x*x``.
3. **Reductions with their epilogue** (``row``): a reduction whose result is broadcast back over
   the rows it reduced fuses with the elementwise ops around it, when every reduction of the
   group reduces the same axes of the same shape and keeps them (``keepdims=True``). Softmax
   (max, sub, exp, sum, div) and layer norm become one kernel per row: the row is read from
   memory once (later passes over it hit the cache), per-row values live in registers.
4. **Epilogues of matmul and conv2d** (``epilogue``): elementwise ops that consume a matmul or
   conv2d result of the same shape and dtype fuse after it: each output row is accumulated and
   then finished (bias, GELU, ReLU, residual) while it is still in cache: matmul + bias + GELU
   is one kernel, as in the seed article. The kernel may end in one transpose (the NHWC conv
   chain's way back to NCHW): the finished values are then written transposed. Producers of
   a matmul's *inputs* never fuse into it (they would be recomputed for every use inside the
   product).
5. **Attention** (``attention``): ``matmul -> elementwise (scale, mask) -> softmax -> matmul``
   over the last axis becomes one FlashAttention-style kernel with an online softmax: the
   S x S score matrix is never stored. Data movement (slice, reshape, transpose) producing
   q, k and v is inlined into it, so the kernel reads the projections where they lie.

Never fused: a value that is a graph output or has users in two different groups is
materialised (stored once, read by each group). Inputs and array constants are read by
kernels, never computed; one-element constants are inlined as literals. ``explain`` (below)
records each decision with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir.compute import arith_dtype
from ..ir.graph import Graph, Node
from ..ir.loops import BOOL
from ..ir.ops import Kind
from ..ir.symbolic import Sym
from .pipeline import register_pass

INLINABLE = (Kind.ELEMWISE, Kind.BROADCAST, Kind.INJECTIVE)
MAX_ATTENTION_HEAD = 1024  # the online-softmax kernel keeps one output row of the head on the stack


@dataclass
class Group:
    """Nodes that will run as one kernel; ``root`` is the node whose value leaves the group."""

    root: Node
    nodes: set = field(default_factory=set)
    pattern: str = "elemwise"
    space: tuple | None = None  # (shape, reduced axes) shared by the reductions of a row kernel

    def __post_init__(self):
        self.nodes.add(self.root)
        if self.root.kind is Kind.REDUCTION:
            self.space = reduction_space(self.root)

    @property
    def anchor(self) -> Node | None:
        """The matmul/conv2d of an epilogue group."""
        return next((n for n in self.nodes if n.kind is Kind.OUT_EW_FUSABLE), None)

    @property
    def reductions(self) -> list[Node]:
        return [n for n in self.nodes if n.kind is Kind.REDUCTION]


@dataclass
class Decision:
    """One fusion decision for ``explain``: which producer, which group, taken or not, why."""

    producer: str
    consumer: str
    fused: bool
    reason: str
    bytes_saved: int = 0


def accumulates_in_output(node: Node) -> bool:
    """Whether a matmul/conv2d can sum into its output row instead of a scalar accumulator.

    With a scalar accumulator, ``out[i, j] = sum_k a[i, k] * b[k, j]`` walks ``b`` down a
    column (stride N) in its innermost loop, which misses the cache on every step. Moving the
    reduction loop outside the last output axis (the i-k-j order: the CPU schedule's
    ``accumulate_in_output``) makes the innermost loop run along rows of ``b`` and ``out``:
    unit stride, which the C compiler vectorises, and an epilogue can finish each row while
    it is in cache (fusion's ``epilogue`` groups). This needs the output to hold the
    accumulator exactly (same dtype as the sum: not bool or float16) and a last axis longer
    than 1.
    """
    accumulator = arith_dtype(node.dtype)
    return (node.op in ("matmul", "conv2d") and accumulator == node.dtype and node.dtype != BOOL
            and len(node.shape) >= 1 and (isinstance(node.shape[-1], Sym) or node.shape[-1] > 1))


def is_scalar_constant(node: Node) -> bool:
    return node.op == "constant" and node.type.size == 1


# ----------------------------------------------------------------------------------------------
# Deciding the groups
# ----------------------------------------------------------------------------------------------


def find_groups(graph: Graph, decisions: list[Decision] | None = None) -> list[Group]:
    """Assign every computing node to a group, walking from the outputs back to the inputs."""
    decisions = [] if decisions is None else decisions
    group_of: dict[Node, Group] = {}
    groups: list[Group] = []
    for group in find_attention(graph):
        groups.append(group)
        group_of.update({n: group for n in group.nodes})
        decisions += [Decision(_name(n), _name(group.root), True, "part of the attention pattern: "
                               "never stored (online softmax)", n.type.nbytes * 2)
                      for n in reversed(graph.op_nodes()) if n in group.nodes and n is not group.root]
    outputs = set(graph.outputs)
    for node in reversed(graph.op_nodes()):
        if node in group_of:
            continue
        target, reason = _consumer_group(node, group_of, outputs)
        if target is not None:
            reason = _join_refusal(target, node)
        if target is not None and reason is None:
            target.nodes.add(node)
            target.pattern = _pattern(target)
            group_of[node] = target
            decisions.append(Decision(_name(node), _name(target.root), True, f"into the {target.pattern} kernel",
                                      node.type.nbytes * 2))
            continue
        if reason and node.users:
            decisions.append(Decision(_name(node), ", ".join(sorted({_name(u) for u, _ in node.users})),
                                      False, reason))
        group = Group(node, pattern=_pattern_of_single(node))
        groups.append(group)
        group_of[node] = group
    return groups


def _name(node: Node) -> str:
    return f"%{node.name}"


def _consumer_group(node: Node, group_of: dict, outputs: set) -> tuple[Group | None, str | None]:
    """The one group all users of ``node`` are in, or None with the reason."""
    if node in outputs:
        return None, "it is a graph output: it must be stored"
    groups = {id(group_of[u]): group_of[u] for u, _ in node.users}
    if not groups:
        return None, None
    if len(groups) > 1:
        return None, f"used by {len(groups)} kernels: stored once, read by each"
    return next(iter(groups.values())), None


def _join_refusal(group: Group, node: Node) -> str | None:
    """Why ``node`` may not join ``group`` (None if it may)."""
    if group.root.kind is Kind.OPAQUE:
        return (f"{group.root.op} runs as a kernel of its own (opaque: it writes by data, like scatter, "
                "or scans in order, like cumsum): its operand is stored")
    if group.pattern == "attention":
        return "only data movement (slice, reshape, transpose) joins an attention kernel" \
            if node.kind is not Kind.INJECTIVE else None
    users_in_group = [u for u, _ in node.users]
    if any(u.kind is Kind.OUT_EW_FUSABLE for u in users_in_group):
        return f"it feeds {users_in_group[0].op}: its inputs are read many times, not recomputed"
    if node.kind in INLINABLE:
        return _inline_refusal(group, node)
    if node.kind is Kind.REDUCTION:
        return _reduction_refusal(group, node)
    if node.kind is Kind.OUT_EW_FUSABLE:
        return _anchor_refusal(group, node)
    return f"{node.op} is {node.kind.value}: it does not fuse"


def _inline_refusal(group: Group, node: Node) -> str | None:
    # Producers are always upstream of the group's reductions and matmuls (nodes join from the
    # outputs backwards), so inlining them only changes where their values are computed.
    return None


def _reduction_refusal(group: Group, node: Node) -> str | None:
    if group.anchor is not None:
        return "a reduction does not fuse into a matmul/conv epilogue"
    space = reduction_space(node)
    if group.space is None and group.root.shape != space[0]:
        return "the kernel's output is not the shape the reduction reduces"
    if group.space is not None and group.space != space:
        return "it reduces other axes or another shape than the rest of the kernel"
    if not node.attrs["keepdims"]:
        return "only reductions that keep their axes (keepdims=True) broadcast back over the row"
    row_shape = tuple(1 if i in space[1] else d for i, d in enumerate(space[0]))
    for n in group.nodes:
        if n is not node and n.kind is not Kind.REDUCTION and _depends_on(n, node):
            if n.kind is Kind.INJECTIVE:
                return "data movement after the reduction would break the row order"
            if n.shape not in (space[0], row_shape):
                return "values between the reduction and the kernel's output change shape"
    group.space = space
    return None


def _anchor_refusal(group: Group, node: Node) -> str | None:
    root = group.root
    if group.reductions or group.anchor is not None:
        return "an epilogue kernel holds one matmul/conv2d and no reductions"
    if not accumulates_in_output(node):
        return "its rows cannot be accumulated in place (float16/bool result, or rows of length 1)"
    moved = root.op == "transpose"  # one transpose at the very end: each tile is written moved
    result = root.operands[0] if moved else root
    if node.shape != result.shape or node.dtype != root.dtype:
        return "the epilogue's output differs in shape or dtype from the matmul/conv2d result"
    on_path = [n for n in group.nodes if _depends_on(n, node) and not (moved and n is root)]
    if any(n.kind not in (Kind.ELEMWISE, Kind.BROADCAST) or n.shape != result.shape for n in on_path):
        return "the epilogue moves or broadcasts the result: it cannot finish the rows in place"
    return None


def reduction_space(node: Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape reduced, axes reduced) of a reduction node."""
    return node.operands[0].shape, node.attrs["axes"]


def _depends_on(node: Node, ancestor: Node) -> bool:
    """Whether ``node`` is ``ancestor`` or computed from it (within one group's small subgraph)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current is ancestor:
            return True
        if current in seen:
            continue
        seen.add(current)
        stack.extend(current.operands)
    return False


def _pattern(group: Group) -> str:
    if group.pattern == "attention":
        return "attention"
    if group.anchor is not None:
        return "epilogue"
    reductions = group.reductions
    if not reductions:
        return "elemwise"
    return "reduce" if reductions == [group.root] else "row"


def _pattern_of_single(node: Node) -> str:
    if node.kind is Kind.OUT_EW_FUSABLE:
        return "epilogue"
    return "reduce" if node.kind is Kind.REDUCTION else "elemwise"


# ----------------------------------------------------------------------------------------------
# Attention: matmul -> elementwise -> softmax -> matmul
# ----------------------------------------------------------------------------------------------


def find_attention(graph: Graph) -> list[Group]:
    """Groups for every attention pattern in ``graph`` (see rule 5 in the module docstring)."""
    groups, taken = [], set()
    outputs = set(graph.outputs)
    for node in graph.op_nodes():
        match = match_attention(node, outputs)
        if match and not (match & taken):
            group = Group(node, set(match), pattern="attention")
            groups.append(group)
            taken |= match
    return groups


def _only_user(node: Node, user: Node, outputs: set) -> bool:
    return node not in outputs and all(u is user for u, _ in node.users)


def _last_axis_reduction(node: Node, op: str) -> bool:
    return (node.op == op and node.attrs["keepdims"]
            and node.attrs["axes"] == (len(node.operands[0].shape) - 1,))


def match_attention(pv: Node, outputs: set) -> set | None:
    """The nodes of ``softmax(f(q @ k)) @ v`` ending at ``pv``, or None if it is not that."""
    if pv.op != "matmul" or pv.dtype.kind != "f" or pv.dtype.itemsize < 4:
        return None
    p = pv.operands[0]
    if len(p.shape) < 2 or len(pv.operands[1].shape) < 2:
        return None
    if isinstance(pv.shape[-1], Sym) or pv.shape[-1] > MAX_ATTENTION_HEAD:  # a head row on the stack
        return None
    if len(p.shape) != len(pv.shape):  # v adds batch axes p lacks: the kernel indexes p by pv's batch
        return None
    if p.op != "div" or not _only_user(p, pv, outputs):
        return None
    e, total = p.operands
    if e.op != "exp" or not _last_axis_reduction(total, "sum") or total.operands[0] is not e:
        return None
    d = e.operands[0]
    if d.op != "sub" or not _last_axis_reduction(d.operands[1], "max"):
        return None
    scores, peak = d.operands
    if peak.operands[0] is not scores:
        return None
    inner = [p, e, total, d, peak]
    if any(n in outputs for n in inner) or {u for u, _ in e.users} != {total, p}:
        return None
    chain = _score_chain(scores, {d, peak}, outputs)
    if chain is None:
        return None
    match = set(inner) | set(chain) | {pv}
    if any(u not in match for n in inner for u, _ in n.users):
        return None  # a softmax part another op reads too: it must stay a value of its own
    return match


def _score_chain(scores: Node, users: set, outputs: set) -> list[Node] | None:
    """``scores`` back to a matmul through elementwise ops used only inside the pattern.

    Of an op's operands of its own shape, the chain follows the one that leads to the matmul;
    the others (a mask computed in the graph, read by every head) are read by the fused kernel.
    """
    if scores in outputs or {u for u, _ in scores.users} - users or scores.dtype.kind != "f":
        return None
    if scores.op == "matmul":
        return [scores] if len(scores.operands[0].shape) >= 2 and len(scores.operands[1].shape) >= 2 else None
    if scores.kind not in (Kind.ELEMWISE, Kind.BROADCAST):
        return None
    for source in [o for o in scores.operands if o.shape == scores.shape and o.kind is not Kind.SOURCE]:
        chain = _score_chain(source, {scores}, outputs)
        if chain is not None:
            return [scores] + chain
    return None


# ----------------------------------------------------------------------------------------------
# Rewriting the graph
# ----------------------------------------------------------------------------------------------


def outline(graph: Graph, group: Group, index: int) -> Node:
    """Replace ``group``'s nodes by one ``fused`` node whose body is the group's subgraph."""
    body = Graph(f"{graph.name}_fused_{index}")
    inside: dict[Node, Node] = {}
    operands: list[Node] = []
    for node in graph.nodes():
        if node not in group.nodes:
            continue
        for operand in node.operands:
            if operand in inside:
                continue
            if is_scalar_constant(operand):
                inside[operand] = body.add_op("constant", [], dict(operand.attrs), operand.loc, operand.name)
            elif operand not in group.nodes:
                inside[operand] = body.add_input(operand.name, operand.type, operand.loc)
                operands.append(operand)
        inside[node] = body.add_op(node.op, [inside[o] for o in node.operands], node.attrs, node.loc, node.name)
    body.set_outputs([inside[group.root]])
    fused = graph.add_op("fused", operands, {"body": body, "pattern": group.pattern},
                         loc=group.root.loc, name=f"fused_{group.root.name}")
    group.root.replace_all_uses_with(fused)
    for node in reversed(graph.nodes()):
        if node in group.nodes or (is_scalar_constant(node) and not node.users and node not in graph.outputs):
            graph.erase(node)
    return fused


@register_pass("fusion")
def fuse(graph: Graph) -> Graph:
    """Operator fusion: each group of ops (rules in the module docstring) becomes a ``fused`` node.

    Requires: a verified graph. Guarantees: the same outputs; every computing node is one
    kernel (a single op, or a fused node with a body); groups of one op are left as they are.

        %mul = mul(%x, %a)              %fused_add = fused(%x, %a, %b) {body=@f_0, pattern="elemwise"}
        %add = add(%mul, %b)     ->
    """
    groups = [g for g in find_groups(graph) if len(g.nodes) > 1]
    for index, group in enumerate(groups):
        outline(graph, group, index)
    return graph


def explain_fusion(graph: Graph) -> tuple[list[Group], list[Decision]]:
    """The groups ``fuse`` would form on ``graph`` and every decision taken or refused."""
    decisions: list[Decision] = []
    groups = find_groups(graph, decisions)
    return groups, decisions
