"""Figures from the result CSVs only (never from live measurements): Fig. 2, Fig. 3, kernels.

Every figure carries the machine, batch, dtype and a one-line protocol note (bench/PROTOCOL.md),
and draws the rows of one machine and dtype only; its footnote names the rows it left out.
"""

from pathlib import Path

import matplotlib.transforms as mtransforms
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from .frames import EXEC_VIEWS, exec_view, fast_scan_only, machine_label, one_machine, ordered, series_name
from .registry import FIG2_FAMILIES, FIG3_FAMILIES, REFERENCE_SCAN_LABEL, SIZES

PROTOCOL_NOTE = ("img/s = {mode}, median over timed steps, bars p20-p80; memory = {memory}; "
                 "each point in a fresh process; x = out of memory. Protocol: bench/PROTOCOL.md")
MEMORY_NOTE = {"peak_mem_alloc": "torch.cuda.max_memory_allocated, GiB = 2^30 B",
               "peak_mem_rss": "peak RSS of the point's process (CPU run), GiB = 2^30 B"}
MODE_NOTE = {"train": "full training step (fwd, MSE, bwd, AdamW)", "infer": "forward under no_grad"}


def figure_batch(frame: pd.DataFrame, batch: int | None, tokens: int | None) -> tuple:
    """(rows of one fixed batch or of one token budget, title fragment).

    Without rows at the wanted batch, the batch with the most rows (the title says which).
    """
    if tokens is not None:
        wanted = (tokens // frame["tokens"]).clip(lower=1)
        return frame[frame["batch"] == wanted], f"token budget {tokens}/step"
    if frame.empty:
        return frame, "no rows"
    if batch is None or not (frame["batch"] == batch).any():
        batch = int(frame["batch"].value_counts().index[0])
    return frame[frame["batch"] == batch], f"batch {batch}"


def precision(dtype: str) -> str:
    return "fp32 (no autocast)" if dtype == "fp32" else f"{dtype} autocast"


def machine_title(row) -> str:
    """The machine, and for a CPU run the threads each point used."""
    threads = str(row.get("threads", "")).strip()
    if row["gpu"] != "cpu" or not threads:
        return machine_label(row)
    return f"{machine_label(row)}, {threads} thread{'' if threads == '1' else 's'} per point"


def footnote(fig, text: str, left_out: str = "") -> None:
    text += f"\n{left_out} (other machines or dtypes)" if left_out else ""
    fig.text(0.01, 0.005, text, fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)


def _plot_metric(ax, rows: pd.DataFrame, series: list, colors: dict, errorbars: bool) -> None:
    top = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for name in series:
        points = rows[rows["series"] == name].sort_values("resolution")
        ok = points[points["status"] == "ok"]
        style = "--" if name.endswith(REFERENCE_SCAN_LABEL) else "-"
        if not ok.empty:
            yerr = [ok["median"] - ok["p20"], ok["p80"] - ok["median"]] if errorbars else None
            ax.errorbar(ok["resolution"], ok["median"], yerr=yerr, marker="o", ls=style, capsize=2,
                        color=colors[name], label=name)
        oom = points[points["status"] == "OOM"]
        if oom.empty:
            continue
        ax.scatter(oom["resolution"], [0.97] * len(oom), marker="x", s=60, color=colors[name],
                   transform=top, clip_on=False, label=None if not ok.empty else f"{name} (OOM)")


def fig2(frame: pd.DataFrame, out_path: Path, batch: int | None = None,
         tokens: int | None = None, mode: str = "train", view: str = "eager") -> Path | None:
    """S/2 throughput and peak memory vs resolution; None if no S/2 point of `mode` ran (ok or OOM).
    view: "eager" (the paper's protocol) or "best" (each point's fastest execution mode, lettered)."""
    rows, left_out = one_machine(exec_view(frame[(frame["size"] == "S") & (frame["patch"] == 2)
                                                 & (frame["mode"] == mode)], view))
    rows, batch_text = figure_batch(rows, batch, tokens)
    if not rows["status"].isin(["ok", "OOM"]).any():
        return None
    rows = rows.assign(series=rows.apply(series_name, axis=1))
    memory_metric = "peak_mem_alloc" if (rows["metric"] == "peak_mem_alloc").any() else "peak_mem_rss"
    series = ordered(rows["series"], FIG2_FAMILIES)
    colors = {name: f"C{i}" for i, name in enumerate(series)}
    fig = Figure(figsize=(12, 5))
    ax_speed, ax_mem = fig.subplots(1, 2)
    _plot_metric(ax_speed, rows[rows["metric"] == "throughput"], series, colors, errorbars=True)
    _plot_metric(ax_mem, rows[rows["metric"] == memory_metric], series, colors, errorbars=False)
    if view == "best":
        label_exec_modes(ax_speed, rows[(rows["metric"] == "throughput") & (rows["status"] == "ok")])
    ax_speed.set_ylabel("training throughput (img/s)" if mode == "train" else "inference throughput (img/s)")
    ax_mem.set_ylabel(f"{memory_metric} (GiB)")
    for ax in (ax_speed, ax_mem):
        ax.set_xlabel("resolution (px)")
        ax.set_xticks(sorted(rows["resolution"].unique()))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    ax_speed.legend(fontsize=8)
    first = rows.iloc[0]
    fig.suptitle(f"Fig. 2: S/2 {mode} speed and memory vs resolution - {machine_title(first)}, {batch_text}, "
                 f"{precision(first['dtype'])}\nexecution: {EXEC_VIEWS[view]}")
    missing = rows[(rows["metric"] == "throughput") & rows["status"].isin(["unavailable", "error"])]
    skipped = "; ".join(sorted({f"{r.family}: {r.status}" for r in missing.itertuples()}))
    footnote(fig, PROTOCOL_NOTE.format(mode=MODE_NOTE[mode], memory=MEMORY_NOTE[memory_metric])
             + (f"\nnot drawn: {skipped}" if skipped else ""), left_out)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out_path, dpi=130)
    return out_path


def label_exec_modes(ax, rows: pd.DataFrame) -> None:
    """Letter each point with its execution mode (e = eager, c = compile, g = graph)."""
    for row in rows.itertuples():
        ax.annotate(row.exec_mode[0], (row.resolution, row.median), textcoords="offset points", xytext=(3, 3),
                    fontsize=7, color="0.3")


def relative_to_dig(rows: pd.DataFrame) -> pd.DataFrame:
    """Throughput rows with column `relative` = img/s over DiG's img/s at the same size."""
    dig = rows[(rows["family"] == "DiG") & (rows["status"] == "ok")].set_index("size")["median"]
    return rows.assign(relative=rows["median"] / rows["size"].map(dig))


def _bar_panel(ax, panel: pd.DataFrame, colors: dict) -> None:
    """Bars of img/s relative to DiG per size; a status word where a family has no bar."""
    sizes = [s for s in SIZES if (panel["size"] == s).any()]
    families = ordered(panel["family"], FIG3_FAMILIES)
    width = 0.8 / len(families)
    for i, family in enumerate(families):
        labelled = False
        for j, size in enumerate(sizes):
            point = panel[(panel["family"] == family) & (panel["size"] == size)]
            if point.empty:
                continue
            point, x = point.iloc[0], j + (i - (len(families) - 1) / 2) * width
            if point["status"] == "ok" and pd.notna(point["relative"]):
                ax.bar(x, point["relative"], width, color=colors[family], label=None if labelled else family)
                ax.text(x, point["relative"], f"{point['relative']:.2f} {point['exec_mode'][0]}", ha="center",
                        va="bottom", fontsize=6)
                labelled = True
            else:
                text = "no DiG" if point["status"] == "ok" else point["status"]
                ax.text(x, 0.02, f"{family} {text}", rotation=90, ha="center", va="bottom", fontsize=6,
                        color=colors[family])
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xticks(range(len(sizes)), [f"{s}/2" for s in sizes])
    ax.set_ylabel("training img/s relative to DiG (DiG = 1)")
    ax.legend(fontsize=7)


def fig3(frame: pd.DataFrame, out_path: Path, resolutions=(1024, 2048),
         batch_by_resolution: dict | None = None, view: str = "eager") -> Path | None:
    """Grouped bars: throughput of each family relative to DiG, per size, one panel per resolution.
    view: "eager" or "best" (each point's fastest execution mode; the bar names it)."""
    rows, left_out = one_machine(exec_view(frame[(frame["patch"] == 2) & (frame["mode"] == "train")
                                                 & (frame["metric"] == "throughput")
                                                 & frame["resolution"].isin(resolutions)], view))
    rows = fast_scan_only(rows)
    if not rows["status"].isin(["ok", "OOM"]).any():
        return None
    colors = {family: f"C{i}" for i, family in enumerate(ordered(rows["family"], FIG3_FAMILIES))}
    panels = [r for r in resolutions if (rows["resolution"] == r).any()]
    fig = Figure(figsize=(6.5 * len(panels), 4.8))
    for ax, resolution in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        wanted = (batch_by_resolution or {}).get(resolution)
        panel, batch_text = figure_batch(rows[rows["resolution"] == resolution], wanted, None)
        _bar_panel(ax, relative_to_dig(panel), colors)
        ax.set_title(f"{resolution}x{resolution} ({(resolution // 16) ** 2} tokens), {batch_text}")
    first = rows.iloc[0]
    fig.suptitle(f"Fig. 3: speed relative to DiG by model size - {machine_title(first)}, "
                 f"{precision(first['dtype'])}\nexecution: {EXEC_VIEWS[view]}")
    footnote(fig, f"img/s = {MODE_NOTE['train']}, median over timed steps; each point in a fresh process; "
                  "OOM = out of memory at this batch. DiS rows run with the reference scan are excluded. "
                  "Protocol: bench/PROTOCOL.md", left_out)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_path, dpi=130)
    return out_path


def kernel_figure(frame: pd.DataFrame, out_path: Path) -> Path | None:
    """GLA kernel time (ms) vs sequence length T, log-log: a row of panels per head-dim class (K, V, H),
    forward and forward+backward side by side. The glue rows have no T axis: REPORT.md tables them."""
    gla = frame[(frame["op"] == "gla") & (frame["metric"] == "time") & (frame["status"] == "ok")]
    rows, left_out = one_machine(gla)
    if rows.empty:
        return None
    modes = [m for m in ("fwd", "fwd+bwd") if (rows["mode"] == m).any()]
    classes = list(rows.groupby(["K", "V", "H"]))
    fig = Figure(figsize=(6.5 * len(modes), 4.2 * len(classes) + 0.6))
    axes = fig.subplots(len(classes), len(modes), squeeze=False)
    for ax_row, ((K, V, H), group) in zip(axes, classes):
        for ax, mode in zip(ax_row, modes):
            for provider, points in group[group["mode"] == mode].groupby("provider", sort=False):
                points = points.sort_values("T")
                floor = provider == "hbm-floor"
                ax.plot(points["T"], points["median"], ls=":" if floor else "-",
                        marker=None if floor else "o", color="0.4" if floor else None, label=provider)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            lengths = sorted(group["T"].unique())
            ax.set_xticks(lengths, [str(int(t)) for t in lengths], rotation=45)
            ax.set_xlabel("sequence length T (tokens); B*T fixed")
            ax.set_ylabel(f"{mode} time (ms)")
            ax.set_title(f"K={int(K)}, V={int(V)}, H={int(H)}", fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    first = rows.iloc[0]
    fig.suptitle(f"GLA and attention kernels - {machine_label(first)}, {first['dtype']}, "
                 f"B*T={int(first['B'] * first['T'])}")
    timer = ("perf_counter median of 5 calls (CPU smoke run)" if first["gpu"] == "cpu"
             else "triton.testing.do_bench median")
    footnote(fig, f"{timer}; hbm-floor = bytes GLA must move / measured device copy bandwidth; "
                  "attention head dim 64, non-causal, beside K=32, V=64. See bench/kernel_bench.py", left_out)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out_path, dpi=130)
    return out_path
