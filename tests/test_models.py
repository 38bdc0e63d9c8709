"""Registry, parameter counts, shapes, training step and argument errors for every model family (CPU)."""

import sys

import pytest
import torch

import models
from helpers import perturb_zero_init
from models import BackendUnavailableError, count_parameters, create_model
from models.dig import DiG
from models.dit import DiT

# Published counts in millions: the DiT paper (S/2 33.0M ... XL/2 675.1M) and the DiG reference code (its
# models counted: S/2 33.0M, B/2 130.6M, L/2 464.8M, XL/2 675.7M).
PUBLISHED_MILLIONS = {
    "DiT-S/2": 33.0, "DiT-B/2": 130.3, "DiT-L/2": 458.0, "DiT-XL/2": 675.1,
    "DiG-S/2": 33.0, "DiG-B/2": 130.6, "DiG-L/2": 464.8, "DiG-XL/2": 675.7,
}
# 0.5%: the published numbers are rounded to 0.1M and do not agree on whether the frozen sin-cos
# pos-embed (T*D = 0.1M at S, 0.3M at XL) is counted; we count it, as DiT's own train.py does.
COUNT_TOLERANCE = 0.005


def random_batch(n, input_size, num_classes=1000):
    """Fresh random latents, timesteps and labels."""
    return (torch.randn(n, 4, input_size, input_size), torch.randint(0, 1000, (n,)),
            torch.randint(0, num_classes, (n,)))


def test_parameter_counts_match_published():
    rows = []
    for name, published in PUBLISHED_MILLIONS.items():
        counted = count_parameters(name, input_size=32) / 1e6
        rows.append((name, counted, published, counted / published - 1))
    print("\nmodel       counted (M)  published (M)  difference")
    for name, counted, published, diff in rows:
        print(f"{name:<10} {counted:12.2f} {published:14.1f} {diff:+10.2%}")
    for name, counted, published, diff in rows:
        assert abs(diff) < COUNT_TOLERANCE, f"{name}: {counted:.2f}M vs published {published}M"


def test_count_parameters_allocates_nothing():
    with torch.device("meta"):
        model = create_model("DiG-XL/2", 32)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count_parameters("DiG-XL/2") == sum(p.numel() for p in model.parameters())


def test_registry_has_every_family_and_size():
    for family in ("DiT", "DiG", "U-DiG"):
        for size in ("S", "B", "L", "XL"):
            for patch in (2, 4, 8):
                assert f"{family}-{size}/{patch}" in models.MODELS
    assert "U-DiG-S/1" in models.MODELS
    assert count_parameters("U-DiG-S/2") > count_parameters("DiG-S/2")  # the 6 Linear(2D, D) skips


@pytest.mark.parametrize("name, kwargs", [
    ("DiG-S/2", {"gla_backend": "torch"}),
    ("U-DiG-S/2", {"gla_backend": "torch"}),
    ("DiT-S/2", {"attn_backend": "naive"}),
])
def test_forward_backward_at_64px(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, 8, **kwargs)  # 64 px -> 8 x 8 latent -> 16 tokens
    x, t, y = random_batch(2, 8)
    out = model(x, t, y)
    assert out.shape == (2, 8, 8, 8)
    assert torch.equal(out, torch.zeros_like(out)), "adaLN-Zero and the zero final layer give 0 at init"
    perturb_zero_init(model)
    out = model(x, t, y)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    (out - torch.randn_like(out)).square().mean().backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
            assert p.grad.abs().sum() > 0, f"{pname} receives no gradient"


def test_learn_sigma_false_gives_4_channels_and_cfg_shape():
    model = DiT(input_size=8, patch_size=2, hidden_size=64, depth=1, num_heads=2, num_classes=10,
                learn_sigma=False)
    x, t, y = random_batch(2, 8, num_classes=10)
    assert model(x, t, y).shape == (2, 4, 8, 8)
    y_with_null = torch.tensor([3, 10])  # second half: the null class of classifier-free guidance
    assert model.forward_with_cfg(x, t, y_with_null, cfg_scale=4.0).shape == (2, 4, 8, 8)


def test_label_dropout_forced_drop_uses_null_class():
    model = DiG(input_size=8, patch_size=2, hidden_size=64, depth=4, num_heads=2, num_classes=10,
                gla_backend="torch")
    labels = torch.tensor([1, 2, 3])
    dropped = model.y_embedder.token_drop(labels, force_drop_ids=torch.tensor([1, 0, 1]))
    assert dropped.tolist() == [10, 2, 10]


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match="DiG-S/2"):
        create_model("DiG-S2", 32)


@pytest.mark.parametrize("name, kwargs, message", [
    ("DiG-S/2", {"input_size": 9}, "not divisible by the patch size"),
    ("DiT-S/4", {"input_size": 30}, "not divisible by the patch size"),
    ("DiG-S/2", {"input_size": (32, 16)}, "square"),
    ("DiG-S/2", {"input_size": 32, "num_heads": 5}, "num_heads=5"),
    ("DiG-S/2", {"input_size": 32, "num_heads": 4, "hidden_size": 100}, "num_heads=4"),  # K = 100/8
    ("DiT-S/2", {"input_size": 32, "num_heads": 7}, "num_heads=7"),
    ("DiG-S/2", {"input_size": 32, "srem": "quad"}, "srem must be"),
    ("DiG-S/2", {"input_size": 32, "srem_position": "after_attn"}, "srem_position must be"),
    ("DiG-S/2", {"input_size": 32, "srem": "none", "dwconv_identity_init": False}, "only srem='full'"),
    ("DiG-S/2", {"input_size": 32, "depth": 6}, "depth=6"),
    ("DiG-S/2", {"input_size": 32, "gla_backend": "cuda"}, "gla_backend must be"),
    ("DiT-S/2", {"input_size": 32, "attn_backend": "xformers"}, "attn_backend must be"),
])
def test_bad_configs_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message), torch.device("meta"):
        create_model(name, **kwargs)


def test_wrong_input_shape_raises():
    model = DiT(input_size=8, patch_size=2, hidden_size=64, depth=1, num_heads=2, num_classes=10)
    x, t, y = random_batch(2, 16, num_classes=10)
    with pytest.raises(ValueError, match="input_size=8"):
        model(x, t, y)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("name, kwargs", [
    ("DiT-S/2", {"attn_backend": "flash"}),
    ("DiT-S/2", {"attn_backend": "cudnn"}),
])
def test_gpu_only_attention_backends_refuse_cpu(name, kwargs):
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"), torch.device("meta"):
        create_model(name, 32, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("backend", ["triton", "fla"])
def test_triton_gla_backends_refuse_cpu_without_interpreter(backend, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"), torch.device("meta"):
        create_model("DiG-S/2", 32, gla_backend=backend)


def test_fla_backend_without_fla_says_so(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "fla", None)  # `import fla` now fails, as where fla is not installed
    with pytest.raises(BackendUnavailableError, match="flash-linear-attention"), torch.device("meta"):
        create_model("DiG-S/2", 32, gla_backend="fla")


def test_backend_description_names_what_runs():
    with torch.device("meta"):
        assert create_model("DiG-S/2", 32, gla_backend="torch").backend_description == (
            "gla=torch (PyTorch glue, raster tokens)")
        assert create_model("DiT-S/2", 32).backend_description.startswith("attn=naive")
        assert create_model("DiT-S/2", 32, attn_backend="sdpa").backend_description.startswith("attn=sdpa")
