"""The main job: a Sobolev-vs-regular training demo and a quick step-time benchmark.

    python -m bench.run            # CPU: a few minutes
    python -m bench.run --quick    # fewer steps, smaller sizes
    python -m bench.run --out DIR --update-readme

1. Trains the same MLP on 100 points of Styblinski-Tang twice, on values only ("regular") and
   on values + gradients ("sobolev", full Jacobian matching), and prints the test error of
   both on values and on gradients (10,000 uniform test points), in the function's units and
   relative to the spread of the targets.
2. Times a full training step (loss + backward) of every available backend next to what
   users write today: eager double backward (``autograd.grad(create_graph=True)``) and
   ``torch.func`` (jvp + grad), plus the floor: a plain first-order step on (1 + K) B rows.

Progress goes to stderr (a tqdm bar in a terminal, plain lines in logs), the tables to stdout.
Writes to --out (default results/main/, not committed): main_job.md (the tables as in the
README; --update-readme copies them and the plot there), training.csv (test errors during
training), step_times.csv and main_job.png (error curves and step times; needs matplotlib).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import shutil
import sys
import time
from pathlib import Path

import torch

import sobolev_kernels as sk
from bench.providers import (
    check_agreement,
    make_problem,
    providers_available,
    set_precision,
    step_fn,
)
from bench.step import git_commit
from bench.timing import time_ms

ROOT = Path(__file__).resolve().parents[1]
README_BEGIN, README_END = "<!-- main:begin -->", "<!-- main:end -->"
# README wording of the providers (bench/providers.py ids otherwise)
PROVIDER_NAMES = {
    "eager_autograd": "eager `autograd.grad(create_graph=True)`",
    "torch_func": "`torch.func` (jvp + grad)",
    "torch_compile": "`torch.compile` of either eager formulation",
    "plain_step": "plain first-order step on (1+K)B rows (floor)",
    "jax_jit": "JAX `jit` (jvp + grad)",
    "torch": "`torch` backend",
    "triton": "`triton` backend",
    "cuda": "`cuda` backend",
}


class Progress:
    """Progress of a long phase on ``stream``: a tqdm bar where it is a terminal and tqdm is
    installed, otherwise one line per tenth of the work (readable in logs)."""

    def __init__(self, total: int, desc: str, unit: str, stream=None):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.bar, self.announced = None, False
        if self.stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=True)

    def update(self, n: int = 1, **info: object) -> None:
        before, self.done = self.done, self.done + n
        if self.bar is not None:
            if info:
                self.bar.set_postfix(info, refresh=False)
            self.bar.update(n)
        elif self.done == self.total or (
            not self.announced and self.done * 10 // self.total > before * 10 // self.total
        ):
            self._line(info)

    def _line(self, info: dict) -> None:
        extra = "".join(f", {key} {value}" for key, value in info.items())
        elapsed = time.perf_counter() - self.start
        print(f"[{self.desc}] {self.done}/{self.total} {self.unit}, {elapsed:.1f} s{extra}",
              file=self.stream, flush=True)  # fmt: skip

    def status(self, **info: object) -> None:
        """What starts now, for items long enough to be worth a line each (those lines then
        replace the tenths)."""
        self.announced = True
        if self.bar is not None:
            self.bar.set_postfix(info)
        else:
            self._line(info)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def train_demo(
    n_train: int = 100, steps: int = 2000, seed: int = 0, device: str = "cpu", evals: int = 40
) -> dict:
    """Test errors of a regular and a Sobolev fit of Styblinski-Tang, in the function's units.

    Returns {"regular"/"sobolev": [(step, value MSE, gradient MSE), ...] measured ``evals``
    times during training, the last after the final step}, plus "value_var" and "grad_var":
    the variances of f and of its gradient components over the test points.
    """
    fn = sk.functions.styblinski_tang
    gen = torch.Generator().manual_seed(seed)
    x_train, x_test = fn.sample(n_train, gen), fn.sample(10_000, gen)
    # Train in normalised units: inputs in [-1, 1], values of unit spread. Gradients are
    # scaled by the chain rule (d y' / d x' = dy/dx * x_scale / y_scale).
    x_scale = 5.0
    y_mean, y_scale = fn(x_train).mean(), fn(x_train).std()
    f_test, g_test = fn(x_test), fn.grad(x_test)

    def targets(x):
        return (fn(x)[:, None] - y_mean) / y_scale, fn.grad(x) * x_scale / y_scale

    def test_errors(model) -> tuple[float, float]:
        xt = (x_test / x_scale).to(device).requires_grad_(True)
        pred = model(xt)
        (grad,) = torch.autograd.grad(pred.sum(), xt)
        value = pred.detach().cpu()[:, 0] * y_scale + y_mean
        grad = grad.cpu() * y_scale / x_scale
        return (value - f_test).square().mean().item(), (grad - g_test).square().mean().item()

    xn, (yn, gn) = (x_train / x_scale).to(device), [t.to(device) for t in targets(x_train)]
    every = max(1, steps // evals)
    results: dict = {"value_var": f_test.var().item(), "grad_var": g_test.var().item()}
    for method in ("regular", "sobolev"):
        torch.manual_seed(seed)
        model = sk.SobolevMLP(2, 64, 1, num_layers=3, activation="tanh", device=device)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        curve = [(0, *test_errors(model))]
        with Progress(steps, f"train {method}", "steps") as progress:
            for step in range(1, steps + 1):
                if method == "regular":
                    loss = torch.nn.functional.mse_loss(model(xn), yn)
                else:
                    loss = sk.sobolev_loss(model, xn, yn, target_grad=gn, directions="full")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step % every == 0 or step == steps:
                    curve.append((step, *test_errors(model)))
                    progress.update(step - progress.done, loss=f"{loss.item():.3g}")
        results[method] = curve
        results["widths"] = model.widths
    return results


def benchmark_steps(device: str, quick: bool) -> dict:
    """Step times (ms) of every provider: {"rows": [(provider, p20, p50, p80)], "failures":
    [(provider, message)], "label": problem, "reps": timed steps per provider}."""
    if device == "cuda":
        cfg = dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2)
    else:
        cfg = dict(batch=2048 if quick else 8192, dim=16, width=128, layers=4, out=8, k=2)
    set_precision("fp32")  # fp32-accurate products for every provider (no TF32)
    problem = make_problem(**cfg, device=device)
    providers = providers_available(device)
    print(f"[time steps] checking {len(providers)} providers against torch_func",
          file=sys.stderr, flush=True)  # fmt: skip
    rows, failures = [], list(check_agreement(problem, providers).items())
    reps = 5 if quick else 10
    with Progress(len(providers), "time steps", "providers") as progress:
        for provider in providers:
            progress.status(now=provider)
            if provider in dict(failures):
                progress.update(1)
                continue
            try:
                fn = step_fn(provider, problem)
            except RuntimeError as exc:  # torch.compile of double backward: the known failure
                failures.append((provider, str(exc).split(";")[0]))
            else:
                p20, p50, p80 = time_ms(fn, device, reps=reps)
                rows.append((provider, p20, p50, p80))
            progress.update(1)
    return dict(rows=rows, failures=failures, label=problem.label, reps=reps)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [headers, ["---"] + ["---:"] * (len(headers) - 1), *rows]
        return "\n".join("| " + " | ".join(row) + " |" for row in lines)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    fmt = lambda row: "  ".join(  # noqa: E731
        (f"{c:<{w}}" if i == 0 else f"{c:>{w}}") for i, (c, w) in enumerate(zip(row, widths))
    )
    return "\n".join(fmt(row) for row in [headers, *rows])


TRAIN_HEADERS = ["method", "value MSE (f^2)", "/ var(f)", "gradient MSE ((df/dx_i)^2)",
                 "/ var(df/dx_i)"]  # fmt: skip
STEP_HEADERS = ["provider", "median ms", "p20-p80 ms", "vs eager", "vs torch.func"]


def render_training(train: dict, *, n_steps: int, markdown: bool) -> str:
    """The test errors with their units, as text (terminal) or markdown (main_job.md)."""
    names = {"regular": "regular (values only)", "sobolev": "Sobolev (values + full Jacobian)"}
    rows = []
    for method in ("regular", "sobolev"):
        _, value_mse, grad_mse = train[method][-1]
        rows.append([names[method] if markdown else method, f"{value_mse:.1f}",
                     f"{value_mse / train['value_var']:.4f}", f"{grad_mse:.1f}",
                     f"{grad_mse / train['grad_var']:.4f}"])  # fmt: skip
    mlp = "-".join(map(str, train["widths"]))
    return "\n".join([
        f"Styblinski-Tang, 100 training points, {n_steps} Adam steps, 10,000 test points "
        f"(MLP {mlp} tanh):",
        "",
        _table(TRAIN_HEADERS, rows, markdown),
        "",
        f"Units: f is Styblinski-Tang on [-5, 5]^2 (in its own units), x_i its inputs. MSEs are "
        f"means over the test points (for gradients also over the 2 components), where "
        f"var(f) = {train['value_var']:.0f} and var(df/dx_i) = {train['grad_var']:.0f}; the "
        f"/ var columns are the fraction of the targets' variance the fit leaves unexplained.",
    ])  # fmt: skip


def render_steps(steps: dict, *, device: str, markdown: bool) -> str:
    """The step times (ms) against the two ways users write the loss today."""
    ref = {r[0]: r[2] for r in steps["rows"]}
    rows = []
    for provider, p20, p50, p80 in steps["rows"]:
        name = PROVIDER_NAMES.get(provider, provider) if markdown else provider
        if markdown and provider == "cuda":
            name += " (fused C++ CPU kernel)" if device == "cpu" else " (CUDA kernels)"
        vs = [f"{ref[b] / p50:.2f}x" if b in ref else "-" for b in ("eager_autograd", "torch_func")]
        rows.append([name, f"{p50:.1f}", f"{p20:.1f}-{p80:.1f}", *vs])
    failed = []
    for provider, message in steps["failures"]:
        if markdown:
            rows.append([PROVIDER_NAMES.get(provider, provider), f"fails: {message}", "", "", ""])
        else:
            failed.append(f"{provider} fails: {message}")
    return "\n".join([
        f"One training step (loss + backward), {steps['label']}, fp32, {device_name(device)}; "
        f"wall-clock ms per step, median and 20th-80th percentiles of {steps['reps']} steps "
        f"after 3 warm-up steps:",
        "",
        _table(STEP_HEADERS, rows, markdown),
        *failed,
    ])  # fmt: skip


def load_average() -> str:
    """The machine's 1-minute load average: step times on a busy CPU are not its speed."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # not on every platform
        return "unknown"


def write_results(
    out: Path, train: dict, steps: dict, *, n_steps: int, device: str, load: str
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"From `bench/run.py` at commit `{git_commit()}`, {datetime.date.today()}, "
        f"{device_name(device)}, sobolev_kernels {sk.__version__}, torch {torch.__version__}, "
        f"backends {', '.join(sk.available_backends())}; load average {load} at the start and "
        f"{load_average()} at the end, on {os.cpu_count()} cores."
    )
    training = render_training(train, n_steps=n_steps, markdown=True)
    timing = render_steps(steps, device=device, markdown=True)
    (out / "main_job.md").write_text(f"{header}\n\n{training}\n\n{timing}\n")
    with (out / "training.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "step", "value_mse", "grad_mse", "value_var", "grad_var"])
        for method in ("regular", "sobolev"):
            for step, value_mse, grad_mse in train[method]:
                writer.writerow([method, step, value_mse, grad_mse, train["value_var"],
                                 train["grad_var"]])  # fmt: skip
    with (out / "step_times.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["provider", "unit", "p20", "p50", "p80", "error", "problem", "device"])
        where = [steps["label"], device_name(device)]
        for provider, p20, p50, p80 in steps["rows"]:
            writer.writerow([provider, "ms", p20, p50, p80, "", *where])
        for provider, message in steps["failures"]:
            writer.writerow([provider, "ms", "", "", "", message, *where])
    plot(out / "main_job.png", train, steps)


def plot(path: Path, train: dict, steps: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[main] matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for method, color in (("regular", "tab:gray"), ("sobolev", "tab:blue")):
        step, value_mse, grad_mse = zip(*train[method])
        ax_err.plot(step, value_mse, color=color, label=f"{method}: value MSE (f^2)")
        ax_err.plot(step, grad_mse, color=color, ls="--", label=f"{method}: gradient MSE")
    ax_err.set(yscale="log", xlabel="Adam step", ylabel="test MSE (f^2; (df/dx_i)^2)",
               title="Styblinski-Tang, 100 training points")  # fmt: skip
    ax_err.legend(fontsize=8)
    names = [r[0] for r in steps["rows"]]
    p20, p50, p80 = ([r[i] for r in steps["rows"]] for i in (1, 2, 3))
    err = [[b - a for a, b in zip(p20, p50)], [b - a for a, b in zip(p50, p80)]]
    ax_time.barh(names, p50, xerr=err, color="tab:blue")
    ax_time.invert_yaxis()
    ax_time.set(xlabel="ms per training step (median, p20-p80)", title=steps["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def update_readme(markdown: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: no {README_BEGIN} ... {README_END} section to update")
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_BEGIN}\n{markdown}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller sizes")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "main",
                        help="tables, CSVs and plot go here (default: results/main)")  # fmt: skip
    parser.add_argument("--update-readme", action="store_true",
                        help="copy the tables into README.md's main-job section")  # fmt: skip
    args = parser.parse_args(argv)

    print(f"sobolev_kernels {sk.__version__}, torch {torch.__version__}, "
          f"backends: {', '.join(sk.available_backends())}", flush=True)  # fmt: skip
    load = load_average()
    n_steps = 300 if args.quick else 2000
    train = train_demo(steps=n_steps, device=args.device)
    print("\n" + render_training(train, n_steps=n_steps, markdown=False), flush=True)
    steps = benchmark_steps(args.device, args.quick)
    print("\n" + render_steps(steps, device=args.device, markdown=False))
    write_results(args.out, train, steps, n_steps=n_steps, device=args.device, load=load)
    written = ", ".join(sorted(p.name for p in args.out.iterdir() if p.is_file()))
    print(f"\nWrote to {args.out}: {written}")
    if args.update_readme:
        update_readme((args.out / "main_job.md").read_text().strip())
        if (args.out / "main_job.png").exists():
            shutil.copyfile(args.out / "main_job.png", ROOT / "docs" / "main_job.png")


if __name__ == "__main__":
    main()
