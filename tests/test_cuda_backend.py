"""Backend ``cuda`` (the C++ extension ``sobolev_kernels._C``) against ``reference``.

On CPU this tests the fused C++ kernel; the CUDA kernels are compiled with nvcc here (no GPU
needed) and run against ``reference`` in the ``gpu`` tests.
"""

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import (
    HAS_CUDA,
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    sample_inputs,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends import cuda as cuda_backend
from sobolev_kernels.problem import SobolevProblem

if cuda_backend.unavailable_reason() is not None:
    pytest.skip(cuda_backend.unavailable_reason(), allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
OPS = torch.ops.sobolev_kernels
F64 = TOLERANCES[torch.float64]
TARGETS = ["grad", "jvp", "teacher"]
DIRECTIONS = ["sampled", "shared", "per_row", "full"]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_every_activation_target_and_direction_form(activation, target, directions):
    model, x, y, kw = sample_inputs(activation=activation, target=target, directions=directions)
    assert_backends_agree(model, x, y, kw, "cuda", F64, alpha=0.6, beta=1.7)


# B, d, width, K (-1: K = d); the batch of 1000 spans several blocks and weight-gradient chunks
SHAPES = list(itertools.product([1, 7, 1000], [1, 3], [5, 16, 48, 256], [1, 3, -1]))


@pytest.mark.parametrize("batch, dim, width, k", SHAPES)
def test_shapes_fp64(batch, dim, width, k):
    k = dim if k == -1 else k
    if batch == 1000 and width == 256 and k == 3:
        pytest.skip("covered by the K = d case; keeps the module fast")
    model, x, y, kw = sample_inputs(batch=batch, dim=dim, width=width, out=2, k=k, layers=3,
                                    directions="per_row", seed=batch + dim + width)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", F64)


@pytest.mark.parametrize("layers", [1, 2, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_depth_and_bias(layers, bias, directions):
    model, x, y, kw = sample_inputs(layers=layers, bias=bias, directions=directions, k=2)
    assert_backends_agree(model, x, y, kw, "cuda", F64)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    "batch, width, k, directions", [(7, 5, 3, "per_row"), (600, 64, 2, "shared")]
)
def test_fp32(activation, batch, width, k, directions):
    model, x, y, kw = sample_inputs(activation=activation, batch=batch, width=width, k=k,
                                    directions=directions, dtype=torch.float32)  # fmt: skip
    # against the oracle in fp64 on the same (fp32-rounded) numbers
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[torch.float32],
                          expected_model=upcast_model(model))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_low_precision(dtype, activation):
    model, x, y, kw = sample_inputs(activation=activation, batch=64, width=32, k=2, dtype=dtype)
    loss = sk.sobolev_loss(model, x, y, backend="cuda", **kw)
    assert loss.dtype == torch.float32  # the loss accumulates in fp32
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip


def test_no_value_term_and_no_input_gradient():
    model, x, y, kw = sample_inputs(x_grad=False)
    assert_backends_agree(model, x, None, kw, "cuda", F64)


def test_return_outputs_adds_the_users_value_loss():
    """A user's own loss on f (here a KL-like term) flows through the fused backward."""
    model, x, y, kw = sample_inputs(out=3)
    grads = {}
    for backend in ("cuda", "reference"):
        loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw)
        user = torch.nn.functional.kl_div(f.log_softmax(-1), y.softmax(-1), reduction="batchmean")
        grads[backend] = torch.autograd.grad(loss + user, [x, *model.parameters()])
    for a, b in zip(grads["cuda"], grads["reference"]):
        assert_close(a, b, F64, "grad with user loss on f")


@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_mlp_jvp_with_losses_on_f_and_u(directions):
    model, x, _, kw = sample_inputs(out=3, directions=directions)
    results = {}
    for backend in ("cuda", "reference"):
        f, u = sk.mlp_jvp(model, x, kw["directions"], backend=backend)
        user = f.sin().sum() + u.square().sum()
        results[backend] = [f, u, *torch.autograd.grad(user, [x, *model.parameters()])]
    for a, b in zip(results["cuda"], results["reference"]):
        assert_close(a, b, F64, "mlp_jvp outputs and gradients")


def _op_inputs(shared: bool, bias: bool, activation: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def r(*s, grad=False):
        return torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = r(5, 3, grad=True)
    dirs = r(2, 3) if shared else r(5, 2, 3)
    weights = [r(6, 3, grad=True), r(4, 6, grad=True), r(2, 4, grad=True)]
    biases = [r(6, grad=True), r(4, grad=True), r(2, grad=True)] if bias else []
    return x, dirs, r(5, 2), r(5, 2, 3), weights, biases


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu", "sin"])
def test_gradcheck(shared, bias, activation):
    """The op's analytic backward against finite differences, for every differentiable output."""
    x, dirs, y, target_grad, weights, biases = _op_inputs(shared, bias)
    act = ACTIVATIONS[activation].kernel_id

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        loss, f, u, _ = OPS.sobolev_forward(x, dirs, y, None, target_grad, w, b, act, 0.0, 0.6,
                                            1.7, True)  # fmt: skip
        return loss, f, u

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


@pytest.mark.parametrize("shared", [True, False])
def test_opcheck(shared):
    x, dirs, y, target_grad, weights, biases = _op_inputs(shared, True)
    args = (x, dirs, y, None, target_grad, weights, biases, 3, 0.0, 0.6, 1.7, True)
    torch.library.opcheck(OPS.sobolev_forward, args)
    detached = [t.detach() for t in (x, *weights, *biases)]
    x0, w0, b0 = detached[0], detached[1:4], detached[4:]
    loss, f, u, saved = OPS.sobolev_forward(x0, dirs, y, None, target_grad, w0, b0, 3, 0.0, 0.6,
                                            1.7, True)  # fmt: skip
    grad_f = torch.randn_like(f)
    args = (torch.tensor(1.3, dtype=torch.float64), grad_f, None, x0, dirs, y, None, target_grad,
            w0, b0, f, u, saved, 3, 0.0, 0.6, 1.7, True, True)  # fmt: skip
    torch.library.opcheck(OPS.sobolev_backward, args)
    torch.library.opcheck(OPS.activation_series, (torch.randn(4, 5), 5, 0.0))


def _fp32_loss_and_grads(batch=1000, width=64, directions="per_row"):
    model, x, y, kw = sample_inputs(batch=batch, width=width, k=3, directions=directions,
                                    dtype=torch.float32, seed=3)  # fmt: skip
    loss = sk.sobolev_loss(model, x, y, backend="cuda", **kw)
    return [loss, *torch.autograd.grad(loss, [x, *model.parameters()])]


@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_deterministic(directions):
    """Bitwise identical across runs and thread counts (fixed blocking and summation order)."""
    first = _fp32_loss_and_grads(directions=directions)
    again = _fp32_loss_and_grads(directions=directions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _fp32_loss_and_grads(directions=directions)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("shared", [True, False])
def test_backward_recomputes_without_saved_activations(shared):
    """save_activations=False: the backward recomputes z/tz per block, to the same numbers."""
    x, dirs, y, target_grad, weights, biases = _op_inputs(shared, True)
    x, weights, biases = x.detach(), [w.detach() for w in weights], [b.detach() for b in biases]
    grads = []
    for save in (True, False):
        loss, f, u, saved = OPS.sobolev_forward(x, dirs, y, None, target_grad, weights, biases,
                                                0, 0.0, 0.6, 1.7, save)  # fmt: skip
        assert saved.numel() == (3 * 5 * (6 + 4) if save else 0)
        grads.append(OPS.sobolev_backward(torch.tensor(1.0, dtype=torch.float64), None, None, x,
                                          dirs, y, None, target_grad, weights, biases, f, u,
                                          saved, 0, 0.0, 0.6, 1.7, True, True))  # fmt: skip
    (gx0, gw0, gb0), (gx1, gw1, gb1) = grads
    for a, b in zip([gx0, *gw0, *gb0], [gx1, *gw1, *gb1]):
        assert_close(a, b, 1e-14, "recomputed backward")


def test_plain_loop_gemm(monkeypatch):
    """SOBOLEV_CPU_GEMM=loop: the GEMMs without BLAS (torch builds without one) agree too."""
    monkeypatch.setenv("SOBOLEV_CPU_GEMM", "loop")
    for directions in ("shared", "per_row"):
        model, x, y, kw = sample_inputs(batch=300, width=16, k=2, directions=directions)
        assert_backends_agree(model, x, y, kw, "cuda", F64)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_activation_formulas(activation, dtype):
    """s, s', s'' of the C++ kernels against activations.py, around every special point."""
    act = ACTIVATIONS[activation]
    if activation == "leaky_relu":
        act = sk.activations.get_activation("leaky_relu", 0.2)
    z = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e-30, 0.39, 0.41, 19.99, 20.0, 20.01, 88.0, -90.0],
                                dtype=torch.float64)])  # fmt: skip
    got = OPS.activation_series(z.to(dtype), act.kernel_id, act.negative_slope)
    expected = torch.stack(act.series(z.to(dtype).double(), 2))
    for i in range(3):
        # fp32: the vectorised exp/tanh/log1p/sin of csrc/cpu/fast_math.h are a few ulp off,
        # and formulas like 1 - tanh^2 cancel in fp32 as they do in torch
        rtol = 1e-12 if dtype == torch.float64 else TOLERANCES[torch.float32]
        assert_close(got[i], expected[i], rtol, f"s^({i})")


def test_compile_fullgraph_matches_eager():
    model, x, y, kw = sample_inputs(directions="per_row", dtype=torch.float32)

    def loss_fn(x, y, directions, target_grad):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                               backend="cuda")  # fmt: skip

    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True), loss_fn):
        xi = x.detach().requires_grad_(True)
        loss = fn(xi, y, kw["directions"], kw["target_grad"])
        results.append([loss, *torch.autograd.grad(loss, [xi, *model.parameters()])])
    for a, b in zip(*results):
        assert_close(a, b, TOLERANCES[torch.float32], "compiled vs eager")


def test_missing_extension_says_how_to_build(monkeypatch):
    monkeypatch.setattr(cuda_backend, "_extension", None)
    monkeypatch.setattr(cuda_backend, "_import_error", "No module named 'sobolev_kernels._C'")
    reason = cuda_backend.unavailable_reason()
    assert "sobolev_kernels._C" in reason and "pip install --no-build-isolation -e ." in reason
    model, x, y, kw = sample_inputs()
    with pytest.raises(ValueError, match="no-build-isolation"):
        sk.sobolev_loss(model, x, y, backend="cuda", **kw)


def test_unsupported_device_is_named():
    model, x, _, _ = sample_inputs()
    meta = x.detach().to("meta")
    problem = SobolevProblem(model=model, mlp=model, x=meta, y=None, directions=meta)
    assert "device meta" in cuda_backend.unsupported_reason(problem)


def test_op_rejects_inconsistent_tensors():
    x, dirs, y, target_grad, weights, biases = _op_inputs(False, True)
    with pytest.raises(RuntimeError, match=r"weights\[1\]: expected shape"):
        OPS.sobolev_forward(x, dirs, y, None, target_grad, [weights[0], weights[0]], [], 0, 0.0,
                            1.0, 1.0, False)  # fmt: skip
    with pytest.raises(RuntimeError, match="target_jvp/target_grad: expected at most one"):
        OPS.sobolev_forward(x, dirs, y, torch.zeros(5, 2, 2, dtype=torch.float64), target_grad,
                            weights, biases, 0, 0.0, 1.0, 1.0, False)  # fmt: skip


@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
def test_cuda_sources_compile_for_sm80_and_sm90():
    script = ROOT / "scripts" / "check_cuda_compile.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_cuda_kernels_in_host_emulation(tmp_path):
    """The CUDA kernels run on the host (std::threads and barriers for a block's threads,
    csrc/cuda/emulation/host_shim.h) against a direct implementation of DESIGN section 2:
    their indexing, synchronisation and reductions, without a GPU."""
    source = ROOT / "csrc" / "cuda" / "emulation" / "emulate_kernels.cpp"
    exe = tmp_path / "emulate_kernels"
    build = [os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-pthread", f"-I{ROOT / 'csrc'}",
             str(source), "-o", str(exe)]  # fmt: skip
    proc = subprocess.run(build, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- CUDA kernels


def _needs_cuda_kernels():
    if HAS_CUDA and not cuda_backend._extension.WITH_CUDA:
        pytest.skip("sobolev_kernels._C was built without its CUDA kernels")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_cuda_dtypes(dtype, directions):
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(batch=1000, width=64, k=3, dtype=dtype, device="cuda",
                                    directions=directions)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
def test_cuda_activations_and_targets(activation, target):
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(activation=activation, target=target, device="cuda")
    assert_backends_agree(model, x, y, kw, "cuda", F64, alpha=0.6, beta=1.7)


# the last two take the global-memory fallback for tile buffers (K too large for shared memory)
@pytest.mark.gpu
@pytest.mark.parametrize("batch, dim, width, k, layers",
                         [(1, 1, 5, 1, 1), (7, 3, 256, 3, 3), (1000, 3, 48, 3, 5),
                          (333, 40, 256, 40, 2), (65, 2, 256, 100, 3)])  # fmt: skip
def test_cuda_shapes(batch, dim, width, k, layers):
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(batch=batch, dim=dim, width=width, k=k, layers=layers,
                                    device="cuda")  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", F64)


def _grads_with_user_loss(model, x, kw, backend):
    loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw)
    return torch.autograd.grad(loss + f.square().mean(), [x, *model.parameters()])


@pytest.mark.gpu
def test_cuda_outputs_determinism_and_recompute():
    _needs_cuda_kernels()
    model, x, _, kw = sample_inputs(out=3, batch=777, width=48, device="cuda", bias=False)
    first = _grads_with_user_loss(model, x, kw, "cuda")
    for a, b in zip(first, _grads_with_user_loss(model, x, kw, "reference")):
        assert_close(a, b, F64, "CUDA gradients with a user loss on f")
    assert all(
        torch.equal(a, b) for a, b in zip(first, _grads_with_user_loss(model, x, kw, "cuda"))
    )
    # the op without saved activations recomputes them
    x0, dirs, target = x.detach(), kw["directions"], kw["target_grad"]
    weights = [w.detach() for w in model.weights()]
    loss, f, u, saved = OPS.sobolev_forward(x0, dirs, None, None, target, weights, [], 0, 0.0,
                                            1.0, 1.0, False)  # fmt: skip
    assert saved.numel() == 0
    one = torch.ones((), dtype=torch.float64, device="cuda")
    grad_x, grad_w, _ = OPS.sobolev_backward(one, None, None, x0, dirs, None, None, target,
                                             weights, [], f, u, saved, 0, 0.0, 1.0, 1.0, True,
                                             True)  # fmt: skip
    expected = torch.autograd.grad(sk.sobolev_loss(model, x, None, backend="reference", **kw),
                                   [x, *model.parameters()])  # fmt: skip
    for a, b in zip([grad_x, *grad_w], expected):
        assert_close(a, b, F64, "recomputed CUDA backward")


@pytest.mark.gpu
def test_cuda_compile_fullgraph():
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(directions="per_row", dtype=torch.float32, device="cuda")

    def loss_fn(x, y, directions, target_grad):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                               backend="cuda")  # fmt: skip

    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True), loss_fn):
        xi = x.detach().requires_grad_(True)
        loss = fn(xi, y, kw["directions"], kw["target_grad"])
        results.append([loss, *torch.autograd.grad(loss, [xi, *model.parameters()])])
    for a, b in zip(*results):
        assert_close(a, b, TOLERANCES[torch.float32], "compiled vs eager on CUDA")
