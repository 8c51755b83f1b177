"""Constant folding: an op whose operands are all constants becomes one constant.

Closed-over NumPy arrays are constants in the graph (the tracer makes them so), so this folds
work on weights at compile time: ``w.T`` of a closed-over ``w`` becomes one transposed
constant, a mask built from constants becomes the mask. The value is computed by the
interpreter's ``run_node``, that is, by the op's NumPy reference: folding cannot change what a
graph means.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from ..ir.interpreter import Interpreter
from ..ir.symbolic import Sym
from .pipeline import register_pass

#: A folded constant may always have this many elements (256 KiB of float32) ...
FOLD_ALWAYS_ELEMENTS = 1 << 16
# ... and beyond that, no more elements than its operands have together. Folding
# broadcast_to(0.0, (4096, 4096)) would store 16M elements in place of one: kept.


@register_pass("constant_fold")
def constant_fold(graph: Graph) -> Graph:
    """Replace every op whose operands are all constants by the constant it computes.

    Requires: a verified graph.
    Guarantees: no op with only constant operands is left, except those the size rule keeps
    and those whose evaluation raises (an integer to a negative power: the error belongs to run
    time). The size rule: the result is folded when it has at most ``FOLD_ALWAYS_ELEMENTS``
    elements, or no more elements than its operands together (a broadcast of a scalar to a big
    shape is cheaper to compute than to store). Types are unchanged. Constants nobody uses any
    more are left for ``dce``.

        before:  %t = transpose(%w) {perm=[1,0]} : f32[3,2]
                 %y = matmul(%x, %t) : f32[4,2]
        after:   %y = matmul(%x, %t_folded) : f32[4,2]     (%t_folded = constant, w.T)
    """
    interpreter = Interpreter(graph)
    for node in graph.op_nodes():  # in topological order: folded results feed later folds
        if all(o.op == "constant" for o in node.operands) and _small_enough(node):
            value = _evaluate(interpreter, node)
            if value is not None:
                folded = graph.add_constant(value, name=f"{node.name}_folded", loc=node.loc)
                graph.replace_all_uses(node, folded)
                graph.erase(node)
    return graph


def _small_enough(node: Node) -> bool:
    """The size rule of the docstring; a result of symbolic size has no value yet: never folded."""
    if isinstance(node.type.size, Sym):
        return False
    operand_elements = sum(o.type.size for o in node.operands)
    return node.type.size <= max(FOLD_ALWAYS_ELEMENTS, operand_elements)


def _evaluate(interpreter: Interpreter, node: Node) -> np.ndarray | None:
    """The node's value from its constant operands; None if NumPy raises."""
    values = [o.attrs["value"] for o in node.operands]
    try:
        with np.errstate(all="ignore"):  # log(0) = -inf is a value, not an error
            return interpreter.run_node(node, values)
    except (ArithmeticError, ValueError, TypeError):
        return None
