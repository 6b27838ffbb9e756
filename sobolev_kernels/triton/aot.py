"""Ahead-of-time compiles of the fused kernels for a GPU architecture, with no GPU: what the
launchers would compile for a training step, and the registers, spills and shared memory
the result uses. For the compile check (``scripts/check_triton_compile.py``) and resource
surveys (``investigations/``); never imported by the library itself.

Import this with ``TRITON_INTERPRET`` unset: the kernels are built for the GPU then.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .activations import SMOOTH
from .backward import _sobolev_bwd_kernel
from .backward_resident import _sobolev_bwd_resident_kernel
from .choices import _precisions
from .forward import _sobolev_fwd_kernel, _sobolev_fwd_persistent_kernel
from .forward_resident import _sobolev_fwd_resident_kernel
from .launch import TARGET_GRAD, TARGET_HESS, TARGET_NONE
from .layout import Layout
from .persistent_backward import _sobolev_bwd_persistent_kernel
from .weight_grad import _weight_grad_partials_kernel

__all__ = [
    "SHARED_LIMIT",
    "compile_step",
    "compile_weight_grad",
    "resources",
    "sass",
    "step_constexprs",
]

# Largest dynamic shared memory per block (bytes): A100 (sm_80) and H100/H200 (sm_90).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}

# Pointer arguments of the two kernels, in order; the saved stacks, the loss partials and
# the upstream loss gradient are fp32 whatever the model's dtype (sobolev_kernels/fused.py).
# (w_ptrs, b_ptrs: a tuple of one pointer per layer)
_FWD_PTRS = ("x_ptr v_ptr y_ptr g_ptr g2_ptr w_ptrs b_ptrs f_ptr u_ptr w2_ptr z_ptr act_ptr "
             "partial_ptr")  # fmt: skip
_BWD_PTRS = ("x_ptr v_ptr y_ptr g_ptr g2_ptr w_ptrs z_ptr f_ptr u_ptr w2_ptr gloss_ptr gf_ptr "
             "gu_ptr gw_ptr a_ptr s_ptr dx_ptr db_ptr")  # fmt: skip
_PERSISTENT_PTRS = ("x_ptr v_ptr y_ptr g_ptr g2_ptr w_ptrs b_ptrs f_ptr u_ptr w2_ptr gloss_ptr "
                    "gf_ptr gu_ptr gw_ptr z_ptr saved_ptr a_ptr dx_ptr part_ptr")  # fmt: skip
_FP32_PTRS = {"z_ptr", "partial_ptr", "gloss_ptr", "db_ptr", "part_ptr", "saved_ptr"}
_FWD_SCALARS = {"B": "i32", "slope": "fp32"}
_BWD_SCALARS = dict(_FWD_SCALARS, coef_f="fp32", coef_u="fp32", coef_w="fp32")


def step_constexprs(
    layout: Layout, rows: int, warps: int, act: int, precision: str, chunk: int,
    group: int | None = None, cols: int = 0, store_inputs: bool = True, index64: bool = False,
    inputs_kmajor: bool = False,
) -> dict[str, dict]:  # fmt: skip
    """The constexprs of both kernels as the launchers set them for a training step with a
    Jacobian (and, for order 2, Hessian) target, biases and y (``group``: directions per
    pass, default the static choice; ``cols``: output columns per pass, 0 for all;
    ``store_inputs``: false for the backward of the ``recompute`` weight gradients;
    ``index64``: 64-bit index arithmetic, which the launchers take past 2^31 elements;
    ``inputs_kmajor``: the backward's inputs stacks transposed, choices._inputs_kmajor)."""
    common = dict(layout.constexprs(), ROWS=rows, GROUP=group or layout.group(rows, warps),
                  ACT=act, SHARED=False, HAS_BIAS=True, HAS_Y=True, TARGET=TARGET_GRAD,
                  TARGET2=TARGET_HESS if layout.order == 2 else TARGET_NONE,
                  PRECISION=precision, EMULATE_BF16=False,
                  CHUNKS=layout.chunks(chunk))  # fmt: skip
    scratch = layout.hidden_stacks(save=False)
    return {
        "fwd": dict(
            common,
            **layout.hidden_stacks(save=True),
            COLS=layout.col_blocks(cols, "fwd"),
            ACTIVATED=False,
            STORE_Z=True,
            A_OFFS=scratch["Z_OFFS"],
            A_STRIDES=scratch["Z_STRIDES"],
            INDEX64=index64,
        ),
        "bwd": dict(
            common,
            IN_CUM=layout.in_cum,
            SMOOTH=act in SMOOTH,
            HAS_GL=True,
            HAS_GF=True,
            HAS_GU=False,
            HAS_GW=False,
            NEED_DX=True,
            STORE_INPUTS=store_inputs,
            COLS=layout.col_blocks(cols, "bwd"),
            INDEX64=index64,
            INPUTS_KMAJOR=inputs_kmajor,
        ),  # fmt: skip
    }


def persistent_constexprs(layout: Layout, bwd: dict, dtype: str, cols: int = 0,
                          recompute: bool = True, dw_tiles: int = 1) -> dict:  # fmt: skip
    """The persistent backward's constexprs (``persistent_backward.py``) as ``launch.py`` sets them,
    from the backward kernel's ``bwd`` (the same tiles, dots and seeds); ``recompute``: after
    a forward that kept nothing, else after one that saved its pre-activations; ``dw_tiles``:
    row tiles a span."""
    geometry = layout.weight_grad_constexprs(True)
    out = {k: v for k, v in bwd.items() if k not in ("STORE_INPUTS", "INDEX64", "INPUTS_KMAJOR")}
    out.update(
        NEED_PARAMS=True, FWD_COLS=layout.col_blocks(cols, "fwd"),
        Z_STRIDES=layout.hidden_stacks(True)["Z_STRIDES"], W_OFFS=geometry["W_OFFS"],
        DB_OFFS=geometry["B_OFFS"], N_PARTIAL=geometry["N_PARTIAL"], BM=geometry["BM"],
        BN=geometry["BN"], BK=geometry["BK"],
        DW_PRECISION="ieee" if dtype != "fp32" else _precisions(torch.float32, False)[1],
        RECOMPUTE=recompute, DW_TILES=dw_tiles,
    )  # fmt: skip
    return out


def compile_step(layout: Layout, rows: int, warps: int, act: int, precision: str, chunk: int,
                 dtype: str, arch: int, group: int | None = None, cols: int = 0,
                 kernels: tuple[str, ...] = ("fwd", "bwd"),
                 store_inputs: bool = True, index64: bool = False, aligned: bool = False,
                 inputs_kmajor: bool = False, dw_tiles: int = 1) -> Iterator[tuple]:  # fmt: skip
    """(name, compiled kernel) of the forward, backward and persistent ones (``kernels``:
    "fwd", "fwd_activated" (the forward storing its activated layers), "bwd",
    "fwd_persistent", "bwd_persistent", "bwd_persistent_saved", and "fwd_resident" and
    "bwd_resident", the resident kernels of a training step) for ``arch``
    (80, 90, ...); ``dtype`` is "fp32", "bf16" or "fp16". A variant that does not compile
    raises. ``aligned``: as launched on 16-byte aligned tensors and sizes that are multiples
    of 16 (``_aligned``), else assuming nothing of them. ``inputs_kmajor``: see
    step_constexprs; ``dw_tiles``: the persistent backward's row tiles a span."""
    constexprs = step_constexprs(layout, rows, warps, act, precision, chunk, group, cols,
                                 store_inputs, index64, inputs_kmajor)  # fmt: skip
    constexprs["bwd_persistent"] = persistent_constexprs(layout, constexprs["bwd"], dtype, cols,
                                                         dw_tiles=dw_tiles)  # fmt: skip
    constexprs["bwd_persistent_saved"] = persistent_constexprs(
        layout, constexprs["bwd"], dtype, cols, recompute=False, dw_tiles=dw_tiles)  # fmt: skip
    # the forward that keeps nothing, per row tile into scratch of its own
    # the chunked forward storing its activated layers (choices._forward_activated)
    constexprs["fwd_activated"] = dict(constexprs["fwd"], ACTIVATED=True)
    chunked_only = ("ACTIVATED", "STORE_Z", "A_OFFS", "A_STRIDES")
    fwd = {k: v for k, v in constexprs["fwd"].items() if k not in chunked_only}
    persistent = {k: v for k, v in fwd.items() if k != "INDEX64"}  # (64-bit tile offsets)
    constexprs["fwd_persistent"] = dict(persistent, **layout.hidden_stacks(save=False))
    constexprs["fwd_resident"] = dict(fwd, STORE_HIDDEN=True)
    constexprs["bwd_resident"] = constexprs["bwd"]
    every = [("fwd", _sobolev_fwd_kernel, _FWD_PTRS, _FWD_SCALARS),
             ("fwd_activated", _sobolev_fwd_kernel, _FWD_PTRS, _FWD_SCALARS),
             ("bwd", _sobolev_bwd_kernel, _BWD_PTRS, _BWD_SCALARS),
             ("fwd_persistent", _sobolev_fwd_persistent_kernel, _FWD_PTRS, _FWD_SCALARS),
             ("fwd_resident", _sobolev_fwd_resident_kernel, _FWD_PTRS, _FWD_SCALARS),
             ("bwd_resident", _sobolev_bwd_resident_kernel, _BWD_PTRS, _BWD_SCALARS),
             ("bwd_persistent", _sobolev_bwd_persistent_kernel, _PERSISTENT_PTRS,
              _BWD_SCALARS),
             ("bwd_persistent_saved", _sobolev_bwd_persistent_kernel, _PERSISTENT_PTRS,
              _BWD_SCALARS)]  # fmt: skip
    for name, kernel, ptrs, scalars in (entry for entry in every if entry[0] in kernels):
        sig = {}
        for p in ptrs.split():
            ty = "*" + ("fp32" if p in _FP32_PTRS else dtype)
            sig[p] = (ty,) * layout.num_layers if p.endswith("_ptrs") else ty
        sig.update(scalars)
        sig.update({c: "constexpr" for c in constexprs[name]})
        src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs[name],
                        attrs=_aligned(kernel, sig) if aligned else None)  # fmt: skip
        target = GPUTarget("cuda", arch, 32)
        yield name, triton.compile(src, target=target, options={"num_warps": warps})


def _aligned(kernel, signature: dict) -> dict:
    """The specialisation Triton's launcher gives a kernel where every pointer is 16-byte
    aligned (as torch allocates) and every integer a multiple of 16 (the benchmarks'
    batches): each such argument known divisible by 16. The pointers' alignment is what lets
    loads and stores be vectorised (``investigations/triton_alignment.py``); without it an
    ahead-of-time compile assumes nothing of them, unlike the launches on a GPU."""
    attrs, divisible = {}, [["tt.divisibility", 16]]
    for name, ty in signature.items():
        i = kernel.arg_names.index(name)
        if isinstance(ty, tuple):
            attrs.update({(i, j): divisible for j in range(len(ty))})
        elif ty.startswith("*") or ty == "i32":
            attrs[(i,)] = divisible
    return attrs


def compile_weight_grad(layout: Layout, precision: str, dtype: str, arch: int, warps: int = 4,
                        recompute: bool = False, act: int = 0,
                        aligned: bool = False, kmajor: bool = False,
                        stages: int | None = None, max_tile: int = 64) -> tuple:  # fmt: skip
    """(name, compiled) of the split-K weight-gradient kernel (``weight_grad.py``) as
    ``launch.py`` sets it up for a model with biases and per-sample directions: "dW" reading
    the inputs stacks (in ``dtype``), or "dW recompute" forming them from the fp32 saved
    pre-activations (activation ``act``), or "dW kmajor" reading transposed inputs stacks
    (choices._inputs_kmajor). ``aligned``: see compile_step. ``stages``: the row loop's
    software pipelining (None: Triton's default; 1: none, ``splitk_unpipelined``).
    ``max_tile``: the output tiles' largest side (128 on 8 warps: ``splitk_wide``)."""
    constexprs = dict(layout.weight_grad_constexprs(True, max_tile), ACT=act, SHARED=False,
                      RECOMPUTE=recompute, PRECISION=precision, EMULATE_BF16=False,
                      KMAJOR=kmajor)  # fmt: skip
    sig = {"adj_ptr": "*" + dtype, "inputs_ptr": "*" + ("fp32" if recompute else dtype),
           "x_ptr": "*" + dtype, "v_ptr": "*" + dtype, "part_ptr": "*fp32"}  # fmt: skip
    sig.update(dict.fromkeys(["batch", "stack", "first_rows", "rows_per_split"], "i32"))
    sig.update({"slope": "fp32"})
    sig.update({c: "constexpr" for c in constexprs})
    src = ASTSource(
        fn=_weight_grad_partials_kernel,
        signature=sig,
        constexprs=constexprs,
        attrs=_aligned(_weight_grad_partials_kernel, sig) if aligned else None,
    )
    target = GPUTarget("cuda", arch, 32)
    name = "dW recompute" if recompute else "dW kmajor" if kmajor else "dW"
    options = {"num_warps": warps}
    if stages is not None:
        name, options["num_stages"] = f"{name} stages={stages}", stages
    if max_tile != 64:
        name += f" tiles<={max_tile}"
    return name, triton.compile(src, target=target, options=options)


def _cuobjdump(compiled, *flags: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(compiled.asm["cubin"])
        fh.flush()
        return subprocess.run([str(tool), *flags, fh.name], capture_output=True,
                              text=True).stdout  # fmt: skip


def resources(compiled) -> dict[str, int]:
    """REG and STACK (bytes of local memory per thread: spills) from cuobjdump."""
    found = dict(re.findall(r"(REG|STACK):(\d+)", _cuobjdump(compiled, "--dump-resource-usage")))
    return {key: int(value) for key, value in found.items()}


def sass(compiled) -> str:
    """The kernel's SASS (cuobjdump -sass), e.g. to look for tensor-core instructions."""
    return _cuobjdump(compiled, "-sass")
