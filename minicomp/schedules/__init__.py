"""Schedules: how each plain loop nest of a lowered program runs on a target.

Lowering (``minicomp.lower``) writes every kernel as the plainest nest that computes it, the
same for every machine. ``schedule(program, target)`` then gives each kernel the default
schedule of its pattern for that target: a list of steps, loop primitives
(``minicomp.ir.schedule``: ``vectorize``, ``parallel``, ``tile`` ...) and strategies
(``minicomp.schedules.strategy``: ``packed_gemm``, ``flash_attention``, ``lanes`` ...), each
checked, each printed in the kernel's ``# schedule:`` line::

    kernel add(x: f32[4096,1024], b: f32[1024]) -> ...      # schedule: vectorize(i1), parallel(i0)
      for i0 in 0..4096:                          --->        parallel for i0 in 0..4096:
        for i1 in 0..1024: ...                                  vectorized for i1 in 0..1024: ...

The defaults per target kind live beside each other (``schedules/cpu/``; ``schedules/gpu/``
binds loops to blocks and threads for a ``cuda`` target). A step that is refused (``ScheduleError``) or needs the
value of a symbolic size is skipped: the kernel stays as it was, which is always correct.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir.loops import Kernel
from ..ir.schedule import ScheduleError
from ..ir.symbolic import SymbolicShapeError
from ..target import Target, host_target
from .strategy import STRATEGIES, Strategy, register_strategy  # noqa: F401  (the strategy record)
from . import cpu, gpu  # noqa: F401,E402  (the strategies register themselves: replays find them)


def default_rules(target: Target) -> dict:
    """pattern -> the functions ``(kernel, target) -> [steps]`` that choose its default steps."""
    if target.kind == "cpu":
        from .cpu import DEFAULTS
        return DEFAULTS
    if target.kind == "cuda":
        from .gpu import DEFAULTS
        return DEFAULTS
    raise ScheduleError(f"no default schedules for target kind {target.kind!r}")


def schedule_kernel(kernel: Kernel, target: Target | None = None) -> Kernel:
    """``kernel`` shaped by the default schedule of its pattern for ``target`` (default: this CPU).

    Requires a kernel as lowering wrote it (a plain nest, ``kernel.pattern`` set). Guarantees
    the same results: each rule sees the kernel the previous steps left, each step checks
    itself, and a refused step is skipped.
    """
    target = target or host_target()
    for choose in default_rules(target).get(kernel.pattern, []):
        try:
            steps = choose(kernel, target)
        except SymbolicShapeError:
            continue
        for step in steps:
            try:
                kernel = step.apply(kernel)
            except (ScheduleError, SymbolicShapeError):
                continue
    return kernel


def schedule(program, target: Target | None = None):
    """A copy of a lowered ``Program`` with every kernel given its default schedule."""
    from ..lower.program import place_scratch

    target = target or host_target()
    scheduled = replace(program, kernels=[schedule_kernel(k, target) for k in program.kernels],
                        workspace=dict(program.workspace))
    return place_scratch(scheduled)
