"""Compile the Triton kernels for real GPUs ahead of time, with no GPU: catch what the
interpreter cannot (GPU-only compile errors, shared memory over an architecture's limit) and
report registers, stack (spills) and shared memory of every variant.

    python scripts/check_triton_compile.py            # the default set, sm_80 and sm_90
    python scripts/check_triton_compile.py --quick    # two small variants, sm_90 (CI)
    python scripts/check_triton_compile.py --survey bench/results/triton_resources_sm90.md
        # config M on sm_90 over dot precisions, rows per program and warps: a table of
        # registers, spills (stack) and shared memory, for choosing defaults without a GPU

Exit status 1 if a variant fails to compile or needs more shared memory than the target has.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 notice; same default
os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU even when tests interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sobolev_kernels.triton import sobolev_mlp as k  # noqa: E402
from sobolev_kernels.triton.activations import SMOOTH  # noqa: E402

# Largest dynamic shared memory per block (bytes): A100 (sm_80) and H100/H200 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
TYPES = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
# pointer arguments of the two kernels, in order (all other arguments are named in check())
FWD_PTRS = ("x v y g g2 w b f rf ru rw z partial").split()
BWD_PTRS = ("x v w z rf ru rw gloss gf grf gru grw a s dx db").split()
FWD_PTRS, BWD_PTRS = ([f"{p}_ptr" for p in ptrs] for ptrs in (FWD_PTRS, BWD_PTRS))
FP32_PTRS = {"rf_ptr", "ru_ptr", "rw_ptr", "partial_ptr", "gloss_ptr", "db_ptr"}

# (widths, K, order, dtype, activation id): the configs of bench/step.py and the edges
VARIANTS = [
    ((2, 64, 64, 64, 1), 1, 1, "fp32", 0),  # S
    ((16, 128, 128, 128, 8), 2, 1, "fp32", 0),  # M
    ((16, 128, 128, 128, 8), 2, 2, "fp32", 3),  # M, order 2, silu
    ((64, 256, 256, 256, 256, 256, 16), 4, 1, "bf16", 5),  # L: refused on sm_90
    ((16, 128, 128, 128, 8), 8, 1, "bf16", 6),  # many directions, relu
    ((16, 128, 128, 8), 16, 1, "fp32", 0),  # fp32, K = 16: fewer rows on sm_80
    ((3, 17, 5, 1), 3, 2, "fp16", 2),  # odd widths, padding
]
# CI: small tiles compile in seconds and still go through every code path of both kernels
QUICK = [((4, 32, 24, 2), 3, 2, "fp32", 3), ((3, 17, 5, 1), 3, 1, "bf16", 7)]


def _compile(kernel, ptrs, extra_sig, constexprs, dtype, arch, num_warps):
    sig = {p: "*" + ("fp32" if p in FP32_PTRS else TYPES[dtype]) for p in ptrs}
    sig.update(extra_sig)
    sig.update({name: "constexpr" for name in constexprs})
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps})  # fmt: skip


def _resources(compiled) -> dict[str, int]:
    """REG and STACK (bytes of local memory per thread: spills) from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(compiled.asm["cubin"])
        fh.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", fh.name],
                             capture_output=True, text=True).stdout  # fmt: skip
    found = dict(re.findall(r"(REG|STACK):(\d+)", out))
    return {key: int(value) for key, value in found.items()}


def _constexprs(layout, rows, warps, act, precision, chunk, group=None):
    """(name, kernel, pointer names, scalar signature, constexprs) of both kernels, as the
    launchers would compile them for a full training step (``group``: directions per pass,
    default the launchers' choice)."""
    common = dict(layout.constexprs(), ROWS=rows, GROUP=group or layout.group(rows, warps),
                  ACT=act, SHARED=False, HAS_BIAS=True, PRECISION=precision,
                  EMULATE_BF16=False, CHUNKS=layout.chunks(chunk))  # fmt: skip
    fwd = dict(common, HAS_Y=True, TARGET=k.TARGET_GRAD,
               TARGET2=k.TARGET_HESS if layout.order == 2 else 0, SAVE=True,
               **layout.hidden_stacks(save=True))  # fmt: skip
    bwd = dict(common, IN_CUM=layout.in_cum, SMOOTH=act in SMOOTH, HAS_GF=True, HAS_GRF=False,
               HAS_GRU=False, HAS_GRW=False, NEED_DX=True)  # fmt: skip
    return [
        ("fwd", k._sobolev_fwd_kernel, FWD_PTRS, {"B": "i32", "slope": "fp32"}, fwd),
        ("bwd", k._sobolev_bwd_kernel, BWD_PTRS,
         {"B": "i32", "slope": "fp32", "coef_f": "fp32", "coef_u": "fp32", "coef_w": "fp32"},
         bwd),
    ]  # fmt: skip


# config M (bench/step.py) in fp32 under each dot precision and in bf16, over launch configs
SURVEY_WIDTHS, SURVEY_K = (16, 128, 128, 128, 8), 2
# (tf32x3, three TF32 dots, was worse still: 32 registers and ~35 KB of stack at 16 rows)
SURVEY = [("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee")]
SURVEY_LAUNCH = [(16, 4), (16, 8), (32, 8)]
SURVEY_CHUNKS = (k.CHUNK, k.CHUNK // 2)  # the dots' K step: the static one, the tuner's other
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
    """Registers, stack (spills) and shared memory of config M's kernels for every dot
    precision, launch config and K chunk, as a markdown table at ``path``."""
    layout = k.Layout(SURVEY_WIDTHS, SURVEY_K, 1)
    lines = [
        f"# Triton kernel resources, config M (widths {SURVEY_WIDTHS}, K={SURVEY_K}), "
        f"sm_{arch}, triton {triton.__version__}",
        "",
        "From `python scripts/check_triton_compile.py --survey` (ahead-of-time compiles, no "
        "GPU). REG: registers per thread (255 is the cap); STACK: bytes of local memory per "
        "thread (spills); 32 registers with a large stack is ptxas giving up on register "
        "allocation (ptxas -O1 on the same PTX gives 255 registers and half the stack). "
        "chunk: the dots' K step (inputs reloaded from memory in K loops).",
        "",
        "| dtype | precision | chunk | rows | warps | kernel | REG | STACK | shared | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    configs = itertools.product(SURVEY, SURVEY_CHUNKS, SURVEY_LAUNCH)
    for (dtype, precision), chunk, (rows, warps) in configs:
        compiles = _survey_compiles(layout, rows, warps, dtype, precision, chunk, arch)
        _table_rows(lines, f"| {dtype} | {precision} | {chunk} | {rows} | {warps} | ", compiles)
    lines += [
        "",
        "## Warps for large tiles",
        "",
        "Where even 16 rows (the least `tl.dot` takes) overflow the register budget of 4 warps "
        "(width <= 64) or 8: many directions, order 2. Static rows, K chunk "
        f"{k.CHUNK}, ieee dots; `*` marks `Layout.num_warps()`, the static choice (16 warps is "
        "an autotuner candidate only).",
        "",
        "| widths | K | order | dtype | rows | warps | kernel | REG | STACK | shared | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for widths, kk, order, dtype in WARPS_SURVEY:
        big = k.Layout(widths, kk, order)
        rows = big.rows(4 if dtype == "fp32" else 2, SHARED_LIMIT[arch])
        for warps in (4, 8, 16) if max(big.pads) <= 64 else (8, 16):
            mark = "*" if warps == big.num_warps() else ""
            compiles = _survey_compiles(big, rows, warps, dtype, "ieee", k.CHUNK, arch)
            _table_rows(lines, f"| {widths} | {kk} | {order} | {dtype} | {rows} | {warps}{mark} | ",
                        compiles)  # fmt: skip
    lines += [
        "",
        "## Direction groups",
        "",
        "Tangent streams run GROUP directions per pass over a layer's weights. Static rows and "
        f"warps, K chunk {k.CHUNK}, ieee dots; `*` marks `Layout.group()`, the static choice "
        f"(tiles of at most {k.TILE_PER_THREAD} elements per thread; the tuner also tries "
        "all K in one pass, or else half as many).",
        "",
        "| widths | K | order | dtype | rows | warps | group | kernel | REG | STACK | shared "
        "| compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for widths, kk, order, dtype in WARPS_SURVEY + GROUP_SURVEY:
        big = k.Layout(widths, kk, order)
        rows, warps = big.rows(4 if dtype == "fp32" else 2, SHARED_LIMIT[arch]), big.num_warps()
        group = big.kp
        while group >= 1:
            mark = "*" if group == big.group(rows, warps) else ""
            compiles = _survey_compiles(big, rows, warps, dtype, "ieee", k.CHUNK, arch, group)
            prefix = f"| {widths} | {kk} | {order} | {dtype} | {rows} | {warps} | {group}{mark} | "
            _table_rows(lines, prefix, compiles)
            group //= 2
    path.write_text("\n".join(lines) + "\n")


def _table_rows(lines: list[str], prefix: str, compiles) -> None:
    """Append (and print) one table row per compiled kernel: ``prefix``, then its name and
    resources."""
    for name, *res in compiles:
        lines.append(f"{prefix}{name} | " + " | ".join(map(str, res)) + " |")
        print(lines[-1], flush=True)


def _survey_compiles(layout, rows, warps, dtype, precision, chunk, arch, group=None):
    """(kernel, REG, STACK, shared bytes, compile seconds) of both kernels."""
    kernels = _constexprs(layout, rows, warps, 0, precision, chunk, group)
    for name, kernel, ptrs, sig, constexprs in kernels:
        start = time.perf_counter()
        try:
            compiled = _compile(kernel, ptrs, sig, constexprs, dtype, arch, warps)
            res, shared = _resources(compiled), compiled.metadata.shared
        except Exception as exc:  # noqa: BLE001 - a failing variant is a result too
            res, shared = {"REG": str(exc).strip().splitlines()[-1][:60]}, "-"
        seconds = f"{time.perf_counter() - start:.0f}"
        yield name, res.get("REG"), res.get("STACK", "-"), shared, seconds


def check(variant, arch: int) -> list[str]:
    """Compile one variant as the launchers would on ``arch``; report, and list problems: a
    compile error, or more shared memory than Layout.shared_bytes estimated (the estimate is
    what the backend uses to decide whether a problem fits)."""
    widths, kk, order, dtype, act = variant
    layout = k.Layout(widths, kk, order)
    size = 4 if dtype == "fp32" else 2
    rows = layout.rows(size, SHARED_LIMIT[arch])
    estimate = layout.shared_bytes(rows, size)
    if layout.shared_bytes(k.MIN_PAD, size) > SHARED_LIMIT[arch]:
        print(f"sm_{arch} widths={widths} K={kk} order={order} {dtype}: does not fit, the "
              "backend refuses it (auto falls back)")  # fmt: skip
        return []
    kernels = _constexprs(layout, rows, layout.num_warps(), act, "ieee", k.CHUNK)
    problems = []
    for name, kernel, ptrs, sig, constexprs in kernels:
        label = f"sm_{arch} {name} widths={widths} K={kk} order={order} {dtype} act={act}"
        start = time.perf_counter()
        try:
            compiled = _compile(kernel, ptrs, sig, constexprs, dtype, arch, layout.num_warps())
        except Exception as exc:  # noqa: BLE001 - report every failing variant
            problems.append(f"{label}: compile error: {str(exc).strip().splitlines()[-1]}")
            print(problems[-1])
            continue
        shared = compiled.metadata.shared
        res = _resources(compiled)
        print(f"{label}: rows={rows} warps={layout.num_warps()} shared={shared} "
              f"(estimated {estimate}) reg={res.get('REG')} stack={res.get('STACK')} "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        if shared > estimate:
            problems.append(f"{label}: {shared} bytes of shared memory > estimate {estimate}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small variants on sm_90")
    parser.add_argument("--survey", type=Path, metavar="MD", help="write the resource table")
    args = parser.parse_args(argv)
    if args.survey:
        survey(args.survey)
        return 0
    variants, archs = (QUICK, [90]) if args.quick else (VARIANTS, [80, 90])
    problems = [p for arch in archs for v in variants for p in check(v, arch)]
    print("\n".join(["", *problems]) if problems else "check_triton_compile: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
