"""The compiled C executable: argument handling, the nine workloads, and the generated code.

* **Arguments**: inputs in any memory layout (strided slices, transposed, Fortran order,
  negative strides), misaligned (``np.frombuffer(..., offset=1)``), read-only, 0-d (arrays and
  NumPy scalars) and size-0 all give NumPy's result; inputs are never written; outputs are
  fresh writable arrays (also when an output is an input, a constant or returned twice); a
  wrong number of arguments, a wrong shape or a wrong dtype raises ``MinicompRuntimeError``
  naming the argument.
* **Workloads**: all nine benchmark workloads at "tiny" size, float32 and float64, through
  ``minicomp.jit(..., target="c")`` match NumPy.
* **Generated code and compiler**: ``jit(...).inspect`` shows graph, loops and C, with kernel
  names and the user's source lines; the C uses ``int64_t`` indices, ``restrict`` parameters
  and OpenMP on large kernels; flags never include ``-ffast-math`` and ``MINICOMP_CFLAGS``
  replaces the optimisation flags; without a C compiler, compiling says what to install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp import Graph, TensorType
from minicomp.runtime import compiler
from minicomp.errors import CompileError, MinicompRuntimeError
from minicomp.runtime.executable import prepare_argument
from minicomp.testing import assert_close
from minicomp.workloads import WORKLOADS


def fn(x, y):
    """A function that reads its inputs in several ways: broadcast, reduced, transposed."""
    z = np.tanh(x) * y + 1.5
    return z.sum(axis=0), z.T - x.T, z


def expected(x, y):
    return [np.asarray(v) for v in fn(x, y)]


@pytest.fixture(scope="module")
def compiled():
    """``fn`` compiled once for f64[5,6] x f64[6]: a plain ``minicomp.compile`` executable."""
    graph = minicomp.trace(fn, TensorType((5, 6), "f64"), TensorType((6,), "f64"))
    return minicomp.compile(graph, target="c")


@pytest.fixture
def xy(rng):
    return rng.standard_normal((5, 6)), rng.standard_normal(6)


def run_and_check(compiled, x, y):
    """Run on (x, y); the result matches NumPy and neither input was written."""
    x_before, y_before = x.copy(), y.copy()
    actual = compiled(x, y)
    assert_close(actual, expected(x, y))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    return actual


# ----------------------------------------------------------------------------------------------
# Memory layouts
# ----------------------------------------------------------------------------------------------


def misaligned(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``array`` whose data starts one byte past an aligned address."""
    buffer = np.zeros(array.nbytes + 1 + 64, np.uint8)
    start = (-buffer.ctypes.data % 64) + 1
    view = np.frombuffer(buffer, dtype=array.dtype, count=array.size, offset=start).reshape(array.shape)
    view[...] = array
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


LAYOUTS = {
    "strided slice": lambda a: np.repeat(np.repeat(a, 2, axis=0), 3, axis=-1)[::2, ::3],
    "transposed": lambda a: np.ascontiguousarray(a.T).T,
    "fortran order": np.asfortranarray,
    "negative strides": lambda a: np.flip(np.flip(a).copy()),
    "misaligned": misaligned,
    "read-only": lambda a: read_only(a),
    "read-only misaligned": lambda a: read_only(misaligned(a)),
}


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` (a view, so a misaligned ``a`` stays misaligned)."""
    view = a.view()
    view.flags.writeable = False
    return view


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_inputs_in_any_layout(compiled, xy, layout):
    x, y = xy
    x_view, y_view = LAYOUTS[layout](x), LAYOUTS[layout](y[None, :])[0]
    np.testing.assert_array_equal(x_view, x)
    np.testing.assert_array_equal(y_view, y)
    run_and_check(compiled, x_view, y_view)


def test_prepare_argument_makes_arrays_contiguous_and_aligned():
    """The pointer handed to C is C-contiguous and aligned: a misaligned contiguous array is
    copied (``np.ascontiguousarray`` alone would pass it through); a good one is not copied."""
    good = np.arange(12.0).reshape(3, 4)
    assert prepare_argument(good, good.dtype) is good
    for bad in (misaligned(good), good.T, good[:, ::2], np.asfortranarray(good)):
        ready = prepare_argument(bad, bad.dtype)
        assert ready.flags.c_contiguous and ready.flags.aligned
        assert ready.ctypes.data % ready.dtype.itemsize == 0
        np.testing.assert_array_equal(ready, bad)


def test_jit_accepts_every_layout(rng):
    """The same through ``jit``: a layout is not part of the signature (one compilation)."""
    f = minicomp.jit(fn, target="c")
    x, y = rng.standard_normal((5, 6)), rng.standard_normal(6)
    for make in LAYOUTS.values():
        assert_close(list(f(make(x), make(y[None, :])[0])), expected(x, y))
    assert f.cache_size == 1


# ----------------------------------------------------------------------------------------------
# 0-d and size-0 arguments
# ----------------------------------------------------------------------------------------------


def test_zero_dimensional_inputs():
    """0-d arrays, NumPy scalars and Python numbers are all 0-d arguments."""
    graph = Graph("scalars")
    a = graph.add_input("a", TensorType((), "f32"))
    b = graph.add_input("b", TensorType((), "f64"))
    graph.set_outputs([graph.add_op("mul", [a, b]), graph.add_op("sqrt", [a])])
    run = minicomp.compile(graph, target="c")
    for a_value, b_value in [(np.array(2.0, np.float32), np.array(3.0)),
                             (np.float32(2.0), np.float64(3.0)),
                             (np.array(2.0, np.float32), 3.0)]:
        product, root = run(a_value, b_value)
        assert product.shape == () and product.dtype == np.float64 and product == 6.0
        assert root.shape == () and root.dtype == np.float32 and root == np.sqrt(np.float32(2))


def test_size_zero_inputs():
    """Size-0 arguments (and an empty workspace) run and give NumPy's empty or reduced results."""
    def g(x, w):
        h = np.exp(x) @ w
        return h + 1, h.sum(axis=0), x.mean(axis=0)

    x, w = np.zeros((0, 3), np.float32), np.ones((3, 4), np.float32)
    outs = minicomp.jit(g, target="c")(x, w)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty"):
        want = [np.asarray(v) for v in g(x, w)]
    assert_close(list(outs), want)
    assert outs[0].shape == (0, 4) and (outs[1] == 0).all() and np.isnan(outs[2]).all()


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def test_outputs_are_fresh_writable_arrays(compiled, xy):
    x, y = xy
    first = compiled(x, y)
    second = compiled(x, y)
    for a, b in zip(first, second):
        assert a.flags.writeable and a.flags.c_contiguous and a.flags.owndata
        assert not np.shares_memory(a, b)
        assert not np.shares_memory(a, x) and not np.shares_memory(a, y)
        a[...] = 0  # scribbling on a result changes nothing else
    assert_close(compiled(x, y), second)


def test_outputs_that_are_inputs_constants_or_repeated():
    """``return x, table, 2.0, y, y``: inputs and constants come back as copies, and a value
    returned twice as two arrays: writing any result changes neither the caller's input, nor
    the next call's constant, nor another result."""
    table = np.arange(6.0).reshape(2, 3)

    def h(x):
        y = x * 2.0
        return x, table, 2.0, y, y

    f = minicomp.jit(h, target="c")
    x = np.ones((2, 3))
    outs = f(x)
    assert_close(list(outs), [x, table, np.asarray(2.0), 2 * x, 2 * x])
    assert not np.shares_memory(outs[3], outs[4])
    for out in outs:
        assert out.flags.writeable
        assert not np.shares_memory(out, x) and not np.shares_memory(out, table)
        out[...] = -1
    np.testing.assert_array_equal(x, 1.0)
    np.testing.assert_array_equal(table, np.arange(6.0).reshape(2, 3))
    assert_close(list(f(x)), [x, table, np.asarray(2.0), 2 * x, 2 * x])


def test_inputs_are_never_written(rng):
    """Every op family reading its inputs: the arrays passed in keep their values and flags."""
    def many(a, b, w):
        s = np.maximum(a, 0) @ w
        c = np.concatenate([a, b], axis=0)
        return s.max(axis=-1), c[::-1] * 3, np.where(a > b, a, b).T, b.reshape(-1)

    a, b, w = rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    copies = [v.copy() for v in (a, b, w)]
    outs = minicomp.jit(many, target="c")(a, b, w)
    assert_close(list(outs), [np.asarray(v) for v in many(a, b, w)])
    for original, copy in zip((a, b, w), copies):
        np.testing.assert_array_equal(original, copy)
        assert original.flags.writeable


def test_concurrent_calls_from_threads(compiled, rng):
    """One executable called from several Python threads at once (cffi releases the GIL):
    every call gets its own outputs and workspace."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = [(rng.standard_normal((5, 6)), rng.standard_normal(6)) for _ in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda xy: compiled(*xy), pairs * 4))
    for (x, y), actual in zip(pairs * 4, results):
        assert_close(actual, expected(x, y))


# ----------------------------------------------------------------------------------------------
# Wrong arguments
# ----------------------------------------------------------------------------------------------


def test_wrong_argument_count(compiled, xy):
    with pytest.raises(MinicompRuntimeError, match=r"takes 2 argument\(s\).*%x.*%y.*got 1"):
        compiled(xy[0])
    with pytest.raises(MinicompRuntimeError, match="got 3"):
        compiled(*xy, xy[1])


@pytest.mark.parametrize("bad", ["shape x", "shape y", "dtype x", "dtype y", "0-d y"])
def test_wrong_shape_or_dtype_names_the_argument(compiled, xy, bad):
    x, y = xy
    name = bad.split()[-1]
    args = {"x": x, "y": y}
    if bad.startswith("shape"):
        args[name] = np.ones(args[name].shape + (1,))
        want = "f64[5,6]" if name == "x" else "f64[6]"
    elif bad.startswith("dtype"):
        args[name] = args[name].astype(np.float32)
        want = "f64[5,6]" if name == "x" else "f64[6]"
    else:
        args[name] = np.float64(1.0)
        want = "f64[6]"
    with pytest.raises(MinicompRuntimeError, match=rf"argument %{name}\b.*must be {re.escape(want)}"):
        compiled(args["x"], args["y"])


def test_target_options_are_refused():
    graph = minicomp.trace(np.exp, TensorType((3,), "f32"))
    with pytest.raises(MinicompRuntimeError, match="takes no options"):
        minicomp.compile(graph, target="c", vectorize=True)


# ----------------------------------------------------------------------------------------------
# The nine workloads
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workloads_match_numpy(name, dtype):
    workload = WORKLOADS[name]
    args = workload.inputs("tiny", dtype=dtype, seed=1)
    actual = minicomp.jit(workload.fn, target="c")(*args)
    assert actual.dtype == dtype
    assert_close(actual, workload.fn(*args))


def test_there_are_nine_workloads():
    assert len(WORKLOADS) == 9


# ----------------------------------------------------------------------------------------------
# What the generated code looks like
# ----------------------------------------------------------------------------------------------


def layer(x, b):
    h = np.exp(x) + b
    return h.sum(axis=0)


LAYER_LINE = layer.__code__.co_firstlineno + 1  # the line of ``np.exp(x) + b``


def test_inspect_shows_graph_loops_and_source():
    f = minicomp.jit(layer, target="c", passes=[])  # no passes: one kernel per op
    x, b = np.ones((3, 4), np.float32), np.ones(4, np.float32)
    shown = f.inspect(x, b)
    assert [n.op for n in shown.graph.op_nodes()] == ["exp", "add", "sum"]
    for kernel in ("exp", "add", "sum"):
        assert f"kernel {kernel}(" in shown.loops
        assert re.search(rf"\nstatic .*void k_{kernel}\(", shown.source)
    where = f"{Path(__file__).name}:{LAYER_LINE}"
    assert re.search(rf"/\* %exp = exp  at \S*{re.escape(where)} \*/\nstatic .*void k_exp\(", shown.source)
    assert "/* %add = add  at " in shown.source and where in shown.source
    assert str(shown).index("== graph ==") < str(shown).index("== loops ==") < str(shown).index("== source ==")
    assert_close(f(x, b), layer(x, b))


def test_inspect_of_a_fused_kernel_names_every_source_line():
    f = minicomp.jit(layer, target="c")
    x, b = np.ones((3, 4), np.float32), np.ones(4, np.float32)
    shown = f.inspect(x, b)
    assert [n.op for n in shown.graph.op_nodes()] == ["fused"]
    assert "== passes ==" in str(shown) and "fusion" in str(shown.report)
    where = f"{Path(__file__).name}:{LAYER_LINE}"
    for op in ("exp", "add"):
        assert re.search(rf"/\*   %{op} = {op}  at \S*{re.escape(where)} \*/", shown.source)
    assert re.search(r"/\*   %sum = sum  at \S*test_c_runtime.py:\d+ \*/", shown.source)
    assert_close(f(x, b), layer(x, b))


def source_for(shape) -> str:
    graph = Graph("simple")
    x = graph.add_input("x", TensorType(shape, "f32"))
    y = graph.add_input("y", TensorType(shape[-1:], "f32"))
    graph.set_outputs([graph.add_op("add", [x, y])])
    return minicomp.compile(graph, target="c").source


def test_generated_c_uses_int64_indices_restrict_and_openmp():
    large, small = source_for((512, 512)), source_for((4, 8))
    for source in (large, small):
        assert re.search(r"for \(int64_t i0 = 0; i0 < \d+; \+\+i0\)", source)
        assert not re.search(r"for \((int|unsigned|long|size_t) ", source)
        assert "void k_add(const float *restrict b_x, const float *restrict b_y, " \
               "float *restrict b_add" in source
    # the parallel kernel takes mc_serial: a forked child runs its loop on one thread
    assert "float *restrict b_add, bool mc_serial)" in large and "if(!mc_serial)" in large
    assert "float *restrict b_add)" in small
    # 262144 elements: the outer loop is shared among threads; 32 elements: not worth it (the
    # default schedule still marks the inner loop for SIMD)
    assert re.search(r"#pragma omp parallel for[^\n]*\n\s*for \(int64_t i0 = 0; i0 < 512;", large)
    assert "#pragma omp parallel" not in small and "#pragma omp simd" in small


def test_flags_are_safe_and_overridable(monkeypatch):
    monkeypatch.delenv("MINICOMP_CFLAGS", raising=False)
    default = compiler.cflags()
    assert "-ffast-math" not in default and not any(f.startswith("-Ofast") for f in default)
    assert "-fwrapv" in default and "-O3" in default and "-fopenmp" in default
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O1 -fno-tree-vectorize")
    override = compiler.cflags()
    assert "-O1" in override and "-fno-tree-vectorize" in override and "-O3" not in override
    assert set(compiler.REQUIRED_FLAGS) <= set(override)  # these give the code its meaning


def test_cflags_override_compiles_another_library(monkeypatch):
    """Another ``MINICOMP_CFLAGS`` is another cache entry, built with those flags; same results."""
    graph = minicomp.trace(lambda x: np.tanh(x) * 2, TensorType((7,), "f64"))
    x = np.linspace(-2, 2, 7)
    monkeypatch.delenv("MINICOMP_CFLAGS", raising=False)
    default = minicomp.compile(graph, target="c")
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O0")
    plain = minicomp.compile(graph, target="c")
    assert plain.library_path != default.library_path
    assert_close(plain(x), default(x))


def test_missing_c_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    graph = minicomp.trace(np.exp, TensorType((3,), "f32"))
    with pytest.raises(CompileError, match=r"no C compiler found.*install gcc"):
        minicomp.compile(graph, target="c")


def test_process_exits_cleanly_after_parallel_kernels(tmp_path):
    """Regression: unloading a library at exit must not unload libgomp under its idle threads."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import numpy as np, minicomp\n"
        "x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)\n"
        "f = minicomp.jit(lambda x: np.exp(x - x.max(axis=-1, keepdims=True)))\n"
        "f(x)\n"
    )
    root = str(Path(minicomp.__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_WAIT_POLICY="active", PYTHONPATH=root)
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
