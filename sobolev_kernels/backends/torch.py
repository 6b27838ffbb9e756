"""Backend ``torch``: DESIGN section 2 in plain PyTorch, stacked rows, analytic backward.

Values and the K tangent streams travel together as one stacked tensor ``(1 + K, B, n)``
(row block 0 = values ``h``, blocks 1..K = tangents ``t_k``), so each layer is one GEMM for
all of them and the bias is added to block 0 only. The backward is written out by hand from
the adjoint recursion (no double backward): it is a plain first-order backward over the
stacked rows plus the ``s''(z) * tz`` term in the activation step.

Layer 1 is the exception: its input tangents are the directions themselves, which may be
shared by every row ``(K, d)``; then ``tz_1 = V W_1^T`` is ``(K, 1, n_1)`` and broadcasts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import Activation, get_activation
from ..problem import LOW_PRECISION, SobolevProblem, projected_mse_loss

NAME = "torch"


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(problem: SobolevProblem) -> str | None:
    if problem.mlp is None:
        return "the model is not a SobolevMLP (or an nn.Sequential of Linear/activation)"
    if problem.dtype not in (torch.float64, torch.float32, *LOW_PRECISION):
        return f"dtype {problem.dtype} is not supported"
    return None


def _series(act: Activation, z: Tensor, n: int) -> list[Tensor]:
    """[s, s', ..., s^(n)] of z; in fp32 for bf16/fp16 (GEMMs stay in the input dtype)."""
    return act.series(z.float() if z.dtype in LOW_PRECISION else z, n)


class MLPJvpFunction(torch.autograd.Function):
    """``(f, u_1..u_K)`` stacked as ``(1 + K, B, m)`` for an MLP, with an analytic backward.

    Arguments: activation name, leaky_relu slope, whether there are biases, x (B, d),
    directions (K, d) or (B, K, d), then the L weights (n_l, n_{l-1}) and, with biases, the L
    biases (n_l,).
    """

    @staticmethod
    def forward(ctx, activation, slope, has_bias, x, directions, *params):
        act = get_activation(activation, slope)
        num_layers = len(params) // 2 if has_bias else len(params)
        weights = params[:num_layers]
        biases = params[num_layers:] if has_bias else [None] * num_layers
        shared = directions.ndim == 2

        # Layer 1: values and tangents separately (the tangents may be shared by all rows).
        z = F.linear(x, weights[0], biases[0])
        if shared:
            tz = (directions @ weights[0].t()).unsqueeze(1)  # (K, 1, n_1)
        else:
            tz = torch.matmul(directions.transpose(0, 1), weights[0].t())  # (K, B, n_1)
        saved = [z, tz]
        for w, b in zip(weights[1:], biases[1:]):
            h, s1 = _series(act, z, 1)
            stack = _activate(act, z, tz, h, s1)  # [h; t_1..t_K]: (1 + K, B, n_{l-1})
            out = torch.matmul(stack, w.t())  # one GEMM for values and all tangents
            if b is not None:
                out[0] += b
            z, tz = out[0], out[1:]
            saved += [z, tz]
        if len(weights) == 1:
            out = torch.cat([z.unsqueeze(0), tz.expand(-1, z.shape[0], -1)])
        # z_L, tz_L are the outputs themselves: the backward does not need them.
        ctx.save_for_backward(x, directions, *params, *saved[:-2])
        ctx.activation = act
        ctx.num_layers = num_layers
        ctx.has_bias = has_bias
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        act: Activation = ctx.activation
        num_layers = ctx.num_layers
        has_bias = ctx.has_bias
        x, directions, *rest = ctx.saved_tensors
        num_params = 2 * num_layers if has_bias else num_layers
        weights, saved = rest[:num_layers], rest[num_params:]
        # needs_input_grad: (activation, slope, has_bias, x, directions, *weights, *biases)
        needs = ctx.needs_input_grad
        needs_w = needs[5 : 5 + num_layers]
        needs_b = needs[5 + num_layers :]
        grad_w: list[Tensor | None] = [None] * num_layers
        grad_b: list[Tensor | None] = [None] * num_layers

        # a = [a_z; a_tz_1..a_tz_K] of the current layer, starting from the outputs.
        a = grad_out
        grad_x = None
        for l in range(num_layers - 1, -1, -1):
            w = weights[l]
            a_flat = a.reshape(-1, a.shape[-1])
            if l > 0:
                z, tz = saved[2 * (l - 1)], saved[2 * (l - 1) + 1]
                h, s1, *s2 = _series(act, z, 2 if act.smooth else 1)
                stack = _activate(act, z, tz, h, s1)  # inputs of layer l, recomputed
                # dW_l = a_z^T h_{l-1} + sum_k a_tz_k^T t_{l-1,k}: one GEMM over stacked rows
                if needs_w[l]:
                    grad_w[l] = a_flat.t() @ stack.reshape(-1, stack.shape[-1])
            elif needs_w[0]:
                grad_w[0] = _first_layer_weight_grad(a, x, directions)
            if has_bias and needs_b[l]:
                grad_b[l] = a[0].sum(0)
            if l > 0:
                a_in = torch.matmul(a, w)  # [a_h; a_t_k] = a W_l, one GEMM
                a = _activation_backward(act, a_in, tz, s1, s2[0] if s2 else None)
            elif needs[3]:
                grad_x = a[0] @ w
        return (None, None, None, grad_x, None, *grad_w, *(grad_b if has_bias else []))


def _activate(act: Activation, z: Tensor, tz: Tensor, s: Tensor, s1: Tensor) -> Tensor:
    """[h; t_1..t_K] = [s(z); s'(z) * tz_k] as one (1 + K, B, n) tensor, given s, s'."""
    stack = torch.empty((1 + tz.shape[0], *z.shape), dtype=z.dtype, device=z.device)
    stack[0].copy_(s)
    torch.mul(tz, s1, out=stack[1:])
    return stack


def _activation_backward(
    act: Activation, a_in: Tensor, tz: Tensor, s1: Tensor, s2: Tensor | None
) -> Tensor:
    """Adjoints through the activation, in place on a_in = [a_h; a_t_k] (the layer's input).

    a_z    = a_h * s'(z) + s''(z) * sum_k a_t_k * tz_k
    a_tz_k = a_t_k * s'(z)
    """
    if act.smooth:
        # sum over k, one term at a time: no (K, B, n) temporary
        cross = a_in[1] * tz[0]
        for k in range(1, tz.shape[0]):
            cross.addcmul_(a_in[k + 1], tz[k])
        a_in[0].mul_(s1).addcmul_(cross, s2)
    else:  # s'' = 0: a first-order backward on every row
        a_in[0].mul_(s1)
    a_in[1:].mul_(s1)
    return a_in


def _first_layer_weight_grad(a: Tensor, x: Tensor, directions: Tensor) -> Tensor:
    """dW_1 = a_z^T x + sum_k a_tz_k^T v_k (v_k shared by rows, or per row)."""
    grad = a[0].t() @ x
    if directions.ndim == 2:  # shared: sum the tangent adjoints over rows first
        return grad + a[1:].sum(1).t() @ directions
    rows = a[1:].reshape(-1, a.shape[-1])  # (K*B, n_1), k-major
    return grad + rows.t() @ directions.transpose(0, 1).reshape(-1, directions.shape[-1])


def _mlp_params(problem: SobolevProblem) -> tuple[Tensor, ...]:
    mlp = problem.mlp
    return (*mlp.weights(), *(mlp.biases() or []))


def stacked_jvp(problem: SobolevProblem) -> Tensor:
    """(1 + K, B, m): block 0 is f, blocks 1..K are u_k = J_f v_k."""
    mlp = problem.mlp
    act = mlp.activation
    return MLPJvpFunction.apply(
        act.name,
        act.negative_slope,
        mlp.has_bias,
        problem.x,
        problem.directions,
        *_mlp_params(problem),
    )


def mlp_jvp(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    out = stacked_jvp(problem)
    return out[0], out[1:].transpose(0, 1)


def sobolev_loss(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    f, u = mlp_jvp(problem)
    return projected_mse_loss(f, u, problem), f
