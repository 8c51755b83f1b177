"""Shared test settings: hypothesis profiles, fresh random inputs, the program backends."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from minicomp.testing.backends import BACKENDS, cuda_available

# "ci" (the default) keeps the whole suite within CI's budget; "thorough" digs deeper locally:
#   HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
# "sanitize": the C kernel tests re-run under AddressSanitizer/UBSan (tests/test_sanitize.py)
settings.register_profile("sanitize", max_examples=8, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A random generator with a fresh seed each run (printed on failure by pytest's -ra)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session", autouse=True)
def fresh_compile_cache(tmp_path_factory):
    """Point the compile cache at a new empty directory for the whole session.

    Set in ``os.environ`` (not with monkeypatch, which is function-scoped) so that subprocesses
    started by tests (the CLI, tutorials) use it too: tests never touch ``~/.cache/minicomp``
    and always start cold.
    """
    previous = os.environ.get("MINICOMP_CACHE_DIR")
    path = tmp_path_factory.mktemp("minicomp-cache")
    os.environ["MINICOMP_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MINICOMP_CACHE_DIR", None)
    else:
        os.environ["MINICOMP_CACHE_DIR"] = previous


def _backend_param(name: str):
    """The fixture's parameter for backend ``name``: the CUDA one carries the ``cuda`` marker
    and skips, saying why, where pycuda or a GPU is missing."""
    if name != "cuda":
        return name
    why_not = cuda_available()
    marks = [pytest.mark.cuda] + ([pytest.mark.skip(reason=f"cuda backend: {why_not}")] if why_not else [])
    return pytest.param(name, marks=marks)


@pytest.fixture(scope="session", params=[_backend_param(name) for name in sorted(BACKENDS)])
def backend(request):
    """Each backend that runs a loop-IR program (``minicomp/testing/backends.py``: the C
    compiler, the loop interpreter, and the GPU schedules on a CPU: their thread-serial form in
    C, their SIMT form in the loop interpreter; CUDA joins there): ``backend.run(program,
    *arrays)`` gives the outputs. Session-scoped, so that hypothesis tests can take it."""
    return BACKENDS[request.param]
