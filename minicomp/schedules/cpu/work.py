"""When threads pay: the CPU schedules' measure of a kernel's work.

A parallel loop costs the start and join of its threads (a few microseconds on a busy
machine); a kernel with less work than that runs faster on one thread. The schedules compare
a kernel's work (elements x reduction length; an elementwise element weighed by its cost,
``elementwise.element_cost``) with ``PARALLEL_MIN_WORK``; for a symbolic size the C renderer
makes the same comparison at run time (``codegen/c.py``)::

    worth_parallel(4096 * 1024)   ->  True     (parallel for i0 ...)
    worth_parallel(64 * 64)       ->  False    (stays serial)

``PARALLEL_MIN_WORK`` is a property of the machine, but not one the ``Target`` probes: what
starting and joining threads costs (the OpenMP runtime, the scheduler, how busy the machine is)
shows only when kernels run. ``minicomp bench --parallel-threshold`` measures it
(``bench_load.py``: serial against parallel kernels of growing size), and the value it found is
set here by hand; ``minicomp target`` prints it with the probed description.
"""

from __future__ import annotations

from ...ir.symbolic import Sym

# Work (elements x reduction length; elementwise elements weighed by schedules.element_cost)
# below which threads cost more than they give. Measured, not probed: `minicomp bench
# --parallel-threshold` on the 2-core development VM (AMD EPYC, znver3): all threads pay from
# 16K gelu elements (each ~8 additions' work: 128K) and from 512K additions (memory-bound);
# 1 << 15 had made additions of 32K-128K elements 10-20% slower on two threads.
PARALLEL_MIN_WORK = 1 << 17


def worth_parallel(work: int) -> bool:
    """Whether a kernel doing ``work`` (elements x reduction length) should use several threads.

    Below ``PARALLEL_MIN_WORK`` starting and joining the threads costs more than they save
    (``minicomp bench --parallel-threshold`` measures where that is on a machine). Symbolic
    work is parallel when it could reach that amount (the call's thread choice,
    ``runtime/threads.py``, still runs small calls on one thread).
    """
    if isinstance(work, Sym):  # some term grows with a size: large sizes reach the threshold
        return any(c > 0 for m, c in work.terms if m)
    return work >= PARALLEL_MIN_WORK
