"""How one benchmark step executes: eager PyTorch, torch.compile, or the whole step in one CUDA graph.

`prepare_step(model, x, t, y, mode, autocast_dtype, exec_mode)` returns a `PreparedStep`: the step to
time and the setup metrics, measured before (outside) the timed steps. Setup runs the warm-up
steps, compiles or captures, and checks the step once against plain eager PyTorch on the same
weights and inputs; a failed check raises, it is never timed.

- eager:   forward under autocast, MSE loss against a fixed random target, backward, AdamW
           (fused on CUDA), grads zeroed with set_to_none=True. Inference: forward under no_grad.
- compile: the same step with the model replaced by `torch.compile(model, mode=...)`; the
           optimizer step stays eager (fused AdamW). compile_s is the wall time of the first
           (compiling) step, that step's own run included. Inductor runs with
           fallback_random=True, so that the label-dropout draw (one [N]-element torch.rand per
           step) is eager's and the check can compare: without it, 6 of 16 images of a small DiT
           were conditioned on other labels than in eager (CPU, 2026-12).
- graph:   the whole step (zero grads, forward, loss, backward, optimizer step) captured once in
           one torch.cuda.CUDAGraph and replayed: autocast with cache_enabled=False, AdamW
           fused and capturable, grads zeroed inside the graph (set_to_none=False keeps the
           captured .grad tensors), warm-up steps on a side stream before capture (they
           allocate grads and optimizer state). capture_s is the capture's wall time. CUDA only.

Inputs are fixed in every mode: the x, t, y given (the graph's static inputs) are reused by every
step, as the eager protocol always did. Failures raise: `ExecModeError` (a compile or capture that
fails, or a step that does not match eager) maps to status `error`; graph mode off CUDA raises
models.common.BackendUnavailableError, status `unavailable`. Nothing falls back to eager.
"""

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._inductor.config
import torch.nn.functional as F

from .numerics import relative_error
from .spec import DEFAULT_COMPILE_MODE, EXEC_MODES, MODES

STEP_MODES = MODES
LEARNING_RATE = 1e-4
CHECK_SEED = 0  # re-seeded before the eager reference and before the checked step: same label dropout
# Relative error allowed between the checked step and eager (output, and the vector of per-parameter
# gradient norms). A broken step is far off: grads never zeroed double them (error 1.0), a stale or
# missing part gives O(1). Eager and a CUDA graph run the same kernels, so they differ only where
# reductions are non-deterministic; Inductor fuses pointwise ops and rounds once where eager rounds
# after each op, which at bf16 (8-bit mantissa, 3.9e-3 per rounding) accumulates over the layers.
CHECK_TOLERANCE = {None: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class ExecModeError(RuntimeError):
    """A compile or capture failed, or the prepared step does not match eager: the point's status is error."""


@dataclass
class PreparedStep:
    """step() runs one timed step and returns the model output [N, C_out, I, I] (in graph mode the
    graph's static output, overwritten by the next replay). setup: exec, compile_mode,
    compile_backend, fullgraph, compile_s, capture_s, capture_peak_mem_alloc_gib, graph_breaks, check."""

    step: Callable[[], torch.Tensor]
    setup: dict


def autocast(device_type: str, dtype: torch.dtype | None, cache_enabled: bool = True):
    """torch.autocast to `dtype` (torch.bfloat16 or torch.float16); dtype None runs in fp32 (disabled)."""
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=dtype is not None,
                          cache_enabled=cache_enabled)


def exec_label(exec_mode: str, compile_mode: str = DEFAULT_COMPILE_MODE) -> str:
    """How figures and tables name an execution mode: 'eager', 'compile (default)', 'graph'."""
    return f"compile ({compile_mode})" if exec_mode == "compile" else exec_mode


class TrainStep:
    """One training step of `forward` (the model or its compiled twin) on fixed inputs x [N, 4, I, I],
    t [N], y [N]. Grads are zeroed at the start of the step, so afterwards they hold its gradients."""

    def __init__(self, forward, optimizer, x, t, y, dtype, in_graph=False, loss_fn=F.mse_loss,
                 after_backward=None):
        self.forward, self.optimizer, self.inputs, self.dtype = forward, optimizer, (x, t, y), dtype
        self.in_graph = in_graph
        self.loss_fn = loss_fn  # (output in fp32, target) -> loss
        self.after_backward = after_backward  # e.g. a gradient exchange of the caller's (context parallel)
        self.target = None  # the output's shape, drawn at the first (warm-up) step, once the shape is known

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            self.target = torch.randn(out.shape, device=out.device)
        return self.loss_fn(out.float(), self.target)

    def __call__(self) -> torch.Tensor:
        x = self.inputs[0]
        self.optimizer.zero_grad(set_to_none=not self.in_graph)
        with autocast(x.device.type, self.dtype, cache_enabled=not self.in_graph):
            out = self.forward(*self.inputs)
        self.loss(out).backward()
        if self.after_backward is not None:
            self.after_backward()
        self.optimizer.step()
        return out


def infer_step(forward, x, t, y, dtype, in_graph=False):
    """One inference step: forward under no_grad and autocast -> [N, C_out, I, I]."""
    def step():
        with torch.no_grad(), autocast(x.device.type, dtype, cache_enabled=not in_graph):
            return forward(x, t, y)
    return step


def prepare_step(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mode: str,
                 autocast_dtype: torch.dtype | None, exec_mode: str, *, warmup: int = 3,
                 compile_mode: str = DEFAULT_COMPILE_MODE, compile_backend: str = "inductor",
                 fullgraph: bool = False) -> PreparedStep:
    """Build, warm up and check the step of one point.

    model: on x's device, fp32 weights; x [N, 4, I, I] latents, t [N] timesteps, y [N] labels;
    mode 'train' or 'infer'; autocast_dtype torch.bfloat16, torch.float16 or None (fp32);
    exec_mode one of EXEC_MODES; warmup >= 1 untimed steps before the check (the first compiles,
    in graph mode they run on a side stream before capture); compile_backend a name or a Dynamo
    backend callable (tests use 'aot_eager'). Raises ValueError for bad arguments.
    """
    if mode not in STEP_MODES:
        raise ValueError(f"mode must be one of {STEP_MODES}, got {mode!r}.")
    if exec_mode not in EXEC_MODES:
        raise ValueError(f"exec_mode must be one of {EXEC_MODES}, got {exec_mode!r}.")
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first step compiles or allocates), got {warmup}.")
    if autocast_dtype not in CHECK_TOLERANCE:
        raise ValueError(f"autocast_dtype must be torch.bfloat16, torch.float16 or None (fp32), "
                         f"got {autocast_dtype}.")
    model.train(mode == "train")
    setup = {"exec": exec_mode, "compile_mode": "", "compile_backend": "", "fullgraph": None,
             "compile_s": None, "capture_s": None, "capture_peak_mem_alloc_gib": None, "graph_breaks": None}
    args = (model, x, t, y, mode, autocast_dtype, warmup, setup)
    if exec_mode == "graph":
        step = _prepare_graph(*args)
    else:
        compile_options = (compile_mode, compile_backend, fullgraph) if exec_mode == "compile" else None
        step = _prepare_eager_or_compiled(*args, compile_options)
    return PreparedStep(step, setup)


def _optimizer(model, capturable):
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=fused, capturable=capturable)


def _synchronize(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def _prepare_eager_or_compiled(model, x, t, y, mode, dtype, warmup, setup, compile_options):
    forward = model
    if compile_options is not None:
        compile_mode, backend, fullgraph = compile_options
        setup.update(compile_mode=compile_mode, compile_backend=backend, fullgraph=fullgraph)
        forward = torch.compile(model, mode=compile_mode, backend=backend, fullgraph=fullgraph)
    train = TrainStep(forward, _optimizer(model, False), x, t, y, dtype) if mode == "train" else None
    step = train if train is not None else infer_step(forward, x, t, y, dtype)
    if compile_options is None:
        _warm_up(step, warmup)
        with _nonzero_output_for_check(model, train is None):
            setup["check"] = _check_step(step, model, train, x, t, y, dtype, reference=None)
        return step
    graph_breaks_before = _graph_break_count()
    _synchronize(x.device.type)
    start = time.perf_counter()
    # compilation is lazy: it happens inside the first step, which is what compile_s measures
    with torch._inductor.config.patch(fallback_random=True):
        _run_or_explain(step, f"torch.compile(mode={compile_mode!r}, backend={backend!r}, "
                              f"fullgraph={fullgraph}) failed in its first step")
        _synchronize(x.device.type)
        setup["compile_s"] = time.perf_counter() - start
        _warm_up(step, warmup - 1)
        setup["graph_breaks"] = _graph_break_count() - graph_breaks_before
        with _nonzero_output_for_check(model, train is None):
            reference = _eager_reference(model, train, x, t, y, dtype)
            setup["check"] = _check_step(step, model, train, x, t, y, dtype, reference)
    return step


def _prepare_graph(model, x, t, y, mode, dtype, warmup, setup):
    if x.device.type != "cuda":
        from models.common import BackendUnavailableError  # the harness maps it to status 'unavailable'

        raise BackendUnavailableError(f"exec mode 'graph' captures a CUDA graph and needs a CUDA device; "
                                      f"this point runs on {x.device.type}.")
    train = None
    if mode == "train":
        train = TrainStep(model, _optimizer(model, True), x, t, y, dtype, in_graph=True)
    body = train if train is not None else infer_step(model, x, t, y, dtype, in_graph=True)
    side_stream = torch.cuda.Stream()
    side_stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side_stream):
        _warm_up(body, warmup)
    torch.cuda.current_stream().wait_stream(side_stream)
    # The eager reference runs before capture: afterwards the graph's private pool keeps the step's
    # activations, and an eager step on top would need twice the activation memory.
    with _nonzero_output_for_check(model, train is None):
        reference = _eager_reference(model, train, x, t, y, dtype)
        step = _capture(body, setup)
        setup["check"] = _check_step(step, model, train, x, t, y, dtype, reference)
    return step


def _capture(body, setup):
    """Capture body() in one CUDA graph; returns the replaying step. Records capture_s and the peak."""
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()

    def capture():
        with torch.cuda.graph(graph):
            return body()
    static_out = _run_or_explain(capture, "CUDA graph capture of the whole step failed")
    torch.cuda.synchronize()
    setup["capture_s"] = time.perf_counter() - start
    # Replays allocate nothing, so the timed steps' max_memory_allocated misses the activations the
    # graph's pool holds; the capture's peak is the step's working set.
    setup["capture_peak_mem_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30

    def step():
        graph.replay()
        return static_out
    return step


@contextlib.contextmanager
def _nonzero_output_for_check(model, inference):
    """For an inference check: all-zero parameters get N(0, 0.02^2) values, zeroed again on exit.

    DiT and DiG zero-initialise their final layer and adaLN gates, so an untrained model's output is
    exactly 0 and any step, right or wrong, would match eager. Training checks need nothing: their
    warm-up steps have moved those weights.
    """
    zero_params = [p for p in model.parameters() if not p.any()] if inference else []
    generator = torch.Generator().manual_seed(CHECK_SEED)
    with torch.no_grad():
        for p in zero_params:
            p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    try:
        yield
    finally:
        with torch.no_grad():
            for p in zero_params:
                p.zero_()


def _warm_up(step, count):
    for _ in range(count):
        step()


def _run_or_explain(run, what):
    """run(); any failure but out of memory is re-raised as ExecModeError('<what>: <error, one line>')."""
    try:
        return run()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ExecModeError(f"{what}: {type(error).__name__}: {' | '.join(lines[:3])}"[:300]) from error


def _graph_break_count():
    return sum(torch._dynamo.utils.counters["graph_break"].values())


def _trained_params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _norms(tensors, device):
    """[P] float32 norms of the tensors, 0 for a None (a parameter that got no gradient)."""
    zero = torch.zeros((), device=device)
    return torch.stack([zero if g is None else g.detach().float().norm() for g in tensors])


def _eager_reference(model, train, x, t, y, dtype):
    """(output [N, C_out, I, I], per-parameter grad norms [P] or None) of one eager forward (and
    backward) on the current weights and inputs; leaves weights and .grad untouched."""
    torch.manual_seed(CHECK_SEED)
    if train is None:
        return infer_step(model, x, t, y, dtype)().detach().clone(), None
    params = _trained_params(model)
    with autocast(x.device.type, dtype):
        out = model(x, t, y)
    grads = torch.autograd.grad(train.loss(out), params, allow_unused=True)
    return out.detach().clone(), _norms(grads, out.device)


def _check_step(step, model, train, x, t, y, dtype, reference):
    """Run one step and check it; returns the check's one-line record, raises ExecModeError if it fails.

    Always: the output is finite. Training: the gradients are finite and not all zero, and the step
    changed the parameters and left them finite (their norms, before and after). With a reference
    (compile, graph): the output and the per-parameter gradient norms match the eager reference
    within CHECK_TOLERANCE[dtype].
    """
    params = _trained_params(model)
    norms_before = _norms(params, x.device) if train is not None else None
    torch.manual_seed(CHECK_SEED)
    out = step()
    problems = [] if torch.isfinite(out).all() else ["non-finite output"]
    record = ["output finite"]
    if train is not None:
        grad_norms, norms_after = _norms([p.grad for p in params], x.device), _norms(params, x.device)
        if not (torch.isfinite(grad_norms).all() and grad_norms.any()):
            problems.append("gradients non-finite or all zero")
        if not torch.isfinite(norms_after).all():
            problems.append("non-finite parameters after the step")
        elif torch.equal(norms_after, norms_before):
            problems.append("the step left every parameter unchanged")
        record = ["output, gradients and updated params finite, gradients not all zero"]
    if reference is not None:
        tolerance = CHECK_TOLERANCE[dtype]
        errors = {"output": relative_error(out, reference[0])}
        if train is not None:
            errors["grad-norm"] = relative_error(grad_norms, reference[1])
        for name, error in errors.items():
            if not error <= tolerance:
                problems.append(f"{name} relative error {error:.2e} against eager exceeds {tolerance:g}")
        record.append(", ".join(f"{name} rel err {error:.1e}" for name, error in errors.items())
                      + f" vs eager (tol {tolerance:g})")
    if problems:
        raise ExecModeError("step check failed: " + "; ".join(problems))
    return "; ".join(record)
