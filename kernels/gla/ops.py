"""The Triton GLA as torch.library custom ops: ``dig::chunk_gla_fwd`` and ``dig::chunk_gla_bwd``.

Why custom_op (opaque to the compiler) and not triton_op (which lets Inductor see the kernels):
* CI checks the kernels under TRITON_INTERPRET=1 on CPU tensors, where a kernel is an interpreted
  function that wrap_triton cannot trace; a custom op runs the same Python in every mode.
* Inductor cannot fuse anything into these kernels either way (each pass walks chunks in a loop
  with its own tiling); what compile and CUDA graphs need is that Dynamo does not trace into the
  raw ``kernel[grid](...)`` launch (it did, and the re-specialised kernel failed to compile) and
  that the op has a fake (shape) implementation and an autograd formula. custom_op gives both.
The launch configuration arrives as op arguments, resolved by ``tuning.launch_config`` outside the
traced region, so no file or environment read happens inside a compiled or captured step.
"""

import torch
from torch import Tensor

from .chunk import Launch, chunk_gla_bwd, chunk_gla_fwd
from .config import GLAConfig, state_dtype
from .tuning import launch_config


def launch(q, v, config, reverse, transpose, gate_scale) -> Launch:
    return Launch(q, v, GLAConfig.from_op_arguments(config), reverse, transpose, gate_scale)


@torch.library.custom_op("dig::chunk_gla_fwd", mutates_args=())
def chunk_gla_fwd_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h0: Tensor | None, scale: float,
                     reverse: bool, transpose: bool, config: list[int],
                     gate_scale: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """(o [B, T, H, V], chunk states h [B*H, NT+1, K, V] (fp32, or bf16 with GLAConfig.bf16_states),
    chunk log decays gl fp32 [B*H, NT, K])."""
    return chunk_gla_fwd(q, k, v, g, scale, h0, launch(q, v, config, reverse, transpose, gate_scale))


def fake_states(like: Tensor, batch_heads: int, T: int, K: int, V: int, config: list[int]) -> tuple:
    """Shape-only chunk states h [batch_heads, NT+1, K, V] (chunk.Launch.state_dtype) and log decays gl
    [batch_heads, NT, K] fp32 of a call with these op config arguments and inputs of like's dtype."""
    cfg = GLAConfig.from_op_arguments(config)
    NT = (T + cfg.chunk_size - 1) // cfg.chunk_size
    return (like.new_empty(batch_heads, NT + 1, K, V, dtype=state_dtype(cfg, like.dtype)),
            like.new_empty(batch_heads, NT, K, dtype=torch.float32))


@chunk_gla_fwd_op.register_fake
def _(q, k, v, g, h0, scale, reverse, transpose, config, gate_scale):
    B, T, H, K = q.shape
    V = v.shape[-1]
    return (q.new_empty(B, T, H, V, dtype=v.dtype), *fake_states(q, B * H, T, K, V, config))


@torch.library.custom_op("dig::chunk_gla_bwd", mutates_args=())
def chunk_gla_bwd_op(q: Tensor, k: Tensor, v: Tensor, g: Tensor, h: Tensor, gl: Tensor, do: Tensor,
                     dht: Tensor | None, scale: float, reverse: bool, transpose: bool, config: list[int],
                     gate_scale: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dq, dk, dv, dg in the input dtypes, dh0 fp32 [B, H, K, V]); do contiguous [B, T, H, V]."""
    dq, dk, dv, dg, dh0 = chunk_gla_bwd(q, k, v, g, h, gl, do, dht, scale,
                                        launch(q, v, config, reverse, transpose, gate_scale))
    return dq, dk, dv, dg, dh0.clone()


@chunk_gla_bwd_op.register_fake
def _(q, k, v, g, h, gl, do, dht, scale, reverse, transpose, config, gate_scale):
    B, T, H, K = q.shape
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format),
            torch.empty_like(g, memory_format=torch.contiguous_format),
            q.new_empty(B, H, K, v.shape[-1], dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    q, k, v, g, h0, scale, reverse, transpose, config, gate_scale = inputs
    _, h, gl = output
    ctx.save_for_backward(q, k, v, g, h, gl)
    ctx.arguments = (scale, reverse, transpose, config, gate_scale)
    ctx.h0_dtype = None if h0 is None else h0.dtype
    ctx.mark_non_differentiable(gl)
    # An output nobody used gets None, not zeros: the chunk states h are an output (the final state
    # is a slice of them), and autograd's zeros for them were a 2.2 GB fp32 fill per backward at
    # K=V=128, B*T=131072, H=16 (0.47 of 24.9 ms fwd+bwd on the H200, reports/h200-2026-12-03e).
    ctx.set_materialize_grads(False)


def _backward(ctx, do, dh, _dgl):
    """dh is the gradient of the chunk states; only its last slot (the final state) is exposed.
    do or dh is None when that output was not used."""
    q, k, v, g, h, gl = ctx.saved_tensors
    dht = None if dh is None else dh[:, -1].float().contiguous()  # fp32, as the state passes load it
    if do is None:  # only the final state was used
        do = torch.zeros(*q.shape[:-1], v.shape[-1], device=q.device, dtype=v.dtype)
    dq, dk, dv, dg, dh0 = torch.ops.dig.chunk_gla_bwd(q, k, v, g, h, gl, do.contiguous(), dht, *ctx.arguments)
    dh0 = None if ctx.h0_dtype is None else dh0.to(ctx.h0_dtype)
    return dq, dk, dv, dg, dh0, None, None, None, None, None


chunk_gla_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def heads_contiguous(x: Tensor) -> Tensor:
    """x itself if each head's values are contiguous in a token row (all the kernels need), else a copy."""
    return x if x.stride(-1) == 1 and x.stride(-2) == x.shape[-1] else x.contiguous()


def gla_autograd(q, k, v, g, scale, initial_state, output_final_state, reverse, transpose, chunk_size,
                 gate_normalizer):
    """chunk_gla after its checks: resolve the launch config, call the op, cut out the final state."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else float(scale)
    config = list(launch_config(T, K, v.shape[-1], q.dtype, chunk_size))
    gate_scale = None if gate_normalizer is None else 1.0 / gate_normalizer
    h0 = None if initial_state is None else initial_state.float().contiguous()
    q, k, v, g = (heads_contiguous(x) for x in (q, k, v, g))
    o, h, _ = torch.ops.dig.chunk_gla_fwd(q, k, v, g, h0, scale, reverse, transpose, config, gate_scale)
    final_state = None
    if output_final_state:  # one fp32 copy, of fp32 or bf16 states
        final_state = h[:, -1].reshape(B, H, K, v.shape[-1]).to(torch.float32, copy=True)
    return o, final_state
