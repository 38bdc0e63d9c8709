"""Flash-DiT on the flash-attn package (GPU only; build it with `bash scripts/build_flash_attn.sh` and put
the printed directory on PYTHONPATH): kernels against float64 attention, the model's label, the error for
a head dim the build lacks, and a fullgraph torch.compile."""

import importlib.util

import pytest
import torch

from helpers import rel_err
from models.dit import DiT, DiT_models, naive_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None,
                       reason="flash_attn is not importable; build it with `bash "
                              "scripts/build_flash_attn.sh` and put the printed directory on PYTHONPATH"),
]


# (batch, heads, tokens, head dim): DiT-S/2 at 256 px, batch 4 (4 x 6 x 4 query blocks fill less than 80% of
# two waves on 132 SMs: the split-KV forward kernel), and DiT-XL's head dim 72 at 1024 tokens (the main
# kernel, on the 96 kernel through its uneven-K path); 300 tokens are no multiple of any block.
SHAPES = [(4, 6, 256, 64), (8, 16, 1024, 72), (2, 3, 300, 64)]


@pytest.mark.parametrize("batch, heads, tokens, head_dim", SHAPES)
def test_flash_attn_func_matches_float64(batch, heads, tokens, head_dim):
    """bf16 flash_attn_func, output and gradients, errs at most 2x as much as bf16 naive attention does
    against float64 (flash-attn's own test rule); [N, T, H, d] layout as DiT calls it."""
    from flash_attn import flash_attn_func

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, tokens, heads, head_dim, device="cuda", generator=gen) for _ in range(3))
    grad_out = torch.randn(batch, tokens, heads, head_dim, device="cuda", generator=gen)

    def run(fn, dtype):
        leaves = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        return [out.detach(), *(x.grad for x in leaves)]

    def naive(q_, k_, v_):  # [N, T, H, d] <-> naive_attention's [N, H, T, d]
        return naive_attention(q_.transpose(1, 2), k_.transpose(1, 2), v_.transpose(1, 2)).transpose(1, 2)

    truth = run(naive, torch.float64)
    for name, flash, bf16, ref in zip(("out", "dq", "dk", "dv"), run(flash_attn_func, torch.bfloat16),
                                      run(naive, torch.bfloat16), truth):
        flash_err, bf16_err = rel_err(flash, ref), rel_err(bf16, ref)
        print(f"{name}: flash_attn {flash_err:.1e}, bf16 naive {bf16_err:.1e}")
        assert flash_err < 2 * bf16_err + 1e-3, name


def test_dit_names_the_package():
    import flash_attn

    model = DiT_models["DiT-S/2"](input_size=32, attn_backend="flash")
    assert model.backend_description == (
        f"attn=flash via flash_attn {flash_attn.__version__} flash_attn_func (FlashAttention-2)")


def test_head_dim_the_build_lacks_raises_a_clear_error():
    """Head dim 128 (width 256, 2 heads): a scripts/build_flash_attn.sh build refuses it by name."""
    model = DiT(input_size=8, hidden_size=256, depth=1, num_heads=2, num_classes=10, attn_backend="flash")
    model = model.cuda()
    x, t = torch.randn(2, 4, 8, 8, device="cuda"), torch.rand(2, device="cuda")
    y = torch.tensor([1, 2], device="cuda")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, t, y)
    except RuntimeError as error:
        assert "build_flash_attn.sh" in str(error) and "128" in str(error), error
    else:
        pytest.skip("this flash-attn build has the head dim 128 kernel (a full build)")


def test_fullgraph_compile_of_flash_dit():
    """torch.compile(fullgraph=True) of DiT-S/2 on flash_attn_func traces (the package's custom ops), and
    its bf16 forward and gradients match eager's."""
    torch.manual_seed(0)
    model = DiT_models["DiT-S/2"](input_size=32, attn_backend="flash").cuda()
    with torch.no_grad():  # random adaLN-Zero and output weights, so that attention shows in the output
        for block in model.blocks:
            block.adaLN_modulation[-1].weight.normal_(std=0.02)
        model.final_layer.linear.weight.normal_(std=0.02)
    x = torch.randn(4, 4, 32, 32, device="cuda")
    t, y = torch.randint(0, 1000, (4,), device="cuda"), torch.randint(0, 1000, (4,), device="cuda")

    def step(fn):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fn(x, t, y)
        out.float().square().mean().backward()
        return out.detach(), model.blocks[0].attn.qkv.weight.grad.clone()

    eager_out, eager_grad = step(model.eval())
    compiled_out, compiled_grad = step(torch.compile(model, fullgraph=True))
    # the same kernels; inductor fuses and reorders the elementwise bf16 work around them
    assert rel_err(compiled_out, eager_out) < 2e-2
    assert rel_err(compiled_grad, eager_grad) < 5e-2
