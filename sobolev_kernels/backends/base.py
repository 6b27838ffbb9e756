"""What a backend is: an implementation of the loss that declares what it can run.

The registry (``backends/__init__.py``) checks the declared capabilities (orders, dtypes,
devices, whether the model must be an MLP) for every backend alike, then asks the backend's
own ``unsupported_reason`` (sizes, shared memory). The two fused backends differ only in the
ops they call (``FusedBackend.ops``): both follow the contract of ``sobolev_kernels/fused.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..fused import FusedOps, forward_arguments
from ..problem import SobolevProblem

__all__ = ["ALL_DTYPES", "Backend", "FusedBackend"]

ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


class Backend:
    """One implementation of ``sobolev_loss`` and ``mlp_jvp`` and what it can take."""

    name: str
    orders: tuple[int, ...] = (1, 2)
    dtypes: tuple[torch.dtype, ...] = ALL_DTYPES
    needs_mlp: bool = True  # the model must be a SobolevMLP (or an adopted nn.Sequential)

    def devices(self) -> tuple[str, ...]:
        """Device types whose tensors it takes (in this process)."""
        return ("cpu", "cuda")

    def unavailable_reason(self) -> str | None:
        """Why it cannot run in this process at all (None: it can)."""
        return None

    def unsupported_reason(self, problem: SobolevProblem) -> str | None:
        """Why it cannot take this problem beyond the declared capabilities (None: it can)."""
        return None

    def reason(self, problem: SobolevProblem) -> str | None:
        """Why it cannot run ``problem``: availability, the declared capabilities, then its
        own checks (None: it can)."""
        unavailable = self.unavailable_reason()
        if unavailable is not None:
            return unavailable
        if problem.order not in self.orders:
            return f"order {problem.order} is not implemented there"
        if self.needs_mlp and problem.mlp is None:
            return "the model is not a SobolevMLP (or an nn.Sequential of Linear/activation)"
        if problem.dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"dtype {problem.dtype} (it takes {names})"
        if problem.device.type not in self.devices():
            return f"tensors on {problem.device.type}; it takes {', '.join(self.devices())}"
        return self.unsupported_reason(problem)

    def sobolev_loss(self, problem: SobolevProblem) -> tuple[Tensor, Tensor]:
        """(loss, f): the 0-dim loss and the values f (B, m), both differentiable."""
        raise NotImplementedError

    def mlp_jvp(self, problem: SobolevProblem) -> tuple[Tensor, ...]:
        """(f, u) or, for order 2, (f, u, w): f (B, m), u and w (B, K, m)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<sobolev_kernels backend {self.name!r}>"


class FusedBackend(Backend):
    """A backend whose work is the two ops of one fused family (``sobolev_kernels/fused.py``)."""

    @property
    def ops(self) -> FusedOps:
        raise NotImplementedError

    def sobolev_loss(self, problem: SobolevProblem) -> tuple[Tensor, Tensor]:
        loss, f, *_ = self.ops.apply(*forward_arguments(problem, with_targets=True))
        return loss, f

    def mlp_jvp(self, problem: SobolevProblem) -> tuple[Tensor, ...]:
        _, f, u, w, _ = self.ops.apply(*forward_arguments(problem, with_targets=False))
        return (f, u) if problem.order == 1 else (f, u, w)
