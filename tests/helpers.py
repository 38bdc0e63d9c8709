"""Helpers shared by the tests: relative error in float64, where NaN or inf never passes, the
random weights that make a zero-initialised model's every branch count, where Triton runs, and a
record of the zero-filled tensors an autograd backward makes."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import interpreting

# Triton kernels run on CPU tensors under TRITON_INTERPRET=1 (how CI checks numerics), else on the GPU.
TRITON_DEVICE = "cpu" if interpreting() else "cuda"
needs_triton_device = pytest.mark.skipif(not (interpreting() or torch.cuda.is_available()),
                                         reason="Triton kernels need a CUDA GPU or TRITON_INTERPRET=1")


def rel_err(out, ref):
    """||out - ref|| / ||ref|| computed in float64; inf if out holds NaN or inf, so it can never pass.

    A reference of norm 0 gives 0 when out is exactly 0 too and inf otherwise.
    """
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(device=out64.device, dtype=torch.float64)
    if out64.shape != ref64.shape:
        raise ValueError(f"out has shape {tuple(out64.shape)} but ref has {tuple(ref64.shape)}.")
    if not torch.isfinite(ref64).all():
        raise ValueError("ref contains NaN or inf: the reference itself is broken.")
    if not torch.isfinite(out64).all():
        return math.inf
    diff_norm = (out64 - ref64).norm().item()
    ref_norm = ref64.norm().item()
    if ref_norm == 0.0:
        return 0.0 if diff_norm == 0.0 else math.inf
    return diff_norm / ref_norm


def perturb_zero_init(model, std=0.02):
    """Give every zero-initialised Linear (adaLN-Zero modulations, the output layer) random weights,
    and its bias too where that is zero, so that every branch contributes to the output and its
    gradient; at init these models output exactly 0."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(std=std)
                if module.bias is not None and not module.bias.any():
                    module.bias.normal_(std=std)


def assert_close_rel(name, out, ref, tol):
    """Assert rel_err(out, ref) <= tol, with a message that says what differs and by how much."""
    err = rel_err(out, ref)
    if err <= tol:
        return
    out64 = out.detach().to(torch.float64)
    ref64 = ref.detach().to(device=out64.device, dtype=torch.float64)
    nonfinite = (~torch.isfinite(out64)).sum().item()
    max_abs = (out64 - ref64).abs().nan_to_num(nan=math.inf).max().item()
    raise AssertionError(
        f"{name}: relative error {err:.3e} exceeds tolerance {tol:.3e} "
        f"(shape {tuple(out.shape)}, dtype {out.dtype}, non-finite entries {nonfinite}, "
        f"max |out - ref| {max_abs:.3e}, ||ref|| {ref64.norm().item():.3e})."
    )


class ZeroFills(TorchDispatchMode):
    """Records the shapes of the zero-filled tensors made while it is active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.zeros, torch.ops.aten.new_zeros, torch.ops.aten.zero_,
                                   torch.ops.aten.zeros_like, torch.ops.aten.fill_):
            self.shapes.append(tuple(out.shape))
        return out
