#!/usr/bin/env bash
# The whole GPU check in one run of under 10 minutes (560 s) on one H100 or H200 (16 cores), offline
# (the machine's torch and triton; nothing downloaded):
#   bash scripts/gpu_session.sh                 # every stage: what a GPU session runs first
#   bash scripts/gpu_session.sh bench report    # named stages again, on the same warm machine
#   bash scripts/gpu_session.sh --dry-run       # the plan, every entry point checked (CI)
#   bash scripts/gpu_session.sh explore         # an extra stage, not in the default run
#   bash scripts/gpu_session.sh --prebuild      # HERE, before the first device call (no GPU,
#       about 10 min on 2 cores): the bench's Triton kernels compiled for the device's Triton
#       and Python into .gpu_work/prebuild/triton_cache.tar.gz; then run this script on the
#       device with carry=[".gpu_work/prebuild/triton_cache.tar.gz"] (bench/triton_cache.py)
# Stages, each under its own time limit in seconds (LIMIT below):
#   env      20  the device, versions, commit (or a digest of the sources where git is absent);
#                the prebuilt Triton cache installed where carried (and keyed for this
#                Triton: its compile part's cores then go to the tests)
#   build    90  the CUDA extension against the machine's torch (where the vendored CUTLASS
#                GEMM is what fails to compile, again without it); when it fails, the rest
#                still runs (the Triton backend needs no build)
#   checks  170  at once: the gpu tests (part "tests"; pytest-xdist when installed),
#                compute-sanitizer memcheck and racecheck of every fused kernel ("sanitize"),
#                the training step with the 64-row column-block tiles offered to the
#                backward in bf16 too (opt-in) at config M, a process per case, and where one
#                faults memcheck of it ("wide"; 64-row tiles faulted on 2026-11-27), and
#                compiling the benchmark's Triton kernels in parallel ("compile"). In a
#                run with the build, the compile part starts before it (it needs no
#                extension) and has the build's and the checks' limits together
#   bench   180  configs M, S, L in fp32, then in bf16 (the fp32 variants are what the
#                next run must settle; run 5 measured bf16 at S and M), training step and
#                forward; where the compile part did not finish its jobs, the bench first
#                compiles in $NCPU processes for at most BENCH_PRECOMPILE_SECONDS, taken
#                from the profile's (so that its tuner does not compile a shape's
#                candidates one after another)
#   sweep    40  (only when named) batch 2^10 to 2^20 at config M, fp32 and bf16, training
#                step: in the default run it measured 2 of its 12 points in its 40 s (run 5,
#                2026-11-27; a new batch is tuned afresh), so its time went to build and bench
#   profile  90  config M's GPU time per kernel, fp32 and bf16, and what is live at the peak
#                of memory; where a host-bound step's host time goes: M in bf16
#                (bench.host_profile); that step with its loss under torch.compile(mode=
#                "reduce-overhead"), whose CUDA graphs take the host's time away
#                (triton_compiled, into the bench's CSV); and why the kernels take their
#                time: Nsight Compute's counters (stalls, pipes, occupancy, bank conflicts)
#                of each kernel of the triton and fused CUDA steps at M, fp32 then bf16,
#                then S (bench.kernel_counters), which also take the session's time that
#                earlier stages left unused
#   report   10  tables (and plots of the sweep, where it ran), the open issues' goals checked,
#                and the verdicts on the forms no GPU had run (bench/verdicts.py)
#   explore 280  (only when named; a second command on the warm machine) the Triton backward
#                and forward kernels under launch configs the tuner does not offer, and the
#                resident forward (bench.launch_configs), at S and M
# The default stages' limits add up to 560 s (2026-11-27 run 5 used 557 s, its build, tests,
# bench and sweep cut by their limits), and no stage runs past 560 s from the start of
# a call: run it with the device's timeout at 585 s or more.
# A stage that fails or runs out of time does not stop the others; the exit status says.
# Work in .gpu_work/ (ignored; kept while the machine stays warm). $OUT (default
# .gpu_work/out) gets at most 8 files: session.log (this output), env.txt, the CSV,
# BENCHMARKS.md (with the autotuners' measurements of every candidate at its end),
# gpu_tests.txt, sanitizer.txt, kernels_M.md and gpu_session.tar.gz (the rest).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
WORK="$ROOT/.gpu_work"
OUT="${OUT:-$WORK/out}"
TOTAL="${GPU_SESSION_SECONDS:-560}"
STAGES=(env build checks bench sweep profile report explore)
DEFAULT_STAGES=(env build checks bench profile report)
# build: 70 s in run 5 (2026-11-27), beside the compile part
declare -A LIMIT=([env]=20 [build]=90 [checks]=170 [bench]=180 [sweep]=40 [profile]=90 [report]=10
                  [explore]=280)
BENCH_PRECOMPILE_SECONDS=60
NCPU="$(nproc 2>/dev/null || echo 4)"
TEST_JOBS=$(( NCPU / 2 > 1 ? NCPU / 2 : 1 ))
COMPILE_JOBS=$(( NCPU - TEST_JOBS - 2 > 1 ? NCPU - TEST_JOBS - 2 : 1 ))
# Every entry point's arguments, shared by the run and the dry run.
# cuda_graphed is back in: run 3 (2026-11-27) had it within 1% of cuda at S, M and L, GPU-bound
# then, but run 5's host profile had the CUDA step's host at 1.25 ms at M in bf16, and #19's
# bf16 goal at M (1.25 x the fastest fused step, triton_graphed's 0.71 ms) can only be judged
# like for like from a replayed graph once the CUDA kernels take less than that.
# cuda_tiled, cuda_tiled_tc, cuda_fused_gemm and cuda_fused left out: run 5 had them slower
# than the default at every config, cuda_fused 2-3x, cuda_tiled up to 7x (and the bench ran
# out of time before L in bf16); cuda_tiled had the least memory (395 MiB at S in fp32,
# 0.44 x eager), which cuda_lean's row chunks are for now;
# cuda_bias_gemv, cuda_bias_operands: their bias sums are timed by the profile stage's kernel
# table
# (triton_resident_backward and triton_wide_tiles in bf16 only: bench/providers.py)
# (cuda_staged_split, triton_split_tf32x3 and triton_kmajor_inputs are timed in fp32 only: in
# bf16 they run the default's kernels, or nearly)
# triton_compiled: an inductor compile per point (seconds each); timed at M in bf16 by the
# profile stage
# triton_jit_launch: what direct launches save is host time, which the host profile times
# --goals-first: M in fp32 and bf16, S and L in fp32 (what #18's and #19's goals judge, and
# M is where the kernel profile and most verdicts look), then S and L in bf16. Run 5 took
# 11-57 s a point with 17 providers and ran out of its limit before L in bf16; with 22 now,
# fp32 alone would take about the limit, and the bf16-only forms would go unmeasured.
BENCH_ARGS=(--configs M S L --sweeps --precisions fp32 bf16 --goals-first
            --modes step forward
            --exclude cuda_tiled cuda_tiled_tc cuda_fused_gemm cuda_fused cuda_bias_gemv
            cuda_bias_operands triton_compiled triton_jit_launch)
# torch_compile's failure (no double backward) is structural: recorded by bench, not again;
# the backends' variants are compared at S, M and L by bench, not at every batch (but
# triton_graphed: the step's GPU time without its host time, the sweep's question)
SWEEP_ARGS=(--configs --sweeps batch --precisions fp32 bf16 --modes step
            --exclude torch_compile triton_recompute triton_persistent triton_lean
            triton_lean_persistent cuda_tiled cuda_tiled_tc cuda_fused cuda_fused_gemm
            cuda_bias_gemv cuda_bias_operands cuda_staged_split cuda_splitk_tc cuda_cutlass_gemm
            cuda_backward_operands cuda_operands_cutlass cuda_batched_pass cuda_lean cuda_graphed
            triton_compiled triton_jit_launch triton_split_tf32x3 triton_kmajor_inputs
            triton_resident_backward triton_wide_tiles)
COMPILE_ARGS=(--configs M S L --sweeps batch --precisions fp32 bf16 --modes step forward
              --exclude torch_compile triton_jit_launch cuda_bias_gemv cuda_bias_operands
              cuda_staged_split cuda_splitk_tc cuda_cutlass_gemm cuda_backward_operands
              cuda_operands_cutlass cuda_batched_pass cuda_lean --compile-only)
PROFILE_ARGS=(--configs M --precisions fp32 bf16 --memory)
# bf16 at the bench's batch: the step run 3 found host-bound (1.08 ms of GPU time in 2.12 ms);
# triton_jit_launch: the same step with every launch through Triton's own path (what
# direct_launch saves)
HOST_ARGS=(--config M --batch 65536 --precision bf16 --providers triton triton_jit_launch cuda
           --steps 50)
# the loss under torch.compile(mode="reduce-overhead") where the step is host-bound (M, bf16)
COMPILED_ARGS=(--configs M --sweeps --precisions bf16 --modes step --providers triton_compiled
               --out-dir "$WORK/bench")
# four GPU runs timed the kernels; none said why the fp32 ones run at about 9 TFLOP/s
# (then S: width 64, where #19's design should beat Triton); cuda_staged_split: whether
# splitting the weights once took the fused kernels' ALU-bound time away (run 5's counters);
# triton_kmajor_inputs: whether the split-K weight gradients' shared-store bank conflicts
# went with the transposed inputs stacks (where its tuner chose split-K); cuda_splitk_tc:
# whether the tensor-core split-K's staging leaves its products waiting on memory (last: the
# stage's time may end first)
COUNTERS_ARGS=(--configs M S --precisions fp32 bf16 --providers triton triton_kmajor_inputs
               cuda cuda_staged_split cuda_splitk_tc --work-dir "$WORK/counters")
# -v: a test that hangs is named. test_step_quick_on_gpu (bench.step --quick on every
# provider) is the bench stage's own job: in run 5 it was still running at the tests' limit,
# and the 8 tests queued behind it in its worker never ran (the other 260 took under 170 s).
# The tests of kernel forms no GPU has run (mark unmeasured) are collected first
# (tests/conftest.py): where the limit cuts, it cuts others
TEST_ARGS=(-v -rfE -m gpu -p no:cacheprovider tests
           --deselect tests/test_bench.py::test_step_quick_on_gpu)
# the step with the 64-row tiles among the backward's candidates in bf16 too
# (SOBOLEV_TRITON_WIDE_TILES=1; fp32 has them by default since run 5, 2026-11-27; their
# 8-warp form faulted in run 1)
WIDE_ARGS=(--configs M --batches 16384 --precisions fp32 bf16 --providers triton
           --modes step --jobs 2)
# the backward first: the forward's configs were timed on 2026-11-27 (run 4), the backward's never
EXPLORE_ARGS=(--configs M S --precisions fp32 bf16 --kernels bwd fwd
              --jobs $(( NCPU > 4 ? NCPU - 2 : 2 )))
# the source tree, built or not: a failed build still leaves the Triton backend importable
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$WORK/triton_cache}"  # shared by the stages
export SOBOLEV_AUTOTUNE="${SOBOLEV_AUTOTUNE:-1}"
export PYTHONUNBUFFERED=1  # a log cut by a time limit keeps what was printed

say() { echo "[$(printf '%3d' "$SECONDS") s] $*"; }
STATUS=()  # "stage status seconds limit" per stage or part, for the summary
record() { STATUS+=("$(printf '%-10s %-8s %5s s  (limit %s s)' "$@")"); }
failed=0

limit_for() {  # the stage's limit, cut to what is left of TOTAL
  local left=$(( TOTAL - SECONDS ))
  local limit="${LIMIT[$1]}"
  echo $(( limit < left ? limit : left ))
}

# limited <seconds> <log> <command...>: output to log; status 124 when it ran out of time
limited() {
  local t="$1" log="$2"
  shift 2
  timeout -k 10 "$t" "$@" > "$log" 2>&1
}

# run_part <name> <seconds> <command...>: runs a limited command, records how it went
run_part() {
  local name="$1" t="$2" start=$SECONDS rc
  shift 2
  "$@"
  rc=$?
  finish "$name" "$rc" $(( SECONDS - start )) "$t"
}

finish() {  # finish <name> <rc> <seconds> <limit>
  local how=ok
  if [ "$2" -eq 124 ] || [ "$2" -eq 137 ]; then how=TIMEOUT; elif [ "$2" -ne 0 ]; then how="FAILED:$2"; fi
  [ "$how" = ok ] || failed=1
  say "$1: $how after $3 s"
  record "$1" "$how" "$3" "$4"
}

# a tool on the PATH or in the CUDA toolkit (or an Nsight Compute install); fails where absent
find_tool() {
  local found
  found="$(command -v "$1" 2>/dev/null || ls /usr/local/cuda*/bin/"$1" /opt/nvidia/nsight-compute/*/"$1" 2>/dev/null | tail -1)"
  [ -n "$found" ] && echo "$found"
}
sanitizer() { find_tool compute-sanitizer; }

stage_env() {
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: ${SOBOLEV_COMMIT}"
    timeout 10 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
      --format=csv 2>&1
    timeout -k 5 "$1" "$PY" - <<'PY' 2>&1
from importlib import metadata
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for name in ("triton", "jax", "jaxlib", "pytest", "pytest-xdist"):  # versions, no imports
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
PY
    echo "compute-sanitizer: $(sanitizer || echo not found)"
    local ncu
    if ncu="$(find_tool ncu)"; then echo "ncu: $ncu, $(timeout 10 "$ncu" --version 2>&1 | tail -1)"
    else echo "ncu: not found"; fi
    # the kernels compiled ahead of time here (bash scripts/gpu_session.sh --prebuild), where
    # the device's run carried them: run 5's host took 191 s on 6 cores for half as many
    timeout -k 5 "$1" "$PY" -m bench.triton_cache install 2>&1
    echo "cores: $NCPU (tests $TEST_JOBS, compile $COMPILE_JOBS)"
  } > "$WORK/env.txt"
  cat "$WORK/env.txt"
  # with the benchmark's kernels already compiled, the compile part's cores go to the tests
  # (cut by their limit in runs 3 to 6)
  if grep -q "keyed for this Triton: yes" "$WORK/env.txt"; then
    TEST_JOBS=$(( NCPU * 3 / 4 > 1 ? NCPU * 3 / 4 : 1 ))
    COMPILE_JOBS=2
    echo "prebuilt cache in place: tests -n $TEST_JOBS, compile $COMPILE_JOBS processes"
  fi
}

stage_build() {
  local arch
  arch="$("$PY" -c "import torch; print('.'.join(map(str, torch.cuda.get_device_capability())))")" \
    || { echo "no CUDA device visible to torch"; return 1; }
  build_extension "$1" "$arch" "$WORK/build.log"
  local rc=$?
  [ $rc -eq 0 ] || tail -20 "$WORK/build.log"
  # the vendored CUTLASS GEMM (csrc/cuda/weight_grad_gemm.cu, never compiled on a GPU machine
  # before 2026-11-28) must not cost the whole CUDA backend: where it is what failed (ninja's
  # FAILED line names its object, or nvcc's error is in it or a CUTLASS header; every nvcc
  # command line names the CUTLASS include directory, so no looser match), again without it
  # (its GEMM then not offered; the later stages get less time)
  if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qE "$CUTLASS_FAILED" "$WORK/build.log"; then
    say "build: the CUTLASS GEMM did not compile; again without it (SOBOLEV_NO_CUTLASS=1)"
    SOBOLEV_NO_CUTLASS=1 build_extension "$1" "$arch" "$WORK/build_no_cutlass.log"
    rc=$?
    [ $rc -eq 0 ] || tail -20 "$WORK/build_no_cutlass.log"
  fi
  "$PY" -c "import sobolev_kernels as sk; print('backends:', sk.available_backends())"
  return $rc
}

CUTLASS_FAILED='FAILED: .*weight_grad_gemm\.o|(weight_grad_gemm\.cu|cutlass/include/[^ (]*)\([0-9]+\): (catastrophic )?error'

build_extension() {  # build_extension <seconds> <arch> <log>: the extension, in place
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$2" MAX_JOBS="$NCPU" SOBOLEV_REQUIRE_EXTENSION=1 \
    limited "$1" "$3" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
}

part_tests() {
  local parallel=()
  "$PY" -c "import xdist" 2>/dev/null && parallel=(-n "$TEST_JOBS")
  # static launch configs: the autotuner would time every candidate of every test shape; one
  # intra-op thread per worker (the checks' parts share the cores: torch's OpenMP threads
  # spin-waiting on busy cores made CPU tests 8-10x slower on CI's machine, 2026-11-28)
  rm -f "$WORK/gpu_test_failures.txt" "$WORK/gpu_test_durations.txt"
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
    SOBOLEV_AUTOTUNE=0 SOBOLEV_TEST_FAILURES="$WORK/gpu_test_failures.txt" \
      SOBOLEV_TEST_DURATIONS="$WORK/gpu_test_durations.txt" limited "$1" \
      "$WORK/gpu_tests.txt" "$PY" -m pytest ${parallel[@]+"${parallel[@]}"} "${TEST_ARGS[@]}"
  local rc=$?
  # where the tests' time went, as far as they got (runs 3 to 6 cut them at their limit)
  if [ -s "$WORK/gpu_test_durations.txt" ]; then
    { echo "==== slowest tests (setup or call), as far as they ran"
      sort -rn "$WORK/gpu_test_durations.txt" | head -40; } >> "$WORK/gpu_tests.txt"
  fi
  # each failure's traceback as it happened (a time limit cuts pytest's own summary)
  if [ -s "$WORK/gpu_test_failures.txt" ]; then
    { echo "==== failures, as they happened"; cat "$WORK/gpu_test_failures.txt"; } \
      >> "$WORK/gpu_tests.txt"
  fi
  return $rc
}

part_sanitize() {  # part_sanitize <tool> <seconds>
  local tool
  tool="$(sanitizer)" || { echo "compute-sanitizer not found" > "$WORK/sanitizer_$1.txt"; return 1; }
  # without the caching allocator each tensor is an allocation of its own, so memcheck sees
  # an access past a tensor (in a cached segment it would read or write silently)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 SOBOLEV_AUTOTUNE=0 limited "$2" "$WORK/sanitizer_$1.txt" \
    "$tool" --tool "$1" --error-exitcode 3 "$PY" scripts/sanitize_case.py
}

part_wide() {  # part_wide <seconds>: the wide tiles, each case alone; memcheck of a failure
  local t="$1" rc c b p provider mode
  SOBOLEV_TRITON_WIDE_TILES=1 limited $(( t * 2 / 3 )) "$WORK/wide.txt" \
    "$PY" -m bench.isolate "${WIDE_ARGS[@]}" --seconds $(( t * 2 / 3 ))
  rc=$?
  read -r c b p provider mode <<< "$(grep -m1 FAILED "$WORK/wide.txt" | awk '{print $1, $2, $3, $4, $5}')"
  local rest=$(( t / 3 - 5 > 5 ? t / 3 - 5 : 5 ))
  if [ -n "$c" ] && sanitizer > /dev/null; then
    echo "==== memcheck of $c $b $p $provider $mode" >> "$WORK/wide.txt"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 SOBOLEV_TRITON_WIDE_TILES=1 timeout -k 5 "$rest" \
      "$(sanitizer)" --tool memcheck --print-limit 5 \
      "$PY" -m bench.isolate --case "$c" "${b#B=}" "$p" "$provider" "$mode" >> "$WORK/wide.txt" 2>&1
  fi
  return $rc
}

part_compile() {  # (COMPILE_JOBS as the env stage left it)
  limited "$1" "$WORK/compile.log" "$PY" -m bench.step "${COMPILE_ARGS[@]}" \
    --precompile "$COMPILE_JOBS"
}

COMPILE_PID=""  # the compile part, once started
COMPILE_LIMIT=""
start_compile() {  # start_compile <seconds>: the compile part in the background
  COMPILE_LIMIT="$1"
  run_part compile "$1" part_compile "$1" > "$WORK/.part_compile" 2>&1 &
  COMPILE_PID=$!
}

bench_precompile() {  # the bench's own precompile arguments, where the compile part fell short
  local last
  last="$(grep -oE '^\[precompile [0-9]+/[0-9]+\]' "$WORK/compile.log" 2>/dev/null | tail -1)"
  if [[ "$last" =~ ([0-9]+)/([0-9]+) ]] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ]; then
    return
  fi
  echo --precompile "$NCPU" --precompile-seconds "$BENCH_PRECOMPILE_SECONDS"
}

stage_checks() {  # stage_checks <seconds> [tests] [sanitize] [wide] [compile]: the parts at once
  local t="$1" jobs=() part
  shift
  local parts=("$@")
  [ ${#parts[@]} -gt 0 ] || parts=(tests sanitize wide compile)
  for part in "${parts[@]}"; do
    case "$part" in
      tests) jobs+=(tests) ;;
      sanitize) jobs+=(memcheck racecheck) ;;
      wide) jobs+=(wide) ;;
      compile) jobs+=(compile) ;;
    esac
  done
  declare -A pid limit
  for job in "${jobs[@]}"; do
    limit[$job]="$t"
    case "$job" in
      tests) run_part tests "$t" part_tests "$t" > "$WORK/.part_tests" 2>&1 & pid[$job]=$! ;;
      memcheck | racecheck)
        run_part "$job" "$t" part_sanitize "$job" "$t" > "$WORK/.part_$job" 2>&1 &
        pid[$job]=$! ;;
      wide) run_part wide "$t" part_wide "$t" > "$WORK/.part_wide" 2>&1 & pid[$job]=$! ;;
      compile)  # started before the build, or now
        [ -n "$COMPILE_PID" ] || start_compile "$t"
        pid[$job]="$COMPILE_PID"
        limit[$job]="$COMPILE_LIMIT" ;;
    esac
  done
  for job in "${jobs[@]}"; do
    wait "${pid[$job]}"
    # the part ran in a subshell: its verdict line is in its file
    cat "$WORK/.part_$job"
    line="$(grep -E "^\[ *[0-9]+ s\] $job: " "$WORK/.part_$job" | tail -1)"
    how="$(echo "$line" | sed -E 's/.*: ([^ ]+) after ([0-9]+) s/\1 \2/')"
    record "$job" ${how:-FAILED ?} "${limit[$job]}"
    case "$how" in ok*) ;; *) failed=1 ;; esac
  done
  [ -f "$WORK/gpu_tests.txt" ] && tail -3 "$WORK/gpu_tests.txt"
  for tool in memcheck racecheck; do
    [ -f "$WORK/sanitizer_$tool.txt" ] && grep -E "ERROR SUMMARY|MISMATCH|not found" "$WORK/sanitizer_$tool.txt" | sed "s/^/$tool: /"
  done
  [ -f "$WORK/wide.txt" ] && grep -E " ok | FAILED|TIMEOUT|cases failed|ERROR SUMMARY|Invalid" \
    "$WORK/wide.txt" | head -12 | sed 's/^/wide: /'
  grep -c "^\[precompile" "$WORK/compile.log" 2>/dev/null | sed 's/^/compiled points: /'
}

# whether the checks saw a kernel fault (a lost CUDA context; the compile part, which runs
# every tuner candidate once, names only its exception's type): then the later stages run
# the Triton tuners without the candidates no GPU has run yet (SOBOLEV_TRITON_UNMEASURED=0,
# docs/unmeasured.md), so that one of them cannot cost the benchmark's rows
checks_faulted() {
  local faults="illegal memory access|illegal instruction|misaligned address"
  grep -qsE "$faults|unspecified launch failure|AcceleratorError" \
    "$WORK/gpu_test_failures.txt" "$WORK/gpu_tests.txt" "$WORK/wide.txt" "$WORK/compile.log"
}

stage_bench() {  # stage_bench <seconds> <log> <step.py arguments...>
  local t="$1" log="$2"
  shift 2
  timeout -k 10 "$t" "$PY" -m bench.step --out-dir "$WORK/bench" "$@" 2>&1 \
    | tee "$WORK/$log" | grep --line-buffered -E '^\[point|^wrote|Error|error:'
  return "${PIPESTATUS[0]}"
}

stage_profile() {  # stage_profile <seconds>: its parts in turn, each within what is left
  local t="$1" start=$SECONDS rc=0 slack counters
  # within_stage <wanted>: that many seconds, or what is left of the stage (0: skip the part)
  within_stage() {
    local left=$(( t - (SECONDS - start) ))
    left=$(( left < $1 ? left : $1 ))
    echo $(( left >= 5 ? left : 0 ))
  }
  # the kernel profile gets what the later parts (host 15 s, compiled 30 s, counters 35 s at
  # least) leave of the stage
  local part
  part="$(within_stage $(( t - 80 > 10 ? t - 80 : 10 )))"
  if [ "$part" -gt 0 ]; then
    limited "$part" "$WORK/profile.log" "$PY" -m bench.kernel_profile "${PROFILE_ARGS[@]}" \
      --out "$WORK/kernels_M.md" || rc=1
    grep -E "^## |\*\*total\*\*" "$WORK/kernels_M.md" 2>/dev/null || tail -5 "$WORK/profile.log"
  fi
  # where a host-bound step's CPU time goes (appended to kernels_M.md: $OUT holds 8 files)
  part="$(within_stage 15)"
  if [ "$part" -gt 0 ]; then
    limited "$part" "$WORK/host.log" "$PY" -m bench.host_profile "${HOST_ARGS[@]}" \
      --out "$WORK/host_M.md" || rc=1
    grep "^## " "$WORK/host_M.md" 2>/dev/null || tail -3 "$WORK/host.log"
    cat "$WORK/host_M.md" >> "$WORK/kernels_M.md" 2>/dev/null
  fi
  part="$(within_stage 30)"
  if [ "$part" -gt 0 ]; then
    limited "$part" "$WORK/compiled.log" "$PY" -m bench.step "${COMPILED_ARGS[@]}" || rc=1
    grep -E "^\[point|^wrote|Error|error:" "$WORK/compiled.log" | tail -3
  fi
  # the counters: the rest of the stage, or more where earlier stages left time unused (the
  # report's limit kept)
  counters="$(within_stage "$t")"
  slack=$(( TOTAL - SECONDS - LIMIT[report] - 5 ))
  counters=$(( slack > counters ? slack : counters ))
  if [ "$counters" -ge 15 ]; then
    limited "$counters" "$WORK/counters.log" "$PY" -m bench.kernel_counters \
      "${COUNTERS_ARGS[@]}" --seconds $(( counters - 5 )) --out "$WORK/counters_M.md" || rc=1
    grep -E "^## |^No kernels" "$WORK/counters_M.md" 2>/dev/null || tail -3 "$WORK/counters.log"
    cat "$WORK/counters_M.md" >> "$WORK/kernels_M.md" 2>/dev/null
  else
    echo "counters: skipped, $counters s left"
    rc=1
  fi
  return $rc
}

stage_explore() {
  limited "$1" "$WORK/explore.txt" "$PY" -m bench.launch_configs "${EXPLORE_ARGS[@]}"
  local rc=$?
  cat "$WORK/explore.txt"
  return $rc
}

stage_report() {
  mkdir -p "$WORK/report"
  limited "$1" "$WORK/report.log" "$PY" -m bench.report --out-dir "$WORK/report" "$WORK"/bench/*.csv
  local rc=$?
  # the training step at config M, the point the issues are about
  grep -A 12 -E '^\*\*M\*\*, (fp32|bf16), step' "$WORK/report/BENCHMARKS.md" 2>/dev/null \
    || tail -5 "$WORK/report.log"
  # and the open issues' goals, each met, missed or not measured (also in BENCHMARKS.md)
  local csv
  # and what the run says of each form no GPU had run (docs/unmeasured.md): its rows against
  # its baseline's, the tuners' choices, its gpu tests; into BENCHMARKS.md
  for csv in "$WORK"/bench/*.csv; do
    [ -f "$csv" ] || continue
    timeout 10 "$PY" -m bench.goals "$csv"
    timeout 10 "$PY" -m bench.verdicts "$csv" --tests "$WORK/gpu_tests.txt" \
      --kernels "$WORK/kernels_M.md" --tuning "$WORK"/bench/*_tuning_*.md \
      | tee -a "$WORK/report/BENCHMARKS.md"
  done
  return $rc
}

pack() {  # at most 8 files in $OUT: session.log (written as we go) and these
  mkdir -p "$OUT"
  cp "$WORK/env.txt" "$WORK"/bench/*.csv "$WORK/report/BENCHMARKS.md" "$WORK/gpu_tests.txt" \
    "$WORK/kernels_M.md" "$OUT/" 2>/dev/null
  # what the autotuners measured (every candidate of every choice), after the tables
  cat "$WORK"/bench/*_tuning_*.md >> "$OUT/BENCHMARKS.md" 2>/dev/null
  if ls "$WORK"/sanitizer_*.txt > /dev/null 2>&1; then
    for tool in memcheck racecheck; do
      [ -f "$WORK/sanitizer_$tool.txt" ] && { echo "==== $tool"; tail -200 "$WORK/sanitizer_$tool.txt"; }
    done > "$OUT/sanitizer.txt"
  fi
  # (not the Triton caches: the machine's, and the one carried here, ./prebuild)
  tar -czf "$OUT/gpu_session.tar.gz" -C "$WORK" --exclude=./triton_cache --exclude=./out \
    --exclude=./prebuild --exclude='*.ncu-rep' . 2>/dev/null
  # a file over 16 MiB would not come back: without the full sanitizer logs (their tails are
  # in sanitizer.txt), which are what can grow
  if [ "$(stat -c %s "$OUT/gpu_session.tar.gz")" -gt 15000000 ]; then
    tar -czf "$OUT/gpu_session.tar.gz" -C "$WORK" --exclude=./triton_cache --exclude=./out \
      --exclude=./prebuild --exclude='*.ncu-rep' --exclude='./sanitizer_*' . 2>/dev/null
  fi
  say "results in $OUT:"
  ls -la "$OUT"
}

source_digest() {  # identifies the sources where there is no git (a copied tree)
  find sobolev_kernels csrc bench scripts tests setup.py pyproject.toml -type f \
    \( -name '*.py' -o -name '*.sh' -o -name '*.cu' -o -name '*.cpp' -o -name '*.h' -o -name '*.cuh' -o -name '*.toml' \) \
    2>/dev/null | LC_ALL=C sort | xargs cat | sha1sum | cut -c1-8
}

dry_run() {
  local bad=0 sum=0 s
  echo "plan ($TOTAL s at most; $NCPU cores: tests -n $TEST_JOBS, compile $COMPILE_JOBS processes):"
  for s in "${DEFAULT_STAGES[@]}"; do
    printf '  %-8s %4s s\n' "$s" "${LIMIT[$s]}"
    sum=$(( sum + ${LIMIT[$s]} ))
  done
  echo "  limits add up to $sum s (explore, only when named: ${LIMIT[explore]} s)"
  [ "$sum" -le "$TOTAL" ] || { echo "the limits exceed $TOTAL s"; bad=1; }
  # every entry point with the arguments the run gives it, all at once (each imports torch)
  local tmp whats=() n=0 i rc
  tmp="$(mktemp -d)"
  check() {  # check <what> <command...>
    whats+=("$1")
    n=$(( n + 1 ))
    shift
    ( "$@" > "$tmp/$n.out" 2>&1; echo $? > "$tmp/$n.rc" ) &
  }
  check "bench: python -m bench.step ${BENCH_ARGS[*]}" "$PY" -m bench.step "${BENCH_ARGS[@]}" --dry-run
  local first=(--precompile "$NCPU" --precompile-seconds "$BENCH_PRECOMPILE_SECONDS")
  check "bench, compiling first: python -m bench.step ... ${first[*]}" \
    "$PY" -m bench.step "${BENCH_ARGS[@]}" "${first[@]}" --dry-run
  check "sweep: python -m bench.step ${SWEEP_ARGS[*]}" "$PY" -m bench.step "${SWEEP_ARGS[@]}" --dry-run
  check "compile: python -m bench.step ${COMPILE_ARGS[*]} --precompile $COMPILE_JOBS" \
    "$PY" -m bench.step "${COMPILE_ARGS[@]}" --precompile "$COMPILE_JOBS" --dry-run
  check "profile: python -m bench.kernel_profile ${PROFILE_ARGS[*]}" "$PY" -m bench.kernel_profile "${PROFILE_ARGS[@]}" --dry-run
  check "host profile: python -m bench.host_profile ${HOST_ARGS[*]}" "$PY" -m bench.host_profile "${HOST_ARGS[@]}" --dry-run
  check "compiled: python -m bench.step ${COMPILED_ARGS[*]}" "$PY" -m bench.step "${COMPILED_ARGS[@]}" --dry-run
  check "counters: python -m bench.kernel_counters ${COUNTERS_ARGS[*]}" \
    "$PY" -m bench.kernel_counters "${COUNTERS_ARGS[@]}" --dry-run
  check "prebuilt cache: python -m bench.triton_cache install --archive <none>" \
    "$PY" -m bench.triton_cache install --archive "$tmp/none.tar.gz" --cache-dir "$tmp/cache"
  check "report: python -m bench.report" "$PY" -m bench.report --help
  check "goals: python -m bench.goals" "$PY" -m bench.goals --help
  check "verdicts: python -m bench.verdicts" "$PY" -m bench.verdicts --help
  check "sanitize: python scripts/sanitize_case.py" "$PY" scripts/sanitize_case.py --dry-run
  check "wide: python -m bench.isolate ${WIDE_ARGS[*]}" "$PY" -m bench.isolate "${WIDE_ARGS[@]}" --dry-run
  check "tests: python -m pytest ${TEST_ARGS[*]}" "$PY" -m pytest --version
  check "explore: python -m bench.launch_configs ${EXPLORE_ARGS[*]}" \
    "$PY" -m bench.launch_configs "${EXPLORE_ARGS[@]}" --dry-run
  wait
  for i in $(seq 1 "$n"); do
    rc="$(cat "$tmp/$i.rc")"
    if [ "$rc" = 0 ]; then
      echo "ok   ${whats[$((i - 1))]}"
      sed 's/^/       /' "$tmp/$i.out" | head -12
    else
      echo "FAIL ${whats[$((i - 1))]} (exit $rc)"
      tail -8 "$tmp/$i.out"
      bad=1
    fi
  done
  rm -rf "$tmp"
  "$PY" -c "import xdist" 2>/dev/null && echo "note pytest-xdist here: tests -n $TEST_JOBS" \
    || echo "note no pytest-xdist here: the tests run in one process"
  for tool in nvidia-smi timeout tar; do
    command -v "$tool" > /dev/null && echo "ok   $tool" || echo "note $tool not found here"
  done
  sanitizer > /dev/null && echo "ok   compute-sanitizer" || echo "note compute-sanitizer not found here"
  find_tool ncu > /dev/null && echo "ok   ncu" || echo "note ncu not found here"
  return $bad
}

main() {
  local stages=() part_args=() s
  for s in "$@"; do
    case "$s" in
      env | build | checks | bench | sweep | profile | report | explore) stages+=("$s") ;;
      tests | sanitize | wide | compile) part_args+=("$s") ;;
      *) echo "unknown stage $s (${STAGES[*]}, or the checks' parts: tests sanitize wide compile)"; return 2 ;;
    esac
  done
  [ ${#part_args[@]} -gt 0 ] && stages+=(checks)
  [ ${#stages[@]} -gt 0 ] || stages=("${DEFAULT_STAGES[@]}")
  [[ " ${stages[*]} " == *" env "* ]] || stages=(env "${stages[@]}")  # always: what ran where
  say "gpu_session: ${stages[*]} ${part_args[*]}"
  for s in "${STAGES[@]}"; do
    [[ " ${stages[*]} " == *" $s "* ]] || continue
    local t first=""
    if [ "$s" = bench ]; then
      first="$(bench_precompile)"
      if [ -n "$first" ]; then  # its time from the profile's: S, M and L come first
        LIMIT[bench]=$(( LIMIT[bench] + BENCH_PRECOMPILE_SECONDS ))
        LIMIT[profile]=$(( LIMIT[profile] - BENCH_PRECOMPILE_SECONDS ))
      fi
    fi
    # from the bench on, every process serves the tuners' choices that the first one measured
    # (sobolev_kernels/tuning.py): run 5's counters, timed under Nsight Compute, had chosen
    # other weight gradients than its bench
    if [[ " bench sweep profile explore " == *" $s "* ]]; then
      export SOBOLEV_TUNING_FILE="$WORK/tuning.json"
    fi
    t="$(limit_for "$s")"
    if [ "$t" -lt 5 ]; then
      say "=== $s: skipped, no time left"
      record "$s" skipped 0 "${LIMIT[$s]}"
      failed=1
      continue
    fi
    if [ "$s" = build ] && [[ " ${stages[*]} " == *" checks "* ]] \
      && { [ ${#part_args[@]} -eq 0 ] || [[ " ${part_args[*]} " == *" compile "* ]]; }; then
      local early=$(( LIMIT[build] + LIMIT[checks] ))
      early=$(( early < TOTAL - SECONDS ? early : TOTAL - SECONDS ))
      say "=== compile (part of checks) starts now, beside the build (limit $early s)"
      start_compile "$early"
    fi
    say "=== $s (limit $t s)"
    if [[ " bench sweep profile " == *" $s "* ]] && [ -z "${SOBOLEV_TRITON_UNMEASURED:-}" ] \
      && checks_faulted; then
      export SOBOLEV_TRITON_UNMEASURED=0
      say "the checks saw a kernel fault: from here the Triton tuners leave out the" \
        "unmeasured candidates (SOBOLEV_TRITON_UNMEASURED=0)"
    fi
    case "$s" in
      checks) stage_checks "$t" ${part_args[@]+"${part_args[@]}"} ;;
      bench)
        [ -z "$first" ] || say "the compile part did not finish its jobs: the bench compiles first ($first; $BENCH_PRECOMPILE_SECONDS s taken from the profile)"
        # shellcheck disable=SC2086  # the words of $first are arguments
        run_part bench "$t" stage_bench "$t" bench.log "${BENCH_ARGS[@]}" $first ;;
      sweep) run_part sweep "$t" stage_bench "$t" sweep.log "${SWEEP_ARGS[@]}" ;;
      *) run_part "$s" "$t" "stage_$s" "$t" ;;
    esac
  done
  pack
  say "summary:"
  printf '  %s\n' "${STATUS[@]}"
  return $failed
}

if [ "${1:-}" = "--dry-run" ]; then
  dry_run
  exit $?
fi
if [ "${1:-}" = "--prebuild" ]; then  # here, with no GPU: bench/triton_cache.py
  [ -d "$ROOT/.venv/triton-3.6.0" ] && export PYTHONPATH="$ROOT/.venv/triton-3.6.0:$PYTHONPATH"
  "${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}" \
    -m bench.triton_cache build -- "${COMPILE_ARGS[@]}"
  exit $?
fi
# what ran: the commit (+dirty for local changes), or without git (a copied tree) a digest
# of the sources, which bench/step.py then writes into the CSV's commit column
if [ -z "${SOBOLEV_COMMIT:-}" ]; then
  if git rev-parse HEAD > /dev/null 2>&1; then
    SOBOLEV_COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo +dirty)"
  else
    SOBOLEV_COMMIT="src-$(source_digest)"
  fi
fi
export SOBOLEV_COMMIT
mkdir -p "$WORK" "$OUT"
main "$@" 2>&1 | tee "$OUT/session.log"
exit "${PIPESTATUS[0]}"
