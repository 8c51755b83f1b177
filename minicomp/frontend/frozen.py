"""What a traced function reads besides its arguments: the values frozen into the compiled code.

A trace runs the function once. Whatever it reads from outside its arguments is read then and
baked in: scalars from its globals and closure become constants (and arrays, under ``trace`` or
``jit(f, freeze=True)``; otherwise ``jit`` lifts arrays to inputs read at every call: see
``state.py``), and random numbers it draws become constants too (every call of the compiled
function returns the same "random" numbers). This module finds those outside values cheaply,
before and after the trace:

* ``refuse_subclass_constants`` refuses an ``np.matrix`` or masked array the function reads
  from its closure, defaults or globals, naming it (a plain array would lose what it adds);
* ``RandomDraws`` snapshots every random generator the function can reach (the global
  ``np.random`` state, generators in its globals, closure, defaults, static arguments and a bound
  method's object) and warns with a ``MinicompWarning`` if one moved during the trace, or if the
  function creates a generator itself (``np.random.default_rng()``).

Only the function's own code is read, not the functions it calls: a generator reachable only
from a callee's globals goes unnoticed (the global ``np.random`` state is always watched).
"""

from __future__ import annotations

import dis
import functools
import types
import warnings
from typing import Callable, Iterator

import numpy as np

from ..errors import MinicompWarning, at
from ..ir.interpreter import PLAIN_ARRAY_TYPES, refuse_array_subclass

RANDOM_SOURCES = (np.random.Generator, np.random.RandomState, np.random.BitGenerator)
# names whose presence in a function's code means it may create a generator of its own
_GENERATOR_FACTORIES = frozenset({"default_rng", "RandomState", "Generator", "PCG64", "PCG64DXSM",
                                  "MT19937", "Philox", "SFC64"})
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ANY_LOADS = _GLOBAL_LOADS | {"LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FAST", "LOAD_ATTR", "LOAD_METHOD"}


def _functions(fn: Callable) -> Iterator[tuple[types.FunctionType, object]]:
    """The Python functions whose code ``fn`` runs first, each with its bound object (or None)."""
    if isinstance(fn, functools.partial):
        yield from _functions(fn.func)
    elif isinstance(fn, types.MethodType):
        yield from ((func, fn.__self__) for func, _ in _functions(fn.__func__))
    elif isinstance(fn, types.FunctionType):
        yield fn, None
    elif not isinstance(fn, type) and isinstance(getattr(type(fn), "__call__", None), types.FunctionType):
        yield type(fn).__call__, fn  # an object with a __call__ method


@functools.lru_cache(maxsize=1024)
def _code_names(code: types.CodeType) -> frozenset[str]:
    """The global and attribute names ``code`` and the code nested in it (lambdas, comprehensions) use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return frozenset(names)


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def outside_values(fn: Callable, static_args: dict | None = None) -> list[tuple[str, str, object]]:
    """``(where, name, value)`` for what ``fn`` can read besides its array arguments.

    Closure variables, parameter defaults, globals its code names (a name also used as an
    attribute counts: cheap, and harmless for what this is used for), a bound method's
    object's attributes, and ``static_args`` (parameter name -> value). Modules are skipped.
    """
    found = [(f"the static argument {name!r}", name, value) for name, value in (static_args or {}).items()]
    for func, owner in _functions(fn):
        code = func.__code__
        for name, cell in zip(code.co_freevars, func.__closure__ or ()):
            try:
                found.append((f"the closure variable {name!r}", name, cell.cell_contents))
            except ValueError:  # a cell not filled yet
                pass
        params = code.co_varnames[:code.co_argcount]
        for name, value in zip(params[len(params) - len(func.__defaults__ or ()):], func.__defaults__ or ()):
            found.append((f"the default of parameter {name!r}", name, value))
        for name, value in (func.__kwdefaults__ or {}).items():
            found.append((f"the default of parameter {name!r}", name, value))
        namespace = func.__globals__
        for name in _code_names(code):
            if name in namespace and not isinstance(namespace[name], types.ModuleType):
                found.append((f"the global {name!r}", name, namespace[name]))
        if owner is not None:
            for name, value in getattr(owner, "__dict__", {}).items():
                found.append((f"the attribute self.{name}", name, value))
    return found


def first_line(fn: Callable, names, loads=_ANY_LOADS) -> tuple[str, int] | None:
    """``(file, line)`` of the first place ``fn``'s own code loads one of ``names``. Slow (dis)."""
    for func, _ in _functions(fn):
        for code in _codes(func.__code__):
            for instruction in dis.get_instructions(code):
                if instruction.opname in loads and instruction.argval in names:
                    line = instruction.positions.lineno if instruction.positions else None
                    return code.co_filename, line or code.co_firstlineno
    return None


def definition_line(fn: Callable) -> tuple[str, int] | None:
    """``(file, line)`` where ``fn`` is defined, if it is Python code."""
    for func, _ in _functions(fn):
        return func.__code__.co_filename, func.__code__.co_firstlineno
    return None


def refuse_subclass_constants(fn: Callable, outside: list[tuple[str, str, object]]) -> None:
    """Raise ``UnsupportedError`` for an ``np.matrix``, masked array ... that ``fn`` reads from outside.

    A constant ``np.matrix`` would be traced as a plain array (``M * x`` elementwise) and a
    masked array would lose its mask; checked before the trace so that the subclass's own
    operators never run on a traced array.
    """
    for where, name, value in outside:
        if isinstance(value, np.ndarray) and type(value) not in PLAIN_ARRAY_TYPES:
            if where.startswith("the attribute") or where.startswith("the static"):
                continue  # an object's attributes are not read through a name; arguments are checked apart
            place = first_line(fn, {name}, _GLOBAL_LOADS if where.startswith("the global") else _ANY_LOADS)
            if where.startswith("the global") and place is None:
                continue  # the name is only an attribute name in fn's code, not this global
            loc = f"{place[0]}:{place[1]}" if place else None
            refuse_array_subclass(value, f"{where}, which {_name(fn)} reads,", loc)


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _state(source) -> object:
    """A comparable snapshot of a generator's state (arrays as bytes); None: the global one."""
    if source is None:
        state = np.random.get_state(legacy=False)  # ~50 us, the most this module costs a trace
    elif isinstance(source, np.random.Generator):
        state = source.bit_generator.state
    elif isinstance(source, np.random.RandomState):
        state = source.get_state(legacy=False)
    else:
        state = source.state
    return _comparable(state)


def _comparable(value):
    if isinstance(value, dict):
        return tuple((key, _comparable(item)) for key, item in sorted(value.items()))
    if isinstance(value, np.ndarray):
        return value.tobytes()
    return value


class RandomDraws:
    """Watches the random generators a function can reach while it is traced.

    >>> watch = RandomDraws(f, outside_values(f))   # before the trace
    >>> ...trace f...
    >>> watch.warn_if_drawn()                        # MinicompWarning if f drew random numbers
    """

    def __init__(self, fn: Callable, outside: list[tuple[str, str, object]]):
        self.fn = fn
        self.sources = [("the global np.random state", "random", None)]
        seen = set()
        for where, name, value in outside:
            if isinstance(value, RANDOM_SOURCES) and id(value) not in seen:
                seen.add(id(value))
                self.sources.append((where, name, value))
        self.before = [_state(source) for _, _, source in self.sources]

    def warn_if_drawn(self) -> None:
        """Warn once if any watched generator moved, or if the function makes its own."""
        moved = [(where, name) for (where, name, source), before in zip(self.sources, self.before)
                 if _state(source) != before]
        functions = list(_functions(self.fn))
        creates = sorted(set().union(*(_code_names(func.__code__) for func, _ in functions)) & _GENERATOR_FACTORIES)
        if not moved and not creates:
            return
        what = ", ".join(where for where, _ in moved) or f"a generator it creates ({', '.join(creates)})"
        place = first_line(self.fn, {name for _, name in moved} | set(creates)) or definition_line(self.fn)
        warnings.warn_explicit(
            f"{_name(self.fn)} drew random numbers while minicomp traced it (from {what})"
            f"{at(f'{place[0]}:{place[1]}' if place else None)}: they are now constants of the "
            "compiled function, the same numbers on every call. Draw them outside the compiled "
            "function and pass them as an argument (f(x, noise) with noise = rng.standard_normal(shape)).",
            MinicompWarning, place[0] if place else "<minicomp>", place[1] if place else 0,
        )
