"""Choices made by measurement on the GPU, once per shape, then remembered by the process.

Two callers: the Triton launchers pick rows per program and warps for each kernel
(``triton/choices.py``), and ``backend="auto"`` picks the faster of the fused ``cuda`` and
``triton`` backends when both can take a CUDA problem (``backends/__init__.py``). As with
``torch.backends.cudnn.benchmark``, the first call with a new shape pays for the measurement
(one untimed run and a few timed ones per candidate, about 25 ms each). Set
``SOBOLEV_AUTOTUNE=0`` for the static choices instead: they are the same in every process,
and so are the results bit for bit (rows per program set the order of the loss's partial sums).

Nothing is measured where it cannot be: off CUDA (the CPU, the Triton interpreter), while
``torch.compile`` traces, or while a CUDA graph is captured. The static choice is used there
unless the shape was measured before.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

__all__ = [
    "can_measure",
    "choices",
    "chosen",
    "clear",
    "enabled",
    "fastest",
    "measurements",
    "time_ms",
]

C = TypeVar("C")
_chosen: dict[Hashable, object] = {}
_measured: dict[Hashable, list[tuple[object, float | None]]] = {}
_BUDGET_MS = 25.0  # timed runs per candidate: about this long in all, 3 to 20 runs


def enabled() -> bool:
    """Whether measured choices are allowed (``SOBOLEV_AUTOTUNE`` is not ``0``)."""
    return os.environ.get("SOBOLEV_AUTOTUNE", "1") != "0"


def can_measure(device: torch.device) -> bool:
    """Whether a choice for a problem on ``device`` may be measured here and now."""
    if device.type != "cuda" or not enabled() or torch.compiler.is_compiling():
        return False
    return not torch.cuda.is_current_stream_capturing()


def chosen(key: Hashable) -> object | None:
    """The measured choice for ``key``, or None when it was never measured."""
    return _chosen.get(key)


def fastest(
    key: Hashable,
    candidates: Sequence[C],
    run: Callable[[C], object],
    skip: tuple[type[BaseException], ...] = (),
) -> C:
    """The candidate for which ``run(candidate)`` takes the least GPU time, measured once per
    ``key``. A candidate whose run raises one of ``skip`` (a Triton config that does not fit
    on chip, say) is left out; if every one does, the last error is raised."""
    if key in _chosen:
        return _chosen[key]  # type: ignore[return-value]
    timings: list[tuple[float, int]] = []
    error: BaseException | None = None
    record = _measured[key] = []
    for i, candidate in enumerate(candidates):
        try:
            timings.append((time_ms(lambda c=candidate: run(c)), i))
            record.append((candidate, timings[-1][0]))
        except skip as e:
            error = e
            record.append((candidate, None))
    if not timings:
        if error is None:
            raise ValueError("candidates: nothing to choose from")
        raise error
    best = candidates[min(timings)[1]]  # ties go to the earlier (static) candidate
    _chosen[key] = best
    return best


def choices() -> dict[Hashable, object]:
    """Every measured choice of this process, by key (what a benchmark should report)."""
    return dict(_chosen)


def measurements() -> dict[Hashable, list[tuple[object, float | None]]]:
    """Every candidate measured by this process, by key: (candidate, median ms, or None where
    it did not fit). What the GPU benchmark reports, so one run settles every variant."""
    return {key: list(record) for key, record in _measured.items()}


def clear() -> None:
    """Forget every measured choice (the next call with each shape measures again)."""
    _chosen.clear()
    _measured.clear()
    for forget in _also_forget:
        forget()


_also_forget: list[Callable[[], None]] = []  # what keeps choices made here (launch plans)


def on_clear(forget: Callable[[], None]) -> None:
    """Have ``clear()`` call ``forget`` too (a cache of plans holding measured choices)."""
    _also_forget.append(forget)


def time_ms(fn: Callable[[], object]) -> float:
    """Median GPU time of ``fn`` in milliseconds, after one untimed run (compiles, caches)."""
    fn()
    torch.cuda.synchronize()
    first = _elapsed_ms(fn)
    reps = int(min(20, max(3, _BUDGET_MS / max(first, 1e-3))))
    return statistics.median([first] + [_elapsed_ms(fn) for _ in range(reps - 1)])


def _elapsed_ms(fn: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)
