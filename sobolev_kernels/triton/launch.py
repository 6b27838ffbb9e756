"""Launchers of the fused Triton kernels: check, allocate, choose a launch config, launch.

Both follow the fused op contract (``sobolev_kernels/fused.py``): the same arguments, in the
same order, as the C++ ops ``sobolev_forward`` / ``sobolev_backward``, and the same outputs:
f (B, m), u and w (B, K, m) in x's dtype, the loss and the saved hidden pre-activations in
the accumulation dtype (fp32). No autograd here: ``triton/ops.py`` registers these as the
``triton_sobolev_forward`` / ``triton_sobolev_backward`` ops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch
from torch import Tensor
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

from .. import tuning
from . import direct_launch, env_flag, interpreting
from .activations import SMOOTH
from .backward import _sobolev_bwd_kernel
from .backward_resident import _sobolev_bwd_resident_kernel
from .forward import (
    _sobolev_fwd_kernel,
    _sobolev_fwd_persistent_kernel,
    _sobolev_loss_finish_kernel,
)
from .forward_resident import _sobolev_fwd_resident_kernel
from .layout import (
    LaunchConfig,
    Layout,
    cdiv,
    device_properties,
    next_power_of_2,
    shared_memory_limit,
)
from .persistent_backward import _sobolev_bwd_persistent_kernel
from .weight_grad import _sum_partials_kernel, _sum_row_blocks_kernel, _weight_grad_partials_kernel

# The kernels' TARGET / TARGET2 constexprs: which derivative target they contract.
TARGET_NONE, TARGET_JVP, TARGET_GRAD = 0, 1, 2  # first order: (B, K, m) or (B, m, d)
TARGET_HVP2, TARGET_HESS = 1, 2  # second order: (B, K, m) or (B, m, d, d)

# A launch config that does not fit the GPU fails to compile or load; the tuner skips it.
_DOES_NOT_FIT = (OutOfResources, PTXASError, CompileTimeAssertionFailure)


# What a launch derives from its signature alone (shapes, dtypes, flags, settings), planned
# once per signature: a step's host time (``investigations/triton_host_time.py``).
_plans: dict[Hashable, object] = {}
# The settings a plan depends on, read as raw bytes where CPython keeps them (os.environ.get
# takes about 1 us a variable).
_SETTINGS = ("SOBOLEV_TRITON_FORWARD", "SOBOLEV_TRITON_BACKWARD",
             "SOBOLEV_TRITON_BACKWARD_KERNEL", "SOBOLEV_TRITON_WIDE_TILES",
             "SOBOLEV_TRITON_WEIGHT_GRAD", "SOBOLEV_TRITON_RECOMPUTE_ROWS", "SOBOLEV_AUTOTUNE",
             "SOBOLEV_TRITON_DIRECT_LAUNCH", "SOBOLEV_TRITON_FORWARD_ACTIVATED",
             "SOBOLEV_TRITON_INDEX", "SOBOLEV_TRITON_TF32X3", "SOBOLEV_TRITON_INPUTS_LAYOUT",
             "TRITON_INTERPRET")  # fmt: skip
_ENVIRON = getattr(os.environ, "_data", None) if os.name == "posix" else None
_SETTINGS_KEYS = tuple(os.fsencode(name) for name in _SETTINGS)


def _settings() -> tuple:
    """The current values of _SETTINGS (None where unset), part of every plan's key."""
    if _ENVIRON is None:
        return tuple(map(os.environ.get, _SETTINGS))
    return tuple(map(_ENVIRON.get, _SETTINGS_KEYS))


def _keep(key: Hashable, plan: object, device: torch.device) -> None:
    """Keep ``plan`` for later calls with ``key`` where its choices hold for them: measured,
    or static where nothing is ever measured (off CUDA, SOBOLEV_AUTOTUNE=0); not the static
    ones made while torch.compile traces or a CUDA graph is captured."""
    if device.type != "cuda" or not tuning.enabled() or tuning.can_measure(device):
        _plans[key] = plan


def clear_plans() -> None:
    """Forget every plan (``tuning.clear`` calls this: its choices are in them)."""
    _plans.clear()


tuning.on_clear(clear_plans)


def _precisions(dtype: torch.dtype, allow_tf32: bool) -> tuple[str, str]:
    """(static, tensor-core) dot precisions of fp32 operands. fp32 stays fp32-accurate unless
    the user allows TF32: exact FMA dots ("ieee") statically, the GPU measured them on the
    H200 (2026-11-26); three-TF32 dots ("tf32x3", fp32-accurate, tensor cores) are an
    autotuner candidate. bf16/fp16 operands ignore the precision: their dots are tensor-core
    dots either way."""
    if dtype != torch.float32:
        return "ieee", "ieee"
    return ("tf32", "tf32") if allow_tf32 else ("ieee", "tf32x3")


TF32X3_FORMS = ("triton", "split")


def _kernel_precision(precision: str) -> str:
    """The kernels' PRECISION for a launch's dot precision. SOBOLEV_TRITON_TF32X3: how the
    3xTF32 dots are formed, Triton's own "tf32x3" (``triton``, the default) or split by the
    kernels into three TF32 dots on one accumulator (``split``: "tf32x3_split",
    ``tiles._dot_acc``; unmeasured on a GPU, which times both: provider
    ``triton_split_tf32x3``)."""
    form = os.environ.get("SOBOLEV_TRITON_TF32X3", "triton")
    if form not in TF32X3_FORMS:
        raise ValueError(f"SOBOLEV_TRITON_TF32X3: expected {' or '.join(TF32X3_FORMS)}; "
                         f"got {form!r}")  # fmt: skip
    return "tf32x3_split" if precision == "tf32x3" and form == "split" else precision


INPUTS_LAYOUTS = ("rows", "kmajor")


def _inputs_kmajor() -> bool:
    """SOBOLEV_TRITON_INPUTS_LAYOUT: how the backward stores the layer inputs stacks S_{l-1}
    that the weight gradients read, row-major (``rows``, the default) or transposed
    (``kmajor``: (n_{l-1}, stack), the stacked rows contiguous; ``tiles._stack_offsets``).
    The split-K kernel's fp32 dots take the transposed ones without transposing them through
    shared memory on every step (``weight_grad.py``; sm_90 ahead of time: no scalar shared
    stores left in its row loop); cuBLAS takes either. Unmeasured on a GPU, which times it:
    provider ``triton_kmajor_inputs``."""
    layout = os.environ.get("SOBOLEV_TRITON_INPUTS_LAYOUT", "rows")
    if layout not in INPUTS_LAYOUTS:
        raise ValueError(f"SOBOLEV_TRITON_INPUTS_LAYOUT: expected {' or '.join(INPUTS_LAYOUTS)}; "
                         f"got {layout!r}")  # fmt: skip
    return layout == "kmajor"


def _emulate_bf16(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 is not the GPU's (triton 3.6 and 3.9): its tl.dot misreads bf16
    # operands and it converts fp32 to bf16 by truncation. Under this flag the kernels run
    # their dots on fp32 operands (rounded to bf16 first) and round their bf16 stores to
    # nearest even by hand.
    return dtype == torch.bfloat16 and interpreting()


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


def _launch_config(
    kernel: str, layout: Layout, x: Tensor, constexprs: dict, allow_tf32: bool,
    launch: Callable[[LaunchConfig], object], tensor_core_only: bool = False,
) -> LaunchConfig:  # fmt: skip
    """The launch config of one kernel: measured once per shape on a GPU (``tuning``), else
    the static choice (``Layout.static_config``). With ``tensor_core_only`` the candidates
    are the static one and the tensor-core ones (fewer compiles of a big kernel). The
    forward ("fwd") always has ``Layout.tensor_core_config`` among them and, in bf16, the
    resident kernel's configs (the H200 measured both faster and correct there);
    SOBOLEV_TRITON_FORWARD narrows them to one kernel. The backward ("bwd") takes the
    resident kernel's only when SOBOLEV_TRITON_BACKWARD_KERNEL=resident asks for it."""
    limit = shared_memory_limit(x.device)
    wide = _wide_tiles(x.dtype)
    forced = "auto"
    if kernel == "fwd":
        forced = _forward_forced()
    elif kernel == "bwd":
        forced = _backward_kernel_forced()
    activated = _forward_activated() if kernel == "fwd" else "0"  # (the chunked forward's)
    key = _tuning_key(kernel, x, constexprs, allow_tf32) + (("wide tiles",) if wide else ())
    key += (forced,) if forced != "auto" else ()
    key += ("activated " + activated,) if kernel == "fwd" and activated != "auto" else ()
    chosen = tuning.chosen(key)
    if chosen is not None:  # every call after a shape's first: no candidates to build
        return chosen
    static, tensor_core = _precisions(x.dtype, allow_tf32)
    resident = []
    offer = kernel == "fwd" and forced == "auto" and _offers_resident(x, layout)
    if forced == "resident" or offer:
        resident = layout.resident_configs(x.element_size(), limit, tensor_core, kernel)
    if forced == "resident" and resident:  # (else the shape does not fit it: chunked)
        if not tuning.can_measure(x.device):
            return resident[0]
        return tuning.fastest(key, resident, launch, _DOES_NOT_FIT)
    if not tuning.can_measure(x.device):
        return _with_activated(layout, [layout.static_config(x.element_size(), limit, static)],
                               activated)[0]  # fmt: skip
    configs = layout.launch_configs(x.element_size(), limit, static, tensor_core,
                                    wide or kernel == "fwd")  # fmt: skip
    if tensor_core_only:
        configs = configs[:1] + [c for c in configs[1:] if c.precision != static or c.cols]
    configs = _with_activated(layout, configs, activated)
    return tuning.fastest(key, configs + resident, launch, _DOES_NOT_FIT)


def _index64(*numels: int) -> bool:
    """Whether the chunked and resident kernels index in 64 bits (INDEX64).
    SOBOLEV_TRITON_INDEX: ``32``, 32 bits unless a tensor they index, of these numbers of
    elements, may hold an offset past 2^31 - 1; ``64``, 64 bits always; ``auto`` (unset),
    ``32`` on a GPU and ``64`` in the interpreter, whose 32-bit arithmetic checks every
    operation for overflow (the CPU tuner sweep took 139 s instead of 87).
    64-bit rows and batch take more registers: ahead of time for sm_90 with triton 3.6 the
    column-block kernels of configs S, M and L spilled less in 32 bits in 17 of 18 cases (M's
    backward 23-40% less; bench/results/triton_activated_forward_sm90.md; the H200 measured
    only 64-bit rows, 2026-11-27). The 64-bit form also computes each layer's stack offset,
    S B times its column offset, in 64 bits: in 32 it wrapped past 2^31 elements."""
    forced = _forced_method("SOBOLEV_TRITON_INDEX", ("32", "64"))
    if forced == "64" or (forced == "auto" and interpreting()):
        return True
    return max(numels, default=0) > _INT32_LIMIT


def _forward_activated() -> str:
    """SOBOLEV_TRITON_FORWARD_ACTIVATED: unset (auto), 1 or 0. The chunked forward activates
    a hidden layer's outputs where the next layer reloads them, once per column block and
    direction group of that layer (``Layout.activates_per_pass``): at config L (width 256,
    32 columns a block, four groups) 32 times. Its ``activated`` form stores them activated
    once and reloads those (forward.py). Auto: the tuner measures the activated twin of the
    column-block candidate (``Layout.tensor_core_config``) beside the rest; 1: every chunked
    forward config (the static one too) is activated; 0: none. The twin's speed is
    unmeasured on a GPU (2026-11-27): the reloading form, which the H200 measured, stays a
    candidate and the static choice."""
    raw = os.environ.get("SOBOLEV_TRITON_FORWARD_ACTIVATED")
    if raw is None:
        return "auto"
    return "1" if env_flag("SOBOLEV_TRITON_FORWARD_ACTIVATED", "0") else "0"


def _with_activated(layout: Layout, configs: list[LaunchConfig],
                    activated: str) -> list[LaunchConfig]:  # fmt: skip
    """The forward's candidates under ``_forward_activated``: as they are ("0"), each
    activated where that saves work ("1"), or the column-block candidates' activated twins
    added ("auto")."""
    if activated == "0":
        return configs
    if activated == "1":
        return [c._replace(activated=layout.activates_per_pass(c)) for c in configs]
    twins = [c._replace(activated=True) for c in configs
             if c.cols and layout.activates_per_pass(c)]  # fmt: skip
    return configs + twins


def _offers_resident(x: Tensor, layout: Layout) -> bool:
    # measured faster and correct in bf16 at order 1 only (H200, 2026-11-27); fp16 and
    # order 2 take the same tensor-core path but were not measured, and in fp32 the chunked
    # kernel won
    return x.dtype == torch.bfloat16 and layout.order == 1


KERNEL_FORMS = ("chunked", "resident")  # what SOBOLEV_TRITON_FORWARD / _BACKWARD_KERNEL take


def _forward_forced() -> str:
    """SOBOLEV_TRITON_FORWARD: auto (the tuner's choice among both kernels' candidates) or
    one of KERNEL_FORMS: ``chunked`` (forward.py) only, or ``resident``
    (forward_resident.py: activations in registers, whole-K dots) where the shape fits it."""
    return _forced_method("SOBOLEV_TRITON_FORWARD", KERNEL_FORMS)


def _backward_kernel_forced() -> str:
    """SOBOLEV_TRITON_BACKWARD_KERNEL: auto (the chunked kernel of backward.py) or one of
    KERNEL_FORMS: ``resident`` (backward_resident.py: adjoints in registers, whole-K dots,
    every direction in one pass) where the shape fits it. Opt-in until a GPU has measured it
    (``bash scripts/gpu_session.sh explore`` times it)."""
    return _forced_method("SOBOLEV_TRITON_BACKWARD_KERNEL", KERNEL_FORMS)


def _wide_tiles(dtype: torch.dtype) -> bool:
    """Whether the backward kernels' candidates include the 64-row column-block launch config
    (``Layout.tensor_core_config``; the forward's always do). SOBOLEV_TRITON_WIDE_TILES: 1
    (every dtype) or 0 (none); unset, fp32 only. On the H200 (2026-11-27, run 5) every
    backward config agreed with the reference in fp32 at both orders (the gpu test of every
    launch config), and the step in bf16 ran without a fault, its gradients unchecked there.
    Its speed in the backward is unmeasured: the tuner measures it beside the others. (Its
    first form, on 8 warps, computed wrong losses or faulted there: ``tf32_splits_rows``.)"""
    if os.environ.get("SOBOLEV_TRITON_WIDE_TILES") is None:
        return dtype == torch.float32
    return env_flag("SOBOLEV_TRITON_WIDE_TILES", "0")


def _tuning_key(kernel: str, x: Tensor, constexprs: dict, allow_tf32: bool) -> tuple:
    # every compile-time constant but the tuned ones, the dtype, the precision allowed, the
    # device and the batch rounded up to a power of two (the best rows per program depend on
    # how many programs run). Not STORE_INPUTS: the backward's config is measured while it
    # stores its inputs (the weight-gradient method is chosen after it) and serves it without.
    batch = next_power_of_2(max(1, x.shape[0]))
    # (in the call site's order, which is fixed: sorting cost microseconds a launch)
    constants = tuple(kv for kv in constexprs.items() if kv[0] != "STORE_INPUTS")
    key = ("triton", kernel, str(x.device), x.dtype, allow_tf32, batch, constants)
    # (3xTF32 dots formed by the kernels: their candidates measured apart)
    return key + ("tf32x3 split",) if _kernel_precision("tf32x3") != "tf32x3" else key


def _tuned(layout: Layout, config: LaunchConfig, kernel: str) -> dict:
    """A kernel's launch arguments that the config sets (built once per layout, config and
    kernel; callers unpack it, never change it)."""
    precision = _kernel_precision(config.precision)
    return layout.cached(("tuned", config, kernel, precision), lambda: dict(
        ROWS=config.rows, GROUP=config.group, num_warps=config.warps,
        CHUNKS=layout.chunks(config.chunk), PRECISION=precision,
        COLS=layout.col_blocks(config.cols, kernel),
    ))  # fmt: skip


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
    store_inputs = need_grad_params and method != "recompute"
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

        def plan_of(config: LaunchConfig) -> _BackwardPlan:
            kernel = _sobolev_bwd_resident_kernel if config.resident else _sobolev_bwd_kernel
            launcher = direct_launch.launcher(kernel, {**_tuned(layout, config, "bwd"),
                                                       **constexprs})  # fmt: skip
            return _BackwardPlan(layout, launcher, cdiv(batch, config.rows), method,
                                 constexprs["INPUTS_KMAJOR"])  # fmt: skip

        plan = plan_of(_launch_config("bwd", layout, x, constexprs, allow_tf32,
                                      lambda config: launch(plan_of(config))))  # fmt: skip
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
        if method == "gemm":
            return _grads_by_gemm(layout, batch, adj, inputs, db_partial, weights, biases,
                                  plan.inputs_kmajor)  # fmt: skip
        if method == "recompute":
            return _grads_by_splitk(layout, x, adj, inputs, weights, biases, allow_tf32, **lean)
        stages = 1 if method == "splitk_unpipelined" else None
        return _grads_by_splitk(layout, x, adj, inputs, weights, biases, allow_tf32,
                                kmajor=plan.inputs_kmajor, stages=stages)  # fmt: skip

    if method is None:
        method = _weight_grad_method(layout, x, has_bias, allow_tf32, parameter_grads)
    return (grad_x, *parameter_grads(method))


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
    raw = os.environ.get("SOBOLEV_TRITON_RECOMPUTE_ROWS", str(RECOMPUTE_ROWS))
    try:
        rows = int(raw)
    except ValueError:
        rows = 0
    if rows < 1:
        raise ValueError(f"SOBOLEV_TRITON_RECOMPUTE_ROWS: expected a positive integer, got {raw!r}")
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


# How the backward runs: the backward kernel, then the weight gradients' kernels (where the
# forward kept nothing, a chunk of the batch at a time: five launches per chunk), or all of
# it in one persistent launch (``persistent_backward.py``). The first is the choice wherever
# nothing is measured, until a GPU has measured the other faster.
BACKWARD_METHODS = ("separate", "persistent")


def _backward_method(
    layout: Layout, x: Tensor, allow_tf32: bool, kept: bool, run: Callable[[str], object]
) -> str:
    """``SOBOLEV_TRITON_BACKWARD`` (one of BACKWARD_METHODS) where set, else measured once per
    shape, and per whether the forward ``kept`` its pre-activations, on the GPU (``tuning``:
    ``run`` is the whole backward), else separate."""
    forced = _backward_forced()
    if forced != "auto":
        return forced
    if not tuning.can_measure(x.device):
        return BACKWARD_METHODS[0]
    constants = dict(K=layout.k, ORDER=layout.order, WIDTHS=layout.widths, KEPT=kept)
    key = _tuning_key("backward", x, constants, allow_tf32)
    return tuning.fastest(key, BACKWARD_METHODS, run, _DOES_NOT_FIT)


def _backward_forced() -> str:
    """SOBOLEV_TRITON_BACKWARD: auto or one of BACKWARD_METHODS. Forcing ``persistent`` makes
    a forward that keeps nothing persistent too (the user asked for memory): the tuner's
    choice does not, as the forward runs before it is made."""
    return _forced_method("SOBOLEV_TRITON_BACKWARD", BACKWARD_METHODS)


def _forced_method(variable: str, methods: tuple[str, ...]) -> str:
    """The environment variable's choice: ``auto`` (its default) or one of ``methods``;
    anything else raises, naming the variable and what it takes."""
    forced = os.environ.get(variable, "auto")
    if forced != "auto" and forced not in methods:
        raise ValueError(f"{variable}: expected auto, {', '.join(methods)}; got {forced!r}")
    return forced


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
        tile_rows = layout.blocks * config.rows
        z = torch.empty(programs * tile_rows * sum(widths[1:-1]), device=dev,
                        dtype=_accumulation_dtype(dtype))  # fmt: skip
        adj = torch.empty(programs * tile_rows * sum(widths[1:]), device=dev, dtype=dtype)
        partial = torch.empty(programs, geometry["N_PARTIAL"] if need_grad_params else 0,
                              device=dev, dtype=torch.float32)  # fmt: skip
        direct_launch.launch(_sobolev_bwd_persistent_kernel, (programs,), (
            x, v, y, target, target2, w_ptrs, b_ptrs, f, u, w, grad_loss, grad_f, grad_u,
            grad_w, z, saved if saved is not None else z, adj, grad_x if need_grad_x else x,
            partial if need_grad_params else z, batch, negative_slope, *coefs,
        ), {**_tuned(layout, config, "bwd"), "FWD_COLS": layout.col_blocks(config.cols, "fwd"),
            **constexprs})  # fmt: skip
        return partial

    # (the static launch and the tensor-core ones: each candidate is a compile of tens of
    # seconds for this kernel)
    config = _launch_config("bwd_persistent", layout, x, constexprs, allow_tf32, launch, True)
    partial = launch(config)
    if not need_grad_params:
        return grad_x, [], []
    return (grad_x, *_parameter_grads_of(partial, layout, weights, biases, dtype))


def _persistent_programs(batch: int, config: LaunchConfig, device: torch.device) -> int:
    """Programs of a persistent kernel, at most one per row tile: as many per SM as the
    backward's registers let run at once (ahead-of-time compiles use all 255 a thread: one
    program of 8 warps, two of 4), since each further one only costs memory (its scratch,
    and the backward's row of partial sums). Two where the interpreter runs it, so that a
    program takes several tiles and the reduction adds several rows."""
    per_sm = max(1, 8 // config.warps) if device.type == "cuda" else 2
    return max(1, min(cdiv(batch, config.rows), per_sm * _multiprocessors(device)))


# How the parameter gradients are formed from the backward's stacks (``weight_grad.py``); the
# first is the choice wherever nothing is measured, until a GPU has measured another faster.
# ``recompute`` is the lean one: the backward stores no inputs stacks (one stack per layer
# less memory); the tuner times it with them stored, so without the stores it saves.
# ``splitk_unpipelined`` is splitk with its row loop not software-pipelined (num_stages=1):
# each step's tiles go from global memory to registers, then to shared memory in the dots'
# swizzled layout, with no cp.async staging ring read back by scalar shared loads (sm_90
# ahead of time, fp32 at M over transposed inputs: 193 instead of 261 loop instructions, no
# scalar shared access; bench/results/triton_kmajor_inputs_sm90.md); its memory latency is
# then hidden by the other programs only. Unmeasured on a GPU: a candidate, never static.
WEIGHT_GRAD_METHODS = ("gemm", "splitk", "recompute", "splitk_unpipelined")


def _weight_grad_method(
    layout: Layout, x: Tensor, has_bias: bool, allow_tf32: bool,
    run: Callable[[str], object] | None = None,
) -> str | None:  # fmt: skip
    """``SOBOLEV_TRITON_WEIGHT_GRAD`` (one of WEIGHT_GRAD_METHODS) where set, else measured
    once per shape on the GPU (``tuning``; without ``run``, None where that is still to
    come), else gemm. Only gemm where the split-K kernel's offsets do not fit
    (``_splitk_fits``)."""
    forced = _forced_method("SOBOLEV_TRITON_WEIGHT_GRAD", WEIGHT_GRAD_METHODS)
    methods = WEIGHT_GRAD_METHODS if _splitk_fits(layout, x.shape[0]) else ("gemm",)
    if forced != "auto":
        return forced if forced in methods else "gemm"
    constants = dict(HAS_BIAS=has_bias, K=layout.k, ORDER=layout.order, WIDTHS=layout.widths,
                     INPUTS_KMAJOR=_inputs_kmajor())  # fmt: skip
    key = _tuning_key("weight_grad", x, constants, allow_tf32)
    if run is not None and tuning.can_measure(x.device):
        choice = tuning.fastest(key, methods, run, _DOES_NOT_FIT)
    else:
        choice = tuning.chosen(key)
        if choice is None:  # None: to be measured (after the backward), else the static
            return None if tuning.can_measure(x.device) else WEIGHT_GRAD_METHODS[0]
    # (a choice measured at another batch of the same power of two may not fit this one)
    return choice if choice in methods else WEIGHT_GRAD_METHODS[0]  # type: ignore[return-value]


_INT32_LIMIT = 2**31 - 1


def _splitk_fits(layout: Layout, batch: int) -> bool:
    """Whether the split-K kernel's 32-bit offsets within a layer's stack hold. Beyond that
    (billions of elements per layer) the weight gradients are GEMMs."""
    return batch <= _splitk_max_batch(layout)


def _splitk_max_batch(layout: Layout) -> int:
    """The largest batch whose (1 + order K) B stacked rows times every width stay < 2^31."""
    return _INT32_LIMIT // (layout.blocks * max(layout.widths))


def _grads_by_gemm(
    layout: Layout, batch: int, adj: Tensor, inputs: Tensor, db_partial: Tensor,
    weights: list[Tensor], biases: list[Tensor], kmajor: bool = False,
) -> tuple[list[Tensor], list[Tensor]]:  # fmt: skip
    """dW_l by one GEMM per layer (cuBLAS on a GPU), db_l by summing the backward kernel's
    per-program bias partials; ``kmajor``: the inputs stacks stored transposed."""
    widths, stack = layout.widths, layout.blocks * batch
    grad_weights = []
    with _full_precision_reductions(adj):
        for l in range(layout.num_layers):
            # layer 1's inputs have no second-order rows (tt_0 = 0): the first (1 + K) B rows
            used = stack if l > 0 else (1 + layout.k) * batch
            a_l = adj.narrow(0, stack * layout.out_cum[l], used * widths[l + 1]).view(used, -1)
            if kmajor:  # S_{l-1}^T, (n_{l-1}, stack): its first ``used`` columns
                s_l = inputs.narrow(0, stack * layout.in_cum[l], stack * widths[l])
                s_l = s_l.view(widths[l], stack).narrow(1, 0, used).t()
            else:
                s_l = inputs.narrow(0, stack * layout.in_cum[l], used * widths[l]).view(used, -1)
            grad_weights.append(a_l.t() @ s_l)  # dW_l = A_l^T S_{l-1} over the stacked rows
    grad_biases = [_empty_like(b) for b in biases]
    if biases:
        _sum_partials(db_partial, grad_biases, layout.b_offsets, adj.dtype)
    return grad_weights, grad_biases


@contextlib.contextmanager
def _full_precision_reductions(operand: Tensor):
    """cuBLAS's 16-bit GEMMs with their split-K partial sums added in fp32, whatever torch's
    ``allow_bf16/fp16_reduced_precision_reduction`` (True by default: the partials may be
    added in the operands' 16 bits). On the H200 (2026-11-27, run 5) the bf16 dW by GEMM
    over (1 + 2K) B = 20495 stacked rows at order 2 differed from the reference by up to 8%
    of a layer's largest element, where the split-K kernel, adding the same stacks in fp32,
    agreed. 16-bit partial sums are the suspect (K = 16 at three layers agreed with the same
    GEMMs); the next GPU run's test_weight_gradient_methods_on_gpu[gemm] says."""
    if not operand.is_cuda or operand.dtype == torch.float32:
        yield
        return
    flags = torch.backends.cuda.matmul
    name = ("allow_bf16_reduced_precision_reduction" if operand.dtype == torch.bfloat16
            else "allow_fp16_reduced_precision_reduction")  # fmt: skip
    saved = getattr(flags, name)
    setattr(flags, name, False)
    try:
        yield
    finally:
        setattr(flags, name, saved)


def _grads_by_splitk(
    layout: Layout, x: Tensor, adj: Tensor, inputs: Tensor, weights: list[Tensor],
    biases: list[Tensor], allow_tf32: bool, saved: Tensor | None = None,
    v: Tensor | None = None, activation: int = 0, slope: float = 0.0, kmajor: bool = False,
    stages: int | None = None,
) -> tuple[list[Tensor], list[Tensor]]:  # fmt: skip
    """Every dW_l and db_l by one split-K kernel over all layers, then one reduction. With
    ``saved`` (the forward's pre-activations), the directions ``v`` and the activation, the
    kernel forms the inputs stacks itself as it reads them: ``inputs`` goes unread.
    ``kmajor``: the inputs stacks stored transposed; ``stages``: the row loop's software
    pipelining (None: Triton's default)."""
    partial = _weight_grad_partials(layout, x, adj, inputs, bool(biases), allow_tf32, saved, v,
                                    activation, slope, kmajor=kmajor, stages=stages)  # fmt: skip
    return _parameter_grads_of(partial, layout, weights, biases, x.dtype)


def _parameter_grads_of(
    partial: Tensor, layout: Layout, weights: list[Tensor], biases: list[Tensor],
    dtype: torch.dtype,
) -> tuple[list[Tensor], list[Tensor]]:  # fmt: skip
    """dW_l and db_l, each in its parameter's dtype, from the sum of partial's rows."""
    geometry = layout.weight_grad_constexprs(bool(biases))
    grad_weights = [_empty_like(w) for w in weights]
    grad_biases = [_empty_like(b) for b in biases]
    offsets = geometry["W_OFFS"] + (geometry["B_OFFS"] if biases else ())
    _sum_partials(partial, grad_weights + grad_biases, offsets, dtype)
    return grad_weights, grad_biases


def _split_rows(layout: Layout, batch: int, device: torch.device) -> tuple[int, int]:
    """(splits, rows per split) of the split-K kernel over (1 + order K) batch stacked rows:
    about four programs per SM in all (a few split row ranges where the interpreter runs
    it), whole row blocks per split."""
    stack = layout.blocks * batch
    geometry = layout.weight_grad_constexprs(True)
    tiles, row_block = geometry["TILE_CUM"][-1], geometry["BK"]
    programs = 4 * _multiprocessors(device)
    splits = max(1, min(cdiv(programs, tiles), cdiv(stack, row_block)))
    rows_per_split = cdiv(cdiv(stack, splits), row_block) * row_block
    return cdiv(stack, rows_per_split), rows_per_split


def _weight_grad_partials(
    layout: Layout, x: Tensor, adj: Tensor, inputs: Tensor, has_bias: bool, allow_tf32: bool,
    saved: Tensor | None = None, v: Tensor | None = None, activation: int = 0,
    slope: float = 0.0, out: Tensor | None = None, kmajor: bool = False,
    stages: int | None = None,
) -> Tensor:  # fmt: skip
    """The split-K kernel's (splits, N) fp32 partial sums (the first rows of ``out`` where
    given); see _grads_by_splitk."""
    recompute = saved is not None
    kmajor = kmajor and not recompute
    batch = x.shape[0]
    shared = recompute and v.ndim == 2
    key = ("weight_grad", layout, batch, x.dtype, x.device, has_bias, allow_tf32, recompute,
           shared, activation, kmajor, stages, _settings())  # fmt: skip
    plan = _plans.get(key)
    if plan is None:
        geometry = layout.weight_grad_constexprs(has_bias)
        splits, rows_per_split = _split_rows(layout, batch, x.device)
        launcher = direct_launch.launcher(_weight_grad_partials_kernel, dict(
            ACT=activation, SHARED=shared, RECOMPUTE=recompute, KMAJOR=kmajor,
            PRECISION=_kernel_precision(_precisions(x.dtype, allow_tf32)[1]),
            EMULATE_BF16=_emulate_bf16(x.dtype),
            num_warps=4, **geometry, **({} if stages is None else {"num_stages": stages}),
        ))  # fmt: skip
        grid = (geometry["TILE_CUM"][-1], splits)
        sizes = (layout.blocks * batch, (1 + layout.k) * batch, rows_per_split)
        plan = _plans[key] = (launcher, grid, (splits, geometry["N_PARTIAL"]), sizes)
    launcher, grid, shape, sizes = plan
    partial = out[: shape[0]] if out is not None else torch.empty(shape, device=x.device,
                                                                   dtype=torch.float32)  # fmt: skip
    # (an empty tensor is no pointer to pass: adj stands in for one the kernel does not read)
    source = (saved if saved.numel() else adj) if recompute else inputs
    launcher(grid, (adj, source, x, v if recompute else x, partial, batch, *sizes, slope))
    return partial


# _sum_partials: rows above which a first pass adds row blocks in parallel (the split-K and
# persistent partials, a few hundred rows, stay one launch), and the rows of such a block
SUM_ONE_PASS_ROWS = 1024
SUM_ROWS_PER_SPLIT = 128


def _sum_partials(partial: Tensor, outs: list[Tensor], offsets: tuple[int, ...],
                  dtype: torch.dtype) -> None:  # fmt: skip
    """outs[g] = the column sums of partial over its columns from offsets[g], in a fixed
    order: one launch of a program per 64 columns; over more than SUM_ONE_PASS_ROWS rows
    (the backward kernel's per-program bias partials, a row per 16-64 samples) a first
    launch adds blocks of SUM_ROWS_PER_SPLIT rows into a (splits, N) buffer. One program per
    64 columns alone took 0.11 ms at config M on the H200 (2026-11-27: 7 programs over 4096
    rows), 5% of the step. The first pass reads every row before the second writes:
    ``outs`` may alias a row."""
    sizes = tuple(o.numel() for o in outs)
    key = ("sum", partial.shape, offsets, sizes, dtype, _settings())
    plan = _plans.get(key)
    if plan is None:
        plan = _plans[key] = _sum_plan(partial.shape, offsets, sizes, dtype)
    first, (launcher, grid) = plan
    if first is not None:
        first_launcher, first_grid, shape = first
        blocks = torch.empty(shape, device=partial.device, dtype=torch.float32)
        first_launcher(first_grid, (partial, blocks, partial.shape[0]))
        partial = blocks
    launcher(grid, (partial, tuple(outs), partial.shape[0]))


def _sum_plan(shape: tuple, offsets: tuple, sizes: tuple, dtype: torch.dtype) -> tuple:
    """_sum_partials' launches for partials of ``shape``: (the first pass's launcher, grid
    and output shape, or None), (the second's launcher and grid)."""
    (rows, n), block = shape, 64
    first = None
    if rows > SUM_ONE_PASS_ROWS:
        splits = cdiv(rows, SUM_ROWS_PER_SPLIT)
        launcher = direct_launch.launcher(_sum_row_blocks_kernel, dict(
            N=n, ROWS_PER_SPLIT=SUM_ROWS_PER_SPLIT, PROGRAMS=32, BLOCK=block))  # fmt: skip
        first = (launcher, (cdiv(n, block), splits), (splits, n))
    launcher = direct_launch.launcher(_sum_partials_kernel, dict(
        N=n, SEG_OFFS=offsets, SEG_SIZES=sizes, NUM_SEGS=len(sizes), PROGRAMS=32, BLOCK=block,
        EMULATE_BF16=_emulate_bf16(dtype),
    ))  # fmt: skip
    return first, (launcher, (cdiv(n, block),))


def _empty_like(t: Tensor) -> Tensor:
    # contiguous, whatever t is (empty_like: 2.5 us, torch.empty from t's shape, device and
    # dtype: 7 us, and a step made eight)
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return device_properties(device).multi_processor_count
