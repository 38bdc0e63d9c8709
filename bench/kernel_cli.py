"""`python bench.py kernels` and `python bench.py tune`: their options and the checks of them.

Like bench/cli.py, this module imports neither torch nor pandas: a mistake on the command line is
one line on stderr and exit code 2 before anything heavy is imported or measured.
"""

import sys

from .errors import UsageError
from .spec import (
    GLUE_PROVIDERS,
    GLUE_RESOLUTION,
    KERNEL_HEAD_DIMS,
    KERNEL_HEADS,
    KERNEL_LENGTHS,
    KERNEL_OPS,
    KERNEL_PROVIDERS,
    KERNEL_TOKENS,
    TUNE_LENGTHS,
    heads_for,
    parse_head_dims,
)

ALL_PROVIDERS = (*KERNEL_PROVIDERS, *(name for name in GLUE_PROVIDERS if name not in KERNEL_PROVIDERS))
HEAD_DIMS_HELP = ("head-dim classes KxV (default " + " ".join(f"{k}x{v}" for k, v in KERNEL_HEAD_DIMS)
                  + ", with H = " + ", ".join(f"{h} for {k}x{v}" for (k, v), h in KERNEL_HEADS.items()) + ")")


def head_dims_and_heads(args) -> tuple[tuple, dict]:
    """((K, V) classes, {class: H}) of --head-dims and --heads; UsageError for a bad value."""
    from .cli import split_list

    try:
        given = [parse_head_dims(text) for text in split_list(args.head_dims)]
        classes = tuple(dict.fromkeys(given)) or KERNEL_HEAD_DIMS
        return classes, {dims: heads_for(dims, args.heads) for dims in classes}
    except ValueError as error:
        raise UsageError(str(error)) from None


def tuning_shapes(classes: tuple, heads: dict, tokens: int = KERNEL_TOKENS) -> list[tuple]:
    """(B, T, H, K, V) to tune: (32, 64) at the kernel benchmark's seven T (DiG's shapes), the other
    classes at TUNE_LENGTHS, B * T = tokens."""
    return [(max(1, tokens // T), T, heads[(K, V)], K, V)
            for K, V in classes for T in (KERNEL_LENGTHS if (K, V) == (32, 64) else TUNE_LENGTHS)]


def cmd_kernels(args):
    from .cli import (
        DEVICE_DEFAULTS,
        KERNELS_CSV,
        check_existing_csv,
        ints,
        output_dir,
        resolve_device,
        split_list,
    )
    from .schema import KERNEL_REQUIRED

    lengths = ints(args.lengths)
    if lengths and min(lengths) < 1:
        raise UsageError(f"--lengths must be positive, got {min(lengths)}.")
    providers = tuple(split_list(args.providers)) or None
    unknown = [name for name in providers or () if name not in ALL_PROVIDERS]
    if unknown:
        raise UsageError(f"unknown provider {unknown[0]!r}; choose from {', '.join(ALL_PROVIDERS)}.")
    head_dims, heads = head_dims_and_heads(args)
    if args.glue_resolution % 16:
        raise UsageError(f"--glue-resolution must be a multiple of 16 px (VAE factor 8 times patch 2), "
                         f"got {args.glue_resolution}.")
    out = output_dir(args)
    check_existing_csv(out / KERNELS_CSV, KERNEL_REQUIRED, "kernels")
    device = resolve_device(args)
    if device != "cuda" and not args.allow_cpu:
        raise UsageError("the kernel benchmark times GPU kernels; no CUDA GPU here "
                         "(--allow-cpu runs the PyTorch providers for a smoke test).")
    from .kernel_bench import KernelRun, KernelSettings, summary_table

    settings = KernelSettings(device=device, tokens=args.tokens, head_dims=head_dims, heads=args.heads,
                              dtype=args.dtype or DEVICE_DEFAULTS[device]["dtype"], providers=providers,
                              ops=tuple(dict.fromkeys(args.ops)), glue_resolution=args.glue_resolution)
    if lengths:
        settings.lengths = lengths
    csv_path = out / KERNELS_CSV
    rows = KernelRun(settings, csv_path).run(progress=print)
    print(summary_table(rows))
    print(f"wrote {csv_path}")


def cmd_tune(args):
    from .cli import output_dir, resolve_device

    classes, heads = head_dims_and_heads(args)
    out = output_dir(args)
    if resolve_device(args) != "cuda":
        raise UsageError("tune times the Triton kernel on this machine's GPU; torch sees no CUDA GPU.")
    from .kernel_bench import DTYPES as TORCH_DTYPES

    try:
        from kernels.gla import tuning
    except ImportError as error:
        print(f"bench.py tune: kernels.gla.tuning does not import ({error})", file=sys.stderr)
        raise SystemExit(1) from None
    dtype = TORCH_DTYPES[args.dtype]
    tuning.tune(shapes=tuning_shapes(classes, heads), dtype=dtype, force=args.force, progress=print)
    table = tuning.tuning_table(dtype)
    csv_path = out / "tuning.csv"
    table.to_csv(csv_path, index=False)
    print(tuning.tuning_summary(table))
    print(f"cache: {tuning.cache_path()}; every candidate's time: {csv_path}")


def add_head_dim_options(parser, lengths_note: str = ""):
    from .cli import whole

    parser.add_argument("--head-dims", nargs="+", metavar="KxV", help=HEAD_DIMS_HELP + lengths_note)
    parser.add_argument("--heads", type=whole(1), help="H for every head-dim class (default: as above)")


def add_kernel_options(parser):
    from .cli import DTYPES, add_output, defaults, whole

    add_output(parser)
    parser.add_argument("--ops", nargs="+", choices=KERNEL_OPS, default=list(KERNEL_OPS),
                        help="gla: GLA vs fla vs SDPA attention over T and head dims; glue: the fused "
                             "glue ops of a DiG block vs their PyTorch twins (default both)")
    parser.add_argument("--lengths", nargs="+", help="GLA sequence lengths T (default 256 .. 65536)")
    parser.add_argument("--tokens", type=whole(1), default=KERNEL_TOKENS,
                        help=f"GLA B*T, fixed (default {KERNEL_TOKENS})")
    add_head_dim_options(parser)
    parser.add_argument("--glue-resolution", type=whole(16), default=GLUE_RESOLUTION, metavar="PX",
                        help=f"image size of the glue rows' DiG-S/2 (batch 4) and DiG-XL/2 (batch 2) blocks, "
                             f"patch 2 (default {GLUE_RESOLUTION}: 16384 tokens)")
    parser.add_argument("--dtype", choices=DTYPES, help="input dtype " + defaults("dtype"))
    parser.add_argument("--providers", nargs="+", help=f"of {', '.join(ALL_PROVIDERS)} (default all; the "
                                                        "SDPA ones run beside the 32x64 class only)")
    parser.add_argument("--allow-cpu", action="store_true", help="smoke-test the PyTorch providers on CPU")


def add_tune_options(parser):
    from .cli import DTYPES, add_output

    add_output(parser)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    add_head_dim_options(parser, "; T: the seven of `kernels` for 32x64, "
                                 + " ".join(map(str, TUNE_LENGTHS)) + " for the others, B*T = 131072")
    parser.add_argument("--force", action="store_true", help="re-tune shapes already in the cache")
