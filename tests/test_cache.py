"""The on-disk compile cache: keys, atomic writes, concurrent builders, corruption recovery."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp.runtime import compiler
from minicomp.runtime.compiler import cflags, compile_c, entry_ffi
from minicomp.errors import CompileError
from minicomp.runtime import cache

SOURCE = "int minicomp_entry(void **args) { return 0; }\n"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(directory))
    return directory


def test_cache_dir_is_created_owner_only(empty_cache):
    assert cache.cache_dir() == empty_cache
    assert (empty_cache.stat().st_mode & 0o777) == 0o700


def test_key_changes_with_source_flags_and_compiler():
    base = cache.cache_key("src", "-O3", "gcc 12")
    assert cache.cache_key("src", "-O3", "gcc 12") == base
    assert len({base, cache.cache_key("src2", "-O3", "gcc 12"), cache.cache_key("src", "-O2", "gcc 12"),
                cache.cache_key("src", "-O3", "gcc 13")}) == 4


def test_second_compile_is_a_hit(empty_cache):
    first = compile_c(SOURCE)
    mtime = first.stat().st_mtime_ns
    assert compile_c(SOURCE) == first
    assert first.stat().st_mtime_ns == mtime  # not rebuilt
    assert cache.info()["entries"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_meta", "garbage_meta"])
def test_damaged_entry_is_rebuilt_not_loaded(empty_cache, damage):
    library = compile_c(SOURCE)
    good = library.read_bytes()
    meta = library.with_suffix(".json")
    if damage == "truncate":
        library.write_bytes(good[: len(good) // 2])
    elif damage == "flip":
        library.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    elif damage == "delete_meta":
        meta.unlink()
    else:
        meta.write_text("{not json")
    assert cache.lookup(library.stem) is None
    rebuilt = compile_c(SOURCE)
    assert rebuilt == library and cache.lookup(library.stem) == library
    assert json.loads(meta.read_text())["size"] == library.stat().st_size


def test_truncated_entry_of_a_jit_function_is_rebuilt_and_correct(empty_cache):
    x = np.linspace(-2, 2, 64, dtype=np.float32).reshape(8, 8)
    fn = lambda x: np.tanh(x) * 2.0  # noqa: E731
    minicomp.jit(fn, target="c")(x)
    (library,) = empty_cache.glob("*.so")
    # Damage it as a crashed writer would: a new, truncated file in its place. (Writing into
    # the file in place would also change the copy this process has mapped: a bus error.)
    damaged = library.with_suffix(".damaged")
    damaged.write_bytes(library.read_bytes()[:200])
    os.replace(damaged, library)
    result = minicomp.jit(fn, target="c")(x)  # a new jit: goes through the cache again
    np.testing.assert_allclose(result, np.tanh(x) * 2.0, rtol=1e-6)
    assert cache.lookup(library.stem) == library


def test_clear(empty_cache):
    compile_c(SOURCE)
    assert cache.clear()["libraries"] == 1
    assert cache.info()["entries"] == 0 and empty_cache.exists()


WORKER = textwrap.dedent("""
    import sys, numpy as np, minicomp
    def f(x, w):
        return np.maximum(x @ w, 0.0).sum(axis=-1)
    x = np.ones((16, 32), np.float32); w = np.full((32, 8), 0.5, np.float32)
    out = minicomp.jit(f, target="c")(x, w)
    assert np.allclose(out, np.maximum(x @ w, 0).sum(-1)), out
    print("ok")
""")


def test_eight_processes_compiling_into_one_empty_cache(empty_cache, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    root = str(Path(minicomp.__file__).resolve().parent.parent)  # the minicomp under test
    env = dict(os.environ, MINICOMP_CACHE_DIR=str(empty_cache),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    workers = [subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0] * 8, results
    libraries = list(empty_cache.glob("*.so"))
    assert len(libraries) == 1
    assert cache.lookup(libraries[0].stem) == libraries[0]
    assert not list(empty_cache.glob("*.tmp"))  # no half-written leftovers


def test_flags_in_one_place(monkeypatch):
    assert "-ffast-math" not in cflags() and "-fwrapv" in cflags()
    monkeypatch.setenv("MINICOMP_CFLAGS", "-O1")
    assert "-O1" in cflags() and "-O3" not in cflags() and "-fwrapv" in cflags()


def test_cli_cache_info_and_clear(empty_cache, capsys):
    from minicomp.cli import main

    compile_c(SOURCE)
    assert main(["cache", "info"]) == 0
    assert "entries: 1" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out


# -- the cffi declaration of the entry point: pre-parsed tables kept in the package -------------


def call_entry(ffi) -> int:
    """Load the trivial library with ``ffi`` and call its entry point."""
    library = ffi.dlopen(str(compile_c(SOURCE)), ffi.RTLD_NOW | ffi.RTLD_NODELETE)
    return library.minicomp_entry(ffi.new("void *[]", 1))


def test_entry_ffi_tables_are_what_cffi_generates():
    """The tables in the package are the ones the installed cffi's parser makes of the declaration."""
    import ast
    import io

    import cffi
    from cffi.recompiler import make_py_source

    builder = cffi.FFI()
    builder.cdef(compiler.ENTRY_DECLARATION)
    text = io.StringIO()
    make_py_source(builder, "minicomp_entry_ffi", text)  # the out-of-line ABI module's text
    (call,) = [node for node in ast.walk(ast.parse(text.getvalue())) if isinstance(node, ast.Call)]
    assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == compiler.ENTRY_FFI_TABLES
    assert call_entry(entry_ffi()) == 0


def test_entry_ffi_parses_the_declaration_where_cffi_refuses_the_tables(empty_cache, monkeypatch):
    monkeypatch.setitem(compiler.ENTRY_FFI_TABLES, "_version", 0x7FFF)  # a format no cffi knows
    ffi = entry_ffi()
    assert not isinstance(ffi, __import__("_cffi_backend").FFI) and call_entry(ffi) == 0


def test_warm_process_loads_libraries_without_pycparser(empty_cache):
    script = textwrap.dedent("""
        import sys, numpy as np, minicomp
        out = minicomp.jit(lambda x: x * 2.0)(np.ones(4, np.float32))
        assert (out == 2.0).all()
        print("pycparser" in sys.modules, "cffi" in sys.modules)
    """)
    root = str(Path(minicomp.__file__).resolve().parent.parent)
    env = dict(os.environ, MINICOMP_CACHE_DIR=str(empty_cache),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    assert [r.stdout.split() for r in runs] == [["False", "False"]] * 2  # only _cffi_backend, cold or warm


def test_compiler_lookup_follows_cc(monkeypatch):
    found = compiler.compiler()  # remembered per value of $CC and $PATH, never stale
    with monkeypatch.context() as patch:
        patch.setenv("CC", "/nonexistent/bin/cc")
        with pytest.raises(CompileError, match="no C compiler found"):
            compiler.compiler()
    assert compiler.compiler() == found
