"""The two forms of the Triton kernels' 3xTF32 dots, ahead of time for sm_90 as the GPU's
launcher compiles them (aligned, ``triton_alignment.py``): Triton's "tf32x3" and the kernels'
own split (``SOBOLEV_TRITON_TF32X3=split``: "tf32x3_split", ``tiles._dot_acc``). Registers,
spills, SASS instructions and wgmma of the forward and backward on their tensor-core launch
configs, and of the split-K weight-gradient kernel with its row loop.

    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/triton_tf32x3_forms.py

Cited in ``bench/results/triton_tf32x3_forms_sm90.md``. Clues, not speed: the GPU script
times both (provider ``triton_split_tf32x3``).
"""

from __future__ import annotations

import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from sass_loops import INSTRUCTION  # noqa: E402
from triton_alignment import CONFIGS, row_loop  # noqa: E402

from sobolev_kernels.triton.aot import (  # noqa: E402
    compile_step,
    compile_weight_grad,
    resources,
    sass,
)
from sobolev_kernels.triton.layout import Layout  # noqa: E402

FORMS = ("tf32x3", "tf32x3_split")


def main() -> None:
    print(f"triton {triton.__version__}, sm_90, aligned\n")
    print("| config | launch | kernel | form | REG | STACK | SASS | HGMMA |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    fp32 = [c for c in CONFIGS if c[4] == "fp32"]
    for label, widths, k, order, dtype in fp32:
        layout = Layout(widths, k, order)
        c = layout.tensor_core_config("tf32x3")
        launch = f"{c.rows} rows, {c.warps} warps, cols {c.cols or 'all'}"
        for form in FORMS:
            for kernel, compiled in compile_step(layout, c.rows, c.warps, 0, form, c.chunk,
                                                 dtype, 90, c.group, c.cols,
                                                 aligned=True):  # fmt: skip
                res, code = resources(compiled), sass(compiled)
                hgmma = len(re.findall(r"\bHGMMA\b", code))
                print(f"| {label} | {launch} | {kernel} | {form} | {res.get('REG')} | "
                      f"{res.get('STACK', 0)} | {len(INSTRUCTION.findall(code))} | {hgmma} |",
                      flush=True)  # fmt: skip
    print("\nThe split-K weight-gradient kernel (4 warps), its row loop:\n")
    print("| config | form | REG | STACK | loop instructions | BAR | LDS / STS | HGMMA |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, widths, k, order, dtype in fp32:
        layout = Layout(widths, k, order)
        for form in FORMS:
            _, compiled = compile_weight_grad(layout, form, dtype, 90, aligned=True)
            res = resources(compiled)
            print(f"| {label} | {form} | {res.get('REG')} | {res.get('STACK', 0)} | "
                  f"{row_loop(sass(compiled))} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
