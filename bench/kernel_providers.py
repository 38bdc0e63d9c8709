"""What the kernel benchmark times: GLA implementations and SDPA attention, their inputs,
the bytes each must move (the HBM floor) and the float64 references their errors are taken against;
and the Case and Target records that the GLA and the glue rows (bench/glue_providers.py) share.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .numerics import relative_error, worst_error
from .registry import import_error

GATE_LOGIT_NORMALIZER = 16  # DiG's gates, as its GLA layer makes them: g = logsigmoid(x) / 16
NAIVE_MAX_T = 1024  # the token loop launches ~10 kernels per token: 65536 tokens would take minutes
# Its autograd keeps about three [B, H, K, V] fp32 tensors per token (the state before the decay, the
# decayed state and the new state that q reads): 18 GiB at K=32, V=64, H=6, B*T=131072, 48 GiB at
# K=V=64, H=8, but 384 GiB at K=V=128, H=16, more than the H200's 141 GB: those are skipped.
NAIVE_SAVED_STATES = 3
NAIVE_MAX_SAVED_GIB = 64
ATTENTION_REF_MAX_T = 4096  # float64 T x T reference for one (batch, head): 128 MiB at T = 4096
ATTENTION_REF_QUERIES = 1024  # above that, only o of the first 1024 queries is checked (no grads)


def gla_bytes_per_token_head(K: int, V: int, itemsize: int, mode: str) -> int:
    """Bytes GLA must move per token and head if each input is read and each output written once.

    Forward: read q, k, g (K each) and v (V), write o (V). Backward: read q, k, g, v, do, write
    dq, dk, dg, dv. K=32, V=64, bf16: 448 bytes forward, 1216 forward+backward.
    """
    forward = (3 * K + V) + V
    backward = (3 * K + 2 * V) + (3 * K + V)
    return itemsize * (forward + (backward if mode == "fwd+bwd" else 0))


def gla_case_bytes(case, dtype, mode: str) -> int:
    """gla_bytes_per_token_head times the case's B * T * H."""
    return gla_bytes_per_token_head(case.K, case.V, dtype.itemsize, mode) * case.B * case.T * case.H


def attention_bytes_per_token_head(D: int, itemsize: int, mode: str) -> int:
    """Same for attention (head dim D): forward reads q, k, v and writes o; backward reads q, k, v,
    o, do and writes dq, dk, dv (the fp32 log-sum-exp, 4 bytes, is left out)."""
    return itemsize * (4 * D + (8 * D if mode == "fwd+bwd" else 0))


@dataclass(frozen=True)
class Case:
    """What one set of rows measures: op ("gla" or a glue op's name) and its shape. GLA: B, T, H and
    the head dims K, V; glue: N images (B) of T tokens, H heads of V (the norm), the rest in `shape`."""

    op: str
    T: int
    B: int
    H: int
    K: int | str
    V: int
    shape: str = ""


@dataclass(frozen=True)
class Target:
    """One provider at one case, as the benchmark times it."""

    case: Case
    kind: str  # "gla", "attention" or "glue"
    provider: str
    impl: str
    make_inputs: Callable[[bool], tuple]  # grad -> fresh random inputs (leaves requiring grad if grad)
    load: Callable[[], Callable]  # -> fn(*inputs) -> output tensor (imported lazily)
    errors: Callable  # (inputs, o, grads or None, do or None) -> errors_against_reference's dict
    bytes_moved: Callable[[str], int]  # mode -> bytes that must move (the HBM floor's numerator)
    unavailable: Callable[[str], str | None]  # mode -> the reason it is not measured here, or None


@dataclass(frozen=True)
class Provider:
    """One timed implementation. kind: 'gla' (q, k, v, g) or 'attention' (q, k, v)."""

    name: str
    kind: str
    impl: str
    load: Callable[[], Callable]  # -> fn(*inputs) -> o (imported lazily)
    unavailable: Callable[[str, "Case", str], str | None]  # (device, case, mode) -> reason or None


def _needs_cuda(device: str, case=None, mode=None) -> str | None:
    return None if device == "cuda" else "needs a CUDA GPU"


def triton_unavailable(device: str) -> str | None:
    """Why a Triton kernel is not timed on this device, or None."""
    if device == "cuda":
        return None
    return "Triton kernels are timed on CUDA only (the interpreter is for tests)"


def _ours_triton_unavailable(device: str, case: Case, mode: str) -> str | None:
    if triton_unavailable(device):
        return triton_unavailable(device)
    gla = importlib.import_module("kernels.gla")
    return None if hasattr(gla, "chunk_gla") else "kernels.gla does not export chunk_gla yet"


def _fla_unavailable(device: str, case: Case, mode: str) -> str | None:
    return _needs_cuda(device) or import_error("fla.ops.gla")


def _naive_unavailable(device: str, case: Case, mode: str) -> str | None:
    if case.T > NAIVE_MAX_T:
        return f"skipped: T={case.T} > {NAIVE_MAX_T}, the token loop would take minutes"
    saved_gib = NAIVE_SAVED_STATES * 4 * case.B * case.T * case.H * case.K * case.V / 2**30
    if mode == "fwd+bwd" and saved_gib > NAIVE_MAX_SAVED_GIB:
        return (f"skipped: the token loop's backward would keep {saved_gib:.0f} GiB of fp32 states "
                f"(> {NAIVE_MAX_SAVED_GIB} GiB)")
    return None


def _gla_fn(module: str, name: str):
    def load():
        fn = getattr(importlib.import_module(module), name)
        return lambda q, k, v, g: fn(q, k, v, g)[0]
    return load


def _sdpa_fn(backend_name: str):
    def load():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)

        def attention(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return attention
    return load


# fla first: the other rows' fla_ratio needs its time at the same T.
PROVIDERS = (
    Provider("fla", "gla", "fla.ops.gla.chunk_gla", _gla_fn("fla.ops.gla", "chunk_gla"), _fla_unavailable),
    Provider("ours-triton", "gla", "kernels.gla.chunk_gla (Triton)", _gla_fn("kernels.gla", "chunk_gla"),
             _ours_triton_unavailable),
    Provider("ours-torch", "gla", "kernels.gla.chunk_gla_torch (PyTorch chunked)",
             _gla_fn("kernels.gla", "chunk_gla_torch"), lambda device, case, mode: None),
    Provider("naive", "gla", "kernels.gla.naive_recurrent_gla (token loop)",
             _gla_fn("kernels.gla", "naive_recurrent_gla"), _naive_unavailable),
    Provider("sdpa-flash", "attention", "torch SDPA FLASH_ATTENTION (FlashAttention-2), head dim 64",
             _sdpa_fn("FLASH_ATTENTION"), _needs_cuda),
    Provider("sdpa-cudnn", "attention", "torch SDPA CUDNN_ATTENTION, head dim 64",
             _sdpa_fn("CUDNN_ATTENTION"), _needs_cuda),
)
ATTENTION_HEAD_DIM = 64


def make_inputs(kind: str, B: int, T: int, H: int, K: int, V: int, dtype, device, grad: bool) -> tuple:
    """Fresh random inputs: GLA (q, k, v, g) [B, T, H, *] with DiG-like gates; attention
    (q, k, v) [B, H, T, 64] (SDPA layout). Leaves require grad when `grad`."""
    if kind == "gla":
        q, k = (torch.randn(B, T, H, K, device=device, dtype=dtype) for _ in range(2))
        v = torch.randn(B, T, H, V, device=device, dtype=dtype)
        g = (F.logsigmoid(torch.randn(B, T, H, K, device=device)) / GATE_LOGIT_NORMALIZER).to(dtype)
        inputs = (q, k, v, g)
    else:
        inputs = tuple(torch.randn(B, H, T, ATTENTION_HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
    return tuple(x.requires_grad_(grad) for x in inputs)


def gla_reference(inputs: tuple, do: torch.Tensor | None) -> tuple:
    """float64 chunk_gla_torch on batch 0 (all heads): (o, grads or None, description)."""
    from kernels.gla import chunk_gla_torch

    leaves = [x[:1].detach().double().requires_grad_(do is not None) for x in inputs]
    o = chunk_gla_torch(*leaves)[0]
    grads = torch.autograd.grad(o, leaves, do[:1].double()) if do is not None else None
    return o.detach(), grads, "chunk_gla_torch float64 on batch 0, all heads"


def attention_reference(inputs: tuple, do: torch.Tensor | None) -> tuple:
    """float64 softmax(q k^T / sqrt(D)) v on batch 0, head 0: (o, grads or None, description).

    Above ATTENTION_REF_MAX_T only the first ATTENTION_REF_QUERIES queries' o (grads None)."""
    T = inputs[0].shape[2]
    full = T <= ATTENTION_REF_MAX_T
    rows = slice(None) if full else slice(0, ATTENTION_REF_QUERIES)
    q, k, v = (x[:1, :1].detach().double().requires_grad_(full and do is not None) for x in inputs)
    scores = q[..., rows, :] @ k.transpose(-1, -2) * ATTENTION_HEAD_DIM ** -0.5
    o = torch.softmax(scores, dim=-1) @ v
    grads = torch.autograd.grad(o, (q, k, v), do[:1, :1].double()) if full and do is not None else None
    where = "batch 0, head 0" if full else f"batch 0, head 0, first {ATTENTION_REF_QUERIES} queries, o only"
    return o.detach(), grads, f"float64 softmax(QK^T/8)V on {where}"


def errors_against_reference(kind: str, inputs: tuple, o: torch.Tensor, grads, do) -> dict:
    """{'rel_err_o', 'rel_err_grads' (max over inputs, or None if not checked), 'reference'}."""
    if kind == "gla":
        o_ref, grads_ref, reference = gla_reference(inputs, do)
        o_part, grads_part = o[:1], [g_[:1] for g_ in grads] if grads is not None else None
    else:
        o_ref, grads_ref, reference = attention_reference(inputs, do)
        o_part = o[:1, :1, : o_ref.shape[2]]
        grads_part = [g_[:1, :1] for g_ in grads] if grads is not None else None
    result = {"rel_err_o": relative_error(o_part, o_ref), "rel_err_grads": None, "reference": reference}
    if grads_part is not None and grads_ref is not None:
        result["rel_err_grads"] = worst_error(grads_part, grads_ref)
    return result


def gla_target(provider: Provider, case: Case, dtype, device: str) -> Target:
    """A GLA or attention provider at one case (T, B, H, K, V)."""
    c = case

    def bytes_moved(mode):
        if provider.kind == "gla":
            return gla_case_bytes(case, dtype, mode)
        return attention_bytes_per_token_head(ATTENTION_HEAD_DIM, dtype.itemsize, mode) * c.B * c.T * c.H

    return Target(case, provider.kind, provider.name, provider.impl,
                  lambda grad: make_inputs(provider.kind, c.B, c.T, c.H, c.K, c.V, dtype, device, grad),
                  provider.load, lambda *checked: errors_against_reference(provider.kind, *checked),
                  bytes_moved, lambda mode: provider.unavailable(device, c, mode))
