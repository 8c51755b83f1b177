"""Element types and tensor types.

minicomp supports six element types, written in the text form by their short names::

    f16 f32 f64   float16, float32, float64
    i32 i64       int32, int64
    bool          bool

``TensorType(shape, dtype)`` is the static type of every value in a graph: ``f32[256,1024]``.
Promotion follows NumPy exactly, because minicomp asks NumPy (``np.result_type`` and each
ufunc's ``resolve_dtypes``) rather than keeping a table of its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import DTypeError
from .symbolic import Sym, parse_size

#: short name -> NumPy dtype, in the order the text form documents them.
DTYPES: dict[str, np.dtype] = {
    "f16": np.dtype(np.float16),
    "f32": np.dtype(np.float32),
    "f64": np.dtype(np.float64),
    "i32": np.dtype(np.int32),
    "i64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),
}
_SHORT_NAMES = {dt: name for name, dt in DTYPES.items()}
_LONG_NAMES = {dt.name: name for name, dt in DTYPES.items()}  # "float32" -> "f32"
_DTYPE_CLASSES = {dt.__class__ for dt in DTYPES.values()}  # np.dtypes.Float32DType, ...


def to_dtype(value) -> np.dtype:
    """Turn ``"f32"``, ``"float32"``, ``np.float32`` or ``np.dtype('float32')`` into a NumPy dtype.

    Raises ``DTypeError`` for dtypes minicomp does not support (complex, uint8, object, ...).
    """
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    try:
        dt = np.dtype(value)
    except TypeError as exc:
        raise DTypeError(f"{value!r} is not a dtype") from exc
    if dt not in _SHORT_NAMES:
        raise DTypeError(
            f"dtype {dt} is not supported by minicomp; supported: {', '.join(DTYPES)}"
        )
    return dt


def short_name(dtype) -> str:
    """``np.dtype('float32') -> 'f32'``."""
    return _SHORT_NAMES[to_dtype(dtype)]


def is_float(dtype) -> bool:
    """True for f16, f32 and f64."""
    return to_dtype(dtype).kind == "f"


@dataclass(frozen=True)
class TensorType:
    """The static type of a value: a shape (tuple of ints >= 0) and a NumPy dtype.

    A dimension may be a symbolic size (``minicomp.ir.symbolic.Sym``, a dynamic dimension):
    ``f32[T,768]``. Its ``size`` and ``nbytes`` are then symbolic too.

    >>> TensorType((2, 3), "f32")
    f32[2,3]
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __init__(self, shape, dtype):
        shape = tuple(d if isinstance(d, Sym) else int(d) for d in shape)
        if any(d < 0 for d in shape if not isinstance(d, Sym)):
            raise DTypeError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        canonical = dtype.__class__ in _DTYPE_CLASSES and dtype in _SHORT_NAMES  # the common case
        object.__setattr__(self, "dtype", dtype if canonical else to_dtype(dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @classmethod
    def of(cls, array) -> "TensorType":
        """The type of a NumPy array (or anything with ``.shape`` and ``.dtype``)."""
        return cls(np.shape(array), array.dtype)

    @classmethod
    def parse(cls, text: str) -> "TensorType":
        """Parse ``"f32[256,1024]"`` (``"f32[]"`` is a scalar); the inverse of ``str``."""
        match = re.fullmatch(r"\s*(\w+)\[([\w,\s*+-]*)\]\s*", text)
        if not match or match.group(1) not in DTYPES and match.group(1) not in _LONG_NAMES:
            raise DTypeError(
                f"cannot read tensor type {text!r}; write it like f32[256,1024] "
                f"(dtypes: {', '.join(DTYPES)})"
            )
        name = _LONG_NAMES.get(match.group(1), match.group(1))
        dims = [d for d in match.group(2).replace(" ", "").split(",") if d]
        try:
            shape = tuple(parse_size(d) for d in dims)
        except ValueError:
            raise DTypeError(f"cannot read tensor type {text!r}: a dimension is neither a number "
                             "nor a size symbol") from None
        return cls(shape, name)

    def __str__(self) -> str:
        return f"{short_name(self.dtype)}[{','.join(str(d).replace(' ', '') for d in self.shape)}]"

    __repr__ = __str__
