"""Model FLOPs per image of DiT, DiG, U-DiG and DiS, a formula per family, and MFU.

Counting convention (the same for every family):
- A matmul [m, k] @ [k, n] is 2*m*n*k FLOPs; a convolution is a matmul per output element (2 *
  inputs per output); the contractions of attention, GLA and the selective scan are counted as
  written below. Elementwise work (norms, activations, gates, softmax, exp, residual adds, the
  MSE loss, AdamW) is not counted: it is memory-bound and the published DiT counts omit it too.
- Training = forward + backward, with the backward of every term 2x its forward (gradient of the
  input and of the weight), except the patch embedding and the timestep MLP's first Linear, whose
  inputs are data: their backward is the weight gradient only, 1x. These are model FLOPs (PaLM's
  MFU convention): work the maths needs, no recomputation. Fused attention kernels (flash,
  cuDNN) recompute QK^T in their backward, 2.5x forward instead of 2x; FlashAttention's benchmarks
  and torch.utils.flop_counter count SDPA that way (`attention_backward=FUSED_ATTENTION_BACKWARD`).
  At 16384 tokens DiT-XL/2 is 148 TFLOP per training image (104 in attention) with 2x, 165 (121)
  with 2.5x.

Per image, with T tokens, width D, depth L (blocks), patch p, 4 latent channels in and 8 out:
- shared by all: patch embedding 2*T*D*4p^2; timestep MLP 2*(256*D + D^2); label embedding: a
  lookup (0); final layer adaLN 2*D*2D and Linear 2*T'*D*8p^2 (T' = T for DiT/DiG, T+2 for DiS,
  whose final layer runs on the class and time tokens too).
- DiT block: adaLN 2*D*6D (per image); qkv + proj 8*T*D^2; attention QK^T and AV 4*T^2*D;
  MLP (4D) 16*T*D^2.
- DiG block: adaLN 2*D*6D; GLA projections q, k (D -> D/2) 2*T*D^2, v, g, o (D -> D) 6*T*D^2,
  forget gate D -> 16 -> D/2 2*T*(16D + 8D); GLA core per head (K = D/2H, V = D/H, chunk C):
  chunk states k^T v 2*T*K*V, inter-chunk output q S 2*T*K*V, intra-chunk causal pairs
  (C(C+1)/2 per full chunk, diagonal included) 2*K + 2*V each; SwiGLU (I = 256*ceil(int(8D/3)/256))
  6*T*D*I; SREM depthwise 3x3 conv 18*T*D; U-DiG's skip Linear(2D, D) 4*T*D^2 in the last L/2
  blocks. The sequential pass over chunk states (decay * S + dS) is elementwise.
- DiS (L+1 Mamba blocks, E = 2D, N = 16, R = ceil(D/16), T+2 tokens l): in_proj 4*l*D*E, out_proj
  2*l*E*D; per direction (two): causal depthwise conv1d width 4 8*l*E, x_proj 2*l*E*(R+2N), dt_proj
  2*l*R*E, selective scan 9*l*E*N (VMamba's `flops_selective_scan_ref` count: discretise, decay,
  input, output per state); skip Linear(2D, D) 4*l*D^2 in the L/2 out-blocks.
"""

import math
import re

# H200 SXM, dense bf16 tensor-core peak: the datasheet's 1,979 TFLOP/s is with 2:4 sparsity, halved
# here. MFU in the report is against this peak.
H200_BF16_DENSE_PEAK_TFLOPS = 989.5
# What an 8192^3 bf16 torch.matmul reached on our H200: 680 TFLOP/s (2026-11-22), up to 790 later.
H200_BF16_MATMUL_MEASURED_TFLOPS = (680.0, 790.0)

MODEL_ATTENTION_BACKWARD = 2.0  # attention backward / forward FLOPs without recomputation
FUSED_ATTENTION_BACKWARD = 2.5  # with QK^T recomputed, as flash / cuDNN kernels do
DEFAULT_GLA_CHUNK = 128  # kernels.gla GLAConfig's default chunk (fla's chunk_gla uses 64)
IN_CHANNELS, OUT_CHANNELS = 4, 8  # latent channels; learn_sigma doubles the output
FREQUENCY_DIM = 16 * 16  # the timestep embedder's sinusoidal features (models.common.TimestepEmbedder)
DIS_EXPAND, DIS_STATE, DIS_CONV = 2, 16, 4  # models.dis.BiMambaMixer's defaults
SCAN_FLOPS_PER_STATE = 9
SREM_KERNEL = 3 * 3
MODEL_NAME = re.compile(r"^(U-DiG|DiG|DiT|DiS)-(S|B|L|XL)/(\d+)$")


class Terms(dict):
    """name -> [forward FLOPs, training FLOPs] per image; add() accumulates."""

    def add(self, name, forward, backward_factor=2.0):
        totals = self.setdefault(name, [0.0, 0.0])
        totals[0] += forward
        totals[1] += forward * (1.0 + backward_factor)


def flop_terms(model_name: str, input_size: int, gla_chunk: int = DEFAULT_GLA_CHUNK,
               attention_backward: float = MODEL_ATTENTION_BACKWARD) -> dict:
    """Per-image FLOPs of `model_name` ("DiT-XL/2", "DiG-S/2", "U-DiG-S/1", "DiS-B/4") for latents
    input_size x input_size (res / 8): {term: (forward, training)}, the terms of the module docstring."""
    match = MODEL_NAME.match(model_name)
    if match is None:
        raise ValueError(f"no FLOP formula for {model_name!r}; expected DiT-, DiG-, U-DiG- or "
                         f"DiS-<S|B|L|XL>/<patch>.")
    prefix, size, patch = match.group(1), match.group(2), int(match.group(3))
    if input_size % patch:
        raise ValueError(f"input_size {input_size} is not divisible by the patch size {patch}.")
    tokens = (input_size // patch) ** 2
    if prefix == "DiT":
        from models.dit import DIT_SIZES

        terms = dit_terms(*DIT_SIZES[size], patch, tokens, attention_backward)
    elif prefix == "DiS":
        from models.dis import DIS_SIZES

        terms = dis_terms(*DIS_SIZES[size], patch, tokens)
    else:
        from models.dig import DIG_SIZES

        terms = dig_terms(*DIG_SIZES[size], patch, tokens, gla_chunk, long_skip=prefix == "U-DiG")
    return {name: tuple(values) for name, values in terms.items()}


def flops_per_image(model_name: str, input_size: int, mode: str = "train", **options) -> float:
    """Model FLOPs of one image: mode 'train' (forward + backward) or 'infer' (forward).
    options: gla_chunk, attention_backward (see flop_terms)."""
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be 'train' or 'infer', got {mode!r}.")
    column = 1 if mode == "train" else 0
    return sum(values[column] for values in flop_terms(model_name, input_size, **options).values())


def mfu(img_per_s: float, flops_per_image: float, peak_tflops: float = H200_BF16_DENSE_PEAK_TFLOPS) -> float:
    """Model FLOPs utilisation, a fraction: achieved model FLOP/s over the peak (TFLOP/s)."""
    return img_per_s * flops_per_image / (peak_tflops * 1e12)


def _embedding_terms(terms, hidden, patch, tokens, decoded_tokens):
    terms.add("patch_embed", 2 * tokens * hidden * IN_CHANNELS * patch ** 2, backward_factor=1.0)
    terms.add("timestep_embed", 2 * FREQUENCY_DIM * hidden, backward_factor=1.0)
    terms.add("timestep_embed", 2 * hidden * hidden)
    terms.add("adaln", 2 * hidden * 2 * hidden)  # final layer's shift and scale
    terms.add("final_linear", 2 * decoded_tokens * hidden * OUT_CHANNELS * patch ** 2)


def dit_terms(depth, hidden, heads, patch, tokens, attention_backward=MODEL_ATTENTION_BACKWARD) -> Terms:
    """DiT: FLOPs per image (heads do not change the count)."""
    terms = Terms()
    _embedding_terms(terms, hidden, patch, tokens, tokens)
    terms.add("adaln", depth * 2 * hidden * 6 * hidden)
    terms.add("attention_projections", depth * 8 * tokens * hidden ** 2)
    terms.add("attention_scores_values", depth * 4 * tokens ** 2 * hidden, attention_backward)
    terms.add("mlp", depth * 16 * tokens * hidden ** 2)
    return terms


def gla_causal_pairs(tokens, chunk):
    """Query-key pairs (j <= i) inside the chunks of one sequence: C(C+1)/2 per full chunk."""
    full, rest = divmod(tokens, chunk)
    return full * chunk * (chunk + 1) // 2 + rest * (rest + 1) // 2


def gla_core_flops(tokens, heads, key_dim, value_dim, chunk):
    """Forward FLOPs of chunked GLA for one sequence: states, inter-chunk and intra-chunk terms."""
    per_head = 4 * tokens * key_dim * value_dim + 2 * gla_causal_pairs(tokens, chunk) * (key_dim + value_dim)
    return heads * per_head


def dig_terms(depth, hidden, heads, patch, tokens, gla_chunk=DEFAULT_GLA_CHUNK, long_skip=False) -> Terms:
    """DiG (U-DiG with long_skip): FLOPs per image, SREM 'full' (the paper's configuration)."""
    from models.dig import ffn_intermediate_size
    from models.gla_layer import GATE_LOW_RANK_DIM

    terms = Terms()
    _embedding_terms(terms, hidden, patch, tokens, tokens)
    terms.add("adaln", depth * 2 * hidden * 6 * hidden)
    gate = 2 * hidden * GATE_LOW_RANK_DIM + 2 * GATE_LOW_RANK_DIM * hidden // 2
    terms.add("gla_projections", depth * tokens * (8 * hidden ** 2 + gate))
    key_dim, value_dim = hidden // (2 * heads), hidden // heads
    terms.add("gla_core", depth * gla_core_flops(tokens, heads, key_dim, value_dim, gla_chunk))
    terms.add("ffn", depth * 6 * tokens * hidden * ffn_intermediate_size(hidden))
    terms.add("srem_conv", depth * 2 * tokens * hidden * SREM_KERNEL)
    if long_skip:
        terms.add("skip", depth // 2 * 4 * tokens * hidden ** 2)
    return terms


def dis_terms(depth, hidden, patch, tokens) -> Terms:
    """DiS: depth + 1 bidirectional Mamba blocks on the class and time tokens and the patches."""
    from models.dis import NUM_EXTRA_TOKENS

    length = tokens + NUM_EXTRA_TOKENS
    inner, dt_rank = DIS_EXPAND * hidden, math.ceil(hidden / 16)
    blocks = depth + 1
    terms = Terms()
    _embedding_terms(terms, hidden, patch, tokens, length)
    per_direction = 2 * inner * (dt_rank + 2 * DIS_STATE) + 2 * dt_rank * inner  # x_proj, dt_proj
    in_out = 4 * hidden * inner + 2 * inner * hidden  # in_proj (D -> 2E), out_proj (E -> D)
    terms.add("mamba_projections", blocks * length * (in_out + 2 * per_direction))
    terms.add("conv1d", blocks * 2 * 2 * length * inner * DIS_CONV)
    terms.add("selective_scan", blocks * 2 * SCAN_FLOPS_PER_STATE * length * inner * DIS_STATE)
    terms.add("skip", depth // 2 * 4 * length * hidden ** 2)
    return terms
