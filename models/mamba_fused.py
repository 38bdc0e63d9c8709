"""DiS's fused CUDA path, as its reference implementation runs it (Vim's bimamba "v2" on mamba-ssm).

Per scan direction, one autograd function runs causal-conv1d's CUDA conv + SiLU, x_proj, dt_proj and
mamba-ssm's selective_scan_cuda with the z gate, and recomputes the conv output and delta in the backward
instead of storing them (mamba's checkpoint_lvl=1). It is mamba-ssm's MambaInnerFn without the out_proj
(Vim's `mamba_inner_fn_no_out_proj`), written here from the packages' building blocks: bimamba v2 sums
the two directions before one shared out_proj. Calling mamba_inner_fn per direction instead would apply
out_proj twice, out_proj(y_f) + flip(out_proj(y_b)), equal by linearity (no bias) but one extra
(b*l, E) x (E, D) GEMM forward and two backward per block: with E = 2D that is 2D^2 more multiply-adds
per token on a block's 6.5D^2 (in_proj 4D^2, out_proj 2D^2, x_proj and dt_proj D^2/4 per direction),
+31% of its GEMM work, a cost DiS does not pay.

The add + RMSNorm is mamba-ssm's fused Triton `rms_norm_fn(prenorm=True, residual_in_fp32=True)`, as
DiS's fused_add_norm calls it. The plain twin of both is the modules in models/dis.py (fused=False).
"""

import torch
import torch.nn.functional as F

from .common import BackendUnavailableError
from .mamba_scan import resolve_scan

try:
    # compiled extensions: a missing or broken build raises ImportError or OSError (undefined symbol)
    import selective_scan_cuda
    from causal_conv1d.cpp_functions import causal_conv1d_bwd_function, causal_conv1d_fwd_function
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    FUSED_IMPORT_ERROR = None
except (ImportError, OSError) as error:
    selective_scan_cuda = causal_conv1d_fwd_function = causal_conv1d_bwd_function = rms_norm_fn = None
    FUSED_IMPORT_ERROR = f"{type(error).__name__}: {error}"

FUSED_DESCRIPTION = ("scan=mamba_ssm fused inner path (causal_conv1d + selective_scan CUDA, no out_proj, "
                     "recomputed in backward) + fused add-RMSNorm (mamba_ssm Triton)")
FUSED_BUILD_HELP = (
    "With internet and a CUDA toolkit: `pip install --no-build-isolation -e .[mamba]` (mamba-ssm and "
    "causal-conv1d); offline, on the GPU machine: `bash scripts/build_mamba.sh` and `bash "
    "scripts/build_causal_conv1d.sh`, then put both directories they print on PYTHONPATH."
)
FUSED_CHOICES = ("auto", True, False)


def resolve_dis_backend(scan_backend, fused):
    """(scan_fn or None, fused?, description) for DiS(scan_backend=..., fused=...).

    fused "auto" takes the fused path when its packages import and scan_backend is not "reference"; True
    requires it (BackendUnavailableError saying how to build it); False runs the plain modules with
    scan_backend's scan. On the fused path scan_fn is None: the fused function runs its own scan.
    """
    if not (isinstance(fused, bool) or fused == "auto"):  # not 0 or 1 either
        raise ValueError(f"fused must be one of {FUSED_CHOICES}, got {fused!r}.")
    if fused is True and scan_backend == "reference":
        raise ValueError("fused=True runs mamba-ssm's CUDA scan; it cannot use scan_backend='reference'.")
    if fused == "auto":
        fused = FUSED_IMPORT_ERROR is None and scan_backend != "reference"
    if not fused:
        scan_fn, description = resolve_scan(scan_backend)
        if description.startswith("scan=reference"):  # the whole model is PyTorch
            return scan_fn, False, description
        return scan_fn, False, description + " + torch conv1d and add-RMSNorm"
    if FUSED_IMPORT_ERROR is not None:
        raise BackendUnavailableError(
            f"DiS's fused path needs mamba-ssm's selective_scan_cuda and causal-conv1d's causal_conv1d_cuda, "
            f"which do not import here ({FUSED_IMPORT_ERROR}). {FUSED_BUILD_HELP} (fused=False runs the "
            f"plain modules, on mamba-ssm's scan when only mamba-ssm is built.)")
    return None, True, FUSED_DESCRIPTION


class MambaInnerNoOutProj(torch.autograd.Function):
    """One direction of bimamba v2: xz [b, 2E, l] -> silu-gated scan output [b, E, l] (before out_proj).

    conv_weight [E, 1, w], conv_bias [E], x_proj_weight [R + 2N, E], dt_proj_weight [E, R], A [E, N] fp32,
    D [E] fp32, dt_bias [E] fp32. Under autocast the two projections run in the autocast dtype, as in
    mamba-ssm; the conv keeps its fp32 weight and the scan its fp32 A, D and dt_bias.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, dt_bias):
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
            x_proj_weight, dt_proj_weight = x_proj_weight.to(dtype), dt_proj_weight.to(dtype)
        xz = xz if xz.stride(-1) == 1 else xz.contiguous()
        conv_weight = conv_weight.squeeze(1)  # (E, w)
        x, z = xz.chunk(2, dim=1)
        conv_out, x_dbl, delta, B, C = _conv_and_projections(x, conv_weight, conv_bias, x_proj_weight,
                                                            dt_proj_weight, A.shape[1])
        out, scan_states, out_z = selective_scan_cuda.fwd(conv_out, delta, A, B, C, D, z, dt_bias, True)
        # conv_out and delta are recomputed in backward (mamba's checkpoint_lvl=1): 2 x [b, E, l] less
        ctx.save_for_backward(xz, conv_weight, conv_bias, x_dbl, x_proj_weight, dt_proj_weight, A, B, C, D,
                              dt_bias, scan_states, out)
        return out_z

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dout):
        (xz, conv_weight, conv_bias, x_dbl, x_proj_weight, dt_proj_weight, A, B, C, D, dt_bias, scan_states,
         out) = ctx.saved_tensors
        dt_rank, state_size = dt_proj_weight.shape[1], A.shape[1]
        batch, _, length = xz.shape
        x, z = xz.chunk(2, dim=1)
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        conv_out = causal_conv1d_fwd_function(x, conv_weight, conv_bias, None, None, None, True)
        delta = _delta(dt_proj_weight, x_dbl[:, :dt_rank], batch, length)
        dxz = torch.empty_like(xz)
        dx, dz = dxz.chunk(2, dim=1)  # the kernels write into these views of dxz
        dconv_out, ddelta, dA, dB, dC, dD, ddt_bias, _ = selective_scan_cuda.bwd(
            conv_out, delta, A, B, C, D, z, dt_bias, dout, scan_states, out, dz, True, False)
        dx_dbl = torch.empty_like(x_dbl)  # (bl, R + 2N)
        dx_dbl[:, dt_rank:dt_rank + state_size] = _rows(dB)
        dx_dbl[:, dt_rank + state_size:] = _rows(dC)
        ddelta = ddelta.permute(1, 0, 2).reshape(ddelta.shape[1], -1)  # (E, bl)
        ddt_proj_weight = ddelta @ x_dbl[:, :dt_rank]  # (E, R)
        dx_dbl[:, :dt_rank] = ddelta.t() @ dt_proj_weight
        dconv_out = dconv_out.permute(1, 0, 2).reshape(dconv_out.shape[1], -1)  # (E, bl)
        dx_proj_weight = dx_dbl.t() @ conv_out.transpose(1, 2).reshape(-1, conv_out.shape[1])
        dconv_out = torch.addmm(dconv_out, x_proj_weight.t(), dx_dbl.t())
        dconv_out = dconv_out.view(-1, batch, length).permute(1, 0, 2)  # (b, E, l)
        _, dconv_weight, dconv_bias, _ = causal_conv1d_bwd_function(
            x, conv_weight, conv_bias, dconv_out, None, None, None, dx, False, True)
        return dxz, dconv_weight.unsqueeze(1), dconv_bias, dx_proj_weight, ddt_proj_weight, dA, dD, ddt_bias


def _delta(dt_proj_weight, dt, batch, length):
    """dt_proj without its bias (the scan adds it): (E, R) @ (bl, R)^T -> (b, E, l), l contiguous."""
    return (dt_proj_weight @ dt.t()).view(-1, batch, length).permute(1, 0, 2)


def _scan_layout(rows, batch, length):
    """(bl, N) rows -> (b, 1, N, l) contiguous: selective_scan_cuda's variable B / C with one group."""
    return rows.view(batch, length, -1).permute(0, 2, 1).unsqueeze(1).contiguous()


def _rows(grad):
    """(b, 1, N, l) -> (bl, N): the inverse of _scan_layout, for the gradients."""
    return grad.squeeze(1).permute(0, 2, 1).reshape(-1, grad.shape[2])


def _conv_and_projections(x, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, state_size):
    """x [b, E, l] -> conv_out [b, E, l], x_dbl [bl, R+2N], delta [b, E, l], B and C [b, 1, N, l]."""
    batch, inner_size, length = x.shape
    dt_rank = dt_proj_weight.shape[1]
    conv_out = causal_conv1d_fwd_function(x, conv_weight, conv_bias, None, None, None, True)  # with SiLU
    x_dbl = F.linear(conv_out.transpose(1, 2).reshape(batch * length, inner_size), x_proj_weight)
    delta = _delta(dt_proj_weight, x_dbl[:, :dt_rank], batch, length)
    B = _scan_layout(x_dbl[:, dt_rank:dt_rank + state_size], batch, length)
    C = _scan_layout(x_dbl[:, dt_rank + state_size:], batch, length)
    return conv_out, x_dbl, delta, B, C


def fused_add_rms_norm(hidden, residual, weight, eps):
    """mamba-ssm's Triton add + RMSNorm: (RMSNorm(residual + hidden) in hidden's dtype, the sum in fp32)."""
    return rms_norm_fn(hidden, weight, None, residual=residual, eps=eps, prenorm=True, residual_in_fp32=True)
