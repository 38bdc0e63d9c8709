"""DiS, the Mamba-based diffusion baseline ("Scalable diffusion models with state space backbone").

Follows the DiS reference code (feizc/DiS `models_dis.py`, Mamba from hustvl/Vim with bimamba "v2"):
Mamba-1 blocks only (no MLP), fused add + RMSNorm with the residual stream in fp32, a bidirectional
mixer, time and class as two tokens in front of the patches, a learned positional embedding, U-ViT
long skips and an adaLN final layer on t + y. Differences: the timestep embedder is DiT's (256
frequencies -> MLP D -> D, shared with DiT and DiG) where DiS uses D frequencies -> MLP D -> 4D -> D
(work per image, not per token); no drop-path (DiS trains with rate 0.1).

Two paths with the same parameters and state_dict keys: fused (models/mamba_fused.py: causal-conv1d's and
mamba-ssm's CUDA kernels and mamba-ssm's Triton add + RMSNorm, as DiS runs) and plain (the modules below
with a selectable selective scan: the reference twin, and the only path on CPU).
"""

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .common import (
    CFGMixin,
    FinalLayer,
    LabelEmbedder,
    PatchDiffusionModel,
    PatchEmbed,
    TimestepEmbedder,
    square_grid_size,
)
from .mamba_fused import MambaInnerNoOutProj, fused_add_rms_norm, resolve_dis_backend

NUM_EXTRA_TOKENS = 2  # class token, then time token, in front of the patches (DiS's order)


#################################################################################
#                         Add + RMSNorm (residual in fp32)                      #
#################################################################################

def at_least_fp32(tensor):
    """fp32 for bf16/fp16/fp32 tensors, float64 stays float64 (the float64 reference runs)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class AddRMSNorm(nn.Module):
    """residual = residual + hidden (fp32); returns (RMSNorm(residual) in hidden's dtype, residual).

    fused: mamba-ssm's Triton `rms_norm_fn(..., prenorm=True, residual_in_fp32=True)`; else plain PyTorch.
    """

    def __init__(self, hidden_size, eps=1e-5, fused=False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps, self.fused = eps, fused

    def forward(self, hidden, residual=None):
        if self.fused:
            return fused_add_rms_norm(hidden, residual, self.weight, self.eps)
        hidden_wide = at_least_fp32(hidden)
        residual = hidden_wide if residual is None else residual + hidden_wide  # (N, L, D)
        normed = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * at_least_fp32(self.weight)).to(hidden.dtype), residual


#################################################################################
#                           Bidirectional Mamba mixer                           #
#################################################################################

class SSMDirection(nn.Module):
    """One scan direction: causal depthwise conv1d (width 4) + SiLU, x_proj, dt_proj, A_log, D."""

    def __init__(self, inner_size, dt_rank, state_size=16, conv_width=4):
        super().__init__()
        self.dt_rank, self.state_size = dt_rank, state_size
        self.conv1d = nn.Conv1d(inner_size, inner_size, conv_width, groups=inner_size, padding=conv_width - 1)
        self.x_proj = nn.Linear(inner_size, dt_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(dt_rank, inner_size, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner_size, state_size))
        self.D = nn.Parameter(torch.empty(inner_size))
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4):
        """Mamba's init: dt_proj weight U(+-dt_rank^-0.5), softplus(dt bias) log-uniform in [dt_min, dt_max],
        A = -(1..state_size) (S4D-real), D = 1."""
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        inner_size = self.dt_proj.bias.shape[0]
        dt = torch.exp(torch.rand(inner_size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            s4d_real = torch.arange(1, self.state_size + 1, dtype=torch.float32).repeat(inner_size, 1)
            self.A_log.copy_(torch.log(s4d_real))
            self.D.fill_(1.0)

    def forward(self, x, z, scan_fn):
        """x, z [b, E, l] (this direction's order) -> scan output gated by silu(z) [b, E, l]."""
        batch, inner_size, length = x.shape
        x = F.silu(self.conv1d(x)[..., :length])  # padding 3 each side: keep the causal part
        x_rows = x.transpose(1, 2).reshape(batch * length, inner_size)  # (bl, E)
        x_dbl = F.linear(x_rows, self.x_proj.weight)  # (bl, R+2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        # (E, bl) -> (b, E, l), l contiguous as the CUDA kernel wants; dt_proj's bias goes into the scan
        delta = (self.dt_proj.weight @ dt.t()).view(inner_size, batch, length).permute(1, 0, 2)
        B = B.view(batch, length, self.state_size).permute(0, 2, 1).contiguous()  # (b, N, l)
        C = C.view(batch, length, self.state_size).permute(0, 2, 1).contiguous()  # (b, N, l)
        A = -torch.exp(at_least_fp32(self.A_log))  # (E, N)
        return scan_fn(x, delta.to(x.dtype), A, B.to(x.dtype), C.to(x.dtype), at_least_fp32(self.D),
                       z=z.to(x.dtype), delta_bias=at_least_fp32(self.dt_proj.bias), delta_softplus=True)

    def forward_fused(self, xz):
        """xz [b, 2E, l] (this direction's order) -> the same as forward, by one fused CUDA function."""
        return MambaInnerNoOutProj.apply(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                         self.dt_proj.weight, -torch.exp(self.A_log.float()), self.D.float(),
                                         self.dt_proj.bias.float())


class BiMambaMixer(nn.Module):
    """Vim's bimamba "v2": shared in_proj (D -> 2E), z gate and out_proj; a forward and a backward SSM.

    out = out_proj((y_f + flip(y_b)) * silu(z)), y_b scanned over the flipped sequence. No division by 2
    (Vim's if_devide_out defaults to False and DiS does not set it). scan_fn runs the plain path's scans;
    fused=True runs each direction through SSMDirection.forward_fused instead (scan_fn may be None).
    """

    def __init__(self, hidden_size, scan_fn, expand=2, state_size=16, conv_width=4, fused=False):
        super().__init__()
        if scan_fn is None and not fused:
            raise ValueError("BiMambaMixer needs a scan_fn unless fused=True.")
        inner_size = expand * hidden_size
        dt_rank = math.ceil(hidden_size / 16)
        self.scan_fn, self.fused = scan_fn, fused
        self.in_proj = nn.Linear(hidden_size, 2 * inner_size, bias=False)
        self.forward_ssm = SSMDirection(inner_size, dt_rank, state_size, conv_width)
        self.backward_ssm = SSMDirection(inner_size, dt_rank, state_size, conv_width)
        self.out_proj = nn.Linear(inner_size, hidden_size, bias=False)

    def reset_out_proj(self, num_layers):
        """GPT-2 / Mamba prenorm-residual scaling: default Linear init divided by sqrt(num_layers)."""
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(num_layers)

    def forward(self, hidden):
        """hidden [b, l, D] -> [b, l, D]."""
        batch, length, _ = hidden.shape
        # (2E, bl) -> (b, 2E, l) with l contiguous, as mamba's fused path lays it out
        xz = self.in_proj.weight @ hidden.reshape(batch * length, -1).t()  # (2E, bl)
        xz = xz.view(-1, batch, length).permute(1, 0, 2)
        if self.fused:
            y_forward = self.forward_ssm.forward_fused(xz)
            y_backward = self.backward_ssm.forward_fused(xz.flip(-1)).flip(-1)
        else:
            x, z = xz.chunk(2, dim=1)  # (b, E, l) each
            y_forward = self.forward_ssm(x, z, self.scan_fn)
            y_backward = self.backward_ssm(x.flip(-1), z.flip(-1), self.scan_fn).flip(-1)
        return self.out_proj((y_forward + y_backward).transpose(1, 2))  # (b, l, D)


class DiSBlock(nn.Module):
    """[skip Linear(2D, D)] -> add + RMSNorm -> bidirectional mixer; returns (hidden, residual)."""

    def __init__(self, hidden_size, scan_fn, long_skip=False, fused=False):
        super().__init__()
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if long_skip else None
        self.norm = AddRMSNorm(hidden_size, fused=fused)
        self.mixer = BiMambaMixer(hidden_size, scan_fn, fused=fused)

    def forward(self, hidden, residual, skip=None):
        if self.skip_linear is not None:  # DiS joins the skip to the mixer output, before the residual add
            hidden = self.skip_linear(torch.cat([hidden, skip], dim=-1))
        hidden, residual = self.norm(hidden, residual)
        return self.mixer(hidden), residual


#################################################################################
#                                 DiS model                                     #
#################################################################################

class DiS(CFGMixin, nn.Module):
    """DiS: tokens [class, time, patches] + learned pos-embed -> depth//2 in-blocks, 1 mid-block,
    depth//2 out-blocks with U-ViT long skips -> add + RMSNorm -> adaLN final layer on t + y.

    scan_backend ("auto", "mamba_ssm", "reference") picks the plain path's selective scan; fused ("auto",
    True, False) the fused CUDA path: "auto" takes it when mamba-ssm and causal-conv1d import (and the scan
    is not "reference"). backend_description names what runs.
    """

    unpatchify = PatchDiffusionModel.unpatchify  # same token -> patch layout as DiT / DiG

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=26,
                 num_classes=1000, class_dropout_prob=0.1, learn_sigma=True, scan_backend="auto",
                 fused="auto"):
        super().__init__()
        if not isinstance(depth, int) or depth < 2 or depth % 2:
            raise ValueError(f"depth must be an even int >= 2 (depth/2 in-blocks, 1 mid-block, depth/2 "
                             f"out-blocks), got {depth!r}.")
        scan_fn, fused, self.backend_description = resolve_dis_backend(scan_backend, fused)
        self.grid_size = square_grid_size(input_size, patch_size)
        self.input_size = self.grid_size * patch_size
        self.in_channels, self.patch_size, self.depth = in_channels, patch_size, depth
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_EXTRA_TOKENS + self.grid_size ** 2, hidden_size))
        half = depth // 2
        block = partial(DiSBlock, hidden_size, scan_fn, fused=fused)
        self.in_blocks = nn.ModuleList(block() for _ in range(half))
        self.mid_block = block()
        self.out_blocks = nn.ModuleList(block(long_skip=True) for _ in range(half))
        self.norm_f = AddRMSNorm(hidden_size, fused=fused)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def blocks(self):
        """All Mamba blocks in execution order."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    def initialize_weights(self):
        """DiS's (Mamba's) init: zero Linear biases, N(0, 0.02) embeddings, zero pos-embed, out_proj scaled
        by 1/sqrt(depth), then Mamba's dt / A / D init; everything else keeps PyTorch's default (DiS does
        not zero the final layer)."""
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.pos_embed)
        for block in self.blocks():
            block.mixer.reset_out_proj(self.depth)
            block.mixer.forward_ssm.reset_ssm_parameters()
            block.mixer.backward_ssm.reset_ssm_parameters()

    def forward(self, x, t, y):
        """x [N, C, I, I] latents, t [N] timesteps, y [N] class labels -> [N, out_channels, I, I]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.input_size, self.input_size):
            size = self.input_size
            raise ValueError(f"x must have shape [N, {self.in_channels}, {size}, {size}] (the model was "
                             f"built for input_size={size}), got {tuple(x.shape)}.")
        t_token = self.t_embedder(t)  # (N, D)
        y_token = self.y_embedder(y, self.training)  # (N, D)
        patches = self.x_embedder(x)  # (N, T, D)
        hidden = torch.cat([y_token[:, None], t_token[:, None], patches], dim=1)  # (N, 2+T, D)
        hidden = hidden + self.pos_embed
        residual, skips = None, []
        for block in self.in_blocks:
            hidden, residual = block(hidden, residual)
            skips.append(hidden)
        hidden, residual = self.mid_block(hidden, residual)
        for block in self.out_blocks:
            hidden, residual = block(hidden, residual, skip=skips.pop())
        hidden, _ = self.norm_f(hidden, residual)
        out = self.final_layer(hidden, t_token + y_token)[:, NUM_EXTRA_TOKENS:]  # (N, T, p*p*C_out)
        return self.unpatchify(out)


#################################################################################
#                                 DiS Configs                                   #
#################################################################################

def _dis_factory(name, depth, hidden_size, patch_size):
    def factory(input_size, num_classes=1000, learn_sigma=True, scan_backend="auto", fused="auto"):
        return DiS(input_size=input_size, patch_size=patch_size, hidden_size=hidden_size, depth=depth,
                   num_classes=num_classes, learn_sigma=learn_sigma, scan_backend=scan_backend, fused=fused)
    factory.__name__ = factory.__qualname__ = name.replace("-", "_").replace("/", "_")
    factory.__doc__ = f"{name}: {depth + 1} Mamba blocks, width {hidden_size}, patch {patch_size}."
    return factory


# (depth, hidden_size) per size: DiT's widths; depth d gives d/2 in-blocks + 1 mid + d/2 out-blocks, chosen
# so the parameter count is within 5% of DiG's at the same size. DiS itself has no XL (its sizes: S 368,
# B and M 768, L 1024, H 1536 wide). Counts at 256 px (input_size 32), pos-embed included:
#   DiS-S/2   27 blocks   33,053,600 (DiG-S/2   33.0M, +0.2%)
#   DiS-B/2   27 blocks  126,416,672 (DiG-B/2  130.6M, -3.2%; 29 blocks would be +3.8%)
#   DiS-L/2   57 blocks  464,898,080 (DiG-L/2  464.8M, +0.0%)
#   DiS-XL/2  65 blocks  668,010,272 (DiG-XL/2 675.7M, -1.1%)
# Patch 4 and 8 change only the patch embedding, final layer and pos-embed (within 0.5M of patch 2).
DIS_SIZES = {"S": (26, 384), "B": (26, 768), "L": (56, 1024), "XL": (64, 1152)}

DiS_models = {  # "DiS-S/2" -> factory(input_size, num_classes=1000, learn_sigma=True, scan_backend, fused)
    f"DiS-{size}/{patch}": _dis_factory(f"DiS-{size}/{patch}", depth, hidden, patch)
    for size, (depth, hidden) in DIS_SIZES.items() for patch in (2, 4, 8)
}
