"""Sanitizer mode: the C kernel tests again, with AddressSanitizer and UBSan built in.

The op tests run through every backend that renders C: the CPU schedules and the GPU
schedules' thread-serial form (``gpu-serial-c``), and so do the GPU row schedules' awkward
row lengths (their tails and guards).

``MINICOMP_SANITIZE=1`` compiles every kernel with ``-fsanitize=address,undefined``. Python
itself is not built with ASan, so the child process preloads the sanitizer runtimes. A report
from either sanitizer aborts the child (``-fno-sanitize-recover=all``), failing the test.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import minicomp

ROOT = Path(minicomp.__file__).resolve().parent.parent
KERNEL_TESTS = ["tests/test_c_ops.py", "tests/test_c_runtime.py",
                "tests/test_gpu_schedules.py::test_rows_in_c"] + [
    f"tests/test_gather_scatter.py::{name}" for name in (  # indices read and written by data
        "test_gather_op_equals_numpy", "test_scatter_op_equals_numpy",
        "test_an_index_out_of_range_is_an_index_error_never_a_read_outside",
        "test_out_of_range_in_take_along_axis_and_a_second_index_array",
        "test_a_scatter_position_out_of_range_is_an_index_error")]

# the backends that run no C (the op tests' loop interpreters) have nothing to sanitize
NOT_C = "not loop_interpreter and not gpu-simt-interp"


def sanitizer_env(tmp_path) -> dict:
    libraries = []
    for name in ("libasan.so", "libubsan.so"):
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        assert os.path.isabs(path), f"gcc has no {name}: install gcc's sanitizer runtimes"
        libraries.append(path)
    return dict(os.environ, MINICOMP_SANITIZE="1", LD_PRELOAD=":".join(libraries),
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1",
                MINICOMP_CACHE_DIR=str(tmp_path / "cache"), HYPOTHESIS_PROFILE="sanitize",
                PYTHONPATH=str(ROOT))


def test_sanitizer_mode_catches_an_out_of_bounds_write(tmp_path):
    """The mode is real: a kernel writing past its buffer is reported, not ignored."""
    script = textwrap.dedent("""
        import numpy as np
        from minicomp.runtime.compiler import compile_c, load_library
        source = '''
        #include <stdlib.h>
        int minicomp_entry(void **args) {
          float *heap = malloc(4 * sizeof(float));
          for (int i = 0; i <= 4; ++i) heap[i] = 1.0f;   /* one past the end */
          int result = (int)heap[0];
          free(heap);
          return result;
        }
        '''
        ffi, lib = load_library(compile_c(source, "bad"))
        lib.minicomp_entry(ffi.new("void *[]", 1))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=sanitizer_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    # whichever sanitizer sees it first: ASan's red zone or UBSan's object-size check
    assert ("heap-buffer-overflow" in result.stderr
            or "insufficient space for an object" in result.stderr), result.stderr[-3000:]


@pytest.mark.slow
def test_c_kernel_tests_are_clean_under_sanitizers(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                             *KERNEL_TESTS, "-k", NOT_C], cwd=ROOT, env=sanitizer_env(tmp_path),
                            capture_output=True, text=True, timeout=1200)
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, tail
    assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, tail


def test_the_compiler_runs_without_the_preloaded_sanitizer_runtimes(monkeypatch):
    """The sanitizer runtimes preloaded for the kernels are kept out of gcc's environment
    (gcc under them is ~1.6x slower), and only when sanitizing; the rest of it is passed on."""
    from minicomp.runtime.compiler import compiler_env

    monkeypatch.setenv("LD_PRELOAD", "/lib/libasan.so")
    monkeypatch.setenv("MINICOMP_SANITIZE", "1")
    env = compiler_env()
    assert "LD_PRELOAD" not in env and env["PATH"] == os.environ["PATH"]
    monkeypatch.setenv("MINICOMP_SANITIZE", "0")
    assert compiler_env() is None  # this process's environment, LD_PRELOAD included
