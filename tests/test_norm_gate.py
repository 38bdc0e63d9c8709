"""Fused Triton RMSNorm * weight * swish(gate) against a float64 reference (CPU: interpreter; GPU: H200).

The reference runs the formula in float64 on the *same* (already rounded) o, gate, weight and dy, so
the kernel's only errors are fp32 arithmetic (~1e-7 relative; sums over <= 100 columns or <= 32 rows
per partial) and the final rounding of y, do, dgate to the input dtype, which is at most the unit
roundoff u per element (round to nearest), hence at most u in the relative norm: tolerance u + 1e-5
(u = 2**-11 fp16, 2**-8 bf16; 1e-5 for fp32 covers fp32 round-off with a wide margin). Exception: the
Triton 3.6 interpreter converts fp32 to bf16 by truncating the mantissa (runtime/interpreter.py,
_convert_float without a rounding mode; measured: every inexact value moves toward zero), up to 2u,
so bf16 gets 2u under the interpreter; the GPU rounds to nearest. dweight is accumulated and returned
in fp32 (weight's dtype), so it gets 1e-5 for every input dtype.
"""

import pytest
import torch

from helpers import TRITON_DEVICE as DEVICE
from helpers import assert_close_rel, needs_triton_device
from kernels import interpreting
from kernels.norm_gate import rms_norm_swish_gate_fused, rms_norm_swish_gate_ref

INTERPRETED = interpreting()
FP32_TOLERANCE = 1e-5
# Largest relative error of the kernel's final fp32 -> dtype conversion (see the module docstring).
ROUNDING_ERROR = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8 * (2 if INTERPRETED else 1)}
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def make_inputs(shape, dtype, device=DEVICE, seed=0):
    """o, gate [*shape] in dtype, an fp32 weight [V] and dy [*shape] in dtype, drawn on the CPU from seed.

    o rows get scales from 1e-2 to 1e2 (the norm must remove them), gate spans silu's saturated tails.
    """
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *size: torch.randn(*size, generator=generator)
    row_scale = 10.0 ** (4 * torch.rand(*shape[:-1], 1, generator=generator) - 2)
    o, gate, dy = draw(*shape) * row_scale, 3 * draw(*shape), draw(*shape)
    weight = 1 + 0.5 * draw(shape[-1])
    o, gate, dy = (x.to(device=device, dtype=dtype) for x in (o, gate, dy))
    return o, gate, weight.to(device), dy


def run_with_grads(fn, o, gate, weight, dy):
    """(y, do, dgate, dweight) of fn(o, gate, weight) differentiated along dy."""
    leaves = [x.detach().clone().requires_grad_() for x in (o, gate, weight)]
    y = fn(*leaves)
    y.backward(dy)
    return (y.detach(),) + tuple(x.grad for x in leaves)


def assert_matches_reference(o, gate, weight, dy):
    """Fused output and gradients vs the float64 reference, within the module docstring's tolerances."""
    out = run_with_grads(rms_norm_swish_gate_fused, o, gate, weight, dy)
    # Upcast before differentiating: float64 leaves, so the reference gradients are not rounded to dtype.
    # The reference twin computes in float64 when given float64 (it promotes to >= fp32).
    ref = run_with_grads(rms_norm_swish_gate_ref, *(x.double() for x in (o, gate, weight, dy)))
    tolerance = ROUNDING_ERROR.get(o.dtype, 0.0) + FP32_TOLERANCE
    for name, got, want, tol in zip(("y", "do", "dgate", "dweight"), out, ref,
                                    (tolerance, tolerance, tolerance, FP32_TOLERANCE)):
        assert got.dtype == (weight.dtype if name == "dweight" else o.dtype), name
        assert_close_rel(name, got, want, tol)


@needs_triton_device
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("V", [64, 96, 100])  # 64: DiG's head dim; 96 and 100 are masked (BLOCK_V 128)
def test_matches_float64_reference(V, dtype):
    # 2*37*3 = 222 rows: 6 full programs of 32 rows and a partial one.
    assert_matches_reference(*make_inputs((2, 37, 3, V), dtype))


@needs_triton_device
def test_fewer_rows_than_a_program_and_non_contiguous_inputs():
    o, gate, weight, dy = make_inputs((5, 2, 64), torch.float32)
    # Views with a stride on the row dimension (transposes), which the wrapper makes contiguous.
    assert_matches_reference(o.transpose(0, 1), gate.transpose(0, 1), weight, dy.transpose(0, 1))


@needs_triton_device
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def test_agrees_with_the_reference_twin_in_the_same_dtype(dtype):
    """Both compute in fp32 and round once to dtype: they differ only where their fp32 results straddle
    a rounding boundary (<= 2u relative, in a small fraction of entries), so within u in norm (2u for
    the interpreter's truncating bf16); fp32: 1e-6 (a few fp32 ulps of different operation order)."""
    o, gate, weight, dy = make_inputs((3, 7, 2, 96), dtype, seed=1)
    fused = run_with_grads(rms_norm_swish_gate_fused, o, gate, weight, dy)
    existing = run_with_grads(rms_norm_swish_gate_ref, o, gate, weight, dy)
    tolerance = ROUNDING_ERROR.get(dtype, 1e-6)
    for name, got, want in zip(("y", "do", "dgate", "dweight"), fused, existing):
        assert_close_rel(name, got, want, 1e-6 if name == "dweight" else tolerance)


@needs_triton_device
def test_gate_read_and_written_through_its_token_stride():
    """The op reads a gate that is a column slice of a wider [N, T, W] tensor (the GLA layer's fused
    projection) and its gradient matches the contiguous gate's exactly."""
    o, gate, weight, dy = make_inputs((2, 5, 3, 64), torch.float32, seed=2)
    wide = torch.cat([torch.randn(2, 5, 7, device=gate.device), gate.flatten(2),
                      torch.randn(2, 5, 9, device=gate.device)], dim=-1)
    strided_gate = wide[..., 7:7 + 192].unflatten(-1, (3, 64))
    assert not strided_gate.is_contiguous()
    y_strided, rstd = torch.ops.dig.norm_gate_fwd(o, strided_gate, weight, 1e-6)
    y, _ = torch.ops.dig.norm_gate_fwd(o, gate, weight, 1e-6)
    assert torch.equal(y_strided, y)
    grads_strided = torch.ops.dig.norm_gate_bwd(o, strided_gate, weight, rstd, dy)
    grads = torch.ops.dig.norm_gate_bwd(o, gate, weight, rstd, dy)
    for got, want in zip(grads_strided, grads):
        assert torch.equal(got, want)


@needs_triton_device
def test_norm_gate_op_passes_opcheck():
    o, gate, weight, _ = make_inputs((2, 3, 2, 16), torch.float32, seed=3)
    torch.library.opcheck(torch.ops.dig.norm_gate_fwd.default,
                          (o.requires_grad_(), gate.requires_grad_(), weight.requires_grad_(), 1e-6))


@pytest.mark.parametrize("change, argument", [
    (lambda o, gate, weight: (o, gate[:, :-1], weight), "gate"),
    (lambda o, gate, weight: (o, gate, weight[:-1]), "weight"),
    (lambda o, gate, weight: (o, gate.half(), weight), "gate"),
    (lambda o, gate, weight: (o.double(), gate.double(), weight), "o"),
    (lambda o, gate, weight: (o, gate, weight.double()), "weight"),
    (lambda o, gate, weight: (o[0, 0], gate[0, 0], weight[:0]), "o"),  # 0-d: no last dimension
], ids=["gate-shape", "weight-shape", "gate-dtype", "o-float64", "weight-float64", "o-0d"])
def test_bad_arguments_raise_value_error_naming_them(change, argument):
    o, gate = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match=f"^{argument} must"):
        rms_norm_swish_gate_fused(*change(o, gate, torch.ones(8)))


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="runs Triton kernels: its input must be on a CUDA device"):
        rms_norm_swish_gate_fused(torch.randn(4, 8), torch.randn(4, 8), torch.ones(8))


@pytest.mark.gpu
def test_weight_on_another_device_raises():
    o = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="^weight must be on o's device"):
        rms_norm_swish_gate_fused(o, torch.randn_like(o), torch.ones(8))


@pytest.mark.gpu
def test_dig_shape_bf16_on_gpu():
    # DiG-S/2 at 1024 px: batch 4, 4096 tokens, 6 heads of V = 64 -> 98304 rows, 3072 programs.
    assert_matches_reference(*make_inputs((4, 4096, 6, 64), torch.bfloat16, device="cuda"))
