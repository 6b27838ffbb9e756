"""Why a step's kernels take their time: Nsight Compute's hardware counters, kernel by kernel.

    python -m bench.kernel_counters                   # config M, fp32 and bf16, under ncu
    python -m bench.kernel_counters --configs M S --precisions fp32 --providers triton

``bench/kernel_profile.py`` says which kernels take a step's time; this says why. For each
kernel of one training step: its time, its throughput against the SMs' and the memory's peaks,
achieved and theoretical occupancy, registers, the busiest pipes (tensor, FMA, ALU, LSU...),
the reasons its warps stalled, and its shared-memory bank conflicts. Four GPU runs had only
times; the kernels at 9 TFLOP/s (the fp32 CUDA fused kernels, the Triton backward) need the
reason before the next rewrite.

Each point (config and precision, in the order given) runs in a process of its own under
``ncu`` (``--clock-control none``: the card's clocks are left as they are), which profiles
one step of each provider after warm-up steps (compiles, autotuning), between
cudaProfilerStart and cudaProfilerStop. A marker kernel
(``torch.cuda._sleep``) before each provider's step tells the providers' kernels apart. The
report is read back as CSV (``ncu --import ... --csv --page raw``); only the sections'
metrics are asked for, so no metric name here can make ncu refuse the run.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
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

# the providers whose kernels need a reason: the two fused backends' defaults (the CUDA one:
# #19's fused kernels, dW by cuBLAS, high occupancy)
DEFAULT_PROVIDERS = ("triton", "cuda")
SECTIONS = ("SpeedOfLight", "LaunchStats", "Occupancy", "WarpStateStats", "SchedulerStats",
            "ComputeWorkloadAnalysis", "MemoryWorkloadAnalysis_Tables")  # fmt: skip
MIN_SECONDS = 10  # a point's run takes at least this long (imports, warm-up)
MARKER = "spin_kernel"  # torch.cuda._sleep's kernel
TIME_UNITS = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
              "second": 1e6, "s": 1e6}  # fmt: skip
# the columns of a kernel's row: (label, metric)
COLUMNS = (
    ("SM %", "sm__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("memory %", "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
    ("DRAM %", "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    ("issue %", "smsp__issue_active.avg.pct_of_peak_sustained_active"),
    ("achieved occupancy %", "sm__warps_active.avg.pct_of_peak_sustained_active"),
    ("theoretical occupancy %", "sm__maximum_warps_per_active_cycle_pct"),
    ("registers", "launch__registers_per_thread"),
    ("shared B", "launch__shared_mem_per_block_dynamic"),
    ("grid", "launch__grid_size"),
)
# the busiest pipes: cycles active (or instructions issued) against each pipe's peak
PIPES = (
    re.compile(
        r"^sm__pipe_([a-z0-9_]+?)_cycles_active\.(?:avg|sum)\.pct_of_peak_sustained_active$"
    ),
    re.compile(
        r"^sm__inst_executed_pipe_([a-z0-9_]+?)\.(?:avg|sum)\.pct_of_peak_sustained_active$"
    ),
)
# stall reasons: % of the warps' active cycles, or else stall cycles per issued instruction
STALLS = (
    re.compile(r"^smsp__warp_issue_stalled_([a-z_]+?)_per_warp_active\.pct$"),
    re.compile(r"^smsp__average_warps?_issue_stalled_([a-z_]+?)_per_issue_active\.ratio$"),
    re.compile(r"^smsp__average_warp_latency_issue_stalled_([a-z_]+?)\.ratio$"),
)
STALL_UNITS = ("% of active warp cycles", "cycles per issued instruction",
               "cycles of warp latency")  # fmt: skip
SHARED_LD = ("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum",
             "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum")  # fmt: skip
SHARED_ST = ("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum",
             "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum")  # fmt: skip


def find_ncu() -> str | None:
    """ncu on the PATH, or in a CUDA toolkit or an Nsight Compute install."""
    found = shutil.which("ncu")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/local/cuda*/bin/ncu"))
    candidates += sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))
    return candidates[-1] if candidates else None


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def read_raw_csv(text: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The kernels' rows (metric name -> value) and the units of ``ncu --csv --page raw``:
    a header, a row of units (empty ID), then a row per kernel in launch order."""
    lines = [line for line in text.splitlines() if line.startswith('"')]  # not ==PROF== lines
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    if not table:
        return [], {}
    header, units, rows = table[0], {}, []
    for values in table[1:]:
        row = dict(zip(header, values))
        if not row.get("ID"):
            units = row
        else:
            rows.append(row)
    return rows, units


def kernel_name(row: dict[str, str]) -> str:
    for key in ("Kernel Name", "Function Name", "Name"):
        if row.get(key):
            return row[key]
    return "?"


def by_provider(rows: list[dict[str, str]], order: list[str]) -> dict[str, list[dict]]:
    """The kernels of each provider's profiled step: those after its marker, up to the next."""
    out: dict[str, list[dict]] = {provider: [] for provider in order}
    current = -1
    for row in rows:
        if MARKER in kernel_name(row):
            current += 1
        elif 0 <= current < len(order):
            out[order[current]].append(row)
    return out


def _matches(row: dict[str, str], pattern: re.Pattern) -> list[tuple[str, float]]:
    found = []
    for metric, value in row.items():
        match = pattern.match(metric)
        number = _number(value) if match else None
        if number is not None:
            found.append((match.group(1), number))
    return found


def top_pipes(row: dict[str, str]) -> list[tuple[str, float]]:
    """The pipes' utilisation, largest first: cycles active, and instructions issued (as
    "name (inst)") for the pipes ncu counts that way."""
    cycles, issued = (_matches(row, pattern) for pattern in PIPES)
    found = cycles + [(f"{name} (inst)", value) for name, value in issued]
    return sorted(found, key=lambda item: -item[1])


def top_stalls(row: dict[str, str]) -> tuple[list[tuple[str, float]], int]:
    """The stall reasons of the first family ncu reported, largest first, and the family's
    index (-1: none). "selected" is no stall, and the sampled "_not_issued" variants repeat
    their reason."""
    for index, pattern in enumerate(STALLS):
        found = [(name, value) for name, value in _matches(row, pattern)
                 if name != "selected" and not name.endswith("not_issued")]  # fmt: skip
        if found:
            return sorted(found, key=lambda item: -item[1]), index
    return [], -1


OCCUPANCY_LIMIT = re.compile(r"^launch__occupancy_limit_([a-z_]+)$")


def _occupancy_limit(row: dict[str, str]) -> str:
    """What bounds the blocks per SM (registers, shared_mem, warps, blocks...): the least of
    ncu's per-resource limits, with that many blocks."""
    limits = _matches(row, OCCUPANCY_LIMIT)
    if not limits:
        return ""
    least = min(value for _, value in limits)
    return ", ".join(name for name, value in limits if value == least) + f" {least:.0f}"


def _conflicts(row: dict[str, str]) -> str:
    """Shared-memory bank conflicts as a share of the wavefronts, loads and stores."""
    parts = []
    for label, (conflicts, wavefronts) in (("ld", SHARED_LD), ("st", SHARED_ST)):
        c, w = _number(row.get(conflicts, "")), _number(row.get(wavefronts, ""))
        if c is not None and w:
            parts.append(f"{label} {100 * c / w:.0f}%")
    return ", ".join(parts)


def kernel_rows(label: str, provider: str, kernels: list[dict], units: dict[str, str],
                top: int) -> tuple[list[str], set[int]]:  # fmt: skip
    """Markdown rows of a provider's kernels, longest first, and the stall families used."""
    scale = TIME_UNITS.get(units.get("gpu__time_duration.sum", "nsecond"), 1e-3)
    timed = [(_number(k.get("gpu__time_duration.sum", "")) or 0.0) * scale for k in kernels]
    ranked = sorted(zip(timed, kernels), key=lambda item: -item[0])
    rows, families = [], set()
    for us, kernel in ranked[:top]:
        name = kernel_name(kernel)
        name = name if len(name) <= 60 else name[:57] + "..."
        cells = [f"{_number(kernel.get(metric, '')):.0f}"
                 if _number(kernel.get(metric, "")) is not None else ""
                 for _, metric in COLUMNS]  # fmt: skip
        pipes, (stalls, family) = top_pipes(kernel), top_stalls(kernel)
        families.add(family)
        rows.append(f"| {label} | {provider} | `{name}` | {us:.1f} | " + " | ".join(cells)
                    + f" | {_occupancy_limit(kernel)}"
                    + f" | {', '.join(f'{p} {v:.0f}' for p, v in pipes[:3])}"
                    + f" | {', '.join(f'{s} {v:.1f}' for s, v in stalls[:4])}"
                    + f" | {_conflicts(kernel)} |")  # fmt: skip
    if len(ranked) > top:
        rest = sum(us for us, _ in ranked[top:])
        rows.append(f"| {label} | {provider} | ({len(ranked) - top} more) | {rest:.1f} |"
                    + " |" * (len(COLUMNS) + 4))  # fmt: skip
    return rows, families


def table(label: str, csv_text: str, order: list[str], top: int) -> list[str]:
    """The markdown table of one ncu report, or what ncu said where it holds no kernels."""
    rows, units = read_raw_csv(csv_text)
    kernels = by_provider(rows, order)
    header = ["config", "provider", "kernel", "us", *(c for c, _ in COLUMNS),
              "blocks per SM bound by", "busiest pipes %",
              "top stalls", "shared bank conflicts"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    families: set[int] = set()
    for provider in order:
        provider_rows, used = kernel_rows(label, provider, kernels[provider], units, top)
        lines += provider_rows
        families |= used
    if not any(kernels.values()):
        return [f"No kernels in the report ({len(rows)} rows); ncu said:", "",
                "```", *csv_text.splitlines()[:15], "```"]  # fmt: skip
    notes = [STALL_UNITS[f] for f in sorted(families) if f >= 0]
    return lines + ["", f"Stalls in {' / '.join(dict.fromkeys(notes)) or 'no stall metrics'}."]


def inner(args) -> int:
    """Under ncu: warm each provider up, then profile one step of it after a marker kernel.
    Writes the providers profiled, in order, to --order-file as it goes."""
    on_gpu = args.device == "cuda"
    set_precision(args.precision)
    sizes = dict(points(SimpleNamespace(configs=[args.config], sweeps=[], quick=args.quick),
                        args.device)[0][1])  # fmt: skip
    problem = make_problem(**sizes, precision=args.precision, device=args.device)
    available = providers_available(args.device)
    order: list[str] = []
    for provider in args.providers:
        if provider not in available:
            print(f"[counters] {provider}: not available here", file=sys.stderr, flush=True)
            continue
        if not runs_at(provider, args.precision):
            continue  # the kernels of the provider it varies
        try:
            fn = step_fn(provider, problem, "step")
            for _ in range(args.warmup):
                fn()
            if on_gpu:
                torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a provider refusing the shape, say
            _say(provider, exc)
            continue
        # from its marker on, the kernels are this provider's, even if its step then fails
        order.append(provider)
        if args.order_file is not None:
            args.order_file.write_text(json.dumps(order))
        try:
            if on_gpu:
                torch.cuda.profiler.start()
                torch.cuda._sleep(1000)  # the marker
            fn()
            if on_gpu:
                torch.cuda.synchronize()
            _say(provider, None)
        except Exception as exc:  # noqa: BLE001 - recorded; the next provider goes on
            _say(provider, exc)
        finally:
            if on_gpu:
                torch.cuda.profiler.stop()
    return 0


def _say(provider: str, error: Exception | None) -> None:
    what = "profiled" if error is None else f"{type(error).__name__}: {error}"
    print(f"[counters] {provider}: {what}"[:200], file=sys.stderr, flush=True)


def ncu_command(ncu: str, report: Path, inner_args: list[str]) -> list[str]:
    sections = [arg for s in SECTIONS for arg in ("--section", s)]
    return [ncu, "--profile-from-start", "off", "--clock-control", "none", *sections,
            "--export", str(report), "--force-overwrite",
            sys.executable, "-m", "bench.kernel_counters", "--inner", *inner_args]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["M"], choices=list(CONFIGS),
                        help="each in every precision, in the order given")  # fmt: skip
    parser.add_argument("--config", default="M", choices=list(CONFIGS),
                        help="(--inner) the one config of this process")  # fmt: skip
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=list(PRECISIONS))  # fmt: skip
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="(--inner) the one precision of this process")  # fmt: skip
    parser.add_argument("--providers", nargs="+", default=list(DEFAULT_PROVIDERS))
    parser.add_argument("--warmup", type=int, default=2, help="steps before the profiled one")
    parser.add_argument("--top", type=int, default=6, help="kernels listed per provider")
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="for all points together: each takes what is left")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=Path(".gpu_work/counters"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--order-file", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    if args.inner:
        return inner(args)
    ncu = find_ncu()
    if args.dry_run:
        print(f"counters: configs {' '.join(args.configs)}, {' '.join(args.precisions)}, "
              f"providers {' '.join(args.providers)}, sections {' '.join(SECTIONS)}; ncu: "
              f"{ncu or 'not found here'}")  # fmt: skip
        return 0
    if ncu is None:
        print("kernel_counters: ncu (Nsight Compute) not found", file=sys.stderr)
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Hardware counters of one training step: {device_label(args.device)}",
        "",
        "From `python -m bench.kernel_counters` (Nsight Compute, clocks as found; one "
        "step per provider after warm-up). us: the kernel's time under the profiler. "
        "SM %, memory %, DRAM %: throughput against the peak; issue %: issue slots used; "
        "occupancy: warps against the SM's maximum; shared B: dynamic shared memory a block; "
        "blocks per SM bound by: the resource that limits them, and to how many.",
    ]
    status, deadline = 0, time.monotonic() + args.seconds
    # in order of importance: each (config, precision) takes the time left
    for config, precision in [(c, p) for c in args.configs for p in args.precisions]:
        left = deadline - time.monotonic()
        if left < MIN_SECONDS:
            lines += ["", f"## {config} {precision}: no time left"]
            status = 1
        else:
            found = profile_point(args, ncu, config, precision, left)
            lines += ["", *found]
            status |= 0 if any(line.startswith("| ") for line in found) else 1
        text = "\n".join(lines) + "\n"
        if args.out is not None:  # after each point: a time limit keeps what was done
            args.out.write_text(text)
    print(text)
    return status


def profile_point(args, ncu: str, config: str, precision: str, seconds: float) -> list[str]:
    """One point's section: ncu runs the inner process, its report is read back as CSV."""
    name = f"{config}_{precision}"
    report, order_file = args.work_dir / name, args.work_dir / f"{name}.json"
    order_file.unlink(missing_ok=True)
    inner_args = ["--config", config, "--precision", precision, "--warmup", str(args.warmup),
                  "--device", args.device, "--order-file", str(order_file), "--providers",
                  *args.providers, *(["--quick"] if args.quick else [])]  # fmt: skip
    log = args.work_dir / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as out:  # a process group: the inner process goes too on a time-out
        process = subprocess.Popen(ncu_command(ncu, report, inner_args), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            tail = log.read_text().splitlines()[-10:]
            return [f"## {config} {precision}: out of time after {seconds:.0f} s (ncu writes no "
                    "report then)", "", "```", *tail, "```"]  # fmt: skip
        finally:  # also when this process is stopped (SIGTERM: see main)
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    order = json.loads(order_file.read_text()) if order_file.exists() else []
    imported = subprocess.run([ncu, "--import", f"{report}.ncu-rep", "--csv", "--page", "raw",
                               "--print-units", "base"], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    csv_text = imported.stdout or log.read_text()[-3000:]
    (args.work_dir / f"{name}.csv").write_text(csv_text)
    print(f"[counters] {config} {precision}: {', '.join(order) or 'nothing'} profiled",
          file=sys.stderr, flush=True)  # fmt: skip
    return [f"## {config} {precision} ({time.monotonic() - started:.0f} s)", "",
            *table(config, csv_text, order, args.top)]  # fmt: skip


if __name__ == "__main__":
    # a time limit's SIGTERM unwinds, so ncu's process group is killed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
