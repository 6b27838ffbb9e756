"""Backend ``cuda``: the C++ extension ``sobolev_kernels._C`` (fused CPU kernel, CUDA kernels).

The ops are defined in C++ (``csrc/ops.cpp``): ``sobolev_forward`` computes f, the K
tangents u, for order 2 the second directional derivatives w (Taylor mode, docs/math.md),
and the projected loss in one pass; ``sobolev_backward`` is their analytic backward. As in
pytorch/extension-cpp's ``ops.py``, this module adds what the dispatcher needs from Python:
fake implementations (shapes only, so ``torch.compile`` traces the ops without running them)
and an autograd formula whose backward is itself the custom backward op. A checkout without
the compiled module still imports; ``unavailable_reason()`` then says how to build it. The
extension is loaded (and the registrations made) when this module is imported, never on
first use, so ``torch.compile`` does not trace the registration.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..problem import LOW_PRECISION, SobolevProblem, accumulation_dtype

NAME = "cuda"
ORDERS = (1, 2)

_BUILD_HINT = (
    "reinstall with `pip install --no-build-isolation .` where torch is installed (in a "
    "checkout: `pip install --no-build-isolation -e .`), with a C++ compiler for the CPU kernel "
    "(nvcc and a CUDA build of torch for the CUDA kernels)"
)
DTYPES = (torch.float64, torch.float32, *LOW_PRECISION)
# The CUDA kernels keep the layer table in kernel arguments (csrc/cuda/sobolev_kernels.cuh).
_CUDA_MAX_LAYERS = 32
_CUDA_MAX_WIDTH = 256


def unavailable_reason() -> str | None:
    if _extension is None:
        return (
            f"the compiled extension sobolev_kernels._C is missing ({_import_error}); {_BUILD_HINT}"
        )
    return None


def unsupported_reason(problem: SobolevProblem) -> str | None:
    mlp = problem.mlp
    device = problem.device.type
    if device == "cuda":
        if not _extension.WITH_CUDA:
            return (
                "sobolev_kernels._C was built without its CUDA kernels; rebuild on a machine "
                "with nvcc and a CUDA build of torch (FORCE_CUDA=1 forces them), " + _BUILD_HINT
            )
        if mlp.num_layers > _CUDA_MAX_LAYERS:
            return f"the CUDA kernels take at most {_CUDA_MAX_LAYERS} layers, got {mlp.num_layers}"
        if max(mlp.widths) > _CUDA_MAX_WIDTH:
            return f"the CUDA kernels take widths up to {_CUDA_MAX_WIDTH}, got {max(mlp.widths)}"
    elif device != "cpu":
        return f"device {problem.device} is not supported (CPU, or CUDA when compiled with it)"
    return None


def sobolev_loss(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    loss, f, _, _, _ = _forward(problem, with_targets=True)
    return loss, f


def mlp_jvp(problem: SobolevProblem) -> tuple[Tensor, ...]:
    _, f, u, w, _ = _forward(problem, with_targets=False)
    return (f, u) if problem.order == 1 else (f, u, w)


def _forward(problem: SobolevProblem, *, with_targets: bool) -> tuple[Tensor, ...]:
    """(loss, f, u, w, saved) of the fused forward op; without targets only f, u, w count."""
    act = problem.mlp.activation
    # the module's parameters, or their casts under autocast (targets then stay fp32: the op
    # takes them in x's dtype or in the accumulation dtype)
    weights, biases = problem.weights, problem.biases
    targets = (
        (problem.y, problem.target_jvp, problem.target_grad, problem.target_hvp2,
         problem.target_hess)
        if with_targets else (None,) * 5
    )  # fmt: skip
    # z/tz/ttz are only worth keeping when a backward will run
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (problem.x, *weights, *biases))
    return torch.ops.sobolev_kernels.sobolev_forward(
        problem.x, problem.directions, *targets, weights, biases, act.kernel_id,
        float(act.negative_slope), problem.alpha, problem.beta, problem.gamma, problem.order,
        save,
    )  # fmt: skip


# --------------------------------------------------------------------------- registrations


def _register() -> None:
    torch.library.register_fake("sobolev_kernels::sobolev_forward", _forward_fake)
    torch.library.register_fake("sobolev_kernels::sobolev_backward", _backward_fake)
    torch.library.register_fake("sobolev_kernels::activation_series", _series_fake)
    torch.library.register_autograd(
        "sobolev_kernels::sobolev_forward", _backward, setup_context=_setup_context
    )


def _forward_fake(
    x, directions, y, target_jvp, target_grad, target_hvp2, target_hess, weights, biases,
    activation, negative_slope, alpha, beta, gamma, order, save_activations,
):  # fmt: skip
    torch._check(x.dim() == 2, lambda: f"x: expected (B, d), got {tuple(x.shape)}")
    torch._check(len(weights) >= 1, lambda: "weights: expected at least one layer")
    torch._check(order in (1, 2), lambda: f"order: expected 1 or 2, got {order}")
    batch = x.shape[0]
    k = directions.shape[-2]
    m = weights[-1].shape[0]
    acc = accumulation_dtype(x.dtype)
    hidden = sum(w.shape[0] for w in weights[:-1])
    streams = 1 + order * k  # [z; tz_k (; ttz_k)] of every hidden layer
    saved = x.new_empty((streams * batch * hidden if save_activations else 0,), dtype=acc)
    w = x.new_empty(batch, k, m) if order == 2 else x.new_empty(0)
    return x.new_empty((), dtype=acc), x.new_empty(batch, m), x.new_empty(batch, k, m), w, saved


def _backward_fake(
    grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad, target_hvp2,
    target_hess, weights, biases, f, u, w, saved, activation, negative_slope, alpha, beta, gamma,
    order, need_grad_x, need_grad_params,
):  # fmt: skip
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)
    grad_weights = [p.new_empty(p.shape) for p in weights] if need_grad_params else []
    grad_biases = [b.new_empty(b.shape) for b in biases] if need_grad_params else []
    return grad_x, grad_weights, grad_biases


def _series_fake(z, activation, negative_slope):
    return z.new_empty((4, *z.shape))


# sobolev_forward's inputs: x, directions, the five targets, weights, biases, then the scalars
_NUM_TARGETS = 5


def _setup_context(ctx, inputs, output) -> None:
    x, directions, *rest = inputs
    targets, (weights, biases, *scalars) = rest[:_NUM_TARGETS], rest[_NUM_TARGETS:]
    _, f, u, w, saved = output
    ctx.mark_non_differentiable(saved)
    # gradients of unused outputs arrive as None, not as zero tensors to read
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, directions, *targets, f, u, w, saved, *weights, *biases)
    ctx.num_layers = len(weights)
    ctx.scalars = scalars[:6]  # activation, negative_slope, alpha, beta, gamma, order


def _backward(ctx, grad_loss, grad_f, grad_u, grad_w, grad_saved):
    """dL/dx, dL/dW, dL/db of L(loss, f, u, w): the fused backward op, seeded with
    a_f = grad_loss * 2 alpha / (B m) (f - y) + grad_f,
    a_u = grad_loss * 2 beta / (B K m) (u - g) + grad_u and (order 2)
    a_w = grad_loss * 2 gamma / (B K m) (w - g2) + grad_w."""
    x, directions, *rest = ctx.saved_tensors
    targets, (f, u, w, saved, *params) = rest[:_NUM_TARGETS], rest[_NUM_TARGETS:]
    weights, biases = params[: ctx.num_layers], params[ctx.num_layers :]
    needs = ctx.needs_input_grad  # (x, directions, 5 targets, [weights], [biases], scalars...)
    need_x = bool(needs[0])
    need_params = any(needs[2 + _NUM_TARGETS]) or any(needs[3 + _NUM_TARGETS])
    if ctx.scalars[5] == 1:  # order 1: w is an empty placeholder
        grad_w = None
    grad_x, grad_weights, grad_biases = torch.ops.sobolev_kernels.sobolev_backward(
        grad_loss, grad_f, grad_u, grad_w, x, directions, *targets, weights, biases, f, u, w,
        saved, *ctx.scalars, need_x, need_params,
    )  # fmt: skip
    if not need_params:
        grad_weights, grad_biases = [None] * len(weights), [None] * len(biases)
    num_scalars = 7  # activation, negative_slope, alpha, beta, gamma, order, save_activations
    return (
        grad_x if need_x else None, None, *([None] * _NUM_TARGETS), list(grad_weights),
        list(grad_biases), *([None] * num_scalars),
    )  # fmt: skip


try:
    from .. import _C as _extension
except ImportError as exc:  # not built (setup.py then leaves a note why), or another torch
    _extension = None
    _note = Path(__file__).parents[1] / "_C_unavailable.txt"
    _import_error = _note.read_text().strip() if _note.exists() else str(exc)
else:
    _import_error = None
    _register()
