"""Activation functions and their first three derivatives: the one table every backend uses.

``gelu`` is the exact (erf) gelu of ``nn.GELU()``; ``gelu_tanh`` its tanh approximation,
``nn.GELU(approximate="tanh")``.

Each activation gives ``s``, ``s'``, ``s''`` and ``s'''`` of the pre-activation ``z``,
computed together by ``series`` so the transcendental (tanh, sigmoid, ...) runs once. The
torch backend calls them directly; the Triton and C++ kernels implement the same formulas and
select them by ``Activation.kernel_id``. The derivatives follow torch's own conventions where
a function is not smooth (``relu'(0) = 0``, softplus is linear above its threshold), so every
backend agrees with autograd on the same module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Activation", "ACTIVATIONS", "get_activation", "activation_from_module", "Sin"]

TensorFn = Callable[[Tensor], Tensor]
SeriesFn = Callable[[Tensor, int], list[Tensor]]

# torch.nn.functional.softplus(beta=1, threshold=20) returns x itself above the threshold.
SOFTPLUS_THRESHOLD = 20.0
# gelu_tanh, the tanh approximation of gelu: 0.5 x (1 + tanh(c (x + a x^3)))
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715
_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation and its derivatives.

    ``series(z, n)`` returns ``[s, s', ..., s^(n)]`` (n <= 3) from one evaluation of the
    underlying transcendental; backends call it. ``fn`` is torch's native function, used in
    plain forward passes. ``kernel_id`` is the integer the fused kernels switch on. ``smooth``
    is False for the relu family and identity, whose s'' and s''' vanish almost everywhere,
    so backends skip the s''(z) tz term of the backward for them.
    """

    name: str
    kernel_id: int
    fn: TensorFn
    series: SeriesFn
    smooth: bool = True
    negative_slope: float = 0.0  # leaky_relu only

    def d1(self, z: Tensor) -> Tensor:
        return self.series(z, 1)[1]

    def d2(self, z: Tensor) -> Tensor:
        return self.series(z, 2)[2]

    def d3(self, z: Tensor) -> Tensor:
        return self.series(z, 3)[3]

    def module(self) -> nn.Module:
        """The torch module computing ``fn`` (used to build an equivalent nn.Sequential)."""
        return _MODULES[self.name](self)


def _tanh(z: Tensor, n: int) -> list[Tensor]:
    t = torch.tanh(z)
    out = [t]
    if n >= 1:
        out.append(1 - t * t)
    if n >= 2:
        out.append(-2 * t * out[1])
    if n >= 3:
        out.append(out[1] * (6 * t * t - 2))
    return out


def _sigmoid_tail(p: Tensor, n: int) -> list[Tensor]:
    """The first n of sigma', sigma'', sigma''', from p = sigma(z)."""
    out = []
    if n >= 1:
        out.append(p * (1 - p))
    if n >= 2:
        out.append(out[0] * (1 - 2 * p))
    if n >= 3:
        out.append(out[0] * (1 - 6 * p + 6 * p * p))
    return out


def _sigmoid(z: Tensor, n: int) -> list[Tensor]:
    p = torch.sigmoid(z)
    return [p, *_sigmoid_tail(p, n)]


def _softplus(z: Tensor, n: int) -> list[Tensor]:
    # torch's softplus is linear above the threshold: s' = 1 there and higher derivatives 0.
    out = [F.softplus(z)]
    if n >= 1:
        linear = z > SOFTPLUS_THRESHOLD
        p = torch.sigmoid(z)
        out.append(torch.where(linear, 1.0, p))
        out += [torch.where(linear, 0.0, d) for d in _sigmoid_tail(p, n - 1)]
    return out


def _silu(z: Tensor, n: int) -> list[Tensor]:
    p = torch.sigmoid(z)
    out = [z * p]
    if n >= 1:
        out.append(p * (1 + z * (1 - p)))
    if n >= 2:
        dp, q = p * (1 - p), 1 - 2 * p
        out.append(dp * (2 + z * q))
    if n >= 3:
        # d/dz [p' (2 + z q)] = p' q (2 + z q) + p' (q - 2 z p'),  q = 1 - 2p, p'' = p' q
        out.append(dp * (q * (3 + z * q) - 2 * z * dp))
    return out


def _sin(z: Tensor, n: int) -> list[Tensor]:
    s = torch.sin(z)
    if n == 0:
        return [s]
    c = torch.cos(z)
    return [s, c, -s, -c][: n + 1]


def _gelu(z: Tensor, n: int) -> list[Tensor]:
    # exact (erf) gelu, torch's default: s = z Phi(z), Phi the standard normal cdf, phi its
    # pdf, phi' = -z phi:  s' = Phi + z phi,  s'' = phi (2 - z^2),  s''' = phi z (z^2 - 4)
    cdf = 0.5 * (1 + torch.erf(z * _SQRT1_2))  # torch's own formula for F.gelu
    out = [z * cdf]
    if n == 0:
        return out
    pdf = _INV_SQRT_2PI * torch.exp(-0.5 * z * z)
    out.append(cdf + z * pdf)
    if n >= 2:
        out.append(pdf * (2 - z * z))
    if n >= 3:
        out.append(pdf * z * (z * z - 4))
    return out


def _gelu_tanh_fn(z: Tensor) -> Tensor:
    return F.gelu(z, approximate="tanh")


def _gelu_tanh(z: Tensor, n: int) -> list[Tensor]:
    # s = z (1 + T) / 2, T = tanh(w), w = c (z + a z^3), S = 1 - T^2, w''' = 6 a c
    z2 = z * z
    t = torch.tanh(_GELU_C * (z + _GELU_A * z2 * z))
    out = [0.5 * z * (1 + t)]
    if n == 0:
        return out
    sech2 = 1 - t * t
    dw = _GELU_C * (1 + 3 * _GELU_A * z2)
    out.append(0.5 * (1 + t) + 0.5 * z * sech2 * dw)
    if n >= 2:
        # s'' = S P with P = w' + z (w'' - 2 T w'^2) / 2
        d2w = 6 * _GELU_C * _GELU_A * z
        p = dw + 0.5 * z * (d2w - 2 * t * dw * dw)
        out.append(sech2 * p)
    if n >= 3:
        # s''' = S' P + S P' with S' = -2 T S w' and
        # P' = w'' + (w'' - 2 T w'^2) / 2 + z (w''' - 2 S w'^3 - 4 T w' w'') / 2
        d3w = 6 * _GELU_C * _GELU_A
        dp = 1.5 * d2w - t * dw * dw + 0.5 * z * (d3w - 2 * sech2 * dw**3 - 4 * t * dw * d2w)
        out.append(sech2 * (dp - 2 * t * dw * p))
    return out


def _zeros(z: Tensor, count: int) -> list[Tensor]:
    return [torch.zeros_like(z)] * max(count, 0)


def _relu(z: Tensor, n: int) -> list[Tensor]:
    out = [F.relu(z)]
    if n >= 1:
        out.append((z > 0).to(z.dtype))  # relu'(0) = 0, as in torch
    return out + _zeros(z, n - 1)


def _identity_fn(z: Tensor) -> Tensor:
    return z


def _identity(z: Tensor, n: int) -> list[Tensor]:
    return ([z, torch.ones_like(z)] + _zeros(z, n - 1))[: n + 1]


@functools.cache
def _leaky_relu(negative_slope: float) -> Activation:
    def fn(z: Tensor) -> Tensor:
        return F.leaky_relu(z, negative_slope)

    def series(z: Tensor, n: int) -> list[Tensor]:
        out = [fn(z)]
        if n >= 1:
            out.append(torch.full_like(z, negative_slope).masked_fill_(z > 0, 1.0))
        return out + _zeros(z, n - 1)

    return Activation("leaky_relu", 7, fn, series, False, negative_slope)


class Sin(nn.Module):
    """``sin`` as a module, so ``SobolevMLP.from_sequential`` can recognise SIREN-style stacks."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.sin(z)


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("tanh", 0, torch.tanh, _tanh),
        Activation("sigmoid", 1, torch.sigmoid, _sigmoid),
        Activation("softplus", 2, F.softplus, _softplus),
        Activation("silu", 3, F.silu, _silu),
        Activation("sin", 4, torch.sin, _sin),
        Activation("gelu", 5, F.gelu, _gelu),
        Activation("relu", 6, F.relu, _relu, smooth=False),
        _leaky_relu(0.01),
        Activation("identity", 8, _identity_fn, _identity, smooth=False),
        Activation("gelu_tanh", 9, _gelu_tanh_fn, _gelu_tanh),
    )
}

_MODULES: dict[str, Callable[[Activation], nn.Module]] = {
    "tanh": lambda a: nn.Tanh(),
    "sigmoid": lambda a: nn.Sigmoid(),
    "softplus": lambda a: nn.Softplus(),
    "silu": lambda a: nn.SiLU(),
    "sin": lambda a: Sin(),
    "gelu": lambda a: nn.GELU(),
    "gelu_tanh": lambda a: nn.GELU(approximate="tanh"),
    "relu": lambda a: nn.ReLU(),
    "leaky_relu": lambda a: nn.LeakyReLU(a.negative_slope),
    "identity": lambda a: nn.Identity(),
}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


# "GELU", "LeakyReLU", "leaky-relu", "Gelu_Tanh" all name a table entry
_BY_KEY = {_key(name): name for name in ACTIVATIONS}


def get_activation(
    name: str | nn.Module | Activation, negative_slope: float | None = None
) -> Activation:
    """The table entry for ``name``: a table name in any case, with or without underscores
    (``"tanh"``, ``"GELU"``, ``"LeakyReLU"``, ``"gelu_tanh"``), an ``nn.Module`` computing a
    table function (``nn.GELU()``, ``nn.LeakyReLU(0.2)``), or an ``Activation``.
    ``negative_slope`` applies to ``leaky_relu`` given by name (a module carries its own).
    """
    if isinstance(name, Activation):
        return name
    if isinstance(name, nn.Module):
        if negative_slope is not None:
            raise ValueError("negative_slope: only for a name; the module carries its own")
        act = activation_from_module(name)
        if act is None:
            raise ValueError(
                f"activation: unsupported activation module {name!r}; expected one computing "
                f"one of {sorted(ACTIVATIONS)}"
            )
        return act
    if not isinstance(name, str) or _key(name) not in _BY_KEY:
        raise ValueError(
            f"activation: unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)} "
            "(any case) or an nn.Module computing one"
        )
    name = _BY_KEY[_key(name)]
    if name == "leaky_relu" and negative_slope is not None:
        slope = float(negative_slope)
        if not math.isfinite(slope):
            raise ValueError(f"negative_slope: expected a finite float, got {negative_slope!r}")
        return _leaky_relu(slope)
    return ACTIVATIONS[name]


def activation_from_module(module: nn.Module) -> Activation | None:
    """The table entry computing the same function as ``module``, or None if there is none."""
    if isinstance(module, nn.LeakyReLU):
        return get_activation("leaky_relu", module.negative_slope)
    if isinstance(module, nn.Softplus):
        # Other beta/threshold values are different functions than the table's softplus.
        ok = module.beta == 1 and module.threshold == SOFTPLUS_THRESHOLD
        return ACTIVATIONS["softplus"] if ok else None
    if isinstance(module, nn.GELU):
        return ACTIVATIONS["gelu_tanh" if module.approximate == "tanh" else "gelu"]
    simple = {
        nn.Tanh: "tanh",
        nn.Sigmoid: "sigmoid",
        nn.SiLU: "silu",
        nn.ReLU: "relu",
        nn.Identity: "identity",
        Sin: "sin",
    }
    name = simple.get(type(module))
    return ACTIVATIONS[name] if name else None
