#!/usr/bin/env bash
# Compiles every CUDA source under csrc/cuda with nvcc for sm_80 and sm_90 (no GPU needed), so
# a CUDA compile error fails CI on machines without a GPU, with the flags torch's extension
# build adds, and checks that the PTX of each kernel file has tensor-core products (WMMA, the
# bf16/fp16 kernels). When torch is importable, also syntax-checks the ATen binding and ops.cpp
# with WITH_CUDA against torch's headers (a CPU torch ships the c10/cuda and ATen/cuda
# headers; one generated header is stubbed).
# Objects go to a temporary directory. Exit status: 0 ok, 1 a compile error, 2 no nvcc.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
command -v "$NVCC" >/dev/null || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
ARCHS=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
# torch.utils.cpp_extension.COMMON_NVCC_FLAGS: no implicit half/bf16 conversions or operators
TORCH_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)

status=0
pids=()
for cu in "$ROOT"/csrc/cuda/*.cu; do
  name="$(basename "$cu")"
  echo "[nvcc] $name (sm_80, sm_90)"
  mkdir -p "$OUT/keep-$name"
  "$NVCC" -std=c++17 -O3 -DWITH_CUDA "${TORCH_FLAGS[@]}" -I"$ROOT/csrc" "${ARCHS[@]}" \
    -keep -keep-dir "$OUT/keep-$name" -c "$cu" -o "$OUT/$name.o" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
ptx_files=0
for ptx in "$OUT"/keep-*/*.compute_{80,90}.ptx; do
  [ -f "$ptx" ] || continue
  ptx_files=$((ptx_files + 1))
  if ! grep -q "wmma.mma.sync" "$ptx"; then
    echo "check_cuda_compile: no tensor-core products (wmma.mma.sync) in $(basename "$ptx")" >&2
    status=1
  fi
done
if [ "$ptx_files" -ne $((2 * ${#pids[@]})) ]; then
  echo "check_cuda_compile: expected the PTX of every .cu for sm_80 and sm_90, found $ptx_files" >&2
  status=1
fi

if "$PY" -c "import torch" >/dev/null 2>&1; then
  # nvcc's own include directory (cuda_runtime.h), read off a dry run
  touch "$OUT/empty.cu"
  cuda_include="$("$NVCC" --dryrun -c "$OUT/empty.cu" -o "$OUT/empty.o" 2>&1 |
    grep -o -- '-I"\?[^ "]*include' | head -1 | sed 's/^-I"\?//')"
  mkdir -p "$OUT/stub/c10/cuda/impl"
  echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$OUT/stub/c10/cuda/impl/cuda_cmake_macros.h"
  mapfile -t torch_includes < <("$PY" -c "
from torch.utils.cpp_extension import include_paths
import sysconfig
for p in include_paths() + [sysconfig.get_paths()['include']]: print('-I' + p)")
  for src in "$ROOT"/csrc/cuda/*_binding.cpp "$ROOT/csrc/ops.cpp"; do
    echo "[c++] $(basename "$src") (WITH_CUDA, syntax only)"
    "${CXX:-g++}" -std=c++20 -fsyntax-only -DWITH_CUDA -I"$ROOT/csrc" "${torch_includes[@]}" \
      -I"$OUT/stub" -I"$cuda_include" "$src" || status=1
  done
fi

[ "$status" -eq 0 ] && echo "check_cuda_compile: ok" || echo "check_cuda_compile: FAILED" >&2
exit "$status"
