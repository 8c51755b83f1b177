"""Arguments and results as pytrees: nested tuples, lists, dicts and None around array leaves.

JAX's convention: a *pytree* is a value built from tuples (namedtuples too), lists, dicts,
dataclass instances (their fields) and ``None``; its *leaves* are everything else. Array leaves
(``np.ndarray``, NumPy scalars, and *device arrays*: objects with ``__cuda_array_interface__``
such as a torch tensor on the GPU, a CuPy array or a pycuda ``GPUArray``) are the inputs of the
compiled function; every other leaf (an int, a float, a string, a hashable config object) is
*static*: passed to the function unchanged and part of the signature.

``flatten`` returns a hashable *key* that is also the tree's definition: its structure, the
shape and dtype of each array leaf, and the value of each static leaf, compared exactly and
cheaply (no ``repr``):

    >>> arrays = []
    >>> key = flatten({"w": np.ones((2, 3), np.float32), "eps": 1e-5}, arrays)
    >>> len(arrays)
    1
    >>> unflatten(key, [np.zeros((2, 3), np.float32)])
    {'w': array([[0., 0., 0.], [0., 0., 0.]], dtype=float32), 'eps': 1e-05}

Static floats are keyed by their exact bits (``float.hex``): ``0.0`` and ``-0.0`` are two keys,
every NaN is one key. Each static leaf is keyed with its type, so ``1``, ``1.0`` and ``True``
never share a compiled function.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ..errors import UnsupportedError
from ..ir.interpreter import device_array_type  # noqa: F401  (a leaf kind: re-exported for the front end)

ARRAY, TUPLE, NAMEDTUPLE, LIST, DICT, FLOAT, COMPLEX, STATIC, DATACLASS = range(9)
MAX_DEPTH = 100  # deeper nesting is a cycle (a list holding itself) or not a set of arguments


def flatten(value, arrays: list, depth: int = 0) -> tuple:
    """The key of ``value``; its array leaves (and traced arrays) are appended to ``arrays``.

    Requires: containers nested less than ``MAX_DEPTH`` deep; static leaves hashable.
    Guarantees: two values have equal keys exactly when they have the same structure, the
    same array shapes and dtypes and equal static leaves of the same types (floats by bits).
    Raises ``UnsupportedError`` for an unhashable leaf or a cycle (``describe_leaf`` names it).

    >>> flatten((np.ones(2), 0.5), [])[0] == TUPLE
    True
    """
    kind = type(value)
    if kind is np.ndarray:
        arrays.append(value)
        return (ARRAY, value.shape, value.dtype)
    if depth > MAX_DEPTH:
        raise UnsupportedError(f"a value nested more than {MAX_DEPTH} deep (a list or dict holding itself?)")
    if kind is dict:
        return (DICT, _dict_keys(value), _children(value.values(), arrays, depth + 1))
    if kind is list:
        return (LIST, _children(value, arrays, depth + 1))
    if kind is tuple:
        return (TUPLE, _children(value, arrays, depth + 1))
    if kind is float:
        return (FLOAT, value.hex())
    if kind is int or kind is str or kind is bool or value is None:
        return (STATIC, kind, value)
    return _flatten_other(value, arrays, depth)


def _children(values, arrays: list, depth: int) -> tuple:
    """The keys of a container's items (array leaves inline: the common case, kept cheap)."""
    keys = []
    for value in values:
        if type(value) is np.ndarray:
            arrays.append(value)
            keys.append((ARRAY, value.shape, value.dtype))
        else:
            keys.append(flatten(value, arrays, depth))
    return tuple(keys)


def _dict_keys(value: dict) -> tuple:
    """A dict's keys with their types (``{1: a}`` and ``{True: a}`` differ); floats by bits."""
    keys = tuple(value)
    types = tuple(map(type, keys))
    if float in types or complex in types:
        return (FLOAT, tuple(map(static_key, keys)))
    return (STATIC, keys, types)


def _flatten_other(value, arrays: list, depth: int) -> tuple:
    """``flatten`` for what is not a plain dict, list, tuple, ndarray or simple scalar."""
    from .tracer import TracedArray

    if isinstance(value, (np.ndarray, np.generic, TracedArray)):
        arrays.append(value)
        return (ARRAY, tuple(value.shape), value.dtype, type(value))
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return (NAMEDTUPLE, type(value), _children(value, arrays, depth + 1))
    if isinstance(value, dict):  # OrderedDict, defaultdict: a dict node that remembers its type
        return (DICT, _dict_keys(value), _children(value.values(), arrays, depth + 1), type(value))
    if isinstance(value, (list, tuple)):
        return (LIST if isinstance(value, list) else TUPLE, _children(value, arrays, depth + 1), type(value))
    if isinstance(value, float):
        return (FLOAT, value.hex(), type(value))
    if isinstance(value, complex):
        return (COMPLEX, value.real.hex(), value.imag.hex(), type(value))
    if isinstance(value, (set, frozenset)):
        return (STATIC, type(value), frozenset(static_key(v) for v in value))
    device = device_array_type(value)
    if device is not None:
        arrays.append(value)
        return (ARRAY, device[0], device[1], type(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = field_names(type(value))
        return (DATACLASS, type(value), names, _children([getattr(value, n) for n in names], arrays, depth + 1))
    try:
        hash(value)
    except TypeError:
        raise UnsupportedError(describe_leaf(value)) from None
    return (STATIC, type(value), value)


@functools.lru_cache(maxsize=256)
def field_names(kind: type) -> tuple[str, ...]:
    """The field names of a dataclass, in order (remembered: ``fields`` is slow)."""
    return tuple(field.name for field in dataclasses.fields(kind))


def dataclass_with(original_or_kind, values: dict):
    """A dataclass instance with these field values, made without running ``__init__``."""
    kind = original_or_kind if isinstance(original_or_kind, type) else type(original_or_kind)
    new = object.__new__(kind)
    if not isinstance(original_or_kind, type) and hasattr(original_or_kind, "__dict__"):
        new.__dict__.update(original_or_kind.__dict__)  # attributes that are not fields too
    for name, value in values.items():
        object.__setattr__(new, name, value)  # frozen dataclasses too
    return new


def static_key(value) -> tuple:
    """The exact key of a static (non-array) value such as a dict key: ``flatten`` with no arrays."""
    arrays: list = []
    key = flatten(value, arrays)
    if arrays:
        raise UnsupportedError(f"an array used as a dict key or set element ({describe_leaf(value)})")
    return key


def describe_leaf(value) -> str:
    """What is wrong with an unhashable leaf, for the refusal that names the parameter."""
    return (f"a {type(value).__name__} ({value!r:.40}), neither an array, a tuple, list or dict, nor a "
            "hashable value")


def unflatten(key: tuple, leaves) -> object:
    """The value ``key`` describes, with its array leaves taken in order from ``leaves``.

    Requires: ``key`` from ``flatten`` and as many leaves as it had arrays. Guarantees: plain
    containers are rebuilt as new objects; static leaves are the values keyed (floats from
    their bits).

    >>> unflatten(flatten([np.ones(2), None], []), [np.zeros(2)])
    [array([0., 0.]), None]
    """
    return _build(key, iter(leaves))


def _build(key: tuple, leaves):
    tag = key[0]
    if tag == ARRAY:
        return next(leaves)
    if tag == DICT:
        pairs = list(zip(_keys_of(key[1]), [_build(v, leaves) for v in key[2]]))
        return _rebuilt(key[3], pairs, dict) if len(key) > 3 else dict(pairs)
    if tag in (LIST, TUPLE):
        items = [_build(v, leaves) for v in key[1]]
        plain = list if tag == LIST else tuple
        return _rebuilt(key[2], items, plain) if len(key) > 2 else plain(items)
    if tag == NAMEDTUPLE:
        return key[1](*[_build(v, leaves) for v in key[2]])
    if tag == DATACLASS:
        return dataclass_with(key[1], dict(zip(key[2], [_build(v, leaves) for v in key[3]])))
    if tag == FLOAT:
        return (key[2] if len(key) > 2 else float).fromhex(key[1])
    if tag == COMPLEX:
        return key[3](float.fromhex(key[1]), float.fromhex(key[2]))
    if key[1] in (set, frozenset):
        return key[1](_build(k, iter(())) for k in key[2])
    return key[2]


def _keys_of(keyed: tuple) -> tuple:
    """A dict's keys from ``_dict_keys``: plain keys (with their types), or each key's own key."""
    if keyed[0] == STATIC:
        return keyed[1]
    return tuple(_build(k, iter(())) for k in keyed[1])


def _rebuilt(kind: type, items, plain: type):
    """``kind(items)`` for a container subclass, the plain container where that cannot be built."""
    try:
        return kind(items)
    except TypeError:  # e.g. defaultdict(pairs): its first argument is the factory
        return plain(items)


def count_arrays(key: tuple) -> int:
    """How many array leaves the value keyed ``key`` has."""
    tag = key[0]
    if tag == ARRAY:
        return 1
    if tag == DICT or tag == NAMEDTUPLE:
        return sum(map(count_arrays, key[2]))
    if tag in (LIST, TUPLE):
        return sum(map(count_arrays, key[1]))
    if tag == DATACLASS:
        return sum(map(count_arrays, key[3]))
    return 0
