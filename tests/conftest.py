"""Shared test settings: hypothesis profiles and fresh random inputs."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# "ci" (the default) keeps the whole suite within CI's budget; "thorough" digs deeper locally:
#   HYPOTHESIS_PROFILE=thorough python -m pytest
settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A random generator with a fresh seed each run (printed on failure by pytest's -ra)."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)
