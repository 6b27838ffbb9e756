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

Choices can outlive the process: ``save(path)`` writes them (JSON), ``load(path)`` serves them
where this process has measured nothing for a shape, and ``SOBOLEV_TUNING_FILE=path`` does
both by itself (read on the first choice, written after each new measurement): every process
of a program, or of a benchmark whose stages run apart, then runs the kernels the first one
measured fastest. A timing under a profiler would choose otherwise: the H200's run of
2026-11-27 profiled, under Nsight Compute, the split-K weight gradients that its tuner chose
there, where the benchmark's had chosen cuBLAS. A file is one machine's and one code's: written
by other sources of this package, another torch or Triton, or with other GPUs, it is ignored
(with a warning).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import warnings
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

__all__ = [
    "can_measure",
    "choices",
    "chosen",
    "clear",
    "enabled",
    "fastest",
    "load",
    "measurements",
    "register_choice_type",
    "save",
    "time_ms",
]

C = TypeVar("C")
_chosen: dict[Hashable, object] = {}
_measured: dict[Hashable, list[tuple[object, float | None]]] = {}
_loaded: dict[str, Any] = {}  # choices read by load(), by repr(key), as the file holds them
_file_read = False  # SOBOLEV_TUNING_FILE: read once, on the first choice asked for
_CHOICE_TYPES: dict[str, type] = {}  # NamedTuple choices by name (register_choice_type)
FILE_FORMAT = 1
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
    """The measured choice for ``key`` (here, or by a process that saved it: ``load``), or
    None when it was never measured."""
    found = _chosen.get(key)
    if found is None and (_loaded or not _file_read):
        found = _from_file(key)
    return found


def fastest(
    key: Hashable,
    candidates: Sequence[C],
    run: Callable[[C], object],
    skip: tuple[type[BaseException], ...] = (),
) -> C:
    """The candidate for which ``run(candidate)`` takes the least GPU time, measured once per
    ``key``. A candidate whose run raises one of ``skip`` (a Triton config that does not fit
    on chip, say) is left out; if every one does, the last error is raised."""
    known = chosen(key)
    if known is not None and known in candidates:  # (a loaded one that is not: measured anew)
        return known  # type: ignore[return-value]
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
    path = os.environ.get("SOBOLEV_TUNING_FILE")
    if path:
        save(path)
    return best


def choices() -> dict[Hashable, object]:
    """Every measured choice of this process, by key (what a benchmark should report)."""
    return dict(_chosen)


def measurements() -> dict[Hashable, list[tuple[object, float | None]]]:
    """Every candidate measured by this process, by key: (candidate, median ms, or None where
    it did not fit). What the GPU benchmark reports, so one run settles every variant."""
    return {key: list(record) for key, record in _measured.items()}


def clear() -> None:
    """Forget every measured choice, and those loaded from a file (the next call with each
    shape measures again; SOBOLEV_TUNING_FILE is not read again)."""
    global _file_read
    _chosen.clear()
    _measured.clear()
    _loaded.clear()
    _file_read = True
    for forget in _also_forget:
        forget()


def register_choice_type(cls: type) -> type:
    """Let ``save`` and ``load`` carry choices of NamedTuple ``cls`` (a Triton launch config);
    strings they carry as they are."""
    _CHOICE_TYPES[cls.__name__] = cls
    return cls


def save(path: str | os.PathLike) -> None:
    """Write every choice this process holds (measured here or loaded) to ``path`` as JSON,
    with what ``load`` checks (formats, versions, GPUs). Written whole, then renamed into
    place: a reader never sees half a file."""
    entries = dict(_loaded)
    entries.update({repr(key): _encoded(choice) for key, choice in _chosen.items()})
    data = {**_machine(), "choices": {k: v for k, v in entries.items() if v is not None}}
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def load(path: str | os.PathLike) -> int:
    """Serve the choices ``save`` wrote to ``path`` where this process has measured nothing for
    a shape (its own measurements come first); returns how many the file holds. A file of
    another format, written by other sources of this package, another torch or Triton, or
    with other GPUs, is ignored with a warning (0): another machine's choices could be slower,
    and another code's could be a config since found wrong."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        warnings.warn(f"SOBOLEV tuning file {path}: not read ({exc})", stacklevel=2)
        return 0
    mine = _machine()
    other = [k for k in mine if data.get(k) != mine[k]]
    if other or not isinstance(data.get("choices"), dict):
        what = ", ".join(f"{k} {data.get(k)!r} (here {mine[k]!r})" for k in other) or "no choices"
        warnings.warn(f"SOBOLEV tuning file {path}: ignored, {what}", stacklevel=2)
        return 0
    _loaded.update(data["choices"])
    return len(data["choices"])


@functools.cache
def _machine() -> dict[str, object]:
    """What a file's choices hold for: this format, these versions (and this package's very
    sources: its version number stays put between commits, and a choice of older code may be
    a launch config since found to fault), these GPUs. Once per process (save() runs after
    each new measurement); callers copy it."""
    from . import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])  # fmt: skip
    return {"format": FILE_FORMAT, "sobolev_kernels": __version__, "code": _code_digest(),
            "torch": torch.__version__, "triton": triton_version, "gpus": gpus}  # fmt: skip


@functools.cache
def _code_digest() -> str:
    """A digest of this package's Python sources (the kernels and the candidates they offer)."""
    root = Path(__file__).parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _encoded(choice: object) -> object:
    """A choice as JSON holds it (None: one that cannot be carried)."""
    if isinstance(choice, str):
        return choice
    name = type(choice).__name__
    if _CHOICE_TYPES.get(name) is type(choice):
        return {"type": name, "fields": choice._asdict()}  # type: ignore[attr-defined]
    return None


def _from_file(key: Hashable) -> object | None:
    """``key``'s choice from a loaded file (reading SOBOLEV_TUNING_FILE first, once), kept as
    this process's from then on; None where the file has none it can decode."""
    global _file_read
    if not _file_read:
        _file_read = True
        path = os.environ.get("SOBOLEV_TUNING_FILE")
        if path and os.path.exists(path):
            load(path)
    raw = _loaded.get(repr(key)) if _loaded else None
    if isinstance(raw, dict):
        cls = _CHOICE_TYPES.get(raw.get("type"))
        try:
            raw = cls(**raw["fields"]) if cls is not None else None
        except (TypeError, KeyError):  # (fields of another version of the type)
            raw = None
    if raw is not None:
        _chosen[key] = raw
    return raw


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
