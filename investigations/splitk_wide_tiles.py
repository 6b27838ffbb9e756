"""The split-K weight-gradient kernel on its 64 x 64 tiles (``splitk``, ``recompute``; 4
warps) against the 128 x 128 ones (``splitk_wide``, ``recompute_wide``; 8 warps), ahead of
time for sm_90 (no GPU): registers, spills, shared memory, the wgmma shapes, and the stacks
the kernel reads a step, counted from the tiles (each output tile reads the rows of its
columns of the adjoints and inputs stacks; recompute reads the saved fp32 pre-activations in
place of the inputs, so its count is splitk's with those in fp32).

    .venv/bin/python investigations/splitk_wide_tiles.py                 # this triton
    PYTHONPATH=.venv/triton-3.6.0 .venv/bin/python investigations/splitk_wide_tiles.py

Written to ``bench/results/triton_splitk_wide_sm90.md`` (both tritons). Clues, not speed.
"""

from __future__ import annotations

import collections
import os
import re

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402

from bench.step import CONFIGS  # noqa: E402
from sobolev_kernels.triton.aot import compile_weight_grad, resources, sass  # noqa: E402
from sobolev_kernels.triton.layout import Layout, cdiv  # noqa: E402
from sobolev_kernels.triton.parameter_grads import _splitk_tiles  # noqa: E402


def stack_bytes(layout: Layout, batch: int, tile: int, size: int, inputs_size: int) -> int:
    """Bytes of the adjoints and inputs stacks the split-K kernel reads over a step: layer l's
    row tiles each read its inputs' rows, its column tiles each its adjoints' rows."""
    widths, rows = layout.widths, layout.blocks * batch
    total = 0
    for l in range(layout.num_layers):
        n_out, n_in = widths[l + 1], widths[l]
        used = rows if l > 0 else (1 + layout.k) * batch
        in_size = size if l == 0 else inputs_size  # (layer 1's inputs: x and v themselves)
        total += used * (size * n_out * cdiv(n_in, tile) + in_size * n_in * cdiv(n_out, tile))
    return total


def main() -> None:
    print(f"triton {triton.__version__}, sm_90, compiled as launched (16-byte aligned)\n")
    print("| config | dtype | method | tiles | warps | REG | STACK | shared B | wgmma | "
          "stacks read a step |")  # fmt: skip
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for name in ("M", "L"):
        c = CONFIGS[name]
        layout = Layout((c["dim"], *[c["width"]] * (c["layers"] - 1), c["out"]), c["k"], 1)
        for dtype, precision, size in (("fp32", "tf32x3", 4), ("bf16", "ieee", 2)):
            for method in ("splitk", "splitk_wide", "recompute", "recompute_wide"):
                recompute, wide = method.startswith("recompute"), method.endswith("_wide")
                tile, warps = _splitk_tiles(layout, wide)
                _, compiled = compile_weight_grad(layout, precision, dtype, 90, warps,
                                                  recompute=recompute, act=1, aligned=True,
                                                  max_tile=tile)  # fmt: skip
                res, code = resources(compiled), sass(compiled)
                shapes = collections.Counter(re.findall(r"HGMMA\.(\d+x\d+x\d+)", code))
                mma = ", ".join(f"{n} x {s}" for s, n in sorted(shapes.items()))
                tiles = layout.weight_grad_constexprs(True, tile)["TILE_CUM"][-1]
                mb = stack_bytes(layout, c["batch"], tile, size, 4 if recompute else size) / 1e6
                print(f"| {name} | {dtype} | {method} | {tiles} | {warps} | {res.get('REG')} | "
                      f"{res.get('STACK')} | {compiled.metadata.shared} | {mma} | "
                      f"{mb:.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
