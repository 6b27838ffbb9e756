#!/usr/bin/env bash
# The main job: sets up the environment, then a quick benchmark and a Sobolev training demo.
# Arguments go to bench/run.py, run as the module bench.run (e.g. --quick, --out DIR,
# --update-readme); it writes its tables, CSVs and plot to results/main/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" main
cd "$ROOT"
exec "$PY" -m bench.run "$@"
