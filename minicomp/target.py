"""What the machine is: everything a schedule or a renderer may ask about the hardware.

Lowering never looks at the machine. Schedules (``minicomp.schedules``) and renderers
(``minicomp.codegen``) read one ``Target``::

    >>> target = host_target()
    >>> target.vector_bytes, target.cores        # e.g. (32, 2) on an AVX2 laptop
    >>> target.lanes(np.float32)                 # 8 float32 values per SIMD register

``host_target()`` probes the CPU once per process: the SIMD width the C compiler really uses
with minicomp's flags (``cc -dM -E``: the macros of the ISA it targets, remembered on disk by
the compile cache), the cores, the cache sizes. A ``Target`` is plain data, so a test or a
tutorial can make one by hand (``replace(host_target(), vector_bytes=16)``) to see what a
narrower machine would get.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Target:
    """A machine to generate code for.

    ``kind`` is ``"cpu"`` (C through gcc) or ``"cuda"``. For a CPU: ``isa`` names the widest
    vector extension the compiler uses (``avx512``, ``avx2``, ``sse``), ``vector_bytes`` its
    register width, ``vector_registers`` how many there are, ``cores`` the threads a parallel
    loop may use, ``l1_bytes``/``l2_bytes`` the data caches per core. For a GPU:
    ``compute_capability``, ``warp_size``, ``shared_bytes`` and ``registers`` per block.
    """

    kind: str = "cpu"
    isa: str = "sse"
    vector_bytes: int = 16
    vector_registers: int = 16
    cores: int = 1
    l1_bytes: int = 32 << 10
    l2_bytes: int = 1 << 20
    compute_capability: tuple[int, int] | None = None
    warp_size: int = 32
    shared_bytes: int = 48 << 10
    registers: int = 65536

    def lanes(self, dtype) -> int:
        """Values of ``dtype`` in one vector register (8 float32 with 256-bit vectors)."""
        return self.vector_bytes // np.dtype(dtype).itemsize

    def __str__(self) -> str:
        if self.kind == "cuda":
            major, minor = self.compute_capability or (0, 0)
            return f"cuda sm_{major}{minor}: warp {self.warp_size}, {self.shared_bytes >> 10} KiB shared per block"
        return (f"cpu {self.isa}: {self.vector_bytes * 8}-bit vectors x {self.vector_registers}, "
                f"{self.cores} cores, L1 {self.l1_bytes >> 10} KiB, L2 {self.l2_bytes >> 10} KiB")


def host_target() -> Target:
    """The CPU this process runs on, as the C compiler with minicomp's flags (``MINICOMP_CFLAGS``
    as it is now) targets it."""
    from .runtime.compiler import cflags

    return _probe_cpu(tuple(f for f in cflags() if f.startswith(("-m", "-O"))))


@functools.lru_cache(maxsize=8)
def _probe_cpu(flags: tuple[str, ...]) -> Target:
    """The CPU target the compiler selects with ``flags`` (probed once per set of flags)."""
    from .runtime.compiler import target_macros

    macros = target_macros(flags)
    if "__AVX512F__" in macros:
        isa, width, registers = "avx512", 64, 32
    elif "__AVX__" in macros:
        isa, width, registers = "avx2" if "__AVX2__" in macros else "avx", 32, 16
    else:
        isa, width, registers = "sse", 16, 16
    return Target("cpu", isa, width, registers, cores=os.cpu_count() or 1)
