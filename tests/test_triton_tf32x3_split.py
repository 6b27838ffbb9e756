"""3xTF32 dots formed by the Triton kernels (SOBOLEV_TRITON_TF32X3=split, ``tiles._dot_acc``)
instead of by Triton's "tf32x3": the split itself against round-to-nearest TF32, and the
fused step's kernels on the tensor-core launch configs against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HAS_CUDA, TOLERANCES, assert_backends_agree, sample_inputs, upcast_model

import sobolev_kernels as sk
from sobolev_kernels import tuning

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)
DEVICE = "cuda" if HAS_CUDA else "cpu"

import triton.language as tl  # noqa: E402

from sobolev_kernels.triton.tiles import _split_tf32  # noqa: E402


@triton.jit
def _split_kernel(x_ptr, hi_ptr, lo_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    hi, lo = _split_tf32(tl.load(x_ptr + i, mask=i < n))
    tl.store(hi_ptr + i, hi, mask=i < n)
    tl.store(lo_ptr + i, lo, mask=i < n)


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _split_kernel[(1,)](x, hi, lo, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    return hi, lo


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # (inf - inf)
def test_the_split_rounds_to_nearest_tf32_and_loses_nothing():
    gen = torch.Generator().manual_seed(0)
    finite = torch.randn(1000, generator=gen) * 10.0 ** torch.randint(-30, 30, (1000,),
                                                                       generator=gen)  # fmt: skip
    one_ulp = 2.0**-10  # TF32's at 1
    edges = torch.tensor([0.0, -0.0, 1.0, -1.0, 1 + one_ulp / 2, -(1 + one_ulp / 2),
                          1 + one_ulp / 2 - 2.0**-23, 1 + 3 * one_ulp / 2,
                          3.4028235e38])  # fmt: skip
    x = torch.cat([finite, edges]).float().to(DEVICE)
    hi, lo = (t.cpu().double().numpy() for t in _split(x))
    xs = x.cpu().double().numpy()
    assert np.array_equal(hi[:-1] + lo[:-1], xs[:-1])  # exactly, in fp64
    assert not (hi.astype(np.float32).view(np.uint32) & 0x1FFF).any()  # hi is TF32
    # round to nearest at 10 bits, ties away from zero (cvt.rna.tf32), below fp32's max
    finite_x = xs[:-1]
    scale = 2.0 ** (np.floor(np.log2(np.where(finite_x == 0, 1.0, np.abs(finite_x)))) - 10)
    rounded = np.sign(finite_x) * np.floor(np.abs(finite_x) / scale + 0.5) * scale
    assert np.array_equal(np.where(finite_x == 0, finite_x, rounded), hi[:-1])
    assert hi[-1] == -lo[-1] == np.inf  # fp32's max rounds up past TF32's, as cvt.rna does
    assert (hi[-9:-1] == [0.0, -0.0, 1.0, -1.0, 1 + one_ulp, -(1 + one_ulp), 1.0,
                           1 + 2 * one_ulp]).all()  # fmt: skip
    # a NaN or an inf leaves a NaN remainder: the products are NaN, not a finite number
    _, lo_special = _split(torch.tensor([float("nan"), float("inf"), -float("inf")],
                                        device=DEVICE))  # fmt: skip
    assert lo_special.isnan().all()


def _prefer_tensor_cores(key, candidates, run, skip=()):
    """tuning.fastest's stand-in: the 3xTF32 candidate (not an activated twin), the split-K
    weight gradients, the separate backward."""
    for c in candidates:
        if getattr(c, "precision", None) == "tf32x3" and not c.activated and not c.resident:
            choice = c
            break
    else:
        choice = "splitk" if "splitk" in candidates else candidates[0]
    tuning._chosen[key] = choice
    return choice


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's check; the gpu test below runs there")
@pytest.mark.parametrize("order", [1, 2])
def test_split_tf32x3_kernels_agree_with_the_reference(monkeypatch, order):
    """The forward, backward and split-K weight gradients on their 3xTF32 launch configs
    (ragged 17-row batch, width 40: several K chunks), the kernels' PRECISION the split's."""
    _split_agrees(monkeypatch, "cpu", order, TOLERANCES[torch.float32], batch=17, dim=3,
                  width=40, out=2, k=3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("order", [1, 2])
def test_split_tf32x3_kernels_agree_on_the_gpu(monkeypatch, order):
    """As above at config M's widths on the GPU's tensor cores, where the TF32 products
    round: fp32 accuracy (#18's 1e-4)."""
    _split_agrees(monkeypatch, "cuda", order, 1e-4, batch=4099, dim=16, width=128, out=8, k=2)


def _split_agrees(monkeypatch, device, order, rtol, **shape):
    from sobolev_kernels.triton import plans

    monkeypatch.setenv("SOBOLEV_TRITON_TF32X3", "split")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", "0")
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "fastest", _prefer_tensor_cores)
    tuning.clear()
    model, x, y, kw = sample_inputs(dtype=torch.float32, device=device, seed=order, **shape)
    if order == 2:
        batch, k, dim, out = shape["batch"], shape["k"], shape["dim"], shape["out"]
        kw.update(order=2, target_hvp2=torch.randn(batch, k, out, device=device),
                  directions=torch.randn(batch, k, dim, device=device))  # fmt: skip
    try:
        assert_backends_agree(model, x, y, kw, "triton", rtol,
                              expected_model=upcast_model(model))  # fmt: skip
        chosen = {key[1]: choice for key, choice in tuning.choices().items()}
        assert chosen["weight_grad"] == "splitk"
        assert chosen["fwd"].precision == chosen["bwd"].precision == "tf32x3"
        # (the backward's launcher is not kept in a plan; its PRECISION comes from _tuned too)
        kinds = ("fwd", "weight_grad")
        precisions = {key[0]: (plan.launcher if key[0] == "fwd" else plan[0])
                      .constexprs["PRECISION"] for key, plan in plans._plans.items()
                      if isinstance(key, tuple) and key[0] in kinds}  # fmt: skip
        assert precisions == dict.fromkeys(kinds, "tf32x3_split")
    finally:
        tuning.clear()


def test_an_unknown_tf32x3_form_is_refused(monkeypatch):
    from sobolev_kernels.triton import choices

    monkeypatch.setenv("SOBOLEV_TRITON_TF32X3", "fast")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_TF32X3: expected triton or split"):
        choices._kernel_precision("tf32x3")
    monkeypatch.setenv("SOBOLEV_TRITON_TF32X3", "split")
    assert choices._kernel_precision("ieee") == "ieee"  # only 3xTF32 changes form
    assert choices._kernel_precision("tf32x3") == "tf32x3_split"
