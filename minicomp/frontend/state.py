"""What a traced function reads and writes besides its array arguments: weights and stored values.

A trace runs the function once on proxies. Around that run this module does three things:

* **arguments**: each argument is a pytree (``pytree.py``); ``TraceState.argument`` rebuilds it
  with a graph input in place of every array leaf (new containers: the caller's are untouched);
* **lifting**: arrays the function reaches through its closure, its globals (and those of the
  functions it names) and ``self`` (attributes, and the dicts, lists, tuples and objects of
  your own classes inside them) are swapped, in place, for ``LiftedArray`` proxies while it
  runs. A proxy the trace touches becomes a graph input, read again at every call through its
  ``Path`` (``self.W``, ``params.blocks.0.w``) and guarded by shape and dtype: weights are
  never stale. ``jit(f, freeze=True)`` leaves them as constants instead;
* **writes**: after the run, every traced value the function stored into a container it can
  reach (``cache["k"] = k``, ``self.h = h``, ``history.append(y)``) is taken out again and
  recorded as a ``Write``: ``jit`` computes it as an extra output and stores the concrete
  array there after each call, as NumPy would have. Whatever was swapped is restored, so the
  caller's objects never keep a traced array.

While a trace runs (under ``jit``'s lock), the swapped globals, closure cells and attributes hold
proxies: another thread reading them at that moment, outside the traced function, would see
them. Tracing is short and happens once per signature; do not trace while other threads run
the same objects' plain NumPy code.

    >>> state = TraceState(tracer)
    >>> try:
    ...     args = [state.argument(i, name, value) for ...]; state.lift(fn)
    ...     result = fn(*args); writes = state.take_writes()
    ... finally:
    ...     state.restore()
"""

from __future__ import annotations

import dataclasses
import dis
import functools
import os
import sys
import sysconfig
import types
from typing import Callable

import numpy as np

from ..ir.dtypes import TensorType
from .frozen import _functions
from .pytree import dataclass_with, device_array_type, field_names
from .tracer import TracedArray, Tracer, _argument_type, user_location

CELL, ITEM, ATTR, APPEND = "cell", "item", "attr", "append"
ARGS = "args"  # the root of a path into the call's positional arguments
MAX_DEPTH = 8  # how deep outside state is searched for arrays
_MISSING = object()


# ----------------------------------------------------------------------------------------------
# Paths: where a value lives, readable again at every call
# ----------------------------------------------------------------------------------------------


class Path:
    """A place a value is read from or stored to: a root and steps from it.

    The root is ``ARGS`` (the call's arguments), a closure cell, a globals dict or an object;
    each step is ``(CELL, None)``, ``(ITEM, key)`` or ``(ATTR, name)``; a path stored to may end
    in ``(APPEND, None)``: appended to the list there.

    >>> Path(model, ((ATTR, "W"),), "self.W").read(args)   # model.__dict__["W"]
    """

    __slots__ = ("root", "steps", "name")

    def __init__(self, root, steps: tuple, name: str):
        self.root, self.steps, self.name = root, steps, name

    def then(self, kind: str, key, name: str) -> "Path":
        """This path one step further: ``Path(self.root, self.steps + ((kind, key),), name)``."""
        return Path(self.root, self.steps + ((kind, key),), name)

    def read(self, args: tuple):
        """The value there now (``KeyError``, ``IndexError``, ``AttributeError`` if it is gone)."""
        value = args if self.root is ARGS else self.root
        for kind, key in self.steps:
            value = _get(value, kind, key)
        return value

    def assign(self, args: tuple, new) -> None:
        """Store ``new`` there (or append it to the list there)."""
        container = args if self.root is ARGS else self.root
        for kind, key in self.steps[:-1]:
            container = _get(container, kind, key)
        kind, key = self.steps[-1]
        _set(container, kind, key, new)

    def __repr__(self) -> str:
        return f"Path({self.name})"


def _get(container, kind: str, key):
    if kind == CELL:
        return container.cell_contents
    if kind == ATTR:
        return container.__dict__[key]
    return container[key]


def _set(container, kind: str, key, value) -> None:
    if kind == CELL:
        container.cell_contents = value
    elif kind == ATTR:
        container.__dict__[key] = value
    elif kind == APPEND:
        container.append(value)
    else:
        container[key] = value


def _name(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


# ----------------------------------------------------------------------------------------------
# Lifted arrays: graph inputs made on first use
# ----------------------------------------------------------------------------------------------


class LiftedArray(TracedArray):
    """The proxy of an array read from outside the arguments; it is a graph input once touched."""

    def __init__(self, state: "TraceState", path: Path, array: np.ndarray):
        self._state, self._path, self._array = state, path, array
        super().__init__(state.tracer, None)  # no node until touched

    @property
    def node(self):
        if self._node is None:
            self._node = self._state.lifted_input(self)
        return self._node

    @node.setter
    def node(self, value) -> None:  # an in-place update rebinds the proxy
        self._node = value

    def _concrete(self, what: str):
        try:
            super()._concrete(what)
        except Exception as exc:
            raise type(exc)(f"{exc}. {self._path.name} is an array read from outside the arguments: minicomp "
                            "reads it at every call; jit(f, freeze=True) folds such arrays into the compiled "
                            "code as constants (their values at trace time) instead") from None


# ----------------------------------------------------------------------------------------------
# The state of one trace
# ----------------------------------------------------------------------------------------------


class Write:
    """A traced value the function stored outside: ``path`` gets ``value``'s arrays after each call."""

    __slots__ = ("path", "value")

    def __init__(self, path: Path, value):
        self.path, self.value = path, value


class TraceState:
    """Arguments, lifted arrays and stored values of one trace; see the module docstring."""

    def __init__(self, tracer: Tracer, lift: bool = True):
        self.tracer = tracer
        self.lift_arrays = lift
        self.lifted: list[tuple[Path, TensorType]] = []  # graph inputs after the arguments, in order
        self.outside: dict[int, tuple] = {}  # id(array) -> (array, its path's name): every outside array seen
        self._originals: dict[int, tuple] = {}  # id(what was swapped in) -> (it, the original)
        # (container, its path, the step kind of its slots, a copy of it after the swap)
        self._containers: list[tuple[object, Path, str, object]] = []
        self._undo: list[tuple[object, str, object, object]] = []  # (cell or globals, kind, key, original)
        self._walked: set[int] = set()

    # -- arguments --------------------------------------------------------------------------------

    def argument(self, index: int, name: str, value):
        """``value`` with every array leaf a graph input named after its place (``params.w``)."""
        return self._rebuild(value, Path(ARGS, ((ITEM, index),), name), 0)

    def _rebuild(self, value, path: Path, depth: int):
        kind = type(value)
        if isinstance(value, (np.ndarray, np.generic, TensorType)) or device_array_type(value) is not None:
            return self.tracer.input(path.name, _argument_type(path.name, value, self.tracer.graph.name))
        if kind is dict or isinstance(value, dict):
            new = {key: self._rebuild(item, path.then(ITEM, key, _name(path.name, key)), depth + 1)
                   for key, item in value.items()}
            if kind is not dict:
                new = _same_kind(value, new)
            self._remember(new, path, ITEM)
            return new
        if kind is list:
            new = [self._rebuild(item, path.then(ITEM, i, _name(path.name, i)), depth + 1)
                   for i, item in enumerate(value)]
            self._remember(new, path, ITEM)
            return new
        if isinstance(value, tuple):
            items = [self._rebuild(item, path.then(ITEM, i, _name(path.name, i)), depth + 1)
                     for i, item in enumerate(value)]
            return _same_tuple(value, items)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._rebuild_dataclass(value, path, depth)
        if _walkable_object(value):
            self._swap_object(value, path, depth)  # self passed as an argument: its arrays are lifted
        return value

    def _rebuild_dataclass(self, value, path: Path, depth: int):
        """A copy of a dataclass argument whose fields are rebuilt (arrays: inputs)."""
        fields = {name: self._rebuild(getattr(value, name), path.then(ATTR, name, _name(path.name, name)), depth + 1)
                  for name in field_names(type(value))}
        new = dataclass_with(value, fields)
        if isinstance(getattr(new, "__dict__", None), dict):
            self._remember(new.__dict__, path, ATTR)
        return new

    def _remember(self, container, path: Path, kind: str) -> None:
        """Watch ``container`` (a dict, list or ``__dict__``) for traced values stored into it."""
        snapshot = dict(container) if isinstance(container, dict) else list(container)
        self._containers.append((container, path, kind, snapshot))

    # -- lifting ----------------------------------------------------------------------------------

    def lift(self, fn: Callable) -> None:
        """Swap the arrays ``fn`` reaches through closures, globals and ``self`` for proxies."""
        for holder, kind, key, name in outside_roots(fn):
            if kind is None:  # a bound method's object: its attributes, in place
                self._swap_object(holder, Path(holder, (), name), 0)
                continue
            value = _get(holder, kind, key)
            new = self._swap(value, Path(holder, ((kind, key),), name), 0)
            if new is not value:
                self._undo.append((holder, kind, key, value))
                _set(holder, kind, key, new)

    def lifted_input(self, proxy: LiftedArray):
        """The graph input for a lifted array, made when the trace first touches its proxy (which
        joins ``tracer.inputs``: written in place, it is copied into the outside array after a call)."""
        path, array = proxy._path, proxy._array
        type_ = _argument_type(path.name, array, self.tracer.graph.name)
        self.lifted.append((path, type_))
        self.tracer.inputs.append(proxy)
        return self.tracer.graph.add_input(path.name, type_, user_location())

    def _swap(self, value, path: Path, depth: int):
        """``value`` with its arrays swapped for proxies: mutable containers changed in place."""
        kind = type(value)
        if kind is np.ndarray or kind is np.memmap:
            self.outside.setdefault(id(value), (value, path.name))
            if not self.lift_arrays:
                return value
            proxy = LiftedArray(self, path, value)
            self._originals[id(proxy)] = (proxy, value)
            return proxy
        if depth >= MAX_DEPTH or id(value) in self._walked:
            return value
        if kind is dict or kind is list:
            self._walked.add(id(value))
            self._swap_items(value, path, depth)
        elif isinstance(value, tuple):
            self._walked.add(id(value))
            items = [self._swap(item, path.then(ITEM, i, _name(path.name, i)), depth + 1)
                     for i, item in enumerate(value)]
            if any(new is not old for new, old in zip(items, value)):
                new = _same_tuple(value, items)
                self._originals[id(new)] = (new, value)
                return new
        elif _walkable_object(value):
            self._swap_object(value, path, depth)
        return value

    def _swap_items(self, container, path: Path, depth: int) -> None:
        keys = list(container) if isinstance(container, dict) else range(len(container))
        for key in keys:
            old = container[key]
            new = self._swap(old, path.then(ITEM, key, _name(path.name, key)), depth + 1)
            if new is not old:
                container[key] = new
        self._remember(container, path, ITEM)

    def _swap_object(self, obj, path: Path, depth: int) -> None:
        if id(obj) in self._walked:
            return
        self._walked.add(id(obj))
        attributes = obj.__dict__
        for key in list(attributes):
            old = attributes[key]
            new = self._swap(old, path.then(ATTR, key, _name(path.name, key)), depth + 1)
            if new is not old:
                attributes[key] = new
        self._remember(attributes, path, ATTR)

    # -- after the trace --------------------------------------------------------------------------

    def take_writes(self) -> list[Write]:
        """The traced values stored into watched containers during the trace; each is taken out."""
        writes = []
        for container, path, kind, snapshot in self._containers:
            if isinstance(snapshot, dict):
                writes += self._dict_writes(container, path, kind, snapshot)
            else:
                writes += self._list_writes(container, path, snapshot)
        return writes

    def _dict_writes(self, container: dict, path: Path, kind: str, snapshot: dict) -> list[Write]:
        writes = []
        for key, value in list(container.items()):
            old = snapshot.get(key, _MISSING)
            if value is old or not self.holds_traced(value):
                continue
            writes.append(Write(path.then(kind, key, _name(path.name, key)), value))
            if old is _MISSING:
                del container[key]
            else:
                container[key] = self._original(old)
        return writes

    def _list_writes(self, container: list, path: Path, snapshot: list) -> list[Write]:
        writes, keep = [], []
        for index, value in enumerate(container):
            old = snapshot[index] if index < len(snapshot) else _MISSING
            if value is old or not self.holds_traced(value):
                keep.append(value)
                continue
            step = (ITEM, index) if old is not _MISSING else (APPEND, None)
            writes.append(Write(path.then(*step, _name(path.name, index)), value))
            if old is not _MISSING:
                keep.append(self._original(old))
        container[:] = keep
        return writes

    def _original(self, value):
        swapped = self._originals.get(id(value))
        return swapped[1] if swapped is not None and swapped[0] is value else value

    def holds_traced(self, value, depth: int = 0) -> bool:
        """Whether ``value`` is, or holds, a traced array of this trace (a proxy counts)."""
        if isinstance(value, TracedArray):
            return value.tracer is self.tracer
        if depth > MAX_DEPTH:
            return False
        if isinstance(value, dict):
            return any(self.holds_traced(v, depth + 1) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(self.holds_traced(v, depth + 1) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return any(self.holds_traced(getattr(value, name), depth + 1) for name in field_names(type(value)))
        return False

    def restore(self) -> None:
        """Put back every array swapped for a proxy and take out every traced value stored during
        the trace (also when it failed): the caller's objects are as they were, without proxies."""
        self.take_writes()
        for container, _, _, _ in self._containers:
            pairs = list(container.items()) if isinstance(container, dict) else list(enumerate(container))
            for key, value in pairs:
                original = self._original(value)
                if original is not value:
                    container[key] = original
        for holder, kind, key, original in reversed(self._undo):
            try:
                current = _get(holder, kind, key)
            except (KeyError, ValueError):
                continue
            if current is not original and (self._original(current) is not current or self.holds_traced(current)):
                _set(holder, kind, key, original)
        self._undo.clear()


def _same_kind(original: dict, items: dict) -> dict:
    """A dict of ``original``'s type (``OrderedDict``...) holding ``items``."""
    try:
        new = original.copy()
        new.clear()
        new.update(items)
        return new
    except (AttributeError, TypeError):
        return items


def _same_tuple(original: tuple, items: list) -> tuple:
    if type(original) is tuple:
        return tuple(items)
    if hasattr(type(original), "_make"):
        return type(original)._make(items)
    return type(original)(items)


# ----------------------------------------------------------------------------------------------
# Where outside arrays are found
# ----------------------------------------------------------------------------------------------


def outside_roots(fn: Callable):
    """``(holder, kind, key, name)`` for each place ``fn``'s code reads from outside its arguments.

    Closure cells, the globals its code (and the code of the Python functions it names, two
    levels down) loads, and a bound method's ``self``.
    """
    seen_codes: set = set()
    for func, owner in _functions(fn):
        yield from _function_roots(func, seen_codes, 0)
        if owner is not None and _walkable_object(owner):
            yield owner, None, None, "self"


def _function_roots(func: types.FunctionType, seen_codes: set, level: int):
    code = func.__code__
    if code in seen_codes:
        return
    seen_codes.add(code)
    callees = []
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
        yield cell, CELL, None, name
        callees.append(value)
    namespace = func.__globals__
    for name in global_loads(code):
        if name in namespace and not isinstance(namespace[name], types.ModuleType):
            yield namespace, ITEM, name, name
            callees.append(namespace[name])
    if level < 2:
        for value in callees:
            if isinstance(value, types.FunctionType) and _user_code(value.__code__.co_filename):
                yield from _function_roots(value, seen_codes, level + 1)


@functools.lru_cache(maxsize=1024)
def global_loads(code: types.CodeType) -> tuple[str, ...]:
    """The global names ``code`` (and code nested in it: lambdas, comprehensions) loads."""
    names = []
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and instruction.argval not in names:
            names.append(instruction.argval)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += [n for n in global_loads(const) if n not in names]
    return tuple(names)


_LIBRARY_DIRS = tuple(os.path.normpath(p) for p in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")})


@functools.lru_cache(maxsize=4096)
def _user_code(filename: str) -> bool:
    """Whether ``filename`` is the user's code: not minicomp's, NumPy's, the standard library's
    or an installed package's."""
    if filename.startswith("<"):
        return filename.startswith(("<stdin", "<ipython", "<string"))
    path = os.path.normpath(os.path.abspath(filename))
    minicomp_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return not path.startswith(_LIBRARY_DIRS + (minicomp_dir,)) and "site-packages" not in path


@functools.lru_cache(maxsize=4096)
def _user_class(kind: type) -> bool:
    if kind is types.SimpleNamespace:
        return True
    module = sys.modules.get(kind.__module__)
    filename = getattr(module, "__file__", None)
    if filename is None:
        return kind.__module__ == "__main__"
    return _user_code(filename)


def _walkable_object(value) -> bool:
    """An instance of one of the user's classes (or a ``SimpleNamespace``) with a ``__dict__``."""
    return (not isinstance(value, (type, types.ModuleType, types.FunctionType, types.MethodType,
                                   functools.partial))
            and isinstance(getattr(value, "__dict__", None), dict) and _user_class(type(value)))


# ----------------------------------------------------------------------------------------------
# Reading lifted arrays at call time
# ----------------------------------------------------------------------------------------------


def read_lifted(lifted: list[tuple[Path, TensorType]], args: tuple) -> list[np.ndarray] | None:
    """The lifted arrays as they are now, or None if one is gone or changed shape or dtype.

    >>> read_lifted([(Path(model, ((ATTR, "W"),), "self.W"), TensorType((4, 4), "f32"))], args)
    [model.W]
    """
    arrays = []
    for path, type_ in lifted:
        try:
            value = path.read(args)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            return None
        if not isinstance(value, np.ndarray) or value.shape != type_.shape or value.dtype != type_.dtype:
            return None
        arrays.append(value)
    return arrays
