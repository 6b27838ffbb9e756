"""Backend ``triton`` against ``reference``.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), so
the CPU cases keep shapes small; the ``gpu`` cases take the large shapes and low precision.
"""

import contextlib
import itertools
import os

import pytest
import torch
from conftest import (
    HAS_CUDA,
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    assert_forward_only_agrees,
    count_launches,
    offer_cutlass_gemm,
    order2_inputs,
    record_forward_saves,
    sample_inputs,
    tolerance,
    upcast_model,
)

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    "triton" not in sk.available_backends(), reason="triton backend unavailable"
)

DEVICE = "cuda" if HAS_CUDA else "cpu"
KINKED = ("relu", "leaky_relu")
RTOL_FP32 = tolerance("triton", torch.float32, "cuda" if HAS_CUDA else "cpu")


def _agree(rtol=RTOL_FP32, dtype=torch.float32, **kwargs):
    extra = {k: kwargs.pop(k) for k in ("alpha", "beta", "return_outputs") if k in kwargs}
    if dtype in (torch.bfloat16, torch.float16) and kwargs.get("activation") in KINKED:
        extra["kink_flips"] = 0.02  # see assert_close
    model, x, y, kw = sample_inputs(dtype=dtype, device=DEVICE, **kwargs)
    assert_backends_agree(model, x, y, kw, "triton", rtol,
                          expected_model=upcast_model(model), **extra)  # fmt: skip


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("target", ["grad", "jvp", "teacher"])
@pytest.mark.parametrize("directions", ["sampled", "shared", "per_row", "full"])
def test_every_activation_target_and_direction_form(activation, target, directions):
    _agree(activation=activation, target=target, directions=directions, alpha=0.6, beta=1.7)


# B, d, width, m, K (-1: K = d): odd sizes around the padding boundaries
SHAPES = [
    (1, 1, 5, 1, 1),
    (7, 3, 16, 4, 3),
    (33, 2, 17, 1, -1),
    (100, 13, 48, 4, 3),
    (17, 1, 64, 2, 5),
    (50, 20, 33, 17, 2),
]


@pytest.mark.parametrize("batch, dim, width, out, k", SHAPES)
def test_odd_shapes(batch, dim, width, out, k):
    _agree(batch=batch, dim=dim, width=width, out=out, k=dim if k == -1 else k,
           seed=batch + width)  # fmt: skip


@pytest.mark.parametrize("layers, bias", list(itertools.product([1, 2, 5], [True, False])))
def test_depth_and_bias(layers, bias):
    _agree(layers=layers, bias=bias, k=2, directions="shared")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("activation", ["tanh", "silu", "relu"])
def test_low_precision(dtype, activation):
    _agree(TOLERANCES[dtype], dtype=dtype, activation=activation, batch=40, width=24, k=2)


def test_no_value_term_and_no_input_gradient():
    _agree(x_grad=False, directions="per_row")
    model, x, _, kw = sample_inputs(dtype=torch.float32, device=DEVICE)
    assert_backends_agree(model, x, None, kw, "triton", RTOL_FP32,
                          expected_model=upcast_model(model))  # fmt: skip


def test_return_outputs_adds_the_users_value_loss():
    model, x, y, kw = sample_inputs(out=3, dtype=torch.float32, device=DEVICE)
    grads = {}
    for backend in ("triton", "reference"):
        loss, f = sk.sobolev_loss(model, x, None, backend=backend, return_outputs=True, **kw)
        user = torch.nn.functional.kl_div(f.log_softmax(-1), y.softmax(-1), reduction="batchmean")
        grads[backend] = torch.autograd.grad(loss + user, [x, *model.parameters()])
    for a, b in zip(grads["triton"], grads["reference"]):
        assert_close(a, b, RTOL_FP32, "grad with user loss on f")


def test_mlp_jvp_and_its_gradient():
    model, x, _, kw = sample_inputs(out=3, k=3, directions="per_row", dtype=torch.float32,
                                    device=DEVICE)  # fmt: skip
    results = {}
    for backend in ("triton", "reference"):
        f, u = sk.mlp_jvp(model, x, kw["directions"], backend=backend)
        weight = torch.arange(u.numel(), device=DEVICE).reshape(u.shape).float().cos()
        grads = torch.autograd.grad((u * weight).sum() + f.square().sum(),
                                    [x, *model.parameters()])  # fmt: skip
        results[backend] = (f, u, *grads)
    for a, b in zip(results["triton"], results["reference"]):
        assert_close(a, b, RTOL_FP32, "mlp_jvp")


def _unequal_widths_agree(order, k, target2="target_hvp2", forward_only=True):
    torch.manual_seed(order + k)
    seq = torch.nn.Sequential(
        torch.nn.Linear(3, 40), torch.nn.Tanh(), torch.nn.Linear(40, 20), torch.nn.Tanh(),
        torch.nn.Linear(20, 70), torch.nn.Tanh(), torch.nn.Linear(70, 2),
    ).to(DEVICE)  # fmt: skip
    model = sk.SobolevMLP.from_sequential(seq)
    x = torch.randn(37, 3, device=DEVICE, requires_grad=True)
    y = torch.randn(37, 2, device=DEVICE)
    kw = dict(target_grad=torch.randn(37, 2, 3, device=DEVICE),
              directions=torch.randn(37, k, 3, device=DEVICE), order=order)  # fmt: skip
    if order == 2:
        shape = (37, k, 2) if target2 == "target_hvp2" else (37, 2, 3, 3)
        kw[target2] = torch.randn(*shape, device=DEVICE)
    assert_backends_agree(model, x, y, kw, "triton", RTOL_FP32, expected_model=upcast_model(model))
    if forward_only:
        assert_forward_only_agrees(model, x, y, kw, "triton", RTOL_FP32, upcast_model(model))


@pytest.mark.parametrize("order", [1, 2])
def test_unequal_hidden_widths_with_and_without_a_backward(order):
    """Hidden layers of different widths, some over one K chunk: the forward keeps each
    layer's [z; tz; ttz] in the saved stacks when a backward follows, and in two scratch
    regions of the widest layer, taken in turn, when none does (no_grad)."""
    _unequal_widths_agree(order, k=2)


@pytest.mark.parametrize("order, target2", [(1, None), (2, "target_hvp2"), (2, "target_hess")])
@pytest.mark.parametrize("group", [1, 2])
def test_directions_in_groups(monkeypatch, order, target2, group):
    """Many directions run a few per pass (Layout.group): forced here to 1 or 2 of K = 5
    (the last group padded), with the per-group residuals and target contractions, and the
    scratch regions of a no_grad forward reused across the passes of three hidden layers."""
    from sobolev_kernels.triton.layout import Layout

    monkeypatch.setattr(Layout, "group", lambda self, rows, warps: min(group, self.kp))
    _unequal_widths_agree(order, k=5, target2=target2)


# SOBOLEV_TRITON_WEIGHT_GRAD: dW and db by one GEMM per layer, or by the split-K kernel over
# every layer's tiles (several split row ranges here, the last one ragged) and one reduction,
# reading the inputs stacks the backward stored (splitk) or forming them from the saved
# pre-activations, x and the directions as it reads them (recompute: the backward stores
# none). (gemm is the default every other test runs)
@pytest.mark.parametrize("method", ["splitk", "recompute"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width, bias", [(17, True), (80, True), (24, False)])
def test_weight_gradients_by_splitk(monkeypatch, method, dtype, width, bias):
    """Width 80 takes two 64-wide tiles each way (the bias from the first column tile only);
    a bias sums the value rows of A_l, not its tangent rows."""
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    rtol = RTOL_FP32 if dtype == torch.float32 else TOLERANCES[dtype]
    _agree(rtol, dtype=dtype, batch=37, dim=3, width=width, out=2, k=3, bias=bias, seed=width)


@pytest.mark.parametrize("method", ["splitk_wide", "recompute_wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width, bias", [(17, True), (160, True), (130, False)])
def test_weight_gradients_by_wide_splitk_tiles(monkeypatch, method, dtype, width, bias):
    """splitk_wide and recompute_wide: output tiles of up to 128 on 8 warps. Width 160 takes
    two tiles each way (the second ragged; the bias from the first column tile only), width
    130 two of mostly padding; their own splits of the rows (half the programs: two 8-warp
    ones per SM). Width 17: splitk's tiles, which a narrow model's wide ones would be."""
    from sobolev_kernels.triton import plans

    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    plans.clear_plans()
    rtol = RTOL_FP32 if dtype == torch.float32 else TOLERANCES[dtype]
    _agree(rtol, dtype=dtype, batch=37, dim=3, width=width, out=2, k=3, bias=bias, seed=width)
    # (at width 64 and less, splitk's 64 x 64 tiles on 4 warps: 8 would split their rows)
    tiles = (128, 8) if width > 64 else (max(16, 1 << (width - 1).bit_length()), 4)
    launched = [(plan[0].constexprs["BM"], plan[0].constexprs["num_warps"])
                for key, plan in plans._plans.items() if key[0] == "weight_grad"]  # fmt: skip
    assert launched == [tiles]


@pytest.mark.parametrize("method", ["splitk", "recompute", "splitk_wide", "recompute_wide"])
@pytest.mark.parametrize("order", [1, 2])
def test_weight_gradients_by_splitk_with_unequal_widths(monkeypatch, method, order):
    """Layer 1's inputs have no second-order rows: the split-K kernel stops at (1 + K) B.
    Three hidden layers of different widths: recompute finds each one's pre-activations."""
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    _unequal_widths_agree(order, k=3, forward_only=False)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "leaky_relu"])
def test_recomputed_inputs_per_activation_and_shared_directions(monkeypatch, order, activation):
    """recompute forms S = [s(z); s'(z) tz; s'(z) ttz + s''(z) tz^2] in the weight-gradient
    kernel: every activation's series, one set of directions for all samples, and a batch
    whose stacked row blocks straddle the kernel's row steps (B = 37)."""
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "recompute")
    shape = dict(batch=37, dim=3, width=24, out=2, k=2, layers=3, activation=activation,
                 directions="shared", dtype=torch.float32, device=DEVICE)  # fmt: skip
    model, x, y, kw = sample_inputs(**shape) if order == 1 else order2_inputs(**shape)
    assert_backends_agree(model, x, y, kw, "triton", RTOL_FP32, order=order)


@pytest.mark.parametrize("method", ["splitk", "recompute"])
def test_weight_gradients_by_gemm_where_the_split_k_offsets_would_overflow(monkeypatch, method):
    """The split-K kernel's offsets within a layer's stack are 32-bit: where the stacked rows
    times a width would pass 2^31 (here a limit made small), the GEMMs form the weight
    gradients whatever was asked, and the backward stores the inputs they read."""
    from sobolev_kernels.triton import choices, launch, parameter_grads

    layout = launch.Layout.of((3, 24, 24, 2), 3, 1)
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    assert parameter_grads._weight_grad_method(layout, torch.zeros(37, 3), True, False) == method
    monkeypatch.setattr(choices, "_INT32_LIMIT", 4 * 37 * 24 - 1)
    assert parameter_grads._weight_grad_method(layout, torch.zeros(37, 3), True, False) == "gemm"
    _agree(RTOL_FP32, dtype=torch.float32, batch=37, dim=3, width=24, out=2, k=3, layers=3)


@pytest.mark.parametrize("order", [1, 2])
def test_weight_gradients_by_the_extensions_gemm(monkeypatch, order):
    """cutlass: the gemm method with each layer's dW by the extension's weight_grad_gemm (on
    a GPU CUTLASS's 3xTF32 GEMM; here its CPU form), called once per layer on the stacks
    gemm reads."""
    from sobolev_kernels.triton import parameter_grads

    if not offer_cutlass_gemm(monkeypatch):
        pytest.skip("the C++ extension is not built")
    real, calls = parameter_grads._cutlass_gemm(), []

    def counting(adjoints, inputs):
        calls.append((tuple(adjoints.shape), tuple(inputs.shape)))
        return real(adjoints, inputs)

    monkeypatch.setattr(parameter_grads, "_cutlass_gemm", lambda: counting)
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "cutlass")
    _unequal_widths_agree(order, k=3, forward_only=False)
    # widths (3, 40, 20, 70, 2): (rows, n_out) and (rows, n_in) of each layer
    assert [(a[1], s[1]) for a, s in calls] == [(40, 3), (20, 40), (70, 20), (2, 70)]
    assert all(a[0] == s[0] for a, s in calls)


def test_the_extensions_gemm_is_offered_only_where_it_differs(monkeypatch):
    """cutlass is a candidate in fp32 without TF32, over row-major inputs stacks, where the
    extension has its GEMM; elsewhere it is gemm, and asking for it runs gemm."""
    from sobolev_kernels.triton import parameter_grads
    from sobolev_kernels.triton.layout import Layout

    layout, x = Layout.of((3, 80, 2), 2, 1), torch.zeros(37, 3)
    offered = []
    monkeypatch.setattr(parameter_grads.tuning, "can_measure", lambda device: True)

    def fastest(key, methods, run, skip):
        offered.append(methods)
        return methods[0]

    monkeypatch.setattr(parameter_grads.tuning, "fastest", fastest)
    monkeypatch.setattr(parameter_grads, "_cutlass_gemm", lambda: None)
    parameter_grads._weight_grad_method(layout, x, True, False, lambda m: None)
    monkeypatch.setattr(parameter_grads, "_cutlass_gemm", lambda: torch.mm)
    cases = ((x, False, "rows"), (x, True, "rows"), (x.bfloat16(), False, "rows"),
             (x, False, "kmajor"))  # fmt: skip
    for x_, allow_tf32, inputs in cases:
        monkeypatch.setenv("SOBOLEV_TRITON_INPUTS_LAYOUT", inputs)
        parameter_grads._weight_grad_method(layout, x_, True, allow_tf32, lambda m: None)
    assert ["cutlass" in methods for methods in offered] == [False, True, False, False, False]
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "cutlass")
    assert parameter_grads._weight_grad_method(layout, x, True, True) == "gemm"
    monkeypatch.setenv("SOBOLEV_TRITON_INPUTS_LAYOUT", "rows")
    assert parameter_grads._weight_grad_method(layout, x, True, False) == "cutlass"


def test_16_bit_weight_gradient_gemms_add_their_partials_in_fp32():
    """parameter_grads._full_precision_reductions: around the dW GEMMs of a 16-bit step on a GPU,
    torch's allow_*_reduced_precision_reduction is off (cuBLAS may otherwise add split-K
    partials in 16 bits), and afterwards as it was, after an error too; fp32 and CPU
    operands leave it alone."""
    from types import SimpleNamespace

    from sobolev_kernels.triton import parameter_grads

    flags = torch.backends.cuda.matmul
    for dtype, name in ((torch.bfloat16, "allow_bf16_reduced_precision_reduction"),
                        (torch.float16, "allow_fp16_reduced_precision_reduction")):  # fmt: skip
        before = getattr(flags, name)
        with parameter_grads._full_precision_reductions(SimpleNamespace(is_cuda=True, dtype=dtype)):
            assert getattr(flags, name) is False
        assert getattr(flags, name) == before
        with pytest.raises(RuntimeError, match="inside"):
            with parameter_grads._full_precision_reductions(
                SimpleNamespace(is_cuda=True, dtype=dtype)
            ):
                raise RuntimeError("inside")
        assert getattr(flags, name) == before
        for operand in (SimpleNamespace(is_cuda=False, dtype=dtype),
                        SimpleNamespace(is_cuda=True, dtype=torch.float32)):  # fmt: skip
            with parameter_grads._full_precision_reductions(operand):
                assert getattr(flags, name) == before


def test_recompute_stores_no_inputs_stacks(monkeypatch):
    """The lean method's backward allocates no inputs stacks (its memory saving) and still
    gives the gradients."""
    model, x, y, kw = sample_inputs(batch=19, dim=3, width=80, out=2, k=2, layers=3,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    inputs_elements = 3 * 19 * (3 + 80 + 80)  # (1 + K) B rows times the layers' inputs
    for method, stored in (("splitk", True), ("recompute", False), ("splitk_wide", True),
                           ("recompute_wide", False)):  # fmt: skip
        monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
        loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        with _allocations(monkeypatch) as sizes:
            grads = torch.autograd.grad(loss, list(model.parameters()))
        assert (inputs_elements in sizes) == stored, (method, sizes)
        assert all(torch.isfinite(g).all() for g in grads)


@contextlib.contextmanager
def _allocations(monkeypatch):
    """Yields the element counts of the buffers the Triton launchers allocate meanwhile."""
    from sobolev_kernels.triton import launch

    sizes = []
    empty = torch.empty

    def recording_empty(*shape, **kwargs):
        out = empty(*shape, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(launch.torch, "empty", recording_empty)
    yield sizes
    monkeypatch.setattr(launch.torch, "empty", empty)


# SOBOLEV_SAVE_ACTIVATIONS=0: the forward keeps no pre-activations and the backward recomputes
# them a chunk of SOBOLEV_TRITON_RECOMPUTE_ROWS samples at a time (8 here: B = 37 is five
# chunks, the last ragged), the weight gradients added over the chunks in one fp32 row.
@pytest.mark.parametrize(
    "order, directions, bias",
    [(1, "per_row", True), (2, "shared", False), (2, "per_row", True)],
)  # fmt: skip
def test_backward_recomputes_in_row_chunks(monkeypatch, order, directions, bias):
    shape = dict(batch=37, dim=3, width=24, out=2, k=3, layers=4, directions=directions,
                 bias=bias, dtype=torch.float32, device=DEVICE)  # fmt: skip
    model, x, y, kw = sample_inputs(**shape) if order == 1 else order2_inputs(**shape)
    with _chunk_forwards(monkeypatch) as saves:
        assert_backends_agree(model, x, y, kw, "triton", RTOL_FP32, order=order)
    # the backward ran the forward again per chunk, keeping each chunk's pre-activations
    assert saves == [True] * 5


@pytest.mark.parametrize("method", ["chunks", "persistent"])
def test_recomputing_backward_of_dx_alone(monkeypatch, method):
    """Frozen parameters: dL/dx alone, no weight gradients to add up (five chunk forwards,
    or one persistent launch and no forward)."""
    model, x, y, kw = sample_inputs(batch=37, dim=3, width=24, out=2, k=3, layers=4,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    model.requires_grad_(False)
    expected = torch.autograd.grad(sk.sobolev_loss(model, x, y, backend="reference", **kw), x)
    spy = _chunk_forwards if method == "chunks" else _persistent_backward
    with spy(monkeypatch) as seen:
        got = torch.autograd.grad(sk.sobolev_loss(model, x, y, backend="triton", **kw), x)
    assert seen == ([True] * 5 if method == "chunks" else [(0, 1)])
    assert_close(got[0], expected[0], RTOL_FP32, "d loss / d x")


@contextlib.contextmanager
def _chunk_forwards(monkeypatch):
    """SOBOLEV_SAVE_ACTIVATIONS=0, chunks of 8 samples; yields the save flags of the
    forwards the backward runs."""
    from sobolev_kernels.triton import launch, ops  # noqa: F401  (the ops first: they bind
    # the launchers at import)

    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_RECOMPUTE_ROWS", "8")
    real = launch.sobolev_forward
    yield record_forward_saves(monkeypatch, launch)
    monkeypatch.setattr(launch, "sobolev_forward", real)


def test_recomputing_backward_holds_one_chunk_of_stacks(monkeypatch):
    """The backward's largest buffer is a chunk's stack, not the batch's."""
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_RECOMPUTE_ROWS", "16")
    model, x, y, kw = sample_inputs(batch=64, dim=3, width=16, out=2, k=2, layers=3,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
    with _allocations(monkeypatch) as sizes:
        loss.backward()
    chunk_adjoints = 3 * 16 * (16 + 16 + 2)  # (1 + K) rows per sample times sum(widths[1:])
    assert max(sizes) == chunk_adjoints, sizes


# SOBOLEV_TRITON_BACKWARD=persistent: the whole backward in one launch, each program taking
# row tiles in turn (16 samples here: B = 37 is three tiles, the last ragged, on the
# interpreter's two programs, so program 0 adds its second tile to its partial row), the
# tiles' hidden layers run again (the forward kept nothing) or copied from the saved ones.
@pytest.mark.parametrize(
    "order, directions, bias, activation, dtype, save",
    [(1, "per_row", True, "tanh", torch.float32, False),
     (2, "shared", False, "tanh", torch.float32, False),
     (2, "per_row", True, "softplus", torch.float32, False),
     (1, "shared", True, "leaky_relu", torch.float32, False),
     (2, "per_row", True, "tanh", torch.bfloat16, False),
     (1, "per_row", True, "tanh", torch.float32, True),
     (2, "shared", False, "silu", torch.float32, True),
     (2, "per_row", True, "tanh", torch.bfloat16, True)],
)  # fmt: skip
def test_persistent_backward_per_row_tile(monkeypatch, order, directions, bias, activation,
                                          dtype, save):  # fmt: skip
    shape = dict(batch=37, dim=3, width=24, out=2, k=3, layers=4, directions=directions,
                 bias=bias, activation=activation, dtype=dtype, device=DEVICE)  # fmt: skip
    model, x, y, kw = sample_inputs(**shape) if order == 1 else order2_inputs(**shape)
    extra = {"kink_flips": 0.02} if dtype != torch.float32 and activation in KINKED else {}
    rtol = tolerance("triton", dtype, "cuda" if HAS_CUDA else "cpu")
    with _persistent_backward(monkeypatch, save) as runs:
        assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model),
                              order=order, **extra)  # fmt: skip
    assert runs and all(r == (0, 1) for r in runs), runs  # no forward again, one launch


@pytest.mark.parametrize("order", [1, 2])
def test_persistent_step_with_one_hidden_layer_and_directional_targets(monkeypatch, order):
    """One hidden layer (one scratch region in the persistent forward) and targets along the
    directions (target_jvp, target_hvp2: (B, K, m) rows per tile)."""
    shape = dict(batch=37, dim=3, width=24, out=2, k=3, layers=2, dtype=torch.float32,
                 device=DEVICE)  # fmt: skip
    if order == 1:
        model, x, y, kw = sample_inputs(target="jvp", **shape)
    else:
        model, x, y, kw = order2_inputs(target="hvp2", first="jvp", **shape)
    with _persistent_backward(monkeypatch) as runs:
        assert_backends_agree(model, x, y, kw, "triton", RTOL_FP32, order=order)
    assert runs and all(r == (0, 1) for r in runs), runs


# Spans of several row tiles a weight-gradient step (LaunchConfig.dw_tiles, a twin the GPU's
# tuner offers): the static launch's 16-sample tiles in spans of 2 on the interpreter's two
# programs. B = 37 is two spans, the second one ragged (5 samples: its second tile empty);
# B = 80 three, so that program 0 adds its second span to its partial row. And the 64-row
# column-block launch in 3xTF32 (a tensor-core candidate) at B = 300: three spans of 128.
@pytest.mark.parametrize(
    "order, directions, bias, dtype, save, batch, launch",
    [(1, "per_row", True, torch.float32, False, 37, "static"),
     (1, "shared", True, torch.float32, True, 80, "static"),
     (2, "per_row", False, torch.float32, False, 80, "static"),
     (2, "shared", True, torch.float32, True, 37, "static"),
     (1, "per_row", True, torch.bfloat16, True, 80, "static"),
     (1, "per_row", True, torch.float32, False, 300, "tensor_core")],
)  # fmt: skip
def test_persistent_backward_in_spans_of_tiles(monkeypatch, order, directions, bias, dtype,
                                               save, batch, launch):  # fmt: skip
    spans = _in_spans(monkeypatch, 2, tensor_core=launch == "tensor_core")
    shape = dict(batch=batch, dim=3, width=24, out=2, k=3, layers=4, directions=directions,
                 bias=bias, activation="tanh", dtype=dtype, device=DEVICE)  # fmt: skip
    model, x, y, kw = sample_inputs(**shape) if order == 1 else order2_inputs(**shape)
    rtol = tolerance("triton", dtype, "cuda" if HAS_CUDA else "cpu")
    with _persistent_backward(monkeypatch, save) as runs:
        assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model),
                              order=order)  # fmt: skip
    assert runs and all(r == (0, 1) for r in runs), runs
    assert spans and all(2 * c.rows < batch for c in spans), spans  # more than one span


def _in_spans(monkeypatch, tiles: int | None = None, tensor_core: bool = False,
              precision: str | None = None) -> list:  # fmt: skip
    """The persistent backward's launch config (the tuner's choice, or the static one, its
    dots in ``precision`` where given; or ``tensor_core``, the 64-row column-block one in
    3xTF32) run on spans of ``tiles`` row tiles (None: as its tuner twin has them); returns
    the configs run."""
    from sobolev_kernels.triton import choices, launch

    real, spans = launch._launch_config, []

    def in_spans(kernel, layout, *args, **kwargs):
        config = real(kernel, layout, *args, **kwargs)
        if kernel == "bwd_persistent":
            if tensor_core:
                config = layout.tensor_core_config("tf32x3")
            config = config._replace(precision=precision or config.precision)
            one_tile = config._replace(dw_tiles=1)
            twin = choices._with_dw_tiles(layout, [one_tile], config.precision)[-1]
            config = config._replace(dw_tiles=tiles or max(2, twin.dw_tiles))
            spans.append(config)
        return config

    monkeypatch.setattr(launch, "_launch_config", in_spans)
    return spans


def test_persistent_spans_are_twins_of_the_candidates():
    """Each tensor-core candidate of fewer than DW_SPAN_ROWS stacked rows a tile gets a twin
    on spans of the fewest tiles (a power of two) that reach it; one of enough rows gets
    none, nor does an fp32 FMA one (a bf16 model's are all tensor-core ones). Its tuning
    table row names the form."""
    from bench.tuning_table import _candidate
    from sobolev_kernels.triton import choices
    from sobolev_kernels.triton.layout import LaunchConfig, Layout

    layout = Layout.of((16, 128, 128, 128, 8), 2, 1)  # config M: 3 stacked rows a sample
    small = LaunchConfig(16, 8, 32, 2, "tf32x3")
    fma, tall = small._replace(precision="ieee"), LaunchConfig(128, 8, 32, 1, "tf32x3")
    out = choices._with_dw_tiles(layout, [fma, small, tall], "tf32x3")
    assert out == [fma, small, tall, small._replace(dw_tiles=8)]  # 48 x 8 = 384 >= 256 > 192
    assert choices._with_dw_tiles(layout, [fma], "ieee") == [fma, fma._replace(dw_tiles=8)]
    s_layout = Layout.of((2, 64, 64, 64, 1), 1, 1)  # config S: 2 stacked rows a sample
    assert choices._with_dw_tiles(s_layout, [small], "tf32x3")[1].dw_tiles == 8
    assert _candidate(out[3]).startswith("spans of 8 tiles: rows 16, warps 8")
    assert _candidate(fma) == "rows 16, warps 8, chunk 32, group 2, precision ieee, cols 0"


@contextlib.contextmanager
def _persistent_backward(monkeypatch, save=False):
    """The persistent backward (after a forward that keeps nothing unless ``save``); yields,
    per backward, (the forwards it ran, the persistent kernel's launches)."""
    from sobolev_kernels.triton import launch, ops  # noqa: F401  (the ops bind the launchers)

    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "1" if save else "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    runs, counts = [], {"forward": 0, "kernel": 0}
    real_forward, real_backward = launch.sobolev_forward, launch._backward_persistent
    real_kernel = launch._sobolev_bwd_persistent_kernel

    class CountedKernel:
        def __getitem__(self, grid):
            counts["kernel"] += 1
            return real_kernel[grid]

    def forward(*args):
        counts["forward"] += 1
        return real_forward(*args)

    def backward(*args):
        counts.update(forward=0, kernel=0)
        out = real_backward(*args)
        runs.append((counts["forward"], counts["kernel"]))
        return out

    monkeypatch.setattr(launch, "sobolev_forward", forward)
    monkeypatch.setattr(launch, "_backward_persistent", backward)
    monkeypatch.setattr(launch, "_sobolev_bwd_persistent_kernel", CountedKernel())
    yield runs
    monkeypatch.setattr(launch, "sobolev_forward", real_forward)
    monkeypatch.setattr(launch, "_backward_persistent", real_backward)
    monkeypatch.setattr(launch, "_sobolev_bwd_persistent_kernel", real_kernel)


def test_persistent_step_buffers_do_not_grow_with_the_batch(monkeypatch):
    """The persistent forward and backward allocate the same buffers at B = 150 and B = 300,
    but for the outputs f and u: their programs' scratch, tile stacks and partial rows (two
    programs here), never a stack of the batch."""
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    forward, backward = [], []
    for batch in (150, 300):
        model, x, y, kw = sample_inputs(batch=batch, dim=3, width=16, out=2, k=2, layers=3,
                                        dtype=torch.float32, device=DEVICE, seed=0)  # fmt: skip
        with _allocations(monkeypatch) as sizes:
            loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        outputs = (batch * 2, batch * 2 * 2, 0)  # f (B, m), u (B, K, m), order 1's empty w
        forward.append([n for n in sizes if n not in outputs])
        with _allocations(monkeypatch) as sizes:
            loss.backward()
        backward.append(sizes)
    assert forward[0] == forward[1] and backward[0] == backward[1], (forward, backward)
    rows = 64  # the static launch's rows at this shape
    assert max(forward[0]) == 2 * 3 * rows * 16 * 2, forward  # two regions of (1 + K) rows
    tile_adjoints = 2 * 3 * rows * (16 + 16 + 2)  # two programs' (1 + K) rows x sum(widths[1:])
    assert max(backward[0]) == tile_adjoints, backward[0]


def test_persistent_backward_after_a_saving_forward_stores_no_stack(monkeypatch):
    """With the forward's pre-activations saved, the persistent backward allocates the same
    buffers at B = 150 and B = 300 (its programs' tile stacks and partial rows): no adjoints
    or inputs stacks of the batch."""
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    backward = []
    for batch in (150, 300):
        model, x, y, kw = sample_inputs(batch=batch, dim=3, width=16, out=2, k=2, layers=3,
                                        dtype=torch.float32, device=DEVICE, seed=0)  # fmt: skip
        loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        with _allocations(monkeypatch) as sizes:
            loss.backward()
        backward.append(sizes)
    assert backward[0] == backward[1], backward


def test_backward_method_choice(monkeypatch):
    """Forced by SOBOLEV_TRITON_BACKWARD, else separate off a GPU; on one, the faster of the
    two whole backwards per shape and per whether the forward kept its pre-activations, a
    tie keeping separate."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import choices
    from sobolev_kernels.triton.layout import Layout

    layout, x = Layout.of((3, 8, 8, 2), 2, 1), torch.zeros(4, 3)
    never = lambda method: pytest.fail("nothing is measured off a GPU")  # noqa: E731
    assert choices._backward_method(layout, x, False, True, never) == "separate"
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    assert choices._backward_method(layout, x, False, True, never) == "persistent"
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "fused")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_BACKWARD: expected auto, separate"):
        choices._backward_method(layout, x, False, True, never)
    monkeypatch.delenv("SOBOLEV_TRITON_BACKWARD")
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    tuning.clear()
    try:
        for times, expected, kept in (([2.0, 1.0], "persistent", True),
                                      ([1.0, 1.0], "separate", False)):  # fmt: skip
            timings = iter(times)
            monkeypatch.setattr(tuning, "time_ms", lambda fn, t=timings: next(t))
            ran = []
            assert choices._backward_method(layout, x, False, kept, ran.append) == expected
            assert ran == []  # (time_ms is mocked: nothing runs)
        # measured once per shape and kept-or-not: the first choice stands
        assert choices._backward_method(layout, x, False, True, never) == "persistent"
    finally:
        tuning.clear()


def test_persistent_backward_tunes_fewer_launch_configs(monkeypatch):
    """The persistent kernel's tuner candidates: the static launch and the tensor-core ones
    only (fp32: the static launch in 3xTF32, and the wide one), each a long compile. The
    wide one (SOBOLEV_TRITON_WIDE_TILES) is offered to fp32 unless it is 0, to bf16 where it
    is 1."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import choices, launch
    from sobolev_kernels.triton.layout import Layout

    layout, x = Layout.of((16, 128, 128, 8), 2, 1), torch.zeros(64, 16)
    offered = {}
    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setattr(tuning, "fastest", lambda key, configs, run, skip: offered.setdefault(
        key[1], configs)[0])  # fmt: skip
    monkeypatch.setenv("SOBOLEV_TRITON_WIDE_TILES", "0")
    for kernel, only in (("bwd", False), ("bwd_persistent", True)):
        launch._launch_config(kernel, layout, x, {}, False, lambda c: None, only)
    assert offered["bwd"] == layout.launch_configs(4, None, "ieee", "tf32x3")
    persistent = offered["bwd_persistent"]
    assert [(c.precision, c.cols, c.dw_tiles > 1) for c in persistent] == [
        ("ieee", 0, False),
        ("tf32x3", 0, False),
        ("tf32x3", 0, True),  # its twin on spans of tiles (unmeasured on a GPU)
    ]
    assert persistent[2] == persistent[1]._replace(dw_tiles=persistent[2].dw_tiles)
    monkeypatch.setenv("SOBOLEV_TRITON_UNMEASURED", "0")
    offered.clear()
    launch._launch_config("bwd_persistent", layout, x, {}, False, lambda c: None, True)
    assert offered["bwd_persistent"] == persistent[:2]
    monkeypatch.delenv("SOBOLEV_TRITON_UNMEASURED")

    # with the 64-row one, under a key of its own: fp32's default, and bf16's where it is 1
    def offered_to(x):
        offered.clear()
        launch._launch_config("bwd", layout, x, {}, False, lambda c: None)
        return offered["bwd"]

    x16 = x.to(torch.bfloat16)
    bf16 = choices._precisions(torch.bfloat16, False)
    monkeypatch.delenv("SOBOLEV_TRITON_WIDE_TILES")
    assert offered_to(x) == layout.launch_configs(4, None, "ieee", "tf32x3", wide=True)
    assert offered_to(x16) == layout.launch_configs(2, None, *bf16)
    monkeypatch.setenv("SOBOLEV_TRITON_WIDE_TILES", "1")
    assert offered_to(x16) == layout.launch_configs(2, None, *bf16, wide=True)
    assert offered_to(x16) != layout.launch_configs(2, None, *bf16)  # (it adds one)
    offered.clear()
    for kernel, only in (("bwd", False), ("bwd_persistent", True)):
        launch._launch_config(kernel, layout, x, {}, False, lambda c: None, only)
    assert offered["bwd"] == layout.launch_configs(4, None, "ieee", "tf32x3", wide=True)
    assert [(c.precision, c.cols) for c in offered["bwd_persistent"] if c.dw_tiles == 1] == [
        ("ieee", 0),
        ("tf32x3", 0),
        ("tf32x3", layout.tensor_core_config("tf32x3").cols),
    ]
    monkeypatch.setenv("SOBOLEV_TRITON_WIDE_TILES", "yes")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_WIDE_TILES: expected 0 or 1"):
        launch._launch_config("bwd", layout, x, {}, False, lambda c: None)


def test_save_activations_and_recompute_rows_are_checked(monkeypatch):
    model, x, y, kw = sample_inputs(dtype=torch.float32, device=DEVICE)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "no")
    with pytest.raises(ValueError, match="SOBOLEV_SAVE_ACTIVATIONS: expected 0 or 1"):
        sk.sobolev_loss(model, x, y, backend="triton", **kw)
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    for bad in ("0", "1e3"):
        monkeypatch.setenv("SOBOLEV_TRITON_RECOMPUTE_ROWS", bad)
        loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        with pytest.raises(ValueError, match=f"RECOMPUTE_ROWS: expected a positive .*'{bad}'"):
            loss.backward()


def test_weight_gradient_method_choice(monkeypatch):
    from sobolev_kernels.triton import parameter_grads
    from sobolev_kernels.triton.layout import Layout

    layout, x = Layout.of((3, 8, 2), 2, 1), torch.zeros(4, 3)
    never = lambda method: pytest.fail("nothing is measured off a GPU")  # noqa: E731
    assert parameter_grads._weight_grad_method(layout, x, True, False, never) == "gemm"
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "splitk")
    assert parameter_grads._weight_grad_method(layout, x, True, False, never) == "splitk"
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "cublas")
    with pytest.raises(ValueError, match="SOBOLEV_TRITON_WEIGHT_GRAD: expected auto, gemm"):
        parameter_grads._weight_grad_method(layout, x, True, False, never)


def test_weight_gradient_method_is_measured_on_a_gpu(monkeypatch):
    """Where the tuner can measure, the faster method wins, a tie keeps gemm, and the GPU
    benchmark's table of measurements names the choice."""
    from bench.tuning_table import tuning_markdown
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import choices
    from sobolev_kernels.triton.layout import Layout
    from sobolev_kernels.triton.parameter_grads import _weight_grad_method

    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    layout = Layout.of((3, 80, 2), 2, 1)  # (wider than 64: splitk_wide has tiles of its own)
    tuning.clear()
    try:
        cases = (([2.0, 1.0, 3.0, 4.0, 5.0, 6.0], "splitk", 4),
                 ([3.0, 2.0, 1.0, 4.0, 5.0, 6.0], "recompute", 8),
                 ([2.0, 3.0, 4.0, 1.0, 5.0, 6.0], "splitk_unpipelined", 16),
                 ([2.0, 3.0, 4.0, 5.0, 1.0, 6.0], "splitk_wide", 32),
                 ([2.0, 3.0, 4.0, 5.0, 6.0, 1.0], "recompute_wide", 64),
                 ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], "gemm", 160))  # fmt: skip
        for times, expected, batch in cases:
            timings = iter(times)
            monkeypatch.setattr(tuning, "time_ms", lambda fn, t=timings: next(t))
            x = torch.zeros(batch, 3)
            # before the backward: not measured yet (it stores the inputs every method reads)
            assert _weight_grad_method(layout, x, True, False) is None
            assert _weight_grad_method(layout, x, True, False, lambda m: None) == expected
            assert _weight_grad_method(layout, x, True, False) == expected
        text = tuning_markdown()
        # a measured choice that this batch's offsets would overflow gives way to gemm
        monkeypatch.setattr(choices, "_INT32_LIMIT", 1)
        assert _weight_grad_method(layout, torch.zeros(8, 3), True, False) == "gemm"
    finally:
        tuning.clear()
    assert "triton weight_grad, widths (3, 80, 2), K 2, order 1, float32, B <= 4" in text
    assert "| splitk | 1.0000 | **chosen** |" in text
    assert "| recompute | 1.0000 | **chosen** |" in text
    assert "| splitk_unpipelined | 1.0000 | **chosen** |" in text
    assert "| splitk_wide | 1.0000 | **chosen** |" in text
    assert "| recompute_wide | 1.0000 | **chosen** |" in text
    # at widths of 64 and less its tiles are splitk's: not a candidate of its own
    timed = []
    monkeypatch.setattr(tuning, "time_ms", lambda fn: timed.append(1) or 1.0)
    monkeypatch.setattr(choices, "_INT32_LIMIT", 2**31 - 1)  # (every method fits again)
    narrow = Layout.of((3, 64, 2), 2, 1)
    try:
        assert _weight_grad_method(narrow, torch.zeros(4, 3), True, False, lambda m: None) == "gemm"
    finally:
        tuning.clear()
    assert len(timed) == 4
    for wide, narrow_twin in (("splitk_wide", "splitk"), ("recompute_wide", "recompute")):
        monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", wide)
        assert _weight_grad_method(narrow, torch.zeros(4, 3), True, False) == narrow_twin


@pytest.mark.parametrize("choice", ["recompute", "gemm"])
def test_the_weight_gradient_tuner_times_each_method_with_its_backward(monkeypatch, choice):
    """Where the tuner measures (here every other choice takes its first candidate), each
    weight-gradient method runs after the backward kernel as it needs it: recompute after
    the kernel without the inputs stores (compiled once, at the backward's launch config),
    the others after the storing kernel. Whichever it picks, the gradients are right, on
    the stacks the tuning left (gemm reads the inputs the first launch stored) and on the
    next step (recompute: by the kernel without the stores)."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import direct_launch

    monkeypatch.setattr(tuning, "can_measure", lambda device: True)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setenv("SOBOLEV_TRITON_UNMEASURED", "0")  # (gemm, splitk and recompute)
    ran: list[tuple[str, bool]] = []  # (the method timed, the backward launched before it)
    stores: list[bool] = []  # STORE_INPUTS of each backward launcher built

    def first_or_timed(key, candidates, run, skip=()):
        if "weight_grad" not in key:
            return tuning._chosen.setdefault(key, candidates[0])
        for method in candidates:
            before = len(launched)
            run(method)
            ran.append((method, launched[before:]))
        return tuning._chosen.setdefault(key, choice)

    launched: list[bool] = []
    real_launcher = direct_launch.launcher

    def spying_launcher(kernel, constexprs):
        launcher = real_launcher(kernel, constexprs)
        if "STORE_INPUTS" not in constexprs:
            return launcher
        stores.append(constexprs["STORE_INPUTS"])

        def launch(*args, **kwargs):
            launched.append(constexprs["STORE_INPUTS"])
            return launcher(*args, **kwargs)

        return launch

    monkeypatch.setattr(tuning, "fastest", first_or_timed)
    monkeypatch.setattr(direct_launch, "launcher", spying_launcher)
    tuning.clear()
    try:
        model, x, y, kw = sample_inputs(batch=9, width=16, dtype=torch.float32, device=DEVICE)
        for _ in range(2):
            loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
            got = torch.autograd.grad(loss, [x, *model.parameters()])
            expected = torch.autograd.grad(sk.sobolev_loss(model, x, y, backend="reference", **kw),
                                           [x, *model.parameters()])  # fmt: skip
            for a, b in zip(got, expected):
                assert_close(a, b, RTOL_FP32, "triton gradients")
    finally:
        tuning.clear()
    assert [m for m, _ in ran] == ["gemm", "splitk", "recompute"]
    assert [launches for _, launches in ran] == [[True], [True], [False]]
    # the storing kernel (planned), the one without (tuning), then the next step's
    assert stores == [True, False, choice != "recompute"]
    assert launched[-1] is (choice != "recompute")


def test_deterministic():
    model, x, y, kw = sample_inputs(batch=70, width=32, dtype=torch.float32, device=DEVICE)
    runs = []
    for _ in range(2):
        loss = sk.sobolev_loss(model, x, y, backend="triton", **kw)
        runs.append([loss, *torch.autograd.grad(loss, [x, *model.parameters()])])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_compile_fullgraph_matches_eager():
    model, x, y, kw = sample_inputs(directions="shared", dtype=torch.float32, device=DEVICE)

    def loss_fn(model, x, y, target_grad, directions):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=directions,
                               backend="triton")  # fmt: skip

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    args = (model, x, y, kw["target_grad"], kw["directions"])
    eager = loss_fn(*args)
    got = compiled(*args)
    assert_close(got, eager, 1e-6, "compiled loss")
    ge = torch.autograd.grad(eager, list(model.parameters()))
    gc = torch.autograd.grad(got, list(model.parameters()))
    for a, b in zip(gc, ge):
        assert_close(a, b, 1e-6, "compiled grad")


def test_unsupported_problems_are_refused_or_fall_back():
    model, x, y, kw = sample_inputs(dtype=torch.float64, device=DEVICE)
    with pytest.raises(ValueError, match="backend: 'triton' cannot run this problem: dtype"):
        sk.sobolev_loss(model, x, y, backend="triton", **kw)
    wide = sk.SobolevMLP(2, 512, 1, 2).to(DEVICE)
    with pytest.raises(ValueError, match="width 512"):
        sk.sobolev_loss(wide, torch.randn(3, 2, device=DEVICE), None,
                        target_grad=torch.randn(3, 2, device=DEVICE), backend="triton")  # fmt: skip


# ------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", [64, 128, 256])
def test_large_shapes_on_gpu(dtype, width):
    rtol = tolerance("triton", dtype, "cuda")
    _agree(rtol, dtype=dtype, batch=2**14, dim=16, width=width, out=8, k=4, layers=4)


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_directions_in_groups_on_gpu(dtype, order):
    """K = 16 at width 128 runs a few directions per pass (Layout.group): on a GPU, with every
    thread of a program reloading rows its other threads stored."""
    _agree_on_gpu(dtype, order, k=16, layers=3)


@pytest.mark.gpu
@pytest.mark.parametrize(
    "method",
    ["gemm", "splitk", "recompute"]
    + [pytest.param(m, marks=pytest.mark.unmeasured)
       for m in ("splitk_unpipelined", "splitk_wide", "recompute_wide", "cutlass")],
)  # fmt: skip
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_gradient_methods_on_gpu(monkeypatch, method, order, dtype):
    """The weight gradients by cuBLAS GEMMs (in bf16 at order 2 they were off the reference
    on the H200, 2026-11-27, before their split-K partials were added in fp32), and by the
    split-K kernel on tensor cores, reading the stored inputs or forming them from the saved
    pre-activations, over many split row ranges, its row loop pipelined or not."""
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", method)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")  # (where they are used)
    _agree_on_gpu(dtype, order, k=3, layers=4)


def _agree_on_gpu(dtype, order, **shape):
    """Width 128 at B = 4099 (a ragged last row tile; or ``batch``) against the reference in
    fp64."""
    rtol = tolerance("triton", dtype, "cuda")
    shape = {**dict(batch=4099, dim=16, width=128, out=8, dtype=dtype, device=DEVICE), **shape}
    model, x, y, kw = sample_inputs(**shape) if order == 1 else order2_inputs(**shape)
    assert_backends_agree(model, x, y, kw, "triton", rtol, expected_model=upcast_model(model),
                          order=order)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("save", ["0", "1"])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_persistent_backward_on_gpu(monkeypatch, save, order, dtype):
    """The persistent backward with more row tiles than programs (B = 2^15 + 3: every program
    adds several tiles to its partial row, the last tile ragged), on tensor cores, after a
    forward that kept nothing or saved its pre-activations."""
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    _agree_on_gpu(dtype, order, k=3, layers=4, batch=2**15 + 3)


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("save, order, dtype", [("0", 1, torch.float32), ("1", 2, torch.float32),
                                                ("1", 1, torch.bfloat16)])  # fmt: skip
def test_persistent_backward_in_spans_on_the_gpu(monkeypatch, save, order, dtype):
    """The persistent backward on spans of row tiles (the tuner's twin of the static launch
    on tensor cores: in fp32 its 3xTF32 form), with more spans than programs (every program
    adds several to its partial row, the last one ragged). Untuned: the other candidates'
    compiles are the next tests'."""
    spans = _in_spans(monkeypatch, precision="tf32x3" if dtype == torch.float32 else None)
    monkeypatch.setenv("SOBOLEV_AUTOTUNE", "0")
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    _agree_on_gpu(dtype, order, k=3, layers=4, batch=2**16 + 3)
    assert spans and all(c.dw_tiles > 1 and c.rows == 16 for c in spans), spans


@pytest.mark.gpu
def test_persistent_step_memory_does_not_grow_with_the_batch(monkeypatch):
    """Doubling the batch adds to the persistent step's peak only what is per sample anyway:
    x's gradient and the outputs (under 0.5 KiB per sample here), not the stacks that a step
    without recomputation holds (9.3 KiB per sample) nor the forward's scratch (3 KiB)."""
    monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", "0")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "persistent")
    peaks = []
    for batch in (2**15, 2**16):
        model, x, y, kw = sample_inputs(batch=batch, dim=16, width=128, out=8, k=2, layers=4,
                                        dtype=torch.float32, device="cuda")  # fmt: skip
        for _ in range(2):  # the second step: compiled, nothing cached is new
            model.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            sk.sobolev_loss(model, x, y, backend="triton", **kw).backward()
            torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] - peaks[0] <= 2**15 * 1024, peaks


@pytest.mark.gpu
def test_recompute_and_lean_steps_save_memory():
    """recompute's step peaks lower than splitk's by most of the inputs stacks it does not
    store ((1 + K) B rows times the summed layer inputs), the persistent backward's lower
    still by most of the adjoint stacks, and a step that saves nothing and recomputes 4096
    samples at a time lower than recompute's by most of the batch's stacks (allocations, not
    speed)."""
    model, x, y, kw = sample_inputs(batch=2**15, dim=16, width=128, out=8, k=2, layers=4,
                                    dtype=torch.float32, device="cuda")  # fmt: skip
    settings = {
        "splitk": {"SOBOLEV_TRITON_WEIGHT_GRAD": "splitk", "SOBOLEV_TRITON_BACKWARD": "separate"},
        "recompute": {"SOBOLEV_TRITON_WEIGHT_GRAD": "recompute",
                      "SOBOLEV_TRITON_BACKWARD": "separate"},
        "persistent": {"SOBOLEV_TRITON_BACKWARD": "persistent"},
        "lean": {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_TRITON_BACKWARD": "separate",
                 "SOBOLEV_TRITON_RECOMPUTE_ROWS": "4096"},
    }  # fmt: skip
    peaks = {}
    for name, env in settings.items():
        with pytest.MonkeyPatch.context() as mp:
            for variable, value in env.items():
                mp.setenv(variable, value)
            for _ in range(2):  # the second step: compiled, nothing cached is new
                model.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                sk.sobolev_loss(model, x, y, backend="triton", **kw).backward()
                torch.cuda.synchronize()
                peaks[name] = torch.cuda.max_memory_allocated() - base
    stack_rows = 3 * 2**15
    inputs_bytes = stack_rows * (16 + 3 * 128) * 4
    saved_and_adjoints = stack_rows * (3 * 128 + 3 * 128 + 8) * 4
    assert peaks["splitk"] - peaks["recompute"] >= 0.8 * inputs_bytes, peaks
    assert peaks["recompute"] - peaks["lean"] >= 0.6 * saved_and_adjoints, peaks
    adjoints_bytes = stack_rows * (3 * 128 + 8) * 4
    assert peaks["recompute"] - peaks["persistent"] >= 0.6 * adjoints_bytes, peaks


@pytest.mark.gpu
def test_forward_is_one_kernel_launch():
    from torch.profiler import ProfilerActivity, profile

    model, x, y, kw = sample_inputs(batch=4096, width=64, k=2, dtype=torch.float32,
                                    device="cuda", x_grad=False)  # fmt: skip
    with torch.no_grad():
        sk.sobolev_loss(model, x, y, backend="triton", **kw)  # compile outside the profile
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            sk.sobolev_loss(model, x, y, backend="triton", **kw)
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    fused = [k for k in kernels if "_sobolev_fwd_kernel" in k]
    assert len(fused) == 1, kernels
    # the rest: packing the weights and biases, and the deterministic final reduce
    assert len(kernels) <= 4, kernels


@pytest.mark.gpu
@pytest.mark.parametrize(
    "env, kernel, most",
    [({"SOBOLEV_TRITON_WEIGHT_GRAD": "splitk", "SOBOLEV_TRITON_BACKWARD": "separate"},
      "_weight_grad_partials_kernel", 6),
     ({"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_TRITON_BACKWARD": "persistent"},
      "_sobolev_bwd_persistent_kernel", 5),
     ({"SOBOLEV_TRITON_BACKWARD": "persistent"}, "_sobolev_bwd_persistent_kernel", 5)],
)  # fmt: skip
def test_training_step_launches_few_kernels(monkeypatch, env, kernel, most):
    """Four layers, loss + backward: forward, loss reduce, autograd's seed, backward, split-K
    weight gradients, their reduction (gemm adds one GEMM per layer instead); a persistent
    step (keeping nothing or saving): forward, loss reduce, seed, the persistent backward,
    its reduction."""
    from torch.profiler import ProfilerActivity, profile

    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    model, x, y, kw = sample_inputs(batch=4096, width=64, k=2, layers=4, dtype=torch.float32,
                                    device="cuda", x_grad=False)  # fmt: skip

    def step():
        model.zero_grad(set_to_none=True)
        sk.sobolev_loss(model, x, y, backend="triton", **kw).backward()
        torch.cuda.synchronize()

    step()  # compile outside the profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert any(kernel in k for k in kernels), kernels
    assert len(kernels) <= most, kernels


# The GPU machines run another triton than CI (3.6 there, 3.9 here); scripts/setup_env.sh
# installs the other one beside the venv (SOBOLEV_OTHER_TRITON) so both compile in CI.
OTHER_TRITON = os.environ.get("SOBOLEV_OTHER_TRITON", "")


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("this_triton", marks=pytest.mark.heavy(33)),
        pytest.param("other_triton", marks=pytest.mark.heavy(62)),
    ],
)
def test_kernels_compile_for_a_real_gpu_ahead_of_time(which):
    """Compiled for sm_90 with no GPU (Triton's own ptxas): catches what the interpreter does
    not check, e.g. a tl.constexpr name re-assigned inside a static loop, or a shape that
    one triton version accepts and the other does not. The GPU machines' triton (3.6, the
    other one here) compiles every kernel form of the quick set; this one, newer, the
    forward, backward and split-K kernels (``--core``: half the time, CI's minutes)."""
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton has no NVIDIA backend")
    env = dict(os.environ)
    overlay = OTHER_TRITON if which == "other_triton" else ""
    if which == "other_triton":
        if not overlay or not Path(overlay, "triton").is_dir():
            pytest.skip("no second triton installed (SOBOLEV_OTHER_TRITON)")
        env["PYTHONPATH"] = os.pathsep.join([overlay, env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_triton_compile.py"
    core = ["--core"] if which == "this_triton" else []
    out = subprocess.run([sys.executable, str(script), "--quick", *core], capture_output=True,
                         text=True, timeout=600, env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "check_triton_compile: ok" in out.stdout
    version = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__)"],
                             capture_output=True, text=True, env=env).stdout.strip()  # fmt: skip
    if overlay:
        assert version == Path(overlay).name.removeprefix("triton-"), version


@pytest.mark.parametrize("rows", [1, 7, 1024, 1025, 3000])
def test_sum_partials_over_many_rows(rows):
    """The column sums of per-program partials into each parameter's gradient: one pass, or
    over more than SUM_ONE_PASS_ROWS rows a first pass over row blocks (ragged here);
    the sums in a fixed order, so the same rows give the same bits."""
    from sobolev_kernels.triton import launch

    gen = torch.Generator().manual_seed(rows)
    partial = torch.randn(rows, 150, generator=gen).to(DEVICE)
    outs = [torch.empty(70, device=DEVICE), torch.empty(80, device=DEVICE, dtype=torch.float16)]
    launch._sum_partials(partial, outs, (0, 70), torch.float32)
    expected = partial.double().sum(0)
    torch.testing.assert_close(outs[0].double(), expected[:70], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1].double(), expected[70:], rtol=1e-3, atol=1e-2)
    again = [torch.empty_like(o) for o in outs]
    launch._sum_partials(partial, again, (0, 70), torch.float32)
    assert all(torch.equal(a, o) for a, o in zip(again, outs))
    # in place into the first row (the recompute backward's running sums)
    running = partial.clone()
    launch._sum_partials(running, [running[0]], (0,), torch.float32)
    torch.testing.assert_close(running[0].double(), expected, rtol=1e-5, atol=1e-5)


def test_bias_gradients_from_many_programs(monkeypatch):
    """The GEMM weight gradients' bias sums over more backward programs than one pass adds
    (the two-pass sum of _sum_partials), against the reference."""
    from sobolev_kernels.triton import parameter_grads

    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "gemm")
    monkeypatch.setenv("SOBOLEV_TRITON_BACKWARD", "separate")
    monkeypatch.setattr(parameter_grads, "SUM_ONE_PASS_ROWS", 8)  # (a smaller batch than 1024 x 64)
    monkeypatch.setattr(
        parameter_grads, "SUM_ROWS_PER_SPLIT", 4
    )  # (fewer than a pass's 32 at a time)
    grids = count_launches(monkeypatch, parameter_grads, "_sum_row_blocks_kernel")
    model, x, y, kw = sample_inputs(batch=2000, dim=2, width=8, out=1, k=1, layers=2,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "triton", RTOL_FP32, expected_model=upcast_model(model))
    assert grids  # the two-pass sum ran


def test_launchers_run_on_the_inputs_gpu(monkeypatch):
    """Triton launches on the current device: the ops make x's GPU current for the call (a
    model on cuda:1 while cuda:0 is current), and leave it alone where it already is."""
    from types import SimpleNamespace

    from sobolev_kernels.triton import ops

    entered, calls = [], []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            entered.append("left")

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Guard)

    def launcher(*args):
        calls.append(list(entered))
        return "launched"

    run = ops.on_the_inputs_device(launcher, 1)
    for index in (1, 0):
        x = SimpleNamespace(is_cuda=True, get_device=lambda i=index: i, device=f"cuda:{index}")
        assert run("grad", x) == "launched"
    assert calls == [["cuda:1"], ["cuda:1", "left"]] and entered == ["cuda:1", "left"]
    assert run.__name__ == "launcher"


def _planned_step(model, x, y, kw):
    model.zero_grad(set_to_none=True)
    sk.sobolev_loss(model, x, y, backend="triton", **kw).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_launch_plans_are_made_once_per_signature_and_follow_the_settings(monkeypatch):
    """A step's launches are planned on its first call (launch configs, kernels,
    constexprs) and reused after: no launch config is chosen again. A setting changed
    between calls (SOBOLEV_TRITON_WEIGHT_GRAD here) is part of the plan's key, so it takes
    effect at once; tuning.clear() forgets the plans with the choices in them."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import launch, plans

    model, x, y, kw = sample_inputs(batch=9, dim=3, width=8, out=2, k=2, layers=3,
                                    dtype=torch.float32, device=DEVICE)  # fmt: skip
    chosen, splitk = [], []
    real_config, real_splitk = launch._launch_config, launch._grads_by_splitk
    monkeypatch.setattr(launch, "_launch_config", lambda *a, **k: chosen.append(a[0])
                        or real_config(*a, **k))  # fmt: skip
    monkeypatch.setattr(launch, "_grads_by_splitk", lambda *a, **k: splitk.append(1)
                        or real_splitk(*a, **k))  # fmt: skip
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "gemm")
    tuning.clear()
    first = _planned_step(model, x, y, kw)
    assert chosen == ["fwd", "bwd"] and not splitk
    chosen.clear()
    assert_close(_planned_step(model, x, y, kw)[0], first[0], 0.0, "planned step")
    assert chosen == [] and not splitk
    monkeypatch.setenv("SOBOLEV_TRITON_WEIGHT_GRAD", "splitk")
    by_splitk = _planned_step(model, x, y, kw)
    assert chosen == ["fwd", "bwd"] and splitk == [1]  # new plans, for the new setting
    for have, want in zip(by_splitk, first):
        assert_close(have, want, 1e-5, "split-K weight gradients")
    tuning.clear()
    assert not plans._plans


def test_launch_plans_made_while_nothing_can_be_measured_are_not_kept(monkeypatch):
    """A plan's choices hold for later calls only where they were measured, or where nothing
    is ever measured; not those made while torch.compile traces or a graph is captured."""
    from sobolev_kernels import tuning
    from sobolev_kernels.triton import plans

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(plans, "_plans", {})
    for enabled, can_measure, device, kept in [
        (True, False, cuda, False),  # capturing or tracing: the static choice, for now
        (True, True, cuda, True),  # measured
        (False, False, cuda, True),  # SOBOLEV_AUTOTUNE=0: static for good
        (True, False, cpu, True),  # never measured off CUDA
    ]:
        monkeypatch.setattr(tuning, "enabled", lambda e=enabled: e)
        monkeypatch.setattr(tuning, "can_measure", lambda d, c=can_measure: c)
        plans._keep("key", "plan", device)
        assert ("key" in plans._plans) == kept, (enabled, can_measure, device)
        plans._plans.clear()


def test_ahead_of_time_compiles_can_know_what_the_launcher_knows():
    """aot's ``aligned`` compiles mark what Triton's launcher marks on 16-byte aligned
    tensors and integers that are multiples of 16 (each pointer, a tuple's too, and each
    i32), in the backend's own attribute form, and nothing else."""
    from triton.backends.compiler import BaseBackend

    from sobolev_kernels.triton import aot
    from sobolev_kernels.triton.forward import _sobolev_fwd_kernel

    signature = {"x_ptr": "*fp32", "w_ptrs": ("*bf16", "*bf16"), "B": "i32",
                 "slope": "fp32", "ACT": "constexpr"}  # fmt: skip
    names = _sobolev_fwd_kernel.arg_names
    at = {name: names.index(name) for name in signature}
    marked = BaseBackend.parse_attr("D")
    assert aot._aligned(_sobolev_fwd_kernel, signature) == {
        (at["x_ptr"],): marked, (at["w_ptrs"], 0): marked, (at["w_ptrs"], 1): marked,
        (at["B"],): marked,
    }  # fmt: skip
