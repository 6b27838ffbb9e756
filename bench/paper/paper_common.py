"""Helpers shared by the paper reproductions: CPU setup, CSV rows, mean ± std tables.

Each experiment script (``regression.py``, ``distillation.py``, ``synthetic_gradients.py``)
imports this module from its own folder; nothing here runs at import.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def setup_cpu(threads: int) -> None:
    """Few threads: the full runs share a 2-core machine with other jobs."""
    torch.set_num_threads(threads)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row[k]) for k in columns})


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _fmt(value: object) -> object:
    return f"{value:.6g}" if isinstance(value, float) else value


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` with ``digits`` significant digits."""
    mean, std = mean_std(values)
    if not math.isfinite(mean):
        return "nan"
    return f"{mean:.{digits}g} ± {std:.2g}"


def group(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def markdown_table(header: Sequence[str], body: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the figure (pip install -e .[bench])")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Stopwatch:
    """Prints progress with elapsed time, so a background log shows where a run is."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done, self.start = total, label, 0, time.perf_counter()

    def tick(self, message: str = "") -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        print(f"[{self.label} {self.done}/{self.total} {elapsed:7.1f}s] {message}", flush=True)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
