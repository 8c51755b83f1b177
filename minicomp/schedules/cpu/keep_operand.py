"""Strategy ``keep_operand``: a row kernel's last reduction leaves its operand in the output row.

Softmax computes ``exp(x - max)`` twice in its plain nest: once for the sum, once for the
epilogue. The sum's loop can store each value into the output row as it goes, and the
epilogue read it back from cache: one ``exp`` per element instead of two::

    f32 acc_sum = 0                                 f32 acc_sum = 0
    for r1 in 0..1024:                              for r1 in 0..1024:
      acc_sum = acc_sum + exp(x[i0*1024 + r1] - v)    f32 e_exp = exp(x[i0*1024 + r1] - v)
    f32 v_sum = acc_sum                   --->        out[i0*1024 + r1] = e_exp
    for i1 in 0..1024:                                acc_sum = acc_sum + e_exp
      out[i0*1024 + i1] =                           f32 v_sum = acc_sum
        exp(x[i0*1024 + i1] - v) / v_sum            for i1 in 0..1024:
                                                      out[i0*1024 + i1] = out[i0*1024 + i1] / v_sum

Requires a row nest (``lower_row``): output loops around statements that end with the last
scalar reduction, then (after per-row locals) the epilogue, a perfect nest storing the output.
Legal, in loop-IR terms, when

* the output is stored only by the epilogue, loaded nowhere and shares no memory with an
  input (so the values parked in it are read before anything else is written there);
* the reduction's loops and the epilogue's loops run over the same iterations (same count,
  same extents, in order: ``r1`` is ``i1``), so the reduction stores exactly the elements the
  epilogue then writes;
* the kept value (a part of the accumulated value holding a call: not worth computing twice)
  has the output's dtype, so the output holds it exactly; and
* the epilogue reads it back only at the element it is writing (each occurrence of the value
  at the epilogue's own iteration becomes a load of the output at the store's index; any
  other occurrence stays computed).

Guarantees the same stores of the same values.
"""

from __future__ import annotations

from dataclasses import replace

from ...ir.loops import Assign, Block, Call, Declare, Expr, For, Kernel, Load, Store, Var, walk
from ...ir.rewrite import declared_names, free_vars, loaded_buffers, map_expr, substitute
from ..strategy import register_strategy
from .plain import (expr_key, innermost, loop_chain, output_loops, reductions_in, refuse, shares_output,
                    statements_of, stores_in, with_innermost)


@register_strategy("keep_operand")
def keep_operand(kernel: Kernel) -> Kernel:
    """``kernel`` with its last reduction's operand kept in the output row (see the module docstring)."""
    def fail(why: str):
        return refuse("keep_operand", kernel, why)

    out = kernel.output
    chain, body = output_loops(kernel)
    stmts = statements_of(body)
    reductions = reductions_in(Block(stmts))
    epilogue = stmts[-1]
    if not reductions or not isinstance(epilogue, For) or not isinstance(innermost(epilogue), Store):
        raise fail("not a row of reductions ending in a loop that stores the output")
    store = innermost(epilogue)
    stores = stores_in(kernel.body)
    if store.buffer is not out or stores != [store] or out in loaded_buffers(kernel.body) or shares_output(kernel):
        raise fail("the output is stored elsewhere too, loaded, or shares memory with an input")
    last = reductions[-1]
    if last.per_element:
        raise fail(f"{last.acc.name} already does more than accumulate per element")
    loops, _ = loop_chain(epilogue)
    if [str(e) for _, e in last.axes] != [str(loop.extent) for loop in loops]:
        raise fail(f"the loops of {last.acc.name} and of the epilogue run over different iterations")
    to_epilogue = {var.name: loop.var for (var, _), loop in zip(last.axes, loops)}
    to_reduction = {loop.var.name: var for (var, _), loop in zip(last.axes, loops)}
    kept = _kept_value(last.value, store.value, to_epilogue, out.dtype, last.acc)
    if kept is None:
        raise fail(f"no part of {last.acc.name}'s value with a call and the output's dtype is read by the epilogue")
    element = Var(_fresh(kernel, f"e_{next(e.fn for e in walk(kept) if isinstance(e, Call))}"), kept.dtype)
    kept_key, kept_there = expr_key(kept), expr_key(substitute(kept, to_epilogue))
    update = Assign(last.acc, _replaced(last.update.value, kept_key, element))
    per_element = Block([Declare(element, kept), Store(out, substitute(store.index, to_reduction), element),
                         update])
    read_back = Load(out, store.index)
    new_store = Store(out, store.index, _replaced(store.value, kept_there, read_back))
    rewritten = [with_innermost(last.nest, per_element) if s is last.nest else s for s in stmts[:-1]]
    rewritten.append(with_innermost(epilogue, new_store))
    new_body: object = Block(rewritten)
    for loop in reversed(chain):
        new_body = replace(loop, body=new_body)
    return replace(kernel, body=new_body)


def _kept_value(value: Expr, epilogue: Expr, to_epilogue: dict, dtype, acc: Var) -> Expr | None:
    """The outermost part of ``value`` worth keeping that the epilogue also computes at its own
    iteration: the output's dtype, a call inside, the accumulator not."""
    found = {expr_key(e) for e in walk(epilogue)}
    for part in walk(value):
        if (part.dtype == dtype and any(isinstance(e, Call) for e in walk(part)) and acc.name not in free_vars(part)
                and expr_key(substitute(part, to_epilogue)) in found):
            return part
    return None


def _replaced(e: Expr, key, new: Expr) -> Expr:
    """``e`` with every part whose ``expr_key`` is ``key`` replaced by ``new``."""
    return map_expr(e, lambda sub: new if expr_key(sub) == key else None)


def _fresh(kernel: Kernel, name: str) -> str:
    taken, fresh, n = declared_names(kernel.body), name, 1
    while fresh in taken:
        fresh, n = f"{name}_{n}", n + 1
    return fresh
