"""Token-by-token GLA recurrence: the reference every faster implementation is tested against."""

import torch
import torch.nn.functional as F

from .checks import check_gla_inputs
from .scan_order import from_scan_order, gather_for_scan


def forget_gate_from_logits(x, normalizer):
    """DiG's log forget gate logsigmoid(x) / normalizer (<= 0), in x's dtype."""
    return F.logsigmoid(x) / normalizer


def naive_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, validate=False, scan_order="raster", gate_normalizer=None):
    """Run S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t one token at a time.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None; scale defaults
    to K**-0.5. scan_order (kernels/gla/scan_order.py) picks the order in which the tokens of the
    sqrt(T) x sqrt(T) grid are scanned; reverse=True scans that order backwards. With
    gate_normalizer, g holds gate logits and the gate is logsigmoid(g) / gate_normalizer.
    Half inputs are computed in fp32, fp32/fp64 inputs in their own dtype (fp64 stays fp64: it is
    the ground truth). Returns o [B, T, H, V] in v's dtype and the final state [B, H, K, V] in the
    compute dtype (None unless output_final_state). Differentiable by autograd; slow (one step
    per token).
    """
    B, T, H, K, V = check_gla_inputs(q, k, v, g, initial_state, scale, validate=validate,
                                     gate_logits=gate_normalizer is not None)
    out_dtype = v.dtype
    compute_dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g = (x.to(compute_dtype) for x in (q, k, v, g))
    if gate_normalizer is not None:
        g = forget_gate_from_logits(g, gate_normalizer)
    (q, k, v, g), reverse, index = gather_for_scan((q, k, v, g), scan_order, reverse)
    if initial_state is None:
        state = q.new_zeros(B, H, K, V)
    else:
        state = initial_state.to(compute_dtype)
    # unbind, not x[:, t]: the backward of x[:, t] writes a full-size zero gradient per token (O(T^2))
    tokens = list(zip(q.unbind(1), k.unbind(1), v.unbind(1), g.unbind(1)))
    outputs = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        q_t, k_t, v_t, g_t = tokens[t]                                  # [B, H, K] ([B, H, V] for v)
        state = state * g_t.exp()[..., None] + k_t[..., None] * v_t[..., None, :]  # [B, H, K, V]
        outputs[t] = scale * (q_t[..., None] * state).sum(-2)          # [B, H, V]
    o = torch.stack(outputs, dim=1)                                       # [B, T, H, V]
    if index is not None:
        o = from_scan_order(o, index)
    return o.to(out_dtype), (state if output_final_state else None)
