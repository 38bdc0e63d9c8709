"""`python bench.py scale`: training throughput on 1, 2, 4, 8 GPUs: data parallel (DDP or FSDP2), or
context parallel (DiG: each image's tokens split over the GPUs).

Each point (family, size, patch, resolution, batch per GPU, dtype, strategy, world size) is one
`torchrun` launch of this module on world_size processes, NCCL on GPUs (gloo with one process per
core on the CPU, a smoke test). Every rank builds the family's model (bench.registry), wraps it in
DDP, or shards it with FSDP2 (`fully_shard` on each block, then the root, for models whose weights,
gradients and AdamW state do not fit on one GPU), and runs the harness's training step
(bench.harness: bf16 autocast, AdamW) on its own batch: weak scaling, the global batch is world_size
times the per-GPU batch. Strategy "cp" (DiG families, for images too large for one GPU) instead
splits each image's token grid over all ranks (models.dig_context_parallel.ContextParallelDiG: rows
of the grid per rank, the residual stream in columns around the column scans): every rank takes the
same `batch` images and holds 1/world_size of each image's tokens, the loss is each rank's share of
the images' MSE and the gradients are summed over the ranks before the AdamW step: strong scaling,
`batch` images per step whatever the world size. Every rank runs the same number of steps (a rank
that stopped early would leave the others waiting in a collective). A step's time is the slowest
rank's time.

Rows go to <out>/scaling.csv, long format like models.csv plus world_size, strategy and the launch
command: throughput (img/s, all GPUs together), peak memory per GPU (GiB, the largest rank's
max_memory_allocated; peak RSS per process on the CPU), n_params, and scaling_efficiency =
throughput / (world_size x the 1-GPU throughput of the same point and strategy; under cp the strong
scaling efficiency), "unavailable" when there is no 1-GPU row to compare with (XL/2 at 4096 px is not
expected to fit one GPU). A world size above the GPUs visible gives "unavailable" rows, measured
on the next run where enough GPUs are. Points already in the file are skipped (--force re-measures).

The launch sets NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NVSHMEM_DISABLE_NVLS=1 in
the children's environment: NVLink multicast (NVLS) on GPUs shared with other jobs can take them
down, and data-parallel all-reduces do not need it.
"""

import argparse
import functools
import gc
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import REPO_ROOT, csvstore
from .registry import FAMILIES, get_family, load_plugin
from .schema import DONE_STATUSES, MACHINE_COLUMNS, MODEL_COLUMNS, MODEL_KEY
from .spec import PointSpec, check_point_args

NVLINK_MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                        "NVSHMEM_DISABLE_NVLS": "1"}
WORLD_SIZES = (1, 2, 4, 8)
STRATEGIES = ("ddp", "fsdp", "cp")
SCALE_CSV = "scaling.csv"
SCALE_COLUMNS = [*MODEL_COLUMNS, "world_size", "strategy", "launch"]
SCALE_KEY = (*MODEL_KEY, "world_size", "strategy")
# The table: the attention baselines and DiG at S/2 and XL/2, 1024 px, batch 4 per GPU
# (XL/2 at 1024 px and batch 4 fits one H200 with DDP). The CPU default is a smoke test.
DEFAULTS = {
    "cuda": dict(families=("DiT-cuDNN", "Flash-DiT", "DiG"), sizes=("S", "XL"), resolutions=(1024,),
                 batch=4, warmup=3, reps=10, threads=0, timeout_s=900.0),
    "cpu": dict(families=("DiG",), sizes=("S",), resolutions=(64,), batch=1, warmup=1, reps=2, threads=1,
                timeout_s=180.0),
}
HELP = ("multi-GPU scaling: training img/s and memory per GPU at 1, 2, 4, 8 GPUs (DDP, FSDP2, or context "
        "parallel for DiG)")


@dataclass(frozen=True)
class ScaleSpec:
    """One launch: a model's training step on world_size processes, batch images per process (per
    step in all under cp, each split over the processes)."""

    family: str
    size: str
    patch: int
    resolution: int
    batch: int
    world_size: int
    strategy: str = "ddp"
    dtype: str = "bf16"
    device: str = "cpu"
    warmup: int = 1
    reps: int = 2
    threads: int = 0
    plugins: tuple = field(default_factory=tuple)

    def point(self) -> PointSpec:
        """The harness's point for one rank, timing exactly `reps` steps (no time criterion)."""
        return PointSpec(family=self.family, size=self.size, patch=self.patch, resolution=self.resolution,
                         batch=self.batch, mode="train", dtype=self.dtype, exec_mode="eager",
                         device=self.device, warmup=self.warmup, min_reps=self.reps, min_time_s=0.0,
                         max_reps=self.reps, threads=self.threads, plugins=self.plugins)

    def label(self) -> str:
        return f"{self.point().label()} x{self.world_size} {self.strategy}"

    @property
    def images_per_step(self) -> int:
        """All ranks together: batch per rank (data parallel), or batch split over the ranks (cp)."""
        return self.batch if self.strategy == "cp" else self.world_size * self.batch


# ------------------------------------------------------------------------------- rank side

def shard_model(model, strategy, device):
    """DDP, or FSDP2: each block (model.blocks, where the model has them) then the root."""
    import torch

    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [torch.cuda.current_device()] if device == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", ()):
        fully_shard(block)
    return fully_shard(model)


def training_step(model, spec: ScaleSpec):
    """(the model as the strategy runs it, its training step on this rank's inputs)."""
    import torch
    import torch.distributed as dist

    from .exec_modes import TrainStep
    from .point import AUTOCAST_DTYPES, point_inputs

    def step_of(model, **hooks):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=spec.device == "cuda")
        return TrainStep(model, optimizer, *point_inputs(spec.point()), AUTOCAST_DTYPES[spec.dtype], **hooks)

    if spec.strategy == "cp":
        from models.dig_context_parallel import ContextParallelDiG, all_reduce_gradients

        model = ContextParallelDiG(model)
        torch.manual_seed(1)  # the same images on every rank: each rank holds its rows of each
        return model, step_of(model, loss_fn=model.local_mse_loss,
                              after_backward=functools.partial(all_reduce_gradients, model))
    model = shard_model(model, spec.strategy, spec.device)
    torch.manual_seed(1 + dist.get_rank())  # each rank its own batch, as in data-parallel training
    return model, step_of(model)


def measure_rank(spec: ScaleSpec) -> dict:
    """This rank's measurement; never raises (a failure is the result's status and error)."""
    import torch
    import torch.distributed as dist

    from .point import failure_status, time_steps

    result = {"status": "ok", "error": "", "backend": "", "n_params": None, "step_seconds": [],
              "peak_mem_gib": None, "threads": ""}
    cuda = spec.device == "cuda"
    try:
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        if spec.threads:
            torch.set_num_threads(spec.threads)
        result["threads"] = torch.get_num_threads()
        dist.init_process_group("nccl" if cuda else "gloo")
        for plugin in spec.plugins:
            load_plugin(plugin)
        torch.manual_seed(0)  # the same initial weights on every rank
        model = get_family(spec.family).create(spec.size, spec.patch, spec.point().latent_size, spec.device)
        result["backend"] = str(getattr(model, "backend_description", "not stated by the model"))
        result["n_params"] = sum(p.numel() for p in model.parameters())
        model, step = training_step(model, spec)
        result["backend"] = str(getattr(model, "backend_description", result["backend"]))  # cp says so
        for _ in range(spec.warmup):
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        result["step_seconds"] = time_steps(step, spec.point())
        if cuda:
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        # DDP's reducer must go before its process group: left to the interpreter's exit, gloo ranks
        # aborted there ("terminate called without an active exception") in 2 of 20 CPU launches
        del step, model
        gc.collect()
        dist.destroy_process_group()
    except Exception as error:  # a failed rank is a result: status + message
        result["status"] = failure_status(error)
        result["error"] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"[:300]
    if not cuda:  # ru_maxrss is in KiB on Linux; this process ran only this point
        result["peak_mem_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return result


def rank_main(argv=None) -> int:
    """Entry point of each torchrun child: JSON spec in, <result-dir>/rank<R>.json out."""
    parser = argparse.ArgumentParser(description="one rank of a `bench.py scale` point")
    parser.add_argument("--spec", required=True, help="ScaleSpec as JSON")
    parser.add_argument("--result-dir", required=True)
    args = parser.parse_args(argv)
    fields = json.loads(args.spec)
    spec = ScaleSpec(**dict(fields, plugins=tuple(fields.get("plugins", ()))))
    result = measure_rank(spec)
    Path(args.result_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(result))
    # a failed rank exits non-zero at once, so torchrun stops the ranks waiting for it in a collective
    return 0 if result["status"] == "ok" else 1


# ----------------------------------------------------------------------------- parent side

def launch_command(spec: ScaleSpec, result_dir: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={spec.world_size}", "-m", "bench.scale", "--spec", json.dumps(asdict(spec)),
            "--result-dir", result_dir]


def launch_text(spec: ScaleSpec) -> str:
    """The launch as recorded in the CSV: environment settings and the command, result dir elided."""
    settings = " ".join(f"{name}={value}" for name, value in NVLINK_MULTICAST_OFF.items())
    return f"{settings} {shlex.join(launch_command(spec, 'RESULT_DIR'))}"


def last_message(stderr: str) -> str:
    """The last line of a launch's stderr that says something (torchrun ends with ==== rules)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip().strip("=")]
    return lines[-1][:300] if lines else "no message"


def combine(results: list[dict], world_size: int, failure: str) -> dict:
    """One result from the ranks' results: per step the slowest rank, memory the largest rank.

    failure: what the launch said when it failed (exit code, last stderr line), else "". When every
    rank reported a finished measurement, a failure after it (at exit) is noted in the error column.
    """
    failed = [r for r in results if r["status"] != "ok"]
    if len(results) == world_size and not failed:
        steps = [max(times) for times in zip(*(r["step_seconds"] for r in results))]
        note = f"every rank reported; then {failure}" if failure else ""
        return dict(results[0], step_seconds=steps, peak_mem_gib=max(r["peak_mem_gib"] for r in results),
                    error=note)
    if failed:
        worst = next((r for r in failed if r["status"] == "OOM"), failed[0])
        return dict(worst, step_seconds=[], peak_mem_gib=None)
    status = "OOM" if "out of memory" in failure.lower() else "error"
    return {"status": status, "error": failure or f"{len(results)} of {world_size} ranks reported",
            "backend": "", "n_params": None, "step_seconds": [], "peak_mem_gib": None, "threads": ""}


def run_launch(spec: ScaleSpec, timeout_s: float) -> dict:
    """Launch one point with torchrun and combine the ranks' results; never raises."""
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as result_dir:
        python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, **NVLINK_MULTICAST_OFF, PYTHONPATH=python_path)
        if spec.device == "cpu":
            env["OMP_NUM_THREADS"] = str(spec.threads or 1)
        # a new session, so that on timeout the whole group (torchrun and every rank) is killed
        process = subprocess.Popen(launch_command(spec, result_dir), cwd=REPO_ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        failure = ""
        try:
            _, stderr = process.communicate(timeout=timeout_s)
            if process.returncode:
                failure = f"torchrun exited with code {process.returncode}: {last_message(stderr)}"
        except subprocess.TimeoutExpired:
            failure = f"timed out after {timeout_s:g} s (--timeout)"
        finally:  # timeout, Ctrl-C or SIGTERM of this process: the launch's process group goes too
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        results = [json.loads(path.read_text()) for path in sorted(Path(result_dir).glob("rank*.json"))]
    return combine(results, spec.world_size, failure)


def unavailable_result(reason: str) -> dict:
    return combine([{"status": "unavailable", "error": reason, "backend": "", "n_params": None,
                     "step_seconds": [], "peak_mem_gib": None, "threads": ""}], 1, "")


def one_gpu_throughput(csv_path: Path, common: dict) -> float | None:
    """Median img/s of the same point at world size 1 (same strategy) in the CSV, if it ran."""
    _, rows = csvstore.read(csv_path)
    key = [column for column in SCALE_KEY if column != "world_size"]
    for row in rows:
        if (row["metric"] == "throughput" and row["status"] == "ok" and row["world_size"] == "1"
                and all(row[column] == str(common[column]) for column in key)):
            return float(row["median"])
    return None


def scale_rows(spec: ScaleSpec, result: dict, csv_path: Path) -> list[dict]:
    """CSV rows of one launch: throughput, memory per GPU, n_params, scaling efficiency."""
    from .env import environment, timestamp
    from .results import spread

    point = spec.point()
    common = {"family": spec.family, "model": get_family(spec.family).model_name(spec.size, spec.patch),
              "size": spec.size, "patch": spec.patch, "resolution": spec.resolution,
              "tokens": point.tokens_per_image, "batch": spec.batch, "mode": "train", "exec_mode": "eager",
              "status": result["status"], "error": result["error"], "backend": result["backend"],
              "dtype": spec.dtype, "threads": result["threads"], **environment(spec.device),
              "timestamp": timestamp(), "world_size": spec.world_size, "strategy": spec.strategy,
              "launch": launch_text(spec)}
    ok = result["status"] == "ok"
    empty = {"median": "", "p20": "", "p80": "", "n_reps": ""}

    def single(value):
        return {"median": value, "p20": value, "p80": value, "n_reps": len(result["step_seconds"])}

    throughput = spread([spec.images_per_step / s for s in result["step_seconds"]]) if ok else empty
    memory_metric = "peak_mem_alloc" if spec.device == "cuda" else "peak_mem_rss"
    memory = single(result["peak_mem_gib"]) if ok else empty
    rows = [dict(common, metric="throughput", unit="img/s", **throughput),
            dict(common, metric=memory_metric, unit="GiB", **memory),
            dict(common, metric="n_params", unit="count", **(single(result["n_params"]) if ok else empty))]
    efficiency = dict(common, metric="scaling_efficiency", unit="ratio", **empty)
    baseline = throughput["median"] if spec.world_size == 1 else one_gpu_throughput(csv_path, common)
    if ok and baseline:
        efficiency.update(single(throughput["median"] / (spec.world_size * baseline)))
    elif ok:
        efficiency.update(status="unavailable", error=f"no 1-{'GPU' if spec.device == 'cuda' else 'process'} "
                          f"row of this point (world_size 1, {spec.strategy}) in {csv_path.name}")
    return [*rows, efficiency]


def plan(families, sizes, resolutions, world_sizes, patch, batch, strategy, dtype, device, warmup, reps,
         threads, plugins) -> list[ScaleSpec]:
    """Every launch, world sizes ascending within a model (the 1-GPU row first, for the efficiency)."""
    for family in families:
        get_family(family)
    for resolution in resolutions:
        check_point_args(resolution, patch, batch)
    specs = [ScaleSpec(family, size, patch, resolution, batch, world_size, strategy, dtype, device, warmup,
                       reps, threads, plugins)
             for size in sizes for resolution in resolutions for family in families
             for world_size in sorted(world_sizes)]
    if strategy == "cp":
        for spec in specs:
            check_context_parallel(spec)
    return specs


def check_context_parallel(spec: ScaleSpec) -> None:
    """ValueError unless spec's model is a DiG whose token grid splits evenly over its ranks."""
    from models.dig_context_parallel import CONTEXT_PARALLEL_GLA_BACKENDS

    family = get_family(spec.family)
    backend = family.backend_kw(spec.device).get("gla_backend", "auto")
    if family.prefix != "DiG" or backend not in ("auto", *CONTEXT_PARALLEL_GLA_BACKENDS):
        raise ValueError(f"--strategy cp splits DiG's token grid over the GPUs: it runs DiG families whose "
                         f"GLA backend is one of {', '.join(CONTEXT_PARALLEL_GLA_BACKENDS)}; "
                         f"{spec.family} is not one.")
    grid = spec.point().latent_size // spec.patch
    if grid % spec.world_size:
        raise ValueError(f"--strategy cp gives each GPU an equal block of rows of the {grid} x {grid} token "
                         f"grid ({spec.resolution} px, patch {spec.patch}): world size {spec.world_size} "
                         f"does not divide {grid}.")


def spec_key(spec: ScaleSpec, machine: dict) -> tuple:
    """The CSV key of a launch measured on `machine` (a dict with the MACHINE_COLUMNS)."""
    values = dict(asdict(spec), mode="train", exec_mode="eager", **machine)
    return tuple(str(values[column]) for column in SCALE_KEY)


def done_keys(csv_path: Path) -> set:
    """Keys of the launches in the CSV whose throughput row is ok or OOM."""
    _, rows = csvstore.read(csv_path)
    return {csvstore.row_key(row, SCALE_KEY) for row in rows
            if row.get("metric") == "throughput" and row.get("status") in DONE_STATUSES}


def processes_available(device: str) -> int:
    import torch

    return torch.cuda.device_count() if device == "cuda" else os.cpu_count() or 1


def run_scaling(specs: list[ScaleSpec], csv_path: Path, timeout_s: float, force: bool = False) -> dict:
    """Launch every spec not yet in csv_path (all with force); returns counts measured / skipped."""
    from .env import environment

    done = set() if force else done_keys(csv_path)
    counts = {"measured": 0, "skipped": 0}
    for spec in specs:
        machine = {column: environment(spec.device)[column] for column in MACHINE_COLUMNS}
        if spec_key(spec, machine) in done:
            counts["skipped"] += 1
            continue
        available = processes_available(spec.device)
        reason = get_family(spec.family).unavailable(spec.device)
        if reason:
            result = unavailable_result(reason)
        elif spec.world_size > available:
            unit = "GPUs" if spec.device == "cuda" else "CPU cores (one process per core)"
            result = unavailable_result(f"needs {spec.world_size} {unit}; {available} here")
        else:
            result = run_launch(spec, timeout_s)
        rows = scale_rows(spec, result, csv_path)
        csvstore.record(csv_path, rows, SCALE_COLUMNS, SCALE_KEY)
        counts["measured"] += 1
        print(f"{spec.label()}: {summary(rows)}", file=sys.stderr)
    return counts


def summary(rows: list[dict]) -> str:
    by_metric = {row["metric"]: row for row in rows}
    throughput = by_metric["throughput"]
    if throughput["status"] != "ok":
        return f"{throughput['status']}: {throughput['error']}"[:160]
    efficiency = by_metric["scaling_efficiency"]["median"]
    text = f"{throughput['median']:.3g} img/s"
    return text if efficiency == "" else f"{text}, efficiency {efficiency:.2f}"


# ------------------------------------------------------------------------- command line

def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """Options of `bench.py scale` (wired in bench/cli.py with cmd_scale)."""
    parser.add_argument("--out", help="output directory (default results/, which git ignores)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--models", nargs="+", help=f"families, of {', '.join(FAMILIES)} "
                        f"(default GPU {', '.join(DEFAULTS['cuda']['families'])}, CPU DiG)")
    parser.add_argument("--sizes", nargs="+", help="model sizes (default GPU S XL, CPU S)")
    parser.add_argument("--resolutions", nargs="+", help="image sizes in px (default GPU 1024, CPU 64)")
    parser.add_argument("--patch", type=int, default=2)
    parser.add_argument("--batch", type=int, help="images per GPU per step (default GPU 4, CPU 1); with "
                        "--strategy cp, images per step, each split over all GPUs")
    parser.add_argument("--world-sizes", nargs="+", help="numbers of GPUs (default 1 2 4 8; more than the "
                        "GPUs visible gives 'unavailable' rows)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp",
                        help="ddp; fsdp (FSDP2 fully_shard per block) for models that do not fit; cp (DiG "
                        "families: context parallel, each image's tokens split over all GPUs) for images "
                        "that do not fit")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int, help="untimed steps (default GPU 3, CPU 1)")
    parser.add_argument("--reps", type=int, help="timed steps, the same on every rank "
                        "(default GPU 10, CPU 2)")
    parser.add_argument("--threads", type=int, help="torch threads per rank, 0 = torch's default "
                        "(default GPU 0, CPU 1)")
    parser.add_argument("--timeout", type=float, help="seconds per launch (default GPU 900, CPU 180)")
    parser.add_argument("--force", action="store_true", help="re-measure points already in the CSV")
    parser.add_argument("--plugin", action="append", help="Python file that registers families (repeatable)")


def cmd_scale(args) -> dict:
    """Run `bench.py scale`; UsageError (bench.cli's) on bad input, before anything is launched."""
    from .cli import ints, output_dir, split_list
    from .env import device_kind
    from .errors import UsageError

    try:
        device = device_kind(args.device)
        for plugin in args.plugin or ():
            load_plugin(plugin)
        defaults = DEFAULTS[device]
        world_sizes = ints(args.world_sizes) if args.world_sizes else WORLD_SIZES
        if min(world_sizes) < 1:
            raise ValueError(f"--world-sizes must be at least 1, got {min(world_sizes)}.")
        specs = plan(
            families=split_list(args.models) if args.models else defaults["families"],
            sizes=split_list(args.sizes) if args.sizes else defaults["sizes"],
            resolutions=ints(args.resolutions) if args.resolutions else defaults["resolutions"],
            world_sizes=world_sizes, patch=args.patch,
            batch=defaults["batch"] if args.batch is None else args.batch, strategy=args.strategy,
            dtype=args.dtype, device=device,
            warmup=defaults["warmup"] if args.warmup is None else args.warmup,
            reps=defaults["reps"] if args.reps is None else args.reps,
            threads=defaults["threads"] if args.threads is None else args.threads,
            plugins=tuple(str(Path(p).resolve()) for p in args.plugin or ()))
    except ValueError as error:
        raise UsageError(str(error)) from None
    if specs[0].reps < 1 or specs[0].warmup < 0:
        raise UsageError("--reps must be at least 1 and --warmup at least 0.")
    csv_path = output_dir(args) / SCALE_CSV
    counts = run_scaling(specs, csv_path, args.timeout or defaults["timeout_s"], force=args.force)
    print(f"{csv_path}: {counts['measured']} measured, {counts['skipped']} already there")
    return counts


if __name__ == "__main__":
    sys.exit(rank_main())
