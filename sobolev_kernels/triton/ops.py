"""The Triton kernels as the ``triton_sobolev_forward`` / ``triton_sobolev_backward`` ops.

They follow the fused op contract (schemas, fake kernels and autograd in
``sobolev_kernels/fused.py``), so a training step calling them compiles with
``torch.compile(fullgraph=True)``: no graph break, no double backward (the backward is itself
an op). Importing this module builds the kernels (see ``triton/__init__.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..fused import NAMESPACE, TRITON_OPS
from . import launch


def on_the_inputs_device(launcher: Callable, x_at: int) -> Callable:
    """``launcher`` run with x (its argument ``x_at``)'s GPU as the current device. Triton
    launches on the current device, whatever the tensors' (the C++ ops take a CUDAGuard):
    a model on cuda:1 while cuda:0 is current would otherwise run its kernels on cuda:0."""

    @functools.wraps(launcher)
    def run(*args):
        x = args[x_at]
        if x.is_cuda and x.get_device() != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                return launcher(*args)
        return launcher(*args)

    return run


sobolev_forward = on_the_inputs_device(launch.sobolev_forward, 0)
sobolev_backward = on_the_inputs_device(launch.sobolev_backward, 4)  # (4 upstream gradients)

# CPU: the interpreter (TRITON_INTERPRET=1), for tests
_DEVICES = ("cpu", "cuda")
torch.library.impl(f"{NAMESPACE}::{TRITON_OPS.forward_name}", _DEVICES, sobolev_forward)
torch.library.impl(f"{NAMESPACE}::{TRITON_OPS.backward_name}", _DEVICES, sobolev_backward)
TRITON_OPS.set_impls(sobolev_forward, sobolev_backward)  # what the eager path calls directly
