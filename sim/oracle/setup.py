"""Everything the oracle needs, found or fetched from Debian's archive and cached.

- Host tools (``ensure_host_tools``): QEMU for arm64 and the arm64 cross compiler with a
  static libc, installed with the system's apt-get when missing (as root); busybox-static
  for arm64, downloaded and extracted into the cache (installing it with apt would replace
  the host's own /bin/busybox with an arm64 binary).
- Kernels (``debian_kernel``): Debian's newest arm64 kernel (today 7.3.x, from the Debian 13
  backports) and bookworm's newest 6.1 kernel, resolved from the archive's indices at run
  time (no version is pinned), downloaded with a private apt (``sim.oracle.apt``) and
  extracted into the cache with a stamp file, so a second run starts in seconds.
- A user's own build (``user_kernel``) for ``--kernel IMAGE --modules DIR``.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sim.oracle import debversion
from sim.oracle.apt import (
    PrivateApt,
    debian_archive,
    one_line,
    parse_stanzas,
    read_sources,
)
from sim.oracle.errors import OracleSetupError, Progress

__all__ = [
    "Kernel",
    "OracleSetupError",
    "Progress",
    "Tools",
    "cache_dir",
    "debian_kernel",
    "ensure_host_tools",
    "user_kernel",
]

# Suites (names, not hosts) read with the private apt, at the machine's own archive URIs.
BOOKWORM_SUITES = ("bookworm",)  # + bookworm-security at the machine's security URI
NEWEST_SUITES = ("trixie-backports",)  # where Debian's newest arm64 kernel is built today
BOOKWORM_SERIES = "6.1"

# command -> Debian package providing it (amd64 host packages, from the system's apt)
HOST_PACKAGES = {
    "qemu-system-aarch64": "qemu-system-arm",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
}
APT_ETC = Path("/etc/apt")  # the machine's apt configuration (tests point it elsewhere)
CROSS_LIBC = Path("/usr/aarch64-linux-gnu/lib/libc.a")
CROSS_LIBC_PACKAGE = "libc6-dev-arm64-cross"
EM_AARCH64 = 183
ARM64_IMAGE_MAGIC = b"ARM\x64"  # at offset 0x38 of an arm64 Image (booting.rst)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pkvm-sim/oracle``, else ``~/.cache/pkvm-sim/oracle``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pkvm-sim" / "oracle"


@contextmanager
def cache_lock() -> Iterator[Path]:
    """The cache directory, locked against another oracle run setting up at the same time."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield root
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Tools:
    qemu: Path
    cc: Path
    busybox: Path  # an arm64 static busybox (runs in the L1 guest, not on the host)


@dataclass(frozen=True)
class Kernel:
    """An arm64 kernel to boot: ``image`` for QEMU's -kernel, ``modules`` its lib/modules dir."""

    name: str  # "newest", "bookworm" or "user"
    version: str  # upstream version, e.g. "7.3.4", "6.1.192"
    image: Path
    modules: Path | None
    release: str = ""  # `uname -r`, e.g. "7.3.4+deb13-arm64"
    package: str = ""  # Debian package of the image, "" for a user's build
    package_version: str = ""  # e.g. "7.3.4-1~bpo13+1"

    def describe(self) -> str:
        pkg = f" ({self.package} {self.package_version})" if self.package else ""
        return f"{self.name}: Linux {self.version} {self.release}{pkg}"


# --- host tools ---------------------------------------------------------------------------


def apt_install(packages: list[str], progress: Progress, who: str = "the oracle") -> None:
    """Install Debian ``packages`` with the system's apt-get (as root; else say how)."""
    if os.geteuid() != 0:
        raise OracleSetupError(
            f"missing {', '.join(packages)}: install as root with"
            f" `apt-get install {' '.join(packages)}` ({who} installs them itself"
            " when run as root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    progress(f"apt-get install {' '.join(packages)}")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        progress("apt-get update (the package indices may be missing or stale)")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise OracleSetupError(
            f"cannot install {', '.join(packages)} from Debian's archive"
            f" (apt-get exit {done.returncode}):\n{tail}"
        )


def _host_tools_missing() -> list[str]:
    missing = [pkg for cmd, pkg in HOST_PACKAGES.items() if shutil.which(cmd) is None]
    if not CROSS_LIBC.is_file():
        missing.append(CROSS_LIBC_PACKAGE)
    return missing


def is_arm64_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(20)
    return head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == EM_AARCH64


def ensure_host_tools(progress: Progress) -> Tools:
    """QEMU, the cross compiler (static libc) and an arm64 busybox: found, or installed."""
    missing = _host_tools_missing()
    if missing:
        apt_install(missing, progress)
        missing = _host_tools_missing()
        if missing:
            raise OracleSetupError(f"installed, but still missing: {', '.join(missing)}")
    qemu = Path(shutil.which("qemu-system-aarch64") or "")
    cc = Path(shutil.which("aarch64-linux-gnu-gcc") or "")
    with cache_lock() as root:
        busybox = _busybox(root, progress)
    return Tools(qemu=qemu, cc=cc, busybox=busybox)


def _busybox(root: Path, progress: Progress) -> Path:
    """busybox-static for arm64 from the machine's Debian suites, extracted, never installed."""
    apt = private_apt(root, "bookworm", progress)
    apt.update()
    stanzas = parse_stanzas(apt.show(["busybox-static"]))
    if not stanzas:
        raise OracleSetupError("busybox-static (arm64) is not in the archive's indices")
    best = max(stanzas, key=lambda s: debversion.sort_key(s["Version"]))
    tree = _extracted(root, apt, [("busybox-static", best["Version"])], progress)
    busybox = tree / "bin" / "busybox"
    if not busybox.is_file() or not is_arm64_elf(busybox):
        raise OracleSetupError(f"busybox-static {best['Version']}: no arm64 bin/busybox in {tree}")
    return busybox


# --- Debian kernels -----------------------------------------------------------------------


def private_apt(
    root: Path, which: Literal["newest", "bookworm"], progress: Progress, etc: Path | None = None
) -> PrivateApt:
    """A private arm64 apt over bookworm (+ security), or over the newest kernel's suites.

    Two separate ones, so a mirror without the backports still gives bookworm's kernel and
    busybox, and ``--kernels bookworm`` never reads the backports' indices.
    """
    etc = APT_ETC if etc is None else etc
    archive = debian_archive(read_sources(etc), str(etc))
    if which == "newest":
        lines = [one_line(archive.uri, s, "main", archive.signed_by) for s in NEWEST_SUITES]
    else:
        lines = [one_line(archive.uri, s, "main", archive.signed_by) for s in BOOKWORM_SUITES]
        if archive.security_uri:
            sec = archive.security_signed_by
            lines.append(one_line(archive.security_uri, "bookworm-security", "main", sec))
    return PrivateApt(root / "apt" / which, lines, progress)


@dataclass(frozen=True)
class Resolved:
    """The packages that make one kernel: image (and separate modules) at one version."""

    image_package: str
    version: str  # Debian package version
    release: str  # uname -r
    modules_package: str | None = None


_BINARY = re.compile(r"linux-binary-unsigned-(?P<abi>\d+\.\d+(?:\.\d+)?(?:\+[a-z0-9.]+)?)-arm64")
_MODULES = "linux-modules-{abi}-arm64"
_IMAGE = re.compile(r"linux-image-(?P<abi>\d+\.\d+\.\d+(?:-\d+)?(?:\+[a-z0-9.]+)?)-arm64-unsigned")


def candidate_names(names: list[str]) -> list[str]:
    """The arm64 kernel package names (generic flavour) among ``apt-cache pkgnames``."""
    keep = []
    for n in names:
        m = _BINARY.fullmatch(n)
        if m:
            keep += [n, _MODULES.format(abi=m["abi"])]
        elif _IMAGE.fullmatch(n):
            keep.append(n)
    return sorted(set(keep))


def resolve(stanzas: list[dict[str, str]], which: Literal["newest", "bookworm"]) -> Resolved:
    """Pick the kernel from ``apt-cache show`` stanzas: the highest Debian version.

    "newest": any generic arm64 kernel, either a ``linux-binary-unsigned-<abi>-arm64`` with
    its ``linux-modules-<abi>-arm64`` at the same version, or a ``linux-image-<abi>-arm64-
    unsigned`` (which carries its modules). "bookworm": ``linux-image-6.1.*-arm64-unsigned``.
    """
    have = {(s["Package"], s["Version"]) for s in stanzas}
    found: list[Resolved] = []
    for s in stanzas:
        name, version = s["Package"], s["Version"]
        if (m := _IMAGE.fullmatch(name)) is not None:
            series = ".".join(m["abi"].split(".")[:2])
            if which == "bookworm" and series != BOOKWORM_SERIES:
                continue
            found.append(Resolved(name, version, f"{m['abi']}-arm64"))
        elif which == "newest" and (m := _BINARY.fullmatch(name)) is not None:
            modules = _MODULES.format(abi=m["abi"])
            if (modules, version) in have:
                found.append(Resolved(name, version, f"{m['abi']}-arm64", modules))
    if not found:
        what = (
            f"linux-image-{BOOKWORM_SERIES}.*-arm64-unsigned"
            if which == "bookworm"
            else "linux-binary-unsigned-*-arm64 (with linux-modules-*)"
            " or linux-image-*-arm64-unsigned"
        )
        raise OracleSetupError(f"no {what} in the archive's arm64 indices")
    return max(found, key=lambda r: debversion.sort_key(r.version))


def _stamp_ok(tree: Path, key: dict) -> bool:
    stamp = tree / ".pkvm-sim-extracted"
    try:
        return json.loads(stamp.read_text()) == key
    except (OSError, ValueError):
        return False


def _extracted(
    root: Path, apt: PrivateApt, packages: list[tuple[str, str]], progress: Progress
) -> Path:
    """The packages' files extracted into one cache directory, marked by a stamp file.

    The stamp is written last, so an interrupted extraction is redone on the next run.
    """
    name, version = packages[0]
    tree = root / "extracted" / f"{name}_{version.replace(':', '%3a')}"
    key = {"packages": [list(p) for p in packages]}
    if _stamp_ok(tree, key):
        return tree
    debs = [apt.download(n, v, root / "debs") for n, v in packages]
    if shutil.which("dpkg-deb") is None:
        raise OracleSetupError("dpkg-deb not found: it extracts the downloaded packages")
    tmp = tree.with_name(tree.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        progress(f"extracting {deb.name}")
        done = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            deb.unlink(missing_ok=True)  # a corrupt download: fetch it again next time
            raise OracleSetupError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")
    (tmp / ".pkvm-sim-extracted").write_text(json.dumps(key))
    tmp.rename(tree)
    return tree


def _find_image(tree: Path, release: str) -> Path:
    for rel in (f"boot/vmlinuz-{release}", f"usr/lib/modules/{release}/vmlinuz.unsigned"):
        if (tree / rel).is_file():
            return tree / rel
    images = sorted(tree.glob("boot/vmlinuz-*")) + sorted(tree.glob("usr/lib/modules/*/vmlinuz*"))
    if not images:
        raise OracleSetupError(f"no kernel image (boot/vmlinuz-*) in {tree}")
    return images[0]


def _find_modules(tree: Path, release: str) -> Path | None:
    for rel in (f"lib/modules/{release}", f"usr/lib/modules/{release}"):
        if (tree / rel / "kernel").is_dir():
            return tree / rel
    return None


def debian_kernel(which: Literal["newest", "bookworm"], progress: Progress) -> Kernel:
    """Debian's newest arm64 kernel, or bookworm's newest 6.1, downloaded and extracted."""
    if which not in ("newest", "bookworm"):
        raise OracleSetupError(f"unknown Debian kernel {which!r}: expected newest or bookworm")
    with cache_lock() as root:
        apt = private_apt(root, which, progress)
        apt.update()
        names = apt.pkgnames("linux-binary-unsigned-") + apt.pkgnames("linux-image-")
        names = candidate_names(names)
        picked = resolve(parse_stanzas(apt.show(names)), which)
        progress(f"kernel {which}: {picked.image_package} {picked.version}")
        packages = [(picked.image_package, picked.version)]
        if picked.modules_package:
            packages.append((picked.modules_package, picked.version))
        tree = _extracted(root, apt, packages, progress)
    return Kernel(
        name=which,
        version=debversion.upstream(picked.version),
        image=_find_image(tree, picked.release),
        modules=_find_modules(tree, picked.release),
        release=picked.release,
        package=picked.image_package,
        package_version=picked.version,
    )


# --- a user's kernel ----------------------------------------------------------------------


def _image_head(path: Path, size: int = 1 << 20) -> bytes:
    """The first ``size`` bytes of the kernel, decompressed if it is a gzip'd vmlinuz."""
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"\x1f\x8b":
            try:
                with gzip.open(f) as g:
                    return g.read(size)
            except (OSError, EOFError, zlib.error) as exc:
                raise OracleSetupError(f"--kernel {path}: a broken gzip file ({exc})") from None
        return f.read(size)


def kernel_release(path: Path) -> str:
    """``uname -r`` of an Image, from its ``Linux version ...`` banner ("" if not found)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    tail = b""
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 22):
            buf = tail + chunk
            m = re.search(rb"Linux version (\S+) \(", buf)
            if m:
                return m.group(1).decode(errors="replace")
            tail = buf[-200:]
    return ""


def user_kernel(image: Path, modules: Path | None) -> Kernel:
    """A user's own arm64 build: an ``Image`` (or gzip'd ``vmlinuz``) and its modules dir."""
    image = Path(image)
    if not image.is_file():
        raise OracleSetupError(f"--kernel {image}: no such file")
    head = _image_head(image, 64)
    if len(head) < 64 or head[0x38:0x3C] != ARM64_IMAGE_MAGIC:
        what = "an ELF file (vmlinux? pass arch/arm64/boot/Image)" if head[:4] == b"\x7fELF" else ""
        raise OracleSetupError(
            f"--kernel {image}: not an arm64 kernel Image (no 'ARM\\x64' magic at offset"
            f" 0x38{', ' + what if what else ''}): pass arch/arm64/boot/Image or a gzip'd vmlinuz"
        )
    if modules is not None:
        modules = Path(modules)
        if not modules.is_dir():
            raise OracleSetupError(f"--modules {modules}: no such directory")
        if next(iter(modules.rglob("*.ko*")), None) is None:
            raise OracleSetupError(
                f"--modules {modules}: no kernel modules (*.ko, *.ko.xz) under it: pass the"
                " lib/modules/<release> directory of `make modules_install`"
            )
    release = kernel_release(image)
    m = re.match(r"\d+\.\d+(\.\d+)?", release)
    return Kernel(
        name="user",
        version=m.group(0) if m else release,
        image=image,
        modules=modules,
        release=release,
    )
