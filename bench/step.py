"""Microbenchmarks: a full training step and the forward alone, for every provider.

    python bench/step.py                 # configs S, M, L and all sweeps (GPU sizes; CPU scaled)
    python bench/step.py --quick         # tiny sizes, under a minute on CPU (run in CI)
    python bench/step.py --configs M --sweeps width

Providers (bench/providers.py): eager_autograd, torch_func, torch_compile (records its error
where it fails), plain_step (first-order step on (1 + K) B rows: the floor), jax_jit (when jax
is installed) and every available backend of ours. All share weights, inputs, directions and
targets, and are checked against torch_func before timing. Rows are appended to
bench/results/<device>.csv; bench/report.py renders tables and plots from them.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import re
import subprocess
import sys
from pathlib import Path

import torch

from sobolev_kernels import tuning as sk_tuning

sys.path.insert(0, str(Path(__file__).resolve().parent))

from providers import (  # noqa: E402
    check_agreement,
    make_problem,
    providers_available,
    step_flops,
    step_fn,
)
from timing import count_launches, peak_memory_mb, time_ms  # noqa: E402

COLUMNS = ["provider", "config", "mode", "metric", "unit", "p20", "p50", "p80",
           "device", "torch", "triton", "commit", "date"]  # fmt: skip

CONFIGS = {
    "S": dict(batch=2**18, dim=2, width=64, layers=4, out=1, k=1),
    "M": dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2),
    "L": dict(batch=2**14, dim=64, width=256, layers=6, out=16, k=4),
}
# Each sweep varies one knob of config M.
SWEEPS = {
    "batch": [2**e for e in range(10, 21, 2)],
    "width": [16, 32, 64, 128, 256],
    "k": [1, 2, 4, 8],
    "dim": [2, 8, 16, 32, 64],
    "dtype": ["fp32", "bf16"],
    "order": [1, 2],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BATCH_DIVISOR = 32  # CPU sizes: the GPU batch / 32 (at least 256)
CPU_MAX_BATCH = 2**15
# Device peaks in TFLOP/s (dense) for the FLOP-efficiency column of the report.
PEAK_TFLOPS = {
    ("H100", "fp32"): 67.0, ("H100", "bf16"): 989.0,
    ("H200", "fp32"): 67.0, ("H200", "bf16"): 989.0,
    ("A100", "fp32"): 19.5, ("A100", "bf16"): 312.0,
}  # fmt: skip


def device_label(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"


def results_path(device: str, out_dir: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", device_label(device)).strip("_")
    return out_dir / f"{name}.csv"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def points(args, device: str) -> list[tuple[str, dict]]:
    """(config label, problem kwargs) for every config and sweep point asked for."""
    out = []
    for name in args.configs:
        out.append((name, dict(CONFIGS[name])))
    for sweep in args.sweeps:
        for value in SWEEPS[sweep]:
            cfg = dict(CONFIGS["M"])
            if sweep == "dtype":
                cfg["dtype"] = value
            else:
                cfg[sweep] = value
            out.append((f"{sweep}={value}", cfg))
    for _, cfg in out:
        if device == "cpu":
            cfg["batch"] = min(CPU_MAX_BATCH, max(256, cfg["batch"] // CPU_BATCH_DIVISOR))
        if args.quick:
            cfg["batch"] = min(cfg["batch"], 512)
            cfg["width"] = min(cfg["width"], 64)
            cfg["layers"] = min(cfg["layers"], 3)
    return out


def measure(args) -> list[dict]:
    device = args.device
    meta = {
        "device": device_label(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
    }
    wanted = set(args.providers)
    providers = [p for p in providers_available(device) if not wanted or p in wanted]
    if args.precompile:
        precompile(args, providers, args.precompile)
    rows: list[dict] = []
    plan = points(args, device)
    total = len(plan) * len(providers)
    done = 0
    for label, cfg in plan:
        dtype = DTYPES[cfg.pop("dtype", "fp32")]
        problem = make_problem(**cfg, dtype=dtype, device=device)
        refused = check_agreement(problem, providers,
                                  rtol=1e-3 if dtype == torch.float32 else 5e-2)  # fmt: skip
        flops = step_flops(problem)
        for provider in providers:
            done += 1
            print(f"[{done}/{total}] {label:<12} {provider:<15} {problem.label}",
                  file=sys.stderr, flush=True)  # fmt: skip
            for mode in args.modes:
                if provider in refused:
                    rows.append(_error_row(provider, label, mode, refused[provider], meta))
                    continue
                rows += _measure_one(provider, problem, mode, label, flops, device, args, meta)
    return rows


# Providers that compile kernels the first time a shape runs (Triton, with its autotuner's
# candidates; inductor): seconds each, so --precompile compiles them in parallel processes
# before the timed, sequential pass, which then finds them in the on-disk caches.
COMPILING = ("triton", "torch_compile")


def precompile(args, providers: list[str], workers: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    wanted = [p for p in providers if p in COMPILING]
    jobs = [(cfg, wanted, args.modes, args.device) for _, cfg in points(args, args.device)]
    if not wanted or not jobs:
        return
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for i, problems in enumerate(pool.map(_warm_point, jobs), 1):
            print(f"[precompile {i}/{len(jobs)}] {problems or 'ok'}", file=sys.stderr, flush=True)


def _warm_point(job) -> str:
    """Run each compiling provider once on one point (in a worker process)."""
    cfg, wanted, modes, device = job
    cfg = dict(cfg)
    problem = make_problem(**cfg, dtype=DTYPES[cfg.pop("dtype", "fp32")], device=device)
    problems = []
    for provider in wanted:
        for mode in modes:
            try:
                step_fn(provider, problem, mode)()
            except Exception as exc:  # noqa: BLE001 - the timed pass records the error
                problems.append(f"{provider}/{mode}: {type(exc).__name__}")
    if device == "cuda":
        torch.cuda.synchronize()
    return "; ".join(problems)


def _row(provider, label, mode, metric, unit, values, meta) -> dict:
    p20, p50, p80 = values
    return {"provider": provider, "config": label, "mode": mode, "metric": metric,
            "unit": unit, "p20": p20, "p50": p50, "p80": p80, **meta}  # fmt: skip


def _error_row(provider, label, mode, message, meta) -> dict:
    """A provider that cannot run a point is a result too: metric "error", the reason as unit."""
    message = re.sub(r"\s+", " ", message)[:300].replace(",", ";")
    return _row(provider, label, mode, "error", message, (math.nan,) * 3, meta)


def _measure_one(provider, problem, mode, label, flops, device, args, meta) -> list[dict]:
    def row(metric, unit, values):
        return _row(provider, label, mode, metric, unit, values, meta)

    try:
        fn = step_fn(provider, problem, mode)
        times = time_ms(fn, device, reps=args.reps, warmup=2 if args.quick else 3)
    except Exception as exc:  # noqa: BLE001 - a provider that cannot run is a result too
        return [_error_row(provider, label, mode, f"{type(exc).__name__}: {exc}", meta)]
    out = [row("time", "ms", times)]
    step_flop = flops if mode == "step" else flops / 3
    out.append(row("tflops", "TFLOP/s", tuple(step_flop / (t * 1e-3) / 1e12 for t in times[::-1])))
    memory = peak_memory_mb(fn, device)
    if memory is not None:
        out.append(row("memory", "MiB", (memory,) * 3))
    if not args.quick and provider != "jax_jit":  # the profiler sees no JAX kernels
        launches = count_launches(fn, device)
        out.append(row("launches", "kernels" if device == "cuda" else "aten ops", (launches,) * 3))
    return out


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return ""


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS))
    parser.add_argument("--sweeps", nargs="*", default=None, choices=list(SWEEPS))
    parser.add_argument("--providers", nargs="*", default=[])
    parser.add_argument("--modes", nargs="*", default=["step", "forward"])
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--precompile", type=int, default=0, metavar="N",
                        help="compile the kernels of every point in N processes first")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = ["S", "M"] if args.quick else list(CONFIGS)
    if args.sweeps is None:
        args.sweeps = [] if args.quick else list(SWEEPS)
    if args.reps is None:
        args.reps = 3 if args.quick else 10
    rows = measure(args)
    for key, choice in sk_tuning.choices().items():  # which launch configs / backend won
        print(f"tuned {key}: {choice}", file=sys.stderr)
    path = results_path(args.device, args.out_dir)
    write(rows, path)
    print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
