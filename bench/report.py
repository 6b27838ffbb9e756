"""Render benchmark CSVs (bench/results/<device>.csv) as markdown tables and PNG plots.

    python bench/report.py                         # every CSV in bench/results
    python bench/report.py --update-readme         # also refresh README's performance section

For each device and config: median time per provider, speedup against eager_autograd and
torch_func, peak memory, launches, FLOP efficiency; errors (e.g. torch_compile) as text.
Plots (with matplotlib): step time against batch and against width, one line per provider.
When a CSV holds several runs of the same point, the newest row wins.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"
PROVIDER_ORDER = ["eager_autograd", "torch_func", "torch_compile", "jax_jit", "plain_step",
                  "reference", "torch", "triton", "cuda"]  # fmt: skip


def load(path: Path) -> dict:
    """{(provider, config, mode, metric): row}, the newest row per key."""
    table = {}
    with path.open() as fh:
        for row in csv.DictReader(fh):
            table[(row["provider"], row["config"], row["mode"], row["metric"])] = row
    return table


def _num(row: dict | None, col: str = "p50") -> float:
    return float(row[col]) if row and row.get(col) not in (None, "", "nan") else math.nan


def _fmt(value: float, digits: int = 2) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def config_table(table: dict, config: str, mode: str = "step") -> str:
    providers = [p for p in PROVIDER_ORDER if any(k[0] == p and k[1] == config for k in table)]
    ref = {base: _num(table.get((base, config, mode, "time"))) for base in
           ("eager_autograd", "torch_func")}  # fmt: skip
    lines = [
        "| provider | median ms | p20-p80 ms | vs eager | vs torch.func | peak MiB | launches "
        "| TFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in providers:
        t = table.get((p, config, mode, "time"))
        err = table.get((p, config, mode, "error"))
        if t is None:
            if err is not None:
                lines.append(f"| {p} | fails: {err['unit'][:120]} | | | | | | |")
            continue
        p50 = _num(t)
        speed = [_fmt(r / p50) + "x" if not math.isnan(r) else "" for r in ref.values()]
        lines.append(
            f"| {p} | {_fmt(p50)} | {_fmt(_num(t, 'p20'))}-{_fmt(_num(t, 'p80'))} | "
            f"{speed[0]} | {speed[1]} | {_fmt(_num(table.get((p, config, mode, 'memory'))), 1)} | "
            f"{_fmt(_num(table.get((p, config, mode, 'launches'))), 0)} | "
            f"{_fmt(_num(table.get((p, config, mode, 'tflops'))), 3)} |"
        )
    return "\n".join(lines)


def render(path: Path, configs: list[str] | None = None, modes=("step", "forward")) -> str:
    """Markdown tables of one CSV (all its configs, or ``configs``)."""
    table = load(path)
    rows = next(iter(table.values()))
    found = sorted({k[1] for k in table}, key=_config_key)
    configs = [c for c in found if configs is None or c in configs]
    try:
        where = path.resolve().relative_to(README.parent)
    except ValueError:
        where = path
    out = [f"### {rows['device']}",
           f"torch {rows['torch']}, triton {rows['triton'] or '-'}, commit {rows['commit']}, "
           f"{rows['date']}; `{where}`"]  # fmt: skip
    for config in configs:
        for mode in modes:
            if any(k[1] == config and k[2] == mode for k in table):
                out += ["", f"**{config}**, {mode}", "", config_table(table, config, mode)]
    return "\n".join(out)


def _config_key(config: str) -> tuple:
    if "=" not in config:  # the named configs first, smallest first
        return (0, "SML".find(config) if config in ("S", "M", "L") else 9, config)
    name, value = config.split("=", 1)
    return (1, name, float(value) if re.fullmatch(r"[\d.]+", value) else value)


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
    written = []
    for sweep in ("batch", "width"):
        series = defaultdict(list)
        for (provider, config, mode, metric), row in table.items():
            if config.startswith(f"{sweep}=") and mode == "step" and metric == "time":
                series[provider].append((float(config.split("=")[1]), _num(row)))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for provider in [p for p in PROVIDER_ORDER if p in series]:
            xs, ys = zip(*sorted(series[provider]))
            ax.plot(xs, ys, marker="o", label=provider)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(sweep)
        ax.set_ylabel("training step, median ms")
        ax.set_title(f"{next(iter(table.values()))['device']}: step time vs {sweep}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        target = out_dir / f"{path.stem}_{sweep}.png"
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


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", nargs="*", type=Path, help="default: bench/results/*.csv")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)
    paths = args.csv or sorted(p for p in RESULTS.glob("*.csv") if not p.name.startswith("paper_"))
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
