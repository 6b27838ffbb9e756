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
import sys

import torch

import sobolev_kernels as sk

ORDERS = (1, 2)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    args = parser.parse_args(argv)
    backends = ("triton", "cuda")
    if args.dry_run:
        here = sk.available_backends()
        for backend, order, dtype in itertools.product(backends, ORDERS, DTYPES):
            note = "" if backend in here else " (backend not available here)"
            print(f"{backend} order {order} {dtype}{note}")
        return 0
    torch.manual_seed(0)
    device = "cuda"
    failures = 0
    for backend in [b for b in backends if b in sk.available_backends()]:
        for order in ORDERS:
            for dtype in DTYPES:
                model = sk.SobolevMLP(5, [37, 21], 3, 3, activation="tanh").to(device, dtype)
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
                    print(f"{backend} order {order} {dtype}: skipped ({exc})")
                    continue
                loss.backward()
                ref = sk.sobolev_loss(model, x, y, backend="reference", **kw)
                ok = torch.allclose(loss, ref.to(loss.dtype), rtol=3e-2, atol=1e-3)
                failures += not ok
                print(f"{backend} order {order} {dtype}: loss {loss.item():.6g} "
                      f"reference {ref.item():.6g} {'ok' if ok else 'MISMATCH'}")  # fmt: skip
    torch.cuda.synchronize()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
