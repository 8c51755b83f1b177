"""Warm starts without compiling: a compiled program remembered by the graph it was traced as.

The compile cache (``cache.py``) keys a library by its C source, so finding it still takes the
passes, lowering and rendering (about 35 ms of a warm start of ``block``). This cache keys one
stage earlier, on what the function traced to, and remembers what calling the library needs
(``CallPlan``): a warm start traces, hashes, reads one record and loads the library::

    traced graph --(key)--> program-<key>.json: the library's key, inputs, outputs, workspace
                            program-<key>.bin:  the constants the kernels read

The key covers everything that decides the program: the traced graph's text without source
locations (every constant by the SHA-256 of its bytes), the pass list, minicomp's own source
(every ``.py`` file of the package: an edited pass is a new key, whatever the version says),
the compiler's module-level settings as they are now (``work.PARALLEL_MIN_WORK = 0`` in a
notebook is a new key), the ``Target`` the schedules read (``host_target()``, every field by its
``repr``: ISA, vector widths, cores, caches and their line size), and the compile context:
flags, compiler and the target they resolve to on this CPU (as ``compiler.compile_key``). The
record is stored and read under the compile cache's rules (yours only, no links, checksummed,
whole or absent); a record that does not match what was traced (input names and types) is
ignored.

``jit`` uses it (``lookup`` before the passes, ``remember`` after compiling); the graph after
the passes and the loop IR of a program found here are made again only when asked for
(``inspect()``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import pkgutil
from pathlib import Path

import numpy as np

from .compiler import cflags, compiler, compiler_version, load_library, target_macros
from ..ir.graph import Graph
from ..stages import loop_program
from ..target import host_target
from . import cache
from .executable import CallPlan, Executable, prepare_argument


COMPILER_PACKAGES = ("minicomp.ir", "minicomp.passes", "minicomp.lower", "minicomp.schedules", "minicomp.schedules.cpu",
                     "minicomp.codegen", "minicomp.runtime")


def settings_fingerprint() -> str:
    """SHA-256 of the compiler's settings as they are now: every UPPER_CASE module constant of
    ``COMPILER_PACKAGES`` whose value is plain data (numbers, strings, dtypes and containers of
    them). A setting changed at run time (``work.PARALLEL_MIN_WORK = 0``) is a new key."""
    digest = hashlib.sha256()
    for module in _compiler_modules():
        for name, value in vars(module).items():
            text = _plain(value) if name.isupper() else None
            if text is not None:
                digest.update(f"{module.__name__}.{name}={text}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _compiler_modules() -> list:
    """Every module of ``COMPILER_PACKAGES``, imported (the same list in every process)."""
    modules = []
    for package_name in COMPILER_PACKAGES:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            modules.append(importlib.import_module(f"{package_name}.{info.name}"))
    return modules


def _plain(value) -> str | None:
    """A text that is the same in every process for plain data, None for anything else."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.dtype)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return None if None in items else f"[{','.join(items)}]"
    if isinstance(value, (set, frozenset)):
        items = [_plain(v) for v in value]
        return None if None in items else "{" + ",".join(sorted(items)) + "}"
    if isinstance(value, dict):
        items = [(_plain(k), _plain(v)) for k, v in value.items()]
        return None if any(None in pair for pair in items) else "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    return None


@functools.lru_cache(maxsize=1)
def package_fingerprint() -> str:
    """SHA-256 of every ``.py`` file of the installed minicomp package (read once per process)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def program_key(traced: Graph, passes: list[str], options: dict) -> str:
    """The key of what compiling ``traced`` through ``passes`` for the C target makes here."""
    flags = cflags()
    cc = compiler()
    digest = hashlib.sha256(traced.to_text(16, locations=False).encode())
    for node in traced.nodes():  # the text shows big constants by a short digest: hash them whole
        if node.op == "constant" and node.attrs["value"].size > 16:
            value = node.attrs["value"]
            digest.update(f"{value.dtype.str}{value.shape}".encode() + _array_bytes(value))
    return cache.cache_key("program", digest.hexdigest(), ",".join(passes), repr(sorted(options.items())),
                           package_fingerprint(), settings_fingerprint(), repr(host_target()), " ".join(flags),
                           compiler_version(cc), target_macros(tuple(flags)))


def _array_bytes(value: np.ndarray) -> bytes:
    """The array's elements as little-endian bytes in C order (the same for any layout)."""
    return np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<"), copy=False).tobytes()


def remember(key: str, executable: Executable) -> None:
    """Store what calling ``executable`` takes under ``key`` (a program from ``compile_c``)."""
    plan = executable.plan
    blob = b"".join(c.tobytes() for c in plan.constants)
    record = {
        "library": executable.library_path.stem,
        "name": plan.graph.name,
        "inputs": [[node.name, str(node.type)] for node in plan.graph.inputs],
        "constants": [[c.dtype.str, list(c.shape)] for c in plan.constants],
        "constants_sha256": hashlib.sha256(blob).hexdigest(),
        "outputs": [[np.dtype(dtype).str, list(shape)] for shape, dtype in plan.outputs],
        "output_order": plan.output_order,
        "workspace_bytes": plan.workspace_bytes,
        "threads": plan.threads,
    }
    cache.write_file(f"program-{key}.bin", blob)
    cache.write_record(f"program-{key}.json", record)  # last: a record always finds its constants


def lookup(key: str, traced: Graph, optimise) -> Executable | None:
    """The executable remembered under ``key`` for ``traced``, loaded; None when there is none
    (or it is damaged, not ours, or does not fit ``traced``). ``optimise()`` (the pass pipeline
    on ``traced``) makes its program again if anyone asks for it."""
    record = cache.read_record(f"program-{key}.json")
    try:
        if record is None or record["inputs"] != [[n.name, str(n.type)] for n in traced.inputs]:
            return None
        constants = _read_constants(key, record)
        library = cache.lookup(record["library"])
        if constants is None or library is None:
            return None
        plan = CallPlan(traced, constants, [(tuple(shape), np.dtype(dtype)) for dtype, shape in record["outputs"]],
                        list(record["output_order"]), int(record["workspace_bytes"]), bool(record["threads"]))
    except (KeyError, TypeError, ValueError):
        return None
    return Executable(None, None, loaded=(library, *load_library(library)), plan=plan,
                      relower=lambda: loop_program(optimise()[0]))


def _read_constants(key: str, record: dict) -> list[np.ndarray] | None:
    """The constants stored with the record, if their bytes are whole and unaltered."""
    types = [(np.dtype(dtype), tuple(shape)) for dtype, shape in record["constants"]]
    sizes = [dtype.itemsize * int(np.prod(shape, dtype=np.int64)) for dtype, shape in types]
    blob = cache.read_blob(f"program-{key}.bin", sum(sizes))
    if blob is None or hashlib.sha256(blob).hexdigest() != record["constants_sha256"]:
        return None
    constants, offset = [], 0
    for (dtype, shape), size in zip(types, sizes):
        stored = np.frombuffer(blob, dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
        constants.append(prepare_argument(stored, dtype))  # aligned (a copy where the offset is not)
        offset += size
    return constants


def fits(traced: Graph, executable: Executable) -> bool:
    """Whether ``executable`` (built from the optimised graph) takes ``traced``'s inputs as they
    are, so that a later lookup can check arguments against ``traced``."""
    inputs = executable.plan.graph.inputs
    return [(n.name, n.type) for n in inputs] == [(n.name, n.type) for n in traced.inputs]

