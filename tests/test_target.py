"""The ``Target``: what minicomp thinks the machine is (``minicomp.target``).

Nothing here depends on the CPU the tests run on: the host's target is checked against what
the compiler says about it, other CPUs are asked of the compiler by their ``-march`` (compiling
only), and a hand-made SSE target's micro-kernel is compiled for plain x86-64 and run. A fake
CUDA driver (a small C library with the four entry points minicomp calls) stands in for a GPU.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp.cli import main
from minicomp.codegen import gemm
from minicomp.errors import UnsupportedError
from minicomp.runtime import compiler
from minicomp.runtime.compiler import build_flags, cflags, compile_c, load_library, target_macros
from minicomp.schedules.cpu import work
from minicomp.schedules.cpu.lanes import lane_count
from minicomp import target as target_module
from minicomp.target import (CUDA_ARCHITECTURES, TYPICAL_LINE_BYTES, Target, cache_line_bytes, cache_sizes, cpu_target,
                             cuda_target, describe, host_target, packed_width, parse_size, probe_cuda_target,
                             vector_unit)

REPO = Path(__file__).resolve().parent.parent
SSE = Target(vector_bytes=16, vector_registers=16)


def flags_for(*opt: str) -> tuple[str, ...]:
    """A build's flags (required + ``opt`` + workarounds) as the probe is keyed by them."""
    return tuple(build_flags(list(opt)))


# -- the host ------------------------------------------------------------------------------------

def test_host_target_agrees_with_the_compiler_and_the_os():
    target = host_target()
    assert target is host_target()  # probed once per process and set of flags
    assert target.kind == "cpu" and target.flags == tuple(cflags())
    assert (target.isa, target.vector_bytes, target.vector_registers) == vector_unit(target_macros(target.flags))
    assert target.loop_vector_bytes in (0, 16, 32, 64) and target.loop_vector_bytes <= target.vector_bytes
    assert 1 <= target.cores <= (os.cpu_count() or 1)
    assert 0 < target.l1_bytes <= target.l2_bytes and target.l3_bytes >= 0
    assert target.line_bytes in (32, 64, 128, 256)
    assert target.compiler == compiler.compiler_version(compiler.compiler())
    assert f"{target.vector_bytes * 8}-bit registers" in str(target)


def test_the_target_follows_the_flags(monkeypatch):
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O3 -march=x86-64")
    plain = host_target()
    assert (plain.isa, plain.vector_bytes, plain.loop_vector_bytes) == ("sse", 16, 16)
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O3 -march=haswell")
    assert (host_target().isa, host_target().vector_bytes) == ("avx2", 32)


@pytest.mark.parametrize("opt, isa, registers, loops", [
    (["-O3", "-march=x86-64"], "sse", 16, 16),
    (["-O3", "-march=haswell"], "avx2", 32, 32),
    (["-O3", "-march=haswell", "-mprefer-vector-width=128"], "avx2", 32, 16),
    (["-O3", "-march=x86-64-v4", "-mprefer-vector-width=512"], "avx512", 64, 64),
    (["-O3", "-march=x86-64-v4", "-mprefer-vector-width=256"], "avx512", 64, 32),
    (["-O3", "-march=haswell", "-fno-tree-vectorize"], "avx2", 32, 0),
])
def test_register_width_and_loop_width_are_told_apart(opt, isa, registers, loops):
    """The micro-kernel's width comes from the ISA; the loops' from what the compiler emits."""
    target = cpu_target(flags_for(*opt))
    assert (target.isa, target.vector_bytes, target.loop_vector_bytes) == (isa, registers, loops)
    assert target.vector_registers == (32 if isa == "avx512" else 16)
    assert ("loops not vectorised" if loops == 0 else f"loops vectorised at {loops * 8} bits") in str(target)


def test_vector_unit_reads_the_macros():
    assert vector_unit("#define __AVX512F__ 1\n#define __AVX2__ 1\n#define __AVX__ 1\n") == ("avx512", 64, 32)
    assert vector_unit("#define __AVX2__ 1\n#define __AVX__ 1\n") == ("avx2", 32, 16)
    assert vector_unit("#define __AVX__ 1\n") == ("avx", 32, 16)
    assert vector_unit("#define __ARM_NEON 1\n") == ("neon", 16, 32)
    assert vector_unit("#define __SSE2__ 1\n") == ("sse", 16, 16)


def test_packed_width_counts_packed_arithmetic_only():
    assert packed_width("\tvfmadd231ps\t(%rsi,%rax), %ymm1, %ymm0\n\tvmovups\t%ymm0, (%rdi)\n") == 32
    assert packed_width("\tvmulps\t%zmm1, %zmm2, %zmm0\n\tvaddps\t%xmm1, %xmm2, %xmm0\n") == 64
    assert packed_width("\tmulps\t%xmm1, %xmm0\n") == 16  # SSE2, no VEX prefix
    assert packed_width("\tvaddss\t%xmm1, %xmm0, %xmm0\n\tvmovaps\t%ymm1, %ymm0\n") == 0  # scalar, a copy
    assert packed_width("\tfmla\tv0.4s, v1.4s, v2.4s\n") == 16  # AArch64 NEON
    assert packed_width("\tret\n") == 0


def test_cache_sizes_from_sysfs(tmp_path):
    for index, (level, kind, size, line) in enumerate([(1, "Instruction", "32K", 64), (1, "Data", "48K", 128),
                                                       (2, "Unified", "2048K", 64), (3, "Unified", "105M", 64)]):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size), ("coherency_line_size", line)):
            (folder / name).write_text(f"{value}\n")
    assert cache_sizes(tmp_path) == {"l1_bytes": 48 << 10, "l2_bytes": 2 << 20, "l3_bytes": 105 << 20}
    assert cache_line_bytes(tmp_path) == 128  # the L1 data cache's, not the instruction cache's


def test_cache_sizes_without_sysfs_are_still_sane(tmp_path):
    sizes = cache_sizes(tmp_path / "missing")
    assert sizes["l1_bytes"] > 0 and sizes["l2_bytes"] >= sizes["l1_bytes"] and sizes["l3_bytes"] >= 0
    assert cache_line_bytes(tmp_path / "missing") == TYPICAL_LINE_BYTES == 64


def test_describe_shows_the_line_size():
    apple = Target(isa="neon", vector_bytes=16, vector_registers=32, l2_bytes=4 << 20, line_bytes=128)
    assert "lines of 128 bytes" in describe(apple) and "128-byte lines" in str(apple)
    assert "lines of 64 bytes" in describe(Target())


def test_parse_size():
    assert [parse_size(s) for s in ("32K", "1M", "512", " 2048K\n")] == [32768, 1 << 20, 512, 2 << 20]


def test_program_key_covers_the_target(monkeypatch):
    """A warm start never reuses a program scheduled for another target (other cores, caches,
    widths), even with the same flags and compiler."""
    from dataclasses import replace

    from minicomp.runtime import program_cache

    traced = minicomp.trace(lambda x: x + 1, np.ones(4, np.float32))
    key = program_cache.program_key(traced, [], {})
    assert program_cache.program_key(traced, [], {}) == key
    for other in (replace(host_target(), cores=host_target().cores + 1),
                  replace(host_target(), line_bytes=2 * host_target().line_bytes)):
        monkeypatch.setattr(program_cache, "host_target", lambda: other)
        assert program_cache.program_key(traced, [], {}) != key


# -- the micro-kernel reads the target ---------------------------------------------------------------

def test_sse_target_gets_the_sse_micro_kernel():
    assert gemm.tile_shape(np.float32, SSE) == (6, 8) and gemm.tile_shape(np.float64, SSE) == (6, 4)
    assert gemm.kernel_name(np.float32, SSE) == "mc_gemm_6x8_f32"
    assert "vector_size(16)" in gemm.types_source("f32", SSE)
    avx512 = Target(isa="avx512", vector_bytes=64, vector_registers=32)
    with pytest.raises(ValueError, match="another target"):  # 8 columns are not 16-float vectors
        gemm.source("mc_gemm_6x8_f32", avx512)


ENTRY = """
int minicomp_entry(void **args) {
    int64_t kc = *(const int64_t *)args[3];
    NAME(kc, (const CTYPE *)args[0], kc, (const CTYPE *)args[1], (CTYPE *)args[2], NR, *(const int *)args[4]);
    return 0;
}
"""


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sse_micro_kernel_compiles_for_plain_x86_64_and_multiplies(dtype, monkeypatch, rng):
    """Rendered for the hand-made SSE target and compiled with ``-march=x86-64`` (no AVX):
    C (+)= A[6, kc] . Bpanel[kc, NR] as NumPy computes it."""
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O2 -march=x86-64")
    name = gemm.kernel_name(dtype, SSE)
    mr, nr = gemm.tile_shape(dtype, SSE)
    suffix = gemm.dtype_suffix(name)
    ctype = "float" if dtype is np.float32 else "double"
    source = "#include <stdint.h>\n" + gemm.types_source(suffix, SSE) + gemm.source(name, SSE) + \
        ENTRY.replace("NAME", name).replace("CTYPE", ctype).replace("NR", str(nr))
    ffi, lib = load_library(compile_c(source, name=f"sse_{name}"))
    kc = 37
    a, b = rng.standard_normal((mr, kc)).astype(dtype), rng.standard_normal((kc, nr)).astype(dtype)
    c = rng.standard_normal((mr, nr)).astype(dtype)
    for accumulate, expected in ((1, c + a @ b), (0, a @ b)):
        args = [np.array([kc], np.int64), np.array([accumulate], np.intc)]
        pointers = [ffi.from_buffer(x) for x in (a, b, c, *args)]
        assert lib.minicomp_entry(ffi.new("void *[5]", pointers)) == 0
        np.testing.assert_allclose(c, expected, rtol=1e-5 if dtype is np.float32 else 1e-12, atol=1e-5)


SSE_MATMUL = """
import numpy as np, minicomp
from minicomp.target import host_target
target = host_target()
assert (target.isa, target.vector_bytes) == ("sse", 16), target
rng = np.random.default_rng(0)
for dtype, name in ((np.float32, "mc_gemm_6x8_f32"), (np.float64, "mc_gemm_6x4_f64")):
    a, b = rng.standard_normal((13, 37)).astype(dtype), rng.standard_normal((37, 70)).astype(dtype)
    f = minicomp.jit(lambda a, b: a @ b)
    source = f.inspect(a, b).source
    assert name in source and "vector_size(16)" in source, source[:2000]
    np.testing.assert_allclose(f(a, b), a @ b, rtol=1e-4, atol=1e-4)
print("ok", target)
"""


def test_jit_builds_the_sse_matmul_when_the_flags_say_x86_64():
    """The whole pipeline on a plain x86-64 target: the schedule's tile, the renderer's vectors
    and the compiler's flags agree."""
    env = {**os.environ, "MINICOMP_CFLAGS": "-O2 -march=x86-64 -fopenmp",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(minicomp.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", SSE_MATMUL], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("ok cpu")


# -- CUDA --------------------------------------------------------------------------------------------

def test_cuda_table():
    h100 = cuda_target("sm_90")
    assert h100.kind == "cuda" and h100.compute_capability == (9, 0) and h100.sm_count == 132
    assert (h100.warp_size, h100.max_threads_per_block, h100.registers_per_block) == (32, 1024, 65536)
    assert h100.shared_bytes == 227 << 10 and "H100" in h100.name and "sm_90" in str(h100)
    for arch in CUDA_ARCHITECTURES:
        target = cuda_target(arch)
        assert f"sm_{target.compute_capability[0]}{target.compute_capability[1]}" == arch
        assert 48 << 10 <= target.shared_bytes <= 228 << 10 and target.sm_count > 0
    with pytest.raises(UnsupportedError, match="sm_90"):
        cuda_target("sm_1")


def test_no_cuda_driver_means_no_cuda_target(monkeypatch):
    monkeypatch.setattr(target_module, "CUDA_DRIVER", "libminicomp-no-such-driver.so")
    assert probe_cuda_target() is None


FAKE_DRIVER = """
#include <string.h>
static const int values[] = {[1] = 1024, [10] = 32, [12] = 65536, [16] = 7, [75] = 8, [76] = 9, [97] = 101376};
int cuInit(unsigned flags) { return NO_DEVICE; }
int cuDeviceGet(int *device, int ordinal) { *device = ordinal; return ordinal == 0 ? 0 : 101; }
int cuDeviceGetAttribute(int *value, int attribute, int device) { *value = values[attribute]; return 0; }
int cuDeviceGetName(char *name, int length, int device) { strncpy(name, "Fake GPU", length); return 0; }
"""


def fake_driver(tmp_path: Path, no_device: bool) -> str:
    """A shared library answering like the CUDA driver about one sm_89 GPU with 7 SMs (or,
    ``no_device``, failing ``cuInit`` as a machine without a GPU does: CUDA_ERROR_NO_DEVICE)."""
    source = tmp_path / "fake_cuda.c"
    source.write_text(FAKE_DRIVER.replace("NO_DEVICE", "100" if no_device else "0"))
    library = tmp_path / f"libfake_cuda_{int(no_device)}.so"
    subprocess.run([*shlex.split(compiler.compiler()), "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return str(library)


def test_probe_cuda_target_asks_the_driver(tmp_path, monkeypatch):
    monkeypatch.setattr(target_module, "CUDA_DRIVER", fake_driver(tmp_path, no_device=False))
    gpu = probe_cuda_target()
    assert gpu == Target("cuda", "Fake GPU", isa="", vector_bytes=0, vector_registers=0, compute_capability=(8, 9),
                         warp_size=32, max_threads_per_block=1024, shared_bytes=101376, registers_per_block=65536,
                         sm_count=7)
    assert probe_cuda_target(device=1) is None
    monkeypatch.setattr(target_module, "CUDA_DRIVER", fake_driver(tmp_path, no_device=True))
    assert probe_cuda_target() is None


def test_probe_cuda_target_here():
    """None on a machine without a CUDA driver (this one, in CI); a consistent GPU elsewhere."""
    gpu = probe_cuda_target()
    try:
        ctypes.CDLL(target_module.CUDA_DRIVER)
        has_driver = True
    except OSError:
        has_driver = False
    if not has_driver:
        assert gpu is None
    elif gpu is not None:
        assert gpu.kind == "cuda" and gpu.warp_size == 32 and gpu.sm_count > 0 and gpu.compute_capability >= (3, 0)


# -- the command line ------------------------------------------------------------------------------

def test_cli_prints_the_target(capsys):
    assert main(["target"]) == 0
    out = capsys.readouterr().out
    target = host_target()
    assert out.startswith("cpu: ") and f"{'isa':<14}{target.isa}\n" in out
    assert f"{target.vector_registers} x {target.vector_bytes * 8}-bit" in out and f"{'cores':<14}{target.cores}\n" in out
    assert " ".join(target.flags) in out and target.compiler in out
    mr, nr = gemm.tile_shape(np.float32)
    assert f"{'matmul tile':<14}{mr} x {nr} float32" in out and "GPU" in out
    assert f"lines of {target.line_bytes} bytes" in out
    assert f"{lane_count(target)} lanes per float reduction" in out
    assert (f"{'threads':<14}parallel loops from {work.PARALLEL_MIN_WORK} units of work "
            "(measured: minicomp bench --parallel-threshold)\n") in out


def test_cli_prints_a_cuda_architecture(capsys):
    assert main(["target", "--cuda", "sm_80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cuda: A100 (sm_80)") and "108" in out and "163 KiB shared" in out
    assert main(["target", "--cuda", "sm_1"]) == 1
    assert "unknown CUDA architecture" in capsys.readouterr().err


def test_readme_lists_the_command():
    assert "minicomp target" in (REPO / "README.md").read_text()
