"""The one op contract of every fused family (the Triton kernels, the C++/CUDA extension).

Each family registers two ``torch.library`` ops with the same schema (``FORWARD_SCHEMA``,
``BACKWARD_SCHEMA``; the C++ ones in ``csrc/ops.cpp``, checked equal by a test):

    <forward>(x, directions, y?, target_jvp?, target_grad?, target_hvp2?, target_hess?,
              weights[], biases[], activation, negative_slope, alpha, beta, gamma, order,
              allow_tf32, save_activations) -> (loss, f, u, w, saved)

computes f = MLP(x) (B, m), u_k = J_f(x) v_k and, for order 2, w_k = v_k^T H_f(x) v_k
(both (B, K, m); w is empty for order 1), all in x's dtype, and the projected loss

    loss = alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2)]

in the accumulation dtype (fp64 for fp64, else fp32), a term dropped when its target is
absent (no targets: ``mlp_jvp``). ``saved`` is the family's own 1-D buffer of the hidden
pre-activations [z; tz; ttz] in the accumulation dtype ((1 + order K) B n_hidden elements),
or empty when ``save_activations`` is false: the backward then recomputes them.

    <backward>(grad_loss?, grad_f?, grad_u?, grad_w?, <the forward's tensor inputs>, f, u, w,
               saved, activation, negative_slope, alpha, beta, gamma, order, allow_tf32,
               need_grad_x, need_grad_params) -> (grad_x, grad_weights[], grad_biases[])

gives the gradients of a scalar function of (loss, f, u, w) from its upstream gradients
(None: zero); grad_x is empty unless ``need_grad_x``, the lists empty unless
``need_grad_params``. Directions and targets get no gradient.

This module owns the glue both families share, as pytorch/extension-cpp's ``ops.py`` does:
the fake (shape) functions, the autograd registration, and the one place where a
``SobolevProblem`` becomes the op's argument list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import settings
from .problem import SobolevProblem, accumulation_dtype

__all__ = [
    "BACKWARD_SCHEMA",
    "CUDA_OPS",
    "FORWARD_SCHEMA",
    "FusedOps",
    "NAMESPACE",
    "TRITON_OPS",
    "forward_arguments",
]

NAMESPACE = "sobolev_kernels"

FORWARD_SCHEMA = (
    "(Tensor x, Tensor directions, Tensor? y, Tensor? target_jvp, Tensor? target_grad, "
    "Tensor? target_hvp2, Tensor? target_hess, Tensor[] weights, Tensor[] biases, "
    "int activation, float negative_slope, float alpha, float beta, float gamma, int order, "
    "bool allow_tf32, bool save_activations) "
    "-> (Tensor loss, Tensor f, Tensor u, Tensor w, Tensor saved)"
)
BACKWARD_SCHEMA = (
    "(Tensor? grad_loss, Tensor? grad_f, Tensor? grad_u, Tensor? grad_w, Tensor x, "
    "Tensor directions, Tensor? y, Tensor? target_jvp, Tensor? target_grad, "
    "Tensor? target_hvp2, Tensor? target_hess, Tensor[] weights, Tensor[] biases, Tensor f, "
    "Tensor u, Tensor w, Tensor saved, int activation, float negative_slope, float alpha, "
    "float beta, float gamma, int order, bool allow_tf32, bool need_grad_x, "
    "bool need_grad_params) -> (Tensor grad_x, Tensor[] grad_weights, Tensor[] grad_biases)"
)

# The forward's inputs: x, directions, the five targets, weights, biases, then the scalars
# activation, negative_slope, alpha, beta, gamma, order, allow_tf32, save_activations.
_NUM_TARGETS = 5
_NUM_SCALARS = 8


@dataclass(frozen=True)
class FusedOps:
    """One family's pair of ops, by name in the ``sobolev_kernels`` namespace."""

    forward_name: str
    backward_name: str

    def set_impls(self, forward: Callable, backward: Callable) -> None:
        """The family's Python implementations of both ops (the Triton launchers), which the
        eager path calls without the dispatcher (``direct``)."""
        _IMPLS[self.forward_name] = (forward, backward)

    def direct(self, which: int, tensors: tuple) -> Callable:
        """The forward (``which`` 0) or backward (1) op as the eager path calls it. Where no
        Python dispatch mode, torch function mode, profiler or tensor subclass among
        ``tensors`` could see the call, the family's Python implementation (Triton) or the op
        below its autograd key (C++): its registered autograd wrapper would run under grad
        mode off anyway, and the dispatch into Python and that wrapper's redispatch took
        about 0.1 ms of a Triton step's host time (of 1.2 ms on this CPU: 2026-11-27,
        ``investigations/triton_host_time.py``). Else the op itself, which those need to
        see."""
        plain = _plain(tensors)
        if plain:
            impls = _IMPLS.get(self.forward_name)
            if impls is not None and tensors[0].device.type in ("cpu", "cuda"):  # (not meta)
                return impls[which]
        op = self.backward if which else self.forward
        if not plain:
            return op

        def below_autograd(*args):
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)

        return below_autograd

    @property
    def forward(self):
        return getattr(getattr(torch.ops, NAMESPACE), self.forward_name).default

    @property
    def backward(self):
        return getattr(getattr(torch.ops, NAMESPACE), self.backward_name).default

    def apply(self, *args):
        """The forward op on ``forward_arguments``, differentiable: in eager mode through
        ``_EagerForward``, else (torch.compile, torch.func transforms) through the op's
        registered autograd. Both run the same context and backward functions; the eager
        path skips the registered wrapper's per-call work (flattening the tensor lists,
        refilling the schema's defaults): about 0.4 ms of host time a step on a 2.5 GHz core,
        a quarter of a step with the C++ op (the H200 run of 2026-11-27 found the steps
        host-bound below B = 4096)."""
        if not torch.is_grad_enabled() or not _eager():
            return self.forward(*args)
        x, directions, *rest = args
        targets, (weights, biases, *scalars) = rest[:_NUM_TARGETS], rest[_NUM_TARGETS:]
        return _EagerForward.apply(
            self, len(weights), x, directions, *targets, *weights, *biases, *scalars
        )

    def define(self) -> None:
        """Define both schemas (families implemented in Python; C++ defines its own)."""
        torch.library.define(f"{NAMESPACE}::{self.forward_name}", FORWARD_SCHEMA)
        torch.library.define(f"{NAMESPACE}::{self.backward_name}", BACKWARD_SCHEMA)

    def register(self) -> None:
        """Fake kernels for both ops and the forward's autograd formula."""
        forward = f"{NAMESPACE}::{self.forward_name}"
        backward = f"{NAMESPACE}::{self.backward_name}"
        torch.library.register_fake(forward, _forward_fake)
        torch.library.register_fake(backward, _backward_fake)
        torch.library.register_autograd(forward, _backward_of(self), setup_context=_setup_context)


# The two families: the Triton kernels (schemas defined from Python, backends/triton.py) and
# the C++ extension (CPU and CUDA kernels; schemas in csrc/ops.cpp).
TRITON_OPS = FusedOps("triton_sobolev_forward", "triton_sobolev_backward")
CUDA_OPS = FusedOps("sobolev_forward", "sobolev_backward")


def forward_arguments(problem: SobolevProblem, *, with_targets: bool) -> tuple:
    """The forward op's arguments for ``problem`` (without targets: ``mlp_jvp``)."""
    act = problem.mlp.activation
    # the module's parameters, or their casts under autocast (targets then keep their dtype:
    # the kernels read them into accumulators)
    weights, biases = problem.weights, problem.biases
    targets = (
        (problem.y, problem.target_jvp, problem.target_grad, problem.target_hvp2,
         problem.target_hess)
        if with_targets else (None,) * _NUM_TARGETS
    )  # fmt: skip
    # the hidden pre-activations are only worth keeping when a backward will run, and unless
    # the user trades time for memory (the backward then recomputes them)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (problem.x, *weights, *biases))
    save = save and settings.save_activations()
    return (
        problem.x, problem.directions, *targets, weights, biases, act.kernel_id,
        float(act.negative_slope), problem.alpha, problem.beta, problem.gamma, problem.order,
        _allow_tf32(), save,
    )  # fmt: skip


def _allow_tf32() -> bool:
    # fp32 products stay fp32-accurate unless the user opted into TF32 the torch way:
    # torch.backends.cuda.matmul.allow_tf32 = True, which set_float32_matmul_precision("high")
    # also sets (a flag read, so torch.compile traces it)
    return torch.backends.cuda.matmul.allow_tf32


def _forward_fake(
    x, directions, y, target_jvp, target_grad, target_hvp2, target_hess, weights, biases,
    activation, negative_slope, alpha, beta, gamma, order, allow_tf32, save_activations,
):  # fmt: skip
    torch._check(x.dim() == 2, lambda: f"x: expected (B, d), got {tuple(x.shape)}")
    torch._check(len(weights) >= 1, lambda: "weights: expected at least one layer")
    torch._check(order in (1, 2), lambda: f"order: expected 1 or 2, got {order}")
    batch, k, m = x.shape[0], directions.shape[-2], weights[-1].shape[0]
    acc = accumulation_dtype(x.dtype)
    hidden = sum(w.shape[0] for w in weights[:-1])
    saved = (1 + order * k) * batch * hidden if save_activations else 0
    return (
        x.new_empty((), dtype=acc),
        x.new_empty(batch, m),
        x.new_empty(batch, k, m),
        x.new_empty(batch, k, m) if order == 2 else x.new_empty(0),
        x.new_empty(saved, dtype=acc),
    )


def _backward_fake(
    grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad, target_hvp2,
    target_hess, weights, biases, f, u, w, saved, activation, negative_slope, alpha, beta, gamma,
    order, allow_tf32, need_grad_x, need_grad_params,
):  # fmt: skip
    grad_x = x.new_empty(x.shape) if need_grad_x else x.new_empty(0)
    grad_weights = [p.new_empty(p.shape) for p in weights] if need_grad_params else []
    grad_biases = [b.new_empty(b.shape) for b in biases] if need_grad_params else []
    return grad_x, grad_weights, grad_biases


def _setup_context(ctx, inputs, output) -> None:
    x, directions, *rest = inputs
    targets = rest[:_NUM_TARGETS]
    weights, biases, *scalars = rest[_NUM_TARGETS:]
    _, f, u, w, saved = output
    ctx.mark_non_differentiable(saved)
    # gradients of unused outputs arrive as None, not as zero tensors to read
    ctx.set_materialize_grads(False)
    # (ctx.needs_input_grad is flat here, with tensor lists unrolled: ask the tensors)
    ctx.need_x = x.requires_grad
    ctx.need_params = any(p.requires_grad for p in (*weights, *biases))
    ctx.num_layers = len(weights)
    ctx.scalars = scalars[:-1]  # all but save_activations
    if ctx.need_x or ctx.need_params:  # nothing is kept for a backward that cannot run
        ctx.save_for_backward(x, directions, *targets, f, u, w, saved, *weights, *biases)


def _backward_of(ops: FusedOps):
    def backward(ctx, grad_loss, grad_f, grad_u, grad_w, _grad_saved):
        """dL/dx, dL/dW, dL/db of L(loss, f, u, w): the family's backward op."""
        return _gradients(ops, ctx, grad_loss, grad_f, grad_u, grad_w)

    return backward


_IMPLS: dict[str, tuple[Callable, Callable]] = {}  # FusedOps.set_impls, by forward name
_PLAIN = frozenset((torch.Tensor, torch.nn.Parameter, type(None)))


def _plain(tensors: tuple) -> bool:
    """Whether nothing but the kernels would see a call on ``tensors`` (None allowed)."""
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    if torch.autograd.profiler._is_profiler_enabled:  # keep the ops' names in its trace
        return False
    return _PLAIN.issuperset(map(type, tensors))


def _eager() -> bool:
    """Whether the eager autograd path may run: not while torch.compile traces (it needs the
    op, whose fake kernel it traces) nor inside torch.func transforms (their autograd rules
    are the op's)."""
    if torch.compiler.is_compiling():
        return False
    transforms = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return transforms is not None and transforms() is None  # unknown torch: the op's path


class _EagerForward(torch.autograd.Function):
    """The forward op with the registered autograd's context and backward, its tensor lists
    flattened into arguments of their own (what autograd.Function tracks):
    apply(ops, num_layers, x, directions, *targets, *weights, *biases, *scalars)."""

    @staticmethod
    def forward(ctx, ops, num_layers, x, directions, *rest):
        targets, params = rest[:_NUM_TARGETS], rest[_NUM_TARGETS : len(rest) - _NUM_SCALARS]
        weights, biases = list(params[:num_layers]), list(params[num_layers:])
        inputs = (x, directions, *targets, weights, biases, *rest[len(rest) - _NUM_SCALARS :])
        # grad mode is off here: the op's no-grad path
        output = ops.direct(0, (x, directions, *targets, *params))(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.ops = ops
        return output

    @staticmethod
    def backward(ctx, grad_loss, grad_f, grad_u, grad_w, _grad_saved):
        grad_x, _, *rest = _gradients(ctx.ops, ctx, grad_loss, grad_f, grad_u, grad_w,
                                      direct=True)  # fmt: skip
        grad_weights, grad_biases = rest[_NUM_TARGETS], rest[_NUM_TARGETS + 1]
        return (None, None, grad_x, None, *([None] * _NUM_TARGETS), *grad_weights,
                *grad_biases, *([None] * _NUM_SCALARS))  # fmt: skip


def _gradients(
    ops: FusedOps, ctx, grad_loss, grad_f, grad_u, grad_w, direct: bool = False
) -> tuple:
    """The gradients of the forward op's inputs, in its argument structure (tensor lists as
    lists), from the upstream gradients of (loss, f, u, w): the family's backward op (with
    ``direct``, as the eager path calls it: ``FusedOps.direct``)."""
    x, directions, *rest = saved_tensors = ctx.saved_tensors
    targets, (f, u, w, saved, *params) = rest[:_NUM_TARGETS], rest[_NUM_TARGETS:]
    weights, biases = params[: ctx.num_layers], params[ctx.num_layers :]
    order = ctx.scalars[5]
    upstream = (grad_loss, grad_f, grad_u, grad_w)
    backward = ops.direct(1, (*saved_tensors, *upstream)) if direct else ops.backward
    grad_x, grad_weights, grad_biases = backward(
        grad_loss, grad_f, grad_u, grad_w if order == 2 else None, x, directions, *targets,
        weights, biases, f, u, w, saved, *ctx.scalars, ctx.need_x, ctx.need_params,
    )  # fmt: skip
    if not ctx.need_params:
        grad_weights, grad_biases = [None] * len(weights), [None] * len(biases)
    return (
        grad_x if ctx.need_x else None, None, *([None] * _NUM_TARGETS), list(grad_weights),
        list(grad_biases), *([None] * _NUM_SCALARS),
    )  # fmt: skip
