"""Bisection: which pass of the pipeline changed a function's results?

Every stage of minicomp can be run against NumPy (see ``ARCHITECTURE.md``), so a wrong result
can be traced to the first pass that produced it. ``bisect`` runs the pipeline one pass at a
time and, after each pass, runs the graph

* with the reference interpreter (target ``"numpy"``), and
* through the C backend too when asked (``target="c"``: lower, render, gcc, run),

on random inputs of the right shapes and dtypes, comparing with the *reference*: the traced
function run eagerly by NumPy (for a function), or the unoptimised graph run by the interpreter
(for a ``Graph``). The first pass after which a result differs is named; the graphs just before
and after it are kept, with a diff.

Inputs are drawn as the workloads draw theirs (``minicomp.workloads.random_argument``: a 2-D
weight ``w*`` scaled by 1/sqrt(fan-in)), so values stay O(1) as in a real model instead of
growing with every layer. Results are compared with ``minicomp.testing.assert_close``; a float
result outside that tolerance is then judged against the truth rather than against NumPy's own
rounding: the function is run again in float64 (float inputs widened), and a stage differs only
when its largest error from that float64 result is more than ``ACCURACY_FACTOR`` times NumPy's
(plus the dtype's tolerance). A float32 matmul summed in another order than OpenBLAS's is
then "ok", not blamed for rounding that NumPy shares.

    >>> result = bisect(f, TensorType((8, 16), "f32"), target="c")
    >>> result.first_bad_pass          # None: every pass kept the results
    >>> print(result)                  # one line per stage and target

The walk is linear, not a binary search: the pipeline is short (under ten passes) and a
per-stage table says more than a halving search would. A pass that raises, or leaves a graph
that fails ``verify``, counts as changing the result. If the traced graph itself already
disagrees with NumPy (a tracing or backend bug, not a pass), ``first_bad_pass`` stays None
and ``baseline_ok`` is False.

Command line: ``minicomp bisect model.py:f --arg x=f32[8,16] [--target c] [--passes a,b]``.
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

#: the stage name of the graph before any pass
TRACED = "(traced)"


@dataclass
class StageResult:
    """One graph (``stage``: ``TRACED`` or the pass just run) on one target."""

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
        """Unified diff of the graph text before and after the first bad pass."""
        if self.graph_before is None or self.graph_after is None:
            return ""
        before = self.graph_before.to_text().splitlines()
        after = self.graph_after.to_text().splitlines()
        return "\n".join(difflib.unified_diff(before, after, f"before {self.first_bad_pass}",
                                              f"after {self.first_bad_pass}", lineterm="", n=1))

    def __str__(self) -> str:
        lines = [f"bisect {self.name}: {len(self.passes)} pass(es) ({', '.join(self.passes) or 'none'}), "
                 f"{self.trials} random input set(s), compared with {self.reference}",
                 (f"{'stage':<22}" + "".join(f"{t:<10}" for t in self.targets)).rstrip()]
        by_stage: dict[str, dict[str, StageResult]] = {}
        for s in self.stages:
            by_stage.setdefault(s.stage, {})[s.target] = s
        for stage, results in by_stage.items():
            cells = "".join(f"{('ok' if results[t].ok else 'DIFFERS') if t in results else '-':<10}"
                            for t in self.targets)
            lines.append(f"{stage:<22}{cells}".rstrip())
        for s in self.failures:
            first = [line.strip() for line in s.message.splitlines() if line.strip()]
            lines.append(f"  {s.stage} on {s.target}: " + "; ".join(first[:5]))
        if not self.baseline_ok:
            lines.append("the traced graph already differs from the reference: not a pass's doing "
                         "(tracing, an op's reference, or the backend)")
        elif self.first_bad_pass is None:
            lines.append("no pass changed the results")
        else:
            lines.append(f"first pass that changes the result: {self.first_bad_pass}")
            if self.diff():
                lines += ["", self.diff()]
        return "\n".join(lines)


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


def _check(graph: Graph, target: str, sets: list[InputSet]) -> str:
    """'' if ``graph`` on ``target`` reproduces every expected output, else why not."""
    try:
        run = _runner(graph, target)
        for index, trial in enumerate(sets):
            with np.errstate(all="ignore"):
                actual = [np.asarray(a) for a in run(*trial.inputs)]
            mismatch = compare(actual, trial)
            if mismatch:
                return f"input set {index}: {mismatch}"
    except Exception as exc:  # noqa: BLE001  (a crash in a stage is a finding, not an error)
        return f"{type(exc).__name__}: {exc}"
    return ""


def bisect(fn_or_graph, *args, passes: Iterable[str] | None = None, disable: Iterable[str] = (),
           target: str | None = None, targets: Iterable[str] | None = None, trials: int = 2,
           seed: int = 0) -> BisectResult:
    """Find the first pass of the pipeline that changes the results of ``fn(*args)``.

    ``fn_or_graph`` is a NumPy function (or a ``jit`` function) with example ``args`` (arrays,
    ``TensorType`` s, static values), or a ``Graph`` (``args``: optional input arrays).
    ``passes``/``disable`` choose the pipeline as for ``jit``. The interpreter runs every stage;
    ``target="c"`` adds the C backend (``targets=`` names the list exactly). ``trials`` random
    input sets are used (the first one is ``args`` when they are all arrays), from ``seed``.
    """
    targets = tuple(targets) if targets is not None else ("numpy",) + ((target,) if target and target != "numpy" else ())
    names = pipeline_names(passes, disable)
    graph, name, reference, sets = _prepare(fn_or_graph, args, max(1, trials), seed)
    result = BisectResult(name, None, names, targets, reference, len(sets))

    def check_stage(stage: str, g: Graph) -> bool:
        good = True
        for t in targets:
            message = _check(g, t, sets)
            result.stages.append(StageResult(stage, t, not message, message))
            good = good and not message
        return good

    current = graph
    if not check_stage(TRACED, current):
        return result
    for pass_name in names:
        try:
            after, _ = run_pipeline(current, [pass_name])
        except Exception as exc:  # noqa: BLE001  (a crashing pass is the answer)
            result.stages.append(StageResult(pass_name, targets[0], False, f"{type(exc).__name__}: {exc}"))
            result.first_bad_pass, result.graph_before = pass_name, current
            return result
        if not check_stage(pass_name, after):
            result.first_bad_pass, result.graph_before, result.graph_after = pass_name, current, after
            return result
        current = after
    return result
