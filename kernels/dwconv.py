"""Depthwise 3x3 convolution on raster-ordered tokens (DiG's SREM conv), forward and backward.

x [N, T, D] holds an e x e grid of tokens in raster order, channels last. PyTorch's conv2d wants
[N, D, e, e], so the model used to transpose the whole token tensor there and back around every
conv (two copies forward, two backward); these kernels read the channels-last tokens directly.
A block that scans its tokens in another order (kernels/gla/scan_order.py) convolves that order's
grid; on the raster grid that is the same convolution with the taps flipped and/or transposed
(``orient_taps``), because the reordering is a symmetry of the square and zero padding.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_triton_device
from kernels.gla.scan_order import grid_side
from kernels.partial_sums import sum_partials

WEIGHT_SLOTS = tl.constexpr(10)  # sums per channel of the weight gradient: 9 taps and the bias


@dataclass(frozen=True)
class ConvTiles:
    """One program's share of a conv kernel: `rows` image rows (walked top to bottom, the three rows a
    3x3 tap window spans held in registers) of a strip of `width` tokens by `channels` channels."""

    rows: int
    width: int  # a power of two; capped at the grid side's next power of two
    channels: int  # a power of two
    num_warps: int
    stages: int  # rows in flight: the row loop's software-pipelining depth (cp.async), 1 = none


# Register and shared-memory counts below: ptxas -v of the sm_90 build, DiG-S/2 at 2048 px, batch 4
# (128 x 128 grid, D=384). Forward and input gradient: [32 tokens, 64 channels] tiles at 4 warps,
# 180 registers (the nine taps' 8 channels per thread take 72), so 2 programs per SM; 4 stages keep
# 3 input rows (12 KB) in flight per program. Each input row is read from DRAM once per strip (its
# column shifts hit L2) plus 2 halo rows per 16: 8 row groups x 4 strips x 6 channel blocks x 4
# images = 768 programs (one program per 32 tokens, with 9 shifted loads each, were 12288).
CONV_TILES = ConvTiles(rows=16, width=32, channels=64, num_warps=4, stages=4)
# Weight gradient: ~16 live tiles (nine tap sums, the bias sum, three shifts of x, three rows of dy),
# so [16 tokens, 64 channels] at 4 warps: 150 registers, 3 programs per SM, each with 3 rows of x and
# dy (12 KB) in flight. 32 rows: 4 row groups x 8 strips x 6 x 4 = 768 programs; fp32 partials of
# [128 strips, 10, 384] = 2 MB (one program per 32 tokens wrote [2048, 10, 384] = 31 MB).
WGRAD_TILES = ConvTiles(rows=32, width=16, channels=64, num_warps=4, stages=4)


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
def _strip(E, D, n_strips, ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's image rows [r0, r1), strip columns, channels, channel mask and image offset."""
    i_s, i_d, i_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r0 = i_s // n_strips * ROWS
    o_c = i_s % n_strips * BLOCK_W + tl.arange(0, BLOCK_W)
    o_d = i_d * BLOCK_D + tl.arange(0, BLOCK_D)
    return r0, tl.minimum(r0 + ROWS, E), o_c, o_d, o_d < D, i_n.to(tl.int64) * E * E * D


@triton.jit
def _row(ptr, base, q, lo, hi, o_c, o_d, m_d, E, D, dc: tl.constexpr):
    """fp32 [BLOCK_W, BLOCK_D] tile of grid row q at columns o_c + dc; 0 outside the grid's columns and
    unless lo <= q < hi."""
    o_cc = o_c + dc
    m_t = (o_cc >= 0) & (o_cc < E) & (q >= lo) & (q < hi)
    p = ptr + base + (q * E + o_cc).to(tl.int64)[:, None] * D + o_d[None, :]
    return tl.load(p, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _taps(w_ptr, o_d, m_d, i: tl.constexpr, FLIP: tl.constexpr):
    """Row i of the taps [D, 3, 3] (rotated by 180 degrees if FLIP) as three [1, BLOCK_D] fp32 rows."""
    k = (8 - 3 * i) if FLIP else 3 * i
    step: tl.constexpr = -1 if FLIP else 1
    p = w_ptr + o_d * 9 + k
    return (tl.load(p, mask=m_d, other=0.0).to(tl.float32)[None, :],
            tl.load(p + step, mask=m_d, other=0.0).to(tl.float32)[None, :],
            tl.load(p + 2 * step, mask=m_d, other=0.0).to(tl.float32)[None, :])


@triton.jit
def dwconv3x3_kernel(x_ptr, w_ptr, b_ptr, out_ptr, E, D, n_strips, HAS_BIAS: tl.constexpr, FLIP: tl.constexpr,
                     ROWS: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    """out[r, c] = bias + sum_{i, j} w[i, j] x[r + i - 1, c + j - 1] per channel (w rotated by 180
    degrees if FLIP) for this program's rows and strip. Input row q, loaded once as its three column
    shifts, adds to output rows q + 1, q and q - 1 through tap rows 0, 1 and 2; row q - 1 is then
    complete and stored."""
    r0, r1, o_c, o_d, m_d, base = _strip(E, D, n_strips, ROWS, BLOCK_W, BLOCK_D)
    w00, w01, w02 = _taps(w_ptr, o_d, m_d, 0, FLIP)
    w10, w11, w12 = _taps(w_ptr, o_d, m_d, 1, FLIP)
    w20, w21, w22 = _taps(w_ptr, o_d, m_d, 2, FLIP)
    b_bias = tl.zeros([1, BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        b_bias = tl.load(b_ptr + o_d, mask=m_d, other=0.0).to(tl.float32)[None, :]
    b_above = tl.zeros([BLOCK_W, BLOCK_D], dtype=tl.float32)  # [BLOCK_W, BLOCK_D] output row q - 1
    b_here = tl.zeros([BLOCK_W, BLOCK_D], dtype=tl.float32)  # output row q
    m_out = (o_c < E)[:, None] & m_d[None, :]
    for q in tl.range(r0 - 1, r1 + 1, num_stages=STAGES):
        b_left = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, -1)
        b_mid = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, 0)
        b_right = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, 1)
        b_done = b_above + b_left * w20 + b_mid * w21 + b_right * w22 + b_bias
        p_out = out_ptr + base + ((q - 1) * E + o_c).to(tl.int64)[:, None] * D + o_d[None, :]
        tl.store(p_out, b_done.to(out_ptr.dtype.element_ty), mask=m_out & (q > r0))
        b_above = b_here + b_left * w10 + b_mid * w11 + b_right * w12
        b_here = b_left * w00 + b_mid * w01 + b_right * w02


@triton.jit
def dwconv3x3_wgrad_kernel(x_ptr, dy_ptr, partial_ptr, E, D, n_strips, ROWS: tl.constexpr,
                           BLOCK_W: tl.constexpr, BLOCK_D: tl.constexpr, STAGES: tl.constexpr):
    """This program's partial sums over its rows [r0, r1) and strip of dw[i, j] = sum dy[r, c] x[r + i - 1,
    c + j - 1] and db = sum dy, into its row of partial [images x strips, D x 9 taps then D biases]:
    input row q, loaded once as its three column shifts, meets dy rows q + 1, q and q - 1 (tap rows 0,
    1 and 2); the sums stay elementwise until the end."""
    r0, r1, o_c, o_d, m_d, base = _strip(E, D, n_strips, ROWS, BLOCK_W, BLOCK_D)
    b00 = tl.zeros([BLOCK_W, BLOCK_D], dtype=tl.float32)  # [BLOCK_W, BLOCK_D] sums of dy * shifted x
    b01, b02, b10, b11, b12, b20, b21, b22, b_bias = b00, b00, b00, b00, b00, b00, b00, b00, b00
    b_dy_here = b00  # dy row q
    for q in tl.range(r0 - 1, r1 + 1, num_stages=STAGES):
        b_dy_below = _row(dy_ptr, base, q + 1, r0, r1, o_c, o_d, m_d, E, D, 0)
        # dy row q - 1 is loaded again (an L2 hit) rather than carried over two iterations: carried as
        # `b_dy_above = b_dy_here` (a loop value yielded unchanged into another), the sm_90 build of
        # Triton 3.6 left tap row 2 at garbage (relative error 1.0 on the H200, 2026-12-02, for every
        # tile, stage and warp count; the interpreter was right).
        b_dy_above = _row(dy_ptr, base, q - 1, r0, r1, o_c, o_d, m_d, E, D, 0)
        b_left = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, -1)
        b_mid = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, 0)
        b_right = _row(x_ptr, base, q, 0, E, o_c, o_d, m_d, E, D, 1)
        b00 += b_dy_below * b_left
        b01 += b_dy_below * b_mid
        b02 += b_dy_below * b_right
        b10 += b_dy_here * b_left
        b11 += b_dy_here * b_mid
        b12 += b_dy_here * b_right
        b20 += b_dy_above * b_left
        b21 += b_dy_above * b_mid
        b22 += b_dy_above * b_right
        b_bias += b_dy_below
        b_dy_here = b_dy_below
    i_row = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)  # image-major, as the grid
    p_taps = partial_ptr + i_row.to(tl.int64) * WEIGHT_SLOTS * D
    p_tap = p_taps + o_d * 9
    tl.store(p_tap, tl.sum(b00, axis=0), mask=m_d)
    tl.store(p_tap + 1, tl.sum(b01, axis=0), mask=m_d)
    tl.store(p_tap + 2, tl.sum(b02, axis=0), mask=m_d)
    tl.store(p_tap + 3, tl.sum(b10, axis=0), mask=m_d)
    tl.store(p_tap + 4, tl.sum(b11, axis=0), mask=m_d)
    tl.store(p_tap + 5, tl.sum(b12, axis=0), mask=m_d)
    tl.store(p_tap + 6, tl.sum(b20, axis=0), mask=m_d)
    tl.store(p_tap + 7, tl.sum(b21, axis=0), mask=m_d)
    tl.store(p_tap + 8, tl.sum(b22, axis=0), mask=m_d)
    tl.store(p_taps + 9 * D + o_d, tl.sum(b_bias, axis=0), mask=m_d)


def _launch(x, tiles):
    """Grid (row groups x strips, channel blocks, N), strips per row group, grid side, meta-parameters."""
    N, T, D = x.shape
    side = grid_side(T, transpose=True)
    width = min(tiles.width, triton.next_power_of_2(side))
    channels = min(tiles.channels, triton.next_power_of_2(D))
    n_strips = triton.cdiv(side, width)
    grid = (triton.cdiv(side, tiles.rows) * n_strips, triton.cdiv(D, channels), N)
    return grid, n_strips, side, dict(ROWS=tiles.rows, BLOCK_W=width, BLOCK_D=channels, STAGES=tiles.stages,
                                      num_warps=tiles.num_warps)


def _conv(x, taps, bias, out_dtype, flip=False):
    grid, n_strips, side, meta = _launch(x, CONV_TILES)
    out = torch.empty(x.shape, device=x.device, dtype=out_dtype)
    dwconv3x3_kernel[grid](x, taps, taps if bias is None else bias, out, side, x.shape[2], n_strips,
                           HAS_BIAS=bias is not None, FLIP=flip, **meta)
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
    dx = _conv(dy, taps, None, x.dtype, flip=True)
    grid, n_strips, side, meta = _launch(x, WGRAD_TILES)
    D = x.shape[2]
    partial = torch.empty(grid[2] * grid[0], WEIGHT_SLOTS.value * D, device=x.device, dtype=torch.float32)
    dwconv3x3_wgrad_kernel[grid](x, dy, partial, side, D, n_strips, **meta)
    dtaps, dbias = torch.empty_like(taps), taps.new_empty(D)
    sum_partials(partial, dtaps, dbias)
    return dx, dtaps, dbias


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
