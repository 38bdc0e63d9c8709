"""Triton backward of chunked GLA: a reverse state-gradient pass, then a chunk-parallel pass.

* ``gla_bwd_local_state_kernel`` (one program per chunk) and the reverse ``chunk_state_scan_kernel``
  (state_scan.py) give dh[c + 1], the gradient of the state after chunk c from later tokens (dh[NT] = d final
  state), and dh[0] = d initial state.
* ``gla_bwd_dq_kernel`` and then ``gla_bwd_dkv_kernel`` run one program per (chunk, b, h): a
  forward walk over the sub-chunks (which needs the states S) gives dq; a backward walk (which
  needs the state gradients dS) gives dk, dv and dg. A chunk whose gates span less than
  CHUNK_GATE_RANGE skips the walks (one block of dots). When one state tile covers the head,
  ``gla_bwd_fused_kernel`` does both passes' work in one program (GLAConfig.fused_backward_max_k).

dg without a post-pass: g_t enters only S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, so
dg_t = rowsum(S_{t-1} * G_t), G_t the gradient reaching S_{t-1} through S_t. Every term of it
pairs a token before t with one at or after t (or a state), decayed across t. The textbook form,
the reverse cumsum of q*dq - k*dk, is the same sum but subtracts O(1) terms that cancel to
~e^-20 when gates are -20; the chunk kernel sums the decayed terms instead (see its comments).
"""

import triton
import triton.language as tl

from .chunk_fwd import (
    chunk_gate_cumsum,
    head_offset,
    lanes,
    load_log_gates,
    load_rows,
    load_state,
    scan_rows,
    store_rows,
    store_state,
    sums_over_k,
)
from .intra import (
    SAFE_GATE_RANGE,
    chunk_wide_ok,
    decayed_cols,
    decayed_rows,
    decayed_scores,
    exclusive_cumsum,
    factored_cols,
    factored_rows,
    factored_scores,
    fast_path_ok,
    gate_range,
    gate_total_at_last_token,
    mma,
    sub_chunk_masks,
)


@triton.jit
def gla_bwd_local_state_kernel(
    q, q_sb, q_st, g, g_sb, g_st, do, dh, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
):
    """Chunk c's own contribution to the gradient of the state entering it,
    scale * sum_i (q_i exp(G_i))^T do_i, into dh[c]. One program per chunk and [BK, BV] tile of
    the state; do is contiguous."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    b_q = load_rows(q + head_offset(i_bh, H, q_sb, K), o_t, m_t, o_k, m_k, q_st)  # [BT, BK]
    b_graw, b_g = load_log_gates(g + head_offset(i_bh, H, g_sb, K), o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID,
                                 gate_scale)  # [BT, BK]
    b_do = load_rows(do + head_offset(i_bh, H, T * H * V, V), o_t, m_t, o_v, m_v, H * V)  # [BT, BV]
    b_qd = b_q * tl.exp(tl.cumsum(b_g, axis=0)) * scale
    b_d = mma(tl.trans(b_qd), b_do, PREC)  # [BK, BV]
    p_dh = dh + (i_bh.to(tl.int64) * (NT + 1) + i_c) * K * V
    store_state(p_dh + o_k[:, None] * V + o_v[None, :], b_d, m_k[:, None] & m_v[None, :])


@triton.jit
def gla_bwd_dq_kernel(
    q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, g, g_sb, g_st, h, do, dh, gl, dq, dq_sb, dq_st,
    dg_work, ptot, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BI: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
):
    """dq of chunk c, and W (the first part of dg) into dg_work, sum_t q_t dq_off_t into ptot.
    do and dg_work are contiguous ([B, T, H, V] and [B, T, H, K]). One program per chunk and BK
    lanes of K; BV >= V, as dA = do v^T sums over all of V. A chunk whose gates span less than
    CHUNK_GATE_RANGE is one block of dots, its sums over V taken BI columns at a time; any other walks
    its sub-chunks (dq_walk).

    dg_t is a sum of terms that each carry the decay between two tokens on either side of t;
    forming it as the reverse cumsum of q*dq - k*dk instead cancels O(1) terms down to e^-20 with
    gates of -20. So:
    * dq_off leaves out the i == j term (equal in q*dq and k*dk);
    * "ext" is dg's share from later chunks, rowsum(S_{t-1} * exp(G_end - G_{t-1}) * dh_end),
      summed here from decayed terms rather than recovered as a difference later.
    W_t = ext_t - sum_{s<t} q_s dq_off_s is parked in the fp32 dg_work for the dk/dv kernel
    (W is up to chunk-size times larger than dg: parked in bf16 it cost 1e-2 relative error)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    p_q, p_k = q + head_offset(i_bh, H, q_sb, K), k + head_offset(i_bh, H, k_sb, K)
    p_v, p_g = v + head_offset(i_bh, H, v_sb, V), g + head_offset(i_bh, H, g_sb, K)
    p_do, p_dq = do + head_offset(i_bh, H, T * H * V, V), dq + head_offset(i_bh, H, dq_sb, K)
    p_w = dg_work + head_offset(i_bh, H, T * H * K, K)
    slot = i_bh.to(tl.int64) * (NT + 1) + i_c
    p_chunk_k = (i_bh.to(tl.int64) * NT + i_c) * K + o_k
    b_gtot = tl.load(gl + p_chunk_k, mask=m_k, other=0.0)  # [BK] sum of the chunk's gates
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    b_graw, b_gc, b_glast = chunk_gate_cumsum(p_g, g_st, i_c, T, o_t, m_t, o_k, m_k, BT, GATE_LOGSIGMOID,
                                              gate_scale)
    if chunk_wide_ok(gate_range(b_gc, b_glast, BT), PREC):
        # the sums over V, BI columns at a time
        b_dA, b_dos, b_vdh, b_sdh = sums_over_v(p_v, v_st, p_do, h, dh, slot, o_t, m_t, o_k, m_k, None, None,
                                                None, None, H, K, V, BT, BK, BI, PREC, False)
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)  # [BT, BK]
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)
        _, m_strict, m_diag = sub_chunk_masks(BT)
        b_dA = b_dA * scale
        b_dA_diag = tl.sum(tl.where(m_diag, b_dA, 0.0), axis=1)  # [BT]
        b_dq = factored_rows(tl.where(m_strict, b_dA, 0.0), b_k, b_gc, BT, PREC)
        b_dq += b_dos * tl.exp(b_gc) * scale
        store_rows(p_dq, b_dq + b_dA_diag[:, None] * b_k, o_t, m_t, o_k, m_k, dq_st)
        b_u = b_vdh * b_k * tl.exp(b_gtot[None, :] - b_gc)  # [BT, BK]
        b_p = b_q * b_dq
        b_w = tl.exp(b_gtot) * b_sdh + exclusive_cumsum(b_u - b_p, BT, PREC)
        store_rows(p_w, b_w, o_t, m_t, o_k, m_k, H * K)
        tl.store(ptot + p_chunk_k, tl.sum(b_p, axis=0), mask=m_k)
    else:
        b_dh_end = load_state(dh, slot + 1, o_k, o_v, m_k, m_v, K, V)  # [BK, BV] d state after the chunk
        b_s = load_state(h, slot, o_k, o_v, m_k, m_v, K, V)  # [BK, BV] state entering the chunk
        b_ext = tl.exp(b_gtot) * tl.sum(b_s * b_dh_end, axis=1)  # [BK]
        dq_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dq, dq_st, p_w, ptot + p_chunk_k,
                b_s, b_dh_end, b_gtot, b_ext, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
                H, K, V, BT, BC, BK, REVERSE, TRANSPOSE, GATE_LOGSIGMOID, PREC)


@triton.jit
def sums_over_v(p_v, v_st, p_do, h, dh, slot, o_t, m_t, o_k, m_k, p_dv, dv_st, b_At, b_kd,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                BI: tl.constexpr, PREC: tl.constexpr, STORE_DV: tl.constexpr):
    """The chunk-wide sums over V of the dq and the one-pass backward, BI columns at a time: do v^T
    ([BT, BT]), do S^T and v dS_end^T ([BT, BK]) and rowsum(S * dS_end) ([BK]), with S the state
    entering the chunk (h[slot]) and dS_end the gradient of the one after it (dh[slot + 1]). With
    STORE_DV, dv = b_At do + b_kd dS_end is stored BI columns at a time as they pass (b_At: the
    scaled, masked scores transposed [BT, BT]; b_kd: k decayed to the chunk's end [BT, BK])."""
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)
    b_dos = tl.zeros([BT, BK], dtype=tl.float32)
    b_vdh = tl.zeros([BT, BK], dtype=tl.float32)
    b_sdh = tl.zeros([BK], dtype=tl.float32)
    for i_b in range((V + BI - 1) // BI):
        o_vb = i_b * BI + tl.arange(0, BI)
        m_vb = o_vb < V
        b_v = load_rows(p_v, o_t, m_t, o_vb, m_vb, v_st)  # [BT, BI]
        b_do = load_rows(p_do, o_t, m_t, o_vb, m_vb, H * V)
        b_s = load_state(h, slot, o_k, o_vb, m_k, m_vb, K, V)  # [BK, BI]
        b_dh_end = load_state(dh, slot + 1, o_k, o_vb, m_k, m_vb, K, V)
        b_dA += mma(b_do, tl.trans(b_v), PREC)
        b_dos += mma(b_do, tl.trans(b_s), PREC)
        b_vdh += mma(b_v, tl.trans(b_dh_end), PREC)
        b_sdh += tl.sum(b_s * b_dh_end, axis=1)
        if STORE_DV:
            store_rows(p_dv, mma(b_At, b_do, PREC) + mma(b_kd, b_dh_end, PREC), o_t, m_t, o_vb, m_vb, dv_st)
    return b_dA, b_dos, b_vdh, b_sdh


@triton.jit
def dq_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dq, dq_st, p_w, p_ptot,
            b_s, b_dh_end, b_gtot, b_ext, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
            BK: tl.constexpr, REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr,
            GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr):
    """gla_bwd_dq_kernel's chunk as a forward walk over its sub-chunks (it needs the states S)."""
    m_causal, m_strict, m_diag = sub_chunk_masks(BC)
    b_gpre = tl.zeros([BK], dtype=tl.float32)  # gate sum of the earlier sub-chunks of the chunk
    b_ppre = tl.zeros([BK], dtype=tl.float32)  # sum of q*dq_off over the earlier rows of the chunk
    for i_s in range(BT // BC):
        o_t, m_t = scan_rows(i_c * BT + i_s * BC, T, E, BC, REVERSE, TRANSPOSE)
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)  # [BC, BK]
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)
        b_graw, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)
        b_v = load_rows(p_v, o_t, m_t, o_v, m_v, v_st)  # [BC, BV]
        b_do = load_rows(p_do, o_t, m_t, o_v, m_v, H * V)
        b_gc = tl.cumsum(b_g, axis=0)
        b_glast = gate_total_at_last_token(b_gc, i_c * BT + i_s * BC, T, BC)
        b_dA = tl.where(m_causal, mma(b_do, tl.trans(b_v), PREC) * scale, 0.0)
        b_dA_diag = tl.sum(tl.where(m_diag, b_dA, 0.0), axis=1)  # [BC]
        fast = fast_path_ok(b_gc, b_glast, BC, SAFE_GATE_RANGE)
        b_dq = decayed_rows(tl.where(m_strict, b_dA, 0.0), b_k, b_gc, m_strict, fast, BC, PREC)
        b_dq += mma(b_do, tl.trans(b_s), PREC) * tl.exp(b_gc) * scale
        store_rows(p_dq, b_dq + b_dA_diag[:, None] * b_k, o_t, m_t, o_k, m_k, dq_st)
        b_u = mma(b_v, tl.trans(b_dh_end), PREC)  # [BC, BK]
        b_u = b_u * b_k * tl.exp(b_gtot[None, :] - b_gpre[None, :] - b_gc)
        b_p = b_q * b_dq
        b_w = b_ext[None, :] + exclusive_cumsum(b_u, BC, PREC)
        b_w -= b_ppre[None, :] + exclusive_cumsum(b_p, BC, PREC)
        store_rows(p_w, b_w, o_t, m_t, o_k, m_k, H * K)
        b_ext += tl.sum(b_u, axis=0)
        b_ppre += tl.sum(b_p, axis=0)
        b_gpre += b_glast
        b_kd = b_k * tl.exp(b_glast[None, :] - b_gc)
        b_s = b_s * tl.exp(b_glast)[:, None] + mma(tl.trans(b_kd), b_v, PREC)
    tl.store(p_ptot, b_ppre, mask=m_k)


@triton.jit
def gla_bwd_fused_kernel(
    q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, g, g_sb, g_st, h, do, dh, gl, dq, dq_sb, dq_st,
    dk, dk_sb, dk_st, dv, dv_sb, dv_st, dg, dg_work, ptot, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BI: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
):
    """dq, dk, dv and dg of chunk c in one program, when one [BK, BV] tile covers the state (BK >= K,
    BV >= V): the dq and dk/dg/dv passes' work without reading the chunk's inputs twice, forming
    do v^T twice, or parking W in dg_work. A chunk whose gates span less than CHUNK_GATE_RANGE is one
    block of dots, its sums over V taken BI columns at a time, dv stored as they pass; any other runs
    the dq walk and then the dk/dg/dv walk (dq_walk, dkv_walk), which hand W over in dg_work.

    dg on the chunk-wide path: gla_bwd_dkv_kernel's W_t + sum_s p_s - sum_{s>=t} k_s dk_int_s with
    W_t = ext + sum_{s<t} (u_s - p_s) (gla_bwd_dq_kernel; p = q * dq_off) is
    ext + sum_{s<t} u_s + sum_{s>=t} (p_s - k_s dk_int_s): the same terms, one reverse cumsum."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    p_q, p_k = q + head_offset(i_bh, H, q_sb, K), k + head_offset(i_bh, H, k_sb, K)
    p_v, p_g = v + head_offset(i_bh, H, v_sb, V), g + head_offset(i_bh, H, g_sb, K)
    p_do, p_dq = do + head_offset(i_bh, H, T * H * V, V), dq + head_offset(i_bh, H, dq_sb, K)
    p_dk, p_dv = dk + head_offset(i_bh, H, dk_sb, K), dv + head_offset(i_bh, H, dv_sb, V)
    p_dg, p_w = dg + head_offset(i_bh, H, T * H * K, K), dg_work + head_offset(i_bh, H, T * H * K, K)
    slot = i_bh.to(tl.int64) * (NT + 1) + i_c
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    b_graw, b_gc, b_glast = chunk_gate_cumsum(p_g, g_st, i_c, T, o_t, m_t, o_k, m_k, BT, GATE_LOGSIGMOID,
                                              gate_scale)
    if chunk_wide_ok(gate_range(b_gc, b_glast, BT), PREC):
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)  # [BT, BK]
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)
        m_causal, m_strict, m_diag = sub_chunk_masks(BT)
        b_kd = b_k * tl.exp(b_glast[None, :] - b_gc)  # k decayed to the chunk's end
        b_At = tl.trans(tl.where(m_causal, factored_scores(b_q, b_k, b_gc, BT, PREC), 0.0) * scale)
        # the sums over V, BI columns at a time, dv stored as they pass
        b_dA, b_dos, b_vdh, b_sdh = sums_over_v(p_v, v_st, p_do, h, dh, slot, o_t, m_t, o_k, m_k, p_dv, dv_st,
                                                b_At, b_kd, H, K, V, BT, BK, BI, PREC, True)
        b_dA = b_dA * scale
        b_dA_diag = tl.sum(tl.where(m_diag, b_dA, 0.0), axis=1)  # [BT]
        b_dA = tl.where(m_strict, b_dA, 0.0)
        b_dq = factored_rows(b_dA, b_k, b_gc, BT, PREC) + b_dos * tl.exp(b_gc) * scale  # dq_off
        store_rows(p_dq, b_dq + b_dA_diag[:, None] * b_k, o_t, m_t, o_k, m_k, dq_st)
        b_dk_int = factored_cols(b_dA, b_q, b_gc, BT, PREC)
        b_dk_ext = b_vdh * tl.exp(b_glast[None, :] - b_gc)
        store_rows(p_dk, b_dk_int + b_dk_ext + b_dA_diag[:, None] * b_q, o_t, m_t, o_k, m_k, dk_st)
        b_dg = (tl.exp(b_glast) * b_sdh)[None, :] + exclusive_cumsum(b_k * b_dk_ext, BT, PREC)
        b_dg += tl.cumsum(b_q * b_dq - b_k * b_dk_int, axis=0, reverse=True)
        if GATE_LOGSIGMOID:  # d logsigmoid(x) / dx = sigmoid(-x)
            b_dg = b_dg * tl.sigmoid(-b_graw) * gate_scale
        store_rows(p_dg, b_dg, o_t, m_t, o_k, m_k, H * K)
    else:
        b_dh_end = load_state(dh, slot + 1, o_k, o_v, m_k, m_v, K, V)  # [BK, BV]
        b_s = load_state(h, slot, o_k, o_v, m_k, m_v, K, V)
        p_chunk_k = (i_bh.to(tl.int64) * NT + i_c) * K + o_k
        b_gtot = tl.load(gl + p_chunk_k, mask=m_k, other=0.0)  # [BK] sum of the chunk's gates
        b_ext = tl.exp(b_gtot) * tl.sum(b_s * b_dh_end, axis=1)  # [BK]
        dq_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dq, dq_st, p_w, ptot + p_chunk_k,
                b_s, b_dh_end, b_gtot, b_ext, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
                H, K, V, BT, BC, BK, REVERSE, TRANSPOSE, GATE_LOGSIGMOID, PREC)
        tl.debug_barrier()  # W and sum(p) in dg_work and ptot, written by other threads of this program
        b_ptot = tl.load(ptot + p_chunk_k, mask=m_k, other=0.0)
        dkv_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dk, dk_st, p_dv, dv_st, p_dg, p_w,
                 b_dh_end, b_ptot, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
                 H, K, V, BT, BC, BK, BV, REVERSE, TRANSPOSE, GATE_LOGSIGMOID, PREC, True, True)


@triton.jit
def gla_bwd_dkv_kernel(
    q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, g, g_sb, g_st, do, dh, dk, dk_sb, dk_st, dv, dv_sb, dv_st,
    dg, dg_work, ptot, scale, gate_scale, T, NT, E,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BI: tl.constexpr,
    REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr,
    DO_DK: tl.constexpr, DO_DV: tl.constexpr,
):
    """dk and dg (DO_DK) and/or dv (DO_DV) of chunk c, one program per chunk and [BK, BV] tile of
    the state gradient (a separate kernel from dq: together they needed 255 registers per thread
    and spilled 64 on the H200). dk and dg sum over V (dA = do v^T, v dS^T), so DO_DK needs BV >= V;
    dv sums over K (the scores q k^T, (k decayed) dS), so DO_DV needs BK >= K. Both at once when one
    tile covers the state; at wider heads a K-tiled DO_DK launch and a V-tiled DO_DV launch keep
    the [BK, BV] state tiles small. dg and dg_work are contiguous [B, T, H, K]; with
    GATE_LOGSIGMOID, dg is the gradient of the gate's pre-activation.

    dg_t = W_t + sum_s q_s dq_off_s - sum_{s>=t} k_s dk_int_s, where dk_int is dk from this chunk's
    own later tokens only. A chunk whose gates span less than CHUNK_GATE_RANGE is one block of dots
    (dk_wide, dv_wide: their sums BI columns at a time); any other walks its sub-chunks backwards
    (dkv_walk)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    o_k, o_v, m_k, m_v = lanes(K, V, BK, BV)
    p_q, p_k = q + head_offset(i_bh, H, q_sb, K), k + head_offset(i_bh, H, k_sb, K)
    p_v, p_g = v + head_offset(i_bh, H, v_sb, V), g + head_offset(i_bh, H, g_sb, K)
    p_do = do + head_offset(i_bh, H, T * H * V, V)
    p_dk, p_dv = dk + head_offset(i_bh, H, dk_sb, K), dv + head_offset(i_bh, H, dv_sb, V)
    p_dg, p_w = dg + head_offset(i_bh, H, T * H * K, K), dg_work + head_offset(i_bh, H, T * H * K, K)
    slot_end = i_bh.to(tl.int64) * (NT + 1) + i_c + 1  # d state after the chunk
    b_ptot = tl.load(ptot + (i_bh.to(tl.int64) * NT + i_c) * K + o_k, mask=m_k, other=0.0)
    o_t, m_t = scan_rows(i_c * BT, T, E, BT, REVERSE, TRANSPOSE)
    if DO_DK:
        wide = dk_wide(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dk, dk_st, p_dv, dv_st, p_dg, p_w,
                       dh, slot_end, b_ptot, scale, gate_scale, T, i_c, o_t, m_t, o_k, m_k, H, K, V, BT, BK,
                       BI, GATE_LOGSIGMOID, PREC, DO_DV)
    else:
        wide = dv_wide(p_q, q_st, p_k, k_st, p_g, g_st, p_do, p_dv, dv_st, dh, slot_end, scale, gate_scale, T,
                       i_c, o_t, m_t, o_v, m_v, H, K, V, BT, BV, BI, GATE_LOGSIGMOID, PREC)
    if not wide:
        b_dh_end = load_state(dh, slot_end, o_k, o_v, m_k, m_v, K, V)
        dkv_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dk, dk_st, p_dv, dv_st, p_dg, p_w,
                 b_dh_end, b_ptot, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
                 H, K, V, BT, BC, BK, BV, REVERSE, TRANSPOSE, GATE_LOGSIGMOID, PREC, DO_DK, DO_DV)


@triton.jit
def dk_wide(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dk, dk_st, p_dv, dv_st, p_dg, p_w, dh,
            slot_end, b_ptot, scale, gate_scale, T, i_c, o_t, m_t, o_k, m_k,
            H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
            BI: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr, DO_DV: tl.constexpr):
    """gla_bwd_dkv_kernel's DO_DK program (and dv too with DO_DV, BK >= K) as one block of dots if its
    chunk's gates allow (returned): the sums over V run BI columns at a time, and dv is stored BI
    columns at a time as they pass."""
    b_graw, b_gc, b_glast = chunk_gate_cumsum(p_g, g_st, i_c, T, o_t, m_t, o_k, m_k, BT, GATE_LOGSIGMOID,
                                              gate_scale)
    wide = chunk_wide_ok(gate_range(b_gc, b_glast, BT), PREC)
    if wide:
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)  # [BT, BK]
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)
        m_causal, m_strict, m_diag = sub_chunk_masks(BT)
        b_kdecay = tl.exp(b_glast[None, :] - b_gc)  # [BT, BK]
        if DO_DV:
            b_At = tl.trans(tl.where(m_causal, factored_scores(b_q, b_k, b_gc, BT, PREC), 0.0) * scale)
        b_dA = tl.zeros([BT, BT], dtype=tl.float32)  # do v^T
        b_vdh = tl.zeros([BT, BK], dtype=tl.float32)  # v dS_end^T
        for i_b in range((V + BI - 1) // BI):
            o_vb = i_b * BI + tl.arange(0, BI)
            m_vb = o_vb < V
            b_do = load_rows(p_do, o_t, m_t, o_vb, m_vb, H * V)  # [BT, BI]
            b_v = load_rows(p_v, o_t, m_t, o_vb, m_vb, v_st)
            b_dh_end = load_state(dh, slot_end, o_k, o_vb, m_k, m_vb, K, V)  # [BK, BI]
            b_dA += mma(b_do, tl.trans(b_v), PREC)
            b_vdh += mma(b_v, tl.trans(b_dh_end), PREC)
            if DO_DV:
                b_dv = mma(b_At, b_do, PREC) + mma(b_k * b_kdecay, b_dh_end, PREC)
                store_rows(p_dv, b_dv, o_t, m_t, o_vb, m_vb, dv_st)
        b_dA = b_dA * scale
        b_dA_diag = tl.sum(tl.where(m_diag, b_dA, 0.0), axis=1)
        b_dk_int = factored_cols(tl.where(m_strict, b_dA, 0.0), b_q, b_gc, BT, PREC)
        b_dk = b_dk_int + b_vdh * b_kdecay
        store_rows(p_dk, b_dk + b_dA_diag[:, None] * b_q, o_t, m_t, o_k, m_k, dk_st)
        b_w = load_rows(p_w, o_t, m_t, o_k, m_k, H * K)
        b_dg = b_w + b_ptot[None, :] - tl.cumsum(b_k * b_dk_int, axis=0, reverse=True)
        if GATE_LOGSIGMOID:  # d logsigmoid(x) / dx = sigmoid(-x)
            b_dg = b_dg * tl.sigmoid(-b_graw) * gate_scale
        store_rows(p_dg, b_dg, o_t, m_t, o_k, m_k, H * K)
    return wide


@triton.jit
def dv_wide(p_q, q_st, p_k, k_st, p_g, g_st, p_do, p_dv, dv_st, dh, slot_end, scale, gate_scale, T, i_c,
            o_t, m_t, o_v, m_v, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
            BV: tl.constexpr, BI: tl.constexpr, GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr):
    """gla_bwd_dkv_kernel's dv-only program (BK >= K) as one block of dots if its chunk's gates allow
    (returned): the scores and (k decayed) dS_end sum over K BI columns at a time, and with them the
    chunk's gate range, as in the forward output pass."""
    b_A, b_dv, b_range = sums_over_k(p_q, q_st, p_k, k_st, p_g, g_st, p_g, dh, slot_end, gate_scale, T, i_c,
                                     o_t, m_t, o_v, m_v, K, V, BT, BV, BI, GATE_LOGSIGMOID, PREC, True, False)
    wide = chunk_wide_ok(b_range, PREC)
    if wide:
        m_causal, _, _ = sub_chunk_masks(BT)
        b_do = load_rows(p_do, o_t, m_t, o_v, m_v, H * V)  # [BT, BV]
        b_dv += mma(tl.trans(tl.where(m_causal, b_A, 0.0) * scale), b_do, PREC)
        store_rows(p_dv, b_dv, o_t, m_t, o_v, m_v, dv_st)
    return wide


@triton.jit
def dkv_walk(p_q, q_st, p_k, k_st, p_v, v_st, p_g, g_st, p_do, p_dk, dk_st, p_dv, dv_st, p_dg, p_w,
             b_dh_end, b_ptot, scale, gate_scale, T, E, i_c, o_k, o_v, m_k, m_v,
             H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
             BK: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr, TRANSPOSE: tl.constexpr,
             GATE_LOGSIGMOID: tl.constexpr, PREC: tl.constexpr, DO_DK: tl.constexpr, DO_DV: tl.constexpr):
    """gla_bwd_dkv_kernel's chunk as a backward walk over its sub-chunks (it needs the state
    gradients). The gradient of a sub-chunk's end state is ds_int (this chunk's later q, do) + ds_ext."""
    m_causal, m_strict, m_diag = sub_chunk_masks(BC)
    n_sub = BT // BC
    b_ds_int = tl.zeros([BK, BV], dtype=tl.float32)
    b_gsuf = tl.zeros([BK], dtype=tl.float32)  # gate sum of the later sub-chunks of the chunk
    b_ksuf = tl.zeros([BK], dtype=tl.float32)  # sum of k*dk_int over the later rows of the chunk
    for i_r in range(n_sub):
        i_s = n_sub - 1 - i_r
        o_t, m_t = scan_rows(i_c * BT + i_s * BC, T, E, BC, REVERSE, TRANSPOSE)
        b_q = load_rows(p_q, o_t, m_t, o_k, m_k, q_st)
        b_k = load_rows(p_k, o_t, m_t, o_k, m_k, k_st)
        b_graw, b_g = load_log_gates(p_g, o_t, m_t, o_k, m_k, g_st, GATE_LOGSIGMOID, gate_scale)
        b_do = load_rows(p_do, o_t, m_t, o_v, m_v, H * V)
        b_gc = tl.cumsum(b_g, axis=0)
        b_glast = gate_total_at_last_token(b_gc, i_c * BT + i_s * BC, T, BC)
        b_ds_ext = b_dh_end * tl.exp(b_gsuf)[:, None]
        fast = fast_path_ok(b_gc, b_glast, BC, SAFE_GATE_RANGE)
        b_kdecay = tl.exp(b_glast[None, :] - b_gc)  # [BC, BK]
        if DO_DV:
            b_A = decayed_scores(b_q, b_k, b_gc, m_causal, fast, BC, PREC) * scale  # [BC, BC]
            b_dv = mma(tl.trans(b_A), b_do, PREC)
            b_dv += mma(b_k * b_kdecay, b_ds_int + b_ds_ext, PREC)
            store_rows(p_dv, b_dv, o_t, m_t, o_v, m_v, dv_st)
        if DO_DK:
            b_v = load_rows(p_v, o_t, m_t, o_v, m_v, v_st)
            b_w = load_rows(p_w, o_t, m_t, o_k, m_k, H * K)
            b_dA = tl.where(m_causal, mma(b_do, tl.trans(b_v), PREC) * scale, 0.0)
            b_dA_diag = tl.sum(tl.where(m_diag, b_dA, 0.0), axis=1)
            b_dk_int = decayed_cols(tl.where(m_strict, b_dA, 0.0), b_q, b_gc, m_strict, fast, BC, PREC)
            b_dk_int += mma(b_v, tl.trans(b_ds_int), PREC) * b_kdecay
            b_dk = b_dk_int + mma(b_v, tl.trans(b_ds_ext), PREC) * b_kdecay
            store_rows(p_dk, b_dk + b_dA_diag[:, None] * b_q, o_t, m_t, o_k, m_k, dk_st)
            b_kdk = b_k * b_dk_int
            b_dg = b_w + b_ptot[None, :] - (b_ksuf[None, :] + tl.cumsum(b_kdk, axis=0, reverse=True))
            if GATE_LOGSIGMOID:  # d logsigmoid(x) / dx = sigmoid(-x)
                b_dg = b_dg * tl.sigmoid(-b_graw) * gate_scale
            store_rows(p_dg, b_dg, o_t, m_t, o_k, m_k, H * K)
            b_ksuf += tl.sum(b_kdk, axis=0)
        b_gsuf += b_glast
        b_qd = b_q * tl.exp(b_gc) * scale
        b_ds_int = b_ds_int * tl.exp(b_glast)[:, None] + mma(tl.trans(b_qd), b_do, PREC)
