"""Compute kernels for gated-linear-attention diffusion backbones.

kernels/gla: the chunked GLA (Triton, PyTorch, naive); norm_gate: RMSNorm * swish(gate);
gla_layer: the GLA token mixer between its input and output projections as one op;
ln_modulate, gated_residual, swiglu, dwconv: DiG's block glue. Each Triton op is a torch.library
custom op with a plain PyTorch ``*_ref`` twin beside it.
"""

import os
from dataclasses import dataclass

import triton

# One program's tile of the row-wise kernels stays at most this many fp32 values (16 per thread
# at 4 warps: no register spills with the ~8 live tiles of a backward).
MAX_TILE_ELEMENTS = 4096


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: Triton runs kernels on CPU tensors (how CI checks numerics)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_device(op: str, x) -> None:
    """ValueError unless x can go to a Triton kernel here (CUDA, or the CPU under the interpreter)."""
    if x.device.type != "cuda" and not interpreting():
        raise ValueError(f"{op} runs Triton kernels: its input must be on a CUDA device (got {x.device}); on "
                         "the CPU use its *_ref twin, or set TRITON_INTERPRET=1 for the interpreter.")


def row_tile(width: int, max_rows: int = 32, max_elements: int = MAX_TILE_ELEMENTS) -> tuple[int, int]:
    """(rows per tile, power-of-two block width) for row-wise kernels over rows of `width`."""
    block = triton.next_power_of_2(width)
    return max(1, min(max_rows, max_elements // block)), block


def token_rows_launch(x) -> tuple[tuple, dict]:
    """(grid (row tiles per image, N), meta-parameters ROWS, BLOCK_D, num_warps) of a row-wise kernel
    over the tokens of x [N, T, D], one program per row tile of one image."""
    N, T, D = x.shape
    rows, block_d = row_tile(D)
    return (triton.cdiv(T, rows), N), dict(ROWS=rows, BLOCK_D=block_d, num_warps=4)


@dataclass(frozen=True)
class TokenSplit:
    """How a kernel that also sums over tokens shares them out among its programs.

    About `programs` programs in all, each walking a contiguous run of token tiles of at most
    `tile_elements` fp32 values with `num_warps` warps (`stages` tiles in flight), summing in
    registers, and writing one row of partials at the end. A fixed count rather than the GPU's SM
    count: the split, and so the order and rounding of the sums, depends on the shape alone and is
    the same on every GPU.
    """

    programs: int
    tile_elements: int
    num_warps: int
    stages: int  # tiles in flight: the token loop's software-pipelining depth (cp.async), 1 = none


def split_tiles(n_tiles: int, slices: int, programs: int) -> tuple[int, int]:
    """(groups, tiles per group): n_tiles token tiles cut into contiguous groups, as many as make
    `slices` independent slices (images x channel blocks) of `groups` programs about `programs` in all."""
    per_group = triton.cdiv(n_tiles, max(1, min(n_tiles, programs // slices)))
    return triton.cdiv(n_tiles, per_group), per_group
