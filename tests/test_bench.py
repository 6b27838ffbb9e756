"""Smoke tests: the benchmarks, the main job and the GPU session's plan run end to end on tiny
sizes (never timed), and the guards that keep results comparable hold."""

import csv
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import sobolev_kernels as sk

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "bench" / "results" / "h200-2026-11-26" / "NVIDIA_H200.csv"
COLUMNS = ["provider", "config", "mode", "metric", "unit", "p20", "p50", "p80", "device", "torch",
           "triton", "commit", "date", "precision", "batch", "dim", "width", "layers", "out",
           "k", "order", "dtype"]  # fmt: skip


def _run(*args, timeout=300, env=None):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _module(name, *args, **kwargs):
    return _run(sys.executable, "-m", name, *args, **kwargs)


def test_step_quick_writes_the_csv_and_report(tmp_path):
    # (the forward's rows: the tests of --modes forward below; torch_compile's, an inductor
    # compile of each point: test_step_precompiles_in_worker_processes; CI's time)
    _module("bench.step", "--quick", "--modes", "step", "--exclude", "torch_compile",
            "--out-dir", str(tmp_path))  # fmt: skip
    (csv_path,) = tmp_path.glob("*.csv")
    with csv_path.open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS
    measured = {(r["provider"], r["config"], r["mode"]) for r in rows if r["metric"] == "time"}
    for provider in ("eager_autograd", "torch_func", "plain_step", "torch"):
        assert (provider, "M", "step") in measured
    # the CPU time to issue a step, for every provider and point that ran
    hosts = {(r["provider"], r["config"], r["mode"]) for r in rows if r["metric"] == "host"}
    assert hosts == measured
    assert not [r for r in rows if "disagrees" in r["unit"]]
    times = [float(r["p50"]) for r in rows if r["metric"] == "time"]
    assert all(t > 0 for t in times)
    # the sizes that ran, not the config's nominal ones: --quick caps batch and width
    m = next(r for r in rows if r["config"] == "M")
    assert (m["precision"], m["dtype"], m["batch"], m["dim"], m["width"], m["k"]) == (
        "fp32", "fp32", "512", "16", "64", "2")  # fmt: skip

    report = _module("bench.report", str(csv_path), "--out-dir", str(tmp_path))
    assert "| torch |" in report.stdout and "vs torch.func" in report.stdout
    assert "host ms" in report.stdout and "of limit" in report.stdout
    assert "**M**, fp32, step: B=512 d=16 width=64 layers=3 m=8 K=2 order=1" in report.stdout
    assert (tmp_path / "BENCHMARKS.md").exists()


def test_step_runs_each_precision_class(tmp_path):
    from bench import step

    try:
        step.main(["--quick", "--configs", "S", "--modes", "step", "--providers",
                   "plain_step", "torch", "--precisions", "fp32", "bf16",
                   "--out-dir", str(tmp_path)])  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False  # the test process's default again
    (csv_path,) = tmp_path.glob("*.csv")
    rows = [r for r in csv.DictReader(csv_path.open()) if r["metric"] == "time"]
    got = {(r["provider"], r["precision"], r["dtype"]) for r in rows}
    assert got == {(p, c, c) for p in ("plain_step", "torch") for c in ("fp32", "bf16")}


def test_fp32_only_variants_are_measured_on_fp32_models_only(tmp_path, monkeypatch):
    """A provider in FP32_ONLY (e.g. cuda_staged_split: in bf16 it runs the default's kernels)
    is neither checked nor timed at a bf16 point; fp32 and tf32 points (fp32 models) time it."""
    from bench import providers, step

    monkeypatch.setattr(providers, "FP32_ONLY", {"torch"})
    try:
        step.main(["--quick", "--configs", "S", "--modes", "step", "--providers",
                   "plain_step", "torch", "--precisions", "fp32", "tf32", "bf16",
                   "--out-dir", str(tmp_path)])  # fmt: skip
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False  # the test process's default again
    (csv_path,) = tmp_path.glob("*.csv")
    got = {(r["provider"], r["precision"]) for r in csv.DictReader(csv_path.open())}
    assert got == {("plain_step", "fp32"), ("plain_step", "tf32"), ("plain_step", "bf16"),
                   ("torch", "fp32"), ("torch", "tf32")}  # fmt: skip


def test_sixteen_bit_only_variants_are_measured_on_bf16_and_fp16_models_only():
    """A provider in SIXTEEN_BIT_ONLY (triton_wide_tiles: fp32 has its tiles by default) is
    timed at bf16 and fp16 points, not at fp32 and tf32 ones; the others everywhere."""
    from bench.providers import SIXTEEN_BIT_ONLY, runs_at

    assert "triton_wide_tiles" in SIXTEEN_BIT_ONLY
    at = {c for c in ("fp32", "tf32", "bf16", "fp16") if runs_at("triton_wide_tiles", c)}
    assert at == {"bf16", "fp16"}
    assert all(runs_at("triton", c) for c in ("fp32", "tf32", "bf16", "fp16"))


def test_a_failing_point_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    from bench import step

    def out_of_memory_at_s(**kwargs):
        if kwargs["dim"] == step.CONFIGS["S"]["dim"]:
            raise RuntimeError("CUDA out of memory")
        return make_problem(**kwargs)

    make_problem = step.make_problem
    monkeypatch.setattr(step, "make_problem", out_of_memory_at_s)
    step.main(["--quick", "--configs", "S", "M", "--modes", "step", "--providers", "plain_step",
               "--out-dir", str(tmp_path)])  # fmt: skip
    (csv_path,) = tmp_path.glob("*.csv")
    rows = {(r["config"], r["metric"]): r for r in csv.DictReader(csv_path.open())}
    assert "CUDA out of memory" in rows["S", "error"]["unit"] and ("M", "time") in rows


def test_a_point_cut_short_keeps_the_providers_measured_before_the_cut(tmp_path, monkeypatch):
    """Rows go to the CSV provider by provider: a time limit that ends the process inside a
    point (run 5's L point took 57 s) keeps what that point measured so far."""
    from bench import step

    measure_one = step._measure_one

    def cut_at_torch(provider, *args):
        if provider == "torch":
            raise KeyboardInterrupt  # (the limit's signal, say)
        return measure_one(provider, *args)

    monkeypatch.setattr(step, "_measure_one", cut_at_torch)
    with pytest.raises(KeyboardInterrupt):
        step.main(["--quick", "--configs", "S", "--modes", "step", "--providers", "plain_step",
                   "eager_autograd", "torch", "--out-dir", str(tmp_path)])  # fmt: skip
    (csv_path,) = tmp_path.glob("*.csv")
    measured = {r["provider"] for r in csv.DictReader(csv_path.open()) if r["metric"] == "time"}
    assert measured == {"plain_step", "eager_autograd"}


def test_a_lost_cuda_context_hands_the_rest_of_the_plan_to_a_new_process(tmp_path, monkeypatch):
    from bench import step

    children, run = [], subprocess.run

    def spawn(argv, **kwargs):  # records the new process instead of starting it
        if argv[1:3] != ["-m", "bench.step"]:
            return run(argv, **kwargs)  # git, say
        children.append(argv)
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(step, "context_lost", lambda device: True)
    monkeypatch.setattr(step.subprocess, "run", spawn)
    argv = ["--quick", "--configs", "S", "M", "--modes", "step", "--providers", "plain_step",
            "--out-dir", str(tmp_path)]  # fmt: skip
    step.main(argv)
    (csv_path,) = tmp_path.glob("*.csv")
    assert {r["config"] for r in csv.DictReader(csv_path.open())} == {"S"}  # then it stopped
    (child,) = children
    assert child[:3] == [sys.executable, "-m", "bench.step"]
    assert child[3:] == [*argv, "--out-dir", str(tmp_path), "--precompile", "0",
                         "--resume-after", "1"]  # fmt: skip
    # the new process measures what is left, appending to the same CSV
    monkeypatch.setattr(step, "context_lost", lambda device: False)
    step.main(child[3:])
    assert [r["config"] for r in csv.DictReader(csv_path.open()) if r["metric"] == "time"] == [
        "S",
        "M",
    ]


def test_isolate_runs_each_case_in_a_process_of_its_own(capsys):
    from bench import isolate

    status = isolate.main(["--device", "cpu", "--configs", "M", "--batches", "16",
                           "--precisions", "fp32", "--providers", "torch", "nosuch",
                           "--modes", "forward"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1 and "1 of 2 cases failed" in out
    assert re.search(r"torch +forward +ok loss (\S+) torch_func \1", out)
    assert re.search(r"nosuch +forward +FAILED rc 1: ValueError: backend: unknown backend", out)


def test_precompile_takes_the_triton_variants_after_every_default_job():
    """The variants' kernels compile after the default provider's of every shape (a compile
    stage cut short has compiled those), one job per variant and autotuner candidate, steps
    only; the jobs go candidate by candidate over the shapes."""
    from types import SimpleNamespace

    from bench.step import TRITON_CANDIDATES, precompile_jobs

    args = SimpleNamespace(configs=["S", "M"], sweeps=[], precisions=["fp32"],
                           modes=["step", "forward"], device="cuda", quick=False)  # fmt: skip
    jobs = precompile_jobs(args, ["eager_autograd", "triton", "triton_recompute",
                                  "triton_lean_persistent"])  # fmt: skip
    providers = [job[2] for job in jobs]
    candidates = TRITON_CANDIDATES
    defaults = 2 * candidates
    assert providers[:defaults] == ["triton"] * defaults
    assert sorted(set(providers[defaults:])) == ["triton_lean_persistent", "triton_recompute"]
    assert len(jobs) == 3 * defaults
    assert all(job[3] == ("step",) for job in jobs[defaults:])
    assert sorted({job[5] for job in jobs[defaults:]}) == list(range(candidates))
    # candidate by candidate over the shapes: every shape's candidate 0 first (the kernels
    # of one launch config compile there, not again beside its other candidates)
    configs = [job[0]["width"] for job in jobs[:defaults]]
    assert [job[5] for job in jobs[:defaults]] == sorted(list(range(candidates)) * 2)
    assert configs[:2] == [64, 128] and configs[2:4] == [64, 128]
    # an fp32-only variant compiles at fp32 points only
    args.precisions = ["fp32", "bf16"]
    jobs = precompile_jobs(args, ["triton", "triton_kmajor_inputs"])
    variant = [job[1] for job in jobs if job[2] == "triton_kmajor_inputs"]
    assert variant and set(variant) == {"fp32"}
    assert {job[1] for job in jobs if job[2] == "triton"} == {"fp32", "bf16"}


def test_precompile_job_runs_its_candidate_of_each_config_and_every_method(monkeypatch):
    """A precompile job with candidate 2 runs launch-config candidate 2 only (and skips a
    kernel with fewer), but every method of a method choice, so that the backward's methods
    each compile their kernels' candidate 2."""
    from bench import step

    monkeypatch.setattr(step, "sk_tuning", type("T", (), {})())
    step._only_candidate(2)
    fastest = step.sk_tuning.fastest
    ran = []
    assert fastest("k", [10, 11, 12], ran.append) == 12 and ran == [12]
    with pytest.raises(step._NoSuchCandidate):
        fastest("k", [10, 11], ran.append)

    def method(name):
        ran.append(name)
        if name == "persistent":
            raise step._NoSuchCandidate

    ran.clear()
    assert fastest("m", ("separate", "persistent"), method) == "separate"
    assert ran == ["separate", "persistent"]


@pytest.mark.heavy(40)
def test_step_precompiles_in_worker_processes(tmp_path):
    out = _module("bench.step", "--quick", "--configs", "S", "--modes", "forward",
                  "--providers", "plain_step", "torch_compile", "--precompile", "2",
                  "--out-dir", str(tmp_path))  # fmt: skip
    assert "[precompile 1/1]" in out.stderr
    (csv_path,) = tmp_path.glob("*.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert {row["provider"] for row in rows} == {"plain_step", "torch_compile"}
    # every Sobolev formulation users write today fails under torch.compile: recorded, not hidden
    assert all(r["metric"] == "error" for r in rows if r["provider"] == "torch_compile")


def test_the_timed_pass_takes_torch_compiles_error_from_the_precompile(monkeypatch, capsys):
    """A worker's torch_compile error reaches the timed pass, which records it instead of
    compiling again (an inductor compile a point: seconds on a GPU machine, 20 s here)."""
    from types import SimpleNamespace

    from bench import providers, step

    monkeypatch.setattr(providers, "_compile_failure", None)
    message = "eager: RuntimeError: no double backward"

    def run_jobs(fn, jobs, workers, seconds=None, describe=None):
        assert fn is step._warm_point and jobs
        print(describe(("torch_compile/forward: RuntimeError", message)))
        return len(jobs)

    monkeypatch.setattr(step, "run_jobs", run_jobs)
    args = SimpleNamespace(configs=["S"], sweeps=[], precisions=["fp32"], modes=["forward"],
                           device="cpu", quick=True)  # fmt: skip
    step.precompile(args, ["plain_step", "torch_compile"], 1)
    assert capsys.readouterr().out == "torch_compile/forward: RuntimeError\n"
    assert providers.compile_failure() == message
    problem = providers.make_problem(batch=8, dim=2, width=8, layers=2, out=1, k=1)
    with pytest.raises(RuntimeError, match="no double backward"):  # at once: no compile
        providers.step_fn("torch_compile", problem, "forward")


def test_precompile_stops_its_jobs_at_its_time_limit(capsys):
    """--precompile-seconds: the jobs done by then are reported in order, the one still
    running is terminated (not waited for), and the timed pass then goes on; so it does
    after a worker died."""
    from bench.step import run_jobs

    start = time.monotonic()
    assert run_jobs(time.sleep, [0, 0, 600], workers=2, seconds=5) == 2
    assert time.monotonic() - start < 300  # far below the 600 s job
    err = capsys.readouterr().err
    assert "[precompile 2/3] ok" in err and "stopped after 5 s: 2 of 3 jobs done" in err
    assert run_jobs(time.sleep, [0, 0], workers=2) == 2  # no limit: every job
    # a worker that dies stops the precompile, not the benchmark after it
    assert run_jobs(os._exit, [1], workers=1) == 0
    assert "[precompile] stopped: A process in the process pool" in capsys.readouterr().err


def test_quick_runs_never_write_committed_results(capsys):
    from bench import step

    for committed in ("bench/results", "bench/results/h200-2026-11-26"):
        with pytest.raises(SystemExit):
            step.parse(["--quick", "--out-dir", str(ROOT / committed)])
        assert "never writes into bench/results" in capsys.readouterr().err
    step.parse(["--quick", "--out-dir", str(ROOT / "bench/results/tmp/x")])  # ignored by git
    # with no --out-dir, a run writes to a new temporary folder
    step.main(["--quick", "--dry-run"])
    assert "rows to: a new temporary folder" in capsys.readouterr().out


def test_a_config_name_never_holds_two_sizes(tmp_path):
    from bench import step

    args = step.parse(["--quick", "--configs", "M", "--sweeps", "--device", "cpu"])
    (label, sizes, precision), *_ = step.plan(args)
    row = dict.fromkeys(step.COLUMNS, "")
    path = tmp_path / "device.csv"
    step.write([{**row, "config": label, **sizes, "batch": sizes["batch"] * 2}], path)
    with pytest.raises(SystemExit, match="config M is there at sizes"):
        step.check_target(path, step.plan(args))
    path.write_text("provider,config\n")  # a CSV of another version
    with pytest.raises(SystemExit, match="other columns"):
        step.check_target(path, step.plan(args))


def test_disagreeing_provider_is_not_timed(monkeypatch):
    from bench import providers

    problem = providers.make_problem(batch=64, dim=3, width=16, layers=2, out=2, k=2)
    real = providers._loss_and_grads

    def off_by_one_percent(provider, p):
        got = real(provider, p)
        return [g * 1.01 for g in got] if provider == "torch" else got

    monkeypatch.setattr(providers, "_loss_and_grads", off_by_one_percent)
    rejected = providers.check_agreement(problem, ["torch_func", "eager_autograd", "torch"])
    assert list(rejected) == ["torch"] and "disagrees with torch_func" in rejected["torch"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_jax_agrees_with_torch_func(precision):
    from bench import providers

    providers.set_precision(precision)
    problem = providers.make_problem(batch=64, dim=3, width=16, layers=3, out=2, k=2,
                                     precision=precision)  # fmt: skip
    assert providers.check_agreement(problem, ["torch_func", "jax_jit"]) == {}


def test_limit_of_a_step():
    from bench import limits

    m = dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2, order=1)
    flops = limits.step_flops(**m)  # 6 * 3B rows * (16*128 + 2*128*128 + 128*8)
    assert flops == 6 * 3 * 2**16 * 35840
    ms, bound = limits.limit_ms("NVIDIA H200", "fp32", m)
    assert bound == "FLOPs" and ms == pytest.approx(1e3 * flops / 67e12)
    ms_bf16, _ = limits.limit_ms("NVIDIA H200", "bf16", m)
    assert ms_bf16 == pytest.approx(ms * 67 / 989)
    # one input row per step, nothing to compute: the bandwidth bound
    assert limits.limit_ms("NVIDIA H100 80GB HBM3", "fp32", {**m, "width": 1})[1] == "bytes"
    assert math.isnan(limits.limit_ms("cpu-x86_64-2t", "fp32", m)[0])


def test_report_of_the_h200_baseline(tmp_path):
    """The committed GPU baseline renders with the new columns; the fraction of the limit is
    the limit over the median time."""
    from bench import limits, report

    text = report.render(BASELINE)
    m_fp32 = text.split("**M**, fp32, step")[1].split("\n\n")[1]
    triton = next(line for line in m_fp32.splitlines() if line.startswith("| triton |"))
    cells = [c.strip() for c in triton.split("|")[1:-1]]
    sizes = dict(batch=2**16, dim=16, width=128, layers=4, out=8, k=2, order=1)
    limit, _ = limits.limit_ms("NVIDIA H200", "fp32", sizes)
    assert float(cells[-1]) == pytest.approx(limit / float(cells[1]), abs=0.006)
    # JAX ran at its default precision, TF32 class: a table of its own, never beside fp32 rows
    assert "| jax_jit |" not in m_fp32 and "**M**, tf32, step" in text


def test_goals_of_the_h200_baseline():
    """The issues' goals against the committed baseline: what the issues say it measured."""
    from bench.goals import goals_table
    from bench.report import load

    lines = _goal_lines(goals_table(load(BASELINE)))
    step = lines["#18 M step <= 1.0 ms"]
    assert "| 2.76 ms |" in step and step.endswith("| missed |")
    assert "(1.73x)" in lines["#18 S peak memory <= 0.4 x eager"]
    # JAX ran in TF32 there: no fp32 row to compare L with, and the table says so
    assert "3 ms (no jax_jit row)" in lines["#18 L step <= 3.0 ms and faster than jax_jit"]
    assert lines["#18 M step in bf16 <= 0.35 ms"].endswith("| not measured |")
    # the CUDA backend's memory at M: 0.18x eager, #19's goal met; its time far off
    assert lines["#19 M peak memory <= 0.4 x eager"].endswith("| 330 MiB (0.18x) |  | met |")
    assert lines["#19 M fp32 step within 1.25 x the fastest fused backend"].endswith("missed |")


def _goal_lines(table: str) -> dict[str, str]:
    """Each goal's line by its issue and text."""
    return {" ".join(line.split(" | ")[:2])[2:]: line for line in table.splitlines()[2:]}


def test_goals_name_a_variant_that_meets_one_the_default_misses(tmp_path):
    from bench.goals import goals_table
    from bench.report import load

    base = dict(config="M", mode="step", metric="time", unit="ms", device="NVIDIA H200",
                torch="", triton="", commit="", date="", precision="fp32", batch=65536,
                dim=16, width=128, layers=4, out=8, k=2, order=1, dtype="fp32")  # fmt: skip
    times = {"eager_autograd": 9.0, "triton": 1.4, "triton_persistent": 0.9, "cuda": 2.0}
    path = tmp_path / "run.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({**base, "provider": p, "p20": t, "p50": t, "p80": t}
                         for p, t in times.items())  # fmt: skip
    lines = _goal_lines(goals_table(load(path)))
    step = lines["#18 M step <= 1.0 ms"]
    assert "| 1.4 ms | triton_persistent: 0.9 ms |" in step
    assert step.endswith("| met by triton_persistent only |")
    # cuda within 1.25 x the fastest fused (0.9 ms)? 2.0 ms is not
    assert lines["#19 M fp32 step within 1.25 x the fastest fused backend"].endswith("missed |")
    assert lines["#18 S step <= eager / 5"].endswith("| not measured |")


def test_report_keeps_sizes_apart(tmp_path):
    from bench import report

    base = dict(provider="torch", config="M", mode="step", metric="time", unit="ms", p20=1,
                p50=1, p80=1, device="cpu", torch="", triton="", commit="", date="",
                precision="fp32", batch=512, dim=16, width=64, layers=3, out=8, k=2, order=1,
                dtype="fp32")  # fmt: skip
    path = tmp_path / "mixed.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([base, {**base, "batch": 2048, "p50": 4}])
    text = report.render(path)
    assert len(re.findall(r"\*\*M\*\*, fp32, step", text)) == 2


def test_report_shows_every_provider_variant(tmp_path):
    """The backends' variants (bench/providers.py VARIANTS) get rows of their own, and a
    provider the report does not know yet is shown after the others, not dropped."""
    from bench import report
    from bench.providers import VARIANTS

    base = dict(config="M", mode="step", metric="time", unit="ms", p20=1, p50=1, p80=1,
                device="cpu", torch="", triton="", commit="", date="", precision="fp32",
                batch=512, dim=16, width=64, layers=3, out=8, k=2, order=1,
                dtype="fp32")  # fmt: skip
    names = ["triton", *VARIANTS, "some_new_variant"]
    path = tmp_path / "variants.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{**base, "provider": name} for name in names])
    table = report.render(path).split("**M**, fp32, step")[1]
    shown = re.findall(r"^\| (\w+) \| 1", table, flags=re.M)
    assert set(VARIANTS) <= set(report.PROVIDER_ORDER)  # each in its deliberate place
    assert sorted(shown) == sorted(names) and shown[-1] == "some_new_variant"


@pytest.mark.skipif("triton" not in sk.available_backends(), reason="no triton backend")
def test_graphed_and_compiled_providers_are_gpu_only():
    from bench.providers import COMPILED, GRAPHED, make_problem, providers_available, step_fn

    assert not (set(GRAPHED) | set(COMPILED)) & set(providers_available("cpu"))
    p = make_problem(batch=8, dim=2, width=4, layers=2, out=1, k=1)
    with pytest.raises(ValueError, match="a graphed provider needs a CUDA device"):
        step_fn("cuda_graphed", p, "step")
    with pytest.raises(ValueError, match="a compiled provider needs a CUDA device"):
        step_fn("triton_compiled", p, "step")


@pytest.mark.gpu
def test_compiled_provider_agrees_and_compiles_once_per_point():
    """triton_compiled (the loss under torch.compile(mode="reduce-overhead")): the benchmark's
    agreement check and its timing share one compiled step, which gives torch_func's loss and
    gradients; the next point compiles its own."""
    from bench.providers import check_agreement, make_problem, set_precision, step_fn

    set_precision("fp32")
    p = make_problem(batch=256, dim=3, width=32, layers=3, out=2, k=2, device="cuda")
    assert check_agreement(p, ["triton_compiled"]) == {}
    step = step_fn("triton_compiled", p, "step")
    assert step_fn("triton_compiled", p, "step") is step
    for _ in range(3):  # replays
        loss = step()
    assert torch.isfinite(loss).item()
    other = make_problem(batch=512, dim=3, width=32, layers=3, out=2, k=2, device="cuda")
    assert step_fn("triton_compiled", other, "step") is not step


def test_backend_variant_providers_set_their_variable_for_the_call_only(monkeypatch):
    """A variant provider (triton_recompute: SOBOLEV_TRITON_WEIGHT_GRAD=recompute) runs its
    backend's step with the variable set, restores it after, and gives the same loss and
    gradients as the backend's default (here in the interpreter, on a tiny problem)."""
    from bench.providers import VARIANTS, make_problem, step_fn
    from sobolev_kernels.triton import launch

    backend, settings = VARIANTS["triton_recompute"]
    variable = "SOBOLEV_TRITON_WEIGHT_GRAD"
    value = settings[variable]
    # (and the separate backward, which the weight-gradient methods belong to)
    assert settings["SOBOLEV_TRITON_BACKWARD"] == "separate"
    monkeypatch.delenv("SOBOLEV_TRITON_BACKWARD", raising=False)
    monkeypatch.setenv(variable, "splitk")
    seen = []
    real = launch._grads_by_splitk

    def spy(*args, **kwargs):  # the variable as the weight gradients see it, and the method
        seen.append((os.environ[variable], "saved" in kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(launch, "_grads_by_splitk", spy)
    p = make_problem(batch=9, dim=3, width=8, layers=3, out=2, k=2)
    runs = {}
    for provider in (backend, "triton_recompute"):
        loss = step_fn(provider, p)()
        runs[provider] = [loss.detach(), *[q.grad.clone() for q in p.model.parameters()]]
    assert os.environ[variable] == "splitk"  # restored
    assert "SOBOLEV_TRITON_BACKWARD" not in os.environ
    assert seen == [("splitk", False), (value, True)]
    for a, b in zip(*runs.values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_live_at_peak_replays_the_allocator_trace():
    """The peak is the largest sum of live allocations, and what was live then is listed
    largest first, each with the innermost frame of our code."""
    from bench.memory_peak import live_at_peak, where

    ours = [dict(filename="/x/torch/autograd.py", line=1, name="apply"),
            dict(filename="/y/sobolev_kernels/triton/launch.py", line=7, name="bwd")]  # fmt: skip
    events = [
        dict(action="alloc", addr=1, size=100, frames=[]),
        dict(action="alloc", addr=2, size=300, frames=ours),
        dict(action="free_requested", addr=1, size=100),
        dict(action="alloc", addr=3, size=50, frames=[]),  # 350 live: below the peak of 400
        dict(action="free_completed", addr=1, size=100),
        dict(action="segment_alloc", addr=9, size=10**6),
    ]
    peak, live = live_at_peak(events)
    assert peak == 400 and [e["addr"] for e in live] == [2, 1]
    assert where(live[0]) == "sobolev_kernels/triton/launch.py:7 bwd"
    assert where(live[1]) == "(outside our code)"


def test_kernel_profile_quick(tmp_path):
    import sobolev_kernels as sk

    out = tmp_path / "kernels.md"
    providers = ["plain_step", "torch", "cuda"]
    _module("bench.kernel_profile", "--quick", "--device", "cpu", "--configs", "S",
            "--providers", *providers, "--steps", "1", "--out", str(out))  # fmt: skip
    text = out.read_text()
    assert "## fp32" in text
    assert "| S | plain_step | `aten::" in text and "| S | torch | **total** |" in text
    if "cuda" in sk.available_backends():  # the extension's fused ops are rows of their own
        assert "`sobolev_kernels::sobolev_backward`" in text


def test_fp32_only_variants_are_profiled_on_fp32_models_only(tmp_path, monkeypatch):
    """The kernel profile and the counters' inner process skip an FP32_ONLY provider at a
    bf16 point (in process, with torch standing in for cuda_staged_split)."""
    from bench import kernel_counters, kernel_profile, providers

    monkeypatch.setattr(providers, "FP32_ONLY", {"torch"})
    out = tmp_path / "kernels.md"
    kernel_profile.main(["--quick", "--device", "cpu", "--configs", "S", "--precisions", "fp32",
                         "bf16", "--providers", "plain_step", "torch", "--steps", "1", "--out",
                         str(out)])  # fmt: skip
    fp32, bf16 = out.read_text().split("## bf16")
    assert "| S | torch | **total** |" in fp32 and "| S | torch |" not in bf16
    assert "| S | plain_step | **total** |" in bf16
    order = tmp_path / "order.json"
    kernel_counters.main(["--inner", "--device", "cpu", "--quick", "--config", "S",
                          "--precision", "bf16", "--providers", "torch", "plain_step",
                          "--warmup", "1", "--order-file", str(order)])  # fmt: skip
    assert order.read_text() == '["plain_step"]'


def test_host_profile_names_the_functions_a_step_spends_its_host_time_in(tmp_path):
    out = tmp_path / "host.md"
    _module("bench.host_profile", "--device", "cpu", "--batch", "32", "--providers", "torch",
            "nosuch", "--steps", "3", "--top", "20", "--out", str(out))  # fmt: skip
    text = out.read_text()
    assert re.search(r"## torch: host [0-9.]+ ms a step", text)
    assert re.search(r"\| `sobolev_kernels/.+` \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", text)
    assert "## nosuch: error: ValueError" in text  # recorded, the others still profiled


def _ncu_raw_csv(kernels):
    """``ncu --csv --page raw`` as Nsight Compute prints it: a header, a row of units, then a
    row per kernel; ``kernels``: (name, {metric: value})."""
    metrics = list(dict.fromkeys(m for _, values in kernels for m in values))
    units = {"gpu__time_duration.sum": "nsecond"}
    header = ["ID", "Process ID", "Kernel Name", *metrics]
    unit_row = ["", "", "", *(units.get(m, "%") for m in metrics)]
    lines = ["==PROF== Connected to process 1 (python3)",
             *(",".join(f'"{c}"' for c in row) for row in (header, unit_row))]  # fmt: skip
    for i, (name, values) in enumerate(kernels):
        cells = [str(i), "1", name, *(values.get(m, "") for m in metrics)]
        lines.append(",".join(f'"{c}"' for c in cells))
    return "\n".join(lines) + "\n"


def test_kernel_counters_attribute_kernels_and_rank_stalls_and_pipes():
    """The hardware-counter table (bench/kernel_counters.py, run under ncu on a GPU): each
    kernel goes to the provider whose marker precedes it, times in microseconds from the
    units row (thousands separators and all), stalls and pipes largest first ("selected" is
    no stall, a sampled "_not_issued" one repeats its reason), the resource that bounds the
    blocks per SM, bank conflicts as a share of the wavefronts."""
    from bench import kernel_counters as kc

    marker = ("void at::cuda::(anonymous namespace)::spin_kernel(long)",
              {"gpu__time_duration.sum": "1,024"})  # fmt: skip
    stall = "smsp__warp_issue_stalled_{}_per_warp_active.pct"
    pipe = "sm__pipe_{}_cycles_active.avg.pct_of_peak_sustained_active"
    fwd = ("_sobolev_fwd_kernel", {
        "gpu__time_duration.sum": "1,000,000", "launch__registers_per_thread": "162",
        stall.format("barrier"): "12.5", stall.format("long_scoreboard"): "41.0",
        stall.format("selected"): "90", stall.format("barrier_not_issued"): "60",
        pipe.format("fma"): "80.2", pipe.format("tensor_op_hmma"): "12.0",
        "sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active": "45",
        "launch__occupancy_limit_registers": "2", "launch__occupancy_limit_shared_mem": "1",
        "launch__occupancy_limit_warps": "8",
        "l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum": "500",
        "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum": "1,000"})  # fmt: skip
    bwd = ("_sobolev_bwd_kernel", {"gpu__time_duration.sum": "2,500,000",
                                   stall.format("mio_throttle"): "30"})  # fmt: skip
    fused = ("void sobolev::cuda::fused_forward_kernel<float, 1, 128, false>(FusedArgs)",
             {"gpu__time_duration.sum": "1,600,000"})  # fmt: skip
    text = _ncu_raw_csv([marker, fwd, bwd, marker, fused])
    lines = kc.table("M", text, ["triton", "cuda_fused"], top=6)
    rows = [line for line in lines if line.startswith("| M |")]
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["triton", "`_sobolev_bwd_kernel`", "2500.0"],
        ["triton", "`_sobolev_fwd_kernel`", "1000.0"],
        ["cuda_fused", f"`{fused[0][:57]}...`", "1600.0"],
    ]
    assert "| 162 |" in rows[1]
    assert (
        "| shared_mem 1 | fma 80, lsu (inst) 45, tensor_op_hmma 12 | long_scoreboard 41.0, "
        "barrier 12.5 | ld 50% |" in rows[1]
    )
    assert "selected" not in rows[1] and "mio_throttle 30.0" in rows[0]
    assert lines[-1] == "Stalls in % of active warp cycles."
    # a report without kernels (ncu refused the counters, say) shows what ncu said
    refused = kc.table("M", "==ERROR== ERR_NVGPUCTRPERM\n", ["triton"], top=6)
    assert refused[0].startswith("No kernels in the report") and "ERR_NVGPUCTRPERM" in refused[3]


def test_kernel_counters_inner_profiles_each_provider_it_can_run(tmp_path):
    """The process ncu runs: every provider warmed up and stepped once (on a GPU between
    cudaProfilerStart and Stop, after the marker kernel); the ones it ran, in order, go to
    the order file; one it cannot run is skipped."""
    order = tmp_path / "order.json"
    _module("bench.kernel_counters", "--inner", "--device", "cpu", "--quick", "--config", "S",
            "--providers", "nosuch", "torch", "plain_step", "--warmup", "1", "--order-file",
            str(order))  # fmt: skip
    assert order.read_text() == '["torch", "plain_step"]'
    plan = _module("bench.kernel_counters", "--dry-run", "--precisions", "fp32").stdout
    assert "counters: configs M, fp32, providers triton cuda" in plan


FAKE_NCU = """#!{python}
# ncu's command line as bench.kernel_counters uses it: profile (run the program after
# --force-overwrite, write the report) or --import (print a raw CSV: a marker, then a kernel)
import subprocess, sys, time
argv = sys.argv[1:]
if "--import" in argv:
    print('"ID","Kernel Name","gpu__time_duration.sum"')
    print('"","","usecond"')
    print('"0","spin_kernel(long)","1"')
    print('"1","fake_kernel","2,048"')
    sys.exit(0)
if {sleep}:
    subprocess.run(["sleep", "{sleep}"])
app = argv[argv.index("--force-overwrite") + 1:]
open(argv[argv.index("--export") + 1] + ".ncu-rep", "w").close()
sys.exit(subprocess.run(app).returncode)
"""


def _fake_ncu(tmp_path, monkeypatch, sleep=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ncu = bin_dir / "ncu"
    ncu.write_text(FAKE_NCU.format(python=sys.executable, sleep=sleep))
    ncu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def test_kernel_counters_run_ncu_on_each_precision_and_read_its_report(tmp_path, monkeypatch):
    """The outer process (with a stand-in for ncu): for each config, in the order given, ncu
    runs the inner process on the provider, the report is imported as CSV and becomes the
    point's table, written to --out."""
    from bench import kernel_counters as kc

    _fake_ncu(tmp_path, monkeypatch)
    out = tmp_path / "counters.md"
    status = kc.main(["--device", "cpu", "--quick", "--configs", "S", "M", "--precisions",
                      "fp32", "--providers", "torch", "--warmup", "1", "--work-dir",
                      str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    text = out.read_text()
    assert status == 0, text
    assert text.index("## S fp32") < text.index("## M fp32"), text
    assert "| S | torch | `fake_kernel` | 2048.0 |" in text
    assert "| M | torch | `fake_kernel` | 2048.0 |" in text
    assert (tmp_path / "work" / "S_fp32.csv").exists()


def test_kernel_counters_stop_a_run_at_the_time_limit_with_its_children(tmp_path, monkeypatch):
    """A run past its time is killed with every process it started (ncu's child, here a
    sleep), said so in the table, and the next precision goes without time."""
    from bench import kernel_counters as kc

    sleep = f"60.{os.getpid()}"  # (pgrep below must find this test's sleep, no other's)
    _fake_ncu(tmp_path, monkeypatch, sleep=sleep)
    monkeypatch.setattr(kc, "MIN_SECONDS", 1)
    out = tmp_path / "counters.md"
    start = time.monotonic()
    status = kc.main(["--device", "cpu", "--precisions", "fp32", "bf16", "--seconds", "2",
                      "--work-dir", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    assert status == 1 and time.monotonic() - start < 30
    text = out.read_text()
    assert "## M fp32: out of time after 2 s" in text and "## M bf16: no time left" in text
    sleeping = subprocess.run(["pgrep", "-f", f"sleep {sleep}"], capture_output=True, text=True)
    assert sleeping.stdout.strip() == "", "the fake ncu's sleep outlived the time limit"


@pytest.mark.heavy(31)
def test_main_job_quick(tmp_path):
    out = _module("bench.run", "--quick", "--out", str(tmp_path))
    assert "sobolev" in out.stdout and "torch_func" in out.stdout
    # units: the MSEs' and the spread they compare with; the step times'
    assert "value MSE (f^2)" in out.stdout and "var(f) = " in out.stdout
    assert "wall-clock ms per step" in out.stdout and "median ms" in out.stdout
    # progress of the long phases, on stderr (plain lines: stderr is not a terminal here)
    assert "[train sobolev] 300/300 steps" in out.stderr and "now torch_func" in out.stderr
    written = {p.name for p in tmp_path.iterdir()}
    assert {"main_job.md", "training.csv", "step_times.csv"} <= written
    if importlib.util.find_spec("matplotlib") is not None:
        assert "main_job.png" in written
    curves = list(csv.DictReader((tmp_path / "training.csv").open()))
    for method in ("regular", "sobolev"):
        final = [r for r in curves if r["method"] == method][-1]
        assert final["step"] == "300" and float(final["value_mse"]) > 0
    times = {r["provider"]: r for r in csv.DictReader((tmp_path / "step_times.csv").open())}
    assert float(times["torch_func"]["p50"]) > 0 and times["torch_func"]["unit"] == "ms"
    # README shows this file's tables (--update-readme): the same columns
    table = (tmp_path / "main_job.md").read_text()
    readme = (ROOT / "README.md").read_text().split("<!-- main:begin -->")[1]
    readme = readme.split("<!-- main:end -->")[0]
    headers = [line for line in table.splitlines() if line.startswith(("| method", "| provider"))]
    assert len(headers) == 2 and all(line in readme for line in headers)


def _main_job():
    from bench import run

    return run


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_main_job_progress_lines_in_logs_and_a_bar_in_a_terminal():
    run = _main_job()
    log = _Stream(tty=False)
    with run.Progress(20, "phase", "steps", stream=log) as progress:
        for _ in range(20):
            progress.update(1, loss=0.5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("[phase] 20/20 steps")
    assert "loss 0.5" in lines[-1]
    pytest.importorskip("tqdm")
    terminal = _Stream(tty=True)
    with run.Progress(20, "phase", "steps", stream=terminal) as progress:
        for _ in range(20):
            progress.update(1)
    assert progress.bar is not None and "20/20" in terminal.getvalue()


def test_main_job_updates_only_its_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- main:begin -->\nold\n<!-- main:end -->\nrest\n")
    _main_job().update_readme("| new |", readme)
    assert readme.read_text() == "intro\n<!-- main:begin -->\n| new |\n<!-- main:end -->\nrest\n"


def test_gpu_session_dry_run():
    """What CI can check of the one-run GPU script: its stage limits fit a device command of
    under 10 minutes (560 s and the packing) and every entry point it calls accepts the
    arguments it is given."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = _run("bash", "scripts/gpu_session.sh", "--dry-run", env=env, timeout=240)
    total = int(re.search(r"limits add up to (\d+) s", out.stdout).group(1))
    assert total <= 560
    for stage in ("env", "build", "checks", "bench", "profile", "report"):
        assert re.search(rf"^  {stage} +\d+ s$", out.stdout, re.M), stage
    for entry in (
        "bench",
        "sweep",
        "compile",
        "profile",
        "counters",
        "report",
        "goals",
        "verdicts",
        "sanitize",
        "tests",
        "explore",
        "prebuilt cache",
    ):
        assert re.search(rf"^ok   {entry}: ", out.stdout, re.M), entry
    # the bench's own precompile where the compile part fell short: capped in time
    assert re.search(r"^ok   bench, compiling first: .*--precompile-seconds \d+", out.stdout, re.M)
    assert "FAIL" not in out.stdout


# Settings that select nothing new under scripts/sanitize_case.py: the defaults (the Triton
# backward's, where the sanitizer's static launches cannot measure), and the fused CUDA
# kernels' occupancy, which changes nothing at its widths (below 128).
_SANITIZER_DEFAULTS = {("SOBOLEV_CUDA_KERNEL", "fused"), ("SOBOLEV_CUDA_WEIGHT_GRADS", "gemm"),
                       ("SOBOLEV_TRITON_BACKWARD", "separate"),
                       ("SOBOLEV_CUDA_FUSED_OCCUPANCY", "low")}  # fmt: skip
# The benchmark's variants that run no kernel code of their own under the sanitizer.
_NOT_SANITIZED = {
    "cuda_bias_gemv": "cuBLAS's gemv: no kernel of ours",
    "triton_jit_launch": "the same kernels, launched through Triton's own path",
    "triton_split_tf32x3": "a form of the tf32x3 dots; the sanitizer's static launches take ieee",
    "triton_wide_tiles": "a tuner candidate; the sanitizer's static launches never take it",
}


def test_every_kernel_variant_of_the_bench_runs_under_the_gpu_sanitizers():
    """Each variant the benchmark times (bench/providers.py VARIANTS) is among the cases that
    the GPU script runs under compute-sanitizer's memcheck and racecheck
    (scripts/sanitize_case.py), so a new kernel's first GPU run checks it too: most are
    written without a GPU."""
    from bench.providers import VARIANTS

    spec = importlib.util.spec_from_file_location("sanitize_case", ROOT / "scripts" /
                                                  "sanitize_case.py")  # fmt: skip
    sanitize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sanitize)
    missing = []
    for name, (backend, settings) in VARIANTS.items():
        wanted = set(settings.items()) - _SANITIZER_DEFAULTS
        cases = [set(v.items()) for v in sanitize.VARIANTS[backend]]
        if name not in _NOT_SANITIZED and wanted and not any(wanted <= c for c in cases):
            missing.append(name)
    assert not missing, f"not in scripts/sanitize_case.py's VARIANTS: {missing}"
    assert set(_NOT_SANITIZED) <= set(VARIANTS)  # (a name gone from the bench goes here too)


def test_the_gpu_script_leaves_out_unmeasured_candidates_after_a_kernel_fault(tmp_path):
    """scripts/gpu_session.sh's checks_faulted: a lost CUDA context in the checks' logs (the
    tests' failures, the wide tiles' cases) makes the later stages run the Triton tuners
    with SOBOLEV_TRITON_UNMEASURED=0; other failures do not."""
    script = (ROOT / "scripts" / "gpu_session.sh").read_text()
    function = re.search(r"^checks_faulted\(\) \{.*?^\}", script, re.M | re.S).group(0)
    assert "SOBOLEV_TRITON_UNMEASURED=0" in script.split("checks_faulted; then", 1)[1][:200]

    def faulted(**logs) -> bool:
        work = tmp_path / str(len(list(tmp_path.iterdir())))
        work.mkdir()
        for name, text in logs.items():
            (work / f"{name}.txt").write_text(text)
        run = subprocess.run(["bash", "-c", f"{function}\nchecks_faulted"],
                             env={**os.environ, "WORK": str(work)})  # fmt: skip
        return run.returncode == 0

    assert not faulted()
    assert not faulted(gpu_tests="FAILED tests/x.py::test_y - AssertionError: 3e-3 off")
    assert faulted(gpu_test_failures="RuntimeError: CUDA error: an illegal memory access was "
                                     "encountered")  # fmt: skip
    assert faulted(wide="M B=16384 fp32 triton step FAILED: unspecified launch failure")
    (tmp_path / "compile").mkdir()  # the compile part's log names the exception's type only
    (tmp_path / "compile" / "compile.log").write_text("[precompile 7/40] triton/step: "
                                                      "AcceleratorError")  # fmt: skip
    run = subprocess.run(["bash", "-c", f"{function}\nchecks_faulted"],
                         env={**os.environ, "WORK": str(tmp_path / "compile")})  # fmt: skip
    assert run.returncode == 0


# an nvcc command line of the build, as every one names the CUTLASS include directory
_NVCC_LINE = ("[2/9] /usr/local/cuda/bin/nvcc -I/repo/csrc -I/repo/third_party/cutlass/include "
              "-c /repo/csrc/cuda/{tu}.cu -o /repo/build/temp/csrc/cuda/{tu}.o")  # fmt: skip


@pytest.mark.parametrize("error, retried", [
    (_NVCC_LINE.format(tu="weight_grad_gemm")
     + "\nFAILED: /repo/build/temp/csrc/cuda/weight_grad_gemm.o", True),  # ninja's
    ("/repo/third_party/cutlass/include/cutlass/gemm/kernel/gemm.h(40): error: no instance",
     True),  # nvcc's, in a CUTLASS header
    ("/repo/csrc/cuda/weight_grad_gemm.cu(77): catastrophic error: cannot open source file",
     True),
    (_NVCC_LINE.format(tu="weight_grad_gemm") + "\n" + _NVCC_LINE.format(tu="fused_backward")
     + "\n/repo/csrc/cuda/fused_backward.cu(12): error: expected a ';'"
     + "\nFAILED: /repo/build/temp/csrc/cuda/fused_backward.o", False),
])  # fmt: skip
def test_the_gpu_scripts_build_goes_on_without_cutlass_where_it_fails(tmp_path, error, retried):
    """scripts/gpu_session.sh's build: where the vendored CUTLASS GEMM is what failed to
    compile, it builds again with SOBOLEV_NO_CUTLASS=1, so that the rest of the CUDA backend
    is measured; another failure is the build's, although its log names CUTLASS's include
    directory and weight_grad_gemm.cu on every nvcc command line."""
    script = (ROOT / "scripts" / "gpu_session.sh").read_text()
    functions = "\n".join(["say() { echo \"$*\"; }",
                           re.search(r"^CUTLASS_FAILED=.*$", script, re.M).group(0)] + [
        re.search(rf"^{name}\(\) \{{.*?^\}}", script, re.M | re.S).group(0)
        for name in ("limited", "build_extension", "stage_build")])  # fmt: skip
    (tmp_path / "error.txt").write_text(error + "\n")
    python = tmp_path / "python"  # torch's device query, the package check, and pip
    python.write_text(f"""#!/bin/bash
case "$*" in
  *get_device_capability*) echo 9.0 ;;
  *pip*) [ "$SOBOLEV_NO_CUTLASS" = 1 ] && echo built && exit 0; cat {tmp_path / "error.txt"}
         exit 1 ;;
esac
""")
    python.chmod(0o755)
    run = subprocess.run(["bash", "-c", f"{functions}\nstage_build 60"], capture_output=True,
                         text=True, env={**os.environ, "WORK": str(tmp_path), "PY": str(python),
                                         "NCPU": "2", "SOBOLEV_NO_CUTLASS": ""})  # fmt: skip
    assert (run.returncode == 0) == retried, run.stdout + run.stderr
    assert ("again without it" in run.stdout) == retried
    assert (tmp_path / "build_no_cutlass.log").exists() == retried
    assert error in (tmp_path / "build.log").read_text()


def test_the_gpu_scripts_tests_record_their_durations_as_they_go(tmp_path):
    """SOBOLEV_TEST_DURATIONS (tests/conftest.py), which gpu_session.sh sets: a time limit
    ends pytest before its --durations summary, so each test's seconds are written as it
    ends."""
    record = tmp_path / "durations.txt"
    test = "tests/test_direct_launch.py::test_a_bad_setting_is_named"
    _run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test,
         env={**os.environ, "SOBOLEV_TEST_DURATIONS": str(record)})  # fmt: skip
    lines = record.read_text().splitlines()
    assert [line.split()[2:] for line in lines] == [["setup", test], ["call", test]]
    assert all(float(line.split()[0]) >= 0 for line in lines)


def test_the_gpu_scripts_tests_of_unmeasured_forms_run_first():
    """The gpu tests' order (tests/conftest.py): the tests marked ``unmeasured`` (the kernel
    forms of docs/unmeasured.md) come first, so that the GPU script's time limit, which cut
    runs 3 to 6, cuts others: it is their verdicts that let a run's measurements be adopted."""

    def collected(marks):
        out = _run(sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                   "no:cacheprovider", "-m", marks, "tests")  # fmt: skip
        return [line for line in out.stdout.splitlines() if "::" in line]

    order, first = collected("gpu"), collected("gpu and unmeasured")
    assert len(first) >= 40 and len(order) > len(first)
    assert order[: len(first)] == first
    names = {item.split("::")[1].split("[")[0] for item in first}
    assert {"test_every_launch_config_is_correct_in_bf16_on_the_gpu",
            "test_resident_backward_on_gpu",
            "test_cuda_tensor_core_split_k_weight_grads_agree"} <= names  # fmt: skip
    assert not any("[gemm" in item or "-gemm]" in item for item in first
                   if "test_weight_gradient_methods_on_gpu" in item)  # fmt: skip


@pytest.mark.gpu
def test_step_quick_on_gpu(tmp_path):
    _module("bench.step", "--quick", "--device", "cuda", "--precisions", "fp32", "tf32", "bf16",
            "--out-dir", str(tmp_path))  # fmt: skip
    (csv_path,) = tmp_path.glob("*.csv")
    rows = list(csv.DictReader(csv_path.open()))
    assert not [r for r in rows if "disagrees" in r["unit"]]
    assert {r["precision"] for r in rows} == {"fp32", "tf32", "bf16"}
    torch.cuda.empty_cache()


def test_tuning_table_lists_every_candidate_and_marks_the_winner(monkeypatch):
    from bench.tuning_table import tuning_markdown
    from sobolev_kernels import tuning
    from sobolev_kernels.triton.layout import LaunchConfig

    tuning.clear()
    assert "Nothing was measured" in tuning_markdown()
    times = iter([2.0, 1.0, 1.5])
    monkeypatch.setattr(tuning, "time_ms", lambda fn: next(times))
    key = (
        "triton",
        "fwd",
        "cuda:0",
        torch.float32,
        False,
        1024,
        (("K", 2), ("ORDER", 1), ("WIDTHS", (16, 128, 8))),
    )
    static = LaunchConfig(16, 8, 32, 2, "ieee")
    wide = LaunchConfig(64, 8, 32, 2, "tf32x3", 32)
    twin = wide._replace(activated=True)
    assert tuning.fastest(key, [static, wide, twin], lambda c: None) == wide
    text = tuning_markdown()
    tuning.clear()
    assert "triton fwd, widths (16, 128, 8), K 2, order 1, float32, B <= 1024" in text
    assert "precision ieee" in text and "| 2.0000 |  |" in text
    config = "rows 64, warps 8, chunk 32, group 2, precision tf32x3, cols 32"
    assert f"| {config} | 1.0000 | **chosen** |" in text
    assert f"| activated: {config} | 1.5000 |  |" in text


def test_precision_major_plan_measures_one_precision_whole_first():
    """--precision-major (the GPU script's bench stage): every config at fp32 before any at
    bf16, so a stage cut by its time limit has the first precision whole; by default each
    config's precisions go together."""
    from bench import step

    argv = ["--configs", "M", "S", "--sweeps", "--precisions", "fp32", "bf16", "--device", "cpu"]
    default = [(label, precision) for label, _, precision in step.plan(step.parse(argv))]
    assert default == [("M", "fp32"), ("M", "bf16"), ("S", "fp32"), ("S", "bf16")]
    major = step.plan(step.parse([*argv, "--precision-major"]))
    assert [(label, precision) for label, _, precision in major] == [
        ("M", "fp32"), ("S", "fp32"), ("M", "bf16"), ("S", "bf16")]  # fmt: skip


def test_goals_first_plan_measures_the_judged_points_first():
    """--goals-first (the GPU script's bench stage): the points bench/goals.py judges (S, M
    and L in fp32, M in bf16) before the others, in the plan's order otherwise; the sweep's
    points, judged by no goal, after them."""
    from bench import step

    argv = ["--configs", "M", "S", "L", "--sweeps", "batch", "--precisions", "fp32", "bf16",
            "--device", "cpu", "--goals-first"]  # fmt: skip
    todo = [(label, precision) for label, _, precision in step.plan(step.parse(argv))]
    assert todo[:6] == [("M", "fp32"), ("M", "bf16"), ("S", "fp32"), ("L", "fp32"),
                        ("S", "bf16"), ("L", "bf16")]  # fmt: skip
    assert all(label.startswith("batch=") for label, _ in todo[6:]) and len(todo) > 6


def test_every_variant_of_our_backends_is_judged_by_the_goals():
    """bench/goals.py's provider lists (a goal's best variant is the best of them) hold every
    variant the bench times: a new provider is judged against the issues' goals too."""
    from bench import goals, providers

    ours = {*providers.TRITON_VARIANTS, *providers.COMPILED, "triton_graphed"}
    assert ours <= set(goals.TRITON)
    assert {*providers.CUDA_VARIANTS, "cuda_graphed"} <= set(goals.CUDA)
