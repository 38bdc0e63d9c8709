"""Fused Triton RMSNorm * weight * swish(gate), DiG's GLA output normalisation, forward and backward.

y = o * rsqrt(mean(o^2, -1) + eps) * weight * silu(gate), in fp32, returned in o's dtype; the same math
as models.gla_layer.rms_norm_swish_gate in one kernel each way instead of ~12 forward and ~20 backward
small PyTorch ops, keeping only an fp32 rstd per row (not fp32 copies of o and the gate) for backward.
"""

import torch
import triton
import triton.language as tl

from kernels import interpreting

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# 32 rows of V=64 (DiG's head dim) = a 2048-element fp32 tile per tensor: 16 values per thread with
# 4 warps, so the ~8 live tiles of the backward fit in registers. DiG-S/2 at 1024 px, batch 4, has 4*4096*6 =
# 98304 rows -> 3072 programs, ~23 waves on the H200's 132 SMs (small tail), and fp32 dweight partials
# of 3072 x 64 x 4 B = 0.8 MB, summed by one small .sum(0).
ROWS_PER_PROGRAM = 32
# Wider rows get fewer rows per program so the tile stays <= 4096 fp32 values (no register spills).
MAX_TILE_ELEMENTS = 4096
NUM_WARPS = 4


@triton.jit
def _tile(rows_done, n_rows, V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Row indices, int64 element offsets, row mask, column indices and column mask of one tile."""
    rows = rows_done + tl.arange(0, ROWS).to(tl.int64)  # int64: rows * V can exceed 2**31
    cols = tl.arange(0, BLOCK_V)
    offsets = rows[:, None] * V + cols[None, :]
    return rows, offsets, rows < n_rows, cols, cols < V


@triton.jit
def norm_gate_fwd_kernel(o_ptr, gate_ptr, weight_ptr, y_ptr, rstd_ptr, n_rows, V, eps,
                         ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """y[r] = o[r] * rstd[r] * weight * silu(gate[r]) for ROWS rows; also stores rstd [n_rows] (fp32)."""
    rows_done = tl.program_id(0).to(tl.int64) * ROWS
    rows, offsets, row_mask, cols, col_mask = _tile(rows_done, n_rows, V, ROWS, BLOCK_V)
    mask = row_mask[:, None] & col_mask[None, :]
    # Masked entries load 0, which adds nothing to the sum of squares and gives y = 0 (not stored).
    x = tl.load(o_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / V + eps)
    y = x * rstd[:, None] * w[None, :] * (g * tl.sigmoid(g))
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def norm_gate_bwd_kernel(o_ptr, gate_ptr, weight_ptr, rstd_ptr, dy_ptr, do_ptr, dgate_ptr,
                         dweight_partial_ptr, n_rows, V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """do, dgate for ROWS rows (input dtype) and this program's dweight partial sum (fp32 [V]).

    n = o*rstd, a = n*w, s = silu(gate): dw = sum_rows(dy*s*n); dn = dy*s*w;
    do = rstd*(dn - n*mean(dn*n)); dgate = dy*a*sigmoid(gate)*(1 + gate*(1 - sigmoid(gate))).
    """
    pid = tl.program_id(0).to(tl.int64)
    rows, offsets, row_mask, cols, col_mask = _tile(pid * ROWS, n_rows, V, ROWS, BLOCK_V)
    mask = row_mask[:, None] & col_mask[None, :]
    # Masked rows and columns load 0 (rstd too), so they add 0 to the dweight and mean(dn*n) sums.
    x = tl.load(o_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    n = x * rstd[:, None]
    sig = tl.sigmoid(g)
    dy_a = dy * (g * sig)
    dn = dy_a * w[None, :]
    dx = rstd[:, None] * (dn - n * (tl.sum(dn * n, axis=1) / V)[:, None])
    dgate = dy * (n * w[None, :]) * sig * (1.0 + g * (1.0 - sig))
    tl.store(do_ptr + offsets, dx.to(do_ptr.dtype.element_ty), mask=mask)
    tl.store(dgate_ptr + offsets, dgate.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dweight_partial_ptr + pid * V + cols, tl.sum(dy_a * n, axis=0), mask=col_mask)


def launch_dims(n_rows, V):
    """(grid, rows per program, BLOCK_V) for n_rows rows of V values."""
    block_v = triton.next_power_of_2(V)
    rows = max(1, min(ROWS_PER_PROGRAM, MAX_TILE_ELEMENTS // block_v))
    return (triton.cdiv(n_rows, rows),), rows, block_v


class RMSNormSwishGateFunction(torch.autograd.Function):
    """Autograd wrapper: o, gate contiguous [rows, V] in one dtype; weight [V]."""

    @staticmethod
    def forward(ctx, o, gate, weight, eps):
        n_rows, V = o.shape
        grid, rows, block_v = launch_dims(n_rows, V)
        y = torch.empty_like(o)
        rstd = torch.empty(n_rows, device=o.device, dtype=torch.float32)
        norm_gate_fwd_kernel[grid](o, gate, weight, y, rstd, n_rows, V, eps, ROWS=rows, BLOCK_V=block_v,
                                   num_warps=NUM_WARPS)
        ctx.save_for_backward(o, gate, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        o, gate, weight, rstd = ctx.saved_tensors
        n_rows, V = o.shape
        grid, rows, block_v = launch_dims(n_rows, V)
        do, dgate = torch.empty_like(o), torch.empty_like(gate)
        # One fp32 partial per program, summed afterwards: deterministic, unlike atomics.
        dweight_partial = torch.empty(grid[0], V, device=o.device, dtype=torch.float32)
        norm_gate_bwd_kernel[grid](o, gate, weight, rstd, dy.contiguous(), do, dgate, dweight_partial,
                                   n_rows, V, ROWS=rows, BLOCK_V=block_v, num_warps=NUM_WARPS)
        return do, dgate, dweight_partial.sum(0).to(weight.dtype), None


def check_norm_gate_inputs(o, gate, weight):
    """Raise ValueError, naming the argument, unless the fused kernels can take these tensors."""
    if o.dim() < 1 or o.shape[-1] < 1:
        raise ValueError(f"o must have a non-empty last dimension [..., V]; got shape {tuple(o.shape)}.")
    if gate.shape != o.shape:
        raise ValueError(f"gate must have o's shape {tuple(o.shape)}; got {tuple(gate.shape)}.")
    if weight.shape != o.shape[-1:]:
        raise ValueError(f"weight must have shape [V] = [{o.shape[-1]}]; got {tuple(weight.shape)}.")
    if o.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"o must be float16, bfloat16 or float32 for the fused kernel; got {o.dtype} "
                         "(use models.gla_layer.rms_norm_swish_gate for other dtypes).")
    if gate.dtype != o.dtype:
        raise ValueError(f"gate must have o's dtype {o.dtype}; got {gate.dtype}.")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"weight must be float16, bfloat16 or float32; got {weight.dtype}.")
    if o.device.type != "cuda" and not interpreting():
        raise ValueError(f"o must be on a CUDA device, as rms_norm_swish_gate_fused runs Triton kernels (got "
                         f"{o.device}); on the CPU set TRITON_INTERPRET=1 for the interpreter.")
    for name, tensor in (("gate", gate), ("weight", weight)):
        if tensor.device != o.device:
            raise ValueError(f"{name} must be on o's device {o.device}; got {tensor.device}.")


def rms_norm_swish_gate_fused(o, gate, weight, eps=1e-6):
    """Fused RMSNorm over the last dim * weight * swish(gate), differentiable in o, gate and weight.

    o, gate [..., V] (same shape, float16/bfloat16/float32, same dtype); weight [V] -> y [..., V] in o's
    dtype. Computed in fp32: y = o * rsqrt(mean(o^2, -1) + eps) * weight * silu(gate). Gradients: o and
    gate in their dtype, weight in its dtype (accumulated in fp32). Raises ValueError for bad input.
    """
    check_norm_gate_inputs(o, gate, weight)
    V = o.shape[-1]
    y = RMSNormSwishGateFunction.apply(o.contiguous().view(-1, V), gate.contiguous().view(-1, V),
                                       weight.contiguous(), float(eps))
    return y.view(o.shape)
