"""Confidentiality over time: secret guest bytes the host *could* read, and for how long.

A secret byte is exposed while the host's stage-2 state for its page is anything but
``NOPAGE`` (the rule the access check applies). The tracker watches ownership and label
changes, so the figure follows from what the actors did. It keeps each exposure as an
interval (which bytes, which secret, from when to when, opened by which ownership
change) and integrates the total into byte x microseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sim.memory.access import MemorySystem
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST, OwnershipChange
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

Run = tuple[int, int, str]  # (start, end, secret name), within one page


@dataclass(frozen=True)
class ExposureInterval:
    """One run of secret bytes the host could read, from ``start`` to ``end`` (us)."""

    addr: int
    length: int
    secret: str
    start: float  # us
    end: float  # us
    opened_by: OwnershipChange | None  # the transition that made the page readable

    def byte_us(self, window_end: float = float("inf")) -> float:
        return self.length * max(0.0, min(self.end, window_end) - self.start)


class ExposureTracker:
    """Secret bytes on host-readable pages; totals count only inside the window."""

    def __init__(
        self, memory: MemorySystem, clock: Callable[[], float], window_end: float = float("inf")
    ) -> None:
        self.memory = memory
        self.clock = clock
        self.window_end = window_end  # exposure is measured over [0, window_end)
        self.current = 0  # secret bytes the host can read now
        self.peak = 0
        self.byte_us = 0.0
        self._last = clock()
        self._open: dict[int, dict[Run, tuple[float, OwnershipChange | None]]] = {}
        self.intervals: list[ExposureInterval] = []
        memory.ownership.watchers.append(self._on_pages)
        memory.labels.watchers.append(self._on_bytes)
        self._refresh(0, 1 << (48 - PAGE_SHIFT))

    @property
    def exposed_secrets(self) -> set[str]:
        names = {i.secret for i in self.intervals}
        names.update(run[2] for runs in self._open.values() for run in runs)
        return names

    def _advance(self) -> None:
        now = min(self.clock(), self.window_end)
        self.byte_us += self.current * max(0.0, now - self._last)
        self._last = max(self._last, now)

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

    def _exposed_runs(self, first_pfn: int, end_pfn: int) -> dict[int, set[Run]]:
        out: dict[int, set[Run]] = {}
        ownership = self.memory.ownership
        span = (first_pfn << PAGE_SHIFT, (end_pfn - first_pfn) << PAGE_SHIFT)
        for start, end, label in self.memory.labels.runs(*span):
            if label.kind is not LabelKind.SECRET:
                continue
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                if ownership.state(HOST, pfn).accessible:
                    lo, hi = max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)
                    out.setdefault(pfn, set()).add((lo, hi, label.name))
        return out

    def _refresh(self, first_pfn: int, end_pfn: int) -> None:
        """Re-derive which secret runs on pages ``[first_pfn, end_pfn)`` are exposed."""
        now = self.clock()
        fresh = self._exposed_runs(first_pfn, end_pfn)
        pages = [p for p in self._open if first_pfn <= p < end_pfn] + list(fresh)
        for pfn in dict.fromkeys(pages):
            before = self._open.get(pfn, {})
            after = fresh.get(pfn, set())
            for run in set(before) - after:
                opened, cause = before.pop(run)
                self.current -= run[1] - run[0]
                self.intervals.append(
                    ExposureInterval(run[0], run[1] - run[0], run[2], opened, now, cause)
                )
            new = after - set(before)
            if new:
                cause = self.memory.ownership.last_change(pfn)
                for run in new:
                    before[run] = (now, cause)
                    self.current += run[1] - run[0]
            if before:
                self._open[pfn] = before
            else:
                self._open.pop(pfn, None)
        if now < self.window_end:
            self.peak = max(self.peak, self.current)

    def finish(self) -> None:
        """Integrate up to now and close every open interval; call once at the end."""
        self._advance()
        now = self.clock()
        for runs in self._open.values():
            for run, (opened, cause) in runs.items():
                self.intervals.append(
                    ExposureInterval(run[0], run[1] - run[0], run[2], opened, now, cause)
                )
        self._open.clear()
