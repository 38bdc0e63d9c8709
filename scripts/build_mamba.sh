#!/usr/bin/env bash
# Build mamba-ssm's selective_scan_cuda extension offline, for the local GPU's architecture only, in place.
#
# usage: bash scripts/build_mamba.sh [SDIST] [BUILD_DIR]
#   SDIST      default .sdist/mamba_ssm-2.3.2.post1.tar.gz; fetch it where there is internet (torch must be
#              importable there, metadata needs it):
#              pip download --no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1 -d .sdist
#   BUILD_DIR  default .build/mamba; the source is unpacked to BUILD_DIR/mamba_ssm-<version>
#
# Needs: a CUDA GPU visible to torch, nvcc (CUDA_HOME or PATH), the installed CUDA torch; no internet.
# Builds only selective_scan_cuda (mamba-ssm 2.x has no other compiled extension; causal_conv1d is a separate
# package, not built: DiS falls back to nn.Conv1d). `setup.py build_ext --inplace` compiles against the torch
# that is installed and downloads nothing (MAMBA_FORCE_BUILD=TRUE is set too: pip's bdist_wheel path would
# otherwise try to fetch a prebuilt wheel). setup.py lists 9 GPU architectures for nvcc 13; the patch below
# keeps the local one: sm_90 alone with MAX_JOBS=16 compiled in 131 s (a 49 MB .so) on the 16-core H200.
# On success it prints the PYTHONPATH entry that makes `from mamba_ssm.ops.selective_scan_interface import
# selective_scan_fn` work.
set -euo pipefail

SDIST=${1:-.sdist/mamba_ssm-2.3.2.post1.tar.gz}
BUILD_DIR=${2:-.build/mamba}
PYTHON=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-16}

die() { echo "build_mamba.sh: $*" >&2; exit 2; }

[[ -f "$SDIST" ]] || die "sdist '$SDIST' not found. Download it where there is internet: pip download \
--no-deps --no-build-isolation --no-binary :all: mamba-ssm==2.3.2.post1 -d .sdist"
[[ "$SDIST" == *.tar.gz ]] || die "sdist '$SDIST' is not a .tar.gz source archive."

# Architecture as torch sees it, e.g. "90" on an H100/H200; nvcc as setup.py will find it (CUDA_HOME).
ARCH=$("$PYTHON" -c "
import torch
if torch.version.cuda is None or not torch.cuda.is_available():
    raise SystemExit('no CUDA GPU visible to torch ' + torch.__version__)
print('%d%d' % torch.cuda.get_device_capability())") || die "a CUDA GPU is required (see the line above)."
CUDA_HOME_FOUND=$("$PYTHON" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')")
[[ -n "$CUDA_HOME_FOUND" && -x "$CUDA_HOME_FOUND/bin/nvcc" ]] || die "nvcc not found: set CUDA_HOME to the \
CUDA toolkit (the directory holding bin/nvcc) or put nvcc on PATH."
"$PYTHON" -c "import ninja" 2>/dev/null || echo "build_mamba.sh: warning: ninja is missing, the build runs \
one file at a time." >&2

NAME=$(basename "$SDIST" .tar.gz)
SRC="$BUILD_DIR/$NAME"
rm -rf "$SRC"
mkdir -p "$BUILD_DIR"
tar -xzf "$SDIST" -C "$BUILD_DIR"
[[ -f "$SRC/setup.py" ]] || die "'$SDIST' did not unpack to $SRC/setup.py."

# Replace setup.py's gencode list (built up with cc_flag.append) by the local architecture, just before
# the line that follows the list.
ANCHOR='    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI'
grep -qF "$ANCHOR" "$SRC/setup.py" || die "setup.py of $NAME has changed: anchor '$ANCHOR' not found."
GENCODE="\"-gencode\", \"arch=compute_$ARCH,code=sm_$ARCH\""
LOCAL_GENCODE="    cc_flag = [$GENCODE]  # build_mamba.sh: local GPU only"
sed -i "s|^$ANCHOR|$LOCAL_GENCODE\n&|" "$SRC/setup.py"
grep -q "build_mamba.sh: local GPU only" "$SRC/setup.py" || die "patching setup.py failed."

echo "build_mamba.sh: building selective_scan_cuda for sm_$ARCH with nvcc from $CUDA_HOME_FOUND," \
     "MAX_JOBS=$MAX_JOBS, in $SRC"
START=$(date +%s)
(cd "$SRC" && MAMBA_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST="${ARCH:0:-1}.${ARCH: -1}" \
    "$PYTHON" setup.py build_ext --inplace)
echo "build_mamba.sh: compiled in $(( $(date +%s) - START )) s"

SRC_ABS=$(cd "$SRC" && pwd)
# torch first: it loads libc10.so and the other libraries the extension links against
PYTHONPATH="$SRC_ABS${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "
import torch
import selective_scan_cuda
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
print('build_mamba.sh: import check passed:', selective_scan_cuda.__file__)" \
    || die "the extension was built but does not import (see the error above)."
echo "build_mamba.sh: done. Use it with:"
echo "export PYTHONPATH=$SRC_ABS\${PYTHONPATH:+:\$PYTHONPATH}"
