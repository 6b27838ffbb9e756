"""The code's style, as CI runs it: ruff's lint and formatting rules (pyproject.toml's
[tool.ruff]; ruff pinned in the test extra). Before this test, CI ran the tests only, and a
line over the length limit landed (2026-11-28)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    run = subprocess.run([sys.executable, "-m", "ruff", *command, "."], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]
