"""Public Triton chunked GLA: launchers, the autograd Function and ``chunk_gla``."""

import torch
import triton

from kernels import interpreting

from .checks import check_gla_inputs
from .chunk_bwd import gla_bwd_dkv_kernel, gla_bwd_dq_kernel, gla_bwd_local_state_kernel
from .chunk_fwd import chunk_state_scan_kernel, gla_fwd_local_state_kernel, gla_fwd_output_kernel
from .config import GLAConfig, dot_precision
from .tuning import get_config

SUB_CHUNK = 16  # tl.dot needs >= 16 rows; the [16, 16, K] intra-chunk decay tensor stays in registers
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def block_sizes(K: int, V: int):
    """Power-of-two tile widths covering K and V (>= 16 for tl.dot)."""
    return max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))


def launch_dims(q, v, cfg: GLAConfig):
    """(B, T, H, K, V, NT, BK, BV, dot precision) for a launch."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV = block_sizes(K, V)
    return B, T, H, K, V, triton.cdiv(T, cfg.chunk_size), BK, BV, dot_precision(q.dtype, interpreting())


def launch_state_scan(x, gl, x0, backward, cfg: GLAConfig):
    """In-place scan of the chunk contributions in x [B*H, NT+1, K, V] (see the kernel)."""
    BH, NT1, K, V = x.shape
    BK, BV = block_sizes(K, V)
    scan_bv = min(cfg.state_block_v, BV)
    chunk_state_scan_kernel[(triton.cdiv(V, scan_bv), BH)](
        x, gl, x0, NT1 - 1, K=K, V=V, BK=BK, BV=scan_bv, USE_X0=x0 is not None, BACKWARD=backward,
        num_warps=cfg.state_warps, num_stages=cfg.num_stages)


def launch_fwd_state(k, v, g, h, gl, h0, reverse, cfg: GLAConfig):
    """Fill h [B*H, NT+1, K, V] with the state entering each chunk and the final state, and
    gl [B*H, NT, K] with each chunk's log decay."""
    B, T, H, K, V, NT, BK, BV, prec = launch_dims(k, v, cfg)
    gla_fwd_local_state_kernel[(NT, B * H)](
        k, v, g, h, gl, T, NT, H=H, K=K, V=V, BT=cfg.chunk_size, BK=BK, BV=BV, REVERSE=reverse,
        PREC=prec, num_warps=cfg.chunk_warps)
    launch_state_scan(h, gl, h0, False, cfg)


def launch_fwd_output(q, k, v, g, h, o, scale, reverse, cfg: GLAConfig):
    """Write o [B, T, H, V] from the chunk states h."""
    B, T, H, K, V, NT, BK, BV, prec = launch_dims(q, v, cfg)
    gla_fwd_output_kernel[(NT, B * H)](
        q, k, v, g, h, o, scale, T, NT, H=H, K=K, V=V, BT=cfg.chunk_size, BC=SUB_CHUNK, BK=BK, BV=BV,
        REVERSE=reverse, PREC=prec, num_warps=cfg.chunk_warps, num_stages=cfg.num_stages)


def launch_bwd_state(q, g, do, dh, gl, dht, scale, reverse, cfg: GLAConfig):
    """Fill dh [B*H, NT+1, K, V]: dh[c+1] is the gradient of the state after chunk c from later
    tokens, dh[0] the gradient of the initial state."""
    B, T, H, K, V, NT, BK, BV, prec = launch_dims(q, do, cfg)
    gla_bwd_local_state_kernel[(NT, B * H)](
        q, g, do, dh, scale, T, NT, H=H, K=K, V=V, BT=cfg.chunk_size, BK=BK, BV=BV, REVERSE=reverse,
        PREC=prec, num_warps=cfg.chunk_warps)
    launch_state_scan(dh, gl, dht, True, cfg)


def launch_bwd_chunk(q, k, v, g, h, gl, do, dh, dq, dk, dv, dg, dg_work, ptot, scale, reverse,
                     cfg: GLAConfig):
    """Write dq, dk, dv, dg from the states h and the state gradients dh. dg_work: fp32 scratch of
    g's shape (may be dg itself when dg is fp32); ptot: fp32 scratch [B*H, NT, K]."""
    B, T, H, K, V, NT, BK, BV, prec = launch_dims(q, v, cfg)
    shape = dict(H=H, K=K, V=V, BT=cfg.chunk_size, BC=SUB_CHUNK, BK=BK, BV=BV, REVERSE=reverse, PREC=prec,
                 num_warps=cfg.chunk_warps, num_stages=cfg.num_stages)
    gla_bwd_dq_kernel[(NT, B * H)](q, k, v, g, h, do, dh, gl, dq, dg_work, ptot, scale, T, NT, **shape)
    gla_bwd_dkv_kernel[(NT, B * H)](q, k, v, g, do, dh, dk, dv, dg, dg_work, ptot, scale, T, NT, **shape)


def chunk_gla_fwd(q, k, v, g, scale, h0, reverse, cfg: GLAConfig):
    """Forward. Returns o [B, T, H, V], the chunk states h [B*H, NT+1, K, V] fp32 (h[:, NT] is the
    final state) and the chunk log decays gl [B*H, NT, K] fp32, both kept for the backward."""
    B, T, H, K = q.shape
    NT = triton.cdiv(T, cfg.chunk_size)
    h = torch.empty(B * H, NT + 1, K, v.shape[-1], device=q.device, dtype=torch.float32)
    gl = torch.empty(B * H, NT, K, device=q.device, dtype=torch.float32)
    o = torch.empty_like(v)
    launch_fwd_state(k, v, g, h, gl, h0, reverse, cfg)
    launch_fwd_output(q, k, v, g, h, o, scale, reverse, cfg)
    return o, h, gl


def chunk_gla_bwd(q, k, v, g, h, gl, do, dht, scale, reverse, need_dh0, cfg: GLAConfig):
    """Backward. Returns dq, dk, dv, dg (input dtypes) and dh0 (fp32 [B, H, K, V] or None)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, cfg.chunk_size)
    dh = torch.empty(B * H, NT + 1, K, V, device=q.device, dtype=torch.float32)
    dq, dk, dg = torch.empty_like(q), torch.empty_like(k), torch.empty_like(g)
    dv = torch.empty_like(v)
    launch_bwd_state(q, g, do, dh, gl, dht, scale, reverse, cfg)
    dg_work = dg if dg.dtype == torch.float32 else torch.empty_like(g, dtype=torch.float32)
    ptot = torch.empty_like(gl)
    launch_bwd_chunk(q, k, v, g, h, gl, do, dh, dq, dk, dv, dg, dg_work, ptot, scale, reverse, cfg)
    dh0 = dh[:, 0].reshape(B, H, K, V) if need_dh0 else None
    return dq, dk, dv, dg, dh0


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, scale, h0, output_final_state, reverse, cfg):
        h0_fp32 = None if h0 is None else h0.float().contiguous()
        o, h, gl = chunk_gla_fwd(q, k, v, g, scale, h0_fp32, reverse, cfg)
        ctx.save_for_backward(q, k, v, g, h, gl)
        ctx.scale, ctx.reverse, ctx.cfg = scale, reverse, cfg
        ctx.h0_dtype = None if h0 is None else h0.dtype
        final_state = None
        if output_final_state:
            B, T, H, K = q.shape
            final_state = h[:, -1].reshape(B, H, K, v.shape[-1]).clone()
        return o, final_state

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h, gl = ctx.saved_tensors
        dht = None if dht is None else dht.float().contiguous()
        need_dh0 = ctx.h0_dtype is not None
        dq, dk, dv, dg, dh0 = chunk_gla_bwd(q, k, v, g, h, gl, do.contiguous(), dht, ctx.scale,
                                            ctx.reverse, need_dh0, ctx.cfg)
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return dq, dk, dv, dg, None, dh0, None, None, None


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
              reverse=False, chunk_size=None, validate=False):
    """Chunked gated linear attention with hand-written Triton kernels (forward and backward).

    Args:
        q, k, g: [B, T, H, K]; v: [B, T, H, V]; fp16, bf16 or fp32, on a CUDA device (or on the
            CPU under TRITON_INTERPRET=1). g <= 0 is the log-space forget gate.
        scale: multiplies q S_t; defaults to K ** -0.5.
        initial_state: optional [B, H, K, V] state S_{-1} (kept in fp32 inside).
        output_final_state: also return the fp32 final state [B, H, K, V].
        reverse: scan from t = T-1 down to 0 (no flipped copy is made).
        chunk_size: 16, 32, 64 or 128 tokens between stored states; None takes the tuned value
            for this GPU and shape (``python bench.py tune``) or the default.
        validate: also check values (g <= 0, no NaN); costs a device sync. GLA_VALIDATE=1 too.
    Returns:
        (o [B, T, H, V] in v's dtype, final_state fp32 [B, H, K, V] or None)
    """
    B, T, H, K, V = check_gla_inputs(q, k, v, g, initial_state, scale, chunk_size, validate,
                                     allowed_dtypes=TRITON_DTYPES)
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"chunk_gla runs Triton kernels: q must be on a CUDA device (got {q.device}); "
                         "on the CPU use chunk_gla_torch, or set TRITON_INTERPRET=1 for the interpreter.")
    scale = K ** -0.5 if scale is None else float(scale)
    cfg = get_config(T, K, V, q.dtype, chunk_size=chunk_size, tune_allowed=not interpreting())
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    return ChunkGLAFunction.apply(q, k, v, g, scale, initial_state, output_final_state, reverse, cfg)
