"""The chunked forward that stores its activated layers (SOBOLEV_TRITON_FORWARD_ACTIVATED,
``choices._forward_activated``): bit for bit the losses, outputs and gradients of the form
that reloads pre-activations and activates them per pass (the same fp32 activations, the
same dots), inside its tensors; and what the tuner is offered under each setting."""

from __future__ import annotations

import contextlib

import pytest
import torch
from bounds_checked import bounds_checked
from conftest import HAS_CUDA, loss_and_grads, sample_inputs

import sobolev_kernels as sk

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)

# widths padded from 40 to 64: the column-block tiles take 16 or 32 columns a pass, so the
# second hidden layer reloads the first's outputs several times; B = 70: a ragged last tile
SHAPE = dict(batch=70, dim=5, width=40, out=3, layers=3, target="jvp")


def _column_block_tiles(monkeypatch):
    """Every kernel launches with the 64-row column-block config (the tuner's candidate)."""
    from sobolev_kernels.triton.layout import Layout

    def config(self, element_size=4, shared_limit=None, precision="ieee"):
        return self.tensor_core_config("tf32x3" if element_size == 4 else precision)

    monkeypatch.setattr(Layout, "static_config", config)


def _forward_plans():
    from sobolev_kernels.triton import plans

    return [plan for key, plan in plans._plans.items() if key[0] == "fwd"]


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's check; the GPU runs the tuner's test")
@pytest.mark.parametrize(
    "dtype, order, k, save",
    [(torch.float32, 2, 4, "1"),  # 16 columns a pass, four direction groups, saved stacks
     (torch.bfloat16, 1, 2, "0")],  # no backward kept: the activated scratch alone
)  # fmt: skip
def test_activated_forward_matches_the_reloading_one(monkeypatch, dtype, order, k, save):
    from sobolev_kernels.triton import plans

    _column_block_tiles(monkeypatch)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "splitk")  # the Triton kernel, not GEMMs
    model, x, y, kw = sample_inputs(dtype=dtype, k=k, **SHAPE)
    if order == 2:
        kw.update(order=2, target_hvp2=torch.randn(SHAPE["batch"], k, SHAPE["out"]).to(dtype))
    results = {}
    for activated in ("0", "1"):
        monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", activated)
        plans.clear_plans()
        checked = bounds_checked() if activated == "1" else contextlib.nullcontext()
        with checked:
            results[activated] = loss_and_grads(model, x, y, kw, "triton")
        # (the plans' activated scratch: the form that ran; without saved stacks, the
        # backward's forward per row chunk is a plan too)
        forwards = _forward_plans()
        assert forwards and all(bool(plan.activated) == (activated == "1") for plan in forwards)
    (loss, grads), (act_loss, act_grads) = results["0"], results["1"]
    assert torch.equal(loss, act_loss), (loss, act_loss)
    for name, a, b in zip(("x", *dict(model.named_parameters())), grads, act_grads):
        assert torch.equal(a, b), name


def test_the_forwards_activated_candidates(monkeypatch):
    """Unset: the column-block candidate's activated twin is added; 1: every candidate that
    activates a layer more than once is activated, the static one too where that is so; 0:
    none. Only the chunked forward: the backward and the persistent forward never."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import launch
    from sobolev_kernels.triton.layout import Layout

    offered = {}
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "fastest", lambda key, configs, run, skip: offered.setdefault(
        key[1], configs)[0])  # fmt: skip
    layout, x = Layout.of((16, 128, 128, 128, 8), 2, 1), torch.zeros(64, 16)
    plain = layout.launch_configs(4, None, "ieee", "tf32x3", True)

    def candidates(setting, kernel="fwd"):
        if setting is None:
            monkeypatch.delenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", raising=False)
        else:
            monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", setting)
        offered.clear()
        launch._launch_config(kernel, layout, x, {}, False, lambda c: None)
        return offered[kernel]

    wide = [c for c in plain if c.cols]  # (64 rows on 4 warps, 128 on 8)
    assert [c.cols for c in wide] == [32, 32] and all(map(layout.activates_per_pass, wide))
    assert candidates(None) == [*plain, *(c._replace(activated=True) for c in wide)]
    assert candidates("0") == plain
    forced = candidates("1")
    assert forced == [c._replace(activated=layout.activates_per_pass(c)) for c in plain]
    assert forced[-1].activated and not forced[0].activated  # static: all columns, K at once
    for kernel in ("bwd", "fwd_persistent"):
        assert not any(c.activated for c in candidates("1", kernel))
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", "yes")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_FORWARD_ACTIVATED: expected 0 or 1"):
        launch._launch_config("fwd", layout, x, {}, False, lambda c: None)


def test_which_configs_activate_a_layer_more_than_once():
    from sobolev_kernels.triton.layout import LaunchConfig, Layout

    deep, shallow = Layout.of((16, 128, 128, 128, 8), 2, 1), Layout.of((16, 128, 8), 2, 1)
    whole = LaunchConfig(16, 8, 32, 2, "ieee")  # every column and both directions a pass
    assert not deep.activates_per_pass(whole)
    assert deep.activates_per_pass(whole._replace(cols=32))  # four column blocks
    assert deep.activates_per_pass(whole._replace(group=1))  # two direction groups
    assert not deep.activates_per_pass(whole._replace(cols=128))
    assert not deep.activates_per_pass(whole._replace(cols=32, group=1, resident=True))
    # one hidden layer: the output layer (one column block) reloads it, per direction group
    assert not shallow.activates_per_pass(whole._replace(cols=32))
    assert shallow.activates_per_pass(whole._replace(group=1))
    assert not Layout.of((16, 8), 2, 1).activates_per_pass(whole._replace(group=1))
