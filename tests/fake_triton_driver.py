"""Triton's GPU launch path without a GPU: a faked driver and kernels that compile to nothing.

``install()`` makes Triton believe it runs on device 0 of an sm_90 GPU, on stream 0, and
"compiles" every kernel to a ``NoOpKernel`` whose launcher does nothing but, where asked,
record what it was given. So the whole of a step's Python runs, ours and Triton's (binder,
cache key, launcher call), on CPU tensors; only the C launcher and the kernels are missing.
Import it before sobolev_kernels.triton, in a process without ``TRITON_INTERPRET=1``.
Used by ``investigations/triton_host_time.py`` and ``tests/direct_launch_check.py``.
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # the compiled path, not the interpreter

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver, jit  # noqa: E402

# Where NoOpKernel.run appends (grid, stream, function, metadata, hooks, args) while a list
launches: list | None = None


class _Driver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_device_interface(self):
        return torch.cuda


class NoOpKernel:
    """A compiled kernel's stand-in: Triton's launch path calls ``run`` with the grid, the
    stream, the function, its metadata, the launch hooks and every bound argument."""

    def __init__(self, name: str):
        self.name = name
        self.function = ("function of", name)
        self.packed_metadata = ("metadata of", name)

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        if launches is not None:
            launches.append((self.name, args))


def _compile_nothing(self, key, signature, device, *args, **kwargs):
    kernel = NoOpKernel(self.fn.__name__)
    self.device_caches[device][0][key] = kernel  # as Triton's cache would
    return kernel


def install() -> None:
    driver.set_active(_Driver())
    jit.JITFunction._do_compile = _compile_nothing


def as_gpu_backend() -> None:
    """Let the Triton backend and the tuner act as on a CUDA device (with every candidate
    timed at 1 ms, so the tuner keeps the first)."""
    from sobolev_kernels import tuning
    from sobolev_kernels.backends import triton as triton_backend

    tuning.can_measure = lambda device: True
    tuning.time_ms = lambda fn: (fn(), 1.0)[1]
    triton_backend.TritonBackend.unavailable_reason = lambda self: None
    triton_backend.TritonBackend.devices = lambda self: ("cuda", "cpu")
