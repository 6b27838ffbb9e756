"""Backend ``cuda`` (the C++ extension ``sobolev_kernels._C``) against ``reference``.

On CPU this tests the fused C++ kernel, at order 1 and order 2 (Taylor mode, docs/math.md);
the CUDA kernels are compiled with nvcc here (no GPU needed), run on the host in emulation,
and run against ``reference`` in the ``gpu`` tests.
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
    order2_inputs,
    sample_inputs,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends import cuda as cuda_backend
from sobolev_kernels.problem import SobolevProblem

if cuda_backend.BACKEND.unavailable_reason() is not None:
    pytest.skip(cuda_backend.BACKEND.unavailable_reason(), allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
OPS = torch.ops.sobolev_kernels
F64 = TOLERANCES[torch.float64]
TARGETS = ["grad", "jvp", "teacher"]
TARGETS2 = ["hess", "hvp2", "teacher"]  # order 2: target_hess, target_hvp2 or a teacher's w
DIRECTIONS = ["sampled", "shared", "per_row", "full"]
ORDER2 = dict(order=2, alpha=0.6, beta=1.7, gamma=0.8)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_every_activation_target_and_direction_form(activation, target, directions):
    model, x, y, kw = sample_inputs(activation=activation, target=target, directions=directions)
    assert_backends_agree(model, x, y, kw, "cuda", F64, alpha=0.6, beta=1.7)


def _order2_case(target, directions, **kwargs):
    if target == "hvp2" and directions == "sampled":
        directions = "per_row"  # projected targets need explicit directions
    return order2_inputs(target, directions=directions, **kwargs)


# every activation with every second-order target form; the direction form rotates, so each
# target meets each direction form at least twice
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS2)
def test_order2_every_activation_target_and_direction_form(activation, target):
    index = sorted(ACTIVATIONS).index(activation) + TARGETS2.index(target)
    model, x, y, kw = _order2_case(target, DIRECTIONS[index % len(DIRECTIONS)],
                                   activation=activation)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", F64, **ORDER2)


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


# B, d, width, K, m, layers, bias: one row, d = 1, one layer (w = 0), deep, no bias, K = d,
# many directions (few rows per block), 1000 rows over more blocks than weight-gradient chunks
SHAPES2 = [(1, 1, 5, 1, 1, 2, True), (7, 3, 16, 3, 4, 3, False), (9, 2, 8, 2, 1, 1, True),
           (20, 5, 7, 5, 2, 5, False), (33, 2, 256, 2, 1, 2, True), (64, 3, 16, 12, 2, 3, True),
           (1000, 3, 48, 3, 2, 3, True)]  # fmt: skip


@pytest.mark.parametrize("batch, dim, width, k, out, layers, bias", SHAPES2)
def test_order2_shapes_fp64(batch, dim, width, k, out, layers, bias):
    model, x, y, kw = order2_inputs(batch=batch, dim=dim, width=width, k=k, out=out,
                                    layers=layers, bias=bias, seed=batch + width)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", F64, **ORDER2)


@pytest.mark.parametrize("layers", [1, 2, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_depth_and_bias(layers, bias, directions):
    model, x, y, kw = sample_inputs(layers=layers, bias=bias, directions=directions, k=2)
    assert_backends_agree(model, x, y, kw, "cuda", F64)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize(
    "batch, width, k, directions", [(7, 5, 3, "per_row"), (600, 64, 2, "shared")]
)
def test_fp32(order, activation, batch, width, k, directions):
    kw = dict(activation=activation, batch=batch, width=width, k=k, directions=directions,
              dtype=torch.float32)  # fmt: skip
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    extra = ORDER2 if order == 2 else {}
    # against the oracle in fp64 on the same (fp32-rounded) numbers
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[torch.float32],
                          expected_model=upcast_model(model), **extra)  # fmt: skip


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_low_precision(order, dtype, activation):
    kw = dict(activation=activation, batch=64, width=32, k=2, dtype=dtype)
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    extra = ORDER2 if order == 2 else {}
    loss = sk.sobolev_loss(model, x, y, backend="cuda", **kw, **extra)
    assert loss.dtype == torch.float32  # the loss accumulates in fp32
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model), **extra)  # fmt: skip


def test_no_value_term_and_no_input_gradient():
    model, x, y, kw = sample_inputs(x_grad=False)
    assert_backends_agree(model, x, None, kw, "cuda", F64)


def test_order2_no_value_term_no_input_gradient_projected_targets():
    model, x, _, kw = order2_inputs("hvp2", first="jvp", directions="per_row", x_grad=False)
    assert_backends_agree(model, x, None, kw, "cuda", F64, **ORDER2)


@pytest.mark.parametrize("order", [1, 2])
def test_return_outputs_adds_the_users_value_loss(order):
    """A user's own loss on f (here a KL-like term) flows through the fused backward."""
    model, x, y, kw = sample_inputs(out=3) if order == 1 else order2_inputs(out=3)
    extra = ORDER2 if order == 2 else {}
    grads = {}
    for backend in ("cuda", "reference"):
        loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw,
                                  **extra)  # fmt: skip
        user = torch.nn.functional.kl_div(f.log_softmax(-1), y.softmax(-1), reduction="batchmean")
        grads[backend] = torch.autograd.grad(loss + user, [x, *model.parameters()])
    for a, b in zip(grads["cuda"], grads["reference"]):
        assert_close(a, b, F64, "grad with user loss on f")


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_mlp_jvp_with_losses_on_its_outputs(order, directions):
    """mlp_jvp's (f, u) or (f, u, w), each differentiable: user losses on all of them."""
    model, x, _, kw = sample_inputs(out=3, directions=directions)
    results = {}
    for backend in ("cuda", "reference"):
        outputs = sk.mlp_jvp(model, x, kw["directions"], backend=backend, order=order)
        assert len(outputs) == 1 + order
        f, u, *w = outputs
        user = f.sin().sum() + u.square().sum() + sum((0.5 * t).cos().sum() for t in w)
        results[backend] = [*outputs, *torch.autograd.grad(user, [x, *model.parameters()])]
    for a, b in zip(results["cuda"], results["reference"]):
        assert_close(a, b, F64, "mlp_jvp outputs and gradients")


def test_order2_piecewise_linear_networks_have_no_second_derivative():
    model, x, _, kw = sample_inputs(activation="relu", directions="per_row")
    _, _, w = sk.mlp_jvp(model, x, kw["directions"], backend="cuda", order=2)
    assert torch.equal(w, torch.zeros_like(w))


# --------------------------------------------------------------------------- the ops directly


def _op_inputs(shared: bool, bias: bool, order: int = 1, seed: int = 0):
    """x (5, 3), directions, the op's targets (y, target_grad and, order 2, target_hess),
    weights and biases of a 3 -> 6 -> 4 -> 2 MLP, in fp64."""
    gen = torch.Generator().manual_seed(seed)

    def r(*s, grad=False):
        return torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = r(5, 3, grad=True)
    dirs = r(2, 3) if shared else r(5, 2, 3)
    weights = [r(6, 3, grad=True), r(4, 6, grad=True), r(2, 4, grad=True)]
    biases = [r(6, grad=True), r(4, grad=True), r(2, grad=True)] if bias else []
    targets = dict(y=r(5, 2), target_grad=r(5, 2, 3))
    if order == 2:
        hess = r(5, 2, 3, 3)
        targets["target_hess"] = hess + hess.transpose(-1, -2)
    return x, dirs, targets, weights, biases


def _forward_op(x, dirs, weights, biases, *, y=None, target_jvp=None, target_grad=None,
                target_hvp2=None, target_hess=None, activation=0, negative_slope=0.0,
                alpha=0.6, beta=1.7, gamma=0.8, order=1, save=True):  # fmt: skip
    """sobolev_forward with keyword arguments: (loss, f, u, w, saved)."""
    return OPS.sobolev_forward(x, dirs, y, target_jvp, target_grad, target_hvp2, target_hess,
                               weights, biases, activation, negative_slope, alpha, beta, gamma,
                               order, False, save)  # fmt: skip


def _backward_args(grads, x, dirs, weights, biases, outputs, *, y=None, target_jvp=None,
                   target_grad=None, target_hvp2=None, target_hess=None, activation=0,
                   negative_slope=0.0, alpha=0.6, beta=1.7, gamma=0.8, order=1,
                   need_x=True, need_params=True):  # fmt: skip
    """sobolev_backward's arguments; grads = (grad_loss, grad_f, grad_u, grad_w), outputs =
    the forward's (loss, f, u, w, saved)."""
    _, f, u, w, saved = outputs
    return (*grads, x, dirs, y, target_jvp, target_grad, target_hvp2, target_hess, weights,
            biases, f, u, w, saved, activation, negative_slope, alpha, beta, gamma, order,
            False, need_x, need_params)  # fmt: skip


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu", "sin"])
def test_gradcheck(order, shared, bias, activation):
    """The op's analytic backward against finite differences, for every differentiable output
    (loss, f, u and, order 2, w)."""
    x, dirs, targets, weights, biases = _op_inputs(shared, bias, order)
    act = ACTIVATIONS[activation].kernel_id

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        out = _forward_op(x, dirs, w, b, activation=act, order=order, **targets)
        return out[: 2 + order]

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


def test_order2_gradcheck_projected_targets_and_upstream_gradients():
    """hvp2/jvp targets, no y, and a function of w alone: every seed of the second stream."""
    x, dirs, targets, weights, biases = _op_inputs(False, True, 2, seed=1)
    gen = torch.Generator().manual_seed(2)
    jvp, hvp2 = (torch.randn(5, 2, 2, generator=gen, dtype=torch.float64) for _ in range(2))

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        loss, f, u, w2, _ = _forward_op(x, dirs, w, b, target_jvp=jvp, target_hvp2=hvp2,
                                        activation=5, order=2)  # fmt: skip
        return loss, w2.sin()

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_opcheck(order, shared):
    x, dirs, targets, weights, biases = _op_inputs(shared, True, order)
    kw = dict(activation=3, order=order, **targets)
    hess = targets.get("target_hess")
    args = (x, dirs, targets["y"], None, targets["target_grad"], None, hess, weights, biases,
            3, 0.0, 0.6, 1.7, 0.8, order, False, True)  # fmt: skip
    torch.library.opcheck(OPS.sobolev_forward, args)
    detached = [t.detach() for t in (x, *weights, *biases)]
    x0, w0, b0 = detached[0], detached[1:4], detached[4:]
    outputs = _forward_op(x0, dirs, w0, b0, **kw)
    grad_w = torch.randn_like(outputs[3]) if order == 2 else None
    grads = (torch.tensor(1.3, dtype=torch.float64), torch.randn_like(outputs[1]), None, grad_w)
    torch.library.opcheck(OPS.sobolev_backward,
                          _backward_args(grads, x0, dirs, w0, b0, outputs, **kw))  # fmt: skip
    torch.library.opcheck(OPS.activation_series, (torch.randn(4, 5), 5, 0.0))


def _fp32_loss_and_grads(order, batch=1000, width=64, directions="per_row"):
    kw = dict(batch=batch, width=width, k=3, directions=directions, dtype=torch.float32, seed=3)
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    loss = sk.sobolev_loss(model, x, y, backend="cuda", order=order, **kw)
    return [loss, *torch.autograd.grad(loss, [x, *model.parameters()])]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_deterministic(order, directions):
    """Bitwise identical across runs and thread counts (fixed blocking and summation order)."""
    first = _fp32_loss_and_grads(order, directions=directions)
    again = _fp32_loss_and_grads(order, directions=directions)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _fp32_loss_and_grads(order, directions=directions)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_backward_recomputes_without_saved_activations(order, shared):
    """save_activations=False: the backward recomputes z/tz(/ttz) per block, to the same
    numbers."""
    x, dirs, targets, weights, biases = _op_inputs(shared, True, order)
    x, weights, biases = x.detach(), [w.detach() for w in weights], [b.detach() for b in biases]
    kw = dict(order=order, **targets)
    grads = []
    for save in (True, False):
        outputs = _forward_op(x, dirs, weights, biases, save=save, **kw)
        streams = 1 + order * 2  # [z; tz_k (; ttz_k)], K = 2
        assert outputs[4].numel() == (streams * 5 * (6 + 4) if save else 0)
        upstream = (torch.tensor(1.0, dtype=torch.float64), None, None, None)
        grads.append(OPS.sobolev_backward(*_backward_args(upstream, x, dirs, weights, biases,
                                                          outputs, **kw)))  # fmt: skip
    (gx0, gw0, gb0), (gx1, gw1, gb1) = grads
    for a, b in zip([gx0, *gw0, *gb0], [gx1, *gw1, *gb1]):
        assert_close(a, b, 1e-14, "recomputed backward")


@pytest.mark.parametrize("order", [1, 2])
def test_plain_loop_gemm(monkeypatch, order):
    """SOBOLEV_CPU_GEMM=loop: the GEMMs without BLAS (torch builds without one) agree too."""
    monkeypatch.setenv("SOBOLEV_CPU_GEMM", "loop")
    for directions in ("shared", "per_row"):
        kw = dict(batch=300, width=16, k=2, directions=directions)
        model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
        assert_backends_agree(model, x, y, kw, "cuda", F64, **(ORDER2 if order == 2 else {}))


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_activation_formulas(activation, dtype):
    """s, s', s'', s''' of the C++ kernels against activations.py, around every special point."""
    act = ACTIVATIONS[activation]
    if activation == "leaky_relu":
        act = sk.activations.get_activation("leaky_relu", 0.2)
    z = torch.cat([torch.linspace(-30, 30, 2001, dtype=torch.float64),
                   torch.tensor([0.0, -0.0, 1e-30, 0.39, 0.41, 19.99, 20.0, 20.01, 88.0, -90.0],
                                dtype=torch.float64)])  # fmt: skip
    got = OPS.activation_series(z.to(dtype), act.kernel_id, act.negative_slope)
    expected = torch.stack(act.series(z.to(dtype).double(), 3))
    # fp32: the vectorised exp/tanh/log1p/sin of csrc/cpu/fast_math.h are a few ulp off, and
    # formulas like 1 - tanh^2 cancel in fp32 as they do in torch. For s''' that cancellation
    # is visible: where tanh rounds to +-1, gelu's s''' is still 3e-5 of its peak, and torch's
    # own fp32 formula drops it too; s''' is held to torch's fp32 result there.
    if dtype == torch.float32:
        expected[3] = act.series(z.to(dtype), 3)[3].double()
    rtol = 1e-12 if dtype == torch.float64 else TOLERANCES[torch.float32]
    for i in range(4):
        assert_close(got[i], expected[i], rtol, f"s^({i})")


@pytest.mark.parametrize("order", [1, 2])
def test_compile_fullgraph_matches_eager(order):
    kw = dict(directions="per_row", dtype=torch.float32)
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    second = {"target_hess": kw["target_hess"], "gamma": 0.8} if order == 2 else {}

    def loss_fn(x, y, directions, target_grad):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                               backend="cuda", order=order, **second)  # fmt: skip

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
    reason = cuda_backend.BACKEND.unavailable_reason()
    assert "sobolev_kernels._C" in reason and "pip install --no-build-isolation -e ." in reason
    model, x, y, kw = sample_inputs()
    with pytest.raises(ValueError, match="no-build-isolation"):
        sk.sobolev_loss(model, x, y, backend="cuda", **kw)


def test_unsupported_device_is_named():
    model, x, _, _ = sample_inputs()
    meta = x.detach().to("meta")
    problem = SobolevProblem(model=model, mlp=model, x=meta, y=None, directions=meta)
    assert "tensors on meta" in cuda_backend.BACKEND.reason(problem)


def test_op_rejects_inconsistent_tensors():
    x, dirs, targets, weights, biases = _op_inputs(False, True)
    with pytest.raises(RuntimeError, match=r"weights\[1\]: expected shape"):
        _forward_op(x, dirs, [weights[0], weights[0]], [], **targets)
    with pytest.raises(RuntimeError, match="target_jvp/target_grad: expected at most one"):
        _forward_op(x, dirs, weights, biases, target_jvp=torch.zeros(5, 2, 2, dtype=torch.float64),
                    **targets)  # fmt: skip
    with pytest.raises(RuntimeError, match="order: expected 1 or 2, got 3"):
        _forward_op(x, dirs, weights, biases, order=3, **targets)
    hess = torch.zeros(5, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="second-order targets need order 2"):
        _forward_op(x, dirs, weights, biases, target_hess=hess, **targets)
    with pytest.raises(RuntimeError, match=r"target_hess: expected shape \[5, 2, 3, 3\]"):
        _forward_op(x, dirs, weights, biases, target_hess=hess[..., :2], order=2, **targets)
    with pytest.raises(RuntimeError, match="target_hvp2/target_hess: expected at most one"):
        _forward_op(x, dirs, weights, biases, target_hess=hess, order=2, **targets,
                    target_hvp2=torch.zeros(5, 2, 2, dtype=torch.float64))  # fmt: skip
    outputs = _forward_op(x.detach(), dirs, weights, biases, order=2, **targets)
    upstream = (None, None, None, outputs[3][:, :1])
    with pytest.raises(RuntimeError, match=r"grad_w: expected shape \[5, 2, 2\]"):
        OPS.sobolev_backward(*_backward_args(upstream, x, dirs, weights, biases, outputs,
                                             order=2, **targets))  # fmt: skip


@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
def test_cuda_sources_compile_for_sm80_and_sm90():
    script = ROOT / "scripts" / "check_cuda_compile.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


EMULATION = ROOT / "csrc" / "cuda" / "emulation" / "emulate_kernels.cpp"


def _build_emulation(exe, *flags):
    build = [os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-pthread", *flags,
             f"-I{ROOT / 'csrc'}", str(EMULATION), "-o", str(exe)]  # fmt: skip
    return subprocess.run(build, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_cuda_kernels_in_host_emulation(tmp_path):
    """The CUDA kernels run on the host (std::threads and barriers for a block's threads,
    csrc/cuda/emulation/host_shim.h) against a direct implementation of DESIGN section 2 and
    docs/math.md: their indexing, synchronisation and reductions at order 1 and order 2, every
    activation, fp64 and fp32, and the tensor-core path of bf16 and fp16 (emulation/wmma_shim.h,
    with the GPU's rounding), without a GPU."""
    exe = tmp_path / "emulate_kernels"
    proc = _build_emulation(exe)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every order-2 case in fp64 and fp32; in bf16 and fp16 all but relu and leaky_relu
    assert proc.stdout.count("order 2") == 2 * 10 + 2 * 8, proc.stdout
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") > 0, proc.stdout


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="no C++ compiler")
def test_cuda_kernels_have_no_shared_memory_races_in_emulation(tmp_path):
    """The emulation under ThreadSanitizer: two threads of a block touching the same word
    without a barrier between them (a missing __syncthreads or __syncwarp) is a report and a
    failure, however the threads happened to interleave. Five cases (both orders, tile buffers
    in global memory, several weight panels; ~40 s)."""
    exe = tmp_path / "emulate_kernels_tsan"
    proc = _build_emulation(exe, "-g", "-fsanitize=thread", "-Wno-tsan")
    if proc.returncode != 0 and "tsan" in proc.stderr.lower():
        pytest.skip(f"no ThreadSanitizer here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    cases = ["tanh, per-row", "3 blocks", "widths 256"]
    proc = subprocess.run([str(exe), *cases], capture_output=True, text=True, timeout=900)
    if "FATAL: ThreadSanitizer" in proc.stderr:  # e.g. an address-space layout it rejects
        pytest.skip(f"ThreadSanitizer cannot run here: {proc.stderr[-300:]}")
    assert "WARNING: ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("ok  ") == 5 * 4, proc.stdout  # five cases, four dtypes


# --------------------------------------------------------------------------- CUDA kernels


def _needs_cuda_kernels():
    if HAS_CUDA and not cuda_backend._extension.WITH_CUDA:
        pytest.skip("sobolev_kernels._C was built without its CUDA kernels")


def _cuda_case(order, **kwargs):
    """sample_inputs (order 1) or order2_inputs (order 2) on the GPU, and the extra loss
    arguments of that order."""
    if order == 1:
        return (*sample_inputs(device="cuda", **kwargs), {})
    return (*order2_inputs(device="cuda", **kwargs), ORDER2)


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_cuda_dtypes(order, dtype, directions):
    _needs_cuda_kernels()
    model, x, y, kw, extra = _cuda_case(order, batch=1000, width=64, k=3, dtype=dtype,
                                        directions=directions)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model), **extra)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_16bit_weight_gradients_at_a_large_batch(dtype):
    """B = 2^16 on tensor cores: the backward's adjoints are O(1/B), below fp16's normal range;
    fp16 operands are scaled per product, so dW keeps its precision (the host emulation checks
    the same at 1024 rows). dL/dx is O(1/B) itself, which an fp16 output cannot hold: left out."""
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(batch=2**16, dim=8, width=128, k=2, dtype=dtype,
                                    device="cuda", x_grad=False)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
def test_cuda_activations_and_targets(activation, target):
    _needs_cuda_kernels()
    model, x, y, kw = sample_inputs(activation=activation, target=target, device="cuda")
    assert_backends_agree(model, x, y, kw, "cuda", F64, alpha=0.6, beta=1.7)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS2)
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_cuda_order2_activations_and_targets(activation, target, directions):
    _needs_cuda_kernels()
    model, x, y, kw = _order2_case(target, directions, activation=activation, device="cuda")
    assert_backends_agree(model, x, y, kw, "cuda", F64, **ORDER2)


# the last two take the global-memory fallback for tile buffers (K too large for shared memory)
@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("batch, dim, width, k, layers",
                         [(1, 1, 5, 1, 1), (7, 3, 256, 3, 3), (1000, 3, 48, 3, 5),
                          (333, 40, 256, 40, 2), (65, 2, 256, 100, 3)])  # fmt: skip
def test_cuda_shapes(order, batch, dim, width, k, layers):
    _needs_cuda_kernels()
    model, x, y, kw, extra = _cuda_case(order, batch=batch, dim=dim, width=width, k=k,
                                        layers=layers)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", F64, **extra)


def _grads_with_user_loss(model, x, kw, backend, extra):
    loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw, **extra)
    return torch.autograd.grad(loss + f.square().mean(), [x, *model.parameters()])


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
def test_cuda_outputs_determinism_and_recompute(order):
    _needs_cuda_kernels()
    model, x, _, kw, extra = _cuda_case(order, out=3, batch=777, width=48, bias=False)
    first = _grads_with_user_loss(model, x, kw, "cuda", extra)
    for a, b in zip(first, _grads_with_user_loss(model, x, kw, "reference", extra)):
        assert_close(a, b, F64, "CUDA gradients with a user loss on f")
    assert all(
        torch.equal(a, b) for a, b in zip(first, _grads_with_user_loss(model, x, kw, "cuda", extra))
    )
    # the op without saved activations recomputes them
    x0, dirs = x.detach(), kw["directions"]
    weights = [w.detach() for w in model.weights()]
    targets = dict(target_grad=kw["target_grad"], target_hess=kw.get("target_hess"))
    op_kw = dict(order=order, alpha=1.0, beta=1.0, gamma=0.8, **targets)
    outputs = _forward_op(x0, dirs, weights, [], save=False, **op_kw)
    assert outputs[4].numel() == 0
    one = torch.ones((), dtype=torch.float64, device="cuda")
    args = _backward_args((one, None, None, None), x0, dirs, weights, [], outputs, **op_kw)
    grad_x, grad_w, _ = OPS.sobolev_backward(*args)
    second = {"gamma": 0.8} if order == 2 else {}
    expected = torch.autograd.grad(sk.sobolev_loss(model, x, None, backend="reference", **kw,
                                                   order=order, **second),
                                   [x, *model.parameters()])  # fmt: skip
    for a, b in zip([grad_x, *grad_w], expected):
        assert_close(a, b, F64, "recomputed CUDA backward")


@pytest.mark.gpu
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_cuda_order2_mlp_jvp_and_its_gradient(directions):
    _needs_cuda_kernels()
    model, x, _, kw = sample_inputs(out=2, k=2, directions=directions, device="cuda")
    results = {}
    for backend in ("cuda", "reference"):
        f, u, w = sk.mlp_jvp(model, x, kw["directions"], backend=backend, order=2)
        grads = torch.autograd.grad(f.sum() + (u * 0.5).sum() + w.square().sum(),
                                    [x, *model.parameters()])  # fmt: skip
        results[backend] = (f, u, w, *grads)
    for a, b in zip(results["cuda"], results["reference"]):
        assert_close(a, b, F64, "mlp_jvp order 2 on CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
def test_cuda_compile_fullgraph(order):
    _needs_cuda_kernels()
    model, x, y, kw, extra = _cuda_case(order, directions="per_row", dtype=torch.float32)
    second = {"target_hess": kw["target_hess"]} if order == 2 else {}

    def loss_fn(x, y, directions, target_grad):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                               backend="cuda", **second, **extra)  # fmt: skip

    results = []
    for fn in (torch.compile(loss_fn, fullgraph=True), loss_fn):
        xi = x.detach().requires_grad_(True)
        loss = fn(xi, y, kw["directions"], kw["target_grad"])
        results.append([loss, *torch.autograd.grad(loss, [xi, *model.parameters()])])
    for a, b in zip(*results):
        assert_close(a, b, TOLERANCES[torch.float32], "compiled vs eager on CUDA")
