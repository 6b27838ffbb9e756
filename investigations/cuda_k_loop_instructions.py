"""Instructions per tensor-core product in the fused CUDA kernels' k loops (fp32, 3xTF32), from
their sm_90 SASS: each warp splitting the staged fp32 weights as it loads them (the default)
against the weights staged as their TF32 parts (``SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT=staged``,
FusedShape's STAGED_SPLIT). Compiles fused_forward.cu and fused_backward.cu with nvcc (about
three minutes on 2 cores; no GPU) and reads the SASS with cuobjdump (the CUDA toolkit's, or the
copy triton ships).

    python investigations/cuda_k_loop_instructions.py > out.md

A k loop: a backward branch whose body holds HMMA instructions and fewer than 600 instructions
(the layer loops around them hold thousands). The staged form has a k loop of its own for
3xTF32 (the fp32 default; its loops subtract the high parts, FADD) and for plain TF32 (the op's
allow_tf32), each counted apart; the per-warp form has one loop for both, the remainders'
split predicated. Fewer instructions per HMMA is a clue, not speed: the GPU script times both
(provider ``cuda_staged_split``). A second table counts the weight-gradient kernels'
k loops: ``SOBOLEV_CUDA_WEIGHT_GRADS=splitk``'s and ``splitk_tc``'s (provider
``cuda_splitk_tc``), and splitk_tc's bf16 loops.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import sass_loops

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["-std=c++17", "-O3", "-DWITH_CUDA", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
         "-gencode", "arch=compute_90,code=sm_90"]  # fmt: skip
# fp32 kernels in the shapes that have both forms: order, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT
KERNEL = re.compile(r"fused_(forward|backward)_kernelIfLi([12])ELi(\d+)ELb([01])ELb([01])E")
# the weight-gradient split-K kernels: SOBOLEV_CUDA_WEIGHT_GRADS=splitk's (fp32) and
# splitk_tc's (fp32 with SPLIT: 3xTF32, else plain TF32; bf16)
GRAD_KERNEL = re.compile(
    r"(fused_weight_grad_kernelIfE|fused_weight_grad_tc_kernelI(f|13__nv_bfloat16)Lb([01])E)"
)


def cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def k_loops(body: str) -> list[tuple[int, int, Counter]]:
    """(instructions, HMMAs, opcode counts) of each k loop in one function's SASS."""
    found = []
    for loop in sass_loops.loops(body):
        hmma = sum("HMMA" in t for t in loop)
        if hmma and len(loop) < 600:
            found.append((len(loop), hmma, sass_loops.opcodes(loop)))
    return found


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sass = ""
        for name in ("fused_forward", "fused_backward"):
            obj = Path(tmp) / f"{name}.o"
            subprocess.run(["nvcc", *FLAGS, "-c", str(ROOT / "csrc" / "cuda" / f"{name}.cu"),
                            "-o", str(obj)], check=True)  # fmt: skip
            sass += subprocess.run([cuobjdump(), "-sass", str(obj)], check=True,
                                   capture_output=True, text=True).stdout  # fmt: skip
    grad_rows = []
    for function in re.split(r"\n\s+Function : ", sass)[1:]:
        grad = GRAD_KERNEL.search(function.split("\n", 1)[0])
        if grad:
            name = "splitk" if grad.group(2) is None else "splitk_tc"
            if name == "splitk":
                products = "both"  # (the split predicated, as the per-warp form's)
            elif grad.group(2) != "f":
                products = "bf16"
            else:
                products = "3xTF32" if grad.group(3) == "1" else "TF32"
            for n, hmma, ops in k_loops(function):
                common = ", ".join(f"{op} {c}" for op, c in ops.most_common(6))
                grad_rows.append((name, products, n, hmma, n / hmma, common))
        kernel = KERNEL.search(function.split("\n", 1)[0])
        if not kernel:
            continue
        which, order, width, high, staged = kernel.groups()
        if not (int(width) == 64 or (int(width) >= 128 and high == "1")):
            continue  # shapes without a staged form
        by_mode: dict[str, list] = {}
        for loop in k_loops(function):
            mode = "both" if staged == "0" else "3xTF32" if loop[2]["FADD"] else "TF32"
            by_mode.setdefault(mode, []).append(loop)
        for mode, loops in by_mode.items():
            instructions = sum(n for n, _, _ in loops)
            hmma = sum(h for _, h, _ in loops)
            ops = sum((o for _, _, o in loops), Counter())
            common = ", ".join(f"{op} {n}" for op, n in ops.most_common(6))
            rows.append((which, order, width, high, "staged" if staged == "1" else "warp",
                         mode, len(loops), instructions / hmma, common))  # fmt: skip
    rows.sort()
    print(
        "| kernel | order | WIDTH | high occupancy | weight split | products | k loops | "
        "instructions / HMMA | most common (all k loops) |"
    )
    print("| --- | ---: | ---: | --- | --- | --- | ---: | ---: | --- |")
    for which, order, width, high, split, mode, loops, per, common in rows:
        print(f"| {which} | {order} | {width} | {'yes' if high == '1' else 'no'} | {split} | "
              f"{mode} | {loops} | {per:.2f} | {common} |")  # fmt: skip
    print()
    print(
        "Weight gradients, each k loop: splitk_tc has one for whole 128 x 128 blocks of dW (no "
        "tile predicates) and one for partial ones; bf16's HMMA is m16n8k16, twice TF32's k."
    )
    print()
    print("| kernel | products | instructions | HMMA | instructions / HMMA | most common |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, products, n, hmma, per, common in sorted(grad_rows):
        print(f"| {name} | {products} | {n} | {hmma} | {per:.2f} | {common} |")
    return 0 if rows and grad_rows else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
