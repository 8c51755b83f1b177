"""What the machine is: everything a schedule or a renderer may ask about the hardware.

Lowering never looks at the machine. Schedules (``minicomp.schedules``) and renderers
(``minicomp.codegen``) read one ``Target``::

    >>> target = host_target()
    >>> target.vector_bytes, target.cores        # e.g. (32, 2) on an AVX2 laptop
    >>> target.lanes(np.float32)                 # 8 float32 values per SIMD register
    >>> print(target)                            # or, from a shell: minicomp target
    cpu AMD EPYC 7B13, avx2: 256-bit registers x 16, loops vectorised at 256 bits, 2 cores, ...

``host_target()`` probes the CPU once per process for each set of compiler flags (the
compiler's answers are remembered on disk by the compile cache, ``compiler.probe``):

* the ISA and its **register width** from the macros the compiler predefines (``cc -dM -E``:
  ``__AVX512F__``, ``__AVX2__`` ...). The micro-kernel (``codegen/gemm.py``) declares its
  vectors with GCC's ``vector_size``, so it always gets this width;
* the width **auto-vectorised loops** get, which can be narrower: GCC's tuning for most Intel
  AVX-512 CPUs (Skylake-SP to Sapphire Rapids) prefers 256-bit vectors for the loops it
  vectorises by itself, unless told ``-mprefer-vector-width=512``. So the probe compiles a
  plain loop with the real flags to assembly and reads the widest packed instruction;
* the cores this process may run on, the data caches of core 0 and their line size (Linux
  sysfs, else ``sysconf``, else typical sizes).

A ``Target`` is plain data, so a test or a tutorial can make one by hand
(``Target(vector_bytes=16, vector_registers=16)``, an SSE machine) to see what another machine
would get. ``cuda_target("sm_90")`` describes a GPU from a table of known architectures;
``probe_cuda_target()`` asks the CUDA driver about the GPU that is here, if any.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import UnsupportedError

KiB, MiB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Target:
    """A machine to generate code for.

    ``kind`` is ``"cpu"`` (C through the C compiler) or ``"cuda"``; ``name`` says which part.

    For a CPU: ``isa`` names the widest vector extension the compiler targets (``avx512``,
    ``avx2``, ``avx``, ``sse``, ``neon``); ``vector_bytes`` its register width, which code
    written with explicit vector types (the micro-kernel) uses; ``loop_vector_bytes`` the width
    the compiler's auto-vectoriser gives plain loops (narrower where its tuning prefers: 32 on
    most Intel AVX-512 CPUs; 0 when the flags do not vectorise; None when made by hand: the
    register width); ``vector_registers`` how many registers there are; ``cores`` the threads
    a parallel loop may use; ``l1_bytes``/``l2_bytes`` the data caches of one core,
    ``l3_bytes`` the last-level cache core 0 shares (0: none known); ``line_bytes`` their line
    size (the unit memory moves in: 64 on x86, 128 on Apple's cores); ``compiler`` and
    ``flags`` the compiler and flags probed (empty for a hand-made target).

    For a GPU: ``compute_capability`` (``(9, 0)`` for sm_90), ``warp_size``,
    ``max_threads_per_block``, ``shared_bytes`` (the most shared memory one block can have,
    with the opt-in above the 48 KiB default), ``registers_per_block`` (32-bit), ``sm_count``.
    """

    kind: str = "cpu"
    name: str = ""
    isa: str = "sse"
    vector_bytes: int = 16
    loop_vector_bytes: int | None = None
    vector_registers: int = 16
    cores: int = 1
    l1_bytes: int = 32 * KiB
    l2_bytes: int = 256 * KiB
    l3_bytes: int = 0
    line_bytes: int = 64
    compiler: str = ""
    flags: tuple[str, ...] = ()
    compute_capability: tuple[int, int] | None = None
    warp_size: int = 32
    max_threads_per_block: int = 1024
    shared_bytes: int = 48 * KiB
    registers_per_block: int = 65536
    sm_count: int = 0

    def __post_init__(self):
        if self.loop_vector_bytes is None:
            object.__setattr__(self, "loop_vector_bytes", self.vector_bytes)

    def lanes(self, dtype) -> int:
        """Values of ``dtype`` in one vector register (8 float32 with 256-bit vectors)."""
        return self.vector_bytes // np.dtype(dtype).itemsize

    def loop_lanes(self, dtype) -> int:
        """Values of ``dtype`` per vector in an auto-vectorised loop (1 when loops stay scalar)."""
        return max(1, self.loop_vector_bytes // np.dtype(dtype).itemsize)

    def __str__(self) -> str:
        if self.kind == "cuda":
            major, minor = self.compute_capability or (0, 0)
            return (f"cuda {self.name or 'GPU'} sm_{major}{minor}: {self.sm_count} SMs, warp {self.warp_size}, "
                    f"{self.max_threads_per_block} threads, {self.shared_bytes // KiB} KiB shared and "
                    f"{self.registers_per_block} registers per block")
        loops = f"loops vectorised at {self.loop_vector_bytes * 8} bits" if self.loop_vector_bytes else "loops not vectorised"
        caches = f"L1d {_size(self.l1_bytes)}, L2 {_size(self.l2_bytes)}" + (f", L3 {_size(self.l3_bytes)}" if self.l3_bytes else "")
        caches += f" ({self.line_bytes}-byte lines)"
        return (f"cpu {self.name + ', ' if self.name else ''}{self.isa}: {self.vector_bytes * 8}-bit registers x "
                f"{self.vector_registers}, {loops}, {self.cores} cores, {caches}")


def describe(target: Target) -> str:
    """``target`` one field a line, for people (``minicomp target``)::

        cpu: AMD EPYC 7B13
          isa           avx2
          registers     16 x 256-bit (8 float32; explicit vector types get this width: ...)
          loops         auto-vectorised at 256 bits (8 float32 per vector)
          cores         2
          caches        L1d 32 KiB, L2 512 KiB, L3 32 MiB (core 0), lines of 64 bytes
          ...
    """
    if target.kind == "cuda":
        major, minor = target.compute_capability or (0, 0)
        rows = [("SMs", target.sm_count), ("warp", f"{target.warp_size} threads"),
                ("block", f"at most {target.max_threads_per_block} threads, {_size(target.shared_bytes)} shared "
                          f"memory, {target.registers_per_block} registers")]
        return "\n".join([f"cuda: {target.name or 'GPU'} (sm_{major}{minor})"] + [f"  {k:<14}{v}" for k, v in rows])
    loops = (f"auto-vectorised at {target.loop_vector_bytes * 8} bits ({target.loop_lanes(np.float32)} float32 "
             f"per vector)" if target.loop_vector_bytes else "not auto-vectorised with these flags")
    caches = ", ".join(f"{name} {_size(size)}" for name, size in
                       [("L1d", target.l1_bytes), ("L2", target.l2_bytes), ("L3", target.l3_bytes)] if size)
    rows = [("isa", target.isa),
            ("registers", f"{target.vector_registers} x {target.vector_bytes * 8}-bit ({target.lanes(np.float32)} "
                          "float32; explicit vector types get this width: the matmul micro-kernel)"),
            ("loops", loops), ("cores", target.cores),
            ("caches", f"{caches} (core 0), lines of {target.line_bytes} bytes"),
            ("compiler", target.compiler or "-"), ("flags", " ".join(target.flags) or "-")]
    return "\n".join([f"cpu: {target.name or 'unknown processor'}"] + [f"  {k:<14}{v}" for k, v in rows])


def _size(nbytes: int) -> str:
    """``32 KiB``, ``32 MiB``: a cache size as people write it."""
    return f"{nbytes // MiB} MiB" if nbytes >= MiB and nbytes % MiB == 0 else f"{nbytes // KiB} KiB"


# -- the CPU -----------------------------------------------------------------------------------------

def host_target() -> Target:
    """The CPU this process runs on, as the C compiler with minicomp's flags (``cflags()``:
    ``MINICOMP_CFLAGS`` as it is now) targets it. Probed once per process per set of flags."""
    from .runtime.compiler import cflags

    return cpu_target(tuple(cflags()))


@functools.lru_cache(maxsize=8)
def cpu_target(flags: tuple[str, ...]) -> Target:
    """This CPU as the C compiler targets it with all of ``flags`` (a build's, as
    ``compiler.build_flags`` makes them): ``cpu_target(tuple(build_flags(["-O3",
    "-march=skylake-avx512"])))`` -> avx512, 512-bit registers, loops vectorised at 256 bits.
    Needs no such CPU: nothing is run."""
    from .runtime.compiler import compiler, compiler_version, target_macros

    isa, width, registers = vector_unit(target_macros(flags))
    return Target("cpu", cpu_name(), isa=isa, vector_bytes=width, loop_vector_bytes=loop_vector_width(flags),
                  vector_registers=registers, cores=available_cores(), **cache_sizes(),
                  line_bytes=cache_line_bytes(), compiler=compiler_version(compiler()), flags=flags)


def vector_unit(macros: str) -> tuple[str, int, int]:
    """``(isa, register bytes, register count)`` of the target whose predefined macros
    (``cc -dM -E``) are ``macros``.

        "#define __AVX2__ 1 ..."  ->  ("avx2", 32, 16)
    """
    defined = set(re.findall(r"#define (\w+)", macros))
    if "__AVX512F__" in defined:
        return "avx512", 64, 32
    if "__AVX__" in defined:
        return ("avx2" if "__AVX2__" in defined else "avx"), 32, 16
    if "__ARM_NEON" in defined:
        return "neon", 16, 32
    return "sse", 16, 16


# A loop the auto-vectoriser always takes where it can (unit stride, no aliasing, no
# reduction); its trip count is unknown, as in most of minicomp's kernels.
PROBE_LOOP = "void mc_probe(float *restrict a, const float *restrict b, long n) " \
             "{ for (long i = 0; i < n; i++) a[i] += 2.0f * b[i]; }"
_PACKED_X86 = re.compile(r"^\s*v?(?:mul|add|fmadd\w*)ps\s.*%([xyz])mm", re.M)  # vmulps %ymm1, ...
_PACKED_ARM = re.compile(r"^\s*f(?:mul|add|mla)\s+v\d+\.4s", re.M)              # fmla v0.4s, ...
_REGISTER_BYTES = {"x": 16, "y": 32, "z": 64}


def loop_vector_width(flags: tuple[str, ...]) -> int:
    """Bytes per vector of the loops the C compiler vectorises by itself under ``flags``: the
    widest packed float arithmetic in its assembly of ``PROBE_LOOP`` (0: none, the loop stays
    scalar). Remembered on disk (``compiler.probe``)."""
    from .runtime.compiler import probe_assembly

    return packed_width(probe_assembly(PROBE_LOOP, flags))


def packed_width(asm: str) -> int:
    """Bytes of the widest packed float add, multiply or FMA in ``asm`` (x86 or Arm), 0 if none.

        "vfmadd231ps %ymm1, %ymm2, %ymm0"  ->  32        "vaddss %xmm1, %xmm0, %xmm0"  ->  0
    """
    widths = [_REGISTER_BYTES[register] for register in _PACKED_X86.findall(asm)]
    widths += [16] * bool(_PACKED_ARM.search(asm))
    return max(widths, default=0)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask: what OpenMP starts threads on)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or "" where it is not known."""
    from .runtime.compiler import cpu_identity

    for line in cpu_identity().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return ""


CACHE_DIRECTORY = Path("/sys/devices/system/cpu/cpu0/cache")
TYPICAL_CACHES = {1: 32 * KiB, 2: 256 * KiB, 3: 0}  # when the machine does not say
_SYSCONF_CACHES = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE", 3: "SC_LEVEL3_CACHE_SIZE"}


def cache_sizes(directory: Path = CACHE_DIRECTORY) -> dict[str, int]:
    """``{"l1_bytes", "l2_bytes", "l3_bytes"}``: core 0's data (or unified) cache of each level,
    from Linux's ``index*/{level,type,size}`` files in ``directory``; a level they do not give
    comes from ``sysconf`` (glibc), else ``TYPICAL_CACHES``."""
    sizes: dict[int, int] = {}
    for index in sorted(directory.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified"):
            sizes.setdefault(level, size)
    for level, name in _SYSCONF_CACHES.items():
        if level not in sizes:
            sizes[level] = _sysconf(name) or TYPICAL_CACHES[level]
    return {f"l{level}_bytes": sizes[level] for level in (1, 2, 3)}


TYPICAL_LINE_BYTES = 64  # x86 and most Arm cores, when the machine does not say


def cache_line_bytes(directory: Path = CACHE_DIRECTORY) -> int:
    """Bytes per line of core 0's level-1 data cache: Linux's ``index*/coherency_line_size``
    in ``directory`` (``64``), else ``TYPICAL_LINE_BYTES``."""
    for index in sorted(directory.glob("index*")):
        try:
            if int((index / "level").read_text()) == 1 and (index / "type").read_text().strip() == "Data":
                size = int((index / "coherency_line_size").read_text())
                if size > 0:
                    return size
        except (OSError, ValueError):
            continue
    return TYPICAL_LINE_BYTES


def parse_size(text: str) -> int:
    """Bytes of a sysfs size: ``"32K"`` -> 32768, ``"1M"`` -> 1048576, ``"512"`` -> 512."""
    text = text.strip()
    scale = {"K": KiB, "M": MiB, "G": 1 << 30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def _sysconf(name: str) -> int:
    """``os.sysconf(name)``, 0 where the system does not know it."""
    try:
        return max(0, os.sysconf(name))
    except (ValueError, OSError):
        return 0


# -- CUDA GPUs -----------------------------------------------------------------------------------------

#: sm_XY -> (a typical part, SM count, most shared memory per block with the opt-in)
CUDA_ARCHITECTURES = {
    "sm_70": ("Tesla V100", 80, 96 * KiB),
    "sm_75": ("Tesla T4", 40, 64 * KiB),
    "sm_80": ("A100", 108, 163 * KiB),
    "sm_86": ("A10", 72, 99 * KiB),
    "sm_89": ("L40S", 142, 99 * KiB),
    "sm_90": ("H100 / H200", 132, 227 * KiB),
}


def cuda_target(arch: str = "sm_90") -> Target:
    """A CUDA target for architecture ``arch`` (``CUDA_ARCHITECTURES``), as its typical part has it:
    warps of 32, 1024 threads and 65536 registers per block. ``UnsupportedError`` for another.

        cuda_target("sm_90")  ->  cuda H100 / H200 sm_90: 132 SMs, ..., 227 KiB shared ...
    """
    if arch not in CUDA_ARCHITECTURES:
        raise UnsupportedError(f"unknown CUDA architecture {arch!r}; known: {', '.join(CUDA_ARCHITECTURES)}")
    name, sms, shared = CUDA_ARCHITECTURES[arch]
    major, minor = int(arch[3:-1]), int(arch[-1])
    return Target("cuda", name, isa="", vector_bytes=0, vector_registers=0, compute_capability=(major, minor),
                  shared_bytes=shared, sm_count=sms)


# CUdevice_attribute values (cuda.h)
_CUDA_ATTRIBUTES = {"max_threads_per_block": 1, "warp_size": 10, "registers_per_block": 12, "sm_count": 16,
                    "major": 75, "minor": 76, "shared_bytes": 97}  # 97: ..._MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
CUDA_DRIVER = "libcuda.so.1"


def probe_cuda_target(device: int = 0) -> Target | None:
    """The CUDA GPU number ``device`` of this machine, as its driver (``libcuda``, through ctypes:
    no Python package needed) describes it; None when there is no driver or no such GPU."""
    try:
        cuda = ctypes.CDLL(CUDA_DRIVER)
    except OSError:
        return None
    handle, value, name = ctypes.c_int(), ctypes.c_int(), ctypes.create_string_buffer(256)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        return None
    attributes = {}
    for field, attribute in _CUDA_ATTRIBUTES.items():
        if cuda.cuDeviceGetAttribute(ctypes.byref(value), attribute, handle) != 0:
            return None
        attributes[field] = value.value
    cuda.cuDeviceGetName(name, len(name), handle)
    capability = (attributes.pop("major"), attributes.pop("minor"))
    return replace(cuda_target(), name=name.value.decode(errors="replace"), compute_capability=capability,
                   **attributes)
