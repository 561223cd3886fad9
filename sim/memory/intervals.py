"""A step function over the integers: a value for every address, stored as intervals.

Labels on guest bytes and pKVM page states are both "one value per unit, changing
rarely", so both are kept here as sorted breakpoints rather than per byte or per page.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class IntervalMap(Generic[V]):
    """Maps every integer to a value; ``assign(start, end, v)`` sets ``[start, end)``.

    Internally ``_keys[i]`` is the first point whose value is ``_vals[i]``, up to the next
    key; points before the first key have ``default``. Adjacent equal values are merged,
    so the representation is canonical and two maps with the same function compare equal.
    """

    __slots__ = ("_keys", "_vals", "default")

    def __init__(self, default: V) -> None:
        self.default = default
        self._keys: list[int] = []
        self._vals: list[V] = []

    def __getitem__(self, point: int) -> V:
        i = bisect_right(self._keys, point) - 1
        return self._vals[i] if i >= 0 else self.default

    def assign(self, start: int, end: int, value: V) -> None:
        """Give every point in ``[start, end)`` the value ``value``."""
        if end <= start:
            return
        keys_, vals_ = self._keys, self._vals
        lo = bisect_right(keys_, start - 1)  # first key >= start
        hi = bisect_right(keys_, end)  # first key > end
        after = vals_[hi - 1] if hi > 0 else self.default  # self[end]
        before = vals_[lo - 1] if lo > 0 else self.default
        keys: list[int] = []
        vals: list[V] = []
        # (``is`` first: equal values are mostly the same object, and a value's __eq__
        # may be Python code)
        if value is not before and value != before:
            keys.append(start)
            vals.append(value)
        if after is not value and after != value:
            keys.append(end)
            vals.append(after)
        keys_[lo:hi] = keys
        vals_[lo:hi] = vals

    def replace(self, start: int, end: int, runs: list[tuple[int, int, V]]) -> None:
        """Give ``[start, end)`` the values of ``runs`` (``(s, e, v)``, in order, disjoint,
        inside the range) and ``default`` between them: what assigning ``default`` to the
        range and then each run would leave, in one splice."""
        if end <= start:
            return
        keys_, vals_ = self._keys, self._vals
        lo = bisect_left(keys_, start)  # keys in [start, end] are replaced
        hi = bisect_right(keys_, end)
        before = vals_[lo - 1] if lo > 0 else self.default
        after = vals_[hi - 1] if hi > 0 else self.default  # self[end]
        default = self.default
        points: list[tuple[int, V]] = [(start, default)]
        last = start
        for s, e, value in runs:
            if not last <= s < e <= end:
                raise ValueError(f"replace: run {s}..{e} out of order or outside {start}..{end}")
            if points[-1][0] == s:
                points[-1] = (s, value)
            else:
                points.append((s, value))
            points.append((e, default))
            last = e
        if points[-1][0] == end:
            points[-1] = (end, after)
        else:
            points.append((end, after))
        keys: list[int] = []
        vals: list[V] = []
        prev = before
        for point, value in points:
            if value is not prev and value != prev:
                keys.append(point)
                vals.append(value)
                prev = value
        keys_[lo:hi] = keys
        vals_[lo:hi] = vals

    def runs(self, start: int, end: int) -> Iterator[tuple[int, int, V]]:
        """Yield maximal ``(s, e, value)`` runs covering ``[start, end)`` in order."""
        if end <= start:
            return
        i = bisect_right(self._keys, start) - 1
        cur = start
        while cur < end:
            value = self._vals[i] if i >= 0 else self.default
            nxt = self._keys[i + 1] if i + 1 < len(self._keys) else end
            stop = min(nxt, end)
            yield cur, stop, value
            cur = stop
            i += 1

    def run_bounds(self, point: int) -> tuple[int | None, int | None]:
        """``(start, end)`` of the maximal run holding ``point`` (None: unbounded)."""
        keys = self._keys
        i = bisect_right(keys, point) - 1
        return (keys[i] if i >= 0 else None), (keys[i + 1] if i + 1 < len(keys) else None)

    def run_list(self, start: int, end: int) -> list[tuple[int, int, V]]:
        """``list(self.runs(start, end))``, built without a generator (a hot path)."""
        if end <= start:
            return []
        keys, vals = self._keys, self._vals
        i = bisect_right(keys, start) - 1
        j = bisect_left(keys, end)  # keys[i + 1 : j] start runs inside the range
        cuts = [start, *keys[i + 1 : j], end]
        first = [vals[i] if i >= 0 else self.default]
        values = first + vals[i + 1 : j]
        return list(zip(cuts, cuts[1:], values, strict=False))

    def values(self, start: int, end: int) -> list[V]:
        """The values over ``[start, end)``, in order (a value may repeat)."""
        if end <= start:
            return []
        keys, vals = self._keys, self._vals
        i = bisect_right(keys, start) - 1
        out = [vals[i] if i >= 0 else self.default]
        i += 1
        while i < len(keys) and keys[i] < end:
            out.append(vals[i])
            i += 1
        return out

    def intervals(self) -> Iterator[tuple[int, int, V]]:
        """Yield the finite runs whose value differs from ``default``."""
        for i, key in enumerate(self._keys):
            value = self._vals[i]
            if value != self.default and i + 1 < len(self._keys):
                yield key, self._keys[i + 1], value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IntervalMap):
            return NotImplemented
        return (self.default, self._keys, self._vals) == (
            other.default,
            other._keys,
            other._vals,
        )

    def __len__(self) -> int:
        """Number of breakpoints (a measure of fragmentation, not of coverage)."""
        return len(self._keys)
