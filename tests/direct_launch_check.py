"""Checks that ``direct_launch`` gives each kernel's launcher exactly what Triton's path does.

Run by ``tests/test_direct_launch.py`` in a process of its own (Triton's GPU launch path,
faked by ``fake_triton_driver``, cannot share a process with the interpreter). Per scenario
(a problem and SOBOLEV_* settings) it records one training step's launcher calls with
SOBOLEV_TRITON_DIRECT_LAUNCH=0 and with it on, after warm-up steps, and compares them call
by call: kernel, grid, stream, function, metadata, hooks, and every argument (tensors by
shape, strides, dtype and which input they are, freshly allocated ones as such). With it on,
Triton's own launch path must not run at all in the recorded step. Prints one line per
scenario and exits nonzero on the first difference.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_triton_driver  # noqa: E402  (before torch's and triton's first import)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from triton.runtime import jit  # noqa: E402

SCENARIOS = {
    "order 1, targets and values": dict(order=1, env={}),
    "order 1, persistent backward": dict(order=1, env={"SOBOLEV_TRITON_BACKWARD": "persistent"}),
    "order 1, recomputed in row chunks": dict(
        order=1, env={"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_TRITON_RECOMPUTE_ROWS": "24"}
    ),
    "order 1, no bias, bf16, gemm weight gradients": dict(
        order=1, bias=False, dtype=torch.bfloat16, env={"SOBOLEV_TRITON_WEIGHT_GRAD": "gemm"}
    ),
    "order 2, Hessian targets": dict(order=2, env={}),
}


def _step(sk, model, inputs: dict, order: int):
    for p in model.parameters():
        p.grad = None
    loss = sk.sobolev_loss(model, backend="triton", order=order, **inputs)
    loss.backward()


def _normalise(value, known: dict):
    """A launcher argument as comparable data: tensors by their layout and which input they
    are (or a fresh allocation), tuples element by element, hooks by identity."""
    if isinstance(value, torch.Tensor):
        which = known.get(value.data_ptr(), "fresh") if value.numel() else "empty"
        return ("tensor", tuple(value.shape), value.stride(), value.dtype, which)
    if isinstance(value, tuple):
        return tuple(_normalise(v, known) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return (type(value), value)
    return ("object", id(value))


def _record(sk, model, inputs: dict, order: int, direct: str) -> tuple[list, int]:
    """(the launcher calls of a step after two warm-up steps, Triton launches in it)."""
    os.environ["SOBOLEV_TRITON_DIRECT_LAUNCH"] = direct
    for _ in range(2):
        _step(sk, model, inputs, order)
    runs, run = [], jit.JITFunction.run

    def counted(self, *args, **kwargs):
        runs.append(self)
        return run(self, *args, **kwargs)

    fake_triton_driver.launches = []
    jit.JITFunction.run = counted
    try:
        _step(sk, model, inputs, order)
    finally:
        jit.JITFunction.run = run
    calls, fake_triton_driver.launches = fake_triton_driver.launches, None
    return calls, len(runs)


def check(name: str, order: int, env: dict, bias: bool = True, dtype=torch.float32) -> None:
    import sobolev_kernels as sk
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import direct_launch

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        torch.manual_seed(0)
        b, d, m, k = 40, 3, 2, 2
        model = sk.SobolevMLP(d, 8, m, 3, bias=bias, dtype=dtype)
        x, y = torch.randn(b, d, dtype=dtype), torch.randn(b, m, dtype=dtype)
        inputs = dict(x=x, y=y, directions=sk.sample_directions(b, k, d, dtype=dtype))
        second = "target_hvp2" if order == 2 else None
        inputs["target_jvp"] = torch.randn(b, k, m, dtype=dtype)
        if second:
            inputs[second] = torch.randn(b, k, m, dtype=dtype)
        known = {t.data_ptr(): n for n, t in inputs.items()}
        known.update({p.data_ptr(): n for n, p in model.named_parameters()})
        tuning.clear()
        direct_launch.clear()
        expected, _ = _record(sk, model, inputs, order, "0")
        got, triton_runs = _record(sk, model, inputs, order, "1")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    want = [_normalise(c, known) for c in expected]
    have = [_normalise(c, known) for c in got]
    if not want:
        raise SystemExit(f"{name}: no launches recorded")
    if triton_runs:
        raise SystemExit(f"{name}: {triton_runs} launches took Triton's path in the direct step")
    if len(want) != len(have):
        raise SystemExit(f"{name}: {len(want)} launches through Triton, {len(have)} direct")
    for i, (w, h) in enumerate(zip(want, have)):
        if w != h:
            w, h = w[1], h[1]  # (the launcher's arguments: the names are equal)
            j = next((j for j, (a, b) in enumerate(zip(w, h)) if a != b), min(len(w), len(h)))
            raise SystemExit(
                f"{name}: launch {i} ({expected[i][0]}) differs at argument {j} "
                f"of {len(w)}: {w[j : j + 1]} through Triton, {h[j : j + 1]} direct"
            )
    print(f"{name}: {len(want)} launches, identical")


def main() -> int:
    fake_triton_driver.install()
    import sobolev_kernels  # noqa: F401

    fake_triton_driver.as_gpu_backend()
    for name, scenario in SCENARIOS.items():
        check(name, **scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
