"""The assembly gcc makes of the generated C, and how much of it is SIMD (``dump --emit asm``).

Reading the loop IR and the C tells what was *asked* for; the assembly tells what the C
compiler *did*: whether a loop became SIMD instructions, and how wide. ``assembly(program)``
compiles the rendered C with exactly the flags of the real build plus ``-S``
(``compiler.compile_assembly``) and keeps each kernel's functions: ``k_NAME`` and the bodies
gcc outlines from it (``k_NAME._omp_fn.0`` holds the loops of an ``omp parallel for``).
``simd_summary`` counts each kernel's vector instructions by register width, e.g. for
softmax's row kernel::

    # k_fused_div: packed zmm 58, ymm 1, xmm 12; scalar 33

A loop that vectorised shows packed ``zmm`` (512-bit, AVX-512) or ``ymm`` (256-bit, AVX2)
arithmetic such as ``vfmadd231ps %zmm1, %zmm2, %zmm0``; a scalar loop shows ``vaddss`` and
friends on ``xmm`` registers, one element at a time. The counts are static (instructions in
the code, not executed ones), and ``xmm`` counts also hold register copies of scalars
(``vmovaps %xmm1, %xmm0``): the evidence that matters is the widest width's count.
"""

from __future__ import annotations

import re

from ..errors import MinicompError
from ..codegen.c import render_c
from ..runtime.compiler import compile_assembly

WIDTHS = ("zmm", "ymm", "xmm")  # 512, 256, 128 bits
_LABEL = re.compile(r"^([A-Za-z_][\w.$]*):")  # a symbol's label; local labels (.L5:) start with "."
_SCALAR = re.compile(r"s[sd][lq]?$|^vmov[dq]$|2si[lq]?$")  # vaddss, vmovsd, vmovd, vcvttss2si


def assembly(program, kernel: str | None = None, flags: list[str] | None = None) -> str:
    """The assembly of ``program``'s kernels (only ``kernel``'s, if named), ``.cfi`` lines removed.

    ``flags`` replaces the build's flags (``compiler.cflags()``), e.g. to look at the default ones.
    """
    sections = kernel_sections(compile_assembly(render_c(program), flags))
    if kernel is not None:
        name = kernel.removeprefix("k_")
        if name not in sections:
            raise MinicompError(f"no kernel {kernel!r}; kernels: {', '.join(sections)}")
        sections = {name: sections[name]}
    return "\n\n".join("\n".join(lines) for lines in sections.values())


def kernel_sections(asm: str) -> dict[str, list[str]]:
    """``kernel name -> lines`` of its functions: ``k_NAME`` and every ``k_NAME.suffix``
    (``._omp_fn.0``, ``.constprop.0``), each from its label to its ``.size`` directive."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in asm.splitlines():
        label = _LABEL.match(line)
        if label:
            symbol = label.group(1)
            current = symbol.split(".")[0][2:] if symbol.startswith("k_") else None
        if current is not None and not line.lstrip().startswith(".cfi_"):
            sections.setdefault(current, []).append(line)
        if line.lstrip().startswith(".size"):
            current = None
    return sections


def instruction_width(line: str) -> str | None:
    """``"zmm"``/``"ymm"``/``"xmm"`` for a packed vector instruction (its widest register),
    ``"scalar"`` for scalar float arithmetic on vector registers, else None."""
    parts = line.split(None, 1)
    if len(parts) < 2 or not parts[0].startswith("v"):
        return None
    mnemonic, operands = parts
    widths = [w for w in WIDTHS if f"%{w}" in operands]
    if not widths:
        return None
    if _SCALAR.search(mnemonic) and "broadcast" not in mnemonic:
        return "scalar"
    return widths[0]


def simd_summary(asm: str) -> dict[str, dict[str, int]]:
    """``kernel -> {"zmm": n, "ymm": n, "xmm": n, "scalar": n}``: each kernel's packed vector
    instructions by register width, and its scalar float ones (``asm``: a whole compiler
    output, or ``assembly()``'s)."""
    summary = {}
    for name, lines in kernel_sections(asm).items():
        counts = dict.fromkeys(WIDTHS + ("scalar",), 0)
        for line in lines:
            width = instruction_width(line.strip())
            if width is not None:
                counts[width] += 1
        summary[name] = counts
    return summary


def format_summary(summary: dict[str, dict[str, int]]) -> str:
    """One comment line per kernel: ``# k_add: packed zmm 12, ymm 0, xmm 3; scalar 0``."""
    return "\n".join(f"# k_{name}: packed " + ", ".join(f"{w} {c[w]}" for w in WIDTHS) +
                     f"; scalar {c['scalar']}" for name, c in summary.items())
