"""DiS's fused path on the CPU: backend selection, labels and errors, and the fused function's glue code.

The glue (layouts, the z gate, the recompute, the gradient assembly of MambaInnerNoOutProj) runs here
against PyTorch stand-ins for the three compiled pieces, written to their contracts: the same arguments
and return values, the layout checks the CUDA kernels make, gradients written into the buffers the caller
passes. tests/test_dis_gpu.py checks the real kernels.
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import rel_err
from models import mamba_fused, mamba_scan
from models.common import BackendUnavailableError
from models.dis import DiS, DiS_models
from models.mamba_scan import selective_scan_ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_scan_layout(u, delta, B, C, z):
    """The TORCH_CHECKs of selective_scan_cuda that the glue must satisfy."""
    batch, dim, length = u.shape
    assert u.stride(-1) == 1 and delta.stride(-1) == 1 and z.stride(-1) == 1
    assert delta.shape == z.shape == u.shape and delta.dtype == z.dtype == u.dtype
    for value in (B, C):  # variable B and C in the grouped layout, one group
        assert value.shape[:2] == (batch, 1) and value.shape[-1] == length and value.dim() == 4
        assert value.stride(-1) == 1 and value.dtype == u.dtype


class SelectiveScanCudaStandIn:
    """selective_scan_cuda.fwd / bwd on the CPU, through the reference scan."""

    @staticmethod
    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        check_scan_layout(u, delta, B, C, z)
        assert A.dtype == D.dtype == delta_bias.dtype == torch.float32
        out = selective_scan_ref(u, delta, A, B.squeeze(1), C.squeeze(1), D, None, delta_bias, delta_softplus)
        states = torch.zeros(u.shape[0], u.shape[1], 1, 2 * A.shape[1])  # (b, d, n_chunks, 2N)
        return out, states, out * F.silu(z)

    @staticmethod
    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, states, out, dz, delta_softplus, recompute_out_z):
        check_scan_layout(u, delta, B, C, z)
        assert dout.shape == u.shape and dout.stride(-1) == 1 and dz.dtype == u.dtype and not recompute_out_z
        leaves = [x.detach().requires_grad_() for x in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad():
            u_, delta_, A_, B_, C_, D_, z_, bias_ = leaves
            out_z = selective_scan_ref(u_, delta_, A_, B_.squeeze(1), C_.squeeze(1), D_, z_, bias_,
                                       delta_softplus)
            grads = torch.autograd.grad(out_z, leaves, dout)
        dz.copy_(grads[6])  # the kernel writes dz into the caller's buffer
        return [*grads[:6], grads[7], dz]


def causal_conv1d_silu(x, weight, bias):
    """SiLU(causal depthwise conv) computed in fp32, in x's dtype, as the CUDA kernel does."""
    width = weight.shape[-1]
    padded = F.pad(x.float(), (width - 1, 0))  # output t sees inputs t-3..t
    conv = F.conv1d(padded, weight.float()[:, None], bias.float(), groups=x.shape[1])
    return F.silu(conv).to(x.dtype)


def causal_conv1d_fwd_standin(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation):
    assert x.stride(-1) == 1 and weight.dim() == 2 and silu_activation
    assert seq_idx is None and initial_states is None and final_states_out is None
    return causal_conv1d_silu(x, weight, bias)


def causal_conv1d_bwd_standin(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx,
                              return_dinitial_states, silu_activation):
    assert dout.stride(-1) == 1 and dx is not None and silu_activation and not return_dinitial_states
    leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
    with torch.enable_grad():
        dx_, dweight, dbias = torch.autograd.grad(causal_conv1d_silu(*leaves), leaves, dout)
    dx.copy_(dx_)  # written into the caller's buffer, as the kernel does
    return dx, dweight, dbias, None


def rms_norm_fn_standin(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False):
    """mamba-ssm's rms_norm_fn (rms_norm_ref's formula) for the one call DiS makes."""
    assert bias is None and prenorm and residual_in_fp32
    residual_out = x.float() if residual is None else residual + x.float()
    normed = residual_out * torch.rsqrt(residual_out.square().mean(-1, keepdim=True) + eps) * weight
    return normed.to(x.dtype), residual_out


@pytest.fixture
def fused_standins(monkeypatch):
    """The fused path 'available' with CPU stand-ins (and mamba-ssm's scan as the reference scan)."""
    monkeypatch.setattr(mamba_fused, "selective_scan_cuda", SelectiveScanCudaStandIn)
    monkeypatch.setattr(mamba_fused, "causal_conv1d_fwd_function", causal_conv1d_fwd_standin)
    monkeypatch.setattr(mamba_fused, "causal_conv1d_bwd_function", causal_conv1d_bwd_standin)
    monkeypatch.setattr(mamba_fused, "rms_norm_fn", rms_norm_fn_standin)
    monkeypatch.setattr(mamba_fused, "FUSED_IMPORT_ERROR", None)
    monkeypatch.setattr(mamba_scan, "selective_scan_fn", selective_scan_ref)
    monkeypatch.setattr(mamba_scan, "MAMBA_IMPORT_ERROR", None)


def tiny_dis(**kwargs):
    return DiS(input_size=8, hidden_size=64, depth=2, num_classes=10, **kwargs)


def test_fused_unavailable_says_how_to_build(monkeypatch):
    missing = "ModuleNotFoundError: No module named 'causal_conv1d'"
    monkeypatch.setattr(mamba_fused, "FUSED_IMPORT_ERROR", missing)
    with pytest.raises(BackendUnavailableError, match=r"build_mamba\.sh.*build_causal_conv1d\.sh"):
        tiny_dis(fused=True)
    assert tiny_dis(scan_backend="reference").backend_description == "scan=reference (PyTorch)"


def test_fused_argument_errors():
    with pytest.raises(ValueError, match="fused must be one of"):
        tiny_dis(fused="yes")
    with pytest.raises(ValueError, match="cannot use scan_backend='reference'"):
        tiny_dis(fused=True, scan_backend="reference")


def test_backend_labels_name_what_runs(fused_standins):
    assert tiny_dis().backend_description == mamba_fused.FUSED_DESCRIPTION  # "auto" takes the fused path
    assert tiny_dis(fused=True).backend_description.startswith("scan=mamba_ssm fused inner path")
    assert tiny_dis(fused=False).backend_description == (
        "scan=mamba_ssm selective_scan_fn (CUDA) + torch conv1d and add-RMSNorm")
    assert tiny_dis(scan_backend="reference").backend_description == "scan=reference (PyTorch)"
    assert DiS_models["DiS-S/2"](8, fused=False, scan_backend="reference").backend_description == (
        "scan=reference (PyTorch)")


def test_fused_glue_matches_plain_path(fused_standins):
    """Same weights through the fused function (on stand-ins) and the plain modules: outputs and every
    gradient agree to fp32 rounding. Same state_dict keys, so checkpoints load either way."""
    torch.manual_seed(0)
    fused = tiny_dis(fused=True).eval()  # eval: no random class dropout
    plain = tiny_dis(fused=False, scan_backend="reference").eval()
    assert fused.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():  # every parameter random, so that a gradient routed to the wrong place shows
        for param in fused.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    plain.load_state_dict(fused.state_dict())
    x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2) * 999, torch.randint(0, 10, (2,))
    grad_out = torch.randn(2, 8, 8, 8)
    outputs = {}
    for name, model in (("fused", fused), ("plain", plain)):
        out = model(x, t, y)
        out.backward(grad_out)
        outputs[name] = out.detach()
    # the same fp32 operations in another order (conv by F.conv1d on padded input, norm by its formula)
    assert rel_err(outputs["fused"], outputs["plain"]) < 1e-5
    plain_params = dict(plain.named_parameters())
    for name, param in fused.named_parameters():
        assert param.grad is not None and plain_params[name].grad is not None, name
        assert rel_err(param.grad, plain_params[name].grad) < 1e-4, name  # sums over tokens: 10x the forward
