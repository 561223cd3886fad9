"""Confidentiality over time: secret guest bytes the host *could* reach, and for how long.

Two ways in, tracked separately (one tracker each per machine):

- ``stage-2``: the host's stage-2 state for the page is anything but ``NOPAGE`` (the
  rule the access check applies to a host CPU access): the host could read the byte.
- ``dma``: a DMA master the host drives (the physical ITS) could read or write the byte:
  its IOMMU domain grants the page, or it has no IOMMU and EL2 does not confine it
  (:meth:`sim.memory.access.MemorySystem.dma_reaches`).

A tracker watches ownership, label and IOMMU-domain changes, so the figure follows from
what the actors did. It keeps each exposure as an interval (which bytes, which secret,
from when to when, opened by which change) and integrates its machine's total into
byte x microseconds. :func:`union_totals` gives the run's figures: the guest is one, on
whichever machines it is, so a guest byte exposed on the source and the destination at
the same instant counts once.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable
from typing import Literal, NamedTuple

from sim.memory.access import MemorySystem
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST, OwnershipChange
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

Run = tuple[int, int, str]  # (start, end, secret name), within one page
Reach = Literal["stage-2", "dma"]


class ExposureInterval(NamedTuple):
    """One run of secret bytes the host could reach, from ``start`` to ``end`` (us)."""

    addr: int
    length: int
    secret: str
    start: float  # us
    end: float  # us
    opened_by: OwnershipChange | None  # the page's last ownership change at opening
    via: str = "the host's stage-2 maps the page"  # how the host reached it at opening
    trigger: str = "page"  # what opened it: a "page" state, a "label" or an "iommu" change

    def byte_us(self, window_end: float = float("inf")) -> float:
        return self.length * max(0.0, min(self.end, window_end) - self.start)


_FAST_PAGES = 8  # ranges up to this many pages are checked page by page for secrets


class ExposureTracker:
    """Secret bytes the host can reach one way on one machine; totals count only inside
    the window."""

    def __init__(
        self,
        memory: MemorySystem,
        clock: Callable[[], float],
        window_end: float = float("inf"),
        reach: Reach = "stage-2",
    ) -> None:
        self.memory = memory
        self.clock = clock
        self.window_end = window_end  # exposure is measured over [0, window_end)
        self.reach = reach
        self.current = 0  # secret bytes the host can reach now
        self.peak = 0
        self.byte_us = 0.0
        self._last = clock()
        self._open: dict[int, dict[Run, tuple[float, OwnershipChange | None, str, str]]] = {}
        self.intervals: list[ExposureInterval] = []
        memory.ownership.watchers.append(self._on_pages)
        memory.labels.watchers.append(self._on_bytes)
        if reach == "dma":
            memory.iommu.watchers.append(self._on_iommu)
        self._refresh(0, 1 << (48 - PAGE_SHIFT), "page")

    @property
    def exposed_secrets(self) -> set[str]:
        names = {i.secret for i in self.intervals}
        names.update(run[2] for runs in self._open.values() for run in runs)
        return names

    def how(self, pfn: int) -> str | None:
        """How the host reaches page ``pfn`` this tracker's way, or None."""
        if self.reach == "dma":
            return self.memory.dma_reaches(pfn)
        if self.memory.ownership.state(HOST, pfn).accessible:
            return "the host's stage-2 maps the page"
        return None

    def _advance(self) -> None:
        now = min(self.clock(), self.window_end)
        if now > self._last:  # (else it would add current x 0 and keep _last: nothing)
            self.byte_us += self.current * (now - self._last)
            self._last = now

    def _on_pages(self, first_pfn: int, nr_pages: int, done: bool) -> None:
        if not done:
            self._advance()
        elif (
            nr_pages != 1
            or first_pfn in self._open
            or LabelKind.SECRET in self.memory.labels.page_kinds.get(first_pfn, ())
        ):
            self._refresh(first_pfn, first_pfn + nr_pages, "page")
        # (else one page with no secret and nothing open: _refresh finds it idle)

    def _on_iommu(self, first_pfn: int, nr_pages: int, done: bool) -> None:
        if not done:
            self._advance()
        else:
            self._refresh(first_pfn, first_pfn + nr_pages, "iommu")

    def _on_bytes(self, addr: int, length: int, done: bool) -> None:
        if not done:
            self._advance()
            return
        first, end = addr >> PAGE_SHIFT, (addr + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if end == first + 1 and length > 0:
            if first in self._open:
                self._relabelled(first, addr, addr + length)
            elif LabelKind.SECRET in self.memory.labels.page_kinds.get(first, ()):
                self._refresh(first, end, "label")
            # (else _refresh would find the page idle and return)
        else:
            self._refresh(first, end, "label")

    def _relabelled(self, pfn: int, start: int, end: int) -> None:
        """``_refresh`` of page ``pfn`` after ``[start, end)`` on it was relabelled, looking
        only at the runs that can have changed: those touching the range. Bytes outside it
        kept their labels, so the run holding ``start - 1`` starts where it did and the one
        holding ``end`` ends where it did; every run between those bounds is whole (on this
        page) before and after, and every other run on the page is unchanged."""
        via = self.how(pfn)
        if via is None:  # (cannot happen with runs open; re-derive the page to be sure)
            self._refresh(pfn, pfn + 1, "label")
            return
        labels = self.memory.labels
        page, page_end = pfn << PAGE_SHIFT, (pfn + 1) << PAGE_SHIFT
        lo = labels.run_bounds(start - 1)[0] if start > page else page
        hi = labels.run_bounds(end)[1] if end < page_end else page_end
        lo = page if lo is None or lo < page else lo
        hi = page_end if hi is None or hi > page_end else hi
        after = {
            (s, e, label.name)
            for s, e, label in labels.run_list(lo, hi - lo)
            if label.kind is LabelKind.SECRET
        }
        runs = self._open[pfn]
        before = {run for run in runs if run[0] < hi and run[1] > lo}
        now = self.clock()
        for run in before - after:
            opened, cause, was, why = runs.pop(run)
            self.current -= run[1] - run[0]
            self.intervals.append(
                ExposureInterval(run[0], run[1] - run[0], run[2], opened, now, cause, was, why)
            )
        new = after - before
        if new:
            cause = self.memory.ownership.last_change(pfn)
            for run in new:
                runs[run] = (now, cause, via, "label")
                self.current += run[1] - run[0]
        if not runs:
            del self._open[pfn]
        if now < self.window_end:
            self.peak = max(self.peak, self.current)

    def _idle(self, first_pfn: int, end_pfn: int) -> bool:
        """True if no page in the range holds a secret or has a run open: re-deriving
        them would find nothing and close nothing (checked for small ranges only)."""
        if end_pfn - first_pfn > _FAST_PAGES:
            return False
        opened, kinds = self._open, self.memory.labels.page_kinds
        for pfn in range(first_pfn, end_pfn):
            if pfn in opened or LabelKind.SECRET in kinds.get(pfn, ()):
                return False
        return True

    def _exposed_runs(self, first_pfn: int, end_pfn: int) -> dict[int, tuple[set[Run], str]]:
        out: dict[int, tuple[set[Run], str]] = {}
        span = (first_pfn << PAGE_SHIFT, (end_pfn - first_pfn) << PAGE_SHIFT)
        if end_pfn - first_pfn == 1:  # one page: the runs need no clipping
            via = self.how(first_pfn)  # (pure: asked first, it spares the runs if None)
            if via is None:
                return out
            runs = {
                (start, end, label.name)
                for start, end, label in self.memory.labels.run_list(*span)
                if label.kind is LabelKind.SECRET
            }
            if runs:
                out[first_pfn] = (runs, via)
            return out
        how: dict[int, str | None] = {}
        for start, end, label in self.memory.labels.run_list(*span):
            if label.kind is not LabelKind.SECRET:
                continue
            for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
                if pfn not in how:
                    how[pfn] = self.how(pfn)
                if how[pfn] is not None:
                    lo, hi = max(start, pfn << PAGE_SHIFT), min(end, (pfn + 1) << PAGE_SHIFT)
                    out.setdefault(pfn, (set(), how[pfn]))[0].add((lo, hi, label.name))
        return out

    def _refresh(self, first_pfn: int, end_pfn: int, trigger: str) -> None:
        """Re-derive which secret runs on pages ``[first_pfn, end_pfn)`` are exposed."""
        if self._idle(first_pfn, end_pfn):
            return  # (the peak cannot move: nothing here changes the current exposure)
        now = self.clock()
        fresh = self._exposed_runs(first_pfn, end_pfn)
        if end_pfn - first_pfn == 1:  # one page: no need to look through every open one
            pages = [first_pfn] if first_pfn in self._open else []
            pages += fresh
        else:
            pages = [p for p in self._open if first_pfn <= p < end_pfn] + list(fresh)
        for pfn in dict.fromkeys(pages):
            before = self._open.get(pfn, {})
            after, via = fresh.get(pfn, (set(), ""))
            for run in set(before) - after:
                opened, cause, was, why = before.pop(run)
                self.current -= run[1] - run[0]
                self.intervals.append(
                    ExposureInterval(run[0], run[1] - run[0], run[2], opened, now, cause, was, why)
                )
            new = after - set(before)
            if new:
                cause = self.memory.ownership.last_change(pfn)
                for run in new:
                    before[run] = (now, cause, via, trigger)
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
            for run, (opened, cause, via, why) in runs.items():
                self.intervals.append(
                    ExposureInterval(run[0], run[1] - run[0], run[2], opened, now, cause, via, why)
                )
        self._open.clear()


def union_totals(
    intervals: Iterable[ExposureInterval], window_end: float = float("inf")
) -> tuple[int, float]:
    """(peak, byte x us) of the union of ``intervals`` over ``[0, window_end)``.

    Intervals from several machines are copies of the same guest bytes (a guest IPA is
    one address on either machine), so each byte counts once per instant however many
    intervals cover it. Zero-length intervals last no instant and are left out.
    """
    spans = [i for i in intervals if i.end > i.start and i.start < window_end]
    cuts = sorted({x for i in spans for x in (i.addr, i.addr + i.length)})
    seg = [b - a for a, b in itertools.pairwise(cuts)]
    covered = [0] * len(seg)
    events = []  # (time, 0 = close before 1 = open at the same time, first seg, end seg)
    for i in spans:
        lo, hi = bisect.bisect_left(cuts, i.addr), bisect.bisect_left(cuts, i.addr + i.length)
        events.append((i.start, 1, lo, hi))
        events.append((i.end, 0, lo, hi))
    events.sort()
    current = peak = 0
    byte_us = 0.0
    last = 0.0
    for n, (time, opens, lo, hi) in enumerate(events):
        if time > last:
            byte_us += current * max(0.0, min(time, window_end) - min(last, window_end))
            last = time
        step = 1 if opens else -1
        for k in range(lo, hi):
            covered[k] += step
            if covered[k] == (1 if opens else 0):
                current += seg[k] * step
        group_ends = n + 1 == len(events) or events[n + 1][0] != time
        if group_ends and time < window_end:
            peak = max(peak, current)
    return peak, byte_us
