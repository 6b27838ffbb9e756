"""``SobolevMLP``: the multilayer perceptron every fused backend understands."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .activations import ACTIVATIONS, Activation, activation_from_module, get_activation

__all__ = ["SobolevMLP"]


class SobolevMLP(nn.Module):
    """MLP with ``num_layers`` linear layers and one activation between them, linear output.

    ``hidden_features`` is one width for every hidden layer or a sequence of
    ``num_layers - 1`` widths. ``num_layers=1`` is a single linear map. The layers are plain
    ``nn.Linear`` modules in ``self.layers``, so state dicts, optimisers and initialisation
    behave exactly as for an ``nn.Sequential``.

    ``activation`` is a name of ``activations.ACTIVATIONS`` in any case (``"tanh"``,
    ``"GELU"``, ``"gelu_tanh"``, ``"LeakyReLU"``) or a torch module computing one
    (``nn.GELU()``, ``nn.LeakyReLU(0.2)``); ``negative_slope`` goes with the name
    ``"leaky_relu"``.

    ``forward(x)``: ``x (B, in_features) -> (B, out_features)``, the plain MLP.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | Sequence[int],
        out_features: int,
        num_layers: int,
        activation: str | nn.Module | Activation = "tanh",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        negative_slope: float | None = None,
    ) -> None:
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("out_features", out_features)
        _check_positive_int("num_layers", num_layers)
        if isinstance(hidden_features, int):
            hidden = [hidden_features] * (num_layers - 1)
        else:
            hidden = list(hidden_features)
            if len(hidden) != num_layers - 1:
                raise ValueError(
                    f"hidden_features: expected an int or {num_layers - 1} widths for "
                    f"num_layers={num_layers}, got {len(hidden)}"
                )
        for width in hidden:
            _check_positive_int("hidden_features", width)
        widths = [in_features, *hidden, out_features]
        factory = {"device": device, "dtype": dtype}
        layers = [nn.Linear(a, b, bias=bias, **factory) for a, b in zip(widths, widths[1:])]
        self._init(nn.ModuleList(layers), get_activation(activation, negative_slope))

    def _init(self, layers: nn.ModuleList, activation: Activation) -> None:
        self.layers = layers
        # Plain attributes (not the Activation with its functions) so the module pickles.
        self.activation_name = activation.name
        self.negative_slope = activation.negative_slope

    @property
    def activation(self) -> Activation:
        return get_activation(self.activation_name, self.negative_slope)

    @classmethod
    def from_sequential(cls, sequential: nn.Sequential) -> SobolevMLP:
        """Adopt ``Linear, act, Linear, act, ..., Linear`` (sharing its parameters).

        Every activation must be the same function (see ``activations.ACTIVATIONS``), the last
        module must be a Linear, and either all or none of the Linear layers have a bias.
        Raises ``TypeError`` for a module the fused path cannot take, naming it ("ELU at index
        1 of the Sequential"): ``backend="auto"`` repeats that in its fallback warning.
        """
        if not isinstance(sequential, nn.Sequential):
            raise TypeError(f"sequential: expected nn.Sequential, got {type(sequential).__name__}")
        modules = list(sequential)
        for i, module in enumerate(modules):
            where = f"sequential[{i}]: {type(module).__name__} at index {i} of the Sequential"
            if i % 2 == 0 and type(module) is not nn.Linear:
                raise TypeError(
                    f"{where} is not an nn.Linear (the fused backends take Linear, activation, "
                    "Linear, ..., Linear)"
                )
            if i % 2 == 1 and activation_from_module(module) is None:
                raise TypeError(
                    f"{where} is an unsupported activation; the fused backends take "
                    f"{', '.join(sorted(ACTIVATIONS))} (sobolev_kernels.ACTIVATIONS)"
                )
        if not modules or len(modules) % 2 == 0:
            raise TypeError(
                "sequential: expected Linear, activation, Linear, ..., Linear "
                f"(an odd number of modules), got {len(modules)} modules"
            )
        linears = modules[0::2]
        acts = modules[1::2]
        for a, b in zip(linears, linears[1:]):
            if a.out_features != b.in_features:
                raise TypeError(
                    f"sequential: Linear widths do not chain ({a.out_features} -> {b.in_features})"
                )
        if len({layer.bias is None for layer in linears}) > 1:
            raise TypeError("sequential: either all or none of the Linear layers need a bias")
        found = [activation_from_module(module) for module in acts]
        if len(set(found)) > 1:
            raise TypeError(
                "sequential: all activations must be the same, got "
                f"{sorted({a.name for a in found})}"
            )
        mlp = cls.__new__(cls)
        nn.Module.__init__(mlp)
        mlp._init(nn.ModuleList(linears), found[0] if found else get_activation("identity"))
        return mlp

    def to_sequential(self) -> nn.Sequential:
        """An ``nn.Sequential`` computing the same function (sharing the parameters)."""
        modules: list[nn.Module] = []
        for i, layer in enumerate(self.layers):
            if i:
                modules.append(self.activation.module())
            modules.append(layer)
        return nn.Sequential(*modules)

    def _linears(self) -> list[nn.Linear]:
        # The modules' own dicts: nn.Module.__getattr__ takes about a microsecond a lookup, and
        # a training step asked for the layers and their parameters dozens of times (5.6 us
        # for weights() through it, 0.9 us for both lists here).
        return list(self._modules["layers"]._modules.values())

    @property
    def in_features(self) -> int:
        return self._linears()[0].in_features

    @property
    def out_features(self) -> int:
        return self._linears()[-1].out_features

    @property
    def num_layers(self) -> int:
        return len(self._modules["layers"])

    @property
    def widths(self) -> list[int]:
        """``[d, n_1, ..., n_{L-1}, m]``."""
        layers = self._linears()
        return [layers[0].in_features] + [layer.out_features for layer in layers]

    @property
    def has_bias(self) -> bool:
        return _parameter(self._linears()[0], "bias") is not None

    def weights(self) -> list[Tensor]:
        return [_parameter(layer, "weight") for layer in self._linears()]

    def biases(self) -> list[Tensor] | None:
        biases = [_parameter(layer, "bias") for layer in self._linears()]
        return biases if biases[0] is not None else None  # (has_bias, without a second walk)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, layer in enumerate(self.layers):
            if i:
                h = self.activation.fn(h)
            h = layer(h)
        return h

    def extra_repr(self) -> str:
        slope = (
            f", negative_slope={self.activation.negative_slope}"
            if self.activation.name == "leaky_relu"
            else ""
        )
        return f"widths={self.widths}, activation={self.activation.name!r}{slope}"


def _parameter(layer: nn.Module, name: str) -> Tensor | None:
    """``getattr(layer, name)`` for a registered parameter, without Module.__getattr__; a
    parametrized one (torch.nn.utils.parametrize: a property now) through getattr."""
    parameters = layer._parameters
    return parameters[name] if name in parameters else getattr(layer, name)


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
