"""Fused adaLN-Zero gated residual add x + gate * y, forward and backward.

x [N, T, D] (the fp32 residual stream), gate [N, D] (per image), y [N, T, D] (a branch output in the
autocast dtype) -> [N, T, D] in x's dtype. PyTorch does this as a broadcast mul and an add (two
kernels, the product materialised), and its backward as three (dy = dout * gate, dgate as a mul and
a reduction); here it is one kernel each way. The backward keeps only y and gate; dgate is summed
from one fp32 partial per program (deterministic).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_triton_device, row_tile


def gated_residual_ref(x, gate, y):
    """x + gate[:, None] * y computed in x's precision (fp32 at least); the plain twin."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    return (x.to(dtype) + gate.to(dtype).unsqueeze(1) * y.to(dtype)).to(x.dtype)


@triton.jit
def _offsets(i_n, i_t, T, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = i_t * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    m_c = cols < D
    offsets = (i_n.to(tl.int64) * T + rows)[:, None] * D + cols[None, :]
    return cols, m_c, offsets, (rows < T)[:, None] & m_c[None, :]


@triton.jit
def gated_residual_fwd_kernel(x_ptr, gate_ptr, y_ptr, out_ptr, T, D,
                              ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    i_t, i_n = tl.program_id(0), tl.program_id(1)
    cols, m_c, offsets, mask = _offsets(i_n, i_t, T, D, ROWS, BLOCK_D)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + i_n * D + cols, mask=m_c, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, (x + gate[None, :] * y).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gated_residual_bwd_kernel(dout_ptr, gate_ptr, y_ptr, dy_ptr, partial_ptr, T, D,
                              ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """dy = dout * gate, and this program's partial sum of dgate = sum_t dout * y."""
    i_t, i_n = tl.program_id(0), tl.program_id(1)
    cols, m_c, offsets, mask = _offsets(i_n, i_t, T, D, ROWS, BLOCK_D)
    dout = tl.load(dout_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = tl.load(gate_ptr + i_n * D + cols, mask=m_c, other=0.0).to(tl.float32)
    tl.store(dy_ptr + offsets, (dout * gate[None, :]).to(dy_ptr.dtype.element_ty), mask=mask)
    p_partial = partial_ptr + (i_n.to(tl.int64) * tl.num_programs(0) + i_t) * D + cols
    tl.store(p_partial, tl.sum(dout * y, axis=0), mask=m_c)


def _launch(x):
    N, T, D = x.shape
    rows, block_d = row_tile(D)
    return (triton.cdiv(T, rows), N), dict(ROWS=rows, BLOCK_D=block_d, num_warps=4)


@torch.library.custom_op("dig::gated_residual_fwd", mutates_args=())
def gated_residual_fwd(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate[:, None] * y; all contiguous."""
    N, T, D = x.shape
    out = torch.empty_like(x)
    grid, meta = _launch(x)
    gated_residual_fwd_kernel[grid](x, gate, y, out, T, D, **meta)
    return out


@gated_residual_fwd.register_fake
def _(x, gate, y):
    return torch.empty_like(x)


@torch.library.custom_op("dig::gated_residual_bwd", mutates_args=())
def gated_residual_bwd(dout: Tensor, gate: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(dy like y, dgate like gate)."""
    N, T, D = dout.shape
    grid, meta = _launch(dout)
    dy = torch.empty_like(y)
    partial = torch.empty(N, grid[0], D, device=dout.device, dtype=torch.float32)
    gated_residual_bwd_kernel[grid](dout, gate, y, dy, partial, T, D, **meta)
    return dy, partial.sum(1).to(gate.dtype)


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
