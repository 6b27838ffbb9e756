"""Backend ``triton``: forward + all tangents + the projected loss in one kernel launch.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the Triton interpreter,
a correctness tool: it is slow and never chosen by ``backend="auto"`` on CPU).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from ..problem import SobolevProblem
from ..triton import interpreting

NAME = "triton"
ORDERS = (1, 2)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_WIDTH = 256
MAX_LAYERS = 16


def unavailable_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if not torch.cuda.is_available() and not interpreting():
        return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels in the interpreter)"
    return None


def unsupported_reason(problem: SobolevProblem) -> str | None:
    mlp = problem.mlp
    device = problem.device.type
    if device != "cuda" and not (device == "cpu" and interpreting()):
        return f"tensors on {device}; it needs CUDA tensors"
    widest = max(mlp.widths)
    if widest > MAX_WIDTH:
        return f"width {widest} > {MAX_WIDTH}"
    if mlp.num_layers > MAX_LAYERS:
        return f"{mlp.num_layers} layers > {MAX_LAYERS}"
    from ..triton.sobolev_mlp import MAX_TILE_ROWS, MIN_PAD, Layout, shared_memory_limit

    layout = Layout(tuple(mlp.widths), problem.num_directions, problem.order)
    if problem.order * layout.kp * MIN_PAD > MAX_TILE_ROWS:
        return f"K = {problem.num_directions} directions do not fit on chip"
    # The widest layer's weight tile and the row tiles of the smallest program must fit in
    # the GPU's shared memory (16-bit dots need more on Hopper: see Layout.shared_bytes).
    limit = shared_memory_limit(problem.device)
    need = layout.shared_bytes(MIN_PAD, problem.x.element_size())
    if limit is not None and need > limit:
        return (
            f"its tiles need about {need // 1024} KiB of shared memory (widths {mlp.widths}, "
            f"K = {problem.num_directions}, {problem.dtype}), this GPU has {limit // 1024} KiB"
        )
    return None


def _run(problem: SobolevProblem, *, with_targets: bool):
    from ..triton import sobolev_mlp as k
    from ..triton.ops import sobolev_fwd

    mlp = problem.mlp
    act = mlp.activation
    target, kind = None, k.TARGET_NONE
    target2, kind2 = None, k.TARGET_NONE
    if with_targets:
        if problem.target_grad is not None:
            target, kind = problem.target_grad, k.TARGET_GRAD
        else:
            target, kind = problem.target_jvp, k.TARGET_JVP
        if problem.target_hess is not None:
            target2, kind2 = problem.target_hess, k.TARGET_HESS
        elif problem.target_hvp2 is not None:
            target2, kind2 = problem.target_hvp2, k.TARGET_HVP2
    params = [*problem.weights, *problem.biases]
    save = torch.is_grad_enabled() and (
        problem.x.requires_grad or any(p.requires_grad for p in params)
    )
    return sobolev_fwd(
        problem.x, problem.directions, problem.y if with_targets else None, target, target2,
        problem.weights, problem.biases, kind, kind2, act.kernel_id, act.negative_slope,
        problem.alpha, problem.beta, problem.gamma, problem.order, save, _allow_tf32(),
    )  # fmt: skip


def _allow_tf32() -> bool:
    # fp32 dots are exact unless the user opted into TF32 the torch way:
    # torch.backends.cuda.matmul.allow_tf32 = True, which set_float32_matmul_precision("high")
    # also sets (a flag read, so torch.compile traces it)
    return torch.backends.cuda.matmul.allow_tf32


def sobolev_loss(problem: SobolevProblem) -> tuple[Tensor, Tensor]:
    loss, f, *_ = _run(problem, with_targets=True)
    return loss, f


def mlp_jvp(problem: SobolevProblem) -> tuple[Tensor, ...]:
    # With no targets the residuals are u (and w) themselves, and they carry the gradient.
    _, f, _, u, w, _ = _run(problem, with_targets=False)
    derivatives = [u] if problem.order == 1 else [u, w]
    return (f, *(d.to(problem.dtype).transpose(0, 1) for d in derivatives))
