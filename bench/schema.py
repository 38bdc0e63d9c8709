"""Columns and keys of the result CSVs (models.csv, kernels.csv); no torch, numpy or pandas, so the
command line checks a CSV's header before it imports anything heavy."""

from collections.abc import Sequence

from .errors import CsvFileError
from .spec import KEY_DEFAULTS, KEY_FIELDS

# The machine a row was measured on: GPU name ("cpu" without one), CPU model and core count, host
# name. CSVs written before the cpu column existed read it as "": never the same machine.
MACHINE_COLUMNS = ("gpu", "cpu", "host")
ENV_COLUMNS = ["gpu", "cpu", "driver", "cuda", "torch", "triton", "python", "packages", "git_commit",
               "timestamp", "host"]
# Every PointSpec key field is a column (tests/test_bench_harness.py checks it).
MODEL_COLUMNS = ["family", "model", "size", "patch", "resolution", "tokens", "batch", "mode", "exec_mode",
                 "compile_mode", "metric", "unit", "median", "p20", "p80", "n_reps", "status", "error",
                 "backend", "check", "dtype", "threads", *ENV_COLUMNS]
MODEL_KEY = (*KEY_FIELDS, *MACHINE_COLUMNS)
# op: "gla" for the GLA comparison (its SDPA attention baselines, HBM floor and the device copy
# included) or the name of a fused glue op (bench/glue_providers.py); shape: the glue rows' model
# and dims ("" for GLA rows, whose B, T, H, K, V are the shape).
KERNEL_COLUMNS = ["op", "provider", "impl", "mode", "T", "B", "H", "K", "V", "shape", "dtype", "metric",
                  "unit", "median", "p20", "p80", "status", "error", "reference", *ENV_COLUMNS]
KERNEL_KEY = ("op", "provider", "mode", "T", "B", "H", "K", "V", "shape", "dtype", *MACHINE_COLUMNS)
# Kernel CSVs written before the head-dim axis and the glue rows read as GLA rows of DiG-S/2's one
# head shape (the only one measured then).
KERNEL_DEFAULTS = {"op": "gla", "shape": "", "H": "6", "K": "32", "V": "64"}
# Metric of a kernel row's per-kernel split: "gpu_ms:<kernel name>", GPU ms per call (CUDA only)
KERNEL_SPLIT_PREFIX = "gpu_ms:"
STATUSES = ("ok", "OOM", "error", "unavailable")
# The rows of one point (bench.results.point_rows); a point missing one (a cut write) is not done.
POINT_METRICS = {"cuda": ("throughput", "peak_mem_alloc", "peak_mem_nvml", "n_params"),
                 "cpu": ("throughput", "peak_mem_rss", "n_params")}
DONE_STATUSES = ("ok", "OOM")  # errors are re-run; unavailability is re-checked (it is free)
# What report and plot need of a CSV. Older files may lack the cpu column (read as "", an unknown
# machine) and a key field added later (read as its KEY_DEFAULTS value).
MEASURED = ["metric", "unit", "median", "p20", "p80", "status", "error", "gpu", "host", "timestamp"]
MODEL_REQUIRED = [*(f for f in KEY_FIELDS if f not in KEY_DEFAULTS), "backend", *MEASURED]
KERNEL_REQUIRED = ["provider", "mode", "T", "B", "dtype", *MEASURED]


def csv_kind(header: Sequence[str]) -> str:
    """'kernels' or 'models' by the header's key columns; CsvFileError for anything else."""
    for kind, required in (("kernels", KERNEL_REQUIRED), ("models", MODEL_REQUIRED)):
        if all(column in header for column in required):
            return kind
    raise CsvFileError("not a models or kernels CSV of bench.py")
