"""Intra-sub-chunk products of chunked GLA (16 tokens), with a fast and an exact path.

Every product here has the form sum over pairs (i, j) of a 16-token sub-chunk, weighted by
exp(G_i - G_j) per key channel, where G is the gate cumsum inside the sub-chunk (decreasing).

* Fast path: exp(G_i - G_j) = exp(G_i - G_0) * exp(G_0 - G_j), so the product is one tl.dot on
  tensor cores. exp(G_0 - G_j) grows up to exp(range), range = G_0 - G_15, so it is used only
  while range < SAFE_GATE_RANGE (60: exp(60) = 1e26, far from fp32's 3e38 even times |q| |k|).
  DiG's gates (logsigmoid / 16) keep the range of 16 tokens near 1.
* Exact path: exp(G_i - G_j) formed per pair, masked before exp, so a gate of -20 per step
  (range 300) underflows to 0 and never overflows; it only runs for sub-chunks whose gates need it
  (a runtime branch per sub-chunk). It walks the 16 tokens of one side in a loop, so its live tiles
  are [16, K] like the fast path's: registers are allocated for both branches, and the [16, 16, K]
  tensors of the first exact path (64 fp32 per thread at K=32 and 4 warps, 256 at K=128) made the
  dk/dv kernel spill 256 bytes per thread at K=32, V=64 and 1208 at K=V=64 (ptxas, sm_90);
  without them it spilled 0 and 264.
"""

import triton
import triton.language as tl

from kernels import interpreting

SAFE_GATE_RANGE = tl.constexpr(60.0)
# The chunk-wide path (chunk_fwd / chunk_bwd: a whole chunk as one block of dots, no sub-chunk walk)
# factors over up to 128 tokens, where it is accuracy, not overflow, that bounds the range: exp(x)
# carries |x| * 2**-24 relative error from rounding its argument, and a term exp(G_i - G_0) *
# exp(G_0 - G_j) gets it from both factors even when G_i - G_j is small: 20 * 2 * 6e-8 = 2.4e-6,
# 4x inside fp32's 1e-5 test tolerance. DiG's gates (logsigmoid / 16, about -0.05 a token) span
# about 3 over 64 tokens and 6 over 128, far inside it.
CHUNK_GATE_RANGE = tl.constexpr(20.0)
# Fixed at import, as triton.jit fixes whether these functions are interpreted.
INTERPRETED = tl.constexpr(interpreting())


@triton.jit
def round_to_bf16_nearest_even(x):
    """fp32 -> fp32 holding the nearest-even bf16 value. Triton's interpreter converts to bf16 by
    truncation (twice the rounding error); with the low 16 bits already zero any conversion is exact."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, PREC: tl.constexpr):
    """a [M, N] @ b [N, P] of fp32 tiles -> fp32 [M, P], summed in fp32, at config.dot_precision's
    PREC. PREC "bf16": the operands rounded to bf16 (nearest even: at most 2**-8 = 3.9e-3 relative,
    1.6e-3 rms, the order of the bf16 inputs' own rounding), one bf16 tensor-core MMA. The
    interpreter's tl.dot multiplies bf16 operands' raw uint16 bits, so there the rounded values stay
    fp32: their products are exact in fp32, as on tensor cores."""
    if PREC == "bf16":
        if INTERPRETED:
            out = tl.dot(round_to_bf16_nearest_even(a), round_to_bf16_nearest_even(b), input_precision="ieee")
        else:
            out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def sub_chunk_masks(BC: tl.constexpr):
    """[BC, BC] masks over (query i, key j) of a sub-chunk: j <= i, j < i, and j == i."""
    o_c = tl.arange(0, BC)
    return o_c[:, None] >= o_c[None, :], o_c[:, None] > o_c[None, :], o_c[:, None] == o_c[None, :]


@triton.jit
def row_of(b_x, j, BC: tl.constexpr):
    """Row j of a [BC, BK] tile as a [BK] vector."""
    return tl.sum(tl.where((tl.arange(0, BC) == j)[:, None], b_x, 0.0), axis=0)


@triton.jit
def decay_to_end(b_g):
    """[BT, BK] exp(sum_{i>j} g_i), the decay from token j to the end of a [BT, BK] tile of gates
    (rows past the sequence hold 0), as exp(R_j - g_j) with R the reverse cumsum: at the last token
    inside the sequence R_j is g_j itself in any addition order (only exact zeros are added to it),
    so its decay is exactly 1, an empty product. Formed as exp(total - G_j) with G the cumsum and
    total a sum, it was exp(x - x) of two sums that the GPU adds in different orders: with gates of
    -20 the total of 64 tokens is ~-1300 (ulp 1.2e-4), and that token's k v^T, which dominates the
    state, came out a few ulps of the exponent off: the fp32 final state 8.8e-5 (H200,
    test_triton_matches_naive_float64, very_negative, fp32; tolerance 1e-5). The interpreter adds
    row by row and hid it: tests/test_gla_triton.py reorders its sums and scans to check this.
    For the whole-chunk local-state kernel, which needs no forward cumsum: the sub-chunk walks, which
    do, use gate_total_at_last_token instead (a second scan there cost 11-21%)."""
    return tl.exp(tl.cumsum(b_g, axis=0, reverse=True) - b_g)


@triton.jit
def gate_total_at_last_token(b_gc, i_start, T, BC: tl.constexpr):
    """[BK] gate total of the sub-chunk of scan positions [i_start, i_start + BC), read off its
    cumsum b_gc at its last position inside the sequence (positions >= T hold gate 0), so that the
    decay exp(total - G_j) is exactly 1 at that token whatever order the GPU's scan adds in (see
    decay_to_end). One masked row reduction in place of the plain tl.sum; the reverse cumsum of
    decay_to_end, a second scan per sub-chunk, had made the H200's forward + backward 11-13% slower
    at every head-dim class (2026-12-02: K=32, V=64, T=4096, B*T=131072, H=6: 2.16 -> 2.44 ms; this
    form 2.21; reports/h200-2026-12-02d)."""
    i_last = tl.minimum(tl.maximum(T - i_start, 1), BC) - 1
    return row_of(b_gc, i_last, BC)


@triton.jit
def gate_range(b_gc, b_glast, BC: tl.constexpr):
    """Scalar: the gate range of these BC tokens, the largest over the K lanes of G_0 - G_last."""
    return tl.max(row_of(b_gc, 0, BC) - b_glast, axis=0)


@triton.jit
def fast_path_ok(b_gc, b_glast, BC: tl.constexpr, LIMIT: tl.constexpr):
    """Scalar: the gate range of these BC tokens is below LIMIT, so the factored dot path stays finite
    (SAFE_GATE_RANGE) or accurate (CHUNK_GATE_RANGE)."""
    return gate_range(b_gc, b_glast, BC) < LIMIT


@triton.jit
def chunk_wide_ok(b_range, PREC: tl.constexpr):
    """Scalar: a chunk whose gate range (gate_range over all the K lanes a program sums over) is
    b_range takes the chunk-wide path: below CHUNK_GATE_RANGE. Never with bf16 dot operands: there
    the H200 gave dq 0.86 relative error at the DiG shape (B4 T4096 H6, chunk 128; the interpreter
    and fp32 operands were right), so they keep the sub-chunk walk."""
    if PREC == "bf16":
        ok = b_range < -1.0  # a gate range is >= 0: never
    else:
        ok = b_range < CHUNK_GATE_RANGE
    return ok


@triton.jit
def factored_scores(b_a, b_b, b_gc, BC: tl.constexpr, PREC: tl.constexpr):
    """S_ij = sum_k a_ik b_jk exp(G_ik - G_jk) for all (i, j), unmasked: (a exp(G - G_0)) (b exp(G_0 - G))^T,
    one dot. a, b: [BC, BK] -> [BC, BC]. Finite while the range of G is (fast_path_ok)."""
    b_g0 = row_of(b_gc, 0, BC)
    return mma(b_a * tl.exp(b_gc - b_g0[None, :]), tl.trans(b_b * tl.exp(b_g0[None, :] - b_gc)), PREC)


@triton.jit
def factored_rows(b_w, b_x, b_gc, BC: tl.constexpr, PREC: tl.constexpr):
    """out_i = sum_j w_ij x_j exp(G_i - G_j) as two scalings around one dot. w: [BC, BC], x: [BC, BK]."""
    b_g0 = row_of(b_gc, 0, BC)
    return mma(b_w, b_x * tl.exp(b_g0[None, :] - b_gc), PREC) * tl.exp(b_gc - b_g0[None, :])


@triton.jit
def factored_cols(b_w, b_x, b_gc, BC: tl.constexpr, PREC: tl.constexpr):
    """out_j = sum_i w_ij x_i exp(G_i - G_j) as two scalings around one dot. w: [BC, BC], x: [BC, BK]."""
    b_g0 = row_of(b_gc, 0, BC)
    return mma(tl.trans(b_w), b_x * tl.exp(b_gc - b_g0[None, :]), PREC) * tl.exp(b_g0[None, :] - b_gc)


@triton.jit
def decayed_scores(b_a, b_b, b_gc, m_keep, fast, BC: tl.constexpr, PREC: tl.constexpr):
    """S_ij = sum_k a_ik b_jk exp(G_ik - G_jk) where m_keep, else 0. a, b: [BC, BK] -> [BC, BC]."""
    if fast:
        b_s = factored_scores(b_a, b_b, b_gc, BC, PREC)
    else:
        o_c = tl.arange(0, BC)
        b_s = tl.zeros([BC, BC], dtype=tl.float32)
        for j in range(BC):  # column j: key token j against every query token i
            m_col = tl.sum(tl.where(o_c[None, :] == j, m_keep.to(tl.int32), 0), axis=1) > 0  # [BC] over i
            b_decay = tl.exp(tl.where(m_col[:, None], b_gc - row_of(b_gc, j, BC)[None, :], float("-inf")))
            b_col = tl.sum(b_a * row_of(b_b, j, BC)[None, :] * b_decay, axis=1)
            b_s = tl.where(o_c[None, :] == j, b_col[:, None], b_s)
    return tl.where(m_keep, b_s, 0.0)


@triton.jit
def decayed_rows(b_w, b_x, b_gc, m_keep, fast, BC: tl.constexpr, PREC: tl.constexpr):
    """out_i = sum_j w_ij x_j exp(G_i - G_j) over m_keep. w: [BC, BC] (zero outside m_keep),
    x: [BC, BK] -> [BC, BK]. (dq from dA and k.)"""
    if fast:
        b_out = factored_rows(b_w, b_x, b_gc, BC, PREC)
    else:
        o_c = tl.arange(0, BC)
        b_out = tl.zeros(b_x.shape, dtype=tl.float32)
        for j in range(BC):  # token j's contribution to every row i
            m_col = tl.sum(tl.where(o_c[None, :] == j, m_keep.to(tl.int32), 0), axis=1) > 0  # [BC] over i
            b_wj = tl.sum(tl.where(o_c[None, :] == j, b_w, 0.0), axis=1)  # column j of w
            b_decay = tl.exp(tl.where(m_col[:, None], b_gc - row_of(b_gc, j, BC)[None, :], float("-inf")))
            b_out += b_wj[:, None] * row_of(b_x, j, BC)[None, :] * b_decay
    return b_out


@triton.jit
def decayed_cols(b_w, b_x, b_gc, m_keep, fast, BC: tl.constexpr, PREC: tl.constexpr):
    """out_j = sum_i w_ij x_i exp(G_i - G_j) over m_keep. w: [BC, BC] (zero outside m_keep),
    x: [BC, BK] -> [BC, BK]. (dk from dA and q.)"""
    if fast:
        b_out = factored_cols(b_w, b_x, b_gc, BC, PREC)
    else:
        o_c = tl.arange(0, BC)
        b_out = tl.zeros(b_x.shape, dtype=tl.float32)
        for i in range(BC):  # token i's contribution to every row j
            m_row = tl.sum(tl.where(o_c[:, None] == i, m_keep.to(tl.int32), 0), axis=0) > 0  # [BC] over j
            b_wi = tl.sum(tl.where(o_c[:, None] == i, b_w, 0.0), axis=0)  # row i of w
            b_decay = tl.exp(tl.where(m_row[:, None], row_of(b_gc, i, BC)[None, :] - b_gc, float("-inf")))
            b_out += b_wi[:, None] * row_of(b_x, i, BC)[None, :] * b_decay
    return b_out


@triton.jit
def exclusive_cumsum(b_x, BC: tl.constexpr, PREC: tl.constexpr):
    """sum_{j<i} x_j along the rows of [BC, BK], as a dot with a strictly lower 0/1 matrix:
    cumsum(x) - x would cancel a large x_i against itself when the prefix is tiny."""
    o_c = tl.arange(0, BC)
    b_lower = tl.where(o_c[:, None] > o_c[None, :], 1.0, 0.0)
    return mma(b_lower, b_x, PREC)
