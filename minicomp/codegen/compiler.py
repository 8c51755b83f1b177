"""Compile C source into a shared library (through the compile cache) and load it with cffi.

Three separate steps, so each can be looked at on its own:

    source = render_c(program)        # minicomp.codegen.c: text
    path = compile_c(source)          # this module: gcc -> <cache>/<key>.so (or a cache hit)
    ffi, lib = load_library(path)     # this module: cffi's dlopen

``load_library`` declares the entry point to cffi without parsing C at run time: cffi's parser
(pycparser) costs more to import than everything else a warm compile does to load a library,
so the parsed declaration is kept in the cache as a tiny generated module (``entry_ffi``).

Flags live here and nowhere else. ``REQUIRED_FLAGS`` give the generated code its meaning
(``-fwrapv``: signed overflow wraps as in NumPy) and are always used; ``DEFAULT_OPT_FLAGS``
can be replaced with the environment variable ``MINICOMP_CFLAGS``. ``MINICOMP_SANITIZE=1``
adds AddressSanitizer and UBSan (the loading process must preload libasan, see the tests).
``CC`` picks the compiler (default: gcc, else cc). Two workarounds are added where they
apply (``_workarounds``): ``-mno-avx512fp16`` where the target has AVX512-FP16 (minicomp
computes float16 in float32 anyway, and GCC 12 emits masked ``vmovsh`` stores for float16
selects that binutils 2.40 refuses to assemble), and two for GCC 12.2 at -O3 -march=native,
both found by the random-graph tests (each kept there as a regression test):

* ``-fno-tree-vrp``: ``out[i] = i < 3 ? x[i] : x[i - 3]`` in a short fully unrolled nest (a
  concatenate) became a blend that reads zeros;
* ``--param=max-completely-peel-times=2``: ``x0 == x1 ? x0 : x2`` over a [6, 3] nest, the
  inner loop of 3 (or 6) fully unrolled and then vectorised with masked loads, read 0 where
  the compare is false. Loops of more than 2 iterations are no longer fully unrolled by the
  compiler (``#pragma GCC unroll``, as in the micro-kernel, still is).

Neither changed the workloads' times measurably (interleaved runs, within 3%).
"""

from __future__ import annotations

import functools
import hashlib
import io
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
    """The C compiler to use: ``$CC``, else gcc, else cc; ``CompileError`` if there is none.

    Looked up once per value of ``$CC`` and ``$PATH`` (lowering asks often: ~50 us each time).
    """
    return _find_compiler(os.environ.get("CC"), os.environ.get("PATH"))


@functools.lru_cache(maxsize=8)
def _find_compiler(cc: str | None, search_path: str | None) -> str:
    """``compiler()`` for these values of ``$CC`` and ``$PATH`` (a failure is not remembered)."""
    candidate = cc or shutil.which("gcc", path=search_path) or shutil.which("cc", path=search_path)
    if not candidate or not shutil.which(candidate.split()[0], path=search_path):
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
    return (["-mno-avx512fp16"] if "__AVX512FP16__" in macros else []) + (GCC_WORKAROUNDS if gcc else [])


GCC_WORKAROUNDS = ["-fno-tree-vrp", "--param=max-completely-peel-times=2"]


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
    """``dlopen`` a compiled library with cffi; returns ``(ffi, lib)``, ``lib.minicomp_entry``.

    ``RTLD_NODELETE``: a library is never unmapped, even when cffi closes it (when its
    Executable is freed, or at interpreter exit). Unmapping it would also unload libgomp, its
    dependency, while OpenMP's idle worker threads still run libgomp's code: a segfault.
    The ``ffi`` comes from ``entry_ffi()`` (made once per process).
    """
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            _ffi = entry_ffi()
        try:
            return _ffi, _ffi.dlopen(str(path), _ffi.RTLD_NOW | _ffi.RTLD_NODELETE)
        except OSError as exc:
            raise CompileError(f"cannot load compiled library {path}: {exc}") from None


# -- the cffi declaration of the entry point, without pycparser at run time ------------------------
#
# ``cffi.FFI().cdef(...)`` parses the declaration with pycparser, whose import alone costs about
# 25 ms: more than the rest of a warm compile's loading. cffi's "out-of-line ABI mode" does the
# parsing once: it writes a small Python module (``set_source(name, None)``) that
# builds the same FFI from a pre-parsed type table, importing only ``_cffi_backend`` (~1 ms).
# We keep that module in the compile cache, keyed by the declaration and cffi's version, with a
# checksum on its last line: a missing, truncated or corrupted module is regenerated, never run.

FFI_MODULE_PREFIX = "cffi-entry-"
_CHECKSUM_PREFIX = "# sha256: "


def entry_ffi():
    """A cffi ``FFI`` that knows ``ENTRY_DECLARATION``, from the generated module in the cache.

    The first call for a cache directory (and cffi version) generates the module with cffi's
    parser and stores it atomically; later calls, in any process, only run it.
    """
    import _cffi_backend

    path = ffi_module_path(_cffi_backend.__version__)
    ffi = _run_ffi_module(path)
    if ffi is None:
        text = _generate_ffi_module()
        ffi = _run_ffi_module(path, text)
        if ffi is None:  # cannot happen unless cffi generated code it cannot run itself
            raise CompileError(f"cffi's generated module for {ENTRY_DECLARATION!r} does not load")
        _store_ffi_module(path, text)
    return ffi


def ffi_module_path(cffi_version: str) -> Path:
    """Where the generated cffi module for this declaration and cffi version is cached."""
    key = cache.cache_key("cffi out-of-line ABI module", ENTRY_DECLARATION, cffi_version)
    return cache.cache_dir() / f"{FFI_MODULE_PREFIX}{key[:32]}.py"


def _generate_ffi_module() -> str:
    """The module's text, checksum line included (imports cffi and pycparser: slow, done once)."""
    import cffi
    from cffi.recompiler import make_py_source  # what ffi.emit_python_code runs, minus its print

    builder = cffi.FFI()
    builder.cdef(ENTRY_DECLARATION)
    text = io.StringIO()
    make_py_source(builder, "minicomp_entry_ffi", text)  # a dlopen()-style (ABI) module
    body = text.getvalue().rstrip("\n")
    return f"{body}\n{_CHECKSUM_PREFIX}{_sha256(body)}\n"


def _run_ffi_module(path: Path, text: str | None = None):
    """The ``ffi`` that the module's text (default: read from ``path``) defines; None if the text
    is missing, fails its checksum, or does not define an FFI."""
    import _cffi_backend

    if text is None:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            return None
    body, _, last_line = text.rstrip("\n").rpartition("\n")
    if last_line != f"{_CHECKSUM_PREFIX}{_sha256(body)}":
        return None
    namespace: dict = {}
    try:
        exec(compile(body, str(path), "exec"), namespace)
    except Exception:  # checksum fine but not loadable (another cffi's format): regenerate
        return None
    ffi = namespace.get("ffi")
    return ffi if isinstance(ffi, _cffi_backend.FFI) else None


def _store_ffi_module(path: Path, text: str) -> None:
    """Write the module atomically (temporary file + rename): readers see all of it or nothing.

    Processes racing here write the same text, so the last rename wins harmlessly. A cache
    directory that cannot be written only costs the next process the generation again.
    """
    temporary = None
    try:
        temporary = cache.temporary_path(".py")
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:
        if temporary is not None:
            temporary.unlink(missing_ok=True)


def _sha256(text: str) -> str:
    """Hex SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()
