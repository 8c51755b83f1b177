"""Which sizes a call compiles as symbols: ``jit``'s dynamic dimensions and dynamic ints.

``jit`` keys a compiled function by the arguments' pytree key (``pytree.flatten``): array
shapes and the values of static leaves. Left at that, a generation loop compiles once per
token. ``DynamicSizes`` decides, per call that missed, what to compile as *size symbols*
(``ir/symbolic.py``) instead, as torch.compile's automatic dynamic does:

* an array dimension named in ``jit(..., dynamic={"x": [0]})``;
* without ``dynamic=``, every array dimension and every ``int`` argument leaf (a KV cache's
  ``start_pos``) seen with two values among calls of one *signature class* (the key with each
  array's shape replaced by its rank and each int by "an int").

The plan (``SymbolicPlan``) is the arguments to trace (``TensorType`` leaves with symbolic
dimensions, ``Sym`` in place of the dynamic ints), the key of that symbolic signature, and
where each symbol's value comes from at a call. An int symbol reaches the compiled code as the
length of a *size carrier*: an extra graph input of type ``bool[start_pos]`` that no kernel
reads, passed as a zero-stride array (no memory), so the executable binds it like any size.

    calls f(x[5, 64]) then f(x[6, 64])      ->  traced as %x: f32[x_0,64]
    calls g(cache, start_pos=7), then 8     ->  traced with start_pos = Sym("start_pos"),
                                                 %size_start_pos: bool[start_pos] added
"""

from __future__ import annotations

import inspect
import os
import traceback
from dataclasses import dataclass, field

import numpy as np

from ..errors import MinicompError
from ..ir.dtypes import TensorType
from ..ir.symbolic import Sym
from .pytree import ARRAY, COMPLEX, DATACLASS, DICT, FLOAT, LIST, NAMEDTUPLE, STATIC, TUPLE, flatten, unflatten

MAX_INT_SIZE = 2**62  # an int argument compiled as a size: 0 <= value < this (a size is an int64)


@dataclass
class SymbolicPlan:
    """What to trace for a call with dynamic sizes, and where each symbol's value comes from."""

    args: tuple  # the arguments to trace: symbolic TensorType leaves, Sym ints
    key: tuple  # the symbolic signature's key (one compile serves every call that maps to it)
    dims: dict[str, tuple[int, int]] = field(default_factory=dict)  # symbol -> (array leaf, axis)
    ints: dict[str, int] = field(default_factory=dict)  # symbol -> int leaf number
    described: dict[str, str] = field(default_factory=dict)  # symbol -> "x.shape[0]", "start_pos"

    def sizes(self, arrays: list, int_values: list) -> dict[str, int]:
        """The value of every symbol at a call with these array leaves and int leaves."""
        values = {symbol: arrays[leaf].shape[axis] for symbol, (leaf, axis) in self.dims.items()}
        values.update((symbol, int_values[leaf]) for symbol, leaf in self.ints.items())
        return values


#: the jit targets that compile symbolic sizes (the C renderer's size parameters)
SYMBOLIC_TARGETS = ("c", "gpu-serial-c", "cuda")


class DynamicSizes:
    """One jitted function's record of the shapes and ints its calls had; see the module docstring."""

    def __init__(self, dynamic, signature: inspect.Signature, target: str, name: str):
        check_dynamic(dynamic, signature, target, name)
        self.dynamic = dynamic  # None: automatic; False: off; {argument name: [axes]}
        self.active = dynamic is not False and target in SYMBOLIC_TARGETS
        self.signature = signature
        self._first: dict[tuple, tuple[list, list]] = {}  # signature class -> first shapes and ints
        self._varying: dict[tuple, tuple[set, set]] = {}  # signature class -> (leaf, axis) pairs, int leaves

    def plans(self, args: tuple, key: tuple, arrays: list) -> list[SymbolicPlan]:
        """The symbolic signatures to try for this call, best first: every dynamic size; then,
        when it has dynamic dimensions and dynamic ints, the ints alone and the dimensions alone
        (a prompt and single-token steps share no length, ``if T > 1`` needs its value, but the
        steps still share one compile over ``start_pos``). Empty when nothing is dynamic."""
        if not self.active:
            return []
        int_values = int_leaves(key)
        axes, ints = self._marked(args), set()
        if self.dynamic is None:
            varying_axes, ints = self._observe(key, arrays, int_values)
            for leaf, axis in varying_axes:
                axes.setdefault(leaf, set()).add(axis)
        axes = {leaf: a for leaf, a in axes.items() if type(arrays[leaf]) is np.ndarray}
        ints = {leaf for leaf in ints if 0 <= int_values[leaf] < MAX_INT_SIZE}
        candidates = [(axes, ints)] + ([({}, ints), (axes, set())] if axes and ints else [])
        names = leaf_names(self.signature, args), int_leaf_names(self.signature, key)
        return [self._plan(key, arrays, a, i, names) for a, i in candidates if a or i]

    @staticmethod
    def _plan(key: tuple, arrays: list, axes: dict[int, set], ints: set, names: tuple) -> SymbolicPlan:
        """The symbolic signature with these array axes and int leaves as symbols; ``names``:
        the array leaves' and the int leaves' names."""
        names, int_names = names
        leaves, dims = symbolic_leaves(arrays, axes, names)
        int_symbols = {}
        for leaf in sorted(ints):
            int_symbols[size_symbol(int_names[leaf], None, {**dims, **int_symbols})] = leaf
        symbols = {leaf: Sym.symbol(symbol) for symbol, leaf in int_symbols.items()}
        symbolic_args = unflatten(replace_ints(key, symbols), leaves)
        described = {symbol: f"{names[leaf]}.shape[{axis}]" for symbol, (leaf, axis) in dims.items()}
        described.update((symbol, int_names[leaf]) for symbol, leaf in int_symbols.items())
        return SymbolicPlan(symbolic_args, (flatten(symbolic_args, []), "symbolic"), dims, int_symbols, described)

    def _marked(self, args: tuple) -> dict[int, set]:
        """``dynamic={"x": [0]}``: array leaf number -> the axes named for it."""
        axes: dict[int, set] = {}
        if not isinstance(self.dynamic, dict):
            return axes
        first_leaf = first_leaves(args)
        for name, marked in self.dynamic.items():
            index = list(self.signature.parameters).index(name)
            if index >= len(args):
                continue
            if type(args[index]) is not np.ndarray:
                raise MinicompError(f"jit(dynamic={{{name!r}: {list(marked)}}}): argument {name!r} is a "
                                    f"{type(args[index]).__name__}, not an array; dynamic= names array arguments")
            leaf, ndim = first_leaf[index], args[index].ndim
            bad = [a for a in marked if not -ndim <= a < ndim]
            if bad:
                raise MinicompError(f"jit(dynamic={{{name!r}: {list(marked)}}}): argument {name!r} has "
                                    f"{ndim} dimension(s) (shape {args[index].shape}), so axis "
                                    f"{bad[0]} does not exist")
            axes.setdefault(leaf, set()).update(a % ndim for a in marked)
        return axes

    def _observe(self, key: tuple, arrays: list, int_values: list) -> tuple[set, set]:
        """Remember this signature class's shapes and ints; the (leaf, axis) pairs and the int
        leaves seen with two values."""
        shapes = [np.shape(a) for a in arrays]
        group = signature_class(key)
        first_shapes, first_ints = self._first.setdefault(group, (shapes, int_values))
        axes, ints = self._varying.setdefault(group, (set(), set()))
        axes.update((leaf, axis) for leaf, (a, b) in enumerate(zip(first_shapes, shapes))
                    for axis, (m, n) in enumerate(zip(a, b)) if m != n)
        ints.update(leaf for leaf, (a, b) in enumerate(zip(first_ints, int_values)) if a != b)
        return axes, ints


def size_carriers(plan_ints: dict[str, int], key: tuple) -> list[np.ndarray]:
    """The size carrier of each int symbol at a call with argument key ``key``: an array of
    that length and no memory (every element is the one broadcast ``False``)."""
    values = int_leaves(key)
    return [np.broadcast_to(np.False_, (values[leaf],)) for leaf in plan_ints.values()]


# -- walking a pytree key --------------------------------------------------------------------------


def map_key(key: tuple, array, integer) -> tuple:
    """``key`` with each array leaf's key replaced by ``array(k)`` and each int leaf's by
    ``integer(k)`` (the grammar of ``pytree.flatten``)."""
    tag = key[0]
    if tag == ARRAY:
        return array(key)
    if tag == DICT:
        return key[:2] + (tuple(map_key(c, array, integer) for c in key[2]),) + key[3:]
    if tag in (LIST, TUPLE):
        return (tag, tuple(map_key(c, array, integer) for c in key[1])) + key[2:]
    if tag == NAMEDTUPLE:
        return (tag, key[1], tuple(map_key(c, array, integer) for c in key[2]))
    if tag == DATACLASS:
        return (tag, key[1], key[2], tuple(map_key(c, array, integer) for c in key[3]))
    if tag == STATIC and key[1] is int:
        return integer(key)
    assert tag in (STATIC, FLOAT, COMPLEX), key
    return key


def int_leaves(key: tuple) -> list[int]:
    """The values of the ``int`` leaves of a key, in order (bools and other types excluded)."""
    values: list[int] = []
    map_key(key, lambda k: k, lambda k: values.append(k[2]) or k)
    return values


def replace_ints(key: tuple, symbols: dict[int, Sym]) -> tuple:
    """``key`` with int leaf number ``n`` (in ``int_leaves`` order) holding ``symbols[n]``."""
    count = iter(range(1 << 62))
    return map_key(key, lambda k: k, lambda k: (STATIC, int, symbols.get(next(count), k[2])))


def signature_class(key: tuple) -> tuple:
    """``key`` with each array's shape replaced by its rank and each int by "an int"."""
    return map_key(key, lambda k: (ARRAY, len(k[1])) + k[2:], lambda k: (STATIC, int, None))


# -- names and symbols -----------------------------------------------------------------------------


def first_leaves(args: tuple) -> list[int]:
    """For each argument, the number of its first array leaf in the arguments' ``flatten`` order."""
    firsts, count = [], 0
    for value in args:
        firsts.append(count)
        leaves: list = []
        flatten(value, leaves)
        count += len(leaves)
    return firsts


def _parameter_name(signature: inspect.Signature, index: int) -> str:
    params = list(signature.parameters)
    return params[index] if index < len(params) and params[index] != "args" else f"arg{index}"


def leaf_names(signature: inspect.Signature, args) -> list[str]:
    """A name per array leaf (``x`` for a top-level array, ``params_3`` for a nested one)."""
    names = []
    for index, value in enumerate(args):
        param = _parameter_name(signature, index)
        leaves: list = []
        flatten(value, leaves)
        names += [param] if type(value) is np.ndarray else [f"{param}_{n}" for n in range(len(leaves))]
    return names


def int_leaf_names(signature: inspect.Signature, key: tuple) -> list[str]:
    """A name per int leaf (``start_pos`` for a top-level int, ``config_1`` for a nested one)."""
    names = []
    for index, child in enumerate(key[1]):
        param, count = _parameter_name(signature, index), len(int_leaves(child))
        names += [param] if child[0] == STATIC and child[1] is int else [f"{param}_{n}" for n in range(count)]
    return names


def symbolic_leaves(arrays: list, axes: dict[int, set], names: list[str]) -> tuple[list, dict]:
    """The array leaves with ``TensorType`` s whose dynamic axes are size symbols, and for each
    symbol the first ``(leaf, axis)`` it stands for.

    Dynamic dimensions of equal size in this call share one symbol (torch.compile's *duck
    sizing*): ``x: [T, C]`` and a mask ``[T, T]`` broadcast together. A later call where they
    differ has another signature, so it never uses this compile.
    """
    leaves, where, symbol_of_size = list(arrays), {}, {}
    for leaf, dims in sorted(axes.items()):
        shape = list(arrays[leaf].shape)
        for axis in sorted(dims):
            symbol = symbol_of_size.get(shape[axis])
            if symbol is None:
                symbol = size_symbol(names[leaf], axis, where)
                symbol_of_size[shape[axis]], where[symbol] = symbol, (leaf, axis)
            shape[axis] = Sym.symbol(symbol)
        leaves[leaf] = TensorType(shape, arrays[leaf].dtype.newbyteorder("="))
    return leaves, where


def size_symbol(argument: str, axis: int | None, taken: dict) -> str:
    """The name of the size symbol for ``argument.shape[axis]`` (``x_0``) or for the int
    ``argument`` (axis None: ``start_pos``): C-safe and unique."""
    base = argument if axis is None else f"{argument}_{axis}"
    if not (base.isascii() and base.isidentifier()) or base.startswith("mc_"):
        base = f"s{len(taken)}"
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def check_dynamic(dynamic, signature: inspect.Signature, target: str, name: str) -> None:
    """``dynamic=`` is None, False or ``{argument name: [axes]}``; else ``MinicompError``."""
    if dynamic is None or dynamic is False:
        return
    where = f"jit({name}, dynamic={dynamic!r:.60})"
    if target not in SYMBOLIC_TARGETS:
        raise MinicompError(f"{where}: dynamic dimensions need a target that compiles symbolic sizes "
                            f"({', '.join(SYMBOLIC_TARGETS)}), not {target!r}")
    if not isinstance(dynamic, dict):
        raise MinicompError(f"{where}: write dynamic={{'x': [0]}} (argument name -> axes), or dynamic=False")
    for arg, axes in dynamic.items():
        if arg not in signature.parameters:
            raise MinicompError(f"{where}: {name} has no argument {arg!r}; its arguments: "
                                f"{', '.join(signature.parameters)}")
        if not isinstance(axes, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool)
                                                         for a in axes):
            raise MinicompError(f"{where}: the axes of {arg!r} must be a list of ints, like [0]")


def user_line(exc: BaseException) -> str:
    """`` (at file.py:12)``: the innermost line of the traceback outside minicomp and NumPy, or ""."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(package) and f"{os.sep}numpy{os.sep}" not in f.filename]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
