"""The oracle itself, checked against an independent double-backward implementation."""

import pytest
import torch
from conftest import assert_close, sample_inputs
from torch import nn

import sobolev_kernels as sk
from sobolev_kernels.baselines import eager_autograd_loss
from sobolev_kernels.problem import SobolevProblem


def _compare_with_eager(model, x, y, target_grad, directions, rtol=1e-10):
    eq = "bmd,kd->bkm" if directions.ndim == 2 else "bmd,bkd->bkm"
    g = torch.einsum(eq, target_grad, directions)
    params = [x, *model.parameters()]
    ref = sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                          alpha=0.7, beta=1.3, backend="reference")  # fmt: skip
    eager, _ = eager_autograd_loss(model, x, y, g, directions, alpha=0.7, beta=1.3)
    assert_close(ref, eager, rtol, "loss")
    for p, a, b in zip(
        params, torch.autograd.grad(ref, params), torch.autograd.grad(eager, params)
    ):
        assert_close(a, b, rtol, f"grad {tuple(p.shape)}")


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "softplus", "silu", "sin", "gelu",
                                        "relu", "leaky_relu", "identity"])  # fmt: skip
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_reference_matches_double_backward(activation, directions):
    model, x, y, kw = sample_inputs(activation=activation, directions=directions)
    _compare_with_eager(model, x, y, kw["target_grad"], kw["directions"])


class _Residual(nn.Module):
    """Not an MLP: a skip connection and a norm layer; only the reference backend takes it."""

    def __init__(self, norm):
        super().__init__()
        self.a = nn.Linear(3, 6, dtype=torch.float64)
        self.norm = norm
        self.b = nn.Linear(6, 2, dtype=torch.float64)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(self.norm(h) + h)


# LayerNorm: torch's forward-mode formula is wrong under reverse mode; the backend works around it
@pytest.mark.parametrize("norm", [nn.LayerNorm(6), nn.RMSNorm(6), nn.Identity()],
                         ids=["layer_norm", "rms_norm", "none"])  # fmt: skip
def test_reference_takes_any_module(norm):
    torch.manual_seed(0)
    model = _Residual(norm.double())
    x = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    _compare_with_eager(model, x, torch.randn(9, 2, dtype=torch.float64),
                        torch.randn(9, 2, 3, dtype=torch.float64),
                        torch.randn(9, 2, 3, dtype=torch.float64))  # fmt: skip


def test_reference_jvp_is_the_jacobian_product():
    model, x, _, kw = sample_inputs(out=3, directions="per_row")
    f, u = sk.mlp_jvp(model, x.detach(), kw["directions"], backend="reference")
    jac = torch.func.vmap(torch.func.jacrev(model))(x.detach())  # (B, m, d)
    assert_close(u, torch.einsum("bmd,bkd->bkm", jac, kw["directions"]), 1e-12, "u")
    assert_close(f, model(x), 1e-15, "f")


def test_reference_loops_when_vmap_cannot_run():
    calls = []

    def model(x):
        calls.append(1)
        if x.sum().item() > 1e9:  # .item() cannot be vmapped
            raise AssertionError
        return torch.tanh(x).sum(-1, keepdim=True)

    x = torch.randn(5, 3, dtype=torch.float64)
    dirs = torch.randn(2, 3, dtype=torch.float64)
    from sobolev_kernels.backends import reference

    f, u = reference.model_jvp(model, x, dirs)
    expected = ((1 - torch.tanh(x) ** 2) @ dirs.T)[..., None]
    assert_close(u, expected, 1e-12, "u")


def test_model_output_shape_is_checked():
    x = torch.randn(4, 3)
    problem = SobolevProblem(
        model=lambda t: t,
        mlp=None,
        x=x,
        y=torch.randn(4, 2),
        directions=torch.randn(1, 3),
        target_jvp=torch.randn(4, 1, 2),
    )
    from sobolev_kernels.backends import reference

    with pytest.raises(ValueError, match="model: returned shape"):
        reference.BACKEND.sobolev_loss(problem)
