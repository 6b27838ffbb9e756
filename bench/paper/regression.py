"""Paper Table 1: regression on the 2-D optimisation test functions, regular vs Sobolev.

    python bench/paper/regression.py --quick      # < 1 min: 2 functions, 2 seeds, 150 steps
    python bench/paper/regression.py              # full: 7 functions x {20, 100} x 3 x 10 seeds
    python bench/paper/regression.py --domains vlse                  # the VLSE-domain table
    python bench/paper/regression.py --activation leaky_relu --seeds 5  # the leaky-ReLU column

For every function, training-set size and seed, the same ReLU MLP (2 hidden layers of 256) is
trained full batch with Adam for the same number of steps on values only (``regular``), on
values + full Jacobians (``sobolev``, ``directions="full"``) and on values + one random
directional derivative per point and step (``sobolev_stochastic``, K = 1). Test MSE of values
and of gradients on 10,000 uniform points, in the function's own units.

Points are drawn from the paper's domains (``fn.paper_domain``, the default) or from the
Virtual Library of Simulation Experiments' (``--domains vlse``, ``fn.domain``); the two differ
for Ackley and Rosenbrock only (``sobolev_kernels/functions.py`` gives the sources).

Writes ``<stem>.csv`` (function, n_train, method, seed, test_value_mse, test_grad_mse),
``<stem>.md`` (mean ± std table) and ``<stem>_fits.png``, where ``<stem>`` is
``paper_regression``, plus ``_vlse`` for the VLSE domains and ``_<activation>`` for another
activation than ReLU (``output_stem``).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from paper_common import (
    RESULTS,
    Stopwatch,
    group,
    markdown_table,
    pm,
    pyplot,
    read_csv,
    setup_cpu,
    write_csv,
)

import sobolev_kernels as sk

COLUMNS = ["function", "n_train", "method", "seed", "test_value_mse", "test_grad_mse"]
METHODS = ["regular", "sobolev", "sobolev_stochastic"]
FIGURE_FUNCTIONS = ["styblinski_tang", "mccormick"]
N_TEST = 10_000


class Normaliser:
    """Train in units where inputs lie in [-1, 1] and training values have unit spread.

    Gradients follow by the chain rule: d y' / d x'_i = dy/dx_i * half_width_i / y_scale.
    Without this the raw scales (Rosenbrock reaches 1e6, Ackley spans [-32, 32]) make the
    same optimiser settings meaningless across functions.
    """

    def __init__(self, bounds, y_train: torch.Tensor) -> None:
        lo, hi = (torch.tensor(b, dtype=torch.float32) for b in zip(*bounds))
        self.center, self.half = (lo + hi) / 2, (hi - lo) / 2
        self.y_mean, self.y_scale = y_train.mean(), y_train.std()

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.center) / self.half

    def targets(self, fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (fn(x)[:, None] - self.y_mean) / self.y_scale
        return y, fn.grad(x) * self.half / self.y_scale

    def predict(self, model: sk.SobolevMLP, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Values (B,) and gradients (B, 2) in the function's own units."""
        with torch.no_grad():
            f, u = sk.mlp_jvp(model, self.x(x), "full")
        value = f[:, 0] * self.y_scale + self.y_mean
        return value, u[:, :, 0] * self.y_scale / self.half


def output_stem(domains: str, activation: str) -> str:
    """File stem of a run: the paper's domains and ReLU are the plain ``paper_regression``."""
    stem = "paper_regression" + ("" if domains == "paper" else f"_{domains}")
    return stem + ("" if activation == "relu" else f"_{activation}")


def train(
    fn,
    x_train: torch.Tensor,
    method: str,
    *,
    seed: int,
    steps: int,
    lr: float,
    width: int,
    bounds,
    activation: str = "relu",
    beta: float = 1.0,
    callback: Callable[[int, sk.SobolevMLP, Normaliser], None] | None = None,
) -> tuple[sk.SobolevMLP, Normaliser]:
    """Train one model; ``bounds`` is the sampling domain (it sets the input scaling).

    ``beta`` weighs the derivative term against the value term (both in training units);
    ``callback(step, model, norm)`` runs after every step (``regression_sweep.py`` records there).
    """
    norm = Normaliser(bounds, fn(x_train))
    xn = norm.x(x_train)
    yn, gn = norm.targets(fn, x_train)
    torch.manual_seed(seed)
    model = sk.SobolevMLP(2, width, 1, num_layers=3, activation=activation)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    directions = torch.Generator().manual_seed(10_000 + seed)
    for step in range(1, steps + 1):
        if method == "regular":
            loss = torch.nn.functional.mse_loss(model(xn), yn)
        elif method == "sobolev":
            loss = sk.sobolev_loss(model, xn, yn, target_grad=gn, directions="full", beta=beta)
        else:  # a fresh random unit direction per point and step
            loss = sk.sobolev_loss(model, xn, yn, target_grad=gn, generator=directions, beta=beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None:
            callback(step, model, norm)
    return model, norm


def evaluate(fn, model, norm, x_test: torch.Tensor) -> dict[str, float]:
    value, grad = norm.predict(model, x_test)
    return {
        "test_value_mse": (value - fn(x_test)).square().mean().item(),
        "test_grad_mse": (grad - fn.grad(x_test)).square().mean().item(),
    }


def data(fn, n_train: int, seed: int, domains: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Training points of one seed (shared by every method: a paired comparison), test set."""
    x_train = fn.sample(n_train, torch.Generator().manual_seed(seed), domain=domains)
    x_test = fn.sample(N_TEST, torch.Generator().manual_seed(123_456), domain=domains)
    return x_train, x_test


def train_options(args: argparse.Namespace, fn, seed: int) -> dict:
    return dict(seed=seed, steps=args.steps, lr=args.lr, width=args.width,
                bounds=fn.domain_named(args.domains), activation=args.activation)  # fmt: skip


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    cases = [(f, n, s) for f in args.functions for n in args.n_train for s in range(args.seeds)]
    clock = Stopwatch(len(cases), "regression")
    for name, n_train, seed in cases:
        fn = sk.functions.ALL[name]
        x_train, x_test = data(fn, n_train, seed, args.domains)
        for method in METHODS:
            model, norm = train(fn, x_train, method, **train_options(args, fn, seed))
            rows.append(
                dict(function=name, n_train=n_train, method=method, seed=seed)
                | evaluate(fn, model, norm, x_test)
            )
        clock.tick(f"{name} n={n_train} seed={seed}: " + ", ".join(
            f"{r['method']} {r['test_value_mse']:.3g}/{r['test_grad_mse']:.3g}" for r in rows[-3:]
        ))  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: mean ± std per method, then the paired comparison with ``regular``."""
    by_case = group(rows, ["function", "n_train", "method"])
    cases = list(dict.fromkeys((r["function"], r["n_train"]) for r in rows))
    header = ["function", "n"] + [f"{m} value MSE" for m in METHODS]
    header += [f"{m} grad MSE" for m in METHODS]
    body = []
    for name, n in cases:
        cells = [by_case.get((name, n, m), []) for m in METHODS]
        line = [name, n] + [pm([float(r["test_value_mse"]) for r in c]) for c in cells]
        line += [pm([float(r["test_grad_mse"]) for r in c]) for c in cells]
        body.append(line)
    text = markdown_table(header, body)

    # Same training points per seed for every method, so compare seed by seed.
    header = ["function", "n"]
    for method in METHODS[1:]:
        header += [f"{method}: value MSE ratio", "wins", "grad MSE ratio", "wins"]
    body = []
    for name, n in cases:
        line = [name, n]
        base = {r["seed"]: r for r in by_case.get((name, n, "regular"), [])}
        for method in METHODS[1:]:
            for key in ("test_value_mse", "test_grad_mse"):
                runs = [r for r in by_case.get((name, n, method), []) if r["seed"] in base]
                pairs = [(float(r[key]), float(base[r["seed"]][key])) for r in runs]
                ratios = [a / b for a, b in pairs if b > 0]
                wins = sum(a < b for a, b in pairs)
                line += [f"{statistics.median(ratios):.2f}" if ratios else "-",
                         f"{wins}/{len(pairs)}"]  # fmt: skip
        body.append(line)
    note = (
        "\nPaired with `regular` on the same training points: median over seeds of "
        "MSE(method) / MSE(regular) (below 1: the method is better), and on how many seeds "
        "the method has the lower MSE.\n\n"
    )
    return text + note + markdown_table(header, body)


def plot_fits(args: argparse.Namespace, path: Path) -> None:
    """Target and the three fits (seed 0, the smallest training set) for FIGURE_FUNCTIONS."""
    plt = pyplot()
    if plt is None:
        return
    n_train = min(args.n_train)
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    for row, name in zip(axes, FIGURE_FUNCTIONS):
        fn = sk.functions.ALL[name]
        x_train = data(fn, n_train, 0, args.domains)[0]
        (a0, a1), (b0, b1) = fn.domain_named(args.domains)
        ga, gb = torch.meshgrid(
            torch.linspace(a0, a1, 120), torch.linspace(b0, b1, 120), indexing="xy"
        )
        grid = torch.stack([ga.flatten(), gb.flatten()], 1)
        panels = [("target", fn(grid))]
        for method in METHODS:
            model, norm = train(fn, x_train, method, **train_options(args, fn, 0))
            panels.append((method, norm.predict(model, grid)[0]))
        levels = torch.linspace(panels[0][1].min().item(), panels[0][1].max().item(), 31)
        for ax, (label, z) in zip(row, panels):
            im = ax.contourf(ga, gb, z.reshape(ga.shape).clamp(levels[0], levels[-1]), levels)
            ax.scatter(x_train[:, 0], x_train[:, 1], c="red", s=10)
            ax.set_title(label, fontsize=10)
        row[0].set_ylabel(f"{name}, {n_train} points", fontsize=11)
        fig.colorbar(im, ax=row.tolist(), shrink=0.85)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 functions, 2 seeds, 150 steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (full batch)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--functions", nargs="+", default=None, choices=sorted(sk.functions.ALL))
    parser.add_argument("--n-train", nargs="+", type=int, default=[20, 100])
    parser.add_argument("--domains", choices=sk.functions.DOMAINS, default="paper",
                        help="sampling domains: the paper's (default) or VLSE's")  # fmt: skip
    parser.add_argument("--activation", default="relu", choices=["relu", "leaky_relu"])
    parser.add_argument("--table-only", action="store_true", help="re-render from the CSV")
    parser.add_argument("--no-figure", action="store_true", help="skip the fits figure")
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    args.functions = args.functions or (FIGURE_FUNCTIONS if args.quick else list(sk.functions.ALL))
    args.steps = args.steps or (150 if args.quick else 1000)
    args.seeds = args.seeds or (2 if args.quick else 10)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = output_stem(args.domains, args.activation)
    csv_path = args.out / f"{stem}.csv"

    if args.table_only:
        rows = read_csv(csv_path)
    else:
        rows = run(args)
        write_csv(csv_path, COLUMNS, rows)
        rows = read_csv(csv_path)
    text = table(rows)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    if not args.no_figure:
        plot_fits(args, args.out / f"{stem}_fits.png")


if __name__ == "__main__":
    main()
