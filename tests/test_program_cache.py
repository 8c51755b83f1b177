"""The program cache (``runtime/program_cache.py``): a warm start finds the compiled program by
the graph it traced to, without running the passes, lowering or the compiler, and never finds
one that another graph, pass list, constant or minicomp source made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp.passes.pipeline import pipeline_names
from minicomp.runtime import cache, program_cache
from minicomp.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(directory))
    return directory


def two_outputs_and_a_constant(x, w):
    scale = np.arange(1, 9, dtype=np.float32)  # a constant of 8 values, folded into the kernels
    y = np.tanh(x @ w) * scale
    return y, y, (x * 2).sum(axis=0)


def args(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal((32, 8)).astype(np.float32)


def test_a_second_jit_finds_the_program_without_passes_or_compiler(empty_cache, monkeypatch):
    x, w = args()
    first = minicomp.jit(two_outputs_and_a_constant)
    expected = first(x, w)
    assert sorted(p.suffix for p in empty_cache.glob("program-*")) == [".bin", ".json"]

    from minicomp.passes import pipeline
    from minicomp.runtime import compiler

    def refuse(*a, **k):
        raise AssertionError("a warm start ran the passes or the compiler")

    monkeypatch.setattr(pipeline, "run_pipeline", refuse)
    monkeypatch.setattr(compiler.subprocess, "run", refuse)
    second = minicomp.jit(two_outputs_and_a_constant)
    got = second(x, w)
    assert_close(list(got), list(expected))
    assert got[0] is not got[1]  # a value returned twice: two arrays, as before
    assert second.compiled_for(x, w).run.plan.output_order == first.compiled_for(x, w).run.plan.output_order


def test_what_was_not_made_again_is_made_when_asked(empty_cache):
    x, w = args()
    cold = minicomp.jit(two_outputs_and_a_constant).inspect(x, w)
    warm = minicomp.jit(two_outputs_and_a_constant).inspect(x, w)
    assert str(warm.graph) == str(cold.graph) and warm.source == cold.source
    assert str(warm.program) == str(cold.program) and warm.report is not None


@pytest.mark.parametrize("change", ["constant value", "static argument", "pass list", "minicomp source",
                                    "setting changed at run time", "compiler flags"])
def test_the_key_changes_with_everything_that_decides_the_program(change, monkeypatch):
    def f(x, k):
        return x * np.full((4, 30), 0.5, np.float32) + k  # a constant of 120 values (elided in text)

    x = np.ones((4, 30), np.float32)
    passes = pipeline_names()
    before = program_cache.program_key(minicomp.trace(f, x, 1.0), passes, {})
    if change == "constant value":
        def f(x, k):  # noqa: F811  (same shape, same first and last values: a repr would agree)
            c = np.full((4, 30), 0.5, np.float32)
            c[2, 7] = 0.25
            return x * c + k
    traced = minicomp.trace(f, x, 2.0 if change == "static argument" else 1.0)
    if change == "pass list":
        passes = pipeline_names(disable=["fusion"])
    if change == "minicomp source":
        monkeypatch.setattr(program_cache, "package_fingerprint", lambda: "an edited pass")
    if change == "setting changed at run time":
        from minicomp.schedules.cpu import work

        monkeypatch.setattr(work, "PARALLEL_MIN_WORK", 0)
    if change == "compiler flags":
        monkeypatch.setenv("MINICOMP_CFLAGS", "-O2 -march=native -fopenmp")
    assert program_cache.program_key(traced, passes, {}) != before


def test_the_key_does_not_change_with_the_working_directory_or_source_lines(tmp_path, monkeypatch):
    x = np.ones((4, 30), np.float32)
    key = program_cache.program_key(minicomp.trace(lambda x: np.exp(x) + 1, x), pipeline_names(), {})
    monkeypatch.chdir(tmp_path)
    moved = minicomp.trace(
        lambda x: np.exp(x) + 1,  # another line, another directory
        x)
    assert program_cache.program_key(moved, pipeline_names(), {}) == key


@pytest.mark.parametrize("damage", ["record altered", "constants altered", "constants truncated",
                                    "library removed", "inputs renamed"])
def test_a_damaged_or_foreign_record_is_not_used(damage, empty_cache):
    x, w = args()
    expected = minicomp.jit(two_outputs_and_a_constant)(x, w)
    [record] = empty_cache.glob("program-*.json")
    blob = record.with_suffix(".bin")
    if damage == "record altered":
        stored = json.loads(record.read_text())
        stored["data"]["workspace_bytes"] += 64  # without a new checksum
        record.write_text(json.dumps(stored))
    elif damage == "constants altered":
        data = bytearray(blob.read_bytes())
        data[5] ^= 0xFF
        blob.write_bytes(bytes(data))
    elif damage == "constants truncated":
        blob.write_bytes(blob.read_bytes()[:-4])
    elif damage == "library removed":
        library = json.loads(record.read_text())["data"]["library"]
        (empty_cache / f"{library}.so").unlink()
    elif damage == "inputs renamed":
        stored = json.loads(record.read_text())
        stored["data"]["inputs"][0][0] = "y"
        cache.write_record(record.name, stored["data"])  # a valid record of another graph
    traced = minicomp.trace(two_outputs_and_a_constant, x, w)
    key = record.stem.removeprefix("program-")
    assert program_cache.lookup(key, traced, None) is None
    assert_close(list(minicomp.jit(two_outputs_and_a_constant)(x, w)), list(expected))  # compiled again


def test_cache_clear_removes_program_records(empty_cache):
    x, w = args()
    minicomp.jit(two_outputs_and_a_constant)(x, w)
    cache.clear()
    assert not list(empty_cache.glob("program-*"))


WARM_START = textwrap.dedent("""
    import json, sys, time
    import minicomp
    from minicomp.passes import pipeline
    from minicomp.workloads import WORKLOADS

    w = WORKLOADS["block"]
    args = w.inputs("tiny")
    ran = []
    original = pipeline.run_pipeline
    pipeline.run_pipeline = lambda *a, **k: ran.append(1) or original(*a, **k)
    f = minicomp.jit(w.fn)
    out = f(*args)
    print(json.dumps({"passes_ran": len(ran), "sum": float(abs(out).sum())}))
""")


def test_a_new_process_in_another_directory_starts_warm(empty_cache, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MINICOMP_CACHE_DIR=str(empty_cache))
    runs = []
    for directory in (tmp_path, ROOT):
        result = subprocess.run([sys.executable, "-c", WARM_START], cwd=directory, env=env,
                                capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert runs[0]["passes_ran"] == 1 and runs[1]["passes_ran"] == 0
    assert runs[0]["sum"] == runs[1]["sum"]


def test_settings_read_the_same_in_every_process():
    """The settings fingerprint does not depend on hash seeds or on which modules a process
    happened to import before (else warm starts would miss)."""
    script = "from minicomp.runtime import program_cache as p; print(p.settings_fingerprint())"
    prints = {subprocess.run([sys.executable, "-c", prelude + script], env=dict(os.environ, PYTHONHASHSEED=seed,
                                                                             PYTHONPATH=str(ROOT)),
                             capture_output=True, text=True, check=True).stdout
              for seed, prelude in [("1", ""), ("2", "import minicomp.tools.explain; ")]}
    assert len(prints) == 1
