"""The kernel benchmark's and the tuner's sections of REPORT.md: GLA times per head-dim class, the
glue ops beside their PyTorch twins, each time with its peak memory, ratios and errors; the tuning
table per head-dim class."""

from pathlib import Path

import pandas as pd

from .frames import machine_label, one_machine
from .report import commit_summary, md_table
from .schema import KERNEL_SPLIT_PREFIX

# metric -> column header of the tables beside the times
GLA_CHECKS = {"peak_mem": "peak MiB", "bandwidth": "GB/s", "floor_ratio": "x HBM floor", "fla_ratio": "x fla",
              "rel_err_o": "rel err o", "rel_err_grads": "rel err grads"}


def cell(line: pd.DataFrame, metric: str) -> str:
    """One metric of rows indexed by metric: its value (3 digits; "(unsteady)" after a timing whose
    spread stayed wide, kernel_bench.time_ms), its status, or '' if absent."""
    if metric not in line.index:
        return ""
    row = line.loc[metric]
    if row["status"] != "ok":
        return row["status"]
    unsteady = isinstance(row["error"], str) and row["error"].startswith("unsteady")
    return f"{row['median']:.3g}" + (" (unsteady)" if unsteady else "")


def time_table(group: pd.DataFrame) -> str:
    """provider x T table of the time rows of one class and mode."""
    lengths = sorted(group["T"].unique())
    table = []
    for provider, line in group.groupby("provider", sort=False):
        line = line.assign(metric=line["T"]).set_index("metric")
        table.append([provider] + [cell(line, t) for t in lengths])
    return md_table(["provider"] + [f"T={int(t)}" for t in lengths], table)


SPLIT_T = 4096  # the T of the per-kernel table (else the longest measured)


def kernel_split_table(rows: pd.DataFrame) -> str:
    """Where each provider's time goes at one T: per mode, its launches per call and its kernels'
    GPU ms per call, longest first; "" when no row has the split (CPU runs, older CSVs)."""
    ok = rows[rows["status"] == "ok"]
    split = ok[ok["metric"].str.startswith(KERNEL_SPLIT_PREFIX)]
    if split.empty:
        return ""
    lengths = sorted(split["T"].unique())
    T = SPLIT_T if SPLIT_T in lengths else lengths[-1]
    at_T = ok[ok["T"] == T]
    launches = at_T[at_T["metric"] == "launches"].groupby(["provider", "mode"])["median"].last()
    table = []
    for (provider, mode), line in split[split["T"] == T].groupby(["provider", "mode"], sort=False):
        line = line.sort_values("median", ascending=False)
        kernels = ", ".join(f"{metric.removeprefix(KERNEL_SPLIT_PREFIX)} {ms:.3g}"
                            for metric, ms in zip(line["metric"], line["median"]))
        count = launches.get((provider, mode))
        table.append([provider, mode, "" if count is None else f"{count:.0f}", kernels])
    return (f"where the time goes at T={int(T)}: GPU ms per call of each kernel (torch.profiler)\n\n"
            + md_table(("provider", "mode", "launches per call", "kernels, GPU ms"), table))


def gla_class_section(rows: pd.DataFrame, K, V, H) -> str:
    """Time tables per mode, then each timing's memory, GB/s, ratios and errors, then where the time
    goes (kernel_split_table), of one head-dim class."""
    parts = [f"**GLA K={int(K)}, V={int(V)}, H={int(H)}** (attention rows: head dim 64, H={int(H)})"]
    times = rows[rows["metric"] == "time"]
    for mode, group in times.groupby("mode", sort=False):
        parts.append(f"{mode}, time (ms), B*T fixed\n\n" + time_table(group))
    checks = rows[rows["metric"].isin(GLA_CHECKS)]
    if not checks.empty:
        table = []
        for (provider, mode, T), line in checks.groupby(["provider", "mode", "T"], sort=False):
            line = line.set_index("metric")
            reference = next((r for r in line["reference"] if r), "")
            table.append([provider, mode, int(T), *(cell(line, m) for m in GLA_CHECKS), reference])
        parts.append("beside each timing: peak memory above the inputs, bandwidth, ratios, errors "
                     "(||x - ref|| / ||ref||)\n\n"
                     + md_table(("provider", "mode", "T", *GLA_CHECKS.values(), "reference"), table))
    split = kernel_split_table(rows)
    if split:
        parts.append(split)
    return "\n\n".join(parts)


def glue_section(rows: pd.DataFrame) -> str:
    """One line per op, shape and provider: fwd and fwd+bwd ms, peak MiB, x HBM floor, errors."""
    table = []
    for (op, shape, provider), line in rows.groupby(["op", "shape", "provider"], sort=False):
        by_mode = {mode: part.set_index("metric") for mode, part in line.groupby("mode")}
        cells = [cell(by_mode[mode], metric) if mode in by_mode else ""
                 for metric in ("time", "peak_mem", "floor_ratio") for mode in ("fwd", "fwd+bwd")]
        errors = by_mode.get("fwd+bwd", by_mode.get("fwd"))
        table.append([op, shape, provider, *cells, cell(errors, "rel_err_o"), cell(errors, "rel_err_grads")])
    header = ("op", "shape", "provider", "fwd ms", "fwd+bwd ms", "fwd peak MiB", "fwd+bwd peak MiB",
              "fwd x HBM floor", "fwd+bwd x HBM floor", "rel err o", "rel err grads")
    return ("**Fused glue ops** (ours-triton) against their eager PyTorch twins (torch-ref); errors of "
            "fwd+bwd against the twin in float64; hbm-floor = bytes the op must move / copy bandwidth\n\n"
            + md_table(header, table))


def kernel_section(kernels: pd.DataFrame) -> str:
    """The machine and copy bandwidth, then per GLA head-dim class its tables, then the glue ops."""
    rows, left_out = one_machine(kernels)
    parts = [f"Measured on {machine_label(rows.iloc[0])}, git commits {commit_summary(rows)}"
             + (f"; {left_out}." if left_out else ".")]
    copy = rows[(rows["provider"] == "device-copy") & (rows["status"] == "ok")].sort_values("timestamp")
    if not copy.empty:
        parts.append(f"Measured device-to-device copy bandwidth (bytes read + written): "
                     f"{copy['median'].iloc[-1]:.4g} GB/s; the HBM floor is the bytes an op must move over "
                     "it. Peak memory: MiB the CUDA allocator held at the call's peak above what it held "
                     "before.")
    gla = rows[(rows["op"] == "gla") & (rows["provider"] != "device-copy")]
    for (K, V, H), group in gla.groupby(["K", "V", "H"]):
        parts.append(gla_class_section(group, K, V, H))
    glue = rows[rows["op"] != "gla"]
    if not glue.empty:
        parts.append(glue_section(glue))
    return "\n\n".join(parts)


def tuning_section(tuning_csv: Path) -> str:
    """The tuning of `python bench.py tune`: best fwd+bwd ms per chunk size, per head-dim class and T."""
    from kernels.gla.tuning import tuning_summary

    table = pd.read_csv(tuning_csv)
    gpus = "; ".join(sorted(set(table["gpu"])))
    return (f"`python bench.py tune` on {gpus}: forward + backward of `chunk_gla`, bf16, median ms of "
            "`triton.testing.do_bench`, best launch config per chunk size, per head-dim class (K, V) and "
            f"T bucket; every candidate is in `{tuning_csv.name}`.\n\n```\n{tuning_summary(table)}\n```")
