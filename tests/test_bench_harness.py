"""Benchmark harness on stand-in models (tests/test_bench_standins.py), never the real ones:
CSV schema and units, one fresh process per point, resume on this machine only, --force,
failures as results, the heartbeat of a long point."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from bench import cli, csvstore, registry
from bench.harness import failed_result
from bench.results import keys_with_status, point_rows, record, spread
from bench.schema import MACHINE_COLUMNS, MODEL_COLUMNS, MODEL_KEY, POINT_METRICS, STATUSES
from bench.spec import DEVICE_DEFAULTS, KEY_DEFAULTS, KEY_FIELDS, PointSpec, SweepSettings, batch_for, plan
from bench.sweep import run_sweep

STANDINS = Path(__file__).with_name("test_bench_standins.py")
registry.load_plugin(STANDINS)
from test_bench_standins import StandInModel  # noqa: E402  (after the plugin registered its families)


def settings(families, resolutions, **overrides) -> SweepSettings:
    """A CPU sweep of stand-ins: batch 2, 1 warm-up step, 2 timed steps."""
    options = dict(families=tuple(families), sizes=("S",), resolutions=tuple(resolutions), device="cpu",
                   batch=2, warmup=1, min_reps=2, max_reps=2, timeout_s=60.0, plugins=(str(STANDINS),))
    options.update(overrides)
    return SweepSettings(**options)


def sweep(settings: SweepSettings, csv_path, **options) -> dict:
    return run_sweep(settings, csv_path, plan(settings), progress=False, **options)


def read_rows(csv_path):
    return csvstore.read(csv_path)


def points(csv_path) -> dict:
    """{(family, resolution): {metric: row}} of a results CSV."""
    table = {}
    for row in read_rows(csv_path)[1]:
        table.setdefault((row["family"], int(row["resolution"])), {})[row["metric"]] = row
    return table


@pytest.fixture(scope="module")
def measured_csv(tmp_path_factory):
    """StandIn-S/2 at 64 and 128 px, measured once for the tests of this module."""
    csv_path = tmp_path_factory.mktemp("sweep") / "models.csv"
    counts = sweep(settings(["StandIn"], [64, 128]), csv_path)
    assert counts == {"planned": 2, "skipped": 0, "measured": 2, "left": 0}
    return csv_path


def test_rows_have_the_schema_units_and_values_of_a_cpu_point(measured_csv):
    header, rows = read_rows(measured_csv)
    assert header == MODEL_COLUMNS
    table = points(measured_csv)
    assert set(table) == {("StandIn", 64), ("StandIn", 128)}
    expected_params = sum(p.numel() for p in StandInModel(8).parameters())
    for (_, resolution), metrics in table.items():
        assert set(metrics) == set(POINT_METRICS["cpu"]) == {"throughput", "peak_mem_rss", "n_params"}
        speed, memory = metrics["throughput"], metrics["peak_mem_rss"]
        assert (speed["unit"], memory["unit"], metrics["n_params"]["unit"]) == ("img/s", "GiB", "count")
        assert float(speed["p20"]) <= float(speed["median"]) <= float(speed["p80"])
        assert float(speed["median"]) > 0 and speed["n_reps"] == "2"
        # a torch process holds ~0.35 GiB; MiB or bytes mislabelled as GiB would be far outside
        assert 0.05 < float(memory["median"]) < 16
        assert float(metrics["n_params"]["median"]) == expected_params
        row = metrics["throughput"]
        fields = (row["status"], row["error"], row["batch"], row["mode"], row["dtype"])
        assert fields == ("ok", "", "2", "train", "fp32")  # the CPU's default dtype
        assert int(row["tokens"]) == (resolution // 8 // 2) ** 2
        assert (row["gpu"], row["torch"], row["model"]) == ("cpu", torch.__version__, "StandIn-S/2")
        assert row["timestamp"] and row["host"] and row["git_commit"]
        assert "logical cores)" in row["cpu"]  # the CPU model is part of the machine, so of the key


def test_every_point_runs_in_its_own_fresh_process(measured_csv):
    pids = {row["backend"] for row in read_rows(measured_csv)[1]}
    assert len(pids) == 2, pids  # "stand-in conv (pid N)": one process per point
    assert f"(pid {os.getpid()})" not in " ".join(pids)


def test_resume_skips_measured_points_and_force_replaces_only_them(measured_csv, tmp_path):
    csv_path = tmp_path / "models.csv"
    shutil.copy(measured_csv, csv_path)
    before = csv_path.read_bytes()
    counts = sweep(settings(["StandIn"], [64, 128]), csv_path)
    assert counts == {"planned": 2, "skipped": 2, "measured": 0, "left": 0}
    assert csv_path.read_bytes() == before

    old = points(csv_path)
    counts = sweep(settings(["StandIn"], [64], force=True), csv_path)
    assert counts["measured"] == 1
    new = points(csv_path)
    assert len(read_rows(csv_path)[1]) == 6  # replaced, no duplicates, nothing else dropped
    assert new[("StandIn", 128)] == old[("StandIn", 128)]
    assert new[("StandIn", 64)]["throughput"]["backend"] != old[("StandIn", 64)]["throughput"]["backend"]


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    csv_path = tmp_path / "models.csv"
    families = ["StandIn-OOM", "StandIn-RuntimeOOM", "StandIn-Error", "StandIn-Unavailable",
                "StandIn-Missing", "StandIn"]
    sweep(settings(families, [128]), csv_path)
    table = points(csv_path)
    status = {family: table[(family, 128)]["throughput"]["status"] for family in families}
    assert status == {"StandIn-OOM": "OOM", "StandIn-RuntimeOOM": "OOM", "StandIn-Error": "error",
                      "StandIn-Unavailable": "unavailable", "StandIn-Missing": "unavailable", "StandIn": "ok"}
    error = table[("StandIn-Error", 128)]["throughput"]["error"]
    assert error == "ValueError: stand-in failure: shapes do not match"
    assert "CUDA out of memory" in table[("StandIn-OOM", 128)]["throughput"]["error"]
    assert table[("StandIn-Unavailable", 128)]["throughput"]["error"] == "stand-in provider is not installed"
    assert "BackendUnavailableError" in table[("StandIn-Missing", 128)]["throughput"]["error"]
    for family in families[:-1]:
        assert all(row["median"] == "" for row in table[(family, 128)].values())  # no number for a failure
    assert {row["status"] for row in read_rows(csv_path)[1]} <= set(STATUSES)

    # OOM is a result (kept); an error is re-run, unavailability re-checked.
    assert len(keys_with_status(csv_path)) == 3
    counts = sweep(settings(families, [128]), csv_path)
    assert (counts["skipped"], counts["measured"]) == (3, 3)
    assert len(read_rows(csv_path)[1]) == 6 * 3


def test_a_hanging_point_is_killed_at_its_timeout_with_a_heartbeat_meanwhile(tmp_path, capsys):
    csv_path = tmp_path / "models.csv"
    sweep(settings(["StandIn-Slow"], [64], timeout_s=4.0), csv_path, heartbeat_s=1.0)
    row = points(csv_path)[("StandIn-Slow", 64)]["throughput"]
    assert (row["status"], row["error"]) == ("error", "timed out after 4 s (per-point --timeout)")
    err = capsys.readouterr().err  # off a terminal, a line per heartbeat while the point runs
    assert "StandIn-Slow-S/2 64px b2 train fp32 eager: running for 1 s (limit 4 s)" in err
    assert "StandIn-Slow-S/2 64px b2 train fp32 eager: error: timed out after 4 s" in err


def test_resume_counts_only_this_machines_rows(measured_csv, tmp_path):
    csv_path = tmp_path / "models.csv"
    header, rows = read_rows(measured_csv)
    elsewhere = [dict(row, host="another-host") for row in rows]  # same GPU and CPU names, other host
    unknown = [dict(row, cpu="") for row in rows]  # written before the cpu column: an unknown machine
    csvstore.write(csv_path, header, elsewhere + unknown)
    counts = sweep(settings(["StandIn"], [64, 128]), csv_path)
    assert (counts["skipped"], counts["measured"]) == (0, 2)
    assert len(read_rows(csv_path)[1]) == 18  # every machine's rows are kept, side by side
    assert set(MACHINE_COLUMNS) <= set(MODEL_KEY)


def test_every_key_field_is_a_column_and_step_defaults_have_one_home():
    assert set(KEY_FIELDS) <= set(MODEL_COLUMNS) and MODEL_KEY[:len(KEY_FIELDS)] == KEY_FIELDS
    spec = PointSpec("StandIn", "S", 2, 64, batch=1, device="cpu")
    for name in ("warmup", "min_reps", "max_reps", "threads", "dtype"):
        assert getattr(spec, name) == DEVICE_DEFAULTS["cpu"][name]
    assert KEY_DEFAULTS == {"mode": "train", "exec_mode": "eager"}  # what rows older than a key field read


def test_a_cli_sweep_plans_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "plan", lambda settings: calls.append(settings) or plan(settings))
    argv = ["sweep", "--plugin", str(STANDINS), "--models", "StandIn-Unavailable", "--resolutions", "64",
            "--device", "cpu", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(argv) == 0 and len(calls) == 1


def test_token_budget_sets_the_batch_per_resolution():
    assert batch_for(256, 2, None, 4096) == 16  # 256 px, patch 2: 16 x 16 = 256 tokens per image
    assert batch_for(2048, 2, None, 4096) == 1  # 16384 tokens per image: at least one image
    assert batch_for(512, 2, 3, None) == 3
    with pytest.raises(ValueError, match="exactly one"):
        batch_for(512, 2, 3, 4096)
    specs = plan(settings(["StandIn"], [256, 512], batch=None, tokens=4096))
    assert [spec.batch for spec in specs] == [16, 4]


def fake_result(step_seconds, **fields) -> dict:
    result = dict(failed_result("ok", ""), step_seconds=step_seconds, backend="stand-in", n_params=10,
                  peak_mem_rss_gib=0.5)
    result.update(fields)
    return result


def test_point_rows_compute_images_per_second_and_gib(monkeypatch):
    spec = PointSpec("StandIn", "S", 2, 64, batch=2, device="cpu")
    rows = {row["metric"]: row for row in point_rows(spec, fake_result([0.5, 0.25, 0.25]))}
    assert rows["throughput"]["median"] == pytest.approx(8.0)  # 2 images / 0.25 s
    assert rows["throughput"]["p20"] == pytest.approx(spread([4.0, 8.0, 8.0])["p20"])
    assert rows["peak_mem_rss"]["median"] == 0.5

    env = {"gpu": "NVIDIA H200", "cpu": "Intel Xeon (16 logical cores)", "driver": "1", "cuda": "13.0",
           "torch": "2.11", "triton": "3.6", "python": "3.12", "packages": "{}", "git_commit": "abc",
           "host": "h"}
    monkeypatch.setattr("bench.results.environment", lambda device: env)
    cuda = PointSpec("StandIn", "S", 2, 64, batch=2, device="cuda")
    rows = {row["metric"]: row for row in point_rows(
        cuda, fake_result([0.5], peak_mem_alloc_gib=3.0, nvml_error="NVMLError: not found"))}
    assert set(rows) == set(POINT_METRICS["cuda"])  # what keys_with_status needs to call a point done
    assert (rows["peak_mem_alloc"]["unit"], rows["peak_mem_alloc"]["median"]) == ("GiB", 3.0)
    assert (rows["peak_mem_nvml"]["status"], rows["peak_mem_nvml"]["error"]) == ("unavailable",
                                                                                "NVML: NVMLError: not found")


def test_record_replaces_one_point_and_merge_keeps_the_latest_run(tmp_path):
    a, b, c = (PointSpec("StandIn", "S", 2, res, batch=2, device="cpu") for res in (64, 128, 256))
    first = tmp_path / "first.csv"
    record(first, point_rows(a, fake_result([0.5])))
    record(first, point_rows(b, fake_result([0.5])))
    record(first, point_rows(a, failed_result("OOM", "CUDA out of memory")))
    rows = read_rows(first)[1]
    assert len(rows) == 6 and {r["status"] for r in rows if r["resolution"] == "64"} == {"OOM"}

    second = tmp_path / "second.csv"
    later = [dict(row, timestamp="2999-01-01T00:00:00+00:00") for row in point_rows(a, fake_result([0.25]))]
    record(second, later)
    record(second, point_rows(c, fake_result([0.5])))
    merged = tmp_path / "merged.csv"
    assert csvstore.merge([first, second], merged, MODEL_KEY, KEY_DEFAULTS) == 9
    table = points(merged)
    assert set(table) == {("StandIn", 64), ("StandIn", 128), ("StandIn", 256)}
    assert table[("StandIn", 64)]["throughput"]["median"] == "8.0"  # the later run of 64 px won


def test_bench_git_commit_overrides_what_git_reports(monkeypatch):
    from bench.env import git_commit

    monkeypatch.setenv("BENCH_GIT_COMMIT", "2f2f587")
    assert git_commit() == "2f2f587"
    monkeypatch.delenv("BENCH_GIT_COMMIT")
    assert git_commit() not in ("", "2f2f587")
