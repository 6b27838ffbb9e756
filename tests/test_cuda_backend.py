"""Backend ``cuda`` (the C++ extension ``sobolev_kernels._C``) against ``reference``: its CPU op.

On CPU this tests the fused C++ kernel, at order 1 and order 2 (Taylor mode, docs/math.md).
The CUDA kernels are tested in test_cuda_compile_and_emulation.py (nvcc, host emulation,
ThreadSanitizer; no GPU and no built extension needed) and test_cuda_gpu.py (on a GPU).
"""

import itertools

import pytest
import torch
from conftest import (
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    order2_inputs,
    sample_inputs,
    upcast_model,
)
from cuda_op_args import (
    DIRECTIONS,
    OPS,
    ORDER2,
    TARGETS,
    TARGETS2,
    backward_args,
    forward_op,
    op_inputs,
    order2_case,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends import cuda as cuda_backend
from sobolev_kernels.problem import SobolevProblem

if cuda_backend.BACKEND.unavailable_reason() is not None:
    pytest.skip(cuda_backend.BACKEND.unavailable_reason(), allow_module_level=True)

F64 = TOLERANCES[torch.float64]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("directions", DIRECTIONS)
def test_every_activation_target_and_direction_form(activation, target, directions):
    model, x, y, kw = sample_inputs(activation=activation, target=target, directions=directions)
    assert_backends_agree(model, x, y, kw, "cuda", F64, alpha=0.6, beta=1.7)


# every activation with every second-order target form; the direction form rotates, so each
# target meets each direction form at least twice
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", TARGETS2)
def test_order2_every_activation_target_and_direction_form(activation, target):
    index = sorted(ACTIVATIONS).index(activation) + TARGETS2.index(target)
    model, x, y, kw = order2_case(target, DIRECTIONS[index % len(DIRECTIONS)],
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


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu", "sin"])
def test_gradcheck(order, shared, bias, activation):
    """The op's analytic backward against finite differences, for every differentiable output
    (loss, f, u and, order 2, w)."""
    x, dirs, targets, weights, biases = op_inputs(shared, bias, order)
    act = ACTIVATIONS[activation].kernel_id

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        out = forward_op(x, dirs, w, b, activation=act, order=order, **targets)
        return out[: 2 + order]

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


def test_order2_gradcheck_projected_targets_and_upstream_gradients():
    """hvp2/jvp targets, no y, and a function of w alone: every seed of the second stream."""
    x, dirs, targets, weights, biases = op_inputs(False, True, 2, seed=1)
    gen = torch.Generator().manual_seed(2)
    jvp, hvp2 = (torch.randn(5, 2, 2, generator=gen, dtype=torch.float64) for _ in range(2))

    def fn(x, *params):
        w, b = list(params[:3]), list(params[3:])
        loss, f, u, w2, _ = forward_op(x, dirs, w, b, target_jvp=jvp, target_hvp2=hvp2,
                                        activation=5, order=2)  # fmt: skip
        return loss, w2.sin()

    assert torch.autograd.gradcheck(fn, (x, *weights, *biases))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_opcheck(order, shared):
    x, dirs, targets, weights, biases = op_inputs(shared, True, order)
    kw = dict(activation=3, order=order, **targets)
    hess = targets.get("target_hess")
    args = (x, dirs, targets["y"], None, targets["target_grad"], None, hess, weights, biases,
            3, 0.0, 0.6, 1.7, 0.8, order, False, True)  # fmt: skip
    torch.library.opcheck(OPS.sobolev_forward, args)
    detached = [t.detach() for t in (x, *weights, *biases)]
    x0, w0, b0 = detached[0], detached[1:4], detached[4:]
    outputs = forward_op(x0, dirs, w0, b0, **kw)
    grad_w = torch.randn_like(outputs[3]) if order == 2 else None
    grads = (torch.tensor(1.3, dtype=torch.float64), torch.randn_like(outputs[1]), None, grad_w)
    torch.library.opcheck(OPS.sobolev_backward,
                          backward_args(grads, x0, dirs, w0, b0, outputs, **kw))  # fmt: skip
    torch.library.opcheck(OPS.activation_series, (torch.randn(4, 5), 5, 0.0))


def _fp32_loss_and_grads(order, batch=1000, width=64, directions="per_row"):
    kw = dict(batch=batch, width=width, k=3, directions=directions, dtype=torch.float32, seed=3)
    model, x, y, kw = sample_inputs(**kw) if order == 1 else order2_inputs(**kw)
    loss = sk.sobolev_loss(model, x, y, backend="cuda", order=order, **kw)
    return [loss, *torch.autograd.grad(loss, [x, *model.parameters()])]


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("directions", ["shared", "per_row"])
def test_deterministic(order, directions):
    """Bitwise identical across runs and thread counts (fixed blocking and summation order):
    twice on two threads at least (scripts/run_tests.sh runs a test process on one), then on
    one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        first = _fp32_loss_and_grads(order, directions=directions)
        again = _fp32_loss_and_grads(order, directions=directions)
        torch.set_num_threads(1)
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
    x, dirs, targets, weights, biases = op_inputs(shared, True, order)
    x, weights, biases = x.detach(), [w.detach() for w in weights], [b.detach() for b in biases]
    kw = dict(order=order, **targets)
    grads = []
    for save in (True, False):
        outputs = forward_op(x, dirs, weights, biases, save=save, **kw)
        streams = 1 + order * 2  # [z; tz_k (; ttz_k)], K = 2
        assert outputs[4].numel() == (streams * 5 * (6 + 4) if save else 0)
        upstream = (torch.tensor(1.0, dtype=torch.float64), None, None, None)
        grads.append(OPS.sobolev_backward(*backward_args(upstream, x, dirs, weights, biases,
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
    x, dirs, targets, weights, biases = op_inputs(False, True)
    with pytest.raises(RuntimeError, match=r"weights\[1\]: expected shape"):
        forward_op(x, dirs, [weights[0], weights[0]], [], **targets)
    with pytest.raises(RuntimeError, match="target_jvp/target_grad: expected at most one"):
        forward_op(x, dirs, weights, biases, target_jvp=torch.zeros(5, 2, 2, dtype=torch.float64),
                    **targets)  # fmt: skip
    with pytest.raises(RuntimeError, match="order: expected 1 or 2, got 3"):
        forward_op(x, dirs, weights, biases, order=3, **targets)
    hess = torch.zeros(5, 2, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="second-order targets need order 2"):
        forward_op(x, dirs, weights, biases, target_hess=hess, **targets)
    with pytest.raises(RuntimeError, match=r"target_hess: expected shape \[5, 2, 3, 3\]"):
        forward_op(x, dirs, weights, biases, target_hess=hess[..., :2], order=2, **targets)
    with pytest.raises(RuntimeError, match="target_hvp2/target_hess: expected at most one"):
        forward_op(x, dirs, weights, biases, target_hess=hess, order=2, **targets,
                    target_hvp2=torch.zeros(5, 2, 2, dtype=torch.float64))  # fmt: skip
    outputs = forward_op(x.detach(), dirs, weights, biases, order=2, **targets)
    upstream = (None, None, None, outputs[3][:, :1])
    with pytest.raises(RuntimeError, match=r"grad_w: expected shape \[5, 2, 2\]"):
        OPS.sobolev_backward(*backward_args(upstream, x, dirs, weights, biases, outputs,
                                             order=2, **targets))  # fmt: skip


def test_weight_grad_gemm_on_the_cpu_and_its_argument_checks():
    """torch.ops.sobolev_kernels.weight_grad_gemm: adjoints^T inputs (the CPU form: at::mm;
    the GPU's CUTLASS form is test_cuda_gpu.py's), a bad argument named. The extension says
    whether it was built with CUTLASS (never without its CUDA kernels)."""
    op = torch.ops.sobolev_kernels.weight_grad_gemm
    a, s = torch.randn(37, 5, dtype=torch.float64), torch.randn(37, 3, dtype=torch.float64)
    assert torch.equal(op(a, s), a.t() @ s)
    bad_calls = (((a[0], s), "adjoints: expected \\(rows, n_out\\)"),
                 ((a, s[:3]), "inputs: expected 37 rows as adjoints has, got 3"),
                 ((a, s.float()), "inputs: dtype Float, but adjoints is Double"))  # fmt: skip
    for bad, match in bad_calls:
        with pytest.raises(RuntimeError, match=match):
            op(*bad)
    ext = cuda_backend._extension
    assert ext.WITH_CUTLASS in (0, 1) and (ext.WITH_CUDA or not ext.WITH_CUTLASS)
    assert (cuda_backend.weight_grad_gemm_3xtf32() is None) == (not ext.WITH_CUTLASS)
