#!/usr/bin/env bash
# The main job: sets up the environment, then a quick benchmark and a Sobolev training demo.
# Arguments go to bench/run.py (e.g. --quick), run as the module bench.run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh" main
cd "$ROOT"
exec "$PY" -m bench.run "$@"
