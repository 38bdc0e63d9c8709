"""Rows of the model results CSV, one per (point, metric), written as each point finishes; and
any result CSV read back as a DataFrame for the figures and the report.

Model rows are keyed by the point (`MODEL_KEY`: the PointSpec key fields and the machine, so that a
row measured elsewhere is never taken for a point done here); writing a point whose key is already
in the file replaces that point's rows and leaves every other row alone. The columns are
bench.schema's; the file handling (lock, atomic rewrites, cut last lines) is bench.csvstore's.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import csvstore
from .env import environment, timestamp
from .errors import CsvFileError
from .flops import H200_BF16_DENSE_PEAK_TFLOPS, flops_per_image, mfu
from .registry import get_family
from .schema import (
    DONE_STATUSES,
    KERNEL_DEFAULTS,
    KERNEL_REQUIRED,
    MACHINE_COLUMNS,
    MODEL_COLUMNS,
    MODEL_KEY,
    MODEL_REQUIRED,
    POINT_METRICS,
)
from .spec import KEY_DEFAULTS, KEY_FIELDS

NUMERIC_COLUMNS = ("median", "p20", "p80", "n_reps", "resolution", "batch", "patch", "tokens",
                   "T", "B", "H", "K", "V")


def spread(values: Sequence[float]) -> dict:
    """Median, 20th and 80th percentile and count of per-step values."""
    array = np.asarray(values, dtype=float)
    p20, median, p80 = np.percentile(array, [20, 50, 80])
    return {"median": median, "p20": p20, "p80": p80, "n_reps": len(array)}


def point_key(spec, machine: dict) -> tuple:
    """The CSV key of a point measured on `machine` (a dict with the MACHINE_COLUMNS)."""
    values = {**{name: getattr(spec, name) for name in KEY_FIELDS}, **machine}
    return tuple(str(values[column]) for column in MODEL_KEY)


def point_rows(spec, result: dict) -> list[dict]:
    """CSV rows of one point: throughput and memory metrics (values empty unless status is ok)."""
    env = environment(spec.device)
    model = get_family(spec.family).model_name(spec.size, spec.patch)
    common = {**{name: getattr(spec, name) for name in KEY_FIELDS}, "model": model,
              "tokens": spec.tokens_per_image, "status": result["status"], "error": result["error"],
              "backend": result["backend"], "threads": result.get("threads", ""),
              "compile_mode": spec.compile_mode if spec.exec_mode == "compile" else "",
              "check": result.get("check", ""), **env, "timestamp": timestamp()}
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
    for metric, name in (("compile_time", "compile_s"), ("capture_time", "capture_s")):
        if result.get(name) is not None:  # measured before the timed steps, not part of them
            rows.append(dict(common, metric=metric, unit="s", **single(result[name])))
    return rows + flop_rows(spec, model, rows[0], common, single)


def flop_rows(spec, model: str, throughput: dict, common: dict, single) -> list[dict]:
    """Model TFLOP per image (bench/flops.py's formula) and, on an H200, MFU against its dense bf16
    peak; none for a family the formulas do not cover (a plugin's model)."""
    try:
        flops = flops_per_image(model, spec.latent_size, spec.mode)
    except ValueError:
        return []
    flop_row = dict(common, status="ok", error="", metric="model_flop", unit="TFLOP/image",
                    **single(flops / 1e12))
    utilisation = dict(common, metric="mfu", unit="fraction", median="", p20="", p80="", n_reps="")
    if throughput["status"] == "ok" and "H200" in str(common["gpu"]):
        utilisation.update(single(mfu(throughput["median"], flops, H200_BF16_DENSE_PEAK_TFLOPS)))
    elif throughput["status"] == "ok":
        utilisation.update(status="unavailable", error=f"no dense bf16 peak on record for {common['gpu']}")
    return [flop_row, utilisation]


def record(path: Path, rows: list[dict]) -> None:
    """Add one point's rows to a models CSV (see csvstore.record)."""
    csvstore.record(path, rows, MODEL_COLUMNS, MODEL_KEY, KEY_DEFAULTS, MODEL_REQUIRED, "models")


def keys_with_status(path: Path, statuses: Sequence[str] = DONE_STATUSES) -> set:
    """Keys of the points in the file whose throughput row has one of `statuses` and whose every
    row is there (a point whose last row was cut off is measured again)."""
    _, rows = csvstore.read(path)
    metrics, found = {}, set()
    for row in rows:
        key = csvstore.row_key(row, MODEL_KEY, KEY_DEFAULTS)
        metrics.setdefault(key, set()).add(row.get("metric"))
        if row.get("metric") == "throughput" and row.get("status") in statuses:
            found.add(key)
    gpu = MODEL_KEY.index("gpu")
    return {key for key in found
            if metrics[key] >= set(POINT_METRICS["cpu" if key[gpu] == "cpu" else "cuda"])}


def load_frame(path: Path, required: Sequence[str] = MODEL_REQUIRED, kind: str = "models",
               defaults: dict = KEY_DEFAULTS) -> pd.DataFrame:
    """The CSV as a DataFrame: text columns as str ("" when empty), value columns as numbers (NaN
    when empty); a column the file lacks takes its `defaults` value (the models CSV's key defaults,
    or bench.schema.KERNEL_DEFAULTS). CsvFileError if the file is missing, empty, not this kind of
    CSV, or holds a value that is no number in a numeric column."""
    path = Path(path)
    if not path.exists():
        raise CsvFileError(f"results file {path} does not exist; run a sweep first.")
    header, rows = csvstore.read(path)
    csvstore.require_columns(path, header, required, kind)
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    for column, default in {**dict.fromkeys([*MACHINE_COLUMNS, "threads"], ""), **defaults}.items():
        if column not in frame:
            frame[column] = default
    for column in NUMERIC_COLUMNS:
        if column in frame:
            numbers = pd.to_numeric(frame[column].replace("", np.nan), errors="coerce")
            bad = numbers.isna() & (frame[column] != "")
            if bad.any():
                line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # 1-based, after the header
                raise CsvFileError(f"{path} line {line}: {column} is {frame[column][bad].iloc[0]!r}, "
                                   "not a number.")
            frame[column] = numbers
    return frame


def load_kernels(path: Path) -> pd.DataFrame:
    """A kernels CSV as a DataFrame (load_frame); rows of older files read as KERNEL_DEFAULTS says."""
    return load_frame(path, KERNEL_REQUIRED, "kernels", KERNEL_DEFAULTS)
