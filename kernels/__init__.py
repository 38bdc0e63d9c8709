"""Compute kernels for gated-linear-attention diffusion backbones (see kernels/gla)."""
