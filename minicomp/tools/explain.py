"""``explain``: why the compiler did what it did to a function, in words and numbers.

    >>> print(minicomp.explain(softmax, np.zeros((4096, 1024), np.float32)))

prints, for the default pipeline (or ``passes=`` / ``disable=``):

* every **fusion decision**, taken or refused, with its reason and the bytes it saves (a value
  kept inside a kernel is neither stored nor loaded back: 2 x its size). The decisions come
  from ``fusion.explain_fusion`` on the graph as fusion sees it: after the passes before it;
* the **kernels** fusion forms: pattern and the ops of each body;
* the **rematerialisation** decisions, when the ``remat`` pass offers an explanation (see
  ``_remat_explanation``: the hook looks for ``explain_remat(graph)`` in ``passes/remat.py``);
* a **before/after** table: kernels, estimated bytes moved and FLOPs (``stats.kernel_summary``)
  of the traced graph (one kernel per op) and of the graph after all passes; and the peak
  memory of intermediates (``memory.memory_report``: the most bytes live at once, and the
  workspace lowering allocates).

The same text comes from the command line: ``minicomp explain model.py:f --arg x=f32[64,64]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from ..ir.graph import Graph
from ..stats import KernelSummary, human, kernel_summary
from ..passes.pipeline import PipelineReport, pipeline_names, run_pipeline


@dataclass
class Explanation:
    """Everything ``explain`` prints; ``str()`` renders it."""

    traced: Graph
    optimised: Graph
    passes: list[str]
    disabled: list[str]
    report: PipelineReport
    fusion_input: Graph | None = None  # the graph fusion saw (None: fusion did not run)
    groups: list = field(default_factory=list)  # fusion.Group, as fusion formed them
    decisions: list = field(default_factory=list)  # fusion.Decision, taken and refused
    remat: Any = None  # what the remat pass explains (None: it did not run or cannot explain)
    remat_note: str = ""
    before: KernelSummary | None = None
    after: KernelSummary | None = None
    memory_before: Any = None  # memory.MemoryReport of the traced graph
    memory_after: Any = None  # ... of the optimised graph

    @property
    def fused_decisions(self) -> list:
        return [d for d in self.decisions if d.fused]

    @property
    def refused_decisions(self) -> list:
        return [d for d in self.decisions if not d.fused]

    def __str__(self) -> str:
        return "\n".join(self._lines())

    def _lines(self) -> list[str]:
        params = ", ".join(f"%{n.name}: {n.type}" for n in self.traced.inputs)
        lines = [f"explain {self.traced.name}({params})",
                 f"passes: {', '.join(self.passes) or '(none)'}"
                 + (f"  (disabled: {', '.join(self.disabled)})" if self.disabled else "")]
        lines += ["", *self._fusion_lines(), "", *self._remat_lines(), "", *self._summary_lines()]
        return lines

    def _fusion_lines(self) -> list[str]:
        if self.fusion_input is None:
            return ["fusion: not run (not in the pipeline, or disabled)"]
        before = self.passes[:self.passes.index("fusion")]
        ops = len(self.fusion_input.op_nodes())
        kernels = f"{len(self.groups)} kernel{'s' if len(self.groups) != 1 else ''}"
        lines = [f"fusion decisions (on the graph after {', '.join(before) or 'tracing'}: {ops} ops"
                 f" -> {kernels}):"]
        if not self.decisions:
            lines.append("  (none: no op has a user to fuse into)")
        width = max([len(f"{d.producer} -> {d.consumer}") for d in self.decisions] + [10])
        for d in self.decisions:
            edge = f"{d.producer} -> {d.consumer}"
            saved = f"  (saves {human(d.bytes_saved)})" if d.fused else ""
            lines.append(f"  {'fused  ' if d.fused else 'refused'}  {edge:<{width}}  {d.reason}{saved}")
        saved = sum(d.bytes_saved for d in self.decisions if d.fused)
        lines.append(f"  {len(self.fused_decisions)} fused, {len(self.refused_decisions)} refused; "
                     f"{human(saved)} of intermediate traffic saved")
        lines += ["", "kernels formed by fusion:"]
        order = {n: i for i, n in enumerate(self.fusion_input.nodes())}
        for group in sorted(self.groups, key=lambda g: order[g.root]):
            ops = [n.op for n in sorted(group.nodes, key=order.get)]
            if len(ops) == 1:
                lines.append(f"  %{group.root.name:<22} {ops[0]} (alone)")
            else:
                lines.append(f"  %fused_{group.root.name:<16} {group.pattern:<10} "
                             f"{', '.join(ops)}  ({len(ops)} ops)")
        return lines

    def _remat_lines(self) -> list[str]:
        if self.remat is None:
            return [f"rematerialisation: {self.remat_note}"]
        items = list(self.remat) if isinstance(self.remat, (list, tuple)) else [self.remat]
        return ["rematerialisation decisions:"] + ([f"  {item}" for item in items]
                                                 or ["  (none: no elementwise value feeds several kernels)"])

    def _summary_lines(self) -> list[str]:
        b, a = self.before, self.after
        rows = [("kernels", str(b.kernels), str(a.kernels)),
                ("bytes moved (estimated)", human(b.bytes_moved), human(a.bytes_moved)),
                ("FLOPs", human(b.flops, "FLOP"), human(a.flops, "FLOP"))]
        mb, ma = self.memory_before, self.memory_after
        if mb is not None and ma is not None:
            planned = "memory_plan" in self.passes
            rows += [("peak live intermediates", human(mb.peak_live_bytes), human(ma.peak_live_bytes)),
                     ("workspace", human(mb.unplanned_bytes),
                      human(ma.planned_bytes if planned else ma.unplanned_bytes))]
        lines = [f"{'':<26}{'before (traced, 1 kernel/op)':>30}{'after (all passes)':>22}"]
        lines += [f"{name:<26}{x:>30}{y:>22}" for name, x, y in rows]
        if b.bytes_moved:
            lines.append(f"bytes moved: {a.bytes_moved / b.bytes_moved:.0%} of before; "
                         f"minimum (inputs + outputs once): {human(_minimum(self.traced))}")
        return lines


def _minimum(graph: Graph) -> int:
    from ..stats import minimum_bytes

    return minimum_bytes(graph)


def as_graph(fn_or_graph, args: tuple) -> Graph:
    """A ``Graph`` as is, or the graph traced from a function with example ``args``."""
    if isinstance(fn_or_graph, Graph):
        if args:
            raise TypeError("explain(graph) takes no example arguments")
        return fn_or_graph
    from ..frontend import trace

    return trace(getattr(fn_or_graph, "fn", fn_or_graph), *args)


def explanation(fn_or_graph, *args, passes: Iterable[str] | None = None,
                disable: Iterable[str] = ()) -> Explanation:
    """The ``Explanation`` of compiling ``fn(*args)`` (or a graph) with the pipeline."""
    from ..passes.fusion import explain_fusion

    traced = as_graph(fn_or_graph, args)
    traced.verify()
    all_names = list(pipeline_names(passes))
    names = pipeline_names(all_names, disable)
    optimised, report = run_pipeline(traced, names)
    result = Explanation(traced, optimised, names, [n for n in all_names if n not in names], report,
                         before=kernel_summary(traced), after=kernel_summary(optimised))
    if "fusion" in names:
        result.fusion_input, _ = run_pipeline(traced, names[:names.index("fusion")])
        result.groups, result.decisions = explain_fusion(result.fusion_input)
    result.remat, result.remat_note = _remat_explanation(traced, names)
    memory_report = _memory_report()
    if memory_report is not None:
        result.memory_before, result.memory_after = memory_report(traced), memory_report(optimised)
    return result


def explain(fn_or_graph, *args, passes: Iterable[str] | None = None, disable: Iterable[str] = ()) -> str:
    """The text ``minicomp explain`` prints for ``fn(*args)`` (see the module docstring)."""
    return str(explanation(fn_or_graph, *args, passes=passes, disable=disable))


# ----------------------------------------------------------------------------------------------
# Hooks to the passes that explain themselves
# ----------------------------------------------------------------------------------------------

#: Names the remat module may give its explanation function ``(graph) -> decisions``.
REMAT_EXPLAINERS = ("explain_remat", "explain_rematerialisation", "explain_rematerialization")


def _remat_explanation(traced: Graph, names: list[str]) -> tuple[Any, str]:
    """(decisions, note): what ``remat`` decides on the graph it sees, if it can say.

    The hook: ``minicomp/passes/remat.py`` defining ``explain_remat(graph)`` (or one of
    ``REMAT_EXPLAINERS``) returning a list of printable decisions (or one printable report).
    """
    if "remat" not in names:
        return None, "not run (not in the pipeline, or disabled)"
    try:
        from ..passes import remat
    except ImportError:
        return None, "the remat pass has no module minicomp.passes.remat"
    explain_fn = next((getattr(remat, n) for n in REMAT_EXPLAINERS if hasattr(remat, n)), None)
    if explain_fn is None:
        return None, f"ran, but minicomp.passes.remat offers no {REMAT_EXPLAINERS[0]}(graph) to explain it"
    graph_in, _ = run_pipeline(traced, names[:names.index("remat")])
    return explain_fn(graph_in), ""


def _memory_report():
    """``memory.memory_report`` if the memory-planning pass provides it (else None)."""
    try:
        from ..passes.memory import memory_report
    except ImportError:
        return None
    return memory_report
