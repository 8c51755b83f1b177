"""Executables: a compiled graph that can be called with NumPy arrays.

An ``Executable`` owns the loaded library, the constants it reads and the buffer plan. A call

1. checks the arguments (count, shape, dtype) and names the first one that does not fit;
2. makes each argument C-contiguous, aligned and native-endian (copying only when it is not);
3. allocates fresh outputs, takes the workspace for the intermediates and packed panels
   (offsets fixed at compile time; one per calling thread, allocated on its first call and
   reused, so big workspaces do not pay page faults on every call), and calls the entry
   point once: the kernels run in order inside C;
4. raises the NumPy error a kernel hit (the call's own status, see ``codegen/c.py``), or
   returns the outputs. Inputs are never written: kernels receive them as ``const``.

The entry point's last argument says whether the call's loops run on all cores or on the
calling thread: one thread in a process forked from one where OpenMP's threads may exist
(``runtime/fork.py``), and while the machine is so busy that one thread is faster
(``runtime/threads.py``).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from ..codegen.c import STATUS_MESSAGES, render_c
from ..codegen.compiler import compile_c, load_library
from ..errors import MinicompRuntimeError
from ..ir.interpreter import check_arguments
from ..passes.lower import ALIGNMENT, Program, lower
from ..ir.loops import For
from ..ir.rewrite import statements
from .fork import openmp_used, run_serially
from .threads import ThreadChoice


def prepare_argument(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The array as the kernels read it: C-contiguous, aligned, native byte order."""
    if array.flags.c_contiguous and array.flags.aligned and array.dtype == dtype:
        return array
    # np.require, not np.ascontiguousarray: that one returns a misaligned contiguous array as is
    return np.require(array, dtype=dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def aligned_empty(nbytes: int) -> np.ndarray:
    """A byte buffer whose start is aligned to ``ALIGNMENT`` bytes."""
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes]


class Executable:
    """A graph compiled to C and loaded; call it like the original function's graph."""

    def __init__(self, program: Program, source: str):
        self.program = program
        self.source = source
        self.library_path = compile_c(source, program.graph.name)
        self._ffi, self._lib = load_library(self.library_path)
        self._constants = [prepare_argument(value, value.dtype) for _, value in program.constants]
        self._output_slot = {node: i for i, node in enumerate(program.output_nodes)}
        self._per_thread = threading.local()
        has_threads = any(isinstance(s, For) and s.kind == "parallel"
                          for k in program.kernels for s in statements(k.body))
        self._threads = ThreadChoice() if has_threads else None  # all cores or one, call by call

    def _workspace(self) -> np.ndarray:
        """This thread's workspace (concurrent calls from two threads never share one)."""
        workspace = getattr(self._per_thread, "workspace", None)
        if workspace is None:
            workspace = self._per_thread.workspace = aligned_empty(self.program.workspace_bytes)
        return workspace

    def _parallel_next(self) -> bool:
        """Whether this call runs its loops on all threads (``runtime/threads.py``, ``fork.py``)."""
        if not self._threads or run_serially():
            return False
        parallel = self._threads.next_call()
        if parallel:
            openmp_used()  # before the call: a fork during it must see it
        return parallel

    def __call__(self, *args) -> list[np.ndarray]:
        graph = self.program.graph
        arrays = [prepare_argument(a, node.dtype)
                  for a, node in zip(check_arguments(graph, args), graph.inputs)]
        outputs = [np.empty(b.shape, b.dtype) for b in self.program.outputs]
        workspace = self._workspace()
        pointers = [self._ffi.cast("void *", a.ctypes.data)
                    for a in arrays + self._constants + outputs + [workspace]]
        parallel = self._parallel_next()
        pointers.append(self._ffi.NULL if parallel else self._ffi.cast("void *", 1))  # mc_serial
        start = time.perf_counter()
        status = self._lib.minicomp_entry(self._ffi.new("void *[]", pointers))
        if self._threads:
            self._threads.record(parallel, time.perf_counter() - start)
        if status:
            raise MinicompRuntimeError(f"{graph.name}: {STATUS_MESSAGES.get(status, f'error {status}')}")
        results, seen = [], set()
        for node in graph.outputs:  # a value returned twice comes back as two separate arrays
            array = outputs[self._output_slot[node]]
            results.append(array.copy() if node in seen else array)
            seen.add(node)
        return results


def compile_graph_c(graph) -> Executable:
    """Lower, render and compile ``graph`` for the CPU: the ``"c"`` target of ``jit``."""
    program = lower(graph)
    return Executable(program, render_c(program))


def _register_target() -> None:
    from ..frontend.jit import register_target

    @register_target("c")
    def compile_c_target(graph, **options):
        """The C target: one kernel per op (fusion and schedules come from later passes)."""
        if options:
            raise MinicompRuntimeError(f"target 'c' takes no options yet, got {sorted(options)}")
        return compile_graph_c(graph)


_register_target()
