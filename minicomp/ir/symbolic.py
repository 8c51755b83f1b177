"""Symbolic sizes: exact integer polynomials over named size symbols (``T``, ``768*T``, ``T - 1``).

A dimension that is *dynamic* (``jit(f, dynamic={"x": [0]})``, or seen with a second size) is
a ``Sym`` in ``TensorType.shape`` instead of an int. ``Sym`` supports exactly the arithmetic
that shape rules and index arithmetic need and that stays exact for every value of the
symbols (each symbol stands for a size ``>= 0``):

    >>> T = Sym.symbol("T")
    >>> T * 768 // 12             # exact: every coefficient divides
    64*T
    >>> (T + 1) - 1               # a polynomial that is a constant is a plain int again
    T
    >>> (T * 768).evaluate({"T": 5})
    3840

Anything that would have to *decide* something about an unknown size raises
``SymbolicShapeError``: ``int(T)``, ``range(T)``, ``bool(T)``, ``T // 5``, and comparisons that
do not hold (or fail) for every size (``T >= 0`` is True, ``T + 1 > 0`` is True, ``T > 1`` raises).
``==`` is structural: ``T == T`` is True, ``T == 768`` is False. Inside minicomp that is the
meaning wanted (code written for two different sizes stays correct when they happen to meet).
In the user's code it is an assumption: ``if x.shape[0] == 768`` takes the False branch, so
the trace records the guard ``T != 768`` (kept as ``(T - 768)**2 >= 1``, see ``require``) and a
call with ``T = 768`` compiles on its own. The jit catches ``SymbolicShapeError`` and compiles
that signature with static sizes instead (see ``driver.py``): an unknown size is never
silently baked into the code.

Pure Python and small on purpose: ``import minicomp`` must stay fast.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager

from ..errors import MinicompError


class SymbolicShapeError(MinicompError):
    """Something needed the value of a symbolic size: the signature is compiled with static sizes."""


Monomial = tuple  # sorted factors, repeated for powers: ("T", "T") is T**2; () is 1


class CeilDiv(str):
    """A factor of a monomial that is no symbol: ``ceil(numerator / divisor)`` (the tiles of a
    symbolic size, ``ceil(T / 12)``). Build with ``ceil_div``.

    It is a ``str`` (its printed form, ``"ceil(T/12)"``) so that monomials stay sorted tuples
    of strings; ``Sym`` asks ``factor_symbols``, ``factor_value`` and ``render_factor`` for
    what a factor means. It stands for a size ``>= 0``, as a symbol does, so the comparisons
    of ``Sym`` stay exact.
    """

    __slots__ = ("numerator", "divisor")

    def __new__(cls, numerator: "Sym", divisor: int):
        factor = super().__new__(cls, f"ceil({numerator}/{divisor})")
        factor.numerator, factor.divisor = numerator, divisor
        return factor

    def __getnewargs__(self):
        return self.numerator, self.divisor


def factor_symbols(factor: str) -> frozenset:
    """The size symbols a monomial's factor reads: ``T`` -> {T}; ``ceil(T/12)`` -> {T}."""
    return factor.numerator.free_symbols if isinstance(factor, CeilDiv) else frozenset((factor,))


def factor_value(factor: str, env: dict) -> int:
    """A factor's value for sizes ``env``: ``ceil(T/12)`` at T = 13 is 2."""
    if isinstance(factor, CeilDiv):
        return -(-evaluate(factor.numerator, env) // factor.divisor)
    return env[factor]


def render_factor(factor: str, name_of) -> str:
    """A factor as an expression on non-negative integers: ``ceil(T/12)`` -> ``((T + 11)/12)``."""
    if isinstance(factor, CeilDiv):
        return f"(({(factor.numerator + (factor.divisor - 1)).render(name_of)})/{factor.divisor})"
    return name_of(factor)


def ceil_div(size, divisor: int):
    """``ceil(size / divisor)`` for a size ``>= 0`` and a positive int ``divisor``: an int, an
    exact quotient, or a ``Sym`` with a ``CeilDiv`` factor (the tiles of ``size``)::

        ceil_div(13, 12) = 2;  ceil_div(24*T, 12) = 2*T;  ceil_div(T, 12) = ceil(T/12)
    """
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"ceil_div needs a positive int divisor, not {divisor!r}")
    if not isinstance(size, Sym):
        return -(-size // divisor)
    exact = size._exact_quotient(divisor)
    if exact is not None:
        return exact
    return Sym({(CeilDiv(size, divisor),): 1})


class Sym:
    """An integer polynomial in size symbols; immutable and hashable. Build with ``Sym.symbol``."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: dict):
        self.terms = tuple(sorted((m, c) for m, c in terms.items() if c))
        self._hash = hash(self.terms)

    @staticmethod
    def symbol(name: str) -> "Sym":
        """The size symbol ``name`` (an identifier)."""
        if not name.isidentifier():
            raise ValueError(f"a size symbol's name must be an identifier, not {name!r}")
        return Sym({(name,): 1})

    # -- construction helpers -------------------------------------------------------------------

    @staticmethod
    def _make(terms: dict):
        """A ``Sym``, or the plain int when the polynomial is a constant."""
        terms = {m: c for m, c in terms.items() if c}
        if not terms:
            return 0
        if list(terms) == [()]:
            return terms[()]
        return Sym(terms)

    @staticmethod
    def _terms_of(value) -> dict | None:
        if isinstance(value, Sym):
            return dict(value.terms)
        if isinstance(value, int) and not isinstance(value, bool):
            return {(): value}
        if type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iu":
            return {(): int(value)}
        if isinstance(value, float) or type(value).__module__ == "numpy":  # cost models, NumPy scalars
            raise SymbolicShapeError(f"arithmetic of a symbolic size with {value!r} "
                                     "(not an int) is not exact")
        return None

    # -- arithmetic -----------------------------------------------------------------------------

    def __add__(self, other):
        b = Sym._terms_of(other)
        if b is None:
            return NotImplemented
        terms = dict(self.terms)
        for m, c in b.items():
            terms[m] = terms.get(m, 0) + c
        return Sym._make(terms)

    __radd__ = __add__

    def __neg__(self):
        return Sym._make({m: -c for m, c in self.terms})

    def __sub__(self, other):
        b = Sym._terms_of(other)
        return NotImplemented if b is None else self + Sym._make({m: -c for m, c in b.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        b = Sym._terms_of(other)
        if b is None:
            return NotImplemented
        terms: dict = {}
        for m1, c1 in self.terms:
            for m2, c2 in b.items():
                m = tuple(sorted(m1 + m2))
                terms[m] = terms.get(m, 0) + c1 * c2
        return Sym._make(terms)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        """Exact division only: by an int or a one-term polynomial that divides every term."""
        quotient = self._exact_quotient(other)
        if quotient is None:
            raise SymbolicShapeError(f"cannot divide the symbolic size {self} by {other} exactly")
        return quotient

    def _exact_quotient(self, other):
        """``self / other`` when it is a polynomial (``64*T*T / (4*T) = 16*T``), else None."""
        divisor = Sym._terms_of(other)
        if divisor is None or len(divisor) != 1:
            return None
        (monomial, coefficient), = divisor.items()
        if coefficient == 0:
            return None
        terms = {}
        for m, c in self.terms:
            rest = list(m)
            for name in monomial:
                if name not in rest:
                    return None
                rest.remove(name)
            if c % coefficient:
                return None
            terms[tuple(rest)] = c // coefficient
        return Sym._make(terms)

    def __rfloordiv__(self, other):
        raise SymbolicShapeError(f"cannot divide {other} by the symbolic size {self}")

    def __mod__(self, other):
        if self._exact_quotient(other) is not None:
            return 0
        raise SymbolicShapeError(f"{self} % {other} depends on the symbolic size")

    def __rmod__(self, other):
        raise SymbolicShapeError(f"{other} % {self} depends on the symbolic size")

    # -- comparisons: structural equality; an order only where it holds for every size ---------

    def __eq__(self, other):
        return self._equals(other, sys._getframe(1))

    def __ne__(self, other):
        return not self._equals(other, sys._getframe(1))

    def _equals(self, other, caller) -> bool:
        """Structural equality; a comparison made by the user's code that could go either way
        records the guard that it went the way taken (unequal)."""
        if isinstance(other, Sym) and self.terms == other.terms:
            return True
        if not isinstance(other, (int, Sym)) or isinstance(other, bool):
            return False
        diff = self - other
        if isinstance(diff, int) or not caller.f_globals.get("__name__", "").startswith("minicomp."):
            if not isinstance(diff, int):
                assume_unequal(diff, f"{self} == {other} was taken as False ({_where(caller)})")
        return False

    def __hash__(self):
        return self._hash

    @staticmethod
    def _nonnegative(diff, question: str) -> bool:
        """Whether ``diff >= 0`` for every size (True), for none (False); else raise."""
        if isinstance(diff, int):
            return diff >= 0
        if not isinstance(diff, Sym):
            raise TypeError(f"cannot decide {question}")
        constant = dict(diff.terms).get((), 0)
        others = [c for m, c in diff.terms if m]
        if constant >= 0 and all(c >= 0 for c in others):
            return True
        if constant < 0 and all(c <= 0 for c in others):
            return False
        raise SymbolicShapeError(f"whether {question} depends on the symbolic size (true for some sizes only)")

    def __ge__(self, other):
        return Sym._nonnegative(self - other, f"{self} >= {other}")

    def __lt__(self, other):
        return not self >= other

    def __le__(self, other):
        return Sym._nonnegative(other - self, f"{self} <= {other}")

    def __gt__(self, other):
        return not self <= other

    # -- what has to be a number ----------------------------------------------------------------

    def _refuse(self, what: str):
        raise SymbolicShapeError(f"{what} of the symbolic size {self} is not known while compiling")

    def __int__(self):
        self._refuse("the value")

    def __index__(self):
        self._refuse("the value (as an index, a range or a shape of a new array)")

    def __bool__(self):
        self._refuse("whether it is zero")

    def __float__(self):
        self._refuse("the value")

    # -- values, text ---------------------------------------------------------------------------

    @property
    def free_symbols(self) -> frozenset:
        return frozenset().union(*(factor_symbols(factor) for m, _ in self.terms for factor in m))

    def evaluate(self, env: dict) -> int:
        """The value for sizes ``env`` (symbol name -> int)."""
        total = 0
        for m, c in self.terms:
            term = c
            for factor in m:
                term *= factor_value(factor, env)
            total += term
        return total

    def align_up(self, alignment: int):
        """A polynomial ``>= self`` for every size whose value is always a multiple of ``alignment``
        (each coefficient rounded up to one): the bytes to reserve for a value of ``self`` bytes."""
        return Sym._make({m: -(-c // alignment) * alignment for m, c in self.terms})

    def render(self, name_of) -> str:
        """The polynomial as an expression, symbol ``s`` spelled ``name_of(s)``: ``768*T - 1``."""
        text = ""
        for m, c in sorted(self.terms, key=lambda t: (-len(t[0]), t[0])):
            factors = [render_factor(factor, name_of) for factor in m]
            if abs(c) != 1 or not factors:
                factors.insert(0, str(abs(c)))
            term = "*".join(factors)
            if not text:
                text = term if c > 0 else "-" + term
            else:
                text += (" + " if c > 0 else " - ") + term
        return text

    def __str__(self) -> str:
        return self.render(str)

    def __repr__(self) -> str:
        return str(self)


def is_symbolic(value) -> bool:
    """Whether ``value`` is a symbolic size (not a plain int)."""
    return isinstance(value, Sym)


def evaluate(value, env: dict) -> int:
    """``value`` (an int or a ``Sym``) for sizes ``env``."""
    return value.evaluate(env) if isinstance(value, Sym) else int(value)


def shape_symbols(shape) -> frozenset:
    """Every size symbol a shape mentions."""
    return frozenset().union(*(d.free_symbols for d in shape if isinstance(d, Sym)))


def align_up(nbytes, alignment: int):
    """``nbytes`` rounded up to a multiple of ``alignment`` (an upper bound for a symbolic one)."""
    if isinstance(nbytes, Sym):
        return nbytes.align_up(alignment)
    return -(-nbytes // alignment) * alignment


def parse_size(text: str):
    """An int or a ``Sym`` from its printed form (``"768*T + 1"``, ``"T"``, ``"12"``)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    total = 0
    for sign, term in _signed_terms(text):
        value = sign
        for factor in term.split("*"):
            factor = factor.strip()
            value = value * (int(factor) if factor.isdigit() else Sym.symbol(factor))
        total = total + value
    return total


def _signed_terms(text: str):
    """``"768*T - 1"`` -> ``[(1, "768*T"), (-1, "1")]``."""
    sign, term, out = 1, "", []
    for token in text.replace("-", " - ").replace("+", " + ").split():
        if token in "+-":
            if term:
                out.append((sign, term))
            sign, term = (-1 if token == "-" else 1), ""
        else:
            term += token
    if term:
        out.append((sign, term))
    return out


def bind_shape(pattern: tuple, shape: tuple, sizes: dict) -> bool:
    """Whether ``shape`` (ints) fits ``pattern`` (ints and ``Sym``), binding new symbols in ``sizes``.

    A dimension that is a lone symbol binds it on first sight and must equal it after (the
    guard "equal symbols are equal sizes"); any other symbolic dimension must equal its value
    once its symbols are bound. ``bind_shape((T, 8), (5, 8), {})`` binds ``T = 5``.
    """
    if len(pattern) != len(shape):
        return False
    for want, got in zip(pattern, shape):
        if isinstance(want, Sym) and len(want.terms) == 1 and want.terms[0][1] == 1 and len(want.terms[0][0]) == 1:
            name = want.terms[0][0][0]
            if sizes.setdefault(name, got) != got:
                return False
    for want, got in zip(pattern, shape):
        if isinstance(want, Sym) and not want.free_symbols <= sizes.keys():
            return False
        if evaluate(want, sizes) != got:
            return False
    return True


# -- guards: what a symbolic compile assumed about the sizes ---------------------------------------

_collecting = threading.local()


@contextmanager
def collect_guards():
    """Collect the guards ``require`` records while tracing: ``with collect_guards() as guards:``.

    A guard ``(expr, minimum, why)`` holds for a call when ``expr >= minimum`` at its sizes;
    ``driver.py`` checks them before using a symbolic compile, and compiles a call
    that breaks one with static sizes (torch.compile's guard failure, then recompile).
    """
    outer = getattr(_collecting, "guards", None)
    _collecting.guards = guards = []
    try:
        yield guards
    finally:
        _collecting.guards = outer


def require(expr, minimum: int, why: str) -> None:
    """Assume ``expr >= minimum`` (a guard, checked at every call); provable ones are not recorded.

    Outside ``collect_guards`` (nobody would check it) the assumption is refused:
    ``SymbolicShapeError``.
    """
    if not isinstance(expr, Sym):
        if expr < minimum:
            raise SymbolicShapeError(f"{why}: needs {expr} >= {minimum}")
        return
    try:
        if expr >= minimum:
            return
    except SymbolicShapeError:
        pass
    guards = getattr(_collecting, "guards", None)
    if guards is None:
        raise SymbolicShapeError(f"{why} needs {expr} >= {minimum}, which holds only for some sizes")
    if all((expr, minimum) != guard[:2] for guard in guards):
        guards.append((expr, minimum, why))


def assume_unequal(diff: "Sym", why: str) -> None:
    """Assume ``diff != 0``: nothing to record when it holds for every size (``T + 1``);
    otherwise the guard ``diff**2 >= 1`` (exact for integers) while guards are collected."""
    try:
        if Sym._nonnegative(diff - 1, "") or Sym._nonnegative(-diff - 1, ""):
            return
    except SymbolicShapeError:
        pass
    if getattr(_collecting, "guards", None) is not None:
        require(diff * diff, 1, why)


def _where(frame) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def guards_hold(guards, sizes: dict) -> bool:
    """Whether every guard ``(expr, minimum, why)`` holds at ``sizes``."""
    return all(evaluate(expr, sizes) >= minimum for expr, minimum, _ in guards)
