"""The fused GLA token-mixer op (gate up-projection + GLA + norm * gate from one projection) against its
plain twin run in float64 with the naive recurrence, for every scan order: output and every gradient.

Tolerance 1e-5 for fp32 inputs: the op computes in fp32 (sums of <= 64 terms per dot, chunked scans),
measured 1e-7 to 5e-7 on the interpreter.
"""

import pytest
import torch

from helpers import TRITON_DEVICE as DEVICE
from helpers import ZeroFills, assert_close_rel, needs_triton_device
from kernels.gla import SCAN_ORDERS, naive_recurrent_gla
from kernels.gla_layer import gla_layer, gla_layer_ref

pytestmark = needs_triton_device
N, T, H, K, V, R = 2, 16, 2, 16, 32, 16  # a 4 x 4 token grid


def layer_inputs(seed):
    """proj [N, T, 2HK + 2HV + R], the gate's up-projection (weight, bias) and the norm weight."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=generator)).to(DEVICE)
    return (draw(N, T, 2 * H * K + 2 * H * V + R), draw(H * K, R, scale=0.3), draw(H * K),
            1 + draw(V, scale=0.1))


@pytest.mark.parametrize("scan_order", SCAN_ORDERS)
def test_fused_layer_matches_its_float64_twin(scan_order):
    inputs = layer_inputs(seed=SCAN_ORDERS.index(scan_order))
    dy = torch.randn(N, T, H * V, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    leaves = [x.clone().requires_grad_() for x in inputs]
    y = gla_layer(*leaves, H, K, V, scan_order, 16.0, chunk_size=16)
    grads = torch.autograd.grad(y, leaves, dy)
    leaves64 = [x.cpu().double().requires_grad_() for x in inputs]
    y64 = gla_layer_ref(*leaves64, H, K, V, scan_order, 16.0, gla_fn=naive_recurrent_gla)
    grads64 = torch.autograd.grad(y64, leaves64, dy.cpu().double())
    assert_close_rel("y", y.cpu(), y64, 1e-5)
    for name, got, want in zip(("dproj", "dgate_up_weight", "dgate_up_bias", "dnorm_weight"), grads, grads64):
        assert_close_rel(name, got.cpu(), want, 1e-5)


def test_fused_layer_op_passes_opcheck():
    leaves = [x.requires_grad_() for x in layer_inputs(seed=5)]
    torch.library.opcheck(torch.ops.dig.gla_layer_fwd.default,
                          (*leaves, H, K, V, True, True, [16, 32, 4, 4, 3], 1 / 16, 1e-6))


def test_the_layer_backward_makes_no_zero_gradients_for_its_saved_outputs():
    """o, h, gl and rstd are outputs of the forward op kept for the backward, never used: autograd
    passes None for them (set_materialize_grads(False)), not zeros (DiG-S/2 at 2048 px, batch 4: the
    chunk states alone are 50 MB per layer)."""
    leaves = [x.requires_grad_() for x in layer_inputs(seed=3)]
    y = gla_layer(*leaves, H, K, V, "raster", 16.0, chunk_size=16)
    with ZeroFills() as fills:
        y.sum().backward()
    saved_shapes = [(N * H, T // 16 + 1, K, V), (N, T, H, V), (N * H, T // 16, K), (N * T * H,)]
    assert not set(saved_shapes) & set(fills.shapes), fills.shapes
