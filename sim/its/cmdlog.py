"""The command log: every command KVM took from the queue, kept in columns.

A bulk bring-up of a million ITEs runs over a million commands; a tuple per command with
its raw bytes and decoded form would cost over 300 bytes, these columns about 45. Reading
the log gives :class:`CommandRecord` tuples, the command decoded again from its bytes.
"""

from __future__ import annotations

from array import array
from collections import Counter
from typing import NamedTuple

from sim.columns import ColumnLog
from sim.its.commands import CMD_SIZE, CommandDecodeError, ITSCommand, decode
from sim.its.errors import ITSError

_ERRORS = list(ITSError)
_ERROR_INDEX = {e: i for i, e in enumerate(_ERRORS)}
_NO_ERROR = -1
_NO_RAW = 1  # flag: the queue slot could not be read


class CommandRecord(NamedTuple):
    """One command KVM took from the queue, kept for the caller and the audit."""

    time: float
    offset: int  # CREADR when it was read
    raw: bytes | None  # None: the queue slot could not be read
    command: ITSCommand | None
    error: ITSError | None
    detail: str


class CommandLog(ColumnLog[CommandRecord]):
    """An append-only sequence of :class:`CommandRecord`, stored column by column."""

    _what = "command log"
    __slots__ = ("_details", "_error", "_flags", "_offset", "_raw", "_time")

    def __init__(self) -> None:
        self._time = array("d")
        self._offset = array("Q")
        self._raw = bytearray()  # CMD_SIZE bytes per record (zeros where there was none)
        self._error = array("b")
        self._flags = array("B")
        self._details: dict[int, str] = {}

    def append(
        self, time: float, offset: int, raw: bytes | None, error: ITSError | None, detail: str
    ) -> None:
        """Log a command; its decoded form is recomputed from ``raw`` when read."""
        if detail:
            self._details[len(self._time)] = detail
        self._time.append(time)
        self._offset.append(offset)
        self._raw += raw if raw is not None else bytes(CMD_SIZE)
        self._error.append(_NO_ERROR if error is None else _ERROR_INDEX[error])
        self._flags.append(_NO_RAW if raw is None else 0)

    def __len__(self) -> int:
        return len(self._time)

    def _record(self, i: int) -> CommandRecord:
        raw: bytes | None = None
        command = None
        if not self._flags[i] & _NO_RAW:
            raw = bytes(self._raw[i * CMD_SIZE : (i + 1) * CMD_SIZE])
            try:
                command = decode(raw)
            except CommandDecodeError:
                command = None
        err = self._error[i]
        return CommandRecord(
            self._time[i],
            self._offset[i],
            raw,
            command,
            None if err == _NO_ERROR else _ERRORS[err],
            self._details.get(i, ""),
        )

    def error_counts(self) -> Counter[ITSError]:
        """How many logged commands failed, by error."""
        counts = Counter(e for e in self._error if e != _NO_ERROR)
        return Counter({_ERRORS[e]: n for e, n in counts.items()})

    def failed(self, limit: int) -> list[CommandRecord]:
        """The first ``limit`` logged commands that failed, in order."""
        out: list[CommandRecord] = []
        for i, e in enumerate(self._error):
            if len(out) == limit:
                break
            if e != _NO_ERROR:
                out.append(self._record(i))
        return out
