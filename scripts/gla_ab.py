"""Forward and forward + backward time of the Triton GLA at chosen launch configs, for an A/B of two trees.

    PYTHONPATH=<tree> python scripts/gla_ab.py --label b --configs 64:4 64:8:chunk_block_inner=16 --out f.csv

Runs the tree's own kernels (kernels.gla of the tree on PYTHONPATH) at the kernel benchmark's shapes
(bf16, B*T = 131072, DiG-like gates logsigmoid(x) / 16) with the launch configs of --configs:
CHUNK:WARPS, then any other GLAConfig fields of that tree as :FIELD=VALUE (the rest at GLAConfig's
defaults), or "default[:FIELD=VALUE...]", each head-dim class's untuned config with those fields.
Each row: medians and the 10th / 90th percentiles of triton.testing.do_bench, and the largest
relative error of o, dq, dk, dv, dg against chunk_gla_torch in float64 on the first sequence.
--compile-only compiles every config (run several such processes at once to fill Triton's cache in
parallel, then time in one process).
"""

import argparse
import csv
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch
import triton

# kernels from the tree on PYTHONPATH (before this checkout, whose bench/ is appended for its helpers)
sys.path.append(str(Path(__file__).resolve().parents[1]))
from bench.numerics import worst_error  # noqa: E402
from kernels.gla import chunk_gla_torch  # noqa: E402
from kernels.gla import config as gla_config  # noqa: E402
from kernels.gla.chunk import Launch, chunk_gla_bwd, chunk_gla_fwd  # noqa: E402
from kernels.gla.config import GLAConfig  # noqa: E402
from kernels.gla.tuning import random_inputs  # noqa: E402

TOKENS = 131072
FIELDS = ["label", "commit", "K", "V", "H", "T", "B", "chunk", "warps", "config", "max_rel_err",
          "fwd_ms", "fwd_p10", "fwd_p90", "fwdbwd_ms", "fwdbwd_p10", "fwdbwd_p90", "error"]
SHAPES = {"32x64": (6, (4096, 65536)), "64x64": (8, (4096,)), "128x128": (16, (4096,))}  # H, T


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--configs", nargs="+", type=parse_config, default=[{}],
                        help="CHUNK:WARPS[:FIELD=VALUE...], or default[:FIELD=VALUE...]: the tree's untuned "
                             "config of each head-dim class, with those fields (default: default)")
    parser.add_argument("--head-dims", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--lengths", nargs="+", type=int, help="T values in place of each class's own")
    parser.add_argument("--out")
    parser.add_argument("--compile-only", action="store_true")
    return parser.parse_args(argv)


def errors(inputs, launch, scale):
    """Largest relative error of o and the four gradients on sequence 0, against float64 (NaN if any is)."""
    q, k, v, g, do = (x[:1].contiguous() for x in inputs)
    o, h, gl = chunk_gla_fwd(q, k, v, g, scale, None, launch)
    grads = chunk_gla_bwd(q, k, v, g, h, gl, do, None, scale, launch)[:4]
    leaves = [x.double().requires_grad_() for x in (q, k, v, g)]
    ref, _ = chunk_gla_torch(*leaves, scale=scale)
    ref.backward(do.double())
    return worst_error((o, *grads), (ref, *(x.grad for x in leaves)))


def spread(times):
    times = sorted(times)
    return [round(times[int(p * (len(times) - 1))], 4) for p in (0.5, 0.1, 0.9)]


def parse_config(spec: str) -> GLAConfig | dict:
    """"CHUNK:WARPS[:FIELD=VALUE...]" -> GLAConfig of the tree on PYTHONPATH (int values, else strings);
    "default[:FIELD=VALUE...]" -> those fields as a dict, to go onto each class's untuned config
    (class_default); argparse.ArgumentTypeError (a one-line usage error) for a malformed spec or a
    field the tree lacks."""
    try:
        head, *extra = spec.split(":")
        fields = dict(item.split("=", 1) for item in (extra if head == "default" else extra[1:]))
        fields = {name: int(value) if value.isdigit() else value for name, value in fields.items()}
        if head == "default":
            replace(GLAConfig(), **fields)  # the same checks as a CHUNK:WARPS spec
            return fields
        return replace(GLAConfig(), chunk_size=int(head), chunk_warps=int(extra[0]), **fields)
    except (TypeError, ValueError, IndexError) as error:
        raise argparse.ArgumentTypeError(f"bad config {spec!r} (CHUNK:WARPS[:FIELD=VALUE...] or "
                                         f"default[:FIELD=VALUE...]): {error}") from None


def class_default(K: int, V: int) -> GLAConfig:
    """The tree's untuned config of the head-dim class (trees before per-class defaults: GLAConfig())."""
    return getattr(gla_config, "default_config", lambda K, V: GLAConfig())(K, V)


def measure(dims, T, H, cfg, compile_only):
    K, V = map(int, dims.split("x"))
    if isinstance(cfg, dict):
        cfg = replace(class_default(K, V), **cfg)
    inputs = random_inputs(TOKENS // T, T, H, K, V, torch.bfloat16)
    q, k, v, g, do = inputs
    scale = K**-0.5
    launch = Launch(q, v, cfg, reverse=False, transpose=False, gate_scale=None)

    def forward():
        return chunk_gla_fwd(q, k, v, g, scale, None, launch)

    def forward_backward():
        o, h, gl = forward()
        chunk_gla_bwd(q, k, v, g, h, gl, do, None, scale, launch)

    forward_backward()
    if compile_only:
        return None
    launch_small = Launch(q[:1], v[:1], cfg, reverse=False, transpose=False, gate_scale=None)
    row = dict(K=K, V=V, H=H, T=T, B=TOKENS // T, chunk=cfg.chunk_size, warps=cfg.chunk_warps,
               config=" ".join(f"{name}={value}" for name, value in cfg.as_dict().items()),
               max_rel_err=f"{errors(inputs, launch_small, scale):.2e}")
    for name, fn in (("fwd", forward), ("fwdbwd", forward_backward)):
        row[f"{name}_ms"], row[f"{name}_p10"], row[f"{name}_p90"] = spread(
            triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="all"))
    return row


def append_row(path, row):
    """One row onto the CSV at path (its header first when new), so a run cut short keeps what it measured."""
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main(argv=None):
    args = parse_args(argv)
    for dims in args.head_dims:
        H, lengths = SHAPES[dims]
        for T in args.lengths or lengths:
            for cfg in args.configs:
                try:
                    row = measure(dims, T, H, cfg, args.compile_only)
                except Exception as error:  # noqa: BLE001 -- one config failing must not lose the rest
                    row = dict(K=dims, T=T, config=cfg, error=" ".join(str(error).split())[:200])
                if row:
                    row = dict(label=args.label, commit=os.environ.get("BENCH_GIT_COMMIT", ""), **row)
                    print(row, flush=True)
                    if args.out:
                        append_row(args.out, row)


if __name__ == "__main__":
    sys.exit(main())
