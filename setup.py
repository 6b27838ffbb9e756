"""Build script. The C++ extension ``sobolev_kernels._C`` (fused CPU kernel; CUDA kernels
where it can) is optional: where it cannot build, the package installs as pure Python
(backends reference, torch, triton), and ``sobolev_kernels.backends.cuda.unavailable_reason()``
says why, from a note this script leaves next to where the extension would be.

    pip install .                          # pure Python: pip builds where torch is not visible
    pip install --no-build-isolation .     # with the extension, against the installed torch

Switches (environment variables, never torch.cuda.is_available() alone, since a build
machine may have no GPU):
    SOBOLEV_NO_EXTENSION=1       pure Python even where the extension could build
    SOBOLEV_REQUIRE_EXTENSION=1  a failed or skipped extension build is an error (CI, scripts/)
    FORCE_CUDA=1                 build the CUDA kernels even without a visible GPU (needs nvcc)
    SOBOLEV_CPU_ONLY=1           never build CUDA kernels
    SOBOLEV_NO_CUTLASS=1         the CUDA kernels without the vendored CUTLASS headers
                                 (third_party/cutlass): no CUTLASS GEMM for the weight gradients
    TORCH_CUDA_ARCH_LIST         e.g. "8.0;9.0" (read by torch.utils.cpp_extension)
    MAX_JOBS                     parallel compile jobs (read by torch.utils.cpp_extension)
    SOBOLEV_DEBUG=1              -O0 -g -lineinfo
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import sys

import setuptools
from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "sobolev_kernels"
# Read by sobolev_kernels/backends/cuda.py when sobolev_kernels._C cannot be imported.
NOTE = "_C_unavailable.txt"
HOW = (
    "for the C++ extension, reinstall with `pip install --no-build-isolation .` where torch is "
    "installed, with a C++ compiler (nvcc and a CUDA build of torch for the CUDA kernels)"
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _sources() -> tuple[list[str], list[str]]:
    cpp = glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    cuda = glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(
        os.path.join("csrc", "cuda", "*_binding.cpp")
    )
    return sorted(cpp), sorted(cuda)


def _skip_reason() -> str | None:
    """Why the extension is not even attempted, or None."""
    if _flag("SOBOLEV_NO_EXTENSION"):
        return "SOBOLEV_NO_EXTENSION=1 was set when the package was built"
    if not _sources()[0]:
        return "the C++ sources (csrc/) were missing when the package was built"
    try:
        import torch  # noqa: F401
    except (ImportError, OSError) as exc:
        return (
            f"torch was not importable when the package was built ({exc}); pip builds in an "
            f"isolated environment without it unless given --no-build-isolation"
        )
    cxx = shlex.split(os.environ.get("CXX", "c++"))[:1]
    if os.name != "nt" and not (cxx and shutil.which(cxx[0])):
        return f"no C++ compiler ({os.environ.get('CXX', 'c++')}) was found when it was built"
    return None


def _editable(cmd) -> bool:
    return getattr(cmd, "editable_mode", False)  # setuptools >= 64


def _note_dir(cmd) -> str:
    """Where sobolev_kernels._C goes: the source tree for editable installs, else build_lib."""
    return os.path.join(ROOT if _editable(cmd) else cmd.build_lib, PACKAGE)


def _leave_note(cmd, reason: str | None) -> None:
    """Record why there is no extension (or clear an old record and stale binaries)."""
    folder = _note_dir(cmd)
    path = os.path.join(folder, NOTE)
    if reason is None:
        if os.path.exists(path):
            os.remove(path)
        return
    if _flag("SOBOLEV_REQUIRE_EXTENSION"):
        sys.exit(f"sobolev_kernels: SOBOLEV_REQUIRE_EXTENSION=1 but {reason}")
    print(
        f"\n*** sobolev_kernels: installing WITHOUT the C++ extension (pure Python: backends "
        f"reference, torch, triton).\n*** Why: {reason}.\n*** {HOW[0].upper()}{HOW[1:]}.\n",
        file=sys.stderr,
    )
    os.makedirs(folder, exist_ok=True)
    if not _editable(cmd):  # an earlier build's binary in setuptools' build/ cache
        for stale in glob.glob(os.path.join(folder, "_C.*")):
            os.remove(stale)
    with open(path, "w") as fh:
        fh.write(f"the package was installed without it: {reason}\n")


SKIP = _skip_reason()


class BuildPy(build_py):
    """Leaves the note when the extension is skipped, clears an old one when it is built."""

    def run(self) -> None:
        super().run()
        _leave_note(self, SKIP)


def extensions():
    if SKIP is not None:
        return [], {"build_py": BuildPy}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    class OptionalBuildExtension(BuildExtension.with_options(no_python_abi_suffix=True)):
        """A failed compile installs pure Python (with a note) instead of failing pip."""

        def build_extensions(self) -> None:
            try:
                super().build_extensions()
            except Exception as exc:  # compiler errors come as several types (ninja: Runtime)
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
                _leave_note(self, f"the C++ build failed ({first}; `pip install -v` shows why)")

    cpp, cuda_sources = _sources()
    debug = _flag("SOBOLEV_DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math lets the compiler vectorise the activation loops (selects between
    # computed values); nothing here reads floating-point exception flags.
    # (The C++ standard is left to torch: c++17 or c++20, whichever it was built with.)
    cxx += (
        ["-fopenmp", "-fno-trapping-math", "-DAT_PARALLEL_OPENMP"] if os.name != "nt" else ["/O2"]
    )
    with_cuda = (
        not _flag("SOBOLEV_CPU_ONLY")
        and CUDA_HOME is not None
        and torch.version.cuda is not None
        and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
        and bool(cuda_sources)
    )
    kwargs = dict(
        name=f"{PACKAGE}._C",
        sources=cpp + (cuda_sources if with_cuda else []),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx + (["-DWITH_CUDA"] if with_cuda else [])},
        extra_link_args=["-fopenmp"] if os.name != "nt" else [],
    )
    if with_cuda:
        # the CUTLASS headers csrc/cuda/weight_grad_gemm.cu takes (scripts/vendor_cutlass.py);
        # where absent, it compiles without them and its GEMM is not offered
        if not _flag("SOBOLEV_NO_CUTLASS"):
            kwargs["include_dirs"].append(os.path.join(ROOT, "third_party", "cutlass", "include"))
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        # No --use_fast_math: its sinf/expf intrinsics miss the fp32 tolerance (rtol 1e-5).
        kwargs["extra_compile_args"]["nvcc"] = nvcc + ["-DWITH_CUDA"]
        ext = CUDAExtension(**kwargs)
    else:
        ext = CppExtension(**kwargs)
    return [ext], {"build_ext": OptionalBuildExtension, "build_py": BuildPy}


def license_metadata() -> dict:
    """MIT, and the vendored CUTLASS headers' BSD-3-Clause (the extension's CUDA kernels
    compile them in): SPDX fields where setuptools has them (77), the older free-text field
    before."""
    if int(setuptools.__version__.split(".")[0]) >= 77:
        return dict(license_expression="MIT AND BSD-3-Clause",
                    license_files=["LICENSE", "third_party/cutlass/LICENSE.txt"])  # fmt: skip
    return dict(license="MIT AND BSD-3-Clause")


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass, **license_metadata())
