"""The validated description of one Sobolev loss evaluation, handed from ``api`` to a backend.

``api.py`` builds a ``SobolevProblem`` from user input (checking every shape, dtype and
device); backends trust it and never re-validate. The loss formula shared by the unfused
backends lives here too, so ``reference`` and ``torch`` cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .mlp import SobolevMLP

__all__ = ["SobolevProblem", "accumulation_dtype", "projected_mse_loss"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for bf16/fp16 inputs (reductions and losses accumulate there), else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


@dataclass
class SobolevProblem:
    """Inputs of one loss evaluation, already checked for shape, dtype and device.

    x: (B, d); y: (B, m) or None; directions: (K, d) shared or (B, K, d) per row;
    exactly one of target_jvp (B, K, m) or target_grad (B, m, d) (or neither, for
    ``mlp_jvp``); for order 2 also exactly one of target_hvp2 (B, K, m) or target_hess
    (B, m, d, d). Targets and directions are detached: they receive no gradient.
    """

    model: Callable[[Tensor], Tensor]
    mlp: SobolevMLP | None
    x: Tensor
    y: Tensor | None
    directions: Tensor
    target_jvp: Tensor | None = None
    target_grad: Tensor | None = None
    alpha: float = 1.0
    beta: float = 1.0
    order: int = 1
    target_hvp2: Tensor | None = None
    target_hess: Tensor | None = None
    gamma: float = 1.0
    # The MLP's parameters as the fused backends should use them: the module's own tensors, or
    # their differentiable casts to the autocast dtype (x and directions are cast alike).
    weights: list[Tensor] | None = None
    biases: list[Tensor] | None = None
    autocast: bool = False
    # why the fused backends cannot take ``model`` (when ``mlp`` is None), for the fallback
    # warning: "ELU at index 1 of the Sequential is an unsupported activation; ..."
    model_reason: str | None = None

    def __post_init__(self) -> None:
        if self.mlp is not None and self.weights is None:
            self.weights = list(self.mlp.weights())
            self.biases = list(self.mlp.biases() or [])

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def in_features(self) -> int:
        return self.x.shape[1]

    @property
    def num_directions(self) -> int:
        return self.directions.shape[-2]

    @property
    def shared_directions(self) -> bool:
        return self.directions.ndim == 2

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device

    def cast_for_autocast(self) -> SobolevProblem:
        """Under torch.autocast, an fp32 MLP's fused path computes in the autocast dtype.

        x, the directions and the parameters are cast (differentiably, so fp32 gradients flow
        back); targets keep their dtype, the kernels read them into fp32 accumulators. In
        place; returns the problem.
        """
        device = self.device.type
        if self.mlp is None or self.dtype != torch.float32:
            return self
        if not torch.is_autocast_enabled(device):
            return self
        amp = torch.get_autocast_dtype(device)
        self.x = self.x.to(amp)
        self.directions = self.directions.to(amp)
        self.weights = [w.to(amp) for w in self.weights]
        self.biases = [b.to(amp) for b in self.biases]
        self.autocast = True
        return self

    def precision_scope(self, backend: str):
        """The context a backend runs in: the MLP backends run on the already-cast tensors
        with autocast off; the reference runs the user's module, which autocast must cast."""
        if self.autocast and backend != "reference":
            return torch.autocast(self.device.type, enabled=False)
        return contextlib.nullcontext()

    def check_model_output(self, f: Tensor, u: Tensor) -> None:
        """For models only known by running them: f (B, m) and u (B, K, m) must fit the targets."""
        m = f.shape[-1] if f.ndim == 2 else None
        targets = [self.y, self.target_jvp, self.target_grad, self.target_hvp2, self.target_hess]
        for target, axis in zip(targets, (1, 2, 1, 2, 1)):
            if target is not None:
                m = target.shape[axis]
        expected = (self.batch, m)
        if tuple(f.shape) != expected or tuple(u.shape) != (self.batch, self.num_directions, m):
            raise ValueError(
                f"model: returned shape {tuple(f.shape)}, expected {expected} to match x and "
                "the targets"
            )

    def projected_targets(self) -> Tensor:
        """g: (B, K, m), the target derivatives along the directions."""
        if self.target_jvp is not None:
            return self.target_jvp
        assert self.target_grad is not None, "api guarantees one derivative target"
        eq = "bmd,kd->bkm" if self.shared_directions else "bmd,bkd->bkm"
        # in the targets' dtype: under autocast the directions are cast down, targets are not
        return torch.einsum(eq, self.target_grad, self.directions.to(self.target_grad.dtype))

    def projected_targets2(self) -> Tensor:
        """g2: (B, K, m), the target second directional derivatives v_k^T H_g v_k."""
        if self.target_hvp2 is not None:
            return self.target_hvp2
        assert self.target_hess is not None, "api guarantees one second-order target"
        eq = "bmij,ki,kj->bkm" if self.shared_directions else "bmij,bki,bkj->bkm"
        v = self.directions.to(self.target_hess.dtype)
        return torch.einsum(eq, self.target_hess, v, v)


def projected_mse_loss(
    problem: SobolevProblem, f: Tensor, u: Tensor, w: Tensor | None = None
) -> Tensor:
    """alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2) for order 2].

    f: (B, m); u, w: (B, K, m). Accumulated in fp32 for bf16/fp16. The value term is dropped
    when ``problem.y`` is None.
    """
    acc = accumulation_dtype(f.dtype)
    g = problem.projected_targets()
    loss = problem.beta * (u.to(acc) - g.to(acc)).square().mean()
    if problem.y is not None:
        loss = loss + problem.alpha * (f.to(acc) - problem.y.to(acc)).square().mean()
    if problem.order == 2:
        g2 = problem.projected_targets2()
        loss = loss + problem.gamma * (w.to(acc) - g2.to(acc)).square().mean()
    return loss
