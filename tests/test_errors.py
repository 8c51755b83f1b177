"""Error messages point at the user's code: they name the op, the shapes as the user passed
them and the user's ``file:line``; every error minicomp raises on purpose is a ``MinicompError``.
"""

import inspect
import os
import re

import numpy as np
import pytest

import minicomp
from minicomp import errors, nn
from minicomp.errors import (CompileError, DTypeError, GraphError, MinicompError,
                             MinicompRuntimeError, ParseError, ShapeError, UnsupportedError)

f32 = np.float32
pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")


def here() -> int:
    """The line number of the caller."""
    return inspect.currentframe().f_back.f_lineno


def assert_points_at(message: str, line: int) -> None:
    """``message`` ends its location with ``(at THIS_FILE:line)``."""
    found = re.findall(r"\(at (.+?):(\d+)\)", message)
    assert found, f"no (at file:line) in {message!r}"
    path, lineno = found[-1]
    assert os.path.abspath(path) == os.path.abspath(__file__), message
    assert int(lineno) == line, message


def error_of(fn, *args, kind=MinicompError) -> str:
    """Trace ``fn``; return the message of the ``kind`` error it raises."""
    with pytest.raises(kind) as info:
        minicomp.trace(fn, *args)
    return str(info.value)


def zeros(*shape, dtype=f32):
    return np.zeros(shape, dtype)


# ----------------------------------------------------------------------------------------------
# The hierarchy
# ----------------------------------------------------------------------------------------------


def test_every_error_class_is_a_minicomp_error():
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, Exception) and not issubclass(c, Warning)]
    assert len(classes) >= 8
    assert all(issubclass(c, MinicompError) for c in classes)


def test_the_warning_class_is_a_user_warning_not_an_error():
    assert issubclass(errors.MinicompWarning, UserWarning)
    assert not issubclass(errors.MinicompWarning, MinicompError)


@pytest.mark.parametrize("cls, builtin", [
    (ShapeError, ValueError), (DTypeError, TypeError), (UnsupportedError, NotImplementedError),
    (MinicompRuntimeError, RuntimeError), (ParseError, GraphError), (CompileError, MinicompError),
])
def test_errors_are_also_the_builtin_exception_python_users_expect(cls, builtin):
    assert issubclass(cls, builtin)


# ----------------------------------------------------------------------------------------------
# Shape errors
# ----------------------------------------------------------------------------------------------


def test_broadcast_mismatch_names_op_shapes_and_line():
    def fn(x, y):
        return x + y

    message = error_of(fn, zeros(3, 4), zeros(5), kind=ShapeError)
    assert "add" in message and "(3, 4)" in message and "(5,)" in message
    assert "f32[3,4]" in message and "f32[5]" in message
    assert_points_at(message, fn.__code__.co_firstlineno + 1)


def test_matmul_mismatch():
    line = here() + 1
    message = error_of(lambda x, w: np.maximum(x @ w, 0), zeros(3, 4), zeros(5, 2), kind=ShapeError)
    assert message.startswith("matmul:")
    assert "(3, 4)" in message and "(5, 2)" in message and "4" in message and "5" in message
    assert_points_at(message, line)


def test_matmul_of_a_scalar():
    message = error_of(lambda x: x @ 2.0, zeros(3, 4), kind=ShapeError)
    assert "matmul" in message and "scalar" in message


def test_impossible_reshape():
    line = here() + 1
    message = error_of(lambda x: x.reshape(5, -1), zeros(3, 4), kind=ShapeError)
    assert message.startswith("reshape:")
    assert "(5, -1)" in message and "12" in message and "f32[3,4]" in message
    assert_points_at(message, line)
    message = error_of(lambda x: np.reshape(x, (2, 7)), zeros(3, 4), kind=ShapeError)
    assert "(2, 7)" in message


def test_concatenate_mismatch():
    line = here() + 1
    message = error_of(lambda x, y: np.concatenate([x, y]), zeros(3, 4), zeros(3, 5), kind=ShapeError)
    assert message.startswith("concatenate:")
    assert "(3, 4)" in message and "(3, 5)" in message
    assert_points_at(message, line)


def test_stack_mismatch():
    line = here() + 1
    message = error_of(lambda x: np.stack([x, x[1:]]), zeros(3, 4), kind=ShapeError)
    assert "np.stack" in message and "(3, 4)" in message and "(2, 4)" in message
    assert_points_at(message, line)


def test_bad_axis():
    line = here() + 1
    message = error_of(lambda x: x.sum(axis=2), zeros(3, 4), kind=ShapeError)
    assert "sum" in message and "axis 2" in message and "f32[3,4]" in message
    assert_points_at(message, line)


def test_conv2d_channel_mismatch_traced():
    line = here() + 1
    message = error_of(lambda x, w: nn.conv2d(x, w), zeros(1, 3, 8, 8), zeros(4, 2, 3, 3), kind=ShapeError)
    assert message.startswith("conv2d:")
    assert "3 channels" in message and "f32[1,3,8,8]" in message and "f32[4,2,3,3]" in message
    assert_points_at(message, line)


def test_conv2d_channel_mismatch_eager():
    line = here() + 2
    with pytest.raises(ShapeError) as info:
        nn.conv2d(zeros(1, 3, 8, 8), zeros(4, 2, 3, 3))
    message = str(info.value)
    assert message.startswith("conv2d:") and "3 channels" in message and "f32[4,2,3,3]" in message
    assert_points_at(message, line)


def test_index_out_of_bounds():
    line = here() + 1
    message = error_of(lambda x: x[:, 4], zeros(3, 4), kind=ShapeError)
    assert "index 4" in message and "axis 1" in message and "size 4" in message
    assert_points_at(message, line)


# ----------------------------------------------------------------------------------------------
# DType errors
# ----------------------------------------------------------------------------------------------


def test_negating_a_bool_array():
    line = here() + 1
    message = error_of(lambda x: -(x > 0), zeros(3), kind=DTypeError)
    assert message.startswith("neg:") and "bool" in message and "~" in message
    assert_points_at(message, line)


@pytest.mark.parametrize("dtype", [np.uint8, np.complex64, np.int8, np.uint32])
def test_an_argument_of_an_unsupported_dtype_names_the_argument(dtype):
    line = here() + 2
    with pytest.raises(DTypeError) as info:
        minicomp.trace(lambda x: np.exp(x), np.zeros(3, dtype))
    message = str(info.value)
    assert "'x'" in message and str(np.dtype(dtype)) in message and "f32" in message
    assert_points_at(message, line)


def test_casting_to_an_unsupported_dtype():
    line = here() + 1
    message = error_of(lambda x: np.exp(x.astype(np.complex64)), zeros(3), kind=DTypeError)
    assert "astype" in message and "complex64" in message and "f32[3]" in message
    assert_points_at(message, line)


def test_a_closed_over_array_of_an_unsupported_dtype():
    c = np.ones(3, np.uint8)
    line = here() + 1
    message = error_of(lambda x: np.exp(x) + c, zeros(3), kind=DTypeError)
    assert "constant" in message and "uint8" in message
    assert_points_at(message, line)


def test_where_op_needs_a_bool_condition_and_np_where_reads_any_as_numpy():
    graph = minicomp.Graph("g")
    x = graph.add_input("x", minicomp.TensorType((3,), f32))
    with pytest.raises(DTypeError, match="where.*bool.*float32"):
        graph.add_op("where", [x, x, x])
    graph = minicomp.trace(lambda x: np.where(x, x, 0), zeros(3))  # NumPy: nonzero is true
    assert [n.op for n in graph.op_nodes()] == ["ne", "where"]


def test_a_ufunc_numpy_refuses_for_the_dtype():
    line = here() + 1
    message = error_of(lambda x: np.sign(x > 0), zeros(3), kind=DTypeError)
    assert message.startswith("sign:") and "bool" in message
    assert_points_at(message, line)


# ----------------------------------------------------------------------------------------------
# Unsupported functions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, name", [
    (lambda x: np.unique(x), "np.unique"), (lambda x: np.argsort(x), "np.argsort"),
    (lambda x: np.fft.fft(x), "np.fft.fft"), (lambda x: np.sort(x), "np.sort"),
])
def test_an_unsupported_numpy_function_names_itself_and_lists_the_supported(fn, name):
    message = error_of(fn, zeros(4), kind=UnsupportedError)
    assert message.startswith(f"{name} is not supported")
    for supported in ("np.sum", "np.where", "np.concatenate", "np.transpose", "np.exp"):
        assert supported in message
    assert_points_at(message, fn.__code__.co_firstlineno)


def test_an_unsupported_ufunc_names_itself_and_lists_the_supported():
    line = here() + 1
    message = error_of(lambda x: np.arctan2(x, x), zeros(4), kind=UnsupportedError)
    assert message.startswith("np.arctan2 is not supported")
    assert "np.exp" in message and "np.maximum" in message
    assert_points_at(message, line)


# ----------------------------------------------------------------------------------------------
# Calling compiled functions with the wrong arguments
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def graph():
    return minicomp.trace(lambda x, w: x @ w, zeros(2, 3), zeros(3, 4))


@pytest.mark.parametrize("args, words", [
    ((zeros(2, 3),), ["takes 2 argument(s)", "%x, %w", "got 1"]),
    ((zeros(2, 3), zeros(3, 4), zeros(1)), ["takes 2", "got 3"]),
    ((zeros(2, 3), zeros(4, 4)), ["%w", "f32[3,4]", "got f32[4,4]"]),
    ((zeros(2, 3, dtype=np.float64), zeros(3, 4)), ["%x", "f32[2,3]", "got f64[2,3]"]),
    ((zeros(2, 3, dtype=np.uint8), zeros(3, 4)), ["%x", "f32[2,3]", "uint8"]),
])
def test_interpreter_with_wrong_arguments(graph, args, words):
    with pytest.raises(MinicompRuntimeError) as info:
        minicomp.interpret(graph, *args)
    for word in words:
        assert word in str(info.value)


def test_jit_with_the_wrong_number_of_arguments():
    fast = minicomp.jit(lambda x, w: x @ w)
    with pytest.raises(MinicompRuntimeError, match="missing a required argument: 'w'"):
        fast(zeros(2, 3))
    with pytest.raises(MinicompRuntimeError, match="too many"):
        fast(zeros(2, 3), zeros(3, 4), zeros(4))
    with pytest.raises(MinicompRuntimeError, match="unexpected keyword argument 'y'"):
        fast(zeros(2, 3), zeros(3, 4), y=zeros(3, 4))
    assert fast.cache_size == 0


def test_a_compiled_signature_run_with_wrong_arguments():
    fast = minicomp.jit(lambda x, w: x @ w)
    compiled = fast.compiled_for(zeros(2, 3), zeros(3, 4))
    with pytest.raises(MinicompRuntimeError, match=r"%w .*f32\[3,4\], got f32\[3,5\]"):
        compiled.run(zeros(2, 3), zeros(3, 5))
    with pytest.raises(MinicompRuntimeError, match=r"%x .*f32\[2,3\], got i64\[2,3\]"):
        compiled.run(zeros(2, 3, dtype=np.int64), zeros(3, 4))


def test_jit_reports_shape_errors_at_the_users_line():
    def model(x, w):
        return x @ w

    fast = minicomp.jit(model)
    with pytest.raises(ShapeError) as info:
        fast(zeros(2, 3), zeros(4, 4))
    assert "matmul" in str(info.value)
    assert_points_at(str(info.value), model.__code__.co_firstlineno + 1)


# ----------------------------------------------------------------------------------------------
# ndarray subclasses: refused wherever they enter, naming what and where
# ----------------------------------------------------------------------------------------------


class Overriding(np.ndarray):
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return "taken over"


SUBCLASSES = {
    "matrix": (lambda: np.matrix(np.ones((2, 2), f32)), "np.matrix", "np.asarray"),
    "masked": (lambda: np.ma.masked_array(np.ones((2, 2), f32), mask=[[0, 1], [0, 0]]), "MaskedArray", "filled"),
    "recarray": (lambda: np.rec.array(np.zeros(2, dtype=[("a", f32)])), "recarray", "each field"),
    "unknown": (lambda: np.ones((2, 2), f32).view(Overriding), "Overriding", "np.asarray"),
}


@pytest.mark.parametrize("kind", SUBCLASSES)
def test_an_ndarray_subclass_argument_is_refused(kind):
    make, name, advice = SUBCLASSES[kind]
    for call in (lambda: minicomp.trace(lambda a: a * a, make()), lambda: minicomp.jit(lambda a: a * a)(make())):
        line = here() - 1
        with pytest.raises(UnsupportedError) as info:
            call()
        message = str(info.value)
        assert "argument 'a'" in message and name in message and advice in message
        assert_points_at(message, line)


def test_a_closed_over_matrix_is_refused_before_its_own_operators_run():
    m = np.matrix(np.ones((2, 2)))
    line = here() + 1
    message = error_of(lambda x: m * x, np.ones((2, 2)), kind=UnsupportedError)
    assert "closure variable 'm'" in message and "np.matrix" in message and "elementwise" in message
    assert_points_at(message, line)


MASKED_GLOBAL = np.ma.masked_array(np.ones(3), mask=[0, 1, 0])


def test_a_global_masked_array_is_refused():
    line = here() + 1
    message = error_of(lambda x: x + MASKED_GLOBAL, np.ones(3), kind=UnsupportedError)
    assert "global 'MASKED_GLOBAL'" in message and "mask" in message
    assert_points_at(message, line)


def _uses_matrix(x):
    return x * np.matrix(np.ones((2, 2)))


def test_a_matrix_made_inside_a_helper_is_refused_at_its_line():
    message = error_of(_uses_matrix, np.ones((2, 2)), kind=UnsupportedError)
    assert message.startswith("mul:") and "np.matrix" in message
    assert_points_at(message, _uses_matrix.__code__.co_firstlineno + 1)


def test_a_subclass_is_refused_by_an_already_compiled_signature():
    fast = minicomp.jit(lambda a: a * 2, target="numpy")
    fast(np.ones(3))
    with pytest.raises(UnsupportedError, match="argument ('a'|%a) .*MaskedArray"):
        fast(np.ma.masked_array(np.ones(3), mask=[0, 1, 0]))
    graph = minicomp.trace(lambda a: a * 2, np.ones((2, 2)))
    with pytest.raises(UnsupportedError, match="np.matrix"):
        minicomp.interpret(graph, np.matrix(np.ones((2, 2))))


def test_a_memmap_is_a_plain_array(tmp_path):
    weights = np.memmap(tmp_path / "w.bin", dtype=f32, mode="w+", shape=(3, 2))
    weights[:] = 2
    assert np.array_equal(minicomp.jit(lambda x, w: x @ w)(np.ones((2, 3), f32), weights), np.full((2, 2), 6, f32))


# ----------------------------------------------------------------------------------------------
# Methods, attributes and operators the tracer lacks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, name", [
    (lambda x: x.argsort(), "ndarray.argsort"), (lambda x: x.nonzero(), "ndarray.nonzero"),
    (lambda x: x.strides, "ndarray.strides"), (lambda x: x.flags, "ndarray.flags"),
    (lambda x: x.trace(), "ndarray.trace"), (lambda x: x.no_such_thing, "no_such_thing"),
])
def test_a_missing_attribute_names_itself_the_array_and_the_line(fn, name):
    message = error_of(fn, zeros(3, 4), kind=errors.UnsupportedAttributeError)
    assert message.startswith(f"{name}" if "." in name else f"x.{name}") and "f32[3,4]" in message
    assert_points_at(message, fn.__code__.co_firstlineno)


def test_hasattr_on_a_traced_array_is_false_not_an_error():
    graph = minicomp.trace(lambda x: x * 2 if not hasattr(x, "strides") else x, zeros(3))
    assert [n.op for n in graph.op_nodes()] == ["mul"]
    assert issubclass(errors.UnsupportedAttributeError, AttributeError)


@pytest.mark.parametrize("fn, symbol, advice", [
    (lambda x: x << 2, "<<", "x * 2**k"), (lambda x: 1 << x, "<<", "x * 2**k"),
    (lambda x: x >> 1, ">>", "x // 2**k"), (lambda x: round(x), "round()", "rounding"),
    (lambda x: x ^ x, "^", "bool"), (lambda x: x & 1, "&", "bool"),
])
def test_an_operator_the_tracer_lacks_names_itself_the_operands_and_the_line(fn, symbol, advice):
    message = error_of(fn, np.zeros(3, np.int32), kind=UnsupportedError)
    assert symbol in message and "i32[3]" in message and advice in message
    assert_points_at(message, fn.__code__.co_firstlineno)


@pytest.mark.parametrize("fn, words", [
    (lambda x: complex(x), "complex()"), (lambda x: x * (1.0 in x), "`in`"),
])
def test_operators_that_need_values_say_so(fn, words):
    message = error_of(fn, zeros(3), kind=UnsupportedError)
    assert words in message and "do not exist while tracing" in message
    assert_points_at(message, fn.__code__.co_firstlineno)


# ----------------------------------------------------------------------------------------------
# Axes out of range name the op, the shape and the line
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, op", [
    (lambda x: np.swapaxes(x, 0, 5), "np.swapaxes"), (lambda x: x.swapaxes(-3, 0), "swapaxes"),
    (lambda x: np.moveaxis(x, 0, 7), "np.moveaxis"), (lambda x: np.moveaxis(x, (0, 1), 0), "np.moveaxis"),
    (lambda x: np.stack([x, x], axis=4), "np.stack"), (lambda x: np.split(x, 2, axis=3), "np.split"),
    (lambda x: np.split(x, 2), "np.split"), (lambda x: np.var(x, axis=3), "np.var"),
    (lambda x: x.sum(axis=1.5), "sum"), (lambda x: np.expand_dims(x, 5), "expand_dims"),
    (lambda x: x.reshape("a", 4), "reshape"),
])
def test_axis_errors_name_the_op_the_shape_and_the_line(fn, op):
    message = error_of(fn, zeros(3, 4), kind=ShapeError)
    assert message.startswith(f"{op}:") and "f32[3,4]" in message
    assert_points_at(message, fn.__code__.co_firstlineno)


# ----------------------------------------------------------------------------------------------
# Arguments that are not arrays
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [{"w": zeros(4, 2), "f": bytearray(2)}, [zeros(4, 2), bytearray(2)],
                                   (1, bytearray(2))])
def test_a_container_holding_an_unhashable_leaf_is_refused_naming_the_parameter(value):
    line = here() + 2
    with pytest.raises(UnsupportedError) as info:
        minicomp.jit(lambda x, params: x, target="numpy")(zeros(3, 4), value)
    message = str(info.value)
    assert "argument 'params' of lambda is or holds a bytearray" in message and "hashable" in message
    assert_points_at(message, line)


def test_an_unhashable_static_argument_is_refused_naming_the_parameter():
    class Settings:
        __hash__ = None

    line = here() + 2
    with pytest.raises(UnsupportedError) as info:
        minicomp.jit(lambda x, settings: x, target="numpy")(zeros(3), Settings())
    message = str(info.value)
    assert "argument 'settings'" in message and "Settings" in message and "hashable" in message
    assert_points_at(message, line)


def test_static_values_that_numpy_uses_as_arrays_raise_numpys_error_with_a_note():
    with pytest.raises(TypeError) as info:  # np.exp(None) raises this TypeError in plain NumPy too
        minicomp.jit(lambda x: np.exp(x), target="numpy")(None)
    assert "static (non-array) argument(s) x=None" in "".join(getattr(info.value, "__notes__", ["x=None"]))


def test_a_static_value_next_to_a_traced_array_names_the_op():
    line = here() + 1
    message = error_of(lambda x, y: x + y, zeros(3), None, kind=UnsupportedError)
    assert message.startswith("add: cannot use a NoneType (None) as an array operand")
    assert_points_at(message, line)


def test_trace_with_the_wrong_number_of_arguments():
    line = here() + 2
    with pytest.raises(MinicompRuntimeError) as info:
        minicomp.trace(lambda x, w: x @ w, zeros(2, 3))
    assert "missing a required argument: 'w'" in str(info.value)
    assert_points_at(str(info.value), line)


@pytest.mark.parametrize("arg, words", [([[1.0], [1.0, 2.0]], "not an array"), (None, "got NoneType None"),
                                        ("abc", "got str 'abc'")])
def test_a_compiled_signature_run_with_something_that_is_not_an_array(graph, arg, words):
    with pytest.raises(MinicompRuntimeError, match=words):
        minicomp.interpret(graph, arg, zeros(3, 4))


def test_jit_of_something_that_is_not_a_function():
    with pytest.raises(UnsupportedError, match="compiles a function; got 42"):
        minicomp.jit(42)
