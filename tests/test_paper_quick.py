"""Smoke tests: each paper reproduction in bench/paper/ runs its --quick mode end to end.

They keep the scripts from rotting as the library changes; the numbers are not checked, only
that every script writes its CSV with the documented columns. A script whose optional
dependency (minatar, scikit-learn) is missing is skipped.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PAPER = Path(__file__).resolve().parents[1] / "bench" / "paper"


def _script(name: str):
    if str(PAPER) not in sys.path:
        sys.path.insert(0, str(PAPER))
    return importlib.import_module(name)


def _columns(path: Path) -> list[str]:
    with path.open() as fh:
        return next(csv.reader(fh))


def _args(tmp_path: Path) -> list[str]:
    # The scripts default to one thread; keep the test process's own setting.
    return ["--quick", "--out", str(tmp_path), "--threads", str(torch.get_num_threads())]


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e .[bench])")


@pytest.mark.heavy(13)
def test_regression_quick(tmp_path):
    regression = _script("regression")
    regression.main(_args(tmp_path))
    path = tmp_path / "paper_regression.csv"
    assert _columns(path) == [
        "function", "n_train", "method", "seed", "test_value_mse", "test_grad_mse"
    ]  # fmt: skip
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"regular", "sobolev", "sobolev_stochastic"}
    assert (tmp_path / "paper_regression.md").exists()


def test_regression_vlse_and_leaky_relu_names(tmp_path):
    regression = _script("regression")
    tiny = ["--seeds", "1", "--steps", "5", "--n-train", "8", "--functions", "ackley",
            "--width", "16", "--no-figure", "--out", str(tmp_path)]  # fmt: skip
    regression.main(tiny + ["--domains", "vlse"])
    regression.main(tiny + ["--activation", "leaky_relu"])
    assert (tmp_path / "paper_regression_vlse.csv").exists()
    assert (tmp_path / "paper_regression_leaky_relu.md").exists()
    assert not (tmp_path / "paper_regression.csv").exists()


def test_regression_sweep_quick(tmp_path):
    sweep = _script("regression_sweep")
    sweep.main(_args(tmp_path) + ["--betas", "0.1", "1", "--every", "50", "--no-figure"])
    path = tmp_path / "paper_regression_curves.csv"
    assert _columns(path) == sweep.COLUMNS
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    # regular once, the two Sobolev methods once per beta; steps 50 and 100 each
    assert len(rows) == 2 * (1 + 2 * 2) * 2
    assert {r["step"] for r in rows} == {"50", "100"}
    assert all(float(r["train_grad_mse"]) >= 0 for r in rows)


def test_distillation_quick(tmp_path):
    _needs("minatar")
    distillation = _script("distillation")
    distillation.main(_args(tmp_path))
    assert _columns(tmp_path / "paper_distillation.csv") == distillation.COLUMNS


@pytest.mark.heavy(17)
def test_synthetic_gradients_quick(tmp_path):
    _needs("sklearn")
    synthetic_gradients = _script("synthetic_gradients")
    synthetic_gradients.main(_args(tmp_path))
    assert _columns(tmp_path / "paper_synthetic_gradients.csv") == synthetic_gradients.COLUMNS


def test_regression_order2_quick(tmp_path):
    order2 = _script("regression_order2")
    order2.main(_args(tmp_path))
    path = tmp_path / "paper_regression_order2.csv"
    assert _columns(path) == order2.COLUMNS
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == {"regular", "sobolev", "sobolev_order2"}
    assert all(float(r["test_hess_mse"]) >= 0 for r in rows)
