"""Spawned process groups for the distributed tests (gloo on the CPU, NCCL on GPUs).

run_ranks(world_size, tmp_path, check) starts world_size fresh processes of one process group and
runs check(rank, world_size, device) in each; row_block cuts a rank's block of the rows layout
(kernels/gla/context_parallel.py) out of a full raster tensor.
"""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import nan_fill_empty_factories

COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)  # a hung collective fails the test, not CI
# A context-parallel result differs from the one-process one only in the order of float64 sums
# (each ~1e-16 relative); 1e-10 leaves room for the accumulations and fails any real bug.
FP64_TOLERANCE = 1e-10


def run_ranks(world_size, tmp_path, check, backend="gloo"):
    """Run check(rank, world_size, device) in world_size fresh processes of one process group."""
    mp.spawn(_rank_main, args=(world_size, str(tmp_path / "rendezvous"), check, backend), nprocs=world_size)


def run_ranks_on_gpus(world_size, tmp_path, check, monkeypatch):
    """run_ranks with NCCL, one GPU a rank, NVLink multicast off; skips with fewer GPUs than ranks."""
    from bench.scale import NVLINK_MULTICAST_OFF

    if torch.cuda.device_count() < world_size:
        pytest.skip(f"needs {world_size} GPUs, {torch.cuda.device_count()} visible")
    for name, value in NVLINK_MULTICAST_OFF.items():
        monkeypatch.setenv(name, value)
    run_ranks(world_size, tmp_path, check, backend="nccl")


def _rank_main(rank, world_size, rendezvous, check, backend):
    nan_fill_empty_factories()
    torch.set_num_threads(1)  # 4 ranks share 2 cores
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world_size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        check(rank, world_size, device)
    finally:
        dist.destroy_process_group()


def row_block(x, rank, world_size):
    """Rank's block of the rows layout: [B, T, ...] raster -> [B, T / R, ...]."""
    size = x.shape[1] // world_size
    return x[:, rank * size:(rank + 1) * size]
