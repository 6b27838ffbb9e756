"""The Triton kernels stay inside their tensors (tests/bounds_checked.py), in the launch
configs the tuner may pick, at a batch that leaves the last row tile ragged: forced ones, and
every candidate the tuners offer, run as a GPU's tuner runs them (the forms no GPU has run
among them: an access past a tensor there faults and loses the process's CUDA context, and
with it the rest of a GPU session's benchmark).

The H200 run of 2026-11-27 ended with an illegal memory access in the tuner's 64-row
("wide") forward candidate at config M in fp32 (B >= 16384); a kernel indexing past a tensor
would show here at any batch. It did not: the candidate is off by default since
(SOBOLEV_TRITON_WIDE_TILES), and the next GPU run checks it apart (scripts/gpu_session.sh)."""

import pytest
import torch
from bounds_checked import OutOfBounds, bounds_checked
from conftest import HAS_CUDA, TOLERANCES, assert_backends_agree, sample_inputs

import sobolev_kernels as sk

pytestmark = [
    pytest.mark.skipif("triton" not in sk.available_backends(), reason="triton unavailable"),
    pytest.mark.skipif(HAS_CUDA, reason="the interpreter's check (on a GPU: compute-sanitizer)"),
]
# widths padded from 40 to 64 (the wide config's 32-column blocks: two, the second ragged),
# K = 2 (both directions in one pass), B = 70: two 64-row tiles, the second of 6 rows
SHAPE = dict(batch=70, dim=5, width=40, out=3, k=2, layers=3)


def test_the_check_catches_a_kernel_running_past_its_tensor():
    import triton
    import triton.language as tl

    @triton.jit
    def add_one(p, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(p + i, tl.load(p + i, mask=i < n) + 1, mask=i < n)

    x = torch.zeros(10)
    with bounds_checked():
        add_one[(1,)](x, 10, BLOCK=16)
        with pytest.raises(Exception, match="OutOfBounds"):
            add_one[(1,)](x, 11, BLOCK=16)
    assert issubclass(OutOfBounds, AssertionError)
    assert x.tolist() == [1.0] * 10  # the checked launch stopped before its store


def _forced(monkeypatch, pick: str):
    """Every kernel launches with the static config, or the wide tensor-core one."""
    from sobolev_kernels.triton.layout import Layout

    static = Layout.static_config

    def config(self, element_size=4, shared_limit=None, precision="ieee"):
        if pick == "wide":
            return self.tensor_core_config("tf32x3" if element_size == 4 else precision)
        return static(self, element_size, shared_limit, precision)

    monkeypatch.setattr(Layout, "static_config", config)


@pytest.mark.parametrize(
    "pick, order, backward, save",
    [("static", 1, "separate", "1"), ("wide", 1, "separate", "1"), ("wide", 2, "separate", "1"),
     ("wide", 1, "persistent", "1"), ("wide", 1, "persistent", "0")],
)  # fmt: skip
def test_kernels_stay_inside_their_tensors(monkeypatch, pick, order, backward, save):
    _forced(monkeypatch, pick)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", backward)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "splitk")  # the Triton kernel, not GEMMs
    model, x, y, kw = sample_inputs(dtype=torch.float32, target="jvp", **SHAPE)
    if order == 2:
        kw.update(order=2, target_hvp2=torch.randn(SHAPE["batch"], SHAPE["k"], SHAPE["out"]))
    with bounds_checked():
        assert_backends_agree(model, x, y, kw, "triton", TOLERANCES[torch.float32])


@pytest.fixture
def every_candidate(monkeypatch):
    """The tuners run every candidate they offer once, as a GPU's would (each then "takes"
    1 ms, so the first is kept): the unmeasured forms among them too (128-row tiles, spans of
    row tiles, the activated forward, the wide split-K tiles). Yields the measured keys."""
    from sobolev_kernels import tuning

    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "time_ms", lambda fn: (fn(), 1.0)[1])
    tuning.clear()
    yield tuning.measurements
    tuning.clear()


def _tried(measurements) -> list:
    return [candidate for record in measurements().values() for candidate, _ in record]


@pytest.mark.parametrize(
    "dtype, order, save, width, setting",
    [(torch.float32, 1, "1", 40, None), (torch.float32, 2, "1", 40, None),
     (torch.float32, 1, "0", 40, None), (torch.bfloat16, 1, "1", 40, None),
     (torch.float32, 1, "1", 72, None),
     # the benchmark's unmeasured providers that index memory otherwise
     (torch.float32, 1, "1", 72, ("SOBOLEV_TRITON_INPUTS_LAYOUT", "kmajor")),
     (torch.bfloat16, 1, "1", 40, ("SOBOLEV_TRITON_BACKWARD_KERNEL", "resident")),
     (torch.bfloat16, 1, "1", 40, ("SOBOLEV_TRITON_WIDE_TILES", "1"))],
    ids=["fp32", "fp32-order2", "fp32-lean", "bf16", "fp32-wide-layers", "kmajor",
         "bf16-resident-backward", "bf16-wide-tiles"],
)  # fmt: skip
def test_every_tuner_candidate_stays_inside_its_tensors(monkeypatch, every_candidate, dtype,
                                                        order, save, width, setting):  # fmt: skip
    # (width 72: layers wider than 64, where the weight gradients' wide split-K tiles exist)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    if setting is not None:
        monkeypatch.setenv(*setting)
    shape = {**SHAPE, "width": width} if width == 40 else {**SHAPE, "width": width, "k": 1}
    model, x, y, kw = sample_inputs(dtype=dtype, target="jvp", **shape)
    if order == 2:
        kw.update(order=2, target_hvp2=torch.randn(shape["batch"], shape["k"], shape["out"]))
    with bounds_checked():
        assert_backends_agree(model, x, y, kw, "triton", TOLERANCES[dtype])
    tried = _tried(every_candidate)
    configs = [c for c in tried if hasattr(c, "rows")]
    assert any(c.dw_tiles > 1 for c in configs)  # the persistent backward's spans
    if dtype == torch.float32:
        assert any(c.rows == 128 for c in configs)
        assert any(c.activated for c in configs)
    if save == "1":
        assert "splitk" in tried
    if save == "1" and width > 64:
        assert {"splitk_wide", "recompute_wide"} <= set(tried)
    if setting is not None and setting[0] == "SOBOLEV_TRITON_BACKWARD_KERNEL":
        assert any(c.resident for c in configs)
