"""CUTLASS's split-K 3xTF32 GEMM of the weight gradients (csrc/cuda/weight_grad_gemm.cu) ahead
of time (nvcc -O3 with torch's flags, sm_80 and sm_90; no GPU): registers, spills, shared
memory, and its main loop's instructions per tensor-core product, beside cuBLAS's SIMT sgemm
that torch's default fp32 precision runs (the H200's profile, run 5: 79% of the FMA pipe).

    python investigations/cutlass_weight_grad_gemm.py

Written to bench/results/cuda_weight_grad_gemm_sm90.md. Clues, not speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "investigations"))
from cuda_k_loop_instructions import cuobjdump  # noqa: E402
from sass_loops import loops, opcodes  # noqa: E402

FLAGS = ["-std=c++17", "-O3", "-DWITH_CUDA", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
         f"-I{ROOT / 'third_party' / 'cutlass' / 'include'}"]  # fmt: skip


def main() -> int:
    source = ROOT / "csrc" / "cuda" / "weight_grad_gemm.cu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("80", "90"):
            obj = Path(tmp) / f"sm{arch}.o"
            build = subprocess.run(["nvcc", *FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}",
                                    "-Xptxas", "-v", "-c", str(source), "-o", str(obj)],
                                   capture_output=True, text=True, check=True)  # fmt: skip
            usage = _ptxas_usage(build.stderr)
            sass = subprocess.run([cuobjdump(), "-sass", str(obj)], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            for name, body in _functions(sass):
                tile = re.search(r"GemmShapeILi(\d+)ELi(\d+)ELi16E", name)
                kind = f"GEMM {tile[1]} x {tile[2]}" if tile else "reduction"
                regs, stack, spills, smem = usage.get(name, ("?", "?", "?", "?"))
                hmma = len(re.findall(r"\bHMMA\b", body))
                mains = [loop for loop in loops(body) if any("HMMA" in t for t in loop)]
                ratio, common = "", ""
                if mains:
                    counts = opcodes(max(mains, key=len))
                    ratio = f"{sum(counts.values()) / counts['HMMA']:.2f}"
                    common = ", ".join(f"{op} {n}" for op, n in counts.most_common(6))
                rows.append(f"| sm_{arch} | {kind} | {regs} | {stack} | {spills} | {smem} | "
                            f"{hmma} | {ratio} | {common} |")  # fmt: skip
    print(
        "| arch | kernel | registers | stack B | spill stores B | static shared B | HMMA | "
        "main loop instructions / HMMA | main loop's most common |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    print("\n".join(rows))
    return 0


def _ptxas_usage(log: str) -> dict[str, tuple[str, str, str, str]]:
    """{mangled name: (registers, stack, spill stores, shared)} from ptxas -v."""
    usage, name, frame = {}, None, ("?", "?")
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", line)
        if m:
            frame = m.groups()
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)
        if m and name:
            smem = re.search(r"(\d+) bytes smem", line)
            usage[name] = (m.group(1), *frame, smem.group(1) if smem else "0")
            name = None
    return usage


def _functions(sass: str) -> list[tuple[str, str]]:
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


if __name__ == "__main__":
    sys.exit(main())
