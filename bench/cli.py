"""`python bench.py` command line: sweeps, the paper's figures, the kernel benchmark, reports.

With no subcommand it runs the main job (`all`): on a GPU the Fig. 2 and Fig. 3 sweeps, their
figures and the report under reports/; without one a small CPU sweep under reports/cpu/.
User mistakes (unknown model, bad resolution, missing CSV) print one line and exit with code 2.
"""

import argparse
import sys
from pathlib import Path

from . import registry
from .env import REPO_ROOT, describe, device_kind
from .harness import MODES
from .registry import CPU_FAMILIES, FIG2_FAMILIES, FIG3_FAMILIES, SIZES
from .sweep import STEP_DEFAULTS, SweepSettings, plan, run_sweep

MODELS_CSV, KERNELS_CSV = "models.csv", "kernels.csv"
FIG2_RESOLUTIONS = tuple(range(256, 2049, 256))
FIG2_BATCH = 4  # S/2 at batch 4 (ANCHORS.md): DiT naive runs up to 1280 px on an H200 (81 GiB), then OOM
FIG3_BATCH = {1024: 4, 2048: 2}  # B=2 at 2048 keeps DiT-XL/2 with FlashAttention in memory
# The CPU job: 12 points at batch 1; it stops starting points after 120 s so that, with the
# 45 s per-point limit and the report, it ends within 3 minutes on 2 cores.
CPU_RESOLUTIONS, CPU_BATCH, CPU_TIME_BUDGET_S = (64, 128, 256), 1, 120.0


class UsageError(Exception):
    """A user mistake: reported as one line on stderr, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def split_list(text: str) -> list:
    return [item for item in text.replace(",", " ").split() if item]


def ints(values) -> tuple:
    try:
        return tuple(int(item) for value in values for item in split_list(value))
    except ValueError as error:
        raise UsageError(f"expected whole numbers: {error}") from None


def out_dir(args) -> Path:
    if args.out:
        return Path(args.out)
    return REPO_ROOT / "reports" / ("cpu" if device_kind(args.device) == "cpu" else "")


def sweep_settings(args, families, sizes, resolutions, batch, tokens=None) -> SweepSettings:
    """Settings from the command line; UsageError if a model, size, resolution or batch is bad."""
    for plugin in args.plugin or ():
        try:
            registry.load_plugin(plugin)
        except ValueError as error:
            raise UsageError(str(error)) from None
    bad_sizes = [s for s in sizes if s not in SIZES]
    if bad_sizes:
        raise UsageError(f"unknown size {bad_sizes[0]!r}; choose from {', '.join(SIZES)}.")
    settings = SweepSettings(
        families=tuple(families), sizes=tuple(sizes), resolutions=tuple(resolutions),
        device=device_kind(args.device), patch=args.patch, modes=tuple(split_list(",".join(args.modes))),
        batch=batch if tokens is None else None, tokens=tokens, dtype=args.dtype, warmup=args.warmup,
        min_reps=args.reps, min_time_s=args.min_time, max_reps=args.max_reps, timeout_s=args.timeout,
        threads=args.threads,
        force=args.force, plugins=tuple(args.plugin or ()), time_budget_s=args.time_budget)
    bad_modes = [m for m in settings.modes if m not in MODES]
    if bad_modes:
        raise UsageError(f"unknown mode {bad_modes[0]!r}; choose from {', '.join(MODES)}.")
    try:
        plan(settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return settings


def run(args, settings: SweepSettings) -> dict:
    csv_path = out_dir(args) / MODELS_CSV
    counts = run_sweep(settings, csv_path, progress=not args.no_progress)
    print(f"{csv_path}: {counts['measured']} measured, {counts['skipped']} already there"
          + (f", {counts['left']} left (time budget spent; run again to continue)" if counts["left"] else ""))
    return counts


def chosen(args, default_families, default_sizes, default_resolutions):
    families = split_list(",".join(args.models)) if args.models else default_families
    sizes = split_list(",".join(args.sizes)) if args.sizes else default_sizes
    resolutions = ints(args.resolutions) if args.resolutions else default_resolutions
    return families, sizes, resolutions


# ----------------------------------------------------------------------------------- commands

def cmd_sweep(args):
    families, sizes, resolutions = chosen(args, FIG2_FAMILIES, ("S",), FIG2_RESOLUTIONS)
    batch = FIG2_BATCH if args.batch is None else args.batch
    run(args, sweep_settings(args, families, sizes, resolutions, batch, args.tokens))


def cmd_fig2(args):
    cmd_sweep(args)
    make_figures(args, which=("fig2",))


def cmd_fig3(args):
    families, sizes, resolutions = chosen(args, FIG3_FAMILIES, SIZES, tuple(FIG3_BATCH))
    for resolution in resolutions:
        batch = args.batch or FIG3_BATCH.get(resolution, FIG2_BATCH)
        run(args, sweep_settings(args, families, sizes, (resolution,), batch, args.tokens))
    make_figures(args, which=("fig3",))


def make_figures(args, which=("fig2", "fig3", "kernels")) -> dict:
    """Draw the figures whose data exist; returns {caption: path}. UsageError if no CSV at all."""
    from . import figures
    from .results import load_frame

    directory = out_dir(args)
    models, kernels = directory / MODELS_CSV, directory / KERNELS_CSV
    if not models.exists() and not kernels.exists():
        raise UsageError(f"no {MODELS_CSV} or {KERNELS_CSV} in {directory}; run a sweep or `kernels` first.")
    drawn = {}
    if models.exists():
        frame = load_frame(models)
        batch = getattr(args, "batch", None)
        if "fig2" in which:
            # Without --batch, the batch most S/2 rows have: the figure's sweep, not a side point
            # (e.g. the b1 rows measured at 1792 px for the paper's claim), wherever it is drawn.
            drawn["Fig. 2: S/2 training speed and memory vs resolution"] = figures.fig2(
                frame, directory / "fig2.png", batch=batch, tokens=getattr(args, "tokens", None))
        if "fig3" in which:
            batches = {r: batch for r in FIG3_BATCH} if batch else FIG3_BATCH
            drawn["Fig. 3: speed relative to DiG by size"] = figures.fig3(
                frame, directory / "fig3.png", batch_by_resolution=batches)
    if kernels.exists() and "kernels" in which:
        drawn["Kernel time vs sequence length"] = figures.kernel_figure(load_frame(kernels),
                                                                         directory / "kernels.png")
    drawn = {caption: path for caption, path in drawn.items() if path is not None}
    for path in drawn.values():
        print(f"wrote {path}")
    return drawn


def cmd_plot(args):
    make_figures(args)


def cmd_report(args):
    from .report import write_report

    directory = out_dir(args)
    if not (directory / MODELS_CSV).exists():
        raise UsageError(f"no {MODELS_CSV} in {directory}; run a sweep first (or pass --out).")
    drawn = make_figures(args)
    kernels = directory / KERNELS_CSV
    report = write_report(directory, directory / MODELS_CSV, kernels if kernels.exists() else None, drawn)
    print(f"wrote {report}")


def cmd_all(args):
    """The main job: GPU -> Fig. 2 and Fig. 3 sweeps, figures, report; CPU -> a small sweep."""
    if device_kind(args.device) == "cuda":
        run(args, sweep_settings(args, FIG2_FAMILIES, ("S",), FIG2_RESOLUTIONS, FIG2_BATCH))
        for resolution, batch in FIG3_BATCH.items():
            run(args, sweep_settings(args, FIG3_FAMILIES, SIZES, (resolution,), batch))
    else:
        settings = sweep_settings(args, CPU_FAMILIES, ("S",), CPU_RESOLUTIONS, CPU_BATCH)
        if settings.time_budget_s is None:
            settings.time_budget_s = CPU_TIME_BUDGET_S
        run(args, settings)
    cmd_report(args)


def cmd_kernels(args):
    from .kernels import KernelRun, KernelSettings, summary_table

    device = device_kind(args.device)
    if device != "cuda" and not args.allow_cpu:
        raise UsageError("the kernel benchmark times GPU kernels; no CUDA GPU here "
                         "(--allow-cpu runs the PyTorch providers for a smoke test).")
    lengths = ints(args.lengths) if args.lengths else None
    if lengths and min(lengths) < 1 or args.tokens < 1:
        raise UsageError("--lengths and --tokens must be positive.")
    providers = tuple(split_list(",".join(args.providers))) if args.providers else None
    settings = KernelSettings(device=device, tokens=args.tokens, dtype=args.dtype, providers=providers)
    if lengths:
        settings.lengths = lengths
    csv_path = out_dir(args) / KERNELS_CSV
    rows = KernelRun(settings, csv_path).run(progress=print)
    print(summary_table(rows))
    print(f"wrote {csv_path}")


def cmd_tune(args):
    import torch

    from .kernels import DTYPES

    if not torch.cuda.is_available():
        raise UsageError("tune times the Triton kernel on this machine's GPU; torch sees no CUDA GPU.")

    try:
        from kernels.gla import tuning
    except ImportError as error:
        print(f"bench.py tune: kernels.gla.tuning does not import ({error})", file=sys.stderr)
        raise SystemExit(1) from None
    tuning.tune(shapes=None, dtype=DTYPES[args.dtype], force=args.force, progress=print)
    table = tuning.tuning_table(DTYPES[args.dtype])
    csv_path = out_dir(args) / "tuning.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    print(tuning.tuning_summary(table))
    print(f"cache: {tuning.cache_path()}; every candidate's time: {csv_path}")


def cmd_merge(args):
    from .kernels import KERNEL_KEY
    from .results import MODEL_KEY, merge_files, read_rows

    missing = [p for p in args.inputs if not Path(p).is_file()]
    if missing:
        raise UsageError(f"CSV file {missing[0]!r} does not exist.")
    key = KERNEL_KEY if "provider" in read_rows(args.inputs[0])[0] else MODEL_KEY
    count = merge_files([Path(p) for p in args.inputs], Path(args.output), key)
    print(f"wrote {count} rows to {args.output}")


def cmd_env(args):
    for what, value in describe():
        print(f"{what:>24}: {value}")


# ------------------------------------------------------------------------------------- parser

def add_output(parser):
    parser.add_argument("--out", help="output directory (default reports/ on GPU, reports/cpu/ on CPU)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where to measure (default: CUDA if present)")


def defaults(name: str) -> str:
    return f"(default GPU {STEP_DEFAULTS['cuda'][name]:g}, CPU {STEP_DEFAULTS['cpu'][name]:g})"


def add_run_options(parser):
    """How points run: shared by the main job and the sweeps."""
    add_output(parser)
    parser.add_argument("--force", action="store_true", help="re-measure points already in the CSV")
    parser.add_argument("--timeout", type=float, help="seconds a point may take " + defaults("timeout_s"))
    parser.add_argument("--time-budget", type=float, help="start no new point after this many seconds "
                        "(CPU main job: 120); run again to go on")
    parser.add_argument("--threads", type=int, help="torch threads per point, 0 = all " + defaults("threads"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_main_job_options(parser):
    """The main job's grid is fixed (the paper's figures); only how it runs can be changed."""
    add_run_options(parser)
    parser.set_defaults(models=None, sizes=None, resolutions=None, patch=2, batch=None, tokens=None,
                        modes=["train"], dtype="bf16", warmup=None, reps=None, max_reps=None, min_time=None,
                        plugin=None)


def add_sweep_options(parser):
    add_run_options(parser)
    parser.add_argument("--models", nargs="+", help=f"families, of {', '.join(registry.FAMILIES)}")
    parser.add_argument("--sizes", nargs="+", help="model sizes among S, B, L, XL")
    parser.add_argument("--resolutions", nargs="+", help="image sizes in px, multiples of 8*patch")
    parser.add_argument("--patch", type=int, default=2, help="patch size (default 2)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--batch", type=int, help="images per step, fixed for the figure")
    budget.add_argument("--tokens", type=int, help="token budget: batch = max(1, tokens // tokens per image)")
    parser.add_argument("--modes", nargs="+", default=["train"], help="train and/or infer (default train)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int, help="untimed steps per point " + defaults("warmup"))
    parser.add_argument("--reps", type=int, help="minimum timed steps per point " + defaults("min_reps"))
    parser.add_argument("--max-reps", type=int, help="maximum timed steps per point " + defaults("max_reps"))
    parser.add_argument("--min-time", type=float, help="minimum timed seconds " + defaults("min_time_s"))
    parser.add_argument("--plugin", action="append", help="Python file that registers families (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench.py", description=__doc__.splitlines()[0],
                           epilog="With no subcommand: `all` (the main job).")
    commands = parser.add_subparsers(dest="command", metavar="command")

    def command(name, function, help_text, options):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        options(sub)
        sub.set_defaults(func=function)
        return sub

    command("all", cmd_all, "main job: GPU -> Fig. 2 + Fig. 3 sweeps, figures, report; CPU -> small sweep",
            add_main_job_options)
    command("sweep", cmd_sweep, "measure points into <out>/models.csv (default: the Fig. 2 grid)",
            add_sweep_options)
    command("fig2", cmd_fig2, "Fig. 2 sweep (S/2, 256..2048 px) then its figure", add_sweep_options)
    command("fig3", cmd_fig3, "Fig. 3 sweeps (S, B, L, XL at 1024 and 2048 px) then its figure",
            add_sweep_options)

    def kernel_options(sub):
        add_output(sub)
        sub.add_argument("--lengths", nargs="+", help="sequence lengths T (default 256 .. 65536)")
        sub.add_argument("--tokens", type=int, default=131072, help="B*T, fixed (default 131072)")
        sub.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
        sub.add_argument("--providers", nargs="+",
                         help="fla, ours-triton, ours-torch, naive, sdpa-flash, sdpa-cudnn (default all)")
        sub.add_argument("--allow-cpu", action="store_true", help="smoke-test the PyTorch providers on CPU")
    command("kernels", cmd_kernels, "kernel benchmark: GLA (ours, fla, naive) vs SDPA attention",
            kernel_options)

    def tune_options(sub):
        add_output(sub)
        sub.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
        sub.add_argument("--force", action="store_true", help="re-tune shapes already in the cache")
    command("tune", cmd_tune, "tune the Triton GLA kernel for this GPU (kernels.gla.tuning)", tune_options)

    def plot_options(sub):
        add_output(sub)
        sub.add_argument("--batch", type=int, help="batch to draw in Fig. 2 (default: the most common)")
    command("plot", cmd_plot, "draw the figures from the CSVs in --out", plot_options)
    command("report", cmd_report, "figures and REPORT.md from the CSVs in --out", plot_options)

    def merge_options(sub):
        sub.add_argument("inputs", nargs="+", help="CSV files to merge")
        sub.add_argument("-o", "--output", required=True, help="merged CSV (the latest run of a point wins)")
    command("merge", cmd_merge, "merge result CSVs", merge_options)
    command("env", cmd_env, "GPU, driver, versions and which optional backends are available",
            lambda sub: None)
    return parser


def exit_on_sigterm(signum, frame):
    """SIGTERM handler of the script: unwind, so a running point's process is killed too."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
            argv = ["all", *argv]
        args = parser.parse_args(argv)
        if getattr(args, "batch", None) is not None and args.batch < 1:
            raise UsageError(f"--batch must be at least 1, got {args.batch}.")
        if getattr(args, "tokens", None) is not None and args.tokens < 1:
            raise UsageError(f"--tokens must be at least 1, got {args.tokens}.")
        args.func(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
