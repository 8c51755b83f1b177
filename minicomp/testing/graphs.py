"""Random graphs for property tests: a hypothesis strategy and a NumPy twin of each graph.

``random_graphs()`` draws a ``GeneratedGraph``: a ``Graph`` built op by op over a pool of live
values, NumPy arrays for its inputs, and ``numpy_fn``, a plain Python function that computes the
same outputs with direct NumPy calls (``np.exp``, ``a + b``, ``np.sum(a, axis=, keepdims=)``,
``a @ b``, ``a[::-2]``, ``np.concatenate`` ...), written independently of minicomp's op table.
Every pass and backend can then check itself on every generated graph::

    from hypothesis import given
    from minicomp.testing import assert_close
    from minicomp.testing.graphs import random_graphs

    @given(random_graphs())
    def test_my_backend(gen):
        assert_close(my_backend(gen.graph)(*gen.inputs), gen.numpy_fn(*gen.inputs))

What the generator produces:

* every op of the op table except ``conv2d``: elementwise unary ops and ``cast``, broadcasting
  binary ops (operand shapes that broadcast, with size-1 and sometimes size-0 dimensions,
  operands in both orders), ``where``, reductions (``axes`` None, an int, a tuple, negative or
  empty; ``keepdims``), ``matmul`` (1-D, 2-D and batched), ``transpose``, ``reshape`` (with
  ``-1``), ``broadcast_to``, ``expand_dims``, ``squeeze``, ``slice`` (steps, negative ones
  included) and ``concatenate``;
* inputs added along the way, scalar and small-array constants (larger ones sometimes, which
  the text form stores as base64), values used several times (``x * x``), dead values, and one
  to three outputs (a value may be returned twice);
* small shapes (dimensions 0..6, at most ``MAX_SIZE`` elements per value), so a graph runs in
  microseconds.

Values stay numerically tame: every value is finite and bounded by ``LIMIT`` in magnitude.
The generator tracks a bound per value and builds domain guards into the graph as ordinary
nodes: ``log(abs(x) + 1)``, ``sqrt(abs(x))``, ``a / (abs(b) + 1)``, ``exp`` only of values
bounded by 3 (``tanh`` or a ``maximum``/``minimum`` clamp inserted first when needed), and so
on. No NaN or infinity ever appears (``mean``, ``max`` and ``min`` never reduce empty axes).

Ops that are discontinuous (``DISCONTINUOUS_OPS``: comparisons, ``floor``, ``sign``, casts to
integers ...) turn a last-bit rounding difference into a different result. ``numpy_fn``
computes bit for bit what the interpreter computes, so that comparison is exact; a backend that
reorders floating-point work can pass ``allow_ops=GENERATED_OPS - DISCONTINUOUS_OPS``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from hypothesis import strategies as st

from ..errors import MinicompError
from ..ir.dtypes import DTYPES, TensorType, to_dtype
from ..ir.graph import Graph, Node
from ..ir.ops import OPS, fill_attrs

#: Largest magnitude of any generated value (inputs are within 3, guards keep the rest here).
LIMIT = 1000.0
#: Most elements of any generated value.
MAX_SIZE = 256
#: Most dimensions of any generated value.
MAX_NDIM = 5

UNARY_OPS = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf",
             "reciprocal", "sin", "cos", "floor", "ceil", "sign", "logical_not")
BINARY_OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum",
              "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or")
COMPARISON_OPS = ("eq", "ne", "lt", "le", "gt", "ge")
REDUCTION_OPS = ("sum", "mean", "max", "min")
INJECTIVE_OPS = ("transpose", "reshape", "broadcast_to", "expand_dims", "squeeze", "slice",
                 "concatenate")

#: Every op the generator can emit (all of the op table but the sources and conv2d).
GENERATED_OPS = frozenset(UNARY_OPS + BINARY_OPS + REDUCTION_OPS + INJECTIVE_OPS
                          + ("cast", "where", "matmul"))
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

_WEIGHTS = {"unary": 3, "binary": 4, "reduce": 2}
_CATEGORIES = {
    "unary": UNARY_OPS, "cast": ("cast",), "binary": BINARY_OPS, "where": ("where",),
    "reduce": REDUCTION_OPS, "matmul": ("matmul",),
    **{name: (name,) for name in INJECTIVE_OPS},
}


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
    ``minicomp.interpret(graph, *inputs)``.
    """

    graph: Graph
    inputs: list[np.ndarray]
    numpy_fn: Callable[..., list[np.ndarray]]

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
                  allow_ops: Iterable[str] | None = None) -> st.SearchStrategy[GeneratedGraph]:
    """A hypothesis strategy drawing ``GeneratedGraph`` s (see the module docstring).

    ``max_nodes`` bounds the number of generation steps (op nodes); the domain guards of a
    step (``abs``, ``+ 1``, ``tanh``, a clamp) may take a graph a few nodes past it.
    ``dtypes`` are the element types of inputs, constants and casts (names like ``"f32"`` or
    NumPy dtypes); no value of another dtype is created, except ``bool`` results of
    comparisons. ``allow_ops`` restricts the ops that may appear (default: ``GENERATED_OPS``);
    an op whose domain guard is not allowed (``log`` needs ``abs`` and ``add``) is left out.
    """
    if max_nodes < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
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
    return _random_graphs(_Options(max_nodes, dtypes, allow, categories))


@dataclass(frozen=True)
class _Options:
    """What ``random_graphs`` was asked for, checked and expanded."""

    max_nodes: int
    dtypes: tuple
    allow: frozenset
    categories: dict

    def __repr__(self) -> str:  # shown by hypothesis as the strategy's argument
        dtypes = ",".join(DTYPES_NAME[d] for d in self.dtypes)
        ops = "all" if self.allow == GENERATED_OPS else ",".join(sorted(self.allow))
        return f"max_nodes={self.max_nodes}, dtypes={dtypes}, ops={ops}"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@st.composite
def _random_graphs(draw, options: _Options) -> GeneratedGraph:
    return _Builder(draw, options.max_nodes, options.dtypes, options.allow,
                    options.categories).build()


# ----------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------


@dataclass
class _Val:
    """A live value: its node, its key in ``numpy_fn``'s environment, a bound on |value|."""

    node: Node
    key: int
    bound: float

    @property
    def shape(self) -> tuple[int, ...]:
        return self.node.shape

    @property
    def dtype(self) -> np.dtype:
        return self.node.dtype

    @property
    def numeric(self) -> bool:
        return self.node.dtype != np.bool_


def _any(v: _Val) -> bool:
    return True


def _numeric(v: _Val) -> bool:
    return v.numeric


def _broadcast(*shapes) -> tuple[int, ...] | None:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class _Builder:
    """Builds one graph and its NumPy twin from hypothesis draws."""

    def __init__(self, draw, max_nodes, dtypes, allow, categories):
        self.draw = draw
        self.max_nodes = max_nodes
        self.dtypes = dtypes
        self.value_dtypes = set(dtypes) | {np.dtype(np.bool_)}
        self.allow = allow
        self.categories = categories
        self.graph = Graph("random")
        self.pool: list[_Val] = []
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
            self.new_input(self.new_shape(), self.pick_dtype(self.dtypes))
        target = self.draw(st.integers(1, self.max_nodes))
        attempts = 0
        # the big families (unary, binary, reductions) get more steps than each movement op
        weighted = [c for c in self.categories for _ in range(_WEIGHTS.get(c, 1))]
        while weighted and self.n_ops < target and attempts < 4 * self.max_nodes:
            attempts += 1
            category = self.draw(st.sampled_from(weighted))
            getattr(self, "_" + category)(self.draw(st.sampled_from(self.categories[category])))
        for category, ops in self.categories.items():  # every step failed: any op will do
            for op in ops:
                if self.n_ops == 0:
                    getattr(self, "_" + category)(op)
        computed = [v for v in self.pool if v.node.op not in ("input", "constant")]
        last = computed[-1] if computed else self.pool[-1]
        outputs = [last] + [self.draw(st.sampled_from(self.pool))
                            for _ in range(self.draw(st.integers(0, 2)))]
        self.graph.set_outputs([v.node for v in outputs])
        return GeneratedGraph(self.graph, self.input_arrays(),
                              self.numpy_fn([v.key for v in outputs]))

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
        """A dimension: 1 (a quarter of the time), 2..6, and now and then 0."""
        choice = self.draw(st.integers(0, 11))
        return 0 if choice == 11 else 1 if choice < 3 else self.draw(st.integers(2, 6))

    def stretch(self) -> int:
        """What a size-1 dimension broadcasts to: 2..6, or quite often 0."""
        return 0 if self.draw(st.integers(0, 3)) == 3 else self.draw(st.integers(2, 6))

    def new_shape(self) -> tuple[int, ...]:
        ndim = (0, 1, 1, 2, 2, 2, 3, 3)[self.draw(st.integers(0, 7))]  # 0-d now and then
        return tuple(self.dim() for _ in range(ndim))

    def pick_dtype(self, choices) -> np.dtype:
        return self.draw(st.sampled_from(sorted(choices, key=str)))

    def pick(self, pred=_any) -> _Val | None:
        """A value of the pool satisfying ``pred``, or None."""
        candidates = [v for v in self.pool if pred(v)]
        return self.draw(st.sampled_from(candidates)) if candidates else None

    def leaf_dtype(self, like: _Val, pred=_any) -> np.dtype | None:
        """Mostly ``like``'s dtype, sometimes another allowed one (for mixed promotion)."""
        choices = [d for d in self.dtypes if d != np.bool_ or pred is _any]
        if like.dtype in choices and self.draw(st.booleans()):
            return like.dtype
        return self.pick_dtype(choices) if choices else None

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
        result = _broadcast(shape, out)
        return out if result is not None and _size(result) <= MAX_SIZE else tuple(shape)

    # -- making nodes ---------------------------------------------------------------------------

    def _key(self) -> int:
        self.n_keys += 1
        return self.n_keys - 1

    def _loc(self) -> str | None:
        return f"gen.py:{len(self.graph) + 1}" if self.with_locs else None

    def new_input(self, shape, dtype) -> _Val:
        node = self.graph.add_input(f"x{len(self.inputs)}", TensorType(shape, dtype), self._loc())
        val = _Val(node, self._key(), 1.0 if dtype == np.bool_ else 3.0)
        self.inputs.append((val, self.draw(st.integers(0, 3)) == 0))
        self.pool.append(val)
        return val

    def new_constant(self, value: np.ndarray) -> _Val:
        node = self.graph.add_constant(value, name="c", loc=self._loc())
        array = node.attrs["value"]
        bound = float(np.max(np.abs(array.astype(np.float64)), initial=0.0))
        val = _Val(node, self._key(), bound)
        self.steps.append((val.key, lambda array=array: array, []))
        self.pool.append(val)
        return val

    def scalar(self, value, dtype) -> _Val:
        """A 0-d constant, shared by every use of the same value and dtype."""
        key = (value, np.dtype(dtype))
        if key not in self.scalars:
            self.scalars[key] = self.new_constant(np.array(value, dtype))
        return self.scalars[key]

    def new_leaf(self, shape, dtype, exact: bool = False) -> _Val | None:
        """A fresh input, or a constant (usually small; sometimes over 16 elements); a
        constant may be a 0-d scalar instead of ``shape`` unless ``exact``. None if ``shape``
        is over ``MAX_SIZE`` elements."""
        if _size(shape) > MAX_SIZE:
            return None
        if self.draw(st.integers(0, 2)) == 0 or exact and _size(shape) > 36:
            return self.new_input(shape, dtype)
        if not exact and (_size(shape) > 36 or self.draw(st.integers(0, 2)) > 0):
            shape = ()
        return self.new_constant(self.random_array(shape, dtype, self.draw(st.booleans())))

    def emit(self, op: str, operands: list[_Val | None], attrs: dict, np_fn: Callable,
             bound: float) -> _Val | None:
        """Add ``op(operands)`` with its NumPy twin ``np_fn``; None if it is not allowed, does
        not type-check, or would leave the limits (dtypes, size, rank, magnitude)."""
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
        if (out.dtype not in self.value_dtypes or out.size > MAX_SIZE or out.ndim > MAX_NDIM
                or not bound <= LIMIT):
            return None
        node = self.graph.add_op(op, [o.node for o in operands], attrs, loc=self._loc())
        val = _Val(node, self._key(), float(bound))
        self.steps.append((val.key, np_fn, [o.key for o in operands]))
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
            candidates = [v for v in self.pool if pred(v) and _fits(x.shape, v.shape)]
            if candidates:
                return self.draw(st.sampled_from(candidates))
        dtype = self.leaf_dtype(x, pred)
        return None if dtype is None else self.new_leaf(self.partner_shape(x.shape), dtype)

    # -- one step per category ------------------------------------------------------------------

    def _unary(self, op: str) -> None:
        if op == "logical_not":
            x = self.pick()
            self.emit(op, [x], {}, np.logical_not, 1.0)
            return
        x = self.pick(_numeric)
        if x is None:
            return
        if op == "exp":
            x = self.tame(x, 3.0)
            bound = math.exp(x.bound) if x else 0.0
        elif op == "log":
            x = self.plus_one(self.absolute(x))
            bound = math.log(x.bound) if x else 0.0
        elif op == "sqrt":
            x = self.absolute(x)
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
        dtype = self.pick_dtype(self.value_dtypes)
        attr = DTYPES_NAME[dtype] if self.draw(st.booleans()) else dtype  # "f32" or a dtype
        self.emit("cast", [x], {"dtype": attr}, lambda a: a.astype(dtype), x.bound)

    def _binary(self, op: str) -> None:
        arithmetic = op not in COMPARISON_OPS + ("logical_and", "logical_or")
        pred = _numeric if arithmetic else _any
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
        conds = [v for v in self.pool if v.dtype == np.bool_ and _fits(a.shape, v.shape)]
        if conds and self.draw(st.booleans()):
            cond = self.draw(st.sampled_from(conds))
        else:
            compare = [c for c in COMPARISON_OPS if c in self.allow]
            if not compare:
                return
            cmp = self.draw(st.sampled_from(compare))
            cond = self.emit(cmp, [a, self.partner(a)], {}, _NP_BINARY[cmp], 1.0)
        b = self.partner(a)
        if cond is None or b is None:
            return
        if self.draw(st.booleans()):
            a, b = b, a
        self.emit("where", [cond, a, b], {}, np.where, max(a.bound, b.bound))

    def _reduce(self, op: str) -> None:
        x = self.pick()
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
            x = self.tame(x, 1.0)
        bound = x.bound * count if x and op == "sum" else x.bound if x else 0.0
        fn = _NP_REDUCE[op]
        self.emit(op, [x], {"axes": axis, "keepdims": keepdims},
                  lambda a: fn(a, axis=axis, keepdims=keepdims), bound)

    def _matmul(self, op: str) -> None:
        x = self.pick(lambda v: v.numeric and len(v.shape) >= 1)
        if x is None:
            return
        left = self.draw(st.booleans())
        fits = [v for v in self.pool if v.numeric and len(v.shape) >= 1
                and _matmul_fits(*((x.shape, v.shape) if left else (v.shape, x.shape)))]
        if fits and self.draw(st.booleans()):
            y = self.draw(st.sampled_from(fits))
        else:
            dtype = self.leaf_dtype(x, _numeric)
            if dtype is None:
                return
            y = self.new_leaf(self.matmul_partner_shape(x.shape, left), dtype, exact=True)
            if y is None:
                return
        a, b = (x, y) if left else (y, x)
        k = a.shape[-1]
        if a.bound * b.bound * k > LIMIT:
            a, b = self.tame(a, 2.0), self.tame(b, 2.0)
        bound = a.bound * b.bound * k if a and b else 0.0
        self.emit("matmul", [a, b], {}, operator.matmul, bound)

    def matmul_partner_shape(self, shape, left: bool) -> tuple[int, ...]:
        """A shape ``s`` with ``shape @ s`` (``left``) or ``s @ shape`` defined."""
        k = shape[-1] if left else shape[0] if len(shape) == 1 else shape[-2]
        if self.draw(st.integers(0, 2)) == 0:
            return (k,)
        batch = self.partner_shape(shape[:-2]) if len(shape) > 2 else ()
        if len(shape) <= 2 and self.draw(st.integers(0, 3)) == 0:
            batch = (self.draw(st.integers(1, 3)),)
        other = self.dim()
        return batch + ((k, other) if left else (other, k))

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
            steps.append(self.draw(st.sampled_from((1, 2, -1, 3, -2))))
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
                parts.append(self.draw(st.sampled_from(fits)))  # x itself fits
            else:
                shape = list(x.shape)
                shape[axis] = self.dim()
                parts.append(self.new_leaf(tuple(shape), self.leaf_dtype(x), exact=True))
        if None in parts:
            return
        position = self.draw(st.integers(0, len(parts) - 1))
        parts[0], parts[position] = parts[position], parts[0]
        self.emit(op, parts, {"axis": axis}, lambda *arrays: np.concatenate(arrays, axis=axis),
                  max(p.bound for p in parts))


DTYPES_NAME = {dtype: name for name, dtype in DTYPES.items()}


def _fits(a, b) -> bool:
    """True if shapes ``a`` and ``b`` broadcast to a shape of at most ``MAX_SIZE`` elements."""
    shape = _broadcast(a, b)
    return shape is not None and _size(shape) <= MAX_SIZE


def _matmul_fits(a, b) -> bool:
    from ..ir.ops import matmul_shape

    try:
        return _size(matmul_shape(a, b)) <= MAX_SIZE
    except MinicompError:
        return False


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors
