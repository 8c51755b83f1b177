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


def test_where_needs_a_bool_condition():
    line = here() + 1
    message = error_of(lambda x: np.where(x, x, 0), zeros(3), kind=DTypeError)
    assert message.startswith("where:") and "bool" in message and "float32" in message
    assert_points_at(message, line)


def test_a_ufunc_numpy_refuses_for_the_dtype():
    line = here() + 1
    message = error_of(lambda x: np.sign(x > 0), zeros(3), kind=DTypeError)
    assert message.startswith("sign:") and "bool" in message
    assert_points_at(message, line)


# ----------------------------------------------------------------------------------------------
# Unsupported functions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, name", [
    (lambda x: np.einsum("i->", x), "np.einsum"), (lambda x: np.cumsum(x), "np.cumsum"),
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
