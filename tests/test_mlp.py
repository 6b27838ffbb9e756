import pickle

import pytest
import torch
from torch import nn

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS


def test_shapes_and_widths():
    mlp = sk.SobolevMLP(3, 16, 2, num_layers=4)
    assert mlp.widths == [3, 16, 16, 16, 2]
    assert mlp(torch.randn(5, 3)).shape == (5, 2)
    assert sk.SobolevMLP(3, [4, 6], 1, num_layers=3).widths == [3, 4, 6, 1]
    assert sk.SobolevMLP(3, 99, 1, num_layers=1).widths == [3, 1]  # a single linear map


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_forward_matches_the_equivalent_sequential(name):
    mlp = sk.SobolevMLP(3, 8, 2, num_layers=3, activation=name, dtype=torch.float64)
    x = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(mlp(x), mlp.to_sequential()(x))


def test_from_sequential_shares_parameters():
    seq = nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2))
    mlp = sk.SobolevMLP.from_sequential(seq)
    assert mlp.activation.name == "silu" and mlp.widths == [3, 8, 8, 2]
    assert mlp.layers[0].weight is seq[0].weight
    x = torch.randn(4, 3)
    torch.testing.assert_close(mlp(x), seq(x))
    mlp(x).sum().backward()
    assert seq[0].weight.grad is not None


def test_from_sequential_keeps_the_leaky_relu_slope_and_pickles():
    seq = nn.Sequential(nn.Linear(2, 4), nn.LeakyReLU(0.3), nn.Linear(4, 1))
    mlp = sk.SobolevMLP.from_sequential(seq)
    assert mlp.activation.negative_slope == 0.3
    clone = pickle.loads(pickle.dumps(mlp))
    x = torch.randn(6, 2)
    torch.testing.assert_close(clone(x), seq(x))


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("backend", [b for b in ("torch", "cuda") if b in sk.available_backends()])
def test_parametrized_weights_are_what_the_fused_backends_see(backend):
    """A parametrized layer (torch.nn.utils.parametrize: its weight a property now, its
    original elsewhere) reaches the fused kernels as the weight it computes, and the gradient
    reaches the original: as with the reference backend."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    mlp = sk.SobolevMLP(3, 8, 2, num_layers=3, dtype=torch.float64)
    parametrize.register_parametrization(mlp.layers[1], "weight", _Doubled())
    original = mlp.layers[1].parametrizations.weight.original
    assert torch.equal(mlp.weights()[1], 2 * original) and mlp.has_bias
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    g = torch.randn(6, 2, 3, dtype=torch.float64)
    dirs = torch.randn(6, 2, 3, dtype=torch.float64)
    results = []
    for name in (backend, "reference"):
        loss = sk.sobolev_loss(mlp, x, y, target_grad=g, directions=dirs, backend=name)
        results.append((loss, *torch.autograd.grad(loss, [original, mlp.layers[0].weight])))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_single_linear_layer():
    mlp = sk.SobolevMLP.from_sequential(nn.Sequential(nn.Linear(3, 2)))
    assert mlp.num_layers == 1


@pytest.mark.parametrize(
    "seq, match",
    [
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh()), "odd number"),
        (nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 1)), r"sequential\[1\]"),
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(5, 1)), "do not chain"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1)),
            "same",
        ),
        (nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1, bias=False)), "bias"),
        (nn.Sequential(nn.Conv1d(3, 4, 1), nn.Tanh(), nn.Linear(4, 1)), r"sequential\[0\]"),
        (nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 1)), "unsupported activation"),
        (nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 1)), "ELU at index 1 of the"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(), nn.Linear(4, 1)),
            r"Dropout at index 2 of the Sequential is not an nn.Linear",
        ),
    ],
)
def test_from_sequential_rejects_what_it_cannot_take(seq, match):
    with pytest.raises(TypeError, match=match):
        sk.SobolevMLP.from_sequential(seq)


def test_from_sequential_needs_a_sequential():
    with pytest.raises(TypeError, match="sequential"):
        sk.SobolevMLP.from_sequential(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(in_features=0), "in_features"),
        (dict(num_layers=0), "num_layers"),
        (dict(hidden_features=[4]), "hidden_features"),
        (dict(hidden_features=-1), "hidden_features"),
        (dict(activation="swish"), "activation"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(in_features=2, hidden_features=4, out_features=1, num_layers=3) | kwargs
    with pytest.raises(ValueError, match=match):
        sk.SobolevMLP(**args)
