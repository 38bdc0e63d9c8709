"""Token-by-token GLA recurrence: the reference every faster implementation is tested against."""

import torch

from .checks import check_gla_inputs


def naive_recurrent_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, validate=False):
    """Run S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t one token at a time.

    q, k, g: [B, T, H, K]; v: [B, T, H, V]; initial_state: [B, H, K, V] or None; scale defaults
    to K**-0.5. reverse=True scans from t=T-1 down to 0. Half inputs are computed in fp32,
    fp32/fp64 inputs in their own dtype (fp64 stays fp64: it is the ground truth).
    Returns o [B, T, H, V] in v's dtype and the final state [B, H, K, V] in the compute dtype
    (None unless output_final_state). Differentiable by autograd; slow (one step per token).
    """
    B, T, H, K, V = check_gla_inputs(q, k, v, g, initial_state, scale, validate=validate)
    out_dtype = v.dtype
    compute_dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    scale = K ** -0.5 if scale is None else scale
    q, k, v, g = (x.to(compute_dtype) for x in (q, k, v, g))
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
    o = torch.stack(outputs, dim=1).to(out_dtype)                         # [B, T, H, V]
    return o, (state if output_final_state else None)
