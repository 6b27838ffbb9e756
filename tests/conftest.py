"""Shared fixtures: the tolerance table, input builders and a verbose comparison."""

from __future__ import annotations

import copy
import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter. This must be decided before
# any kernel is decorated, i.e. before sobolev_kernels.triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import sobolev_kernels as sk  # noqa: E402
from sobolev_kernels import backends  # noqa: E402

# dtype -> (rtol, atol relative to the largest |expected|). DESIGN section 6: fp64 is exact up to
# summation order; fp32 GEMMs reassociate; bf16/fp16 round every GEMM input (fp32 accumulation).
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-2,
}

HAS_CUDA = torch.cuda.is_available()


def tolerance(backend: str, dtype: torch.dtype, device: str = "cpu") -> float:
    """The rtol a backend is held to against the reference: TOLERANCES, except Triton's fp32
    dots on a GPU (DESIGN section 6: 1e-4; TF32-accurate where the user allows TF32, and
    3xTF32 products carry a little more rounding than IEEE FMA)."""
    if backend == "triton" and dtype == torch.float32 and device == "cuda":
        return 1e-4
    return TOLERANCES[dtype]


SLOW = os.environ.get("SOBOLEV_SLOW") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: set SOBOLEV_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not SLOW:
            item.add_marker(skip_slow)
    items.sort(key=_schedule_order)


def _schedule_order(item) -> tuple:
    """The unmeasured forms' tests before all others: the GPU script's tests run under a time
    limit that cut runs 3 to 6 at 96% or less (2026-11-27), and the tests last in file order
    (the launch configs', the new kernels') are the ones a run must not lose. Then the heavy
    tests, longest first: handed out one at a time (scripts/run_tests.sh, --maxschedchunk 1),
    pytest-xdist's workers then finish within a short test of each other, where a heavy test
    begun late ran on alone. The order is otherwise unchanged (the sort is stable)."""
    heavy = item.get_closest_marker("heavy")
    return (item.get_closest_marker("unmeasured") is None, -(heavy.args[0] if heavy else 0.0))


def pytest_runtest_logreport(report):
    """With SOBOLEV_TEST_FAILURES=<file>, each failure's traceback is appended to the file as
    it happens (the controller's hook under xdist), and with SOBOLEV_TEST_DURATIONS=<file>
    each test's seconds (setup and call): the GPU script's tests run under a time limit,
    which ends pytest before its summaries of failures and durations."""
    path = os.environ.get("SOBOLEV_TEST_FAILURES")
    if path and report.failed:
        with open(path, "a") as fh:
            fh.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n")
    path = os.environ.get("SOBOLEV_TEST_DURATIONS")
    if path and report.when in ("setup", "call"):
        with open(path, "a") as fh:
            fh.write(f"{report.duration:8.2f} s {report.when:<5} {report.nodeid}\n")


def count_launches(monkeypatch, owner, name: str) -> list:
    """Replaces the Triton kernel ``owner.name`` (the module that launches it) by one that
    records each launch's grid and launches it; returns the list of grids."""
    real, grids = getattr(owner, name), []

    class Counting:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]

    monkeypatch.setattr(owner, name, Counting())
    return grids


def offer_cutlass_gemm(monkeypatch) -> bool:
    """Off a GPU: the Triton backend's ``cutlass`` weight-gradient method offered, its GEMM the
    extension's CPU ``weight_grad_gemm`` (at::mm), so that the interpreter runs its plumbing.
    False where the extension is not built. On a GPU nothing changes (whether the extension
    has CUTLASS decides)."""
    from sobolev_kernels.triton import parameter_grads

    if HAS_CUDA:
        return parameter_grads._cutlass_gemm() is not None
    if "cuda" not in sk.available_backends():
        return False
    op = torch.ops.sobolev_kernels.weight_grad_gemm
    monkeypatch.setattr(parameter_grads, "_cutlass_gemm", lambda: op)
    return True


def record_forward_saves(monkeypatch, launch) -> list:
    """Wraps the Triton launcher ``launch.sobolev_forward`` so that each call records its last
    argument (save_activations) and runs; returns the list of flags."""
    real, saves = launch.sobolev_forward, []

    def spy(*args):
        saves.append(args[-1])
        return real(*args)

    monkeypatch.setattr(launch, "sobolev_forward", spy)
    return saves


@pytest.fixture(autouse=True)
def _fresh_fallback_warnings():
    """Each test sees the one-time fallback warning afresh."""
    backends._warned.clear()
    yield


def assert_close(
    actual, expected, rtol: float, name: str = "tensor", kink_flips: float = 0.0
) -> None:
    """allclose with atol = rtol * max|expected|, printing the first mismatches on failure.

    kink_flips: the fraction of elements allowed to differ more. With relu-like activations
    in 16-bit, a pre-activation within rounding of 0 may land on the other side of the kink
    than in the fp64 reference, and the rows through that unit differ by O(1): an error of
    the precision, not of the kernel.
    """
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    atol = rtol * max(scale, 1e-30)
    bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.sum() > kink_flips * bad.numel():
        idx = bad.nonzero()[:5].tolist()
        rows = [
            f"  at {tuple(i)}: got {actual[tuple(i)].item():.10g}, "
            f"expected {expected[tuple(i)].item():.10g}"
            for i in idx
        ]
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{bad.numel()} elements differ (rtol={rtol}, "
            f"atol={atol:.3g}); first mismatches:\n" + "\n".join(rows)
        )


def sample_inputs(
    *,
    batch: int = 7,
    dim: int = 3,
    width: int = 5,
    out: int = 2,
    k: int = 3,
    layers: int = 3,
    activation: str = "tanh",
    dtype: torch.dtype = torch.float64,
    target: str = "grad",
    directions: str = "per_row",
    bias: bool = True,
    device: str = "cpu",
    seed: int = 0,
    x_grad: bool = True,
):
    """A model, inputs and sobolev_loss keyword arguments for one test case.

    target: "grad" | "jvp" | "teacher"; directions: "sampled" | "shared" | "per_row" | "full".
    Everything is drawn in fp64 and rounded to ``dtype``, so runs at different dtypes share
    the same underlying problem.
    """
    gen = torch.Generator().manual_seed(seed)
    model = sk.SobolevMLP(dim, width, out, layers, activation=activation, bias=bias,
                          dtype=torch.float64)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) / p.shape[-1] ** 0.5)
    model = model.to(device=device, dtype=dtype)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)

    x = draw(batch, dim).requires_grad_(x_grad)
    y = draw(batch, out)
    kwargs: dict = {}
    if directions == "full":
        kwargs["directions"] = "full"
        k = dim
    elif directions == "shared":
        kwargs["directions"] = draw(k, dim)
    elif directions == "per_row" or target == "jvp":
        kwargs["directions"] = draw(batch, k, dim)
    else:  # sampled inside sobolev_loss, reproducibly
        kwargs["num_directions"] = k
        kwargs["generator"] = torch.Generator().manual_seed(seed + 1)
    if target == "grad":
        kwargs["target_grad"] = draw(batch, out, dim)
    elif target == "jvp":
        kwargs["target_jvp"] = draw(batch, k, out)
    else:
        teacher = sk.SobolevMLP(dim, 9, out, 2, activation="sin", dtype=torch.float64)
        kwargs["teacher"] = teacher.to(device=device, dtype=dtype)
    return model, x, y, kwargs


def inputs_of_order(order: int, **shape):
    """sample_inputs (order 1), or order2_inputs with ``order=2`` among the loss's keywords."""
    if order == 1:
        return sample_inputs(**shape)
    model, x, y, kw = order2_inputs(**shape)
    return model, x, y, dict(kw, order=2)


def order2_inputs(target="hess", out=2, **kwargs):
    """sample_inputs plus a second-order target: target_hess, target_hvp2 or a teacher."""
    first = "teacher" if target == "teacher" else kwargs.pop("first", "grad")
    model, x, y, kw = sample_inputs(out=out, target=first, **kwargs)
    gen = torch.Generator().manual_seed(99)
    dim, batch = x.shape[1], x.shape[0]
    k = kw["directions"].shape[-2] if isinstance(kw.get("directions"), torch.Tensor) else (
        dim if kw.get("directions") == "full" else kw.get("num_directions", 1)
    )  # fmt: skip
    if target == "hess":
        h = torch.randn(batch, out, dim, dim, generator=gen, dtype=torch.float64)
        kw["target_hess"] = (h + h.transpose(-1, -2)).to(x.device, x.dtype)
    elif target == "hvp2":
        kw["target_hvp2"] = torch.randn(batch, k, out, generator=gen, dtype=torch.float64).to(
            x.device, x.dtype
        )
    return model, x, y, kw


def loss_and_grads(model, x, y, kwargs, backend, **extra):
    """loss and d loss / d (x, parameters...) for one backend, with fresh generators."""
    kwargs = dict(kwargs)
    if "generator" in kwargs:  # every run draws the same directions
        fresh = torch.Generator()
        fresh.set_state(kwargs["generator"].get_state())
        kwargs["generator"] = fresh
    loss = sk.sobolev_loss(model, x, y, backend=backend, **kwargs, **extra)
    inputs = ([x] if x.requires_grad else []) + list(model.parameters())
    # the last bias does not reach the derivative term: its gradient is 0 when y is None
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return loss, grads


def assert_backends_agree(
    model, x, y, kwargs, backend, rtol, expected_model=None, kink_flips=0.0, **extra
):
    """Loss and every gradient of ``backend`` against ``reference`` (optionally on a model copy
    in higher precision, ``expected_model`` with ``x``/``y``/``kwargs`` cast to its dtype;
    ``kink_flips``: see assert_close)."""
    loss, grads = loss_and_grads(model, x, y, kwargs, backend, **extra)
    if expected_model is None:
        ref_loss, ref_grads = loss_and_grads(model, x, y, kwargs, "reference", **extra)
    else:
        ref_loss, ref_grads = loss_and_grads(expected_model, *_cast(x, y, kwargs), "reference",
                                             **extra)  # fmt: skip
    assert_close(loss, ref_loss, rtol, "loss")
    names = (["x"] if x.requires_grad else []) + [n for n, _ in model.named_parameters()]
    for name, g, ref in zip(names, grads, ref_grads):
        assert_close(g, ref, rtol, f"d loss / d {name}", kink_flips)


def assert_forward_only_agrees(model, x, y, kwargs, backend, rtol, expected_model, name="loss"):
    """The loss under no_grad (a forward with no backward to follow) against ``reference`` on
    ``expected_model`` (fp64)."""
    with torch.no_grad():
        loss = sk.sobolev_loss(model, x, y, backend=backend, **kwargs)
    x64, y64, kwargs64 = _cast(x, y, kwargs)
    ref = sk.sobolev_loss(expected_model, x64, y64, backend="reference", **kwargs64)
    assert_close(loss, ref, rtol, f"{name} without a backward")


def _cast(x, y, kwargs, dtype=torch.float64):
    def c(t):
        return t.detach().to(dtype) if isinstance(t, torch.Tensor) else t

    out = {k: c(v) for k, v in kwargs.items()}
    if "teacher" in out:
        out["teacher"] = _copy_module(out["teacher"], dtype)
    return c(x).requires_grad_(x.requires_grad), c(y), out


def _copy_module(module, dtype):
    return copy.deepcopy(module).to(dtype)


def upcast_model(model, dtype=torch.float64):
    return _copy_module(model, dtype)


@pytest.fixture
def chosen(monkeypatch):
    """The names of the backends ``select`` returns, call by call."""
    names = []
    real = backends.select

    def spy(name, problem):
        picked = real(name, problem)
        names.append(picked.name)
        return picked

    monkeypatch.setattr(backends, "select", spy)
    return names
