"""Backend ``torch`` against ``reference``: loss and every gradient, on awkward shapes."""

import itertools

import pytest
import torch
from conftest import (
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    sample_inputs,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends.torch import MLPJvpFunction

TARGETS = ["grad", "jvp", "teacher"]
DIRECTIONS = ["sampled", "shared", "per_row", "full"]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_every_activation_target_and_direction_form(activation, target, directions):
    model, x, y, kw = sample_inputs(activation=activation, target=target, directions=directions)
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float64], alpha=0.6, beta=1.7)


# B, d, width, m, K over the shapes of DESIGN section 6 / the foundation issue; K = -1 means K = d.
SHAPES = list(itertools.product([1, 7, 1000], [1, 2, 13], [5, 64], [1, 4], [1, 3, -1]))


@pytest.mark.parametrize("batch, dim, width, out, k", SHAPES)
def test_shapes_fp64(batch, dim, width, out, k):
    k = dim if k == -1 else k
    model, x, y, kw = sample_inputs(batch=batch, dim=dim, width=width, out=out, k=k, layers=3,
                                    seed=batch + dim + width)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float64])


@pytest.mark.parametrize("layers", [1, 2, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_depth_and_bias(layers, bias, directions):
    model, x, y, kw = sample_inputs(layers=layers, bias=bias, directions=directions, k=2)
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float64])


@pytest.mark.parametrize("activation", ["tanh", "gelu", "relu"])
@pytest.mark.parametrize("batch, width, k", [(7, 5, 3), (1000, 64, 2)])
def test_fp32(activation, batch, width, k):
    model, x, y, kw = sample_inputs(activation=activation, batch=batch, width=width, k=k,
                                    dtype=torch.float32)  # fmt: skip
    # fp32 backends against the oracle in fp64 on the same (fp32-rounded) numbers
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[torch.float32],
                          expected_model=upcast_model(model))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_low_precision(dtype, activation):
    model, x, y, kw = sample_inputs(activation=activation, batch=64, width=32, k=2, dtype=dtype)
    loss = sk.sobolev_loss(model, x, y, backend="torch", **kw)
    assert loss.dtype == torch.float32  # the loss accumulates in fp32
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip


def test_no_value_term_and_no_input_gradient():
    model, x, y, kw = sample_inputs(x_grad=False)
    assert_backends_agree(model, x, None, kw, "torch", TOLERANCES[torch.float64])


def test_return_outputs_adds_the_users_value_loss():
    """A user's own loss on f (here a KL-like term) flows through the fused backward."""
    model, x, y, kw = sample_inputs(out=3)
    grads = {}
    for backend in ("torch", "reference"):
        loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw)
        user = torch.nn.functional.kl_div(f.log_softmax(-1), y.softmax(-1), reduction="batchmean")
        grads[backend] = torch.autograd.grad(loss + user, [x, *model.parameters()])
    for a, b in zip(grads["torch"], grads["reference"]):
        assert_close(a, b, 1e-10, "grad with user loss on f")


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu"])
def test_gradcheck(shared, bias, activation):
    gen = torch.Generator().manual_seed(0)

    def r(*s, grad=True):
        return torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = r(4, 3)
    dirs = r(2, 3, grad=False) if shared else r(4, 2, 3, grad=False)
    params = [r(5, 3), r(6, 5), r(2, 6)] + ([r(5), r(6), r(2)] if bias else [])

    def fn(x, *params):
        return MLPJvpFunction.apply(activation, 0.0, bias, 1, x, dirs, *params)

    assert torch.autograd.gradcheck(fn, (x, *params))
    # and the whole loss w.r.t. x, through sobolev_loss (parameters: covered just above)
    mlp = sk.SobolevMLP(3, [5, 6], 2, 3, activation=activation, bias=bias, dtype=torch.float64)
    target = r(4, 2, 3, grad=False)

    def loss(x):
        return sk.sobolev_loss(mlp, x, None, target_grad=target, directions=dirs, backend="torch")

    assert torch.autograd.gradcheck(loss, (x,))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cuda(dtype):
    model, x, y, kw = sample_inputs(batch=1000, width=64, k=3, dtype=dtype, device="cuda")
    assert_backends_agree(model, x, y, kw, "torch", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip
