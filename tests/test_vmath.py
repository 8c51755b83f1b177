"""The vectorisable float32 transcendentals of minicomp.codegen.vmath (issue 5).

Each function is compiled (through the compile cache, with the usual flags) into a small
library whose ``minicomp_entry`` applies it over an array, swept over a dense grid of float32
values of every magnitude plus specials, and compared with NumPy's float64 result rounded to
float32: within 2 ulp (an ulp of a denormal result is the denormal spacing), specials exact.
A second check asks gcc itself whether the loop was vectorised (``-fopt-info-vec-optimized``)
with minicomp's flags for an AVX2 target (``-march=haswell``), an AVX-512 one
(``skylake-avx512``) and this machine's (``native``): compiling for them needs no such CPU.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess

import numpy as np
import pytest

from minicomp.codegen import vmath
from minicomp.runtime.compiler import build_flags, compile_c, compiler, load_library

ENTRY = """
int minicomp_entry(void **args) {
    const float *restrict in = (const float *)args[0];
    float *restrict out = (float *)args[1];
    int64_t n = *(const int64_t *)args[2];
    for (int64_t i = 0; i < n; i++) out[i] = FN(in[i]);
    return 0;
}
"""


def _library(fn: str):
    source = vmath.source() + ENTRY.replace("FN", fn)
    return load_library(compile_c(source, name=f"vmath_{fn}"))


def apply(fn: str, x: np.ndarray) -> np.ndarray:
    """Run the C function ``fn`` over the float32 array ``x``."""
    ffi, lib = _library(fn)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    n = np.array([x.size], dtype=np.int64)
    args = ffi.new("void *[3]", [ffi.from_buffer(x), ffi.from_buffer(out), ffi.from_buffer(n)])
    assert lib.minicomp_entry(args) == 0
    return out


def _erf64(x):
    return np.frompyfunc(math.erf, 1, 1)(x).astype(np.float64)


def _log64(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _sigmoid64(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


REFERENCES = {
    "mc_vexp_f32": np.exp,
    "mc_vtanh_f32": np.tanh,
    "mc_vsigmoid_f32": _sigmoid64,
    "mc_verf_f32": _erf64,
    "mc_vlog_f32": _log64,
}

# the domain where each function's value changes; the log grid covers all magnitudes anyway
DENSE = {
    "mc_vexp_f32": (-105.0, 90.0),
    "mc_vtanh_f32": (-10.0, 10.0),
    "mc_vsigmoid_f32": (-105.0, 20.0),
    "mc_verf_f32": (-4.5, 4.5),
    "mc_vlog_f32": (0.0, 4.0),
}

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype=np.float32)


def grid(fn: str) -> np.ndarray:
    """~1.5M float32 values: log-spaced over every magnitude (both signs), dense linear
    over ``DENSE[fn]``, every float32 near 0, 1 and the overflow/underflow thresholds."""
    tiny = np.float32(1.4e-45)
    mags = np.geomspace(tiny, np.finfo(np.float32).max, 500_000).astype(np.float32)
    lo, hi = DENSE[fn]
    lin = np.linspace(lo, hi, 500_000, dtype=np.float32)
    near = []
    for centre in (0.0, 1.0, -1.0, 88.72, -87.33, -103.28, 0.625, -0.625, 0.875, -0.875, 3.92):
        c = np.float32(centre).view(np.int32)
        ints = np.arange(-2000, 2000, dtype=np.int64) + int(c)
        near.append(ints.astype(np.int32).view(np.float32))
    denormals = (np.arange(1, 2**23, 97, dtype=np.int32)).view(np.float32)
    x = np.concatenate([mags, -mags, lin, *near, denormals, -denormals, SPECIALS])
    return x


def _ordered(a: np.ndarray) -> np.ndarray:
    i = a.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Distance in float32 steps between finite values (denormal steps count as ulps)."""
    return np.abs(_ordered(actual) - _ordered(expected))


def measure(fn: str):
    x = grid(fn)
    with np.errstate(all="ignore"):
        expected = REFERENCES[fn](x.astype(np.float64)).astype(np.float32)
    actual = apply(fn, x)
    return x, actual, expected


@pytest.mark.parametrize("fn", list(REFERENCES))
def test_accuracy(fn):
    x, actual, expected = measure(fn)
    special = ~np.isfinite(expected) | ~np.isfinite(x) | (x == 0)
    # specials exactly: same NaN-ness, same infinities, same signed zeros
    assert np.array_equal(np.isnan(actual), np.isnan(expected)), x[np.isnan(actual) != np.isnan(expected)][:10]
    s = special & ~np.isnan(expected)
    assert np.array_equal(actual[s].view(np.int32), expected[s].view(np.int32)), (
        x[s][actual[s].view(np.int32) != expected[s].view(np.int32)][:10])
    finite = np.isfinite(expected) & ~special
    assert np.isfinite(actual[finite]).all()
    err = ulp_error(actual[finite], expected[finite])
    worst = int(np.argmax(err))
    assert err.max() <= 2, (
        f"{fn}: {err.max()} ulp at x={x[finite][worst]!r}: {actual[finite][worst]!r} "
        f"vs {expected[finite][worst]!r}")


def test_source_is_self_contained_and_listed():
    assert set(vmath.ALL_F32) == set(REFERENCES)
    for name in REFERENCES:
        assert f"static inline float {name}(float x)" in vmath.source()


@pytest.mark.parametrize("march", ["native", "haswell", "skylake-avx512"])
@pytest.mark.parametrize("fn", list(REFERENCES))
def test_gcc_vectorises(fn, march, tmp_path):
    """gcc -O3 (minicomp's flags: no -ffast-math, no -fno-trapping-math) vectorises the loop
    for AVX2 and AVX-512 targets alike."""
    source = vmath.source() + ENTRY.replace("FN", fn)
    path = tmp_path / "loop.c"
    path.write_text(source)
    # minicomp's flags for that target, whatever MINICOMP_CFLAGS says in this environment
    flags = [f for f in build_flags(["-O3", f"-march={march}", "-fopenmp"]) if f not in ("-shared", "-fPIC")]
    result = subprocess.run(
        [*shlex.split(compiler()), *flags, "-c", "-fopt-info-vec-optimized", "-o",
         str(tmp_path / "loop.o"), str(path)],
        capture_output=True, text=True, check=True)
    report = result.stdout + result.stderr
    loop_line = source.splitlines().index(
        next(l for l in source.splitlines() if "out[i] = " in l)) + 1
    assert re.search(rf"loop\.c:{loop_line}:\d+: optimized: loop vectorized", report), report
