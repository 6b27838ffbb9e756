"""Registers, spills and tensor-core instructions of the chunked forward in its two forms,
the one that reloads pre-activations and activates them per pass and the ``activated`` one
(``choices._forward_activated``), and of the backward, each with 64- and 32-bit index
arithmetic (``choices._index64``), compiled ahead of time for sm_90 (no GPU) on the tuner's
column-block candidate of configs S, M and L, as the benchmark runs them (a directional
target, biases, y).

    python investigations/activated_forward_resources.py > out.md
    PYTHONPATH=.venv/triton-3.6.0 python investigations/activated_forward_resources.py

Spills are clues, not speed: the tuner times both forms on the GPU.
"""

from __future__ import annotations

import os
import re
import sys
import time

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 notice; same default
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402

from bench.limits import widths  # noqa: E402
from bench.step import CONFIGS  # noqa: E402
from sobolev_kernels.triton import aot  # noqa: E402
from sobolev_kernels.triton.launch import TARGET_JVP  # noqa: E402
from sobolev_kernels.triton.layout import Layout  # noqa: E402


def main() -> int:
    aot.TARGET_GRAD = TARGET_JVP  # the benchmark's target: (B, K, m) directional derivatives
    print(f"# The chunked kernels' forms, sm_90, triton {triton.__version__}\n")
    print("| config | dtype | launch config | kernel | index bits | REG | STACK | shared | "
          "tensor-core instructions |")  # fmt: skip
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in ("S", "M", "L"):
        sizes = CONFIGS[name]
        shape = widths(sizes["dim"], sizes["width"], sizes["layers"], sizes["out"])
        layout = Layout(tuple(shape), sizes["k"], sizes["order"])
        for dtype in ("fp32", "bf16"):
            c = layout.tensor_core_config("tf32x3" if dtype == "fp32" else "ieee")
            label = f"rows {c.rows}, warps {c.warps}, group {c.group}, cols {c.cols}, {c.precision}"
            forms = {"fwd": "forward, reloading", "fwd_activated": "forward, activated",
                     "bwd": "backward"}  # fmt: skip
            for kernel, form in forms.items():
                for index64 in (True, False):
                    start = time.perf_counter()
                    ((_, compiled),) = aot.compile_step(
                        layout, c.rows, c.warps, 0, c.precision, c.chunk, dtype, 90, c.group,
                        c.cols, (kernel,), index64=index64,
                    )  # fmt: skip
                    res = aot.resources(compiled)
                    tensor_ops = len(re.findall(r"\bH(?:G)?MMA\b", aot.sass(compiled)))
                    bits = 64 if index64 else 32
                    print(f"| {name} | {dtype} | {label} | {form} | {bits} | {res.get('REG')} "
                          f"| {res.get('STACK')} | {compiled.metadata.shared} | {tensor_ops} |",
                          flush=True)  # fmt: skip
                    print(f"({name} {dtype} {form} {bits}: "
                          f"{time.perf_counter() - start:.0f} s)", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
