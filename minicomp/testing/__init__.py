"""Checking results against NumPy: the one place where tolerances live.

``assert_close(actual, expected)`` compares with a tolerance chosen by dtype: exact for
integers and bools, and for floats a relative/absolute tolerance that allows for a different
(but valid) order of floating-point operations. NaNs must match NaNs, infinities must match.

Summing in another order (blocked, vectorised, FMA) changes a result by a few rounding errors
*of the terms summed*, not of the result: a dot product of terms of size 30 that cancels to 0.1
may move by 1e-4. So the absolute tolerance grows with the largest finite magnitude in the
expected array (``SCALE_FRACTION`` of it), which only loosens the check for elements much
smaller than the array's largest ones.
"""

from __future__ import annotations

import numpy as np

#: dtype -> (rtol, atol) for results that may be computed in another order than NumPy's
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-5),
    np.dtype(np.float64): (1e-10, 1e-12),
}


SCALE_FRACTION = 0.1  # of rtol: absolute slack per unit of the expected array's largest magnitude


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
    rtol = default_rtol if rtol is None else rtol
    if atol is None:
        finite = np.abs(expected[np.isfinite(expected)]) if expected.dtype.kind == "f" else np.zeros(0)
        scale = float(finite.max()) if finite.size else 0.0
        atol = default_atol + SCALE_FRACTION * rtol * scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
