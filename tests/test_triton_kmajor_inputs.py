"""The backward's layer inputs stacks stored transposed (SOBOLEV_TRITON_INPUTS_LAYOUT=kmajor,
``choices._inputs_kmajor``): the stacks hold what the row-major ones hold, each layer's block
transposed, and the weight gradients read them so, by GEMM and by the split-K kernel, in the
chunked and the resident backward."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    HAS_CUDA,
    assert_backends_agree,
    count_launches,
    inputs_of_order,
    tolerance,
    upcast_model,
)

import sobolev_kernels as sk

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _kmajor(monkeypatch, method: str) -> None:
    monkeypatch.setenv("SOBOLEV_TRITON_INPUTS_LAYOUT", "kmajor")
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")  # (the persistent one: its own)


@pytest.mark.parametrize(
    "method, order, dtype, width, directions",
    [("splitk", 1, torch.float32, 80, "per_row"),
     ("splitk", 2, torch.float32, 24, "shared"),
     ("gemm", 2, torch.float32, 24, "per_row"),
     ("gemm", 1, torch.bfloat16, 17, "shared"),
     ("splitk_wide", 2, torch.float32, 80, "per_row")],
)  # fmt: skip
def test_weight_gradients_from_transposed_inputs_agree(monkeypatch, method, order, dtype,
                                                       width, directions):  # fmt: skip
    """Ragged batch (B = 37), K = 3, three layers; width 80: two 64-column tiles of dW each
    way in the split-K kernel (one 128-column tile in splitk_wide's); order 2: the tt rows
    (layer 1's inputs stop at (1 + K) B)."""
    _kmajor(monkeypatch, method)
    model, x, y, kw = inputs_of_order(order, batch=37, dim=3, width=width, out=2, k=3,
                                      layers=3, directions=directions, dtype=dtype,
                                      device=DEVICE, seed=width)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", dtype, DEVICE),
                          expected_model=upcast_model(model))  # fmt: skip


@pytest.mark.parametrize("order", [1, 2])
def test_the_inputs_stacks_are_the_row_major_ones_transposed(monkeypatch, order):
    """Each layer's block of the kmajor stacks is (n, stack): the row-major block's
    transpose, element for element, over the rows the weight gradients read."""
    from sobolev_kernels.triton import launch

    stacks = {}
    gemm = launch._grads_by_gemm

    def recording(layout, batch, adj, inputs, db_partial, weights, biases, kmajor, cutlass):
        stacks[kmajor] = (layout, batch, inputs.clone())
        return gemm(layout, batch, adj, inputs, db_partial, weights, biases, kmajor, cutlass)

    monkeypatch.setattr(launch, "_grads_by_gemm", recording)
    model, x, y, kw = inputs_of_order(order, batch=21, dim=3, width=24, out=2, k=3, layers=3,
                                      dtype=torch.float32, device=DEVICE)  # fmt: skip
    grads = {}
    for kmajor in (False, True):
        monkeypatch.setenv("SOBOLEV_TRITON_INPUTS_LAYOUT", "kmajor" if kmajor else "rows")
        monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "gemm")
        monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
        loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        grads[kmajor] = torch.autograd.grad(loss, list(model.parameters()))
    (layout, batch, rows), (_, _, kmajor) = stacks[False], stacks[True]
    stack = layout.blocks * batch
    for l in range(layout.num_layers):
        n, used = layout.widths[l], stack if l > 0 else (1 + layout.k) * batch
        block = slice(stack * layout.in_cum[l], stack * (layout.in_cum[l] + n))
        by_rows = rows[block].view(stack, n)[:used]
        transposed = kmajor[block].view(n, stack)[:, :used]
        assert torch.equal(transposed, by_rows.t()), l
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b)


def test_the_resident_backward_stores_them_transposed_too(monkeypatch):
    from sobolev_kernels.triton import launch

    _kmajor(monkeypatch, "splitk")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD_KERNEL", "resident")
    calls = count_launches(monkeypatch, launch, "_sobolev_bwd_resident_kernel")
    model, x, y, kw = inputs_of_order(2, batch=37, dim=3, width=24, out=2, k=3, layers=3,
                                      dtype=torch.float32, device=DEVICE)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", torch.float32, DEVICE),
                          expected_model=upcast_model(model))  # fmt: skip
    assert calls, "the resident backward ran"


def test_the_unpipelined_split_k_launch_asks_for_one_stage(monkeypatch):
    """splitk_unpipelined: the split-K kernel launched with num_stages=1 (its row loop not
    software-pipelined; the interpreter ignores it), over transposed inputs here, and the
    gradients the reference's."""
    from sobolev_kernels.triton import direct_launch, parameter_grads

    launched = []
    original = direct_launch.launcher

    def recording(kernel, constexprs):
        if kernel is parameter_grads._weight_grad_partials_kernel:
            launched.append(constexprs)
        return original(kernel, constexprs)

    monkeypatch.setattr(parameter_grads.direct_launch, "launcher", recording)
    _kmajor(monkeypatch, "splitk_unpipelined")
    model, x, y, kw = inputs_of_order(1, batch=37, dim=3, width=24, out=2, k=3, layers=3,
                                      dtype=torch.float32, device=DEVICE)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", tolerance("triton", torch.float32, DEVICE),
                          expected_model=upcast_model(model))  # fmt: skip
    assert launched and all(c["num_stages"] == 1 and c["KMAJOR"] for c in launched), launched


def test_an_unknown_inputs_layout_is_refused(monkeypatch):
    model, x, y, kw = inputs_of_order(1, batch=5, dim=3, width=8, out=2, k=2, layers=2,
                                      dtype=torch.float32, device=DEVICE)  # fmt: skip
    monkeypatch.setenv("SOBOLEV_TRITON_INPUTS_LAYOUT", "columns")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_INPUTS_LAYOUT: expected rows or kmajor"):
        loss.backward()


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["splitk", "gemm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transposed_inputs_agree_on_the_gpu(monkeypatch, method, dtype):
    """At config M's widths (B = 4099: a ragged last tile), fp32 at #18's 1e-4."""
    _kmajor(monkeypatch, method)
    model, x, y, kw = inputs_of_order(1, batch=4099, dim=16, width=128, out=8, k=2,
                                      dtype=dtype, device=DEVICE)  # fmt: skip
    rtol = 1e-4 if dtype == torch.float32 else tolerance("triton", dtype, "cuda")
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model))
