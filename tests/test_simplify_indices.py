"""Range-aware index simplification (``minicomp/ir/simplify_indices.py``).

Every rewrite is checked by running the kernel before and after in the loop interpreter on
all iterations: the same values must land in the same places.
"""

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minicomp import workloads
from minicomp.codegen.c import render_c
from minicomp.driver import jit
from minicomp.ir.loop_text import print_expr
from minicomp.ir.loops import (BOOL, INDEX, Assign, Binary, Block, Buffer, Const, Declare, For, Kernel, Select,
                               Store, Var)
from minicomp.ir.simplify_indices import simplify_expr, simplify_kernel_indices
from minicomp.schedules.cpu import flash_attention
from minicomp.schedules.cpu import packed_gemm
from minicomp.testing.loop_interpreter import LoopInterpreter


def ix(op, a, b):
    a = a if not isinstance(a, int) else Const(a, INDEX)
    b = b if not isinstance(b, int) else Const(b, INDEX)
    return Binary(op, a, b, BOOL if op in ("<", "<=", "&&") else INDEX)


def values_of(kernel: Kernel, size: int) -> np.ndarray:
    out = np.full(size, -99, np.int64)
    LoopInterpreter({kernel.output: out}).stmt(kernel.body)
    return out


def nest_storing(expr_of, extents) -> Kernel:
    """``for i, j: out[i*J + j] = expr_of(i, j)`` with ``out`` an int64 buffer."""
    i, j = Var("i"), Var("j")
    out = Buffer("out", np.dtype(np.int64), (extents[0] * extents[1],))
    body = For(i, extents[0], For(j, extents[1], Store(out, ix("+", ix("*", i, extents[1]), j), expr_of(i, j))))
    return Kernel("k", [], out, body)


def test_head_split_index_loses_its_division():
    """q[i, h, d] of a [256, 12, 64] view of a [256, 2304] matrix: no / or % left."""
    i, h, d = Var("i"), Var("h"), Var("d")
    flat = ix("+", ix("*", ix("+", ix("*", i, 12), h), 64), d)
    index = ix("+", ix("*", ix("/", flat, 768), 2304), ix("%", flat, 768))
    simple = simplify_expr(index, {"i": 256, "h": 12, "d": 64})
    assert "/" not in print_expr(simple) and "%" not in print_expr(simple)
    for iv, hv, dv in [(0, 0, 0), (255, 11, 63), (7, 3, 40)]:
        env = LoopInterpreter({})
        env.scalars.update(i=np.int64(iv), h=np.int64(hv), d=np.int64(dv))
        assert env.expr(simple) == env.expr(index) == iv * 2304 + hv * 64 + dv


@settings(max_examples=60, deadline=None)
@given(ni=st.integers(1, 9), nj=st.integers(1, 9), ci=st.integers(-6, 12), cj=st.integers(-3, 12),
       c0=st.integers(-20, 40), k=st.integers(1, 24), outer=st.integers(1, 5))
def test_simplified_divmod_has_the_same_values(ni, nj, ci, cj, c0, k, outer):
    """``((i*ci + j*cj + c0) / k) * outer + (same % k)`` and friends, over every (i, j)."""
    def expr(i, j):
        x = ix("+", ix("+", ix("*", i, ci), ix("*", j, cj)), c0)
        return ix("+", ix("*", ix("/", x, k), outer), ix("%", ix("+", ix("*", x, 3), j), k))
    kernel = nest_storing(expr, (ni, nj))
    assert np.array_equal(values_of(simplify_kernel_indices(kernel), ni * nj), values_of(kernel, ni * nj))


@settings(max_examples=40, deadline=None)
@given(ni=st.integers(1, 9), nj=st.integers(1, 9), bound=st.integers(-2, 90), scale=st.integers(0, 10))
def test_decided_guards_select_the_same_values(ni, nj, bound, scale):
    def expr(i, j):
        inside = ix("&&", ix("<", ix("+", ix("*", i, scale), j), bound), ix("<=", j, bound // 3))
        return Select(inside, ix("+", i, 100), Const(-1, INDEX))
    kernel = nest_storing(expr, (ni, nj))
    assert np.array_equal(values_of(simplify_kernel_indices(kernel), ni * nj), values_of(kernel, ni * nj))


def test_guard_that_always_holds_is_folded_and_a_tail_guard_is_kept():
    j = Var("j")
    always = Select(ix("<", j, 256), j, Const(0, INDEX))
    assert print_expr(simplify_expr(always, {"j": 256})) == "j"
    tail = Select(ix("<", j, 250), j, Const(0, INDEX))
    assert simplify_expr(tail, {"j": 256}) is not None and "<" in print_expr(simplify_expr(tail, {"j": 256}))


def test_possibly_negative_numerator_is_left_alone():
    """C's ``/`` truncates toward zero: (i - 3) / 4 is not i/4 - 1 when i < 3."""
    i = Var("i")
    e = ix("/", ix("-", i, 3), 4)
    assert "/" in print_expr(simplify_expr(e, {"i": 10}))


def test_declared_index_gets_a_range_but_an_assigned_one_does_not():
    i, t = Var("i"), Var("t")
    out = Buffer("out", np.dtype(np.int64), (8,))
    quotient = ix("/", ix("+", ix("*", t, 8), i), 8)  # == t when 0 <= i < 8
    body = For(i, 8, Block([Declare(t, ix("+", i, 0)), Store(out, i, quotient)]))
    simple = simplify_kernel_indices(Kernel("k", [], out, body))
    assert "/" not in print_expr(simple.body.body.stmts[1].value)
    reassigned = For(i, 8, Block([Declare(t, ix("+", i, 0)), Assign(t, ix("-", i, 100)), Store(out, i, quotient)]))
    kept = simplify_kernel_indices(Kernel("k", [], out, reassigned))
    assert "/" in print_expr(kept.body.body.stmts[2].value)
    assert np.array_equal(values_of(kept, 8), values_of(Kernel("k", [], out, reassigned), 8))


def test_block_attention_reads_q_k_v_without_division(monkeypatch):
    """The GPT-2 block's head split reaches the attention kernel's packing as plain strided reads."""
    monkeypatch.setattr(packed_gemm, "MIN_WORK", 0)
    monkeypatch.setattr(packed_gemm, "MIN_ROW_PANELS", 0)
    monkeypatch.setattr(flash_attention, "MIN_WORK", 0)
    w = workloads.WORKLOADS["block"]
    source = render_c(jit(w.fn).compiled_for(*w.inputs("tiny")).run.program)
    packing = [line for line in source.splitlines() if re.search(r"(_kpack|_vpack|qpanel)\[.*\] = ", line)]
    assert len(packing) == 3
    assert not any("/" in line or "%" in line for line in packing), packing


@settings(max_examples=150, deadline=None)
@given(ni=st.integers(1, 9), nj=st.integers(1, 9), c=st.integers(2, 8), m=st.integers(1, 6),
       a=st.integers(0, 5), c0=st.integers(0, 30))
def test_divisor_of_the_divisor_resolves_a_repeat_row(ni, nj, c, m, a, c0):
    """``(i*c*a' + j + c0) / (c*m)`` where ``c`` divides the divisor: the rule behind ``np.repeat``'s
    ``(h*T*D + t*D + d) / (2*T*D) -> h / 2``, checked on every (i, j) against the kernel as written."""
    def expr(i, j):
        x = ix("+", ix("+", ix("*", i, c * a), ix("%", j, c)), c0)
        return ix("+", ix("*", ix("/", x, c * m), 1000), ix("%", x, c * m))
    kernel = nest_storing(expr, (ni, nj))
    assert np.array_equal(values_of(simplify_kernel_indices(kernel), ni * nj), values_of(kernel, ni * nj))


def test_repeat_rows_read_without_division():
    i, j = Var("i"), Var("j")  # out[i, j] = x[i / 2, j]: a (512, 1024) repeat of a (256, 1024) array
    flat = ix("+", ix("*", i, 1024), j)
    index = ix("+", ix("*", ix("/", flat, 2048), 1024), ix("%", ix("%", flat, 2048), 1024))
    simple = simplify_expr(index, {"i": 512, "j": 1024})
    assert print_expr(simple).count("/") == 1 and "%" not in print_expr(simple)
