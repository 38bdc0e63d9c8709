"""Depthwise 3x3 convolution on raster-ordered tokens (DiG's SREM conv), forward and backward.

x [N, T, D] holds an e x e grid of tokens in raster order, channels last. PyTorch's conv2d wants
[N, D, e, e], so the model used to transpose the whole token tensor there and back around every
conv (two copies forward, two backward); these kernels read the channels-last tokens directly.
A block that scans its tokens in another order (kernels/gla/scan_order.py) convolves that order's
grid; on the raster grid that is the same convolution with the taps flipped and/or transposed
(``orient_taps``), because the reordering is a symmetry of the square and zero padding.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_triton_device
from kernels.gla.scan_order import grid_side

# [32 tokens, 64 channels] fp32 tiles: 16 values per thread at 4 warps.
BLOCK_P, BLOCK_D = tl.constexpr(32), tl.constexpr(64)
WEIGHT_SLOTS = tl.constexpr(10)  # partial sums of the weight gradient per program: 9 taps and the bias


def orient_taps(weight, scan_order):
    """[D, 1, 3, 3] taps of a conv over the scan order's grid -> [D, 3, 3] taps of the same conv on the
    raster grid: reversed orders rotate the grid by 180 degrees, column orders transpose it."""
    taps = weight[:, 0]
    if scan_order in ("column", "reversed_column"):
        taps = taps.transpose(1, 2)
    if scan_order in ("reversed", "reversed_column"):
        taps = taps.flip(1, 2)
    return taps


def depthwise_conv3x3_ref(x, taps, bias, out_dtype=None):
    """The plain twin: conv2d on the [N, D, e, e] view; x [N, T, D], taps [D, 3, 3], bias [D] or None."""
    N, T, D = x.shape
    side = grid_side(T, transpose=True)
    dtype = torch.promote_types(x.dtype, torch.float32)
    grid = x.to(dtype).view(N, side, side, D).permute(0, 3, 1, 2)
    bias = None if bias is None else bias.to(dtype)
    out = F.conv2d(grid, taps.to(dtype).unsqueeze(1), bias, padding=1, groups=D)
    return out.permute(0, 2, 3, 1).reshape(N, T, D).to(out_dtype or x.dtype)


@triton.jit
def _tile(E, D):
    i_p, i_d, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    p = i_p * BLOCK_P + tl.arange(0, BLOCK_P)
    d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    return i_p, i_n, p, d, p < E * E, d < D, i_n.to(tl.int64) * E * E * D


@triton.jit
def _shifted(x_ptr, base, p, d, m_p, m_d, E, D, di: tl.constexpr, dj: tl.constexpr):
    """The [BLOCK_P, BLOCK_D] fp32 tile of x at token (r + di, c + dj) of each token p = (r, c); 0 outside."""
    r, c = p // E + di, p % E + dj
    ok = m_p & (r >= 0) & (r < E) & (c >= 0) & (c < E)
    p_x = x_ptr + base + (r * E + c).to(tl.int64)[:, None] * D + d[None, :]
    return tl.load(p_x, mask=ok[:, None] & m_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def dwconv3x3_kernel(x_ptr, w_ptr, b_ptr, out_ptr, E, D, HAS_BIAS: tl.constexpr):
    """out[r, c] = bias + sum_{i, j} w[i, j] * x[r + i - 1, c + j - 1] per channel."""
    _, i_n, p, d, m_p, m_d, base = _tile(E, D)
    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            w = tl.load(w_ptr + d * 9 + i * 3 + j, mask=m_d, other=0.0).to(tl.float32)
            acc += _shifted(x_ptr, base, p, d, m_p, m_d, E, D, i - 1, j - 1) * w[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    p_out = out_ptr + base + p.to(tl.int64)[:, None] * D + d[None, :]
    tl.store(p_out, acc.to(out_ptr.dtype.element_ty), mask=m_p[:, None] & m_d[None, :])


@triton.jit
def dwconv3x3_wgrad_kernel(x_ptr, dy_ptr, partial_ptr, E, D):
    """This program's partial sums of dw[i, j] = sum_p dy[p] x[p + (i - 1, j - 1)] and db = sum_p dy[p]."""
    i_p, i_n, p, d, m_p, m_d, base = _tile(E, D)
    p_dy = dy_ptr + base + p.to(tl.int64)[:, None] * D + d[None, :]
    dy = tl.load(p_dy, mask=m_p[:, None] & m_d[None, :], other=0.0).to(tl.float32)
    p_partial = partial_ptr + ((i_n.to(tl.int64) * tl.num_programs(0) + i_p) * WEIGHT_SLOTS) * D + d
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            x = _shifted(x_ptr, base, p, d, m_p, m_d, E, D, i - 1, j - 1)
            tl.store(p_partial + (i * 3 + j) * D, tl.sum(dy * x, axis=0), mask=m_d)
    tl.store(p_partial + 9 * D, tl.sum(dy, axis=0), mask=m_d)


def _grid(x):
    N, T, D = x.shape
    return (triton.cdiv(T, BLOCK_P.value), triton.cdiv(D, BLOCK_D.value), N), grid_side(T, transpose=True)


def _conv(x, taps, bias, out_dtype):
    grid, side = _grid(x)
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    dwconv3x3_kernel[grid](x, taps, taps if bias is None else bias, out, side, x.shape[2],
                           HAS_BIAS=bias is not None, num_warps=4)
    return out


@torch.library.custom_op("dig::dwconv3x3_fwd", mutates_args=())
def dwconv3x3_fwd(x: Tensor, taps: Tensor, bias: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """Depthwise 3x3 conv, zero padding, of raster tokens x [N, T, D] (contiguous), taps [D, 3, 3]."""
    return _conv(x, taps, bias, out_dtype)


@dwconv3x3_fwd.register_fake
def _(x, taps, bias, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


@torch.library.custom_op("dig::dwconv3x3_bwd", mutates_args=())
def dwconv3x3_bwd(x: Tensor, taps: Tensor, dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(dx like x, dtaps like taps, dbias [D] in taps' dtype). dx is the conv of dy with the taps
    rotated by 180 degrees (the adjoint of a correlation)."""
    dx = _conv(dy, taps.flip(1, 2).contiguous(), None, x.dtype)
    grid, side = _grid(x)
    partial = torch.empty(x.shape[0], grid[0], WEIGHT_SLOTS.value, x.shape[2], device=x.device,
                          dtype=torch.float32)
    dwconv3x3_wgrad_kernel[grid](x, dy, partial, side, x.shape[2], num_warps=4)
    # [9, D] -> [D, 3, 3]; contiguous, as the fake implementation (and torch.compile) assumes
    dtaps = partial[:, :, :9].sum((0, 1)).t().contiguous().view(taps.shape)
    return dx, dtaps.to(taps.dtype), partial[:, :, 9].sum((0, 1)).to(taps.dtype)


@dwconv3x3_bwd.register_fake
def _(x, taps, dy):
    return torch.empty_like(x), torch.empty_like(taps), taps.new_empty(taps.shape[0])


def _setup_context(ctx, inputs, output):
    x, taps, bias, _ = inputs
    ctx.save_for_backward(x, taps)
    ctx.has_bias = bias is not None


def _backward(ctx, dy):
    x, taps = ctx.saved_tensors
    dx, dtaps, dbias = torch.ops.dig.dwconv3x3_bwd(x, taps, dy.contiguous())
    return dx, dtaps, dbias if ctx.has_bias else None, None


dwconv3x3_fwd.register_autograd(_backward, setup_context=_setup_context)


def depthwise_conv3x3(x, taps, bias=None, out_dtype=None):
    """Depthwise 3x3 conv (zero padding) of raster tokens: x [N, T, D] with T = e^2, taps [D, 3, 3],
    bias [D] or None -> [N, T, D] in out_dtype (default x's), computed in fp32. Differentiable in all
    three; Triton."""
    check_triton_device("depthwise_conv3x3", x)
    N, T, D = x.shape
    grid_side(T, transpose=True)
    if taps.shape != (D, 3, 3) or (bias is not None and bias.shape != (D,)):
        raise ValueError(f"taps must be [D, 3, 3] and bias [D] with D={D}; got {tuple(taps.shape)} and "
                         f"{None if bias is None else tuple(bias.shape)}.")
    return torch.ops.dig.dwconv3x3_fwd(x.contiguous(), taps.contiguous(), bias, out_dtype or x.dtype)
