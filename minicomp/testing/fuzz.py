"""``minicomp fuzz``: random valid graphs through the compiler, checked against the interpreter.

    minicomp fuzz --graphs 3000 --seed 7        # 3000 graphs: the same ones on every run of seed 7
    minicomp fuzz --minutes 10                  # until time is up (a fresh seed, printed)
    minicomp fuzz --graphs 200 --jobs 0         # in this process (no crash isolation)

What each graph goes through (a *case*, drawn by ``fuzz_cases``):

1. **Generated** by ``minicomp.testing.graphs.random_graphs``: every op of the op table, the
   compositions fusion looks for (softmax, layer norm, attention with constant masks that
   write ``-inf``), 0- and 1-sized dimensions, broadcasting, all six dtypes; one graph in ten
   with values of up to 64K elements, which reach the parallel loops, packed matmuls and
   tiled attention that small shapes never do.
2. **Arguments laid out** as a caller might: contiguous, a transposed view, a strided view,
   negative strides, misaligned (a view at an odd byte offset of a byte buffer), byte-swapped,
   a stride-0 broadcast view, the same array for two inputs, and views of one buffer that
   overlap. The layouts are Python source (``Case.arguments_source``), so a reproducer
   builds exactly the same arrays. After every call each buffer is compared byte for byte
   with its copy: compiled code must never write its inputs, nor next to them (a contiguous
   argument is a view inside a larger buffer).
3. **Compiled twice**: after the default pass pipeline and after a random subset of its
   passes; each result is compared with ``minicomp.interpret`` on the same arguments under
   the one tolerance policy (``assert_outputs_close``: integers and bools exact, floats at
   the precision of the graph's least precise float). Discontinuous ops (comparisons,
   ``floor``, casts to integers) only ever see exact values (``random_graphs`` guarantees it),
   so a legal difference in rounding is never reported as a bug.

**Batches.** gcc takes ~90 ms for one small graph, mostly for the prelude and its own start.
A round of ``ROUND`` cases is rendered into one C translation unit instead: the prelude and
the matmul micro-kernels once, then each program's kernels and entry point, renamed with a
prefix by ``#define`` (``render_batch``); one gcc run builds it (~10 ms a program), and each
entry runs through an ``Executable``. One case in ``SINGLE_EVERY`` goes through the normal
path instead: ``minicomp.compile`` (pipeline, compile cache, loading, ``Executable``).
``--target gpu-serial-c`` batches too: each program is the GPU schedules' thread-serial form
(``stages.gpu_serial_program``: block, thread and barrier-phase loops run as plain loops), so
every random graph checks the GPU schedules at C's speed.

**Other targets** go through ``minicomp.compile`` (any jit target of ``driver.TARGETS``):
``--target gpu-simt-interp`` runs the GPU schedules' fused SIMT form in the loop interpreter
(threads in lockstep in a shuffled order, shared memory NaN at each block's start, a race an
error), at Python's speed: its big graphs have values of at most ``BIG_SIZES[target]`` (1024)
elements, not ``BIG_SIZE``. ``--target cuda`` runs every graph on this machine's GPU (nvcc,
pycuda); without one it stops at once, saying what is missing.

**Failures**: a mismatch, an input written, an exception anywhere in the compiler (a pass,
lowering, rendering, the C compiler), a crash or a hang (a watchdog stops a case that runs
longer than ``timeout`` seconds). Generation is driven by hypothesis with a fixed seed per
round, so a failing case is replayed and hypothesis shrinks it (fewer and smaller ops and
inputs, fewer passes, plainer arguments) while the same failure persists, for at most
``shrink_seconds``. The result is a one-command reproducer (``write_reproducer``): a
self-contained Python file with the graph's text, the argument values and layouts and the
pass list, which exits 1 while the bug is there and 0 once it is fixed.

**Determinism**: graph ``g`` of seed ``S`` is the same on every run, machine and ``--jobs``:
round ``g // ROUND`` is drawn by hypothesis seeded with a hash of ``(S, round)`` (for targets
with the same big size: a ``gpu-simt-interp`` run's graphs are not a ``c`` run's).

**Processes**: the command runs its rounds in ``--jobs`` worker processes (default: one per
CPU). A worker that dies (a segfault in generated code) or hangs is replaced; the case it was
running becomes a reproducer too. ``--jobs 0`` runs in the calling process (tests use it).
"""

from __future__ import annotations

import base64
import faulthandler
import functools
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, assume, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import HypothesisException
from hypothesis import strategies as st

from ..codegen import gemm
from ..codegen.c import ENTRY, intrinsic_sources, intrinsics_used, prelude, render_c
from ..runtime.compiler import ENTRY_DECLARATION, cflags, compiler, entry_ffi
from ..errors import MinicompError
from ..driver import TARGETS, compile as compile_graph
from ..ir.graph import Graph
from ..ir.interpreter import interpret
from ..ir.loops import For
from ..ir.rewrite import statements
from ..ir.ops import OPS
from ..stages import gpu_serial_program, loop_program
from ..passes.pipeline import pipeline_names, run_pipeline
from ..runtime.executable import Executable
from .graphs import GeneratedGraph, MAX_SIZE, assert_outputs_close, random_graphs

#: The targets whose programs a batch renders (the others go through ``minicomp.compile``):
#: target -> the loop program of an optimised graph, as that target's pipeline makes it
BATCHED = {"c": loop_program, "gpu-serial-c": gpu_serial_program}
#: Cases per round: generated together, compiled into one library.
ROUND = 32
#: One case in this many goes through ``minicomp.compile`` instead of a batch.
SINGLE_EVERY = 20
#: One graph in this many has values of up to ``BIG_SIZE`` elements.
BIG_EVERY = 10
BIG_SIZE = 1 << 16
#: Targets too slow for ``BIG_SIZE``: their big graphs' values have at most this many elements
#: (``FuzzOptions.big_size``: the loop interpreter takes a minute for a graph of 10K elements)
BIG_SIZES = {"gpu-simt-interp": 1024}
#: Failures shrunk per run (per worker); later ones are written as found.
MAX_SHRUNK = 5
#: Elements of guard buffer before and after a contiguous argument.
GUARD = 16
#: Most elements of an argument written into a reproducer as a list (more: base64).
LITERAL_ELEMENTS = 64

#: Argument layouts (``plain`` three times: most arguments are ordinary arrays).
LAYOUTS = ("plain", "plain", "plain", "transposed", "strided", "reversed", "misaligned",
           "byteswapped", "broadcast", "alias", "overlap")
#: Values that fill the guard space around arguments: valid inputs (an overlapping view reads them).
_FILL = {"f": "0.75", "i": "2", "b": "True"}


# ----------------------------------------------------------------------------------------------
# Cases: a graph, its arguments' layouts, the passes
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One generated graph with the layout of each argument and a random subset of passes.

    ``layouts[i]`` is ``(kind, *parameters)`` for input ``i`` (see ``LAYOUTS``); ``subset``
    the passes of one compilation (the other runs the default pipeline); ``single``:
    through ``minicomp.compile`` rather than a batch. ``number``: the graph's number in its
    run (``round * ROUND + index``).
    """

    gen: GeneratedGraph
    layouts: tuple
    subset: tuple[str, ...]
    single: bool
    number: int = -1
    big: bool = False

    @property
    def graph(self) -> Graph:
        return self.gen.graph

    @property
    def pipelines(self) -> list[tuple[str, ...]]:
        """The pass lists this case is compiled with: the subset, then the default pipeline."""
        default = tuple(pipeline_names())
        return [default] if self.subset == default else [self.subset, default]

    def arguments_source(self) -> str:
        """Python lines that make the arguments ``a0, a1 ...`` from the values ``v0, v1 ...``
        and list every buffer they live in as ``buffers``."""
        lines = ["buffers = []"]
        for i, layout in enumerate(self.layouts):
            lines += _layout_lines(i, layout, self.graph.inputs[i].type)
        return "\n".join(lines)

    def arguments(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(arguments, the buffers they live in) as ``arguments_source`` makes them."""
        namespace = {"np": np, **{f"v{i}": v for i, v in enumerate(self.gen.inputs)}}
        exec(compile(self.arguments_source(), "<arguments>", "exec"), namespace)
        return [namespace[f"a{i}"] for i in range(len(self.layouts))], namespace["buffers"]

    def fingerprint(self) -> str:
        """A digest of everything the case is made of (to find it again when it is replayed)."""
        digest = hashlib.sha256(self.graph.to_text(None).encode())
        for value in self.gen.inputs:
            digest.update(value.tobytes())
        digest.update(repr((self.layouts, self.subset, self.single)).encode())
        return digest.hexdigest()

    def size(self) -> tuple[int, int, int]:
        """How big the case is, for keeping the smallest of several failing ones."""
        nodes = self.graph.op_nodes()
        return len(nodes), sum(n.type.size for n in self.graph.nodes()), len(self.subset)


def _dtype_name(dtype: np.dtype) -> str:
    return np.dtype(dtype).name


def _layout_lines(i: int, layout: tuple, type_) -> list[str]:
    """Source lines making argument ``a{i}`` from value ``v{i}`` in ``layout``."""
    kind, *params = layout
    shape, dtype, size = tuple(type_.shape), _dtype_name(type_.dtype), type_.size
    fill = _FILL[np.dtype(type_.dtype).kind]
    if kind == "plain":  # contiguous, inside a guard buffer
        return [f"b{i} = np.full({size + 2 * GUARD}, {fill}, dtype='{dtype}')",
                f"a{i} = b{i}[{GUARD}:{GUARD + size}].reshape({shape})",
                f"a{i}[...] = v{i}", f"buffers.append(b{i})"]
    if kind == "transposed":
        perm = params[0]
        inverse = tuple(int(p) for p in np.argsort(perm))
        return [f"b{i} = np.ascontiguousarray(v{i}.transpose({perm}))",
                f"a{i} = b{i}.transpose({inverse})", f"buffers.append(b{i})"]
    if kind == "strided":
        steps = params[0]
        full = tuple(d * s for d, s in zip(shape, steps))
        index = ", ".join(f"::{s}" for s in steps)
        return [f"b{i} = np.full({full}, {fill}, dtype='{dtype}')", f"a{i} = b{i}[{index}]",
                f"a{i}[...] = v{i}", f"buffers.append(b{i})"]
    if kind == "reversed":
        index = ", ".join("::-1" if flip else ":" for flip in params[0])
        return [f"b{i} = np.ascontiguousarray(v{i}[{index}])", f"a{i} = b{i}[{index}]",
                f"buffers.append(b{i})"]
    if kind == "misaligned":
        nbytes = size * np.dtype(type_.dtype).itemsize
        return [f"b{i} = np.zeros({nbytes + 8}, dtype='uint8')",
                f"a{i} = np.ndarray({shape}, dtype='{dtype}', buffer=b{i}, offset={params[0]})",
                f"a{i}[...] = v{i}", f"buffers.append(b{i})"]
    if kind == "byteswapped":
        return [f"b{i} = v{i}.astype(v{i}.dtype.newbyteorder('S'))", f"a{i} = b{i}",
                f"buffers.append(b{i})"]
    if kind == "broadcast":  # stride 0 along one axis: its first row, repeated
        axis = params[0]
        index = ", ".join("0:1" if a == axis else ":" for a in range(len(shape)))
        return [f"b{i} = np.ascontiguousarray(v{i}[{index}])",
                f"a{i} = np.broadcast_to(b{i}, {shape})", f"buffers.append(b{i})"]
    if kind == "alias":
        return [f"a{i} = a{params[0]}"]
    if kind == "overlap":  # a view into another argument's guard buffer, overlapping it
        j, offset = params
        return [f"a{i} = b{j}[{GUARD + offset}:{GUARD + offset + size}].reshape({shape})"]
    raise ValueError(f"unknown layout {kind!r}")


def _layouts(draw, gen: GeneratedGraph) -> tuple:
    """One layout per input (see ``LAYOUTS``); ``plain`` where the drawn one does not apply."""
    chosen = []
    inputs = gen.graph.inputs
    for i, node in enumerate(inputs):
        kind, shape = draw(st.sampled_from(LAYOUTS)), node.shape
        grid_ok = [j for j in range(i) if inputs[j].dtype == node.dtype
                   and (gen.grid_inputs[j] or not gen.grid_inputs[i])]
        layout = ("plain",)
        if kind == "transposed" and len(shape) >= 2:
            perm = tuple(draw(st.permutations(range(len(shape)))))
            layout = (kind, perm) if perm != tuple(range(len(shape))) else layout
        elif kind == "strided" and shape:
            steps = tuple(draw(st.integers(1, 3)) for _ in shape)
            layout = (kind, steps) if max(steps) > 1 else layout
        elif kind == "reversed" and shape:
            flips = tuple(draw(st.booleans()) for _ in shape)
            layout = (kind, flips) if any(flips) else layout
        elif kind == "misaligned":  # at a byte offset that is no multiple of the item size
            itemsize = node.dtype.itemsize
            layout = (kind, draw(st.sampled_from([o for o in range(1, 8) if o % itemsize or itemsize == 1])))
        elif kind == "byteswapped" and node.dtype.itemsize > 1:
            layout = (kind,)
        elif kind == "broadcast" and any(d > 1 for d in shape):
            layout = (kind, draw(st.sampled_from([a for a, d in enumerate(shape) if d > 1])))
        elif kind == "alias":
            same = [j for j in grid_ok if inputs[j].shape == shape]
            layout = (kind, draw(st.sampled_from(same))) if same else layout
        elif kind == "overlap":
            hosts = [j for j in grid_ok if chosen[j][0] == "plain"
                     and node.type.size <= inputs[j].type.size + GUARD]
            if hosts:
                j = draw(st.sampled_from(hosts))
                room = inputs[j].type.size + GUARD - node.type.size
                layout = (kind, j, draw(st.integers(0, room)))
        chosen.append(layout)
    return tuple(chosen)


@st.composite
def fuzz_cases(draw, max_nodes: int = 12, big_size: int = BIG_SIZE) -> Case:
    """A hypothesis strategy drawing ``Case`` s (see the module docstring); one in ``BIG_EVERY``
    has values of up to ``big_size`` elements (no more than ``MAX_SIZE``: none is big)."""
    big = draw(st.integers(0, BIG_EVERY - 1)) == BIG_EVERY - 1
    gen = draw(_graphs(max_nodes, big_size if big else MAX_SIZE))
    layouts = _layouts(draw, gen)
    subset = tuple(name for name in pipeline_names() if draw(st.booleans()))
    single = draw(st.integers(0, SINGLE_EVERY - 1)) == SINGLE_EVERY - 1
    return Case(gen, layouts, subset, single, big=big and big_size > MAX_SIZE)


@functools.lru_cache(maxsize=None)
def _graphs(max_nodes: int, max_size: int):
    """``random_graphs`` as the fuzzer draws them (made once: building the strategy takes time)."""
    return random_graphs(max_nodes=max_nodes, max_size=max_size, infinities=True)


def big_size(target: str) -> int:
    """The most elements of a big graph's values for ``target``: ``BIG_SIZES`` or ``BIG_SIZE``."""
    return BIG_SIZES.get(target, BIG_SIZE)


def round_seed(seed: int, round_index: int) -> int:
    """The hypothesis seed of round ``round_index`` of run ``seed``."""
    digest = hashlib.sha256(f"minicomp fuzz {seed} {round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _replay_settings(phases) -> settings:
    return settings(max_examples=ROUND, database=None, phases=phases, deadline=None,
                    suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                    report_multiple_bugs=False)


def generate_round(seed: int, round_index: int, max_nodes: int = 12, big_size: int = BIG_SIZE) -> list[Case]:
    """The cases of one round: always the same for the same arguments."""
    cases: list[Case] = []
    seen: set[str] = set()

    @hypothesis_seed(round_seed(seed, round_index))
    @_replay_settings([Phase.generate])
    @given(fuzz_cases(max_nodes, big_size))
    def collect(case):
        _skip_repeats(case, seen)
        case.number = round_index * ROUND + len(cases)
        cases.append(case)

    collect()
    return cases


def _skip_repeats(case: Case, seen: set[str]) -> None:
    """Reject (``assume``) the round's first case, hypothesis' simplest example (the same
    in every round), and a case whose graph has the structure of one seen before, only the
    values differing: hypothesis varies its recent examples a little, so about a third of a
    round would repeat one. Rejected cases do not count toward the round's ``ROUND``."""
    text = re.sub(r"\{value=[^}]*\}|#[^\n]*", "", case.graph.to_text(16))
    structure = hashlib.sha256((text + repr(case.layouts)).encode()).hexdigest()
    first, repeat = not seen, structure in seen
    seen.add(structure)
    assume(not first and not repeat)


# ----------------------------------------------------------------------------------------------
# Failures
# ----------------------------------------------------------------------------------------------


@dataclass
class Failure:
    """What went wrong with one case: ``kind`` is ``mismatch``, ``inputs written``, ``error``
    (an exception), ``crash`` or ``hang``; ``stage`` where (``passes``, ``lowering``, ``C
    compiler``, ``run`` ...); ``passes`` the pipeline it happened with."""

    kind: str
    stage: str
    message: str
    passes: tuple[str, ...] = ()
    path: str = "batch"
    error_type: str = ""
    case_number: int = -1
    ops: int = 0
    original_ops: int = 0
    reproducer: str | None = None
    reproduces: bool | None = None
    op_names: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def signature(self) -> tuple[str, str, str]:
        """What must stay the same while the case is shrunk."""
        return self.kind, self.stage, self.error_type

    def describe(self) -> str:
        """One paragraph for the run's summary."""
        what = f"{self.kind} ({self.stage}" + (f", {self.error_type}" if self.error_type else "") + ")"
        lines = [f"graph {self.case_number}: {what} with passes {list(self.passes)} via {self.path}"]
        if self.note:
            lines.append(f"  {self.note}")
        elif self.original_ops:
            lines.append(f"  shrunk from {self.original_ops} to {self.ops} ops")
        lines += ["  " + line for line in self.message.strip().splitlines()[:12]]
        if self.reproducer:
            verdict = {True: "exits 1: reproduces", False: "exits 0 in a fresh process",
                       None: "not run"}[self.reproduces]
            lines.append(f"  reproducer: {sys.executable} {self.reproducer}   ({verdict})")
        return "\n".join(lines)


def _error(stage: str, exc: BaseException, passes, path: str) -> Failure:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tail = "".join(traceback.format_tb(exc.__traceback__)[-3:])
    return Failure("error", stage, f"{text}\n{tail}"[-3000:], tuple(passes), path, type(exc).__name__)


class _Watchdog:
    """Ends the process if a block runs too long (see ``watchdog``): a thread that looks at the
    deadline twice a second. Setting the deadline costs nothing; ``faulthandler``'s own timer
    costs 2 ms to cancel, more than many cases take to run."""

    EXIT_STATUS = 70  # what the process exits with, so that a supervisor can tell a hang

    def __init__(self):
        self.deadline: float | None = None
        self.seconds = 0.0
        self.thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._watch, name="minicomp-fuzz-watchdog", daemon=True)
            self.thread.start()
        self.seconds, self.deadline = seconds, time.monotonic() + seconds

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                try:  # the process's own stderr: sys.stderr may be a capture without a file
                    sys.__stderr__.write(f"minicomp fuzz: Timeout ({self.seconds:g} s): a case hangs\n")
                    sys.__stderr__.flush()
                    faulthandler.dump_traceback(sys.__stderr__, all_threads=True)
                finally:
                    os._exit(self.EXIT_STATUS)


_watchdog = _Watchdog()


@contextmanager
def watchdog(seconds: float | None):
    """End the process (after printing every thread's traceback) if the block runs longer than
    ``seconds``: a hang inside compiled code cannot be interrupted any other way."""
    if not seconds:
        yield
        return
    _watchdog.arm(seconds)
    try:
        yield
    finally:
        _watchdog.deadline = None


# ----------------------------------------------------------------------------------------------
# Many programs in one library
# ----------------------------------------------------------------------------------------------

_ATTRIBUTE = re.compile(r"__attribute__\s*\(\(.*?\)\)")
_DEFINITION = re.compile(r"^[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\(")


def defined_functions(source: str) -> list[str]:
    """Names of the functions ``source`` defines at file scope (definitions start a line)."""
    names = []
    for line in source.splitlines():
        match = _DEFINITION.match(_ATTRIBUTE.sub("", line))
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def render_batch(programs: list) -> tuple[str, list[str]]:
    """One C translation unit for several lowered programs, and each one's entry name.

    The prelude and the micro-kernels they use come once; then each program's own part of
    ``render_c``'s text (its kernels and entry point) between ``#define``s that prefix every
    function it defines with ``mcfz<i>_``.
    """
    used = list(dict.fromkeys(fn for program in programs for fn in intrinsics_used(program.kernels)))
    shared = intrinsic_sources(used)
    parts = [f"/* {len(programs)} programs generated by minicomp fuzz */", prelude(), *shared]
    entries = []
    for i, program in enumerate(programs):
        body = _own_part(render_c(program), shared)
        names = defined_functions(body)
        prefix = f"mcfz{i}_"
        parts.append("\n".join(f"#define {name} {prefix}{name}" for name in names) + "\n" + body
                     + "\n" + "\n".join(f"#undef {name}" for name in names))
        entries.append(prefix + ENTRY)
    return "\n\n".join(parts) + "\n", entries


def _own_part(source: str, shared: list[str]) -> str:
    """``render_c``'s text of one program without what a batch shares: everything up to the
    end of the prelude (the file's comment, the prelude) and the micro-kernels' code."""
    start = source.index(prelude()) + len(prelude())
    body = source[start:]
    for text in shared:
        body = body.replace(text, "", 1)
    return body


_ffi_lock = threading.Lock()
_ffi = None


def _entry_type():
    """cffi's ``ffi`` and the function-pointer type of an entry point (``ENTRY_DECLARATION``)."""
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            _ffi = entry_ffi()
    pointer = re.sub(rf"\b{ENTRY}\s*\(", "(*)(", ENTRY_DECLARATION).rstrip().rstrip(";")
    return _ffi, _ffi.typeof(pointer)


def compile_batch(source: str, directory: Path, timeout: float | None) -> Path:
    """Build ``source`` into a shared library in ``directory`` (no cache: each batch is new)."""
    handle, name = tempfile.mkstemp(suffix=".c", dir=directory)
    os.close(handle)
    source_path, library = Path(name), Path(name).with_suffix(".so")
    source_path.write_text(source)
    command = [*shlex.split(compiler()), *cflags(), "-o", str(library), str(source_path), "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MinicompError(f"the C compiler ran past {timeout} s: {' '.join(command)}") from None
    if result.returncode != 0:
        raise MinicompError(f"{' '.join(command)}\n{result.stderr[-4000:]}")
    source_path.unlink()
    return library


def load_entries(library: Path, entries: list[str]) -> list:
    """cffi function pointers to ``entries`` of ``library`` (kept loaded until the process ends)."""
    import ctypes

    ffi, pointer_type = _entry_type()
    handle = ctypes.CDLL(str(library), mode=os.RTLD_NOW | os.RTLD_NODELETE)
    return [ffi.cast(pointer_type, ctypes.cast(getattr(handle, name), ctypes.c_void_p).value)
            for name in entries]


class BatchedExecutable(Executable):
    """An ``Executable`` whose entry point is one of the many in a batch's library.

    It runs exactly as one built by ``minicomp.compile``: ``Executable.__call__`` checks and
    prepares the arguments, allocates outputs and workspace and calls the entry.
    """

    def __init__(self, program, source: str, library: Path, entry):
        super().__init__(program, source, loaded=(library, _ffi, SimpleNamespace(**{ENTRY: entry})))


# ----------------------------------------------------------------------------------------------
# Checking cases
# ----------------------------------------------------------------------------------------------


@dataclass
class _Job:
    """One case on its way through the checker: arguments, reference outputs, programs."""

    case: Case
    args: list = field(default_factory=list)
    buffers: list = field(default_factory=list)
    snapshot: list = field(default_factory=list)
    expected: list = field(default_factory=list)
    runs: list = field(default_factory=list)  # (passes, path, callable)
    programs: list = field(default_factory=list)  # (passes, lowered program)
    failure: Failure | None = None


def require_target(target: str) -> None:
    """Fail at once, with a ``MinicompError`` saying why, where ``target`` is no jit target
    (``driver.TARGETS``) or cannot run on this machine (``cuda``: pycuda, nvcc and an NVIDIA GPU),
    rather than once for every graph."""
    if target not in TARGETS:
        raise MinicompError(f"unknown target {target!r}; available: {', '.join(sorted(TARGETS))}")
    if target == "cuda":
        from ..runtime.nvcc import find_nvcc
        from .backends import cuda_available

        why = cuda_available()
        if why is not None:
            raise MinicompError(f"fuzzing target 'cuda' runs every graph on an NVIDIA GPU, but {why} "
                                "(--target gpu-serial-c or gpu-simt-interp test the GPU schedules on a CPU)")
        find_nvcc()  # a CompileError (a MinicompError) saying where it looked


class Checker:
    """Compiles cases (batched, or through ``minicomp.compile``) and compares them with the
    interpreter. ``on_event(stage, case, passes)`` is called before each stage (``prepare``,
    ``compile``, ``run``; for a run, with its passes), so that a crash can be attributed."""

    def __init__(self, target: str = "c", timeout: float | None = 60.0,
                 on_event: Callable[[str, Case, tuple], None] | None = None):
        require_target(target)
        self.target = target
        self.timeout = timeout
        self.on_event = on_event or (lambda stage, case, passes=(): None)
        self.directory = Path(tempfile.mkdtemp(prefix="minicomp-fuzz-"))
        self.stats = Counter()
        self.patterns = Counter()  # fusion patterns of the optimised graphs
        self.schedules = Counter()  # programs with parallel loops, SIMD loops, the micro-kernel

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def check(self, cases: list[Case]) -> list[Failure | None]:
        """Check every case; one ``Failure`` (or None) per case, in order."""
        jobs = [self._prepare(case) for case in cases]
        self._compile_batch([(job, passes, program) for job in jobs if job.failure is None
                             for passes, program in job.programs])
        for job in jobs:
            if job.failure is None:
                with watchdog(self.timeout):
                    job.failure = self._run(job)
        return [job.failure for job in jobs]

    # -- stages -----------------------------------------------------------------------------------

    def _prepare(self, case: Case) -> _Job:
        """Arguments and reference outputs; the programs (batch) or compiled functions (single)."""
        job = _Job(case)
        self.on_event("prepare", case)
        with watchdog(self.timeout):
            try:
                job.args, job.buffers = case.arguments()
                job.snapshot = [b.tobytes() for b in job.buffers]
                job.expected = interpret(case.graph, *job.args)
            except Exception as exc:  # the generator made an invalid case: its own bug
                job.failure = _error("reference", exc, (), "interpreter")
                return job
            single = case.single or self.target not in BATCHED
            for passes in case.pipelines:
                failure = self._compile_single(job, passes) if single else self._lower(job, passes)
                if failure:
                    job.failure = failure
                    break
        return job

    def _compile_single(self, job: _Job, passes) -> Failure | None:
        path = "minicomp.compile"
        try:
            run = compile_graph(job.case.graph, target=self.target, passes=list(passes))
        except Exception as exc:
            return _error("compile", exc, passes, path)
        job.runs.append((passes, path, run))
        self.stats["single"] += 1
        program = getattr(run, "program", None)  # the loop program it runs (none: numpy)
        if program is not None:
            self.patterns.update(n.attrs["pattern"] for n in program.graph.op_nodes() if n.op == "fused")
            self._count_schedules(program)
        return None

    def _lower(self, job: _Job, passes) -> Failure | None:
        try:
            optimised, _ = run_pipeline(job.case.graph, list(passes))
        except Exception as exc:
            return _error("passes", exc, passes, "batch")
        self.patterns.update(n.attrs["pattern"] for n in optimised.op_nodes() if n.op == "fused")
        try:
            program = BATCHED[self.target](optimised)
        except Exception as exc:
            return _error("lowering", exc, passes, "batch")
        job.programs.append((passes, program))
        self._count_schedules(program)
        return None

    def _count_schedules(self, program) -> None:
        """Count ``program`` once under each of: parallel and vectorised loops, the matmul
        micro-kernel, and each GPU strategy (``gpu_threads`` ...) its kernels ran."""
        loops = {s.kind for k in program.kernels for s in statements(k.body) if isinstance(s, For)}
        self.schedules.update(kind for kind in ("parallel", "vectorized") if kind in loops)
        if any(gemm.is_micro_kernel(fn) for fn in intrinsics_used(program.kernels)):
            self.schedules["micro-kernel"] += 1
        self.schedules.update({step.name for k in program.kernels for step in k.schedule
                               if getattr(step, "name", "").startswith("gpu_")})

    def _compile_batch(self, programs: list[tuple]) -> None:
        """One library for all ``(job, passes, program)``; where that fails, one per program,
        so that the compiler's error lands on the program that caused it."""
        if not programs:
            return
        for job in {id(job): job for job, _, _ in programs}.values():
            self.on_event("compile", job.case)
        try:
            source, entries = render_batch([program for _, _, program in programs])
            library = compile_batch(source, self.directory, self.timeout and 10 * self.timeout)
            pointers = load_entries(library, entries)
            library.unlink()  # loaded for good: the file is not needed any more
        except Exception as exc:
            if len(programs) == 1:
                job, passes, _ = programs[0]
                job.failure = job.failure or _error("C compiler", exc, passes, "batch")
            else:
                for one in programs:
                    self._compile_batch([one])
            return
        self.stats["libraries"] += 1
        for (job, passes, program), pointer in zip(programs, pointers):
            job.runs.append((passes, "batch", BatchedExecutable(program, "", library, pointer)))
            self.stats["batched"] += 1

    def _run(self, job: _Job) -> Failure | None:
        """Run each compiled form on the case's arguments; compare outputs and buffers."""
        graph = job.case.graph
        for passes, path, run in job.runs:
            self.on_event("run", job.case, passes)
            try:
                actual = run(*job.args)
            except Exception as exc:
                return _error("run", exc, passes, path)
            try:
                assert_outputs_close(actual, job.expected, graph)
            except AssertionError as exc:
                return Failure("mismatch", "comparison", str(exc)[-3000:], tuple(passes), path)
            written = [i for i, (b, s) in enumerate(zip(job.buffers, job.snapshot)) if b.tobytes() != s]
            if written:
                return Failure("inputs written", "run", f"buffers {written} changed during the call",
                               tuple(passes), path)
        return None


# ----------------------------------------------------------------------------------------------
# Shrinking and reproducers
# ----------------------------------------------------------------------------------------------


class _Reproduced(Exception):
    """Raised inside the replay when a case fails as the original did (hypothesis shrinks it)."""


def shrink(seed: int, case: Case, failure: Failure, check: Callable[[Case], Failure | None],
           max_nodes: int, seconds: float, big_size: int = BIG_SIZE) -> tuple[Case, Failure]:
    """The smallest case hypothesis finds within ``seconds`` that fails like ``case``.

    The round of ``case`` is replayed with its seed until ``case`` comes up again; from there
    on every case hypothesis tries is checked alone (``check``), and one failing with the same
    ``Failure.signature`` counts as reproducing. Past the deadline cases are passed without
    checking, which ends the shrinking. If nothing smaller fails, ``case`` is returned, with
    ``failure.note`` saying why.
    """
    target, armed, tried, seen = case.fingerprint(), False, 0, set()
    best = (case, failure)
    deadline = time.monotonic() + seconds
    round_index = case.number // ROUND

    @hypothesis_seed(round_seed(seed, round_index))
    @_replay_settings([Phase.generate, Phase.shrink])
    @given(fuzz_cases(max_nodes, big_size))
    def replay(candidate):
        nonlocal armed, best, tried
        if not armed:
            _skip_repeats(candidate, seen)  # as generate_round did: the same examples follow
            if candidate.fingerprint() != target:
                return
            armed = True
        elif time.monotonic() > deadline:
            return
        tried += 1
        candidate.number = case.number
        found = check(candidate)
        if found is not None and found.signature == failure.signature:
            if candidate.size() <= best[0].size():
                best = (candidate, found)
            raise _Reproduced()

    try:
        replay()
    except (_Reproduced, HypothesisException):  # Flaky: past the deadline it stops failing
        pass
    if best[0].fingerprint() == target:
        best = (case, failure)
        failure.note = ("not shrunk: the case did not come up again" if not armed else
                        "not shrunk: it does not fail when compiled alone" if tried == 1 else
                        "not shrunk: no smaller case failed the same way in time")
    return best


def _array_source(name: str, value: np.ndarray) -> str:
    """``name = <an expression giving exactly value>``."""
    dtype = _dtype_name(value.dtype)
    if value.size <= LITERAL_ELEMENTS:
        return f"{name} = np.array({value.tolist()!r}, dtype='{dtype}')"
    data = base64.b64encode(np.ascontiguousarray(value).tobytes()).decode()
    return (f"{name} = np.frombuffer(base64.b64decode('{data}'), dtype='{value.dtype.str}')"
            f".reshape({tuple(value.shape)}).copy()")


REPRODUCER = '''\
#!/usr/bin/env python3
"""A graph that minicomp's compiled code gets wrong, found by `minicomp fuzz`.

$summary
Run it (needs minicomp): python $name
It exits 1 while the bug is there, 0 once it is fixed.
"""
import base64  # noqa: F401  (large argument values)
import faulthandler
import sys

import numpy as np

import minicomp
from minicomp.testing.graphs import assert_outputs_close

GRAPH = """\\
$graph"""

TARGET = $target
PASSES = $passes  # the pass pipeline run before compiling
TIMEOUT = $timeout  # seconds: a hang exits 1 too


def arguments():
    """The arguments as the fuzzer laid them out, and every buffer they live in."""
$values
$layouts
    return [$arguments], buffers


def main() -> int:
    # a hang ends the process; the timer is cancelled on return, so that a process that runs this
    # file with runpy (a test) is not ended TIMEOUT seconds later in the middle of something else
    faulthandler.dump_traceback_later(TIMEOUT, exit=True, file=sys.__stderr__)
    try:
        return check()
    finally:
        faulthandler.cancel_dump_traceback_later()


def check() -> int:
    graph = minicomp.Graph.parse(GRAPH)
    args, buffers = arguments()
    before = [b.tobytes() for b in buffers]
    expected = minicomp.interpret(graph, *args)
    try:
        actual = minicomp.compile(graph, target=TARGET, passes=PASSES)(*args)
        assert_outputs_close(actual, expected, graph)
        written = [i for i, b in enumerate(buffers) if b.tobytes() != before[i]]
        assert not written, f"the compiled code wrote to its inputs (buffers {written})"
    except Exception as exc:
        print(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    print("OK: the compiled graph matches the interpreter")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def reproducer_source(case: Case, failure: Failure, seed: int, target: str = "c",
                      timeout: float = 60.0) -> str:
    """The text of a self-contained reproducer for ``case`` failing with ``failure``."""
    from string import Template

    summary = [f"minicomp fuzz --seed {seed}: graph {case.number}, {failure.kind} "
               f"({failure.stage}{', ' + failure.error_type if failure.error_type else ''}) "
               f"via {failure.path}."]
    if failure.note:
        summary.append(failure.note.capitalize() + ".")
    elif failure.original_ops:
        summary.append(f"Shrunk from {failure.original_ops} ops to {failure.ops}.")
    summary += [line[:100] for line in failure.message.strip().splitlines()[:8]]
    values = [_array_source(f"v{i}", v) for i, v in enumerate(case.gen.inputs)]
    indent = lambda lines: "\n".join("    " + line for line in lines)  # noqa: E731
    return Template(REPRODUCER).substitute(
        summary="\n".join(summary).replace('"""', "'''").replace("\\", "/"),
        name=f"fuzz-{seed}-{case.number}.py",
        graph=case.graph.to_text(None).replace("\\", "\\\\").replace('"""', '\\"\\"\\"'),
        target=repr(target), passes=repr(list(failure.passes)), timeout=repr(float(timeout)),
        values=indent(values), layouts=indent(case.arguments_source().splitlines()),
        arguments=", ".join(f"a{i}" for i in range(len(case.layouts))))


def write_reproducer(case: Case, failure: Failure, seed: int, directory: Path,
                     target: str = "c", timeout: float = 60.0) -> Path:
    """Write the reproducer of ``case`` into ``directory``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fuzz-{seed}-{case.number}.py"
    path.write_text(reproducer_source(case, failure, seed, target, timeout))
    return path


def run_reproducer(path: Path, timeout: float = 120.0) -> int:
    """Run a reproducer in a fresh Python process; its exit status (negative: a signal)."""
    try:
        return subprocess.run([sys.executable, str(path)], capture_output=True,
                              timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        return 124


# ----------------------------------------------------------------------------------------------
# A run
# ----------------------------------------------------------------------------------------------


@dataclass
class FuzzReport:
    """What a run did: graphs, compilations, coverage, failures."""

    seed: int = 0
    graphs: int = 0
    batched: int = 0
    single: int = 0
    libraries: int = 0
    big: int = 0
    seconds: float = 0.0
    ops: Counter = field(default_factory=Counter)
    patterns: Counter = field(default_factory=Counter)
    schedules: Counter = field(default_factory=Counter)  # programs with parallel loops, gpu_threads ...
    layouts: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    def add_round(self, cases: list[Case]) -> None:
        """Count the graphs, ops and layouts of a checked round."""
        self.graphs += len(cases)
        for case in cases:
            self.ops.update({n.op for n in case.graph.op_nodes()})
            self.layouts.update(layout[0] for layout in case.layouts)
            self.big += case.big

    def merge(self, other: "FuzzReport") -> None:
        for name in ("graphs", "batched", "single", "libraries", "big"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("ops", "patterns", "schedules", "layouts"):
            getattr(self, name).update(getattr(other, name))
        self.failures += other.failures

    def to_json(self) -> dict:
        data = {name: getattr(self, name) for name in
                ("seed", "graphs", "batched", "single", "libraries", "big", "seconds")}
        data.update({name: dict(getattr(self, name)) for name in ("ops", "patterns", "schedules", "layouts")})
        data["failures"] = [vars(f) for f in self.failures]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "FuzzReport":
        counters = ("ops", "patterns", "schedules", "layouts")
        report = cls(**{k: v for k, v in data.items() if k not in counters + ("failures",)})
        for name in counters:
            getattr(report, name).update(data[name])
        report.failures = [Failure(**f) for f in data["failures"]]
        return report

    def summary(self) -> str:
        """The lines ``minicomp fuzz`` prints at the end."""
        known = sorted(op for op in OPS if op not in ("input", "constant", "fused"))
        missing = [op for op in known if not self.ops[op]]
        rate = self.graphs / self.seconds if self.seconds else 0.0
        lines = [
            f"minicomp fuzz --seed {self.seed}: {self.graphs} graphs in {self.seconds:.0f} s "
            f"({rate:.1f} graphs/s), {self.big} with big values",
            f"compilations: {self.batched} batched into {self.libraries} libraries, "
            f"{self.single} through minicomp.compile",
            f"ops covered: {len(known) - len(missing)} of {len(known)}"
            + (f" (never: {', '.join(missing)})" if missing else ""),
            "fusion patterns: " + (", ".join(f"{k} {v}" for k, v in sorted(self.patterns.items())) or "none"),
            "programs with: " + (", ".join(f"{k} {v}" for k, v in sorted(self.schedules.items())) or "none"),
            "argument layouts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.layouts.items())),
            f"failures: {len(self.failures)}"
            + (f" ({', '.join(f'{k} {v}' for k, v in Counter(f.kind for f in self.failures).items())})"
               if self.failures else " (0 mismatches, 0 errors, 0 crashes, 0 hangs)"),
        ]
        lines += [failure.describe() for failure in self.failures]
        written = sorted({str(Path(f.reproducer).parent) for f in self.failures if f.reproducer})
        if written:
            lines.append(f"reproducers written to: {', '.join(written)}")
        return "\n".join(lines)


@dataclass
class FuzzOptions:
    """The settings of a run (``minicomp fuzz``'s options)."""

    seed: int = 0
    graphs: int | None = None
    minutes: float | None = None
    target: str = "c"
    out: str = "fuzz-reproducers"
    max_nodes: int = 12
    shrink_seconds: float = 60.0
    max_shrunk: int = MAX_SHRUNK
    timeout: float = 60.0
    verify: bool = True
    deadline: float | None = None  # time.time() after which no round starts (from minutes)
    big_size: int | None = None  # most elements of a big graph's values (None: ``big_size(target)``)

    @property
    def biggest(self) -> int:
        """The most elements of a big graph's values in this run."""
        return big_size(self.target) if self.big_size is None else self.big_size


def run_fuzz(options: FuzzOptions, worker: int = 0, workers: int = 1,
             on_event: Callable[[str, Case, tuple], None] | None = None,
             progress: Callable[[FuzzReport], None] | None = None) -> FuzzReport:
    """Check rounds ``worker, worker + workers, ...`` until ``options.graphs`` graphs (counted
    over all workers) are done or ``options.deadline`` has passed; shrink each failure and
    write its reproducer. Without ``graphs`` or a deadline, runs 1000 graphs."""
    start = time.monotonic()
    deadline = options.deadline
    if deadline is None and options.minutes is not None:
        deadline = time.time() + 60 * options.minutes
    total = options.graphs if options.graphs is not None or deadline else 1000
    report = FuzzReport(seed=options.seed)
    checker = Checker(options.target, options.timeout, on_event)
    shrinker = Checker(options.target, options.timeout, on_event)  # its cases are not counted
    round_index = worker
    try:
        while (total is None or round_index * ROUND < total) and (deadline is None or time.time() < deadline):
            try:
                cases = generate_round(options.seed, round_index, options.max_nodes, options.biggest)
            except Exception as exc:  # the generator's own bug: reported like any other
                failure = _error("generator", exc, (), "generator")
                failure.case_number = round_index * ROUND
                report.failures.append(failure)
                cases = []
            if total is not None:
                cases = [c for c in cases if c.number < total]
            for case, failure in zip(cases, checker.check(cases)):
                if failure is not None:
                    shrunk = [f for f in report.failures if f.original_ops]
                    seen = _seen_before(case, failure, report.failures)
                    report.failures.append(_handle_failure(
                        case, failure, shrinker, options,
                        shrink_it=seen is None and len(shrunk) < options.max_shrunk, like=seen))
            report.add_round(cases)
            report.seconds = time.monotonic() - start
            if progress:
                progress(report)
            round_index += workers
    finally:
        report.batched, report.single = checker.stats["batched"], checker.stats["single"]
        report.libraries, report.patterns = checker.stats["libraries"], checker.patterns
        report.schedules = checker.schedules
        report.seconds = time.monotonic() - start
        checker.close()
        shrinker.close()
    return report


def _seen_before(case: Case, failure: Failure, failures: list[Failure]) -> Failure | None:
    """An earlier shrunk failure of the same kind whose ops ``case`` all has: most likely the
    same bug again (it is reported, but not shrunk again)."""
    ops = {n.op for n in case.graph.op_nodes()}
    for other in failures:
        if other.original_ops and other.signature == failure.signature and set(other.op_names) <= ops:
            return other
    return None


def _handle_failure(case: Case, failure: Failure, checker: Checker, options: FuzzOptions,
                    shrink_it: bool = True, like: Failure | None = None) -> Failure:
    """Shrink ``case`` (if ``shrink_it``), write its reproducer (and run it, if
    ``options.verify``). ``like``: an earlier failure this one probably repeats."""
    failure.case_number = case.number
    original_ops = len(case.graph.op_nodes())
    if shrink_it and options.shrink_seconds > 0:
        case, failure = shrink(options.seed, case, failure, lambda c: checker.check([c])[0],
                               options.max_nodes, options.shrink_seconds, options.biggest)
        failure.case_number = case.number
        failure.original_ops = original_ops
    elif like is not None:
        failure.message = f"(probably graph {like.case_number} again: same failure, all its ops)\n{failure.message}"
    failure.ops = len(case.graph.op_nodes())
    failure.op_names = sorted({n.op for n in case.graph.op_nodes()})
    path = write_reproducer(case, failure, options.seed, Path(options.out), options.target,
                            options.timeout)
    failure.reproducer = str(path)
    if options.verify:
        failure.reproduces = run_reproducer(path, 2 * options.timeout + 30) != 0
    return failure


# ----------------------------------------------------------------------------------------------
# The command: worker processes, crash isolation
# ----------------------------------------------------------------------------------------------


def fuzz_command(options: FuzzOptions, jobs: int | None = None, printer=print) -> int:
    """``minicomp fuzz``: run, print progress and the summary; 0 if nothing failed, else 1."""
    require_target(options.target)  # here, not in each worker process
    if options.graphs is None and options.minutes is None:
        options.graphs = 1000
    if options.minutes is not None:
        options.deadline = time.time() + 60 * options.minutes
    jobs = _cpus() if jobs is None else jobs
    what = f"{options.graphs} graphs" if options.graphs is not None else ""
    if options.minutes is not None:
        what += (" or " if what else "") + f"{options.minutes:g} minutes"
    sizes = "" if options.biggest == BIG_SIZE else f" (big graphs: values of at most {options.biggest} elements)"
    printer(f"minicomp fuzz: seed {options.seed}, {what}, target {options.target}{sizes}, "
            f"{jobs or 'no'} worker process(es) (same graphs again: --seed {options.seed})")
    ticker = _Ticker(printer)
    with _private_cache():
        if jobs == 0:
            report = run_fuzz(options, progress=ticker)
        else:
            report = _Supervisor(options, jobs, ticker).run()
    printer(report.summary())
    return 1 if report.failures else 0


class _Ticker:
    """Prints a progress line every 30 seconds."""

    def __init__(self, printer, every: float = 30.0):
        self.printer, self.every, self.next = printer, every, time.monotonic() + every

    def __call__(self, report: FuzzReport) -> None:
        if time.monotonic() >= self.next:
            self.next += self.every
            self.printer(f"  [{report.seconds:5.0f} s] {report.graphs} graphs, "
                         f"{len(report.failures)} failures")


@contextmanager
def _private_cache():
    """A fresh compile cache for the run (``minicomp.compile`` cases would fill the user's)."""
    previous = os.environ.get("MINICOMP_CACHE_DIR")
    path = tempfile.mkdtemp(prefix="minicomp-fuzz-cache-")
    os.environ["MINICOMP_CACHE_DIR"] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("MINICOMP_CACHE_DIR", None)
        else:
            os.environ["MINICOMP_CACHE_DIR"] = previous
        shutil.rmtree(path, ignore_errors=True)


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class _Supervisor:
    """Runs ``jobs`` worker processes, each a share of the rounds; replaces a worker that dies
    or goes silent, and turns the case it was on into a crash or hang failure."""

    def __init__(self, options: FuzzOptions, jobs: int, progress):
        self.options, self.jobs, self.progress = options, jobs, progress
        self.report = FuzzReport(seed=options.seed)
        self.start = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.live: dict = {}

    def run(self) -> FuzzReport:
        for worker in range(self.jobs):
            self.spawn(worker, worker)
        while self.live:
            for key, _ in self.selector.select(timeout=5.0):
                self.read(key.data)
            for state in list(self.live.values()):
                silent = time.monotonic() - state.heard
                if state.process.poll() is not None or silent > 4 * self.options.timeout + 60:
                    self.finish(state)
        self.report.seconds = time.monotonic() - self.start
        return self.report

    def spawn(self, worker: int, first_round: int) -> None:
        config = dict(vars(self.options), worker=worker, workers=self.jobs, first_round=first_round)
        log = tempfile.TemporaryFile()
        process = subprocess.Popen([sys.executable, "-m", "minicomp.testing.fuzz", json.dumps(config)],
                                   stdout=subprocess.PIPE, stderr=log)
        state = SimpleNamespace(worker=worker, process=process, log=log, buffer=b"", current=None,
                                heard=time.monotonic(), done=False, first_round=first_round)
        os.set_blocking(process.stdout.fileno(), False)
        self.selector.register(process.stdout, selectors.EVENT_READ, state)
        self.live[worker] = state

    def read(self, state) -> None:
        chunk = state.process.stdout.read() or b""
        state.heard = time.monotonic()
        state.buffer += chunk
        *lines, state.buffer = state.buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            if event["event"] in ("prepare", "compile", "run"):
                state.current = event
            elif event["event"] == "round":
                round_report = FuzzReport.from_json(event["report"])
                self.report.merge(round_report)
                self.report.seconds = time.monotonic() - self.start
                self.progress(self.report)
                state.current = None
            elif event["event"] == "done":
                state.done = True
        if not chunk and state.process.poll() is not None:
            self.finish(state)

    def finish(self, state) -> None:
        """A worker ended: fine if it said so; else record what it was doing and restart it."""
        if state.worker not in self.live:
            return
        del self.live[state.worker]
        self.selector.unregister(state.process.stdout)
        if state.process.poll() is None:
            state.process.kill()
        state.process.wait()
        self.read_rest(state)
        if state.done:
            return
        state.log.seek(0)
        log = state.log.read().decode(errors="replace")
        current = state.current
        if current is None:  # died between cases: report the worker itself
            self.report.failures.append(Failure("crash", "worker", f"exit status {state.process.returncode}\n{log[-2000:]}"))
            return
        hang = state.process.returncode in (_Watchdog.EXIT_STATUS, -9)
        number = current["number"]
        failure = Failure("hang" if hang else "crash", current["event"],
                          f"worker exit status {state.process.returncode}\n{log[-2000:]}",
                          case_number=number)
        self.report.graphs += number % ROUND + 1  # its round's graphs up to this one ran
        self.report.failures.append(self.reproduce(number, current["passes"], failure))
        next_round = number // ROUND + self.jobs
        if self.more(next_round):
            self.spawn(state.worker, next_round)

    def read_rest(self, state) -> None:
        try:
            rest = state.process.stdout.read() or b""
        except (OSError, ValueError):
            rest = b""
        for line in (state.buffer + rest).split(b"\n"):
            if line.strip():
                event = json.loads(line)
                if event["event"] == "round":
                    self.report.merge(FuzzReport.from_json(event["report"]))
                elif event["event"] in ("prepare", "compile", "run"):
                    state.current = event
                elif event["event"] == "done":
                    state.done = True

    def more(self, round_index: int) -> bool:
        options = self.options
        return ((options.graphs is None or round_index * ROUND < options.graphs)
                and (options.deadline is None or time.time() < options.deadline))

    def reproduce(self, number: int, passes: list, failure: Failure) -> Failure:
        """Regenerate case ``number`` here (no compiled code runs) and write its reproducer."""
        cases = generate_round(self.options.seed, number // ROUND, self.options.max_nodes, self.options.biggest)
        case = next(c for c in cases if c.number == number)
        failure.passes = tuple(passes) or case.pipelines[-1]
        failure.path = "minicomp.compile" if case.single else "batch"
        original_ops = len(case.graph.op_nodes())
        if self.options.shrink_seconds > 0:
            role = failure.passes == case.pipelines[-1]  # the default pipeline, or the subset
            isolated = lambda c: self.run_isolated(c, c.pipelines[-1] if role else c.pipelines[0], failure)  # noqa: E731
            case, failure = shrink(self.options.seed, case, failure, isolated,
                                   self.options.max_nodes, self.options.shrink_seconds, self.options.biggest)
            failure.original_ops = original_ops
        failure.case_number, failure.ops = number, len(case.graph.op_nodes())
        path = write_reproducer(case, failure, self.options.seed, Path(self.options.out),
                                self.options.target, self.options.timeout)
        failure.reproducer = str(path)
        if self.options.verify:
            failure.reproduces = run_reproducer(path, 2 * self.options.timeout + 30) != 0
        return failure


    def run_isolated(self, case: Case, passes: tuple, like: Failure) -> Failure | None:
        """Run ``case``'s reproducer in a fresh process: a crash or hang like ``like``, or None."""
        probe = Failure(like.kind, like.stage, "", tuple(passes))
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "case.py"
            path.write_text(reproducer_source(case, probe, self.options.seed, self.options.target,
                                              2 * self.options.timeout))
            try:
                status = subprocess.run([sys.executable, str(path)], capture_output=True,
                                        timeout=self.options.timeout).returncode
            except subprocess.TimeoutExpired:
                return Failure("hang", like.stage, "", tuple(passes))
        return Failure("crash", like.stage, f"signal {-status}", tuple(passes)) if status < 0 else None


def _worker_main(config_text: str) -> int:
    """A worker process: run rounds, write JSON events (one a line) to stdout."""
    config = json.loads(config_text)
    worker, workers, first_round = config.pop("worker"), config.pop("workers"), config.pop("first_round")
    options = FuzzOptions(**config)
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not corrupt the event stream

    def emit(event: dict) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    def on_event(stage: str, case: Case, passes: tuple = ()) -> None:
        emit({"event": stage, "number": case.number, "passes": list(passes)})

    last = FuzzReport(seed=options.seed)

    def progress(report: FuzzReport) -> None:
        delta = FuzzReport.from_json(report.to_json())
        delta.graphs -= last.graphs
        delta.big -= last.big
        delta.failures = report.failures[len(last.failures):]
        delta.ops, delta.layouts = report.ops - last.ops, report.layouts - last.layouts
        delta.patterns = Counter()
        emit({"event": "round", "report": delta.to_json()})
        last.graphs, last.big, last.failures = report.graphs, report.big, list(report.failures)
        last.ops, last.layouts = Counter(report.ops), Counter(report.layouts)

    # rounds first_round, first_round + workers, ...: run_fuzz starts at its worker index
    report = run_fuzz(options, worker=first_round, workers=workers, on_event=on_event,
                      progress=progress)
    final = FuzzReport(seed=options.seed, batched=report.batched, single=report.single,
                       libraries=report.libraries, patterns=report.patterns,
                       schedules=report.schedules)
    emit({"event": "round", "report": final.to_json()})
    emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))
