"""One long-format CSV of results: one row per (point, metric), written as each point finishes.

Rows are keyed by the point (`MODEL_KEY`); writing a point whose key is already in the file
replaces that point's rows (so `--force` and re-runs of failed points never leave duplicates)
and leaves every other row alone. Files are rewritten atomically (temporary file + rename).
"""

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .env import environment, timestamp
from .registry import get_family

ENV_COLUMNS = ["gpu", "driver", "cuda", "torch", "triton", "python", "packages", "git_commit",
               "timestamp", "host"]
MODEL_COLUMNS = ["family", "model", "size", "patch", "resolution", "tokens", "batch", "mode", "metric",
                 "unit", "median", "p20", "p80", "n_reps", "status", "error", "backend", "dtype",
                 "threads", *ENV_COLUMNS]
MODEL_KEY = ("family", "size", "patch", "resolution", "batch", "mode", "dtype", "gpu")
STATUSES = ("ok", "OOM", "error", "unavailable")
DONE_STATUSES = ("ok", "OOM")  # errors are re-run; unavailability is re-checked (it is free)


def spread(values: Sequence[float]) -> dict:
    """Median, 20th and 80th percentile and count of per-step values."""
    array = np.asarray(values, dtype=float)
    p20, median, p80 = np.percentile(array, [20, 50, 80])
    return {"median": median, "p20": p20, "p80": p80, "n_reps": len(array)}


def point_rows(spec, result: dict) -> list[dict]:
    """CSV rows of one point: throughput and memory metrics (values empty unless status is ok)."""
    env = environment(spec.device)
    common = {"family": spec.family, "model": get_family(spec.family).model_name(spec.size, spec.patch),
              "size": spec.size, "patch": spec.patch, "resolution": spec.resolution,
              "tokens": spec.tokens_per_image, "batch": spec.batch, "mode": spec.mode,
              "status": result["status"], "error": result["error"], "backend": result["backend"],
              "dtype": spec.dtype, "threads": result.get("threads", ""), **env, "timestamp": timestamp()}
    ok = result["status"] == "ok"
    steps = result["step_seconds"]
    empty = {"median": "", "p20": "", "p80": "", "n_reps": ""}

    def single(value):
        return {"median": value, "p20": value, "p80": value, "n_reps": len(steps)}

    rows = [dict(common, metric="throughput", unit="img/s",
                 **(spread([spec.batch / s for s in steps]) if ok else empty))]
    if spec.device == "cuda":
        rows.append(dict(common, metric="peak_mem_alloc", unit="GiB",
                         **(single(result["peak_mem_alloc_gib"]) if ok else empty)))
        nvml_ok = ok and result["peak_mem_nvml_gib"] is not None
        nvml = dict(common, metric="peak_mem_nvml", unit="GiB",
                    **(single(result["peak_mem_nvml_gib"]) if nvml_ok else empty))
        if ok and not nvml_ok:
            nvml.update(status="unavailable", error=f"NVML: {result['nvml_error']}")
        rows.append(nvml)
    else:
        rows.append(dict(common, metric="peak_mem_rss", unit="GiB",
                         **(single(result["peak_mem_rss_gib"]) if ok else empty)))
    rows.append(dict(common, metric="n_params", unit="count",
                     **(single(result["n_params"]) if ok else empty)))
    return rows


# ------------------------------------------------------------------------------ file handling

def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows as dicts of strings); ([], []) if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    """Write the whole file atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def row_key(row: dict, key: Sequence[str]) -> tuple:
    return tuple(str(row[column]) for column in key)


def record(path: Path, rows: list[dict], columns: Sequence[str] = MODEL_COLUMNS,
           key: Sequence[str] = MODEL_KEY) -> None:
    """Add one point's rows: appended (and flushed) if new, else replacing the rows of that key."""
    path = Path(path)
    header, existing = read_rows(path)
    new_keys = {row_key(row, key) for row in rows}
    if header and list(header) == list(columns) and not any(row_key(r, key) in new_keys for r in existing):
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore").writerows(rows)
            handle.flush()
        return
    kept = [row for row in existing if row_key(row, key) not in new_keys]
    all_columns = list(columns) + [c for c in header if c not in columns]
    write_rows(path, all_columns, kept + rows)


def keys_with_status(path: Path, statuses: Sequence[str] = DONE_STATUSES,
                     key: Sequence[str] = MODEL_KEY) -> set:
    """Keys of points in the file whose throughput row has one of `statuses`."""
    _, rows = read_rows(path)
    return {row_key(row, key) for row in rows if row.get("status") in statuses
            and row.get("metric") in ("throughput", "time")}


def merge_files(paths: Sequence[Path], out: Path, key: Sequence[str] = MODEL_KEY) -> int:
    """Merge CSVs into `out`; for a key present in several, the latest-timestamp point wins.

    Returns the number of rows written. Ties go to the file named last.
    """
    groups: dict[tuple, list[dict]] = {}
    columns: list[str] = []
    for path in paths:
        header, rows = read_rows(path)
        if not header:
            raise ValueError(f"CSV file {str(path)!r} does not exist or is empty.")
        columns += [c for c in header if c not in columns]
        by_key: dict[tuple, list[dict]] = {}
        for row in rows:
            by_key.setdefault(row_key(row, key), []).append(row)
        for point_key, point in by_key.items():
            if point_key not in groups or point[0]["timestamp"] >= groups[point_key][0]["timestamp"]:
                groups[point_key] = point
    merged = [row for point in groups.values() for row in point]
    write_rows(out, columns, merged)
    return len(merged)


NUMERIC_COLUMNS = ("median", "p20", "p80", "n_reps", "resolution", "batch", "patch", "tokens",
                   "T", "B", "H", "K", "V")


def load_frame(path: Path) -> pd.DataFrame:
    """The CSV as a DataFrame: text columns as str ("" when empty), value columns as numbers (NaN
    when empty). ValueError if the file is missing."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"results file {str(path)!r} does not exist; run a sweep first.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in NUMERIC_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame
