"""Backends that run a loop-IR ``Program``: one call, whichever executes it.

A test (``tests/conftest.py``: the ``backend`` fixture) or ``bisect`` gives the same program
to each backend and compares the outputs::

    >>> BACKENDS["c"].run(program, x, w)                  # rendered to C, compiled, loaded, run
    >>> BACKENDS["loop_interpreter"].run(program, x, w)   # statement by statement in Python

Both return the outputs in the graph's output order (a value returned twice comes back twice).

Two more run a program's graph as a GPU runs it, on a CPU (``minicomp.schedules.gpu``): the
graph (``program.graph``, what the program was lowered from) is lowered again and scheduled
for ``cuda_target("sm_90")``, so whichever schedule the program had, these run the GPU one::

    >>> BACKENDS["gpu-serial-c"].run(program, x)      # thread-serial form, rendered to C (MCUDA)
    >>> BACKENDS["gpu-simt-interp"].run(program, x)   # SIMT form, threads in lockstep (tiny sizes)

and one runs it on the GPU, where there is one (``cuda_available()`` says why not)::

    >>> BACKENDS["cuda"].run(program, x)              # CUDA through nvcc and pycuda
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


def gpu_program(program, stop_after: str):
    """``program``'s graph lowered again and scheduled for a GPU (``cuda_target("sm_90")``), up
    to the loop stage ``stop_after``: ``"schedule"`` gives the thread-serial form, the last loop
    stage the SIMT form."""
    from ..stages import loop_program
    from ..target import cuda_target

    return loop_program(program.graph, cuda_target("sm_90"), stop_after=stop_after)


def load_gpu_serial_c(program) -> Callable:
    """The GPU schedule's thread-serial form (block, thread and phase loops serial, as MCUDA
    runs CUDA on a CPU), indices simplified, rendered to C and compiled: C's speed."""
    from ..stages import gpu_serial_program

    return load_c(gpu_serial_program(program.graph))


#: the thread order of the gpu-simt-interp backend: a fresh shuffle at each step, from this seed
SIMT_ORDER_SEED = 0


def load_gpu_simt_interp(program) -> Callable:
    """The GPU schedule's SIMT form (after ``fuse_threads``) in the loop interpreter: threads in
    lockstep, shuffled at each step, shared memory NaN at each block's start, races reported."""
    from .loop_interpreter import run_program

    simt = gpu_program(program, "simplify_indices")
    slot = {node: i for i, node in enumerate(simt.output_nodes)}

    def run(*arrays) -> list[np.ndarray]:
        outputs = run_program(simt, *arrays, order=SIMT_ORDER_SEED)
        return [outputs[slot[node]].copy() for node in simt.graph.outputs]

    return run


def cuda_available() -> str | None:
    """None where the CUDA backend can run here; else why not (no pycuda, no GPU)."""
    from ..target import probe_cuda_target

    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        return "pycuda is not installed (pip install 'minicomp[cuda]')"
    if probe_cuda_target() is None:
        return "no NVIDIA GPU (or no driver) on this machine"
    return None


def load_cuda(program) -> Callable:
    """``program``'s graph through every stage for this machine's GPU (``probe_cuda_target``):
    GPU schedules, fuse_threads, CUDA, nvcc, pycuda; NumPy arrays in and out."""
    from ..stages import run_stages
    from ..target import probe_cuda_target

    executable, _ = run_stages(program.graph, probe_cuda_target())
    return executable


BACKENDS: dict[str, Backend] = {b.name: b for b in [
    Backend("c", load_c),
    Backend("loop_interpreter", load_loop_interpreter),
    Backend("gpu-serial-c", load_gpu_serial_c),
    Backend("gpu-simt-interp", load_gpu_simt_interp),
    Backend("cuda", load_cuda),
]}
