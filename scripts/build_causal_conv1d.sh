#!/usr/bin/env bash
# Build causal-conv1d's causal_conv1d_cuda extension offline, for the local GPU's architecture only, in place.
#
# usage: bash scripts/build_causal_conv1d.sh [SDIST] [BUILD_DIR]
#   SDIST      default .sdist/causal_conv1d-1.7.0.tar.gz; fetch it where there is internet:
#              pip download --no-deps --no-build-isolation --no-binary :all: causal-conv1d==1.7.0 -d .sdist
#   BUILD_DIR  default .build/causal_conv1d; the source is unpacked to BUILD_DIR/causal_conv1d-<version>
#
# Needs what scripts/build_mamba.sh needs. CAUSAL_CONV1D_FORCE_BUILD=TRUE keeps pip's bdist_wheel path from
# fetching a prebuilt wheel; setup.py lists 9 GPU architectures for nvcc 13 and the patch keeps the local one.
# All dtypes stay: DiS under bf16 autocast runs bf16 activations with the fp32 conv weight, the fp32 tests
# fp32 with fp32; the 3 x 3 (input, weight) dtype dispatch lives in two macros of causal_conv1d.cpp and the
# template instantiations of the 3 .cu files: five patches, to shorten a build whose 4 files compile side
# by side (4 jobs on 16 cores) anyway.
# On success it prints the PYTHONPATH entry that makes `from causal_conv1d import causal_conv1d_fn` work
# (mamba-ssm finds causal-conv1d through the same import).
set -euo pipefail

BUILD_SCRIPT=build_causal_conv1d.sh
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"

SDIST=${1:-.sdist/causal_conv1d-1.7.0.tar.gz}
BUILD_DIR=${2:-.build/causal_conv1d}

require_sdist "$SDIST" causal-conv1d==1.7.0
check_toolchain
unpack_sdist "$SDIST" "$BUILD_DIR"
set_local_gencode
timed_build CAUSAL_CONV1D_FORCE_BUILD=TRUE
import_check "
import torch
import causal_conv1d_cuda
from causal_conv1d import causal_conv1d_fn
torch.backends.cudnn.allow_tf32 = False  # the torch conv below is the fp32 reference
x = torch.randn(2, 64, 37, device='cuda')
weight, bias = torch.randn(64, 4, device='cuda'), torch.randn(64, device='cuda')
padded = torch.nn.functional.pad(x, (3, 0))  # causal: output t sees inputs t-3..t
expected = torch.nn.functional.silu(torch.nn.functional.conv1d(padded, weight[:, None], bias, groups=64))
error = ((causal_conv1d_fn(x, weight, bias, activation='silu') - expected).norm() / expected.norm()).item()
assert error < 1e-5, f'causal_conv1d_fn differs from torch conv1d by {error:.1e} (fp32)'
print('build_causal_conv1d.sh: import check passed (fp32 error %.1e):' % error, causal_conv1d_cuda.__file__)"
