#!/usr/bin/env bash
# One-off triage of the illegal memory access seen by gpu_session.sh on 2026-11-27 (H200):
# build; each CUDA provider in its own process (bench.isolate) beside the gpu tests (verbose)
# and the Triton precompile of M and L; memcheck of the first failing case; then the bench at
# M and L without the CUDA providers.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=python3
W=/tmp/triage; mkdir -p "$W"; OUT="${OUT:-$W/out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 TRITON_CACHE_DIR="$W/tc" SOBOLEV_AUTOTUNE=1
s() { echo "[$SECONDS s] $*"; }
NOCUDA=(--exclude torch_compile cuda cuda_tiled_tc cuda_fused)
timeout 150 $PY -m bench.step --configs M L --precisions fp32 bf16 --modes step forward \
  "${NOCUDA[@]}" --precompile 10 --compile-only --out-dir "$W/pc" > "$W/precompile.log" 2>&1 &
PC=$!
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=6 timeout 100 $PY -m pip install \
  --no-build-isolation --no-deps --no-index -e . > "$W/build.log" 2>&1; s "build rc $?"
SOBOLEV_AUTOTUNE=0 timeout 130 $PY -m pytest -n 4 -v -rf -m gpu -p no:cacheprovider tests \
  > "$W/gpu_tests.txt" 2>&1 &
TESTS=$!
timeout 130 $PY -m bench.isolate --configs S M --precisions fp32 bf16 \
  --providers cuda cuda_tiled_tc cuda_fused --modes step forward --jobs 6 --seconds 60 \
  2>&1 | tee "$OUT/isolate.txt"; s "isolate done"
first=$(grep -m1 FAILED "$OUT/isolate.txt" | awk '{print $1, $2, $3, $4}')
if [ -n "$first" ]; then
  read -r c p prov m <<< "$first"
  s "memcheck $c $p $prov $m"
  timeout 60 compute-sanitizer --tool memcheck --print-limit 8 \
    $PY -m bench.isolate --case "$c" 0 "$p" "$prov" "$m" > "$OUT/memcheck.txt" 2>&1
  s "memcheck rc $?"
fi
wait $TESTS; s "tests rc $?"; wait $PC; s "precompile rc $?"; tail -2 "$W/precompile.log"
timeout $(( SECONDS < 370 ? 400 - SECONDS : 30 )) $PY -m bench.step --configs M L --precisions fp32 bf16 \
  --modes step forward "${NOCUDA[@]}" --out-dir "$W/bench" > "$W/bench.log" 2>&1
s "bench rc $?"
cp "$W"/bench/*.csv "$OUT/" 2>/dev/null
grep -v "PytestBenchmark\|warner" "$W/gpu_tests.txt" | grep -v PASSED | tail -60
tar czf "$OUT/triage.tar.gz" -C "$W" --exclude tc --exclude out . ; s "done"
