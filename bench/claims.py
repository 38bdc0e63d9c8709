"""The DiG paper's efficiency claims (arXiv 2405.18428, Fig. 2 and 3) checked against the result CSV.

The frame given must hold one machine's rows (bench.frames.one_machine): a claim compares two
models measured on the same machine.

Each claim compares DiG with one baseline at one size and resolution, in training mode, patch 2,
at the largest batch both ran at (rows at larger batches where one of them ran out of memory are
listed beside it); it reports our value beside the paper's and the CSV rows
(model, resolution, batch) it came from, or "not measured" when the rows are missing.
"""

from dataclasses import dataclass

import pandas as pd

from .frames import fast_scan_only


@dataclass(frozen=True)
class Claim:
    text: str
    baseline: str
    size: str
    resolution: int
    kind: str  # "speedup": DiG img/s over baseline img/s; "memory_saving": 1 - DiG mem / baseline mem
    paper: float


PAPER_CLAIMS = (
    Claim("DiG-S/2 is 2.5x faster than DiT-S/2 at 1792x1792", "DiT", "S", 1792, "speedup", 2.5),
    Claim("DiG-S/2 uses 75.7% less GPU memory than DiT-S/2 at 1792x1792", "DiT", "S", 1792,
          "memory_saving", 0.757),
    Claim("DiG-XL/2 is 4.2x faster than DiS-XL/2 at 1024", "DiS", "XL", 1024, "speedup", 4.2),
    Claim("DiG-S/2 is 2.0x faster than DiS-S/2 at 1024", "DiS", "S", 1024, "speedup", 2.0),
    Claim("DiG-XL/2 is 1.8x faster than Flash-DiT-XL/2 at 2048", "Flash-DiT", "XL", 2048, "speedup", 1.8),
)
# Not claimed by the paper: the same comparisons against the strongest attention we have.
EXTRA_CLAIMS = (
    Claim("DiG-S/2 vs Flash-DiT-S/2 at 1792, speed", "Flash-DiT", "S", 1792, "speedup", float("nan")),
    Claim("DiG-S/2 vs DiT-cuDNN-S/2 at 1792, speed", "DiT-cuDNN", "S", 1792, "speedup", float("nan")),
    Claim("DiG-S/2 vs Flash-DiT-S/2 at 1792, memory", "Flash-DiT", "S", 1792, "memory_saving", float("nan")),
    Claim("DiG-XL/2 vs DiT-cuDNN-XL/2 at 2048, speed", "DiT-cuDNN", "XL", 2048, "speedup", float("nan")),
)


def memory_metric(frame: pd.DataFrame) -> str:
    return "peak_mem_alloc" if (frame["metric"] == "peak_mem_alloc").any() else "peak_mem_rss"


def point(frame: pd.DataFrame, family: str, size: str, resolution: int, metric: str) -> pd.DataFrame:
    """Training rows of one model at one resolution (all batches), patch 2, one metric.

    DiS rows that ran the reference scan are dropped: they are not the DiS speed.
    """
    return fast_scan_only(frame[(frame["family"] == family) & (frame["size"] == size) & (frame["patch"] == 2)
                                & (frame["resolution"] == resolution) & (frame["mode"] == "train")
                                & (frame["metric"] == metric) & frame["status"].isin(["ok", "OOM"])])


def source(row) -> str:
    value = f"{row['median']:.3g} {row['unit']}" if row["status"] == "ok" else row["status"]
    label = f"{row['family']}-{row['size']}/{int(row['patch'])}"  # "Flash-DiT-S/2", not its model "DiT-S/2"
    return f"{label} {int(row['resolution'])}px b{int(row['batch'])} {row['exec_mode']}: {value}"


def ok_batches(rows: pd.DataFrame) -> set:
    return set(rows.loc[rows["status"] == "ok", "batch"])


def comparison_batch(ours: pd.DataFrame, theirs: pd.DataFrame):
    """(batch, larger batches where only one side or neither ran) for a comparison, or (None, []).

    The largest batch both ran: a number is worth more than "baseline OOM", and the paper gives no
    batch. Without one, the largest batch both were tried at (its OOM is then the result).
    """
    tried = sorted(set(ours["batch"]) & set(theirs["batch"]))
    both_ok = sorted(ok_batches(ours) & ok_batches(theirs))
    if not tried:
        return None, []
    batch = both_ok[-1] if both_ok else tried[-1]
    return batch, [b for b in tried if b > batch]


def compared(value: float, kind: str) -> tuple:
    """(text, DiG better?) for a speedup ratio or a memory saving fraction."""
    if kind == "speedup":
        return f"{value:.2f}x", value > 1
    if value >= 0:
        return f"{100 * value:.1f}% less", value > 0
    return f"{-100 * value:.1f}% more", False


def evaluate(frame: pd.DataFrame, claim: Claim) -> dict:
    """{'measured', 'verdict', 'rows'} for one claim; 'not measured' when rows are missing."""
    metric = "throughput" if claim.kind == "speedup" else memory_metric(frame)
    ours = point(frame, "DiG", claim.size, claim.resolution, metric)
    theirs = point(frame, claim.baseline, claim.size, claim.resolution, metric)
    batch, larger = comparison_batch(ours, theirs)
    if batch is None:
        reason = "not measured"
        if claim.baseline == "DiS" and (frame["family"] == "DiS").any() and theirs.empty:
            reason += " (no DiS rows with the fast scan; reference-scan rows are not the DiS speed)"
        return {"measured": reason, "verdict": "-", "rows": "-"}
    shown = [batch] + larger  # the larger batches' OOM rows stay visible beside the number
    rows = "; ".join(source(side[side["batch"] == b].iloc[0]) for b in shown for side in (ours, theirs))
    a = ours[ours["batch"] == batch].iloc[0]
    b = theirs[theirs["batch"] == batch].iloc[0]
    if a["status"] != "ok":
        both = "both OOM" if b["status"] != "ok" else f"DiG OOM, {claim.baseline} runs"
        return {"measured": both, "verdict": "does not hold" if b["status"] == "ok" else "-", "rows": rows}
    if b["status"] != "ok":
        return {"measured": f"{claim.baseline} OOM, DiG runs", "verdict": "holds (baseline OOM)",
                "rows": rows}
    value = a["median"] / b["median"] if claim.kind == "speedup" else 1 - a["median"] / b["median"]
    measured, better = compared(value, claim.kind)
    if larger:
        measured += f" at b{int(batch)}"
    if pd.isna(claim.paper):
        verdict = "DiG better" if better else "DiG worse"
    elif value >= claim.paper:
        verdict = "holds"
    else:
        verdict = "weaker (DiG better, less than the paper)" if better else "does not hold"
    return {"measured": measured, "verdict": verdict, "rows": rows}


def crossovers(frame: pd.DataFrame, size: str = "S", batch: int | None = None) -> dict:
    """Per baseline family: smallest resolution from which DiG is faster at every measured higher one.

    Uses training throughput at one batch (the most common one unless given). A baseline OOM at a
    resolution where DiG runs counts as DiG faster. Value None: DiG is not faster at the largest.
    """
    rows = fast_scan_only(frame[(frame["size"] == size) & (frame["patch"] == 2) & (frame["mode"] == "train")
                                & (frame["metric"] == "throughput") & frame["status"].isin(["ok", "OOM"])])
    if rows.empty or not (rows["family"] == "DiG").any():
        return {}
    if batch is None:
        batch = int(rows["batch"].value_counts().index[0])
    rows = rows[rows["batch"] == batch]
    dig = rows[rows["family"] == "DiG"].set_index("resolution")
    result = {}
    for family in sorted(set(rows["family"]) - {"DiG"}):
        other = rows[rows["family"] == family].set_index("resolution")
        common = sorted(set(dig.index) & set(other.index))
        wins = [dig.loc[r, "status"] == "ok" and (other.loc[r, "status"] == "OOM"
                                                  or dig.loc[r, "median"] > other.loc[r, "median"])
                for r in common]
        start = None
        for resolution, win in zip(reversed(common), reversed(wins)):
            if not win:
                break
            start = resolution
        if common:
            result[family] = {"from": start, "resolutions": common, "batch": batch}
    return result


def crossover_text(family: str, found: dict) -> str:
    largest = int(max(found["resolutions"]))
    if found["from"] is None:
        return f"vs {family}: not faster at {largest} px"
    return f"vs {family}: faster from {int(found['from'])} px (measured up to {largest})"


def efficiency_claim(frame: pd.DataFrame, claimed_from: int = 512) -> dict:
    """The paper's 'DiG is more efficient than the others starting from 512' (Fig. 2 baselines:
    DiT, DiS), judged on training speed at the resolutions both were measured at."""
    found = {f: c for f, c in crossovers(frame).items() if max(c["resolutions"]) >= claimed_from}
    paper_baselines = [f for f in ("DiT", "DiS") if f in found]
    if not paper_baselines:
        return {"measured": f"not measured (no DiT or DiS rows at >= {claimed_from} px beside DiG's)",
                "verdict": "-", "rows": "-"}
    holds = all(found[f]["from"] is not None and found[f]["from"] <= claimed_from for f in paper_baselines)
    verdict = "holds" if holds else "does not hold"
    missing = [f for f in ("DiT", "DiS") if f not in found]
    if missing:
        verdict += f" (not measured: {', '.join(missing)})"
    first = found[paper_baselines[0]]
    rows = f"S/2 train b{first['batch']}, resolutions {', '.join(str(int(r)) for r in first['resolutions'])}"
    return {"measured": "; ".join(crossover_text(f, found[f]) for f in sorted(found)), "verdict": verdict,
            "rows": rows}
