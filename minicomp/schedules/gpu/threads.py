"""Strategy ``gpu_threads``: one GPU thread per iteration of the independent output loops.

The generic GPU schedule, for any kernel: elementwise, broadcast, gather, and every kernel no
better rule takes (a matmul, a column reduction, a scan, attention's plain nest: correct,
one output element or row per thread, the rest serial inside the thread). The outermost
loops whose iterations are independent (the test of ``Parallel`` and ``Bind``:
``common.independent_loops``) become one flat position, split into blocks of ``threads``
threads; the last block's overhang is guarded; everything inside runs serially in its
thread::

    for i0 in 0..4:                              # schedule: gpu_threads(threads=256)
      for i1 in 0..1000:               --->      gpu_block.x for b in 0..16:
        y[i0*1000 + i1] = x[...] + 1               gpu_thread.x for t in 0..256:
                                                     if (b*256 + t) < 4000:
                                                       y[b*256 + t] = x[...] + 1

A symbolic count of positions gives a symbolic grid (``ceil_div``: ``ceil(T/256)`` blocks).
A static count needing more than ``max_blocks`` blocks (CUDA allows 2^31-1) gets that many
blocks and a grid-stride loop inside the thread (``for s in 0..rounds``). A kernel with no
independent loop (a scalar output, a scan along its only axis) runs in one block of one
thread.

Requires a plain nest (as lowering wrote it). Guarantees the thread-serial form
(``fuse_threads.py``) with a single phase: the same stores of the same values, each position
in exactly one thread.
"""

from __future__ import annotations

from dataclasses import replace

from ...ir.loops import For, If, Kernel, Var
from ...ir.rewrite import substitute_stmt
from ...ir.schedule import loops, tidy
from ...ir.symbolic import Sym
from ..cpu.plain import loop_chain, refuse
from ..strategy import Strategy, register_strategy
from .common import (MAX_BLOCKS, WARP, Namer, check_plain, divides, extent_product, grid, independent_loops,
                     less, unravel)

THREADS = 256  # threads per block of the generic rule: 8 warps, a common choice for memory-bound kernels


@register_strategy("gpu_threads")
def gpu_threads(kernel: Kernel, threads: int = THREADS, max_blocks: int = MAX_BLOCKS) -> Kernel:
    """``kernel`` with a GPU thread per iteration of its independent output loops (module docstring)."""
    if not (isinstance(threads, int) and 1 <= threads <= 1024):
        raise refuse("gpu_threads", kernel, f"threads must be an int in 1..1024, not {threads!r}")
    if not (isinstance(max_blocks, int) and max_blocks >= 1):
        raise refuse("gpu_threads", kernel, f"max_blocks must be a positive int, not {max_blocks!r}")
    check_plain("gpu_threads", kernel)
    chain, _ = loop_chain(kernel.body)
    count = independent_loops(kernel, chain)
    name = Namer(kernel)
    b, t = Var(name("b")), Var(name("t"))
    if count == 0:
        return replace(kernel, body=For(b, 1, For(t, 1, kernel.body, "gpu_thread", "x"), "gpu_block", "x"))
    loops = chain[:count]
    positions = extent_product([loop.extent for loop in loops])
    blocks, rounds = grid(positions, threads, max_blocks)
    if rounds == 1:
        position = b * threads + t
    else:
        s = Var(name("s"))
        position = (s * blocks + b) * threads + t
    body = substitute_stmt(loops[-1].body, unravel(position, [(loop.var.name, loop.extent) for loop in loops]))
    if rounds > 1 or not divides(positions, threads):
        body = If(less(position, positions), body)
    if rounds > 1:
        body = For(s, rounds, body)
    return replace(kernel, body=tidy(For(b, blocks, For(t, threads, body, "gpu_thread", "x"), "gpu_block", "x")))


def gpu_threads_steps(kernel: Kernel, target=None) -> list:
    """The generic rule: ``gpu_threads`` for a kernel no rule before it bound, ``THREADS`` per
    block, fewer (a multiple of the warp) where the whole kernel has fewer positions."""
    if any(loop.kind != "serial" for loop in loops(kernel.body)):
        return []
    chain, _ = loop_chain(kernel.body)
    positions = extent_product([loop.extent for loop in chain[:independent_loops(kernel, chain)]])
    threads = THREADS
    if not isinstance(positions, Sym) and positions < THREADS:
        threads = max(WARP, -(-positions // WARP) * WARP)
    return [Strategy("gpu_threads", threads=threads)]

