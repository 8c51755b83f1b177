"""The ``minicomp`` command line: ``dump`` and ``inspect`` of user files and built-in workloads,
static arguments, FLOP and byte counts, error reporting, ``--help`` and ``demo``.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from minicomp.cli import main
from minicomp.workloads import WORKLOADS

REPO = Path(__file__).resolve().parents[1]

MODEL = '''\
import numpy as np
import minicomp


def mlp(x, w):
    h = x @ w
    return np.maximum(h, 0)


def scaled(x, factor, axes=(0,)):
    return x.sum(axis=axes) * factor


@minicomp.jit
def jitted(x):
    return np.exp(x)
'''


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL))
    return path


def run(capsys, *argv):
    """``main(argv)``: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------
# dump
# ----------------------------------------------------------------------------------------------


def test_dump_a_function_from_a_file(capsys, model):
    code, out, err = run(capsys, "dump", f"{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[8,16]",
                         "--passes", "none")  # as traced (by default dump prints the optimised graph)
    assert code == 0 and err == ""
    assert out.startswith("graph mlp(%x: f32[4,8], %w: f32[8,16]) {")
    assert "matmul(%x, %w) : f32[4,16]" in out
    assert "maximum(" in out and "return %maximum" in out
    assert "model.py:6" in out and "model.py:7" in out  # the user's lines


def test_dump_as_dot(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[8,16]",
                       "--format", "dot", "--passes", "none")
    assert code == 0
    assert out.lstrip().startswith("digraph") and out.rstrip().endswith("}")
    assert "matmul" in out and "->" in out


def test_dump_a_built_in_workload(capsys):
    code, out, _ = run(capsys, "dump", "--workload", "softmax", "--size", "tiny", "--passes", "none")
    assert code == 0
    assert out.startswith("graph softmax(%x: f32[13,37])")
    for op in ("max(", "sub(", "exp(", "sum(", "div("):
        assert op in out


def test_dump_every_workload_at_gpu_size(capsys):
    for name in WORKLOADS:
        code, out, _ = run(capsys, "dump", "--workload", name, "--size", "gpu")  # after the passes
        assert code == 0 and f"\ngraph {name}(" in "\n" + out


def test_dump_with_static_literal_arguments(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:scaled", "--arg", "x=f32[3,5]", "--arg", "factor=2.5",
                       "--arg", "axes=(0, 1)")
    assert code == 0
    assert "graph scaled(%x: f32[3,5])" in out  # static values are not graph inputs
    assert "axes=[0,1]" in out and "2.5" in out and ": f32[]" in out
    code, out, _ = run(capsys, "dump", f"{model}:scaled", "--arg", "x=f32[3,5]", "--arg", "factor=3")
    assert code == 0 and "axes=[0]" in out and ": f32[5]" in out  # the default axes


def test_dump_unwraps_a_jit_function(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:jitted", "--arg", "x=f64[2]")
    assert code == 0 and "exp(%x) : f64[2]" in out


def test_dump_a_function_from_a_module(capsys):
    code, out, _ = run(capsys, "dump", "minicomp.workloads:matmul", "--arg", "a=f32[2,3]", "--arg", "b=f32[3,4]")
    assert code == 0 and "matmul(%a, %b) : f32[2,4]" in out


def _headers(out: str) -> list[str]:
    """The ``// ---- ... ----`` lines --print-between-passes prints before each stage's result."""
    return [line for line in out.splitlines() if line.startswith("// ----")]


def test_dump_emits_every_loop_stage(capsys):
    outs = {}
    for emit in ("lower", "schedule", "simplify_indices", "loops"):
        code, outs[emit], _ = run(capsys, "dump", "--workload", "ew_chain", "--size", "tiny", "--emit", emit)
        assert code == 0 and "\nkernel fused_mul_6(x: f32[33,40], a: f32[40], b: f32[40])" in outs[emit]
    assert "# schedule:" not in outs["lower"] and "vectorized for" not in outs["lower"]  # plain nests
    assert "# schedule: vectorize(i1)" in outs["schedule"] and "vectorized for i1" in outs["schedule"]
    assert outs["loops"] == outs["simplify_indices"]  # loops: after the last loop stage, what is rendered
    code, out, _ = run(capsys, "dump", "--workload", "ew_chain", "--size", "tiny", "--emit", "loops",
                       "--disable", "schedule")  # a loop stage left out
    assert code == 0 and "# schedule:" not in out and out.replace("\n", "") == outs["lower"].replace("\n", "")


def test_dump_print_between_passes_covers_the_loop_stages(capsys, model):
    argv = ["dump", f"{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[8,16]", "--passes", "cse,fusion",
            "--print-between-passes"]
    code, out, _ = run(capsys, *argv, "--emit", "c")
    assert code == 0
    assert _headers(out) == ["// ---- input ----", "// ---- after cse ----", "// ---- after fusion ----",
                             "// ---- after lower ----", "// ---- after schedule ----",
                             "// ---- after simplify_indices ----", "// ---- after render ----"]
    after = dict(zip(_headers(out), out.split("// ----")[1:]))
    assert "graph mlp(" in after["// ---- after fusion ----"]
    assert "kernel fused_maximum(" in after["// ---- after lower ----"]
    assert "int minicomp_entry(void **args)" in out.split("// ---- after render ----")[1]  # the C, printed once
    assert out.count("int minicomp_entry(void **args)") == 1
    code, out, _ = run(capsys, *argv, "--emit", "schedule", "--disable", "schedule")
    assert code == 0 and _headers(out)[-1] == "// ---- after lower ----"  # up to the stage emitted
    code, out, _ = run(capsys, *argv)  # --emit graph: the graph passes only
    assert code == 0 and _headers(out)[-1] == "// ---- after fusion ----"


def test_dump_print_between_passes_then_the_assembly(capsys, model):
    code, out, _ = run(capsys, "dump", f"{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[8,16]",
                       "--emit", "asm", "--print-between-passes", "--passes", "none")
    assert code == 0 and _headers(out)[-1] == "// ---- after simplify_indices ----"
    assert "# SIMD evidence" in out.split("// ---- after simplify_indices ----")[1]


def test_dump_refuses_a_stage_that_cannot_be_left_out(capsys):
    code, _, err = run(capsys, "dump", "--workload", "softmax", "--size", "tiny", "--emit", "c", "--disable", "lower")
    assert code == 1 and "stage(s) ['lower'] cannot be left out" in err


# ----------------------------------------------------------------------------------------------
# inspect
# ----------------------------------------------------------------------------------------------


def test_inspect_counts_matmul_flops_and_bytes(capsys, model):
    m, k, n = 3, 7, 5
    code, out, _ = run(capsys, "inspect", f"{model}:mlp", "--arg", f"x=f32[{m},{k}]", "--arg", f"w=f32[{k},{n}]",
                       "--passes", "none")  # one kernel per op, as traced
    assert code == 0
    assert out.startswith("graph mlp(")  # the graph first, then the statistics
    assert "ops: 2 (matmul x1, maximum x1)" in out
    flops = 2 * m * n * k + m * n  # the matmul, then one per element for maximum
    assert f"FLOPs: {flops} FLOP" in out
    matmul_row = next(line for line in out.splitlines() if line.startswith("%matmul"))
    assert matmul_row.split()[3] == str(2 * m * n * k)
    read = 4 * (m * k + k * n) + 4 * (m * n + 1)  # matmul reads x and w; maximum its input and 0
    written = 4 * m * n * 2
    assert f"bytes read: {read} B, written: {written} B" in out
    assert "arithmetic intensity" in out


def test_inspect_a_large_matmul(capsys):
    code, out, _ = run(capsys, "inspect", "--workload", "matmul", "--size", "cpu")
    assert code == 0
    assert "FLOPs: 2.1 GFLOP" in out  # 2 * 1024**3
    assert "ops: 1 (matmul x1)" in out


# ----------------------------------------------------------------------------------------------
# Errors: exit code 1 and a one-line message
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["dump", "{model}:mlp", "--arg", "x=f32[4,8]"], ["missing --arg w"]),
    (["dump", "{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[8,2]", "--arg", "z=f32[1]"],
     ["no parameter(s) ['z']", "'x', 'w'"]),
    (["dump", "{tmp}/nowhere.py:mlp", "--arg", "x=f32[4]"], ["no such file", "nowhere.py"]),
    (["dump", "{model}:absent"], ["no function 'absent'"]),
    (["dump", "{model}"], ["FILE.py:FUNC"]),
    (["dump", "{model}:mlp", "--arg", "x"], ["NAME=VALUE"]),
    (["dump", "{model}:mlp", "--arg", "x=f32[4,", "--arg", "w=f32[4,4]"], ["cannot read argument value"]),
    (["dump", "{model}:mlp", "--arg", "x=f32[4,8]", "--arg", "w=f32[5,2]"], ["matmul", "(4, 8)", "(5, 2)"]),
    (["inspect", "--workload", "nosuch"], ["unknown workload 'nosuch'", "softmax"]),
    (["dump"], ["--workload"]),
])
def test_errors_exit_1_with_a_message(capsys, model, tmp_path, argv, words):
    argv = [a.format(model=model, tmp=tmp_path) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("minicomp: error: ") and err.count("\n") == 1
    for word in words:
        assert word in err


def test_a_bad_option_is_argparses_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["dump", "--format", "png"])
    assert info.value.code == 2
    assert "invalid choice: 'png'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# As a program
# ----------------------------------------------------------------------------------------------


def run_module(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "minicomp", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help():
    result = run_module("--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: minicomp")
    for command in ("dump", "inspect", "demo"):
        assert command in result.stdout


def test_demo_checks_every_workload():
    result = run_module("demo", "--size", "tiny")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in WORKLOADS:
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1 and row[0].endswith("matches NumPy"), f"{name}: {row}"
    assert "matched NumPy" in lines[-1]


def test_demo_shows_the_c_code():
    result = run_module("demo", "--size", "tiny")
    assert "void k_fused_div(" in result.stdout and "acc_max" in result.stdout and "#pragma omp parallel for" in result.stdout


def test_dump_emits_loops_and_c(capsys):
    assert main(["dump", "--workload", "softmax", "--size", "tiny", "--emit", "loops", "--passes", "none"]) == 0
    loops = capsys.readouterr().out
    assert "kernel max(x: f32[13,37]) -> max: f32[13,1]" in loops and "i64 r1 = (r1_o * 16) + lane" in loops
    assert main(["dump", "--workload", "softmax", "--size", "tiny", "--emit", "c", "--passes", "none"]) == 0
    source = capsys.readouterr().out
    assert "int minicomp_entry(void **args)" in source and "k_exp(b_sub, b_exp);" in source


def test_dump_refuses_dot_for_loops(capsys):
    assert main(["dump", "--workload", "softmax", "--emit", "loops", "--format", "dot"]) == 1
    assert "only applies to --emit graph" in capsys.readouterr().err


def test_bench_json(capsys):
    import json

    assert main(["bench", "softmax", "matmul", "--size", "tiny", "--rounds", "3", "--seconds", "0",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["workload"] for r in report["results"]] == ["softmax", "matmul"]
    for result in report["results"]:
        assert result["rounds"] >= 3 and {"numpy", "minicomp"} <= set(result["median_ms"])
        assert all(t > 0 for t in result["median_ms"].values())


def test_bench_table_and_unknown_workload(capsys):
    assert main(["bench", "layernorm", "--size", "tiny", "--rounds", "2", "--seconds", "0"]) == 0
    out = capsys.readouterr().out
    assert "layernorm" in out and "ratio = minicomp median / numpy median" in out
    assert main(["bench", "nope"]) == 1
    assert "unknown workload" in capsys.readouterr().err


def test_bench_without_passes_column(capsys):
    assert main(["bench", "softmax", "--size", "tiny", "--rounds", "2", "--seconds", "0",
                 "--no-passes-column"]) == 0
    assert "no passes ms" in capsys.readouterr().out


def test_version_names_the_copy_that_runs(capsys):
    """``minicomp --version``: the version of pyproject.toml and the package directory in use."""
    import minicomp

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f'version = "{minicomp.__version__}"' in (REPO / "pyproject.toml").read_text()
    assert out.startswith(f"minicomp {minicomp.__version__} from {Path(minicomp.__file__).parent}")


def test_license_file_matches_the_metadata():
    assert 'license = { text = "MIT" }' in (REPO / "pyproject.toml").read_text()
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
