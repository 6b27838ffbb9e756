"""Where a training step's time goes: each kernel's time per step, per backend and config.

The step times of ``bench/step.py`` say how fast a backend is; this says which of its kernels to
work on (for instance the CUDA backward, whose blocks add every tile's weight gradients into
their partial sums in global memory). From torch.profiler, over a few steps after a warm-up:

    python -m bench.kernel_profile                        # configs S, M, L; fused backends
    python -m bench.kernel_profile --configs M --precisions fp32 bf16 --providers cuda triton

On a GPU the rows are CUDA kernels (device time); on the CPU they are the profiler's events
(operators, autograd nodes; self CPU time). Prints a markdown table, also written to --out.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.providers import (
    PRECISIONS,
    make_problem,
    providers_available,
    runs_at,
    set_precision,
    step_fn,
)
from bench.step import CONFIGS, device_label, points

FUSED = (
    "triton",
    "triton_recompute",
    "triton_persistent",
    "triton_lean",
    "triton_lean_persistent",
    "triton_split_tf32x3",  # 3xTF32 dots formed by the kernels (fp32: run 5's 0.60 ms forward)
    "triton_kmajor_inputs",  # inputs stacks transposed (fp32 split-K dW: run 5's 0.75 ms)
    "triton_resident_backward",  # adjoints in registers (bf16 backward at M: 0.40 ms, run 5)
    "triton_wide_tiles",  # the backward's 64-row column-block tiles in bf16 too (same)
    "cuda",  # fused kernels, dW by cuBLAS, high occupancy (2.7 ms at M in fp32, run 5)
    "cuda_tiled",  # the default until run 5 (8.8 ms)
    "cuda_fused",  # dW by its own split-K kernel (7.3 ms)
    "cuda_fused_gemm",  # dW by cuBLAS, the low-occupancy shapes (3.6 ms)
    "cuda_bias_gemv",  # the default, its bias sums by cuBLAS's gemv (torch's sum: 0.22 ms)
    "cuda_bias_operands",  # the default, its bias sums as the operand kernels' partials
    "cuda_staged_split",  # fp32 weights split once per launch (the default's fp32 fused kernels
    # at M: 0.88 ms forward, 0.96 ms backward in run 5)
    "cuda_splitk_tc",  # dW by the tensor-core split-K (the default's at M: 0.82 ms fp32, run 5)
    "cuda_cutlass_gemm",  # fp32 dW GEMMs by CUTLASS's 3xTF32 (cuBLAS's SIMT: 0.41 ms at M)
    "cuda_backward_operands",  # the GEMMs' operands and bias partials from the backward kernel
    # (the default's operand kernels and bias sums at M: 0.44 ms fp32, 0.56 ms bf16)
    "cuda_operands_cutlass",  # that, with the fp32 dW GEMMs by CUTLASS
    "cuda_batched_pass",  # 16-bit: the forward's activation pass 4 elements at a time (the
    # default's bf16 forward kernel at M: 0.43 ms)
)


def kernel_times(fn, device: str, steps: int) -> tuple[dict[str, float], dict[str, int]]:
    """{name: microseconds per step}, {name: calls per step} of the kernels (GPU) or operators
    (CPU, their self time) one call of ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):  # compiles, autotuning and caches stay out of the profile
        fn()
    on_gpu = device == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if on_gpu:
            torch.cuda.synchronize()
    micros: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in prof.events():
        if on_gpu:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            spent = e.time_range.elapsed_us()
        else:  # self time, which splits the step's time among the events without overlap
            # (a custom op's CPU kernel shows under its autograd node, "GeneratedBackwardFor_")
            spent = e.self_cpu_time_total
        micros[e.name] += spent / steps
        calls[e.name] += 1
    return micros, {name: round(n / steps) for name, n in calls.items()}


def table_rows(label: str, provider: str, micros, calls, top: int) -> list[str]:
    total = sum(micros.values()) or 1.0
    ranked = sorted(micros.items(), key=lambda item: -item[1])
    rows = []
    for name, us in ranked[:top]:
        short = name if len(name) <= 70 else name[:67] + "..."
        rows.append(f"| {label} | {provider} | `{short}` | {calls[name]} | {us:.1f} | "
                    f"{100 * us / total:.0f}% |")  # fmt: skip
    rest = total - sum(us for _, us in ranked[:top])
    if len(ranked) > top:
        rows.append(f"| {label} | {provider} | ({len(ranked) - top} more) | | {rest:.1f} | "
                    f"{100 * rest / total:.0f}% |")  # fmt: skip
    rows.append(f"| {label} | {provider} | **total** | {sum(calls.values())} | {total:.1f} | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--providers",
        nargs="*",
        default=None,
        help="default: the fused backends there are, and plain_step (the floor)",
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--order", type=int, default=1, choices=(1, 2))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="kernels listed per row group")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also list what is live at each step's peak of GPU memory",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, profile nothing")
    args = parser.parse_args(argv)

    available = providers_available(args.device)
    wanted = args.providers or ["plain_step", *[p for p in FUSED if p in available]]
    providers = [p for p in wanted if p in available]
    what = "device time of CUDA kernels" if args.device == "cuda" else "self CPU time of ops"
    # the sizes bench/step.py measures (scaled down on CPU and with --quick)
    sizes = points(SimpleNamespace(configs=args.configs, sweeps=[], quick=args.quick), args.device)
    if args.dry_run:
        print(f"profile: configs {' '.join(args.configs)}, precisions "
              f"{' '.join(args.precisions)}, order {args.order}, providers "
              f"{' '.join(providers)} on {args.device}")  # fmt: skip
        return 0
    lines = [
        f"# Kernels of one training step, {device_label(args.device)}, order {args.order}",
        "",
        f"From `python -m bench.kernel_profile` ({what}, mean of {args.steps} steps after "
        "two warm-up steps). us: microseconds per step; calls: launches per step. Precision "
        "classes as in bench/step.py (fp32: no TF32 anywhere).",
    ]
    memory: list[str] = []
    for precision in args.precisions:
        set_precision(precision)
        lines += ["", f"## {precision}", "", "| config | provider | kernel | calls | us | share |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, cfg in sizes:
            p = make_problem(**{**cfg, "order": args.order}, precision=precision,
                             device=args.device)  # fmt: skip
            for provider in providers:
                if not runs_at(provider, precision):
                    continue  # the default's kernels there
                try:
                    fn = step_fn(provider, p, "step")
                    micros, calls = kernel_times(fn, args.device, args.steps)
                except Exception as exc:  # noqa: BLE001 - e.g. a backend refusing the shape
                    lines.append(f"| {name} | {provider} | error: "
                                 f"{str(exc).splitlines()[0][:80]} | | | |")  # fmt: skip
                    continue
                lines += table_rows(name, provider, micros, calls, args.top)
                print(f"[profile] {name} {precision} {provider}: {sum(micros.values()):.1f} us "
                      "per step", file=sys.stderr, flush=True)  # fmt: skip
                if args.memory and args.device == "cuda":
                    memory += _memory_rows(name, precision, provider, fn)
    if memory:
        lines += ["", "## Live at the peak of GPU memory", "",
                  "From the caching allocator's trace of one step after a warm-up "
                  "(`bench/memory_peak.py`): the largest allocations live at the step's peak.",
                  "", "| config | precision | provider | peak MiB | allocation MiB | made at |",
                  "| --- | --- | --- | ---: | ---: | --- |", *memory]  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


def _memory_rows(name: str, precision: str, provider: str, fn) -> list[str]:
    from bench.memory_peak import peak_breakdown

    try:
        peak, largest = peak_breakdown(fn)
    except Exception as exc:  # noqa: BLE001 - the allocator trace is a private torch API
        return [f"| {name} | {precision} | {provider} | unavailable: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]} | | |"]  # fmt: skip
    rows = [f"| {name} | {precision} | {provider} | {peak:.1f} | | |"]
    rows += [f"| | | | | {mib:.1f} | `{at}` |" for mib, at in largest]
    return rows


if __name__ == "__main__":
    sys.exit(main())
