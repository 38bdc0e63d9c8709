"""Compute kernels for gated-linear-attention diffusion backbones (see kernels/gla, kernels/norm_gate)."""

import os


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: Triton runs kernels on CPU tensors (how CI checks numerics)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
