"""Launch configuration of the Triton chunked GLA and the candidates the tuner tries."""

import math
from dataclasses import asdict, astuple, dataclass, fields, replace

import torch
import triton

CHUNK_SIZES = (16, 32, 64, 128)
DOT_OPERANDS = ("fp32", "bf16")  # GLAConfig.dot_operands; the custom ops carry its index here


@dataclass(frozen=True)
class GLAConfig:
    # Defaults: the H200's best with the chunk-wide path (fwd+bwd, bf16, B*T = 131072, 4 warps;
    # reports/h200-2026-12-03/gla_ab.csv): chunk 64 at every head-dim class, K=32 V=64 T=4096 2.02 ms
    # (128: 3.00, 32: 3.12), T=65536 2.29 (128: 3.18); K=V=64 4.31 (128: 12.6); K=V=128 30.7 (128: 90.3,
    # which spills: scripts/gla_registers.py).
    chunk_size: int = 64  # tokens between stored states; also the work of one chunk-parallel program
    state_block_v: int = 32  # V columns per program of the sequential state scans (more programs)
    state_warps: int = 4  # warps of the sequential state scans
    chunk_warps: int = 4  # warps of the chunk-parallel kernels (8 was 1.7x slower on the H200)
    num_stages: int = 3  # loop pipelining depth; `bench.py tune` chose 3 at every DiG shape (5% over 2)
    # K rows per program of the state scans over 16 or more chunks (wider for fewer: chunk.scan_tiles):
    # 8 gives K/8 * V/32 = 8 programs per (batch, head) at K=32, V=64 (DiG-XL/2 at 2048 px: 288 on 132
    # SMs instead of 72)
    state_block_k: int = 8
    # State tiles of the chunk-parallel kernels, which carry a [K, V] fp32 state (or its gradient) in
    # registers: K lanes per program of the dq and dk/dg passes, V lanes per program of the output
    # and dv passes, both for the local-state passes. A tile that covers the state keeps dk, dg and
    # dv in one pass. H200, bf16, fwd+bwd (reports/h200-2026-12-02c): 64 x 64 was the fastest tile
    # in all three head-dim classes. K = V = 128, B4 T2048 H16: 3.34 ms against 5.91 with one
    # [128, 128] tile (5 KB of spills per thread in dk/dv), 3.72 with 32 x 32; narrower tiles and 8
    # warps spill less (ptxas) but were slower everywhere, up to 4.8x (16 x 32 at 8 warps, K=32 V=64).
    chunk_block_k: int = 64
    chunk_block_v: int = 64
    # Head-dim columns per step of the chunk-wide path's loops over a summed dimension (K in the
    # output and dv-only passes, V in the dq and dk/dg passes): the loop accumulates the [BT, BT] scores
    # and the [BT, tile] products step by step, so only [BT, inner] tiles of the inputs are live.
    # H200, bf16, fwd+bwd, B*T = 131072, T = 4096 (reports/h200-2026-12-03b/gla_ab.csv), steps 64 / 32 / 16:
    # K=32 V=64 (one backward pass) 1.57 ms at 32 (1.83 at 16); K=V=64 (two passes) 4.38 / 4.45 / 4.82;
    # K=V=128 40.5 / 30.3 / 33.9 (16 also doubled the error, 3.8e-3 against 2.0e-3).
    chunk_block_inner: int = 32
    # The forward output pass's own V tile and K step (it sums the scores over K, so it takes all of K
    # per program): V columns per program (each program forms the chunk's [BT, BT] scores again, so a
    # wider tile forms them fewer times) and the step of its loop over K.
    output_block_v: int = 64
    output_block_inner: int = 32
    # The backward as one pass giving dq, dk, dg and dv (chunk_bwd.gla_bwd_fused_kernel: the chunk's
    # inputs read once, do v^T formed once, no W parked in fp32 between passes) when one state tile
    # covers the head and K <= this; otherwise the dq pass, then the dk/dg/dv pass(es). 0: never.
    # H200 (same table, step 32): K=32 V=64 T=4096 1.57 ms against 1.99 for two passes (T=65536: 1.84
    # against 2.25); K=V=64 5.16 against 4.45, where the one pass spills 2.2 KB per thread (ptxas).
    fused_backward_max_k: int = 32
    # The state passes walk the chunks in one kernel (state_walk.py: each state written once) when a
    # sequence has at most this many chunks; longer ones, which leave few (batch, head) programs to
    # walk many chunks, take the chunk-parallel local states and the scan. At K=V=128, T=4096 the
    # local states and scans took 9.3 of 41 ms fwd+bwd (reports/h200-2026-12-03b/kernels_split.csv).
    # 0: never. H200, fwd+bwd, walk against scan (reports/h200-2026-12-03c/gla_ab.csv): K=V=64 T=4096
    # 3.99 against 4.45 ms, K=V=128 26.9 against 30.3, K=32 V=64 T=256 1.41 against 1.47 but T=4096
    # (64 chunks) 1.59 against 1.57; longer sequences: the next field.
    state_walk_max_chunks: int = 64
    # ... or when the walk has at least this many programs ((batch, head) pairs x state tiles), which
    # keep the GPU busy however many chunks each walks. 0: never. H200, fwd+bwd, walk against scan
    # (reports/h200-2026-12-03d/gla_ab.csv): K=V=128 T=16384 (512 programs, 256 chunks) 26.9 against
    # 30.4 ms; K=V=64 T=9216 (112 programs) 4.34 against 4.39, T=16384 (64) 5.27 against 4.47; K=32
    # V=64 T=16384 with d05cf5d's [32, 32] walk tiles (96 programs) 2.35 against 1.58. Narrower walk
    # tiles for more programs were slower everywhere (K=32 V=64 T=256 1.41 ms with one [32, 64] tile,
    # 1.57 with [32, 32], 2.00 with [32, 16]): they read the other operand once per tile.
    state_walk_min_programs: int = 256
    # 1: where the state walk runs, the forward output pass reads the walk's gate cumsum ([B*H, T, K]
    # fp32, state_walk.gate_cumsum_kernel; kept until the output pass, 1.1 GB at K=V=128, B*T=131072,
    # H=16) instead of forming it from g on its chunk-wide path; 0: forms it. The walk's own
    # layout of the work cut its time by half or more (reports/h200-2026-12-03e/walk_diag.csv); the
    # output pass was 4.43 ms against fla's 3.81 for A and o at K=V=128 T=4096 (same folder,
    # kernels.csv). 0 until timed.
    output_gate_cumsum: int = 0
    # 1 (bf16 inputs only): the chunk states h and their gradients dh are stored in bf16, as fla stores
    # them, rounded to the nearest even; every state is still carried and summed in fp32 inside the
    # kernels, and the final state and d initial state come back as fp32 (of bf16 values). Half the
    # state traffic: the walk alone at K=V=128, T=4096 took 1.30 ms storing fp32 states and 0.89 with
    # bf16 ones (bf16 dots both; reports/h200-2026-12-03e/walk_diag.csv). 0 until timed with its errors.
    bf16_states: int = 0
    # Operands of the chunk-parallel kernels' tl.dots (the state scans have none): "fp32" at
    # dot_precision's PREC, or "bf16" (bf16 inputs only): rounded to bf16 right before each dot, one
    # bf16 tensor-core MMA with fp32 accumulation. On the H200 13-20% faster fwd+bwd, but errors
    # against float64 up to 7.3e-3 instead of 2.1e-3 (reports/h200-2026-12-02c), hence not the default.
    dot_operands: str = "fp32"

    def __post_init__(self):
        if self.dot_operands not in DOT_OPERANDS:
            raise ValueError(f"dot_operands must be one of {', '.join(DOT_OPERANDS)}, "
                             f"got {self.dot_operands!r}.")

    def as_dict(self) -> dict:
        return asdict(self)

    def op_arguments(self) -> tuple:
        """The fields as ints, for the custom ops' `config: list[int]` (dot_operands as its index in
        DOT_OPERANDS)."""
        return (*astuple(self)[:-1], DOT_OPERANDS.index(self.dot_operands))

    @classmethod
    def from_op_arguments(cls, config) -> "GLAConfig":
        """Inverse of op_arguments; fields left out at the end take their defaults."""
        values = dict(zip((field.name for field in fields(cls)), config))
        if "dot_operands" in values:
            values["dot_operands"] = DOT_OPERANDS[values["dot_operands"]]
        return cls(**values)


DEFAULT_CONFIG = GLAConfig()


def block_sizes(K: int, V: int):
    """Power-of-two tile widths covering K and V (>= 16 for tl.dot)."""
    return max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))


# Where a head-dim class (block_sizes(K, V)) ran faster on the H200 with other fields than GLAConfig()'s
# (reports/h200-2026-12-03d/gla_ab.csv, bf16, B*T = 131072): the output pass's step at K=V=64 (fwd
# 1.26 -> 1.15 ms at T=4096, 1.41 -> 1.30 at 9216, 1.44 -> 1.32 at 16384; fwd+bwd 2-3% less) and its
# V tile at K=V=128 (one [128, 128] tile forms the scores once: fwd 9.13 -> 8.01 at T=4096, 10.3 ->
# 9.15 at 16384; a step of 64 with [128, 64] tiles was slower, 12.7, and 128 close, 8.15).
CLASS_DEFAULTS = {(64, 64): dict(output_block_inner=64), (128, 128): dict(output_block_v=128)}


def default_config(K: int, V: int) -> GLAConfig:
    """The untuned config of a head-dim class: GLAConfig() with CLASS_DEFAULTS' fields."""
    return replace(DEFAULT_CONFIG, **CLASS_DEFAULTS.get(block_sizes(K, V), {}))


def state_dtype(cfg: GLAConfig, dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored chunk states h and their gradients dh: fp32, or bf16 with cfg.bf16_states,
    for bf16 inputs only (fp16 and fp32 inputs would lose more to it than their own rounding)."""
    if not cfg.bf16_states:
        return torch.float32
    if dtype != torch.bfloat16:
        raise ValueError(f"bf16_states=1 needs bf16 inputs, got {dtype}: use bf16_states=0.")
    return torch.bfloat16


def dot_precision(dtype: torch.dtype, interpreter: bool, dot_operands: str = "fp32") -> str:
    """PREC of the kernels' dots (intra.mma): a tl.dot input precision of the fp32 intermediates, or
    "bf16" for bf16 operands. bf16 inputs carry 1.6e-3 relative rounding error already, so tf32
    (2**-11 per operand) is lost in it; fp16's 11-bit mantissa is as fine as tf32's, so with tf32
    the fp16 case of tests/test_gla_triton.py failed its 2x-naive-error bound on the H200: fp16 gets
    tf32x3 (three tf32 products, about fp32 accuracy) and fp32 exact products. bf16 operands round
    to 8 significant bits (at most 2**-8 = 3.9e-3 relative, 1.6e-3 rms: what rounding the bf16
    inputs cost already), so they are refused for fp16 and fp32 inputs, whose dots would lose more
    than their inputs' rounding. The interpreter only knows "ieee" (mma emulates "bf16")."""
    if dot_operands == "bf16":
        if dtype != torch.bfloat16:
            raise ValueError(f"dot_operands='bf16' needs bf16 inputs, got {dtype}: use dot_operands='fp32'.")
        return "bf16"
    if interpreter or dtype == torch.float32:
        return "ieee"
    return "tf32x3" if dtype == torch.float16 else "tf32"


def chunk_candidates(base: GLAConfig):
    """First tuning stage: chunk size and warps of the chunk-parallel passes."""
    return [replace(base, chunk_size=c, chunk_warps=w) for c in CHUNK_SIZES for w in (2, 4)]


def tiles_cover_head(cfg: GLAConfig, K: int, V: int) -> bool:
    """Whether one [chunk_block_k, chunk_block_v] state tile covers the [K, V] head (block_sizes),
    so that a single backward program holds the whole state (chunk.launch_plan)."""
    full_k, full_v = block_sizes(K, V)
    return cfg.chunk_block_k >= full_k and cfg.chunk_block_v >= full_v


def tile_candidates(base: GLAConfig, K: int, V: int):
    """Second tuning stage: the chunk kernels' state tiles (K and V lanes per program), at the
    warps of stage one (8 warps were slower with every tile on the H200). Tiles wider than the head
    are the same launch, so they are tried once."""
    full_k, full_v = block_sizes(K, V)
    tiles = dict.fromkeys((min(bk, full_k), min(bv, full_v))
                          for bk, bv in ((128, 128), (64, 64), (32, 64), (32, 32)))
    return [replace(base, chunk_block_k=bk, chunk_block_v=bv) for bk, bv in tiles]


def inner_candidates(base: GLAConfig, K: int, V: int):
    """Third tuning stage: the chunk-wide loops' step over the summed head dimension (the backward's and
    the dv-only pass's; the output pass has its own). Steps as wide as the head are one launch, so they
    are tried once."""
    widest = max(block_sizes(K, V))
    return [replace(base, chunk_block_inner=b) for b in dict.fromkeys(min(b, widest) for b in (64, 32, 16))]


def output_candidates(base: GLAConfig, K: int, V: int):
    """Fourth tuning stage: the output pass's V tile and K step (only the forward output kernel moves).
    Tiles and steps as wide as the head are one launch, so they are tried once."""
    full_k, full_v = block_sizes(K, V)
    current = (min(base.output_block_v, full_v), min(base.output_block_inner, full_k))
    shapes = dict.fromkeys((min(bv, full_v), min(bi, full_k)) for bv in (64, 128) for bi in (32, 64, 128))
    return [replace(base, output_block_v=bv, output_block_inner=bi)
            for bv, bi in shapes if (bv, bi) != current]


def fusion_candidates(base: GLAConfig, K: int, V: int):
    """Fifth tuning stage: the other choice of one or two backward passes, where a tile covers the
    head (elsewhere both are the same launches)."""
    if not tiles_cover_head(base, K, V):
        return []
    return [replace(base, fused_backward_max_k=0 if K <= base.fused_backward_max_k else block_sizes(K, V)[0])]


def walks(cfg: GLAConfig, T: int, batch_heads: int, K: int, V: int) -> bool:
    """Whether the state passes of a [batch_heads, T] call walk the chunks (state_walk.py) rather than
    take the local states and the scan: few chunks, or enough walk programs (GLAConfig)."""
    tiles = zip((K, V), (cfg.chunk_block_k, cfg.chunk_block_v), block_sizes(K, V))
    programs = batch_heads * math.prod(triton.cdiv(n, min(tile, block)) for n, tile, block in tiles)
    return (triton.cdiv(T, cfg.chunk_size) <= cfg.state_walk_max_chunks
            or 0 < cfg.state_walk_min_programs <= programs)


def walk_candidates(base: GLAConfig, T: int, batch_heads: int, K: int, V: int):
    """Sixth tuning stage: the other choice of state pass at this shape, one walk over the chunks or
    local states and a scan."""
    if walks(base, T, batch_heads, K, V):
        return [replace(base, state_walk_max_chunks=0, state_walk_min_programs=0)]
    return [replace(base, state_walk_max_chunks=triton.cdiv(T, base.chunk_size))]


def state_candidates(base: GLAConfig):
    """Seventh tuning stage: how the state scans split K and V over programs (more programs for few
    (batch, head) pairs) and how deep their loads are prefetched."""
    return [replace(base, state_block_k=bk, state_block_v=bv, state_warps=w, num_stages=s)
            for bk, bv, w in ((8, 32, 4), (16, 32, 4), (8, 64, 4), (16, 16, 4)) for s in (2, 3)]


def dot_candidates(base: GLAConfig, dtype: torch.dtype):
    """Eighth tuning stage, bf16 inputs only: the best config so far with bf16 dot operands. One
    candidate: the dots are in the chunk-parallel passes only, so the state split of stage seven
    still holds; whether bf16 operands move the best chunk size is left to a wider grid."""
    return [replace(base, dot_operands="bf16")] if dtype == torch.bfloat16 else []
