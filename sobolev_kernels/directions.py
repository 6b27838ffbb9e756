"""Projection directions for stochastic Sobolev training.

Directions are either shared by every row, ``(K, d)``, or drawn per row, ``(B, K, d)``.
Sampled directions are uniform on the unit sphere of the input space (normalised Gaussians).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_directions", "full_directions"]


def sample_directions(
    batch: int,
    num_directions: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(batch, num_directions, dim)`` directions uniform on the unit sphere, one set per row.

    The Gaussians are drawn in fp64 on the generator's device, normalised, then rounded to
    ``dtype`` and moved to ``device``: one generator state gives the same directions at every
    dtype and, for a CPU generator, on every device.
    """
    for name, value in (("batch", batch), ("num_directions", num_directions), ("dim", dim)):
        _check_count(name, value, minimum=0 if name == "batch" else 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
    where = generator.device if generator is not None else device
    g = torch.randn(
        batch, num_directions, dim, generator=generator, device=where, dtype=torch.float64
    )
    # A Gaussian sample is exactly 0 with probability ~0; the clamp only guards the division.
    g = g / g.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return g.to(device=device, dtype=dtype)


def full_directions(
    dim: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The ``dim`` basis vectors as shared directions ``(dim, dim)``: full Jacobian matching."""
    _check_count("dim", dim, minimum=1)
    return torch.eye(dim, device=device, dtype=dtype)


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
