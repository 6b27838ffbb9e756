"""Packaging: the sdist is complete, and installing it works the ways the README says.

Each install goes into a fresh venv that sees this environment's torch (through a .pth file,
so the checkout's editable install stays out of it) and runs pip from outside (`--python`).
- default pip (build isolation: torch not visible): pure Python, and the package says why;
- `--no-build-isolation` without a working compiler: pure Python, and it says why (an error
  under SOBOLEV_REQUIRE_EXTENSION=1, which scripts/setup_env.sh sets);
- `--no-build-isolation` with one: the C++ CPU kernel (about 30 s of compiling on 2 cores).
The default install fetches setuptools from the package index, as pip does for users.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP_TIMEOUT = 600

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the venv layout below is POSIX")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist of the checkout's files (git's view: no build leftovers, which setuptools
    would otherwise take from an old egg-info's SOURCES.txt)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    git = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    listed = subprocess.run(git, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    run = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True,
                         timeout=PIP_TIMEOUT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out / run.stdout.strip().splitlines()[-1]


def test_sdist_holds_every_source_and_the_package_files(sdist):
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        pkg_info = tar.extractfile(f"{sdist.name.removesuffix('.tar.gz')}/PKG-INFO").read()
    csrc = {p.relative_to(ROOT).as_posix() for d in ("csrc", "third_party")
            for p in (ROOT / d).rglob("*") if p.is_file()}  # fmt: skip
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "sobolev_kernels").rglob("*.py")}
    assert len(csrc) > 20 and any(name.endswith(".h") for name in csrc)
    missing = (csrc | package) - names
    assert not missing, f"missing from the sdist: {sorted(missing)}"
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE",
                 "CHANGELOG.md", "sobolev_kernels/py.typed"):  # fmt: skip
        assert name in names
    metadata = pkg_info.decode()
    assert "License-Expression: MIT AND BSD-3-Clause" in metadata  # (the vendored CUTLASS)
    assert "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: " in metadata


def _fresh_venv(path: Path) -> Path:
    """A venv without pip whose only torch (and numpy, setuptools) is this environment's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    site = site.stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    Path(site, "_outer_env.pth").write_text("\n".join(ours) + "\n")
    return python


def _pip_install(python: Path, sdist: Path, *flags: str, **env: str):
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
               "--no-cache-dir", "--disable-pip-version-check", "-v", *flags,
               str(sdist)]  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOBOLEV_")}
    return subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT,
                          env={**clean, "MAX_JOBS": "2", **env}, cwd=python.parents[1])  # fmt: skip


PROBE = """
import json, torch, sobolev_kernels as sk
from importlib.resources import files
model = sk.SobolevMLP(3, 8, 2, num_layers=2, activation="tanh", dtype=torch.float64)
x = torch.randn(16, 3, dtype=torch.float64)
y, jvp = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, 2, dtype=torch.float64)
v = torch.randn(2, 3, dtype=torch.float64)
losses = {b: sk.sobolev_loss(model, x, y, target_jvp=jvp, directions=v, backend=b).item()
          for b in sk.available_backends() if b in ("reference", "torch", "cuda")}
print(json.dumps(dict(file=sk.__file__, backends=sk.available_backends(), losses=losses,
                      reason=sk.available_backends(with_reasons=True)["cuda"],
                      typed=files("sobolev_kernels").joinpath("py.typed").is_file())))
"""


def _probe(python: Path) -> dict:
    import json

    run = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, timeout=300,
                         cwd=python.parents[1])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["file"].startswith(str(python.parents[1])), found["file"]  # not the checkout
    assert found["typed"]
    losses = list(found["losses"].values())
    assert len(losses) >= 2 and max(losses) - min(losses) <= 1e-9 * max(abs(x) for x in losses)
    return found


def _assert_pure_python(found: dict, why: str) -> None:
    assert "cuda" not in found["backends"] and "torch" in found["backends"]
    assert why in found["reason"] and "--no-build-isolation" in found["reason"], found["reason"]


def test_default_pip_install_is_pure_python_and_says_why(sdist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    run = _pip_install(python, sdist)  # build isolation: pip fetches setuptools, not torch
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "installing WITHOUT the C++ extension" in run.stdout + run.stderr
    _assert_pure_python(_probe(python), "torch was not importable when the package was built")


def test_a_failing_compiler_installs_pure_python(sdist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    run = _pip_install(python, sdist, "--no-build-isolation", CXX="false")  # `false --version`
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    _assert_pure_python(_probe(python), "the C++ build failed")


def test_no_compiler_with_require_extension_is_an_error(sdist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    run = _pip_install(python, sdist, "--no-build-isolation", CXX="/nonexistent/c++",
                       SOBOLEV_REQUIRE_EXTENSION="1")  # fmt: skip
    assert run.returncode != 0
    assert "SOBOLEV_REQUIRE_EXTENSION=1 but no C++ compiler" in run.stdout + run.stderr


@pytest.mark.heavy(34)
def test_no_build_isolation_builds_the_cpu_kernel_from_the_sdist(sdist, tmp_path):
    python = _fresh_venv(tmp_path / "venv")
    run = _pip_install(python, sdist, "--no-build-isolation", SOBOLEV_CPU_ONLY="1",
                       SOBOLEV_REQUIRE_EXTENSION="1")  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = _probe(python)
    assert "cuda" in found["backends"] and found["reason"] is None
    assert set(found["losses"]) >= {"reference", "torch", "cuda"}
