"""Triton forward of chunked GLA: a sequential state pass, then a chunk-parallel output pass.

Notation (per batch b and head h): the sequence is cut into chunks of BT tokens (the tuned
chunk size); each chunk is processed in sub-chunks of BC = 16 tokens.

* ``gla_fwd_local_state_kernel`` (one program per chunk) writes each chunk's own contribution to
  the state after it; ``chunk_state_scan_kernel`` (state_scan.py) then turns these in place into
  h[c], the state entering chunk c (fp32 [K, V]), and h[NT], the final state. Only this scan runs
  over the chunks, and it is a multiply-add per chunk, so long sequences with few (batch, head)
  pairs stay fast.
* ``gla_fwd_output_kernel`` runs one program per (chunk, b, h). It starts from h[c] and
  walks its sub-chunks, so the intra-chunk attention is only ever a 16 x 16 block:
      o_i = scale * ( (q_i * exp(G_i)) @ S  +  sum_{j<=i} A_ij v_j ),
      A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)
  where G is the fp32 gate cumsum that restarts at each sub-chunk (intra.py says how A is
  formed without overflow for any gate). A chunk whose gates span less than CHUNK_GATE_RANGE
  (intra.py) skips the walk: the same sums over the whole chunk as [BT, BT] dots of the factored
  scores (2026-12-03, H200, fwd+bwd at chunk 64: 7% faster at K=32 V=64, 35-39% at 64x64 and
  128x128; reports/h200-2026-12-03). The backward passes (chunk_bwd.py) branch the same way.

Scan order: sequence position i reads token row p(i) of the raster-ordered tensors (REVERSE,
TRANSPOSE: kernels/gla/scan_order.py), so no scan order needs a flipped or transposed copy. Inputs
may be column slices of a wider tensor (a fused projection's output): each input takes its batch
and token strides; heads are contiguous within a row. Offsets are int64 so B*T*H*K may exceed 2**31.
With GATE_LOGSIGMOID the kernels receive the gate's pre-activation x and use g = logsigmoid(x) *
gate_scale, computed in fp32 as each tile is loaded.
"""

import triton
import triton.language as tl

from .intra import (
    SAFE_GATE_RANGE,
    chunk_wide_ok,
    decay_to_end,
    decayed_scores,
    factored_scores,
    fast_path_ok,
    gate_range,
    gate_total_at_last_token,
    mma,
    round_to_bf16_nearest_even,
    sub_chunk_masks,
)


@triton.jit
def scan_rows(i_start, T, E, BT: tl.constexpr, REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Token rows (int64) and validity mask of scan positions [i_start, i_start + BT).

    Position i reads token p(i) of the raster-ordered tensor: REVERSE maps i to T-1-i first, then
    TRANSPOSE reads the e x e grid column-major, p = (i % E) * E + i // E (kernels/gla/scan_order.py).
    """
    o_i = i_start + tl.arange(0, BT)
    m_t = o_i < T
    o_p = tl.where(m_t, o_i, 0)
    if REVERSE:
        o_p = tl.where(m_t, T - 1 - o_i, 0)
    if TRANSPOSE:
        o_p = (o_p % E) * E + o_p // E
    return o_p.to(tl.int64), m_t


@triton.jit
def head_offset(i_bh, H: tl.constexpr, s_b, D: tl.constexpr):
    """int64 element offset of (batch, head) i_bh at token 0 in a [B, T, H, D] tensor whose heads
    are contiguous within a token row and whose batch stride is s_b (any token stride)."""
    return (i_bh // H).to(tl.int64) * s_b + (i_bh % H) * D


@triton.jit
def lanes(K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """The K and V lane indices of this program's [BK, BV] tile of the state and their masks. Tiles
    are numbered K-fastest along grid axis 2 (one tile when BK >= K and BV >= V)."""
    n_k: tl.constexpr = (K + BK - 1) // BK
    i_tile = tl.program_id(2)
    o_k = (i_tile % n_k) * BK + tl.arange(0, BK)
    o_v = (i_tile // n_k) * BV + tl.arange(0, BV)
    return o_k, o_v, o_k < K, o_v < V


@triton.jit
def load_state(ptr, slot, o_k, o_v, m_k, m_v, K: tl.constexpr, V: tl.constexpr):
    """The [BK, BV] tile of state number `slot` (int64) in a [..., K, V] buffer (fp32, or bf16 with
    GLAConfig.bf16_states), as fp32."""
    p = ptr + slot * K * V + o_k[:, None] * V + o_v[None, :]
    return tl.load(p, mask=m_k[:, None] & m_v[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_state(p, b_s, mask):
    """Store an fp32 state tile at pointers p into a state buffer of fp32 or bf16 (rounded to the
    nearest even, also under the interpreter, which truncates)."""
    if p.dtype.element_ty == tl.bfloat16:
        b_s = round_to_bf16_nearest_even(b_s)
    tl.store(p, b_s.to(p.dtype.element_ty), mask=mask)


@triton.jit
def load_rows(ptr, o_t, m_t, o_d, m_d, row_stride):
    """Load a [rows, cols] tile of a [T, H, D] slab as fp32 (zeros outside the masks)."""
    p = ptr + o_t[:, None] * row_stride + o_d[None, :]
    return tl.load(p, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def log_forget_gate(b_g, GATE_LOGSIGMOID: tl.constexpr, gate_scale):
    """The log forget gate from a loaded g tile: g itself, or logsigmoid(g) * gate_scale when the
    kernel is given the gate's pre-activation (DiG: logsigmoid(x) / 16, fused into the load)."""
    if GATE_LOGSIGMOID:
        b_g = (tl.minimum(b_g, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_g)))) * gate_scale
    return b_g


@triton.jit
def load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID: tl.constexpr, gate_scale):
    """(the loaded g tile as fp32, its log forget gates) of [rows, BK], the gates 0 outside the sequence
    and the K lanes. The raw tile is what the dg of a pre-activation needs (sigmoid(-x))."""
    b_graw = load_rows(p_g, o_t, m_t, o_k, m_k, g_st)
    b_g = tl.where(m_t[:, None] & m_k[None, :], log_forget_gate(b_graw, GATE_LOGSIGMOID, gate_scale), 0.0)
    return b_graw, b_g


@triton.jit
def store_rows(ptr, value, o_t, m_t, o_d, m_d, row_stride):
    """Store a [rows, cols] tile into a [T, H, D] slab, rounding to the slab's dtype."""
    p = ptr + o_t[:, None] * row_stride + o_d[None, :]
    if ptr.dtype.element_ty == tl.bfloat16:
        value = round_to_bf16_nearest_even(value)
    tl.store(p, value.to(ptr.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def gla_fwd_local_state_kernel(
    k, k_sb, k_st, v, v_sb, v_st, g, g_sb, g_st, h, gl, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
):
    """Chunk c's own contribution to the state after it, D_c = sum_j (k_j exp(G_last - G_j))^T v_j,
    into h[c + 1], and its log decay G_last = sum of its gates into gl[c]. One program per chunk and
    [BK, BV] tile of the state."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    b_k = load_rows(k + head_offset(i_bh, H, k_sb, K), o_t, m_t, o_k, m_k, k_st)  # [BT, BK]
    b_graw, b_g = load_log_gates(g + head_offset(i_bh, H, g_sb, K), o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID,
                                 gate_scale)  # [BT, BK]
    b_v = load_rows(v + head_offset(i_bh, H, v_sb, V), o_t, m_t, o_v, m_v, v_st)  # [BT, BV]
    b_glast = tl.sum(b_g, axis=0)  # [BK]
    b_d = mma(tl.trans(b_k * decay_to_end(b_g)), b_v, PREC)
    p_h = h + (i_bh.to(tl.int64) * (NT + 1) + i_c + 1) * K * V
    store_state(p_h + o_k[:, None] * V + o_v[None, :], b_d, m_k[:, None] & m_v[None, :])
    first_v_tile = tl.program_id(2) < (K + BK - 1) // BK  # gl once per K lane
    tl.store(gl + (i_bh.to(tl.int64) * NT + i_c) * K + o_k, b_glast, mask=m_k & first_v_tile)


@triton.jit
def chunk_gate_cumsum(p_g, g_st, i_c, T, o_t, m_t, o_k, m_k, BT: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr,
                      gate_scale):
    """What every chunk-parallel pass reads first, to choose between the chunk-wide path and the
    walk: the raw g tile of chunk c's rows o_t and K lanes o_k, its gate cumsum [BT, BK] and its gate
    total at the chunk's last token [BK]."""
    b_graw, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)
    b_gc = tl.cumsum(b_g, axis=0)
    return b_graw, b_gc, gate_total_at_last_token(b_gc, i_c * BT, T, BT)


@triton.jit
def load_gate_cumsum(p_gc, i_c, T, m_t, o_k, m_k, K: tl.constexpr, BT: tl.constexpr):
    """chunk_gate_cumsum's cumsum [BT, BK] and gate total [BK] of chunk c, read from a [T, K] fp32 gate
    cumsum (state_walk.gate_cumsum_kernel: positions in scan order, restarting every BT): the total is
    the cumsum at the chunk's last position in the sequence, as gate_total_at_last_token reads it, and
    positions past the sequence hold it, as they do in chunk_gate_cumsum (their gates are 0)."""
    o_i = i_c * BT + tl.arange(0, BT)
    b_glast = cumsum_at_chunk_end(p_gc + o_k, i_c, T, m_k, K, BT)
    b_gc = tl.load(p_gc + o_i[:, None] * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
    return tl.where(m_t[:, None], b_gc, b_glast[None, :]), b_glast


@triton.jit
def cumsum_at_chunk_end(p_gck, i_c, T, m_k, K: tl.constexpr, BT: tl.constexpr):
    """[BK] gate total of chunk c: a [T, K] fp32 gate cumsum (state_walk.gate_cumsum_kernel; p_gck
    already at the K lanes) at the chunk's last position in the sequence, so that the decay of that
    token, exp(total - its cumsum), is exactly 1."""
    return tl.load(p_gck + (tl.minimum(i_c * BT + BT, T) - 1) * K, mask=m_k, other=0.0)


@triton.jit
def gla_fwd_output_kernel(
    q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, g, g_sb, g_st, gc, h, o, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BI: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
    USE_GC: tl.constexpr,
):
    """o of chunk c ([B, T, H, V], contiguous) from the state entering it. One program per chunk and
    BV columns of V; BK >= K, as the scores q k^T sum over all of K. The chunk-wide sums run over K
    in steps of BI columns (reading the gate cumsum gc [B*H, T, K] with USE_GC, else forming it from
    g), and with them the chunk's gate range; a chunk whose gates span less than
    CHUNK_GATE_RANGE keeps them, any other walks its sub-chunks instead (output_walk)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    p_q, p_k = q + head_offset(i_bh, H, q_sb, K), k + head_offset(i_bh, H, k_sb, K)
    p_v, p_g = v + head_offset(i_bh, H, v_sb, V), g + head_offset(i_bh, H, g_sb, K)
    p_o = o + head_offset(i_bh, H, T * H * V, V)
    slot = i_bh.to(tl.int64) * (NT + 1) + i_c
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    p_gc = gc + i_bh.to(tl.int64) * T * K
    b_A, b_o, b_range = sums_over_k(p_q, q_st, p_k, k_st, p_g, g_st, p_gc, h, slot, gate_scale, T, i_c, o_t,
                                    m_t, o_v, m_v, K, V, BT, BV, BI, GATE_LOGSIGMOID, PREC, False, USE_GC)
    if chunk_wide_ok(b_range, PREC):
        m_causal, _, _ = sub_chunk_masks(BT)
        b_v = load_rows(p_v, o_t, m_t, o_v, m_v, v_st)  # [BT, BV]
        b_o += mma(tl.where(m_causal, b_A, 0.0), b_v, PREC)
        store_rows(p_o, b_o * scale, o_t, m_t, o_v, m_v, H * V)
    else:
        b_s = load_state(h, slot, o_k, o_v, m_k, m_v, K, V)  # [BK, BV]
        output_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_o, b_s, scale, gate_scale, T, E, i_c,
                    o_k, o_v, m_k, m_v, H, V, BT, BC, REVERSE, TRANSPOSE, GATE_LOGSIGMOID, PREC)


@triton.jit
def sums_over_k(p_q, q_st, p_k, k_st, p_g, g_st, p_gc, p_state, slot, gate_scale, T, i_c, o_t, m_t, o_v, m_v,
                K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, BI: tl.constexpr,
                GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr, KEYS: tl.constexpr, USE_GC: tl.constexpr):
    """The chunk-wide sums over K of the output pass (KEYS False) and the dv-only pass (KEYS True), BI
    columns at a time: the unmasked scores q k^T with the gates' decay (factored_scores, [BT, BT]),
    (q exp(G)) S or, with KEYS, (k exp(G_last - G)) dS ([BT, BV], S or dS: slot of the fp32 states
    p_state), and the chunk's gate range over all the K lanes (chunk_wide_ok decides with it). With
    USE_GC the gate cumsum G is read from p_gc (this (batch, head)'s [T, K] rows of the state walk's
    state_walk.gate_cumsum_kernel) instead of formed from g."""
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_x = tl.zeros([BT, BV], dtype=tl.float32)
    b_range = tl.full([], 0.0, dtype=tl.float32)
    for i_b in range((K + BI - 1) // BI):
        o_kb = i_b * BI + tl.arange(0, BI)
        m_kb = o_kb < K
        if USE_GC:
            b_gc, b_glast = load_gate_cumsum(p_gc, i_c, T, m_t, o_kb, m_kb, K, BT)
        else:
            _, b_gc, b_glast = chunk_gate_cumsum(p_g, g_st, i_c, T, o_t, m_t, o_kb, m_kb, BT, GATE_LOGSIGMOID,
                                                 gate_scale)
        b_range = tl.maximum(b_range, gate_range(b_gc, b_glast, BT))
        b_q = load_rows(p_q, o_t, m_t, o_kb, m_kb, q_st)  # [BT, BI]
        b_k = load_rows(p_k, o_t, m_t, o_kb, m_kb, k_st)
        b_A += factored_scores(b_q, b_k, b_gc, BT, PREC)
        if KEYS:
            b_y = b_k * tl.exp(b_glast[None, :] - b_gc)
        else:
            b_y = b_q * tl.exp(b_gc)
        b_x += mma(b_y, load_state(p_state, slot, o_kb, o_v, m_kb, m_v, K, V), PREC)
    return b_A, b_x, b_range


@triton.jit
def output_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_o, b_s, scale, gate_scale, T, E, i_c,
                o_k, o_v, m_k, m_v, H: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr,
                PREC: tl.constexpr):
    """gla_fwd_output_kernel's chunk as BT / BC sub-chunks in order, carrying the state b_s across
    them; each sub-chunk takes the factored or the exact product (intra.py)."""
    m_causal, _, _ = sub_chunk_masks(BC)
    for i_s in range(BT // BC):
        o_t, m_t = scan_rows(i_c * BT + i_s * BC, T, E, BC, REVERSE, TRANSPOSE)
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)  # [BC, BK]
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)  # [BC, BK]
        b_graw, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)  # [BC, BK]
        b_v = load_rows(p_v, o_t, m_t, o_v, m_v, v_st)  # [BC, BV]
        b_gc = tl.cumsum(b_g, axis=0)
        b_glast = gate_total_at_last_token(b_gc, i_c * BT + i_s * BC, T, BC)
        fast = fast_path_ok(b_gc, b_glast, BC, SAFE_GATE_RANGE)
        b_A = decayed_scores(b_q, b_k, b_gc, m_causal, fast, BC, PREC)  # [BC, BC]
        b_o = mma(b_q * tl.exp(b_gc), b_s, PREC)
        b_o += mma(b_A, b_v, PREC)
        store_rows(p_o, b_o * scale, o_t, m_t, o_v, m_v, H * V)
        b_kd = b_k * tl.exp(b_glast[None, :] - b_gc)
        b_s = b_s * tl.exp(b_glast)[:, None] + mma(tl.trans(b_kd), b_v, PREC)
