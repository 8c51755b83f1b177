"""The op table: every operation minicomp knows, one row each.

A row (``OpDef``) says everything the rest of the compiler needs to know about an op:

* ``kind``: its *pattern kind*, which decides what fusion may do with it (TVM's OpPatternKind):

  ============== ================================================== ==========================
  kind           meaning                                            examples
  ============== ================================================== ==========================
  elemwise       out[i] = f(in[i]), same shape in and out           exp, neg, cast
  broadcast      elementwise after NumPy broadcasting of operands   add, maximum, where
  injective      each output element is one input element moved     transpose, reshape, slice
  reduction      output elements combine many input elements        sum, mean, max
  out_ew_fusable complex op whose *output* may take an elementwise  matmul, conv2d
                 epilogue
  opaque         nothing may fuse with it                           (none yet)
  source         no computation: graph inputs and constants         input, constant
  ============== ================================================== ==========================

* ``infer``: the shape and dtype rule. Shapes follow NumPy (broadcasting, matmul's 1-D cases,
  negative axes); dtypes are asked from NumPy itself (``ufunc.resolve_dtypes``,
  ``np.result_type``), so promotion can never drift from NumPy's.
* ``reference``: the NumPy implementation that *defines* the op's meaning. The interpreter runs
  it; every backend is tested against it.
* ``attrs``: the attributes the op takes, with defaults; ``normalize`` turns what a user wrote
  (``axis=-1``, ``shape=(-1, 4)``) into one canonical form, so two equal ops have equal attrs.

An ``infer`` or ``normalize`` function raises ``ShapeError``/``DTypeError`` with the detail only;
``Graph.add_op`` adds the op name, the operand types and the user's source line.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np

from ..errors import DTypeError, ShapeError
from .dtypes import TensorType, to_dtype
from .symbolic import Sym, SymbolicShapeError


class Kind(str, Enum):
    """Pattern kinds, ordered roughly from most to least fusable."""

    ELEMWISE = "elemwise"
    BROADCAST = "broadcast"
    INJECTIVE = "injective"
    REDUCTION = "reduction"
    OUT_EW_FUSABLE = "out_ew_fusable"
    OPAQUE = "opaque"
    SOURCE = "source"


REQUIRED = object()  # marks an attribute without a default


@dataclass(frozen=True)
class OpDef:
    """One row of the op table. See the module docstring for the meaning of each field."""

    name: str
    kind: Kind
    arity: int | None  # number of operands; None for variadic (concatenate)
    infer: Callable[[list[TensorType], dict], TensorType]
    reference: Callable[..., np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    normalize: Callable[[list[TensorType], dict], dict] | None = None
    doc: str = ""


OPS: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add a row to the op table (names are unique)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} registered twice")
    OPS[op.name] = op
    return op


def get_op(name: str) -> OpDef:
    """The row for ``name``; ``KeyError`` naming the known ops if there is none."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


def fill_attrs(op: OpDef, types: list[TensorType], attrs: dict) -> dict:
    """Check attribute names, fill defaults and canonicalise through ``op.normalize``."""
    unknown = set(attrs) - set(op.attrs)
    if unknown:
        raise ShapeError(
            f"unknown attribute(s) {sorted(unknown)}; {op.name} takes {sorted(op.attrs) or 'none'}"
        )
    full = {}
    for key, default in op.attrs.items():
        if key in attrs:
            full[key] = attrs[key]
        elif default is REQUIRED:
            raise ShapeError(f"missing attribute {key!r}")
        else:
            full[key] = default
    return op.normalize(types, full) if op.normalize else full


# ----------------------------------------------------------------------------------------------
# Helpers shared by the shape rules
# ----------------------------------------------------------------------------------------------


def normalize_axis(axis: int, ndim: int) -> int:
    """``-1 -> ndim-1``; ``ShapeError`` when out of range (NumPy's AxisError) or not an integer."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise ShapeError(f"axis {axis!r:.40} is not an integer") from None
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of bounds for an array of dimension {ndim}")
    return axis % ndim


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    """``None -> all axes``; ints or tuples -> sorted tuple of distinct non-negative axes."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (axes,)
    if not isinstance(axes, (tuple, list)):
        raise ShapeError(f"axis {axes!r:.40} is not an integer or a tuple of integers")
    result = tuple(sorted(normalize_axis(a, ndim) for a in axes))
    if len(set(result)) != len(result):
        raise ShapeError(f"repeated axis in {tuple(axes)}")
    return result


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes; ``ShapeError`` if they do not broadcast."""
    if shapes and all(s == shapes[0] for s in shapes[1:]):  # the common case, without NumPy
        return tuple(shapes[0])
    if any(isinstance(d, Sym) for s in shapes for d in s):
        return _broadcast_symbolic(shapes)
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(
            "shapes " + " and ".join(str(tuple(s)) for s in shapes) + " cannot be broadcast together"
        ) from None


def _broadcast_symbolic(shapes) -> tuple:
    """Broadcasting where some dimension is a symbolic size: it matches itself and 1 only.

    ``T`` against ``768`` (or another symbol) could broadcast only for some sizes, so it raises
    ``SymbolicShapeError``: the signature is then compiled with static sizes.
    """
    ndim = max(len(s) for s in shapes)
    result = []
    for axis in range(ndim):
        dims = {s[len(s) - ndim + axis] for s in shapes if len(s) - ndim + axis >= 0} - {1}
        if len(dims) > 1:
            if all(not isinstance(d, Sym) for d in dims):
                raise ShapeError("shapes " + " and ".join(str(tuple(s)) for s in shapes)
                                 + " cannot be broadcast together")
            raise SymbolicShapeError("shapes " + " and ".join(str(tuple(s)) for s in shapes)
                                     + " broadcast only for some values of their symbolic sizes")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


@functools.lru_cache(maxsize=1024)
def ufunc_dtype(ufunc: np.ufunc, *dtypes: np.dtype) -> np.dtype:
    """The output dtype NumPy's ufunc ``ufunc`` gives for input ``dtypes`` (remembered: type
    inference asks the same few questions for every node it checks)."""
    try:
        resolved = ufunc.resolve_dtypes(tuple(dtypes) + (None,) * ufunc.nout)
    except TypeError as exc:
        names = ", ".join(str(d) for d in dtypes)
        raise DTypeError(f"NumPy's {ufunc.__name__} does not accept dtype(s) {names}: {exc}") from None
    return to_dtype(resolved[-1])


# ----------------------------------------------------------------------------------------------
# Sources: graph inputs and constants
# ----------------------------------------------------------------------------------------------


def _no_reference(*args, **kwargs):
    raise RuntimeError("input nodes are bound to arguments, not computed")


register(OpDef(
    "input", Kind.SOURCE, 0,
    infer=lambda types, attrs: attrs["type"],
    reference=_no_reference,
    attrs={"type": REQUIRED},
    doc="A graph argument; its type is fixed when the graph is built.",
))


def _constant_normalize(types, attrs):
    value = np.asarray(attrs["value"])
    to_dtype(value.dtype)  # rejects unsupported dtypes
    if value.flags.writeable:  # copy, so the constant never changes behind the graph's back
        value = value.copy()
        value.flags.writeable = False
    return {"value": value}


register(OpDef(
    "constant", Kind.SOURCE, 0,
    infer=lambda types, attrs: TensorType.of(attrs["value"]),
    reference=lambda value: value,
    attrs={"value": REQUIRED},
    normalize=_constant_normalize,
    doc="A fixed array (a closed-over weight or a Python scalar); read-only.",
))


# ----------------------------------------------------------------------------------------------
# Elementwise unary ops
# ----------------------------------------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    """NumPy has no erf: apply ``math.erf`` element by element (exact to double precision)."""
    out_dtype = ufunc_dtype(np.exp, x.dtype)
    flat = np.asarray(x, dtype=np.float64).ravel()
    result = np.fromiter((math.erf(v) for v in flat), dtype=np.float64, count=flat.size)
    return result.reshape(x.shape).astype(out_dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-x))`` written so that it never overflows."""
    x = np.asarray(x)
    x = x.astype(ufunc_dtype(np.exp, x.dtype))  # bool -> f16 first: NumPy refuses -bool
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _rsqrt(x: np.ndarray) -> np.ndarray:
    root = np.sqrt(x)
    return (np.ones((), root.dtype) / root).astype(root.dtype)


def _unary(name: str, ufunc: np.ufunc, reference=None, doc: str = "", dtype_ufunc=None) -> None:
    """Register an elementwise op with the shape of its operand and ``ufunc``'s dtype rule."""
    rule_ufunc = dtype_ufunc or ufunc

    def infer(types, attrs):
        return TensorType(types[0].shape, ufunc_dtype(rule_ufunc, types[0].dtype))

    register(OpDef(name, Kind.ELEMWISE, 1, infer=infer, reference=reference or ufunc, doc=doc))


_unary("neg", np.negative, doc="-x")
_unary("abs", np.absolute, doc="|x|")
_unary("exp", np.exp, doc="e**x")
_unary("log", np.log, doc="natural logarithm")
_unary("sqrt", np.sqrt, doc="square root")
_unary("rsqrt", np.sqrt, _rsqrt, doc="1/sqrt(x)")
_unary("tanh", np.tanh, doc="hyperbolic tangent")
_unary("sigmoid", np.exp, _sigmoid, doc="1/(1+exp(-x))")
_unary("erf", np.exp, _erf, doc="error function (float result, like exp)")
_unary("reciprocal", np.reciprocal, doc="1/x (integer reciprocal for integers, as NumPy)")
_unary("sin", np.sin, doc="sine")
_unary("cos", np.cos, doc="cosine")
_unary("floor", np.floor, doc="round down")
_unary("ceil", np.ceil, doc="round up")
_unary("sign", np.sign, doc="-1, 0 or 1 (NaN for NaN)")
_unary("logical_not", np.logical_not, doc="not x, as bool")


def _cast_infer(types, attrs):
    return TensorType(types[0].shape, attrs["dtype"])


register(OpDef(
    "cast", Kind.ELEMWISE, 1,
    infer=_cast_infer,
    reference=lambda x, dtype: np.asarray(x).astype(dtype),
    attrs={"dtype": REQUIRED},
    normalize=lambda types, attrs: {"dtype": to_dtype(attrs["dtype"])},
    doc="x.astype(dtype)",
))


# ----------------------------------------------------------------------------------------------
# Broadcasting binary ops, and where
# ----------------------------------------------------------------------------------------------


def _binary(name: str, ufunc: np.ufunc, doc: str) -> None:
    """Register a broadcasting binary op with ``ufunc``'s reference and dtype rule."""

    def infer(types, attrs):
        shape = broadcast_shapes(types[0].shape, types[1].shape)
        return TensorType(shape, ufunc_dtype(ufunc, types[0].dtype, types[1].dtype))

    register(OpDef(name, Kind.BROADCAST, 2, infer=infer, reference=ufunc, doc=doc))


_binary("add", np.add, "a + b")
_binary("sub", np.subtract, "a - b")
_binary("mul", np.multiply, "a * b")
_binary("div", np.true_divide, "a / b (true division: integers give float64)")
_binary("floordiv", np.floor_divide, "a // b (rounds toward -inf, as NumPy)")
_binary("mod", np.remainder, "a % b (sign of the divisor, as NumPy)")
_binary("pow", np.power, "a ** b")
_binary("maximum", np.maximum, "elementwise max; NaN if either is NaN")
_binary("minimum", np.minimum, "elementwise min; NaN if either is NaN")
_binary("eq", np.equal, "a == b")
_binary("ne", np.not_equal, "a != b")
_binary("lt", np.less, "a < b")
_binary("le", np.less_equal, "a <= b")
_binary("gt", np.greater, "a > b")
_binary("ge", np.greater_equal, "a >= b")
_binary("logical_and", np.logical_and, "a and b, as bool")
_binary("logical_or", np.logical_or, "a or b, as bool")


def _where_infer(types, attrs):
    cond, a, b = types
    if cond.dtype != np.bool_:
        raise DTypeError(f"where's condition must be bool, got {cond.dtype}")
    shape = broadcast_shapes(cond.shape, a.shape, b.shape)
    return TensorType(shape, np.result_type(a.dtype, b.dtype))


register(OpDef(
    "where", Kind.BROADCAST, 3,
    infer=_where_infer,
    reference=np.where,
    doc="where(cond, a, b): a where cond is true, else b",
))


# ----------------------------------------------------------------------------------------------
# Reductions
# ----------------------------------------------------------------------------------------------


def _reduce_normalize(types, attrs):
    return {"axes": normalize_axes(attrs["axes"], types[0].ndim), "keepdims": bool(attrs["keepdims"])}


def _reduced_shape(t: TensorType, attrs) -> tuple[int, ...]:
    axes = attrs["axes"]
    if attrs["keepdims"]:
        return tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    return tuple(d for i, d in enumerate(t.shape) if i not in axes)


def _sum_dtype(dtype: np.dtype) -> np.dtype:
    # np.sum accumulates bool and int32 in the platform integer, int64
    return np.dtype(np.int64) if dtype.kind in "bi" else dtype


def _mean_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype.kind in "bi" else dtype


def _reduction(name: str, reference, dtype_rule, needs_identity: bool, doc: str) -> None:
    def infer(types, attrs):
        t = types[0]
        if needs_identity and any(t.shape[a] == 0 for a in attrs["axes"]):
            raise ShapeError(
                f"zero-size array to reduction operation {name} which has no identity "
                f"(axes {attrs['axes']} of shape {t.shape})"
            )
        return TensorType(_reduced_shape(t, attrs), dtype_rule(t.dtype))

    def run(x, axes, keepdims):
        return np.asarray(reference(x, axis=axes, keepdims=keepdims))

    register(OpDef(
        name, Kind.REDUCTION, 1, infer=infer, reference=run,
        attrs={"axes": None, "keepdims": False}, normalize=_reduce_normalize, doc=doc,
    ))


_reduction("sum", np.sum, _sum_dtype, False, "sum over axes")
_reduction("mean", np.mean, _mean_dtype, False, "mean over axes (NaN over an empty axis)")
_reduction("max", np.max, lambda d: d, True, "max over axes; NaN if any is NaN")
_reduction("min", np.min, lambda d: d, True, "min over axes; NaN if any is NaN")


# ----------------------------------------------------------------------------------------------
# Scans: running sums and products along one axis
# ----------------------------------------------------------------------------------------------

SCAN_OPS = {"cumsum": "+", "cumprod": "*"}  # op -> the C operator of one step


def _scan(name: str, reference, doc: str) -> None:
    def infer(types, attrs):
        return TensorType(types[0].shape, _sum_dtype(types[0].dtype))  # ints and bools: int64

    def run(x, axis):
        return np.asarray(reference(x, axis=axis))

    register(OpDef(
        name, Kind.OPAQUE, 1, infer=infer, reference=run, attrs={"axis": REQUIRED},
        normalize=lambda types, attrs: {"axis": normalize_axis(attrs["axis"], types[0].ndim)}, doc=doc,
    ))


_scan("cumsum", np.cumsum, "running sum along axis: out[k] = out[k-1] + x[k], one rounding per step "
      "(NumPy's order); serial along axis, parallel over the others")
_scan("cumprod", np.cumprod, "running product along axis: out[k] = out[k-1] * x[k]")


# ----------------------------------------------------------------------------------------------
# Matmul and conv2d: out-elementwise-fusable
# ----------------------------------------------------------------------------------------------


def matmul_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's ``matmul`` shape rule, 1-D operands included.

    A 1-D ``a`` is a row vector (its axis removed from the result), a 1-D ``b`` a column vector;
    leading (batch) dimensions broadcast.
    """
    if len(a) == 0 or len(b) == 0:
        raise ShapeError("matmul does not accept 0-d (scalar) operands; use * instead")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"contracted dimensions differ: {a2[-1]} (last of {a}) vs {b2[-2]} "
            f"({'only' if len(b) == 1 else 'second to last'} of {b})"
        )
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


register(OpDef(
    "matmul", Kind.OUT_EW_FUSABLE, 2,
    infer=lambda types, attrs: TensorType(
        matmul_shape(types[0].shape, types[1].shape),
        ufunc_dtype(np.matmul, types[0].dtype, types[1].dtype),
    ),
    reference=np.matmul,
    doc="a @ b, batched with broadcasting; 1-D operands as NumPy",
))


def _pair(value, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ShapeError(f"{what} must be an int or a pair, got {value}")
    return value


def _conv2d_normalize(types, attrs):
    padding = attrs["padding"]
    if isinstance(padding, (int, np.integer)):
        padding = (int(padding),) * 4
    elif len(padding) == 2:
        padding = (int(padding[0]),) * 2 + (int(padding[1]),) * 2
    padding = tuple(int(p) for p in padding)
    if len(padding) != 4 or min(padding) < 0:
        raise ShapeError(f"padding must be an int, (ph, pw) or (top, bottom, left, right) >= 0, got {padding}")
    layout = str(attrs["layout"]).upper()
    if layout not in ("NCHW", "NHWC"):
        raise ShapeError(f"layout must be 'NCHW' or 'NHWC', got {attrs['layout']!r}")
    strides, dilation = _pair(attrs["strides"], "strides"), _pair(attrs["dilation"], "dilation")
    if min(strides) < 1 or min(dilation) < 1 or int(attrs["groups"]) < 1:
        raise ShapeError("strides, dilation and groups must be >= 1")
    return {"strides": strides, "padding": padding, "dilation": dilation,
            "groups": int(attrs["groups"]), "layout": layout}


def conv2d_dims(x: tuple[int, ...], w: tuple[int, ...], attrs) -> dict[str, int]:
    """Named dimensions of a conv2d: N, C, H, W of the input, O, R, S of the weight, OH, OW.

    The weight is OIHW with an NCHW input and HWIO with an NHWC input (TensorFlow's pairing).
    """
    if len(x) != 4 or len(w) != 4:
        raise ShapeError(f"conv2d needs a 4-d input and a 4-d weight, got {x} and {w}")
    if attrs["layout"] == "NCHW":
        (n, c, h, wd), (o, ci, r, s) = x, w
    else:
        (n, h, wd, c), (r, s, ci, o) = x, w
    groups = attrs["groups"]
    if c != ci * groups or o % groups:
        raise ShapeError(
            f"input has {c} channels but the weight expects {ci} per group x {groups} groups "
            f"and {o} output channels"
        )
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = attrs["padding"], attrs["strides"], attrs["dilation"]
    oh = (h + pt + pb - dh * (r - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (s - 1) - 1) // sw + 1
    if oh < 1 or ow < 1:
        raise ShapeError(f"the {r}x{s} kernel does not fit the padded {h}x{wd} input")
    return dict(N=n, C=c, H=h, W=wd, O=o, R=r, S=s, OH=oh, OW=ow)


def _conv2d_infer(types, attrs):
    x, w = types
    d = conv2d_dims(x.shape, w.shape, attrs)
    shape = (d["N"], d["O"], d["OH"], d["OW"]) if attrs["layout"] == "NCHW" else (d["N"], d["OH"], d["OW"], d["O"])
    return TensorType(shape, ufunc_dtype(np.matmul, x.dtype, w.dtype))


def conv2d_reference(x, w, strides, padding, dilation, groups, layout):
    """Direct 2-D convolution (cross-correlation, as in deep learning) with NumPy.

    One matrix product per kernel tap (r, s) and group: clear rather than fast.
    """
    dtype = ufunc_dtype(np.matmul, x.dtype, w.dtype)
    if layout == "NHWC":
        out = conv2d_reference(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1),
                               strides, padding, dilation, groups, "NCHW")
        return out.transpose(0, 2, 3, 1)
    attrs = {"strides": strides, "padding": padding, "dilation": dilation, "groups": groups, "layout": layout}
    d = conv2d_dims(x.shape, w.shape, attrs)
    (pt, pb, pl, pr), (sh, sw), (dh, dw) = padding, strides, dilation
    xp = np.pad(x.astype(dtype), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    w = w.astype(dtype)
    out = np.zeros((d["N"], d["O"], d["OH"], d["OW"]), dtype)
    cin, cout = d["C"] // groups, d["O"] // groups
    for g in range(groups):
        xg = xp[:, g * cin:(g + 1) * cin]
        wg = w[g * cout:(g + 1) * cout]
        for r in range(d["R"]):
            for s in range(d["S"]):
                patch = xg[:, :, r * dh: r * dh + sh * (d["OH"] - 1) + 1: sh,
                           s * dw: s * dw + sw * (d["OW"] - 1) + 1: sw]
                out[:, g * cout:(g + 1) * cout] += np.einsum("nchw,oc->nohw", patch, wg[:, :, r, s])
    return out


register(OpDef(
    "conv2d", Kind.OUT_EW_FUSABLE, 2,
    infer=_conv2d_infer,
    reference=conv2d_reference,
    attrs={"strides": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, "layout": "NCHW"},
    normalize=_conv2d_normalize,
    doc="2-D convolution; NCHW input with OIHW weight, or NHWC input with HWIO weight",
))


# ----------------------------------------------------------------------------------------------
# Injective ops: data movement
# ----------------------------------------------------------------------------------------------


def _transpose_normalize(types, attrs):
    ndim = types[0].ndim
    perm = attrs["perm"]
    if perm is not None and not isinstance(perm, (tuple, list, np.ndarray)):
        perm = (perm,)  # a lone axis: NumPy's error for it is ours
    perm = tuple(range(ndim))[::-1] if perm is None else tuple(normalize_axis(p, ndim) for p in perm)
    if sorted(perm) != list(range(ndim)):
        raise ShapeError(f"axes {tuple(perm)} are not a permutation of {ndim} dimensions")
    return {"perm": perm}


register(OpDef(
    "transpose", Kind.INJECTIVE, 1,
    infer=lambda types, attrs: TensorType(tuple(types[0].shape[p] for p in attrs["perm"]), types[0].dtype),
    reference=lambda x, perm: np.transpose(x, perm),
    attrs={"perm": None},
    normalize=_transpose_normalize,
    doc="np.transpose(x, perm); perm=None reverses the axes",
))


def _reshape_normalize(types, attrs):
    shape = _shape_tuple(attrs["shape"])
    size = types[0].size
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise ShapeError(f"can only specify one unknown dimension (-1), got {shape}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // known if d == -1 else d for d in shape)
    if math.prod(shape) != size:
        raise ShapeError(f"cannot reshape array of size {size} into shape {shape}")
    return {"shape": shape}


register(OpDef(
    "reshape", Kind.INJECTIVE, 1,
    infer=lambda types, attrs: TensorType(attrs["shape"], types[0].dtype),
    reference=lambda x, shape: np.reshape(x, shape),
    attrs={"shape": REQUIRED},
    normalize=_reshape_normalize,
    doc="np.reshape in C order; one -1 is inferred",
))


def _shape_tuple(shape) -> tuple[int, ...]:
    """``4 -> (4,)``; any sequence of ints -> tuple of ints; ``ShapeError`` for anything else."""
    try:
        if isinstance(shape, (int, np.integer, Sym)):
            shape = (shape,)
        return tuple(d if isinstance(d, Sym) else operator.index(d) for d in shape)
    except TypeError:
        raise ShapeError(f"shape {shape!r:.60} is not an integer or a sequence of integers") from None


def _broadcast_to_infer(types, attrs):
    src, shape = types[0].shape, attrs["shape"]
    ok = len(src) <= len(shape) and all(
        s in (1, d) for s, d in zip(src[::-1], shape[::-1])
    )
    if not ok:
        raise ShapeError(f"cannot broadcast shape {src} to {shape}")
    return TensorType(shape, types[0].dtype)


register(OpDef(
    "broadcast_to", Kind.BROADCAST, 1,
    infer=_broadcast_to_infer,
    reference=lambda x, shape: np.broadcast_to(x, shape),
    attrs={"shape": REQUIRED},
    normalize=lambda types, attrs: {"shape": _shape_tuple(attrs["shape"])},
    doc="np.broadcast_to(x, shape)",
))


def _expand_dims_normalize(types, attrs):
    return {"axes": normalize_axes(attrs["axes"], types[0].ndim + _count(attrs["axes"]))}


def _count(axes) -> int:
    if isinstance(axes, (int, np.integer)):
        return 1
    if not isinstance(axes, (tuple, list)):
        raise ShapeError(f"axis {axes!r:.40} is not an integer or a tuple of integers")
    return len(axes)


def _expand_dims_infer(types, attrs):
    shape = list(types[0].shape)
    for axis in attrs["axes"]:
        shape.insert(axis, 1)
    return TensorType(shape, types[0].dtype)


register(OpDef(
    "expand_dims", Kind.INJECTIVE, 1,
    infer=_expand_dims_infer,
    reference=lambda x, axes: np.expand_dims(x, axes),
    attrs={"axes": REQUIRED},
    normalize=_expand_dims_normalize,
    doc="np.expand_dims(x, axes): new axes of size 1, positions in the result",
))


def _squeeze_normalize(types, attrs):
    shape = types[0].shape
    if attrs["axes"] is None:
        return {"axes": tuple(i for i, d in enumerate(shape) if d == 1)}
    axes = normalize_axes(attrs["axes"], types[0].ndim)
    for axis in axes:
        if shape[axis] != 1:
            raise ShapeError(f"cannot select an axis to squeeze out which has size not equal to one (axis {axis} of {shape})")
    return {"axes": axes}


register(OpDef(
    "squeeze", Kind.INJECTIVE, 1,
    infer=lambda types, attrs: TensorType(
        tuple(d for i, d in enumerate(types[0].shape) if i not in attrs["axes"]), types[0].dtype),
    reference=lambda x, axes: np.squeeze(x, axes),
    attrs={"axes": None},
    normalize=_squeeze_normalize,
    doc="np.squeeze(x, axes): drop axes of size 1 (all of them when axes=None)",
))


def _slice_normalize(types, attrs):
    """Canonical slices: one (start, stop, step) per axis, as ``slice.indices`` gives them.

    Except that with a negative step, a start or stop before index 0 is ``-dim-1``, not
    ``slice.indices``' ``-1`` (which, read again as a slice, would mean "the last element"):
    canonical attributes must normalize to themselves.
    """
    shape = types[0].shape
    starts, stops, steps = (tuple(attrs[k]) for k in ("starts", "stops", "steps"))
    if not len(starts) == len(stops) == len(steps) == len(shape):
        raise ShapeError(f"slice needs one start, stop and step per axis of {shape}")
    norm = []
    for dim, start, stop, step in zip(shape, starts, stops, steps):
        if step == 0:
            raise ShapeError("slice step cannot be zero")
        if isinstance(dim, Sym):
            norm.append(whole_symbolic_axis(dim, start, stop, step))
            continue
        if isinstance(start, Sym) or isinstance(stop, Sym):  # x[:T] of a static axis (guarded by the tracer)
            if step != 1:
                raise SymbolicShapeError(f"slicing with symbolic bounds {start}:{stop}:{step} needs step 1")
            norm.append((start, stop, 1))
            continue
        start, stop, step = slice(start, stop, step).indices(dim)
        if step < 0:  # "before index 0" is -dim-1, which slice.indices maps back to -1
            start, stop = (-dim - 1 if v < 0 else v for v in (start, stop))
        norm.append((start, stop, step))
    return {"starts": tuple(n[0] for n in norm), "stops": tuple(n[1] for n in norm),
            "steps": tuple(n[2] for n in norm)}


def whole_symbolic_axis(dim: Sym, start, stop, step) -> tuple:
    """The canonical range of a slice along a symbolic axis: ``(start, stop, 1)``.

    ``(0, dim, 1)`` for a slice that keeps all of it (``x[:, 1:3]`` of ``[T, 8]``). Other
    canonical ranges (``(T - 1, T, 1)`` for ``x[-1:]``) are made by the tracer, which records
    the guards that keep them inside the axis (``frontend/indexing.py``), and are kept as
    they are: a start or stop that is ``Sym`` or an int >= 0, step 1. Anything else (a
    negative int, a step other than 1) is not supported yet: ``SymbolicShapeError``.
    """
    if start in (None, 0) and (stop is None or stop == dim) and step in (None, 1):
        return (0, dim, 1)
    canonical = all(isinstance(v, Sym) or (isinstance(v, int) and v >= 0) for v in (start, stop))
    if canonical and step == 1:
        return (start, stop, 1)
    raise SymbolicShapeError(f"slicing an axis of symbolic size {dim} with {start}:{stop}:{step} "
                             "is not supported yet")


def _slice_infer(types, attrs):
    shape = tuple(b - a if any(isinstance(v, Sym) for v in (d, a, b)) else len(range(*slice(a, b, c).indices(d)))
                  for d, a, b, c in zip(types[0].shape, attrs["starts"], attrs["stops"], attrs["steps"]))
    return TensorType(shape, types[0].dtype)


def _slice_reference(x, starts, stops, steps):
    # a negative start or stop only occurs with a negative step and means "before index 0"
    index = tuple(slice(a, None if b < 0 else b, c) for a, b, c in zip(starts, stops, steps))
    return x[index]


register(OpDef(
    "slice", Kind.INJECTIVE, 1,
    infer=_slice_infer,
    reference=_slice_reference,
    attrs={"starts": REQUIRED, "stops": REQUIRED, "steps": REQUIRED},
    normalize=_slice_normalize,
    doc="basic slicing x[a:b:c, ...]: a range(start, stop, step) on every axis",
))


def _concat_normalize(types, attrs):
    if not types:
        raise ShapeError("need at least one array to concatenate")
    return {"axis": normalize_axis(attrs["axis"], types[0].ndim)}


def _concat_infer(types, attrs):
    axis, first = attrs["axis"], types[0].shape
    for t in types[1:]:
        if t.ndim != len(first) or any(a != b for i, (a, b) in enumerate(zip(first, t.shape)) if i != axis):
            raise ShapeError(
                f"all dimensions except axis {axis} must match: " + ", ".join(str(t.shape) for t in types)
            )
    shape = list(first)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(shape, np.result_type(*[t.dtype for t in types]))


register(OpDef(
    "concatenate", Kind.INJECTIVE, None,
    infer=_concat_infer,
    reference=lambda *xs, axis: np.concatenate(xs, axis=axis),
    attrs={"axis": 0},
    normalize=_concat_normalize,
    doc="np.concatenate(xs, axis)",
))


def _as_strided_normalize(types, attrs):
    shape, strides = _shape_tuple(attrs["shape"]), _shape_tuple(attrs["strides"])
    offset = operator.index(attrs["offset"])
    if len(shape) != len(strides) or min(shape, default=0) < 0:
        raise ShapeError(f"as_strided needs one stride per axis and sizes >= 0, got shape {shape}, strides {strides}")
    if math.prod(shape) > 0:
        low = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s < 0)
        high = offset + sum(s * (d - 1) for d, s in zip(shape, strides) if s > 0)
        if low < 0 or high >= types[0].size:
            raise ShapeError(f"as_strided with shape {shape}, strides {strides} (in elements) and offset "
                             f"{offset} reads elements {low}..{high}, outside the {types[0].size} of the input")
    return {"shape": shape, "strides": strides, "offset": offset}


def as_strided_reference(x, shape, strides, offset):
    """``out[i, j, ...] = x.flat[offset + i*strides[0] + j*strides[1] + ...]`` (a copy)."""
    flat = np.ascontiguousarray(x).reshape(-1)
    index = np.full(shape, offset, dtype=np.int64)
    for axis, (dim, stride) in enumerate(zip(shape, strides)):
        index = index + (np.arange(dim, dtype=np.int64) * stride).reshape((dim,) + (1,) * (len(shape) - axis - 1))
    return flat[index] if index.size else np.zeros(shape, x.dtype)


register(OpDef(
    "as_strided", Kind.INJECTIVE, 1,
    infer=lambda types, attrs: TensorType(attrs["shape"], types[0].dtype),
    reference=as_strided_reference,
    attrs={"shape": REQUIRED, "strides": REQUIRED, "offset": 0},
    normalize=_as_strided_normalize,
    doc="a strided window on x's C-order elements: out[i] = x.flat[offset + i . strides] "
        "(strides in elements; sliding_window_view)",
))


# ----------------------------------------------------------------------------------------------
# Gather and scatter: elements picked or written by index arrays (data)
# ----------------------------------------------------------------------------------------------

GATHER_MODES = ("raise", "wrap", "clip")  # np.take's modes; "raise" is indexing's meaning
SCATTER_MODES = ("set", "add", "sub", "mul", "maximum", "minimum")
SCATTER_UFUNCS = {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                  "maximum": np.maximum, "minimum": np.minimum}


def _check_index_dtype(t: TensorType, what: str) -> None:
    if t.dtype.kind not in "iu":
        raise DTypeError(f"{what} must be an integer array, got {t.dtype} (NumPy: arrays used as "
                         "indices must be of integer (or boolean) type)")


def _gather_normalize(types, attrs):
    if len(types) < 2:
        raise ShapeError("gather needs an array and at least one index array")
    if attrs["mode"] not in GATHER_MODES:
        raise ShapeError(f"gather mode must be one of {', '.join(GATHER_MODES)}, got {attrs['mode']!r:.40}")
    ndim, count = types[0].ndim, len(types) - 1
    axis = normalize_axis(attrs["axis"], ndim) if ndim else attrs["axis"]
    if not isinstance(axis, int) or axis + count > ndim:
        raise ShapeError(f"{count} index array(s) from axis {attrs['axis']} do not fit an array of "
                         f"dimension {ndim}")
    return {"axis": axis, "mode": attrs["mode"]}


def _gather_infer(types, attrs):
    x, indices, axis = types[0], types[1:], attrs["axis"]
    for n, t in enumerate(indices):
        _check_index_dtype(t, f"index array {n}")
    picked = broadcast_shapes(*(t.shape for t in indices))
    empty_axis = next((axis + n for n, t in enumerate(indices) if x.shape[axis + n] == 0 and t.size), None)
    if empty_axis is not None:
        raise ShapeError(f"index out of bounds: axis {empty_axis} has size 0, so no index fits it")
    shape = x.shape[:axis] + picked + x.shape[axis + len(indices):]
    return TensorType(shape, x.dtype)


def out_of_bounds(index, size: int, axis: int):
    """The ``IndexOutOfBoundsError`` NumPy's IndexError corresponds to (its words)."""
    from ..errors import IndexOutOfBoundsError

    return IndexOutOfBoundsError(f"index {index} is out of bounds for axis {axis} with size {size}")


def fix_indices(index: np.ndarray, size: int, mode: str, axis: int = 0) -> np.ndarray:
    """Indices into an axis of ``size`` as NumPy reads them, as int64 in ``0..size-1``.

    ``raise``: negative indices count from the end, anything else outside raises
    ``IndexOutOfBoundsError``; ``wrap``: modulo ``size``; ``clip``: to ``0..size-1``.

    >>> fix_indices(np.array([0, -1, 7]), 4, "wrap")
    array([0, 3, 3])
    """
    index = np.asarray(index)
    if mode == "clip":
        return np.clip(index, 0, max(size - 1, 0)).astype(np.int64)
    if mode == "wrap":
        if index.dtype == np.uint64:
            return (index % np.uint64(max(size, 1))).astype(np.int64)
        return (index.astype(np.int64) % max(size, 1)).astype(np.int64)
    outside = (index >= size) | ((index < -size) if index.dtype.kind == "i" else False)
    if np.any(outside):
        raise out_of_bounds(index[outside].reshape(-1)[0], size, axis)
    wide = index.astype(np.int64)
    return np.where(wide < 0, wide + size, wide)


def gather_reference(x, *indices, axis, mode):
    """``x[:, ..., i0, i1, ...]`` (the index arrays broadcast together, on axes ``axis``...).

    Where they broadcast to an empty shape nothing is read, and nothing is checked (NumPy would
    check a non-empty one: the tracer refuses that case for traced indices)."""
    if not math.prod(np.broadcast_shapes(*(np.shape(i) for i in indices))):
        mode = "clip"
    fixed = tuple(fix_indices(i, x.shape[axis + n], mode, axis + n) for n, i in enumerate(indices))
    return x[(slice(None),) * axis + fixed]


register(OpDef(
    "gather", Kind.INJECTIVE, None,
    infer=_gather_infer,
    reference=gather_reference,
    attrs={"axis": 0, "mode": "raise"},
    normalize=_gather_normalize,
    doc="gather(x, i0, i1, ..., axis=a): x[(:,)*a + (i0, i1, ...)], the index arrays broadcast "
        "together and picking along consecutive axes a, a+1, ...; mode raise (NumPy's indexing: "
        "negatives count from the end, others out of range are an IndexOutOfBoundsError; an empty "
        "pick checks nothing), wrap or clip (np.take's)",
))


def _scatter_normalize(types, attrs):
    if attrs["mode"] not in SCATTER_MODES:
        raise ShapeError(f"scatter mode must be one of {', '.join(SCATTER_MODES)}, got {attrs['mode']!r:.40}")
    return {"mode": attrs["mode"]}


def _scatter_infer(types, attrs):
    x, positions, values = types
    _check_index_dtype(positions, "positions")
    if values.shape != positions.shape:
        raise ShapeError(f"values {values.shape} must have the shape of the positions {positions.shape}")
    if x.size == 0 and positions.size:
        raise ShapeError("index out of bounds: the array written has no elements")
    ufunc = SCATTER_UFUNCS.get(attrs["mode"])
    if ufunc is not None:
        result = ufunc_dtype(ufunc, x.dtype, values.dtype)
        if not np.can_cast(result, x.dtype, "same_kind"):
            raise DTypeError(f"cannot cast the {result} result of {ufunc.__name__} into the {x.dtype} array "
                             "written (NumPy's 'same_kind' rule)")
    return x


def scatter_reference(x, positions, values, mode):
    """A copy of ``x`` with ``x.flat[positions] = values`` (mode set: where positions repeat, the last
    one wins, as NumPy's ``x[idx] = v``) or ``ufunc.at(x.flat, positions, values)`` (mode add, sub,
    mul, maximum, minimum: repeated positions accumulate, as ``np.add.at``)."""
    out = np.array(x, copy=True).reshape(-1)
    flat = fix_indices(positions, out.size, "raise").reshape(-1)
    values = np.asarray(values).reshape(-1)
    if mode == "set":  # the last write of each position wins: keep only that one
        last = flat.size - 1 - np.unique(flat[::-1], return_index=True)[1]
        out[flat[last]] = values[last]
    else:
        SCATTER_UFUNCS[mode].at(out, flat, values)
    return out.reshape(x.shape)


register(OpDef(
    "scatter", Kind.OPAQUE, 3,
    infer=_scatter_infer,
    reference=scatter_reference,
    attrs={"mode": "set"},
    normalize=_scatter_normalize,
    doc="scatter(x, positions, values, mode): a copy of x with its flat elements at positions set "
        "(the last of repeated positions wins, as x[idx] = v) or combined with values by add, sub, "
        "mul, maximum or minimum (accumulating, as np.add.at); positions out of range are an "
        "IndexOutOfBoundsError",
))


# ----------------------------------------------------------------------------------------------
# Fused: a subgraph that runs as one kernel
# ----------------------------------------------------------------------------------------------


def _fused_infer(types, attrs):
    body = attrs["body"]
    expected = [i.type for i in body.inputs]
    if list(types) != expected:
        raise ShapeError(f"operands {', '.join(map(str, types))} do not match the body's inputs "
                         f"{', '.join(map(str, expected))}")
    if len(body.outputs) != 1:
        raise ShapeError(f"a fused body has exactly one output, {body.name} has {len(body.outputs)}")
    return body.outputs[0].type


def _fused_reference(*values, body, pattern):
    from .interpreter import interpret

    return interpret(body, *values)[0]


FUSION_PATTERNS = ("elemwise", "reduce", "row", "epilogue", "attention")

register(OpDef(
    "fused", Kind.OPAQUE, None,
    infer=_fused_infer,
    reference=_fused_reference,
    attrs={"body": REQUIRED, "pattern": REQUIRED},
    normalize=lambda types, attrs: _check_pattern(attrs),
    doc="a subgraph (attrs body) that runs as one kernel; pattern says how it is lowered",
))


def _check_pattern(attrs):
    if attrs["pattern"] not in FUSION_PATTERNS:
        raise ShapeError(f"unknown fusion pattern {attrs['pattern']!r}; known: {', '.join(FUSION_PATTERNS)}")
    return attrs
