"""What ``backend="auto"`` measures when two fused backends can take a problem: one trial
training step per backend, keyed by everything that makes steps differ in cost."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..problem import SobolevProblem

if TYPE_CHECKING:
    from .base import Backend


def choice_key(problem: SobolevProblem) -> tuple:
    """The shape, dtype, device, targets and gradient needs that set the cost of a step."""
    mlp = problem.mlp
    targets = tuple(
        t is not None
        for t in (problem.y, problem.target_jvp, problem.target_grad, problem.target_hvp2,
                  problem.target_hess)
    )  # fmt: skip
    grads = (problem.x.requires_grad, any(w.requires_grad for w in problem.weights))
    widths = tuple(mlp.widths) if mlp is not None else None
    activation = type(mlp.activation).__name__ if mlp is not None else None
    batch = 1 << max(0, problem.batch - 1).bit_length()  # rounded up to a power of two
    return ("backend", str(problem.device), problem.dtype, widths, activation, batch,
            problem.num_directions, problem.shared_directions, problem.order, targets, grads,
            torch.is_grad_enabled())  # fmt: skip


def trial_step(backend: Backend, problem: SobolevProblem) -> None:
    """One training step of ``problem`` on ``backend`` that touches nothing of the
    caller's: parameters and x are detached copies (the same storage, no ``.grad`` written)."""

    def fresh(t: Tensor) -> Tensor:
        return t.detach().requires_grad_(t.requires_grad and torch.is_grad_enabled())

    trial = dataclasses.replace(
        problem, x=fresh(problem.x), weights=[fresh(w) for w in problem.weights],
        biases=[fresh(b) for b in problem.biases],
    )  # fmt: skip
    with problem.precision_scope(backend.name):  # as the real step runs
        if problem.target_jvp is not None or problem.target_grad is not None:
            outputs = backend.sobolev_loss(trial)[:1]
        else:
            outputs = backend.mlp_jvp(trial)
        wrt = [t for t in (trial.x, *trial.weights, *trial.biases) if t.requires_grad]
        if wrt:
            total = sum(o.float().sum() for o in outputs)
            torch.autograd.grad(total, wrt, allow_unused=True)
