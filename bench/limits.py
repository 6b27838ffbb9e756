"""The fastest a training step could run on a device: the larger of its FLOPs at the peak rate
of its precision and its bytes at the memory bandwidth. The report divides this limit by the
measured time ("of limit": 1 would be at the limit).

Both counts are lower bounds, taken from the sizes of a point alone, so every provider of a
point has the same limit:
- FLOPs: the GEMMs on the (1 + order K) B stacked rows, 2 r n_in n_out per layer forward and
  twice that backward (input adjoints and weight gradients).
- bytes: what a fully fused step must move: inputs and targets read once, the weights read and
  (step) their gradients written. Everything else could stay on chip.
"""

from __future__ import annotations

import math

# Dense peaks from NVIDIA's data sheets (no sparsity): TFLOP/s per precision class and HBM
# TB/s. fp32 is the FMA units' rate: fp32-accurate rows run there (IEEE; 3xTF32 is slower).
# Matched by substring of torch.cuda.get_device_name(), the first match wins.
_HOPPER = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}
DEVICE_PEAKS: list[tuple[str, dict[str, float], float]] = [
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}, 2.0),
    ("H100", _HOPPER, 3.35),  # SXM
    ("H200", _HOPPER, 4.8),
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, 2.04),  # SXM 80GB
]
# The shape of a benchmark point: make_problem's arguments, the CSV's size columns.
SIZE_COLUMNS = ("batch", "dim", "width", "layers", "out", "k", "order")
BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


def peaks(device: str) -> tuple[dict[str, float], float] | None:
    """({precision: TFLOP/s}, TB/s) of a device name, or None when not in the table (CPU)."""
    for key, flops, bandwidth in DEVICE_PEAKS:
        if key in device:
            return flops, bandwidth
    return None


def widths(dim: int, width: int, layers: int, out: int) -> list[int]:
    """Layer widths of a ``SobolevMLP(dim, width, out, layers)``: ``layers`` Linear layers."""
    return [dim, *[width] * (layers - 1), out]


def step_flops(batch: int, dim: int, width: int, layers: int, out: int, k: int,
               order: int = 1, mode: str = "step") -> float:  # fmt: skip
    rows = batch * (1 + order * k)
    w = widths(dim, width, layers, out)
    forward = 2.0 * rows * sum(a * b for a, b in zip(w, w[1:]))
    return forward if mode == "forward" else 3 * forward


def step_bytes(batch: int, dim: int, width: int, layers: int, out: int, k: int,
               order: int = 1, mode: str = "step", precision: str = "fp32") -> float:  # fmt: skip
    w = widths(dim, width, layers, out)
    params = sum(a * b + b for a, b in zip(w, w[1:]))
    per_row = dim + out + k * dim + order * k * out  # x, y, directions, JVP (+ HVP) targets
    moved = batch * per_row + params * (1 if mode == "forward" else 2)
    return float(moved * BYTES[precision])


def limit_ms(device: str, precision: str, sizes: dict, mode: str = "step") -> tuple[float, str]:
    """(the step's lower bound in ms on ``device``, "FLOPs" or "bytes": which bound it is);
    (NaN, "") where the device's peaks are unknown. sizes: batch, dim, width, layers, out, k,
    order."""
    found = peaks(device)
    if found is None or precision not in found[0]:
        return math.nan, ""
    flops, bandwidth = found
    compute = step_flops(**sizes, mode=mode) / (flops[precision] * 1e12)
    memory = step_bytes(**sizes, mode=mode, precision=precision) / (bandwidth * 1e12)
    return 1e3 * max(compute, memory), "FLOPs" if compute >= memory else "bytes"
