"""The on-disk compile cache: compiled shared libraries keyed by what produced them.

Layout (``MINICOMP_CACHE_DIR``, default ``$XDG_CACHE_HOME/minicomp`` or ``~/.cache/minicomp``,
created with mode 0700)::

    <key>.so         the compiled library
    <key>.json       {"sha256": ..., "size": ..., "source_name": ...}, written last
    <key>.c          the C source it was built from, kept for reading (never compiled from here)
    <key>.cubin      a CUDA module nvcc built (``runtime/nvcc.py``), its ``.json`` as a library's
                     (with nvcc's ptxas report), its source kept as ``<key>.cu``
    <key>.lock       taken while one process builds the entry; holds that process's pid
    program-<k>.json  what calling a library takes, by the graph it was traced as
    program-<k>.bin   ... and the constants its kernels read (``runtime/program_cache.py``)
    probe-<k>.json   a remembered answer of the compiler (``runtime.compiler.probe``), checksummed
    tmp-<host>-<pid>-<random>[.ext].tmp    a file being written, renamed into place when whole

``<key>`` is 64 hex digits: the SHA-256 of the C source without its comments, the flags, the
compiler, the target it resolved (``-march=native`` on this CPU) and minicomp's version
(``runtime.compiler.compile_key``), so any change to one of them is a new entry.

What the cache guarantees:

* **Only a directory of yours.** The directory must be a real directory (not a symbolic link),
  owned by you and writable by nobody else; anything else is a ``CacheError`` that says what to
  do. Checked on first use in a process, and again (one ``lstat``) whenever it has changed.
* **No link is followed.** Every cache file is opened with ``O_NOFOLLOW`` and used only if it
  is a regular file owned by you. Every write goes to a new temporary file (``O_EXCL``) that
  is renamed into place: a planted link is replaced, never written through.
* **Whole or absent.** The library is renamed into place, then its metadata. A reader checks
  size and checksum before trusting an entry and loads the very file it checked
  (``open_verified``); a missing, truncated or altered entry is rebuilt, never loaded.
* **One build per key.** A per-key lock makes processes (and threads) compiling the same
  function at once compile it once. A wait of more than a few seconds names the process that
  holds the lock; after ``MINICOMP_LOCK_TIMEOUT`` seconds (default 60) the waiter builds
  without it, which is safe because every write is atomic.
* **No litter, no loss.** Temporaries left by killed builds (their process gone, or an hour
  old) are swept once per process, at its first build. ``clear()`` removes minicomp's own
  files only (the names above, regular files of yours) and leaves everything else alone.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import stat
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .. import __version__
from ..errors import CacheError, MinicompWarning
from .fork import ForkSafeLock

DEFAULT_LOCK_TIMEOUT = 60.0  # seconds; a build of the largest workload takes a few
LOCK_NOTICE_AFTER = 3.0  # seconds of waiting before saying who holds the lock
STALE_AFTER = 3600.0  # seconds after which anyone's leftover temporary is swept

_HOST = hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}(\.[a-z]+)?\.tmp")  # host, pid
_OLD_TEMPORARY = re.compile(r"tmp[a-z0-9_]{8}\.(so|json|py)\.tmp")  # minicomp 0.1's mkstemp names
_OWN_FILE = re.compile(
    r"[0-9a-f]{64}\.(so|json|c|cu|cubin|lock)|program-[0-9a-f]{64}\.(json|bin)|probe-[0-9a-f]{32}\.(json|txt)"
    r"|cffi-entry-[0-9a-f]{32}\.py")

_trusted: dict[str, tuple] = {}  # directory -> (st_dev, st_ino, st_uid, st_mode) it had when checked
_swept: set[str] = set()  # directories whose stale temporaries this process has swept
_thread_locks: dict[str, ForkSafeLock] = {}
_thread_locks_guard = ForkSafeLock()


class NotOurs(OSError):
    """A cache file that is not a regular file owned by the user, or does not match its record."""


# -- the directory ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache directory, created (mode 0700) if missing and checked before it is used.

    Raises ``CacheError`` when it cannot be created or is not safe: a symbolic link, not a
    directory, owned by another user, writable by group or others, or not writable by you.
    Costs one ``lstat`` once the directory has been checked in this process.
    """
    path = _configured_path()
    try:
        status = os.lstat(path)
    except OSError:
        status = None
    if status is None or _trusted.get(path) != _identity(status):
        _trusted[path] = _identity(_check_directory(path))
    return Path(path)


def _configured_path() -> str:
    """``MINICOMP_CACHE_DIR`` or the default, as an absolute path."""
    root = os.environ.get("MINICOMP_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "minicomp")
    return os.path.abspath(root)


def _identity(status: os.stat_result) -> tuple:
    return status.st_dev, status.st_ino, status.st_uid, status.st_mode


def _check_directory(path: str) -> os.stat_result:
    """Create ``path`` if missing; its ``lstat`` if it is safe to use, else ``CacheError``."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        status = os.lstat(path)
    except OSError as exc:
        raise _unusable(path, f"cannot be created ({exc.strerror})",
                        "choose a directory you can write") from None
    if stat.S_ISLNK(status.st_mode):
        raise _unusable(path, "is a symbolic link; minicomp follows no links into its cache",
                        "name a real directory")
    if not stat.S_ISDIR(status.st_mode):
        raise _unusable(path, "is not a directory", "choose another path")
    if status.st_uid != os.geteuid():
        raise _unusable(path, f"is owned by user {status.st_uid}, not by you (user {os.geteuid()}): "
                              "its owner could make you load their code", "choose a directory of your own")
    if status.st_mode & 0o022:
        who = " and ".join(w for w, bit in (("group", 0o020), ("others", 0o002)) if status.st_mode & bit)
        mode = f"{stat.S_IMODE(status.st_mode):04o}"
        raise _unusable(path, f"is writable by {who} (mode {mode}): they could make you load their code",
                        f"run `chmod 700 {path}`, or choose a directory only you can write")
    if not os.access(path, os.W_OK | os.X_OK):
        raise _unusable(path, "is not writable by you", "choose a directory you can write")
    return status


def _unusable(path: str, problem: str, fix: str) -> CacheError:
    """The error for a cache directory that cannot be used: where, what is wrong, what to do."""
    setting = "MINICOMP_CACHE_DIR" if os.environ.get("MINICOMP_CACHE_DIR") else "the default cache directory"
    return CacheError(f"compile cache {path} ({setting}) {problem}: {fix} "
                      f"(export MINICOMP_CACHE_DIR=DIR picks another one)")


# -- keys and files ---------------------------------------------------------------------------------


def cache_key(*parts: str) -> str:
    """SHA-256 over the parts (source, flags, compiler ...) and minicomp's version."""
    digest = hashlib.sha256()
    for part in (*parts, __version__):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def open_own(path: Path, flags: int = os.O_RDONLY) -> int:
    """A file descriptor of ``path``, never through a symbolic link; ``NotOurs`` unless it is a
    regular file owned by the user. (``O_NONBLOCK``: a planted FIFO must not block the open.)"""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_uid != os.geteuid():
        os.close(fd)
        raise NotOurs(errno.EPERM, "not a regular file of this user", str(path))
    return fd


def read_own(path: Path, limit: int = 1 << 20) -> bytes:
    """The content of a small cache file (``open_own``'s rules; at most ``limit`` bytes)."""
    fd = open_own(path)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def fd_sha256(fd: int) -> str:
    """Hex SHA-256 of an open file, read from its start."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def new_temporary(suffix: str = "") -> tuple[Path, int]:
    """A new empty file in the cache directory, created ``O_EXCL``, mode 0600: ``(path, fd)``.

    Its name says which host and process made it, so a sweep can tell whether it is stale.
    """
    directory = cache_dir()
    for _ in range(100):
        path = directory / f"tmp-{_HOST}-{os.getpid()}-{os.urandom(4).hex()}{suffix}.tmp"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CacheError(f"cannot write into the compile cache {directory}: {exc.strerror}") from None
        return path, fd
    raise CacheError(f"cannot make a temporary file in the compile cache {directory}")


@contextmanager
def temporary(suffix: str = ""):
    """A new empty temporary file's path (see ``new_temporary``), removed on leaving unless it
    was renamed into place meanwhile."""
    path, fd = new_temporary(suffix)
    os.close(fd)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_file(name: str, data: bytes) -> Path:
    """Write ``data`` to ``<cache>/name`` atomically: a new temporary file renamed into place.

    Readers see the old file or the new one, never part of one; a symbolic link planted at the
    name is replaced by the file, its target untouched.
    """
    directory = cache_dir()
    path, fd = new_temporary()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(path, directory / name)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise CacheError(f"cannot write {name} into the compile cache {directory}: {exc.strerror}") from None
    return directory / name


def write_record(name: str, data: dict) -> None:
    """Store a small JSON record with its checksum (``read_record`` checks it)."""
    body = json.dumps(data, sort_keys=True)
    write_file(name, json.dumps({"sha256": _text_sha256(body), "data": data}).encode())


def read_record(name: str) -> dict | None:
    """The record ``write_record`` stored, or None if it is missing, not ours, damaged or altered."""
    try:
        stored = json.loads(read_own(cache_dir() / name))
        data = stored["data"]
        if stored["sha256"] != _text_sha256(json.dumps(data, sort_keys=True)):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data


def read_blob(name: str, size: int) -> bytes | None:
    """The ``size`` bytes of ``<cache>/name`` (``open_own``'s rules), or None if the file is
    missing, not ours or not exactly that long."""
    try:
        fd = open_own(cache_dir() / name)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_size != size:
            return None
        data = bytearray()
        while len(data) < size and (chunk := os.read(fd, size - len(data))):
            data += chunk
        return bytes(data) if len(data) == size else None
    finally:
        os.close(fd)


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- entries ----------------------------------------------------------------------------------------


def lookup(key: str, suffix: str = ".so") -> Path | None:
    """The verified library for ``key`` (a ``suffix`` entry: ``.cubin`` for a CUDA module), or
    None if absent, truncated, corrupted or not ours."""
    library = cache_dir() / f"{key}{suffix}"
    try:
        os.close(open_verified(library))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return library


def open_verified(library: Path) -> int:
    """A read-only file descriptor of ``library`` whose size and checksum match its ``.json``.

    Load through this descriptor (``/proc/self/fd/N``), not the path, to load the file that was
    checked. Raises ``OSError`` (``NotOurs``) or ``ValueError``/``KeyError``/``TypeError`` (a
    damaged record) when it does not match.
    """
    meta = json.loads(read_own(library.with_suffix(".json")))
    fd = open_own(library)
    try:
        if os.fstat(fd).st_size != meta["size"] or fd_sha256(fd) != meta["sha256"]:
            raise NotOurs(errno.EINVAL, "does not match its checksum", str(library))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_entry(key: str, suffix: str) -> tuple[bytes, dict] | None:
    """The content of the verified entry ``<key><suffix>`` and its record (what ``store`` was
    given as ``extra`` included), read from the very file that was checked; None if the entry
    is absent, truncated, corrupted or not ours."""
    library = cache_dir() / f"{key}{suffix}"
    try:
        meta = json.loads(read_own(library.with_suffix(".json")))
        fd = open_verified(library)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0)
    finally:
        os.close(fd)
    return (data, meta) if len(data) == size else None


def store(key: str, built: Path, description: str = "", suffix: str = ".so", extra: dict | None = None) -> Path:
    """Move a freshly built library (``<key><suffix>``) into the cache atomically; return its
    cached path. ``extra``: more fields for its record (a compiler's report, say)."""
    directory = cache_dir()
    library = directory / f"{key}{suffix}"
    try:
        fd = open_own(built)
        try:
            meta = {**(extra or {}), "sha256": fd_sha256(fd), "size": os.fstat(fd).st_size,
                    "source_name": description}
        finally:
            os.close(fd)
        os.replace(built, library)
    except OSError as exc:
        raise CacheError(f"cannot store the library for {description!r} in the compile cache "
                         f"{directory}: {exc.strerror}") from None
    write_file(f"{key}.json", json.dumps(meta).encode())
    return library


# -- building: one process at a time per key --------------------------------------------------------


@contextmanager
def building(key: str, description: str = ""):
    """Hold the build lock of ``key`` (across threads and processes) while inside.

    A process that holds it too long (stopped, hung) delays the others by at most
    ``MINICOMP_LOCK_TIMEOUT`` seconds; then they build without it, with a warning.
    """
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(key, ForkSafeLock())
    with thread_lock:
        path = cache_dir() / f"{key}.lock"
        fd = _open_lock_file(path)
        try:
            if _wait_for_lock(fd, path, description or key[:16]):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            sweep_once(path.parent)
            yield
        finally:
            os.close(fd)  # releases the lock


def lock_timeout() -> float:
    """Seconds to wait for another process's build: ``MINICOMP_LOCK_TIMEOUT``, default 60."""
    text = os.environ.get("MINICOMP_LOCK_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise CacheError(f"MINICOMP_LOCK_TIMEOUT={text!r}: give the seconds to wait for another "
                         f"process's build of the same function, e.g. MINICOMP_LOCK_TIMEOUT=60")
    return seconds


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor, made if missing; one that is not a regular file of ours (a
    planted link, say) is first replaced by a new empty file, never opened through."""
    try:
        return open_own(path, os.O_RDWR | os.O_CREAT)
    except OSError:
        write_file(path.name, b"")
        try:
            return open_own(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise CacheError(f"cannot open the build lock {path}: {exc.strerror}") from None


def _wait_for_lock(fd: int, path: Path, what: str) -> bool:
    """Take the lock on ``fd``; True if taken, False after ``lock_timeout()`` seconds (warned)."""
    timeout = lock_timeout()
    start, pause, told = time.monotonic(), 0.002, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        if waited >= timeout:
            warnings.warn(f"minicomp: gave up after {waited:.0f} s waiting for {_holder(fd)} to finish "
                          f"compiling {what} (lock {path}); compiling it here too, which is safe "
                          f"(MINICOMP_LOCK_TIMEOUT sets the wait)", MinicompWarning, stacklevel=4)
            return False
        if not told and waited >= min(LOCK_NOTICE_AFTER, timeout / 2):
            warnings.warn(f"minicomp: waiting for {_holder(fd)} to finish compiling {what} (lock {path}); "
                          f"giving up after {timeout:g} s (MINICOMP_LOCK_TIMEOUT). If that process is "
                          f"stopped or hung, ending it ends the wait", MinicompWarning, stacklevel=4)
            told = True
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _holder(fd: int) -> str:
    """Who holds the lock, as its file says: ``process 1234`` (or ``another process``)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"process {text}" if text.isdigit() else "another process"


# -- temporaries, info and clear --------------------------------------------------------------------


def sweep_once(directory: Path) -> None:
    """``sweep_temporaries(directory)``, at most once per process and directory."""
    if str(directory) not in _swept:
        _swept.add(str(directory))
        sweep_temporaries(directory)


def sweep_temporaries(directory: Path) -> int:
    """Remove the temporaries that killed builds left in ``directory``; how many were removed.

    Only minicomp's temporary names, only regular files of the user, and only when stale: made
    on this host by a process that no longer runs, or older than an hour.
    """
    removed = 0
    now = time.time()
    with os.scandir(directory) as entries:
        for entry in entries:
            if _stale_temporary(entry, now):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def _stale_temporary(entry: os.DirEntry, now: float) -> bool:
    ours = _TEMPORARY.fullmatch(entry.name)
    if not (ours or _OLD_TEMPORARY.fullmatch(entry.name)) or not _own_regular(entry):
        return False
    if now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER:
        return True
    return bool(ours) and ours[1] == _HOST and not _running(int(ours[2]))


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _own_regular(entry: os.DirEntry) -> bool:
    try:
        status = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISREG(status.st_mode) and status.st_uid == os.geteuid()


def _own_file(entry: os.DirEntry) -> bool:
    """One of minicomp's entry or probe files (not a temporary): its name, a regular file of ours."""
    return bool(_OWN_FILE.fullmatch(entry.name)) and _own_regular(entry)


def info() -> dict:
    """Where the cache is, how many libraries it holds, the bytes of minicomp's files there,
    and how many other files it holds (not minicomp's, not counted)."""
    directory = cache_dir()
    entries = size = others = 0
    with os.scandir(directory) as listing:
        for entry in listing:
            if _own_file(entry) or (_TEMPORARY.fullmatch(entry.name) and _own_regular(entry)):
                entries += entry.name.endswith((".so", ".cubin"))
                size += entry.stat(follow_symlinks=False).st_size
            else:
                others += 1
    return {"path": str(directory), "entries": entries, "bytes": size, "others": others}


def clear() -> dict:
    """Delete minicomp's files from the cache; never anything else, never through a link.

    Removes the entries (``<key>.so/.json/.c/.lock``), probe files and stale temporaries
    (those of builds still running stay). Returns ``{"path", "libraries", "files", "left"}``:
    libraries and files removed, files left because minicomp did not make them (or they are
    in use). The directory itself stays.
    """
    directory = cache_dir()
    libraries = files = 0
    with os.scandir(directory) as listing:
        for entry in listing:
            if _own_file(entry):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                files += 1
                libraries += entry.name.endswith((".so", ".cubin"))
    files += sweep_temporaries(directory)
    left = sum(1 for _ in os.scandir(directory))
    return {"path": str(directory), "libraries": libraries, "files": files, "left": left}
