"""The same model and Sobolev loss in JAX, ``jax.jit``-compiled (used only when jax is installed).

JAX composes forward mode (``jax.jvp``, vmapped over directions) with reverse mode under one
compiler, which is the strongest "what users could write" baseline outside PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ACTIVATIONS = {
    "tanh": lambda jnp, z: jnp.tanh(z),
    "relu": lambda jnp, z: jnp.maximum(z, 0),
    "sigmoid": lambda jnp, z: 1 / (1 + jnp.exp(-z)),
    "sin": lambda jnp, z: jnp.sin(z),
}


def jax_step_fn(p, mode: str) -> Callable[[], object]:
    """A closure running the JAX loss (``forward``) or loss + gradients (``step``)."""
    import jax
    import jax.numpy as jnp

    if p.order != 1:
        raise ValueError("jax provider: order 2 is not mirrored in JAX")
    act_name = p.model.activation.name
    if act_name not in ACTIVATIONS:
        raise ValueError(f"jax provider: activation {act_name} not mirrored")
    act = ACTIVATIONS[act_name]
    on_gpu = p.x.is_cuda
    device = jax.devices("gpu" if on_gpu else "cpu")[0]

    def put(t):
        return jax.device_put(np.asarray(t.detach().float().cpu()), device)

    params = [(put(layer.weight), put(layer.bias)) for layer in p.model.layers]
    x, y, v, g = put(p.x), put(p.y), put(p.directions), put(p.target_jvp)

    def mlp(params, x):
        h = x
        for i, (w, b) in enumerate(params):
            if i:
                h = act(jnp, h)
            h = h @ w.T + b
        return h

    def loss(params, x, y, v, g):
        f = mlp(params, x)

        def one(vk):  # (B, d) -> (B, m): rows are independent, so this is per-row J v
            return jax.jvp(lambda t: mlp(params, t), (x,), (vk,))[1]

        u = jax.vmap(one, in_axes=1, out_axes=1)(v)  # (B, K, m)
        return jnp.mean((f - y) ** 2) + jnp.mean((u - g) ** 2)

    fn = jax.jit(loss if mode == "forward" else jax.value_and_grad(loss))

    def run():
        return jax.block_until_ready(fn(params, x, y, v, g))

    return run
