"""Kernel benchmark: GLA forward and forward+backward (ours, fla, naive) against SDPA attention.

Shapes of DiG-S/2: H=6, K=32, V=64 (the head dims of every DiG size), bf16, B*T = 131072 tokens, T
from 256 to 65536; attention uses head dim 64, non-causal, the same B, T, H. Each timing (do_bench median
and p20/p80 on CUDA) sits beside the relative error of o (and of the gradients for fwd+bwd)
against a float64 reference, the achieved GB/s of the bytes that must move, the ratio to the
HBM floor (those bytes over the device-to-device copy bandwidth measured at the start of the
run) and the ratio to fla. Rows go to a long-format CSV as each measurement finishes.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import csvstore
from .env import environment, timestamp
from .errors import one_line
from .kernel_providers import (
    ATTENTION_HEAD_DIM,
    PROVIDERS,
    attention_bytes_per_token_head,
    errors_against_reference,
    gla_bytes_per_token_head,
    make_inputs,
)
from .point import is_out_of_memory
from .schema import KERNEL_COLUMNS, KERNEL_KEY, KERNEL_REQUIRED
from .spec import KERNEL_LENGTHS, KERNEL_TOKENS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MODES = ("fwd", "fwd+bwd")


def record(path: Path, rows: list) -> None:
    """Add rows to a kernels CSV (see csvstore.record)."""
    csvstore.record(path, rows, KERNEL_COLUMNS, KERNEL_KEY, required=KERNEL_REQUIRED, kind="kernels")


@dataclass
class KernelSettings:
    device: str
    lengths: tuple = KERNEL_LENGTHS
    tokens: int = KERNEL_TOKENS
    H: int = 6
    K: int = 32
    V: int = 64
    dtype: str = "bf16"
    providers: tuple | None = None  # names; None = all
    modes: tuple = MODES


def time_ms(fn, device: str) -> tuple:
    """(median, p20, p80) milliseconds of fn(): do_bench on CUDA, perf_counter over 5 calls on CPU."""
    if device == "cuda":
        import triton.testing

        return tuple(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8]))
    fn()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return tuple(np.percentile(samples, [50, 20, 80]))


def copy_bandwidth_gbps(device: str) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second / 1e9 (512 MiB on CUDA)."""
    numel = 2**28 if device == "cuda" else 2**24
    source = torch.randn(numel, device=device, dtype=torch.bfloat16)
    target = torch.empty_like(source)
    median_ms = time_ms(lambda: target.copy_(source), device)[0]
    return 2 * source.numel() * source.element_size() / (median_ms * 1e-3) / 1e9


class KernelRun:
    """One benchmark run: shared settings, environment and the CSV it writes to."""

    def __init__(self, settings: KernelSettings, csv_path: Path):
        self.settings, self.csv_path = settings, Path(csv_path)
        self.dtype = DTYPES[settings.dtype]
        self.env = environment(settings.device)
        self.fla_ms: dict = {}

    def row(self, provider: str, impl: str, mode: str, T: int, metric: str, unit: str, value=None,
            spread=None, status="ok", error="", reference="") -> dict:
        s = self.settings
        p20, p80 = spread if spread is not None else (value, value)
        batch = max(1, s.tokens // T) if T else 0  # T = 0: the device-copy row, no sequence
        return {"provider": provider, "impl": impl, "mode": mode, "T": T, "B": batch,
                "H": s.H, "K": s.K, "V": s.V, "dtype": s.dtype, "metric": metric, "unit": unit,
                "median": "" if value is None else value, "p20": "" if value is None else p20,
                "p80": "" if value is None else p80, "status": status, "error": error,
                "reference": reference, **self.env, "timestamp": timestamp()}

    def bytes_moved(self, kind: str, mode: str, T: int) -> int:
        s, itemsize = self.settings, self.dtype.itemsize
        per = (gla_bytes_per_token_head(s.K, s.V, itemsize, mode) if kind == "gla"
               else attention_bytes_per_token_head(ATTENTION_HEAD_DIM, itemsize, mode))
        return per * max(1, s.tokens // T) * T * s.H

    def measure(self, provider, mode: str, T: int, bandwidth: float) -> list:
        """Rows of one provider at one mode and T (time, GB/s, ratios, errors)."""
        s, B, grad = self.settings, max(1, self.settings.tokens // T), mode == "fwd+bwd"
        inputs = make_inputs(provider.kind, B, T, s.H, s.K, s.V, self.dtype, s.device, grad)
        fn = provider.load()
        with torch.set_grad_enabled(grad):
            o = fn(*inputs)
        do = torch.randn_like(o) if grad else None
        grads = torch.autograd.grad(o, inputs, do) if grad else None
        checks = errors_against_reference(provider.kind, inputs, o.detach(), grads, do)
        del o, grads
        if grad:
            median, p20, p80 = time_ms(lambda: torch.autograd.grad(fn(*inputs), inputs, do), s.device)
        else:
            with torch.no_grad():
                median, p20, p80 = time_ms(lambda: fn(*inputs), s.device)
        moved = self.bytes_moved(provider.kind, mode, T)
        floor_ms = moved / (bandwidth * 1e9) * 1e3
        name, impl, ref = provider.name, provider.impl, checks["reference"]
        rows = [self.row(name, impl, mode, T, "time", "ms", median, (p20, p80)),
                self.row(name, impl, mode, T, "bandwidth", "GB/s", moved / (median * 1e-3) / 1e9),
                self.row(name, impl, mode, T, "floor_ratio", "x", median / floor_ms)]
        if name == "fla":
            self.fla_ms[(mode, T)] = median
        elif (mode, T) in self.fla_ms and provider.kind == "gla":
            rows.append(self.row(name, impl, mode, T, "fla_ratio", "x", median / self.fla_ms[(mode, T)]))
        for metric in ("rel_err_o", "rel_err_grads") if grad else ("rel_err_o",):
            value = checks[metric]
            if value is None:
                rows.append(self.row(name, impl, mode, T, metric, "rel", status="skipped", reference=ref,
                                     error="not checked: float64 T x T reference too large at this T"))
            elif not np.isfinite(value):
                rows.append(self.row(name, impl, mode, T, metric, "rel", value, status="error",
                                     error="non-finite error: NaN or inf in the output", reference=ref))
            else:
                rows.append(self.row(name, impl, mode, T, metric, "rel", value, reference=ref))
        return rows

    def run(self, progress=print) -> pd.DataFrame:
        """Measure every (T, mode, provider); returns the rows written."""
        s, written = self.settings, []
        bandwidth = copy_bandwidth_gbps(s.device)
        written.append(self.row("device-copy", "torch copy_ (bytes read + written)", "copy", 0, "bandwidth",
                                "GB/s", bandwidth))
        record(self.csv_path, written[-1:])
        providers = [p for p in PROVIDERS if s.providers is None or p.name in s.providers]
        for T in s.lengths:
            for mode in s.modes:
                floor_ms = self.bytes_moved("gla", mode, T) / (bandwidth * 1e9) * 1e3
                rows = [self.row("hbm-floor", "GLA bytes / copy bandwidth", mode, T, "time", "ms", floor_ms)]
                record(self.csv_path, rows)
                written += rows
                for provider in providers:
                    rows = self.measure_safely(provider, mode, T, bandwidth)
                    record(self.csv_path, rows)
                    written += rows
                    first = rows[0]
                    result = f"{first['median']:.3f} ms" if first["status"] == "ok" else first["error"]
                    progress(f"T={T:>6} {mode:<8} {provider.name:<12} {first['status']:<11} {result}")
        return pd.DataFrame(written)

    def measure_safely(self, provider, mode: str, T: int, bandwidth: float) -> list:
        """measure(), with unavailability, OOM and other failures turned into one status row."""
        name, impl = provider.name, provider.impl
        reason = provider.unavailable(self.settings.device, T)
        if reason:
            status = "skipped" if reason.startswith("skipped") else "unavailable"
            return [self.row(name, impl, mode, T, "time", "ms", status=status, error=reason)]
        try:
            return self.measure(provider, mode, T, bandwidth)
        except Exception as error:  # recorded with its message; the run goes on
            status = "OOM" if is_out_of_memory(error) else "error"
            return [self.row(name, impl, mode, T, "time", "ms", status=status, error=one_line(error))]
        finally:
            if self.settings.device == "cuda":
                torch.cuda.empty_cache()  # an OOM'd provider must not shrink the next one's memory


def summary_table(rows: pd.DataFrame) -> str:
    """Printed table: time (ms) per T and provider for each mode; status where it did not run."""
    times = rows[rows["metric"] == "time"].copy()
    times["cell"] = [f"{m:.3f}" if s == "ok" else s for m, s in zip(times["median"], times["status"])]
    parts = []
    for mode, group in times.groupby("mode", sort=False):
        table = group.pivot_table(index="T", columns="provider", values="cell", aggfunc="first", sort=False)
        parts.append(f"{mode} time (ms), B*T fixed:\n{table.to_string()}")
    return "\n\n".join(parts)
