"""Figures, claims and REPORT.md from a fixture CSV written here (values chosen so each claim's
expected number is known), plus a kernel CSV from a tiny CPU run of the kernel benchmark; one
machine per figure and report, the reference results beside a new run."""

from pathlib import Path

import pandas as pd
import pytest

from bench import claims, figures, report
from bench.cli import main
from bench.csvstore import write as write_rows
from bench.frames import exec_view as frame_view
from bench.kernel_bench import KernelRun, KernelSettings
from bench.results import load_frame
from bench.schema import MODEL_COLUMNS

ENV = {"gpu": "NVIDIA H200", "driver": "580.65", "cuda": "13.0", "torch": "2.11.0+cu130", "triton": "3.6.0",
       "python": "3.12.3", "packages": "{}", "git_commit": "abc1234", "host": "gpu-host",
       "timestamp": "2026-11-22T10:00:00+00:00"}
PREFIX = {"DiT": "DiT", "Flash-DiT": "DiT", "DiS": "DiS", "DiG": "DiG"}
STANDINS = Path(__file__).with_name("test_bench_standins.py")
MAMBA, REFERENCE = "scan=mamba_ssm selective_scan_fn", "scan=reference (PyTorch)"


def point(family, size, resolution, batch, img_s, mem_gib=None, backend="fast", exec_mode="eager"):
    """Throughput + memory rows of one training point; img_s None means out of memory."""
    status = "OOM" if img_s is None else "ok"
    base = dict(ENV, family=family, model=f"{PREFIX[family]}-{size}/2", size=size, patch=2,
                resolution=resolution, tokens=(resolution // 16) ** 2, batch=batch, mode="train",
                exec_mode=exec_mode,
                status=status, error="CUDA out of memory" if img_s is None else "", backend=backend,
                dtype="bf16", n_reps=10)
    values = [("throughput", "img/s", img_s), ("peak_mem_alloc", "GiB", mem_gib)]
    return [dict(base, metric=metric, unit=unit,
                 median="" if value is None else value, p20="" if value is None else 0.95 * value,
                 p80="" if value is None else 1.05 * value) for metric, unit, value in values]


def fixture_rows():
    rows = []
    dit = {256: 100, 512: 40, 768: 35, 1024: 30, 1280: 25, 1536: 22, 1792: 20, 2048: None}
    dig = {256: 60, 512: 55, 768: 54, 1024: 53, 1280: 52, 1536: 51, 1792: 50, 2048: 45}
    flash = {256: 130, 512: 120, 1024: 80, 1792: 21, 2048: 13}
    for resolution, value in dit.items():
        rows += point("DiT", "S", resolution, 4, value, None if value is None else resolution / 112)
        rows += point("DiG", "S", resolution, 4, dig[resolution], resolution / 448)
        rows += point("DiS", "S", resolution, 4, 0.5, 1.0, backend=REFERENCE)  # never the DiS speed
    for resolution, value in flash.items():
        rows += point("Flash-DiT", "S", resolution, 4, value, resolution / 300)
    rows += point("DiG", "XL", 1024, 4, 10.0, 40.0) + point("DiS", "XL", 1024, 4, 2.5, 30.0, backend=MAMBA)
    rows += point("DiT", "XL", 1024, 4, 8.0, 60.0) + point("Flash-DiT", "XL", 1024, 4, 12.0, 33.0)
    rows += point("DiG", "XL", 2048, 2, 4.1, 90.0) + point("Flash-DiT", "XL", 2048, 2, None)
    rows += point("DiG", "S", 2048, 2, 44.0, 12.0) + point("Flash-DiT", "S", 2048, 2, 14.0, 7.0)
    return rows


@pytest.fixture
def results_dir(tmp_path, one_torch_thread):
    write_rows(tmp_path / "models.csv", MODEL_COLUMNS, fixture_rows())
    settings = KernelSettings(device="cpu", lengths=(32,), tokens=64, dtype="fp32",
                              head_dims=((32, 64), (64, 64)), glue_resolution=32,
                              providers=("ours-torch", "naive", "sdpa-flash", "torch-ref"))
    KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    return tmp_path


def claim_result(frame, text_start):
    claim = next(c for c in claims.PAPER_CLAIMS if c.text.startswith(text_start))
    return claims.evaluate(frame, claim)


def test_claims_are_computed_from_the_rows(results_dir):
    frame = load_frame(results_dir / "models.csv")
    speed = claim_result(frame, "DiG-S/2 is 2.5x")
    assert (speed["measured"], speed["verdict"]) == ("2.50x", "holds")
    assert speed["rows"] == "DiG-S/2 1792px b4 eager: 50 img/s; DiT-S/2 1792px b4 eager: 20 img/s"
    memory = claim_result(frame, "DiG-S/2 uses 75.7%")
    assert memory["measured"] == "75.0% less" and memory["verdict"].startswith("weaker")
    assert claim_result(frame, "DiG-XL/2 is 4.2x")["measured"] == "4.00x"
    dis_s = claim_result(frame, "DiG-S/2 is 2.0x")  # only reference-scan DiS-S rows: not the DiS speed
    assert dis_s["measured"].startswith("not measured") and "reference-scan" in dis_s["measured"]
    flash = claim_result(frame, "DiG-XL/2 is 1.8x")
    assert (flash["measured"], flash["verdict"]) == ("Flash-DiT OOM, DiG runs", "holds (baseline OOM)")
    crossover = claims.crossovers(frame)
    assert crossover["DiT"]["from"] == 512 and crossover["Flash-DiT"]["from"] == 1792
    assert "DiS" not in crossover
    efficiency = claims.efficiency_claim(frame)
    assert efficiency["verdict"] == "holds (not measured: DiS)"


def test_best_view_takes_each_points_fastest_execution_mode():
    """exec_view("best"): per point the mode with the highest ok throughput, its memory row with it;
    a point where no mode ran keeps its eager rows (its OOM shows)."""
    rows = (point("DiG", "S", 256, 4, 50.0, 1.0) + point("DiG", "S", 256, 4, 500.0, 1.2, exec_mode="graph")
            + point("DiG", "S", 256, 4, 60.0, 0.9, exec_mode="compile")
            + point("DiT", "S", 2048, 4, None) + point("DiT", "S", 2048, 4, None, exec_mode="graph"))
    frame = load_frame_from_rows(rows)
    best = frame_view(frame, "best")
    dig = best[best["family"] == "DiG"].set_index("metric")
    assert set(dig["exec_mode"]) == {"graph"} and dig.loc["throughput", "median"] == 500.0
    assert dig.loc["peak_mem_alloc", "median"] == 1.2
    dit = best[best["family"] == "DiT"]
    assert set(dit["exec_mode"]) == {"eager"} and set(dit["status"]) == {"OOM"}
    assert set(frame_view(frame, "eager")["exec_mode"]) == {"eager"}


def test_claims_without_rows_say_not_measured():
    frame = load_frame_from_rows(point("DiG", "S", 256, 4, 60.0, 1.0))
    for claim in claims.PAPER_CLAIMS:
        assert claims.evaluate(frame, claim)["measured"] == "not measured"


def load_frame_from_rows(rows):
    frame = pd.DataFrame(rows)
    for column in ("median", "p20", "p80", "resolution", "batch", "patch"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def test_reference_scan_rows_get_their_own_label():
    row = {"family": "DiS", "backend": REFERENCE}
    assert figures.series_name(row) == "DiS (reference scan, not the DiS speed)"
    assert figures.series_name({"family": "DiS", "backend": MAMBA}) == "DiS"


def test_report_command_writes_figures_and_the_claims_table(results_dir, capsys):
    assert main(["report", "--out", str(results_dir)]) == 0
    for name in ("fig2.png", "fig3.png", "kernels.png", "REPORT.md"):
        path = results_dir / name
        assert path.exists() and path.stat().st_size > 1000, name
    report = (results_dir / "REPORT.md").read_text()
    assert "| DiG-S/2 is 2.5x faster than DiT-S/2 at 1792x1792 | 2.5x | 2.50x | holds |" in report
    assert "| 75.7% less | 75.0% less |" in report
    assert "![Fig. 2 (eager): S/2 training speed and memory vs resolution](fig2.png)" in report
    assert "## Measurement protocol" in report and "NVIDIA H200" in report
    assert "(CPU run: CPU numbers" not in report  # the fixture is a GPU run
    # the figures' label, never plain "DiS"
    assert "| DiS (reference scan, not the DiS speed) (eager) |" in report
    assert "# DiG efficiency benchmark on NVIDIA H200, host gpu-host" in report
    assert "T=32" in report and "chunk_gla_torch float64" in report  # kernel table and its reference
    assert "**GLA K=32, V=64, H=6**" in report and "**GLA K=64, V=64, H=8**" in report  # per head-dim class
    assert "| swiglu_down | DiG-XL/2 32px: N=2 T=4 D=1152 I=3072 H=18 V=64 | torch-ref |" in report
    assert "| ours-triton | T=32 |" not in report  # not among the providers asked for
    assert "sdpa-flash" in report and "needs a CUDA GPU" in report  # unavailable provider listed with reason


def test_plot_draws_only_what_the_csv_holds(tmp_path):
    write_rows(tmp_path / "models.csv", MODEL_COLUMNS, point("DiG", "S", 256, 4, 60.0, 1.0))
    assert main(["plot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "fig2.png").exists()
    assert not (tmp_path / "fig3.png").exists()  # no 1024/2048 rows: no Fig. 3


def test_claims_use_the_largest_batch_both_ran_and_show_the_oom_beside_it():
    rows = (point("DiG", "S", 1792, 4, 40.0, 20.0) + point("DiT", "S", 1792, 4, None)
            + point("DiG", "S", 1792, 1, 16.0, 5.0) + point("DiT", "S", 1792, 1, 4.0, 25.0))
    frame = load_frame_from_rows(rows)
    speed = claim_result(frame, "DiG-S/2 is 2.5x")
    assert (speed["measured"], speed["verdict"]) == ("4.00x at b1", "holds")
    assert speed["rows"] == ("DiG-S/2 1792px b1 eager: 16 img/s; DiT-S/2 1792px b1 eager: 4 img/s; "
                             "DiG-S/2 1792px b4 eager: 40 img/s; DiT-S/2 1792px b4 eager: OOM")
    assert claim_result(frame, "DiG-S/2 uses 75.7%")["measured"] == "80.0% less at b1"


def test_more_memory_than_the_baseline_reads_as_more():
    rows = point("DiG", "S", 1792, 4, 40.0, 20.0) + point("Flash-DiT", "S", 1792, 4, 20.0, 10.0)
    frame = load_frame_from_rows(rows)
    claim = next(c for c in claims.EXTRA_CLAIMS if c.text.endswith("memory"))
    result = claims.evaluate(frame, claim)
    assert (result["measured"], result["verdict"]) == ("100.0% more", "DiG worse")


def test_fig2_draws_the_sweeps_batch_not_a_side_point(tmp_path, monkeypatch):
    rows = point("DiG", "S", 256, 4, 60.0, 1.0) + point("DiG", "S", 512, 4, 55.0, 2.0)
    rows += point("DiG", "S", 1792, 1, 13.0, 4.0)  # a claim's side point at batch 1
    write_rows(tmp_path / "models.csv", MODEL_COLUMNS, rows)
    titles = []
    pick = figures.figure_batch

    def recording_pick(*args):
        rows, title = pick(*args)
        titles.append(title)
        return rows, title

    monkeypatch.setattr(figures, "figure_batch", recording_pick)
    assert main(["plot", "--out", str(tmp_path)]) == 0
    assert titles[0] == "batch 4"


def test_a_figure_without_a_point_that_ran_is_not_drawn(tmp_path, capsys):
    rows = [dict(row, status="error", error="timed out", median="", p20="", p80="")
            for row in point("DiG", "S", 256, 4, 60.0, 1.0)]
    write_rows(tmp_path / "models.csv", MODEL_COLUMNS, rows)
    assert figures.fig2(load_frame(tmp_path / "models.csv"), tmp_path / "fig2.png") is None
    assert main(["plot", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "fig2.png").exists()
    assert main(["fig2", "--plugin", str(STANDINS), "--models", "StandIn-Unavailable", "--resolutions", "64",
                 "--device", "cpu", "--out", str(tmp_path), "--time-budget", "1e-9"]) == 0  # a spent budget
    assert "not drawn: Fig. 2 (no point of it ran" in capsys.readouterr().out
    assert not (tmp_path / "fig2.png").exists()


def test_figures_claims_and_report_never_mix_machines(tmp_path, capsys):
    ours = fixture_rows()
    elsewhere = [dict(row, host="other-host", median=row["median"] and 2 * row["median"])
                 for row in point("DiG", "S", 1792, 4, 100.0, 1.0) + point("DiT", "S", 1792, 4, 5.0, 1.0)]
    write_rows(tmp_path / "models.csv", MODEL_COLUMNS, ours + elsewhere)
    rows, left_out = figures.one_machine(load_frame(tmp_path / "models.csv"))
    assert set(rows["host"]) == {"gpu-host"}
    assert left_out == "not shown: 4 rows of NVIDIA H200, host other-host"
    assert claim_result(rows, "DiG-S/2 is 2.5x")["measured"] == "2.50x"  # this machine's 50 vs 20 img/s
    assert main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "REPORT.md").read_text()
    assert "not shown: 4 rows of NVIDIA H200, host other-host" in text
    assert "| DiG-S/2 is 2.5x faster than DiT-S/2 at 1792x1792 | 2.5x | 2.50x | holds |" in text


def test_rows_without_a_recorded_commit_say_so():
    frame = load_frame_from_rows(point("DiG", "S", 256, 4, 60.0, 1.0)).assign(git_commit=["none", "abc1234"])
    assert report.commit_summary(frame) == ("none (1 rows: not recorded: measured from a copy of the tree "
                                            "without .git); abc1234 (1 rows)")


def test_a_new_run_shows_the_reference_results_beside_its_own(tmp_path, monkeypatch):
    reference, new = tmp_path / "reports" / "cpu", tmp_path / "results"
    write_rows(reference / "models.csv", MODEL_COLUMNS,
               [dict(row, host="ref-host") for row in point("DiG", "S", 256, 4, 30.0, 1.0)])
    (reference / "fig2.png").write_bytes(b"png")
    write_rows(new / "models.csv", MODEL_COLUMNS, point("DiG", "S", 256, 4, 60.0, 1.0))
    monkeypatch.setattr(report, "REFERENCE_DIR", tmp_path / "reports")
    assert main(["report", "--out", str(new)]) == 0
    text = (new / "REPORT.md").read_text()
    assert "**NVIDIA H200, host ref-host** (`../reports/cpu/`, measured 2026-11-22 .. 2026-11-22" in text
    assert "| DiG-S/2 256px b4 train bf16 eager | 60 | 30 | 2.00 |" in text
    caption = "Fig. 2 (eager): S/2 training speed and memory vs resolution"
    assert f"| ![{caption}](fig2.png) | ![{caption}, reference](../reports/cpu/fig2.png) |" in text
    monkeypatch.setattr(report, "REFERENCE_DIR", new.parent / "results")  # a report of the references
    assert main(["report", "--out", str(new)]) == 0
    assert "Reference results" not in (new / "REPORT.md").read_text()


def test_tuning_section_shows_each_head_dim_class_of_the_committed_tuning_csv():
    from bench.kernel_report import tuning_section

    section = tuning_section(Path(__file__).resolve().parent.parent / "reports" / "tuning.csv")
    lines = section.split("```")[1].strip().splitlines()
    assert lines[0].split()[:3] == ["K", "V", "T"]
    buckets = (256, 1024, 4096, 16384, 65536)  # the DiG shapes' T buckets, tuned before the head-dim axis
    assert [line.split()[:3] for line in lines[1:]] == [["32", "64", str(T)] for T in buckets]
