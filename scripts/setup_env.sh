#!/usr/bin/env bash
# Creates .venv (or $SOBOLEV_VENV) and installs what is missing, then this project (editable,
# compiled against the installed torch). Sourced by run_main.sh and run_tests.sh.
#
# torch: any importable torch is kept (a CUDA machine keeps its own build, visible through
# --system-site-packages); otherwise the pinned CPU wheel torch==2.13.0 is installed, so pip
# never resolves a multi-GB CUDA build. Nothing is fetched when everything is present, so this
# also works on machines without internet.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SOBOLEV_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check "$@"; }
has() { "$PY" -c "import $1" >/dev/null 2>&1; }
# has_version <distribution> <version>: installed at exactly that version
has_version() {
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('$1') != '$2')" >/dev/null 2>&1
}

has torch || { echo "[setup] installing torch==2.13.0 (CPU)"; pip_install "torch==2.13.0"; }

want=()
has numpy || want+=(numpy)
if [ "$(uname -s)" = "Linux" ]; then has triton || want+=("triton==3.9.0"); fi
"$PY" - <<'PY' || want+=("setuptools>=70.1" wheel)
import setuptools, sys
sys.exit(0 if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1) else 1)
PY
other_triton=""
optional=()  # nice to have: the tests run without them
for extra in "$@"; do
  case "$extra" in
    test)
      has pytest || want+=(pytest); has hypothesis || want+=(hypothesis)
      has xdist || optional+=(pytest-xdist)
      # the style test's (tests/test_style.py, skipped without): pinned, as its rules change
      has_version ruff 0.17.6 || optional+=("ruff==0.17.6") ;;
    bench)
      has matplotlib || want+=(matplotlib)
      has minatar || want+=(minatar)
      has sklearn || want+=(scikit-learn)
      has tqdm || want+=(tqdm) ;;
    main) has tqdm || want+=(tqdm); has matplotlib || want+=(matplotlib) ;;
    other_triton) other_triton=1 ;;
  esac
done
if [ "${#want[@]}" -gt 0 ]; then
  echo "[setup] installing ${want[*]}"
  pip_install "${want[@]}"
fi
if [ "${#optional[@]}" -gt 0 ]; then
  echo "[setup] installing ${optional[*]}"
  pip_install "${optional[@]}" || echo "[setup] could not install ${optional[*]}: going on without"
fi

# other_triton: the GPU machines' triton (3.6.0) beside the venv, only for the test that
# compiles the kernels ahead of time with each version (the venv has 3.9.0). Installed in CI
# (CI=true) or when SOBOLEV_OTHER_TRITON_INSTALL=1 (a 600 MB install); the test skips without.
if [ -n "${other_triton:-}" ] && [ "$(uname -sm)" = "Linux x86_64" ]; then
  export SOBOLEV_OTHER_TRITON="$VENV/triton-3.6.0"
  if [ ! -d "$SOBOLEV_OTHER_TRITON/triton" ] \
      && { [ "${CI:-}" = true ] || [ "${SOBOLEV_OTHER_TRITON_INSTALL:-}" = 1 ]; }; then
    echo "[setup] installing triton==3.6.0 into $SOBOLEV_OTHER_TRITON (compile check only)"
    pip_install --no-deps --target "$SOBOLEV_OTHER_TRITON" "triton==3.6.0" \
      || echo "[setup] could not install triton==3.6.0: its compile check will skip"
  fi
fi

# Rebuild only when the sources changed (the editable install keeps the compiled module).
stamp="$VENV/.sobolev_build_stamp"
digest="$(cd "$ROOT" && cat setup.py pyproject.toml $(find csrc third_party -type f 2>/dev/null | sort) | sha1sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "[setup] building sobolev_kernels (pip install --no-build-isolation -e .)"
  # the extension is optional for users, not here: a failed build stops instead of installing
  # pure Python (SOBOLEV_REQUIRE_EXTENSION=0 allows it)
  (cd "$ROOT" && MAX_JOBS="${MAX_JOBS:-2}" SOBOLEV_REQUIRE_EXTENSION="${SOBOLEV_REQUIRE_EXTENSION:-1}" \
    pip_install --no-build-isolation --no-deps -e .)
  echo "$digest" > "$stamp"
fi
