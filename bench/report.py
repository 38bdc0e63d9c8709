"""REPORT.md from the CSVs: machine, protocol, figures, claims, tables, failures, reference results.

A report covers one machine (the one with the most rows; the rows of others are counted and named,
never mixed in). A report written outside reports/ (the main job's, by default under results/)
ends with the committed reference results of reports/, each labelled with its machine, beside
the new numbers where both measured the same point.
"""

import os
from pathlib import Path

import pandas as pd

from . import REPO_ROOT
from .claims import EXTRA_CLAIMS, PAPER_CLAIMS, efficiency_claim, evaluate, memory_metric
from .env import timestamp
from .errors import CsvFileError
from .flops import H200_BF16_DENSE_PEAK_TFLOPS
from .frames import EXEC_VIEWS, exec_view, machine_label, one_machine, ordered, series_name
from .registry import FIG2_FAMILIES
from .results import load_frame, load_kernels
from .spec import KEY_FIELDS

PROTOCOL_PATH = Path(__file__).with_name("PROTOCOL.md")
REFERENCE_DIR = REPO_ROOT / "reports"
ENV_FIELDS = ("gpu", "cpu", "host", "threads", "driver", "cuda", "torch", "triton", "python", "packages")
COMMIT_NOTES = {"none": "not recorded: measured from a copy of the tree without .git",
                "dirty": "measured with uncommitted changes"}


def md_table(headers, rows) -> str:
    """A GitHub markdown table ('|' inside cells escaped)."""
    def cell(value):
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def commit_summary(frame: pd.DataFrame) -> str:
    """Each git_commit value with its row count; 'none' and '-dirty' say what they mean."""
    parts = []
    for commit, count in frame["git_commit"].astype(str).value_counts().items():
        note = COMMIT_NOTES["none"] if commit == "none" else COMMIT_NOTES["dirty"] if commit.endswith(
            "-dirty") else ""
        parts.append(f"{commit} ({count} rows{': ' + note if note else ''})")
    return "; ".join(parts)


def environment_section(frame: pd.DataFrame) -> str:
    def values(field):
        text = "; ".join(sorted(set(frame[field].astype(str))))
        return text or ("not recorded (rows from before the cpu column)" if field == "cpu" else "-")
    rows = [(field, values(field)) for field in ENV_FIELDS if field in frame]
    rows.append(("git_commit", commit_summary(frame)))
    stamps = sorted(frame["timestamp"].astype(str))
    rows.append(("measured", f"{stamps[0]} .. {stamps[-1]}" if stamps else "-"))
    return md_table(("what", "value"), rows)


def cell_text(row) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["unit"] == "img/s":
        return f"{row['median']:.3g} ({row['p20']:.3g}-{row['p80']:.3g})"
    return f"{row['median']:.2f}"


def pivot_section(frame: pd.DataFrame, metric: str, size: str, mode: str = "train") -> str | None:
    """Family x resolution table of one metric (median (p20-p80) for img/s) at one size, per batch."""
    rows = frame[(frame["metric"] == metric) & (frame["size"] == size) & (frame["mode"] == mode)]
    if rows.empty:
        return None
    parts = []
    for (patch, batch), group in rows.groupby(["patch", "batch"]):
        group = group.assign(series=group.apply(series_name, axis=1) + " (" + group["exec_mode"] + ")")
        resolutions = sorted(group["resolution"].unique())
        table = []
        for series in ordered(group["series"], FIG2_FAMILIES):
            line = group[group["series"] == series].set_index("resolution")
            table.append([series] + [cell_text(line.loc[r]) if r in line.index else "" for r in resolutions])
        unit = group["unit"].iloc[0]
        parts.append(f"**{size}/{int(patch)}, {mode}, batch {int(batch)}, {metric} ({unit})**\n\n"
                     + md_table(["family"] + [f"{int(r)} px" for r in resolutions], table))
    return "\n\n".join(parts)


def claims_sections(frame: pd.DataFrame) -> str:
    """The claims twice: under the paper's protocol (eager everywhere) and with each family at its best."""
    parts = []
    for view, title in EXEC_VIEWS.items():
        rows = exec_view(frame, view)
        parts.append(f"### {title}\n\n" + (claims_section(rows) if not rows.empty else "no rows."))
    return "\n\n".join(parts)


def claims_section(frame: pd.DataFrame) -> str:
    rows = []
    for claim in PAPER_CLAIMS:
        result = evaluate(frame, claim)
        paper = f"{claim.paper:.1f}x" if claim.kind == "speedup" else f"{100 * claim.paper:.1f}% less"
        rows.append((claim.text, paper, result["measured"], result["verdict"], result["rows"]))
    result = efficiency_claim(frame)
    rows.append(("DiG is more efficient than the others from 512 (S/2 speed)", "from 512",
                 result["measured"], result["verdict"], result["rows"]))
    text = md_table(("paper claim", "paper", "measured here", "verdict", "CSV rows (model res batch: value)"),
                    rows)
    extra = [(c.text, evaluate(frame, c)["measured"], evaluate(frame, c)["rows"]) for c in EXTRA_CLAIMS]
    text += ("\n\nBeyond the paper (the strongest attention baselines we have):\n\n"
             + md_table(("comparison", "measured here", "CSV rows"), extra))
    return text + (f"\n\nSpeeds are training img/s; memory is {memory_metric(frame)} (GiB). Both models are "
                   "compared at the largest batch both ran at; rows at larger batches where one ran out of "
                   "memory are listed beside it. DiS rows made with the reference scan are never used.")


def efficiency_section(frame: pd.DataFrame) -> str:
    """Per ok training point: model TFLOP per image (bench/flops.py), img/s, MFU, compile and capture s."""
    wanted = ["throughput", "model_flop", "mfu", "compile_time", "capture_time"]
    rows = frame[frame["metric"].isin(wanted) & (frame["mode"] == "train")]
    if rows.empty or not (rows["metric"] == "model_flop").any():
        return "no rows."
    table = rows.pivot_table(index=["model", "family", "resolution", "batch", "exec_mode"], columns="metric",
                             values="median", aggfunc="first")
    lines = []
    for (model, family, resolution, batch, exec_mode), values in table.iterrows():
        if pd.isna(values.get("throughput")):
            continue
        cells = [values.get(name) for name in wanted]
        lines.append([f"{family} ({model})", int(resolution), int(batch), exec_mode,
                      *("" if pd.isna(v) else f"{v:.3g}" for v in cells)])
    return (md_table(("family", "px", "batch", "exec", "img/s", "model TFLOP/image", "MFU", "compile s",
                      "capture s"), lines)
            + f"\n\nMFU = img/s x model FLOPs per image / {H200_BF16_DENSE_PEAK_TFLOPS:g} TFLOP/s, the "
              "H200's dense bf16 tensor-core peak (datasheet; an 8192^3 bf16 matmul measured 680-790 TFLOP/s "
              "here). "
              "Model FLOPs: bench/flops.py, matmul-like work only, backward = 2x forward, attention backward "
              "without recomputation. Compile and capture times are the first compiled step and the graph "
              "capture, outside the timed steps.")


def profile_section(profile_csv: Path) -> str:
    """Per profiled point: GPU ms per step and launches in the coarse split (bench.py profile)."""
    from . import csvstore

    _, rows = csvstore.read(profile_csv)
    coarse = [row for row in rows if row["what"] == "coarse" and row["status"] == "ok"]
    points = {}
    for row in coarse:
        label = (f"{row['family']}-{row['size']}/{row['patch']} {row['resolution']}px b{row['batch']} "
                 f"{row['exec_mode']}")
        points.setdefault(label, {"total": float(row["total_gpu_ms_per_step"])})[row["name"]] = (
            float(row["gpu_ms_per_step"]), int(row["launches_per_step"]))
    names = ("GEMM", "GLA", "attention", "everything else")
    lines = []
    for label, parts in points.items():
        cells = [f"{parts[n][0]:.1f} ({100 * parts[n][0] / parts['total']:.0f}%)" if n in parts else ""
                 for n in names]
        lines.append([label, f"{parts['total']:.1f}", *cells, sum(parts[n][1] for n in names if n in parts)])
    return (md_table(("point", "GPU ms/step", *[f"{n} ms" for n in names], "launches/step"), lines)
            + f"\n\nFrom `{profile_csv.name}` (torch.profiler, CUDA kernels only, per step over the profiled "
              "steps; the categories and the longest kernels are in the CSV; bench/profile.py).")


def failures_section(frame: pd.DataFrame) -> str:
    rows = frame[(frame["metric"].isin(["throughput", "time"])) & ~frame["status"].isin(["ok", "OOM"])]
    if rows.empty:
        return "every point ran (ok or OOM)."
    name, where = ("model", "resolution") if "model" in rows else ("provider", "T")

    def label(row):  # a glue op's row names its op and shape
        if row.get("op", "gla") == "gla":
            return row[name]
        return f"{row[name]} {row['op']} {row['shape'].split(':')[0]}"
    table = sorted({(label(r), str(int(r[where])), r["mode"], r["status"], r["error"])
                    for _, r in rows.iterrows()})
    return "\n\n" + md_table((name, where, "mode", "status", "reason"), table)


# ------------------------------------------------------------------------ reference results

def throughput_by_point(rows: pd.DataFrame) -> pd.Series:
    """Median img/s of the ok training and inference points, indexed by the point's key fields."""
    ok = rows[(rows["metric"] == "throughput") & (rows["status"] == "ok")]
    return ok.drop_duplicates(subset=list(KEY_FIELDS), keep="last").set_index(list(KEY_FIELDS))["median"]


def point_label(key: tuple) -> str:
    """'DiT-S/2 64px b1 train fp32' from the key fields' values."""
    point = dict(zip(KEY_FIELDS, key))
    named = ("family", "size", "patch", "resolution", "batch")
    rest = " ".join(str(point[name]) for name in KEY_FIELDS if name not in named)
    return (f"{point['family']}-{point['size']}/{int(point['patch'])} {int(point['resolution'])}px "
            f"b{int(point['batch'])} {rest}")


def reference_entry(csv_path: Path, out_dir: Path, rows: pd.DataFrame, figures: dict) -> str:
    """One committed reference CSV: its machine and dates, and the points it shares with this run."""
    where = os.path.relpath(csv_path.parent, out_dir)
    try:
        reference, left_out = one_machine(load_frame(csv_path))
    except CsvFileError as error:
        return f"- `{where}`: unreadable ({error})"
    stamps = sorted(reference["timestamp"].astype(str))
    head = (f"**{machine_label(reference.iloc[0])}** (`{where}/`, measured {stamps[0][:10]} .. "
            f"{stamps[-1][:10]}, git commits {commit_summary(reference)}"
            + (f"; {left_out}" if left_out else "") + f"): [REPORT.md]({where}/REPORT.md)")
    ours, theirs = throughput_by_point(rows), throughput_by_point(reference)
    common = ours.index.intersection(theirs.index)
    if common.empty:
        return head + "\n\nNo point in common with this run (another grid, batch or dtype)."
    table = [(point_label(key), f"{ours[key]:.3g}", f"{theirs[key]:.3g}", f"{ours[key] / theirs[key]:.2f}")
             for key in common]
    parts = [head, md_table(("point", "img/s here", "img/s reference", "here / reference"), table)]
    shared = [(caption, path) for caption, path in figures.items() if (csv_path.parent / path.name).exists()]
    if shared:
        cells = [f"![{caption}]({os.path.relpath(path, out_dir)}) | ![{caption}, reference]"
                 f"({where}/{path.name})" for caption, path in shared]
        parts.append("| this run | reference |\n|---|---|\n" + "\n".join(f"| {cell} |" for cell in cells))
    return "\n\n".join(parts)


def reference_section(out_dir: Path, rows: pd.DataFrame, figures: dict) -> str | None:
    """The committed results under reports/, or None when this report is one of them."""
    out_dir = Path(out_dir).resolve()
    if out_dir == REFERENCE_DIR or REFERENCE_DIR in out_dir.parents:
        return None
    entries = [reference_entry(path, out_dir, rows, figures)
               for path in sorted(REFERENCE_DIR.glob("**/models.csv"))]
    if not entries:
        return None
    return ("## Reference results (committed under reports/, not measured in this run)\n\n"
            "Each was measured on the machine named; a number here is comparable with one there only "
            "for the same point.\n\n" + "\n\n".join(entries))


# ------------------------------------------------------------------------------------ report

def write_report(out_dir: Path, models_csv: Path, kernels_csv: Path | None, figures: dict) -> Path:
    """Write out_dir/REPORT.md; figures maps a caption to an image path (linked relatively)."""
    frame, left_out = one_machine(load_frame(models_csv))
    machine = machine_label(frame.iloc[0])
    cpu = frame.iloc[0]["gpu"] == "cpu"
    title = f"# DiG efficiency benchmark on {machine}" + (" (CPU run: CPU numbers, not GPU numbers)"
                                                           if cpu else "")
    sections = [title, f"Generated {timestamp()} by `python bench.py report` from `{models_csv.name}`"
                + (f" and `{kernels_csv.name}`" if kernels_csv else "") + "."
                + (f" One machine and dtype per report; {left_out}." if left_out else ""),
                "## Environment\n\n" + environment_section(frame),
                PROTOCOL_PATH.read_text().strip()]
    if figures:
        links = [f"![{caption}]({os.path.relpath(path, out_dir)})" for caption, path in figures.items()]
        sections.append("## Figures\n\n" + "\n\n".join(links))
    sections.append("## The paper's claims against our measurements\n\n" + claims_sections(frame))
    sections.append("## Model FLOPs, MFU and setup times\n\n" + efficiency_section(frame))
    metrics = ("throughput", memory_metric(frame), "peak_mem_nvml")
    tables = [pivot_section(frame, metric, size, mode) for mode in ("train", "infer")
              for size in ("S", "B", "L", "XL") for metric in metrics]
    tables = [t for t in tables if t]
    if tables:
        sections.append("## Results\n\n" + "\n\n".join(tables))
    if (out_dir / "profile.csv").exists():
        sections.append("## Where the GPU time goes\n\n" + profile_section(out_dir / "profile.csv"))
    failures = ["Models: " + failures_section(frame)]
    from .kernel_report import kernel_section, tuning_section  # they use this module's tables

    if kernels_csv is not None:
        kernels = load_kernels(kernels_csv)
        sections.append("## Kernel benchmark\n\n" + kernel_section(kernels))
        failures.append("Kernels: " + failures_section(one_machine(kernels)[0]))
    else:
        sections.append("## Kernel benchmark\n\nNot run here: `python bench.py kernels` writes kernels.csv.")
    tuning_csv = Path(out_dir) / "tuning.csv"
    if tuning_csv.exists():
        sections.append("## Chunk-size tuning\n\n" + tuning_section(tuning_csv))
    sections.append("## Points that did not run\n\n" + "\n\n".join(failures))
    reference = reference_section(out_dir, frame, figures)
    if reference:
        sections.append(reference)
    path = Path(out_dir) / "REPORT.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path
