"""The ``SOBOLEV_*`` environment settings' parsing, shared by the backends: a value among a
few (``env_choice``) or a 0/1 flag (``env_flag``); anything else raises, naming the variable
and what it takes. The settings themselves are documented where they are read."""

from __future__ import annotations

import os

__all__ = ["env_choice", "env_flag"]


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
