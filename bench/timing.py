"""Timing and memory measurement: ``triton.testing.do_bench`` on GPU, wall clock on CPU, and
the host's time to issue a step."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def quantiles(samples: list[float], qs=(0.2, 0.5, 0.8)) -> tuple[float, ...]:
    t = torch.tensor(samples, dtype=torch.float64)
    return tuple(torch.quantile(t, q).item() for q in qs)


def time_ms(
    fn: Callable[[], object], device: str, *, warmup: int = 3, reps: int = 10,
    min_seconds: float = 0.0,
) -> tuple[float, float, float]:  # fmt: skip
    """(p20, p50, p80) milliseconds per call of ``fn``."""
    if device == "cuda":
        from triton.testing import do_bench

        return tuple(do_bench(fn, quantiles=[0.2, 0.5, 0.8]))
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return quantiles(samples)


def host_ms(
    fn: Callable[[], object], device: str, *, reps: int = 10, max_seconds: float = 0.5
) -> tuple[float, ...]:
    """(p20, p50, p80) milliseconds the host takes to issue one call of ``fn``, the device idle
    when it starts and not waited for. Near the GPU time, the step is host-bound (launches,
    Python, or a sync inside the step); on the CPU it is the whole step.

    ``fn.issue`` (JAX) is the call without waiting, ``fn.wait`` waits for what it returned.
    At least 3 calls, then up to ``reps`` while under ``max_seconds`` (large steps).
    """
    issue, wait = getattr(fn, "issue", fn), getattr(fn, "wait", lambda out: out)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    wait(issue())  # anything first-call (autotuning, compiles) stays out
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < reps and (len(samples) < 3 or time.perf_counter() - start < max_seconds):
        sync()
        t0 = time.perf_counter()
        out = issue()
        samples.append((time.perf_counter() - t0) * 1e3)
        wait(out)
    sync()
    return quantiles(samples)


def peak_memory_mb(fn: Callable[[], object], device: str) -> float | None:
    """Peak allocated memory of one call (GPU only; None on CPU, where torch keeps no count)."""
    if device != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def count_launches(fn: Callable[[], object], device: str) -> int:
    """Kernels (GPU) or aten ops (CPU) launched by one call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    # CPU: count leaf aten operators (those that call no other aten op)
    return sum(1 for e in events if e.name.startswith("aten::") and not e.cpu_children)
