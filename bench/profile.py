"""Where a step's GPU time goes: torch.profiler over a few steps, kernels grouped by what they do.

Categories (by kernel name): GEMM (cuBLAS/CUTLASS), attention (cuDNN / FlashAttention kernels), GLA
(our Triton GLA kernels and fla's), fused glue (our other Triton kernels), SSM scan (mamba,
causal-conv1d), convolution, optimizer, compiled (Inductor-generated Triton kernels), and
"elementwise/copy/reduction" (PyTorch's own kernels: the glue a fused model should not need).
Reported per step: GPU ms and kernel launches per category, and the kernels that take the most time.
"""

import re
from dataclasses import dataclass

PROFILE_CSV = "profile.csv"
# Long format, one row per (point, what, name): what = "coarse" (GEMM / GLA / attention / everything
# else), "category" (CATEGORIES) or "kernel" (the TOP_KERNELS longest kernels by name).
PROFILE_POINT = ["family", "model", "size", "patch", "resolution", "batch", "mode", "exec_mode", "dtype"]
PROFILE_COLUMNS = [*PROFILE_POINT, "what", "name", "gpu_ms_per_step", "launches_per_step", "share",
                   "total_gpu_ms_per_step", "steps", "status", "error", "backend"]
PROFILE_KEY = (*PROFILE_POINT, "what", "name")
TOP_KERNELS = 15

# First match wins; patterns are searched in the kernel's name (case-insensitive).
CATEGORIES = (
    ("optimizer", r"multi_tensor_apply|adam"),
    ("attention", r"fmha|flash_fwd|flash_bwd|sdpa|attention|cudnn_generated_fort_native"),
    ("GEMM", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|splitkreduce"),
    ("GLA", r"gla|chunk_state_scan|chunk_fwd|chunk_bwd|chunk_local_cumsum|chunk_.*kernel_h"),
    ("fused glue", r"norm_gate|ln_modulate|gated_residual|swiglu|dwconv3x3|layer_norm_fwd|layer_norm_bwd"),
    ("SSM scan", r"selective_scan|causal_conv1d"),
    ("convolution", r"conv|depthwise|implicit_convolve|winograd"),
    ("compiled", r"^triton_(poi|red|per|tem)_"),
    ("elementwise/copy/reduction", r"elementwise|vectorized|reduce|copy|memcpy|memset|fill|cat_|index|"
                                   r"softmax|layer_norm|norm_|gather|scatter|arange|where|unrolled"),
)
COARSE = {"GEMM": "GEMM", "GLA": "GLA", "attention": "attention"}  # everything else: "everything else"


def category(kernel_name: str) -> str:
    for name, pattern in CATEGORIES:
        if re.search(pattern, kernel_name, flags=re.IGNORECASE):
            return name
    return "other"


@dataclass
class KernelTime:
    name: str
    calls: int
    gpu_ms: float


def kernel_times(step, steps: int = 3) -> list[KernelTime]:
    """Run `step` (already warmed up) `steps` times under the profiler; per kernel name: calls and GPU
    ms, each divided by `steps` (so per step)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    totals: dict[str, list] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        entry = totals.setdefault(event.name, [0, 0.0])
        entry[0] += 1
        entry[1] += event.time_range.elapsed_us() / 1e3
    return sorted((KernelTime(name, calls // steps, ms / steps) for name, (calls, ms) in totals.items()),
                  key=lambda k: -k.gpu_ms)


def split(kernels: list[KernelTime]) -> dict:
    """{category: (ms per step, launches per step)}, plus the coarse GEMM / GLA / attention /
    everything else split under the key "coarse"."""
    fine: dict[str, list] = {}
    coarse: dict[str, list] = {}
    for kernel in kernels:
        name = category(kernel.name)
        for table, key in ((fine, name), (coarse, COARSE.get(name, "everything else"))):
            entry = table.setdefault(key, [0.0, 0])
            entry[0] += kernel.gpu_ms
            entry[1] += kernel.calls
    return {"fine": fine, "coarse": coarse}


def summary(kernels: list[KernelTime], top: int = 12) -> str:
    """Printable: per-category ms/step and launches/step with shares, then the top kernels."""
    total = sum(k.gpu_ms for k in kernels) or float("nan")
    parts = split(kernels)
    lines = []
    for title, table in (("coarse", parts["coarse"]), ("by category", parts["fine"])):
        lines.append(f"{title}: (GPU ms/step, share, launches/step)")
        for name, (ms, calls) in sorted(table.items(), key=lambda item: -item[1][0]):
            lines.append(f"  {name:<28} {ms:9.2f} ms {100 * ms / total:5.1f}% {calls:6d}")
    launches = sum(k.calls for k in kernels)
    lines.append(f"total GPU time {total:.2f} ms/step in {launches} launches; top kernels:")
    for k in kernels[:top]:
        lines.append(f"  {k.gpu_ms:8.2f} ms {k.calls:5d}x [{category(k.name)}] {k.name[:90]}")
    return "\n".join(lines)


def profile_rows(spec, result: dict, model: str, env: dict) -> list[dict]:
    """The rows of one profiled point (status rows only, when it did not run)."""
    point = {"family": spec.family, "model": model, "size": spec.size, "patch": spec.patch,
             "resolution": spec.resolution, "batch": spec.batch, "mode": spec.mode,
             "exec_mode": spec.exec_mode, "dtype": spec.dtype, "steps": spec.profile_steps,
             "status": result["status"], "error": result["error"], "backend": result["backend"], **env}
    if result["status"] != "ok":
        return [dict(point, what="coarse", name="total", gpu_ms_per_step="", launches_per_step="", share="",
                     total_gpu_ms_per_step="")]
    kernels = [KernelTime(*entry) for entry in result["kernels"]]
    total = sum(k.gpu_ms for k in kernels)
    parts = split(kernels)
    rows = [dict(point, what=what, name=name, gpu_ms_per_step=ms, launches_per_step=calls, share=ms / total,
                 total_gpu_ms_per_step=total)
            for what, table in (("coarse", parts["coarse"]), ("category", parts["fine"]))
            for name, (ms, calls) in table.items()]
    rows += [dict(point, what="kernel", name=f"[{category(k.name)}] {k.name[:200]}", gpu_ms_per_step=k.gpu_ms,
                  launches_per_step=k.calls, share=k.gpu_ms / total, total_gpu_ms_per_step=total)
             for k in kernels[:TOP_KERNELS]]
    return rows
