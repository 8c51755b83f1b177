"""The one error hierarchy of minicomp.

Every error the user can cause is a ``MinicompError``. Messages name the op, the shapes as the
user passed them and the user's ``file:line``, so that the error points at the user's code and
not at minicomp's internals.

    MinicompError
    ├── ShapeError            operands whose shapes do not fit the op (broadcasting, matmul, ...)
    ├── DTypeError            a dtype NumPy (or minicomp) does not accept for the op
    ├── UnsupportedError      a NumPy function, method or construct minicomp cannot trace
    │   └── UnsupportedAttributeError  an ndarray attribute the tracer lacks (also AttributeError)
    ├── GraphError            a graph that breaks an invariant (``Graph.verify``), bad API use
    │   └── ParseError        text that is not a valid graph
    ├── CompileError          a backend could not compile a graph (later issues)
    ├── CacheError            a compile cache directory that cannot be used safely, or written
    └── MinicompRuntimeError  a compiled function called with arguments it cannot take
        └── IndexOutOfBoundsError  an index array held an out-of-range index (also an IndexError)

    MinicompWarning (a UserWarning)   e.g. random numbers drawn while tracing became constants
"""

from __future__ import annotations


class MinicompError(Exception):
    """Base class of every error minicomp raises on purpose."""


class ShapeError(MinicompError, ValueError):
    """Operand shapes that do not fit an op, e.g. ``(3,4) + (5,)``."""


class DTypeError(MinicompError, TypeError):
    """A dtype the op does not accept, e.g. ``-x`` on a bool array."""


class UnsupportedError(MinicompError, NotImplementedError):
    """A NumPy function, method or Python construct that minicomp cannot trace."""


class UnsupportedAttributeError(UnsupportedError, AttributeError):
    """An ndarray attribute or method the tracer lacks, e.g. ``x.strides``; ``hasattr`` says False."""


class GraphError(MinicompError):
    """A graph that breaks one of its invariants, or a graph API used wrongly."""


class ParseError(GraphError):
    """Text that is not a valid graph in minicomp's text form."""


class CompileError(MinicompError):
    """A backend could not turn a graph into code."""


class CacheError(MinicompError):
    """A compile cache that cannot be used: not the user's own, writable by others, a link, not writable."""


class MinicompRuntimeError(MinicompError, RuntimeError):
    """A compiled function was called with arguments it cannot accept."""


class MinicompWarning(UserWarning):
    """Something minicomp did that the user may not expect, e.g. random numbers frozen at trace time."""


def at(loc: str | None) -> str:
    """Format a source location as the suffix `` (at file.py:12)``, or nothing if unknown."""
    return f" (at {loc})" if loc else ""


class IndexOutOfBoundsError(MinicompRuntimeError, IndexError):
    """An index array held an index outside its axis at run time, e.g. ``wte[ids]`` with an id of 50257
    for 50257 rows (NumPy raises ``IndexError``; so does this, being one)."""
