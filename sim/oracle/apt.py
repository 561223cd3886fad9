"""The machine's apt configuration, read; and a private apt for arm64 Debian packages.

The archive's address always comes from the machine's own sources (deb822
``/etc/apt/sources.list.d/*.sources`` and one-line ``sources.list`` / ``*.list``): no
registry host is written anywhere in this repository. Suites the machine does not list
(the Debian 13 backports, where Debian's newest arm64 kernel lives) are read with a
private apt whose sources, lists, state and cache are all under the oracle's cache
directory, so the system's apt configuration and dpkg's architectures are left alone.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from sim.oracle.errors import OracleSetupError, Progress

# Debian suite names (not hosts): an apt entry counts as Debian's archive when every
# suite it lists is one of these, optionally with -updates/-security/-backports.
_CODENAMES = "buster bullseye bookworm trixie forky duke sid experimental"
_ALIASES = "oldoldstable oldstable stable testing unstable"
DEBIAN_CODENAMES = frozenset(f"{_CODENAMES} {_ALIASES}".split())
LISTS_MAX_AGE_S = 24 * 3600  # re-read the archive's indices at most once a day


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` entry: its URIs, suites and components, and its keyring if it names one."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None = None
    origin: str = ""  # the file it came from, for messages

    @property
    def is_debian(self) -> bool:
        return bool(self.suites) and all(
            s.split("-")[0].split("/")[0] in DEBIAN_CODENAMES for s in self.suites
        )

    @property
    def is_security(self) -> bool:
        return any(s.endswith("-security") or s.endswith("/updates") for s in self.suites)


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """Entries of a deb822 ``.sources`` file (``Types: deb`` only; ``Enabled: no`` skipped)."""
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key is not None:  # continuation line
                fields[key] += "\n" + line.strip()
                continue
            name, sep, value = line.partition(":")
            if not sep:
                continue
            key = name.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        signed_by = fields.get("signed-by")
        if signed_by and "\n" in signed_by:  # an inline key block, not a path
            signed_by = None
        sources.append(
            AptSource(
                uris=tuple(fields.get("uris", "").split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
                signed_by=signed_by,
                origin=origin,
            )
        )
    return sources


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """Entries of a one-line ``sources.list``: ``deb [opt=val ...] URI SUITE COMPONENT...``."""
    sources = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        options: dict[str, str] = {}
        if rest.startswith("["):
            opts, _, rest = rest[1:].partition("]")
            for opt in opts.split():
                k, _, v = opt.partition("=")
                options[k] = v
        words = rest.split()
        if len(words) < 2:
            continue
        sources.append(
            AptSource(
                uris=(words[0],),
                suites=(words[1],),
                components=tuple(words[2:]),
                signed_by=options.get("signed-by"),
                origin=origin,
            )
        )
    return sources


def read_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every ``deb`` entry the machine's apt reads, in apt's order."""
    sources: list[AptSource] = []
    main_list = etc / "sources.list"
    if main_list.is_file():
        sources += parse_one_line(main_list.read_text(errors="replace"), str(main_list))
    parts = etc / "sources.list.d"
    if parts.is_dir():
        for path in sorted(parts.iterdir()):
            if path.suffix == ".list":
                sources += parse_one_line(path.read_text(errors="replace"), str(path))
            elif path.suffix == ".sources":
                sources += parse_deb822(path.read_text(errors="replace"), str(path))
    return sources


@dataclass(frozen=True)
class DebianArchive:
    """Where the machine gets Debian from: the main archive and the security archive."""

    uri: str
    signed_by: str | None
    security_uri: str | None
    security_signed_by: str | None


def debian_archive(sources: list[AptSource], where: str = "/etc/apt") -> DebianArchive:
    """The machine's Debian archive (first Debian entry) and security archive, if any."""
    debian = [s for s in sources if s.is_debian and s.uris]
    main = next((s for s in debian if not s.is_security), None)
    if main is None:
        raise OracleSetupError(
            f"no Debian archive in the apt configuration under {where} (looked for a 'deb'"
            " entry whose suites are Debian's, e.g. 'bookworm'): the oracle downloads"
            " Debian's arm64 kernels from the archive the machine already uses"
        )
    security = next((s for s in debian if s.is_security), None)
    return DebianArchive(
        uri=main.uris[0].rstrip("/"),
        signed_by=main.signed_by,
        security_uri=security.uris[0].rstrip("/") if security else None,
        security_signed_by=security.signed_by if security else None,
    )


def one_line(uri: str, suite: str, components: str, signed_by: str | None) -> str:
    opts = f"[arch=arm64 signed-by={signed_by}] " if signed_by else "[arch=arm64] "
    return f"deb {opts}{uri} {suite} {components}"


@dataclass
class PrivateApt:
    """apt-get/apt-cache on arm64 indices kept under ``root``, with the given source lines."""

    root: Path
    lines: list[str]
    progress: Progress
    _fresh: bool = field(default=False, init=False)

    @property
    def sources_list(self) -> Path:
        return self.root / "sources.list"

    @property
    def lists(self) -> Path:
        return self.root / "lists"

    def options(self) -> list[str]:
        user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        opts = {
            "Dir::Etc::SourceList": str(self.sources_list),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State": str(self.root / "state"),
            "Dir::State::Lists": str(self.lists),
            "Dir::State::status": "/dev/null",
            "Dir::Cache": str(self.root / "cache"),
            # Named explicitly: container images often set them to "" (docker-clean), and
            # without them every apt-cache call re-parses the indices (0.6 s, not 0.04 s).
            "Dir::Cache::pkgcache": str(self.root / "cache" / "pkgcache.bin"),
            "Dir::Cache::srcpkgcache": str(self.root / "cache" / "srcpkgcache.bin"),
            "APT::Architecture": "arm64",
            "APT::Architectures::": "arm64",
            "APT::Sandbox::User": user,
            "Acquire::Languages": "none",
        }
        return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def _run(self, argv: list[str], cwd: Path | None = None) -> str:
        try:
            done = subprocess.run(
                [argv[0], *self.options(), *argv[1:]],
                cwd=cwd,
                capture_output=True,
                text=True,
                check=False,
            )
        except FileNotFoundError:
            raise OracleSetupError(
                f"{argv[0]} not found: the oracle needs Debian's apt to fetch arm64 packages"
            ) from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise OracleSetupError(f"{' '.join(argv[:2])} failed (exit {done.returncode}):\n{tail}")
        return done.stdout

    def update(self) -> None:
        """Fetch the indices unless they were fetched (with these sources) within a day."""
        if self._fresh:
            return
        for d in ("lists/partial", "state", "cache/archives/partial"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        text = "\n".join(self.lines) + "\n"
        stamp = self.root / "updated"
        same = self.sources_list.is_file() and self.sources_list.read_text() == text
        if same and stamp.is_file() and time.time() - stamp.stat().st_mtime < LISTS_MAX_AGE_S:
            self._fresh = True
            return
        self.sources_list.write_text(text)
        self.progress(f"apt: reading the arm64 package indices ({len(self.lines)} suites)")
        try:
            self._run(["apt-get", "update", "-q"])
        except OracleSetupError as exc:
            if same and stamp.is_file():  # offline: yesterday's indices still resolve
                self.progress(f"apt: update failed, using the indices from before ({exc})")
                self._fresh = True
                return
            raise
        stamp.touch()
        self._fresh = True

    def show(self, names: list[str]) -> str:
        """``apt-cache show`` of every version of these packages (stanzas)."""
        return self._run(["apt-cache", "show", *names]) if names else ""

    def pkgnames(self, prefix: str) -> list[str]:
        return sorted(self._run(["apt-cache", "pkgnames", prefix]).split())

    def download(self, name: str, version: str, dest: Path) -> Path:
        """The ``.deb`` of ``name`` = ``version`` in ``dest`` (downloaded unless already there)."""
        dest.mkdir(parents=True, exist_ok=True)
        deb = dest / deb_filename(name, version)
        if deb.is_file():
            return deb
        self.progress(f"apt: downloading {name} {version}")
        tmp = dest / ".partial"
        tmp.mkdir(exist_ok=True)
        for stale in tmp.iterdir():
            stale.unlink()
        self._run(["apt-get", "download", "-q", f"{name}={version}"], cwd=tmp)
        got = sorted(tmp.glob("*.deb"))
        if len(got) != 1:
            raise OracleSetupError(f"apt-get download {name}={version} left {len(got)} files")
        got[0].rename(deb)
        return deb


def deb_filename(name: str, version: str) -> str:
    """apt's file name for an arm64 package (the epoch's ':' written %3a)."""
    return f"{name}_{version.replace(':', '%3a')}_arm64.deb"


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """``apt-cache show`` output as a list of {field: value} (continuation lines dropped)."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
        if "Package" in fields and "Version" in fields:
            stanzas.append(fields)
    return stanzas
