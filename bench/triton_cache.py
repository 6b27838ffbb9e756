"""The GPU script's Triton kernels, compiled here without a GPU and carried to the GPU machine.

    bash scripts/gpu_session.sh --prebuild      # here, before a session's first device call
    python -m bench.triton_cache install        # there (gpu_session.sh's env stage does it)

Then pass ``carry=[".gpu_work/prebuild/triton_cache.tar.gz"]`` to the device's run. Everything
the build keeps (its full cache, the downloaded wheel) stays in ``.gpu_work/prebuild/``, which
the GPU script leaves out of the results it packs.

Why: the H200 machine's host compiles slowly. Run 5 (2026-11-27) took 191 s on 6 processes
to compile the benchmark's 153 kernels there, beside the gpu tests; the kernel forms added
since doubled them (309 on 2026-11-29), where this machine compiles one in about 2 s. Its
time on the GPU machine is taken from the tests, the bench and the profile.

How: every point the GPU script's precompile would run (``bench.step.precompile_jobs`` of its
``COMPILE_ARGS``, at the GPU's batch sizes: integer arguments derived from the batch are part
of a kernel's key) runs here on CPU tensors through Triton's GPU launch path, with a faked
driver (``tests/fake_triton_driver.py``: device 0 of an sm_90 GPU) and an H200's SMs and
shared memory standing in for the CPU's (``layout.gpu_properties``), so the launchers choose
the GPU's launch configs; the tuner runs every candidate. Each kernel compiles for real with
the GPU machine's Triton (3.6: run this with it, ``PYTHONPATH=.venv/triton-3.6.0``) into a
cache whose entries keep only the binary and its metadata. Triton's cache key hashes its
compiled library, which differs between Python versions: the entries are keyed for the GPU
machine's Python (3.12 there) with that build's library hash (its wheel is downloaded; the
key so formed equals the one that wheel's own Triton computes under Python 3.12, 2026-11-29).

Where a key still differs there (another Triton build, a cache-invalidating TRITON_* setting),
nothing is lost: that kernel compiles as it would have. ``install`` says whether the Triton
there is the one the entries were keyed for.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import types
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".gpu_work" / "prebuild"  # (gpu_session.sh packs none of it)
ARCHIVE = WORK / "triton_cache.tar.gz"
MANIFEST = "manifest.json"
DEVICE_PYTHON = "3.12"  # the H200 machine's (/opt/torch/.venv, 2026-11-27)
# An H200's (and an H100 SXM's) SMs and opt-in shared memory a block: what the launchers read
H200 = {"name": "NVIDIA H200", "multi_processor_count": 132,
        "shared_memory_per_block_optin": 232448}  # fmt: skip
CARRY_LIMIT = 64 << 20  # what the device tool carries in all


def key_parts(triton_key: str | None = None) -> dict:
    """What Triton's cache key takes from the machine rather than the kernel (a digest of
    the Triton build, ptxas's version for sm_90, the cache-invalidating TRITON_* settings):
    equal here and there, a kernel's key is equal too."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.nvidia.compiler import get_ptxas_version
    from triton.runtime.cache import triton_key as this_triton

    return {"triton_key_sha256": hashlib.sha256((triton_key or this_triton()).encode()).hexdigest(),
            "ptxas": get_ptxas_version(90).strip().splitlines()[-1],
            "env_vars": dict(sorted(get_cache_invalidating_env_vars().items()))}  # fmt: skip


# -- build (here) ---------------------------------------------------------------------------


def _library_sha(read) -> str:
    digest = hashlib.sha256()
    while chunk := read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def device_triton_key(python: str, wheels: Path) -> str:
    """Triton's cache key prefix as the same Triton version built for ``python`` computes
    it: the same sources, its own ``libtriton`` (downloaded with its wheel into ``wheels``)."""
    import triton
    from triton.runtime.cache import triton_key

    key = triton_key()
    if python == f"{sys.version_info.major}.{sys.version_info.minor}":
        return key
    wheels.mkdir(parents=True, exist_ok=True)
    pattern = f"triton-{triton.__version__}-cp{python.replace('.', '')}-*.whl"
    if not list(wheels.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", python, "--platform",
                        "manylinux_2_28_x86_64", f"triton=={triton.__version__}", "-d",
                        str(wheels)], check=True)  # fmt: skip
    found = sorted(wheels.glob(pattern))
    with zipfile.ZipFile(found[-1]) as wheel, wheel.open("triton/_C/libtriton.so") as lib:
        theirs = _library_sha(lib.read)
    with open(Path(triton.__file__).parent / "_C" / "libtriton.so", "rb") as lib:
        ours = _library_sha(lib.read)
    if key.count(ours) != 1:
        raise RuntimeError("this Triton's cache key does not hash its library as expected")
    return key.replace(ours, theirs)


def _start_worker(triton_key: str) -> None:
    """A build process: the faked GPU driver, an H200 for the CPU, real compiles keyed with
    ``triton_key``, each kernel then left as a no-op to launch."""
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_triton_driver  # (before sobolev_kernels.triton)
    from triton.runtime import cache, jit

    compile_for_real = jit.JITFunction._do_compile
    fake_triton_driver.install()
    cache.triton_key = lambda: triton_key

    def compile_then_skip(self, key, signature, device, *args, **kwargs):
        kernel = compile_for_real(self, key, signature, device, *args, **kwargs)
        _COMPILED.add(cache._base32(kernel.hash))
        # (the faked driver's compile: a no-op kernel in the JIT's cache, in the real one's place)
        return fake_triton_driver._compile_nothing(self, key, signature, device, *args, **kwargs)

    jit.JITFunction._do_compile = compile_then_skip
    import torch

    from sobolev_kernels.triton import layout

    fake_triton_driver.as_gpu_backend()
    layout._PROPERTIES[torch.device("cpu")] = types.SimpleNamespace(**H200)
    torch.set_num_threads(1)
    os.environ["SOBOLEV_AUTOTUNE"] = "1"


_COMPILED: set[str] = set()


def _build_point(job) -> tuple[str, list[str], str]:
    """Run one precompile point on the CPU (every tuner candidate); (its name, the cache
    entries of the kernels it was first in this process to launch, its problems)."""
    from bench.providers import make_problem, set_precision, step_fn
    from sobolev_kernels import tuning

    sizes, precision, provider, modes = job
    name = f"{provider} {precision} width {sizes['width']}"
    _COMPILED.clear()
    problems = []
    set_precision(precision)
    problem = make_problem(**sizes, precision=precision, device="cpu")
    for mode in modes:
        tuning.clear()  # every candidate, as the precompile's jobs compile them
        try:
            step_fn(provider, problem, mode)()
        except Exception as exc:  # noqa: BLE001 - reported, as the GPU's precompile does
            problems.append(f"{mode}: {type(exc).__name__}: {exc}"[:300])
    return name, sorted(_COMPILED), "; ".join(problems)


def build_points(bench_args: list[str]) -> list[tuple]:
    """The GPU script's precompile points, one per (shape, precision, provider, modes)."""
    from bench import step as bench_step
    from bench.providers import TRITON_VARIANTS

    args = bench_step.parse([*bench_args, "--device", "cuda"])  # (the GPU's batches)
    wanted = set(args.providers or ("triton", *TRITON_VARIANTS)) - set(args.exclude)
    providers = [p for p in ("triton", *TRITON_VARIANTS) if p in wanted]
    points = {}
    for sizes, precision, provider, modes, _, _ in bench_step.precompile_jobs(args, providers):
        points.setdefault((tuple(sorted(sizes.items())), precision, provider, tuple(modes)),
                          (sizes, precision, provider, tuple(modes)))  # fmt: skip
    return list(points.values())


def build(args: argparse.Namespace) -> int:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import triton

    if triton.__version__ != args.triton:
        print(f"this is triton {triton.__version__}; the GPU machine has {args.triton}: run "
              f"with PYTHONPATH=.venv/triton-{args.triton}", file=sys.stderr)  # fmt: skip
        return 2
    key = device_triton_key(args.python, WORK / "wheels")
    cache_dir = Path(args.cache_dir).resolve()
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir)  # (the workers' too)
    os.environ.pop("TRITON_INTERPRET", None)
    points = build_points(args.bench_args)
    print(f"[prebuild] {len(points)} points in {args.jobs} processes, triton {args.triton} for "
          f"Python {args.python}, cache {cache_dir}", flush=True)  # fmt: skip
    start, entries, failed = time.monotonic(), set(), 0
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_start_worker,
                             initargs=(key,)) as pool:  # fmt: skip
        for i, (name, compiled, problems) in enumerate(pool.map(_build_point, points), 1):
            entries.update(compiled)
            failed += bool(problems)
            print(f"[prebuild {i}/{len(points)}] {name}: {len(compiled)} new kernels "
                  f"{problems or 'ok'} ({time.monotonic() - start:.0f} s)", flush=True)  # fmt: skip
    manifest = {"triton": args.triton, "python": args.python, **key_parts(key),
                "kernels": len(entries), "points": len(points), "commit": _commit(),
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    size = pack(cache_dir, sorted(entries), manifest, Path(args.out))
    seconds = time.monotonic() - start
    print(f"[prebuild] {len(entries)} kernels in {args.out} ({size / 2**20:.1f} MiB) after "
          f"{seconds:.0f} s; {failed} points with problems", flush=True)  # fmt: skip
    if size > CARRY_LIMIT:
        print(f"[prebuild] over the device's carry limit ({CARRY_LIMIT >> 20} MiB)",
              file=sys.stderr)  # fmt: skip
        return 1
    where = Path(args.out).resolve()
    if where.is_relative_to(ROOT):
        print(f'[prebuild] on the device: run(..., carry=["{where.relative_to(ROOT)}"])')
    return 1 if failed else 0


def _commit() -> str:
    """The commit built (+dirty with local changes), as gpu_session.sh names what it ran."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    clean = subprocess.run([*git, "diff", "--quiet", "HEAD", "--"]).returncode == 0
    return (head.stdout.strip() or "unknown") + ("" if clean else "+dirty")


def pack(cache_dir: Path, entries: list[str], manifest: dict, out: Path) -> int:
    """Write the cache entries ``entries`` (directory names under ``cache_dir``) to ``out``,
    each with its binary and metadata only, its group file's paths relative to the cache;
    returns the archive's size in bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for entry in entries:
            for group in sorted((cache_dir / entry).glob("__grp__*.json")):
                children = json.loads(group.read_text())["child_paths"]
                kept = {name: f"{entry}/{name}" for name in children
                        if name.endswith((".json", ".cubin"))}  # fmt: skip
                for name in kept:
                    tar.add(cache_dir / entry / name, f"{entry}/{name}")
                _add_bytes(tar, f"{entry}/{group.name}", {"child_paths": kept})
        _add_bytes(tar, MANIFEST, manifest)
    return out.stat().st_size


def _add_bytes(tar: tarfile.TarFile, name: str, data: dict) -> None:
    raw = json.dumps(data, indent=1).encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(raw), int(time.time())
    tar.addfile(info, io.BytesIO(raw))


# -- install (on the GPU machine) -----------------------------------------------------------


def install(archive: Path, cache_dir: Path) -> dict | None:
    """Unpack ``archive`` into Triton's cache ``cache_dir``, each group file's paths made
    absolute there; returns its manifest (None where there is no archive)."""
    if not archive.is_file():
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
        members = [m for m in tar.getmembers() if m.name != MANIFEST]
        for member in members:
            if not member.isfile() or Path(member.name).is_absolute() or ".." in member.name:
                raise ValueError(f"archive: unexpected member {member.name!r}")
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # (3.11.4+)
        tar.extractall(cache_dir, members=members, **safe)
    for group in cache_dir.glob("*/__grp__*.json"):
        data = json.loads(group.read_text())
        paths = data["child_paths"]
        if any(not os.path.isabs(p) for p in paths.values()):
            data["child_paths"] = {n: str(cache_dir / p) for n, p in paths.items()}
            group.write_text(json.dumps(data))
    return manifest


def describe(manifest: dict | None, archive: Path) -> str:
    """One line for the session log: what was installed, and whether this Triton is the one
    its entries were keyed for (else what differs)."""
    if manifest is None:
        return f"prebuilt Triton cache: none ({archive} absent)"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    try:
        import triton

        ours = key_parts()
        here = f"triton {triton.__version__}, Python {python}"
    except Exception as exc:  # noqa: BLE001 - the line is still what the log needs
        ours, here = {}, f"no key parts ({type(exc).__name__}: {exc}), Python {python}"
    differ = [name for name in ("triton_key_sha256", "ptxas", "env_vars")
              if ours.get(name) != manifest.get(name)]  # fmt: skip
    match = "yes" if not differ else f"no (differs: {', '.join(differ)})"
    return (f"prebuilt Triton cache: {manifest['kernels']} kernels of commit "
            f"{manifest['commit']} for triton {manifest['triton']}, Python "
            f"{manifest['python']} (built {manifest['built']}); here {here}; keyed for "
            f"this Triton: {match}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="compile here (no GPU), write the archive")
    make.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    make.add_argument("--triton", default="3.6.0", help="the GPU machine's Triton version")
    make.add_argument("--python", default=DEVICE_PYTHON, help="the GPU machine's Python")
    make.add_argument("--cache-dir", default=str(WORK / "cache"),
                      help="where the full entries are compiled (kept: a rebuild after a "
                           "change compiles only what it changed)")  # fmt: skip
    make.add_argument("--out", default=str(ARCHIVE))
    make.add_argument("bench_args", nargs=argparse.REMAINDER,
                      help="after --: bench.step's arguments (the GPU script's "
                           "COMPILE_ARGS)")  # fmt: skip
    put = commands.add_parser("install", help="unpack the archive into Triton's cache")
    put.add_argument("--archive", default=str(ARCHIVE))
    put.add_argument("--cache-dir", default=os.environ.get("TRITON_CACHE_DIR"))
    args = parser.parse_args(argv)
    if args.command == "build":
        args.bench_args = [a for a in args.bench_args if a != "--"]
        return build(args)
    if args.cache_dir is None:
        from triton import knobs

        args.cache_dir = knobs.cache.dir
    archive = Path(args.archive)
    print(describe(install(archive, Path(args.cache_dir)), archive))
    return 0


if __name__ == "__main__":
    sys.exit(main())
