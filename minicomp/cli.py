"""The ``minicomp`` command line: look at every stage of the compiler.

    minicomp demo                                          trace workloads, print, check them
    minicomp dump model.py:mlp --arg x=f32[256,1024] ...   print the traced graph (text or DOT)
    minicomp inspect model.py:mlp --arg x=f32[256,1024]    the graph with FLOPs and bytes
    minicomp dump --workload softmax --size cpu            the same for a built-in workload
    minicomp dump gpt2.py:gpt2 --args-from make_args.py:make   arguments (weights in dicts) built by Python
    minicomp dump --workload softmax --emit loops          the loop IR (--emit c: the C source)
    minicomp dump ... --emit lower                         the loop IR after one loop stage (lower,
                                                           schedule, simplify_indices = loops)
    minicomp dump --workload softmax --emit asm            gcc's assembly, SIMD instructions counted
    minicomp dump --workload softmax --target cuda --emit cuda   the CUDA (also: ptx, sass, fuse_threads)
    minicomp dump ... --disable fusion --print-between-passes   the graph after each pass
    minicomp dump ... --emit c --print-between-passes     ... then the program after each loop stage
    minicomp explain --workload block --size cpu           why each op was fused or not; kernels,
                                                           bytes moved and memory before/after
    minicomp bisect model.py:f --arg x=f32[8,16] --target c    the first pass or loop stage that
                                                           changes results (--stop-after STAGE)
    minicomp bench [WORKLOAD ...] [--json] [--plot F.png]  time workloads against NumPy and peers
    minicomp bench gpt2.py:gpt2 --args-from make_args.py:make   time your function against NumPy
    minicomp bench --target cuda [WORKLOAD ...]            on the GPU at GPU sizes against torch (CUDA events)
    minicomp bench --under-load [WORKLOAD ...]             ... idle and with one core busy: median, p90
    minicomp cache info|clear                              the on-disk compile cache
    minicomp target [--cuda sm_90]                         what minicomp thinks the machine is
    minicomp fuzz --graphs N --seed S [--minutes M]        random graphs compiled vs the interpreter
    minicomp --version                                     the version and which copy runs

A function is named ``path/to/file.py:FUNC`` or ``package.module:FUNC``. Each ``--arg`` gives
one parameter: a tensor type (``x=f32[256,1024]``) or a Python literal for a static value
(``heads=12``); parameters with defaults may be left out. ``--args-from make_args.py:FUNC``
calls ``FUNC()`` (a file resolved from the current directory) for the arguments: a tuple of
positional arguments or a dict of keyword arguments, each any pytree of arrays (nested dicts,
lists and tuples of weights); ``--arg`` options add to it or override it.

``dump``, ``inspect``, ``explain`` and ``bisect`` run the pass pipeline: the default passes, or
exactly ``--passes a,b,c`` (``--passes none``: the graph as traced), minus each ``--disable``.
``dump --emit`` (past ``graph``) and ``bisect`` go on through the loop stages of
``minicomp.stages`` (lower, schedule, simplify_indices, render); ``--disable schedule`` or
``--disable simplify_indices`` leaves one out.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import os
import sys


from .errors import MinicompError
from .ir.dtypes import TensorType


def load_function(spec: str):
    """``file.py:func`` or ``module:func`` -> the function (``jit`` wrappers are unwrapped)."""
    if ":" not in spec:
        raise MinicompError(f"name the function as FILE.py:FUNC or module:FUNC, got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = os.path.abspath(where)
        if not os.path.exists(path):
            raise MinicompError(f"no such file: {where}")
        sys.path.insert(0, os.path.dirname(path))
        module_spec = importlib.util.spec_from_file_location(f"_minicomp_user_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    fn = getattr(module, name, None)
    if fn is None:
        raise MinicompError(f"{where} has no function {name!r}")
    return getattr(fn, "fn", fn)


def parse_arg_value(text: str):
    """``f32[2,3]`` -> ``TensorType``; anything else is read as a Python literal (static)."""
    try:
        return TensorType.parse(text)
    except MinicompError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise MinicompError(f"cannot read argument value {text!r}: give a tensor type like "
                            "f32[256,1024] or a Python literal") from None


def bind_arguments(fn, arg_specs: list[str], given: dict | None = None) -> list:
    """Order ``name=value`` specs (and the values ``given`` by name) as ``fn``'s parameters;
    defaults fill what is not given. ``--arg`` specs override ``given``."""
    given = dict(given or {})
    for spec in arg_specs:
        if "=" not in spec:
            raise MinicompError(f"--arg takes NAME=VALUE (like x=f32[256,1024]), got {spec!r}")
        name, value = spec.split("=", 1)
        given[name.strip()] = parse_arg_value(value.strip())
    values = []
    params = list(inspect.signature(fn).parameters.values())
    for param in params:
        if param.name in given:
            values.append(given.pop(param.name))
        elif param.default is not inspect.Parameter.empty:
            values.append(param.default)
        elif param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        else:
            raise MinicompError(f"missing --arg {param.name}=... (for example {param.name}=f32[16,16])")
    if given:
        raise MinicompError(f"{fn.__name__} has no parameter(s) {sorted(given)}; "
                            f"it takes {[p.name for p in params]}")
    return values


def arguments_from(spec: str, fn) -> dict:
    """The arguments ``FILE.py:FUNC`` (``--args-from``) builds for ``fn``, by parameter name.

    Requires: ``FUNC()`` returns a tuple (or list) of positional arguments or a dict of keyword
    arguments. Guarantees: any failure (no file, an exception in it, a wrong return value) is
    a ``MinicompError`` naming the file, the function and the line that raised.

    >>> arguments_from("make_args.py:make", gpt2)     # make() returns {"inputs": ids, "params": {...}}
    {'inputs': array([...]), 'params': {...}}
    """
    try:
        make = load_function(spec)
        values = make()
    except MinicompError as exc:
        raise MinicompError(f"--args-from {spec}: {exc}") from None
    except Exception as exc:  # the user's file: report where it failed, not minicomp's traceback
        raise MinicompError(f"--args-from {spec}: {type(exc).__name__}: {exc}{_where(exc)}") from None
    try:
        if isinstance(values, dict):
            bound = inspect.signature(fn).bind_partial(**values)
        elif isinstance(values, (tuple, list)):
            bound = inspect.signature(fn).bind_partial(*values)
        else:
            raise MinicompError(f"--args-from {spec}: it returned a {type(values).__name__}; return a tuple of "
                                "positional arguments or a dict of keyword arguments")
    except TypeError as exc:  # e.g. "too many positional arguments"
        raise MinicompError(f"--args-from {spec}: its arguments do not fit {fn.__name__}: {exc}") from None
    return dict(bound.arguments)


def _where(exc: BaseException) -> str:
    """`` (at file.py:12)``: the innermost line of the traceback outside minicomp."""
    import traceback

    from .errors import at

    if isinstance(exc, SyntaxError) and exc.filename:
        return at(f"{exc.filename}:{exc.lineno}")
    package = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(package)
              and not f.filename.startswith("<frozen")]
    return at(f"{frames[-1].filename}:{frames[-1].lineno}") if frames else ""


def _trace_from_args(args):
    """The traced graph. Argument types may have symbolic sizes (``--arg x=f32[T,768]``): the
    guards the trace assumed (``T >= 1`` for ``x[-1]``) are said on stderr."""
    from .frontend import trace
    from .ir.symbolic import collect_guards

    fn, values = _function_from_args(args)
    with collect_guards() as guards:
        graph = trace(fn, *values)
    for expr, minimum, why in guards:
        print(f"minicomp: assuming {expr} >= {minimum} ({why})", file=sys.stderr)
    return graph


def _function_from_args(args):
    """(function, argument values) named by FILE.py:FUNC and --arg, or by --workload/--size."""
    if args.workload:
        from .workloads import WORKLOADS

        if args.workload not in WORKLOADS:
            raise MinicompError(f"unknown workload {args.workload!r}; known: {', '.join(WORKLOADS)}")
        workload = WORKLOADS[args.workload]
        return workload.fn, [TensorType(s, "f32") for s in workload.shapes[args.size].values()]
    if not args.function:
        raise MinicompError("give a function (FILE.py:FUNC) or --workload NAME")
    fn = load_function(args.function)
    given = arguments_from(args.args_from, fn) if getattr(args, "args_from", None) else None
    return fn, bind_arguments(fn, args.arg, given)


def _pass_options(args) -> tuple[list[str] | None, list[str]]:
    """(passes, disabled) from ``--passes a,b`` (``none``: no pass) and ``--disable`` options.

    ``--disable`` may also name an optional loop stage (``schedule``, ``simplify_indices``):
    those are left out here and read by ``_stage_options``."""
    from .passes.pipeline import pipeline_names
    from .stages import STAGES, stage_names

    passes = None
    if args.passes is not None:
        passes = [] if args.passes.strip().lower() in ("", "none") else \
            [p.strip() for p in args.passes.split(",") if p.strip()]
    stage_names(disable=[p for p in _disabled(args) if p in STAGES])  # lower, render ... cannot be left out
    disable = [p for p in _disabled(args) if p not in STAGES]
    pipeline_names(passes, disable)  # unknown names fail here, listing the known passes
    return passes, disable


def _disabled(args) -> list[str]:
    """Every name given to ``--disable`` (repeatable, comma-separated)."""
    return [p.strip() for option in args.disable for p in option.split(",") if p.strip()]


def _stage_options(args) -> list[str]:
    """The loop stages ``--disable`` leaves out (``schedule``, ``simplify_indices``)."""
    from .stages import OPTIONAL_STAGES

    return [p for p in _disabled(args) if p in OPTIONAL_STAGES]


def _optimise(args, graph):
    """Run the pipeline the options ask for on ``graph`` (printing between passes if asked)."""
    from .passes.pipeline import run_pipeline

    passes, disable = _pass_options(args)
    optimised, _ = run_pipeline(graph, passes, disable, print_between=args.print_between_passes)
    return optimised


#: ``dump --emit`` choice -> the last stage of ``minicomp.stages`` it runs (graph: none of them)
EMIT_STAGES = {"graph": None, "lower": "lower", "schedule": "schedule", "fuse_threads": "fuse_threads",
               "simplify_indices": "simplify_indices", "loops": "simplify_indices", "c": "render",
               "asm": "simplify_indices", "cuda": "render", "ptx": "render", "sass": "compile"}
#: what each --emit needs of the target: a CPU's (C) or a GPU's (CUDA)
CPU_EMITS, CUDA_EMITS = ("c", "asm"), ("fuse_threads", "cuda", "ptx", "sass")


def _dump_target(args):
    """The ``Target`` of ``dump --target``: this CPU; or for cuda the GPU here, else ``--arch``'s."""
    from .target import cuda_target, host_target, probe_cuda_target

    if args.target == "c":
        if args.emit in CUDA_EMITS:
            raise MinicompError(f"--emit {args.emit} is a CUDA stage: add --target cuda")
        return host_target()
    if args.emit in CPU_EMITS:
        raise MinicompError(f"--emit {args.emit} is the C target's: with --target cuda, --emit cuda, ptx or sass")
    return cuda_target(args.arch) if args.arch else (probe_cuda_target() or cuda_target("sm_90"))


def cmd_dump(args) -> None:
    graph = _optimise(args, _trace_from_args(args))
    between = args.print_between_passes
    if args.emit == "graph":
        if between and args.format == "text":
            return  # the last graph printed between passes is the result
        print(graph.to_dot() if args.format == "dot" else graph.to_text(None if args.full_constants else 16))
        return
    if args.format == "dot":
        raise MinicompError("--format dot only applies to --emit graph")
    if args.kernel and args.emit != "asm":
        raise MinicompError("--kernel only applies to --emit asm")
    from .stages import run_stages

    target = _dump_target(args)
    made, _ = run_stages(graph, target, stop_after=EMIT_STAGES[args.emit], disable=_stage_options(args),
                         print_between=between)
    if args.emit == "ptx":
        from .runtime.nvcc import arch_of, compile_ptx

        print(compile_ptx(made.text, arch_of(target)))
    elif args.emit == "sass":
        from .runtime.nvcc import disassemble

        print(disassemble(made.cubin.data))
    elif args.emit == "asm":
        from .tools.asm import assembly, format_summary, simd_summary

        text = assembly(made, args.kernel)
        print(f"# SIMD evidence: vector instructions by register width\n{format_summary(simd_summary(text))}\n")
        print(text)
    elif not between:  # between stages, the last thing printed is the result
        print(made)


def cmd_cache(args) -> None:
    from .runtime import cache

    if args.action == "clear":
        done = cache.clear()
        print(f"removed {done['libraries']} compiled libraries ({done['files']} files) from {done['path']}")
        if done["left"]:
            print(f"left {done['left']} other files there (not made by minicomp, or in use)")
    else:
        info = cache.info()
        print(f"cache: {info['path']}\nentries: {info['entries']}\nsize: {info['bytes'] / 1e6:.1f} MB")
        if info["others"]:
            print(f"other files: {info['others']} (not made by minicomp; not counted, never removed)")


def cmd_target(args) -> None:
    import numpy as np

    from .codegen import gemm
    from .schedules.cpu.elementwise import tile_size
    from .schedules.cpu.lanes import lane_count
    from .schedules.cpu.reductions import cached_row_bytes, column_block
    from .schedules.cpu.work import PARALLEL_MIN_WORK
    from .target import cuda_target, describe, host_target, probe_cuda_target

    if args.cuda:
        print(describe(cuda_target(args.cuda)))
        return
    target = host_target()
    tiles = ", ".join(f"{' x '.join(map(str, gemm.tile_shape(dtype, target)))} {np.dtype(dtype).name}"
                      for dtype in (np.float32, np.float64))
    gpu = probe_cuda_target()
    print(describe(target))
    print(f"  {'matmul tile':<14}{tiles} (rows x columns of C the micro-kernel keeps in registers)")
    tile = tile_size(target)
    print(f"  {'schedules':<14}{lane_count(target)} lanes per float reduction, column tasks of "
          f"{column_block(target)}, rows of up to {cached_row_bytes(target) // 1024} KiB kept in L2, "
          f"{tile} x {tile} transposing tiles")
    print(f"  {'threads':<14}parallel loops from {PARALLEL_MIN_WORK} units of work "
          "(measured: minicomp bench --parallel-threshold)")
    print(f"  {'GPU':<14}{gpu or 'none found (minicomp target --cuda sm_90: a known architecture)'}")


def cmd_bench(args) -> None:
    from .bench import CALLS_PER_BLOCK, run_bench

    functions = [name for name in args.workloads if ":" in name]
    if functions or args.args_from:
        _bench_function(args, functions)
        return
    if args.parallel_threshold:
        from .bench_load import run_parallel_threshold

        run_parallel_threshold()
        return
    if args.target == "cuda" and not functions:
        from .bench_cuda import run_cuda_bench

        run_cuda_bench(args.workloads or None, min_rounds=args.rounds, as_json=args.json)
        return
    if args.under_load:
        from .bench_load import run_load_bench

        blocks = max(2, -(-args.rounds // CALLS_PER_BLOCK))
        run_load_bench(args.workloads or None, size=args.size, target=args.target, min_blocks=blocks,
                       peers=not args.no_peers)
        return
    run_bench(args.workloads or None, size=args.size, target=args.target,
              min_rounds=args.rounds, min_seconds=args.seconds, as_json=args.json,
              without_passes=args.no_passes_column, plot=args.plot)


def _bench_function(args, functions: list[str]) -> None:
    """``minicomp bench FILE.py:FUNC --args-from make_args.py:MAKE``: one function against NumPy."""
    from .bench import bench_function, format_table

    if len(functions) != 1 or len(args.workloads) != 1 or not args.args_from:
        raise MinicompError("bench a function as: minicomp bench FILE.py:FUNC --args-from make_args.py:MAKE "
                            "(one function, no workload names)")
    fn = load_function(functions[0])
    values = bind_arguments(fn, [], arguments_from(args.args_from, fn))
    result = bench_function(functions[0], fn, values, target=args.target, min_rounds=args.rounds,
                            min_seconds=args.seconds)
    if args.json:
        import json
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_table([result]))


def cmd_inspect(args) -> None:
    from .stats import format_stats

    graph = _optimise(args, _trace_from_args(args))
    print(graph.to_text())
    print()
    print(format_stats(graph))


def cmd_explain(args) -> None:
    from .tools.explain import explain

    passes, disable = _pass_options(args)
    print(explain(_trace_from_args(args), passes=passes, disable=disable))


def cmd_bisect(args) -> int:
    from .tools.bisect import bisect

    passes, disable = _pass_options(args)
    fn, values = _function_from_args(args)
    result = bisect(fn, *values, passes=passes, disable=disable, target=args.target,
                    trials=args.trials, seed=args.seed, stop_after=args.stop_after,
                    disable_stages=_stage_options(args))
    print(result)
    return 0 if result.ok else 3


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.size)


def cmd_fuzz(args) -> int:
    try:
        from .testing.fuzz import FuzzOptions, fuzz_command
    except ImportError as exc:  # hypothesis is a development extra
        raise MinicompError(f"minicomp fuzz needs hypothesis ({exc}): pip install 'minicomp[dev]'") from None
    if args.graphs is not None and args.graphs < 1 or args.minutes is not None and args.minutes <= 0:
        raise MinicompError("--graphs must be at least 1 and --minutes more than 0")
    if args.big_size is not None and args.big_size < 1:
        raise MinicompError("--big-size must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    options = FuzzOptions(seed=seed, graphs=args.graphs, minutes=args.minutes, target=args.target,
                          out=args.out, max_nodes=args.max_nodes, shrink_seconds=args.shrink_seconds,
                          timeout=args.timeout, big_size=args.big_size)
    return fuzz_command(options, jobs=args.jobs)


def cmd_supported(args) -> None:
    from .frontend.supported import markdown_table, update_readme

    if args.update_readme:
        changed = update_readme(args.update_readme)
        print(f"{args.update_readme}: {'updated' if changed else 'already current'}")
    else:
        print(markdown_table())


def version_text() -> str:
    """``minicomp 0.1.0 from /path/to/minicomp (Python 3.11.7, NumPy 2.4.6)``.

    The path says which copy runs: after ``pip install .`` the command runs the copy installed
    into the environment, not the checkout (``pip install -e .`` makes them the same).
    """
    import platform

    import numpy as np

    from . import __version__

    package = os.path.dirname(os.path.abspath(__file__))
    return (f"minicomp {__version__} from {package} "
            f"(Python {platform.python_version()}, NumPy {np.__version__})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minicomp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=version_text(),
                        help="print the version and which copy of minicomp this command runs")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_function_args(p):
        p.add_argument("function", nargs="?", help="FILE.py:FUNC or module:FUNC")
        p.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                       help="a parameter: a tensor type like x=f32[256,1024] or a Python literal")
        p.add_argument("--args-from", metavar="FILE.py:FUNC",
                       help="call FUNC() for the arguments: a tuple, or a dict of keyword arguments "
                            "(arrays may sit in nested dicts, lists and tuples)")
        p.add_argument("--workload", help="a built-in workload instead of a function")
        p.add_argument("--size", default="cpu", choices=["tiny", "cpu", "gpu"],
                       help="workload size (default: cpu)")

    def add_pass_args(p, between: bool = True):
        p.add_argument("--passes", metavar="A,B,C",
                       help="run exactly these passes, in order ('none': the graph as traced); "
                            "default: the default pipeline")
        p.add_argument("--disable", action="append", default=[], metavar="PASS",
                       help="leave this pass out (repeatable); also the loop stages schedule and "
                            "simplify_indices, where the command runs them")
        if between:
            p.add_argument("--print-between-passes", action="store_true",
                           help="print the graph before the first pass and after each one, then (dump "
                                "--emit lower/schedule/loops/c/asm) the program after each loop stage")

    dump = sub.add_parser("dump", help="print the graph after the passes (or as traced: --passes none)")
    add_function_args(dump)
    add_pass_args(dump)
    dump.add_argument("--emit", default="graph", choices=list(EMIT_STAGES),
                      help="which stage to print: the graph after the passes; the loop IR after the loop "
                           "stage lower, schedule or simplify_indices (= loops: what is rendered); the "
                           "generated C; or the assembly gcc makes of it (with a count of SIMD instructions "
                           "per kernel); with --target cuda: fuse_threads (the SIMT form), cuda (one .cu file "
                           "nvcc compiles on its own), ptx or sass. With --print-between-passes, every stage "
                           "up to it is printed")
    dump.add_argument("--kernel", metavar="NAME", help="with --emit asm: only this kernel (k_NAME)")
    dump.add_argument("--target", default="c", choices=["c", "cuda"],
                      help="c (default: this CPU) or cuda (the GPU here, else --arch's; no GPU needed for "
                           "--emit fuse_threads, cuda, ptx and sass)")
    dump.add_argument("--arch", metavar="sm_XY", help="with --target cuda: the architecture (default: the GPU "
                                                      "here, else sm_90)")
    dump.add_argument("--format", default="text", choices=["text", "dot"])
    dump.add_argument("--full-constants", action="store_true", help="print large constants too")
    dump.set_defaults(run=cmd_dump)

    insp = sub.add_parser("inspect", help="print the graph after the passes with op histogram, FLOPs and bytes")
    add_function_args(insp)
    add_pass_args(insp)
    insp.set_defaults(run=cmd_inspect)

    expl = sub.add_parser("explain", help="fusion decisions and reasons, kernels and bytes before/after")
    add_function_args(expl)
    add_pass_args(expl, between=False)
    expl.set_defaults(run=cmd_explain)

    bis = sub.add_parser("bisect", help="find the first pass or loop stage that changes a function's results")
    add_function_args(bis)
    add_pass_args(bis, between=False)
    bis.add_argument("--stop-after", metavar="STAGE",
                     help="stop after this pass or loop stage (lower, schedule, simplify_indices); "
                          "default: through every loop stage")
    bis.add_argument("--target", default="numpy",
                     help="also run each stage on this target (c); the interpreter always runs")
    bis.add_argument("--trials", type=int, default=2, help="random input sets (default: 2)")
    bis.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default: 0)")
    bis.set_defaults(run=cmd_bisect)

    bench = sub.add_parser("bench", help="time the benchmark workloads against NumPy (medians, ratios)")
    bench.add_argument("workloads", nargs="*", help="workload names (default: all nine), or one FILE.py:FUNC "
                                                    "with --args-from")
    bench.add_argument("--args-from", metavar="FILE.py:FUNC",
                       help="with FILE.py:FUNC: call FUNC() for its arguments (a tuple or a dict of keyword arguments)")
    bench.add_argument("--size", default="cpu", choices=["tiny", "cpu", "gpu"])
    bench.add_argument("--target", default="c", help="minicomp target (default: c)")
    bench.add_argument("--rounds", type=int, default=10, help="minimum timed calls per implementation (default: 10)")
    bench.add_argument("--seconds", type=float, default=1.0, help="minimum seconds per workload")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--no-passes-column", action="store_true",
                       help="also time minicomp with every graph pass disabled (one kernel per op)")
    bench.add_argument("--plot", metavar="FILE.png", help="write a roofline chart (needs matplotlib)")
    bench.add_argument("--under-load", action="store_true",
                       help="time each workload idle and with another process spinning on one core: "
                            "median and 90th percentile of both")
    bench.add_argument("--no-peers", action="store_true",
                       help="with --under-load: time NumPy and minicomp only (torch.compile's compiles take minutes)")
    bench.add_argument("--parallel-threshold", action="store_true",
                       help="time kernels of growing size on one thread and on all: where threads start to pay")
    bench.set_defaults(run=cmd_bench)

    cache_cmd = sub.add_parser("cache", help="show the compile cache, or remove minicomp's files from it")
    cache_cmd.add_argument("action", choices=["info", "clear"])
    cache_cmd.set_defaults(run=cmd_cache)

    target_cmd = sub.add_parser("target", help="print the machine as minicomp sees it: ISA, vector widths, "
                                               "registers, cores, caches, compiler and flags")
    target_cmd.add_argument("--cuda", metavar="ARCH", help="a known CUDA architecture instead (sm_70 ... sm_90)")
    target_cmd.set_defaults(run=cmd_target)

    fuzz = sub.add_parser("fuzz", help="compile random graphs, compare with the interpreter, shrink failures")
    fuzz.add_argument("--graphs", type=int, help="how many graphs (default: 1000, or unlimited with --minutes)")
    fuzz.add_argument("--seed", type=int, help="graph g of a seed is always the same (default: a fresh one, printed)")
    fuzz.add_argument("--minutes", type=float, help="stop starting new graphs after this long")
    fuzz.add_argument("--target", default="c", help="the target compiled for (default: c; gpu-serial-c: the GPU "
                      "schedules, run as C; gpu-simt-interp: their SIMT form in the loop interpreter, big "
                      "graphs capped at 1024 elements; cuda: on this machine's GPU)")
    fuzz.add_argument("--jobs", type=int, help="worker processes (default: one per CPU; 0: this process)")
    fuzz.add_argument("--out", default="fuzz-reproducers", metavar="DIR",
                      help="where reproducers are written (default: ./fuzz-reproducers)")
    fuzz.add_argument("--max-nodes", type=int, default=12, help="generation steps per graph (default: 12)")
    fuzz.add_argument("--big-size", type=int, metavar="N", help="most elements of a value in the one graph in ten "
                      "with big values (default: 65536; gpu-simt-interp: 1024)")
    fuzz.add_argument("--shrink-seconds", type=float, default=60.0,
                      help="time to shrink each failure (default: 60; 0: no shrinking)")
    fuzz.add_argument("--timeout", type=float, default=60.0,
                      help="seconds a case may take before it counts as a hang (default: 60)")
    fuzz.set_defaults(run=cmd_fuzz)

    supported = sub.add_parser("supported", help="the NumPy functions, ufuncs, methods, attributes and operators "
                                                 "the tracer supports (a Markdown table)")
    supported.add_argument("--update-readme", metavar="README", help="rewrite the table's section in this file")
    supported.set_defaults(run=cmd_supported)

    demo = sub.add_parser("demo", help="trace and compile the workloads, check them against NumPy")
    demo.add_argument("--size", default="cpu", choices=["tiny", "cpu"],
                      help="workload size (default: cpu; tiny runs in seconds)")
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minicomp`` console script and ``python -m minicomp``."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except MinicompError as exc:
        print(f"minicomp: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
