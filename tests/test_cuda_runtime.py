"""The CUDA runtime's host side, which runs without a GPU: reading ``__cuda_array_interface__``,
checking device arguments against the graph, and the errors when pycuda or a GPU is missing.
(The runs on a GPU are in the ``cuda``-marked tests, which skip where there is none.)"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import minicomp
from minicomp import TensorType
from minicomp.errors import MinicompError, MinicompRuntimeError
from minicomp.ir.interpreter import check_argument
from minicomp.ir.symbolic import Sym
from minicomp.runtime import cuda
from minicomp.runtime.cuda import DeviceView, device_view


class DeviceArray:
    """An object that says where a device array is, as torch and CuPy tensors do."""

    def __init__(self, shape, typestr="<f4", strides=None, pointer=0x7F0000000000, **extra):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "strides": strides,
                                         "data": (pointer, False), "version": 3, **extra}


def test_a_contiguous_device_array_is_read_in_place():
    assert device_view(DeviceArray((2, 3))) == DeviceView(0x7F0000000000, (2, 3), np.dtype(np.float32))
    assert device_view(DeviceArray((2, 3), "<f8", strides=(24, 8))).dtype == np.float64
    assert device_view(DeviceArray((4, 1, 3), strides=(12, 999, 4))) is not None  # a length-1 axis: any stride
    assert device_view(DeviceArray((0, 5), strides=(4, 4), pointer=0)).nbytes == 0
    assert device_view(np.zeros(3)) is None and device_view([1, 2]) is None


@pytest.mark.parametrize("array, why", [
    (DeviceArray((3, 2), strides=(4, 12)), "not contiguous.*contiguous"),  # a transpose
    (DeviceArray((4, 4), strides=(32, 4)), "not contiguous"),              # every other row
    (DeviceArray((3,), ">f4"), "byte-swapped"),
    (DeviceArray((3,), mask=DeviceArray((3,), "|b1")), "masked"),
])
def test_a_device_array_minicomp_cannot_read_in_place_is_refused(array, why):
    with pytest.raises(MinicompRuntimeError, match=why):
        device_view(array)


def test_device_arguments_are_checked_against_the_graph_and_bind_sizes():
    T = Sym.symbol("T")
    graph = minicomp.trace(lambda x: x * 2, TensorType((T, 4), "f32"))
    [node] = graph.inputs
    sizes = {}
    check_argument(graph, node, cuda._Described(device_view(DeviceArray((7, 4)))), sizes, described=True)
    assert sizes == {"T": 7}
    with pytest.raises(MinicompRuntimeError, match=r"must be f32\[T,4\].*T = 7"):
        check_argument(graph, node, cuda._Described(device_view(DeviceArray((7, 5)))), {"T": 7}, described=True)
    with pytest.raises(MinicompRuntimeError, match=r"must be f32"):
        check_argument(graph, node, cuda._Described(device_view(DeviceArray((7, 4), "<f8"))), {}, described=True)


def test_without_pycuda_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MinicompError, match=r"needs pycuda.*pip install 'minicomp\[cuda\]'"):
        cuda.cuda_driver()


def test_row_major_strides():
    assert cuda._row_major((2, 3), (12, 4), 4)
    assert not cuda._row_major((2, 3), (4, 8), 4)
    assert cuda._row_major((2, 0), (4, 8), 4)


# -- device arrays as jit arguments ---------------------------------------------------------------------

class HostTensor:
    """Like a torch tensor in host memory: the class has the property, the instance raises."""

    @property
    def __cuda_array_interface__(self):
        raise AttributeError("Can't get __cuda_array_interface__ on non-CUDA tensor type")

    def __hash__(self):
        return 7


def test_a_device_array_is_an_array_leaf_keyed_by_shape_and_dtype():
    from minicomp.frontend.pytree import ARRAY, STATIC, device_array_type, flatten

    x, arrays = DeviceArray((2, 3), "<f8"), []
    assert device_array_type(x) == ((2, 3), np.dtype(np.float64))
    key = flatten({"x": x, "n": 3}, arrays)
    assert arrays == [x] and key[2][0] == (ARRAY, (2, 3), np.dtype(np.float64), DeviceArray)
    assert flatten(DeviceArray((2, 3), "<f8", pointer=0x7F00000F0000), []) == flatten(x, [])  # same signature
    assert flatten(DeviceArray((2, 4), "<f8"), []) != flatten(x, [])
    assert device_array_type(HostTensor()) is None and flatten(HostTensor(), [])[0] == STATIC


def test_a_traced_device_array_is_an_input_of_its_interface_type():
    from minicomp.frontend.tracer import trace_with_structure

    graph, _ = trace_with_structure(lambda p: p["x"].sum(axis=1) * p["scale"],
                                    ({"x": DeviceArray((5, 4), "<i4"), "scale": 2},))
    assert [(node.name, str(node.type)) for node in graph.inputs] == [("p.x", "i32[5,4]")]


def test_a_device_array_passed_to_a_cpu_target_says_what_to_write():
    double = minicomp.jit(lambda x: x * 2)
    with pytest.raises(MinicompRuntimeError, match=r"DeviceArray in GPU memory.*target='cuda'.*x\.cpu\(\)\.numpy\(\)"):
        double(DeviceArray((3,)))
