"""Triton kernels of the fused Sobolev loss (imported lazily by ``backends/triton.py``).

Import this only after deciding on ``TRITON_INTERPRET``: Triton picks the interpreter when a
kernel is decorated, i.e. when ``sobolev_mlp`` is first imported.
"""
