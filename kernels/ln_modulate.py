"""Fused LayerNorm (no affine) + adaLN modulation, forward and backward: DiG's and DiT's block input.

h = LN(x) * (1 + scale) + shift per image, x [N, T, D], shift and scale [N, D]. In PyTorch under
autocast this is 5 kernels forward (layer_norm, add, mul, add, the bf16 cast for the next GEMM)
and keeps two fp32 [N, T, D] tensors for backward; here it is one kernel each way that writes h
directly in the GEMM's dtype and keeps only x (already alive as the residual stream) and two fp32
statistics per row. dshift and dscale are per-image sums over tokens: each backward program walks
a contiguous run of token tiles (a few hundred programs in all, ``BWD_SPLIT``), sums in registers and
writes one fp32 row of partials, which one small kernel adds in a fixed order (deterministic, unlike
atomics; kernels/partial_sums.py).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import TokenSplit, check_triton_device, row_tile, split_tiles, token_rows_launch
from kernels.partial_sums import sum_partials

EPS = 1e-6
# Backward: tiles of 2048 fp32 (4 tokens of D=384 in 512 columns), 16 values per thread at 4 warps:
# 122 registers (ptxas -v, sm_90), 4 programs per SM, each with 2 tiles of x and dh in flight (3
# stages). 528 programs: 4 per SM of the H200's 132, one wave. DiG-S/2 at 2048 px, batch 4
# (T=16384): 128 programs per image, each walking 32 tiles; fp32 partials 128 x 2 x 4 x 384 = 1.6 MB
# (one program per 8 tokens wrote 25 MB).
BWD_SPLIT = TokenSplit(programs=528, tile_elements=2048, num_warps=4, stages=3)


def layer_norm_modulate_ref(x, shift, scale, eps=EPS, out_dtype=None):
    """LN(x) * (1 + scale) + shift in fp32 at least (fp64 stays fp64); x [N, T, D], shift/scale [N, D]."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    h = F.layer_norm(x.to(dtype), x.shape[-1:], eps=eps)
    h = h * (1 + scale.to(dtype).unsqueeze(1)) + shift.to(dtype).unsqueeze(1)
    return h.to(out_dtype or x.dtype)


@triton.jit
def _tile(x_ptr, i_n, i_t, T, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows (tokens of image i_n), int64 offsets, masks, and the fp32 tile of x."""
    rows = i_t * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    m_r, m_c = rows < T, cols < D
    offsets = (i_n.to(tl.int64) * T + rows)[:, None] * D + cols[None, :]
    mask = m_r[:, None] & m_c[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    return rows, cols, m_r, m_c, offsets, mask, x


@triton.jit
def ln_modulate_fwd_kernel(x_ptr, shift_ptr, scale_ptr, h_ptr, mean_ptr, rstd_ptr, T, D, eps,
                           ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    i_t, i_n = tl.program_id(0), tl.program_id(1)
    rows, cols, m_r, m_c, offsets, mask, x = _tile(x_ptr, i_n, i_t, T, D, ROWS, BLOCK_D)
    mean = tl.sum(x, axis=1) / D
    diff = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, axis=1) / D + eps)
    scale = tl.load(scale_ptr + i_n * D + cols, mask=m_c, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + i_n * D + cols, mask=m_c, other=0.0).to(tl.float32)
    h = diff * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    tl.store(h_ptr + offsets, h.to(h_ptr.dtype.element_ty), mask=mask)
    stat = i_n.to(tl.int64) * T + rows
    tl.store(mean_ptr + stat, mean, mask=m_r)
    tl.store(rstd_ptr + stat, rstd, mask=m_r)


@triton.jit
def ln_modulate_bwd_kernel(x_ptr, scale_ptr, mean_ptr, rstd_ptr, dh_ptr, dx_ptr, partial_ptr, T, D,
                           tiles_per_program, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
                           STAGES: tl.constexpr):
    """dx for this program's run of token tiles, and its partial sums of dshift = sum dh and
    dscale = sum dh * xhat into partial [programs per image, 2, N, D]."""
    i_g, i_n = tl.program_id(0), tl.program_id(1)
    cols = tl.arange(0, BLOCK_D)
    m_c = cols < D
    scale = tl.load(scale_ptr + i_n * D + cols, mask=m_c, other=0.0).to(tl.float32)
    b_dshift = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    b_dscale = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    for i_k in tl.range(tiles_per_program, num_stages=STAGES):
        i_t = i_g * tiles_per_program + i_k
        rows, _, m_r, _, offsets, mask, x = _tile(x_ptr, i_n, i_t, T, D, ROWS, BLOCK_D)
        stat = i_n.to(tl.int64) * T + rows
        mean = tl.load(mean_ptr + stat, mask=m_r, other=0.0)
        rstd = tl.load(rstd_ptr + stat, mask=m_r, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        dh = tl.load(dh_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dxhat = dh * (1.0 + scale[None, :])
        mean_dxhat = tl.sum(dxhat, axis=1) / D
        mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) / D
        dx = (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        b_dshift += dh
        b_dscale += dh * xhat
    p_partial = partial_ptr + (i_g.to(tl.int64) * 2 * tl.num_programs(1) + i_n) * D + cols
    tl.store(p_partial, tl.sum(b_dshift, axis=0), mask=m_c)
    tl.store(p_partial + tl.num_programs(1) * D, tl.sum(b_dscale, axis=0), mask=m_c)


def _bwd_launch(x):
    """Grid (programs per image, N), tiles per program and meta-parameters of the backward."""
    N, T, D = x.shape
    rows, block_d = row_tile(D, max_elements=BWD_SPLIT.tile_elements)
    groups, per_group = split_tiles(triton.cdiv(T, rows), N, BWD_SPLIT.programs)
    return (groups, N), per_group, dict(ROWS=rows, BLOCK_D=block_d, STAGES=BWD_SPLIT.stages,
                                        num_warps=BWD_SPLIT.num_warps)


@torch.library.custom_op("dig::ln_modulate_fwd", mutates_args=())
def ln_modulate_fwd(x: Tensor, shift: Tensor, scale: Tensor, eps: float,
                    out_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(h [N, T, D] in out_dtype, mean, rstd fp32 [N, T]); x contiguous."""
    N, T, D = x.shape
    h = torch.empty(N, T, D, device=x.device, dtype=out_dtype)
    mean, rstd = (torch.empty(N, T, device=x.device, dtype=torch.float32) for _ in range(2))
    grid, meta = token_rows_launch(x)
    ln_modulate_fwd_kernel[grid](x, shift, scale, h, mean, rstd, T, D, eps, **meta)
    return h, mean, rstd


@ln_modulate_fwd.register_fake
def _(x, shift, scale, eps, out_dtype):
    N, T, D = x.shape
    return x.new_empty(N, T, D, dtype=out_dtype), x.new_empty(N, T), x.new_empty(N, T)


@torch.library.custom_op("dig::ln_modulate_bwd", mutates_args=())
def ln_modulate_bwd(x: Tensor, scale: Tensor, mean: Tensor, rstd: Tensor,
                    dh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx like x, dshift, dscale [N, D] in scale's dtype)."""
    N, T, D = x.shape
    grid, tiles_per_program, meta = _bwd_launch(x)
    dx = torch.empty_like(x)
    partial = torch.empty(grid[0], 2 * N * D, device=x.device, dtype=torch.float32)
    ln_modulate_bwd_kernel[grid](x, scale, mean, rstd, dh, dx, partial, T, D, tiles_per_program, **meta)
    dshift, dscale = torch.empty_like(scale), torch.empty_like(scale)
    sum_partials(partial, dshift, dscale)
    return dx, dshift, dscale


@ln_modulate_bwd.register_fake
def _(x, scale, mean, rstd, dh):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


def _setup_context(ctx, inputs, output):
    x, shift, scale, eps, out_dtype = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # None for the statistics, not a zero fill each backward


def _backward(ctx, dh, _dmean, _drstd):
    x, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = torch.ops.dig.ln_modulate_bwd(x, scale, mean, rstd, dh.contiguous())
    return dx, dshift, dscale, None, None


ln_modulate_fwd.register_autograd(_backward, setup_context=_setup_context)


def layer_norm_modulate(x, shift, scale, eps=EPS, out_dtype=None):
    """Fused LN(x) * (1 + scale) + shift; x [N, T, D], shift and scale [N, D] -> [N, T, D] in
    out_dtype (default x's). Differentiable in x, shift and scale; Triton (CUDA or interpreter)."""
    check_triton_device("layer_norm_modulate", x)
    if shift.shape != (x.shape[0], x.shape[2]) or scale.shape != shift.shape:
        raise ValueError(f"shift and scale must be [N, D] = {(x.shape[0], x.shape[2])}; got "
                         f"{tuple(shift.shape)} and {tuple(scale.shape)}.")
    h, _, _ = torch.ops.dig.ln_modulate_fwd(x.contiguous(), shift.contiguous(), scale.contiguous(), eps,
                                            out_dtype or x.dtype)
    return h
