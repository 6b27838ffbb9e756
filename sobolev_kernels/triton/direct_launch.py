"""Launch a compiled Triton kernel again without Triton's per-launch Python.

``kernel[grid](*args, **constexprs)`` binds and specialises every argument, hashes a cache
key and reads the driver before it reaches the C launcher: 13-27 us a launch with our
kernels' 7 to 51 arguments (triton 3.9, ``investigations/triton_host_time.py``), and a step
makes five. A ``Launcher`` (one kernel with fixed constexprs: ``launcher``, or ``launch``
for one call) does that once per device and specialisation, through ``kernel[grid]``
itself, keeps the ``CompiledKernel`` it returns, and afterwards calls its launcher as
``JITFunction.run`` does: same grid, stream, function, metadata, hooks and arguments
(``tests/test_direct_launch.py`` compares them call by call).

Safe reuse rests on one fact of Triton 3.6 to 3.9: a compiled kernel depends on the
runtime arguments only through their types, tensor dtypes, whether tensor pointers are
16-byte aligned, and integer values (1, multiples of 16, 32 or 64 bits). The fingerprint
here keeps each integer's value, each tensor's dtype and alignment and every other
argument's type: calls with equal fingerprints get the same compiled kernel from Triton too.

Not used under the interpreter (``TRITON_INTERPRET=1`` has no compiled kernel), where a
kernel has pre-run hooks, or with ``SOBOLEV_TRITON_DIRECT_LAUNCH=0``: then every launch is
``kernel[grid](...)``. A launcher that raises on a direct launch's arguments turns direct
launches off for the process, with a warning, and the launch goes through Triton. Triton
knobs changed after a kernel's first launch (``TRITON_DEBUG``, instrumentation) are not seen
by its later direct launches; ``clear()`` forgets every compiled kernel kept here.
"""

from __future__ import annotations

import warnings

from torch import Tensor
from torch.nn import Parameter
from triton import knobs
from triton.runtime import driver

from ..settings import env_flag
from . import interpreting

_failed: list[str] = []  # why direct launches stopped in this process, if they did


def enabled() -> bool:
    """SOBOLEV_TRITON_DIRECT_LAUNCH: 1 (the default) or 0 (every launch through Triton)."""
    return env_flag("SOBOLEV_TRITON_DIRECT_LAUNCH", "1") and not interpreting() and not _failed


class Launcher:
    """One kernel with fixed constexprs (and launch options), launched on runtime arguments:
    ``launcher(grid, args)`` is ``kernel[grid](*args, **constexprs)``, direct after the
    first launch of each device and fingerprint. ``direct`` is whether it may launch direct
    (``enabled()`` when it was made: a caller that keeps it keeps that choice)."""

    __slots__ = ("kernel", "constexprs", "direct", "_compiled")

    def __init__(self, kernel, constexprs: dict, direct: bool):
        self.kernel, self.constexprs = kernel, constexprs
        # Only a JITFunction (or what quacks like one) launches direct; a wrapper of one (a
        # test's launch counter) has no pre_run_hooks and is launched as it asks, by [grid].
        hooks = getattr(kernel, "pre_run_hooks", None)
        self.direct = direct and hooks is not None and not hooks
        # (device, fingerprint) -> (compiled kernel, constexpr values in parameter order)
        self._compiled: dict[tuple, tuple] = {}

    def __call__(self, grid: tuple, args: tuple) -> None:
        if not self.direct or _failed:
            self.kernel[grid](*args, **self.constexprs)
            return
        device = driver.active.get_current_device()
        key = (device, _fingerprint(args))
        entry = self._compiled.get(key)
        if entry is None:
            self._first(key, grid, args)
            return
        compiled, values = entry
        stream = driver.active.get_current_stream(device)
        grid_0, grid_1, grid_2 = grid + (1,) * (3 - len(grid))
        all_args = args + values
        runtime = knobs.runtime
        try:
            compiled.run(
                grid_0, grid_1, grid_2, stream, compiled.function, compiled.packed_metadata,
                compiled.launch_metadata(grid, stream, *all_args), runtime.launch_enter_hook,
                runtime.launch_exit_hook, *all_args,
            )  # fmt: skip
        except Exception as error:  # noqa: BLE001 - a launcher that refuses its arguments
            # (a Triton whose launcher differs from the one mirrored here): Triton's path
            # from now on, which raises again if the arguments themselves are at fault
            _give_up(error)
            self.kernel[grid](*args, **self.constexprs)

    def _first(self, key: tuple, grid: tuple, args: tuple) -> None:
        # through Triton, which compiles (or finds) the kernel and returns it
        kernel, constexprs = self.kernel, self.constexprs
        compiled = kernel[grid](*args, **constexprs)
        rest = kernel.params[len(args) :]
        if any(not p.is_constexpr or p.name not in constexprs for p in rest):
            self.direct = False  # (a runtime argument by name, or a default left out)
            return
        values = tuple(constexprs[p.name] for p in rest)
        self._compiled[key] = (compiled, values)


_launchers: dict[tuple, Launcher] = {}  # (kernel, constexprs, direct) -> its launcher


def launcher(kernel, constexprs: dict) -> Launcher:
    """The launcher of ``kernel`` with these constexprs, one per process (so its compiled
    kernels are found again); a caller keeping it skips this lookup too."""
    direct = enabled()
    key = (kernel, tuple(constexprs.items()), direct)
    found = _launchers.get(key)
    if found is None:
        found = _launchers[key] = Launcher(kernel, constexprs, direct)
    return found


def launch(kernel, grid: tuple, args: tuple, constexprs: dict) -> None:
    """``kernel[grid](*args, **constexprs)``: ``args`` are the runtime arguments, in order,
    ``constexprs`` the compile-time ones and launch options (num_warps), by name."""
    launcher(kernel, constexprs)(grid, args)


def _give_up(error: Exception) -> None:
    _failed.append(f"{type(error).__name__}: {error}")
    warnings.warn(
        f"sobolev_kernels: a direct Triton launch failed ({_failed[0]}); every launch goes "
        "through Triton's own path from now on (SOBOLEV_TRITON_DIRECT_LAUNCH=0 does so "
        "from the start)",
        RuntimeWarning,
        stacklevel=3,
    )


def clear() -> None:
    """Forget every compiled kernel kept here, and a failure (the next launches go through
    Triton, then direct again)."""
    for kept in _launchers.values():
        kept._compiled.clear()
    _launchers.clear()
    _failed.clear()


def _fingerprint(args: tuple) -> tuple:
    """What Triton specialises the runtime arguments on, or more (see the module's
    docstring), flat: per tensor its dtype and alignment, per integer its type and value, per
    float its type, a tuple as a tuple. The common types are tested by identity first (the
    fingerprint is most of a direct launch's time)."""
    out = []
    add = out.append
    for a in args:
        kind = type(a)
        if kind is Tensor or kind is Parameter:
            add(a.dtype)
            add(a.data_ptr() % 16 == 0)
        elif kind is float:
            add(float)
        elif kind is int:
            add(int)
            add(a)
        elif kind is tuple:
            add(_fingerprint(a))
        else:  # (a subclass, a bool)
            add(_other(a))
    return tuple(out)


def _other(a) -> tuple:
    if isinstance(a, Tensor):
        return (type(a), a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, tuple):
        return (type(a), _fingerprint(a))
    if isinstance(a, int):  # (bool: its type tells it from 0 and 1)
        return (type(a), a)
    return (type(a),)
