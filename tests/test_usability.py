"""What a new user meets (issue #20): the fallback warning, wrapped models, activation forms,
zero directions, direction counts that cannot fit, and the module's directions buffer."""

import warnings

import pytest
import torch
from conftest import assert_close
from torch import nn

import sobolev_kernels as sk
from sobolev_kernels import memory, validation

FUSED_ON_CPU = "cuda" if "cuda" in sk.available_backends() else "torch"


def _seq(act: nn.Module, width: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, width), act, nn.Linear(width, 1)).double()


def _data(batch: int = 6):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    return x, torch.randn(batch, 3, generator=gen, dtype=torch.float64)


def _fallback_warnings(record) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, sk.SobolevFallbackWarning)]


# --- the fallback warning -------------------------------------------------------------------


def test_fallback_warning_names_the_module_and_points_at_the_callers_line():
    x, tg = _data()
    with pytest.warns(sk.SobolevFallbackWarning) as record:
        sk.sobolev_loss(_seq(nn.ELU()), x, None, target_grad=tg)
    (w,) = _fallback_warnings(record)
    assert "ELU at index 1 of the Sequential" in str(w.message)
    assert "'reference'" in str(w.message)
    assert w.filename == __file__


def test_fallback_warning_from_the_module_form_points_at_the_callers_line():
    """Between SobolevLoss.forward and the caller sit torch's Module.__call__ frames."""
    x, tg = _data()
    loss_fn = sk.SobolevLoss(num_directions=2)
    with pytest.warns(sk.SobolevFallbackWarning) as record:
        loss_fn(_seq(nn.Mish()), x, None, target_grad=tg)
    (w,) = _fallback_warnings(record)
    assert "Mish at index 1 of the Sequential" in str(w.message)
    assert w.filename == __file__


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _seq(nn.Tanh())

    def forward(self, x):
        return self.inner(x)


def test_fallback_warns_once_per_model_class_and_reason():
    x, tg = _data()
    models = [
        (_seq(nn.ELU()), "ELU at index 1"),
        (_seq(nn.ELU(), width=7), None),  # same class, same reason: silent
        (_seq(nn.Mish()), "Mish at index 1"),  # same class, another reason
        (_Custom().double(), "_Custom is neither a SobolevMLP nor an nn.Sequential"),
        (_Custom().double(), None),
    ]
    for model, expected in models:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            sk.sobolev_loss(model, x, None, target_grad=tg)
        got = [str(w.message) for w in _fallback_warnings(record)]
        assert len(got) == (expected is not None), got
        assert expected is None or expected in got[0]


# --- wrapped models -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [torch.compile, nn.DataParallel, lambda m: torch.compile(nn.DataParallel(m))],
    ids=["compile", "data_parallel", "compile_of_data_parallel"],
)
def test_compiled_and_data_parallel_models_are_unwrapped(wrap, chosen):
    x, tg = _data()
    inner = _seq(nn.Tanh(), width=5)
    kw = dict(target_grad=tg, num_directions=2)
    loss = sk.sobolev_loss(wrap(inner), x, None, generator=torch.Generator().manual_seed(3), **kw)
    assert chosen == [FUSED_ON_CPU]
    ref = sk.sobolev_loss(inner, x, None, backend="reference",
                          generator=torch.Generator().manual_seed(3), **kw)  # fmt: skip
    assert_close(loss, ref, 1e-12, "loss")
    loss.backward()
    assert inner[0].weight.grad is not None


def test_a_wrapped_teacher_is_unwrapped_too():
    x, _ = _data()
    teacher = _seq(sk.Sin(), width=6)
    dirs = torch.randn(2, 3, dtype=torch.float64)
    student = _seq(nn.Tanh())
    plain = sk.sobolev_loss(student, x, None, teacher=teacher, directions=dirs)
    wrapped = sk.sobolev_loss(student, x, None, teacher=nn.DataParallel(teacher),
                              directions=dirs)  # fmt: skip
    assert_close(wrapped, plain, 1e-12, "loss")


# --- activations ----------------------------------------------------------------------------


def test_exact_gelu_is_adopted_not_rejected(chosen):
    x, tg = _data()
    model = _seq(nn.GELU(), width=6)
    loss = sk.sobolev_loss(model, x, None, target_grad=tg, num_directions=2,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert chosen == [FUSED_ON_CPU]
    assert sk.SobolevMLP.from_sequential(model).activation.name == "gelu"
    tanh_gelu = sk.SobolevMLP.from_sequential(_seq(nn.GELU(approximate="tanh")))
    assert tanh_gelu.activation.name == "gelu_tanh"
    ref = sk.sobolev_loss(model, x, None, target_grad=tg, num_directions=2, backend="reference",
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert_close(loss, ref, 1e-12, "loss")


@pytest.mark.parametrize(
    "given, name, slope",
    [
        ("GELU", "gelu", 0.0),
        ("Gelu_Tanh", "gelu_tanh", 0.0),
        ("LeakyReLU", "leaky_relu", 0.01),
        ("SiLU", "silu", 0.0),
        (nn.GELU(), "gelu", 0.0),
        (nn.GELU(approximate="tanh"), "gelu_tanh", 0.0),
        (nn.LeakyReLU(0.2), "leaky_relu", 0.2),
        (nn.Tanh(), "tanh", 0.0),
        (sk.Sin(), "sin", 0.0),
    ],
)
def test_activation_takes_a_module_or_a_name_in_any_case(given, name, slope):
    mlp = sk.SobolevMLP(3, 4, 1, 2, activation=given)
    assert mlp.activation.name == name
    assert mlp.activation.negative_slope == slope


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activation=nn.ELU()), "activation: unsupported activation module ELU"),
        (dict(activation="elu"), "activation: unsupported activation 'elu'"),
        (dict(activation=nn.Softplus(beta=2.0)), "activation: unsupported"),
        (dict(activation=nn.LeakyReLU(0.2), negative_slope=0.3), "negative_slope"),
    ],
)
def test_activation_forms_that_do_not_fit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sk.SobolevMLP(3, 4, 1, 2, **kwargs)


# --- zero directions ------------------------------------------------------------------------


def test_a_zero_shared_direction_raises():
    model, (x, tg) = _seq(nn.Tanh()), _data()
    dirs = torch.randn(3, 3, dtype=torch.float64)
    dirs[1] = 0
    with pytest.raises(ValueError, match=r"directions: directions\[1\] is the zero vector"):
        sk.sobolev_loss(model, x, None, target_grad=tg, directions=dirs)
    with pytest.raises(ValueError, match=r"directions\[1\] is the zero vector"):
        sk.mlp_jvp(model, x, dirs)


def test_a_zero_per_row_direction_raises_and_nonunit_ones_are_fine():
    model, (x, tg) = _seq(nn.Tanh()), _data()
    dirs = torch.randn(x.shape[0], 2, 3, dtype=torch.float64)
    sk.sobolev_loss(model, x, None, target_grad=tg, directions=3.5 * dirs)  # any nonzero scale
    dirs[4, 1] = 0
    with pytest.raises(ValueError, match=r"directions\[4, 1\] is the zero vector"):
        sk.sobolev_loss(model, x, None, target_grad=tg, directions=dirs)


@pytest.mark.gpu
def test_on_a_gpu_zero_directions_are_checked_with_check_finite_only():
    """No synchronisation per step on a GPU: the check runs with check_finite=True."""
    model, (x, tg) = _seq(nn.Tanh()), _data()
    model, x, tg = model.cuda(), x.cuda(), tg.cuda()
    dirs = torch.randn(3, 3, dtype=torch.float64, device="cuda")
    dirs[1] = 0
    sk.sobolev_loss(model, x, None, target_grad=tg, directions=dirs)  # not checked
    with pytest.raises(ValueError, match=r"directions\[1\] is the zero vector"):
        sk.sobolev_loss(model, x, None, target_grad=tg, directions=dirs, check_finite=True)


# --- direction counts whose buffers cannot fit ----------------------------------------------


def test_a_direction_count_that_cannot_fit_raises_before_allocating(monkeypatch):
    def no_drawing(*args, **kwargs):
        raise AssertionError("directions were drawn before the memory check")

    monkeypatch.setattr(validation, "sample_directions", no_drawing)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 << 30)  # 2 GiB
    model = sk.SobolevMLP(2, 64, 1, 3, dtype=torch.float64)
    x = torch.randn(1000, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"num_directions: K = 20000 .* bytes") as info:
        sk.sobolev_loss(model, x, None, target_grad=torch.randn(1000, 2, dtype=torch.float64),
                        num_directions=20000)  # fmt: skip
    # (1 + K) B (64 + 64) saved fp64 pre-activations, K B outputs and K B d directions
    need = 20001 * 1000 * 128 * 8 + 20000 * 1000 * 8 + 20000 * 1000 * 2 * 8
    assert f"least {need} bytes" in str(info.value)


def test_the_memory_check_counts_saved_pre_activations_only_where_they_are_kept(monkeypatch):
    """B = 2^20 rows, K = 4, two hidden layers of 64, fp32, with a backward to follow: the
    saved stacks ((1 + K) B 128 fp32, 2.5 GiB) are what does not fit in 2 GiB, so the error
    says how to keep none; with SOBOLEV_SAVE_ACTIVATIONS=0 the check passes (the outputs and
    the directions drawn in fp64, 96 MiB, fit); where even those do not fit, no such hint."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2 << 30)
    model = sk.SobolevMLP(2, 64, 1, 3)
    x = torch.empty(2**20, 2, requires_grad=True)
    with pytest.raises(ValueError, match="SOBOLEV_SAVE_ACTIVATIONS=0") as info:
        validation.check_memory(model, x, 4, 1, new_directions=True)
    assert str(info.value).startswith("num_directions: K = 4 directions for B = 1048576")
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    validation.check_memory(model, x, 4, 1, new_directions=True)
    with pytest.raises(ValueError, match="smaller batch$"):  # (1000 K B d: no hint)
        validation.check_memory(model, x, 4000, 1, new_directions=True)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "1")
    with torch.no_grad(), pytest.raises(ValueError, match="smaller batch$"):
        validation.check_memory(model, x, 4000, 1, new_directions=True)
    with torch.no_grad():  # no backward: nothing saved, the stacks' 2.5 GiB not counted
        validation.check_memory(model, x, 4, 1, new_directions=True)


def test_a_direction_count_beyond_any_machine_raises_with_the_real_free_memory():
    model = sk.SobolevMLP(2, 64, 1, 3)
    x = torch.randn(1000, 2)
    with pytest.raises(ValueError, match="num_directions: K = 1000000000 .* bytes"):
        sk.sobolev_loss(model, x, None, target_grad=torch.randn(1000, 2),
                        num_directions=10**9)  # fmt: skip


def test_memory_is_not_asked_for_small_problems(monkeypatch):
    def fail(device):
        raise AssertionError("asked for free memory below the threshold")

    monkeypatch.setattr(memory, "available_bytes", fail)
    model = sk.SobolevMLP(2, 16, 1, 3)
    x = torch.randn(64, 2)
    sk.sobolev_loss(model, x, None, target_grad=torch.randn(64, 2), num_directions=8)


@pytest.mark.parametrize("backend", sorted({"reference", "torch", FUSED_ON_CPU}))
def test_required_bytes_is_a_lower_bound_of_what_a_backend_holds(backend):
    """The estimate must never exceed what a run really holds (else it could refuse a
    problem that fits): here the tensors saved for the backward, plus directions and u."""
    model = sk.SobolevMLP(3, 32, 2, 3)
    x = torch.randn(50, 3)
    tg = torch.randn(50, 2, 3)
    need = memory.required_bytes(model, x, 40, 1, new_directions=True, saves=True)
    with torch.autograd.graph.saved_tensors_hooks(_count, lambda t: t):
        _SAVED.clear()
        loss = sk.sobolev_loss(model, x, None, target_grad=tg, num_directions=40,
                               backend=backend)  # fmt: skip
    held = sum({t.data_ptr(): t.untyped_storage().nbytes() for t in _SAVED}.values())
    assert loss.ndim == 0
    assert 0 < need <= held + 40 * 50 * 3 * 4 + 40 * 50 * 2 * 4  # + directions and u


_SAVED: list[torch.Tensor] = []


def _count(t):
    _SAVED.append(t)
    return t


# --- SobolevLoss keeps its directions as a buffer -------------------------------------------


def test_sobolev_loss_directions_follow_to():
    t = torch.randn(2, 3)  # fp32
    loss_fn = sk.SobolevLoss(directions=t).to(torch.float64)
    assert loss_fn.directions.dtype == torch.float64 and t.dtype == torch.float32
    x, tg = _data()
    model = _seq(nn.Tanh())
    loss = loss_fn(model, x, None, target_grad=tg)
    ref = sk.sobolev_loss(model, x, None, target_grad=tg, directions=t.double())
    assert_close(loss, ref, 1e-12, "loss")
    assert "directions" not in loss_fn.state_dict()  # configuration, not a learned state
    objective = sk.SobolevObjective(_seq(nn.Tanh()).float(), sk.SobolevLoss(directions=t))
    assert objective.double().loss.directions.dtype == torch.float64


def test_sobolev_loss_directions_must_be_a_tensor_of_directions():
    with pytest.raises(ValueError, match="directions: expected a"):
        sk.SobolevLoss(directions=torch.randn(3))
    with pytest.raises(ValueError, match="directions: expected None"):
        sk.SobolevLoss(directions="half")
    assert sk.SobolevLoss(directions="full").directions == "full"
