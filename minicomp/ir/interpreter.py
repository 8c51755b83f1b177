"""The reference interpreter: run any graph with NumPy, one op at a time.

This is the meaning of a graph. Every pass and backend is tested against it, and
``minicomp.jit(target="numpy")`` uses it directly. Subclass ``Interpreter`` and override
``run_node`` to observe or change how single nodes run (the torch.fx ``Interpreter`` idea).
"""

from __future__ import annotations

import numpy as np

from ..errors import MinicompError, MinicompRuntimeError, UnsupportedError, at
from .dtypes import TensorType
from .graph import Graph, Node
from .ops import get_op
from .symbolic import bind_shape, shape_symbols


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


def check_arguments(graph: Graph, args, sizes: dict | None = None) -> list[np.ndarray]:
    """Check count, shape and dtype of ``args`` against the graph inputs; return them as arrays.

    Anything ``np.asarray`` takes is accepted (a byte-swapped array counts as its native dtype:
    the C target swaps it); ndarray subclasses whose meaning a plain array would lose
    (``np.matrix``, masked arrays) raise ``UnsupportedError``; the rest ``MinicompRuntimeError``
    naming the input. A graph with dynamic dimensions (symbolic sizes) binds each size symbol
    in ``sizes`` from the arguments' shapes; an argument whose shape disagrees with the sizes
    bound before it (two dimensions of one symbol that differ) is refused, naming them.
    """
    sizes = {} if sizes is None else sizes
    if len(args) != len(graph.inputs):
        raise MinicompRuntimeError(
            f"graph {graph.name!r} takes {len(graph.inputs)} argument(s) "
            f"({', '.join('%' + i.name for i in graph.inputs)}), got {len(args)}"
        )
    return [check_argument(graph, node, arg, sizes) for node, arg in zip(graph.inputs, args)]


def check_argument(graph: Graph, node: Node, arg, sizes: dict, described: bool = False) -> np.ndarray:
    """One argument of ``check_arguments``: ``arg`` checked against the input ``node`` (binding
    its size symbols in ``sizes``) and returned as an array. ``described``: ``arg`` only
    describes an array elsewhere (a device array's ``shape`` and ``dtype``): checked, returned as is."""
    refuse_array_subclass(arg, f"argument %{node.name} of graph {graph.name!r}")
    array = arg if described else _as_array(arg, node, graph)
    dtype = array.dtype if array.dtype.isnative else array.dtype.newbyteorder("=")
    symbolic = shape_symbols(node.shape)
    if dtype != node.dtype or (not bind_shape(node.shape, array.shape, sizes) if symbolic
                               else array.shape != node.shape):
        bound = ", ".join(f"{k} = {v}" for k, v in sorted(sizes.items()) if k in symbolic)
        raise MinicompRuntimeError(
            f"argument %{node.name} of graph {graph.name!r} must be {node.type}"
            f"{f' (with {bound})' if bound else ''}, got {_describe(arg, array)}"
        )
    return array


def _as_array(arg, node: Node, graph: Graph) -> np.ndarray:
    if type(arg) is np.ndarray:
        return arg
    if device_array_type(arg) is not None:
        raise MinicompRuntimeError(
            f"argument %{node.name} of graph {graph.name!r} is a {type(arg).__name__} in GPU memory, but this target "
            "runs on the CPU: compile with jit(target='cuda'), or pass host memory (torch: x.cpu().numpy(), "
            "CuPy: x.get(), pycuda: x.get())")
    try:
        return np.asarray(arg)
    except (TypeError, ValueError) as exc:  # e.g. a ragged list
        raise MinicompRuntimeError(f"argument %{node.name} of graph {graph.name!r} must be {node.type}, "
                                   f"got {type(arg).__name__} {arg!r:.60}, which is not an array: {exc}") from None


def device_array_type(value) -> tuple[tuple[int, ...], np.dtype] | None:
    """The shape and dtype of a device array (an object whose ``__cuda_array_interface__``
    describes GPU memory: torch on ``"cuda"``, CuPy, pycuda ``GPUArray``), None for anything else.

    Only the interface is read, so neither torch nor pycuda need be imported here; a torch
    tensor in host memory (whose interface property raises) is not a device array.

        torch.ones(2, 3, device="cuda")   ->  ((2, 3), dtype('float32'))
        np.ones(3), 1.5                   ->  None
    """
    try:
        interface = getattr(value, "__cuda_array_interface__", None)
        if interface is None:
            return None
        return tuple(int(n) for n in interface["shape"]), np.dtype(interface["typestr"]).newbyteorder("=")
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _describe(arg, array: np.ndarray) -> str:
    """``f32[3,4]`` for an array, ``NoneType None`` for what only NumPy turns into one."""
    if not isinstance(arg, (np.ndarray, np.generic)) and array.dtype.kind in "OSUV":
        return f"{type(arg).__name__} {arg!r:.60}"
    try:
        return str(TensorType.of(array))
    except MinicompError:
        return f"{array.dtype}{list(array.shape)}"


#: ndarray subclasses that are plain arrays in every way minicomp can see (np.memmap: backed by a file)
PLAIN_ARRAY_TYPES = (np.ndarray, np.memmap)

_SUBCLASS_ADVICE = [  # (class, its name, what a plain array would lose, what to write instead)
    (np.matrix, "np.matrix", "its * and ** would become elementwise",
     "pass np.asarray(m) and write @ for the matrix product"),
    (np.ma.MaskedArray, "np.ma.MaskedArray", "its mask would be dropped",
     "pass m.filled(value), or the data and the mask as two arrays (np.ma.getdata(m), "
     "np.ma.getmaskarray(m)) and combine them with np.where"),
    (np.recarray, "np.recarray", "its fields would be lost", "pass each field as its own array"),
]


def refuse_array_subclass(value, what: str, loc: str | None = None) -> None:
    """Raise ``UnsupportedError`` if ``value`` is an ndarray subclass minicomp would misread.

    A trace or a compiled call sees only an array's shape, dtype and data, so ``np.matrix``
    (``a * b`` is a matrix product), masked arrays (the mask), ``np.recarray`` and unknown
    subclasses (their ``__array_ufunc__``/``__array_function__``) are refused, naming ``what``
    the value is (``"argument 'x' of f"``). Plain arrays, ``np.memmap`` and anything that is
    not an ndarray pass.
    """
    kind = type(value)
    if kind in PLAIN_ARRAY_TYPES or not isinstance(value, np.ndarray):
        return
    name = f"{kind.__module__}.{kind.__qualname__}"
    lost, instead = "its own methods and __array_ufunc__/__array_function__ would not run", "pass np.asarray(x)"
    for base, base_name, base_lost, base_instead in _SUBCLASS_ADVICE:
        if isinstance(value, base):
            name = base_name if kind is base else f"{name} (a {base_name})"
            lost, instead = base_lost, base_instead
            break
    raise UnsupportedError(
        f"{what} is a {name} of shape {value.shape} and dtype {value.dtype}: minicomp takes plain "
        f"arrays only (as a plain array, {lost}){at(loc)}; {instead}"
    )


def _owned(value: np.ndarray, inputs: list[np.ndarray]) -> np.ndarray:
    """A result the caller may keep and write: never an input, nor a view of one or of a constant."""
    value = np.asarray(value)
    fresh = value.base is None and value.flags.writeable and not any(value is a for a in inputs)
    return value if fresh else value.copy()
