"""``minicomp.jit``: compile a NumPy function once per argument signature, reuse it after.

    @minicomp.jit                      # default target: "c" (native code through gcc)
    def f(x, w): ...

    @minicomp.jit(target="numpy")      # explicit target (and target options)
    def g(x): ...

    h = minicomp.jit(f, target="numpy")

The first call with a new *signature* traces the function and compiles the graph for the
target; later calls with the same signature reuse it. Compilation is guarded by a lock, so
threads calling at once compile each signature once. The signature is

* the arguments as pytrees (``pytree.py``): their nesting (tuples, lists, dicts), the shape and
  dtype of every array leaf (an input of the compiled function) and the value of every other
  leaf (static: baked in, compared exactly: ``0.0`` and ``-0.0`` differ, ``1`` and ``1.0`` too);
* the shape and dtype of every array the function reads through its closure, its globals or
  ``self`` (``state.py``): such arrays are inputs too, read again at every call, so a weight
  updated in place or rebound is always seen. ``jit(f, freeze=True)`` folds them into the
  code as constants instead (and warns, naming them).

Results may be any pytree of arrays; a traced array the function stores into an argument's
dict or list, a closure variable or ``self`` is stored there, computed, after each call.

**Dynamic dimensions** (``docs/dynamic_dimensions.md``). A dimension may be compiled as a
*symbolic size*, so that one compile serves every length of it:

    @minicomp.jit(dynamic={"x": [0]})  # x.shape[0] is the size symbol x_0
    def step(x, w): ...

Without ``dynamic=``, the C target does what torch.compile calls *automatic dynamic*: a call
whose signature differs from one seen before only in the sizes of some array leaves' dimensions
compiles those dimensions as symbols (once), so a generation loop over a growing sequence
compiles twice, not once per token. ``dynamic=False`` turns that off (every shape compiles on
its own). Where the function cannot be compiled with a symbolic size (Python code that needs its
value: ``range(n)``, ``if n > 3``, an op without symbolic support yet), the signature is compiled
with static sizes instead, with a ``MinicompWarning`` naming the line. What a symbolic compile
assumed (``x[-1]`` along it needs ``n >= 1``) is a guard checked before it serves a call; a call
that breaks one compiles with static sizes.
"""

from __future__ import annotations

import functools
import inspect
import types
import warnings
from typing import Any, Callable

import numpy as np

from ..errors import MinicompError, MinicompRuntimeError, MinicompWarning, UnsupportedError, at
from ..ir.dtypes import TensorType
from ..ir.graph import Graph
from ..ir.symbolic import Sym, collect_guards, guards_hold
from ..runtime.fork import ForkSafeLock
from .pytree import flatten, unflatten
from .state import read_lifted
from .tracer import Structure, trace_with_structure

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

    def __init__(self, traced: Graph, graph: Graph | None, report, structure: Structure, run: Callable,
                 optimise=None, sizes: dict | None = None):
        self.traced = traced  # as traced, before any pass
        self.sizes = sizes or {}  # dynamic dimensions: size symbol -> "x.shape[0]" (empty: static)
        self.guards: list = []  # what a symbolic compile assumed: (Sym, minimum, why), see ir/symbolic.py
        self._graph = graph  # after the pass pipeline: what the target compiled
        self._report = report  # PipelineReport: what each pass did
        self.structure = structure  # how arguments, outside arrays and results map to the graph
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

    def __init__(self, fn: Callable, target: str, options: dict, freeze: bool = False):
        from ..passes.pipeline import pipeline_names

        if target not in TARGETS:
            raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
        if not callable(fn):
            raise UnsupportedError(f"minicomp.jit compiles a function; got {fn!r:.40} (of type {type(fn).__name__})")
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = target
        self.freeze = freeze  # outside arrays folded as constants (True) or read at every call
        self.passes = options.pop("passes", None)  # default: the default pipeline
        self.disable = tuple(options.pop("disable", ()))
        pipeline_names(self.passes, self.disable)  # unknown pass names fail now, not at first call
        self.dynamic = options.pop("dynamic", None)  # None: automatic; False: off; {name: [axes]}
        self.options = options
        self.signature = _signature(fn)
        _check_dynamic(self.dynamic, self.signature, target, getattr(fn, "__name__", "function"))
        self._compiled: dict[Any, list[Compiled]] = {}  # argument key -> forms (their outside arrays differ)
        self._first_shapes: dict[Any, list] = {}  # signature class -> the first call's leaf shapes
        self._varying: dict[Any, set] = {}  # signature class -> (leaf, axis) seen with two sizes
        self._static_only: dict[Any, str] = {}  # symbolic key -> why it could not compile so
        self._lock = ForkSafeLock()  # a forked child never waits for its parent's compile

    def __get__(self, instance, owner=None):
        """``@jit`` on a method: ``model.forward`` is this function with ``model`` as ``self``."""
        return self if instance is None else types.MethodType(self, instance)

    def __call__(self, *args, **kwargs):
        args = self._positional(args, kwargs)
        compiled, inputs = self._compiled_and_inputs(args)
        outputs = update_arguments(compiled.traced, inputs, compiled.run(*inputs))
        return compiled.structure.finish_call(outputs, args)

    def compiled_for(self, *args) -> Compiled:
        """The compiled form for these arguments' signature, compiling it on first use."""
        return self._compiled_and_inputs(args)[0]

    def _compiled_and_inputs(self, args: tuple) -> tuple[Compiled, list]:
        """The compiled form for ``args`` and the arrays it takes: argument leaves, then lifted arrays."""
        arrays: list = []
        key = self._key(args, arrays)
        found = self._find(key, args)
        if found is None:
            with self._lock:
                found = self._find(key, args)  # another thread may have compiled it meanwhile
                if found is None:
                    self._compiled.setdefault(key, []).append(self._compiled_dynamic(args, key, arrays)
                                                              or self._compile_static(args))
                    found = self._find(key, args)
        if found is None:
            raise MinicompRuntimeError(f"{getattr(self.fn, '__name__', 'function')}: the arrays it reads from "
                                       "outside its arguments changed while it was traced (another thread?)")
        compiled, lifted = found
        return compiled, arrays + lifted

    def _find(self, key: tuple, args: tuple) -> tuple[Compiled, list] | None:
        """The compiled form for this argument key whose outside arrays still fit, and those arrays."""
        for compiled in self._compiled.get(key, ()):
            lifted = read_lifted(compiled.structure.lifted, args)
            if lifted is not None:
                return compiled, lifted
        return None

    def _key(self, args: tuple, arrays: list) -> tuple:
        """The pytree key of the arguments (``pytree.flatten``); a leaf it cannot key is refused."""
        try:
            return flatten(args, arrays)
        except UnsupportedError:
            for index, value in enumerate(args):
                try:
                    flatten(value, [])
                except UnsupportedError as exc:
                    _refuse_unkeyable(value, index, self.fn, str(exc))
            raise

    def _compile_static(self, args: tuple) -> Compiled:
        """Trace ``args`` as they are (every size a number) and compile."""
        traced, structure = trace_with_structure(self.fn, tuple(args), lift=not self.freeze)
        self._warn_frozen(structure)
        return self._compile(traced, structure)

    # -- dynamic dimensions -----------------------------------------------------------------------

    def _compiled_dynamic(self, args: tuple, key: tuple, arrays: list) -> Compiled | None:
        """The symbolic compile serving these arguments, made on first use; None when there are
        no dynamic dimensions here, the function needs their values, or this call breaks a guard
        the symbolic compile assumed (``x[-1]`` needs ``x_0 >= 1``): then static sizes.

        ``arrays``: the arguments' array leaves, in ``flatten`` order."""
        axes = self._dynamic_axes(args, key, arrays)
        if not axes:
            return None
        names = _leaf_names(self.signature, args)
        leaves, where = _symbolic_leaves(arrays, axes, names)
        symbolic_args = unflatten(key, leaves)
        symbolic_key = (flatten(symbolic_args, []), "symbolic")
        forms = self._compiled.get(symbolic_key)
        if not forms and symbolic_key not in self._static_only:
            forms = self._compile_symbolic(symbolic_args, symbolic_key, where, names)
        if not forms:
            return None
        sizes = {symbol: arrays[leaf].shape[axis] for symbol, (leaf, axis) in where.items()}
        for compiled in forms:
            if guards_hold(compiled.guards, sizes) and read_lifted(compiled.structure.lifted, args) is not None:
                return compiled
        return None

    def _dynamic_axes(self, args: tuple, key: tuple, arrays: list) -> dict[int, set]:
        """Array leaf number -> the axes to compile as symbolic sizes for this call (may be empty).

        ``dynamic={"x": [0]}`` names top-level array arguments; automatic dynamic (the default)
        takes every leaf axis seen with two sizes in calls of one signature class."""
        if self.dynamic is False or self.target != "c":
            return {}
        axes: dict[int, set] = {}
        first_leaf = _first_leaves(args)
        for name, marked in (self.dynamic or {}).items():
            index = list(self.signature.parameters).index(name)
            if index >= len(args):
                continue
            if type(args[index]) is not np.ndarray:
                raise MinicompError(f"jit(dynamic={{{name!r}: {list(marked)}}}): argument {name!r} is a "
                                    f"{type(args[index]).__name__}, not an array; dynamic= names array arguments")
            leaf, ndim = first_leaf[index], args[index].ndim
            bad = [a for a in marked if not -ndim <= a < ndim]
            if bad:
                raise MinicompError(f"jit(dynamic={{{name!r}: {list(marked)}}}): argument {name!r} has "
                                    f"{ndim} dimension(s) (shape {args[index].shape}), so axis "
                                    f"{bad[0]} does not exist")
            axes.setdefault(leaf, set()).update(a % ndim for a in marked)
        if self.dynamic is None:  # automatic: the axes whose size changed between calls
            for leaf, axis in self._observe(key, arrays):
                axes.setdefault(leaf, set()).add(axis)
        return {leaf: a for leaf, a in axes.items() if a and type(arrays[leaf]) is np.ndarray}

    def _observe(self, key: tuple, arrays: list) -> set:
        """Remember this signature class's leaf shapes; the (leaf, axis) pairs seen with two sizes.

        A signature class is the argument key with each array's shape replaced by its rank."""
        shapes = [np.shape(a) for a in arrays]
        group = flatten(unflatten(key, [_Rank(len(s)) for s in shapes]), [])
        first = self._first_shapes.setdefault(group, shapes)
        varying = self._varying.setdefault(group, set())
        varying.update((leaf, axis) for leaf, (a, b) in enumerate(zip(first, shapes))
                       for axis, (m, n) in enumerate(zip(a, b)) if m != n)
        return varying

    def _compile_symbolic(self, symbolic_args, symbolic_key, where: dict, names: list[str]) -> list | None:
        """Trace and compile with symbolic sizes; None (and a ``MinicompWarning``) if that fails."""
        try:
            with collect_guards() as guards:
                traced, structure = trace_with_structure(self.fn, tuple(symbolic_args), lift=not self.freeze)
            self._warn_frozen(structure)
            sizes = {symbol: f"{traced.inputs[leaf].name}.shape[{axis}]" for symbol, (leaf, axis) in where.items()}
            compiled = self._compile(traced, structure, sizes)
        except Exception as exc:  # needs a size's value: compile this signature with static sizes
            dims = ", ".join(f"{names[leaf]}.shape[{axis}]" for leaf, axis in where.values())
            self._static_only[symbolic_key] = reason = f"{type(exc).__name__}: {exc}{_user_line(exc)}"
            warnings.warn(f"{getattr(self.fn, '__name__', 'function')}: could not compile with the dynamic "
                          f"dimension(s) {dims} as symbolic sizes ({reason:.300}); "
                          "compiling with static sizes, once per shape", MinicompWarning, stacklevel=5)
            return None
        compiled.guards = guards
        forms = self._compiled.setdefault(symbolic_key, [])
        forms.append(compiled)
        return forms

    def _warn_frozen(self, structure: Structure) -> None:
        """``freeze=True``: say which outside arrays became constants of this compiled form."""
        if not structure.frozen:
            return
        from .frozen import definition_line

        place = definition_line(self.fn) or ("<minicomp>", 0)
        names = ", ".join(structure.frozen[:8]) + (", ..." if len(structure.frozen) > 8 else "")
        function = getattr(self.fn, "__qualname__", "the function")
        warnings.warn_explicit(
            f"jit(freeze=True): {len(structure.frozen)} array(s) that {function} reads from outside its arguments "
            f"are folded into the compiled code as constants ({names}): "
            "their values now; later changes are not seen. Without freeze=True they are read at every call.",
            MinicompWarning, place[0], place[1])

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
        return len({id(compiled) for forms in self._compiled.values() for compiled in forms})

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


def update_arguments(graph: Graph, arrays: list, outputs: list) -> list:
    """Copy each value the function wrote into an input (``graph.updated_inputs``) into the
    caller's array, as NumPy would have left it; return the outputs before those.

    ``arrays``: the call's inputs in graph order (argument leaves, then arrays lifted from
    outside). Each written one must be a writeable ``np.ndarray`` (else ``MinicompRuntimeError``).

    >>> f(cache, xk)          # f does cache[:, s:s+L] = xk: afterwards cache holds xk there
    """
    if not graph.updated_inputs:
        return outputs
    for number in graph.updated_inputs:
        array = arrays[number]
        if not isinstance(array, np.ndarray) or not array.flags.writeable:
            name = graph.inputs[number].name
            raise MinicompRuntimeError(
                f"{graph.name}: argument {name!r} is written by the function (x[...] = v or an in-place "
                f"operator), but the {type(array).__name__} passed is read-only (NumPy: assignment "
                "destination is read-only); pass a writeable array, or copy it first")
    for number, slot in graph.updated_inputs.items():
        np.copyto(arrays[number], outputs[slot], casting="unsafe")
    return outputs[:len(outputs) - len(graph.updated_inputs)]


def _refuse_unkeyable(value, index: int, fn: Callable, problem: str) -> None:
    """An argument with a leaf jit cannot key by value: refused, naming the parameter."""
    from .tracer import user_location

    try:
        param = repr(list(inspect.signature(fn).parameters)[index])
    except (TypeError, ValueError, IndexError):
        param = f"#{index}"
    function = getattr(fn, "__name__", "function").replace("<lambda>", "lambda")
    raise UnsupportedError(
        f"argument {param} of {function} is or holds {problem}{at(user_location())}; "
        "jit compiles once per value of a non-array argument, so pass arrays (alone or in tuples, lists "
        "and dicts) and settings as hashable values (numbers, strings, tuples, a frozen dataclass)"
    )


def jit(fn: Callable | None = None, *, target: str = DEFAULT_TARGET, freeze: bool = False, **options):
    """Compile ``fn`` (an unchanged NumPy function) for ``target``; see the module docstring.

    Requires: ``fn`` a Python function (or method, or callable object) of NumPy code.
    Guarantees: calls return what ``fn`` returns (within floating-point rounding), with arrays
    read through closures, globals and ``self`` as they are at the call (``freeze=True``: as they
    were when first traced, with a ``MinicompWarning``).

    >>> fast = jit(lambda x, p: x @ p["w"] + p["b"])
    >>> fast(np.ones((2, 3)), {"w": np.ones((3, 4)), "b": np.zeros(4)}).shape
    (2, 4)
    """
    if fn is None:
        return lambda f: JitFunction(f, target, options, freeze)
    return JitFunction(fn, target, options, freeze)


# -- dynamic dimensions: helpers -------------------------------------------------------------------


class _Rank:
    """A stand-in for an array leaf in a signature class: only its rank is part of the key."""

    def __init__(self, ndim: int):
        self.ndim = ndim

    def __eq__(self, other):
        return isinstance(other, _Rank) and other.ndim == self.ndim

    def __hash__(self):
        return hash((_Rank, self.ndim))


def _symbolic_leaves(arrays: list, axes: dict[int, set], names: list[str]) -> tuple[list, dict]:
    """The array leaves with ``TensorType`` s whose dynamic axes are size symbols, and for each
    symbol the first ``(leaf, axis)`` it stands for.

    Dynamic dimensions of equal size in this call share one symbol (torch.compile's *duck
    sizing*): ``x: [T, C]`` and a mask ``[T, T]`` broadcast together. A later call where they
    differ has another signature, so it never uses this compile.
    """
    leaves, where, symbol_of_size = list(arrays), {}, {}
    for leaf, dims in sorted(axes.items()):
        shape = list(arrays[leaf].shape)
        for axis in sorted(dims):
            symbol = symbol_of_size.get(shape[axis])
            if symbol is None:
                symbol = _size_symbol(names[leaf], axis, where)
                symbol_of_size[shape[axis]], where[symbol] = symbol, (leaf, axis)
            shape[axis] = Sym.symbol(symbol)
        leaves[leaf] = TensorType(shape, arrays[leaf].dtype.newbyteorder("="))
    return leaves, where


def _first_leaves(args: tuple) -> list[int]:
    """For each argument, the number of its first array leaf in the arguments' ``flatten`` order."""
    firsts, count = [], 0
    for value in args:
        firsts.append(count)
        leaves: list = []
        flatten(value, leaves)
        count += len(leaves)
    return firsts


def _leaf_names(signature: inspect.Signature, args) -> list[str]:
    """A name per array leaf (``x`` for a top-level array, ``params_3`` for a nested one)."""
    params = list(signature.parameters)
    names = []
    for index, value in enumerate(args):
        param = params[index] if index < len(params) and params[index] not in ("args",) else f"arg{index}"
        leaves: list = []
        flatten(value, leaves)
        if type(value) is np.ndarray:
            names.append(param)
        else:
            names += [f"{param}_{n}" for n in range(len(leaves))]
    return names


def _check_dynamic(dynamic, signature: inspect.Signature, target: str, name: str) -> None:
    """``dynamic=`` is None, False or ``{argument name: [axes]}``; else ``MinicompError``."""
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
