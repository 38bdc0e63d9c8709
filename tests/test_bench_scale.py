"""bench.scale: torchrun launches on gloo (CPU), the ranks' results combined, rows in scaling.csv."""

import argparse
import textwrap

import pytest

from bench.cli import UsageError
from bench.results import load_frame
from bench.scale import NVLINK_MULTICAST_OFF, ScaleSpec, add_scale_options, cmd_scale, combine, last_message

# A family whose model reports, as its backend, what the rank saw: the launch's multicast settings
# and the world size; and a tiny DiG for --strategy cp (a 4 x 4 token grid at 64 px). Written as a
# plugin file, because every rank loads the families it runs.
ENV_PROBE_PLUGIN = textwrap.dedent(f"""
    import os

    import torch
    from torch import nn

    from bench.registry import Family, register
    from models.dig import DiG


    class EnvProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            names = {sorted(NVLINK_MULTICAST_OFF)!r} + ["WORLD_SIZE"]
            seen = {{name: os.environ.get(name) for name in names}}
            self.backend_description = " ".join(f"{{k}}={{v}}" for k, v in sorted(seen.items()))

        def forward(self, x, t, y):
            return self.conv(x) + 1e-3 * t[:, None, None, None].float()


    register(Family("EnvProbe", "EnvProbe", build=lambda name, input_size, **kw: EnvProbe()))
    register(Family("TinyDiG", "DiG", lambda device: {{"gla_backend": "torch"}},
                    build=lambda name, input_size, **kw: DiG(input_size, hidden_size=64, depth=4, num_heads=2,
                                                             **kw)))
""")


def scale_args(tmp_path, *extra):
    plugin = tmp_path / "env_probe.py"
    plugin.write_text(ENV_PROBE_PLUGIN)
    parser = argparse.ArgumentParser()
    add_scale_options(parser)
    return parser.parse_args(["--device", "cpu", "--plugin", str(plugin), "--models", "EnvProbe",
                              "--resolutions", "64", "--batch", "2", "--warmup", "1", "--reps", "2",
                              "--out", str(tmp_path / "out"), *extra])


def test_scale_on_gloo_writes_throughput_memory_and_efficiency(tmp_path):
    args = scale_args(tmp_path, "--world-sizes", "1", "2", "64")
    assert cmd_scale(args) == {"measured": 3, "skipped": 0}
    frame = load_frame(tmp_path / "out" / "scaling.csv").set_index(["world_size", "metric"])
    for world_size in ("1", "2"):
        throughput = frame.loc[(world_size, "throughput")]
        assert throughput["status"] == "ok" and throughput["median"] > 0 and throughput["unit"] == "img/s"
        assert throughput["batch"] == 2 and throughput["strategy"] == "ddp" and throughput["threads"] == "1"
        assert f"--nproc-per-node={world_size}" in throughput["launch"]
        assert throughput["launch"].startswith("NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 "
                                               "NVSHMEM_DISABLE_NVLS=1 ")
        # what the ranks themselves saw in their environment
        assert throughput["backend"] == ("NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1 "
                                         f"TORCH_SYMM_MEM_DISABLE_MULTICAST=1 WORLD_SIZE={world_size}")
        assert frame.loc[(world_size, "peak_mem_rss")]["median"] > 0
        assert frame.loc[(world_size, "n_params")]["median"] == 4 * 8 * 9 + 8
    efficiency = frame.loc[("2", "scaling_efficiency")]
    one, two = (frame.loc[(w, "throughput")]["median"] for w in ("1", "2"))
    assert efficiency["status"] == "ok" and efficiency["median"] == pytest.approx(two / (2 * one))
    assert frame.loc[("1", "scaling_efficiency")]["median"] == 1.0
    too_many = frame.loc[("64", "throughput")]
    assert too_many["status"] == "unavailable" and "needs 64 CPU cores" in too_many["error"]
    assert cmd_scale(args) == {"measured": 1, "skipped": 2}  # done points stay; unavailable is re-checked


def test_scale_context_parallel_splits_each_image_over_the_ranks(tmp_path):
    args = scale_args(tmp_path, "--strategy", "cp", "--world-sizes", "2")
    args.models = ["TinyDiG"]
    assert cmd_scale(args) == {"measured": 1, "skipped": 0}
    frame = load_frame(tmp_path / "out" / "scaling.csv").set_index("metric")
    throughput = frame.loc["throughput"]
    assert throughput["status"] == "ok" and throughput["median"] > 0 and throughput["strategy"] == "cp"
    assert throughput["backend"].endswith("context parallel x2") and throughput["batch"] == 2
    assert frame.loc["scaling_efficiency"]["status"] == "unavailable"  # no 1-process cp row


def test_scale_rejects_bad_input_before_launching(tmp_path):
    for extra, message in ((["--world-sizes", "0"], "at least 1"), (["--resolutions", "60"], "multiple of"),
                           (["--reps", "0"], "--reps must be at least 1"),
                           (["--strategy", "cp"], "runs DiG families")):
        with pytest.raises(UsageError, match=message):
            cmd_scale(scale_args(tmp_path, *extra))
    args = scale_args(tmp_path)
    args.models = ["NoSuchFamily"]
    with pytest.raises(UsageError, match="unknown model family"):
        cmd_scale(args)
    args = scale_args(tmp_path, "--strategy", "cp", "--world-sizes", "2", "3")
    args.models = ["TinyDiG"]
    with pytest.raises(UsageError, match="world size 3 does not divide 4"):
        cmd_scale(args)
    assert not (tmp_path / "out").exists()


def rank_result(status="ok", steps=(), memory=None, error=""):
    return {"status": status, "error": error, "backend": "b", "n_params": 1, "step_seconds": list(steps),
            "peak_mem_gib": memory, "threads": 1}


def test_images_per_step_are_per_rank_under_data_parallelism_and_shared_under_cp():
    assert ScaleSpec("DiG", "S", 2, 64, batch=2, world_size=4).images_per_step == 8
    assert ScaleSpec("DiG", "S", 2, 64, batch=2, world_size=4, strategy="cp").images_per_step == 2


def test_combine_takes_the_slowest_rank_and_the_worst_failure():
    ranks = [rank_result(steps=(1.0, 3.0), memory=2.0), rank_result(steps=(2.0, 1.0), memory=5.0)]
    ok = combine(ranks, 2, "")
    assert ok["status"] == "ok" and ok["step_seconds"] == [2.0, 3.0] and ok["peak_mem_gib"] == 5.0
    oom = combine([rank_result("error", error="E"), rank_result("OOM", error="CUDA out of memory")], 2, "x")
    assert oom["status"] == "OOM" and oom["step_seconds"] == []
    lost = combine([rank_result(steps=(1.0,), memory=1.0)], 2, "torchrun exited with code -9: killed")
    assert lost["status"] == "error" and "code -9" in lost["error"]
    late = combine(ranks, 2, "torchrun exited with code 1: Signal 6 (SIGABRT) received by PID 7")
    assert late["status"] == "ok" and late["error"].startswith("every rank reported; then torchrun exited")


def test_last_message_skips_torchrun_rules():
    stderr = "Traceback\n  exitcode  : -6 (pid: 7)\n  traceback : Signal 6 (SIGABRT)\n=======\n\n"
    assert last_message(stderr) == "traceback : Signal 6 (SIGABRT)"
