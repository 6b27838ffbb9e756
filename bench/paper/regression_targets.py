"""How the derivative targets of Table 1 weigh against the value targets (no training).

    python bench/paper/regression_targets.py        # a few seconds

For each function and training-set size, over the 10 seeds' training points of
``regression.py`` (in its training units: inputs in [-1, 1], values of unit spread):

- ``derivative term at 0``: mean over points of |g'|^2 / 2, what the ``sobolev`` loss's
  derivative term is for a network with zero gradient; the value term is 1 by construction;
- ``largest point's share``: max over points of |g'|^2 divided by its sum over points, i.e.
  how much of the derivative term a single training point carries (1/n when all are equal).

Median and maximum over seeds. Writes ``paper_regression_targets.md``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from paper_common import RESULTS, markdown_table
from regression import Normaliser, data

import sobolev_kernels as sk


def stats(fn, n_train: int, seeds: int, domains: str) -> tuple[list[float], list[float]]:
    term, share = [], []
    for seed in range(seeds):
        x, _ = data(fn, n_train, seed, domains)
        norm = Normaliser(fn.domain_named(domains), fn(x))
        squared = norm.targets(fn, x)[1].square().sum(1)
        term.append(squared.mean().item() / 2)
        share.append((squared.max() / squared.sum()).item())
    return term, share


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--domains", choices=sk.functions.DOMAINS, default="paper")
    args = parser.parse_args(argv)
    header = ["function", "n", "derivative term at 0: median", "max",
              "largest point's share: median", "max", "1/n"]  # fmt: skip
    body = []
    for name, fn in sk.functions.ALL.items():
        for n in (20, 100):
            term, share = stats(fn, n, args.seeds, args.domains)
            body.append([name, n, f"{statistics.median(term):.3g}", f"{max(term):.3g}",
                         f"{statistics.median(share):.2f}", f"{max(share):.2f}",
                         f"{1 / n:.2f}"])  # fmt: skip
    text = (f"Training targets of Table 1 ({args.domains} domains, {args.seeds} seeds), in "
            "training units; the value term of a zero network is about 1.\n\n")  # fmt: skip
    text += markdown_table(header, body)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "paper_regression_targets" + ("" if args.domains == "paper" else f"_{args.domains}")
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
