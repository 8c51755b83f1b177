"""``np.einsum`` as transposes, reshapes, sums, broadcasting multiplies and matmul.

The subscripts are parsed into one list of labels per operand (``...`` becomes labels of its
own, aligned from the right as NumPy broadcasts them). Then:

1. a label repeated in one operand (``'ii->i'``) takes the diagonal: the two axes moved last,
   flattened, sliced with step n+1;
2. a label that only one operand has and the output does not is summed out at once;
3. operands are combined left to right, two at a time: labels both share and nothing later
   needs are *contracted*, as one batched ``matmul`` (a fast GEMM):
   ``A[batch, left, k] @ B[batch, k, right]`` with the left, right and contracted labels each
   flattened into one axis; with nothing to contract, a broadcasting multiply;
4. the last operand is summed over what the output lacks and transposed into its order.

``np.einsum('bhqd,bhkd->bhqk', q, k)`` -> ``transpose(k) ; matmul : f32[b,h,q,k]``
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ShapeError, UnsupportedError, at
from ..ir.dtypes import to_dtype
from .functions import _as_traced, _unsupported_kwargs, implements
from .tracer import TracedArray, find_tracer, user_location

Labels = list  # one label per axis: a letter, or ("...", k) for the k-th axis of the ellipsis


class _Operand:
    """An array and the label of each of its axes."""

    def __init__(self, array: TracedArray, labels: Labels):
        assert array.ndim == len(labels)
        self.array, self.labels = array, list(labels)

    def size(self, label) -> int:
        return self.array.shape[self.labels.index(label)]


@implements(np.einsum)
def einsum(*operands, out=None, dtype=None, order="K", casting="safe", optimize=False):
    """``np.einsum`` (explicit and implicit output, ``...``, diagonals, any number of operands).

    Requires: subscripts as a string (``'ij,jk->ik'``). The result has NumPy's dtype and shape;
    contractions run as ``matmul`` (see the module docstring).
    """
    _unsupported_kwargs("np.einsum", {"out": out})
    if not operands or not isinstance(operands[0], str):
        raise UnsupportedError(f"np.einsum: only the subscripts-string form is supported{at(user_location())}; "
                               "write np.einsum('ij,jk->ik', a, b)")
    subscripts, arrays = operands[0], operands[1:]
    tracer = find_tracer(arrays)
    arrays = [_as_traced(tracer, a) for a in arrays]
    result_dtype = to_dtype(dtype) if dtype is not None else np.result_type(*[a.dtype for a in arrays])
    arrays = [a.astype(result_dtype) for a in arrays]
    inputs, output = _parse(subscripts, arrays)
    ops = [_take_diagonals(_Operand(a, labels)) for a, labels in zip(arrays, inputs)]
    _check_sizes(ops, subscripts)
    current = _sum_unused(ops[0], output, ops[1:])
    for i, nxt in enumerate(ops[1:], start=1):
        later = ops[i + 1:]
        current = _combine(current, _sum_unused(nxt, output, [current] + later), output, later)
    current = _sum_unused(current, output, [])
    perm = [current.labels.index(label) for label in output]
    result = current.array.transpose(perm) if perm != list(range(len(perm))) else current.array
    return result.astype(result_dtype).copy()


# -- parsing --------------------------------------------------------------------------------------


def _parse(subscripts: str, arrays: list[TracedArray]) -> tuple[list[Labels], Labels]:
    """``'...ij,jk'`` -> labels per operand and the output labels (NumPy's implicit rule if no ``->``)."""
    text = subscripts.replace(" ", "")
    lhs, arrow, rhs = text.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(arrays):
        _fail(f"{len(terms)} operand subscripts for {len(arrays)} operands", subscripts)
    ellipsis_dims = max([a.ndim - len(t.replace("...", "")) for t, a in zip(terms, arrays) if "..." in t],
                        default=0)
    inputs = [_labels(t, a.ndim, ellipsis_dims, subscripts) for t, a in zip(terms, arrays)]
    if arrow:
        if ellipsis_dims and "..." not in rhs:
            _fail("output has more dimensions than subscripts given, but no '...' ellipsis provided "
                      "to broadcast the extra dimensions", subscripts)
        output = _labels(rhs, None, ellipsis_dims, subscripts)
        if len(set(output)) != len(output):
            _fail(f"output subscript {rhs!r} has a repeated label", subscripts)
        present = {label for labels in inputs for label in labels}
        for label in output:
            if label not in present:
                _fail(f"output label {label!r} appears in no operand", subscripts)
        return inputs, output
    counts = {}
    for labels in inputs:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    ellipsis = [("...", k) for k in range(ellipsis_dims)]
    letters = sorted(label for label, c in counts.items() if c == 1 and isinstance(label, str))
    return inputs, ellipsis + letters


def _labels(term: str, ndim: int | None, ellipsis_dims: int, subscripts: str) -> Labels:
    """The labels of one term; ``ndim`` None for the output (its ellipsis spans them all)."""
    head, dots, tail = term.partition("...")
    if "." in head + tail or (dots and "..." in tail):
        _fail(f"invalid subscript {term!r} (one '...' at most, letters otherwise)", subscripts)
    for letter in head + tail:
        if not letter.isalpha() or not letter.isascii():
            _fail(f"invalid subscript {letter!r} (letters a-z, A-Z only)", subscripts)
    if not dots:
        if ndim is not None and len(term) != ndim:
            _fail(f"{len(term)} subscripts {term!r} for an operand of dimension {ndim}", subscripts)
        return list(term)
    own = ellipsis_dims if ndim is None else ndim - len(head) - len(tail)
    if own < 0:
        _fail(f"subscripts {term!r} for an operand of dimension {ndim}", subscripts)
    return list(head) + [("...", k) for k in range(ellipsis_dims - own, ellipsis_dims)] + list(tail)


def _fail(why: str, subscripts: str):
    raise ShapeError(f"np.einsum({subscripts!r}): {why}{at(user_location())}")


def _check_sizes(ops: list[_Operand], subscripts: str) -> None:
    """A label has one size in every operand (or 1, which broadcasts, as in NumPy)."""
    sizes = {}
    for op in ops:
        for label, dim in zip(op.labels, op.array.shape):
            known = sizes.setdefault(label, dim)
            if dim != known and 1 not in (dim, known):
                name = "..." if isinstance(label, tuple) else label
                _fail(f"label {name!r} has sizes {known} and {dim}: operands "
                      f"{', '.join(str(o.array.node.type) for o in ops)}", subscripts)
            sizes[label] = dim if known == 1 else known


# -- the steps ------------------------------------------------------------------------------------


def _take_diagonals(op: _Operand) -> _Operand:
    """Repeated labels in one operand (``'ii'``) become one axis: the diagonal."""
    while len(set(op.labels)) != len(op.labels):
        label = next(lab for lab in op.labels if op.labels.count(lab) > 1)
        first, second = [i for i, lab in enumerate(op.labels) if lab == label][:2]
        n = op.array.shape[first]
        if op.array.shape[second] != n:
            raise ShapeError(f"np.einsum: dimensions in operand for collapsing index {label!r} don't match "
                             f"({n} != {op.array.shape[second]}){at(user_location())}")
        rest = [i for i in range(len(op.labels)) if i not in (first, second)]
        moved = op.array.transpose(rest + [first, second])
        flat = moved.reshape(moved.shape[:-2] + (n * n,))
        diagonal = flat[..., ::n + 1]
        op = _Operand(diagonal, [op.labels[i] for i in rest] + [label])
    return op


def _sum_unused(op: _Operand, output: Labels, others: list[_Operand]) -> _Operand:
    """Sum out the labels of ``op`` that neither the output nor any of ``others`` has."""
    needed = set(output).union(*[o.labels for o in others])
    axes = tuple(i for i, label in enumerate(op.labels) if label not in needed)
    if not axes:
        return op
    kept = [label for label in op.labels if label in needed]
    return _Operand(_sum(op.array, axes), kept)


def _sum(x: TracedArray, axes: tuple[int, ...]) -> TracedArray:
    """A sum in ``x``'s own dtype (as einsum accumulates); for bools, any (NumPy's ``or``)."""
    if x.dtype == np.bool_:
        return x.sum(axis=axes) > 0
    return x.sum(axis=axes, dtype=x.dtype)


def _combine(a: _Operand, b: _Operand, output: Labels, later: list[_Operand]) -> _Operand:
    """``a`` times ``b`` with the shared labels nothing later needs summed: one matmul."""
    needed = set(output).union(*[o.labels for o in later])
    shared = [label for label in a.labels if label in b.labels]
    batch = [label for label in shared if label in needed]
    contracted = [label for label in shared if label not in needed]
    left = [label for label in a.labels if label not in shared]
    right = [label for label in b.labels if label not in shared]
    if not contracted:
        return _outer(a, b, batch, left, right)
    a_arr = _arranged(a, batch + left + contracted)
    b_arr = _arranged(b, batch + contracted + right)
    a_batch, b_batch = a_arr.shape[:len(batch)], b_arr.shape[:len(batch)]
    a_arr, b_arr = _broadcast_contracted(a_arr, b_arr, len(batch) + len(left), len(batch), len(contracted))
    left_dims = a_arr.shape[len(batch):len(batch) + len(left)]
    right_dims = b_arr.shape[len(batch) + len(contracted):]
    k_size = math.prod(a_arr.shape[len(batch) + len(left):])
    a_mat = _reshaped(a_arr, a_batch + (math.prod(left_dims), k_size))
    b_mat = _reshaped(b_arr, b_batch + (k_size, math.prod(right_dims)))
    product = a_mat @ b_mat
    batch_dims = product.shape[:len(batch)]
    return _Operand(_reshaped(product, batch_dims + left_dims + right_dims), batch + left + right)


def _broadcast_contracted(a: TracedArray, b: TracedArray, a_start: int, b_start: int, count: int):
    """Contracted axes of size 1 on one side only are broadcast to the other side's size."""
    a_shape, b_shape = list(a.shape), list(b.shape)
    for i in range(count):
        a_dim, b_dim = a_shape[a_start + i], b_shape[b_start + i]
        n = b_dim if a_dim == 1 else a_dim  # 1 broadcasts to the other size, 0 included
        a_shape[a_start + i] = b_shape[b_start + i] = n
    if tuple(a_shape) != a.shape:
        a = a._view("broadcast_to", shape=tuple(a_shape))
    if tuple(b_shape) != b.shape:
        b = b._view("broadcast_to", shape=tuple(b_shape))
    return a, b


def _outer(a: _Operand, b: _Operand, batch: Labels, left: Labels, right: Labels) -> _Operand:
    """Nothing to contract: a broadcasting multiply on axes batch + left + right."""
    a_arr = _arranged(a, batch + left)
    b_arr = _arranged(b, batch + right)
    a_arr = a_arr.reshape(a_arr.shape + (1,) * len(right))
    b_arr = b_arr.reshape(b_arr.shape[:len(batch)] + (1,) * len(left) + b_arr.shape[len(batch):])
    product = a_arr & b_arr if a_arr.dtype == np.bool_ else a_arr * b_arr
    return _Operand(product, batch + left + right)


def _arranged(op: _Operand, labels: Labels) -> TracedArray:
    perm = [op.labels.index(label) for label in labels]
    return op.array.transpose(perm) if perm != list(range(len(perm))) else op.array


def _reshaped(x: TracedArray, shape: tuple[int, ...]) -> TracedArray:
    return x if x.shape == tuple(shape) else x.reshape(shape)
