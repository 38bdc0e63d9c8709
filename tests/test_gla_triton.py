"""Triton chunked GLA against the float64 naive recurrence (CPU: Triton interpreter; GPU: H200).

Tolerances: fp32 inputs 1e-5 (fp32 round-off over sums of <= 200 terms stays near 1e-7; the
margin covers the different summation order), except dg: 1e-4 per 64 tokens of chunk, because
dg_t sums the terms of all later tokens as a difference of two suffix sums over the chunk, each up
to chunk-size times larger than the result when gates are -20 (B2 T128 K16 V24, three seeds:
3.1e-5..7.7e-5 at chunk 64, 1.1e-4..1.3e-4 at 128; 1e-7 for DiG-like gates; chunk_gla_torch,
whose exponents all start at a block boundary, 1e-7 even there).
fp16/bf16 inputs: twice the error of the naive recurrence run on the same low-precision inputs
(tests/gla_cases.py), the FlashAttention rule; on the GPU the kernels multiply bf16 inputs' fp32
intermediates in tf32 (kernels/gla/config.py), whose 2**-11 operand rounding shows in the fp32
results ht and dh0 (4e-4 measured on the H200), so those get a floor of 1e-3 there.
bf16 dot operands (GLAConfig.dot_operands = "bf16"): wider bounds, measured, see BF16_DOT_FACTOR.
"""

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gla_cases import (
    FP32_TOLERANCE,
    RESULT_NAMES,
    assert_matches,
    low_precision_tolerances,
    make_inputs,
    reference,
    run_impl,
)
from helpers import TRITON_DEVICE, ZeroFills, needs_triton_device
from kernels.gla import chunk_gla, naive_recurrent_gla, tuning
from kernels.gla.chunk import launch_plan
from kernels.gla.config import CHUNK_SIZES, GLAConfig

FP32_DG_TOLERANCE_PER_64 = 1e-4
TF32_STATE_FLOOR = 1e-3
# bf16 dot operands: the naive error e (1.7e-3) is one bf16 rounding of the result, and the dots
# round each operand once more by as much (rms 1.7e-3, at most 2**-8), o = (q exp G) S + A v three
# times: sqrt(1 + 3) e = 2 e expected, 2.06 e measured at most for o, dq, dk, dv (six cases of
# 32x64, 64x64, 48x80, four seeds, interpreter), right at FlashAttention's 2 e: 3 e here. dg adds
# up W and suffix sums up to chunk-size times larger than itself, and their operands' rounding
# shows: 3.9 e measured at chunk 64, 4.5 e at 128 (fp32 operands: 1.0 e): 6 e. ht and dh0 stay
# fp32 (naive error 1e-7): one bf16 rounding's bound 2**-8 = 3.9e-3 (1.8e-3 measured at most).
BF16_DOT_FACTOR = 3.0
BF16_DOT_DG_FACTOR = 6.0
BF16_DOT_STATE_FLOOR = 2.0**-8
# bf16 stored states (GLAConfig.bf16_states): ht and dh0 come back as bf16 numbers, rounded to the
# nearest even (at most 2**-9 relative) after at most two roundings on the scan path (a chunk's
# contribution, then the scanned state): 2 * 2**-9 (the interpreter measured 2.2e-3 there, the walk
# under 2**-9); the other results take the stored states once more, inside the 2x-naive bounds.
BF16_STATE_FLOOR = 2.0**-8
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#   B, T,  H, K,   V,   chunk, reverse, h0,    gate,            dtype
CPU_CASES = [
    (1, 1, 1, 16, 16, 16, False, False, "mixed", torch.float32),
    (2, 15, 3, 24, 48, 16, True, True, "mixed", torch.float32),
    (1, 63, 2, 32, 64, 32, False, True, "near_zero", torch.float32),
    (3, 64, 1, 16, 24, 64, True, False, "very_negative", torch.float32),
    (2, 128, 1, 16, 24, 128, False, False, "very_negative", torch.float32),
    (1, 65, 2, 100, 24, 64, False, True, "mixed", torch.float32),
    (2, 200, 1, 32, 64, 128, False, True, "half_extreme", torch.float32),
    (1, 200, 1, 64, 100, 32, True, True, "mixed", torch.float32),
    (2, 65, 2, 32, 64, 16, False, True, "mixed", torch.float16),
    (1, 63, 3, 24, 16, 32, True, False, "near_zero", torch.float16),
    (2, 64, 1, 32, 64, 64, False, True, "mixed", torch.bfloat16),
    (1, 65, 2, 16, 100, 128, True, True, "very_negative", torch.bfloat16),
]

# The kernel benchmark's head-dim classes (K = V = 64, K = V = 128 besides DiG's 32 x 64), widths that are
# not powers of two (the tiles are padded and masked) and T that is no multiple of the chunk, forward and
# backward against float64. About 1-3 s each under the interpreter on this 2-core machine.
HEAD_DIM_CASES = [
    (1, 40, 2, 64, 64, 16, False, True, "mixed", torch.float32),
    (1, 100, 1, 128, 128, 32, True, False, "mixed", torch.float32),
    (2, 40, 1, 48, 80, 16, False, True, "near_zero", torch.float32),
    (1, 100, 2, 24, 40, 64, True, True, "very_negative", torch.float32),
    (1, 100, 1, 48, 80, None, False, True, "mixed", torch.float32),  # the default chunk (64) < T
    (1, 100, 1, 64, 64, 32, False, True, "mixed", torch.bfloat16),
    (1, 40, 1, 128, 128, 16, True, True, "mixed", torch.float16),
    (1, 100, 2, 24, 40, 64, False, False, "mixed", torch.bfloat16),
]
CPU_CASES += HEAD_DIM_CASES


def case_id(case):
    B, T, H, K, V, chunk, reverse, h0, gate, dtype = case
    return (f"B{B}-T{T}-H{H}-K{K}-V{V}-c{chunk or 'default'}{'-rev' if reverse else ''}{'-h0' if h0 else ''}"
            f"-{gate}-{str(dtype).replace('torch.', '')}")


def make_case_inputs(B, T, H, K, V, dtype, gate, h0, device, seed):
    """make_inputs, plus "half_extreme": every other token's gate is -20 and the rest DiG-like,
    so within one run some 16-token sub-chunks take the fast (factored) path and some the exact one."""
    kind = "mixed" if gate == "half_extreme" else gate
    inputs = make_inputs(B, T, H, K, V, dtype, gate=kind, seed=seed, h0=h0, device=device)
    if gate == "half_extreme":
        g = inputs["g"].float()
        g[:, 64:128] = -20.0  # whole sub-chunks beyond the fast path's gate range
        g[:, ::37] = -20.0  # and single tokens inside otherwise mild sub-chunks
        inputs["g"] = g.to(dtype)
    return inputs


def check_against_reference(case, device, seed=0, bf16_dots=False, bf16_states=False):
    """The float64 naive recurrence runs on the kernel's device (on the GPU, a CPU reference of
    T=16384 took minutes). bf16_dots: the kernels run with bf16 dot operands (the bf16_dots fixture);
    bf16_states: with bf16 stored states (GLAConfig.bf16_states), so ht and dh0 come back rounded to
    bf16 (BF16_STATE_FLOOR)."""
    B, T, H, K, V, chunk, reverse, h0, gate, dtype = case
    inputs = make_case_inputs(B, T, H, K, V, dtype, gate, h0, device, seed)
    ref = reference(inputs, reverse)
    out = run_impl(chunk_gla, inputs, reverse, chunk_size=chunk)
    if dtype == torch.float32:
        tolerances = {**{name: FP32_TOLERANCE for name in RESULT_NAMES}, "dg": fp32_dg_tolerance(chunk)}
    elif bf16_dots:
        tolerances = bf16_dot_tolerances(low_precision_tolerances(inputs, reverse, ref))
    else:
        tolerances = low_precision_tolerances(inputs, reverse, ref)
        floor = BF16_STATE_FLOOR if bf16_states else TF32_STATE_FLOOR if device == "cuda" else 0.0
        for name in ("ht", "dh0"):
            if name in tolerances:
                tolerances[name] = max(tolerances[name], floor)
    assert_matches(out, ref, tolerances)


def fp32_dg_tolerance(chunk):
    """FP32_DG_TOLERANCE_PER_64 scaled to the chunk (None: the largest a tuned config may pick)."""
    return FP32_DG_TOLERANCE_PER_64 * max(1, (chunk or max(CHUNK_SIZES)) / 64)


def bf16_dot_tolerances(two_naive: dict) -> dict:
    """low_precision_tolerances' 2 e widened to BF16_DOT_FACTOR e (dg: BF16_DOT_DG_FACTOR e), with
    BF16_DOT_STATE_FLOOR for ht and dh0."""
    widened = {name: tol / 2 * (BF16_DOT_DG_FACTOR if name == "dg" else BF16_DOT_FACTOR)
               for name, tol in two_naive.items()}
    for name in ("ht", "dh0"):
        if name in widened:
            widened[name] = max(widened[name], BF16_DOT_STATE_FLOOR)
    return widened


@pytest.fixture
def bf16_dots(monkeypatch):
    """chunk_gla launches with dot_operands="bf16", every other field as tuning.get_config gives it."""
    get_config = tuning.get_config
    monkeypatch.setattr(tuning, "get_config", lambda *args, **kwargs: dataclasses.replace(
        get_config(*args, **kwargs), dot_operands="bf16"))


@needs_triton_device
@pytest.mark.parametrize("case", CPU_CASES, ids=[case_id(c) for c in CPU_CASES])
def test_triton_matches_naive_float64(case):
    assert torch.empty(4).isnan().all()  # tests/conftest.py: buffers the kernels do not write stay NaN
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    check_against_reference(case, device)


def tree_order_sum(reduce_op, input):
    """The interpreter's tl.sum with the halves of the axis added pairwise, the way a GPU's shuffle
    reduction orders the additions, instead of numpy's row-by-row sum."""
    data, axis = input.handle.data, reduce_op.axis
    x = data.reshape(-1) if axis is None else np.moveaxis(data, axis, 0)
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        x = np.concatenate([x[:half] + x[half:2 * half], x[2 * half:]])
    out = x[0]
    if reduce_op.keep_dims:  # the reduced axis (all of them for axis=None) kept with length 1
        out = out.reshape((1,) * data.ndim) if axis is None else np.expand_dims(out, axis)
    return reduce_op.to_tensor(out, input.dtype)


def parallel_order_cumsum(scan_op, input):
    """The interpreter's tl.cumsum as a Hillis-Steele scan (row i adds row i - 1, then i - 2, i - 4,
    ...), a parallel scan's order, instead of numpy's running sum: row i no longer equals row i - 1
    plus x_i exactly, and the last row of a tile need not equal its last non-zero row."""
    x = np.moveaxis(input.handle.data, scan_op.axis, 0)
    offset = 1
    while offset < x.shape[0]:
        x = np.concatenate([x[:offset], x[offset:] + x[:-offset]])
        offset *= 2
    return [scan_op.to_tensor(np.moveaxis(x, 0, scan_op.axis), dtype=input.dtype)]


# fp32 with gates of -20: the decay from a tile's last token to its end must be exactly 1, or that
# token's k v^T, which dominates the state, is off. With the interpreter's sums and scans in parallel
# order, the kernels before ecf9687 (exp(sum - cumsum)) put 4.7e-5 and 3.2e-5 into ht of the first
# two cases (the H200 measured 8.8e-5 and 4.2e-5 there), and ecf9687 (the cumsum's last row, past
# the sequence's end at T=100, chunk 64) 4.7e-5 into the second; exp(reverse cumsum - g)
# (intra.decay_to_end) gives 2.6e-8. The interpreter's own row-by-row order hides all of it.
GPU_ORDER_CASES = [
    (3, 64, 1, 16, 24, 64, True, False, "very_negative", torch.float32),
    (1, 100, 2, 24, 40, 64, True, True, "very_negative", torch.float32),
    (2, 200, 1, 32, 64, 128, False, True, "half_extreme", torch.float32),
]


@pytest.mark.skipif(not INTERPRETED, reason="reorders the interpreter's sums (compiled: their own order)")
@pytest.mark.parametrize("case", GPU_ORDER_CASES, ids=[case_id(c) for c in GPU_ORDER_CASES])
def test_fp32_matches_naive_float64_with_parallel_order_sums(case, monkeypatch):
    from triton.runtime import interpreter

    monkeypatch.setattr(interpreter.ReduceOps, "sum", tree_order_sum)
    monkeypatch.setattr(interpreter.ScanOps, "cumsum", parallel_order_cumsum)
    check_against_reference(case, "cpu")


# bf16 dot operands in DiG's head-dim class, 64 x 64 and one not a power of two; reversed, with an
# initial state, and sub-chunks on the exact path (half_extreme). About 3-10 s each interpreted.
BF16_DOT_CASES = [
    (2, 64, 1, 32, 64, 64, False, True, "mixed", torch.bfloat16),
    (2, 256, 2, 32, 64, 128, True, True, "mixed", torch.bfloat16),
    (1, 100, 1, 64, 64, 32, True, True, "mixed", torch.bfloat16),
    (1, 200, 1, 48, 80, 64, False, False, "half_extreme", torch.bfloat16),
]


@needs_triton_device
@pytest.mark.parametrize("case", BF16_DOT_CASES, ids=[case_id(c) for c in BF16_DOT_CASES])
def test_bf16_dot_operands_match_naive_float64(case, bf16_dots):
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    check_against_reference(case, device, bf16_dots=True)


# Narrow state tiles (GLAConfig.chunk_block_k, chunk_block_v): the K-tiled dq and dk/dg passes and the
# V-tiled output, dv and local-state passes, with heads that are no multiple of the tile (masked lanes in
# the last tile), sub-chunks on the exact path (half_extreme, very_negative), reversed, with h0. The
# tiles only regroup the same sums, so the thresholds are the one-tile ones. 2-10 s each interpreted.
TILE_CASES = [
    ((1, 200, 1, 48, 80, 32, False, True, "half_extreme", torch.float32), (16, 32)),
    ((1, 40, 2, 64, 64, 16, True, True, "mixed", torch.bfloat16), (32, 32)),
    ((2, 65, 1, 24, 100, 64, True, False, "very_negative", torch.float32), (16, 64)),
]


def force_config(monkeypatch, **fields):
    """chunk_gla launches with these GLAConfig fields, every other one as tuning.get_config gives it."""
    get_config = tuning.get_config
    monkeypatch.setattr(tuning, "get_config", lambda *args, **kwargs: dataclasses.replace(
        get_config(*args, **kwargs), **fields))


def force_tiles(monkeypatch, tiles):
    """chunk_gla launches with these [K, V] state tiles."""
    force_config(monkeypatch, chunk_block_k=tiles[0], chunk_block_v=tiles[1])


@needs_triton_device
@pytest.mark.parametrize("case, tiles", TILE_CASES,
                         ids=[f"{case_id(c)}-tile{t[0]}x{t[1]}" for c, t in TILE_CASES])
def test_narrow_state_tiles_match_naive_float64(case, tiles, monkeypatch):
    force_tiles(monkeypatch, tiles)
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    check_against_reference(case, device)


# Launch variants that regroup the same sums, so the thresholds are the default launch's. The chunk-wide
# loops' step (GLAConfig.chunk_block_inner) narrower than the head: the output's and dv's sums over K and
# dq's and dk's over V in several steps, the last one masked (heads that are no multiple of the step),
# the gate range gathered over the K steps; with chunks on the walk (half_extreme), the one-pass
# backward (dv stored step by step), the two-pass one (fused_backward_max_k=0) and the split one (128 x 128).
VARIANT_CASES = [
    ((1, 200, 1, 48, 80, 64, True, True, "half_extreme", torch.float32), dict(chunk_block_inner=16)),
    ((2, 65, 1, 40, 72, 32, False, False, "mixed", torch.float16), dict(chunk_block_inner=16)),
    ((1, 100, 2, 128, 128, 64, False, True, "mixed", torch.bfloat16), dict(chunk_block_inner=32)),
    ((1, 200, 1, 48, 80, 64, False, True, "half_extreme", torch.float32), dict(fused_backward_max_k=0)),
    ((2, 65, 1, 32, 64, 32, True, False, "mixed", torch.bfloat16),
     dict(fused_backward_max_k=0, chunk_block_inner=16)),
    # the local states and the scan in place of the state walk (the default at these lengths)
    ((1, 200, 2, 24, 40, 16, True, True, "half_extreme", torch.float32), dict(state_walk_max_chunks=0)),
    ((2, 100, 1, 32, 64, 32, False, True, "very_negative", torch.float32), dict(state_walk_max_chunks=0)),
    ((1, 130, 1, 128, 128, 64, True, True, "mixed", torch.bfloat16), dict(state_walk_max_chunks=0)),
    # the output pass reading the walk's gate cumsum (output_gate_cumsum): a partial last chunk, the
    # chunk-wide path and its fallback (very negative gates), bf16 at 128 x 128 in K steps
    ((1, 200, 2, 48, 80, 64, True, True, "mixed", torch.float32), dict(output_gate_cumsum=1)),
    ((2, 65, 1, 32, 64, 32, False, True, "very_negative", torch.float32), dict(output_gate_cumsum=1)),
    ((1, 130, 1, 128, 128, 64, True, False, "mixed", torch.bfloat16), dict(output_gate_cumsum=1)),
    # the walk over many chunks, taken for its program count (state_walk_min_programs)
    ((2, 200, 1, 32, 64, 16, True, True, "half_extreme", torch.float32),
     dict(state_walk_max_chunks=1, state_walk_min_programs=2)),
    # the output pass's own tile and step: one V tile wider than the head, K in masked steps of 16
    ((1, 100, 1, 48, 72, 32, False, True, "mixed", torch.float32),
     dict(output_block_v=128, output_block_inner=16)),
]


def variant_id(case, fields):
    return case_id(case) + "".join(f"-{name}{value}" for name, value in fields.items())


@needs_triton_device
@pytest.mark.parametrize("case, fields", VARIANT_CASES, ids=[variant_id(c, f) for c, f in VARIANT_CASES])
def test_launch_variants_match_naive_float64(case, fields, monkeypatch):
    force_config(monkeypatch, **fields)
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    check_against_reference(case, device)


# bf16 stored states: the walk (DiG's class, 128 x 128 in K tiles, one not a power of two, reversed,
# with an initial state, a partial last chunk) and the local states + scan (state_walk_max_chunks=0).
BF16_STATE_CASES = [
    ((2, 100, 1, 32, 64, 32, False, True, "mixed", torch.bfloat16), {}),
    ((1, 130, 1, 128, 128, 64, True, True, "mixed", torch.bfloat16), {}),
    ((1, 200, 1, 48, 80, 64, True, False, "half_extreme", torch.bfloat16), {}),
    ((1, 200, 2, 24, 40, 16, False, True, "mixed", torch.bfloat16), dict(state_walk_max_chunks=0)),
]


@needs_triton_device
@pytest.mark.parametrize("case, fields", BF16_STATE_CASES,
                         ids=[variant_id(c, f) for c, f in BF16_STATE_CASES])
def test_bf16_states_match_naive_float64(case, fields, monkeypatch):
    force_config(monkeypatch, bf16_states=1, **fields)
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    check_against_reference(case, device, bf16_states=True)


@needs_triton_device
def test_bf16_states_are_stored_as_bf16_and_the_final_state_returned_as_fp32(monkeypatch):
    q, k, v, g = small(dtype=torch.bfloat16, device=TRITON_DEVICE, T=40)
    config = list(GLAConfig(chunk_size=16, bf16_states=1).op_arguments())
    _, h, _ = torch.ops.dig.chunk_gla_fwd(q, k, v, g, None, 0.25, False, False, config, None)
    assert h.dtype == torch.bfloat16 and h.shape == (1, 4, 16, 16) and not h.isnan().any()
    leaves = tuple(x.requires_grad_() for x in (q, k, v, g))
    torch.library.opcheck(torch.ops.dig.chunk_gla_fwd.default,  # the fake gives the same dtype
                          (*leaves, None, 0.25, False, False, config, None))
    force_config(monkeypatch, bf16_states=1)
    _, ht = chunk_gla(q, k, v, g, chunk_size=16, output_final_state=True)
    assert ht.dtype == torch.float32 and torch.equal(ht, ht.bfloat16().float())  # bf16 values


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_bf16_states_are_refused_for_other_input_dtypes(dtype, monkeypatch):
    force_config(monkeypatch, bf16_states=1)
    q, k, v, g = small(dtype=dtype, device=TRITON_DEVICE)
    with pytest.raises(ValueError, match="bf16_states=1 needs bf16 inputs"):
        chunk_gla(q, k, v, g)


def test_the_launch_plan_tiles_the_state_where_the_sums_allow():
    """One dq/dk/dg/dv pass (or dq, then dk/dg/dv) when a tile covers the head; a K-tiled dq and dk/dg
    and a V-tiled dv pass otherwise."""
    one = launch_plan(32, 64, GLAConfig())
    assert list(one)[-1] == "bwd dq dk dg dv" and len(one) == 4
    two = launch_plan(32, 64, GLAConfig(fused_backward_max_k=0))
    assert list(two)[-2:] == ["bwd dq", "bwd dk dg dv"]
    split = {step: (bk, bv) for step, (_, bk, bv, _) in launch_plan(128, 128, GLAConfig()).items()}
    assert split["bwd dk dg"] == (64, 128) and split["bwd dv"] == (128, 64)
    assert split["fwd output"] == (128, 64)
    steps = {step: extra.get("BI") for step, (_, _, _, extra) in launch_plan(128, 128, GLAConfig()).items()}
    assert steps == {"fwd local state": None, "fwd output": 32, "bwd local state": None,
                     "bwd dq": 32, "bwd dk dg": 32, "bwd dv": 32}
    assert launch_plan(32, 64, GLAConfig(output_block_inner=128))["fwd output"][3]["BI"] == 32  # clipped to K
    wide_output = launch_plan(128, 128, GLAConfig(output_block_v=128, output_block_inner=64))["fwd output"]
    assert wide_output[1:3] == (128, 128) and wide_output[3]["BI"] == 64


@needs_triton_device
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_bf16_dot_operands_are_refused_for_other_input_dtypes(dtype, bf16_dots):
    with pytest.raises(ValueError, match="dot_operands='bf16' needs bf16 inputs"):
        chunk_gla(*small(dtype=dtype, device=TRITON_DEVICE))


@needs_triton_device
def test_every_chunk_size_gives_the_same_output():
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    inputs = make_inputs(1, 70, 1, 32, 32, torch.float32, seed=3, h0=True, device=device)
    outs = [run_impl(chunk_gla, inputs, False, chunk_size=c)["o"] for c in (16, 32, 64, 128)]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], rtol=1e-5, atol=1e-5)


@needs_triton_device
def test_without_final_state_returns_none_and_grads_flow():
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    inputs = make_inputs(1, 20, 1, 16, 16, torch.float32, seed=4, device=device)
    ref = reference(inputs, False, False)
    out = run_impl(chunk_gla, inputs, False, output_final_state=False, chunk_size=16)
    assert out["ht"] is None
    assert_matches(out, ref, FP32_TOLERANCE)


@needs_triton_device
def test_unused_outputs_get_no_zero_gradients_and_the_final_state_alone_trains():
    """The backward gets None for outputs nobody used (ops._setup_context): no [B*H, NT+1, K, V] zeros
    for the chunk states when only o is used; and ht alone (o unused) still gives the float64 grads."""
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    q, k, v, g = (x.requires_grad_() for x in small(device=device, T=40, K=16, V=32))
    o, _ = chunk_gla(q, k, v, g, chunk_size=16)
    with ZeroFills() as fills:
        o.sum().backward()
    states_shape = (1, 3 + 1, 16, 32)  # B*H, NT+1, K, V
    assert states_shape not in fills.shapes
    k64, v64, g64 = (x.detach().double().requires_grad_() for x in (k, v, g))
    _, ht = chunk_gla(q, k, v, g, chunk_size=16, output_final_state=True)
    grads = torch.autograd.grad(ht.sum(), (k, v, g))  # ht does not depend on q
    _, ht_ref = naive_recurrent_gla(q.detach().double(), k64, v64, g64, output_final_state=True)
    refs = torch.autograd.grad(ht_ref.sum(), (k64, v64, g64))
    for name, grad, ref in zip("kvg", grads, refs):
        error = ((grad.double() - ref).norm() / ref.norm()).item()
        assert error < FP32_TOLERANCE, (name, error)


def small(dtype=torch.float32, device="cpu", **shape):
    B, T, H, K, V = (shape.get(n, d) for n, d in (("B", 1), ("T", 8), ("H", 1), ("K", 16), ("V", 16)))
    q = torch.randn(B, T, H, K, device=device, dtype=dtype)
    k = torch.randn(B, T, H, K, device=device, dtype=dtype)
    v = torch.randn(B, T, H, V, device=device, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, K, device=device)).to(dtype)
    return q, k, v, g


@pytest.mark.parametrize("mutate, argument", [
    (lambda a: (a[0][:, :, :, :8], *a[1:]), "k"),
    (lambda a: (a[0], a[1], a[2][:, :4], a[3]), "v"),
    (lambda a: (a[0], a[1], a[2], a[3].to(torch.float16)), "g"),
    (lambda a: (a[0].to(torch.float64), *(x.to(torch.float64) for x in a[1:])), "q"),
    (lambda a: (a[0][0], *a[1:]), "q"),
])
def test_bad_arguments_name_the_argument(mutate, argument):
    with pytest.raises(ValueError, match=argument):
        chunk_gla(*mutate(small()))


def test_bad_initial_state_and_chunk_size():
    q, k, v, g = small()
    with pytest.raises(ValueError, match="initial_state"):
        chunk_gla(q, k, v, g, initial_state=torch.zeros(1, 1, 16, 8))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gla(q, k, v, g, chunk_size=48)


def test_validate_rejects_positive_gates():
    q, k, v, g = small()
    with pytest.raises(ValueError, match="g must be"):
        chunk_gla(q, k, v, g.abs() + 0.1, validate=True)


def test_cpu_tensors_without_interpreter_are_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        chunk_gla(*small())


# ---------------------------------------------------------------- GPU (H200), bf16, long sequences
GPU_CASES = [
    (2, 16384, 48, 32, 64, None, False, False, "mixed", torch.bfloat16),  # B*H = 96
    (4, 4096, 6, 32, 64, None, True, True, "mixed", torch.bfloat16),
    (8, 1024, 12, 24, 100, 64, False, True, "half_extreme", torch.bfloat16),
    (3, 1000, 3, 32, 64, 128, True, True, "very_negative", torch.float16),
    (2, 777, 2, 32, 64, 32, False, True, "near_zero", torch.float32),
    (8, 4096, 8, 64, 64, None, False, True, "mixed", torch.bfloat16),  # the benchmark's head-dim classes
    (4, 2048, 16, 128, 128, None, True, True, "mixed", torch.bfloat16),
    (2, 1000, 4, 48, 80, None, False, True, "half_extreme", torch.bfloat16),
]


def gpu_case(case):
    """The case as a parameter, marked gpu_memory (one at a time under xdist) when the float64
    recurrence's saved states, a [K, V] state per token and head kept for backward, pass 10 GiB
    (B2 T16384 H48 K32 V64: 24 GiB; B4 T2048 H16 K=V=128: 16 GiB)."""
    B, T, H, K, V = case[:5]
    saved_gib = B * T * H * K * V * 8 / 2**30
    return pytest.param(case, id=case_id(case), marks=[pytest.mark.gpu_memory] if saved_gib > 10 else [])


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="the GPU suite runs compiled kernels, not the interpreter")
@pytest.mark.parametrize("case", [gpu_case(c) for c in GPU_CASES])
def test_triton_matches_naive_float64_gpu(case):
    check_against_reference(case, "cuda", seed=1)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="the GPU suite runs compiled kernels, not the interpreter")
def test_bf16_dot_operands_at_the_dig_shape_gpu(bf16_dots):
    check_against_reference((4, 4096, 6, 32, 64, None, False, True, "mixed", torch.bfloat16), "cuda", seed=1,
                            bf16_dots=True)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="the GPU suite runs compiled kernels, not the interpreter")
def test_narrow_state_tiles_on_the_exact_path_gpu(monkeypatch):
    force_tiles(monkeypatch, (16, 32))
    case = (2, 1000, 4, 48, 80, None, True, True, "half_extreme", torch.bfloat16)
    check_against_reference(case, "cuda", seed=2)


@pytest.mark.gpu
@pytest.mark.gpu_memory  # 22 GiB of bf16 inputs and output
@pytest.mark.skipif(INTERPRETED, reason="needs compiled kernels")
@pytest.mark.parametrize("state_pass", ["scan", "walk"])
def test_int64_offsets_beyond_2_to_31_elements(state_pass, monkeypatch):
    """B*T*H*K = 2**31 + 2**25: indexing in int32 would wrap and corrupt the last batch. Both runs take
    the same state pass (the big one would walk for its 1056 programs, the small one scan for its 32:
    the same sums in another order, not bit for bit equal)."""
    force_config(monkeypatch, state_walk_min_programs=1 if state_pass == "walk" else 0)
    B, T, H, K, V = 33, 65536, 32, 32, 32
    q = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16)
    assert q.numel() > 2**31
    k = torch.randn_like(q)
    g = (F.logsigmoid(torch.randn_like(q, dtype=torch.float32)) / 16).to(torch.bfloat16)
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    o, _ = chunk_gla(q, k, v, g)
    last = slice(B - 1, B), slice(T - 300, T)  # compare the very end against a fresh small run
    o_last, _ = chunk_gla(*(x[last[0]].contiguous() for x in (q, k, v, g)))
    assert torch.equal(o[last[0]][:, last[1]], o_last[:, last[1]])
