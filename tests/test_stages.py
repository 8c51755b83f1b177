"""The loop-level pipeline (``minicomp.stages``): named stages run in order, timed, printable,
some optional, each loop stage's program verified; ``verify_program`` names what is broken;
``jit(...).inspect()`` shows every stage.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import minicomp
from minicomp import TensorType, stages
from minicomp.errors import MinicompError
from minicomp.ir.loops import Allocate, Block, Buffer, Declare, For, Load, Store, Var, const
from minicomp.ir.verify_loops import LoopIRError, verify_kernel, verify_program
from minicomp.lower.program import Program, lower
from minicomp.passes.pipeline import run_pipeline
from minicomp.runtime.executable import Executable
from minicomp.stages import LOOP_STAGES, STAGES, Library, Source, loop_program, run_stages, stage_names
from minicomp.testing import assert_close


def gelu_rows(x, b):
    h = np.tanh(x + b)
    return h / h.sum(axis=-1, keepdims=True)


def optimised(fn, *arrays):
    return run_pipeline(minicomp.trace(fn, *arrays))[0]


@pytest.fixture
def args(rng):
    return [rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


def test_the_stages_in_pipeline_order():
    assert list(STAGES) == ["lower", "schedule", "simplify_indices", "render", "compile", "load"]
    assert LOOP_STAGES == ("lower", "schedule", "simplify_indices")
    for name, fn in STAGES.items():  # each a plain function with a contract docstring
        doc = fn.__doc__
        assert "Requires" in doc and "Guarantees" in doc and "->" in doc, name


def test_every_stage_runs_and_the_last_one_runs_the_graph(args):
    graph = optimised(gelu_rows, *args)
    run, report = run_stages(graph)
    assert isinstance(run, Executable)
    assert_close(run(*args), [gelu_rows(*args)])
    assert [r.name for r in report.records] == list(STAGES)
    assert all(r.milliseconds >= 0 and not r.skipped for r in report.records)
    assert isinstance(report.result("render"), Source) and "minicomp_entry" in report.result("render").text
    assert isinstance(report.result("compile"), Library) and report.result("compile").path.exists()
    assert list(report.programs()) == list(LOOP_STAGES)
    text = str(report)
    assert text.splitlines()[0].split() == ["stage", "made", "ms"]
    assert "1 kernel" in text and "lines of c" in text


def test_stop_after_and_disable(args):
    graph = optimised(gelu_rows, *args)
    program, report = run_stages(graph, stop_after="schedule")
    assert isinstance(program, Program) and [r.name for r in report.records] == ["lower", "schedule"]
    source, report = run_stages(graph, stop_after="render", disable=["schedule", "simplify_indices"])
    assert isinstance(source, Source) and str(source) == source.text
    assert [(r.name, r.skipped) for r in report.records] == [
        ("lower", False), ("schedule", True), ("simplify_indices", True), ("render", False)]
    assert "(disabled)" in str(report)
    assert stage_names("render", ["schedule"]) == ["lower", "simplify_indices", "render"]
    with pytest.raises(MinicompError, match="unknown stage 'nosuch'; the stages are lower, schedule"):
        run_stages(graph, stop_after="nosuch")
    with pytest.raises(MinicompError, match=r"stage\(s\) \['render'\] cannot be left out"):
        run_stages(graph, disable=["render"])


def test_a_disabled_stage_hands_on_what_it_was_given(args):
    graph = optimised(gelu_rows, *args)
    plain = loop_program(graph, stop_after="lower")
    unscheduled = loop_program(graph, disable=["schedule", "simplify_indices"])
    assert str(unscheduled) == str(plain)
    assert str(loop_program(graph)) == str(run_stages(graph, stop_after="simplify_indices")[0])
    with pytest.raises(ValueError, match="stop_after must be one of lower, schedule, simplify_indices"):
        loop_program(graph, stop_after="render")


def test_print_between_shows_each_stage(args):
    graph = optimised(gelu_rows, *args)
    printed = []
    run_stages(graph, print_between=True, printer=printed.append)
    assert [p.splitlines()[0] for p in printed] == [f"// ---- after {name} ----" for name in STAGES]
    assert "kernel " in printed[0] and "int minicomp_entry(void **args)" in printed[3]
    assert printed[4].startswith("// ---- after compile ----\nlibrary ")
    assert printed[5] == f"// ---- after load ----\nexecutable {graph.name}(x, b) -> 1 output(s), from " \
        + printed[4].split("library ")[1]


def test_a_stage_that_breaks_the_program_is_named(args, monkeypatch):
    graph = optimised(gelu_rows, *args)

    def forgets_a_loop(program, target):  # every loop body without its loop
        kernels = [replace(k, body=_unlooped(k.body)) for k in program.kernels]
        return replace(program, kernels=kernels)

    monkeypatch.setitem(stages.STAGES, "simplify_indices", forgets_a_loop)
    with pytest.raises(LoopIRError, match=r"stage 'simplify_indices' left a broken program: kernel \w+: i\d "
                                          r"is used outside any loop or declaration of it"):
        run_stages(graph)
    assert isinstance(loop_program(graph, stop_after="schedule"), Program)  # the stages before it are fine


def _unlooped(stmt):
    if isinstance(stmt, For):
        return _unlooped(stmt.body)
    if isinstance(stmt, Block):
        return Block([_unlooped(s) for s in stmt.stmts])
    return stmt


def test_the_c_target_runs_the_stages(args, monkeypatch):
    """jit's "c" target is ``stages.build``: a stage replaced in ``STAGES`` is the one it runs."""
    ran = []
    real = stages.STAGES["schedule"]
    monkeypatch.setitem(stages.STAGES, "schedule", lambda p, t: ran.append(p) or real(p, t))
    run = minicomp.compile(minicomp.trace(gelu_rows, *args), target="c")  # (jit could find it in the program cache)
    assert_close(run(*args), [gelu_rows(*args)])
    assert len(ran) == 1


# ----------------------------------------------------------------------------------------------
# verify_program
# ----------------------------------------------------------------------------------------------


def test_every_workload_passes_verify_program_after_every_loop_stage():
    from minicomp.workloads import WORKLOADS

    for name, workload in WORKLOADS.items():
        graph = minicomp.trace(workload.fn, *[TensorType(s, "f32") for s in workload.shapes["cpu"].values()])
        for disable in ((), ("fusion",)):
            _, report = run_stages(run_pipeline(graph, disable=disable)[0], stop_after="simplify_indices")
            assert list(report.programs()) == list(LOOP_STAGES), name  # each verified as it ran


def _kernel(body, inputs=None, output=None):
    x, out = Buffer("x", np.dtype(np.float32), (4,)), Buffer("out", np.dtype(np.float32), (4,))
    program = lower(minicomp.trace(lambda v: v + 1, np.zeros(4, np.float32)))
    kernel = replace(program.kernels[0], inputs=inputs or [x], output=output or out, body=body(x, out))
    return program, kernel


def test_verify_kernel_accepts_what_c_accepts():
    i, acc = Var("i"), Var("acc", np.dtype(np.float32))
    tmp = Buffer("tmp", np.dtype(np.float32), (4,))

    def body(x, out):  # a scalar declared before a loop is seen inside it; an allocated buffer is usable
        return Block([Allocate(tmp), Declare(acc, const(0, np.float32)),
                      For(i, 4, Block([Store(tmp, i, Load(x, i)), Store(out, i, Load(tmp, i))]))])

    verify_kernel(_kernel(body)[1])


@pytest.mark.parametrize("body, message", [
    (lambda x, out: For(Var("i"), 4, Store(out, Var("j"), Load(x, Var("i")))),
     "j is used outside any loop or declaration of it"),
    (lambda x, out: Block([For(Var("i"), 4, Store(out, Var("i"), Load(x, Var("i")))), Store(out, Var("i"), const(0, np.float32))]),
     "i is used outside any loop"),  # a loop variable after its loop
    (lambda x, out: Block([For(Var("i"), 4, Declare(Var("s", np.dtype(np.float32)), Load(x, Var("i")))),
                           Store(out, const(0, np.int64), Var("s", np.dtype(np.float32)))]),
     "s is used outside any loop"),  # a scalar declared inside a loop, read after it
    (lambda x, out: For(Var("i"), 4, Store(out, Var("i"), Load(Buffer("y", np.dtype(np.float32), (4,)), Var("i")))),
     "it uses y, neither a parameter nor allocated"),
    (lambda x, out: For(Var("i"), 4, Store(Buffer("z", np.dtype(np.float32), (4,)), Var("i"), Load(x, Var("i")))),
     "it stores to z, neither a parameter nor allocated"),
])
def test_verify_kernel_names_what_is_wrong(body, message):
    with pytest.raises(LoopIRError, match=message):
        verify_kernel(_kernel(body)[1])


def test_verify_program_checks_kernel_parameters_against_the_program():
    program = lower(minicomp.trace(lambda v: np.exp(v) + 1, np.zeros(4, np.float32)))
    verify_program(program)
    stray = Buffer("stray", np.dtype(np.float32), (4,))
    kernels = [replace(program.kernels[0], inputs=program.kernels[0].inputs + [stray])] + program.kernels[1:]
    with pytest.raises(LoopIRError, match="parameter stray is neither a buffer of the program nor in its workspace"):
        verify_program(replace(program, kernels=kernels))


# ----------------------------------------------------------------------------------------------
# jit(...).inspect()
# ----------------------------------------------------------------------------------------------


def test_inspect_shows_every_stage(args):
    f = minicomp.jit(gelu_rows)
    shown = f.inspect(*args)
    text = str(shown)
    headers = [line for line in text.splitlines() if line.startswith("== ")]
    assert headers == ["== traced graph ==", "== passes ==", "== graph ==", "== loops after lower ==",
                       "== loops after schedule ==", "== loops == (after simplify_indices: what is rendered)",
                       "== source =="]
    assert shown.stage("traced") is shown.traced and shown.stage("graph") is shown.graph
    assert shown.stage("simplify_indices") is shown.program and shown.stage("render") == shown.source
    graph = shown.graph
    assert str(shown.stage("lower")) == str(loop_program(graph, stop_after="lower"))
    assert str(shown.stage("schedule")) == str(loop_program(graph, stop_after="schedule"))
    with pytest.raises(MinicompError, match="no stage 'nosuch' in this inspection; it has traced, graph, lower"):
        shown.stage("nosuch")


def test_inspect_of_the_numpy_target_has_no_loop_stages(args):
    shown = minicomp.jit(gelu_rows, target="numpy").inspect(*args)
    assert shown.program is None and shown.loop_stages == {} and "== loops" not in str(shown)
    with pytest.raises(MinicompError, match="it has traced, graph$"):
        shown.stage("lower")
