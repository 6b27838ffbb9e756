"""The resident forward (SOBOLEV_TRITON_FORWARD=resident, triton/forward_resident.py): the
same losses, outputs and gradients as the reference, with and without a backward to follow,
in one pass or several direction groups; and the chunked kernel where a shape does not fit."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    HAS_CUDA,
    assert_backends_agree,
    assert_forward_only_agrees,
    count_launches,
    inputs_of_order,
    sample_inputs,
    tolerance,
    upcast_model,
)

import sobolev_kernels as sk

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _resident_launches(monkeypatch):
    """Counts launches of the resident kernel (and forces it)."""
    from sobolev_kernels.triton import launch

    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", "resident")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    return count_launches(monkeypatch, launch, "_sobolev_fwd_resident_kernel")


@pytest.mark.parametrize(
    "order, directions, bias, activation, dtype, group",
    [(1, "per_row", True, "tanh", torch.float32, None),
     (2, "shared", False, "softplus", torch.float32, None),
     (2, "per_row", True, "silu", torch.float32, 2),
     (1, "per_row", True, "leaky_relu", torch.float32, 1),
     (1, "per_row", True, "tanh", torch.bfloat16, None)],
)  # fmt: skip
def test_resident_forward_agrees_with_the_reference(monkeypatch, order, directions, bias,
                                                    activation, dtype, group):  # fmt: skip
    """Ragged last row tile (B = 37), odd widths (padding), K = 3 (KP = 4: a padded
    direction); ``group`` directions per pass where given (several passes)."""
    from sobolev_kernels.triton.layout import Layout

    calls = _resident_launches(monkeypatch)
    if group is not None:
        real = Layout.resident_configs

        def grouped(self, *args, **kwargs):
            return [c._replace(group=group) for c in real(self, *args, **kwargs)]

        monkeypatch.setattr(Layout, "resident_configs", grouped)
    shape = dict(batch=37, dim=3, width=24, out=2, k=3, layers=4, directions=directions,
                 bias=bias, activation=activation, dtype=dtype, device=DEVICE)  # fmt: skip
    model, x, y, kw = inputs_of_order(order, **shape)
    rtol = tolerance("triton", dtype, "cuda" if HAS_CUDA else "cpu")
    extra = {"kink_flips": 0.02} if dtype != torch.float32 and activation == "leaky_relu" else {}
    expected = upcast_model(model)
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=expected, **extra)
    saving = len(calls)
    assert saving >= 1
    assert_forward_only_agrees(model, x, y, kw, "triton", rtol, expected)
    assert len(calls) > saving  # the forward without a backward ran it too


def test_resident_forward_returns_the_outputs(monkeypatch):
    """f and u (mlp_jvp's outputs) as the chunked kernel computes them."""
    _resident_launches(monkeypatch)
    model, x, y, kw = sample_inputs(batch=21, dim=4, width=40, out=3, k=2, layers=3,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    v = kw["directions"]
    f, u = sk.mlp_jvp(model, x, v, backend="triton")
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", "chunked")
    f0, u0 = sk.mlp_jvp(model, x, v, backend="triton")
    torch.testing.assert_close(f, f0, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u, u0, rtol=1e-5, atol=1e-6)


def test_too_wide_a_model_runs_the_chunked_forward(monkeypatch):
    from sobolev_kernels.triton.layout import RESIDENT_MAX_WIDTH, Layout

    calls = _resident_launches(monkeypatch)
    width = RESIDENT_MAX_WIDTH + 1
    assert Layout((2, width, 1), 1).resident_fits() is not None
    assert Layout((2, width, 1), 1).resident_configs() == []
    model, x, y, kw = sample_inputs(batch=5, dim=2, width=width, out=1, k=1, layers=2,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", torch.float32, DEVICE),
                          expected_model=upcast_model(model))  # fmt: skip
    assert calls == []


def test_an_unknown_forward_kernel_is_refused(monkeypatch):
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", "fastest")
    model, x, y, kw = sample_inputs(dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_FORWARD"):
        sk.sobolev_loss(model, x, y, backend="triton", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resident_forward_on_gpu(monkeypatch, order, dtype):
    """Width 128 at B = 4099 (a ragged last tile), each tuner candidate measured."""
    _resident_launches(monkeypatch)
    shape = dict(batch=4099, dim=16, width=128, out=8, k=2, layers=4, dtype=dtype, device=DEVICE)
    model, x, y, kw = inputs_of_order(order, **shape)
    rtol = tolerance("triton", dtype, "cuda")
    expected = upcast_model(model)
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=expected)
    assert_forward_only_agrees(model, x, y, kw, "triton", rtol, expected)


def test_the_forwards_tuner_candidates(monkeypatch):
    """The forward's candidates: the chunked kernel's with the 64-row column-block tiles, and
    in bf16 at order 1 (what the H200 measured) the resident kernel's too;
    SOBOLEV_TRITON_FORWARD narrows them to one kernel."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import launch
    from sobolev_kernels.triton.layout import Layout

    offered = []
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "fastest", lambda key, configs, run, skip: offered.append(
        configs) or configs[0])  # fmt: skip

    def candidates(dtype, order=1, forced="auto"):
        monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", forced)
        offered.clear()
        layout, x = Layout.of((16, 128, 128, 8), 2, order), torch.zeros(64, 16, dtype=dtype)
        launch._launch_config("fwd", layout, x, {}, False, lambda c: None)
        return offered[0] if offered else None

    chunked32 = Layout.of((16, 128, 128, 8), 2, 1).launch_configs(4, None, "ieee", "tf32x3", True)
    wide = [c for c in chunked32 if c.cols]  # the column-block tiles (64 and 128 rows) among
    assert len(wide) == 2  # them, and their activated twins
    assert candidates(torch.float32) == [*chunked32, *(c._replace(activated=True) for c in wide)]
    bf16 = candidates(torch.bfloat16)
    resident = [c for c in bf16 if c.resident]
    assert resident == Layout.of((16, 128, 128, 8), 2, 1).resident_configs(2, None, "ieee")
    assert resident and not bf16[0].resident  # the static launch stays first
    assert not any(c.resident for c in candidates(torch.bfloat16, order=2))
    assert not any(c.resident for c in candidates(torch.bfloat16, forced="chunked"))
    assert all(c.resident for c in candidates(torch.float32, forced="resident"))
    # only the forward: the backward's candidates are the chunked kernel's
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", "auto")
    offered.clear()
    layout, x = Layout.of((16, 128, 128, 8), 2, 1), torch.zeros(64, 16, dtype=torch.bfloat16)
    launch._launch_config("bwd", layout, x, {}, False, lambda c: None)
    assert not any(c.resident or c.cols for c in offered[0])
