"""What users write today without this library, for tests and benchmarks to compare against.

``eager_autograd_loss`` is the textbook Sobolev loss: Jacobian rows by
``autograd.grad(create_graph=True)`` (one reverse pass per output), projected on the
directions, then differentiated again by ``loss.backward()`` (double backward). It shares no
code with any backend, which makes it an independent check of the ``reference`` backend.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["eager_autograd_loss"]


def eager_autograd_loss(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor | None,
    target_jvp: Tensor,
    directions: Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    target_hvp2: Tensor | None = None,
    gamma: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(loss, f) by double backward. target_jvp: (B, K, m); directions: (K, d) or (B, K, d).

    With ``target_hvp2`` (B, K, m) it adds the order-2 term: ``H_i v_k`` by one more reverse
    pass per output and direction (``create_graph=True`` again), so the training step is a
    triple backward. Gradients reach ``x`` only if it requires grad.
    """
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    f = model(x_in)
    f = f.unsqueeze(-1) if f.ndim == 1 else f
    rows = [
        torch.autograd.grad(f[:, i].sum(), x_in, create_graph=True)[0] for i in range(f.shape[1])
    ]
    jac = torch.stack(rows, dim=1)  # (B, m, d): rows of one sample only depend on that sample
    eq = "bmd,kd->bkm" if directions.ndim == 2 else "bmd,bkd->bkm"
    u = torch.einsum(eq, jac, directions)
    loss = beta * (u - target_jvp).square().mean()
    if y is not None:
        loss = loss + alpha * (f - y.reshape(f.shape)).square().mean()
    if target_hvp2 is not None:
        per_row = directions if directions.ndim == 3 else directions.expand(x.shape[0], -1, -1)
        w = torch.stack([
            torch.stack([
                (torch.autograd.grad((row * v).sum(), x_in, create_graph=True)[0] * v).sum(-1)
                for row in rows
            ], dim=-1)
            for v in per_row.unbind(1)
        ], dim=1)  # fmt: skip
        loss = loss + gamma * (w - target_hvp2).square().mean()
    return loss, f
