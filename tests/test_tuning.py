"""Measured choices (``sobolev_kernels.tuning``): the Triton launch configs and ``auto``'s pick
between fused backends. Without a GPU nothing is measured, so these tests replace the GPU
timer with a scripted one; the ``gpu`` cases run the real thing."""

import importlib.util
import json

import pytest
import torch
from conftest import (
    HAS_CUDA,
    TOLERANCES,
    assert_backends_agree,
    assert_forward_only_agrees,
    offer_cutlass_gemm,
    sample_inputs,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels import backends, tuning
from sobolev_kernels.problem import SobolevProblem


@pytest.fixture(autouse=True)
def _forget_choices():
    tuning.clear()
    yield
    tuning.clear()


class ScriptedTimer:
    """Runs each candidate once (as the real timer does) and reports scripted times."""

    def __init__(self, times):
        self.times = list(times)
        self.calls = 0

    def __call__(self, fn):
        fn()
        self.calls += 1
        return self.times[(self.calls - 1) % len(self.times)]


def test_fastest_measures_once_per_key_and_keeps_the_fastest(monkeypatch):
    timer = ScriptedTimer([3.0, 1.0, 2.0])
    monkeypatch.setattr(tuning, "time_ms", timer)
    ran = []
    assert tuning.fastest("k", ["a", "b", "c"], ran.append) == "b"
    assert ran == ["a", "b", "c"]
    assert tuning.fastest("k", ["a", "b", "c"], ran.append) == "b"  # remembered: no runs
    assert timer.calls == 3 and tuning.chosen("k") == "b"
    assert tuning.choices() == {"k": "b"}
    assert tuning.measurements() == {"k": [("a", 3.0), ("b", 1.0), ("c", 2.0)]}
    assert tuning.fastest("other", ["a", "b", "c"], ran.append) == "b"
    assert timer.calls == 6


def test_saved_choices_serve_another_process_before_its_own_measurements(monkeypatch, tmp_path):
    """save() writes strings and registered NamedTuples (a Triton launch config); load()
    serves them where nothing was measured, as this process's choices, without measuring.
    A choice of another type is not carried."""
    from sobolev_kernels.triton.layout import LaunchConfig

    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([2.0, 1.0]))
    config = LaunchConfig(rows=32, warps=4, chunk=32, group=2, precision="tf32x3", cols=32)
    key = ("triton", "fwd", "cuda:0", torch.float32, False, 1024, (("K", 2),))
    assert tuning.fastest(key, [LaunchConfig(16, 4, 32, 1, "ieee"), config], lambda c: 0) == config
    assert tuning.fastest(("w",), ["gemm", "splitk"], lambda c: 0) == "splitk"
    tuning._chosen[("odd",)] = 3.5  # (not a type a file carries)
    path = tmp_path / "tuning.json"
    tuning.save(path)
    tuning.clear()
    assert tuning.load(path) == 2
    monkeypatch.setattr(tuning, "time_ms", lambda fn: pytest.fail("measured a loaded choice"))
    assert tuning.fastest(key, ["anything", config], lambda c: 0) == config
    assert tuning.chosen(("w",)) == "splitk" and tuning.chosen(("odd",)) is None
    assert tuning.choices() == {key: config, ("w",): "splitk"}  # (served: this process's now)
    assert tuning.measurements() == {}
    # a loaded choice that is not among the candidates offered now is measured anew
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([1.0]))
    assert tuning.fastest(("w",), ["gemm"], lambda c: 0) == "gemm"


def test_a_tuning_file_of_another_machine_or_version_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([1.0]))
    tuning.fastest(("w",), ["gemm"], lambda c: 0)
    path = tmp_path / "tuning.json"
    tuning.save(path)
    data = json.loads(path.read_text())
    for field, value in (("gpus", ["NVIDIA H100 80GB HBM3"]), ("torch", "2.0.0"),
                         ("code", "0123456789abcdef"), ("format", 0)):  # fmt: skip
        path.write_text(json.dumps({**data, field: value}))
        tuning.clear()
        with pytest.warns(UserWarning, match=f"ignored, {field} "):
            assert tuning.load(path) == 0
        assert tuning.chosen(("w",)) is None
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="not read"):
        assert tuning.load(path) == 0


def test_the_tuning_file_is_read_once_and_written_after_each_measurement(monkeypatch, tmp_path):
    """SOBOLEV_TUNING_FILE: a process's first choice reads it, each new measurement writes it
    (a second process then measures nothing it holds); clear() forgets it for good."""
    path = tmp_path / "tuning.json"
    monkeypatch.setenv("SOBOLEV_TUNING_FILE", str(path))
    monkeypatch.setattr(tuning, "_file_read", False)  # (a fresh process)
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([2.0, 1.0]))
    assert tuning.fastest(("w",), ["gemm", "splitk"], lambda c: 0) == "splitk"
    assert json.loads(path.read_text())["choices"] == {"('w',)": "splitk"}
    tuning._chosen.clear()  # another process: nothing measured, the file not read yet
    monkeypatch.setattr(tuning, "_file_read", False)
    monkeypatch.setattr(tuning, "time_ms", lambda fn: pytest.fail("measured a saved choice"))
    assert tuning.fastest(("w",), ["gemm", "splitk"], lambda c: 0) == "splitk"
    tuning.clear()
    assert tuning.chosen(("w",)) is None


def test_the_tuning_keys_of_a_step_are_the_same_in_every_process(monkeypatch):
    """The file finds a choice by repr(key): no key of a Triton step, or of backend="auto",
    may hold an object whose repr names its address."""
    from sobolev_kernels.backends.measured import choice_key

    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "time_ms", lambda fn: 1.0)  # (nothing runs: ties, the first)
    model, x, y, kw = sample_inputs(batch=9, width=16, dtype=torch.float32)
    loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
    torch.autograd.grad(loss, [x, *model.parameters()])
    keys = [repr(key) for key in tuning.choices()]
    assert len(keys) == 4  # the forward's and backward's configs, the backward, dW's method
    problem = SobolevProblem(model=model, mlp=model, x=x, y=y, directions=kw["directions"])
    keys.append(repr(choice_key(problem)))
    assert not [k for k in keys if " at 0x" in k or "object" in k], keys


def test_candidates_that_do_not_fit_are_recorded_and_skipped(monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", lambda fn: fn() or 1.0)

    def run(candidate):
        if candidate == "big":
            raise MemoryError("does not fit")

    assert tuning.fastest("k", ["big", "small"], run, (MemoryError,)) == "small"
    assert tuning.measurements()["k"] == [("big", None), ("small", 1.0)]
    with pytest.raises(MemoryError):
        tuning.fastest("k2", ["big"], run, (MemoryError,))


def test_fastest_ties_go_to_the_first_candidate(monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([1.0]))
    assert tuning.fastest("tie", ["static", "other"], lambda c: None) == "static"


def test_fastest_skips_candidates_that_do_not_fit(monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([5.0]))

    def run(candidate):
        if candidate != "fits":
            raise MemoryError(candidate)

    assert tuning.fastest("skip", ["big", "fits", "bigger"], run, (MemoryError,)) == "fits"
    with pytest.raises(MemoryError, match="bigger"):  # all fail: the last error
        tuning.fastest("none", ["big", "bigger"], run, (MemoryError,))
    assert tuning.chosen("none") is None
    with pytest.raises(ValueError, match="candidates"):
        tuning.fastest("empty", [], run)


def test_other_errors_are_not_swallowed(monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([1.0]))

    def run(candidate):
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        tuning.fastest("bug", ["a"], run, (MemoryError,))


def test_nothing_is_measured_off_the_gpu_or_when_disabled(monkeypatch):
    assert not tuning.can_measure(torch.device("cpu"))
    monkeypatch.setenv("SOBOLEV_AUTOTUNE", "0")
    assert not tuning.enabled()
    assert not tuning.can_measure(torch.device("cuda"))
    monkeypatch.setenv("SOBOLEV_AUTOTUNE", "1")
    assert tuning.enabled()


# ------------------------------------------------------------------ auto between backends


@pytest.fixture
def measured_auto(monkeypatch):
    """``auto`` measuring between the C++ op and the torch backend on the CPU, as it does
    between cuda and triton on a GPU."""
    if "cuda" not in sk.available_backends():
        pytest.skip("the C++ extension is not built")
    monkeypatch.setattr(backends, "_MEASURED", ("cuda", "torch"))
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)


@pytest.mark.parametrize("faster", ["cuda", "torch"])
def test_auto_runs_the_backend_that_measured_faster(measured_auto, monkeypatch, faster):
    timer = ScriptedTimer([1.0, 2.0] if faster == "cuda" else [2.0, 1.0])
    monkeypatch.setattr(tuning, "time_ms", timer)
    model, x, y, kw = sample_inputs(dtype=torch.float32, directions="shared")
    problem = SobolevProblem(
        model=model, mlp=model, x=x, y=y, directions=kw["directions"],
        target_grad=kw["target_grad"],
    )  # fmt: skip
    assert backends.select("auto", problem).name == faster
    assert backends.select("auto", problem).name == faster and timer.calls == 2
    # remembered where nothing can be measured (torch.compile tracing, CUDA graph capture)
    monkeypatch.setattr(tuning, "can_measure", lambda device: False)
    assert backends.select("auto", problem).name == faster


def test_the_trial_steps_touch_nothing_of_the_callers(measured_auto, monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([2.0, 1.0]))
    model, x, y, kw = sample_inputs(dtype=torch.float32)
    before = [p.detach().clone() for p in model.parameters()] + [x.detach().clone()]
    loss = sk.sobolev_loss(model, x, y, **kw)
    assert [p.grad for p in model.parameters()] == [None] * len(before[:-1]) and x.grad is None
    for p, old in zip([*model.parameters(), x], before):
        assert torch.equal(p, old)
    loss.backward()  # the caller's graph is intact and the result is the torch backend's
    expected = sk.sobolev_loss(model, x, y, backend="torch", **kw)
    assert torch.equal(loss, expected)
    assert len(tuning.choices()) == 1


def test_measured_auto_for_mlp_jvp_and_without_grad(measured_auto, monkeypatch):
    monkeypatch.setattr(tuning, "time_ms", ScriptedTimer([2.0, 1.0]))
    model, x, _, kw = sample_inputs(dtype=torch.float32, directions="shared")
    f, u = sk.mlp_jvp(model, x, kw["directions"])
    with torch.no_grad():
        f2, u2 = sk.mlp_jvp(model, x, kw["directions"])
    assert torch.equal(f, f2) and torch.equal(u, u2)
    assert len(tuning.choices()) == 2  # with and without a graph are separate shapes


# ------------------------------------------------------------------ Triton launch configs

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or "triton" not in sk.available_backends(),
    reason="triton backend unavailable",
)


@needs_triton
@pytest.mark.parametrize(
    "widths, k, order",
    [((2, 64, 64, 1), 1, 1), ((16, 128, 128, 8), 2, 1), ((16, 128, 128, 8), 2, 2),
     ((3, 17, 5, 1), 3, 2), ((16, 256, 256, 4), 8, 1), ((16, 128, 128, 8), 16, 1)],
)  # fmt: skip
def test_launch_configs_start_with_the_static_choice(widths, k, order):
    from sobolev_kernels.triton.layout import CHUNK, MIN_PAD, LaunchConfig, Layout, tf32_splits_rows

    layout = Layout(widths, k, order)
    configs = layout.launch_configs(4, 227 * 1024, "ieee", "tf32x3", wide=True)
    rows, warps = layout.rows(4, 227 * 1024), layout.num_warps()
    assert configs[0] == LaunchConfig(rows, warps, CHUNK, layout.group(rows, warps), "ieee", 0)
    assert configs[0] == layout.static_config(4, 227 * 1024)
    assert len(set(configs)) == len(configs) <= 7
    exact = [c for c in configs if c.precision == "ieee"]
    many_directions = layout.tile_elements(MIN_PAD) > layout.tile_budget(8)
    assert any(c.warps == 16 for c in exact) == many_directions
    # one candidate differs from the static choice in directions per pass alone
    other_group = [c for c in exact[1:] if c[:3] == configs[0][:3]]
    assert len(other_group) == (layout.kp > 1)
    for rows, warps, chunk, group, _, cols, resident, activated, _ in configs:
        assert not resident  # the resident kernel's configs are Layout.resident_configs
        assert not activated  # the forward's activated twins are the launcher's
        assert rows >= MIN_PAD and rows & (rows - 1) == 0 and warps in (4, 8, 16)
        assert chunk in (MIN_PAD, CHUNK) and cols in (0, 16, 32, 64, 128, 256)
        assert 1 <= group <= layout.kp and group & (group - 1) == 0
    for rows, warps, _, group, *_ in configs[:1] + [c for c in exact if c[:3] != configs[0][:3]]:
        # directions split only where the tiles of all K overflow the budget, and then fit it
        fits = layout.tile_elements(rows) <= layout.tile_budget(warps)
        assert group == layout.kp if fits else group < layout.kp or layout.kp == 1
        assert group == 1 or layout.tile_elements(rows, group) <= layout.tile_budget(warps)
    # tensor cores: the static launch in tf32x3, and 64 rows a column block at a time whose
    # tiles fit the register budget
    tensor_core = [c for c in configs if c.precision == "tf32x3"]
    static_tc = configs[0]._replace(precision="tf32x3")
    assert (tensor_core[0] == static_tc) != tf32_splits_rows(static_tc)
    # the column-block ones: 64 rows on 4 warps and, where its estimate fits the shared
    # memory, 128 on 8 (a warpgroup's 64 rows each)
    wide = [c for c in tensor_core if c.cols]
    assert [(c.rows, c.warps) for c in wide] in ([(64, 4)], [(64, 4), (128, 8)])
    for c in wide:
        assert c.cols >= MIN_PAD
        assert layout.tile_elements(c.rows, c.group, c.cols) <= layout.tile_budget(c.warps)
    assert "tf32x3" not in {c.precision for c in layout.launch_configs(4, None, "tf32", "tf32")}
    # the wide ones only when asked for (the forward's launcher always asks)
    assert layout.launch_configs(4, 227 * 1024, "ieee", "tf32x3") == configs[: -len(wide)]
    # no TF32 dot that wgmma splits between warpgroups (wrong or faulting on the H200)
    assert not any(tf32_splits_rows(c) for c in configs)


def test_unmeasured_candidates_can_be_left_out(monkeypatch):
    """SOBOLEV_TRITON_UNMEASURED=0 (the GPU script's safety valve after a kernel fault): the
    tuners offer only what a GPU has run, no 128-row column-block tiles, no activated
    twins, none of UNMEASURED_METHODS (cutlass where the extension is built); 1, the
    default, offers them. Anything else raises, naming the variable."""
    from sobolev_kernels.triton import choices, launch, parameter_grads
    from sobolev_kernels.triton.layout import Layout

    offered = {}
    cutlass = offer_cutlass_gemm(monkeypatch)  # (not where the extension is not built)
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "fastest", lambda key, candidates, run, skip: offered.setdefault(
        key[1], candidates)[0])  # fmt: skip
    layout, x = Layout.of((16, 128, 128, 128, 8), 2, 1), torch.zeros(64, 16)

    def candidates(setting):
        monkeypatch.setenv("SOBOLEV_TRITON_UNMEASURED", setting)
        offered.clear()
        for kernel in ("fwd", "bwd"):
            choices._launch_config(kernel, layout, x, {}, False, lambda c: None)
        parameter_grads._weight_grad_method(layout, x, True, False, lambda m: None)
        return offered

    every = {k: list(v) for k, v in candidates("1").items()}
    assert any(c.rows == 128 for c in every["fwd"]) and any(c.activated for c in every["fwd"])
    unmeasured = set(parameter_grads.UNMEASURED_METHODS) - (set() if cutlass else {"cutlass"})
    assert unmeasured <= set(every["weight_grad"])
    measured = candidates("0")
    for kernel in ("fwd", "bwd"):
        assert measured[kernel] == [
            c for c in every[kernel] if not c.activated and not (c.cols and c.rows > 64)
        ]
    assert measured["weight_grad"] == ("gemm", "splitk", "recompute")
    monkeypatch.setenv("SOBOLEV_TRITON_UNMEASURED", "maybe")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_UNMEASURED: expected 0 or 1"):
        launch._launch_config("fwd", layout, x, {}, False, lambda c: None)


def test_tf32_dots_shared_by_two_warpgroups_are_never_offered():
    """The H200 (2026-11-27) measured 64-row TF32 tiles on 8 warps wrong or faulting, and the
    same tiles on 4 warps correct (bench.launch_configs)."""
    from sobolev_kernels.triton.layout import CHUNK, LaunchConfig, Layout, tf32_splits_rows

    wide_on_8 = LaunchConfig(64, 8, CHUNK, 2, "tf32x3", 32)
    assert tf32_splits_rows(wide_on_8)
    assert tf32_splits_rows(LaunchConfig(32, 8, CHUNK, 2, "tf32x3", 64))  # 64 tangent rows
    assert tf32_splits_rows(wide_on_8._replace(precision="tf32"))
    assert not tf32_splits_rows(wide_on_8._replace(precision="ieee"))  # 16-bit or exact dots
    assert not tf32_splits_rows(wide_on_8._replace(warps=4))
    assert not tf32_splits_rows(LaunchConfig(128, 8, CHUNK, 1, "tf32x3", resident=True))
    assert not tf32_splits_rows(LaunchConfig(16, 8, CHUNK, 2, "tf32x3"))  # mma.sync tiles
    layout = Layout((16, 128, 128, 128, 8), 2)
    assert layout.tensor_core_config("tf32x3") == LaunchConfig(64, 4, CHUNK, 1, "tf32x3", 32)
    for config in layout.resident_configs(4, None, "tf32x3"):
        assert not tf32_splits_rows(config)


@needs_triton
def test_num_warps_grow_with_the_tiles():
    from sobolev_kernels.triton.layout import Layout

    assert Layout((2, 64, 64, 64, 1), 1, 1).num_warps() == 4  # config S
    assert Layout((16, 64, 64, 64, 8), 8, 1).num_warps() == 8  # width 64, many directions
    assert Layout((2, 64, 64, 64, 1), 4, 2).num_warps() == 8  # width 64, order 2
    assert Layout((16, 128, 128, 128, 8), 2, 1).num_warps() == 8  # config M


@needs_triton
def test_direction_groups_where_all_directions_overflow_the_registers():
    from sobolev_kernels.triton.layout import Layout

    # config M keeps both directions in one pass; K = 16 at width 128 runs 2 per pass, which
    # spilled nothing where all 16 spilled 1.7 and 5.2 KB per thread (forward, backward;
    # bench/results/triton_resources_sm90.md, "Direction groups")
    assert Layout((16, 128, 128, 128, 8), 2, 1).group(16, 8) == 2
    assert Layout((16, 128, 128, 8), 16, 1).group(16, 8) == 2
    assert Layout((16, 128, 128, 8), 16, 1).group(16, 16) == 4  # twice the registers


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="the gpu variant below runs on the GPU")
@pytest.mark.parametrize(
    ("order", "dtype"),
    [pytest.param(1, torch.float32, marks=pytest.mark.heavy(22)),
     pytest.param(2, torch.float32, marks=pytest.mark.heavy(50)),
     pytest.param(1, torch.bfloat16, marks=pytest.mark.heavy(17))],
)  # fmt: skip
def test_every_launch_config_the_tuner_may_pick_is_correct(monkeypatch, order, dtype):
    """In the interpreter: the scripted timer makes each candidate the fastest in turn, and
    the result must match the reference whichever rows per program, warps, K chunk and
    directions per pass it chose (width 40: several K chunks; one chunk is the static choice
    of narrow layers, which other tests cover; B = 17: a ragged last tile at 16 rows and
    more, in few programs, this being one of CI's slowest tests). bf16 with the backward's
    opt-in column-block tiles among its candidates, as the GPU's bf16 check below."""
    _every_launch_config_agrees(monkeypatch, "cpu", order, TOLERANCES[dtype], dtype=dtype,
                                batch=17, dim=3, width=40, out=2, k=3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@needs_triton
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("order", [1, 2])
def test_every_launch_config_is_correct_on_the_gpu(monkeypatch, order):
    """Every candidate on the GPU, with and without a backward to follow: the K loops reload
    columns other threads of the program stored, so a missing barrier shows here (the
    interpreter runs one thread)."""
    _every_launch_config_agrees(monkeypatch, "cuda", order, 1e-4,
                                batch=4099, dim=16, width=128, out=8, k=2)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@needs_triton
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_every_launch_config_is_correct_in_bf16_on_the_gpu(monkeypatch):
    """The same in bf16, the backward's 64-row column-block tiles among its candidates
    (SOBOLEV_TRITON_WIDE_TILES=1, opt-in in 16-bit models: on the H200 they ran a bf16 step
    without a fault and the right loss, 2026-11-27, its gradients unchecked there). Before
    they can be offered in bf16 by default, each candidate's gradients must agree."""
    _every_launch_config_agrees(monkeypatch, "cuda", 1, TOLERANCES[torch.bfloat16],
                                dtype=torch.bfloat16, batch=4099, dim=16, width=128, out=8,
                                k=2)  # fmt: skip


def _every_launch_config_agrees(monkeypatch, device, order, rtol, dtype=torch.float32,
                                **shape):  # fmt: skip
    """Each forward candidate in turn (on the GPU the activated twins too, each with the
    backward on the config it is the twin of; the interpreter's check of them is
    test_forward_activated.py's), each backward candidate with the forward on the same.
    In a 16-bit ``dtype`` the chunked forward's candidates only (the resident forward's:
    test_resident_forward.py)."""
    from sobolev_kernels.triton import choices, parameter_grads
    from sobolev_kernels.triton.layout import Layout, shared_memory_limit

    methods = parameter_grads.WEIGHT_GRAD_METHODS
    if device == "cpu":  # splitk_unpipelined is splitk with a launch option the interpreter
        methods = tuple(m for m in methods if m != "splitk_unpipelined")  # ignores (CI's time)
        monkeypatch.setattr(parameter_grads, "WEIGHT_GRAD_METHODS", methods)
    if not (offer_cutlass_gemm(monkeypatch) and dtype == torch.float32):  # (fp32 only)
        methods = tuple(m for m in methods if m != "cutlass")
    if shape["width"] <= 64:  # (the wide methods' tiles are splitk's: no candidates there)
        methods = tuple(m for m in methods if m not in parameter_grads.WIDE_METHODS)
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")  # (the persistent one: below)
    monkeypatch.setenv("SOBOLEV_TRITON_WIDE_TILES", "1")  # every candidate, the opt-in one too
    widths = (shape["dim"], shape["width"], shape["width"], shape["out"])
    limit = shared_memory_limit(torch.device(device))
    layout = Layout(widths, shape["k"], order)
    static, tensor_core = choices._precisions(dtype, False)
    if dtype != torch.float32:
        monkeypatch.setenv("SOBOLEV_TRITON_FORWARD", "chunked")
    configs = layout.launch_configs(dtype.itemsize, limit, static, tensor_core, True)
    twins = [c._replace(activated=True) for c in configs if c.cols and layout.activates_per_pass(c)]
    assert twins, "the column-block candidate's activated twin is among the forward's"
    if device == "cpu":  # (CI's minutes)
        monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", "0")
        twins = []
    else:
        monkeypatch.delenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", raising=False)  # twins offered
    forwards = configs + twins
    picks = range(len(forwards))
    if device == "cpu":  # the interpreter runs a program as one thread, so warps change
        # nothing, and its tl.dot is numpy's matmul whatever input_precision says: the
        # twins that differ only there run the same code (order 2: 4 picks instead of 5,
        # still each weight-gradient method)
        firsts = {
            c._replace(warps=0, precision=""): i for i, c in reversed(list(enumerate(forwards)))
        }
        picks = sorted(firsts.values())
    for pick in picks:
        tuning.clear()
        bwd_pick = configs.index(forwards[pick]._replace(activated=False))
        monkeypatch.setattr(tuning, "time_ms", _timer_preferring(
            (pick, len(forwards)), (bwd_pick, len(configs)), methods=len(methods)))  # fmt: skip
        model, x, y, kw = sample_inputs(dtype=dtype, device=device, seed=pick, **shape)
        if order == 2:
            kw["order"] = 2
            kw["target_hvp2"] = torch.randn(shape["batch"], shape["k"], shape["out"],
                                            device=device)  # fmt: skip
            kw["directions"] = torch.randn(shape["batch"], shape["k"], shape["dim"],
                                           device=device)  # fmt: skip
        expected = upcast_model(model)
        assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=expected)
        chosen = {key[1]: config for key, config in tuning.choices().items()}
        method = methods[bwd_pick % len(methods)]
        assert chosen == {"fwd": forwards[pick], "bwd": configs[bwd_pick], "weight_grad": method}
        # the forward alone: scratch regions instead of the saved stacks
        assert_forward_only_agrees(model, x, y, kw, "triton", rtol, expected,
                                   name=f"loss, launch config {forwards[pick]}")  # fmt: skip


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's check; the GPU runs the gpu tests")
@pytest.mark.parametrize("save, k", [("1", 3), ("0", 3), ("0", 1)])
def test_every_launch_config_of_the_persistent_kernels_is_correct(monkeypatch, save, k):
    """The persistent backward (after a saving forward, and with its persistent forward
    after one that keeps nothing) in each of its tuner candidates: the static launch, it in
    3xTF32 and the 64-row column-block one, and with one direction (two stacked rows a
    sample) the tensor-core ones' twins on spans of tiles."""
    from sobolev_kernels.triton.choices import _with_dw_tiles
    from sobolev_kernels.triton.layout import Layout

    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    monkeypatch.setenv("SOBOLEV_TRITON_WIDE_TILES", "1")
    # (the forward's activated twins: test_forward_activated.py, and on a GPU the sweep above)
    monkeypatch.setenv("SOBOLEV_TRITON_FORWARD_ACTIVATED", "0")
    shape = dict(batch=17, dim=3, width=40, out=2, k=k)  # (two tiles at 16 rows, ragged)
    layout = Layout((3, 40, 40, 2), k, 1)
    configs = layout.launch_configs(4, None, "ieee", "tf32x3", wide=True)
    persistent = [configs[0]] + [c for c in configs[1:]
                                 if (c.precision != "ieee" or c.cols) and c.rows <= 64]  # fmt: skip
    forwards = persistent if save == "0" else configs
    persistent = _with_dw_tiles(layout, persistent, "tf32x3")
    assert any(c.dw_tiles > 1 for c in persistent) == (k == 1)  # (K = 3: 64-row tiles fill)
    for pick in range(len(persistent)):
        tuning.clear()
        # the persistent forward's pick (for a twin, another of its candidates), or the static
        first = pick % len(forwards) if save == "0" else 0
        script = [i == first for i in range(len(forwards))]
        script += [i == pick for i in range(len(persistent))]
        monkeypatch.setattr(tuning, "time_ms", _scripted_timer(script))
        model, x, y, kw = sample_inputs(dtype=torch.float32, device="cpu", seed=pick, **shape)
        assert_backends_agree(model, x, y, kw, "triton", TOLERANCES[torch.float32],
                              expected_model=upcast_model(model))  # fmt: skip
        chosen = {key[1]: config for key, config in tuning.choices().items()}
        forward = "fwd_persistent" if save == "0" else "fwd"
        assert chosen == {forward: forwards[first], "bwd_persistent": persistent[pick]}


def _scripted_timer(fastest: list[bool]):
    """A timer that runs what it times and reports 0 ms for the calls marked fastest, in
    order, and 1 ms for the others."""
    calls = []

    def timer(fn):
        fn()
        calls.append(None)
        return 0.0 if fastest[len(calls) - 1] else 1.0

    return timer


def _timer_preferring(*picks, methods: int | None = None):
    """Reports 0 ms for candidate ``pick`` of each kernel in turn (``picks``: (pick, number of
    candidates) of the forward, then of the backward) and 1 ms for the others; then for
    weight-gradient method ``pick`` modulo their number (``methods``, by default all of
    WEIGHT_GRAD_METHODS), the last kernel's pick."""
    from sobolev_kernels.triton import parameter_grads

    calls = []
    methods = methods or len(parameter_grads.WEIGHT_GRAD_METHODS)
    schedule = [*picks, (picks[-1][0] % methods, methods)]

    def timer(fn):
        fn()
        calls.append(None)
        i = len(calls) - 1
        for pick, count in schedule:
            if i < count:
                return 0.0 if i == pick else 1.0
            i -= count
        return 1.0

    return timer


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_measured_choices_on_the_gpu(monkeypatch):
    """The real timer: auto measures once, remembers, and the tuned Triton kernels agree with
    the reference."""
    monkeypatch.setenv("SOBOLEV_AUTOTUNE", "1")  # scripts/gpu_session.sh turns it off
    available = set(sk.available_backends())
    model, x, y, kw = sample_inputs(dtype=torch.float32, device="cuda", batch=3000, width=64)
    loss = sk.sobolev_loss(model, x, y, **kw)
    if {"cuda", "triton"} <= available:
        kinds = {key[0] for key in tuning.choices()}
        assert "backend" in kinds
    assert torch.isfinite(loss)
    if "triton" in available:
        assert_backends_agree(model, x, y, kw, "triton", 1e-4, expected_model=upcast_model(model))
        assert any(key[:2] == ("triton", "fwd") for key in tuning.choices())
