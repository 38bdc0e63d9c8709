"""DiG internals on CPU: scan orders, SREM, U-DiG skip pairing, GLA backends inside a block."""

import copy

import pytest
import torch

import kernels.gla
from helpers import perturb_zero_init, rel_err
from kernels import interpreting
from models.dig import DiG

GRID = 4  # tiny models: 8 x 8 latent, patch 2 -> a 4 x 4 token grid
TOKENS = GRID * GRID
WIDTH = 64


def tiny_dig(depth=8, **kwargs):
    """A DiG small enough for CPU tests: D=64, 2 heads (K=16, V=32), 16 tokens."""
    kwargs.setdefault("gla_backend", "torch")
    return DiG(input_size=2 * GRID, patch_size=2, hidden_size=WIDTH, depth=depth, num_heads=2,
               num_classes=10, **kwargs)


def position_tokens(n=2):
    """Tokens whose every channel holds the token's raster index: [n, T, D]."""
    return torch.arange(TOKENS, dtype=torch.float32)[None, :, None].repeat(n, 1, WIDTH)


def scan_order_expected(srem, layer):
    """Raster index at each sequence position that block `layer` sees."""
    raster = torch.arange(TOKENS)
    column_major = raster.view(GRID, GRID).t().reshape(-1)
    if srem == "full":
        return [raster, raster.flip(0), column_major, column_major.flip(0)][layer % 4]
    if srem == "bidirectional":
        return [raster, raster.flip(0)][layer % 2]
    return raster


def record_block_inputs(model):
    """Forward pre-hooks storing, for each block, the raster index read from channel 0 of batch item 0."""
    seen = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: seen.append(args[0][0, :, 0].clone()))
    return seen


@pytest.mark.parametrize("srem", ["full", "bidirectional", "none"])
def test_blocks_see_the_four_scan_orders_and_output_is_raster(srem):
    # At init every block is the identity (adaLN-Zero gates are 0, the SREM conv is the identity),
    # so the tokens a block receives show the scan order directly.
    model = tiny_dig(srem=srem)
    seen = record_block_inputs(model)
    tokens = position_tokens()
    out = model.forward_blocks(tokens, torch.randn(2, WIDTH))
    assert len(seen) == 8
    for layer, order in enumerate(seen):
        assert torch.equal(order.long(), scan_order_expected(srem, layer)), f"block {layer}"
    assert torch.equal(out, tokens), "the last block must hand back raster order"


def test_identity_init_dwconv_is_the_identity_and_default_init_is_not():
    x = torch.randn(2, TOKENS, WIDTH)
    for block in tiny_dig(depth=4).blocks:
        assert torch.equal(block.spatial_conv(x), x)
    for block in tiny_dig(depth=4, dwconv_identity_init=False).blocks:
        assert not torch.allclose(block.spatial_conv(x), x)


def test_dwconv_mixes_spatial_neighbours_in_every_scan_order():
    # A conv that adds the 4 direct neighbours: each token must gain exactly the raster indices of its
    # 4-neighbourhood on the image grid, whatever scan order its block uses.
    model = tiny_dig(depth=4)
    neighbour_kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    raster = torch.arange(TOKENS, dtype=torch.float32).view(GRID, GRID)
    padded = torch.nn.functional.pad(raster, (1, 1, 1, 1))
    up, down, left, right = padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]
    neighbour_sum = (raster + up + down + left + right).flatten()
    for layer, block in enumerate(model.blocks):
        with torch.no_grad():
            block.dw_conv.weight.copy_(neighbour_kernel.expand(WIDTH, 1, 3, 3))
        order = scan_order_expected("full", layer)
        tokens = torch.arange(TOKENS, dtype=torch.float32)[order][None, :, None].repeat(1, 1, WIDTH)
        mixed = block.spatial_conv(tokens)[0, :, 0]
        assert torch.equal(mixed, neighbour_sum[order]), f"block {layer}"


@pytest.mark.parametrize("position, expected_calls", [
    ("after_ffn", ["attn", "mlp", "dw_conv"]),
    ("before_attn", ["dw_conv", "attn", "mlp"]),
    ("between", ["attn", "dw_conv", "mlp"]),
])
def test_srem_position_places_the_conv(position, expected_calls):
    block = tiny_dig(depth=4, srem_position=position).blocks[0]
    calls = []
    for name in expected_calls:
        getattr(block, name).register_forward_hook(lambda module, args, out, name=name: calls.append(name))
    block(torch.randn(2, TOKENS, WIDTH), torch.randn(2, WIDTH))
    assert calls == expected_calls


def skip_pairs_seen(model):
    """Run identity blocks on position tokens; return (x half, skip half) entering every skip_linear."""
    pairs = []
    for block in model.blocks:
        if block.skip_linear is not None:
            with torch.no_grad():  # [I | 0]: keep x, so the tokens keep their raster index downstream
                block.skip_linear.weight.zero_()
                block.skip_linear.weight[:, :WIDTH] = torch.eye(WIDTH)
                block.skip_linear.bias.zero_()
            block.skip_linear.register_forward_pre_hook(
                lambda module, args: pairs.append((args[0][0, :, 0].clone(), args[0][0, :, WIDTH].clone())))
    model.forward_blocks(position_tokens(), torch.randn(2, WIDTH))
    return pairs


def test_udig_skip_is_reordered_to_the_current_scan_order():
    model = tiny_dig(long_skip=True)
    pairs = skip_pairs_seen(model)
    assert len(pairs) == 4  # depth 8: blocks 0-3 push, blocks 4-7 pop
    for x_index, skip_index in pairs:
        assert torch.equal(x_index, skip_index), "token j of x must meet the skip of the same image token"


def test_udig_reference_pairing_without_reordering_mismatches_tokens():
    # The reference code concatenates the skip in the scan order it was saved in. Half of the
    # pairs then join different image tokens: this is what the test above guards against.
    model = tiny_dig(long_skip=True)
    model.skip_reorder_index = torch.arange(TOKENS).repeat(4, 1)  # no reordering
    mismatched = [not torch.equal(x_index, skip_index) for x_index, skip_index in skip_pairs_seen(model)]
    assert mismatched == [False, True, False, True]


def relative_error_against_float64(backend):
    """Relative L2 error of a fp32 tiny DiG on `backend` against the same weights in fp64 on naive."""
    torch.manual_seed(0)
    reference = tiny_dig(depth=4, gla_backend="naive").eval()
    perturb_zero_init(reference)
    x, t, y = torch.randn(2, 4, 2 * GRID, 2 * GRID), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    expected = copy.deepcopy(reference).double()(x.double(), t, y)
    model = tiny_dig(depth=4, gla_backend=backend).eval()
    model.load_state_dict(reference.state_dict())
    out = model(x, t, y)
    assert out.dtype == torch.float32 and not torch.isnan(out).any()
    return rel_err(out, expected)


# fp32 against fp64 through 4 blocks: 2e-7 relative measured for naive and torch; 1e-5 leaves room
# for another summation order (Triton) and still catches any real mistake (>1e-3).
FP32_TOLERANCE = 1e-5


@pytest.mark.parametrize("backend", ["naive", "torch"])
def test_gla_backends_agree_inside_dig_block(backend):
    assert relative_error_against_float64(backend) < FP32_TOLERANCE


@pytest.mark.skipif(not hasattr(kernels.gla, "chunk_gla"), reason="kernels.gla does not export the Triton "
                    "chunk_gla yet; the lead enables this test with it")
@pytest.mark.skipif(not interpreting(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1 "
                    "set before the kernels are imported (tests/test_models_gpu.py covers the GPU)")
def test_triton_gla_backend_agrees_inside_dig_block():
    assert relative_error_against_float64("triton") < FP32_TOLERANCE
