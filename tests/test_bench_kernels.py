"""Kernel benchmark on CPU with tiny shapes: bytes of the HBM floor, the rows beside each timing,
errors against the float64 reference (NaN never passes), unavailable and skipped providers, the
head-dim classes and their heads, peak memory marked unavailable on CPU."""

import math
from pathlib import Path

import pytest
import torch

from bench import kernel_providers
from bench.csvstore import read as read_rows
from bench.csvstore import write as write_rows
from bench.kernel_bench import NO_PEAK_MEMORY, KernelRun, KernelSettings, per_kernel_rows, record
from bench.kernel_providers import (
    Case,
    attention_bytes_per_token_head,
    errors_against_reference,
    gla_bytes_per_token_head,
    make_inputs,
)
from bench.numerics import relative_error
from bench.profile import KernelTime
from bench.results import load_kernels
from bench.schema import KERNEL_COLUMNS, KERNEL_SPLIT_PREFIX
from bench.spec import KERNEL_HEADS, KERNEL_PROVIDERS

REPO = Path(__file__).resolve().parent.parent


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
    settings = KernelSettings(device="cpu", lengths=(32, 64), tokens=128, dtype="fp32", head_dims=((32, 64),),
                              ops=("gla",), providers=("ours-torch", "naive", "ours-triton", "sdpa-cudnn"))
    csv_path = tmp_path / "kernels.csv"
    KernelRun(settings, csv_path).run(progress=lambda line: None)
    assert read_rows(csv_path)[0] == KERNEL_COLUMNS
    frame = load_kernels(csv_path)
    ours = frame[(frame["provider"] == "ours-torch") & (frame["mode"] == "fwd+bwd") & (frame["T"] == 64)]
    metrics = dict(zip(ours["metric"], ours["median"]))
    assert set(metrics) == {"time", "peak_mem", "bandwidth", "floor_ratio", "rel_err_o", "rel_err_grads"}
    assert metrics["time"] > 0 and metrics["rel_err_o"] < 1e-5 and metrics["rel_err_grads"] < 1e-5
    assert set(ours["B"]) == {2} and set(ours["unit"]) == {"ms", "MiB", "GB/s", "x", "rel"}
    assert set(ours[["op", "H", "K", "V"]].itertuples(index=False, name=None)) == {("gla", 6, 32, 64)}
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


def test_peak_memory_is_unavailable_on_cpu_with_its_reason(tmp_path, one_torch_thread):
    settings = KernelSettings(device="cpu", lengths=(16,), tokens=16, dtype="fp32", head_dims=((32, 64),),
                              ops=("gla",), providers=("ours-torch",))
    frame = KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    peak = frame[frame["metric"] == "peak_mem"]
    assert len(peak) == 2 and set(peak["status"]) == {"unavailable"} and set(peak["median"]) == {""}
    assert set(peak["error"]) == {NO_PEAK_MEMORY} and "CUDA" in NO_PEAK_MEMORY
    assert set(peak["unit"]) == {"MiB"}


def test_every_head_dim_class_gets_its_heads_and_attention_stays_with_dig_s(tmp_path, one_torch_thread):
    settings = KernelSettings(device="cpu", lengths=(16,), tokens=32, dtype="fp32",
                              head_dims=((32, 64), (64, 64), (128, 128)), ops=("gla",),
                              providers=("ours-torch", "sdpa-flash"), modes=("fwd",))
    frame = load_kernels_of(KernelRun(settings, tmp_path / "kernels.csv"), tmp_path)
    ours = frame[(frame["provider"] == "ours-torch") & (frame["metric"] == "time")]
    assert set(ours[["K", "V", "H", "B"]].itertuples(index=False, name=None)) == {
        (32, 64, 6, 2), (64, 64, 8, 2), (128, 128, 16, 2)}  # KERNEL_HEADS, B*T = 32
    assert set(ours["status"]) == {"ok"}
    floors = frame[frame["provider"] == "hbm-floor"].set_index("K")["median"]
    for K, V, H in ((32, 64, 6), (64, 64, 8), (128, 128, 16)):  # the floor follows the class's bytes
        assert floors[K] * 1e-3 * copy_bandwidth(frame) * 1e9 == pytest.approx(
            gla_bytes_per_token_head(K, V, 4, "fwd") * 32 * H, rel=1e-9)
    attention = frame[frame["provider"] == "sdpa-flash"]
    assert set(attention[["K", "V", "H"]].itertuples(index=False, name=None)) == {(32, 64, 6)}
    assert all(ratio < 1e-5 for ratio in frame[frame["metric"] == "rel_err_o"]["median"])
    assert KERNEL_HEADS == {(32, 64): 6, (64, 64): 8, (128, 128): 16}


def test_heads_override_every_class(tmp_path, one_torch_thread):
    settings = KernelSettings(device="cpu", lengths=(16,), tokens=16, dtype="fp32", head_dims=((24, 40),),
                              heads=3, ops=("gla",), providers=("ours-torch",), modes=("fwd+bwd",))
    frame = KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    errors = frame[frame["metric"].isin(["rel_err_o", "rel_err_grads"])]
    assert set(errors["K"]) == {24} and set(errors["H"]) == {3} and set(errors["status"]) == {"ok"}
    assert all(value < 1e-5 for value in errors["median"])  # fp32 against float64


def copy_bandwidth(frame) -> float:
    return frame.loc[frame["provider"] == "device-copy", "median"].iloc[0]


def load_kernels_of(run, tmp_path):
    run.run(progress=lambda line: None)
    return load_kernels(tmp_path / "kernels.csv")


def test_the_cli_knows_every_provider_without_importing_them():
    assert tuple(provider.name for provider in kernel_providers.PROVIDERS) == KERNEL_PROVIDERS


@pytest.mark.gpu
def test_gpu_peak_memory_of_forward_and_backward(tmp_path):
    """On CUDA the peak-memory row is a number: fwd+bwd holds at least the four input gradients
    (q, k, g [B, T, H, 32] and v [.., 64], bf16: 15 MiB here) above the inputs, and more than fwd."""
    settings = KernelSettings(device="cuda", lengths=(1024,), tokens=8192, head_dims=((32, 64),),
                              ops=("gla",), providers=("ours-torch",))
    frame = KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    peak = frame[frame["metric"] == "peak_mem"].set_index("mode")
    assert set(peak["status"]) == {"ok"}
    grads_mib = 8192 * 6 * (3 * 32 + 64) * 2 / 2**20
    forward, forward_backward = peak.loc["fwd", "median"], peak.loc["fwd+bwd", "median"]
    assert forward_backward >= grads_mib and forward_backward > forward > 0


@pytest.mark.gpu
def test_gpu_rows_say_where_the_time_goes(tmp_path):
    """On CUDA each timing has its per-kernel split: our forward launches the state-walk (T=1024: 16
    chunks) and output kernels, their GPU ms add up to no more than the call's time plus the
    profiler's noise, and the launches per call count every kernel launched."""
    settings = KernelSettings(device="cuda", lengths=(1024,), tokens=8192, head_dims=((32, 64),),
                              ops=("gla",), providers=("ours-triton",), modes=("fwd",))
    frame = KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    ours = frame[frame["provider"] == "ours-triton"].set_index("metric")
    split = ours[ours.index.str.startswith(KERNEL_SPLIT_PREFIX)]
    names = " ".join(split.index)
    assert all(kernel in names for kernel in ("chunk_state_walk", "gla_fwd_output"))
    assert (split["median"] > 0).all() and split["median"].sum() <= 1.5 * ours.loc["time", "median"]
    assert ours.loc["launches", "median"] >= len(split)


def test_per_kernel_rows_are_longest_first_with_the_launches(tmp_path):
    run = KernelRun(KernelSettings(device="cpu", dtype="fp32"), tmp_path / "kernels.csv")
    case = Case("gla", 4096, 2, 6, 32, 64)

    def row(metric, unit, value):
        return run.row(case, "ours-triton", "x", "fwd", metric, unit, value)

    kernels = [KernelTime("gla_fwd_output_kernel", 1, 0.3), KernelTime("x" * 300, 2, 0.1)]
    rows = per_kernel_rows(kernels, row)
    assert [(r["metric"], r["unit"], r["median"]) for r in rows] == [
        (KERNEL_SPLIT_PREFIX + "gla_fwd_output_kernel", "ms", 0.3),
        (KERNEL_SPLIT_PREFIX + "x" * 120, "ms", 0.1), ("launches", "count", 3)]
    record(tmp_path / "kernels.csv", [dict(r, gpu="g", cpu="", host="h") for r in rows]
           + [dict(row("time", "ms", 0.45), gpu="g", cpu="", host="h")])
    from bench.kernel_report import kernel_section

    section = kernel_section(load_kernels(tmp_path / "kernels.csv"))
    assert "where the time goes at T=4096" in section
    assert "| ours-triton | fwd | 3 | gla_fwd_output_kernel 0.3, " + "x" * 120 + " 0.1 |" in section


OLD_COLUMNS = [c for c in KERNEL_COLUMNS if c not in ("op", "shape")]  # kernels.csv before the glue rows


def old_row(provider, T, median, **changes):
    row = dict.fromkeys(OLD_COLUMNS, "")
    row.update(provider=provider, impl="x", mode="fwd", T=T, B=128 // T, H=6, K=32, V=64, dtype="fp32",
               metric="time", unit="ms", median=median, p20=median, p80=median, status="ok", gpu="cpu",
               host="h", timestamp="2026-11-22T07:58:18+00:00", **changes)
    return row


def test_old_kernel_csvs_read_as_the_dig_s_shape(tmp_path):
    without_heads = [c for c in OLD_COLUMNS if c not in ("H", "K", "V")]
    write_rows(tmp_path / "old.csv", without_heads, [old_row("fla", 16, 1.5)])
    frame = load_kernels(tmp_path / "old.csv")
    assert frame[["op", "shape", "H", "K", "V"]].iloc[0].tolist() == ["gla", "", 6, 32, 64]


def test_new_rows_replace_an_old_files_rows_of_the_same_point(tmp_path):
    path = tmp_path / "kernels.csv"
    write_rows(path, OLD_COLUMNS, [old_row("ours-torch", 16, 9.0), old_row("ours-torch", 32, 8.0)])
    run = KernelRun(KernelSettings(device="cpu", dtype="fp32"), path)
    new = run.row(Case("gla", 16, 8, 6, 32, 64), "ours-torch", "x", "fwd", "time", "ms", 1.0)
    record(path, [dict(new, gpu="cpu", cpu="", host="h")])  # the old row's machine
    frame = load_kernels(path)
    assert read_rows(path)[0][:len(KERNEL_COLUMNS)] == KERNEL_COLUMNS
    assert sorted(zip(frame["T"], frame["median"])) == [(16, 1.0), (32, 8.0)]  # T=16 replaced, T=32 kept
    assert set(frame["op"]) == {"gla"}  # the old row's op is written out, so its key stays the same
    again = run.row(Case("gla", 32, 4, 6, 32, 64), "ours-torch", "x", "fwd", "time", "ms", 2.0)
    record(path, [dict(again, gpu="cpu", cpu="", host="h")])  # now into the rewritten file
    assert sorted(zip(*(load_kernels(path)[c] for c in ("T", "median")))) == [(16, 1.0), (32, 2.0)]


def test_the_committed_kernel_csv_still_renders():
    from bench.kernel_report import kernel_section

    frame = load_kernels(REPO / "reports" / "kernels.csv")
    section = kernel_section(frame)
    assert "**GLA K=32, V=64, H=6**" in section and "| ours-triton | fwd+bwd | 65536 |" in section
    assert set(frame["op"]) == {"gla"}


def test_naive_backward_is_skipped_where_its_saved_states_would_not_fit():
    reason = kernel_providers.PROVIDERS[3].unavailable
    assert kernel_providers.PROVIDERS[3].name == "naive"
    big = Case("gla", 1024, 128, 16, 128, 128)  # B*T = 131072: 384 GiB of fp32 states
    assert reason("cuda", big, "fwd") is None
    assert reason("cuda", big, "fwd+bwd") == ("skipped: the token loop's backward would keep 384 GiB of fp32 "
                                              "states (> 64 GiB)")
    assert reason("cuda", Case("gla", 1024, 128, 8, 64, 64), "fwd+bwd") is None  # 48 GiB


def test_an_unsteady_timing_is_taken_again_and_the_steadiest_round_kept(monkeypatch):
    """time_ms on CUDA: a round whose p20-p80 spread exceeds UNSTEADY_SPREAD is followed by another,
    at most TIMING_ROUNDS in all; a steady first round is the only one."""
    import triton.testing

    from bench import kernel_bench

    def fake_do_bench(rounds):
        calls = iter(rounds)
        monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kwargs: next(calls))

    fake_do_bench([[1.0, 0.8, 1.4], [1.1, 1.0, 1.2], [1.0, 0.99, 1.01], [9.0, 9.0, 9.0]])
    assert kernel_bench.time_ms(lambda: None, "cuda") == (1.0, 0.99, 1.01)  # the third, steady round
    fake_do_bench([[2.0, 1.99, 2.01], [9.0, 9.0, 9.0]])
    assert kernel_bench.time_ms(lambda: None, "cuda") == (2.0, 1.99, 2.01)
    fake_do_bench([[1.0, 0.5, 1.5], [1.0, 0.8, 1.2], [1.0, 0.6, 1.4]])
    steadiest = kernel_bench.time_ms(lambda: None, "cuda")
    assert steadiest == (1.0, 0.8, 1.2) and kernel_bench.spread_of(steadiest) > kernel_bench.UNSTEADY_SPREAD


def test_the_report_marks_an_unsteady_time():
    import pandas as pd

    from bench.kernel_report import cell

    line = pd.DataFrame({"median": [1.234, 2.0], "status": ["ok", "ok"],
                         "error": ["unsteady: p20-p80 spread 20% of the median in the steadiest of 3 rounds",
                                   ""]},
                        index=["time", "peak_mem"])
    assert cell(line, "time") == "1.23 (unsteady)" and cell(line, "peak_mem") == "2"
