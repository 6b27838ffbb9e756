"""The paper's 2-D optimisation test functions with analytic gradients and Hessians.

Definitions and ``.domain`` are those of the Virtual Library of Simulation Experiments
(VLSE; Surjanovic & Bingham, https://www.sfu.ca/~ssurjano/optimization.html).
``.paper_domain`` is the input domain used for the Sobolev training paper's Table 1
(Czarnecki et al. 2017, appendix pp. 14-15) as a third-party reproduction lists it
(Tikquuss/lwd_pl ``src/functions.py``, ``all_functions``; the paper itself was not available
to check): it differs from the VLSE one for Ackley ([-5, 5]^2 instead of [-32.768, 32.768]^2)
and Rosenbrock ([-2, 2]^2 instead of [-5, 10]^2) only. ``.sample(n, domain="paper")`` draws
from it. Every function takes
``x: (B, 2)`` and returns ``(B,)``; ``.grad(x)`` is ``(B, 2)`` and ``.hessian(x)`` is
``(B, 2, 2)``, both written out by hand (the tests check them against autograd). Where a
function is not differentiable (Ackley's origin, Bukin N.6's valley and kink) the analytic
derivatives return 0 there instead of inf/nan, which keeps a training batch finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BenchmarkFunction",
    "ackley",
    "beale",
    "booth",
    "bukin_n6",
    "mccormick",
    "rosenbrock",
    "styblinski_tang",
    "ALL",
    "DOMAINS",
]

Fn = Callable[[Tensor, Tensor], Tensor]
GradFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
HessFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
Domain = tuple[tuple[float, float], tuple[float, float]]

DOMAINS = ("vlse", "paper")
"""Names ``sample``/``domain_named`` accept: the VLSE domain (``.domain``) or ``.paper_domain``."""


@dataclass(frozen=True)
class BenchmarkFunction:
    """A scalar function of two variables with its analytic derivatives.

    ``domain`` is the VLSE domain ``((x1_lo, x1_hi), (x2_lo, x2_hi))``; ``paper_domain`` the
    paper's (None: the same as ``domain``); ``minimizer``/``minimum`` give a global minimum
    (one of them, for functions with several; it lies in both domains).
    """

    name: str
    domain: Domain
    minimizer: tuple[float, float]
    minimum: float
    _value: Fn
    _grad: GradFn
    _hess: HessFn
    paper_domain: Domain | None = None

    def domain_named(self, which: str | Domain = "vlse") -> Domain:
        """The domain called ``which`` ("vlse" or "paper"); an explicit domain passes through."""
        if which == "vlse":
            return self.domain
        if which == "paper":
            return self.paper_domain if self.paper_domain is not None else self.domain
        if isinstance(which, str):
            raise ValueError(f"domain: expected one of {DOMAINS} or bounds, got {which!r}")
        (a0, a1), (b0, b1) = which
        return ((float(a0), float(a1)), (float(b0), float(b1)))

    def __call__(self, x: Tensor) -> Tensor:
        a, b = _split(x, self.name)
        return self._value(a, b)

    def grad(self, x: Tensor) -> Tensor:
        a, b = _split(x, self.name)
        return torch.stack(self._grad(a, b), dim=-1)

    def hessian(self, x: Tensor) -> Tensor:
        a, b = _split(x, self.name)
        haa, hab, hbb = self._hess(a, b)
        return torch.stack([torch.stack([haa, hab], -1), torch.stack([hab, hbb], -1)], -2)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        domain: str | Domain = "vlse",
    ) -> Tensor:
        """``(n, 2)`` points uniform in ``domain_named(domain)`` (on the generator's device).

        The same generator state gives the same uniform draws whatever the domain, so two
        domains' samples differ only by an affine map.
        """
        bounds = self.domain_named(domain)
        where = generator.device if generator is not None else device
        u = torch.rand(n, 2, generator=generator, device=where, dtype=torch.float64)
        lo = torch.tensor([d[0] for d in bounds], dtype=torch.float64, device=where)
        hi = torch.tensor([d[1] for d in bounds], dtype=torch.float64, device=where)
        return (lo + u * (hi - lo)).to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        paper = "" if self.paper_domain is None else f", paper_domain={self.paper_domain}"
        return f"BenchmarkFunction({self.name!r}, domain={self.domain}{paper})"


def _split(x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[-1] != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: {name} expects a (B, 2) tensor, got {shape}")
    return x[:, 0], x[:, 1]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (the non-differentiable points)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0 * num)


# --- Ackley: -a exp(-b r / sqrt(2)) - exp((cos c x1 + cos c x2) / 2) + a + e, r = |x| ---
_A, _B, _C = 20.0, 0.2, 2 * math.pi
_K = _B / math.sqrt(2.0)


def _ackley(x1: Tensor, x2: Tensor) -> Tensor:
    r = torch.sqrt(x1 * x1 + x2 * x2)
    cos_mean = 0.5 * (torch.cos(_C * x1) + torch.cos(_C * x2))
    return -_A * torch.exp(-_K * r) - torch.exp(cos_mean) + _A + math.e


def _ackley_parts(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r = torch.sqrt(x1 * x1 + x2 * x2)
    e1 = _A * _K * torch.exp(-_K * r)  # d/dr of the first term is e1
    e2 = torch.exp(0.5 * (torch.cos(_C * x1) + torch.cos(_C * x2)))
    return r, e1, e2


def _ackley_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    r, e1, e2 = _ackley_parts(x1, x2)
    g = [_safe_div(e1 * xi, r) + e2 * 0.5 * _C * torch.sin(_C * xi) for xi in (x1, x2)]
    return g[0], g[1]


def _ackley_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # First term phi(r) with phi' = e1, phi'' = -K e1:
    #   H = phi'' x x^T / r^2 + phi' (I / r - x x^T / r^3)
    # Second term -exp(g), g = (cos c x1 + cos c x2) / 2, g_i = -c sin(c x_i) / 2:
    #   H = -e2 (g g^T + diag(g_ii)),  g_ii = -c^2 cos(c x_i) / 2
    r, e1, e2 = _ackley_parts(x1, x2)
    r2, r3 = r * r, r * r * r
    gi = [-0.5 * _C * torch.sin(_C * xi) for xi in (x1, x2)]
    gii = [-0.5 * _C * _C * torch.cos(_C * xi) for xi in (x1, x2)]

    def radial(xi: Tensor, xj: Tensor, diag: bool) -> Tensor:
        out = _safe_div(-_K * e1 * xi * xj, r2) - _safe_div(e1 * xi * xj, r3)
        return out + _safe_div(e1, r) if diag else out

    h11 = radial(x1, x1, True) - e2 * (gi[0] * gi[0] + gii[0])
    h12 = radial(x1, x2, False) - e2 * gi[0] * gi[1]
    h22 = radial(x2, x2, True) - e2 * (gi[1] * gi[1] + gii[1])
    return h11, h12, h22


# --- Beale: sum_i (c_i - x1 + x1 x2^i)^2, c = (1.5, 2.25, 2.625) ---
_BEALE_C = (1.5, 2.25, 2.625)


def _beale(x1: Tensor, x2: Tensor) -> Tensor:
    return sum((c - x1 + x1 * x2**i) ** 2 for i, c in enumerate(_BEALE_C, 1))


def _beale_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    g1 = g2 = 0
    for i, c in enumerate(_BEALE_C, 1):
        t = c - x1 + x1 * x2**i
        g1 = g1 + 2 * t * (x2**i - 1)
        g2 = g2 + 2 * t * i * x1 * x2 ** (i - 1)
    return g1, g2


def _beale_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    h11 = h12 = h22 = 0
    for i, c in enumerate(_BEALE_C, 1):
        t = c - x1 + x1 * x2**i
        t1 = x2**i - 1  # dt/dx1
        t2 = i * x1 * x2 ** (i - 1)  # dt/dx2
        t12 = i * x2 ** (i - 1)
        t22 = i * (i - 1) * x1 * x2 ** (i - 2) if i > 1 else 0 * x1
        h11 = h11 + 2 * t1 * t1
        h12 = h12 + 2 * (t2 * t1 + t * t12)
        h22 = h22 + 2 * (t2 * t2 + t * t22)
    return h11, h12, h22


# --- Booth: (x1 + 2 x2 - 7)^2 + (2 x1 + x2 - 5)^2 ---
def _booth(x1: Tensor, x2: Tensor) -> Tensor:
    return (x1 + 2 * x2 - 7) ** 2 + (2 * x1 + x2 - 5) ** 2


def _booth_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    p, q = x1 + 2 * x2 - 7, 2 * x1 + x2 - 5
    return 2 * p + 4 * q, 4 * p + 2 * q


def _booth_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c = torch.ones_like(x1)
    return 10 * c, 8 * c, 10 * c


# --- Bukin N.6: 100 sqrt(|x2 - 0.01 x1^2|) + 0.01 |x1 + 10| ---
def _bukin(x1: Tensor, x2: Tensor) -> Tensor:
    return 100 * torch.sqrt(torch.abs(x2 - 0.01 * x1 * x1)) + 0.01 * torch.abs(x1 + 10)


def _bukin_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    w = x2 - 0.01 * x1 * x1
    dw = _safe_div(50 * torch.sign(w), torch.sqrt(torch.abs(w)))  # d/dw of 100 sqrt|w|
    return dw * (-0.02 * x1) + 0.01 * torch.sign(x1 + 10), dw


def _bukin_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # 100 sqrt|w| has second derivative -25 |w|^(-3/2) in w; w_x1 = -0.02 x1, w_x1x1 = -0.02
    w = x2 - 0.01 * x1 * x1
    aw = torch.abs(w)
    d2w = _safe_div(-25 * torch.ones_like(w), aw * torch.sqrt(aw))
    dw = _safe_div(50 * torch.sign(w), torch.sqrt(aw))
    wx = -0.02 * x1
    return d2w * wx * wx + dw * -0.02, d2w * wx, d2w


# --- McCormick: sin(x1 + x2) + (x1 - x2)^2 - 1.5 x1 + 2.5 x2 + 1 ---
def _mccormick(x1: Tensor, x2: Tensor) -> Tensor:
    return torch.sin(x1 + x2) + (x1 - x2) ** 2 - 1.5 * x1 + 2.5 * x2 + 1


def _mccormick_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    c, d = torch.cos(x1 + x2), 2 * (x1 - x2)
    return c + d - 1.5, c - d + 2.5


def _mccormick_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    s = -torch.sin(x1 + x2)
    return s + 2, s - 2, s + 2


# --- Rosenbrock: 100 (x2 - x1^2)^2 + (x1 - 1)^2 ---
def _rosenbrock(x1: Tensor, x2: Tensor) -> Tensor:
    return 100 * (x2 - x1 * x1) ** 2 + (x1 - 1) ** 2


def _rosenbrock_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    w = x2 - x1 * x1
    return -400 * x1 * w + 2 * (x1 - 1), 200 * w


def _rosenbrock_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return 1200 * x1 * x1 - 400 * x2 + 2, -400 * x1, 200 * torch.ones_like(x1)


# --- Styblinski-Tang: sum_i (x_i^4 - 16 x_i^2 + 5 x_i) / 2 ---
def _styblinski_tang(x1: Tensor, x2: Tensor) -> Tensor:
    return sum(0.5 * (x**4 - 16 * x**2 + 5 * x) for x in (x1, x2))


def _styblinski_tang_grad(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    g = [2 * x**3 - 16 * x + 2.5 for x in (x1, x2)]
    return g[0], g[1]


def _styblinski_tang_hess(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return 6 * x1 * x1 - 16, torch.zeros_like(x1), 6 * x2 * x2 - 16


_ST_X = -2.903534018185960  # root of 2 x^3 - 16 x + 2.5 = 0 giving the global minimum

# domain: VLSE's page of each function. paper_domain: Tikquuss/lwd_pl src/functions.py (see
# the module docstring), the same bounds as VLSE except for Ackley and Rosenbrock.
ackley = BenchmarkFunction(
    "ackley", ((-32.768, 32.768), (-32.768, 32.768)), (0.0, 0.0), 0.0,
    _ackley, _ackley_grad, _ackley_hess, paper_domain=((-5.0, 5.0), (-5.0, 5.0)),
)  # fmt: skip
beale = BenchmarkFunction(
    "beale", ((-4.5, 4.5), (-4.5, 4.5)), (3.0, 0.5), 0.0, _beale, _beale_grad, _beale_hess,
    paper_domain=((-4.5, 4.5), (-4.5, 4.5)),
)  # fmt: skip
booth = BenchmarkFunction(
    "booth", ((-10.0, 10.0), (-10.0, 10.0)), (1.0, 3.0), 0.0, _booth, _booth_grad, _booth_hess,
    paper_domain=((-10.0, 10.0), (-10.0, 10.0)),
)  # fmt: skip
bukin_n6 = BenchmarkFunction(
    "bukin_n6", ((-15.0, -5.0), (-3.0, 3.0)), (-10.0, 1.0), 0.0,
    _bukin, _bukin_grad, _bukin_hess, paper_domain=((-15.0, -5.0), (-3.0, 3.0)),
)  # fmt: skip
mccormick = BenchmarkFunction(
    "mccormick", ((-1.5, 4.0), (-3.0, 4.0)), (-0.54719, -1.54719), -1.9133,
    _mccormick, _mccormick_grad, _mccormick_hess, paper_domain=((-1.5, 4.0), (-3.0, 4.0)),
)  # fmt: skip
rosenbrock = BenchmarkFunction(
    "rosenbrock", ((-5.0, 10.0), (-5.0, 10.0)), (1.0, 1.0), 0.0,
    _rosenbrock, _rosenbrock_grad, _rosenbrock_hess, paper_domain=((-2.0, 2.0), (-2.0, 2.0)),
)  # fmt: skip
styblinski_tang = BenchmarkFunction(
    "styblinski_tang", ((-5.0, 5.0), (-5.0, 5.0)), (_ST_X, _ST_X), -78.33233140754282,
    _styblinski_tang, _styblinski_tang_grad, _styblinski_tang_hess,
    paper_domain=((-5.0, 5.0), (-5.0, 5.0)),
)  # fmt: skip

ALL: dict[str, BenchmarkFunction] = {
    f.name: f for f in (ackley, beale, booth, bukin_n6, mccormick, rosenbrock, styblinski_tang)
}
