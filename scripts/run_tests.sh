#!/usr/bin/env bash
# The tests: sets up the environment, then pytest. Without a GPU, Triton kernels run under
# TRITON_INTERPRET=1 on small shapes and `gpu` tests skip. Arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# bench extras too: CI runs the paper reproductions' --quick modes and renders report plots;
# and the GPU machines' triton version, to compile the kernels with it as well
source "$ROOT/scripts/setup_env.sh" test bench other_triton
cd "$ROOT"
# one test process per core where pytest-xdist is installed (SOBOLEV_TEST_WORKERS to change);
# tests handed out one at a time where it can (the heavy ones go first: tests/conftest.py)
parallel=()
if "$PY" -c "import xdist" 2>/dev/null; then
  parallel=(-n "${SOBOLEV_TEST_WORKERS:-auto}")
  "$PY" -c "import inspect, sys, xdist.plugin as p; sys.exit('maxschedchunk' not in inspect.getsource(p))" \
    2>/dev/null && parallel+=(--maxschedchunk 1)
  # one intra-op thread per test process (torch's OpenMP, numpy's BLAS for the interpreter's
  # dots): with a worker per core, two threads spin-waiting for each other while the other
  # worker holds one of their cores made torch-heavy tests 8-10x slower (2026-11-28, 2 cores:
  # the paper regression's quick test 12.6 s alone, 122 s beside one busy core, 14.5 s so)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
fi
# the slowest tests listed at the end: where CI's 20 minutes go
exec "$PY" -m pytest -q --durations=15 ${parallel[@]+"${parallel[@]}"} "$@"
