"""Gated linear attention layer exactly as DiG configures fla's GatedLinearAttention.

Hidden size D, H heads: q_proj, k_proj D -> D/2 (per-head K = D/2H), v_proj, g_proj, o_proj D -> D
(per-head V = D/H), no biases; low-rank forget gate Linear(D, 16) -> Linear(16, D/2) + bias,
g = logsigmoid(.) / 16; output = o_proj(RMSNorm_head(o) * weight * swish(g_proj(x))), eps 1e-6.
The recurrence itself (S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = K^-0.5 q_t S_t) is computed by
one of several interchangeable backends, chosen by name at construction.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kernels import interpreting
from kernels.norm_gate import SUPPORTED_DTYPES as FUSED_NORM_DTYPES
from kernels.norm_gate import rms_norm_swish_gate_fused

from .common import BackendUnavailableError, check_heads

GLA_BACKENDS = ("auto", "triton", "torch", "fla", "naive")
GATE_LOW_RANK_DIM = 16
GATE_LOGIT_NORMALIZER = 16
NORM_EPS = 1e-6


def resolve_gla_backend(name):
    """Backend name -> (resolved name, gla function with our [B, T, H, K] signature).

    Raises ValueError for an unknown name and BackendUnavailableError when the backend cannot run here;
    never substitutes another backend.
    """
    if name not in GLA_BACKENDS:
        raise ValueError(f"gla_backend must be one of {', '.join(GLA_BACKENDS)}; got {name!r}.")
    if name == "auto":
        name = "triton" if torch.cuda.is_available() else "torch"
    if name in ("triton", "fla") and not torch.cuda.is_available() and not interpreting():
        raise BackendUnavailableError(f"gla_backend={name!r} runs Triton kernels, which need a CUDA GPU "
                                      f"(or TRITON_INTERPRET=1 on CPU); no GPU is visible here.")
    if name == "triton":
        try:
            from kernels.gla import chunk_gla
        except ImportError as error:
            raise BackendUnavailableError(f"gla_backend='triton' needs kernels.gla.chunk_gla, which does not "
                                          f"import: {error}") from error
        return name, chunk_gla
    if name == "fla":
        try:
            from fla.ops.gla import chunk_gla as fla_chunk_gla
        except ImportError as error:
            raise BackendUnavailableError("gla_backend='fla' needs flash-linear-attention (pip install "
                                          f"flash-linear-attention); import failed: {error}") from error
        return name, fla_chunk_gla
    if name == "torch":
        from kernels.gla import chunk_gla_torch
        return name, chunk_gla_torch
    from kernels.gla import naive_recurrent_gla
    return name, naive_recurrent_gla


def output_norm(o, gate, weight):
    """The layer's RMSNorm * weight * swish(gate) [..., V] -> [..., V]: one fused Triton kernel each way
    on CUDA (fla's FusedRMSNormSwishGate does the same in the paper's code), else the PyTorch ops.

    The PyTorch version is ~12 forward and ~20 backward kernels per layer and keeps fp32 copies for
    backward; DiG-S/2 at 256 px, batch 4, spends 70 ms per training step on the CPU launching ~2200
    kernels for 15.5 ms of GPU work (H200 profile), so every launch saved counts there.
    """
    if o.is_cuda and gate.dtype == o.dtype and o.dtype in FUSED_NORM_DTYPES:
        return rms_norm_swish_gate_fused(o, gate, weight, NORM_EPS)
    return rms_norm_swish_gate(o, gate, weight)


def rms_norm_swish_gate(o, gate, weight, eps=NORM_EPS):
    """RMSNorm over the last dim * weight * swish(gate), like fla's FusedRMSNormSwishGate.

    o, gate [..., V]; weight [V] -> [..., V] in o's dtype. Computed in fp32 at least (fp64 stays fp64).
    """
    dtype = torch.promote_types(o.dtype, torch.float32)
    o_wide = o.to(dtype)
    o_wide = o_wide * torch.rsqrt(o_wide.pow(2).mean(-1, keepdim=True) + eps) * weight.to(dtype)
    return (o_wide * F.silu(gate.to(dtype))).to(o.dtype)


class GatedLinearAttention(nn.Module):
    """GLA token mixer [N, T, D] -> [N, T, D]; scans the tokens in the order given (causal)."""

    def __init__(self, hidden_size, num_heads, gla_backend="auto"):
        super().__init__()
        check_heads(hidden_size, num_heads, head_split=2)  # K = D / (2H) must be an integer
        self.num_heads = num_heads
        self.head_k_dim = hidden_size // (2 * num_heads)  # expand_k = 0.5
        self.head_v_dim = hidden_size // num_heads  # expand_v = 1
        self.backend, self.gla_fn = resolve_gla_backend(gla_backend)
        key_dim = hidden_size // 2
        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.g_proj = nn.Linear(hidden_size, hidden_size, bias=False)  # output gate
        self.gk_proj = nn.Sequential(nn.Linear(hidden_size, GATE_LOW_RANK_DIM, bias=False),
                                     nn.Linear(GATE_LOW_RANK_DIM, key_dim, bias=True))  # forget gate
        self.g_norm_weight = nn.Parameter(torch.ones(self.head_v_dim))  # per-head RMSNorm, shared by heads
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self):
        """fla's GLA init: xavier_uniform with gain 2^-2.5 on every Linear, zero biases, norm weight 1."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight, gain=2 ** -2.5)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.ones_(self.g_norm_weight)

    def forward(self, x):
        """x [N, T, D] -> [N, T, D]."""
        if self.backend in ("triton", "fla") and not x.is_cuda and not interpreting():
            raise BackendUnavailableError(f"gla_backend={self.backend!r} got CPU tensors; Triton runs them "
                                          f"only with TRITON_INTERPRET=1.")
        H, K, V = self.num_heads, self.head_k_dim, self.head_v_dim
        q = self.q_proj(x).unflatten(-1, (H, K))  # (N, T, H, K)
        k = self.k_proj(x).unflatten(-1, (H, K))  # (N, T, H, K)
        v = self.v_proj(x).unflatten(-1, (H, V))  # (N, T, H, V)
        g = F.logsigmoid(self.gk_proj(x)) / GATE_LOGIT_NORMALIZER  # log forget gate, <= 0
        g = g.unflatten(-1, (H, K))  # (N, T, H, K)
        # Under autocast q is already in the autocast dtype; every backend gets one dtype for q, k, v, g
        # (kernels.gla and fla both require it) and runs with autocast off, so it computes in that dtype.
        dtype = q.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            o, _ = self.gla_fn(q, k.to(dtype), v.to(dtype), g.to(dtype))  # (N, T, H, V)
        gate = self.g_proj(x).unflatten(-1, (H, V))  # (N, T, H, V)
        o = output_norm(o, gate, self.g_norm_weight)
        return self.o_proj(o.flatten(2))
