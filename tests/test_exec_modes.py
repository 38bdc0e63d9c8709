"""Execution modes of a benchmark step (bench.exec_modes): eager, torch.compile and one CUDA graph.

CPU tests compile with the 'aot_eager' and 'eager' backends (Dynamo and AOTAutograd without
Inductor's C++ build: Inductor took 145 s for DiT-S/2 at 16 tokens on these cores) on a 2-block
DiT; the GPU tests run the real S/2 models at 256 px.
"""

import pytest
import torch
from torch import nn

from bench.exec_modes import ExecModeError, exec_label, prepare_step
from bench.point import failure_status
from bench.registry import get_family
from helpers import rel_err
from models import create_model
from models.dit import DiT

BATCH, INPUT_SIZE = 2, 8


def point_inputs(device="cpu", batch=BATCH, size=INPUT_SIZE):
    """Fresh random x [N, 4, I, I], t [N], y [N] for one point."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    y = torch.randint(0, 1000, (batch,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


def tiny_dit():
    torch.manual_seed(0)
    return DiT(input_size=INPUT_SIZE, hidden_size=64, depth=2, num_heads=2)


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_eager_step(mode, one_torch_thread):
    model = create_model("DiT-S/2", INPUT_SIZE)
    prepared = prepare_step(model, *point_inputs(), mode, torch.bfloat16, "eager", warmup=1)
    assert prepared.setup["exec"] == "eager"
    assert prepared.setup["compile_s"] is None and prepared.setup["capture_s"] is None
    out = prepared.step()
    assert out.shape == (BATCH, 8, INPUT_SIZE, INPUT_SIZE) and torch.isfinite(out).all()
    assert model.training == (mode == "train")
    assert ("gradients not all zero" in prepared.setup["check"]) == (mode == "train")


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_compile_step_matches_eager_and_records_compile_time(mode, one_torch_thread):
    prepared = prepare_step(tiny_dit(), *point_inputs(), mode, torch.bfloat16, "compile", warmup=2,
                            compile_backend="aot_eager")
    setup = prepared.setup
    assert setup["compile_s"] > 0 and setup["capture_s"] is None
    assert (setup["compile_mode"], setup["compile_backend"]) == ("default", "aot_eager")
    assert setup["fullgraph"] is False
    assert setup["graph_breaks"] == 0
    assert "vs eager" in setup["check"], setup["check"]
    assert torch.isfinite(prepared.step()).all()


class GraphBreakModel(nn.Module):
    """A conv whose forward Dynamo must split in two (an explicit graph break)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x, t, y):
        torch._dynamo.graph_break()
        return self.conv(x)


def test_compile_failure_is_an_error_never_eager():
    expected = r"torch.compile\(mode='default', backend='eager', fullgraph=True\) failed in its first step: "
    with pytest.raises(ExecModeError, match=expected + "Unsupported") as failure:
        prepare_step(GraphBreakModel(), *point_inputs(), "train", None, "compile", compile_backend="eager",
                     fullgraph=True)
    assert failure_status(failure.value) == "error"


def test_graph_breaks_are_counted():
    prepared = prepare_step(GraphBreakModel(), *point_inputs(), "infer", None, "compile",
                            compile_backend="eager")
    assert prepared.setup["graph_breaks"] == 1


def off_by_half_backend(graph_module, example_inputs):
    """A wrong compiler: every output of the traced graph comes out 1.5x too large."""
    def run(*args):
        return [out * 1.5 for out in graph_module(*args)]
    return run


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_check_rejects_a_step_that_differs_from_eager(mode):
    with pytest.raises(ExecModeError, match="step check failed: output relative error 5.00e-01"):
        prepare_step(tiny_dit(), *point_inputs(), mode, None, "compile", warmup=1,
                     compile_backend=off_by_half_backend)


class ZeroGradientModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x, t, y):
        return 0.0 * self.conv(x)


def test_check_rejects_a_step_without_gradients():
    with pytest.raises(ExecModeError, match="gradients non-finite or all zero"):
        prepare_step(ZeroGradientModel(), *point_inputs(), "train", None, "eager", warmup=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU answer of graph mode")
def test_graph_mode_is_unavailable_on_cpu():
    with pytest.raises(RuntimeError, match="needs a CUDA device") as failure:
        prepare_step(tiny_dit(), *point_inputs(), "train", torch.bfloat16, "graph")
    assert failure_status(failure.value) == "unavailable"


@pytest.mark.parametrize("arguments, message", [
    ({"exec_mode": "jit"}, "exec_mode must be one of"), ({"mode": "eval"}, "mode must be one of"),
    ({"warmup": 0}, "warmup must be >= 1"), ({"autocast_dtype": torch.float32}, "autocast_dtype must be")])
def test_prepare_step_rejects_bad_arguments(arguments, message):
    kwargs = {"mode": "train", "autocast_dtype": None, "exec_mode": "eager", **arguments}
    with pytest.raises(ValueError, match=message):
        prepare_step(tiny_dit(), *point_inputs(), **kwargs)


def test_exec_label():
    labels = [exec_label(mode) for mode in ("eager", "compile", "graph")]
    assert labels == ["eager", "compile (default)", "graph"]


# ------------------------------------------------------------------------------------------- GPU

def gpu_model(family, dropout=True):
    """The family's S/2 model for 256 px (32 x 32 latents) on CUDA, built from seed 0."""
    torch.manual_seed(0)
    model = get_family(family).create("S", 2, 32, "cuda")
    if not dropout:  # no label dropout: no random draw inside the step, two runs see the same labels
        model.y_embedder.dropout_prob = 0.0
    return model


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["DiT-cuDNN", "DiG"])
def test_graph_training_follows_eager_training(family):
    # Six steps each (2 warm-up, the check, 3 more) from the same weights, target and inputs: the
    # parameter updates of the replayed graph and of eager must agree. Both run the same kernels;
    # only non-deterministic reductions can move a bf16 gradient, and Adam's first steps are close to
    # lr * sign(gradient), so the updates agree far better than the 5% allowed (a graph that skipped
    # the optimizer, or never zeroed its grads, gives an error near 1).
    inputs = point_inputs("cuda", batch=4, size=32)
    runs = {}
    for exec_mode in ("graph", "eager"):
        model = gpu_model(family, dropout=False)
        start = flat_params(model)
        torch.manual_seed(1)  # the loss target is the step's first random draw
        prepared = prepare_step(model, *inputs, "train", torch.bfloat16, exec_mode, warmup=2)
        for _ in range(3):
            prepared.step()
        torch.cuda.synchronize()
        runs[exec_mode] = (flat_params(model) - start, prepared.setup)
    graph_update, graph_setup = runs["graph"]
    assert graph_setup["capture_s"] > 0 and graph_setup["capture_peak_mem_alloc_gib"] > 0
    assert "vs eager" in graph_setup["check"], graph_setup["check"]
    assert rel_err(graph_update, runs["eager"][0]) <= 5e-2


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["DiT-cuDNN", "DiG"])
def test_graph_inference_replays_eager_output(family):
    model = gpu_model(family)
    with torch.no_grad():  # an untrained DiT or DiG outputs exactly 0 (zero-initialised final layer)
        for p in model.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    inputs = point_inputs("cuda", batch=4, size=32)
    prepared = prepare_step(model, *inputs, "infer", torch.bfloat16, "graph")
    x, t, y = inputs
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager_out = model(x, t, y)
    assert rel_err(prepared.step(), eager_out) <= 1e-2  # same kernels, same weights: bf16 rounding at most


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["DiT-cuDNN", "DiG"])
def test_compiled_training_matches_eager(family):
    # DiG compiles once its GLA and norm kernels are torch.library ops (issue 9, part 1); before that
    # Dynamo traces into the Triton launch and this raises ExecModeError naming torch.compile.
    inputs = point_inputs("cuda", batch=4, size=32)
    prepared = prepare_step(gpu_model(family), *inputs, "train", torch.bfloat16, "compile")
    assert prepared.setup["compile_s"] > 0 and "vs eager" in prepared.setup["check"]

