# Shared steps of the offline CUDA-extension builds (scripts/build_mamba.sh, build_causal_conv1d.sh,
# build_flash_attn.sh). Sourced, not run: the sourcing script sets BUILD_SCRIPT (its name, for messages)
# first. Every user-facing failure is one line on stderr and exit code 2.
#
# The flow of a build script: require_sdist -> check_toolchain -> unpack_sdist -> patch the source ->
# timed_build -> import_check (which prints the PYTHONPATH line).

PYTHON=${PYTHON:-python3}
# One compile job per core: each nvcc job here is single-threaded (one GPU architecture, so nvcc's
# --threads has nothing to split).
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

die() { echo "$BUILD_SCRIPT: $*" >&2; exit 2; }
say() { echo "$BUILD_SCRIPT: $*"; }

# require_sdist SDIST PIP_NAME==VERSION: die unless SDIST is an existing .tar.gz, saying how to fetch it.
require_sdist() {
    local sdist=$1 requirement=$2
    [[ -f "$sdist" ]] || die "sdist '$sdist' not found. Download it where there is internet (torch must be \
importable there, its metadata step needs it): pip download --no-deps --no-build-isolation --no-binary :all: \
$requirement -d .sdist"
    [[ "$sdist" == *.tar.gz ]] || die "sdist '$sdist' is not a .tar.gz source archive."
}

# check_toolchain: sets ARCH (the local GPU as torch sees it, "90" on an H100/H200) and CUDA_HOME_FOUND
# (the CUDA toolkit setup.py will use); dies without a CUDA GPU or nvcc, warns without ninja.
check_toolchain() {
    ARCH=$("$PYTHON" -c "
import torch
if torch.version.cuda is None or not torch.cuda.is_available():
    raise SystemExit('no CUDA GPU visible to torch ' + torch.__version__)
print('%d%d' % torch.cuda.get_device_capability())") || die "a CUDA GPU is required (see the line above)."
    CUDA_HOME_FOUND=$("$PYTHON" -c "from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or '')")
    [[ -n "$CUDA_HOME_FOUND" && -x "$CUDA_HOME_FOUND/bin/nvcc" ]] || die "nvcc not found: set CUDA_HOME to \
the CUDA toolkit (the directory holding bin/nvcc) or put nvcc on PATH."
    "$PYTHON" -c "import ninja" 2>/dev/null || echo "$BUILD_SCRIPT: warning: ninja is missing, the build \
runs one file at a time." >&2
    return 0
}

# unpack_sdist SDIST BUILD_DIR: a fresh copy of the source in BUILD_DIR/<sdist name>; sets SRC (absolute).
unpack_sdist() {
    local sdist=$1 build_dir=$2 name
    name=$(basename "$sdist" .tar.gz)
    rm -rf "${build_dir:?}/$name"
    mkdir -p "$build_dir"
    tar -xzf "$sdist" -C "$build_dir" || die "could not unpack '$sdist'."
    [[ -f "$build_dir/$name/setup.py" ]] || die "'$sdist' did not unpack to $build_dir/$name/setup.py."
    SRC=$(cd "$build_dir/$name" && pwd)
}

# set_local_gencode: in $SRC/setup.py (mamba-ssm and causal-conv1d share its layout), replace the
# gencode list that setup.py builds up with cc_flag.append (9 or more architectures for nvcc 13) by
# sm_$ARCH alone, just before the line that follows the list.
set_local_gencode() {
    local anchor='    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI'
    local marker="$BUILD_SCRIPT: local GPU only"
    grep -qF "$anchor" "$SRC/setup.py" || die "setup.py in $SRC has changed: anchor '$anchor' not found."
    local gencode="\"-gencode\", \"arch=compute_$ARCH,code=sm_$ARCH\""
    sed -i "s|^$anchor|    cc_flag = [$gencode]  # $marker\n&|" "$SRC/setup.py"
    grep -qF "$marker" "$SRC/setup.py" || die "patching setup.py in $SRC failed."
}

# timed_build [NAME=VALUE...]: `setup.py build_ext --inplace` in $SRC with those variables set (and
# TORCH_CUDA_ARCH_LIST for the local GPU); prints the wall time. It compiles against the installed
# torch and downloads nothing.
timed_build() {
    local start
    say "compiling for sm_$ARCH with nvcc from $CUDA_HOME_FOUND, MAX_JOBS=$MAX_JOBS, in $SRC"
    start=$(date +%s)
    (cd "$SRC" && env "$@" TORCH_CUDA_ARCH_LIST="${ARCH:0:-1}.${ARCH: -1}" "$PYTHON" setup.py build_ext --inplace) \
        || die "the compilation failed (see the compiler output above)."
    say "compiled in $(( $(date +%s) - start )) s"
}

# import_check PYTHON_CODE: run the code with $SRC first on PYTHONPATH (import torch first in it: torch
# loads libc10.so and the other libraries the extensions link against); dies if it fails, else prints the
# line that makes the build importable.
import_check() {
    PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c "$1" \
        || die "the extension was built but does not work (see the error above)."
    say "done. Use it with:"
    echo "export PYTHONPATH=$SRC\${PYTHONPATH:+:\$PYTHONPATH}"
}
