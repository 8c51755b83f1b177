"""The on-disk compile cache: compiled shared libraries keyed by what produced them.

Layout (``MINICOMP_CACHE_DIR``, default ``$XDG_CACHE_HOME/minicomp`` or ``~/.cache/minicomp``,
created owner-only)::

    <key>.so      the compiled library
    <key>.json    {"sha256": ..., "size": ..., "source_name": ...}, written last
    <key>.lock    taken while one process builds the entry

The key is the SHA-256 of the C source, the compiler flags, the compiler's version and
minicomp's version, so any change to one of them is a new entry. Writes are atomic: the library
is built in a temporary file in the cache directory and renamed into place, then its metadata
is renamed into place. A reader verifies size and checksum before trusting an entry; a missing,
truncated or corrupted entry is rebuilt, never loaded. A per-key file lock means that several
processes (or threads) compiling the same function at once compile it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from .. import __version__

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """The cache directory (created with mode 0700 if missing)."""
    root = os.environ.get("MINICOMP_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "minicomp"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cache_key(*parts: str) -> str:
    """SHA-256 over the parts (source, flags, compiler version) and minicomp's version."""
    digest = hashlib.sha256()
    for part in (*parts, __version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lookup(key: str) -> Path | None:
    """The verified library for ``key``, or None if absent, truncated or corrupted."""
    directory = cache_dir()
    library, meta_path = directory / f"{key}.so", directory / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if library.stat().st_size != meta["size"] or file_sha256(library) != meta["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return library


def store(key: str, built: Path, description: str = "") -> Path:
    """Move a freshly built library into the cache atomically; return its cached path."""
    directory = cache_dir()
    library = directory / f"{key}.so"
    meta = {"sha256": file_sha256(built), "size": built.stat().st_size, "source_name": description}
    os.replace(built, library)
    fd, tmp_meta = tempfile.mkstemp(dir=directory, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    os.replace(tmp_meta, directory / f"{key}.json")
    return library


@contextmanager
def building(key: str):
    """Hold the build lock of ``key`` (across threads and processes) while inside."""
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(key, threading.Lock())
    with thread_lock, open(cache_dir() / f"{key}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def temporary_path(suffix: str = ".so") -> Path:
    """A fresh path inside the cache directory (same filesystem, so rename is atomic)."""
    fd, path = tempfile.mkstemp(dir=cache_dir(), suffix=suffix + ".tmp")
    os.close(fd)
    return Path(path)


def info() -> dict:
    """Where the cache is, how many entries it holds and their total size in bytes."""
    directory = cache_dir()
    libraries = list(directory.glob("*.so"))
    return {"path": str(directory), "entries": len(libraries),
            "bytes": sum(p.stat().st_size for p in directory.iterdir() if p.is_file())}


def clear() -> int:
    """Delete every entry; return how many libraries were removed."""
    directory = cache_dir()
    count = len(list(directory.glob("*.so")))
    shutil.rmtree(directory)
    cache_dir()
    return count
