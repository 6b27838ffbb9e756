"""Backend ``cuda``: the C++ extension ``sobolev_kernels._C`` (fused CPU kernel, CUDA kernels).

Its ops ``sobolev_forward`` / ``sobolev_backward`` are defined in C++ (``csrc/ops.cpp``) with
the fused op contract's schemas; their fake kernels and autograd come from
``sobolev_kernels/fused.py``, registered when this module is imported (never on first use,
so ``torch.compile`` does not trace the registration). A checkout without the compiled
module still imports; ``unavailable_reason()`` then says how to build it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..fused import CUDA_OPS, FusedOps
from ..problem import SobolevProblem
from .base import FusedBackend

_BUILD_HINT = (
    "reinstall with `pip install --no-build-isolation .` where torch is installed (in a "
    "checkout: `pip install --no-build-isolation -e .`), with a C++ compiler for the CPU kernel "
    "(nvcc and a CUDA build of torch for the CUDA kernels)"
)


class CudaBackend(FusedBackend):
    name = "cuda"

    def unavailable_reason(self) -> str | None:
        if _extension is None:
            return (
                f"the compiled extension sobolev_kernels._C is missing ({_import_error}); "
                + _BUILD_HINT
            )
        return None

    def unsupported_reason(self, problem: SobolevProblem) -> str | None:
        if problem.device.type != "cuda":
            return None
        if not _extension.WITH_CUDA:
            return (
                "sobolev_kernels._C was built without its CUDA kernels; rebuild on a machine "
                "with nvcc and a CUDA build of torch (FORCE_CUDA=1 forces them), " + _BUILD_HINT
            )
        # the kernels' own limits (csrc/cuda/sobolev_kernels.cuh), as the extension reports them
        mlp = problem.mlp
        max_layers, max_width = _extension.CUDA_MAX_LAYERS, _extension.CUDA_MAX_WIDTH
        if mlp.num_layers > max_layers:
            return f"the CUDA kernels take at most {max_layers} layers, got {mlp.num_layers}"
        if max(mlp.widths) > max_width:
            return f"the CUDA kernels take widths up to {max_width}, got {max(mlp.widths)}"
        return None

    @property
    def ops(self) -> FusedOps:
        return CUDA_OPS


def weight_grad_gemm_3xtf32() -> Callable | None:
    """``torch.ops.sobolev_kernels.weight_grad_gemm`` (adjoints, inputs) -> adjoints^T inputs
    where the extension was built with its CUDA kernels and CUTLASS: in fp32 on a GPU, CUTLASS's
    3xTF32 split-K GEMM, fp32-accurate on tensor cores (csrc/cuda/weight_grad_gemm.h), where
    torch's fp32 GEMMs run on the FMA units. None where it was not."""
    if _extension is None or not getattr(_extension, "WITH_CUTLASS", 0):
        return None
    return torch.ops.sobolev_kernels.weight_grad_gemm


def _register() -> None:
    CUDA_OPS.register()
    torch.library.register_fake("sobolev_kernels::activation_series", _series_fake)
    torch.library.register_fake("sobolev_kernels::weight_grad_gemm", _weight_grad_gemm_fake)


def _series_fake(z, activation, negative_slope):
    return z.new_empty((4, *z.shape))


def _weight_grad_gemm_fake(adjoints, inputs):
    return adjoints.new_empty((adjoints.shape[1], inputs.shape[1]))


try:
    from .. import _C as _extension
except ImportError as exc:  # not built (setup.py then leaves a note why), or another torch
    _extension = None
    _note = Path(__file__).parents[1] / "_C_unavailable.txt"
    _import_error = _note.read_text().strip() if _note.exists() else str(exc)
else:
    _import_error = None
    _register()

BACKEND = CudaBackend()
