"""The layer inputs stacks stored transposed (SOBOLEV_TRITON_INPUTS_LAYOUT=kmajor), ahead of
time for sm_90 as the GPU's launcher compiles the kernels (aligned, ``triton_alignment.py``):
the split-K weight-gradient kernel's row loop over row-major and over transposed inputs
stacks (instructions, barriers, shared loads and stores by width, wgmma), and what the
transposed stores cost the backward kernel that writes them (registers, spills, SASS).

    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/triton_kmajor_inputs.py

Cited in ``bench/results/triton_kmajor_inputs_sm90.md``. Clues, not speed: the GPU script
times both (provider ``triton_kmajor_inputs``, and the tuner's weight-gradient rows).
"""

from __future__ import annotations

import os
import re
from collections import Counter

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import sass_loops  # noqa: E402
import triton  # noqa: E402
from triton_alignment import CONFIGS  # noqa: E402

from sobolev_kernels.triton.aot import (  # noqa: E402
    SHARED_LIMIT,
    compile_step,
    compile_weight_grad,
    resources,
    sass,
)
from sobolev_kernels.triton.layout import Layout  # noqa: E402

SHARED = re.compile(r"\b((?:LDS|STS|LDSM)(?:\.[A-Z0-9]+)*)")


def row_loop(code: str) -> str:
    """The split-K kernel's row loop (the first loop holding HGMMA): instructions, barriers,
    and its shared loads and stores by width (scalar ones: a layout changed element by
    element; .128 and LDSM: vectors)."""
    for loop in sass_loops.loops(code):
        ops = sass_loops.opcodes(loop)
        if ops["HGMMA"]:
            widths = Counter(m.replace(".U", "") for t in loop for m in SHARED.findall(t))
            shared = ", ".join(f"{n} {op}" for op, n in sorted(widths.items()))
            return f"{len(loop)} | {ops['BAR']} | {shared} | {ops['HGMMA']}"
    return "- | - | - | -"


def main() -> None:
    print(f"triton {triton.__version__}, sm_90, aligned\n")
    print("The split-K weight-gradient kernel (4 warps), its row loop:\n")
    print("| config | dtype | dots | inputs | REG | STACK | loop instructions | BAR | "
          "shared loads and stores | HGMMA |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, widths, k, order, dtype in CONFIGS:
        layout = Layout(widths, k, order)
        forms = ("tf32x3", "tf32x3_split") if dtype == "fp32" else ("ieee",)
        for form in forms:
            for kmajor in (False, True):
                _, compiled = compile_weight_grad(layout, form, dtype, 90, aligned=True,
                                                  kmajor=kmajor)  # fmt: skip
                res = resources(compiled)
                print(f"| {label} | {dtype} | {form} | {'k-major' if kmajor else 'rows'} | "
                      f"{res.get('REG')} | {res.get('STACK', 0)} | "
                      f"{row_loop(sass(compiled))} |", flush=True)  # fmt: skip
    print("\nThe same loop not software-pipelined (num_stages=1: the tiles loaded into "
          "registers, then stored to shared memory; weight-gradient method "
          "`splitk_unpipelined`), at M in fp32:\n")  # fmt: skip
    print("| dots | inputs | stages | REG | STACK | loop instructions | BAR | "
          "shared loads and stores | HGMMA |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    layout = Layout((16, 128, 128, 128, 8), 2, 1)
    for form in ("tf32x3", "tf32x3_split"):
        for kmajor in (False, True):
            for stages in (None, 1):
                _, compiled = compile_weight_grad(layout, form, "fp32", 90, aligned=True,
                                                  kmajor=kmajor, stages=stages)  # fmt: skip
                res = resources(compiled)
                print(f"| {form} | {'k-major' if kmajor else 'rows'} | {stages or 'default'} | "
                      f"{res.get('REG')} | {res.get('STACK', 0)} | "
                      f"{row_loop(sass(compiled))} |", flush=True)  # fmt: skip
    print("\nThe backward kernel that stores them (fp32; static launch and the tuner's "
          "tensor-core candidate):\n")  # fmt: skip
    print("| config | launch | inputs | REG | STACK | SASS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, widths, k, order, dtype in CONFIGS:
        if dtype != "fp32":
            continue
        layout = Layout(widths, k, order)
        static = layout.static_config(4, SHARED_LIMIT[90])
        for c in dict.fromkeys((static, layout.tensor_core_config("tf32x3"))):
            launch = f"{c.rows} rows, {c.warps} warps, {c.precision}, cols {c.cols or 'all'}"
            for kmajor in (False, True):
                (_, compiled), = compile_step(layout, c.rows, c.warps, 0, c.precision, c.chunk,
                                              dtype, 90, c.group, c.cols, ("bwd",),
                                              aligned=True, inputs_kmajor=kmajor)  # fmt: skip
                res = resources(compiled)
                count = len(sass_loops.INSTRUCTION.findall(sass(compiled)))
                inputs = "k-major" if kmajor else "rows"
                print(f"| {label} | {launch} | {inputs} | {res.get('REG')} | "
                      f"{res.get('STACK', 0)} | {count} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
