"""The generated C is safe whatever the user names things, and its calls are safe under threads,
forks and signed zeros.

* **Names and comments**: a function's ``__name__``, ``trace(name=)``, a ``# loc`` in graph
  text, a source file in a directory such as ``models*/``, Unicode parameter names, two names
  that spell alike once mangled, and loop variables or buffers named like C keywords, libm
  functions, macros or minicomp's own helpers: each compiles, runs and matches NumPy, and the
  user's text appears in the C only escaped inside ``/* ... */`` comments.
* **Per-call error status**: threads calling one compiled function, half with a negative
  integer power (NumPy: ValueError), half with good arguments: every bad call raises, every
  good one returns the right answer.
* **Fork safety**: after a parallel kernel has run, a child made by ``os.fork`` or a
  ``multiprocessing`` fork pool runs kernels (serially) and finishes with the right answers.
* **Signed zeros**: ``maximum``/``minimum`` return the zero NumPy (x86-64) returns on a tie of -0.0 and
  0.0 (float32/64: the second operand; float16: the first), elementwise, in fused chains and in
  matmul epilogues, with arrays, 0-d arrays and Python scalars; float16 max/min reductions
  keep NumPy's zero too (they reduce in order).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicomp
from minicomp import Graph, TensorType
from minicomp.codegen.c import Identifiers, comment_text, render_c
from minicomp.errors import MinicompRuntimeError
from minicomp.ir.loops import Allocate
from minicomp.ir.rewrite import declared_names, rename_vars, statements
from minicomp.lower.program import lower
from minicomp.runtime.executable import Executable
from minicomp.testing import assert_close

ROOT = str(Path(minicomp.__file__).resolve().parent.parent)
COMMENT = re.compile(r"/\*.*?\*/", re.S)  # as C reads them: a comment ends at the first */
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def assert_confined(source: str, hostile: str, marker: str = "evil") -> None:
    """``hostile`` reaches ``source`` only escaped, inside one-line comments: outside comments
    no trace of ``marker``; the file is ASCII; some comment holds the escaped text."""
    assert source.isascii()
    code = COMMENT.sub(" ", source)
    assert marker not in code and "*/" not in code
    assert any(comment_text(hostile) in comment and "\n" not in comment for comment in COMMENT.findall(source))


def source_of(fn, *args) -> str:
    return minicomp.jit(fn).inspect(*args).source


# ----------------------------------------------------------------------------------------------
# Names and comments
# ----------------------------------------------------------------------------------------------

HOSTILE = ["f */ int evil; /*", "evil\nint x;\n", 'evil"quoted\'', "evil caf\u00e9 \u2028 \U0001f600",
           "evil \\\n*/ int y;", "evil */ #include <stdio.h>\n /*", "evil\x00\x1b*/"]


@pytest.mark.parametrize("name", HOSTILE)
def test_function_name_reaches_c_only_in_a_comment(name, rng):
    def f(x):
        return np.tanh(x) * 2.0 + x.sum(axis=-1, keepdims=True)

    f.__name__ = f.__qualname__ = name
    x = rng.standard_normal((5, 7)).astype(np.float32)
    assert_close(minicomp.jit(f)(x), np.tanh(x) * 2.0 + x.sum(axis=-1, keepdims=True))
    assert_confined(source_of(f, x), name)


def test_trace_name_reaches_c_only_in_a_comment(rng):
    name = "net */ int evil = 1; /* \u00e9"
    graph = minicomp.trace(lambda x: np.exp(x) - x, TensorType((4, 3), "f64"), name=name)
    compiled = minicomp.compile(graph, target="c")
    x = rng.standard_normal((4, 3))
    assert_close(compiled(x)[0], np.exp(x) - x)
    assert_confined(compiled.source, name)


def test_graph_text_loc_reaches_c_only_in_a_comment(rng):
    loc = r"a.py:1 */ int evil(void) { return 0; } /* \ "
    graph = Graph.parse(f"""
        graph g(%x: f32[3,5]) {{
          %y = add(%x, %x) : f32[3,5]  # {loc}
          %z = mul(%y, %x) : f32[3,5]  # b.py:2 */ #define evil
          return %z
        }}""")
    assert graph.find("y").loc == loc.strip()
    compiled = minicomp.compile(graph, target="c")
    x = rng.standard_normal((3, 5)).astype(np.float32)
    assert_close(compiled(x)[0], (x + x) * x)
    assert_confined(compiled.source, loc.strip())


def test_loc_with_newline_stays_on_its_line_in_graph_text():
    """A file name with a newline cannot add a line to the graph text: it is escaped, read back."""
    graph = Graph("g")
    x = graph.add_input("x", TensorType((2,), "f32"))
    loc = "dir\n  %evil = neg(%x) : f32[2]\\x41\u2028:7"
    graph.set_outputs([graph.add_op("exp", [x], loc=loc)])
    text = graph.to_text() if hasattr(graph, "to_text") else str(graph)
    assert "%evil" not in [line.split()[0] for line in text.splitlines() if line.strip()]
    again = Graph.parse(text)
    assert [n.op for n in again.op_nodes()] == ["exp"] and again.outputs[0].loc == loc
    assert str(again) == text


@pytest.mark.parametrize("directory", ["models*", "evil\n */ dir \u00e9*"])
def test_source_path_with_comment_end_compiles(directory, tmp_path, rng):
    """A module in ``models*/`` (its lines are ``models*/net.py:3``): compiles and matches NumPy."""
    path = tmp_path / directory / "net.py"
    path.parent.mkdir(parents=True)
    path.write_text("import numpy as np\n\n\ndef net(x):\n    return np.exp(x) * 2.0 - x\n")
    spec = importlib.util.spec_from_file_location(f"hostile_net_{abs(hash(directory))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    assert_close(minicomp.jit(module.net)(x), np.exp(x) * 2.0 - x)
    source = source_of(module.net, x)
    assert source.isascii() and "*/" not in COMMENT.sub(" ", source)
    assert comment_text(directory) in source and "net.py:5" in source


def test_unicode_parameter_names_become_ascii_identifiers(rng):
    namespace = {}
    exec("def f(x\u00e9, \u00b5y):\n    return x\u00e9 * 2.0 - \u00b5y\n", namespace)
    x, y = rng.standard_normal((2, 3, 4))
    assert_close(minicomp.jit(namespace["f"])(x, y), x * 2.0 - y)
    source = source_of(namespace["f"], x, y)
    assert source.isascii() and "b_x_e9_" in source


def test_names_that_mangle_alike_stay_apart(rng):
    """``x\u00e9`` mangles to ``x_e9_``, which is also a name of its own: two C variables."""
    graph = Graph("g")
    a = graph.add_input("x\u00e9", TensorType((3,), "f64"))
    b = graph.add_input("x_e9_", TensorType((3,), "f64"))
    graph.set_outputs([graph.add_op("sub", [a, b]), graph.add_op("div", [b, a])])
    compiled = minicomp.compile(graph, target="c")
    x, y = rng.standard_normal((2, 3))
    actual = compiled(x, y)
    assert_close(actual, [x - y, y / x])
    assert "double *b_x_e9_ = (double *)args[1];" in compiled.source  # a readable name keeps its spelling
    assert "double *b_x_e9__1 = (double *)args[0];" in compiled.source


def test_loop_variables_and_buffers_with_any_name(rng):
    """Loop variables named like C keywords, libm functions, macros, minicomp's parameters or
    a buffer's C name, and buffers named with any text: each a distinct C identifier."""
    def f(x, w):
        return np.exp(x - x.max(axis=-1, keepdims=True)).sum(axis=0) + np.maximum(x @ w, 0.0).sum()

    x = rng.standard_normal((40, 24)).astype(np.float32)
    w = rng.standard_normal((24, 16)).astype(np.float32)
    program = lower(minicomp.trace(f, x, w))
    hostile = ["int", "expf", "NAN", "INT64_MAX", "mc_serial", "mc_status", "b_x", "k_exp", "", "v_",
               "i0 */ evil", "\u00e9", "workspace", "true", "v_e9_", "int64_t", "args", "x.y"]
    for kernel in program.kernels:  # distinct names within a kernel: "int", ..., "int_", ...
        names = {n: hostile[i % len(hostile)] + "_" * (i // len(hostile))
                 for i, n in enumerate(sorted(declared_names(kernel.body)))}
        kernel.body = rename_vars(kernel.body, names)
    buffers = {b for k in program.kernels for b in k.params} | set(program.workspace)
    buffers |= {s.buffer for k in program.kernels for s in statements(k.body) if isinstance(s, Allocate)}
    for i, buffer in enumerate(sorted(buffers, key=lambda b: b.name)):
        buffer.name = hostile[i % len(hostile)] + "_" * (i // len(hostile))
    for i, kernel in enumerate(program.kernels):  # two kernels of one name, one of none
        kernel.name = "" if i == 0 else "k */ evil"
    source = render_c(program)
    assert source.isascii() and "*/" not in COMMENT.sub(" ", source)  # names are spelled out
    assert "v_expf" in source and "v_NAN" in source and "b_int" in source
    assert_close(Executable(program, source)(x, w), [f(x, w)])


def test_identifiers_are_unique_and_readable_where_possible():
    buffers = ["x", "x\u00e9", "x_e9_", "a.b", "a_2e_b", "", "int"]
    variables = ["i0", "int", "b_x", "", "v_", "NAN", "mc_status", "x\u00e9", "v_x_e9_"]
    ids = Identifiers(buffers)
    spelled = [ids.buffers[b] for b in buffers] + [ids.variables[v] for v in variables]
    assert all(IDENTIFIER.fullmatch(i) for i in spelled) and len(set(spelled)) == len(spelled)
    assert spelled[:5] == ["b_x", "b_x_e9__1", "b_x_e9_", "b_a_2e_b_1", "b_a_2e_b"]
    assert spelled[6:9] == ["b_int", "i0", "v_int"] and ids.buffers["x"] == "b_x"
    assert ids.buffers["new */ name"] == ids.buffers["new */ name"]
    assert IDENTIFIER.fullmatch(ids.variables["\n"])


@given(st.text())
def test_comment_text_never_ends_the_comment(text):
    safe = comment_text(text)
    assert safe.isascii() and safe.isprintable() and "*/" not in safe and "/*" not in safe
    assert "*/" not in f"/* {safe} */"[2:-2]


# ----------------------------------------------------------------------------------------------
# Per-call error status
# ----------------------------------------------------------------------------------------------


def test_error_status_belongs_to_each_call_under_threads():
    """Old code: one static ``mc_status`` for all threads, so good calls raised and bad calls
    returned zeros (about 40% of calls with 5 threads)."""
    power = minicomp.jit(lambda x, y: x ** y)
    n = 1 << 18  # large enough for a parallel loop
    x = (np.arange(n) % 7).astype(np.int32)
    good = np.full(n, 3, np.int32)
    bad = good.copy()
    bad[n // 3] = -1
    expected = x ** good
    assert "omp parallel" in power.inspect(x, good).source
    failures = []

    def worker(index: int) -> None:
        for _ in range(60):
            if index % 2:
                try:
                    power(x, bad)
                    failures.append("a bad call returned")
                except MinicompRuntimeError as exc:
                    if "negative integer powers" not in str(exc):
                        failures.append(str(exc))
            else:
                try:
                    if not np.array_equal(power(x, good), expected):
                        failures.append("a good call gave a wrong answer")
                except MinicompRuntimeError:
                    failures.append("a good call raised")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# ----------------------------------------------------------------------------------------------
# Fork safety
# ----------------------------------------------------------------------------------------------

FORK_SCRIPT = textwrap.dedent("""
    import ctypes, multiprocessing, os, subprocess, sys, threading
    import numpy as np
    import minicomp
    from minicomp.runtime import fork

    def forked(child):
        pid = os.fork()
        if pid == 0:
            os._exit(0 if child() else 1)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    x = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    expected = np.exp(x) * 2.0 - x

    def right(result):
        return np.allclose(result, expected, rtol=1e-5, atol=1e-6)

    # before any OpenMP runtime is loaded, a child may use threads
    assert forked(lambda: not fork.run_serially()) == 0

    # another library's OpenMP threads (not minicomp's) exist in the parent
    other = os.path.join(sys.argv[1], "other_omp.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-fopenmp", "-o", other, "-x", "c", "-"], check=True, text=True,
                   input="double spin(int n) {\\n  double s = 0;\\n#pragma omp parallel for reduction(+:s)\\n"
                         "  for (int i = 0; i < n; i++) s += i;\\n  return s;\\n}\\n")
    ctypes.CDLL(other).spin(1 << 20)

    f = minicomp.jit(lambda x: np.exp(x) * 2.0 - x)
    assert "omp parallel" in f.inspect(x).source

    def child():
        g = minicomp.jit(lambda x: np.tanh(x) + x.sum(axis=0))  # compiled in the child
        return fork.run_serially() and right(f(x)) and np.allclose(g(x), np.tanh(x) + x.sum(axis=0),
                                                                   rtol=1e-5, atol=1e-4)

    assert forked(child) == 0                     # before minicomp ran a kernel
    assert right(f(x)) and not fork.run_serially()  # the parent's OpenMP threads start
    assert forked(child) == 0

    def work(_):
        return bool(right(f(x))) and fork.run_serially()

    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map_async(work, range(4)).get(timeout=60) == [True] * 4

    # a fork while another thread is compiling (holding f's lock): the child compiles anyway
    inside, release = threading.Event(), threading.Event()
    def hold():
        with f._lock:
            inside.set()
            release.wait()
    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait()
    assert forked(lambda: np.allclose(f(x[:7]), np.exp(x[:7]) * 2.0 - x[:7], rtol=1e-5, atol=1e-6)) == 0
    release.set()
    holder.join()
    assert right(f(x))
    print("forks finished")
""")


def test_forked_children_run_kernels_and_finish(tmp_path):
    """Old code: the child's first parallel loop waited forever for the parent's OpenMP threads
    (minicomp's, or another library's), and a child forked while another thread compiled
    waited forever for that thread's lock."""
    script = tmp_path / "fork_children.py"
    script.write_text(FORK_SCRIPT)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="4")  # a thread pool on any machine
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the script and any hung child
        output, _ = process.communicate()
        pytest.fail(f"a forked child hung:\n{output[-3000:]}")
    assert process.returncode == 0 and "forks finished" in output, output[-3000:]


# ----------------------------------------------------------------------------------------------
# Signed zeros
# ----------------------------------------------------------------------------------------------

FLOATS = [np.float16, np.float32, np.float64]


def assert_same_bits(actual, expected) -> None:
    """Equal values, NaN where NumPy has NaN, and the same sign on every zero."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    same = (actual == expected) & (np.signbit(actual) == np.signbit(expected))
    same |= np.isnan(actual) & np.isnan(expected)
    assert same.all(), f"minicomp {actual[~same]} where NumPy gives {expected[~same]}"


def test_numpy_keeps_the_second_operand_on_a_tie_except_in_float16():
    """What the tests below rely on, asked of NumPy itself (arrays and scalars)."""
    for dtype in FLOATS:
        zero, minus = dtype(0.0), dtype(-0.0)
        winner = 0 if dtype == np.float16 else 1
        for fn in (np.maximum, np.minimum):
            for pair in ((minus, zero), (zero, minus)):
                assert np.signbit(fn(*pair)) == np.signbit(pair[winner])
                arrays = fn(np.full(33, pair[0]), np.full(33, pair[1]))
                assert np.signbit(arrays).tolist() == [np.signbit(pair[winner])] * 33


def signed_zero_ties(a, b):
    """maximum and minimum with arrays, a 0-d array and Python scalars, alone and fused."""
    return (np.maximum(a, b), np.minimum(a, b), np.maximum(a, 0.0), np.maximum(0.0, a),
            np.minimum(b[0, 0], a), np.minimum(np.maximum(a, b) * 2.0, -b) * 3.0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_maximum_minimum_signed_zero_ties_match_numpy(dtype):
    """Every pair of -0.0, 0.0, 1, -1, NaN (a row and a column broadcast to 6 x 6), and a
    [64, 70] array of zeros of both signs: a parallel, vectorised kernel."""
    values = np.array([-0.0, 0.0, 1.0, -1.0, np.nan, -0.0], dtype)
    mixed = np.arange(64 * 70).reshape(64, 70)
    for a, b in [(values[:, None], values[None, :]),
                 (np.where(mixed % 3, -0.0, 0.0).astype(dtype), np.where(mixed % 5, 0.0, -0.0).astype(dtype))]:
        with np.errstate(invalid="ignore"):
            expected = signed_zero_ties(a, b)
        for actual, wanted in zip(minicomp.jit(signed_zero_ties)(a, b), expected):
            assert_same_bits(actual, wanted)


@pytest.mark.parametrize("shape", [(2,), (17,), (300,), (5, 40), (40, 5)])
def test_float16_max_min_reductions_keep_numpy_zero(shape, rng):
    """NumPy's float16 max()/min() reduce in order, and on a tie of -0.0 and 0.0 keep the
    earlier element (its float16 loop keeps the first operand): minicomp reduces float16 in
    order too, rows and columns, fused or not (it used to return the later zero).

    float32/64 are not asserted: NumPy reduces them with SIMD lanes whose width depends on the
    CPU, so which zero it returns on such a tie depends on the machine."""
    for _ in range(10):
        x = rng.choice(np.array([0.0, -0.0, -1.0], np.float16), size=shape)
        for fn in (lambda x: x.max(axis=-1), lambda x: x.min(axis=-1), lambda x: x.max(axis=0),
                   lambda x: np.minimum(x.min(axis=0, keepdims=True), 1) * 2):
            assert_same_bits(minicomp.jit(fn)(x), fn(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_signed_zero_ties_in_matmul_epilogues(dtype, rng):
    """``maximum(a @ w, c)`` with ``a @ w`` exactly +0.0 in half the rows and ``c`` -0.0: the
    epilogue of the packed matmul (float32/64) keeps NumPy's zero."""
    a = np.zeros((64, 48), dtype)
    a[::2] = rng.random((32, 48))
    w = rng.random((48, 80)).astype(dtype)  # positive: 0 * w is +0.0, so a @ w is +0.0 exactly
    c = np.full((64, 80), -0.0, dtype)
    for fn in (lambda a, w, c: np.maximum(a @ w, c), lambda a, w, c: np.minimum(c, a @ w),
               lambda a, w, c: np.maximum(c, a @ w)):
        actual, expected = minicomp.jit(fn)(a, w, c), fn(a, w, c)
        zeros = expected == 0
        assert_same_bits(actual[zeros], expected[zeros])
        assert_close(actual, expected)
        if dtype != np.float16:
            assert len(minicomp.jit(fn).inspect(a, w, c).program.kernels) == 1  # one fused kernel
