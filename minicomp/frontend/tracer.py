"""Tracing: run an unchanged NumPy function on proxy arrays and record a ``Graph``.

``trace(fn, *examples)`` calls ``fn`` with ``TracedArray`` proxies in place of its array
arguments. A proxy has a shape and a dtype but no data; everything done to it is recorded as a
node of the graph instead of being computed:

* Python operators (``x + y``, ``x @ w``, ``-x``, ``x[1:, None]``, ``x > 0``) through the
  proxy's dunder methods;
* NumPy ufuncs (``np.exp(x)``, ``np.maximum(x, 0)``, ``np.add.reduce``) through
  ``__array_ufunc__``, and NumPy functions (``np.sum``, ``np.where``, ``np.concatenate``,
  ``np.transpose`` ...) through ``__array_function__`` (NEP 13 and NEP 18);
* array methods and attributes (``x.sum(axis=-1, keepdims=True)``, ``x.T``, ``x.reshape``,
  ``x.astype``, ``x.shape``).

Arguments may be pytrees (nested tuples, lists, dicts: ``pytree.py``). NumPy arrays the function
reads from outside are constants here (``jit`` lifts them to inputs: ``state.py``); Python
scalars become constants typed the way NumPy 2 would type them (``x_f32 * 2.0`` stays float32).
Every node records the user's ``file:line``. Writes (``x[idx] = v``, ``x += v``, ``out=``,
``np.add.at``) rebind the proxy to a new value (``updates.py``): a view writes through into its
base, a view read after its base was written is made again, and a written input (an array leaf
of an argument, or a lifted outside array) becomes an extra output that ``jit`` copies into the
caller's array. What cannot be traced (data-dependent ``if``, ``np.asarray(proxy)``, a traced
boolean mask, writes into transposed or reshaped views, functions, methods and operators
minicomp does not know, ``np.matrix`` and other ndarray subclasses) raises ``UnsupportedError``
saying so; random numbers drawn while tracing become constants and give a ``MinicompWarning``
(``frozen.py``).
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import Any, Callable

import numpy as np

from ..errors import (DTypeError, MinicompError, MinicompRuntimeError, ShapeError, UnsupportedAttributeError,
                      UnsupportedError, at)
from ..ir.dtypes import TensorType, to_dtype
from ..ir.graph import Graph, Node
from ..ir.interpreter import refuse_array_subclass
from ..ir.symbolic import Sym
from .pytree import device_array_type

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Frames in these files are minicomp's machinery or NumPy's, never "the user's line".
_INTERNAL = tuple(os.path.join(_PACKAGE_DIR, part) for part in ("frontend", "ir", "nn.py", "driver.py")) + (
    os.path.dirname(os.path.abspath(np.__file__)),
)


def user_location() -> str | None:
    """``file:line`` of the innermost stack frame outside minicomp and NumPy: the user's line."""
    frame = sys._getframe(1)
    cwd = os.getcwd()
    while frame is not None:
        shown = _user_file(frame.f_code.co_filename, cwd)
        if shown is not None:
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None


@functools.lru_cache(maxsize=1024)
def _user_file(filename: str, cwd: str) -> str | None:
    """How a location shows ``filename`` (relative to ``cwd`` when inside it); None for
    minicomp's and NumPy's own files. Remembered: tracing asks once per recorded op."""
    path = os.path.join(cwd, filename) if not os.path.isabs(filename) else filename
    path = os.path.normpath(path)
    if path.startswith(_INTERNAL) or "<frozen" in path:
        return None
    rel = os.path.relpath(path, cwd)
    return path if rel.startswith("..") else rel


class Tracer:
    """Owns the graph being recorded and turns operands into nodes."""

    def __init__(self, name: str):
        self.graph = Graph(name)
        self._constants: dict[int, tuple[Any, Node]] = {}  # id(array) -> (array kept alive, node)
        # the proxy of each graph input, in order (argument leaves, then lifted outside arrays):
        # the ones written into are updated in the caller's arrays after the call
        self.inputs: list[TracedArray] = []

    def constant_arrays(self) -> list:
        """Every NumPy array this trace made a constant of."""
        return [value for value, _ in self._constants.values()]

    def input(self, name: str, type: TensorType) -> "TracedArray":
        proxy = TracedArray(self, self.graph.add_input(name, type, user_location()))
        self.inputs.append(proxy)
        return proxy

    def node_of(self, value, partners: tuple[np.dtype, ...] = (), op: str | None = None) -> Node:
        """The node for an operand of ``op``: a proxy's own node, or a new constant.

        A Python scalar is typed as NumPy 2 types it next to arrays of dtypes ``partners``
        (``np.result_type(f32, 2.0) == f32``), so it never changes the result's dtype wrongly.
        """
        where = f"{op}: " if op else ""
        if isinstance(value, TracedArray):
            if value.tracer is not self:
                raise UnsupportedError(
                    f"a traced array from another trace ({value!r}, made at {value.node.loc or 'an unknown line'}) "
                    f"was used in this one{at(user_location())}: it was kept where minicomp does not look (a "
                    "global, or an object of a library's class) while that function was traced; return it from "
                    "the compiled function, or store it in an argument, a closure variable or self")
            value.refresh()  # a view whose base was written since is made again
            return value.node
        if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
            try:
                dtype = np.result_type(*partners, value) if partners else np.asarray(value).dtype
                array = np.asarray(value, dtype=to_dtype(dtype))
            except (OverflowError, TypeError, MinicompError) as exc:
                raise UnsupportedError(f"{where}cannot use Python scalar {value!r} next to "
                                       f"{', '.join(map(str, partners)) or 'no array'}: {exc}{at(user_location())}") from None
            return self.graph.add_constant(array, loc=user_location())
        if isinstance(value, (np.ndarray, np.generic)):
            refuse_array_subclass(value, f"{where}an array the function reads from outside (a constant)", user_location())
            key = id(value)
            if key not in self._constants:
                node = self.graph.add_op("constant", [], {"value": np.asarray(value)}, user_location())
                self._constants[key] = (value, node)
            return self._constants[key][1]
        raise UnsupportedError(
            f"{where}cannot use a {type(value).__name__} ({value!r:.60}) as an array operand{at(user_location())}; "
            "use arrays, NumPy scalars or Python bool/int/float"
        )

    def apply(self, op: str, operands, **attrs) -> "TracedArray":
        """Record ``op(*operands)`` and return the proxy of its result."""
        arrays = [o for o in operands if isinstance(o, (TracedArray, np.ndarray, np.generic))]
        partners = tuple(np.asarray(a).dtype if not isinstance(a, TracedArray) else a.dtype for a in arrays)
        nodes = [self.node_of(o, partners, op) for o in operands]
        return TracedArray(self, self.graph.add_op(op, nodes, attrs, loc=user_location()))


def find_tracer(values) -> Tracer | None:
    """The tracer of the first proxy among ``values`` (nested lists and tuples searched too)."""
    for value in values:
        if isinstance(value, TracedArray):
            return value.tracer
        if isinstance(value, (list, tuple)):
            found = find_tracer(value)
            if found:
                return found
    return None


def apply_op(op: str, *operands, **attrs):
    """Apply a table op to proxies (recording it) or to NumPy arrays (computing it eagerly).

    This is how ``minicomp.nn`` offers ops NumPy lacks (``erf``, ``conv2d``) in both worlds.
    """
    tracer = find_tracer(operands)
    if tracer is not None:
        return tracer.apply(op, operands, **attrs)
    from ..ir.ops import fill_attrs, get_op

    arrays = [np.asarray(o) for o in operands]
    opdef = get_op(op)
    types = [TensorType.of(a) for a in arrays]
    try:
        full = fill_attrs(opdef, types, attrs)
        opdef.infer(types, full)
    except MinicompError as exc:
        raise type(exc)(f"{op}: {exc}; operands {', '.join(map(str, types))}{at(user_location())}") from None
    return np.asarray(opdef.reference(*arrays, **full))


# ----------------------------------------------------------------------------------------------
# The proxy array
# ----------------------------------------------------------------------------------------------


_CONTROL_FLOW_ADVICE = ("data-dependent Python control flow cannot be compiled: use np.where, "
                        "np.maximum, ... instead")
_INDEX_ADVICE = ("a Python list, tuple or range indexed by a traced value cannot be compiled: make it an "
                 "array and write np.take(a, i, axis=0)")
_ARRAY_ADVICE = (
    "this happens when a NumPy array that is not traced (a weight folded by jit(freeze=True) or "
    "minicomp.trace, or an array made inside the function) is indexed by a "
    "traced array (W[ids] or np.take(W, ids): NumPy indexes W itself; pass W as an argument); when a traced "
    "value is written into a NumPy array (a[i] = t: make a traced, e.g. a = np.zeros_like(t)); with "
    "np.asarray or np.array of a traced array (leave it out: it is an array already); in a non-NumPy "
    "library; or when an np.matrix or masked array meets a traced array (pass np.asarray(m) instead)")


class TracedArray:
    """A stand-in for an ``np.ndarray`` during tracing: shape and dtype, no data."""

    __array_priority__ = 1000
    __hash__ = None  # like ndarray: == is elementwise, so proxies are not hashable

    def __init__(self, tracer: Tracer, node: Node):
        self.tracer = tracer
        self.node = node
        # Writes (x[k] = v, x += v) rebind ``node`` (SSA) and count in ``_version``. A view
        # (y = x[k], x.T ...) remembers its ``_base``, how it is made from it (``_remake``) and
        # the base's version when made: read after a write into its base, it is made again (so
        # it shows the write, as in NumPy). A view by a basic index also keeps its ``_key``: a
        # write into y = x[key] is written through into x[key].
        self._version = 0
        self._base: TracedArray | None = None
        self._remake: Callable[[TracedArray], TracedArray] | None = None
        self._key: tuple | None = None  # (key,) for a view by basic indexing: base[key] is this view
        self._base_version = 0

    # -- attributes -----------------------------------------------------------------------------

    shape = property(lambda self: self.node.shape, doc="static shape, a tuple of ints")
    dtype = property(lambda self: self.node.dtype, doc="NumPy dtype")
    ndim = property(lambda self: len(self.node.shape))
    size = property(lambda self: self.node.type.size)
    itemsize = property(lambda self: self.node.dtype.itemsize)
    nbytes = property(lambda self: self.node.type.nbytes)
    T = property(lambda self: self.transpose())
    mT = property(lambda self: self.swapaxes(-1, -2))

    def __repr__(self) -> str:
        return f"TracedArray(%{self.node.name}: {self.node.type})"

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        if not self.shape:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self.shape[0]))

    def _apply(self, op: str, *operands, **attrs) -> "TracedArray":
        return self.tracer.apply(op, operands, **attrs)

    # -- things a trace cannot do ---------------------------------------------------------------

    def _concrete(self, what: str, advice: str = _CONTROL_FLOW_ADVICE):
        raise UnsupportedError(
            f"{what} needs the values of {self!r}, which do not exist while tracing"
            f"{at(user_location())}; {advice}"
        )

    def __bool__(self):
        self._concrete("bool() (an if/while/and/or on an array)")

    def __float__(self):
        self._concrete("float()")

    def __int__(self):
        self._concrete("int()")

    def __index__(self):
        self._concrete("using an array as an index", _INDEX_ADVICE)

    def __complex__(self):
        self._concrete("complex()")

    def __contains__(self, value):
        self._concrete("`in` (NumPy computes (x == v).any())")

    def __array__(self, dtype=None, copy=None):
        if _called_from_numpy("as_strided"):
            raise UnsupportedError(
                f"np.lib.stride_tricks.as_strided needs the memory of {self!r}, which does not exist while "
                f"tracing{at(user_location())}; write minicomp.nn.as_strided(x, shape, strides) (the same "
                "arguments, for an array in C order) or np.lib.stride_tricks.sliding_window_view")
        self._concrete("conversion to a NumPy array", _ARRAY_ADVICE)

    def __reduce_ex__(self, protocol):
        self._concrete("pickling")

    def item(self, *args):
        self._concrete(".item()")

    def tolist(self):
        self._concrete(".tolist()")

    def __setitem__(self, key, value):
        """``x[key] = value``: x is rebound to ``scatter(x, positions of x[key], value)`` (a view
        writes through into its base). ``x[k] += v`` ends with ``x[k] = tmp`` where tmp, a view
        of x[k], already wrote itself through: that last write is skipped."""
        if value is not self and isinstance(value, TracedArray) and value._base is self and (
                value._key is not None and value._key[0] is key and value._base_version == self._version):
            return  # value *is* the up-to-date view self[key]: nothing to write
        from .updates import write

        self.check_writable("x[...] = v")
        write(self, key, value)

    def refresh(self) -> None:
        """A view whose base was written since it was made is made again from the base (NumPy's
        view shows the write): ``y = x[0]; x[0] = 5`` -> y reads as x[0] now is."""
        if self._base is None:
            return
        self._base.refresh()
        if self._base._version != self._base_version:
            self.node = self._remake(self._base).node
            self._base_version = self._base._version
            self._version += 1  # (views of this view are made again in turn)

    def check_writable(self, what: str) -> None:
        """Refuse a write into a view that is not a basic index (x.T, x.reshape): NumPy writes its base."""
        self.refresh()
        if self._base is not None and self._key is None:
            raise UnsupportedError(
                f"{what}: writing into a reshaped, transposed or broadcast view of another array "
                f"({self!r}){at(user_location())}; NumPy would change that array too, which minicomp "
                "traces only through basic indexing (x[1:3] += v): write the base (x[...] = ...), "
                "or work on a copy (y = x.T.copy())")

    def assign(self, node: Node) -> None:
        """Rebind this array to a new value (a write); a view writes the value through into its base."""
        self.node = node
        self._version += 1
        if self._base is not None:
            from .updates import write

            write(self._base, self._key[0], self)
            self._base_version = self._base._version

    def view_of(self, base: "TracedArray", remake, key: tuple | None = None) -> "TracedArray":
        """Mark this array a view of ``base``, made by ``remake(base)``: ``base[key[0]]`` (written
        through there), or, with ``key=None``, a reshape/transpose/broadcast (not writable)."""
        self._base, self._remake, self._key, self._base_version = base, remake, key, base._version
        return self

    def __delitem__(self, key):
        raise UnsupportedError(f"del x[...]: arrays cannot delete elements (NumPy refuses too){at(user_location())}; "
                               "build the result with slicing and np.concatenate")

    def __getattr__(self, name: str):
        """Only reached for a name the proxy lacks: an ndarray attribute not traced yet is refused."""
        if name.startswith("_") or name in ("tracer", "node"):  # protocol lookups; a half-made proxy
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name not in _NDARRAY_ATTRIBUTES:
            raise UnsupportedAttributeError(f"x.{name}: NumPy arrays have no attribute {name!r} (used on "
                                            f"{self!r}){at(user_location())}")
        raise UnsupportedAttributeError(
            f"ndarray.{name} is not supported by minicomp's tracer (used on {self!r}){at(user_location())}; "
            f"{_ATTRIBUTE_ADVICE.get(name, _DEFAULT_ATTRIBUTE_ADVICE)}"
        )

    def _unsupported_operator(symbol: str, advice: str):
        def method(self, *others):
            operands = ", ".join(describe_operand(o) for o in (self, *others))
            raise UnsupportedError(f"the operator {symbol} is not supported by minicomp's tracer; operands "
                                   f"{operands}{at(user_location())}; {advice}")
        return method

    __lshift__ = __rlshift__ = _unsupported_operator("<<", "for integers write x * 2**k (it wraps the same way)")
    __rshift__ = __rrshift__ = _unsupported_operator(">>", "for integers write x // 2**k (it floors the same way)")
    __round__ = _unsupported_operator("round()", "rounding is not supported yet (np.floor(x + 0.5) rounds half up)")
    del _unsupported_operator

    # -- operators ------------------------------------------------------------------------------

    def _binary(op):
        return lambda self, other: self._apply(op, self, other)

    def _reflected(op):
        return lambda self, other: self._apply(op, other, self)

    __add__, __radd__ = _binary("add"), _reflected("add")
    __sub__, __rsub__ = _binary("sub"), _reflected("sub")
    __mul__, __rmul__ = _binary("mul"), _reflected("mul")
    __truediv__, __rtruediv__ = _binary("div"), _reflected("div")
    __floordiv__, __rfloordiv__ = _binary("floordiv"), _reflected("floordiv")
    __mod__, __rmod__ = _binary("mod"), _reflected("mod")
    __pow__, __rpow__ = _binary("pow"), _reflected("pow")
    __matmul__, __rmatmul__ = _binary("matmul"), _reflected("matmul")
    __lt__, __le__ = _binary("lt"), _binary("le")
    __gt__, __ge__ = _binary("gt"), _binary("ge")
    __eq__, __ne__ = _binary("eq"), _binary("ne")

    def _logical(op, bitwise_name):
        def method(self, other, reflected=False):
            operands = (other, self) if reflected else (self, other)
            if any(_dtype_of_operand(o) != np.bool_ for o in operands):
                raise UnsupportedError(
                    f"bitwise {bitwise_name} is only supported on bool arrays; operands "
                    f"{', '.join(map(describe_operand, operands))}{at(user_location())}; "
                    "compare first (x > 0) to get bool arrays"
                )
            return self._apply(op, *operands)
        return method

    __and__ = _logical("logical_and", "&")
    __or__ = _logical("logical_or", "|")
    __xor__ = _logical("ne", "^")  # on bools, a ^ b is a != b
    __rand__ = lambda self, other: self.__and__(other, reflected=True)
    __ror__ = lambda self, other: self.__or__(other, reflected=True)
    __rxor__ = lambda self, other: self.__xor__(other, reflected=True)

    def __invert__(self):
        if self.dtype != np.bool_:
            raise UnsupportedError(f"~ is only supported on bool arrays; operand {self.node.type}"
                                   f"{at(user_location())}; for integers write -x - 1")
        return self._apply("logical_not", self)

    def __divmod__(self, other):
        return self // other, self % other  # NumPy's np.divmod: floor_divide and remainder

    def __rdivmod__(self, other):
        return other // self, other % self

    def __neg__(self):
        return self._apply("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self._apply("abs", self)

    # In-place operators rebind this proxy to the new value, so every Python name bound to this
    # array sees the change, as with NumPy; a view writes it through into its base (``assign``),
    # an argument is updated in the caller's array after the call (``trace_with_structure``).
    def _inplace(op, compute=None):
        def method(self, other):
            self.check_writable(f"in-place {op}")
            result = compute(self, other) if compute else self._apply(op, self, other)
            from .updates import fitted_for_write
            result = fitted_for_write(result, self, op, "array updated in place")
            self.assign(result.node)
            return self
        return method

    __iadd__, __isub__, __imul__ = _inplace("add"), _inplace("sub"), _inplace("mul")
    __itruediv__, __ipow__, __imatmul__ = _inplace("div"), _inplace("pow"), _inplace("matmul")
    __ifloordiv__, __imod__ = _inplace("floordiv"), _inplace("mod")
    __iand__, __ior__ = _inplace("&", __and__), _inplace("|", __or__)
    __ixor__ = _inplace("^", __xor__)
    __ilshift__, __irshift__ = __lshift__, __rshift__

    del _binary, _reflected, _logical, _inplace

    # -- indexing -------------------------------------------------------------------------------

    def __getitem__(self, key) -> "TracedArray":
        from .indexing import getitem, is_view_key

        result = getitem(self, key)
        if not is_view_key(key):
            return result  # advanced indexing gives a copy
        return result.view_of(self, lambda base: getitem(base, key), (key,))

    # -- methods --------------------------------------------------------------------------------

    def _view(self, op: str, **attrs) -> "TracedArray":
        return self._apply(op, self, **attrs).view_of(self, lambda base: base._apply(op, base, **attrs))

    def reshape(self, *shape, order="C"):
        if not isinstance(order, str) or order != "C":
            raise UnsupportedError(f"reshape(order={order!r:.40}) is not supported, only C order; operand "
                                   f"{self.node.type}{at(user_location())}")
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]  # x.reshape((3, 4)); the op checks that it is a sequence of ints
        return self._view("reshape", shape=shape)

    def transpose(self, *axes):
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], (int, np.integer))):
            # x.transpose(()) is an (empty) permutation, not x.transpose(): only None reverses
            return self._view("transpose", perm=axes[0])
        return self._view("transpose", perm=tuple(axes) if axes else None)

    def swapaxes(self, axis1: int, axis2: int):
        perm = list(range(self.ndim))
        a, b = checked_axis("swapaxes", axis1, self), checked_axis("swapaxes", axis2, self)
        perm[a], perm[b] = perm[b], perm[a]
        return self.transpose(perm)

    def squeeze(self, axis=None):
        return self._view("squeeze", axes=axis)

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def flatten(self, order="C"):
        return self.ravel(order).copy()

    def copy(self, order="C"):
        self.refresh()
        return TracedArray(self.tracer, self.node)  # a new array object with the same value

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def astype(self, dtype, copy=True):
        try:
            dtype = to_dtype(dtype)
        except DTypeError as exc:
            raise DTypeError(f"astype: {exc}; operand {self.node.type}{at(user_location())}") from None
        return self.copy() if dtype == self.dtype else self._apply("cast", self, dtype=dtype)

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce(self, "sum", axis, keepdims, dtype, out)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return _reduce(self, "mean", axis, keepdims, dtype, out)

    def max(self, axis=None, out=None, keepdims=False):
        return _reduce(self, "max", axis, keepdims, None, out)

    def min(self, axis=None, out=None, keepdims=False):
        return _reduce(self, "min", axis, keepdims, None, out)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        from .functions import var

        return var(self, axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims)

    def std(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        return np.sqrt(self.var(axis=axis, dtype=dtype, out=out, ddof=ddof, keepdims=keepdims))

    def clip(self, min=None, max=None):
        return np.clip(self, min, max)

    def dot(self, other):
        return np.dot(self, other)

    # NumPy's method forms of functions in surface.py
    def argmax(self, axis=None, out=None, *, keepdims=False):
        return np.argmax(self, axis=axis, out=out, keepdims=keepdims)

    def argmin(self, axis=None, out=None, *, keepdims=False):
        return np.argmin(self, axis=axis, out=out, keepdims=keepdims)

    def any(self, axis=None, out=None, keepdims=False, *, where=None):
        return np.any(self, axis=axis, out=out, keepdims=keepdims, where=where)

    def all(self, axis=None, out=None, keepdims=False, *, where=None):
        return np.all(self, axis=axis, out=out, keepdims=keepdims, where=where)

    def cumsum(self, axis=None, dtype=None, out=None):
        return np.cumsum(self, axis=axis, dtype=dtype, out=out)

    def cumprod(self, axis=None, dtype=None, out=None):
        return np.cumprod(self, axis=axis, dtype=dtype, out=out)

    def repeat(self, repeats, axis=None):
        return np.repeat(self, repeats, axis=axis)

    # -- NumPy's dispatch protocols -------------------------------------------------------------

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from .functions import dispatch_ufunc

        return dispatch_ufunc(self.tracer, ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from .functions import dispatch_function

        return dispatch_function(func, args, kwargs)


_NDARRAY_ATTRIBUTES = frozenset(name for name in dir(np.ndarray) if not name.startswith("_"))
_LAYOUT_ADVICE = ("a traced array has a shape and a dtype, no memory: its layout does not exist while "
                  "tracing (the compiled code chooses its own); use x.shape, x.dtype, x.ndim, x.size")
_VALUES_ADVICE = "it needs the array's values, which do not exist while tracing; do it outside the compiled function"
_INPLACE_ADVICE = "it changes the array in place; compiled functions build new arrays (np.where, np.concatenate)"
_ATTRIBUTE_ADVICE = {
    **dict.fromkeys(["strides", "flags", "data", "ctypes", "base", "device", "to_device", "setflags",
                     "view", "getfield", "setfield", "byteswap"], _LAYOUT_ADVICE),
    **dict.fromkeys(["tobytes", "tofile", "dump", "dumps", "nonzero", "flat"], _VALUES_ADVICE),
    **dict.fromkeys(["fill", "put", "sort", "partition", "resize"], _INPLACE_ADVICE),
}
_DEFAULT_ATTRIBUTE_ADVICE = (
    "compute it outside the compiled function, or with what the tracer supports: "
    + ", ".join(sorted(f"x.{name}" for name in _NDARRAY_ATTRIBUTES if name in vars(TracedArray)))
)


def _called_from_numpy(function: str) -> bool:
    """True if NumPy's ``function`` is on the stack (it called into the proxy)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_code.co_filename.startswith(_INTERNAL[-1]):
            return True
        frame = frame.f_back
    return False


def checked_axis(op: str, axis, x: TracedArray, ndim: int | None = None) -> int:
    """``normalize_axis(axis, ndim or x.ndim)`` whose ``ShapeError`` names ``op``, ``x`` and the user's line.

    >>> checked_axis("np.swapaxes", 5, x)   # x: f32[3,4]
    ShapeError: np.swapaxes: axis 5 is out of bounds for an array of dimension 2; operand f32[3,4] (at f.py:3)
    """
    from ..ir.ops import normalize_axis

    try:
        return normalize_axis(axis, x.ndim if ndim is None else ndim)
    except ShapeError as exc:
        raise ShapeError(f"{op}: {exc}; operand {x.node.type}{at(user_location())}") from None


def _dtype_of_operand(value) -> np.dtype:
    """The dtype of a proxy or array, NumPy's default dtype for a Python scalar."""
    return value.dtype if isinstance(value, (TracedArray, np.ndarray, np.generic)) else np.asarray(value).dtype


def describe_operand(value) -> str:
    """``f32[3,4]`` for a proxy or an array, ``int 2`` for anything else: for error messages."""
    if isinstance(value, TracedArray):
        return str(value.node.type)
    if isinstance(value, (np.ndarray, np.generic)):
        return f"{value.dtype}{list(np.shape(value))}"
    return f"{type(value).__name__} {value!r:.40}"


def _reduce(x: TracedArray, op: str, axis, keepdims: bool, dtype, out) -> TracedArray:
    if out is not None:
        raise UnsupportedError(f"{op}(out=...) is not supported{at(user_location())}; use the return value")
    if dtype is not None:
        x = x.astype(dtype)  # np.sum(x, dtype=d) accumulates in d: the same as casting first
    return x._apply(op, x, axes=axis, keepdims=keepdims)


# ----------------------------------------------------------------------------------------------
# trace()
# ----------------------------------------------------------------------------------------------


def _argument_type(param: str, value, function: str) -> TensorType | None:
    """The input type an array leaf of an argument stands for, or None for a static value.

    Arrays (plain, ``np.memmap``; byte-swapped ones as their native dtype), NumPy scalars, device
    arrays (``__cuda_array_interface__``: ``pytree.device_array_type``) and ``TensorType`` s are
    inputs. Refused, naming the parameter: ndarray subclasses such as
    ``np.matrix`` (``UnsupportedError``) and unsupported dtypes (``DTypeError``).
    """
    if isinstance(value, TensorType):
        return value
    what = f"argument {param!r} of {function}"
    device = device_array_type(value)
    if device is not None:  # a torch/CuPy/pycuda array in GPU memory: its interface's shape and dtype
        try:
            return TensorType(*device)
        except DTypeError as exc:
            raise DTypeError(f"{what}: {exc}{at(user_location())}") from None
    if isinstance(value, (np.ndarray, np.generic)):
        refuse_array_subclass(value, what, user_location())
        dtype = value.dtype if value.dtype.isnative else value.dtype.newbyteorder("=")
        try:
            return TensorType(np.shape(value), dtype)
        except DTypeError as exc:
            raise DTypeError(f"{what}: {exc}{at(user_location())}") from None
    return None


def _holds_arrays(value, depth: int = 0) -> bool:
    """True if ``value`` is an array or a list, tuple, dict or set with an array somewhere inside."""
    if isinstance(value, (np.ndarray, np.generic, TracedArray, TensorType)) or device_array_type(value):
        return True
    if depth > 100:
        return False
    if isinstance(value, dict):
        return any(_holds_arrays(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_arrays(v, depth + 1) for v in value)
    return False


class Structure:
    """How a traced graph's inputs and outputs map to a call's values.

    ``result``: the pytree key (``pytree.flatten``) of what the function returned; its array
    leaves are the first ``results`` outputs. ``writes``: ``(Path, key)`` for each traced value
    the function stored outside (``state.py``); their arrays are the outputs after those.
    ``lifted``: ``(Path, TensorType)`` of each input after the arguments' array leaves (an
    array read from outside). ``frozen``: names of outside arrays folded as constants.
    The outputs after all those are the new values of inputs written in place
    (``graph.updated_inputs``: input number -> output number), copied into the caller's arrays
    by ``jit.update_arguments``.
    """

    def __init__(self, result: tuple, results: int, writes: list, lifted: list, frozen: list[str]):
        self.result, self.results, self.writes, self.lifted, self.frozen = result, results, writes, lifted, frozen

    def finish_call(self, outputs: list, args: tuple):
        """The function's result from the compiled outputs; stored values written where they were.

        >>> structure.finish_call([a, b], args)    # result key of (x, {"y": x}) -> (a, {"y": b})

        Outputs after the stored values' (written inputs) are not looked at.
        """
        from .pytree import count_arrays, unflatten

        start = self.results
        for path, key in self.writes:
            count = count_arrays(key)
            path.assign(args, unflatten(key, outputs[start:start + count]))
            start += count
        return unflatten(self.result, outputs[:self.results])


def trace_with_structure(fn: Callable, args: tuple, name: str | None = None, lift: bool = False,
                         keep_writes: bool = True):
    """Trace ``fn(*args)``; return ``(graph, structure)`` (``Structure``: how values map to it).

    Every argument is a pytree (nested tuples, lists, dicts): each array leaf (``np.ndarray``,
    NumPy scalar, ``TensorType``) becomes a graph input named after its place (``params.w``);
    anything else is passed to ``fn`` unchanged (static). With ``lift``, arrays ``fn`` reads
    through its closure, globals and ``self`` become inputs too (``state.py``); without, they
    are constants. Traced values ``fn`` stores outside are taken out again; with ``keep_writes``
    they are outputs after the result's (``structure.writes``).
    What ``fn`` reads from outside is checked (``frozen``): an ``np.matrix`` or masked array
    is refused, and random numbers drawn while tracing give a ``MinicompWarning``.

    >>> graph, structure = trace_with_structure(lambda p: {"y": p["x"] * 2}, ({"x": np.ones(3)},))
    >>> [n.name for n in graph.inputs]
    ['p.x']
    """
    from . import frozen
    from .sizes import sized_creation
    from .state import TraceState
    from .updates import written_inputs

    tracer = Tracer(name or getattr(fn, "__name__", "main").replace("<lambda>", "lambda"))
    names = _parameter_names(fn, args, tracer.graph.name)
    static = {param: value for param, value in zip(names, args) if not _holds_arrays(value)}
    outside = frozen.outside_values(fn, static)
    frozen.refuse_subclass_constants(fn, outside)
    draws = frozen.RandomDraws(fn, outside)
    state = TraceState(tracer, lift)
    try:
        call_args = [state.argument(i, param, value) for i, (param, value) in enumerate(zip(names, args))]
        state.lift(fn)
        symbolic = any(isinstance(d, Sym) for node in tracer.graph.inputs for d in node.type.shape)
        with sized_creation(tracer, symbolic):  # np.tri(x.shape[0]) with a symbolic size
            result = _call_traced(fn, call_args, static, tracer.graph.name)
        writes = state.take_writes()
    finally:
        state.restore()
    draws.warn_if_drawn()
    result_key, outputs = _output_tree(tracer, _numbers_as_arrays(result), "returned")
    results, write_keys = len(outputs), []
    for write in writes if keep_writes else ():
        key, nodes = _output_tree(tracer, write.value, f"stored into {write.path.name}")
        write_keys.append((write.path, key))
        outputs += nodes
    for number, value in written_inputs(tracer):  # each input written in place: one more output, last
        tracer.graph.updated_inputs[number] = len(outputs)
        outputs.append(value)
    if not outputs:
        raise UnsupportedError(
            f"the traced function {tracer.graph.name} returned {_describe_result(result)} and stored no traced array "
            f"where minicomp takes it back (nor wrote into an array it reads){at(user_location())}: there is no array to compute; return the arrays "
            "it computes")
    tracer.graph.set_outputs(outputs)
    tracer.graph.verify(incremental=True)  # add_op type-checked every node as it was recorded
    folded = sorted({_outside_name(array, state.outside) for array in tracer.constant_arrays()} - {None})
    return tracer.graph, Structure(result_key, results, write_keys, state.lifted, folded)


def _outside_name(array, outside: dict[int, tuple]) -> str | None:
    """The name of the outside array ``array`` is, or shares memory with (``w.T``), if any."""
    if id(array) in outside:
        return outside[id(array)][1]
    if isinstance(array, np.ndarray):
        for other, name in outside.values():
            if np.may_share_memory(array, other):
                return name
    return None


def _call_traced(fn: Callable, call_args: list, static: dict, name: str):
    """``fn(*call_args)``; an exception that is not minicomp's gets a note on the static arguments."""
    try:
        return fn(*call_args)
    except MinicompError:
        raise
    except Exception as exc:
        if static and hasattr(exc, "add_note"):  # Python 3.11+
            values = ", ".join(f"{k}={v!r:.40}" for k, v in static.items())
            exc.add_note(f"minicomp was tracing {name} with the static (non-array) argument(s) {values}: "
                         "they were passed unchanged; only NumPy arrays become traced inputs")
        raise


def _describe_result(value) -> str:
    return "None" if value is None else f"{type(value).__name__} {value!r:.40} with no array in it"


def _numbers_as_arrays(value, depth: int = 0):
    """A result with each Python number made a 0-d array (a returned ``2.0`` is an output)."""
    if isinstance(value, (bool, int, float, complex)) and not isinstance(value, np.generic):
        return np.asarray(value)
    if depth > 100:
        return value
    if type(value) is tuple or type(value) is list:
        return type(value)(_numbers_as_arrays(v, depth + 1) for v in value)
    if type(value) is dict:
        return {k: _numbers_as_arrays(v, depth + 1) for k, v in value.items()}
    return value


def _output_tree(tracer: Tracer, value, what: str) -> tuple[tuple, list[Node]]:
    """The pytree key of an output value and the nodes of its array leaves."""
    from .pytree import flatten

    leaves: list = []
    try:
        key = flatten(value, leaves)
    except UnsupportedError as exc:
        raise UnsupportedError(
            f"the traced function {tracer.graph.name} {what} {exc}{at(user_location())}; "
            "return (and store) arrays, numbers, None, strings, and tuples, lists and dicts of them"
        ) from None
    opaque = _opaque_leaf(key)
    if opaque is not None:
        raise UnsupportedError(
            f"the traced function {tracer.graph.name} {what} a {opaque.__name__} inside its result"
            f"{at(user_location())}; an object cannot carry traced arrays out: return (and store) arrays, "
            "numbers, None, strings, and tuples, lists and dicts of them"
        )
    return key, [tracer.node_of(leaf) for leaf in leaves]


_PLAIN_STATIC = (type(None), bool, int, float, complex, str, bytes, type(Ellipsis), slice, np.dtype, type)


def _opaque_leaf(key: tuple) -> type | None:
    """The type of the first static leaf of a result key that is not plain data (a user object)."""
    from .pytree import ARRAY, DATACLASS, DICT, LIST, NAMEDTUPLE, STATIC, TUPLE

    tag = key[0]
    if tag == STATIC:
        return None if isinstance(key[2], (frozenset,) + _PLAIN_STATIC) or issubclass(key[1], _PLAIN_STATIC) \
            else key[1]
    children = key[2] if tag in (DICT, NAMEDTUPLE) else key[1] if tag in (LIST, TUPLE) else \
        key[3] if tag == DATACLASS else ()
    for child in children if tag != ARRAY else ():
        found = _opaque_leaf(child)
        if found is not None:
            return found
    return None


def _parameter_names(fn: Callable, args: tuple, function: str) -> list[str]:
    """The names of the parameters ``args`` bind to (``MinicompRuntimeError`` if they cannot)."""
    count = len(args)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: fn(*args) will tell
        return [f"arg{i}" for i in range(count)]
    try:
        signature.bind(*args)
    except TypeError as exc:  # e.g. "missing a required argument: 'w'"
        raise MinicompRuntimeError(f"{function}(): {exc}{at(user_location())}") from None
    names = []
    for param in signature.parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            names += [f"{param.name}_{i}" for i in range(count - len(names))]
            break
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.append(param.name)
    return names[:count]


def trace(fn: Callable, *example_args, name: str | None = None) -> Graph:
    """Trace an unchanged NumPy function into a ``Graph``.

    ``example_args`` are NumPy arrays (only their shapes and dtypes matter), ``TensorType`` s,
    or static Python values passed through unchanged.

    >>> g = trace(lambda x: np.exp(x) + 1.0, np.zeros((2, 3), np.float32))
    >>> [n.op for n in g.op_nodes()]
    ['exp', 'add']
    """
    return trace_with_structure(fn, example_args, name, keep_writes=False)[0]
