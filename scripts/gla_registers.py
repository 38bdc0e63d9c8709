"""Registers and spills per thread of the GLA chunk kernels for an NVIDIA GPU, on a machine without one.

    python scripts/gla_registers.py [--arch 90] [--chunk 64] [--warps 4] [--dots fp32|bf16] [--inner 32] \
        [--gate-cumsum] [--bf16-states] KxV[:BKxBV] ...

Each KxV head-dim class is compiled as kernels/gla/chunk.py launches it (its launch_plan of the class's
default config, config.default_config), with [BK, BV] state tiles (default: chunk_block_k x
chunk_block_v, clipped to the head), for
the given compute capability (Triton's bundled ptxas), and cuobjdump's resource usage is printed per
kernel: registers per thread (255 is the cap) and spill stack bytes. Only the register side of a
launch config: on the H200 narrower tiles and 8 warps spilled less but ran slower (reports/h200-2026-12-02c).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)  # before triton.jit runs: interpreted kernels do not compile

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels.gla.chunk import SUB_CHUNK, launch_plan  # noqa: E402
from kernels.gla.config import DEFAULT_CONFIG, block_sizes, default_config  # noqa: E402
from kernels.gla.state_walk import chunk_state_walk_kernel  # noqa: E402

FP32_BUFFERS = ("h", "gl", "gc", "dh", "dg_work", "ptot", "x", "x0")  # fp32 work buffers (the inputs: bf16)
STATE_BUFFERS = ("h", "dh", "x")  # bf16 with --bf16-states (GLAConfig.bf16_states)
SCALARS = ("scale", "gate_scale")
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def signature(fn, constants: dict, bf16_states: bool = False) -> dict:
    """Triton argument types of a chunk kernel: bf16 tensors, fp32 work buffers, int32 sizes and strides."""
    types = {}
    for name in fn.arg_names:
        if name in constants:
            types[name] = "constexpr"
        elif name in FP32_BUFFERS and not (bf16_states and name in STATE_BUFFERS):
            types[name] = "*fp32"
        elif name in SCALARS:
            types[name] = "fp32"
        elif name in ("T", "NT", "E") or name.endswith(("_sb", "_st")):
            types[name] = "i32"
        else:
            types[name] = "*bf16"
    return types


def resources(fn, constants: dict, arch: int, warps: int, stages: int,
              bf16_states: bool = False) -> tuple[int, int]:
    """(registers per thread, spill stack bytes) of fn compiled for sm_<arch>."""
    constants = {name: value for name, value in constants.items() if name in fn.arg_names}
    source = ASTSource(fn=fn, signature=signature(fn, constants, bf16_states),
                       constexprs={(fn.arg_names.index(name),): value for name, value in constants.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                            options=dict(num_warps=warps, num_stages=stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    return int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1))


def parse_class(text: str) -> tuple[int, int, int, int]:
    """"32x64" or "128x128:64x64" -> (K, V, tile K, tile V)."""
    match = re.fullmatch(r"(\d+)x(\d+)(?::(\d+)x(\d+))?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected KxV or KxV:BKxBV like 128x128:64x64, got {text!r}")
    K, V, tile_k, tile_v = match.groups()
    default = DEFAULT_CONFIG
    return int(K), int(V), int(tile_k or default.chunk_block_k), int(tile_v or default.chunk_block_v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes", nargs="+", type=parse_class, metavar="KxV[:BKxBV]")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H200)")
    parser.add_argument("--chunk", type=int, default=DEFAULT_CONFIG.chunk_size, choices=(16, 32, 64, 128))
    parser.add_argument("--warps", type=int, default=DEFAULT_CONFIG.chunk_warps, choices=(1, 2, 4, 8))
    parser.add_argument("--stages", type=int, default=DEFAULT_CONFIG.num_stages)
    parser.add_argument("--inner", type=int, default=DEFAULT_CONFIG.chunk_block_inner,
                        choices=(16, 32, 64, 128),
                        help="step of the chunk-wide loops over a summed head dim (chunk_block_inner)")
    parser.add_argument("--dots", choices=("fp32", "bf16"), default="fp32", help="dot operands (GLAConfig)")
    parser.add_argument("--bf16-states", action="store_true",
                        help="bf16 stored states h, dh (GLAConfig.bf16_states)")
    parser.add_argument("--gate-cumsum", action="store_true",
                        help="the output pass reads the walk's gate cumsum (GLAConfig.output_gate_cumsum)")
    args = parser.parse_args(argv)
    if not CUOBJDUMP.exists():
        print(f"gla_registers: Triton's cuobjdump is missing ({CUOBJDUMP}); install triton with its NVIDIA "
              "backend.", file=sys.stderr)
        return 2
    prec = "bf16" if args.dots == "bf16" else "tf32"  # config.dot_precision for bf16 inputs
    for K, V, tile_k, tile_v in args.classes:
        full_k, full_v = block_sizes(K, V)
        print(f"K={K} V={V} tiles {min(tile_k, full_k)}x{min(tile_v, full_v)}, chunk {args.chunk}, "
              f"{args.warps} warps, {args.dots} dots, inner step {args.inner}, "
              f"sm_{args.arch}:")
        base = dict(H=1, K=K, V=V, BT=args.chunk, BC=SUB_CHUNK, REVERSE=False, TRANSPOSE=False,
                    GATE_LOGSIGMOID=True, PREC=prec, USE_GC=args.gate_cumsum)
        plan = launch_plan(K, V, replace(default_config(K, V), chunk_block_k=tile_k, chunk_block_v=tile_v,
                                         chunk_block_inner=args.inner))
        _, walk_bk, walk_bv, _ = plan["fwd local state"]
        for way in ("fwd", "bwd"):
            plan[f"state walk {way}"] = (chunk_state_walk_kernel, walk_bk, walk_bv,
                                         dict(USE_X0=True, BACKWARD=way == "bwd"))
        for label, (fn, bk, bv, extra) in plan.items():
            regs, spill = resources(fn, dict(base, BK=bk, BV=bv, **extra), args.arch, args.warps, args.stages,
                                    args.bf16_states)
            print(f"  {label:16s} [{bk:>3}, {bv:>3}] tile: {regs:3d} registers, {spill:5d} spill bytes "
                  "per thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
