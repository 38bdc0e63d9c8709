"""Run a sweep of planned points, skipping the ones this machine already measured, with progress.

Progress goes to stderr: a bar on a terminal (not with --no-progress), one line per finished point
always, and, where no bar is shown, a heartbeat line every HEARTBEAT_S seconds while a point runs.
"""

import sys
import time
from pathlib import Path

from tqdm import tqdm

from .env import environment
from .harness import HEARTBEAT_S, failed_result, run_point
from .registry import get_family
from .results import keys_with_status, point_key, point_rows, record, spread
from .schema import MACHINE_COLUMNS
from .spec import PointSpec, SweepSettings


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: what was measured is in the CSV; the message says how much."""


def summarize(spec: PointSpec, result: dict) -> str:
    if result["status"] != "ok":
        return f"{result['status']}: {result['error']}"[:160]
    throughput = spread([spec.batch / s for s in result["step_seconds"]])["median"]
    return f"ok {throughput:.3g} img/s [{result['backend']}]"


def machine_of(device: str) -> dict:
    """The machine columns of rows measured here on `device`."""
    env = environment(device)
    return {column: env[column] for column in MACHINE_COLUMNS}


def run_sweep(settings: SweepSettings, csv_path: Path, points: list[PointSpec], progress: bool = True,
              heartbeat_s: float = HEARTBEAT_S) -> dict:
    """Measure every point of `points` (plan(settings), planned once by the caller) that this
    machine has not measured into `csv_path` yet (all of them with settings.force).

    Returns counts: planned, skipped (already measured here), measured, left (time budget spent).
    Ctrl-C raises SweepInterrupted once the running point's process is ended.
    """
    done = set() if settings.force else keys_with_status(csv_path)
    todo = [spec for spec in points if point_key(spec, machine_of(spec.device)) not in done]
    timeout_s = settings.setting("timeout_s")
    start, measured = time.perf_counter(), 0
    # disable=None: the bar only on a terminal; the per-point lines go to logs as well.
    bar = tqdm(todo, file=sys.stderr, disable=None if progress else True, unit="point", dynamic_ncols=True)

    def heartbeat(spec):
        def beat(elapsed_s):
            if bar.disable:
                print(f"{spec.label()}: running for {elapsed_s:.0f} s (limit {timeout_s:g} s)",
                      file=sys.stderr, flush=True)
            else:
                bar.refresh()
        return beat

    try:
        for spec in bar:
            if settings.time_budget_s is not None and time.perf_counter() - start > settings.time_budget_s:
                break
            bar.set_description(spec.label())
            reason = get_family(spec.family).unavailable(spec.device)
            if reason:
                result = failed_result("unavailable", reason)
            else:
                result = run_point(spec, timeout_s, on_wait=heartbeat(spec), wait_s=heartbeat_s)
            record(csv_path, point_rows(spec, result))
            measured += 1
            bar.set_postfix_str(summarize(spec, result)[:60])
            tqdm.write(f"{spec.label()}: {summarize(spec, result)}", file=sys.stderr)
    except KeyboardInterrupt:
        raise SweepInterrupted(f"interrupted; the {measured} point(s) measured in this run are in "
                               f"{csv_path} (run the same command again to go on)") from None
    finally:
        bar.close()
    return {"planned": len(points), "skipped": len(points) - len(todo), "measured": measured,
            "left": len(todo) - measured}
