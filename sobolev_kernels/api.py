"""Public entry points: ``sobolev_loss``, ``mlp_jvp``, ``SobolevLoss``, ``SobolevObjective``.

Each checks its input through ``validation`` (the one validator), picks a backend
(``backends.select``) and runs it in the problem's precision scope.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import backends, validation
from .problem import SobolevProblem
from .validation import Model

__all__ = ["sobolev_loss", "SobolevLoss", "SobolevObjective", "mlp_jvp"]


def sobolev_loss(
    model: Model,
    x: Tensor,
    y: Tensor | None,
    *,
    target_grad: Tensor | None = None,
    target_jvp: Tensor | None = None,
    teacher: Model | None = None,
    directions: Tensor | str | None = None,
    num_directions: int = 1,
    alpha: float = 1.0,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    return_outputs: bool = False,
    order: int = 1,
    gamma: float = 1.0,
    target_hess: Tensor | None = None,
    target_hvp2: Tensor | None = None,
    check_finite: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sobolev loss ``alpha * mse(f(x), y) + beta * mse(J_f(x) v, J_g(x) v)``.

    Args:
        model: a ``SobolevMLP`` (fused backends), an ``nn.Sequential`` of Linear/activation
            layers (adopted as a SobolevMLP), or any module/callable mapping rows ``(B, d)`` to
            ``(B, m)`` independently (``reference`` backend).
        x: ``(B, d)`` inputs; gets a gradient if it requires one.
        y: ``(B, m)`` target values (``(B,)`` when m == 1), or None to drop the value term.
        target_grad: ``(B, m, d)`` target Jacobians (``(B, d)`` when m == 1), or
        target_jvp: ``(B, K, m)`` targets already projected on ``directions``, or
        teacher: a module/callable whose JVPs along the directions are the targets.
            Exactly one of the three. Targets are constants: they receive no gradient.
        directions: None (sample ``num_directions`` per row, uniform on the unit sphere, from
            ``generator``), a ``(K, d)`` tensor shared by all rows, a ``(B, K, d)`` tensor, or
            ``"full"`` (the d basis vectors: full Jacobian matching).
        alpha, beta: weights of the value and derivative terms (finite, >= 0). The derivative
            term is a mean over rows, directions and outputs; for unit directions uniform on
            the sphere, E[(v^T e)^2] = |e|^2 / d, so it estimates ||J_f - J_g||_F^2 / (d m),
            exactly what ``directions="full"`` computes. To weigh the squared Frobenius
            error of each row's Jacobian against the value error, use ``beta = d``.
        backend: ``"auto"`` or one of ``available_backends()``.
        return_outputs: also return ``f (B, m)``, differentiable, for a user's own value loss.
        order: 1, or 2 to add ``gamma * mse(v^T H_f v, v^T H_g v)``, the second directional
            derivatives along the same directions (for every output). With
            ``directions="full"`` that matches the diagonal of the Hessians.
        gamma: weight of the second-order term (order 2).
        target_hess: ``(B, m, d, d)`` target Hessians (``(B, d, d)`` when m == 1), or
        target_hvp2: ``(B, K, m)`` target ``v_k^T H_g v_k`` along ``directions``; order 2 needs
            exactly one of them, or a ``teacher`` (which then gives both orders).
        check_finite: raise a ``ValueError`` naming the first input (or parameter) holding a
            NaN or inf, or a zero direction on a GPU (on the CPU that is always checked). Off
            by default (it synchronises); non-finite values always propagate to a non-finite
            loss, never to a silent 0.

    Under ``torch.autocast`` an fp32 MLP runs its GEMMs in the autocast dtype (bf16/fp16),
    accumulating in fp32; the loss is fp32 and the gradients reach the fp32 parameters.

    Returns:
        The 0-dim loss (fp32 for bf16/fp16 inputs), or ``(loss, f)``.
    """
    validation.check_flag("return_outputs", return_outputs)
    validation.check_flag("check_finite", check_finite)
    problem = validation.build_problem(
        model, x, y,
        target_grad=target_grad, target_jvp=target_jvp, teacher=teacher,
        directions=directions, num_directions=num_directions,
        alpha=alpha, beta=beta, generator=generator, backend=backend,
        order=order, gamma=gamma, target_hess=target_hess, target_hvp2=target_hvp2,
    )  # fmt: skip
    if check_finite:
        validation.check_finite(problem)
    chosen = backends.select(backend, problem)
    with problem.precision_scope(chosen.name):
        loss, f = chosen.sobolev_loss(problem)
    return (loss, f) if return_outputs else loss


def mlp_jvp(
    model: Model, x: Tensor, directions: Tensor | str, *, backend: str = "auto", order: int = 1
) -> tuple[Tensor, ...]:
    """Forward pass and directional derivatives: ``(f, u)``, or ``(f, u, w)`` for order 2.

    ``f (B, m)``; ``u[:, k] = J_f(x) v_k`` and ``w[:, k] = v_k^T H_f(x) v_k``, both
    ``(B, K, m)``. ``directions`` is ``(K, d)`` shared, ``(B, K, d)`` per row, or ``"full"``.
    Every output is differentiable w.r.t. the model's parameters and ``x``.
    """
    validation.check_backend(backend)
    order = validation.check_order(order)
    model, mlp, why_unfused = validation.check_model(model, "model")
    x = validation.check_x(x, mlp, model)
    dirs = validation.resolve_directions(
        directions, 1, None, x, explicit=True, mlp=mlp, order=order
    )
    problem = SobolevProblem(
        model=model, mlp=mlp, x=x, y=None, directions=dirs, order=order,
        model_reason=why_unfused,
    ).cast_for_autocast()  # fmt: skip
    chosen = backends.select(backend, problem)
    with problem.precision_scope(chosen.name):
        return chosen.mlp_jvp(problem)


class SobolevLoss(nn.Module):
    """Module form of ``sobolev_loss`` holding the weights, K, directions, order and backend.

    ``forward(model, x, y, target_grad=..., target_jvp=..., teacher=..., target_hess=...,
    target_hvp2=..., directions=...)`` with the same meaning as ``sobolev_loss``;
    ``directions`` given to forward overrides the one given here. A directions tensor given
    here is a (non-persistent) buffer, so it follows ``.to()``, ``.double()`` and
    ``.cuda()`` of this module (or of a ``SobolevObjective`` holding it).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        num_directions: int = 1,
        directions: Tensor | str | None = None,
        backend: str = "auto",
        generator: torch.Generator | None = None,
        return_outputs: bool = False,
        order: int = 1,
        gamma: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.check_finite = validation.check_flag("check_finite", check_finite)
        self.alpha = validation.check_weight("alpha", alpha)
        self.beta = validation.check_weight("beta", beta)
        self.gamma = validation.check_weight("gamma", gamma)
        self.order = validation.check_order(order)
        self.num_directions = validation.check_num_directions(num_directions)
        if isinstance(directions, Tensor):
            if directions.ndim not in (2, 3):
                raise ValueError(
                    f"directions: expected a (K, d) or (B, K, d) tensor, got shape "
                    f"{tuple(directions.shape)}"
                )
            self.register_buffer("directions", directions.detach(), persistent=False)
        elif directions is None or (isinstance(directions, str) and directions == "full"):
            self.directions = directions
        else:
            raise ValueError(f"directions: expected None, a tensor or 'full', got {directions!r}")
        self.backend = validation.check_backend(backend)
        self.generator = validation.check_generator(generator)
        self.return_outputs = validation.check_flag("return_outputs", return_outputs)

    def forward(
        self,
        model: Model,
        x: Tensor,
        y: Tensor | None = None,
        *,
        target_grad: Tensor | None = None,
        target_jvp: Tensor | None = None,
        teacher: Model | None = None,
        target_hess: Tensor | None = None,
        target_hvp2: Tensor | None = None,
        directions: Tensor | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return sobolev_loss(
            model, x, y,
            target_grad=target_grad, target_jvp=target_jvp, teacher=teacher,
            target_hess=target_hess, target_hvp2=target_hvp2,
            directions=self.directions if directions is None else directions,
            num_directions=self.num_directions, alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, order=self.order, generator=self.generator,
            backend=self.backend, return_outputs=self.return_outputs,
            check_finite=self.check_finite,
        )  # fmt: skip

    def extra_repr(self) -> str:
        second = f", gamma={self.gamma}, order=2" if self.order == 2 else ""
        return (
            f"alpha={self.alpha}, beta={self.beta}{second}, "
            f"num_directions={self.num_directions}, backend={self.backend!r}"
        )


class SobolevObjective(nn.Module):
    """A model and its Sobolev loss as one module: ``forward(x, y, **targets) -> loss``.

    Wrap this (not the bare model) in ``DistributedDataParallel`` or FSDP: their gradient
    synchronisation is armed by the wrapper's forward, which here computes the loss::

        objective = DDP(sk.SobolevObjective(mlp, sk.SobolevLoss(beta=2.0, num_directions=4)))
        loss = objective(x, y, target_grad=dy)
        loss.backward()

    Its parameters are the model's. ``forward`` takes the keyword arguments of
    ``SobolevLoss.forward``.
    """

    def __init__(self, model: nn.Module, loss: SobolevLoss | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if loss is not None and not isinstance(loss, SobolevLoss):
            raise TypeError(f"loss: expected a SobolevLoss, got {type(loss).__name__}")
        self.model = model
        self.loss = loss if loss is not None else SobolevLoss()

    def forward(self, x: Tensor, y: Tensor | None = None, **targets: Any):
        return self.loss(self.model, x, y, **targets)
