"""FlashAttention on a CPU: fused attention in tiles, with both matmuls on the micro-kernel.

``softmax(f(q @ k^T)) @ v`` is lowered so that the ``Sq x Sk`` score matrix never exists.
Queries are taken ``BQ`` rows at a time; for each block of ``BK`` keys::

    S[BQ, BK]  = Qblock @ Kblock^T                 # micro-kernel, Q panel packed once per task
    S          = f(S)   (scale, causal mask ...)   # the fused score expression, in L1
    m_new      = max(m, rowmax(S)); c = exp(m - m_new)
    P          = exp(S - m_new); l = l*c + rowsum(P)   # P overwrites S
    O[BQ, D]   = O * c + P @ Vblock                 # micro-kernel again, reading P's rows in place
    out        = O / l   (after the last key block)

A constant mask (``where(c, -inf, s)``, causal attention's) is read at compile time: tiles it
hides entirely are skipped, tiles it leaves entirely visible run the score expression with
the mask folded away, and only the mixed tiles (causal: on the diagonal) load it.

``K^T`` and ``V`` are packed into micro-kernel panels once per call, before the parallel loop
over (batch, query block) tasks. Every row statistic is kept per query row, exactly as the
untiled online softmax in ``lower_fused.lower_attention`` (which small or integer cases
still use); row max and row sum run over SIMD lanes (``reductions.reduce_into_lanes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...codegen import gemm
from ...ir.compute import Reduce, _batch_index, compute, linear_index
from ...ir.graph import Node
from ...ir.loops import (BOOL, Address, Allocate, Binary, Block, Buffer, Call, Declare, Expr, For, If,
                        Intrinsic, Load, Select, Stmt, Store, Var, const)
from ...ir.simplify_indices import simplify_expr
from . import packed_gemm as lower_matmul
from .packed_gemm import as_index, declare_rows, index_op, uses
from .reductions import reduce_into_lanes

QUERY_PANELS = 2  # queries per task = 2 x MR: the S tile (12 x 128) stays in L1; measured best of 2..12
KEY_PANELS = 2  # keys per block = 2 micro-kernel panels: halves the per-row bookkeeping per key


def lower_tiled_attention(pv: Node, qk: Node, scores: Node, inline, out: Buffer):
    """The tiled nest for an attention group, or None where it does not apply (see module doc)."""
    dtype = pv.dtype
    if not gemm.supported(dtype) or qk.dtype != dtype or scores.dtype != dtype:
        return None
    idx = [Var(f"i{a}") for a in range(len(pv.shape))]
    *batch, i, e = idx
    sq, sk, head = qk.shape[-2], qk.shape[-1], pv.shape[-1]
    j = Var("j")
    r = compute(qk, [*batch, i, j], [inline.tensor(o) for o in qk.operands])
    body = r.body
    if r.combiner != "sum" or r.dtype != dtype or not (isinstance(body, Binary) and body.op == "*"):
        return None
    q_expr, k_expr = (body.b, body.a) if uses(body.a, j) else (body.a, body.b)
    if uses(q_expr, j) or len(r.axes) != 1 or sq * sk * head < lower_matmul.MIN_WORK:
        return None
    return _Tiled(pv, qk, scores, inline, out, idx, j, q_expr, k_expr, r.axes[0]).nest()


@dataclass
class Mask:
    """``where(c, -inf, x)`` (``hidden_when`` True) or ``where(c, x, -inf)`` with ``c`` constant."""

    operand: Node  # the node the ``where`` reads ``c`` through (an input of the fused body)
    value: np.ndarray  # ``c`` as Sq x Sk (shared by the batch)
    hidden_when: bool


def score_masks(scores: Node, qk: Node, shape: tuple[int, int], outer: dict) -> list[Mask] | None:
    """The constant masks on the way from ``qk`` to ``scores``; None if one differs by batch.

    ``outer`` maps the inputs of a fused body to the graph nodes they stand for (constants).
    """
    masks, stack, seen = [], [scores], set()
    while stack:
        node = stack.pop()
        if node is qk or node in seen:
            continue
        seen.add(node)
        stack.extend(node.operands)
        if node.op != "where":
            continue
        operand = node.operands[0]
        cond, a, b = [outer.get(o, o) for o in node.operands]
        if cond.op != "constant":
            continue
        value = cond.attrs["value"]
        if value.ndim > 2 and any(d != 1 for d in value.shape[:-2]):
            return None  # a mask that differs between batch elements
        value = np.broadcast_to(value.reshape(value.shape[-2:] if value.ndim >= 2 else value.shape), shape)
        for branch, hidden_when in ((a, True), (b, False)):
            if _is_minus_inf(branch):
                masks.append(Mask(operand, value, hidden_when))
    return masks


def dead_scores(masks: list[Mask], shape: tuple[int, int]) -> np.ndarray | None:
    """Where (Sq x Sk, shared by the batch) one of the masks forces the score to -inf, or None."""
    dead = np.zeros(shape, bool)
    for mask in masks:
        dead |= mask.value == mask.hidden_when
    return dead if dead.any() else None


def _is_minus_inf(node: Node) -> bool:
    return node.op == "constant" and node.type.size == 1 and node.attrs["value"].reshape(-1)[0] == -np.inf


def _per_block(qb: Var, values: list[int]):
    """``values[qb]`` as an expression (a chain of selects; query blocks are few)."""
    expr = as_index(values[-1])
    if len(set(values)) == 1:
        return expr
    for index in range(len(values) - 2, -1, -1):
        expr = Select(index_op("==", qb, index), as_index(values[index]), expr)
    return expr


class _Tiled:
    def __init__(self, pv, qk, scores, inline, out, idx, j, q_expr, k_expr, red):
        self.pv, self.qk, self.scores, self.inline, self.out = pv, qk, scores, inline, out
        self.idx, self.j, self.q_expr, self.k_expr = idx, j, q_expr, k_expr
        (self.d, self.depth) = red
        self.dtype = pv.dtype
        self.mr, self.nr = gemm.tile_shape(self.dtype)
        self.ukernel = gemm.kernel_name(self.dtype)
        *self.batch, self.i, self.e = idx
        self.batch_shape = pv.shape[:-2]
        self.nbatch = int(np.prod(self.batch_shape, dtype=np.int64))
        self.sq, self.sk, self.head = qk.shape[-2], qk.shape[-1], pv.shape[-1]
        self.bq = min(QUERY_PANELS * self.mr, -(-self.sq // self.mr) * self.mr)
        self.halves = KEY_PANELS if qk.shape[-1] > self.nr else 1  # NR-wide panels of keys per block
        self.bk = self.nr * self.halves
        self.nqb, self.nkb = -(-self.sq // self.bq), -(-self.sk // self.bk)
        self.dp = -(-self.head // self.nr) * self.nr  # head size padded to whole panels
        self.neb = self.dp // self.nr
        self.kpack = Buffer(f"{out.name}_kpack", self.dtype, (self.nbatch * self.nkb * self.depth * self.bk,))
        self.vpack = Buffer(f"{out.name}_vpack", self.dtype, (self.nbatch * self.neb * self.nkb * self.bk * self.nr,))
        # per task, on its thread's stack: the Q panel, the score/P tile, O and the row statistics
        self.qpanel = Buffer("qpanel", self.dtype, (self.bq * self.depth,))
        self.s = Buffer("s", self.dtype, (self.bq * self.bk,))
        self.o = Buffer("o", self.dtype, (self.bq * self.dp,))
        self.m = Buffer("row_max", self.dtype, (self.bq,))
        self.l = Buffer("row_sum", self.dtype, (self.bq,))
        self.masks = score_masks(scores, qk, (self.sq, self.sk), inline.outer)  # None: one varies by batch

    def nest(self):
        from ...lower.fused import Nest
        body = Block([self.pack_kv(), self.tasks()])
        return Nest(body, [self.kpack, self.vpack], [self])

    def __str__(self) -> str:
        return (f"flash_attention(bq={self.bq}, bk={self.bk}): pack K^T and V panels, parallel over "
                f"(batch, query block), online softmax per row, tensorize {self.ukernel} for QK^T and PV")

    def _batch_decls(self, flat: Var) -> list:
        pairs = [(v, d) for v, d in zip(self.batch, self.batch_shape)]
        return declare_rows(pairs, flat) if pairs else []

    def pack_kv(self) -> Stmt:
        """kpack[b][kb][d][c] = k[b, kb*BK + c, d]; vpack[b][eb][key][jj] = v[b, key, eb*NR + jj]."""
        bf, kb, c, jj, eb = Var("bf"), Var("kb"), Var("c"), Var("jj"), Var("eb")
        zero = const(0, self.dtype)
        h, c2 = Var("h"), Var("c2")
        k_panel = index_op("+", index_op("*", index_op("+", index_op("*", bf, self.nkb), kb), self.halves), h)
        k_at = index_op("+", index_op("*", index_op("+", index_op("*", k_panel, self.depth), self.d), self.nr), c2)
        k_store = Block([Declare(self.j, index_op("+", index_op("*", kb, self.bk), index_op("+", index_op("*", h, self.nr), c2))),
                         Store(self.kpack, k_at, Select(index_op("<", self.j, self.sk), self.k_expr, zero))])
        v = self.inline.tensor(self.pv.operands[1])
        key = index_op("+", index_op("*", kb, self.bk), c)
        v_col = index_op("+", index_op("*", eb, self.nr), jj)
        v_idx = _batch_index(list(self.batch), v.shape[:-2]) + [self.j, self.e]
        v_at = index_op("+", index_op("*", index_op("+", index_op("*", index_op("+", index_op("*", bf, self.neb), eb), self.nkb * self.bk), key), self.nr), jj)
        inside = index_op("&&", index_op("<", self.j, self.sk), index_op("<", self.e, self.head))
        v_store = Block([Declare(self.j, key), Declare(self.e, v_col),
                         Store(self.vpack, v_at, Select(inside, v[v_idx], zero))])
        per_block = Block(self._batch_decls(bf) + [
            For(h, self.halves, For(self.d, self.depth, For(c2, self.nr, k_store))),
            For(eb, self.neb, For(c, self.bk, For(jj, self.nr, v_store)))])
        task = Var("t_pack")
        return For(task, self.nbatch * self.nkb,
                   Block([Declare(bf, index_op("/", task, self.nkb)), Declare(kb, index_op("%", task, self.nkb)), per_block]),
                   "parallel")

    def tasks(self) -> Stmt:
        """One task per (batch, query block): Q panel, then the loop over key blocks, then O / l."""
        t, bf, qb, q0 = Var("t"), Var("bf"), Var("qb"), Var("q0")
        kb = Var("kb")
        stmts = [Declare(bf, index_op("/", t, self.nqb)), Declare(qb, index_op("%", t, self.nqb)),
                 Declare(q0, index_op("*", qb, self.bq))] + self._batch_decls(bf)
        stmts += [Allocate(b) for b in (self.qpanel, self.s, self.o, self.m, self.l)]
        live = self.live_key_blocks()
        mixed = self.mixed_key_blocks(live)
        masked = None if mixed is None else index_op("&&", index_op(">=", kb, _per_block(qb, [lo for lo, _ in mixed])),
                                                         index_op("<", kb, _per_block(qb, [hi for _, hi in mixed])))
        key_block = Block([self.scores_tile(bf, kb), self.softmax_rows(q0, kb, masked), self.accumulate_pv(bf, kb)])
        if live is not None:  # skip key blocks a constant mask hides entirely (causal: above the diagonal)
            visible = index_op("<", kb, _per_block(qb, [hi for _, hi in live]))
            if any(lo for lo, _ in live):
                visible = index_op("&&", index_op(">=", kb, _per_block(qb, [lo for lo, _ in live])), visible)
            key_block = If(visible, key_block)
        stmts += [self.pack_q(q0), self.init_rows(), For(kb, self.nkb, key_block), self.store_out(q0)]
        return For(t, self.nbatch * self.nqb, Block(stmts), "parallel")

    def live_key_blocks(self) -> list[tuple[int, int]] | None:
        """Per query block, the range [lo, hi) of key blocks a constant mask leaves visible.

        The score expression is searched for ``where(c, -inf, x)`` / ``where(c, x, -inf)`` with a
        constant ``c`` shared by the whole batch; a tile where every score is forced to -inf adds
        exp(-inf) = 0 to every sum, so it is skipped. None when nothing can be skipped, or the
        visible blocks of a query block are not one range.
        """
        dead = dead_scores(self.masks, (self.sq, self.sk)) if self.masks else None
        if dead is None:
            return None
        live = []
        for qb in range(self.nqb):
            rows = dead[qb * self.bq:(qb + 1) * self.bq]
            blocks = [kb for kb in range(self.nkb) if not rows[:, kb * self.bk:(kb + 1) * self.bk].all()]
            if blocks and blocks != list(range(blocks[0], blocks[-1] + 1)):
                return None
            live.append((blocks[0], blocks[-1] + 1) if blocks else (0, 0))
        return None if all(span == (0, self.nkb) for span in live) else live

    def mixed_key_blocks(self, live) -> list[tuple[int, int]] | None:
        """Per query block, the range [lo, hi) of key blocks where a constant mask hides some scores.

        The other visible tiles (causal: below the diagonal) see every mask constant and
        visible, and run the score expression without loading the mask. None when there is
        no mask, or the mixed tiles of a query block are not one range (then every tile loads it).
        """
        if not self.masks:
            return None
        mixed = []
        for qb in range(self.nqb):
            lo, hi = live[qb] if live is not None else (0, self.nkb)
            rows = slice(qb * self.bq, (qb + 1) * self.bq)
            blocks = [kb for kb in range(lo, hi)
                      if any((m.value[rows, kb * self.bk:(kb + 1) * self.bk] == m.hidden_when).any() for m in self.masks)]
            if blocks and blocks != list(range(blocks[0], blocks[-1] + 1)):
                return None
            mixed.append((blocks[0], blocks[-1] + 1) if blocks else (0, 0))
        return mixed

    def score_without_masks(self, at_index) -> Expr:
        """The score expression with every mask replaced by its visible value (folded away)."""
        visible = {m.operand: const(not m.hidden_when, BOOL) for m in self.masks}
        with self.inline.rebound(visible):
            return simplify_expr(self.inline.tensor(self.scores)[at_index], {})

    def pack_q(self, q0) -> Stmt:
        """qpanel[r][d] = q[b, q0 + r, d] (0 past the last query): the rows the micro-kernel reads."""
        panel, r = Var("panel"), Var("r")
        at = index_op("+", index_op("*", index_op("+", index_op("*", panel, self.mr), r), self.depth), self.d)
        value = Select(index_op("<", self.i, self.sq), self.q_expr, const(0, self.dtype))
        row = Block([Declare(self.i, index_op("+", q0, index_op("+", index_op("*", panel, self.mr), r))),
                     For(self.d, self.depth, Store(self.qpanel, at, value))])
        return self._rows(panel, r, row)

    def _rows(self, panel: Var, r: Var, body: Stmt) -> Stmt:
        """``for panel, r: body`` over the BQ rows of a task, MR rows per micro-kernel panel."""
        return For(panel, self.bq // self.mr, For(r, self.mr, body))

    def init_rows(self) -> Stmt:
        row, x = Var("row"), Var("x")
        return Block([For(x, self.bq * self.dp, Store(self.o, x, const(0, self.dtype))),
                      For(row, self.bq, Block([Store(self.m, row, const(-np.inf, self.dtype)),
                                               Store(self.l, row, const(0, self.dtype))]))])

    def scores_tile(self, bf, kb) -> Stmt:
        """S = Qblock @ Kblock^T: one micro-kernel call per MR query rows."""
        p, h = Var("p"), Var("h")
        panel = index_op("+", index_op("*", index_op("+", index_op("*", bf, self.nkb), kb), self.halves), h)
        k_panel = Address(self.kpack, index_op("*", panel, self.depth * self.nr))
        s_at = Address(self.s, index_op("+", index_op("*", p, self.mr * self.bk), index_op("*", h, self.nr)))
        call = Intrinsic(self.ukernel, (as_index(self.depth), Address(self.qpanel, index_op("*", p, self.mr * self.depth)),
                                        as_index(self.depth),
                                        k_panel, s_at, as_index(self.bk), as_index(0)))
        return For(p, self.bq // self.mr, For(h, self.halves, call))

    def softmax_rows(self, q0, kb, masked: Expr | None) -> Stmt:
        """Per query row: the score expression, then the online max/sum update with P = exp(S - max).

        ``masked``: the condition for a tile that needs the constant mask (None: every tile).
        """
        panel, r, c = Var("panel"), Var("r"), Var("c")
        row = Var("row")
        dt = self.dtype
        at = index_op("+", index_op("*", row, self.bk), c)
        qk_value = Var("qk", dt)  # loaded before the score expression: no load in a branch of it
        self.inline.bind(self.qk, qk_value)
        score = self.inline.tensor(self.scores)[[*self.batch, self.i, self.j]]
        neg_inf = const(-np.inf, dt)

        def over_keys(value) -> Stmt:
            return For(c, self.bk, Block([Declare(self.j, index_op("+", index_op("*", kb, self.bk), c)),
                                          Declare(qk_value, Load(self.s, at)), Store(self.s, at, value)]),
                       "vectorized")

        # the padding guards: per key inside the loop (folded away when Sk is whole blocks), per
        # row outside it, so that the loop body has no branch around a load and vectorises
        key_exists = index_op("<", self.j, self.sk)
        apply_f = over_keys(Select(key_exists, score, neg_inf))
        if masked is not None:
            plain = self.score_without_masks([*self.batch, self.i, self.j])
            apply_f = If(masked, apply_f, over_keys(Select(key_exists, plain, neg_inf)))
        apply_f = If(index_op("<", self.i, self.sq), apply_f, over_keys(neg_inf))
        m_old, m_new, shift, corr = Var("m_old", dt), Var("m_new", dt), Var("shift", dt), Var("correction", dt)
        s_val = Load(self.s, at)
        p_val = Call("exp", (Binary("-", s_val, shift, dt),), dt)
        mx, total = Var("mx", dt), Var("sum", dt)
        row_max = reduce_into_lanes(mx, Reduce("max", [(c, self.bk)], s_val, dt))
        exps = For(c, self.bk, Store(self.s, at, p_val), "vectorized")
        row_sum = reduce_into_lanes(total, Reduce("sum", [(c, self.bk)], s_val, dt))
        x = Var("x")
        o_at = index_op("+", index_op("*", row, self.dp), x)
        stmts = [Declare(row, index_op("+", index_op("*", panel, self.mr), r)), Declare(self.i, index_op("+", q0, row)),
                 apply_f, Declare(m_old, Load(self.m, row))]
        stmts += row_max
        stmts += [Declare(m_new, Call("mc_maximum", (m_old, mx), dt)),
                  # all scores so far -inf (masked): shift by 0 so exp(-inf - 0) = 0, not NaN
                  Declare(shift, Select(Binary("==", m_new, neg_inf, BOOL), const(0, dt), m_new)),
                  Declare(corr, Call("exp", (Binary("-", m_old, shift, dt),), dt)),
                  exps]
        stmts += row_sum
        stmts += [Store(self.l, row, Binary("+", Binary("*", Load(self.l, row), corr, dt), total, dt)),
                  Store(self.m, row, m_new),
                  For(x, self.dp, Store(self.o, o_at, Binary("*", Load(self.o, o_at), corr, dt)), "vectorized")]
        return self._rows(panel, r, Block(stmts))

    def accumulate_pv(self, bf, kb) -> Stmt:
        """O += P @ Vblock: micro-kernel per (MR query rows, NR head columns), P's rows read in place."""
        p, eb = Var("p"), Var("eb")
        v_panel = Address(self.vpack, index_op("*", index_op("+", index_op("*", index_op("+", index_op("*", bf, self.neb), eb), self.nkb * self.bk),
                                                   index_op("*", kb, self.bk)), self.nr))
        call = Intrinsic(self.ukernel, (as_index(self.bk), Address(self.s, index_op("*", p, self.mr * self.bk)),
                                        as_index(self.bk), v_panel,
                                        Address(self.o, index_op("+", index_op("*", p, self.mr * self.dp), index_op("*", eb, self.nr))),
                                        as_index(self.dp), as_index(1)))
        return For(p, self.bq // self.mr, For(eb, self.neb, call))

    def store_out(self, q0) -> Stmt:
        """out[b, q0 + row, e] = O[row, e] / l[row] for the rows that exist."""
        row = Var("row")
        value = Binary("/", Load(self.o, index_op("+", index_op("*", row, self.dp), self.e)), Load(self.l, row), self.dtype)
        store = Store(self.out, linear_index(self.idx, self.pv.shape), value)
        return For(row, self.bq, Block([Declare(self.i, index_op("+", q0, row)),
                                        If(index_op("<", self.i, self.sq), For(self.e, self.head, store))]))


