"""``triton.jit`` helpers shared by the forward and backward kernels: dots, casts, the tiles of
a direction group, weight tiles, the activation of a layer's stacked outputs and the target
derivatives along the directions."""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import act_series


@triton.jit
def _round_bf16(x):
    """fp32 values rounded to bf16's precision, to nearest even (kept in fp32)."""
    bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
    bits += 0x7FFF + ((bits >> 16) & 1)
    return (bits & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _split_tf32(x):
    """fp32 x = hi + lo, hi rounded to TF32 (to nearest, ties away from zero, as
    cvt.rna.tf32 rounds: two integer instructions where that takes four on sm_90), lo the
    exact rest. A NaN or inf gives a NaN lo, so products with it are NaN; so does a value
    within half a TF32 step of fp32's largest (hi rounds to inf, as cvt.rna's does)."""
    bits = x.to(tl.uint32, bitcast=True)
    hi = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _dot_acc(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b. PRECISION "tf32x3_split" (``choices._kernel_precision``) is Triton's
    "tf32x3" formed here: both operands split (_split_tf32), then lo.hi, hi.lo and hi.hi as
    TF32 dots into the one accumulator, with no NaN fix-up between them. Triton's own puts
    the small products in a fresh accumulator, replaces their NaNs (an inf operand's lo) by
    zeros and adds. Ahead of time for sm_90 (triton 3.6) the split takes 9-11% fewer SASS
    instructions in the forward and backward and 34% fewer in the split-K weight gradients'
    row loop (``bench/results/triton_tf32x3_forms_sm90.md``); the wgmma are the same."""
    # (one return: after an if whose constexpr condition holds, the GPU compiler still
    # builds what follows, where the interpreter stops at the return)
    if PRECISION == "tf32x3_split":
        a_hi, a_lo = _split_tf32(a)
        b_hi, b_lo = _split_tf32(b)
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """a @ b in b's dtype with fp32 accumulation. Under EMULATE_BF16 (b is bf16) the
    interpreter gets fp32 operands, a rounded to bf16 first as the GPU's cast does."""
    if EMULATE_BF16:
        out = tl.dot(_round_bf16(a), b.to(tl.float32), input_precision=PRECISION)
    elif PRECISION == "tf32x3_split":
        out = _dot_acc(a, b, tl.zeros((a.shape[0], b.shape[1]), tl.float32), PRECISION)
    else:
        out = tl.dot(a.to(b.dtype), b, input_precision=PRECISION)
    return out


@triton.jit
def _cast(x, ty: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """An fp32 tile in ``ty``, rounded to nearest even (under EMULATE_BF16 by hand: the
    interpreter truncates fp32 to bf16, a GPU rounds)."""
    if EMULATE_BF16:
        if ty == tl.bfloat16:
            x = _round_bf16(x)
    return x.to(ty)


@triton.jit
def _by_direction(x, G: tl.constexpr, ROWS: tl.constexpr):
    """(G * ROWS, n) -> (G, ROWS, n): broadcastable against a (ROWS, n) value tile."""
    return tl.reshape(x, (G, ROWS, x.shape[1]))


@triton.jit
def _stack_offsets(rows, cols, width, stack, KMAJOR: tl.constexpr):
    """Offsets of rows ``rows``, columns ``cols`` in a layer's block of a stack of ``stack``
    rows and ``width`` columns: row-major, or with KMAJOR transposed, (width, stack) with
    the stacked rows contiguous (choices.INPUTS_LAYOUTS)."""
    if KMAJOR:
        offsets = cols[None, :] * stack + rows[:, None]
    else:
        offsets = rows[:, None] * width + cols[None, :]
    return offsets


@triton.jit
def _rows(x3, G: tl.constexpr, ROWS: tl.constexpr):
    """(G, ROWS, n) -> (G * ROWS, n)."""
    return tl.reshape(x3, (G * ROWS, x3.shape[2]))


@triton.jit
def _activate(z, tz, ttz, slope, ACT: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr,
              ORDER: tl.constexpr):  # fmt: skip
    """A hidden layer's outputs, the next layer's inputs: [h; t; tt] = [s(z); s'(z) tz;
    s'(z) ttz + s''(z) tz^2] in fp32 (tangent tiles of G directions, (G * ROWS, n); for
    order 1, tt is t)."""
    s, s1, s2, _ = act_series(z.to(tl.float32), slope, ACT)
    t, tt = _activate_tangents(s1, s2, tz, ttz, G, ROWS, ORDER)
    return s, t, tt


@triton.jit
def _activate_tangents(s1, s2, tz, ttz, G: tl.constexpr, ROWS: tl.constexpr,
                       ORDER: tl.constexpr):  # fmt: skip
    """[t; tt] = [s'(z) tz; s'(z) ttz + s''(z) tz^2] of G directions ((G * ROWS, n) tiles)
    from s' and s'' of the values' z ((ROWS, n), fp32); for order 1, tt is t."""
    tz3 = _by_direction(tz.to(tl.float32), G, ROWS)
    t = _rows(tz3 * s1[None, :, :], G, ROWS)
    tt = t
    if ORDER == 2:
        ttz3 = _by_direction(ttz.to(tl.float32), G, ROWS)
        tt = _rows(ttz3 * s1[None, :, :] + tz3 * tz3 * s2[None, :, :], G, ROWS)
    return t, tt


@triton.jit
def _tile_rows(pid, g, B, K: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr,
               SHARED: tl.constexpr):  # fmt: skip
    """Indices of one program's tangent rows of direction group g (directions g G .. g G +
    G - 1): row r is direction ``g G + r // ROWS`` of sample ``pid * ROWS + r % ROWS``
    (k-major, so a group's tile reshapes to (G, ROWS, n)). Also their rows in the
    (1 + order K) B stacked buffers (t and tt), in the directions tensor and in the
    (B, K, m) outputs and targets."""
    r = tl.arange(0, G * ROWS)
    k_of_r = g * G + r // ROWS
    b_of_r = pid * ROWS + r % ROWS
    t_ok = (k_of_r < K) & (b_of_r < B)
    t_rows = (1 + k_of_r) * B + b_of_r
    tt_rows = (1 + K + k_of_r) * B + b_of_r
    bk_rows = b_of_r * K + k_of_r
    if SHARED:
        v_rows = k_of_r
    else:
        v_rows = bk_rows
    return k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows


@triton.jit
def _tile_tensors(
    first, x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, D: tl.constexpr,
    M: tl.constexpr, K: tl.constexpr, SHARED: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr,
):  # fmt: skip
    """Both persistent kernels' per-sample tensors from sample ``first`` on (a row tile): x,
    the directions (unless shared), y, the targets by their kind ((B, K, m) directional ones,
    a (B, m, d) Jacobian, a (B, m, d, d) Hessian), f, u and w. Absent ones are stand-ins the
    kernels do not read."""
    v_t = v_ptr
    if not SHARED:
        v_t = v_ptr + first * (K * D)
    g_t = g_ptr + first * (K * M)
    if TARGET == 2:
        g_t = g_ptr + first * (M * D)
    g2_t = g2_ptr + first * (K * M)
    if TARGET2 == 2:
        g2_t = g2_ptr + first * (M * D * D)
    return (x_ptr + first * D, v_t, y_ptr + first * M, g_t, g2_t, f_ptr + first * M,
            u_ptr + first * (K * M), w2_ptr + first * (K * M))  # fmt: skip


@triton.jit
def _weight_rows(w_ptr, r, c, N_R: tl.constexpr, N_C: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Rows r, columns c of W (TRANSPOSED: of W^T) for a row-major W of shape (N_R, N_C)
    (TRANSPOSED: (N_C, N_R)); zeros outside it."""
    mask = (r[:, None] < N_R) & (c[None, :] < N_C)
    if TRANSPOSED:
        return tl.load(w_ptr + c[None, :] * N_R + r[:, None], mask=mask, other=0.0)
    return tl.load(w_ptr + r[:, None] * N_C + c[None, :], mask=mask, other=0.0)


@triton.jit
def _target_tangents(
    v_ptr, g_ptr, pid, g, rows, row_ok, B, D: tl.constexpr, M: tl.constexpr,
    MP: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
    SHARED: tl.constexpr, TARGET: tl.constexpr,
):  # fmt: skip
    """The target derivatives g_k along the directions of group g, (GROUP * ROWS, MP) fp32:
    target_jvp[b, k, :] (TARGET 1), or target_grad[b] v_k contracted here (TARGET 2), or 0."""
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    cm = tl.arange(0, MP)
    tan_ok = t_ok[:, None] & (cm[None, :] < M)
    target = tl.zeros((GROUP * ROWS, MP), tl.float32)
    if TARGET == 1:  # g_k = target_jvp[b, k, :]
        target = tl.load(g_ptr + bk_rows[:, None] * M + cm[None, :], mask=tan_ok,
                         other=0.0).to(tl.float32)  # fmt: skip
    elif TARGET == 2:  # g_k = J_g v_k = sum_j target_grad[b, :, j] v_k[j]
        val_ok = row_ok[:, None] & (cm[None, :] < M)
        val_idx = rows[:, None] * M + cm[None, :]
        g3 = tl.zeros((GROUP, ROWS, MP), tl.float32)
        for j in range(D):
            grad_j = tl.load(g_ptr + val_idx * D + j, mask=val_ok, other=0.0).to(tl.float32)
            v_j = tl.load(v_ptr + v_rows * D + j, mask=t_ok, other=0.0).to(tl.float32)
            g3 += tl.reshape(v_j, (GROUP, ROWS))[:, :, None] * grad_j[None, :, :]
        target = _rows(g3, GROUP, ROWS)
    return target


@triton.jit
def _target_second(
    v_ptr, g2_ptr, pid, g, rows, row_ok, B, D: tl.constexpr, M: tl.constexpr,
    MP: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr,
    SHARED: tl.constexpr, TARGET2: tl.constexpr,
):  # fmt: skip
    """The target second directional derivatives g2_k of group g, (GROUP * ROWS, MP) fp32:
    target_hvp2[b, k, :] (TARGET2 1), or v_k^T target_hess[b] v_k contracted here
    (TARGET2 2), or 0."""
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows, bk_rows = _tile_rows(
        pid, g, B, K, GROUP, ROWS, SHARED
    )
    cm = tl.arange(0, MP)
    tan_ok = t_ok[:, None] & (cm[None, :] < M)
    target = tl.zeros((GROUP * ROWS, MP), tl.float32)
    if TARGET2 == 1:  # g2_k = target_hvp2[b, k, :]
        target = tl.load(g2_ptr + bk_rows[:, None] * M + cm[None, :], mask=tan_ok,
                         other=0.0).to(tl.float32)  # fmt: skip
    elif TARGET2 == 2:  # g2_k = sum_ij target_hess[b, :, i, j] v_k[i] v_k[j]
        val_ok = row_ok[:, None] & (cm[None, :] < M)
        val_idx = rows[:, None] * M + cm[None, :]
        h3 = tl.zeros((GROUP, ROWS, MP), tl.float32)
        for i in range(D):
            v_i = tl.load(v_ptr + v_rows * D + i, mask=t_ok, other=0.0).to(tl.float32)
            for j in range(D):
                hess_ij = tl.load(g2_ptr + (val_idx * D + i) * D + j, mask=val_ok,
                                  other=0.0).to(tl.float32)  # fmt: skip
                v_j = tl.load(v_ptr + v_rows * D + j, mask=t_ok, other=0.0).to(tl.float32)
                vv = tl.reshape(v_i * v_j, (GROUP, ROWS))
                h3 += vv[:, :, None] * hess_ij[None, :, :]
        target = _rows(h3, GROUP, ROWS)
    return target
