"""Random GLA test cases and their float64 reference, shared by the naive, PyTorch and Triton tests.

    inputs = make_inputs(B, T, H, K, V, torch.float16, gate="mixed", h0=True)
    ref = reference(inputs, reverse=False)              # float64: o, ht, dq, dk, dv, dg, dh0
    out = run_impl(chunk_gla_torch, inputs, reverse=False, chunk_size=32)
    assert_matches(out, ref, low_precision_tolerances(inputs, reverse=False, ref=ref))

Gradients are those of the loss sum(o * do) + sum(ht * dht), with do and dht drawn once in
make_inputs so that every implementation is differentiated along the same direction.
"""

import torch
import torch.nn.functional as F

from helpers import assert_close_rel, rel_err
from kernels.gla import naive_recurrent_gla

GATE_KINDS = ("near_zero", "very_negative", "mixed")
RESULT_NAMES = ("o", "ht", "dq", "dk", "dv", "dg", "dh0")
FP32_TOLERANCE = 1e-5


def make_gates(shape, kind, generator):
    """Log-space forget gates (<= 0) of one of GATE_KINDS, in float32 on the CPU."""
    if kind == "near_zero":  # almost no forgetting: the state sums every token
        return -1e-3 * torch.rand(shape, generator=generator)
    if kind == "very_negative":  # exp(-20) = 2e-9: the state is nearly reset at every token
        return -20.0 - torch.rand(shape, generator=generator)
    if kind == "mixed":  # DiG's gate: logsigmoid(x) / 16 (gate_logit_normalizer 16)
        return F.logsigmoid(torch.randn(shape, generator=generator)) / 16
    raise ValueError(f"gate must be one of {', '.join(GATE_KINDS)}, got {kind!r}.")


def make_inputs(B, T, H, K, V, dtype, gate="mixed", seed=0, h0=False, device="cpu"):
    """Random inputs of one GLA case: dict(q, k, v, g, h0, do, dht).

    q, k, g: [B, T, H, K] and v, do: [B, T, H, V] in dtype; h0 (None unless asked for) and dht:
    [B, H, K, V] in the state dtype (float32, float64 for float64 inputs). Drawn in float32 on
    the CPU from `seed`, so a case is the same on every device.
    """
    generator = torch.Generator().manual_seed(seed)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def randn(*shape, dtype=dtype):
        return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)

    inputs = dict(q=randn(B, T, H, K), k=randn(B, T, H, K), v=randn(B, T, H, V),
                  g=make_gates((B, T, H, K), gate, generator).to(device=device, dtype=dtype))
    inputs["h0"] = randn(B, H, K, V, dtype=state_dtype) if h0 else None
    inputs["do"] = randn(B, T, H, V)
    inputs["dht"] = randn(B, H, K, V, dtype=state_dtype)
    return inputs


def run_impl(fn, inputs, reverse, output_final_state=True, **kwargs):
    """Run one GLA implementation forward and backward: dict(o, ht, dq, dk, dv, dg, dh0).

    fn has naive_recurrent_gla's signature; kwargs go to it (e.g. chunk_size). ht is None unless
    output_final_state, dh0 is None without an initial state.
    """
    names = [name for name in ("q", "k", "v", "g", "h0") if inputs[name] is not None]
    leaves = {name: inputs[name].detach().clone().requires_grad_() for name in names}
    o, ht = fn(leaves["q"], leaves["k"], leaves["v"], leaves["g"], initial_state=leaves.get("h0"),
               output_final_state=output_final_state, reverse=reverse, **kwargs)
    outputs, cotangents = [o], [inputs["do"].to(o.dtype)]
    if output_final_state:
        assert ht is not None, f"{fn.__name__} returned no final state with output_final_state=True."
        outputs.append(ht)
        cotangents.append(inputs["dht"].to(ht.dtype))
    grads = dict(zip(names, torch.autograd.grad(outputs, list(leaves.values()), cotangents)))
    return dict(o=o.detach(), ht=None if ht is None else ht.detach(),
                **{f"d{name}": grads.get(name) for name in ("q", "k", "v", "g", "h0")})


def reference(inputs, reverse, output_final_state=True):
    """The naive recurrence in float64 on the upcast inputs: the ground truth for every implementation."""
    inputs64 = {name: None if x is None else x.to(torch.float64) for name, x in inputs.items()}
    return run_impl(naive_recurrent_gla, inputs64, reverse, output_final_state)


def low_precision_tolerances(inputs, reverse, ref, output_final_state=True, floor=FP32_TOLERANCE):
    """Per-result tolerances for fp16/bf16 inputs: max(2 * error of the naive recurrence, floor).

    The naive recurrence run on the same low-precision inputs (fp32 inside, outputs and gradients
    rounded to the input dtype) shows the error that rounding to that dtype alone costs; a kernel
    may lose at most twice that (FlashAttention's rule). The floor covers results that stay fp32
    (ht, dh0), whose naive error is fp32 round-off that a different summation order can exceed.
    Where a gradient underflows in fp16 (dg is exp(-20)-sized for very negative gates) the naive
    error is 1 and the check only asserts finiteness.
    """
    naive = run_impl(naive_recurrent_gla, inputs, reverse, output_final_state)
    return {name: max(2 * rel_err(naive[name], ref[name]), floor)
            for name in RESULT_NAMES if ref[name] is not None}


def assert_matches(out, ref, tolerances):
    """Check every result present in ref (o, ht, dq, dk, dv, dg, dh0) against its tolerance."""
    for name in RESULT_NAMES:
        if ref[name] is None:
            assert out[name] is None, f"{name} should be None, like the reference."
            continue
        tol = tolerances[name] if isinstance(tolerances, dict) else tolerances
        assert_close_rel(name, out[name], ref[name], tol)
