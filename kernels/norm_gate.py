"""Fused Triton RMSNorm * weight * swish(gate), DiG's GLA output normalisation, forward and backward.

y = o * rsqrt(mean(o^2, -1) + eps) * weight * silu(gate), in fp32, returned in o's dtype; the same math
as ``rms_norm_swish_gate_ref`` in one kernel each way instead of ~12 forward and ~20 backward small
PyTorch ops, keeping only an fp32 rstd per row (not fp32 copies of o and the gate) for backward.
The gate may be a column slice of a wider tensor (the GLA layer's fused projection output): it is
read, and its gradient written, with its own token stride, heads of V values contiguous in a row.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import MAX_TILE_ELEMENTS, check_triton_device

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# 32 rows of V=64 (DiG's head dim) = a 2048-element fp32 tile per tensor: 16 values per thread with
# 4 warps, so the ~8 live tiles of the backward fit in registers. DiG-S/2 at 1024 px, batch 4, has 4*4096*6 =
# 98304 rows -> 3072 programs, ~23 waves on the H200's 132 SMs (small tail), and fp32 dweight partials
# of 3072 x 64 x 4 B = 0.8 MB, summed by one small .sum(0).
ROWS_PER_PROGRAM = 32
NUM_WARPS = 4
EPS = 1e-6


def rms_norm_swish_gate_ref(o, gate, weight, eps=EPS):
    """The plain twin: RMSNorm over the last dim * weight * swish(gate), like fla's FusedRMSNormSwishGate.

    o, gate [..., V]; weight [V] -> [..., V] in o's dtype. Computed in fp32 at least (fp64 stays fp64).
    """
    dtype = torch.promote_types(o.dtype, torch.float32)
    o_wide = o.to(dtype)
    o_wide = o_wide * torch.rsqrt(o_wide.pow(2).mean(-1, keepdim=True) + eps) * weight.to(dtype)
    return (o_wide * F.silu(gate.to(dtype))).to(o.dtype)


@triton.jit
def _tile(rows_done, n_rows, V, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Row indices, int64 element offsets, row mask, column indices and column mask of one tile."""
    rows = rows_done + tl.arange(0, ROWS).to(tl.int64)  # int64: rows * V can exceed 2**31
    cols = tl.arange(0, BLOCK_V)
    offsets = rows[:, None] * V + cols[None, :]
    return rows, offsets, rows < n_rows, cols, cols < V


@triton.jit
def _gate_offsets(rows, cols, V, HEADS, token_stride):
    """Offsets of rows (token * HEADS + head) in a gate tensor with the given token stride."""
    return (rows // HEADS * token_stride + rows % HEADS * V)[:, None] + cols[None, :]


@triton.jit
def norm_gate_fwd_kernel(o_ptr, gate_ptr, gate_token_stride, weight_ptr, y_ptr, rstd_ptr, n_rows, V, HEADS,
                         eps, ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """y[r] = o[r] * rstd[r] * weight * silu(gate[r]) for ROWS rows; also stores rstd [n_rows] (fp32)."""
    rows_done = tl.program_id(0).to(tl.int64) * ROWS
    rows, offsets, row_mask, cols, col_mask = _tile(rows_done, n_rows, V, ROWS, BLOCK_V)
    mask = row_mask[:, None] & col_mask[None, :]
    # Masked entries load 0, which adds nothing to the sum of squares and gives y = 0 (not stored).
    x = tl.load(o_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    p_gate = gate_ptr + _gate_offsets(rows, cols, V, HEADS, gate_token_stride)
    g = tl.load(p_gate, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / V + eps)
    y = x * rstd[:, None] * w[None, :] * (g * tl.sigmoid(g))
    tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def norm_gate_bwd_kernel(o_ptr, gate_ptr, gate_token_stride, weight_ptr, rstd_ptr, dy_ptr, do_ptr, dgate_ptr,
                         dgate_token_stride, dweight_partial_ptr, n_rows, V, HEADS,
                         ROWS: tl.constexpr, BLOCK_V: tl.constexpr):
    """do, dgate for ROWS rows (input dtype) and this program's dweight partial sum (fp32 [V]).

    n = o*rstd, a = n*w, s = silu(gate): dw = sum_rows(dy*s*n); dn = dy*s*w;
    do = rstd*(dn - n*mean(dn*n)); dgate = dy*a*sigmoid(gate)*(1 + gate*(1 - sigmoid(gate))).
    """
    pid = tl.program_id(0).to(tl.int64)
    rows, offsets, row_mask, cols, col_mask = _tile(pid * ROWS, n_rows, V, ROWS, BLOCK_V)
    mask = row_mask[:, None] & col_mask[None, :]
    # Masked rows and columns load 0 (rstd too), so they add 0 to the dweight and mean(dn*n) sums.
    x = tl.load(o_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + _gate_offsets(rows, cols, V, HEADS, gate_token_stride), mask=mask,
                other=0.0).to(tl.float32)
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
    p_dgate = dgate_ptr + _gate_offsets(rows, cols, V, HEADS, dgate_token_stride)
    tl.store(p_dgate, dgate.to(dgate_ptr.dtype.element_ty), mask=mask)
    tl.store(dweight_partial_ptr + pid * V + cols, tl.sum(dy_a * n, axis=0), mask=col_mask)


def launch_dims(n_rows, V):
    """(grid, rows per program, BLOCK_V) for n_rows rows of V values."""
    block_v = triton.next_power_of_2(V)
    rows = max(1, min(ROWS_PER_PROGRAM, MAX_TILE_ELEMENTS // block_v))
    return (triton.cdiv(n_rows, rows),), rows, block_v


def token_stride(gate):
    """Token stride of a gate [N, T, H, V] whose heads are contiguous and whose tokens are evenly spaced."""
    N, T, H, V = gate.shape
    if gate.stride(3) != 1 or gate.stride(2) != V or gate.stride(0) != T * gate.stride(1):
        raise ValueError(f"gate must have contiguous heads and evenly spaced tokens; got strides "
                         f"{gate.stride()}.")
    return gate.stride(1)


def norm_gate_forward(o, gate, weight, eps):
    """o [N, T, H, V] contiguous, gate [N, T, H, V] (token-strided) -> (y like o, rstd fp32 [N*T*H])."""
    N, T, H, V = o.shape
    grid, rows, block_v = launch_dims(o.numel() // V, V)
    y = torch.empty_like(o)
    rstd = torch.empty(o.numel() // V, device=o.device, dtype=torch.float32)
    norm_gate_fwd_kernel[grid](o, gate, token_stride(gate), weight, y, rstd, o.numel() // V, V, H, eps,
                               ROWS=rows, BLOCK_V=block_v, num_warps=NUM_WARPS)
    return y, rstd


def norm_gate_backward(o, gate, weight, rstd, dy, dgate):
    """Writes dgate (like gate, token-strided); returns (do like o, dweight in weight's dtype)."""
    N, T, H, V = o.shape
    n_rows = o.numel() // V
    grid, rows, block_v = launch_dims(n_rows, V)
    do = torch.empty_like(o)
    # One fp32 partial per program, summed afterwards: deterministic, unlike atomics.
    dweight_partial = torch.empty(grid[0], V, device=o.device, dtype=torch.float32)
    norm_gate_bwd_kernel[grid](o, gate, token_stride(gate), weight, rstd, dy, do, dgate, token_stride(dgate),
                               dweight_partial, n_rows, V, H, ROWS=rows, BLOCK_V=block_v, num_warps=NUM_WARPS)
    return do, dweight_partial.sum(0).to(weight.dtype)


@torch.library.custom_op("dig::norm_gate_fwd", mutates_args=())
def norm_gate_fwd(o: Tensor, gate: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(y [N, T, H, V] like o, rstd fp32 [N*T*H]) of contiguous o and a token-strided gate."""
    return norm_gate_forward(o, gate, weight, eps)


@norm_gate_fwd.register_fake
def _(o, gate, weight, eps):
    return torch.empty_like(o), o.new_empty(o.numel() // o.shape[-1], dtype=torch.float32)


@torch.library.custom_op("dig::norm_gate_bwd", mutates_args=())
def norm_gate_bwd(o: Tensor, gate: Tensor, weight: Tensor, rstd: Tensor,
                  dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(do like o, dgate contiguous like gate, dweight like weight)."""
    dgate = torch.empty(gate.shape, device=gate.device, dtype=gate.dtype)
    do, dweight = norm_gate_backward(o, gate, weight, rstd, dy, dgate)
    return do, dgate, dweight


@norm_gate_bwd.register_fake
def _(o, gate, weight, rstd, dy):
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    return torch.empty_like(o), dgate, torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    o, gate, weight, _ = inputs
    ctx.save_for_backward(o, gate, weight, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # None for the statistics, not a zero fill each backward


def _backward(ctx, dy, _drstd):
    o, gate, weight, rstd = ctx.saved_tensors
    do, dgate, dweight = torch.ops.dig.norm_gate_bwd(o, gate, weight, rstd, dy.contiguous())
    return do, dgate, dweight, None


norm_gate_fwd.register_autograd(_backward, setup_context=_setup_context)


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
                         "(use rms_norm_swish_gate_ref for other dtypes).")
    if gate.dtype != o.dtype:
        raise ValueError(f"gate must have o's dtype {o.dtype}; got {gate.dtype}.")
    if weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"weight must be float16, bfloat16 or float32; got {weight.dtype}.")
    check_triton_device("rms_norm_swish_gate_fused", o)
    for name, tensor in (("gate", gate), ("weight", weight)):
        if tensor.device != o.device:
            raise ValueError(f"{name} must be on o's device {o.device}; got {tensor.device}.")


def rms_norm_swish_gate_fused(o, gate, weight, eps=EPS):
    """Fused RMSNorm over the last dim * weight * swish(gate), differentiable in o, gate and weight.

    o, gate [..., V] (same shape, float16/bfloat16/float32, same dtype); weight [V] -> y [..., V] in o's
    dtype. Computed in fp32: y = o * rsqrt(mean(o^2, -1) + eps) * weight * silu(gate). Gradients: o and
    gate in their dtype, weight in its dtype (accumulated in fp32). Raises ValueError for bad input.
    """
    check_norm_gate_inputs(o, gate, weight)
    V = o.shape[-1]
    as_rows = lambda x: x.contiguous().view(1, -1, 1, V)  # [N=1, T=rows, H=1, V]
    y, _ = torch.ops.dig.norm_gate_fwd(as_rows(o), as_rows(gate), weight.contiguous(), float(eps))
    return y.view(o.shape)
