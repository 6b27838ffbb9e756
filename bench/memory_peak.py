"""What is live at a training step's peak of GPU memory, allocation by allocation.

``bench/step.py`` reports each provider's peak; this says which buffers make it up (the saved
pre-activations, the adjoint and input stacks, a workspace), from the CUDA caching
allocator's trace of one step after a warm-up (``torch.cuda.memory._record_memory_history``).
``bench/kernel_profile.py --memory`` adds it to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

# frames of these files say which of our buffers an allocation is
_OURS = ("sobolev_kernels", "bench")


def live_at_peak(events: Iterable[dict]) -> tuple[int, list[dict]]:
    """(peak bytes, the allocations live then, largest first) from one device's allocator
    trace: events with "action" (alloc, free_requested, ...), "addr", "size", "frames".
    Counts from the first event, so the peak is over what the traced code allocated."""
    live: dict[int, dict] = {}
    total = peak = 0
    at_peak: list[dict] = []
    for event in events:
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif action == "free_requested" and event.get("addr") in live:
            total -= live.pop(event["addr"])["size"]
    return peak, sorted(at_peak, key=lambda e: -e["size"])


def where(event: dict) -> str:
    """The innermost frame of our code that made the allocation ("file:line function")."""
    for frame in event.get("frames", []):
        name = frame.get("filename", "")
        if any(part in name for part in _OURS):
            short = name[name.rfind("sobolev_kernels") :] if "sobolev_kernels" in name else name
            return f"{short}:{frame.get('line')} {frame.get('name')}"
    return "(outside our code)"


def peak_breakdown(fn: Callable[[], object], top: int = 6) -> tuple[float, list[tuple[float, str]]]:
    """(peak MiB, [(MiB, where)] of the ``top`` largest allocations live at the peak) of one
    call of ``fn`` on the current CUDA device, after one warm-up call."""
    fn()
    torch.cuda.synchronize()
    device = torch.cuda.current_device()
    record = torch.cuda.memory._record_memory_history
    record(stacks="python", max_entries=1_000_000)
    try:
        # the trace of this call only: an earlier recording's events would count towards its
        # peak (torch keeps them unless cleared, which older versions cannot)
        start = len(torch.cuda.memory._snapshot()["device_traces"][device])
        fn()
        torch.cuda.synchronize()
        events = torch.cuda.memory._snapshot()["device_traces"][device][start:]
    finally:
        record(enabled=None)
    peak, live = live_at_peak(events)
    return peak / 2**20, [(e["size"] / 2**20, where(e)) for e in live[:top]]
