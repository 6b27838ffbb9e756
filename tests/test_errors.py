"""Bad input: a ValueError/TypeError that names the argument, and nothing of the caller changed."""

import math

import numpy as np
import pytest
import torch

import sobolev_kernels as sk

B, D, M = 5, 3, 2


def _good():
    torch.manual_seed(0)
    model = sk.SobolevMLP(D, 8, M, 3)
    return dict(
        model=model,
        x=torch.randn(B, D),
        y=torch.randn(B, M),
        target_grad=torch.randn(B, M, D),
    )


def _call(**changes):
    args = _good()
    args.update(changes)
    args = {k: v for k, v in args.items() if v is not _DROP}
    model, x, y = args.pop("model"), args.pop("x"), args.pop("y")
    return sk.sobolev_loss(model, x, y, **args)


_DROP = object()

CASES = [
    # (id, changes, exception, message fragment)
    ("x-not-tensor", dict(x=np.zeros((B, D))), TypeError, "x: expected a torch.Tensor"),
    (
        "x-integer",
        dict(x=torch.zeros(B, D, dtype=torch.int64)),
        TypeError,
        "x: expected a floating",
    ),
    ("x-1d", dict(x=torch.randn(D)), ValueError, r"x: expected shape \(B, d\)"),
    ("x-empty-batch", dict(x=torch.randn(0, D)), ValueError, "x: empty batch"),
    ("x-wrong-features", dict(x=torch.randn(B, D + 1)), ValueError, "x: model takes 3"),
    ("x-dtype-vs-model", dict(x=torch.randn(B, D, dtype=torch.float64)), TypeError, "x: dtype"),
    ("y-wrong-shape", dict(y=torch.randn(B, M + 1)), ValueError, "y: expected shape"),
    ("y-wrong-dtype", dict(y=torch.randn(B, M, dtype=torch.float64)), TypeError, "y: dtype"),
    ("y-integer", dict(y=torch.zeros(B, M, dtype=torch.int32)), TypeError, "y: dtype"),
    (
        "target-grad-shape",
        dict(target_grad=torch.randn(B, D, M)),
        ValueError,
        "target_grad: expected",
    ),
    (
        "target-jvp-needs-directions",
        dict(target_grad=_DROP, target_jvp=torch.randn(B, 1, M)),
        ValueError,
        "target_jvp: .*directions",
    ),
    (
        "target-jvp-shape",
        dict(target_grad=_DROP, target_jvp=torch.randn(B, 2, M), directions=torch.randn(3, D)),
        ValueError,
        "target_jvp: expected",
    ),
    ("two-targets", dict(target_jvp=torch.randn(B, 1, M)), ValueError, "exactly one"),
    ("no-target", dict(target_grad=_DROP), ValueError, "exactly one derivative target, got none"),
    ("teacher-not-callable", dict(target_grad=_DROP, teacher=3), TypeError, "teacher: expected"),
    (
        "teacher-wrong-outputs",
        dict(target_grad=_DROP, teacher=sk.SobolevMLP(D, 4, M + 1, 2)),
        ValueError,
        "teacher: returns 3 outputs",
    ),
    (
        "teacher-wrong-inputs",
        dict(target_grad=_DROP, teacher=sk.SobolevMLP(D + 1, 4, M, 2)),
        ValueError,
        "teacher: takes 4 input features",
    ),
    ("k-zero", dict(num_directions=0), ValueError, "num_directions: expected an int >= 1"),
    ("k-float", dict(num_directions=1.5), TypeError, "num_directions"),
    (
        "k-vs-directions",
        dict(num_directions=2, directions=torch.randn(3, D)),
        ValueError,
        "num_directions: 2 does not match",
    ),
    ("directions-bad-string", dict(directions="half"), ValueError, "directions: expected"),
    (
        "directions-wrong-d",
        dict(directions=torch.randn(2, D + 1)),
        ValueError,
        "directions: expected",
    ),
    ("directions-empty", dict(directions=torch.randn(0, D)), ValueError, "directions: expected"),
    (
        "directions-wrong-batch",
        dict(directions=torch.randn(B + 1, 2, D)),
        ValueError,
        "directions: expected",
    ),
    (
        "directions-dtype",
        dict(directions=torch.randn(2, D, dtype=torch.float64)),
        TypeError,
        "directions: dtype",
    ),
    ("alpha-nan", dict(alpha=math.nan), ValueError, "alpha: expected a finite"),
    ("beta-inf", dict(beta=math.inf), ValueError, "beta: expected a finite"),
    ("beta-negative", dict(beta=-1.0), ValueError, "beta: expected a finite number >= 0"),
    ("alpha-string", dict(alpha="1"), TypeError, "alpha: expected a real number"),
    ("backend-unknown", dict(backend="jax"), ValueError, "backend: unknown backend 'jax'"),
    ("generator-wrong-type", dict(generator=0), TypeError, "generator: expected"),
    ("model-not-callable", dict(model="mlp"), TypeError, "model: expected"),
    ("order-3", dict(order=3), ValueError, "order"),
    ("return-outputs-not-bool", dict(return_outputs=1), TypeError, "return_outputs"),
]


@pytest.mark.parametrize("changes, exc, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(changes, exc, match):
    with pytest.raises(exc, match=match):
        _call(**changes)


def test_at_least_the_issue_minimum():
    assert len(CASES) >= 12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch_names_the_argument():
    with pytest.raises(ValueError, match="y: on"):
        _call(y=torch.randn(B, M, device="cuda"))


def test_device_mismatch_on_meta_names_the_argument():
    # The meta device stands in for a second device on CPU-only machines.
    with pytest.raises(ValueError, match="y: on meta"):
        _call(y=torch.randn(B, M, device="meta"))
    with pytest.raises(ValueError, match="x: on meta"):
        _call(x=torch.randn(B, D, device="meta"))


def test_explicit_unknown_backend_in_mlp_jvp_and_module():
    args = _good()
    with pytest.raises(ValueError, match="backend"):
        sk.mlp_jvp(args["model"], args["x"], "full", backend="nope")
    with pytest.raises(ValueError, match="directions"):
        sk.mlp_jvp(args["model"], args["x"], None)
    with pytest.raises(ValueError, match="alpha"):
        sk.SobolevLoss(alpha=float("nan"))
    with pytest.raises(ValueError, match="num_directions"):
        sk.SobolevLoss(num_directions=0)
    with pytest.raises(ValueError, match="directions"):
        sk.SobolevLoss(directions="some")


def test_errors_leave_inputs_untouched():
    args = _good()
    x0 = args["x"].clone()
    with pytest.raises(ValueError):
        sk.sobolev_loss(
            args["model"], args["x"], torch.randn(B, 7), target_grad=args["target_grad"]
        )
    assert torch.equal(args["x"], x0)


# ------------------------------------------------------------- every other public entry point


def _mlp():
    return sk.SobolevMLP(2, 4, 1, 2)


ENTRY_POINT_CASES = [
    ("mlp_jvp-x-1d", lambda: sk.mlp_jvp(_mlp(), torch.randn(2), "full"), ValueError, "x:"),
    ("mlp_jvp-order", lambda: sk.mlp_jvp(_mlp(), torch.randn(3, 2), "full", order=3),
     ValueError, "order"),
    ("mlp_jvp-directions-shape", lambda: sk.mlp_jvp(_mlp(), torch.randn(3, 2), torch.randn(3)),
     ValueError, "directions"),
    ("loss-module-gamma", lambda: sk.SobolevLoss(gamma=-1.0), ValueError, "gamma"),
    ("loss-module-order", lambda: sk.SobolevLoss(order=0), ValueError, "order"),
    ("loss-module-backend", lambda: sk.SobolevLoss(backend="gpu"), ValueError, "backend"),
    ("loss-module-generator", lambda: sk.SobolevLoss(generator=1), TypeError, "generator"),
    ("loss-module-check-finite", lambda: sk.SobolevLoss(check_finite="yes"), TypeError,
     "check_finite"),
    ("loss-module-forward-y", lambda: sk.SobolevLoss()(_mlp(), torch.randn(3, 2),
                                                      torch.randn(4, 1),
                                                      target_grad=torch.randn(3, 2)),
     ValueError, "y: expected shape"),
    ("objective-model", lambda: sk.SobolevObjective("mlp"), TypeError, "model"),
    ("objective-loss", lambda: sk.SobolevObjective(_mlp(), loss=2.0), TypeError, "loss"),
    ("mlp-out-features", lambda: sk.SobolevMLP(2, 4, 0, 2), ValueError, "out_features"),
    ("mlp-slope", lambda: sk.SobolevMLP(2, 4, 1, 2, activation="leaky_relu",
                                        negative_slope=float("nan")),
     ValueError, "negative_slope"),
    ("sample-directions-k", lambda: sk.sample_directions(3, 0, 2), ValueError, "num_directions"),
    ("sample-directions-dim", lambda: sk.sample_directions(3, 1, -1), ValueError, "dim"),
    ("sample-directions-dtype", lambda: sk.sample_directions(3, 1, 2, dtype=torch.int32),
     TypeError, "dtype"),
    ("full-directions-dim", lambda: sk.full_directions(0), ValueError, "dim"),
    ("function-x", lambda: sk.functions.ackley(torch.randn(3)), ValueError, "x"),
    ("two-targets-explicit-backend", lambda: sk.sobolev_loss(
        _mlp(), torch.randn(3, 2), None, target_grad=torch.randn(3, 2), backend="torch",
        teacher=_mlp()), ValueError, "exactly one"),
]  # fmt: skip


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in ENTRY_POINT_CASES],
                         ids=[c[0] for c in ENTRY_POINT_CASES])  # fmt: skip
def test_bad_input_at_every_entry_point(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("backend", [b for b in ("triton", "cuda") if b in sk.available_backends()])
def test_fused_backends_refuse_what_they_cannot_take(backend):
    """An explicit fused backend never computes a wrong answer: it names why it cannot run."""
    x, tg = torch.randn(3, 2), torch.randn(3, 2)
    odd = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ELU(), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=f"backend: '{backend}' cannot run this problem"):
        sk.sobolev_loss(odd, x, None, target_grad=tg, backend=backend)
    if backend == "triton":
        with pytest.raises(ValueError, match="dtype"):
            sk.sobolev_loss(_mlp().double(), x.double(), None, target_grad=tg.double(),
                            backend=backend)  # fmt: skip


def test_the_suite_covers_at_least_25_cases():
    assert len(CASES) + len(ENTRY_POINT_CASES) >= 25
