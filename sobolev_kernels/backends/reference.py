"""Backend ``reference``: ``torch.func.jvp`` vmapped over directions, then ordinary autograd.

The oracle every other backend is tested against. It takes any module or callable that maps
``(B, d)`` rows independently to ``(B, m)`` (or ``(B,)``), so it is also the fallback for
models the fused backends cannot take. It is slow: autograd differentiates through the
forward-mode graph (reverse-over-forward), which stores both.

torch's forward-mode formula for ``layer_norm`` treats the saved mean and rstd as constants,
so reverse mode through it gives wrong parameter gradients (seen in torch 2.13; the same
defect makes its nested JVP wrong, pytorch/pytorch#196700). Models containing
``nn.LayerNorm`` therefore get their JVPs from Jacobian rows built by reverse mode (one pass
per output, then double backward), which is correct. A functional ``F.layer_norm`` call
inside a custom ``forward`` cannot be detected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import jvp, vmap

from ..problem import SobolevProblem, projected_mse_loss
from .base import Backend


def model_jvp(
    model: Callable[[Tensor], Tensor], x: Tensor, directions: Tensor, order: int = 1
) -> tuple[Tensor, ...]:
    """f (B, m) and u (B, K, m), u[:, k] = J_f(x) v_k; for order 2 also w (B, K, m),
    w[:, k] = v_k^T H_f(x) v_k (nested jvp, Taylor mode). Differentiable by autograd.

    directions: (K, d) shared or (B, K, d) per row.
    """

    def f2d(inp: Tensor) -> Tensor:
        out = model(inp)
        return out.unsqueeze(-1) if out.ndim == 1 else out

    batch = x.shape[0]
    if directions.ndim == 2:
        tangents = directions.unsqueeze(1).expand(-1, batch, -1)  # (K, B, d)
    else:
        tangents = directions.transpose(0, 1)

    def one_direction(v: Tensor) -> tuple[Tensor, ...]:
        if order == 1:
            return (jvp(f2d, (x,), (v,))[1],)
        # d/de [J_f(x + e v) v] at e = 0 is v^T H v; the inner jvp's primal output is J v
        return jvp(lambda p: jvp(f2d, (p,), (v,))[1], (x,), (v,))

    if isinstance(model, nn.Module) and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return _jvp_by_reverse_mode(f2d, x, tangents, order)
    try:
        derivatives = vmap(one_direction)(tangents)
    except RuntimeError:
        # Some callables cannot be vmapped (data-dependent control flow, .item()); a loop over
        # the K directions computes exactly the same thing.
        per_k = [one_direction(v) for v in tangents.unbind(0)]
        derivatives = [torch.stack(parts) for parts in zip(*per_k)]
    return (f2d(x), *(d.transpose(0, 1) for d in derivatives))


def _jvp_by_reverse_mode(
    f2d: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor, order: int
) -> tuple[Tensor, ...]:
    """J v (and v^T H v) from reverse-mode rows, ``autograd.grad(create_graph=True)``.

    tangents: (K, B, d). One reverse pass per output, and for order 2 one more per output
    and direction (H_i v_k, then dotted with v_k).
    """
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = f2d(x_in)
        rows = [
            torch.autograd.grad(f[:, i].sum(), x_in, create_graph=True)[0]
            for i in range(f.shape[1])
        ]
        jac = torch.stack(rows, dim=1)  # (B, m, d)
        out = [f, torch.einsum("bmd,kbd->bkm", jac, tangents)]
        if order == 2:
            w = [
                [
                    (torch.autograd.grad((row * v).sum(), x_in, create_graph=True)[0] * v).sum(-1)
                    for row in rows
                ]
                for v in tangents.unbind(0)
            ]  # w[k][i]: (B,)
            out.append(torch.stack([torch.stack(wk, -1) for wk in w], 1))
    return tuple(out)


class ReferenceBackend(Backend):
    name = "reference"
    needs_mlp = False  # any module or callable

    def sobolev_loss(self, problem: SobolevProblem) -> tuple[Tensor, Tensor]:
        f, *derivatives = self.mlp_jvp(problem)
        return projected_mse_loss(problem, f, *derivatives), f

    def mlp_jvp(self, problem: SobolevProblem) -> tuple[Tensor, ...]:
        f, u, *w = model_jvp(problem.model, problem.x, problem.directions, problem.order)
        problem.check_model_output(f, u)
        return (f, u, *w)


BACKEND = ReferenceBackend()
