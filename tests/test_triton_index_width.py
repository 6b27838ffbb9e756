"""The chunked and resident Triton kernels index in 32 bits where every offset fits, in 64
where one may not (INDEX64, ``choices._index64``) or where SOBOLEV_TRITON_INDEX=64 asks (and
in the interpreter unless it is 32): the same losses and gradients bit for bit, and 64 bits
chosen past the limit (here a limit lowered to the test's sizes)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA, TOLERANCES, assert_backends_agree, inputs_of_order, loss_and_grads

import sobolev_kernels as sk

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def _index64_of_plans() -> dict[str, set[bool]]:
    """INDEX64 of each kernel the plans launch, by plan kind ("fwd", "bwd")."""
    from sobolev_kernels.triton import plans

    found: dict[str, set[bool]] = {}
    for key, plan in plans._plans.items():
        if isinstance(key, tuple) and key[0] in ("fwd", "bwd"):
            found.setdefault(key[0], set()).add(plan.launcher.constexprs["INDEX64"])
    return found


def test_the_index_width_is_chosen_by_the_largest_tensor(monkeypatch):
    from sobolev_kernels.triton import choices

    monkeypatch.setattr(choices, "interpreting", lambda: False)  # (auto: 32 bits on a GPU)
    for setting in ("auto", "32"):
        monkeypatch.setenv("SOBOLEV_TRITON_INDEX", setting)
        assert not choices._index64(5, 2**31 - 1)
        assert choices._index64(5, 2**31)
        assert not choices._index64()
    monkeypatch.setenv("SOBOLEV_TRITON_INDEX", "64")
    assert choices._index64(5)
    monkeypatch.setattr(choices, "interpreting", lambda: True)
    for setting, wide in (("auto", True), ("32", False)):
        monkeypatch.setenv("SOBOLEV_TRITON_INDEX", setting)
        assert choices._index64(5) == wide
    monkeypatch.setenv("SOBOLEV_TRITON_INDEX", "16")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_INDEX: expected auto, 32 or 64"):
        choices._index64(5)


@pytest.mark.parametrize("forward", ["chunked", "resident"])
def test_64_bit_indexing_gives_the_same_results(monkeypatch, forward):
    """Order 2 (a second-order target along the directions), two hidden layers: 32 bits
    (SOBOLEV_TRITON_INDEX=32: the test's sizes fit), then 64 chosen because the limit is
    lowered below the sizes; and against the reference."""
    from sobolev_kernels.triton import choices, plans

    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", forward)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_INDEX", "32")
    if forward == "resident":
        monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD_KERNEL", "resident")
    model, x, y, kw = inputs_of_order(2, target="hvp2", dtype=torch.float32, device=DEVICE,
                                      batch=19, dim=3, width=20, out=2, k=2,
                                      layers=3)  # fmt: skip
    runs = {}
    for name, limit in (("32", None), ("64", 100)):
        if limit is not None:
            monkeypatch.setattr(choices, "_INT32_LIMIT", limit)
        plans.clear_plans()
        runs[name] = loss_and_grads(model, x, y, kw, "triton")
        assert _index64_of_plans() == {"fwd": {name == "64"}, "bwd": {name == "64"}}, name
    assert torch.equal(runs["64"][0], runs["32"][0])
    assert all(torch.equal(a, b) for a, b in zip(runs["64"][1], runs["32"][1]))
    assert_backends_agree(model, x, y, kw, "triton", TOLERANCES[torch.float32])
