"""The state pass of chunked GLA as one sequential walk over the chunks, for sequences of few chunks.

The default state pass is two kernels: a chunk-parallel one writes each chunk's own contribution
to the state (chunk_fwd.gla_fwd_local_state_kernel, chunk_bwd.gla_bwd_local_state_kernel), then
``chunk_state_scan_kernel`` (state_scan.py) scans them in place: the [K, V] fp32 states are written,
read and written again. Here one program per (batch, head) and [BK, BV] state tile walks the chunks
in order, carrying the state in registers, and writes each state once. Only the chunk loop is
sequential, so it pays where there are few chunks or many (batch, head) pairs: the launcher takes it
when config.walks says so (GLAConfig.state_walk_max_chunks, state_walk_min_programs).

The walk reads the gates as their chunk-local cumsum, formed once by ``gate_cumsum_kernel``
(chunk-parallel): each step of the walk is then loads, an elementwise decay and one dot, with no
scan inside the sequential loop. H200, bf16, B*T = 131072, T = 4096, forward walk (scan inside the
walk -> cumsum pass + walk; .diag prototype, 2026-12-03): K=V=128 4.22 -> 0.60 + 1.51 ms, K=V=64
0.547 -> 0.133 + 0.216, K=32 V=64 0.257 -> 0.064 + 0.147; states equal to 6e-6 relative.
"""

import triton
import triton.language as tl

from .chunk_fwd import (
    cumsum_at_chunk_end,
    head_offset,
    lanes,
    load_log_gates,
    load_rows,
    scan_rows,
    store_state,
)
from .intra import mma


@triton.jit
def gate_cumsum_kernel(g, g_sb, g_st, gc, gate_scale, T, E, H: tl.constexpr, K: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr,
                       GATE_LOGSIGMOID: tl.constexpr):
    """gc [B*H, T, K] fp32: at scan position i of chunk c, the sum of the log forget gates of the
    chunk's positions up to and including i (the cumsum restarts every BT positions). Grid (NT, B*H),
    one [BT, BK >= K] tile per program."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k = tl.arange(0, BK)
    m_k = o_k < K
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    _, b_g = load_log_gates(g + head_offset(i_bh, H, g_sb, K), o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID,
                            gate_scale)
    o_i = i_c * BT + tl.arange(0, BT)
    p_gc = gc + (i_bh.to(tl.int64) * T + o_i[:, None]) * K + o_k[None, :]
    tl.store(p_gc, tl.cumsum(b_g, axis=0), mask=m_t[:, None] & m_k[None, :])


@triton.jit
def load_cols(ptr, o_t, m_t, o_d, m_d, row_stride):
    """Load the [cols, rows] transpose of a [rows, cols] tile of a [T, H, D] slab as fp32: the
    left operand of a dot summing over rows, read as such (no tl.trans of a loaded tile)."""
    p = ptr + o_t[None, :] * row_stride + o_d[:, None]
    return tl.load(p, mask=m_d[:, None] & m_t[None, :], other=0.0).to(tl.float32)


@triton.jit
def chunk_state_walk_kernel(
    a, a_sb, a_st, b, b_sb, b_st, gc, x, gl, x0, scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_X0: tl.constexpr, BACKWARD: tl.constexpr, REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr,
    PREC: tl.constexpr,
):
    """x [B*H, NT+1, K, V] fp32 (or bf16: GLAConfig.bf16_states), every slot written; grid (1, B*H,
    state tiles) (chunk_fwd.lanes); gc the gate cumsum of gate_cumsum_kernel. A chunk's decay is gc
    at its last position in the sequence, G_last, so that token's decay exp(G_last - G_last) is
    exactly 1.

    Forward (a = k, b = v): x[c] is the state entering chunk c, x[0] = x0 (or 0), x[NT] the final
    state; chunk c takes S = exp(G_last) S + sum_j (k_j exp(G_last - G_j))^T v_j. gl[c] = G_last is
    written (the dq pass reads it).
    Backward (a = q, b = do, contiguous): x[c+1] is the gradient of the state after chunk c from
    later tokens, x[NT] = x0 (d final state, or 0); chunk c, last first, takes dS = exp(G_last) dS +
    scale sum_i (q_i exp(G_i))^T do_i, so x[0] is the gradient of the initial state."""
    i_bh = tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    m_kv = m_k[:, None] & m_v[None, :]
    p_a, p_b = a + head_offset(i_bh, H, a_sb, K), b + head_offset(i_bh, H, b_sb, V)
    p_gc = gc + i_bh.to(tl.int64) * T * K + o_k
    p_x = x + i_bh.to(tl.int64) * (NT + 1) * K * V + o_k[:, None] * V + o_v[None, :]
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_X0:
        b_s = tl.load(x0 + i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :], mask=m_kv,
                      other=0.0).to(tl.float32)
    first_v_tile = tl.program_id(2) < (K + BK - 1) // BK  # the forward writes gl once per K lane
    if BACKWARD:
        store_state(p_x + NT * K * V, b_s, m_kv)
    for i_r in range(NT):
        i_c = i_r
        if BACKWARD:
            i_c = NT - 1 - i_r
        else:
            store_state(p_x + i_c * K * V, b_s, m_kv)
        o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
        o_i = i_c * BT + tl.arange(0, BT)
        b_at = load_cols(p_a, o_t, m_t, o_k, m_k, a_st)  # [BK, BT]
        b_gct = tl.load(p_gc[:, None] + o_i[None, :] * K, mask=m_k[:, None] & m_t[None, :], other=0.0)
        b_glast = cumsum_at_chunk_end(p_gc, i_c, T, m_k, K, BT)  # [BK]
        b_b = load_rows(p_b, o_t, m_t, o_v, m_v, b_st)  # [BT, BV]
        if BACKWARD:
            b_at = b_at * tl.exp(b_gct) * scale
        else:
            tl.store(gl + (i_bh.to(tl.int64) * NT + i_c) * K + o_k, b_glast, mask=m_k & first_v_tile)
            b_at = b_at * tl.exp(b_glast[:, None] - b_gct)
        b_s = b_s * tl.exp(b_glast)[:, None] + mma(b_at, b_b, PREC)
        if BACKWARD:
            store_state(p_x + i_c * K * V, b_s, m_kv)  # entering chunk c
    if not BACKWARD:
        store_state(p_x + NT * K * V, b_s, m_kv)
