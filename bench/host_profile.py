"""Where the host time of a training step goes: cProfile of a provider's steps, by function.

    python -m bench.host_profile                       # config M at B = 1024, triton and cuda
    python -m bench.host_profile --providers triton --batch 4096 --out host.md

The H200 run of 2026-11-27 found the Triton step host-bound below B = 4096 (2.3-2.8 ms of
CPU time to issue a step whose kernels take about 0.5 ms): this table says which layer pays,
the API's checks, the autograd wrapper, the launch plans or Triton's launcher. Each step is
followed by a synchronize, listed as one row of its own (the GPU's share).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

import torch

from bench.providers import PRECISIONS, make_problem, set_precision, step_fn
from bench.step import CONFIGS
from bench.timing import host_ms

ROOT = str(Path(__file__).resolve().parents[1])


def profile_rows(fn, steps: int, top: int, sync) -> list[str]:
    """Markdown rows: the ``top`` functions by own time over ``steps`` calls of ``fn``."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        fn()
        sync()
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    rows = []
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (path, line, name), (_, calls, own, cumulative, _) in entries:
        where = path.replace(ROOT + "/", "").split("site-packages/")[-1]
        rows.append(f"| `{where}:{line}({name})` | {calls / steps:g} | {own / steps * 1e3:.3f} "
                    f"| {cumulative / steps * 1e3:.3f} |")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="M", choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--providers", nargs="+", default=["triton", "cuda"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, profile nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"host profile: config {args.config}, B = {args.batch}, {args.precision}, "
              f"{args.steps} steps of {' '.join(args.providers)} on {args.device}")  # fmt: skip
        return 0
    set_precision(args.precision)
    sizes = {**CONFIGS[args.config], "batch": args.batch}
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    lines = [f"# Host time of a step: config {args.config}, B = {args.batch}, {args.precision}",
             "", "From `python -m bench.host_profile` (cProfile, which slows Python down: "
             "compare rows, not with the benchmark's host column). Per step: calls, own ms, "
             "cumulative ms."]  # fmt: skip
    for provider in args.providers:
        problem = make_problem(**sizes, precision=args.precision, device=args.device)
        try:
            fn = step_fn(provider, problem, "step")
            p20, p50, p80 = host_ms(fn, args.device, reps=30)  # also the warm-up (tuning)
            rows = profile_rows(fn, args.steps, args.top, sync)
        except Exception as exc:  # noqa: BLE001 - a provider refusing the shape, say
            lines += ["", f"## {provider}: error: {type(exc).__name__}: {exc}"[:200]]
            continue
        lines += ["", f"## {provider}: host {p50:.3f} ms a step (p20-p80 {p20:.3f}-{p80:.3f})",
                  "", "| function | calls | own ms | cumulative ms |",
                  "| --- | ---: | ---: | ---: |", *rows]  # fmt: skip
        print(f"[host] {provider}: {p50:.3f} ms a step", file=sys.stderr, flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
