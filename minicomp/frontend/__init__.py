"""From NumPy code to graphs: tracing (``trace``) and ``jit``."""

from . import functions  # noqa: F401  (registers the NumPy functions the tracer understands)
from .tracer import TracedArray, apply_op, trace
