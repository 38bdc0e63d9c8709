"""Gated linear attention: naive recurrence (reference), PyTorch chunked, Triton chunked."""

from .chunk import chunk_gla
from .config import GLAConfig
from .naive import naive_recurrent_gla
from .torch_chunk import chunk_gla_torch
from .tuning import cache_path, get_config, tune

__all__ = ["naive_recurrent_gla", "chunk_gla_torch", "chunk_gla", "GLAConfig", "cache_path", "get_config",
           "tune"]
