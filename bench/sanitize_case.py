"""One small training step per fused GPU backend, orders 1 and 2, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/sanitize_case.py
    compute-sanitizer --tool racecheck python bench/sanitize_case.py

Sizes are odd on purpose (partial row tiles, padded widths, K not a power of two) so the
masked edges of every kernel run. Exits non-zero if a backend disagrees with reference.
"""

from __future__ import annotations

import sys

import torch

import sobolev_kernels as sk


def main() -> int:
    torch.manual_seed(0)
    device = "cuda"
    failures = 0
    for backend in [b for b in ("triton", "cuda") if b in sk.available_backends()]:
        for order in (1, 2):
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
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
