"""Run one benchmark point in a fresh process, with a time limit (see bench/PROTOCOL.md).

`run_point(spec, timeout_s)` starts `python -m bench.point` (bench/point.py measures there) in its
own process group and reads the JSON result from its stdout. The point's process never outlives
this one: it is killed with its group on timeout, Ctrl-C or SIGTERM here, it gets SIGKILL from the
kernel if this process dies without cleaning up (Linux parent-death signal), and it ends itself
at its own deadline otherwise. No temporary files: nothing is left behind by a killed sweep.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

from . import REPO_ROOT
from .errors import MESSAGE_LIMIT

HEARTBEAT_S = 15.0  # seconds between "still running" calls while a point runs
CHILD_GRACE_S = 5.0  # the point's own deadline is this much after the parent's timeout


def failed_result(status: str, error: str) -> dict:
    """A result without measurements: status 'OOM', 'error' or 'unavailable' and the reason."""
    return {"status": status, "error": error, "backend": "", "n_params": None, "step_seconds": [],
            "peak_mem_alloc_gib": None, "peak_mem_nvml_gib": None, "nvml_error": "",
            "peak_mem_rss_gib": None, "threads": "", "compile_s": None, "capture_s": None, "check": ""}


def point_command(spec, timeout_s: float) -> list[str]:
    return [sys.executable, "-m", "bench.point", "--spec", json.dumps(asdict(spec)),
            "--deadline", f"{timeout_s + CHILD_GRACE_S:g}", "--parent", str(os.getpid())]


def end_group(process: subprocess.Popen) -> None:
    """SIGKILL the point's process group (compile workers too) and reap the point's process."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it exited in between
            pass
    process.communicate()


def result_from_output(returncode: int, stdout: str, stderr: str) -> dict:
    """The point's JSON result (the last line of its stdout), or why there is none."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    errors = [line for line in stderr.strip().splitlines() if line.strip()]
    last = errors[-1][:MESSAGE_LIMIT] if errors else "no message"
    status = "OOM" if "out of memory" in stderr.lower() else "error"
    return failed_result(status, f"point process exited with code {returncode}: {last}")


def run_point(spec, timeout_s: float, on_wait=None, wait_s: float = HEARTBEAT_S) -> dict:
    """Measure `spec` in a fresh process, killed after timeout_s seconds.

    on_wait(elapsed_s) is called every wait_s seconds while the point runs (a heartbeat).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")])))
    # A new session: Ctrl-C in the terminal reaches only this process, which then ends the group.
    process = subprocess.Popen(point_command(spec, timeout_s), cwd=REPO_ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    start = time.monotonic()
    try:
        while True:
            left = timeout_s - (time.monotonic() - start)
            if left <= 0:
                return failed_result("error", f"timed out after {timeout_s:g} s (per-point --timeout)")
            try:
                stdout, stderr = process.communicate(timeout=min(left, wait_s))
                break
            except subprocess.TimeoutExpired:  # output read so far is kept for the next call
                if on_wait is not None and time.monotonic() - start < timeout_s:
                    on_wait(time.monotonic() - start)
    finally:  # timeout, Ctrl-C or SIGTERM of this process: the point's process group goes too
        end_group(process)
    return result_from_output(process.returncode, stdout, stderr)
