"""DiG trained with context parallelism: one image's tokens split over the ranks of a process group.

`ContextParallelDiG(model, group)` runs an existing DiG's (or U-DiG's) weights, without copying
them, on the rows layout of kernels/gla/context_parallel.py: rank r of R holds grid rows
[r e/R, (r+1) e/R) of the raster-ordered e x e token grid. Each rank patch-embeds its own latent
rows (the patch conv has stride p, so its rows need no neighbour's pixels) and adds its rows of the
positional embedding; the condition c (timestep + label) is computed on every rank. In every block
the glue (LN + modulate, gated residuals, SwiGLU FFN, adaLN) is per token and runs on the local
tokens; the GLA runs as the layer's plain twin (kernels.gla_layer.gla_layer_ref: in_proj, gate
logits, output norm, o_proj) around kernels.gla.context_parallel.cp_gla, the local GLA being the
model's own backend (chunk_gla on a GPU, chunk_gla_torch on the CPU); the SREM conv runs as
cp_depthwise_conv3x3 with the block's oriented taps. The block's own forward (DiGBlock.forward) is
reused as it is, with only those two pieces swapped, so the two stay one function.

Where the all-to-alls go. A block scans its layout's sequence without any exchange: "rows" for the
raster and reversed scans, "columns" for the column-major ones. The residual stream (D values per
token) is switched to the next block's layout between blocks, which with the 4-cycle of scan orders
is after blocks 4m+1 and 4m+3: 2 D per token per 4 blocks, against 7 D when the stream stays in rows
and cp_gla re-arranges q, k, g, v (3.5 D) in and o (D) out of each column block; 3.5x less. For
DiG-XL/2 at 4096 px (D = 1152, 65,536 tokens, batch 2, bf16) that is 0.60 GB against 2.11 GB per
4 blocks of forward (all ranks together), and as much again in the backward. The SREM conv of a
block runs in that block's layout (the columns layout is the transposed grid split in rows). The
last block's output is not converted: the final layer is per token, and its output patches
(p^2 C_out = 32 values per token for DiG-XL/2, against D = 1152) are converted to rows instead.

U-DiG skips. Block i's output feeds block depth-1-i; with the 4-cycle that block always scans in
the other layout (i mod 4 = 0, 1, 2, 3 feed blocks = 3, 2, 1, 0 mod 4). After blocks i = 1, 3 mod 4
the stream is converted anyway, so the skip is kept in its consumer's layout for free; after
i = 0, 2 mod 4 it is converted when popped: D per token for half of the skips, on local tokens.

Loss and gradients. `forward` returns this rank's output patches [N, T_local, p^2 C_out] (rows
layout, raster within the rank's rows). `local_mse_loss(patches, local_target(target))` is this
rank's share of the image's MSE: squared errors over the rank's patches divided by the element
count of the whole output, so the shares summed over the ranks are F.mse_loss(full output,
target). Every parameter is replicated and receives on each rank the gradient of that rank's share
only: `all_reduce_gradients` sums them over the group (SUM, not the mean that DDP takes), giving
the one-process gradient. Combined with data parallelism over several such groups, sum over the
context-parallel group, then average over the data-parallel one. `gather_output` all-gathers the
full [N, C_out, I, I] output (not differentiable), for checking.

Inputs x, t, y must be the same on every rank of the group (the whole latent: each rank slices its
rows; 4 x 512 x 512 values per image at 4096 px). Label dropout draws on the group's first rank
and broadcasts, so that c agrees on every rank.

What this gives up against one GPU: the fused GLA layer op (kernels.gla_layer.gla_layer) and the
Triton SREM conv (it needs the whole square grid); the layer's PyTorch ops run around the local
chunk_gla instead, and the conv is F.conv2d with a one-row halo. The state exchange keeps 13 D bytes
per token and layer more for backward than the one-process model (bf16 autocast, CPU, slope between
64 and 256 tokens): segment_state's fp32 tensors and the fp32 log gate it reads.
"""

import torch
import torch.distributed as dist
from torch import nn

from kernels.dwconv import orient_taps
from kernels.gla.context_parallel import (
    check_grid_split,
    cp_depthwise_conv3x3,
    cp_gla,
    layout_of_scan,
    to_layout,
)
from kernels.gla_layer import gla_layer_ref

from .dig import DiG, DiGBlock
from .gla_layer import GATE_LOGIT_NORMALIZER, output_norm

# Backends whose GLA takes an initial state and a reverse flag, as context_parallel_gla needs;
# the fla adapter (models.gla_layer.fla_in_scan_order) takes neither.
CONTEXT_PARALLEL_GLA_BACKENDS = ("triton", "torch", "naive")


def patchify(x, patch_size):
    """[N, C, I, I] -> [N, (I/p)^2, p*p*C] raster tokens: the inverse of PatchDiffusionModel.unpatchify."""
    N, C, size, _ = x.shape
    e = size // patch_size
    x = x.reshape(N, C, e, patch_size, e, patch_size)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(N, e * e, patch_size * patch_size * C)


def all_reduce_gradients(module, group=None, bucket_bytes=256 * 2**20):
    """Sum every parameter's .grad over `group` in place: one all-reduce per bucket of gradients of
    one dtype, up to bucket_bytes each (DiG-XL/2's 2.7 GB of fp32 gradients in 11 all-reduces).
    Every rank must hold gradients for the same parameters (it ran the same model)."""
    bucket, size = [], 0
    for grad in (p.grad for p in module.parameters() if p.grad is not None):
        if bucket and (grad.dtype != bucket[0].dtype or size + grad.nbytes > bucket_bytes):
            _all_reduce_bucket(bucket, group)
            bucket, size = [], 0
        bucket.append(grad)
        size += grad.nbytes
    if bucket:
        _all_reduce_bucket(bucket, group)


def _all_reduce_bucket(grads, group):
    flat = torch.cat([grad.flatten() for grad in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    for grad, summed in zip(grads, flat.split([grad.numel() for grad in grads])):
        grad.copy_(summed.view_as(grad))


class _SplitBlock:
    """A DiGBlock as DiGBlock.forward sees it, with its GLA and SREM conv on the split tokens.

    Every other attribute (glue, mlp, adaLN, skip_linear, srem_position, scan_order) is the block's.
    """

    def __init__(self, block, layout, grid_size, group):
        self._block, self._layout, self._grid_size, self._group = block, layout, grid_size, group

    def __getattr__(self, name):
        return getattr(self._block, name)

    def attn(self, x, scan_order):
        """GatedLinearAttention.forward on this rank's tokens [N, T_local, D] -> [N, T_local, D]."""
        attn = self._block.attn
        y = gla_layer_ref(attn.in_proj(x), attn.gate_up.weight, attn.gate_up.bias, attn.g_norm_weight,
                          attn.num_heads, attn.head_k_dim, attn.head_v_dim, scan_order, GATE_LOGIT_NORMALIZER,
                          gla_fn=self._split_gla, norm_fn=output_norm)
        return attn.o_proj(y)

    def _split_gla(self, q, k, v, g, scan_order, gate_normalizer):
        """gla_layer_ref's gla_fn: the GLA of the whole grid, this rank's tokens in and out."""
        o = cp_gla(q, k, v, g, scan_order, self._grid_size, self._group, layout=self._layout,
                   gla_fn=self._block.attn.gla_fn, gate_normalizer=gate_normalizer)
        return o, None

    def spatial_conv(self, x):
        """DiGBlock.spatial_conv on this rank's tokens, a one-row halo from each neighbour."""
        conv = self._block.dw_conv
        if conv is None:
            return x
        return cp_depthwise_conv3x3(x, orient_taps(conv.weight, self._block.scan_order), conv.bias,
                                    self._grid_size, self._group, layout=self._layout)


class ContextParallelDiG(nn.Module):
    """A DiG (or U-DiG) whose every image is split over the ranks of `group` (module docstring).

    forward(x, t, y) with the full inputs on every rank -> this rank's output patches
    [N, T_local, p*p*C_out], T_local = T / R, rows layout. The parameters and the state dict are
    the wrapped model's own (state_dict() has the same keys). Collective: every rank of the group
    runs every forward and backward.
    """

    def __init__(self, model: DiG, group=None):
        super().__init__()
        if not isinstance(model, DiG):
            raise ValueError(f"ContextParallelDiG wraps a models.dig.DiG; got {type(model).__name__}.")
        backend = model.blocks[0].attn.backend
        if backend not in CONTEXT_PARALLEL_GLA_BACKENDS:
            raise ValueError(f"context parallelism needs a GLA backend that takes an initial state and "
                             f"reverse scans ({', '.join(CONTEXT_PARALLEL_GLA_BACKENDS)}); got {backend!r}.")
        self.world_size = dist.get_world_size(group)
        check_grid_split(model.grid_size ** 2 // self.world_size, model.grid_size, group)
        self.model = model
        self.group = group
        self.layouts = [layout_of_scan(block.scan_order) for block in model.blocks]
        self.backend_description = f"{model.backend_description}, context parallel x{self.world_size}"

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        return self.model.load_state_dict(*args, **kwargs)

    @property
    def tokens_per_rank(self):
        return self.model.grid_size ** 2 // self.world_size

    def forward(self, x, t, y):
        """x [N, C, I, I], t [N], y [N] (the same on every rank) -> [N, T_local, p*p*C_out]."""
        tokens, c = self.embed(x, t, y)
        tokens, layout = self.forward_blocks(tokens, c)
        patches = self.model.final_layer(tokens, c)
        return self._to_layout(patches, layout, "rows")

    def embed(self, x, t, y):
        """This rank's tokens [N, T_local, D] (rows layout) and the condition c [N, D]."""
        model = self.model
        if x.dim() != 4 or tuple(x.shape[1:]) != (model.in_channels, model.input_size, model.input_size):
            size = model.input_size
            raise ValueError(f"x must be the whole latent [N, {model.in_channels}, {size}, {size}] on every "
                             f"rank; got {tuple(x.shape)}.")
        rank, pixels = dist.get_rank(self.group), model.input_size // self.world_size
        tokens = model.x_embedder(x[:, :, rank * pixels:(rank + 1) * pixels])
        T_local = self.tokens_per_rank
        tokens = tokens + model.pos_embed[:, rank * T_local:(rank + 1) * T_local]
        c = model.t_embedder(t) + model.y_embedder(y, model.training, self._shared_label_drop(y))
        return tokens, c

    def _shared_label_drop(self, y):
        """The label dropout mask [N] drawn on the group's first rank, or None when nothing drops."""
        embedder = self.model.y_embedder
        if not (self.model.training and embedder.dropout_prob > 0):
            return None
        drop = (torch.rand(y.shape[0], device=y.device) < embedder.dropout_prob).long()
        dist.broadcast(drop, group=self.group, group_src=0)
        return drop

    def forward_blocks(self, x, c):
        """Tokens [N, T_local, D] in rows -> (tokens after the last block, the layout they are in)."""
        model, layouts = self.model, self.layouts
        depth = len(model.blocks)
        layout = layouts[0]
        x = self._to_layout(x, "rows", layout)
        skips = []  # (tokens, layout)
        for layer, block in enumerate(model.blocks):
            skip = None
            if block.skip_linear is not None:
                skip = self._to_layout(*skips.pop(), layout)
            x = DiGBlock.forward(_SplitBlock(block, layout, model.grid_size, self.group), x, c, skip)
            next_layout = layouts[layer + 1] if layer + 1 < depth else layout
            converted = self._to_layout(x, layout, next_layout)
            if layer < model.num_skips:  # kept in its consumer's layout when the stream has it there
                consumer = layouts[depth - 1 - layer]
                skips.append((converted, next_layout) if consumer == next_layout else (x, layout))
            x, layout = converted, next_layout
        return x, layout

    def _to_layout(self, x, source, target):
        return to_layout(x, self.model.grid_size, self.group, source, target)

    def local_target(self, target):
        """The whole target [N, C_out, I, I] (the same on every rank) -> this rank's patches
        [N, T_local, p*p*C_out], aligned with forward's output."""
        rank, T_local = dist.get_rank(self.group), self.tokens_per_rank
        return patchify(target, self.model.patch_size)[:, rank * T_local:(rank + 1) * T_local]

    def local_mse_loss(self, patches, local_target):
        """This rank's share of the image MSE: summed over the ranks it is F.mse_loss(output, target)."""
        return (patches - local_target).square().sum() / (patches.numel() * self.world_size)

    def gather_output(self, patches):
        """forward's output on every rank -> the whole output [N, C_out, I, I] (not differentiable)."""
        pieces = [torch.empty_like(patches) for _ in range(self.world_size)]
        dist.all_gather(pieces, patches.detach().contiguous(), group=self.group)
        return self.model.unpatchify(torch.cat(pieces, dim=1))
