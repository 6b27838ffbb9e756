"""Runs each provider on each point in a process of its own, with ``CUDA_LAUNCH_BLOCKING=1``,
and says which ones fail and where: the triage for a GPU error that is sticky (an illegal
memory access ends the CUDA context, so in one process every later measurement fails too and
the error surfaces far from its cause).

    python -m bench.isolate --configs M --precisions fp32 bf16 --providers cuda cuda_fused
    python -m bench.isolate --configs M --batches 4096 16384 --providers cuda

A case is a fresh process that builds the point's problem, runs the provider's step (or
forward) three times and prints its loss beside torch_func's (the benchmark checks agreement;
this finds what faults). Prints one line per case and exits non-zero when any failed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.step import CONFIGS

CASE_SECONDS = 300
ROOT = Path(__file__).resolve().parents[1]


def run_case(config, batch: int | None, precision, provider, mode, device="cuda") -> None:
    """The body of one case's process: raises on failure."""
    from bench.providers import make_problem, set_precision, step_fn

    set_precision(precision)
    sizes = {**CONFIGS[config], **({"batch": batch} if batch else {})}
    problem = make_problem(**sizes, precision=precision, device=device)
    fn = step_fn(provider, problem, mode)
    for _ in range(3):
        loss = fn()
    expected = step_fn("torch_func", problem, "forward")()
    print(f"loss {float(loss.detach()):.6g} torch_func {float(expected.detach()):.6g}")


def _spawn(case: tuple, seconds: float, device: str) -> tuple[tuple, str]:
    config, batch, precision, provider, mode = case
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "bench.isolate", "--case", config, str(batch or 0), precision,
            provider, mode, "--device", device]  # fmt: skip
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds,
                              cwd=ROOT)  # fmt: skip
    except subprocess.TimeoutExpired:
        return case, f"TIMEOUT after {seconds:.0f} s"
    out = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode == 0:
        printed = done.stdout.strip().splitlines()
        return case, "ok " + (printed[-1] if printed else "")
    # the traceback's last frames of our code and the error line say where it broke
    ours = [line.strip() for line in out if "sobolev_kernels" in line or "bench/" in line]
    return case, f"FAILED rc {done.returncode}: {out[-1] if out else ''} | {' < '.join(ours[-3:])}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["S", "M", "L"], choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="*", type=int, default=[],
                        help="batches to run instead of the configs' own")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--providers", nargs="+", default=["cuda", "triton"])
    parser.add_argument("--modes", nargs="+", default=["step", "forward"])
    parser.add_argument("--jobs", type=int, default=4, help="cases at once")
    parser.add_argument("--seconds", type=float, default=CASE_SECONDS, help="limit per case")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    parser.add_argument("--case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        config, batch, precision, provider, mode = args.case
        try:
            run_case(config, int(batch) or None, precision, provider, mode, args.device)
        except Exception:  # noqa: BLE001 - the parent reads the traceback
            traceback.print_exc()
            return 1
        return 0
    cases = list(itertools.product(args.configs, args.batches or [None], args.precisions,
                                   args.providers, args.modes))  # fmt: skip
    if args.dry_run:
        print(f"{len(cases)} cases, {args.jobs} at a time, each in a process of its own:")
        for config, batch, precision, provider, mode in cases:
            print(f"  {config} {f'B={batch}' if batch else ''} {precision} {provider} {mode}")
        return 0
    failed = 0
    with ThreadPoolExecutor(args.jobs) as pool:
        for (config, batch, precision, provider, mode), verdict in pool.map(
            lambda c: _spawn(c, args.seconds, args.device), cases
        ):
            failed += not verdict.startswith("ok")
            size = f"B={batch}" if batch else ""
            print(f"{config} {size:<9} {precision:<5} {provider:<22} {mode:<8} {verdict}",
                  flush=True)  # fmt: skip
    print(f"{failed} of {len(cases)} cases failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
