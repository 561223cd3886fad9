"""The initramfs: newc bytes, /init around the payload, modes, modules in load order, cache."""

from __future__ import annotations

import gzip
import lzma
import shutil
import stat
import subprocess

import pytest

from sim.oracle.boot import (
    EXIT_MARKER,
    INIT_MARKER,
    build_initramfs,
    init_script,
    kernel_modules,
    payload_initramfs,
)
from sim.oracle.errors import OracleSetupError
from sim.oracle.initramfs import Entry, cpio_newc, parse_newc
from sim.oracle.setup import Kernel

from .conftest import fake_module


def members(path) -> dict[str, Entry]:
    return {e.path: e for e in parse_newc(gzip.decompress(path.read_bytes()))}


def test_newc_round_trip_and_alignment():
    entries = [
        Entry("bin", stat.S_IFDIR | 0o755),
        Entry("bin/x", stat.S_IFREG | 0o755, b"abc"),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    ]
    raw = cpio_newc(entries)
    assert raw.startswith(b"070701")
    assert len(raw) % 4 == 0
    assert parse_newc(raw) == entries
    assert raw == cpio_newc(entries)  # deterministic


@pytest.mark.skipif(shutil.which("cpio") is None, reason="no cpio to cross-check with")
def test_gnu_cpio_reads_the_archive(tmp_path):
    raw = cpio_newc([Entry("a", stat.S_IFDIR | 0o755), Entry("a/f", stat.S_IFREG | 0o644, b"hi")])
    listing = subprocess.run(
        ["cpio", "-t", "-v", "--quiet"], input=raw, capture_output=True, check=True
    ).stdout.decode()
    assert listing.splitlines()[1].startswith("-rw-r--r--")
    assert listing.splitlines()[1].endswith(" a/f")


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh to parse the script")
@pytest.mark.parametrize("payload", ["", "echo a > /out", "exit 3\n\n"])
def test_init_is_valid_shell_for_any_payload(payload):
    done = subprocess.run(["sh", "-n"], input=init_script(payload).encode(), capture_output=True)
    assert done.returncode == 0, done.stderr


def test_init_prints_the_marker_first_and_powers_off_last():
    script = init_script("echo hello > /out\n")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/busybox sh"
    assert lines[1] == f'/bin/busybox echo "{INIT_MARKER}"'
    assert "echo hello > /out" in lines
    assert f'echo "{EXIT_MARKER} $rc"' in lines
    assert lines[-1] == "poweroff -f"


def test_build_initramfs_members_modes_and_cache(fake_tools, tmp_path, cache):
    host_file = tmp_path / "vmm"
    host_file.write_bytes(b"\x7fELF static vmm")
    files = {"/bin/vmm": host_file, "data/stream.json": b'{"name": "x"}', "run.sh": b"#!/bin/sh\n"}
    path = build_initramfs(fake_tools, files, "/bin/vmm > /out")
    assert path.is_relative_to(cache)
    m = members(path)
    assert m["bin/busybox"].data == fake_tools.busybox.read_bytes()
    assert stat.S_IMODE(m["bin/busybox"].mode) == 0o755
    assert m["bin/vmm"].data == b"\x7fELF static vmm"
    assert stat.S_IMODE(m["bin/vmm"].mode) == 0o755  # ELF: executable
    assert stat.S_IMODE(m["run.sh"].mode) == 0o755  # script: executable
    assert stat.S_IMODE(m["data/stream.json"].mode) == 0o644
    assert stat.S_ISDIR(m["data"].mode)
    assert m["dev/console"].rdev == (5, 1)
    assert stat.S_ISCHR(m["dev/console"].mode)
    assert b"/bin/vmm > /out" in m["init"].data
    # Same content, same file (not rewritten); different content, another file.
    inode = path.stat().st_ino
    assert build_initramfs(fake_tools, files, "/bin/vmm > /out") == path
    assert path.stat().st_ino == inode
    assert build_initramfs(fake_tools, files, "/bin/vmm -v > /out") != path


@pytest.mark.parametrize("bad", ["init", "/dev/kvm", "/", "bin/busybox"])
def test_reserved_paths_are_refused(fake_tools, bad):
    with pytest.raises(OracleSetupError, match="reserved path"):
        build_initramfs(fake_tools, {bad: b"x"}, "true")


def make_modules(root, builtin: list[str] | None):
    d = root / "lib/modules/6.1.0-57-arm64"
    (d / "kernel/drivers/virtio").mkdir(parents=True)
    (d / "kernel/drivers/block").mkdir(parents=True)
    (d / "kernel/drivers/block/virtio_blk.ko").write_bytes(fake_module("virtio_ring,crc-t10dif"))
    (d / "kernel/drivers/virtio/virtio_mmio.ko.xz").write_bytes(lzma.compress(fake_module("")))
    (d / "kernel/drivers/virtio/virtio_ring.ko").write_bytes(fake_module("virtio"))
    (d / "kernel/crc-t10dif.ko").write_bytes(fake_module("crct10dif_common"))
    (d / "kernel/crct10dif_common.ko").write_bytes(fake_module(""))
    if builtin is not None:
        (d / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    return Kernel("bookworm", "6.1.192", root / "Image", d)


def test_modules_in_dependency_order_decompressed(tmp_path):
    kernel = make_modules(tmp_path, builtin=["drivers/virtio/virtio"])
    mods = kernel_modules(kernel, ["virtio_mmio", "virtio_blk"])
    assert [name for name, _ in mods] == [
        "virtio_mmio.ko",
        "virtio_ring.ko",
        "crct10dif_common.ko",
        "crc_t10dif.ko",
        "virtio_blk.ko",
    ]
    assert mods[0][1] == fake_module("")  # the .xz was decompressed on the host


def test_a_dependency_neither_present_nor_built_in_is_an_error(tmp_path):
    kernel = make_modules(tmp_path, builtin=[])
    with pytest.raises(
        OracleSetupError, match=r"module virtio \(needed by virtio_ring\) is neither"
    ):
        kernel_modules(kernel, ["virtio_blk"])


def test_no_modules_builtin_means_a_missing_module_is_built_in(tmp_path):
    kernel = make_modules(tmp_path, builtin=None)
    names = [n for n, _ in kernel_modules(kernel, ["virtio_pci", "virtio_blk"])]
    assert names == ["virtio_ring.ko", "crct10dif_common.ko", "crc_t10dif.ko", "virtio_blk.ko"]


def test_payload_initramfs_loads_the_output_modules(tmp_path, fake_tools):
    kernel = make_modules(tmp_path, builtin=["drivers/virtio/virtio"])
    m = members(payload_initramfs(kernel, fake_tools, "true"))
    order = m["lib/oracle-modules/order"].data.decode().split()
    assert order[0] == "virtio_mmio.ko"
    assert order[-1] == "virtio_blk.ko"
    assert all(f"lib/oracle-modules/{name}" in m for name in order)


def test_the_initramfs_cache_keeps_the_newest(fake_tools, monkeypatch):
    monkeypatch.setattr("sim.oracle.boot.INITRAMFS_KEEP", 3)
    built = [build_initramfs(fake_tools, {}, f"echo {i}") for i in range(5)]
    assert [p.exists() for p in built] == [False, False, True, True, True]
    assert build_initramfs(fake_tools, {}, "echo 2") == built[2]  # used again: kept longest
    build_initramfs(fake_tools, {}, "echo 5")
    build_initramfs(fake_tools, {}, "echo 6")
    assert [p.exists() for p in built] == [False, False, True, False, False]
