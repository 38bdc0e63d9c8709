"""Compute kernels for gated-linear-attention diffusion backbones.

kernels/gla: the chunked GLA (Triton, PyTorch, naive); norm_gate: RMSNorm * swish(gate);
gla_layer: the GLA token mixer between its input and output projections as one op;
ln_modulate, gated_residual, swiglu, dwconv: DiG's block glue. Each Triton op is a torch.library
custom op with a plain PyTorch ``*_ref`` twin beside it.
"""

import os

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


def row_tile(width: int, max_rows: int = 32) -> tuple[int, int]:
    """(rows per program, power-of-two block width) for row-wise kernels over rows of `width`."""
    block = triton.next_power_of_2(width)
    return max(1, min(max_rows, MAX_TILE_ELEMENTS // block)), block
