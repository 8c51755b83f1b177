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

Both are jit targets too (``minicomp.compile(graph, target="gpu-simt-interp")``: what
``minicomp fuzz --target ...`` and its reproducers compile for).

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


def load_gpu_serial_c(program) -> Callable:
    """The GPU schedule's thread-serial form (block, thread and phase loops serial, as MCUDA
    runs CUDA on a CPU), indices simplified, rendered to C and compiled: C's speed."""
    from ..stages import gpu_serial_program

    return load_c(gpu_serial_program(program.graph))


#: the thread order of the gpu-simt-interp backend: a fresh shuffle at each step, from this seed
SIMT_ORDER_SEED = 0


class SimtInterpreted:
    """``graph``'s GPU schedules (``cuda_target("sm_90")``) in their SIMT form (after
    ``fuse_threads``, indices simplified), run by the loop interpreter: threads in lockstep,
    shuffled at each step (``order``: ``ThreadOrder``), shared memory NaN at each block's start,
    races reported (``SynchronisationError``). Called like a compiled graph: the arguments (any
    layout: strided, byte-swapped, misaligned, the same array twice) -> the outputs in the
    graph's order, NumPy arrays. Python's speed: tiny sizes only.

    >>> SimtInterpreted(graph)(x)      # the "gpu-simt-interp" target of minicomp.compile
    [array(...)]
    """

    def __init__(self, graph, order: str | int = SIMT_ORDER_SEED):
        from ..stages import loop_program
        from ..target import cuda_target

        self.graph, self.order = graph, order
        self.program = loop_program(graph, cuda_target("sm_90"), stop_after="simplify_indices")
        slot = {node: i for i, node in enumerate(self.program.output_nodes)}
        self._order = [slot[node] for node in graph.outputs]

    def __call__(self, *arrays) -> list[np.ndarray]:
        from ..ir.interpreter import check_arguments
        from .loop_interpreter import run_program

        outputs = run_program(self.program, *check_arguments(self.graph, arrays), order=self.order)
        return [outputs[slot].copy() for slot in self._order]


def load_gpu_simt_interp(program) -> Callable:
    """The GPU schedule's SIMT form (after ``fuse_threads``) of ``program``'s graph in the loop
    interpreter (``SimtInterpreted``)."""
    return SimtInterpreted(program.graph)


def has_nvcc() -> bool:
    """Whether nvcc (the CUDA toolkit) is found here (``runtime.nvcc.find_nvcc``): the tests that
    compile generated CUDA need it, not a GPU."""
    from ..errors import MinicompError
    from ..runtime.nvcc import find_nvcc

    try:
        find_nvcc()
        return True
    except MinicompError:
        return False


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
