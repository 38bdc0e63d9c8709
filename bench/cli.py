"""`python bench.py` command line: sweeps, the paper's figures, the kernel benchmark, reports.

With no subcommand it runs the main job (`all`) into results/, which git ignores: on a GPU the
Fig. 2 and Fig. 3 sweeps, their figures and the report; without one a small CPU sweep of every
family (about a minute on 2 idle cores) and its report. reports/ holds the committed reference results;
the new report shows them beside its own numbers, each labelled with its machine.
Every user mistake is answered with one line on stderr and exit code 2, before anything is
measured. This module imports neither torch nor pandas (the commands import what they need), so
`--help` and those answers come at once.
"""

import argparse
import math
import sys
import tempfile
from pathlib import Path

from . import REPO_ROOT, kernel_cli, registry, scale
from .errors import CsvFileError, UsageError
from .registry import FIG2_FAMILIES, FIG3_FAMILIES, SIZES
from .spec import (
    CPU_BATCH,
    CPU_GRID,
    CPU_TIME_BUDGET_S,
    DEFAULT_COMPILE_MODE,
    DEVICE_DEFAULTS,
    DTYPES,
    FIG2_BATCH,
    FIG2_RESOLUTIONS,
    FIG3_BATCH,
    MODES,
    SweepSettings,
    check_grid,
    plan,
)

DEFAULT_OUT = REPO_ROOT / "results"  # git-ignored; reports/ holds the committed reference results
MODELS_CSV, KERNELS_CSV = "models.csv", "kernels.csv"
CPU_RESOLUTIONS = tuple(sorted({r for resolutions in CPU_GRID.values() for r in resolutions}))


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# ------------------------------------------------------------------------- argument types

def whole(minimum: int):
    """argparse type: a whole number >= minimum."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return convert


def seconds(allow_zero: bool):
    """argparse type: a finite number of seconds, > 0 (or >= 0 with allow_zero)."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'at least' if allow_zero else 'more than'} 0 s, "
                                             f"got {text}")
        return value
    return convert


def split_list(values) -> list:
    """['a,b', 'c'] -> ['a', 'b', 'c']."""
    return [item for value in values or () for item in value.replace(",", " ").split() if item]


def ints(values) -> tuple:
    try:
        return tuple(int(item) for item in split_list(values))
    except ValueError as error:
        raise UsageError(f"expected whole numbers: {error}") from None


# --------------------------------------------------------------------- checks before running

def output_dir(args, must_exist: bool = False) -> Path:
    """--out (default results/); UsageError if it is a file, lies under a file or cannot be written.

    Nothing is created here: the first row written makes the directory.
    """
    path = Path(args.out) if args.out else DEFAULT_OUT
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a directory.")
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {path} cannot be made: {existing} is a file.")
    if must_exist and existing != path:
        raise UsageError(f"no {MODELS_CSV} or {KERNELS_CSV} in {path} (it does not exist); "
                         "run a sweep or `kernels` first, or pass --out.")
    try:
        with tempfile.TemporaryFile(dir=existing):  # what a write there would meet
            pass
    except OSError as error:
        raise UsageError(f"--out {path} cannot be written: {error.strerror or error} ({existing}).") from None
    return path


def check_existing_csv(path: Path, required, kind: str) -> None:
    """UsageError-grade CsvFileError if a CSV already at `path` is not one we can add rows to."""
    from . import csvstore

    header, _ = csvstore.read(path)
    if header:
        csvstore.require_columns(path, header, required, kind)


def resolve_device(args) -> str:
    from .env import device_kind  # imports torch

    try:
        return device_kind(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None


def load_plugins(args) -> None:
    for plugin in args.plugin or ():
        try:
            registry.load_plugin(plugin)
        except ValueError as error:
            raise UsageError(str(error)) from None


def settings_from(args, families, sizes, resolutions, batch, tokens=None, device=None) -> SweepSettings:
    """SweepSettings of the command line's run options; UsageError if the grid is impossible."""
    settings = SweepSettings(
        families=tuple(families), sizes=tuple(sizes), resolutions=tuple(resolutions), device=device,
        patch=args.patch, modes=tuple(split_list(args.modes)), batch=batch if tokens is None else None,
        tokens=tokens, dtype=args.dtype, warmup=args.warmup, min_reps=args.reps, min_time_s=args.min_time,
        max_reps=args.max_reps, timeout_s=args.timeout, threads=args.threads, force=args.force,
        plugins=tuple(args.plugin or ()), time_budget_s=args.time_budget,
        exec_modes=tuple(split_list(args.exec)) or None, compile_mode=args.compile_mode)
    try:
        check_grid(settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return settings


def check_user_grid(args) -> None:
    """The models, sizes, resolutions, modes and batch given on the command line, before torch."""
    load_plugins(args)
    settings_from(args, split_list(args.models) or FIG2_FAMILIES[:1], split_list(args.sizes) or ("S",),
                  ints(args.resolutions) or (256,), args.batch or 1, args.tokens)


# ------------------------------------------------------------------------------ the grids

def fig2_jobs(args, device: str) -> list:
    """[(settings, points)] of the Fig. 2 sweep; on a CPU the CPU grid (see bench/spec.py)."""
    models, resolutions = split_list(args.models), ints(args.resolutions)
    sizes = split_list(args.sizes) or ("S",)
    if device == "cpu" and not models and not resolutions:
        return [merged_job([settings_from(args, [family], sizes, family_resolutions,
                                          args.batch or CPU_BATCH, args.tokens, device)
                            for family, family_resolutions in CPU_GRID.items()])]
    default_resolutions = CPU_RESOLUTIONS if device == "cpu" else FIG2_RESOLUTIONS
    default_batch = CPU_BATCH if device == "cpu" else FIG2_BATCH
    settings = settings_from(args, models or (tuple(CPU_GRID) if device == "cpu" else FIG2_FAMILIES), sizes,
                             resolutions or default_resolutions, args.batch or default_batch, args.tokens,
                             device)
    return [(settings, plan(settings))]


def fig3_jobs(args, device: str) -> list:
    """[(settings, points)] per resolution of the Fig. 3 sweeps (S to XL at 1024 and 2048 px)."""
    resolutions = ints(args.resolutions)
    if device == "cpu" and not resolutions:
        raise UsageError("fig3's grid (S to XL at 1024 and 2048 px) would take hours per point on a CPU; "
                         "give --resolutions (and --sizes) for a CPU version.")
    jobs = []
    for resolution in resolutions or tuple(FIG3_BATCH):
        batch = args.batch or FIG3_BATCH.get(resolution, FIG2_BATCH)
        settings = settings_from(args, split_list(args.models) or FIG3_FAMILIES,
                                 split_list(args.sizes) or SIZES, (resolution,), batch, args.tokens, device)
        jobs.append((settings, plan(settings)))
    return jobs


def merged_job(settings_list: list) -> tuple:
    """One job of several plans, run smallest resolution first, so that a time budget that runs out
    leaves every family measured at the small resolutions."""
    points = [point for settings in settings_list for point in plan(settings)]
    return settings_list[0], sorted(points, key=lambda point: point.resolution)


# ------------------------------------------------------------------------------- running

def run_jobs(args, out: Path, jobs: list) -> None:
    """Run the planned sweeps into out/models.csv, one summary line each."""
    from .sweep import run_sweep

    csv_path = out / MODELS_CSV
    for settings, points in jobs:
        counts = run_sweep(settings, csv_path, points, progress=not args.no_progress)
        left = (f", {counts['left']} left (time budget of {settings.time_budget_s:g} s spent; run again to "
                "measure them)" if counts["left"] else "")
        print(f"{csv_path}: {counts['measured']} measured, {counts['skipped']} already there{left}")


def prepare_sweep(args) -> tuple:
    """(out dir, device): every check of a sweep's input, torch-free ones first."""
    from .schema import MODEL_REQUIRED

    check_user_grid(args)
    out = output_dir(args)
    check_existing_csv(out / MODELS_CSV, MODEL_REQUIRED, "models")
    return out, resolve_device(args)


def cmd_sweep(args):
    out, device = prepare_sweep(args)
    run_jobs(args, out, fig2_jobs(args, device))


def cmd_fig2(args):
    out, device = prepare_sweep(args)
    run_jobs(args, out, fig2_jobs(args, device))
    figure_after_sweep(args, out, "fig2")


def cmd_fig3(args):
    out, device = prepare_sweep(args)
    run_jobs(args, out, fig3_jobs(args, device))
    figure_after_sweep(args, out, "fig3")


def figure_after_sweep(args, out: Path, which: str) -> None:
    if (out / MODELS_CSV).exists():
        make_figures(args, out, which=(which,))
    else:  # a time budget spent before the first point
        print(f"not drawn: Fig. {which[-1]} (no point measured into {out})")


def cmd_all(args):
    """The main job: GPU -> Fig. 2 and Fig. 3 sweeps, figures, report; CPU -> the CPU grid, report."""
    out, device = prepare_sweep(args)
    if device == "cuda":
        jobs = fig2_jobs(args, device) + fig3_jobs(args, device)
    else:
        jobs = fig2_jobs(args, device)
        if args.time_budget is None:
            jobs[0][0].time_budget_s = CPU_TIME_BUDGET_S
    run_jobs(args, out, jobs)
    write_report(args, out)


def make_figures(args, out: Path, which=("fig2", "fig3", "kernels")) -> dict:
    """Draw the figures whose data exist; returns {caption: path}. UsageError if no CSV at all."""
    models, kernels = out / MODELS_CSV, out / KERNELS_CSV
    if not models.exists() and not kernels.exists():
        raise UsageError(f"no {MODELS_CSV} or {KERNELS_CSV} in {out}; run a sweep or `kernels` first.")
    from . import figures
    from .results import load_frame, load_kernels

    drawn = {}
    if models.exists():
        frame = load_frame(models)
        batch = getattr(args, "batch", None)
        # eager (the paper's protocol) as fig2.png / fig3.png; each family at its best beside them
        for view, suffix in (("eager", ""), ("best", "_best")):
            if view == "best" and set(frame["exec_mode"]) <= {"eager"}:
                continue  # every row ran eager: the best view would repeat the figure
            if "fig2" in which:
                # Without --batch, the batch most S/2 rows have: the figure's sweep, not a side point
                # (e.g. the b1 rows measured at 1792 px for the paper's claim), wherever it is drawn.
                drawn[f"Fig. 2 ({view}): S/2 training speed and memory vs resolution"] = figures.fig2(
                    frame, out / f"fig2{suffix}.png", batch=batch, tokens=getattr(args, "tokens", None),
                    view=view)
            if "fig3" in which:
                batches = {r: batch for r in FIG3_BATCH} if batch else FIG3_BATCH
                drawn[f"Fig. 3 ({view}): speed relative to DiG by size"] = figures.fig3(
                    frame, out / f"fig3{suffix}.png", batch_by_resolution=batches, view=view)
    if kernels.exists() and "kernels" in which:
        drawn["Kernel time vs sequence length"] = figures.kernel_figure(
            load_kernels(kernels), out / "kernels.png")
    missing = [caption for caption, path in drawn.items() if path is None]
    drawn = {caption: path for caption, path in drawn.items() if path is not None}
    for path in drawn.values():
        print(f"wrote {path}")
    if len(which) == 1:  # a figure asked for by name (fig2, fig3): say why there is none
        for caption in missing:
            figure = caption.split(" (")[0].split(":")[0]
            print(f"not drawn: {figure} (no point of it ran, ok or OOM, in {out})")
    return drawn


def write_report(args, out: Path) -> None:
    if not (out / MODELS_CSV).exists():
        raise UsageError(f"no {MODELS_CSV} in {out}; run a sweep first (or pass --out).")
    from .report import write_report as write

    drawn = make_figures(args, out)
    kernels = out / KERNELS_CSV
    print(f"wrote {write(out, out / MODELS_CSV, kernels if kernels.exists() else None, drawn)}")


def readable_results(args) -> Path:
    """--out of plot and report; UsageError-grade CsvFileError for a CSV there that is empty, binary
    or another CSV, found before pandas is imported."""
    from . import csvstore
    from .schema import KERNEL_REQUIRED, MODEL_REQUIRED

    out = output_dir(args, must_exist=True)
    for name, required, kind in ((MODELS_CSV, MODEL_REQUIRED, "models"),
                                 (KERNELS_CSV, KERNEL_REQUIRED, "kernels")):
        if (out / name).exists():
            csvstore.require_columns(out / name, csvstore.read(out / name)[0], required, kind)
    return out


def cmd_plot(args):
    make_figures(args, readable_results(args))


def cmd_report(args):
    write_report(args, readable_results(args))


def cmd_merge(args):
    from . import csvstore
    from .schema import KERNEL_DEFAULTS, KERNEL_KEY, MODEL_KEY, csv_kind
    from .spec import KEY_DEFAULTS

    kinds = []
    for name in args.inputs:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"CSV file {name!r} does not exist." if not path.exists()
                             else f"{name!r} is not a file.")
        header, _ = csvstore.read(path)
        if not header:
            raise UsageError(f"{name} is empty: nothing to merge.")
        try:
            kinds.append(csv_kind(header))
        except CsvFileError as error:
            raise UsageError(f"{name} is {error}.") from None
    if len(set(kinds)) > 1:
        other = next(kind for kind in kinds if kind != kinds[0])
        raise UsageError(f"cannot merge a {kinds[0]} CSV with a {other} CSV.")
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"-o {output} is a directory; give a file name.")
    output_dir(argparse.Namespace(out=str(output.parent)))
    key, defaults = (KERNEL_KEY, KERNEL_DEFAULTS) if kinds[0] == "kernels" else (MODEL_KEY, KEY_DEFAULTS)
    count = csvstore.merge([Path(p) for p in args.inputs], output, key, defaults)
    print(f"wrote {count} rows to {output}")


def cmd_profile(args):
    """Profile each point's step (GPU time per kernel category, launches per step) into profile.csv."""
    import dataclasses

    from . import csvstore
    from .env import environment
    from .harness import run_point
    from .profile import PROFILE_COLUMNS, PROFILE_CSV, PROFILE_KEY, KernelTime, profile_rows, summary

    out, device = prepare_sweep(args)
    if device != "cuda":
        raise UsageError("profile reads GPU kernel times (torch.profiler's CUDA activity); no CUDA GPU here.")
    csv_path = out / PROFILE_CSV
    for settings, points in fig2_jobs(args, device):
        for spec in points:
            spec = dataclasses.replace(spec, profile_steps=args.steps)
            result = run_point(spec, settings.setting("timeout_s"))
            model = registry.get_family(spec.family).model_name(spec.size, spec.patch)
            csvstore.record(csv_path, profile_rows(spec, result, model, environment(device)), PROFILE_COLUMNS,
                            PROFILE_KEY)
            print(f"== {spec.label()} [{result['backend']}]: {result['status']} {result['error']}")
            if result["status"] == "ok":
                print(summary([KernelTime(*entry) for entry in result["kernels"]]))
    print(f"wrote {csv_path}")


def cmd_scale(args):
    scale.cmd_scale(args)


def cmd_env(args):
    from .env import describe

    for what, value in describe():
        print(f"{what:>24}: {value}")


# ------------------------------------------------------------------------------------- parser

def add_output(parser, device: bool = True):
    parser.add_argument("--out", help=f"output directory (default {DEFAULT_OUT.name}/, which git ignores; "
                                      "reports/ holds the committed reference results)")
    if device:
        parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                            help="where to measure (default: CUDA if present)")


def defaults(name: str) -> str:
    cuda, cpu = DEVICE_DEFAULTS["cuda"][name], DEVICE_DEFAULTS["cpu"][name]
    if isinstance(cuda, str):
        return f"(default GPU {cuda}, CPU {cpu})"
    return f"(default GPU {cuda:g}, CPU {cpu:g})"


def add_run_options(parser):
    """How points run: shared by the main job and the sweeps."""
    add_output(parser)
    parser.add_argument("--force", action="store_true", help="re-measure points already in the CSV")
    parser.add_argument("--timeout", type=seconds(allow_zero=False),
                        help="seconds a point may take " + defaults("timeout_s"))
    parser.add_argument("--time-budget", type=seconds(allow_zero=False),
                        help="start no new point after this many seconds "
                             f"(CPU main job: {CPU_TIME_BUDGET_S:g}); run again to go on")
    parser.add_argument("--threads", type=whole(0),
                        help="torch threads per point, 0 = all " + defaults("threads"))
    parser.add_argument("--dtype", choices=DTYPES, help="autocast dtype " + defaults("dtype"))
    parser.add_argument("--exec", nargs="+", metavar="MODE",
                        help="execution modes, of eager (PyTorch op by op), compile (torch.compile of the "
                             "model, --compile-mode; optimizer eager) and graph (the whole step, forward, "
                             "loss, backward and fused AdamW, captured once in one CUDA graph and "
                             "replayed); compile and capture times are recorded apart from the timed "
                             "steps (default GPU eager compile graph, CPU eager)")
    parser.add_argument("--compile-mode", default=DEFAULT_COMPILE_MODE,
                        help=f"torch.compile mode for --exec compile (default {DEFAULT_COMPILE_MODE})")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (the line per finished point stays)")


def add_main_job_options(parser):
    """The main job's grid is fixed (the paper's figures); only how it runs can be changed."""
    add_run_options(parser)
    parser.set_defaults(models=None, sizes=None, resolutions=None, patch=2, batch=None, tokens=None,
                        modes=["train"], warmup=None, reps=None, max_reps=None, min_time=None, plugin=None)


def add_sweep_options(parser):
    add_run_options(parser)
    parser.add_argument("--models", nargs="+", help=f"families, of {', '.join(registry.FAMILIES)}")
    parser.add_argument("--sizes", nargs="+", help=f"model sizes among {', '.join(SIZES)}")
    parser.add_argument("--resolutions", nargs="+", help="image sizes in px, multiples of 8*patch")
    parser.add_argument("--patch", type=whole(1), default=2, help="patch size (default 2)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--batch", type=whole(1), help="images per step, fixed for the figure")
    budget.add_argument("--tokens", type=whole(1),
                        help="token budget: batch = max(1, tokens // tokens per image)")
    parser.add_argument("--modes", nargs="+", default=["train"],
                        help=f"{' and/or '.join(MODES)} (default train)")
    parser.add_argument("--warmup", type=whole(0), help="untimed steps per point " + defaults("warmup"))
    parser.add_argument("--reps", type=whole(1), help="minimum timed steps per point " + defaults("min_reps"))
    parser.add_argument("--max-reps", type=whole(1),
                        help="maximum timed steps per point " + defaults("max_reps"))
    parser.add_argument("--min-time", type=seconds(allow_zero=True),
                        help="minimum timed seconds " + defaults("min_time_s"))
    parser.add_argument("--plugin", action="append", help="Python file that registers families (repeatable)")


def add_profile_options(parser):
    add_sweep_options(parser)
    parser.add_argument("--steps", type=whole(1), default=3, help="profiled steps per point (default 3)")


def add_plot_options(parser):
    add_output(parser, device=False)
    parser.add_argument("--batch", type=whole(1), help="batch to draw in Fig. 2 (default: the most common)")


def add_merge_options(parser):
    parser.add_argument("inputs", nargs="+", help="CSV files to merge (all models or all kernels CSVs)")
    parser.add_argument("-o", "--output", required=True, help="merged CSV (the latest run of a point wins)")


# (name, function, help, options): a new command is one more line here.
COMMANDS = [
    ("all", cmd_all, "main job: GPU -> Fig. 2 + Fig. 3 sweeps, figures, report; CPU -> small sweep, report",
     add_main_job_options),
    ("sweep", cmd_sweep, "measure points into <out>/models.csv (default: the Fig. 2 grid; the CPU grid "
     "on CPU)", add_sweep_options),
    ("fig2", cmd_fig2, "Fig. 2 sweep (S/2, 256..2048 px; the CPU grid on CPU) then its figure",
     add_sweep_options),
    ("fig3", cmd_fig3, "Fig. 3 sweeps (S, B, L, XL at 1024 and 2048 px) then its figure", add_sweep_options),
    ("kernels", kernel_cli.cmd_kernels, "kernel benchmark: GLA (ours, fla, naive) vs SDPA attention over T "
     "and head dims; the fused glue ops vs their PyTorch twins", kernel_cli.add_kernel_options),
    ("tune", kernel_cli.cmd_tune, "tune the Triton GLA kernel for this GPU per head-dim class "
     "(kernels.gla.tuning)", kernel_cli.add_tune_options),
    ("profile", cmd_profile, "where each point's GPU time goes: ms and launches per step by kernel category "
     "(GEMM, GLA, glue, ...) into <out>/profile.csv", add_profile_options),
    ("plot", cmd_plot, "draw the figures from the CSVs in --out", add_plot_options),
    ("report", cmd_report, "figures and REPORT.md from the CSVs in --out", add_plot_options),
    ("merge", cmd_merge, "merge result CSVs", add_merge_options),
    ("env", cmd_env, "GPU, CPU, versions and which optional backends are available", lambda sub: None),
    ("scale", cmd_scale, scale.HELP, scale.add_scale_options),
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench.py", description=__doc__.splitlines()[0],
                           epilog="With no subcommand: `all` (the main job).")
    commands = parser.add_subparsers(dest="command", metavar="command", parser_class=OneLineParser)
    for name, function, help_text, options in COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        options(sub)
        sub.set_defaults(func=function)
    return parser


def exit_on_sigterm(signum, frame):
    """SIGTERM handler of the script: unwind, so a running point's process is killed too."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["all", *argv]
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except (UsageError, CsvFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # a sweep's SweepInterrupted says what was kept
        print(f"bench.py: {interrupt or 'interrupted; the rows already written are kept'}", file=sys.stderr)
        return 130
    return 0
