"""The state pass of chunked GLA as one sequential walk over the chunks, for sequences of few chunks.

The default state pass is two kernels: a chunk-parallel one writes each chunk's own contribution
to the state (chunk_fwd.gla_fwd_local_state_kernel, chunk_bwd.gla_bwd_local_state_kernel), then
``chunk_state_scan_kernel`` (state_scan.py) scans them in place: the [K, V] fp32 states are written,
read and written again. Here one program per (batch, head) and [BK, BV] state tile walks the chunks
in order, carrying the state in registers, and writes each state once. Only the chunk loop is
sequential, so it pays where there are few chunks or many (batch, head) pairs: the launcher takes it
when config.walks says so (GLAConfig.state_walk_max_chunks, state_walk_min_programs).
"""

import triton
import triton.language as tl

from .chunk_fwd import head_offset, lanes, load_log_gates, load_rows, scan_rows
from .intra import decay_to_end, mma


@triton.jit
def chunk_state_walk_kernel(
    a, a_sb, a_st, b, b_sb, b_st, g, g_sb, g_st, x, gl, x0, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, USE_X0: tl.constexpr, BACKWARD: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
):
    """x [B*H, NT+1, K, V] fp32, every slot written; grid (1, B*H, state tiles) (chunk_fwd.lanes). The
    walk steps BS tokens at a time (a divisor of the chunk BT: smaller [BS, BK] and [BS, BV] tiles and
    a shorter cumsum per step) and writes a state every BT tokens.

    Forward (a = k, b = v): x[c] is the state entering chunk c, x[0] = x0 (or 0), x[NT] the final
    state; each step s of BS tokens takes S = exp(sum_s g) S + sum_{j in s} (k_j exp(sum_{i>j in s}
    g_i))^T v_j. gl[c], the sum of chunk c's gates (as the sum of its steps' sums), is written (the
    dq pass reads it).
    Backward (a = q, b = do, contiguous): x[c+1] is the gradient of the state after chunk c from
    later tokens, x[NT] = x0 (d final state, or 0); each step, last first, takes dS = exp(sum_s g) dS
    + scale sum_{i in s} (q_i exp(G_i))^T do_i, G the cumsum within the step, so x[0] is the
    gradient of the initial state. A step's decay is its own gates' sum, as in the forward (gl[c]
    where the step is the whole chunk)."""
    i_bh = tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    m_kv = m_k[:, None] & m_v[None, :]
    p_a, p_b = a + head_offset(i_bh, H, a_sb, K), b + head_offset(i_bh, H, b_sb, V)
    p_g = g + head_offset(i_bh, H, g_sb, K)
    p_x = x + i_bh.to(tl.int64) * (NT + 1) * K * V + o_k[:, None] * V + o_v[None, :]
    p_gl = gl + i_bh.to(tl.int64) * NT * K + o_k
    STEPS: tl.constexpr = BT // BS  # steps per chunk
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_X0:
        b_s = tl.load(x0 + i_bh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    if BACKWARD:
        tl.store(p_x + NT * K * V, b_s, mask=m_kv)
        for i_r in range(NT * STEPS):
            i_s = NT * STEPS - 1 - i_r
            o_t, m_t = scan_rows(i_s * BS, T, E, BS, REVERSE, TRANSPOSE)
            b_q = load_rows(p_a, o_t, m_t, o_k, m_k, a_st)  # [BS, BK]
            _, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)
            b_do = load_rows(p_b, o_t, m_t, o_v, m_v, b_st)  # [BS, BV]
            b_qd = b_q * tl.exp(tl.cumsum(b_g, axis=0)) * scale
            if STEPS == 1:  # the chunk's total from the forward: ptxas spills 104 bytes per thread at
                # K=V=128 with it, 160 with the sum formed here
                b_decay = tl.exp(tl.load(p_gl + i_s * K, mask=m_k, other=0.0))
            else:
                b_decay = tl.exp(tl.sum(b_g, axis=0))
            b_s = b_s * b_decay[:, None] + mma(tl.trans(b_qd), b_do, PREC)
            tl.store(p_x + (i_s // STEPS) * K * V, b_s, mask=m_kv & (i_s % STEPS == 0))  # entering chunk
    else:
        first_v_tile = tl.program_id(2) < (K + BK - 1) // BK  # gl once per K lane
        b_gl = tl.zeros([BK], dtype=tl.float32)
        for i_s in range(NT * STEPS):
            i_c = i_s // STEPS
            tl.store(p_x + i_c * K * V, b_s, mask=m_kv & (i_s % STEPS == 0))
            o_t, m_t = scan_rows(i_s * BS, T, E, BS, REVERSE, TRANSPOSE)
            b_k = load_rows(p_a, o_t, m_t, o_k, m_k, a_st)  # [BS, BK]
            _, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)
            b_v = load_rows(p_b, o_t, m_t, o_v, m_v, b_st)  # [BS, BV]
            b_gsum = tl.sum(b_g, axis=0)  # [BK]
            b_gl = tl.where(i_s % STEPS == 0, b_gsum, b_gl + b_gsum)
            tl.store(p_gl + i_c * K, b_gl, mask=m_k & first_v_tile & (i_s % STEPS == STEPS - 1))
            b_s = b_s * tl.exp(b_gsum)[:, None] + mma(tl.trans(b_k * decay_to_end(b_g)), b_v, PREC)
        tl.store(p_x + NT * K * V, b_s, mask=m_kv)
