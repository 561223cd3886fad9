"""Confidentiality over time: secret guest bytes the host *could* read, and for how long.

A secret byte is exposed while the host's stage-2 state for its page is anything but
``NOPAGE`` (the same rule the access check applies). The tracker watches ownership
changes and label changes, so the figure follows from what the actors did, and
integrates it over simulated time into byte x microseconds.
"""

from __future__ import annotations

from collections.abc import Callable

from sim.memory.access import MemorySystem
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE


class ExposureTracker:
    def __init__(self, memory: MemorySystem, clock: Callable[[], float]) -> None:
        self.memory = memory
        self.clock = clock
        self.current = 0  # secret bytes the host can read now
        self.peak = 0
        self.byte_us = 0.0
        self._last = clock()
        self._exposed: dict[int, int] = {}  # pfn -> exposed secret bytes on it
        self.exposed_secrets: set[str] = set()  # names of secrets exposed at some time
        memory.ownership.watchers.append(self._on_pages)
        memory.labels.watchers.append(self._on_bytes)
        self._refresh(0, 1 << (48 - PAGE_SHIFT))

    def _advance(self) -> None:
        now = self.clock()
        self.byte_us += self.current * (now - self._last)
        self._last = now

    def _on_pages(self, first_pfn: int, nr_pages: int, done: bool) -> None:
        if not done:
            self._advance()
        else:
            self._refresh(first_pfn, first_pfn + nr_pages)

    def _on_bytes(self, addr: int, length: int, done: bool) -> None:
        if not done:
            self._advance()
        else:
            end = addr + length
            self._refresh(addr >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT)

    def _refresh(self, first_pfn: int, end_pfn: int) -> None:
        """Recount exposed secret bytes on pages ``[first_pfn, end_pfn)``."""
        for pfn in [p for p in self._exposed if first_pfn <= p < end_pfn]:
            self.current -= self._exposed.pop(pfn)
        labels = self.memory.labels
        ownership = self.memory.ownership
        for start, end, label in labels.runs(
            first_pfn << PAGE_SHIFT, (end_pfn - first_pfn) << PAGE_SHIFT
        ):
            if label.kind is not LabelKind.SECRET:
                continue
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                if not ownership.state(HOST, pfn).accessible:
                    continue
                lo = max(start, pfn << PAGE_SHIFT)
                hi = min(end, (pfn + 1) << PAGE_SHIFT)
                self._exposed[pfn] = self._exposed.get(pfn, 0) + hi - lo
                self.current += hi - lo
                self.exposed_secrets.add(label.name)
        self.peak = max(self.peak, self.current)

    def finish(self) -> None:
        """Integrate up to now; call once at the end of the run."""
        self._advance()
