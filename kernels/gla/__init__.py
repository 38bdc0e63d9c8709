"""Gated linear attention: naive recurrence (reference), PyTorch chunked, Triton chunked."""

from . import ops  # noqa: F401  registers the dig::chunk_gla_fwd / _bwd torch ops
from .chunk import chunk_gla
from .config import GLAConfig
from .naive import naive_recurrent_gla
from .scan_order import SCAN_ORDERS, scan_index
from .torch_chunk import chunk_gla_torch
from .tuning import cache_path, get_config, tune

__all__ = ["naive_recurrent_gla", "chunk_gla_torch", "chunk_gla", "GLAConfig", "SCAN_ORDERS", "cache_path",
           "get_config", "scan_index", "tune"]
