"""Kernel benchmark on CPU with tiny shapes: bytes of the HBM floor, the rows beside each timing,
errors against the float64 reference (NaN never passes), unavailable and skipped providers."""

import math

import pytest
import torch

from bench import kernel_providers
from bench.csvstore import read as read_rows
from bench.kernel_bench import KernelRun, KernelSettings
from bench.kernel_providers import (
    attention_bytes_per_token_head,
    errors_against_reference,
    gla_bytes_per_token_head,
    make_inputs,
    relative_error,
)
from bench.results import load_frame
from bench.schema import KERNEL_COLUMNS, KERNEL_REQUIRED
from bench.spec import KERNEL_PROVIDERS


def test_hbm_floor_bytes_match_the_h200_anchor():
    # Forward + backward reads q, k, g, v, do and writes o, dq, dk, dg, dv: 1216 bytes per token and
    # head at K=32, V=64, bf16, 0.96 GB for B*T = 131072 and H = 6 (0.24 ms at the H200's 4.0 TB/s).
    assert gla_bytes_per_token_head(32, 64, 2, "fwd+bwd") == 1216
    assert gla_bytes_per_token_head(32, 64, 2, "fwd") == 2 * (3 * 32 + 2 * 64)  # q, k, g, v in; o out
    assert attention_bytes_per_token_head(64, 2, "fwd") == 2 * 4 * 64
    assert 1216 * 131072 * 6 == pytest.approx(0.956e9, rel=1e-3)  # "0.96 GB here"


def test_relative_error_propagates_nan():
    ref = torch.randn(8, dtype=torch.float64)
    assert relative_error(ref.float(), ref) < 1e-6
    assert math.isnan(relative_error(torch.full((8,), float("nan")), ref))


def test_grads_error_is_nan_if_any_gradient_is_nan():
    torch.manual_seed(0)
    inputs = make_inputs("gla", 2, 16, 2, 8, 8, torch.float32, "cpu", grad=True)
    from kernels.gla import chunk_gla_torch

    o = chunk_gla_torch(*inputs)[0]
    do = torch.randn_like(o)
    grads = list(torch.autograd.grad(o, inputs, do))
    checks = errors_against_reference("gla", inputs, o.detach(), grads, do)
    assert checks["rel_err_o"] < 1e-5 and checks["rel_err_grads"] < 1e-5  # fp32 vs float64: ~1e-7
    grads[3] = torch.full_like(grads[3], float("nan"))  # a NaN in the last gradient must not be lost
    assert math.isnan(errors_against_reference("gla", inputs, o.detach(), grads, do)["rel_err_grads"])


def test_attention_reference_checks_o_and_grads_on_one_head():
    torch.manual_seed(0)
    q, k, v = make_inputs("attention", 2, 32, 2, 0, 0, torch.float32, "cpu", grad=True)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    checks = errors_against_reference("attention", (q, k, v), o.detach(), grads, do)
    assert checks["rel_err_o"] < 1e-5 and checks["rel_err_grads"] < 1e-5
    assert "head 0" in checks["reference"]


def test_cpu_run_writes_timings_with_errors_and_reasons(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setattr(kernel_providers, "NAIVE_MAX_T", 32)  # so that T=64 shows the skip
    settings = KernelSettings(device="cpu", lengths=(32, 64), tokens=128, dtype="fp32",
                              providers=("ours-torch", "naive", "ours-triton", "sdpa-cudnn"))
    csv_path = tmp_path / "kernels.csv"
    KernelRun(settings, csv_path).run(progress=lambda line: None)
    assert read_rows(csv_path)[0] == KERNEL_COLUMNS
    frame = load_frame(csv_path, KERNEL_REQUIRED, "kernels")
    ours = frame[(frame["provider"] == "ours-torch") & (frame["mode"] == "fwd+bwd") & (frame["T"] == 64)]
    metrics = dict(zip(ours["metric"], ours["median"]))
    assert set(metrics) == {"time", "bandwidth", "floor_ratio", "rel_err_o", "rel_err_grads"}
    assert metrics["time"] > 0 and metrics["rel_err_o"] < 1e-5 and metrics["rel_err_grads"] < 1e-5
    assert set(ours["B"]) == {2} and set(ours["unit"]) == {"ms", "GB/s", "x", "rel"}
    bytes_moved = 1216 * 2 * 64 * 6  # fp32 is 4 bytes, not 2: 2432 per token-head
    assert metrics["bandwidth"] == pytest.approx(2 * bytes_moved / (metrics["time"] * 1e-3) / 1e9, rel=1e-9)

    def status(provider, T):
        row = frame[(frame["provider"] == provider) & (frame["T"] == T) & (frame["metric"] == "time")].iloc[0]
        return row["status"], row["error"]
    assert status("naive", 32)[0] == "ok"
    assert status("naive", 64)[0] == "skipped" and "T=64 > 32" in status("naive", 64)[1]
    triton_reason = "Triton kernels are timed on CUDA only (the interpreter is for tests)"
    assert status("ours-triton", 32) == ("unavailable", triton_reason)
    assert status("sdpa-cudnn", 32) == ("unavailable", "needs a CUDA GPU")
    assert (frame["provider"] == "hbm-floor").sum() == 4 and (frame["provider"] == "device-copy").sum() == 1


def test_the_cli_knows_every_provider_without_importing_them():
    assert tuple(provider.name for provider in kernel_providers.PROVIDERS) == KERNEL_PROVIDERS
