"""The online softmax row of attention: what ``lower_attention`` writes per query row.

FlashAttention's recurrence, untiled: per query row a running max ``m``, a running sum ``l``
and an output row ``acc``, rescaled by ``exp(m_old - m_new)`` whenever the max grows; the
scores are never stored. ``OnlineSoftmax`` holds the parts that differ from one attention to
another (the dot product, the score expression, ``v``, where the row goes); the
``flash_attention`` schedule (``minicomp.schedules.cpu.flash_attention``) reads them back from
a lowered kernel and tiles the row with them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.compute import Reduce, cast
from ..ir.loops import (BOOL, Allocate, Assign, Binary, Block, Buffer, Call, Declare, Expr, For, Load, Select,
                        Store, Var, const)
from .rules import reduce_into


@dataclass
class OnlineSoftmax:
    """The parts of one query row of attention.

    ``score`` is the score of key ``j`` (of ``keys``), reading the dot product ``dot`` that
    ``qk`` reduces (``sum over rk of q[i, rk] * k[j, rk]``); ``v`` is ``v[j, e]``; the row
    accumulates in the local ``acc`` (one value per ``e``) and ends in ``out[out_at]``.
    """

    dot: Var
    qk: Reduce
    score: Expr
    v: Expr
    j: Var
    keys: int
    acc: Buffer
    e: Var
    out: Buffer
    out_at: Expr


def online_softmax(row: OnlineSoftmax) -> Block:
    """The statements of one query row (the masked keys' -inf scores weigh 0, as in NumPy)::

        acc[e] = 0; m = -inf; l = 0
        for j in 0..keys:
          dot = sum over rk of q.k; score = f(dot); m_new = max(m, score)
          correction = exp(m - m_new); p = exp(score - m_new)
          l = l*correction + p; acc[e] = acc[e]*correction + p*v[j, e]; m = m_new
        out[e] = acc[e] / l
    """
    dtype, head, acc, e = row.acc.dtype, row.acc.shape[0], row.acc, row.e
    m, l, m_new, shift = Var("m", dtype), Var("l", dtype), Var("m_new", dtype), Var("shift", dtype)
    corr, p, s = Var("correction", dtype), Var("p", dtype), Var("score", dtype)
    exp = lambda x: Call("exp", (x,), dtype)  # noqa: E731
    key_step = Block(reduce_into(row.dot, row.qk) + [
        Declare(s, cast(row.score, dtype)),
        Declare(m_new, Call("mc_maximum", (m, s), dtype)),
        # while every score so far is -inf (masked keys), exp(m - m_new) would be exp(-inf + inf)
        # = NaN: shift by 0 instead, so the masked keys weigh exp(-inf) = 0 as in NumPy
        Declare(shift, Select(Binary("==", m_new, const(-np.inf, dtype), BOOL), const(0, dtype), m_new)),
        Declare(corr, exp(Binary("-", m, shift, dtype))),
        Declare(p, exp(Binary("-", s, shift, dtype))),
        Assign(l, Binary("+", Binary("*", l, corr, dtype), p, dtype)),
        For(e, head, Store(acc, e, Binary("+", Binary("*", Load(acc, e), corr, dtype),
                                          Binary("*", p, cast(row.v, dtype), dtype), dtype))),
        Assign(m, m_new),
    ])
    return Block([
        Allocate(acc), For(e, head, Store(acc, e, const(0, dtype))),
        Declare(m, const(-np.inf, dtype)), Declare(l, const(0, dtype)),
        For(row.j, row.keys, key_step),
        For(e, head, Store(row.out, row.out_at, Binary("/", Load(acc, e), l, dtype))),
    ])
