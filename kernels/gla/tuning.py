"""Per-GPU tuning of the chunked GLA launch configuration, persisted in a JSON cache.

The cache file maps "<GPU name> | triton <version>" -> shape key -> best config and the timing
table it was chosen from. Shape key: T bucket (next power of two), K, V, dtype. Location:
$GLA_TUNING_CACHE if set, else $XDG_CACHE_HOME (or ~/.cache)/gla-diffusion/tuning.json.
Lookups never tune: ``tune()`` (``python bench.py tune``) writes the cache, later runs read it.
"""

import dataclasses
import functools
import json
import os
from pathlib import Path

import torch
import triton

from kernels import interpreting

from .chunk import Launch, chunk_gla_bwd, chunk_gla_fwd
from .config import CHUNK_SIZES, DEFAULT_CONFIG, GLAConfig, chunk_candidates, state_candidates

# DiG's GLA head dims in every size: K = D / (2H) = 32, V = D / H = 64. Token counts of the
# resolutions 256 .. 2048 at patch 2 (and 4096 px) with B * T = 131072 tokens, H = 6 (DiG-S; the kernel
# benchmark's shapes, bench/spec.py).
DIG_TUNING_SHAPES = tuple((131072 // T, T, 6, 32, 64) for T in (256, 1024, 4096, 9216, 12544, 16384, 65536))

_memory_cache: dict = {}


def cache_path() -> Path:
    """Where the tuning cache lives (overridable with GLA_TUNING_CACHE)."""
    if os.environ.get("GLA_TUNING_CACHE"):
        return Path(os.environ["GLA_TUNING_CACHE"])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "gla-diffusion" / "tuning.json"


@functools.cache
def device_key(device_index: int | None = None) -> str:
    """GPU model and Triton version: a config tuned on one is not trusted on another.
    Cached: get_config runs on every GLA call and must stay a dictionary lookup."""
    name = torch.cuda.get_device_name(device_index) if torch.cuda.is_available() else "cpu"
    return f"{name} | triton {triton.__version__}"


def shape_key(T: int, K: int, V: int, dtype: torch.dtype) -> str:
    return f"T{max(16, triton.next_power_of_2(T))}-K{K}-V{V}-{str(dtype).replace('torch.', '')}"


def load_cache(path: Path | None = None) -> dict:
    path = path or cache_path()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"GLA tuning cache {path} is not valid JSON ({err}); delete it or re-run "
                         "`python bench.py tune --force`.") from err


def save_cache(cache: dict, path: Path | None = None) -> Path:
    """Write atomically, so an interrupted tune never leaves half a file."""
    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def get_config(T, K, V, dtype, chunk_size=None, tune_allowed=True) -> GLAConfig:
    """The cached config for this GPU and shape class, or the default. Never tunes.

    ``chunk_size`` forces the chunk size (the other fields still come from the cache when its
    entry has that chunk size). Without a GPU (``tune_allowed=False``) the cache is not read.
    """
    cfg = DEFAULT_CONFIG
    if tune_allowed and torch.cuda.is_available():
        key = (device_key(), shape_key(T, K, V, dtype))
        if key not in _memory_cache:
            entry = load_cache().get(key[0], {}).get(key[1])
            _memory_cache[key] = GLAConfig(**entry["config"]) if entry else None
        cfg = _memory_cache[key] or cfg
    if chunk_size is not None and chunk_size != cfg.chunk_size:
        cfg = dataclasses.replace(cfg, chunk_size=chunk_size)
    return cfg


@torch.compiler.assume_constant_result
def launch_config(T: int, K: int, V: int, dtype: torch.dtype, chunk_size: int | None = None) -> tuple:
    """get_config as a tuple of ints, for the GLA op's arguments. torch.compile evaluates it once at
    trace time (a constant of the graph): the cache file is never read inside a compiled step."""
    cfg = get_config(T, K, V, dtype, chunk_size=chunk_size, tune_allowed=not interpreting())
    return dataclasses.astuple(cfg)


def time_config(inputs, cfg: GLAConfig) -> float:
    """Median ms of forward + backward with this config (compiled and warmed up first)."""
    q, k, v, g, do = inputs
    scale = q.shape[-1] ** -0.5
    launch = Launch(q, v, cfg, reverse=False, transpose=False, gate_scale=None)

    def step():
        o, h, gl = chunk_gla_fwd(q, k, v, g, scale, None, launch)
        chunk_gla_bwd(q, k, v, g, h, gl, do, None, scale, launch)

    step()
    return triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")


def random_inputs(B, T, H, K, V, dtype):
    """DiG-like inputs: gates logsigmoid(x) / 16 as the model makes them."""
    q, k = (torch.randn(B, T, H, K, device="cuda", dtype=dtype) for _ in range(2))
    v, do = (torch.randn(B, T, H, V, device="cuda", dtype=dtype) for _ in range(2))
    g = (torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16).to(dtype)
    return q, k, v, g, do


def tune_shape(B, T, H, K, V, dtype, progress=print) -> dict:
    """Two stages: chunk size x chunk warps, then the state-pass split. Returns the cache entry."""
    inputs = random_inputs(B, T, H, K, V, dtype)
    table = []
    best = None
    for stage in (chunk_candidates, state_candidates):
        base = best[0] if best else DEFAULT_CONFIG
        for cfg in stage(base):
            ms = time_config(inputs, cfg)
            table.append({**cfg.as_dict(), "ms": round(ms, 4)})
            progress(f"  T={T} {cfg} -> {ms:.3f} ms")
            if best is None or ms < best[1]:
                best = (cfg, ms)
    default_ms = time_config(inputs, DEFAULT_CONFIG)
    return {"config": best[0].as_dict(), "ms": round(best[1], 4), "default_ms": round(default_ms, 4),
            "shape": [B, T, H, K, V], "table": table}


def tune(shapes=None, dtype=torch.bfloat16, force=False, progress=print) -> list[dict]:
    """Tune every shape class that the cache lacks (all with ``force``) and save the cache.
    ``shapes``: (B, T, H, K, V) tuples, default DIG_TUNING_SHAPES.

    Returns one summary row per shape: shape, chosen config, its ms and the default's ms.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("Tuning times Triton kernels and needs a CUDA GPU; none is visible.")
    cache = load_cache()
    dev = device_key()
    entries = cache.setdefault(dev, {})
    rows, tuned_now = [], set()
    for B, T, H, K, V in shapes or DIG_TUNING_SHAPES:
        key = shape_key(T, K, V, dtype)
        if key not in entries or (force and key not in tuned_now):  # 9216 and 16384 share a bucket
            tuned_now.add(key)
            progress(f"tuning {key} (B={B}, H={H}) on {dev}")
            entries[key] = tune_shape(B, T, H, K, V, dtype, progress)
            save_cache(cache)
        e = entries[key]
        rows.append({"key": key, "T": T, **e["config"], "ms": e["ms"], "default_ms": e["default_ms"]})
    _memory_cache.clear()
    return rows


def tuning_table(dtype=torch.bfloat16):
    """Every timed candidate of this GPU's cache for dtype, one row each, best flagged (pandas)."""
    import pandas as pd

    rows = []
    for key, entry in sorted(load_cache().get(device_key(), {}).items()):
        if not key.endswith(str(dtype).replace("torch.", "")):
            continue
        for cand in entry["table"]:
            config = {name: cand[name] for name in GLAConfig().as_dict()}
            rows.append({"gpu": device_key(), "shape_key": key, "B,T,H,K,V": entry["shape"], **cand,
                         "chosen": config == entry["config"],
                         "default": GLAConfig(**config) == DEFAULT_CONFIG})
    return pd.DataFrame(rows)


def tuning_summary(table) -> str:
    """Per shape: best ms for each chunk size, the chosen config and the default config's ms."""
    header = " ".join(f"chunk {c:>3}" for c in CHUNK_SIZES)
    lines = [f"{'shape':<24} {header}   chosen config -> ms   default when tuned -> ms"]
    for key, rows in sorted(table.groupby("shape_key", sort=False), key=lambda item: shape_length(item[0])):
        best = [rows[rows.chunk_size == c].ms.min() for c in CHUNK_SIZES]
        chosen = rows[rows.chosen].iloc[0]
        default_ms = rows[rows.default].ms.min() if rows.default.any() else float("nan")
        lines.append(f"{key:<24} " + " ".join(f"{b:9.3f}" for b in best)
                     + f"   C{chosen.chunk_size} bv{chosen.state_block_v} sw{chosen.state_warps}"
                       f" cw{chosen.chunk_warps} st{chosen.num_stages} -> {chosen.ms:.3f}   {default_ms:.3f}")
    return "\n".join(lines)


def shape_length(key: str) -> int:
    """The T bucket of a shape key ("T4096-K32-V64-bfloat16" -> 4096), for sorting."""
    return int(key[1:].split("-")[0])


__all__ = ["CHUNK_SIZES", "cache_path", "get_config", "launch_config", "tune", "DIG_TUNING_SHAPES"]
