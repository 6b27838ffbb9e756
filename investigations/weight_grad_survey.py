"""Registers, spills and tensor-core instructions of the weight-gradient methods, ahead of
time (no GPU): the split-K kernel reading the stored inputs (``splitk``) or forming them from
the saved pre-activations (``recompute``), and the static backward with and without its
inputs stores, for configs S, M (orders 1 and 2), M in bf16 and L, on sm_90 and sm_80.

    .venv/bin/python investigations/weight_grad_survey.py                 # this triton
    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/weight_grad_survey.py

Cited in ``bench/results/triton_tensor_cores.md``.
"""

from __future__ import annotations

import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402

from sobolev_kernels.triton.aot import (  # noqa: E402
    SHARED_LIMIT,
    compile_step,
    compile_weight_grad,
    resources,
    sass,
)
from sobolev_kernels.triton.layout import Layout  # noqa: E402

# (label, widths, K, order, dtype, activation id): bench/step.py's configs
CONFIGS = [
    ("S", (2, 64, 64, 64, 1), 1, 1, "fp32", 0),
    ("M", (16, 128, 128, 128, 8), 2, 1, "fp32", 0),
    ("M order 2, silu", (16, 128, 128, 128, 8), 2, 2, "fp32", 3),
    ("M", (16, 128, 128, 128, 8), 2, 1, "bf16", 0),
    ("L", (64, 256, 256, 256, 256, 256, 16), 4, 1, "fp32", 0),
]


def main() -> None:
    print(f"triton {triton.__version__}")
    print("| config | dtype | arch | kernel | REG | STACK | shared | tensor-core instructions |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch in (90, 80):
        for label, widths, k, order, dtype, act in CONFIGS:
            layout = Layout(widths, k, order)
            precision = "tf32x3" if dtype == "fp32" else "ieee"
            for recompute in (False, True):
                name, compiled = compile_weight_grad(layout, precision, dtype, arch,
                                                     recompute=recompute, act=act)  # fmt: skip
                _row(label, dtype, arch, f"{name} ({precision})", compiled)
            size = 4 if dtype == "fp32" else 2
            static = layout.static_config(size, SHARED_LIMIT[arch])
            for store in (True, False):
                for _, compiled in compile_step(layout, static.rows, static.warps, act,
                                                static.precision, static.chunk, dtype, arch,
                                                static.group, static.cols, ("bwd",),
                                                store):  # fmt: skip
                    what = "bwd, static" + ("" if store else ", no inputs stores")
                    _row(label, dtype, arch, what, compiled)


def _row(label, dtype, arch, kernel, compiled) -> None:
    res = resources(compiled)
    tensor_ops = len(re.findall(r"\bH(?:G)?MMA\b", sass(compiled)))
    cells = [label, dtype, f"sm_{arch}", kernel, res.get("REG"), res.get("STACK"),
             compiled.metadata.shared, tensor_ops]  # fmt: skip
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
