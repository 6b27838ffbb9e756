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

# (a path search, once: torch.compile traces a constant)
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
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
        if not _TRITON_INSTALLED:
            return "triton is not installed"
        if not torch.cuda.is_available() and not interpreting():
            return "needs a CUDA GPU (or TRITON_INTERPRET=1 to run the kernels in the interpreter)"
        return None

    def unsupported_reason(self, problem: SobolevProblem) -> str | None:
        widths = tuple(problem.mlp.widths)
        if max(widths) > MAX_WIDTH:
            return f"width {max(widths)} > {MAX_WIDTH}"
        if len(widths) - 1 > MAX_LAYERS:
            return f"{len(widths) - 1} layers > {MAX_LAYERS}"
        layout = Layout.of(widths, problem.num_directions, problem.order)
        device, size = problem.device, problem.x.element_size()
        return layout.cached(("fits", device, size), lambda: layout.fits(device, size))

    @property
    def ops(self) -> FusedOps:
        from ..triton import ops  # noqa: F401  (builds the kernels, registers their impls)

        return TRITON_OPS


BACKEND = TritonBackend()
