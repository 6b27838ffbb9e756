"""Synthetic gradients with a Sobolev-trained critic, small scale (scikit-learn's digits).

    python bench/paper/synthetic_gradients.py --quick     # ~20 s: 2 seeds, 150 steps
    python bench/paper/synthetic_gradients.py             # full: 5 seeds, 1000 steps

A 4-layer ReLU classifier (64 -> 256 -> 256 | 256 -> 256 -> 10) is cut into two blocks at the
256-d activation h. The lower block never sees the true gradient dL/dh: it is updated with a
synthetic gradient from a module that reads (h, one-hot label) (Jaderberg et al. 2017, "DNI").
Methods, all with the same optimiser and number of steps:

- ``backprop``: no cut, the reference.
- ``sg``: plain synthetic gradients, a module M(h, y) regressed on the per-example gradient.
- ``critic_value``: a critic C(h, y) regressed on the per-example loss only; the synthetic
  gradient is dC/dh.
- ``critic_sobolev``: the same critic trained with ``sk.sobolev_loss`` on the loss value and
  its gradient dL/dh, projected on K random unit directions in the h coordinates (the paper's
  Sobolev-trained critic).

Writes ``paper_synthetic_gradients.csv`` (final test accuracy per method and seed, and the
mean cosine between synthetic and true gradients), ``paper_synthetic_gradients_curves.csv``,
``paper_synthetic_gradients.md`` and ``paper_synthetic_gradients.png``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
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
from torch import nn

import sobolev_kernels as sk

COLUMNS = ["method", "seed", "steps", "test_accuracy", "grad_cosine"]
CURVE_COLUMNS = ["method", "seed", "step", "test_accuracy"]
METHODS = ["backprop", "sg", "critic_value", "critic_sobolev"]
CLASSES, HIDDEN = 10, 256


def load_data(seed: int, n_test: int = 360):
    """Digits scaled to [0, 1], a random train/test split per seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def mlp(*widths: int) -> nn.Sequential:
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class Decoupled:
    """Lower block, upper block and (for the SG methods) the synthetic-gradient module."""

    def __init__(self, method: str, args: argparse.Namespace) -> None:
        self.method, self.k, self.beta = method, args.critic_directions, args.critic_beta
        self.lower = nn.Sequential(mlp(64, HIDDEN, HIDDEN), nn.ReLU())
        self.upper = mlp(HIDDEN, HIDDEN, CLASSES)
        params = [*self.lower.parameters(), *self.upper.parameters()]
        self.opt = torch.optim.Adam(params, lr=args.lr)
        self.module = None
        if method != "backprop":
            out = HIDDEN if method == "sg" else 1
            self.module = sk.SobolevMLP(HIDDEN + CLASSES, args.module_width, out, num_layers=3,
                                        activation=args.module_activation)  # fmt: skip
            # DNI starts the gradient module at zero output: no signal beats a random one.
            nn.init.zeros_(self.module.layers[-1].weight)
            nn.init.zeros_(self.module.layers[-1].bias)
            self.module_opt = torch.optim.Adam(self.module.parameters(), lr=args.lr)
        self.directions = torch.Generator().manual_seed(args.seed_offset)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.upper(self.lower(x))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """One training step; returns the cosine between synthetic and true dL/dh."""
        self.opt.zero_grad(set_to_none=True)
        if self.module is None:
            F.cross_entropy(self.logits(x), y).backward()
            self.opt.step()
            return None
        batch = len(x)
        h = self.lower(x)
        h_in = h.detach().requires_grad_(True)
        per_example = F.cross_entropy(self.upper(h_in), y, reduction="none")
        per_example.mean().backward()  # upper block: true gradient; h_in.grad = dL/dh
        true_grad = h_in.grad * batch  # per-example gradient d l_i / d h_i
        inp = torch.cat([h.detach(), F.one_hot(y, CLASSES).float()], dim=1)

        synthetic = self.synthetic_gradient(inp)
        h.backward(synthetic / batch)  # lower block: synthetic gradient only
        self.opt.step()
        self.train_module(inp, per_example.detach(), true_grad)
        return F.cosine_similarity(synthetic, true_grad, dim=1).mean().item()

    def synthetic_gradient(self, inp: torch.Tensor) -> torch.Tensor:
        if self.method == "sg":
            with torch.no_grad():
                return self.module(inp)
        inp = inp.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self.module(inp).sum(), inp)
        return grad[:, :HIDDEN]

    def train_module(self, inp: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> None:
        if self.method == "sg":
            module_loss = F.mse_loss(self.module(inp), grad)
        elif self.method == "critic_value":
            module_loss = F.mse_loss(self.module(inp)[:, 0], loss)
        else:
            # Directions only in the h coordinates: the label part has no gradient target.
            v = torch.randn(len(inp), self.k, HIDDEN, generator=self.directions)
            v = v / v.norm(dim=-1, keepdim=True)
            target_jvp = torch.einsum("bkd,bd->bk", v, grad)[:, :, None]
            v = torch.cat([v, v.new_zeros(len(inp), self.k, CLASSES)], dim=-1)
            module_loss = sk.sobolev_loss(
                self.module, inp, loss, target_jvp=target_jvp, directions=v, beta=self.beta
            )
        self.module_opt.zero_grad(set_to_none=True)
        module_loss.backward()
        self.module_opt.step()


def accuracy(net: Decoupled, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net.logits(x).argmax(1) == y).float().mean().item()


def run_one(method: str, seed: int, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    x_train, y_train, x_test, y_test = load_data(seed)
    torch.manual_seed(seed)
    args.seed_offset = 10_000 + seed
    net = Decoupled(method, args)
    order = torch.Generator().manual_seed(seed)
    curve, cosines = [], []
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(x_train), (args.batch,), generator=order)
        cosine = net.step(x_train[idx], y_train[idx])
        if cosine is not None:
            cosines.append(cosine)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append(dict(method=method, seed=seed, step=step,
                              test_accuracy=accuracy(net, x_test, y_test)))  # fmt: skip
    final = dict(method=method, seed=seed, steps=args.steps,
                 test_accuracy=curve[-1]["test_accuracy"],
                 grad_cosine=sum(cosines) / len(cosines) if cosines else 1.0)  # fmt: skip
    return final, curve


def table(rows: list[dict]) -> str:
    by_method = group(rows, ["method"])
    body = []
    for method in (m for m in METHODS if (m,) in by_method):
        acc = [100 * float(r["test_accuracy"]) for r in by_method[(method,)]]
        cos = [float(r["grad_cosine"]) for r in by_method[(method,)]]
        per_seed = " ".join(f"{a:.1f}" for a in acc)
        body.append([method, len(acc), pm(acc), f"{statistics.median(acc):.1f}", per_seed,
                     pm(cos, 2)])  # fmt: skip
    header = ["method", "seeds", "test accuracy %", "median", "per seed", "cos(synthetic, true)"]
    return markdown_table(header, body)


def plot(curves: list[dict], path: Path) -> None:
    """Test accuracy against steps: the median over seeds, and every seed as a thin line."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (method,), rows in group(curves, ["method"]).items():
        per_step = group(rows, ["step"])
        steps = sorted(per_step, key=lambda k: int(k[0]))
        acc = 100 * torch.tensor([[float(r["test_accuracy"]) for r in per_step[s]] for s in steps])
        xs = [int(s[0]) for s in steps]
        (line,) = ax.plot(xs, acc.median(1).values, label=f"{method} (median)", linewidth=2)
        ax.plot(xs, acc, color=line.get_color(), linewidth=0.6, alpha=0.35)
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylabel("test accuracy % (thin: one seed each)")
    ax.set_title("digits, lower block trained by synthetic gradients")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 150 steps")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--module-width", type=int, default=256, help="SG module/critic width")
    parser.add_argument("--module-activation", default="relu", help="SG module/critic activation")
    parser.add_argument("--critic-directions", type=int, default=32, help="K for the critic")
    parser.add_argument(
        "--critic-beta",
        type=float,
        default=256.0,
        help="weight of the critic's derivative term (K unit projections shrink it ~1/HIDDEN)",
    )
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true", help="re-render from the CSVs")
    args = parser.parse_args(argv)
    setup_cpu(args.threads)
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.steps = args.steps or (150 if args.quick else 1000)
    args.eval_every = args.eval_every or max(1, args.steps // 40)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = args.out / "paper_synthetic_gradients.csv"
    curves_path = args.out / "paper_synthetic_gradients_curves.csv"

    if not args.table_only:
        rows, curves = [], []
        clock = Stopwatch(len(METHODS) * args.seeds, "synthetic gradients")
        for seed in range(args.seeds):
            for method in METHODS:
                final, curve = run_one(method, seed, args)
                rows.append(final)
                curves += curve
                clock.tick(f"{method} seed={seed}: test accuracy {final['test_accuracy']:.4f}, "
                           f"cos {final['grad_cosine']:.3f}")  # fmt: skip
        write_csv(csv_path, COLUMNS, rows)
        write_csv(curves_path, CURVE_COLUMNS, curves)
    rows, curves = read_csv(csv_path), read_csv(curves_path)
    (args.out / "paper_synthetic_gradients.md").write_text(table(rows))
    print(table(rows))
    plot(curves, args.out / "paper_synthetic_gradients.png")


if __name__ == "__main__":
    main()
