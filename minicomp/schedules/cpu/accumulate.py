"""Strategy ``accumulate_in_output``: the reduction loops outside the last output axis (i-k-j).

A plain reduction keeps one scalar accumulator per output element. When the output's last
axis is the one its operands are contiguous along (a matmul's ``b[k, j]``, the columns of
``x.sum(axis=0)``), that order walks memory with a stride in its innermost loop. Moving the
reduction loops outside the last output loop makes the innermost loop run along a row of the
operand and of the output: unit stride, elementwise, which the C compiler vectorises. Each
output element still adds its terms in the same order, so the results are the same, bit for
bit. Column sums of ``x: f32[4096, 1024]``, before and after::

    for i0 in 0..1024:                  for i0 in 0..1024:
      f32 acc = 0                         out[i0] = 0
      for r0 in 0..4096:                for r0 in 0..4096:
        acc = acc + x[r0*1024 + i0]       for i0 in 0..1024:
      out[i0] = acc                         out[i0] = out[i0] + x[r0*1024 + i0]

A matmul or conv with an epilogue (``out[i, j] = gelu(acc + b[j])``) accumulates a row, then
a last loop over the row finishes it while it is in cache. Other output loops stay outside
(with their marks: a parallel one stays parallel); with none (a column reduction)
``column_block`` cuts the row into blocks of at least that many columns, one task each for the
threads (the block loop is parallel: each block writes its own columns; the columns left over
make one more block after them). Blocks are whole groups of ``column_block //
GROUPS_PER_BLOCK`` columns (the default rule makes a group the lane count: whole vectors), so
the record alone decides the nest, on any machine.

Requires a perfect nest of output loops around exactly ``acc = init; for ...: acc =
combine(acc, value); out[index] = finish(acc)`` (``plain.py``), with ``index`` the row-major
position of the output loops (the running value then lives in the output, which must have the
accumulator's dtype) or any other (an epilogue ending in a transpose: the rows accumulate in a
scratch buffer ``<out>_acc``, and the last loop stores them moved). Guarantees the same
stores of the same values.
"""

from __future__ import annotations

from dataclasses import replace

from ...ir.loops import Block, Buffer, Const, Declare, For, Kernel, Load, Stmt, Store, Var
from ...ir.symbolic import Sym
from ...lower.rules import nest
from ..strategy import register_strategy
from .plain import (output_loops, refuse, replace_var, row_major, same_index, scalar_reduction, shares_output,
                    statements_of)


GROUPS_PER_BLOCK = 16  # a column block is 16 groups of columns (not a machine property: the group is)


@register_strategy("accumulate_in_output")
def accumulate_in_output(kernel: Kernel, column_block: int | None = None) -> Kernel:
    """``kernel`` in the i-k-j order (see the module docstring)."""
    chain, body = output_loops(kernel)
    stmts = statements_of(body)
    if not chain or len(stmts) != 3 or not isinstance(stmts[2], Store) or stmts[2].buffer is not kernel.output:
        raise refuse("accumulate_in_output", kernel, "not output loops around one reduction and its store")
    red, store = scalar_reduction(stmts[0], stmts[1]), stmts[2]
    if red is None or red.per_element:
        raise refuse("accumulate_in_output", kernel, "the output's value is not one plain scalar reduction")
    out, acc = kernel.output, red.acc
    if shares_output(kernel):
        raise refuse("accumulate_in_output", kernel, f"{out.name} shares memory with an input")
    in_place = same_index(store.index, row_major(chain))
    if in_place and out.dtype != acc.dtype:
        raise refuse("accumulate_in_output", kernel,
                     f"the output ({out.dtype}) cannot hold the {acc.dtype} accumulator exactly")
    rows = out if in_place else Buffer(f"{out.name}_acc", acc.dtype, tuple(loop.extent for loop in chain))
    at = store.index if in_place else row_major(chain)
    running = Load(rows, at)
    init = Store(rows, at, red.declare.init)
    step = Store(rows, at, replace_var(red.update.value, acc, running))
    finish = replace_var(store.value, acc, running)
    last = [] if in_place and finish is running else [Store(out, store.index, finish)]
    *others, j_loop = chain

    def columns(sweep) -> Stmt:  # init, accumulate and finish, each a sweep over the row
        return Block([sweep(init), nest(red.axes, sweep(step), parallel=False)] + [sweep(s) for s in last])

    if column_block is None:
        row = columns(lambda s: For(j_loop.var, j_loop.extent, s))
    else:
        if others or isinstance(j_loop.extent, Sym):
            raise refuse("accumulate_in_output", kernel, "column blocks need the last axis alone, of a known size")
        row = _column_blocks(kernel, columns, j_loop, column_block)
    for loop in reversed(others):
        row = replace(loop, body=row)
    scratch = [] if in_place else [rows]
    return replace(kernel, body=row, scratch=list(kernel.scratch) + scratch)


def _column_blocks(kernel: Kernel, columns, j_loop: For, column_block: int) -> Stmt:
    """The row cut into ``extent // column_block`` parallel blocks of whole groups of
    ``column_block // GROUPS_PER_BLOCK`` columns (about ``column_block`` each), then one block of
    the columns left over::

        parallel for i0_b in 0..3:                # 1000 columns, column_block 256: groups of 16
          for i0_i in 0..320: i64 i0 = i0_b*320 + i0_i; ...
        for i0_i in 0..40: i64 i0 = 960 + i0_i; ...
    """
    j, extent = j_loop.var, j_loop.extent
    if not isinstance(column_block, int) or column_block < GROUPS_PER_BLOCK or extent < 2 * column_block:
        raise refuse("accumulate_in_output", kernel,
                     f"{extent} columns make fewer than two blocks of column_block={column_block!r}")
    count, group = extent // column_block, column_block // GROUPS_PER_BLOCK
    width = extent // count // group * group  # whole groups; >= column_block where it is whole groups
    block, inner, rest = Var(f"{j.name}_b"), Var(f"{j.name}_i"), extent - count * width

    def sweep_from(first, length: int):
        return lambda s: For(inner, length, Block([Declare(j, first + inner), s]))

    blocks = For(block, count, columns(sweep_from(block * width, width)), "parallel")
    return Block([blocks] + ([columns(sweep_from(Const(extent - rest), rest))] if rest else []))
