"""Backends that run a loop-IR ``Program``: one call, whichever executes it.

A test (``tests/conftest.py``: the ``backend`` fixture) or ``bisect`` gives the same program
to each backend and compares the outputs::

    >>> BACKENDS["c"].run(program, x, w)                  # rendered to C, compiled, loaded, run
    >>> BACKENDS["loop_interpreter"].run(program, x, w)   # statement by statement in Python

Both return the outputs in the graph's output order (a value returned twice comes back twice).
A CUDA backend joins as one more entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Backend:
    """A named way to run programs: ``load(program)`` gives ``run(*arrays) -> outputs``."""

    name: str
    load: Callable

    def run(self, program, *arrays) -> list[np.ndarray]:
        """The outputs of ``program`` on ``arrays`` (its inputs, in order)."""
        return self.load(program)(*arrays)

    def __str__(self) -> str:
        return self.name


def load_c(program) -> Callable:
    """``program`` rendered to C, compiled (or found in the compile cache) and loaded."""
    from ..codegen.c import render_c
    from ..runtime.executable import Executable

    return Executable(program, render_c(program))


def load_loop_interpreter(program) -> Callable:
    """``program`` run by ``minicomp.testing.loop_interpreter`` (parallel loops backwards, local
    buffers NaN-filled: an illegal schedule shows every time)."""
    from .loop_interpreter import run_program

    slot = {node: i for i, node in enumerate(program.output_nodes)}

    def run(*arrays) -> list[np.ndarray]:
        outputs = run_program(program, *arrays)
        return [outputs[slot[node]].copy() for node in program.graph.outputs]

    return run


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("c", load_c),
    Backend("loop_interpreter", load_loop_interpreter),
]}
