"""Triton kernels of the fused Sobolev loss (imported lazily by ``backends/triton.py``).

    layout.py     launch geometry and fit estimates (no triton import)
    tiles.py      jit helpers shared by the kernels
    forward.py    the fused forward kernel, its derivation above it
    backward.py   the fused backward kernel, its derivation above it
    weight_grad.py  the split-K weight gradients, and the one reduction kernel
    forward_resident.py, backward_resident.py  the same with their tiles in registers
    persistent_backward.py  the whole backward in one persistent launch
    launch.py     the forward and backward ops: check, allocate, plan, launch
    choices.py    what a launch takes by choice: dot precisions, settings, the tuner's configs
    parameter_grads.py  dW and db from the backward's stacks: GEMMs or split-K, and their sums
    plans.py      the launches' plans, kept per signature and settings
    direct_launch.py  later launches of a compiled kernel without Triton's per-launch Python
    ops.py        the launchers as the triton_sobolev_* ops (sobolev_kernels/fused.py)
    aot.py        ahead-of-time compiles for a GPU target (tooling, not imported by the library)

Import the kernel modules only after deciding on ``TRITON_INTERPRET``: Triton picks the
interpreter when a kernel is decorated, i.e. when ``forward``/``backward`` are first
imported. This package module and ``layout`` import nothing heavy, so the backend can ask
``interpreting()`` and check fit early.
"""

import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
