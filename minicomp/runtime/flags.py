"""The C compiler's flags: which ones every build gets, and why each one is there.

``compiler.cflags()`` puts them together for a build::

    REQUIRED_FLAGS + DEFAULT_OPT_FLAGS (or $MINICOMP_CFLAGS) + workarounds(target) [+ SANITIZE_FLAGS]

``REQUIRED_FLAGS`` give the generated code its meaning and are always used, whatever
``MINICOMP_CFLAGS`` says:

* ``-fwrapv``: signed integer overflow wraps, as in NumPy.
* ``-fno-math-errno``: math functions need not set ``errno`` (minicomp never reads it), so
  ``sqrt`` is one instruction and loops calling it vectorise.

Not ``-fno-trapping-math``, although without it GCC never executes floating-point arithmetic
that a branch skips (it might raise an exception flag), so a select between two computed
values keeps a loop scalar on CPUs without AVX-512's masked arithmetic. GCC's documentation
says the flag assumes no operation traps; it does not promise unchanged values, and GCC 12.2
changes one: under it ``(float)(int)x`` becomes ``truncf(x)``, which is -0.0 where the
conversion gives +0.0 (x in (-1, 0)), so ``x.astype(np.int64).astype(np.float64)`` returned
-0.0 for -0.5 (reproducer ``fno_trapping_math_signed_zero.c``). ``vmath.py`` selects with bit
operations instead, so exp, tanh, erf, log and sigmoid vectorise with AVX2 as with AVX-512.

``DEFAULT_OPT_FLAGS`` (``-O3 -march=native -fopenmp``) can be replaced with the environment
variable ``MINICOMP_CFLAGS``; ``MINICOMP_SANITIZE=1`` adds ``SANITIZE_FLAGS``.

Not ``-mprefer-vector-width``: the width of the loops GCC vectorises by itself is left to its
tuning for the target CPU, and recorded (``Target.loop_vector_bytes``, ``minicomp target``). On
most Intel AVX-512 CPUs that tuning picks 256-bit vectors (512-bit instructions lower the core's
clock on several of them); the micro-kernel does not depend on it, its explicit vector types
always get the register width. Measured on the development machine (AMD EPYC, AVX2, where GCC
picks 256 bits): with ``-mprefer-vector-width=128`` the loop-bound workloads lost, as NumPy's
multiple (``minicomp bench``, median of runs): ew_chain 3.6x -> 2.3x, softmax 2.4x -> 1.6x
(layernorm, and the matmul-bound workloads, within the noise). So narrower than the tuning is
slower there. ``MINICOMP_CFLAGS="-O3 -march=native -fopenmp -mprefer-vector-width=512"`` asks
for 512-bit loops on an AVX-512 CPU, and the ``Target`` follows; minicomp has not been measured
on one, so it does not ask by default.

Workarounds (``WORKAROUNDS``) are added where they apply. Each has a standalone C reproducer in
``tests/gcc_reproducers/`` and tests (``tests/test_compiler_flags.py``) that the reproducer is
right with minicomp's flags and, on the compiler known to be affected, wrong without the flag:

* ``--param=max-completely-peel-times=1`` with GCC (reproducer ``slp_masked_load.c``).

  The bug: GCC 12.2's loop vectoriser loads an SLP group of masked loads (the if-converted
  reads of a select, ``.MASK_LOAD``) under one mask. When the group needs more than one vector
  per iteration, every vector gets the mask of the first one (``vectorizable_load``), so the
  lanes of the others that the select wanted read 0. minicomp's code makes such a group in
  one way: GCC fully unrolls a short inner loop (the few columns of a concatenate or a
  ``where``) and vectorises the loop around it.

  Found by the random-graph tests in three disguises: ``out[i] = i < 3 ? x[i] : x[i - 3]``
  (a concatenate of 2 parts), ``x0 == x1 ? x0 : x2`` over [6, 3], and issue 10's
  concatenate of 3 parts of 2 columns (55 of 540 cases on an AVX-512 machine, every dtype;
  the 32- and 64-bit ones with AVX2, which has no masked 8- or 16-bit loads). minicomp's
  earlier flags moved it: ``-fno-tree-vrp`` fixed the first and caused the third,
  ``max-completely-peel-times=2`` hid groups of 3 and 6 but not of 2.

  The fix: no GCC flag turns off masked loads in SLP groups alone; ``-fno-tree-loop-if-convert``
  turns off every masked load and every select in a loop with them (softmax's row maxima,
  matmul's packing and attention's masks would stay scalar). This flag removes what makes the
  groups: GCC no longer fully unrolls a loop of 2 or more iterations on its own
  (``#pragma GCC unroll``, as in the matmul micro-kernel, still does). Value-range propagation
  is on again. ``tests/test_compiler_flags.py`` reads GCC's vectoriser dump for AVX2 and
  AVX-512 targets: no SLP group holds a masked load. No matching GCC bug report was found.
* ``-mno-avx512fp16`` where the target has AVX512-FP16 (reproducer
  ``avx512fp16_masked_vmovsh.c``): GCC 12 emits zero-masked register ``vmovsh`` for a float16
  select, which binutils 2.40 refuses to assemble ("unsupported masking"). minicomp computes
  float16 in float32, so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUIRED_FLAGS = ["-shared", "-fPIC", "-std=gnu11", "-fwrapv", "-fno-math-errno"]
DEFAULT_OPT_FLAGS = ["-O3", "-march=native", "-fopenmp"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g"]


@dataclass(frozen=True)
class Workaround:
    """A flag that keeps a compiler away from one of its known bugs (see the module docstring).

    ``when`` names the targets it applies to: ``"gcc"`` (GCC, not clang), or a predefined macro
    such as ``"__AVX512FP16__"``. ``reproducer`` is the file in ``tests/gcc_reproducers/``;
    ``seen_with`` the compiler version it was seen to fail with.
    """

    flag: str
    when: str
    reproducer: str
    seen_with: str

    def applies(self, macros: str) -> bool:
        """Whether the target that ``cc -dM -E`` printed ``macros`` for needs this flag."""
        if self.when == "gcc":
            return "__GNUC__" in macros and "__clang__" not in macros
        return f"#define {self.when} " in macros


WORKAROUNDS = (
    Workaround("--param=max-completely-peel-times=1", "gcc", "slp_masked_load.c", "GCC 12.2.0"),
    Workaround("-mno-avx512fp16", "__AVX512FP16__", "avx512fp16_masked_vmovsh.c", "GCC 12.2.0"),
)

#: the workaround flags every GCC build gets
GCC_WORKAROUNDS = [w.flag for w in WORKAROUNDS if w.when == "gcc"]


def workarounds(macros: str) -> list[str]:
    """The workaround flags for the compiler and target that ``cc -dM -E`` printed ``macros`` for.

    >>> workarounds("#define __GNUC__ 12\\n#define __AVX2__ 1\\n")
    ['--param=max-completely-peel-times=1']
    """
    return [w.flag for w in WORKAROUNDS if w.applies(macros)]
