import pytest
import torch
from conftest import assert_close

from sobolev_kernels.activations import (
    ACTIVATIONS,
    SOFTPLUS_THRESHOLD,
    activation_from_module,
    get_activation,
)

ALL = [*ACTIVATIONS.values(), get_activation("leaky_relu", 0.2)]


def _points():
    z = torch.linspace(-7, 7, 2001, dtype=torch.float64)
    # around softplus's threshold, and exact zeros where relu-like functions kink
    extra = [SOFTPLUS_THRESHOLD - 0.5, SOFTPLUS_THRESHOLD + 0.5, 30.0, 0.0, -0.0]
    return torch.cat([z, torch.tensor(extra, dtype=torch.float64)])


@pytest.mark.parametrize("act", ALL, ids=lambda a: f"{a.name}{a.negative_slope or ''}")
def test_derivatives_match_autograd(act):
    z = _points().requires_grad_(True)
    value = act.fn(z)
    expected = [act.d1, act.d2, act.d3]
    current = value
    for order, fn in enumerate(expected, 1):
        (current,) = torch.autograd.grad(current.sum(), z, create_graph=True, allow_unused=True)
        current = torch.zeros_like(z) if current is None else current
        ours = fn(z.detach())
        assert torch.isfinite(ours).all()
        # torch's own third derivative of gelu overflows to nan for large z; ours saturates to 0
        finite = torch.isfinite(current.detach())
        assert_close(ours[finite], current[finite], 1e-12, f"{act.name} s^({order})")
        if not current.requires_grad:  # piecewise-linear: higher derivatives are zero
            current = current + 0 * z


@pytest.mark.parametrize("act", ALL, ids=lambda a: a.name)
def test_module_computes_the_same_function(act):
    z = _points()
    module = act.module()
    assert_close(module(z), act.fn(z), 1e-15, act.name)
    assert activation_from_module(module) == act


def test_kernel_ids_are_unique():
    ids = [a.kernel_id for a in ACTIVATIONS.values()]
    assert sorted(ids) == list(range(len(ids)))


def test_smoothness_flags():
    assert not ACTIVATIONS["relu"].smooth and not ACTIVATIONS["leaky_relu"].smooth
    assert ACTIVATIONS["tanh"].smooth and ACTIVATIONS["gelu"].smooth


def test_unknown_activation_names_the_argument():
    with pytest.raises(ValueError, match="activation"):
        get_activation("swish-ish")


def test_modules_with_other_parameters_are_not_recognised():
    assert activation_from_module(torch.nn.Softplus(beta=2.0)) is None
    assert activation_from_module(torch.nn.GELU()) is None  # exact erf gelu
    assert activation_from_module(torch.nn.Dropout()) is None
