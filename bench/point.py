"""One benchmark point, measured in its own process: JSON spec in, JSON result out on stdout.

    python -m bench.point --spec '{"family": "DiG", "size": "S", ...}' --deadline 65 --parent PID

Started by `bench.harness.run_point`, so that an out-of-memory error cannot poison the next
point. `measure_point(spec)` builds the model, warms up, times the steps and reads the memory
counters; it never raises (a failure is a result, with its status).
"""

import argparse
import ctypes
import json
import math
import os
import resource
import signal
import sys
import time

import torch

from .env import nvml_handle
from .errors import one_line
from .exec_modes import prepare_step
from .harness import failed_result
from .registry import get_family, load_plugin
from .spec import PointSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
NUM_CLASSES = 1000  # ImageNet labels; timesteps are drawn from [0, 1000) as in DiT
PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def point_inputs(spec: PointSpec) -> tuple:
    """Fresh random inputs of the point, never zeros: latents [N, 4, I, I], timesteps, labels [N]."""
    device, n, size = spec.device, spec.batch, spec.latent_size
    return (torch.randn(n, 4, size, size, device=device), torch.randint(0, 1000, (n,), device=device),
            torch.randint(0, NUM_CLASSES, (n,), device=device))


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
        return None, one_line(error)


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
        prepared = prepare_step(model, *point_inputs(spec), spec.mode, AUTOCAST_DTYPES[spec.dtype],
                                spec.exec_mode, warmup=max(1, spec.warmup), compile_mode=spec.compile_mode)
        result.update(prepared.setup)
        if spec.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        result["step_seconds"] = time_steps(prepared.step, spec)
        if spec.device == "cuda":
            # A graph's replays allocate nothing: its working set is the capture's peak.
            timed_peak = torch.cuda.max_memory_allocated() / 2**30
            result["peak_mem_alloc_gib"] = max(timed_peak, result.get("capture_peak_mem_alloc_gib") or 0.0)
            result["peak_mem_nvml_gib"], result["nvml_error"] = nvml_used_gib()
        if spec.profile_steps:
            from .profile import kernel_times

            result["kernels"] = [[k.name, k.calls, k.gpu_ms] for k in kernel_times(prepared.step,
                                                                                   spec.profile_steps)]
    except Exception as error:  # a failed point is a result: status + message
        result["status"] = failure_status(error)
        result["error"] = one_line(error)
    # ru_maxrss is in KiB on Linux; this process ran only this point, so it is the point's peak.
    result["peak_mem_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    return result


def stay_with_parent(parent_pid: int, deadline_s: float) -> None:
    """End this process with the sweep that started it: SIGKILL from the kernel when the parent
    dies (Linux), and SIGALRM, whose default action ends the process, at the deadline (anywhere)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the death signal was set up
        os._exit(1)
    signal.alarm(max(1, math.ceil(deadline_s)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="PointSpec as JSON")
    parser.add_argument("--deadline", type=float, required=True, help="seconds after which to end itself")
    parser.add_argument("--parent", type=int, required=True, help="process id of the sweep")
    args = parser.parse_args(argv)
    stay_with_parent(args.parent, args.deadline)
    result_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what the model prints goes to stderr
    fields = json.loads(args.spec)
    fields["plugins"] = tuple(fields.get("plugins", ()))
    result = measure_point(PointSpec(**fields))
    result_out.write(json.dumps(result) + "\n")
    result_out.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's teardown (~1 s with torch loaded): nothing is left to do


if __name__ == "__main__":
    main()
