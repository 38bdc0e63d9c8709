"""Library input checks named in issue 12: an empty dimension of the GLA inputs and a model name
that is no string are refused with a ValueError that names the argument."""

import pytest
import torch

from kernels.gla import chunk_gla_torch, naive_recurrent_gla
from models import create_model


@pytest.mark.parametrize("fn", [chunk_gla_torch, naive_recurrent_gla], ids=["torch_chunk", "naive"])
@pytest.mark.parametrize("shape, name, message", [
    ((1, 8, 2, 0, 4), "q", "key dimension"),  # K=0 once divided by zero in the default scale
    ((0, 8, 2, 4, 4), "q", "batch"),  # B=0 failed in chunk_gla_torch's reshape
    ((1, 8, 0, 4, 4), "q", "head"),
    ((1, 8, 2, 4, 0), "v", "value dimension"),
])
def test_an_empty_dimension_is_refused(fn, shape, name, message):
    B, T, H, K, V = shape
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = -torch.rand(B, T, H, K)
    with pytest.raises(ValueError, match=rf"^{name} must have .*{message}"):
        fn(q, k, v, g)


@pytest.mark.parametrize("name", [None, 2, ("DiG-S/2",)])
def test_a_model_name_that_is_no_string_is_refused(name):
    with pytest.raises(ValueError, match="model name must be a string"):
        create_model(name, 8)
