"""Table 1 on the two domains side by side, from the committed CSVs (no training).

    python bench/paper/regression_domains.py

Reads ``paper_regression_vlse.csv`` and ``paper_regression.csv`` (and, where present,
``paper_regression_leaky_relu.csv``) from ``--out`` and writes ``paper_regression_domains.md``:
per cell, the mean test value MSE of each method and on how many seeds each Sobolev method
beats ``regular`` (same training points), then how many of the 14 cells each method wins by
mean value MSE.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from paper_common import RESULTS, group, markdown_table, read_csv
from regression import METHODS

SOURCES = [("VLSE", "paper_regression_vlse.csv"), ("paper", "paper_regression.csv"),
           ("paper, leaky ReLU", "paper_regression_leaky_relu.csv")]  # fmt: skip


def cells(rows: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    by = group(rows, ["function", "n_train", "method"])
    keys = dict.fromkeys((r["function"], r["n_train"]) for r in rows)
    return {k: {m: by.get(k + (m,), []) for m in METHODS} for k in keys}


def summary(runs: dict[str, list[dict]]) -> list[str]:
    """Mean value MSE per method; Sobolev methods with their seed wins against regular."""
    base = {r["seed"]: float(r["test_value_mse"]) for r in runs["regular"]}
    out = [f"{statistics.fmean(base.values()):.3g}"]
    for method in METHODS[1:]:
        values = {r["seed"]: float(r["test_value_mse"]) for r in runs[method]}
        wins = sum(v < base[s] for s, v in values.items() if s in base)
        out.append(f"{statistics.fmean(values.values()):.3g} ({wins}/{len(values)})")
    return out


def wins_by_mean(runs: dict[str, list[dict]], method: str) -> bool:
    def mean(m):
        return statistics.fmean(float(r["test_value_mse"]) for r in runs[m])

    return mean(method) < mean("regular")


def render(out: Path) -> str:
    tables = [(label, cells(read_csv(out / name))) for label, name in SOURCES
              if (out / name).exists()]  # fmt: skip
    keys = list(dict.fromkeys(k for _, t in tables for k in t))
    header = ["function", "n"]
    for label, _ in tables:
        header += [f"{label}: {m}" for m in METHODS]
    body = []
    for key in keys:
        line = list(key)
        for _, t in tables:
            line += summary(t[key]) if key in t else [""] * len(METHODS)
        body.append(line)
    totals = []
    for label, t in tables:
        for method in METHODS[1:]:
            won = sum(wins_by_mean(runs, method) for runs in t.values())
            totals.append(f"- {label}, {method}: wins {won} of {len(t)} cells by mean value MSE")
    note = (
        "Mean test value MSE over seeds (function's own units); in brackets, on how many "
        "seeds the Sobolev method's value MSE is below `regular`'s on the same points.\n\n"
    )
    return note + markdown_table(header, body) + "\n" + "\n".join(totals) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the CSVs")
    args = parser.parse_args(argv)
    text = render(args.out)
    (args.out / "paper_regression_domains.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
