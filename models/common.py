"""Pieces shared by the DiT and DiG backbones: embedders, adaLN-Zero helpers, final layer, base class.

Everything here follows facebookresearch/DiT `models.py`; DiG reuses it unchanged.
"""

import math

import numpy as np
import torch
from torch import nn


class BackendUnavailableError(RuntimeError):
    """A requested kernel backend cannot run on this machine (package missing, no GPU)."""


def modulate(x, shift, scale):
    """adaLN modulation: x [N, T, D], shift and scale [N, D] -> [N, T, D]."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def adaln_modulation(hidden_size, chunks):
    """SiLU -> Linear(D, chunks * D); the model zero-initialises the Linear (adaLN-Zero)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, chunks * hidden_size, bias=True))


def square_grid_size(input_size, patch_size):
    """Token grid edge e = input_size / patch_size; ValueError unless the grid is square and exact."""
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2 or input_size[0] != input_size[1]:
            raise ValueError(f"input_size must describe a square latent (the token grid must be square), "
                             f"got {tuple(input_size)}.")
        input_size = input_size[0]
    if not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive int (latent height = width), got {input_size!r}.")
    if input_size % patch_size != 0:
        raise ValueError(f"input_size {input_size} is not divisible by the patch size {patch_size}.")
    return input_size // patch_size


def check_heads(hidden_size, num_heads, head_split=1):
    """ValueError unless hidden_size / head_split splits evenly into num_heads heads."""
    if num_heads < 1 or hidden_size % (head_split * num_heads) != 0:
        raise ValueError(f"num_heads={num_heads} must divide hidden_size/{head_split} = "
                         f"{hidden_size / head_split:g} (hidden_size={hidden_size}).")


#################################################################################
#               Embedding Layers for Patches, Timesteps and Class Labels        #
#################################################################################

class PatchEmbed(nn.Module):
    """Image to tokens: Conv2d(p x p, stride p); [N, C, I, I] -> [N, (I/p)^2, D] in raster order."""

    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> 256 sinusoidal frequencies -> MLP -> [N, D]."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        """Sinusoidal embedding of t [N] (may be fractional) -> [N, dim] fp32, as in GLIDE."""
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float32, device=t.device) / half
        freqs = torch.exp(-math.log(max_period) * exponents)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # a float64 model stays float64


class LabelEmbedder(nn.Module):
    """Class labels -> [N, D]; label dropout (index num_classes = null class) for classifier-free guidance."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        """Replace dropped labels with the null class; force_drop_ids [N] (1 = drop) overrides randomness."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or (force_drop_ids is not None):
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                   Sine/Cosine Positional Embedding (fixed)                    #
#################################################################################
# https://github.com/facebookresearch/mae/blob/main/util/pos_embed.py

def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """Fixed 2D sin-cos embedding for a grid_size x grid_size grid in raster order -> [grid_size^2, D]."""
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])  # w goes first
    emb_h = get_1d_sincos_pos_embed(embed_dim // 2, grid[0])  # (T, D/2)
    emb_w = get_1d_sincos_pos_embed(embed_dim // 2, grid[1])  # (T, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)  # (T, D)


def get_1d_sincos_pos_embed(embed_dim, pos):
    """Positions pos (any shape, M values) -> [M, embed_dim] sin | cos with periods up to 10000."""
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


#################################################################################
#                                 Final Layer                                   #
#################################################################################

class FinalLayer(nn.Module):
    """LN (no affine) + adaLN shift/scale (2D, zero init) + Linear(D, p*p*out_channels) (zero init)."""

    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = adaln_modulation(hidden_size, 2)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


#################################################################################
#                       Base class shared by DiT and DiG                        #
#################################################################################

class CFGMixin:
    """forward_with_cfg for any model with forward(x, t, y) -> [N, 2C or C, I, I]."""

    def forward_with_cfg(self, x, t, y, cfg_scale):
        """Batch the conditional and unconditional passes (second half of y is the null class)."""
        # https://github.com/openai/glide-text2im/blob/main/notebooks/text2im.ipynb
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        # As DiT: guidance on the first 3 channels only, for exact reproducibility of DiT's samples;
        # the standard approach applies it to all in_channels.
        eps, rest = model_out[:, :3], model_out[:, 3:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


class PatchDiffusionModel(CFGMixin, nn.Module):
    """Patchify + fixed pos-embed + timestep/label conditioning in, final layer + unpatchify out.

    Subclasses add `self.blocks` and a forward that runs them between `embed` and `decode`.
    """

    def __init__(self, input_size, patch_size, in_channels, hidden_size, num_classes,
                 class_dropout_prob, learn_sigma):
        super().__init__()
        self.grid_size = square_grid_size(input_size, patch_size)  # e: tokens per side
        self.input_size = self.grid_size * patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.learn_sigma = learn_sigma
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        # Fixed sin-cos embedding, a frozen Parameter as in DiT (so it is counted and checkpointed alike).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size ** 2, hidden_size), requires_grad=False)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def initialize_weights(self):
        """DiT's init: xavier Linears, zero biases, sin-cos pos-embed, N(0, 0.02) embedders, zero outputs."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        pos_embed = get_2d_sincos_pos_embed(self.hidden_size, self.grid_size)
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data  # initialise like nn.Linear (instead of nn.Conv2d)
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def embed(self, x, t, y):
        """x [N, C, I, I], t [N], y [N] -> tokens [N, T, D] (raster order), condition c [N, D]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.input_size, self.input_size):
            size = self.input_size
            raise ValueError(f"x must have shape [N, {self.in_channels}, {size}, {size}] (the model was "
                             f"built for input_size={size}), got {tuple(x.shape)}.")
        tokens = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = (I / p)^2
        c = self.t_embedder(t) + self.y_embedder(y, self.training)  # (N, D)
        return tokens, c

    def decode(self, x, c):
        """Tokens [N, T, D] in raster order -> [N, out_channels, I, I]."""
        return self.unpatchify(self.final_layer(x, c))

    def unpatchify(self, x):
        """[N, T, p*p*C] -> [N, C, I, I]."""
        c, p, e = self.out_channels, self.patch_size, self.grid_size
        x = x.reshape(x.shape[0], e, e, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, e * p, e * p)
