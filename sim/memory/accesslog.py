"""The access log: every checked access, kept in columns.

A million-ITE migration makes millions of accesses; a tuple per access would cost about
150 bytes, these columns about 30. Reading the log gives :class:`AccessRecord` tuples.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from sim.columns import ColumnLog
from sim.memory.physmem import PAGE_SHIFT

_WRITE, _ALLOWED = 1, 2


class AccessRecord(NamedTuple):
    time: float
    actor: str
    addr: int
    length: int
    write: bool
    allowed: bool


class AccessLog(ColumnLog[AccessRecord]):
    """An append-only sequence of :class:`AccessRecord`, stored column by column."""

    _what = "access log"
    __slots__ = ("_addr", "_index", "_length", "_names", "_time", "_who")

    def __init__(self) -> None:
        self._time = array("d")
        self._who = array("I")  # actor index << 2 | allowed << 1 | write
        self._addr = array("Q")
        self._length = array("Q")
        self._names: list[str] = []
        self._index: dict[str, int] = {}

    def append(
        self, time: float, actor: str, addr: int, length: int, write: bool, allowed: bool
    ) -> None:
        try:
            index = self._index[actor]
        except KeyError:
            index = self._index[actor] = len(self._names)
            self._names.append(actor)
        self._time.append(time)
        self._who.append(index << 2 | allowed << 1 | write)
        self._addr.append(addr)
        self._length.append(length)

    def actor_bits(self, actor: str) -> int:
        """``actor``'s index in the flags column (shifted into place), registering it."""
        try:
            index = self._index[actor]
        except KeyError:
            index = self._index[actor] = len(self._names)
            self._names.append(actor)
        return index << 2

    def appenders(self) -> tuple:
        """The columns' append methods (time, actor bits | allowed << 1 | write, addr,
        length), for a caller that appends a row field by field (the access check)."""
        return self._time.append, self._who.append, self._addr.append, self._length.append

    def __len__(self) -> int:
        return len(self._time)

    def _record(self, i: int) -> AccessRecord:
        flags = self._who[i]
        return AccessRecord(
            self._time[i],
            self._names[flags >> 2],
            self._addr[i],
            self._length[i],
            bool(flags & _WRITE),
            bool(flags & _ALLOWED),
        )

    def pages_written(self, since: float, actors: set[str]) -> set[int]:
        """Page frame numbers the given actors wrote, with the access allowed, at or after
        ``since`` (the log is in time order)."""
        wanted = {self._index[a] << 2 | _ALLOWED | _WRITE for a in actors if a in self._index}
        pages: set[int] = set()
        time, who, addr, length = self._time, self._who, self._addr, self._length
        for i in range(len(time) - 1, -1, -1):
            if time[i] < since:
                break
            if who[i] in wanted and length[i]:
                first = addr[i] >> PAGE_SHIFT
                pages.update(range(first, ((addr[i] + length[i] - 1) >> PAGE_SHIFT) + 1))
        return pages
