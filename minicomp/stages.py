"""The loop-level pipeline: from a fused graph to loop nests shaped for a target.

The graph passes (``minicomp.passes``) end with a fused graph. Below it, one list of named
stages, each a plain function, each printable::

    lower             fused graph -> Program of plain loop nests (minicomp.lower)
    schedule          each kernel gets its pattern's default steps for the target (minicomp.schedules)
    simplify_indices  index arithmetic the loop ranges decide is folded (minicomp.ir.simplify_indices)
    render            Program -> source text (minicomp.codegen)
    compile           text -> shared library, cached (minicomp.runtime.compiler)
    load              library -> callable (minicomp.runtime.executable)

``loop_program(graph, target, stop_after="schedule")`` runs the loop stages up to one of them;
the renderer, compiler and loader take it from there.
"""

from __future__ import annotations

from dataclasses import replace

from .ir.simplify_indices import simplify_kernel_indices
from .lower.program import Program, lower
from .schedules import schedule
from .target import Target, host_target

#: The loop-level stages, in order; the first three give a ``Program``.
LOOP_STAGES = ("lower", "schedule", "simplify_indices")
STAGES = LOOP_STAGES + ("render", "compile", "load")


def simplify_indices(program: Program) -> Program:
    """A copy of ``program`` whose kernels' index expressions are folded where the loop ranges
    decide them (``minicomp.ir.simplify_indices``): ``(i*16 + j) / 16`` -> ``i`` for ``j < 16``."""
    return replace(program, kernels=[simplify_kernel_indices(k) for k in program.kernels])


def loop_program(graph, target: Target | None = None, stop_after: str = "simplify_indices",
                 disable: tuple[str, ...] = ()) -> Program:
    """The loop IR of a fused ``graph`` after the loop stages up to ``stop_after``.

    ``disable``: loop stages to leave out (``("schedule",)`` gives the plain nests, simplified).
    """
    if stop_after not in LOOP_STAGES:
        raise ValueError(f"stop_after must be one of {', '.join(LOOP_STAGES)}, not {stop_after!r}")
    program = lower(graph)
    target = target or host_target()
    for name in LOOP_STAGES[1:LOOP_STAGES.index(stop_after) + 1]:
        if name == "schedule" and name not in disable:
            program = schedule(program, target)
        elif name == "simplify_indices" and name not in disable:
            program = simplify_indices(program)
    return program
