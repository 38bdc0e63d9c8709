"""DiS on the GPU: mamba-ssm's CUDA scan, and the fused path (causal-conv1d + selective_scan CUDA, Triton
add + RMSNorm) against the plain modules on the same weights.

Build them with `bash scripts/build_mamba.sh` and `bash scripts/build_causal_conv1d.sh` and put the
printed directories on PYTHONPATH; without causal-conv1d the fused tests skip.
"""

import pytest
import torch

from helpers import rel_err
from models import mamba_fused
from models.dis import DiS_models
from models.mamba_scan import MAMBA_IMPORT_ERROR, selective_scan_fn, selective_scan_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_mamba = pytest.mark.skipif(
    selective_scan_fn is None, reason=f"mamba_ssm does not import ({MAMBA_IMPORT_ERROR}); build it with "
    "`bash scripts/build_mamba.sh` and put the printed directory on PYTHONPATH")
needs_fused = pytest.mark.skipif(
    mamba_fused.FUSED_IMPORT_ERROR is not None,
    reason=f"the fused path does not import ({mamba_fused.FUSED_IMPORT_ERROR}); "
           f"{mamba_fused.FUSED_BUILD_HELP}")


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 convolutions in fp32: cuDNN's default TF32 (10-bit mantissa) would put 1e-3 into every fp32
    comparison through the patch embedding."""
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = allowed


@needs_mamba
def test_selective_scan_fn_matches_reference():
    """Kernel and our reference in fp32 against our reference in float64, output and every gradient.

    l = 2500 crosses the kernel's 2048-token chunk boundary; d = 100 is no multiple of a warp."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, dim, state_size, length = 2, 100, 16, 2500

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda")

    spread = 0.5 + torch.rand(dim, 1, generator=gen, device="cuda")
    inputs = {"u": randn(batch, dim, length), "delta": randn(batch, dim, length) - 2.0,
              "A": -torch.arange(1, state_size + 1, device="cuda").repeat(dim, 1) * spread,
              "B": randn(batch, state_size, length), "C": randn(batch, state_size, length),
              "D": randn(dim), "z": randn(batch, dim, length), "delta_bias": randn(dim) * 0.5}
    grad_out = randn(batch, dim, length)
    results = {}
    for name, fn, dtype in (("kernel", selective_scan_fn, torch.float32),
                            ("reference", selective_scan_ref, torch.float32),
                            ("truth", selective_scan_ref, torch.float64)):
        leaves = {k: v.to(dtype).clone().requires_grad_() for k, v in inputs.items()}  # fresh leaves per run
        out = fn(**leaves, delta_softplus=True)
        out.backward(grad_out.to(dtype))
        results[name] = {"out": out.detach(), **{k: v.grad for k, v in leaves.items()}}
    for name in results["truth"]:
        kernel_err = rel_err(results["kernel"][name], results["truth"][name])
        reference_err = rel_err(results["reference"][name], results["truth"][name])
        print(f"{name}: kernel {kernel_err:.1e}, fp32 reference {reference_err:.1e}")
        # fp32 over 2500 steps; the kernel was measured at 2e-6 for the output
        assert kernel_err < 1e-4, name
        assert reference_err < 1e-4, name


def dis_s2(**kwargs):
    """DiS-S/2 at 256 px (2 + 256 tokens, 27 blocks, 54 scans); eval mode: no random class dropout."""
    torch.manual_seed(0)
    return DiS_models["DiS-S/2"](32, **kwargs).cuda().eval()


def random_batch(batch=2):
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(batch, 4, 32, 32, device="cuda", generator=gen)
    t = torch.randint(0, 1000, (batch,), device="cuda", generator=gen).float()
    y = torch.randint(0, 1000, (batch,), device="cuda", generator=gen)
    return x, t, y, torch.randn(batch, 8, 32, 32, device="cuda", generator=gen)


def output_and_grads(model, batch, bf16=False):
    """{"out": output, parameter name: gradient} of one forward and backward (bf16 autocast if asked)."""
    x, t, y, grad_out = batch
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(x.to(dtype), t.to(dtype), y)
    out.backward(grad_out.to(out.dtype))
    return {"out": out.detach(), **{name: p.grad for name, p in model.named_parameters()}}


def compare_to_truth(fast, plain, truth):
    """(name, fast error, plain error) against the float64 truth for the output and every gradient."""
    rows = [(name, rel_err(fast[name], truth[name]), rel_err(plain[name], truth[name])) for name in truth]
    for name, fast_err, plain_err in rows:
        print(f"{name}: fused {fast_err:.1e}, plain {plain_err:.1e}")
    return rows


@needs_fused
def test_fused_path_matches_float64_reference():
    """Same DiS-S/2 weights on the fused path and on the plain path (reference scan): output and every
    parameter gradient against the plain path in float64, in fp32 and under bf16 autocast."""
    fused = dis_s2(fused=True)
    assert fused.backend_description == mamba_fused.FUSED_DESCRIPTION
    plain = dis_s2(fused=False, scan_backend="reference")
    plain.load_state_dict(fused.state_dict())  # same parameters and keys on both paths
    truth_model = dis_s2(fused=False, scan_backend="reference").double()
    truth_model.load_state_dict(fused.state_dict())
    batch = random_batch()
    truth = output_and_grads(truth_model, batch)
    assert torch.isfinite(truth["out"]).all() and truth["out"].std() > 1e-3

    print("fp32")
    for name, fused_err, plain_err in compare_to_truth(output_and_grads(fused, batch),
                                                        output_and_grads(plain, batch), truth):
        # Both paths round at 6e-8 per fp32 op through 27 blocks; the kernels' exp2 and atomic adds
        # (dA, dD, the conv weight) reorder sums, so up to 4x the plain path's error; the floor covers
        # tensors the plain path gets nearly exact. A wrong term is off by 1e-2 or more.
        assert fused_err < max(4 * plain_err, 1e-4), name
    print("bf16 autocast")
    for name, fused_err, plain_err in compare_to_truth(output_and_grads(fused, batch, bf16=True),
                                                        output_and_grads(plain, batch, bf16=True), truth):
        # bf16 rounding of the activations (3.9e-3 per rounding) dominates both paths; the fused kernels
        # must not add to it: at most 2x the plain path's error (flash-attn's rule), floor 1e-2.
        assert fused_err < max(2 * plain_err, 1e-2), name


@needs_mamba
def test_plain_path_on_mamba_scan_matches_reference():
    """fused=False on mamba-ssm's scan: fp32 agrees with the reference scan; bf16 errs at most 2x as much."""
    fast = dis_s2(fused=False, scan_backend="mamba_ssm")
    reference = dis_s2(fused=False, scan_backend="reference")
    reference.load_state_dict(fast.state_dict())
    assert fast.backend_description.startswith("scan=mamba_ssm selective_scan_fn")
    x, t, y, _ = random_batch()
    with torch.no_grad():
        truth = reference(x, t, y)
        fp32_err = rel_err(fast(x, t, y), truth)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            fast_bf16_err = rel_err(fast(x, t, y), truth)
            reference_bf16_err = rel_err(reference(x, t, y), truth)
    print(f"fp32 {fp32_err:.1e}; bf16 kernel {fast_bf16_err:.1e}, bf16 reference {reference_bf16_err:.1e}")
    assert torch.isfinite(truth).all()
    assert fp32_err < 1e-3  # 2e-6 per scan (measured) through 54 scans in 27 residual blocks
    assert fast_bf16_err < max(2 * reference_bf16_err, 1e-2)  # the scan must not add to bf16's error


@needs_fused
def test_dis_bf16_training_step_fused():
    """One AdamW step of DiS-S/2 at 256 px, batch 4, under bf16 autocast on the fused path."""
    model = dis_s2(fused=True).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x, t, y, _ = random_batch(batch=4)
    target = torch.randn(4, 8, 32, 32, device="cuda")
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (model(x, t, y).float() - target).square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    assert changed == len(before)
