"""Fused Triton kernels for the Sobolev loss of an MLP (docs/math.md, DESIGN section 2).

Forward, one launch: a program owns ROWS rows of the batch and carries them through every
layer: values ``h (ROWS, n)``, the K first-order tangent streams (k-major, KP = K rounded up
to a power of two) and, for order 2, the K second-order streams ``tt`` (Taylor mode). Weights
are read straight from a packed buffer of all layers. It writes f, the residuals ``f - y``,
``u - g`` and ``w - g2`` (Jacobian and Hessian targets are contracted with the directions in
the kernel), per-program partial sums of the squared errors, and the hidden pre-activations
``[z; tz; ttz]`` (into the saved stacks when a backward will follow, else into scratch). A
one-program kernel then reduces the partials in a fixed order.

Dots run as K loops (CHUNKS): each layer stores its ``[z; tz; ttz]`` and the next layer
reloads them CHUNK columns at a time, activating each chunk, so that no dot holds its whole K
extent in registers (Triton's exact fp32 dot does; the kernels spilled kilobytes per thread).
The rows a program reloads were written by its other threads: a barrier separates each
layer's stores from the next layer's reloads. Tangent streams run GROUP directions per pass
over a layer's weights (the values ride with the first group), so the register tiles hold
GROUP directions, not K: many directions do not spill.

Backward, L + 2 launches: one fused kernel walks the layers top-down for its rows,
    a_z     = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
    a_tz_k  = a_t_k s' + 2 s'' a_tt_k tz_k
    a_ttz_k = a_tt_k s'
(order 1: no tt terms), writing each layer's stacked adjoints ``A_l = [a_z; a_tz; a_ttz]`` and
inputs ``S_{l-1} = [h; t; tt]`` (recomputed from the saved pre-activations), per-program bias
partials and dL/dx (its dots reload ``A_l`` in K chunks from where it stored it); then
``dW_l = A_l^T S_{l-1}`` is one GEMM per layer over the (1 + order K) B stacked rows, and
one sum reduces the bias partials.

Widths are padded inside the kernels to powers of two (at least 16, for ``tl.dot``); padded
weights load as zeros, so padded units never reach a real output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

from .. import tuning
from . import interpreting
from .activations import SMOOTH, act_series

TARGET_NONE, TARGET_JVP, TARGET_GRAD = 0, 1, 2  # first order: (B, K, m) or (B, m, d)
TARGET_HVP2, TARGET_HESS = 1, 2  # second order: (B, K, m) or (B, m, d, d)
MIN_PAD = 16  # tl.dot needs every dimension >= 16
# Register budget: elements of the value + tangent accumulator tiles at the widest layer per
# thread of a program. 32 kept config S, M and M order 2 (nearly) free of spills in
# ahead-of-time compiles for sm_90 (bench/results/triton_resources_sm90.md).
TILE_PER_THREAD = 32
# K step of the dots: each layer's inputs come back from memory CHUNK columns at a time, so
# no dot holds a whole K extent in registers. Whole-K dots in registers spilled kilobytes per
# thread at width 64 and 128 in every precision (same survey), and are gone.
CHUNK = 32
MAX_TILE_ROWS = 2048  # KP * MIN_PAD beyond this is not offered (large K, see supports)


def _pad(n: int) -> int:
    return max(MIN_PAD, triton.next_power_of_2(n))


def _prefix(values: list[int]) -> tuple[int, ...]:
    out, total = [], 0
    for v in values:
        out.append(total)
        total += v
    return tuple(out)


@dataclass(frozen=True)
class Layout:
    """Compile-time shape of one MLP, direction count and order, and its buffer offsets."""

    widths: tuple[int, ...]  # (d, n_1, ..., n_{L-1}, m)
    k: int
    order: int = 1

    @property
    def num_layers(self) -> int:
        return len(self.widths) - 1

    @property
    def pads(self) -> tuple[int, ...]:
        return tuple(_pad(n) for n in self.widths)

    @property
    def kp(self) -> int:
        return triton.next_power_of_2(self.k)

    @property
    def blocks(self) -> int:
        """Row blocks of a stacked (S B, n) buffer: values, then order K tangent blocks."""
        return 1 + self.order * self.k

    @property
    def w_offsets(self) -> tuple[int, ...]:  # of W_l (n_l x n_{l-1}) in the packed weights
        w = self.widths
        return _prefix([w[i] * w[i + 1] for i in range(self.num_layers)])

    @property
    def b_offsets(self) -> tuple[int, ...]:  # of b_l in the packed biases
        return _prefix(list(self.widths[1:]))

    @property
    def out_cum(self) -> tuple[int, ...]:
        """Prefix sums of n_1..n_L: offset of layer l's rows, in units of S B."""
        return _prefix(list(self.widths[1:]))

    @property
    def in_cum(self) -> tuple[int, ...]:
        """Prefix sums of n_0..n_{L-1}: offset of layer l's inputs, in units of S B."""
        return _prefix(list(self.widths[:-1]))

    def shared_bytes(self, rows: int, element_size: int, chunk: int = CHUNK,
                     group: int | None = None) -> int:  # fmt: skip
        """Estimated shared memory of one program: two weight tiles of the widest layer plus
        the value and tangent operand tiles (``group`` directions, default the static
        launch's ``group(rows, num_warps())``) of its dot products, all cut to ``chunk`` along
        K.

        Calibrated on ahead-of-time compiles with triton 3.6 and 3.9
        (scripts/check_triton_compile.py): an upper bound for fp32 on sm_80 and sm_90 (the
        backward keeps a second weight tile); 16-bit dots on sm_90 (wgmma) use up to 1.75x
        more (config L's backward), hence the margin.
        """
        tangent_rows = self.order * (group or self.group(rows, self.num_warps())) * rows
        per_layer = []
        for a, b in zip(self.pads, self.pads[1:]):
            k_a, k_b = min(chunk, a), min(chunk, b)
            per_layer.append(2 * max(k_a * b, k_b * a) + (rows + tangent_rows) * max(k_a, k_b))
        margin = 1.0 if element_size >= 4 else 2.0
        return int(element_size * max(per_layer) * margin)

    def tile_elements(self, rows: int, group: int | None = None) -> int:
        """Elements of the value and tangent tiles (``group`` directions, default K) of one
        program at the widest layer."""
        return (1 + self.order * (group or self.kp)) * rows * max(self.pads[1:-1] or self.pads)

    def tile_budget(self, warps: int) -> int:
        """Tile elements a program of ``warps`` warps may hold (TILE_PER_THREAD per thread)."""
        return TILE_PER_THREAD * 32 * warps

    def rows(self, element_size: int = 4, shared_limit: int | None = None) -> int:
        """Rows per program: the largest power of two (16..64) whose tiles fit the register
        budget of ``num_warps()`` warps and, given a limit, the device's shared memory."""
        warps = self.num_warps()
        rows = 64
        while rows > MIN_PAD and (
            self.tile_elements(rows) > self.tile_budget(warps)
            or (shared_limit is not None and self.shared_bytes(rows, element_size) > shared_limit)
        ):
            rows //= 2
        return rows

    def group(self, rows: int, warps: int) -> int:
        """Directions per pass over a layer's weights: the largest power of two up to KP
        whose tiles fit the register budget of ``warps`` warps (at least one). Where 16 rows
        of all K directions overflow it, fewer per pass removed most spills in ahead-of-time
        compiles for sm_90 (bench/results/triton_resources_sm90.md, "Direction groups")."""
        group = self.kp
        while group > 1 and self.tile_elements(rows, group) > self.tile_budget(warps):
            group //= 2
        return group

    def num_warps(self) -> int:
        """8 warps above width 64, and at width 64 where 4 warps' register budget cannot hold
        even MIN_PAD rows (many directions, order 2): there 4 warps spilled 0.4-2.3 KB per
        thread in ahead-of-time compiles for sm_90, 8 warps 0-0.4 KB
        (bench/results/triton_resources_sm90.md); else 4."""
        if max(self.pads) > 64 or self.tile_elements(MIN_PAD) > self.tile_budget(4):
            return 8
        return 4

    def constexprs(self) -> dict:
        """The compile-time constants both kernels take from the layout (the backward also
        takes ``IN_CUM=self.in_cum``)."""
        return dict(WIDTHS=self.widths, PADS=self.pads, W_OFFS=self.w_offsets,
                    B_OFFS=self.b_offsets, OUT_CUM=self.out_cum, NUM_LAYERS=self.num_layers,
                    K=self.k, KP=self.kp, ORDER=self.order)  # fmt: skip

    def launch_configs(
        self, element_size: int = 4, shared_limit: int | None = None
    ) -> list[tuple[int, int, int, int]]:
        """(rows, num_warps, chunk, group) candidates for the autotuner, the static choice
        first: its neighbours in warps (and 16 warps where MIN_PAD rows overflow 8 warps'
        budget), in rows (half, and double within twice the register budget), in the K step
        (half) and in directions per pass (all K in one pass where the static choice splits
        them, else half: passes over the weights against registers; config L spilled nothing
        either way), the group of the others following from their rows and warps. Few on
        purpose: each is a compile of several seconds the first time a shape runs."""
        rows, warps = self.rows(element_size, shared_limit), self.num_warps()
        configs = [(rows, warps, CHUNK), (rows, 12 - warps, CHUNK)]  # 4 <-> 8
        if max(self.pads) > CHUNK // 2:
            configs.append((rows, warps, CHUNK // 2))
        if rows // 2 >= MIN_PAD:
            configs.append((rows // 2, warps, CHUNK))
        if rows < 128 and self.tile_elements(2 * rows) <= 2 * self.tile_budget(warps):
            configs.append((2 * rows, warps, CHUNK))
        if self.tile_elements(MIN_PAD) > self.tile_budget(8):  # many directions: fewer spills
            configs.append((rows, 16, CHUNK))
        out = [(r, w, c, self.group(r, w)) for r, w, c in configs]
        group = out[0][3]
        if self.kp > 1:
            out.append((rows, warps, CHUNK, self.kp if group < self.kp else group // 2))
        return out

    def hidden_stacks(self, save: bool) -> dict:
        """Where the forward puts hidden layer l's [z; tz; ttz], as the kernel's Z_OFFS (offset
        in units of (1 + order K) B) and Z_STRIDES (row stride): the saved stacks the backward
        reads, or without a backward, two scratch regions of the widest layer taken in turn
        (``scratch_elements``), since a layer reloads its inputs from the one before while it
        writes its own outputs."""
        hidden = self.widths[1:-1]
        if save:
            return dict(Z_OFFS=self.out_cum[:-1], Z_STRIDES=hidden)
        widest = max(hidden, default=0)
        return dict(Z_OFFS=tuple(widest * (l % 2) for l in range(len(hidden))),
                    Z_STRIDES=(widest,) * len(hidden))  # fmt: skip

    def scratch_elements(self, batch: int) -> int:
        """Size of the forward's scratch regions without a backward (see hidden_stacks)."""
        hidden = self.widths[1:-1]
        return self.blocks * batch * max(hidden, default=0) * min(2, len(hidden))

    def chunks(self, chunk: int) -> tuple[int, ...]:
        """K-loop step of the dots whose K extent is each padded width."""
        return tuple(min(chunk, p) for p in self.pads)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """a @ b in b's dtype with fp32 accumulation (fp32 operands under EMULATE_BF16)."""
    if EMULATE_BF16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PRECISION)
    return tl.dot(a.to(b.dtype), b, input_precision=PRECISION)


@triton.jit
def _cast(x, ty: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """An fp32 tile in ``ty``, rounded to nearest even (under EMULATE_BF16 by hand: the
    interpreter truncates fp32 to bf16, a GPU rounds)."""
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits += 0x7FFF + ((bits >> 16) & 1)
        x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
    return x.to(ty)


@triton.jit
def _by_direction(x, G: tl.constexpr, ROWS: tl.constexpr):
    """(G * ROWS, n) -> (G, ROWS, n): broadcastable against a (ROWS, n) value tile."""
    return tl.reshape(x, (G, ROWS, x.shape[1]))


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
    tz3 = _by_direction(tz.to(tl.float32), G, ROWS)
    t = _rows(tz3 * s1[None, :, :], G, ROWS)
    tt = t
    if ORDER == 2:
        ttz3 = _by_direction(ttz.to(tl.float32), G, ROWS)
        tt = _rows(ttz3 * s1[None, :, :] + tz3 * tz3 * s2[None, :, :], G, ROWS)
    return s, t, tt


@triton.jit
def _tile_rows(pid, g, B, K: tl.constexpr, G: tl.constexpr, ROWS: tl.constexpr,
               SHARED: tl.constexpr):  # fmt: skip
    """Indices of one program's tangent rows of direction group g (directions g G .. g G +
    G - 1): row r is direction ``g G + r // ROWS`` of sample ``pid * ROWS + r % ROWS``
    (k-major, so a group's tile reshapes to (G, ROWS, n)). Also their rows in the
    (1 + order K) B stacked buffers (t and tt) and in the directions tensor."""
    r = tl.arange(0, G * ROWS)
    k_of_r = g * G + r // ROWS
    b_of_r = pid * ROWS + r % ROWS
    t_ok = (k_of_r < K) & (b_of_r < B)
    t_rows = (1 + k_of_r) * B + b_of_r
    tt_rows = (1 + K + k_of_r) * B + b_of_r
    if SHARED:
        v_rows = k_of_r
    else:
        v_rows = b_of_r * K + k_of_r
    return k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows


@triton.jit
def _weight_rows(w_ptr, r, c, N_R: tl.constexpr, N_C: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Rows r, columns c of W (TRANSPOSED: of W^T) for a row-major W of shape (N_R, N_C)
    (TRANSPOSED: (N_C, N_R)); zeros outside it."""
    mask = (r[:, None] < N_R) & (c[None, :] < N_C)
    if TRANSPOSED:
        return tl.load(w_ptr + c[None, :] * N_R + r[:, None], mask=mask, other=0.0)
    return tl.load(w_ptr + r[:, None] * N_C + c[None, :], mask=mask, other=0.0)


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_layer(
    x_ptr, v_ptr, w_ptr, z_ptr, pid, g, rows, row_ok, B, slope, l: tl.constexpr,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, W_OFFS: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, VALUES: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, Z_OFFS: tl.constexpr,
    Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """Layer l's pre-activations [tz; ttz] of direction group g, and with VALUES also z (no
    bias): a K loop over the layer's inputs, CHUNKS[l] columns at a time. They come back from
    memory (x and the directions, or the previous layer's stored [z; tz; ttz], activated per
    chunk), so no dot holds a whole K extent in registers."""
    D: tl.constexpr = WIDTHS[0]
    S: tl.constexpr = 1 + ORDER * K
    co = tl.arange(0, PADS[l + 1])
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS, SHARED)
    # (tl.constexpr: triton 3.6 takes no tuple-indexed size in a shape otherwise)
    z = tl.zeros((ROWS, tl.constexpr(PADS[l + 1])), tl.float32)
    tz = tl.zeros((GROUP * ROWS, tl.constexpr(PADS[l + 1])), tl.float32)
    ttz = tl.zeros((GROUP * ROWS, tl.constexpr(PADS[l + 1])), tl.float32)  # tt_0 = 0
    for c0 in tl.range(0, PADS[l], CHUNKS[l], num_stages=1):
        ci = c0 + tl.arange(0, CHUNKS[l])
        in_ok = ci[None, :] < WIDTHS[l]
        wt = _weight_rows(w_ptr + W_OFFS[l], ci, co, WIDTHS[l], WIDTHS[l + 1], True)
        if l == 0:
            tc = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :],
                         mask=t_ok[:, None] & in_ok, other=0.0)  # fmt: skip
            if VALUES:
                hc = tl.load(x_ptr + rows[:, None] * D + ci[None, :],
                             mask=row_ok[:, None] & in_ok, other=0.0)  # fmt: skip
                z += _dot(hc, wt, PRECISION, EMULATE_BF16)
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
    z_ptr, tz, ttz, pid, g, B, l: tl.constexpr, WIDTHS: tl.constexpr, PADS: tl.constexpr,
    K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    SHARED: tl.constexpr, EMULATE_BF16: tl.constexpr, Z_OFFS: tl.constexpr,
    Z_STRIDES: tl.constexpr,
):  # fmt: skip
    """Hidden layer l's [tz; ttz] of direction group g into its stack (see hidden_stacks)."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS, SHARED)
    co = tl.arange(0, PADS[l + 1])
    ok = t_ok[:, None] & (co[None, :] < WIDTHS[l + 1])
    base = z_ptr + S * B * Z_OFFS[l] + co[None, :]
    zt = z_ptr.dtype.element_ty
    tl.store(base + t_rows[:, None] * Z_STRIDES[l], _cast(tz, zt, EMULATE_BF16), mask=ok)
    if ORDER == 2:
        tl.store(base + tt_rows[:, None] * Z_STRIDES[l], _cast(ttz, zt, EMULATE_BF16), mask=ok)


@triton.jit
def _fwd_tangent_residuals(
    t, tt, v_ptr, g_ptr, g2_ptr, ru_ptr, rw_ptr, pid, g, rows, row_ok, B,
    D: tl.constexpr, M: tl.constexpr, MP: tl.constexpr, K: tl.constexpr, GROUP: tl.constexpr,
    ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr,
):  # fmt: skip
    """Residuals ru = u - g and rw = w - g2 of direction group g (Jacobian and Hessian targets
    contracted with the directions here) in the (K, B, m) layout; their sums of squares."""
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS, SHARED)
    cm = tl.arange(0, MP)
    val_ok = row_ok[:, None] & (cm[None, :] < M)
    val_idx = rows[:, None] * M + cm[None, :]
    tan_ok = t_ok[:, None] & (cm[None, :] < M)
    tan_idx = (k_of_r * B + b_of_r)[:, None] * M + cm[None, :]
    ru = t
    if TARGET == 1:  # g_k = target_jvp[b, k, :]
        ru -= tl.load(g_ptr + (b_of_r * K + k_of_r)[:, None] * M + cm[None, :],
                      mask=tan_ok, other=0.0).to(tl.float32)  # fmt: skip
    elif TARGET == 2:  # g_k = J_g v_k, contracted here: sum_j target_grad[b, :, j] v_k[j]
        g3 = tl.zeros((GROUP, ROWS, MP), tl.float32)
        for j in range(D):
            grad_j = tl.load(g_ptr + val_idx * D + j, mask=val_ok, other=0.0).to(tl.float32)
            v_j = tl.load(v_ptr + v_rows * D + j, mask=t_ok, other=0.0).to(tl.float32)
            g3 += tl.reshape(v_j, (GROUP, ROWS))[:, :, None] * grad_j[None, :, :]
        ru -= _rows(g3, GROUP, ROWS)
    ru = tl.where(tan_ok, ru, 0.0)
    tl.store(ru_ptr + tan_idx, ru, mask=tan_ok)
    sum_u = tl.sum(tl.sum(ru * ru, axis=1), axis=0)
    sum_w = 0.0 * sum_u  # order 1 has no second-order residual
    if ORDER == 2:
        rw = tt
        if TARGET2 == 1:  # g2_k = target_hvp2[b, k, :]
            rw -= tl.load(g2_ptr + (b_of_r * K + k_of_r)[:, None] * M + cm[None, :],
                          mask=tan_ok, other=0.0).to(tl.float32)  # fmt: skip
        elif TARGET2 == 2:  # g2_k = v_k^T H_g v_k = sum_ij target_hess[b, :, i, j] v_k[i] v_k[j]
            h3 = tl.zeros((GROUP, ROWS, MP), tl.float32)
            for i in range(D):
                v_i = tl.load(v_ptr + v_rows * D + i, mask=t_ok, other=0.0).to(tl.float32)
                for j in range(D):
                    hess_ij = tl.load(g2_ptr + (val_idx * D + i) * D + j, mask=val_ok,
                                      other=0.0).to(tl.float32)  # fmt: skip
                    v_j = tl.load(v_ptr + v_rows * D + j, mask=t_ok, other=0.0).to(tl.float32)
                    vv = tl.reshape(v_i * v_j, (GROUP, ROWS))
                    h3 += vv[:, :, None] * hess_ij[None, :, :]
            rw -= _rows(h3, GROUP, ROWS)
        rw = tl.where(tan_ok, rw, 0.0)
        tl.store(rw_ptr + tan_idx, rw, mask=tan_ok)
        sum_w = tl.sum(tl.sum(rw * rw, axis=1), axis=0)
    return sum_u, sum_w


@triton.jit
def _sobolev_fwd_kernel(
    x_ptr, v_ptr, y_ptr, g_ptr, g2_ptr, w_ptr, b_ptr,
    f_ptr, rf_ptr, ru_ptr, rw_ptr, z_ptr, partial_ptr,
    B, slope,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, W_OFFS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
    ROWS: tl.constexpr, GROUP: tl.constexpr, ORDER: tl.constexpr, ACT: tl.constexpr,
    SHARED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_Y: tl.constexpr, TARGET: tl.constexpr,
    TARGET2: tl.constexpr, SAVE: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr, Z_OFFS: tl.constexpr,
    Z_STRIDES: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]
    S: tl.constexpr = 1 + ORDER * K  # row blocks of the saved stacks
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B

    for l in tl.static_range(NUM_LAYERS):
        # Per-layer sizes are read as WIDTHS[l] / PADS[l] in place: a tl.constexpr name bound
        # inside the loop would be re-assigned, which the GPU compiler rejects (the interpreter
        # does not check it).
        # The values ride along with the first direction group (one pass over W_l for both);
        # each further group of GROUP directions is another pass (register tiles of GROUP
        # directions, not K: many directions no longer spill).
        z, tz, ttz = _fwd_layer(
            x_ptr, v_ptr, w_ptr, z_ptr, pid, 0, rows, row_ok, B, slope, l, WIDTHS, PADS, W_OFFS,
            K, GROUP, ROWS, ORDER, ACT, SHARED, True, PRECISION, EMULATE_BF16, CHUNKS, Z_OFFS,
            Z_STRIDES,
        )  # fmt: skip
        co = tl.arange(0, PADS[l + 1])
        if HAS_BIAS:
            bias = tl.load(b_ptr + B_OFFS[l] + co, mask=co < WIDTHS[l + 1], other=0.0)
            z += bias.to(tl.float32)[None, :]
        if l < NUM_LAYERS - 1:
            # this hidden layer's [z; tz; ttz]: the saved stacks, or without a backward one of
            # two scratch regions taken in turn (the next layer reloads from this one)
            zt = z_ptr.dtype.element_ty
            tl.store(z_ptr + S * B * Z_OFFS[l] + rows[:, None] * Z_STRIDES[l] + co[None, :],
                     _cast(z, zt, EMULATE_BF16),
                     mask=row_ok[:, None] & (co[None, :] < WIDTHS[l + 1]))  # fmt: skip
            _fwd_store_tangents(z_ptr, tz, ttz, pid, 0, B, l, WIDTHS, PADS, K, GROUP, ROWS, ORDER,
                                SHARED, EMULATE_BF16, Z_OFFS, Z_STRIDES)  # fmt: skip
        else:
            sum_u, sum_w = _fwd_tangent_residuals(
                tz, ttz, v_ptr, g_ptr, g2_ptr, ru_ptr, rw_ptr, pid, 0, rows, row_ok, B, D, M, MP,
                K, GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2,
            )  # fmt: skip
        if KP // GROUP > 1:
            for g in tl.range(1, KP // GROUP):
                z_unused, tz, ttz = _fwd_layer(
                    x_ptr, v_ptr, w_ptr, z_ptr, pid, g, rows, row_ok, B, slope, l, WIDTHS, PADS,
                    W_OFFS, K, GROUP, ROWS, ORDER, ACT, SHARED, False, PRECISION, EMULATE_BF16,
                    CHUNKS, Z_OFFS, Z_STRIDES,
                )  # fmt: skip
                if l < NUM_LAYERS - 1:
                    _fwd_store_tangents(z_ptr, tz, ttz, pid, g, B, l, WIDTHS, PADS, K, GROUP,
                                        ROWS, ORDER, SHARED, EMULATE_BF16, Z_OFFS,
                                        Z_STRIDES)  # fmt: skip
                else:
                    group_u, group_w = _fwd_tangent_residuals(
                        tz, ttz, v_ptr, g_ptr, g2_ptr, ru_ptr, rw_ptr, pid, g, rows, row_ok, B,
                        D, M, MP, K, GROUP, ROWS, ORDER, SHARED, TARGET, TARGET2,
                    )  # fmt: skip
                    sum_u += group_u
                    sum_w += group_w
        if l < NUM_LAYERS - 1:
            # the next layer's chunks hold columns other threads wrote; and it writes the
            # other scratch region, whose last reads (this layer's) all happened before here
            tl.debug_barrier()

    # value outputs and the per-program loss partials
    cm = tl.arange(0, MP)
    val_ok = row_ok[:, None] & (cm[None, :] < M)
    val_idx = rows[:, None] * M + cm[None, :]
    tl.store(f_ptr + val_idx, _cast(z, f_ptr.dtype.element_ty, EMULATE_BF16), mask=val_ok)
    rf = z
    if HAS_Y:
        rf -= tl.load(y_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    rf = tl.where(val_ok, rf, 0.0)
    tl.store(rf_ptr + val_idx, rf, mask=val_ok)
    tl.store(partial_ptr + pid * 3, tl.sum(tl.sum(rf * rf, axis=1), axis=0))
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


# --------------------------------------------------------------------------- backward


@triton.jit
def _bwd_layer(
    a_ptr, w_ptr, pid, g, rows, row_ok, B, l: tl.constexpr, WIDTHS: tl.constexpr,
    PADS: tl.constexpr, W_OFFS: tl.constexpr, OUT_CUM: tl.constexpr, K: tl.constexpr,
    GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr, SHARED: tl.constexpr,
    VALUES: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    CHUNKS: tl.constexpr,
):  # fmt: skip
    """[a_t; a_tt] = [a_tz; a_ttz] W_l for direction group g (on layer 1: none), and with
    VALUES also a_h = a_z W_l: a K loop over A_l as stored, CHUNKS[l + 1] columns at a time."""
    S: tl.constexpr = 1 + ORDER * K
    ci = tl.arange(0, PADS[l])
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS, SHARED)
    a_h = tl.zeros((ROWS, tl.constexpr(PADS[l])), tl.float32)
    a_t = tl.zeros((GROUP * ROWS, tl.constexpr(PADS[l])), tl.float32)
    a_tt = tl.zeros((GROUP * ROWS, tl.constexpr(PADS[l])), tl.float32)
    for c0 in tl.range(0, PADS[l + 1], CHUNKS[l + 1], num_stages=1):
        cc = c0 + tl.arange(0, CHUNKS[l + 1])
        cc_ok = cc[None, :] < WIDTHS[l + 1]
        wc = _weight_rows(w_ptr + W_OFFS[l], cc, ci, WIDTHS[l + 1], WIDTHS[l], False)
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
    WIDTHS: tl.constexpr, PADS: tl.constexpr, OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr,
    K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ORDER: tl.constexpr,
    SMOOTH: tl.constexpr, SHARED: tl.constexpr, EMULATE_BF16: tl.constexpr,
):  # fmt: skip
    """Hidden layer l (the input side of W_l), direction group g: stores the tangent rows of
    S_{l-1} = [h; t; tt] (recomputed from the saved pre-activations) and of A_{l-1} =
    [a_z; a_tz; a_ttz]; returns a_z plus the group's term (its sum over directions)."""
    S: tl.constexpr = 1 + ORDER * K
    k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS, SHARED)
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
    t_in = _rows(tz3 * s1[None, :, :], GROUP, ROWS)
    tl.store(s_base + t_off, _cast(t_in, st_ty, EMULATE_BF16), mask=ok)
    if ORDER == 2:
        ttz = tl.load(z_base + tt_off, mask=ok, other=0.0).to(tl.float32)
        ttz3 = _by_direction(ttz, GROUP, ROWS)
        tt_in = _rows(ttz3 * s1[None, :, :] + tz3 * tz3 * s2[None, :, :], GROUP, ROWS)
        tl.store(s_base + tt_off, _cast(tt_in, st_ty, EMULATE_BF16), mask=ok)
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
def _sobolev_bwd_kernel(
    x_ptr, v_ptr, w_ptr, z_ptr, rf_ptr, ru_ptr, rw_ptr,
    gloss_ptr, gf_ptr, grf_ptr, gru_ptr, grw_ptr,
    a_ptr, s_ptr, dx_ptr, db_ptr,
    B, slope, coef_f, coef_u, coef_w,
    WIDTHS: tl.constexpr, PADS: tl.constexpr, W_OFFS: tl.constexpr, B_OFFS: tl.constexpr,
    OUT_CUM: tl.constexpr, IN_CUM: tl.constexpr, NUM_LAYERS: tl.constexpr,
    K: tl.constexpr, KP: tl.constexpr, ROWS: tl.constexpr, GROUP: tl.constexpr,
    ORDER: tl.constexpr, ACT: tl.constexpr, SMOOTH: tl.constexpr, SHARED: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_GF: tl.constexpr, HAS_GRF: tl.constexpr,
    HAS_GRU: tl.constexpr, HAS_GRW: tl.constexpr, NEED_DX: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, CHUNKS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    D: tl.constexpr = WIDTHS[0]
    M: tl.constexpr = WIDTHS[NUM_LAYERS]
    MP: tl.constexpr = PADS[NUM_LAYERS]
    S: tl.constexpr = 1 + ORDER * K
    NB: tl.constexpr = B_OFFS[NUM_LAYERS - 1] + WIDTHS[NUM_LAYERS]  # biases in all layers
    rows = pid * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    at_ty = a_ptr.dtype.element_ty

    # Adjoints of the outputs (dL/dloss times the loss gradient, plus the gradients a user's
    # own loss sends to f and to the residual outputs):
    #   a_f = gl 2 alpha / (B m) (f - y) + dL/df,  a_u = gl 2 beta / (B K m) (u - g),
    #   a_w = gl 2 gamma / (B K m) (w - g2)
    # The tangent ones go straight to A_L's tangent rows, a direction group at a time.
    gl = tl.load(gloss_ptr).to(tl.float32)
    cm = tl.arange(0, MP)
    val_ok = row_ok[:, None] & (cm[None, :] < M)
    val_idx = rows[:, None] * M + cm[None, :]
    a = (gl * coef_f) * tl.load(rf_ptr + val_idx, mask=val_ok, other=0.0)
    if HAS_GF:
        a += tl.load(gf_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    if HAS_GRF:
        a += tl.load(grf_ptr + val_idx, mask=val_ok, other=0.0).to(tl.float32)
    top = a_ptr + S * B * OUT_CUM[NUM_LAYERS - 1]
    for g in tl.range(0, KP // GROUP):
        k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(pid, g, B, K, GROUP, ROWS,
                                                                   SHARED)  # fmt: skip
        tan_ok = t_ok[:, None] & (cm[None, :] < M)
        tan_idx = (k_of_r * B + b_of_r)[:, None] * M + cm[None, :]
        at = (gl * coef_u) * tl.load(ru_ptr + tan_idx, mask=tan_ok, other=0.0)
        if HAS_GRU:
            at += tl.load(gru_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
        tl.store(
            top + t_rows[:, None] * M + cm[None, :], _cast(at, at_ty, EMULATE_BF16), mask=tan_ok
        )
        if ORDER == 2:
            att = (gl * coef_w) * tl.load(rw_ptr + tan_idx, mask=tan_ok, other=0.0)
            if HAS_GRW:
                att += tl.load(grw_ptr + tan_idx, mask=tan_ok, other=0.0).to(tl.float32)
            tl.store(
                top + tt_rows[:, None] * M + cm[None, :],
                _cast(att, at_ty, EMULATE_BF16),
                mask=tan_ok,
            )

    for l in tl.static_range(NUM_LAYERS - 1, -1, -1):  # top down; sizes in place (see forward)
        ci = tl.arange(0, PADS[l])
        co = tl.arange(0, PADS[l + 1])
        in_col = ci[None, :] < WIDTHS[l]

        # A_l = [a_z; a_tz; a_ttz] for dW_l = A_l^T S_{l-1} (the tangent rows are stored
        # already, by the layer above); bias partials of this program
        tl.store(a_ptr + S * B * OUT_CUM[l] + rows[:, None] * WIDTHS[l + 1] + co[None, :],
                 _cast(a, at_ty, EMULATE_BF16),
                 mask=row_ok[:, None] & (co[None, :] < WIDTHS[l + 1]))  # fmt: skip
        if HAS_BIAS:
            tl.store(db_ptr + pid * NB + B_OFFS[l] + co, tl.sum(a, axis=0), mask=co < WIDTHS[l + 1])

        # [a_h; a_t; a_tt] = [a_z; a_tz; a_ttz] W_l (a_h alone on layer 1: dL/dx), the values
        # along with the first direction group (one pass over W_l for both)
        if l > 0 or NEED_DX:
            tl.debug_barrier()  # every thread's part of A_l is written before any reload
            a_h, a_t, a_tt = _bwd_layer(
                a_ptr, w_ptr, pid, 0, rows, row_ok, B, l, WIDTHS, PADS, W_OFFS, OUT_CUM, K, GROUP,
                ROWS, ORDER, SHARED, True, PRECISION, EMULATE_BF16, CHUNKS,
            )  # fmt: skip
        s_base = s_ptr + S * B * IN_CUM[l]
        st_ty = s_ptr.dtype.element_ty
        if l > 0:
            # saved pre-activations of hidden layer l (the input side of W_l)
            z = tl.load(z_ptr + S * B * OUT_CUM[l - 1] + rows[:, None] * WIDTHS[l] + ci[None, :],
                        mask=row_ok[:, None] & in_col, other=0.0).to(tl.float32)  # fmt: skip
            s, s1, s2, s3 = act_series(z, slope, ACT)
            tl.store(s_base + rows[:, None] * WIDTHS[l] + ci[None, :],
                     _cast(s, st_ty, EMULATE_BF16), mask=row_ok[:, None] & in_col)  # fmt: skip
            a_next = _bwd_tangents(
                a_h * s1, a_t, a_tt, s1, s2, s3, z_ptr, a_ptr, s_ptr, ci, pid, 0, B, l, WIDTHS,
                PADS, OUT_CUM, IN_CUM, K, GROUP, ROWS, ORDER, SMOOTH, SHARED, EMULATE_BF16,
            )  # fmt: skip
            if KP // GROUP > 1:
                for g in tl.range(1, KP // GROUP):
                    a_h_unused, a_t, a_tt = _bwd_layer(
                        a_ptr, w_ptr, pid, g, rows, row_ok, B, l, WIDTHS, PADS, W_OFFS, OUT_CUM,
                        K, GROUP, ROWS, ORDER, SHARED, False, PRECISION, EMULATE_BF16, CHUNKS,
                    )  # fmt: skip
                    a_next = _bwd_tangents(
                        a_next, a_t, a_tt, s1, s2, s3, z_ptr, a_ptr, s_ptr, ci, pid, g, B, l,
                        WIDTHS, PADS, OUT_CUM, IN_CUM, K, GROUP, ROWS, ORDER, SMOOTH, SHARED,
                        EMULATE_BF16,
                    )  # fmt: skip
            a = a_next
        else:
            # layer 1 reads x and the directions: S_0 = [x; v] (tt_0 = 0 adds nothing to dW_1)
            x = tl.load(x_ptr + rows[:, None] * D + ci[None, :],
                        mask=row_ok[:, None] & in_col, other=0.0)  # fmt: skip
            tl.store(
                s_base + rows[:, None] * D + ci[None, :], x.to(st_ty), mask=row_ok[:, None] & in_col
            )
            for g in tl.range(0, KP // GROUP):
                k_of_r, b_of_r, t_ok, t_rows, tt_rows, v_rows = _tile_rows(
                    pid, g, B, K, GROUP, ROWS, SHARED
                )
                v = tl.load(v_ptr + v_rows[:, None] * D + ci[None, :],
                            mask=t_ok[:, None] & in_col, other=0.0)  # fmt: skip
                tl.store(
                    s_base + t_rows[:, None] * D + ci[None, :],
                    v.to(st_ty),
                    mask=t_ok[:, None] & in_col,
                )
            if NEED_DX:
                tl.store(dx_ptr + rows[:, None] * D + ci[None, :],
                         _cast(a_h, dx_ptr.dtype.element_ty, EMULATE_BF16),
                         mask=row_ok[:, None] & in_col)  # fmt: skip


# --------------------------------------------------------------------------- launchers


def _precision(allow_tf32: bool) -> str:
    # fp32 stays exact by default (TF32 is opt-in); bf16/fp16 operands ignore it. Three-TF32
    # dots ("tf32x3") were tried: 3-6x the local-memory spills of "ieee" in these kernels
    # (scripts/check_triton_compile.py --survey).
    return "tf32" if allow_tf32 else "ieee"


def _emulate_bf16(dtype: torch.dtype) -> bool:
    # The interpreter's bf16 is not the GPU's (triton 3.6 and 3.9): its tl.dot misreads bf16
    # operands and it converts fp32 to bf16 by truncation. Under this flag the kernels run
    # their dots on fp32 operands and round their bf16 stores to nearest even by hand.
    return interpreting() and dtype == torch.bfloat16


def _layout(x: Tensor, v: Tensor, weights: list[Tensor], order: int) -> Layout:
    return Layout(tuple([x.shape[1]] + [w.shape[0] for w in weights]), v.shape[-2], order)


def shared_memory_limit(device: torch.device) -> int | None:
    """Largest shared memory one program may use on ``device`` (None: no limit, the CPU
    interpreter)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


# A launch config that does not fit the GPU fails to compile or load; the tuner skips it.
_DOES_NOT_FIT = (OutOfResources, PTXASError, CompileTimeAssertionFailure)


def _launch_config(
    kernel: str, layout: Layout, x: Tensor, constexprs: dict, launch: Callable[[tuple], object]
) -> tuple[int, int, int, int]:
    """(rows per program, num_warps, K chunk, directions per pass) for one launch: measured
    once per shape on a GPU (``tuning``), else the static choice (``Layout.rows``,
    ``Layout.num_warps``, CHUNK, ``Layout.group``)."""
    limit = shared_memory_limit(x.device)
    key = _tuning_key(kernel, x, constexprs)
    if not tuning.can_measure(x.device):
        rows, warps = layout.rows(x.element_size(), limit), layout.num_warps()
        return tuning.chosen(key) or (rows, warps, CHUNK, layout.group(rows, warps))
    configs = layout.launch_configs(x.element_size(), limit)
    return tuning.fastest(key, configs, launch, _DOES_NOT_FIT)


def _tuning_key(kernel: str, x: Tensor, constexprs: dict) -> tuple:
    # every compile-time constant but the tuned ones, the dtype, the device and the batch
    # rounded up to a power of two (the best rows per program depend on how many programs run)
    batch = triton.next_power_of_2(max(1, x.shape[0]))
    constants = tuple(sorted(constexprs.items()))
    return ("triton", kernel, str(x.device), x.dtype, batch, constants)


def sobolev_forward(
    x: Tensor,
    v: Tensor,
    y: Tensor | None,
    target: Tensor | None,
    target_kind: int,
    target2: Tensor | None,
    target2_kind: int,
    weights: list[Tensor],
    biases: list[Tensor],
    activation: int,
    slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    save: bool,
    allow_tf32: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Launch the fused forward: (loss, f, rf = f - y, ru = u - g, rw = w - g2, z).

    x: (B, d); v: (K, d) shared or (B, K, d); y: (B, m) or None; target: (B, K, m) jvp or
    (B, m, d) grad or None (then ru = u); target2 (order 2): (B, K, m) hvp2 or (B, m, d, d)
    Hessians or None (then rw = w); weights W_l: (n_l, n_{l-1}); biases b_l or [].
    Out: loss (), f (B, m), rf (B, m) fp32, ru and rw (K, B, m) fp32 (rw empty for order 1),
    z the saved hidden pre-activation stacks (empty unless ``save``).
    """
    batch = x.shape[0]
    layout = _layout(x, v, weights, order)
    k, m = layout.k, layout.widths[-1]
    dev, dtype = x.device, x.dtype
    w_packed = torch.cat([w.reshape(-1) for w in weights])
    b_packed = torch.cat([b.reshape(-1) for b in biases]) if biases else w_packed
    f = torch.empty(batch, m, device=dev, dtype=dtype)
    rf = torch.empty(batch, m, device=dev, dtype=torch.float32)
    ru = torch.empty(k, batch, m, device=dev, dtype=torch.float32)
    rw = torch.empty(k if order == 2 else 0, batch, m, device=dev, dtype=torch.float32)
    hidden = layout.widths[1:-1]
    z = torch.empty(layout.blocks * batch * sum(hidden) if save else 0, device=dev, dtype=dtype)
    constexprs = dict(
        **layout.constexprs(), **layout.hidden_stacks(save), ACT=activation,
        SHARED=v.ndim == 2, HAS_BIAS=bool(biases), HAS_Y=y is not None, TARGET=target_kind,
        TARGET2=target2_kind, SAVE=save, PRECISION=_precision(allow_tf32),
        EMULATE_BF16=_emulate_bf16(dtype),
    )  # fmt: skip

    def launch(config: tuple[int, int, int, int]) -> Tensor:
        # Idempotent (every output is overwritten), so the tuner may run it repeatedly.
        rows, warps, chunk, group = config
        programs = triton.cdiv(batch, rows)
        partial = torch.empty(programs, 3, device=dev, dtype=torch.float32)
        scratch = z if save else f
        if hidden and not save:
            scratch = torch.empty(layout.scratch_elements(batch), device=dev, dtype=dtype)
        _sobolev_fwd_kernel[(programs,)](
            x, v, y if y is not None else x, target if target is not None else x,
            target2 if target2 is not None else x, w_packed, b_packed,
            f, rf, ru, rw if order == 2 else ru, scratch, partial, batch, slope,
            ROWS=rows, GROUP=group, num_warps=warps,
            CHUNKS=layout.chunks(chunk), **constexprs,
        )  # fmt: skip
        return partial

    partial = launch(_launch_config("fwd", layout, x, constexprs, launch))
    programs = partial.shape[0]
    loss = torch.empty((), device=dev, dtype=torch.float32)
    coef_f = alpha / (batch * m) if y is not None else 0.0
    coef_u = beta / (batch * k * m)
    coef_w = gamma / (batch * k * m) if order == 2 else 0.0
    _sobolev_loss_finish_kernel[(1,)](partial, loss, programs, coef_f, coef_u, coef_w, BLOCK=256)
    return loss, f, rf, ru, rw, z


def sobolev_backward(
    grad_loss: Tensor,
    grad_f: Tensor | None,
    grad_rf: Tensor | None,
    grad_ru: Tensor | None,
    grad_rw: Tensor | None,
    x: Tensor,
    v: Tensor,
    rf: Tensor,
    ru: Tensor,
    rw: Tensor,
    z: Tensor,
    weights: list[Tensor],
    has_bias: bool,
    activation: int,
    slope: float,
    alpha: float,
    beta: float,
    gamma: float,
    order: int,
    has_y: bool,
    need_dx: bool,
    allow_tf32: bool = False,
) -> tuple[Tensor | None, list[Tensor], Tensor]:
    """Launch the fused backward and the weight-gradient GEMMs: (dx, [dW_l], db).

    db is every layer's bias gradient concatenated (empty without biases).
    """
    batch = x.shape[0]
    layout = _layout(x, v, weights, order)
    k, widths = layout.k, layout.widths
    dev, dtype = x.device, x.dtype
    stack = layout.blocks * batch
    w_packed = torch.cat([w.reshape(-1) for w in weights])
    adj = torch.empty(stack * sum(widths[1:]), device=dev, dtype=dtype)
    inputs = torch.empty(stack * sum(widths[:-1]), device=dev, dtype=dtype)
    nb = sum(widths[1:])
    dx = torch.empty_like(x) if need_dx else None
    m = widths[-1]
    coef_f = 2.0 * alpha / (batch * m) if has_y else 0.0
    coef_u = 2.0 * beta / (batch * k * m)
    coef_w = 2.0 * gamma / (batch * k * m) if order == 2 else 0.0
    constexprs = dict(
        **layout.constexprs(), IN_CUM=layout.in_cum, ACT=activation,
        SMOOTH=activation in SMOOTH, SHARED=v.ndim == 2, HAS_BIAS=has_bias,
        HAS_GF=grad_f is not None, HAS_GRF=grad_rf is not None, HAS_GRU=grad_ru is not None,
        HAS_GRW=grad_rw is not None, NEED_DX=need_dx, PRECISION=_precision(allow_tf32),
        EMULATE_BF16=_emulate_bf16(dtype),
    )  # fmt: skip

    def launch(config: tuple[int, int, int, int]) -> Tensor:
        # Idempotent (every output is overwritten), so the tuner may run it repeatedly.
        rows, warps, chunk, group = config
        programs = triton.cdiv(batch, rows)
        db_partial = torch.empty(programs, nb if has_bias else 0, device=dev, dtype=torch.float32)
        _sobolev_bwd_kernel[(programs,)](
            x, v, w_packed, z, rf, ru, rw if order == 2 else ru, grad_loss,
            grad_f if grad_f is not None else rf, grad_rf if grad_rf is not None else rf,
            grad_ru if grad_ru is not None else ru, grad_rw if grad_rw is not None else ru,
            adj, inputs, dx if need_dx else x, db_partial, batch, slope, coef_f, coef_u, coef_w,
            ROWS=rows, GROUP=group, num_warps=warps,
            CHUNKS=layout.chunks(chunk), **constexprs,
        )  # fmt: skip
        return db_partial

    db_partial = launch(_launch_config("bwd", layout, x, constexprs, launch))
    grad_w = []
    for l in range(layout.num_layers):
        # layer 1's inputs have no second-order rows (tt_0 = 0): use the first (1 + K) B rows
        used = stack if l > 0 else (1 + k) * batch
        a_l = adj[stack * layout.out_cum[l] :][: stack * widths[l + 1]].view(stack, -1)[:used]
        s_l = inputs[stack * layout.in_cum[l] :][: stack * widths[l]].view(stack, -1)[:used]
        grad_w.append(a_l.t() @ s_l)  # dW_l = A_l^T S_{l-1} over the stacked rows
    return dx, grad_w, db_partial.sum(0).to(dtype)
