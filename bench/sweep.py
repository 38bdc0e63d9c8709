"""Plan and run a sweep of points, skipping the ones already in the CSV, with a progress bar."""

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .env import device_name
from .harness import PointSpec, check_point_args, failed_result, run_point
from .registry import get_family
from .results import MODEL_KEY, keys_with_status, point_rows, record, spread

# Step counts per device. GPU: >= 10 steps and >= 2 s, so a 40 ms step (S at 256) gets 50 samples
# and a 1.5 s step (XL at 2048) 10. CPU: the default job (12 points) must fit in 3 minutes on 2
# cores, where a DiT-S/2 training step at 256 px takes ~2 s and DiS's reference scan ~20 s, so
# 1 warm-up + 2 timed steps and 45 s per point. CPU points use 1 intra-op thread: on 2 shared
# cores PyTorch's spinning OpenMP threads made a DiT-S/2 step at 64 px take 2.5-6.7 s, not 0.35 s.
STEP_DEFAULTS = {
    "cuda": {"warmup": 3, "min_reps": 10, "min_time_s": 2.0, "max_reps": 100, "timeout_s": 600.0,
             "threads": 0},
    "cpu": {"warmup": 1, "min_reps": 2, "min_time_s": 0.0, "max_reps": 2, "timeout_s": 45.0, "threads": 1},
}


@dataclass
class SweepSettings:
    """What to measure. batch or tokens (fixed token budget per step) must be given, not both."""

    families: tuple
    sizes: tuple
    resolutions: tuple
    device: str
    patch: int = 2
    modes: tuple = ("train",)
    batch: int | None = None
    tokens: int | None = None
    dtype: str = "bf16"
    warmup: int | None = None
    min_reps: int | None = None
    min_time_s: float | None = None
    max_reps: int | None = None
    timeout_s: float | None = None
    threads: int | None = None
    force: bool = False
    plugins: tuple = ()
    time_budget_s: float | None = None

    def step(self, name: str):
        """A step-count setting, or the device default when not set."""
        value = getattr(self, name)
        return STEP_DEFAULTS[self.device][name] if value is None else value


def batch_for(resolution: int, patch: int, batch: int | None, tokens: int | None) -> int:
    """The given batch, or max(1, tokens // tokens_per_image) in fixed-token-budget mode."""
    if (batch is None) == (tokens is None):
        raise ValueError("give exactly one of batch or tokens.")
    if tokens is not None:
        if tokens < 1:
            raise ValueError(f"tokens must be at least 1, got {tokens}.")
        return max(1, tokens // ((resolution // 8 // patch) ** 2))
    return batch


def plan(settings: SweepSettings) -> list[PointSpec]:
    """All points of the sweep, in size, resolution, family, mode order; ValueError on bad input."""
    for family in settings.families:
        get_family(family)
    points = []
    for size in settings.sizes:
        for resolution in settings.resolutions:
            batch = batch_for(resolution, settings.patch, settings.batch, settings.tokens)
            check_point_args(resolution, settings.patch, batch)
            for family in settings.families:
                for mode in settings.modes:
                    points.append(PointSpec(
                        family=family, size=size, patch=settings.patch, resolution=resolution,
                        batch=batch, mode=mode, dtype=settings.dtype, device=settings.device,
                        warmup=settings.step("warmup"), min_reps=settings.step("min_reps"),
                        min_time_s=settings.step("min_time_s"),
                        max_reps=max(settings.step("max_reps"), settings.step("min_reps")),
                        threads=settings.step("threads"),
                        plugins=tuple(str(Path(p).resolve()) for p in settings.plugins)))
    return points


def spec_key(spec: PointSpec) -> tuple:
    values = {"gpu": device_name(spec.device), **spec.__dict__}
    return tuple(str(values[column]) for column in MODEL_KEY)


def summarize(spec: PointSpec, result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result['error']}"[:120]
    throughput = spread([spec.batch / s for s in result["step_seconds"]])["median"]
    return f"ok {throughput:.3g} img/s [{result['backend']}]"


def run_sweep(settings: SweepSettings, csv_path: Path, progress: bool = True) -> dict:
    """Measure every planned point not yet in `csv_path` (all of them with force).

    Returns counts: planned, skipped (already measured), measured, left (time budget ran out).
    """
    points = plan(settings)
    done = set() if settings.force else keys_with_status(csv_path)
    todo = [spec for spec in points if spec_key(spec) not in done]
    start, measured = time.perf_counter(), 0
    # disable=None: the bar only on a terminal; the per-point lines below go to logs as well.
    bar = tqdm(todo, file=sys.stderr, disable=None if progress else True, unit="point", dynamic_ncols=True)
    for spec in bar:
        if settings.time_budget_s is not None and time.perf_counter() - start > settings.time_budget_s:
            break
        bar.set_description(spec.label())
        reason = get_family(spec.family).unavailable(spec.device)
        if reason:
            result = failed_result("unavailable", reason)
        else:
            result = run_point(spec, settings.step("timeout_s"))
        record(csv_path, point_rows(spec, result))
        measured += 1
        bar.set_postfix_str(summarize(spec, result)[:60])
        if progress:
            tqdm.write(f"{spec.label()}: {summarize(spec, result)}", file=sys.stderr)
    bar.close()
    return {"planned": len(points), "skipped": len(points) - len(todo), "measured": measured,
            "left": len(todo) - measured}
