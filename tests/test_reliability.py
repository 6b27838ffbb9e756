"""Integration: torch.compile, DDP, autocast, non-finite inputs, memory over long loops."""

import copy
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from conftest import HAS_CUDA, assert_close, sample_inputs

import sobolev_kernels as sk

CPU_FUSED = [b for b in ("torch", "cuda", "triton") if b in sk.available_backends()]


# ----------------------------------------------------------------------------- compile


def _train(model, loss_fn, batches, steps=5):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(steps):
        x, y, target_grad, dirs = batches[i % len(batches)]
        loss = loss_fn(model, x, y, target_grad, dirs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _batches(n=2, batch=24, dim=3, out=2, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, dim, generator=g), torch.randn(batch, out, generator=g),
         torch.randn(batch, out, dim, generator=g), torch.randn(batch, k, dim, generator=g))
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.heavy(28)) if b == "torch"
                                     else b for b in CPU_FUSED])  # fmt: skip
def test_compiled_training_matches_eager(backend):
    """torch.compile(fullgraph=True) of the loss (backward and optimizer outside, as users
    compile training code): no graph break, no double-backward error, same parameters."""
    torch.manual_seed(0)
    eager_model = sk.SobolevMLP(3, 16, 2, 3, activation="tanh")
    compiled_model = copy.deepcopy(eager_model)

    def loss_fn(model, x, y, target_grad, dirs):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=dirs,
                               backend=backend)  # fmt: skip

    compiled = torch.compile(loss_fn, fullgraph=True,
                             backend="inductor" if backend == "torch" else "aot_eager")  # fmt: skip
    batches = _batches()
    _train(eager_model, loss_fn, batches)
    _train(compiled_model, compiled, batches)
    for a, b in zip(compiled_model.parameters(), eager_model.parameters()):
        assert_close(a, b, 1e-5, "parameters after 5 compiled steps")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_training_compiled_with_cuda_graphs_matches_eager(backend):
    """torch.compile(mode="reduce-overhead"): inductor replays the loss's forward and backward
    from CUDA graphs (the one-line cure for a host-bound step): the same parameters as eager
    after 5 steps of an optimizer outside the compiled function."""
    if backend not in sk.available_backends():
        pytest.skip(f"no {backend} backend")
    if backend == "cuda":
        from sobolev_kernels.backends import cuda as cuda_backend

        if not cuda_backend._extension.WITH_CUDA:
            pytest.skip("sobolev_kernels._C was built without its CUDA kernels")
    torch.manual_seed(0)
    eager_model = sk.SobolevMLP(3, 32, 2, 3, activation="tanh").cuda()
    compiled_model = copy.deepcopy(eager_model)

    def loss_fn(model, x, y, target_grad, dirs):
        return sk.sobolev_loss(model, x, y, target_grad=target_grad, directions=dirs,
                               backend=backend)  # fmt: skip

    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)

    def graphed(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)

    batches = [tuple(t.cuda() for t in batch) for batch in _batches(batch=256)]
    _train(eager_model, loss_fn, batches)
    _train(compiled_model, graphed, batches)
    for a, b in zip(compiled_model.parameters(), eager_model.parameters()):
        assert_close(a, b, 1e-4, "parameters after 5 steps replayed from CUDA graphs")


def test_what_users_write_today_fails_under_compile():
    """The motivation, kept honest: eager double backward does not compile (torch 2.13)."""
    from sobolev_kernels.baselines import eager_autograd_loss

    model, x, y, kw = sample_inputs(dtype=torch.float32, directions="per_row")
    g = torch.einsum("bmd,bkd->bkm", kw["target_grad"], kw["directions"])
    compiled = torch.compile(lambda: eager_autograd_loss(model, x, y, g, kw["directions"])[0])
    with pytest.raises(Exception, match="double backward"):
        compiled().backward()


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, state, data, out_dir, backend):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    # A file rendezvous, not a TCP port picked in advance: another process may take the port
    # between picking and binding (seen once in CI as an aborted rank).
    store = os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = sk.SobolevMLP(3, 16, 2, 3)
        model.load_state_dict(state)
        # DDP syncs gradients of what its own forward computes: the objective returns the loss
        objective = DDP(sk.SobolevObjective(model, sk.SobolevLoss(backend=backend)))
        x, y, target_grad, dirs = (t.chunk(world)[rank] for t in data)
        objective(x, y, target_grad=target_grad, directions=dirs).backward()
        torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform == "win32", reason="gloo on loopback")
@pytest.mark.parametrize("backend", [b for b in CPU_FUSED if b != "triton"])
def test_ddp_matches_one_process(tmp_path, backend):
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    torch.manual_seed(0)
    model = sk.SobolevMLP(3, 16, 2, 3)
    data = _batches(1, batch=32)[0]
    loss = sk.sobolev_loss(model, data[0], data[1], target_grad=data[2], directions=data[3],
                           backend=backend)  # fmt: skip
    expected = torch.autograd.grad(loss, list(model.parameters()))
    mp.spawn(_ddp_worker, args=(2, model.state_dict(), data, str(tmp_path), backend), nprocs=2,
             join=True)  # fmt: skip
    for rank in range(2):
        grads = torch.load(tmp_path / f"{rank}.pt")
        assert grads[0] is not None
        for a, b in zip(grads, expected):
            # equal halves: DDP's average of per-rank mean-loss gradients is the full gradient
            assert_close(a, b, 1e-5, f"rank {rank} gradient")


# ----------------------------------------------------------------------------- autocast


@pytest.mark.parametrize("backend", CPU_FUSED + ["reference"])
def test_autocast_bf16_on_cpu(backend):
    model, x, y, kw = sample_inputs(dtype=torch.float32, batch=64, width=32, directions="per_row")
    expected = sk.sobolev_loss(model, x, y, backend="reference", **kw)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sk.sobolev_loss(model, x, y, backend=backend, **kw)
    assert loss.dtype == torch.float32  # accumulated and returned in fp32
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(g.dtype == torch.float32 for g in grads)  # the parameters stay fp32
    assert_close(loss, expected, 3e-2, "autocast loss")
    for g, e in zip(grads, expected_grads):
        assert_close(g, e, 5e-2, "autocast gradient")
    # and the GEMMs really ran in bf16: the result differs from fp32 beyond fp32 rounding
    if backend != "reference":
        assert not torch.allclose(loss, expected, rtol=1e-6, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_gpu(dtype):
    model, x, y, kw = sample_inputs(dtype=torch.float32, batch=256, width=64, device="cuda")
    expected = sk.sobolev_loss(model, x, y, backend="reference", **kw)
    with torch.autocast("cuda", dtype=dtype):
        loss = sk.sobolev_loss(model, x, y, **kw)
    assert loss.dtype == torch.float32
    assert_close(loss, expected, 3e-2, "autocast loss")


# ----------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("backend", CPU_FUSED + ["reference"])
@pytest.mark.parametrize("where", ["y", "target_grad", "x"])
def test_non_finite_values_propagate(backend, where):
    model, x, y, kw = sample_inputs(dtype=torch.float32, x_grad=False)
    tensors = {"x": x, "y": y, "target_grad": kw["target_grad"]}
    tensors[where] = tensors[where].clone()
    tensors[where][0, 0] = float("nan")
    kw["target_grad"] = tensors["target_grad"]
    loss = sk.sobolev_loss(model, tensors["x"], tensors["y"], backend=backend, **kw)
    assert torch.isnan(loss)


@pytest.mark.parametrize("where", ["x", "y", "target_grad", "directions", "parameter"])
def test_check_finite_names_the_argument(where):
    model, x, y, kw = sample_inputs(directions="per_row")
    bad = {"x": x.detach().clone(), "y": y.clone(), "target_grad": kw["target_grad"].clone(),
           "directions": kw["directions"].clone()}  # fmt: skip
    if where == "parameter":
        with torch.no_grad():
            model.layers[1].bias[0] = float("inf")
        match = "model parameter 'layers.1.bias'"
    else:
        # NaN, not inf: inf in x is legitimately finite after a saturating tanh
        bad[where].view(-1)[3] = float("nan")
        match = f"{where}: contains NaN or inf"
    kw.update(target_grad=bad["target_grad"], directions=bad["directions"])
    with pytest.raises(ValueError, match=match):
        sk.sobolev_loss(model, bad["x"], bad["y"], check_finite=True, **kw)
    if where != "parameter":  # off by default: no error, a non-finite loss
        assert not torch.isfinite(sk.sobolev_loss(model, bad["x"], bad["y"], **kw))


# ----------------------------------------------------------------------------- memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
@pytest.mark.parametrize("backend", [b for b in CPU_FUSED if b != "triton"] + ["reference"])
def test_no_memory_growth_over_a_long_loop(backend):
    """2,000 training steps: the resident set stays flat after warm-up (no leaked graphs,
    saved tensors or caches growing per call)."""
    torch.manual_seed(0)
    model = sk.SobolevMLP(4, 32, 2, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    target_grad = torch.randn(64, 2, 4)
    gen = torch.Generator().manual_seed(0)
    steps = 2000 if backend != "reference" else 600

    def step():
        loss = sk.sobolev_loss(model, x, y, target_grad=target_grad, num_directions=2,
                               generator=gen, backend=backend)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(100):
        step()
    before = _rss_mb()
    for _ in range(steps):
        step()
    growth = _rss_mb() - before
    assert growth < 16, f"RSS grew by {growth:.1f} MiB over {steps} steps"


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_no_gpu_memory_growth():
    model, x, y, kw = sample_inputs(dtype=torch.float32, batch=512, width=64, device="cuda")
    for _ in range(20):
        sk.sobolev_loss(model, x, y, **kw).backward()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(500):
        sk.sobolev_loss(model, x, y, **kw).backward()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 2**20


_ROW_CHUNKS = {"SOBOLEV_SAVE_ACTIVATIONS": "0", "SOBOLEV_CUDA_RECOMPUTE_ROWS": "128"}


@pytest.mark.gpu
@pytest.mark.parametrize("backend, settings", [
    pytest.param("triton", {}, id="triton"), pytest.param("cuda", {}, id="cuda"),
    pytest.param("cuda", _ROW_CHUNKS, marks=pytest.mark.unmeasured, id="cuda_row_chunks"),
])  # fmt: skip
def test_a_training_step_replays_from_a_cuda_graph(monkeypatch, backend, settings):
    """The fused loss and its backward captured in a CUDA graph (the cure for a host-bound
    step): replays with new inputs copied into the captured ones give eager's loss and
    gradients. Also the CUDA backend's memory mode: nothing saved, the backward in chunks of
    128 of the 300 samples (csrc/row_chunks.h)."""
    if backend not in sk.available_backends():
        pytest.skip(f"{backend} unavailable")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    model, x, y, kw = sample_inputs(dtype=torch.float32, batch=300, width=64, device="cuda",
                                    target="jvp", directions="per_row", x_grad=False)  # fmt: skip
    params = list(model.parameters())

    def step():
        for q in params:
            q.grad = None
        loss = sk.sobolev_loss(model, x, y, backend=backend, **kw)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    captured_grads = [q.grad for q in params]
    for seed in range(2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        expected = sk.sobolev_loss(model, x, y, backend=backend, **kw)
        expected_grads = torch.autograd.grad(expected, params)
        assert_close(loss, expected, 1e-5, f"replayed loss, {backend}")
        for got, want in zip(captured_grads, expected_grads):
            assert_close(got, want, 1e-5, f"replayed gradient, {backend}")


def test_a_ddp_wrapped_model_is_refused_with_guidance(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    store = tmp_path / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        ddp = DDP(sk.SobolevMLP(3, 4, 1, 2))
        with pytest.raises(TypeError, match="SobolevObjective"):
            sk.sobolev_loss(ddp, torch.randn(2, 3), None, target_grad=torch.randn(2, 3))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("backend", [b for b in CPU_FUSED if b != "triton"])
def test_concurrent_python_threads_get_the_sequential_results(backend):
    """Several Python threads calling the op at once (the C++ op releases the GIL): every call
    returns exactly what the same call returns alone; nothing is shared between calls."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [
        sample_inputs(
            seed=s,
            batch=40 + 7 * s,
            width=16,
            k=1 + s % 3,
            directions="per_row",
            dtype=torch.float32,
        )  # fmt: skip
        for s in range(6)
    ]

    def run(case):
        model, x, y, kw = case
        loss = sk.sobolev_loss(model, x, y, backend=backend, **kw)
        return [loss.detach(), *torch.autograd.grad(loss, [x, *model.parameters()])]

    expected = [run(c) for c in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            results = list(pool.map(run, cases))
            for got, want in zip(results, expected):
                for a, b in zip(got, want):
                    assert torch.equal(a, b)
