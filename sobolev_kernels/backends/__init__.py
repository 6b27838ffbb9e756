"""Backend registry: what each implementation can run, and the one function that picks.

Each backend module defines a ``Backend`` (``backends/base.py``) that declares what it takes:
``orders``, ``dtypes``, ``devices()`` and whether it ``needs_mlp``; the registry checks those
for every backend alike, then the backend's own ``unsupported_reason`` (sizes, shared memory).
An explicitly requested backend that cannot run raises a ``ValueError`` naming the reason;
``"auto"`` walks a preference list and falls back to ``reference`` with a warning that names
the module at fault and points at the caller's line, once per model class and reason;
on a GPU where both fused backends can run, it measures them once per shape and keeps the
faster (``tuning``).
"""

from __future__ import annotations

import os
import sys
import warnings

from torch import nn as _nn

from .. import tuning
from ..problem import SobolevProblem
from . import cuda, reference, torch, triton
from .base import Backend, FusedBackend
from .measured import choice_key, trial_step

__all__ = [
    "BACKENDS",
    "Backend",
    "FusedBackend",
    "SobolevFallbackWarning",
    "available_backends",
    "can_run",
    "load",
    "select",
]

# In no particular order; preference lives in _auto_order.
BACKENDS: dict[str, Backend] = {
    b.name: b for b in (reference.BACKEND, torch.BACKEND, triton.BACKEND, cuda.BACKEND)
}


class SobolevFallbackWarning(UserWarning):
    """``backend="auto"`` could not use a fused path and fell back to a slower one."""


# (model class, reason) pairs already warned about
_warned: set[tuple[str, str]] = set()
# Frames in these directories are ours, or torch's module call machinery between a
# SobolevLoss (or a DDP-wrapped SobolevObjective) and the line that called it.
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.dirname(os.path.abspath(f))) + os.sep for f in (__file__, _nn.__file__)
)


def load(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(
            f"backend: unknown backend {name!r}; expected 'auto' or one of {list(BACKENDS)}"
        )
    return BACKENDS[name]  # a dict lookup, which torch.compile traces


def can_run(name: str, problem: SobolevProblem) -> bool:
    return load(name).reason(problem) is None


def available_backends(with_reasons: bool = False) -> list[str] | dict[str, str | None]:
    """Names of the backends that can run in this process (on some device and dtype); with
    ``with_reasons``, every backend and why it cannot run here (None where it can), e.g. the
    C++ extension that was not built and how to build it."""
    if with_reasons:
        return {name: b.unavailable_reason() for name, b in BACKENDS.items()}
    return [name for name, b in BACKENDS.items() if b.unavailable_reason() is None]


def _auto_order(problem: SobolevProblem) -> list[str]:
    # On CPU the fused C++ kernel measured 2x the torch backend (README, bench/results); the
    # Triton interpreter is a correctness tool, never a speed choice.
    return ["cuda", "triton", "torch"] if problem.device.type == "cuda" else ["cuda", "torch"]


# On a GPU both fused backends usually take a problem; which is faster depends on the shape
# (rows per block, tensor cores, widths), so auto measures them once per shape (``tuning``).
_MEASURED = ("cuda", "triton")


def select(name: str, problem: SobolevProblem) -> Backend:
    """The backend to run ``problem`` with (``name`` may be ``"auto"``)."""
    if name != "auto":
        reason = load(name).reason(problem)
        if reason is not None:
            raise ValueError(f"backend: {name!r} cannot run this problem: {reason}")
        return load(name)
    reasons, fused = [], []
    for candidate in _auto_order(problem):
        if fused and candidate not in _MEASURED:
            break  # a fused backend runs: the slower ones need no checking
        reason = load(candidate).reason(problem)
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
    _warn_fallback(problem, reasons)
    return load("reference")


def _warn_fallback(problem: SobolevProblem, reasons: list[str]) -> None:
    """Once per model class and reason: why, and at the line of the user's call."""
    why = problem.model_reason if problem.mlp is None else None
    why = why or "no fused backend can take this problem (" + "; ".join(reasons) + ")"
    key = (type(problem.model).__qualname__, why)
    if key in _warned:
        return
    _warned.add(key)
    message = (
        f"sobolev_kernels: {why}. This loss runs on the slow 'reference' backend; pass "
        "backend='reference' to choose it without this warning."
    )
    warnings.warn(message, SobolevFallbackWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside this package and torch (the user's line),
    counted from the function that calls ``warnings.warn``."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _INTERNAL_DIRS
    ):
        frame, level = frame.f_back, level + 1
    return level
