"""The CUDA kernels without a GPU and without the built extension: nvcc compiles every .cu for
sm_80 and sm_90 (scripts/check_cuda_compile.sh), and the kernels run on the host in emulation
(csrc/cuda/emulation), also under ThreadSanitizer. Needs only nvcc or a C++ compiler, so these
never hide behind the skip of a missing ``sobolev_kernels._C``."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.heavy(50)
@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
def test_cuda_sources_compile_for_sm80_and_sm90():
    script = ROOT / "scripts" / "check_cuda_compile.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_vendored_cutlass_headers_cover_the_kernels_includes():
    """third_party/cutlass holds every CUTLASS header the kernels reach (a GPU machine builds
    offline; without them weight_grad_gemm.cu compiles with no GEMM, which the compile check
    above also catches: its PTX then has no TF32 products)."""
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "vendor_cutlass.py"), "--check"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / "third_party" / "cutlass" / "LICENSE.txt").read_text().count("BSD") >= 1


@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc")
def test_the_cutlass_gemms_arguments_are_the_weight_gradients(tmp_path):
    """weight_grad_gemm.cu's CUTLASS arguments on the host (tests/cutlass_arguments.cu): its
    problem size and operand references, read through CUTLASS's layouts, give A^T S into dW
    row-major, for both tiles (a leading dimension of n_in for A fails it). No GPU: the
    device code is compiled, not run."""
    exe = tmp_path / "cutlass_arguments"
    build = subprocess.run([os.environ.get("NVCC", "nvcc"), "-std=c++17", "-O1",
                            "--expt-relaxed-constexpr", "-arch=sm_80", f"-I{ROOT / 'csrc'}",
                            f"-I{ROOT / 'third_party' / 'cutlass' / 'include'}",
                            str(ROOT / "tests" / "cutlass_arguments.cu"), "-o", str(exe)],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": ok") == 2


def test_vendoring_takes_the_include_closure_from_the_wheel(tmp_path, monkeypatch):
    """scripts/vendor_cutlass.py on a wheel of four headers: the kernels' includes and what
    they include (under any #if), not the header nobody includes, and the license; --check
    fails once one of them is gone, naming it; a wheel lacking an included header is an
    error, and the copy is left as it was."""
    import importlib.util
    import zipfile

    spec = importlib.util.spec_from_file_location("vendor", ROOT / "scripts" / "vendor_cutlass.py")
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    kernel = tmp_path / "kernel.cu"
    kernel.write_text('#include "cuda/own.h"\n#include "cutlass/gemm.h"\n')
    monkeypatch.setattr(vendor, "kernel_sources", lambda: [kernel])
    monkeypatch.setattr(vendor, "DEST", tmp_path / "cutlass")

    def wheel(name, headers):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as whl:
            for header, text in headers.items():
                whl.writestr(vendor.IN_WHEEL + header, text)
            whl.writestr("nvidia_cutlass-4.2.0.0.dist-info/licenses/LICENSE.txt", "BSD-3")
        return path

    headers = {"cutlass/gemm.h": '#include "cutlass/arch.h"\n#if X\n#include <cute/t.hpp>\n#endif',
               "cutlass/arch.h": "", "cute/t.hpp": "", "cutlass/unused.h": ""}  # fmt: skip
    assert vendor.vendor(wheel("full.whl", headers)) == 0
    copied = {p.relative_to(tmp_path / "cutlass" / "include").as_posix()
              for p in (tmp_path / "cutlass" / "include").rglob("*") if p.is_file()}  # fmt: skip
    assert copied == {"cutlass/gemm.h", "cutlass/arch.h", "cute/t.hpp"}
    assert (tmp_path / "cutlass" / "LICENSE.txt").read_text() == "BSD-3"
    assert vendor.check() == 0
    (tmp_path / "cutlass" / "include" / "cute" / "t.hpp").unlink()
    assert vendor.check() == 1
    del headers["cutlass/arch.h"]
    assert vendor.vendor(wheel("short.whl", headers)) == 1
    assert (tmp_path / "cutlass" / "include" / "cutlass" / "arch.h").exists()


EMULATION = ROOT / "csrc" / "cuda" / "emulation" / "emulate_kernels.cpp"
NO_CXX = shutil.which(os.environ.get("CXX", "g++")) is None


def _build_emulation(exe, *flags):
    build = [os.environ.get("CXX", "g++"), "-std=c++20", "-O1", "-pthread", *flags,
             f"-I{ROOT / 'csrc'}", str(EMULATION), "-o", str(exe)]  # fmt: skip
    return subprocess.run(build, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def emulation(tmp_path_factory):
    """The emulation, built once for the tests below (~1 min on 2 cores), and once for all
    pytest-xdist workers: the heavy tests run first, interleaved across modules
    (conftest.py), so a module-scoped build would be made again and again."""
    if NO_CXX:
        pytest.skip("no C++ compiler")
    from filelock import FileLock  # (torch's dependency)

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # this run's folder, common to its workers
    exe = shared / "emulate_kernels"
    with FileLock(str(shared / "emulate_kernels.lock")):
        if not exe.exists():
            proc = _build_emulation(shared / "emulate_kernels.partial")
            assert proc.returncode == 0, proc.stderr
            (shared / "emulate_kernels.partial").rename(exe)
    return exe


def test_cuda_kernels_in_host_emulation(emulation):
    """The CUDA kernels run on the host (a block's threads as fibers switched at barriers,
    csrc/cuda/emulation/host_shim.h and block_fibers.h) against a direct implementation of
    DESIGN section 2 and docs/math.md: their indexing, synchronisation and reductions at
    order 1 and order 2, every activation, fp64 and fp32, and the tensor-core path of bf16 and
    fp16 (emulation/wmma_shim.h, with the GPU's rounding), without a GPU."""
    proc = subprocess.run([str(emulation)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every order-2 case in fp64 and fp32; in bf16 and fp16 all but relu and leaky_relu
    assert proc.stdout.count("order 2") == 2 * 10 + 2 * 8, proc.stdout
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") > 0, proc.stdout


def _assert_tf32_lines(stdout):
    """3xTF32 meets fp32's 1e-5 on every case, and plain TF32 misses it on every case (the
    check can fail: TF32 keeps 10 of fp32's 23 mantissa bits)."""
    fp32, tf32 = stdout.count("(fp32)"), stdout.count("(tf32:")
    assert fp32 > 0 and tf32 > 0, stdout
    assert stdout.count("above fp32's 1e-5") == tf32, stdout


def test_tiled_kernels_fp32_on_tensor_cores_in_host_emulation(emulation):
    """SOBOLEV_CUDA_KERNEL=tiled_tc: the tiled kernels' fp32 products on tensor cores (WMMA
    TF32). 3xTF32 (each operand a TF32 high part and remainder, three products) meets fp32's
    1e-5 against the double-precision reference; plain TF32 (allow_tf32) misses it by ~1e-3.
    Every case (plain TF32 all but relu's, whose kinks TF32 rounding can flip)."""
    proc = subprocess.run([str(emulation), "--variant=tiled_tc"], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(fp32)") == 22 and proc.stdout.count("(tf32:") == 18, proc.stdout
    _assert_tf32_lines(proc.stdout)


def test_fused_kernels_in_host_emulation(emulation):
    """The CUDA backend's default: the fully fused kernels (mma.sync fragments, emulated lane
    by lane from the PTX ISA's layouts), dW from the GEMM operands that
    fused_gemm_operands.cuh forms per layer (layer inputs recomputed from the saved
    pre-activations, order 2's tt rows included; bf16 adjoints rounded; the GEMM and bias sums
    done on the host as the binding has cuBLAS do them), the high-occupancy shapes (fp32 at
    width 128, here 96 padded, in two 64-row weight panels; width 256 in blocks of 8 warps).
    Every case: fp32 as 3xTF32 within 1e-5 and as plain TF32 above it, bf16 and fp16 (scaled
    operands) within their bounds; widths 16 to 256 (one and four weight panels), K up to 40
    (one sample per tile), several tiles and blocks. Plain TF32 on every case but relu's,
    with SOBOLEV_CUDA_BIAS_SUMS=operands (the bias sums from the operand kernels' partials,
    widths below and above the emulated block's 64 threads)."""
    default = [str(emulation), "--variant=fused", "--weight-grads=gemm", "--occupancy=high"]
    proc = subprocess.run([*default, "--dtypes=fp32,bf16,fp16"], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(fp32)") == 22, proc.stdout  # every case
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") == 22 - 4, proc.stdout
    assert "(fp64)" not in proc.stdout  # fp64 stays on the tiled kernels
    tf32 = subprocess.run([*default, "--bias-sums=operands", "--dtypes=tf32"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert tf32.returncode == 0, tf32.stdout + tf32.stderr
    assert tf32.stdout.count("(tf32:") == 18, tf32.stdout
    _assert_tf32_lines(proc.stdout + tf32.stdout)


def test_fused_kernels_with_gemm_operands_from_the_backward_in_host_emulation(emulation):
    """SOBOLEV_CUDA_GEMM_OPERANDS=backward: the fused backward kernel stores the GEMMs' operands
    itself (the adjoints as the GEMMs read them: fp32, or bf16 alone; the layer inputs S_1..
    S_{L-1} from the z/tz/ttz its activation pass has read; each block's column sums of the
    value-row adjoints, its bias partials, tile after tile) and layer 1's [x; v] alone comes
    from the operand kernel; the GEMMs on the host as the binding has cuBLAS do them, the bias
    sums by bias_sums_kernel over the blocks' partials. Every case, fp32 (3xTF32 and plain
    TF32), bf16 and fp16, against the reference. (Mutants seen caught, 2026-11-28: a tangent
    row's input 1% off, the value rows' 1% off, order 2's tt rows with s'' 10% off, and the
    bias partials set by every tile instead of added: 4 cases, those of several tiles a
    block.)"""
    backward = [str(emulation), "--variant=fused", "--weight-grads=gemm", "--occupancy=high",
                "--gemm-operands=backward"]  # fmt: skip
    proc = subprocess.run([*backward, "--dtypes=fp32,tf32,bf16,fp16"], capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(fp32)") == 22, proc.stdout  # every case
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") == 22 - 4, proc.stdout
    assert proc.stdout.count("(tf32:") == 18, proc.stdout
    _assert_tf32_lines(proc.stdout)


def test_fused_forward_batched_activation_pass_in_host_emulation(emulation):
    """SOBOLEV_CUDA_FORWARD_PASS=batched: in bf16 and fp16 the fused forward's activation pass
    takes kPassBatch elements at a time (their loads, then their math and stores); fp32 keeps
    the one-at-a-time pass. Every case against the reference; widths whose padded columns do
    not divide the block's threads (96, 200) wrap rows inside a batch. (A mutant seen caught,
    2026-11-28: a tangent stored into its neighbour's column in a batch, 14 lines in bf16 and
    fp16; the default's pass and fp32 unaffected by it.)"""
    batched = [str(emulation), "--variant=fused", "--weight-grads=gemm", "--occupancy=high",
               "--forward-pass=batched"]  # fmt: skip
    proc = subprocess.run([*batched, "--dtypes=bf16,fp16"], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") == 22 - 4, proc.stdout


def test_fused_kernels_staged_weight_split_in_host_emulation(emulation):
    """SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT=staged: the fp32 weights staged as their 3xTF32 parts,
    split once per launch (split_weights_kernel) instead of by each warp, copied into each
    block's panels, and the activations split by integer
    arithmetic, in the shapes that have it: width 64 (one panel), width 128 at high occupancy
    (here 96 padded: 32-row panels, full and partial) and width 256 (more panels), both orders,
    as 3xTF32 and as plain TF32 (all but relu's). Each such case runs both ways: plain TF32
    must give the same bits, 3xTF32 values within 3e-6 of each other (the remainders' last
    bit) and of the reference within fp32's 1e-5. The cases whose shape has no staged split
    (widths 16 and 32) are checked against the reference as usual."""
    staged = [str(emulation), "--variant=fused", "--weight-grads=gemm", "--occupancy=high",
              "--weight-split=staged"]  # fmt: skip
    proc = subprocess.run([*staged, "--dtypes=fp32,tf32"], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # widths 64, 96 (both orders) and 256: compared with the per-warp split
    assert proc.stdout.count("(tf32, staged weight split: bit for bit") == 4, proc.stdout
    assert proc.stdout.count("(fp32, staged weight split: ") == 4, proc.stdout
    assert proc.stdout.count("(fp32)") == 18 and proc.stdout.count("(tf32:") == 14, proc.stdout
    _assert_tf32_lines(proc.stdout)


def test_integer_tf32_split_matches_cvt_rna_in_host_emulation(emulation):
    """tf32_parts<true>, the staged kernels' split of the activations (an add and a mask for
    the high part, the exact rest for the remainder, which the product truncates), against
    cvt.rna's split (tf32_parts): over every exponent, the same high part, hi + lo = v
    exactly, the remainder as read within a TF32 step of cvt.rna's; near fp32's largest both
    give inf and -inf; NaN and inf leave a remainder read as NaN, so no product hides them
    (the integer high part of a NaN wraps to a zero)."""
    proc = subprocess.run([str(emulation), "--tf32-parts"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok   tf32 parts: integer split against cvt.rna's"), proc.stdout


def test_emulated_barriers_stop_a_deadlock_and_pass_what_was_written(emulation):
    """The emulation's own __syncthreads (block_fibers.h): a block whose thread 0 returns
    before a barrier that the other 63 wait at stops with a message naming the block (as
    std::threads it hung until the test's time limit); with the barrier in its place, a word
    written by thread 0 is what thread 1 reads."""
    stuck = subprocess.run([str(emulation), "--barrier-check=deadlock"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert stuck.returncode != 0, stuck.stdout + stuck.stderr
    assert "block (0, 0) deadlocked: 63 of 64 threads wait" in stuck.stderr, stuck.stderr
    synced = subprocess.run([str(emulation), "--barrier-check=synced"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.startswith("ok   barrier check synced: thread 1 read 1"), synced.stdout


def test_fused_kernels_with_their_own_weight_grads_at_low_occupancy_in_host_emulation(
    emulation,
):
    """SOBOLEV_CUDA_WEIGHT_GRADS=splitk and SOBOLEV_CUDA_FUSED_OCCUPANCY=low (the emulation's
    defaults): dW in the fused backward's own product over row splits (three at 1024 rows),
    every case in fp32, bf16 and fp16 (fp32 the only dtype whose shapes the occupancy
    changes: 4-warp blocks at width 256; width 96 in width 128's shape, 8 warps a block)."""
    proc = subprocess.run([str(emulation), "--variant=fused", "--dtypes=fp32,bf16,fp16"],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(fp32)") == 22, proc.stdout
    assert proc.stdout.count("(bf16)") == proc.stdout.count("(fp16)") == 18, proc.stdout


def test_fused_tensor_core_split_k_weight_grads_in_host_emulation(emulation):
    """SOBOLEV_CUDA_WEIGHT_GRADS=splitk_tc: dW in the fused backward's tensor-core split-K
    (fused_weight_grads_tc.cuh: 128 x 128 blocks of dW, 8 warps of 32 x 64, operands
    split by integer arithmetic, the bias sums on the value rows' staging), three row splits:
    every case, 3xTF32 within fp32's 1e-5 of the reference, plain TF32 above it (all but
    relu's), bf16 (operands rounded as they are staged, two rows a word) within its bounds;
    whole blocks (width 256, the loop without tile predicates) and partial ones (widths 16 to
    200, the last layer's few rows), both orders, K up to 40, 1024 rows. fp16 runs the GEMM
    path (the default's, checked above)."""
    tc = [str(emulation), "--variant=fused", "--weight-grads=splitk_tc", "--occupancy=high"]
    proc = subprocess.run([*tc, "--dtypes=fp32,tf32,bf16"], capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("(fp32)") == 22 and proc.stdout.count("(tf32:") == 18, proc.stdout
    assert proc.stdout.count("(bf16)") == 18, proc.stdout
    _assert_tf32_lines(proc.stdout)


@pytest.mark.heavy(75)
@pytest.mark.skipif(NO_CXX, reason="no C++ compiler")
def test_cuda_kernels_have_no_shared_memory_races_in_emulation(tmp_path):
    """The emulation under ThreadSanitizer: two threads of a block touching the same word
    without a barrier between them (a missing __syncthreads or __syncwarp) is a report and a
    failure. The block's threads are TSan fibers switched without synchronisation, its
    barriers a release and an acquire by each thread (block_fibers.h), so a race is reported
    whichever order the fibers ran in; first a control of that: a read of another thread's
    write without a barrier is reported, with one it is not. Then the tiled kernels on four
    cases (both orders, tile buffers in global memory; fp64 runs fp32's code, bf16 fp16's
    without its scale words), in fp32 and fp16; the fused kernels: the default's (GEMM
    operands for dW, with their bias partials, SOBOLEV_CUDA_BIAS_SUMS=operands; the
    high-occupancy shape of width 128, here 96 padded: two 64-row weight panels; width 256's
    8-warp blocks) in fp32, both orders, and the staged weight split at width 64 (one panel of
    TF32 parts); the split-K dW with fp16's scale words over several tiles; the tensor-core
    split-K dW (splitk_tc: 8 warps, staged operands, bias sums) in fp32 and bf16, whole and
    partial blocks; the GEMM operands stored by the backward (its bias partials between its
    products' barriers); fp16's batched forward pass. (Mutants seen caught, 2026-11-28, as by
    the std::threads emulation before: a __syncthreads removed from the fused forward's tile
    loop, from the operand kernel's bias partials or from the bias sums kernel, and from the
    tiled forward's tile loop; and the one after the backward's own bias partials.)"""
    exe = tmp_path / "emulate_kernels_tsan"
    proc = _build_emulation(exe, "-g", "-fsanitize=thread", "-Wno-tsan")
    if proc.returncode != 0 and "tsan" in proc.stderr.lower():
        pytest.skip(f"no ThreadSanitizer here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    for check, reported in (("race", True), ("synced", False)):
        control = subprocess.run([str(exe), f"--barrier-check={check}"], capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
        if "FATAL: ThreadSanitizer" in control.stderr:
            pytest.skip(f"ThreadSanitizer cannot run here: {control.stderr[-300:]}")
        assert ("WARNING: ThreadSanitizer: data race" in control.stderr) == reported, (
            check, control.stdout, control.stderr[-3000:])  # fmt: skip
    default = ["--variant=fused", "--weight-grads=gemm", "--occupancy=high", "--dtypes=fp32"]
    staged = [*default, "--weight-split=staged"]
    backward_operands = [*default, "--gemm-operands=backward"]
    batched_pass = ["--variant=fused", "--forward-pass=batched"]
    tensor_core_split_k = ["--variant=fused", "--weight-grads=splitk_tc", "--occupancy=high"]
    runs = [
        # tiled: bf16's WMMA products synchronise as fp16's, without their scale words
        (["--dtypes=fp32,fp16"], ["tanh, per-row", "3 blocks"], 4 * 2),
        # fused: fp32 (3xTF32) in the default's form; with the staged weight split at width 64
        # (and the default's again, to compare: the staged parts are stored and read
        # between the same barriers as the per-warp weights, whose panels width 96 runs);
        # fp16 with its scale words over several tiles; bf16 and TF32 synchronise as these do
        ([*default, "--bias-sums=operands"], ["tanh, per-row", "width 96", "widths 256"], 5),
        (staged, ["width 64"], 1),
        # the backward's own GEMM operands: its bias partials over several tiles a block
        (backward_operands, ["1024 rows", "order 2, tanh, per-row"], 2),
        # fp16's batched forward pass (padded columns wrapping rows at width 96)
        ([*batched_pass, "--dtypes=fp16"], ["width 96", "order 2, tanh, per-row"], 3),
        (["--variant=fused", "--dtypes=fp16"], ["tanh, per-row", "1024 rows"], 3),
        # splitk_tc: fp32's and bf16's staging and k loops, whole blocks at width 256
        ([*tensor_core_split_k, "--dtypes=fp32,bf16"], ["tanh, per-row", "widths 256"], 6),
    ]
    for variant, cases, lines in runs:
        proc = subprocess.run([str(exe), *variant, *cases], capture_output=True, text=True,
                              timeout=1200)  # fmt: skip
        if "FATAL: ThreadSanitizer" in proc.stderr:  # e.g. an address-space layout it rejects
            pytest.skip(f"ThreadSanitizer cannot run here: {proc.stderr[-300:]}")
        assert "WARNING: ThreadSanitizer" not in proc.stderr, proc.stderr[-6000:]
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert proc.stdout.count("ok  ") == lines, proc.stdout
        compared = 1 if variant is staged else 0
        assert proc.stdout.count("staged weight split: ") == compared, proc.stdout


@pytest.mark.heavy(106)
@pytest.mark.skipif(NO_CXX, reason="no C++ compiler")
def test_cuda_kernels_stay_in_bounds_under_address_sanitizer(tmp_path):
    """The emulation under AddressSanitizer, with bounds, shift and signed-overflow checks: a
    kernel that reads or writes outside the buffers its launch was given (their ends are
    redzones), or past the dynamic shared memory the launch asks for (host_shim.h poisons
    the rest; the sizes are the real launches' own: plan.smem_bytes, tc_grad_smem_bytes,
    kBiasSumSmem, ...) is a report and a failure; so is an index outside a fixed-size array
    (the fragments' accumulators) or an int index that overflows. First a control: a write
    one word past the launch's shared memory is reported. Then the tiled kernels (both
    orders, every dtype; global-memory tile buffers, several blocks; weight panels), the fused
    default (GEMM operands with their bias partials) in fp32, bf16 and fp16, the fused
    split-K dW at low occupancy, splitk_tc in fp32 and bf16, the GEMM operands stored by
    the backward (SOBOLEV_CUDA_GEMM_OPERANDS=backward) in fp32 and bf16, and the forward's
    batched pass (SOBOLEV_CUDA_FORWARD_PASS=batched) in bf16 and fp16.
    (A mutant seen caught, 2026-11-28: splitk_tc's shared memory asked 4 bytes short.)"""
    exe = tmp_path / "emulate_kernels_asan"
    checks = "address,bounds,shift,signed-integer-overflow"
    proc = _build_emulation(exe, "-g", f"-fsanitize={checks}", "-fno-sanitize-recover=all",
                            "-fno-omit-frame-pointer")  # fmt: skip
    if proc.returncode != 0 and "asan" in proc.stderr.lower():
        pytest.skip(f"no AddressSanitizer here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    control = subprocess.run([str(exe), "--shared-bounds-check"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    if "AddressSanitizer failed" in control.stderr or "Shadow memory" in control.stderr:
        pytest.skip(f"AddressSanitizer cannot run here: {control.stderr[-300:]}")
    assert control.returncode != 0, control.stdout + control.stderr
    assert "ERROR: AddressSanitizer: use-after-poison" in control.stderr, control.stderr[-3000:]
    assert "shifted_word_kernel" in control.stderr, control.stderr[-3000:]
    default = ["--variant=fused", "--weight-grads=gemm", "--occupancy=high", "--bias-sums=operands"]
    tc = ["--variant=fused", "--weight-grads=splitk_tc", "--occupancy=high"]
    some = ["tanh, per-row", "widths 256", "1024 rows", "K=40"]
    runs = [
        ([], ["tanh, per-row", "order 2, gelu", "3 blocks"], 5 * 4),
        ([*default, "--dtypes=fp32,bf16,fp16"], some, 5 * 3),
        (["--variant=fused", "--dtypes=fp32,bf16"], some, 5 * 2),
        ([*tc, "--dtypes=fp32,bf16"], some, 5 * 2),
        ([*default, "--gemm-operands=backward", "--dtypes=fp32,bf16"], some, 5 * 2),
        ([*default, "--forward-pass=batched", "--dtypes=bf16,fp16"], some, 5 * 2),
    ]
    for variant, cases, lines in runs:
        proc = subprocess.run([str(exe), *variant, *cases], capture_output=True, text=True,
                              timeout=900)  # fmt: skip
        assert "ERROR: AddressSanitizer" not in proc.stderr, proc.stderr[-6000:]
        assert "runtime error:" not in proc.stderr, proc.stderr[-6000:]
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        assert proc.stdout.count("ok  ") == lines, (variant, proc.stdout)
