"""Host side of the Triton chunked GLA: launchers, the forward and backward orchestrators, and ``chunk_gla``.

The orchestrators are registered as torch.library custom ops in ``ops.py`` so that torch.compile
and CUDA graphs treat a GLA call as one opaque op; this file only launches kernels.
"""

import torch
import triton

from kernels import interpreting

from .checks import check_gla_inputs
from .chunk_bwd import gla_bwd_dkv_kernel, gla_bwd_dq_kernel, gla_bwd_fused_kernel, gla_bwd_local_state_kernel
from .chunk_fwd import gla_fwd_local_state_kernel, gla_fwd_output_kernel
from .config import GLAConfig, block_sizes, dot_precision, state_dtype, tiles_cover_head, walks
from .scan_order import grid_side, scan_flags
from .state_scan import MAX_GROUP, chunk_state_scan_kernel
from .state_walk import chunk_state_walk_kernel, gate_cumsum_kernel

SUB_CHUNK = 16  # tl.dot needs >= 16 rows; the [16, 16, K] intra-chunk decay tensor stays in registers
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def rows_layout(x: torch.Tensor) -> tuple:
    """(batch stride, token stride) of a [B, T, H, D] tensor whose heads are contiguous in a row."""
    return x.stride(0), x.stride(1)


class Launch:
    """What every kernel launch of one GLA call shares: shapes, tile widths, scan order, gate mode."""

    def __init__(self, q, v, cfg: GLAConfig, reverse: bool, transpose: bool, gate_scale: float | None):
        self.B, self.T, self.H, self.K = q.shape
        self.V = v.shape[-1]
        self.NT = triton.cdiv(self.T, cfg.chunk_size)
        self.E = grid_side(self.T, transpose)
        self.cfg = cfg
        self.gate_scale = 1.0 if gate_scale is None else gate_scale
        self.shape = dict(H=self.H, K=self.K, V=self.V, BT=cfg.chunk_size, REVERSE=reverse,
                          TRANSPOSE=transpose, GATE_LOGSIGMOID=gate_scale is not None,
                          PREC=dot_precision(q.dtype, interpreting(), cfg.dot_operands))
        self.state_dtype = state_dtype(cfg, q.dtype)  # of the stored states h and dh
        self.plan = launch_plan(self.K, self.V, cfg)
        self.walks = walks(cfg, self.T, self.B * self.H, self.K, self.V)  # state walk, or local states + scan

    def tiles(self, step: str) -> tuple:
        """(grid, meta) of one step of the plan: one program per chunk, (batch, head) and state tile
        (chunk_fwd.lanes numbers the tiles)."""
        _, bk, bv, constants = self.plan[step]
        n_tiles = triton.cdiv(self.K, bk) * triton.cdiv(self.V, bv)
        return (self.NT, self.B * self.H, n_tiles), dict(self.shape, BK=bk, BV=bv, **constants)


def launch_plan(K: int, V: int, cfg: GLAConfig) -> dict:
    """step -> (kernel, BK, BV, extra constants) of every launch of a forward and a backward but the
    state scans, in launch order, with the [BK, BV] state tile each takes: the config's tiles, except
    where a kernel sums over all of K (the output's and dv's scores q k^T) or of V (dq's and dk's
    dA = do v^T), and the output pass, which has its own V tile and K step. When a tile covers the
    state, dk, dg and dv share one pass, or (K <= cfg.fused_backward_max_k) dq, dk, dg and dv do. BI:
    the step of the chunk-wide loops over the summed dimension (K for the output and dv-only passes,
    V otherwise)."""
    full_k, full_v = block_sizes(K, V)
    tile_k, tile_v = min(full_k, cfg.chunk_block_k), min(full_v, cfg.chunk_block_v)
    over_k, over_v = dict(BI=min(full_k, cfg.chunk_block_inner)), dict(BI=min(full_v, cfg.chunk_block_inner))
    plan = {"fwd local state": (gla_fwd_local_state_kernel, tile_k, tile_v, {}),
            "fwd output": (gla_fwd_output_kernel, full_k, min(full_v, cfg.output_block_v),
                           dict(BI=min(full_k, cfg.output_block_inner))),
            "bwd local state": (gla_bwd_local_state_kernel, tile_k, tile_v, {}),
            "bwd dq": (gla_bwd_dq_kernel, tile_k, full_v, over_v)}
    covers = tiles_cover_head(cfg, K, V)
    if covers and K <= cfg.fused_backward_max_k:
        del plan["bwd dq"]
        plan["bwd dq dk dg dv"] = (gla_bwd_fused_kernel, full_k, full_v, over_v)
    elif covers:
        plan["bwd dk dg dv"] = (gla_bwd_dkv_kernel, full_k, full_v, dict(DO_DK=True, DO_DV=True, **over_v))
    else:
        plan["bwd dk dg"] = (gla_bwd_dkv_kernel, tile_k, full_v, dict(DO_DK=True, DO_DV=False, **over_v))
        plan["bwd dv"] = (gla_bwd_dkv_kernel, full_k, tile_v, dict(DO_DK=False, DO_DV=True, **over_k))
    return plan


def scan_tiles(NT: int, K: int, V: int, cfg: GLAConfig) -> tuple:
    """(chunks per group, K rows, V columns) of one state-scan program: groups of up to MAX_GROUP
    chunks, and a K tile that widens as the group shrinks so a program keeps ~128 group x K rows."""
    BK, BV = block_sizes(K, V)
    group = min(MAX_GROUP, triton.next_power_of_2(NT))
    return group, min(BK, cfg.state_block_k * (MAX_GROUP // group)), min(cfg.state_block_v, BV)


def launch_state_scan(x, gl, x0, backward, cfg: GLAConfig):
    """In-place scan of the chunk contributions in x [B*H, NT+1, K, V] (see the kernel), one program
    per K x V tile of the state (scan_tiles)."""
    BH, NT1, K, V = x.shape
    group, scan_bk, scan_bv = scan_tiles(NT1 - 1, K, V, cfg)
    grid = (triton.cdiv(K, scan_bk) * triton.cdiv(V, scan_bv), BH)
    chunk_state_scan_kernel[grid](x, gl, x0, NT1 - 1, K=K, V=V, BK=scan_bk, BV=scan_bv, GROUP=group,
                                  USE_X0=x0 is not None, BACKWARD=backward, num_warps=cfg.state_warps,
                                  num_stages=cfg.num_stages)


def launch_state_walk(a, b, g, x, gl, x0, scale, launch: Launch, backward: bool):
    """The state pass as one walk over the chunks (state_walk.py): forward (a, b = k, v) fills the
    states x and gl, backward (a, b = q, do) the state gradients x; the gates' chunk-local cumsum
    first (a [B*H, T, K] fp32 buffer, formed again by the backward rather than kept), then one walk
    program per (batch, head) and state tile of the local-state launches. Returns the cumsum."""
    L = launch
    gc = torch.empty(L.B * L.H, L.T, L.K, device=g.device, dtype=torch.float32)
    scan = dict(H=L.H, K=L.K, BT=L.cfg.chunk_size, REVERSE=L.shape["REVERSE"], TRANSPOSE=L.shape["TRANSPOSE"])
    gate_cumsum_kernel[(L.NT, L.B * L.H)](g, *rows_layout(g), gc, L.gate_scale, L.T, L.E, **scan,
                                          BK=block_sizes(L.K, L.V)[0],
                                          GATE_LOGSIGMOID=L.shape["GATE_LOGSIGMOID"],
                                          num_warps=L.cfg.chunk_warps)
    (_, n_bh, n_tiles), meta = L.tiles("fwd local state")
    del meta["GATE_LOGSIGMOID"]  # the walk reads the gates' cumsum
    chunk_state_walk_kernel[(1, n_bh, n_tiles)](
        a, *rows_layout(a), b, *rows_layout(b), gc, x, gl, x0, scale, L.T, L.NT, L.E, **meta,
        USE_X0=x0 is not None, BACKWARD=backward, num_warps=L.cfg.chunk_warps, num_stages=L.cfg.num_stages)
    return gc


def chunk_gla_fwd(q, k, v, g, scale, h0, launch: Launch):
    """Forward. Returns o [B, T, H, V] (contiguous, v's dtype), the chunk states h [B*H, NT+1, K, V]
    fp32, or bf16 with GLAConfig.bf16_states (h[:, NT] is the final state) and the chunk log decays
    gl [B*H, NT, K] fp32, both kept for the backward. q, k, v, g may be strided (rows_layout); h0 is
    fp32 [B, H, K, V] or None."""
    L, cfg = launch, launch.cfg
    h = torch.empty(L.B * L.H, L.NT + 1, L.K, L.V, device=q.device, dtype=L.state_dtype)
    gl = torch.empty(L.B * L.H, L.NT, L.K, device=q.device, dtype=torch.float32)
    gc = None  # the walk's gate cumsum, for the output pass with cfg.output_gate_cumsum
    if L.walks:
        walk_cumsum = launch_state_walk(k, v, g, h, gl, h0, 1.0, L, backward=False)
        gc = walk_cumsum if cfg.output_gate_cumsum else None
    else:
        grid, meta = L.tiles("fwd local state")
        gla_fwd_local_state_kernel[grid](
            k, *rows_layout(k), v, *rows_layout(v), g, *rows_layout(g), h, gl, L.gate_scale, L.T, L.NT, L.E,
            **meta, num_warps=cfg.chunk_warps)
        launch_state_scan(h, gl, h0, False, cfg)
    # o after the state pass: it can take the walk's gate-cumsum buffer, freed by now unless kept (K=V=128,
    # B*T=131072, H=16: o 0.5 GB, the cumsum 1.1 GB; the forward's peak was ours 3.6-4.1 GB against
    # fla's 3.1 on the H200 with o allocated first, reports/h200-2026-12-03e/kernels.csv)
    o = torch.empty(L.B, L.T, L.H, L.V, device=q.device, dtype=v.dtype)
    grid, meta = L.tiles("fwd output")
    gla_fwd_output_kernel[grid](
        q, *rows_layout(q), k, *rows_layout(k), v, *rows_layout(v), g, *rows_layout(g),
        g if gc is None else gc, h, o, scale, L.gate_scale, L.T, L.NT, L.E, BC=SUB_CHUNK, **meta,
        USE_GC=gc is not None, num_warps=cfg.chunk_warps, num_stages=cfg.num_stages)
    return o, h, gl


def chunk_gla_bwd(q, k, v, g, h, gl, do, dht, scale, launch: Launch, grads=None):
    """Backward. Writes dq, dk, dv (each with its own rows_layout) and dg (contiguous; the gradient of
    the gate pre-activation in gate mode) into `grads` = (dq, dk, dv, dg) when given, else into new
    tensors of the input dtypes. Returns (dq, dk, dv, dg, dh0 fp32 [B, H, K, V]). do: contiguous."""
    L, cfg = launch, launch.cfg
    dh = torch.empty(L.B * L.H, L.NT + 1, L.K, L.V, device=q.device, dtype=L.state_dtype)
    if L.walks:
        launch_state_walk(q, do, g, dh, gl, dht, scale, L, backward=True)
    else:
        grid, meta = L.tiles("bwd local state")
        gla_bwd_local_state_kernel[grid](
            q, *rows_layout(q), g, *rows_layout(g), do, dh, scale, L.gate_scale, L.T, L.NT, L.E,
            **meta, num_warps=cfg.chunk_warps)
        launch_state_scan(dh, gl, dht, True, cfg)
    if grads is None:  # after the state pass, like o in the forward: they can take the walk's cumsum buffer
        grads = (torch.empty(q.shape, device=q.device, dtype=q.dtype),
                 torch.empty(k.shape, device=q.device, dtype=k.dtype),
                 torch.empty(v.shape, device=q.device, dtype=v.dtype),
                 torch.empty(g.shape, device=q.device, dtype=g.dtype))
    dq, dk, dv, dg = grads
    # dg_work parks W (see the dq kernel) in fp32; dg can hold it itself when it is fp32 and has
    # dg_work's contiguous layout.
    contiguous_fp32 = dg.dtype == torch.float32 and dg.is_contiguous()
    dg_work = dg if contiguous_fp32 else torch.empty(dg.shape, device=q.device, dtype=torch.float32)
    ptot = torch.empty_like(gl)
    inputs = (q, *rows_layout(q), k, *rows_layout(k), v, *rows_layout(v), g, *rows_layout(g))
    chunk_args = dict(BC=SUB_CHUNK, num_warps=cfg.chunk_warps, num_stages=cfg.num_stages)
    if "bwd dq dk dg dv" in L.plan:
        grid, meta = L.tiles("bwd dq dk dg dv")
        gla_bwd_fused_kernel[grid](*inputs, h, do, dh, gl, dq, *rows_layout(dq), dk, *rows_layout(dk), dv,
                                   *rows_layout(dv), dg, dg_work, ptot, scale, L.gate_scale, L.T, L.NT, L.E,
                                   **meta, **chunk_args)
        return dq, dk, dv, dg, dh[:, 0].reshape(L.B, L.H, L.K, L.V).float()
    grid, meta = L.tiles("bwd dq")
    gla_bwd_dq_kernel[grid](*inputs, h, do, dh, gl, dq, *rows_layout(dq), dg_work, ptot, scale,
                            L.gate_scale, L.T, L.NT, L.E, **meta, **chunk_args)
    dkv_args = (*inputs, do, dh, dk, *rows_layout(dk), dv, *rows_layout(dv), dg, dg_work, ptot, scale,
                L.gate_scale, L.T, L.NT, L.E)
    for step in ("bwd dk dg dv", "bwd dk dg", "bwd dv"):  # one pass, or K tiles then V tiles
        if step in L.plan:
            grid, meta = L.tiles(step)
            gla_bwd_dkv_kernel[grid](*dkv_args, **meta, **chunk_args)
    dh0 = dh[:, 0].reshape(L.B, L.H, L.K, L.V).float()
    return dq, dk, dv, dg, dh0


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False,
              reverse=False, chunk_size=None, validate=False, scan_order="raster", gate_normalizer=None):
    """Chunked gated linear attention with hand-written Triton kernels (forward and backward).

    Args:
        q, k, g: [B, T, H, K]; v: [B, T, H, V]; fp16, bf16 or fp32, on a CUDA device (or on the
            CPU under TRITON_INTERPRET=1). g <= 0 is the log-space forget gate. Inputs may be views
            with any batch and token strides (column slices of one projection output); each head's
            K (V) values must be contiguous.
        scale: multiplies q S_t; defaults to K ** -0.5.
        initial_state: optional [B, H, K, V] state S_{-1} (kept in fp32 inside).
        output_final_state: also return the fp32 final state [B, H, K, V].
        reverse: scan the order backwards (no flipped copy is made).
        chunk_size: 16, 32, 64 or 128 tokens between stored states; None takes the tuned value
            for this GPU and shape (``python bench.py tune``) or the default.
        validate: also check values (g <= 0, no NaN); costs a device sync. GLA_VALIDATE=1 too.
        scan_order: "raster", "reversed", "column" or "reversed_column" over the sqrt(T) x sqrt(T)
            token grid (kernels/gla/scan_order.py); the tensors stay in raster order.
        gate_normalizer: if given, g holds the gate's pre-activation x and the forget gate is
            logsigmoid(x) / gate_normalizer, computed inside the kernels (DiG: 16); the gradient
            returned for g is then that of x.
    Returns:
        (o [B, T, H, V] in v's dtype, final_state fp32 [B, H, K, V] or None)
    """
    from .ops import gla_autograd

    check_gla_inputs(q, k, v, g, initial_state, scale, chunk_size, validate, allowed_dtypes=TRITON_DTYPES,
                     gate_logits=gate_normalizer is not None)
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(f"chunk_gla runs Triton kernels: q must be on a CUDA device (got {q.device}); "
                         "on the CPU use chunk_gla_torch, or set TRITON_INTERPRET=1 for the interpreter.")
    flip, transpose = scan_flags(scan_order, reverse)
    return gla_autograd(q, k, v, g, scale, initial_state, output_final_state, flip, transpose, chunk_size,
                        gate_normalizer)
