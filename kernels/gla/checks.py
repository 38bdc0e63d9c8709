"""Argument checks shared by every GLA implementation (naive, PyTorch chunked, Triton).

Layout: q, k, g are [B, T, H, K]; v is [B, T, H, V]; the state is fp32 [B, H, K, V].
Shape, dtype and device checks are free (metadata only) and always run. Value checks
(gates <= 0, no NaN) need a device sync, so they run only with ``validate=True`` or when
the environment variable ``GLA_VALIDATE=1`` is set.
"""

import os

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def validation_requested(validate: bool) -> bool:
    """True if value checks should run: asked for by argument or by GLA_VALIDATE=1."""
    return validate or os.environ.get("GLA_VALIDATE", "0") not in ("", "0")


def check_gla_inputs(q, k, v, g, initial_state=None, scale=None, chunk_size=None,
                     validate=False, allowed_dtypes=SUPPORTED_DTYPES, gate_logits=False):
    """Raise ValueError naming the argument if the GLA inputs are inconsistent.

    gate_logits: g holds the gate's pre-activation (any sign), not the log gate (<= 0).

    Returns (B, T, H, K, V).
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4:
            raise ValueError(f"{name} must have 4 dimensions [B, T, H, D], got shape {tuple(x.shape)}.")
        if x.dtype not in allowed_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed_dtypes)
            raise ValueError(f"{name} has dtype {x.dtype}; supported dtypes are {names}.")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; "
                             "all inputs must share a device.")
        if x.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {x.dtype} but q has {q.dtype}; "
                             "q, k, v and g must share a dtype.")
    B, T, H, K = q.shape
    if T < 1:
        raise ValueError(f"q must hold at least one token (T >= 1), got T={T}.")
    for what, size in (("a batch (B >= 1)", B), ("a head (H >= 1)", H), ("a key dimension (K >= 1)", K)):
        if size < 1:  # the chunked and Triton paths cannot split an empty dimension into chunks
            raise ValueError(f"q must have at least {what}, got shape {tuple(q.shape)} [B, T, H, K].")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}.")
    if g.shape != q.shape:
        raise ValueError(f"g must have the shape of q {tuple(q.shape)}, got {tuple(g.shape)}.")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"v must have shape [B={B}, T={T}, H={H}, V], got {tuple(v.shape)}.")
    V = v.shape[3]
    if V < 1:
        raise ValueError(f"v must have a value dimension V >= 1, got shape {tuple(v.shape)} [B, T, H, V].")
    if initial_state is not None:
        if not isinstance(initial_state, torch.Tensor):
            raise ValueError("initial_state must be a torch.Tensor or None.")
        if tuple(initial_state.shape) != (B, H, K, V):
            raise ValueError(f"initial_state must have shape [B, H, K, V] = {(B, H, K, V)}, "
                             f"got {tuple(initial_state.shape)}.")
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}.")
        if not initial_state.dtype.is_floating_point:
            raise ValueError(f"initial_state must be floating point, got {initial_state.dtype}.")
    if scale is not None and not isinstance(scale, (int, float)):
        raise ValueError(f"scale must be a Python number or None, got {type(scale).__name__}.")
    if chunk_size is not None and chunk_size not in (16, 32, 64, 128):
        raise ValueError(f"chunk_size must be one of 16, 32, 64, 128 or None, got {chunk_size!r}.")
    if validation_requested(validate):
        check_gla_values(q, k, v, g, initial_state, gate_logits)
    return B, T, H, K, V


def check_gla_values(q, k, v, g, initial_state=None, gate_logits=False):
    """Value checks that cost a device sync: gates must be <= 0 (unless g holds gate logits) and
    nothing may be NaN."""
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("initial_state", initial_state)):
        if x is not None and torch.isnan(x).any():
            raise ValueError(f"{name} contains NaN.")
    if not gate_logits and (g > 0).any():
        raise ValueError(f"g must be a log-space forget gate (g <= 0); its maximum is {g.max().item():.4g}.")
