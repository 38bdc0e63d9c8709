"""DiG: diffusion with gated linear attention (arXiv 2405.18428), and U-DiG with long skips.

Block l: adaLN-Zero GLA and SwiGLU FFN residual branches, then the spatial reorient & enhancement
module (SREM): a depthwise 3x3 conv of the token grid, and a new scan order for the next block.
Blocks 0, 1, 2, 3 (mod 4) scan raster, reversed raster, column-major and reversed column-major order.

The paper's code (and models/dig_reference.py) re-orders the whole token tensor after every block
(a flip, and a grid transpose after odd blocks) and transposes it to [N, D, e, e] around the conv:
on the H200 that strided copy kernel was the largest single entry of a DiG-XL/2 step at 2048 px
(525 launches, 82 ms of 403 ms). Here the tokens stay in raster order through all blocks: the GLA
kernels read the block's scan order by index arithmetic, and the conv runs on the raster grid with
its taps oriented to that order (kernels/dwconv.py), which is the same function. U-DiG's skips are
then in the consumer's order already. With the Triton backend the block glue (LN + modulate, gated
residual, SwiGLU, the conv) runs as fused kernels; other backends use their PyTorch twins.
"""

import math
from functools import partial

import torch
from torch import nn

from kernels.dwconv import depthwise_conv3x3, depthwise_conv3x3_ref, orient_taps
from kernels.gated_residual import gated_residual, gated_residual_ref
from kernels.ln_modulate import layer_norm_modulate, layer_norm_modulate_ref
from kernels.swiglu import swiglu_down, swiglu_down_ref

from .common import PatchDiffusionModel, adaln_modulation, check_heads
from .gla_layer import GatedLinearAttention

SREM_MODES = ("full", "none", "bidirectional")
SREM_POSITIONS = ("after_ffn", "before_attn", "between")
LN_EPS = 1e-6


def ffn_intermediate_size(hidden_size):
    """SwiGLU width I = 8D/3 rounded up to a multiple of 256: S 1024, B 2048, L 2816, XL 3072."""
    return 256 * math.ceil(int(hidden_size * 8 / 3) / 256)


def check_srem_switches(srem, srem_position, dwconv_identity_init):
    """ValueError unless the Table 3 switches name a configuration that exists."""
    if srem not in SREM_MODES:
        raise ValueError(f"srem must be one of {', '.join(SREM_MODES)}; got {srem!r}.")
    if srem_position not in SREM_POSITIONS:
        raise ValueError(f"srem_position must be one of {', '.join(SREM_POSITIONS)}; got {srem_position!r}.")
    if srem != "full" and (srem_position != "after_ffn" or not dwconv_identity_init):
        raise ValueError(f"srem_position and dwconv_identity_init configure the SREM conv, which only "
                         f"srem='full' has; got srem={srem!r}.")


def initialize_dig_weights(model):
    """DiT init, then fla's GLA init inside each block and the SREM conv as the identity (DiG and the
    reference formulation alike)."""
    PatchDiffusionModel.initialize_weights(model)
    for block in model.blocks:
        block.attn.reset_parameters()
        if block.dw_conv is not None and model.dwconv_identity_init:
            nn.init.zeros_(block.dw_conv.weight)
            nn.init.ones_(block.dw_conv.weight[:, :, 1, 1])  # centre tap: conv(x) = x
            nn.init.zeros_(block.dw_conv.bias)


def block_scan_orders(depth, srem):
    """The scan order of each block: the 4-cycle with SREM, raster/reversed when bidirectional."""
    cycle = {"full": ("raster", "reversed", "column", "reversed_column"),
             "bidirectional": ("raster", "reversed"), "none": ("raster",)}[srem]
    if depth % len(cycle):
        raise ValueError(f"depth={depth} must be a multiple of {len(cycle)} with srem={srem!r}, so that "
                         f"every scan order is used equally and the last block hands back raster order.")
    return [cycle[layer % len(cycle)] for layer in range(depth)]


def compute_dtype(x):
    """The dtype the GEMMs compute in: autocast's where it is on, else x's."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return torch.get_autocast_dtype(device) if autocast else x.dtype


class BlockGlue:
    """The elementwise and normalisation pieces of a block: fused Triton ops, or their PyTorch twins."""

    def __init__(self, fused: bool):
        self.fused = fused

    def norm_modulate(self, x, shift, scale):
        """LN(x) * (1 + scale) + shift, written in the dtype of the GEMM that reads it."""
        fn = layer_norm_modulate if self.fused else layer_norm_modulate_ref
        return fn(x, shift, scale, LN_EPS, compute_dtype(x))

    def residual(self, x, gate, y):
        """x + gate * y in x's dtype (the residual stream's)."""
        return (gated_residual if self.fused else gated_residual_ref)(x, gate, y)

    def swiglu_down(self, u, weight):
        return (swiglu_down if self.fused else swiglu_down_ref)(u, weight)

    def conv(self, x, taps, bias):
        """The SREM conv, written in the GEMM dtype: under autocast conv2d (the reference formulation's)
        returns bf16, so from the first conv on the residual stream is bf16 there too; keeping that
        halves the three residual tensors each block saves for backward (6 bytes per token and channel)."""
        return (depthwise_conv3x3 if self.fused else depthwise_conv3x3_ref)(x, taps, bias, compute_dtype(x))


class SwiGLU(nn.Module):
    """FFN: gate_proj D -> 2I (no bias), silu(a) * b, down_proj I -> D (no bias; its weight is applied by
    the glue, which recomputes silu(a) * b in backward instead of keeping it)."""

    def __init__(self, hidden_size, intermediate_size, glue):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.glue = glue

    def forward(self, x):
        return self.glue.swiglu_down(self.gate_proj(x), self.down_proj.weight)


class DiGBlock(nn.Module):
    """adaLN-Zero block: x + GLA, x + SwiGLU FFN, SREM depthwise conv; optional U-ViT skip input.
    Tokens [N, T, D] in raster order in and out; `scan_order` is this block's GLA scan order."""

    def __init__(self, hidden_size, num_heads, gla_backend, scan_order, srem_conv, srem_position, long_skip):
        super().__init__()
        self.scan_order = scan_order
        self.srem_position = srem_position
        self.attn = GatedLinearAttention(hidden_size, num_heads, gla_backend)
        self.glue = BlockGlue(fused=self.attn.backend == "triton")
        self.mlp = SwiGLU(hidden_size, ffn_intermediate_size(hidden_size), self.glue)
        self.adaLN_modulation = adaln_modulation(hidden_size, 6)
        self.dw_conv = None  # SREM depthwise 3x3 conv; its taps act on this block's scan-order grid
        if srem_conv:
            self.dw_conv = nn.Conv2d(hidden_size, hidden_size, kernel_size=3, padding=1, groups=hidden_size)
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if long_skip else None

    def spatial_conv(self, x):
        """The SREM conv of this block's scan-order grid, on raster tokens; [N, T, D] -> [N, T, D]."""
        if self.dw_conv is None:
            return x
        return self.glue.conv(x, orient_taps(self.dw_conv.weight, self.scan_order), self.dw_conv.bias)

    def forward(self, x, c, skip=None):
        """x [N, T, D], c [N, D], skip [N, T, D] (raster order) -> [N, T, D]."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        # [6, N, D] in one copy: the six [N, D] column chunks of [N, 6D] are strided views, which the
        # glue ops each made contiguous (six copy launches per block instead of one)
        modulation = self.adaLN_modulation(c).unflatten(1, (6, -1)).transpose(0, 1).contiguous()
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unbind(0)
        h = self.glue.norm_modulate(x, shift_msa, scale_msa)
        if self.srem_position == "before_attn":
            h = self.spatial_conv(h)
        x = self.glue.residual(x, gate_msa, self.attn(h, self.scan_order))
        if self.srem_position == "between":
            x = self.spatial_conv(x)
        x = self.glue.residual(x, gate_mlp, self.mlp(self.glue.norm_modulate(x, shift_mlp, scale_mlp)))
        if self.srem_position == "after_ffn":
            x = self.spatial_conv(x)
        return x


class DiG(PatchDiffusionModel):
    """Diffusion model with a GLA backbone; long_skip=True gives U-DiG.

    Table 3 ablation switches: srem "full" (conv + the four scan orders), "bidirectional" (raster and
    reversed scans, no conv), "none" (every block scans raster order causally, no conv); srem_position
    "after_ffn" (the paper), "before_attn" (conv on the GLA branch input, the reference's
    if_in_block_conv), "between" (conv on x between the GLA and FFN branches); dwconv_identity_init
    False leaves PyTorch's default conv init.

    U-DiG (long_skip=True): U-ViT long skips with the DiG depths (the paper gives no other depth).
    The first depth//2 blocks push their output; the last depth//2 blocks pop and take
    Linear(2D, D) of cat(x, skip). Tokens are in raster order everywhere, so every skip joins the
    same tokens (the reference code concatenated tokens of different scan orders).
    """

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=18,
                 class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, gla_backend="auto",
                 srem="full", srem_position="after_ffn", dwconv_identity_init=True, long_skip=False):
        check_srem_switches(srem, srem_position, dwconv_identity_init)
        check_heads(hidden_size, num_heads, head_split=2)
        scan_orders = block_scan_orders(depth, srem)
        super().__init__(input_size, patch_size, in_channels, hidden_size, num_classes, class_dropout_prob,
                         learn_sigma)
        self.dwconv_identity_init = dwconv_identity_init
        self.num_skips = depth // 2 if long_skip else 0
        self.blocks = nn.ModuleList([
            DiGBlock(hidden_size, num_heads, gla_backend, scan_orders[layer], srem_conv=srem == "full",
                     srem_position=srem_position, long_skip=layer >= depth - self.num_skips)
            for layer in range(depth)
        ])
        glue = "fused Triton glue" if self.blocks[0].glue.fused else "PyTorch glue"
        self.backend_description = f"gla={self.blocks[0].attn.backend} ({glue}, raster tokens)"
        self.initialize_weights()

    def initialize_weights(self):
        initialize_dig_weights(self)

    def forward_blocks(self, x, c):
        """Tokens [N, T, D] in raster order -> [N, T, D] in raster order, through every block."""
        skips = []
        for layer, block in enumerate(self.blocks):
            x = block(x, c, skips.pop() if block.skip_linear is not None else None)
            if layer < self.num_skips:
                skips.append(x)
        return x

    def forward(self, x, t, y):
        """x [N, C, I, I] latents, t [N] timesteps, y [N] labels -> [N, out_channels, I, I]."""
        tokens, c = self.embed(x, t, y)
        return self.decode(self.forward_blocks(tokens, c), c)


#################################################################################
#                                  DiG Configs                                  #
#################################################################################

DIG_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 18)}  # depth, D, H

DiG_models = {
    f"DiG-{size}/{patch}": partial(DiG, depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    for size, (depth, width, heads) in DIG_SIZES.items() for patch in (2, 4, 8)
}
DiG_models.update({
    f"U-DiG-{size}/{patch}": partial(DiG, depth=depth, hidden_size=width, num_heads=heads, patch_size=patch,
                                     long_skip=True)
    for size, (depth, width, heads) in DIG_SIZES.items() for patch in (1, 2, 4, 8) if patch > 1 or size == "S"
})
