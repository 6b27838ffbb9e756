"""Launchers of the fused Triton kernels: check, allocate, choose a launch config, launch.

Both follow the fused op contract (``sobolev_kernels/fused.py``): the same arguments, in the
same order, as the C++ ops ``sobolev_forward`` / ``sobolev_backward``, and the same outputs:
f (B, m), u and w (B, K, m) in x's dtype, the loss and the saved hidden pre-activations in
the accumulation dtype (fp32). No autograd here: ``triton/ops.py`` registers these as the
``triton_sobolev_forward`` / ``triton_sobolev_backward`` ops.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..settings import env_positive_int
from . import direct_launch
from .activations import SMOOTH
from .backward import _sobolev_bwd_kernel
from .backward_resident import _sobolev_bwd_resident_kernel
from .choices import (
    _backward_forced,
    _backward_method,
    _emulate_bf16,
    _index64,
    _inputs_kmajor,
    _kernel_precision,
    _launch_config,
    _precisions,
    _tuned,
)
from .forward import (
    _sobolev_fwd_kernel,
    _sobolev_fwd_persistent_kernel,
    _sobolev_loss_finish_kernel,
)
from .forward_resident import _sobolev_fwd_resident_kernel
from .layout import LaunchConfig, Layout, cdiv, gpu_properties, multiprocessors
from .parameter_grads import (
    _empty_like,
    _grads_by_gemm,
    _grads_by_splitk,
    _parameter_grads_of,
    _split_rows,
    _splitk_max_batch,
    _sum_partials,
    _weight_grad_method,
    _weight_grad_partials,
    method_form,
)
from .persistent_backward import _sobolev_bwd_persistent_kernel
from .plans import _keep, _plans, _settings

# The kernels' TARGET / TARGET2 constexprs: which derivative target they contract.
TARGET_NONE, TARGET_JVP, TARGET_GRAD = 0, 1, 2  # first order: (B, K, m) or (B, m, d)
TARGET_HVP2, TARGET_HESS = 1, 2  # second order: (B, K, m) or (B, m, d, d)


def layout_of(x: Tensor, directions: Tensor, weights: list[Tensor], order: int) -> Layout:
    return Layout.of(tuple([x.shape[1]] + [w.shape[0] for w in weights]), directions.shape[-2],
                     order)  # fmt: skip


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32  # fp32 for fp32, bf16 and fp16: the kernels take no fp64


def _targets(y, target_jvp, target_grad, target_hvp2, target_hess) -> tuple:
    """y, and the first- and second-order target with the kernels' TARGET / TARGET2 kind,
    contiguous (None and TARGET_NONE where absent)."""

    def one_of(*pairs):
        return next(((_contiguous(t), kind) for t, kind in pairs if t is not None),
                    (None, TARGET_NONE))  # fmt: skip

    return (
        _contiguous(y),
        one_of((target_jvp, TARGET_JVP), (target_grad, TARGET_GRAD)),
        one_of((target_hvp2, TARGET_HVP2), (target_hess, TARGET_HESS)),
    )


def _contiguous(t: Tensor | None) -> Tensor | None:
    return t.contiguous() if t is not None else None


def _seeds(
    layout: Layout, x: Tensor, y, target_jvp, target_grad, target_hvp2, target_hess,
    grads: tuple, outputs: tuple, alpha: float, beta: float, gamma: float, loss_batch: int,
) -> tuple[tuple, tuple, dict]:  # fmt: skip
    """What both backward kernels take to form their seeds (see backward.py), contiguous and
    with x, f or u standing in for an absent tensor (its constexpr says it is absent):
    (y, target, target2, the upstream gradients of the loss, f, u and w, then f, u, w), the
    coefficients (coef_f, coef_u, coef_w) of a loss over ``loss_batch`` samples, and the
    constexprs that say what is there."""
    k, m, order = layout.k, layout.widths[-1], layout.order
    y, (target, target_kind), (target2, target2_kind) = _targets(
        y, target_jvp, target_grad, target_hvp2, target_hess
    )
    grad_loss, grad_f, grad_u, grad_w = map(_contiguous, grads)
    grad_w = grad_w if order == 2 else None
    f, u, w = (t.contiguous() for t in outputs)
    w = w if order == 2 else u
    n = loss_batch  # the loss's means are over the whole batch
    coefs = (
        2.0 * alpha / (n * m) if y is not None else 0.0,
        2.0 * beta / (n * k * m) if target_kind != TARGET_NONE else 0.0,
        2.0 * gamma / (n * k * m) if order == 2 and target2_kind != TARGET_NONE else 0.0,
    )
    constexprs = dict(
        HAS_Y=y is not None, TARGET=target_kind, TARGET2=target2_kind,
        HAS_GL=grad_loss is not None, HAS_GF=grad_f is not None, HAS_GU=grad_u is not None,
        HAS_GW=grad_w is not None,
    )  # fmt: skip
    tensors = tuple(t if t is not None else stand_in for t, stand_in in (
        (y, x), (target, x), (target2, x), (grad_loss, f), (grad_f, f), (grad_u, u),
        (grad_w, u), (f, f), (u, u), (w, w),
    ))  # fmt: skip
    return tensors, coefs, constexprs


def sobolev_forward(
    x: Tensor,
    directions: Tensor,
    y: Tensor | None,
    target_jvp: Tensor | None,
    target_grad: Tensor | None,
    target_hvp2: Tensor | None,
    target_hess: Tensor | None,
    weights: list[Tensor],
    biases: list[Tensor],
    activation: int,
    negative_slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    allow_tf32: bool,
    save_activations: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused forward: (loss, f, u, w, saved); see ``sobolev_kernels/fused.py``. Its
    launch is planned once per signature (``_forward_plan``)."""
    x, v = x.contiguous(), directions.contiguous()
    y, (target, target_kind), (target2, target2_kind) = _targets(
        y, target_jvp, target_grad, target_hvp2, target_hess
    )
    # one pointer per layer (a tuple argument): no packing copy
    w_ptrs = tuple(p.contiguous() for p in weights)
    b_ptrs = tuple(p.contiguous() for p in biases) if biases else w_ptrs
    # (x stands in for an absent target: the kernel's constexprs say it is absent)
    tensors = (x, v, y if y is not None else x, target if target is not None else x,
               target2 if target2 is not None else x, w_ptrs, b_ptrs)  # fmt: skip
    key = ("fwd", x.shape, x.dtype, x.device, v.shape, y is None, target_kind, target2_kind,
           tuple(w.shape for w in w_ptrs), bool(biases), activation, order, allow_tf32,
           save_activations, _settings())  # fmt: skip
    plan = _plans.get(key)
    if plan is None:
        plan = _forward_plan(tensors, y is not None, target_kind, target2_kind, bool(biases),
                             activation, negative_slope, order, allow_tf32,
                             save_activations)  # fmt: skip
        _keep(key, plan, x.device)
    partial, f, u, w, saved = _forward_with(plan, tensors, negative_slope)
    batch, k, m = x.shape[0], plan.k, plan.m
    loss = torch.empty((), device=x.device, dtype=_accumulation_dtype(x.dtype))
    # a term without its target is dropped (mlp_jvp runs with none)
    coef_f = alpha / (batch * m) if y is not None else 0.0
    coef_u = beta / (batch * k * m) if target_kind != TARGET_NONE else 0.0
    coef_w = gamma / (batch * k * m) if order == 2 and target2_kind != TARGET_NONE else 0.0
    plan.finish((1,), (partial, loss, plan.programs, coef_f, coef_u, coef_w))
    return loss, f, u, w, saved


class _ForwardPlan(NamedTuple):
    """A forward launch, as far as its signature sets it (``_forward_plan``)."""

    launcher: direct_launch.Launcher  # the kernel, its launch config's and shape's constexprs
    finish: direct_launch.Launcher  # the loss's reduction over the programs' partials
    programs: int
    scratch: int  # elements of the per-call scratch stacks; 0: none (the saved ones, or f)
    saved: int  # elements of the saved pre-activations (0: the forward keeps none)
    activated: int  # elements of the activated layers' scratch, in x's dtype (0: none)
    k: int
    m: int
    order: int


def _forward_plan(
    tensors: tuple, has_y: bool, target_kind: int, target2_kind: int, has_bias: bool,
    activation: int, negative_slope: float, order: int, allow_tf32: bool,
    save_activations: bool,
) -> _ForwardPlan:  # fmt: skip
    """The forward's plan for this signature: its launch config measured (``tuning``, where
    the tuner runs the candidates on ``tensors``) or static, the kernel that takes it."""
    x, v, weights = tensors[0], tensors[1], tensors[5]
    batch, dev = x.shape[0], x.device
    layout = layout_of(x, v, list(weights), order)
    k, m = layout.k, layout.widths[-1]
    hidden = layout.widths[1:-1]
    constexprs = dict(
        **layout.constexprs(), **layout.hidden_stacks(save_activations), ACT=activation,
        SHARED=v.ndim == 2, HAS_BIAS=has_bias, HAS_Y=has_y, TARGET=target_kind,
        TARGET2=target2_kind, EMULATE_BF16=_emulate_bf16(x.dtype),
    )  # fmt: skip
    # Keeping nothing in the lean mode that recomputes per row tile: the forward's scratch is
    # per program too (persistent), so no buffer of the step grows with the batch
    persistent = bool(hidden) and not save_activations and _backward_forced() == "persistent"
    kernel = _sobolev_fwd_persistent_kernel if persistent else _sobolev_fwd_kernel
    saved = layout.saved_elements(batch) if save_activations else 0
    finish = direct_launch.launcher(_sobolev_loss_finish_kernel, {"BLOCK": 256})
    # every tensor the kernels index, and the largest stack they may take (scratch, the
    # activated layers'); f, u and w are no larger than the targets' (B, K, m)
    sizes = (*(t.numel() for t in tensors[:5]), batch * k * m, saved,
             layout.scratch_elements(batch))  # fmt: skip

    def plan(config: LaunchConfig) -> _ForwardPlan:
        programs, scratch, activated = cdiv(batch, config.rows), 0, 0
        run, extra = kernel, {}
        if config.resident:  # its activations stay in registers: no scratch
            run, extra = _sobolev_fwd_resident_kernel, {"STORE_HIDDEN": save_activations,
                                                        "INDEX64": _index64(*sizes)}  # fmt: skip
        elif persistent:
            programs = _persistent_programs(batch, config, dev)
            scratch = programs * layout.scratch_elements(config.rows)
        else:
            on = config.activated and bool(hidden)
            scratch_layout = layout.hidden_stacks(False)
            # activated: the layers reload [h; t; tt] from scratch of their own; the
            # pre-activations are stored for a backward, or for the further direction
            # groups' passes (which reload them)
            store_z = save_activations or not on or layout.kp > config.group
            extra = dict(ACTIVATED=on, STORE_Z=store_z, A_OFFS=scratch_layout["Z_OFFS"],
                         A_STRIDES=scratch_layout["Z_STRIDES"],
                         INDEX64=_index64(*sizes))  # fmt: skip
            if on:
                activated = layout.scratch_elements(batch)
            if hidden and store_z and not save_activations:
                scratch = layout.scratch_elements(batch)
        launcher = direct_launch.launcher(run, {**_tuned(layout, config, "fwd"), **constexprs,
                                                **extra})  # fmt: skip
        return _ForwardPlan(launcher, finish, programs, scratch, saved, activated, k, m, order)

    def launch(config: LaunchConfig) -> Tensor:
        # Idempotent (every output is overwritten), so the tuner may run it repeatedly.
        return _forward_with(plan(config), tensors, negative_slope)[0]

    name = "fwd_persistent" if persistent else "fwd"
    return plan(_launch_config(name, layout, x, constexprs, allow_tf32, launch, persistent))


def _forward_with(plan: _ForwardPlan, tensors: tuple, negative_slope: float) -> tuple:
    """The forward kernel's launch on ``tensors`` (x, v, y, target, target2, weights,
    biases, stand-ins for the absent): (its per-program loss partials, f, u, w, saved)."""
    x = tensors[0]
    batch, k, m, dev, dtype = x.shape[0], plan.k, plan.m, x.device, x.dtype
    acc = _accumulation_dtype(dtype)
    f = torch.empty(batch, m, device=dev, dtype=dtype)
    u = torch.empty(batch, k, m, device=dev, dtype=dtype)
    w = torch.empty((batch, k, m) if plan.order == 2 else (0,), device=dev, dtype=dtype)
    saved = torch.empty(plan.saved, device=dev, dtype=acc)
    stacks = torch.empty(plan.scratch, device=dev, dtype=acc) if plan.scratch else (
        saved if plan.saved else f)  # fmt: skip
    # (in x's dtype: the dots read their operands in it, whether loaded so or cast)
    activated = torch.empty(plan.activated, device=dev, dtype=dtype) if plan.activated else f
    partial = torch.empty(plan.programs, 3, device=dev, dtype=torch.float32)
    plan.launcher((plan.programs,), (*tensors, f, u, w if plan.order == 2 else u, stacks,
                                     activated, partial, batch, negative_slope))  # fmt: skip
    return partial, f, u, w, saved


def sobolev_backward(
    grad_loss: Tensor | None,
    grad_f: Tensor | None,
    grad_u: Tensor | None,
    grad_w: Tensor | None,
    x: Tensor,
    directions: Tensor,
    y: Tensor | None,
    target_jvp: Tensor | None,
    target_grad: Tensor | None,
    target_hvp2: Tensor | None,
    target_hess: Tensor | None,
    weights: list[Tensor],
    biases: list[Tensor],
    f: Tensor,
    u: Tensor,
    w: Tensor,
    saved: Tensor,
    activation: int,
    negative_slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    allow_tf32: bool,
    need_grad_x: bool,
    need_grad_params: bool,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The fused backward and the weight-gradient GEMMs: (grad_x, [dW_l], [db_l]); see
    ``sobolev_kernels/fused.py``. grad_x is empty unless ``need_grad_x``, the lists are empty
    unless ``need_grad_params``. The backward kernel and the weight gradients' (``_backward``)
    or one persistent launch (``_backward_persistent``), as ``_backward_method`` chooses.
    Where the forward kept nothing (the user traded time for memory), the hidden
    pre-activations are recomputed: RECOMPUTE_ROWS samples at a time
    (``_backward_in_row_chunks``) or per row tile in the persistent launch, and the weight
    gradients form the layer inputs themselves."""
    args = (grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad,
            target_hvp2, target_hess, weights, biases, f, u, w)  # fmt: skip
    scalars = (activation, negative_slope, alpha, beta, gamma, order, allow_tf32)
    if len(weights) == 1:  # no hidden layer: nothing saved, nothing to recompute
        return _backward(*args, saved, *scalars, need_grad_x, need_grad_params, x.shape[0])
    layout = layout_of(x, directions, weights, order)
    kept = saved.numel() > 0  # else the forward kept nothing: recompute

    def run(method: str) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        if method == "persistent":
            return _backward_persistent(args, scalars, need_grad_x, need_grad_params,
                                        saved if kept else None)  # fmt: skip
        if kept:
            return _backward(*args, saved, *scalars, need_grad_x, need_grad_params, x.shape[0])
        rows = _recompute_rows(layout, x.shape[0])
        return _backward_in_row_chunks(args, scalars, rows, need_grad_x, need_grad_params)

    return run(_backward_method(layout, x, allow_tf32, kept, run))


def _backward(
    grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad, target_hvp2,
    target_hess, weights, biases, f, u, w, saved, activation, negative_slope, alpha, beta,
    gamma, order, allow_tf32, need_grad_x, need_grad_params, loss_batch: int,
    grad_x: Tensor | None = None, running: Tensor | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:  # fmt: skip
    """sobolev_backward with the saved pre-activations at hand, for the rows of x, in a loss
    over ``loss_batch`` samples (more than x's rows when x is a chunk of the batch). With
    ``grad_x`` (a view) dL/dx goes there; with ``running`` (an fp32 (1 + splits, N) buffer)
    the weight gradients are ``recompute``'s split-K partials, added into its row 0 and
    returned as empty lists. Planned once per signature where neither is given, once the
    weight gradients' method is chosen (``_BackwardPlan``)."""
    batch = x.shape[0]
    dev, dtype = x.device, x.dtype
    x, v = x.contiguous(), directions.contiguous()
    has_bias = bool(biases)
    key = None
    if grad_x is None and running is None:
        key = ("bwd", x.shape, dtype, dev, v.shape, y is None, target_jvp is None,
               target_grad is None, target_hvp2 is None, target_hess is None,
               grad_loss is None, grad_f is None, grad_u is None, grad_w is None,
               tuple(p.shape for p in weights), has_bias, activation, order, allow_tf32,
               need_grad_x, need_grad_params, saved.numel(), _settings())  # fmt: skip
    plan = _plans.get(key) if key is not None else None
    layout = plan.layout if plan is not None else layout_of(x, v, weights, order)
    widths = layout.widths
    (y, target, target2, grad_loss, grad_f, grad_u, grad_w, f, u, w), coefs, seeds = _seeds(
        layout, x, y, target_jvp, target_grad, target_hvp2, target_hess,
        (grad_loss, grad_f, grad_u, grad_w), (f, u, w), alpha, beta, gamma, loss_batch,
    )  # fmt: skip
    stack = layout.blocks * batch
    w_ptrs = tuple(p.contiguous() for p in weights)
    # None: measured after this backward, which then stores the inputs every method can use
    if plan is not None:
        method = plan.method
    elif running is not None:
        method = "recompute"
    elif need_grad_params:
        method = _weight_grad_method(layout, x, has_bias, allow_tf32)
    else:
        method = None
    store_inputs = need_grad_params and method_form(method or "")[0] != "recompute"
    adj = torch.empty(stack * sum(widths[1:]), device=dev, dtype=dtype)
    inputs = torch.empty(stack * sum(widths[:-1]) if store_inputs else 0, device=dev, dtype=dtype)
    nb = sum(widths[1:])
    if grad_x is None:
        grad_x = _empty_like(x) if need_grad_x else x.new_empty(0)
    args = (x, v, y, target, target2, w_ptrs, saved, f, u, w, grad_loss, grad_f, grad_u, grad_w,
            adj, inputs if store_inputs else adj, grad_x if need_grad_x else x)  # fmt: skip

    def launch(plan: _BackwardPlan) -> Tensor:
        # Idempotent (every output is overwritten), so the tuner may run it repeatedly.
        db_partial = torch.empty(plan.programs, nb if has_bias else 0, device=dev,
                                 dtype=torch.float32)  # fmt: skip
        plan.launcher((plan.programs,), (*args, db_partial, batch, negative_slope, *coefs))
        return db_partial

    if plan is None:
        constexprs = dict(
            **layout.constexprs(), IN_CUM=layout.in_cum, ACT=activation,
            SMOOTH=activation in SMOOTH, SHARED=v.ndim == 2, HAS_BIAS=has_bias, **seeds,
            NEED_DX=need_grad_x, STORE_INPUTS=store_inputs, EMULATE_BF16=_emulate_bf16(dtype),
            # (args holds every tensor the kernel indexes: the stacks too)
            INDEX64=_index64(*(t.numel() for t in args if isinstance(t, Tensor))),
            INPUTS_KMAJOR=_inputs_kmajor(),
        )  # fmt: skip

        def plan_of(config: LaunchConfig, stores: bool = store_inputs) -> _BackwardPlan:
            kernel = _sobolev_bwd_resident_kernel if config.resident else _sobolev_bwd_kernel
            launcher = direct_launch.launcher(kernel, {
                **_tuned(layout, config, "bwd"), **constexprs, "STORE_INPUTS": stores})  # fmt: skip
            return _BackwardPlan(layout, launcher, cdiv(batch, config.rows), method,
                                 constexprs["INPUTS_KMAJOR"])  # fmt: skip

        chosen = _launch_config("bwd", layout, x, constexprs, allow_tf32,
                                lambda config: launch(plan_of(config)))  # fmt: skip
        plan = plan_of(chosen)
        if key is not None and (method is not None or not need_grad_params):
            _keep(key, plan, dev)
    db_partial = launch(plan)
    if not need_grad_params:
        return grad_x, [], []
    # what recompute forms the layer inputs from
    lean = dict(saved=saved, v=v, activation=activation, slope=negative_slope)
    if running is not None:
        partial = _weight_grad_partials(layout, x, adj, inputs, has_bias, allow_tf32,
                                        out=running[1:], **lean)  # fmt: skip
        # row 0 += this chunk's rows (each program reads its columns before it writes them)
        _sum_partials(running[: 1 + partial.shape[0]], [running[0]], (0,), torch.float32)
        return grad_x, [], []

    def parameter_grads(method: str) -> tuple[list[Tensor], list[Tensor]]:
        form, wide = method_form(method)
        if form in ("gemm", "cutlass"):
            return _grads_by_gemm(layout, batch, adj, inputs, db_partial, weights, biases,
                                  plan.inputs_kmajor, form == "cutlass")  # fmt: skip
        if form == "recompute":
            return _grads_by_splitk(layout, x, adj, inputs, weights, biases, allow_tf32, **lean,
                                    wide=wide)  # fmt: skip
        stages = 1 if form == "splitk_unpipelined" else None
        return _grads_by_splitk(layout, x, adj, inputs, weights, biases, allow_tf32,
                                kmajor=plan.inputs_kmajor, stages=stages, wide=wide)  # fmt: skip

    if method is None:  # (then this call planned the backward: ``chosen`` is its config)
        without_stores = functools.cache(lambda: plan_of(chosen, False))
        timed = _with_its_backward(
            parameter_grads, lambda stores: launch(plan if stores else without_stores())
        )
        method = _weight_grad_method(layout, x, has_bias, allow_tf32, timed)
    return (grad_x, *parameter_grads(method))


def _with_its_backward(
    parameter_grads: Callable[[str], object], launch_backward: Callable[[bool], object]
) -> Callable[[str], object]:
    """What the weight-gradient tuner times per method: the backward kernel as that method
    needs it (``launch_backward(stores)``: the inputs stacks stored, or for the recompute
    forms not), then the method. Timed alone, recompute was charged nothing for the stacks it
    spares the backward kernel: the H200's run 5 (2026-11-27) measured it at 0.49 against
    gemm's 0.24 ms at config M in bf16, where the whole step took 1.20 against 1.40 ms with it
    (triton_recompute). The kernel without the stores is compiled on its first launch, at the
    backward's launch config; it leaves the stacks the other methods read as the first launch
    stored them."""

    def run(method: str) -> object:
        launch_backward(method_form(method)[0] != "recompute")
        return parameter_grads(method)

    return run


class _BackwardPlan(NamedTuple):
    """The backward kernel's launch, as far as its signature sets it (``_backward``)."""

    layout: Layout
    launcher: direct_launch.Launcher  # the kernel, its launch config's and shape's constexprs
    programs: int
    method: str | None  # how the weight gradients are formed (None: no weight gradients)
    inputs_kmajor: bool  # the inputs stacks stored transposed (_inputs_kmajor)


# Samples per chunk when the backward recomputes what the forward did not keep (the forward
# ran with save_activations false: SOBOLEV_SAVE_ACTIVATIONS=0): its stacks then hold one chunk
# of the batch, not all of it.
RECOMPUTE_ROWS = 16384


def _recompute_rows(layout: Layout, batch: int) -> int:
    """Samples per chunk of a recomputing backward: SOBOLEV_TRITON_RECOMPUTE_ROWS (default
    RECOMPUTE_ROWS), at most what the split-K kernel's 32-bit offsets take."""
    rows = env_positive_int("SOBOLEV_TRITON_RECOMPUTE_ROWS", RECOMPUTE_ROWS)
    return min(rows, batch, max(1, _splitk_max_batch(layout)))


def _backward_in_row_chunks(
    args: tuple, scalars: tuple, rows: int, need_grad_x: bool, need_grad_params: bool
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The backward of a forward that kept nothing, ``rows`` samples at a time: per chunk the
    forward again (keeping the chunk's pre-activations), the backward kernel and the
    ``recompute`` split-K partials, added in chunk order into one fp32 row; one reduction
    into the parameters' gradients at the end. The stacks hold one chunk at a time: the
    memory of the step no longer grows with the batch (five launches per chunk: forward and
    its loss reduction, backward, split-K partials, their sum; two more in all)."""
    (grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad, target_hvp2,
     target_hess, weights, biases, f, u, w) = args  # fmt: skip
    order, allow_tf32 = scalars[5], scalars[6]
    batch = x.shape[0]
    layout = layout_of(x, directions, weights, order)
    grad_x = _empty_like(x) if need_grad_x else x.new_empty(0)  # contiguous: chunks of rows
    running = None
    if need_grad_params:
        splits = _split_rows(layout, rows, x.device)[0]  # the first chunk is the largest
        n = layout.weight_grad_constexprs(bool(biases))["N_PARTIAL"]
        running = torch.empty(1 + splits, n, device=x.device, dtype=torch.float32)
        running[0].zero_()

    def rows_of(t: Tensor | None, c0: int, c1: int) -> Tensor | None:
        # a per-sample tensor's chunk (None and order 1's empty w as they are)
        return t[c0:c1] if t is not None and t.numel() else t

    for c0 in range(0, batch, rows):
        c1 = min(batch, c0 + rows)
        v_c = directions if directions.ndim == 2 else directions[c0:c1]  # shared: (K, d)
        x_c, y_c, tj, tg, th2, th, f_c, u_c, w_c, gf, gu, gw = (
            rows_of(t, c0, c1)
            for t in (x, y, target_jvp, target_grad, target_hvp2, target_hess, f, u, w, grad_f,
                      grad_u, grad_w)
        )  # fmt: skip
        saved = sobolev_forward(x_c, v_c, y_c, tj, tg, th2, th, weights, biases, *scalars[:5],
                                order, allow_tf32, True)[4]  # fmt: skip
        _backward(grad_loss, gf, gu, gw, x_c, v_c, y_c, tj, tg, th2, th, weights, biases, f_c,
                  u_c, w_c, saved, *scalars, need_grad_x, need_grad_params, batch,
                  grad_x=grad_x[c0:c1] if need_grad_x else None, running=running)  # fmt: skip
    if not need_grad_params:
        return grad_x, [], []
    return (grad_x, *_parameter_grads_of(running[:1], layout, weights, biases, x.dtype))


def _backward_persistent(
    args: tuple, scalars: tuple, need_grad_x: bool, need_grad_params: bool,
    saved: Tensor | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:  # fmt: skip
    """The backward in one persistent launch (see ``persistent_backward.py``), its tiles' hidden
    layers run again or, with ``saved``, copied from the forward's saved pre-activations;
    then one reduction of the programs' partial rows into the parameters' gradients."""
    (grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad, target_hvp2,
     target_hess, weights, biases, f, u, w) = args  # fmt: skip
    activation, negative_slope, alpha, beta, gamma, order, allow_tf32 = scalars
    batch = x.shape[0]
    layout = layout_of(x, directions, weights, order)
    widths = layout.widths
    dev, dtype = x.device, x.dtype
    x, v = x.contiguous(), directions.contiguous()
    tensors, coefs, seeds = _seeds(
        layout, x, y, target_jvp, target_grad, target_hvp2, target_hess,
        (grad_loss, grad_f, grad_u, grad_w), (f, u, w), alpha, beta, gamma, batch,
    )  # fmt: skip
    (y, target, target2, grad_loss, grad_f, grad_u, grad_w, f, u, w) = tensors
    w_ptrs = tuple(p.contiguous() for p in weights)
    b_ptrs = tuple(p.contiguous() for p in biases) if biases else w_ptrs
    grad_x = torch.empty_like(x) if need_grad_x else x.new_empty(0)
    geometry = layout.weight_grad_constexprs(bool(biases))
    constexprs = dict(
        **layout.constexprs(), IN_CUM=layout.in_cum, ACT=activation,
        SMOOTH=activation in SMOOTH, SHARED=v.ndim == 2, HAS_BIAS=bool(biases), **seeds,
        NEED_DX=need_grad_x, NEED_PARAMS=need_grad_params, EMULATE_BF16=_emulate_bf16(dtype),
        Z_STRIDES=layout.hidden_stacks(True)["Z_STRIDES"], W_OFFS=geometry["W_OFFS"],
        DB_OFFS=geometry["B_OFFS"], N_PARTIAL=geometry["N_PARTIAL"], BM=geometry["BM"],
        BN=geometry["BN"], BK=geometry["BK"],
        DW_PRECISION=_kernel_precision(_precisions(dtype, allow_tf32)[1]),
        RECOMPUTE=saved is None,
    )  # fmt: skip

    def launch(config: LaunchConfig) -> Tensor:
        # Idempotent (every output is overwritten), so the tuner may run it repeatedly.
        programs = _persistent_programs(batch, config, dev)
        span_rows = layout.blocks * config.rows * config.dw_tiles  # stacked rows of a span
        z = torch.empty(programs * span_rows * sum(widths[1:-1]), device=dev,
                        dtype=_accumulation_dtype(dtype))  # fmt: skip
        adj = torch.empty(programs * span_rows * sum(widths[1:]), device=dev, dtype=dtype)
        partial = torch.empty(programs, geometry["N_PARTIAL"] if need_grad_params else 0,
                              device=dev, dtype=torch.float32)  # fmt: skip
        direct_launch.launch(_sobolev_bwd_persistent_kernel, (programs,), (
            x, v, y, target, target2, w_ptrs, b_ptrs, f, u, w, grad_loss, grad_f, grad_u,
            grad_w, z, saved if saved is not None else z, adj, grad_x if need_grad_x else x,
            partial if need_grad_params else z, batch, negative_slope, *coefs,
        ), {**_tuned(layout, config, "bwd"), "FWD_COLS": layout.col_blocks(config.cols, "fwd"),
            "DW_TILES": config.dw_tiles, **constexprs})  # fmt: skip
        return partial

    # (the static launch and the tensor-core ones: each candidate is a compile of tens of
    # seconds for this kernel)
    config = _launch_config("bwd_persistent", layout, x, constexprs, allow_tf32, launch, True)
    partial = launch(config)
    if not need_grad_params:
        return grad_x, [], []
    return (grad_x, *_parameter_grads_of(partial, layout, weights, biases, dtype))


def _persistent_programs(batch: int, config: LaunchConfig, device: torch.device) -> int:
    """Programs of a persistent kernel, at most one per span of ``dw_tiles`` row tiles (a
    tile, but in the persistent backward's spans): as many per SM as the backward's
    registers let run at once (ahead-of-time compiles use all 255 a thread: one program of 8
    warps, two of 4), since each further one only costs memory (its scratch, and the
    backward's row of partial sums). Two where the interpreter runs it, so that a program
    takes several spans and the reduction adds several rows."""
    per_sm = 2 if gpu_properties(device) is None else max(1, 8 // config.warps)
    span = config.rows * config.dw_tiles
    return max(1, min(cdiv(batch, span), per_sm * multiprocessors(device)))
