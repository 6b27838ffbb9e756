"""The forward's and backward's column-block tiles of 64 rows on 4 warps against 128 rows on
8 warps (a warpgroup's 64 rows each, the weight tiles shared by both), fp32 in 3xTF32,
ahead of time for sm_90 (no GPU): registers, spills, shared memory and wgmma a thread.

    .venv/bin/python investigations/triton_128_row_tiles.py                 # this triton
    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/triton_128_row_tiles.py

Written to ``bench/results/triton_128_row_tiles_sm90.md`` (both tritons). Clues, not speed.
"""

from __future__ import annotations

import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402

from bench.step import CONFIGS  # noqa: E402
from sobolev_kernels.triton.aot import compile_step, resources, sass  # noqa: E402
from sobolev_kernels.triton.layout import Layout  # noqa: E402


def main() -> None:
    print(f"triton {triton.__version__}, sm_90, fp32 (3xTF32), compiled as launched "
          "(16-byte aligned)\n")  # fmt: skip
    print("| config | kernel | rows | warps | group | cols | REG | STACK | shared B | HGMMA |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in ("S", "M", "L"):
        c = CONFIGS[name]
        layout = Layout((c["dim"], *[c["width"]] * (c["layers"] - 1), c["out"]), c["k"], 1)
        for rows in (64, 128):
            t = layout.tensor_core_config("tf32x3", rows=rows)
            for kernel, compiled in compile_step(layout, t.rows, t.warps, 1, t.precision,
                                                 t.chunk, "fp32", 90, t.group, t.cols,
                                                 ("fwd", "bwd"), aligned=True):  # fmt: skip
                res = resources(compiled)
                hgmma = len(re.findall(r"\bHGMMA\b", sass(compiled)))
                print(f"| {name} | {kernel} | {t.rows} | {t.warps} | {t.group} | {t.cols} | "
                      f"{res.get('REG')} | {res.get('STACK')} | {compiled.metadata.shared} | "
                      f"{hgmma} |")  # fmt: skip


if __name__ == "__main__":
    main()
