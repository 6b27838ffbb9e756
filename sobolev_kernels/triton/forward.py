"""The fused forward kernel: values, K tangent streams (and K second-order streams) and the
projected loss's partial sums in one launch (docs/math.md, DESIGN section 2).

A program owns ROWS rows of the batch and carries them through every layer:

    z_l   = h_{l-1} W_l^T + b_l,     h_l  = s(z_l)
    tz_l  = t_{l-1} W_l^T,           t_l  = s'(z_l) tz_l
    ttz_l = tt_{l-1} W_l^T,          tt_l = s'(z_l) ttz_l + s''(z_l) tz_l^2   (order 2)

with t_0 = v_k (the directions), tt_0 = 0, and f = z_L, u_k = tz_L, w_k = ttz_L. The
tangent streams of a direction are k-major row tiles (KP = K rounded up to a power of two).
Weights are read straight from a packed buffer of all layers. It writes f (B, m), u and w
(B, K, m), per-program partial sums of the squared errors

    (f - y)^2,  (u_k - g_k)^2,  (w_k - g2_k)^2,   g_k = J_g v_k,  g2_k = v_k^T H_g v_k

(Jacobian and Hessian targets are contracted with the directions here, see tiles.py), and
the hidden pre-activations [z; tz; ttz] (into the saved stacks when a backward will follow,
else into scratch). A one-program kernel then reduces the partials in a fixed order. The
persistent variant (for a step that keeps nothing, see persistent_backward.py) runs the same body
per row tile, each program taking tiles in turn with scratch of its own.

Dots run as K loops (CHUNKS): each layer stores its [z; tz; ttz] and the next layer reloads
them CHUNK columns at a time, activating each chunk, so that no dot holds its whole K extent
in registers (Triton's exact fp32 dot does; the kernels spilled kilobytes per thread). The
rows a program reloads were written by its other threads: a barrier separates each layer's
stores from the next layer's reloads. The next layer activates what it reloads once per
pass (column block and direction group) of its own; the ``activated`` form (ACTIVATED,
``choices._forward_activated``) stores a layer's [h; t; tt] once into scratch of their own
for the next layer to reload as they are. Tangent streams run GROUP directions per pass over a
layer's weights (the values ride with the first group), so the register tiles hold GROUP
directions, not K: many directions do not spill.

Widths are padded inside the kernels to powers of two (at least 16, for ``tl.dot``); padded
weights load as zeros, so padded units never reach a real output.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import act_series
from .tiles import (
    _activate,
    _activate_tangents,
    _cast,
    _dot,
    _target_second,
    _target_tangents,
    _tile_rows,
    _tile_tensors,
    _weight_rows,
)


@triton.jit
def _fwd_layer(
    x_ptr, v_ptr, w_ptrs, z_ptr, act_ptr, pid, g, n0, rows, row_ok, B, slope, l: tl.constexpr,
    NB: tl.constexpr, WIDTHS: tl.constexpr, PADS: tl.constexpr,
    K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    ACT: tl.constexpr, SHARED: tl.constexpr, VALUES: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, Z_OFFS: tl.constexpr,
    Z_STRIDES: tl.constexpr, ACTIVATED: tl.constexpr, A_OFFS: tl.constexpr,
    A_STRIDES: tl.constexpr,
):  # fmt: skip
    """Columns n0 .. n0 + NB of layer l's pre-activations [tz; ttz] of direction group g, and
    with VALUES also z (no bias): a K loop over the layer's inputs, CHUNKS[l] columns at a
    time. They come back from memory (x and the directions, or the previous layer's stored
    [z; tz; ttz], activated per chunk; with ACTIVATED its [h; t; tt], activated once where
    they were formed), so no dot holds a whole K extent in registers, and no accumulator
    more than NB columns."""
    D: tl.constexpr = WIDTHS[0]
    S: tl.constexpr = 1 + ORDER * K
    co = n0 + tl.arange(0, NB)
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    z = tl.zeros((ROWS, NB), tl.float32)
    tz = tl.zeros((GROUP * ROWS, NB), tl.float32)
    ttz = tl.zeros((GROUP * ROWS, NB), tl.float32)  # tt_0 = 0
    for c0 in tl.range(0, PADS[l], CHUNKS[l], num_stages=1):
        ci = c0 + tl.arange(0, CHUNKS[l])
        in_ok = ci[None, :] < WIDTHS[l]
        wt = _weight_rows(w_ptrs[l], ci, co, WIDTHS[l], WIDTHS[l + 1], True)
        if l == 0:
            tc = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :],
                         mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            if VALUES:
                hc = tl.load(x_ptr + rows[:, None] * D + ci[None, :],
                             mask=row_ok[:, None] & in_ok, other=0.0)  # fmt: skip
                z += _dot(hc, wt, PRECISION, EMULATE_BF16)
        elif ACTIVATED:
            src = act_ptr + S * B * A_OFFS[l - 1] + ci[None, :]
            tc = tl.load(src + t_rows[:, None] * A_STRIDES[l - 1],
                         mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            if VALUES:
                hc = tl.load(src + rows[:, None] * A_STRIDES[l - 1],
                             mask=row_ok[:, None] & in_ok, other=0.0)  # fmt: skip
                z += _dot(hc, wt, PRECISION, EMULATE_BF16)
            if ORDER == 2:
                ttc = tl.load(src + tt_rows[:, None] * A_STRIDES[l - 1],
                              mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
                ttz += _dot(ttc, wt, PRECISION, EMULATE_BF16)
        else:
            src = z_ptr + S * B * Z_OFFS[l - 1] + ci[None, :]
            zc = tl.load(src + rows[:, None] * Z_STRIDES[l - 1],
                         mask=row_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            tzc = tl.load(src + t_rows[:, None] * Z_STRIDES[l - 1],
                          mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            ttzc = tzc
            if ORDER == 2:
                ttzc = tl.load(src + tt_rows[:, None] * Z_STRIDES[l - 1],
                               mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            hc, tc, ttc = _activate(zc, tzc, ttzc, slope, ACT, GROUP, ROWS, ORDER)
            if VALUES:
                z += _dot(hc, wt, PRECISION, EMULATE_BF16)
            if ORDER == 2:
                ttz += _dot(ttc, wt, PRECISION, EMULATE_BF16)
        tz += _dot(tc, wt, PRECISION, EMULATE_BF16)
    return z, tz, ttz


@triton.jit
def _fwd_store_tangents(
    z_ptr, tz, ttz, pid, g, co, B, l: tl.constexpr, WIDTHS: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr,
    EMULATE_BF16: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """Columns co of hidden layer l's [tz; ttz] (or its activated [t; tt]) of direction group
    g into its stack at z_ptr (see hidden_stacks)."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    ok = t_ok[:, None] & (co[None, :] < WIDTHS[l + 1])
    base = z_ptr + S * B * Z_OFFS[l] + co[None, :]
    zt = z_ptr.dtype.element_ty
    tl.store(base + t_rows[:, None] * Z_STRIDES[l], _cast(tz, zt, EMULATE_BF16), mask=ok)
    if ORDER == 2:
        tl.store(base + tt_rows[:, None] * Z_STRIDES[l], _cast(ttz, zt, EMULATE_BF16), mask=ok)


@triton.jit
def _fwd_tangent_outputs(
    u, w, v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, pid, g, rows, row_ok, B,
    D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr,
    ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """Stores u and w of direction group g into their (B, K, m) outputs; returns the sums of
    squares of u - g and w - g2 (in fp32, before the outputs are rounded to their dtype)."""
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    cm = tl.arange(0, MP)
    tan_ok = t_ok[:, None] & (cm[None, :] < M)
    tan_idx = bk_rows[:, None] * M + cm[None, :]
    tl.store(u_ptr + tan_idx, _cast(u, u_ptr.dtype.element_ty, EMULATE_BF16), mask=tan_ok)
    ru = u - _target_tangents(v_ptr, g_ptr, pid, g, rows, row_ok, B, D, M, MP, K, GROUP, ROWS,
                              SHARED, TARGET)  # fmt: skip
    ru = tl.where(tan_ok, ru, 0.0)
    sum_u = tl.sum(tl.sum(ru * ru, axis=1), axis=0)
    sum_w = 0.0 * sum_u  # order 1 has no second-order term
    if ORDER == 2:
        tl.store(w2_ptr + tan_idx, _cast(w, w2_ptr.dtype.element_ty, EMULATE_BF16), mask=tan_ok)
        rw = w - _target_second(v_ptr, g2_ptr, pid, g, rows, row_ok, B, D, M, MP, K, GROUP,
                                ROWS, SHARED, TARGET2)  # fmt: skip
        rw = tl.where(tan_ok, rw, 0.0)
        sum_w = tl.sum(tl.sum(rw * rw, axis=1), axis=0)
    return sum_u, sum_w


@triton.jit
def _fwd_hidden_block(
    x_ptr, v_ptr, w_ptrs, b_ptrs, z_ptr, act_ptr, pid, n0, rows, row_ok, B, slope,
    l: tl.constexpr, NB: tl.constexpr, WIDTHS: tl.constexpr, PADS: tl.constexpr,
    B_OFFS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, GROUP: tl.constexpr,
    ROWS: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr, SHARED: tl.constexpr,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
    ACTIVATED: tl.constexpr, STORE_Z: tl.constexpr, A_OFFS: tl.constexpr,
    A_STRIDES: tl.constexpr,
):  # fmt: skip
    """Columns n0 .. n0 + NB of hidden layer l's [z; tz; ttz], every direction group: with
    STORE_Z into its stack at z_ptr (the saved stacks, or without a backward one of two
    scratch regions taken in turn: the next layer reloads from this one); with ACTIVATED
    also activated, [h; t; tt], into act_ptr's scratch regions (A_OFFS, A_STRIDES), which
    the next layer reloads instead: the activation once per element and direction group
    (the further groups reload z, so STORE_Z), not once per column block and direction
    group of the next layer."""
    S: tl.constexpr = 1 + ORDER * K
    co = n0 + tl.arange(0, NB)
    z, tz, ttz = _fwd_layer(
        x_ptr, v_ptr, w_ptrs, z_ptr, act_ptr, pid, 0, n0, rows, row_ok, B, slope, l, NB,
        WIDTHS, PADS, K, GROUP, ROWS, ORDER, ACT, SHARED, True, PRECISION, EMULATE_BF16,
        CHUNKS, Z_OFFS, Z_STRIDES, ACTIVATED, A_OFFS, A_STRIDES,
    )  # fmt: skip
    if HAS_BIAS:
        bias = tl.load(b_ptrs[l] + co, mask=co < WIDTHS[l + 1], other=0.0)
        z += bias.to(tl.float32)[None, :]
    z_ok = row_ok[:, None] & (co[None, :] < WIDTHS[l + 1])
    if STORE_Z:
        tl.store(z_ptr + S * B * Z_OFFS[l] + rows[:, None] * Z_STRIDES[l] + co[None, :],
                 _cast(z, z_ptr.dtype.element_ty, EMULATE_BF16), mask=z_ok)  # fmt: skip
        _fwd_store_tangents(z_ptr, tz, ttz, pid, 0, co, B, l, WIDTHS, K, GROUP, ROWS, ORDER,
                            SHARED, EMULATE_BF16, Z_OFFS, Z_STRIDES)  # fmt: skip
    if ACTIVATED:
        h, s1, s2, s3_unused = act_series(z, slope, ACT)
        t, tt = _activate_tangents(s1, s2, tz, ttz, GROUP, ROWS, ORDER)
        tl.store(act_ptr + S * B * A_OFFS[l] + rows[:, None] * A_STRIDES[l] + co[None, :],
                 _cast(h, act_ptr.dtype.element_ty, EMULATE_BF16), mask=z_ok)  # fmt: skip
        _fwd_store_tangents(act_ptr, t, tt, pid, 0, co, B, l, WIDTHS, K, GROUP, ROWS, ORDER,
                            SHARED, EMULATE_BF16, A_OFFS, A_STRIDES)  # fmt: skip
    if KP // GROUP > 1:
        if ACTIVATED:
            tl.debug_barrier()  # the z columns other threads stored, reloaded below
        # (activated: each pass reloads z for s' and s''; held in registers across the
        # passes they spilled 1.6x more, ahead-of-time for sm_90)
        for g in tl.range(1, KP // GROUP, disable_licm=ACTIVATED):
            z_unused, tz, ttz = _fwd_layer(
                x_ptr, v_ptr, w_ptrs, z_ptr, act_ptr, pid, g, n0, rows, row_ok, B, slope, l,
                NB, WIDTHS, PADS, K, GROUP, ROWS, ORDER, ACT, SHARED, False, PRECISION,
                EMULATE_BF16, CHUNKS, Z_OFFS, Z_STRIDES, ACTIVATED, A_OFFS, A_STRIDES,
            )  # fmt: skip
            if STORE_Z:
                _fwd_store_tangents(z_ptr, tz, ttz, pid, g, co, B, l, WIDTHS, K, GROUP, ROWS,
                                    ORDER, SHARED, EMULATE_BF16, Z_OFFS, Z_STRIDES)  # fmt: skip
            if ACTIVATED:
                zs = tl.load(z_ptr + S * B * Z_OFFS[l] + rows[:, None] * Z_STRIDES[l] + co[None, :],
                             mask=z_ok, other=0.0).to(tl.float32)  # fmt: skip
                hs_unused, s1, s2, s3_unused = act_series(zs, slope, ACT)
                t, tt = _activate_tangents(s1, s2, tz, ttz, GROUP, ROWS, ORDER)
                _fwd_store_tangents(act_ptr, t, tt, pid, g, co, B, l, WIDTHS, K, GROUP, ROWS,
                                    ORDER, SHARED, EMULATE_BF16, A_OFFS, A_STRIDES)  # fmt: skip


@triton.jit
def _sobolev_fwd_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs,
    f_ptr, u_ptr, w2_ptr, z_ptr, act_ptr, partial_ptr,
    B, slope,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    ROWS: tl.constexpr, GROUP: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr, COLS: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
    ACTIVATED: tl.constexpr, STORE_Z: tl.constexpr, A_OFFS: tl.constexpr,
    A_STRIDES: tl.constexpr, INDEX64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if INDEX64:  # an offset may pass 2^31 elements (choices._index64)
        pid = pid.to(tl.int64)
        B = tl.cast(B, tl.int64)
    rows = pid * ROWS + tl.arange(0, ROWS)
    sum_f, sum_u, sum_w = _fwd_rows(
        x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, f_ptr, u_ptr, w2_ptr, z_ptr,
        act_ptr, pid, rows, rows < B, B, slope, WIDTHS, PADS, B_OFFS, NUM_LAYERS, K, KP, ROWS,
        GROUP, ORDER, ACT, SHARED, HAS_BIAS, HAS_Y, TARGET, TARGET2, PRECISION, EMULATE_BF16,
        CHUNKS, COLS, Z_OFFS, Z_STRIDES, ACTIVATED, STORE_Z, A_OFFS, A_STRIDES,
    )  # fmt: skip
    tl.store(partial_ptr + pid * 3, sum_f)
    tl.store(partial_ptr + pid * 3 + 1, sum_u)
    tl.store(partial_ptr + pid * 3 + 2, sum_w)


@triton.jit
def _fwd_rows(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, f_ptr, u_ptr, w2_ptr, z_ptr, act_ptr,
    pid, rows, row_ok, B, slope,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    ROWS: tl.constexpr, GROUP: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr, COLS: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
    ACTIVATED: tl.constexpr, STORE_Z: tl.constexpr, A_OFFS: tl.constexpr,
    A_STRIDES: tl.constexpr,
):  # fmt: skip
    """The forward of program ``pid``'s ROWS samples ``rows`` (``row_ok``: those < B) of a
    batch of B, its stacks of (1 + order K) B rows: f, u and w stored, and the sums of
    squares of f - y, u - g and w - g2 returned. The persistent forward calls it per row
    tile with the tile's tensors and stacks of its own (pid 0, B its samples)."""
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]

    for l in tl.static_range(NUM_LAYERS):
        # Per-layer sizes are read as WIDTHS[l] / PADS[l] in place: a tl.constexpr name bound
        # inside the loop would be re-assigned, which the GPU compiler rejects (the interpreter
        # does not check it).
        # The values ride along with the first direction group (one pass over W_l for both);
        # each further group of GROUP directions is another pass (register tiles of GROUP
        # directions, not K: many directions no longer spill).
        if l < NUM_LAYERS - 1:
            # hidden layer: COLS[l] output columns at a time into its [z; tz; ttz] stack (the
            # saved stacks, or without a backward one of two scratch regions taken in turn:
            # the next layer reloads from this one)
            for n0 in tl.range(0, PADS[l + 1], COLS[l], num_stages=1):
                _fwd_hidden_block(
                    x_ptr, v_ptr, w_ptrs, b_ptrs, z_ptr, act_ptr, pid, n0, rows, row_ok, B,
                    slope, l, COLS[l], WIDTHS, PADS, B_OFFS, K, KP, GROUP, ROWS, ORDER, ACT,
                    SHARED, HAS_BIAS, PRECISION, EMULATE_BF16, CHUNKS, Z_OFFS, Z_STRIDES,
                    ACTIVATED, STORE_Z, A_OFFS, A_STRIDES,
                )  # fmt: skip
            # the next layer's chunks hold columns other threads wrote; and it writes the
            # other scratch region, whose last reads (this layer's) all happened before here
            tl.debug_barrier()
        else:
            # output layer, all MP columns at once: f, u, w and the loss partials
            z, tz, ttz = _fwd_layer(
                x_ptr, v_ptr, w_ptrs, z_ptr, act_ptr, pid, 0, 0, rows, row_ok, B, slope, l, MP,
                WIDTHS, PADS, K, GROUP, ROWS, ORDER, ACT, SHARED, True, PRECISION,
                EMULATE_BF16, CHUNKS, Z_OFFS, Z_STRIDES, ACTIVATED, A_OFFS, A_STRIDES,
            )  # fmt: skip
            if HAS_BIAS:
                co = tl.arange(0, MP)
                bias = tl.load(b_ptrs[l] + co, mask=co < M, other=0.0)
                z += bias.to(tl.float32)[None, :]
            sum_u, sum_w = _fwd_tangent_outputs(
                tz, ttz, v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, pid, 0, rows, row_ok, B, D, M, MP,
                K, GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2, EMULATE_BF16,
            )  # fmt: skip
            if KP // GROUP > 1:
                for g in tl.range(1, KP // GROUP):
                    z_unused, tz, ttz = _fwd_layer(
                        x_ptr, v_ptr, w_ptrs, z_ptr, act_ptr, pid, g, 0, rows, row_ok, B, slope,
                        l, MP, WIDTHS, PADS, K, GROUP, ROWS, ORDER, ACT, SHARED, False,
                        PRECISION, EMULATE_BF16, CHUNKS, Z_OFFS, Z_STRIDES, ACTIVATED, A_OFFS,
                        A_STRIDES,
                    )  # fmt: skip
                    group_u, group_w = _fwd_tangent_outputs(
                        tz, ttz, v_ptr, g_ptr, g2_ptr, u_ptr, w2_ptr, pid, g, rows, row_ok, B,
                        D, M, MP, K, GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2, EMULATE_BF16,
                    )  # fmt: skip
                    sum_u += group_u
                    sum_w += group_w

    sum_f = _fwd_value_outputs(z, y_ptr, f_ptr, rows, row_ok, M, MP, HAS_Y, EMULATE_BF16)
    return sum_f, sum_u, sum_w


@triton.jit
def _fwd_value_outputs(z, y_ptr, f_ptr, rows, row_ok, M: tl.constexpr, MP: tl.constexpr,
                       HAS_Y: tl.constexpr, EMULATE_BF16: tl.constexpr):  # fmt: skip
    """Stores f (the output layer's values z, (ROWS, MP) fp32) and returns the sum of squares
    of f - y (in fp32, before f is rounded to its dtype)."""
    cm = tl.arange(0, MP)
    val_ok = row_ok[:, None] & (cm[None, :] < M)
    val_idx = rows[:, None] * M + cm[None, :]
    tl.store(f_ptr + val_idx, _cast(z, f_ptr.dtype.element_ty, EMULATE_BF16), mask=val_ok)
    rf = z
    if HAS_Y:
        rf -= tl.load(y_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    rf = tl.where(val_ok, rf, 0.0)
    return tl.sum(tl.sum(rf * rf, axis=1), axis=0)


@triton.jit
def _sobolev_fwd_persistent_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs,
    f_ptr, u_ptr, w2_ptr, z_ptr, act_ptr, partial_ptr,
    B, slope,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    ROWS: tl.constexpr, GROUP: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr, COLS: tl.constexpr, Z_OFFS: tl.constexpr, Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """The forward that keeps nothing, over a persistent grid: each program takes row tiles
    in turn (as the persistent backward does, see persistent_backward.py), its two scratch regions
    sized for one tile, and adds the tiles' sums of squares in its fixed order. Its scratch
    is the programs', not the batch's. (act_ptr: unread, its layers reload [z; tz; ttz].)"""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    REGION: tl.constexpr = (1 + ORDER * K) * ROWS * Z_STRIDES[0]  # a tile's, of the widest
    if NUM_LAYERS > 2:
        z_mine = z_ptr + pid.to(tl.int64) * (2 * REGION)  # two regions taken in turn
    else:
        z_mine = z_ptr + pid.to(tl.int64) * REGION  # one hidden layer: one region
    rows = tl.arange(0, ROWS)
    sum_f = 0.0
    sum_u = 0.0
    sum_w = 0.0
    tiles = tl.cdiv(tl.cdiv(B, ROWS) - pid, programs)
    # nothing hoisted out of the tile loop, as in the persistent backward
    for step in tl.range(0, tiles, disable_licm=True):
        first = (pid.to(tl.int64) + step * programs) * ROWS  # the tile's first sample
        valid = tl.minimum(B - first, ROWS)
        x_t, v_t, y_t, g_t, g2_t, f_t, u_t, w2_t = _tile_tensors(
            first, x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, D, M, K, SHARED,
            TARGET, TARGET2,
        )  # fmt: skip
        tile_f, tile_u, tile_w = _fwd_rows(
            x_t, v_t, y_t, g_t, g2_t, w_ptrs, b_ptrs, f_t, u_t, w2_t, z_mine, z_mine, 0, rows,
            rows < valid, valid, slope, WIDTHS, PADS, B_OFFS, NUM_LAYERS, K, KP, ROWS,
            GROUP, ORDER, ACT, SHARED, HAS_BIAS, HAS_Y, TARGET, TARGET2, PRECISION,
            EMULATE_BF16, CHUNKS, COLS, Z_OFFS, Z_STRIDES, False, True, Z_OFFS, Z_STRIDES,
        )  # fmt: skip
        sum_f += tile_f
        sum_u += tile_u
        sum_w += tile_w
        tl.debug_barrier()  # the next tile writes the scratch this one's last layer read
    tl.store(partial_ptr + pid * 3, sum_f)
    tl.store(partial_ptr + pid * 3 + 1, sum_u)
    tl.store(partial_ptr + pid * 3 + 2, sum_w)


@triton.jit
def _sobolev_loss_finish_kernel(partial_ptr, loss_ptr, P, coef_f, coef_u, coef_w,
                                BLOCK: tl.constexpr):  # fmt: skip
    """loss = sum over programs of coef . partials[p, :], accumulated in a fixed order."""
    acc_f = tl.zeros((BLOCK,), tl.float32)
    acc_u = tl.zeros((BLOCK,), tl.float32)
    acc_w = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, P, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        ok = idx < P
        acc_f += tl.load(partial_ptr + idx * 3, mask=ok, other=0.0)
        acc_u += tl.load(partial_ptr + idx * 3 + 1, mask=ok, other=0.0)
        acc_w += tl.load(partial_ptr + idx * 3 + 2, mask=ok, other=0.0)
    loss = coef_f * tl.sum(acc_f, axis=0) + coef_u * tl.sum(acc_u, axis=0)
    tl.store(loss_ptr, loss + coef_w * tl.sum(acc_w, axis=0))
