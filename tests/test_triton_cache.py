"""The prebuilt Triton cache (bench/triton_cache.py): what it packs, how it installs, and a
build whose kernels a second build finds in the installed cache."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from bench import triton_cache
from sobolev_kernels.triton import launch, layout
from sobolev_kernels.triton.layout import LaunchConfig

ROOT = Path(__file__).resolve().parents[1]


def _entry(cache: Path, name: str, kernel: str) -> None:
    """A cache entry as Triton writes one: every IR, the binary, the metadata, its group."""
    folder = cache / name
    folder.mkdir(parents=True)
    children = {}
    for ext in ("source", "ttir", "ttgir", "llir", "ptx", "cubin", "json"):
        path = folder / f"{kernel}.{ext}"
        path.write_bytes(f"{name} {ext}".encode())
        children[path.name] = str(path)
    (folder / f"__grp__{kernel}.json").write_text(json.dumps({"child_paths": children}))


def test_pack_keeps_binaries_and_install_makes_their_paths_absolute(tmp_path):
    built = tmp_path / "built"
    _entry(built, "AAA", "_k1")
    _entry(built, "BBB", "_k2")
    _entry(built, "CCC", "_k3")  # compiled, but not by this build: left out
    archive = tmp_path / "cache.tar.gz"
    manifest = {"kernels": 2, "commit": "abc", "triton": "3.6.0", "python": "3.12",
                "built": "now", "triton_key_sha256": "0" * 64}  # fmt: skip
    triton_cache.pack(built, ["AAA", "BBB"], manifest, archive)
    with tarfile.open(archive) as tar:
        names = sorted(tar.getnames())
    assert names == ["AAA/__grp___k1.json", "AAA/_k1.cubin", "AAA/_k1.json",
                     "BBB/__grp___k2.json", "BBB/_k2.cubin", "BBB/_k2.json",
                     triton_cache.MANIFEST]  # fmt: skip

    there = tmp_path / "device" / "cache"
    assert triton_cache.install(archive, there) == manifest
    group = json.loads((there / "BBB" / "__grp___k2.json").read_text())["child_paths"]
    assert group == {"_k2.cubin": str(there / "BBB" / "_k2.cubin"),
                     "_k2.json": str(there / "BBB" / "_k2.json")}  # fmt: skip
    assert (there / "BBB" / "_k2.cubin").read_bytes() == b"BBB cubin"
    line = triton_cache.describe(manifest, archive)
    assert "2 kernels of commit abc" in line and "keyed for this Triton: no" in line
    # installing twice (a warm machine's second run) leaves the absolute paths as they are
    triton_cache.install(archive, there)
    again = json.loads((there / "BBB" / "__grp___k2.json").read_text())["child_paths"]
    assert again == group


def test_a_cache_keyed_here_is_keyed_for_this_triton_and_a_changed_part_is_named(tmp_path):
    manifest = {"kernels": 3, "commit": "abc", "triton": "x", "python": "y", "built": "now",
                **triton_cache.key_parts()}  # fmt: skip
    assert triton_cache.describe(manifest, tmp_path).endswith("keyed for this Triton: yes")
    other = {**manifest, "ptxas": "Build cuda_0.0"}
    assert triton_cache.describe(other, tmp_path).endswith("no (differs: ptxas)")


def test_install_without_an_archive_installs_nothing(tmp_path):
    missing = tmp_path / "none.tar.gz"
    assert triton_cache.install(missing, tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()
    assert "none" in triton_cache.describe(None, missing)


def test_install_refuses_members_outside_the_cache(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        triton_cache._add_bytes(tar, triton_cache.MANIFEST, {"kernels": 0})
        triton_cache._add_bytes(tar, "../outside.json", {})
    with pytest.raises(ValueError, match="outside"):
        triton_cache.install(archive, tmp_path / "cache")
    assert not (tmp_path / "outside.json").exists()


def test_the_gpu_script_packs_none_of_the_prebuilt_cache():
    # the archive (26 MiB) in the results' tarball would push it over what comes back (16 MiB)
    script = (ROOT / "scripts" / "gpu_session.sh").read_text()
    assert triton_cache.ARCHIVE.parent == triton_cache.WORK == ROOT / ".gpu_work" / "prebuild"
    packs = [line for line in script.splitlines() if 'tar -czf "$OUT/gpu_session.tar.gz"' in line]
    assert len(packs) == 2
    assert script.count("--exclude=./prebuild") == len(packs)


def test_the_key_for_this_python_is_this_tritons():
    from triton.runtime.cache import triton_key

    this = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert triton_cache.device_triton_key(this, Path("/nonexistent")) == triton_key()


def test_build_points_are_the_gpu_scripts_precompile_points():
    args = ["--configs", "M", "S", "--sweeps", "--precisions", "fp32", "bf16",
            "--modes", "step", "forward", "--exclude", "triton_recompute"]  # fmt: skip
    points = triton_cache.build_points(args)
    named = {(p[2], p[1], p[0]["width"]) for p in points}
    for precision in ("fp32", "bf16"):
        for width in (64, 128):
            assert ("triton", precision, width) in named
            assert ("triton_persistent", precision, width) in named
    assert ("triton_split_tf32x3", "fp32", 128) in named  # fp32 only
    assert ("triton_split_tf32x3", "bf16", 128) not in named
    assert not any(p[2] == "triton_recompute" for p in points)
    assert len(named) == len(points)  # each once, whatever its candidates
    assert all(p[3] == ("step",) for p in points if p[2] != "triton")


def test_a_stand_in_gpu_sets_what_the_launchers_read():
    cpu = torch.device("cpu")
    assert layout.gpu_properties(cpu) is None
    config = LaunchConfig(rows=16, warps=4, chunk=32, group=1, precision="ieee")
    assert layout.shared_memory_limit(cpu) is None and layout.multiprocessors(cpu) == 1
    assert launch._persistent_programs(10**6, config, cpu) == 2  # the interpreter's two
    try:
        layout._PROPERTIES[cpu] = triton_cache.types.SimpleNamespace(**triton_cache.H200)
        assert layout.shared_memory_limit(cpu) == 232448
        assert launch._persistent_programs(10**6, config, cpu) == 2 * 132
        assert launch._persistent_programs(100, config, cpu) == 7  # one per row tile
    finally:
        del layout._PROPERTIES[cpu]


def test_a_second_build_finds_every_kernel_of_the_first_in_the_installed_cache(tmp_path):
    # real compiles for sm_90 with this Triton, keyed for this Python: the forward's tuner
    # candidates at config S in fp32 (a dozen kernels, about 2 s each)
    import triton

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # (3.9's notice; 3.6 reads it too: same key both runs)

    def build(cache: Path, out: Path) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "bench.triton_cache", "build", "--jobs", "1", "--triton",
             triton.__version__, "--python", python, "--cache-dir", str(cache), "--out",
             str(out), "--", "--configs", "S", "--sweeps", "--precisions", "fp32", "--modes",
             "forward", "--providers", "triton"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    log = build(tmp_path / "built", tmp_path / "first.tar.gz")
    manifest = triton_cache.install(tmp_path / "first.tar.gz", tmp_path / "device")
    assert manifest["kernels"] >= 5, log
    installed = {p.name for p in (tmp_path / "device").iterdir()}
    log = build(tmp_path / "device", tmp_path / "second.tar.gz")
    # nothing compiled again: the second build used exactly the installed entries
    assert f"{manifest['kernels']} kernels" in log
    assert {p.name for p in (tmp_path / "device").iterdir()} == installed
    with tarfile.open(tmp_path / "second.tar.gz") as tar:
        used = {Path(n).parts[0] for n in tar.getnames() if n != triton_cache.MANIFEST}
    assert used == installed
