"""Lowering a ``fused`` node: its whole body becomes one plain loop nest.

The key tool is *inlining through compute rules*: an operand that is computed inside the body
is not loaded from memory but replaced by its own compute rule at the same index (``Inliner``).
``gelu(x*a + b)`` at index ``[i, j]`` is then one expression over ``x[i, j]``, ``a[j]``, ``b[j]``.
Values that cannot be inlined as expressions (reductions, matmul results) are computed once
at the right loop level, held in a local variable, and *bound*: later uses read the variable.

Requires a fused group (or a single op) of one fusion pattern (``minicomp.passes.fusion``).
Guarantees the plainest nest that computes it, the same for every target: every reduction
in one form, a scalar accumulator per value (``acc = init; for r...: acc = combine(acc,
body)``), no loop marked parallel or vectorized, no lanes, tiles or packing. Shaping a nest
for a machine is the schedule stage's work (``minicomp.schedules``; ``schedules/cpu/`` turns
these exact forms into packed GEMM, SIMD lanes, accumulation in the output row ...).

One lowering per pattern:

* ``elemwise``: loops over the output; one store of the inlined expression.
* ``reduce``: per output element, the reduction with its producers inlined::

      for i0:  f32 acc = 0;  for r1: acc = acc + x[i0, r1] * 2;  out[i0] = acc

* ``row``: per row (the axes not reduced), each reduction and each per-row value in order,
  held in locals; then one loop over the row storing the inlined epilogue::

      for i0:                                          # softmax
        f32 acc_max = -inf;  for r1: acc_max = mc_maximum(acc_max, x[i0, r1])
        f32 v_max = acc_max
        f32 acc_sum = 0;     for r1: acc_sum = acc_sum + exp(x[i0, r1] - v_max)
        f32 v_sum = acc_sum
        for i1: out[i0, i1] = exp(x[i0, i1] - v_max) / v_sum

* ``epilogue``: per output element, the matmul/conv's sum, then the epilogue's value stored
  (at the transposed index when the epilogue ends in a transpose)::

      for i0: for i1:  f32 acc = 0;  for rk: acc = acc + x[i0, rk] * w[rk, i1]
                       out[i0, i1] = gelu(acc + b[i1])

* ``attention``: per query row, an online softmax over the keys (FlashAttention's idea): a
  running max ``m``, a running sum ``l`` and an output row ``acc`` rescaled by
  ``exp(m_old - m_new)`` whenever the max grows. The scores are never stored. (The
  ``flash_attention`` schedule tiles this nest: ``minicomp.schedules.cpu.flash_attention``.)
* ``scan``: ``cumsum``/``cumprod``, each step reading the previous output element.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import CompileError
from ..ir.compute import Reduce, Tensor, _batch_index, cast, checked_index, compute, linear_index, to_arith
from ..ir.dtypes import TensorType
from ..ir.graph import Graph, Node
from ..ir.loops import (BOOL, Binary, Block, Buffer, Const, Declare, For, If, Kernel,
                        Load, Stmt, Store, Var, as_expr, const)
from ..ir.ops import SCAN_OPS, SCATTER_UFUNCS, Kind
from ..ir.symbolic import Sym
from ..passes.fusion import accumulates_in_output
from .online_softmax import OnlineSoftmax, online_softmax
from .rules import is_inline_constant, nest, output_index, reduce_into


def _ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


class Inliner:
    """Element access to every value of a fused body: inputs load, others inline or are bound."""

    def __init__(self, inputs: dict[Node, Tensor]):
        self.bound: dict[Node, Tensor] = dict(inputs)

    def tensor(self, node: Node) -> Tensor:
        """How to read ``node`` at an index: bound value, input buffer, or its compute rule."""
        if node in self.bound:
            return self.bound[node]
        if is_inline_constant(node):
            value = const(node.attrs["value"].reshape(-1)[0], node.dtype)
            return Tensor(node.type, lambda idx: value)

        def element(idx, node=node):
            value = compute(node, idx, [self.tensor(o) for o in node.operands])
            if isinstance(value, Reduce):
                raise CompileError(f"%{node.name} ({node.op}) must be computed before it is used")
            return value

        return Tensor(node.type, element)

    def bind(self, node: Node, value) -> None:
        """From now on, ``node`` at any index reads ``value`` (a local variable or a load)."""
        self.bound[node] = Tensor(node.type, value if callable(value) else (lambda idx: value))

    @contextmanager
    def rebound(self, values: dict[Node, object]):
        """Inside the ``with`` block each node reads its value here; afterwards, what it read before."""
        saved = {node: self.bound.get(node) for node in values}
        for node, value in values.items():
            self.bind(node, value)
        try:
            yield self
        finally:
            for node, tensor in saved.items():
                if tensor is None:
                    del self.bound[node]
                else:
                    self.bound[node] = tensor


def _loops(idx: list, shape) -> list[tuple[Var, int]]:
    return [(i, extent) for i, extent in zip(idx, shape) if isinstance(i, Var)]


def _work(shape, *extra: int) -> int:
    """Elements times reduction length (a ``Sym`` where a size is symbolic)."""
    return math.prod(shape) * math.prod(extra)


# ----------------------------------------------------------------------------------------------
# One lowering per pattern
# ----------------------------------------------------------------------------------------------


def lower_elemwise(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    root = nodes[-1]
    idx = output_index(root.shape)
    store = Store(out, linear_index(idx, root.shape), inline.tensor(root)[idx])
    return nest(_loops(idx, root.shape), store, parallel=False)  # parallel: the default schedule


def lower_reduce(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    """One scalar accumulator per output element: ``acc = init; for r...: acc = combine(acc,
    body); out[i] = finish(acc)``, the reduction's producers inlined into ``body``."""
    root = nodes[-1]
    idx = output_index(root.shape)
    r = compute(root, idx, [inline.tensor(o) for o in root.operands])
    acc = Var("acc", r.dtype)
    store = Store(out, linear_index(idx, root.shape), r.finish(acc))
    return nest(_loops(idx, root.shape), Block(reduce_into(acc, r) + [store]), parallel=False)


def lower_row(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    """Per row (the axes not reduced): each reduction into a scalar accumulator and each per-row
    value into a local, in order; then one loop over the row storing the inlined epilogue."""
    root = nodes[-1]
    reductions = [n for n in nodes if n.kind is Kind.REDUCTION]
    shape, axes = reductions[0].operands[0].shape, reductions[0].attrs["axes"]
    full = output_index(shape)
    row = [Const(0) if axis in axes else i for axis, i in enumerate(full)]
    row_shape = tuple(1 if axis in axes else d for axis, d in enumerate(shape))
    outer = [(i, d) for axis, (i, d) in enumerate(zip(full, shape)) if axis not in axes and isinstance(i, Var)]
    stmts: list[Stmt] = []
    for node in nodes:
        if node.kind is Kind.REDUCTION:
            at = row if node.attrs["keepdims"] else [i for axis, i in enumerate(full) if axis not in axes]
            r = compute(node, at, [inline.tensor(o) for o in node.operands])
            acc, value = Var(f"acc_{_ident(node.name)}", r.dtype), Var(f"v_{_ident(node.name)}", node.dtype)
            stmts += reduce_into(acc, r)
            stmts.append(Declare(value, r.finish(acc)))
        elif node.shape == row_shape and node.kind is not Kind.SOURCE and _after_reduction(node):
            value = Var(f"v_{_ident(node.name)}", node.dtype)
            stmts.append(Declare(value, inline.tensor(node)[row]))
        else:
            continue
        inline.bind(node, value)
    if root.kind is Kind.REDUCTION:
        at = row if root.attrs["keepdims"] else [i for axis, i in enumerate(full) if axis not in axes]
        stmts.append(Store(out, linear_index(at, root.shape), inline.tensor(root)[at]))
    else:
        inner = [(i, d) for axis, (i, d) in enumerate(zip(full, shape)) if axis in axes and isinstance(i, Var)]
        store = Store(out, linear_index(full, shape), inline.tensor(root)[full])
        stmts.append(nest(inner, store, parallel=False))
    return nest(outer, Block(stmts), parallel=False)


def _after_reduction(node: Node) -> bool:
    stack = list(node.operands)
    while stack:
        current = stack.pop()
        if current.kind is Kind.REDUCTION:
            return True
        stack.extend(current.operands)
    return False


def lower_epilogue(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    """Per output element of the matmul/conv: its sum into a scalar accumulator, then the
    epilogue's value, the matmul/conv read from the accumulator, stored at the output index
    (the transposed index when the epilogue ends in a transpose)."""
    root = nodes[-1]
    anchor = next(n for n in nodes if n.kind is Kind.OUT_EW_FUSABLE)
    moved = root.op == "transpose" and root is not anchor  # the epilogue ends in one transpose
    result = root.operands[0] if moved else root
    idx = output_index(result.shape)
    r = compute(anchor, idx, [inline.tensor(o) for o in anchor.operands])
    acc = Var("acc", r.dtype)
    inline.bind(anchor, r.finish(acc))
    if moved:
        perm = root.attrs["perm"]
        at = linear_index([idx[perm[axis]] for axis in range(len(perm))], root.shape)
    else:
        at = linear_index(idx, result.shape)
    store = Store(out, at, inline.tensor(result)[idx])
    return nest(_loops(idx, result.shape), Block(reduce_into(acc, r) + [store]), parallel=False)


def lower_attention(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    """Per query row, the online softmax over the keys (``online_softmax``); the scores are never stored.

    Requires a body ending in ``softmax(f(q @ k^T)) @ v`` (the ``attention`` fusion pattern,
    ``f`` elementwise: scale, masks). Guarantees one plain nest over the batch and query axes,
    the same for every target: the ``flash_attention`` schedule (``schedules/cpu``) tiles it::

        %s = matmul(%q, %kT) * 0.125               for i0, i1:                  # batch, query
        %p = softmax(%s)                     ->      m = -inf; l = 0; acc[e] = 0
        %out = matmul(%p, %v)                        for j: dot = q.k; score = dot * 0.125 ...
                                                     out[i0, i1, e] = acc[e] / l
    """
    pv = nodes[-1]
    scores = pv.operands[0].operands[0].operands[0].operands[0]  # div <- exp <- sub <- scores
    qk = scores
    while qk.op != "matmul":
        qk = next(o for o in qk.operands if o.shape == qk.shape and o.kind is not Kind.SOURCE)
    *batch, i, _ = output_index(pv.shape)
    j, e = Var("j"), Var("e")
    r = compute(qk, [*batch, i, j], [inline.tensor(o) for o in qk.operands])
    dot = Var("dot", r.dtype)
    inline.bind(qk, r.finish(dot))
    v = inline.tensor(pv.operands[1])
    row = OnlineSoftmax(dot, r, inline.tensor(scores)[[*batch, i, j]],
                        v[_batch_index(list(batch), v.shape[:-2]) + [j, e]], j, qk.shape[-1],
                        Buffer("acc", pv.dtype, (pv.shape[-1],)), e, out, linear_index([*batch, i, e], pv.shape))
    return nest(_loops([*batch, i], pv.shape[:-1]), online_softmax(row), parallel=False)


@dataclass
class Nest:
    """A lowering's result when it needs more than a statement: scratch buffers and its schedule."""

    body: Stmt
    scratch: list[Buffer] = field(default_factory=list)
    schedule: list = field(default_factory=list)


def _kernel(name: str, inputs: list[Buffer], out: Buffer, lowered, source: list[str],
            pattern: str | None) -> Kernel:
    """The kernel of a lowering's result; ``pattern`` picks its default schedule (None: none)."""
    nest_ = lowered if isinstance(lowered, Nest) else Nest(lowered)
    return Kernel(name, inputs, out, nest_.body, source, scratch=nest_.scratch, schedule=nest_.schedule,
                  pattern=pattern)


def lower_scan(nodes: list[Node], inline: Inliner, out: Buffer) -> Stmt:
    """``cumsum``/``cumprod`` along ``axis``: each step reads the previous output element.

    Loops over the axes before ``axis`` (independent: the default schedule may run them on
    several threads), then the serial scan loop, then the axes after it (contiguous,
    independent: gcc may vectorise them)::

        for i:  out[i, 0, j] = x[i, 0, j]                                   for j
                for k in 1..n: out[i, k, j] = out[i, k-1, j] + x[i, k, j]   for j

    One rounding per step in the output dtype, in NumPy's order: float16 results are NumPy's.
    """
    node = nodes[-1]
    axis, shape, dtype = node.attrs["axis"], node.shape, node.dtype
    x = inline.tensor(node.operands[0])
    idx = output_index(shape)
    outer = _loops(idx[:axis], shape[:axis])
    inner = _loops(idx[axis + 1:], shape[axis + 1:])

    def at(k):
        return idx[:axis] + [k] + idx[axis + 1:]

    def element(k):
        return to_arith(x[at(k)], dtype)

    length, symbolic = shape[axis], isinstance(shape[axis], Sym)
    if not symbolic and length == 0:  # an empty result: nothing to store (even the first step would write past it)
        return Block([])
    first = Store(out, linear_index(at(Const(0)), shape), cast(x[at(Const(0))], dtype))
    steps: list[Stmt] = [nest(inner, first, parallel=False)]
    if symbolic or length > 1:
        k = Var(f"i{axis}")
        previous = to_arith(Load(out, linear_index(at(k), shape)), dtype)
        value = Binary(SCAN_OPS[node.op], previous, element(k + 1), previous.dtype)
        step = Store(out, linear_index(at(k + 1), shape), cast(value, dtype))
        steps.append(For(k, length - 1, nest(inner, step, parallel=False)))
    body: Stmt = Block(steps)
    if symbolic:  # a length only known at the call: an empty one stores nothing
        body = If(Binary(">", as_expr(length), Const(0), BOOL), body)
    return nest(outer, body, parallel=False)


LOWERINGS = {"elemwise": lower_elemwise, "reduce": lower_reduce, "row": lower_row,
             "epilogue": lower_epilogue, "attention": lower_attention, "scan": lower_scan}


def lower_scatter(node: Node, inline: Inliner, out: Buffer) -> Stmt:
    """Copy ``x`` into the output, then one serial loop over the positions writes (or combines)
    each value: in order, so the last of repeated positions wins (mode set), or each combines
    with what is there (add, ...: ``np.add.at``). A position out of range sets the status and
    writes element 0 instead (``checked_index``), never outside the output::

        for i: out[i] = x[i]
        for j: p = mc_index(positions[j], size); out[p] = out[p] + values[j]
    """
    x, positions, values = (inline.tensor(o) for o in node.operands)
    idx = output_index(node.shape)
    copy = nest(_loops(idx, node.shape), Store(out, linear_index(idx, node.shape), x[idx]), parallel=False)
    j = [Const(0) if extent == 1 else Var(f"j{axis}") for axis, extent in enumerate(positions.shape)]
    p = Var("p")
    value = values[j]
    if node.attrs["mode"] != "set":
        rule_node = SimpleNamespace(op=node.attrs["mode"], dtype=SCATTER_UFUNCS[node.attrs["mode"]].resolve_dtypes(
            (node.dtype, values.dtype, None))[-1])
        old = Tensor(TensorType((), node.dtype), lambda i: Load(out, p))
        new = Tensor(TensorType((), values.dtype), lambda i: value)
        value = compute(rule_node, [], [old, new])
    write = Block([Declare(p, checked_index(positions[j], max(node.type.size, 1))),
                   Store(out, p, cast(value, node.dtype))])
    return Block([copy, nest(_loops(j, positions.shape), write, parallel=False)])


def lower_single(node: Node, buffers: dict[Node, Buffer], operand_tensor) -> Kernel:
    """The kernel of one op: a group of one, lowered by the same pattern lowerings."""
    inline = Inliner({o: operand_tensor(o) for o in node.operands})
    if node.op == "scatter":  # writes by data: its own lowering, no schedule
        inputs = [buffers[o] for o in node.operands if not is_inline_constant(o)]
        source = [f"%{node.name} = scatter" + (f"  at {node.loc}" if node.loc else "")]
        return _kernel(buffers[node].name, inputs, buffers[node], lower_scatter(node, inline, buffers[node]),
                       source, None)
    if node.kind is Kind.OUT_EW_FUSABLE and accumulates_in_output(node):
        pattern = "epilogue"  # a matmul/conv whose sum its output can hold: packed or i-k-j
    elif node.kind in (Kind.REDUCTION, Kind.OUT_EW_FUSABLE):
        pattern = "reduce"  # (a float16 matmul sums in float32: a reduction into lanes)
    elif node.op in SCAN_OPS:
        pattern = "scan"
    else:
        pattern = "elemwise"
    statement = LOWERINGS[pattern]([node], inline, buffers[node])
    inputs = [buffers[o] for o in node.operands if not is_inline_constant(o)]
    source = [f"%{node.name} = {node.op}" + (f"  at {node.loc}" if node.loc else "")]
    return _kernel(buffers[node].name, inputs, buffers[node], statement, source, pattern)


def lower_fused(node: Node, buffers: dict[Node, Buffer], operand_tensor) -> Kernel:
    """The single kernel of a ``fused`` node (``operand_tensor(o)`` reads an operand)."""
    body: Graph = node.attrs["body"]
    inline = Inliner({inner: operand_tensor(outer) for inner, outer in zip(body.inputs, node.operands)})
    statement = LOWERINGS[node.attrs["pattern"]](body.nodes(), inline, buffers[node])
    inputs = [buffers[o] for o in node.operands if not is_inline_constant(o)]
    source = [f"%{node.name} = fused {node.attrs['pattern']} kernel of:"]
    source += [f"  %{n.name} = {n.op}" + (f"  at {n.loc}" if n.loc else "")
               for n in body.op_nodes()]
    return _kernel(buffers[node].name, inputs, buffers[node], statement, source, node.attrs["pattern"])
