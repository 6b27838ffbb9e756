"""Compile the Triton kernels for real GPUs ahead of time, with no GPU: catch what the
interpreter cannot (GPU-only compile errors, shared memory over an architecture's limit) and
report registers, stack (spills) and shared memory of every variant.

    python scripts/check_triton_compile.py            # the default set, sm_80 and sm_90
    python scripts/check_triton_compile.py --quick    # two small variants, sm_90 (CI;
                                                      # fewer forms of the bf16 one)
    python scripts/check_triton_compile.py --quick --core  # their main kernels only (CI,
                                                      # with the newer triton)

Each variant compiles as the static launch and as the autotuner's tensor-core candidate
(fp32: 3xTF32 dots; its forward also in the form that stores its activated layers), the
static launch with 64-bit indices (past 2^31 elements), the static backward once more
without its inputs stores (the ``recompute`` weight gradients' backward), the persistent
forward and backward of a step that keeps nothing and the persistent backward after one
that saves (``persistent_backward.py``; both backwards also on spans of row tiles), the
split-K weight-gradient kernel with tensor-core dots, reading the stored inputs and forming
them itself (recompute), in fp32 the tensor-core candidate and the split-K kernel with the
kernels' own 3xTF32 dots (``SOBOLEV_TRITON_TF32X3=split``), in fp32 the split-K kernel (its
row loop pipelined and not) and the backward with the inputs stacks transposed
(``SOBOLEV_TRITON_INPUTS_LAYOUT=kmajor``), and the resident forward and backward
(``forward_resident.py``, ``backward_resident.py``) in their configs.
Exit status 1 if one fails to compile, needs more shared memory than the backend estimated
(the estimate decides whether a problem fits), or, as a tensor-core launch, has no
tensor-core instruction in its SASS. Resource surveys over launch configs live in
investigations/triton_resource_survey.py.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences a 3.9 notice; same default
os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU even when tests interpret

from sobolev_kernels.triton.aot import (  # noqa: E402
    SHARED_LIMIT,
    compile_step,
    compile_weight_grad,
    resources,
    sass,
)
from sobolev_kernels.triton.choices import _with_dw_tiles  # noqa: E402
from sobolev_kernels.triton.layout import MIN_PAD, Layout  # noqa: E402
from sobolev_kernels.triton.parameter_grads import _splitk_tiles  # noqa: E402

# (widths, K, order, dtype, activation id): the configs of bench/step.py and the edges
VARIANTS = [
    ((2, 64, 64, 64, 1), 1, 1, "fp32", 0),  # S
    ((16, 128, 128, 128, 8), 2, 1, "fp32", 0),  # M
    ((16, 128, 128, 128, 8), 2, 2, "fp32", 3),  # M, order 2, silu
    ((64, 256, 256, 256, 256, 256, 16), 4, 1, "bf16", 5),  # L: refused on sm_90
    ((16, 128, 128, 128, 8), 8, 1, "bf16", 6),  # many directions, relu
    ((16, 128, 128, 8), 16, 1, "fp32", 0),  # fp32, K = 16: fewer rows on sm_80
    ((3, 17, 5, 1), 3, 2, "fp16", 2),  # odd widths, padding
]
# CI: small tiles compile in seconds and still go through every code path of both kernels
QUICK = [((4, 32, 24, 2), 3, 2, "fp32", 3), ((3, 17, 5, 1), 3, 1, "bf16", 7)]


def check(variant, arch: int, quick: bool = False, core: bool = False) -> list[str]:
    """Compile one variant as the launchers would on ``arch`` (the static launch, and the
    autotuner's tensor-core candidate); report, and list problems: a compile error, more
    shared memory than Layout.shared_bytes estimated, or a tensor-core candidate whose SASS
    holds no tensor-core instruction (HMMA: mma.sync; HGMMA: wgmma on sm_90). ``core``: the
    forward, backward and split-K kernels on those two configs only."""
    widths, k, order, dtype, act = variant
    layout = Layout(widths, k, order)
    size = 4 if dtype == "fp32" else 2
    if layout.shared_bytes(MIN_PAD, size) > SHARED_LIMIT[arch]:
        print(f"sm_{arch} widths={widths} K={k} order={order} {dtype}: does not fit, the "
              "backend refuses it (auto falls back)")  # fmt: skip
        return []
    static = layout.static_config(size, SHARED_LIMIT[arch])
    tensor_core = layout.tensor_core_config("tf32x3" if dtype == "fp32" else "ieee")
    problems = []
    for config, needs_tensor_cores in ((static, dtype != "fp32"), (tensor_core, True)):
        problems += _check_config(layout, config, variant, arch, needs_tensor_cores)
    if dtype == "fp32":  # the column-block tiles of 128 rows on 8 warps (fp32 candidates)
        wide = layout.tensor_core_config(tensor_core.precision, rows=128)
        problems += _check_config(layout, wide, variant, arch, True)
    if core:
        return problems + _check_weight_grad(layout, tensor_core.precision, variant, arch, False)
    # the tuner's activated twin of the tensor-core candidate (choices._forward_activated)
    if layout.activates_per_pass(tensor_core):
        problems += _check_config(layout, tensor_core, variant, arch, True, ("fwd_activated",))
    # (quick, CI: the inputs stores and the index width are the same code in every dtype:
    # the fp32 variant's compiles cover them; a cold compile of every kernel takes minutes)
    if not quick or dtype == "fp32":
        problems += _check_config(layout, static, variant, arch, dtype != "fp32", ("bwd",),
                                  False)  # fmt: skip
        # the static launch with 64-bit indices (choices._index64: past 2^31 elements)
        problems += _check_config(layout, static, variant, arch, dtype != "fp32", index64=True)
    # the persistent kernels: of a step that keeps nothing, and the backward after a forward
    # that saved (the backward's weight gradients on tensor cores in every dtype)
    problems += _check_config(layout, static, variant, arch, dtype != "fp32", ("fwd_persistent",))
    problems += _check_config(layout, static, variant, arch, True,
                              ("bwd_persistent", "bwd_persistent_saved"))  # fmt: skip
    # its tuner twin on spans of row tiles (choices._with_dw_tiles), after either forward
    spans = _with_dw_tiles(layout, [static], static.precision)[-1]
    problems += _check_config(layout, spans._replace(dw_tiles=max(2, spans.dw_tiles)), variant,
                              arch, True, ("bwd_persistent", "bwd_persistent_saved"))  # fmt: skip
    for recompute in (False, True):
        problems += _check_weight_grad(layout, tensor_core.precision, variant, arch, recompute)
    # the split-K kernel on output tiles of up to 128, 8 warps (splitk_wide, recompute_wide),
    # on a model that takes them: at widths of 64 and less they are splitk's (_splitk_tiles)
    wider = widths if max(widths) > 64 else (widths[0], 80, *widths[2:])
    for recompute in (False, True):
        problems += _check_weight_grad(Layout(wider, k, order), tensor_core.precision,
                                       (wider, *variant[1:]), arch, recompute,
                                       wide=True)  # fmt: skip
    if dtype == "fp32":  # the inputs stacks transposed (SOBOLEV_TRITON_INPUTS_LAYOUT=kmajor),
        # with the row loop pipelined or not (splitk_unpipelined)
        for stages in (None, 1):
            problems += _check_weight_grad(layout, tensor_core.precision, variant, arch, False,
                                           True, stages)  # fmt: skip
        if not quick:  # (quick: the backward's stores differ by their offsets only)
            problems += _check_config(layout, static, variant, arch, False, ("bwd",),
                                      inputs_kmajor=True)  # fmt: skip
    if dtype == "fp32":  # the kernels' own 3xTF32 dots (SOBOLEV_TRITON_TF32X3=split)
        split = tensor_core._replace(precision="tf32x3_split")
        if not quick:  # (quick: the split-K kernel compiles the same tiles._dot_acc)
            problems += _check_config(layout, split, variant, arch, True)
        problems += _check_weight_grad(layout, split.precision, variant, arch, False)
    # the resident kernels in their configs (the forward: the tuner's in bf16, else forced;
    # the backward forced, where it carries every direction at once); the interpreter missed
    # a compile error of the forward's order 2
    for kernel in ("fwd", "bwd"):
        for config in layout.resident_configs(size, SHARED_LIMIT[arch], tensor_core.precision,
                                              kernel):  # fmt: skip
            problems += _check_config(layout, config, variant, arch, True, (f"{kernel}_resident",))
    return problems


def _check_weight_grad(layout, precision, variant, arch, recompute, kmajor=False,
                       stages=None, wide=False) -> list[str]:  # fmt: skip
    """The split-K weight-gradient kernel: it compiles, fits in shared memory and runs its
    products on tensor cores (3xTF32 for fp32)."""
    label = f"sm_{arch} widths={variant[0]} K={variant[1]} order={variant[2]} {variant[3]} " \
            f"{precision}"  # fmt: skip
    try:
        tiles, warps = _splitk_tiles(layout, wide)
        name, compiled = compile_weight_grad(layout, precision, variant[3], arch, warps,
                                             recompute=recompute, act=variant[4], kmajor=kmajor,
                                             stages=stages, max_tile=tiles)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - report every failing variant
        print(f"{label}: compile error: {str(exc).strip().splitlines()[-1]}")
        return [f"{label}: compile error: {str(exc).strip().splitlines()[-1]}"]
    shared, res = compiled.metadata.shared, resources(compiled)
    tensor_ops = len(re.findall(r"\bH(?:G)?MMA\b", sass(compiled)))
    print(f"{label} {name}: shared={shared} reg={res.get('REG')} stack={res.get('STACK')} "
          f"tensor-core instructions={tensor_ops}")  # fmt: skip
    problems = []
    if shared > SHARED_LIMIT[arch]:
        problems.append(f"{label}: {shared} bytes of shared memory > {SHARED_LIMIT[arch]}")
    if tensor_ops == 0:
        problems.append(f"{label}: no tensor-core instruction in the SASS")
    return problems


def _check_config(layout, config, variant, arch, needs_tensor_cores, kernels=("fwd", "bwd"),
                  store_inputs=True, index64=False, inputs_kmajor=False) -> list[str]:  # fmt: skip
    widths, k, order, dtype, act = variant
    size = 4 if dtype == "fp32" else 2
    estimate = layout.shared_bytes(config.rows, size, config.chunk, config.group,
                                   config.precision, config.cols)  # fmt: skip
    label = (
        f"sm_{arch} widths={widths} K={k} order={order} {dtype} act={act} rows="
        f"{config.rows} warps={config.warps} {config.precision} cols={config.cols or 'all'}"
        + ("" if store_inputs else " no inputs stores")
        + (" 64-bit indices" if index64 else "")
        + (" inputs k-major" if inputs_kmajor else "")
        + (f" spans of {config.dw_tiles} tiles" if config.dw_tiles > 1 else "")
    )
    problems = []
    start = time.perf_counter()
    try:
        for name, compiled in compile_step(layout, config.rows, config.warps, act,
                                           config.precision, config.chunk, dtype, arch,
                                           config.group, config.cols, kernels,
                                           store_inputs, index64,
                                           inputs_kmajor=inputs_kmajor,
                                           dw_tiles=config.dw_tiles):  # fmt: skip
            shared, res = compiled.metadata.shared, resources(compiled)
            tensor_ops = len(re.findall(r"\bH(?:G)?MMA\b", sass(compiled)))
            print(f"{label} {name}: shared={shared} (estimated {estimate}) reg={res.get('REG')} "
                  f"stack={res.get('STACK')} tensor-core instructions={tensor_ops} "
                  f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
            # (the persistent backward and the resident forward are not part of the fit
            # estimate, Layout.shared_bytes: the architecture's limit is their bound)
            own = name.startswith("bwd_persistent") or name.endswith("_resident")
            bound = SHARED_LIMIT[arch] if own else estimate
            if shared > bound:
                problems.append(f"{label} {name}: {shared} bytes of shared memory > {bound}")
            if needs_tensor_cores and tensor_ops == 0:
                problems.append(f"{label} {name}: no tensor-core instruction in the SASS")
            start = time.perf_counter()
    except Exception as exc:  # noqa: BLE001 - report every failing variant
        problems.append(f"{label}: compile error: {str(exc).strip().splitlines()[-1]}")
        print(problems[-1])
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small variants on sm_90")
    parser.add_argument("--core", action="store_true",
                        help="the forward, backward and split-K kernels only")  # fmt: skip
    args = parser.parse_args(argv)
    variants, archs = (QUICK, [90]) if args.quick else (VARIANTS, [80, 90])
    problems = [p for arch in archs for v in variants
                for p in check(v, arch, args.quick, args.core)]  # fmt: skip
    print("\n".join(["", *problems]) if problems else "check_triton_compile: ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
