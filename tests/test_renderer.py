"""The renderer is parametric in its language: a dialect is a subclass that overrides hooks.

``codegen/cstyle.py``'s ``CStyleRenderer`` renders kernels and the host entry point for any
C-family language; ``codegen/c.py``'s ``CRenderer`` sets C's spellings. Here two small
dialects of C, each overriding hooks only, compile, run and match NumPy, and their text shows
that the hooks were used: one that spells loops without OpenMP, one whose host entry point
counts the kernels it runs. The plain ``CStyleRenderer`` spells no pragma and no attribute.
"""

from __future__ import annotations

import cffi
import numpy as np

import minicomp
from minicomp import TensorType
from minicomp.codegen.c import CRenderer, render_c
from minicomp.codegen.cstyle import CStyleRenderer
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.compiler import compile_c
from minicomp.runtime.executable import Executable
from minicomp.stages import loop_program
from minicomp.testing import assert_close


def linear_softmax(x, w, b):
    """Kernels of three kinds: a matmul (micro-kernel intrinsics), an elementwise epilogue and a
    row softmax (parallel rows)."""
    y = np.tanh(x @ w + b)
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


SHAPES = [(512, 70), (70, 300), (300,)]  # rows enough for parallel loops; no multiples of a vector


def program():
    graph = minicomp.trace(linear_softmax, *[TensorType(s, "f32") for s in SHAPES])
    return loop_program(run_pipeline(graph)[0])


def inputs(rng):
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


class NoOpenMPRenderer(CRenderer):
    """C without OpenMP: a parallel loop runs serially under a comment, vectorised loops are
    GCC's ``ivdep`` loops. The kernels then need no ``mc_serial``: no loop asked for it."""

    def parallel_loop_prefix(self, loop):
        return ["/* parallel loop, run serially */"]

    def vectorized_loop_prefix(self, loop):
        return ["#pragma GCC ivdep"]


class CountingRenderer(CRenderer):
    """C whose host entry point counts the kernels it runs, in a global the test reads."""

    def prelude(self):
        return super().prelude() + "\nint mc_kernels_run = 0;\n"

    def kernel_call(self, k, args):
        return ["mc_kernels_run += 1;"] + super().kernel_call(k, args)


def test_a_dialect_without_openmp_compiles_runs_and_matches_numpy(rng):
    p = program()
    source = NoOpenMPRenderer().program(p)
    assert "#pragma omp parallel" in render_c(p) and "#pragma omp simd" in render_c(p)
    assert "#pragma omp" not in source
    assert "/* parallel loop, run serially */" in source and "#pragma GCC ivdep" in source
    assert "mc_serial" not in source  # no parallel loop asked for the flag: no parameter, no binding
    args = inputs(rng)
    assert_close(Executable(p, source)(*args)[0], linear_softmax(*args), rtol=1e-5, atol=1e-6)


def test_a_dialect_with_its_own_host_entry_runs_every_kernel_once_per_call(rng):
    p = program()
    source = CountingRenderer().program(p)
    assert source.count("mc_kernels_run += 1;") == len(p.kernels) >= 2
    path = compile_c(source, "counting")
    ffi = cffi.FFI()
    ffi.cdef("int minicomp_entry(void **args); extern int mc_kernels_run;")
    lib = ffi.dlopen(str(path), ffi.RTLD_NOW | ffi.RTLD_NODELETE)  # NODELETE: see load_library
    executable = Executable(p, source, loaded=(path, ffi, lib))
    for call in range(1, 3):
        args = inputs(rng)
        assert_close(executable(*args)[0], linear_softmax(*args), rtol=1e-5, atol=1e-6)
        assert lib.mc_kernels_run == call * len(p.kernels)


def test_the_plain_c_family_renderer_spells_none_of_cs_extras():
    """Without C's hooks: the same loops and statements, no pragma, no attribute, libm names."""
    p = program()
    kernel = next(k for k in p.kernels if "parallel" in str(k) and "exp" in str(k))
    c_text, plain_text = CRenderer().kernel(kernel), CStyleRenderer().kernel(kernel)
    assert "#pragma" in c_text and "__attribute__" in c_text and "mc_serial" in c_text and "mc_vexp_f32(" in c_text
    for extra in ("#pragma", "__attribute__", "mc_serial", "mc_vexp_f32"):
        assert extra not in plain_text
    assert " exp(" in plain_text or "(exp(" in plain_text
    assert any(line.startswith("static void k_") for line in plain_text.splitlines())
    c_lines = [line for line in c_text.splitlines() if not line.lstrip().startswith("#pragma")]
    assert len(plain_text.splitlines()) == len(c_lines)  # one line per statement in both
