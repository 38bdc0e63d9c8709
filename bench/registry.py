"""Model families the harness can benchmark: each declares how to build itself, nothing else.

A family is a model prefix ("DiT") plus the backend keyword that makes it what its label says
("Flash-DiT" = DiT with attn_backend="flash"). The harness owns the loop (timing, memory,
OOM handling, output); a family only declares its model and when it is unavailable, in the
spirit of tritonbench's operators. Optional providers are probed once, lazily, and an
unavailable one yields a row with status "unavailable" and the reason, never a substitute.

Extra families (stand-ins in tests, a user's own model) come from plugin files: Python files
that call `register(Family(...))`; `load_plugin(path)` imports one, and the per-point
subprocess loads the same files so it sees the same families.
"""

import functools
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import one_line

SIZES = ("S", "B", "L", "XL")


@functools.cache
def import_error(module: str) -> str | None:
    """None if `module` imports, else a one-line reason (the exception, type and message)."""
    try:
        importlib.import_module(module)
    except Exception as error:  # broken extensions raise OSError, RuntimeError...
        return f"{module} does not import ({one_line(error, 200)})"
    return None


def needs_cuda(device: str) -> str | None:
    return None if device == "cuda" else "needs a CUDA GPU (SDPA's flash and cuDNN kernels are CUDA only)"


def needs_mamba_on_cuda(device: str) -> str | None:
    # On CUDA without mamba_ssm, scan "auto" would run the PyTorch reference loop, which is not the
    # DiS speed (minutes per step at 16k tokens). On CPU the reference is the only scan and the
    # row is labelled scan=reference by its backend column.
    if device != "cuda":
        return None
    reason = import_error("mamba_ssm")
    return None if reason is None else f"{reason}; the reference scan is not the DiS speed"


def needs_fla(device: str) -> str | None:
    return import_error("fla.ops.gla")


@dataclass(frozen=True)
class Family:
    """How to build one benchmarked model family.

    name: label in CSVs and figures ("Flash-DiT"); prefix: model prefix in `models` ("DiT");
    backend_kw(device) -> keyword arguments for `models.create_model`; unavailable(device) ->
    None or the reason this family cannot run there; build(name, input_size, device, **kw) ->
    nn.Module, by default `models.create_model` (imported lazily: the parent never needs it).
    """

    name: str
    prefix: str
    backend_kw: Callable[[str], dict] = field(default=lambda device: {})
    unavailable: Callable[[str], str | None] = field(default=lambda device: None)
    build: Callable | None = None

    def model_name(self, size: str, patch: int) -> str:
        return f"{self.prefix}-{size}/{patch}"

    def create(self, size: str, patch: int, input_size: int, device: str):
        """Build the model (a torch.nn.Module) for one point on `device` (fp32 weights)."""
        kwargs = self.backend_kw(device)
        if self.build is not None:
            model = self.build(self.model_name(size, patch), input_size, **kwargs)
        else:
            models = importlib.import_module("models")
            model = models.create_model(self.model_name(size, patch), input_size, **kwargs)
        return model.to(device)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; returns it, so it can wrap a definition."""
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The registered family called `name`; ValueError listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose from {', '.join(FAMILIES)}.")
    return FAMILIES[name]


def load_plugin(path: str) -> None:
    """Import a Python file that registers extra families (its top level calls `register`)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"plugin file {str(path)!r} does not exist.")
    spec = importlib.util.spec_from_file_location(f"bench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file: its failure is their input error, in one line
        raise ValueError(f"plugin file {str(path)!r} fails to load: {one_line(error)}") from None


register(Family("DiT", "DiT", lambda device: {"attn_backend": "naive"}))
register(Family("DiT-SDPA", "DiT", lambda device: {"attn_backend": "sdpa"}))
register(Family("Flash-DiT", "DiT", lambda device: {"attn_backend": "flash"}, needs_cuda))
register(Family("DiT-cuDNN", "DiT", lambda device: {"attn_backend": "cudnn"}, needs_cuda))
register(Family("DiS", "DiS", lambda device: {"scan_backend": "auto"}, needs_mamba_on_cuda))
def our_gla(device: str) -> dict:
    """Our Triton GLA on a GPU, our chunked PyTorch GLA on a CPU."""
    return {"gla_backend": "triton" if device == "cuda" else "torch"}


register(Family("DiG", "DiG", our_gla))
register(Family("DiG-fla", "DiG", lambda device: {"gla_backend": "fla"}, needs_fla))
# DiG in its first formulation (models/dig_reference.py: tokens re-ordered between blocks, one Linear
# per projection, unfused glue), on the same GLA kernels: the "before" of the fused DiG.
def build_reference_dig(name, input_size, **kwargs):
    return importlib.import_module("models.dig_reference").create_reference_model(name, input_size, **kwargs)


register(Family("DiG-reference", "DiG", our_gla, build=build_reference_dig))

# The families of the paper's Fig. 2 (DiT, DiS, DiG) and Fig. 3 (DiS, DiT, Flash-DiT, DiG), with
# DiT on cuDNN attention (faster than FlashAttention-2 on Hopper) and DiG on fla's kernel beside them.
FIG2_FAMILIES = ("DiT", "Flash-DiT", "DiT-cuDNN", "DiS", "DiG", "DiG-fla")
FIG3_FAMILIES = ("DiS", "DiT", "Flash-DiT", "DiT-cuDNN", "DiG", "DiG-fla")
REFERENCE_SCAN_LABEL = " (reference scan, not the DiS speed)"


def is_reference_scan(backend: str) -> bool:
    """True for a row that ran DiS's PyTorch reference scan: labelled so, never quoted as the DiS speed."""
    return "scan=reference" in str(backend)
