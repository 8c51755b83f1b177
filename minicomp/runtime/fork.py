"""Fork safety: what a process made by ``os.fork`` (a ``multiprocessing`` fork pool) must not
inherit from its parent.

Two things do not survive a fork:

* **OpenMP's threads.** GNU OpenMP (libgomp) is not fork-safe: once a parallel loop has run,
  its worker threads exist in the parent only, and a child that starts a parallel loop waits
  for them forever. A child forked from a process where libgomp was loaded (minicomp's kernels
  or any other library's) therefore runs every kernel on its calling thread: ``run_serially()``
  is true there, and the executable passes that to the entry point (``mc_serial``, the OpenMP
  ``if`` clause of each parallel loop). Same results, one thread.
* **Locks held by other threads.** A fork copies only the forking thread; a lock that another
  thread held at that moment stays held in the child, by nobody. ``ForkSafeLock`` is a lock
  that a child gets anew on its first use, so a child never waits for a compile that its
  parent's other thread was running.
"""

from __future__ import annotations

import ctypes
import os
import threading

_openmp_used = False  # a kernel was called in this process with its threads allowed
_serial = False       # this process was forked after OpenMP could have started threads


def _libgomp_loaded() -> bool:
    """Whether GNU OpenMP's runtime is loaded in this process (by minicomp or anyone else)."""
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD)
    except (OSError, AttributeError):
        return False
    return True


def _after_fork_in_child() -> None:
    global _serial
    _serial = _serial or _openmp_used or _libgomp_loaded()


os.register_at_fork(after_in_child=_after_fork_in_child)


def run_serially() -> bool:
    """Whether kernels must run on the calling thread only (a child forked after libgomp loaded)."""
    return _serial


def openmp_used() -> None:
    """Note that a kernel is about to run with threads (call before the call: a fork during it
    must see it)."""
    global _openmp_used
    _openmp_used = True


class ForkSafeLock:
    """A ``threading.Lock`` for ``with`` that a forked child replaces by a new one on first use.

    >>> lock = ForkSafeLock()
    >>> with lock: ...      # in a child forked while another thread was inside: no deadlock
    """

    def __init__(self):
        self._lock, self._pid = threading.Lock(), os.getpid()

    def __enter__(self):
        if self._pid != os.getpid():  # forked: whoever held it is not in this process
            self._lock, self._pid = threading.Lock(), os.getpid()
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()
