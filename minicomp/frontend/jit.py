"""``minicomp.jit``: compile a NumPy function once per argument signature, reuse it after.

    @minicomp.jit                      # default target: "c" (native code through gcc)
    def f(x, w): ...

    @minicomp.jit(target="numpy")      # explicit target (and target options)
    def g(x): ...

    h = minicomp.jit(f, target="numpy")

The first call with a new *signature* (the shapes and dtypes of the array arguments, and the
values of the non-array arguments, which are baked in as constants) traces the function and
compiles the graph for the target; later calls with the same signature reuse it. Compilation is
guarded by a lock, so threads calling at once compile each signature once.

**Dynamic dimensions** (``docs/dynamic_dimensions.md``). A dimension may be compiled as a
*symbolic size*, so that one compile serves every length of it:

    @minicomp.jit(dynamic={"x": [0]})  # x.shape[0] is the size symbol x_0
    def step(x, w): ...

Without ``dynamic=``, the C target does what torch.compile calls *automatic dynamic*: a call
whose signature differs from one seen before only in some dimension sizes compiles those
dimensions as symbols (once), so a generation loop over a growing sequence compiles twice,
not once per token. ``dynamic=False`` turns that off (every shape compiles on its own).
Where the function cannot be compiled with a symbolic size (Python code that needs its value:
``range(n)``, ``if n > 3``, ``np.tri(n)``, an op without symbolic support yet), the signature
is compiled with static sizes instead, with a ``MinicompWarning`` naming the line. What a
symbolic compile assumed (``x[-1]`` along it needs ``n >= 1``) is a guard checked before it
serves a call; a call that breaks one compiles with static sizes.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any, Callable

import numpy as np

from ..errors import MinicompError, MinicompRuntimeError, MinicompWarning, UnsupportedError, at
from ..ir.dtypes import TensorType
from ..ir.graph import Graph
from ..ir.symbolic import Sym, collect_guards, guards_hold
from ..runtime.fork import ForkSafeLock
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


DEFAULT_TARGET = "c"  # NumPy code in, native code out; "numpy" runs the reference interpreter


#: target name -> its program cache (``runtime/program_cache.py`` for "c"): a module with
#: ``program_key(traced, passes, options)``, ``lookup(key, traced, relower)``, ``fits`` and ``remember``
PROGRAM_CACHES: dict = {}


class Compiled:
    """One compiled signature: the traced graph, the optimised graph and the target's runnable.

    A signature found in the target's program cache was not optimised in this process: its
    ``graph`` and ``report`` are made (``optimise()``) when first asked for.
    """

    def __init__(self, traced: Graph, graph: Graph | None, report, structure, run: Callable, optimise=None,
                 sizes: dict | None = None):
        self.traced = traced  # as traced, before any pass
        self.sizes = sizes or {}  # dynamic dimensions: size symbol -> "x.shape[0]" (empty: static)
        self.guards: list = []  # what a symbolic compile assumed: (Sym, minimum, why), see ir/symbolic.py
        self._graph = graph  # after the pass pipeline: what the target compiled
        self._report = report  # PipelineReport: what each pass did
        self.structure = structure  # None (one output), tuple or list
        self.run = run
        self._optimise = optimise

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph, self._report = self._optimise()
        return self._graph

    @property
    def report(self):
        if self._report is None:
            self._graph, self._report = self._optimise()
        return self._report


class JitFunction:
    """The callable ``jit`` returns; see the module docstring."""

    def __init__(self, fn: Callable, target: str, options: dict):
        from ..passes.pipeline import pipeline_names

        if target not in TARGETS:
            raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
        if not callable(fn):
            raise UnsupportedError(f"minicomp.jit compiles a function; got {fn!r:.40} (of type {type(fn).__name__})")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = target
        self.passes = options.pop("passes", None)  # default: the default pipeline
        self.disable = tuple(options.pop("disable", ()))
        pipeline_names(self.passes, self.disable)  # unknown pass names fail now, not at first call
        self.dynamic = options.pop("dynamic", None)  # None: automatic; False: off; {name: [axes]}
        self.options = options
        self.signature = _signature(fn)
        _check_dynamic(self.dynamic, self.signature, target, getattr(fn, "__name__", "function"))
        self._compiled: dict[Any, Compiled] = {}
        self._first_shapes: dict[Any, tuple] = {}  # signature class -> the first call's shapes
        self._varying: dict[Any, set] = {}  # signature class -> (argument, axis) seen with two sizes
        self._static_only: dict[Any, str] = {}  # symbolic key -> why it could not compile so
        self._lock = ForkSafeLock()  # a forked child never waits for its parent's compile

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        compiled = self.compiled_for(*args)
        outputs = compiled.run(*[a for a in args if _is_array(a)])
        if compiled.structure is None:
            return outputs[0]
        return compiled.structure(outputs)

    def compiled_for(self, *args) -> Compiled:
        """The compiled form for these arguments' signature, compiling it on first use.

        With dynamic dimensions (marked, or seen varying) the symbolic compile serves every
        size of them; see the module docstring.
        """
        key = _signature_key(args, self.fn)
        compiled = self._compiled.get(key)
        if compiled is not None:
            return compiled
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                compiled = self._compiled_dynamic(args, key)
                if compiled is not None:  # this shape's later calls find it at once
                    self._compiled[key] = compiled
            if compiled is None:
                traced, structure = trace_with_structure(self.fn, tuple(args))
                compiled = self._compiled[key] = self._compile(traced, structure)
        return compiled

    def _dynamic_axes(self, args, key) -> dict[int, set]:
        """Argument index -> the axes to compile as symbolic sizes for this call (may be empty)."""
        if self.dynamic is False or self.target != "c":
            return {}
        names = list(self.signature.parameters)
        axes: dict[int, set] = {}
        for name, marked in (self.dynamic or {}).items():
            index = names.index(name)
            if index < len(args) and _is_array(args[index]):
                ndim = np.ndim(args[index])
                bad = [a for a in marked if not -ndim <= a < ndim]
                if bad:
                    raise MinicompError(f"jit(dynamic={{{name!r}: {list(marked)}}}): argument {name!r} has "
                                        f"{ndim} dimension(s) (shape {np.shape(args[index])}), so axis "
                                        f"{bad[0]} does not exist")
                axes.setdefault(index, set()).update(a % ndim for a in marked)
        if self.dynamic is None:  # automatic: the axes whose size changed between calls
            for index, axis in self._observe(key):
                axes.setdefault(index, set()).add(axis)
        return {i: a for i, a in axes.items() if a}

    def _observe(self, key) -> set:
        """Remember this signature's shapes; the (argument, axis) pairs seen with two sizes."""
        group = tuple((k[0], len(k[1]), k[2]) if k[0] == "array" else k for k in key)
        shapes = [k[1] if k[0] == "array" else None for k in key]
        first = self._first_shapes.setdefault(group, shapes)
        varying = self._varying.setdefault(group, set())
        varying.update((i, axis) for i, (a, b) in enumerate(zip(first, shapes)) if a is not None
                       for axis, (m, n) in enumerate(zip(a, b)) if m != n)
        return varying

    def _compiled_dynamic(self, args, key) -> Compiled | None:
        """The symbolic compile serving these arguments, made on first use; None when there are
        no dynamic dimensions here, the function needs their values, or this call breaks a guard
        the symbolic compile assumed (``x[-1]`` needs ``x_0 >= 1``): then static sizes."""
        axes = self._dynamic_axes(args, key)
        if not axes:
            return None
        symbolic_args, where = self._symbolic_arguments(args, axes)
        symbolic_key = _signature_key(symbolic_args, self.fn)
        compiled = self._compiled.get(symbolic_key)
        if compiled is None and symbolic_key not in self._static_only:
            compiled = self._compile_symbolic(symbolic_args, symbolic_key, where)
        if compiled is None:
            return None
        sizes = {symbol: np.shape(args[i])[axis] for symbol, (i, axis) in where.items()}
        return compiled if guards_hold(compiled.guards, sizes) else None

    def _symbolic_arguments(self, args, axes: dict[int, set]) -> tuple[list, dict]:
        """The arguments with ``TensorType`` s whose dynamic axes are size symbols, and for each
        symbol the first ``(argument index, axis)`` it stands for.

        Dynamic dimensions of equal size in this call share one symbol (torch.compile's *duck
        sizing*): ``x: [T, C]`` and a mask ``[T, T]`` broadcast together. A later call where
        they differ has another signature, so it never uses this compile.
        """
        names = list(self.signature.parameters)
        symbolic_args, where, symbol_of_size = list(args), {}, {}
        for index, dims in sorted(axes.items()):
            shape = list(np.shape(args[index]))
            for axis in sorted(dims):
                symbol = symbol_of_size.get(shape[axis])
                if symbol is None:
                    symbol = _size_symbol(names[index] if index < len(names) else f"arg{index}", axis, where)
                    symbol_of_size[shape[axis]], where[symbol] = symbol, (index, axis)
                shape[axis] = Sym.symbol(symbol)
            symbolic_args[index] = TensorType(shape, np.asarray(args[index]).dtype.newbyteorder("="))
        return symbolic_args, where

    def _compile_symbolic(self, symbolic_args: list, symbolic_key, where: dict) -> Compiled | None:
        """Trace and compile with symbolic sizes; None (and a ``MinicompWarning``) if that fails."""
        names = list(self.signature.parameters)
        sizes = {symbol: f"{names[i] if i < len(names) else f'args[{i}]'}.shape[{axis}]"
                 for symbol, (i, axis) in where.items()}
        try:
            with collect_guards() as guards:
                traced, structure = trace_with_structure(self.fn, tuple(symbolic_args))
            compiled = self._compile(traced, structure, sizes)
        except Exception as exc:  # needs a size's value: compile this signature with static sizes
            self._static_only[symbolic_key] = reason = f"{type(exc).__name__}: {exc}{_user_line(exc)}"
            warnings.warn(f"{getattr(self.fn, '__name__', 'function')}: could not compile with the dynamic "
                          f"dimension(s) {', '.join(sizes.values())} as symbolic sizes ({reason:.300}); "
                          "compiling with static sizes, once per shape", MinicompWarning, stacklevel=5)
            return None
        compiled.guards = guards
        self._compiled[symbolic_key] = compiled
        return compiled

    def _compile(self, traced: Graph, structure, sizes: dict | None = None) -> Compiled:
        """Passes and target for a traced signature, unless the target's program cache has it.

        A symbolic compile (``sizes``) is not kept in the program cache yet.
        """
        from ..passes.pipeline import pipeline_names, run_pipeline

        def optimise():
            return run_pipeline(traced, self.passes, self.disable)

        if sizes:
            graph, report = optimise()
            return Compiled(traced, graph, report, structure, TARGETS[self.target](graph, **self.options),
                            sizes=sizes)
        programs = PROGRAM_CACHES.get(self.target)
        if programs is not None:
            key = programs.program_key(traced, pipeline_names(self.passes, self.disable), self.options)
            run = programs.lookup(key, traced, optimise)
            if run is not None:
                return Compiled(traced, None, None, structure, run, optimise)
        graph, report = optimise()
        run = TARGETS[self.target](graph, **self.options)
        if programs is not None and programs.fits(traced, run):
            programs.remember(key, run)
        return Compiled(traced, graph, report, structure, run)

    def trace(self, *args, **kwargs) -> Graph:
        """The graph traced for these arguments, before any pass (compiling them if not done yet)."""
        return self.compiled_for(*self._positional(args, kwargs)).traced

    def inspect(self, *args, **kwargs) -> "Inspection":
        """Every stage compiled for these arguments: graph, loop IR and generated source."""
        compiled = self.compiled_for(*self._positional(args, kwargs))
        return Inspection(compiled.graph, getattr(compiled.run, "program", None),
                          getattr(compiled.run, "source", None), compiled.traced, compiled.report)

    @property
    def cache_size(self) -> int:
        """How many signatures have been compiled (a symbolic compile counts once)."""
        return len(set(map(id, self._compiled.values())))

    def _positional(self, args, kwargs) -> tuple:
        name = getattr(self.fn, "__name__", "function")
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:  # e.g. "missing a required argument: 'x'"
            raise MinicompRuntimeError(f"{name}(): {exc}") from None
        params = self.signature.parameters
        keyword_only = sorted(k for k in kwargs if k not in params or params[k].kind is params[k].KEYWORD_ONLY)
        if keyword_only:  # the traced function is called with positional arguments only
            raise UnsupportedError(f"{name}(): keyword-only argument(s) {keyword_only} "
                                   "are not supported by jit; make them positional parameters")
        bound.apply_defaults()  # f(x) and f(x, k=<default>) share one signature
        return bound.args


class Inspection:
    """What one signature compiled to; ``print`` it to see all stages in order."""

    def __init__(self, graph: Graph, program=None, source: str | None = None, traced: Graph | None = None,
                 report=None):
        self.traced = traced  # the graph as traced
        self.report = report  # what each pass did
        self.graph = graph  # the graph after the passes, as compiled
        self.program = program  # the lowered loop IR (None for the numpy target)
        self.source = source  # the generated C or CUDA text (None for the numpy target)

    @property
    def loops(self) -> str | None:
        return None if self.program is None else str(self.program)

    def __str__(self) -> str:
        parts = [f"== graph ==\n{self.graph}"]
        if self.report is not None and self.report.records:
            parts.insert(0, f"== passes ==\n{self.report}")
        if self.program is not None:
            parts.append(f"== loops ==\n{self.loops}")
        if self.source is not None:
            parts.append(f"== source ==\n{self.source}")
        return "\n\n".join(parts)


def compile(graph: Graph, target: str = DEFAULT_TARGET, passes=None, disable=(), **options) -> Callable:
    """Run the pass pipeline on ``graph`` and compile it for ``target``.

    Returns a function of the input arrays that returns the list of outputs. ``passes=[]``
    compiles the graph exactly as given.
    """
    from ..passes.pipeline import run_pipeline

    if target not in TARGETS:
        raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
    graph.verify()
    graph, _ = run_pipeline(graph, passes, disable)
    return TARGETS[target](graph, **options)


def _signature(fn: Callable) -> inspect.Signature:
    """``fn``'s signature; ``(*args)`` for a builtin without one (``jit(np.exp)``)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return inspect.Signature([inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL)])


def _check_dynamic(dynamic, signature: inspect.Signature, target: str, name: str) -> None:
    """``dynamic=`` is None, False, True (automatic) or ``{argument name: [axes]}``; else ``MinicompError``."""
    if dynamic is None or dynamic is False:
        return
    where = f"jit({name}, dynamic={dynamic!r:.60})"
    if target != "c":
        raise MinicompError(f"{where}: dynamic dimensions need the C target, not {target!r}")
    if not isinstance(dynamic, dict):
        raise MinicompError(f"{where}: write dynamic={{'x': [0]}} (argument name -> axes), or dynamic=False")
    for arg, axes in dynamic.items():
        if arg not in signature.parameters:
            raise MinicompError(f"{where}: {name} has no argument {arg!r}; its arguments: "
                                f"{', '.join(signature.parameters)}")
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool)
                                                         for a in axes):
            raise MinicompError(f"{where}: the axes of {arg!r} must be a list of ints, like [0]")


def _user_line(exc: BaseException) -> str:
    """`` (at file.py:12)``: the innermost line of the traceback outside minicomp and NumPy, or ""."""
    import os
    import traceback

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(package) and f"{os.sep}numpy{os.sep}" not in f.filename]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _size_symbol(argument: str, axis: int, taken: dict) -> str:
    """The name of the size symbol for ``argument.shape[axis]``: ``x_0`` (C-safe, unique)."""
    base = f"{argument}_{axis}" if argument.isascii() and argument.isidentifier() else f"s{len(taken)}"
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic))


def _signature_key(args, fn: Callable) -> tuple:
    key = []
    for index, value in enumerate(args):
        if _is_array(value):
            key.append(("array", np.shape(value), np.asarray(value).dtype.str))
        else:
            try:
                hash(value)
            except TypeError:
                _refuse_unkeyable(value, index, fn)
                value = repr(value)
            key.append(("static", type(value).__name__, value))
    return tuple(key)


_KEYED_BY_REPR = (list, dict, set, tuple)  # containers of plain values: their repr is their value


def _refuse_unkeyable(value, index: int, fn: Callable) -> None:
    """An unhashable static argument other than a container: jit cannot tell its values apart."""
    if isinstance(value, _KEYED_BY_REPR):
        return
    from .tracer import user_location

    try:
        param = repr(list(inspect.signature(fn).parameters)[index])
    except (TypeError, ValueError, IndexError):
        param = f"#{index}"
    raise UnsupportedError(
        f"argument {param} of {getattr(fn, '__name__', 'function')} is a {type(value).__name__} "
        f"({value!r:.40}), neither an array nor a hashable value{at(user_location())}; jit passes "
        "non-array arguments unchanged and compiles once per value, so pass arrays as arrays and "
        "settings as hashable values (numbers, strings, tuples, a frozen dataclass)"
    )


def jit(fn: Callable | None = None, *, target: str = DEFAULT_TARGET, **options):
    """Compile ``fn`` (an unchanged NumPy function) for ``target``; see the module docstring."""
    if fn is None:
        return lambda f: JitFunction(f, target, options)
    return JitFunction(fn, target, options)
