"""Launch configuration of the Triton chunked GLA and the candidates the tuner tries."""

from dataclasses import asdict, dataclass

import torch

CHUNK_SIZES = (16, 32, 64, 128)


@dataclass(frozen=True)
class GLAConfig:
    chunk_size: int = 64  # tokens between stored states; also the work of one chunk-parallel program
    state_block_v: int = 32  # V columns per program of the sequential state scans (more programs)
    state_warps: int = 4  # warps of the sequential state scans
    chunk_warps: int = 4  # warps of the chunk-parallel kernels (8 was 1.7x slower on the H200)
    num_stages: int = 2  # software-pipelining depth of the loops over chunks and sub-chunks

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULT_CONFIG = GLAConfig()


def dot_precision(dtype: torch.dtype, interpreter: bool) -> str:
    """tl.dot precision: fp32 inputs get exact ("ieee") products; half inputs carry ~4e-3 relative
    error already, so tf32 (~5e-4) costs nothing measurable. The interpreter only knows "ieee"."""
    if interpreter or dtype == torch.float32:
        return "ieee"
    return "tf32"


def chunk_candidates(base: GLAConfig):
    """First tuning stage: chunk size and warps of the chunk-parallel passes."""
    return [GLAConfig(chunk_size=c, state_block_v=base.state_block_v, state_warps=base.state_warps,
                      chunk_warps=w, num_stages=base.num_stages)
            for c in CHUNK_SIZES for w in (2, 4)]


def state_candidates(base: GLAConfig):
    """Second tuning stage: how the sequential state scans split V (more programs for long T)
    and how deep their loads are prefetched."""
    return [GLAConfig(chunk_size=base.chunk_size, state_block_v=bv, state_warps=w,
                      chunk_warps=base.chunk_warps, num_stages=s)
            for bv, w in ((16, 2), (32, 4), (64, 4)) for s in (1, 2, 3)]
