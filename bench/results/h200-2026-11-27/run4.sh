#!/usr/bin/env bash
# Run 4, the session's last device command (after gpu_session.sh's run 3): the tracebacks of
# run 3's two failing gpu tests (every launch config, orders 1 and 2), the new gpu tests (the
# resident forward; a training step replayed from a CUDA graph), and bench.forward_configs
# (the Triton forward under the tuner's and other launch configs, chunked and resident).
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/triton_cache
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/env.txt"
git rev-parse --short HEAD >> "$OUT/env.txt" 2>/dev/null
SOBOLEV_AUTOTUNE=0 SOBOLEV_TEST_FAILURES="$OUT/test_failures.txt" timeout 270 \
  python3 -m pytest -v -rfE -m gpu -p no:cacheprovider -n 4 \
  tests/test_tuning.py::test_every_launch_config_is_correct_on_the_gpu \
  tests/test_resident_forward.py \
  "tests/test_reliability.py::test_a_training_step_replays_from_a_cuda_graph[triton]" \
  > "$OUT/tests.txt" 2>&1 &
timeout 280 python3 -m bench.forward_configs --configs M S --precisions fp32 bf16 --jobs 10 \
  > "$OUT/explore.txt" 2>&1
wait
grep -E "PASSED|FAILED|ERROR|passed|failed" "$OUT/tests.txt" | tail -20
cat "$OUT/explore.txt"
