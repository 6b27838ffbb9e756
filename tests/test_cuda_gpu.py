"""The CUDA kernels of backend ``cuda`` on a GPU, against ``reference`` (every test is marked
``gpu`` and skips without one)."""

import pytest
import torch
from conftest import (
    HAS_CUDA,
    TOLERANCES,
    assert_backends_agree,
    assert_close,
    loss_and_grads,
    order2_inputs,
    sample_inputs,
    upcast_model,
)
from cuda_op_args import OPS, ORDER2, TARGETS, TARGETS2, backward_args, forward_op, order2_case

import sobolev_kernels as sk
from sobolev_kernels.activations import ACTIVATIONS
from sobolev_kernels.backends import cuda as cuda_backend

if cuda_backend.BACKEND.unavailable_reason() is not None:
    pytest.skip(cuda_backend.BACKEND.unavailable_reason(), allow_module_level=True)

F64 = TOLERANCES[torch.float64]


def _needs_cuda_kernels():
    if HAS_CUDA and not cuda_backend._extension.WITH_CUDA:
        pytest.skip("sobolev_kernels._C was built without its CUDA kernels")


def _cuda_case(order, **kwargs):
    """sample_inputs (order 1) or order2_inputs (order 2) on the GPU, and the extra loss
    arguments of that order."""
    if order == 1:
        return (*sample_inputs(device="cuda", **kwargs), {})
    return (*order2_inputs(device="cuda", **kwargs), ORDER2)


def _assert_agrees_under(monkeypatch, settings, order, dtype, **shape):
    """The cuda backend with the environment's `settings` against the reference at dtype's
    tolerance (the reference on the fp64 model): 1000 rows, K = 3 per-row directions, the
    rest of the shape as given."""
    _needs_cuda_kernels()
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    model, x, y, kw, extra = _cuda_case(order, batch=1000, k=3, dtype=dtype,
                                        directions="per_row", **shape)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model), **extra)  # fmt: skip


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
    model, x, y, kw = order2_case(target, directions, activation=activation, device="cuda")
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
    outputs = forward_op(x0, dirs, weights, [], save=False, **op_kw)
    assert outputs[4].numel() == 0
    one = torch.ones((), dtype=torch.float64, device="cuda")
    args = backward_args((one, None, None, None), x0, dirs, weights, [], outputs, **op_kw)
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


# --------------------------------------------------------------------------- kernel variants
# SOBOLEV_CUDA_KERNEL (read by the extension on every call): fused (the default: the fully
# fused tensor-core MLP; fp64, and more streams than a tile has rows, run the tiled kernels),
# tiled and tiled_tc (the tiled kernels with fp32 on tensor cores, 3xTF32).

VARIANTS = ["tiled", "tiled_tc", "fused"]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", [16, 48, 128, 256])
def test_cuda_variants_agree(monkeypatch, variant, order, dtype, width):
    """fp32 at fp32's rtol 1e-5 (3xTF32 on tensor cores), bf16 and fp16 at theirs; every
    width template of the fused kernels (16..256; 48 pads to 64)."""
    _assert_agrees_under(monkeypatch, {"SOBOLEV_CUDA_KERNEL": variant}, order, dtype,
                         width=width)  # fmt: skip


# the last two run the tiled kernels under "fused": more streams than a tile of 64 rows has
@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("batch, dim, width, k, layers",
                         [(1, 1, 5, 1, 1), (7, 3, 256, 3, 3), (1000, 3, 48, 3, 5),
                          (333, 40, 256, 40, 2), (65, 2, 256, 100, 3)])  # fmt: skip
def test_cuda_fused_shapes(monkeypatch, order, batch, dim, width, k, layers):
    _needs_cuda_kernels()
    monkeypatch.setenv("SOBOLEV_CUDA_KERNEL", "fused")
    model, x, y, kw, extra = _cuda_case(order, batch=batch, dim=dim, width=width, k=k,
                                        layers=layers, dtype=torch.float32)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[torch.float32],
                          expected_model=upcast_model(model), **extra)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [
    {"SOBOLEV_CUDA_KERNEL": "tiled"},
    {"SOBOLEV_CUDA_KERNEL": "tiled_tc"},
    {"SOBOLEV_CUDA_KERNEL": "fused", "SOBOLEV_CUDA_WEIGHT_GRADS": "splitk"},
    {},  # the default: fused kernels, dW by cuBLAS GEMMs, high occupancy
    # the default, db by cuBLAS's gemv
    pytest.param({"SOBOLEV_CUDA_BIAS_SUMS": "gemv"}, marks=pytest.mark.unmeasured),
    # the default, db from the operand kernels
    pytest.param({"SOBOLEV_CUDA_BIAS_SUMS": "operands"}, marks=pytest.mark.unmeasured),
    # dW by the tensor-core split-K (fp16: gemm)
    pytest.param({"SOBOLEV_CUDA_WEIGHT_GRADS": "splitk_tc"}, marks=pytest.mark.unmeasured),
    # fp32 dW by CUTLASS's 3xTF32 GEMM (fp16: gemm)
    pytest.param({"SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass"}, marks=pytest.mark.unmeasured),
    # the GEMMs' operands and the bias partials stored by the backward kernel
    pytest.param({"SOBOLEV_CUDA_GEMM_OPERANDS": "backward"}, marks=pytest.mark.unmeasured),
    # fp16: the forward's activation pass 4 elements at a time
    pytest.param({"SOBOLEV_CUDA_FORWARD_PASS": "batched"}, marks=pytest.mark.unmeasured),
], ids=["tiled", "tiled_tc", "fused_splitk", "default", "bias_gemv", "bias_operands",
        "splitk_tc", "cutlass", "backward_operands", "batched_pass"])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_variants_deterministic_at_a_large_batch(monkeypatch, settings, dtype):
    """B = 2^16: many tiles and blocks, fp16 adjoints below fp16's normal range (scaled per
    product), the weight gradients in row splits (or cuBLAS GEMMs over 3 B stacked rows);
    bitwise identical across runs."""
    _needs_cuda_kernels()
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    model, x, y, kw = sample_inputs(batch=2**16, dim=8, width=128, k=2, dtype=dtype,
                                    device="cuda", x_grad=False)  # fmt: skip
    assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[dtype],
                          expected_model=upcast_model(model))  # fmt: skip

    def step():
        loss = sk.sobolev_loss(model, x, y, backend="cuda", **kw)
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    assert all(torch.equal(a, b) for a, b in zip(step(), step()))


# SOBOLEV_CUDA_WEIGHT_GRADS=gemm (the default): the fused backward's dW by cuBLAS GEMMs over
# operands that a kernel forms per layer (fused_gemm_operands.cuh), db by sums of the stored
# adjoints.


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_fused_gemm_weight_grads_agree(monkeypatch, order, dtype):
    settings = {"SOBOLEV_CUDA_KERNEL": "fused", "SOBOLEV_CUDA_WEIGHT_GRADS": "gemm"}
    _assert_agrees_under(monkeypatch, settings, order, dtype, dim=5, width=48, layers=4)


@pytest.mark.gpu
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [100, 256])
@pytest.mark.parametrize("occupancy", ["high", "low"])
@pytest.mark.parametrize("weight_grads", ["gemm", "splitk"])
def test_cuda_fused_occupancy_agrees(monkeypatch, order, dtype, width, occupancy, weight_grads):
    """SOBOLEV_CUDA_FUSED_OCCUPANCY=high (the default): in fp32, width 128 (100 padded) staged
    in two 64-row weight panels, width 256 in blocks of 8 warps; bf16 keeps its shapes. =low:
    one block of 8 (width 128) or 4 warps (256) per SM. Either with either dW."""
    settings = {"SOBOLEV_CUDA_KERNEL": "fused", "SOBOLEV_CUDA_FUSED_OCCUPANCY": occupancy,
                "SOBOLEV_CUDA_WEIGHT_GRADS": weight_grads}  # fmt: skip
    _assert_agrees_under(monkeypatch, settings, order, dtype, dim=5, width=width, layers=3)


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [100, 256])
def test_cuda_tensor_core_split_k_weight_grads_agree(monkeypatch, order, dtype, width):
    """SOBOLEV_CUDA_WEIGHT_GRADS=splitk_tc: dW in the fused backward's tensor-core split-K
    (fused_weight_grads_tc.cuh), 128 x 128 blocks of dW: partial at width 100, four a layer
    at 256 (whole); fp32 as 3xTF32, bf16 rounded as the GEMM path rounds. (The fused kernels'
    occupancy does not change it: the default's.)"""
    _assert_agrees_under(monkeypatch, {"SOBOLEV_CUDA_WEIGHT_GRADS": "splitk_tc"}, order, dtype,
                         dim=5, width=width, layers=3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("width", [48, 256])
@pytest.mark.parametrize("dtype, weight_grads, bias", [
    (torch.float32, "gemm", True), (torch.float32, "cutlass", True),
    (torch.bfloat16, "gemm", True), (torch.float16, "gemm", True),
    (torch.bfloat16, "gemm", False),
], ids=["fp32", "fp32-cutlass", "bf16", "fp16", "bf16-no-bias"])  # fmt: skip
def test_cuda_gemm_operands_from_the_backward_agree(monkeypatch, order, width, dtype,
                                                    weight_grads, bias):  # fmt: skip
    """SOBOLEV_CUDA_GEMM_OPERANDS=backward: the fused backward kernel stores the GEMMs'
    operands (bf16: the adjoints as bf16 only) and the bias partials (none without biases),
    layer 1's inputs by the operand kernel; with cuBLAS's GEMMs, and in fp32 with CUTLASS's
    too; both orders, widths 48 (padded to 64) and 256 (8-warp blocks)."""
    settings = {"SOBOLEV_CUDA_GEMM_OPERANDS": "backward", "SOBOLEV_CUDA_WEIGHT_GRADS": weight_grads}
    _assert_agrees_under(monkeypatch, settings, order, dtype, dim=5, width=width, layers=4,
                         bias=bias)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("width", [48, 100, 256])
def test_cuda_batched_forward_pass_agrees(monkeypatch, order, dtype, width):
    """SOBOLEV_CUDA_FORWARD_PASS=batched: in 16-bit models the fused forward's activation
    pass takes 4 elements at a time (widths whose padded columns do not divide the block's
    threads, 48 and 100, wrap rows inside a batch; 256: blocks of 4 warps), both orders: the
    loss and every gradient."""
    _assert_agrees_under(monkeypatch, {"SOBOLEV_CUDA_FORWARD_PASS": "batched"}, order, dtype,
                         dim=5, width=width, layers=3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [48, 128])
def test_cuda_backward_in_row_chunks_agrees(monkeypatch, order, dtype, width):
    """SOBOLEV_SAVE_ACTIVATIONS=0: the backward recomputes and runs the fused kernels 300 of
    the 1000 samples at a time (SOBOLEV_CUDA_RECOMPUTE_ROWS, csrc/row_chunks.h: chunks
    starting at rows that are no multiple of a tile, the last one of 100), the parameters'
    gradients added in fp32: the loss and every gradient against the reference."""
    settings = {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_CUDA_RECOMPUTE_ROWS": "300"}
    _assert_agrees_under(monkeypatch, settings, order, dtype, dim=5, width=width, layers=4)


@pytest.mark.gpu
@pytest.mark.unmeasured
def test_cuda_backward_in_row_chunks_holds_one_chunk(monkeypatch):
    """The step's peak memory above its inputs at config M's shape (B = 2^16, width 128,
    K = 2, four layers, fp32): where the forward saves its stacks (302 MB of z/tz) and the
    backward stores its adjoints for the batch, against the forward keeping nothing and the
    backward taking 4096 samples at a time (its default, 16384, would be 4 chunks): under
    half. Memory, not time: the allocator's peak is deterministic."""
    _needs_cuda_kernels()
    model, x, y, kw, _ = _cuda_case(1, batch=2**16, dim=16, width=128, k=2, layers=4, out=8,
                                    dtype=torch.float32, directions="per_row")  # fmt: skip
    peaks = {}
    for save in ("1", "0"):
        monkeypatch.setenv("SOBOLEV_SAVE_ACTIVATIONS", save)
        monkeypatch.setenv("SOBOLEV_CUDA_RECOMPUTE_ROWS", "4096")
        loss_and_grads(model, x, y, kw, "cuda")  # (any one-time allocation out of the way)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss, grads = loss_and_grads(model, x, y, kw, "cuda")
        torch.cuda.synchronize()
        peaks[save] = torch.cuda.max_memory_allocated() - base
        del loss, grads
    assert peaks["0"] < 0.5 * peaks["1"], peaks


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("width", [64, 100, 256])
def test_cuda_cutlass_weight_grads_agree(monkeypatch, order, width):
    """SOBOLEV_CUDA_WEIGHT_GRADS=cutlass: gemm's operands, each fp32 dW by CUTLASS's 3xTF32
    split-K GEMM (weight_grad_gemm.h) where it takes the layer (here the hidden-to-hidden
    ones; the first, 5 wide, and the last, 3, by cuBLAS), at fp32's tolerance."""
    _assert_agrees_under(monkeypatch, {"SOBOLEV_CUDA_WEIGHT_GRADS": "cutlass"}, order,
                         torch.float32, dim=5, width=width, layers=3)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("rows, n_out, n_in", [
    (4099, 128, 128), (70000, 64, 64), (777, 256, 36), (5, 64, 32), (70000, 8, 128),
    (300, 100, 6), (0, 64, 64),
])  # fmt: skip
def test_weight_grad_gemm_on_the_gpu(rows, n_out, n_in):
    """torch.ops.sobolev_kernels.weight_grad_gemm: adjoints^T inputs at fp32's tolerance
    (against fp64; one TF32 product a term would be off by about 1e-4 of the largest), the same
    bits on every call, by CUTLASS's
    split-K kernel where the widths are multiples of 4 and the narrower at least 32 (the
    profiler names it; 128 x 128 tiles, or 64 x 64 where the narrower is 64 or less) and
    cuBLAS's GEMM where not (n_out 8, n_in 6, no rows)."""
    _needs_cuda_kernels()
    if not cuda_backend._extension.WITH_CUTLASS:
        pytest.skip("sobolev_kernels._C was built without CUTLASS (third_party/cutlass)")
    op = torch.ops.sobolev_kernels.weight_grad_gemm
    gen = torch.Generator(device="cuda").manual_seed(rows)
    a = torch.randn(rows, n_out, device="cuda", generator=gen)
    s = torch.randn(rows, n_in, device="cuda", generator=gen)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        dw = op(a, s)
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    by_cutlass = rows > 0 and n_out % 4 == 0 and n_in % 4 == 0 and min(n_out, n_in) >= 32
    assert ("GemmSplitKParallel" in names) == by_cutlass, names[:300]
    expected = a.double().t() @ s.double()
    assert_close(dw, expected, TOLERANCES[torch.float32], "weight_grad_gemm")
    assert torch.equal(dw, op(a, s))
    with pytest.raises(RuntimeError, match="inputs: expected 4099 rows"):
        op(torch.zeros(4099, 8, device="cuda"), torch.zeros(4098, 8, device="cuda"))


@pytest.mark.gpu
@pytest.mark.unmeasured
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("allow_tf32", [False, True])
@pytest.mark.parametrize("width", [48, 100, 256])
def test_cuda_staged_weight_split_agrees_with_the_per_warp_split(
    monkeypatch, order, allow_tf32, width
):
    """SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT=staged: the fp32 weights split into their TF32 parts
    once per launch and copied into each block's panels (FusedShape's STAGED_SPLIT; widths
    64, 128 and 256, here 48 and 100 padded, the latter two in 32-row panels) instead of by
    each warp as it loads them, and the activations split by integer arithmetic
    (tf32_parts<true>). Plain TF32: the same high parts and products in the same order, so
    the same bits, forward and backward. 3xTF32: the remainders truncated by the product
    instead of rounded, within 3e-6 of the per-warp split's (relative to each tensor's
    largest), as in the emulation, and against the reference at fp32's tolerance."""
    _needs_cuda_kernels()
    model, x, y, kw, extra = _cuda_case(order, batch=1000, dim=5, width=width, k=3, layers=3,
                                        dtype=torch.float32, directions="per_row")  # fmt: skip
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    results = {}
    for split in ("warp", "staged"):
        monkeypatch.setenv("SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT", split)
        loss, grads = loss_and_grads(model, x, y, kw, "cuda", **extra)
        results[split] = [loss, *grads]
    if allow_tf32:
        assert all(torch.equal(a, b) for a, b in zip(results["warp"], results["staged"]))
    else:
        for a, b in zip(results["staged"], results["warp"]):
            assert (a - b).abs().max() <= 3e-6 * b.abs().max(), (a - b).abs().max()
        assert_backends_agree(model, x, y, kw, "cuda", TOLERANCES[torch.float32],
                              expected_model=upcast_model(model), **extra)  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("allow_tf32", [False, True])
@pytest.mark.parametrize("split", ["warp", "staged"])
@pytest.mark.parametrize("where", ["x", "weight"])
def test_cuda_fused_non_finite_values_propagate(monkeypatch, where, split, allow_tf32):
    """A NaN input or weight makes the fused fp32 kernels' loss NaN in either weight split, as
    3xTF32 and as plain TF32: the staged split's integer high part of a NaN is a zero, and the
    NaN must then reach the products through its remainder (tf32_parts<true>), or, for plain
    TF32, through cvt.rna's high parts (the staged weights keep them)."""
    _needs_cuda_kernels()
    monkeypatch.setenv("SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT", split)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allow_tf32)
    model, x, y, kw = sample_inputs(device="cuda", batch=300, width=64, dtype=torch.float32,
                                    x_grad=False)  # fmt: skip
    if where == "x":
        x = x.clone()
        x[5, 0] = float("nan")
    else:
        with torch.no_grad():
            model.layers[1].weight[3, 7] = float("nan")
    loss = sk.sobolev_loss(model, x, y, backend="cuda", check_finite=False, **kw)
    assert torch.isnan(loss)


@pytest.mark.gpu
@pytest.mark.parametrize("variable, value, expected", [
    ("SOBOLEV_CUDA_WEIGHT_GRADS", "cublas",
     "SOBOLEV_CUDA_WEIGHT_GRADS: expected gemm, splitk or splitk_tc"),
    ("SOBOLEV_CUDA_FUSED_OCCUPANCY", "max", "SOBOLEV_CUDA_FUSED_OCCUPANCY: expected high or"),
    ("SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT", "lane",
     "SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT: expected warp or staged, got 'lane'"),
])  # fmt: skip
def test_cuda_unknown_setting_is_named(monkeypatch, variable, value, expected):
    _needs_cuda_kernels()
    monkeypatch.setenv(variable, value)
    model, x, y, kw = sample_inputs(device="cuda")
    with pytest.raises(RuntimeError, match=expected):
        sk.sobolev_loss(model, x, y, backend="cuda", **kw)


@pytest.mark.gpu
def test_cuda_unknown_bias_sums_are_named(monkeypatch):
    """Read where they run: by the backward's GEMM weight gradients (fp32, the default)."""
    _needs_cuda_kernels()
    monkeypatch.setenv("SOBOLEV_CUDA_BIAS_SUMS", "atomic")
    model, x, y, kw = sample_inputs(device="cuda", dtype=torch.float32)
    loss = sk.sobolev_loss(model, x, y, backend="cuda", **kw)
    expected = "SOBOLEV_CUDA_BIAS_SUMS: expected reduce, gemv or operands"
    with pytest.raises(RuntimeError, match=expected):
        loss.backward()


@pytest.mark.gpu
def test_cuda_unknown_variant_is_named(monkeypatch):
    _needs_cuda_kernels()
    monkeypatch.setenv("SOBOLEV_CUDA_KERNEL", "fastest")
    model, x, y, kw = sample_inputs(device="cuda")
    with pytest.raises(RuntimeError, match="SOBOLEV_CUDA_KERNEL: expected tiled, tiled_tc"):
        sk.sobolev_loss(model, x, y, backend="cuda", **kw)
