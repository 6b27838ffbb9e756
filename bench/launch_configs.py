"""GPU time of the Triton kernels under launch configs of our choosing: the tuner's candidates
and ones it does not offer, for the forward (the chunked kernel of forward.py and the
resident one of forward_resident.py) and the backward kernel (backward.py). One GPU run
settles which tiles are worth offering.

    python -m bench.launch_configs --configs M S --precisions fp32 bf16 --kernels fwd bwd
    python -m bench.launch_configs --compile-only 3     # case 3 only, at a small batch
    python -m bench.launch_configs --dry-run            # the cases

A forward case (saving its pre-activations, as a training step's forward does) and a
backward case (a whole training step, only the backward kernel's config varying: the
forward's static launch, the weight gradients by GEMM) are captured in a CUDA graph and
replayed, so the times are the GPU's without the host. Each checks against the reference
backend in fp64 on the same problem: the loss (forward), the parameters' gradients
(backward), as a relative error in the row. ``--jobs N`` first runs every case at a small
batch in N processes at once, so Triton's disk cache serves the timing process.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.limits import widths
from bench.step import CONFIGS

ROOT = Path(__file__).resolve().parents[1]
REPLAYS = 10
KERNELS = ("fwd", "bwd")
# what a backward case fixes, so that only the backward kernel's launch config varies
BACKWARD_ENV = {"SOBOLEV_TRITON_BACKWARD": "separate", "SOBOLEV_TRITON_WEIGHT_GRAD": "gemm",
                "SOBOLEV_AUTOTUNE": "0"}  # fmt: skip


def cases(configs: list[str], precisions: list[str], kernels=KERNELS) -> list[tuple]:
    """(config, precision, kernel, LaunchConfig), kernel "chunked" or "resident" (forwards,
    for "fwd" in ``kernels``) or "bwd" or "bwd_resident", in the order of ``kernels``: the
    tuner's candidates (with the column-block tiles), 32- and 64-row tiles with column
    blocks (not ones whose TF32 dots two warpgroups share: they fault), the forward's
    activated twins of those that activate a layer more than once, and the resident
    kernels' configs (the forward's also 128 rows on 8 warps; the backward's those with
    every direction in one pass)."""
    from sobolev_kernels.triton.layout import CHUNK, LaunchConfig, Layout, tf32_splits_rows

    out = {kernel: [] for kernel in kernels}
    for name in configs:
        sizes = CONFIGS[name]
        shape = widths(sizes["dim"], sizes["width"], sizes["layers"], sizes["out"])
        layout = Layout(tuple(shape), sizes["k"], sizes["order"])
        for precision in precisions:
            size = 4 if precision == "fp32" else 2
            tc = "tf32x3" if precision == "fp32" else "ieee"
            chunked = layout.launch_configs(size, 227 * 1024, "ieee", tc, wide=True)
            for rows, warps, cols in ((32, 4, 32), (32, 8, 0), (64, 4, 64)):
                group = layout.group(rows, warps, cols)
                config = LaunchConfig(rows, warps, CHUNK, group, tc, cols)
                if not tf32_splits_rows(config):
                    chunked.append(config)
            resident = layout.resident_configs(size, 227 * 1024, tc)
            if resident:
                group = layout.group(128, 8, budget=4)
                resident.append(LaunchConfig(128, 8, CHUNK, group, tc, resident=True))
            if "fwd" in kernels:
                out["fwd"] += [(name, precision, "chunked", c) for c in chunked]
                # the forms that store their activated layers (choices._forward_activated)
                out["fwd"] += [(name, precision, "chunked", c._replace(activated=True))
                               for c in chunked if layout.activates_per_pass(c)]  # fmt: skip
                out["fwd"] += [(name, precision, "resident", c) for c in resident]
            if "bwd" in kernels:
                out["bwd"] += [(name, precision, "bwd", c) for c in chunked]
                backward = layout.resident_configs(size, 227 * 1024, tc, "bwd")
                out["bwd"] += [(name, precision, "bwd_resident", c) for c in backward]
    # in the order of ``kernels`` (a run cut short has timed the first ones), no repeats
    return list(dict.fromkeys(case for kernel in kernels for case in out[kernel]))


_EXPECTED: dict[tuple, object] = {}
_PROBLEMS: dict[tuple, object] = {}


def run_case(case: tuple, batch: int | None = None, device: str = "cuda") -> str:
    """One case's row: median replay ms and the relative error against fp64 (off CUDA, the
    interpreter's check of this script: wall-clock ms of plain calls)."""
    from bench.providers import make_problem, set_precision

    name, precision, kernel, config = case
    set_precision(precision)
    sizes = {**CONFIGS[name], **({"batch": batch} if batch else {})}
    problem_key = (name, precision, batch, device)
    if problem_key not in _PROBLEMS:  # one per point: the cases of a point share it
        _PROBLEMS.clear()
        _PROBLEMS[problem_key] = make_problem(**sizes, precision=precision, device=device)
    p = _PROBLEMS[problem_key]
    if kernel.startswith("bwd"):
        ms, error = _backward_case(p, config, (name, precision, batch, "grads"), device)
    else:
        ms, error = _forward_case(p, config, (name, precision, batch), device)
    return f"{ms:.4f} ms  rel. error {error:.1e}"


def _forward_case(p, config, key: tuple, device: str) -> tuple[float, float]:
    import sobolev_kernels as sk
    from sobolev_kernels import fused
    from sobolev_kernels.triton import launch, plans
    from sobolev_kernels.validation import build_problem

    _launch_config(launch)  # the real one kept, before it is replaced
    launch._launch_config = lambda *args, **kwargs: config  # config.resident: which kernel
    plans.clear_plans()  # (a plan of this shape would keep the config it was made with)
    problem = build_problem(
        p.model, p.x, p.y, target_grad=None, target_jvp=p.target_jvp, teacher=None,
        directions=p.directions, num_directions=1, alpha=1.0, beta=1.0, generator=None,
        backend="triton",
    )  # fmt: skip
    args = list(fused.forward_arguments(problem, with_targets=True))
    args[-1] = True  # save the pre-activations, as a training step's forward does

    def forward() -> torch.Tensor:
        return launch.sobolev_forward(*args)[0]

    loss = float(forward())
    times = _replay_ms(forward) if device == "cuda" else _wall_ms(forward)
    if key not in _EXPECTED:
        f64 = torch.float64
        with torch.no_grad():
            _EXPECTED[key] = float(sk.sobolev_loss(
                copy.deepcopy(p.model).to(f64), p.x.to(f64), p.y.to(f64),
                target_jvp=p.target_jvp.to(f64), directions=p.directions.to(f64),
                backend="reference",
            ))  # fmt: skip
    return statistics.median(times), abs(loss - _EXPECTED[key]) / abs(_EXPECTED[key])


def _backward_case(p, config, key: tuple, device: str) -> tuple[float, float]:
    from bench.providers import _graphed, step_fn
    from sobolev_kernels.triton import launch, plans

    os.environ.update(BACKWARD_ENV)
    real = _launch_config(launch)

    def backward_config(kernel, *args, **kwargs):
        return config if kernel == "bwd" else real(kernel, *args, **kwargs)

    launch._launch_config = backward_config
    plans.clear_plans()  # (a plan of this shape would keep the config it was made with)
    step = step_fn("triton", p)
    if device == "cuda":
        step = _graphed(step, p.x.device)
    step()
    grads = [q.grad.detach().double().clone() for q in p.model.parameters()]
    times = _replay_ms(step, graphed=True) if device == "cuda" else _wall_ms(step)
    if key not in _EXPECTED:  # on an fp64 copy (the problem serves the point's other cases)
        f64 = dataclasses.replace(
            p, model=copy.deepcopy(p.model).double(), x=p.x.double(), y=p.y.double(),
            directions=p.directions.double(), target_jvp=p.target_jvp.double(),
        )  # fmt: skip
        step_fn("torch_func", f64)()
        _EXPECTED[key] = [q.grad.detach().clone() for q in f64.model.parameters()]
    error = max(float((g - e).norm() / e.norm()) for g, e in zip(grads, _EXPECTED[key]))
    return statistics.median(times), error


_REAL: dict[str, object] = {}


def _launch_config(launch):
    """The launchers' own ``_launch_config`` (a case replaces it; the first call keeps it)."""
    return _REAL.setdefault("launch_config", launch._launch_config)


def _replay_ms(fn, graphed: bool = False) -> list[float]:
    """GPU ms of REPLAYS replays of ``fn`` captured in a CUDA graph (``graphed``: ``fn``
    replays one already)."""
    replay = fn
    if not graphed:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        replay = graph.replay
    times = []
    for _ in range(REPLAYS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def _wall_ms(fn) -> list[float]:
    start = time.perf_counter()
    fn()
    return [1e3 * (time.perf_counter() - start)]


def _label(case: tuple) -> str:
    name, precision, kernel, c = case
    return (f"{name} {precision} {kernel:12s} rows {c.rows:3d} warps {c.warps:2d} group {c.group} "
            f"cols {c.cols:3d} {c.precision}" + (" activated" if c.activated else ""))  # fmt: skip


def _spawn(argv: list[str], seconds: float) -> tuple[int, str]:
    """A process of this module: (return code, its output's last line)."""
    cmd = [sys.executable, "-m", "bench.launch_configs", *argv]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return 124, f"TIMEOUT after {seconds:.0f} s"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def _context_lost() -> bool:
    try:
        torch.cuda.synchronize()
        return False
    except RuntimeError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["M", "S"], choices=sorted(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--jobs", type=int, default=0, help="compile in this many processes")
    parser.add_argument("--compile-only", type=int, help="run case N at a small batch")
    parser.add_argument("--first", type=int, default=0, help="time from case N on")
    parser.add_argument("--seconds", type=float, default=120.0, help="per compile")
    parser.add_argument("--dry-run", action="store_true", help="list the cases, run none")
    args = parser.parse_args(argv)
    todo = cases(args.configs, args.precisions, args.kernels)
    if args.dry_run:
        print("\n".join(f"[{i:2d}] {_label(case)}" for i, case in enumerate(todo)))
        return 0
    common = ["--configs", *args.configs, "--precisions", *args.precisions, "--kernels",
              *args.kernels]  # fmt: skip
    if args.compile_only is not None:
        print(run_case(todo[args.compile_only], batch=4099))
        return 0
    if args.jobs and args.first == 0:
        start = time.monotonic()
        with ThreadPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(
                lambda i: _spawn(common + ["--compile-only", str(i)], args.seconds),
                range(len(todo)),
            ))  # fmt: skip
        print(f"compiled {len(todo)} cases in {time.monotonic() - start:.0f} s", flush=True)
        for i, (rc, last) in enumerate(runs):
            if rc:
                print(f"[{i:2d}] {_label(todo[i])}: compile run failed: {last}", flush=True)
    # timed here, one after another; after a case that ends the CUDA context, the rest go on
    # in a new process
    failed = 0
    for i in range(args.first, len(todo)):
        try:
            result = run_case(todo[i])
        except Exception as e:  # the row says what failed; the other cases go on
            failed += 1
            result = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(f"[{i:2d}] {_label(todo[i])}: {result}", flush=True)
        if failed and _context_lost():
            if i + 1 < len(todo):
                print("(CUDA context lost: the rest in a new process)", flush=True)
                rc = subprocess.call([sys.executable, "-m", "bench.launch_configs", *common,
                                      "--first", str(i + 1)], cwd=ROOT)  # fmt: skip
                return 1 if rc or failed else 0
            break
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
