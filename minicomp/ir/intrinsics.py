"""The intrinsic registry: what each ``Intrinsic`` computes, and its source in each language.

An ``Intrinsic(fn, args)`` statement calls a hand-written routine in place of a whole loop nest
(TVM's *tensorize*). As TVM's ``TensorIntrin`` pairs a description with an implementation,
every intrinsic here has

* a **definition** (``define``): the pattern its names follow (``mc_gemm_{mr}x{nr}_{dtype}``),
  its parameters, and its **reference meaning** in NumPy terms, which the loop interpreter
  runs (``run``), so every kernel of every stage can be executed without a compiler;
* **implementations**, one per language, registered by the code generators (``implement``;
  ``codegen/gemm.py`` registers the micro-kernel's C). A renderer emits the routines a program
  calls through ``source``, which refuses a name without a definition: nothing can be emitted
  that the loop interpreter cannot run.

Arguments reach a meaning as values: index expressions as ints, ``Address(buffer, index)`` as
a ``Pointer``: the buffer's flat array and the element where the routine's block starts::

    Intrinsic("mc_gemm_6x16_f32", (kc, &a[m0*kc], kc, &bpack[jb*kc*16], &c[m0*n + n0], n, 1))
    -> run("mc_gemm_6x16_f32", [kc, Pointer(a, m0*kc), kc, Pointer(bpack, jb*kc*16), ...])
    -> c[m0:m0+6, n0:n0+16] += a[m0:m0+6, 0:kc] @ bpack_panel[0:kc, 0:16]
"""

from __future__ import annotations

import re
from functools import cached_property
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np


class Pointer(NamedTuple):
    """Where a routine reads or writes: ``array`` (a buffer's flat array) from element ``offset``."""

    array: np.ndarray
    offset: int

    def block(self, rows: int, cols: int, row_stride: int) -> np.ndarray:
        """Indices into ``array`` of ``rows x cols`` elements, row ``r`` starting at
        ``offset + r*row_stride``; an element outside the array raises ``IndexError`` (where
        the C routine would read or write past the buffer)."""
        at = self.offset + np.arange(rows)[:, None] * row_stride + np.arange(cols)[None, :]
        if at.size and (at.min() < 0 or at.max() >= self.array.size):
            raise IndexError(f"the block [{at.min()}, {at.max()}] lies outside a buffer of "
                             f"{self.array.size} elements")
        return at


@dataclass(frozen=True)
class Definition:
    """One family of intrinsics: names ``pattern`` (fields in braces, each matching the regex in
    ``fields``), parameters ``params``, and ``meaning(fields, *args)``: what a call does, in
    NumPy (``summary`` says it in one line). ``implementations`` maps a language (``"c"``) to
    ``(source, support)``: the routine's text for a name, and text it needs once per file (types)."""

    family: str
    pattern: str
    fields: dict[str, str]
    params: tuple[str, ...]
    meaning: Callable
    summary: str
    implementations: dict[str, tuple[Callable[[str], str], Callable[[str], str] | None]] = \
        field(default_factory=dict, compare=False)

    @cached_property
    def regex(self) -> re.Pattern:
        """The names of this family: ``pattern`` with each ``{field}`` as a named group."""
        parts = re.split(r"\{(\w+)\}", self.pattern)
        text = "".join(re.escape(p) if n % 2 == 0 else f"(?P<{p}>{self.fields[p]})" for n, p in enumerate(parts))
        return re.compile(text + "$")


class Bound(NamedTuple):
    """A name resolved to its ``definition`` and the values of its fields (digits become ints)."""

    name: str
    definition: Definition
    fields: dict


_REGISTRY: dict[str, Definition] = {}


def define(family: str, pattern: str, fields: dict[str, str], params: tuple[str, ...],
           meaning: Callable, summary: str) -> Definition:
    """Register a family of intrinsics with its reference meaning (see ``Definition``).

    ``define("mc_gemm", "mc_gemm_{mr}x{nr}_{dtype}", {"mr": r"\\d+", ...}, ("kc", "a", ...),
    gemm_meaning, "C (+)= A @ B")``; a family is defined once.
    """
    if family in _REGISTRY:
        raise ValueError(f"intrinsic family {family} is already defined")
    if not callable(meaning):
        raise TypeError(f"intrinsic family {family} needs a reference meaning (a function)")
    definition = Definition(family, pattern, dict(fields), tuple(params), meaning, summary)
    _REGISTRY[family] = definition
    return definition


def implement(family: str, language: str, source: Callable[[str], str],
              support: Callable[[str], str] | None = None) -> None:
    """Register how ``language`` spells the intrinsics of ``family`` (defined before):
    ``source(name)`` the routine's definition, ``support(name)`` text it needs before it, once
    per file however many routines share it (e.g. vector types)."""
    if family not in _REGISTRY:
        raise LookupError(f"define intrinsic family {family} (its reference meaning) before implementing it")
    _REGISTRY[family].implementations[language] = (source, support)


def definitions() -> list[Definition]:
    """Every registered family, in the order defined."""
    return list(_REGISTRY.values())


def lookup(name: str) -> Bound:
    """The definition of intrinsic ``name`` and its fields; ``LookupError`` if none has it."""
    for definition in _REGISTRY.values():
        match = definition.regex.match(name)
        if match:
            values = {k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()}
            return Bound(name, definition, values)
    known = ", ".join(d.pattern for d in _REGISTRY.values()) or "none"
    raise LookupError(f"no intrinsic is registered for the name {name!r} (registered: {known})")


def run(name: str, args: list) -> None:
    """Execute intrinsic ``name`` through its reference meaning (``Pointer`` s for addresses)."""
    bound = lookup(name)
    params = bound.definition.params
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments ({', '.join(params)}), not {len(args)}")
    bound.definition.meaning(bound.fields, *args)


def source(name: str, language: str) -> tuple[str | None, str]:
    """``(support, routine)``: the text of intrinsic ``name`` in ``language`` and what it needs
    once per file (None if nothing); ``LookupError`` where either is not registered."""
    bound = lookup(name)
    if language not in bound.definition.implementations:
        raise LookupError(f"intrinsic {name} has no {language} implementation registered "
                          f"(registered: {', '.join(bound.definition.implementations) or 'none'})")
    text, support = bound.definition.implementations[language]
    return (support(name) if support else None), text(name)


# ----------------------------------------------------------------------------------------------
# The register-blocked matmul micro-kernel (C source: codegen/gemm.py)
# ----------------------------------------------------------------------------------------------

_GEMM_DTYPES = {"f32": np.dtype(np.float32), "f64": np.dtype(np.float64)}


def gemm_meaning(fields: dict, kc: int, a: Pointer, lda: int, b: Pointer, c: Pointer, ldc: int,
                 accumulate) -> None:
    """``C[0:mr, 0:nr] (+)= A[0:mr, 0:kc] @ Bpanel[0:kc, 0:nr]``: A's rows at stride ``lda``,
    the B panel ``kc`` k-major rows of ``nr`` values, C's rows at stride ``ldc``; C is added to
    when ``accumulate`` is nonzero, overwritten otherwise."""
    mr, nr, dtype = fields["mr"], fields["nr"], _GEMM_DTYPES[fields["dtype"]]
    kc, lda, ldc = int(kc), int(lda), int(ldc)
    for pointer in (a, b, c):
        if pointer.array.dtype != dtype:
            raise TypeError(f"mc_gemm_*_{fields['dtype']} on a {pointer.array.dtype} buffer")
    product = a.array[a.block(mr, kc, lda)] @ b.array[b.block(kc, nr, nr)]
    at = c.block(mr, nr, ldc)
    c.array[at] = c.array[at] + product if accumulate else product


define("mc_gemm", "mc_gemm_{mr}x{nr}_{dtype}", {"mr": r"\d+", "nr": r"\d+", "dtype": "f32|f64"},
       ("kc", "a", "lda", "b", "c", "ldc", "accumulate"), gemm_meaning,
       "C[0:mr, 0:nr] (+)= A[0:mr, 0:kc] @ Bpanel[0:kc, 0:nr]; A rows at stride lda, "
       "Bpanel k-major rows of nr, C rows at stride ldc")
