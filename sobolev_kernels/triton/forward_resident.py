"""The fused forward with its activations held in registers from layer to layer: the
"resident" variant of ``forward.py``'s kernel (same arguments, same outputs).

``forward.py`` stores each layer's [z; tz; ttz] and reloads them CHUNK columns at a time
for the next layer's K loop, with a barrier between: 16-row programs whose dots are
16 x 32 x n, on FMA units or small mma.sync tiles. The H200 run of 2026-11-27 measured that
forward at 1.0 ms for config M in fp32 (14 TFLOP/s) and 0.40 ms in bf16, the largest part
of the step. Here a program keeps its ROWS samples' value tile (ROWS, n) and tangent tiles
(GROUP * ROWS, n) in registers through every layer, and each layer is one whole-K dot per
stream tile against the layer's W^T (staged in shared memory once per program and layer):
no reloads, no barriers, and dots as large as the tile. The hidden pre-activations are
stored only where a backward will read them (STORE_HIDDEN).

Direction groups: each pass carries GROUP directions through all layers (the values are
recomputed per pass and stored by the first); GROUP = KP is one pass.

Measured on the H200 (2026-11-27, bench/results/h200-2026-11-27, run 4): at config M in bf16,
0.19 ms against the chunked kernel's best 0.41 ms, although ahead-of-time compiles for sm_90
show it spilling 2 KB a thread there (spills are not speed); in fp32 (3xTF32) it lost to the
chunked kernel's 64-row column-block tiles (0.95 against 0.61 ms), and on 8 warps with 64
rows it faulted (``Layout.tf32_splits_rows``). So the tuner offers it in bf16 (choices.py), and
only where the widest padded layer is at most RESIDENT_MAX_WIDTH (``Layout.resident_fits``):
whole W^T tiles of wider layers do not fit in shared memory next to their TF32 remainders.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .forward import _fwd_tangent_outputs, _fwd_value_outputs
from .tiles import _activate, _cast, _dot, _tile_rows, _weight_rows


@triton.jit
def _store_hidden(
    z_ptr, z, tz, ttz, pid, g, rows, row_ok, B, l: tl.constexpr, WIDTHS: tl.constexpr,
    PADS: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
    ORDER: tl.constexpr, SHARED: tl.constexpr, EMULATE_BF16: tl.constexpr,
    Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """Hidden layer l's [z (first pass only); tz; ttz] of direction group g into the saved
    stacks (``Layout.hidden_stacks``)."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    co = tl.arange(0, PADS[l + 1])
    col_ok = co[None, :] < WIDTHS[l + 1]
    base = z_ptr + S * B * Z_OFFS[l] + co[None, :]
    zt = z_ptr.dtype.element_ty
    if g == 0:
        tl.store(base + rows[:, None] * Z_STRIDES[l], _cast(z, zt, EMULATE_BF16),
                 mask=row_ok[:, None] & col_ok)  # fmt: skip
    ok = t_ok[:, None] & col_ok
    tl.store(base + t_rows[:, None] * Z_STRIDES[l], _cast(tz, zt, EMULATE_BF16), mask=ok)
    if ORDER == 2:
        tl.store(base + tt_rows[:, None] * Z_STRIDES[l], _cast(ttz, zt, EMULATE_BF16), mask=ok)


@triton.jit
def _resident_pass(
    x_ptr, v_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, u_ptr, w2_ptr, z_ptr, pid, g, rows, row_ok,
    B, slope, WIDTHS: tl.constexpr, PADS: tl.constexpr, NUM_LAYERS: tl.constexpr,
    K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    ACT: tl.constexpr, SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    STORE_HIDDEN: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """Values and direction group g through every layer: f's tile (ROWS, MP) in fp32,
    u and w stored, and the sums of squares of u - g and w - g2."""
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    ci = tl.arange(0, PADS[0])
    in_ok = ci[None, :] < D
    h = tl.load(x_ptr + rows[:, None] * D + ci[None, :], mask=row_ok[:, None] & in_ok,
                other=0.0)  # fmt: skip
    t = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :], mask=t_ok[:, None] & in_ok,
                other=0.0)  # fmt: skip
    tt = t  # tt_0 = 0: layer 0 has no second-order dot
    z = tl.zeros((ROWS, MP), tl.float32)
    tz = tl.zeros((GROUP * ROWS, MP), tl.float32)
    ttz = tz
    for l in tl.static_range(NUM_LAYERS):
        # Per-layer sizes are read as WIDTHS[l] / PADS[l] in place (see forward.py).
        wt = _weight_rows(w_ptrs[l], tl.arange(0, PADS[l]), tl.arange(0, PADS[l + 1]),
                          WIDTHS[l], WIDTHS[l + 1], True)  # fmt: skip
        z = _dot(h, wt, PRECISION, EMULATE_BF16)
        tz = _dot(t, wt, PRECISION, EMULATE_BF16)
        if ORDER == 2:
            if l == 0:
                ttz = tz * 0.0  # tt_0 = 0 (tl.zeros of PADS[1] columns fails to compile)
            else:
                ttz = _dot(tt, wt, PRECISION, EMULATE_BF16)
        if HAS_BIAS:
            co = tl.arange(0, PADS[l + 1])
            bias = tl.load(b_ptrs[l] + co, mask=co < WIDTHS[l + 1], other=0.0)
            z += bias.to(tl.float32)[None, :]
        if l < NUM_LAYERS - 1:
            if STORE_HIDDEN:
                _store_hidden(z_ptr, z, tz, ttz, pid, g, rows, row_ok, B, l, WIDTHS, PADS, K,
                              GROUP, ROWS, ORDER, SHARED, EMULATE_BF16, Z_OFFS,
                              Z_STRIDES)  # fmt: skip
            h, t, tt = _activate(z, tz, ttz, slope, ACT, GROUP, ROWS, ORDER)
    sum_u, sum_w = _fwd_tangent_outputs(
        tz, ttz, v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, pid, g, rows, row_ok, B, D, M, MP, K,
        GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2, EMULATE_BF16,
    )  # fmt: skip
    return z, sum_u, sum_w


@triton.jit
def _sobolev_fwd_resident_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs,
    f_ptr, u_ptr, w2_ptr, z_ptr, act_ptr, partial_ptr,
    B, slope,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    ROWS: tl.constexpr, GROUP: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr, COLS: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
    STORE_HIDDEN: tl.constexpr, INDEX64: tl.constexpr,
):  # fmt: skip
    """``_sobolev_fwd_kernel``'s arguments (CHUNKS and COLS unused: whole-K dots, all
    columns; act_ptr unread: activations stay in registers; not its ACTIVATED, STORE_Z,
    A_OFFS, A_STRIDES), and STORE_HIDDEN: whether the hidden pre-activations go to the saved
    stacks."""
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]
    pid = tl.program_id(0)
    if INDEX64:  # an offset may pass 2^31 elements (launch._index64)
        pid = pid.to(tl.int64)
        B = tl.cast(B, tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    z, sum_u, sum_w = _resident_pass(
        x_ptr, v_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, u_ptr, w2_ptr, z_ptr, pid, 0, rows,
        row_ok, B, slope, WIDTHS, PADS, NUM_LAYERS, K, GROUP, ROWS, ORDER, ACT, SHARED,
        HAS_BIAS, TARGET, TARGET2, PRECISION, EMULATE_BF16, STORE_HIDDEN, Z_OFFS, Z_STRIDES,
    )  # fmt: skip
    if KP // GROUP > 1:
        for g in tl.range(1, KP // GROUP):
            z_unused, group_u, group_w = _resident_pass(
                x_ptr, v_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, u_ptr, w2_ptr, z_ptr, pid, g,
                rows, row_ok, B, slope, WIDTHS, PADS, NUM_LAYERS, K, GROUP, ROWS, ORDER, ACT,
                SHARED, HAS_BIAS, TARGET, TARGET2, PRECISION, EMULATE_BF16, STORE_HIDDEN,
                Z_OFFS, Z_STRIDES,
            )  # fmt: skip
            sum_u += group_u
            sum_w += group_w
    sum_f = _fwd_value_outputs(z, y_ptr, f_ptr, rows, row_ok, M, MP, HAS_Y, EMULATE_BF16)
    tl.store(partial_ptr + pid * 3, sum_f)
    tl.store(partial_ptr + pid * 3 + 1, sum_u)
    tl.store(partial_ptr + pid * 3 + 2, sum_w)
