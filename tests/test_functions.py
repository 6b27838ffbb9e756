import pytest
import torch
from conftest import assert_close

from sobolev_kernels import functions

FUNCTIONS = list(functions.ALL.values())


def _interior_points(fn, n=500):
    x = fn.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)
    if fn.name == "bukin_n6":  # keep off the non-differentiable valley x2 = 0.01 x1^2
        x = x[(x[:, 1] - 0.01 * x[:, 0] ** 2).abs() > 1e-3]
    return x


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_gradient_matches_autograd(fn):
    x = _interior_points(fn).requires_grad_(True)
    (expected,) = torch.autograd.grad(fn(x).sum(), x)
    assert_close(fn.grad(x.detach()), expected, 1e-12, f"{fn.name}.grad")


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_hessian_matches_autograd(fn):
    x = _interior_points(fn, 100)
    expected = torch.stack(
        [torch.autograd.functional.hessian(lambda p: fn(p[None])[0], row) for row in x]
    )
    assert_close(fn.hessian(x), expected, 1e-10, f"{fn.name}.hessian")


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_known_minimum(fn):
    x_star = torch.tensor([fn.minimizer], dtype=torch.float64)
    assert fn(x_star).item() == pytest.approx(fn.minimum, abs=1e-4)
    # no sampled point of the domain is lower than the global minimum
    assert fn(fn.sample(20000, torch.Generator().manual_seed(1), dtype=torch.float64)).min() >= (
        fn.minimum - 1e-6
    )
    if fn.name not in ("bukin_n6", "ackley"):  # smooth at the minimum: a stationary point
        assert fn.grad(x_star).abs().max().item() < 1e-3


@pytest.mark.parametrize("which", functions.DOMAINS)
@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_sample_is_inside_the_domain_and_reproducible(fn, which):
    a = fn.sample(1000, torch.Generator().manual_seed(5), domain=which)
    b = fn.sample(1000, torch.Generator().manual_seed(5), domain=which)
    assert a.shape == (1000, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    for i, (lo, hi) in enumerate(fn.domain_named(which)):
        assert lo <= a[:, i].min() and a[:, i].max() <= hi
        assert a[:, i].max() - a[:, i].min() > 0.9 * (hi - lo)  # it fills the domain


# The paper's Table 1 domains as Tikquuss/lwd_pl src/functions.py lists them.
PAPER_DOMAINS = {
    "ackley": ((-5, 5), (-5, 5)),
    "beale": ((-4.5, 4.5), (-4.5, 4.5)),
    "booth": ((-10, 10), (-10, 10)),
    "bukin_n6": ((-15, -5), (-3, 3)),
    "mccormick": ((-1.5, 4), (-3, 4)),
    "rosenbrock": ((-2, 2), (-2, 2)),
    "styblinski_tang": ((-5, 5), (-5, 5)),
}


def test_paper_domains():
    assert set(PAPER_DOMAINS) == set(functions.ALL)
    for name, bounds in PAPER_DOMAINS.items():
        fn = functions.ALL[name]
        assert fn.paper_domain == bounds and fn.domain_named("paper") == bounds
        assert fn.domain_named("vlse") == fn.domain  # .domain stays the VLSE one
        assert all(lo <= m <= hi for m, (lo, hi) in zip(fn.minimizer, bounds))
    differ = {n for n, f in functions.ALL.items() if f.paper_domain != f.domain}
    assert differ == {"ackley", "rosenbrock"}
    # the default draw is the VLSE one, as before the paper domains existed
    g = functions.ackley.sample(100, torch.Generator().manual_seed(0))
    assert torch.equal(g, functions.ackley.sample(100, torch.Generator().manual_seed(0),
                                                  domain="vlse"))  # fmt: skip
    assert g.abs().max() > 5


def test_domain_by_bounds_and_bad_name():
    x = functions.booth.sample(50, torch.Generator().manual_seed(0), domain=((0, 1), (2, 3)))
    assert 0 <= x[:, 0].min() and x[:, 0].max() <= 1 and 2 <= x[:, 1].min()
    with pytest.raises(ValueError, match="domain"):
        functions.booth.sample(5, domain="paper2")


def test_derivatives_are_finite_at_the_kinks():
    assert torch.isfinite(functions.ackley.grad(torch.zeros(1, 2))).all()
    assert torch.isfinite(functions.ackley.hessian(torch.zeros(1, 2))).all()
    kink = torch.tensor([[-10.0, 1.0]])
    assert torch.isfinite(functions.bukin_n6.grad(kink)).all()
    assert torch.isfinite(functions.bukin_n6.hessian(kink)).all()


def test_the_standard_values():
    # spot values of the definitions, worked out by hand
    assert functions.booth(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(74.0)
    assert functions.rosenbrock(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(1.0)
    assert functions.beale(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(14.203125)
    st = functions.styblinski_tang(torch.tensor([[1.0, 1.0]], dtype=torch.float64)).item()
    assert st == pytest.approx(2 * 0.5 * (1 - 16 + 5))


def test_wrong_shape_names_x():
    with pytest.raises(ValueError, match="x"):
        functions.booth(torch.zeros(3, 3))
