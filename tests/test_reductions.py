"""Reduction loops that vectorise (the default schedules of ``minicomp.schedules.cpu.reductions``), against NumPy.

* float reductions split into ``lane_count(host_target())`` partial accumulators (16 with AVX2):
  row lengths around the lane count (tails of 1, 15, 17, 33 ...), empty rows, NaN and infinities (a NaN anywhere in a row
  still wins ``max``/``min``); integer and bool reductions stay exact;
* column reductions accumulating into the output row: blocks for the threads plus a tail;
* softmax computing ``exp`` once (kept in the output row for the epilogue), and only where
  the epilogue reads it in place;
* gcc reports every lane loop vectorised (``-fopt-info-vec-optimized``, default flags).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import warnings

import numpy as np
import pytest

import minicomp
from minicomp import nn
from minicomp.codegen.c import render_c
from minicomp.runtime.compiler import build_flags, compiler
from minicomp.ir.dtypes import TensorType
from minicomp.passes.pipeline import run_pipeline
from minicomp.schedules.cpu.lanes import lane_count
from minicomp.schedules.cpu.reductions import column_block
from minicomp.stages import loop_program
from minicomp.target import host_target
from minicomp.testing import assert_close

FLOATS = ["float32", "float64", "float16"]
DTYPES = FLOATS + ["int32", "int64", "bool"]
LENGTHS = [0, 1, 15, 16, 17, 33, 100]


def sample(shape, dtype, rng, specials: bool = True) -> np.ndarray:
    """Random values; for floats, row 1 holds a NaN, row 2 +inf and row 3 is all -inf."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind == "i":
        return rng.integers(-1000, 1000, shape).astype(dtype)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if specials and x.ndim == 2 and x.shape[1]:
        rows = x.shape[0]
        if rows > 1:
            x[1, x.shape[1] // 2] = np.nan
        if rows > 2:
            x[2, -1] = np.inf
        if rows > 3:
            x[3, :] = -np.inf
    return x


def kernels_text(fn, *arrays) -> str:
    """The loop IR of ``fn`` after the default passes and schedules."""
    graph = minicomp.trace(fn, *[TensorType(a.shape, a.dtype) for a in arrays])
    return str(loop_program(run_pipeline(graph)[0]))


def quietly(fn, *args):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


def check(fn, *arrays):
    """minicomp's C result equals NumPy's (max/min bit for bit, sums within float tolerance).

    float16 sums are held to the exact sum (in float64, rounded to float16) instead: NumPy adds
    float16 values in float16 along a strided axis, so its own error grows with the count (50
    values near 60 can leave it 0.09 off), while minicomp accumulates them in float32."""
    expected = quietly(fn, *arrays)
    actual = quietly(minicomp.jit(fn), *arrays)
    assert_close(actual, exact_float16(fn, arrays, expected) if any(a.dtype == np.float16 for a in arrays)
                 else expected)
    return actual, expected


def exact_float16(fn, arrays, expected):
    """``fn`` computed in float64 from the float16 ``arrays``, its float16 results rounded once
    (the shape of ``expected``: an array or a tuple of them)."""
    exact = quietly(fn, *[a.astype(np.float64) if a.dtype == np.float16 else a for a in arrays])

    def rounded(value, numpy_value):
        return np.asarray(value).astype(np.float16) if np.asarray(numpy_value).dtype == np.float16 else numpy_value

    if isinstance(expected, (tuple, list)):
        return type(expected)(map(rounded, exact, expected))
    return rounded(exact, expected)


# ----------------------------------------------------------------------------------------------
# Row reductions: lanes and tails
# ----------------------------------------------------------------------------------------------


def row_reductions(x):
    results = [x.sum(axis=-1), x.mean(axis=-1, keepdims=True)]
    if x.shape[-1]:  # max/min of an empty row raise in NumPy
        results += [x.max(axis=-1), x.min(axis=-1, keepdims=True)]
    return tuple(results)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
def test_row_reductions_match_numpy(dtype, n, rng):
    x = sample((5, n), dtype, rng)
    actual, expected = check(row_reductions, x)
    for a, e in zip(actual[2:], expected[2:]):  # max and min pick an element: exact, NaN wins
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("n", [7, 8, 9, 15, 16, 17, 31, 32, 33, 1000])
def test_rows_split_into_lanes_exactly_when_long_enough(n):
    """Into this machine's lane count (16 with AVX2, 8 with SSE, 32 with 512-bit loops)."""
    lanes = lane_count(host_target())
    x = np.zeros((3, n), np.float32)
    text = kernels_text(lambda x: x.sum(axis=-1), x)
    assert (f"vectorized for lane in 0..{lanes}:" in text) == (n >= lanes)
    tail = n % lanes
    assert (f"for lane in 0..{tail}:" in text) == (n >= lanes and tail != 0)
    ints = kernels_text(lambda x: x.sum(axis=-1), x.astype(np.int32))
    assert "lane" not in ints  # integer sums are exact in any order: gcc vectorises them itself


@pytest.mark.parametrize("dtype", FLOATS + ["int64"])
@pytest.mark.parametrize("axes", [None, (0, 2), (1, 2), 2])
def test_reductions_over_several_axes(dtype, axes, rng):
    x = sample((3, 4, 37), dtype, rng)
    check(lambda x: (x.sum(axis=axes), x.max(axis=axes), x.mean(axis=axes)), x)


def test_sum_of_a_long_row_stays_accurate(rng):
    """16 lanes of 4096 terms each: a few float32 roundings off, as NumPy's pairwise sum, and
    far closer than one accumulator adding 65536 terms in order (``np.cumsum``'s last element)."""
    x = (rng.random((2, 1 << 16)) + 1e3).astype(np.float32)
    exact = x.astype(np.float64).sum(axis=-1)
    error = np.abs(minicomp.jit(lambda x: x.sum(axis=-1))(x) - exact) / exact
    in_order = np.abs(np.cumsum(x, axis=-1)[:, -1] - exact) / exact
    assert np.all(error < 1e-6) and np.all(error < in_order), (error, in_order)


# ----------------------------------------------------------------------------------------------
# Softmax and layer norm rows
# ----------------------------------------------------------------------------------------------


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g + b


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33, 1000])
def test_softmax_and_layernorm_rows(dtype, n, rng):
    x = sample((6, n), dtype, rng)
    check(softmax, x)
    g, b = sample((n,), dtype, rng), sample((n,), dtype, rng)
    check(layernorm, x, g, b)
    check(nn.softmax, sample((2, 3, n), dtype, rng, specials=False))


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_over_any_axis(axis, rng):
    """The lanes split the innermost reduced axis, contiguous or not."""
    x = sample((20, 33, 17), "float32", rng, specials=False)
    x[3, 4, 5] = np.nan
    check(lambda x: nn.softmax(x, axis=axis), x)
    check(lambda x: x.sum(axis=axis, keepdims=True) * x, x)


def test_softmax_computes_exp_once():
    x = np.zeros((64, 1000), np.float32)
    text = "\n".join(line for line in kernels_text(softmax, x).splitlines() if not line.startswith("#"))
    exps = [line.strip() for line in text.splitlines() if re.search(r"\bexp\(", line)]
    assert exps and all(line.startswith("f32 e_exp = exp(") for line in exps)  # lanes and tail only
    assert re.search(r"fused_div\[.*\] = fused_div\[.*\] / v_sum", text)  # the epilogue reads it back


@pytest.mark.parametrize("fn", [
    lambda x: np.exp(x).sum(axis=-1, keepdims=True) * x,          # the epilogue does not read exp
    lambda x: (x - x.mean(axis=-1, keepdims=True)) * 2,           # nothing worth keeping
    lambda x: np.exp(x).sum(axis=-1, keepdims=True),              # a reduction as the result
])
def test_operand_kept_only_where_the_epilogue_reads_it(fn, rng):
    x = sample((5, 40), "float32", rng, specials=False)
    assert "e_" not in kernels_text(fn, x)
    check(fn, x)


def test_kept_operand_with_other_epilogue_reads(rng):
    fn = lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True) + np.exp(x) * x  # noqa: E731
    x = sample((5, 40), "float32", rng)
    check(fn, x)


# ----------------------------------------------------------------------------------------------
# Column reductions: accumulate into the output row
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axes", [((40, 1000), 0),       # parallel column blocks + a tail
                                         ((7, 33), 0), ((3, 50, 17), 1), ((2, 3, 40), (0, 1)),
                                         ((0, 20), 0), ((5, 1, 20), 1), ((1, 20), 0)])
def test_column_reductions_match_numpy(dtype, shape, axes, rng):
    x = sample(shape, dtype, rng)
    if x.size and np.dtype(dtype).kind == "f":
        x.reshape(-1, shape[-1])[0, 3] = np.nan  # one column is NaN
    fns = [lambda x: x.sum(axis=axes), lambda x: x.mean(axis=axes, keepdims=True)]
    if x.size:
        fns += [lambda x: x.max(axis=axes), lambda x: x.min(axis=axes, keepdims=True)]
    for fn in fns:
        actual, expected = check(fn, x)
        if fn in fns[2:]:
            np.testing.assert_array_equal(actual, expected)


def test_column_sum_loops_over_rows_outside_columns():
    """Three blocks of whole lane groups and a block of the rest: with AVX2 (blocks of 256),
    1000 columns are 3 blocks of 320 and one of 40."""
    block, lanes = column_block(host_target()), lane_count(host_target())
    columns = 4 * block - 24
    x = np.zeros((400, columns), np.float32)  # 400 x 1000 with AVX2: enough work to run in parallel
    text = kernels_text(lambda x: x.sum(axis=0), x)
    assert "parallel for i0_b in 0..3:" in text
    width = int(re.search(r"for r0 in 0..400:\n\s+for i0_i in 0..(\d+):\n.*\n\s+sum\[i0\] = sum\[i0\] \+ x\[", text)[1])
    rest = columns - 3 * width
    assert width >= block and width % lanes == 0 and 0 < rest < 3 * lanes, (width, rest)
    assert f"for i0_i in 0..{rest}:" in text
    half = kernels_text(lambda x: x.sum(axis=0), x.astype(np.float16))
    assert "sum[i0] = sum[i0] +" not in half  # float16 sums in float32: not in its output


# ----------------------------------------------------------------------------------------------
# gcc's own report: the lane loops vectorise, for AVX2 and AVX-512 targets alike (compiling for
# them needs no such CPU) and for this one
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("march", ["native", "haswell", "skylake-avx512"])
@pytest.mark.parametrize("case", ["softmax", "layernorm", "column max", "full sum f64"])
def test_gcc_vectorises_the_reduction_loops(case, march, tmp_path):
    x = np.zeros((64, 1000), np.float32)
    fn, args = {"softmax": (softmax, [x]), "layernorm": (layernorm, [x, x[0], x[0]]),
                "column max": (lambda x: x.max(axis=0), [x]),
                "full sum f64": (lambda x: x.sum(), [x.astype(np.float64)])}[case]
    graph = minicomp.trace(fn, *[TensorType(a.shape, a.dtype) for a in args])
    source = render_c(loop_program(run_pipeline(graph)[0]))
    path = tmp_path / "kernels.c"
    path.write_text(source)
    flags = [f for f in build_flags(["-O3", f"-march={march}", "-fopenmp"]) if f not in ("-shared", "-fPIC")]
    command = [*shlex.split(compiler()), *flags, "-c", "-fopt-info-vec-optimized", "-o",
               str(tmp_path / "kernels.o"), str(path)]
    report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    vectorised = {int(n) for n in re.findall(r"kernels\.c:(\d+):\d+: optimized: loop vectorized", report)}
    lines = source.splitlines()
    loops = _accumulating_loops(lines)
    assert loops, "no reduction loop found"
    for first, last in loops:
        assert vectorised & set(range(first, last + 1)), (lines[first - 1:last], report)


def _accumulating_loops(lines: list[str]) -> list[tuple[int, int]]:
    """1-based line ranges of the loops that accumulate: lane loops (``acc_..._lanes[lane] =``
    in an ``omp simd`` loop, not the short serial tails) and column loops
    (``b_out[i] = mc_maximum(b_out[i], ...)``)."""
    loops = []
    for number, line in enumerate(lines, 1):
        lanes = re.search(r"_lanes\[lane\] = .*_lanes\[lane\]", line)
        if lanes or re.search(r"(b_\w+)\[(\w+)\] = mc_\w+\(\1\[\2\],", line):
            start = next(i for i in range(number - 1, 0, -1) if lines[i - 1].lstrip().startswith("for ("))
            if not lanes or "omp simd" in lines[start - 2]:
                loops.append((start, number))
    return loops
