"""Bisection: which pass of the pipeline, or which loop stage, changed a function's results?

Every stage of minicomp can be run against NumPy (see ``ARCHITECTURE.md``), so a wrong result
can be traced to the first stage that produced it. ``bisect`` runs the pipeline one pass at a
time and, after each pass, runs the graph

* with the reference interpreter (target ``"numpy"``), and
* through the C backend too when asked (``target="c"``: every loop stage, render, gcc, run),

on random inputs of the right shapes and dtypes, comparing with the *reference*: the traced
function run eagerly by NumPy (for a function), or the unoptimised graph run by the interpreter
(for a ``Graph``). The first pass after which a result differs is named; the graphs just before
and after it are kept, with a diff.

When the graph after the last pass is still right, bisection goes on below the graph, through
the loop stages of ``minicomp.stages`` (``lower``, ``schedule``, ``simplify_indices``): the
program after each one is rendered to C, compiled and run (``loop_targets``; the loop
interpreter too with ``loop_targets=("c", "loop_interpreter")``), and the first loop stage
that changes a result is named, with the diff of the loop IR before and after it. A loop stage
that is not in the default pipeline's place today (lowering still builds some CPU strategies
itself) does not matter: each stage's program is run as it is, whatever made it.
``stop_after`` ends the walk after a pass or a loop stage.

Inputs are drawn as the workloads draw theirs (``minicomp.workloads.random_argument``: a 2-D
weight ``w*`` scaled by 1/sqrt(fan-in)), so values stay O(1) as in a real model instead of
growing with every layer. Results are compared with ``minicomp.testing.assert_close``; a float
result outside that tolerance is then judged against the truth rather than against NumPy's own
rounding: the function is run again in float64 (float inputs widened), and a stage differs only
when its largest error from that float64 result is more than ``ACCURACY_FACTOR`` times NumPy's
(plus the dtype's tolerance). A float32 matmul summed in another order than OpenBLAS's is
then "ok", not blamed for rounding that NumPy shares.

    >>> result = bisect(f, TensorType((8, 16), "f32"), target="c")
    >>> result.first_bad_stage         # None: every pass and loop stage kept the results
    >>> print(result)                  # one line per stage and target

The walk is linear, not a binary search: the pipeline is short (under ten passes, three loop
stages) and a per-stage table says more than a halving search would. A pass or loop stage that
raises, or leaves a graph that fails ``verify`` (a program that fails ``verify_program``),
counts as changing the result. If the traced graph itself already disagrees with NumPy (a
tracing or backend bug, not a pass), ``first_bad_pass`` stays None and ``baseline_ok`` is False;
when the interpreter runs it right, the loop stages are walked on the traced graph to name the
one that breaks it.

Command line: ``minicomp bisect model.py:f --arg x=f32[8,16] [--target c] [--passes a,b]
[--stop-after schedule]``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from ..errors import MinicompError
from ..ir.dtypes import TensorType
from ..ir.graph import Graph
from ..passes.pipeline import pipeline_names, run_pipeline
from ..stages import LOOP_STAGES, OPTIONAL_STAGES, run_stage
from ..target import host_target

#: the stage name of the graph before any pass
TRACED = "(traced)"


@dataclass
class StageResult:
    """One stage (``TRACED``, the pass just run, or a loop stage) on one target."""

    stage: str
    target: str
    ok: bool
    message: str = ""  # why not: the first mismatch, or the exception


@dataclass
class BisectResult:
    """What ``bisect`` found; ``str()`` is the report the CLI prints."""

    name: str
    first_bad_pass: str | None
    passes: list[str]
    targets: tuple[str, ...]
    reference: str
    trials: int
    stages: list[StageResult] = field(default_factory=list)
    graph_before: Graph | None = None  # the graph the bad pass was given
    graph_after: Graph | None = None  # ... and what it made of it (None if it raised)
    loop_stages: list[str] = field(default_factory=list)  # the loop stages to walk after the passes
    loop_targets: tuple[str, ...] = ()  # the backends each loop stage's program runs on
    first_bad_loop_stage: str | None = None
    program_before: object = None  # the program the bad loop stage was given (None: it lowered the graph)
    program_after: object = None  # ... and what it made of it (None if it raised)

    @property
    def first_bad_stage(self) -> str | None:
        """The first pass or loop stage that changed a result (None: none did)."""
        return self.first_bad_pass or self.first_bad_loop_stage

    @property
    def baseline_ok(self) -> bool:
        """Whether the traced graph, before any pass, matches the reference on every target."""
        return all(s.ok for s in self.stages if s.stage == TRACED)

    @property
    def ok(self) -> bool:
        """Whether every stage matched the reference."""
        return all(s.ok for s in self.stages)

    @property
    def failures(self) -> list[StageResult]:
        return [s for s in self.stages if not s.ok]

    def diff(self) -> str:
        """Unified diff of the graph text (or the loop IR) before and after the first bad stage."""
        if self.first_bad_loop_stage is not None and self.program_after is not None:
            before = "" if self.program_before is None else str(self.program_before)
            if self.program_before is None and self.graph_before is not None:
                before = self.graph_before.to_text()  # lower: the graph it was given
            return _unified(before, str(self.program_after), self.first_bad_loop_stage)
        if self.graph_before is None or self.graph_after is None:
            return ""
        return _unified(self.graph_before.to_text(), self.graph_after.to_text(), self.first_bad_pass)

    def __str__(self) -> str:
        columns = self.targets + tuple(t for t in self.loop_targets if t not in self.targets)
        loops = f" and {len(self.loop_stages)} loop stage(s) ({', '.join(self.loop_stages)})" if self.loop_stages else ""
        lines = [f"bisect {self.name}: {len(self.passes)} pass(es) ({', '.join(self.passes) or 'none'}){loops}, "
                 f"{self.trials} random input set(s), compared with {self.reference}",
                 (f"{'stage':<22}" + "".join(f"{t:<18}" for t in columns)).rstrip()]
        by_stage: dict[str, dict[str, StageResult]] = {}
        for s in self.stages:
            by_stage.setdefault(s.stage, {})[s.target] = s
        for stage, results in by_stage.items():
            cells = "".join(f"{('ok' if results[t].ok else 'DIFFERS') if t in results else '-':<18}"
                            for t in columns)
            lines.append(f"{stage:<22}{cells}".rstrip())
        for s in self.failures:
            first = [line.strip() for line in s.message.splitlines() if line.strip()]
            lines.append(f"  {s.stage} on {s.target}: " + "; ".join(first[:5]))
        if self.first_bad_pass is not None:
            lines.append(f"first pass that changes the result: {self.first_bad_pass}")
        elif self.first_bad_loop_stage is not None:
            graph = "graph after the last pass" if self.baseline_ok else "traced graph (on the interpreter)"
            lines.append(f"first loop stage that changes the result: {self.first_bad_loop_stage} (the {graph} "
                         f"was right; the program after {self.first_bad_loop_stage} is not"
                         + (", or the backend runs it wrong)" if self.first_bad_loop_stage == LOOP_STAGES[0] else ")"))
            if self.baseline_ok and self.first_bad_loop_stage == LOOP_STAGES[0] and "c" not in self.targets:
                lines.append("  the passes were run on the interpreter only, which ignores what only compiled code "
                             "reads (the memory plan's storage): --target c runs each pass's graph compiled too")
        elif not self.baseline_ok:
            lines.append("the traced graph already differs from the reference: not a pass's doing "
                         "(tracing, an op's reference, or the backend)")
        else:
            walked = f", nor any loop stage ({', '.join(self.loop_stages)})" if self.loop_stages else ""
            lines.append(f"no pass changed the results{walked}")
        if self.first_bad_stage is not None and self.diff():
            lines += ["", self.diff()]
        return "\n".join(lines)


def _unified(before: str, after: str, stage: str) -> str:
    """The unified diff of two texts, labelled before/after ``stage``."""
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), f"before {stage}",
                                          f"after {stage}", lineterm="", n=1))


# ----------------------------------------------------------------------------------------------
# Inputs and the reference
# ----------------------------------------------------------------------------------------------


#: a float stage may be this many times less accurate than NumPy (against float64) and pass
ACCURACY_FACTOR = 4.0


def random_array(type_: TensorType, rng: np.random.Generator, name: str = "") -> np.ndarray:
    """Random values of ``type_``: floats as the workloads draw an argument called ``name``
    (``workloads.random_argument``), small integers, coin-flip bools."""
    from ..workloads import random_argument

    dtype, shape = type_.dtype, type_.shape
    if dtype.kind == "f":
        return random_argument(name, shape, dtype, rng)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "u":
        return rng.integers(0, 10, shape).astype(dtype)
    return rng.integers(-9, 10, shape).astype(dtype)


def _is_tensor(value) -> bool:
    return isinstance(value, (np.ndarray, np.generic, TensorType))


def _flatten(result) -> list[np.ndarray]:
    """The arrays of a result pytree in the order the traced graph outputs them."""
    from ..frontend.pytree import flatten
    from ..frontend.tracer import _numbers_as_arrays

    leaves: list = []
    flatten(_numbers_as_arrays(result), leaves)
    return [np.asarray(r) for r in leaves]


@dataclass
class InputSet:
    """One trial: the input arrays, the reference's outputs, and (for a function with float
    inputs) the same function's outputs computed in float64, or None."""

    inputs: list[np.ndarray]
    expected: list[np.ndarray]
    exact: list[np.ndarray] | None = None


def _prepare(fn_or_graph, args: tuple, trials: int, seed: int):
    """(graph, name, reference description, one ``InputSet`` per trial)."""
    rng = np.random.default_rng(seed)
    if isinstance(fn_or_graph, Graph):
        from ..ir.interpreter import interpret

        graph = fn_or_graph
        if args and len(args) != len(graph.inputs):
            raise MinicompError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(args)}")
        sets = []
        for trial in range(trials):
            if trial == 0 and args and all(isinstance(a, np.ndarray) for a in args):
                inputs = [np.asarray(a) for a in args]
            else:
                inputs = [random_array(n.type, rng, n.name) for n in graph.inputs]
            sets.append(InputSet(inputs, interpret(graph, *inputs)))
        return graph.verify(), graph.name, "the unoptimised graph run by the interpreter", sets

    from ..frontend import trace

    fn = getattr(fn_or_graph, "fn", fn_or_graph)  # a jit function: bisect what it wraps
    graph = trace(fn, *args)
    names = [node.name for node in graph.inputs]
    concrete = all(not isinstance(a, TensorType) for a in args)
    sets = []
    for trial in range(trials):
        if trial == 0 and concrete:
            call_args = list(args)
        else:
            tensors = iter(names)
            call_args = [_random_leaves(a, rng, tensors) for a in args]
        with np.errstate(all="ignore"):
            expected = _flatten(fn(*call_args))
        sets.append(InputSet(_array_leaves(call_args), expected, _in_float64(fn, call_args)))
    reference = "NumPy (the function run eagerly), and in float64 for float results"
    return graph, graph.name, reference, sets


def _array_leaves(call_args: list) -> list:
    """The arrays of the arguments in the order the trace made them inputs (pytrees flattened)."""
    from ..frontend.pytree import flatten

    leaves: list = []
    for value in call_args:
        if isinstance(value, TensorType) or _is_tensor(value):
            leaves.append(value)
        else:
            flatten(value, leaves)
    return leaves


def _random_leaves(value, rng: np.random.Generator, names):
    """``value`` with each array (or ``TensorType``) replaced by a random array of its type."""
    from ..frontend.pytree import flatten, unflatten

    if isinstance(value, TensorType) or _is_tensor(value):
        return random_array(TensorType.of(value) if not isinstance(value, TensorType) else value, rng, next(names))
    leaves: list = []
    key = flatten(value, leaves)
    return unflatten(key, [random_array(TensorType.of(leaf), rng, next(names)) for leaf in leaves]) if leaves else value


def _in_float64(fn: Callable, call_args: list) -> list[np.ndarray] | None:
    """``fn`` run with its float array arguments widened to float64; None when there are none,
    or when the function does not run that way."""
    def widen(a):
        return np.asarray(a, np.float64) if _is_tensor(a) and np.asarray(a).dtype.kind == "f" else a

    if not any(_is_tensor(a) and np.asarray(a).dtype.kind == "f" for a in call_args):
        return None
    try:
        with np.errstate(all="ignore"):
            return _flatten(fn(*[widen(a) for a in call_args]))
    except Exception:  # noqa: BLE001  (a function that insists on float32 keeps NumPy as the reference)
        return None


def compare(actual: list[np.ndarray], trial: InputSet) -> str:
    """'' when ``actual`` matches the trial's reference, else why not (see the module docstring).

    ``assert_close`` against the reference first; a float output outside it still matches
    when it is at most ``ACCURACY_FACTOR`` times as far from the float64 result as NumPy is.
    """
    from ..testing import assert_close

    try:
        assert_close(list(actual), trial.expected)
        return ""
    except AssertionError as exc:
        mismatch = str(exc)
    if trial.exact is None or len(trial.exact) != len(actual):
        return mismatch
    for index, (ours, numpys, exact) in enumerate(zip(actual, trial.expected, trial.exact)):
        try:
            assert_close(ours, numpys)
            continue
        except AssertionError:
            pass
        if ours.dtype != numpys.dtype or ours.shape != numpys.shape or ours.dtype.kind != "f" \
                or exact.shape != ours.shape:
            return mismatch
        worst, reference_worst = _error(ours, exact), _error(numpys, exact)
        allowed = ACCURACY_FACTOR * reference_worst + _tolerance(exact, ours.dtype)
        if not worst <= allowed:
            return (f"output {index}: largest error from the float64 result {worst:.3g}, "
                    f"NumPy's own {reference_worst:.3g} (allowed {allowed:.3g})")
    return ""


def _error(values: np.ndarray, exact: np.ndarray) -> float:
    """Largest |values - exact| (inf where one is NaN or infinite and the other is not)."""
    values, exact = values.astype(np.float64), exact.astype(np.float64)
    same = (values == exact) | (np.isnan(values) & np.isnan(exact))
    difference = np.where(same, 0.0, np.abs(values - exact))
    return float(np.nan_to_num(difference, nan=np.inf).max(initial=0.0))


def _tolerance(exact: np.ndarray, dtype: np.dtype) -> float:
    """The absolute slack ``assert_close`` gives an array of ``dtype`` this large."""
    from ..testing import SCALE_FRACTION, tolerance

    rtol, atol = tolerance(dtype)
    finite = np.abs(exact[np.isfinite(exact)])
    return atol + (rtol + SCALE_FRACTION * rtol) * float(finite.max(initial=0.0))


# ----------------------------------------------------------------------------------------------
# Running one stage
# ----------------------------------------------------------------------------------------------


def _runner(graph: Graph, target: str) -> Callable:
    """A function of the input arrays for ``graph`` on ``target``, compiled as given (no passes)."""
    from ..driver import TARGETS

    if target not in TARGETS:
        raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
    return TARGETS[target](graph)


def _program_runner(program, backend: str) -> Callable:
    """A function of the input arrays running ``program`` on ``backend`` (``testing.backends``)."""
    from ..testing.backends import BACKENDS

    if backend not in BACKENDS:
        raise MinicompError(f"unknown loop backend {backend!r}; available: {', '.join(BACKENDS)}")
    return BACKENDS[backend].load(program)


def _check(make_runner: Callable[[], Callable], sets: list[InputSet]) -> str:
    """'' if the runner ``make_runner()`` gives reproduces every expected output, else why not."""
    try:
        run = make_runner()
        for index, trial in enumerate(sets):
            with np.errstate(all="ignore"):
                actual = [np.asarray(a) for a in run(*trial.inputs)]
            mismatch = compare(actual, trial)
            if mismatch:
                return f"input set {index}: {mismatch}"
    except Exception as exc:  # noqa: BLE001  (a crash in a stage is a finding, not an error)
        return f"{type(exc).__name__}: {exc}"
    return ""


def _walk(names: list[str], stop_after: str | None, disable_stages: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the passes, the loop stages) to walk: up to ``stop_after`` (a pass or a loop stage)."""
    disabled = set(disable_stages)
    wrong = disabled - set(OPTIONAL_STAGES)
    if wrong:
        raise MinicompError(f"only the loop stages {', '.join(OPTIONAL_STAGES)} can be left out, not {sorted(wrong)}")
    loop_stages = [stage for stage in LOOP_STAGES if stage not in disabled]
    if stop_after is None:
        return names, loop_stages
    if stop_after in names:
        return names[:names.index(stop_after) + 1], []
    if stop_after in LOOP_STAGES:
        if stop_after in disabled:
            raise MinicompError(f"--stop-after {stop_after}: that loop stage is disabled")
        return names, [stage for stage in loop_stages if LOOP_STAGES.index(stage) <= LOOP_STAGES.index(stop_after)]
    raise MinicompError(f"cannot stop after {stop_after!r}: name a pass of the pipeline ({', '.join(names) or 'none'}) "
                        f"or a loop stage ({', '.join(LOOP_STAGES)})")


def bisect(fn_or_graph, *args, passes: Iterable[str] | None = None, disable: Iterable[str] = (),
           target: str | None = None, targets: Iterable[str] | None = None, trials: int = 2,
           seed: int = 0, stop_after: str | None = None, disable_stages: Iterable[str] = (),
           loop_targets: Iterable[str] = ("c",)) -> BisectResult:
    """Find the first pass, or loop stage, that changes the results of ``fn(*args)``.

    ``fn_or_graph`` is a NumPy function (or a ``jit`` function) with example ``args`` (arrays,
    ``TensorType`` s, static values), or a ``Graph`` (``args``: optional input arrays).
    ``passes``/``disable`` choose the pipeline as for ``jit``. The interpreter runs every stage;
    ``target="c"`` adds the C backend (``targets=`` names the list exactly). ``trials`` random
    input sets are used (the first one is ``args`` when they are all arrays), from ``seed``.

    After the passes, each loop stage (``minicomp.stages.LOOP_STAGES`` minus ``disable_stages``)
    runs on the graph after the last pass and its program is run on ``loop_targets``
    (``minicomp.testing.backends``). ``stop_after``: the last pass or loop stage to check.
    """
    targets = tuple(targets) if targets is not None else ("numpy",) + ((target,) if target and target != "numpy" else ())
    names, loop_stages = _walk(pipeline_names(passes, disable), stop_after, disable_stages)
    graph, name, reference, sets = _prepare(fn_or_graph, args, max(1, trials), seed)
    result = BisectResult(name, None, names, targets, reference, len(sets), loop_stages=loop_stages,
                          loop_targets=tuple(loop_targets) if loop_stages else ())

    def check_stage(stage: str, runners: dict[str, Callable[[], Callable]]) -> bool:
        good = True
        for t, make_runner in runners.items():
            message = _check(make_runner, sets)
            result.stages.append(StageResult(stage, t, not message, message))
            good = good and not message
        return good

    def graph_on_targets(g: Graph) -> dict:
        return {t: (lambda t=t: _runner(g, t)) for t in targets}

    current = graph
    if not check_stage(TRACED, graph_on_targets(current)):
        if _wrong_only_compiled(result):  # a loop stage of the traced graph?
            _walk_loop_stages(result, graph, check_stage)
        return result
    for pass_name in names:
        try:
            after, _ = run_pipeline(current, [pass_name])
        except Exception as exc:  # noqa: BLE001  (a crashing pass is the answer)
            result.stages.append(StageResult(pass_name, targets[0], False, f"{type(exc).__name__}: {exc}"))
            result.first_bad_pass, result.graph_before = pass_name, current
            return result
        if not check_stage(pass_name, graph_on_targets(after)):
            result.first_bad_pass, result.graph_before, result.graph_after = pass_name, current, after
            return result
        current = after
    _walk_loop_stages(result, current, check_stage)
    return result


def _wrong_only_compiled(result: BisectResult) -> bool:
    """Whether the traced graph matched the reference on the interpreter (target ``numpy``) and
    failed on a target that runs the loop stages (one of ``result.loop_targets``)."""
    traced = [s for s in result.stages if s.stage == TRACED]
    return any(s.target == "numpy" and s.ok for s in traced) and \
        any(s.target in result.loop_targets and not s.ok for s in traced)


def _walk_loop_stages(result: BisectResult, graph: Graph, check_stage: Callable) -> None:
    """Run ``result.loop_stages`` in order from ``graph``, checking each stage's program on
    ``result.loop_targets``; record the first that changes a result."""
    target = host_target()
    value, before = graph, None
    for stage in result.loop_stages:
        try:
            value = run_stage(stage, value, target)
        except Exception as exc:  # noqa: BLE001  (a crashing stage is the answer)
            result.stages.append(StageResult(stage, result.loop_targets[0], False, f"{type(exc).__name__}: {exc}"))
            _blame(result, stage, graph, before, None)
            return
        if not check_stage(stage, {t: (lambda t=t, p=value: _program_runner(p, t)) for t in result.loop_targets}):
            _blame(result, stage, graph, before, value)
            return
        before = value


def _blame(result: BisectResult, stage: str, graph: Graph, before, after) -> None:
    """Record loop stage ``stage`` as the first that changed a result: what it was given (the
    graph, for ``lower``) and what it made (None if it raised)."""
    result.first_bad_loop_stage, result.program_before, result.program_after = stage, before, after
    if before is None:
        result.graph_before = graph
