"""One setup per benchmark problem and the training-step functions of every provider.

A provider is a way to compute the Sobolev loss and its gradients: what users write today
(``eager_autograd``, ``torch_func``), the floor (``plain_step``: a first-order MSE step on the
(1 + K) B stacked rows), and each backend of ours. Every provider runs on the same weights,
inputs, directions and targets, built once by ``make_problem``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import sobolev_kernels as sk
from bench import limits
from sobolev_kernels.baselines import eager_autograd_loss

BASELINES = ("eager_autograd", "torch_func", "torch_compile", "plain_step")
# The CUDA backend's kernel variants besides its default (fused kernels, dW by cuBLAS GEMMs,
# high occupancy: the fastest at S, M and L on the H200, 2026-11-27 run 5), set by
# SOBOLEV_CUDA_KERNEL, SOBOLEV_CUDA_WEIGHT_GRADS and SOBOLEV_CUDA_FUSED_OCCUPANCY, which the
# extension reads per call. cuda_tiled was the default until run 5 (the least memory: it
# recomputes); cuda_fused forms dW in its own kernel (split-K), cuda_fused_gemm by GEMMs in
# the low-occupancy shapes (the backward only: a step-only provider); cuda_bias_gemv is the
# default with its GEMM weight gradients' bias sums by cuBLAS's gemv instead of torch's sum
# (SOBOLEV_CUDA_BIAS_SUMS; step only, timed by the GPU script's kernel profile), and
# cuda_bias_operands with them as per-block partials of the operand kernels, added in one
# launch (same);
# cuda_staged_split is the default with the fp32 weights split into 3xTF32's parts once per
# launch (the blocks copy them) instead of by every warp, and the activations split by integer
# arithmetic (SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT; fp32 only: 16-bit operands are not split,
# FP32_ONLY; timed by the GPU script's bench, kernel profile and counters); cuda_splitk_tc
# is the default with the weight gradients by the fused backward's own tensor-core split-K
# (fp32 in 3xTF32, bf16; 128 x 128 blocks, fused_weight_grads_tc.cuh) instead of the operand
# kernels, cuBLAS's GEMMs and the bias sums (SOBOLEV_CUDA_WEIGHT_GRADS=splitk_tc; step only;
# timed by the bench and the kernel profile); cuda_cutlass_gemm is the default with each fp32
# GEMM of its weight gradients by CUTLASS's 3xTF32 split-K GEMM instead of cuBLAS's, which
# torch's default fp32 precision keeps on the FMA units (SOBOLEV_CUDA_WEIGHT_GRADS=cutlass;
# weight_grad_gemm.h; fp32 only, step only); cuda_backward_operands is the default with the
# GEMMs' operands (16-bit adjoints, the layer inputs) and the bias sums' partials stored by the
# fused backward kernel as it forms the adjoints, instead of by an operand kernel per layer
# reading them again and torch's sums (SOBOLEV_CUDA_GEMM_OPERANDS=backward; step only: at M
# those took 0.44 ms of the default's 2.69 in fp32 and 0.56 of 1.66 in bf16, run 5);
# cuda_operands_cutlass is that with the fp32 GEMMs by CUTLASS too (fp32 only): the two
# unmeasured weight-gradient forms together, each about a tenth of the M step by estimate,
# where #19's fp32 goal at M needs a fifth. cuda_batched_pass is the default with the fused
# forward's activation pass taking 4 elements at a time in bf16 and fp16 models, their loads
# before their math (SOBOLEV_CUDA_FORWARD_PASS=batched; 16-bit only, SIXTEEN_BIT_ONLY: the
# bf16 forward kernel took 0.43 ms at M in run 5, Triton's 0.19). cuda_lean trades time for
# memory: the forward keeps nothing and the backward recomputes and runs the fused kernels
# 16384 samples at a time (SOBOLEV_SAVE_ACTIVATIONS=0; csrc/row_chunks.h), so that the saved
# z/tz and the adjoints hold one chunk (run 5: the default's step peaked at 932 MiB at S,
# where #19 asks for 0.4 x eager's 897; step only).
# name -> {environment variable: value}
_FUSED = {"SOBOLEV_CUDA_KERNEL": "fused", "SOBOLEV_CUDA_FUSED_OCCUPANCY": "low"}
CUDA_VARIANTS = {
    "cuda_tiled": {"SOBOLEV_CUDA_KERNEL": "tiled"},
    "cuda_tiled_tc": {"SOBOLEV_CUDA_KERNEL": "tiled_tc"},
    "cuda_fused": {**_FUSED, "SOBOLEV_CUDA_WEIGHT_GRADS": "splitk"},
    "cuda_fused_gemm": {**_FUSED, "SOBOLEV_CUDA_WEIGHT_GRADS": "gemm"},
    "cuda_bias_gemv": {"SOBOLEV_CUDA_BIAS_SUMS": "gemv"},
    "cuda_bias_operands": {"SOBOLEV_CUDA_BIAS_SUMS": "operands"},
    "cuda_staged_split": {"SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT": "staged"},
    "cuda_splitk_tc": {"SOBOLEV_CUDA_WEIGHT_GRADS": "splitk_tc"},
    "cuda_cutlass_gemm": {"SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass"},
    "cuda_backward_operands": {"SOBOLEV_CUDA_GEMM_OPERANDS": "backward"},
    "cuda_batched_pass": {"SOBOLEV_CUDA_FORWARD_PASS": "batched"},
    "cuda_lean": {"SOBOLEV_SAVE_ACTIVATIONS": "0"},
    "cuda_operands_cutlass": {
        "SOBOLEV_CUDA_GEMM_OPERANDS": "backward",
        "SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass",
    },
}
# The Triton backend's other training steps, for their time and peak memory beside the
# tuner's choice: the weight gradients forming the backward's inputs again instead of storing
# them (triton_recompute); the whole backward in one persistent launch (triton_persistent);
# and with no saved pre-activations, the backward recomputing them a chunk of rows at a time
# (triton_lean) or per row tile in one persistent launch (triton_lean_persistent); and every
# launch through Triton's own launch path (triton_jit_launch), for the host time that
# ``direct_launch`` saves. Steps only: their forwards are the triton provider's (but the lean
# ones', which keep nothing). triton_split_tf32x3 forms the 3xTF32 dots in the kernels
# (SOBOLEV_TRITON_TF32X3=split, ``tiles._dot_acc``) instead of by Triton's "tf32x3": its
# forward differs too, and only in fp32 (FP32_ONLY). triton_kmajor_inputs: the backward
# stores the layer inputs stacks transposed (SOBOLEV_TRITON_INPUTS_LAYOUT=kmajor), which the
# split-K weight gradients' fp32 dots read without transposing them on every step (fp32
# only: 16-bit wgmma takes either layout; its tuner chooses between gemm and splitk anew).
# triton_resident_backward runs the separate backward's resident kernel (adjoints in
# registers, every direction in one pass: SOBOLEV_TRITON_BACKWARD_KERNEL=resident, opt-in;
# where no resident config fits, the chunked kernel; 16-bit models only, SIXTEEN_BIT_ONLY: in
# fp32 the resident forward lost to the chunked one on the H200, and ahead of time for sm_90
# this backward spills 7.4 KB at config M in fp32, 2.7 KB in bf16). triton_wide_tiles offers
# the backward the 64-row column-block tiles in 16-bit models too (SOBOLEV_TRITON_WIDE_TILES=1;
# fp32 has them by default). In bf16 at config M the backward took 0.40 of the
# step's 0.87 ms of kernels on the H200 (run 5) on its 16-row tiles, where the resident
# forward had made the forward 2.7x faster than those: these two are the candidates to
# replace them, and no GPU run has timed either yet.
# name -> {environment variable: value}
TRITON_VARIANTS = {
    "triton_recompute": {
        "SOBOLEV_TRITON_WEIGHT_GRAD": "recompute",
        "SOBOLEV_TRITON_BACKWARD": "separate",
    },
    "triton_persistent": {"SOBOLEV_TRITON_BACKWARD": "persistent"},
    "triton_lean": {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_TRITON_BACKWARD": "separate"},
    "triton_lean_persistent": {
        "SOBOLEV_SAVE_ACTIVATIONS": "0",
        "SOBOLEV_TRITON_BACKWARD": "persistent",
    },
    "triton_jit_launch": {"SOBOLEV_TRITON_DIRECT_LAUNCH": "0"},
    "triton_split_tf32x3": {"SOBOLEV_TRITON_TF32X3": "split"},
    "triton_kmajor_inputs": {"SOBOLEV_TRITON_INPUTS_LAYOUT": "kmajor"},
    "triton_resident_backward": {
        "SOBOLEV_TRITON_BACKWARD_KERNEL": "resident",
        "SOBOLEV_TRITON_BACKWARD": "separate",
    },
    "triton_wide_tiles": {"SOBOLEV_TRITON_WIDE_TILES": "1"},
}
# Variants that differ from their default in fp32 models only (16-bit operands are not
# split): measured only there (bench.step)
FP32_ONLY = {"cuda_staged_split", "cuda_cutlass_gemm", "cuda_operands_cutlass",
             "triton_split_tf32x3", "triton_kmajor_inputs"}  # fmt: skip
# and the other way round: variants that differ from their default in 16-bit models only
SIXTEEN_BIT_ONLY = {"triton_resident_backward", "triton_wide_tiles", "cuda_batched_pass"}
STEP_ONLY = {*TRITON_VARIANTS, "cuda_fused_gemm", "cuda_bias_gemv", "cuda_bias_operands",
             "cuda_splitk_tc", "cuda_cutlass_gemm", "cuda_backward_operands",
             "cuda_operands_cutlass", "cuda_lean", "triton_compiled"}  # fmt: skip
STEP_ONLY.discard("triton_split_tf32x3")  # (its forward is not the triton provider's)
# Our fused steps captured once in a CUDA graph and then replayed (torch.cuda.graph): the GPU
# time without the host's, which bounds the steps below B = 4096 (the H200 run of
# 2026-11-27: 2.3-2.8 ms of host time a Triton step). What a user gets by capturing the
# training step; jax_jit's steps run as compiled executables too.
GRAPHED = {"triton_graphed": "triton", "cuda_graphed": "cuda"}
# The same with one line of a user's code: the loss under torch.compile(mode="reduce-overhead"),
# whose forward and backward inductor replays from CUDA graphs (cudagraph trees), the inputs
# copied into the graphs' buffers each step. Steps only; GPU only (on a CPU there is no graph).
COMPILED = {"triton_compiled": "triton"}
# provider -> (backend, {environment variable: value})
VARIANTS = {
    **{name: ("cuda", settings) for name, settings in CUDA_VARIANTS.items()},
    **{name: ("triton", settings) for name, settings in TRITON_VARIANTS.items()},
}

# Precision classes, so that every provider of a row computes its products alike:
# (storage dtype, TF32 allowed). fp32 is fp32-accurate (IEEE or 3xTF32): torch with TF32 off
# (the Triton backend's dots follow torch.backends.cuda.matmul.allow_tf32), JAX at "highest".
# tf32 allows TF32 everywhere, JAX at its default precision (TF32 on Ampere and Hopper).
PRECISIONS = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


def runs_at(provider: str, precision: str) -> bool:
    """Whether ``provider`` is measured at ``precision``: an FP32_ONLY variant at fp32 models
    only, a SIXTEEN_BIT_ONLY one at bf16 and fp16 models only (elsewhere each runs the
    kernels of the provider it varies)."""
    fp32 = PRECISIONS[precision][0] == torch.float32
    return (provider not in FP32_ONLY or fp32) and (provider not in SIXTEEN_BIT_ONLY or not fp32)


# Relative error (max |a - b| / max |b|) allowed against torch_func in the same class.
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "bf16": 5e-2, "fp16": 5e-2}


def set_precision(precision: str) -> None:
    """Sets torch's TF32 switches for ``precision`` (process-wide, as users would)."""
    allow = PRECISIONS[precision][1]
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow


@dataclass
class Problem:
    model: sk.SobolevMLP
    x: Tensor  # (B, d)
    y: Tensor  # (B, m)
    directions: Tensor  # (B, K, d)
    target_jvp: Tensor  # (B, K, m)
    target_hvp2: Tensor | None = None  # (B, K, m), order 2 only
    precision: str = "fp32"  # a key of PRECISIONS

    @property
    def order(self) -> int:
        return 1 if self.target_hvp2 is None else 2

    @property
    def label(self) -> str:
        b, d = self.x.shape
        k, m = self.directions.shape[1], self.y.shape[1]
        w, layers = self.model.widths[1], self.model.num_layers
        return f"B={b} d={d} width={w} layers={layers} m={m} K={k} order={self.order}"

    @property
    def sizes(self) -> dict[str, int]:
        """The keyword arguments of ``make_problem`` that set its shape."""
        (b, d), (k, m) = self.x.shape, self.target_jvp.shape[1:]
        w, layers = self.model.widths[1], self.model.num_layers
        return dict(batch=b, dim=d, width=w, layers=layers, out=m, k=k, order=self.order)


def make_problem(
    batch: int, dim: int, width: int, layers: int, out: int, k: int,
    *, activation: str = "tanh", precision: str = "fp32", device: str = "cpu",
    seed: int = 0, order: int = 1,
) -> Problem:  # fmt: skip
    """The problem of one benchmark point; ``set_precision(precision)`` is the caller's."""
    dtype = PRECISIONS[precision][0]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = sk.SobolevMLP(dim, width, out, layers, activation=activation)
    model = model.to(device=device, dtype=dtype)
    x = torch.randn(batch, dim, generator=gen).to(device, dtype)
    y = torch.randn(batch, out, generator=gen).to(device, dtype)
    dirs = sk.sample_directions(batch, k, dim, generator=gen, device=device, dtype=dtype)
    g = torch.randn(batch, k, out, generator=gen).to(device, dtype)
    g2 = torch.randn(batch, k, out, generator=gen).to(device, dtype) if order == 2 else None
    return Problem(model, x, y, dirs, g, g2, precision)


def _zero_grad(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def step_fn(provider: str, p: Problem, mode: str = "step") -> Callable[[], Tensor]:
    """A closure running one loss evaluation (``mode="forward"``) or loss + backward.

    Raises whatever the provider raises on this problem (``torch_compile`` raises for every
    Sobolev formulation users write today: that error is the measurement).
    """
    if provider in VARIANTS:
        backend, settings = VARIANTS[provider]
        return _with_env(settings, step_fn(backend, p, mode))
    if provider in GRAPHED:
        return _graphed(step_fn(GRAPHED[provider], p, mode), p.x.device)
    if provider in COMPILED:
        return _compiled(COMPILED[provider], p, mode)
    model = p.model
    if provider == "jax_jit":
        from bench.jax_provider import jax_step_fn

        return jax_step_fn(p, mode)

    if provider == "torch_compile":
        loss = _compiled_user_loss(p)
    elif provider == "eager_autograd":

        def loss() -> Tensor:
            return eager_autograd_loss(model, p.x, p.y, p.target_jvp, p.directions,
                                       target_hvp2=p.target_hvp2)[0]  # fmt: skip

    elif provider == "plain_step":
        # the floor: a first-order step on as many rows as the stacked streams, (1 + order K) B
        tangent_rows = p.directions.reshape(-1, p.x.shape[1])
        stacked = torch.cat([p.x] + [tangent_rows] * p.order)
        targets = [p.target_jvp] + ([p.target_hvp2] if p.order == 2 else [])
        target = torch.cat([p.y] + [t.reshape(-1, p.y.shape[1]) for t in targets])

        def loss() -> Tensor:
            return torch.nn.functional.mse_loss(model(stacked), target)

    else:
        backend = "reference" if provider == "torch_func" else provider

        second = {} if p.order == 1 else {"order": 2, "target_hvp2": p.target_hvp2}

        def loss() -> Tensor:
            return sk.sobolev_loss(model, p.x, p.y, target_jvp=p.target_jvp,
                                   directions=p.directions, backend=backend, **second)  # fmt: skip

    if mode == "forward":
        if provider == "eager_autograd":
            return loss  # its forward already builds the double-backward graph
        return lambda: _no_grad(loss)

    def step() -> Tensor:
        _zero_grad(model)
        out = loss()
        out.backward()
        return out

    return step


# The failure is structural (AOTAutograd has no double backward), not a property of the shape:
# once one point has recorded it, the other points reuse it instead of recompiling for minutes.
_compile_failure: str | None = None


def compile_failure() -> str | None:
    """torch_compile's error in this process, once a point has met it."""
    return _compile_failure


def adopt_compile_failure(message: str | None) -> None:
    """Take torch_compile's error from another process (bench.step's precompile workers): the
    timed pass records it instead of compiling again (an inductor compile: seconds to a
    minute)."""
    global _compile_failure
    if message is not None:
        _compile_failure = message


def _compiled_user_loss(p: Problem) -> Callable[[], Tensor]:
    """torch.compile of what users write: eager double backward, else torch.func."""
    global _compile_failure
    from sobolev_kernels.backends.reference import model_jvp

    if _compile_failure is not None:
        raise RuntimeError(_compile_failure)

    def eager() -> Tensor:
        return eager_autograd_loss(p.model, p.x, p.y, p.target_jvp, p.directions)[0]

    def func() -> Tensor:
        f, u, *w = model_jvp(p.model, p.x, p.directions, p.order)
        loss = (f - p.y).square().mean() + (u - p.target_jvp).square().mean()
        return loss + sum((wk - p.target_hvp2).square().mean() for wk in w)

    errors = []
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)  # the failing traces log pages of frames
    try:
        for fn in (eager, func):
            compiled = torch.compile(fn)
            try:
                _zero_grad(p.model)
                compiled().backward()  # compile errors surface on the first call + backward
                return compiled
            except Exception as exc:  # noqa: BLE001 - the error is what we record
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    finally:
        torch_logger.setLevel(level)
    _compile_failure = "; ".join(errors)
    raise RuntimeError(_compile_failure)


def _with_env(settings: dict[str, str], fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``fn`` with the environment variables ``settings`` set for its forward and backward (a
    backend's variant: they read them per call)."""

    def run() -> Tensor:
        before = {variable: os.environ.get(variable) for variable in settings}
        os.environ.update(settings)
        try:
            return fn()
        finally:
            for variable, value in before.items():
                if value is None:
                    del os.environ[variable]
                else:
                    os.environ[variable] = value

    return run


def _graphed(fn: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    """``fn`` captured in a CUDA graph: warmed up on a side stream (autotuning and compiles
    happen there), captured once, then each call replays it. Its inputs are the problem's
    tensors, which stay put; the gradients land in the .grad tensors made during capture."""
    if device.type != "cuda":
        raise ValueError("a graphed provider needs a CUDA device")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay() -> Tensor:
        graph.replay()
        return out

    return replay


# (provider, problem, precision) -> its compiled step: check_agreement and the timing share one
# compile (seconds each), and a new point starts from a fresh cache
_compiled_step: dict[tuple, Callable[[], Tensor]] = {}


def _compiled(backend: str, p: Problem, mode: str) -> Callable[[], Tensor]:
    """A training step whose loss is ``torch.compile(mode="reduce-overhead", fullgraph=True)``
    of ``sobolev_loss`` (see COMPILED). Compiled once per point: the cache of compiled code
    is reset first, since the sweep's shapes would pass Dynamo's recompile limit (where it
    falls back to eager, silently)."""
    if p.x.device.type != "cuda":
        raise ValueError("a compiled provider needs a CUDA device")
    if mode != "step":
        raise ValueError("a compiled provider times the training step only")
    key = (backend, id(p), p.precision)
    if key in _compiled_step:
        return _compiled_step[key]
    _compiled_step.clear()
    torch._dynamo.reset()
    model = p.model
    second = {} if p.order == 1 else {"order": 2}

    def loss(x, y, target_jvp, directions, target_hvp2):
        return sk.sobolev_loss(model, x, y, target_jvp=target_jvp, directions=directions,
                               backend=backend, target_hvp2=target_hvp2, **second)  # fmt: skip

    compiled = torch.compile(loss, mode="reduce-overhead", fullgraph=True, dynamic=False)

    def step() -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs may be reused
        _zero_grad(model)
        out = compiled(p.x, p.y, p.target_jvp, p.directions, p.target_hvp2)
        out.backward()
        return out

    _compiled_step[key] = step
    return step


def _no_grad(fn: Callable[[], Tensor]) -> Tensor:
    with torch.no_grad():
        return fn()


def providers_available(device: str) -> list[str]:
    """Baselines plus our backends that run on ``device`` (reference is ``torch_func``)."""
    ours = [b for b in sk.available_backends() if b != "reference"]
    if device == "cpu":
        ours = [b for b in ours if b != "triton"]  # the interpreter is no speed contender
    elif "triton" in ours:
        ours += list(TRITON_VARIANTS)
    # which of our backends run their GPU kernels here (the extension may lack its CUDA ones)
    on_gpu = {"triton": device != "cpu" and "triton" in ours,
              "cuda": device != "cpu" and "cuda" in ours and _cuda_kernels_built()}  # fmt: skip
    if on_gpu["cuda"]:
        ours += list(CUDA_VARIANTS)
    ours += [graphed for graphed, backend in GRAPHED.items() if on_gpu[backend]]
    ours += [compiled for compiled, backend in COMPILED.items() if on_gpu[backend]]
    jax = [] if importlib.util.find_spec("jax") is None else ["jax_jit"]
    return [*BASELINES, *jax, *ours]


def _cuda_kernels_built() -> bool:
    from sobolev_kernels.backends import cuda

    return cuda._extension is not None and bool(cuda._extension.WITH_CUDA)


def step_flops(p: Problem, mode: str = "step") -> float:
    """GEMM FLOPs of one training step (or forward) on the (1 + order K) B stacked rows."""
    return limits.step_flops(**p.sizes, mode=mode)


def check_agreement(p: Problem, providers: list[str]) -> dict[str, str]:
    """Every Sobolev provider gives torch_func's loss and gradients before anything is timed.

    Returns {provider: reason} for those not to time: a backend that refuses this problem (an
    order it does not implement, say), and one that runs and disagrees beyond the precision's
    tolerance (``TOLERANCE``), which would otherwise be timed doing something else.
    """
    expected = _loss_and_grads("torch_func", p)
    rtol = TOLERANCE[p.precision]
    rejected = {}
    for provider in providers:
        if provider in ("plain_step", "torch_func", "torch_compile"):
            continue
        try:
            got = _loss_and_grads(provider, p)
        except ValueError as exc:  # "backend: ... cannot run this problem: ..."
            rejected[provider] = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. jax without a GPU: recorded, not fatal
            rejected[provider] = f"{type(exc).__name__}: {exc}"
            continue
        worst = max(_relative_error(a, b) for a, b in zip(got, expected))
        if not worst <= rtol:  # NaN fails too
            rejected[provider] = (f"disagrees with torch_func: relative error {worst:.1e} > "
                                  f"{rtol:.0e} ({p.precision})")  # fmt: skip
    return rejected


def _relative_error(a: Tensor, b: Tensor) -> float:
    scale = b.abs().max().clamp_min(1e-12)
    return ((a.to(b.device) - b).abs().max() / scale).item()


def _loss_and_grads(provider: str, p: Problem) -> list[Tensor]:
    """[loss, *gradients in the order of model.parameters()], as fp32 tensors."""
    if provider == "jax_jit":
        from bench.jax_provider import jax_loss_and_grads

        return jax_loss_and_grads(p)
    loss = step_fn(provider, p)()
    return [loss.detach().float()] + [q.grad.detach().float().clone() for q in p.model.parameters()]
