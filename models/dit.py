"""DiT (facebookresearch/DiT), with a choice of attention kernel.

attn_backend: "naive" materialises the [T, T] attention matrix (the paper's "DiT", memory ~ T^2);
"flash" is FlashAttention-2 (flash_attn_func if the flash-attn package imports, else PyTorch SDPA
restricted to its FLASH_ATTENTION backend, which is the FlashAttention-2 code; backend_description says
which); "cudnn" is SDPA restricted to CUDNN_ATTENTION; "sdpa" lets PyTorch choose. Restricted backends
never fall back: if the kernel cannot run, it raises. A flash-attn built by scripts/build_flash_attn.sh
has the kernels for head dims 33-96 only (DiT-S/B/L's 64, DiT-XL's 72): another head dim raises a
RuntimeError naming that script at the first forward.

flash-attn 2.8 registers its kernels as torch.library custom ops (flash_attn::_flash_attn_forward and
_flash_attn_backward, with fake implementations) inside an autograd.Function, so torch.compile traces
flash_attn_func into one graph (checked with fullgraph=True on CPU stand-ins of the compiled module).
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .common import (
    BackendUnavailableError,
    PatchDiffusionModel,
    adaln_modulation,
    check_heads,
    modulate,
)

ATTN_BACKENDS = ("naive", "flash", "cudnn", "sdpa")


def naive_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v with the [N, H, T, T] matrix materialised; q, k, v [N, H, T, d]."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (N, H, T, T)
    return attn.softmax(dim=-1) @ v


def sdpa_attention(q, k, v, backend=None):
    """PyTorch SDPA on [N, H, T, d]; backend (an SDPBackend) restricts it to that one kernel."""
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v)


def resolve_attention_backend(name):
    """Backend name -> (description, attention function on [N, H, T, d]); raise if it cannot run here."""
    if name not in ATTN_BACKENDS:
        raise ValueError(f"attn_backend must be one of {', '.join(ATTN_BACKENDS)}; got {name!r}.")
    if name == "naive":
        return "attn=naive softmax(QK^T)V (T x T materialised)", naive_attention
    if name == "sdpa":
        return "attn=sdpa (PyTorch chooses the kernel)", sdpa_attention
    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"attn_backend={name!r} needs a CUDA GPU; none is visible here.")
    if name == "cudnn":
        return ("attn=cudnn via torch SDPA CUDNN_ATTENTION",
                partial(sdpa_attention, backend=SDPBackend.CUDNN_ATTENTION))
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except (ImportError, OSError):  # not installed, or a broken build (undefined symbol: OSError)
        return ("attn=flash via torch SDPA FLASH_ATTENTION (FlashAttention-2)",
                partial(sdpa_attention, backend=SDPBackend.FLASH_ATTENTION))

    def flash_attn_package(q, k, v):  # flash_attn_func wants [N, T, H, d]
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return (f"attn=flash via flash_attn {flash_attn.__version__} flash_attn_func (FlashAttention-2)",
            flash_attn_package)


class Attention(nn.Module):
    """Multi-head self-attention as timm's: qkv Linear D -> 3D (bias), proj D -> D."""

    def __init__(self, hidden_size, num_heads, attn_backend="naive"):
        super().__init__()
        check_heads(hidden_size, num_heads)
        self.num_heads = num_heads
        self.backend = attn_backend
        self.backend_description, self.attention_fn = resolve_attention_backend(attn_backend)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        """x [N, T, D] -> [N, T, D]."""
        N, T, D = x.shape
        qkv = self.qkv(x).reshape(N, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (N, H, T, d) each
        if self.backend in ("flash", "cudnn") and q.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"attn_backend={self.backend!r} needs fp16/bf16 activations, got {q.dtype}; "
                             f"run the model under torch.autocast(dtype=torch.bfloat16).")
        o = self.attention_fn(q, k, v)  # (N, H, T, d)
        return self.proj(o.transpose(1, 2).reshape(N, T, D))


class Mlp(nn.Module):
    """fc1 D -> 4D, GELU (tanh approximation), fc2 4D -> D."""

    def __init__(self, hidden_size, mlp_ratio=4.0):
        super().__init__()
        hidden_features = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, hidden_size)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, attn_backend="naive"):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_ratio)
        self.adaLN_modulation = adaln_modulation(hidden_size, 6)

    def forward(self, x, c):
        """x [N, T, D], c [N, D] -> [N, T, D]."""
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class DiT(PatchDiffusionModel):
    """Diffusion model with a Transformer backbone."""

    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True,
                 attn_backend="naive"):
        check_heads(hidden_size, num_heads)
        super().__init__(input_size, patch_size, in_channels, hidden_size, num_classes, class_dropout_prob,
                         learn_sigma)
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_heads, mlp_ratio, attn_backend) for _ in range(depth)
        ])
        self.backend_description = self.blocks[0].attn.backend_description
        self.initialize_weights()

    def forward(self, x, t, y):
        """x [N, C, I, I] latents, t [N] timesteps, y [N] labels -> [N, out_channels, I, I]."""
        x, c = self.embed(x, t, y)
        for block in self.blocks:
            x = block(x, c)  # (N, T, D)
        return self.decode(x, c)


#################################################################################
#                                  DiT Configs                                  #
#################################################################################

DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}  # depth, D, H

DiT_models = {
    f"DiT-{size}/{patch}": partial(DiT, depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
    for size, (depth, width, heads) in DIT_SIZES.items() for patch in (2, 4, 8)
}
