"""The activation table of ``sobolev_kernels.activations`` as Triton device functions.

``act_series(z, slope, ACT)`` returns ``(s, s', s'', s''')`` of an fp32 tile; ``ACT`` is
``Activation.kernel_id`` (a constexpr, so each kernel compiles one branch, and results a
kernel does not use are removed by the compiler). The formulas are the torch table's,
including torch's conventions (relu'(0) = 0, softplus linear above 20); the tests compare
every backend with the reference to hold them to it.

The ids and smoothness come from the Python table (one table: ``tests/test_activations.py``
also ties ``csrc/activations.h`` to it). Kernels read module-level values only as
``tl.constexpr``; float constants appear as literals: gelu_tanh's c = sqrt(2 / pi) =
0.7978845608028654 and a = 0.044715, gelu's sqrt(1 / 2) = 0.7071067811865476 and
1 / sqrt(2 pi) = 0.3989422804014327, softplus's threshold 20.
"""

import triton
import triton.language as tl

from ..activations import ACTIVATIONS

_ID = {name: tl.constexpr(a.kernel_id) for name, a in ACTIVATIONS.items()}
_TANH, _SIGMOID, _SOFTPLUS, _SILU = _ID["tanh"], _ID["sigmoid"], _ID["softplus"], _ID["silu"]
_SIN, _GELU, _RELU, _LEAKY_RELU = _ID["sin"], _ID["gelu"], _ID["relu"], _ID["leaky_relu"]
_GELU_TANH = _ID["gelu_tanh"]
# kernel ids whose s'' is not identically zero
SMOOTH = tuple(a.kernel_id for a in ACTIVATIONS.values() if a.smooth)


@triton.jit
def _tanh(z):
    # exp of a non-positive argument never overflows; tl has no tanh of its own
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def act_series(z, slope, ACT: tl.constexpr):
    """(s, s', s'', s''') of z (fp32)."""
    if ACT == _TANH:
        s = _tanh(z)
        s1 = 1.0 - s * s
        s2 = -2.0 * s * s1
        s3 = s1 * (6.0 * s * s - 2.0)
    elif ACT == _SIGMOID:
        s = tl.sigmoid(z)
        s1 = s * (1.0 - s)
        s2 = s1 * (1.0 - 2.0 * s)
        s3 = s1 * (1.0 - 6.0 * s + 6.0 * s * s)
    elif ACT == _SOFTPLUS:  # softplus, linear above the threshold like torch's
        linear = z > 20.0
        # max(z, 0) + log(1 + exp(-|z|)): no overflow for large |z|
        s = tl.where(linear, z, tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z))))
        p = tl.sigmoid(z)
        s1 = tl.where(linear, 1.0, p)
        s2 = tl.where(linear, 0.0, p * (1.0 - p))
        s3 = tl.where(linear, 0.0, p * (1.0 - p) * (1.0 - 2.0 * p))
    elif ACT == _SILU:
        p = tl.sigmoid(z)
        dp = p * (1.0 - p)
        q = 1.0 - 2.0 * p
        s = z * p
        s1 = p * (1.0 + z * (1.0 - p))
        s2 = dp * (2.0 + z * q)
        s3 = dp * (q * (3.0 + z * q) - 2.0 * z * dp)
    elif ACT == _SIN:
        s = tl.sin(z)
        s1 = tl.cos(z)
        s2 = -s
        s3 = -s1
    elif ACT == _GELU:  # exact: s = z Phi(z), Phi' = phi, phi' = -z phi (phi: normal pdf)
        cdf = 0.5 * (1.0 + tl.math.erf(z * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * z * z)
        s = z * cdf
        s1 = cdf + z * pdf
        s2 = pdf * (2.0 - z * z)
        s3 = pdf * z * (z * z - 4.0)
    elif ACT == _GELU_TANH:  # s = z (1 + T) / 2, T = tanh(w), w = c (z + a z^3)
        z2 = z * z
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z2 * z))
        sech2 = 1.0 - t * t
        dw = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z2)
        d2w = 6.0 * 0.7978845608028654 * 0.044715 * z
        s = 0.5 * z * (1.0 + t)
        s1 = 0.5 * (1.0 + t) + 0.5 * z * sech2 * dw
        # s'' = S P, P = w' + z (w'' - 2 T w'^2) / 2, S = 1 - T^2
        p = dw + 0.5 * z * (d2w - 2.0 * t * dw * dw)
        s2 = sech2 * p
        # s''' = S (P' - 2 T w' P), P' = 3 w''/2 - T w'^2 + z (w''' - 2 S w'^3 - 4 T w' w'')/2
        d3w = 6.0 * 0.7978845608028654 * 0.044715
        dp = (
            1.5 * d2w
            - t * dw * dw
            + 0.5 * z * (d3w - 2.0 * sech2 * dw * dw * dw - 4.0 * t * dw * d2w)
        )
        s3 = sech2 * (dp - 2.0 * t * dw * p)
    elif ACT == _RELU:  # relu (relu'(0) = 0 as in torch)
        s = tl.maximum(z, 0.0)
        s1 = tl.where(z > 0, 1.0, 0.0)
        s2 = tl.zeros_like(z)
        s3 = s2
    elif ACT == _LEAKY_RELU:
        s = tl.where(z > 0, z, slope * z)
        s1 = tl.where(z > 0, 1.0, slope)
        s2 = tl.zeros_like(z)
        s3 = s2
    else:  # identity
        s = z
        s1 = tl.full(z.shape, 1.0, tl.float32)
        s2 = tl.zeros_like(z)
        s3 = s2
    return s, s1, s2, s3
