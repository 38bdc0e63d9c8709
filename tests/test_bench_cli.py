"""bench.py command line: every --help, one line and exit code 2 for every user mistake (checked
before anything is measured, without importing torch where none is needed), a stand-in sweep end
to end, and the README main command on CPU (needs the real models)."""

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from bench import cli
from bench.cli import build_parser, main
from bench.csvstore import write as write_rows
from bench.schema import MODEL_COLUMNS
from bench.spec import CPU_GRID

REPO = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).with_name("test_bench_standins.py")
COMMANDS = ("all", "sweep", "fig2", "fig3", "kernels", "tune", "profile", "plot", "report", "merge", "env",
            "scale")
READ_ONLY_DIR = Path("/sys/kernel")  # root ignores file modes; sysfs refuses new files even to root


def test_the_parser_knows_every_command():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", [*COMMANDS, None])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    assert "usage: bench.py" in capsys.readouterr().out


def test_the_main_job_takes_a_dtype():
    assert build_parser().parse_args(["all", "--dtype", "bf16"]).dtype == "bf16"
    assert build_parser().parse_args(["all"]).dtype is None  # the device's default: fp32 on CPU


def read_only_dir(tmp_path) -> Path:
    """A directory where no file can be made: mode 555 for a user; for root (who ignores modes),
    sysfs, which refuses new files to everyone."""
    if os.geteuid() != 0:
        path = tmp_path / "read-only"
        path.mkdir()
        path.chmod(0o555)
        return path
    try:
        with tempfile.TemporaryFile(dir=READ_ONLY_DIR):
            pass
    except OSError:
        return READ_ONLY_DIR
    pytest.skip(f"{READ_ONLY_DIR} takes new files here: no read-only directory for root")


def bad_csvs(tmp_path) -> dict:
    """Directories holding a models.csv that report and plot must refuse."""
    files = {"wrong-header": "a,b,c\n1,2,3\n", "empty": "", "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
             "not-a-number": None}
    dirs = {}
    for name, content in files.items():
        directory = tmp_path / f"csv-{name}"
        directory.mkdir()
        path = directory / "models.csv"
        if content is None:
            from test_bench_report import point

            write_rows(path, MODEL_COLUMNS, point("DiG", "S", 256, 4, 60.0, 1.0))
            path.write_text(path.read_text().replace("60.0", "sixty", 1))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        dirs[name] = str(directory)
    return dirs


def bad_inputs(tmp_path):
    empty, out, a_file = str(tmp_path / "empty"), str(tmp_path / "out"), tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("name,value\nx,1\n")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    csvs = bad_csvs(tmp_path)
    sweep = ["sweep", "--device", "cpu", "--out", out]
    cases = [
        (sweep + ["--models", "NoSuchModel"], "unknown model family 'NoSuchModel'"),
        (sweep + ["--resolutions", "100"], "multiple of 8 * patch = 16"),
        (sweep + ["--resolutions", "abc"], "expected whole numbers"),
        (sweep + ["--batch", "0"], "argument --batch: must be at least 1, got 0"),
        (sweep + ["--tokens", "0"], "argument --tokens: must be at least 1, got 0"),
        (sweep + ["--sizes", "XXL"], "unknown size 'XXL'"),
        (sweep + ["--modes", "eval"], "unknown mode 'eval'"),
        (sweep + ["--dtype", "int8"], "invalid choice: 'int8'"),
        (sweep + ["--batch", "2", "--tokens", "100"], "not allowed with argument"),
        (sweep + ["--plugin", str(tmp_path / "missing.py")], "does not exist"),
        (sweep + ["--reps", "0", "--max-reps", "0"], "argument --reps: must be at least 1, got 0"),
        (sweep + ["--max-reps", "0"], "argument --max-reps: must be at least 1, got 0"),
        (sweep + ["--timeout", "0"], "argument --timeout: must be more than 0 s, got 0"),
        (sweep + ["--timeout", "-5"], "argument --timeout: must be more than 0 s, got -5"),
        (sweep + ["--warmup", "-1"], "argument --warmup: must be at least 0, got -1"),
        (sweep + ["--time-budget", "-1"], "argument --time-budget: must be more than 0 s, got -1"),
        (sweep + ["--threads", "-1"], "argument --threads: must be at least 0, got -1"),
        (sweep + ["--min-time", "nan"], "argument --min-time: must be at least 0 s, got nan"),
        (["sweep", "--device", "cpu", "--out", str(a_file)], "is a file, not a directory"),
        (["sweep", "--device", "cpu", "--out", str(a_file / "sub")], "is a file"),
        (["fig3", "--device", "cpu", "--out", out], "give --resolutions"),
        (["all", "--out", str(a_file)], "is a file, not a directory"),
        (["plot", "--out", empty], "no models.csv or kernels.csv"),
        (["report", "--out", empty], "no models.csv"),
        (["report", "--out", csvs["wrong-header"]], "is not a models CSV: its header lacks family"),
        (["plot", "--out", csvs["wrong-header"]], "is not a models CSV"),
        (["report", "--out", csvs["empty"]], "is empty"),
        (["report", "--out", csvs["binary"]], "is not a CSV file: it holds binary data"),
        (["plot", "--out", csvs["not-a-number"]], "line 2: median is 'sixty', not a number"),
        (["sweep", "--device", "cpu", "--out", csvs["binary"]], "is not a CSV file"),
        (["merge", str(tmp_path / "missing.csv"), "-o", out], "does not exist"),
        (["merge", str(empty_csv), "-o", str(tmp_path / "m.csv")], "is empty: nothing to merge"),
        (["merge", str(foreign), "-o", str(tmp_path / "m.csv")], "not a models or kernels CSV"),
        (["kernels", "--device", "cpu", "--out", out], "no CUDA GPU here"),
        (["kernels", "--providers", "bogus", "--out", out], "unknown provider 'bogus'"),
        (["kernels", "--lengths", "0", "--out", out], "--lengths must be positive"),
        (["kernels", "--head-dims", "32-64", "--out", out], "--head-dims takes KxV pairs of positive whole "
                                                            "numbers like 32x64; got '32-64'"),
        (["kernels", "--head-dims", "0x64", "--out", out], "got '0x64'"),
        (["kernels", "--head-dims", "48x80", "--out", out], "no head count on record for 48x80"),
        (["kernels", "--heads", "0", "--out", out], "argument --heads: must be at least 1, got 0"),
        (["kernels", "--ops", "attention", "--out", out], "invalid choice: 'attention'"),
        (["kernels", "--glue-resolution", "100", "--out", out], "--glue-resolution must be a multiple of 16"),
        (["tune", "--head-dims", "64", "--out", out], "--head-dims takes KxV"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ]
    if not torch.cuda.is_available():  # on a GPU these would run
        cases += [(["tune"], "no CUDA GPU"), (sweep[:1] + ["--device", "cuda", "--out", out], "no CUDA GPU"),
                  (["--device", "cuda", "--out", out], "torch sees no CUDA GPU")]
    return cases


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error and "Traceback" not in error, (argv, error)
    assert not (tmp_path / "out").exists()  # input is checked before anything is measured or written
    assert not (tmp_path / "m.csv").exists()


def test_an_out_dir_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys):
    directory = read_only_dir(tmp_path)
    for out in (directory, directory / "sub"):
        assert main(["sweep", "--device", "cpu", "--out", str(out)]) == 2
        error = capsys.readouterr().err.strip()
        assert "cannot be written" in error and "\n" not in error, error


def run_cli_in_fresh_python(argv) -> dict:
    """main(argv) in a new interpreter: its exit code, stderr and which heavy modules it imported."""
    code = ("import json, sys\nfrom bench.cli import main\n"
            "try:\n    code = main(json.loads(sys.argv[1]))\nexcept SystemExit as e:\n    code = e.code\n"
            "print(json.dumps({'code': code, 'loaded': [m for m in ('torch', 'pandas', 'matplotlib') "
            "if m in sys.modules]}))")
    run = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    return dict(json.loads(run.stdout.strip().splitlines()[-1]), stderr=run.stderr)


@pytest.mark.parametrize("argv", [["--help"], ["sweep", "--help"], ["sweep", "--models", "Nope"],
                                  ["--timeout", "0"], ["kernels", "--providers", "bogus"],
                                  ["kernels", "--head-dims", "32-64"], ["tune", "--head-dims", "1x"],
                                  ["sweep", "--out", "README.md"], ["report", "--out", "tests"]])
def test_help_and_usage_errors_do_not_import_torch(argv):
    run = run_cli_in_fresh_python(argv)
    assert run["loaded"] == [], (argv, run)  # torch alone takes 2-4 s to import here
    assert run["code"] in (0, 2) and "Traceback" not in run["stderr"]


def test_the_script_exits_2_on_bad_input_without_traceback(tmp_path):
    command = [sys.executable, "bench.py", "sweep", "--models", "NoSuchModel", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "unknown model family 'NoSuchModel'" in run.stderr


def test_fig2_on_a_cpu_plans_the_cpu_grid_and_fig3_asks_for_resolutions():
    args = build_parser().parse_args(["fig2"])
    (_, points), = cli.fig2_jobs(args, "cpu")
    assert {(p.family, p.resolution) for p in points} == {(f, r) for f, rs in CPU_GRID.items() for r in rs}
    assert {p.dtype for p in points} == {"fp32"} and [p.resolution for p in points] == sorted(
        p.resolution for p in points)  # small first: a spent time budget leaves every family measured
    gpu = [p for _, points in cli.fig2_jobs(args, "cuda") for p in points]
    assert {p.resolution for p in gpu} == set(range(256, 2049, 256)) and {p.dtype for p in gpu} == {"bf16"}


def test_sweep_then_report_on_a_stand_in(tmp_path, capsys):
    out = str(tmp_path)
    argv = ["sweep", "--plugin", str(STANDINS), "--models", "StandIn", "--resolutions", "64", "--batch", "1",
            "--device", "cpu", "--out", out, "--warmup", "1", "--reps", "1", "--max-reps", "1",
            "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 measured, 0 already there" in captured.out
    assert "StandIn-S/2 64px b1 train fp32 eager: ok" in captured.err  # --no-progress keeps the point lines
    assert main(argv) == 0
    assert "0 measured, 1 already there" in capsys.readouterr().out
    assert main(["report", "--out", out]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "(CPU run: CPU numbers, not GPU numbers)" in report
    assert (tmp_path / "fig2.png").exists() and "StandIn" in report
    assert "## Reference results (committed under reports/" in report  # shown beside the new ones


def test_merge_command_writes_the_union(tmp_path, capsys):
    from test_bench_report import point

    paths = (tmp_path / "a.csv", tmp_path / "b.csv")
    write_rows(paths[0], MODEL_COLUMNS, point("DiG", "S", 256, 4, 60.0, 1.0))
    write_rows(paths[1], MODEL_COLUMNS, point("DiT", "S", 256, 4, 50.0, 1.0))
    assert main(["merge", str(paths[0]), str(paths[1]), "-o", str(tmp_path / "m.csv")]) == 0
    assert len((tmp_path / "m.csv").read_text().strip().splitlines()) == 5


def models_import_error():
    try:
        importlib.import_module("models")
    except Exception as error:  # any failure to import the real models means: not ready yet
        return f"{type(error).__name__}: {error}"
    return None


MODELS_IMPORT_ERROR = models_import_error()


SUMMARY = re.compile(r"models\.csv: (\d+) measured, (\d+) already there(?:, (\d+) left \(time budget)?")


@pytest.mark.slow
@pytest.mark.skipif(MODELS_IMPORT_ERROR is not None,
                    reason=f"the main job needs the real models; import models fails: {MODELS_IMPORT_ERROR}")
def test_readme_main_command_on_cpu(tmp_path):
    """`python bench.py` without a GPU: every point of the CPU grid, its figure and report.

    On 2 idle cores the grid takes ~70 s and one run measures it all; on a loaded machine (a CI run
    took 2x as long) the 110 s budget leaves points, and the summary line says to run again, which
    must measure exactly those and keep the rest. Three runs at most: each measures at least one."""
    planned = sum(len(resolutions) for resolutions in CPU_GRID.values())
    done = 0
    for _ in range(3):
        run = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--out", str(tmp_path)],
                             cwd=REPO, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-2000:]
        summary = SUMMARY.search(run.stdout)
        assert summary, run.stdout
        measured, kept, left = (int(group or 0) for group in summary.groups())
        assert kept == done and measured >= 1 and done + measured + left == planned, run.stdout
        done += measured
        if not left:
            break
    assert done == planned, f"{planned - done} points left after three runs"
    report = (tmp_path / "REPORT.md").read_text()
    assert "(CPU run: CPU numbers, not GPU numbers)" in report
    assert (tmp_path / "fig2.png").exists()
    text = (tmp_path / "models.csv").read_text()
    for family, resolutions in CPU_GRID.items():
        for resolution in resolutions:
            assert f"\n{family},{family.split('-')[0]}-S/2,S,2,{resolution}," in text, (family, resolution)


def test_kernels_smoke_run_on_cpu_writes_gla_and_glue_rows(tmp_path, capsys, one_torch_thread):
    argv = ["kernels", "--allow-cpu", "--device", "cpu", "--out", str(tmp_path), "--lengths", "16",
            "--tokens", "16", "--head-dims", "32x64", "24x40", "--heads", "2", "--glue-resolution", "32",
            "--providers", "ours-torch", "torch-ref"]
    assert main(argv) == 0
    from bench.results import load_kernels

    frame = load_kernels(tmp_path / "kernels.csv")
    ours = frame[(frame["provider"] == "ours-torch") & (frame["metric"] == "time")]
    assert set(zip(ours["K"], ours["V"], ours["H"])) == {(32, 64, 2), (24, 40, 2)}
    assert set(frame.loc[frame["op"] != "gla", "provider"]) == {"hbm-floor", "torch-ref"}
    out = capsys.readouterr().out
    assert "GLA (B*T fixed), fwd+bwd time (ms)" in out and "glue, fwd time (ms)" in out


def test_tune_tunes_each_head_dim_class():
    from bench.kernel_cli import tuning_shapes

    shapes = tuning_shapes(((32, 64), (64, 64), (128, 128)), {(32, 64): 6, (64, 64): 8, (128, 128): 16})
    assert [s for s in shapes if s[3:] == (32, 64)] == [(131072 // T, T, 6, 32, 64) for T in
                                                        (256, 1024, 4096, 9216, 12544, 16384, 65536)]
    assert [s for s in shapes if s[3:] == (128, 128)] == [(128, 1024, 16, 128, 128), (32, 4096, 16, 128, 128),
                                                          (8, 16384, 16, 128, 128), (2, 65536, 16, 128, 128)]
    assert {s[2] for s in shapes if s[3:] == (64, 64)} == {8}
