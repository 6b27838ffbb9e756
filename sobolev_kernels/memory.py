"""How much memory a loss evaluation needs at least, and how much the device can give.

``validation`` compares the two before anything is allocated, so a direction count whose
buffers cannot fit fails at once with the bytes in the message, instead of after seconds of
sampling with the allocator's message.
"""

from __future__ import annotations

import os

import torch

from .mlp import SobolevMLP
from .problem import accumulation_dtype

__all__ = ["available_bytes", "required_bytes"]


def required_bytes(
    mlp: SobolevMLP | None, x: torch.Tensor, k: int, order: int, *, new_directions: bool,
    saves: bool,
) -> int:  # fmt: skip
    """A lower bound of the bytes one evaluation holds at once, whichever backend runs it.

    Every backend returns u (and w for order 2), ``(B, K, m)``; directions drawn for it are
    ``(B, K, d)`` (first in fp64); with a backward to follow, the fused backends save the hidden
    pre-activations of ``1 + order K`` streams in the accumulation dtype (``fused.py``), and
    the reference backend saves more. m is taken as 1 for a model that cannot be inspected.
    """
    batch, dim = x.shape
    size = x.element_size()
    widths = mlp.widths if mlp is not None else [dim, 1]
    need = order * batch * k * widths[-1] * size
    if new_directions:
        need += batch * k * dim * size
    if saves:
        acc = accumulation_dtype(x.dtype).itemsize
        need += (1 + order * k) * batch * sum(widths[1:-1]) * acc
    # sample_directions draws in fp64, then rounds to x's dtype
    sampling = batch * k * dim * (8 + size) if new_directions else 0
    return max(need, sampling)


def available_bytes(device: torch.device) -> int | None:
    """Bytes the allocator can still get on ``device`` (None: unknown). On a GPU this
    synchronises (``torch.cuda.mem_get_info``)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # blocks torch's caching allocator holds but no tensor uses are available too
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        return _available_ram()
    return None


def _available_ram() -> int | None:
    """MemAvailable (free RAM plus reclaimable caches), within a cgroup's limit if lower."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            if limit != "max":
                found.append(int(limit) - int(f.read().strip()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None
