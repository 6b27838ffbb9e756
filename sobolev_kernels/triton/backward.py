"""The fused backward kernel: the adjoint recursion of the MLP's values and tangent streams
for one program's rows, top down (docs/math.md, DESIGN section 2).

Seeds, with gl = dL/dloss and the gradients a user's own loss sends to f, u and w:

    a_f = gl 2 alpha / (B m) (f - y) + dL/df,   a_u_k = gl 2 beta / (B K m) (u_k - g_k) + dL/du_k,
    a_w_k = gl 2 gamma / (B K m) (w_k - g2_k) + dL/dw_k

(the residuals are formed again here from the forward's outputs and the targets). Then for
every layer l, top down, A_l = [a_z; a_tz; a_ttz] and, through the activation below,

    a_z     = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
    a_tz_k  = a_t_k s' + 2 s'' a_tt_k tz_k
    a_ttz_k = a_tt_k s'

with [a_h; a_t; a_tt] = A_l W_l (order 1: no tt terms). The kernel writes each layer's
stacked adjoints A_l, per-program bias partials, dL/dx (its dots reload A_l in K chunks from
where it stored it) and, with STORE_INPUTS, the inputs S_{l-1} = [h; t; tt] (recomputed from
the saved pre-activations); ``weight_grad.py`` then forms dW_l = A_l^T S_{l-1} over the
(1 + order K) B stacked rows (from the stored S, or forming S again as it reads), and sums
the bias partials.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import act_series
from .tiles import (
    _by_direction,
    _cast,
    _dot,
    _rows,
    _stack_offsets,
    _target_second,
    _target_tangents,
    _tile_rows,
    _weight_rows,
)


@triton.jit
def _bwd_layer(
    a_ptr, w_ptrs, pid, g, ci, rows, row_ok, B, l: tl.constexpr, NB: tl.constexpr,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, OUT_CUM: tl.constexpr,
    K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    SHARED: tl.constexpr, VALUES: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    """Columns ci (NB of them) of [a_t; a_tt] = [a_tz; a_ttz] W_l for direction group g (on
    layer 1: none), and with VALUES also of a_h = a_z W_l: a K loop over A_l as stored,
    CHUNKS[l + 1] columns at a time."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    a_h = tl.zeros((ROWS, NB), tl.float32)
    a_t = tl.zeros((GROUP * ROWS, NB), tl.float32)
    a_tt = tl.zeros((GROUP * ROWS, NB), tl.float32)
    for c0 in tl.range(0, PADS[l + 1], CHUNKS[l + 1], num_stages=1):
        cc = c0 + tl.arange(0, CHUNKS[l + 1])
        cc_ok = cc[None, :] < WIDTHS[l + 1]
        wc = _weight_rows(w_ptrs[l], cc, ci, WIDTHS[l + 1], WIDTHS[l], False)
        src = a_ptr + S * B * OUT_CUM[l] + cc[None, :]
        if VALUES:
            ac = tl.load(src + rows[:, None] * WIDTHS[l + 1], mask=row_ok[:, None] & cc_ok,
                         other=0.0)  # fmt: skip
            a_h += _dot(ac, wc, PRECISION, EMULATE_BF16)
        if l > 0:
            atc = tl.load(src + t_rows[:, None] * WIDTHS[l + 1], mask=t_ok[:, None] & cc_ok,
                          other=0.0)  # fmt: skip
            a_t += _dot(atc, wc, PRECISION, EMULATE_BF16)
            if ORDER == 2:
                attc = tl.load(src + tt_rows[:, None] * WIDTHS[l + 1],
                               mask=t_ok[:, None] & cc_ok, other=0.0)  # fmt: skip
                a_tt += _dot(attc, wc, PRECISION, EMULATE_BF16)
    return a_h, a_t, a_tt


@triton.jit
def _bwd_tangents(
    a_z, a_t, a_tt, s1, s2, s3, z_ptr, a_ptr, s_ptr, ci, pid, g, B, l: tl.constexpr,
    WIDTHS: tl.constexpr, OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, SMOOTH: tl.constexpr,
    SHARED: tl.constexpr, STORE_INPUTS: tl.constexpr, EMULATE_BF16: tl.constexpr,
    INPUTS_KMAJOR: tl.constexpr = False,
):  # fmt: skip
    """Columns ci of hidden layer l (the input side of W_l), direction group g: stores the
    tangent rows of A_{l-1} = [a_z; a_tz; a_ttz] and, with STORE_INPUTS, of S_{l-1} = [h; t;
    tt] (recomputed from the saved pre-activations; INPUTS_KMAJOR: transposed, see
    tiles._stack_offsets); returns a_z plus the group's term (its sum over directions)."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    ok = t_ok[:, None] & (ci[None, :] < WIDTHS[l])
    t_off = t_rows[:, None] * WIDTHS[l] + ci[None, :]
    tt_off = tt_rows[:, None] * WIDTHS[l] + ci[None, :]
    z_base = z_ptr + S * B * OUT_CUM[l - 1]
    s_base = s_ptr + S * B * IN_CUM[l]
    a_base = a_ptr + S * B * OUT_CUM[l - 1]
    st_ty = s_ptr.dtype.element_ty
    at_ty = a_ptr.dtype.element_ty
    # (a_t reshaped before the loads: after them, config M took 255 registers and spilled)
    a_t3 = _by_direction(a_t, GROUP, ROWS)
    tz3 = _by_direction(tl.load(z_base + t_off, mask=ok, other=0.0).to(tl.float32), GROUP, ROWS)
    if STORE_INPUTS:
        t_in = _rows(tz3 * s1[None, :, :], GROUP, ROWS)
        tl.store(s_base + _stack_offsets(t_rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                 _cast(t_in, st_ty, EMULATE_BF16), mask=ok)  # fmt: skip
    if ORDER == 2:
        ttz = tl.load(z_base + tt_off, mask=ok, other=0.0).to(tl.float32)
        ttz3 = _by_direction(ttz, GROUP, ROWS)
        if STORE_INPUTS:
            tt_in = _rows(ttz3 * s1[None, :, :] + tz3 * tz3 * s2[None, :, :], GROUP, ROWS)
            tl.store(s_base + _stack_offsets(tt_rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                     _cast(tt_in, st_ty, EMULATE_BF16), mask=ok)  # fmt: skip
        a_tt3 = _by_direction(a_tt, GROUP, ROWS)
        if SMOOTH:
            a_z += s2 * tl.sum(a_t3 * tz3 + a_tt3 * ttz3, axis=0)
            a_z += s3 * tl.sum(a_tt3 * tz3 * tz3, axis=0)
            at = _rows(a_t3 * s1[None, :, :] + 2.0 * s2[None, :, :] * a_tt3 * tz3, GROUP, ROWS)
        else:
            at = _rows(a_t3 * s1[None, :, :], GROUP, ROWS)
        att = _rows(a_tt3 * s1[None, :, :], GROUP, ROWS)
        tl.store(a_base + tt_off, _cast(att, at_ty, EMULATE_BF16), mask=ok)
    else:
        if SMOOTH:
            a_z += s2 * tl.sum(a_t3 * tz3, axis=0)
        at = _rows(a_t3 * s1[None, :, :], GROUP, ROWS)
    tl.store(a_base + t_off, _cast(at, at_ty, EMULATE_BF16), mask=ok)
    return a_z


@triton.jit
def _bwd_hidden_block(
    a_ptr, s_ptr, z_ptr, w_ptrs, db_ptr, pid, n0, rows, row_ok, B, slope, l: tl.constexpr,
    NB: tl.constexpr, WIDTHS: tl.constexpr, PADS: tl.constexpr,
    B_OFFS: tl.constexpr, OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, K: tl.constexpr,
    KP: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    ACT: tl.constexpr, SMOOTH: tl.constexpr, SHARED: tl.constexpr, HAS_BIAS: tl.constexpr,
    NUM_BIASES: tl.constexpr, STORE_INPUTS: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, INPUTS_KMAJOR: tl.constexpr = False,
):  # fmt: skip
    """Columns n0 .. n0 + NB of hidden layer l (the input side of W_l): [a_h; a_t; a_tt] =
    A_l W_l for every direction group, through the activation into A_{l-1}, and (with
    STORE_INPUTS) S_{l-1} recomputed from the saved pre-activations; this program's bias
    partials of layer l - 1."""
    S: tl.constexpr = 1 + ORDER * K
    ci = n0 + tl.arange(0, NB)
    in_col = ci[None, :] < WIDTHS[l]
    a_h, a_t, a_tt = _bwd_layer(
        a_ptr, w_ptrs, pid, 0, ci, rows, row_ok, B, l, NB, WIDTHS, PADS, OUT_CUM, K,
        GROUP, ROWS, ORDER, SHARED, True, PRECISION, EMULATE_BF16, CHUNKS,
    )  # fmt: skip
    # saved pre-activations of hidden layer l (the input side of W_l)
    z = tl.load(z_ptr + S * B * OUT_CUM[l - 1] + rows[:, None] * WIDTHS[l] + ci[None, :],
                mask=row_ok[:, None] & in_col, other=0.0).to(tl.float32)  # fmt: skip
    s, s1, s2, s3 = act_series(z, slope, ACT)
    if STORE_INPUTS:
        tl.store(s_ptr + S * B * IN_CUM[l]
                 + _stack_offsets(rows, ci, WIDTHS[l], S * B, INPUTS_KMAJOR),
                 _cast(s, s_ptr.dtype.element_ty, EMULATE_BF16),
                 mask=row_ok[:, None] & in_col)  # fmt: skip
    a_z = _bwd_tangents(
        a_h * s1, a_t, a_tt, s1, s2, s3, z_ptr, a_ptr, s_ptr, ci, pid, 0, B, l, WIDTHS,
        OUT_CUM, IN_CUM, K, GROUP, ROWS, ORDER, SMOOTH, SHARED, STORE_INPUTS, EMULATE_BF16,
        INPUTS_KMAJOR,
    )  # fmt: skip
    if KP // GROUP > 1:
        for g in tl.range(1, KP // GROUP):
            a_h_unused, a_t, a_tt = _bwd_layer(
                a_ptr, w_ptrs, pid, g, ci, rows, row_ok, B, l, NB, WIDTHS, PADS,
                OUT_CUM, K, GROUP, ROWS, ORDER, SHARED, False, PRECISION, EMULATE_BF16, CHUNKS,
            )  # fmt: skip
            a_z = _bwd_tangents(
                a_z, a_t, a_tt, s1, s2, s3, z_ptr, a_ptr, s_ptr, ci, pid, g, B, l, WIDTHS,
                OUT_CUM, IN_CUM, K, GROUP, ROWS, ORDER, SMOOTH, SHARED, STORE_INPUTS,
                EMULATE_BF16, INPUTS_KMAJOR,
            )  # fmt: skip
    # A_{l-1}'s value rows (its tangent rows are stored), for dW_{l-1} = A^T S
    tl.store(a_ptr + S * B * OUT_CUM[l - 1] + rows[:, None] * WIDTHS[l] + ci[None, :],
             _cast(a_z, a_ptr.dtype.element_ty, EMULATE_BF16),
             mask=row_ok[:, None] & in_col)  # fmt: skip
    if HAS_BIAS:
        tl.store(db_ptr + pid * NUM_BIASES + B_OFFS[l - 1] + ci, tl.sum(a_z, axis=0),
                 mask=ci < WIDTHS[l])  # fmt: skip


@triton.jit
def _bwd_input_block(
    a_ptr, w_ptrs, dx_ptr, pid, n0, rows, row_ok, B, NB: tl.constexpr, WIDTHS: tl.constexpr,
    PADS: tl.constexpr, OUT_CUM: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    """Columns n0 .. n0 + NB of dL/dx = a_z W_1 (the value rows of A_1)."""
    ci = n0 + tl.arange(0, NB)
    a_h, a_t_unused, a_tt_unused = _bwd_layer(
        a_ptr, w_ptrs, pid, 0, ci, rows, row_ok, B, 0, NB, WIDTHS, PADS, OUT_CUM, K,
        GROUP, ROWS, ORDER, SHARED, True, PRECISION, EMULATE_BF16, CHUNKS,
    )  # fmt: skip
    tl.store(dx_ptr + rows[:, None] * WIDTHS[0] + ci[None, :],
             _cast(a_h, dx_ptr.dtype.element_ty, EMULATE_BF16),
             mask=row_ok[:, None] & (ci[None, :] < WIDTHS[0]))  # fmt: skip


@triton.jit
def _bwd_seeds(
    v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, gloss_ptr, gf_ptr, gu_ptr, gw_ptr,
    a_ptr, db_ptr, pid, rows, row_ok, B, coef_f, coef_u, coef_w,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr, OUT_CUM: tl.constexpr,
    NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, GROUP: tl.constexpr,
    ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_Y: tl.constexpr, TARGET: tl.constexpr, TARGET2: tl.constexpr, HAS_GL: tl.constexpr,
    HAS_GF: tl.constexpr, HAS_GU: tl.constexpr, HAS_GW: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """A_L, the seeds (see the top of this file; coef_* are 0 for a term without its
    target), stored into its stack, a direction group at a time, and the output layer's
    bias partials. Returns the value seeds (ROWS, MP) and direction group 0's tangent seeds
    (GROUP ROWS, MP; for order 1 the second is the first), in fp32."""
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]
    S: tl.constexpr = 1 + ORDER * K
    NB: tl.constexpr = B_OFFS[NUM_LAYERS - 1] + WIDTHS[NUM_LAYERS]  # biases in all layers
    at_ty = a_ptr.dtype.element_ty
    gl = 0.0
    if HAS_GL:
        gl = tl.load(gloss_ptr).to(tl.float32)
    cm = tl.arange(0, MP)
    val_ok = row_ok[:, None] & (cm[None, :] < M)
    val_idx = rows[:, None] * M + cm[None, :]
    rf = tl.load(f_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    if HAS_Y:
        rf -= tl.load(y_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    a = (gl * coef_f) * rf
    if HAS_GF:
        a += tl.load(gf_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    top = a_ptr + S * B * OUT_CUM[NUM_LAYERS - 1]
    at, att = _bwd_tangent_seeds(
        v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, gu_ptr, gw_ptr, top, gl, coef_u, coef_w, pid, 0,
        rows, row_ok, B, D, M, MP, K, GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2, HAS_GU,
        HAS_GW, EMULATE_BF16,
    )  # fmt: skip
    if KP // GROUP > 1:
        for g in tl.range(1, KP // GROUP):
            _bwd_tangent_seeds(
                v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, gu_ptr, gw_ptr, top, gl, coef_u, coef_w,
                pid, g, rows, row_ok, B, D, M, MP, K, GROUP, ROWS, ORDER, SHARED, TARGET,
                TARGET2, HAS_GU, HAS_GW, EMULATE_BF16,
            )  # fmt: skip
    # A_L's value rows, and the output layer's bias partials
    tl.store(top + rows[:, None] * M + cm[None, :], _cast(a, at_ty, EMULATE_BF16), mask=val_ok)
    if HAS_BIAS:
        tl.store(db_ptr + pid * NB + B_OFFS[NUM_LAYERS - 1] + cm, tl.sum(a, axis=0), mask=cm < M)
    return a, at, att


@triton.jit
def _bwd_tangent_seeds(
    v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, gu_ptr, gw_ptr, top, gl, coef_u, coef_w, pid, g,
    rows, row_ok, B, D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr,
    TARGET: tl.constexpr, TARGET2: tl.constexpr, HAS_GU: tl.constexpr, HAS_GW: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """Direction group g's tangent rows of A_L (``top``), stored; returned in fp32."""
    at_ty = top.dtype.element_ty
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    cm = tl.arange(0, MP)
    tan_ok = t_ok[:, None] & (cm[None, :] < M)
    tan_idx = bk_rows[:, None] * M + cm[None, :]
    ru = tl.load(u_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
    ru -= _target_tangents(v_ptr, g_ptr, pid, g, rows, row_ok, B, D, M, MP, K, GROUP, ROWS,
                           SHARED, TARGET)  # fmt: skip
    at = (gl * coef_u) * ru
    if HAS_GU:
        at += tl.load(gu_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
    tl.store(top + t_rows[:, None] * M + cm[None, :], _cast(at, at_ty, EMULATE_BF16), mask=tan_ok)
    att = at
    if ORDER == 2:
        rw = tl.load(w2_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
        rw -= _target_second(v_ptr, g2_ptr, pid, g, rows, row_ok, B, D, M, MP, K, GROUP, ROWS,
                             SHARED, TARGET2)  # fmt: skip
        att = (gl * coef_w) * rw
        if HAS_GW:
            att += tl.load(gw_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
        tl.store(top + tt_rows[:, None] * M + cm[None, :], _cast(att, at_ty, EMULATE_BF16),
                 mask=tan_ok)  # fmt: skip
    return at, att


@triton.jit
def _sobolev_bwd_kernel(
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
    pid = tl.program_id(0)
    if INDEX64:  # an offset may pass 2^31 elements (launch._index64)
        pid = pid.to(tl.int64)
        B = tl.cast(B, tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    _bwd_rows(
        x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, z_ptr, f_ptr, u_ptr, w2_ptr, gloss_ptr,
        gf_ptr, gu_ptr, gw_ptr, a_ptr, s_ptr, dx_ptr, db_ptr, pid, rows, rows < B, B, slope,
        coef_f, coef_u, coef_w, WIDTHS, PADS, B_OFFS, OUT_CUM, IN_CUM, NUM_LAYERS, K, KP, ROWS,
        GROUP, ORDER, ACT, SMOOTH, SHARED, HAS_BIAS, HAS_Y, TARGET, TARGET2, HAS_GL, HAS_GF,
        HAS_GU, HAS_GW, NEED_DX, STORE_INPUTS, PRECISION, EMULATE_BF16, CHUNKS, COLS,
        INPUTS_KMAJOR,
    )  # fmt: skip


@triton.jit
def _bwd_rows(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, z_ptr, f_ptr, u_ptr, w2_ptr,
    gloss_ptr, gf_ptr, gu_ptr, gw_ptr, a_ptr, s_ptr, dx_ptr, db_ptr,
    pid, rows, row_ok, B, slope, coef_f, coef_u, coef_w,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr, GROUP: tl.constexpr,
    ORDER: tl.constexpr, ACT: tl.constexpr, SMOOTH: tl.constexpr, SHARED: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr, TARGET2: tl.constexpr,
    HAS_GL: tl.constexpr, HAS_GF: tl.constexpr, HAS_GU: tl.constexpr, HAS_GW: tl.constexpr,
    NEED_DX: tl.constexpr, STORE_INPUTS: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, COLS: tl.constexpr,
    INPUTS_KMAJOR: tl.constexpr = False,
):  # fmt: skip
    """The backward of program ``pid``'s ROWS samples ``rows`` (``row_ok``: those < B) of a
    batch of B, into stacks of (1 + order K) B rows: the seeds, then every layer top down
    (INPUTS_KMAJOR: the inputs stacks transposed, see tiles._stack_offsets). The persistent
    backward (``persistent_backward.py``) calls it per row tile with the tile's tensors and
    stacks of its own (pid 0, B its samples)."""
    D: tl.constexpr = WIDTHS[0]
    S: tl.constexpr = 1 + ORDER * K
    NB: tl.constexpr = B_OFFS[NUM_LAYERS - 1] + WIDTHS[NUM_LAYERS]  # biases in all layers
    _bwd_seeds(
        v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, gloss_ptr, gf_ptr, gu_ptr, gw_ptr,
        a_ptr, db_ptr, pid, rows, row_ok, B, coef_f, coef_u, coef_w, WIDTHS, PADS, B_OFFS,
        OUT_CUM, NUM_LAYERS, K, KP, GROUP, ROWS, ORDER, SHARED, HAS_BIAS, HAS_Y, TARGET,
        TARGET2, HAS_GL, HAS_GF, HAS_GU, HAS_GW, EMULATE_BF16,
    )  # fmt: skip

    st_ty = s_ptr.dtype.element_ty
    for l in tl.static_range(NUM_LAYERS - 1, -1, -1):  # top down; sizes in place (see forward)
        # [a_h; a_t; a_tt] = [a_z; a_tz; a_ttz] W_l (a_h alone on layer 1: dL/dx), the values
        # along with the first direction group (one pass over W_l for both), COLS[l] columns
        # of layer l's inputs at a time
        if l > 0 or NEED_DX:
            tl.debug_barrier()  # every thread's part of A_l is written before any reload
        s_base = s_ptr + S * B * IN_CUM[l]
        if l > 0:
            for n0 in tl.range(0, PADS[l], COLS[l], num_stages=1):
                _bwd_hidden_block(
                    a_ptr, s_ptr, z_ptr, w_ptrs, db_ptr, pid, n0, rows, row_ok, B, slope, l,
                    COLS[l], WIDTHS, PADS, B_OFFS, OUT_CUM, IN_CUM, K, KP, GROUP, ROWS,
                    ORDER, ACT, SMOOTH, SHARED, HAS_BIAS, NB, STORE_INPUTS, PRECISION,
                    EMULATE_BF16, CHUNKS, INPUTS_KMAJOR,
                )  # fmt: skip
        else:
            if STORE_INPUTS:
                # layer 1's inputs: S_0 = [x; v] (tt_0 = 0 adds nothing to dW_1)
                ci = tl.arange(0, PADS[0])
                in_col = ci[None, :] < D
                x = tl.load(x_ptr + rows[:, None] * D + ci[None, :],
                            mask=row_ok[:, None] & in_col, other=0.0)  # fmt: skip
                tl.store(s_base + _stack_offsets(rows, ci, D, S * B, INPUTS_KMAJOR),
                         x.to(st_ty), mask=row_ok[:, None] & in_col)  # fmt: skip
                for g in tl.range(0, KP // GROUP):
                    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
                        pid, g, B, K, GROUP, ROWS, SHARED
                    )
                    v = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :],
                                mask=t_ok[:, None] & in_col, other=0.0)  # fmt: skip
                    tl.store(s_base + _stack_offsets(t_rows, ci, D, S * B, INPUTS_KMAJOR),
                             v.to(st_ty), mask=t_ok[:, None] & in_col)  # fmt: skip
            if NEED_DX:
                for n0 in tl.range(0, PADS[0], COLS[0], num_stages=1):
                    _bwd_input_block(
                        a_ptr, w_ptrs, dx_ptr, pid, n0, rows, row_ok, B, COLS[0], WIDTHS, PADS,
                        OUT_CUM, K, GROUP, ROWS, ORDER, SHARED, PRECISION, EMULATE_BF16,
                        CHUNKS,
                    )  # fmt: skip
