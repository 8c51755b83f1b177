"""``minicomp.jit``: compile a NumPy function once per argument signature, reuse it after.

    @minicomp.jit                      # default target
    def f(x, w): ...

    @minicomp.jit(target="numpy")      # explicit target (and target options)
    def g(x): ...

    h = minicomp.jit(f, target="numpy")

The first call with a new *signature* (the shapes and dtypes of the array arguments, and the
values of the non-array arguments, which are baked in as constants) traces the function and
compiles the graph for the target; later calls with the same signature reuse it. Compilation is
guarded by a lock, so threads calling at once compile each signature once.
"""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable

import numpy as np

from ..errors import MinicompError
from ..ir.graph import Graph
from .tracer import trace_with_structure

#: target name -> function ``(graph, **options) -> callable(*arrays) -> list of arrays``
TARGETS: dict[str, Callable] = {}


def register_target(name: str):
    """Register a backend: ``compile(graph, **options)`` returns a function of the input arrays."""
    def register(compile_fn):
        TARGETS[name] = compile_fn
        return compile_fn
    return register


@register_target("numpy")
def _compile_numpy(graph: Graph, **options):
    """The reference target: run the graph with the NumPy interpreter."""
    from ..ir.interpreter import Interpreter

    if options:
        raise MinicompError(f"target 'numpy' takes no options, got {sorted(options)}")
    return Interpreter(graph).run


DEFAULT_TARGET = "numpy"


class Compiled:
    """One compiled signature: the traced graph and the target's runnable."""

    def __init__(self, graph: Graph, structure, run: Callable):
        self.graph = graph
        self.structure = structure  # None (one output), tuple or list
        self.run = run


class JitFunction:
    """The callable ``jit`` returns; see the module docstring."""

    def __init__(self, fn: Callable, target: str, options: dict):
        if target not in TARGETS:
            raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = target
        self.options = options
        self.signature = inspect.signature(fn)
        self._compiled: dict[Any, Compiled] = {}
        self._lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        compiled = self.compiled_for(*args)
        outputs = compiled.run(*[a for a in args if _is_array(a)])
        if compiled.structure is None:
            return outputs[0]
        return compiled.structure(outputs)

    def compiled_for(self, *args) -> Compiled:
        """The compiled form for these arguments' signature, compiling it on first use."""
        key = _signature_key(args)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key)
                if compiled is None:
                    graph, structure = trace_with_structure(self.fn, tuple(args))
                    run = TARGETS[self.target](graph, **self.options)
                    compiled = self._compiled[key] = Compiled(graph, structure, run)
        return compiled

    def trace(self, *args, **kwargs) -> Graph:
        """The graph traced for these arguments (compiling them if not done yet)."""
        return self.compiled_for(*self._positional(args, kwargs)).graph

    @property
    def cache_size(self) -> int:
        """How many signatures have been compiled."""
        return len(self._compiled)

    def _positional(self, args, kwargs) -> tuple:
        if not kwargs:
            return args
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.args


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic))


def _signature_key(args) -> tuple:
    key = []
    for value in args:
        if _is_array(value):
            key.append(("array", np.shape(value), np.asarray(value).dtype.str))
        else:
            try:
                hash(value)
            except TypeError:
                value = repr(value)
            key.append(("static", type(value).__name__, value))
    return tuple(key)


def jit(fn: Callable | None = None, *, target: str = DEFAULT_TARGET, **options):
    """Compile ``fn`` (an unchanged NumPy function) for ``target``; see the module docstring."""
    if fn is None:
        return lambda f: JitFunction(f, target, options)
    return JitFunction(fn, target, options)
