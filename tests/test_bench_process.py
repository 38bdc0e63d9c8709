"""Processes of a sweep: Ctrl-C prints one line, ends the running point and keeps what was
measured; a sweep killed with SIGKILL takes its point process with it and leaves no temp dir."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import csvstore

REPO = Path(__file__).resolve().parent.parent
STANDINS = Path(__file__).with_name("test_bench_standins.py")


def start_sweep(tmp_path: Path, *families: str) -> subprocess.Popen:
    """A sweep into tmp_path/out with its own temp dir tmp_path/tmp; the slow stand-in touches
    tmp_path/sleeping once its point is measuring."""
    command = [sys.executable, "bench.py", "sweep", "--plugin", str(STANDINS), "--models", *families,
               "--resolutions", "64", "--batch", "1", "--device", "cpu", "--out", str(tmp_path / "out"),
               "--no-progress", "--timeout", "120"]
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), STANDIN_SLEEP_MARKER=str(tmp_path / "sleeping"))
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def point_processes(sweep_pid: int) -> list:
    """Process ids of the `python -m bench.point` processes of a sweep (its pid is on their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        parent = argv[argv.index(b"--parent") + 1] if b"--parent" in argv else b""
        if b"bench.point" in argv and parent == str(sweep_pid).encode():
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """True while the process exists and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_ctrl_c_prints_one_line_ends_the_point_and_keeps_the_results(tmp_path):
    sweep = start_sweep(tmp_path, "StandIn", "StandIn-Slow")
    assert wait_for((tmp_path / "sleeping").exists, 120), "the slow point never started"
    (child,) = point_processes(sweep.pid)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("bench.py: interrupted; the 1 point(s) measured in this run are in ")
    assert "Traceback" not in stderr and stderr.count("interrupted") == 1
    assert wait_for(lambda: not running(child), 10)
    rows = csvstore.read(tmp_path / "out" / "models.csv")[1]
    assert {(row["family"], row["status"]) for row in rows} == {("StandIn", "ok")}


def test_a_killed_sweep_takes_its_point_process_with_it(tmp_path):
    sweep = start_sweep(tmp_path, "StandIn-Slow")
    assert wait_for((tmp_path / "sleeping").exists, 120), "the point never started"
    (child,) = point_processes(sweep.pid)
    os.kill(sweep.pid, signal.SIGKILL)
    sweep.communicate(timeout=30)
    assert wait_for(lambda: not running(child), 10), "the point process outlived its sweep"
    # nothing left behind but torch's compile cache (torchinductor_<user>), which is meant to stay
    assert [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")] == []
