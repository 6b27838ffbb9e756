"""The main job: a Sobolev-vs-regular training demo and a quick step-time benchmark.

    python -m bench.run            # CPU: well under a minute

1. Trains the same MLP on 100 points of Styblinski-Tang twice, on values only ("regular") and
   on values + gradients ("sobolev", full Jacobian matching), and prints the test error of
   both on values and on gradients (10,000 uniform test points).
2. Times a full training step (loss + backward) of every available backend next to what
   users write today: eager double backward (``autograd.grad(create_graph=True)``) and
   ``torch.func`` (jvp + grad), plus the floor: a plain first-order step on (1 + K) B rows.
"""

from __future__ import annotations

import argparse

import torch

import sobolev_kernels as sk
from bench.providers import (
    check_agreement,
    make_problem,
    providers_available,
    set_precision,
    step_fn,
)
from bench.timing import time_ms


def train_demo(
    n_train: int = 100, steps: int = 2000, seed: int = 0, device: str = "cpu"
) -> dict[str, tuple[float, float]]:
    """Test (value MSE, gradient MSE) of a regular and a Sobolev fit of Styblinski-Tang."""
    fn = sk.functions.styblinski_tang
    gen = torch.Generator().manual_seed(seed)
    x_train, x_test = fn.sample(n_train, gen), fn.sample(10_000, gen)
    # Train in normalised units: inputs in [-1, 1], values of unit spread. Gradients are
    # scaled by the chain rule (d y' / d x' = dy/dx * x_scale / y_scale).
    x_scale = 5.0
    y_mean, y_scale = fn(x_train).mean(), fn(x_train).std()

    def targets(x):
        return (fn(x)[:, None] - y_mean) / y_scale, fn.grad(x) * x_scale / y_scale

    xn, (yn, gn) = (x_train / x_scale).to(device), [t.to(device) for t in targets(x_train)]
    results = {}
    for method in ("regular", "sobolev"):
        torch.manual_seed(seed)
        model = sk.SobolevMLP(2, 64, 1, num_layers=3, activation="tanh", device=device)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            if method == "regular":
                loss = torch.nn.functional.mse_loss(model(xn), yn)
            else:
                loss = sk.sobolev_loss(model, xn, yn, target_grad=gn, directions="full")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        xt = (x_test / x_scale).to(device).requires_grad_(True)
        pred = model(xt)
        (grad,) = torch.autograd.grad(pred.sum(), xt)
        value = pred.detach().cpu()[:, 0] * y_scale + y_mean
        grad = grad.cpu() * y_scale / x_scale
        results[method] = (
            (value - fn(x_test)).square().mean().item(),
            (grad - fn.grad(x_test)).square().mean().item(),
        )
    return results


def benchmark_steps(device: str, quick: bool) -> list[tuple[str, float, float, float]]:
    if device == "cuda":
        cfg = dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2)
    else:
        cfg = dict(batch=2048 if quick else 8192, dim=16, width=128, layers=4, out=8, k=2)
    set_precision("fp32")  # fp32-accurate products for every provider (no TF32)
    problem = make_problem(**cfg, device=device)
    providers = providers_available(device)
    rows, failures = [], list(check_agreement(problem, providers).items())
    for provider in providers:
        if provider in dict(failures):
            continue
        try:
            fn = step_fn(provider, problem)
        except RuntimeError as exc:  # torch.compile of double backward: the known failure
            failures.append((provider, str(exc).split(";")[0]))
            continue
        p20, p50, p80 = time_ms(fn, device, reps=5 if quick else 10)
        rows.append((provider, p20, p50, p80))
    print(f"\nTraining step (loss + backward), {problem.label}, fp32, {device_name(device)}")
    ref = {r[0]: r[2] for r in rows}
    print(f"{'provider':<16}{'median ms':>11}{'p20-p80 ms':>17}{'vs eager':>10}{'vs func':>9}")
    for provider, p20, p50, p80 in rows:
        print(
            f"{provider:<16}{p50:>11.2f}{f'{p20:.2f}-{p80:.2f}':>17}"
            f"{ref['eager_autograd'] / p50:>9.2f}x{ref['torch_func'] / p50:>8.2f}x"
        )
    for provider, message in failures:
        print(f"{provider:<16} fails: {message}")
    return rows


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller sizes")
    args = parser.parse_args(argv)

    print(f"sobolev_kernels {sk.__version__}, torch {torch.__version__}, "
          f"backends: {', '.join(sk.available_backends())}")  # fmt: skip
    steps = 300 if args.quick else 2000
    results = train_demo(steps=steps, device=args.device)
    print(f"\nStyblinski-Tang, 100 training points, {steps} Adam steps, 10,000 test points")
    print(f"{'method':<10}{'test value MSE':>16}{'test gradient MSE':>20}")
    for method, (value_mse, grad_mse) in results.items():
        print(f"{method:<10}{value_mse:>16.3f}{grad_mse:>20.3f}")
    benchmark_steps(args.device, args.quick)


if __name__ == "__main__":
    main()
