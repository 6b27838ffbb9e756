"""Backend ``torch``: DESIGN section 2 in plain PyTorch, stacked rows, analytic backward.

Values and the tangent streams travel together as one stacked tensor ``(S, B, n)``: block 0
holds the values ``h``, blocks 1..K the first-order tangents ``t_k`` and, for order 2,
blocks K+1..2K the second-order tangents ``tt_k`` (Taylor mode, docs/math.md). Each layer is
one GEMM for all of them; the bias goes to block 0 only. The backward is written out by hand
from the adjoint recursion (no double backward): a first-order backward over the stacked rows
plus the activation terms in s'', s''' that couple the streams.

Layer 1 is special: its input tangents are the directions themselves, which may be shared by
every row ``(K, d)`` (then ``tz_1 = V W_1^T`` is ``(K, 1, n_1)`` and broadcasts), and the
second-order input tangents are zero (``ttz_1 = 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import Activation, get_activation
from ..problem import LOW_PRECISION, SobolevProblem, projected_mse_loss
from .base import Backend


def _series(act: Activation, z: Tensor, n: int) -> list[Tensor]:
    """[s, s', ..., s^(n)] of z; in fp32 for bf16/fp16 (GEMMs stay in the input dtype)."""
    return act.series(z.float() if z.dtype in LOW_PRECISION else z, n)


class MLPJvpFunction(torch.autograd.Function):
    """``[f; u_1..u_K; (w_1..w_K)]`` stacked as ``(1 + order K, B, m)``, analytic backward.

    ``u_k = J_f v_k`` and, for order 2, ``w_k = v_k^T H_f v_k`` (per output).
    Arguments: activation name, leaky_relu slope, whether there are biases, the order (1 or
    2), x (B, d), directions (K, d) or (B, K, d), then the L weights (n_l, n_{l-1}) and, with
    biases, the L biases (n_l,).
    """

    @staticmethod
    def forward(ctx, activation, slope, has_bias, order, x, directions, *params):
        act = get_activation(activation, slope)
        num_layers = len(params) // 2 if has_bias else len(params)
        weights = params[:num_layers]
        biases = params[num_layers:] if has_bias else [None] * num_layers
        k, batch = directions.shape[-2], x.shape[0]

        # Layer 1: values and tangents separately (the tangents may be shared by all rows).
        z = F.linear(x, weights[0], biases[0])
        if directions.ndim == 2:
            tz = (directions @ weights[0].t()).unsqueeze(1)  # (K, 1, n_1)
        else:
            tz = torch.matmul(directions.transpose(0, 1), weights[0].t())  # (K, B, n_1)
        ttz = None  # second-order input tangents are 0 at layer 1
        saved = [z, tz, ttz]
        for w, b in zip(weights[1:], biases[1:]):
            stack = _activate(act, z, tz, ttz, order)  # (S, B, n_{l-1})
            out = torch.matmul(stack, w.t())  # one GEMM for values and all tangents
            if b is not None:
                out[0] += b
            z, tz, ttz = out[0], out[1 : 1 + k], (out[1 + k :] if order == 2 else None)
            saved += [z, tz, ttz]
        if num_layers == 1:  # the output is layer 1's pre-activations
            blocks = [z.unsqueeze(0), tz.expand(-1, batch, -1)]
            if order == 2:
                blocks.append(torch.zeros_like(blocks[1]))
            out = torch.cat(blocks)
        # The last layer's [z; tz; ttz] are the outputs: the backward does not need them.
        hidden = [t for t in saved[:-3] if t is not None]
        ctx.save_for_backward(x, directions, *params, *hidden)
        ctx.activation, ctx.num_layers, ctx.has_bias, ctx.order = act, num_layers, has_bias, order
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        act: Activation = ctx.activation
        num_layers, has_bias, order = ctx.num_layers, ctx.has_bias, ctx.order
        x, directions, *rest = ctx.saved_tensors
        num_params = 2 * num_layers if has_bias else num_layers
        weights, hidden = rest[:num_layers], rest[num_params:]
        # hidden layer l (1-based, l < L): z, tz and (order 2; not at layer 1) ttz
        per_layer = []
        i = 0
        for l in range(1, num_layers):
            n = 3 if order == 2 and l > 1 else 2
            per_layer.append(tuple(hidden[i : i + n]) + (None,) * (3 - n))
            i += n
        # needs_input_grad: (activation, slope, has_bias, order, x, directions, *W, *b)
        needs = ctx.needs_input_grad
        needs_w = needs[6 : 6 + num_layers]
        needs_b = needs[6 + num_layers :]
        grad_w: list[Tensor | None] = [None] * num_layers
        grad_b: list[Tensor | None] = [None] * num_layers

        # a = [a_z; a_tz_k; a_ttz_k] of the current layer, starting from the outputs.
        a = grad_out
        grad_x = None
        for l in range(num_layers - 1, -1, -1):
            w = weights[l]
            if l > 0:
                z, tz, ttz = per_layer[l - 1]
                series = _series(act, z, order + 1 if act.smooth else 1)
                stack = _activate(act, z, tz, ttz, order, series)  # inputs of layer l, again
                # dW_l = a_z^T h + sum_k (a_tz_k^T t_k + a_ttz_k^T tt_k): one GEMM over rows
                if needs_w[l]:
                    grad_w[l] = a.reshape(-1, a.shape[-1]).t() @ stack.reshape(-1, stack.shape[-1])
            elif needs_w[0]:
                grad_w[0] = _first_layer_weight_grad(a, x, directions)
            if has_bias and needs_b[l]:
                grad_b[l] = a[0].sum(0)
            if l > 0:
                a_in = torch.matmul(a, w)  # [a_h; a_t_k; a_tt_k] = a W_l, one GEMM
                a = _activation_backward(act, a_in, tz, ttz, order, series)
            elif needs[4]:
                grad_x = a[0] @ w
        return (None, None, None, None, grad_x, None, *grad_w, *(grad_b if has_bias else []))


def _activate(
    act: Activation, z: Tensor, tz: Tensor, ttz: Tensor | None, order: int,
    series: list[Tensor] | None = None,
) -> Tensor:  # fmt: skip
    """[h; t_k; tt_k] = [s(z); s'(z) tz_k; s'(z) ttz_k + s''(z) tz_k^2] as one (S, B, n)."""
    k = tz.shape[0]
    if series is None:
        series = _series(act, z, order)
    s, s1 = series[0], series[1]
    stack = torch.empty((1 + order * k, *z.shape), dtype=z.dtype, device=z.device)
    stack[0].copy_(s)
    torch.mul(tz, s1, out=stack[1 : 1 + k])
    if order == 2:
        tt = stack[1 + k :]
        if act.smooth:
            torch.mul(tz.square(), series[2], out=tt)
        else:
            tt.zero_()
        if ttz is not None:
            tt.addcmul_(ttz, s1)
    return stack


def _activation_backward(
    act: Activation, a_in: Tensor, tz: Tensor, ttz: Tensor | None, order: int,
    series: list[Tensor],
) -> Tensor:  # fmt: skip
    """Adjoints through the activation, in place on a_in = [a_h; a_t_k; a_tt_k].

    a_z     = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
    a_tz_k  = a_t_k s' + 2 s'' a_tt_k tz_k
    a_ttz_k = a_tt_k s'
    (order 1 has no a_tt; the relu family and identity have s'' = s''' = 0.)
    """
    s1 = series[1]
    if not act.smooth:  # every block is just scaled by s'
        return a_in.mul_(s1)
    k = tz.shape[0]
    a_h, a_t, a_tt = a_in[0], a_in[1 : 1 + k], a_in[1 + k :]
    s2 = series[2]
    # the s'' coupling summed over k one term at a time: no (K, B, n) temporary
    cross = a_t[0] * tz[0]
    for j in range(1, k):
        cross.addcmul_(a_t[j], tz[j])
    if order == 2:
        if ttz is not None:
            for j in range(k):
                cross.addcmul_(a_tt[j], ttz[j])
        cross3 = (a_tt * tz.square()).sum(0)
        a_t.mul_(s1).addcmul_(a_tt * tz, s2, value=2.0)  # before a_tt is scaled
        a_tt.mul_(s1)
        a_h.mul_(s1).addcmul_(cross, s2).addcmul_(cross3, series[3])
    else:
        a_t.mul_(s1)
        a_h.mul_(s1).addcmul_(cross, s2)
    return a_in


def _first_layer_weight_grad(a: Tensor, x: Tensor, directions: Tensor) -> Tensor:
    """dW_1 = a_z^T x + sum_k a_tz_k^T v_k (v_k shared by rows, or per row); tt_0 = 0."""
    k = directions.shape[-2]
    grad = a[0].t() @ x
    if directions.ndim == 2:  # shared: sum the tangent adjoints over rows first
        return grad + a[1 : 1 + k].sum(1).t() @ directions
    rows = a[1 : 1 + k].reshape(-1, a.shape[-1])  # (K*B, n_1), k-major
    return grad + rows.t() @ directions.transpose(0, 1).reshape(-1, directions.shape[-1])


def stacked_jvp(problem: SobolevProblem) -> Tensor:
    """(1 + order K, B, m): block 0 is f, then u_k = J_f v_k, then (order 2) w_k."""
    mlp = problem.mlp
    act = mlp.activation
    return MLPJvpFunction.apply(
        act.name, act.negative_slope, mlp.has_bias, problem.order, problem.x,
        problem.directions, *problem.weights, *problem.biases,
    )  # fmt: skip


class TorchBackend(Backend):
    """Any SobolevMLP, dtype and device."""

    name = "torch"

    def mlp_jvp(self, problem: SobolevProblem) -> tuple[Tensor, ...]:
        out = stacked_jvp(problem)
        k = problem.num_directions
        derivatives = [out[1 : 1 + k].transpose(0, 1)]
        if problem.order == 2:
            derivatives.append(out[1 + k :].transpose(0, 1))
        return (out[0], *derivatives)

    def sobolev_loss(self, problem: SobolevProblem) -> tuple[Tensor, Tensor]:
        f, *derivatives = self.mlp_jvp(problem)
        return projected_mse_loss(problem, f, *derivatives), f


BACKEND = TorchBackend()
