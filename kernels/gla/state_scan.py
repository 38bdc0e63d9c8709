"""The sequential part of chunked GLA: the scan of per-chunk contributions over the chunks.

The recurrence s_c = a_c * s_{c-1} + u_c (per state element; a_c = exp(gate sum of chunk c) <= 1 per K
row) is associative: applying (a1, u1) and then (a2, u2) is (a1 a2, a2 u1 + u2). So each program
loads GROUP chunks' [BK, BV] contributions at once, scans them with tl.associative_scan (a tree,
log2(16) = 4 dependent steps) and carries one state to the next group, instead of a chain of NT
dependent load-multiply-add-store steps. The products of decays stay <= 1, so no gate can overflow.

Measured on the H200 (bf16, K=32, V=64, forward + backward = both scans per call): 0.219 -> 0.084 ms
at B=4, T=16384, H=6 and 0.227 -> 0.118 ms at B=2, H=18 (DiG-XL/2 at 2048 px), where the chain took
~0.9 us per chunk in only B*H*V/32 = 72 programs. With groups of 16 and 8 K rows per program at
every length, T=256 (2 chunks, B=512) went 0.070 -> 0.803 ms: 14 of 16 group slots masked in 4x the
programs. So the launcher sizes the group to the chunk count and widens the K tile as the group
shrinks (``scan_tiles``), which at 2 chunks is the old kernel's [32, 32] tile again.
"""

import triton
import triton.language as tl

from .chunk_fwd import store_state

# At most 16 chunks per scanned group: [16, 8, 32] fp32 tiles are 32 values per thread at 4 warps, with
# ~5 such tensors live; the launcher keeps GROUP * BK near 16 * 8 for shorter sequences.
MAX_GROUP = 16


@triton.jit
def _then(a1, u1, a2, u2):
    """(a1, u1) followed by (a2, u2): s -> a2 (a1 s + u1) + u2."""
    return a1 * a2, a2 * u1 + u2


@triton.jit
def chunk_state_scan_kernel(
    x, gl, x0, NT,
    K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GROUP: tl.constexpr, USE_X0: tl.constexpr, BACKWARD: tl.constexpr,
):
    """Scan over chunks of x [B*H, NT+1, K, V] (fp32), in place, per [BK, BV] tile of (K, V).

    Forward: x[c+1] holds chunk c's local contribution; afterwards x[c] is the state entering
    chunk c: x[0] = x0 (or 0), x[c+1] = exp(gl[c]) * x[c] + x[c+1].
    Backward: x[c] holds chunk c's local contribution to the gradient of the state before it;
    afterwards x[c+1] is the gradient of the state after chunk c from later tokens:
    x[NT] = x0 (d final state, or 0), x[c] = exp(gl[c]) * x[c+1] + x[c]; x[0] is d initial state.
    """
    i_kv, i_bh = tl.program_id(0), tl.program_id(1)
    n_v = tl.cdiv(V, BV)
    o_k = (i_kv // n_v) * BK + tl.arange(0, BK)
    o_v = (i_kv % n_v) * BV + tl.arange(0, BV)
    o_g = tl.arange(0, GROUP)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    p_x = x + i_bh.to(tl.int64) * (NT + 1) * K * V
    p_gl = gl + i_bh.to(tl.int64) * NT * K
    b_s = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_X0:
        b_s = tl.load(x0 + i_bh.to(tl.int64) * K * V + o_kv, mask=m_kv, other=0.0).to(tl.float32)
    store_state(p_x + (NT * K * V if BACKWARD else 0) + o_kv, b_s, m_kv)
    n_groups = tl.cdiv(NT, GROUP)
    for i_r in range(n_groups):
        i_grp = n_groups - 1 - i_r if BACKWARD else i_r
        o_c = i_grp * GROUP + o_g  # chunk numbers of this group
        m_c = o_c < NT
        # chunk c's contribution sits in slot c (backward) or c + 1 (forward), and so does its result
        slot = (o_c if BACKWARD else o_c + 1).to(tl.int64)
        p_u = p_x + slot[:, None, None] * K * V + o_kv[None, :, :]
        m_u = m_c[:, None, None] & m_kv[None, :, :]
        b_u = tl.load(p_u, mask=m_u, other=0.0).to(tl.float32)  # [GROUP, BK, BV]
        p_a = p_gl + o_c[:, None] * K + o_k[None, :]
        b_a = tl.exp(tl.load(p_a, mask=m_c[:, None] & (o_k < K)[None, :], other=0.0))  # 1 outside: identity
        b_a = tl.broadcast_to(b_a[:, :, None], (GROUP, BK, BV))
        b_A, b_U = tl.associative_scan((b_a, b_u), axis=0, combine_fn=_then, reverse=BACKWARD)
        b_out = b_A * b_s[None, :, :] + b_U
        store_state(p_u, b_out, m_u)
        # the state handed to the next group: the last chunk's (forward) or the first one's (backward)
        last = tl.minimum(NT - i_grp * GROUP, GROUP) - 1
        handed = 0 if BACKWARD else last
        b_s = tl.sum(tl.where((o_g == handed)[:, None, None], b_out, 0.0), axis=0)
