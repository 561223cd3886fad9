"""Fabricated apt archives, kernels and QEMUs: the oracle's set-up and boot logic, no network."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from sim.oracle import setup
from sim.oracle.setup import Tools

ARCHIVE = "http://archive.invalid/debian"
SECURITY = "http://security.invalid/debian-security"


def fake_image(release: str = "7.3.10+deb13-arm64", size: int = 4096) -> bytes:
    """Bytes that pass for an arm64 Image: the magic at 0x38 and a Linux version banner."""
    head = bytearray(size)
    head[0:2] = b"MZ"
    head[0x38:0x3C] = b"ARM\x64"
    banner = f"Linux version {release} (debian-kernel@lists.invalid) #1 SMP\0".encode()
    head[1024 : 1024 + len(banner)] = banner
    return bytes(head)


def fake_module(depends: str = "") -> bytes:
    """An ELF-looking .ko with a .modinfo ``depends=`` string."""
    return b"\x7fELF" + b"\0" * 60 + b"license=GPL\0depends=" + depends.encode() + b"\0vermagic=x\0"


@pytest.fixture(autouse=True)
def cache(request, tmp_path, monkeypatch) -> Path:
    """Every oracle unit test gets its own empty cache; real boots (``-m oracle``) the user's."""
    if request.node.get_closest_marker("oracle") is not None:
        return setup.cache_dir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "pkvm-sim" / "oracle"


@pytest.fixture
def apt_etc(tmp_path, monkeypatch) -> Path:
    """A machine apt configuration naming fabricated hosts (deb822)."""
    etc = tmp_path / "etc-apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "debian.sources").write_text(
        textwrap.dedent(f"""\
        Types: deb
        URIs: {ARCHIVE}
        Suites: bookworm bookworm-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        Types: deb
        URIs: {SECURITY}
        Suites: bookworm-security
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
        """)
    )
    monkeypatch.setattr(setup, "APT_ETC", etc)
    return etc


def build_deb(tmp: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    root = tmp / f"root-{name}"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: arm64\n"
        "Maintainer: nobody <nobody@example.invalid>\nDescription: fabricated\n"
    )
    deb = tmp / f"{name}_{version.replace(':', '%3a')}_arm64.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--root-owner-group", "-b", str(root), str(deb)],
        check=True,
        capture_output=True,
    )
    return deb


FAKE_APT = r'''#!{python}
"""A stand-in for apt-get/apt-cache: a fabricated archive in $FAKE_APT (no network)."""
import json, os, shutil, sys
from dataclasses import replace
from pathlib import Path
state = Path(os.environ["FAKE_APT"])
argv = sys.argv[1:]
opts = {{}}
while argv and argv[0] == "-o":
    k, _, v = argv[1].partition("=")
    opts[k] = v
    argv = argv[2:]
argv = [a for a in argv if a not in ("-q", "-y", "--no-install-recommends")]
tool = Path(sys.argv[0]).name
with open(state / "calls.log", "a") as log:
    log.write(json.dumps([tool, argv, opts]) + "\n")
archive = json.loads((state / "archive.json").read_text())
if "Dir::Etc::SourceList" in opts and Path(opts["Dir::Etc::SourceList"]).exists():
    # Only what the private apt's suites hold, as a real apt would.
    listed = {{line.split()[-2] for line in open(opts["Dir::Etc::SourceList"]) if line.strip()}}
    archive = [s for s in archive if s.pop("_suite") in listed]
if tool == "apt-get" and argv[0] == "update":
    if (state / "offline").exists():
        print("E: Failed to fetch (fabricated: offline)", file=sys.stderr); sys.exit(100)
    Path(opts["Dir::State::Lists"]).mkdir(parents=True, exist_ok=True)
    sys.exit(0)
if tool == "apt-get" and argv[0] == "install":
    print(f"E: Unable to locate package {{argv[1]}}", file=sys.stderr); sys.exit(100)
if tool == "apt-get" and argv[0] == "download":
    name, _, version = argv[1].partition("=")
    deb = state / "debs" / f"{{name}}_{{version.replace(':', '%3a')}}_arm64.deb"
    if not deb.exists():
        print(f"E: Can't find a source to download version '{{version}}' of '{{name}}:arm64'",
              file=sys.stderr); sys.exit(100)
    shutil.copy(deb, Path.cwd() / deb.name); sys.exit(0)
if tool == "apt-cache" and argv[0] == "pkgnames":
    for name in sorted({{s["Package"] for s in archive}}):
        if name.startswith(argv[1] if len(argv) > 1 else ""):
            print(name)
    sys.exit(0)
if tool == "apt-cache" and argv[0] == "show":
    for s in archive:
        if s["Package"] in argv[1:]:
            print("\n".join(f"{{k}}: {{v}}" for k, v in s.items()))
            print(" a continuation line\n")
    sys.exit(0)
print(f"fake apt: unexpected {{tool}} {{argv}}", file=sys.stderr)
sys.exit(99)
'''


class FakeApt:
    def __init__(self, root: Path):
        self.root = root
        (root / "debs").mkdir(parents=True)
        (root / "bin").mkdir()
        self.stanzas: list[dict[str, str]] = []
        for tool in ("apt-get", "apt-cache"):
            path = root / "bin" / tool
            path.write_text(FAKE_APT.format(python=sys.executable))
            path.chmod(0o755)
        self.save()

    def save(self) -> None:
        (self.root / "archive.json").write_text(json.dumps(self.stanzas))

    def add(
        self, name: str, version: str, files: dict[str, bytes] | None = None, suite: str = ""
    ) -> None:
        """A package in ``suite`` (default: trixie-backports for ~bpo versions, else bookworm)."""
        suite = suite or ("trixie-backports" if "~bpo" in version else "bookworm")
        self.stanzas.append(
            {"Package": name, "Version": version, "Architecture": "arm64", "_suite": suite}
        )
        self.save()
        if files is not None:
            build_deb(self.root / "debs", name, version, files)

    def calls(self, tool: str, sub: str | None = None) -> list[list]:
        log = self.root / "calls.log"
        if not log.exists():
            return []
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return [c for c in calls if c[0] == tool and (sub is None or c[1][0] == sub)]


@pytest.fixture
def fake_apt(tmp_path, monkeypatch, apt_etc) -> FakeApt:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is needed to build the fabricated packages")
    apt = FakeApt(tmp_path / "fake-apt")
    monkeypatch.setenv("FAKE_APT", str(apt.root))
    monkeypatch.setenv("PATH", f"{apt.root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return apt


def debian_archive_for_tests(apt: FakeApt) -> None:
    """Two kernel generations, flavours to ignore, and busybox-static."""
    mods73 = {
        "usr/lib/modules/7.3.10+deb13-arm64/kernel/drivers/block/virtio_blk.ko.xz": lzma.compress(
            fake_module()
        )
    }
    apt.add(
        "linux-binary-unsigned-7.3.10+deb13-arm64",
        "7.3.10-1~bpo13+1",
        {"usr/lib/modules/7.3.10+deb13-arm64/vmlinuz.unsigned": fake_image()},
    )
    apt.add("linux-modules-7.3.10+deb13-arm64", "7.3.10-1~bpo13+1", mods73)
    apt.add("linux-binary-unsigned-7.3.4+deb13-arm64", "7.3.4-1~bpo13+1")
    apt.add("linux-modules-7.3.4+deb13-arm64", "7.3.4-1~bpo13+1")
    apt.add("linux-binary-unsigned-7.3.10+deb13-arm64-16k", "7.3.10-1~bpo13+1")
    apt.add("linux-image-6.12.57+deb13-arm64-unsigned", "6.12.57-1", suite="trixie")
    apt.add(
        "linux-image-6.1.0-57-arm64-unsigned",
        "6.1.192-3",
        {
            "boot/vmlinuz-6.1.0-57-arm64": gzip.compress(fake_image("6.1.0-57-arm64")),
            "lib/modules/6.1.0-57-arm64/kernel/drivers/block/virtio_blk.ko": fake_module(),
        },
        suite="bookworm-security",
    )
    # Newer, but in suites the private apt does not read: never picked.
    apt.add("linux-binary-unsigned-7.5.0+deb14-arm64", "7.5.0-1", suite="forky")
    apt.add("linux-modules-7.5.0+deb14-arm64", "7.5.0-1", suite="forky")
    apt.add("linux-image-6.1.0-99-arm64-unsigned", "6.1.300-1", suite="bookworm-proposed")
    apt.add("linux-image-6.1.0-9-arm64-unsigned", "6.1.158-1")
    apt.add("linux-image-6.1.0-57-rt-arm64-unsigned", "6.1.192-3")
    apt.add("busybox-static", "1:1.35.0-4+b1", {"bin/busybox": b"\x7fELF" + bytes(14) + b"\xb7\0"})


@pytest.fixture
def fake_tools(tmp_path) -> Tools:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF" + bytes(14) + b"\xb7\0" + b"fabricated busybox")
    return Tools(qemu=tmp_path / "qemu", cc=Path("/bin/false"), busybox=busybox)


BOOT_LINES = [f"[    0.{i:06d}] boot line {i}" for i in range(40)]


@pytest.fixture
def qemu(tmp_path, fake_tools):
    """make(body): a fake qemu-system-aarch64 running ``body`` (Python) with helpers."""

    def make(body: str):
        script = tmp_path / "qemu"
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, subprocess, sys, time\n"
            f"argv = sys.argv[1:]\n"
            f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(argv))\n"
            "disk = [a for a in argv if a.startswith('file=')][0][5:].split(',')[0]\n"
            "def say(*lines):\n"
            "    for line in lines:\n"
            "        sys.stdout.write(line + '\\r\\n')\n"
            "    sys.stdout.flush()\n"
            f"BOOT = {BOOT_LINES!r}\n" + textwrap.dedent(body)
        )
        script.chmod(0o755)
        return replace(fake_tools, qemu=script)

    return make
