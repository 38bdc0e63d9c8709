"""The per-GPU tuning cache: where it lives, what a lookup returns, and that lookups never tune."""

import dataclasses
import json

import pytest
import torch

from kernels.gla import tuning
from kernels.gla.config import (
    DEFAULT_CONFIG,
    GLAConfig,
    default_config,
    tile_candidates,
    walk_candidates,
    walks,
)


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("GLA_TUNING_CACHE", str(path))
    tuning._memory_cache.clear()
    yield path
    tuning._memory_cache.clear()


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a GPU named 'Test GPU' is present; timing anything would fail loudly."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tuning, "device_key", lambda device_index=None: "Test GPU | triton x")

    def no_timing(*args, **kwargs):
        raise AssertionError("a cache lookup must never time kernels")

    monkeypatch.setattr(tuning, "time_config", no_timing)


def entry(config: GLAConfig, T=4096):
    table = [{**GLAConfig(chunk_size=c).as_dict(), "ms": 1.0 + c / 100} for c in (16, 32, 64, 128)]
    return {"config": config.as_dict(), "ms": 1.16, "default_ms": 2.28, "shape": [32, T, 6, 32, 64],
            "table": table}


def test_cache_path_follows_the_environment(cache_file):
    assert tuning.cache_path() == cache_file


def test_shape_key_buckets_sequence_lengths():
    assert tuning.shape_key(9216, 32, 64, torch.bfloat16) == tuning.shape_key(16384, 32, 64, torch.bfloat16)
    assert tuning.shape_key(200, 32, 64, torch.float16) == "T256-K32-V64-float16"


def test_lookup_returns_the_cached_config_without_tuning(cache_file, fake_gpu):
    tuned = GLAConfig(chunk_size=32, state_block_v=16, state_warps=2, chunk_warps=2, num_stages=3)
    key = tuning.shape_key(4096, 32, 64, torch.bfloat16)
    tuning.save_cache({"Test GPU | triton x": {key: entry(tuned)}})
    assert tuning.get_config(4000, 32, 64, torch.bfloat16) == tuned
    assert tuning.get_config(4000, 32, 64, torch.float16) == DEFAULT_CONFIG  # other dtype: not tuned
    forced = tuning.get_config(4000, 32, 64, torch.bfloat16, chunk_size=128)
    assert forced.chunk_size == 128 and forced.state_block_v == tuned.state_block_v


def test_other_gpu_entries_are_not_used(cache_file, fake_gpu):
    key = tuning.shape_key(4096, 32, 64, torch.bfloat16)
    tuning.save_cache({"Another GPU | triton x": {key: entry(GLAConfig(chunk_size=16))}})
    assert tuning.get_config(4096, 32, 64, torch.bfloat16) == DEFAULT_CONFIG


def test_an_entry_of_an_older_version_runs_the_default_with_a_warning(cache_file, fake_gpu):
    key = tuning.shape_key(4096, 32, 64, torch.bfloat16)
    old = entry(GLAConfig(chunk_size=32))
    old["config"]["state_walk_block_t"] = 16  # a field removed since
    del old["config"]["output_block_v"]  # a field added since: takes its default
    tuning.save_cache({"Test GPU | triton x": {key: old}})
    with pytest.warns(UserWarning, match="state_walk_block_t"):
        assert tuning.get_config(4096, 32, 64, torch.bfloat16) == DEFAULT_CONFIG
    del old["config"]["state_walk_block_t"]
    tuning.save_cache({"Test GPU | triton x": {key: old}})
    tuning._memory_cache.clear()
    assert tuning.get_config(4096, 32, 64, torch.bfloat16) == GLAConfig(chunk_size=32)


def test_without_a_gpu_the_cache_is_not_read(cache_file):
    cache_file.write_text("not json")
    assert tuning.get_config(4096, 32, 64, torch.bfloat16, tune_allowed=False) == DEFAULT_CONFIG


def test_corrupt_cache_is_a_clear_error(cache_file, fake_gpu):
    cache_file.write_text("{ broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        tuning.get_config(4096, 32, 64, torch.bfloat16)


def test_save_is_atomic_and_round_trips(cache_file):
    data = {"gpu": {"key": entry(GLAConfig())}}
    tuning.save_cache(data)
    assert json.loads(cache_file.read_text()) == data
    assert not cache_file.with_suffix(".tmp").exists()


def test_tuning_table_and_summary(cache_file, fake_gpu):
    chosen = GLAConfig(chunk_size=16)
    tuning.save_cache({"Test GPU | triton x": {"T4096-K32-V64-bfloat16": entry(chosen)}})
    table = tuning.tuning_table(torch.bfloat16)
    assert len(table) == 4 and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "chunk_size"].item() == 16
    summary = tuning.tuning_summary(table)
    assert summary.splitlines()[1].split()[:3] == ["32", "64", "4096"]  # K, V, T bucket
    assert "C16" in summary and "1.160" in summary


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_tuning_needs_a_gpu():
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        tuning.tune()


def test_a_candidate_that_does_not_run_is_recorded_and_skipped(cache_file, fake_gpu, monkeypatch):
    """K = V = 128: a config that needs more shared memory than the GPU has fails to compile; the
    tuner records its error, keeps timing the others and chooses among those that ran."""
    def time_config(inputs, cfg):
        if cfg.chunk_size >= 64:
            raise RuntimeError("OutOfResources: shared memory, Required: 262144, Hardware limit: 232448")
        return 1.0 + cfg.chunk_size / 100 + cfg.chunk_warps / 1000

    monkeypatch.setattr(tuning, "time_config", time_config)
    monkeypatch.setattr(tuning, "random_inputs", lambda *shape: None)
    rows = tuning.tune(shapes=[(2, 65536, 16, 128, 128), (128, 1024, 6, 32, 64)], dtype=torch.bfloat16)
    assert [row["key"] for row in rows] == ["T65536-K128-V128-bfloat16", "T1024-K32-V64-bfloat16"]
    entry = tuning.load_cache()["Test GPU | triton x"]["T65536-K128-V128-bfloat16"]
    assert entry["config"]["chunk_size"] == 16 and entry["default_ms"] is None  # the default is chunk 64
    failed = [cand for cand in entry["table"] if cand["ms"] is None]
    assert failed and all("OutOfResources" in cand["error"] for cand in failed)
    table = tuning.tuning_table(torch.bfloat16)
    assert set(zip(table["K"], table["V"])) == {(128, 128), (32, 64)}
    summary = tuning.tuning_summary(table).splitlines()
    assert summary[0].split()[:3] == ["K", "V", "T"]
    assert summary[1].split()[:3] == ["32", "64", "1024"]
    assert summary[2].split()[:3] == ["128", "128", "65536"]
    assert summary[2].split()[6] == "-"  # no chunk-128 candidate ran


def test_no_candidate_running_leaves_the_shape_untuned(cache_file, fake_gpu, monkeypatch):
    def time_config(inputs, cfg):
        raise RuntimeError("OutOfResources")

    monkeypatch.setattr(tuning, "time_config", time_config)
    monkeypatch.setattr(tuning, "random_inputs", lambda *shape: None)
    lines = []
    assert tuning.tune(shapes=[(2, 65536, 16, 128, 128)], progress=lines.append) == []
    assert "not tuned: no launch config runs" in lines[-1]
    assert tuning.get_config(65536, 128, 128, torch.bfloat16) == default_config(128, 128)


def test_tile_candidates_are_distinct_launches():
    wide = tile_candidates(DEFAULT_CONFIG, 128, 128)
    assert [(c.chunk_block_k, c.chunk_block_v) for c in wide] == [(128, 128), (64, 64), (32, 64), (32, 32)]
    dig = tile_candidates(DEFAULT_CONFIG, 32, 64)
    assert [(c.chunk_block_k, c.chunk_block_v) for c in dig] == [(32, 64), (32, 32)]
    narrow = tile_candidates(DEFAULT_CONFIG, 16, 16)  # every tile clips to the one 16 x 16 tile
    assert [(c.chunk_block_k, c.chunk_block_v) for c in narrow] == [(16, 16)]


def test_a_forced_chunk_size_keeps_every_other_tuned_field(cache_file, fake_gpu):
    tuned = GLAConfig(chunk_size=32, state_block_v=16, state_warps=2, chunk_warps=2, num_stages=2)
    tuning.save_cache({"Test GPU | triton x": {tuning.shape_key(4096, 64, 64, torch.bfloat16): entry(tuned)}})
    forced = tuning.get_config(4096, 64, 64, torch.bfloat16, chunk_size=64)
    assert forced == dataclasses.replace(tuned, chunk_size=64)


def test_a_cache_written_before_dot_operands_loads_with_fp32_dots(cache_file, fake_gpu):
    old = dict(chunk_size=64, state_block_v=32, state_warps=4, chunk_warps=4, num_stages=3, state_block_k=8)
    key = tuning.shape_key(4096, 32, 64, torch.bfloat16)
    tuning.save_cache({"Test GPU | triton x": {key: {**entry(GLAConfig(chunk_size=64)), "config": old}}})
    assert tuning.get_config(4096, 32, 64, torch.bfloat16) == GLAConfig(chunk_size=64, dot_operands="fp32")
    assert DEFAULT_CONFIG.dot_operands == "fp32"


def test_launch_config_carries_dot_operands_as_ints(cache_file, fake_gpu, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the interpreter never reads the cache
    tuned = GLAConfig(chunk_size=64, dot_operands="bf16")
    tuning.save_cache({"Test GPU | triton x": {tuning.shape_key(4096, 32, 64, torch.bfloat16): entry(tuned)}})
    arguments = tuning.launch_config(4096, 32, 64, torch.bfloat16)
    assert all(type(value) is int for value in arguments)
    assert GLAConfig.from_op_arguments(arguments) == tuned
    assert GLAConfig.from_op_arguments([16, 32, 4, 4, 3]) == GLAConfig(16, 32, 4, 4, 3)  # a shorter list
    with pytest.raises(ValueError, match="dot_operands"):
        GLAConfig(dot_operands="fp8")


@pytest.mark.parametrize("dtype, count", [(torch.bfloat16, 24), (torch.float16, 23)])
def test_bf16_dot_operands_are_one_more_candidate_for_bf16_inputs(cache_file, fake_gpu, monkeypatch, dtype,
                                                                   count):
    """8 chunk x warps candidates, 2 state tiles (the distinct ones at K=32, V=64), 3 steps of the
    chunk-wide loops, the two-pass backward, the state scan in place of the walk, 8 state-scan splits,
    then (bf16 only) the best of those with bf16 dots."""
    monkeypatch.setattr(tuning, "time_config", lambda inputs, cfg: 1.0 - 0.5 * (cfg.dot_operands == "bf16"))
    monkeypatch.setattr(tuning, "random_inputs", lambda *shape: None)
    tuning.tune(shapes=[(32, 4096, 6, 32, 64)], dtype=dtype)
    entry = tuning.load_cache()["Test GPU | triton x"][tuning.shape_key(4096, 32, 64, dtype)]
    assert len(entry["table"]) == count
    assert entry["config"]["dot_operands"] == ("bf16" if dtype == torch.bfloat16 else "fp32")


def test_untuned_configs_are_per_head_dim_class():
    assert default_config(32, 64) == DEFAULT_CONFIG
    assert default_config(48, 64) == default_config(64, 64) == GLAConfig(output_block_inner=64)
    assert default_config(128, 128).output_block_v == 128
    assert tuning.get_config(4096, 64, 64, torch.bfloat16, tune_allowed=False) == default_config(64, 64)


def test_the_state_walk_takes_few_chunks_or_many_programs():
    cfg = GLAConfig()
    assert walks(cfg, 4096, 32 * 6, 32, 64)  # 64 chunks
    assert not walks(cfg, 16384, 8 * 6, 32, 64)  # 256 chunks, 48 programs
    assert walks(cfg, 16384, 8 * 16, 128, 128)  # 128 (batch, head) pairs x 4 tiles = 512 programs
    assert not walks(GLAConfig(state_walk_min_programs=0), 16384, 8 * 16, 128, 128)
    assert not walks(GLAConfig(state_walk_max_chunks=0, state_walk_min_programs=0), 256, 512 * 6, 32, 64)


def test_the_tuner_tries_the_other_state_pass():
    walking = walk_candidates(GLAConfig(), 4096, 32 * 6, 32, 64)  # 64 chunks: walks, so the scan is tried
    assert [(cfg.state_walk_max_chunks, cfg.state_walk_min_programs) for cfg in walking] == [(0, 0)]
    short_chunks = walk_candidates(GLAConfig(chunk_size=32), 16384, 8 * 6, 32, 64)  # scans: walk instead
    assert [cfg.state_walk_max_chunks for cfg in short_chunks] == [512]
