"""The parameter gradients from the backward kernel's stacks, and the one reduction kernel.

The backward kernel (``backward.py``) leaves, for every layer l, the adjoints A_l (S B, n_l)
of its pre-activations and (unless ``recompute``) its inputs S_{l-1} (S B, n_{l-1}) over the
S B stacked rows (values, then the tangent blocks). Then

    dW_l = A_l^T S_{l-1}        db_l = sum of A_l's value rows (the bias moves no tangent)

three ways, chosen per shape by measurement on the GPU (``parameter_grads.py``):

- ``gemm``: one cuBLAS GEMM per layer, and ``_sum_partials_kernel`` over the backward
  kernel's per-program bias partials: 1 + L launches;
- ``splitk``: ``_weight_grad_partials_kernel``, every layer's output tiles times SPLITS row
  ranges in one grid, tensor-core dots (3xTF32 for fp32), each program writing its partial
  tile (and the column sums of its A tile: the bias) to a (SPLITS, N) fp32 buffer; then
  ``_sum_partials_kernel`` adds the SPLITS rows in a fixed order: 2 launches, deterministic;
- ``recompute``: the same two launches, but the backward kernel stores no inputs stacks: the
  split-K kernel forms each S_{l-1} tile as it loads it (RECOMPUTE), from the forward's saved
  pre-activations [z; tz; ttz] of hidden layer l - 1 (fp32) and, for layer 1, from x and the
  directions. Row r of a stack belongs to sample r mod B (values, then k-major tangent
  blocks), so with zb = z of that sample:

      h = s(zb),   t_k = s'(zb) tz_k,   tt_k = s'(zb) ttz_k + s''(zb) tz_k^2

  rounded to the model's dtype as the stored stacks are. One stack of (1 + order K) B rows
  per layer less memory, and no stores of it, for up to three loads per element instead of
  one.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import act_series
from .tiles import _cast, _dot_acc


@triton.jit
def _recomputed_inputs(
    z_ptr, x_ptr, v_ptr, r, j, ok, batch, stack, slope, l: tl.constexpr, n_in: tl.constexpr,
    OUT_CUM: tl.constexpr, K: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """Rows r, columns j (``ok``: the live ones) of S_{l-1}, the inputs of layer l over the
    stacked rows, formed from x and the directions (layer 1) or from the forward's saved
    pre-activations at z_ptr (see the top of this file), in the dtype of x: that of the
    stacks the backward would have stored."""
    b = r % batch  # the sample of each stacked row
    value = (r < batch)[:, None]
    if l == 0:
        # S_0 = [x; v]: the value rows are x, tangent block k is direction k (layer 1 stops at
        # (1 + K) B rows: tt_0 = 0)
        k = r // batch - 1
        if SHARED:
            v_rows = k
        else:
            v_rows = b * K + k
        xs = tl.load(x_ptr + b[:, None] * n_in + j[None, :], mask=ok & value, other=0.0)
        vs = tl.load(v_ptr + v_rows[:, None] * n_in + j[None, :], mask=ok & ~value, other=0.0)
        out = tl.where(value, xs, vs).to(x_ptr.dtype.element_ty)
    else:
        z_base = z_ptr + stack.to(tl.int64) * OUT_CUM[l - 1]  # fp32 pre-activations
        zb = tl.load(z_base + b[:, None] * n_in + j[None, :], mask=ok, other=0.0)
        zr = tl.load(z_base + r[:, None] * n_in + j[None, :], mask=ok & ~value, other=0.0)
        s, s1, s2, s3_unused = act_series(zb, slope, ACT)
        h = tl.where(value, s, s1 * zr)
        if ORDER == 2:
            second = (r >= (1 + K) * batch)[:, None]  # tt rows: their tz rows are K B earlier
            tz = tl.load(z_base + (r - K * batch)[:, None] * n_in + j[None, :],
                         mask=ok & second, other=0.0)  # fmt: skip
            h = tl.where(second, h + s2 * tz * tz, h)
        out = _cast(h, x_ptr.dtype.element_ty, EMULATE_BF16)
    return out


@triton.jit
def _weight_grad_rows(
    adj_ptr, inputs_ptr, x_ptr, v_ptr, acc, db, i, j, start, end, batch, stack, slope,
    l: tl.constexpr, OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, WIDTHS: tl.constexpr,
    HAS_BIAS: tl.constexpr, BK: tl.constexpr, K: tl.constexpr, ORDER: tl.constexpr,
    ACT: tl.constexpr, SHARED: tl.constexpr, RECOMPUTE: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, STAGES: tl.constexpr = None,
    DB_AFTER_LOOP: tl.constexpr = True, KMAJOR: tl.constexpr = False,
):  # fmt: skip
    """acc + rows i, columns j of dW_l = A_l^T S_{l-1} summed over the stacked rows [start,
    end), and db + the sums of A_l's columns i over the value rows among them (the first
    ``batch`` of ``stack``); see _weight_grad_partials_kernel. STAGES: the row loop's
    software pipelining (None: the launch's). DB_AFTER_LOOP: db's rows are added
    elementwise in the loop and summed across rows once after it (a sum per row block
    crosses the warps: shared memory and a barrier every step; ahead of time for sm_90 the
    split-K loop is 30% shorter in bf16, 5% in fp32), else summed on every step (fewer
    registers, for the persistent backward, which spills). KMAJOR: the inputs stacks are
    stored transposed, S_{l-1}^T (n_in, stack) (choices.INPUTS_LAYOUTS; not with RECOMPUTE):
    the dot's second operand then has the reduction's rows contiguous, as fp32's TF32 wgmma
    takes it. Row-major, Triton transposes it through shared memory on every step, with
    scalar stores (the H200's counters: 83% of the kernel's shared stores in bank conflicts;
    bench/results/triton_kmajor_inputs_sm90.md). A_l stays row-major: the backward reloads
    it by rows."""
    n_out: tl.constexpr = WIDTHS[l + 1]
    n_in: tl.constexpr = WIDTHS[l]
    # 64-bit layer bases; offsets within a layer are 32-bit (the launcher takes the split-K
    # kernel only where the stack times every width stays below 2^31: more registers
    # otherwise, 198 -> 255 on sm_80 at config M)
    a_base = adj_ptr + stack.to(tl.int64) * OUT_CUM[l]
    s_base = inputs_ptr + stack.to(tl.int64) * IN_CUM[l]
    db_rows = tl.zeros((BK if DB_AFTER_LOOP else 1, db.shape[0]), tl.float32)
    for r0 in tl.range(start, end, BK, num_stages=STAGES):
        r = r0 + tl.arange(0, BK)
        live = r < end
        a = tl.load(a_base + r[:, None] * n_out + i[None, :],
                    mask=live[:, None] & (i[None, :] < n_out), other=0.0)  # fmt: skip
        s_ok = live[:, None] & (j[None, :] < n_in)
        if RECOMPUTE:
            s = _recomputed_inputs(inputs_ptr, x_ptr, v_ptr, r, j, s_ok, batch, stack, slope, l,
                                   n_in, OUT_CUM, K, ORDER, ACT, SHARED, EMULATE_BF16)  # fmt: skip
        elif KMAJOR:  # S_{l-1}^T as stored: the tile read with its rows contiguous
            s = tl.trans(tl.load(s_base + j[:, None] * stack + r[None, :],
                                 mask=(j[:, None] < n_in) & live[None, :], other=0.0))  # fmt: skip
        else:
            s = tl.load(s_base + r[:, None] * n_in + j[None, :], mask=s_ok, other=0.0)
        if EMULATE_BF16:  # the interpreter's bf16 dot is wrong (see choices._emulate_bf16)
            a = a.to(tl.float32)
            s = s.to(tl.float32)
        acc = _dot_acc(tl.trans(a), s, acc, PRECISION)
        if HAS_BIAS:  # the bias moves the values only: their rows come first
            values = tl.where(r[:, None] < batch, a.to(tl.float32), 0.0)
            if DB_AFTER_LOOP:
                db_rows += values
            else:
                db += tl.sum(values, axis=0)
    if HAS_BIAS and DB_AFTER_LOOP:
        db += tl.sum(db_rows, axis=0)
    return acc, db


@triton.jit
def _weight_grad_partials_kernel(
    adj_ptr, inputs_ptr, x_ptr, v_ptr, part_ptr, batch, stack, first_rows, rows_per_split,
    slope, WIDTHS: tl.constexpr, OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr,
    TILE_CUM: tl.constexpr, W_OFFS: tl.constexpr, B_OFFS: tl.constexpr,
    NUM_LAYERS: tl.constexpr, N_PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, K: tl.constexpr,
    ORDER: tl.constexpr, ACT: tl.constexpr, SHARED: tl.constexpr, RECOMPUTE: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, KMAJOR: tl.constexpr = False,
):  # fmt: skip
    """Program (t, s): output tile t of dW (layers in turn, TILE_CUM[l] <= t < TILE_CUM[l + 1],
    row-major BM x BN tiles of the (n_l, n_{l-1}) matrix) summed over split s's rows
    [s rows_per_split, (s + 1) rows_per_split) of the stack. Layer 1's inputs have no
    second-order rows (tt_0 = 0): only its ``first_rows`` rows count. db_l sums the value rows
    (the first ``batch``) only. Every program stores its tile, zeros included, so the buffer
    needs no initialisation. ``inputs_ptr`` is the inputs stacks, or under RECOMPUTE the
    forward's saved pre-activations (x_ptr, v_ptr: layer 1's inputs; ACT, slope: the hidden
    activation). KMAJOR: the inputs stacks are stored transposed (see _weight_grad_rows)."""
    tile = tl.program_id(0)
    split = tl.program_id(1)
    for l in tl.static_range(NUM_LAYERS):
        if (tile >= TILE_CUM[l]) & (tile < TILE_CUM[l + 1]):
            n_out: tl.constexpr = WIDTHS[l + 1]
            n_in: tl.constexpr = WIDTHS[l]
            col_tiles: tl.constexpr = (n_in + BN - 1) // BN
            t = tile - TILE_CUM[l]
            i = (t // col_tiles) * BM + tl.arange(0, BM)  # rows of dW_l: this layer's outputs
            j = (t % col_tiles) * BN + tl.arange(0, BN)  # columns: its inputs
            if l == 0:
                used = first_rows
            else:
                used = stack
            start = split * rows_per_split
            end = tl.minimum(start + rows_per_split, used)
            acc, db = _weight_grad_rows(
                adj_ptr, inputs_ptr, x_ptr, v_ptr, tl.zeros((BM, BN), tl.float32),
                tl.zeros((BM,), tl.float32), i, j, start, end, batch, stack, slope, l, OUT_CUM,
                IN_CUM, WIDTHS, HAS_BIAS, BK, K, ORDER, ACT, SHARED, RECOMPUTE, PRECISION,
                EMULATE_BF16, KMAJOR=KMAJOR,
            )  # fmt: skip
            row = part_ptr + split * N_PARTIAL
            tl.store(row + W_OFFS[l] + i[:, None] * n_in + j[None, :], acc,
                     mask=(i[:, None] < n_out) & (j[None, :] < n_in))  # fmt: skip
            if HAS_BIAS:
                if t % col_tiles == 0:  # the first column tile of each row of tiles
                    tl.store(row + B_OFFS[l] + i, db, mask=i < n_out)


@triton.jit
def _column_sums(partial_ptr, c, ok, first, end, N: tl.constexpr, PROGRAMS: tl.constexpr,
                 BLOCK: tl.constexpr):  # fmt: skip
    """Columns c (``ok``: those < N) of partial (P, N) summed over rows [first, end), in fp32
    and a fixed order: PROGRAMS rows at a time, then a tree."""
    acc = tl.zeros((PROGRAMS, BLOCK), tl.float32)
    for p0 in range(first, end, PROGRAMS):
        p = p0 + tl.arange(0, PROGRAMS)
        acc += tl.load(partial_ptr + p[:, None] * N + c[None, :],
                       mask=(p[:, None] < end) & ok[None, :], other=0.0)  # fmt: skip
    return tl.sum(acc, axis=0)


@triton.jit
def _sum_row_blocks_kernel(partial_ptr, out_ptr, P, N: tl.constexpr, ROWS_PER_SPLIT: tl.constexpr,
                           PROGRAMS: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """out[s] = the sum of rows [s R, s R + R) of partial (P, N), R = ROWS_PER_SPLIT (see
    _column_sums): the first pass of a sum over many rows, one program per (column block, row
    block)."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    s = tl.program_id(1).to(tl.int64)
    ok = c < N
    total = _column_sums(partial_ptr, c, ok, s * ROWS_PER_SPLIT,
                         tl.minimum(P, (s + 1) * ROWS_PER_SPLIT), N, PROGRAMS, BLOCK)  # fmt: skip
    tl.store(out_ptr + s * N + c, total, mask=ok)


@triton.jit
def _sum_partials_kernel(
    partial_ptr, out_ptrs, P, N: tl.constexpr, SEG_OFFS: tl.constexpr,
    SEG_SIZES: tl.constexpr, NUM_SEGS: tl.constexpr, PROGRAMS: tl.constexpr,
    BLOCK: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """out_ptrs[g] = the sum over the P rows of partial (P, N) of its columns
    [SEG_OFFS[g], SEG_OFFS[g] + SEG_SIZES[g]) (see _column_sums), in each output's own dtype:
    one launch for every parameter's gradient."""
    c = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = c < N
    total = _column_sums(partial_ptr, c, ok, 0, P, N, PROGRAMS, BLOCK)
    for g in tl.static_range(NUM_SEGS):
        mine = ok & (c >= SEG_OFFS[g]) & (c < SEG_OFFS[g] + SEG_SIZES[g])
        out = out_ptrs[g]
        tl.store(out + (c - SEG_OFFS[g]), _cast(total, out.dtype.element_ty, EMULATE_BF16),
                 mask=mine)  # fmt: skip
