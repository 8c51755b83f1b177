"""The loop-level pipeline: from a fused graph to a loaded executable, in named stages.

The graph passes (``minicomp.passes``) end with a fused graph. Below it runs one list of named
stages, each a plain function ``(value, target) -> value`` with a contract docstring, as the
graph passes have::

    lower             Graph   -> Program    plain loop nests, one kernel per fused group (minicomp.lower)
    schedule          Program -> Program    each kernel's pattern gets its default steps (minicomp.schedules)
    fuse_threads      Program -> Program    (cuda targets only) the GPU kernels' thread-serial form
                                            becomes the SIMT form (minicomp.schedules.gpu.fuse_threads)
    simplify_indices  Program -> Program    index arithmetic the loop ranges decide is folded
    render            Program -> Source     the C text, or CUDA's (minicomp.codegen)
    compile           Source  -> Library    gcc or nvcc, or the compile cache (minicomp.runtime)
    load              Library -> Executable the library loaded (a cubin: on the GPU), callable on arrays

``run_stages`` runs them as ``run_pipeline`` runs the graph passes: up to a chosen stage
(``stop_after``), leaving some out (``disable``: only ``schedule`` and ``simplify_indices``
may be, the others make what the next one needs), timing each, verifying the program after
each loop stage (``minicomp.ir.verify_loops``: a stage that breaks the loop IR is named),
and printing what each made (``print_between``; CLI ``--print-between-passes``)::

    >>> program, report = run_stages(graph, stop_after="schedule")
    >>> print(report)                   # one line per stage: kernels, milliseconds
    >>> run, _ = run_stages(graph)      # through "load": an Executable, run(*arrays) -> outputs

``loop_program(graph)`` is the shortcut for the loop IR the renderer is given. The stages a
target runs are ``target_stages(target)``: ``STAGES``, and for a ``cuda`` target
``fuse_threads`` after ``schedule`` (``TARGET_STAGES``), so that
``loop_program(graph, cuda_target("sm_90"), stop_after="schedule")`` is the thread-serial form
(which the C renderer runs too) and ``stop_after="fuse_threads"`` the SIMT form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from .errors import MinicompError
from .ir.graph import Graph
from .ir.simplify_indices import simplify_kernel_indices
from .ir.verify_loops import LoopIRError, verify_program
from .lower import program as lowering
from .lower.program import Program
from . import schedules
from .schedules.gpu.fuse_threads import fuse_threads
from .codegen.c import render_c
from .codegen.cuda import CudaSource, render_cuda
from .runtime.compiler import compile_c, load_library
from .runtime.executable import Executable
from .runtime.nvcc import Cubin, arch_of, build_cubin, compile_ptx
from .target import Target, cuda_target, host_target


@dataclass(frozen=True)
class Source:
    """What ``render`` makes: the program's source text, with the program it renders (the
    loader needs its buffers). ``str`` is the text."""

    program: Program
    text: str
    language: str = "c"
    launches: tuple = ()  # CUDA: how to launch each kernel (``codegen.cuda.Launch``), in order

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Library:
    """What ``compile`` makes: the shared library built from ``source`` (in the compile cache),
    or for CUDA the cubin (``cubin``: nvcc's ``Cubin``, with ptxas's report; ``path`` None)."""

    source: Source
    path: Path | None
    cubin: Cubin | None = None

    def __str__(self) -> str:
        if self.cubin is not None:
            return f"cubin {self.cubin.key[:16]}... ({len(self.cubin.data)} bytes)"
        return f"library {self.path}"


# ----------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------


def lower_graph(graph: Graph, target: Target) -> Program:
    """Lower every computing node (fused group) of ``graph`` to a kernel (``minicomp.lower``).

    Requires: a verified graph, after any graph passes (a ``fused`` node is one kernel).
    Guarantees: a ``Program`` whose kernels compute the nodes in order, each with its fusion
    ``pattern`` set for ``schedule``; buffers for inputs, constants and outputs, every other
    value a slice of the workspace. The target is not read: the nests are the same for all.

        %add = add(%x, %b) : f32[4,8]   ->   kernel add(x: f32[4,8], b: f32[8]) -> add: f32[4,8]
                                               for i0 in 0..4:
                                                 for i1 in 0..8:
                                                   add[i0*8 + i1] = x[i0*8 + i1] + b[i1]
    """
    return lowering.lower(graph)


def schedule_kernels(program: Program, target: Target) -> Program:
    """Give each kernel the default schedule of its pattern for ``target`` (``minicomp.schedules``).

    Requires: a lowered program. Guarantees: the same results (every step checks its own
    legality, a refused step is skipped); each kernel's ``schedule`` lists the steps applied,
    and scratch buffers a step added have a place in the workspace.

        for i0 in 0..4096:                ->   # schedule: vectorize(i1), parallel(i0)
          for i1 in 0..1024: ...                 parallel for i0 in 0..4096:
                                                   vectorized for i1 in 0..1024: ...
    """
    return schedules.schedule(program, target)


def fuse_gpu_threads(program: Program, target: Target) -> Program:
    """Each GPU kernel's thread-serial form becomes the SIMT form (``minicomp.schedules.gpu.fuse_threads``).

    Requires: a program the GPU schedules shaped (block loops around barrier phases: sibling
    thread loops; per-thread arrays of all threads at block level). Guarantees: the same
    stores of the same values, each kernel one thread loop nest inside its block loops, a
    barrier between phases (where one protects something), per-thread arrays each thread's own.

        gpu_block.x for b in 0..G:                 ->   gpu_block.x for b in 0..G:
          local v: f32[256]                               gpu_thread.x for t in 0..256:
          gpu_thread.x for t in 0..256: v[t] = ...          local v: f32[1]
          gpu_thread.x for t in 0..256: ... v[t] ...        v[0] = ...;  ... v[0] ...
    """
    return fuse_threads(program, target)


def simplify_indices(program: Program, target: Target | None = None) -> Program:
    """Fold index arithmetic the loop ranges decide (``minicomp.ir.simplify_indices``).

    Requires: a lowered (and maybe scheduled) program. Guarantees: a copy whose kernels store
    the same values at the same places; only index and guard expressions change.

        x[((h*64 + d) / 768)*2304 + (h*64 + d) % 768]   ->   x[h*64 + d]      (h < 12, d < 64)
    """
    return replace(program, kernels=[simplify_kernel_indices(k) for k in program.kernels])


def render_source(program: Program, target: Target) -> Source:
    """The program as one C translation unit (``minicomp.codegen.c``), or for a cuda target one
    CUDA file (``render_cuda_source``).

    Requires: a program that passes ``verify_program`` (for CUDA: every kernel in SIMT form).
    Guarantees: one ``static`` function ``k_<name>`` per kernel, and the entry point ``int
    minicomp_entry(void **args)`` that runs them in order on the program's parameters and
    workspace (``codegen/c.py`` says how); for CUDA a ``__global__`` function per kernel and the
    ``Launch`` of each, which the runtime follows.

        kernel add(...) -> add: f32[4,8]   ->   static void k_add(const float *restrict b_x, ...) {
          for i0 in 0..4: ...                     for (int64_t i0 = 0; i0 < 4; ++i0) { ... }
    """
    if target.kind == "cuda":
        cuda = render_cuda_source(program, target)
        return Source(program, cuda.text, "cuda", tuple(cuda.launches))
    if target.kind != "cpu":
        raise MinicompError(f"no renderer for target kind {target.kind!r}")
    return Source(program, render_c(program))


def render_cuda_source(program: Program, target: Target) -> CudaSource:
    """The program as one CUDA file (``minicomp.codegen.cuda``): what ``render`` makes for a
    CUDA target, and ``minicomp dump --emit cuda`` prints.

    Requires: every kernel in SIMT form (a GPU schedule, then ``fuse_threads``); a
    ``CompileError`` names the first kernel that is not. Guarantees: a self-contained ``.cu``
    text that ``nvcc -cubin`` compiles on its own, a ``Launch`` per kernel in order.

        gpu_block.x for b in 0..6: ...   ->   extern "C" __global__ void __launch_bounds__(64) k_add(...) {
                                                const int64_t b = (int64_t)blockIdx.x; ...
    """
    return render_cuda(program, target)


def cuda_ptx(source: CudaSource, target: Target) -> str:
    """The PTX nvcc makes of a CUDA source for ``target``'s architecture (``nvcc -ptx -arch=sm_90``;
    ``minicomp.runtime.nvcc``): what ``minicomp dump --emit ptx`` prints. Needs nvcc, no GPU."""
    return compile_ptx(source.text, arch_of(target))


def compile_source(source: Source, target: Target) -> Library:
    """Compile the source into a shared library with minicomp's flags, or find it in the
    compile cache (``minicomp.runtime.compiler.compile_c``; the key is the text and the flags);
    CUDA source into a cubin for the target's architecture (``minicomp.runtime.nvcc``: nvcc,
    cached by source, flags, nvcc's version and architecture). Needs no GPU.

    Requires: text from ``render``. Guarantees: a library that exports ``minicomp_entry`` (a
    cubin with each kernel's function); ``CompileError`` with the compiler's message otherwise.

        "static void k_add(...) {...}"   ->   library ~/.cache/minicomp/<key>.so
    """
    if source.language == "cuda":
        return Library(source, None, build_cubin(source.text, arch_of(target), name=source.program.graph.name))
    return Library(source, compile_c(source.text, source.program.graph.name))


def load_executable(library: Library, target: Target) -> Executable:
    """Load the library (``minicomp.runtime``) as an ``Executable``: call it with arrays.

    Requires: a library from ``compile``. Guarantees: ``run(*arrays)`` checks the arguments
    against the graph's inputs and returns fresh output arrays (``runtime/executable.py``); a
    cubin is loaded on the GPU through pycuda (``runtime/cuda.py``; ``MinicompError`` where
    pycuda or a GPU is missing).

        library <key>.so   ->   Executable: run(x, b) -> [add]
    """
    source = library.source
    if library.cubin is not None:
        from .runtime.cuda import CudaExecutable  # imports pycuda: only where CUDA runs

        return CudaExecutable(source.program, source, library.cubin.data)
    return Executable(source.program, source.text, loaded=(library.path, *load_library(library.path)))


#: The stages in order: name -> function ``(value, target) -> value``.
STAGES: dict[str, Callable] = {
    "lower": lower_graph,
    "schedule": schedule_kernels,
    "simplify_indices": simplify_indices,
    "render": render_source,
    "compile": compile_source,
    "load": load_executable,
}
#: Stages only some kinds of target run: name -> (function, the stage it follows, target kinds).
TARGET_STAGES: dict[str, tuple[Callable, str, tuple[str, ...]]] = {
    "fuse_threads": (fuse_gpu_threads, "schedule", ("cuda",)),
}
#: The loop stages of a CPU target: those whose result is a ``Program`` (checked by
#: ``verify_program`` after each); a cuda target adds ``fuse_threads`` (``PROGRAM_STAGES``).
LOOP_STAGES = ("lower", "schedule", "simplify_indices")
PROGRAM_STAGES = LOOP_STAGES + ("fuse_threads",)
#: The stages ``disable`` may leave out: each hands on what it was given.
OPTIONAL_STAGES = ("schedule", "simplify_indices")




def target_stages(target: Target | None = None) -> dict[str, Callable]:
    """The stages ``target`` (default: this CPU) runs, in order: ``STAGES``, with each of
    ``TARGET_STAGES`` that its kind runs after the stage it follows."""
    kind = (target or host_target()).kind
    found: dict[str, Callable] = {}
    for name, fn in STAGES.items():
        found[name] = fn
        found |= {extra: stage for extra, (stage, after, kinds) in TARGET_STAGES.items()
                  if after == name and kind in kinds}
    return found


# ----------------------------------------------------------------------------------------------
# Running them
# ----------------------------------------------------------------------------------------------


@dataclass
class StageRecord:
    """What one stage did: how long it took and what it made (``result``; None if disabled)."""

    name: str
    milliseconds: float = 0.0
    result: object = None
    skipped: bool = False

    def summary(self) -> str:
        """A few words on the result: kernels of a program, lines of a source, a library's file."""
        if isinstance(self.result, Program):
            count = len(self.result.kernels)
            return f"{count} kernel{'s' if count != 1 else ''}"
        if isinstance(self.result, Source):
            return f"{self.result.text.count(chr(10)) + 1} lines of {self.result.language}"
        if isinstance(self.result, Library):
            if self.result.cubin is not None:
                return f"{self.result.cubin.key[:12]}....cubin"
            return f"{self.result.path.stem[:12]}...{self.result.path.suffix}"
        return type(self.result).__name__


@dataclass
class StageReport:
    """The record of a ``run_stages`` run; ``str`` gives one line per stage."""

    records: list[StageRecord] = field(default_factory=list)

    def result(self, name: str):
        """What stage ``name`` made (``KeyError`` if it did not run)."""
        for record in self.records:
            if record.name == name and not record.skipped:
                return record.result
        raise KeyError(f"stage {name!r} did not run")

    def programs(self) -> dict[str, Program]:
        """The program after each loop stage that ran, by stage name, in order."""
        return {r.name: r.result for r in self.records if r.name in PROGRAM_STAGES and not r.skipped}

    def __str__(self) -> str:
        lines = [f"{'stage':<20} {'made':>22} {'ms':>8}"]
        for r in self.records:
            if r.skipped:
                lines.append(f"{r.name:<20} {'(disabled)':>22}")
            else:
                lines.append(f"{r.name:<20} {r.summary():>22} {r.milliseconds:>8.2f}")
        return "\n".join(lines)


def shown(value) -> str:
    """What ``print_between`` prints for a stage's result: the loop IR, the source text, the
    library's path, or what an executable takes and returns."""
    if isinstance(value, Executable) or hasattr(value, "plan"):
        graph = value.plan.graph
        where = getattr(value, "library_path", None) or "a cubin on the GPU"
        return (f"executable {graph.name}({', '.join(n.name for n in graph.inputs)}) -> "
                f"{len(graph.outputs)} output(s), from {where}")
    return str(value)


def stage_names(stop_after: str = "load", disable: Iterable[str] = (), target: Target | None = None) -> list[str]:
    """The stages that would run for ``target`` (default: this CPU), in order, up to
    ``stop_after``, minus ``disable``; ``MinicompError`` naming the known stages for an unknown
    or undisableable name."""
    disabled = set(disable)
    stages = target_stages(target)
    if stop_after not in stages:
        raise MinicompError(f"unknown stage {stop_after!r}; the stages are {', '.join(stages)}")
    unknown = disabled - set(stages)
    if unknown:
        raise MinicompError(f"unknown stage(s) {sorted(unknown)}; the stages are {', '.join(stages)}")
    needed = disabled - set(OPTIONAL_STAGES)
    if needed:
        raise MinicompError(f"stage(s) {sorted(needed)} cannot be left out (the next stage needs what they "
                            f"make); only {', '.join(OPTIONAL_STAGES)} can")
    names = list(stages)[:list(stages).index(stop_after) + 1]
    return [n for n in names if n not in disabled]


def run_stage(name: str, value, target: Target):
    """Stage ``name`` on ``value`` (what the stage before it made); after a loop stage the
    program is verified (``LoopIRError`` naming the stage if it is broken)."""
    made = target_stages(target)[name](value, target)
    if name in PROGRAM_STAGES:
        try:
            verify_program(made)
        except LoopIRError as exc:
            raise LoopIRError(f"stage {name!r} left a broken program: {exc}") from None
    return made


def run_stages(graph: Graph, target: Target | None = None, stop_after: str = "load", disable: Iterable[str] = (),
               print_between: bool = False, printer: Callable[[str], None] = print) -> tuple[object, StageReport]:
    """Run the stages on ``graph`` up to ``stop_after``; (what the last one made, the report).

    ``target``: the machine (default: this CPU, ``host_target()``). ``disable``: optional
    stages to leave out. ``print_between``: ``printer`` gets what each stage made (a program's
    loop IR, the source, the library's path), headed ``// ---- after NAME ----``.
    A loop stage whose program fails ``verify_program`` raises ``LoopIRError`` naming it.
    """
    target = target or host_target()
    enabled = set(stage_names(stop_after, disable, target))
    report = StageReport()
    value: object = graph
    order = list(target_stages(target))
    for name in order[:order.index(stop_after) + 1]:
        if name not in enabled:
            report.records.append(StageRecord(name, skipped=True))
            continue
        start = time.perf_counter()
        value = run_stage(name, value, target)
        elapsed = (time.perf_counter() - start) * 1e3
        report.records.append(StageRecord(name, elapsed, value))
        if print_between:
            printer(f"// ---- after {name} ----\n{shown(value)}")
    return value, report


def loop_program(graph: Graph, target: Target | None = None, stop_after: str = "simplify_indices",
                 disable: Iterable[str] = ()) -> Program:
    """The loop IR of a fused ``graph`` after the loop stages up to ``stop_after``.

    ``disable``: loop stages to leave out (``("schedule",)`` gives the plain nests, simplified).
    For a cuda target, ``stop_after="schedule"`` gives the thread-serial form, ``"fuse_threads"``
    the SIMT form.
    """
    allowed = [name for name in target_stages(target) if name in PROGRAM_STAGES]
    if stop_after not in allowed:
        raise ValueError(f"stop_after must be one of {', '.join(allowed)}, not {stop_after!r}")
    program, _ = run_stages(graph, target, stop_after, disable)
    return program


def build(graph: Graph, target: Target | None = None) -> Executable:
    """``graph`` through every stage: the loaded ``Executable`` (the ``"c"`` target of ``jit``)."""
    executable, _ = run_stages(graph, target)
    return executable


def gpu_serial_program(graph: Graph, target: Target | None = None) -> Program:
    """The GPU schedules' thread-serial form of ``graph`` (for ``target``, default
    ``cuda_target("sm_90")``), indices simplified: what the C renderer runs as plain loops
    (MCUDA-style), so that a CPU runs every GPU schedule at C's speed."""
    return simplify_indices(loop_program(graph, target or cuda_target("sm_90"), stop_after="schedule"))


def build_gpu_serial(graph: Graph, target: Target | None = None) -> Executable:
    """``gpu_serial_program(graph)`` rendered to C, compiled and loaded (the ``"gpu-serial-c"``
    target of ``jit``: GPU schedules tested without a GPU)."""
    program = gpu_serial_program(graph, target)
    return Executable(program, render_c(program))
