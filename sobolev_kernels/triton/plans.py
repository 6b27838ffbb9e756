"""The Triton launches' plans: what a launch derives from its signature alone, kept per
signature and the settings it depends on, so that a step's later calls skip it."""

from __future__ import annotations

import os
from collections.abc import Hashable

import torch

from .. import tuning

# What a launch derives from its signature alone (shapes, dtypes, flags, settings), planned
# once per signature: a step's host time (``investigations/triton_host_time.py``).
_plans: dict[Hashable, object] = {}
# The settings a plan depends on, read as raw bytes where CPython keeps them (os.environ.get
# takes about 1 us a variable).
_SETTINGS = ("SOBOLEV_TRITON_FORWARD", "SOBOLEV_TRITON_BACKWARD",
             "SOBOLEV_TRITON_BACKWARD_KERNEL", "SOBOLEV_TRITON_WIDE_TILES",
             "SOBOLEV_TRITON_WEIGHT_GRAD", "SOBOLEV_TRITON_RECOMPUTE_ROWS", "SOBOLEV_AUTOTUNE",
             "SOBOLEV_TRITON_DIRECT_LAUNCH", "SOBOLEV_TRITON_FORWARD_ACTIVATED",
             "SOBOLEV_TRITON_INDEX", "SOBOLEV_TRITON_TF32X3", "SOBOLEV_TRITON_INPUTS_LAYOUT",
             "SOBOLEV_TRITON_UNMEASURED", "TRITON_INTERPRET")  # fmt: skip
_ENVIRON = getattr(os.environ, "_data", None) if os.name == "posix" else None
_SETTINGS_KEYS = tuple(os.fsencode(name) for name in _SETTINGS)


def _settings() -> tuple:
    """The current values of _SETTINGS (None where unset), part of every plan's key."""
    if _ENVIRON is None:
        return tuple(map(os.environ.get, _SETTINGS))
    return tuple(map(_ENVIRON.get, _SETTINGS_KEYS))


def _keep(key: Hashable, plan: object, device: torch.device) -> None:
    """Keep ``plan`` for later calls with ``key`` where its choices hold for them: measured,
    or static where nothing is ever measured (off CUDA, SOBOLEV_AUTOTUNE=0); not the static
    ones made while torch.compile traces or a CUDA graph is captured."""
    if device.type != "cuda" or not tuning.enabled() or tuning.can_measure(device):
        _plans[key] = plan


def clear_plans() -> None:
    """Forget every plan (``tuning.clear`` calls this: its choices are in them)."""
    _plans.clear()


tuning.on_clear(clear_plans)
