"""Running loop IR in Python: a slow, obvious reference for the schedule tests.

``run_program(program, *arrays)`` executes a lowered ``Program`` statement by statement with
NumPy scalars, no C involved, at any loop stage (plain nests, scheduled, simplified). Three
choices make it a sharp test of schedule legality:

* loops marked ``parallel``, ``vectorized`` or ``gpu_block`` run their iterations *last to
  first* (and so does the loop a short parallel loop is collapsed with, as in the C renderer):
  if a schedule marked a loop whose iterations depend on each other, the result changes, every
  time; the C code, with a few threads on tiny test sizes, would show such a race only by chance;
* local buffers (``Allocate``) start full of NaN (or the dtype's minimum), so reading an
  element before it was written shows in the result;
* the threads of a GPU block run in lockstep, as on a GPU: the ``gpu_thread`` loops directly
  nested in one another are the block's threads, each running the body as a Python generator
  that stops at every ``Barrier`` and ``WarpReduce``. All threads run to their next stop, in an
  adversarial order (``order``: last to first, or a fresh random permutation per step drawn
  from a seed, which also runs the blocks in a random order); the lanes of a warp waiting at
  one warp reduce get its result and go on; once all threads wait at one barrier they all go
  on. A ``shared`` buffer is one array per block; a
  ``local`` one each thread's own (a copy per thread of one allocated outside the thread loops).
  ``SynchronisationError`` is raised for what a GPU would hang on or compute at random: a
  barrier some threads of the block do not reach, a warp whose lanes wait at different
  statements, and a race: two threads touching one element between two barriers, one writing
  (CUDA's ``compute-sanitizer --tool racecheck``, here on every run).

``Intrinsic`` statements run through their reference meaning (``minicomp.ir.intrinsics``), so
packed matmuls, convolutions and tiled attention run too. Arithmetic is done in Python/NumPy
scalars, so results match C within rounding only (compare with ``assert_close``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import ChainMap
from typing import Iterator

import numpy as np

from ..ir import intrinsics
from ..ir.loops import (Address, Allocate, Assign, Barrier, Binary, Block, Buffer, Call, Cast, Const, Declare, Expr,
                        For, If, Intrinsic, Load, Select, Size, Stmt, Store, Unary, Var, WarpReduce)
from ..ir.symbolic import bind_shape, evaluate
from ..ir.rewrite import c_div, c_mod, statements

COLLAPSE_BELOW = 64  # as the C renderer: a shorter parallel loop runs together with its inner loop


def _power(a, b):
    """NumPy's ``a ** b``; an integer to a negative power fails (C sets the call's status)."""
    if isinstance(b, np.integer) and b < 0:
        raise ValueError("Integers to negative integer powers are not allowed.")
    return np.power(a, b)


_CALLS = {
    "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
    "floor": np.floor, "ceil": np.ceil, "erf": np.vectorize(math.erf),
    "mc_abs": abs, "mc_maximum": lambda a, b: a if (a > b or a != a) else b,  # a tie: b, as C's
    "mc_minimum": lambda a, b: a if (a < b or a != a) else b,
    "mc_maximum_first": lambda a, b: a if (a >= b or a != a) else b,  # a tie: a
    "mc_minimum_first": lambda a, b: a if (a <= b or a != a) else b,
    "mc_sigmoid": lambda x: 1 / (1 + np.exp(-x)), "mc_sign": np.sign,
    "mc_index": lambda i, n: (i + n if i < 0 else i) if -n <= i < n else 0,  # (C also sets the status)
    "mc_mod": np.remainder, "mc_floordiv": np.floor_divide, "mc_pow": _power,  # x % 0, x // 0: 0 for ints
}

_BINARY = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "&&": lambda a, b: bool(a) and bool(b), "||": lambda a, b: bool(a) or bool(b),
}

_WARP_COMBINERS = {"sum": lambda a, b: a + b, "max": _CALLS["mc_maximum"], "min": _CALLS["mc_minimum"]}


class SynchronisationError(RuntimeError):
    """Threads of a block that do not meet: a barrier some of them never reach, a warp's lanes
    at different statements. On a GPU such a kernel hangs or gives undefined results."""


class ThreadOrder:
    """The order in which the interpreter runs the threads of a block to their next stop, and
    the blocks of a grid: ``"reversed"`` (last to first) or a seed (an int: a fresh random
    permutation each time, reproducible from the seed)."""

    def __init__(self, order: str | int = "reversed"):
        if order != "reversed" and not isinstance(order, (int, np.integer)):
            raise ValueError(f"a thread order is 'reversed' or a seed (an int), not {order!r}")
        self.order = order
        self.random = None if order == "reversed" else np.random.default_rng(int(order))

    def __call__(self, numbers) -> list[int]:
        """``numbers`` (thread or block numbers) in the order to run them."""
        ordered = sorted(numbers, reverse=True)
        return ordered if self.random is None else [ordered[k] for k in self.random.permutation(len(ordered))]


class LoopInterpreter:
    """Executes statements on ``memory`` (buffer -> flat array) and local scalars."""

    def __init__(self, memory, scalars: dict | None = None, sizes: dict | None = None,
                 order: ThreadOrder | None = None):
        self.memory = memory
        self.scalars: dict[str, object] = {} if scalars is None else scalars
        self.sizes: dict[str, int] = {} if sizes is None else sizes  # size symbol -> this run's value
        self.local_buffers: set[Buffer] = set()  # allocated ``local`` here: each thread copies them
        self.order = order or ThreadOrder()

    def expr(self, e: Expr):
        """The value of an expression, with the dtype of the expression."""
        if isinstance(e, Const):
            return e.dtype.type(e.value)
        if isinstance(e, Var):
            return self.scalars[e.name]
        if isinstance(e, Size):
            return e.dtype.type(evaluate(e.value, self.sizes))
        if isinstance(e, Load):
            return self.memory[e.buffer][int(self.expr(e.index))]
        if isinstance(e, Binary):
            return self.binary(e)
        if isinstance(e, Unary):
            value = self.expr(e.a)
            return e.dtype.type(not value) if e.op == "!" else -value
        if isinstance(e, Call):
            if e.fn not in _CALLS:
                raise NotImplementedError(f"the loop interpreter does not know {e.fn}")
            return e.dtype.type(_CALLS[e.fn](*[self.expr(a) for a in e.args]))
        if isinstance(e, Cast):
            return np.asarray(self.expr(e.a)).astype(e.dtype)[()]
        if isinstance(e, Select):
            return self.expr(e.a) if self.expr(e.cond) else self.expr(e.b)
        raise NotImplementedError(f"the loop interpreter cannot evaluate {e!r}")

    def binary(self, e: Binary):
        """A binary operation with C's meaning (integer ``/`` and ``%`` truncate)."""
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in ("/", "%") and e.dtype.kind in "iu":
            return e.dtype.type((c_div if e.op == "/" else c_mod)(int(a), int(b)))
        if e.op == "/":
            return e.dtype.type(a / b)
        return e.dtype.type(_BINARY[e.op](a, b))

    def argument(self, e: Expr):
        """An intrinsic's argument: an ``Address`` as a ``Pointer`` (flat array, offset), else its value."""
        if isinstance(e, Address):
            return intrinsics.Pointer(self.memory[e.buffer], int(self.expr(e.index)))
        return self.expr(e)

    def stmt(self, s: Stmt, reversed_: bool = False) -> None:
        """Execute ``s``; ``reversed_``: run this loop's iterations backwards."""
        if isinstance(s, For) and s.kind == "gpu_thread":
            self.run_block(s)
        elif isinstance(s, For):
            backwards = reversed_ or s.kind in ("parallel", "vectorized", "gpu_block")
            extent = evaluate(s.extent, self.sizes)
            collapsed = s.kind == "parallel" and extent < COLLAPSE_BELOW and isinstance(s.body, For)
            iterations = range(extent - 1, -1, -1) if backwards else range(extent)
            if s.kind == "gpu_block":
                iterations = self.order(range(extent))
            for i in iterations:
                self.scalars[s.var.name] = np.int64(i)
                self.stmt(s.body, reversed_=collapsed)
        elif isinstance(s, Block):
            for sub in s.stmts:
                self.stmt(sub)
        elif isinstance(s, Store):
            self.memory[s.buffer][int(self.expr(s.index))] = self.expr(s.value)
        elif isinstance(s, (Declare, Assign)):
            self.scalars[s.var.name] = self.expr(s.init if isinstance(s, Declare) else s.value)
        elif isinstance(s, Allocate):
            self.allocate(s)
        elif isinstance(s, If):
            if self.expr(s.cond):
                self.stmt(s.then)
            elif s.otherwise is not None:
                self.stmt(s.otherwise)
        elif isinstance(s, Intrinsic):
            intrinsics.run(s.fn, [self.argument(a) for a in s.args])
        elif isinstance(s, (Barrier, WarpReduce)):
            raise SynchronisationError(f"a {type(s).__name__} outside every gpu_thread loop: no threads to synchronise")
        else:
            raise NotImplementedError(f"the loop interpreter cannot execute {type(s).__name__}")

    def allocate(self, s: Allocate) -> None:
        """A fresh array, every element unwritten."""
        self.memory[s.buffer] = unwritten(s.buffer, self.sizes)
        if s.scope == "local":
            self.local_buffers.add(s.buffer)

    def run_block(self, loop: For) -> None:
        """Run the threads of one block, numbered by ``loop`` and the ``gpu_thread`` loops
        directly inside it, in lockstep (see the module docstring)."""
        chain = [loop]
        while isinstance(chain[-1].body, For) and chain[-1].body.kind == "gpu_thread":
            chain.append(chain[-1].body)
        block = ThreadBlock()
        threads = []
        for number, index in enumerate(thread_indices(chain)):
            own = {b: self.memory[b].copy() for b in self.local_buffers if b in self.memory}
            scalars = self.scalars | {name: np.int64(i) for name, i in index.items()}
            threads.append(Thread(number, block, ChainMap(own, block.shared, self.memory), scalars, self.sizes))
        lockstep(threads, chain[-1].body, block, self.order)

    def steps(self, s: Stmt) -> Iterator[tuple[Stmt, object]]:
        """Execute ``s`` as one thread of a block: a generator that yields ``(barrier, None)`` at
        a barrier and ``(warp_reduce, this lane's value)`` at a warp reduce, where it is resumed
        with the combined value."""
        if not synchronises(s):
            self.stmt(s)
        elif isinstance(s, Block):
            for sub in s.stmts:
                yield from self.steps(sub)
        elif isinstance(s, For):
            if s.kind not in ("serial", "unrolled"):
                raise SynchronisationError(f"the {s.kind} loop {s.var.name} holds a barrier or warp reduce")
            for i in range(evaluate(s.extent, self.sizes)):
                self.scalars[s.var.name] = np.int64(i)
                yield from self.steps(s.body)
        elif isinstance(s, If):
            if self.expr(s.cond):
                yield from self.steps(s.then)
            elif s.otherwise is not None:
                yield from self.steps(s.otherwise)
        elif isinstance(s, Barrier):
            yield s, None
        elif isinstance(s, WarpReduce):
            self.scalars[s.var.name] = yield s, self.expr(s.value)


class ThreadBlock:
    """What the threads of one block share: its ``shared`` buffers, and who touched which element
    since the last barrier (``touch`` finds races)."""

    def __init__(self):
        self.shared: dict[Buffer, np.ndarray] = {}
        self.writer: dict[tuple[Buffer, int], int] = {}
        self.readers: dict[tuple[Buffer, int], set[int]] = {}

    def touch(self, thread: int, buffer: Buffer, index: int, write: bool) -> None:
        """Record an access; raise ``SynchronisationError`` if another thread wrote the element
        since the last barrier, or read it and this access writes."""
        key = (buffer, index)
        others = {self.writer.get(key, thread)} | (self.readers.get(key, set()) if write else set())
        others.discard(thread)
        if others:
            raise SynchronisationError(f"threads {min(others)} and {thread} of a block both touch "
                                       f"{buffer.name}[{index}] between two barriers, one writing: a race "
                                       "(is a barrier missing?)")
        if write:
            self.writer[key] = thread
        else:
            self.readers.setdefault(key, set()).add(thread)

    def barrier(self) -> None:
        """Every thread met: accesses before it are ordered before those after it."""
        self.writer.clear()
        self.readers.clear()


class Thread(LoopInterpreter):
    """One thread of a block: its own scalars and ``local`` buffers, its block's ``shared``
    ones, every other access recorded in its ``ThreadBlock`` (races)."""

    def __init__(self, number: int, block: ThreadBlock, memory: ChainMap, scalars: dict, sizes: dict):
        super().__init__(memory, scalars, sizes)
        self.number, self.block, self.own = number, block, memory.maps[0]

    def expr(self, e: Expr):
        """As ``LoopInterpreter.expr``; a load of memory other threads see is recorded."""
        if isinstance(e, Load) and e.buffer not in self.own:
            index = int(self.expr(e.index))
            self.block.touch(self.number, e.buffer, index, write=False)
            return self.memory[e.buffer][index]
        return super().expr(e)

    def stmt(self, s: Stmt, reversed_: bool = False) -> None:
        """As ``LoopInterpreter.stmt``; a store to memory other threads see is recorded."""
        if isinstance(s, Store) and s.buffer not in self.own:
            index, value = int(self.expr(s.index)), self.expr(s.value)
            self.block.touch(self.number, s.buffer, index, write=True)
            self.memory[s.buffer][index] = value
        else:
            super().stmt(s, reversed_)

    def allocate(self, s: Allocate) -> None:
        """A ``local`` buffer is this thread's; a ``shared`` one its block's, made by the first thread."""
        if s.scope == "shared":
            self.block.shared.setdefault(s.buffer, unwritten(s.buffer, self.sizes))
        else:
            super().allocate(s)

    def run_block(self, loop: For) -> None:
        """Refused: a thread loop inside a thread's body, not directly inside the others."""
        raise SynchronisationError(f"the thread loop {loop.var.name} is not directly inside the thread "
                                   "loops around it: the thread loops of a block must be directly nested")


@functools.lru_cache(maxsize=4096)
def synchronises(s: Stmt) -> bool:
    """Whether a barrier or warp reduce lies inside ``s`` (else it runs without stopping)."""
    return any(isinstance(sub, (Barrier, WarpReduce)) for sub in statements(s))


def thread_indices(chain: list[For]) -> list[dict[str, int]]:
    """The loop variables of each thread of a block, in CUDA's linear order (x fastest, then y, z),
    which groups threads into warps."""
    by_axis = {loop.axis: loop for loop in chain}
    if len(by_axis) != len(chain):
        axes = ", ".join(loop.axis for loop in chain)
        raise SynchronisationError(f"two thread loops of one block are bound to one axis ({axes})")
    axes = [by_axis[a] for a in ("z", "y", "x") if a in by_axis]
    return [{loop.var.name: i for loop, i in zip(axes, index)}
            for index in np.ndindex(*[loop.extent for loop in axes])]


def lockstep(threads: list[Thread], body: Stmt, block: ThreadBlock, order: ThreadOrder | None = None) -> None:
    """Run ``body`` on every thread, meeting at barriers and warp reduces (module docstring);
    each step runs the threads in ``order`` (default: last to first)."""
    order = order or ThreadOrder()
    runs = [thread.steps(body) for thread in threads]
    resume: dict[int, object] = {n: None for n in range(len(threads))}  # thread -> value to resume with
    waiting: dict[int, tuple[Stmt, object]] = {}
    finished: set[int] = set()
    while resume:
        for n in order(resume):  # last to first, or shuffled: a race between threads shows
            try:
                waiting[n] = runs[n].send(resume[n])
            except StopIteration:
                finished.add(n)
        resume = {}
        reducing = {n for n, (s, _) in waiting.items() if isinstance(s, WarpReduce)}
        if reducing:
            for lanes in warps_at(reducing, waiting, len(threads)):
                reduced = warp_reduce(waiting[lanes[0]][0], [waiting[n][1] for n in lanes])
                for n, value in zip(lanes, reduced):
                    resume[n] = value
                    del waiting[n]
        elif waiting:
            barriers = {id(s) for s, _ in waiting.values()}
            if finished or len(barriers) > 1:
                raise SynchronisationError(f"{len(waiting)} of {len(threads)} threads of a block wait at "
                                           f"{len(barriers)} barrier(s), the others "
                                           f"{'finished' if finished else 'at another one'}: a barrier every "
                                           "thread of the block must reach")
            resume = dict.fromkeys(waiting)
            waiting.clear()
            block.barrier()


def warps_at(reducing: set[int], waiting: dict, n_threads: int) -> list[list[int]]:
    """The groups of lanes (threads) that wait at a warp reduce, each checked to be whole."""
    groups: dict[int, Stmt] = {}  # first lane -> the warp reduce its group waits at
    for n in sorted(reducing):
        stmt = waiting[n][0]
        width = stmt.width
        if width < 1 or width > 32 or width & (width - 1) or n_threads % width:
            raise SynchronisationError(f"a warp reduce over {width} lanes in a block of {n_threads} threads "
                                       "(a power of two up to 32 that divides the threads of the block)")
        groups.setdefault(n - n % width, stmt)
    lanes_of = {first: list(range(first, first + stmt.width)) for first, stmt in groups.items()}
    for first, stmt in groups.items():
        if any(waiting.get(lane, (None,))[0] is not stmt for lane in lanes_of[first]):
            raise SynchronisationError(f"the lanes {first}..{first + stmt.width - 1} of a warp do not all "
                                       f"wait at the warp reduce of {stmt.var.name}")
    return list(lanes_of.values())


def warp_reduce(s: WarpReduce, values: list) -> list:
    """Every lane's result of ``s`` over ``values`` (one per lane), combined as the butterfly of
    ``__shfl_xor_sync``: lane ``l`` combines with lane ``l ^ offset`` for offset width/2 ... 1."""
    if s.combiner not in _WARP_COMBINERS:
        raise NotImplementedError(f"warp reduce with combiner {s.combiner!r} (sum, max, min)")
    combine, dtype = _WARP_COMBINERS[s.combiner], s.var.dtype.type
    values, offset = [dtype(v) for v in values], len(values) // 2
    while offset:
        values = [dtype(combine(values[lane], values[lane ^ offset])) for lane in range(len(values))]
        offset //= 2
    return values


def unwritten(buffer: Buffer, sizes: dict | None = None) -> np.ndarray:
    """A flat array for ``buffer`` (its symbolic sizes at ``sizes``) whose every element says
    "never written" (NaN, or the minimum)."""
    count = evaluate(buffer.size, sizes or {})
    if buffer.dtype.kind == "f":
        return np.full(count, np.nan, buffer.dtype)
    if buffer.dtype.kind == "b":
        return np.zeros(count, buffer.dtype)
    return np.full(count, np.iinfo(buffer.dtype).min, buffer.dtype)


def run_program(program, *arrays, order: str | int = "reversed") -> list[np.ndarray]:
    """The outputs of a lowered ``Program`` run by the ``LoopInterpreter`` (see the module docstring).

    A program with symbolic sizes (dynamic dimensions) takes them from the arrays' shapes, as
    the compiled code does: ``T = 5`` for an input of shape ``[T, 8]`` given a 5 x 8 array.
    ``order``: how the threads of a block (and the blocks) take turns (``ThreadOrder``).
    """
    thread_order = ThreadOrder(order)
    sizes: dict[str, int] = {}
    for buffer, array in zip(program.inputs, arrays):
        if not bind_shape(tuple(buffer.shape), np.shape(array), sizes):
            raise ValueError(f"input {buffer.name} of shape {buffer.shape} given an array of shape {np.shape(array)}")
    memory = {b: np.asarray(a, b.dtype).reshape(-1).copy() for b, a in zip(program.inputs, arrays)}
    memory |= {b: np.asarray(v, b.dtype).reshape(-1).copy() for b, v in program.constants}
    memory |= {b: unwritten(b, sizes) for b in list(program.outputs) + list(program.workspace)}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for kernel in program.kernels:
            LoopInterpreter(memory, sizes=sizes, order=thread_order).stmt(kernel.body)
    return [memory[b].reshape([evaluate(d, sizes) for d in b.shape]) for b in program.outputs]
