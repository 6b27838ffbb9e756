"""The resident backward (SOBOLEV_TRITON_BACKWARD_KERNEL=resident,
triton/backward_resident.py): the same loss gradients as the reference, with the weight
gradients by GEMM (the stored inputs) and by split-K recompute (no stored inputs), with and
without dL/dx; and the chunked kernel where a shape does not fit it."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    HAS_CUDA,
    assert_backends_agree,
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


def _resident_backward(monkeypatch, weight_grad="gemm"):
    """Forces the resident backward (the separate backward, ``weight_grad``'s dW); returns
    the list its launches are counted in."""
    from sobolev_kernels.triton import launch

    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD_KERNEL", "resident")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", weight_grad)
    return count_launches(monkeypatch, launch, "_sobolev_bwd_resident_kernel")


@pytest.mark.parametrize(
    "order, directions, bias, activation, dtype, weight_grad, x_grad",
    [(1, "per_row", True, "tanh", torch.float32, "gemm", True),
     (2, "shared", False, "softplus", torch.float32, "gemm", True),
     (2, "per_row", True, "silu", torch.float32, "recompute", False),
     (1, "per_row", True, "leaky_relu", torch.float32, "splitk", True),
     (1, "per_row", True, "tanh", torch.bfloat16, "gemm", True),
     (2, "per_row", True, "gelu_tanh", torch.float32, "gemm", False)],
)  # fmt: skip
def test_resident_backward_agrees_with_the_reference(monkeypatch, order, directions, bias,
                                                     activation, dtype, weight_grad,
                                                     x_grad):  # fmt: skip
    """Ragged last row tile (B = 37), odd widths (padding), K = 3 (KP = 4: a padded
    direction), four layers."""
    calls = _resident_backward(monkeypatch, weight_grad)
    shape = dict(batch=37, dim=3, width=24, out=2, k=3, layers=4, directions=directions,
                 bias=bias, activation=activation, dtype=dtype, device=DEVICE,
                 x_grad=x_grad)  # fmt: skip
    model, x, y, kw = inputs_of_order(order, **shape)
    rtol = tolerance("triton", dtype, "cuda" if HAS_CUDA else "cpu")
    extra = {"kink_flips": 0.02} if dtype != torch.float32 and activation == "leaky_relu" else {}
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model),
                          **extra)  # fmt: skip
    assert calls  # the resident kernel ran


def test_one_hidden_layer_and_no_hidden_layer(monkeypatch):
    calls = _resident_backward(monkeypatch)
    for layers in (2, 1):
        model, x, y, kw = sample_inputs(batch=21, dim=4, width=16, out=3, k=2, layers=layers,
                                        dtype=torch.float32, device=DEVICE)  # fmt: skip
        assert_backends_agree(model, x, y, kw, "triton",
                              tolerance("triton", torch.float32, DEVICE),
                              expected_model=upcast_model(model))  # fmt: skip
    assert len(calls) == 2


def test_too_wide_a_model_runs_the_chunked_backward(monkeypatch):
    from sobolev_kernels.triton.layout import RESIDENT_MAX_WIDTH

    calls = _resident_backward(monkeypatch)
    model, x, y, kw = sample_inputs(batch=5, dim=2, width=RESIDENT_MAX_WIDTH + 1, out=1, k=1,
                                    layers=2, dtype=torch.float32, device=DEVICE)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", torch.float32, DEVICE),
                          expected_model=upcast_model(model))  # fmt: skip
    assert calls == []


def test_an_unknown_backward_kernel_is_refused(monkeypatch):
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD_KERNEL", "fastest")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    model, x, y, kw = sample_inputs(dtype=torch.float32, device=DEVICE)
    loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_BACKWARD_KERNEL"):
        loss.backward()


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resident_backward_on_gpu(monkeypatch, order, dtype):
    """Width 128 at B = 4099 (a ragged last tile), each of its configs measured (at order 2
    none fits at width 128: the chunked kernel runs, its dW by GEMM, which in bf16 was off
    the reference on the H200 until the GEMMs added their partials in fp32)."""
    calls = _resident_backward(monkeypatch)
    shape = dict(batch=4099, dim=16, width=128, out=8, k=2, layers=4, dtype=dtype, device=DEVICE)
    model, x, y, kw = inputs_of_order(order, **shape)
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", dtype, "cuda"),
                          expected_model=upcast_model(model))  # fmt: skip
    assert bool(calls) == (order == 1)


def test_its_configs_carry_every_direction():
    """The backward's resident configs are the forward's with all K directions in one pass:
    all of them at K = 2, none at K = 8 (the forward's split their directions there)."""
    from sobolev_kernels.triton.layout import Layout

    for k in (2, 8):
        layout = Layout((16, 128, 128, 128, 8), k, 1)
        forward = layout.resident_configs(2, None, "ieee")
        backward = layout.resident_configs(2, None, "ieee", "bwd")
        assert forward and backward == [c for c in forward if c.group == layout.kp]
        assert bool(backward) == (k == 2)
