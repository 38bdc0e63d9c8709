"""Launch configuration of the Triton chunked GLA and the candidates the tuner tries."""

from dataclasses import asdict, dataclass, replace

import torch

CHUNK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class GLAConfig:
    # Defaults: the H200's best at every T of the DiG shapes (fwd+bwd, bf16, K=32, V=64, H=6;
    # reports/tuning.csv): chunk 128 took 2.25-3.10 ms for T = 256..65536, chunk 64 2.54-4.23 ms.
    chunk_size: int = 128  # tokens between stored states; also the work of one chunk-parallel program
    state_block_v: int = 32  # V columns per program of the sequential state scans (more programs)
    state_warps: int = 4  # warps of the sequential state scans
    chunk_warps: int = 4  # warps of the chunk-parallel kernels (8 was 1.7x slower on the H200)
    num_stages: int = 3  # loop pipelining depth; `bench.py tune` chose 3 at every DiG shape (5% over 2)
    # K rows per program of the state scans over 16 or more chunks (wider for fewer: chunk.scan_tiles):
    # 8 gives K/8 * V/32 = 8 programs per (batch, head) at K=32, V=64 (DiG-XL/2 at 2048 px: 288 on 132
    # SMs instead of 72)
    state_block_k: int = 8

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_CONFIG = GLAConfig()


def dot_precision(dtype: torch.dtype, interpreter: bool) -> str:
    """tl.dot precision of the fp32 intermediates. bf16 inputs carry 1.6e-3 relative rounding error
    already, so tf32 (2**-11 per operand) is lost in it; fp16's 11-bit mantissa is as fine as tf32's,
    so with tf32 the fp16 case of tests/test_gla_triton.py failed its 2x-naive-error bound on the
    H200: fp16 gets tf32x3 (three tf32 products, about fp32 accuracy) and fp32 exact products.
    The interpreter only knows "ieee"."""
    if interpreter or dtype == torch.float32:
        return "ieee"
    return "tf32x3" if dtype == torch.float16 else "tf32"


def chunk_candidates(base: GLAConfig):
    """First tuning stage: chunk size and warps of the chunk-parallel passes."""
    return [replace(base, chunk_size=c, chunk_warps=w) for c in CHUNK_SIZES for w in (2, 4)]


def state_candidates(base: GLAConfig):
    """Second tuning stage: how the state scans split K and V over programs (more programs for few
    (batch, head) pairs) and how deep their loads are prefetched."""
    return [replace(base, state_block_k=bk, state_block_v=bv, state_warps=w, num_stages=s)
            for bk, bv, w in ((8, 32, 4), (16, 32, 4), (8, 64, 4), (16, 16, 4)) for s in (2, 3)]
