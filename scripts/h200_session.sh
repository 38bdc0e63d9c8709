#!/usr/bin/env bash
# The GPU work of one device session, in phases, so that a few full calls do it all:
#
#   BENCH_GIT_COMMIT=<commit> bash scripts/h200_session.sh SECONDS PHASE [PHASE ...]
#
# SECONDS: wall time this call may use (the sweeps start no new point after it, less a margin for
# the point in flight). Phases, run in the order given:
#   builds    start the baseline builds named in $BUILDS (default "flash_attn causal_conv1d mamba") in the
#             background, one after the other (flash-attn first and alone, so its build time is its own;
#             logs and a .ok marker each in .build/); later calls pick up what finished
#   tests     the GPU tests (-m gpu) and the kernel tests that run on CUDA when there is no interpreter
#   tests2    the GPU tests of the built baselines (flash-attn's DiT, DiS on mamba's fused path)
#   profile   GPU time per kernel category, DiG-reference (before) vs DiG (after), S/2 2048 b4 and XL/2 2048 b2;
#             DiG eager vs compiled at S/2 256 b4
#   bar       the issues' points, most important first: XL/2 b2 and S/2 b4 at 2048 px, S/2 at 512, Flash-DiT
#             at S/2 256 and 2048, S/2 at 256 and 1024; DiG in eager and graph (its compile rows are
#             slower than graph and take a minute each: phase compile), DiT-cuDNN and Flash-DiT in all three
#   compile   DiG's torch.compile rows at S/2 256 and 2048 px
#   ab        the A/B of this tree's GLA kernels against the tree at $AB_OLD (a checkout of an earlier
#             commit, carried; label "old"), each class's default config at T = $AB_LENGTHS (default
#             256 4096 16384), this tree also at the gla_ab configs of $AB_CONFIGS (for example
#             "default default:state_walk_min_programs=1"); both trees compiled first in parallel
#             processes (Triton's cache), then timed one class at a time
#   kernels   the GLA kernel benchmark (ours and fla) one head-dim class at a time, then the GLA tuning
#   more      DiG-reference and DiG-fla eager, the rest of Fig. 2 in eager
#   figs      Fig. 2 then Fig. 3 in all three modes (DiG-fla in eager), into reports/h200-figs/ (a tracked
#             folder: commit its CSV after each session and the next one's sweep goes on where this one
#             stopped), once the builds started by `builds` have ended
# Results: .results/h200/ (kept while the machine stays warm), copied to $OUT at the end of every call.
# At most 8 files come back from $OUT (the device README): the phases copy their CSVs there, the
# pytest logs go as one file, and nothing writes into $OUT directly (bench.py's .lock files would
# take places; on 2026-12-02 a 10th file, a kernels.csv, did not come back).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
SECONDS_ALLOWED=$1
shift
DEADLINE=$(( $(date +%s) + SECONDS_ALLOWED ))
RESULTS=.results/h200
OUT=${OUT:-/tmp/h200_out}
mkdir -p "$RESULTS" .build "$OUT"

left() { echo $(( DEADLINE - $(date +%s) )); }

python_path() {
    # fla-core (pure Python) from the carried wheel; the builds that finished
    if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    fi
    local path=/tmp/site
    for built in flash_attn/flash_attn-2.8.3 causal_conv1d/causal_conv1d-1.7.0 mamba/mamba_ssm-2.3.2.post1; do
        [ -f ".build/${built%%/*}.ok" ] && path="$path:$PWD/.build/$built"
    done
    export PYTHONPATH="$PWD:$path"
}

phase_builds() {
    if [ -f .build/builds.started ]; then echo "builds already started"; return; fi
    echo "${BUILDS:-flash_attn causal_conv1d mamba}" > .build/builds.started
    BUILDS=${BUILDS:-flash_attn causal_conv1d mamba} setsid nohup bash -c '
        for name in $BUILDS; do
            start=$(date +%s)
            MAX_JOBS=${MAX_JOBS:-16} bash scripts/build_$name.sh > .build/$name.log 2>&1 && touch .build/$name.ok
            echo "$name: exit $? after $(( $(date +%s) - start )) s" >> .build/builds.log
        done' > /dev/null 2>&1 &
    echo "builds started in the background: ${BUILDS:-flash_attn causal_conv1d mamba}"
}

KERNEL_TEST_FILES="tests/test_gla_scan_order.py tests/test_gla_state_scan.py tests/test_glue_kernels.py \
    tests/test_gla_layer.py tests/test_norm_gate.py tests/test_gla_triton.py"

gpu_pytest() {  # gpu_pytest LOG ARGS...: pytest within the time left, its log in $OUT/pytest.log, its summary shown
    timeout $(( $(left) - 30 )) python3 -m pytest -q -rfEs -p no:cacheprovider --durations=10 "${@:2}" \
        > "$RESULTS/$1" 2>&1
    echo "pytest ${*:2}: exit $?"
    cat "$RESULTS"/pytest_*.log > "$OUT/pytest.log"
    grep -E "^(FAILED|ERROR)|passed|failed" "$RESULTS/$1" | tail -25
}

phase_tests() {
    # Compiled kernels: every case compiles its own specialisations (the first 15 cases of
    # test_gla_triton took 170 s cold in one process, 10 s with a warm cache), so the numerics run
    # on 8 xdist workers of the 16 cores; the pytest-benchmark timings run alone afterwards (xdist
    # turns benchmarks off, and parallel work would disturb them).
    gpu_pytest pytest_gpu.log -n 8 -m gpu --ignore=tests/test_kernel_speed_gpu.py
    gpu_pytest pytest_kernels.log -n 8 -m "not gpu" $KERNEL_TEST_FILES
    gpu_pytest pytest_speed.log tests/test_kernel_speed_gpu.py
}

phase_tests2() {
    timeout $(( $(left) - 30 )) python3 -m pytest -q -rs -p no:cacheprovider tests/test_dit_flash_gpu.py \
        tests/test_dis_gpu.py "tests/test_models_gpu.py::test_every_backend_trains" 2>&1 | tail -25
}

sweep() {  # sweep ARGS...: one bench.py sweep into $RESULTS within the time left, then a copy to $OUT
    local budget=$(( $(left) - 150 ))
    if [ "$budget" -le 0 ]; then echo "no time left for: $*"; return; fi
    python3 bench.py sweep --out "$RESULTS" --time-budget "$budget" --timeout 200 --no-progress "$@" 2>&1 \
        | grep -v "running for"
    cp "$RESULTS"/*.csv "$OUT"/ 2>/dev/null  # a call stopped at its limit still returns what it measured
}

phase_profile() {
    local budget=$(( $(left) - 120 ))
    python3 bench.py profile --out "$RESULTS" --models DiG-reference DiG DiT-cuDNN --sizes S --resolutions 2048 \
        --batch 4 --exec eager --time-budget "$budget" --timeout 300 --no-progress 2>&1 | grep -v "running for"
    budget=$(( $(left) - 120 ))
    python3 bench.py profile --out "$RESULTS" --models DiG-reference DiG DiT-cuDNN --sizes XL --resolutions 2048 \
        --batch 2 --exec eager --time-budget "$budget" --timeout 300 --no-progress 2>&1 | grep -v "running for"
    # compiled DiG ran slower than eager DiG (2026-12-02: 23.7 against 56.3 img/s at S/2 256 px b4): GPU
    # time or host time?
    budget=$(( $(left) - 120 ))
    python3 bench.py profile --out "$RESULTS" --models DiG --sizes S --resolutions 256 --batch 4 \
        --exec eager compile --time-budget "$budget" --timeout 300 --no-progress 2>&1 | grep -v "running for"
}

phase_bar() {
    sweep --models DiG --sizes XL --resolutions 2048 --batch 2 --exec graph eager
    sweep --models DiT-cuDNN --sizes XL --resolutions 2048 --batch 2 --exec compile eager graph
    sweep --models DiG --sizes S --resolutions 2048 512 --batch 4 --exec graph eager
    sweep --models DiT-cuDNN --sizes S --resolutions 2048 512 --batch 4 --exec compile eager graph
    sweep --models Flash-DiT --sizes S --resolutions 256 2048 --batch 4 --exec eager graph compile
    sweep --models DiG --sizes S --resolutions 256 1024 --batch 4 --exec graph eager
    sweep --models DiT-cuDNN --sizes S --resolutions 256 1024 --batch 4 --exec compile eager graph
}

phase_compile() {
    sweep --models DiG --sizes S --resolutions 256 2048 --batch 4 --exec compile
}

phase_kernels() {
    # one head-dim class per run (fla autotunes about 2.4 min per class; all three took 10-12 min), so
    # a call cut at its limit keeps the classes it finished; then the tuning (with the bf16-dot
    # candidate), whose cache lives on the machine (kernels/gla/tuning.py: cache_path) and comes back
    # in $OUT; a later kernels run on the same warm machine times the tuned configs
    for dims in 32x64 64x64 128x128; do
        [ "$(left)" -le 120 ] && { echo "no time left for kernels $dims"; return; }
        timeout $(( $(left) - 60 )) python3 bench.py kernels --out "$RESULTS" --ops gla --head-dims "$dims" \
            --providers fla ours-triton 2>&1 | tail -8
        cp "$RESULTS"/kernels.csv "$OUT"/ 2>/dev/null
    done
    timeout $(( $(left) - 60 )) python3 bench.py tune --out "$RESULTS" 2>&1 | tail -20
    cp "$RESULTS"/tuning*.csv "$OUT"/ 2>/dev/null
    cp "$(python3 -c 'from kernels.gla.tuning import cache_path; print(cache_path())')" "$OUT"/ 2>/dev/null
}

configs_of() {  # configs_of LABEL:DIR: the gla_ab configs of one tree of phase ab
    if [ "${1%%:*}" = new ]; then echo "${AB_CONFIGS:-default}"; else echo default; fi
}

phase_ab() {
    local dims tree trees="new:$PWD" lengths="${AB_LENGTHS:-256 4096 16384}"
    [ -n "${AB_OLD:-}" ] && trees="old:$AB_OLD $trees"
    for tree in $trees; do
        for dims in 32x64 64x64 128x128; do
            PYTHONPATH="${tree#*:}:${PYTHONPATH#*:}" python3 scripts/gla_ab.py --label compile --compile-only \
                --head-dims $dims --lengths $lengths --configs $(configs_of "$tree") > /dev/null 2>&1 &
        done
    done
    wait
    for dims in 32x64 64x64 128x128; do
        for tree in $trees; do
            [ "$(left)" -le 60 ] && { echo "no time left for ab $dims"; return; }
            PYTHONPATH="${tree#*:}:${PYTHONPATH#*:}" timeout $(( $(left) - 30 )) python3 scripts/gla_ab.py \
                --label "${tree%%:*}" --head-dims $dims --lengths $lengths --configs $(configs_of "$tree") \
                --out "$RESULTS/gla_ab.csv" \
                | sed -E "s/'config': '[^']*', //"
            cp "$RESULTS/gla_ab.csv" "$OUT"/
        done
    done
}

phase_more() {
    sweep --models DiG-reference DiG-fla --sizes S --resolutions 256 2048 --batch 4 --exec eager
    sweep --models DiG-reference --sizes XL --resolutions 2048 --batch 2 --exec eager
    sweep --models DiG DiT-cuDNN Flash-DiT DiT DiS --sizes S --resolutions 768 1280 1536 1792 --batch 4 --exec eager
}

wait_for_builds() {  # a baseline measured before its build lands would run a stand-in (SDPA flash, no
    # causal-conv1d kernel) under its own name, with status ok, and the resume would keep it
    while [ -f .build/builds.started ] \
          && [ "$(cat .build/builds.log 2>/dev/null | wc -l)" -lt "$(wc -w < .build/builds.started)" ] \
          && [ "$(left)" -gt 200 ]; do
        sleep 10
    done
    cat .build/builds.log 2>/dev/null
}

phase_figs() {
    # DiG-fla in eager only (the issue: "DiG-fla eager is enough"), every other family in all three modes
    local figs=reports/h200-figs budget
    mkdir -p "$figs"
    wait_for_builds
    local families="DiT DiT-cuDNN DiG"
    if [ -f .build/flash_attn.ok ]; then families="$families Flash-DiT"; else echo "figs without Flash-DiT: no flash-attn build"; fi
    if [ -f .build/causal_conv1d.ok ] && [ -f .build/mamba.ok ]; then families="$families DiS"
    else echo "figs without DiS: no causal-conv1d + mamba build"; fi
    for fig in fig2 fig3; do
        for job in "$families:eager graph compile" "DiG-fla:eager"; do
            budget=$(( $(left) - 150 ))
            if [ "$budget" -le 0 ]; then echo "no time left for $fig"; break 2; fi
            python3 bench.py "$fig" --out "$figs" --time-budget "$budget" --timeout 300 --no-progress \
                --models ${job%%:*} --exec ${job##*:} 2>&1 | grep -v "running for" | tail -8
            cp "$figs"/*.csv "$OUT"/ 2>/dev/null
        done
    done
}

python_path
echo "== $(date -u +%FT%TZ) commit ${BENCH_GIT_COMMIT:-unset}; PYTHONPATH=$PYTHONPATH"
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
for phase in "$@"; do
    echo "== phase $phase ($(left) s left)"
    python_path  # a build may have finished meanwhile
    "phase_$phase"
done
cat .build/builds.log 2>/dev/null
for name in flash_attn causal_conv1d mamba; do
    [ -f .build/$name.log ] && tail -4 .build/$name.log | sed "s/^/$name: /"
done
cp "$RESULTS"/*.csv "$OUT"/ 2>/dev/null
tar -czf "$OUT/build_logs.tgz" .build/*.log 2>/dev/null
ls -la "$OUT"
