"""A minimal QMP client (QEMU's JSON monitor on a Unix socket) and guest-RAM reads through it.

Only what a capture needs after the guest has powered off under ``-no-shutdown``: wait
for the ``shutdown`` run state, ``pmemsave`` ranges of guest physical memory into a file
and read them back, ``gva2gpa`` (a human-monitor command: QEMU walks the stopped vCPU 0's
page tables) and ``quit``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

PAGE = 4096


class QMPError(RuntimeError):
    """QEMU's monitor refused a command or went away: the message says which."""


class QMP:
    def __init__(self, path: Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, wait_s: float = 10.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(str(self.path))
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"cannot connect to QEMU's monitor {self.path}: {exc}") from None
                time.sleep(0.05)
        self._sock = sock
        greeting = self._message()
        if "QMP" not in greeting:
            raise QMPError(f"not a QMP greeting on {self.path}: {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _message(self) -> dict:
        assert self._sock is not None
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as exc:
                raise QMPError(f"QEMU's monitor: {exc}") from None
            if not chunk:
                raise QMPError("QEMU's monitor closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        assert self._sock is not None
        msg: dict = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._message()
            if "event" in reply:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QMPError(f"QEMU's monitor refused {command}: {err.get('desc', err)}")
            return reply.get("return")

    def human(self, command_line: str) -> str:
        out = self.execute("human-monitor-command", **{"command-line": command_line})
        return str(out)

    def wait_status(self, status: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.execute("query-status")
            if isinstance(now, dict) and now.get("status") == status:
                return
            if time.monotonic() > deadline:
                raise QMPError(f"QEMU did not reach run state {status!r} (it is {now})")
            time.sleep(0.05)

    def quit(self) -> None:
        with contextlib.suppress(QMPError):  # QEMU may close the socket as it quits
            self.execute("quit")


class GuestRAM:
    """Guest physical memory read with ``pmemsave``, a 4 KiB page at a time, cached."""

    def __init__(self, qmp: QMP, scratch: Path, ram_base: int, ram_size: int):
        self.qmp = qmp
        self.scratch = Path(scratch)
        self.ram_base = ram_base
        self.ram_size = ram_size
        self._pages: dict[int, bytes] = {}
        self._gva: dict[int, int | None] = {}

    def contains(self, pa: int, size: int = 1) -> bool:
        return self.ram_base <= pa and pa + size <= self.ram_base + self.ram_size

    def save(self, pa: int, size: int) -> bytes:
        """``size`` bytes at ``pa`` in one ``pmemsave``."""
        if not self.contains(pa, size):
            raise QMPError(f"guest physical range {pa:#x}+{size:#x} is outside RAM")
        self.qmp.execute("pmemsave", val=pa, size=size, filename=str(self.scratch))
        data = self.scratch.read_bytes()
        if len(data) != size:
            raise QMPError(f"pmemsave {pa:#x}+{size:#x} wrote {len(data)} bytes")
        return data

    def read(self, pa: int, size: int) -> bytes:
        out = b""
        while size > 0:
            page = pa & ~(PAGE - 1)
            if page not in self._pages:
                self._pages[page] = self.save(page, PAGE)
            n = min(size, page + PAGE - pa)
            out += self._pages[page][pa - page : pa - page + n]
            pa += n
            size -= n
        return out

    def gva2gpa(self, va: int) -> int | None:
        """The guest physical address of kernel virtual ``va`` (vCPU 0's tables), or None.

        Translated a 4 KiB page at a time (the smallest mapping granule), cached.
        """
        page = va & ~(PAGE - 1)
        if page not in self._gva:
            reply = self.qmp.human(f"gva2gpa {page:#x}").strip()
            self._gva[page] = int(reply.split()[-1], 16) if reply.startswith("gpa:") else None
        base = self._gva[page]
        return None if base is None else base + (va - page)

    @property
    def pages(self) -> dict[int, bytes]:
        """Every page read so far, by guest physical address (what the analysis saw)."""
        return dict(self._pages)
