"""Fused SwiGLU activation silu(a) * b of DiG's FFN, forward and backward, and the FFN's second half.

u [..., 2I] is the output of the FFN's one up-projection GEMM, a = u[..., :I] (gate), b = u[..., I:].
PyTorch runs silu and the product as two kernels forward and keeps silu(a) besides u for backward;
here the backward recomputes silu(a) from u, and writes du for both halves in one kernel.
``swiglu_down`` also folds in the down projection: the activation [..., I] that its GEMM would keep
for the weight gradient is recomputed from u in backward instead (DiG-XL/2: 3072 bf16 values per
token and layer, 5.6 GB at 2048 px batch 2, for one extra memory-bound activation kernel).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_triton_device

BLOCK = 1024  # columns per program: 8 fp32 values per thread at 4 warps


def swiglu_ref(u):
    """silu(a) * b with a, b = u.chunk(2, -1), in fp32 at least, returned in u's dtype."""
    a, b = u.to(torch.promote_types(u.dtype, torch.float32)).chunk(2, dim=-1)
    return (F.silu(a) * b).to(u.dtype)


@triton.jit
def _columns(I, BLOCK: tl.constexpr):
    i_row, i_col = tl.program_id(0).to(tl.int64), tl.program_id(1)
    cols = i_col * BLOCK + tl.arange(0, BLOCK)
    return i_row * 2 * I + cols, i_row * I + cols, cols < I


@triton.jit
def swiglu_fwd_kernel(u_ptr, out_ptr, I, BLOCK: tl.constexpr):
    p_u, p_out, mask = _columns(I, BLOCK)
    a = tl.load(u_ptr + p_u, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(u_ptr + p_u + I, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + p_out, (a * tl.sigmoid(a) * b).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(u_ptr, dout_ptr, du_ptr, I, BLOCK: tl.constexpr):
    """da = dout * b * silu'(a), silu'(a) = sigmoid(a) (1 + a (1 - sigmoid(a))); db = dout * silu(a)."""
    p_u, p_out, mask = _columns(I, BLOCK)
    a = tl.load(u_ptr + p_u, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(u_ptr + p_u + I, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + p_out, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    da = dout * b * sig * (1.0 + a * (1.0 - sig))
    tl.store(du_ptr + p_u, da.to(du_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + p_u + I, (dout * a * sig).to(du_ptr.dtype.element_ty), mask=mask)


def _grid(u):
    I = u.shape[-1] // 2
    return (u.numel() // (2 * I), triton.cdiv(I, BLOCK)), I


@torch.library.custom_op("dig::swiglu_fwd", mutates_args=())
def swiglu_fwd(u: Tensor) -> Tensor:
    """silu(a) * b for contiguous u [..., 2I] -> [..., I]."""
    grid, I = _grid(u)
    out = torch.empty(*u.shape[:-1], I, device=u.device, dtype=u.dtype)
    swiglu_fwd_kernel[grid](u, out, I, BLOCK=BLOCK, num_warps=4)
    return out


@swiglu_fwd.register_fake
def _(u):
    return u.new_empty(*u.shape[:-1], u.shape[-1] // 2)


@torch.library.custom_op("dig::swiglu_bwd", mutates_args=())
def swiglu_bwd(u: Tensor, dout: Tensor) -> Tensor:
    """du [..., 2I] like u."""
    grid, I = _grid(u)
    du = torch.empty_like(u)
    swiglu_bwd_kernel[grid](u, dout, du, I, BLOCK=BLOCK, num_warps=4)
    return du


@swiglu_bwd.register_fake
def _(u, dout):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, dout):
    (u,) = ctx.saved_tensors
    return torch.ops.dig.swiglu_bwd(u, dout.contiguous())


swiglu_fwd.register_autograd(_backward, setup_context=_setup_context)


def swiglu_down_ref(u, weight):
    """The plain twin of swiglu_down: down-projection of silu(a) * b; u [..., 2I], weight [D, I]."""
    return F.linear(swiglu_ref(u), weight.to(u.dtype))


@torch.library.custom_op("dig::swiglu_down_fwd", mutates_args=())
def swiglu_down_fwd(u: Tensor, weight: Tensor) -> Tensor:
    """(silu(a) * b) @ weight^T in u's dtype: u [..., 2I] contiguous, weight [D, I] -> [..., D]."""
    return swiglu_fwd(u) @ weight.to(u.dtype).t()


@swiglu_down_fwd.register_fake
def _(u, weight):
    return u.new_empty(*u.shape[:-1], weight.shape[0])


@torch.library.custom_op("dig::swiglu_down_bwd", mutates_args=())
def swiglu_down_bwd(u: Tensor, weight: Tensor, dout: Tensor) -> tuple[Tensor, Tensor]:
    """(du like u, dweight like weight); the activation is recomputed from u."""
    w = weight.to(u.dtype)
    act = swiglu_fwd(u).flatten(0, -2)  # [M, I]
    dout = dout.flatten(0, -2)  # [M, D]
    du = swiglu_bwd(u, (dout @ w).view(*u.shape[:-1], -1))
    return du, (dout.t() @ act).to(weight.dtype)


@swiglu_down_bwd.register_fake
def _(u, weight, dout):
    return torch.empty_like(u), torch.empty_like(weight)


def _down_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _down_backward(ctx, dout):
    return torch.ops.dig.swiglu_down_bwd(*ctx.saved_tensors, dout.contiguous())


swiglu_down_fwd.register_autograd(_down_backward, setup_context=_down_setup_context)


def swiglu_down(u, weight):
    """Fused FFN second half: (silu(a) * b) @ weight^T with a, b = u.chunk(2, -1); u [..., 2I] in the
    GEMM dtype (autocast's), weight [D, I] (fp32 master weights are cast) -> [..., D] in u's dtype.
    Differentiable in both; keeps only u for backward. Triton (CUDA or interpreter) + cuBLAS."""
    check_triton_device("swiglu_down", u)
    if u.shape[-1] != 2 * weight.shape[1]:
        raise ValueError(f"u's last dimension must be 2 * weight.shape[1] = {2 * weight.shape[1]}; got "
                         f"{u.shape[-1]}.")
    return torch.ops.dig.swiglu_down_fwd(u.contiguous(), weight)


def swiglu(u):
    """Fused silu(a) * b, a, b = u.chunk(2, -1): u [..., 2I] -> [..., I] in u's dtype, computed in fp32.
    Differentiable; Triton (CUDA or interpreter)."""
    check_triton_device("swiglu", u)
    if u.shape[-1] % 2:
        raise ValueError(f"u's last dimension must be even (gate and value halves); got {u.shape[-1]}.")
    return torch.ops.dig.swiglu_fwd(u.contiguous())
