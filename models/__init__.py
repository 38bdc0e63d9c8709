"""Model registry: DiT-*, DiG-*, U-DiG-* and DiS-* by name ("DiG-S/2" ...)."""

import difflib

import torch

from .common import BackendUnavailableError
from .dig import DiG, DiG_models
from .dis import DiS_models
from .dit import DiT, DiT_models

MODELS = {**DiT_models, **DiG_models, **DiS_models}

__all__ = ["MODELS", "BackendUnavailableError", "DiG", "DiT", "count_parameters", "create_model"]


def create_model(name, input_size, **kwargs):
    """Build model `name` for latents of input_size x input_size (32 for 256 px); kwargs go to the factory."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string such as 'DiG-S/2', got {name!r}.")
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model name {name!r}.{hint} Known families: DiT-*, DiG-*, U-DiG-*, DiS-*.")
    return MODELS[name](input_size=input_size, **kwargs)


def count_parameters(name, input_size=32, **kwargs):
    """Number of parameters of model `name`, built on the meta device (nothing is allocated).

    Counts every Parameter, the frozen sin-cos pos-embed included, as DiT's published counts do.
    """
    with torch.device("meta"):
        model = create_model(name, input_size, **kwargs)
    return sum(p.numel() for p in model.parameters())
