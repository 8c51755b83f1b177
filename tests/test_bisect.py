"""Bisection names the first pass, or loop stage, that changes a function's results.

Deliberately wrong passes are registered for the tests (``register_pass(..., default=False)``,
so the default pipeline never sees them) and removed again afterwards: one replacing ``add`` by
``sub`` (wrong everywhere), one raising, one breaking the graph, and one planning overlapping
storage for values alive at the same time (wrong only in compiled code: the interpreter does
not use the plan, so only ``target="c"`` catches it). Deliberately wrong loop stages replace a
stage of ``minicomp.stages.STAGES`` for one test (``monkeypatch``): a schedule that adds 1 to
every float it stores, one that raises, and one that leaves a loop variable undeclared.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from dataclasses import replace

import minicomp
from minicomp import Graph, TensorType, stages
from minicomp.cli import main
from minicomp.driver import TARGETS, register_target
from minicomp.errors import MinicompError
from minicomp.ir.loops import Binary, Block, For, If, Store, Var, const
from minicomp.stages import LOOP_STAGES
from minicomp.tools.bisect import TRACED, BisectResult, bisect, random_array
from minicomp.passes.pipeline import DEFAULT_PIPELINE, PASSES, pipeline_names, register_pass


def _add_to_sub(graph: Graph) -> Graph:
    for node in graph.op_nodes():
        if node.op == "add":
            wrong = graph.add_op("sub", node.operands, {}, node.loc, f"{node.name}_wrong")
            node.replace_all_uses_with(wrong)
            graph.erase(node)
    return graph


def _raises(graph: Graph) -> Graph:
    raise RuntimeError("this pass always fails")


def _breaks_the_graph(graph: Graph) -> Graph:
    graph.outputs = []  # verify: a graph needs an output
    return graph


def _overlapping_storage(graph: Graph) -> Graph:
    """A wrong memory plan: every intermediate at offset 0 (the real pass: ``memory_plan``)."""
    outputs = set(graph.outputs)
    for node in graph.op_nodes():
        if node not in outputs:
            node.meta["storage"] = (0, node.type.nbytes)
    return graph


WRONG_PASSES = {"test_add_to_sub": _add_to_sub, "test_raises": _raises,
                "test_breaks_graph": _breaks_the_graph, "test_overlapping_storage": _overlapping_storage}


@pytest.fixture
def wrong_passes():
    """Register the wrong passes for one test; leave the registry as it was."""
    saved_pipeline = list(pipeline_names())  # (loads the real passes first: DEFAULT_PIPELINE fills on first use)
    for name, fn in WRONG_PASSES.items():
        register_pass(name, default=False)(fn)
    try:
        yield
    finally:
        for name in WRONG_PASSES:
            PASSES.pop(name, None)
        DEFAULT_PIPELINE[:] = saved_pipeline


def layernorm(x, g, b):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) * (x - mean)).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * g + b


LN_ARGS = (TensorType((5, 7), "f32"), TensorType((7,), "f32"), TensorType((7,), "f32"))


def with_pass_after(name: str, after: str) -> list[str]:
    names = pipeline_names()
    return names[:names.index(after) + 1] + [name] + names[names.index(after) + 1:]


def test_no_pass_changes_a_correct_pipeline():
    result = bisect(layernorm, *LN_ARGS)
    assert result.first_bad_pass is None and result.ok and result.baseline_ok
    assert result.first_bad_stage is None
    assert result.passes == pipeline_names() and result.loop_stages == list(LOOP_STAGES)
    assert [s.stage for s in result.stages] == [TRACED] + result.passes + list(LOOP_STAGES)
    assert [s.target for s in result.stages if s.stage in LOOP_STAGES] == ["c"] * len(LOOP_STAGES)
    assert result.reference.startswith("NumPy (the function run eagerly)")
    assert "no pass changed the results, nor any loop stage (lower, schedule, simplify_indices)" in str(result)


def test_names_the_wrong_pass_on_both_targets(wrong_passes):
    passes = with_pass_after("test_add_to_sub", "cse")
    result = bisect(layernorm, *LN_ARGS, passes=passes, target="c")
    assert result.first_bad_pass == "test_add_to_sub"
    assert result.targets == ("numpy", "c")
    assert {(s.stage, s.target) for s in result.failures} == {("test_add_to_sub", "numpy"),
                                                              ("test_add_to_sub", "c")}
    stages = [s.stage for s in result.stages if s.target == "c"]
    assert stages == [TRACED] + passes[:passes.index("test_add_to_sub") + 1]  # it stops there
    assert not result.ok and result.baseline_ok
    text = str(result)
    assert "first pass that changes the result: test_add_to_sub" in text
    assert "-  %add = add(" in text and "sub(" in text  # the diff of the graph text
    assert result.first_bad_stage == "test_add_to_sub" and result.first_bad_loop_stage is None
    assert not any(s.stage in LOOP_STAGES for s in result.stages)  # a wrong graph stops before lowering
    assert result.graph_before is not None and "sub" in [n.op for n in result.graph_after.op_nodes()]


def test_the_wrong_pass_first_in_the_pipeline(wrong_passes):
    result = bisect(lambda x: x + 1, np.ones((3, 4), np.float32), passes=["test_add_to_sub", "fusion"])
    assert result.first_bad_pass == "test_add_to_sub"
    assert [s.stage for s in result.stages] == [TRACED, "test_add_to_sub"]  # it stops there


def test_a_pass_that_raises_or_breaks_the_graph_is_named(wrong_passes):
    result = bisect(layernorm, *LN_ARGS, passes=["cse", "test_raises", "fusion"])
    assert result.first_bad_pass == "test_raises" and result.graph_after is None
    assert "RuntimeError: this pass always fails" in result.failures[0].message
    result = bisect(layernorm, *LN_ARGS, passes=["test_breaks_graph"])
    assert result.first_bad_pass == "test_breaks_graph"
    assert "left a broken graph" in result.failures[0].message


def test_only_compiled_code_sees_a_wrong_memory_plan(wrong_passes):
    def f(x):
        return (np.exp(x) + 1) * np.sin(x)  # exp+1 and sin alive together: they may not share

    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)
    on_the_interpreter = bisect(f, x, passes=["test_overlapping_storage"])  # the interpreter has no plan:
    assert on_the_interpreter.first_bad_pass is None  # the pass looks right, and lowering is blamed
    assert on_the_interpreter.first_bad_loop_stage == "lower" and "--target c runs each pass" in str(on_the_interpreter)
    result = bisect(f, x, passes=["test_overlapping_storage"], target="c")
    assert result.first_bad_pass == "test_overlapping_storage"
    assert [(s.target, s.ok) for s in result.stages if s.stage == "test_overlapping_storage"] == [
        ("numpy", True), ("c", False)]


def test_a_graph_is_checked_against_the_interpreter(wrong_passes):
    graph = minicomp.trace(layernorm, *LN_ARGS)
    result = bisect(graph, passes=["cse", "test_add_to_sub", "fusion", "memory_plan"])
    assert result.reference == "the unoptimised graph run by the interpreter"
    assert result.first_bad_pass == "test_add_to_sub"
    assert bisect(graph, passes=["fusion"]).ok


def test_inputs_respect_dtypes():
    def f(x, n, keep):
        return np.where(keep, x * n, -x), n + 1

    args = (TensorType((3, 4), "f64"), TensorType((3, 4), "i32"), TensorType((4,), "bool"))
    result = bisect(f, *args, target="c", trials=3)
    assert result.ok and result.trials == 3
    rng = np.random.default_rng(0)
    for type_ in args:
        a = random_array(type_, rng)
        assert a.dtype == type_.dtype and a.shape == type_.shape


def test_a_wrong_backend_is_not_blamed_on_a_pass():
    @register_target("test_off_by_one")
    def off_by_one(graph, **options):
        run = minicomp.Interpreter(graph).run
        return lambda *args: [out + 1 for out in run(*args)]

    try:
        result = bisect(lambda x: x * 2, TensorType((3,), "f32"), targets=["numpy", "test_off_by_one"])
    finally:
        TARGETS.pop("test_off_by_one")
    assert not result.baseline_ok and result.first_bad_pass is None
    assert [s.stage for s in result.stages] == [TRACED, TRACED]
    assert "the traced graph already differs" in str(result)


def test_float32_rounding_that_numpy_shares_is_not_blamed():
    """A backend more accurate than NumPy's float32 (here: float64 inside) differs from NumPy
    beyond ``assert_close``'s tolerance on a cancelling sum; judged against the function run in
    float64 it is fine. A backend that is really wrong (off by 0.01) is still caught."""
    def cancelling(a, b):
        return (a + b) - a

    @register_target("test_in_float64")
    def in_float64(graph, **options):
        return lambda *args: [np.asarray(a.astype(np.float64) + b.astype(np.float64) - a.astype(np.float64),
                                         np.float32) for a, b in [args]]

    @register_target("test_slightly_off")
    def slightly_off(graph, **options):
        run = minicomp.Interpreter(graph).run
        return lambda *args: [out + np.float32(0.01) for out in run(*args)]

    rng = np.random.default_rng(0)
    a = (rng.standard_normal(1000) * 1e4).astype(np.float32)
    b = rng.standard_normal(1000).astype(np.float32)
    try:
        with pytest.raises(AssertionError):  # what plain assert_close against NumPy would say
            minicomp.testing.assert_close(TARGETS["test_in_float64"](None)(a, b)[0], cancelling(a, b))
        accurate = bisect(cancelling, a, b, targets=["numpy", "test_in_float64"], trials=2)
        wrong = bisect(cancelling, a, b, targets=["numpy", "test_slightly_off"], trials=1)
    finally:
        TARGETS.pop("test_in_float64")
        TARGETS.pop("test_slightly_off")
    assert accurate.ok, str(accurate)
    assert not wrong.baseline_ok and "NumPy's own" in str(wrong)


def test_weights_are_drawn_as_the_workloads_draw_them():
    """A 2-D ``w*`` argument is scaled by 1/sqrt(fan-in), so x @ w stays O(1) (not O(sqrt(1024)))."""
    rng = np.random.default_rng(0)
    w = random_array(TensorType((1024, 256), "f32"), rng, "w_fc")
    x = random_array(TensorType((64, 1024), "f32"), rng, "x")
    assert 0.8 < np.std(x @ w) < 1.2 and 0.8 < np.std(x) < 1.2


def test_the_result_type():
    result = bisect(lambda x: np.exp(x), np.zeros(3, np.float32), passes=[])
    assert isinstance(result, BisectResult) and result.ok and result.passes == []


# ----------------------------------------------------------------------------------------------
# Loop stages
# ----------------------------------------------------------------------------------------------


def _plus_one(stmt):
    """``stmt`` with 1 added to every float it stores."""
    if isinstance(stmt, Store) and stmt.value.dtype.kind == "f":
        one = const(1, stmt.value.dtype)
        return Store(stmt.buffer, stmt.index, Binary("+", stmt.value, one, stmt.value.dtype))
    if isinstance(stmt, For):
        return replace(stmt, body=_plus_one(stmt.body))
    if isinstance(stmt, Block):
        return Block([_plus_one(s) for s in stmt.stmts])
    if isinstance(stmt, If):
        return If(stmt.cond, _plus_one(stmt.then), None if stmt.otherwise is None else _plus_one(stmt.otherwise))
    return stmt


@pytest.fixture
def wrong_schedule(monkeypatch):
    """Make the schedule stage add 1 to every float stored; return the real one."""
    real = stages.STAGES["schedule"]

    def schedule_plus_one(program, target):
        program = real(program, target)
        return replace(program, kernels=[replace(k, body=_plus_one(k.body)) for k in program.kernels])

    monkeypatch.setitem(stages.STAGES, "schedule", schedule_plus_one)
    return real


def tanh_twice(x, b):
    return np.tanh(x + b) * 2


TANH_ARGS = (TensorType((4, 8), "f32"), TensorType((8,), "f32"))


def test_names_the_wrong_loop_stage(wrong_schedule):
    result = bisect(tanh_twice, *TANH_ARGS)
    assert result.first_bad_pass is None and result.first_bad_loop_stage == "schedule"
    assert result.first_bad_stage == "schedule" and result.baseline_ok and not result.ok
    assert [(s.stage, s.ok) for s in result.stages if s.stage in LOOP_STAGES] == [("lower", True), ("schedule", False)]
    assert all(s.ok for s in result.stages if s.stage not in LOOP_STAGES)  # every pass
    text = str(result)
    assert "first loop stage that changes the result: schedule (the graph after the last pass was right" in text
    assert "--- before schedule" in text and "+++ after schedule" in text and "+ 1.0" in text  # the loop IR diff
    assert "kernel " in str(result.program_before) and result.program_after is not None


def test_a_wrong_loop_stage_under_the_c_target_is_found_on_the_traced_graph(wrong_schedule):
    """The c target runs every loop stage, so the traced graph is already wrong there: the loop
    stages are then walked on the traced graph (the interpreter ran it right)."""
    result = bisect(tanh_twice, *TANH_ARGS, target="c")
    assert not result.baseline_ok and result.first_bad_pass is None
    assert [(s.stage, s.target, s.ok) for s in result.stages] == [
        (TRACED, "numpy", True), (TRACED, "c", False), ("lower", "c", True), ("schedule", "c", False)]
    assert result.first_bad_loop_stage == "schedule"
    assert "first loop stage that changes the result: schedule (the traced graph (on the interpreter) was" in str(result)


def test_a_loop_stage_is_checked_on_the_loop_interpreter_too(wrong_schedule):
    result = bisect(tanh_twice, *TANH_ARGS, loop_targets=("c", "loop_interpreter"))
    assert result.first_bad_loop_stage == "schedule" and result.loop_targets == ("c", "loop_interpreter")
    assert {(s.stage, s.target, s.ok) for s in result.stages if s.stage in LOOP_STAGES} == {
        ("lower", "c", True), ("lower", "loop_interpreter", True),
        ("schedule", "c", False), ("schedule", "loop_interpreter", False)}
    assert "loop_interpreter" in str(result).splitlines()[1]  # a column of the table


def test_a_loop_stage_that_raises_or_breaks_the_program_is_named(monkeypatch):
    def raises(program, target):
        raise RuntimeError("this stage always fails")

    monkeypatch.setitem(stages.STAGES, "simplify_indices", raises)
    result = bisect(tanh_twice, *TANH_ARGS)
    assert result.first_bad_loop_stage == "simplify_indices" and result.program_after is None
    assert "RuntimeError: this stage always fails" in result.failures[0].message

    def undeclared(program, target):  # every store's index becomes a variable no loop declares
        kernels = [replace(k, body=_with_index(k.body, Var("nowhere"))) for k in program.kernels]
        return replace(program, kernels=kernels)

    monkeypatch.setitem(stages.STAGES, "simplify_indices", undeclared)
    result = bisect(tanh_twice, *TANH_ARGS)
    assert result.first_bad_loop_stage == "simplify_indices"
    assert "left a broken program" in result.failures[0].message and "nowhere" in result.failures[0].message


def _with_index(stmt, index):
    if isinstance(stmt, Store):
        return Store(stmt.buffer, index, stmt.value)
    if isinstance(stmt, For):
        return replace(stmt, body=_with_index(stmt.body, index))
    if isinstance(stmt, Block):
        return Block([_with_index(s, index) for s in stmt.stmts])
    return stmt


def test_stop_after_a_pass_or_a_loop_stage(wrong_schedule):
    result = bisect(tanh_twice, *TANH_ARGS, stop_after="lower")
    assert result.ok and result.loop_stages == ["lower"]  # the wrong schedule is never reached
    assert [s.stage for s in result.stages][-1] == "lower"
    result = bisect(tanh_twice, *TANH_ARGS, stop_after="cse")
    assert result.ok and result.passes == pipeline_names()[:pipeline_names().index("cse") + 1]
    assert result.loop_stages == [] and "loop stage" not in str(result)
    result = bisect(tanh_twice, *TANH_ARGS, disable_stages=["schedule"])
    assert result.ok and result.loop_stages == ["lower", "simplify_indices"]
    with pytest.raises(MinicompError, match="cannot stop after 'render'"):
        bisect(tanh_twice, *TANH_ARGS, stop_after="render")
    with pytest.raises(MinicompError, match="only the loop stages schedule, simplify_indices"):
        bisect(tanh_twice, *TANH_ARGS, disable_stages=["lower"])


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

MODEL = '''\
import numpy as np


def f(x, b):
    return np.tanh(x + b) * 2
'''


def test_cli_bisect_names_the_wrong_pass(wrong_passes, tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL))
    argv = ["bisect", f"{path}:f", "--arg", "x=f32[4,8]", "--arg", "b=f32[8]"]
    assert main(argv + ["--target", "c"]) == 0
    out = capsys.readouterr().out
    assert "no pass changed the results" in out and "numpy" in out and " c" in out
    assert main(argv + ["--passes", "cse,test_add_to_sub,fusion", "--target", "c"]) == 3
    out = capsys.readouterr().out
    assert "first pass that changes the result: test_add_to_sub" in out
    assert main(argv + ["--passes", "cse,nosuch"]) == 1
    assert "unknown pass(es) ['nosuch']" in capsys.readouterr().err


def test_cli_bisect_names_the_wrong_loop_stage(wrong_schedule, tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL))
    argv = ["bisect", f"{path}:f", "--arg", "x=f32[4,8]", "--arg", "b=f32[8]"]
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "first loop stage that changes the result: schedule" in out
    assert main(argv + ["--stop-after", "lower"]) == 0
    out = capsys.readouterr().out
    assert "1 loop stage(s) (lower)" in out and "no pass changed the results, nor any loop stage (lower)" in out
    assert main(argv + ["--disable", "schedule"]) == 0
    assert "(lower, simplify_indices)" in capsys.readouterr().out
    assert main(argv + ["--stop-after", "nosuch"]) == 1
    assert "cannot stop after 'nosuch'" in capsys.readouterr().err


def test_cli_bisect_a_workload(capsys):
    assert main(["bisect", "--workload", "softmax", "--size", "tiny", "--disable", "remat"]) == 0
    out = capsys.readouterr().out
    assert "bisect softmax:" in out and "remat" not in out.splitlines()[0]
    assert "NumPy (the function run eagerly)" in out
