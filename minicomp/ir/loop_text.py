"""Printing the loop IR in a compact, Python-like form (for ``minicomp dump --emit loops``).

    kernel exp(x: f32[4,8]) -> exp: f32[4,8]      # %exp = exp  at model.py:3
      parallel for i0 in 0..4:
        for i1 in 0..8:
          exp[i0*8 + i1] = exp(x[i0*8 + i1])

GPU-bound loops print their axis (``gpu_block.x for b in 0..4:``), local arrays their scope
(``shared part: f32[64]``), and the synchronising statements as ``barrier`` and
``f32 s = warp_sum(part[t])``.
"""

from __future__ import annotations

import numpy as np

from .dtypes import short_name
from .loops import (GPU_LOOPS, Address, Allocate, Barrier, If, Intrinsic, Assign, Binary, Block, Call, Cast, Const,
                    Declare, Expr, For, Kernel, Load, Select, Size, Stmt, Store, Unary, Var, WarpReduce)


def print_expr(e: Expr) -> str:
    """One expression as text; binary operations are parenthesised unless at the top."""
    if isinstance(e, Const):
        if e.dtype.kind == "b":
            return "true" if e.value else "false"
        return str(e.value) if e.dtype.kind in "iu" else f"{str(e.value)}{_suffix(e.dtype)}"
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Size):
        return str(e.value).replace(" ", "")
    if isinstance(e, Load):
        return f"{e.buffer.name}[{_strip(print_expr(e.index))}]"
    if isinstance(e, Binary):
        return f"({print_expr(e.a)} {e.op} {print_expr(e.b)})"
    if isinstance(e, Unary):
        return f"{e.op}{print_expr(e.a)}"
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(print_expr(a) for a in e.args)})"
    if isinstance(e, Cast):
        return f"{short_name(e.dtype)}({print_expr(e.a)})"
    if isinstance(e, Address):
        return f"&{e.buffer.name}[{_strip(print_expr(e.index))}]"
    if isinstance(e, Select):
        return f"select({print_expr(e.cond)}, {print_expr(e.a)}, {print_expr(e.b)})"
    raise TypeError(f"unknown expression {e!r}")


def _suffix(dtype: np.dtype) -> str:
    return "" if dtype == np.float64 else f"_{short_name(dtype)}"


def _strip(text: str) -> str:
    return text[1:-1] if text.startswith("(") and text.endswith(")") else text


def print_stmt(s: Stmt, indent: int = 1) -> list[str]:
    """Lines of one statement at ``indent`` levels (two spaces each)."""
    pad = "  " * indent
    if isinstance(s, For):
        prefix = "" if s.kind == "serial" else f"{s.kind}.{s.axis} " if s.kind in GPU_LOOPS else f"{s.kind} "
        return [f"{pad}{prefix}for {s.var.name} in 0..{s.extent}:"] + print_stmt(s.body, indent + 1)
    if isinstance(s, Store):
        return [f"{pad}{s.buffer.name}[{_strip(print_expr(s.index))}] = {_strip(print_expr(s.value))}"]
    if isinstance(s, Declare):
        return [f"{pad}{short_name(s.var.dtype)} {s.var.name} = {_strip(print_expr(s.init))}"]
    if isinstance(s, Assign):
        return [f"{pad}{s.var.name} = {_strip(print_expr(s.value))}"]
    if isinstance(s, Block):
        return [line for stmt in s.stmts for line in print_stmt(stmt, indent)]
    if isinstance(s, Allocate):
        return [f"{pad}{s.scope} {s.buffer}"]
    if isinstance(s, Barrier):
        return [f"{pad}barrier"]
    if isinstance(s, WarpReduce):
        width = "" if s.width == 32 else f", width={s.width}"
        value = _strip(print_expr(s.value))
        return [f"{pad}{short_name(s.var.dtype)} {s.var.name} = warp_{s.combiner}({value}{width})"]
    if isinstance(s, If):
        lines = [f"{pad}if {_strip(print_expr(s.cond))}:"] + print_stmt(s.then, indent + 1)
        if s.otherwise is not None:
            lines += [f"{pad}else:"] + print_stmt(s.otherwise, indent + 1)
        return lines
    if isinstance(s, Intrinsic):
        return [f"{pad}{s.fn}({', '.join(_strip(print_expr(a)) for a in s.args)})"]
    raise TypeError(f"unknown statement {s!r}")


def print_kernel(k: Kernel) -> str:
    """The whole kernel: signature, source comment, schedule, body."""
    ins = ", ".join(str(b) for b in dict.fromkeys(k.inputs))
    head = f"kernel {k.name}({ins}) -> {k.output}"
    if k.scratch:
        head += f"  scratch {', '.join(str(b) for b in k.scratch)}"
    schedule = [f"  # schedule: {step}" for step in k.schedule]
    if len(k.source) == 1:
        return "\n".join([f"{head}      # {k.source[0]}"] + schedule + print_stmt(k.body))
    return "\n".join([f"# {line}" for line in k.source] + [head] + schedule + print_stmt(k.body))
