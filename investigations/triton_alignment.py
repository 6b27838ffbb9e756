"""What Triton's launcher knows about the arguments, and what an ahead-of-time compile did not:
the fused kernels compiled for sm_90 as the GPU runs them at the benchmarks' sizes (every
pointer 16-byte aligned, every integer a multiple of 16: ``aot._aligned``), against the
compiles the earlier surveys made (nothing known of them). Registers, spills, SASS
instructions and 128-bit global loads and stores of the forward and backward (static launch
and the tuner's tensor-core candidate) and of the split-K weight-gradient kernel, whose row
loop is counted apart.

    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/triton_alignment.py > out.md

Cited in ``bench/results/triton_alignment_sm90.md``. Registers and spills are clues, not
speed; the point here is which compile the earlier clues came from.
"""

from __future__ import annotations

import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import sass_loops  # noqa: E402
import triton  # noqa: E402

from sobolev_kernels.triton.aot import (  # noqa: E402
    SHARED_LIMIT,
    compile_step,
    compile_weight_grad,
    resources,
    sass,
)
from sobolev_kernels.triton.layout import Layout  # noqa: E402

# (label, widths, K, order, dtype): bench/step.py's configs
CONFIGS = [
    ("S", (2, 64, 64, 64, 1), 1, 1, "fp32"),
    ("M", (16, 128, 128, 128, 8), 2, 1, "fp32"),
    ("M", (16, 128, 128, 128, 8), 2, 1, "bf16"),
    ("L", (64, 256, 256, 256, 256, 256, 16), 4, 1, "fp32"),
]


def counts(code: str) -> str:
    """SASS instructions, and 128-bit global loads / stores."""
    lines = sass_loops.INSTRUCTION.findall(code)
    wide_loads = len(re.findall(r"\bLDG\.E\.128\b", code))
    wide_stores = len(re.findall(r"\bSTG\.E\.128\b", code))
    return f"{len(lines)} | {wide_loads} / {wide_stores}"


def row_loop(code: str) -> str:
    """Instructions, barriers, shared loads / stores and wgmma of the split-K kernel's row loop
    (the first loop holding HGMMA: the layers' loops are alike)."""
    for loop in sass_loops.loops(code):
        ops = sass_loops.opcodes(loop)
        if ops["HGMMA"]:
            return f"{len(loop)} | {ops['BAR']} | {ops['LDS']} / {ops['STS']} | {ops['HGMMA']}"
    return "- | - | - | -"


def main() -> None:
    print(f"triton {triton.__version__}, sm_90\n")
    print("| config | dtype | launch | kernel | compile | REG | STACK | SASS | LDG.128 / STG.128 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, widths, k, order, dtype in CONFIGS:
        layout = Layout(widths, k, order)
        size = 4 if dtype == "fp32" else 2
        static = layout.static_config(size, SHARED_LIMIT[90])
        tensor_core = layout.tensor_core_config("tf32x3" if dtype == "fp32" else "ieee")
        for c in dict.fromkeys((static, tensor_core)):
            launch = f"{c.rows} rows, {c.warps} warps, {c.precision}, cols {c.cols or 'all'}"
            for aligned in (False, True):
                for kernel, compiled in compile_step(layout, c.rows, c.warps, 0, c.precision,
                                                     c.chunk, dtype, 90, c.group, c.cols,
                                                     aligned=aligned):  # fmt: skip
                    res = resources(compiled)
                    print(
                        f"| {label} | {dtype} | {launch} | {kernel} | "
                        f"{'aligned' if aligned else 'as before'} | {res.get('REG')} | "
                        f"{res.get('STACK', 0)} | {counts(sass(compiled))} |",
                        flush=True,
                    )
    print("\nThe split-K weight-gradient kernel (4 warps, tensor-core dots), its row loop:\n")
    print("| config | dtype | compile | REG | STACK | loop instructions | BAR | LDS / STS | "
          "HGMMA |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, widths, k, order, dtype in CONFIGS:
        layout = Layout(widths, k, order)
        precision = "tf32x3" if dtype == "fp32" else "ieee"
        for aligned in (False, True):
            _, compiled = compile_weight_grad(layout, precision, dtype, 90, aligned=aligned)
            res = resources(compiled)
            print(f"| {label} | {dtype} | {'aligned' if aligned else 'as before'} | "
                  f"{res.get('REG')} | {res.get('STACK', 0)} | {row_loop(sass(compiled))} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
