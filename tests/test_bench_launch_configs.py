"""bench.launch_configs on the interpreter: its cases build, and a chunked and a resident
forward case and a backward case run with the config forced and report their agreement with
fp64."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import count_launches, record_forward_saves

import sobolev_kernels as sk

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends() or torch.cuda.is_available(),
    reason="the interpreter's check (the GPU script runs the real thing)",
)


def test_cases_cover_both_kernels_and_the_tuner_candidates():
    from bench.launch_configs import cases
    from sobolev_kernels.triton.layout import Layout

    todo = cases(["M"], ["fp32"])
    kernels = {kernel for _, _, kernel, _ in todo}
    assert kernels == {"chunked", "resident", "bwd", "bwd_resident"}
    tuner = Layout((16, 128, 128, 128, 8), 2).launch_configs(4, 227 * 1024, "ieee", "tf32x3")
    chunked = [c for _, _, kernel, c in todo if kernel == "chunked"]
    assert chunked[: len(tuner)] == tuner
    assert len(set(todo)) == len(todo)


@pytest.mark.parametrize("kernel", ["chunked", "resident"])
def test_a_case_runs_with_its_config(monkeypatch, kernel):
    from bench import launch_configs
    from sobolev_kernels.triton import launch

    monkeypatch.setattr(launch, "_launch_config", launch._launch_config)  # restored after
    case = next(c for c in launch_configs.cases(["S"], ["fp32"]) if c[2] == kernel)
    seen = record_forward_saves(monkeypatch, launch)
    kernels = count_launches(monkeypatch, launch, "_sobolev_fwd_resident_kernel")
    row = launch_configs.run_case(case, batch=40, device="cpu")
    error = float(re.search(r"rel\. error (\S+)", row).group(1))
    assert error < 1e-4, row
    assert seen and all(seen)  # saving, as a training step's forward
    assert bool(kernels) == (kernel == "resident")  # the config chose the kernel


@pytest.mark.parametrize("kernel", ["bwd", "bwd_resident"])
def test_a_backward_case_varies_only_the_backward_kernel(monkeypatch, kernel):
    from bench import launch_configs
    from sobolev_kernels.triton import launch

    monkeypatch.setattr(launch, "_launch_config", launch._launch_config)  # restored after
    for name, value in launch_configs.BACKWARD_ENV.items():
        monkeypatch.setenv(name, value)  # restored after (the case sets them)
    todo = launch_configs.cases(["S"], ["fp32"], ["bwd"])
    case = next(c for c in todo if c[2] == kernel and (c[3].cols or c[3].resident))
    resident_launches = count_launches(monkeypatch, launch, "_sobolev_bwd_resident_kernel")
    asked = []
    real = launch_configs._launch_config(launch)

    def spy(kernel, *args, **kwargs):
        asked.append(kernel)
        return real(kernel, *args, **kwargs)

    monkeypatch.setitem(launch_configs._REAL, "launch_config", spy)
    row = launch_configs.run_case(case, batch=40, device="cpu")
    error = float(re.search(r"rel\. error (\S+)", row).group(1))
    assert error < 1e-4, row
    assert set(asked) == {"fwd"}  # the backward's config is the case's, the forward's the tuner's
    assert bool(resident_launches) == (kernel == "bwd_resident")
