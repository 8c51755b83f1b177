"""The bad-input catalogue (``tests/bad_inputs/catalogue.py``), each case in a subprocess.

Every case must give NumPy's result or a typed ``MinicompError`` naming the op, the shapes and
the user's line. Cases run one by one in a worker process that imports minicomp once; a case
that kills the worker (a segfault, an abort) or hangs fails alone, and a new worker runs the
cases after it.
"""

import json
import os
import select
import subprocess
import sys
import tempfile
import time

import pytest

CATALOGUE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_inputs", "catalogue.py")
CASE_TIMEOUT = 120.0  # seconds; the slowest case compiles a few small C functions


def case_names() -> list[str]:
    listing = subprocess.run([sys.executable, CATALOGUE, "--list"], capture_output=True, text=True, check=True)
    return listing.stdout.split()


class Worker:
    """A ``catalogue.py --worker`` process: send a case name, read its verdict."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen([sys.executable, CATALOGUE, "--worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.stderr)
        self.pending = b""

    def run(self, name: str) -> dict:
        """The case's verdict; a dead or hung worker is the case's failure (the worker is then gone)."""
        try:
            self.process.stdin.write(name.encode() + b"\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._died(name)
        deadline = time.monotonic() + CASE_TIMEOUT
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.process.kill()
                self.process.wait()
                return {"case": name, "ok": False, "detail": f"hung: no answer after {CASE_TIMEOUT:.0f} s"}
            ready, _, _ = select.select([self.process.stdout], [], [], left)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    return self._died(name)
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def _died(self, name: str) -> dict:
        code = self.process.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:].decode(errors="replace")
        return {"case": name, "ok": False, "detail": f"the worker died (exit status {code}):\n{tail}"}

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.alive:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


class Runner:
    """Keeps one live worker; replaces it after a case kills it."""

    def __init__(self):
        self.worker = None

    def run(self, name: str) -> dict:
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                self.worker.close()
            self.worker = Worker()
        return self.worker.run(name)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


@pytest.fixture(scope="module")
def runner():
    runner = Runner()
    yield runner
    runner.close()


CASES = case_names()


def test_the_catalogue_has_at_least_100_cases_in_every_category():
    categories = {name.split("/")[0] for name in CASES}
    assert len(CASES) >= 100
    assert {"arguments", "subclasses", "dtypes", "shapes", "nan_inf_zeros", "integers", "layouts", "tracing",
            "cache", "hostile_names", "runtime"} <= categories


@pytest.mark.parametrize("name", CASES)
def test_bad_input(runner, name):
    verdict = runner.run(name)
    assert verdict["case"] == name
    assert verdict["ok"], verdict["detail"]


def test_a_crashing_case_fails_alone(runner):
    """The harness itself: a worker killed mid-case fails that case; the next case runs in a new one."""
    worker = Worker()
    try:
        worker.process.kill()
        verdict = worker.run("arguments/too_many")
        assert not verdict["ok"] and "died" in verdict["detail"]
    finally:
        worker.close()
    assert runner.run("arguments/too_many")["ok"]
