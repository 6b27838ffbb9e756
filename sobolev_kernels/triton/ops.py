"""The Triton kernels as ``torch.library`` custom ops with a registered autograd and fake kernels.

Registered ops are opaque to ``torch.compile``: a training step calling them compiles with
``fullgraph=True``, with no graph break and no double backward (the backward is itself an op).

The forward op returns ``(loss, f, rf, ru, rw, z)``. The residuals ``rf = f - y``,
``ru = u - g`` and ``rw = w - g2`` are differentiable outputs too (each has derivative 1 with
respect to f, u, w), which is how ``mlp_jvp`` (run with no targets, so ``ru = u``,
``rw = w``) gets its gradients through the same backward kernel; ``z``, the saved
pre-activation stack, has no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sobolev_mlp import sobolev_backward, sobolev_forward

_NAMESPACE = "sobolev_kernels"


@torch.library.custom_op(f"{_NAMESPACE}::triton_sobolev_fwd", mutates_args=())
def sobolev_fwd(
    x: Tensor,
    v: Tensor,
    y: Tensor | None,
    target: Tensor | None,
    target2: Tensor | None,
    weights: list[Tensor],
    biases: list[Tensor],
    target_kind: int,
    target2_kind: int,
    activation: int,
    slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    save: bool,
    allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return sobolev_forward(
        x, v, y, target, target_kind, target2, target2_kind, weights, biases, activation,
        slope, alpha, beta, gamma, order, save, allow_tf32,
    )  # fmt: skip


@sobolev_fwd.register_fake
def _(x, v, y, target, target2, weights, biases, target_kind, target2_kind, activation, slope,
      alpha, beta, gamma, order, save, allow_tf32):  # fmt: skip
    batch, k, m = x.shape[0], v.shape[-2], weights[-1].shape[0]
    hidden = sum(w.shape[0] for w in weights[:-1])
    f32 = torch.float32
    return (
        x.new_empty((), dtype=f32),
        x.new_empty(batch, m),
        x.new_empty(batch, m, dtype=f32),
        x.new_empty(k, batch, m, dtype=f32),
        x.new_empty(k if order == 2 else 0, batch, m, dtype=f32),
        x.new_empty((1 + order * k) * batch * hidden if save else 0),
    )


@torch.library.custom_op(f"{_NAMESPACE}::triton_sobolev_bwd", mutates_args=())
def sobolev_bwd(
    grad_loss: Tensor,
    grad_f: Tensor | None,
    grad_rf: Tensor | None,
    grad_ru: Tensor | None,
    grad_rw: Tensor | None,
    x: Tensor,
    v: Tensor,
    rf: Tensor,
    ru: Tensor,
    rw: Tensor,
    z: Tensor,
    weights: list[Tensor],
    has_bias: bool,
    activation: int,
    slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    has_y: bool,
    need_dx: bool,
    allow_tf32: bool,
) -> tuple[Tensor, list[Tensor], Tensor]:
    """(dx, [dW_l], db): db holds every layer's bias gradient, concatenated."""
    dx, grad_w, grad_b = sobolev_backward(
        grad_loss, grad_f, grad_rf, grad_ru, grad_rw, x, v, rf, ru, rw, z, weights, has_bias,
        activation, slope, alpha, beta, gamma, order, has_y, need_dx, allow_tf32,
    )  # fmt: skip
    # custom ops return tensors, never None: an empty dx stands for "not needed"
    return (dx if dx is not None else x.new_empty(0)), grad_w, grad_b


@sobolev_bwd.register_fake
def _(grad_loss, grad_f, grad_rf, grad_ru, grad_rw, x, v, rf, ru, rw, z, weights, has_bias,
      activation, slope, alpha, beta, gamma, order, has_y, need_dx, allow_tf32):  # fmt: skip
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    grad_w = [torch.empty_like(w) for w in weights]
    grad_b = weights[0].new_empty(sum(w.shape[0] for w in weights) if has_bias else 0)
    return dx, grad_w, grad_b


def _setup_context(ctx, inputs, output):
    (x, v, y, _, _, weights, biases, _, _, activation, slope, alpha, beta, gamma, order, _,
     allow_tf32) = inputs  # fmt: skip
    _, _, rf, ru, rw, z = output
    ctx.save_for_backward(x, v, rf, ru, rw, z, *weights)
    ctx.has_bias = bool(biases)
    ctx.has_y = y is not None
    ctx.options = (activation, slope, alpha, beta, gamma, order, allow_tf32)


def _backward(ctx, grad_loss, grad_f, grad_rf, grad_ru, grad_rw, _grad_z):
    x, v, rf, ru, rw, z, *weights = ctx.saved_tensors
    activation, slope, alpha, beta, gamma, order, allow_tf32 = ctx.options
    if grad_loss is None:
        grad_loss = rf.new_zeros(())
    # Incoming gradients may be any view (u reaches users transposed); the kernel reads rows.
    grad_f, grad_rf, grad_ru, grad_rw = (
        g.contiguous() if g is not None and g.numel() else None
        for g in (grad_f, grad_rf, grad_ru, grad_rw)
    )
    need_dx = ctx.needs_input_grad[0]
    dx, grad_w, grad_b = sobolev_bwd(
        grad_loss, grad_f, grad_rf, grad_ru, grad_rw, x, v, rf, ru, rw, z, weights,
        ctx.has_bias, activation, slope, alpha, beta, gamma, order, ctx.has_y, need_dx,
        allow_tf32,
    )  # fmt: skip
    if ctx.has_bias:  # split outside the op: custom-op outputs may not alias each other
        grad_b = list(grad_b.split([w.shape[0] for w in weights]))
    return (dx if need_dx else None, None, None, None, None, grad_w,
            grad_b if ctx.has_bias else []) + (None,) * 10  # fmt: skip


sobolev_fwd.register_autograd(_backward, setup_context=_setup_context)
