"""Timing, memory and failure handling of one benchmark point (see bench/PROTOCOL.md).

`run_point(spec)` (parent) starts `python -m bench.point` in a fresh process with a time limit;
`measure_point(spec)` (that child) builds the model, warms up, times the steps and reads the
memory counters. The result is a JSON-able dict; `bench.results` turns it into CSV rows.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .env import REPO_ROOT, nvml_handle
from .registry import get_family, load_plugin

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
MODES = ("train", "infer")
NUM_CLASSES = 1000  # ImageNet labels; timesteps are drawn from [0, 1000) as in DiT


@dataclass(frozen=True)
class PointSpec:
    """One measurement: a model at one resolution, batch, mode and dtype, with its step counts."""

    family: str
    size: str
    patch: int
    resolution: int
    batch: int
    mode: str = "train"
    dtype: str = "bf16"
    device: str = "cpu"
    warmup: int = 3
    min_reps: int = 10
    min_time_s: float = 2.0
    max_reps: int = 100
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default (all cores)
    plugins: tuple = field(default_factory=tuple)

    @property
    def latent_size(self) -> int:
        return self.resolution // 8  # the VAE downsamples by 8

    @property
    def tokens_per_image(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def label(self) -> str:
        return f"{self.family}-{self.size}/{self.patch} {self.resolution}px b{self.batch} {self.mode}"


def check_point_args(resolution: int, patch: int, batch: int) -> None:
    """ValueError naming the argument if a point cannot be built."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    if patch < 1:
        raise ValueError(f"patch must be at least 1, got {patch}.")
    if resolution < 8 * patch or resolution % (8 * patch):
        raise ValueError(f"resolution {resolution} must be a positive multiple of 8 * patch = {8 * patch} "
                         "(VAE factor 8 times the patch size).")


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return (isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in text
            or "can't allocate memory" in text)  # the CPU allocator's wording


def failure_status(error: BaseException) -> str:
    """'OOM', 'unavailable' (models.common.BackendUnavailableError: a backend missing here) or 'error'."""
    if is_out_of_memory(error):
        return "OOM"
    if any(cls.__name__ == "BackendUnavailableError" for cls in type(error).__mro__):
        return "unavailable"
    return "error"


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


# ---------------------------------------------------------------------------------- child side

def make_step(model: torch.nn.Module, spec: PointSpec, loss_fn=F.mse_loss, after_backward=None):
    """A closure running one training or inference step on fresh random inputs of the point.

    Training: loss_fn(output in fp32, a random target of the output's shape), backward, then
    after_backward() if given (a gradient exchange of the caller's), then the AdamW step.
    """
    device, n, size = spec.device, spec.batch, spec.latent_size
    x = torch.randn(n, 4, size, size, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device)
    autocast_dtype = AUTOCAST_DTYPES[spec.dtype]

    def autocast():
        return torch.autocast(device_type=device, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    if spec.mode == "infer":
        model.eval()

        def infer_step():
            with torch.no_grad(), autocast():
                model(x, t, y)
        return infer_step

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    target = []  # created at the first (warm-up) step, once the output shape is known

    def train_step():
        with autocast():
            out = model(x, t, y)
        if not target:
            target.append(torch.randn(out.shape, device=device))
        loss = loss_fn(out.float(), target[0])
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def time_steps(step, spec: PointSpec) -> list[float]:
    """Seconds per step, each step timed on its own, until min_reps and min_time_s are both met."""
    cuda = spec.device == "cuda"
    marks, start = [], time.perf_counter()
    while len(marks) < spec.max_reps and (len(marks) < spec.min_reps
                                          or time.perf_counter() - start < spec.min_time_s):
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            marks.append((begin, end))
        else:
            t0 = time.perf_counter()
            step()
            marks.append((t0, time.perf_counter()))
    if cuda:
        torch.cuda.synchronize()
        return [begin.elapsed_time(end) / 1e3 for begin, end in marks]
    return [end - begin for begin, end in marks]


def nvml_used_gib() -> tuple:
    """(device-level used memory in GiB, '') or (None, reason)."""
    try:
        import pynvml

        return pynvml.nvmlDeviceGetMemoryInfo(nvml_handle()).used / 2**30, ""
    except Exception as error:  # no NVML or no match: recorded as unavailable
        return None, _one_line(error)


def measure_point(spec: PointSpec) -> dict:
    """Run one point in this process; never raises (failures become the result's status)."""
    result = failed_result("ok", "")
    if spec.threads:
        torch.set_num_threads(spec.threads)
    result["threads"] = torch.get_num_threads()
    try:
        for plugin in spec.plugins:
            load_plugin(plugin)
        torch.manual_seed(0)
        model = get_family(spec.family).create(spec.size, spec.patch, spec.latent_size, spec.device)
        result["backend"] = str(getattr(model, "backend_description", "not stated by the model"))
        result["n_params"] = sum(p.numel() for p in model.parameters())
        step = make_step(model, spec)
        for _ in range(spec.warmup):
            step()
        if spec.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        result["step_seconds"] = time_steps(step, spec)
        if spec.device == "cuda":
            result["peak_mem_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["peak_mem_nvml_gib"], result["nvml_error"] = nvml_used_gib()
    except Exception as error:  # a failed point is a result: status + message
        result["status"] = failure_status(error)
        result["error"] = _one_line(error)
    # ru_maxrss is in KiB on Linux; this process ran only this point, so it is the point's peak.
    result["peak_mem_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return result


# --------------------------------------------------------------------------------- parent side

def failed_result(status: str, error: str) -> dict:
    return {"status": status, "error": error, "backend": "", "n_params": None, "step_seconds": [],
            "peak_mem_alloc_gib": None, "peak_mem_nvml_gib": None, "nvml_error": "",
            "peak_mem_rss_gib": None, "threads": ""}


def run_point(spec: PointSpec, timeout_s: float) -> dict:
    """Measure `spec` in a fresh `python -m bench.point` process, killed after timeout_s seconds."""
    with tempfile.TemporaryDirectory(prefix="bench_point_") as tmp:
        result_path = Path(tmp) / "result.json"
        spec_json = json.dumps(asdict(spec))
        command = [sys.executable, "-m", "bench.point", "--spec", spec_json, "--result", str(result_path)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        # A new session, so that on timeout the whole group (compile workers too) is killed.
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return failed_result("error", f"timed out after {timeout_s:g} s (per-point --timeout)")
        finally:  # timeout, Ctrl-C or SIGTERM of this process: the point's process group goes too
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
        if result_path.exists():
            return json.loads(result_path.read_text())
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "no message"
    status = "OOM" if "out of memory" in stderr.lower() else "error"
    return failed_result(status, f"point process exited with code {process.returncode}: {last}")
