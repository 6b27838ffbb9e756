#!/usr/bin/env bash
# Compiles every CUDA source under csrc/cuda with nvcc for sm_80 and sm_90 (no GPU needed), so
# a CUDA compile error fails CI on machines without a GPU, with the flags torch's extension
# build adds, and checks the PTX of each kernel file for tensor-core products: every file has
# them (WMMA or mma.sync), for fp32 too (TF32: the tiled kernels' tiled_tc instantiations, the
# fused kernels, CUTLASS's 3xTF32 weight-gradient GEMM) and for bf16 (but weight_grad_gemm.cu,
# fp32 only; its products also show that the vendored CUTLASS headers were found). When torch is importable, also syntax-checks the ATen binding and
# ops.cpp with WITH_CUDA against torch's headers (a CPU torch ships the c10/cuda and ATen/cuda
# headers; one generated header is stubbed).
#
# Options (after the checks, for a look at the machine code without a GPU):
#   --resources FILE  write a markdown table of every kernel's registers, stack and spills per
#                     architecture (ptxas -v), e.g. bench/results/cuda_resources.md
#   --sass            count the tensor-core instructions (HMMA) of every kernel in the SASS
#                     (cuobjdump: from the CUDA toolkit, or the copy triton ships)
# Objects go to a temporary directory. Exit status: 0 ok, 1 a compile error or a missing
# tensor-core product, 2 no nvcc.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-nvcc}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
command -v "$NVCC" >/dev/null || { echo "check_cuda_compile: nvcc not found" >&2; exit 2; }
RESOURCES=""
SASS=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --resources) RESOURCES="$2"; shift 2 ;;
    --sass) SASS=1; shift ;;
    *) echo "check_cuda_compile: unknown option $1" >&2; exit 2 ;;
  esac
done

# Without --resources or --sass (CI), the device code is optimised less (cicc -O1, ptxas
# -O0): the same front end, the same PTX instructions checked below, and ptxas still
# assembles every kernel for both architectures, in about a quarter of the time
# (fused_backward.cu: 25 instead of 103 s, one core). The resource table and the SASS come
# from nvcc's defaults (-O3), as a build makes them.
DEVICE_OPT=(-Xcicc -O1 -Xptxas -O0)
if [ -n "$RESOURCES" ] || [ "$SASS" -eq 1 ]; then DEVICE_OPT=(); fi

OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
ARCHS=(-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90)
# torch.utils.cpp_extension.COMMON_NVCC_FLAGS: no implicit half/bf16 conversions or operators
TORCH_FLAGS=(-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr)

status=0
pids=()
start=$SECONDS
for cu in "$ROOT"/csrc/cuda/*.cu; do
  name="$(basename "$cu")"
  echo "[nvcc] $name (sm_80, sm_90)"
  mkdir -p "$OUT/keep-$name"
  "$NVCC" -std=c++17 -O3 -DWITH_CUDA "${TORCH_FLAGS[@]}" -I"$ROOT/csrc" \
    -I"$ROOT/third_party/cutlass/include" "${ARCHS[@]}" \
    -Xptxas -v ${DEVICE_OPT[@]+"${DEVICE_OPT[@]}"} -keep -keep-dir "$OUT/keep-$name" \
    -c "$cu" -o "$OUT/$name.o" \
    2> "$OUT/ptxas-$name.log" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "[nvcc] $((SECONDS - start)) s for ${#pids[@]} files"
# compiler errors (ptxas -v's resource lines go to the same stream)
grep -hv "^ptxas info\|^    [0-9]* bytes stack frame" "$OUT"/ptxas-*.log >&2 || true

# tensor-core products in each file's PTX: any (WMMA or mma.sync), TF32 (fp32) and bf16
ptx_files=0
for ptx in "$OUT"/keep-*/*.compute_{80,90}.ptx; do
  [ -f "$ptx" ] || continue
  ptx_files=$((ptx_files + 1))
  wanted=("mma.sync" "mma.sync.aligned.*tf32" "mma.sync.aligned.*bf16")
  [[ "$(basename "$ptx")" == weight_grad_gemm.* ]] && wanted=("mma.sync.aligned.*tf32")
  for what in "${wanted[@]}"; do
    if ! grep -q "$what" "$ptx"; then
      echo "check_cuda_compile: no tensor-core products ($what) in $(basename "$ptx")" >&2
      status=1
    fi
  done
done
if [ "$ptx_files" -ne $((2 * ${#pids[@]})) ]; then
  echo "check_cuda_compile: expected the PTX of every .cu for sm_80 and sm_90, found $ptx_files" >&2
  status=1
fi

if [ -n "$RESOURCES" ]; then
  cat "$OUT"/ptxas-*.log | "$PY" -c '
import re, subprocess, sys
rows, name, arch, spill = [], None, None, None
for line in sys.stdin:
    m = re.search(r"Compiling entry function .(\w+). for .(sm_\d+)", line)
    if m:
        name, arch = m.groups()
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and name:
        spill = m.groups()
    m = re.search(r"Used (\d+) registers", line)
    if m and name:
        rows.append((name, arch, m.group(1), *(spill or ("?", "?", "?"))))
        name, spill = None, None
names = subprocess.run(["c++filt"], input="\n".join(r[0] for r in rows), capture_output=True,
                       text=True).stdout.split("\n")
out = ["| kernel | arch | registers | stack bytes | spill stores | spill loads |",
       "| --- | --- | --- | --- | --- | --- |"]
for (_, arch, regs, stack, stores, loads), full in sorted(zip(rows, names), key=lambda r: (r[1], r[0][1])):
    short = full.replace("sobolev::cuda::", "").replace("(sobolev::cuda::FusedArgs)", "")
    short = short.replace("(sobolev::cuda::KernelArgs)", "").replace("__nv_bfloat16", "bf16")
    short = short.replace("__half", "fp16").replace("void ", "")
    out.append(f"| `{short}` | {arch} | {regs} | {stack} | {stores} | {loads} |")
print("\n".join(out))
' > "$OUT/resources.md"
  {
    echo "# CUDA kernels: registers and spills (ptxas -v, no GPU)"
    echo
    echo "Written by \`bash scripts/check_cuda_compile.sh --resources $RESOURCES\` with nvcc"
    echo "$("$NVCC" --version | tail -1), -O3 and torch's flags. Template arguments: storage"
    echo "type, order, then TF32 (tiled kernels: fp32 on tensor cores) or WIDTH, HIGH_OCCUPANCY"
    echo "and STAGED_SPLIT (fused kernels: FusedShape in csrc/cuda/fused_common.cuh)."
    echo "A clue for the GPU run, not a measurement of speed."
    echo
    cat "$OUT/resources.md"
  } > "$RESOURCES"
  echo "check_cuda_compile: resources in $RESOURCES"
fi

if [ "$SASS" -eq 1 ]; then
  CUOBJDUMP="$(command -v cuobjdump || true)"
  if [ -z "$CUOBJDUMP" ]; then
    CUOBJDUMP="$("$PY" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump"))' 2>/dev/null || true)"
  fi
  if [ ! -x "$CUOBJDUMP" ]; then
    echo "check_cuda_compile: --sass needs cuobjdump (CUDA toolkit or triton)" >&2
    status=1
  else
    for obj in "$OUT"/*.o; do
      "$CUOBJDUMP" -sass "$obj" | "$PY" -c '
import re, subprocess, sys
counts, name, arch = {}, None, None
for line in sys.stdin:
    m = re.search(r"arch = (sm_\d+)", line)
    if m:
        arch = m.group(1)
    m = re.search(r"Function : (\S+)", line)
    if m:
        name = m.group(1)
        counts[(name, arch)] = {}
    m = re.search(r"\b(HMMA\.\w+(?:\.\w+)*)", line)
    if m and name:
        c = counts[(name, arch)]
        c[m.group(1)] = c.get(m.group(1), 0) + 1
keys = list(counts)
names = subprocess.run(["c++filt"], input="\n".join(k[0] for k in keys), capture_output=True,
                       text=True).stdout.split("\n")
for (name, arch), full in sorted(zip(keys, names), key=lambda r: (r[1], r[0][1])):
    hmma = ", ".join(f"{k} x{v}" for k, v in sorted(counts[(name, arch)].items())) or "none"
    print(f"{arch}  {full[:110]}: {hmma}")
' | sed "s/^/[sass $(basename "$obj")] /"
    done
  fi
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
