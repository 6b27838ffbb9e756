"""Render benchmark CSVs (from bench/step.py) as markdown tables and PNG plots.

    python -m bench.report                      # the CSVs in bench/results and its folders
    python -m bench.report --update-readme      # also refresh README's performance section
    python -m bench.report run/NVIDIA_H200.csv --out-dir run

One table per config, sizes, precision and mode: median time per provider, speedup against
eager_autograd and torch_func, host time to issue a step, peak memory, launches, TFLOP/s and
the fraction of the limit (bench/limits.py: the step's FLOPs at the device's peak for that
precision, or its bytes at the memory bandwidth, whichever takes longer; blank for unknown
devices). Errors (e.g. torch_compile) as text. Plots (with matplotlib): step time and host
time against batch, step time against width, one line per provider. Rows of one config name
at different sizes never share a table; among rows of the same point, the newest wins.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench import limits

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
PROVIDER_ORDER = ["eager_autograd", "torch_func", "torch_compile", "jax_jit", "plain_step",
                  "reference", "torch", "triton", "triton_recompute", "triton_persistent",
                  "triton_lean", "triton_lean_persistent", "triton_split_tf32x3",
                  "triton_kmajor_inputs", "triton_resident_backward", "triton_wide_tiles",
                  "triton_jit_launch", "triton_graphed",
                  "triton_compiled", "cuda", "cuda_tiled", "cuda_lean",
                  "cuda_tiled_tc", "cuda_fused", "cuda_fused_gemm", "cuda_bias_gemv",
                  "cuda_bias_operands", "cuda_staged_split", "cuda_splitk_tc",
                  "cuda_cutlass_gemm", "cuda_backward_operands", "cuda_operands_cutlass",
                  "cuda_batched_pass",
                  "cuda_graphed",
                  "cuda_fused_occupancy"]  # (runs before 2026-11-27 run 5)  # fmt: skip

PRECISION_ORDER = ["fp32", "tf32", "bf16", "fp16", ""]
SIZE_COLUMNS = limits.SIZE_COLUMNS
SIZE_LABELS = ["B", "d", "width", "layers", "m", "K", "order"]


def _ordered(providers) -> list[str]:
    """Providers in PROVIDER_ORDER, then any other (a new variant is shown, not dropped)."""
    known = [p for p in PROVIDER_ORDER if p in providers]
    return known + sorted(set(providers) - set(PROVIDER_ORDER))


def _sizes(row: dict) -> tuple[int, ...]:
    """The row's shape (empty for CSVs from before the size columns)."""
    return tuple(int(row[c]) for c in SIZE_COLUMNS) if row.get("batch") else ()


def load(path: Path) -> dict:
    """{(provider, config, sizes, precision, mode, metric): row}, the newest row per key."""
    table = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            key = (row["provider"], row["config"], _sizes(row), row.get("precision", ""),
                   row["mode"], row["metric"])  # fmt: skip
            table[key] = row
    return table


def _num(row: dict | None, col: str = "p50") -> float:
    return float(row[col]) if row and row.get(col) not in (None, "", "nan") else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _groups(table: dict) -> list[tuple[str, tuple, str]]:
    """(config, sizes, precision) of every table, named configs first, then sweeps."""
    found = {(k[1], k[2], k[3]) for k in table}
    return sorted(found, key=lambda g: (_config_key(g[0]), g[1], PRECISION_ORDER.index(g[2])))


def _limit(device: str, group: tuple, mode: str) -> tuple[float, str]:
    _, sizes, precision = group
    if not sizes or not precision:
        return math.nan, ""
    return limits.limit_ms(device, precision, dict(zip(SIZE_COLUMNS, sizes)), mode)


def config_table(table: dict, group: tuple, mode: str, device: str) -> str:
    config, sizes, precision = group

    def get(provider, metric):
        return table.get((provider, config, sizes, precision, mode, metric))

    providers = _ordered({k[0] for k in table if k[1:4] == group})
    ref = [_num(get(base, "time")) for base in ("eager_autograd", "torch_func")]
    limit, _ = _limit(device, group, mode)
    lines = [
        "| provider | median ms | p20-p80 ms | vs eager | vs torch.func | host ms | peak MiB "
        "| launches | TFLOP/s | of limit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in providers:
        t, err = get(p, "time"), get(p, "error")
        if t is None:
            if err is not None:
                lines.append(f"| {p} | fails: {err['unit'][:120]} | | | | | | | | |")
            continue
        p50 = _num(t)
        speed = [_fmt(r / p50) + "x" if not math.isnan(r) else "" for r in ref]
        lines.append(
            f"| {p} | {_fmt(p50)} | {_fmt(_num(t, 'p20'))}-{_fmt(_num(t, 'p80'))} | "
            f"{speed[0]} | {speed[1]} | {_fmt(_num(get(p, 'host')))} | "
            f"{_fmt(_num(get(p, 'memory')), 1)} | {_fmt(_num(get(p, 'launches')), 0)} | "
            f"{_fmt(_num(get(p, 'tflops')), 3)} | {_fmt(limit / p50)} |"
        )
    return "\n".join(lines)


def _heading(group: tuple, mode: str, device: str) -> str:
    config, sizes, precision = group
    parts = [f"**{config}**"] + ([precision] if precision else []) + [mode]
    text = ", ".join(parts)
    if sizes:
        text += ": " + " ".join(f"{k}={v}" for k, v in zip(SIZE_LABELS, sizes))
    limit, bound = _limit(device, group, mode)
    if not math.isnan(limit):
        text += f"; limit {limit:.3f} ms ({bound})"
    return text


def render(path: Path, configs: list[str] | None = None, modes=("step", "forward")) -> str:
    """Markdown tables of one CSV (all its configs, or ``configs``)."""
    table = load(path)
    rows = next(iter(table.values()))
    device = rows["device"]
    try:
        where = path.resolve().relative_to(README.parent)
    except ValueError:
        where = path
    out = [f"### {device}",
           f"torch {rows['torch']}, triton {rows['triton'] or '-'}, commit {rows['commit']}, "
           f"{rows['date']}; `{where}`"]  # fmt: skip
    # the issues' goals are GPU timings: for GPU runs of the named configs
    named = any(k[1] in ("S", "M", "L") for k in table)
    if configs is None and named and not device.startswith("cpu"):
        from bench.goals import goals_table  # (it reads CSVs with this module's load)

        out += ["", "The open issues' goals (`bench/goals.py`):", "", goals_table(table)]
    for group in _groups(table):
        if configs is not None and group[0] not in configs:
            continue
        for mode in modes:
            if any(k[1:4] == group and k[4] == mode for k in table):
                out += ["", _heading(group, mode, device), "",
                        config_table(table, group, mode, device)]  # fmt: skip
    return "\n".join(out)


def _config_key(config: str) -> tuple:
    if "=" not in config:  # the named configs first, smallest first
        return (0, "SML".find(config) if config in ("S", "M", "L") else 9, config, 0.0)
    name, value = config.split("=", 1)
    number = float(value) if re.fullmatch(r"[\d.]+", value) else 0.0
    return (1, 0, name, number)


def plot(path: Path, out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping plots (pip install '.[bench]')",
              file=sys.stderr)  # fmt: skip
        return []
    table = load(path)
    device = next(iter(table.values()))["device"]
    written = []
    for sweep, metrics in (("batch", ("time", "host")), ("width", ("time",))):
        # {precision: {metric: {provider: [(x, ms)]}}}
        series = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        for (provider, config, sizes, precision, mode, metric), row in table.items():
            if config.startswith(f"{sweep}=") and mode == "step" and metric in metrics:
                # the size that ran (the CPU's batch is the GPU's / 32), else the label's
                x = sizes[SIZE_COLUMNS.index(sweep)] if sizes else float(config.split("=")[1])
                series[precision][metric][provider].append((x, _num(row)))
        for precision, by_metric in series.items():
            shown = [m for m in metrics if by_metric[m]]  # older CSVs have no host rows
            fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4),
                                     squeeze=False)  # fmt: skip
            for ax, metric in zip(axes[0], shown):
                lines = by_metric[metric]
                for provider in _ordered(lines):
                    xs, ys = zip(*sorted(lines[provider]))
                    ax.plot(xs, ys, marker="o", label=provider)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel(sweep)
                what = "" if metric == "time" else ", host time to issue"
                ax.set_ylabel(f"training step{what}, median ms")
                ax.set_title(f"{device}, {precision or 'fp32'}: {metric} vs {sweep}")
                ax.legend(fontsize=8)
            fig.tight_layout()
            target = out_dir / f"{path.stem}_{sweep}_{precision or 'fp32'}.png"
            fig.savefig(target, dpi=120)
            plt.close(fig)
            written.append(target)
    return written


def update_readme(markdown: str, readme: Path = README) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: no {BEGIN} ... {END} section to update")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{markdown}\n{END}{tail}")


def committed_csvs() -> list[Path]:
    """The step CSVs in bench/results and its folders (not tmp/, not the paper's): GPUs first."""
    paths = [*RESULTS.glob("*.csv"), *RESULTS.glob("*/*.csv")]
    paths = [p for p in paths if not p.name.startswith("paper_") and p.parent.name != "tmp"]
    return sorted(paths, key=lambda p: (p.name.startswith("cpu-"), str(p)))


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="*", type=Path, help="default: bench/results/**.csv")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    paths = args.csv or committed_csvs()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for path in paths:
        sections.append(render(path))
        for png in plot(path, args.out_dir):
            sections.append(f"![{png.stem}]({png.name})")
    markdown = "\n\n".join(sections)
    (args.out_dir / "BENCHMARKS.md").write_text(markdown + "\n")
    if args.update_readme:  # the named configs' training step; the rest in BENCHMARKS.md
        summary = [render(path, configs=["S", "M", "L"], modes=("step",)) for path in paths]
        link = "All sweeps, forward-only timings and plots: [bench/results/BENCHMARKS.md]"
        update_readme("\n\n".join(summary + [link + "(bench/results/BENCHMARKS.md)."]))
    print(markdown)
    return markdown


if __name__ == "__main__":
    main()
