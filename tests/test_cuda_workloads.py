"""The nine workloads through the CUDA pipeline, without a GPU and with one.

Without a GPU (here and in CI, where nvcc is installed): each workload at its tiny and its GPU
size goes through the stages for ``cuda_target("sm_90")`` to CUDA text, nvcc compiles every
kernel (all in one batch, ``runtime/nvcc.build_many``), and ptxas reports no spill to local
memory in any of them. With a GPU (``cuda`` marker; skipped, saying why, without one): each
workload's results on the GPU match NumPy, with NumPy arrays and with device arrays as input.
"""

from __future__ import annotations

import numpy as np
import pytest

import minicomp
from minicomp import TensorType
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.nvcc import arch_of, build_many
from minicomp.stages import run_stages
from minicomp.target import cuda_target
from minicomp.testing import assert_close
from minicomp.testing.backends import cuda_available
from minicomp.workloads import WORKLOADS

SM_90 = cuda_target("sm_90")


def cuda_source(workload, size: str):
    """The workload's program rendered as CUDA for sm_90 (traced from its shapes only)."""
    types = [TensorType(shape, "f32") for shape in workload.shapes[size].values()]
    graph, _ = run_pipeline(minicomp.trace(workload.fn, *types))
    source, _ = run_stages(graph, SM_90, stop_after="render")
    return source


@pytest.fixture(scope="module")
def workload_cubins():
    """(workload, size) -> its Source and Cubin, every one built in one nvcc batch."""
    cases = [(name, size) for name in WORKLOADS for size in ("tiny", "gpu")]
    sources = [cuda_source(WORKLOADS[name], size) for name, size in cases]
    cubins = build_many([s.text for s in sources], arch_of(SM_90))
    return {case: (source, cubin) for case, source, cubin in zip(cases, sources, cubins)}


@pytest.mark.parametrize("size", ["tiny", "gpu"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_workload_kernel_compiles_without_spills(workload_cubins, name, size):
    source, cubin = workload_cubins[name, size]
    report = cubin.report
    functions = [launch.function for launch in source.launches]
    assert functions and set(functions) <= set(report), f"ptxas reported {sorted(report)}, launches {functions}"
    spilled = {f: report[f] for f in functions if report[f].spills}
    assert not spilled, f"{name} at {size} size spills registers: {spilled}"


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_every_launch_fits_the_gpu(workload_cubins, name):
    source, _ = workload_cubins[name, "gpu"]
    for launch in source.launches:
        assert 1 <= launch.threads <= SM_90.max_threads_per_block
        assert launch.shared_bytes <= SM_90.shared_bytes
        assert all(isinstance(d, int) and 0 <= d < 2**31 for d in launch.grid), launch


# -- on a GPU ----------------------------------------------------------------------------------------

WHY_NOT = cuda_available()
needs_gpu = pytest.mark.skipif(WHY_NOT is not None, reason=f"needs a GPU: {WHY_NOT}")


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_workloads_on_the_gpu_match_numpy(name, rng):
    workload = WORKLOADS[name]
    args = workload.inputs("tiny", seed=int(rng.integers(1 << 30)))
    compiled = minicomp.jit(workload.fn, target="cuda")
    assert_close(compiled(*args), workload.fn(*args))
    assert_close(compiled(*args), workload.fn(*args))  # the second call with these sizes: a CUDA graph
    assert_close(compiled(*args), workload.fn(*args))  # replayed


@pytest.mark.cuda
@needs_gpu
def test_device_arrays_in_gpu_arrays_out(rng):
    import pycuda.autoprimaryctx  # noqa: F401  (pycuda allocates in the primary context, minicomp's)
    import pycuda.gpuarray as gpuarray

    workload = WORKLOADS["layernorm"]
    args = workload.inputs("tiny", seed=int(rng.integers(1 << 30)))
    compiled = minicomp.jit(workload.fn, target="cuda")
    out = compiled(*[gpuarray.to_gpu(a) for a in args])
    assert isinstance(out, gpuarray.GPUArray)
    assert_close(out.get(), workload.fn(*args))


@pytest.mark.cuda
@needs_gpu
def test_an_index_out_of_range_on_the_gpu_raises_as_on_the_cpu():
    from minicomp.errors import IndexOutOfBoundsError

    take = minicomp.jit(lambda x, i: x[i], target="cuda")
    x = np.arange(10, dtype=np.float32)
    assert_close(take(x, np.array([1, -1, 3])), x[[1, -1, 3]])
    with pytest.raises(IndexOutOfBoundsError):
        take(x, np.array([1, 10, 3]))


@pytest.mark.cuda
@needs_gpu
def test_a_device_array_written_in_place_is_written_on_the_device(rng):
    import pycuda.autoprimaryctx  # noqa: F401
    import pycuda.gpuarray as gpuarray

    def scale_rows(x, y):
        x[1:] = y[1:] * 2  # x is the caller's array: NumPy leaves the new rows in it
        return x.sum(axis=1)

    x, y = rng.standard_normal((5, 33)).astype(np.float32), rng.standard_normal((5, 33)).astype(np.float32)
    on_device = gpuarray.to_gpu(x)
    out = minicomp.jit(scale_rows, target="cuda")(on_device, gpuarray.to_gpu(y))
    expected_x = x.copy()
    expected = scale_rows(expected_x, y)
    assert_close(out.get(), expected)
    assert_close(on_device.get(), expected_x)


@pytest.mark.cuda
@needs_gpu
def test_torch_tensors_on_the_gpu_are_read_in_place(rng):
    torch = pytest.importorskip("torch", reason="torch is not installed: the GPUArray tests cover the rest")
    double = minicomp.jit(lambda x, w: (x @ w) * 2, target="cuda")
    x, w = rng.standard_normal((9, 64)).astype(np.float32), rng.standard_normal((64, 5)).astype(np.float32)
    tx, tw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    out = torch.as_tensor(double(tx, tw), device="cuda")  # a GPUArray: torch takes it without a copy
    assert_close(out.cpu().numpy(), (x @ w) * 2, rtol=1e-4)
    padded = torch.from_numpy(np.concatenate([x[0, :1], x.ravel()])).cuda()
    misaligned = padded[1:].reshape(9, 64)  # starts 4 bytes in: copied before a float4 kernel reads it
    assert_close(torch.as_tensor(double(misaligned, tw), device="cuda").cpu().numpy(), (x @ w) * 2, rtol=1e-4)
    strided = torch.from_numpy(np.arange(9 * 65, dtype=np.float32)).cuda().reshape(9, 65)[:, :64]
    with pytest.raises(minicomp.MinicompError, match="not contiguous"):
        double(strided, tw)
