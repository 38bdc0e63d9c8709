"""Selections of result rows shared by the figures, the claims and the report.

One machine at a time: a CSV can hold rows of several machines (a merge, a copied file), and a
figure or a claim that mixed them would compare one machine's DiG with another's DiT. Every
selection says what it left out, so that nothing is dropped without a word.
"""

import pandas as pd

from .registry import REFERENCE_SCAN_LABEL, is_reference_scan
from .schema import MODEL_KEY

# How results are shown: the paper's protocol (eager PyTorch everywhere) and each family at its best
# (per point, the execution mode with the highest throughput, each number naming its mode).
EXEC_VIEWS = {"eager": "eager PyTorch (the paper's protocol)",
              "best": "each family at its best (per point the fastest of eager, compile, graph)"}
POINT_COLUMNS = [column for column in MODEL_KEY if column != "exec_mode"]


def exec_view(frame: pd.DataFrame, view: str) -> pd.DataFrame:
    """Rows of one execution mode (a mode's name), or with view "best" the rows of each point's fastest
    mode by training/inference throughput (a point with no ok mode keeps its eager rows, OOM or error)."""
    if view != "best":
        return frame[frame["exec_mode"] == view]
    throughput = frame[(frame["metric"] == "throughput") & (frame["status"] == "ok")]
    if throughput.empty:
        return frame[frame["exec_mode"] == "eager"]
    point = [column for column in POINT_COLUMNS if column in frame]
    best = throughput.loc[throughput.groupby(point)["median"].idxmax(), [*point, "exec_mode"]]
    chosen = frame.merge(best, on=[*point, "exec_mode"], how="inner")
    none_ok = frame.merge(best[point], on=point, how="left", indicator=True)
    none_ok = none_ok[(none_ok["_merge"] == "left_only") & (none_ok["exec_mode"] == "eager")]
    return pd.concat([chosen, none_ok.drop(columns="_merge")], ignore_index=True)


def machine_label(row) -> str:
    """'NVIDIA H200, host vm' or 'CPU AMD EPYC (2 logical cores), host vm'."""
    if row["gpu"] != "cpu":
        return f"{row['gpu']}, host {row['host']}"
    return f"CPU {row['cpu'] or '(model not recorded)'}, host {row['host']}"


def machine_labels(frame: pd.DataFrame) -> pd.Series:
    return frame.apply(machine_label, axis=1) if not frame.empty else pd.Series(dtype=str)


def one_machine(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(rows of the machine and dtype with the most rows, what was left out: '' or a sentence)."""
    if frame.empty:
        return frame, ""
    labels = machine_labels(frame)
    machine = labels.value_counts().index[0]
    rows = frame[labels == machine]
    dtype = rows["dtype"].value_counts().index[0]
    left_out = []
    others = labels[labels != machine].value_counts()
    left_out += [f"{count} rows of {label}" for label, count in others.items()]
    other_dtypes = rows.loc[rows["dtype"] != dtype, "dtype"].value_counts()
    left_out += [f"{count} {name} rows" for name, count in other_dtypes.items()]
    note = f"not shown: {'; '.join(left_out)}" if left_out else ""
    return rows[rows["dtype"] == dtype], note


def fast_scan_only(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows without DiS's PyTorch reference scan (never quoted as the DiS speed)."""
    if rows.empty:
        return rows
    return rows[~rows["backend"].map(is_reference_scan).astype(bool)]


def series_name(row) -> str:
    """The family, or a DiS label that says it ran the reference scan."""
    return row["family"] + (REFERENCE_SCAN_LABEL if is_reference_scan(row["backend"]) else "")


def ordered(names, preferred) -> list:
    """Distinct names, the preferred ones first in their order, the rest sorted."""
    names = list(dict.fromkeys(names))
    return [n for n in preferred if n in names] + sorted(n for n in names if n not in preferred)
