"""Stand-in model families for the benchmark tests: a plugin file for bench.registry.load_plugin.

Tiny models with the diffusion models' interface (forward(x [N, 4, I, I], t [N], y [N]) ->
[N, 8, I, I], attribute backend_description), so the harness tests never depend on `models`.
Some fail on purpose, the way real runs fail: out of memory from a given input size, an
unrelated error, a missing backend, a hang. backend_description carries the process id, so a
test can check that every point ran in a fresh process. A stand-in about to sleep touches the file
named by $STANDIN_SLEEP_MARKER, if set, so a test knows its point is running. (No tests in this file.)
"""

import os
import time
from pathlib import Path

import torch
from torch import nn

from bench.registry import Family, register

OOM_FROM_INPUT_SIZE = 16  # 128 px: the OOM stand-ins run at 64 px and fail from 128 px


class BackendUnavailableError(RuntimeError):
    """Same name as models.common.BackendUnavailableError: the harness matches it by name."""


class StandInModel(nn.Module):
    """Conv + class embedding; raises `failure` in forward when the input is >= fail_from wide."""

    def __init__(self, input_size, failure=None, fail_from=0, sleep_s=0.0):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.label = nn.Embedding(1000, 8)
        self.failure, self.fail_from, self.sleep_s = failure, fail_from, sleep_s
        self.backend_description = f"stand-in conv (pid {os.getpid()})"

    def forward(self, x, t, y):
        if self.failure is not None and x.shape[-1] >= self.fail_from:
            raise self.failure
        if self.sleep_s and os.environ.get("STANDIN_SLEEP_MARKER"):
            Path(os.environ["STANDIN_SLEEP_MARKER"]).touch()
        time.sleep(self.sleep_s)
        return self.conv(x) + self.label(y)[:, :, None, None] + 1e-3 * t[:, None, None, None].float()


def builder(**options):
    def build(name, input_size, **backend_kw):
        return StandInModel(input_size, **options)
    return build


def missing_backend(name, input_size, **backend_kw):
    raise BackendUnavailableError("stand-in backend needs a package that is not installed here")


register(Family("StandIn", "StandIn", build=builder()))
register(Family("StandIn-OOM", "StandIn", build=builder(
    failure=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    fail_from=OOM_FROM_INPUT_SIZE)))
register(Family("StandIn-RuntimeOOM", "StandIn", build=builder(
    failure=RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (GPU 0; 139.8 GiB total capacity)"),
    fail_from=OOM_FROM_INPUT_SIZE)))
register(Family("StandIn-Error", "StandIn", build=builder(
    failure=ValueError("stand-in failure: shapes do not match"))))
register(Family("StandIn-Unavailable", "StandIn", build=builder(),
                unavailable=lambda device: "stand-in provider is not installed"))
register(Family("StandIn-Missing", "StandIn", build=missing_backend))
register(Family("StandIn-Slow", "StandIn", build=builder(sleep_s=120.0)))
