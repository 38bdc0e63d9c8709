"""The kernel benchmark's glue rows: the shapes are DiG's, the bytes of each op's HBM floor, a tiny
CPU run of the PyTorch twins (errors against float64, peak memory unavailable, the fused ops
unavailable off CUDA), and every fused op taking the inputs the benchmark makes (Triton
interpreter) with its float64 error."""

import math
import os

import pytest
import torch

from bench.glue_providers import GLUE_MODELS, GLUE_OPS, GlueShape, glue_bytes, glue_reference, glue_shapes
from bench.kernel_bench import NO_PEAK_MEMORY, KernelRun, KernelSettings
from bench.kernel_providers import triton_unavailable
from bench.results import load_kernels
from helpers import needs_triton_device
from models.dig import DIG_SIZES, ffn_intermediate_size

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
TINY = GlueShape("tiny", N=2, D=48, I=40, H=3, resolution=64)  # 4 x 4 tokens, heads of V=16


def test_the_shapes_are_dig_s_and_dig_xl_blocks_at_2048_px():
    shapes = {shape.model: shape for shape in glue_shapes(2048)}
    for model, size in (("DiG-S/2", "S"), ("DiG-XL/2", "XL")):
        _, D, H = DIG_SIZES[size]
        shape = shapes[model]
        assert (shape.D, shape.H, shape.I, shape.V) == (D, H, ffn_intermediate_size(D), 64)
        assert shape.T == 16384 and shape.side == 128
    assert [(m, n) for m, n, *_ in GLUE_MODELS] == [("DiG-S/2", 4), ("DiG-XL/2", 2)]
    assert shapes["DiG-S/2"].label() == "DiG-S/2 2048px: N=4 T=16384 D=384 I=1024 H=6 V=64"


def test_hbm_floor_bytes():
    ops = {op.name: op for op in GLUE_OPS}
    s, bf16 = glue_shapes(2048)[0], torch.bfloat16
    tokens = s.N * s.T * s.D * 2  # one [N, T, D] bf16 tensor: 50.3 MB
    gate = s.N * s.D * 2
    # x + gate * y: reads x, gate, y, writes out; backward reads gate, y, dout, writes dgate, dy (dx is dout)
    assert glue_bytes(ops["gated_residual"], s, bf16, "fwd") == 3 * tokens + gate
    assert glue_bytes(ops["gated_residual"], s, bf16, "fwd+bwd") == 3 * tokens + gate + 3 * tokens + 2 * gate
    # swiglu_down: u [N, T, 2I] bf16 and the fp32 weight [D, I] in, [N, T, D] out
    u, weight, out = s.N * s.T * 2 * s.I * 2, s.D * s.I * 4, tokens
    assert glue_bytes(ops["swiglu_down"], s, bf16, "fwd") == u + weight + out
    assert glue_bytes(ops["swiglu_down"], s, bf16, "fwd+bwd") == 2 * (u + weight + out) + u + weight


def test_cpu_run_times_the_pytorch_twins_with_errors(tmp_path, one_torch_thread):
    settings = KernelSettings(device="cpu", dtype="fp32", ops=("glue",), glue_resolution=32)
    KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    frame = load_kernels(tmp_path / "kernels.csv")
    glue = frame[frame["op"] != "gla"]
    assert set(glue["op"]) == {op.name for op in GLUE_OPS}
    assert set(glue["shape"]) == {shape.label() for shape in glue_shapes(32)}
    assert set(glue["provider"]) == {"hbm-floor", "ours-triton", "torch-ref"}
    ref = glue[glue["provider"] == "torch-ref"]
    times = ref[ref["metric"] == "time"]
    assert len(times) == len(GLUE_OPS) * 2 * 2 and set(times["status"]) == {"ok"}  # ops x shapes x modes
    errors = ref[ref["metric"].isin(["rel_err_o", "rel_err_grads"])]
    assert len(errors) == len(GLUE_OPS) * 2 * 3 and set(errors["status"]) == {"ok"}
    assert all(math.isfinite(e) and e < 1e-5 for e in errors["median"])  # fp32 twin against float64
    assert set(errors["reference"]) == {f"{op.ref} float64, all inputs" for op in GLUE_OPS}
    peak = ref[ref["metric"] == "peak_mem"]
    assert set(peak["status"]) == {"unavailable"} and set(peak["error"]) == {NO_PEAK_MEMORY}
    fused = glue[(glue["provider"] == "ours-triton")]
    assert set(fused["status"]) == {"unavailable"} and set(fused["error"]) == {triton_unavailable("cpu")}
    floors = glue[glue["provider"] == "hbm-floor"]
    assert len(floors) == len(GLUE_OPS) * 2 * 2 and (floors["median"] > 0).all()
    assert (frame["op"] == "gla").sum() == 1  # the device copy only: --ops glue


@needs_triton_device
@pytest.mark.parametrize("op", GLUE_OPS, ids=[op.name for op in GLUE_OPS])
def test_every_fused_op_takes_the_benchmark_inputs(op):
    """The benchmark calls fused(*inputs) and ref(*inputs): both must take what make_inputs makes.
    fp32 inputs; the fused kernels compute in fp32, so 1e-5 covers their rounding (~1e-7)."""
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    torch.manual_seed(0)
    inputs = tuple(x.requires_grad_() for x in op.make_inputs(TINY, torch.float32, device))
    fused = getattr(__import__(op.module, fromlist=[op.fused]), op.fused)
    o = fused(*inputs)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, inputs, do)
    checks = glue_reference(op, inputs, o.detach(), grads, do)
    assert checks["rel_err_o"] < 1e-5 and checks["rel_err_grads"] < 1e-5, checks


@pytest.mark.gpu
def test_gpu_run_measures_fused_and_twin_with_memory(tmp_path):
    """bf16 on the GPU: both providers run, peak memory is a positive number of MiB, errors stay
    within bf16's rounding (2**-8 = 3.9e-3 per value, so 1e-2 relative over a tensor)."""
    settings = KernelSettings(device="cuda", dtype="bf16", ops=("glue",), glue_resolution=256)
    KernelRun(settings, tmp_path / "kernels.csv").run(progress=lambda line: None)
    frame = load_kernels(tmp_path / "kernels.csv")
    glue = frame[(frame["op"] != "gla") & (frame["provider"] != "hbm-floor")]
    times = glue[glue["metric"] == "time"]
    assert set(times["status"]) == {"ok"}, times[["op", "provider", "error"]]
    peak = glue[glue["metric"] == "peak_mem"]
    assert set(peak["status"]) == {"ok"} and (peak["median"] > 0).all()
    errors = glue[glue["metric"].isin(["rel_err_o", "rel_err_grads"])]
    assert (errors["median"] < 1e-2).all(), errors[["op", "provider", "metric", "median"]]
