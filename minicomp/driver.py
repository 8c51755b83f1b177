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
or in the values of some ``int`` leaves compiles those as symbols (once, ``dynamic.py``), so a
generation loop over a growing sequence or a KV cache's position compiles twice, not once per
token. ``dynamic=False`` turns that off (every shape compiles on its own). Where the function
cannot be compiled with a symbolic size (Python code that needs its value: ``range(n)``,
``if n > 3``, an op without symbolic support yet), the signature is compiled with static sizes
instead, with a ``MinicompWarning`` naming the line. What a symbolic compile
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

from .errors import MinicompError, MinicompRuntimeError, MinicompWarning, UnsupportedError, at
from .ir.dtypes import TensorType
from .ir.graph import Graph
from .ir.symbolic import Sym, collect_guards, guards_hold
from .runtime.fork import ForkSafeLock
from .frontend.dynamic import DynamicSizes, SymbolicPlan, int_leaves, size_carriers, user_line
from .frontend.pytree import device_array_type, flatten
from .frontend.state import read_lifted
from .frontend.tracer import Structure, trace_with_structure
from .runtime import program_cache
from .stages import build, build_gpu_serial

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
    from .ir.interpreter import Interpreter

    if options:
        raise MinicompError(f"target 'numpy' takes no options, got {sorted(options)}")
    return Interpreter(graph).run


@register_target("c")
def _compile_c(graph: Graph, **options):
    """The C target: the loop-level stages (``minicomp.stages``: lower, schedule, simplify
    indices, render, compile, load) for this CPU."""
    if options:
        raise MinicompRuntimeError(f"target 'c' takes no options yet, got {sorted(options)}")
    return build(graph)


@register_target("gpu-serial-c")
def _compile_gpu_serial_c(graph: Graph, **options):
    """The GPU schedules on this CPU: lowered, scheduled for ``cuda_target("sm_90")`` (the
    thread-serial form: block, thread and barrier-phase loops are plain loops there), indices
    simplified, rendered as C, compiled and loaded (``stages.build_gpu_serial``)."""
    if options:
        raise MinicompRuntimeError(f"target 'gpu-serial-c' takes no options, got {sorted(options)}")
    return build_gpu_serial(graph)


@register_target("gpu-simt-interp")
def _compile_gpu_simt_interp(graph: Graph, **options):
    """For testing the GPU schedules without a GPU: lowered, scheduled for
    ``cuda_target("sm_90")``, fused into the SIMT form (``fuse_threads``), indices simplified,
    and run by the loop interpreter (``testing/backends.py``: ``SimtInterpreted``): the threads
    of a block in lockstep, in a shuffled order, shared memory NaN at each block's start, races
    raised as ``SynchronisationError``. Python's speed: tiny sizes only. ``order``: the thread
    order (``"reversed"`` or a seed; default ``SIMT_ORDER_SEED``)."""
    from .testing.backends import SIMT_ORDER_SEED, SimtInterpreted

    order = options.pop("order", SIMT_ORDER_SEED)
    if options:
        raise MinicompRuntimeError(f"target 'gpu-simt-interp' takes only order=, got {sorted(options)}")
    return SimtInterpreted(graph, order)


@register_target("cuda")
def _compile_cuda(graph: Graph, device: int = 0, **options):
    """The CUDA target: the loop-level stages for the NVIDIA GPU number ``device`` of this
    machine (lower, GPU schedules, fuse_threads, simplify indices, CUDA, nvcc, pycuda): NumPy
    arrays in and out, or device arrays (``__cuda_array_interface__``) in and ``GPUArray`` s out
    (``runtime/cuda.py``). ``MinicompError`` where pycuda, nvcc or a GPU is missing."""
    from .target import probe_cuda_target

    if options:
        raise MinicompRuntimeError(f"target 'cuda' takes only device=N, got {sorted(options)}")
    target = probe_cuda_target(device)
    if target is None:
        raise MinicompError(f"target 'cuda' needs an NVIDIA GPU (number {device}) and its driver: none found "
                            "(minicomp dump --target cuda prints the CUDA code without one)")
    return build(graph, target)


DEFAULT_TARGET = "c"  # NumPy code in, native code out; "numpy" runs the reference interpreter


#: target name -> its program cache (``runtime/program_cache.py`` for "c"): a module with
#: ``program_key(traced, passes, options)``, ``lookup(key, traced, relower)``, ``fits`` and ``remember``
PROGRAM_CACHES: dict = {"c": program_cache}


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
        self.int_symbols: dict[str, int] = {}  # int arguments compiled as sizes: symbol -> int leaf
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
        from .passes.pipeline import pipeline_names

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
        dynamic = options.pop("dynamic", None)
        self.options = options
        self.signature = _signature(fn)
        self.dynamic = DynamicSizes(dynamic, self.signature, target, getattr(fn, "__name__", "function"))
        self._compiled: dict[Any, list[Compiled]] = {}  # argument key -> forms (their outside arrays differ)
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
        if compiled.int_symbols:  # ints compiled as sizes: their values as size carriers
            return compiled, arrays + lifted + size_carriers(compiled.int_symbols, key)
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
        """The symbolic compile serving these arguments, made on first use (``dynamic.py``); None
        when nothing here is dynamic, the function needs a size's value, or this call breaks a
        guard the symbolic compile assumed (``x[-1]`` needs ``x_0 >= 1``): then static sizes.

        ``arrays``: the arguments' array leaves, in ``flatten`` order."""
        plans = self.dynamic.plans(args, key, arrays)
        failures, int_values = [], int_leaves(key)
        for plan in plans:
            forms = self._compiled.get(plan.key)
            if not forms and plan.key not in self._static_only:
                forms = self._compile_symbolic(plan)
                if not forms:
                    failures.append(plan)
            sizes = plan.sizes(arrays, int_values)
            for compiled in forms or ():
                if guards_hold(compiled.guards, sizes) and read_lifted(compiled.structure.lifted, args) is not None:
                    return compiled
        if failures and len(failures) == len(plans) and any(plan.dims for plan in plans):
            # say why, once, with the first (fullest) reason; ints that cannot be sizes stay static quietly
            warnings.warn(f"{getattr(self.fn, '__name__', 'function')}: could not compile with "
                          f"{', '.join(failures[0].described.values())} as symbolic sizes "
                          f"({self._static_only[failures[0].key]:.300}); compiling with static sizes, once per shape",
                          MinicompWarning, stacklevel=4)
        return None

    def _compile_symbolic(self, plan: SymbolicPlan) -> list | None:
        """Trace and compile ``plan`` with symbolic sizes; None (the reason in ``_static_only``) if that fails."""
        try:
            with collect_guards() as guards:
                traced, structure = trace_with_structure(self.fn, plan.args, lift=not self.freeze)
            self._warn_frozen(structure)
            for symbol in plan.ints:  # each int's value reaches the code as a carrier's length
                traced.add_input(f"size_{symbol}", TensorType([Sym.symbol(symbol)], np.bool_))
            compiled = self._compile(traced, structure, plan.described)
        except Exception as exc:  # needs a size's value: compile this signature with static sizes
            self._static_only[plan.key] = f"{type(exc).__name__}: {exc}{user_line(exc)}"
            return None
        compiled.guards, compiled.int_symbols = guards, plan.ints
        forms = self._compiled.setdefault(plan.key, [])
        forms.append(compiled)
        return forms

    def _warn_frozen(self, structure: Structure) -> None:
        """``freeze=True``: say which outside arrays became constants of this compiled form."""
        if not structure.frozen:
            return
        from .frontend.frozen import definition_line

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
        from .passes.pipeline import pipeline_names, run_pipeline

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
        """Every stage compiled for these arguments: the graph as traced and after the passes,
        the loop IR after each loop stage (``minicomp.stages``) and the generated source."""
        compiled = self.compiled_for(*self._positional(args, kwargs))
        program = getattr(compiled.run, "program", None)
        loop_stages = {}
        if program is not None:  # the earlier loop stages again (cheap: no compiling)
            from .stages import run_stages

            _, stages = run_stages(compiled.graph, stop_after="simplify_indices")
            loop_stages = stages.programs()
            loop_stages["simplify_indices"] = program  # the one compiled
        return Inspection(compiled.graph, program, getattr(compiled.run, "source", None), compiled.traced,
                          compiled.report, loop_stages)

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
    """What one signature compiled to; ``print`` it to see all stages in order.

    ``stage(name)`` gives one of them: ``"traced"`` and ``"graph"`` (after the passes), each
    loop stage (``"lower"``, ``"schedule"``, ``"simplify_indices"``: a ``Program``), and
    ``"render"`` (the source text).
    """

    def __init__(self, graph: Graph, program=None, source: str | None = None, traced: Graph | None = None,
                 report=None, loop_stages: dict | None = None):
        self.traced = traced  # the graph as traced
        self.report = report  # what each pass did
        self.graph = graph  # the graph after the passes, as compiled
        self.program = program  # the loop IR compiled: after the last loop stage (None for the numpy target)
        self.source = source  # the generated C or CUDA text (None for the numpy target)
        self.loop_stages = dict(loop_stages or {})  # loop stage name -> the Program after it
        if program is not None:
            self.loop_stages.setdefault("simplify_indices", program)

    @property
    def loops(self) -> str | None:
        return None if self.program is None else str(self.program)

    def stage(self, name: str):
        """What stage ``name`` made (see the class docstring); ``MinicompError`` if it did not run."""
        made = {"traced": self.traced, "graph": self.graph, **self.loop_stages, "render": self.source}
        if made.get(name) is None:
            known = [stage for stage, value in made.items() if value is not None]
            raise MinicompError(f"no stage {name!r} in this inspection; it has {', '.join(known)}")
        return made[name]

    def __str__(self) -> str:
        parts = []
        if self.report is not None and self.report.records:
            if self.traced is not None:
                parts.append(f"== traced graph ==\n{self.traced}")
            parts.append(f"== passes ==\n{self.report}")
        parts.append(f"== graph ==\n{self.graph}")
        for name, program in self.loop_stages.items():
            if name != "simplify_indices":
                parts.append(f"== loops after {name} ==\n{program}")
        if self.program is not None:
            parts.append(f"== loops == (after simplify_indices: what is rendered)\n{self.loops}")
        if self.source is not None:
            parts.append(f"== source ==\n{self.source}")
        return "\n\n".join(parts)


def compile(graph: Graph, target: str = DEFAULT_TARGET, passes=None, disable=(), **options) -> Callable:
    """Run the pass pipeline on ``graph`` and compile it for ``target``.

    Returns a function of the input arrays that returns the list of outputs. ``passes=[]``
    compiles the graph exactly as given.
    """
    from .passes.pipeline import run_pipeline

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
    outside). Each written one must be a writeable ``np.ndarray`` (else ``MinicompRuntimeError``)
    or a device array, which the CUDA executable has already written in place.

    >>> f(cache, xk)          # f does cache[:, s:s+L] = xk: afterwards cache holds xk there
    """
    if not graph.updated_inputs:
        return outputs
    on_host = {number: slot for number, slot in graph.updated_inputs.items()
               if device_array_type(arrays[number]) is None}
    for number in on_host:
        array = arrays[number]
        if not isinstance(array, np.ndarray) or not array.flags.writeable:
            name = graph.inputs[number].name
            raise MinicompRuntimeError(
                f"{graph.name}: argument {name!r} is written by the function (x[...] = v or an in-place "
                f"operator), but the {type(array).__name__} passed is read-only (NumPy: assignment "
                "destination is read-only); pass a writeable array, or copy it first")
    for number, slot in on_host.items():
        value = outputs[slot]  # a GPUArray where other arguments were on the device
        np.copyto(arrays[number], value if isinstance(value, np.ndarray) else value.get(), casting="unsafe")
    return outputs[:len(outputs) - len(graph.updated_inputs)]


def _refuse_unkeyable(value, index: int, fn: Callable, problem: str) -> None:
    """An argument with a leaf jit cannot key by value: refused, naming the parameter."""
    from .frontend.tracer import user_location

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
