"""The register-blocked matmul micro-kernel: the one routine minicomp writes by hand.

Every fast matmul on a CPU (OpenBLAS, BLIS, oneDNN, TVM's tensorized schedules) ends in the
same inner routine: keep an ``MR x NR`` tile of C in vector registers, and for each step ``k``
of the reduction load ``NR`` values of B (a few vectors), broadcast each of the ``MR`` values
of A in turn and do one fused multiply-add per vector::

    for k in 0..kc:                      # acc: MR x (NR / VL) vector registers
        b[0..NV] = Bpanel[k, 0..NR]      # NV vector loads
        for r in 0..MR:                  # MR broadcasts, MR*NV FMAs
            acc[r][:] += A[r, k] * b[:]
    C[0..MR, 0..NR] (+)= acc

With AVX-512 (16 floats per register) a 6 x 64 tile uses 24 of the 32 registers for C, 4 for
B and one for the broadcast: 24 FMAs for every 4 loads, so the loop runs at the FMA units'
speed. B must be *packed* first (``schedules/cpu/packed_gemm.py``): in panels of ``NR`` columns
stored k-major, so its stream is contiguous. A is read as ``MR`` rows with a row stride
``lda``: BLIS packs A k-major too, but a broadcast costs the same from ``MR`` rows (the
addresses are ``row + k``, one register each), and A in rows can be packed with contiguous
copies, or not packed at all (attention's P tile is read where softmax wrote it).

The code is written with GCC's vector extensions (``vector_size``), not intrinsics, so the
same source compiles to AVX-512, AVX2 or SSE. Everything machine-specific comes from one
``Target`` (``minicomp.target``; default: ``host_target()``, this CPU as ``-march=native`` or
``MINICOMP_CFLAGS`` targets it): the vector width is its *register* width, ``vector_bytes``
(explicit vector types get the full width even where the compiler's tuning prefers narrower
vectors for the loops it vectorises itself), and ``NR`` follows from it and the register count.
The schedule that chooses the tile and the renderer that writes the micro-kernel's C must read
the same target: ``source(name, target)`` refuses a tile that target's vectors do not divide.
"""

from __future__ import annotations

import re

import numpy as np

from ..ir import intrinsics
from ..target import Target, host_target

MR = 6  # rows of C per micro-kernel call: 6 x NV accumulators fit the register file

_C_TYPES = {np.dtype(np.float32): ("float", "f32"), np.dtype(np.float64): ("double", "f64")}


def vector_bytes(target: Target | None = None) -> int:
    """Width of the SIMD registers of ``target`` (default: this machine) in bytes (16/32/64)."""
    return (target or host_target()).vector_bytes


def vectors_per_row(target: Target | None = None) -> int:
    """NV: vectors of C per micro-kernel row (4 with 32 registers, 2 with 16)."""
    return 4 if (target or host_target()).vector_registers >= 32 else 2


def tile_shape(dtype, target: Target | None = None) -> tuple[int, int]:
    """``(MR, NR)`` of the micro-kernel for ``dtype`` on ``target`` (default: this machine)."""
    target = target or host_target()
    return MR, target.lanes(dtype) * vectors_per_row(target)


def supported(dtype) -> bool:
    """Whether a micro-kernel exists for accumulating in ``dtype`` (float32 and float64)."""
    return np.dtype(dtype) in _C_TYPES


def kernel_name(dtype, target: Target | None = None) -> str:
    """``mc_gemm_6x64_f32``: the micro-kernel for ``dtype``'s tile on ``target``."""
    mr, nr = tile_shape(dtype, target)
    return f"mc_gemm_{mr}x{nr}_{_C_TYPES[np.dtype(dtype)][1]}"


_NAME = re.compile(r"mc_gemm_(\d+)x(\d+)_(f32|f64)$")

_TYPES = """\
typedef {ctype} mc_vec_{s} __attribute__((vector_size({vbytes})));
typedef {ctype} mc_vec_{s}_u __attribute__((vector_size({vbytes}), aligned(sizeof({ctype}))));
"""

_TEMPLATE = """\
/* C[0:{mr}, 0:{nr}] (+)= A[0:{mr}, 0:kc] . Bpanel[0:kc, 0:{nr}], A row stride lda, C row stride ldc.
   {mr}x{nv} accumulators of {lanes} {ctype}s stay in registers for the whole k loop. */
static inline void {name}(int64_t kc, const {ctype} *restrict ap, int64_t lda, const {ctype} *restrict bp,
                          {ctype} *restrict c, int64_t ldc, int accumulate) {{
  mc_vec_{s} acc[{mr}][{nv}];
  #pragma GCC unroll {mr}
  for (int r = 0; r < {mr}; ++r)
    #pragma GCC unroll {nv}
    for (int v = 0; v < {nv}; ++v) acc[r][v] = (mc_vec_{s}){{0}};
  for (int64_t k = 0; k < kc; ++k) {{
    mc_vec_{s} b[{nv}];
    #pragma GCC unroll {nv}
    for (int v = 0; v < {nv}; ++v) b[v] = *(const mc_vec_{s}_u *)(bp + k * {nr} + v * {lanes});
    #pragma GCC unroll {mr}
    for (int r = 0; r < {mr}; ++r) {{
      {ctype} a = ap[r * lda + k];
      #pragma GCC unroll {nv}
      for (int v = 0; v < {nv}; ++v) acc[r][v] += a * b[v];
    }}
  }}
  #pragma GCC unroll {mr}
  for (int r = 0; r < {mr}; ++r)
    #pragma GCC unroll {nv}
    for (int v = 0; v < {nv}; ++v) {{
      mc_vec_{s}_u *out = (mc_vec_{s}_u *)(c + r * ldc + v * {lanes});
      *out = accumulate ? *out + acc[r][v] : acc[r][v];
    }}
}}
"""


def source(name: str, target: Target | None = None) -> str:
    """The C definition of micro-kernel ``name`` (as made by ``kernel_name``) in ``target``'s
    vectors (default: this machine's), to follow ``types_source(suffix, target)``.

    Raises ValueError for a name that is not a micro-kernel's, or whose ``NR`` is not a whole
    number of ``target``'s vectors (a tile chosen for another target).
    """
    match = _NAME.match(name)
    if match is None:
        raise ValueError(f"not a micro-kernel name: {name}")
    mr, nr, suffix = int(match[1]), int(match[2]), match[3]
    ctype = "float" if suffix == "f32" else "double"
    lanes = (target or host_target()).lanes(ctype_dtype(suffix))
    if lanes == 0 or nr % lanes:
        raise ValueError(f"{name}: {nr} columns are not a whole number of vectors of {lanes} {ctype}s; "
                         "the tile was chosen for another target than the one rendering it")
    return _TEMPLATE.format(mr=mr, nr=nr, nv=nr // lanes, lanes=lanes, ctype=ctype, s=suffix, name=name)


def types_source(suffix: str, target: Target | None = None) -> str:
    """The vector typedefs the micro-kernels of one dtype (``f32``/``f64``) share, in
    ``target``'s register width (default: this machine's)."""
    ctype = "float" if suffix == "f32" else "double"
    return _TYPES.format(ctype=ctype, s=suffix, vbytes=vector_bytes(target))


def ctype_dtype(suffix: str) -> np.dtype:
    """The NumPy dtype of a micro-kernel dtype suffix: ``f32`` -> float32, ``f64`` -> float64."""
    return np.dtype(np.float32 if suffix == "f32" else np.float64)


def dtype_suffix(name: str) -> str:
    """``f32`` or ``f64``: the dtype suffix of micro-kernel ``name``."""
    return _NAME.match(name)[3]


def is_micro_kernel(name: str) -> bool:
    """Whether ``name`` is a micro-kernel this module defines."""
    return _NAME.match(name) is not None


# The micro-kernel's C, registered with its reference meaning (``minicomp.ir.intrinsics``): the
# renderer emits it from there, the loop interpreter runs the meaning.
intrinsics.implement("mc_gemm", "c", source, lambda name: types_source(dtype_suffix(name)))
