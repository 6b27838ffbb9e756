"""What a Triton launch takes that is chosen rather than given: the dot precisions, the
settings read from the environment (SOBOLEV_TRITON_*), and the launch configs and backward
methods that the tuner measures once per shape on a GPU (``tuning``), with the static
choices wherever nothing is measured."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

from .. import tuning
from ..settings import env_choice, env_flag
from . import interpreting
from .layout import LaunchConfig, Layout, next_power_of_2, shared_memory_limit

# A launch config that does not fit the GPU fails to compile or load; the tuner skips it.
_DOES_NOT_FIT = (OutOfResources, PTXASError, CompileTimeAssertionFailure)
# The largest offset a 32-bit index holds (the kernels' INDEX64, the split-K kernel's offsets)
_INT32_LIMIT = 2**31 - 1


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
    form = env_choice("SOBOLEV_TRITON_TF32X3", TF32X3_FORMS, "triton")
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
    return env_choice("SOBOLEV_TRITON_INPUTS_LAYOUT", INPUTS_LAYOUTS, "rows") == "kmajor"


def _emulate_bf16(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 is not the GPU's (triton 3.6 and 3.9): its tl.dot misreads bf16
    # operands and it converts fp32 to bf16 by truncation. Under this flag the kernels run
    # their dots on fp32 operands (rounded to bf16 first) and round their bf16 stores to
    # nearest even by hand.
    return dtype == torch.bfloat16 and interpreting()


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
    resident kernel's only when SOBOLEV_TRITON_BACKWARD_KERNEL=resident asks for it.
    SOBOLEV_TRITON_UNMEASURED=0 leaves out what no GPU has run (``_unmeasured_offered``)."""
    limit = shared_memory_limit(x.device)
    wide = _wide_tiles(x.dtype)
    forced = "auto"
    if kernel == "fwd":
        forced = _forward_forced()
    elif kernel == "bwd":
        forced = _backward_kernel_forced()
    activated = _forward_activated() if kernel == "fwd" else "0"  # (the chunked forward's)
    unmeasured = _unmeasured_offered()
    activated = "0" if activated == "auto" and not unmeasured else activated
    key = _tuning_key(kernel, x, constexprs, allow_tf32) + (("wide tiles",) if wide else ())
    key += () if unmeasured else ("measured only",)
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
    if tensor_core_only:  # (not the 128-row tiles: a further compile of a long one)
        configs = configs[:1] + [c for c in configs[1:]
                                 if (c.precision != static or c.cols) and c.rows <= 64]  # fmt: skip
    if not unmeasured:  # (the 128-row column-block tiles: no GPU has run them yet)
        configs = [c for c in configs if not (c.cols and c.rows > 64)]
    configs = _with_activated(layout, configs, activated)
    if kernel == "bwd_persistent" and unmeasured:
        configs = _with_dw_tiles(layout, configs, tensor_core)
    return tuning.fastest(key, configs + resident, launch, _DOES_NOT_FIT)


def _unmeasured_offered() -> bool:
    """SOBOLEV_TRITON_UNMEASURED: 1 (the default) or 0. With 0 the tuners leave out the
    candidates no GPU has run yet (docs/unmeasured.md): the 128-row column-block tiles, the
    forward's activated twins, the weight gradients' UNMEASURED_METHODS
    (``parameter_grads.py``) and the persistent backward's spans of tiles. A safety valve:
    the GPU script sets it where its checks saw a kernel fault, so that one unmeasured
    candidate cannot lose a run's benchmark (a fault loses the process's CUDA context)."""
    return env_flag("SOBOLEV_TRITON_UNMEASURED", "1")


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


# The persistent backward's spans (persistent_backward.py): at least this many stacked rows a
# weight-gradient step, in whole row tiles (a power of two of them)
DW_SPAN_ROWS = 256


def _with_dw_tiles(layout: Layout, configs: list[LaunchConfig],
                   tensor_core: str) -> list[LaunchConfig]:  # fmt: skip
    """The persistent backward's candidates and, where a row tile has fewer than
    DW_SPAN_ROWS stacked rows, the twin of each tensor-core one (dots in ``tensor_core``
    precision) on spans of tiles that reach it (unmeasured on a GPU: the form of one tile a
    span, which the H200 ran, stays a candidate). Not of fp32's FMA candidates: the H200 had
    the backward kernel's FMA launches 1.6-1.8x slower than their 3xTF32 twins (run 5,
    configs S and M; the persistent one's no faster), and each twin is a compile of up to a
    minute in the GPU script's precompile."""
    twins = []
    for c in configs:
        tiles = next_power_of_2(-(-DW_SPAN_ROWS // (layout.blocks * c.rows)))
        if tiles > 1 and (c.precision == tensor_core or c.cols):
            twins.append(c._replace(dw_tiles=tiles))
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
    return env_choice(variable, ("auto", *methods), "auto")
