"""Append-only logs kept column by column (``array``s), read back one tuple per row.

A subclass stores its columns, appends to them, and says how long it is and how row
``i`` reads back; this gives it the rest of a read-only sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, overload

R = TypeVar("R")


class ColumnLog(Generic[R]):
    __slots__ = ()
    _what = "log"  # for the IndexError message

    def __len__(self) -> int:
        raise NotImplementedError

    def _record(self, i: int) -> R:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> R: ...
    @overload
    def __getitem__(self, i: slice) -> list[R]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._record(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self._what} index out of range")
        return self._record(i)

    def __iter__(self) -> Iterator[R]:
        return (self._record(i) for i in range(len(self)))

    def __reversed__(self) -> Iterator[R]:
        return (self._record(i) for i in range(len(self) - 1, -1, -1))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ColumnLog | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
