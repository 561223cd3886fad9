"""Where the commands write: files, ``-`` for stdout, and report directories.

Every output path is checked before any simulation (:func:`check_file`,
:func:`check_dir`): a missing or read-only directory, a full disk, a directory where a
file is wanted or a file where a directory is wanted is an :class:`OutputError` naming
the path and the reason. Writes are atomic: a file is written beside its target and
renamed over it; a report directory is built beside its target and exchanged with it in
one ``renameat2(RENAME_EXCHANGE)``, so a reader (or an interrupted run) sees the old
output whole or the new one complete, never a mix and never a truncated file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

STDOUT = "-"
PROBE_BYTES = 64 << 10  # written and removed by the up-front check: a full disk fails here

# Where ``--json -`` goes; the command line points it at the real stdout before it sends
# the human-readable lines to stderr.
json_stream: TextIO | None = None


class OutputError(Exception):
    """An output that cannot be written; the message names the path and the reason."""


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower() if exc.errno else str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def _probe(directory: Path, label: str) -> None:
    """Create, fill and remove a small file in ``directory``."""
    try:
        st = os.statvfs(directory)
        if st.f_bavail == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fd, name = tempfile.mkstemp(dir=directory, prefix=".pkvm-sim-probe-")
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise OutputError(f"{label}: cannot write in {directory}: {_reason(exc)}") from None


def check_file(path: str | Path, flag: str) -> None:
    """Raise :class:`OutputError` unless ``path`` (a file, or ``-``) can be written."""
    if str(path) == STDOUT:
        return
    p = Path(path)
    label = f"{flag} {path}"
    if p.is_dir():
        raise OutputError(f"{label}: is a directory, expected a file")
    parent = p.parent
    if not parent.exists():
        raise OutputError(f"{label}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{label}: {parent} is not a directory")
    if p.exists() and not p.is_file():  # a device or a FIFO: written in place
        if not os.access(p, os.W_OK):
            raise OutputError(f"{label}: permission denied")
        return
    _probe(parent, label)


def check_dir(path: str | Path, flag: str, key: str) -> None:
    """Raise :class:`OutputError` unless a report directory can replace ``path``.

    An existing non-empty directory is replaced only if it is a report of the same kind
    (it holds ``key``), so a mistyped ``--out`` never swaps away unrelated files.
    """
    p = Path(path)
    label = f"{flag} {path}"
    if p.exists() and not p.is_dir():
        raise OutputError(f"{label}: is a file, expected a directory")
    if p.is_dir() and any(p.iterdir()) and not (p / key).is_file():
        raise OutputError(
            f"{label}: exists and is not a pkvm-sim report (no {key});"
            " name a new or empty directory"
        )
    base = _existing_ancestor(p.parent)
    if not base.is_dir():
        raise OutputError(f"{label}: {base} is a file, expected a directory")
    _probe(base, label)


def _open_stdout() -> TextIO:
    return json_stream or sys.stdout


def write_text(path: str | Path, text: str, flag: str) -> None:
    """Write ``text`` to ``path`` (``-``: stdout) atomically; OSError -> OutputError."""
    label = f"{flag} {path}"
    if str(path) == STDOUT:
        stream = _open_stdout()
        try:
            stream.write(text)
            stream.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"{flag} -: cannot write to stdout: {_reason(exc)}") from None
        return
    p = Path(path)
    try:
        if p.exists() and not p.is_file():  # a device or a FIFO: there is no rename
            with p.open("w") as f:
                f.write(text)
            return
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{label}: {_reason(exc)}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{label}: {_reason(exc)}") from None
        raise


def write_json(path: str | Path, data: Any, flag: str = "--json") -> None:
    """``data`` as indented, key-sorted JSON (what every ``--json`` writes)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", flag)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def report_dir(path: str | Path, flag: str) -> Iterator[Path]:
    """Yield a fresh directory beside ``path``; on success it replaces ``path`` whole.

    On any exception (an interrupt included) the new directory is removed and ``path``
    is left as it was.
    """
    target = Path(path)
    label = f"{flag} {path}"
    made = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(
            tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        )
    except OSError as exc:
        raise OutputError(f"{label}: {_reason(exc)}") from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if target.is_dir() and _exchange(staging, target):
            shutil.rmtree(staging)  # the old report, now under the staging name
        elif target.is_dir():
            old = staging.with_name(staging.name + ".old")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old)
        else:
            os.rename(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for d in made:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise OutputError(f"{label}: {_reason(exc)}{where}") from None
        raise
