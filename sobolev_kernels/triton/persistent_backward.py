"""The persistent backward: the whole backward in one launch (``SOBOLEV_TRITON_BACKWARD``).

The separate backward (``launch._backward``) is the backward kernel, which stores the
adjoint stacks A_l of the whole batch (and, for gemm and splitk, its inputs stacks), then
the weight-gradient kernels that read them back. This kernel does it all in one launch over
a persistent grid (tiny-cuda-nn's design, and the CUDA backend's ``fused`` variant): each
program takes spans of DW_TILES row tiles of ROWS samples in turn and, per tile of the span,

1. puts the tile's hidden pre-activations [z; tz; ttz] into a scratch stack of its own:
   copied from the forward's saved ones, or where the forward kept nothing
   (``SOBOLEV_SAVE_ACTIVATIONS=0``, RECOMPUTE) by running the hidden layers again
   (``_fwd_hidden_block``);
2. runs the backward kernel's body (``_bwd_rows``) on it, the adjoints A_l into a second
   scratch stack of its own, dL/dx into the tile's rows;

then, per span,

3. adds dW_l = A_l^T S_{l-1} and db_l over the span's stacked rows to its own fp32 row of
   partial sums (``_weight_grad_rows``, forming S_{l-1} from the scratch pre-activations as
   ``recompute`` does): a program owns its row and takes its spans in a fixed order, so no
   atomics and the same result on every run.

Step 3 reads and writes the program's whole partial row (every layer's dW) once per span,
around dots over (1 + order K) x span stacked rows. With one tile a span (DW_TILES = 1, the
form the H200 measured, 2026-11-27), that was 48 stacked rows at config M (16-row tiles): the
persistent backward took 4.1 ms there in fp32, in 3xTF32 as on the FMA units, where the
backward kernel of those tiles alone took 1.0 ms and the split-K kernel the same weight
gradients in 0.75 ms. Spans of several tiles (``LaunchConfig.dw_tiles``, a tuner twin of
each tensor-core candidate: ``choices._with_dw_tiles``) read the row once per span and give
the dots a span's rows; their scratch grows with the span.

One reduction over the programs' rows then gives the parameter gradients (``_sum_partials``):
two launches for the whole backward, no stack of the batch but the forward's saved one, and
where the forward kept nothing, memory that no longer grows with the batch (programs x (two
span stacks + one partial row); its other backward, ``launch._backward_in_row_chunks``, is
five launches per chunk of the batch). Where the user forces this backward after a forward
that keeps nothing, that forward runs the same way (``forward._sobolev_fwd_persistent_kernel``):
no buffer of the step but its inputs and outputs grows with the batch.

A span's stacks are laid out as the batch's would be for a batch of its own ``valid``
samples (stacks of (1 + order K) valid rows; the kernels' B is ``valid``, tile t their
program t), with every per-sample tensor's pointer moved to the span's first sample: the
forward, backward and split-K helpers run on it unchanged.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .backward import _bwd_rows
from .forward import _fwd_hidden_block
from .tiles import _tile_tensors
from .weight_grad import _weight_grad_rows


@triton.jit
def _tile_weight_grads(
    a_ptr, z_ptr, x_ptr, v_ptr, part_ptr, accumulate, valid, slope, WIDTHS: tl.constexpr,
    OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr,
    W_OFFS: tl.constexpr, DB_OFFS: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, K: tl.constexpr, ORDER: tl.constexpr,
    ACT: tl.constexpr, SHARED: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """This tile's dW_l and db_l, added to the program's row of partial sums at part_ptr
    (with ``accumulate`` false, the program's first tile, stored instead: the row needs no
    initialisation)."""
    stack = (1 + ORDER * K) * valid
    for l in tl.static_range(NUM_LAYERS):
        # (plain names: a tl.constexpr one bound in this loop would be re-assigned, which the
        # GPU compiler rejects)
        n_out = WIDTHS[l + 1]
        n_in = WIDTHS[l]
        col_tiles = (n_in + BN - 1) // BN
        row_tiles = (n_out + BM - 1) // BM
        if l == 0:
            used = (1 + K) * valid  # layer 1's inputs have no second-order rows (tt_0 = 0)
        else:
            used = stack
        for t in tl.range(0, row_tiles * col_tiles, num_stages=1):
            i = (t // col_tiles) * BM + tl.arange(0, BM)  # rows of dW_l: the layer's outputs
            j = (t % col_tiles) * BN + tl.arange(0, BN)  # columns: its inputs
            w_ok = (i[:, None] < n_out) & (j[None, :] < n_in)
            w_dst = part_ptr + W_OFFS[l] + i[:, None] * n_in + j[None, :]
            b_dst = part_ptr + DB_OFFS[l] + i
            acc = tl.zeros((BM, BN), tl.float32)
            db = tl.zeros((BM,), tl.float32)
            if accumulate:
                acc = tl.load(w_dst, mask=w_ok, other=0.0)
                if HAS_BIAS:
                    if t % col_tiles == 0:  # db once per row of tiles (see the store)
                        db = tl.load(b_dst, mask=i < n_out, other=0.0)
            acc, db = _weight_grad_rows(
                a_ptr, z_ptr, x_ptr, v_ptr, acc, db, i, j, 0, used, valid, stack, slope, l,
                OUT_CUM, IN_CUM, WIDTHS, HAS_BIAS, BK, K, ORDER, ACT, SHARED, True, PRECISION,
                EMULATE_BF16, 1,  # (pipelined, the loop spilled 1.5-2.7 KB: sm_90, M and L)
                False,  # (db summed per step: its rows' registers spilled 8-80 B more)
            )  # fmt: skip
            tl.store(w_dst, acc, mask=w_ok)
            if HAS_BIAS:
                if t % col_tiles == 0:  # db once per row of tiles
                    tl.store(b_dst, db, mask=i < n_out)


@triton.jit
def _copy_saved_rows(
    saved_ptr, z_ptr, first, valid, B, rows, row_ok, WIDTHS: tl.constexpr, PADS: tl.constexpr,
    OUT_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr, K: tl.constexpr, ORDER: tl.constexpr,
    CHUNKS: tl.constexpr,
):  # fmt: skip
    """The tile's rows of the forward's saved [z; tz; ttz] (samples first .. first + valid
    of B, in every row block of every hidden layer) into the program's stack, laid out for a
    batch of ``valid`` (what the forward phase would have written)."""
    S: tl.constexpr = 1 + ORDER * K
    batch = first * 0 + B  # (64-bit: the saved stacks may pass 2^31 elements)
    for l in tl.static_range(NUM_LAYERS - 1):
        src = saved_ptr + S * batch * OUT_CUM[l]
        dst = z_ptr + S * valid * OUT_CUM[l]
        for c0 in tl.range(0, PADS[l + 1], CHUNKS[l + 1], num_stages=1):
            c = c0 + tl.arange(0, CHUNKS[l + 1])
            ok = row_ok[:, None] & (c[None, :] < WIDTHS[l + 1])
            for block in tl.range(0, S, num_stages=1):  # values, then the tangent blocks
                vals = tl.load(src + (block * batch + first + rows)[:, None] * WIDTHS[l + 1]
                               + c[None, :], mask=ok, other=0.0)  # fmt: skip
                tl.store(dst + (block * valid + rows)[:, None] * WIDTHS[l + 1] + c[None, :],
                         vals, mask=ok)  # fmt: skip


@triton.jit
def _sobolev_bwd_persistent_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptrs, b_ptrs, f_ptr, u_ptr, w2_ptr,
    gloss_ptr, gf_ptr, gu_ptr, gw_ptr, z_ptr, saved_ptr, a_ptr, dx_ptr, part_ptr,
    B, slope, coef_f, coef_u, coef_w,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr, GROUP: tl.constexpr,
    ORDER: tl.constexpr, ACT: tl.constexpr, SMOOTH: tl.constexpr, SHARED: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr, TARGET2: tl.constexpr,
    HAS_GL: tl.constexpr, HAS_GF: tl.constexpr, HAS_GU: tl.constexpr, HAS_GW: tl.constexpr,
    NEED_DX: tl.constexpr, NEED_PARAMS: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, COLS: tl.constexpr,
    FWD_COLS: tl.constexpr, Z_STRIDES: tl.constexpr, W_OFFS: tl.constexpr,
    DB_OFFS: tl.constexpr, N_PARTIAL: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, DW_PRECISION: tl.constexpr, RECOMPUTE: tl.constexpr,
    DW_TILES: tl.constexpr = 1,
):  # fmt: skip
    """RECOMPUTE: the forward kept nothing, the tile's hidden layers run again; else it saved
    its pre-activations at saved_ptr ((1 + order K) B rows per hidden layer) and the tile's
    rows are copied from there into the program's stack. DW_TILES: row tiles a span (see the
    module's docstring)."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    S: tl.constexpr = 1 + ORDER * K
    HIDDEN: tl.constexpr = OUT_CUM[NUM_LAYERS - 1]  # the hidden widths' sum
    SPAN: tl.constexpr = ROWS * DW_TILES  # the samples of one weight-gradient step
    # this program's scratch: the span's pre-activations and adjoints, and its partial row
    z_mine = z_ptr + pid.to(tl.int64) * (S * SPAN * HIDDEN)
    a_mine = a_ptr + pid.to(tl.int64) * (S * SPAN * (HIDDEN + M))
    part_mine = part_ptr + pid.to(tl.int64) * N_PARTIAL
    mine = tl.cdiv(tl.cdiv(B, SPAN) - pid, programs)  # spans pid, pid + programs, ...
    # nothing hoisted out of the span loop: hoisted, the span-independent address tensors of
    # every phase stay live across the whole loop (sm_90 ahead of time, the kernels' stack
    # over configs S-L: -43% with triton 3.6, -29% with 3.9; bench/results/triton_tensor_cores.md)
    for step in tl.range(0, mine, disable_licm=True):
        span = pid.to(tl.int64) + step * programs  # (64-bit offsets from here on)
        first_sample = span * SPAN
        valid = tl.minimum(B - first_sample, SPAN)
        # every per-sample tensor from the span's first sample (absent ones are stand-ins
        # the helpers do not read)
        x_t, v_t, y_t, g_t, g2_t, f_t, u_t, w2_t = _tile_tensors(
            first_sample, x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, f_ptr, u_ptr, w2_ptr, D, M, K,
            SHARED, TARGET, TARGET2,
        )  # fmt: skip
        gf_t = gf_ptr + first_sample * M  # and the upstream gradients, dL/dx
        gu_t = gu_ptr + first_sample * (K * M)
        gw_t = gw_ptr + first_sample * (K * M)
        dx_t = dx_ptr + first_sample * D
        # The span's row tiles one after the other, each as program ``tile`` of a batch of
        # ``valid`` samples would run (the stacks laid out for that batch), so that its
        # weight gradients then add (1 + order K) SPAN stacked rows at once. (One tile a span:
        # a loop of one trip, which the compiler removes, tile 0 a constant as it was.)
        tiles = tl.cdiv(valid, ROWS) if DW_TILES > 1 else 1
        for tile in tl.range(0, tiles, disable_licm=True):
            rows = tile * ROWS + tl.arange(0, ROWS)
            row_ok = rows < valid

            # 1. the hidden layers' [z; tz; ttz] of the tile, as the forward saves them
            if RECOMPUTE:
                for l in tl.static_range(NUM_LAYERS - 1):
                    for n0 in tl.range(0, PADS[l + 1], FWD_COLS[l], num_stages=1):
                        _fwd_hidden_block(
                            x_t, v_t, w_ptrs, b_ptrs, z_mine, z_mine, tile, n0, rows, row_ok,
                            valid, slope, l, FWD_COLS[l], WIDTHS, PADS, B_OFFS, K, KP, GROUP,
                            ROWS, ORDER, ACT, SHARED, HAS_BIAS, PRECISION, EMULATE_BF16,
                            CHUNKS, OUT_CUM, Z_STRIDES, False, True, OUT_CUM, Z_STRIDES,
                        )  # fmt: skip
                    tl.debug_barrier()  # the next layer (or the backward) reloads others' rows
            else:
                _copy_saved_rows(saved_ptr, z_mine, first_sample, valid, B, rows, row_ok,
                                 WIDTHS, PADS, OUT_CUM, NUM_LAYERS, K, ORDER, CHUNKS)  # fmt: skip
                tl.debug_barrier()  # the backward reads rows other threads copied

            # 2. the backward of the tile: adjoints into a_mine, dL/dx into its rows (no bias
            # partials there: step 3 forms db with dW)
            _bwd_rows(
                x_t, v_t, y_t, g_t, g2_t, w_ptrs, z_mine, f_t, u_t, w2_t, gloss_ptr, gf_t,
                gu_t, gw_t, a_mine, a_mine, dx_t, part_mine, tile, rows, row_ok, valid, slope,
                coef_f, coef_u, coef_w, WIDTHS, PADS, B_OFFS, OUT_CUM, IN_CUM, NUM_LAYERS, K,
                KP, ROWS, GROUP, ORDER, ACT, SMOOTH, SHARED, False, HAS_Y, TARGET, TARGET2,
                HAS_GL, HAS_GF, HAS_GU, HAS_GW, NEED_DX, False, PRECISION, EMULATE_BF16,
                CHUNKS, COLS,
            )  # fmt: skip

        # 3. the span's weight gradients into the program's partial row
        if NEED_PARAMS:
            tl.debug_barrier()  # A_1's value rows are the last the backward wrote
            _tile_weight_grads(
                a_mine, z_mine, x_t, v_t, part_mine, step > 0, valid, slope, WIDTHS,
                OUT_CUM, IN_CUM, NUM_LAYERS, W_OFFS, DB_OFFS, HAS_BIAS, BM, BN, BK, K, ORDER,
                ACT, SHARED, DW_PRECISION, EMULATE_BF16,
            )  # fmt: skip
        tl.debug_barrier()  # the next span overwrites the scratch this one read
