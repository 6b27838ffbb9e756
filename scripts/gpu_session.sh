#!/usr/bin/env bash
# Everything a session with a CUDA GPU should run, in stages that each fit a 10-minute call:
#   bash scripts/gpu_session.sh                        # every stage, in order
#   bash scripts/gpu_session.sh build tests            # then, on the same (warm) machine:
#   bash scripts/gpu_session.sh sanitize bench         # and
#   bash scripts/gpu_session.sh profile sweeps report
# Stages: build (the CUDA extension against the machine's torch), tests (gpu-marked, in
# parallel processes when pytest-xdist is there), sanitize (compute-sanitizer memcheck and
# racecheck of every fused kernel), bench (configs S, M, L), profile (which kernels their steps
# spend time in), sweeps (every sweep of config M), report (tables and plots). Works offline (no downloads: the machine's torch and triton).
# Results accumulate in .gpu_work/ (ignored, kept while the machine is warm); each stage also
# copies what it produced to $OUT (default bench/results/gpu), at most 8 files per call.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results/gpu}"
WORK="$ROOT/.gpu_work"
mkdir -p "$OUT" "$WORK"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-12}"  # parallel processes for compiling (16 cores on our GPU machines)
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORK/triton_cache}"  # shared by the stages
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

stage_build() {
  step "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$WORK/device.txt"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$WORK/device.txt"
  step "build (FORCE_CUDA=1)"
  local arch
  arch="$("$PY" -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")"
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$JOBS}" \
    SOBOLEV_REQUIRE_EXTENSION=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
    > "$WORK/build.log" 2>&1 \
    || { echo "build failed: see build.log"; tail -40 "$WORK/build.log"; status=1; }
  "$PY" -c "import sobolev_kernels as sk; print('backends:', sk.available_backends())"
  cp "$WORK/device.txt" "$WORK/build.log" "$OUT/"
}

stage_tests() {
  step "gpu tests"
  local parallel=()
  "$PY" -c "import xdist" 2>/dev/null && parallel=(-n "$JOBS")
  # static launch configs: the autotuner would compile every candidate of every test shape
  # (tests/test_tuning.py turns it on for its own GPU case)
  SOBOLEV_AUTOTUNE=0 "$PY" -m pytest -q -m gpu ${parallel[@]+"${parallel[@]}"} tests 2>&1 \
    | tee "$WORK/gpu_tests.txt" | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  cp "$WORK/gpu_tests.txt" "$OUT/"
}

stage_sanitize() {
  step "compute-sanitizer"
  for tool in memcheck racecheck; do
    SOBOLEV_AUTOTUNE=0 compute-sanitizer --tool "$tool" --error-exitcode 3 \
      "$PY" bench/sanitize_case.py > "$WORK/sanitizer_$tool.txt" 2>&1 || status=1
    tail -8 "$WORK/sanitizer_$tool.txt"
    cp "$WORK/sanitizer_$tool.txt" "$OUT/"
  done
}

bench() {  # bench <log name> <step.py arguments...>
  local log="$1"
  shift
  "$PY" bench/step.py --out-dir "$WORK" --precompile "$JOBS" "$@" 2> "$WORK/$log" || status=1
  grep -v '^\[' "$WORK/$log" | tail -20
  cp "$WORK/$log" "$OUT/"
  cp "$WORK"/*.csv "$OUT/" 2>/dev/null
}

stage_bench() {
  step "benchmarks: configs S, M, L"
  bench step_configs.log --sweeps
}

stage_profile() {
  step "kernel profiles: configs S, M, L (where each step's time goes)"
  for dtype in fp32 bf16; do
    "$PY" bench/kernel_profile.py --dtype "$dtype" --out "$WORK/kernels_$dtype.md" \
      > /dev/null 2> "$WORK/kernels_$dtype.log" || { status=1; tail -5 "$WORK/kernels_$dtype.log"; }
    grep -F "**total**" "$WORK/kernels_$dtype.md" 2>/dev/null
    cp "$WORK/kernels_$dtype.md" "$OUT/" 2>/dev/null
  done
}

stage_sweeps() {
  step "benchmarks: sweeps of config M"
  bench step_sweeps.log --configs
}

stage_report() {
  step "report"
  "$PY" bench/report.py --out-dir "$WORK" "$WORK"/*.csv | tail -40 || status=1
  cp "$WORK"/*.csv "$WORK"/BENCHMARKS.md "$WORK"/*.png "$OUT/" 2>/dev/null
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build tests sanitize bench profile sweeps report)
for s in "${stages[@]}"; do
  case "$s" in
    build | tests | sanitize | bench | profile | sweeps | report) "stage_$s" ;;
    *) echo "unknown stage $s (build tests sanitize bench profile sweeps report)"; exit 2 ;;
  esac
done
ls -la "$OUT"
exit $status
