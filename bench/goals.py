"""The open speed issues' goals, checked against one benchmark CSV (bench/step.py rows).

    python -m bench.goals run/NVIDIA_H200.csv

Each goal names a metric of the named configs S, M and L (fp32-accurate rows unless it says
bf16), a threshold, and the providers that may meet it: the backend's default (what users
get: ``triton``, ``cuda``) and its variants (the best of them is shown beside it). A goal with
no row to judge it by says "not measured". The goals are those of issues #18 (Triton at
tensor-core speed) and #19 (the CUDA backend rebuilt); ``bench/report.py`` puts this table
at the top of each CSV's section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report import _num, load

TRITON = ("triton", "triton_recompute", "triton_persistent", "triton_lean",
          "triton_lean_persistent", "triton_jit_launch", "triton_graphed",
          "triton_compiled", "triton_split_tf32x3", "triton_kmajor_inputs",
          "triton_resident_backward", "triton_wide_tiles")  # fmt: skip
# (cuda_fused_occupancy: the default's settings, a provider of its own before 2026-11-27 run 5)
CUDA = ("cuda", "cuda_tiled", "cuda_tiled_tc", "cuda_fused", "cuda_fused_gemm",
        "cuda_bias_gemv", "cuda_bias_operands", "cuda_staged_split", "cuda_splitk_tc",
        "cuda_cutlass_gemm", "cuda_backward_operands", "cuda_operands_cutlass",
        "cuda_batched_pass", "cuda_lean",
        "cuda_graphed",
        "cuda_fused_occupancy")  # fmt: skip


@dataclass(frozen=True)
class Goal:
    issue: int
    text: str
    config: str
    precision: str
    mode: str
    metric: str  # time (ms), memory (MiB), launches
    providers: tuple[str, ...]  # the default first
    # threshold(value): the goal's bound, from other rows where it depends on them
    # (value(provider, metric), nan where there is no row); a provider meets the goal when
    # its value is at most the bound
    threshold: Callable[[Callable[[str, str], float]], float]
    ratio_of: str | None = None  # show value / this provider's (memory: vs eager)
    beats: str | None = None  # and faster than this provider, where it has a row


def _fixed(bound: float):
    return lambda value: bound


def _eager_fraction(fraction: float, metric: str):
    return lambda value: fraction * value("eager_autograd", metric)


def _fastest(value, providers) -> float:
    times = [value(p, "time") for p in providers]
    return min((t for t in times if not math.isnan(t)), default=math.nan)


def _fastest_fused(of: float):
    return lambda value: of * _fastest(value, TRITON + CUDA)


def _fastest_triton(value) -> float:
    return _fastest(value, TRITON)


GOALS = [
    Goal(18, "S step <= eager / 5", "S", "fp32", "step", "time", TRITON,
         _eager_fraction(0.2, "time")),
    Goal(18, "M step <= 1.0 ms", "M", "fp32", "step", "time", TRITON, _fixed(1.0)),
    Goal(18, "M forward <= 0.35 ms", "M", "fp32", "forward", "time", ("triton",),
         _fixed(0.35)),
    Goal(18, "L step <= 3.0 ms and faster than jax_jit", "L", "fp32", "step", "time", TRITON,
         _fixed(3.0), beats="jax_jit"),
    Goal(18, "M step in bf16 <= 0.35 ms", "M", "bf16", "step", "time", TRITON, _fixed(0.35)),
    *[Goal(18, f"{c} peak memory <= 0.4 x eager", c, "fp32", "step", "memory", TRITON,
           _eager_fraction(0.4, "memory"), "eager_autograd") for c in "SML"],
    *[Goal(18, f"{c} launches per step <= 6", c, "fp32", "step", "launches", TRITON,
           _fixed(6)) for c in "SM"],
    *[Goal(19, f"{c} {p} step within 1.25 x the fastest fused backend", c, p, "step", "time",
           CUDA, _fastest_fused(1.25)) for c, p in
      (("S", "fp32"), ("M", "fp32"), ("L", "fp32"), ("M", "bf16"))],
    Goal(19, "S (width 64) step faster than the Triton backend", "S", "fp32", "step", "time",
         CUDA, _fastest_triton),
    *[Goal(19, f"{c} peak memory <= 0.4 x eager", c, "fp32", "step", "memory", CUDA,
           _eager_fraction(0.4, "memory"), "eager_autograd") for c in "SML"],
]  # fmt: skip

UNITS = {"time": "ms", "memory": "MiB", "launches": ""}


def _values(table: dict, goal: Goal) -> Callable[[str, str], float]:
    # (CSVs from before the precision column hold fp32-accurate rows only)
    precisions = (goal.precision, "") if goal.precision == "fp32" else (goal.precision,)
    rows = {(k[0], k[5]): row for k, row in table.items()
            if k[1] == goal.config and k[3] in precisions and k[4] == goal.mode}  # fmt: skip
    return lambda provider, metric: _num(rows.get((provider, metric)))


def _shown(value: float, metric: str, base: float) -> str:
    text = (f"{value:.3g} ms" if metric == "time" else f"{value:.0f} {UNITS[metric]}").strip()
    return text + (f" ({value / base:.2f}x)" if not math.isnan(base) else "")


def check(table: dict, goal: Goal) -> tuple[str, str, str, str]:
    """(threshold, the default provider's value, the best variant's, verdict) of one goal."""
    value = _values(table, goal)
    limit, note = goal.threshold(value), ""
    if goal.beats:  # at the same precision: JAX's fp32 rows are fp32-accurate ("highest")
        rival = value(goal.beats, goal.metric)
        if math.isnan(rival):
            note = f" (no {goal.beats} row)"
        elif rival < limit:
            limit, note = rival, f" ({goal.beats})"
    base = value(goal.ratio_of, goal.metric) if goal.ratio_of else math.nan
    measured = {p: value(p, goal.metric) for p in goal.providers}
    measured = {p: v for p, v in measured.items() if not math.isnan(v)}
    if math.isnan(limit) or not measured:
        return "", "", "", "not measured"
    default = goal.providers[0]
    own = measured.get(default, math.nan)
    best = min((p for p in measured if p != default), key=measured.get, default=None)
    met = [p for p, v in measured.items() if v <= limit]
    if default in met:
        verdict = "met"
    elif met:
        verdict = "met by " + ", ".join(met) + " only"
    else:
        verdict = "missed"
    return (
        _shown(limit, goal.metric, base) + note,
        _shown(own, goal.metric, base) if default in measured else "no row",
        f"{best}: {_shown(measured[best], goal.metric, base)}" if best else "",
        verdict,
    )


def goals_table(table: dict) -> str:
    """Markdown: one line per goal."""
    lines = ["| issue | goal | threshold | default (triton / cuda) | best variant | verdict |",
             "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for goal in GOALS:
        cells = check(table, goal)
        lines.append(f"| #{goal.issue} | {goal.text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path)
    args = parser.parse_args(argv)
    text = goals_table(load(args.csv))
    print(text)
    return text


if __name__ == "__main__":
    main()
