"""What to measure, without importing torch: one point, a sweep's settings, the grids of the jobs.

The command line checks everything here before it imports torch or starts a point, so a mistake
is answered in a fraction of a second and nothing is measured for nothing.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path

from .registry import SIZES, get_family

MODES = ("train", "infer")
DTYPES = ("bf16", "fp16", "fp32")  # autocast dtypes; weights and optimizer state stay fp32
# How a step executes (bench/exec_modes.py): eager PyTorch, torch.compile of the model, or the whole
# step captured in one CUDA graph and replayed.
EXEC_MODES = ("eager", "compile", "graph")
# Inductor without its own CUDA graphs (whole-step graphs are the 'graph' mode). "max-autotune-no-
# cudagraphs" would also benchmark GEMM templates for every shape: minutes more compile per point.
DEFAULT_COMPILE_MODE = "default"

# How points run, per device. GPU: >= 10 steps and >= 2 s, so a 40 ms step (S at 256) gets 50
# samples and a 1.5 s step (XL at 2048) 10. CPU: the main job must measure all its points within 3
# minutes on 2 cores, where a point's process spends ~5 s starting (torch, torch._dynamo for the
# optimizer) before its first step, so 1 warm-up + 2 timed steps. fp32 on CPU: this AVX2 CPU has no
# bf16 arithmetic, and a DiT-S/2 step at 256 px took 11.8 s under bf16 autocast against 1.1 s in
# fp32 (0.085 vs 0.88 img/s). One intra-op thread: on 2 shared cores PyTorch's spinning OpenMP
# threads made a DiT-S/2 step at 64 px take 2.5-6.7 s instead of 0.35 s. 60 s per point: the
# slowest point of the CPU job, DiS at 64 px, took 11 s (DiS at 128 px: 26 s).
# Execution modes: all three on a GPU (each family at its best, and the paper's eager protocol); eager
# on a CPU (no CUDA graphs; Inductor took 145 s to compile DiT-S/2 on these 2 cores).
DEVICE_DEFAULTS = {
    "cuda": {"warmup": 3, "min_reps": 10, "min_time_s": 2.0, "max_reps": 100, "timeout_s": 600.0,
             "threads": 0, "dtype": "bf16", "exec_modes": EXEC_MODES},
    "cpu": {"warmup": 1, "min_reps": 2, "min_time_s": 0.0, "max_reps": 2, "timeout_s": 60.0,
            "threads": 1, "dtype": "fp32", "exec_modes": ("eager",)},
}

# ---------------------------------------------------------------------------------- the grids

FIG2_RESOLUTIONS = tuple(range(256, 2049, 256))
FIG2_BATCH = 4  # S/2 at batch 4: DiT with materialised attention runs up to 1280 px on an H200, then OOM
FIG3_BATCH = {1024: 4, 2048: 2}  # batch 2 at 2048 keeps DiT-XL/2 with FlashAttention in memory
# The CPU main job, batch 1: 10 points, 68 s of points on 2 idle cores (5-11 s each), 1.5-2x that
# while other jobs share the cores. DiS runs at 64 px only: its PyTorch reference scan (not the DiS
# speed, labelled so) took 26 s for a point at 128 px (50 s on the loaded machine) and 85 s at 256.
CPU_GRID = {"DiT": (64, 128, 256), "DiT-SDPA": (64, 128, 256), "DiG": (64, 128, 256), "DiS": (64,)}
CPU_BATCH = 1
# It starts no point after 110 s, so that with the 60 s limit of the point still running and the
# report (~10 s) it ends within 3 minutes however loaded the machine is.
CPU_TIME_BUDGET_S = 110.0

# The kernel benchmark's grid (bench/kernel_bench.py): T of 256..2048 px at patch 2, and 4096 px.
KERNEL_LENGTHS = (256, 1024, 4096, 9216, 12544, 16384, 65536)
KERNEL_TOKENS = 131072  # B * T, fixed
KERNEL_PROVIDERS = ("fla", "ours-triton", "ours-torch", "naive", "sdpa-flash", "sdpa-cudnn")
# The head-dim classes (K, V) of the GLA rows and their heads H: (32, 64) is DiG's head at every size
# (K = D / 2H, V = D / H), with DiG-S/2's H=6; (64, 64) with H=8 and (128, 128) with H=16 are the
# common heads of other GLA models, where fla is fast: fwd+bwd bf16 1.88 ms at K=V=64, H=8, B=8,
# T=4096 on the H200 (ours 2.86), and 1.43 ms at K=V=128, H=16, B=4, T=2048 in fla's README (GB200).
# `--heads` overrides H for every class.
KERNEL_HEADS = {(32, 64): 6, (64, 64): 8, (128, 128): 16}
KERNEL_HEAD_DIMS = tuple(KERNEL_HEADS)
# The SDPA attention rows (head dim 64, DiT's) are measured with the DiG-S class only: 6 heads of 64
# are DiT-S/2's attention at DiG-S/2's width.
ATTENTION_HEAD_CLASS = (32, 64)
# The two parts of `bench.py kernels`: the GLA comparison over T and head dims, and the fused glue
# ops of a DiG block (bench/glue_providers.py).
KERNEL_OPS = ("gla", "glue")
GLUE_PROVIDERS = ("ours-triton", "torch-ref")  # the fused Triton op and its eager PyTorch *_ref twin
GLUE_RESOLUTION = 2048  # px: the glue rows' images, 128 x 128 = 16384 tokens at patch 2
# `bench.py tune`: the DiG shapes (kernels/gla/tuning.py's DIG_TUNING_SHAPES, seven T) for (32, 64);
# four T buckets for the other classes keep the tuning run short.
TUNE_LENGTHS = (1024, 4096, 16384, 65536)


def parse_head_dims(text: str) -> tuple[int, int]:
    """'32x64' -> (32, 64); ValueError for anything that is not two positive whole numbers KxV."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--head-dims takes KxV pairs of positive whole numbers like 32x64; got {text!r}.")
    return int(parts[0]), int(parts[1])


def heads_for(head_dims: tuple[int, int], heads: int | None = None) -> int:
    """H of a head-dim class: `heads` if given, else KERNEL_HEADS's; ValueError for a class with
    no head count on record (the caller gives --heads)."""
    if heads is not None:
        return heads
    if tuple(head_dims) not in KERNEL_HEADS:
        known = ", ".join(f"{k}x{v}" for k, v in KERNEL_HEADS)
        raise ValueError(f"no head count on record for {head_dims[0]}x{head_dims[1]} (only for {known}); "
                         "give --heads.")
    return KERNEL_HEADS[tuple(head_dims)]


def key_field(default=None, **kwargs):
    """A PointSpec field that identifies the point: a column of the CSV and part of its row key."""
    return field(default=default, metadata={"key": True}, **kwargs)


@dataclass(frozen=True)
class PointSpec:
    """One measurement: a model at one resolution, batch, mode and dtype, with its step counts.

    Fields made with key_field() identify the point in the CSV (with the machine, see
    bench.results.MODEL_KEY); a new dimension of the sweep is one more key_field here. Step
    settings left None take the device's DEVICE_DEFAULTS.
    """

    family: str = key_field()
    size: str = key_field()
    patch: int = key_field()
    resolution: int = key_field()
    batch: int = key_field()
    mode: str = key_field("train")
    dtype: str | None = key_field()
    exec_mode: str = key_field("eager")  # rows written before execution modes existed ran eager
    device: str = "cpu"
    compile_mode: str = DEFAULT_COMPILE_MODE  # torch.compile's mode, for exec_mode "compile"
    warmup: int | None = None
    min_reps: int | None = None
    min_time_s: float | None = None
    max_reps: int | None = None
    threads: int | None = None  # torch intra-op threads; 0 leaves torch's default (all cores)
    plugins: tuple = ()
    profile_steps: int = 0  # > 0: after timing, profile this many steps (bench.py profile)

    def __post_init__(self):
        for name, default in DEVICE_DEFAULTS[self.device].items():
            if name in self.__dataclass_fields__ and getattr(self, name) is None:
                object.__setattr__(self, name, default)

    @property
    def latent_size(self) -> int:
        return self.resolution // 8  # the VAE downsamples by 8

    @property
    def tokens_per_image(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def label(self) -> str:
        return (f"{self.family}-{self.size}/{self.patch} {self.resolution}px b{self.batch} {self.mode} "
                f"{self.dtype} {self.exec_mode}")


KEY_FIELDS = tuple(f.name for f in fields(PointSpec) if f.metadata.get("key"))
# What a row written before a key field existed stands for (rows never lack the others).
KEY_DEFAULTS = {f.name: str(f.default) for f in fields(PointSpec) if f.metadata.get("key")
                and f.default is not None}


def check_point_args(resolution: int, patch: int, batch: int) -> None:
    """ValueError naming the argument if a point cannot be built."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    if patch < 1:
        raise ValueError(f"patch must be at least 1, got {patch}.")
    if resolution < 8 * patch or resolution % (8 * patch):
        raise ValueError(f"resolution {resolution} must be a positive multiple of 8 * patch = {8 * patch} "
                         "(VAE factor 8 times the patch size).")


def batch_for(resolution: int, patch: int, batch: int | None, tokens: int | None) -> int:
    """The given batch, or max(1, tokens // tokens_per_image) in fixed-token-budget mode."""
    if (batch is None) == (tokens is None):
        raise ValueError("give exactly one of batch or tokens.")
    if tokens is not None:
        if tokens < 1:
            raise ValueError(f"tokens must be at least 1, got {tokens}.")
        return max(1, tokens // ((resolution // 8 // patch) ** 2))
    return batch


@dataclass
class SweepSettings:
    """What to measure and how. batch or tokens (fixed token budget per step) must be given, not
    both; settings left None take the device's DEVICE_DEFAULTS."""

    families: tuple
    sizes: tuple
    resolutions: tuple
    device: str
    patch: int = 2
    modes: tuple = ("train",)
    exec_modes: tuple | None = None
    compile_mode: str = DEFAULT_COMPILE_MODE
    batch: int | None = None
    tokens: int | None = None
    dtype: str | None = None
    warmup: int | None = None
    min_reps: int | None = None
    min_time_s: float | None = None
    max_reps: int | None = None
    timeout_s: float | None = None
    threads: int | None = None
    force: bool = False
    plugins: tuple = ()
    time_budget_s: float | None = None

    def setting(self, name: str):
        """A setting, or the device default when it is not set."""
        value = getattr(self, name)
        return DEVICE_DEFAULTS[self.device][name] if value is None else value


def check_grid(settings: SweepSettings) -> None:
    """ValueError naming the first unknown family, size, mode or dtype, or an impossible point."""
    for family in settings.families:
        get_family(family)
    for values, known, what in ((settings.sizes, SIZES, "size"), (settings.modes, MODES, "mode"),
                                ((settings.dtype,) if settings.dtype else (), DTYPES, "dtype"),
                                (settings.exec_modes or (), EXEC_MODES, "execution mode")):
        unknown = [value for value in values if value not in known]
        if unknown:
            raise ValueError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(known)}.")
    for resolution in settings.resolutions:
        check_point_args(resolution, settings.patch,
                         batch_for(resolution, settings.patch, settings.batch, settings.tokens))


def plan(settings: SweepSettings) -> list[PointSpec]:
    """All points of the sweep, in size, resolution, family, mode, execution mode order; ValueError on
    bad input."""
    check_grid(settings)
    steps = {name: settings.setting(name) for name in ("warmup", "min_reps", "min_time_s", "threads")}
    return [PointSpec(family=family, size=size, patch=settings.patch, resolution=resolution,
                      batch=batch_for(resolution, settings.patch, settings.batch, settings.tokens),
                      mode=mode, dtype=settings.setting("dtype"), exec_mode=exec_mode, device=settings.device,
                      compile_mode=settings.compile_mode,
                      max_reps=max(settings.setting("max_reps"), steps["min_reps"]),
                      plugins=tuple(str(Path(p).resolve()) for p in settings.plugins), **steps)
            for size in settings.sizes for resolution in settings.resolutions
            for family in settings.families for mode in settings.modes
            for exec_mode in settings.setting("exec_modes")]
