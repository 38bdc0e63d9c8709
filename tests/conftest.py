"""Pytest setup: new floating tensors from torch.empty* are NaN during tests; `gpu` tests need CUDA.

NaN-filling (as fla's tests do) makes code that reads memory it never wrote fail loudly instead of
passing by luck on whatever the allocator returned (often zeros on a fresh CPU page).
"""

import fcntl
import functools
import os
import tempfile
from pathlib import Path

import pytest
import torch

# `with torch.device(...)` recognises factory functions by identity, from a set it builds once, at
# its first use; build it now, before torch.empty is patched, or the set would hold the patched
# wrapper and `with torch.device("meta")` would stop redirecting torch.empty.
with torch.device("cpu"):
    torch.empty(0)


def _nan_filled(make_empty):
    """Wrap a torch.empty*-like factory so floating and complex results come back NaN-filled."""

    @functools.wraps(make_empty)
    def make_nan_filled(*args, **kwargs):
        out = make_empty(*args, **kwargs)
        if (out.is_floating_point() or out.is_complex()) and not torch.compiler.is_compiling():
            with torch.no_grad():  # the result may be a leaf with requires_grad=True
                out.fill_(float("nan"))
        return out

    return make_nan_filled


def nan_fill_empty_factories(set_attribute=setattr):
    """Make torch.empty, empty_like, empty_strided and Tensor.new_empty NaN-fill what they return.

    set_attribute: monkeypatch.setattr in a test (undone after it); the plain setattr in a worker
    process that a test starts (tests/test_context_parallel.py), which ends with the test.
    """
    for owner, name in ((torch, "empty"), (torch, "empty_like"), (torch, "empty_strided"),
                        (torch.Tensor, "new_empty")):
        set_attribute(owner, name, _nan_filled(getattr(owner, name)))


@pytest.fixture(autouse=True)
def nan_filled_empty_tensors(monkeypatch):
    """NaN-filling torch.empty* for one test; undone after it."""
    nan_fill_empty_factories(monkeypatch.setattr)
    yield


# One lock file for every pytest-xdist worker of this user on this machine
GPU_MEMORY_LOCK = Path(tempfile.gettempdir()) / f"dig-tests-gpu-memory-{os.getuid()}.lock"


@pytest.fixture(autouse=True)
def gpu_memory_shared_fairly(request):
    """GPU tests under pytest-xdist (the README's -n 8) share one GPU. Those marked gpu_memory hold
    an exclusive lock while they run, so no two of them overlap, and every GPU test hands its cached
    blocks back to the driver when it ends: on the H200, 8 workers holding what their last tests had
    cached (49, 29, 23 and 19 GiB among them) ran U-DiG-XL/2's step out of memory (2026-12-02)."""
    if "gpu" not in request.keywords or not torch.cuda.is_available():
        yield
        return
    with open(GPU_MEMORY_LOCK, "a") as lock:
        if request.node.get_closest_marker("gpu_memory"):
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` when no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for CPU-heavy tests: on the shared 2-core machine, torch's 2 spinning
    threads made a 20 ms kernel-benchmark call take 0.3-0.7 s and DiS-S/2's forward + backward 82 s
    instead of 5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
