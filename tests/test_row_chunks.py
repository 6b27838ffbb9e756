"""The C++ extension's backward of a forward that kept nothing, a chunk of samples at a time
(csrc/row_chunks.h, SOBOLEV_CUDA_RECOMPUTE_ROWS): on a GPU its default, so that the CUDA fused
backward's stored stacks hold one chunk; here through the CPU op, whose kernel needs no
chunks but runs them where the setting asks (test_cuda_gpu.py runs the CUDA ones). Every
chunking agrees with the whole batch's backward: the per-sample slices, grad_loss scaled by
chunk / batch, grad_x by rows and the parameters' gradients added in chunk order."""

import pytest
import torch
from conftest import TOLERANCES, assert_backends_agree, assert_close, order2_inputs, sample_inputs
from cuda_op_args import OPS, ORDER2, backward_args, forward_op, op_inputs

from sobolev_kernels.backends import cuda as cuda_backend

if cuda_backend.BACKEND.unavailable_reason() is not None:
    pytest.skip(cuda_backend.BACKEND.unavailable_reason(), allow_module_level=True)

ROWS = "SOBOLEV_CUDA_RECOMPUTE_ROWS"


def _upstream(outputs, order, seed=4):
    """(grad_loss, grad_f, grad_u, grad_w): every seed of the backward nonzero."""
    gen = torch.Generator().manual_seed(seed)
    loss, f, u, w, _ = outputs

    def r(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    return (torch.tensor(1.3, dtype=loss.dtype), r(f), r(u), r(w) if order == 2 else None)


def _gradients(monkeypatch, rows, x, dirs, weights, biases, upstream=None, **kw):
    """The backward's (grad_x, *grad_weights, *grad_biases) of a forward that kept nothing,
    in chunks of `rows` samples (None: unset, the CPU's whole batch), for every need_x /
    need_params; and the upstream gradients it used."""
    if rows is None:
        monkeypatch.delenv(ROWS, raising=False)
    else:
        monkeypatch.setenv(ROWS, str(rows))
    outputs = forward_op(x, dirs, weights, biases, save=False, **kw)
    upstream = upstream or _upstream(outputs, kw.get("order", 1))
    results = []
    for need_x, need_params in ((True, True), (False, True), (True, False)):
        gx, gw, gb = OPS.sobolev_backward(*backward_args(
            upstream, x, dirs, weights, biases, outputs, need_x=need_x,
            need_params=need_params, **kw))  # fmt: skip
        assert gx.shape == (x.shape if need_x else (0,))
        assert len(gw) == (len(weights) if need_params else 0)
        assert len(gb) == (len(biases) if need_params else 0)
        results.append([gx, *gw, *gb])
    assert torch.equal(results[0][0], results[2][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1:], results[1][1:]))
    return results[0], upstream


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 4])
def test_chunks_agree_with_the_whole_batch(monkeypatch, order, shared, rows):
    """fp64, B = 5 in chunks of 1, 2 (the last of 1) and 4; shared directions (not sliced) and
    per-row ones; y, target_grad (and target_hess) and upstream gradients of f, u (and w)."""
    x, dirs, targets, weights, biases = op_inputs(shared, True, order, seed=2)
    x, weights, biases = x.detach(), [w.detach() for w in weights], [b.detach() for b in biases]
    kw = dict(order=order, **targets)
    whole, upstream = _gradients(monkeypatch, None, x, dirs, weights, biases, **kw)
    chunked, _ = _gradients(monkeypatch, rows, x, dirs, weights, biases, upstream, **kw)
    for a, b in zip(chunked, whole):
        assert_close(a, b, 1e-13, f"chunks of {rows}")
    # the caller's tensors are as they were (grad_loss is scaled into a copy)
    assert upstream[0].item() == 1.3


def test_chunks_with_projected_targets_and_no_biases(monkeypatch):
    """target_jvp and target_hvp2 (sliced as (B, K, m)), no y, no biases, chunks of 2."""
    x, dirs, _, weights, _ = op_inputs(False, False, 2, seed=3)
    x, weights = x.detach(), [w.detach() for w in weights]
    gen = torch.Generator().manual_seed(6)
    jvp, hvp2 = (torch.randn(5, 2, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    kw = dict(order=2, target_jvp=jvp, target_hvp2=hvp2)
    whole, upstream = _gradients(monkeypatch, None, x, dirs, weights, [], **kw)
    chunked, _ = _gradients(monkeypatch, 2, x, dirs, weights, [], upstream, **kw)
    for a, b in zip(chunked, whole):
        assert_close(a, b, 1e-13, "chunks of 2")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_chunks_add_up_in_fp32(monkeypatch, dtype):
    """fp32, bf16 and fp16, B = 300 in chunks of 64: the parameters' gradients added in fp32
    and rounded once, within the dtype's tolerance of the whole batch's."""
    gen = torch.Generator().manual_seed(7)

    def r(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5).to(dtype)

    x, dirs = r(300, 3), r(300, 2, 3)
    weights, biases = [r(16, 3), r(16, 16), r(2, 16)], [r(16), r(16), r(2)]
    kw = dict(y=r(300, 2).float(), target_grad=r(300, 2, 3).float(), order=1)
    whole, upstream = _gradients(monkeypatch, None, x, dirs, weights, biases, **kw)
    chunked, _ = _gradients(monkeypatch, 64, x, dirs, weights, biases, upstream, **kw)
    for a, b in zip(chunked, whole):
        assert a.dtype == dtype
        assert_close(a, b, TOLERANCES[dtype], f"{dtype} chunks of 64")


@pytest.mark.parametrize("order", [1, 2])
def test_gradcheck_in_chunks(monkeypatch, order):
    """The chunked backward against finite differences: every differentiable output."""
    monkeypatch.setenv(ROWS, "2")
    x, dirs, targets, weights, biases = op_inputs(False, True, order, seed=5)

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        out = forward_op(x, dirs, w, b, activation=3, order=order, save=False, **targets)
        return out[: 2 + order]

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5"])
def test_a_bad_row_count_is_named(monkeypatch, value):
    monkeypatch.setenv(ROWS, value)
    x, dirs, targets, weights, biases = op_inputs(True, True)
    x, weights = x.detach(), [w.detach() for w in weights]
    outputs = forward_op(x, dirs, weights, biases, save=False, **targets)
    upstream = (torch.tensor(1.0, dtype=torch.float64), None, None, None)
    with pytest.raises(RuntimeError, match=f"{ROWS}: expected a positive integer, got '{value}'"):
        OPS.sobolev_backward(*backward_args(upstream, x, dirs, weights, biases, outputs,
                                             **targets))  # fmt: skip


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_the_public_loss_in_chunks_agrees_with_the_reference(monkeypatch, order, directions):
    """What a user sets: SOBOLEV_SAVE_ACTIVATIONS=0 and chunks of 3 of B = 7 (the last of 1),
    through sobolev_loss and autograd; loss and every gradient (x's too) at fp64's
    tolerance."""
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    monkeypatch.setenv(ROWS, "3")
    kw = dict(batch=7, width=6, k=2, directions=directions)
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    extra = ORDER2 if order == 2 else {}
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[torch.float64], **extra)
