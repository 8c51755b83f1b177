"""``minicomp.explain`` / ``minicomp explain``, and the pass options of ``dump`` and ``inspect``.

explain prints every fusion decision (taken or refused, with the reason and the bytes saved),
the kernels formed, the remat decisions, and kernels / bytes moved / peak memory before
(traced, one kernel per op) and after all passes. dump and inspect run the pipeline (default,
``--passes a,b`` exactly, ``--passes none`` for the traced graph, minus ``--disable``) and can
print the graph between passes.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import minicomp
from minicomp.cli import main
from minicomp.tools.explain import explanation
from minicomp.passes.pipeline import pipeline_names
from minicomp.stats import human
from minicomp.workloads import WORKLOADS, mlp, softmax

F32 = np.float32


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_softmax():
    text = minicomp.explain(softmax, np.zeros((64, 128), F32))
    assert text.startswith("explain softmax(%x: f32[64,128])")
    assert "fusion decisions" in text and "5 ops -> 1 kernel)" in text
    for producer in ("%max", "%sub", "%exp", "%sum"):
        assert f"fused    {producer} -> %div" in text
    assert f"into the row kernel  (saves {human(2 * 64 * 128 * 4)})" in text  # exp: stored, loaded back
    assert "%fused_div" in text and "max, sub, exp, sum, div  (5 ops)" in text
    rows = {line[:26].strip(): line[26:].split() for line in text.splitlines()[-7:]}
    assert rows["kernels"] == ["5", "1"]  # before (traced), after (all passes)
    assert "bytes moved (estimated)" in rows and "peak live intermediates" in rows


def test_explain_a_refusal_and_the_numbers():
    x, w1, w2 = (np.zeros(s, F32) for s in [(8, 16), (16, 32), (32, 16)])
    result = explanation(mlp, x, w1, w2)
    [refused] = result.refused_decisions
    assert (refused.producer, refused.consumer) == ("%maximum", "%matmul_1")
    assert "it feeds matmul" in refused.reason
    assert (result.before.kernels, result.after.kernels) == (3, 2)
    assert result.after.bytes_moved < result.before.bytes_moved
    # the matmul's result is neither stored nor loaded back; the 0 of maximum is a literal
    assert result.before.bytes_moved - result.after.bytes_moved == 2 * 8 * 32 * 4 + 4
    text = str(result)
    assert "refused  %maximum -> %matmul_1" in text and "1 fused, 1 refused" in text
    assert result.memory_after.peak_live_bytes <= result.memory_before.peak_live_bytes


def test_explain_with_passes_disabled():
    text = minicomp.explain(softmax, np.zeros((4, 8), F32), disable=["fusion"])
    assert "fusion: not run" in text and "(disabled: fusion)" in text
    result = explanation(softmax, np.zeros((4, 8), F32), passes=["fusion"])
    assert result.passes == ["fusion"] and "fusion decisions (on the graph after tracing" in str(result)
    assert "rematerialisation: not run" in str(result)


def test_explain_shows_the_remat_decisions():
    assert "remat" in pipeline_names()
    def shared(x):  # one cheap value read by two reductions over different axes
        e = np.exp(x) * 2
        return e.sum(axis=0), e.max(axis=1)

    text = minicomp.explain(shared, np.zeros((64, 32), F32))
    assert "rematerialisation decisions:" in text
    assert "%mul" in text.split("rematerialisation decisions:")[1].split("\n\n")[0]


def test_explain_a_graph_and_a_jit_function():
    graph = minicomp.trace(softmax, np.zeros((4, 8), F32))
    assert "%fused_div" in minicomp.explain(graph)
    assert "%fused_div" in minicomp.explain(minicomp.jit(softmax), np.zeros((4, 8), F32))


def test_explain_every_workload_at_tiny_size():
    for name, w in WORKLOADS.items():
        result = explanation(w.fn, *w.inputs("tiny"))
        assert result.after.kernels <= result.before.kernels
        assert result.after.flops <= result.before.flops, name  # cse: x - mean computed once
        assert str(result).startswith(f"explain {name}(")


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

MODEL = '''\
import numpy as np


def head(x, w, b):
    h = np.maximum(x @ w + b, 0)
    return h / h.sum(axis=-1, keepdims=True)
'''


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL))
    return path


ARGS = ["--arg", "x=f32[4,8]", "--arg", "w=f32[8,16]", "--arg", "b=f32[16]"]


def test_cli_explain_a_function(capsys, model):
    code, out, err = run(capsys, "explain", f"{model}:head", *ARGS)
    assert code == 0 and err == ""
    assert out.startswith("explain head(%x: f32[4,8], %w: f32[8,16], %b: f32[16])")
    assert "refused" in out and "fused" in out and "kernels" in out and "bytes moved" in out


def test_cli_explain_a_workload_with_disabled_passes(capsys):
    code, out, _ = run(capsys, "explain", "--workload", "block", "--size", "tiny", "--disable", "remat")
    assert code == 0 and "attention" in out and "(disabled: remat)" in out
    code, out, _ = run(capsys, "explain", "--workload", "softmax", "--size", "tiny", "--disable", "fusion",
                       "--disable", "remat")
    assert code == 0 and "(disabled: remat, fusion)" in out or "(disabled: fusion, remat)" in out


def test_cli_dump_runs_the_pipeline(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:head", *ARGS)
    assert code == 0 and "fused(" in out and 'pattern="row"' in out
    code, out, _ = run(capsys, "dump", f"{model}:head", *ARGS, "--disable", "fusion")
    assert code == 0 and "fused(" not in out and "matmul(%x, %w)" in out
    code, out, _ = run(capsys, "dump", f"{model}:head", *ARGS, "--passes", "none")
    assert code == 0 and out.startswith("graph head(") and "fused" not in out


def test_cli_dump_exact_passes_and_print_between(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:head", *ARGS, "--passes", "cse,fusion",
                       "--print-between-passes")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("// ----")]
    assert headers == ["// ---- input ----", "// ---- after cse ----", "// ---- after fusion ----"]
    assert "fused(" in out.split("// ---- after fusion ----")[1]
    assert "fused(" not in out.split("// ---- after fusion ----")[0]
    code, out, _ = run(capsys, "dump", f"{model}:head", *ARGS, "--disable", "fusion,memory_plan",
                       "--print-between-passes")
    headers = [line for line in out.splitlines() if line.startswith("// ----")]
    assert "// ---- after fusion ----" not in headers and "// ---- after memory_plan ----" not in headers
    assert len(headers) == len(pipeline_names(disable=["fusion", "memory_plan"])) + 1


def test_cli_dump_loops_of_the_optimised_graph(capsys):
    code, out, _ = run(capsys, "dump", "--workload", "softmax", "--size", "tiny", "--emit", "loops")
    assert code == 0 and out.startswith("# %fused_div = fused row kernel of:") and "\nkernel fused_div(x: f32[13,37])" in out and "v_max" in out
    code, out, _ = run(capsys, "dump", "--workload", "attention", "--size", "tiny", "--emit", "c")
    assert code == 0 and "m_new" in out and "correction" in out
    code, out, _ = run(capsys, "dump", "--workload", "softmax", "--size", "tiny", "--emit", "loops",
                       "--disable", "fusion")
    assert code == 0 and out.startswith("kernel max(x: f32[13,37])")


def test_cli_inspect_counts_fused_kernels(capsys, model):
    code, out, _ = run(capsys, "inspect", f"{model}:head", *ARGS)
    assert code == 0 and "fused x" in out and "of them fused" in out
    code, out, _ = run(capsys, "inspect", "--workload", "softmax", "--size", "tiny", "--print-between-passes")
    assert code == 0 and "// ---- after fusion ----" in out and "1 kernel, 1 of them fused" in out


@pytest.mark.parametrize("argv, words", [
    (["dump", "--workload", "softmax", "--passes", "cse,nosuch"], ["unknown pass(es) ['nosuch']", "fusion"]),
    (["inspect", "--workload", "softmax", "--disable", "fuse"], ["unknown pass(es) ['fuse']"]),
    (["explain", "--workload", "nosuch"], ["unknown workload 'nosuch'"]),
    (["explain"], ["--workload"]),
])
def test_cli_pass_option_errors(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == "" and err.startswith("minicomp: error: ")
    for word in words:
        assert word in err
