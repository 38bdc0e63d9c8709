#!/usr/bin/env bash
# Build flash-attn 2.8.3's flash_attn_2_cuda extension offline, for the local GPU only and only the kernels
# DiT needs, in place.
#
# usage: bash scripts/build_flash_attn.sh [SDIST] [BUILD_DIR]
#   SDIST      default .sdist/flash_attn-2.8.3.tar.gz; fetch it where there is internet:
#              pip download --no-deps --no-build-isolation --no-binary :all: flash-attn==2.8.3 -d .sdist
#   BUILD_DIR  default .build/flash_attn; the source is unpacked to BUILD_DIR/flash_attn-<version>
#   FLASH_ATTN_HEAD_DIMS  kernels to build, default "64 96" (of 32 64 96 128 192 256). A head dim d runs the
#              smallest kernel >= d, as in the full build: DiT-S/B/L (384/6, 768/12, 1024/16) have d = 64,
#              DiT-XL 1152/16 = 72 runs the 96 kernel.
#   FLASH_ATTN_DTYPES     default "bf16 fp16" (either or both).
#
# Needs what scripts/build_mamba.sh needs, on an sm_80 or newer GPU. The full build compiles 72 kernel files
# (6 head dims x 2 dtypes x causal or not x forward, split-KV forward, backward) for 4 architectures: hours on
# 16 cores. This one compiles, for sm_<local> only:
#   - forward, split-KV forward and backward for each head dim and dtype, non-causal: 12 .cu files by
#     default. flash_attn_func reaches the split-KV kernel whenever batch x heads x ceil(T/64) blocks fill
#     less than 80% of two waves on the GPU (DiT-S/2 at 256 px, batch 4: 4 x 6 x 5 = 120 < 211 on 132 SMs).
#     fp16 comes along because it costs no wall time: 12 files plus flash_api.cpp are 13 single-threaded
#     jobs, all at once on 16 cores, so the build takes as long as its slowest file (a backward) either way.
#   - with dropout, ALiBi, softcapping and sliding windows compiled out (flash-attn's own
#     FLASHATTENTION_DISABLE_* switches, which also make flash_api.cpp refuse them with a clear error):
#     DiT uses none of them, and each kernel file would otherwise instantiate every combination of them.
#     The kernels DiT runs are the same template instances as in the full build.
# The dispatch is cut to match (static_switch.h's HEADDIM_SWITCH and FP16_SWITCH, the two causal switches
# in flash_api.cpp): a head dim, dtype or causal flag this build lacks raises a RuntimeError naming this
# script, not an undefined symbol at import. FLASH_ATTENTION_FORCE_BUILD=TRUE keeps pip's bdist_wheel path
# from downloading a prebuilt wheel, which fails offline.
# On success it prints the PYTHONPATH entry that makes `from flash_attn import flash_attn_func` work.
set -euo pipefail

BUILD_SCRIPT=build_flash_attn.sh
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"

SDIST=${1:-.sdist/flash_attn-2.8.3.tar.gz}
BUILD_DIR=${2:-.build/flash_attn}
export FLASH_ATTN_HEAD_DIMS=${FLASH_ATTN_HEAD_DIMS:-64 96}
export FLASH_ATTN_DTYPES=${FLASH_ATTN_DTYPES:-bf16 fp16}

require_sdist "$SDIST" flash-attn==2.8.3
check_toolchain
(( ARCH >= 80 )) || die "flash-attn 2 needs an sm_80 (Ampere) or newer GPU; this one is sm_$ARCH."
unpack_sdist "$SDIST" "$BUILD_DIR"

# Patch setup.py (sources, compiled-out features), static_switch.h and flash_api.cpp (dispatch). Each
# anchor must match exactly as often as in 2.8.3, or the script stops before compiling anything.
BUILD_SCRIPT=$BUILD_SCRIPT SRC=$SRC "$PYTHON" - <<'PY' || exit 2
import os
import re
import sys

SCRIPT, SRC = os.environ["BUILD_SCRIPT"], os.environ["SRC"]
STOCK_HEAD_DIMS = (32, 64, 96, 128, 192, 256)  # HEADDIM_SWITCH's kernels in flash-attn 2.8.3
COMPILED_OUT = ["-DFLASHATTENTION_DISABLE_DROPOUT", "-DFLASHATTENTION_DISABLE_ALIBI",
                "-DFLASHATTENTION_DISABLE_SOFTCAP", "-DFLASHATTENTION_DISABLE_LOCAL"]


def die(message):
    print(f"{SCRIPT}: {message}", file=sys.stderr)
    sys.exit(2)


def parse_list(name, allowed):
    values = os.environ[name].split()
    bad = [v for v in values if v not in allowed]
    if not values or bad or len(set(values)) != len(values):
        die(f"{name}={os.environ[name]!r}: give distinct values out of {' '.join(allowed)}.")
    return [v for v in allowed if v in values]  # in dispatch order


head_dims = [int(d) for d in parse_list("FLASH_ATTN_HEAD_DIMS", [str(d) for d in STOCK_HEAD_DIMS])]
dtypes = parse_list("FLASH_ATTN_DTYPES", ["bf16", "fp16"])


def patch(relative_path, old, new, count=1):
    """Replace `old` (a string, or a compiled regex) by `new`; `old` must occur exactly `count` times."""
    path = os.path.join(SRC, relative_path)
    with open(path) as f:
        text = f.read()
    found = len(old.findall(text)) if isinstance(old, re.Pattern) else text.count(old)
    if found != count:
        shown = old.pattern if isinstance(old, re.Pattern) else old
        die(f"{relative_path} has changed: expected {count} match(es) of {shown[:80]!r}, found {found}.")
    text = old.sub(lambda match: new, text) if isinstance(old, re.Pattern) else text.replace(old, new)
    with open(path, "w") as f:
        f.write(text)
    return text


def macro(header, body):
    """A C macro from its first line and body lines, with the line continuations."""
    return " \\\n".join([header, *body]) + "\n"


def unbuilt(what):
    return f'"this flash-attn build (scripts/build_flash_attn.sh) {what}"'


# setup.py: compile only the kept kernel files, with the unused features compiled out (cxx too: the
# TORCH_CHECKs that refuse them are in flash_api.cpp)
sources_list = re.compile(r'sources=\[\n\s*"csrc/flash_attn/flash_api\.cpp",\n((?:\s*"csrc/flash_attn/src/[^"]+\.cu",\n)+)\s*\],')
listed = sources_list.findall(open(os.path.join(SRC, "setup.py")).read())
kept = [f"csrc/flash_attn/src/flash_{kind}_hdim{d}_{dtype}_sm80.cu"
        for kind in ("fwd", "fwd_split", "bwd") for d in head_dims for dtype in dtypes]
for source in kept:
    if listed and f'"{source}"' not in listed[0]:
        die(f"setup.py no longer lists {source}.")
    if not os.path.isfile(os.path.join(SRC, source)):
        die(f"{source} is missing from the sdist.")
new_sources = "".join(f'\n                "{source}",' for source in ["csrc/flash_attn/flash_api.cpp", *kept])
patch("setup.py", sources_list, f"sources=[{new_sources}\n            ],")
patch("setup.py", '"cxx": compiler_c17_flag,', f'"cxx": compiler_c17_flag + {COMPILED_OUT},')
patch("setup.py", '"nvcc": append_nvcc_threads(nvcc_flags + cc_flag),',
      f'"nvcc": append_nvcc_threads(nvcc_flags + cc_flag + {COMPILED_OUT}),')

# static_switch.h: HEADDIM_SWITCH keeps the built kernels, each for the head dims it serves in the full build
switch_h = "csrc/flash_attn/src/static_switch.h"
text = open(os.path.join(SRC, switch_h)).read()
headdim_switch = re.compile(r"#define HEADDIM_SWITCH\(HEADDIM, \.\.\.\)[^\n]*\\\n(?:[^\n]*\\\n)*[^\n]*\n")
stock = [tuple(int(d) for d in re.findall(r"HEADDIM <= (\d+)", m)) for m in headdim_switch.findall(text)]
if stock != [STOCK_HEAD_DIMS]:
    die(f"{switch_h} has changed: HEADDIM_SWITCH dispatches {stock}, expected {[STOCK_HEAD_DIMS]}.")
served = {d: (STOCK_HEAD_DIMS[i - 1] if i else 0, d) for i, d in enumerate(STOCK_HEAD_DIMS) if d in head_dims}
ranges = ", ".join(f"{low + 1}-{high}" for low, high in served.values())
# Every refusal message is one string literal: on the H200 a refusal that appended the head dim (a
# runtime value, so TORCH_CHECK built a std::string for torch's c10::detail::torchCheckFail) crashed
# the process with a segfault, at the switch and at the entry alike, while the causal refusal (a
# literal, the const char* overload) raised cleanly; the std::string overload looks like a C++ ABI
# mismatch between this extension and the torch it runs with.
headdim_message = unbuilt(f"has kernels for head dims {ranges} only; rebuild it with FLASH_ATTN_HEAD_DIMS "
                          "naming the kernel for your head dim (32 64 96 128 192 256: the smallest one >= it)")
body = ["  [&] {"]
for n, (d, (low, high)) in enumerate(served.items()):
    body += [f"    {'} else if' if n else 'if'} (HEADDIM > {low} && HEADDIM <= {high}) {{",
             f"      constexpr static int kHeadDim = {d};", "      return __VA_ARGS__();"]
body += ["    } else {", f"      TORCH_CHECK(false, {headdim_message});", "    }", "  }()"]
patch(switch_h, headdim_switch, macro("#define HEADDIM_SWITCH(HEADDIM, ...)", body))

# FP16_SWITCH(COND, ...) takes the fp16 branch when COND holds; with one dtype built, the other raises
if len(dtypes) == 1:
    built = dtypes[0]
    elem_type, required = ("cutlass::half_t", "(COND)") if built == "fp16" else ("cutlass::bfloat16_t", "!(COND)")
    message = unbuilt(f"has {built} kernels only; rebuild it with FLASH_ATTN_DTYPES='bf16 fp16' for the other")
    body = ["  [&] {", f"    TORCH_CHECK({required}, {message});",
            f"    using elem_type = {elem_type};", "    return __VA_ARGS__();", "  }()"]
    fp16_switch = re.compile(r"#define FP16_SWITCH\(COND, \.\.\.\)[^\n]*\\\n(?:[^\n]*\\\n)*[^\n]*\n")
    patch(switch_h, fp16_switch, macro("#define FP16_SWITCH(COND, ...)", body))

# a causal switch with the non-causal branch only, for flash_api.cpp's forward and backward dispatch
causal_switch = macro("#define CAUSAL_SWITCH(COND, CONST_NAME, ...)", [
    "  [&] {",
    f"    TORCH_CHECK(!(COND), {unbuilt('has non-causal kernels only (causal=True, or a window whose right edge is 0, needs the causal ones)')});",
    "    constexpr static bool CONST_NAME = false;", "    return __VA_ARGS__();", "  }()"])
with open(os.path.join(SRC, switch_h), "a") as f:
    f.write("\n// build_flash_attn.sh: only the non-causal kernels were compiled\n" + causal_switch)
patch("csrc/flash_attn/flash_api.cpp", "BOOL_SWITCH(params.is_causal, Is_causal, [&] {",
      "CAUSAL_SWITCH(params.is_causal, Is_causal, [&] {", count=2)
# Refuse an unbuilt head dim at the entry of each forward and backward too, before any allocation
served_condition = " || ".join(f"(head_size > {low} && head_size <= {high})" for low, high in served.values())
for direction in ("forward", "backward"):
    limit = f'TORCH_CHECK(head_size <= 256, "FlashAttention {direction} only supports head dimension at most 256");'
    refusal = f"TORCH_CHECK({served_condition}, {headdim_message});"
    patch("csrc/flash_attn/flash_api.cpp", limit, f"{limit}\n    {refusal}", count=2)
print(f"{SCRIPT}: patched for head dims {' '.join(map(str, head_dims))} (serving {ranges}), "
      f"{' '.join(dtypes)}, non-causal: {len(kept)} kernel files")
PY

timed_build FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS="$ARCH"
import_check "
import os
import torch
import torch.nn.functional as F
import flash_attn_2_cuda
from flash_attn import flash_attn_func

dims = [int(d) for d in os.environ['FLASH_ATTN_HEAD_DIMS'].split()]
dtypes = {'bf16': torch.bfloat16, 'fp16': torch.float16}
for name in os.environ['FLASH_ATTN_DTYPES'].split():
    for head_dim in dims:
        # 1 x 1 heads takes the split-KV kernel, 8 x 8 the main one; 300 tokens are no multiple of a block
        for batch, heads in ((1, 1), (8, 8)):
            q, k, v = torch.randn(3, batch, 300, heads, head_dim, device='cuda', dtype=dtypes[name])
            out = flash_attn_func(q, k, v)
            ref = F.scaled_dot_product_attention(*(x.transpose(1, 2).float() for x in (q, k, v))).transpose(1, 2)
            error = ((out.float() - ref).norm() / ref.norm()).item()
            # bf16 rounds to 3.9e-3 relative; a wrong kernel or dispatch is off by O(1)
            assert error < 2e-2, f'head dim {head_dim} {name} batch {batch} heads {heads}: error {error:.1e}'
for head_dim in [d for d in (32, 64, 96, 128, 192, 256) if d not in dims]:
    q = torch.randn(2, 300, 4, head_dim, device='cuda', dtype=torch.bfloat16)
    try:
        flash_attn_func(q, q, q)
    except RuntimeError as error:
        assert 'build_flash_attn.sh' in str(error), error
        print('build_flash_attn.sh: head dim', head_dim, 'refused as expected:', str(error).splitlines()[0])
    else:
        raise AssertionError(f'head dim {head_dim} was not built but ran')
print('build_flash_attn.sh: import check passed (head dims', dims, 'against SDPA):', flash_attn_2_cuda.__file__)"
