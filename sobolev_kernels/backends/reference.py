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

NAME = "reference"


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(problem: SobolevProblem) -> str | None:
    return None


def model_jvp(
    model: Callable[[Tensor], Tensor], x: Tensor, directions: Tensor
) -> tuple[Tensor, Tensor]:
    """f: (B, m) and u: (B, K, m) with u[:, k] = J_f(x) v_k; differentiable by autograd.

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

    def one_direction(v: Tensor) -> Tensor:
        return jvp(f2d, (x,), (v,))[1]

    if isinstance(model, nn.Module) and any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        return _jvp_by_reverse_mode(f2d, x, tangents)
    try:
        u = vmap(one_direction)(tangents)
    except RuntimeError:
        # Some callables cannot be vmapped (data-dependent control flow, .item()); a loop over
        # the K directions computes exactly the same thing.
        u = torch.stack([one_direction(v) for v in tangents.unbind(0)])
    return f2d(x), u.transpose(0, 1)


def _jvp_by_reverse_mode(
    f2d: Callable[[Tensor], Tensor], x: Tensor, tangents: Tensor
) -> tuple[Tensor, Tensor]:
    """J v from Jacobian rows by ``autograd.grad(create_graph=True)``: tangents (K, B, d)."""
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = f2d(x_in)
        rows = [
            torch.autograd.grad(f[:, i].sum(), x_in, create_graph=True)[0]
            for i in range(f.shape[1])
        ]
    jac = torch.stack(rows, dim=1)  # (B, m, d)
    return f, torch.einsum("bmd,kbd->bkm", jac, tangents)


def sobolev_loss(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    f, u = mlp_jvp(problem)
    return projected_mse_loss(f, u, problem), f


def mlp_jvp(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    f, u = model_jvp(problem.model, problem.x, problem.directions)
    problem.check_model_output(f, u)
    return f, u
