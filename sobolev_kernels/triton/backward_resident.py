"""The fused backward with its adjoints held in registers from layer to layer: the "resident"
variant of ``backward.py``'s kernel (same arguments, same outputs), as
``forward_resident.py`` is of the forward.

``backward.py`` stores each layer's adjoints A_l = [a_z; a_tz; a_ttz] and reloads them CHUNK
columns at a time for the product with W_l, a barrier between. Here a program keeps its ROWS
samples' adjoint tiles in registers, top down, and each layer is one whole-K dot per stream
tile against W_l (staged in shared memory once per program and layer). A_l is still stored
(the weight gradients read it), as are the bias partials, dL/dx and, with STORE_INPUTS, the
layer inputs; the seeds and the formulas are backward.py's.

All K directions ride in one pass (GROUP = KP): a_z sums over every direction's terms, so a
pass per group would need a_z carried between passes. Offered where the resident forward is
(``Layout.resident_fits``), and only on request (SOBOLEV_TRITON_BACKWARD_KERNEL=resident in
choices.py) until a GPU has measured it: the resident forward ran 2.2x faster than the
chunked one in bf16 on the H200 (2026-11-27), and lost in fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import act_series
from .backward import _bwd_seeds
from .tiles import (
    _by_direction,
    _cast,
    _dot,
    _rows,
    _stack_offsets,
    _tile_rows,
    _weight_rows,
)


@triton.jit
def _sobolev_bwd_resident_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, z_ptr, f_ptr, u_ptr, w2_ptr,
    gloss_ptr, gf_ptr, gu_ptr, gw_ptr,
    a_ptr, s_ptr, dx_ptr, db_ptr,
    B, slope, coef_f, coef_u, coef_w,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr, GROUP: tl.constexpr,
    ORDER: tl.constexpr, ACT: tl.constexpr, SMOOTH: tl.constexpr, SHARED: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr, TARGET2: tl.constexpr,
    HAS_GL: tl.constexpr, HAS_GF: tl.constexpr, HAS_GU: tl.constexpr, HAS_GW: tl.constexpr,
    NEED_DX: tl.constexpr, STORE_INPUTS: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, COLS: tl.constexpr,
    INDEX64: tl.constexpr, INPUTS_KMAJOR: tl.constexpr,
):  # fmt: skip
    """``_sobolev_bwd_kernel``'s arguments (CHUNKS and COLS unused: whole-K dots, all
    columns; GROUP must be KP)."""
    tl.static_assert(GROUP == KP, "the resident backward carries every direction at once")
    D: tl.constexpr = WIDTHS[0]
    S: tl.constexpr = 1 + ORDER * K
    NB: tl.constexpr = B_OFFS[NUM_LAYERS - 1] + WIDTHS[NUM_LAYERS]  # biases in all layers
    pid = tl.program_id(0)
    if INDEX64:  # an offset may pass 2^31 elements (launch._index64)
        pid = pid.to(tl.int64)
        B = tl.cast(B, tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, 0, B, K, KP, ROWS, SHARED
    )
    at_ty = a_ptr.dtype.element_ty
    st_ty = s_ptr.dtype.element_ty
    # A_L: the seeds (stored, and the output layer's bias partials, by _bwd_seeds)
    a, at, att = _bwd_seeds(
        v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, gloss_ptr, gf_ptr, gu_ptr, gw_ptr,
        a_ptr, db_ptr, pid, rows, row_ok, B, coef_f, coef_u, coef_w, WIDTHS, PADS, B_OFFS,
        OUT_CUM, NUM_LAYERS, K, KP, KP, ROWS, ORDER, SHARED, HAS_BIAS, HAS_Y, TARGET,
        TARGET2, HAS_GL, HAS_GF, HAS_GU, HAS_GW, EMULATE_BF16,
    )  # fmt: skip
    for l in tl.static_range(NUM_LAYERS - 1, -1, -1):  # top down; sizes in place (see forward)
        wl = _weight_rows(w_ptrs[l], tl.arange(0, PADS[l + 1]), tl.arange(0, PADS[l]),
                          WIDTHS[l + 1], WIDTHS[l], False)  # fmt: skip
        ci = tl.arange(0, PADS[l])
        in_col = ci[None, :] < WIDTHS[l]
        if l > 0:
            # [a_h; a_t; a_tt] = A_l W_l, through the activation of hidden layer l into A_{l-1}
            a_h = _dot(a, wl, PRECISION, EMULATE_BF16)
            a_t3 = _by_direction(_dot(at, wl, PRECISION, EMULATE_BF16), KP, ROWS)
            z_base = z_ptr + S * B * OUT_CUM[l - 1]
            s_base = s_ptr + S * B * IN_CUM[l]
            a_base = a_ptr + S * B * OUT_CUM[l - 1]
            v_off = rows[:, None] * WIDTHS[l] + ci[None, :]
            t_off = t_rows[:, None] * WIDTHS[l] + ci[None, :]
            tt_off = tt_rows[:, None] * WIDTHS[l] + ci[None, :]
            v_ok = row_ok[:, None] & in_col
            ok = t_ok[:, None] & in_col
            z = tl.load(z_base + v_off, mask=v_ok, other=0.0).to(tl.float32)
            s, s1, s2, s3 = act_series(z, slope, ACT)
            tz3 = _by_direction(tl.load(z_base + t_off, mask=ok, other=0.0).to(tl.float32), KP,
                                ROWS)  # fmt: skip
            if STORE_INPUTS:
                tl.store(s_base + _stack_offsets(rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                         _cast(s, st_ty, EMULATE_BF16), mask=v_ok)  # fmt: skip
                tl.store(s_base + _stack_offsets(t_rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                         _cast(_rows(tz3 * s1[None, :, :], KP, ROWS), st_ty, EMULATE_BF16),
                         mask=ok)  # fmt: skip
            a_z = a_h * s1
            if ORDER == 2:
                a_tt3 = _by_direction(_dot(att, wl, PRECISION, EMULATE_BF16), KP, ROWS)
                ttz3 = _by_direction(tl.load(z_base + tt_off, mask=ok, other=0.0).to(tl.float32),
                                     KP, ROWS)  # fmt: skip
                if STORE_INPUTS:
                    tt_in = ttz3 * s1[None, :, :] + tz3 * tz3 * s2[None, :, :]
                    tl.store(s_base
                             + _stack_offsets(tt_rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                             _cast(_rows(tt_in, KP, ROWS), st_ty, EMULATE_BF16),
                             mask=ok)  # fmt: skip
                if SMOOTH:
                    a_z += s2 * tl.sum(a_t3 * tz3 + a_tt3 * ttz3, axis=0)
                    a_z += s3 * tl.sum(a_tt3 * tz3 * tz3, axis=0)
                    at = _rows(a_t3 * s1[None, :, :] + 2.0 * s2[None, :, :] * a_tt3 * tz3, KP,
                               ROWS)  # fmt: skip
                else:
                    at = _rows(a_t3 * s1[None, :, :], KP, ROWS)
                att = _rows(a_tt3 * s1[None, :, :], KP, ROWS)
                tl.store(a_base + tt_off, _cast(att, at_ty, EMULATE_BF16), mask=ok)
            else:
                if SMOOTH:
                    a_z += s2 * tl.sum(a_t3 * tz3, axis=0)
                at = _rows(a_t3 * s1[None, :, :], KP, ROWS)
            tl.store(a_base + t_off, _cast(at, at_ty, EMULATE_BF16), mask=ok)
            tl.store(a_base + v_off, _cast(a_z, at_ty, EMULATE_BF16), mask=v_ok)
            if HAS_BIAS:
                tl.store(db_ptr + pid * NB + B_OFFS[l - 1] + ci, tl.sum(a_z, axis=0),
                         mask=ci < WIDTHS[l])  # fmt: skip
            a = a_z
        else:
            if STORE_INPUTS:
                # layer 1's inputs: S_0 = [x; v] (tt_0 = 0 adds nothing to dW_1)
                s_base = s_ptr + S * B * IN_CUM[0]
                x = tl.load(x_ptr + rows[:, None] * D + ci[None, :],
                            mask=row_ok[:, None] & in_col, other=0.0)  # fmt: skip
                tl.store(s_base + _stack_offsets(rows, ci, D, S * B, INPUTS_KMAJOR),
                         x.to(st_ty), mask=row_ok[:, None] & in_col)  # fmt: skip
                v = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :],
                            mask=t_ok[:, None] & in_col, other=0.0)  # fmt: skip
                tl.store(s_base + _stack_offsets(t_rows, ci, D, S * B, INPUTS_KMAJOR),
                         v.to(st_ty), mask=t_ok[:, None] & in_col)  # fmt: skip
            if NEED_DX:  # dL/dx = a_z W_1 (the value rows of A_1)
                dx = _dot(a, wl, PRECISION, EMULATE_BF16)
                tl.store(dx_ptr + rows[:, None] * D + ci[None, :],
                         _cast(dx, dx_ptr.dtype.element_ty, EMULATE_BF16),
                         mask=row_ok[:, None] & in_col)  # fmt: skip
