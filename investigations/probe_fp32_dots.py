"""Why the Triton kernels spill in fp32, and what would fix it: registers and local memory of a
bare MLP forward (a (R, 128) fp32 tile through 4 layers of 128) compiled ahead of time for
sm_90, with no GPU.

    python investigations/probe_fp32_dots.py [ieee|tf32]

- ``in_registers``: the tile stays in registers and each layer is one dot over K = 128, as in
  the first Triton kernels. With exact fp32 dots ("ieee": FMA, no tensor cores) ptxas ends
  at 32 registers and ~9 KB of stack per thread: Triton's FMA dot holds its operands' whole
  K extent in registers.
- ``split_in_registers``: the same tile cut into four K-chunks with reshape/permute/split.
- ``scratch_k_loop``: the tile is written to a per-program scratch buffer (L2) and each
  layer is a loop over K-chunks of 32 reloaded from it (the matmul tutorial's K loop).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from sobolev_kernels.triton.aot import resources  # noqa: E402  (cuobjdump's REG and STACK)


@triton.jit
def _activation(z):
    return z * (1.0 - z * z) + z  # a cheap smooth stand-in: the dots are what is probed


@triton.jit
def in_registers(x_ptr, w_ptr, o_ptr, N: tl.constexpr, R: tl.constexpr, L: tl.constexpr,
                 P: tl.constexpr):  # fmt: skip
    r, c = tl.arange(0, R), tl.arange(0, N)
    h = tl.load(x_ptr + r[:, None] * N + c[None, :])
    for layer in tl.static_range(L):
        wt = tl.load(w_ptr + layer * N * N + c[:, None] + c[None, :] * N)  # W^T
        h = _activation(tl.dot(h, wt, input_precision=P))
    tl.store(o_ptr + r[:, None] * N + c[None, :], h)


@triton.jit
def _halves(a, R: tl.constexpr, N: tl.constexpr):
    """Columns [0, N/2) and [N/2, N) of an (R, N) register tile."""
    return tl.split(tl.permute(tl.reshape(a, (R, 2, N // 2)), (0, 2, 1)))


@triton.jit
def split_in_registers(x_ptr, w_ptr, o_ptr, N: tl.constexpr, R: tl.constexpr,
                       L: tl.constexpr, P: tl.constexpr):  # fmt: skip
    r, c, kb = tl.arange(0, R), tl.arange(0, N), tl.arange(0, N // 4)
    h = tl.load(x_ptr + r[:, None] * N + c[None, :])
    for layer in tl.static_range(L):
        a, b = _halves(h, R, N)
        h0, h1 = _halves(a, R, N // 2)
        h2, h3 = _halves(b, R, N // 2)
        w = w_ptr + layer * N * N + c[None, :] * N
        z = tl.dot(h0, tl.load(w + kb[:, None]), input_precision=P)
        z += tl.dot(h1, tl.load(w + (N // 4 + kb)[:, None]), input_precision=P)
        z += tl.dot(h2, tl.load(w + (N // 2 + kb)[:, None]), input_precision=P)
        z += tl.dot(h3, tl.load(w + (3 * N // 4 + kb)[:, None]), input_precision=P)
        h = _activation(z)
    tl.store(o_ptr + r[:, None] * N + c[None, :], h)


@triton.jit
def scratch_k_loop(x_ptr, w_ptr, s_ptr, o_ptr, N: tl.constexpr, R: tl.constexpr,
                   L: tl.constexpr, P: tl.constexpr, KB: tl.constexpr):  # fmt: skip
    r, c, kb = tl.arange(0, R), tl.arange(0, N), tl.arange(0, KB)
    h = tl.load(x_ptr + r[:, None] * N + c[None, :])
    for layer in tl.static_range(L):
        tl.store(s_ptr + r[:, None] * N + c[None, :], h)
        tl.debug_barrier()  # the whole tile is written before any thread reloads a chunk
        z = tl.zeros((R, N), tl.float32)
        for k0 in tl.range(0, N, KB):
            hk = tl.load(s_ptr + r[:, None] * N + (k0 + kb)[None, :])
            wk = tl.load(w_ptr + layer * N * N + (k0 + kb)[:, None] + c[None, :] * N)
            z += tl.dot(hk, wk, input_precision=P)
        tl.debug_barrier()  # every chunk is read before the next layer overwrites the tile
        h = _activation(z)
    tl.store(o_ptr + r[:, None] * N + c[None, :], h)


def main(precision: str = "ieee") -> None:
    n, layers = 128, 4
    variants = [(in_registers, {}), (split_in_registers, {}), (scratch_k_loop, {"KB": 32})]
    print(
        f"| variant | rows | warps | REG | STACK | shared | ({precision}, sm_90, "
        f"triton {triton.__version__}) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for rows, warps in [(32, 4), (64, 8)]:
        for fn, extra in variants:
            ptrs = ["x_ptr", "w_ptr"] + (["s_ptr"] if fn is scratch_k_loop else []) + ["o_ptr"]
            constexprs = dict(N=n, R=rows, L=layers, P=precision, **extra)
            signature = {p: "*fp32" for p in ptrs} | {k: "constexpr" for k in constexprs}
            compiled = triton.compile(
                ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=GPUTarget("cuda", 90, 32), options={"num_warps": warps},
            )  # fmt: skip
            res = resources(compiled)
            print(f"| {fn.__name__} | {rows} | {warps} | {res.get('REG')} | "
                  f"{res.get('STACK')} | {compiled.metadata.shared} | |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
