"""``minicomp dump --emit asm``: gcc's assembly of the generated C and its SIMD evidence.

The elementwise kernel of ``ew_chain`` (gelu: a tanh) must compile to packed SIMD instructions of
the widest width the target has (``zmm`` with AVX-512, ``ymm`` with AVX2, else ``xmm``), with
minicomp's flags whatever ``MINICOMP_CFLAGS`` says in this environment (as ``test_vmath.py``),
for this machine's target and, compiling only, for an AVX2 and an AVX-512 one: the result
does not depend on the CPU the tests run on. Plain x86-64 (SSE2) has no FMA, so tanh stays a
library call there; a kernel without transcendentals must still vectorise for it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import minicomp
from minicomp.cli import main
from minicomp.tools.asm import assembly, instruction_width, kernel_sections, simd_summary
from minicomp.runtime.compiler import DEFAULT_OPT_FLAGS, build_flags, compile_assembly
from minicomp.codegen.c import render_c
from minicomp.ir.dtypes import TensorType
from minicomp.lower.program import lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import loop_program
from minicomp.target import cpu_target
from minicomp.workloads import WORKLOADS

DEFAULT_FLAGS = build_flags(DEFAULT_OPT_FLAGS)
TARGETS = ["native", "haswell", "skylake-avx512"]  # this CPU's, AVX2, AVX-512


def target_flags(march: str) -> list[str]:
    """minicomp's flags for ``-march=march`` (the workarounds that target needs included)."""
    return build_flags(["-O3", f"-march={march}", "-fopenmp"])


def workload_program(name: str, size: str = "tiny"):
    workload = WORKLOADS[name]
    graph = minicomp.trace(workload.fn, *[TensorType(s, "f32") for s in workload.shapes[size].values()])
    return loop_program(run_pipeline(graph)[0])


def expected_width(flags: list[str] = DEFAULT_FLAGS) -> str:
    """The registers of the loops gcc vectorises under ``flags``, as the ``Target`` says: the
    widest the target has, unless gcc's tuning prefers narrower vectors (ymm on most Intel
    AVX-512 CPUs)."""
    return {64: "zmm", 32: "ymm", 16: "xmm"}[cpu_target(tuple(flags)).loop_vector_bytes]


@pytest.mark.parametrize("march", TARGETS)
@pytest.mark.parametrize("size", ["tiny", "cpu"])
def test_elementwise_kernel_uses_the_widest_simd(size, march):
    program = workload_program("ew_chain", size)
    [kernel] = program.kernels
    flags = target_flags(march)
    counts = simd_summary(assembly(program, flags=flags))[kernel.name]
    assert counts[expected_width(flags)] >= 10, counts  # the gelu chain: fma, mul, add ... full width


@pytest.mark.parametrize("march", TARGETS)
def test_row_reductions_use_simd(march):
    """softmax's max and sum passes are split into lanes, and its exp is vmath's: packed
    compares, adds and FMAs, full width."""
    program = workload_program("softmax", "cpu")
    flags = target_flags(march)
    counts = simd_summary(assembly(program, flags=flags))
    assert counts[program.kernels[0].name][expected_width(flags)] >= 20, counts


def test_plain_elementwise_kernel_vectorises_for_sse2():
    """Plain x86-64 (SSE2: no AVX, no FMA) still gets packed SSE for a kernel without
    transcendentals (``mulps``/``addps`` on xmm: SSE encodings, which ``simd_summary``, made
    for VEX ones, does not count)."""
    x = np.ones((64, 1000), np.float32)
    program = lower(run_pipeline(minicomp.trace(lambda x, a: x * a + a, x, x[0]))[0])
    [kernel] = program.kernels
    [lines] = kernel_sections(compile_assembly(render_c(program), target_flags("x86-64"))).values()
    packed = [line for line in lines if re.match(r"\s+(mulps|addps)\s+.*%xmm", line)]
    assert len(packed) >= 2, "\n".join(lines)


def test_assembly_of_one_kernel_and_its_outlined_parallel_body():
    program = workload_program("softmax", "cpu")  # large enough for an omp parallel loop
    name = program.kernels[0].name
    text = assembly(program, kernel=f"k_{name}", flags=DEFAULT_FLAGS)
    assert text.startswith(f"k_{name}:")
    assert f"k_{name}._omp_fn.0:" in text
    assert ".cfi_" not in text and "minicomp_entry" not in text
    with pytest.raises(minicomp.MinicompError, match="no kernel 'nope'"):
        assembly(program, kernel="nope", flags=DEFAULT_FLAGS)


def test_instruction_widths():
    assert instruction_width("vfmadd231ps\t%zmm1, %zmm2, %zmm0") == "zmm"
    assert instruction_width("vaddps\t(%rax), %ymm3, %ymm3") == "ymm"
    assert instruction_width("vcvtps2pd\t%ymm1, %zmm2") == "zmm"  # the widest register counts
    assert instruction_width("vpaddd\t%xmm1, %xmm2, %xmm0") == "xmm"
    assert instruction_width("vbroadcastss\t%xmm0, %zmm0") == "zmm"  # a broadcast fills a vector
    for scalar in ("vaddss\t%xmm1, %xmm0, %xmm0", "vmovsd\t(%rax), %xmm1", "vmovd\t%xmm0, %eax",
                   "vcvttss2si\t%xmm0, %eax", "vcvtsi2ssl\t%eax, %xmm0, %xmm0"):
        assert instruction_width(scalar) == "scalar", scalar
    assert instruction_width("addq\t$64, %rax") is None
    assert instruction_width("vzeroupper") is None


def test_sections_and_summary_of_a_listing():
    listing = "\n".join([
        "\t.type\tk_add, @function", "k_add:", ".LFB1:", "\t.cfi_startproc",
        "\tvaddps\t%zmm0, %zmm1, %zmm2", "\tvaddss\t%xmm0, %xmm1, %xmm2", "\tret",
        "\t.size\tk_add, .-k_add",
        "k_add._omp_fn.0:", "\tvmulps\t%ymm0, %ymm1, %ymm2", "\t.size\tk_add._omp_fn.0, .-k_add._omp_fn.0",
        "k_add_1:", "\tvmulps\t%xmm0, %xmm1, %xmm2", "\t.size\tk_add_1, .-k_add_1",
        "minicomp_entry:", "\tvaddps\t%zmm0, %zmm1, %zmm2", "\t.size\tminicomp_entry, .-minicomp_entry",
    ])
    sections = kernel_sections(listing)
    assert list(sections) == ["add", "add_1"]
    assert not any(".cfi" in line for line in sections["add"])
    assert simd_summary(listing) == {"add": {"zmm": 1, "ymm": 1, "xmm": 0, "scalar": 1},
                                     "add_1": {"zmm": 0, "ymm": 0, "xmm": 1, "scalar": 0}}


def test_cli_dump_emit_asm(capsys):
    assert main(["dump", "--workload", "ew_chain", "--size", "tiny", "--emit", "asm"]) == 0
    out = capsys.readouterr().out
    assert "# SIMD evidence" in out and "# k_fused_" in out and "packed zmm" in out
    kernel = out.split("# k_", 1)[1].split(":", 1)[0]
    assert main(["dump", "--workload", "ew_chain", "--size", "tiny", "--emit", "asm", "--kernel", kernel]) == 0
    assert f"\nk_{kernel}:" in capsys.readouterr().out
    assert main(["dump", "--workload", "ew_chain", "--size", "tiny", "--emit", "asm", "--kernel", "nope"]) == 1
    assert "no kernel 'nope'" in capsys.readouterr().err
    assert main(["dump", "--workload", "ew_chain", "--size", "tiny", "--emit", "c", "--kernel", kernel]) == 1
    assert "only applies to --emit asm" in capsys.readouterr().err
