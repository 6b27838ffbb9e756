"""sobolev_kernels: fused Sobolev training (values + projected derivatives) for PyTorch MLPs.

import sobolev_kernels as sk
model = sk.SobolevMLP(2, 64, 1, num_layers=3)
loss = sk.sobolev_loss(model, x, y, target_grad=dy_dx, num_directions=2)
"""

from . import functions, tuning
from .activations import ACTIVATIONS, Sin
from .api import SobolevLoss, SobolevObjective, mlp_jvp, sobolev_loss
from .backends import SobolevFallbackWarning, available_backends
from .directions import full_directions, sample_directions
from .mlp import SobolevMLP

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Sin",
    "SobolevFallbackWarning",
    "SobolevLoss",
    "SobolevMLP",
    "SobolevObjective",
    "available_backends",
    "full_directions",
    "functions",
    "mlp_jvp",
    "sample_directions",
    "sobolev_loss",
    "tuning",
]
