"""The Triton kernels as the ``triton_sobolev_forward`` / ``triton_sobolev_backward`` ops.

They follow the fused op contract (schemas, fake kernels and autograd in
``sobolev_kernels/fused.py``), so a training step calling them compiles with
``torch.compile(fullgraph=True)``: no graph break, no double backward (the backward is itself
an op). Importing this module builds the kernels (see ``triton/__init__.py``).
"""

from __future__ import annotations

import torch

from ..fused import NAMESPACE, TRITON_OPS
from .launch import sobolev_backward, sobolev_forward

# CPU: the interpreter (TRITON_INTERPRET=1), for tests
_DEVICES = ("cpu", "cuda")
torch.library.impl(f"{NAMESPACE}::{TRITON_OPS.forward_name}", _DEVICES, sobolev_forward)
torch.library.impl(f"{NAMESPACE}::{TRITON_OPS.backward_name}", _DEVICES, sobolev_backward)
TRITON_OPS.set_impls(sobolev_forward, sobolev_backward)  # what the eager path calls directly
