"""``minicomp fuzz``: the CI run of at least 3,000 random graphs, and tests of the fuzzer itself.

The CI run is split into ``RUNS`` tests (pytest-xdist spreads them over the workers), each
``GRAPHS`` graphs of its own seed through the C target (``minicomp.testing.fuzz``): every op,
all dtypes, odd argument layouts, the default pipeline and a random subset of passes, batched
and through ``minicomp.compile``, compared with the interpreter.

Seeds: a fuzzer that checks the same graphs on every run only guards against regressions; one
with new graphs each run keeps exploring (the suite's old 310 random graphs per run found a
GCC miscompile in about 2% of runs, which a fixed seed either always or never would). So each
session draws a fresh base seed, as the ``rng`` fixture does for inputs, and a failure names
the command that reruns exactly those graphs (``minicomp fuzz --seed S --graphs N``), with the
shrunk reproducer's path. ``MINICOMP_FUZZ_SEED=S`` fixes the base seed. The fuzzer reports no
legal rounding difference as a failure (``test_exact_values_survive_another_rounding``), so a
red run is a bug, not noise.

The fuzzer's own tests use fixed seeds: it catches a planted bug, shrinks it and writes a
reproducer that fails while the bug is there and passes once it is gone; crashes and hangs in
compiled code are attributed to their case; the same seed gives the same graphs in another
process; every argument layout is what it claims to be; the command line works.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings

import minicomp
from minicomp.cli import main
from minicomp.codegen.c import CRenderer
from minicomp import driver as jit
from minicomp.ir import Interpreter
from minicomp.ir.graph import Graph
from minicomp.ir.ops import get_op
from minicomp.testing import fuzz
from minicomp.testing.fuzz import Case, Checker, FuzzOptions, generate_round, run_fuzz
from minicomp.testing.graphs import DISCONTINUOUS_OPS, GeneratedGraph, random_graphs

ROOT = Path(__file__).resolve().parents[1]
# The fuzzer's watchdog ends its whole process when one case runs past --timeout. Run inside the
# pytest worker, a slow moment of a busy machine must not read as a hang: with the default 60 s,
# workers were ended mid-run at a load average of 8 on 2 cores ("node down").
IN_PROCESS_TIMEOUT = 600

RUNS = 8
GRAPHS = 400  # per run: 8 x 400 = 3200 graphs per CI run
BASE_SEED = int(os.environ.get("MINICOMP_FUZZ_SEED") or int.from_bytes(os.urandom(3), "little"))


def test_at_least_3000_graphs_per_ci_run():
    assert RUNS * GRAPHS * 0.95 >= 3000  # each run checks that it ran 95% of its graphs


@pytest.mark.parametrize("run", range(RUNS))
def test_random_graphs_compile_to_what_the_interpreter_computes(run, tmp_path):
    seed = BASE_SEED * RUNS + run
    report = run_fuzz(FuzzOptions(seed=seed, graphs=GRAPHS, out=str(tmp_path), shrink_seconds=60,
                                  max_shrunk=2, timeout=IN_PROCESS_TIMEOUT))
    again = f"minicomp fuzz --seed {seed} --graphs {GRAPHS} --jobs 0   (MINICOMP_FUZZ_SEED={BASE_SEED})"
    assert not report.failures, f"{again}\n{report.summary()}"
    assert report.graphs >= 0.95 * GRAPHS, report.summary()
    assert report.batched and report.single, report.summary()  # both ways of compiling ran
    assert len(report.ops) >= 40, report.summary()  # varied: most of the op table's 48 ops


# ----------------------------------------------------------------------------------------------
# The fuzzer finds, shrinks and reproduces a bug
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def maximum_is_minimum(monkeypatch):
    """A planted bug: every ``maximum`` (and max reduction) the C renderer writes is a minimum."""
    right = CRenderer.function_name

    def wrong(self, call):
        return right(self, call).replace("mc_maximum", "mc_minimum")

    monkeypatch.setattr(CRenderer, "function_name", wrong)
    return lambda: monkeypatch.setattr(CRenderer, "function_name", right)


def run_reproducer(path: str) -> int:
    """Run a reproducer in this process (so that a planted bug applies): its exit status."""
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(path, run_name="__main__")
    return exit_.value.code


def test_a_planted_bug_is_caught_shrunk_and_reproduced(maximum_is_minimum, tmp_path, capsys):
    report = run_fuzz(FuzzOptions(seed=5, graphs=fuzz.ROUND, out=str(tmp_path), shrink_seconds=60,
                                  max_shrunk=1, verify=False))
    assert report.failures and {f.kind for f in report.failures} == {"mismatch"}, report.summary()
    first = report.failures[0]
    assert first.original_ops > first.ops and first.ops <= 5, report.summary()
    assert {"max", "maximum"} & set(first.op_names), first.op_names
    assert first.reproducer and Path(first.reproducer).exists()
    text = Path(first.reproducer).read_text()
    assert "GRAPH = " in text and "PASSES = " in text and "def arguments():" in text
    assert run_reproducer(first.reproducer) == 1  # the bug is there
    maximum_is_minimum()  # undo it
    assert run_reproducer(first.reproducer) == 0
    assert "OK: the compiled graph matches the interpreter" in capsys.readouterr().out
    assert_reproducer_leaves_no_timer(text, tmp_path)


LIVES_ON = """
import runpy, sys, time
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
except SystemExit as exit_:
    print("reproducer exited", exit_.code, flush=True)
time.sleep(3)
print("still alive")
"""


def assert_reproducer_leaves_no_timer(text: str, tmp_path: Path) -> None:
    """A reproducer run in a process that goes on (runpy, as above) must not end that process
    later: its hang timer (faulthandler, exit=True) once outlived it and ended pytest workers
    mid-test, 60 s after this test ("node down: Not properly terminated")."""
    assert "TIMEOUT = 60.0" in text
    quick = tmp_path / "quick_timeout.py"
    quick.write_text(text.replace("TIMEOUT = 60.0", "TIMEOUT = 1.0"))
    result = subprocess.run([sys.executable, "-c", LIVES_ON, str(quick)], capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0 and "still alive" in result.stdout, result.stdout + result.stderr


@pytest.fixture
def fake_target(monkeypatch):
    """Register a target (no C compiler) made from ``make(graph) -> run``; its name."""
    def register(name, make):
        monkeypatch.setitem(jit.TARGETS, name, lambda graph, **options: make(graph))
        return name
    return register


def a_case(text: str, layouts=None, single: bool = False) -> Case:
    graph = Graph.parse(text)
    inputs = [np.arange(node.type.size, dtype=node.dtype).reshape(node.shape) % 3 for node in graph.inputs]
    gen = GeneratedGraph(graph, inputs, lambda *a: None, [True] * len(inputs))
    return Case(gen, tuple(layouts or [("plain",)] * len(inputs)), (), single, number=0)


ADD = """graph g(%x: f32[3,4], %y: f32[3,4]) {
  %add = add(%x, %y) : f32[3,4]
  return %add
}"""


@pytest.mark.parametrize("flaw, kind", [
    ("wrong values", "mismatch"), ("writes its input", "inputs written"), ("raises", "error"),
    ("wrong dtype", "mismatch")])
def test_each_kind_of_failure_is_told(fake_target, flaw, kind):
    def make(graph):
        def run(*args):
            outputs = minicomp.interpret(graph, *args)
            if flaw == "wrong values":
                outputs[0][0, 0] += 1
            elif flaw == "writes its input":
                args[1][0, 0] = 7
            elif flaw == "raises":
                raise RuntimeError("the backend fell over")
            elif flaw == "wrong dtype":
                outputs[0] = outputs[0].astype(np.float64)
            return outputs
        return run

    checker = Checker(fake_target("fuzz-test-" + flaw.replace(" ", "-"), make), timeout=IN_PROCESS_TIMEOUT)
    case = a_case(ADD, [("transposed", (1, 0)), ("plain",)])
    [failure] = checker.check([case])
    assert failure is not None and failure.kind == kind, failure
    checker.close()


def test_a_correct_target_passes(fake_target):
    checker = Checker(fake_target("fuzz-test-correct", lambda graph: minicomp.Interpreter(graph).run),
                      timeout=IN_PROCESS_TIMEOUT)
    layouts = [[(kind, *params), ("plain",)] for kind, *params in
               [("plain",), ("transposed", (1, 0)), ("strided", (2, 3)), ("reversed", (True, False)),
                ("misaligned", 3), ("byteswapped",), ("broadcast", 0)]]
    layouts += [[("plain",), ("alias", 0)], [("plain",), ("overlap", 0, 5)]]
    assert checker.check([a_case(ADD, layout) for layout in layouts]) == [None] * len(layouts)
    checker.close()


def test_the_gpu_simt_target_takes_every_layout():
    """``--target gpu-simt-interp`` (the GPU schedules' SIMT form in the loop interpreter, a jit
    target): every argument layout reaches it as it reaches compiled C."""
    checker = Checker("gpu-simt-interp", timeout=IN_PROCESS_TIMEOUT)
    layouts = [[(kind, *params), ("plain",)] for kind, *params in
               [("plain",), ("transposed", (1, 0)), ("strided", (2, 3)), ("reversed", (True, False)),
                ("misaligned", 3), ("byteswapped",), ("broadcast", 0)]]
    layouts += [[("plain",), ("alias", 0)], [("plain",), ("overlap", 0, 5)]]
    assert checker.check([a_case(ADD, layout) for layout in layouts]) == [None] * len(layouts)
    runs = 2 * len(layouts)  # compiled twice: no passes, then the default pipeline
    assert checker.stats["single"] == checker.schedules["gpu_threads"] == runs, (checker.stats, checker.schedules)
    checker.close()


def test_a_planted_bug_in_the_simt_form_is_caught_and_reproduced(monkeypatch, tmp_path, capsys):
    """The loop interpreter's ``maximum`` made a minimum: only the ``gpu-simt-interp`` target
    sees it; the reproducer names that target and fails until the bug is gone."""
    from minicomp.testing import loop_interpreter

    monkeypatch.setitem(loop_interpreter._CALLS, "mc_maximum", loop_interpreter._CALLS["mc_minimum"])
    report = run_fuzz(FuzzOptions(seed=5, graphs=fuzz.ROUND, target="gpu-simt-interp", out=str(tmp_path),
                                  shrink_seconds=20, max_shrunk=1, verify=False))
    assert report.failures and {f.kind for f in report.failures} == {"mismatch"}, report.summary()
    first = report.failures[0]
    assert {"max", "maximum"} & set(first.op_names), first.op_names
    text = Path(first.reproducer).read_text()
    assert "TARGET = 'gpu-simt-interp'" in text
    assert run_reproducer(first.reproducer) == 1  # the bug is there
    monkeypatch.undo()
    assert run_reproducer(first.reproducer) == 0
    assert "OK: the compiled graph matches the interpreter" in capsys.readouterr().out


def test_fuzzing_the_cuda_target_without_a_gpu_says_what_is_missing(monkeypatch, capsys, tmp_path):
    """``minicomp fuzz --target cuda`` where pycuda or a GPU is missing stops at once with a
    ``MinicompError`` (no traceback, no failure per graph, no worker started)."""
    from minicomp.errors import MinicompError
    from minicomp.testing import backends

    monkeypatch.setattr(backends, "cuda_available", lambda: "no NVIDIA GPU (or no driver) on this machine")
    with pytest.raises(MinicompError, match="fuzzing target 'cuda' runs every graph on an NVIDIA GPU, but no "
                                            "NVIDIA GPU"):
        run_fuzz(FuzzOptions(seed=1, graphs=1, target="cuda", out=str(tmp_path)))
    code = main(["fuzz", "--target", "cuda", "--graphs", "1", "--jobs", "2", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and captured.err.startswith("minicomp: error: fuzzing target 'cuda'"), captured
    assert "Traceback" not in captured.err + captured.out and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# Arguments are laid out as claimed
# ----------------------------------------------------------------------------------------------


def test_every_layout_is_what_it_claims():
    case = a_case(ADD)
    v0, v1 = case.gen.inputs

    def arguments(*layouts):
        case.layouts = layouts
        return case.arguments()[0]

    a, _ = arguments(("plain",), ("plain",))
    assert a.flags.c_contiguous and a.base is not None and a.base.size > a.size  # in a guard buffer
    a, _ = arguments(("transposed", (1, 0)), ("plain",))
    assert not a.flags.c_contiguous and a.flags.f_contiguous
    a, _ = arguments(("strided", (2, 3)), ("plain",))
    assert a.strides == (2 * 3 * 4 * 4, 3 * 4)
    a, _ = arguments(("reversed", (True, False)), ("plain",))
    assert a.strides[0] < 0
    a, _ = arguments(("misaligned", 3), ("plain",))
    assert not a.flags.aligned and a.ctypes.data % 4 == 3 % 4
    a, _ = arguments(("byteswapped",), ("plain",))
    assert not a.dtype.isnative
    a, _ = arguments(("broadcast", 0), ("plain",))
    assert a.strides[0] == 0
    np.testing.assert_array_equal(a, np.broadcast_to(v0[:1], v0.shape))
    a, b = arguments(("plain",), ("alias", 0))
    assert b is a
    a, b = arguments(("plain",), ("overlap", 0, 5))
    assert np.shares_memory(a, b) and b[0, 0] == a[1, 1]
    for layouts in [("plain",), ("transposed", (1, 0)), ("strided", (2, 3)),
                    ("reversed", (True, True)), ("misaligned", 1), ("byteswapped",)]:
        a, _ = arguments(layouts, ("plain",))
        np.testing.assert_array_equal(a, v0)  # the same values, however they lie


def test_the_generated_layouts_cover_every_kind():
    kinds = {layout[0] for r in range(6) for case in generate_round(11, r) for layout in case.layouts}
    assert kinds == set(fuzz.LAYOUTS), sorted(set(fuzz.LAYOUTS) - kinds)


# ----------------------------------------------------------------------------------------------
# No false alarms: what discontinuous ops see is exact
# ----------------------------------------------------------------------------------------------

# ops whose float results depend on how they are computed (order, precision, libm, FMA)
REROUNDED = {"sum", "mean", "matmul", "conv2d", "mul", "exp", "log", "sqrt", "rsqrt", "tanh",
             "sigmoid", "erf", "sin", "cos", "div", "pow", "reciprocal"}


class OtherRounding(Interpreter):
    """The interpreter, but every rounding-sensitive float op rounds the other way wherever
    it rounds at all (its result computed in long double first): a valid implementation that
    differs from NumPy's in the last bit as much as any can. Keeps every value."""

    def run_node(self, node, values):
        if node.dtype.kind == "f" and node.op in REROUNDED:
            exact = self.wide(node, values, np.longdouble)
            rounded = exact.astype(node.dtype)
            other_way = np.nextafter(rounded, np.where(rounded > exact, -np.inf, np.inf).astype(node.dtype))
            result = np.where(rounded == exact, rounded, other_way)
        else:
            result = super().run_node(node, values)
        self.values[node.name] = result
        return result

    @staticmethod
    def wide(node, values, dtype):
        """The node's value computed in ``dtype`` (float64 where its reference refuses it)."""
        wide = [v.astype(dtype) if v.dtype.kind == "f" else v for v in values]
        try:
            return np.asarray(get_op(node.op).reference(*wide, **node.attrs)).astype(dtype)
        except minicomp.MinicompError:  # erf, sigmoid, rsqrt ask minicomp's dtype rules
            return OtherRounding.wide(node, values, np.float64) if dtype != np.float64 else None


class Recorder(Interpreter):
    def run_node(self, node, values):
        result = super().run_node(node, values)
        self.values[node.name] = result
        return result


@settings(max_examples=40)
@given(random_graphs(max_size=4096, infinities=True))
def test_exact_values_survive_another_rounding(gen):
    """What the generator calls exact (all that discontinuous ops read) does not change when
    sums, products and transcendentals round the other way; so the fuzzer cannot report a
    legal rounding difference as a bug."""
    runs = []
    for interpreter in (Recorder(gen.graph), OtherRounding(gen.graph)):
        interpreter.values = {n.name: v for n, v in zip(gen.graph.inputs, gen.inputs)}
        interpreter.run(*gen.inputs)
        runs.append(interpreter.values)
    for node in gen.graph.nodes():
        if node.name in gen.exact:
            np.testing.assert_array_equal(runs[0][node.name], runs[1][node.name], err_msg=node.name)
        float_to_int = node.op == "cast" and node.operands[0].dtype.kind == "f" and node.dtype.kind != "f"
        if node.op in DISCONTINUOUS_OPS - {"cast"} or float_to_int:
            assert all(o.name in gen.exact for o in node.operands), node


# ----------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------

FINGERPRINTS = """
import json, sys
from minicomp.testing.fuzz import generate_round
print(json.dumps([c.fingerprint() for c in generate_round(int(sys.argv[1]), int(sys.argv[2]))]))
"""


def test_the_same_seed_gives_the_same_graphs_in_another_process():
    mine = [c.fingerprint() for c in generate_round(7, 3)]
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", FINGERPRINTS, "7", "3"], capture_output=True,
                            text=True, env=env, check=True)
    assert json.loads(result.stdout) == mine
    assert len(set(mine)) == len(mine) == fuzz.ROUND
    assert not set(mine) & {c.fingerprint() for c in generate_round(8, 3)}


def test_workers_share_the_rounds_out(tmp_path):
    """``--jobs 2``: worker 1 runs rounds 1, 3, ... and numbers graphs as a single run would."""
    options = FuzzOptions(seed=2, graphs=2 * fuzz.ROUND + 5, out=str(tmp_path), timeout=IN_PROCESS_TIMEOUT)
    report = run_fuzz(options, worker=1, workers=2)
    assert report.graphs == fuzz.ROUND and not report.failures


# ----------------------------------------------------------------------------------------------
# The command line; crashes and hangs
# ----------------------------------------------------------------------------------------------


def test_the_command_runs_graphs_and_says_so(capsys, tmp_path):
    code = main(["fuzz", "--graphs", "32", "--seed", "4", "--jobs", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "--seed 4: 32 graphs" in out and "failures: 0" in out and "ops covered:" in out


def test_the_command_fails_and_names_the_reproducer(maximum_is_minimum, capsys, tmp_path):
    code = main(["fuzz", "--graphs", "32", "--seed", "5", "--jobs", "0", "--shrink-seconds", "0",
                 "--timeout", str(IN_PROCESS_TIMEOUT),
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert "mismatch" in out and str(tmp_path / "fuzz-5-") in out


# generated code that hangs in double exp and crashes in double log (math.h's own declarations
# come first, so only the calls in the generated code are replaced)
BROKEN_LIBM = """#include <math.h>
#define exp(x) ({ volatile int mc_spin = 1; while (mc_spin) {} 0.0; })
#define log(x) (*(volatile double *)0)
"""


def test_a_hang_in_compiled_code_is_caught_and_reproduced(tmp_path):
    doubles = [c.number for c in generate_round(4, 0) if any(
        n.op in ("exp", "log") and n.dtype == np.float64 for n in c.graph.op_nodes())]
    assert doubles, "seed 4 no longer draws a float64 exp or log in its first round: pick another"
    header = tmp_path / "broken_libm.h"
    header.write_text(BROKEN_LIBM)
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               MINICOMP_CFLAGS=f"-O1 -fopenmp -include {header}")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "minicomp", "fuzz", "--graphs", "32", "--seed", "4", "--jobs", "1",
               "--timeout", "2", "--shrink-seconds", "0", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failures: 1 (hang 1)" in result.stdout or "failures: 1 (crash 1)" in result.stdout, result.stdout
    [reproducer] = out.glob("fuzz-4-*.py")
    assert str(reproducer) in result.stdout and "exits 1: reproduces" in result.stdout
    rerun = subprocess.run([sys.executable, str(reproducer)], capture_output=True, env=env, timeout=120)
    assert rerun.returncode != 0


def test_a_compiler_error_lands_on_its_program(monkeypatch):
    """A batch the C compiler refuses is split up, so the error names the one bad program."""
    right = CRenderer.function_name
    monkeypatch.setattr(CRenderer, "function_name",
                        lambda self, call: right(self, call).replace("mc_maximum", "mc_maximum +"))
    good = a_case(ADD)
    bad = a_case(ADD.replace("add(", "maximum(").replace("%add", "%maximum"))
    checker = Checker(timeout=IN_PROCESS_TIMEOUT)
    ok, failure = checker.check([good, bad])
    assert ok is None and failure.kind == "error" and failure.stage == "C compiler", failure
    assert "error" in failure.message
    checker.close()
