"""The reference interpreter: run any graph with NumPy, one op at a time.

This is the meaning of a graph. Every pass and backend is tested against it, and
``minicomp.jit(target="numpy")`` uses it directly. Subclass ``Interpreter`` and override
``run_node`` to observe or change how single nodes run (the torch.fx ``Interpreter`` idea).
"""

from __future__ import annotations

import numpy as np

from ..errors import MinicompRuntimeError
from .dtypes import TensorType
from .graph import Graph, Node
from .ops import get_op


class Interpreter:
    """Runs a graph node by node with each op's NumPy reference."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = graph.nodes()

    def run(self, *args) -> list[np.ndarray]:
        """Bind ``args`` to the graph inputs, run every node, return the outputs (fresh arrays)."""
        arrays = check_arguments(self.graph, args)
        env: dict[Node, np.ndarray] = dict(zip(self.graph.inputs, arrays))
        with np.errstate(all="ignore"):  # NumPy's warnings for log(0) etc.: results are the same
            for node in self.order:
                if node.op != "input":
                    env[node] = self.run_node(node, [env[o] for o in node.operands])
        return [_owned(env[out], arrays) for out in self.graph.outputs]

    def run_node(self, node: Node, values: list[np.ndarray]) -> np.ndarray:
        """Compute one node from its operand values with the op's NumPy reference."""
        result = np.asarray(get_op(node.op).reference(*values, **node.attrs))
        if result.dtype != node.dtype:  # e.g. NumPy scalars from 0-d operands: same values
            result = result.astype(node.dtype)
        assert result.shape == node.shape, f"{node!r} computed shape {result.shape}"
        return result


def interpret(graph: Graph, *args) -> list[np.ndarray]:
    """Run ``graph`` on NumPy arrays ``args`` and return the list of its outputs."""
    return Interpreter(graph).run(*args)


def check_arguments(graph: Graph, args) -> list[np.ndarray]:
    """Check count, shape and dtype of ``args`` against the graph inputs; return them as arrays."""
    if len(args) != len(graph.inputs):
        raise MinicompRuntimeError(
            f"graph {graph.name!r} takes {len(graph.inputs)} argument(s) "
            f"({', '.join('%' + i.name for i in graph.inputs)}), got {len(args)}"
        )
    arrays = []
    for node, arg in zip(graph.inputs, args):
        array = np.asarray(arg)
        if array.shape != node.shape or array.dtype != node.dtype:
            got = f"{array.dtype}{list(array.shape)}"
            try:
                got = str(TensorType.of(array))
            except Exception:
                pass
            raise MinicompRuntimeError(
                f"argument %{node.name} of graph {graph.name!r} must be {node.type}, got {got}"
            )
        arrays.append(array)
    return arrays


def _owned(value: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
    """A result the caller may keep and write: never an input, nor a view of one or of a constant."""
    value = np.asarray(value)
    fresh = value.base is None and value.flags.writeable and not any(value is a for a in inputs)
    return value if fresh else value.copy()
