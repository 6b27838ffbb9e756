"""Host time of a Triton training step on the GPU code path, measured without a GPU.

    python investigations/triton_host_time.py                  # config M at B = 1024
    PYTHONPATH=.venv/triton-3.6.0 python investigations/triton_host_time.py --profile

The H200 run of 2026-11-27 found the Triton step host-bound (2.3-2.8 ms of CPU time a step).
Here Triton's driver is faked (device 0, stream 0, an sm_90 target) and every kernel is a
no-op that is "compiled" once (``tests/fake_triton_driver.py``). So a step runs all of our
Python (the API's checks, the autograd path, the launch plans) and Triton's launch path
(binder and cache key on a kernel's first launches, then ``direct_launch``'s), on CPU
tensors. Only the C launcher and the kernels are missing. The tuner is consulted as on a GPU,
with every candidate timed at 1 ms, so it keeps the first. Compare runs of this script on one
machine. The number is not the GPU machine's host time: that is `bench/host_profile.py`'s.

Where the machine's timings wander (a shared VM: 1.3-2.4 ms for one tree, 2026-11-27), count
instructions instead, which repeat exactly: run it under `valgrind --tool=callgrind` with
`--steps 5` and `--steps 25` (25 and 85 steps in all) and divide the difference by 60.
Keep torch on one thread, as here: a thread pool's spin-waits are counted too (with two
threads they added 0.7-1.9 M instructions a step, and changed from run to run).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fake_triton_driver  # noqa: E402  (before torch's and triton's first import)

os.environ.setdefault("SOBOLEV_TRITON_WEIGHT_GRAD", "splitk")  # Triton kernels, not CPU GEMMs

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="also cProfile, by own time")
    parser.add_argument("--floor", action="store_true",
                        help="the step as on a GPU, and what it cannot go below")  # fmt: skip
    args = parser.parse_args(argv)
    fake_triton_driver.install()

    import sobolev_kernels as sk

    fake_triton_driver.as_gpu_backend()

    torch.manual_seed(0)
    b, d, width, m, k = args.batch, 16, 128, 8, 2  # config M's shape
    model = sk.SobolevMLP(d, width, m, 4)
    x, y = torch.randn(b, d), torch.randn(b, m)
    v, g = sk.sample_directions(b, k, d), torch.randn(b, k, m)

    def step():
        for p in model.parameters():
            p.grad = None
        sk.sobolev_loss(model, x, y, target_jvp=g, directions=v, backend="triton").backward()

    torch.set_num_threads(1)  # (the CPU-only checks' reductions: no thread pool's noise)
    if args.floor:  # the zero-direction check reads CPU tensors only: not a GPU step's work
        from sobolev_kernels import validation

        validation._check_nonzero = lambda *args, **kwargs: None
    for _ in range(10):
        step()
    best = _best_ms(step, args.steps)
    import triton

    print(f"triton {triton.__version__}: {best:.3f} ms of host time a step (no-op kernels)")
    if args.floor:
        _floor(step, model, best, args.steps)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(lambda: [step() for _ in range(args.steps)])
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return 0


def _best_ms(fn, steps: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps * 1e3)
    return best


def _floor(step, model, step_ms: float, steps: int) -> None:
    """What a step's host time cannot go below in this design: its Triton launches alone
    (recorded from one step, replayed as the step launches them: ``direct_launch``, or
    Triton's own path with SOBOLEV_TRITON_DIRECT_LAUNCH=0) and an autograd Function with
    nothing in it over the same parameters, forward and backward. The rest is our Python:
    checks, launch plans, allocations, the op's plumbing."""
    from sobolev_kernels.triton.direct_launch import Launcher

    calls, launch = [], Launcher.__call__

    def record(*args):
        calls.append(args)
        return launch(*args)

    Launcher.__call__ = record
    try:
        step()
    finally:
        Launcher.__call__ = launch
    params = list(model.parameters())

    class Nothing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *tensors):
            return tensors[0].new_zeros(())

        @staticmethod
        def backward(ctx, grad):
            return (None,) * len(params)

    def launches():
        for args in calls:
            launch(*args)

    def autograd():
        for p in params:
            p.grad = None
        Nothing.apply(*params).backward()

    launch_ms, autograd_ms = _best_ms(launches, steps), _best_ms(autograd, steps)
    floor = launch_ms + autograd_ms
    print(f"floor {floor:.3f} ms: {len(calls)} launches {launch_ms:.3f} ms, an empty autograd "
          f"Function {autograd_ms:.3f} ms; the rest {step_ms - floor:.3f} ms "
          f"({(step_ms - floor) / step_ms:.0%} of the step)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
