"""Passes by name, and the pipeline that runs them.

A pass is a plain function ``Graph -> Graph`` registered under a name with ``@register_pass``.
It may rewrite the graph in place and return it, or return a new graph. Its docstring says
what it requires, what it guarantees, and shows a tiny before/after.

The pipeline runs the passes in order and, after every pass:

* runs ``graph.verify(incremental=True)`` (a pass that breaks an invariant is named at once):
  the structure is checked in full, the shape and dtype rules re-run for every node the pass
  created or changed (``minicomp.ir.verify`` says what "changed" covers). ``full_verify=True``
  or ``MINICOMP_VERIFY=full`` re-derives every node after every pass instead, for hunting a
  pass that edits attribute values in place;
* records how long the pass took and the graph's op count;
* optionally prints the graph (``print_between=True``, CLI ``--print-between-passes``).

Any pass can be switched off by name (``jit(disable=["fusion"])``, CLI ``--disable fusion``)
and ``bisect`` finds the first pass that changes a function's results.

    >>> graph, report = run_pipeline(graph, disable=["cse"])
    >>> print(report)        # one line per pass: ops before -> after, milliseconds
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..errors import GraphError, MinicompError
from ..ir.graph import Graph
from ..ir.symbolic import SymbolicShapeError, shape_symbols


def has_symbolic_sizes(graph: Graph) -> bool:
    """Whether any value of ``graph`` has a symbolic dimension."""
    return any(shape_symbols(node.shape) for node in graph.nodes())

PASSES: dict[str, Callable[[Graph], Graph]] = {}

#: The default pipeline, in order. Passes registered later slot in by name.
DEFAULT_PIPELINE: list[str] = []


def register_pass(name: str, default: bool = True, after: str | None = None):
    """Register the decorated ``Graph -> Graph`` function as pass ``name``.

    ``default=True`` appends it to ``DEFAULT_PIPELINE`` (or puts it right after ``after``).
    """
    def register(fn):
        if name in PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        PASSES[name] = fn
        fn.pass_name = name
        if default:
            position = DEFAULT_PIPELINE.index(after) + 1 if after in DEFAULT_PIPELINE else len(DEFAULT_PIPELINE)
            DEFAULT_PIPELINE.insert(position, name)
        return fn
    return register


def get_pass(name: str) -> Callable[[Graph], Graph]:
    """The pass registered as ``name``; ``MinicompError`` listing the known passes otherwise."""
    _load_passes()
    if name not in PASSES:
        raise MinicompError(f"unknown pass {name!r}; known passes: {', '.join(PASSES)}")
    return PASSES[name]


def _load_passes() -> None:
    """Import the pass modules so that their ``@register_pass`` decorators have run."""
    from . import default_passes  # noqa: F401


@dataclass
class PassRecord:
    """What one pass did: ops before and after, and how long it took."""

    name: str
    ops_before: int
    ops_after: int
    milliseconds: float
    skipped: bool = False
    symbolic: str = ""  # why the pass was left out on a graph with symbolic sizes (else "")


@dataclass
class PipelineReport:
    """The record of a pipeline run; ``str`` gives one line per pass."""

    records: list[PassRecord] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'pass':<20} {'ops before':>10} {'ops after':>10} {'ms':>8}"]
        for r in self.records:
            if r.symbolic:
                lines.append(f"{r.name:<20} {'(skipped: symbolic size)':>10} {r.symbolic}")
            elif r.skipped:
                lines.append(f"{r.name:<20} {'(disabled)':>10}")
            else:
                lines.append(f"{r.name:<20} {r.ops_before:>10} {r.ops_after:>10} {r.milliseconds:>8.2f}")
        return "\n".join(lines)


def pipeline_names(passes: Iterable[str] | None = None, disable: Iterable[str] = ()) -> list[str]:
    """The passes that would run: ``passes`` (default: the default pipeline) minus ``disable``."""
    _load_passes()
    names = list(DEFAULT_PIPELINE if passes is None else passes)
    disabled = set(disable)
    unknown = (set(names) | disabled) - set(PASSES)
    if unknown:
        raise MinicompError(f"unknown pass(es) {sorted(unknown)}; known passes: {', '.join(PASSES)}")
    return [n for n in names if n not in disabled]


def run_pipeline(graph: Graph, passes: Iterable[str] | None = None, disable: Iterable[str] = (),
                 print_between: bool = False, printer: Callable[[str], None] = print,
                 full_verify: bool | None = None) -> tuple[Graph, PipelineReport]:
    """Run ``passes`` (default: ``DEFAULT_PIPELINE``) on a copy of ``graph``; see the module doc.

    ``full_verify``: re-derive every node's type after every pass (default: only when the
    environment variable ``MINICOMP_VERIFY`` is ``full``).

    On a graph with symbolic sizes (dynamic dimensions, ``minicomp.ir.symbolic``) a pass that
    needs the value of a size raises ``SymbolicShapeError``; it is then left out (the graph
    restored from a copy taken before it ran) and the report says why. Passes are
    optimisations: leaving one out never changes the results.
    """
    _load_passes()
    if full_verify is None:
        full_verify = os.environ.get("MINICOMP_VERIFY", "") == "full"
    all_names = list(DEFAULT_PIPELINE if passes is None else passes)
    enabled = set(pipeline_names(all_names, disable))
    report = PipelineReport()
    graph = graph.copy()
    symbolic = has_symbolic_sizes(graph)
    if print_between:
        printer(f"// ---- input ----\n{graph}")
    for name in all_names:
        if name not in enabled:
            report.records.append(PassRecord(name, 0, 0, 0.0, skipped=True))
            continue
        before = len(graph.op_nodes())
        start = time.perf_counter()
        snapshot = graph.copy() if symbolic else None
        try:
            graph = PASSES[name](graph)
        except SymbolicShapeError as exc:  # the pass needed a size: leave it out, keep the graph as it was
            if snapshot is None:
                raise
            graph = snapshot
            report.records.append(PassRecord(name, before, before, 0.0, skipped=True, symbolic=str(exc)))
            continue
        elapsed = (time.perf_counter() - start) * 1e3
        try:
            graph.verify(incremental=not full_verify)
        except GraphError as exc:
            raise GraphError(f"pass {name!r} left a broken graph: {exc}") from None
        report.records.append(PassRecord(name, before, len(graph.op_nodes()), elapsed))
        if print_between:
            printer(f"// ---- after {name} ----\n{graph}")
    return graph, report
