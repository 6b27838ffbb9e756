"""One small training step per fused GPU backend, orders 1 and 2, for compute-sanitizer.

    compute-sanitizer --tool memcheck python scripts/sanitize_case.py
    compute-sanitizer --tool racecheck python scripts/sanitize_case.py
    python scripts/sanitize_case.py --dry-run     # the cases, run nothing (no GPU needed)

Sizes are odd on purpose (partial row tiles, padded widths, K not a power of two) so the
masked edges of every kernel run. Exits non-zero if a backend disagrees with reference.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

import sobolev_kernels as sk

ORDERS = (1, 2)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Each backend's variants besides its default, chosen by the environment variable the backend
# reads per call: the kernels a GPU's tuner may pick (or a user may force). fp32 only, to keep
# the sanitizer's run short; the defaults run every dtype. The newest kernels first: the GPU
# script's time limit may cut the list.
# the split-K weight gradients on 128 x 128 tiles, 8 warps (the newest Triton kernel form)
SPLITK_WIDE = {"SOBOLEV_TRITON_WEIGHT_GRAD": "splitk_wide", "SOBOLEV_TRITON_BACKWARD": "separate"}
# the fp32 weight gradients' GEMMs by CUTLASS's 3xTF32 split-K GEMM (the Triton backend's
# "cutlass" method calls the same op)
CUTLASS = {"SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass"}
# the GEMMs' operands and bias partials stored by the fused backward kernel (the newest CUDA
# form; its bf16 adjoints are stored as bf16 alone: ALSO_BF16), read in fp32 by CUTLASS's GEMM
# where a layer's widths suit it (HIDDEN; bf16's GEMMs are cuBLAS's): both of the bench's
# providers that set it
BACKWARD_OPERANDS = {
    "SOBOLEV_CUDA_GEMM_OPERANDS": "backward",
    "SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass",
}
# the fused forward's activation pass 4 elements at a time (16-bit kernels only: BF16_ONLY)
BATCHED_PASS = {"SOBOLEV_CUDA_FORWARD_PASS": "batched"}
# the backward of a forward that kept nothing, 32 of the 77 samples at a time (the newest CUDA
# form: chunks starting at rows no tile divides)
CUDA_ROW_CHUNKS = {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_CUDA_RECOMPUTE_ROWS": "32"}
VARIANTS = {
    "triton": [
        SPLITK_WIDE,  # (a model wider than 64: HIDDEN)
        # the layer inputs stacks stored transposed, read so by the split-K weight gradients
        {"SOBOLEV_TRITON_INPUTS_LAYOUT": "kmajor", "SOBOLEV_TRITON_WEIGHT_GRAD": "splitk"},
        # the forward storing its activated layers (here on the static launch of order 2, two
        # direction groups of K = 3: the second reloads z after a barrier; order 1 takes all
        # three at once and stays as it is), with and without a backward's saved stacks
        {"SOBOLEV_TRITON_FORWARD_ACTIVATED": "1"},
        {"SOBOLEV_TRITON_FORWARD_ACTIVATED": "1", "SOBOLEV_SAVE_ACTIVATIONS": "0"},
        # the forward and backward with their tiles in registers (forward_resident.py,
        # backward_resident.py; the backward opt-in)
        {
            "SOBOLEV_TRITON_FORWARD": "resident",
            "SOBOLEV_TRITON_BACKWARD_KERNEL": "resident",
            "SOBOLEV_TRITON_BACKWARD": "separate",
        },
        {"SOBOLEV_TRITON_WEIGHT_GRAD": "splitk"},
        {"SOBOLEV_TRITON_WEIGHT_GRAD": "recompute"},
        # the whole backward in one persistent launch; and with nothing saved, the backward
        # recomputing 32 of the 77 samples at a time, or per row tile in the persistent launch
        {"SOBOLEV_TRITON_BACKWARD": "persistent"},
        {
            "SOBOLEV_SAVE_ACTIVATIONS": "0",
            "SOBOLEV_TRITON_BACKWARD": "separate",
            "SOBOLEV_TRITON_RECOMPUTE_ROWS": "32",
        },
        {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_TRITON_BACKWARD": "persistent"},
    ],
    "cuda": [
        CUDA_ROW_CHUNKS,
        BACKWARD_OPERANDS,
        BATCHED_PASS,
        CUTLASS,  # (hidden widths 80 and 24: HIDDEN)
        # (the default: fused kernels, dW by cuBLAS GEMMs); dW by the tensor-core split-K
        # (fp32 and bf16: ALSO_BF16) and db from the operand kernels' partials, neither yet
        # run on a GPU; the fused backward's own dW kernel
        {"SOBOLEV_CUDA_WEIGHT_GRADS": "splitk_tc"},
        {"SOBOLEV_CUDA_BIAS_SUMS": "operands"},
        {"SOBOLEV_CUDA_KERNEL": "fused", "SOBOLEV_CUDA_WEIGHT_GRADS": "splitk"},
        {"SOBOLEV_CUDA_KERNEL": "tiled"},
        {"SOBOLEV_CUDA_KERNEL": "tiled_tc"},
        # the fp32 weights staged as their TF32 parts (width 64 here: one panel)
        {"SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT": "staged"},
        # (SOBOLEV_CUDA_FUSED_OCCUPANCY changes nothing at these widths, below 128)
    ],
}


# The variants whose bf16 kernels are more than fp32's with other products: run in bf16 too
# (splitk_tc stages bf16's operands as pairs of rows, fp32's as words; the row chunks add
# bf16's gradients in fp32).
ALSO_BF16 = [{"SOBOLEV_CUDA_WEIGHT_GRADS": "splitk_tc"}, SPLITK_WIDE, BACKWARD_OPERANDS,
             CUDA_ROW_CHUNKS]  # fmt: skip
# and those that differ from the default in 16-bit models only: run in bf16 alone
BF16_ONLY = [BATCHED_PASS]
# The variants that differ from another only in other hidden widths than 37 and 21:
# splitk_wide's tiles are splitk's up to 64; CUTLASS's GEMM takes a layer whose widths are
# multiples of 4 (here the second: 24 x 80), the others go to cuBLAS.
HIDDEN = [(SPLITK_WIDE, [80, 21]), (CUTLASS, [80, 24]), (BACKWARD_OPERANDS, [80, 24])]


def hidden_widths(variant: dict | None) -> list[int]:
    return next((hidden for v, hidden in HIDDEN if v == variant), [37, 21])


def cases(backends) -> list[tuple]:
    """(backend, {variable: value} or None, order, dtype): the defaults in every dtype, then
    the variants in fp32 (and ALSO_BF16's in bf16; BF16_ONLY's in bf16 alone), taking the
    backends in turn (the GPU script's time limit cut run 3 of 2026-11-27 before any CUDA
    variant when they came after all of Triton's)."""
    out = [(b, None, o, d) for b, o, d in itertools.product(backends, ORDERS, DTYPES)]
    per_backend = [[(b, v) for v in VARIANTS[b]] for b in backends]
    for turn in itertools.zip_longest(*per_backend):
        for backend, v in filter(None, turn):
            dtypes = ((torch.bfloat16,) if v in BF16_ONLY
                      else (torch.float32, torch.bfloat16) if v in ALSO_BF16
                      else (torch.float32,))  # fmt: skip
            out += [(backend, v, o, d) for d in dtypes for o in ORDERS]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    args = parser.parse_args(argv)
    backends = ("triton", "cuda")
    if args.dry_run:
        here = sk.available_backends()
        for backend, variant, order, dtype in cases(backends):
            note = "" if backend in here else " (backend not available here)"
            print(f"{_name(backend, variant)} order {order} {dtype}{note}")
        return 0
    torch.manual_seed(0)
    device = "cuda"
    failures = 0
    for backend, variant, order, dtype in cases(backends):
        if backend not in sk.available_backends():
            continue
        name = _name(backend, variant)
        os.environ.update(variant or {})
        try:
            failures += not _one_case(backend, name, order, dtype, device,
                                      hidden_widths(variant))  # fmt: skip
        finally:
            for variable in variant or {}:
                del os.environ[variable]
    torch.cuda.synchronize()
    return 1 if failures else 0


def _name(backend: str, variant: dict | None) -> str:
    return " ".join([backend, *(f"{k}={v}" for k, v in (variant or {}).items())])


def _one_case(backend: str, name: str, order: int, dtype: torch.dtype, device: str,
              hidden: list[int]) -> bool:  # fmt: skip
    """One training step against reference (hidden layers of the widths ``hidden``); False
    on a mismatch."""
    model = sk.SobolevMLP(5, hidden, 3, 3, activation="tanh").to(device, dtype)
    x = torch.randn(77, 5, device=device, dtype=dtype, requires_grad=True)
    y = torch.randn(77, 3, device=device, dtype=dtype)
    dirs = torch.randn(77, 3, 5, device=device, dtype=dtype)
    kw = dict(target_grad=torch.randn(77, 3, 5, device=device, dtype=dtype),
              directions=dirs, order=order)  # fmt: skip
    if order == 2:
        kw["target_hess"] = torch.randn(77, 3, 5, 5, device=device, dtype=dtype)
    try:
        loss = sk.sobolev_loss(model, x, y, backend=backend, **kw)
    except ValueError as exc:  # e.g. an order the backend does not implement
        print(f"{name} order {order} {dtype}: skipped ({exc})")
        return True
    loss.backward()
    ref = sk.sobolev_loss(model, x, y, backend="reference", **kw)
    ok = torch.allclose(loss, ref.to(loss.dtype), rtol=3e-2, atol=1e-3)
    print(f"{name} order {order} {dtype}: loss {loss.item():.6g} "
          f"reference {ref.item():.6g} {'ok' if ok else 'MISMATCH'}")  # fmt: skip
    return ok


if __name__ == "__main__":
    sys.exit(main())
