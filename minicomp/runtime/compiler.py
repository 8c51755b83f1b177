"""Compile C source into a shared library (through the compile cache) and load it with cffi.

Three separate steps, so each can be looked at on its own:

    source = render_c(program)        # minicomp.codegen.c: text
    path = compile_c(source)          # this module: gcc -> <cache>/<key>.so (or a cache hit)
    ffi, lib = load_library(path)     # this module: cffi's dlopen

``compile_c`` keys the cache on the source without its comments (they name the user's
``file:line``, relative to the working directory), the flags, the compiler and the target
``-march=native`` resolved to (``compile_key``). ``load_library`` loads the very file the cache
verified, and declares the entry point to cffi without parsing C at run time: cffi's parser
(pycparser) costs more to import than everything else a warm compile does to load a library,
so the parsed declaration is kept in this module, as data (``ENTRY_FFI_TABLES``).

Flags: ``cflags()`` gives the next compilation's, from the policy in ``flags.py``, which says
why each one is there: ``REQUIRED_FLAGS`` (always), ``DEFAULT_OPT_FLAGS`` (or
``MINICOMP_CFLAGS``), the workarounds for known compiler bugs that apply to the target, and
AddressSanitizer + UBSan with ``MINICOMP_SANITIZE=1`` (the loading process must preload
libasan, see the tests). ``CC`` picks the compiler (default: gcc, else cc).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import CompileError
from . import cache
from .fork import ForkSafeLock
# the flag policy lives in flags.py; its names are imported here too, where callers found them
from .flags import DEFAULT_OPT_FLAGS, GCC_WORKAROUNDS, REQUIRED_FLAGS, SANITIZE_FLAGS, workarounds  # noqa: F401
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
def probe(cc: str, args: tuple[str, ...], stdin: str = "") -> str:
    """The output of ``cc args`` given ``stdin`` (default: empty), remembered on disk next to
    the compile cache.

    Asking the compiler what it is and what ``-march=native`` means costs a process start
    (~10 ms) each time; the answer only changes with the compiler binary (its path, size and
    modification time) and the CPU (``cpu_identity``), which name the record with the arguments
    and the input. The record is checksummed: a missing, emptied, truncated or altered one is
    asked again, never believed. A failing probe raises ``CompileError``.
    """
    command = [*shlex.split(cc), *args]
    identity = {"compiler": _binary_identity(command[0]), "cpu": cpu_identity(), "args": list(args)}
    key_parts = [*identity["compiler"], identity["cpu"], *args]
    if stdin:
        identity["stdin"] = stdin
        key_parts.append(stdin)
    name = f"probe-{cache.cache_key(*key_parts)[:32]}.json"
    record = cache.read_record(name)
    if record is not None and {k: record.get(k) for k in identity} == identity:
        return record["output"]
    try:
        result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileError(f"cannot run the C compiler {cc!r}: {exc}") from None
    if result.returncode != 0:
        raise CompileError(f"the C compiler failed on `{shlex.join(command)}` (minicomp asks it what "
                           f"it targets):\n{result.stderr[-2000:]}")
    cache.write_record(name, {**identity, "output": result.stdout})
    return result.stdout


def _binary_identity(program: str) -> list[str]:
    """Which compiler binary ``program`` runs: its real path, size and modification time."""
    binary = shutil.which(program) or program
    try:
        status = os.stat(binary)
    except OSError:
        return [binary]
    return [os.path.realpath(binary), str(status.st_size), str(status.st_mtime_ns)]


CPU_FIELDS = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags",  # x86
              "CPU implementer", "CPU architecture", "CPU variant", "CPU part", "Features",  # Arm
              "isa", "uarch", "cpu")  # RISC-V, POWER


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """The CPU that ``-march=native`` resolves from: the first processor's model and feature lines
    of ``/proc/cpuinfo`` (read once per process, ~0.1 ms), else the machine and processor names.

    Part of the key of every probe, so a cache shared by two machines never answers for the
    other one.
    """
    try:
        fd = os.open("/proc/cpuinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        text = ""
    else:
        with os.fdopen(fd, "rb") as f:
            text = f.read(1 << 16).decode(errors="replace")
    first = text.split("\n\n", 1)[0]
    lines = [line for line in first.splitlines() if line.split(":", 1)[0].strip() in CPU_FIELDS]
    if lines:
        return "\n".join(lines)
    import platform

    return f"{platform.machine()} {platform.processor()} {platform.platform()}"


def compiler_version(cc: str) -> str:
    """The first line of ``cc --version`` (part of the cache key)."""
    out = probe(cc, ("--version",))
    return out.splitlines()[0] if out else cc


def target_macros(flags: tuple[str, ...]) -> str:
    """``cc -dM -E`` under ``flags``: the macros that tell what the target CPU has (``__AVX512F__`` ...).

    Raises ``CompileError`` when the compiler cannot say (no compiler, a flag it refuses, no
    macros at all): a guess here would drop flags that the target needs.
    """
    macros = probe(compiler(), (*flags, "-dM", "-E", "-x", "c", "-"))
    if "#define" not in macros:
        raise CompileError(f"the C compiler {compiler()!r} printed no predefined macros for "
                           f"`-dM -E {' '.join(flags)}`: minicomp cannot tell what it targets")
    return macros


def probe_assembly(source: str, flags: tuple[str, ...]) -> str:
    """The assembly the compiler makes of a small C ``source`` with ``flags`` (``-S``), remembered
    on disk like every ``probe``: for questions such as "how wide are the vectors of a plain loop"
    (``target.loop_vector_width``)."""
    return probe(compiler(), (*flags, "-S", "-o", "-", "-x", "c", "-"), source)


def sanitizing() -> bool:
    """True when ``MINICOMP_SANITIZE=1``: build with AddressSanitizer and UBSan."""
    return os.environ.get("MINICOMP_SANITIZE", "") not in ("", "0")


def cflags() -> list[str]:
    """All flags for the next compilation (required + optimisation + workarounds + sanitizer)."""
    opt = os.environ.get("MINICOMP_CFLAGS")
    flags = build_flags(shlex.split(opt) if opt is not None else DEFAULT_OPT_FLAGS)
    return flags + (SANITIZE_FLAGS if sanitizing() else [])


def compiler_env() -> dict[str, str] | None:
    """The environment the C compiler runs in: this process's (None), but without
    ``LD_PRELOAD`` when sanitizing. The process that loads sanitized kernels preloads the
    sanitizer runtimes (``tests/test_sanitize.py``); they are the kernels' and not the
    compiler's, and gcc with them intercepting its allocations takes ~1.6x as long."""
    if not sanitizing() or "LD_PRELOAD" not in os.environ:
        return None
    return {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}


def build_flags(opt_flags: list[str]) -> list[str]:
    """``REQUIRED_FLAGS + opt_flags`` and the workarounds for the compiler and the target they
    select (``flags.workarounds``), e.g. ``build_flags(["-O3", "-march=haswell"])`` for the
    flags a build for Haswell would get on this compiler (no sanitizer)."""
    flags = REQUIRED_FLAGS + list(opt_flags)
    return flags + _workarounds(tuple(flags))


def _workarounds(flags: tuple[str, ...]) -> list[str]:
    """Flags that keep this compiler away from its known bugs (``flags.py``) for ``flags``' target."""
    return workarounds(target_macros(flags))


def compile_c(source: str, name: str = "graph") -> Path:
    """Compile ``source`` into a shared library, or return the cached one; its path.

    The compiler reads the source from stdin; ``<key>.c`` in the cache is a copy for reading.
    """
    cc = compiler()
    flags = cflags()
    key = compile_key(source, flags, cc)
    hit = cache.lookup(key)
    if hit:
        return hit
    with cache.building(key, name):
        hit = cache.lookup(key)  # another process may have built it while we waited
        if hit:
            return hit
        source_path = cache.write_file(f"{key}.c", source.encode())
        with cache.temporary() as output:
            command = [*shlex.split(cc), *flags, "-o", str(output), "-x", "c", "-", "-x", "none", "-lm"]
            result = subprocess.run(command, input=source, capture_output=True, text=True, env=compiler_env())
            if result.returncode != 0:
                raise CompileError(
                    f"{cc} failed on the code generated for {name!r} (source kept at {source_path}; "
                    f"<stdin> is that file):\n{' '.join(command)}\n{result.stderr[-4000:]}"
                )
            return cache.store(key, output, name)


def compile_key(source: str, flags: list[str], cc: str) -> str:
    """The cache key of ``source`` compiled by ``cc`` with ``flags`` on this machine.

    It covers what decides the library: the code (comments removed, so neither the working
    directory nor an edit above the function changes it), the flags, the compiler
    (``compiler_version``) and the target those flags resolve to on this CPU (``target_macros``:
    a cache shared between machines never hands AVX-512 code to a CPU without it).
    """
    return cache.cache_key(without_comments(source), " ".join(flags), compiler_version(cc),
                           target_macros(tuple(flags)))


_C_COMMENT_OR_LITERAL = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def without_comments(source: str) -> str:
    """``source`` with each C comment replaced by a space, as the compiler sees it (string and
    character literals are left whole).

        "x = 1; /* at a.py:3 */ y = 2;"  ->  "x = 1;   y = 2;"
    """
    return _C_COMMENT_OR_LITERAL.sub(lambda m: " " if m[0][0] == "/" else m[0], source)


def compile_assembly(source: str, flags: list[str] | None = None) -> str:
    """The assembly ``cc`` makes of ``source``: the build's flags (or ``flags``) plus ``-S``.

    Not cached: it is for reading (``minicomp dump --emit asm``), see ``tools/asm.py``.
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


_ffi_lock = ForkSafeLock()
_ffi = None
_loads = itertools.count()


def load_library(path: Path):
    """``dlopen`` a library from the compile cache with cffi; returns ``(ffi, lib)``, ``lib.minicomp_entry``.

    ``path`` must be a cache entry (``compile_c``'s result): it is opened without following
    links and checked against its recorded size and checksum, and that open file is what is
    loaded (``/proc/self/fd/N`` where there is one), so a file swapped in after the check is
    never loaded. ``CompileError`` if it does not check out.

    ``RTLD_NODELETE``: a library is never unmapped, even when cffi closes it (when its
    Executable is freed, or at interpreter exit). Unmapping it would also unload libgomp, its
    dependency, while OpenMP's idle worker threads still run libgomp's code: a segfault.
    The ``ffi`` comes from ``entry_ffi()`` (made once per process).
    """
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            _ffi = entry_ffi()
        fd = _open_verified(path)
        try:
            return _ffi, _ffi.dlopen(_dlopen_name(fd, path), _ffi.RTLD_NOW | _ffi.RTLD_NODELETE)
        except OSError as exc:
            raise CompileError(f"cannot load compiled library {path}: {exc}") from None
        finally:
            os.close(fd)


def _open_verified(path: Path) -> int:
    """``cache.open_verified(path)``, asked twice: a process storing the same entry at that
    moment renames the library and then its record, and may be between the two."""
    for attempt in range(2):
        try:
            return cache.open_verified(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = exc
            time.sleep(0.05)
    raise CompileError(f"cannot load compiled library {path}: it is not a whole, checked entry of "
                       f"the compile cache ({problem})")


def _dlopen_name(fd: int, path: Path) -> str:
    """A name under which ``dlopen`` opens the file of ``fd``, new in this process.

    glibc hands back the library already loaded under the same name, and fd numbers are reused,
    so ``/proc/self/fd/N`` alone could load an earlier library again; "/." and "/" (the same
    directory to the kernel) spell a counter that makes each name new. Without ``/proc``: the path.
    """
    if not os.path.isdir("/proc/self/fd"):
        return str(path)
    spelled = "".join("/." if bit == "1" else "/" for bit in f"{next(_loads):b}")
    return f"/proc/self/fd{spelled}/{fd}"


# -- the cffi declaration of the entry point, without pycparser at run time ------------------------
#
# ``cffi.FFI().cdef(...)`` parses the declaration with pycparser, whose import alone costs about
# 25 ms: more than the rest of a warm compile's loading. cffi's "out-of-line ABI mode" does the
# parsing ahead of time: the module it generates (``cffi.recompiler.make_py_source``) passes
# pre-parsed type tables to ``_cffi_backend.FFI``, which imports in ~1 ms. Those tables are kept
# here, as data, and never read from the cache: tests/test_cache.py regenerates them with the
# installed cffi and checks that they are equal.

ENTRY_FFI_TABLES = {
    "_version": 0x2601,
    "_types": b"\x00\x00\x03\x0D\x00\x00\x04\x03\x00\x00\x00\x0F"
              b"\x00\x00\x07\x01\x00\x00\x05\x03\x00\x00\x00\x01",
    "_globals": (b"\x00\x00\x00\x23minicomp_entry", 0),
}


def entry_ffi():
    """A cffi ``FFI`` that knows ``ENTRY_DECLARATION``, from ``ENTRY_FFI_TABLES``.

    A cffi whose backend refuses the tables (another out-of-line format) gets the declaration
    parsed instead: slower to start, same result.
    """
    import _cffi_backend

    try:
        return _cffi_backend.FFI("minicomp_entry_ffi", **ENTRY_FFI_TABLES)
    except Exception:  # ImportError "unknown version" and the like
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(ENTRY_DECLARATION)
        return ffi
