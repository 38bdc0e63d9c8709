"""Triton forward of chunked GLA: a sequential state pass, then a chunk-parallel output pass.

Notation (per batch b and head h): the sequence is cut into chunks of BT tokens (the tuned
chunk size); each chunk is processed in sub-chunks of BC = 16 tokens.

* ``gla_fwd_local_state_kernel`` (one program per chunk) writes each chunk's own contribution to
  the state after it; ``chunk_state_scan_kernel`` then turns these in place into h[c], the state
  entering chunk c (fp32 [K, V]), and h[NT], the final state. Only this scan is sequential, and
  it is a multiply-add per chunk, so long sequences with few (batch, head) pairs stay fast.
* ``gla_fwd_output_kernel`` runs one program per (chunk, b, h). It starts from h[c] and
  walks its sub-chunks, so the intra-chunk attention is only ever a 16 x 16 block:
      o_i = scale * ( (q_i * exp(G_i)) @ S  +  sum_{j<=i} A_ij v_j ),
      A_ij = sum_k q_ik k_jk exp(G_ik - G_jk)
  where G is the fp32 gate cumsum that restarts at each sub-chunk (intra.py says how A is
  formed without overflow for any gate).

Time index: with REVERSE the logical position i reads physical row T-1-i, so a reverse scan
needs no flipped copy. Offsets are int64 so B*T*H*K may exceed 2**31.
"""

import triton
import triton.language as tl

from .intra import decayed_scores, fast_path_ok, sub_chunk_masks


@triton.jit
def chunk_rows(i_start, T, BT: tl.constexpr, REVERSE: tl.constexpr):
    """Physical time rows (int64) and validity mask of logical rows [i_start, i_start + BT)."""
    o_i = i_start + tl.arange(0, BT)
    m_t = o_i < T
    if REVERSE:
        o_t = tl.where(m_t, T - 1 - o_i, 0)
    else:
        o_t = tl.where(m_t, o_i, 0)
    return o_t.to(tl.int64), m_t


@triton.jit
def head_slab(i_bh, T, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """For program (batch, head) i_bh: int64 offsets of its t = 0 row in the [B, T, H, K] and
    [B, T, H, V] tensors, the K and V lane indices, and their masks."""
    i_b, i_h = i_bh // H, i_bh % H
    o_k, o_v = tl.arange(0, BK), tl.arange(0, BV)
    qk_base = (i_b.to(tl.int64) * T * H + i_h) * K
    v_base = (i_b.to(tl.int64) * T * H + i_h) * V
    return qk_base, v_base, o_k, o_v, o_k < K, o_v < V


@triton.jit
def load_state(ptr, slot, o_k, o_v, m_k, m_v, K: tl.constexpr, V: tl.constexpr):
    """The fp32 [BK, BV] tile of state number `slot` (int64) in a [..., K, V] buffer."""
    p = ptr + slot * K * V + o_k[:, None] * V + o_v[None, :]
    return tl.load(p, mask=m_k[:, None] & m_v[None, :], other=0.0)


@triton.jit
def load_rows(ptr, o_t, m_t, o_d, m_d, row_stride):
    """Load a [rows, cols] tile of a [T, H, D] slab as fp32 (zeros outside the masks)."""
    p = ptr + o_t[:, None] * row_stride + o_d[None, :]
    return tl.load(p, mask=m_t[:, None] & m_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def round_to_bf16_nearest_even(x):
    """fp32 -> fp32 holding the nearest-even bf16 value. Triton's interpreter converts to bf16 by
    truncation (twice the rounding error); with the low 16 bits already zero any conversion is exact."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def store_rows(ptr, value, o_t, m_t, o_d, m_d, row_stride):
    """Store a [rows, cols] tile into a [T, H, D] slab, rounding to the slab's dtype."""
    p = ptr + o_t[:, None] * row_stride + o_d[None, :]
    if ptr.dtype.element_ty == tl.bfloat16:
        value = round_to_bf16_nearest_even(value)
    tl.store(p, value.to(ptr.dtype.element_ty), mask=m_t[:, None] & m_d[None, :])


@triton.jit
def gla_fwd_local_state_kernel(
    k, v, g, h, gl, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, PREC: tl.constexpr,
):
    """Chunk c's own contribution to the state after it, D_c = sum_j (k_j exp(G_last - G_j))^T v_j,
    into h[c + 1], and its log decay G_last = sum of its gates into gl[c]. One program per chunk."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    qk_base, v_base, o_k, o_v, m_k, m_v = head_slab(i_bh, T, H, K, V, BK, BV)
    o_t, m_t = chunk_rows(i_c * BT, T, BT, REVERSE)
    b_k = load_rows(k + qk_base, o_t, m_t, o_k, m_k, H * K)  # [BT, BK]
    b_g = load_rows(g + qk_base, o_t, m_t, o_k, m_k, H * K)  # [BT, BK]
    b_v = load_rows(v + v_base, o_t, m_t, o_v, m_v, H * V)  # [BT, BV]
    b_gc = tl.cumsum(b_g, axis=0)
    b_glast = tl.sum(b_g, axis=0)  # [BK]
    b_d = tl.dot(tl.trans(b_k * tl.exp(b_glast[None, :] - b_gc)), b_v, input_precision=PREC)
    p_h = h + (i_bh.to(tl.int64) * (NT + 1) + i_c + 1) * K * V
    tl.store(p_h + o_k[:, None] * V + o_v[None, :], b_d, mask=m_k[:, None] & m_v[None, :])
    tl.store(gl + (i_bh.to(tl.int64) * NT + i_c) * K + o_k, b_glast, mask=m_k)


@triton.jit
def chunk_state_scan_kernel(
    x, gl, x0, NT,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_X0: tl.constexpr, BACKWARD: tl.constexpr,
):
    """Sequential scan over chunks of x [B*H, NT+1, K, V] (fp32), in place, per [BK, BV] tile.

    Forward: x[c+1] holds chunk c's local contribution; afterwards x[c] is the state entering
    chunk c: x[0] = x0 (or 0), x[c+1] = exp(gl[c]) * x[c] + x[c+1].
    Backward: x[c] holds chunk c's local contribution to the gradient of the state before it;
    afterwards x[c+1] is the gradient of the state after chunk c from later tokens:
    x[NT] = x0 (d final state, or 0), x[c] = exp(gl[c]) * x[c+1] + x[c]; x[0] is d initial state.
    The loads do not depend on the running state, so they are prefetched ahead of the chain.
    """
    i_kv, i_bh = tl.program_id(0), tl.program_id(1)
    n_v = tl.cdiv(V, BV)
    o_k = (i_kv // n_v) * BK + tl.arange(0, BK)
    o_v = (i_kv % n_v) * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    p_x = x + i_bh.to(tl.int64) * (NT + 1) * K * V
    p_gl = gl + i_bh.to(tl.int64) * NT * K
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_X0:
        b_s = tl.load(x0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    if BACKWARD:
        tl.store(p_x + NT * K * V + o_kv, b_s, mask=m_kv)
        for i_r in range(NT):
            i_c = NT - 1 - i_r
            b_decay = tl.exp(tl.load(p_gl + i_c * K + o_k, mask=m_k, other=0.0))
            b_s = b_s * b_decay[:, None] + tl.load(p_x + i_c * K * V + o_kv, mask=m_kv, other=0.0)
            tl.store(p_x + i_c * K * V + o_kv, b_s, mask=m_kv)
    else:
        tl.store(p_x + o_kv, b_s, mask=m_kv)
        for i_c in range(NT):
            b_decay = tl.exp(tl.load(p_gl + i_c * K + o_k, mask=m_k, other=0.0))
            b_s = b_s * b_decay[:, None] + tl.load(p_x + (i_c + 1) * K * V + o_kv, mask=m_kv, other=0.0)
            tl.store(p_x + (i_c + 1) * K * V + o_kv, b_s, mask=m_kv)


@triton.jit
def gla_fwd_output_kernel(
    q, k, v, g, h, o, scale, T, NT,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, PREC: tl.constexpr,
):
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    qk_base, v_base, o_k, o_v, m_k, m_v = head_slab(i_bh, T, H, K, V, BK, BV)
    b_s = load_state(h, i_bh.to(tl.int64) * (NT + 1) + i_c, o_k, o_v, m_k, m_v, K, V)  # [BK, BV]

    m_causal, _, _ = sub_chunk_masks(BC)
    for i_s in range(BT // BC):
        o_t, m_t = chunk_rows(i_c * BT + i_s * BC, T, BC, REVERSE)
        b_q = load_rows(q + qk_base, o_t, m_t, o_k, m_k, H * K)  # [BC, BK]
        b_k = load_rows(k + qk_base, o_t, m_t, o_k, m_k, H * K)  # [BC, BK]
        b_g = load_rows(g + qk_base, o_t, m_t, o_k, m_k, H * K)  # [BC, BK]
        b_v = load_rows(v + v_base, o_t, m_t, o_v, m_v, H * V)  # [BC, BV]
        b_gc = tl.cumsum(b_g, axis=0)
        b_glast = tl.sum(b_g, axis=0)
        fast = fast_path_ok(b_gc, b_glast, BC)
        b_A = decayed_scores(b_q, b_k, b_gc, m_causal, fast, BC, PREC)  # [BC, BC]
        b_o = tl.dot(b_q * tl.exp(b_gc), b_s, input_precision=PREC)
        b_o += tl.dot(b_A, b_v, input_precision=PREC)
        store_rows(o + v_base, b_o * scale, o_t, m_t, o_v, m_v, H * V)
        b_kd = b_k * tl.exp(b_glast[None, :] - b_gc)
        b_s = b_s * tl.exp(b_glast)[:, None] + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
