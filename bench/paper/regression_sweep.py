"""Table 1 cells over training steps and derivative weights: loss curves and sweeps.

    python bench/paper/regression_sweep.py --quick           # < 1 min
    python bench/paper/regression_sweep.py --name curves --seeds 1 --steps 5000 --every 50
    python bench/paper/regression_sweep.py --name sweep_bukin_n6 --functions bukin_n6 \\
        --n-train 100 --betas 0.01 0.1 1 --seeds 5 --steps 8000 --every 1000

Trains the models of ``regression.py`` (same data, network, optimiser and seeds) and records,
every ``--every`` steps of one run of ``--steps`` steps, the training losses in training units
(value MSE and Jacobian MSE per component, the two terms the ``sobolev`` loss adds) and the
test MSEs of values and gradients in the function's own units, as in Table 1. Adam's step
does not depend on the total number of steps, so the row at step s is exactly the model a
run of s steps would give: one run covers a whole step sweep. ``--betas`` repeats the
Sobolev methods for each derivative weight (``regular`` is trained once, its beta column 0).

Writes ``paper_regression_<name>.csv`` (``COLUMNS``), ``paper_regression_<name>.md`` (test
value MSE at each recorded step, mean and median over seeds, with wins against ``regular`` at
the same step) and ``paper_regression_<name>.png`` (the curves).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from paper_common import RESULTS, Stopwatch, group, markdown_table, pyplot, read_csv, setup_cpu
from paper_common import write_csv as write_rows
from regression import METHODS, data, evaluate, train, train_options

import sobolev_kernels as sk

COLUMNS = ["function", "n_train", "method", "beta", "seed", "step", "train_value_mse",
           "train_grad_mse", "test_value_mse", "test_grad_mse"]  # fmt: skip
QUICK_FUNCTIONS = ["styblinski_tang", "mccormick"]


def train_losses(model, xn: torch.Tensor, yn: torch.Tensor, gn: torch.Tensor) -> dict:
    """The value and Jacobian MSEs on the training points, in training units."""
    with torch.no_grad():
        f, u = sk.mlp_jvp(model, xn, "full")
    return {
        "train_value_mse": (f - yn).square().mean().item(),
        "train_grad_mse": (u[:, :, 0] - gn).square().mean().item(),
    }


def record(args, fn, name, n_train, seed, method, beta) -> list[dict]:
    x_train, x_test = data(fn, n_train, seed, args.domains)
    rows = []
    key = dict(function=name, n_train=n_train, method=method, beta=beta, seed=seed)

    def callback(step: int, model, norm) -> None:
        if step % args.every == 0 or step == args.steps:
            yn, gn = norm.targets(fn, x_train)
            rows.append(key | {"step": step} | train_losses(model, norm.x(x_train), yn, gn)
                        | evaluate(fn, model, norm, x_test))  # fmt: skip

    options = train_options(args, fn, seed) | {"beta": beta or 1.0, "callback": callback}
    train(fn, x_train, method, **options)
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    jobs = [(f, n, s, m, b) for f in args.functions for n in args.n_train
            for s in range(args.seeds) for m in args.methods
            for b in ([0.0] if m == "regular" else args.betas)]  # fmt: skip
    clock = Stopwatch(len(jobs), args.name)
    rows = []
    for name, n_train, seed, method, beta in jobs:
        rows += record(args, sk.functions.ALL[name], name, n_train, seed, method, beta)
        last = rows[-1]
        clock.tick(
            f"{name} n={n_train} seed={seed} {method} beta={beta}: step {last['step']}, "
            f"value {last['test_value_mse']:.3g}, grad {last['test_grad_mse']:.3g}"
        )
    return rows


def table(rows: list[dict]) -> str:
    """Mean and median test value MSE over seeds per (cell, method, beta) at each step."""
    by = group(rows, ["function", "n_train", "method", "beta", "step"])
    steps = sorted({int(r["step"]) for r in rows})
    if len(steps) > 8:  # curves: a column per fifth of the run, and step 1000 (Table 1's)
        fifth = max(steps[-1] // 5, 1)
        steps = [s for s in steps if s % fifth == 0 or s == 1000]
    configs = list(dict.fromkeys((r["function"], r["n_train"], r["method"], r["beta"])
                                 for r in rows))  # fmt: skip
    header = ["function", "n", "method", "beta"] + [f"step {s}" for s in steps]
    body = []
    for name, n, method, beta in configs:
        line = [name, n, method, beta if method != "regular" else "-"]
        for step in steps:
            runs = by.get((name, n, method, beta, str(step)), [])
            base = {r["seed"]: r for r in by.get((name, n, "regular", "0", str(step)), [])}
            if not runs:
                line.append("")
                continue
            values = [float(r["test_value_mse"]) for r in runs]
            cell = f"{statistics.fmean(values):.3g} / {statistics.median(values):.3g}"
            paired = [r for r in runs if r["seed"] in base]
            if method != "regular" and paired:
                wins = sum(float(r["test_value_mse"]) < float(base[r["seed"]]["test_value_mse"])
                           for r in paired)  # fmt: skip
                cell += f" ({wins}/{len(paired)})"
            line.append(cell)
        body.append(line)
    note = ("Mean / median over seeds of the test value MSE (function's own units) after each "
            "number of Adam steps; in brackets, on how many seeds it is below `regular`'s at the "
            "same step (same training points).\n\n")  # fmt: skip
    return note + markdown_table(header, body)


def plot(rows: list[dict], path: Path) -> None:
    """Per function (columns): training losses (top) and test value MSE (bottom), seed 0."""
    plt = pyplot()
    if plt is None:
        return
    rows = [r for r in rows if r["seed"] == "0"]
    names = list(dict.fromkeys(r["function"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.4), squeeze=False)
    colors = dict(zip(METHODS, ["tab:gray", "tab:blue", "tab:orange"]))
    for col, name in enumerate(names):
        runs = group([r for r in rows if r["function"] == name],
                     ["n_train", "method", "beta"])  # fmt: skip
        for (n, method, beta), rs in runs.items():
            steps = [int(r["step"]) for r in rs]
            style = "-" if n == max(r["n_train"] for r in rows) else ":"
            label = f"{method} n={n}" + (f" beta={beta}" if method != "regular" else "")
            kw = dict(color=colors.get(method), linestyle=style, linewidth=1)
            top, bottom = axes[0][col], axes[1][col]
            top.plot(steps, [float(r["train_value_mse"]) for r in rs], label=label, **kw)
            if method != "regular":  # the derivative term, thin
                top.plot(steps, [float(r["train_grad_mse"]) for r in rs], alpha=0.5,
                         **kw | {"linewidth": 0.6})  # fmt: skip
            bottom.plot(steps, [float(r["test_value_mse"]) for r in rs], label=label, **kw)
        for ax in axes[:, col]:
            ax.set_yscale("log")
        axes[0][col].set_title(name, fontsize=10)
        axes[1][col].set_xlabel("Adam steps")
    axes[0][0].set_ylabel("train loss terms (training units)")
    axes[1][0].set_ylabel("test value MSE (own units)")
    axes[1][-1].legend(fontsize=6)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 functions, 1 seed, 100 steps")
    parser.add_argument("--name", default="curves", help="output paper_regression_<name>.*")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (full batch)")
    parser.add_argument("--every", type=int, default=None, help="record every this many steps")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--betas", nargs="+", type=float, default=[1.0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--functions", nargs="+", default=None, choices=sorted(sk.functions.ALL))
    parser.add_argument("--n-train", nargs="+", type=int, default=[20, 100])
    parser.add_argument("--domains", choices=sk.functions.DOMAINS, default="paper")
    parser.add_argument("--activation", default="relu", choices=["relu", "leaky_relu"])
    parser.add_argument("--table-only", action="store_true", help="re-render from the CSV")
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    args.functions = args.functions or (QUICK_FUNCTIONS if args.quick else list(sk.functions.ALL))
    args.steps = args.steps or (100 if args.quick else 5000)
    args.every = args.every or max(args.steps // 10, 1)
    if args.quick:
        args.width, args.n_train = min(args.width, 64), args.n_train[:1]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"paper_regression_{args.name}"
    csv_path = stem.with_suffix(".csv")
    if not args.table_only:
        write_rows(csv_path, COLUMNS, run(args))
    rows = read_csv(csv_path)
    text = table(rows)
    stem.with_suffix(".md").write_text(text)
    print(text)
    if not args.no_figure:
        plot(rows, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
