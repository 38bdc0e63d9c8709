"""Context-parallel GLA: one sequence's tokens split over the ranks of a process group.

Sequence split. Rank r of R holds the r-th contiguous segment of the scan. With a zero initial
state its segment alone would leave the state
  S_r = sum_t (k_t exp(G_last - G_t))^T v_t,   G_t = g_1 + ... + g_t within the segment,
and it decays whatever enters it by exp(gsum_r), gsum_r = g_1 + ... + g_last. The state entering
segment r is then S_in_r = sum_{j<r} exp(gsum_{j+1} + ... + gsum_{r-1}) S_j: every exponent is a
sum of gates (<= 0), so no factor exceeds 1. Each rank computes (S_r, gsum_r), the ranks all-gather
them, each rank folds the gathered list into its own S_in_r, then runs the local GLA with
initial_state=S_in_r. Forward and backward are exact: the backward of the all-gather (a
reduce-scatter) hands every rank the gradient of its (S_r, gsum_r) from the ranks after it.

Why an all-gather, not a send/recv chain: the message is tiny, [B, H, K, V] + [B, H, K] fp32 per
rank, 150 KB per image for DiG-XL/2 (H=18, K=32, V=64). All-gathered over 8 ranks at batch 2 a
rank receives 2.1 MB, a few microseconds of NVLink bandwidth: the exchange is latency-bound. A
chain rank 0 -> 1 -> ... -> R-1 pays R-1 dependent small-message latencies before the last rank
can start its GLA, and as many again in the backward; one all-gather pays one collective each way,
and the fold over ranks is R multiply-adds of [B, H, K, V] per rank, free next to the GLA itself.

Grid split (DiG). Tokens stay in raster order of the e x e grid; a block's scan order says which
raster token sequence position i reads (kernels/gla/scan_order.py): "raster" p(i) = i, "reversed"
p(i) = T-1-i, "column" p(i) = (i % e) * e + i // e, "reversed_column" the column map of T-1-i. In
the "rows" layout rank r holds grid rows [r e/R, (r+1) e/R) in raster order: the raster scan is
then the sequence split above, and the reversed one the same with the scan over ranks running
from the last rank to the first. Column-major scans need the "columns" layout, rank r holding
grid columns [r e/R, (r+1) e/R), each column top to bottom, columns left to right: the
column-major sequence, contiguous per rank. `rows_to_columns` / `columns_to_rows` are the
all-to-alls between the two layouts; `cp_gla` calls them around a column scan when its input is
in the other layout, `cp_depthwise_conv3x3` exchanges a one-row halo with each neighbour.

Where to put the all-to-all. `cp_gla` on the rows layout moves q, k, g (D/2 channels each) and v
(D) in, o (D) out: 3.5 D values per token per column-scan block, each way of forward and backward.
DiG's blocks scan raster, reversed, column, reversed column (l % 4), so a caller that switches the
whole residual stream (D values per token) to the "columns" layout before block 4m+2 and back
after block 4m+3, and passes layout="columns" to `cp_gla` and `cp_depthwise_conv3x3` in those two
blocks, moves 2 D per 4 blocks instead of 7 D: 3.5x less. For DiG-XL/2 at 4096 px (D=1152,
65,536 tokens, batch 2, bf16) that is 0.60 GB against 2.11 GB per 4 blocks of forward (all ranks
together, (R-1)/R of it between GPUs; the backward moves as much again). Everything else in a DiG
block (norms, adaLN, FFN) is per token and indifferent to layout; a U-DiG skip saved in the other
layout needs the same conversion.

Parameters replicated on every rank of the group (the conv weight, the projections of the caller)
receive on each rank the gradient of that rank's tokens only: sum them over the group (all_reduce
SUM, not the mean that DDP takes) to get the gradient of the whole sequence.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .naive import forget_gate_from_logits
from .scan_order import SCAN_ORDERS
from .torch_chunk import _exclusive_reverse_cumsum, chunk_gla_torch

LAYOUTS = ("rows", "columns")
# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single and deprecates the
# old names; torch 2.11 (the GPU machine's) has only the old ones.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


# ------------------------------------------------------------------ differentiable collectives

class _AllGather(torch.autograd.Function):
    """x [...] on every rank -> [R, ...] (rank j's x at index j); backward: reduce-scatter (sum)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        world = dist.get_world_size(group)
        out = x.new_empty(world * x.shape[0], *x.shape[1:])  # gloo takes only the concatenated form
        _all_gather_single(out, x, group=group)
        return out.view(world, *x.shape)

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_empty(grad.shape[1:])
        _reduce_scatter_single(out, grad.flatten(0, 1).contiguous(), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


class _AllToAll(torch.autograd.Function):
    """x [R, ...]: block j goes to rank j; returns [R, ...] with rank j's block for us at index j.

    With equal blocks the all-to-all is its own adjoint, so the backward is the same exchange.
    """

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.group), None


def _all_to_all(x, group):
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class _HaloExchange(torch.autograd.Function):
    """(first_row, last_row) of this rank -> (last row of rank r-1, first row of rank r+1).

    Zeros stand in for the missing neighbour at the grid's top and bottom edge (the conv's zero
    padding). Rank r's last row is rank r+1's row above, so its gradient comes back from rank r+1's
    grad_above: the backward is the same exchange applied to (grad_above, grad_below).
    """

    @staticmethod
    def forward(ctx, first_row, last_row, group):
        ctx.group = group
        return _exchange_rows(first_row, last_row, group)

    @staticmethod
    def backward(ctx, grad_above, grad_below):
        grad_first, grad_last = _exchange_rows(grad_above, grad_below, ctx.group)
        return grad_first, grad_last, None


def _exchange_rows(first_row, last_row, group):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    first_row, last_row = first_row.contiguous(), last_row.contiguous()
    above, below = torch.zeros_like(last_row), torch.zeros_like(first_row)
    ops = []
    if rank > 0:
        ops += [dist.P2POp(dist.isend, first_row, group=group, group_peer=rank - 1),
                dist.P2POp(dist.irecv, above, group=group, group_peer=rank - 1)]
    if rank < world - 1:
        ops += [dist.P2POp(dist.isend, last_row, group=group, group_peer=rank + 1),
                dist.P2POp(dist.irecv, below, group=group, group_peer=rank + 1)]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()
    return above, below


# ----------------------------------------------------------------------------- sequence split

def segment_state(k, v, g):
    """State a segment leaves from a zero initial state, and its total log decay.

    k, g [B, T, H, K], v [B, T, H, V] in scan order -> S [B, H, K, V], gsum [B, H, K], in fp32
    (fp64 for fp64 inputs). S = sum_t (k_t exp(g_{t+1} + ... + g_last))^T v_t: factors <= 1.
    """
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    k, v, g = k.to(dtype), v.to(dtype), g.to(dtype)
    gates_after = _exclusive_reverse_cumsum(g.transpose(1, 2)).transpose(1, 2)  # sum_{s>t} g_s
    state = torch.einsum("bthk,bthv->bhkv", k * torch.exp(gates_after), v)
    return state, g.sum(1)


def incoming_state(states, log_decays, rank, reverse):
    """State entering `rank`'s segment from the gathered (S_j [R, B, H, K, V], gsum_j [R, B, H, K]).

    S_in = sum_j w_j S_j with w_j = exp(gsum_{j+1} + ... + gsum_{rank-1}) for ranks j before `rank`
    in scan order (after it when reverse) and w_j = 0 for the others, this rank included. The zero
    weights are kept, not skipped, so every rank's output depends on the gathered tensor and every
    rank runs the all-gather's backward, a collective: a rank that skipped it would hang the others.
    """
    if reverse:  # scan order over ranks is R-1, ..., 0: flip, fold forward, index from the end
        states, log_decays, rank = states.flip(0), log_decays.flip(0), states.shape[0] - 1 - rank
    before = (torch.arange(states.shape[0], device=states.device) < rank).to(log_decays.dtype)
    before = before.view(-1, *[1] * (log_decays.dim() - 1))
    masked = log_decays * before  # gsum_j for j < rank, 0 after
    log_weights = _exclusive_reverse_cumsum(masked.movedim(0, -2)).movedim(-2, 0)  # sum_{j<i<rank} gsum_i
    weights = torch.exp(log_weights) * before
    return (weights[..., None] * states).sum(0)


def context_parallel_gla(q, k, v, g, group=None, scale=None, reverse=False, gla_fn=chunk_gla_torch,
                         gate_normalizer=None):
    """GLA over a sequence split in contiguous segments, segment r on rank r of `group`.

    q, k, g [B, T_local, H, K], v [B, T_local, H, V]: this rank's segment (the same T_local on
    every rank); reverse=True scans from the last token of the last rank down to the first token
    of rank 0. gla_fn: the local GLA with kernels.gla's signature (chunk_gla_torch; chunk_gla on
    a GPU). With gate_normalizer, g holds gate logits and the log gate is logsigmoid(g) /
    gate_normalizer, as in kernels.gla: the local GLA forms it inside (in fp32, where a log gate
    passed in would have to share q's dtype, bf16 under autocast). Returns o [B, T_local, H, V],
    equal to the one-process GLA's output on this segment. Collective: every rank of the group
    must call it, and run the backward.
    """
    rank = dist.get_rank(group)
    # the state stays fp32 under a caller's autocast: bf16 would round it at every rank boundary
    with torch.autocast(device_type=q.device.type, enabled=False):
        log_gate = g
        if gate_normalizer is not None:
            logits = g.to(torch.promote_types(g.dtype, torch.float32))
            log_gate = forget_gate_from_logits(logits, gate_normalizer)
        if reverse:  # the segment's own contribution is that of its time-reversed forward scan
            state, log_decay = segment_state(k.flip(1), v.flip(1), log_gate.flip(1))
        else:
            state, log_decay = segment_state(k, v, log_gate)
        B, H, K, V = state.shape
        # one message: [B, H, K, V] state and [B, H, K] log decay, packed
        gathered = _AllGather.apply(torch.cat([state.flatten(), log_decay.flatten()]), group)
        states = gathered[:, :state.numel()].view(-1, B, H, K, V)
        log_decays = gathered[:, state.numel():].view(-1, B, H, K)
        initial_state = incoming_state(states, log_decays, rank, reverse)
    o, _ = gla_fn(q, k, v, g, scale=scale, initial_state=initial_state, reverse=reverse,
                  gate_normalizer=gate_normalizer)
    return o


# -------------------------------------------------------------------------------- grid split

def check_grid_split(tokens_local, grid_size, group):
    """Rows (= columns) per rank; ValueError if the e x e grid does not split evenly over the group."""
    world = dist.get_world_size(group)
    if grid_size % world:
        raise ValueError(f"the {grid_size} x {grid_size} token grid does not split into {world} equal "
                         f"blocks of rows; use a number of ranks that divides {grid_size}.")
    if tokens_local != grid_size * grid_size // world:
        raise ValueError(f"each of {world} ranks must hold {grid_size * grid_size // world} tokens "
                         f"({grid_size // world} rows of {grid_size}); got {tokens_local}.")
    return grid_size // world


def rows_to_columns(x, grid_size, group=None):
    """Rows layout [B, T_local, *C] (this rank's grid rows, raster) -> columns layout [B, T_local, *C]
    (this rank's grid columns, column-major). One all-to-all; differentiable."""
    B, T_local, *channels = x.shape
    world, block = dist.get_world_size(group), check_grid_split(T_local, grid_size, group)
    blocks = x.reshape(B, block, world, block, -1).permute(2, 0, 1, 3, 4)  # [dest, B, row, col, C]
    received = _AllToAll.apply(blocks, group)  # [source = row block, B, row, col, C]
    return received.permute(1, 3, 0, 2, 4).reshape(B, T_local, *channels)  # [B, col, row block, row]


def columns_to_rows(x, grid_size, group=None):
    """Columns layout [B, T_local, *C] -> rows layout [B, T_local, *C]; the inverse of rows_to_columns."""
    B, T_local, *channels = x.shape
    world, block = dist.get_world_size(group), check_grid_split(T_local, grid_size, group)
    blocks = x.reshape(B, block, world, block, -1).permute(2, 0, 3, 1, 4)  # [dest, B, row, col, C]
    received = _AllToAll.apply(blocks, group)  # [source = column block, B, row, col, C]
    return received.permute(1, 2, 0, 3, 4).reshape(B, T_local, *channels)  # [B, row, col block, col]


def layout_of_scan(scan_order):
    """The layout in which `scan_order`'s sequence is split in contiguous segments over the ranks."""
    return "rows" if scan_order in ("raster", "reversed") else "columns"


def to_layout(x, grid_size, group, source, target):
    """x [B, T_local, *C] in layout `source` -> layout `target` (no exchange when they agree)."""
    if source == target:
        return x
    convert = rows_to_columns if target == "columns" else columns_to_rows
    return convert(x, grid_size, group)


def _check_layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}.")


def cp_gla(q, k, v, g, scan_order, grid_size, group=None, layout="rows", gla_fn=chunk_gla_torch,
           scale=None, gate_normalizer=None):
    """GLA of raster tokens split over `group` in `layout`, scanned in `scan_order` (SCAN_ORDERS).

    q, k, g [B, T_local, H, K], v [B, T_local, H, V] with T_local = grid_size^2 / R; returns
    o [B, T_local, H, V] in the same layout: o at raster token p(i) is the GLA output at sequence
    position i of the one-process scan (kernels.gla.chunk_gla_torch with scan_order). Column orders
    on the rows layout (and raster orders on the columns layout) pay one all-to-all in and one out
    (module docstring). gate_normalizer: g holds gate logits (context_parallel_gla).
    """
    _check_layout(layout)
    if scan_order not in SCAN_ORDERS:
        raise ValueError(f"scan_order must be one of {', '.join(SCAN_ORDERS)}; got {scan_order!r}.")
    scan_layout = layout_of_scan(scan_order)
    reverse = scan_order in ("reversed", "reversed_column")
    if scan_layout != layout:
        key_dim = q.shape[-1]
        packed = to_layout(torch.cat([q, k, g, v], -1), grid_size, group, layout, scan_layout)
        q, k, g, v = packed.split([key_dim, key_dim, key_dim, v.shape[-1]], -1)
    o = context_parallel_gla(q, k, v, g, group, scale=scale, reverse=reverse, gla_fn=gla_fn,
                             gate_normalizer=gate_normalizer)
    return to_layout(o, grid_size, group, scan_layout, layout)


def cp_depthwise_conv3x3(x, taps, bias, grid_size, group=None, layout="rows"):
    """Depthwise 3x3 conv (zero padding 1) of the e x e grid of raster tokens split over `group`.

    x [B, T_local, D] in `layout`; taps [D, 3, 3] (kernels.dwconv's convention: the raster-grid taps,
    kernels.dwconv.orient_taps of the block's conv weight), bias [D] or None. Returns [B, T_local, D]
    in the same layout: the one-process kernels.dwconv.depthwise_conv3x3_ref on this rank's tokens.
    Each rank receives one row from each neighbour (2 e D values); the columns layout is the
    transposed grid split in rows, so it runs with the transposed taps.
    """
    _check_layout(layout)
    B, T_local, D = x.shape
    weight = (taps.transpose(-2, -1) if layout == "columns" else taps).unsqueeze(1)  # [D, 1, 3, 3]
    rows = x.reshape(B, check_grid_split(T_local, grid_size, group), grid_size, D)  # [B, row, col, D]
    above, below = _HaloExchange.apply(rows[:, :1], rows[:, -1:], group)  # [B, 1, col, D] each
    padded = torch.cat([above, rows, below], 1).permute(0, 3, 1, 2)  # [B, D, rows + 2, col]
    out = F.conv2d(padded, weight, bias, padding=(0, 1), groups=D)  # [B, D, rows, col]
    return out.flatten(2).transpose(1, 2)
