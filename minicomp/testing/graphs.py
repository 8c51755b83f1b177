"""Random graphs for property tests: a hypothesis strategy and a NumPy twin of each graph.

``random_graphs()`` draws a ``GeneratedGraph``: a ``Graph`` built op by op over a pool of live
values, NumPy arrays for its inputs, and ``numpy_fn``, a plain Python function that computes the
same outputs with direct NumPy calls (``np.exp``, ``a + b``, ``np.sum(a, axis=, keepdims=)``,
``a @ b``, ``a[::-2]``, ``np.concatenate``, a convolution written pixel by pixel ...), written
independently of minicomp's op table. Every pass and backend can then check itself on every
generated graph::

    from hypothesis import given
    from minicomp.testing.graphs import assert_outputs_close, random_graphs

    @given(random_graphs())
    def test_my_backend(gen):
        assert_outputs_close(my_backend(gen.graph)(*gen.inputs), gen.expected(), gen.graph)

What the generator produces:

* every op of the op table: elementwise unary ops and ``cast``, broadcasting binary ops
  (operand shapes that broadcast, with size-1 and sometimes size-0 dimensions, operands in
  both orders), ``where``, reductions (``axes`` None, an int, a tuple, negative or empty;
  ``keepdims``), ``matmul`` (1-D, 2-D and batched), ``conv2d`` (NCHW and NHWC, strides,
  padding, dilation, groups), ``transpose``, ``reshape`` (with ``-1``), ``broadcast_to``,
  ``expand_dims``, ``squeeze``, ``slice`` (steps, negative ones included), ``concatenate`` and
  ``as_strided`` (windows with zero, negative and overlapping strides); ``cumsum`` and ``cumprod``
  along any axis;
* the compositions the fusion pass looks for, built from those ops as ``minicomp.nn`` writes
  them: softmax along any axis, layer norm (with and without scale and shift), and attention
  ``softmax(q @ kᵀ [* scale] [masked]) @ v`` with a constant mask (causal or random);
* inputs added along the way, scalar and small-array constants (larger ones sometimes, which
  the text form stores as base64), values used several times (``x * x``), dead values; as
  outputs the last value (then the others are dead) or every value nothing reads, and up to
  two more (a value may be returned twice);
* small shapes (dimensions 0..6, at most ``MAX_SIZE`` elements per value), so a graph runs in
  microseconds; ``max_size=`` allows bigger values and then draws some dimensions of 7..80,
  which reach the parallel loops, packed matmuls and tiled attention.

Values stay numerically tame: every value is finite and bounded by ``LIMIT`` in magnitude.
The generator tracks a bound per value and builds domain guards into the graph as ordinary
nodes: ``log(abs(x) + 1)``, ``sqrt(abs(x))``, ``a / (abs(b) + 1)``, ``exp`` only of values
bounded by 3 (``tanh`` or a ``maximum``/``minimum`` clamp inserted first when needed), sums
scaled by a power of two, and so on. Where a value carries rounding errors, no op magnifies
them much: ``sqrt(abs(x) + 1/16)`` then, and layer norm's ``eps`` is 0.25. No NaN or infinity ever appears (``mean``, ``max`` and
``min`` never reduce empty axes), except with ``infinities=True``: then an attention's mask
writes ``-inf`` (as ``nn.scaled_dot_product_attention`` does), into values no other op reads.

Ops that are discontinuous (``DISCONTINUOUS_OPS``: comparisons, ``floor``, ``sign``, casts to
integers ...) turn a last-bit rounding difference into a different result. So the generator
tracks which values are *exact*, computed bit for bit the same by every valid evaluation
order (summation order, SIMD lanes, fused multiply-add, float16 computed in float32), and
gives discontinuous ops only exact operands. Inputs and constants are exact; data movement,
``neg``, ``abs``, ``maximum``, ``where``, ``floor``, casts, ``add``/``sub`` and integer ops keep
exactness; a product, sum, matmul or conv2d is exact only when no rounding happens at all: its
operands lie on a grid of multiples of a power of two (inputs drawn as quarters, integers,
constants like 0.5) and the result stays representable. ``exp``, ``div``, ``mean`` ... are not
exact. So a backend is compared with discontinuous ops included, under one tolerance
(``assert_outputs_close``); ``numpy_fn`` computes bit for bit what the interpreter computes
wherever the comparison could not absorb a difference.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from hypothesis import strategies as st

from ..errors import MinicompError
from ..ir.dtypes import DTYPES, TensorType, to_dtype
from ..ir.graph import Graph, Node
from ..ir.ops import OPS, fill_attrs
from . import assert_close

#: Largest magnitude of any generated value (inputs are within 3, guards keep the rest here).
LIMIT = 1000.0
#: Most elements of any generated value (unless ``random_graphs(max_size=...)``).
MAX_SIZE = 256
#: Most dimensions of any generated value.
MAX_NDIM = 5

UNARY_OPS = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf",
             "reciprocal", "sin", "cos", "floor", "ceil", "sign", "logical_not")
BINARY_OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum",
              "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")
COMPARISON_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
REDUCTION_OPS = ("sum", "mean", "max", "min")
SCAN_OPS = ("cumsum", "cumprod")
INJECTIVE_OPS = ("transpose", "reshape", "broadcast_to", "expand_dims", "squeeze", "slice",
                 "concatenate", "gather", "as_strided")

#: Every op the generator can emit (all of the op table but the sources and ``fused``).
GENERATED_OPS = frozenset(UNARY_OPS + BINARY_OPS + REDUCTION_OPS + INJECTIVE_OPS + SCAN_OPS
                          + ("cast", "where", "matmul", "conv2d", "scatter"))
#: Ops whose result can jump when an operand changes in its last bit.
DISCONTINUOUS_OPS = frozenset(COMPARISON_OPS + (
    "floor", "ceil", "sign", "floordiv", "mod", "cast", "logical_not", "logical_and",
    "logical_or"))
#: Default element types of inputs, constants and casts: all six of minicomp's.
ALL_DTYPES = tuple(DTYPES)

# ops that guard an op's domain and must be allowed for the op to be generated
_NEEDS = {"log": {"abs", "add"}, "sqrt": {"abs"}, "rsqrt": {"abs", "add"},
          "reciprocal": {"abs", "add"}, "div": {"abs", "add"}, "floordiv": {"abs", "add"},
          "mod": {"abs", "add"}, "pow": {"abs", "add"}}

#: Compositions of primitive ops (``minicomp.nn``'s), generated when all their ops are allowed.
COMPOSITIONS = {
    "softmax": {"max", "sub", "exp", "sum", "div"},
    "layer_norm": {"mean", "sub", "mul", "add", "sqrt", "div"},
    "attention": {"matmul", "max", "sub", "exp", "sum", "div"},
}

_WEIGHTS = {"unary": 3, "binary": 4, "reduce": 2}
# big values: more of the ops whose large forms have their own code (packed panels, tiles)
_BIG_WEIGHTS = {"matmul": 3, "attention": 2, "conv2d": 2}
_CATEGORIES = {
    "unary": UNARY_OPS, "cast": ("cast",), "binary": BINARY_OPS, "where": ("where",),
    "reduce": REDUCTION_OPS, "matmul": ("matmul",), "conv2d": ("conv2d",), "scatter": ("scatter",),
    "scan": SCAN_OPS,
    **{name: (name,) for name in INJECTIVE_OPS},
}

# Exactness (see the module docstring): ops whose float result is exact when their operands
# are, ops that keep the operands' grid, and the sums and products exact only on a grid.
_MOVES = {"neg", "abs", "maximum", "minimum", "where", "max", "min", "cast", "scatter", *INJECTIVE_OPS}
_INTEGRAL = {"floor", "ceil", "sign"}
_GRID_SUMS = {"add", "sub", "sum", "cumsum"}
_GRID_PRODUCTS = {"mul", "matmul", "conv2d", "cumprod"}
_MANTISSA_BITS = {np.dtype(np.float16): 11, np.dtype(np.float32): 24, np.dtype(np.float64): 53}
_MAX_GRID = 12  # finest grid tracked: multiples of 2**-12


# ----------------------------------------------------------------------------------------------
# The NumPy twin of each op, written without minicomp's references
# ----------------------------------------------------------------------------------------------


def _float_dtype(dtype) -> np.dtype:
    """The float dtype NumPy's transcendental functions give for ``dtype``."""
    return np.exp(np.zeros(0, dtype)).dtype


def _np_sigmoid(a):
    e = np.exp(-np.abs(a))  # the overflow-free form: exp of a non-positive number
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def _np_erf(a):
    a = np.asarray(a)
    values = np.vectorize(math.erf, otypes=[np.float64])(a.astype(np.float64))
    return values.astype(_float_dtype(a.dtype))


def _np_reciprocal(a):
    return 1 / a if a.dtype.kind == "f" else 1 // a  # integers: NumPy's integer reciprocal


def _np_conv2d(x, w, strides, padding, dilation, groups, layout):
    """2-D cross-correlation, one output pixel at a time: the window times the weights."""
    if layout == "NHWC":  # with an HWIO weight
        out = _np_conv2d(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), strides, padding,
                         dilation, groups, "NCHW")
        return out.transpose(0, 2, 3, 1)
    dtype = (np.zeros((1, 1), x.dtype) @ np.zeros((1, 1), w.dtype)).dtype
    top, bottom, left, right = padding
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _, height, width = xp.shape
    o, per_group, r, s = w.shape
    (sh, sw), (dh, dw) = strides, dilation
    oh, ow = (height - dh * (r - 1) - 1) // sh + 1, (width - dw * (s - 1) - 1) // sw + 1
    weights = w.astype(dtype).reshape(groups, o // groups, per_group * r * s)
    out = np.zeros((n, o, oh, ow), dtype)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * sh:i * sh + dh * (r - 1) + 1:dh, j * sw:j * sw + dw * (s - 1) + 1:dw]
            window = window.reshape(n, groups, per_group * r * s)
            out[:, :, i, j] = np.einsum("ngk,gok->ngo", window, weights).reshape(n, o)
    return out


_NP_UNARY: dict[str, Callable] = {
    "neg": operator.neg, "abs": np.abs, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "rsqrt": lambda a: 1 / np.sqrt(a), "tanh": np.tanh, "sigmoid": _np_sigmoid, "erf": _np_erf,
    "reciprocal": _np_reciprocal, "sin": np.sin, "cos": np.cos, "floor": np.floor,
    "ceil": np.ceil, "sign": np.sign, "logical_not": np.logical_not,
}
_NP_BINARY: dict[str, Callable] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "maximum": np.maximum, "minimum": np.minimum, "eq": operator.eq, "ne": operator.ne,
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "logical_and": np.logical_and, "logical_or": np.logical_or,
}
_NP_REDUCE: dict[str, Callable] = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


# ----------------------------------------------------------------------------------------------
# The public API
# ----------------------------------------------------------------------------------------------


@dataclass
class GeneratedGraph:
    """A random graph, arguments for it, and a NumPy function computing the same outputs.

    ``numpy_fn(*inputs)`` returns a list with one array per graph output, like
    ``minicomp.interpret(graph, *inputs)``. ``grid_inputs[i]`` is True when the graph relies
    on input ``i`` holding values on its grid (quarters within 2, or integers, or bools): any
    other array drawn like it may take its place, but not one of arbitrary floats. ``exact``
    names the nodes whose values every valid evaluation order computes bit for bit.
    """

    graph: Graph
    inputs: list[np.ndarray]
    numpy_fn: Callable[..., list[np.ndarray]]
    grid_inputs: list[bool] = field(default_factory=list)
    exact: frozenset[str] = frozenset()

    def expected(self) -> list[np.ndarray]:
        """``numpy_fn(*inputs)``: the outputs every backend must reproduce."""
        return self.numpy_fn(*self.inputs)

    def __repr__(self) -> str:
        lines = [f"GeneratedGraph of {len(self.graph.op_nodes())} ops:", self.graph.to_text(None)]
        for node, array in zip(self.graph.inputs, self.inputs):
            shown = np.array2string(array, threshold=64).replace("\n", " ")
            lines.append(f"%{node.name} = {shown}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        """Hypothesis shows a failing example with its text form and its input values."""
        for index, line in enumerate(repr(self).splitlines()):
            if index:
                printer.break_()
            printer.text(line)


def random_graphs(max_nodes: int = 12, dtypes: Iterable = ALL_DTYPES,
                  allow_ops: Iterable[str] | None = None, max_size: int = MAX_SIZE,
                  infinities: bool = False) -> st.SearchStrategy[GeneratedGraph]:
    """A hypothesis strategy drawing ``GeneratedGraph`` s (see the module docstring).

    ``max_nodes`` bounds the number of generation steps (op nodes); the domain guards of a
    step (``abs``, ``+ 1``, ``tanh``, a clamp) and a composition's ops (softmax: 5) may take a
    graph some nodes past it. ``dtypes`` are the element types of inputs, constants and casts
    (names like ``"f32"`` or NumPy dtypes); no value of another dtype is created, except
    ``bool`` results of comparisons. ``allow_ops`` restricts the ops that may appear (default:
    ``GENERATED_OPS``); an op whose domain guard is not allowed (``log`` needs ``abs`` and
    ``add``) is left out, and so is a composition one of whose ops is. ``max_size`` bounds
    every value's element count; above ``MAX_SIZE`` some dimensions are drawn from 7..80.
    ``infinities=True`` lets attention masks write ``-inf``.
    """
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    dtypes = tuple(dict.fromkeys(to_dtype(d) for d in dtypes))
    if not dtypes:
        raise ValueError("dtypes must name at least one dtype")
    allow = GENERATED_OPS if allow_ops is None else frozenset(allow_ops)
    unknown = allow - GENERATED_OPS
    if unknown:
        raise ValueError(f"random_graphs cannot generate {sorted(unknown)}; "
                         f"it knows {sorted(GENERATED_OPS)}")
    allow = frozenset(op for op in allow if _NEEDS.get(op, set()) <= allow)
    categories = {name: tuple(op for op in ops if op in allow)
                  for name, ops in _CATEGORIES.items()}
    categories = {name: ops for name, ops in categories.items() if ops}
    if not categories:
        raise ValueError(f"random_graphs can generate none of {sorted(allow_ops)}; ops that need "
                         f"a domain guard need it allowed too: {_NEEDS}")
    if any(d.kind == "f" for d in dtypes):
        categories.update({name: (name,) for name, ops in COMPOSITIONS.items() if ops <= allow})
    return _random_graphs(_Options(max_nodes, dtypes, allow, categories, max_size, infinities))


def least_precise_float(graph: Graph) -> np.dtype | None:
    """The float dtype of least precision among all values of ``graph`` (None if none)."""
    floats = [node.dtype for node in graph.nodes() if node.dtype.kind == "f"]
    return min(floats, key=lambda d: d.itemsize) if floats else None


def assert_outputs_close(actual: list, expected: list, graph: Graph) -> None:
    """``assert_close`` on every output, at the precision of the graph's least precise float.

    C's libm and NumPy's own SIMD functions may round ``exp``, ``tanh`` ... of a float32 (or
    float16) value differently in the last bit; a later cast to float64 keeps that difference,
    which is far above float64's tolerance. So float outputs are compared after rounding both
    sides to the least precise float dtype of the graph (shapes and dtypes are compared
    exactly first; byte order aside). Exact dtypes (integers, bools) must be equal.
    """
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    loose = least_precise_float(graph)
    for index, (a, e) in enumerate(zip(actual, expected)):
        a, e = _native(np.asarray(a)), _native(np.asarray(e))
        assert (a.shape, a.dtype) == (e.shape, e.dtype), (
            f"output {index}: {a.dtype}{list(a.shape)}, expected {e.dtype}{list(e.shape)}")
        if e.dtype.kind == "f" and e.dtype.itemsize > loose.itemsize:
            a, e = a.astype(loose), e.astype(loose)
        try:
            assert_close(a, e)
        except AssertionError as exc:
            raise AssertionError(f"output {index} ({graph.outputs[index].name}): {exc}") from None


def _native(array: np.ndarray) -> np.ndarray:
    """``array`` in native byte order (a byte-swapped argument returned as it is keeps its own)."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


@dataclass(frozen=True)
class _Options:
    """What ``random_graphs`` was asked for, checked and expanded."""

    max_nodes: int
    dtypes: tuple
    allow: frozenset
    categories: dict
    max_size: int = MAX_SIZE
    infinities: bool = False

    def __repr__(self) -> str:  # shown by hypothesis as the strategy's argument
        dtypes = ",".join(DTYPES_NAME[d] for d in self.dtypes)
        ops = "all" if self.allow == GENERATED_OPS else ",".join(sorted(self.allow))
        extra = "" if self.max_size == MAX_SIZE else f", max_size={self.max_size}"
        extra += ", infinities" if self.infinities else ""
        return f"max_nodes={self.max_nodes}, dtypes={dtypes}, ops={ops}{extra}"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@st.composite
def _random_graphs(draw, options: _Options) -> GeneratedGraph:
    return _Builder(draw, options).build()


# ----------------------------------------------------------------------------------------------
# Exactness
# ----------------------------------------------------------------------------------------------


@dataclass
class _Val:
    """A live value: its node, its key in ``numpy_fn``'s environment, a bound on |value|, and
    whether it is exact; ``grid``: all its values are multiples of ``2**-grid``, held exactly
    (None: not known to lie on a grid)."""

    node: Node
    key: int
    bound: float
    exact: bool = True
    grid: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> np.dtype:
        return self.node.dtype

    @property
    def numeric(self) -> bool:
        return self.node.dtype != np.bool_


def _representable(bound: float, grid: int | None, dtype: np.dtype) -> bool:
    """True if every multiple of ``2**-grid`` up to ``bound`` is a value of ``dtype``."""
    if grid is None or grid > _MAX_GRID:
        return False
    if dtype.kind != "f":
        return grid == 0
    return bound * 2.0 ** grid <= 2.0 ** _MANTISSA_BITS[dtype]


def _grid_of(array: np.ndarray) -> int | None:
    """The coarsest grid ``e`` (values multiples of ``2**-e``) of a constant, or None."""
    if array.dtype.kind != "f":
        return 0
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        return None
    for e in range(_MAX_GRID + 1):
        scaled = values * 2.0 ** e
        if np.all(scaled == np.round(scaled)):
            return e
    return None


def _needs_exact(op: str, operands: list[_Val], out_dtype: np.dtype) -> bool:
    """True if ``op`` can turn a last-bit difference of an operand into another result."""
    if op == "cast":
        return operands[0].dtype.kind == "f" and out_dtype.kind != "f"
    return op in DISCONTINUOUS_OPS


def _precision(op: str, operands: list[_Val], out_dtype: np.dtype, bound: float) -> tuple[bool, int | None]:
    """(exact, grid) of ``op``'s result (see the module docstring)."""
    if not all(o.exact for o in operands):
        return False, None
    if out_dtype.kind != "f":
        return True, 0
    grids = [o.grid for o in operands if o.dtype != np.bool_]
    on_grid = all(g is not None for g in grids)
    if op in _INTEGRAL:
        return True, 0
    if op in _MOVES or op in _GRID_SUMS:
        grid = max(grids, default=0) if on_grid else None
        exact = op in _MOVES or op in ("add", "sub") or _representable(bound, grid, out_dtype)
    elif op in _GRID_PRODUCTS:
        grid = sum(grids) if on_grid else None
        exact = _representable(bound, grid, out_dtype)
    elif op in ("floordiv", "mod"):
        return True, None  # NumPy's own algorithm in both: exact, but off any grid
    else:
        return False, None  # div, pow, mean, exp ...: rounded in ways implementations differ in
    if not exact:
        return False, None
    return True, grid if _representable(bound, grid, out_dtype) else None


def _exact(v: _Val) -> bool:
    return v.exact


def _any(v: _Val) -> bool:
    return True


def _numeric(v: _Val) -> bool:
    return v.numeric


def _both(*preds) -> Callable[[_Val], bool]:
    """``pred`` true where all of ``preds`` are; numeric-only if one of them is."""
    def pred(v: _Val) -> bool:
        return all(p(v) for p in preds)

    pred.numeric_only = any(_numeric_only(p) for p in preds)
    return pred


def _numeric_only(pred) -> bool:
    return pred is _numeric or getattr(pred, "numeric_only", False)


def _broadcast(*shapes) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ----------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------


class _Builder:
    """Builds one graph and its NumPy twin from hypothesis draws."""

    def __init__(self, draw, options: _Options):
        self.draw = draw
        self.max_nodes = options.max_nodes
        self.dtypes = options.dtypes
        self.value_dtypes = set(options.dtypes) | {np.dtype(np.bool_)}
        self.allow = options.allow
        self.categories = options.categories
        self.max_size = options.max_size
        self.big = options.max_size > MAX_SIZE
        self.infinities = options.infinities
        self.graph = Graph("random")
        self.pool: list[_Val] = []  # the values later steps may read
        self.values: list[_Val] = []  # every value
        self.steps: list[tuple[int, Callable, list[int]]] = []
        self.inputs: list[tuple[_Val, bool]] = []  # (value, draw from a discrete set?)
        self.n_keys = 0
        self.n_ops = 0
        self.with_locs = draw(st.booleans())
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.scalars: dict[tuple, _Val] = {}

    # -- top level ------------------------------------------------------------------------------

    def build(self) -> GeneratedGraph:
        for _ in range(self.draw(st.integers(1, 3))):
            if self.inputs and self.draw(st.integers(0, 2)) == 0:  # a second x: it may alias
                first = self.inputs[0][0]
                self.new_input(first.shape, first.dtype)
            else:
                self.new_input(self.new_shape(), self.pick_dtype(self.dtypes))
        target = self.target = self.draw(st.integers(1, self.max_nodes))
        attempts = 0
        # the big families (unary, binary, reductions) get more steps than each movement op
        weights = {**_WEIGHTS, **_BIG_WEIGHTS} if self.big else _WEIGHTS
        weighted = [c for c in self.categories for _ in range(weights.get(c, 1))]
        while weighted and self.n_ops < target and attempts < 4 * self.max_nodes:
            attempts += 1
            category = self.choose(weighted)
            getattr(self, "_" + category)(self.choose(self.categories[category]))
        for category, ops in self.categories.items():  # every step failed: any op will do
            for op in ops:
                if self.n_ops == 0:
                    getattr(self, "_" + category)(op)
        computed = [v for v in self.pool if v.node.op not in ("input", "constant")]
        last = computed[-1] if computed else self.pool[-1]
        outputs = [last]
        if self.draw(st.booleans()):  # every value nothing reads: no op is dead code
            outputs = [v for v in computed if not v.node.users] or outputs
        outputs += [self.choose(self.pool) for _ in range(self.draw(st.integers(0, 2)))]
        self.graph.set_outputs([v.node for v in outputs])
        grid_inputs = [discrete or v.dtype.kind != "f" for v, discrete in self.inputs]
        exact = frozenset(v.node.name for v in self.values if v.exact)
        return GeneratedGraph(self.graph, self.input_arrays(),
                              self.numpy_fn([v.key for v in outputs]), grid_inputs, exact)

    def numpy_fn(self, output_keys: list[int]) -> Callable[..., list[np.ndarray]]:
        input_keys = [v.key for v, _ in self.inputs]
        steps = list(self.steps)

        def numpy_fn(*args):
            """The generated graph, computed directly with NumPy."""
            env = {key: np.asarray(arg) for key, arg in zip(input_keys, args)}
            for key, fn, operand_keys in steps:
                env[key] = fn(*[env[k] for k in operand_keys])
            return [np.asarray(env[k]) for k in output_keys]

        return numpy_fn

    def input_arrays(self) -> list[np.ndarray]:
        return [self.random_array(v.shape, v.dtype, discrete) for v, discrete in self.inputs]

    def random_array(self, shape, dtype, discrete: bool) -> np.ndarray:
        """Values within 2 (floats; quarters when ``discrete``, so ties occur), 3 (ints)."""
        if dtype == np.bool_:
            return self.rng.random(shape) < 0.5
        if dtype.kind == "i":
            return self.rng.integers(-3, 4, shape).astype(dtype)
        if discrete:
            return (self.rng.integers(-8, 9, shape) / 4).astype(dtype)
        return self.rng.uniform(-2, 2, shape).astype(dtype)

    # -- drawing shapes, dtypes and values -----------------------------------------------------

    def dim(self) -> int:
        """A dimension: 1 (a quarter of the time), 2..6, now and then 0; with ``max_size``
        above ``MAX_SIZE`` half of them from 7..80 instead (and 1 a sixth of the time)."""
        choice = self.draw(st.integers(0, 11))
        if self.big and 5 <= choice <= 10:
            return self.draw(st.integers(7, 80))
        return 0 if choice == 11 else 1 if choice < 3 - self.big else self.draw(st.integers(2, 6))

    def stretch(self) -> int:
        """What a size-1 dimension broadcasts to: 2..6, or quite often 0."""
        return 0 if self.draw(st.integers(0, 3)) == 3 else self.draw(st.integers(2, 6))

    def new_shape(self) -> tuple[int, ...]:
        ndim = (0, 1, 1, 2, 2, 2, 3, 3)[self.draw(st.integers(0, 7))]  # 0-d now and then
        return self.fit(tuple(self.dim() for _ in range(ndim)))

    def fit(self, shape) -> tuple[int, ...]:
        """``shape`` with its largest dimensions halved until it has at most ``max_size``
        elements."""
        shape = list(shape)
        while _size(shape) > self.max_size:
            largest = shape.index(max(shape))
            shape[largest] //= 2
        return tuple(shape)

    def fits(self, a, b) -> bool:
        """True if shapes ``a`` and ``b`` broadcast to a shape of at most ``max_size`` elements."""
        shape = _broadcast(a, b)
        return shape is not None and _size(shape) <= self.max_size

    def choose(self, options):
        """One of ``options`` (a sequence), shrinking toward the first."""
        return options[self.draw(st.integers(0, len(options) - 1))]

    def pick_dtype(self, choices) -> np.dtype:
        return self.choose(sorted(choices, key=str))

    def pick(self, pred=_any) -> _Val | None:
        """A value of the pool satisfying ``pred``, or None."""
        candidates = [v for v in self.pool if pred(v)]
        return self.choose(candidates) if candidates else None

    def leaf_dtype(self, like: _Val, pred=_any) -> np.dtype | None:
        """Mostly ``like``'s dtype, sometimes another allowed one (for mixed promotion)."""
        choices = [d for d in self.dtypes if d != np.bool_ or not _numeric_only(pred)]
        if like.dtype in choices and self.draw(st.booleans()):
            return like.dtype
        return self.pick_dtype(choices) if choices else None

    def float_dtype(self, at_least: int = 2) -> np.dtype | None:
        """One of the allowed float dtypes of at least ``at_least`` bytes (None if none)."""
        floats = [d for d in self.dtypes if d.kind == "f" and d.itemsize >= at_least]
        return self.pick_dtype(floats) if floats else None

    def partner_shape(self, shape) -> tuple[int, ...]:
        """A shape that broadcasts with ``shape``: fewer or more dims, size-1 dims, or a size-1
        dimension of ``shape`` stretched (to 0 sometimes)."""
        keep = self.draw(st.integers(0, len(shape)))
        out = []
        for d in shape[len(shape) - keep:]:
            choice = self.draw(st.integers(0, 2))
            out.append(d if choice == 0 else 1 if choice == 1 else self.stretch() if d == 1 else d)
        if len(out) < 3 and self.draw(st.integers(0, 3)) == 0:
            out.insert(0, self.draw(st.integers(1, 3)))
        out = tuple(out)
        return out if self.fits(shape, out) else tuple(shape)

    # -- making nodes ---------------------------------------------------------------------------

    def _key(self) -> int:
        self.n_keys += 1
        return self.n_keys - 1

    def _loc(self) -> str | None:
        return f"gen.py:{len(self.graph) + 1}" if self.with_locs else None

    def new_input(self, shape, dtype, grid: bool = False) -> _Val:
        """A new graph input; its values are drawn as quarters when ``grid`` (or by chance)."""
        node = self.graph.add_input(f"x{len(self.inputs)}", TensorType(shape, dtype), self._loc())
        discrete = self.draw(st.integers(0, 3)) == 0 or grid
        on_grid = 0 if dtype.kind != "f" else 2 if discrete else None
        val = _Val(node, self._key(), 1.0 if dtype == np.bool_ else 3.0, True, on_grid)
        self.inputs.append((val, discrete))
        self.pool.append(val)
        self.values.append(val)
        return val

    def new_constant(self, value: np.ndarray, pooled: bool = True) -> _Val:
        """A constant node (in the pool of values later steps read, unless not ``pooled``)."""
        node = self.graph.add_constant(value, name="c", loc=self._loc())
        array = node.attrs["value"]
        bound = float(np.max(np.abs(array.astype(np.float64)), initial=0.0))
        val = _Val(node, self._key(), bound, True, _grid_of(array))
        self.steps.append((val.key, lambda array=array: array, []))
        self.values.append(val)
        if pooled:
            self.pool.append(val)
        return val

    def scalar(self, value, dtype) -> _Val:
        """A 0-d constant, shared by every use of the same value and dtype."""
        key = (value, np.dtype(dtype))
        if key not in self.scalars:
            self.scalars[key] = self.new_constant(np.array(value, dtype))
        return self.scalars[key]

    def new_leaf(self, shape, dtype, keep_shape: bool = False, grid: bool = False) -> _Val | None:
        """A fresh input, or a constant (usually small; sometimes over 16 elements); a
        constant may be a 0-d scalar instead of ``shape`` unless ``keep_shape``. ``grid``:
        values drawn as quarters. None if ``shape`` is over ``max_size`` elements."""
        if _size(shape) > self.max_size:
            return None
        if self.draw(st.integers(0, 2)) == 0 or keep_shape and _size(shape) > 36:
            return self.new_input(shape, dtype, grid)
        if not keep_shape and (_size(shape) > 36 or self.draw(st.integers(0, 2)) > 0):
            shape = ()
        return self.new_constant(self.random_array(shape, dtype, grid or self.draw(st.booleans())))

    def emit(self, op: str, operands: list[_Val | None], attrs: dict, np_fn: Callable,
             bound: float, exact: bool = False, pooled: bool = True) -> _Val | None:
        """Add ``op(operands)`` with its NumPy twin ``np_fn``; None if it is not allowed, does
        not type-check, or would leave the limits (dtypes, size, rank, magnitude), or would
        apply a discontinuous op to an inexact value (or give an inexact result where
        ``exact`` asks for an exact one). Not ``pooled``: no later step reads the value."""
        if op not in self.allow or any(o is None for o in operands):
            return None
        opdef = OPS[op]
        types = [o.node.type for o in operands]
        try:
            out = opdef.infer(types, fill_attrs(opdef, types, attrs))
        except MinicompError:
            return None
        if out.dtype == np.bool_:
            bound = 1.0
        if (out.dtype not in self.value_dtypes or out.size > self.max_size or out.ndim > MAX_NDIM
                or not bound <= LIMIT):
            return None
        if _needs_exact(op, operands, out.dtype) and not all(o.exact for o in operands):
            return None
        is_exact, grid = _precision(op, operands, out.dtype, bound)
        if exact and not is_exact:
            return None
        node = self.graph.add_op(op, [o.node for o in operands], attrs, loc=self._loc())
        val = _Val(node, self._key(), float(bound), is_exact, grid)
        self.steps.append((val.key, np_fn, [o.key for o in operands]))
        self.values.append(val)
        if pooled:
            self.pool.append(val)
        self.n_ops += 1
        return val

    # -- domain guards --------------------------------------------------------------------------

    def tame(self, v: _Val | None, limit: float) -> _Val | None:
        """``v`` itself if bounded by ``limit``; else ``tanh(v)`` or ``v`` clamped to the limit."""
        if v is None or v.bound <= limit:
            return v
        clamp = {"maximum", "minimum"} <= self.allow and v.numeric
        if v.dtype.kind == "f" and "tanh" in self.allow and (not clamp or self.draw(st.booleans())):
            return self.emit("tanh", [v], {}, np.tanh, 1.0)
        if not clamp:
            return None
        limit = int(limit) if v.dtype.kind == "i" else limit
        low = self.emit("maximum", [v, self.scalar(-limit, v.dtype)], {}, np.maximum, v.bound)
        return self.emit("minimum", [low, self.scalar(limit, v.dtype)], {}, np.minimum, limit)

    def scale_down(self, v: _Val | None, limit: float) -> _Val | None:
        """``v`` times a power of two that brings its bound within ``limit`` (floats; exact:
        the power of two only moves the exponent); ``tame`` for integers."""
        if v is None or v.bound <= limit:
            return v
        if v.dtype.kind != "f" or "mul" not in self.allow or limit < 2.0 ** -10:
            return self.tame(v, limit)
        power = 2.0 ** -math.ceil(math.log2(v.bound / limit))
        return self.emit("mul", [v, self.scalar(power, v.dtype)], {}, operator.mul, v.bound * power)

    def absolute(self, v: _Val | None) -> _Val | None:
        return None if v is None else self.emit("abs", [v], {}, np.abs, v.bound)

    def plus_one(self, v: _Val | None) -> _Val | None:
        """``v + 1`` (a shared 0-d constant of ``v``'s dtype)."""
        if v is None:
            return None
        return self.emit("add", [v, self.scalar(1, v.dtype)], {}, operator.add, v.bound + 1)

    def partner(self, x: _Val, pred=_any) -> _Val | None:
        """A second operand that broadcasts with ``x``: from the pool (``x`` itself included),
        or a new input or constant of a related shape."""
        if self.draw(st.booleans()):
            candidates = [v for v in self.pool if pred(v) and self.fits(x.shape, v.shape)]
            if candidates:
                return self.choose(candidates)
        if x.node.op == "input" and self.draw(st.integers(0, 5)) == 0:
            return self.new_input(x.shape, x.dtype)  # an input of the same type: it may alias x
        dtype = self.leaf_dtype(x, pred)
        return None if dtype is None else self.new_leaf(self.partner_shape(x.shape), dtype)

    # -- one step per category ------------------------------------------------------------------

    def _unary(self, op: str) -> None:
        if op == "logical_not":
            x = self.pick(_exact)
            self.emit(op, [x], {}, np.logical_not, 1.0)
            return
        x = self.pick(_both(_numeric, _exact) if op in DISCONTINUOUS_OPS else _numeric)
        if x is None:
            return
        if op == "exp":
            x = self.tame(x, 3.0)
            bound = math.exp(x.bound) if x else 0.0
        elif op == "log":
            x = self.plus_one(self.absolute(x))
            bound = math.log(x.bound) if x else 0.0
        elif op == "sqrt":  # sqrt(|x|), but sqrt(|x| + 1/16) where x carries rounding errors:
            exact = x.exact   # near 0 sqrt would magnify them without bound (sqrt(1e-7) = 3e-4)
            x = self.absolute(x)
            if not exact:
                x = None if "add" not in self.allow else self.emit(
                    "add", [x, self.scalar(0.0625, x.dtype)], {}, operator.add, x.bound + 0.0625)
            bound = math.sqrt(x.bound) if x else 0.0
        elif op in ("rsqrt", "reciprocal"):
            x = self.plus_one(self.absolute(x))
            bound = 1.0
        elif op in ("tanh", "sigmoid", "erf", "sin", "cos", "sign"):
            bound = 1.0
        elif op in ("floor", "ceil"):
            bound = x.bound + 1
        else:  # neg, abs
            bound = x.bound
        self.emit(op, [x], {}, _NP_UNARY[op], bound)

    def _cast(self, op: str) -> None:
        x = self.pick()
        targets = self.value_dtypes
        if x.dtype.kind == "f" and not x.exact:  # a float cast to an integer must be exact
            targets = {d for d in targets if d.kind == "f"} or targets
        dtype = self.pick_dtype(targets)
        attr = DTYPES_NAME[dtype] if self.draw(st.booleans()) else dtype  # "f32" or a dtype
        self.emit("cast", [x], {"dtype": attr}, lambda a: a.astype(dtype), x.bound)

    def _binary(self, op: str) -> None:
        arithmetic = op not in COMPARISON_OPS + ("logical_and", "logical_or")
        pred = _numeric if arithmetic else _any
        if op in DISCONTINUOUS_OPS:
            pred = _both(pred, _exact)
        x = self.pick(pred)
        if x is None:
            return
        y = self.partner(x, pred)
        if y is None:
            return
        a, b = (x, y) if self.draw(st.booleans()) else (y, x)
        if op in ("div", "floordiv", "mod"):
            b = self.plus_one(self.absolute(b))
            if b is None:
                return
            bound = {"div": a.bound, "floordiv": a.bound + 1, "mod": b.bound}[op]
        elif op == "pow":
            if a.dtype.kind == "f":  # (|a| + 1) ** b with |a| <= 2, |b| <= 2: within 9
                a, b = self.plus_one(self.absolute(self.tame(a, 2.0))), self.tame(b, 2.0)
                bound = 9.0
            else:  # integers: a small non-negative constant power
                a = self.tame(a, 3.0)
                b = self.scalar(self.draw(st.integers(0, 3)), a.dtype) if a else None
                bound = 27.0
        elif op == "mul":
            if a.bound * b.bound > LIMIT:
                a, b = self.tame(a, 2.0), self.tame(b, 2.0)
            bound = a.bound * b.bound if a and b else 0.0
        elif op in ("add", "sub"):
            if a.bound + b.bound > LIMIT:
                a, b = self.tame(a, 2.0), self.tame(b, 2.0)
            bound = a.bound + b.bound if a and b else 0.0
        else:
            bound = max(a.bound, b.bound)
        self.emit(op, [a, b], {}, _NP_BINARY[op], bound)

    def _where(self, op: str) -> None:
        a = self.pick()
        conds = [v for v in self.pool if v.dtype == np.bool_ and self.fits(a.shape, v.shape)]
        if conds and self.draw(st.booleans()):
            cond = self.choose(conds)
        else:
            compare = [c for c in COMPARISON_OPS if c in self.allow]
            if not compare:
                return
            cmp = self.choose(compare)
            left = a if a.exact else self.pick(lambda v: v.exact and self.fits(a.shape, v.shape))
            if left is None:
                return
            cond = self.emit(cmp, [left, self.partner(left, _exact)], {}, _NP_BINARY[cmp], 1.0)
        b = self.partner(a)
        if cond is None or b is None:
            return
        if self.draw(st.booleans()):
            a, b = b, a
        self.emit("where", [cond, a, b], {}, np.where, max(a.bound, b.bound))

    def _reduce(self, op: str) -> None:
        x = self.pick()
        if x.numeric and self.n_ops + 2 <= self.target and self.draw(st.integers(0, 2)) == 0:
            # of a product made for it (sum(x * x)), which fusion puts into the reduction's loop
            x = self.tame(x, 30.0)
            x = x and self.emit("mul", [x, x], {}, operator.mul, x.bound ** 2, pooled=False)
            if x is None:
                return
        ndim = len(x.shape)
        mode = self.draw(st.integers(0, 3)) if ndim else 0
        if mode == 0:
            axis = None
        elif mode == 1:
            axis = self.draw(st.integers(-ndim, ndim - 1))
        else:
            axis = tuple(self.draw(st.lists(st.integers(0, ndim - 1), unique=True,
                                            max_size=ndim)))
            if mode == 3:
                axis = tuple(a - ndim for a in axis)
        keepdims = self.draw(st.booleans())
        reduced = range(ndim) if axis is None else [a % ndim for a in np.atleast_1d(axis)]
        count = _size([x.shape[a] for a in reduced])
        if count == 0 and op != "sum":
            return  # mean would be NaN; max and min have no identity
        if op == "sum" and x.bound * count > LIMIT:
            x = self.scale_down(x, LIMIT / count) if self.big else self.tame(x, 1.0)
        bound = x.bound * count if x and op == "sum" else x.bound if x else 0.0
        fn = _NP_REDUCE[op]
        self.emit(op, [x], {"axes": axis, "keepdims": keepdims},
                  lambda a: fn(a, axis=axis, keepdims=keepdims), bound)

    def _scan(self, op: str) -> None:
        x = self.pick(lambda v: len(v.shape) >= 1)
        if x is None:
            return
        axis = self.draw(st.integers(-len(x.shape), len(x.shape) - 1))
        count = max(x.shape[axis], 1)
        if op == "cumsum" and x.bound * count > LIMIT:
            x = self.scale_down(x, LIMIT / count) if self.big else self.tame(x, 1.0)
        if op == "cumprod" and x.bound > 1.0:
            x = self.tame(x, 1.0)  # products of numbers within 1 stay within 1
        if x is None:
            return
        bound = x.bound * count if op == "cumsum" else x.bound
        fn = np.cumsum if op == "cumsum" else np.cumprod
        self.emit(op, [x], {"axis": axis}, lambda a: fn(a, axis=axis), bound)

    def _matmul(self, op: str) -> None:
        if self.big and self.draw(st.booleans()):
            self.large_matmul()
            return
        x = self.pick(lambda v: v.numeric and len(v.shape) >= 1)
        if x is None:
            return
        left = self.draw(st.booleans())
        fits = [v for v in self.pool if v.numeric and len(v.shape) >= 1
                and self.matmul_fits(*((x.shape, v.shape) if left else (v.shape, x.shape)))]
        if fits and self.draw(st.booleans()):
            y = self.choose(fits)
        else:
            dtype = self.leaf_dtype(x, _numeric)
            if dtype is None:
                return
            y = self.new_leaf(self.matmul_partner_shape(x.shape, left), dtype, keep_shape=True)
            if y is None:
                return
        a, b = (x, y) if left else (y, x)
        self.product("matmul", a, b, a.shape[-1], operator.matmul)

    def large_matmul(self) -> None:
        """``a @ b`` of new float operands with ``m * n * k >= 32K``: the size at which matmuls
        run on packed panels and the micro-kernel (sometimes batched, sometimes ``b`` transposed)."""
        dtype = self.float_dtype(4)
        if dtype is None:
            return
        m, k, n = (self.draw(st.integers(24, 64)) for _ in range(3))
        batch = (self.draw(st.integers(1, 3)),) if self.draw(st.integers(0, 3)) == 0 else ()
        a = self.new_leaf(batch + (m, k), dtype, keep_shape=True)
        if a is None:
            return
        if self.draw(st.booleans()):
            b = self.new_leaf((n, k), self.leaf_dtype(a, _numeric), keep_shape=True)
            b = b and self.emit("transpose", [b], {}, np.transpose, b.bound)
        else:
            b = self.new_leaf((k, n), self.leaf_dtype(a, _numeric), keep_shape=True)
        if a is not None and b is not None:
            self.product("matmul", a, b, k, operator.matmul)

    def product(self, op: str, a: _Val, b: _Val, k: int, np_fn: Callable, attrs=None,
                exact: bool = False) -> _Val | None:
        """``op(a, b)`` summing ``k`` products per element, with operands tamed (then scaled by
        a power of two) until the result is bounded by ``LIMIT``."""
        if a.bound * b.bound * k > LIMIT:
            a, b = self.tame(a, 2.0), self.tame(b, 2.0)
            if a is not None and b is not None and self.big:
                a = self.scale_down(a, LIMIT / (b.bound * max(k, 1)))
        if a is None or b is None:
            return None
        return self.emit(op, [a, b], attrs or {}, np_fn, a.bound * b.bound * k, exact=exact)

    def matmul_fits(self, a, b) -> bool:
        from ..ir.ops import matmul_shape

        try:
            return _size(matmul_shape(a, b)) <= self.max_size
        except MinicompError:
            return False

    def matmul_partner_shape(self, shape, left: bool) -> tuple[int, ...]:
        """A shape ``s`` with ``shape @ s`` (``left``) or ``s @ shape`` defined."""
        k = shape[-1] if left else shape[0] if len(shape) == 1 else shape[-2]
        if self.draw(st.integers(0, 2)) == 0:
            return (k,)
        batch = self.partner_shape(shape[:-2]) if len(shape) > 2 else ()
        if len(shape) <= 2 and self.draw(st.integers(0, 3)) == 0:
            batch = (self.draw(st.integers(1, 3)),)
        other = self.dim()
        if self.big and k > 6 and self.draw(st.booleans()):  # packed panels: m * n * k >= 32K
            other = self.draw(st.integers(32, 96))
        return batch + ((k, other) if left else (other, k))

    def _conv2d(self, op: str) -> None:
        """A convolution of values on a grid (so that any summation order gives the same bits)."""
        layout = self.choose(("NCHW", "NHWC"))
        channel_axis = 1 if layout == "NCHW" else 3
        x = None
        if self.draw(st.booleans()):
            x = self.pick(lambda v: len(v.shape) == 4 and v.numeric and v.grid is not None)
        if x is None:
            dtype = self.pick_dtype([d for d in self.dtypes if d != np.bool_] or [None])
            if dtype is None:
                return
            n, height, width = self.draw(st.integers(0, 2)), self.dim(), self.dim()
            c = self.draw(st.integers(1, 4))
            shape = (n, c, height, width) if layout == "NCHW" else (n, height, width, c)
            x = self.new_leaf(self.fit(shape), dtype, keep_shape=True, grid=True)
            if x is None:
                return
        c = x.shape[channel_axis]
        groups = self.choose([g for g in (1, 2, 3) if c % g == 0])
        per_group, out_per_group = c // groups, self.draw(st.integers(1, 3))
        o = out_per_group * groups
        r, s = self.draw(st.integers(1, 3)), self.draw(st.integers(1, 3))
        w_shape = (o, per_group, r, s) if layout == "NCHW" else (r, s, per_group, o)
        w_dtype = self.leaf_dtype(x, _numeric)
        w = None if w_dtype is None else self.new_leaf(w_shape, w_dtype, keep_shape=True, grid=True)
        pads = [self.draw(st.integers(0, 2)) for _ in range(4)]
        padding = self.choose([pads[0], tuple(pads[:2]), tuple(pads)])
        strides = (self.draw(st.integers(1, 2)), self.draw(st.integers(1, 2)))
        dilation = (self.draw(st.integers(1, 2)), self.draw(st.integers(1, 2)))
        attrs = {"strides": strides, "padding": padding, "dilation": dilation,
                 "groups": groups, "layout": layout}
        full = (padding,) * 4 if isinstance(padding, int) else \
            padding[:1] * 2 + padding[1:] * 2 if len(padding) == 2 else padding
        if x is None or w is None:
            return
        twin = lambda a, b: _np_conv2d(a, b, strides, full, dilation, groups, layout)  # noqa: E731
        self.product("conv2d", x, w, per_group * r * s, twin, attrs, exact=True)

    def _transpose(self, op: str) -> None:
        x = self.pick()
        ndim = len(x.shape)
        if self.draw(st.integers(0, 3)) == 0:
            self.emit(op, [x], {}, np.transpose, x.bound)  # perm=None: reverse the axes
            return
        perm = tuple(self.draw(st.permutations(range(ndim))))
        if self.draw(st.booleans()):
            perm = tuple(p - ndim if i % 2 else p for i, p in enumerate(perm))
        self.emit(op, [x], {"perm": perm}, lambda a: np.transpose(a, perm), x.bound)

    def _reshape(self, op: str) -> None:
        x = self.pick()
        size, rank = _size(x.shape), self.draw(st.integers(0, 4))
        if size == 0:
            shape = [self.dim() for _ in range(max(rank, 1))]
            shape[self.draw(st.integers(0, len(shape) - 1))] = 0
        elif rank == 0:
            if size != 1:
                rank = 1
            shape = [size] * rank
        else:
            shape = [1] * rank
            for p in _prime_factors(size):
                shape[self.draw(st.integers(0, rank - 1))] *= p
            if self.draw(st.booleans()):
                shape[self.draw(st.integers(0, rank - 1))] = -1
        new = tuple(shape)
        if len(new) == 1 and new[0] != -1 and self.draw(st.booleans()):
            new = new[0]  # reshape(x, 6) as well as reshape(x, (6,))
        self.emit(op, [x], {"shape": new}, lambda a: np.reshape(a, new), x.bound)

    def _broadcast_to(self, op: str) -> None:
        x = self.pick()
        shape = [self.stretch() if d == 1 and self.draw(st.booleans()) else d for d in x.shape]
        lead = [self.draw(st.integers(1, 3)) for _ in range(self.draw(st.integers(0, 2)))]
        shape = tuple(lead + shape)
        self.emit(op, [x], {"shape": shape}, lambda a: np.broadcast_to(a, shape), x.bound)

    def _expand_dims(self, op: str) -> None:
        x = self.pick()
        count = self.draw(st.integers(1, 2))
        out_ndim = len(x.shape) + count
        axes = self.draw(st.lists(st.integers(-out_ndim, out_ndim - 1), min_size=count,
                                  max_size=count, unique_by=lambda a: a % out_ndim))
        axes = axes[0] if count == 1 and self.draw(st.booleans()) else tuple(axes)
        self.emit(op, [x], {"axes": axes}, lambda a: np.expand_dims(a, axes), x.bound)

    def _squeeze(self, op: str) -> None:
        x = self.pick()
        ones = [i for i, d in enumerate(x.shape) if d == 1]
        if not ones or self.draw(st.booleans()):
            self.emit(op, [x], {}, np.squeeze, x.bound)  # axes=None: every size-1 axis
            return
        axes = self.draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
        if self.draw(st.booleans()):
            axes = [a - len(x.shape) for a in axes]
        axes = axes[0] if len(axes) == 1 and self.draw(st.booleans()) else tuple(axes)
        self.emit(op, [x], {"axes": axes}, lambda a: np.squeeze(a, axis=axes), x.bound)

    def _slice(self, op: str) -> None:
        x = self.pick()
        bound_or_none = st.one_of(st.none(), st.integers(-8, 8))
        starts, stops, steps = [], [], []
        for _ in x.shape:
            starts.append(self.draw(bound_or_none))
            stops.append(self.draw(bound_or_none))
            steps.append(self.choose((1, 2, -1, 3, -2)))
        index = tuple(slice(*s) for s in zip(starts, stops, steps))
        self.emit(op, [x], {"starts": starts, "stops": stops, "steps": steps},
                  lambda a: a[index], x.bound)

    def _concatenate(self, op: str) -> None:
        x = self.pick(lambda v: len(v.shape) >= 1)
        if x is None:
            return
        ndim = len(x.shape)
        axis = self.draw(st.integers(-ndim, ndim - 1))
        parts = [x]
        for _ in range(self.draw(st.integers(0, 2))):
            fits = [v for v in self.pool if len(v.shape) == ndim and all(
                a == b for i, (a, b) in enumerate(zip(x.shape, v.shape)) if i != axis % ndim)]
            if self.draw(st.booleans()):
                parts.append(self.choose(fits))  # x itself fits
            else:
                shape = list(x.shape)
                shape[axis] = self.dim()
                parts.append(self.new_leaf(tuple(shape), self.leaf_dtype(x), keep_shape=True))
        if None in parts:
            return
        position = self.draw(st.integers(0, len(parts) - 1))
        parts[0], parts[position] = parts[position], parts[0]
        self.emit(op, parts, {"axis": axis}, lambda *arrays: np.concatenate(arrays, axis=axis),
                  max(p.bound for p in parts))

    def index_constant(self, shape, size: int, spread: int = 1) -> _Val:
        """A constant int32 or int64 index array of ``shape`` for an axis of ``size``: indices in
        ``-size..size-1`` (negatives and repeats included), or ``spread`` times wider (for the
        wrap and clip modes). Constant, so that every index is in range: the runtime error of an
        index out of range is tested in ``tests/test_gather_scatter.py``."""
        count = _size(shape)
        values = self.draw(st.lists(st.integers(-spread * size, spread * size - 1), min_size=count, max_size=count))
        dtype = self.choose((np.int32, np.int64))
        return self.new_constant(np.array(values, dtype).reshape(shape), pooled=False)

    def _gather(self, op: str) -> None:
        x = self.pick(lambda v: len(v.shape) >= 1 and min(v.shape) >= 1)
        if x is None:
            return
        axis = self.draw(st.integers(0, len(x.shape) - 1))
        count = self.draw(st.integers(1, min(2, len(x.shape) - axis)))
        mode = self.choose(("raise", "wrap", "clip"))
        shape = tuple(self.dim() for _ in range(self.draw(st.integers(0, 2))))
        sizes = x.shape[axis:axis + count]
        indices = [self.index_constant(shape, size, 1 if mode == "raise" else 3) for size in sizes]

        def numpy_gather(a, *picks):
            if mode == "wrap":
                picks = [p % s for p, s in zip(picks, sizes)]
            elif mode == "clip":
                picks = [np.clip(p, 0, s - 1) for p, s in zip(picks, sizes)]
            return a[(slice(None),) * axis + tuple(picks)]
        self.emit(op, [x, *indices], {"axis": axis, "mode": mode}, numpy_gather, x.bound)

    def _scatter(self, op: str) -> None:
        x = self.pick(lambda v: _size(v.shape) >= 1)
        if x is None:
            return
        shape = tuple(self.dim() for _ in range(self.draw(st.integers(0, 2))))
        positions = self.index_constant(shape, _size(x.shape))
        written = self.pick(lambda v: v.shape == shape and v.dtype == x.dtype) or self.new_leaf(
            shape, x.dtype, keep_shape=True)
        mode = self.choose(("set", "maximum", "minimum")) if x.dtype.kind == "f" else "set"

        def numpy_scatter(a, p, v):
            out = a.copy().reshape(-1)
            if mode == "set":
                for position, value in zip(p.reshape(-1), v.reshape(-1)):  # the last write wins
                    out[position] = value
            else:
                getattr(np, mode).at(out, p.reshape(-1), v.reshape(-1))
            return out.reshape(a.shape)
        bound = max(x.bound, written.bound) if written is not None else x.bound
        self.emit(op, [x, positions, written], {"mode": mode}, numpy_scatter, bound)

    def _as_strided(self, op: str) -> None:
        x = self.pick()
        size = _size(x.shape)
        rank = self.draw(st.integers(1, 3))
        shape = [self.draw(st.integers(0 if size == 0 else 1, 4)) for _ in range(rank)]
        strides = [self.draw(st.integers(-2, 3)) for _ in range(rank)]
        below = -sum(s * (d - 1) for d, s in zip(shape, strides) if s < 0)
        above = sum(s * (d - 1) for d, s in zip(shape, strides) if s > 0)
        if size and below + above >= size:  # too wide: one window of one element
            shape = [1] * rank
            below = above = 0
        if size == 0:
            shape[0] = 0
        offset = below + self.draw(st.integers(0, max(size - 1 - below - above, 0)))

        def windows(a):  # NumPy's as_strided on the C-order elements, from the offset
            flat = np.ascontiguousarray(a).reshape(-1)
            if not flat.size:
                return np.zeros(shape, a.dtype)
            view = np.lib.stride_tricks.as_strided(flat[offset:], shape, [s * a.itemsize for s in strides])
            return view.copy()
        self.emit(op, [x], {"shape": tuple(shape), "strides": tuple(strides), "offset": offset},
                  windows, x.bound)

    # -- compositions ---------------------------------------------------------------------------

    def float_operand(self, min_ndim: int = 1, at_least: int = 2) -> _Val | None:
        """A float value of the pool with ``min_ndim`` dimensions, or a new leaf."""
        if self.draw(st.booleans()):
            x = self.pick(lambda v: v.dtype.kind == "f" and v.dtype.itemsize >= at_least
                          and len(v.shape) >= min_ndim)
            if x is not None:
                return x
        dtype = self.float_dtype(at_least)
        if dtype is None:
            return None
        shape = self.new_shape()
        while len(shape) < min_ndim:
            shape = (self.dim(),) + shape
        return self.new_leaf(self.fit(shape), dtype, keep_shape=True)

    def row_softmax(self, x: _Val | None, axis: int, pooled: bool = True) -> _Val | None:
        """``exp(x - max) / sum(exp(x - max))`` along ``axis``, as ``minicomp.nn.softmax``."""
        if x is None:
            return None
        keep = {"axes": axis, "keepdims": True}
        peak = self.emit("max", [x], keep, lambda a: np.max(a, axis=axis, keepdims=True), x.bound)
        shifted = self.emit("sub", [x, peak], {}, operator.sub, 2 * x.bound, pooled=pooled)
        e = self.emit("exp", [shifted], {}, np.exp, 1.0)  # of values <= 0
        count = x.shape[axis] if x.shape else 1
        total = self.emit("sum", [e], keep, lambda a: np.sum(a, axis=axis, keepdims=True), count)
        return self.emit("div", [e, total], {}, operator.truediv, 1.0)

    def _softmax(self, name: str) -> None:
        x = self.float_operand()
        if x is None:
            return
        x = self.tame(x, LIMIT / 2)
        self.row_softmax(x, self.draw(st.integers(-len(x.shape), len(x.shape) - 1)))

    def _layer_norm(self, name: str) -> None:
        """``(x - mean) / sqrt(var + eps) [* gamma] [+ beta]`` along one axis (``nn.layer_norm``)."""
        x = self.tame(self.float_operand(), 15.0)
        if x is None:
            return
        axis = self.choose((-1, -1, self.draw(st.integers(-len(x.shape), len(x.shape) - 1))))
        count = x.shape[axis]
        if count == 0:
            return  # a mean over nothing is NaN
        keep = {"axes": axis, "keepdims": True}
        mean_fn = lambda a: np.mean(a, axis=axis, keepdims=True)  # noqa: E731
        mean = self.emit("mean", [x], keep, mean_fn, x.bound)
        centered = self.emit("sub", [x, mean], {}, operator.sub, 2 * x.bound)
        square = self.emit("mul", [centered, centered], {}, operator.mul, (2 * x.bound) ** 2)
        variance = self.emit("mean", [square], keep, mean_fn, (2 * x.bound) ** 2)
        # eps 0.25, not 1e-5: a row of equal values has x - mean = the mean's rounding error,
        # which 1 / sqrt(eps) magnifies (x316 with 1e-5); NumPy and C may round the mean apart
        eps = self.scalar(0.25, x.dtype)
        shifted = self.emit("add", [variance, eps], {}, operator.add, (2 * x.bound) ** 2 + 1)
        root = self.emit("sqrt", [shifted], {}, np.sqrt, 2 * x.bound + 1)
        y = self.emit("div", [centered, root], {}, operator.truediv, math.sqrt(count) + 1)
        if y is not None and axis == -1 and self.draw(st.booleans()):
            gamma = self.new_leaf((count,), self.leaf_dtype(x, _numeric), keep_shape=True)
            y = self.emit("mul", [y, gamma], {}, operator.mul, y.bound * 3)
        if y is not None and axis == -1 and self.draw(st.booleans()):
            beta = self.new_leaf((count,), self.leaf_dtype(x, _numeric), keep_shape=True)
            self.emit("add", [y, beta], {}, operator.add, y.bound + 3)

    def _attention(self, name: str) -> None:
        """``softmax(q @ kᵀ [* scale] [masked]) @ v`` over the last two axes, as
        ``nn.scaled_dot_product_attention`` writes it (which fusion turns into one kernel)."""
        dtype = self.float_dtype(4 if self.draw(st.integers(0, 3)) else 2)
        if dtype is None:
            return
        batch = tuple(self.draw(st.integers(1, 3)) for _ in range(self.draw(st.integers(0, 2))))
        sq, sk, head, out = self.dim(), max(self.dim(), 1), self.dim(), self.dim()
        if self.big and self.draw(st.booleans()):  # FlashAttention's tiles: sq * sk * head >= 32K
            sq, sk, head = (self.draw(st.integers(24, 64)) for _ in range(3))
        q = self.new_leaf(batch + (sq, head), dtype, keep_shape=True)
        if q is None:
            return
        if self.draw(st.booleans()):
            k = self.new_leaf(batch + (sk, head), self.leaf_dtype(q, _numeric), keep_shape=True)
            perm = tuple(range(len(batch))) + (len(batch) + 1, len(batch))
            kt = None if k is None else self.emit("transpose", [k], {"perm": perm},
                                                  lambda a: np.swapaxes(a, -1, -2), k.bound)
        else:
            kt = self.new_leaf(batch + (head, sk), self.leaf_dtype(q, _numeric), keep_shape=True)
        v = self.new_leaf(batch + (sk, out), self.leaf_dtype(q, _numeric), keep_shape=True)
        if q is None or kt is None or v is None:
            return
        scores = self.product("matmul", q, kt, head, operator.matmul)
        if scores is not None and self.draw(st.booleans()):
            scale = self.scalar(float(np.float16(1 / math.sqrt(max(head, 1)))), scores.dtype)
            scores = self.emit("mul", [scores, scale], {}, operator.mul, scores.bound)
        if scores is not None and scores.bound <= LIMIT / 2 and self.draw(st.booleans()):
            scores = self.masked(scores, sq, sk)
        if scores is not None:
            probabilities = self.row_softmax(scores, -1, pooled=not self.infinities)
            if probabilities is not None:
                self.emit("matmul", [probabilities, v], {}, operator.matmul, v.bound * max(sk, 1))

    def masked(self, scores: _Val, sq: int, sk: int) -> _Val | None:
        """``where(mask, fill, scores)`` (or ``where(mask, scores, fill)``) with a constant
        ``sq x sk`` mask that leaves every row a visible key: causal, or random. The fill is
        ``-inf`` with ``infinities``, else ``-LIMIT / 2``; values holding -inf leave the pool."""
        causal = np.triu(np.ones((sq, sk), bool), k=1)
        if self.draw(st.booleans()):
            hidden = causal
        else:
            hidden = self.rng.random((sq, sk)) < 0.5
            hidden[np.arange(sq), self.rng.integers(0, sk, sq)] = False
        fill = -np.inf if self.infinities else -LIMIT / 2
        fill_value = self.new_constant(np.array(fill, scores.dtype), pooled=not self.infinities)
        fill_value.bound = LIMIT / 2  # of the finite values (-inf is none)
        if self.draw(st.booleans()):
            mask = self.new_constant(hidden)
            return self.emit("where", [mask, fill_value, scores], {}, np.where, LIMIT / 2,
                             pooled=not self.infinities)
        mask = self.new_constant(~hidden)
        return self.emit("where", [mask, scores, fill_value], {}, np.where, LIMIT / 2,
                         pooled=not self.infinities)


DTYPES_NAME = {dtype: name for name, dtype in DTYPES.items()}


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors
