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
from dataclasses import dataclass

import numpy as np

from ..codegen.c import STATUS_ERRORS, STATUS_MESSAGES, program_sizes, render_c
from .compiler import compile_c, load_library
from ..errors import MinicompRuntimeError
from ..ir.graph import Graph
from ..ir.interpreter import check_arguments
from ..lower.program import Program
from ..passes.memory import ALIGNMENT
from ..ir.loops import For
from ..ir.rewrite import statements
from ..ir.symbolic import evaluate
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


@dataclass
class CallPlan:
    """What a call needs besides the library: argument checks, constants, outputs, workspace.

    ``graph`` gives the inputs' names and types (``check_arguments``); ``outputs`` the shape
    and dtype of each output buffer; ``output_order`` which buffer each returned value is (a
    value returned twice names one buffer twice); ``threads``: whether any loop is parallel.
    """

    graph: Graph
    constants: list[np.ndarray]
    outputs: list[tuple[tuple[int, ...], np.dtype]]
    output_order: list[int]
    workspace_bytes: int
    threads: bool
    sizes: tuple[str, ...] = ()  # size symbols (dynamic dimensions), in the entry point's order

    @classmethod
    def of(cls, program: Program) -> "CallPlan":
        slot = {node: i for i, node in enumerate(program.output_nodes)}
        threads = any(isinstance(s, For) and s.kind == "parallel"
                      for k in program.kernels for s in statements(k.body))
        return cls(program.graph, [prepare_argument(value, value.dtype) for _, value in program.constants],
                   [(b.shape, b.dtype) for b in program.outputs],
                   [slot[node] for node in program.graph.outputs], program.workspace_bytes, threads,
                   tuple(program_sizes(program)))


class Executable:
    """A graph compiled to C and loaded; call it like the original function's graph.

    ``Executable(program, source)`` compiles (or finds in the cache) and loads ``source``;
    ``loaded=(library_path, ffi, lib)`` binds an already loaded library instead. An executable
    rebuilt from the program cache (``runtime/program_cache.py``) has no ``program`` until one
    is asked for: then ``relower()`` makes it again.
    """

    def __init__(self, program: Program | None, source: str | None, loaded=None, plan: CallPlan | None = None,
                 relower=None):
        self._program, self._source, self._relower = program, source, relower
        if loaded is None:
            path = compile_c(source, program.graph.name)
            loaded = (path, *load_library(path))
        self.library_path, self._ffi, self._lib = loaded
        self.plan = plan or CallPlan.of(program)
        self._per_thread = threading.local()
        self._threads = ThreadChoice() if self.plan.threads else None  # all cores or one, call by call
        outputs = set(self.plan.graph.outputs)  # inputs no kernel reads (size carriers) are passed as given
        self._unread = frozenset(i for i, node in enumerate(self.plan.graph.inputs)
                                 if not node.users and node not in outputs)

    @property
    def program(self) -> Program:
        """The lowered loop IR this executable runs."""
        if self._program is None:
            self._program = self._relower()
        return self._program

    @property
    def source(self) -> str:
        """The C source it was compiled from."""
        if self._source is None:
            self._source = render_c(self.program)
        return self._source

    def _workspace(self, nbytes: int) -> np.ndarray:
        """This thread's workspace of at least ``nbytes`` (concurrent calls from two threads
        never share one; with dynamic dimensions it grows to the largest call's need)."""
        workspace = getattr(self._per_thread, "workspace", None)
        if workspace is None or len(workspace) < nbytes:
            workspace = self._per_thread.workspace = aligned_empty(nbytes)
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
        plan, sizes = self.plan, {}
        arrays = [a if i in self._unread else prepare_argument(a, node.dtype)
                  for i, (a, node) in enumerate(zip(check_arguments(plan.graph, args, sizes), plan.graph.inputs))]
        if plan.sizes:  # dynamic dimensions: shapes and workspace for this call's sizes
            outputs = [np.empty(tuple(evaluate(d, sizes) for d in shape), dtype) for shape, dtype in plan.outputs]
            workspace = self._workspace(evaluate(plan.workspace_bytes, sizes))
        else:
            outputs = [np.empty(shape, dtype) for shape, dtype in plan.outputs]
            workspace = self._workspace(plan.workspace_bytes)
        pointers = [self._ffi.cast("void *", a.ctypes.data)
                    for a in arrays + plan.constants + outputs + [workspace]]
        parallel = self._parallel_next()
        pointers.append(self._ffi.NULL if parallel else self._ffi.cast("void *", 1))  # mc_serial
        if plan.sizes:
            size_values = np.array([sizes[name] for name in plan.sizes], np.int64)
            pointers.append(self._ffi.cast("void *", size_values.ctypes.data))
        start = time.perf_counter()
        status = self._lib.minicomp_entry(self._ffi.new("void *[]", pointers))
        if self._threads:
            self._threads.record(parallel, time.perf_counter() - start)
        if status:
            error = STATUS_ERRORS.get(status, MinicompRuntimeError)
            raise error(f"{plan.graph.name}: {STATUS_MESSAGES.get(status, f'error {status}')}")
        results, seen = [], set()
        for slot in plan.output_order:  # a value returned twice comes back as two separate arrays
            results.append(outputs[slot].copy() if slot in seen else outputs[slot])
            seen.add(slot)
        return results
