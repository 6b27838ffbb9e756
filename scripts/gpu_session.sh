#!/usr/bin/env bash
# Everything a session with a CUDA GPU should run, in one command (see README):
#   bash scripts/gpu_session.sh        # results under $OUT (default bench/results/gpu)
# Builds the CUDA extension against the machine's torch, runs the gpu-marked tests, the
# compute-sanitizer memcheck and racecheck of every fused kernel, and the full benchmark sweep,
# then renders the report. Works offline (no pip downloads: uses the machine's torch/triton).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/bench/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0
step() { echo; echo "=== $*"; }

step "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

step "build (FORCE_CUDA=1)"
arch="$("$PY" -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-8}" \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1 \
  || { echo "build failed: see $OUT/build.log"; tail -40 "$OUT/build.log"; status=1; }

step "gpu tests"
"$PY" -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.txt" | tail -30
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "compute-sanitizer"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 3 "$PY" bench/sanitize_case.py \
    > "$OUT/sanitizer_$tool.txt" 2>&1 || status=1
  tail -15 "$OUT/sanitizer_$tool.txt"
done

step "benchmarks (full sweep)"
"$PY" bench/step.py --out-dir "$OUT" 2> "$OUT/step.log" || status=1
"$PY" bench/report.py --out-dir "$OUT" "$OUT"/*.csv > /dev/null || status=1
ls -la "$OUT"
exit $status
