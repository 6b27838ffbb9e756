"""Backend registry: what each implementation can run, and the one function that picks.

Every backend module exposes ``unavailable_reason()`` (why it cannot run in this process at
all, or None), ``unsupported_reason(problem)`` (why it cannot take this problem's device or
sizes, or None), ``sobolev_loss(problem) -> (loss, f)`` and ``mlp_jvp(problem) -> (f, u[, w])``.
It may declare what the registry checks for it: ``ORDERS``, the Sobolev orders it implements
(default ``(1,)``); ``DTYPES`` (default fp64, fp32, bf16, fp16); ``NEEDS_MLP`` (default True:
the model must be a SobolevMLP, or an nn.Sequential adopted as one).
An explicitly requested backend that cannot run raises a ``ValueError`` naming the reason;
``"auto"`` walks a preference list and falls back to ``reference`` with a one-time warning;
on a GPU where both fused backends can run, it measures them once per shape and keeps the
faster (``tuning``).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

import torch

from .. import tuning
from ..problem import SobolevProblem
from .measured import choice_key, trial_step

__all__ = ["BACKENDS", "SobolevFallbackWarning", "available_backends", "select", "load"]

# Import paths, in no particular order; preference lives in _auto_order.
BACKENDS: dict[str, str] = {
    "reference": "sobolev_kernels.backends.reference",
    "torch": "sobolev_kernels.backends.torch",
    "triton": "sobolev_kernels.backends.triton",
    "cuda": "sobolev_kernels.backends.cuda",
}


class SobolevFallbackWarning(UserWarning):
    """``backend="auto"`` could not use a fused path and fell back to a slower one."""


_warned: set[str] = set()


def load(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ValueError(
            f"backend: unknown backend {name!r}; expected 'auto' or one of {list(BACKENDS)}"
        )
    # A dict lookup, not importlib, so torch.compile can trace the dispatch (the modules are
    # imported below; they are thin and import their kernels lazily).
    return sys.modules[BACKENDS[name]]


def _unavailable(name: str) -> str | None:
    return load(name).unavailable_reason()


_ALL_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _unsupported(name: str, problem: SobolevProblem) -> str | None:
    """The declared capabilities first (order, model, dtype), then the backend's own checks."""
    module = load(name)
    if problem.order not in getattr(module, "ORDERS", (1,)):
        return f"order {problem.order} is not implemented there"
    if getattr(module, "NEEDS_MLP", True) and problem.mlp is None:
        return "the model is not a SobolevMLP (or an nn.Sequential of Linear/activation)"
    dtypes = getattr(module, "DTYPES", _ALL_DTYPES)
    if problem.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        return f"dtype {problem.dtype} (it takes {names})"
    return module.unsupported_reason(problem)


def can_run(name: str, problem: SobolevProblem) -> bool:
    return _unavailable(name) is None and _unsupported(name, problem) is None


def available_backends() -> list[str]:
    """Names of the backends that can run in this process (on some device and dtype)."""
    return [name for name in BACKENDS if _unavailable(name) is None]


def _auto_order(problem: SobolevProblem) -> list[str]:
    # On CPU the fused C++ kernel measured 2x the torch backend (README, bench/results); the
    # Triton interpreter is a correctness tool, never a speed choice.
    order = ["cuda", "triton", "torch"] if problem.device.type == "cuda" else ["cuda", "torch"]
    return [name for name in order if name in BACKENDS]


# On a GPU both fused backends usually take a problem; which is faster depends on the shape
# (rows per block, tensor cores, widths), so auto measures them once per shape (``tuning``).
_MEASURED = ("cuda", "triton")


def select(name: str, problem: SobolevProblem) -> ModuleType:
    """The backend module to run ``problem`` with (``name`` may be ``"auto"``)."""
    if name != "auto":
        reason = _unavailable(name) or _unsupported(name, problem)
        if reason is not None:
            raise ValueError(f"backend: {name!r} cannot run this problem: {reason}")
        return load(name)
    reasons, fused = [], []
    for candidate in _auto_order(problem):
        if fused and candidate not in _MEASURED:
            break  # a fused backend runs: the slower ones need no checking
        reason = _unavailable(candidate) or _unsupported(candidate, problem)
        if reason is not None:
            reasons.append(f"{candidate}: {reason}")
        elif candidate in _MEASURED:
            fused.append(candidate)
        else:
            return load(candidate)
    if len(fused) > 1:
        key = choice_key(problem)
        if tuning.can_measure(problem.device):
            return load(tuning.fastest(key, fused, lambda n: trial_step(load(n), problem)))
        # a choice measured before holds also where nothing can be measured (compiling)
        return load(tuning.chosen(key) or fused[0])
    if fused:
        return load(fused[0])
    message = (
        "sobolev_kernels: no fused backend can take this problem, using the slow 'reference' "
        "backend (" + "; ".join(reasons) + ")"
    )
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, SobolevFallbackWarning, stacklevel=4)
    return load("reference")


for _path in BACKENDS.values():
    importlib.import_module(_path)
