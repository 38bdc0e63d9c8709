"""What the kernel benchmark times of a DiG block's fused glue ops (kernels/*.py), Liger-style: the
fused Triton op ("ours-triton") against its plain PyTorch twin ("torch-ref", the ``*_ref`` function
run eagerly on the same inputs: what the model ran before the fusion), each checked against that
twin in float64, with the bytes the op must move for its HBM floor.

Shapes: one DiG block at 2048 px (patch 2, a 128 x 128 grid of T = 16384 tokens): DiG-S/2 at
batch 4 (D=384, SwiGLU width I=1024, H=6 heads of V=64 in the GLA output norm) and DiG-XL/2 at
batch 2 (D=1152, I=3072, H=18, V=64). Activations in the benchmark's dtype; parameters (norm
weight, down-projection weight, conv taps and bias) in fp32, the model's master weights, which
both providers cast as the model does.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .kernel_providers import Case, Target, triton_unavailable
from .numerics import relative_error, worst_error
from .spec import GLUE_PROVIDERS

LATENT_FACTOR, PATCH = 8, 2  # the VAE's downsampling and DiG's patch: 2048 px -> 128 x 128 tokens


@dataclass(frozen=True)
class GlueShape:
    """One DiG model's glue dims at one resolution: N images of side x side tokens, width D, SwiGLU
    width I, H heads of V values."""

    model: str
    N: int
    D: int
    I: int  # noqa: E741 (the SwiGLU width's usual name)
    H: int
    resolution: int

    @property
    def side(self) -> int:
        return self.resolution // LATENT_FACTOR // PATCH

    @property
    def T(self) -> int:
        return self.side ** 2

    @property
    def V(self) -> int:
        return self.D // self.H

    def label(self) -> str:
        return (f"{self.model} {self.resolution}px: N={self.N} T={self.T} D={self.D} I={self.I} H={self.H} "
                f"V={self.V}")


# (model, batch, D, I, H): DiG-S/2 and DiG-XL/2 (I = 8D/3 rounded up to 256, models/dig.py).
GLUE_MODELS = (("DiG-S/2", 4, 384, 1024, 6), ("DiG-XL/2", 2, 1152, 3072, 18))


def glue_shapes(resolution: int) -> list[GlueShape]:
    """The GLUE_MODELS at one resolution (px, a multiple of 16)."""
    return [GlueShape(model, N, D, I, H, resolution) for model, N, D, I, H in GLUE_MODELS]


@dataclass(frozen=True)
class GlueOp:
    """One fused op: `module.fused(*inputs)` and its twin `module.ref(*inputs)`, the same signature.

    make_inputs(shape, dtype, device) -> every tensor argument, all differentiated in fwd+bwd.
    backward_reads / gradient_writes: the inputs (by position) the backward must read besides the
    output's gradient, and those whose gradient it must write (the HBM floor's bytes).
    """

    module: str
    fused: str
    ref: str
    make_inputs: Callable
    backward_reads: tuple
    gradient_writes: tuple

    @property
    def name(self) -> str:
        return self.fused.removesuffix("_fused")


def _randn(*shape, dtype, device, scale=1.0, offset=0.0):
    return torch.randn(*shape, device=device, dtype=torch.float32).mul_(scale).add_(offset).to(dtype)


def _norm_gate_inputs(s: GlueShape, dtype, device):
    """o and gate [N, T, H, V] (the GLA output and its gate), weight [V] fp32 near 1."""
    return (_randn(s.N, s.T, s.H, s.V, dtype=dtype, device=device),
            _randn(s.N, s.T, s.H, s.V, dtype=dtype, device=device),
            _randn(s.V, dtype=torch.float32, device=device, scale=0.1, offset=1.0))


def _ln_modulate_inputs(s: GlueShape, dtype, device):
    """x [N, T, D] (the residual stream), shift and scale [N, D] (adaLN's, small as trained)."""
    return (_randn(s.N, s.T, s.D, dtype=dtype, device=device),
            _randn(s.N, s.D, dtype=dtype, device=device, scale=0.1),
            _randn(s.N, s.D, dtype=dtype, device=device, scale=0.1))


def _gated_residual_inputs(s: GlueShape, dtype, device):
    """x [N, T, D], gate [N, D], y [N, T, D] (a branch output)."""
    return (_randn(s.N, s.T, s.D, dtype=dtype, device=device),
            _randn(s.N, s.D, dtype=dtype, device=device, scale=0.1),
            _randn(s.N, s.T, s.D, dtype=dtype, device=device))


def _swiglu_down_inputs(s: GlueShape, dtype, device):
    """u [N, T, 2I] (the up projection's output), weight [D, I] fp32 (the down projection's)."""
    return (_randn(s.N, s.T, 2 * s.I, dtype=dtype, device=device),
            _randn(s.D, s.I, dtype=torch.float32, device=device, scale=s.I ** -0.5))


def _dwconv_inputs(s: GlueShape, dtype, device):
    """x [N, T, D] raster tokens of the side x side grid, taps [D, 3, 3] and bias [D] fp32."""
    return (_randn(s.N, s.T, s.D, dtype=dtype, device=device),
            _randn(s.D, 3, 3, dtype=torch.float32, device=device, scale=1 / 3),
            _randn(s.D, dtype=torch.float32, device=device, scale=0.1))


# gated_residual's dx is the output's gradient itself (no copy written); the others write every gradient.
GLUE_OPS = (
    GlueOp("kernels.norm_gate", "rms_norm_swish_gate_fused", "rms_norm_swish_gate_ref", _norm_gate_inputs,
           backward_reads=(0, 1, 2), gradient_writes=(0, 1, 2)),
    GlueOp("kernels.ln_modulate", "layer_norm_modulate", "layer_norm_modulate_ref", _ln_modulate_inputs,
           backward_reads=(0, 2), gradient_writes=(0, 1, 2)),
    GlueOp("kernels.gated_residual", "gated_residual", "gated_residual_ref", _gated_residual_inputs,
           backward_reads=(1, 2), gradient_writes=(1, 2)),
    GlueOp("kernels.swiglu", "swiglu_down", "swiglu_down_ref", _swiglu_down_inputs,
           backward_reads=(0, 1), gradient_writes=(0, 1)),
    GlueOp("kernels.dwconv", "depthwise_conv3x3", "depthwise_conv3x3_ref", _dwconv_inputs,
           backward_reads=(0, 1), gradient_writes=(0, 1, 2)),
)


def function(op: GlueOp, which: str) -> Callable:
    """op's fused function or its twin (which: 'fused' or 'ref'), imported now."""
    return getattr(importlib.import_module(op.module), getattr(op, which))


def glue_bytes(op: GlueOp, shape: GlueShape, dtype, mode: str) -> int:
    """Bytes the op must move if each tensor is read and written once: forward reads every input
    and writes the output; backward reads backward_reads and the output's gradient and writes
    gradient_writes. swiglu_down's down-projection GEMM also needs 2*N*T*I*D FLOPs (x3 with the
    backward), which this floor leaves out."""
    inputs = op.make_inputs(shape, dtype, "meta")
    out = function(op, "ref")(*inputs)
    nbytes = [x.numel() * x.element_size() for x in inputs]
    out_bytes = out.numel() * out.element_size()
    forward = sum(nbytes) + out_bytes
    backward = (sum(nbytes[i] for i in op.backward_reads) + out_bytes
                + sum(nbytes[i] for i in op.gradient_writes))
    return forward + (backward if mode == "fwd+bwd" else 0)


def glue_reference(op: GlueOp, inputs: tuple, o, grads, do) -> dict:
    """Errors of o (and grads) against the twin run in float64 on the same inputs, all of them."""
    leaves = [x.detach().double().requires_grad_(do is not None) for x in inputs]
    o_ref = function(op, "ref")(*leaves)
    result = {"rel_err_o": relative_error(o, o_ref.detach()), "rel_err_grads": None,
              "reference": f"{op.ref} float64, all inputs"}
    if do is not None:
        grads_ref = torch.autograd.grad(o_ref, leaves, do.double())
        result["rel_err_grads"] = worst_error(grads, grads_ref)
    return result


def glue_targets(op: GlueOp, shape: GlueShape, dtype, device: str, providers=GLUE_PROVIDERS) -> list[Target]:
    """The op's providers (of GLUE_PROVIDERS, in that order) at one shape."""
    case = Case(op.name, shape.T, shape.N, shape.H, "", shape.V, shape.label())

    def make_inputs(grad):
        return tuple(x.requires_grad_(grad) for x in op.make_inputs(shape, dtype, device))

    kinds = {"ours-triton": ("fused", f"{op.module}.{op.fused} (fused Triton)", triton_unavailable(device)),
             "torch-ref": ("ref", f"{op.module}.{op.ref} (eager PyTorch, the unfused twin)", None)}
    def errors(*checked):
        return glue_reference(op, *checked)

    return [Target(case, "glue", name, kinds[name][1], make_inputs,
                   lambda which=kinds[name][0]: function(op, which), errors,
                   lambda mode: glue_bytes(op, shape, dtype, mode), lambda mode, why=kinds[name][2]: why)
            for name in GLUE_PROVIDERS if name in providers]
