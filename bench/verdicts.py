"""What one GPU run says of the kernel forms no GPU had run before it (docs/unmeasured.md).

    python -m bench.verdicts run/NVIDIA_H200.csv --tuning run/*_tuning_*.md \
        --tests run/gpu_tests.txt --kernels run/kernels_M.md

A form is adopted where it is faster and its GPU tests passed (docs/unmeasured.md says what
to change then). For each form this reads, from the run's own files:
- a provider form (a setting the bench times as a provider of its own): its step and forward
  p50 against its baseline provider's at every point both have (the CSV), and its GPU time
  per step at config M against the baseline's (the kernel profile's totals);
- a tuner candidate form: in how many of the autotuners' choices it was a candidate, in how
  many it was chosen, and its time against the fastest other candidate of each (the tuning
  tables, every candidate's median);
- both: its GPU tests' outcomes (the tests' verbose log; none seen: cut by the time limit,
  or not run).
``scripts/gpu_session.sh`` appends this to the run's BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.report import _num, load

# a ratio within this of 1 is a tie: p50s of one run move by a percent or two
TIE = 0.03


@dataclass(frozen=True)
class Form:
    name: str  # as docs/unmeasured.md's table names it (in backticks there)
    tests: tuple[tuple[str, str | None], ...]  # (test function, parameter id token or None)
    provider: str | None = None  # a provider form: the bench's provider
    baseline: str | None = None  # ... and the provider it replaces
    candidate: Callable[[str], bool] | None = None  # a tuner form: the candidate's text
    metric: str = "time"  # what a provider form is for: its time, or its peak "memory"


def _method(name: str) -> Callable[[str], bool]:
    return lambda text: text == name


def _tall_column_blocks(text: str) -> bool:  # "rows 128, warps 8, ..., cols 32"
    return text.startswith("rows 128,") and not text.endswith("cols 0")


def _activated(text: str) -> bool:
    return text.startswith("activated: ")


def _spans(text: str) -> bool:  # "spans of 8 tiles: rows 16, ..."
    return text.startswith("spans of ")


_LAUNCH_CONFIGS = (("test_every_launch_config_is_correct_on_the_gpu", None),)
_WEIGHT_GRADS = "test_weight_gradient_methods_on_gpu"
FORMS = [
    Form("splitk_wide", ((_WEIGHT_GRADS, "splitk_wide"),), candidate=_method("splitk_wide")),
    Form("recompute_wide", ((_WEIGHT_GRADS, "recompute_wide"),),
         candidate=_method("recompute_wide")),
    Form("cutlass", ((_WEIGHT_GRADS, "cutlass"), ("test_weight_grad_gemm_on_the_gpu", None)),
         candidate=_method("cutlass")),
    Form("splitk_unpipelined", ((_WEIGHT_GRADS, "splitk_unpipelined"),),
         candidate=_method("splitk_unpipelined")),
    Form("column-block tiles of 128 rows", _LAUNCH_CONFIGS, candidate=_tall_column_blocks),
    Form("activated", _LAUNCH_CONFIGS, candidate=_activated),  # the forward's activated twin
    Form("spans of tiles", (("test_persistent_backward_in_spans_on_the_gpu", None),),
         candidate=_spans),  # the persistent backward's twin
    Form("triton_split_tf32x3", (("test_split_tf32x3_kernels_agree_on_the_gpu", None),),
         "triton_split_tf32x3", "triton"),
    Form("triton_kmajor_inputs", (("test_transposed_inputs_agree_on_the_gpu", None),),
         "triton_kmajor_inputs", "triton"),
    Form("triton_resident_backward", (("test_resident_backward_on_gpu", None),),
         "triton_resident_backward", "triton"),
    Form("triton_wide_tiles", (("test_every_launch_config_is_correct_in_bf16_on_the_gpu", None),),
         "triton_wide_tiles", "triton"),
    Form("cuda_splitk_tc", (("test_cuda_tensor_core_split_k_weight_grads_agree", None),
                            ("test_cuda_variants_deterministic_at_a_large_batch", "splitk_tc")),
         "cuda_splitk_tc", "cuda"),
    Form("cuda_bias_operands",
         (("test_cuda_variants_deterministic_at_a_large_batch", "bias_operands"),),
         "cuda_bias_operands", "cuda"),
    Form("cuda_bias_gemv", (("test_cuda_variants_deterministic_at_a_large_batch", "bias_gemv"),),
         "cuda_bias_gemv", "cuda"),
    Form("cuda_cutlass_gemm", (("test_cuda_cutlass_weight_grads_agree", None),
                               ("test_weight_grad_gemm_on_the_gpu", None),
                               ("test_cuda_variants_deterministic_at_a_large_batch", "cutlass")),
         "cuda_cutlass_gemm", "cuda"),
    Form("cuda_backward_operands",
         (("test_cuda_gemm_operands_from_the_backward_agree", None),
          ("test_cuda_variants_deterministic_at_a_large_batch", "backward_operands")),
         "cuda_backward_operands", "cuda"),
    Form("cuda_batched_pass",
         (("test_cuda_batched_forward_pass_agrees", None),
          ("test_cuda_variants_deterministic_at_a_large_batch", "batched_pass")),
         "cuda_batched_pass", "cuda"),
    Form("cuda_lean",
         (("test_cuda_backward_in_row_chunks_agrees", None),
          ("test_cuda_backward_in_row_chunks_holds_one_chunk", None),
          ("test_a_training_step_replays_from_a_cuda_graph", "cuda_row_chunks")),
         "cuda_lean", "cuda", metric="memory"),
    Form("cuda_staged_split",
         (("test_cuda_staged_weight_split_agrees_with_the_per_warp_split", None),),
         "cuda_staged_split", "cuda"),
]  # fmt: skip


# ---------------------------------------------------------------------------- the run's files


def gpu_test_outcomes(text: str) -> dict[str, str]:
    """{test id: PASSED, FAILED, ERROR or SKIPPED} from pytest's verbose output, with or
    without pytest-xdist ("[gw3] [ 10%] PASSED tests/..." or "tests/... PASSED [ 10%]")."""
    found = {}
    for line in text.splitlines():
        m = re.search(r"\b(PASSED|FAILED|ERROR|SKIPPED)\s+(tests/\S+::\S+)", line) or re.search(
            r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED)\b", line
        )
        if m:
            outcome, test = m.groups() if m.group(1).isupper() else m.groups()[::-1]
            found.setdefault(test, outcome)  # (pytest's summary repeats the failures)
    return found


def tuning_choices(text: str) -> list[tuple[str, list[tuple[str, float, bool]]]]:
    """[(choice, [(candidate, median ms or nan, chosen)])] from the tuning tables
    (bench/tuning_table.py): a choice's first row names it, the rows after it leave it
    blank."""
    choices: list[tuple[str, list]] = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 4 or cells[0] == "choice":
            continue
        label, candidate, ms, mark = cells
        if set(candidate) <= set("-: ") or not (label or choices):  # the rule; no choice yet
            continue
        if label:
            choices.append((label, []))
        try:
            value = float(ms)
        except ValueError:
            value = math.nan  # "did not fit"
        choices[-1][1].append((candidate, value, "chosen" in mark))
    return choices


def kernel_totals(text: str) -> dict[tuple[str, str], float]:
    """{(precision, provider): GPU us of one step} from the kernel profile's totals
    (bench/kernel_profile.py: a "## fp32" section per precision)."""
    totals, precision = {}, ""
    for line in text.splitlines():
        if line.startswith("## "):
            precision = line[3:].split()[0]
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[2] == "**total**" and precision:
            try:
                totals[(precision, cells[1])] = float(cells[4])
            except ValueError:
                pass
    return totals


# ------------------------------------------------------------------------------- the verdicts


def _verdict(ratio: float) -> str:
    return "faster" if ratio < 1 - TIE else "slower" if ratio > 1 + TIE else "same"


def _tests_cell(form: Form, outcomes: dict[str, str] | None) -> str:
    if outcomes is None:
        return ""
    counts: dict[str, int] = {}
    failed = []
    for test, outcome in outcomes.items():
        name, _, params = test.split("::", 1)[1].partition("[")
        tokens = params.rstrip("]").split("-")
        if any(name == fn and (tok is None or tok in tokens) for fn, tok in form.tests):
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome in ("FAILED", "ERROR"):
                failed.append(test.split("::", 1)[1])
    if not counts:
        return "none ran (cut by the time limit?)"
    text = ", ".join(f"{n} {outcome.lower()}" for outcome, n in sorted(counts.items()))
    return text + (f": {', '.join(failed[:3])}" if failed else "")


def _ratios(table: dict, form: Form, metric: str) -> list[tuple[str, float]]:
    """(point, the form's value / its baseline's) of ``metric`` wherever both have a row."""
    ratios = []
    for key, row in table.items():
        provider, config, _, precision, mode, row_metric = key
        if provider != form.provider or row_metric != metric:
            continue
        ratio = _num(row) / _num(table.get((form.baseline, *key[1:])))
        if not math.isnan(ratio):
            ratios.append((f"{config} {precision} {mode}", ratio))
    return ratios


def provider_rows(table: dict, form: Form, totals: dict | None) -> tuple[str, str, str]:
    """(ratios per point, verdict, kernel profile) of a provider form against its baseline:
    its times, or a memory form's peaks (and then what they cost in time)."""
    ratios = _ratios(table, form, form.metric)
    cells = ", ".join(f"{point} {ratio:.2f}x" for point, ratio in ratios)
    faster = [p for p, r in ratios if _verdict(r) == "faster"]
    slower = [p for p, r in ratios if _verdict(r) == "slower"]
    less, more = ("faster", "slower") if form.metric == "time" else ("less memory", "more memory")
    verdict = "not measured" if not ratios else (
        (f"{less} at " + ", ".join(faster) if faster else f"never {less}")
        + (f"; {more} at " + ", ".join(slower) if slower else "")
    )  # fmt: skip
    times = _ratios(table, form, "time") if form.metric != "time" else []
    if ratios and times:
        verdict += "; time " + ", ".join(f"{point} {ratio:.2f}x" for point, ratio in times)
    profile = []
    for (precision, provider), us in sorted((totals or {}).items()):
        base = (totals or {}).get((precision, form.baseline))
        if provider == form.provider and base:
            profile.append(f"{precision}: {us / 1000:.2f} against {base / 1000:.2f} ms "
                           f"({us / base:.2f}x)")  # fmt: skip
    return cells or "no rows", verdict, "; ".join(profile)


def candidate_row(choices: list, form: Form) -> tuple[str, str, str]:
    """(offered in, chosen in, its time against the fastest other candidate) of a tuner
    form over every choice of the tuning tables."""
    offered, chosen, ratios, where = 0, 0, [], []
    for label, candidates in choices:
        mine = [(ms, won) for text, ms, won in candidates if form.candidate(text)]
        others = [ms for text, ms, _ in candidates if not form.candidate(text)]
        if not mine or not others:
            continue
        offered += 1
        if any(won for _, won in mine):
            chosen += 1
            where.append(label)
        best_mine = min((ms for ms, _ in mine), default=math.nan)
        best_other = min((ms for ms in others if not math.isnan(ms)), default=math.nan)
        if not (math.isnan(best_mine) or math.isnan(best_other)):
            ratios.append(best_mine / best_other)
    if not offered:
        return "0", "", "not measured"
    spread = (f"{min(ratios):.2f}x to {max(ratios):.2f}x, median "
              f"{statistics.median(ratios):.2f}x") if ratios else "did not fit"  # fmt: skip
    won = f"{chosen}" + (f" ({'; '.join(where[:4])}{' ...' if len(where) > 4 else ''})"
                         if where else "")  # fmt: skip
    return str(offered), won, spread


def verdicts_markdown(
    table: dict,
    choices: list | None = None,
    outcomes: dict | None = None,
    totals: dict | None = None,
) -> str:
    """Markdown: the provider forms' table, then the tuner forms'."""
    lines = ["## The unmeasured forms' verdicts (`bench/verdicts.py`)", "",
             "Against the baseline provider, p50 of the same run (below 1: faster; within "
             f"{TIE:.0%}: the same). Adopt where faster and its tests passed; "
             "`docs/unmeasured.md` says what to change.", "",
             "| form | against | ratio per point | verdict | kernel profile at M | GPU tests |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for form in (f for f in FORMS if f.provider):
        cells, verdict, profile = provider_rows(table, form, totals)
        lines.append(f"| `{form.provider}` | `{form.baseline}` | {cells} | {verdict} | "
                     f"{profile} | {_tests_cell(form, outcomes)} |")  # fmt: skip
    lines += ["", "Tuner candidates: its best time in a choice against the fastest other "
              "candidate's (below 1: it won).", "",
              "| form | choices offered | chosen in | its time against the others' best "
              "| GPU tests |", "| --- | ---: | --- | --- | --- |"]  # fmt: skip
    for form in (f for f in FORMS if f.candidate):
        offered, won, spread = candidate_row(choices or [], form)
        lines.append(f"| `{form.name}` | {offered} | {won} | {spread} | "
                     f"{_tests_cell(form, outcomes)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path, help="the run's bench/step.py CSV")
    parser.add_argument("--tuning", type=Path, nargs="*", default=[],
                        help="the run's tuning tables (*_tuning_*.md)")  # fmt: skip
    parser.add_argument("--tests", type=Path, help="the gpu tests' verbose log")
    parser.add_argument("--kernels", type=Path, help="the kernel profile (kernels_M.md)")
    args = parser.parse_args(argv)
    table = load(args.csv) if args.csv.exists() else {}
    choices = [c for path in args.tuning if path.exists()
               for c in tuning_choices(path.read_text())]  # fmt: skip
    outcomes = (gpu_test_outcomes(args.tests.read_text())
                if args.tests and args.tests.exists() else None)  # fmt: skip
    totals = (kernel_totals(args.kernels.read_text())
              if args.kernels and args.kernels.exists() else None)  # fmt: skip
    text = verdicts_markdown(table, choices, outcomes, totals)
    print(text)
    return text


if __name__ == "__main__":
    main()
