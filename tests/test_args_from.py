"""``minicomp dump/explain/bench --args-from make_args.py:FUNC``: arguments (weights in nested
dicts) built by a Python file, resolved from the current directory; its errors reported clearly."""

from __future__ import annotations

import textwrap

import pytest

from minicomp.cli import main

MODEL = '''\
import numpy as np


def layer_norm(x, g, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(var + eps) + b


def mlp(x, params, act="relu"):
    for block in params["blocks"]:
        h = layer_norm(x, **block["ln"])
        x = x + np.maximum(h @ block["fc"]["w"] + block["fc"]["b"], 0) @ block["proj"]["w"]
    return x
'''

MAKE_ARGS = '''\
import numpy as np


def make(d=8, layers=2):
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)
    blocks = [{"ln": {"g": r(d), "b": r(d)}, "fc": {"w": r(d, 4 * d), "b": r(4 * d)}, "proj": {"w": r(4 * d, d)}}
              for _ in range(layers)]
    return {"x": r(4, d), "params": {"blocks": blocks}}


def positional():
    values = make()
    return values["x"], values["params"]


def broken():
    return {"x": 1 / 0}


def wrong_type():
    return 42


def too_many():
    return 1, 2, 3, 4
'''


@pytest.fixture
def files(tmp_path, monkeypatch):
    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    (tmp_path / "make_args.py").write_text(textwrap.dedent(MAKE_ARGS))
    monkeypatch.chdir(tmp_path)  # the paths are resolved from the current directory
    return tmp_path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("make", ["make", "positional"])
def test_dump_takes_its_arguments_from_a_file(capsys, files, make):
    code, out, err = run(capsys, "dump", "model.py:mlp", "--args-from", f"make_args.py:{make}", "--passes", "none")
    assert code == 0, err
    assert "%params.blocks.1.fc.w: f32[8,32]" in out and "%x: f32[4,8]" in out


def test_args_from_and_arg_together(capsys, files):
    code, out, err = run(capsys, "dump", "model.py:mlp", "--args-from", "make_args.py:make", "--arg", "x=f32[2,8]",
                         "--passes", "none")
    assert code == 0, err
    assert "%x: f32[2,8]" in out  # --arg overrides what the file built


def test_explain_takes_its_arguments_from_a_file(capsys, files):
    code, out, err = run(capsys, "explain", "model.py:mlp", "--args-from", "make_args.py:make")
    assert code == 0, err
    assert "fusion decisions" in out


def test_bench_times_a_function_against_numpy(capsys, files):
    code, out, err = run(capsys, "bench", "model.py:mlp", "--args-from", "make_args.py:make", "--rounds", "3",
                         "--seconds", "0")
    assert code == 0, err
    assert "model.py:mlp" in out and "numpy ms" in out


@pytest.mark.parametrize("spec, words", [
    ("make_args.py:broken", ["make_args.py:broken", "ZeroDivisionError", "make_args.py:18"]),
    ("make_args.py:wrong_type", ["returned a int", "tuple of positional arguments", "dict of keyword"]),
    ("make_args.py:too_many", ["do not fit mlp", "too many positional arguments"]),
    ("make_args.py:missing", ["has no function 'missing'"]),
    ("nowhere.py:make", ["no such file: nowhere.py"]),
])
def test_errors_in_the_arguments_file_are_reported_clearly(capsys, files, spec, words):
    code, out, err = run(capsys, "dump", "model.py:mlp", "--args-from", spec)
    assert code == 1 and err.startswith("minicomp: error: --args-from")
    for word in words:
        assert word in err


def test_a_syntax_error_in_the_arguments_file_names_its_line(capsys, files):
    (files / "bad.py").write_text("def make():\n    return (\n")
    code, out, err = run(capsys, "dump", "model.py:mlp", "--args-from", "bad.py:make")
    assert code == 1 and "SyntaxError" in err and "bad.py:" in err


def test_bisect_takes_its_arguments_from_a_file(capsys, files):
    code, out, err = run(capsys, "bisect", "model.py:mlp", "--args-from", "make_args.py:make")
    assert code == 0, err
    assert "no pass changed the results" in out
