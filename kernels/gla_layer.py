"""DiG's GLA token mixer between its two projections as one op: gate up-projection, GLA, norm * gate.

The layer's one input GEMM produces proj [N, T, W] = [q | k | v | output gate | forget-gate
low-rank], W = 2HK + 2HV + R (R = 16). From it this op computes, without copying proj apart:
    g_logit = low @ W_up^T + b_up                      [N, T, H*K], one small GEMM (bias in its epilogue)
    o       = GLA(q, k, v, logsigmoid(g_logit) / 16)   the Triton kernels read q, k, v as column slices
                                                       and apply the logsigmoid gate as they load it
    y       = RMSNorm_head(o) * weight * swish(gate)   the fused norm reads the gate slice in place
and returns y [N, T, H*V] for o_proj. Its backward writes dq, dk, dv, dgate and dlow straight into
one gradient of proj, instead of five separate gradients that autograd would add into a zero-filled
[N, T, W] tensor (one memset and five strided copies). Saved for backward: proj, o, the fp32 chunk
states and rstd; the gate logits are recomputed (a 16-wide GEMM).
"""

import torch
from torch import Tensor

from kernels.gla.chunk import Launch, chunk_gla_bwd, chunk_gla_fwd
from kernels.gla.config import GLAConfig
from kernels.gla.ops import fake_states
from kernels.gla.scan_order import scan_flags
from kernels.gla.torch_chunk import chunk_gla_torch
from kernels.gla.tuning import launch_config
from kernels.norm_gate import EPS, norm_gate_backward, norm_gate_forward, rms_norm_swish_gate_ref


def split_projection(proj, heads, head_k, head_v):
    """proj [N, T, W] -> views q, k [N, T, H, K], v, gate [N, T, H, V] and low [N, T, R]."""
    key, value = heads * head_k, heads * head_v
    q, k, v, gate, low = proj.split([key, key, value, value, proj.shape[-1] - 2 * key - 2 * value], dim=-1)
    return (q.unflatten(-1, (heads, head_k)), k.unflatten(-1, (heads, head_k)),
            v.unflatten(-1, (heads, head_v)), gate.unflatten(-1, (heads, head_v)), low)


def gate_logits(low, weight, bias):
    """low [N, T, R] (a strided view) @ weight^T [R, H*K] + bias -> [N, T, H*K] in low's dtype."""
    N, T, R = low.shape
    out = torch.addmm(bias.to(low.dtype), low.reshape(N * T, R), weight.to(low.dtype).t())
    return out.view(N, T, -1)


def gla_layer_ref(proj, gate_up_weight, gate_up_bias, norm_weight, heads, head_k, head_v, scan_order,
                  gate_normalizer, gla_fn=chunk_gla_torch, norm_fn=rms_norm_swish_gate_ref):
    """The plain twin, from separate PyTorch ops; gla_fn takes (q, k, v, g_logits, scan_order=,
    gate_normalizer=) like kernels.gla's functions. proj [N, T, W] -> y [N, T, H*V]."""
    q, k, v, gate, low = split_projection(proj, heads, head_k, head_v)
    g = gate_logits(low, gate_up_weight, gate_up_bias).unflatten(-1, (heads, head_k))
    with torch.autocast(device_type=proj.device.type, enabled=False):
        o, _ = gla_fn(q, k, v, g, scan_order=scan_order, gate_normalizer=gate_normalizer)
    return norm_fn(o, gate, norm_weight).flatten(2)


def _launch(proj, heads, head_k, head_v, reverse, transpose, config, gate_scale):
    q, _, v, _, _ = split_projection(proj, heads, head_k, head_v)
    return Launch(q, v, GLAConfig.from_op_arguments(config), reverse, transpose, gate_scale)


@torch.library.custom_op("dig::gla_layer_fwd", mutates_args=())
def gla_layer_fwd(proj: Tensor, gate_up_weight: Tensor, gate_up_bias: Tensor, norm_weight: Tensor, heads: int,
                  head_k: int, head_v: int, reverse: bool, transpose: bool, config: list[int],
                  gate_scale: float, eps: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y [N, T, H*V], and for backward: o [N, T, H, V], chunk states h, chunk log decays gl, rstd)."""
    q, k, v, gate, low = split_projection(proj, heads, head_k, head_v)
    g = gate_logits(low, gate_up_weight, gate_up_bias).unflatten(-1, (heads, head_k))
    launch = _launch(proj, heads, head_k, head_v, reverse, transpose, config, gate_scale)
    o, h, gl = chunk_gla_fwd(q, k, v, g, head_k ** -0.5, None, launch)
    y, rstd = norm_gate_forward(o, gate, norm_weight, eps)
    return y.flatten(2), o, h, gl, rstd


@gla_layer_fwd.register_fake
def _(proj, gate_up_weight, gate_up_bias, norm_weight, heads, head_k, head_v, reverse, transpose, config,
      gate_scale, eps):
    N, T, _ = proj.shape
    return (proj.new_empty(N, T, heads * head_v), proj.new_empty(N, T, heads, head_v),
            *fake_states(proj, N * heads, T, head_k, head_v, config),
            proj.new_empty(N * T * heads, dtype=torch.float32))


@torch.library.custom_op("dig::gla_layer_bwd", mutates_args=())
def gla_layer_bwd(proj: Tensor, gate_up_weight: Tensor, gate_up_bias: Tensor, norm_weight: Tensor, o: Tensor,
                  h: Tensor, gl: Tensor, rstd: Tensor, dy: Tensor, heads: int, head_k: int, head_v: int,
                  reverse: bool, transpose: bool, config: list[int],
                  gate_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dproj like proj, d gate_up_weight, d gate_up_bias, d norm_weight); dy [N, T, H*V] contiguous."""
    q, k, v, gate, low = split_projection(proj, heads, head_k, head_v)
    dproj = torch.empty_like(proj)
    dq, dk, dv, dgate, dlow = split_projection(dproj, heads, head_k, head_v)
    do, dnorm_weight = norm_gate_backward(o, gate, norm_weight, rstd, dy.view(o.shape), dgate)
    g = gate_logits(low, gate_up_weight, gate_up_bias).unflatten(-1, (heads, head_k))
    dg = torch.empty(g.shape, device=g.device, dtype=g.dtype)
    launch = _launch(proj, heads, head_k, head_v, reverse, transpose, config, gate_scale)
    chunk_gla_bwd(q, k, v, g, h, gl, do, None, head_k ** -0.5, launch, grads=(dq, dk, dv, dg))
    dg = dg.view(-1, heads * head_k)  # [N*T, H*K]
    dlow.copy_((dg @ gate_up_weight.to(dg.dtype)).view(dlow.shape))
    # weight and bias gradient in one GEMM, dg^T @ [low | 1]: the bias column rides along the K = N*T
    # reduction that the weight gradient runs anyway (the copy of the strided low was made before too).
    # As its own column sum, dg.sum(0, dtype=float32), it was 12 reduce launches and 1.38 ms of a
    # 48 ms DiG-S/2 2048 px b4 step on the H200 (edf5460). Like nn.Linear's bias under autocast, the
    # sum is rounded to dg's dtype.
    low_and_one = torch.cat([low.reshape(-1, low.shape[-1]), low.new_ones(dg.shape[0], 1)], dim=1)
    dweight_and_bias = dg.t() @ low_and_one  # [H*K, R + 1]
    dweight = dweight_and_bias[:, :-1].to(gate_up_weight.dtype, copy=True)  # copies: a custom op's
    dbias = dweight_and_bias[:, -1].to(gate_up_bias.dtype, copy=True)  # outputs may not alias
    return dproj, dweight, dbias, dnorm_weight


@gla_layer_bwd.register_fake
def _(proj, gate_up_weight, gate_up_bias, norm_weight, o, h, gl, rstd, dy, heads, head_k, head_v, reverse,
      transpose, config, gate_scale):
    return (torch.empty_like(proj), torch.empty_like(gate_up_weight), torch.empty_like(gate_up_bias),
            torch.empty_like(norm_weight))


def _setup_context(ctx, inputs, output):
    weights, arguments = inputs[:4], inputs[4:11]  # (proj, 3 weights); (heads .. gate_scale); eps
    _, o, h, gl, rstd = output
    ctx.save_for_backward(*weights, o, h, gl, rstd)
    ctx.arguments = arguments
    ctx.mark_non_differentiable(o, h, gl, rstd)
    # None, not zeros, for those four in the backward: autograd filled zeros of each, every layer and
    # step (DiG-S/2 at 2048 px, batch 4: o and the fp32 chunk states h are 50 MB each per layer).
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _do, _dh, _dgl, _drstd):
    grads = torch.ops.dig.gla_layer_bwd(*ctx.saved_tensors, dy.contiguous(), *ctx.arguments)
    return (*grads, None, None, None, None, None, None, None, None)


gla_layer_fwd.register_autograd(_backward, setup_context=_setup_context)


def gla_layer(proj, gate_up_weight, gate_up_bias, norm_weight, heads, head_k, head_v, scan_order="raster",
              gate_normalizer=16.0, chunk_size=None, eps=EPS):
    """The fused GLA token mixer: proj [N, T, 2HK + 2HV + R] (contiguous, the input GEMM's output),
    gate_up_weight [H*K, R], gate_up_bias [H*K], norm_weight [V] -> y [N, T, H*V] in proj's dtype.
    Differentiable in proj and the three weights. scan_order as in kernels/gla/scan_order.py."""
    reverse, transpose = scan_flags(scan_order)
    config = list(launch_config(proj.shape[1], head_k, head_v, proj.dtype, chunk_size))
    y, _, _, _, _ = torch.ops.dig.gla_layer_fwd(proj.contiguous(), gate_up_weight, gate_up_bias, norm_weight,
                                                heads, head_k, head_v, reverse, transpose, config,
                                                1.0 / gate_normalizer, eps)
    return y

