"""Strategies: whole-kernel schedule steps with a name and parameters (TVM's schedule rules).

Loop primitives (``split``, ``reorder``, ``vectorize`` ... in ``minicomp.ir.schedule``) each
move a loop or two. Some ways of running a kernel change it wholesale: packing a matmul into
panels around a register-blocked micro-kernel, tiling attention FlashAttention-style,
splitting a reduction into SIMD lanes. Each of those is a *strategy*: a function registered
by name that rewrites a plain loop nest (what lowering wrote), and a record naming it with its
parameters::

    Strategy("packed_gemm", mr=6, nr=16, kc=384, mc=144, nc=1024)

A ``Strategy`` is a schedule step like the primitives: it prints as one line in the kernel's
``# schedule:`` header, applies to a fresh lowering of the same kernel to give the same nest
(replay), refuses with ``ScheduleError`` when the nest is not one it knows, and its parameters
are what an autotuner searches. The defaults for a target (which strategy, which parameters)
are chosen in ``minicomp.schedules.cpu``.

    for i0 in 0..256:                        # schedule: packed_gemm(mr=6, nr=16, kc=384, ...)
      for i1 in 0..768:                      for jc in 0..1:
        f32 acc = 0                   --->     for pc in 0..2:
        for r0 in 0..768: acc += ...             ... mc_gemm_6x16_f32(kc, &apack[..], ...)
        out[i0*768 + i1] = acc
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..ir.loops import Kernel
from ..ir.schedule import Primitive, ScheduleError

#: name -> the function ``(kernel, **params) -> Kernel`` that applies the strategy
STRATEGIES: dict[str, Callable[..., Kernel]] = {}


def register_strategy(name: str):
    """Register the decorated ``(kernel, **params) -> Kernel`` function as strategy ``name``.

    The function returns the rewritten kernel (new body, new scratch buffers) without touching
    its argument, and raises ``ScheduleError`` when the kernel's nest is not one it applies to.
    """
    def register(fn):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} registered twice")
        STRATEGIES[name] = fn
        return fn
    return register


@dataclass(frozen=True, init=False)
class Strategy(Primitive):
    """A named strategy with its parameters: ``Strategy("lanes", lanes=16)``."""

    name: str
    params: tuple[tuple[str, object], ...]

    def __init__(self, name: str, **params):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "params", tuple(params.items()))

    def __str__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"

    def __getitem__(self, key: str):
        return dict(self.params)[key]

    def apply(self, kernel: Kernel) -> Kernel:
        """The kernel rewritten by the registered strategy, with this step in its schedule."""
        if self.name not in STRATEGIES:
            raise ScheduleError(f"unknown strategy {self.name!r}; known: {', '.join(sorted(STRATEGIES))}")
        rewritten = STRATEGIES[self.name](kernel, **dict(self.params))
        return replace(rewritten, schedule=list(kernel.schedule) + [self])
