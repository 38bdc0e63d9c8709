"""Environment of a benchmark run: device, machine, driver, versions, optional backends, git commit.

torch is imported inside the functions that need it, so that reading or plotting results does not.
"""

import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import subprocess

from . import REPO_ROOT
from .errors import one_line
from .registry import import_error

# Packages whose version changes the numbers (recorded as JSON in every row).
TRACKED_PACKAGES = ("numpy", "einops", "timm", "fla-core", "flash-linear-attention", "flash-attn",
                    "mamba-ssm", "causal-conv1d", "nvidia-ml-py", "pandas", "matplotlib")
OPTIONAL_BACKENDS = ("flash_attn", "fla.ops.gla", "mamba_ssm")


def device_kind(requested: str = "auto") -> str:
    """'cuda' or 'cpu'; 'auto' picks CUDA when a GPU is visible. ValueError for 'cuda' without one."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU.")
    return requested


def device_name(device: str) -> str:
    """The GPU's name (part of every result key), or 'cpu'."""
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def cpu_model() -> str:
    """The CPU's model name and logical core count, e.g. 'AMD EPYC (2 logical cores)' (part of every
    result key: a CPU run's speed is the CPU's, and a GPU run's small points are bound by it)."""
    name = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                        "")
    except OSError:  # not Linux
        pass
    name = name or platform.processor() or platform.machine() or "unknown CPU"
    return f"{name} ({os.cpu_count()} logical cores)"


def nvml_handle():
    """NVML handle of torch's current GPU, matched by UUID; raises if NVML cannot find it."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")


def driver_version() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception as error:  # no NVML library on a CPU machine: say so in the column
        return f"unknown ({one_line(error, 80)})"


def package_versions() -> dict:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str:
    """`git describe --always --dirty` of the repository, or 'none' outside a repo / before a commit.

    $BENCH_GIT_COMMIT overrides it, for runs on a copy of the tree whose .git is missing or stale: the
    GPU machine's copy reported an older commit plus "-dirty" for rows measured at a newer one.
    """
    if os.environ.get("BENCH_GIT_COMMIT"):
        return os.environ["BENCH_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, check=False,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "none"


@functools.cache
def environment(device: str) -> dict:
    """Columns recorded in every CSV row (except the timestamp, taken per row)."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # Triton ships Linux wheels only
        triton_version = "not installed"
    return {
        "gpu": device_name(device),
        "cpu": cpu_model(),
        "driver": driver_version() if device == "cuda" else "",
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "packages": json.dumps(package_versions(), sort_keys=True),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
    }


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def sdpa_backend_error(backend_name: str) -> str | None:
    """None if SDPA's `backend_name` (FLASH_ATTENTION, CUDNN_ATTENTION) runs a DiT-shaped call here."""
    import torch

    if not torch.cuda.is_available():
        return "needs CUDA"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 6, 256, 64, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(getattr(SDPBackend, backend_name)):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize()
    except Exception as error:  # any failure means: not usable here, with the reason
        return one_line(error, 200)
    return None


def describe() -> list[tuple[str, str]]:
    """(what, value) lines for `bench.py env`."""
    import torch

    device = device_kind()
    env = environment(device)
    lines = [(key, env[key]) for key in ("gpu", "cpu", "host", "driver", "cuda", "torch", "triton", "python",
                                          "git_commit")]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        lines.append(("gpu memory", f"{props.total_memory / 2**30:.1f} GiB, {count} GPU(s)"))
    lines.append(("packages", env["packages"]))
    for package in ("kernels", "models", "bench"):  # run from the checkout, never an installed copy
        spec = importlib.util.find_spec(package)
        lines.append((f"import {package}", spec.origin if spec and spec.origin else "not found"))
    for module in OPTIONAL_BACKENDS:
        reason = import_error(module)
        lines.append((module, "available" if reason is None else f"unavailable: {reason}"))
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
        reason = sdpa_backend_error(backend)
        lines.append((f"SDPA {backend}", "available" if reason is None else f"unavailable: {reason}"))
    return lines
