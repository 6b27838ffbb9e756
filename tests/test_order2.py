"""Sobolev training of order 2: projected second directional derivatives v^T H v.

The reference backend (nested torch.func.jvp) is checked against an independent
double-autograd computation of H v; every other backend is checked against the reference.
"""

import pytest
import torch
from conftest import (
    HAS_CUDA,
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    order2_inputs,
    sample_inputs,
    tolerance,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends.torch import MLPJvpFunction

SMOOTH = sorted(n for n, a in ACTIVATIONS.items() if a.smooth)
PIECEWISE_LINEAR = sorted(n for n, a in ACTIVATIONS.items() if not a.smooth)


def double_autograd_w(model, x, dirs):
    """v_k^T H_i v_k for every row, output i and direction k, by double backward."""
    x = x.detach().requires_grad_(True)
    f = model(x)
    per_row = dirs if dirs.ndim == 3 else dirs.expand(x.shape[0], -1, -1)
    out = torch.empty(x.shape[0], per_row.shape[1], f.shape[1], dtype=x.dtype)
    for i in range(f.shape[1]):
        (g,) = torch.autograd.grad(f[:, i].sum(), x, create_graph=True)
        for k in range(per_row.shape[1]):
            v = per_row[:, k]
            (hv,) = torch.autograd.grad((g * v).sum(), x, retain_graph=True)
            out[:, k, i] = (hv * v).sum(-1)
    return out


@pytest.mark.parametrize("activation", SMOOTH)
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_reference_matches_double_autograd(activation, directions):
    model, x, _, kw = sample_inputs(activation=activation, directions=directions, out=2)
    f, u, w = sk.mlp_jvp(model, x, kw["directions"], backend="reference", order=2)
    assert_close(w, double_autograd_w(model, x, kw["directions"]), 1e-10, "v^T H v")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", ["hess", "hvp2", "teacher"])
@pytest.mark.parametrize("directions", ["sampled", "shared", "per_row", "full"])
def test_torch_backend_matches_reference(activation, target, directions):
    if target == "hvp2" and directions == "sampled":
        directions = "per_row"  # projected targets need explicit directions
    model, x, y, kw = order2_inputs(target, activation=activation, directions=directions)
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float64], order=2,
                          alpha=0.5, beta=1.5, gamma=0.7)  # fmt: skip


@pytest.mark.parametrize("batch, dim, width, out, k, layers",
                         [(1, 1, 5, 1, 1, 2), (7, 3, 16, 4, 3, 3), (100, 13, 48, 2, 2, 4),
                          (9, 2, 8, 1, 2, 1)])  # fmt: skip
@pytest.mark.parametrize("bias", [True, False])
def test_torch_backend_shapes(batch, dim, width, out, k, layers, bias):
    model, x, y, kw = order2_inputs(batch=batch, dim=dim, width=width, out=out, k=k,
                                    layers=layers, bias=bias)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float64], order=2)


def test_no_value_term_and_jvp_targets():
    model, x, _, kw = order2_inputs("hvp2", first="jvp", directions="per_row", x_grad=False)
    assert_backends_agree(model, x, None, kw, "torch", TOLERANCES[torch.float64], order=2)


@pytest.mark.parametrize("activation", ["tanh", "gelu", "softplus"])
@pytest.mark.parametrize("shared", [True, False])
def test_gradcheck(activation, shared):
    gen = torch.Generator().manual_seed(1)

    def r(*s, grad=True):
        return torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = r(3, 2)
    dirs = r(2, 2, grad=False) if shared else r(3, 2, 2, grad=False)
    params = [r(4, 2), r(5, 4), r(2, 5), r(4), r(5), r(2)]

    def fn(x, *params):
        return MLPJvpFunction.apply(activation, 0.0, True, 2, x, dirs, *params)

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("activation", PIECEWISE_LINEAR)
def test_piecewise_linear_networks_have_no_second_derivative(activation):
    """relu, leaky_relu and identity MLPs are piecewise linear: v^T H v = 0 almost everywhere,
    so the order-2 term is gamma * mean(g2^2), a constant with no gradient."""
    model, x, _, kw = sample_inputs(activation=activation, directions="per_row")
    for backend in ("torch", "reference"):
        _, _, w = sk.mlp_jvp(model, x, kw["directions"], backend=backend, order=2)
        assert torch.equal(w, torch.zeros_like(w))


def test_full_directions_match_the_hessian_diagonal():
    model, x, _, _ = sample_inputs(activation="tanh", out=2, dim=3)
    _, _, w = sk.mlp_jvp(model, x, "full", order=2)
    hess = torch.stack([
        torch.autograd.functional.hessian(lambda p, i=i: model(p[None])[0, i], row)
        for row in x.detach() for i in range(2)
    ]).reshape(x.shape[0], 2, 3, 3)  # fmt: skip
    assert_close(w, torch.diagonal(hess, dim1=-2, dim2=-1).transpose(1, 2), 1e-10, "diag H")


def test_exact_target_gives_zero_loss():
    """A model fitted against its own derivatives has zero loss at every order."""
    model, x, _, kw = sample_inputs(activation="sin", out=1, directions="per_row")
    dirs = kw["directions"]
    f, u, w = sk.mlp_jvp(model, x, dirs, backend="reference", order=2)
    loss = sk.sobolev_loss(model, x, f.detach(), target_jvp=u.detach(), target_hvp2=w.detach(),
                           directions=dirs, order=2, backend="torch")  # fmt: skip
    assert loss.item() < 1e-25


def test_functions_hessians_as_targets():
    fn = sk.functions.mccormick
    x = fn.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    model = sk.SobolevMLP(2, 16, 1, 3, dtype=torch.float64)
    loss = sk.sobolev_loss(model, x, fn(x), target_grad=fn.grad(x), target_hess=fn.hessian(x),
                           num_directions=2, order=2)  # fmt: skip
    loss.backward()
    assert torch.isfinite(loss) and model.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(target_hess=torch.zeros(4, 1, 2, 2)), "target_hess: second-order targets need"),
        (dict(order=2), "order=2 needs exactly one second-order target"),
        (
            dict(
                order=2,
                target_hess=torch.zeros(4, 2, 2),
                target_hvp2=torch.zeros(4, 1, 1),
                directions=torch.randn(1, 2),
            ),
            "exactly one second-order target",
        ),
        (dict(order=2, target_hess=torch.zeros(4, 3, 3)), r"target_hess: expected shape"),
        (dict(order=2, target_hvp2=torch.zeros(4, 1, 1)), "target_hvp2: .*directions"),
        (dict(order=2, gamma=float("nan"), target_hess=torch.zeros(4, 2, 2)), "gamma"),
    ],
)
def test_order2_errors(kwargs, match):
    model = sk.SobolevMLP(2, 4, 1, 2)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match=match):
        sk.sobolev_loss(model, x, None, target_grad=torch.zeros(4, 2), **kwargs)


def test_teacher_and_explicit_second_order_target_conflict():
    model = sk.SobolevMLP(2, 4, 1, 2)
    with pytest.raises(ValueError, match="come from the teacher"):
        sk.sobolev_loss(model, torch.randn(4, 2), None, teacher=model, order=2,
                        target_hess=torch.zeros(4, 2, 2))  # fmt: skip


def test_backend_without_order2_is_refused():
    model, x, y, kw = order2_inputs(dtype=torch.float32)
    for name in sk.available_backends():
        from sobolev_kernels import backends

        if 2 not in backends.load(name).orders:
            with pytest.raises(ValueError, match="order 2 is not implemented"):
                sk.sobolev_loss(model, x, y, backend=name, order=2, **kw)


# ------------------------------------------------------------------------------- triton

needs_triton = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)
DEVICE = "cuda" if HAS_CUDA else "cpu"
RTOL_TRITON = tolerance("triton", torch.float32, "cuda" if HAS_CUDA else "cpu")


def _triton_agrees(rtol=RTOL_TRITON, dtype=torch.float32, target="hess", **kwargs):
    extra = {k: kwargs.pop(k) for k in ("alpha", "beta", "gamma") if k in kwargs}
    model, x, y, kw = order2_inputs(target, dtype=dtype, device=DEVICE, **kwargs)
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model),
                          order=2, **extra)  # fmt: skip


@needs_triton
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target, directions",
                         [("hess", "per_row"), ("hvp2", "shared"), ("teacher", "full"),
                          ("hess", "sampled")])  # fmt: skip
def test_triton_matches_reference(activation, target, directions):
    _triton_agrees(activation=activation, target=target, directions=directions, alpha=0.5,
                   beta=1.5, gamma=0.7)  # fmt: skip


@needs_triton
@pytest.mark.parametrize("batch, dim, width, out, k, layers, bias",
                         [(1, 1, 5, 1, 1, 2, True), (33, 3, 17, 4, 3, 3, False),
                          (20, 13, 48, 2, 2, 1, True)])  # fmt: skip
def test_triton_shapes(batch, dim, width, out, k, layers, bias):
    _triton_agrees(batch=batch, dim=dim, width=width, out=out, k=k, layers=layers, bias=bias)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_low_precision(dtype):
    _triton_agrees(TOLERANCES[dtype], dtype=dtype, batch=24, width=16, k=2)


@needs_triton
def test_triton_mlp_jvp_order2_and_its_gradient():
    model, x, _, kw = sample_inputs(out=2, k=2, dtype=torch.float32, device=DEVICE)
    results = {}
    for backend in ("triton", "reference"):
        f, u, w = sk.mlp_jvp(model, x, kw["directions"], backend=backend, order=2)
        grads = torch.autograd.grad(f.sum() + (u * 0.5).sum() + w.square().sum(),
                                    [x, *model.parameters()])  # fmt: skip
        results[backend] = (f, u, w, *grads)
    for a, b in zip(results["triton"], results["reference"]):
        assert_close(a, b, RTOL_TRITON, "mlp_jvp order 2")


@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_eager_order2_baseline_matches_reference(directions):
    """The benchmarks' eager baseline (triple backward) is an independent order-2 oracle."""
    from sobolev_kernels.baselines import eager_autograd_loss

    model, x, y, kw = order2_inputs("hvp2", first="jvp", directions=directions, out=2)
    ref = sk.sobolev_loss(model, x, y, backend="reference", order=2, gamma=0.6, **kw)
    dirs = kw["directions"]
    eager, _ = eager_autograd_loss(model, x, y, kw["target_jvp"], dirs,
                                   target_hvp2=kw["target_hvp2"], gamma=0.6)  # fmt: skip
    assert_close(eager, ref, 1e-10, "loss")
    params = [x, *model.parameters()]
    for a, b in zip(torch.autograd.grad(eager, params), torch.autograd.grad(ref, params)):
        assert_close(a, b, 1e-10, "gradient")
