"""The last step of the glue kernels' sums over tokens: add up the programs' fp32 partials.

A kernel that reduces over tokens (dwconv's tap and bias gradients, ln_modulate's dshift and dscale,
gated_residual's dgate) has each of its few hundred programs sum its share of the tokens in
registers and write one fp32 row of partials; ``sum_partials`` adds those rows in a fixed order
(deterministic, unlike atomics) and writes each result straight in its own dtype: one launch per op,
where ``partial.sum(0)`` plus a ``.to()`` per bf16 output (and a copy per result sliced out of one
buffer, as a custom op's outputs may not alias) would take up to three.
"""

import triton
import triton.language as tl

# [32 partial rows, 128 columns] fp32 per step: 32 values per thread at 4 warps. DiG-S/2's largest
# partials, the depthwise conv's [128 programs, 10 * 384], take 30 programs of 4 steps each.
BLOCK_G, BLOCK_M = 32, 128


@triton.jit
def sum_partials_kernel(partial_ptr, out0_ptr, out1_ptr, G, M, M0,
                        BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr):
    """Columns [m, m + BLOCK_M) of partial [G, M] summed over G: columns < M0 go to out0, the rest to out1."""
    o_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    b_sum = tl.zeros([BLOCK_G, BLOCK_M], dtype=tl.float32)
    for g0 in range(0, G, BLOCK_G):
        o_g = g0 + tl.arange(0, BLOCK_G)
        p_partial = partial_ptr + o_g.to(tl.int64)[:, None] * M + o_m[None, :]
        b_sum += tl.load(p_partial, mask=(o_g < G)[:, None] & m_m[None, :], other=0.0)
    b_total = tl.sum(b_sum, axis=0)
    tl.store(out0_ptr + o_m, b_total.to(out0_ptr.dtype.element_ty), mask=o_m < M0)
    tl.store(out1_ptr + (o_m - M0), b_total.to(out1_ptr.dtype.element_ty), mask=m_m & (o_m >= M0))


def sum_partials(partial, *outs):
    """Write partial.sum(0) into outs: partial [G, M] fp32 contiguous, outs one or two contiguous
    tensors (any float dtype) whose sizes add up to M, filled in order from the M columns."""
    if len(outs) not in (1, 2) or sum(out.numel() for out in outs) != partial.shape[1]:
        raise ValueError(f"outs must be one or two tensors of {partial.shape[1]} values in all; got "
                         f"{[tuple(out.shape) for out in outs]}.")
    G, M = partial.shape
    out0, out1 = outs[0], outs[-1]
    sum_partials_kernel[(triton.cdiv(M, BLOCK_M),)](partial, out0, out1, G, M, out0.numel(),
                                                    BLOCK_G=BLOCK_G, BLOCK_M=BLOCK_M, num_warps=4)

