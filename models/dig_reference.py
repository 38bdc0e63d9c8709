"""DiG and U-DiG in their first, straightforward formulation: the reference the fused DiG is tested against.

Every block re-orders the token tensor (flip; grid transpose after odd blocks) so that a plain causal
scan sees its scan order, the SREM conv transposes the tokens to [N, D, e, e], each projection is its
own Linear, and the glue is separate PyTorch ops. models/dig.py computes the same function with the
tokens kept in raster order and fused kernels; its state dicts and this one's are interchangeable
(models.gla_layer's load hook fuses this layout's projections). Used by the tests (CPU, float64) and
by the benchmark's "DiG-reference" family (the before/after profile), nowhere else.

Block l: adaLN-Zero GLA and SwiGLU FFN residual branches, then the spatial reorient & enhancement
module (SREM): a depthwise 3x3 conv on the current token sequence laid out as an e x e grid, a flip
of the sequence, and after odd blocks a transpose of the grid. Blocks 0, 1, 2, 3 (mod 4) thus scan
raster, reversed raster, column-major and reversed column-major order; depths are multiples of 4,
so the last block hands raster order back.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kernels import interpreting

from .common import BackendUnavailableError, PatchDiffusionModel, adaln_modulation, check_heads, modulate
from .dig import check_srem_switches, ffn_intermediate_size, initialize_dig_weights
from .gla_layer import GATE_LOGIT_NORMALIZER, GATE_LOW_RANK_DIM, output_norm, set_heads


class ReferenceGatedLinearAttention(nn.Module):
    """GLA token mixer [N, T, D] -> [N, T, D] with one Linear per projection; scans the tokens in the order
    given (causal)."""

    def __init__(self, hidden_size, num_heads, gla_backend="auto"):
        super().__init__()
        key_dim = set_heads(self, hidden_size, num_heads, gla_backend)
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


def rescan(x, grid_size, flip, transpose):
    """Next block's scan order: reverse the token axis (dim 1), then transpose the e x e grid.

    x [N, T, ...] with T = grid_size^2 -> same shape. Works on activations and on index tensors [1, T].
    """
    if flip:
        x = x.flip(1)
    if transpose:
        x = x.unflatten(1, (grid_size, grid_size)).transpose(1, 2).flatten(1, 2)
    return x


class ReferenceSwiGLU(nn.Module):
    """FFN: gate_proj D -> 2I (no bias), silu(a) * b, down_proj I -> D (no bias)."""

    def __init__(self, hidden_size, intermediate_size):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x):
        gate, value = self.gate_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * value)


class ReferenceDiGBlock(nn.Module):
    """adaLN-Zero block: x + GLA, x + SwiGLU FFN, SREM depthwise conv; optional U-ViT skip input."""

    def __init__(self, hidden_size, num_heads, grid_size, gla_backend, srem_conv, srem_position, long_skip):
        super().__init__()
        self.grid_size = grid_size
        self.srem_position = srem_position
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = ReferenceGatedLinearAttention(hidden_size, num_heads, gla_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = ReferenceSwiGLU(hidden_size, ffn_intermediate_size(hidden_size))
        self.adaLN_modulation = adaln_modulation(hidden_size, 6)
        self.dw_conv = None  # SREM depthwise 3x3 conv
        if srem_conv:
            self.dw_conv = nn.Conv2d(hidden_size, hidden_size, kernel_size=3, padding=1, groups=hidden_size)
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if long_skip else None

    def spatial_conv(self, x):
        """SREM conv on the token sequence laid out as the e x e grid; [N, T, D] -> [N, T, D]."""
        if self.dw_conv is None:
            return x
        grid = x.transpose(1, 2).unflatten(2, (self.grid_size, self.grid_size))  # (N, D, e, e)
        return self.dw_conv(grid).flatten(2).transpose(1, 2)

    def forward(self, x, c, skip=None):
        """x [N, T, D] in this block's scan order, c [N, D], skip [N, T, D] in the same order -> [N, T, D]."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        if self.srem_position == "before_attn":
            h = self.spatial_conv(h)
        x = x + gate_msa.unsqueeze(1) * self.attn(h)
        if self.srem_position == "between":
            x = self.spatial_conv(x)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        if self.srem_position == "after_ffn":
            x = self.spatial_conv(x)
        return x


class ReferenceDiG(PatchDiffusionModel):
    """DiG as first written: tokens re-ordered between blocks; long_skip=True gives U-DiG.

    Table 3 ablation switches: srem "full" (conv + flip + transpose after odd blocks), "bidirectional"
    (flip only, no conv), "none" (every block scans raster order causally, no conv); srem_position
    "after_ffn" (the paper), "before_attn" (conv on the GLA branch input, the reference's
    if_in_block_conv), "between" (conv on x between the GLA and FFN branches); dwconv_identity_init
    False leaves PyTorch's default conv init.

    U-DiG (long_skip=True): U-ViT long skips with the DiG depths (the paper gives no other depth).
    The first depth//2 blocks push their output; the last depth//2 blocks pop, first re-ordering the
    skip to their own scan order (the reference code concatenates tokens of different orders), then
    take Linear(2D, D) of cat(x, skip). With odd depth the middle block has no skip.
    """

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=18,
                 class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, gla_backend="auto",
                 srem="full", srem_position="after_ffn", dwconv_identity_init=True, long_skip=False):
        check_srem_switches(srem, srem_position, dwconv_identity_init)
        check_heads(hidden_size, num_heads, head_split=2)
        super().__init__(input_size, patch_size, in_channels, hidden_size, num_classes, class_dropout_prob,
                         learn_sigma)
        self.flip_tokens = srem in ("full", "bidirectional")
        self.transpose_after_odd = srem == "full"
        self.dwconv_identity_init = dwconv_identity_init
        self.num_skips = depth // 2 if long_skip else 0
        self.blocks = nn.ModuleList([
            ReferenceDiGBlock(hidden_size, num_heads, self.grid_size, gla_backend, srem_conv=srem == "full",
                     srem_position=srem_position, long_skip=layer >= depth - self.num_skips)
            for layer in range(depth)
        ])
        scan_orders = self.scan_orders(depth)
        if not torch.equal(scan_orders[-1], scan_orders[0]):
            raise ValueError(f"depth={depth} leaves the tokens out of raster order with srem={srem!r}; "
                             f"use a multiple of 4 (of 2 for 'bidirectional').")
        skip_reorder_index = self.skip_reorder_indices(scan_orders, depth).to(self.pos_embed.device)
        self.register_buffer("skip_reorder_index", skip_reorder_index, persistent=False)
        self.backend_description = f"gla={self.blocks[0].attn.backend}"
        self.initialize_weights()

    def initialize_weights(self):
        initialize_dig_weights(self)

    def rescan(self, x, layer):
        """Reorder the tokens after block `layer` into the next block's scan order."""
        return rescan(x, self.grid_size, self.flip_tokens, self.transpose_after_odd and layer % 2 == 1)

    def scan_orders(self, depth):
        """orders[l][j]: raster index of the token at sequence position j entering block l (orders[depth]:
        leaving the last block)."""
        orders = [torch.arange(self.grid_size ** 2, device="cpu")]
        for layer in range(depth):
            orders.append(self.rescan(orders[-1][None], layer)[0])
        return orders

    def skip_reorder_indices(self, orders, depth):
        """[num_skips, T] gather indices mapping each skip from its saved scan order to its consumer's."""
        indices = []
        for layer in range(depth - self.num_skips, depth):
            saved = orders[depth - layer]  # output order of the paired block depth - 1 - layer
            indices.append(torch.argsort(saved)[orders[layer]])  # position of token orders[layer][j] in saved
        if not indices:
            return torch.zeros(0, self.grid_size ** 2, dtype=torch.long, device="cpu")
        return torch.stack(indices)

    def forward_blocks(self, x, c):
        """Tokens [N, T, D] in raster order -> [N, T, D] in raster order, through every block and rescan."""
        skips = []
        first_skip_block = len(self.blocks) - self.num_skips
        for layer, block in enumerate(self.blocks):
            skip = None
            if block.skip_linear is not None:
                skip = skips.pop().index_select(1, self.skip_reorder_index[layer - first_skip_block])
            x = self.rescan(block(x, c, skip), layer)
            if layer < self.num_skips:
                skips.append(x)
        return x

    def forward(self, x, t, y):
        """x [N, C, I, I] latents, t [N] timesteps, y [N] labels -> [N, out_channels, I, I]."""
        tokens, c = self.embed(x, t, y)
        return self.decode(self.forward_blocks(tokens, c), c)


def create_reference_model(name, input_size, **kwargs):
    """ReferenceDiG (or U-DiG) by the registry's name ("DiG-S/2", "U-DiG-XL/2"), with its configuration."""
    from .dig import DiG_models

    if name not in DiG_models:
        raise ValueError(f"no DiG or U-DiG called {name!r}; known: {', '.join(DiG_models)}.")
    factory = DiG_models[name]
    return ReferenceDiG(input_size=input_size, **factory.keywords, **kwargs)
