#!/usr/bin/env bash
# Build mamba-ssm's selective_scan_cuda extension offline, for the local GPU's architecture only, in place.
#
# usage: bash scripts/build_mamba.sh [SDIST] [BUILD_DIR]
#   SDIST      default .sdist/mamba_ssm-2.3.2.post1.tar.gz; fetch it where there is internet:
#              pip download --no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1 -d .sdist
#   BUILD_DIR  default .build/mamba; the source is unpacked to BUILD_DIR/mamba_ssm-<version>
#
# Needs: a CUDA GPU visible to torch, nvcc (CUDA_HOME or PATH), the installed CUDA torch; no internet.
# Builds only selective_scan_cuda (mamba-ssm 2.x has no other compiled extension; causal-conv1d is a separate
# package: scripts/build_causal_conv1d.sh). `setup.py build_ext --inplace` compiles against the installed
# torch and downloads nothing (MAMBA_FORCE_BUILD=TRUE is set too: pip's bdist_wheel path would otherwise try
# to fetch a prebuilt wheel). setup.py lists 9 GPU architectures for nvcc 13; the patch keeps the local one:
# sm_90 alone with MAX_JOBS=16 compiled in 131 s (a 49 MB .so) on the 16-core H200.
# On success it prints the PYTHONPATH entry that makes `from mamba_ssm.ops.selective_scan_interface import
# selective_scan_fn` work.
set -euo pipefail

BUILD_SCRIPT=build_mamba.sh
source "$(dirname "${BASH_SOURCE[0]}")/build_common.sh"

SDIST=${1:-.sdist/mamba_ssm-2.3.2.post1.tar.gz}
BUILD_DIR=${2:-.build/mamba}

require_sdist "$SDIST" mamba-ssm==2.3.2.post1
check_toolchain
unpack_sdist "$SDIST" "$BUILD_DIR"
set_local_gencode
timed_build MAMBA_FORCE_BUILD=TRUE
import_check "
import torch
import selective_scan_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
print('build_mamba.sh: import check passed:', selective_scan_cuda.__file__)"
