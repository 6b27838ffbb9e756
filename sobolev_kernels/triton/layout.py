"""Launch geometry of the fused Triton kernels, and whether a problem fits a GPU.

Imports no ``triton.jit`` (nor triton at all), so the backend can ask whether a problem fits
before any kernel is built, and the ahead-of-time compile check can size its launches.
A ``Layout`` is built once per (widths, K, order) and shared by the fit check and the
launchers (``Layout.of``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import torch

from .. import tuning

__all__ = [
    "CHUNK",
    "LaunchConfig",
    "Layout",
    "MAX_TILE_ROWS",
    "MIN_PAD",
    "RESIDENT_MAX_WIDTH",
    "TILE_PER_THREAD",
    "cdiv",
    "gpu_properties",
    "multiprocessors",
    "next_power_of_2",
    "shared_memory_limit",
    "tf32_splits_rows",
]

MIN_PAD = 16  # tl.dot needs every dimension >= 16
# Register budget: elements of the value + tangent accumulator tiles at the widest layer per
# thread of a program. 32 kept config S, M and M order 2 (nearly) free of spills in
# ahead-of-time compiles for sm_90 (bench/results/triton_resources_sm90.md).
TILE_PER_THREAD = 32
# K step of the dots: each layer's inputs come back from memory CHUNK columns at a time, so
# no dot holds a whole K extent in registers. Whole-K dots in registers spilled kilobytes per
# thread at width 64 and 128 in every precision (same survey), and are gone.
CHUNK = 32
MAX_TILE_ROWS = 2048  # KP * MIN_PAD beyond this is not offered (large K, see fits)
RESIDENT_MAX_WIDTH = 128  # widest padded layer the resident forward holds in registers


@tuning.register_choice_type  # (a tuner's choice that a tuning file can carry)
class LaunchConfig(NamedTuple):
    """One launch of a fused kernel: what the autotuner chooses between."""

    rows: int  # batch rows per program
    warps: int
    chunk: int  # K step of the dots
    group: int  # directions per pass over a layer's weights
    precision: str  # tl.dot input_precision of fp32 operands: "ieee", "tf32x3" or "tf32"
    cols: int = 0  # output columns per pass of a layer (0: all of them)
    resident: bool = False  # the forward with its activations in registers (forward_resident.py)
    # the chunked forward storing each hidden layer's activated outputs once for the next
    # layer to reload, instead of its pre-activations activated again per pass (forward.py)
    activated: bool = False
    # the persistent backward's row tiles per weight-gradient step (persistent_backward.py)
    dw_tiles: int = 1


def tf32_splits_rows(config: LaunchConfig) -> bool:
    """Whether ``config`` has a TF32 dot ("tf32x3", "tf32") of 64 <= M < 16 x warps rows: on
    more than one warpgroup, a wgmma tile that the warpgroups share by splitting its columns.
    With triton 3.6 on the H200 (2026-11-27) every such launch measured computed a wrong
    loss (3e-3 off) or ended the process with an illegal memory access: the 64-row tiles on 8
    warps, in both kernels, forward and step. Such configs are never offered. (Order 2's
    second-order tiles have the first-order ones' rows.)"""
    if config.precision not in ("tf32x3", "tf32") or config.warps <= 4:
        return False
    dot_rows = (config.rows, config.group * config.rows)
    return any(64 <= m < 16 * config.warps for m in dot_rows)


def next_power_of_2(n: int) -> int:
    # (triton.next_power_of_2 and triton.cdiv cost about 5 us a call, as jit-callable
    # functions: a step's launch plans ask a dozen times)
    return 1 << max(0, n - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pad(n: int) -> int:
    return max(MIN_PAD, next_power_of_2(n))


def _prefix(values: list[int]) -> tuple[int, ...]:
    out, total = [], 0
    for v in values:
        out.append(total)
        total += v
    return tuple(out)


def shared_memory_limit(device: torch.device) -> int | None:
    """Largest shared memory one program may use on ``device`` (None: no limit, the CPU
    interpreter)."""
    props = gpu_properties(device)
    return None if props is None else props.shared_memory_per_block_optin


def multiprocessors(device: torch.device) -> int:
    """SMs of ``device`` (1 off CUDA)."""
    props = gpu_properties(device)
    return 1 if props is None else props.multi_processor_count


_PROPERTIES: dict[torch.device, object] = {}
_MISSING = object()
T = TypeVar("T")


def gpu_properties(device: torch.device):
    """``torch.cuda.get_device_properties`` of a CUDA ``device``, asked once per device (a
    step asks several times, and torch's call costs microseconds of host time); None off
    CUDA. The one place the launchers learn which GPU they launch for: the shared memory
    limit, the SMs, programs per SM (``bench/triton_cache.py`` stands an H200 in for the CPU
    here, to compile a GPU's kernels without one)."""
    props = _PROPERTIES.get(device)
    if props is None:
        if device.type != "cuda":
            return None
        props = _PROPERTIES[device] = torch.cuda.get_device_properties(device)
    return props


@dataclass(frozen=True)
class Layout:
    """Compile-time shape of one MLP, direction count and order, and its buffer offsets."""

    widths: tuple[int, ...]  # (d, n_1, ..., n_{L-1}, m)
    k: int
    order: int = 1
    # derived once (a step reads them dozens of times: host time, which the H200 run found
    # to bound the step below B = 4096)
    num_layers: int = field(init=False, repr=False, compare=False)
    pads: tuple[int, ...] = field(init=False, repr=False, compare=False)  # widths padded
    kp: int = field(init=False, repr=False, compare=False)  # K up to a power of two
    # row blocks of a stacked (S B, n) buffer: values, then order K tangent blocks
    blocks: int = field(init=False, repr=False, compare=False)
    b_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)  # b_l's, packed
    # prefix sums of n_1..n_L (layer l's rows) and n_0..n_{L-1} (its inputs), in units of S B
    out_cum: tuple[int, ...] = field(init=False, repr=False, compare=False)
    in_cum: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _memo: dict = field(init=False, repr=False, compare=False)  # per-shape constants, built once

    def __post_init__(self) -> None:
        derived = dict(
            num_layers=len(self.widths) - 1,
            pads=tuple(_pad(n) for n in self.widths),
            kp=next_power_of_2(self.k),
            blocks=1 + self.order * self.k,
            b_offsets=_prefix(list(self.widths[1:])),
            out_cum=_prefix(list(self.widths[1:])),
            in_cum=_prefix(list(self.widths[:-1])),
            _memo={},
        )
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set once, here

    @staticmethod
    def of(widths: tuple[int, ...], k: int, order: int) -> Layout:
        """The layout of a shape, built once per process (a plain dict, which torch.compile
        traces: the fit check runs while it traces a step)."""
        key = (tuple(widths), k, order)
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = _LAYOUTS[key] = Layout(*key)
        return layout

    def cached(self, key: tuple, build: Callable[[], T]) -> T:
        """``build()``, once per layout and ``key``: what a launch derives from the shape
        alone (a step's host time; callers must not change what it returns)."""
        value = self._memo.get(key, _MISSING)
        if value is _MISSING:
            value = self._memo[key] = build()
        return value

    def saved_elements(self, batch: int) -> int:
        """Size of the saved hidden pre-activations [z; tz; ttz] of every hidden layer."""
        return self.blocks * batch * sum(self.widths[1:-1])

    def fits(self, device: torch.device, element_size: int) -> str | None:
        """Why this shape cannot run on ``device`` (None: it fits)."""
        if self.order * self.kp * MIN_PAD > MAX_TILE_ROWS:
            return f"K = {self.k} directions do not fit on chip"
        # The widest layer's weight tile and the row tiles of the smallest program must fit
        # in the GPU's shared memory (16-bit dots need more on Hopper: see shared_bytes).
        limit = shared_memory_limit(device)
        need = self.shared_bytes(MIN_PAD, element_size)
        if limit is not None and need > limit:
            return (
                f"its tiles need about {need // 1024} KiB of shared memory (widths "
                f"{list(self.widths)}, K = {self.k}), this GPU has {limit // 1024} KiB"
            )
        return None

    def shared_bytes(self, rows: int, element_size: int, chunk: int = CHUNK,
                     group: int | None = None, precision: str = "ieee",
                     cols: int = 0) -> int:  # fmt: skip
        """Estimated shared memory of one program: two weight tiles of the widest layer plus
        the value and tangent operand tiles (``group`` directions, default the static
        launch's ``group(rows, num_warps())``) of its dot products, all cut to ``chunk`` along
        K (and the weight tiles to ``cols`` output columns; 0: all).

        Calibrated on ahead-of-time compiles with triton 3.6 and 3.9
        (scripts/check_triton_compile.py): an upper bound for exact fp32 dots on sm_80 and
        sm_90 (the backward keeps a second weight tile); 16-bit dots on sm_90 (wgmma) use up
        to 1.75x more (config L's backward), and fp32 operands on tensor cores ("tf32x3",
        "tf32": TF32 copies, and for tf32x3 their remainders) 2.1x more (64 rows at width
        32), hence the margins.
        """
        tangent_rows = self.order * (group or self.group(rows, self.num_warps())) * rows
        per_layer = []
        for a, b in zip(self.pads, self.pads[1:]):
            k_a, k_b = min(chunk, a), min(chunk, b)
            n_a, n_b = min(cols or a, a), min(cols or b, b)
            per_layer.append(2 * max(k_a * n_b, k_b * n_a) + (rows + tangent_rows) * max(k_a, k_b))
        if element_size < 4:
            margin = 2.0
        else:
            margin = 1.0 if precision == "ieee" else 2.5
        extra = 0
        if cols:
            # column-block launches (64 rows): the output layer's fp32 tiles of every stream
            # pass through shared memory (the target contractions' reshapes), with room: an
            # order-2 fp16 forward needed 1.9x the rest (check_triton_compile's full set)
            extra = 3 * 4 * (rows + tangent_rows) * self.pads[-1]
        return int(element_size * max(per_layer) * margin) + extra

    def tile_elements(self, rows: int, group: int | None = None, cols: int = 0) -> int:
        """Elements of the value and tangent tiles (``group`` directions, default K) of one
        program at the widest layer (``cols`` columns of it per pass; 0: all)."""
        widest = max(self.pads[1:-1] or self.pads)
        return (1 + self.order * (group or self.kp)) * rows * min(cols or widest, widest)

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

    def group(self, rows: int, warps: int, cols: int = 0, budget: int = 1) -> int:
        """Directions per pass over a layer's weights: the largest power of two up to KP
        whose tiles (``cols`` columns per pass) fit ``budget`` times the register budget of
        ``warps`` warps (at least one). Where 16 rows of all K directions overflow it, fewer
        per pass removed most spills in ahead-of-time compiles for sm_90
        (bench/results/triton_resources_sm90.md, "Direction groups")."""
        group = self.kp
        limit = budget * self.tile_budget(warps)
        while group > 1 and self.tile_elements(rows, group, cols) > limit:
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

    def static_config(
        self, element_size: int = 4, shared_limit: int | None = None, precision: str = "ieee"
    ) -> LaunchConfig:
        """The static launch (no autotuning): ``rows()``, ``num_warps()``, CHUNK, ``group()``,
        all columns of a layer per pass, and the given dot precision."""

        def build() -> LaunchConfig:
            rows, warps = self.rows(element_size, shared_limit), self.num_warps()
            return LaunchConfig(rows, warps, CHUNK, self.group(rows, warps), precision)

        return self.cached(("static", element_size, shared_limit, precision), build)

    def constexprs(self) -> dict:
        """The compile-time constants both kernels take from the layout (the backward also
        takes ``IN_CUM=self.in_cum``)."""
        return dict(WIDTHS=self.widths, PADS=self.pads,
                    B_OFFS=self.b_offsets, OUT_CUM=self.out_cum, NUM_LAYERS=self.num_layers,
                    K=self.k, KP=self.kp, ORDER=self.order)  # fmt: skip

    def launch_configs(
        self,
        element_size: int = 4,
        shared_limit: int | None = None,
        precision: str = "ieee",
        tensor_core_precision: str | None = None,
        wide: bool = False,
    ) -> list[LaunchConfig]:
        """Candidates for the autotuner, the static choice first.

        Its neighbours in warps (4 <-> 8, and 16 where MIN_PAD rows overflow 8 warps'
        budget) and in directions per pass (all K in one pass where the static choice splits
        them, else half: passes over the weights against registers; config L spilled nothing
        either way). With ``tensor_core_precision`` (fp32: "tf32x3", fp32-accurate, or
        "tf32" where the user allows it; 16-bit: their own dots), tensor-core candidates too:
        the static launch in that precision, and with ``wide`` ``tensor_core_config``. The
        H200 profile (2026-11-26) had fp32 dots on FMA units at 9 TFLOP/s; on the H200 runs
        of 2026-11-27 the static launch in 3xTF32 won the forward at S and M (up to 1.6x the
        exact one), and ``tensor_core_config`` (64 rows on 4 warps) beat it by 1.3x (S) and
        1.7x (M); the forward offers it (choices.py), the backward in fp32 (correct there on
        the H200, its speed unmeasured; ``choices._wide_tiles``). Never a config that
        ``tf32_splits_rows``.

        Few on purpose: each is a compile of several seconds the first time a shape runs
        (the rows and K-step neighbours of earlier rounds are gone for the tensor-core ones:
        the benchmark's compile stage must fit its minutes)."""
        rows, warps = self.rows(element_size, shared_limit), self.num_warps()
        configs = [(rows, warps), (rows, 12 - warps)]  # 4 <-> 8
        if self.tile_elements(MIN_PAD) > self.tile_budget(8):  # many directions: fewer spills
            configs.append((rows, 16))
        out = [LaunchConfig(r, w, CHUNK, self.group(r, w), precision) for r, w in configs]
        static = out[0]
        if self.kp > 1:
            group = self.kp if static.group < self.kp else static.group // 2
            out.append(static._replace(group=group))
        if tensor_core_precision is not None:
            if tensor_core_precision != precision:
                out.append(static._replace(precision=tensor_core_precision))
            if wide:
                tiles = [self.tensor_core_config(tensor_core_precision)]
                if tensor_core_precision in ("tf32x3", "tf32"):  # fp32: 128 rows too
                    tiles.append(self.tensor_core_config(tensor_core_precision, rows=128))
                for t in tiles:
                    need = self.shared_bytes(t.rows, element_size, t.chunk, t.group,
                                             t.precision)  # fmt: skip
                    if shared_limit is None or need <= shared_limit:
                        out.append(t)
        return [c for c in out if not tf32_splits_rows(c)]

    def resident_fits(self, shared_limit: int | None = None, element_size: int = 4) -> str | None:
        """Why the resident forward (forward_resident.py) cannot take this shape (None: it
        can): its register tiles are whole layers, at most RESIDENT_MAX_WIDTH wide, and two
        whole W^T tiles of the widest layer sit in shared memory (what ahead-of-time compiles
        for sm_90 used: 2 x 64 KiB at width 128 in fp32, 2 x 32 KiB in bf16)."""
        if max(self.pads) > RESIDENT_MAX_WIDTH:
            return f"a layer is wider than {RESIDENT_MAX_WIDTH} (widths {list(self.widths)})"
        need = 2 * element_size * max(a * b for a, b in zip(self.pads, self.pads[1:]))
        if shared_limit is not None and need > shared_limit:
            return f"its weight tiles need {need // 1024} KiB of shared memory"
        return None

    def resident_configs(
        self, element_size: int = 4, shared_limit: int | None = None,
        precision: str = "tf32x3", kernel: str = "fwd",
    ) -> list[LaunchConfig]:  # fmt: skip
        """The resident kernels' launch configs, in tensor-core ``precision``: 64 rows on 8
        warps and 32 on 4, all directions in one pass where their tiles stay within 4x the
        chunked kernel's register budget, else fewer; for the backward (``kernel`` "bwd")
        only those with all of them, since its a_z sums every direction's terms. On the H200
        (2026-11-27, config M in bf16) they ran the forward in 0.19 ms, the chunked kernel's
        best in 0.41 ms (bench.launch_configs); in fp32 (3xTF32) the resident forward lost to
        the chunked one."""
        if self.resident_fits(shared_limit, element_size) is not None:
            return []
        out = []
        for rows, warps in ((64, 8), (32, 4)):
            group = self.group(rows, warps, budget=4)
            out.append(LaunchConfig(rows, warps, CHUNK, group, precision, resident=True))
        return [c for c in out if not tf32_splits_rows(c)
                and (kernel == "fwd" or c.group == self.kp)]  # fmt: skip

    def tensor_core_config(self, precision: str, rows: int = 64) -> LaunchConfig:
        """64 batch rows on 4 warps, a layer's output columns a block at a time: wgmma tiles
        on sm_90 (16-row programs get mma.sync). Columns are halved down to 32, then the
        directions per pass, then columns down to 16, until the tiles fit the register
        budget. On the H200 (2026-11-27) this forward ran config M in fp32 (3xTF32) in
        0.61 ms, the static launch in 3xTF32 in 1.03 ms, and config S in 0.49 ms against
        0.66 ms (bench.launch_configs). The same tiles on 8 warps computed wrong losses or
        faulted there (see tf32_splits_rows). ``rows`` 128: on 8 warps, a warpgroup's 64
        rows each (as the correct 128-row resident launches there), the weight tiles shared
        by both: at M in fp32 the forward went from 0.90 ms on 32 rows to 0.61 on 64, and
        128 was not measured (unmeasured on a GPU: a candidate beside the 64-row one, whose
        registers a thread it keeps ahead of time, triton 3.6, configs S, M and L)."""
        warps = rows // 16
        group, cols = self.kp, max(self.pads[1:-1] or self.pads)
        while self.tile_elements(rows, group, cols) > self.tile_budget(warps):
            if cols > 32:
                cols //= 2
            elif group > 1:
                group //= 2
            elif cols > MIN_PAD:
                cols //= 2
            else:
                break
        return LaunchConfig(rows, warps, CHUNK, group, precision, cols)

    def activates_per_pass(self, config: LaunchConfig) -> bool:
        """Whether the chunked forward under ``config`` activates a hidden layer's outputs
        more than once (where an ``activated`` twin saves work): the next layer reloads and
        activates them once per pass, and its passes are its column blocks (``cols``
        narrower than a hidden layer that follows another) times its direction groups."""
        hidden = self.pads[1:-1]
        if not hidden or config.resident:
            return False
        narrow = 0 < config.cols < max(hidden[1:], default=config.cols)
        return narrow or config.group < self.kp

    def col_blocks(self, cols: int, kernel: str) -> tuple[int, ...]:
        """COLS of a kernel: per layer l, the columns one pass computes (0: all of them) —
        of layer l's outputs in the forward (the output layer always whole), of its inputs
        in the backward."""
        if kernel == "fwd":
            hidden = [min(cols or p, p) for p in self.pads[1:-1]]
            return (*hidden, self.pads[-1])
        return tuple(min(cols or p, p) for p in self.pads[:-1])

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

    def weight_grad_constexprs(self, has_bias: bool, max_tile: int = 64) -> dict:
        """The split-K weight-gradient kernel's constexprs (``weight_grad.py``): square
        output tiles of up to ``max_tile`` (at least 16, what tl.dot takes), TILE_CUM[l] the
        first tile of layer l's dW (TILE_CUM[-1] tiles in all), W_OFFS / B_OFFS where dW_l /
        db_l start in a row of N_PARTIAL partial sums (the same for every tile), 32 stacked
        rows per step; K and ORDER place the tangent blocks of the stacks. Built once per
        shape (a step asks three times); a copy, which callers may extend."""
        key = ("weight_grad", has_bias, max_tile)
        return dict(self.cached(key, lambda: self._weight_grad_constexprs(has_bias, max_tile)))

    def _weight_grad_constexprs(self, has_bias: bool, max_tile: int) -> dict:
        widths, layers = self.widths, self.num_layers
        tile = max(16, min(max_tile, next_power_of_2(max(widths))))
        tiles = [-(-widths[l + 1] // tile) * -(-widths[l] // tile) for l in range(layers)]
        sizes = [widths[l + 1] * widths[l] for l in range(layers)]
        biases = sum(widths[1:]) if has_bias else 0
        return dict(
            WIDTHS=widths, OUT_CUM=self.out_cum, IN_CUM=self.in_cum,
            TILE_CUM=(*_prefix(tiles), sum(tiles)), W_OFFS=_prefix(sizes),
            B_OFFS=tuple(sum(sizes) + o for o in self.b_offsets), NUM_LAYERS=layers,
            N_PARTIAL=sum(sizes) + biases, HAS_BIAS=has_bias, BM=tile, BN=tile, BK=32,
            K=self.k, ORDER=self.order,
        )  # fmt: skip


_LAYOUTS: dict[tuple, Layout] = {}
