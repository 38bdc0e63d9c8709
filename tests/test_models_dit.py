"""DiT attention backends on CPU: naive (T x T materialised) and PyTorch SDPA agree."""

import copy
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from helpers import perturb_zero_init, rel_err
from models.dit import DiT, naive_attention


def test_naive_attention_matches_sdpa_in_float64():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 16, dtype=torch.float64) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    assert rel_err(naive_attention(q, k, v), expected) < 1e-12


def tiny_dit(attn_backend):
    return DiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10,
               attn_backend=attn_backend).eval()


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_dit_backends_agree_with_float64_naive(backend):
    torch.manual_seed(0)
    reference = tiny_dit("naive")
    perturb_zero_init(reference)  # so that attention shows in the output
    x, t, y = torch.randn(2, 4, 8, 8), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    expected = copy.deepcopy(reference).double()(x.double(), t, y)
    model = tiny_dit(backend)
    model.load_state_dict(reference.state_dict())
    out = model(x, t, y)
    # fp32 against fp64: ~1e-7 from rounding; 1e-5 catches any real difference between the kernels.
    assert rel_err(out, expected) < 1e-5


@pytest.mark.parametrize("package, expected", [
    ("stand-in", "attn=flash via flash_attn 2.8.3 flash_attn_func (FlashAttention-2)"),
    (None, "attn=flash via torch SDPA FLASH_ATTENTION (FlashAttention-2)"),  # `import flash_attn` fails
])
def test_flash_backend_names_which_implementation_runs(monkeypatch, package, expected):
    """The label says whether the flash-attn package or SDPA's FLASH_ATTENTION backend runs (CUDA faked)."""
    if package is not None:
        package = types.ModuleType("flash_attn")
        package.__version__ = "2.8.3"
        package.flash_attn_func = lambda q, k, v: q
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tiny_dit("flash").backend_description == expected
