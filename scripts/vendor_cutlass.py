"""Vendors the CUTLASS headers the CUDA kernels include into third_party/cutlass/include.

    python scripts/vendor_cutlass.py                  # from the pinned wheel (pip download)
    python scripts/vendor_cutlass.py --wheel W.whl    # from a wheel already downloaded
    python scripts/vendor_cutlass.py --check          # the vendored copy is closed (CI)

Why vendored: the GPU machines build the extension offline, and the headers that
csrc/cuda/weight_grad_gemm.cu reaches are 1.5% of the wheel's (about 240 files, 5 MB of 37).
Which ones: the closure of every CUTLASS include (#include "cutlass/..." or "cute/...") of
the kernels, followed through the wheel's own headers, every conditional branch included.
Re-run after a kernel includes another CUTLASS header; ``--check`` (a CI test) fails where
an include is missing from the copy.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = "4.2.0.0"  # nvidia-cutlass on PyPI (CUTLASS 4.2)
DEST = ROOT / "third_party" / "cutlass"
INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]((?:cutlass|cute)/[^">]+)[">]', re.M)
IN_WHEEL = "cutlass_library/source/include/"


def _includes(text: str) -> list[str]:
    return INCLUDE.findall(text)


def kernel_sources() -> list[Path]:
    """The CUDA sources that include CUTLASS."""
    return [p for p in sorted((ROOT / "csrc" / "cuda").glob("*.c*")) + sorted(
        (ROOT / "csrc" / "cuda").glob("*.h")) if _includes(p.read_text())]  # fmt: skip


def closure(read) -> tuple[set[str], set[str]]:
    """(headers reached, includes not found) from the kernels' CUTLASS includes; ``read``
    gives a header's text by its include path, or None."""
    todo = [inc for src in kernel_sources() for inc in _includes(src.read_text())]
    seen, missing = set(), set()
    while todo:
        path = todo.pop()
        if path in seen or path in missing:
            continue
        text = read(path)
        if text is None:
            missing.add(path)
            continue
        seen.add(path)
        todo.extend(_includes(text))
    return seen, missing


def _wheel(path: Path | None, tmp: Path) -> Path:
    if path is not None:
        return path
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp),
                    f"nvidia-cutlass=={VERSION}"], check=True)  # fmt: skip
    return next(tmp.glob("nvidia_cutlass-*.whl"))


def vendor(wheel: Path | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        whl = zipfile.ZipFile(_wheel(wheel, Path(tmp)))
        names = set(whl.namelist())

        def read(path: str) -> str | None:
            name = IN_WHEEL + path
            return whl.read(name).decode() if name in names else None

        headers, missing = closure(read)
        if missing:
            print(f"not in the wheel: {sorted(missing)}", file=sys.stderr)
            return 1
        shutil.rmtree(DEST / "include", ignore_errors=True)
        for path in sorted(headers):
            out = DEST / "include" / path
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(whl.read(IN_WHEEL + path))
        license_name = next(n for n in names if n.endswith("licenses/LICENSE.txt"))
        (DEST / "LICENSE.txt").write_bytes(whl.read(license_name))
    print(f"vendored {len(headers)} headers of nvidia-cutlass {VERSION} into {DEST / 'include'}")
    return 0


def check() -> int:
    """0 where every CUTLASS include the kernels reach is in the vendored copy."""

    def read(path: str) -> str | None:
        file = DEST / "include" / path
        return file.read_text() if file.is_file() else None

    headers, missing = closure(read)
    if missing or not headers:
        print(f"third_party/cutlass lacks {sorted(missing) or 'every header'}: run "
              "python scripts/vendor_cutlass.py", file=sys.stderr)  # fmt: skip
        return 1
    print(f"ok: {len(headers)} vendored headers cover the kernels' CUTLASS includes")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, help="the nvidia-cutlass wheel (else downloaded)")
    parser.add_argument("--check", action="store_true", help="only check the vendored copy")
    args = parser.parse_args(argv)
    return check() if args.check else vendor(args.wheel)


if __name__ == "__main__":
    sys.exit(main())
