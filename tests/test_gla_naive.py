"""The naive GLA recurrence against autograd's finite differences and an independent closed form,
plus the argument checks shared by every GLA implementation."""

import pytest
import torch

from gla_cases import make_inputs
from helpers import assert_close_rel
from kernels.gla import chunk_gla_torch, naive_recurrent_gla

IMPLEMENTATIONS = [naive_recurrent_gla, chunk_gla_torch]
IMPL_IDS = ["naive", "torch_chunk"]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_naive_gradcheck_float64(reverse):
    inputs = make_inputs(1, 4, 1, 3, 2, torch.float64, gate="mixed", seed=1, h0=True)
    leaves = [inputs[name].clone().requires_grad_() for name in ("q", "k", "v", "g", "h0")]

    def gla(q, k, v, g, h0):  # both outputs enter the checked Jacobian: o and the final state
        return naive_recurrent_gla(q, k, v, g, initial_state=h0, output_final_state=True, reverse=reverse)

    assert torch.autograd.gradcheck(gla, leaves)


def closed_form_gla(q, k, v, g, h0, scale, reverse):
    """o_t = scale * q_t (sum_s D_ts k_s^T v_s + D_t0 h0), all pairs at once, float64.

    Along the scan, P is the inclusive cumulative gate (cumsum of g; the suffix sum when reverse)
    and token s reaches token t (s at or before t in scan order) decayed by exp(P_t - P_s).
    """
    T = q.shape[1]
    if reverse:
        P = g.flip(1).cumsum(1).flip(1)
        reaches = torch.ones(T, T, dtype=torch.bool).triu()  # [t, s]: s >= t
        last = 0
    else:
        P = g.cumsum(1)
        reaches = torch.ones(T, T, dtype=torch.bool).tril()  # [t, s]: s <= t
        last = T - 1
    log_decay = P[:, :, None] - P[:, None, :]                             # [B, T(t), T(s), H, K]
    decay = torch.exp(log_decay.masked_fill(~reaches[None, :, :, None, None], float("-inf")))
    scores = torch.einsum("bthk,bshk,btshk->btsh", q, k, decay)
    o = scale * (torch.einsum("btsh,bshv->bthv", scores, v)
                 + torch.einsum("bthk,bhkv->bthv", q * torch.exp(P), h0))
    ht = torch.einsum("bshk,bshv->bhkv", k * decay[:, last], v) + torch.exp(P[:, last])[..., None] * h0
    return o, ht


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_naive_matches_closed_form(reverse):
    x = make_inputs(2, 12, 2, 5, 3, torch.float64, gate="mixed", seed=2, h0=True)
    scale = 0.7
    o, ht = naive_recurrent_gla(x["q"], x["k"], x["v"], x["g"], scale=scale, initial_state=x["h0"],
                                output_final_state=True, reverse=reverse)
    o_ref, ht_ref = closed_form_gla(x["q"], x["k"], x["v"], x["g"], x["h0"], scale, reverse)
    # both float64 sums of at most 12 O(1) terms: round-off ~1e-15, any formula slip is >= 1e-3
    assert_close_rel("o", o, o_ref, 1e-12)
    assert_close_rel("ht", ht, ht_ref, 1e-12)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=IMPL_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_output_dtypes(fn, dtype):
    x = make_inputs(1, 5, 2, 8, 4, dtype, h0=True)
    o, ht = fn(x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"], output_final_state=True)
    assert o.dtype == dtype and o.shape == (1, 5, 2, 4)
    assert ht.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ht.shape == (1, 2, 8, 4) and torch.isfinite(o).all() and torch.isfinite(ht).all()
    assert fn(x["q"], x["k"], x["v"], x["g"])[1] is None  # no final state unless asked for


def _bad_arguments(x):
    """(argument name, call keyword arguments) pairs that must raise ValueError naming the argument."""
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    return {
        "q_not_4d": ("q", dict(q=q[0], k=k, v=v, g=g)),
        "k_shape": ("k", dict(q=q, k=k[:, :-1], v=v, g=g)),
        "v_shape": ("v", dict(q=q, k=k, v=v[:, :-1], g=g)),
        "g_shape": ("g", dict(q=q, k=k, v=v, g=g[..., :-1])),
        "g_dtype": ("g", dict(q=q, k=k, v=v, g=g.double())),
        "k_device": ("k", dict(q=q, k=k.to("meta"), v=v, g=g)),
        "initial_state_shape": ("initial_state", dict(q=q, k=k, v=v, g=g, initial_state=x["h0"][..., :-1])),
        "g_positive_validated": ("g", dict(q=q, k=k, v=v, g=-g, validate=True)),
        "v_nan_validated": ("v", dict(q=q, k=k, v=v.clone().index_fill_(1, torch.tensor([2]), float("nan")),
                                      g=g, validate=True)),
    }


BAD_ARGUMENT_IDS = list(_bad_arguments(make_inputs(1, 4, 1, 4, 3, torch.float32, h0=True)))


@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=IMPL_IDS)
@pytest.mark.parametrize("case", BAD_ARGUMENT_IDS)
def test_bad_arguments_raise_value_error(fn, case):
    name, kwargs = _bad_arguments(make_inputs(2, 6, 2, 4, 3, torch.float32, h0=True))[case]
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fn(**kwargs)


def test_chunk_size_must_be_supported():
    x = make_inputs(1, 8, 1, 4, 3, torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_gla_torch(x["q"], x["k"], x["v"], x["g"], chunk_size=48)


@pytest.mark.parametrize("fn", IMPLEMENTATIONS, ids=IMPL_IDS)
def test_gla_validate_environment_variable(fn, monkeypatch):
    x = make_inputs(1, 8, 1, 4, 3, torch.float32)
    positive_gates = -x["g"]
    monkeypatch.setenv("GLA_VALIDATE", "1")
    with pytest.raises(ValueError, match=r"\bg\b"):
        fn(x["q"], x["k"], x["v"], positive_gates)


def test_new_float_buffers_are_nan_and_integer_buffers_untouched():
    # guards the conftest fixture the kernel tests rely on to catch reads of unwritten memory
    assert torch.empty(3).isnan().all()
    assert torch.empty_like(torch.ones(2, dtype=torch.float16)).isnan().all()
    assert torch.empty_strided((2, 2), (1, 2)).isnan().all()
    assert torch.ones(2).new_empty(4).isnan().all()
    assert torch.empty(3, dtype=torch.int64).dtype == torch.int64  # integer buffers are not filled
    leaf = torch.empty(2, requires_grad=True)
    assert leaf.requires_grad and leaf.is_leaf
    with torch.device("meta"):  # the patch must not hide torch.empty from device context managers
        assert torch.empty(2).device.type == "meta"
