"""Property-based equivalence: random MLPs and problems, every backend against ``reference``.

CI runs a bounded, derandomized profile (about 200 examples over all backends); set
SOBOLEV_HYPOTHESIS=long for 10x more, randomized.
"""

import os

import pytest
import torch
from conftest import HAS_CUDA, TOLERANCES, assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sobolev_kernels as sk
from sobolev_kernels import backends
from sobolev_kernels.activations import ACTIVATIONS

LONG = os.environ.get("SOBOLEV_HYPOTHESIS") == "long"
# examples per backend in the CI profile: the Triton interpreter is the slow one
EXAMPLES = {"torch": 90, "cuda": 70, "triton": 40}
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _settings(backend):
    n = EXAMPLES[backend] * (10 if LONG else 1)
    return settings(max_examples=n, deadline=None, derandomize=not LONG, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip


@st.composite
def problems(draw, backend):
    module = backends.load(backend)
    orders = module.orders
    dtypes = [torch.float32] if backend == "triton" else [torch.float64, torch.float32]
    spec = dict(
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        batch=draw(st.integers(1, 40)),
        dim=draw(st.integers(1, 6)),
        hidden=draw(st.lists(st.integers(1, 24), min_size=0, max_size=3)),
        out=draw(st.integers(1, 4)),
        k=draw(st.integers(1, 4)),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes)),
        target=draw(st.sampled_from(["grad", "jvp", "teacher"])),
        directions=draw(st.sampled_from(["sampled", "shared", "per_row", "full"])),
        order=draw(st.sampled_from(orders)),
        y=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )
    if spec["target"] == "jvp" and spec["directions"] == "sampled":
        spec["directions"] = "per_row"  # projected targets need explicit directions
    return spec


def _build(spec):
    gen = torch.Generator().manual_seed(spec["seed"])
    dim, out, batch = spec["dim"], spec["out"], spec["batch"]

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    model = sk.SobolevMLP(dim, spec["hidden"], out, len(spec["hidden"]) + 1,
                          activation=spec["activation"], bias=spec["bias"],
                          dtype=torch.float64)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(draw(*p.shape) / p.shape[-1] ** 0.5)
    k = dim if spec["directions"] == "full" else spec["k"]
    kw = {"order": spec["order"]}
    if spec["directions"] == "full":
        kw["directions"] = "full"
    elif spec["directions"] == "shared":
        kw["directions"] = draw(k, dim)
    elif spec["directions"] == "per_row":
        kw["directions"] = draw(batch, k, dim)
    else:
        kw["num_directions"] = k
    if spec["target"] == "grad":
        kw["target_grad"] = draw(batch, out, dim)
    elif spec["target"] == "jvp":
        kw["target_jvp"] = draw(batch, k, out)
    else:
        kw["teacher"] = sk.SobolevMLP(dim, 7, out, 2, activation="sin", dtype=torch.float64)
    if spec["order"] == 2 and spec["target"] != "teacher":
        kw["target_hess"] = draw(batch, out, dim, dim)
    x = draw(batch, dim).requires_grad_(True)
    y = draw(batch, out) if spec["y"] else None
    return model, x, y, kw


def _run(model, x, y, kw, backend, seed, dtype):
    model = model.to(device=DEVICE, dtype=dtype)
    kw = {k: (v.to(DEVICE, dtype) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    if "teacher" in kw:
        kw["teacher"] = kw["teacher"].to(device=DEVICE, dtype=dtype)
    if "num_directions" in kw:
        kw["generator"] = torch.Generator().manual_seed(seed)
    x = x.detach().to(DEVICE, dtype).requires_grad_(True)
    y = y.to(DEVICE, dtype) if y is not None else None
    loss = sk.sobolev_loss(model, x, y, backend=backend, **kw)
    grads = torch.autograd.grad(loss, [x, *model.parameters()], allow_unused=True,
                                materialize_grads=True)  # fmt: skip
    return [loss, *grads]


def _check(backend, spec):
    model, x, y, kw = _build(spec)
    dtype = spec["dtype"]
    got = _run(model, x, y, kw, backend, spec["seed"], dtype)
    # the oracle in fp64 on the same (possibly fp32-rounded) numbers
    rounded = model.to(dtype).to(torch.float64)
    expected = _run(rounded, x.to(dtype).double(), None if y is None else y.to(dtype).double(),
                    {k: (v.to(dtype).double() if isinstance(v, torch.Tensor) else v)
                     for k, v in kw.items()}, "reference", spec["seed"],
                    torch.float64)  # fmt: skip
    rtol = TOLERANCES[dtype] if dtype == torch.float64 else 1e-4
    for i, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, rtol, f"{backend} {spec} output {i}")


def _property_test(backend):
    @pytest.mark.skipif(backend not in sk.available_backends(), reason=f"{backend} unavailable")
    @_settings(backend)
    @given(spec=problems(backend))
    def test(spec):
        _check(backend, spec)

    return test


test_torch_matches_reference = _property_test("torch")
test_triton_matches_reference = pytest.mark.heavy(12)(_property_test("triton"))
test_cuda_matches_reference = _property_test("cuda")
