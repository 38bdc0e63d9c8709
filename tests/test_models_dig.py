"""The raster-order, fused DiG (models/dig.py) against the reference formulation (models/dig_reference.py).

Same weights (the reference's state dict, in the one-Linear-per-projection layout, loaded strictly),
float64 on the CPU: the two compute the same function to float64 rounding (measured 2e-16 to 6e-16
relative), for DiG and U-DiG and every Table 3 switch. Then: the backends inside a block, and
torch.compile(fullgraph=True) tracing of every DiG and U-DiG size.
"""

import pytest
import torch

import models
from helpers import rel_err
from kernels import interpreting
from models.dig import DiG, block_scan_orders
from models.dig_reference import ReferenceDiG

GRID = 6  # a 6 x 6 token grid: 12 x 12 latent, patch 2
SWITCHES = [dict(), dict(long_skip=True), dict(srem="bidirectional"), dict(srem="none"),
            dict(srem_position="before_attn"), dict(srem_position="between"),
            dict(dwconv_identity_init=False), dict(long_skip=True, depth=12)]
SWITCH_IDS = [",".join(f"{k}={v}" for k, v in s.items()) or "default" for s in SWITCHES]
FLOAT64_ROUNDING = 1e-13  # outputs, float64 through 8-12 blocks: 2e-16 to 6e-16 measured
# Gradients: back through 8-12 blocks, chunked and sequential scans summing in other orders; the
# smallest ones (early blocks under random weights) measured up to 1.3e-13.
FLOAT64_GRAD_ROUNDING = 1e-11


def tiny(cls, depth=8, **kwargs):
    kwargs.setdefault("gla_backend", "torch")
    return cls(input_size=2 * GRID, patch_size=2, hidden_size=64, depth=depth, num_heads=2, num_classes=10,
               **kwargs)


def randomize(model, seed=1, std=0.05):
    """Perturb every trainable weight (adaLN-Zero and the zero final layer included) so every branch,
    every gate and an asymmetric SREM conv contribute."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def batch(n=2, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 2 * GRID, 2 * GRID, generator=generator, dtype=dtype),
            torch.randint(0, 1000, (n,), generator=generator),
            torch.randint(0, 10, (n,), generator=generator))


@pytest.mark.parametrize("switches", SWITCHES, ids=SWITCH_IDS)
def test_reference_checkpoint_loads_strictly_and_computes_the_same_function(switches):
    reference = randomize(tiny(ReferenceDiG, **switches).double())
    model = tiny(DiG, **switches).double()
    model.load_state_dict(reference.state_dict(), strict=True)
    x, t, y = batch()
    reference.eval(), model.eval()
    out, expected = model(x, t, y), reference(x, t, y)
    assert rel_err(out, expected) < FLOAT64_ROUNDING
    out.square().sum().backward()
    expected.square().sum().backward()
    reference_grads = {name: p.grad for name, p in reference.named_parameters() if p.requires_grad}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert rel_err(p.grad, reference_grad(reference_grads, name)) < FLOAT64_GRAD_ROUNDING, name


def reference_grad(grads, name):
    """The reference model's gradient for parameter `name` of the fused model (in_proj: the
    concatenation of the five projections' gradients; gate_up: gk_proj.1)."""
    prefix, _, field = name.rpartition("in_proj.")
    if field == "weight":
        return torch.cat([grads[f"{prefix}{p}.weight"] for p in ("q_proj", "k_proj", "v_proj", "g_proj",
                                                                    "gk_proj.0")])
    return grads[name.replace("gate_up.", "gk_proj.1.")]


def test_own_state_dict_round_trips():
    model = randomize(tiny(DiG))
    copy = tiny(DiG)
    copy.load_state_dict(model.state_dict(), strict=True)
    assert "blocks.0.attn.in_proj.weight" in model.state_dict()
    x, t, y = batch(dtype=torch.float32)
    assert torch.equal(copy.eval()(x, t, y), model.eval()(x, t, y))


@pytest.mark.parametrize("srem, expected", [
    ("full", ["raster", "reversed", "column", "reversed_column"] * 2),
    ("bidirectional", ["raster", "reversed"] * 4),
    ("none", ["raster"] * 8),
])
def test_blocks_scan_the_paper_orders(srem, expected):
    assert [block.scan_order for block in tiny(DiG, srem=srem).blocks] == expected
    with pytest.raises(ValueError, match="multiple of 4"):
        block_scan_orders(6, "full")


def test_init_gla_projection_blocks_have_their_own_xavier_scale():
    """in_proj holds five projections; each is initialised as its own Linear (gain 2^-2.5), so the
    q block (64/2 rows) has a wider bound than the 64-row v block would if the fused matrix were one."""
    attn = tiny(DiG).blocks[0].attn
    for block, rows in zip(attn.in_proj.weight.split(attn.projection_sizes), attn.projection_sizes):
        bound = 2 ** -2.5 * (6 / (64 + rows)) ** 0.5
        assert block.abs().max() <= bound and block.abs().max() > 0.8 * bound


def against_float64(backend, switches=None):
    """Relative error of a fp32 tiny DiG on `backend` against the same weights in float64 (torch backend)."""
    expected_model = randomize(tiny(DiG, depth=4, **(switches or {})).double()).eval()
    model = tiny(DiG, depth=4, gla_backend=backend, **(switches or {})).eval()
    model.load_state_dict(expected_model.state_dict())
    x, t, y = batch(dtype=torch.float32)
    out = model(x, t, y)
    assert out.dtype == torch.float32
    return rel_err(out, expected_model(x.double(), t, y))


# fp32 against float64 through 4 blocks: 1e-7 measured for naive and torch; 1e-5 leaves room for
# another summation order (Triton) and still catches any real mistake (> 1e-3).
FP32_TOLERANCE = 1e-5


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_gla_backends_agree_inside_dig(backend):
    assert against_float64(backend) < FP32_TOLERANCE


@pytest.mark.skipif(not interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1 "
                    "set before the kernels are imported (tests/test_models_gpu.py covers the GPU)")
@pytest.mark.parametrize("switches", [dict(), dict(long_skip=True, srem_position="before_attn")])
def test_fused_triton_dig_agrees_with_float64(switches):
    """The Triton backend: the fused GLA layer op and the fused glue kernels, every scan order."""
    assert against_float64("triton", switches) < FP32_TOLERANCE


@pytest.mark.skipif(not interpreting(), reason="the fused model's ops run Triton: TRITON_INTERPRET=1 on CPU")
@pytest.mark.parametrize("name", [n for n in models.MODELS if n.startswith(("DiG-", "U-DiG-"))
                                  and n.endswith(("/2", "S/1"))])
def test_every_dig_size_compiles_with_no_graph_break(name):
    """torch.compile(fullgraph=True) raises on any graph break. Traced on the meta device (the ops'
    fake implementations give the shapes; no kernel runs), forward and, through AOTAutograd, backward."""
    with torch.device("meta"):
        model = models.create_model(name, input_size=8, gla_backend="triton", num_classes=10)
        x, t, y = torch.randn(2, 4, 8, 8), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    torch._dynamo.reset()
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x, t, y)
    out.sum().backward()
    assert out.shape == (2, model.out_channels, 8, 8)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
