"""What the autotuners measured during a benchmark run, as markdown: every candidate of every
tuned choice (Triton launch configs per kernel and shape; the faster fused backend under
``backend="auto"``) with its median GPU time, the winner marked. One GPU run thereby settles
every variant the code keeps selectable (dot precisions, tile shapes, backends)."""

from __future__ import annotations

from pathlib import Path

from sobolev_kernels import tuning


def tuning_markdown() -> str:
    lines = ["# Autotuner measurements", ""]
    if not tuning.measurements():
        return "\n".join(lines + ["Nothing was measured (no GPU, or SOBOLEV_AUTOTUNE=0).", ""])
    lines += ["| choice | candidate | median ms | |", "| --- | --- | ---: | --- |"]
    for key, record in tuning.measurements().items():
        winner = tuning.chosen(key)
        label = _label(key)
        for candidate, ms in record:
            time = f"{ms:.4f}" if ms is not None else "did not fit"
            mark = "**chosen**" if candidate == winner else ""
            lines.append(f"| {label} | {_candidate(candidate)} | {time} | {mark} |")
            label = ""
    return "\n".join(lines) + "\n"


def write_tuning_table(path: Path) -> None:
    path.write_text(tuning_markdown())


def _label(key) -> str:
    if isinstance(key, tuple) and key and key[0] == "triton":
        _, kernel, device, dtype, allow_tf32, batch, constants, *extra = key
        sizes = dict(constants)
        widths = sizes.get("WIDTHS")
        tf32 = ", tf32 allowed" if allow_tf32 else ""
        name = str(dtype).removeprefix("torch.")
        more = "".join(f", {e}" for e in extra)  # "wide tiles", a forced kernel form
        return (f"triton {kernel}, widths {widths}, K {sizes.get('K')}, order "
                f"{sizes.get('ORDER')}, {name}{tf32}, B <= {batch}{more}")  # fmt: skip
    if isinstance(key, tuple) and key and key[0] == "backend":
        _, device, dtype, widths, _, batch, k, _, order, *_ = key
        return (f"backend, widths {widths}, K {k}, order {order}, "
                f"{str(dtype).removeprefix('torch.')}, B <= {batch}")  # fmt: skip
    return str(key)


def _candidate(candidate) -> str:
    if hasattr(candidate, "_asdict"):  # a Triton LaunchConfig (its kernel's form named)
        fields = candidate._asdict()
        resident, activated = fields.pop("resident", False), fields.pop("activated", False)
        form = "resident: " if resident else "activated: " if activated else ""
        dw_tiles = fields.pop("dw_tiles", 1)  # the persistent backward's spans
        form += f"spans of {dw_tiles} tiles: " if dw_tiles > 1 else ""
        return form + ", ".join(f"{k} {v}" for k, v in fields.items())
    return str(candidate)
