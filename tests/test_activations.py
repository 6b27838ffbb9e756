import re

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
    assert activation_from_module(torch.nn.Dropout()) is None


def test_both_gelus_are_in_the_table():
    """nn.GELU() is the exact (erf) gelu, "gelu"; the tanh approximation is "gelu_tanh"."""
    assert activation_from_module(torch.nn.GELU()) == ACTIVATIONS["gelu"]
    assert activation_from_module(torch.nn.GELU(approximate="tanh")) == ACTIVATIONS["gelu_tanh"]
    z = _points()
    assert_close(ACTIVATIONS["gelu"].fn(z), torch.nn.functional.gelu(z), 0.0, "gelu")
    # the two differ by up to ~5e-4: a test that mixed them up would see it
    gap = (ACTIVATIONS["gelu"].fn(z) - ACTIVATIONS["gelu_tanh"].fn(z)).abs().max()
    assert 1e-4 < gap < 1e-3


@pytest.mark.parametrize(
    "name, expected",
    [("TANH", "tanh"), ("GELU", "gelu"), ("gelu-tanh", "gelu_tanh"), ("LeakyReLU", "leaky_relu"),
     ("SiLU", "silu"), ("Identity", "identity")],
)  # fmt: skip
def test_names_are_case_insensitive(name, expected):
    assert get_activation(name) == ACTIVATIONS[expected]


def test_leaky_relu_by_name_keeps_its_slope_in_any_case():
    assert get_activation("LeakyReLU", 0.3).negative_slope == 0.3


def test_kernel_tables_are_the_python_table():
    """One table per fact: the C++ enum and smoothness in csrc/activations.h, and the Triton
    kernels' ids and SMOOTH, are those of sobolev_kernels.activations. Renumbering, adding or
    renaming an activation on one side only fails here."""
    from pathlib import Path

    header = (Path(__file__).resolve().parents[1] / "csrc" / "activations.h").read_text()
    enum = re.search(r"enum ActivationId : int \{(.*?)\};", header, re.S).group(1)
    cpp = {_snake(name): int(value) for name, value in re.findall(r"k(\w+) = (\d+)", enum)}
    python = {name: act.kernel_id for name, act in ACTIVATIONS.items()}
    assert cpp == python
    assert int(re.search(r"kNumActivations = (\d+);", header).group(1)) == len(python)
    # is_smooth lists the activations with s'' = 0 (act != kX && ...)
    smooth_fn = re.search(r"is_smooth\(int act\) \{(.*?)\}", header, re.S).group(1)
    not_smooth = {_snake(name) for name in re.findall(r"act != k(\w+)", smooth_fn)}
    assert not_smooth == {name for name, act in ACTIVATIONS.items() if not act.smooth}

    triton_acts = pytest.importorskip("sobolev_kernels.triton.activations")
    assert {name: int(v.value) for name, v in triton_acts._ID.items()} == python
    assert set(triton_acts.SMOOTH) == {a.kernel_id for a in ACTIVATIONS.values() if a.smooth}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()
