"""A gzip'd newc cpio archive, written in Python: no cpio tool, no root for device nodes.

Byte-for-byte deterministic for the same entries (mtime 0, fixed inode numbers, gzip header
without a time stamp), so the archive can be cached by the hash of its contents.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` without a leading slash, a full ``st_mode``."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


def _header(ino: int, entry: Entry, namesize: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        len(entry.data),
        0,  # dev major
        0,  # dev minor
        entry.rdev[0],
        entry.rdev[1],
        namesize,
        0,  # check
    )
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: list[Entry]) -> bytes:
    """The uncompressed newc archive; parents must come before children."""
    out = io.BytesIO()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        name = entry.path.encode() + b"\0"
        hdr = _header(0 if entry.path == TRAILER else ino, entry, len(name))
        out.write(hdr + name + _pad(len(hdr) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
    return out.getvalue()


def gzip_cpio(entries: list[Entry]) -> bytes:
    """``cpio_newc`` compressed with gzip (Linux's initramfs unpacker reads it with RD_GZIP)."""
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


def parse_newc(archive: bytes) -> list[Entry]:
    """Read a newc archive back (for tests and for checking what was built)."""
    entries = []
    pos = 0
    while True:
        hdr = archive[pos : pos + 110]
        if hdr[:6] != b"070701":
            raise ValueError(f"bad newc magic at offset {pos}: {hdr[:6]!r}")
        f = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = f[1], f[6], f[9], f[10], f[11]
        pos += 110
        name = archive[pos : pos + namesize - 1].decode()
        pos += namesize
        pos += -pos % 4
        data = archive[pos : pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == TRAILER:
            return entries
        entries.append(Entry(name, mode, data, (rmaj, rmin)))
