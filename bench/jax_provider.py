"""The same model and Sobolev loss in JAX, ``jax.jit``-compiled (used only when jax is installed).

JAX composes forward mode (``jax.jvp``, vmapped over directions) with reverse mode under one
compiler, which is the strongest "what users could write" baseline outside PyTorch. Its
products follow the problem's precision class: ``Precision.HIGHEST`` for fp32 (JAX's default
runs fp32 products in TF32 on Ampere and Hopper), the default for tf32, bf16 and fp16 (whose
arrays are stored in that dtype).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

# JAX takes 75% of GPU memory at its first use unless told otherwise; the torch providers
# timed in the same process need it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

ACTIVATIONS = {
    "tanh": lambda jnp, z: jnp.tanh(z),
    "relu": lambda jnp, z: jnp.maximum(z, 0),
    "sigmoid": lambda jnp, z: 1 / (1 + jnp.exp(-z)),
    "sin": lambda jnp, z: jnp.sin(z),
}
DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


_last: dict = {}  # the newest problem's builds: its agreement check and timing share a compile


def _build(p, mode: str):
    """(the jitted function, its arguments) for a problem: loss, or (loss, grads) for a step."""
    if _last.get("problem") is not p:
        _last.clear()
        _last["problem"] = p
    if mode not in _last:
        _last[mode] = _compile(p, mode)
    return _last[mode]


def _compile(p, mode: str):
    import jax
    import jax.numpy as jnp

    if p.order != 1:
        raise ValueError("jax provider: order 2 is not mirrored in JAX")
    act_name = p.model.activation.name
    if act_name not in ACTIVATIONS:
        raise ValueError(f"jax provider: activation {act_name} not mirrored")
    act = ACTIVATIONS[act_name]
    device = jax.devices("gpu" if p.x.is_cuda else "cpu")[0]
    dtype = getattr(jnp, DTYPES[p.precision])
    precision = jax.lax.Precision.HIGHEST if p.precision == "fp32" else None

    def put(t):
        return jax.device_put(np.asarray(t.detach().float().cpu()), device).astype(dtype)

    params = [(put(layer.weight), put(layer.bias)) for layer in p.model.layers]
    x, y, v, g = put(p.x), put(p.y), put(p.directions), put(p.target_jvp)

    def mlp(params, x):
        h = x
        for i, (w, b) in enumerate(params):
            if i:
                h = act(jnp, h)
            h = jnp.matmul(h, w.T, precision=precision) + b  # its JVP keeps the precision
        return h

    def mse(a, b):  # accumulated in fp32, as torch's reductions of bf16 tensors are
        return jnp.mean(jnp.square((a - b).astype(jnp.float32)))

    def loss(params, x, y, v, g):
        f = mlp(params, x)

        def one(vk):  # (B, d) -> (B, m): rows are independent, so this is per-row J v
            return jax.jvp(lambda t: mlp(params, t), (x,), (vk,))[1]

        u = jax.vmap(one, in_axes=1, out_axes=1)(v)  # (B, K, m)
        return mse(f, y) + mse(u, g)

    fn = jax.jit(loss if mode == "forward" else jax.value_and_grad(loss))
    return fn, (params, x, y, v, g)


def jax_step_fn(p, mode: str) -> Callable[[], object]:
    """A closure running the JAX loss (``forward``) or loss + gradients (``step``) and waiting
    for it; ``.issue`` runs it without waiting, ``.wait`` waits for what it returned."""
    import jax

    fn, args = _build(p, mode)

    def run():
        return jax.block_until_ready(fn(*args))

    run.issue = lambda: fn(*args)
    run.wait = jax.block_until_ready
    return run


def jax_loss_and_grads(p) -> list[torch.Tensor]:
    """[loss, *gradients in the order of ``p.model.parameters()``] as fp32 torch tensors."""
    import jax

    fn, args = _build(p, "step")
    value, grads = jax.block_until_ready(fn(*args))
    flat = [value] + [t for pair in grads for t in pair]  # (weight, bias) per layer
    return [torch.from_numpy(np.array(t, dtype=np.float32)).to(p.x.device) for t in flat]
