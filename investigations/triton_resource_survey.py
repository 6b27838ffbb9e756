"""Registers, spills and shared memory of the Triton kernels over launch configs, from
ahead-of-time compiles (no GPU): clues for choosing defaults, not speed.

    python investigations/triton_resource_survey.py bench/results/triton_resources_sm90.md
    python investigations/triton_resource_survey.py --tensor-cores \
        bench/results/triton_tensor_cores.md
    python investigations/triton_resource_survey.py --persistent out.md   # a table to paste
    python investigations/triton_resource_survey.py --persistent --spans out.md

Config M on sm_90 over dot precisions, rows per program, warps and K chunks; then large
tiles over warps, and many directions over directions per pass. ``--tensor-cores``: the
autotuner's candidates of configs S, M, M order 2 and L in fp32 and bf16, on sm_80 and sm_90,
with their tensor-core (HMMA: mma.sync, HGMMA: wgmma) and FMA instruction counts in the SASS.
``--persistent``: the persistent kernels (``persistent_backward.py``, the persistent forward)
of those configs, static and 64-row tensor-core launches, on ``--arch``; with ``--spans`` the
backwards on one row tile a span and on their tuner twins' spans.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402

from sobolev_kernels.triton.aot import SHARED_LIMIT, compile_step, resources, sass  # noqa: E402
from sobolev_kernels.triton.choices import _with_dw_tiles  # noqa: E402
from sobolev_kernels.triton.layout import CHUNK, TILE_PER_THREAD, Layout  # noqa: E402

# config M (bench/step.py) in fp32 under each dot precision and in bf16, over launch configs
SURVEY_WIDTHS, SURVEY_K = (16, 128, 128, 128, 8), 2
SURVEY = [("fp32", "ieee"), ("fp32", "tf32"), ("fp32", "tf32x3"), ("bf16", "ieee")]
SURVEY_LAUNCH = [(16, 4), (16, 8), (32, 8)]
SURVEY_CHUNKS = (CHUNK, CHUNK // 2)  # the dots' K step: the static one, the tuner's other
# tiles too large for 4 (width <= 64) or 8 warps at MIN_PAD rows: (widths, K, order, dtype)
WARPS_SURVEY = [
    ((16, 64, 64, 64, 8), 8, 1, "fp32"),
    ((2, 64, 64, 64, 1), 4, 2, "fp32"),
    ((16, 128, 128, 128, 8), 2, 2, "fp32"),
    ((16, 128, 128, 128, 8), 8, 1, "bf16"),
    ((16, 128, 128, 8), 16, 1, "fp32"),
    ((64, 256, 256, 256, 256, 256, 16), 4, 1, "bf16"),
]
# more directions than fit one pass (and config M order 2 and 1 for the pass it keeps)
GROUP_SURVEY = [
    ((16, 128, 128, 128, 8), 2, 1, "fp32"),
    ((16, 128, 128, 128, 8), 8, 1, "fp32"),
    ((16, 128, 128, 128, 8), 4, 2, "bf16"),
    ((16, 128, 128, 8), 32, 1, "bf16"),
]


def survey(path: Path, arch: int = 90) -> None:
    """The three tables, as markdown at ``path``."""
    layout = Layout(SURVEY_WIDTHS, SURVEY_K, 1)
    lines = [
        f"# Triton kernel resources, config M (widths {SURVEY_WIDTHS}, K={SURVEY_K}), "
        f"sm_{arch}, triton {triton.__version__}",
        "",
        "From `python investigations/triton_resource_survey.py` (ahead-of-time compiles, no "
        "GPU). REG: registers per thread (255 is the cap); STACK: bytes of local memory per "
        "thread (spills); 32 registers with a large stack is ptxas giving up on register "
        "allocation. chunk: the dots' K step (inputs reloaded from memory in K loops).",
        "",
        "| dtype | precision | chunk | rows | warps | kernel | REG | STACK | shared | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (dtype, precision), chunk, (rows, warps) in itertools.product(
        SURVEY, SURVEY_CHUNKS, SURVEY_LAUNCH
    ):
        compiles = _compiles(layout, rows, warps, dtype, precision, chunk, arch)
        _table_rows(lines, f"| {dtype} | {precision} | {chunk} | {rows} | {warps} | ", compiles)
    lines += [
        "",
        "## Warps for large tiles",
        "",
        "Where even 16 rows (the least `tl.dot` takes) overflow the register budget of 4 warps "
        f"(width <= 64) or 8: many directions, order 2. Static rows, K chunk {CHUNK}, ieee "
        "dots; `*` marks `Layout.num_warps()`, the static choice (16 warps is an autotuner "
        "candidate only).",
        "",
        "| widths | K | order | dtype | rows | warps | kernel | REG | STACK | shared | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for widths, k, order, dtype in WARPS_SURVEY:
        big = Layout(widths, k, order)
        rows = big.rows(4 if dtype == "fp32" else 2, SHARED_LIMIT[arch])
        for warps in (4, 8, 16) if max(big.pads) <= 64 else (8, 16):
            mark = "*" if warps == big.num_warps() else ""
            compiles = _compiles(big, rows, warps, dtype, "ieee", CHUNK, arch)
            _table_rows(lines, f"| {widths} | {k} | {order} | {dtype} | {rows} | {warps}{mark} | ",
                        compiles)  # fmt: skip
    lines += [
        "",
        "## Direction groups",
        "",
        "Tangent streams run GROUP directions per pass over a layer's weights. Static rows and "
        f"warps, K chunk {CHUNK}, ieee dots; `*` marks `Layout.group()`, the static choice "
        f"(tiles of at most {TILE_PER_THREAD} elements per thread; the tuner also tries "
        "all K in one pass, or else half as many).",
        "",
        "| widths | K | order | dtype | rows | warps | group | kernel | REG | STACK | shared "
        "| compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for widths, k, order, dtype in WARPS_SURVEY + GROUP_SURVEY:
        big = Layout(widths, k, order)
        rows, warps = big.rows(4 if dtype == "fp32" else 2, SHARED_LIMIT[arch]), big.num_warps()
        group = big.kp
        while group >= 1:
            mark = "*" if group == big.group(rows, warps) else ""
            compiles = _compiles(big, rows, warps, dtype, "ieee", CHUNK, arch, group)
            prefix = f"| {widths} | {k} | {order} | {dtype} | {rows} | {warps} | {group}{mark} | "
            _table_rows(lines, prefix, compiles)
            group //= 2
    path.write_text("\n".join(lines) + "\n")


# the benchmark's configs (bench/step.py): (name, widths, K, order)
TC_CONFIGS = [
    ("S", (2, 64, 64, 64, 1), 1, 1),
    ("M", (16, 128, 128, 128, 8), 2, 1),
    ("M order 2", (16, 128, 128, 128, 8), 2, 2),
    ("L", (64, 256, 256, 256, 256, 256, 16), 4, 1),
]


def tensor_core_survey(path: Path) -> None:
    """Every candidate of the autotuner (Layout.launch_configs) for the configs above, fp32
    (exact "ieee" dots, the static choice, and "tf32x3") and bf16, on sm_80 and sm_90."""
    lines = [
        f"# Triton kernels on tensor cores: the autotuner's candidates, triton "
        f"{triton.__version__}",
        "",
        "From `python investigations/triton_resource_survey.py --tensor-cores` (ahead-of-time "
        "compiles, no GPU: clues, not speed). Instructions counted in the SASS: HMMA "
        "(mma.sync tensor-core products), HGMMA (wgmma, sm_90), FFMA (fp32 fused multiply-"
        "adds). REG per thread (255: the cap), STACK bytes per thread (spills). The first row "
        "of each config and dtype is the static choice (no autotuning).",
        "",
        "| config | dtype | arch | rows | warps | chunk | group | precision | cols | kernel "
        "| REG | STACK | HMMA | HGMMA | FFMA |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
        "| --- |",
    ]
    for (name, widths, k, order), dtype, arch in itertools.product(
        TC_CONFIGS, ("fp32", "bf16"), (80, 90)
    ):
        layout = Layout(widths, k, order)
        size = 4 if dtype == "fp32" else 2
        if arch == 80 and name != "M":
            continue  # sm_80 (no wgmma) for config M only: the compiles take long
        tensor_core = "tf32x3" if dtype == "fp32" else "ieee"
        configs = layout.launch_configs(size, SHARED_LIMIT[arch], "ieee", tensor_core)
        picked = [configs[0]] + [c for c in configs[1:] if c.precision == tensor_core or
                                 (dtype == "bf16" and c.cols)]  # fmt: skip
        for c in dict.fromkeys(picked):
            prefix = (f"| {name} | {dtype} | sm_{arch} | {c.rows} | {c.warps} | {c.chunk} | "
                      f"{c.group} | {c.precision} | {c.cols or 'all'} | ")  # fmt: skip
            try:
                compiles = compile_step(layout, c.rows, c.warps, 0, c.precision, c.chunk, dtype,
                                        arch, c.group, c.cols)  # fmt: skip
                for kernel, compiled in compiles:
                    res, code = resources(compiled), sass(compiled)
                    ops = [len(re.findall(op + r"\b", code)) for op in ("HMMA", "HGMMA", "FFMA")]
                    lines.append(prefix + f"{kernel} | {res.get('REG')} | {res.get('STACK', 0)} | "
                                 + " | ".join(map(str, ops)) + " |")  # fmt: skip
                    print(lines[-1], flush=True)
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
                lines.append(prefix + f"- | {str(exc).strip().splitlines()[-1][:60]} | | | | |")
                print(lines[-1], flush=True)
    path.write_text("\n".join(lines) + "\n")


def persistent_survey(path: Path, arch: int = 90, spans: bool = False) -> None:
    """The persistent forward, backward after a forward that kept nothing and backward after
    one that saved, for the configs above in fp32 (and M in bf16): the static launch and the
    64-row tensor-core one, as a markdown table. ``spans``: the two backwards only, on one
    row tile a span and on their tuner twin's spans (``choices._with_dw_tiles``)."""
    lines = [
        "| config | dtype | arch | triton | launch | kernel | REG | STACK | shared | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    kernels = ("fwd_persistent", "bwd_persistent", "bwd_persistent_saved")
    kernels = kernels[1:] if spans else kernels
    cases = [(c, "fp32") for c in TC_CONFIGS] + [(TC_CONFIGS[1], "bf16")]
    for (name, widths, k, order), dtype in cases:
        layout = Layout(widths, k, order)
        size = 4 if dtype == "fp32" else 2
        static = layout.static_config(size, SHARED_LIMIT[arch])
        tensor_core = layout.tensor_core_config("tf32x3" if dtype == "fp32" else "ieee")
        launches = [("static", static), ("tensor-core", tensor_core)]
        if spans and dtype == "fp32":  # (the tuner's twins: of its tensor-core candidates)
            launches.insert(1, ("static in 3xTF32", static._replace(precision="tf32x3")))
        if spans:
            launches = [(label, twin) for label, c in launches
                        for twin in _with_dw_tiles(layout, [c], c.precision)]  # fmt: skip
        for label, c in launches:
            launch = f"{label}: {c.rows} rows x {c.warps} warps, {c.precision}"
            launch += f", spans of {c.dw_tiles} tiles" if spans else ""
            prefix = f"| {name} | {dtype} | sm_{arch} | {triton.__version__} | {launch} | "
            start = time.perf_counter()
            try:
                for kernel, compiled in compile_step(layout, c.rows, c.warps, 0, c.precision,
                                                     c.chunk, dtype, arch, c.group, c.cols,
                                                     kernels, dw_tiles=c.dw_tiles):  # fmt: skip
                    res = resources(compiled)
                    lines.append(prefix + f"{kernel} | {res.get('REG')} | {res.get('STACK', 0)} "
                                 f"| {compiled.metadata.shared} | "
                                 f"{time.perf_counter() - start:.0f} |")  # fmt: skip
                    print(lines[-1], flush=True)
                    start = time.perf_counter()
            except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
                lines.append(prefix + f"- | {str(exc).strip().splitlines()[-1][:60]} | | | |")
                print(lines[-1], flush=True)
    path.write_text("\n".join(lines) + "\n")


def _table_rows(lines: list[str], prefix: str, compiles) -> None:
    """Append (and print) one table row per compiled kernel: ``prefix``, then its name and
    resources."""
    for name, *res in compiles:
        lines.append(f"{prefix}{name} | " + " | ".join(map(str, res)) + " |")
        print(lines[-1], flush=True)


def _compiles(layout, rows, warps, dtype, precision, chunk, arch, group=None):
    """(kernel, REG, STACK, shared bytes, compile seconds) of both kernels."""
    start = time.perf_counter()
    try:
        for name, compiled in compile_step(layout, rows, warps, 0, precision, chunk, dtype, arch,
                                           group):  # fmt: skip
            res = resources(compiled)
            seconds = f"{time.perf_counter() - start:.0f}"
            yield name, res.get("REG"), res.get("STACK", "-"), compiled.metadata.shared, seconds
            start = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
        yield "-", str(exc).strip().splitlines()[-1][:60], "-", "-", "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="markdown file to write")
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--tensor-cores", action="store_true", help="the tensor-core table")
    parser.add_argument("--persistent", action="store_true", help="the persistent kernels")
    parser.add_argument("--spans", action="store_true",
                        help="with --persistent: the backwards on spans of tiles")  # fmt: skip
    args = parser.parse_args(argv)
    if args.persistent:
        persistent_survey(args.out, args.arch, args.spans)
    elif args.tensor_cores:
        tensor_core_survey(args.out)
    else:
        survey(args.out, args.arch)


if __name__ == "__main__":
    main()
