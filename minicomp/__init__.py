"""minicomp: a small AI compiler for NumPy code, built to be read, run and measured.

    import minicomp

    graph = minicomp.trace(f, x, w)          # NumPy function -> graph IR
    print(graph)                             # its text form
    fast = minicomp.jit(f)                   # compile on first call, reuse after
"""

__version__ = "0.1.0"  # first: the compile cache keys on it

from . import errors, nn
from .errors import MinicompError, MinicompWarning
from .frontend import TracedArray, trace
from .driver import compile, jit
from .ir import Graph, Interpreter, Kind, Node, TensorType, interpret
from .tools.explain import explain  # why each op was fused or not, kernels and bytes before/after

__all__ = [
    "Graph", "Interpreter", "Kind", "MinicompError", "MinicompWarning", "Node", "TensorType", "TracedArray",
    "compile", "errors", "explain", "interpret", "jit", "nn", "trace", "__version__",
]
