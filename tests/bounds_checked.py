"""Triton's interpreter with bounds checks: every address a kernel loads or stores with its
mask on must lie inside one of the launch's tensor arguments.

On a GPU, memory outside a tensor but inside the caching allocator's segment reads and writes
silently, and compute-sanitizer sees the segment, not the tensor; a kernel that runs past a
tensor only faults once the address leaves the segment (at a large batch, say). Here the
allowed ranges are the tensors' own extents, so such a bug shows at any size.

    with bounds_checked():
        kernel[grid](...)   # raises OutOfBounds (inside Triton's InterpreterError)
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch


class OutOfBounds(AssertionError):
    pass


def _extent(t: torch.Tensor) -> tuple[int, int] | None:
    """[first byte, last byte + 1) of a strided tensor (None when empty)."""
    if t.numel() == 0:
        return None
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _extents(arg, out: list[tuple[int, int]]) -> None:
    if isinstance(arg, (tuple, list)):
        for a in arg:
            _extents(a, out)
    elif isinstance(arg, torch.Tensor):
        extent = _extent(arg)
        if extent is not None:
            out.append(extent)


def _check(ranges, ptrs, mask, what: str) -> None:
    addresses = ptrs.data.astype(np.uint64)
    on = np.broadcast_to(mask.data.astype(bool), addresses.shape)
    used = addresses[on]
    inside = np.zeros(used.shape, dtype=bool)
    for lo, hi in ranges:
        inside |= (used >= lo) & (used < hi)
    if not inside.all():
        bad = used[~inside]
        nearest = min(ranges, key=lambda r: min(abs(int(bad[0]) - r[0]), abs(int(bad[0]) - r[1])))
        raise OutOfBounds(
            f"{what}: {bad.size} of {used.size} addresses outside every tensor argument; the "
            f"first at {int(bad[0]) - nearest[0]:+d} bytes from the start of the nearest "
            f"({nearest[1] - nearest[0]} bytes)"
        )


@contextlib.contextmanager
def bounds_checked():
    """Every interpreted launch inside the block checks its loads and stores."""
    from triton.runtime import interpreter

    builder, executor = interpreter.InterpreterBuilder, interpreter.GridExecutor
    saved = (executor._init_args_hst, builder.create_masked_load, builder.create_masked_store)
    init_args, masked_load, masked_store = saved
    ranges: list[tuple[int, int]] = []

    def init(self, args_dev, kwargs):
        args, kw = init_args(self, args_dev, kwargs)
        ranges.clear()  # the host copies' extents (on CPU: the tensors themselves)
        _extents(list(args) + list(kw.values()), ranges)
        return args, kw

    def load(self, ptrs, mask, other, *rest):
        _check(ranges, ptrs, mask, "load")
        return masked_load(self, ptrs, mask, other, *rest)

    def store(self, ptrs, value, mask, *rest):
        _check(ranges, ptrs, mask, "store")
        return masked_store(self, ptrs, value, mask, *rest)

    executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = (
        init,
        load,
        store,
    )
    try:
        yield
    finally:
        executor._init_args_hst, builder.create_masked_load, builder.create_masked_store = saved
