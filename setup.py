"""Build script: the C++ CPU op always (when csrc/ has sources), the CUDA op when it can.

Switches (environment variables, never torch.cuda.is_available() alone, since a build
machine may have no GPU):
    FORCE_CUDA=1          build the CUDA kernels even without a visible GPU (needs nvcc)
    SOBOLEV_CPU_ONLY=1    never build CUDA kernels
    TORCH_CUDA_ARCH_LIST  e.g. "8.0;9.0" (read by torch.utils.cpp_extension)
    MAX_JOBS              parallel compile jobs (read by torch.utils.cpp_extension)
    SOBOLEV_DEBUG=1       -O0 -g -lineinfo
Build against the installed torch: pip install --no-build-isolation -e .
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def extensions():
    cpp = sorted(
        glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    )
    if not cpp:
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    debug = _flag("SOBOLEV_DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math lets the compiler vectorise the activation loops (selects between
    # computed values); nothing here reads floating-point exception flags.
    # (The C++ standard is left to torch: c++17 or c++20, whichever it was built with.)
    cxx += (
        ["-fopenmp", "-fno-trapping-math", "-DAT_PARALLEL_OPENMP"] if os.name != "nt" else ["/O2"]
    )
    cuda_sources = sorted(
        glob.glob(os.path.join("csrc", "cuda", "*.cu"))
        + glob.glob(os.path.join("csrc", "cuda", "*_binding.cpp"))
    )
    with_cuda = (
        not _flag("SOBOLEV_CPU_ONLY")
        and CUDA_HOME is not None
        and torch.version.cuda is not None
        and (torch.cuda.is_available() or _flag("FORCE_CUDA"))
        and bool(cuda_sources)
    )
    kwargs = dict(
        name="sobolev_kernels._C",
        sources=cpp + (cuda_sources if with_cuda else []),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx + (["-DWITH_CUDA"] if with_cuda else [])},
        extra_link_args=["-fopenmp"] if os.name != "nt" else [],
    )
    if with_cuda:
        nvcc = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        # No --use_fast_math: its sinf/expf intrinsics miss the fp32 tolerance (rtol 1e-5).
        kwargs["extra_compile_args"]["nvcc"] = nvcc + ["-DWITH_CUDA"]
        ext = CUDAExtension(**kwargs)
    else:
        ext = CppExtension(**kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
