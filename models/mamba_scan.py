"""Mamba-1 selective scan: a chunked PyTorch reference and the guarded mamba-ssm CUDA kernel.

Semantics are those of mamba-ssm's `selective_scan_fn` (real A, input-dependent B and C, not grouped):

    delta = softplus(delta + delta_bias)          (each step optional)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t      h: [d, n] per batch element
    y_t   = sum_n C_t[n] * h_t[:, n] + D * u_t
    out   = y * silu(z)                           (when z is given)
"""

import torch
import torch.nn.functional as F

from .common import BackendUnavailableError

try:
    # `import mamba_ssm` runs its __init__, which imports the compiled selective_scan_cuda: a missing or
    # broken build shows up as ImportError or OSError (an undefined symbol in the .so).
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    MAMBA_IMPORT_ERROR = None
except (ImportError, OSError) as error:
    selective_scan_fn = None
    MAMBA_IMPORT_ERROR = f"{type(error).__name__}: {error}"

SCAN_BACKENDS = ("auto", "mamba_ssm", "reference")
MAMBA_BUILD_HELP = (
    "Build it with internet and a CUDA toolkit: `pip install --no-build-isolation -e .[mamba]` "
    "(mamba-ssm==2.3.2.post1 compiles against the installed torch); offline, on the GPU machine: "
    "`bash scripts/build_mamba.sh .sdist/mamba_ssm-2.3.2.post1.tar.gz` and put the directory it "
    "prints on PYTHONPATH."
)
# A chunk of c steps costs O(c) work per step (the pairwise decay block [b, d, n, c, c]) but is one Python
# step. Forward + backward, b=2, d=768, n=16, one CPU thread, l=258: c=2 0.40 s, c=4 0.43 s, c=8 0.64 s
# (l=18: 0.028 / 0.031 / 0.054 s). 4 keeps CPU speed and halves the kernel launches of c=2 on a GPU.
DEFAULT_CHUNK_SIZE = 4


def _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias):
    """ValueError naming the first argument whose shape does not fit u [b, d, l]."""
    if u.dim() != 3:
        raise ValueError(f"u must have shape [batch, dim, length], got {tuple(u.shape)}.")
    batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}.")
    if A.dim() != 2 or A.shape[0] != dim or A.is_complex():
        raise ValueError(f"A must be a real [dim={dim}, d_state] tensor, got {tuple(A.shape)} {A.dtype}.")
    state_size = A.shape[1]
    for name, value in (("B", B), ("C", C)):
        if value.shape != (batch, state_size, length):
            expected = (batch, state_size, length)
            raise ValueError(f"{name} must have shape [batch, d_state, length] = {expected} "
                             f"(variable, not grouped), got {tuple(value.shape)}.")
    optional = (("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)), ("z", z, tuple(u.shape)))
    for name, value, shape in optional:
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}.")


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       chunk_size=DEFAULT_CHUNK_SIZE):
    """Selective scan in PyTorch, chunked over the sequence; differentiable by autograd.

    u, delta, z: [b, d, l]; A: [d, n] (real, normally negative); B, C: [b, n, l]; D, delta_bias: [d].
    Returns out [b, d, l] in u's dtype. Computed in fp32 (fp64 inputs stay fp64).

    Within a chunk of c steps the state is h_t = sum_{s<=t} exp(L_t - L_s) delta_s B_s u_s
    + exp(L_t) h_0 with L the cumulative sum of delta * A; the exponent L_t - L_s <= 0 for s <= t
    and is masked to -inf before exp above the diagonal, so no factor exceeds 1 and nothing
    overflows. Chunks run one after another, carrying h.
    """
    _check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
    input_dtype = u.dtype
    compute_dtype = torch.promote_types(input_dtype, torch.float32)
    u, delta, A, B, C = (x.to(compute_dtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute_dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    outputs = []
    # split, not slicing: a slice's backward writes a full-length zero gradient, O(l^2 / c) in all
    chunks = zip(*(x.split(chunk_size, dim=-1) for x in (delta, u, B, C)))
    for delta_c, u_c, B_c, C_c in chunks:
        c = delta_c.shape[-1]
        log_decay = torch.einsum("bdc,dn->bdnc", delta_c, A).cumsum(-1)  # (b, d, n, c), L_t
        inputs = torch.einsum("bdc,bnc->bdnc", delta_c * u_c, B_c)  # (b, d, n, c), delta_s B_s u_s
        causal = torch.ones(c, c, dtype=torch.bool, device=u.device).tril()  # [t, s]: s <= t
        pair_exponent = log_decay[..., :, None] - log_decay[..., None, :]  # (b, d, n, c_t, c_s)
        decay = pair_exponent.masked_fill(~causal, float("-inf")).exp()
        states = torch.einsum("bdnts,bdns->bdnt", decay, inputs) + log_decay.exp() * state[..., None]
        outputs.append(torch.einsum("bdnt,bnt->bdt", states, C_c))  # (b, d, c)
        state = states[..., -1]
    out = torch.cat(outputs, dim=-1)
    if D is not None:
        out = out + u * D.to(compute_dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute_dtype))
    return out.to(input_dtype)


def resolve_scan(backend):
    """Map a scan_backend name to (scan function, description for `backend_description`).

    "auto" takes mamba-ssm's CUDA kernel when it imports, else the PyTorch reference;
    "mamba_ssm" raises BackendUnavailableError, saying how to build it, when it does not import.
    """
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {backend!r}.")
    if backend == "auto":
        backend = "mamba_ssm" if selective_scan_fn is not None else "reference"
    if backend == "reference":
        return selective_scan_ref, "scan=reference (PyTorch)"
    if selective_scan_fn is None:
        raise BackendUnavailableError(
            f"scan_backend='mamba_ssm' needs mamba-ssm's CUDA extension selective_scan_cuda, which does not "
            f"import here ({MAMBA_IMPORT_ERROR}). {MAMBA_BUILD_HELP}")
    return selective_scan_fn, "scan=mamba_ssm selective_scan_fn (CUDA)"
