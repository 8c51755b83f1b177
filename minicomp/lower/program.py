"""Lowering: a graph becomes a ``Program`` of loop-IR kernels, one kernel per op node.

For every computing node, the op's compute rule (``minicomp.ir.compute``) is applied at a
symbolic output index and wrapped in one loop per output axis::

    %add = add(%x, %b) : f32[4,8]      ->   for i0 in 0..4:
                                              for i1 in 0..8:
                                                add[i0*8 + i1] = x[i0*8 + i1] + b[i1]

A reduction also declares an accumulator and loops over the reduced axes. Scalar constants are
inlined as literals; array constants, graph inputs and outputs are parameters; every other
value gets a slice of one workspace (the static buffer plan: offsets fixed at compile time):
where the ``memory_plan`` pass ran, at the offsets it chose (``node.meta["storage"]``: values
never live at the same time share bytes), otherwise one slice per value. A kernel whose
parameters share workspace bytes (an op run in place) lists them in ``Kernel.aliases``.

Requires a graph after the graph passes (fused or not). Guarantees plain nests, the same for
every target: no loop marked parallel or vectorized, every reduction one scalar accumulator
per value (``minicomp.lower.fused``); ``minicomp.schedules`` shapes them for a machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from ..ir.compute import linear_index
from ..ir.graph import Graph, Node
from ..ir.loops import Buffer, Kernel, Store, Var
from ..ir.ops import Kind
from ..ir.symbolic import Sym, SymbolicShapeError, align_up
from ..passes.memory import ALIGNMENT
from .fused import lower_fused, lower_single
from .rules import is_inline_constant, nest, operand_tensor, output_index



@dataclass
class Program:
    """Everything the C renderer and the runtime need to run a graph.

    ``params`` is the order of the entry function's buffer arguments: graph inputs, array
    constants, graph outputs; intermediates live in the workspace at ``offsets``.
    """

    graph: Graph
    kernels: list[Kernel]
    inputs: list[Buffer]
    constants: list[tuple[Buffer, np.ndarray]]
    outputs: list[Buffer]
    workspace: dict[Buffer, int] = field(default_factory=dict)  # buffer -> byte offset
    workspace_bytes: int = 0
    values_bytes: int = 0  # the part of the workspace the graph's values take (scratch follows)
    output_nodes: list[Node] = field(default_factory=list)

    @property
    def params(self) -> list[Buffer]:
        return self.inputs + [b for b, _ in self.constants] + self.outputs

    def __str__(self) -> str:
        return "\n\n".join(str(k) for k in self.kernels)


def lower(graph: Graph) -> Program:
    """Lower every computing node of ``graph`` to a kernel; see the module docstring.

    The kernels are plain loop nests, the same for every target: ``minicomp.schedules``
    shapes them for a machine, ``minicomp.stages`` runs the whole loop-level pipeline.
    """
    buffers: dict[Node, Buffer] = {}
    program = Program(graph, [], [], [], [])
    new_buffer = _buffer_namer()
    for node in graph.inputs:
        buffers[node] = new_buffer(node.name, node)
        program.inputs.append(buffers[node])
    outputs = _unique(graph.outputs)
    plan = _memory_plan(graph, outputs)
    program.workspace_bytes = max((offset + nbytes for offset, nbytes in plan.values()), default=0)
    for node in graph.nodes():
        if node.op == "constant" and not is_inline_constant(node):
            buffers[node] = new_buffer(node.name, node)
            program.constants.append((buffers[node], node.attrs["value"]))
        elif node.kind is not Kind.SOURCE:
            buffers[node] = new_buffer(node.name, node)
            if node not in outputs:
                program.workspace[buffers[node]] = _place(program, buffers[node], plan.get(node))
            program.kernels.append(lower_node(node, buffers))
    for node in outputs:
        if node.kind is Kind.SOURCE:  # an input or constant returned as is: copy it out
            copy = new_buffer(f"{node.name}_out", node)
            program.kernels.append(_copy_kernel(node, buffers, copy))
            buffers[node] = copy
        program.outputs.append(buffers[node])
    program.output_nodes = outputs
    values = {buffer: value for buffer, value in program.constants}
    for kernel in program.kernels:
        kernel.aliases = _overlapping_params(kernel, program.workspace)
        kernel.constants = {b: values[b] for b in kernel.inputs if b in values}
    program.values_bytes = program.workspace_bytes
    return place_scratch(program)


def place_scratch(program: Program) -> Program:
    """``program`` with every kernel's scratch buffers placed after the graph's values, all
    kernels sharing one region (kernels run one after another, so kernel 2's packed panels may
    reuse kernel 1's bytes). Run again after a schedule changed the kernels' scratch: offsets
    of scratch buffers no kernel has any more are dropped."""
    scratch = {b for kernel in program.kernels for b in kernel.scratch}
    was_scratch = {b for b in program.workspace if b not in scratch and _is_scratch(program, b)}
    workspace = {b: o for b, o in program.workspace.items() if b not in scratch and b not in was_scratch}
    total = program.values_bytes
    base = align_up(program.values_bytes, ALIGNMENT)
    for kernel in program.kernels:
        offset = base
        for buffer in kernel.scratch:
            workspace[buffer] = offset
            offset += align_up(buffer.size * buffer.dtype.itemsize, ALIGNMENT)
        if kernel.scratch:
            total = upper_bound(total, offset)
    program.workspace, program.workspace_bytes = workspace, total
    return program


def _is_scratch(program: Program, buffer: Buffer) -> bool:
    """Whether a workspace buffer is a kernel's scratch (not a graph value): none of the
    program's kernels writes it as its output."""
    return all(kernel.output is not buffer for kernel in program.kernels)


def _buffer_namer():
    """A maker of buffers whose names are unique C identifiers (graph names may contain dots)."""
    taken: set[str] = set()

    def new_buffer(name: str, node: Node) -> Buffer:
        base = re.sub(r"\W", "_", name)
        unique, n = base, 1
        while unique in taken:
            unique, n = f"{base}_{n}", n + 1
        taken.add(unique)
        return Buffer(unique, node.dtype, node.shape)

    return new_buffer


def _unique(nodes: list[Node]) -> list[Node]:
    return list(dict.fromkeys(nodes))


def _memory_plan(graph: Graph, outputs: list[Node]) -> dict[Node, tuple[int, int]]:
    """``node -> (offset, nbytes)`` from the ``memory_plan`` pass (empty if it did not run)."""
    return {node: node.meta["storage"] for node in graph.op_nodes()
            if "storage" in node.meta and node not in outputs}


def _place(program: Program, buffer: Buffer, storage: tuple[int, int] | None = None) -> int:
    """The buffer's workspace offset: the memory plan's, else the next free cache line."""
    if storage is not None:
        return storage[0]
    offset = align_up(program.workspace_bytes, ALIGNMENT)
    program.workspace_bytes = offset + buffer.size * buffer.dtype.itemsize
    return offset


def upper_bound(a, b):
    """``max(a, b)``; for symbolic sizes a polynomial no smaller than either (their sum, when
    neither is provably the larger): workspace bytes to reserve."""
    try:
        return max(a, b)
    except SymbolicShapeError:
        return a + b


def _overlapping_params(kernel: Kernel, workspace: dict[Buffer, int]) -> frozenset[Buffer]:
    """The kernel's workspace parameters that share bytes with another one (in place)."""
    # symbolic offsets come from plain placement (the memory plan leaves symbolic values out):
    # one after another, never overlapping anything
    spans = [(b, workspace[b], workspace[b] + b.size * b.dtype.itemsize)
             for b in kernel.params if b in workspace and not isinstance(workspace[b], Sym)
             and not isinstance(b.size, Sym)]
    return frozenset(a for a, start, end in spans for b, s, e in spans
                     if a is not b and start < e and s < end)


def lower_node(node: Node, buffers: dict[Node, Buffer]) -> Kernel:
    """The kernel computing ``node`` into ``buffers[node]`` from its operands' buffers.

    A single op is a fusion group of one: both go through ``lower_fused``'s pattern lowerings.
    """
    lower_group = lower_fused if node.op == "fused" else lower_single
    return lower_group(node, buffers, lambda operand: operand_tensor(operand, buffers))


def _copy_kernel(node: Node, buffers: dict[Node, Buffer], out: Buffer) -> Kernel:
    idx = output_index(node.shape)
    source = operand_tensor(node, buffers)
    loops = [(i, extent) for i, extent in zip(idx, node.shape) if isinstance(i, Var)]
    body = nest(loops, Store(out, linear_index(idx, node.shape), source[idx]), parallel=False)
    inputs = [] if is_inline_constant(node) else [buffers[node]]
    return Kernel(out.name, inputs, out, body, [f"copy of %{node.name}"], pattern="elemwise")
