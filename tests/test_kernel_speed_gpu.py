"""pytest-benchmark micro-benchmarks of the Triton chunk_gla at DiG shapes (GPU only).

    python -m pytest tests/test_kernel_speed_gpu.py --benchmark-columns=median,iqr,rounds

H=6, K=32, V=64 (DiG-S/2's heads), bf16. Each benchmark first checks what it times: o (and the
gradients for fwd+bwd) of batch 0 against float64 chunk_gla_torch, within twice the error of
chunk_gla_torch run on the same bf16 inputs (PyTorch doing the same work in the same precision,
the rule flash-attention's tests use). The rel errors go into the benchmark's extra_info.
"""

import pytest
import torch

from bench.kernel_providers import errors_against_reference, gla_bytes_per_token_head, make_inputs

pytest.importorskip("pytest_benchmark")
pytestmark = pytest.mark.gpu

H, K, V = 6, 32, 64
SHAPES = [pytest.param(4, 4096, id="S2-1024px-b4"), pytest.param(2, 16384, id="S2-2048px-b2")]  # (B, T)


def pytorch_bf16_errors(inputs, do):
    """Errors of chunk_gla_torch on the same bf16 inputs (batch 0): the yardstick for the tolerance."""
    from kernels.gla import chunk_gla_torch

    leaves = [x[:1].detach().clone().requires_grad_(do is not None) for x in inputs]
    o = chunk_gla_torch(*leaves)[0]
    grads = torch.autograd.grad(o, leaves, do[:1]) if do is not None else None
    return errors_against_reference("gla", leaves, o.detach(), grads, do[:1] if do is not None else None)


def timed(benchmark, fn):
    def call():
        fn()
        torch.cuda.synchronize()  # time the kernels, not their launch
    benchmark.pedantic(call, rounds=30, iterations=1, warmup_rounds=5)


@pytest.mark.parametrize("B,T", SHAPES)
def test_chunk_gla_forward(benchmark, B, T):
    from kernels.gla import chunk_gla

    torch.manual_seed(0)
    inputs = make_inputs("gla", B, T, H, K, V, torch.bfloat16, "cuda", grad=False)
    with torch.no_grad():
        o = chunk_gla(*inputs)[0]
    ours = errors_against_reference("gla", inputs, o, None, None)
    yardstick = pytorch_bf16_errors(inputs, None)
    assert ours["rel_err_o"] <= 2 * yardstick["rel_err_o"], (ours, yardstick)
    benchmark.extra_info.update(rel_err_o=ours["rel_err_o"], reference=ours["reference"],
                                bytes_moved=gla_bytes_per_token_head(K, V, 2, "fwd") * B * T * H)
    with torch.no_grad():
        timed(benchmark, lambda: chunk_gla(*inputs))


@pytest.mark.parametrize("B,T", SHAPES)
def test_chunk_gla_forward_backward(benchmark, B, T):
    from kernels.gla import chunk_gla

    torch.manual_seed(0)
    inputs = make_inputs("gla", B, T, H, K, V, torch.bfloat16, "cuda", grad=True)
    o = chunk_gla(*inputs)[0]
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, inputs, do)
    ours = errors_against_reference("gla", inputs, o.detach(), grads, do)
    yardstick = pytorch_bf16_errors(inputs, do)
    for name in ("rel_err_o", "rel_err_grads"):
        assert ours[name] <= 2 * yardstick[name], (name, ours, yardstick)
    benchmark.extra_info.update(rel_err_o=ours["rel_err_o"], rel_err_grads=ours["rel_err_grads"],
                                bytes_moved=gla_bytes_per_token_head(K, V, 2, "fwd+bwd") * B * T * H)
    timed(benchmark, lambda: torch.autograd.grad(chunk_gla(*inputs)[0], inputs, do))
