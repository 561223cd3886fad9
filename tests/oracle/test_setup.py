"""Kernel resolution, the private apt, the cache and its stamps, host tools, user kernels."""

from __future__ import annotations

import gzip
import json

import pytest

from sim.oracle import setup
from sim.oracle.errors import OracleSetupError
from sim.oracle.setup import (
    candidate_names,
    debian_kernel,
    ensure_host_tools,
    resolve,
    user_kernel,
)

from .conftest import ARCHIVE, SECURITY, debian_archive_for_tests, fake_image


def stanzas(*pairs):
    return [{"Package": p, "Version": v} for p, v in pairs]


ARCHIVE_STANZAS = stanzas(
    ("linux-binary-unsigned-7.3.4+deb13-arm64", "7.3.4-1~bpo13+1"),
    ("linux-modules-7.3.4+deb13-arm64", "7.3.4-1~bpo13+1"),
    ("linux-binary-unsigned-7.3.10+deb13-arm64", "7.3.10-1~bpo13+1"),
    ("linux-modules-7.3.10+deb13-arm64", "7.3.10-1~bpo13+1"),
    # a newer binary whose modules package is not (yet) there: unusable
    ("linux-binary-unsigned-7.4.1+deb13-arm64", "7.4.1-1~bpo13+1"),
    ("linux-modules-7.4.1+deb13-arm64", "7.4.0-1~bpo13+1"),
    ("linux-image-6.12.57+deb13-arm64-unsigned", "6.12.57-1"),
    ("linux-image-6.1.0-9-arm64-unsigned", "6.1.158-1"),
    ("linux-image-6.1.0-57-arm64-unsigned", "6.1.192-3"),
    ("linux-image-6.1.0-57-arm64-unsigned", "6.1.192-2"),
    ("linux-image-5.10.0-30-arm64-unsigned", "5.10.218-1"),
)


def test_newest_is_the_highest_version_with_its_modules():
    r = resolve(ARCHIVE_STANZAS, "newest")
    assert (r.image_package, r.version) == (
        "linux-binary-unsigned-7.3.10+deb13-arm64",
        "7.3.10-1~bpo13+1",
    )
    assert r.modules_package == "linux-modules-7.3.10+deb13-arm64"
    assert r.release == "7.3.10+deb13-arm64"


def test_bookworm_is_the_highest_6_1_image():
    r = resolve(ARCHIVE_STANZAS, "bookworm")
    assert (r.image_package, r.version, r.release) == (
        "linux-image-6.1.0-57-arm64-unsigned",
        "6.1.192-3",
        "6.1.0-57-arm64",
    )
    assert r.modules_package is None  # the 6.1 image package carries its modules


def test_newest_may_be_an_old_style_image_package():
    r = resolve(stanzas(("linux-image-6.12.57+deb13-arm64-unsigned", "6.12.57-1")), "newest")
    assert r.release == "6.12.57+deb13-arm64"


def test_no_candidate_is_a_clear_error():
    with pytest.raises(OracleSetupError, match=r"no linux-image-6\.1\.\*-arm64-unsigned"):
        resolve(stanzas(("linux-image-6.12.57+deb13-arm64-unsigned", "6.12.57-1")), "bookworm")


def test_candidate_names_keep_the_generic_flavour_only():
    names = [
        "linux-binary-unsigned-7.3.4+deb13-arm64",
        "linux-binary-unsigned-7.3.4+deb13-arm64-16k",
        "linux-binary-unsigned-7.3.4+deb13-rt-arm64",
        "linux-image-6.1.0-57-arm64-unsigned",
        "linux-image-6.1.0-57-rt-arm64-unsigned",
        "linux-image-6.1.0-57-arm64",
        "linux-image-arm64",
    ]
    assert candidate_names(names) == [
        "linux-binary-unsigned-7.3.4+deb13-arm64",
        "linux-image-6.1.0-57-arm64-unsigned",
        "linux-modules-7.3.4+deb13-arm64",
    ]


def test_debian_kernels_download_extract_and_come_from_the_cache_next_time(fake_apt, cache):
    debian_archive_for_tests(fake_apt)
    lines = []
    newest = debian_kernel("newest", lines.append)
    assert (newest.version, newest.release) == ("7.3.10", "7.3.10+deb13-arm64")
    assert newest.package_version == "7.3.10-1~bpo13+1"
    assert newest.image.read_bytes()[0x38:0x3C] == b"ARM\x64"
    assert newest.image.name == "vmlinuz.unsigned"
    assert (newest.modules / "kernel/drivers/block/virtio_blk.ko.xz").is_file()
    old = debian_kernel("bookworm", lines.append)
    assert (old.version, old.release, old.package) == (
        "6.1.192",
        "6.1.0-57-arm64",
        "linux-image-6.1.0-57-arm64-unsigned",
    )
    assert old.image.name == "vmlinuz-6.1.0-57-arm64"
    assert old.modules.name == "6.1.0-57-arm64"
    downloads = [c[1][1] for c in fake_apt.calls("apt-get", "download")]
    assert downloads == [
        "linux-binary-unsigned-7.3.10+deb13-arm64=7.3.10-1~bpo13+1",
        "linux-modules-7.3.10+deb13-arm64=7.3.10-1~bpo13+1",
        "linux-image-6.1.0-57-arm64-unsigned=6.1.192-3",
    ]
    # The private apt: its own sources list with the machine's hosts, the system's untouched.
    update = fake_apt.calls("apt-get", "update")
    assert len(update) == 2  # indices fetched once per private apt, then fresh for a day
    opts = update[0][2]
    assert opts["Dir::Etc::SourceParts"] == "/dev/null"
    assert opts["Dir::State::status"] == "/dev/null"
    assert opts["APT::Architectures::"] == "arm64"
    assert opts["Dir::State::Lists"] == str(cache / "apt" / "newest" / "lists")
    keyring = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
    assert (cache / "apt" / "newest" / "sources.list").read_text().splitlines() == [
        f"deb [arch=arm64 {keyring}] {ARCHIVE} trixie-backports main",
    ]
    assert (cache / "apt" / "bookworm" / "sources.list").read_text().splitlines() == [
        f"deb [arch=arm64 {keyring}] {ARCHIVE} bookworm main",
        f"deb [arch=arm64 {keyring}] {SECURITY} bookworm-security main",
    ]
    # Second run: nothing downloaded or extracted again.
    lines.clear()
    again = debian_kernel("newest", lines.append)
    assert again == newest
    assert len(fake_apt.calls("apt-get", "download")) == 3
    assert not any(line.startswith(("extracting", "apt: downloading")) for line in lines)


def test_an_interrupted_extraction_is_redone(fake_apt, cache):
    debian_archive_for_tests(fake_apt)
    k = debian_kernel("bookworm", lambda line: None)
    tree = k.image.parents[1]
    stamp = tree / ".pkvm-sim-extracted"
    assert json.loads(stamp.read_text())["packages"] == [
        ["linux-image-6.1.0-57-arm64-unsigned", "6.1.192-3"]
    ]
    stamp.unlink()  # as if killed before the stamp was written
    k.image.unlink()
    lines = []
    again = debian_kernel("bookworm", lines.append)
    assert again.image.is_file()
    assert stamp.is_file()
    assert "extracting linux-image-6.1.0-57-arm64-unsigned_6.1.192-3_arm64.deb" in lines
    assert len(fake_apt.calls("apt-get", "download")) == 1  # the .deb itself was cached


def test_offline_with_old_indices_still_resolves(fake_apt, cache, monkeypatch):
    debian_archive_for_tests(fake_apt)
    debian_kernel("bookworm", lambda line: None)
    monkeypatch.setattr("sim.oracle.apt.LISTS_MAX_AGE_S", -1)  # indices are stale
    (fake_apt.root / "offline").touch()
    lines = []
    assert debian_kernel("bookworm", lines.append).version == "6.1.192"
    assert any("update failed, using the indices from before" in line for line in lines)


def test_offline_without_indices_is_a_clear_error(fake_apt):
    debian_archive_for_tests(fake_apt)
    (fake_apt.root / "offline").touch()
    with pytest.raises(OracleSetupError, match=r"apt-get update failed \(exit 100\)"):
        debian_kernel("newest", lambda line: None)


def test_a_package_the_archive_cannot_give_is_a_clear_error(fake_apt):
    # In the indices but not downloadable.
    fake_apt.add("linux-image-6.1.0-58-arm64-unsigned", "6.1.200-1")
    with pytest.raises(OracleSetupError, match="apt-get download failed") as exc:
        debian_kernel("bookworm", lambda line: None)
    assert "Can't find a source to download version '6.1.200-1'" in str(exc.value)


def test_busybox_is_extracted_into_the_cache_not_installed(fake_apt, cache, monkeypatch):
    debian_archive_for_tests(fake_apt)
    monkeypatch.setattr(setup, "_host_tools_missing", lambda: [])
    tools = ensure_host_tools(lambda line: None)
    assert tools.busybox.is_relative_to(cache)
    assert tools.busybox.name == "busybox"
    assert not fake_apt.calls("apt-get", "install")


def test_missing_host_tools_without_root_name_the_packages(monkeypatch):
    monkeypatch.setattr(setup.shutil, "which", lambda cmd: None)
    monkeypatch.setattr(setup, "CROSS_LIBC", setup.Path("/nonexistent/libc.a"))
    monkeypatch.setattr(setup.os, "geteuid", lambda: 1000)
    with pytest.raises(OracleSetupError) as exc:
        ensure_host_tools(lambda line: None)
    message = str(exc.value)
    assert "qemu-system-arm, gcc-aarch64-linux-gnu, libc6-dev-arm64-cross" in message
    assert "as root" in message


def test_an_uninstallable_host_package_is_a_clear_error(fake_apt, monkeypatch):
    monkeypatch.setattr(setup, "_host_tools_missing", lambda: ["qemu-system-arm"])
    monkeypatch.setattr(setup.os, "geteuid", lambda: 0)
    lines = []
    with pytest.raises(OracleSetupError) as exc:
        ensure_host_tools(lines.append)
    assert "cannot install qemu-system-arm from Debian's archive" in str(exc.value)
    assert "Unable to locate package qemu-system-arm" in str(exc.value)
    assert len(fake_apt.calls("apt-get", "install")) == 2  # retried after apt-get update


# --- user kernels -------------------------------------------------------------------------


def test_user_kernel_image_and_gzip(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(fake_image("6.19.0-rc1-00042-gdeadbeef"))
    k = user_kernel(image, None)
    assert (k.name, k.version, k.release, k.modules) == (
        "user",
        "6.19.0",
        "6.19.0-rc1-00042-gdeadbeef",
        None,
    )
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(gzip.compress(fake_image("6.18.3")))
    assert user_kernel(vmlinuz, None).release == "6.18.3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"not a kernel" * 10, r"not an arm64 kernel Image \(no 'ARM\\x64' magic at offset 0x38"),
        (b"\x7fELF" + bytes(100), "an ELF file"),
        (b"\x1f\x8b\x08\x00garbage", "a broken gzip file"),
        (b"MZ", "not an arm64 kernel Image"),
    ],
)
def test_user_kernel_errors(tmp_path, content, message):
    image = tmp_path / "Image"
    if content is not None:
        image.write_bytes(content)
    with pytest.raises(OracleSetupError, match=message):
        user_kernel(image, None)


def test_user_modules_errors(tmp_path):
    image = tmp_path / "Image"
    image.write_bytes(fake_image())
    with pytest.raises(OracleSetupError, match=r"--modules .*: no such directory"):
        user_kernel(image, tmp_path / "nope")
    (tmp_path / "mods").mkdir()
    with pytest.raises(OracleSetupError, match=r"no kernel modules \(\*\.ko"):
        user_kernel(image, tmp_path / "mods")
    (tmp_path / "mods" / "kernel").mkdir()
    (tmp_path / "mods" / "kernel" / "virtio_blk.ko").write_bytes(b"\x7fELF")
    assert user_kernel(image, tmp_path / "mods").modules == tmp_path / "mods"
