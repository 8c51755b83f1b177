"""The compile cache against a hostile or broken environment.

A cache directory that is not the user's own, planted links and files, a foreign-made cache
shared between machines, damaged compiler answers, a stopped lock holder, killed builds and
``cache clear`` next to files minicomp did not make: each is refused, repaired or left alone,
never trusted, followed, waited on forever or deleted.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

import minicomp
from minicomp.runtime import compiler
from minicomp.runtime.compiler import cflags, compile_c, load_library
from minicomp.errors import CacheError, MinicompWarning
from minicomp.ir import TensorType
from minicomp.runtime import cache

ROOT = Path(minicomp.__file__).resolve().parent.parent  # the minicomp under test
AS_ROOT = os.geteuid() == 0


def returning(value: int) -> str:
    return f"int minicomp_entry(void **args) {{ (void)args; return {value}; }}\n"


def call(path: Path) -> int:
    ffi, lib = load_library(path)
    return lib.minicomp_entry(ffi.new("void *[]", 1))


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def fresh_probes():
    """Forget the compiler answers this process remembers (before and after the test)."""
    compiler.probe.cache_clear()
    yield
    compiler.probe.cache_clear()


def child_env(directory: Path, **extra) -> dict:
    return dict(os.environ, MINICOMP_CACHE_DIR=str(directory), **extra,
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


# -- the directory: the user's own, or refused with what to do ---------------------------------------


@pytest.mark.parametrize("mode, who", [(0o777, "group and others"), (0o770, "group"), (0o702, "others")])
def test_a_directory_others_can_write_is_refused(empty_cache, mode, who):
    compile_c(returning(1))  # a good cache, used once
    empty_cache.chmod(mode)  # then opened up: someone could plant a library now
    path = re.escape(str(empty_cache))
    with pytest.raises(CacheError, match=rf"{path}.*writable by {who} .*chmod 700 {path}"):
        compile_c(returning(1))
    empty_cache.chmod(0o700)
    assert call(compile_c(returning(1))) == 1


def test_a_directory_of_another_user_is_refused(empty_cache, monkeypatch):
    empty_cache.mkdir(mode=0o700)
    if AS_ROOT:
        os.chown(empty_cache, 65534, 65534)
    else:  # only root can give a directory away: be another user instead
        monkeypatch.setattr(os, "geteuid", lambda uid=os.geteuid(): uid + 1)
    with pytest.raises(CacheError, match=rf"{re.escape(str(empty_cache))}.*owned by user.*of your own"):
        minicomp.jit(lambda x: x + 1.0)(np.ones(3, np.float32))


def test_a_symbolic_link_as_the_directory_is_refused(empty_cache, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    empty_cache.symlink_to(real)
    with pytest.raises(CacheError, match=rf"{re.escape(str(empty_cache))}.*symbolic link"):
        cache.cache_dir()


@pytest.mark.parametrize("problem", ["a file", "under a file", "dangling link", "no permission"])
def test_an_unusable_path_is_a_cache_error(tmp_path, monkeypatch, problem):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "cache",
            "dangling link": tmp_path / "dangling",
            "no permission": Path("/sys/minicomp-cache") if AS_ROOT else locked / "cache"}[problem]
    monkeypatch.setenv("MINICOMP_CACHE_DIR", str(path))
    with pytest.raises(CacheError, match="compile cache .*MINICOMP_CACHE_DIR"):
        cache.cache_dir()
    assert not (tmp_path / "nowhere").exists()


def test_the_cache_directory_is_made_owner_only_and_checked_once(empty_cache, monkeypatch):
    cache.cache_dir()
    assert stat.S_IMODE(empty_cache.stat().st_mode) == 0o700
    monkeypatch.setattr(cache, "_check_directory", lambda path: pytest.fail("checked again"))
    assert cache.cache_dir() == empty_cache  # unchanged: one lstat, no second check


# -- files in the cache: never through a link, only regular files of the user -----------------------


def test_a_planted_library_link_is_never_loaded(empty_cache, tmp_path):
    library = compile_c(returning(1))
    planted = tmp_path / "planted.so"
    shutil.copy(compile_c(returning(666)), planted)
    library.unlink()
    library.symlink_to(planted)  # and a record that matches what the link points to
    meta = library.with_suffix(".json")
    meta.write_text(json.dumps({"sha256": hashlib.sha256(planted.read_bytes()).hexdigest(),
                                "size": planted.stat().st_size, "source_name": "planted"}))
    assert cache.lookup(library.stem) is None
    assert call(compile_c(returning(1))) == 1  # rebuilt in place of the link
    assert not library.is_symlink() and planted.exists()


@pytest.mark.skipif(not AS_ROOT, reason="only root can make a file owned by another user")
def test_a_library_of_another_user_is_never_loaded(empty_cache):
    library = compile_c(returning(1))
    os.chown(library, 65534, 65534)
    assert cache.lookup(library.stem) is None
    assert call(compile_c(returning(1))) == 1 and library.stat().st_uid == os.geteuid()


def test_the_loaded_library_is_the_one_that_was_checked(empty_cache, monkeypatch):
    library = compile_c(returning(1))
    other = compile_c(returning(666))
    checked_then_swapped = cache.open_verified

    def swap_after_the_check(path):
        fd = checked_then_swapped(path)
        shutil.copy(other, path.with_name("swap"))
        os.replace(path.with_name("swap"), path)  # a file swapped in between check and dlopen
        return fd

    monkeypatch.setattr(cache, "open_verified", swap_after_the_check)
    assert call(library) == 1


def test_libraries_loaded_through_reused_descriptors_stay_distinct(empty_cache):
    """dlopen returns the library already loaded under the same name: each load's name is new."""
    assert [call(compile_c(returning(v))) for v in (11, 12, 13)] == [11, 12, 13]


@pytest.mark.parametrize("suffix", [".c", ".lock", ".json"])
def test_planted_links_are_never_written_through(empty_cache, tmp_path, suffix):
    source = returning(2)
    key = compile_c(source).stem
    for old in empty_cache.glob(f"{key}.*"):
        old.unlink()
    victim, missing = tmp_path / "victim.txt", tmp_path / "created-through-a-link"
    victim.write_text("precious")
    (empty_cache / f"{key}{suffix}").symlink_to(victim if suffix == ".c" else missing)
    assert call(compile_c(source)) == 2
    assert victim.read_text() == "precious" and not missing.exists()
    assert not (empty_cache / f"{key}{suffix}").is_symlink()


def test_a_planted_fifo_does_not_hang_a_lookup(empty_cache):
    key = compile_c(returning(3)).stem
    meta = empty_cache / f"{key}.json"
    meta.unlink()
    os.mkfifo(meta)
    results = []
    reader = threading.Thread(target=lambda: results.append(cache.lookup(key)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    try:
        assert results == [None]
    finally:  # release a reader blocked in open() (what minicomp 0.1 did)
        try:
            os.close(os.open(meta, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_planted_cffi_module_is_never_run(empty_cache, tmp_path):
    """minicomp 0.1 exec()ed ``cffi-entry-*.py`` from the cache, trusting a checksum anyone can
    compute; the declaration's tables now live in the package."""
    import _cffi_backend

    marker = tmp_path / "ran"
    body = f"open({str(marker)!r}, 'w').close()\nimport _cffi_backend\nffi = _cffi_backend.FFI()"
    key = cache.cache_key("cffi out-of-line ABI module", compiler.ENTRY_DECLARATION,
                          _cffi_backend.__version__)  # where minicomp 0.1 looked for it
    cache.cache_dir()
    (empty_cache / f"cffi-entry-{key[:32]}.py").write_text(
        f"{body}\n# sha256: {hashlib.sha256(body.encode()).hexdigest()}\n")
    ffi = compiler.entry_ffi()
    assert not marker.exists()
    assert call(compile_c(returning(4))) == 4 and ffi is not None


# -- keys: the target CPU and compiler, not the working directory or comments -----------------------


def test_a_cache_shared_by_two_machines_keys_on_each_ones_target(empty_cache, tmp_path, monkeypatch,
                                                                  fresh_probes):
    """``-march=native`` resolves differently per CPU; the same compiler binary on another CPU
    must neither reuse the first CPU's probe answers nor its libraries."""
    fake_cc = tmp_path / "cc"
    fake_cc.write_text(f'#!/bin/sh\nexec {compiler.compiler()} "$@" $FAKE_NATIVE\n')
    fake_cc.chmod(0o755)
    monkeypatch.setenv("CC", str(fake_cc))
    libraries = {}
    for machine, native in [("avx512 machine", "-mavx512f"), ("avx2 machine", "-mno-avx512f")]:
        monkeypatch.setenv("FAKE_NATIVE", native)
        monkeypatch.setattr(compiler, "cpu_identity", lambda machine=machine: machine, raising=False)
        compiler.probe.cache_clear()  # a new process on that machine
        libraries[machine] = compile_c(returning(5))
    assert libraries["avx512 machine"] != libraries["avx2 machine"]
    assert "__AVX512F__" not in compiler.target_macros(tuple(cflags()))


@pytest.mark.parametrize("damage", ["empty", "truncate", "alter"])
def test_damaged_compiler_answers_are_asked_again(empty_cache, fresh_probes, damage):
    flags, macros = cflags(), compiler.target_macros(tuple(cflags()))
    records = list(empty_cache.glob("probe-*"))
    assert records and "__GNUC__" in macros
    for record in records:
        text = record.read_text()
        record.write_text({"empty": "", "truncate": text[: len(text) // 2],
                           "alter": text.replace("__GNUC__", "__XNUC__")}[damage])
    compiler.probe.cache_clear()  # a new process
    assert compiler.target_macros(tuple(cflags())) == macros
    assert cflags() == flags  # the workaround flags the answers decide are all still there


def test_a_compiler_that_cannot_answer_is_an_error_not_an_empty_answer(empty_cache, fresh_probes):
    with pytest.raises(minicomp.errors.CompileError, match="-mno-such-flag-anywhere"):
        compiler.target_macros(("-mno-such-flag-anywhere",))


def scaled(x):
    return np.tanh(x) * 3.0


def test_the_key_does_not_depend_on_the_working_directory(empty_cache, tmp_path, monkeypatch):
    x = np.linspace(-1, 1, 9, dtype=np.float32)
    monkeypatch.chdir(Path(__file__).parent)  # locations read "test_cache_security.py:NN"
    first = minicomp.jit(scaled)
    first(x)
    monkeypatch.chdir(tmp_path)  # now "/.../tests/test_cache_security.py:NN"

    def no_compiler(*args, **kwargs):
        raise AssertionError(f"the compiler ran again: {args}")

    monkeypatch.setattr(compiler, "subprocess", types.SimpleNamespace(run=no_compiler))
    second = minicomp.jit(scaled)
    np.testing.assert_allclose(second(x), np.tanh(x) * 3.0, rtol=1e-6)
    assert first.inspect(x).source != second.inspect(x).source  # the comments differ
    assert len(list(empty_cache.glob("*.so"))) == 1


def test_editing_lines_above_a_function_does_not_recompile_it(empty_cache):
    text = str(minicomp.trace(scaled, TensorType((7,), "f32")))
    moved = text.replace("test_cache_security.py:", "test_cache_security.py:1").replace("# ", "# lib/")
    assert moved != text
    before, after = (minicomp.compile(minicomp.Graph.parse(t), target="c") for t in (text, moved))
    assert before.source != after.source and before.library_path == after.library_path


def test_a_warm_start_from_another_directory_compiles_nothing(empty_cache, tmp_path):
    script = tmp_path / "model.py"
    script.write_text(textwrap.dedent("""
        import numpy as np, minicomp
        out = minicomp.jit(lambda x: np.exp(x) + 1.0)(np.ones(5, np.float32))
        assert np.allclose(out, np.e + 1.0)
    """))
    (tmp_path / "elsewhere").mkdir()
    for cwd in (tmp_path, tmp_path / "elsewhere"):  # "model.py:3", then "/.../model.py:3"
        subprocess.run([sys.executable, str(script)], cwd=cwd, env=child_env(empty_cache), check=True,
                       timeout=300)
        if cwd == tmp_path:
            (library,) = empty_cache.glob("*.so")
            built = library.stat().st_mtime_ns
    assert list(empty_cache.glob("*.so")) == [library] and library.stat().st_mtime_ns == built


# -- locks: a wait has an end and a message ---------------------------------------------------------


HOLDER = """
import os, signal, sys
from minicomp.runtime import cache
with cache.building(sys.argv[1], "the holder's graph"):
    print("holding", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_a_stopped_lock_holder_delays_a_build_by_the_timeout_only(empty_cache, monkeypatch):
    source = returning(7)
    key = compile_c(source).stem
    for entry in empty_cache.glob(f"{key}.*"):
        entry.unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, key], env=child_env(empty_cache),
                              stdout=subprocess.PIPE, text=True)
    rescue = threading.Timer(60, holder.kill)  # minicomp 0.1 waited forever
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert (empty_cache / f"{key}.lock").read_text().strip() == str(holder.pid)
        monkeypatch.setenv("MINICOMP_LOCK_TIMEOUT", "1")
        rescue.start()
        start = time.monotonic()
        with pytest.warns(MinicompWarning) as warned:
            library = compile_c(source)
        waited = time.monotonic() - start
    finally:
        rescue.cancel()
        holder.kill()
        holder.wait()
    messages = [str(w.message) for w in warned]
    assert any(f"waiting for process {holder.pid}" in m and "MINICOMP_LOCK_TIMEOUT" in m for m in messages)
    assert any("gave up" in m and f"process {holder.pid}" in m for m in messages)
    assert 1 <= waited < 30 and call(library) == 7


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_lock_timeout_is_a_cache_error(empty_cache, monkeypatch, value):
    monkeypatch.setenv("MINICOMP_LOCK_TIMEOUT", value)
    with pytest.raises(CacheError, match=f"MINICOMP_LOCK_TIMEOUT={value!r}.*e.g."):
        compile_c(returning(8))


# -- temporaries: swept when stale, the rest left alone -----------------------------------------------


KILLED_BUILD = """
import os, signal
from minicomp.runtime import cache
path, fd = cache.new_temporary(".so")
os.write(fd, b"half a library")
print(path.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_killed_builds_are_swept_by_the_next_build(empty_cache):
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD], env=child_env(empty_cache),
                            capture_output=True, text=True, timeout=300)
    leftover = empty_cache / killed.stdout.strip()
    assert killed.returncode == -signal.SIGKILL and leftover.exists()
    cache._swept.discard(str(empty_cache))  # as in a new process
    compile_c(returning(9))
    assert not leftover.exists() and not list(empty_cache.glob("*.tmp"))


def test_only_stale_temporaries_of_minicomp_are_swept(empty_cache, tmp_path):
    directory = cache.cache_dir()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid with no process behind it
    host, me, hour_ago = cache._HOST, os.getpid(), time.time() - 2 * cache.STALE_AFTER
    names = {
        f"tmp-{host}-{gone.pid}-00000001.so.tmp": "removed",  # its process is gone
        f"tmp-{host}-{me}-00000002.tmp": "removed, old",
        "tmpab_cd123.json.tmp": "removed, old",  # minicomp 0.1's name for it
        f"tmp-{host}-{me}-00000003.json.tmp": "kept",  # a build in progress
        f"tmp-00000000-{gone.pid}-00000004.tmp": "kept",  # another host's process: young, kept
        "notes.tmp": "kept, old",  # not a name minicomp makes
    }
    for name, fate in names.items():
        (directory / name).write_text(fate)
        if "old" in fate:
            os.utime(directory / name, (hour_ago, hour_ago))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.utime(victim, (hour_ago, hour_ago))
    link = directory / f"tmp-{host}-{gone.pid}-00000005.so.tmp"  # a link: not minicomp's
    link.symlink_to(victim)
    assert cache.sweep_temporaries(directory) == 3
    kept = [name for name, fate in names.items() if fate.startswith("kept")] + [link.name]
    assert sorted(p.name for p in directory.iterdir()) == sorted(kept)
    assert victim.read_text() == "precious"


# -- clear and info: minicomp's own files only ------------------------------------------------------


def test_clear_removes_only_what_minicomp_made(empty_cache, tmp_path, capsys):
    from minicomp.cli import main

    library = compile_c(returning(10))
    victim = tmp_path / "victim.so"
    victim.write_text("precious")
    foreign = ["notes.txt", "model.so", f"{'A' * 64}.so", f"{'a' * 63}.json", "probe-x.json"]
    for name in foreign:
        (empty_cache / name).write_text("not minicomp's")
    (empty_cache / f"{'f' * 64}.so").symlink_to(victim)  # a link named like an entry
    (empty_cache / "data").mkdir()
    (empty_cache / "data" / "x.so").write_text("keep")
    assert cache.info()["entries"] == 1 and cache.info()["others"] == len(foreign) + 2
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 compiled libraries" in out and f"left {len(foreign) + 2} other files" in out
    assert not library.exists() and not library.with_suffix(".json").exists()
    assert all((empty_cache / name).read_text() == "not minicomp's" for name in foreign)
    assert victim.read_text() == "precious" and (empty_cache / f"{'f' * 64}.so").is_symlink()
    assert (empty_cache / "data" / "x.so").exists() and empty_cache.is_dir()
    assert main(["cache", "info"]) == 0
    assert "entries: 0" in capsys.readouterr().out


@pytest.mark.skipif(not AS_ROOT, reason="only root can make a file owned by another user")
def test_clear_leaves_files_of_another_user(empty_cache):
    library = compile_c(returning(11))
    os.chown(library, 65534, 65534)
    assert cache.clear()["left"] == 1 and library.exists()
