"""The fused op contract (sobolev_kernels/fused.py), checked the same way for every fused
family: the Triton kernels (in the interpreter without a GPU) and the C++ extension (its CPU
kernel, and its CUDA kernels on a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA, assert_close, sample_inputs, tolerance
from torch.utils._python_dispatch import TorchDispatchMode

import sobolev_kernels as sk
from sobolev_kernels import backends, fused
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.fused import NAMESPACE

DEVICE = "cuda" if HAS_CUDA else "cpu"
FAMILIES = ["triton", "cuda"]


def _backend(name: str) -> backends.FusedBackend:
    backend = backends.load(name)
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return backend


def _dtype(name: str) -> torch.dtype:
    # the C++ CPU kernel takes fp64 (gradcheck-grade); Triton takes fp32 and below
    return torch.float64 if name == "cuda" and DEVICE == "cpu" else torch.float32


def _op_inputs(name, order=1, *, y=True, target="grad", bias=True, seed=0):
    """Plain tensors for a direct op call: x (requires grad), directions, the five targets,
    weights and biases (requiring grad)."""
    dtype = _dtype(name)
    shape = dict(batch=9, dim=3, width=6, out=2, k=2, dtype=dtype, device=DEVICE)
    model, x, yv, kw = sample_inputs(**shape, seed=seed, target="grad", bias=bias)
    gen = torch.Generator().manual_seed(seed + 1)
    dirs = kw["directions"] if isinstance(kw.get("directions"), torch.Tensor) else None
    if dirs is None:
        dirs = torch.randn(9, 2, 3, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    targets = dict.fromkeys(["y", "target_jvp", "target_grad", "target_hvp2", "target_hess"])
    targets["y"] = yv if y else None
    if target == "grad":
        targets["target_grad"] = kw["target_grad"]
    elif target == "jvp":
        targets["target_jvp"] = torch.randn(9, 2, 2, generator=gen, dtype=torch.float64).to(
            DEVICE, dtype
        )
    if order == 2:
        targets["target_hess"] = torch.randn(9, 2, 3, 3, generator=gen, dtype=torch.float64).to(
            DEVICE, dtype
        )
    weights = [w.detach().requires_grad_() for w in model.weights()]
    biases = [b.detach().requires_grad_() for b in (model.biases() or [])]
    return x.detach().requires_grad_(), dirs, targets, weights, biases


def _forward_args(x, dirs, targets, weights, biases, order, *, save=True, act="tanh"):
    a = ACTIVATIONS[act]
    return (x, dirs, *targets.values(), weights, biases, a.kernel_id, a.negative_slope, 0.6, 1.7,
            0.8, order, False, save)  # fmt: skip


def test_both_families_register_the_contract_schema():
    """The C++ schemas (csrc/ops.cpp) and the Triton ones (defined from fused.py) are the same:
    same arguments, in the same order, with the same types and names, and the same outputs."""
    _backend("cuda")
    for which in ("forward", "backward"):
        schemas = [getattr(ops, which)._schema for ops in (fused.TRITON_OPS, fused.CUDA_OPS)]
        triton_schema, cpp_schema = (str(s).split("(", 1)[1] for s in schemas)
        assert triton_schema == cpp_schema
        expected = getattr(fused, f"{which.upper()}_SCHEMA")
        assert "(" + triton_schema == expected


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
def test_outputs_have_the_contract_layouts(name, order):
    backend = _backend(name)
    x, dirs, targets, weights, biases = _op_inputs(name, order)
    for save in (True, False):
        args = _forward_args(x, dirs, targets, weights, biases, order, save=save)
        loss, f, u, w, saved = backend.ops.forward(*args)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        assert loss.shape == () and loss.dtype == acc
        assert f.shape == (9, 2) and f.dtype == x.dtype
        assert u.shape == (9, 2, 2) and u.dtype == x.dtype
        assert w.shape == ((9, 2, 2) if order == 2 else (0,)) and w.dtype == x.dtype
        hidden = sum(p.shape[0] for p in weights[:-1])
        assert saved.dtype == acc and saved.ndim == 1
        assert saved.numel() == ((1 + order * 2) * 9 * hidden if save else 0)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
def test_loss_and_outputs_match_the_reference(name, order):
    """f, u, w and the loss, each term dropped without its target, against torch.func."""
    backend = _backend(name)
    rtol = tolerance(name, _dtype(name), DEVICE)
    for y, target in ((True, "grad"), (False, "jvp"), (False, None)):
        x, dirs, targets, weights, biases = _op_inputs(name, order, y=y, target=target)
        if target is None and order == 2:
            targets["target_hess"] = None
        loss, f, u, w, _ = backend.ops.forward(*_forward_args(x, dirs, targets, weights, biases,
                                                              order))  # fmt: skip
        mlp = sk.SobolevMLP(3, 6, 2, 3, activation="tanh", dtype=x.dtype, device=DEVICE)
        with torch.no_grad():
            for p, q in zip([*mlp.weights(), *mlp.biases()], [*weights, *biases]):
                p.copy_(q)
        ref = sk.mlp_jvp(mlp, x, dirs, backend="reference", order=order)
        for got, want, label in zip((f, u, w), ref, ("f", "u", "w")):
            assert_close(got, want, rtol, f"{name} {label}")
        expected = torch.zeros((), dtype=torch.float64)
        if y:
            expected += 0.6 * (ref[0] - targets["y"]).double().square().mean()
        if target is not None:
            g = targets["target_jvp"]
            if target == "grad":
                g = torch.einsum("bmd,bkd->bkm", targets["target_grad"], dirs)
            expected += 1.7 * (ref[1] - g).double().square().mean()
        if order == 2 and targets["target_hess"] is not None:
            g2 = torch.einsum("bmij,bki,bkj->bkm", targets["target_hess"], dirs, dirs)
            expected += 0.8 * (ref[2] - g2).double().square().mean()
        assert_close(loss, expected, rtol, f"{name} loss (y={y}, target={target})")


@pytest.mark.parametrize("name, method", [("triton", "separate"), ("triton", "persistent"),
                                          ("cuda", None)])  # fmt: skip
@pytest.mark.parametrize("order", [1, 2])
def test_backward_recomputes_what_the_forward_did_not_save(monkeypatch, name, method, order):
    """Saved or recomputed hidden pre-activations give the same gradients; grad_x and the
    parameter gradients come only where asked for. Triton's separate backward recomputes in
    chunks of SOBOLEV_TRITON_RECOMPUTE_ROWS samples (4: three chunks of B = 9, each with its
    slice of the upstream gradients of f, u and w); its persistent one copies the saved rows
    of each tile or runs the tile's hidden layers again. The C++ extension's backward runs
    chunks of SOBOLEV_CUDA_RECOMPUTE_ROWS samples (4 here; csrc/row_chunks.h) on either
    device."""
    if method is not None:
        monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", method)
        monkeypatch.setenv("SOBOLEV_TRITON_RECOMPUTE_ROWS", "4")
    else:
        monkeypatch.setenv("SOBOLEV_CUDA_RECOMPUTE_ROWS", "4")
    backend = _backend(name)
    x, dirs, targets, weights, biases = _op_inputs(name, order)
    results = []
    for save in (True, False):
        outputs = backend.ops.forward(*_forward_args(x.detach(), dirs, targets,
                                                     [p.detach() for p in weights],
                                                     [p.detach() for p in biases], order,
                                                     save=save))  # fmt: skip
        _, f, u, w, saved = outputs
        torch.manual_seed(5)  # the same upstream gradients both times
        grads = (torch.tensor(1.3, dtype=outputs[0].dtype, device=DEVICE), torch.randn_like(f),
                 torch.randn_like(u), torch.randn_like(w) if order == 2 else None)  # fmt: skip
        for need_x, need_params in ((True, True), (False, True), (True, False)):
            gx, gw, gb = backend.ops.backward(
                *grads, x.detach(), dirs, *targets.values(), weights, biases, f, u, w, saved,
                ACTIVATIONS["tanh"].kernel_id, 0.0, 0.6, 1.7, 0.8, order, False, need_x,
                need_params,
            )  # fmt: skip
            assert gx.shape == (x.shape if need_x else (0,))
            assert len(gw) == (len(weights) if need_params else 0)
            assert len(gb) == (len(biases) if need_params else 0)
            if need_x and need_params:
                results.append([gx, *gw, *gb])
    rtol = tolerance(name, _dtype(name), DEVICE)
    for a, b in zip(*results):
        assert_close(a, b, rtol, f"{name} recomputed backward")


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
def test_opcheck(name, order):
    """torch.library.opcheck of both ops: schema, fake kernels, autograd registration."""
    backend = _backend(name)
    x, dirs, targets, weights, biases = _op_inputs(name, order)
    torch.library.opcheck(backend.ops.forward, _forward_args(x, dirs, targets, weights, biases,
                                                             order))  # fmt: skip
    detached = _forward_args(x.detach(), dirs, targets, [p.detach() for p in weights],
                             [p.detach() for p in biases], order)  # fmt: skip
    loss, f, u, w, saved = backend.ops.forward(*detached)
    grads = (torch.ones_like(loss), torch.randn_like(f), None,
             torch.randn_like(w) if order == 2 else None)  # fmt: skip
    torch.library.opcheck(
        backend.ops.backward,
        (*grads, *detached[:9], f, u, w, saved, *detached[9:-1], True, True),
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_autograd_keeps_nothing_when_nothing_needs_a_gradient(name):
    backend = _backend(name)
    x, dirs, targets, weights, biases = _op_inputs(name)
    detached = [p.detach() for p in weights], [p.detach() for p in biases]
    loss, f, *_ = backend.ops.forward(*_forward_args(x.detach(), dirs, targets, *detached, 1))
    assert loss.grad_fn is None and f.grad_fn is None
    # x alone requires a gradient: the parameters' are never formed
    loss, *_ = backend.ops.forward(*_forward_args(x, dirs, targets, *detached, 1))
    (gx,) = torch.autograd.grad(loss, [x])
    assert gx.shape == x.shape and torch.isfinite(gx).all()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("order", [1, 2])
def test_eager_autograd_path_gives_the_registered_autograd_gradients(monkeypatch, name, order):
    """FusedOps.apply: in eager mode the lean autograd.Function (same context and backward),
    under torch.compile and torch.func the op's registered autograd; the same gradients of
    every input, and the same outputs, either way."""
    backend = _backend(name)
    x, dirs, targets, weights, biases = _op_inputs(name, order)
    args = _forward_args(x, dirs, targets, weights, biases, order)
    upstream = None

    def run(eager: bool):
        nonlocal upstream
        monkeypatch.setattr(fused, "_eager", lambda: eager)
        loss, f, u, w, saved = backend.ops.apply(*args)
        assert (loss.grad_fn is not None) and (type(loss.grad_fn).__name__.startswith(
            "_EagerForwardBackward") == eager)  # fmt: skip
        if upstream is None:
            upstream = [torch.randn_like(t) for t in (f, u, w)]
        total = 0.7 * loss + sum((t * g).sum() for t, g in zip((f, u, w), upstream))
        grads = torch.autograd.grad(total, [x, *weights, *biases])
        return (loss, f, u, w, saved), grads

    (eager_out, eager_grads), (op_out, op_grads) = run(True), run(False)
    for a, b in zip((*eager_out, *eager_grads), (*op_out, *op_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # one op, one backward: bitwise
    # nothing needs a gradient: the op alone, no graph
    with torch.no_grad():
        monkeypatch.setattr(fused, "_eager", lambda: True)
        assert backend.ops.apply(*args)[0].grad_fn is None


class _SeenOps(TorchDispatchMode):
    """Records the name of every op dispatched while it is active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", FAMILIES)
def test_eager_path_calls_the_kernels_directly_unless_something_would_see_the_op(monkeypatch, name):
    """FusedOps.direct: plain tensors in eager mode reach the family's launcher without the
    dispatcher (Triton: its Python implementations), with the same results; a dispatch mode,
    like a profiler or a tensor subclass, sees both ops as before."""
    backend = _backend(name)
    ops = backend.ops
    args = _forward_args(*_op_inputs(name), 1)
    x, weights = args[0], args[7]
    direct_calls = []
    if name == "triton":
        forward_impl, backward_impl = fused._IMPLS[ops.forward_name]

        def spy(impl):
            return lambda *a: direct_calls.append(impl) or impl(*a)

        monkeypatch.setitem(fused._IMPLS, ops.forward_name,
                            (spy(forward_impl), spy(backward_impl)))  # fmt: skip

    def step():
        loss = ops.apply(*args)[0]
        return loss, torch.autograd.grad(loss, [x, *weights])

    loss, grads = step()
    if name == "triton":
        assert len(direct_calls) == 2  # the forward, then the backward
    direct_calls.clear()
    with _SeenOps() as seen:
        seen_loss, seen_grads = step()
    assert direct_calls == []
    assert f"{NAMESPACE}.{ops.forward_name}.default" in seen.names
    assert f"{NAMESPACE}.{ops.backward_name}.default" in seen.names
    for a, b in zip((loss, *grads), (seen_loss, *seen_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eager_path_stays_out_of_torch_func_and_compile():
    assert fused._eager()
    seen = []
    torch.func.vmap(lambda t: seen.append(fused._eager()) or t)(torch.zeros(2, 1))
    assert seen == [False]
