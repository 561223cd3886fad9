"""What each guest byte holds: ITS table of which kind, command queue, a named secret, free.

Labels are simulator ground truth for the audit, not memory the actors can see, so
setting one is not an access.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise

from sim.memory.intervals import IntervalMap
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE


class LabelKind(enum.StrEnum):
    FREE = "free"
    DEVICE_TABLE = "its-device-table"  # GITS_BASER<0>, flat or level 1
    DEVICE_TABLE_L2 = "its-device-table-l2"  # a level-2 page of the device table
    COLLECTION_TABLE = "its-collection-table"  # GITS_BASER<1>
    CMDQ = "its-cmdq"  # GITS_CBASER
    ITT = "its-itt"  # one device's interrupt translation table (MAPD)
    PROP_TABLE = "lpi-prop-table"  # GICR_PROPBASER
    PEND_TABLE = "lpi-pend-table"  # GICR_PENDBASER of one vCPU
    KERNEL = "kernel-data"  # unrelated guest kernel data, not secret
    SECRET = "secret"  # guest data whose exposure is a confidentiality violation


@dataclass(frozen=True, order=True)
class Label:
    kind: LabelKind
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name else str(self.kind)


FREE = Label(LabelKind.FREE)


class LabelMap:
    """Labels on byte ranges, kept as intervals; unlabelled bytes are ``free``."""

    def __init__(self) -> None:
        self._map: IntervalMap[Label] = IntervalMap(FREE)
        # The label kinds on each page that holds a label (an index for access filters).
        self.page_kinds: dict[int, frozenset[LabelKind]] = {}
        # Called with (addr, length) before and after a range is relabelled.
        self.watchers: list[Callable[[int, int, bool], None]] = []

    def set(self, addr: int, length: int, label: Label) -> None:
        for watch in self.watchers:
            watch(addr, length, False)
        first, end = addr >> PAGE_SHIFT, ((addr + length - 1) >> PAGE_SHIFT) + 1
        if length > 0 and end == first + 1:
            # One page: if every byte relabelled was free or already of this kind, the
            # page's kinds only gain this one (nothing can disappear from the page).
            old = {x.kind for x in self._map.values(addr, addr + length)}
            self._map.assign(addr, addr + length, label)
            old.discard(LabelKind.FREE)
            if old <= {label.kind}:
                kinds = self.page_kinds.get(first, frozenset())
                if label.kind is not LabelKind.FREE and label.kind not in kinds:
                    kinds = kinds | {label.kind}
                if kinds:
                    self.page_kinds[first] = kinds
            else:
                self._reindex(first, end)
        else:
            self._map.assign(addr, addr + length, label)
            if length > 0:
                self._reindex(first, end)
        for watch in self.watchers:
            watch(addr, length, True)

    def _reindex(self, first: int, end: int) -> None:
        """Recompute ``page_kinds`` for pages ``[first, end)``, visiting only the pages
        that are indexed or labelled (a range can span all of RAM)."""
        index = self.page_kinds
        if end == first + 1:  # the common case: one page
            pages = {first}
        else:
            stale = range(first, end) if end - first <= len(index) else list(index)
            for pfn in stale:
                if first <= pfn < end:
                    index.pop(pfn, None)
            pages = set()
            for start, stop, label in self._map.runs(first << PAGE_SHIFT, end << PAGE_SHIFT):
                if label.kind is not LabelKind.FREE:
                    pages.update(range(start >> PAGE_SHIFT, ((stop - 1) >> PAGE_SHIFT) + 1))
        for pfn in pages:
            page = self._map.values(pfn << PAGE_SHIFT, (pfn + 1) << PAGE_SHIFT)
            kinds = frozenset(x.kind for x in page if x.kind is not LabelKind.FREE)
            if kinds:
                index[pfn] = kinds
            else:
                index.pop(pfn, None)

    def set_runs(self, addr: int, length: int, runs: list[tuple[int, int, Label]]) -> None:
        """:meth:`set` each ``(start, end, label)`` of ``runs``, in address order and inside
        the whole pages ``[addr, addr + length)`` (a new slab's objects). If the range is
        all free, the watchers are told once for it (what they see after is what the sets
        one by one leave: nothing is overwritten or merged); else, or if two runs touch
        with one label (the sets would merge them, closing the first's exposure at once),
        the runs are set one by one."""
        if addr % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError(f"set_runs: {addr:#x}+{length:#x} is not whole pages")
        if self._map.values(addr, addr + length) != [FREE] or any(
            a[1] == b[0] and a[2] == b[2] for a, b in pairwise(runs)
        ):
            for start, stop, label in runs:
                self.set(start, stop - start, label)
            return
        for watch in self.watchers:
            watch(addr, length, False)
        self._map.replace(addr, addr + length, runs)
        kinds: dict[int, set[LabelKind]] = {}
        for start, stop, label in runs:
            if label.kind is not LabelKind.FREE:
                for pfn in range(start >> PAGE_SHIFT, ((stop - 1) >> PAGE_SHIFT) + 1):
                    kinds.setdefault(pfn, set()).add(label.kind)
        self.page_kinds.update((pfn, frozenset(k)) for pfn, k in kinds.items())
        for watch in self.watchers:
            watch(addr, length, True)

    def copy_from(self, other: LabelMap, addr: int, length: int) -> None:
        """Set every labelled run ``other`` has in ``[addr, addr + length)`` (a migrated
        guest's memory arriving), as :meth:`set_runs` does. (``other``'s runs are maximal,
        so no two of them touch with one label.)"""
        runs = other.run_list(addr, length)
        self.set_runs(addr, length, [run for run in runs if run[2].kind is not LabelKind.FREE])

    def clear(self, addr: int, length: int) -> None:
        self.set(addr, length, FREE)

    def at(self, addr: int) -> Label:
        return self._map[addr]

    def runs(self, addr: int, length: int) -> Iterator[tuple[int, int, Label]]:
        """``(start, end, label)`` runs covering ``[addr, addr + length)``."""
        return self._map.runs(addr, addr + length)

    def run_bounds(self, addr: int) -> tuple[int | None, int | None]:
        """``(start, end)`` of the run of one label holding ``addr`` (None: unbounded)."""
        return self._map.run_bounds(addr)

    def run_list(self, addr: int, length: int) -> list[tuple[int, int, Label]]:
        """``list(self.runs(addr, length))``, faster."""
        return self._map.run_list(addr, addr + length)

    def kinds(self, addr: int, length: int) -> tuple[LabelKind, ...]:
        """The label kinds on ``[addr, addr + length)``, in address order (with repeats)."""
        labels = self._map.values(addr, addr + max(length, 1))
        return (labels[0].kind,) if len(labels) == 1 else tuple(x.kind for x in labels)

    def labelled(self) -> Iterator[tuple[int, int, Label]]:
        """Every non-free run, in address order."""
        return self._map.intervals()
