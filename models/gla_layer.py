"""Gated linear attention layer exactly as DiG configures fla's GatedLinearAttention, with fused projections.

Hidden size D, H heads: q, k D -> D/2 (per-head K = D/2H), v, output gate D -> D (per-head V = D/H),
forget gate low rank D -> 16 -> D/2 (+ bias), g = logsigmoid(.) / 16, output =
o_proj(RMSNorm_head(o) * weight * swish(gate)), eps 1e-6; no other biases. The recurrence itself
(S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = K^-0.5 q_t S_t) runs in one of several backends.

The five projections of the input are one Linear (`in_proj`, D -> 3D + 16, rows [q | k | v | gate |
forget-gate low rank]): under autocast the input is cast and saved once instead of five times, and
one GEMM replaces five; the fused op behind it (kernels/gla_layer.py) reads the slices in
place. A state dict in the layout with one Linear per projection (q_proj, k_proj,
v_proj, g_proj, gk_proj.0/1, as models/dig_reference.py and earlier checkpoints have it) loads
through a hook that concatenates those weights.
"""

import torch
from torch import nn

from kernels import interpreting
from kernels.gla.scan_order import from_scan_order, scan_index, to_scan_order
from kernels.gla_layer import gla_layer, gla_layer_ref
from kernels.norm_gate import SUPPORTED_DTYPES as FUSED_NORM_DTYPES
from kernels.norm_gate import rms_norm_swish_gate_fused, rms_norm_swish_gate_ref

from .common import BackendUnavailableError, check_heads

GLA_BACKENDS = ("auto", "triton", "torch", "fla", "naive")
GATE_LOW_RANK_DIM = 16
GATE_LOGIT_NORMALIZER = 16
NORM_EPS = 1e-6
# One Linear per projection in the reference layout, in the order of in_proj's rows.
LEGACY_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "g_proj", "gk_proj.0")


def fla_in_scan_order(fla_chunk_gla):
    """fla's chunk_gla with our signature: fla has no scan orders or gate logits, so the tokens are
    gathered into scan order (a copy of q, k, v, g), the gate is formed by PyTorch ops, and the output
    is scattered back to raster order (a copy); raster order needs no copy."""

    def gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, scan_order="raster",
            gate_normalizer=None):
        if gate_normalizer is not None:
            g = torch.nn.functional.logsigmoid(g) / gate_normalizer
        index = None if scan_order == "raster" else scan_index(q.shape[1], scan_order, device=q.device)
        if index is not None:
            q, k, v, g = (to_scan_order(x, index) for x in (q, k, v, g))
        o, state = fla_chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state)
        return (o if index is None else from_scan_order(o, index)), state
    return gla


def resolve_gla_backend(name):
    """Backend name -> (resolved name, gla function with kernels.gla's signature, scan_order and
    gate_normalizer included).

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
        return name, fla_in_scan_order(fla_chunk_gla)
    if name == "torch":
        from kernels.gla import chunk_gla_torch
        return name, chunk_gla_torch
    from kernels.gla import naive_recurrent_gla
    return name, naive_recurrent_gla


def output_norm(o, gate, weight):
    """The layer's RMSNorm * weight * swish(gate) [..., V] -> [..., V]: one fused Triton kernel each way
    on CUDA (fla's FusedRMSNormSwishGate does the same in the paper's code), else the PyTorch ops
    (~12 forward and ~20 backward kernels per layer)."""
    if o.is_cuda and gate.dtype == o.dtype and o.dtype in FUSED_NORM_DTYPES:
        return rms_norm_swish_gate_fused(o, gate, weight, NORM_EPS)
    return rms_norm_swish_gate_ref(o, gate, weight, NORM_EPS)


def fuse_legacy_projections(state_dict, prefix):
    """Load hook: one-Linear-per-projection keys under `prefix` -> in_proj.weight and gate_up.*, in place."""
    names = [f"{prefix}{name}.weight" for name in LEGACY_PROJECTIONS]
    if not all(name in state_dict for name in names):
        return
    state_dict[f"{prefix}in_proj.weight"] = torch.cat([state_dict.pop(name) for name in names])
    for field in ("weight", "bias"):
        state_dict[f"{prefix}gate_up.{field}"] = state_dict.pop(f"{prefix}gk_proj.1.{field}")


def set_heads(layer, hidden_size, num_heads, gla_backend):
    """A GLA layer's head layout (num_heads, head_k_dim = D/2H, head_v_dim = D/H) and backend (backend,
    gla_fn) as attributes of `layer`; returns the key width D/2."""
    check_heads(hidden_size, num_heads, head_split=2)  # K = D / (2H) must be an integer
    layer.num_heads = num_heads
    layer.head_k_dim = hidden_size // (2 * num_heads)  # expand_k = 0.5
    layer.head_v_dim = hidden_size // num_heads  # expand_v = 1
    layer.backend, layer.gla_fn = resolve_gla_backend(gla_backend)
    return hidden_size // 2


class GatedLinearAttention(nn.Module):
    """GLA token mixer [N, T, D] -> [N, T, D] over the token grid, scanned in a given scan order."""

    def __init__(self, hidden_size, num_heads, gla_backend="auto"):
        super().__init__()
        key_dim = set_heads(self, hidden_size, num_heads, gla_backend)
        # rows: q (D/2), k (D/2), v (D), output gate (D), forget gate low rank (16)
        self.projection_sizes = (key_dim, key_dim, hidden_size, hidden_size, GATE_LOW_RANK_DIM)
        self.in_proj = nn.Linear(hidden_size, sum(self.projection_sizes), bias=False)
        self.gate_up = nn.Linear(GATE_LOW_RANK_DIM, key_dim, bias=True)  # forget gate, low rank -> D/2
        self.g_norm_weight = nn.Parameter(torch.ones(self.head_v_dim))  # per-head RMSNorm, shared by heads
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self._register_load_state_dict_pre_hook(
            lambda state_dict, prefix, *args: fuse_legacy_projections(state_dict, prefix))
        self.reset_parameters()

    def reset_parameters(self):
        """fla's GLA init: xavier_uniform with gain 2^-2.5 on every projection's own [out, D] block (as if
        each were its own Linear), zero biases, norm weight 1."""
        with torch.no_grad():
            for block in self.in_proj.weight.split(self.projection_sizes):
                nn.init.xavier_uniform_(block, gain=2 ** -2.5)
        for linear in (self.gate_up, self.o_proj):
            nn.init.xavier_uniform_(linear.weight, gain=2 ** -2.5)
        nn.init.zeros_(self.gate_up.bias)
        nn.init.ones_(self.g_norm_weight)

    def forward(self, x, scan_order="raster"):
        """x [N, T, D] in raster order -> [N, T, D]; the scan reads the tokens in `scan_order`."""
        if self.backend in ("triton", "fla") and not x.is_cuda and not interpreting():
            raise BackendUnavailableError(f"gla_backend={self.backend!r} got CPU tensors; Triton runs them "
                                          f"only with TRITON_INTERPRET=1.")
        proj = self.in_proj(x)  # (N, T, 2D + 2D/2 + 16): q | k | v | gate | low rank
        weights = (self.gate_up.weight, self.gate_up.bias, self.g_norm_weight)
        shape = (self.num_heads, self.head_k_dim, self.head_v_dim)
        if self.backend == "triton":
            y = gla_layer(proj, *weights, *shape, scan_order, GATE_LOGIT_NORMALIZER, eps=NORM_EPS)
        else:
            y = gla_layer_ref(proj, *weights, *shape, scan_order, GATE_LOGIT_NORMALIZER, gla_fn=self.gla_fn,
                              norm_fn=output_norm)
        return self.o_proj(y)
