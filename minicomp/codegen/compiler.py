"""Compile C source into a shared library (through the compile cache) and load it with cffi.

Three separate steps, so each can be looked at on its own:

    source = render_c(program)        # minicomp.codegen.c: text
    path = compile_c(source)          # this module: gcc -> <cache>/<key>.so (or a cache hit)
    library = load_library(path)      # this module: cffi's dlopen

Flags live here and nowhere else. ``REQUIRED_FLAGS`` give the generated code its meaning
(``-fwrapv``: signed overflow wraps as in NumPy) and are always used; ``DEFAULT_OPT_FLAGS``
can be replaced with the environment variable ``MINICOMP_CFLAGS``. ``MINICOMP_SANITIZE=1``
adds AddressSanitizer and UBSan (the loading process must preload libasan, see the tests).
``CC`` picks the compiler (default: gcc, else cc). Two workarounds are added where they
apply (``_workarounds``): ``-mno-avx512fp16`` where the target has AVX512-FP16 (minicomp
computes float16 in float32 anyway, and GCC 12 emits masked ``vmovsh`` stores for float16
selects that binutils 2.40 refuses to assemble), and ``-fno-tree-vrp`` with GCC: GCC 12.2
-O3 -march=native turns ``out[i] = i < 3 ? x[i] : x[i - 3]`` in a short fully unrolled nest
(a concatenate) into a blend that reads zeros; turning value-range propagation off gives the
right answer at no measurable cost on the workloads.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

from ..errors import CompileError
from ..runtime import cache

REQUIRED_FLAGS = ["-shared", "-fPIC", "-std=gnu11", "-fwrapv", "-fno-math-errno"]
DEFAULT_OPT_FLAGS = ["-O3", "-march=native", "-fopenmp"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g"]
ENTRY_DECLARATION = "int minicomp_entry(void **args);"


def compiler() -> str:
    """The C compiler to use: ``$CC``, else gcc, else cc; ``CompileError`` if there is none."""
    candidate = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not candidate or not shutil.which(candidate.split()[0]):
        raise CompileError(
            "no C compiler found: the C target needs gcc (Debian/Ubuntu: apt-get install gcc; "
            "Fedora: dnf install gcc; macOS: xcode-select --install), or set CC; "
            "jit(target='numpy') runs without one"
        )
    return candidate


@functools.lru_cache(maxsize=None)
def probe(cc: str, args: tuple[str, ...]) -> str:
    """The output of ``cc args`` (stdin empty), remembered on disk next to the compile cache.

    Asking the compiler what it is and what ``-march=native`` means costs a process start
    (~10 ms) each time; the answer only changes with the compiler binary, which is part of the
    key (path, size, modification time). A failing probe raises ``CompileError``.
    """
    command = [*shlex.split(cc), *args]
    binary = shutil.which(command[0]) or command[0]
    try:
        stat = os.stat(binary)
        identity = f"{os.path.realpath(binary)}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        identity = binary
    path = cache.cache_dir() / f"probe-{cache.cache_key(identity, *args)[:32]}.txt"
    if path.exists():
        return path.read_text()
    try:
        result = subprocess.run(command, input="", capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileError(f"cannot run the C compiler {cc!r}: {exc}") from None
    temporary = cache.temporary_path()
    temporary.write_text(result.stdout)
    os.replace(temporary, path)
    return result.stdout


def compiler_version(cc: str) -> str:
    """The first line of ``cc --version`` (part of the cache key)."""
    out = probe(cc, ("--version",))
    return out.splitlines()[0] if out else cc


def target_macros(flags: tuple[str, ...]) -> str:
    """``cc -dM -E`` under ``flags``: the macros that tell what the target CPU has (``__AVX512F__`` ...)."""
    try:
        return probe(compiler(), (*flags, "-dM", "-E", "-x", "c", "-"))
    except CompileError:
        return ""


def sanitizing() -> bool:
    """True when ``MINICOMP_SANITIZE=1``: build with AddressSanitizer and UBSan."""
    return os.environ.get("MINICOMP_SANITIZE", "") not in ("", "0")


def cflags() -> list[str]:
    """All flags for the next compilation (required + optimisation + workarounds + sanitizer)."""
    opt = os.environ.get("MINICOMP_CFLAGS")
    flags = REQUIRED_FLAGS + (shlex.split(opt) if opt is not None else DEFAULT_OPT_FLAGS)
    flags = flags + _workarounds(tuple(flags))
    return flags + (SANITIZE_FLAGS if sanitizing() else [])


def _workarounds(flags: tuple[str, ...]) -> list[str]:
    """Flags that keep this compiler away from its known bugs (see the module docstring)."""
    macros = target_macros(flags)
    gcc = "__GNUC__" in macros and "__clang__" not in macros
    return (["-mno-avx512fp16"] if "__AVX512FP16__" in macros else []) + (["-fno-tree-vrp"] if gcc else [])


def compile_c(source: str, name: str = "graph") -> Path:
    """Compile ``source`` into a shared library, or return the cached one; its path."""
    cc = compiler()
    flags = cflags()
    key = cache.cache_key(source, " ".join(flags), compiler_version(cc))
    hit = cache.lookup(key)
    if hit:
        return hit
    with cache.building(key):
        hit = cache.lookup(key)  # another process may have built it while we waited
        if hit:
            return hit
        source_path = cache.cache_dir() / f"{key}.c"
        source_path.write_text(source)
        output = cache.temporary_path()
        command = [*shlex.split(cc), *flags, "-o", str(output), str(source_path), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            output.unlink(missing_ok=True)
            raise CompileError(
                f"{cc} failed on the code generated for {name!r} (source kept at {source_path}):\n"
                f"{' '.join(command)}\n{result.stderr[-4000:]}"
            )
        return cache.store(key, output, name)


def compile_assembly(source: str, flags: list[str] | None = None) -> str:
    """The assembly ``cc`` makes of ``source``: the build's flags (or ``flags``) plus ``-S``.

    Not cached: it is for reading (``minicomp dump --emit asm``), see ``codegen/asm.py``.
    """
    cc = compiler()
    command = [*shlex.split(cc), *(cflags() if flags is None else flags), "-S", "-o", "-", "-x", "c", "-"]
    result = subprocess.run(command, input=source, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{cc} -S failed:\n{' '.join(command)}\n{result.stderr[-4000:]}")
    return result.stdout


def predefined_macros(flags: list[str] | None = None) -> set[str]:
    """The macro names ``cc`` predefines under the build's flags (or ``flags``), e.g.
    ``__AVX512F__`` when ``-march=native`` targets a CPU with AVX-512."""
    cc = compiler()
    command = [*shlex.split(cc), *(cflags() if flags is None else flags), "-dM", "-E", "-x", "c", "-"]
    result = subprocess.run(command, input="", capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{cc} -dM -E failed:\n{' '.join(command)}\n{result.stderr[-4000:]}")
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("#define ")}


_ffi_lock = threading.Lock()
_ffi = None


def load_library(path: Path):
    """``dlopen`` a compiled library with cffi; returns the library with ``minicomp_entry``.

    ``RTLD_NODELETE``: a library is never unmapped, even when cffi closes it (when its
    Executable is freed, or at interpreter exit). Unmapping it would also unload libgomp, its
    dependency, while OpenMP's idle worker threads still run libgomp's code: a segfault.
    """
    global _ffi
    import cffi

    with _ffi_lock:
        if _ffi is None:
            _ffi = cffi.FFI()
            _ffi.cdef(ENTRY_DECLARATION)
        try:
            return _ffi, _ffi.dlopen(str(path), _ffi.RTLD_NOW | _ffi.RTLD_NODELETE)
        except OSError as exc:
            raise CompileError(f"cannot load compiled library {path}: {exc}") from None
