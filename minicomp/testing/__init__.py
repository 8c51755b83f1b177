"""Checking results against NumPy: the one place where tolerances live.

``assert_close(actual, expected)`` compares with a tolerance chosen by dtype: exact for
integers and bools, and for floats a relative/absolute tolerance that allows for a different
(but valid) order of floating-point operations. NaNs must match NaNs, infinities must match.
"""

from __future__ import annotations

import numpy as np

#: dtype -> (rtol, atol) for results that may be computed in another order than NumPy's
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}


def tolerance(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing arrays of ``dtype`` (zero for exact dtypes)."""
    return TOLERANCES.get(np.dtype(dtype), (0.0, 0.0))


def assert_close(actual, expected, rtol: float | None = None, atol: float | None = None) -> None:
    """Assert ``actual`` equals NumPy's ``expected`` in shape, dtype and values (within tolerance).

    Tuples and lists are compared element by element.
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), (
            f"expected {len(expected)} results, got {actual!r:.200}")
        for a, e in zip(actual, expected):
            assert_close(a, e, rtol, atol)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != NumPy's {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != NumPy's {expected.dtype}"
    default_rtol, default_atol = tolerance(expected.dtype)
    np.testing.assert_allclose(
        actual, expected,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        equal_nan=True,
    )
