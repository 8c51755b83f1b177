"""Running a program's CUDA kernels on an NVIDIA GPU through pycuda.

A ``CudaExecutable`` is the CUDA target's counterpart of the C target's ``Executable``: made
from the program, its rendered CUDA (``codegen/cuda.py``: the text and one ``Launch`` per
kernel) and the cubin nvcc built from it (``runtime/nvcc.py``), and called like the original
function. A call

1. checks the arguments against the graph's inputs (count, shape, dtype; dynamic dimensions
   bind their size symbols), as the C target does;
2. finds each argument's device memory: an object with ``__cuda_array_interface__`` (a pycuda
   ``GPUArray``, a torch or CuPy tensor on the GPU) is used where it is, with no copy; a NumPy
   array is copied into a device buffer this executable keeps;
3. copies a device argument that a kernel reads with vector loads (``float4``: the kernel's
   ``Launch.aligned``) but that does not start on a 16-byte boundary into an aligned buffer
   (``misaligned``: the kernels assume aligned buffers, which minicomp's own always are);
4. launches every kernel in order on the executable's stream, the intermediates in one device
   workspace, and reads back the status word where a kernel can hit a NumPy error case;
5. returns the outputs: NumPy arrays (copied back) when every argument was a NumPy array,
   else pycuda ``GPUArray`` s that stay on the device (``torch.as_tensor(out, device="cuda")``
   takes them without a copy); a device array the function writes in place (``x[...] = v``)
   gets its new value by a device-to-device copy.

Everything runs in the device's *primary* context, the one the CUDA runtime, torch and CuPy
use, so the four share one process and one memory space. Where every argument is a NumPy
array, the device buffers keep their addresses from call to call, so the second call with a
set of sizes captures the launches in a CUDA graph and later calls replay it: one driver call
for the whole program instead of one per kernel (pycuda has no graph API; the few driver
functions are called through ``ctypes``).

pycuda is imported only when a CUDA executable is made: without it, or without a GPU, making
one raises a ``MinicompError`` that says what is missing.
"""

from __future__ import annotations

import atexit
import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from ..codegen.cuda import VECTOR_ALIGNMENT
from ..errors import MinicompError, MinicompRuntimeError
from ..ir.interpreter import check_argument
from ..ir.symbolic import evaluate
from .executable import CallPlan, prepare_argument

GRID_LIMITS = (2**31 - 1, 65535, 65535)  # blocks along x, y, z
STATIC_SHARED_LIMIT = 48 * 1024  # shared memory a block gets without opting in
GRAPH_AFTER_CALLS = 2  # capture a CUDA graph on the second call with the same sizes
GRAPHS_KEPT = 8  # captured graphs per executable (one per set of sizes)


# -- the driver and the device -------------------------------------------------------------------

def cuda_driver():
    """``pycuda.driver``, initialised; a ``MinicompError`` saying what is missing otherwise."""
    try:
        import pycuda.driver as driver
    except ImportError as exc:
        raise MinicompError("target 'cuda' needs pycuda, which is not installed: "
                            "pip install 'minicomp[cuda]' (it builds against the CUDA toolkit)") from exc
    try:
        driver.init()
        if driver.Device.count() == 0:
            raise MinicompError("target 'cuda' needs an NVIDIA GPU: the CUDA driver sees none")
    except driver.Error as exc:
        raise MinicompError(f"target 'cuda' needs an NVIDIA GPU and its driver: {exc}") from exc
    return driver


_primary = {}
_primary_lock = threading.Lock()


def primary_context(device: int = 0):
    """The primary context of GPU ``device``, retained once per process (torch and CuPy use it too).

    Where no context is current on this thread it is made current until exit, as
    ``pycuda.autoprimaryctx`` does: a result left on the device (a ``GPUArray``) is freed
    whenever Python drops it, and pycuda aborts the process if no context is current then.
    """
    with _primary_lock:
        if device not in _primary:
            driver = cuda_driver()
            context = driver.Device(device).retain_primary_context()
            if driver.Context.get_current() is None:
                context.push()
                atexit.register(_pop_at_exit, context)
            _primary[device] = context
        return _primary[device]


def _pop_at_exit(context) -> None:
    """Leave the context made current by ``primary_context`` (pycuda's own exit clean-up runs after)."""
    try:
        context.pop()
    except Exception:  # the driver may already be shut down
        pass


class current_context:
    """``with current_context(context):`` the context is current on this thread inside."""

    def __init__(self, context):
        self.context = context

    def __enter__(self):
        self.context.push()
        return self.context

    def __exit__(self, *exc):
        self.context.pop()


# -- arguments that are already on the device ---------------------------------------------------------

@dataclass(frozen=True)
class DeviceView:
    """What ``__cuda_array_interface__`` says of a device array: its address, shape and dtype."""

    pointer: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def device_view(obj) -> DeviceView | None:
    """The ``DeviceView`` of an object with ``__cuda_array_interface__`` (versions 0 to 3), None
    for any other object. A device array whose elements are not contiguous in row-major order
    is refused: minicomp's kernels read flat row-major buffers.

        torch.ones(2, 3, device="cuda")          ->  DeviceView(pointer=..., shape=(2, 3), dtype=float32)
        torch.ones(3, 2, device="cuda").T        ->  MinicompRuntimeError (not contiguous)
    """
    interface = getattr(obj, "__cuda_array_interface__", None)
    if interface is None:
        return None
    shape = tuple(int(n) for n in interface["shape"])
    dtype = np.dtype(interface["typestr"])
    if not dtype.isnative:
        raise MinicompRuntimeError(f"a device array of byte-swapped {dtype} cannot be read in place; "
                                   f"pass one of native byte order")
    strides = interface.get("strides")
    if strides is not None and not _row_major(shape, tuple(strides), dtype.itemsize):
        raise MinicompRuntimeError(f"a device array of shape {shape} with strides {tuple(strides)} is not "
                                   f"contiguous; pass a contiguous one (torch: .contiguous(), CuPy: "
                                   f"cupy.ascontiguousarray)")
    if interface.get("mask") is not None:
        raise MinicompRuntimeError("a masked device array cannot be read; pass one without a mask")
    pointer, _readonly = interface["data"]
    return DeviceView(int(pointer or 0), shape, dtype)


def _row_major(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> bool:
    """Whether ``strides`` (bytes) are row-major for ``shape`` (axes of length 0 or 1 may have any)."""
    if 0 in shape:
        return True
    expected = itemsize
    for n, stride in zip(reversed(shape), reversed(strides)):
        if n != 1 and stride != expected:
            return False
        expected *= n
    return True


class _Described:
    """A stand-in that ``check_argument`` reads a device array's shape and dtype from."""

    def __init__(self, view: DeviceView):
        self.shape, self.dtype, self.ndim = view.shape, view.dtype, len(view.shape)


def misaligned(pointers: dict[str, int], launches) -> list[str]:
    """The buffers that some kernel accesses with vector loads or stores (``Launch.aligned``)
    whose address in ``pointers`` is not a multiple of ``VECTOR_ALIGNMENT`` (16) bytes, in the
    order the launches first name them. Every buffer minicomp allocates is aligned (the
    driver's allocations to 256 bytes, workspace offsets to 64); an argument given on the
    device may not be (``torch.arange(9.0, device="cuda")[1:]`` starts 4 bytes in).

        misaligned({"x": 0x7f0000000004, "y": 0x7f0000000000}, [Launch(..., aligned=("x", "y"))])  ->  ["x"]
    """
    found = []
    for launch in launches:
        for name in getattr(launch, "aligned", ()):
            if name in pointers and pointers[name] % VECTOR_ALIGNMENT and name not in found:
                found.append(name)
    return found


# -- device memory the executable keeps ------------------------------------------------------------

class DeviceBuffers:
    """Device allocations by slot name, each grown to the largest call's need and then kept, so
    that their addresses stay the same from call to call (what CUDA graph replay needs)."""

    def __init__(self, driver):
        self.driver = driver
        self.allocations: dict[str, object] = {}
        self.sizes: dict[str, int] = {}
        self.generation = 0  # bumps whenever an address changes

    def get(self, slot: str, nbytes: int):
        """The allocation of ``slot`` with at least ``nbytes`` (at least 1: CUDA has no empty ones)."""
        nbytes = max(int(nbytes), 1)
        if self.sizes.get(slot, 0) < nbytes:
            self.allocations[slot] = self.driver.mem_alloc(nbytes)
            self.sizes[slot] = nbytes
            self.generation += 1
        return self.allocations[slot]


# -- CUDA graphs through the driver API -----------------------------------------------------------------

class DriverGraphs:
    """The driver's graph functions that pycuda does not wrap, through ``ctypes``."""

    CAPTURE_MODE_THREAD_LOCAL = 1

    def __init__(self):
        cuda = ctypes.CDLL("libcuda.so.1")
        self.begin = cuda.cuStreamBeginCapture_v2
        self.end = cuda.cuStreamEndCapture
        self.instantiate = cuda.cuGraphInstantiateWithFlags
        self.launch = cuda.cuGraphLaunch
        self.destroy_graph = cuda.cuGraphDestroy
        self.destroy_exec = cuda.cuGraphExecDestroy
        for fn in (self.begin, self.end, self.instantiate, self.launch, self.destroy_graph, self.destroy_exec):
            fn.restype = ctypes.c_int

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise MinicompRuntimeError(f"CUDA graph {what} failed with driver error {status}")

    def capture(self, stream, issue) -> ctypes.c_void_p:
        """The launches ``issue()`` puts on ``stream``, captured and instantiated."""
        handle = ctypes.c_void_p(stream.handle)
        self.check(self.begin(handle, self.CAPTURE_MODE_THREAD_LOCAL), "capture")
        graph = ctypes.c_void_p()
        try:
            issue()
        finally:
            self.check(self.end(handle, ctypes.byref(graph)), "capture")
        executable = ctypes.c_void_p()
        try:
            self.check(self.instantiate(ctypes.byref(executable), graph, ctypes.c_ulonglong(0)), "instantiation")
        finally:
            self.destroy_graph(graph)
        return executable

    def replay(self, executable: ctypes.c_void_p, stream) -> None:
        self.check(self.launch(executable, ctypes.c_void_p(stream.handle)), "launch")


# -- the executable ----------------------------------------------------------------------------------

class CudaExecutable:
    """A program compiled for CUDA and loaded on GPU ``device``; call it like the graph.

    ``source`` is the rendered CUDA (``.text`` and ``.launches``), ``cubin`` nvcc's build of it.
    """

    def __init__(self, program, source, cubin: bytes, device: int = 0):
        self.program, self.source = program, source
        self.plan = CallPlan.of(program)
        self.driver = cuda_driver()
        self.context = primary_context(device)
        self._lock = threading.Lock()  # one call at a time: the device buffers are shared
        self._buffers = {b.name: b for b in [*program.params, *program.workspace]}
        with current_context(self.context):
            self.module = self.driver.module_from_buffer(cubin)
            self.functions = [self._prepare(launch) for launch in source.launches]
            self.stream = self.driver.Stream()
            self.memory = DeviceBuffers(self.driver)
            self.constants = []
            for n, array in enumerate(self.plan.constants):
                allocation = self.memory.get(f"constant{n}", array.nbytes)
                self.driver.memcpy_htod(allocation, array)
                self.constants.append(allocation)
        self._status = any(launch.status for launch in source.launches)
        self._graphs: dict[tuple, object] = {}
        self._seen: dict[tuple, int] = {}
        self._graph_api = None  # DriverGraphs once a graph is captured; False if capture is impossible
        self._memory_pool = None  # DeviceMemoryPool for results left on the device, made on first use

    def __del__(self):
        graphs, api = getattr(self, "_graphs", {}), getattr(self, "_graph_api", None)
        if graphs and api:
            try:
                with current_context(self.context):
                    for graph in graphs.values():
                        api.destroy_exec(graph)
            except Exception:  # the driver may be shut down at interpreter exit
                pass

    def _prepare(self, launch):
        """The kernel function of ``launch`` with its argument types: pointers, int64 sizes."""
        function = self.module.get_function(launch.function)
        if launch.shared_bytes > STATIC_SHARED_LIMIT:  # a block asks for more than the default 48 KiB
            function.set_attribute(self.driver.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                   launch.shared_bytes)
        kinds = "".join("P" if name in self._buffers else "q" for name in launch.params)
        function.prepare(kinds + ("P" if launch.status else ""))
        return function

    def __call__(self, *args) -> list:
        with self._lock, current_context(self.context):
            return self._call(args)

    def _call(self, args) -> list:
        plan, sizes = self.plan, {}
        views = [device_view(a) for a in args]
        on_device = any(v is not None for v in views)
        if len(args) != len(plan.graph.inputs):
            raise MinicompRuntimeError(f"graph {plan.graph.name!r} takes {len(plan.graph.inputs)} argument(s), "
                                       f"got {len(args)}")
        pointers: dict[str, int] = {}
        uploads = []
        for n, (node, arg, view) in enumerate(zip(plan.graph.inputs, args, views)):
            if view is not None:
                check_argument(plan.graph, node, _Described(view), sizes, described=True)
                pointers[self.program.inputs[n].name] = view.pointer
            else:
                array = prepare_argument(check_argument(plan.graph, node, arg, sizes), node.dtype)
                uploads.append((self.program.inputs[n].name, array))
        for name, array in uploads:
            allocation = self.memory.get(f"input:{name}", array.nbytes)
            if array.nbytes:
                self.driver.memcpy_htod_async(allocation, array, self.stream)
            pointers[name] = int(allocation)
        for (buffer, _), allocation in zip(self.program.constants, self.constants):
            pointers[buffer.name] = int(allocation)
        shapes = [tuple(int(evaluate(d, sizes)) for d in shape) for shape, _ in plan.outputs]
        outputs = []
        for buffer, shape, (_, dtype) in zip(self.program.outputs, shapes, plan.outputs):
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if on_device:  # a fresh array per call, from a pool: no cuMemAlloc once warm
                allocation = self._pool().allocate(max(nbytes, 1))
            else:
                allocation = self.memory.get(f"output:{buffer.name}", nbytes)
            outputs.append(allocation)
            pointers[buffer.name] = int(allocation)
        workspace = int(self.memory.get("workspace", evaluate(plan.workspace_bytes, sizes)))
        for buffer, offset in self.program.workspace.items():
            pointers[buffer.name] = workspace + int(evaluate(offset, sizes))
        on_device_inputs = {self.program.inputs[n].name: view for n, view in enumerate(views) if view is not None}
        for name in misaligned(pointers, self.source.launches):
            pointers[name] = self._aligned_copy(name, on_device_inputs.get(name), pointers[name])
        status = self.memory.get("status", 4) if self._status else None
        if status is not None:
            self.driver.memset_d32_async(status, 0, 1, self.stream)
        self._run(pointers, sizes, status, replayable=not on_device)
        self._write_device_inputs(views, outputs)
        self._raise_status(status)
        return self._results(outputs, shapes, on_device, wait=status is not None or not on_device)

    def _pool(self):
        """The executable's pool of device memory for results that stay on the device."""
        if self._memory_pool is None:
            from pycuda.tools import DeviceMemoryPool

            self._memory_pool = DeviceMemoryPool()
        return self._memory_pool

    def _write_device_inputs(self, views: list, outputs: list) -> None:
        """Each device array the function writes (``x[...] = v``: ``graph.updated_inputs``)
        gets its new value by a device-to-device copy on the stream, as NumPy would leave it."""
        for number, returned in self.plan.graph.updated_inputs.items():
            view = views[number]
            if view is None:
                continue
            if view.nbytes:  # the value has the argument's shape and dtype
                self.driver.memcpy_dtod_async(view.pointer, outputs[self.plan.output_order[returned]], view.nbytes,
                                              self.stream)

    def _aligned_copy(self, name: str, view: DeviceView | None, pointer: int) -> int:
        """The address of a copy of device argument ``name`` (``view``) at an address that
        vector accesses may use: a kernel reads it with ``float4`` loads (``Launch.aligned``)
        but the caller's array starts elsewhere (a torch slice ``x[1:]``). The copy is a
        device-to-device one into a buffer this executable keeps."""
        if view is None:  # minicomp's own buffers are allocated aligned: this is a bug
            raise MinicompRuntimeError(f"buffer {name} is at {pointer:#x}, not a multiple of {VECTOR_ALIGNMENT} "
                                       f"bytes, though minicomp placed it and a kernel reads it with vector loads")
        allocation = self.memory.get(f"aligned:{name}", view.nbytes)
        if view.nbytes:
            self.driver.memcpy_dtod_async(allocation, pointer, view.nbytes, self.stream)
        return int(allocation)

    def _launches(self, pointers: dict, sizes: dict, status) -> None:
        """Every kernel, in order, on the stream (a launch with an empty grid is skipped)."""
        for launch, function in zip(self.source.launches, self.functions):
            grid = tuple(int(evaluate(d, sizes)) for d in launch.grid)
            if 0 in grid:
                continue
            for blocks, limit, axis in zip(grid, GRID_LIMITS, "xyz"):
                if blocks > limit:
                    raise MinicompRuntimeError(f"kernel {launch.function} needs {blocks} blocks along {axis}, "
                                               f"more than CUDA's {limit}")
            values = [np.uintp(pointers[name]) if name in pointers else np.int64(sizes[name])
                      for name in launch.params]
            if launch.status:
                values.append(np.uintp(int(status)))
            function.prepared_async_call(grid, tuple(launch.block), self.stream, *values,
                                         shared_size=launch.shared_bytes)

    def _run(self, pointers: dict, sizes: dict, status, replayable: bool) -> None:
        """The launches, replayed from a captured CUDA graph where the addresses are the ones
        captured (NumPy arguments: the executable's own buffers), else one by one."""
        key = (tuple(sorted(sizes.items())), self.memory.generation)
        graph = self._graphs.get(key) if replayable else None
        if graph is not None:
            self._graph_api.replay(graph, self.stream)
            return
        calls = self._seen[key] = self._seen.get(key, 0) + 1
        if not replayable or self._graph_api is False or calls < GRAPH_AFTER_CALLS or len(self._graphs) >= GRAPHS_KEPT:
            self._launches(pointers, sizes, status)
            return
        try:
            self._graph_api = self._graph_api or DriverGraphs()
            self._graphs[key] = self._graph_api.capture(self.stream, lambda: self._launches(pointers, sizes, status))
        except (OSError, AttributeError, MinicompRuntimeError, self.driver.Error):
            self._graph_api = False  # this driver cannot capture: launch one by one from now on
            self._launches(pointers, sizes, status)
            return
        self._graph_api.replay(self._graphs[key], self.stream)

    def _raise_status(self, status) -> None:
        """The NumPy error a kernel hit (the C target's status codes, OR-ed by the threads), if any."""
        if status is None:
            return
        from ..codegen.c import STATUS_ERRORS, STATUS_MESSAGES

        word = np.zeros(1, np.int32)
        self.driver.memcpy_dtoh_async(word, status, self.stream)
        self.stream.synchronize()
        codes = [code for code in sorted(STATUS_MESSAGES) if int(word[0]) & code]  # threads OR their codes in
        if codes:
            error = STATUS_ERRORS.get(max(codes, key=lambda code: code in STATUS_ERRORS), MinicompRuntimeError)
            raise error(f"{self.plan.graph.name}: {'; '.join(STATUS_MESSAGES[code] for code in codes)}")

    def _results(self, outputs, shapes, on_device: bool, wait: bool = True) -> list:
        """The outputs in the graph's order: GPUArrays on the device, or NumPy arrays copied back.
        Without ``wait`` (results on the device, no status to read) the host does not wait for
        the kernels: the stream is a blocking one, so work on the legacy default stream (torch's,
        pycuda's) runs after them."""
        values = []
        for allocation, shape, (_, dtype) in zip(outputs, shapes, self.plan.outputs):
            if on_device:
                from pycuda.gpuarray import GPUArray

                values.append(GPUArray(shape, dtype, gpudata=allocation))
            else:
                host = np.empty(shape, dtype)
                if host.nbytes:
                    self.driver.memcpy_dtoh_async(host, allocation, self.stream)
                values.append(host)
        if wait:
            self.stream.synchronize()
        results, seen = [], set()
        for slot in self.plan.output_order:
            value = values[slot]
            results.append(value.copy() if slot in seen else value)
            seen.add(slot)
        return results
