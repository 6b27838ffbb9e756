"""bench/verdicts.py: what a GPU run says of the forms no GPU had run (docs/unmeasured.md)."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import torch

from bench import verdicts
from bench.report import load
from bench.verdicts import FORMS, candidate_row, gpu_test_outcomes, kernel_totals, provider_rows

ROOT = Path(__file__).resolve().parents[1]
_FORM = {form.name: form for form in FORMS}


def test_every_form_of_the_docs_table_is_judged_and_none_else():
    """The forms listed in docs/unmeasured.md and those verdicts.py judges are the same: a
    form added to one and not the other would go unjudged, or be judged after adoption."""
    docs = (ROOT / "docs" / "unmeasured.md").read_text()
    rows = [line for line in docs.splitlines() if line.startswith("| ") and "---" not in line]
    named = {p for line in rows for p in re.findall(r"providers? ((?:`\w+`(?:, )?)+)", line)}
    providers = {p for group in named for p in re.findall(r"`(\w+)`", group)}
    assert providers == {form.provider for form in FORMS if form.provider}
    tuner_rows = [line for line in rows if "tuner candidate" in line]
    for form in (f for f in FORMS if f.candidate):
        assert [line for line in tuner_rows if form.name in line], form.name
    assert len(tuner_rows) == sum(1 for f in FORMS if f.candidate)


def test_test_outcomes_read_both_verbose_forms():
    log = "\n".join([
        "[gw5] [  0%] PASSED tests/test_a.py::test_x[dtype0-1-splitk_wide] ",
        "[gw1] [  1%] FAILED tests/test_a.py::test_x[dtype0-2-splitk_wide] ",
        "tests/test_b.py::test_y[bias_operands] SKIPPED (needs the extension) [ 50%]",
        "FAILED tests/test_a.py::test_x[dtype0-2-splitk_wide] - AssertionError",  # the summary
    ])  # fmt: skip
    assert gpu_test_outcomes(log) == {
        "tests/test_a.py::test_x[dtype0-1-splitk_wide]": "PASSED",
        "tests/test_a.py::test_x[dtype0-2-splitk_wide]": "FAILED",
        "tests/test_b.py::test_y[bias_operands]": "SKIPPED",
    }


def test_a_forms_tests_are_its_own_by_parameter_token():
    """`recompute` is not `recompute_wide`'s: tests match on whole parameter ids."""
    name = "tests/test_triton_backend.py::test_weight_gradient_methods_on_gpu"
    outcomes = {f"{name}[dtype0-1-recompute_wide]": "PASSED",
                f"{name}[dtype0-2-recompute]": "FAILED"}  # fmt: skip
    assert verdicts._tests_cell(_FORM["recompute_wide"], outcomes) == "1 passed"
    assert verdicts._tests_cell(_FORM["splitk_wide"], outcomes) == (
        "none ran (cut by the time limit?)")  # fmt: skip
    assert verdicts._tests_cell(_FORM["splitk_wide"], None) == ""


def _csv(path: Path, rows: list[tuple]) -> Path:
    """(provider, config, precision, mode, p50[, metric: time where absent]) rows."""
    columns = ["provider", "config", "mode", "metric", "unit", "p20", "p50", "p80", "device",
               "torch", "triton", "commit", "date", "precision", "batch", "dim", "width",
               "layers", "out", "k", "order", "dtype"]  # fmt: skip
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for provider, config, precision, mode, p50, *metric in rows:
            metric = metric[0] if metric else "time"
            writer.writerow({"provider": provider, "config": config, "mode": mode,
                             "metric": metric, "unit": "ms" if metric == "time" else "MiB",
                             "p50": p50, "device": "GPU",
                             "precision": precision, "batch": 65536, "dim": 16, "width": 128,
                             "layers": 4, "out": 8, "k": 2, "order": 1})  # fmt: skip
    return path


def test_a_provider_form_against_its_baseline(tmp_path):
    table = load(_csv(tmp_path / "run.csv", [
        ("triton", "M", "fp32", "step", 2.0), ("triton_split_tf32x3", "M", "fp32", "step", 1.5),
        ("triton", "S", "fp32", "step", 1.0), ("triton_split_tf32x3", "S", "fp32", "step", 1.01),
        ("triton", "L", "fp32", "step", 4.0), ("triton_split_tf32x3", "L", "fp32", "step", 5.0),
        ("triton", "M", "bf16", "step", 1.0),  # (no row of the form: no ratio)
    ]))  # fmt: skip
    totals = {("fp32", "triton"): 1700.0, ("fp32", "triton_split_tf32x3"): 1360.0}
    cells, verdict, profile = provider_rows(table, _FORM["triton_split_tf32x3"], totals)
    assert cells == "M fp32 step 0.75x, S fp32 step 1.01x, L fp32 step 1.25x"
    assert verdict == "faster at M fp32 step; slower at L fp32 step"
    assert profile == "fp32: 1.36 against 1.70 ms (0.80x)"
    assert provider_rows(table, _FORM["cuda_splitk_tc"], None) == ("no rows", "not measured", "")


def test_a_memory_form_is_judged_by_its_peak_memory(tmp_path):
    """cuda_lean is there for memory: its peaks against the default's judged, its (longer)
    times shown beside."""
    table = load(_csv(tmp_path / "run.csv", [
        ("cuda", "S", "fp32", "step", 932.0, "memory"), ("cuda", "S", "fp32", "step", 2.9),
        ("cuda_lean", "S", "fp32", "step", 233.0, "memory"),
        ("cuda_lean", "S", "fp32", "step", 3.6),
        ("cuda", "L", "fp32", "step", 100.0, "memory"),
        ("cuda_lean", "L", "fp32", "step", 110.0, "memory"),
    ]))  # fmt: skip
    cells, verdict, _ = provider_rows(table, _FORM["cuda_lean"], None)
    assert cells == "S fp32 step 0.25x, L fp32 step 1.10x"
    assert verdict == ("less memory at S fp32 step; more memory at L fp32 step; "
                       "time S fp32 step 1.24x")  # fmt: skip


def test_a_tuner_form_over_the_tuning_tables(monkeypatch):
    """The tables as bench/tuning_table.py writes them: chosen in one choice of two, its best
    time against the fastest other candidate's in each."""
    from bench.tuning_table import tuning_markdown
    from sobolev_kernels import tuning

    tuning.clear()
    times = iter([1.0, 0.8, 0.6, 2.0, 2.5])
    monkeypatch.setattr(tuning, "time_ms", lambda fn: next(times))
    widths = (("K", 2), ("ORDER", 1), ("WIDTHS", (16, 128, 8)))
    for batch, candidates in ((65536, ["gemm", "splitk", "splitk_wide"]),
                              (1024, ["gemm", "splitk_wide"])):  # fmt: skip
        key = ("triton", "weight_grad", "cuda:0", torch.float32, False, batch, widths)
        tuning.fastest(key, candidates, lambda c: None)
    text = tuning_markdown()
    tuning.clear()
    choices = verdicts.tuning_choices(text)
    assert [len(c) for _, c in choices] == [3, 2]
    offered, won, spread = candidate_row(choices, _FORM["splitk_wide"])
    assert offered == "2" and won.startswith("1 (triton weight_grad, widths (16, 128, 8)")
    assert spread == "0.75x to 1.25x, median 1.00x"
    assert candidate_row(choices, _FORM["recompute_wide"]) == ("0", "", "not measured")


def test_the_persistent_spans_form_over_the_tuning_tables(monkeypatch):
    """A launch config's span twin is a candidate of its own in the tables ("spans of N
    tiles: ..."), which the `spans of tiles` form finds; its one-tile launch is not it."""
    from bench.tuning_table import tuning_markdown
    from sobolev_kernels import tuning
    from sobolev_kernels.triton.layout import LaunchConfig

    tuning.clear()
    times = iter([2.0, 1.0])
    monkeypatch.setattr(tuning, "time_ms", lambda fn: next(times))
    one_tile = LaunchConfig(16, 8, 32, 2, "tf32x3")
    key = ("triton", "bwd_persistent", "cuda:0", torch.float32, False, 65536,
           (("K", 2), ("ORDER", 1), ("WIDTHS", (16, 128, 8))))  # fmt: skip
    tuning.fastest(key, [one_tile, one_tile._replace(dw_tiles=8)], lambda c: None)
    text = tuning_markdown()
    tuning.clear()
    assert "| spans of 8 tiles: rows 16, warps 8, chunk 32" in text
    offered, won, spread = candidate_row(verdicts.tuning_choices(text), _FORM["spans of tiles"])
    assert offered == "1" and won.startswith("1 (triton bwd_persistent")
    assert spread == "0.50x to 0.50x, median 0.50x"


def test_kernel_totals_read_the_profiles_precision_sections():
    text = "\n".join([
        "## fp32", "| config | provider | kernel | calls | us | share |",
        "| M | triton | `_sobolev_bwd_kernel` | 1 | 680.4 | 40% |",
        "| M | triton | **total** | 14 | 1698.4 | |",
        "## bf16", "| M | triton | **total** | 6 | 867.6 | |",
        "## triton: host 1.732 ms a step", "| `f` | 1 | 0.3 | 1.3 |",
    ])  # fmt: skip
    assert kernel_totals(text) == {("fp32", "triton"): 1698.4, ("bf16", "triton"): 867.6}


def test_the_command_line_takes_a_run_with_files_missing(tmp_path, capsys):
    """A run cut short may lack its tuning tables, tests or profile: the verdicts say what
    was not measured instead of failing (the GPU script's report stage)."""
    path = _csv(
        tmp_path / "run.csv",
        [("cuda", "M", "fp32", "step", 2.7), ("cuda_staged_split", "M", "fp32", "step", 2.2)],
    )
    text = verdicts.main([str(path), "--tuning", str(tmp_path / "none_tuning_1.md"),
                          "--tests", str(tmp_path / "none.txt")])  # fmt: skip
    assert "| `cuda_staged_split` | `cuda` | M fp32 step 0.81x | faster at M fp32 step |" in text
    assert "| `splitk_wide` | 0 |  | not measured |  |" in text


def test_every_form_has_gpu_tests_marked_unmeasured():
    """Each form's GPU tests, as verdicts.py finds them, are among those marked
    ``unmeasured`` (collected first in the GPU script's time-limited run): a renamed test or
    parameter would leave its form's verdict saying that none ran."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "-m", "gpu and unmeasured", "tests"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    marked = {line.strip(): "PASSED" for line in out.stdout.splitlines() if "::" in line}
    for form in FORMS:
        assert verdicts._tests_cell(form, marked).endswith(" passed"), form.name
