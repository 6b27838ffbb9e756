"""Microbenchmarks: a full training step and the forward alone, for every provider.

    python -m bench.step                    # configs S, M, L and all sweeps (GPU sizes; CPU scaled)
    python -m bench.step --quick            # tiny sizes, under a minute on CPU (run in CI)
    python -m bench.step --configs M --sweeps width --precisions fp32 bf16
    python -m bench.step --dry-run ...      # the plan, measuring nothing

Providers (bench/providers.py): eager_autograd, torch_func, torch_compile (records its error
where it fails), plain_step (first-order step on (1 + K) B rows: the floor), jax_jit (when jax
is installed) and every available backend of ours. All share weights, inputs, directions and
targets, run in one precision class (fp32-accurate, tf32, bf16, fp16: providers.PRECISIONS),
and are checked against torch_func before timing. Metrics per provider and point: time,
tflops, host (the CPU time to issue a step), memory (GPU), launches (named configs).

Rows go to <out-dir>/<device>.csv, a new temporary folder unless --out-dir names one: a run
never writes into committed results by accident. Appending to a CSV that holds a config name
at other sizes is refused, and --quick never writes under bench/results (but its tmp/).
bench/report.py renders tables and plots from the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.goals import GOALS
from bench.limits import SIZE_COLUMNS
from bench.providers import (
    COMPILED,
    GRAPHED,
    PRECISIONS,
    STEP_ONLY,
    TRITON_VARIANTS,
    adopt_compile_failure,
    check_agreement,
    compile_failure,
    make_problem,
    providers_available,
    runs_at,
    set_precision,
    step_flops,
    step_fn,
)
from bench.timing import count_launches, host_ms, peak_memory_mb, time_ms
from bench.tuning_table import write_tuning_table
from sobolev_kernels import tuning as sk_tuning

COLUMNS = ["provider", "config", "mode", "metric", "unit", "p20", "p50", "p80",
           "device", "torch", "triton", "commit", "date",
           "precision", *SIZE_COLUMNS, "dtype"]  # fmt: skip

CONFIGS = {
    "S": dict(batch=2**18, dim=2, width=64, layers=4, out=1, k=1, order=1),
    "M": dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2, order=1),
    "L": dict(batch=2**14, dim=64, width=256, layers=6, out=16, k=4, order=1),
}
# Each sweep varies one knob of config M (precision is an axis of its own: --precisions).
SWEEPS = {
    "batch": [2**e for e in range(10, 21, 2)],
    "width": [16, 32, 64, 128, 256],
    "k": [1, 2, 4, 8],
    "dim": [2, 8, 16, 32, 64],
    "order": [1, 2],
}
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CPU_BATCH_DIVISOR = 32  # CPU sizes: the GPU batch / 32 (at least 256)
CPU_MAX_BATCH = 2**15
RESULTS = Path(__file__).resolve().parent / "results"


def device_label(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"cpu-{platform.machine()}-{torch.get_num_threads()}t"


def results_path(device: str, out_dir: Path) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", device_label(device)).strip("_")
    return out_dir / f"{name}.csv"


def git_commit() -> str:
    """Short hash of HEAD, "+dirty" when tracked files differ from it; $SOBOLEV_COMMIT where
    there is no git (a copied tree)."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=here, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=here).returncode
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SOBOLEV_COMMIT", "unknown")


def points(args, device: str) -> list[tuple[str, dict]]:
    """(config label, sizes: make_problem's shape arguments) for every config and sweep point."""
    out = []
    for name in args.configs:
        out.append((name, dict(CONFIGS[name])))
    for sweep in args.sweeps:
        for value in SWEEPS[sweep]:
            out.append((f"{sweep}={value}", {**CONFIGS["M"], sweep: value}))
    for _, cfg in out:
        if device == "cpu":
            cfg["batch"] = min(CPU_MAX_BATCH, max(256, cfg["batch"] // CPU_BATCH_DIVISOR))
        if args.quick:
            cfg["batch"] = min(cfg["batch"], 512)
            cfg["width"] = min(cfg["width"], 64)
            cfg["layers"] = min(cfg["layers"], 3)
    return out


def plan(args) -> list[tuple[str, dict, str]]:
    """(label, sizes, precision), point by point with its precisions together, so a run cut
    short by a time limit has measured whole points (but the last, of which it keeps the
    providers measured before the cut: ``measure``); --precision-major: every point of the
    first precision before any of the next (a cut run has the first precision whole);
    --goals-first: the (config, precision) points that bench/goals.py judges before the
    others, in the same order otherwise."""
    pts = points(args, args.device)
    if getattr(args, "precision_major", False):  # (callers that build args themselves)
        return [(label, sizes, precision) for precision in args.precisions
                for label, sizes in pts]  # fmt: skip
    todo = [(label, sizes, precision) for label, sizes in pts for precision in args.precisions]
    if getattr(args, "goals_first", False):
        judged = {(goal.config, goal.precision) for goal in GOALS}
        todo.sort(key=lambda point: (point[0], point[2]) not in judged)  # (stable)
    return todo


def measure(args, sink) -> int:
    """Measures the plan, handing each provider's rows of a point to ``sink`` as soon as they
    exist."""
    device = args.device
    meta = {
        "device": device_label(device),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "commit": git_commit(),
        "date": datetime.date.today().isoformat(),
    }
    providers = _providers(args)
    if args.precompile:
        precompile(args, providers, args.precompile)
    todo = plan(args)
    total, done, written = len(todo) * len(providers), 0, 0
    for i, (label, sizes, precision) in enumerate(todo, 1):
        if i <= args.resume_after:
            continue  # measured by the process that lost its CUDA context
        start = time.perf_counter()
        set_precision(precision)
        point = {**meta, "precision": precision, **sizes,
                 "dtype": DTYPE_NAMES[PRECISIONS[precision][0]]}  # fmt: skip
        rows: list[dict] = []
        point_providers = [p for p in providers if runs_at(p, precision)]
        try:
            problem = make_problem(**sizes, precision=precision, device=device)
            rejected = check_agreement(problem, point_providers)
        except Exception as exc:  # noqa: BLE001 - out of memory, say: the point's result
            reason = f"the point failed: {type(exc).__name__}: {exc}"
            rows = [_error_row(p, label, m, reason, point) for p in point_providers
                    for m in args.modes]  # fmt: skip
            providers_here = []
            sink(rows)
        else:
            providers_here = point_providers
        for provider in providers_here:
            done += 1
            print(f"[{done}/{total}] {label:<12} {precision:<5} {provider:<15} {problem.label}",
                  file=sys.stderr, flush=True)  # fmt: skip
            mine: list[dict] = []
            for mode in args.modes:
                if mode == "forward" and provider in STEP_ONLY:
                    continue  # the same forward as the provider it varies
                if provider in rejected:
                    mine.append(_error_row(provider, label, mode, rejected[provider], point))
                    continue
                named = label in CONFIGS
                mine += _measure_one(provider, problem, mode, label, device, args, point, named)
            # provider by provider: a point cut by a time limit keeps its first providers'
            # rows (run 5's L point took 57 s; the baselines and defaults come first)
            sink(mine)
            rows += mine
        problem = None  # freed before the next point's is built
        written += len(rows)
        print(f"[point {i}/{len(todo)}] {label} {precision}: {len(rows)} rows in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        if i < len(todo) and context_lost(device):
            raise ContextLost(i)
    return written


class ContextLost(Exception):
    """The CUDA context is gone after point ``point`` (1-based): its errors are sticky."""

    def __init__(self, point: int):
        super().__init__(point)
        self.point = point


def context_lost(device: str) -> bool:
    """Whether this process can no longer use the GPU ``device``: after an illegal memory
    access every later CUDA call fails (the H200 run of 2026-11-27 lost every point after
    the first fault), so the rest of the plan must go on in a new process."""
    if device != "cuda":
        return False
    try:
        torch.zeros(1, device="cuda").add_(1).cpu()
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - AcceleratorError, RuntimeError: which is torch's
        return True
    return False


def _resume_elsewhere(argv: list[str], out_dir: Path, point: int) -> int:
    """Measures the plan's points after ``point`` in a new process (same arguments, no
    precompile: the caches have it), appending to the same CSV; its exit status."""
    print(
        f"[point {point}] the CUDA context is lost (a sticky error, such as an illegal memory "
        "access); the remaining points go on in a new process",
        file=sys.stderr,
        flush=True,
    )
    child = [*argv, "--out-dir", str(out_dir), "--precompile", "0", "--resume-after", str(point)]
    return subprocess.run([sys.executable, "-m", "bench.step", *child]).returncode


def _providers(args) -> list[str]:
    wanted, unwanted = set(args.providers), set(args.exclude)
    available = providers_available(args.device)
    return [p for p in available if (not wanted or p in wanted) and p not in unwanted]


# Providers that compile kernels the first time a shape runs (Triton, with its autotuner's
# candidates; inductor): seconds each, so --precompile compiles them in parallel processes
# before the timed, sequential pass, which then finds them in the on-disk caches.
COMPILING = ("triton", "torch_compile")


# The Triton autotuner's candidates per kernel at most: the forward's 8 in bf16
# (Layout.launch_configs' 5 and its column-block config, and the resident kernel's 2) and in
# fp32 (4, the column-block configs of 64 and 128 rows and their activated twins;
# choices._launch_config). A precompile job per index: a kernel with fewer skips the rest.
TRITON_CANDIDATES = 8


def precompile(args, providers: list[str], workers: int) -> None:
    """Compile what the timed pass will need, in parallel processes: one job per distinct
    shape and precision (the batch changes no kernel) and, for Triton, per autotuner
    candidate, so a shape's candidates compile side by side instead of one after another.
    With ``args.precompile_seconds``, the jobs still running then are stopped (what they
    compiled so far stays in the caches) and the timed pass compiles the rest itself."""
    jobs = precompile_jobs(args, providers)

    def problems_of(result: tuple[str, str | None]) -> str:
        problems, failure = result
        adopt_compile_failure(failure)  # torch_compile's error: not compiled again
        return problems

    if jobs:
        run_jobs(_warm_point, jobs, workers, getattr(args, "precompile_seconds", None),
                 problems_of)  # fmt: skip


def run_jobs(fn, jobs: list, workers: int, seconds: float | None = None, describe=None) -> int:
    """``fn(job)`` for every job in ``workers`` spawned processes (CUDA cannot be used in
    forked children), printing each result (or ``describe(result)``; empty or None: ok) in
    job order; after ``seconds`` (None: no limit) the processes still running are terminated.
    Returns how many jobs were reported done."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures import TimeoutError as Timeout
    from concurrent.futures.process import BrokenProcessPool

    deadline = None if seconds is None else time.monotonic() + seconds
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(fn, job) for job in jobs]
    done = 0
    try:
        for future in futures:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            problems = future.result(timeout=left)
            problems = problems if describe is None else describe(problems)
            done += 1
            print(f"[precompile {done}/{len(jobs)}] {problems or 'ok'}", file=sys.stderr,
                  flush=True)  # fmt: skip
    except Timeout:
        print(
            f"[precompile] stopped after {seconds:.0f} s: {done} of {len(jobs)} jobs done "
            "in order; the timed pass compiles the rest",
            file=sys.stderr,
            flush=True,
        )
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # the pool's workers: no others here
            child.terminate()  # Triton writes its cache entries atomically
    except BrokenProcessPool as exc:  # a worker died (a compiler crash, say): not fatal here
        print(f"[precompile] stopped: {exc}; {done} of {len(jobs)} jobs done in order; the "
              "timed pass compiles the rest", file=sys.stderr, flush=True)  # fmt: skip
    pool.shutdown(wait=True)
    return done


def precompile_jobs(args, providers: list[str]) -> list[tuple]:
    """The precompile's jobs, in the order they are taken: (sizes, precision, provider,
    modes, device, autotuner candidate or None)."""
    wanted = [p for p in providers if p in COMPILING]
    # the Triton variants' steps compile kernels of their own (the backward without its inputs
    # stores, the persistent ones) with each candidate: jobs of their own, after every
    # shape's default ones, so that a compile stage cut short has compiled those first
    variants = [p for p in providers if p in TRITON_VARIANTS] if "step" in args.modes else []
    distinct = {}
    for _, sizes, precision in plan(args):
        shape = tuple(sorted((k, v) for k, v in sizes.items() if k != "batch"))
        distinct.setdefault((shape, precision), (sizes, precision))
    jobs, later = [], []
    # candidate by candidate over the shapes: a shape's kernels of one launch config only (the
    # split-K kernel, the reductions) compile in its candidate-0 job, which runs well before
    # its other candidates' jobs instead of beside them (5 copies of each otherwise)
    for c in range(TRITON_CANDIDATES if "triton" in wanted else 1):
        for sizes, precision in distinct.values():
            for provider in wanted:
                if provider == "triton":
                    jobs.append((sizes, precision, provider, args.modes, args.device, c))
                    later += [(sizes, precision, variant, ("step",), args.device, c)
                              for variant in variants if runs_at(variant, precision)]  # fmt: skip
                elif c == 0:
                    jobs.append((sizes, precision, provider, args.modes, args.device, None))
    return jobs + later


def _warm_point(job) -> tuple[str, str | None]:
    """Run one compiling provider (or a Triton variant) once on one point (in a worker
    process); for Triton, only its autotuner's candidate ``candidate`` of each kernel.
    Returns the problems met, and torch_compile's error where it failed."""
    sizes, precision, provider, modes, device, candidate = job
    if candidate is not None:
        _only_candidate(candidate)
    set_precision(precision)
    problem = make_problem(**sizes, precision=precision, device=device)
    problems = []
    for mode in modes:
        try:
            step_fn(provider, problem, mode)()
        except _NoSuchCandidate:
            pass  # this kernel has fewer candidates
        except Exception as exc:  # noqa: BLE001 - the timed pass records the error
            problems.append(f"{provider}/{mode}: {type(exc).__name__}")
    if device == "cuda":
        torch.cuda.synchronize()
    return "; ".join(problems), compile_failure()


class _NoSuchCandidate(Exception):
    pass


def _only_candidate(index: int) -> None:
    """Make the autotuner run (and so compile) only its candidate ``index`` of each launch
    config choice; of a choice between methods (named by strings: the backward's, the weight
    gradients'), every method, each with candidate ``index`` of the kernels it launches."""

    def fastest(key, candidates, run, skip=()):
        if all(isinstance(c, str) for c in candidates):
            for method in candidates:
                try:
                    run(method)
                except _NoSuchCandidate:
                    pass  # this method's kernels have fewer candidates
            return candidates[0]
        if index >= len(candidates):
            raise _NoSuchCandidate
        run(candidates[index])
        return candidates[index]

    sk_tuning.fastest = fastest


def _row(provider, label, mode, metric, unit, values, point) -> dict:
    p20, p50, p80 = values
    return {"provider": provider, "config": label, "mode": mode, "metric": metric,
            "unit": unit, "p20": p20, "p50": p50, "p80": p80, **point}  # fmt: skip


def _error_row(provider, label, mode, message, point) -> dict:
    """A provider that cannot run a point is a result too: metric "error", the reason as unit."""
    message = re.sub(r"\s+", " ", message)[:300].replace(",", ";")
    return _row(provider, label, mode, "error", message, (math.nan,) * 3, point)


def _measure_one(provider, problem, mode, label, device, args, point, named) -> list[dict]:
    def row(metric, unit, values):
        return _row(provider, label, mode, metric, unit, values, point)

    try:
        fn = step_fn(provider, problem, mode)
        times = time_ms(fn, device, reps=args.reps, warmup=2 if args.quick else 3)
        host = host_ms(fn, device, reps=args.reps)
    except Exception as exc:  # noqa: BLE001 - a provider that cannot run is a result too
        return [_error_row(provider, label, mode, f"{type(exc).__name__}: {exc}", point)]
    flops = step_flops(problem, mode)
    out = [row("time", "ms", times), row("host", "ms", host)]
    out.append(row("tflops", "TFLOP/s", tuple(flops / (t * 1e-3) / 1e12 for t in times[::-1])))
    # torch's allocator and profiler see nothing of JAX; a replayed graph's buffers live in
    # its private pool, reserved at capture, so a replay's peak would miss them
    if provider != "jax_jit" and provider not in GRAPHED and provider not in COMPILED:
        memory = peak_memory_mb(fn, device)
        if memory is not None:
            out.append(row("memory", "MiB", (memory,) * 3))
        # kernels per step do not change along a sweep: counted at the named configs only
        if named and mode == "step" and not args.quick:
            launches = count_launches(fn, device)
            unit = "kernels" if device == "cuda" else "aten ops"
            out.append(row("launches", unit, (launches,) * 3))
    return out


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return ""


def sizes_key(row: dict) -> tuple:
    return tuple(int(row[c]) for c in SIZE_COLUMNS)


def check_target(path: Path, todo: list[tuple[str, dict, str]]) -> None:
    """Refuses, before anything is measured, to append to a CSV of another format or one
    where a planned config name was measured at other sizes."""
    if not path.exists():
        return
    with path.open() as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != COLUMNS:
            raise SystemExit(f"{path}: written by another version of bench/step.py (other "
                             "columns); give another --out-dir")  # fmt: skip
        known = {row["config"]: sizes_key(row) for row in reader}
    for label, sizes, _ in todo:
        planned = tuple(sizes[c] for c in SIZE_COLUMNS)
        if known.get(label, planned) != planned:
            raise SystemExit(f"{path}: config {label} is there at sizes {known[label]}, this "
                             f"run's are {planned}; give another --out-dir")  # fmt: skip


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _committed(out_dir: Path) -> bool:
    """Whether out_dir is the committed results (bench/results and below, but its tmp/)."""
    out = out_dir.resolve()
    return out.is_relative_to(RESULTS) and not out.is_relative_to(RESULTS / "tmp")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--configs", nargs="*", default=None, choices=list(CONFIGS))
    parser.add_argument("--sweeps", nargs="*", default=None, choices=list(SWEEPS))
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=list(PRECISIONS))
    parser.add_argument("--goals-first", action="store_true",
                        help="the points an issue's goal judges (bench/goals.py) before the "
                             "others, each with its precisions in turn")  # fmt: skip
    parser.add_argument("--precision-major", action="store_true",
                        help="every config at one precision before the next")  # fmt: skip
    parser.add_argument("--providers", nargs="*", default=[], help="default: all there are")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="PROVIDER")
    parser.add_argument("--modes", nargs="*", default=["step", "forward"],
                        choices=["step", "forward"])  # fmt: skip
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--precompile", type=int, default=0, metavar="N",
                        help="compile the kernels of every point in N processes first")  # fmt: skip
    parser.add_argument("--compile-only", action="store_true",
                        help="with --precompile N: compile, measure nothing")  # fmt: skip
    parser.add_argument("--precompile-seconds", type=float, default=None, metavar="S",
                        help="stop the precompile after S seconds (default: no limit)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="default: a new temporary folder")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan, measure nothing")
    parser.add_argument("--resume-after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.configs is None:
        args.configs = ["S", "M"] if args.quick else list(CONFIGS)
    if args.sweeps is None:
        args.sweeps = [] if args.quick else list(SWEEPS)
    if args.reps is None:
        args.reps = 3 if args.quick else 10
    if args.quick and args.out_dir is not None and _committed(args.out_dir):
        parser.error("--quick never writes into bench/results: give a folder elsewhere")
    return args


def main(argv: list[str] | None = None) -> Path | None:
    args = parse(argv)
    todo, providers = plan(args), _providers(args)
    if args.out_dir is None and not (args.dry_run or args.compile_only):
        args.out_dir = Path(tempfile.mkdtemp(prefix="sobolev-bench-"))
    path = results_path(args.device, args.out_dir) if args.out_dir else None
    if path is not None:
        check_target(path, todo)
    if args.dry_run:
        print(f"plan: {len(todo)} points x {len(providers)} providers x modes "
              f"{' '.join(args.modes)} on {args.device} ({device_label(args.device)})")  # fmt: skip
        for label, sizes, precision in todo:
            print(f"  {label:<14} {precision:<5} " + " ".join(f"{k}={v}" for k, v in sizes.items()))
        print(f"providers: {' '.join(providers)}")
        print(
            f"rows to: {path or 'a new temporary folder'}"
            + (f"; precompile in {args.precompile} processes" if args.precompile else "")
        )
        return path
    if args.compile_only:
        precompile(args, providers, max(1, args.precompile))
        return None
    print(f"writing to {path}", file=sys.stderr, flush=True)
    tuned = path.with_name(f"{path.stem}_tuning_{os.getpid()}.md")  # one per run

    def sink(rows: list[dict]) -> None:
        write(rows, path)
        write_tuning_table(tuned)  # after every point: a run cut short keeps what it tuned

    lost = None
    try:
        written = measure(args, sink)
    except ContextLost as exc:
        written, lost = None, exc.point
    for key, choice in sk_tuning.choices().items():  # which launch configs / backend won
        print(f"tuned {key}: {choice}", file=sys.stderr)
    if lost is not None:
        status = _resume_elsewhere(sys.argv[1:] if argv is None else argv, args.out_dir, lost)
        if status:
            raise SystemExit(status)
        return path
    print(f"wrote {written} rows to {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
