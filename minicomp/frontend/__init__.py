"""From NumPy code to graphs: tracing (``trace``) and ``jit``."""

from . import functions  # noqa: F401  (registers the NumPy functions the tracer understands)
from . import einsum, surface  # noqa: F401  (pad, stacks, repeat, tile, tril, argmax, any, cumsum, ...)
from .tracer import TracedArray, apply_op, trace
