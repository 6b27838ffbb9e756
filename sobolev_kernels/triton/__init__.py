"""Triton kernels of the fused Sobolev loss (imported lazily by ``backends/triton.py``).

Import the kernel modules only after deciding on ``TRITON_INTERPRET``: Triton picks the
interpreter when a kernel is decorated, i.e. when ``sobolev_mlp`` is first imported. This
package module itself imports nothing heavy, so the backend can ask ``interpreting()`` early.
"""

import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
