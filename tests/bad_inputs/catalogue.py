"""The bad-input catalogue: what a new user or an attacker might hand minicomp, one case each.

Every case must end in NumPy's result (exactly: same shape, dtype, NaN positions and signs of
zeros; other float values under ``assert_close``) or in a typed ``MinicompError`` whose message
names the op or construct, the shapes as given and the user's line. NumPy's own exception is
accepted only where the plain NumPy function raises the same (same type, same message).

``python catalogue.py --worker`` is the process the test runs the cases in (see
``tests/test_bad_inputs.py``): it reads case names on stdin, one a line, and answers each with
one JSON line ``{"case", "ok", "detail"}`` on the stdout it started with (anything a case
prints, from Python or C, goes to stderr). A crash or a hang of the worker fails the case in
flight and nothing else.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import traceback
import warnings
from typing import Callable

import numpy as np

# the minicomp of this checkout (not another one installed in the environment)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import minicomp  # noqa: E402
from minicomp.errors import (DTypeError, IndexOutOfBoundsError, MinicompError, MinicompRuntimeError, MinicompWarning,
                             ShapeError, UnsupportedError)
from minicomp.testing import assert_close

HERE = os.path.abspath(__file__)
CASES: dict[str, Callable[[], None]] = {}
f16, f32, f64, i32, i64 = np.float16, np.float32, np.float64, np.int32, np.int64
nan, inf = np.nan, np.inf


class CaseFailure(AssertionError):
    """The case did not end in NumPy's result or a clear MinicompError."""


def case(name: str):
    """Register the decorated function as the case ``name`` (``category/what``)."""
    def register(fn):
        assert name not in CASES, name
        CASES[name] = fn
        return fn
    return register


# ----------------------------------------------------------------------------------------------
# Judging one outcome
# ----------------------------------------------------------------------------------------------


def numpy_result(fn, args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def attempt(call):
    """``(value, None)`` or ``(None, exception)``."""
    try:
        return call(), None
    except Exception as exc:  # noqa: BLE001 (judged by the caller)
        return None, exc


def call_jitted(jitted, args): return jitted(*args)  # noqa: E704  (one line: CALL_LINE)


CALL_LINE = call_jitted.__code__.co_firstlineno


def lines_of(fn) -> set[int]:
    """Every source line of ``fn``'s code (nested lambdas and comprehensions included)."""
    lines, codes = set(), [fn.__code__]
    while codes:
        code = codes.pop()
        lines |= {line for _, _, line in code.co_lines() if line is not None}
        codes += [c for c in code.co_consts if hasattr(c, "co_lines")]
    return lines


def same_values(actual, expected) -> None:
    """NumPy's result exactly where it matters: shape, dtype, NaNs, infinities, signed zeros."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or list(actual) != list(expected):
            raise CaseFailure(f"expected a dict with keys {list(expected)}, got {actual!r:.200}")
        actual, expected = list(actual.values()), list(expected.values())
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            raise CaseFailure(f"expected {len(expected)} results, got {actual!r:.200}")
        for a, e in zip(actual, expected):
            same_values(a, e)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        raise CaseFailure(f"got {actual.dtype}{list(actual.shape)}, NumPy {expected.dtype}{list(expected.shape)}")
    if expected.dtype.kind == "f":
        for what, mask in [("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)]:
            if not np.array_equal(mask(actual), mask(expected)):
                raise CaseFailure(f"{what} positions differ: got {actual!r:.300}, NumPy {expected!r:.300}")
        zeros = expected == 0
        if not np.array_equal(np.signbit(actual[zeros]), np.signbit(expected[zeros])) or np.any(actual[zeros] != 0):
            raise CaseFailure(f"signed zeros differ: got {actual!r:.300}, NumPy {expected!r:.300}")
        finite = np.isfinite(expected)
        try:
            assert_close(actual[finite], expected[finite])
        except AssertionError as exc:
            raise CaseFailure(f"values differ: {exc}") from None
    elif not np.array_equal(actual, expected):
        raise CaseFailure(f"got {actual!r:.300}, NumPy {expected!r:.300}")


def check_message(error: Exception, fn, op=None, shapes=(), at="fn", words=()) -> None:
    """The MinicompError names ``op``, every shape in ``shapes``, ``words`` and the user's line.

    ``at``: ``"fn"`` (a line of ``fn``), ``"call"`` (the line that called the compiled
    function), an int (that line of this file) or None (no line to name).
    """
    message = str(error)
    for name in ([op] if isinstance(op, str) else list(op or ())):
        if name not in message:
            raise CaseFailure(f"the message does not name {name!r}: {message}")
    for shape in shapes:
        if shape not in message:
            raise CaseFailure(f"the message does not name the shape {shape}: {message}")
    for word in words:
        if word.lower() not in message.lower():
            raise CaseFailure(f"the message does not say {word!r}: {message}")
    if at is None:
        return
    found = re.findall(r"\(at (.+?):(\d+)\)", message)
    if not found:
        raise CaseFailure(f"the message names no (at file:line): {message}")
    path, line = found[-1]
    lines = lines_of(fn) if at == "fn" else {CALL_LINE} if at == "call" else {at}
    if os.path.abspath(path) != HERE or int(line) not in lines:
        raise CaseFailure(f"the message points at {path}:{line}, not at the user's line {sorted(lines)}: {message}")


def judge(fn, args, actual, error, *, op=None, shapes=(), at="fn", words=(), compute=False,
          kind=MinicompError) -> None:
    """Compare minicomp's outcome ``(actual, error)`` of ``fn(*args)`` with NumPy's."""
    expected, numpy_error = attempt(lambda: numpy_result(fn, args))
    if error is None:
        if numpy_error is not None:
            raise CaseFailure(f"NumPy raises {type(numpy_error).__name__}: {numpy_error}; minicomp returned "
                              f"{actual!r:.200}")
        same_values(actual, expected)
        return
    if isinstance(error, MinicompError):
        if compute:
            raise CaseFailure(f"minicomp refused a computation it supports: {type(error).__name__}: {error}")
        if not isinstance(error, kind):
            raise CaseFailure(f"expected a {kind.__name__}, got {type(error).__name__}: {error}")
        check_message(error, fn, op, shapes, at, words)
        return
    if numpy_error is not None and type(error) is type(numpy_error) and str(error) == str(numpy_error):
        return  # NumPy's own exception, exactly as the plain NumPy call raises it
    raise CaseFailure(f"foreign exception {type(error).__module__}.{type(error).__name__}: {error}\n"
                      + "".join(traceback.format_exception(error))[-2000:])


def check(fn, *args, target="c", **expect) -> None:
    """Compile ``fn`` with ``jit`` for ``target``, call it on ``args`` and judge the outcome."""
    jitted = minicomp.jit(fn, target=target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        actual, error = attempt(lambda: call_jitted(jitted, args))
    judge(fn, args, actual, error, **expect)


def refused(call, fn=None, kind=MinicompError, **expect) -> None:
    """``call()`` must raise a ``kind`` whose message names what ``expect`` lists.

    ``at="call_site"``: the message points at the line of ``call`` (which calls jit or trace).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, error = attempt(call)
    if error is None:
        raise CaseFailure("no error raised")
    if not isinstance(error, kind):
        raise CaseFailure(f"expected a {kind.__name__}, got {type(error).__module__}.{type(error).__name__}: "
                          f"{error}")
    if expect.get("at") == "call_site":  # the line that called jit or trace: the lambda ``call``
        fn, expect["at"] = call, "fn"
    check_message(error, fn or call, **expect)


def computes(fn, *args, target="c") -> None:
    """``fn`` compiled gives NumPy's result exactly (minicomp supports every op in it)."""
    check(fn, *args, target=target, compute=True)


def rand(*shape, dtype=f32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Arguments: types, counts, keywords
# ----------------------------------------------------------------------------------------------


X34 = rand(3, 4)


@case("arguments/none_for_an_array")
def _():
    check(lambda x: np.exp(x) + 1, None)  # NumPy's own TypeError: np.exp(None) raises it too


@case("arguments/none_next_to_a_traced_array")
def _():
    check(lambda x, y: x + y, X34, None, op="add", words=["NoneType"])


@case("arguments/none_as_a_static_flag")
def _():
    computes(lambda x, bias: x if bias is None else x + bias, X34, None)


@case("arguments/str_mode_flag")
def _():
    def layer(x, activation):
        return np.maximum(x, 0) if activation == "relu" else np.tanh(x)
    computes(layer, X34, "relu")
    computes(layer, X34, "tanh")


@case("arguments/str_used_as_an_array")
def _():
    check(lambda x, s: x * s, X34, "ab", op="mul", words=["str"])


@case("arguments/bytes_static")
def _():
    computes(lambda x, mode: x * 2 if mode == b"double" else x, X34, b"double")


@case("arguments/bytes_used_as_an_array")
def _():
    check(lambda x: np.exp(x), b"ab")  # NumPy's own TypeError


@case("arguments/dict_of_scalars_static")
def _():
    computes(lambda x, cfg: x * cfg["scale"] + cfg["shift"], X34, {"scale": 2.0, "shift": 1.0})


@case("arguments/dict_holding_arrays")
def _():
    computes(lambda x, params: x @ params["w"] + params["b"], X34, {"w": rand(4, 2), "b": rand(2)})


@case("arguments/list_of_arrays")
def _():
    computes(lambda x, ws: x @ ws[0] @ ws[1], X34, [rand(4, 2), rand(2, 3)])


@case("arguments/tuple_holding_an_array")
def _():
    computes(lambda x, pair: x * pair[0] + pair[1], X34, (2.5, rand(4)))


@case("arguments/dict_holding_an_unhashable_object")
def _():
    fn = lambda x, params: x * 2  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34, {"w": rand(4, 2), "cb": bytearray(b"ab")}), fn, UnsupportedError,
            words=["'params'", "bytearray", "hashable"], at="call_site")


@case("arguments/tuple_of_ints_static")
def _():
    computes(lambda x, axes: x.sum(axis=axes), rand(2, 3, 4), (0, 2))


@case("arguments/list_of_ints_static")
def _():
    computes(lambda x, axes: x.sum(axis=tuple(axes)), rand(2, 3, 4), [1])


@dataclasses.dataclass(frozen=True)
class Config:
    scale: float = 3.0


class Mutable:
    __hash__ = None  # compares by value, so it is not hashable

    def __eq__(self, other):
        return isinstance(other, Mutable)


@case("arguments/frozen_dataclass_static")
def _():
    computes(lambda x, cfg: x * cfg.scale, X34, Config())


@case("arguments/unhashable_object")
def _():
    fn = lambda x, obj: x  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34, Mutable()), fn, UnsupportedError,
            words=["'obj'", "Mutable", "hashable"], at="call_site")


@case("arguments/object_used_as_an_array")
def _():
    check(lambda x, obj: x + obj, X34, object(), op="add")


@case("arguments/python_scalar_static")
def _():
    computes(lambda x, k: x * k, X34, 3)
    computes(lambda x, k: x * k, X34, 2.5)


@case("arguments/numpy_scalar_input")
def _():
    computes(lambda x, s: x * s, X34, np.float32(2.5))


@case("arguments/numpy_scalar_only")
def _():
    computes(lambda s: np.exp(s) + 1, np.float64(0.5))


@case("arguments/python_list_as_the_array")
def _():
    computes(lambda x: np.exp(x), [1.0, 2.0])


@case("arguments/too_few")
def _():
    fn = lambda x, w: x @ w  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34), fn, MinicompRuntimeError, words=["missing", "'w'"], at=None)


@case("arguments/too_many")
def _():
    fn = lambda x: x  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34, X34), fn, MinicompRuntimeError, words=["too many"], at=None)


@case("arguments/unknown_keyword")
def _():
    fn = lambda x: x  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34, y=X34), fn, MinicompRuntimeError, words=["'y'"], at=None)


@case("arguments/same_argument_twice")
def _():
    fn = lambda x, w: x @ w  # noqa: E731
    refused(lambda: minicomp.jit(fn)(X34, X34.T, x=X34), fn, MinicompRuntimeError, words=["multiple values"],
            at=None)


@case("arguments/keyword_only_parameter")
def _():
    def fn(x, *, scale=2.0):
        return x * scale
    refused(lambda: minicomp.jit(fn)(X34, scale=3.0), fn, UnsupportedError, words=["keyword-only", "scale"], at=None)


@case("arguments/trace_with_too_few")
def _():
    fn = lambda x, w: x @ w  # noqa: E731
    refused(lambda: minicomp.trace(fn, X34), fn, MinicompRuntimeError, words=["missing", "'w'"], at="call_site")


@case("arguments/varargs")
def _():
    computes(lambda *xs: xs[0] + xs[1], X34, X34)


@case("arguments/jit_of_a_ufunc")
def _():
    computes(np.exp, X34)


@case("arguments/jit_of_a_non_function")
def _():
    refused(lambda: minicomp.jit(42), kind=UnsupportedError, words=["function", "int"], at=None)


@case("arguments/compiled_run_wrong_shape")
def _():
    compiled = minicomp.jit(lambda x: x + 1).compiled_for(X34)
    refused(lambda: compiled.run(rand(4, 3)), kind=MinicompRuntimeError, words=["%x", "f32[3,4]", "f32[4,3]"],
            at=None)


@case("arguments/compiled_run_ragged_list")
def _():
    compiled = minicomp.jit(lambda x: x + 1).compiled_for(rand(2))
    refused(lambda: compiled.run([[1.0], [1.0, 2.0]]), kind=MinicompRuntimeError, words=["%x", "f32[2]"], at=None)


@case("arguments/compiled_run_none")
def _():
    compiled = minicomp.jit(lambda x: x + 1).compiled_for(rand(2))
    refused(lambda: compiled.run(None), kind=MinicompRuntimeError, words=["%x", "f32[2]", "None"], at=None)


@case("arguments/interpreter_wrong_count")
def _():
    graph = minicomp.trace(lambda x, y: x + y, X34, X34)
    refused(lambda: minicomp.interpret(graph, X34), kind=MinicompRuntimeError, words=["takes 2", "got 1"], at=None)


# -- ndarray subclasses ---------------------------------------------------------------------------


class Overriding(np.ndarray):
    """An unknown subclass that takes over every ufunc."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return "taken over"


MATRIX = np.matrix(rand(2, 2, dtype=f64))
MASKED = np.ma.masked_array(rand(2, 2, dtype=f64), mask=[[0, 1], [0, 0]])
OVERRIDING = rand(2, 2, dtype=f64).view(Overriding)


@case("subclasses/matrix_argument")
def _():
    fn = lambda a, b: a * b  # noqa: E731
    refused(lambda: minicomp.jit(fn)(MATRIX, MATRIX), fn, UnsupportedError,
            words=["'a'", "np.matrix", "(2, 2)", "np.asarray"], at="call_site")


@case("subclasses/masked_argument")
def _():
    fn = lambda a: a.sum()  # noqa: E731
    refused(lambda: minicomp.jit(fn)(MASKED), fn, UnsupportedError,
            words=["'a'", "MaskedArray", "mask", "filled"], at="call_site")


@case("subclasses/recarray_argument")
def _():
    fn = lambda r: r  # noqa: E731
    records = np.rec.array(np.zeros(3, dtype=[("a", f32)]))
    refused(lambda: minicomp.jit(fn)(records), fn, UnsupportedError, words=["'r'", "recarray"], at="call_site")


@case("subclasses/unknown_subclass_argument")
def _():
    fn = lambda a: a + 1  # noqa: E731
    refused(lambda: minicomp.jit(fn)(OVERRIDING), fn, UnsupportedError,
            words=["'a'", "Overriding", "np.asarray"], at="call_site")


@case("subclasses/matrix_to_trace")
def _():
    fn = lambda a: a @ a  # noqa: E731
    refused(lambda: minicomp.trace(fn, MATRIX), fn, UnsupportedError, words=["'a'", "np.matrix"], at="call_site")


@case("subclasses/matrix_closed_over")
def _():
    m = MATRIX
    fn = lambda x: m * x  # noqa: E731
    refused(lambda: minicomp.jit(fn)(rand(2, 2, dtype=f64)), fn, UnsupportedError,
            words=["'m'", "np.matrix", "np.asarray"])


@case("subclasses/masked_global")
def _():
    fn = lambda x: x + MASKED  # noqa: E731
    refused(lambda: minicomp.jit(fn)(rand(2, 2, dtype=f64)), fn, UnsupportedError, words=["'MASKED'", "mask"])


@case("subclasses/overriding_subclass_global")
def _():
    fn = lambda x: OVERRIDING * x  # noqa: E731
    refused(lambda: minicomp.jit(fn)(rand(2, 2, dtype=f64)), fn, UnsupportedError, words=["'OVERRIDING'"])


def _helper_reading_a_matrix(x):
    return x * MATRIX


@case("subclasses/matrix_read_by_a_helper")
def _():
    fn = lambda x: _helper_reading_a_matrix(x) + 1  # noqa: E731
    refused(lambda: minicomp.jit(fn)(rand(2, 2, dtype=f64)), _helper_reading_a_matrix, UnsupportedError,
            words=["np.matrix", "mul"])


@case("subclasses/matrix_to_a_compiled_executable")
def _():
    compiled = minicomp.jit(lambda a: a * 2).compiled_for(np.asarray(MATRIX))
    refused(lambda: compiled.run(MATRIX), kind=UnsupportedError, words=["%a", "np.matrix"], at=None)


@case("subclasses/masked_after_a_plain_call")
def _():
    fast = minicomp.jit(lambda a: a * 2)
    fast(np.asarray(MASKED))  # the signature is compiled: the masked call must still be refused
    refused(lambda: fast(MASKED), kind=UnsupportedError, words=["'a'", "MaskedArray"], at=None)


@case("subclasses/memmap_argument")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        weights = np.memmap(os.path.join(tmp, "w.bin"), dtype=f32, mode="w+", shape=(4, 2))
        weights[:] = rand(4, 2)
        computes(lambda x, w: x @ w, X34, weights)
        del weights


# ----------------------------------------------------------------------------------------------
# Dtypes
# ----------------------------------------------------------------------------------------------


UNSUPPORTED_DTYPES = {
    "complex64": np.complex64, "complex128": np.complex128, "longdouble": np.longdouble,
    "object": object, "str": "U3", "bytes": "S3", "structured": [("a", f32), ("b", i32)],
    "datetime64": "datetime64[s]", "timedelta64": "timedelta64[s]", "uint8": np.uint8, "int8": np.int8,
    "int16": np.int16, "uint64": np.uint64, "void": "V4",
}
for _name, _dtype in UNSUPPORTED_DTYPES.items():
    def _unsupported_dtype_argument(dtype=_dtype):
        x = np.zeros(3, dtype)
        fn = lambda x: x + x  # noqa: E731
        refused(lambda: minicomp.jit(fn)(x), fn, DTypeError, words=["'x'", str(x.dtype)], at="call_site")
    case(f"dtypes/argument_{_name}")(_unsupported_dtype_argument)


for _name in ["float16", "float32", "float64", "int32", "int64", "bool"]:
    def _supported_dtype(name=_name):
        x = (rand(5) * 3).astype(name)
        computes(lambda x: x * x + x, x) if name != "bool" else computes(lambda x: x & ~x | x, x)
    case(f"dtypes/supported_{_name}")(_supported_dtype)


@case("dtypes/astype_complex")
def _():
    check(lambda x: x.astype(np.complex64), X34, kind=DTypeError, op="astype", shapes=["f32[3,4]"])


@case("dtypes/astype_object")
def _():
    check(lambda x: x.astype(object), X34, kind=DTypeError, op="astype", shapes=["f32[3,4]"])


@case("dtypes/astype_not_a_dtype")
def _():
    check(lambda x: x.astype("no such dtype"), X34, kind=DTypeError, op="astype", shapes=["f32[3,4]"])


@case("dtypes/constant_uint8")
def _():
    c = np.ones(4, np.uint8)
    check(lambda x: x + c, X34, kind=DTypeError, words=["uint8"])


@case("dtypes/big_endian")
def _():
    computes(lambda x: np.exp(x) * 2, rand(3, 4).astype(">f4"))


@case("dtypes/big_endian_int")
def _():
    computes(lambda x, y: x // y, np.array([7, -7, 9], ">i8"), np.array([2, 2, -4], ">i8"))


@case("dtypes/bool_subtract")
def _():
    check(lambda x: x - x, np.array([True, False]), kind=DTypeError, op="sub", words=["bool"])


@case("dtypes/mixed_int_float")
def _():
    computes(lambda x, y: x * y + 1, np.arange(4, dtype=i32), rand(4, dtype=f32))


@case("dtypes/python_int_out_of_range")
def _():
    check(lambda x: x + 2**40, np.ones(3, i32), op="add", words=["int32"])


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


@case("shapes/zero_size_elementwise")
def _():
    computes(lambda x: np.exp(x) + 1, np.zeros((0, 4), f32))


@case("shapes/zero_size_sum")
def _():
    computes(lambda x: (x.sum(axis=0), x.sum(axis=1)), np.zeros((0, 4), f32))


@case("shapes/zero_size_matmul")
def _():
    computes(lambda a, b: a @ b, np.zeros((3, 0), f32), np.zeros((0, 4), f32))


@case("shapes/zero_size_max")
def _():
    check(lambda x: x.max(axis=0), np.zeros((0, 4), f32), kind=ShapeError, op="max", shapes=["f32[0,4]"])


@case("shapes/zero_size_mean")
def _():
    computes(lambda x: x.mean(axis=0), np.zeros((0, 4), f32))


@case("shapes/zero_d")
def _():
    computes(lambda x, y: np.maximum(x * y, 0) + x, np.array(2.0, f32), np.array(-3.0, f32))


@case("shapes/zero_d_with_a_matrix")
def _():
    computes(lambda x, s: x * s, X34, np.array(1.5, f32))


@case("shapes/broadcast_mismatch")
def _():
    check(lambda x, y: x + y, X34, rand(5), kind=ShapeError, op="add", shapes=["f32[3,4]", "f32[5]"])


@case("shapes/broadcast_row_and_column")
def _():
    computes(lambda x, y: x - y, rand(3, 1), rand(1, 4))


@case("shapes/matmul_mismatch")
def _():
    check(lambda a, b: a @ b, X34, rand(5, 2), kind=ShapeError, op="matmul", shapes=["f32[3,4]", "f32[5,2]"])


@case("shapes/matmul_of_0d")
def _():
    check(lambda a: a @ a, np.array(2.0, f32), kind=ShapeError, op="matmul")


@case("shapes/reshape_impossible")
def _():
    check(lambda x: x.reshape(5, -1), X34, kind=ShapeError, op="reshape", shapes=["f32[3,4]"])


@case("shapes/reshape_huge")
def _():
    check(lambda x: x.reshape(2**62, -1), X34, kind=ShapeError, op="reshape", shapes=["f32[3,4]"])


@case("shapes/reshape_not_ints")
def _():
    check(lambda x: x.reshape("a", 4), X34, op="reshape")


@case("shapes/broadcast_to_huge")
def _():
    check(lambda x: np.broadcast_to(x, (2**31, 2**31)) + 1, np.ones(1, f32), op="broadcast_to")


@case("shapes/concatenate_mismatch")
def _():
    check(lambda x, y: np.concatenate([x, y]), X34, rand(3, 5), kind=ShapeError, op="concatenate",
          shapes=["f32[3,4]", "f32[3,5]"])


@case("shapes/concatenate_bad_axis")
def _():
    check(lambda x: np.concatenate([x, x], axis=2), X34, kind=ShapeError, op="concatenate", shapes=["f32[3,4]"])


@case("shapes/index_out_of_range")
def _():
    check(lambda x: x[:, 4], X34, kind=ShapeError, words=["index 4", "size 4"])


@case("shapes/too_many_indices")
def _():
    check(lambda x: x[0, 0, 0], X34, kind=ShapeError, words=["too many indices"])


@case("shapes/slice_step_zero")
def _():
    check(lambda x: x[::0], X34, kind=ShapeError, words=["step"])


@case("shapes/squeeze_non_unit_axis")
def _():
    check(lambda x: np.squeeze(x, axis=0), X34, kind=ShapeError, op="squeeze", shapes=["f32[3,4]"])


@case("shapes/expand_dims_out_of_range")
def _():
    check(lambda x: np.expand_dims(x, 5), X34, kind=ShapeError, op="expand_dims", shapes=["f32[3,4]"])


@case("shapes/transpose_bad_permutation")
def _():
    check(lambda x: x.transpose(0, 0), X34, kind=ShapeError, op="transpose", shapes=["f32[3,4]"])


@case("shapes/swapaxes_out_of_range")
def _():
    check(lambda x: np.swapaxes(x, 0, 5), X34, kind=ShapeError, op="np.swapaxes", shapes=["f32[3,4]"],
          words=["axis 5"])


@case("shapes/swapaxes_method_out_of_range")
def _():
    check(lambda x: x.swapaxes(-3, 0), X34, kind=ShapeError, op="swapaxes", shapes=["f32[3,4]"])


@case("shapes/moveaxis_out_of_range")
def _():
    check(lambda x: np.moveaxis(x, 0, 7), X34, kind=ShapeError, op="np.moveaxis", shapes=["f32[3,4]"])


@case("shapes/moveaxis_lengths_differ")
def _():
    check(lambda x: np.moveaxis(x, (0, 1), 0), X34, kind=ShapeError, op="np.moveaxis", shapes=["f32[3,4]"])


@case("shapes/stack_axis_out_of_range")
def _():
    check(lambda x: np.stack([x, x], axis=4), X34, kind=ShapeError, op="np.stack", shapes=["f32[3,4]"])


@case("shapes/split_uneven")
def _():
    check(lambda x: np.split(x, 2), X34, kind=ShapeError, op="np.split", shapes=["f32[3,4]"])


@case("shapes/split_axis_out_of_range")
def _():
    check(lambda x: np.split(x, 2, axis=3), X34, kind=ShapeError, op="np.split", shapes=["f32[3,4]"])


@case("shapes/sum_axis_out_of_range")
def _():
    check(lambda x: x.sum(axis=2), X34, kind=ShapeError, op="sum", shapes=["f32[3,4]"])


@case("shapes/sum_axis_not_an_int")
def _():
    check(lambda x: x.sum(axis=1.5), X34, kind=ShapeError, op="sum", shapes=["f32[3,4]"])


@case("shapes/var_axis_out_of_range")
def _():
    check(lambda x: np.var(x, axis=3), X34, kind=ShapeError, op="np.var", shapes=["f32[3,4]"])


WRONG_KIND_ARGUMENTS = {  # a parameter given a value of the wrong kind: ShapeError/DTypeError/...
    "reshape_none": (lambda x: x.reshape(None), "reshape"),
    "transpose_float": (lambda x: x.transpose(1.5), "transpose"),
    "expand_dims_none": (lambda x: np.expand_dims(x, None), "expand_dims"),
    "split_str": (lambda x: np.split(x, "a"), "np.split"),
    "array_split_too_many": (lambda x: np.array_split(x, 10**19), "np.array_split"),
    "size_axis_out_of_range": (lambda x: x * np.size(x, 5), "np.size"),
    "full_like_str": (lambda x: np.full_like(x, "a"), "np.full_like"),
    "var_ddof_none": (lambda x: np.var(x, ddof=None), "np.var"),
    "ravel_order_array": (lambda x: x.ravel(order=np.array([1])), "reshape"),
}
for _name, (_fn, _op) in WRONG_KIND_ARGUMENTS.items():
    def _wrong_kind_argument(fn=_fn, op=_op):
        check(fn, X34, op=op, shapes=["f32[3,4]"])
    case(f"shapes/wrong_kind_{_name}")(_wrong_kind_argument)


@case("shapes/where_mismatch")
def _():
    check(lambda x, y: np.where(x > 0, x, y), X34, rand(2), kind=ShapeError, op="where", shapes=["f32[2]"])


# ----------------------------------------------------------------------------------------------
# NaN, infinities and signed zeros (all supported ops: the C code must compute NumPy's values)
# ----------------------------------------------------------------------------------------------


SPECIALS = np.array([-0.0, 0.0, nan, inf, -inf, -0.5, 0.5, -1.0, 1.0, -2.5], f32)
ZEROS_FIRST, ZEROS_SECOND = np.array([-0.0, 0.0, -0.0, 0.0], f32), np.array([0.0, -0.0, -0.0, 0.0], f32)
SPECIAL_UNARY = {
    "relu": lambda x: np.maximum(x, 0), "relu_float": lambda x: np.maximum(x, 0.0),
    "relu_left": lambda x: np.maximum(0.0, x), "minimum_zero": lambda x: np.minimum(x, 0.0),
    "abs": lambda x: abs(x), "sign": np.sign, "floor": np.floor, "ceil": np.ceil, "negative": lambda x: -x,
    "reciprocal": lambda x: 1 / x, "log": np.log, "sqrt": np.sqrt, "exp": np.exp, "tanh": np.tanh,
    "sin": np.sin, "square": np.square, "max_reduction": lambda x: x.max(), "min_reduction": lambda x: x.min(),
    "sum": lambda x: x.sum(), "isnan": np.isnan, "clip": lambda x: np.clip(x, -1.0, 1.0),
    "where_positive": lambda x: np.where(x > 0, x, -x), "compare_equal": lambda x: x == 0,
}
for _name, _fn in SPECIAL_UNARY.items():
    def _special_unary(fn=_fn):
        computes(fn, SPECIALS)
    case(f"nan_inf_zeros/{_name}")(_special_unary)

SPECIAL_BINARY = {
    "maximum": np.maximum, "minimum": np.minimum, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b, "div": lambda a, b: a / b, "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b, "pow": lambda a, b: a ** b,
}
for _name, _fn in SPECIAL_BINARY.items():
    def _signed_zero_pairs(fn=_fn):
        computes(fn, ZEROS_FIRST, ZEROS_SECOND)
    case(f"nan_inf_zeros/{_name}_of_signed_zeros")(_signed_zero_pairs)

    def _special_grid(fn=_fn):
        computes(fn, SPECIALS[:, None], SPECIALS[None, :])
    case(f"nan_inf_zeros/{_name}_of_specials")(_special_grid)


@case("nan_inf_zeros/float16_overflow")
def _():
    computes(lambda x: x * 2 + x, np.array([65504, -65504, 1e-8, 0], f16))


@case("nan_inf_zeros/float64_specials")
def _():
    computes(lambda x: (np.maximum(x, 0.0), np.minimum(x, -0.0), np.sign(x), np.floor(x)), SPECIALS.astype(f64))


# ----------------------------------------------------------------------------------------------
# Integer edge cases
# ----------------------------------------------------------------------------------------------


I32_EDGES = np.array([-2**31, -2**31 + 1, -7, -1, 0, 1, 7, 2**31 - 1], i32)
I64_EDGES = np.array([-2**63, -2**63 + 1, -7, -1, 0, 1, 7, 2**63 - 1], i64)
INTEGER_BINARY = {
    "add_wraps": lambda a, b: a + b, "sub_wraps": lambda a, b: a - b, "mul_wraps": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b, "maximum": np.maximum,
    "true_divide": lambda a, b: a / b, "compare": lambda a, b: a < b,
}
for _name, _fn in INTEGER_BINARY.items():
    for _label, _edges in [("i32", I32_EDGES), ("i64", I64_EDGES)]:
        def _integer_grid(fn=_fn, edges=_edges):
            computes(fn, edges[:, None], edges[None, :])  # INT_MIN // -1, % 0, // 0 included
        case(f"integers/{_name}_{_label}")(_integer_grid)


@case("integers/negate_and_abs_of_int_min")
def _():
    computes(lambda x: (-x, abs(x), np.sign(x)), I32_EDGES)


@case("integers/power_positive")
def _():
    computes(lambda a, b: a ** b, np.array([-3, -1, 0, 2, 3, 7], i64), np.array([0, 1, 2, 3, 31, 40], i64))


@case("integers/power_negative_exponent")
def _():
    check(lambda a, b: a ** b, np.array([2, 3], i32), np.array([1, -1], i32), kind=MinicompRuntimeError,
          words=["negative"], at=None)


@case("integers/float_to_int_casts_of_nan_inf")
def _():
    computes(lambda x: x.astype(i32), np.array([nan, inf, -inf, 3e9, -3e9, 2.7, -2.7], f32))


@case("integers/float_to_int64_casts_of_nan_inf")
def _():
    computes(lambda x: x.astype(i64), np.array([nan, inf, -inf, 3e19, -3e19, 2.7, -2.7], f64))


@case("integers/int_to_float_rounding")
def _():
    computes(lambda x: x.astype(f32), np.array([2**24 + 1, -2**31, 2**31 - 1], i64))


@case("integers/sum_wraps")
def _():
    computes(lambda x: x.sum(), np.full(4, 2**30, i32))


@case("integers/mean_of_ints")
def _():
    computes(lambda x: x.mean(axis=0), np.array([[2**31 - 1, 1], [2**31 - 1, 2]], i32))


@case("integers/bool_arithmetic")
def _():
    computes(lambda x: (x + x, x * x, x.sum()), np.array([True, False, True]))


# ----------------------------------------------------------------------------------------------
# Memory layouts
# ----------------------------------------------------------------------------------------------


BIG = rand(6, 8)


@case("layouts/non_contiguous")
def _():
    computes(lambda x, y: x * y + 1, BIG[::2, ::2], BIG[::2, 1::2])


@case("layouts/negative_strides")
def _():
    computes(lambda x: np.exp(x) - x.sum(axis=0), BIG[::-1, ::-2])


@case("layouts/fortran_order")
def _():
    computes(lambda a, b: a @ b + 1, np.asfortranarray(BIG), np.asfortranarray(rand(8, 3)))


@case("layouts/transposed_view")
def _():
    computes(lambda a, b: a @ b, BIG.T, BIG)


@case("layouts/misaligned_view")
def _():
    raw = np.zeros(4 * 24 + 1, np.uint8)
    x = np.frombuffer(raw.data, dtype=f32, count=24, offset=1).reshape(4, 6)
    assert not x.flags.aligned
    computes(lambda x: x * 2 + np.tanh(x), x)


@case("layouts/misaligned_float64")
def _():
    raw = bytearray(8 * 10 + 3)
    x = np.frombuffer(raw, dtype=f64, count=10, offset=3)
    computes(lambda x: x.sum() + x, x)


@case("layouts/read_only")
def _():
    x = BIG.copy()
    x.setflags(write=False)
    computes(lambda x: x + 1, x)


@case("layouts/zero_stride_broadcast_view")
def _():
    computes(lambda x: x * 3, np.broadcast_to(rand(8), (6, 8)))


@case("layouts/aliased_same_array_twice")
def _():
    computes(lambda x, y: x * 2 + y, BIG, BIG)


@case("layouts/aliased_overlapping_views")
def _():
    computes(lambda x, y: x - y, BIG[:-1], BIG[1:])


@case("layouts/inputs_left_unchanged")
def _():
    x = BIG.copy()
    minicomp.jit(lambda x: np.exp(x) * 2)(x)
    if not np.array_equal(x, BIG):
        raise CaseFailure("the compiled function wrote into its argument")


@case("layouts/result_is_a_fresh_array")
def _():
    x = BIG.copy()
    result = minicomp.jit(lambda x: x)(x)
    result[...] = 0
    if not np.array_equal(x, BIG):
        raise CaseFailure("the result shares memory with the argument")


@case("layouts/big_endian_view")
def _():
    computes(lambda x: x + 1, BIG.astype(">f4")[::2])


# ----------------------------------------------------------------------------------------------
# Tracing: control flow, unsupported methods and attributes, closures, globals, iteration
# ----------------------------------------------------------------------------------------------


def _if_on_a_traced_value(x):
    if x.sum() > 0:
        return x
    return -x


def _while_on_a_traced_value(x):
    while (x > 1).any():
        x = x / 2
    return x


@case("tracing/if_on_a_traced_value")
def _():
    check(_if_on_a_traced_value, X34, kind=UnsupportedError, words=["bool()", "np.where"])


@case("tracing/while_on_a_traced_value")
def _():
    check(_while_on_a_traced_value, X34, kind=UnsupportedError, words=["bool()", "if/while", "np.where"])


@case("tracing/and_of_arrays")
def _():
    check(lambda x: (x > 0) and (x < 1), X34, kind=UnsupportedError, words=["bool()"])


@case("tracing/float_of_a_traced_value")
def _():
    check(lambda x: x * float(x.sum()), X34, kind=UnsupportedError, words=["float()"])


@case("tracing/python_control_flow_on_shapes")
def _():
    computes(lambda x: x.sum(axis=0) if x.shape[0] > 2 else x, X34)


UNSUPPORTED_ATTRIBUTES = {
    "argsort": lambda x: x.argsort(), "trace": lambda x: x.trace(), "nonzero": lambda x: x.nonzero(),
    "searchsorted": lambda x: x.searchsorted(0), "prod": lambda x: x.prod(), "sort": lambda x: x.sort(),
    "strides": lambda x: x + x.strides[0], "flags": lambda x: x.flags, "data": lambda x: x.data,
    "fill": lambda x: x.fill(0), "round": lambda x: x.round(), "view": lambda x: x.view(i32),
}
for _name, _fn in UNSUPPORTED_ATTRIBUTES.items():
    def _unsupported_attribute(fn=_fn, name=_name):
        check(fn, X34, kind=UnsupportedError, op=f"ndarray.{name}", shapes=["f32[3,4]"])
    case(f"tracing/attribute_{_name}")(_unsupported_attribute)


@case("tracing/hasattr_stays_false")
def _():
    def fn(x):
        return x * 2 if not hasattr(x, "strides") else x
    graph = minicomp.trace(fn, X34)
    if "mul" not in [n.op for n in graph.op_nodes()]:
        raise CaseFailure(f"hasattr(proxy, 'strides') is not False: {graph}")


@case("tracing/unknown_attribute")
def _():
    check(lambda x: x.no_such_attribute, X34, kind=UnsupportedError, words=["no_such_attribute"])


UNSUPPORTED_OPERATORS = {
    "lshift": (lambda x: x << 2, "<<"), "rshift": (lambda x: x >> 1, ">>"),
    "xor_of_ints": (lambda x: x ^ x, "^"), "invert_of_ints": (lambda x: ~x, "~"),
    "and_of_ints": (lambda x: x & 1, "&"), "round": (lambda x: round(x), "round()"),
}
for _name, (_fn, _symbol) in UNSUPPORTED_OPERATORS.items():
    def _unsupported_operator(fn=_fn, symbol=_symbol):
        check(fn, np.arange(6, dtype=i32), kind=UnsupportedError, op=symbol, shapes=["i32[6]"])
    case(f"tracing/operator_{_name}")(_unsupported_operator)


@case("tracing/xor_of_bools")
def _():
    computes(lambda a, b: (a ^ b, np.logical_xor(a, b), np.bitwise_xor(a, b)), np.array([1, 1, 0, 0], bool),
             np.array([1, 0, 1, 0], bool))


@case("tracing/divmod")
def _():
    computes(lambda x, y: divmod(x, y), np.array([7, -7, 7, -7, 0], i32), np.array([2, 2, -2, -2, 0], i32))


@case("tracing/complex_of_a_traced_value")
def _():
    check(lambda x: complex(x), np.ones((), f32), kind=UnsupportedError, words=["complex()"])


@case("tracing/in_operator")
def _():
    check(lambda x: x * (1.0 in x), X34, kind=UnsupportedError, words=["`in`"])


@case("tracing/boolean_mask_index")
def _():
    check(lambda x: x[x > 0], X34, kind=UnsupportedError, words=["boolean mask", "data-dependent shape",
                                                                   "np.where(mask, x, 0)"], shapes=["f32[3,4]"])


@case("tracing/integer_array_index")
def _():
    computes(lambda x: (x[[0, 2]], x[:, [-1]], x[[0, -1], [1, 1]], x[np.array([True, False, True])]), X34)


@case("tracing/traced_index_out_of_range")
def _():
    check(lambda x, i: x[i], X34, np.array([0, 3]), kind=IndexOutOfBoundsError, words=["out of bounds"], at=None)
    check(lambda x, i: x[i], X34, np.array([0, 3]), target="numpy", kind=IndexOutOfBoundsError,
          words=["index 3 is out of bounds for axis 0 with size 3"], at=None)


@case("tracing/constant_index_out_of_range")
def _():
    check(lambda x: x[[0, 5]], X34, kind=ShapeError, words=["index 5", "size 3"], shapes=["f32[3,4]"])


@case("tracing/float_index_array")
def _():
    check(lambda x: x[x[0]], X34, kind=UnsupportedError, words=["integer", "astype"], shapes=["f32[3,4]"])


@case("tracing/traced_index_of_a_closed_over_array")
def _():  # jit lifts the closed-over weights to an input: W[ids] is a gather of it
    weights = np.arange(10, dtype=f32).reshape(5, 2)
    check(lambda i: weights[i], np.array([1, -2]), compute=True)


@case("tracing/add_at_on_a_closed_over_array")
def _():  # a lifted array written in place is copied back into it after the call, as NumPy leaves it
    counts = np.zeros(3, f32)
    jitted = minicomp.jit(lambda i: (np.add.at(counts, i, 1.0), i * 2)[1])
    same_values(jitted(np.array([1, 2, 1])), np.array([2, 4, 2]))
    same_values(counts, np.array([0, 2, 1], f32))


@case("tracing/bool_scalar_index")
def _():
    check(lambda x: x[True], X34, kind=UnsupportedError, words=["advanced indexing"], shapes=["f32[3,4]"])


@case("tracing/str_index")
def _():
    check(lambda x: x["a"], X34, kind=UnsupportedError, words=["not an index"], shapes=["f32[3,4]"])


@case("tracing/item_assignment")
def _():
    def fn(x):
        y = x * 2
        y[0] = 1
        y[[1, 1], 0] += 5
        np.add.at(y, ([2, 2], 1), 1.0)
        return y
    computes(fn, X34)


@case("tracing/item_assignment_into_a_transpose")
def _():
    def fn(x):
        y = (x * 2).T
        y[0] = 1
        return y
    check(fn, X34, kind=UnsupportedError, words=["transposed", ".copy()"], shapes=["f32[4,3]"])


@case("tracing/inplace_on_an_argument")
def _():
    def fn(x):
        x += 1
        x[0] = 5
        return x * 2
    mine, theirs = X34.copy(), X34.copy()
    same_values(minicomp.jit(fn)(mine), fn(theirs))
    same_values(mine, theirs)  # the caller's array is left as NumPy leaves it


@case("tracing/inplace_on_a_read_only_argument")
def _():
    def fn(x):
        x[0] = 5
        return x * 2
    frozen = X34.copy()
    frozen.flags.writeable = False
    check(fn, frozen, kind=MinicompRuntimeError, words=["argument 'x'", "read-only"], at=None)


@case("tracing/out_into_a_numpy_array")
def _():
    def fn(x):
        total = np.zeros((3, 4), f32)
        total += x
        return total
    check(fn, X34, kind=UnsupportedError, words=["out=a", "a = a + t"])


@case("tracing/np_asarray_of_a_traced_value")
def _():
    check(lambda x: np.asarray(x) + 1, X34, kind=UnsupportedError, words=["conversion to a NumPy array"])


@case("tracing/unsupported_numpy_function")
def _():
    check(lambda x: np.sort(x), X34, kind=UnsupportedError, op="np.sort")


@case("tracing/unsupported_ufunc_method")
def _():
    check(lambda x: np.add.accumulate(x), X34, kind=UnsupportedError, op="np.add.accumulate")


@case("tracing/out_argument")
def _():
    check(lambda x: np.sum(x, out=np.zeros(())), X34, kind=UnsupportedError, words=["out"])


@case("tracing/returns_a_dict")
def _():
    computes(lambda x: {"y": x * 2, "rest": [x + 1, (x.sum(),)]}, X34)


@case("tracing/returns_an_object")
def _():
    check(lambda x: (x, object()), X34, kind=UnsupportedError, words=["returned a object", "tuples, lists and dicts"],
          at="call")


@case("tracing/returns_none")
def _():
    check(lambda x: None, X34, kind=UnsupportedError, words=["returned None", "no array"], at="call")


CLOSED = rand(4)
SCALE = 1.5


@case("tracing/closure_array")
def _():
    bias = rand(4, seed=3)
    computes(lambda x: x + bias, X34)


@case("tracing/global_array_and_scalar")
def _():
    computes(lambda x: x * CLOSED + SCALE, X34)


@case("tracing/default_argument_array")
def _():
    def fn(x, w=rand(4, 2, seed=5)):
        return x @ w
    computes(fn, X34)


@case("tracing/iterating_rows")
def _():
    computes(lambda x: sum(row * i for i, row in enumerate(x)), X34)


@case("tracing/list_of_rows")
def _():
    computes(lambda x: np.stack(list(x)[::-1]), X34)


@case("tracing/generator_function")
def _():
    def fn(x):
        yield x
    check(fn, X34, kind=UnsupportedError, words=["returned a generator"], at="call")


def _power(x, n):
    return x if n == 1 else x * _power(x, n - 1)


@case("tracing/recursion_on_a_static_value")
def _():
    computes(_power, X34, 4)


@case("tracing/global_random_draw_warns")
def _():
    def fn(x):
        return x + np.random.standard_normal(4).astype(f32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minicomp.jit(fn, target="numpy")(X34)
    messages = [str(w.message) for w in caught if issubclass(w.category, MinicompWarning)]
    if len(messages) != 1 or "fn" not in messages[0] or "argument" not in messages[0]:
        raise CaseFailure(f"expected one MinicompWarning naming fn, got {messages}")


@case("tracing/generator_random_draw_warns")
def _():
    rng = np.random.default_rng(0)

    def fn(x):
        return x * rng.random(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minicomp.jit(fn, target="numpy")(rand(4, dtype=f64))
    if not any(issubclass(w.category, MinicompWarning) and "'rng'" in str(w.message) for w in caught):
        raise CaseFailure(f"no MinicompWarning naming rng: {[str(w.message) for w in caught]}")


@case("tracing/no_warning_without_random_draws")
def _():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        minicomp.jit(lambda x: x * CLOSED, target="numpy")(X34)
    if any(issubclass(w.category, MinicompWarning) for w in caught):
        raise CaseFailure(f"a warning without random draws: {[str(w.message) for w in caught]}")


# ----------------------------------------------------------------------------------------------
# Cache faults (MINICOMP_CACHE_DIR): a result or a MinicompError naming the directory
# ----------------------------------------------------------------------------------------------


_counter = iter(range(10**6))


def _fresh_function():
    """A function whose C source no earlier case compiled (its constant differs)."""
    k = 1.0 + next(_counter) / 1024 + os.getpid() % 997 / 2**20
    return lambda x: x * k + 1


def with_cache_dir(path: str, check_dir_untouched: bool = False) -> None:
    """Compile and run a fresh function with the cache at ``path``: NumPy's result or a MinicompError."""
    before = set(os.listdir(path)) if check_dir_untouched else set()
    previous = os.environ.get("MINICOMP_CACHE_DIR")
    os.environ["MINICOMP_CACHE_DIR"] = path
    try:
        fn = _fresh_function()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            actual, error = attempt(lambda: minicomp.jit(fn)(X34))
    finally:
        os.environ["MINICOMP_CACHE_DIR"] = previous if previous is not None else ""
        if previous is None:
            del os.environ["MINICOMP_CACHE_DIR"]
    if error is not None:
        if not isinstance(error, MinicompError):
            raise CaseFailure(f"foreign exception {type(error).__module__}.{type(error).__name__}: {error}")
        if os.path.basename(path.rstrip("/")) not in str(error):
            raise CaseFailure(f"the error does not name the cache directory {path}: {error}")
        return
    same_values(actual, numpy_result(fn, (X34,)))
    if check_dir_untouched and set(os.listdir(path)) != before:
        raise CaseFailure(f"minicomp used an unsafe cache directory {path}: wrote {set(os.listdir(path)) - before}")


@case("cache/dir_is_a_file")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache-file")
        open(path, "w").close()
        with_cache_dir(path)


@case("cache/dir_under_a_file")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        open(os.path.join(tmp, "file"), "w").close()
        with_cache_dir(os.path.join(tmp, "file", "cache"))


@case("cache/unwritable_dir")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "read-only-cache")
        os.mkdir(path, 0o500)
        try:
            with_cache_dir(path)
        finally:
            os.chmod(path, 0o700)


@case("cache/dir_on_a_read_only_filesystem")
def _():
    with_cache_dir("/proc/minicomp-cache")


@case("cache/world_writable_dir")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shared-cache")
        os.mkdir(path)
        os.chmod(path, 0o777)
        with_cache_dir(path, check_dir_untouched=True)


@case("cache/symlinked_dir")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        os.mkdir(os.path.join(tmp, "real"), 0o700)
        os.symlink(os.path.join(tmp, "real"), os.path.join(tmp, "link"))
        with_cache_dir(os.path.join(tmp, "link"))


@case("cache/dangling_symlink_dir")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(os.path.join(tmp, "missing"), os.path.join(tmp, "link"))
        with_cache_dir(os.path.join(tmp, "link"))


@case("cache/corrupted_entry")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cache")
        os.mkdir(path, 0o700)
        previous = os.environ.get("MINICOMP_CACHE_DIR")
        os.environ["MINICOMP_CACHE_DIR"] = path
        try:
            fn = _fresh_function()
            minicomp.jit(fn)(X34)
            for name in os.listdir(path):  # every file garbled in place (a new inode for the library)
                full = os.path.join(path, name)
                if os.path.isfile(full) and not name.endswith(".lock"):
                    os.replace(full, full + ".old")
                    with open(full, "wb") as f:
                        f.write(b"\x7fELF garbage" * 7)
            actual, error = attempt(lambda: minicomp.jit(fn)(X34))
        finally:
            if previous is None:
                del os.environ["MINICOMP_CACHE_DIR"]
            else:
                os.environ["MINICOMP_CACHE_DIR"] = previous
        if error is not None and not isinstance(error, MinicompError):
            raise CaseFailure(f"foreign exception {type(error).__name__}: {error}")
        if error is None:
            same_values(actual, numpy_result(fn, (X34,)))


# ----------------------------------------------------------------------------------------------
# Hostile names: user text that reaches the generated C must not become code
# ----------------------------------------------------------------------------------------------


MARKER = "minicomp-injected-marker"
INJECTION = ('*/ int open(const char *, int, ...); __attribute__((constructor)) static void mc_injected(void) '
             f'{{ open("{MARKER}", 0101, 0600); }} /*')


def no_injection(run: Callable[[], object], expected) -> None:
    """``run()`` (in a fresh directory) gives ``expected`` and creates no marker file."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                actual, error = attempt(run)
            injected = os.path.exists(MARKER)
        finally:
            os.chdir(cwd)
    if injected:
        raise CaseFailure("user text became C code: the injected constructor ran")
    if error is not None:
        raise CaseFailure(f"a legal name failed: {type(error).__name__}: {str(error)[:500]}")
    same_values(actual, expected)


@case("hostile_names/function_name")
def _():
    fn = _fresh_function()
    fn.__name__ = fn.__qualname__ = INJECTION
    no_injection(lambda: minicomp.jit(fn)(X34), numpy_result(fn, (X34,)))


@case("hostile_names/function_name_with_newlines")
def _():
    fn = _fresh_function()
    fn.__name__ = "f\n#include </dev/zero>\n" + INJECTION
    no_injection(lambda: minicomp.jit(fn)(X34), numpy_result(fn, (X34,)))


@case("hostile_names/unicode_function_name")
def _():
    fn = _fresh_function()
    fn.__name__ = "modèle_∑"
    no_injection(lambda: minicomp.jit(fn)(X34), numpy_result(fn, (X34,)))


@case("hostile_names/trace_name")
def _():
    fn = _fresh_function()
    graph = minicomp.trace(fn, X34, name=INJECTION)
    no_injection(lambda: minicomp.compile(graph)(X34)[0], numpy_result(fn, (X34,)))


@case("hostile_names/loc_in_graph_text")
def _():
    fn = _fresh_function()
    text = re.sub(r"# .*", lambda m: "# " + INJECTION.replace("\n", " "), str(minicomp.trace(fn, X34)))
    no_injection(lambda: minicomp.compile(minicomp.Graph.parse(text))(X34)[0], numpy_result(fn, (X34,)))


def _load_module(directory: str, source: str):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "net.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"net_{next(_counter)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@case("hostile_names/source_path_with_comment_end")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        k = 2.0 + next(_counter) / 1024
        module = _load_module(os.path.join(tmp, "models*"), f"def net(x):\n    return x * {k!r} - 1\n")
        no_injection(lambda: minicomp.jit(module.net)(X34), X34 * k - 1)


@case("hostile_names/source_path_with_c_code")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        k = 3.0 + next(_counter) / 1024
        module = _load_module(os.path.join(tmp, *INJECTION.split("/")), f"def net(x):\n    return x * {k!r}\n")
        no_injection(lambda: minicomp.jit(module.net)(X34), X34 * k)


# ----------------------------------------------------------------------------------------------
# Errors raised inside compiled code belong to the call that raised them
# ----------------------------------------------------------------------------------------------


@case("runtime/per_call_status_under_threads")
def _():
    fast = minicomp.jit(lambda a, b: a ** b)
    good, bad = np.arange(200_000, dtype=i64) % 7, np.full(200_000, 2, i64)
    negative = bad.copy()
    negative[-1] = -1  # found at the end: the call overlaps the good calls of the other threads
    fast(good, bad)
    problems = []

    def worker(index):
        for _ in range(30):
            if index % 2:
                try:
                    fast(good, negative)
                    problems.append("a bad call returned")
                except MinicompError:
                    pass
            else:
                result = attempt(lambda: fast(good, bad))
                if result[1] is not None or not np.array_equal(result[0], good ** bad):
                    problems.append(f"a good call failed: {result[1]}")
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if problems:
        raise CaseFailure(f"{len(problems)} of 180 calls: {problems[0]}")


# ----------------------------------------------------------------------------------------------
# The worker
# ----------------------------------------------------------------------------------------------


def run_case(name: str) -> tuple[bool, str]:
    """Run one case; ``(passed, what went wrong)``."""
    try:
        with np.errstate(all="ignore"):
            CASES[name]()
        return True, ""
    except CaseFailure as exc:
        return False, str(exc)
    except Exception:  # noqa: BLE001 (a bug in the case or an escape from minicomp: reported)
        return False, "the case raised:\n" + traceback.format_exc()[-3000:]


def worker() -> None:
    """Answer case names from stdin with JSON lines on the original stdout."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what cases print (Python or C) must not mix with the answers
    sys.stdout = sys.stderr
    for line in sys.stdin:
        name = line.strip()
        if name:
            passed, detail = run_case(name)
            answers.write(json.dumps({"case": name, "ok": passed, "detail": detail}) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    elif sys.argv[1:] == ["--list"]:
        print("\n".join(CASES))
    else:
        failed = [(name, detail) for name in (sys.argv[1:] or CASES) for ok, detail in [run_case(name)] if not ok]
        for name, detail in failed:
            print(f"FAIL {name}: {detail}\n")
        print(f"{len(CASES)} cases, {len(failed)} failed")
