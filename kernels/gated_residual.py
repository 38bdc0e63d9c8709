"""Fused adaLN-Zero gated residual add x + gate * y, forward and backward.

x [N, T, D] (the fp32 residual stream), gate [N, D] (per image), y [N, T, D] (a branch output in the
autocast dtype) -> [N, T, D] in x's dtype. PyTorch does this as a broadcast mul and an add (two
kernels, the product materialised), and its backward as three (dy = dout * gate, dgate as a mul and
a reduction); here it is one kernel each way. The backward keeps only y and gate; for dgate each
backward program walks a contiguous run of token tiles of one channel block (a few hundred programs
in all, ``BWD_SPLIT``), sums in registers and writes one fp32 row of partials, added in a fixed order
by one small kernel (deterministic; kernels/partial_sums.py).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import TokenSplit, check_triton_device, split_tiles, token_rows_launch
from kernels.partial_sums import sum_partials

# Backward: tiles of BWD_CHANNELS channels (no row-wide statistic, so D=384 and 1152 split into 3 and
# 9 full blocks of 128 where a whole-row tile would mask off 25% and 44% of its 512 and 2048 lanes)
# by 2048 // 128 = 16 tokens: 16 fp32 per thread at 4 warps, 64 registers (ptxas -v, sm_90), 2
# tiles of dout and y in flight (3 stages). 528 programs: 4 per SM of the H200's 132. DiG-S/2 at
# 2048 px, batch 4 (T=16384): 43 programs per image and channel block, walking 24 tiles each; fp32
# partials 43 x 4 x 384 = 0.26 MB (one program per 8 tokens wrote 8192 x 384 = 12.6 MB).
BWD_CHANNELS = 128
BWD_SPLIT = TokenSplit(programs=528, tile_elements=2048, num_warps=4, stages=3)


def gated_residual_ref(x, gate, y):
    """x + gate[:, None] * y computed in x's precision (fp32 at least); the plain twin."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return (x.to(dtype) + gate.to(dtype).unsqueeze(1) * y.to(dtype)).to(x.dtype)


@triton.jit
def _offsets(i_n, i_t, T, D, cols, ROWS: tl.constexpr):
    """int64 offsets and mask of token tile i_t of image i_n in columns `cols`."""
    rows = i_t * ROWS + tl.arange(0, ROWS)
    offsets = (i_n.to(tl.int64) * T + rows)[:, None] * D + cols[None, :]
    return offsets, (rows < T)[:, None] & (cols < D)[None, :]


@triton.jit
def gated_residual_fwd_kernel(x_ptr, gate_ptr, y_ptr, out_ptr, T, D,
                              ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    i_t, i_n = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    offsets, mask = _offsets(i_n, i_t, T, D, cols, ROWS)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + i_n * D + cols, mask=cols < D, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x + gate[None, :] * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_residual_bwd_kernel(dout_ptr, gate_ptr, y_ptr, dy_ptr, partial_ptr, T, D, tiles_per_program,
                              ROWS: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    """dy = dout * gate over this program's run of token tiles in one channel block, and its partial
    sum of dgate = sum_t dout * y into partial [programs per image and block, N, D]."""
    i_g, i_d, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    cols = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    gate = tl.load(gate_ptr + i_n * D + cols, mask=cols < D, other=0.0).to(tl.float32)
    b_dgate = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for i_k in tl.range(tiles_per_program, num_stages=STAGES):
        offsets, mask = _offsets(i_n, i_g * tiles_per_program + i_k, T, D, cols, ROWS)
        dout = tl.load(dout_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(dy_ptr + offsets, (dout * gate[None, :]).to(dy_ptr.dtype.element_ty), mask=mask)
        b_dgate += dout * y
    p_partial = partial_ptr + (i_g.to(tl.int64) * tl.num_programs(2) + i_n) * D + cols
    tl.store(p_partial, tl.sum(b_dgate, axis=0), mask=cols < D)


def _bwd_launch(x):
    """Grid (programs per image and channel block, channel blocks, N), tiles per program, meta-parameters."""
    N, T, D = x.shape
    block_d = min(BWD_CHANNELS, triton.next_power_of_2(D))
    rows = max(1, BWD_SPLIT.tile_elements // block_d)
    blocks = triton.cdiv(D, block_d)
    groups, per_group = split_tiles(triton.cdiv(T, rows), N * blocks, BWD_SPLIT.programs)
    return (groups, blocks, N), per_group, dict(ROWS=rows, BLOCK_D=block_d, STAGES=BWD_SPLIT.stages,
                                        num_warps=BWD_SPLIT.num_warps)


@torch.library.custom_op("dig::gated_residual_fwd", mutates_args=())
def gated_residual_fwd(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate[:, None] * y; all contiguous."""
    N, T, D = x.shape
    out = torch.empty_like(x)
    grid, meta = token_rows_launch(x)
    gated_residual_fwd_kernel[grid](x, gate, y, out, T, D, **meta)
    return out


@gated_residual_fwd.register_fake
def _(x, gate, y):
    return torch.empty_like(x)


@torch.library.custom_op("dig::gated_residual_bwd", mutates_args=())
def gated_residual_bwd(dout: Tensor, gate: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(dy like y, dgate like gate)."""
    N, T, D = dout.shape
    grid, tiles_per_program, meta = _bwd_launch(dout)
    dy = torch.empty_like(y)
    partial = torch.empty(grid[0], N * D, device=dout.device, dtype=torch.float32)
    gated_residual_bwd_kernel[grid](dout, gate, y, dy, partial, T, D, tiles_per_program, **meta)
    dgate = torch.empty_like(gate)
    sum_partials(partial, dgate)
    return dy, dgate


@gated_residual_bwd.register_fake
def _(dout, gate, y):
    return torch.empty_like(y), torch.empty_like(gate)


def _setup_context(ctx, inputs, output):
    _, gate, y = inputs
    ctx.save_for_backward(gate, y)


def _backward(ctx, dout):
    gate, y = ctx.saved_tensors
    dout = dout.contiguous()
    dy, dgate = torch.ops.dig.gated_residual_bwd(dout, gate, y)
    return dout, dgate, dy


gated_residual_fwd.register_autograd(_backward, setup_context=_setup_context)


def gated_residual(x, gate, y):
    """Fused x + gate[:, None] * y: x, y [N, T, D], gate [N, D] -> [N, T, D] in x's dtype, computed
    in fp32. Differentiable in all three; Triton (CUDA or interpreter)."""
    check_triton_device("gated_residual", x)
    if y.shape != x.shape or gate.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"y must be x's shape {tuple(x.shape)} and gate [N, D]; got {tuple(y.shape)} and "
                         f"{tuple(gate.shape)}.")
    return torch.ops.dig.gated_residual_fwd(x.contiguous(), gate.contiguous(), y.contiguous())
