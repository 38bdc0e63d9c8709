"""The one relative error of the bench: kernel rows against their float64 reference, and the checks of
compiled and captured steps against eager."""

import math

import torch


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN when out holds NaN or inf (NaN never passes a threshold),
    0 when both are exactly 0."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out64).all():
        return float("nan")
    diff, norm = (out64 - ref64).norm().item(), ref64.norm().item()
    return diff / norm if norm else (0.0 if diff == 0.0 else float("inf"))


def worst_error(outs, refs) -> float:
    """The largest relative_error of pairs; NaN if any is NaN (max() would drop a NaN not first)."""
    errors = [relative_error(out, ref) for out, ref in zip(outs, refs)]
    return float("nan") if any(math.isnan(e) for e in errors) else max(errors)
