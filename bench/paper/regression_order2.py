"""The order-2 column of the regression reproduction: values + gradients + projected Hessians.

    python bench/paper/regression_order2.py --quick   # < 1 min: 2 functions, 1 seed
    python bench/paper/regression_order2.py           # full: 7 functions x {20, 100} x 3 x 5 seeds
    python bench/paper/regression_order2.py --domains vlse   # on the VLSE domains

The paper's regression network is a ReLU MLP, which is piecewise linear: its second
derivatives are 0 almost everywhere, so a Hessian term cannot teach it anything (docs/math.md).
This companion experiment therefore uses a smooth network (tanh, 2 hidden layers of 256) and
trains it three ways with the same step budget and the same random directions (K = 4 fresh
unit directions per point and step):

- ``regular``: values only;
- ``sobolev``: values + directional derivatives ``v^T grad g`` (order 1);
- ``sobolev_order2``: values + ``v^T grad g`` + ``v^T H_g v`` (order 2, Taylor mode), with the
  analytic Hessians of ``sobolev_kernels.functions``.

Test MSE of values, gradients and Hessians (all four entries) on 10,000 uniform points, in the
function's own units. Points come from the paper's domains (default) or VLSE's, as in
``regression.py``. Writes ``paper_regression_order2[_vlse].csv`` (function, n_train, method,
seed, test_value_mse, test_grad_mse, test_hess_mse) and ``paper_regression_order2[_vlse].md``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from paper_common import RESULTS, Stopwatch, group, markdown_table, pm, read_csv, setup_cpu
from paper_common import write_csv as write_rows
from regression import Normaliser, data

import sobolev_kernels as sk

COLUMNS = ["function", "n_train", "method", "seed", "test_value_mse", "test_grad_mse",
           "test_hess_mse"]  # fmt: skip
METHODS = ["regular", "sobolev", "sobolev_order2"]
QUICK_FUNCTIONS = ["styblinski_tang", "mccormick"]
NUM_DIRECTIONS = 4


def hessian_targets(fn, norm: Normaliser, x: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) Hessians in training units: H'_ij = H_ij * half_i * half_j / y_scale."""
    scale = norm.half[:, None] * norm.half[None, :] / norm.y_scale
    return fn.hessian(x) * scale


def train(fn, x_train, method, *, seed, steps, lr, width, activation, bounds):
    norm = Normaliser(bounds, fn(x_train))
    xn = norm.x(x_train)
    yn, gn = norm.targets(fn, x_train)
    hn = hessian_targets(fn, norm, x_train)
    torch.manual_seed(seed)
    model = sk.SobolevMLP(2, width, 1, num_layers=3, activation=activation)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    directions = torch.Generator().manual_seed(10_000 + seed)  # same stream for both orders
    for _ in range(steps):
        if method == "regular":
            loss = torch.nn.functional.mse_loss(model(xn), yn)
        else:
            second = {"order": 2, "target_hess": hn} if method == "sobolev_order2" else {}
            loss = sk.sobolev_loss(model, xn, yn, target_grad=gn, num_directions=NUM_DIRECTIONS,
                                   generator=directions, **second)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, norm


def evaluate(fn, model, norm: Normaliser, x_test: torch.Tensor) -> dict[str, float]:
    value, grad = norm.predict(model, x_test)
    with torch.no_grad():
        hess = torch.func.vmap(torch.func.hessian(lambda p: model(p[None])[0, 0]))(norm.x(x_test))
    hess = hess / (norm.half[:, None] * norm.half[None, :]) * norm.y_scale  # own units
    return {
        "test_value_mse": (value - fn(x_test)).square().mean().item(),
        "test_grad_mse": (grad - fn.grad(x_test)).square().mean().item(),
        "test_hess_mse": (hess - fn.hessian(x_test)).square().mean().item(),
    }


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    cases = [(f, n, s) for f in args.functions for n in args.n_train for s in range(args.seeds)]
    clock = Stopwatch(len(cases), "regression order 2")
    for name, n_train, seed in cases:
        fn = sk.functions.ALL[name]
        x_train, x_test = data(fn, n_train, seed, args.domains)
        for method in METHODS:
            model, norm = train(fn, x_train, method, seed=seed, steps=args.steps, lr=args.lr,
                                width=args.width, activation=args.activation,
                                bounds=fn.domain_named(args.domains))  # fmt: skip
            rows.append(dict(function=name, n_train=n_train, method=method, seed=seed)
                        | evaluate(fn, model, norm, x_test))  # fmt: skip
        clock.tick(f"{name} n={n_train} seed={seed}")
    return rows


def table(rows: list[dict]) -> str:
    """Mean ± std per method, then the median paired ratio of order 2 against order 1."""
    by_case = group(rows, ["function", "n_train", "method"])
    cases = list(dict.fromkeys((r["function"], r["n_train"]) for r in rows))
    metrics = [("value", "test_value_mse"), ("grad", "test_grad_mse"), ("Hessian", "test_hess_mse")]
    header = ["function", "n"] + [f"{m} {label} MSE" for label, _ in metrics for m in METHODS]
    body = []
    for name, n in cases:
        line = [name, n]
        for _, key in metrics:
            line += [pm([float(r[key]) for r in by_case.get((name, n, m), [])]) for m in METHODS]
        body.append(line)
    text = markdown_table(header, body)
    header = ["function", "n"] + [f"order 2 / order 1: {label} MSE" for label, _ in metrics]
    body = []
    for name, n in cases:
        first = {r["seed"]: r for r in by_case.get((name, n, "sobolev"), [])}
        line = [name, n]
        for _, key in metrics:
            pairs = [
                (float(r[key]), float(first[r["seed"]][key]))
                for r in by_case.get((name, n, "sobolev_order2"), [])
                if r["seed"] in first
            ]
            ratios = [a / b for a, b in pairs if b > 0]
            wins = sum(a < b for a, b in pairs)
            line.append(f"{statistics.median(ratios):.2f} ({wins}/{len(pairs)})" if ratios else "-")
        body.append(line)
    note = ("\nPaired by seed (same training points and directions): median of "
            "MSE(order 2) / MSE(order 1), and on how many seeds order 2 is lower.\n\n")  # fmt: skip
    return text + note + markdown_table(header, body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 functions, 1 seed, 100 steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (full batch)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--functions", nargs="+", default=None, choices=sorted(sk.functions.ALL))
    parser.add_argument("--n-train", nargs="+", type=int, default=[20, 100])
    parser.add_argument("--domains", choices=sk.functions.DOMAINS, default="paper",
                        help="sampling domains: the paper's (default) or VLSE's")  # fmt: skip
    parser.add_argument("--table-only", action="store_true", help="re-render from the CSV")
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    args.functions = args.functions or (QUICK_FUNCTIONS if args.quick else list(sk.functions.ALL))
    args.steps = args.steps or (100 if args.quick else 1000)
    args.seeds = args.seeds or (1 if args.quick else 5)
    if args.quick:
        args.width = min(args.width, 64)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "paper_regression_order2" + ("" if args.domains == "paper" else f"_{args.domains}")
    csv_path = args.out / f"{stem}.csv"
    if not args.table_only:
        write_rows(csv_path, COLUMNS, run(args))
    text = table(read_csv(csv_path))
    (args.out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
