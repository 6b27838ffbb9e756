"""``sobolev_kernels/triton/direct_launch.py``: later launches of a compiled kernel without
Triton's per-launch Python must hand the launcher what Triton's own path does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sobolev_kernels.triton import direct_launch

HERE = Path(__file__).resolve().parent
OTHER_TRITON = os.environ.get("SOBOLEV_OTHER_TRITON", "")


@pytest.mark.parametrize("which", ["this_triton", "other_triton"])
def test_direct_launches_match_tritons_own_launch_path(which):
    """Per scenario (order 1 and 2, persistent backward, recompute in row chunks, bf16
    without bias), a training step's launcher calls with and without direct launches are
    the same, call by call, and the direct step goes through Triton's path not once: on
    Triton's GPU code path with a faked driver (``tests/direct_launch_check.py``), with this
    triton and with the GPU machines' (3.6), whose ``JITFunction.run`` it mirrors too."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("SOBOLEV_TRITON_DIRECT_LAUNCH", None)
    if which == "other_triton":
        if not OTHER_TRITON or not Path(OTHER_TRITON, "triton").is_dir():
            pytest.skip("no second triton installed (SOBOLEV_OTHER_TRITON)")
        env["PYTHONPATH"] = os.pathsep.join([OTHER_TRITON, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(HERE / "direct_launch_check.py")],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("identical") == 5, out.stdout


def test_not_used_by_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("SOBOLEV_TRITON_DIRECT_LAUNCH", raising=False)
    assert not direct_launch.enabled()


def test_a_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("SOBOLEV_TRITON_DIRECT_LAUNCH", "yes")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_DIRECT_LAUNCH"):
        direct_launch.enabled()


def test_fingerprint_tells_apart_what_triton_specialises_on():
    """Two calls share a compiled kernel only if their fingerprints are equal: a tensor's
    dtype and 16-byte alignment, an integer's value (1, multiples of 16, 64 bits) and each
    argument's type must all change it; a float's value (not specialised) must not."""
    buffer = torch.zeros(64)
    aligned, misaligned = buffer[:8], buffer[1:9]
    assert aligned.data_ptr() % 16 == 0 and misaligned.data_ptr() % 16 != 0
    fingerprint = direct_launch._fingerprint
    base = fingerprint((aligned, (aligned,), 32, 0.5))
    assert base == fingerprint((buffer[4:12], (buffer[8:16],), 32, 0.25))
    for other in (
        (misaligned, (aligned,), 32, 0.5),
        (aligned, (misaligned,), 32, 0.5),
        (aligned.double(), (aligned,), 32, 0.5),
        (aligned, (aligned,), 33, 0.5),
        (aligned, (aligned,), 1, 0.5),
        (aligned, (aligned,), 2**40, 0.5),
        (aligned, (aligned,), 32.0, 0.5),
        (aligned, (aligned,), 32, 1),
    ):
        assert fingerprint(other) != base, other
    assert fingerprint((True,)) != fingerprint((1,))


class _Param:
    def __init__(self, name: str, is_constexpr: bool):
        self.name, self.is_constexpr = name, is_constexpr


class _Compiled:
    """A compiled kernel's stand-in whose launcher counts its calls, or refuses them."""

    function = packed_metadata = None

    def __init__(self, refuse: bool):
        self.refuse, self.launches = refuse, []

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        if self.refuse:
            raise TypeError("function takes exactly 12 arguments (11 given)")
        self.launches.append(args)


class _Kernel:
    """A JITFunction's stand-in: ``kernel[grid](...)`` counts and returns its compiled one."""

    pre_run_hooks: list = []
    params = [_Param("x", False), _Param("n", False), _Param("BLOCK", True)]

    def __init__(self, compiled: _Compiled):
        self.compiled, self.triton_launches = compiled, 0

    def __getitem__(self, grid):
        def run(*args, **constexprs):
            self.triton_launches += 1
            return self.compiled

        return run


@pytest.fixture
def as_if_compiled(monkeypatch):
    """direct_launch as on a GPU (no interpreter, a driver on device 0 and stream 7)."""
    from types import SimpleNamespace

    active = SimpleNamespace(get_current_device=lambda: 0, get_current_stream=lambda d: 7)
    monkeypatch.setattr(direct_launch, "interpreting", lambda: False)
    monkeypatch.setattr(direct_launch, "driver", SimpleNamespace(active=active))
    monkeypatch.delenv("SOBOLEV_TRITON_DIRECT_LAUNCH", raising=False)
    direct_launch.clear()
    yield
    direct_launch.clear()


def test_the_second_launch_is_direct(as_if_compiled):
    kernel = _Kernel(_Compiled(refuse=False))
    x = torch.zeros(4)
    for n in (4, 4, 4, 5):
        direct_launch.launch(kernel, (2,), (x, n), {"BLOCK": 16, "num_warps": 4})
    assert kernel.triton_launches == 2  # the first, and the first with n = 5
    assert len(kernel.compiled.launches) == 2
    launch = kernel.compiled.launches[-1]
    assert launch[:4] == (2, 1, 1, 7)  # the grid made three-dimensional, the stream
    assert launch[-3:] == (x, 4, 16)  # the arguments, then the constexprs in kernel order


def test_a_wrapped_kernel_is_launched_through_its_wrapper(monkeypatch, as_if_compiled):
    """A kernel wrapped by conftest.count_launches' spy sees every launch: a direct launch
    would go around the wrapper (on the H200 the spy had no pre_run_hooks to read)."""
    from types import SimpleNamespace

    from conftest import count_launches

    owner = SimpleNamespace(kernel=_Kernel(_Compiled(refuse=False)))
    compiled = owner.kernel.compiled
    grids = count_launches(monkeypatch, owner, "kernel")
    for _ in range(3):
        direct_launch.launch(owner.kernel, (2,), (torch.zeros(4), 4), {"BLOCK": 16})
    assert grids == [(2,)] * 3
    assert compiled.launches == []


def test_a_launcher_that_refuses_turns_direct_launches_off(as_if_compiled):
    kernel = _Kernel(_Compiled(refuse=True))
    args = (torch.zeros(4), 4)
    direct_launch.launch(kernel, (1,), args, {"BLOCK": 16})
    with pytest.warns(RuntimeWarning, match="direct Triton launch failed"):
        direct_launch.launch(kernel, (1,), args, {"BLOCK": 16})
    assert kernel.triton_launches == 2  # the failed launch went through Triton
    assert not direct_launch.enabled()
    direct_launch.launch(kernel, (1,), args, {"BLOCK": 16})
    assert kernel.triton_launches == 3
    direct_launch.clear()
    assert direct_launch.enabled()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backward", ["separate", "persistent"])
def test_direct_launches_compute_bit_for_bit_what_tritons_path_does(monkeypatch, dtype, backward):
    """On a GPU: the same kernels with the same launch configs (SOBOLEV_AUTOTUNE=0), so the
    loss and every gradient must be the same bits with direct launches as without, over
    several steps (the later ones are direct), at a batch that leaves ragged row tiles."""
    import sobolev_kernels as sk

    monkeypatch.setenv("SOBOLEV_AUTOTUNE", "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", backward)
    torch.manual_seed(0)
    b, d, m, k = 1000, 5, 3, 2
    model = sk.SobolevMLP(d, 64, m, 3, device="cuda", dtype=dtype)
    x = torch.randn(b, d, device="cuda", dtype=dtype)
    y = torch.randn(b, m, device="cuda", dtype=dtype)
    v = sk.sample_directions(b, k, d, device="cuda", dtype=dtype)
    g = torch.randn(b, k, m, device="cuda", dtype=dtype)

    def steps(direct: str) -> list[torch.Tensor]:
        monkeypatch.setenv("SOBOLEV_TRITON_DIRECT_LAUNCH", direct)
        out = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            loss = sk.sobolev_loss(model, x, y, target_jvp=g, directions=v, backend="triton")
            loss.backward()
            out += [loss.detach().clone(), *(p.grad.clone() for p in model.parameters())]
        return out

    direct_launch.clear()
    expected, got = steps("0"), steps("1")
    for want, have in zip(expected, got):
        assert torch.equal(want, have)
