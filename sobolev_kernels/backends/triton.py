"""Backend ``triton``: forward + all tangents + the projected loss in one kernel launch.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (the Triton interpreter,
a correctness tool: it is slow and never chosen by ``backend="auto"`` on CPU). The kernels
are built on first use (``sobolev_kernels/triton/ops.py``); the schemas, fake kernels and
autograd are registered here, at import, like the C++ family's.
"""

from __future__ import annotations

import importlib.util

import torch

from ..fused import TRITON_OPS, FusedOps
from ..problem import SobolevProblem
from ..triton import interpreting
from ..triton.layout import Layout
from .base import FusedBackend

MAX_WIDTH = 256
MAX_LAYERS = 16

TRITON_OPS.define()
TRITON_OPS.register()


class TritonBackend(FusedBackend):
    name = "triton"
    dtypes = (torch.float32, torch.bfloat16, torch.float16)

    def devices(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if interpreting() else ("cuda",)

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if not torch.cuda.is_available() and not interpreting():
            return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        return None

    def unsupported_reason(self, problem: SobolevProblem) -> str | None:
        mlp = problem.mlp
        widest = max(mlp.widths)
        if widest > MAX_WIDTH:
            return f"width {widest} > {MAX_WIDTH}"
        if mlp.num_layers > MAX_LAYERS:
            return f"{mlp.num_layers} layers > {MAX_LAYERS}"
        layout = Layout.of(tuple(mlp.widths), problem.num_directions, problem.order)
        return layout.fits(problem.device, problem.x.element_size())

    @property
    def ops(self) -> FusedOps:
        from ..triton import ops  # noqa: F401  (builds the kernels, registers their impls)

        return TRITON_OPS


BACKEND = TritonBackend()
