"""The ``SOBOLEV_*`` environment settings' parsing, shared by the backends: a value among a
few (``env_choice``), a 0/1 flag (``env_flag``) or a count (``env_positive_int``); anything
else raises, naming the variable and what it takes. The settings themselves are documented
where they are read, but the one read in several places (``save_activations``)."""

from __future__ import annotations

import os

__all__ = ["env_choice", "env_flag", "env_positive_int", "save_activations"]


def env_choice(variable: str, values: tuple[str, ...], default: str) -> str:
    """A setting among ``values`` (``default`` where unset); anything else raises, naming the
    variable and what it takes."""
    raw = os.environ.get(variable, default)
    if raw not in values:
        expected = f"{', '.join(values[:-1])} or {values[-1]}" if len(values) > 1 else values[0]
        raise ValueError(f"{variable}: expected {expected}, got {raw!r}")
    return raw


def env_flag(variable: str, default: str) -> bool:
    """A 0/1 setting (``default`` where unset); anything else raises, naming the variable."""
    return env_choice(variable, ("0", "1"), default) == "1"


def env_positive_int(variable: str, default: int) -> int:
    """A positive integer setting (``default`` where unset); anything else raises, naming the
    variable."""
    raw = os.environ.get(variable, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{variable}: expected a positive integer, got {raw!r}")
    return value


def save_activations() -> bool:
    """SOBOLEV_SAVE_ACTIVATIONS: 1 (default) the fused forward keeps the hidden
    pre-activations for the backward; 0 keeps none, and the backward recomputes them (the
    Triton backend a chunk of SOBOLEV_TRITON_RECOMPUTE_ROWS samples at a time, or per row tile
    in one persistent launch: SOBOLEV_TRITON_BACKWARD; the C++ extension a chunk of
    SOBOLEV_CUDA_RECOMPUTE_ROWS, csrc/row_chunks.h; less memory, more time). Read by the
    fused op's arguments (``fused.forward_arguments``) and the memory check
    (``validation.check_memory``)."""
    return env_flag("SOBOLEV_SAVE_ACTIVATIONS", "1")
