"""bench.py command line: every --help, one-line errors with exit code 2, a stand-in sweep end to end,
and the README main command on CPU (needs the real models)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).with_name("test_bench_standins.py")
COMMANDS = ("all", "sweep", "fig2", "fig3", "kernels", "tune", "plot", "report", "merge", "env")


def test_the_parser_knows_every_command():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)


@pytest.mark.parametrize("command", [*COMMANDS, None])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    assert "usage: bench.py" in capsys.readouterr().out


def bad_inputs(tmp_path):
    empty, out = str(tmp_path / "empty"), str(tmp_path / "out")
    sweep = ["sweep", "--device", "cpu", "--out", out]
    return [
        (sweep + ["--models", "NoSuchModel"], "unknown model family 'NoSuchModel'"),
        (sweep + ["--resolutions", "100"], "multiple of 8 * patch = 16"),
        (sweep + ["--resolutions", "abc"], "expected whole numbers"),
        (sweep + ["--batch", "0"], "--batch must be at least 1"),
        (sweep + ["--tokens", "0"], "--tokens must be at least 1"),
        (sweep + ["--sizes", "XXL"], "unknown size 'XXL'"),
        (sweep + ["--modes", "eval"], "unknown mode 'eval'"),
        (sweep + ["--dtype", "int8"], "invalid choice: 'int8'"),
        (sweep + ["--batch", "2", "--tokens", "100"], "not allowed with argument"),
        (sweep + ["--plugin", str(tmp_path / "missing.py")], "does not exist"),
        (["plot", "--out", empty], "no models.csv or kernels.csv"),
        (["report", "--out", empty], "no models.csv"),
        (["merge", str(tmp_path / "missing.csv"), "-o", out], "does not exist"),
        (["kernels", "--device", "cpu", "--out", out], "no CUDA GPU here"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ] + ([] if torch.cuda.is_available() else [(["tune"], "no CUDA GPU")])  # on a GPU, tune would run


def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, capsys):
    for argv, message in bad_inputs(tmp_path):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        error = captured.err.strip()
        assert message in error and "\n" not in error and "Traceback" not in error, (argv, error)
    assert not (tmp_path / "out").exists()  # input is checked before anything is measured or written


def test_the_script_exits_2_on_bad_input_without_traceback(tmp_path):
    command = [sys.executable, "bench.py", "sweep", "--models", "NoSuchModel", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "Traceback" not in run.stderr
    assert "unknown model family 'NoSuchModel'" in run.stderr


def test_sweep_then_report_on_a_stand_in(tmp_path, capsys):
    out = str(tmp_path)
    argv = ["sweep", "--plugin", str(STANDINS), "--models", "StandIn", "--resolutions", "64", "--batch", "1",
            "--device", "cpu", "--out", out, "--warmup", "1", "--reps", "1", "--max-reps", "1",
            "--no-progress"]
    assert main(argv) == 0
    assert "1 measured, 0 already there" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 measured, 1 already there" in capsys.readouterr().out
    assert main(["report", "--out", out, "--device", "cpu"]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "(CPU run: CPU numbers, not GPU numbers)" in report
    assert (tmp_path / "fig2.png").exists() and "StandIn" in report


def test_merge_command_writes_the_union(tmp_path, capsys):
    rows = (tmp_path / "a.csv", tmp_path / "b.csv")
    header = "family,size,patch,resolution,batch,mode,dtype,gpu,metric,timestamp\n"
    rows[0].write_text(header + "DiG,S,2,256,4,train,bf16,H200,throughput,2026-01-01\n")
    rows[1].write_text(header + "DiT,S,2,256,4,train,bf16,H200,throughput,2026-01-02\n")
    assert main(["merge", str(rows[0]), str(rows[1]), "-o", str(tmp_path / "m.csv")]) == 0
    assert len((tmp_path / "m.csv").read_text().strip().splitlines()) == 3


def models_import_error():
    try:
        importlib.import_module("models")
    except Exception as error:  # any failure to import the real models means: not ready yet
        return f"{type(error).__name__}: {error}"
    return None


MODELS_IMPORT_ERROR = models_import_error()


@pytest.mark.slow
@pytest.mark.skipif(MODELS_IMPORT_ERROR is not None,
                    reason=f"the main job needs the real models; import models fails: {MODELS_IMPORT_ERROR}")
def test_readme_main_command_on_cpu(tmp_path):
    """`python bench.py` without a GPU: the small CPU sweep, its figure and report, within 3 minutes."""
    run = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--out", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    report = (tmp_path / "REPORT.md").read_text()
    assert "(CPU run: CPU numbers, not GPU numbers)" in report
    assert (tmp_path / "fig2.png").exists()
    text = (tmp_path / "models.csv").read_text()
    for family in ("DiT", "DiT-SDPA", "DiS", "DiG"):
        assert f"\n{family},{family.split('-')[0]}-S/2,S,2,64," in text, family
