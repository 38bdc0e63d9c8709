"""Per-GPU tuning of the chunked GLA launch configuration, persisted in a JSON cache.

The cache file maps "<GPU name> | triton <version>" -> shape key -> best config and the timing
table it was chosen from. Shape key: T bucket (next power of two), K, V, dtype: each head-dim class
(K, V) has its own configs (``python bench.py tune --head-dims 32x64 64x64 128x128``). Location:
$GLA_TUNING_CACHE if set, else $XDG_CACHE_HOME (or ~/.cache)/gla-diffusion/tuning.json.
Lookups never tune: ``tune()`` (``python bench.py tune``) writes the cache, later runs read it.
"""

import dataclasses
import functools
import json
import os
import warnings
from pathlib import Path

import torch
import triton

from kernels import interpreting

from .chunk import Launch, chunk_gla_bwd, chunk_gla_fwd
from .config import (
    CHUNK_SIZES,
    DEFAULT_CONFIG,
    GLAConfig,
    chunk_candidates,
    default_config,
    dot_candidates,
    fusion_candidates,
    inner_candidates,
    output_candidates,
    state_candidates,
    tile_candidates,
    walk_candidates,
)

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


def cached_config(fields: dict, shape: str) -> GLAConfig | None:
    """The GLAConfig of a cache entry's fields (fields it lacks take their defaults), or None with a
    warning when it names a field this version does not have (an entry tuned by an older version, e.g.
    state_walk_block_t, removed at 32b01ac): that shape then runs its default config."""
    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(GLAConfig)})
    if unknown:
        warnings.warn(f"GLA tuning cache {cache_path()}: the entry for {shape} names fields this version "
                      f"does not have ({', '.join(unknown)}); it runs the default config. Re-run "
                      "`python bench.py tune --force`.", stacklevel=3)
        return None
    return GLAConfig(**fields)


def get_config(T, K, V, dtype, chunk_size=None, tune_allowed=True) -> GLAConfig:
    """The cached config for this GPU and shape class, or the default. Never tunes.

    ``chunk_size`` forces the chunk size (the other fields still come from the cache when its
    entry has that chunk size). Without a GPU (``tune_allowed=False``) the cache is not read.
    """
    cfg = default_config(K, V)
    if tune_allowed and torch.cuda.is_available():
        key = (device_key(), shape_key(T, K, V, dtype))
        if key not in _memory_cache:
            entry = load_cache().get(key[0], {}).get(key[1])
            _memory_cache[key] = cached_config(entry["config"], key[1]) if entry else None
        cfg = _memory_cache[key] or cfg
    if chunk_size is not None and chunk_size != cfg.chunk_size:
        cfg = dataclasses.replace(cfg, chunk_size=chunk_size)  # every other field as tuned
    return cfg


@torch.compiler.assume_constant_result
def launch_config(T: int, K: int, V: int, dtype: torch.dtype, chunk_size: int | None = None) -> tuple:
    """get_config as a tuple of ints (GLAConfig.op_arguments), for the GLA op's arguments. torch.compile
    evaluates it once at trace time (a constant of the graph): the cache file is never read inside a
    compiled step."""
    cfg = get_config(T, K, V, dtype, chunk_size=chunk_size, tune_allowed=not interpreting())
    return cfg.op_arguments()


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


def time_or_error(inputs, cfg: GLAConfig) -> tuple[float | None, str]:
    """(ms, "") of time_config, or (None, the error in one line) for a config that does not compile
    or launch at this shape (e.g. more shared memory than the GPU has, at K = V = 128 and chunk 128)."""
    try:
        return time_config(inputs, cfg), ""
    except Exception as error:  # noqa: BLE001 -- recorded in the table; the other candidates still run
        return None, " ".join(f"{type(error).__name__}: {error}".split())[:300]


def tune_shape(B, T, H, K, V, dtype, progress=print) -> dict:
    """Eight stages (config.py): chunk size x chunk warps, the chunk kernels' state tiles, the chunk-wide
    loops' step, the output pass's tile and step, one or two backward passes, a state walk or scan, the
    scan's split, then bf16 dot operands (bf16 inputs). Returns the cache entry;
    RuntimeError if no candidate runs at this shape. Candidates that fail have ms None and their error
    in the table."""
    inputs = random_inputs(B, T, H, K, V, dtype)
    table = []
    best = None
    stages = (chunk_candidates, functools.partial(tile_candidates, K=K, V=V),
              functools.partial(inner_candidates, K=K, V=V), functools.partial(output_candidates, K=K, V=V),
              functools.partial(fusion_candidates, K=K, V=V),
              functools.partial(walk_candidates, T=T, batch_heads=B * H, K=K, V=V), state_candidates,
              functools.partial(dot_candidates, dtype=dtype))
    for stage in stages:
        base = best[0] if best else default_config(K, V)
        for cfg in stage(base):
            ms, error = time_or_error(inputs, cfg)
            table.append({**cfg.as_dict(), "ms": None if ms is None else round(ms, 4),
                          **({"error": error} if error else {})})
            progress(f"  T={T} K={K} V={V} {cfg} -> " + (f"{ms:.3f} ms" if ms is not None else error))
            if ms is not None and (best is None or ms < best[1]):
                best = (cfg, ms)
    if best is None:
        raise RuntimeError(f"no launch config runs at B={B} T={T} H={H} K={K} V={V}: {table[0]['error']}")
    default_ms, _ = time_or_error(inputs, default_config(K, V))
    return {"config": best[0].as_dict(), "ms": round(best[1], 4),
            "default_ms": None if default_ms is None else round(default_ms, 4),
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
            try:
                entries[key] = tune_shape(B, T, H, K, V, dtype, progress)
            except RuntimeError as error:  # the other shapes are still tuned; this one keeps the default
                progress(f"not tuned: {error}")
                continue
            save_cache(cache)  # after each shape: an interrupted run keeps what it tuned
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
            config = {name: cand[name] for name in DEFAULT_CONFIG.as_dict() if name in cand}
            rows.append({"gpu": device_key(), "shape_key": key, **parse_shape_key(key),
                         "B,T,H,K,V": entry["shape"], **cand, "chosen": config == entry["config"],
                         "default": GLAConfig(**config) == default_config(*entry["shape"][3:])})
    return pd.DataFrame(rows)


def tuning_summary(table) -> str:
    """Per head-dim class (K, V) and T bucket: best ms for each chunk size, the chosen config and the
    default config's ms ("-" where no candidate of a chunk size ran). Takes tuning_table()'s frame or
    a tuning.csv read back (older ones lack the K, V, T columns: they come from the shape key)."""
    header = " ".join(f"chunk {c:>3}" for c in CHUNK_SIZES)
    lines = [f"{'K':>4} {'V':>4} {'T':>6} {header}   chosen config -> ms   default when tuned -> ms"]
    groups = sorted(table.groupby("shape_key", sort=False), key=lambda item: shape_order(item[0]))
    for key, rows in groups:
        shape = parse_shape_key(key)
        best = [rows[rows.chunk_size == c].ms.min() for c in CHUNK_SIZES]
        chosen = rows[rows.chosen].iloc[0]
        default_ms = rows[rows.default].ms.min() if rows.default.any() else float("nan")
        dots = chosen.get("dot_operands", "fp32")  # a tuning.csv from before the field: fp32
        tile = f"{chosen.get('chunk_block_k', 64)}x{chosen.get('chunk_block_v', 64)}"  # likewise
        lines.append(f"{shape['K']:>4} {shape['V']:>4} {shape['T']:>6} "
                     + " ".join(f"{b:9.3f}" if b == b else f"{'-':>9}" for b in best)
                     + f"   C{chosen.chunk_size} tile{tile} bv{chosen.state_block_v} sw{chosen.state_warps}"
                       f" cw{chosen.chunk_warps} st{chosen.num_stages} {dots}-dots -> {chosen.ms:.3f}"
                       f"   {default_ms:.3f}")
    return "\n".join(lines)


def parse_shape_key(key: str) -> dict:
    """{"T", "K", "V", "dtype"} of a shape key: "T4096-K32-V64-bfloat16" -> T 4096, K 32, V 64."""
    T, K, V, dtype = key.split("-")
    return {"T": int(T[1:]), "K": int(K[1:]), "V": int(V[1:]), "dtype": dtype}


def shape_order(key: str) -> tuple:
    """Sort key of a shape key: head-dim class, then T bucket."""
    shape = parse_shape_key(key)
    return shape["K"], shape["V"], shape["T"]


__all__ = ["CHUNK_SIZES", "cache_path", "get_config", "launch_config", "tune", "DIG_TUNING_SHAPES"]
