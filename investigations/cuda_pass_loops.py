"""The fused CUDA kernels' activation passes in the sm_90 SASS: each large loop without
tensor-core products (the forward's pass over a layer's outputs, the backward's seeds and its
pass through the activation), with its instructions, integer divisions (each one I2F and a
MUFU.RCP, about 20 dependent instructions) and global stores, here and at a base revision.
Compiles fused_forward.cu and fused_backward.cu with nvcc for each tree (a few minutes on 2
cores; no GPU) and reads the SASS with cuobjdump (the CUDA toolkit's, or the copy triton
ships).

    python investigations/cuda_pass_loops.py --base ab067a2 > out.md

Static counts are clues, not speed: a loop's size counts every activation's branch, and the
batched forward pass (SOBOLEV_CUDA_FORWARD_PASS=batched, 16-bit kernels) is a second loop
beside the one-at-a-time one.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import sass_loops
from cuda_k_loop_instructions import FLAGS, ROOT, cuobjdump

# the kernels shown: bf16 and fp32 at width 128 (config M), order 1; fp32 in its
# high-occupancy shape (the default's)
KERNELS = {
    "forward, bf16": "fused_forward_kernelI13__nv_bfloat16Li1ELi128ELb0ELb0E",
    "backward, bf16": "fused_backward_kernelI13__nv_bfloat16Li1ELi128ELb0ELb0E",
    "forward, fp32": "fused_forward_kernelIfLi1ELi128ELb1ELb0E",
    "backward, fp32": "fused_backward_kernelIfLi1ELi128ELb1ELb0E",
}


def pass_loops(function: str) -> list[tuple[int, int, int, int]]:
    """(instructions, I2F, MUFU, STG) of each loop of 300 or more instructions without HMMA."""
    found = []
    for loop in sass_loops.loops(function):
        ops = sass_loops.opcodes(loop)
        if len(loop) >= 300 and not ops.get("HMMA"):
            found.append((len(loop), ops.get("I2F", 0), ops.get("MUFU", 0), ops.get("STG", 0)))
    return found


def sass_of(csrc: Path, tmp: Path) -> str:
    text = ""
    for name in ("fused_forward", "fused_backward"):
        obj = tmp / f"{name}.o"
        flags = [f if not f.startswith("-I") else f"-I{csrc}" for f in FLAGS]
        subprocess.run(["nvcc", *flags, "-c", str(csrc / "cuda" / f"{name}.cu"), "-o", str(obj)],
                       check=True)  # fmt: skip
        text += subprocess.run([cuobjdump(), "-sass", str(obj)], check=True,
                               capture_output=True, text=True).stdout  # fmt: skip
    return text


def loops_by_kernel(sass: str) -> dict[str, list]:
    out = {}
    for function in re.split(r"\n\s+Function : ", sass)[1:]:
        header = function.split("\n", 1)[0]
        for label, mangled in KERNELS.items():
            if mangled in header:
                out[label] = pass_loops(function)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a git revision to compare with (its csrc/)")
    args = parser.parse_args(argv)
    trees = {"here": ROOT / "csrc"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.base:
            base = Path(tmp) / "base"
            base.mkdir()
            archive = subprocess.run(["git", "archive", args.base, "csrc"], check=True,
                                     capture_output=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            trees = {args.base: base / "csrc", **trees}
        found = {}
        for name, csrc in trees.items():
            work = Path(tmp) / f"obj_{len(found)}"
            work.mkdir()
            found[name] = loops_by_kernel(sass_of(csrc, work))
    print("| kernel | tree | loop | instructions | integer divisions (I2F) | MUFU | STG |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for label in KERNELS:
        for name, kernels in found.items():
            for i, (n, i2f, mufu, stg) in enumerate(kernels.get(label, [])):
                print(f"| {label} | {name} | {i} | {n} | {i2f} | {mufu} | {stg} |")
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
