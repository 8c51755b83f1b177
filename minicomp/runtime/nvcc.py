"""CUDA source -> cubin with nvcc, through minicomp's compile cache; ptxas's report read back.

Two steps, each one function::

    source = render_cuda(program)          # minicomp.codegen.cuda: text and launches
    cubin = compile_cubin(source.text)     # this module: nvcc -> <cache>/<key>.cubin (or a cache hit)

``compile_cubin`` runs ``nvcc -cubin -arch=sm_90 -O3 -Xptxas -v`` (``NVCC_FLAGS``; no
``--use_fast_math``: its approximate division, square root and exp would not be NumPy's) and
keeps the cubin in the compile cache (``runtime/cache.py``, with the C libraries), keyed by the
source without its comments, the flags, the architecture and nvcc's version (``cubin_key``):
the same guarantees as a C library there (checksummed entries, no link followed, whole or
absent). The bytes it returns are read from the very file that was checked: never anything
minicomp did not build. ``ptxas -v``'s report (registers, spills, shared memory and stack of
each kernel) is kept with the entry: ``build_cubin`` returns it with the cubin, parsed by
``ptxas_report``, so a cache hit still tells whether a kernel spills.

``compile_many`` (``build_many``) builds many sources at far less than one nvcc run each, for
the test suite: nvcc's front end (``cicc``) costs about half a second per file however small,
and nvcc given several ``.cu`` files runs it once per file (measured: no faster than one nvcc
per file). So the sources are put into ONE translation unit (their shared prelude once, each
source's kernels renamed ``mc_u<n>__<name>``), compiled to PTX by one nvcc run; the PTX is cut
back into one module per source (its kernels under their own names, with the functions and
data they use: ``split_ptx``), and one more nvcc run assembles every module with ptxas
(``-cubin`` on ``.ptx`` inputs runs only ptxas), each into its own cubin, with ``-Xptxas -v``.
Each cubin goes into the cache under its own source's key, as ``compile_cubin`` would.

``find_nvcc`` looks on ``$PATH``, in ``$CUDA_HOME/bin`` and in ``/usr/local/cuda/bin``; without
one, a ``CompileError`` (a ``MinicompError``) says where it looked.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompileError
from . import cache
from .compiler import probe, without_comments

#: the flags of every build besides ``-cubin -arch=sm_XX``: optimised, ptxas reporting each kernel
NVCC_FLAGS = ("-O3", "-Xptxas", "-v")
DEFAULT_ARCH = "sm_90"
#: where the CUDA toolkit is when neither $PATH nor $CUDA_HOME says
FALLBACK_CUDA_BIN = "/usr/local/cuda/bin"


# -- finding nvcc --------------------------------------------------------------------------------------


def find_nvcc() -> str:
    """The path of nvcc: on ``$PATH``, else ``$CUDA_HOME/bin``, else ``/usr/local/cuda/bin``;
    ``CompileError`` saying where it looked when there is none."""
    return _find_nvcc(os.environ.get("PATH"), os.environ.get("CUDA_HOME"), FALLBACK_CUDA_BIN)


@functools.lru_cache(maxsize=8)
def _find_nvcc(search_path: str | None, cuda_home: str | None, fallback: str) -> str:
    """``find_nvcc`` for these values of ``$PATH``, ``$CUDA_HOME`` (a failure is not remembered)."""
    places = [search_path, os.path.join(cuda_home, "bin") if cuda_home else None, fallback]
    for directory in places:
        found = shutil.which("nvcc", path=directory) if directory else None
        if found:
            return found
    home = f"in $CUDA_HOME/bin ({places[1]})" if cuda_home else "in $CUDA_HOME/bin ($CUDA_HOME is not set)"
    raise CompileError(f"nvcc not found: the CUDA target needs the CUDA toolkit's compiler; looked on $PATH, {home} "
                       f"and in {fallback}. Install the CUDA toolkit, or set CUDA_HOME to where it is")


def nvcc_version() -> str:
    """nvcc's release, as ``nvcc --version`` says it: ``"13.0.88"`` (asked once per binary,
    remembered next to the compile cache)."""
    match = re.search(r"\bV(\d+(?:\.\d+)+)", _version_text())
    return match[1] if match else _version_text().strip().splitlines()[-1]


def _version_text() -> str:
    return probe(find_nvcc(), ("--version",))


# -- ptxas's report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PtxasInfo:
    """What ptxas says of one function: registers per thread, bytes spilled to local memory
    (stores, loads), static shared memory and stack frame bytes."""

    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    shared_bytes: int = 0
    stack_bytes: int = 0

    @property
    def spills(self) -> bool:
        """Whether the function spills registers to local memory."""
        return bool(self.spill_stores or self.spill_loads)


_FUNCTION = re.compile(r"ptxas info\s*: (?:Compiling entry function '([^']+)'|Function properties for (\S+))")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"ptxas info\s*: Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def ptxas_report(stderr: str) -> dict[str, PtxasInfo]:
    """``ptxas -v``'s output -> ``{function: PtxasInfo}``, for every kernel and device function
    it reports (functions not inlined have no register count: 0).

        ptxas info    : Function properties for k_add
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 11 registers, used 1 barriers, 64 bytes smem
            ->  {"k_add": PtxasInfo(registers=11, shared_bytes=64)}
    """
    fields: dict[str, dict] = {}
    current = None
    for line in stderr.splitlines():
        if match := _FUNCTION.search(line):
            current = match[1] or match[2]
            fields.setdefault(current, {})
        elif current is None:
            continue
        elif match := _FRAME.search(line):
            stack, stores, loads = map(int, match.groups())
            fields[current].update(stack_bytes=stack, spill_stores=stores, spill_loads=loads)
        elif match := _USED.search(line):
            fields[current]["registers"] = int(match[1])
            if smem := _SMEM.search(line):
                fields[current]["shared_bytes"] = int(smem[1])
    return {name: PtxasInfo(**values) for name, values in fields.items()}


# -- one source ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cubin:
    """A built CUDA module: its bytes, nvcc's messages (ptxas's ``-v`` report) and the cache key."""

    data: bytes
    log: str
    key: str

    @property
    def report(self) -> dict[str, PtxasInfo]:
        """ptxas's report per function (``ptxas_report`` of the log)."""
        return ptxas_report(self.log)


def cubin_key(text: str, arch: str = DEFAULT_ARCH, flags=NVCC_FLAGS) -> str:
    """The cache key of ``text`` built for ``arch`` with ``flags``: the source without its
    comments (which name the user's files), the flags, the architecture and nvcc's version."""
    return cache.cache_key("cuda", without_comments(text), " ".join(flags), arch, _version_text())


def compile_cubin(text: str, arch: str = DEFAULT_ARCH, flags=NVCC_FLAGS) -> bytes:
    """The cubin of the CUDA source ``text`` (``nvcc -cubin -arch=<arch> <flags>``), from the
    compile cache when it is there; ``CompileError`` with nvcc's messages when it fails."""
    return build_cubin(text, arch, flags).data


def build_cubin(text: str, arch: str = DEFAULT_ARCH, flags=NVCC_FLAGS, name: str = "cuda") -> Cubin:
    """``compile_cubin``'s cubin with ptxas's report (``Cubin``); ``name`` names it in messages."""
    key = cubin_key(text, arch, flags)
    hit = _cached(key)
    if hit:
        return hit
    with cache.building(key, name):
        hit = _cached(key)  # another process may have built it while we waited
        if hit:
            return hit
        kept = cache.write_file(f"{key}.cu", text.encode())  # for reading; nvcc compiles its own copy
        with tempfile.TemporaryDirectory(prefix="minicomp-nvcc-") as work, cache.temporary(".cubin") as output:
            Path(work, "kernel.cu").write_text(text)
            command = [find_nvcc(), "-cubin", f"-arch={arch}", *flags, "-o", str(output), "kernel.cu"]
            log = _run(command, work, f"the CUDA code generated for {name!r} (source kept at {kept})")
            return _store(key, output, name, log)


def _cached(key: str) -> Cubin | None:
    entry = cache.read_entry(key, ".cubin")
    if entry is None:
        return None
    data, meta = entry
    return Cubin(data, str(meta.get("log", "")), key)


def _store(key: str, built: Path, name: str, log: str) -> Cubin:
    """Put the cubin nvcc just built into the cache with its log; the checked entry."""
    cache.store(key, built, name, suffix=".cubin", extra={"log": log})
    stored = _cached(key)
    if stored is None:
        raise CompileError(f"the cubin built for {name!r} did not check out in the compile cache ({key[:16]}...)")
    return stored


def _run(command: list[str], cwd: str, what: str) -> str:
    """Run nvcc; its messages (stderr), or ``CompileError`` naming ``what`` failed to compile."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except OSError as exc:
        raise CompileError(f"cannot run nvcc ({command[0]}): {exc}") from None
    if result.returncode != 0:
        raise CompileError(f"nvcc failed on {what}:\n{shlex.join(command)}\n{result.stderr[-4000:]}")
    return result.stderr


def arch_of(target) -> str:
    """The ``-arch`` of a CUDA ``Target``: ``sm_90`` for compute capability (9, 0)."""
    major, minor = target.compute_capability or (9, 0)
    return f"sm_{major}{minor}"


def compile_ptx(text: str, arch: str = DEFAULT_ARCH, flags=("-O3",)) -> str:
    """The PTX nvcc makes of ``text`` (``nvcc -ptx``): for reading (``minicomp dump --emit ptx``),
    not cached."""
    with tempfile.TemporaryDirectory(prefix="minicomp-nvcc-") as work:
        source = Path(work, "kernel.cu")
        source.write_text(text)
        _run([find_nvcc(), "-ptx", f"-arch={arch}", *flags, "-o", "kernel.ptx", "kernel.cu"], work, "a CUDA file")
        return Path(work, "kernel.ptx").read_text()


def disassemble(cubin: bytes) -> str:
    """The SASS (the GPU's own instructions) of a cubin: ``cuobjdump --dump-sass``, found next
    to nvcc (``minicomp dump --target cuda --emit sass``). Needs no GPU; ``CompileError`` where
    the toolkit has no cuobjdump (some minimal installs ship nvcc alone)."""
    tool = shutil.which("cuobjdump", path=os.path.dirname(find_nvcc())) or shutil.which("cuobjdump")
    if tool is None:
        raise CompileError(f"cuobjdump not found next to {find_nvcc()} or on $PATH: this CUDA toolkit cannot "
                           "disassemble a cubin; --emit ptx shows the code one level up")
    with tempfile.TemporaryDirectory(prefix="minicomp-sass-") as work:
        Path(work, "kernel.cubin").write_bytes(cubin)
        result = subprocess.run([tool, "--dump-sass", "kernel.cubin"], cwd=work, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"cuobjdump failed: {result.stderr[-2000:]}")
    return result.stdout


# -- many sources at once ------------------------------------------------------------------------------


def compile_many(texts: list[str], arch: str = DEFAULT_ARCH, flags=NVCC_FLAGS) -> list[bytes]:
    """The cubins of several CUDA sources (``compile_cubin`` of each), built together in two nvcc
    runs (module docstring): for the test suite, which compiles every kernel it generates."""
    return [cubin.data for cubin in build_many(texts, arch, flags)]


def build_many(texts: list[str], arch: str = DEFAULT_ARCH, flags=NVCC_FLAGS) -> list[Cubin]:
    """``build_cubin`` of each source, those not in the cache built together: sources that share
    their prelude (``codegen/cuda.py``'s, in an include guard) as one translation unit, any other
    alone. Each cubin is cached under its own source's key. ``CompileError`` names the source
    nvcc failed on (those are then compiled alone, so that its messages are its own)."""
    keys = [cubin_key(text, arch, flags) for text in texts]
    built: dict[str, Cubin] = {}
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts):
        hit = built.get(key) or _cached(key)
        if hit:
            built[key] = hit
        else:
            missing.setdefault(key, text)
    groups: dict[str, list[str]] = {}
    for key, text in missing.items():
        groups.setdefault(_prelude_of(text), []).append(key)
    for prelude, group in groups.items():
        if prelude and len(group) > 1:
            try:
                built.update(_build_together({key: missing[key] for key in group}, arch, flags))
                continue
            except CompileError:
                pass  # one of them does not compile: each alone, for its own messages
        for key in group:
            built[key] = build_cubin(missing[key], arch, flags)
    return [built[key] for key in keys]


def _prelude_of(text: str) -> str:
    """The include-guarded prelude ``text`` starts with (``codegen/cuda.py``), or "" for none."""
    from ..codegen.cuda import PRELUDE_END

    end = text.find(PRELUDE_END)
    return text[:end + len(PRELUDE_END)] if end >= 0 else ""


_KERNEL_NAME = re.compile(r'(extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?)([A-Za-z_]\w*)\(')


def _unit_prefix(n: int) -> str:
    return f"mc_u{n}__"


def merged_source(texts: list[str]) -> str:
    """One translation unit of several sources: each source's kernels renamed ``mc_u<n>__<name>``
    (n its place in ``texts``); an include guard keeps their common prelude once."""
    parts = []
    for n, text in enumerate(texts):
        parts.append(f"/* ---- source {n} ---- */\n" + _KERNEL_NAME.sub(
            lambda m, n=n: f"{m[1]}{_unit_prefix(n)}{m[2]}(", text))
    return "\n".join(parts)


def _build_together(texts: dict[str, str], arch: str, flags) -> dict[str, Cubin]:
    """Build ``{key: text}`` as one translation unit -> one PTX file -> a module per source."""
    keys = list(texts)
    nvcc_flags, ptxas_flags = _split_flags(flags)
    with tempfile.TemporaryDirectory(prefix="minicomp-nvcc-") as work:
        Path(work, "merged.cu").write_text(merged_source([texts[key] for key in keys]))
        _run([find_nvcc(), "-ptx", f"-arch={arch}", *nvcc_flags, "-o", "merged.ptx", "merged.cu"], work,
             f"{len(keys)} CUDA sources compiled as one")
        modules = split_ptx(Path(work, "merged.ptx").read_text(), [_unit_prefix(n) for n in range(len(keys))])
        inputs = []
        Path(work, "out").mkdir()
        for n, module in enumerate(modules):
            Path(work, f"u{n}.ptx").write_text(module)
            inputs.append(f"u{n}.ptx")
        # -cubin on .ptx inputs runs ptxas alone, once per file; -v shows each ptxas command
        # before its report, which is how the reports are told apart
        log = _run([find_nvcc(), "-cubin", f"-arch={arch}", "-v", *ptxas_flags, *inputs, "-odir", "out"], work,
                   f"the PTX of {len(keys)} CUDA sources")
        logs = _ptxas_logs(log)
        results = {}
        for n, key in enumerate(keys):
            with cache.temporary(".cubin") as output:
                output.write_bytes(Path(work, "out", f"u{n}.cubin").read_bytes())
                results[key] = _store(key, output, f"cuda source {n} of a batch", logs.get(f"u{n}.ptx", ""))
        return results


def _split_flags(flags) -> tuple[list[str], list[str]]:
    """``flags`` as the PTX step's (without ``-Xptxas``) and the ptxas step's (``-Xptxas`` s)."""
    nvcc_flags, ptxas_flags, items = [], [], iter(flags)
    for flag in items:
        if flag in ("-Xptxas", "--ptxas-options"):
            ptxas_flags += [flag, next(items)]
        elif flag.startswith(("-Xptxas=", "--ptxas-options=")):
            ptxas_flags.append(flag)
        else:
            nvcc_flags.append(flag)
    return nvcc_flags, ptxas_flags


def _ptxas_logs(log: str) -> dict[str, str]:
    """nvcc ``-v``'s messages over several PTX inputs -> each input's ptxas messages, by file name."""
    logs: dict[str, list[str]] = {}
    current = None
    for line in log.splitlines():
        if line.startswith("#$ "):
            match = re.search(r'"?([\w.-]+\.ptx)"?\s+-o', line) if "ptxas" in line else None
            current = match[1] if match else None
            if current:
                logs[current] = []
        elif current:
            logs[current].append(line)
    return {name: "\n".join(lines) + "\n" for name, lines in logs.items()}


# -- cutting PTX into modules --------------------------------------------------------------------------

_PTX_HEADER = (".version", ".target", ".address_size")
_PTX_NAME = re.compile(r"[A-Za-z_$%][\w$]*")
_PTX_FUNCTION = re.compile(r"\.(?:entry|func)\s+(?:\([^)]*\)\s*)?([A-Za-z_$][\w$]*)")
_PTX_VARIABLE = re.compile(r"(?<![.\w$])([A-Za-z_$][\w$]*)\s*(?:\[\d*\]\s*)*(?:=|;)")


def ptx_items(ptx: str) -> tuple[list[str], list[str]]:
    """PTX text -> (its header lines: ``.version``, ``.target``, ``.address_size``; its top-level
    items: each declaration or definition, a global variable, a function, a kernel, whole)."""
    header, items, current, depth = [], [], [], 0
    for line in ptx.splitlines():
        code = line.split("//", 1)[0].strip()
        if depth == 0 and not current:
            if not code:
                continue
            if code.startswith(_PTX_HEADER):
                header.append(line)
                continue
        current.append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0 and code.endswith((";", "}")):
            items.append("\n".join(current))
            current = []
    if current:
        items.append("\n".join(current))
    return header, items


def _defines(item: str) -> str | None:
    """The name a top-level PTX item declares or defines (a function's, a variable's)."""
    first = item.split("{", 1)[0]
    match = _PTX_FUNCTION.search(first) or _PTX_VARIABLE.search(first)
    return match[1] if match else None


def split_ptx(ptx: str, prefixes: list[str]) -> list[str]:
    """The PTX of several sources compiled as one (``merged_source``) -> one module per source.

    Module n holds the kernels named ``prefixes[n] + name``, renamed back to ``name``, and every
    function and variable they use (their declarations and definitions, in the original order),
    after the header. Kernels of other sources, and what only they use, are left out.
    """
    header, items = ptx_items(ptx)
    defined: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        name = _defines(item)
        if name:
            defined.setdefault(name, []).append(i)
    modules = []
    for prefix in prefixes:
        kernels = [i for i, item in enumerate(items)
                   if ".entry" in item.split("(", 1)[0] and (_defines(item) or "").startswith(prefix)]
        keep, todo = set(kernels), list(kernels)
        while todo:
            for name in set(_PTX_NAME.findall(items[todo.pop()])):
                for i in defined.get(name, ()):
                    if i not in keep:
                        keep.add(i)
                        todo.append(i)
        body = "\n".join(items[i] for i in sorted(keep))
        body = re.sub(rf"(?<![\w$]){re.escape(prefix)}", "", body)
        modules.append("\n".join(header) + "\n\n" + body + "\n")
    return modules
