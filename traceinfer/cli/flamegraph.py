"""Flame graphs of a run directory: CPU (py-spy), threads (the thread probe), GPU kernels and ops by range
(torch.profiler), memory (a CUDA memory snapshot); the CPU and thread graphs whole or per engine phase.

    traceinfer flamegraph RUN [--kind cpu|threads|gpu|ops|memory] [--phase NAME|all] [--format svg|speedscope|folded]
                              [--icicle] [--grep RE] [--min-width PX]
    traceinfer flamegraph --diff RUN_A RUN_B [--kind cpu]     # red: grew in B, blue: shrank (shares of each run)
    traceinfer flamegraph STACKS.folded [--format ...]      # folded stacks (py-spy --format raw, flamegraph.pl's)

Files go into RUN/flamegraphs/ (the diff into RUN_B's), named by kind, phase and format: cpu.svg,
cpu.schedule.folded, cpu.speedscope.json, threads.between-steps.svg, gpu.svg, diff.cpu.svg.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from traceinfer.errors import ConfigError

HELP = "flame graphs of a run directory (CPU, threads, GPU, memory), whole or per engine phase, or a diff of two"
KINDS = ("cpu", "threads", "gpu", "ops", "memory")
FOLDER = "flamegraphs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from traceinfer.render.flame import FORMATS
    from traceinfer.rundir.schema import PHASES

    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run directory (two with --diff), or a file of folded stacks")  # fmt: skip
    parser.add_argument("--kind", choices=KINDS, default="cpu",
                        help="cpu: py-spy samples (profile --pyspy); threads: the thread probe's samples; gpu: kernels "
                             "by range path (profile --nsys, or the torch_profiler probe) and ops: CPU ops by range path (probe torch_profiler); memory: live bytes "
                             "by allocation stack (--memory-snapshot) (default: cpu)")  # fmt: skip
    parser.add_argument("--phase", choices=[*(p.replace(" ", "-") for p in PHASES), "all"],
                        help="one engine phase of the engine thread (cpu, threads), or all: one file per phase")
    parser.add_argument("--format", choices=list(FORMATS), default="svg", help="(default: svg)")
    parser.add_argument("--icicle", action="store_true", help="root at the top")
    parser.add_argument("--grep", metavar="RE", help="only stacks with a frame matching the regular expression")
    parser.add_argument("--min-width", type=float, default=0.1, metavar="PX",
                        help="merge frames narrower than this into their parent (default 0.1)")  # fmt: skip
    parser.add_argument("--diff", action="store_true", help="RUN_A RUN_B: a red/blue differential, B against A")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: RUN/flamegraphs/)")


@dataclass
class Stacks:
    """The stacks of one kind of a run: the whole graph, per engine phase (or None), what they come from."""

    whole: object  # Folded
    phases: dict | None
    source: str
    rate_hz: float | None = None
    note: str | None = None  # e.g. how the py-spy samples were aligned with the step trace


def load_stacks(run, kind: str) -> Stacks:
    """The folded stacks of ``kind`` from an opened run; a ConfigError saying what to run when it lacks them."""
    from traceinfer.rundir import schema

    path = run.path
    if kind == "cpu":
        from traceinfer.analysis.phases import align_pyspy, flames_by_phase, pyspy_samples
        from traceinfer.ingest.pyspy import read_chrometrace

        details = run.manifest.get("probes", {}).get("details", {}).get("pyspy")
        if not (path / schema.PYSPY_TRACE).exists() or not details:
            reason = details.get("reason") if details else None
            raise ConfigError(f"{path} has no py-spy samples ({reason or 'profile it with --pyspy'})")
        trace = read_chrometrace(path / schema.PYSPY_TRACE)
        steps = run.frame("steps") if "steps" in run.streams else None
        engine = details["engine_thread"]
        names = {int(k): v for k, v in details.get("threads", {}).items()}
        alignment = align_pyspy(trace, details["sync_marks_ns"], engine, details["rate_hz"],
                                steps if steps is not None else _no_steps())  # fmt: skip
        offset = alignment.offset_ns if alignment else 0.0
        samples = pyspy_samples(trace, offset, details["rate_hz"], names, idle="--idle" in details.get("flags", []))
        whole, phases = flames_by_phase(samples, steps if steps is not None else _no_steps(), engine)
        note = None
        if alignment is not None and alignment.agreement is not None:
            note = (f"py-spy samples joined to the step trace by time ({alignment.method}): "
                    f"{100 * alignment.agreement:.0f}% of the {alignment.samples} samples whose stack names a stage "
                    "fall in it")  # fmt: skip
        return Stacks(whole, phases if steps is not None else None, "py-spy", details["rate_hz"], note)
    if kind == "threads":
        from traceinfer.analysis.phases import flames_by_phase, thread_samples

        if "thread_samples" not in run.streams:
            raise ConfigError(f"{path} has no thread samples (profile it with --probes all, or a list with threads)")
        steps = run.frame("steps") if "steps" in run.streams else _no_steps()
        whole, phases = flames_by_phase(thread_samples(run.frame("thread_samples")), steps,
                                        run.manifest.get("engine_thread"))  # fmt: skip
        return Stacks(whole, phases if "steps" in run.streams else None, "thread probe",
                      run.manifest.get("probes", {}).get("stack_hz"))  # fmt: skip
    if kind == "gpu" and (path / schema.NSYS_SQLITE).exists():  # profile --nsys: every kernel, graph nodes too
        from traceinfer.analysis.gpu_trace import gpu_folded
        from traceinfer.ingest.nsys import read_nsys

        folded = gpu_folded(read_nsys(path / schema.NSYS_SQLITE))
        if not folded.counts:
            raise ConfigError(f"{path / schema.NSYS_SQLITE} holds no GPU work")
        return Stacks(folded, None, "nsys")
    if kind in ("gpu", "ops"):
        from traceinfer.ingest import kineto

        trace = path / schema.TORCH_TRACE
        if not trace.exists():
            raise ConfigError(f"{path} has no torch.profiler trace (profile it with --probes default,torch_profiler)")
        folded = kineto.gpu_stacks(trace) if kind == "gpu" else kineto.cpu_stacks(trace)
        if kind == "gpu" and not folded.counts:
            raise ConfigError(f"{trace} holds no GPU kernels (a CPU run): --kind ops shows its CPU ops by range path")
        return Stacks(folded, None, "torch.profiler")
    from traceinfer.ingest.memory_snapshot import memory_stacks

    snapshot = path / schema.MEMORY_SNAPSHOT
    if not snapshot.exists():
        raise ConfigError(f"{path} has no CUDA memory snapshot (profile a GPU run with --memory-snapshot)")
    return Stacks(memory_stacks(snapshot), None, "torch.cuda.memory snapshot")


def _no_steps():
    import pandas as pd

    from traceinfer.rundir.schema import STREAMS

    return pd.DataFrame(columns=list(STREAMS["steps"].names))


def _slug(phase: str) -> str:
    return phase.replace(" ", "-")


def write_graph(folded, directory: Path, stem: str, fmt: str, title: str, subtitle: str | None, rate_hz, args) -> Path:
    """Render ``folded`` in ``fmt`` into ``directory``/``stem``.<extension>; returns the path."""
    from traceinfer.flamegraphs.transforms import grep
    from traceinfer.render.flame import FORMATS, FlameOptions

    if args is not None and args.grep:
        folded = grep(folded, args.grep)
    renderer = FORMATS[fmt]
    options = FlameOptions(title=title, subtitle=subtitle, icicle=bool(args and args.icicle),
                           min_width_px=args.min_width if args is not None else 0.1, rate_hz=rate_hz)  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.{renderer.extension}"
    path.write_text(renderer().render(folded, options), encoding="utf-8")
    return path


def how_to_open(path: Path) -> str:
    """What the renderer of ``path``'s format says about opening it."""
    from traceinfer.render.flame import FORMATS

    renderer = next(r for r in FORMATS.values() if path.name.endswith(f".{r.extension}"))
    return renderer.opens_with.format(path=path.resolve())


def write_phases(run, stacks: Stacks, kind: str, fmt: str, directory: Path, args=None) -> list[Path]:
    """The whole graph and one per engine phase that has samples; returns the paths."""
    label = f"{kind} ({stacks.source}), {run.path.name}"
    paths = [write_graph(stacks.whole, directory, kind, fmt, label, None, stacks.rate_hz, args)]
    for phase, folded in (stacks.phases or {}).items():
        if folded.counts:
            paths.append(write_graph(folded, directory, f"{kind}.{_slug(phase)}", fmt, label,
                                     f"engine phase: {phase}", stacks.rate_hz, args))  # fmt: skip
    return paths


def run(args: argparse.Namespace) -> int:
    from traceinfer.rundir import open_run

    if args.diff:
        return _diff(args)
    if len(args.runs) != 1:
        raise ConfigError(f"flamegraph takes one run directory ({len(args.runs)} given); --diff takes two")
    if Path(args.runs[0]).is_file():
        return _from_file(args)
    run_dir = open_run(args.runs[0])
    stacks = load_stacks(run_dir, args.kind)
    directory = Path(args.out) if args.out else run_dir.path / FOLDER
    if args.phase and stacks.phases is None:
        raise ConfigError(f"--phase needs the run's step trace and {args.kind} samples of the engine thread "
                          f"(kinds cpu and threads; the steps probe on)")  # fmt: skip
    label = f"{args.kind} ({stacks.source}), {run_dir.path.name}"
    if args.phase == "all":
        paths = write_phases(run_dir, stacks, args.kind, args.format, directory, args)
    elif args.phase:
        phase = args.phase.replace("-", " ")
        paths = [write_graph(stacks.phases[phase], directory, f"{args.kind}.{args.phase}", args.format, label,
                             f"engine phase: {phase}", stacks.rate_hz, args)]  # fmt: skip
    else:
        paths = [write_graph(stacks.whole, directory, args.kind, args.format, label, None, stacks.rate_hz, args)]
    if stacks.note:
        print(stacks.note)
    for path in paths:
        print(f"wrote {path}")
    print(how_to_open(paths[0]))
    return 0


def _diff(args: argparse.Namespace) -> int:
    from traceinfer.flamegraphs.transforms import differential
    from traceinfer.rundir import open_run

    if len(args.runs) != 2:
        raise ConfigError(f"--diff takes two run directories, RUN_A RUN_B ({len(args.runs)} given)")
    a, b = (open_run(p) for p in args.runs)
    sa, sb = load_stacks(a, args.kind), load_stacks(b, args.kind)
    pick = (lambda s: s.whole) if not args.phase or args.phase == "all" else (lambda s: s.phases[args.phase.replace("-", " ")])
    folded = differential(pick(sa), pick(sb))
    directory = Path(args.out) if args.out else b.path / FOLDER
    stem = f"diff.{args.kind}" + (f".{args.phase}" if args.phase and args.phase != "all" else "")
    path = write_graph(folded, directory, stem, args.format, f"{args.kind}: {b.path.name} against {a.path.name}",
                       "red: a larger share in B, blue: a smaller one (each run normalized to its total)",
                       sb.rate_hz, args)  # fmt: skip
    print(f"wrote {path}")
    print(how_to_open(path))
    return 0


def _from_file(args: argparse.Namespace) -> int:
    """A file of folded stacks (py-spy raw, stackcollapse output): rendered beside it, or into --out."""
    from traceinfer.ingest.pyspy import read_raw

    source = Path(args.runs[0])
    parsed = read_raw(source)
    if parsed.message:
        print(f"{source}: {parsed.message}")
    if not parsed.folded.counts:
        raise ConfigError(f"{source} holds no folded stacks ('frame;frame;frame count' lines)")
    directory = Path(args.out) if args.out else source.parent
    path = write_graph(parsed.folded, directory, source.name.removesuffix(".folded").removesuffix(".txt"), args.format,
                       source.name, None, None, args)  # fmt: skip
    print(f"wrote {path}")
    print(how_to_open(path))
    return 0
