"""The one access check: every read and write by an actor passes through here.

CPU accesses are checked against the initiator's pKVM stage-2 view of each page (any
state but ``NOPAGE`` allows the access, as in pKVM shared pages are mapped read-write).
DMA accesses are checked against the master's IOMMU domain if it has one, and are
unchecked otherwise: the GICv3 ITS is a DMA master with no IOMMU in front of it. A denied
access is a stage-2 fault (an IOMMU fault for DMA): it is logged, and raised as
:class:`Stage2Fault` so the caller handles it the way KVM would (``-EFAULT``).
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sim.memory.accesslog import AccessLog, AccessRecord
from sim.memory.intervals import IntervalMap
from sim.memory.labels import LabelKind, LabelMap
from sim.memory.ownership import HOST, PageOwnership, PageState
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE, PhysicalPages, page_span

PHYS_ADDR_BITS = 48
NOPAGE = PageState.NOPAGE  # the one state a stage-2 does not map
_NOPAGE = f"stage-2 state is {NOPAGE.value}"


@dataclass(frozen=True)
class Initiator:
    """Who performs an access.

    ``name`` is hierarchical (``"src.host.kvm"``); ``component`` is the pKVM component
    whose stage-2 view applies (``"host"``, ``"hyp"`` or a guest's name); ``dma`` marks a
    bus master whose accesses go through an IOMMU, if any, instead of a stage-2.
    """

    name: str
    component: str
    dma: bool = False


Watcher = Callable[[Initiator, AccessRecord], None]
KindFilter = frozenset[LabelKind] | None
_NO_KINDS: frozenset[LabelKind] = frozenset()
_MAX_PFN = 1 << (PHYS_ADDR_BITS - PAGE_SHIFT)
_new_record = tuple.__new__


class Perm(enum.Flag):
    NONE = 0
    R = enum.auto()
    W = enum.auto()
    RW = R | W


_R, _W = Perm.R.value, Perm.W.value


class IOMMUDomain:
    """Pages a DMA master may reach, with permissions (page granular, like an SMMU)."""

    def __init__(self) -> None:
        self._perms: IntervalMap[Perm] = IntervalMap(Perm.NONE)
        # Called with (first_pfn, nr_pages, done) before and after a mapping changes.
        self.watchers: list[Callable[[int, int, bool], None]] = []

    def map(self, addr: int, length: int, perm: Perm = Perm.RW) -> None:
        span = page_span(addr, length)
        for watch in self.watchers:
            watch(span.start, len(span), False)
        self._perms.assign(span.start, span.stop, perm)
        for watch in self.watchers:
            watch(span.start, len(span), True)

    def unmap(self, addr: int, length: int) -> None:
        self.map(addr, length, Perm.NONE)

    def mapped_pfns(self) -> list[int]:
        """Every page with some permission, in order."""
        return [
            p for start, end, perm in self._perms.intervals() if perm for p in range(start, end)
        ]

    def allows(self, pfn: int, write: bool) -> bool:
        return bool(self._perms[pfn]._value_ & (_W if write else _R))  # ._value_: .value


class DomainTable(dict[str, IOMMUDomain]):
    """The IOMMU domains of one machine, by DMA master name. Every domain put in the
    table tells the table's watchers when its mappings change (the exposure tracker)."""

    def __init__(self) -> None:
        super().__init__()
        self.watchers: list[Callable[[int, int, bool], None]] = []

    def _hook(self, domain: IOMMUDomain) -> IOMMUDomain:
        for watch in self.watchers:
            if watch not in domain.watchers:
                domain.watchers.append(watch)
        return domain

    def __setitem__(self, name: str, domain: IOMMUDomain) -> None:
        added = name not in self
        if added:  # the master is now checked: what it reaches may shrink
            for watch in self.watchers:
                watch(0, _MAX_PFN, False)
        super().__setitem__(name, self._hook(domain))
        if added:
            for watch in self.watchers:
                watch(0, _MAX_PFN, True)

    def setdefault(self, name: str, domain: IOMMUDomain) -> IOMMUDomain:  # type: ignore[override]
        if name not in self:
            self[name] = domain
        return self[name]


class Stage2Fault(Exception):
    """An access the initiator's stage-2 (or IOMMU) view forbids."""

    def __init__(self, record: AccessRecord, pfn: int, reason: str) -> None:
        # args are the constructor's, so the fault survives being re-raised by SimPy.
        super().__init__(record, pfn, reason)
        self.record = record
        self.pfn = pfn
        self.reason = reason

    def __str__(self) -> str:
        rec = self.record
        op = "write" if rec.write else "read"
        return (
            f"{rec.actor}: {op} of {rec.length} bytes at {rec.addr:#x} faults"
            f" on page {self.pfn << PAGE_SHIFT:#x}: {self.reason}"
        )


class MemorySystem:
    """One machine's physical memory, page ownership, guest labels and access log."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self._pages = PhysicalPages()
        self.ownership = PageOwnership(clock)
        self.ownership.on_poison = self._poison
        self._views = self.ownership.views  # component -> its stage-2 states, by pfn
        self.labels = LabelMap()
        self.iommu = DomainTable()
        # DMA masters the host drives, by name: True if EL2 mediates the host's commands
        # to it so that it reaches only host memory (see ``dma_reaches``).
        self.host_dma: dict[str, bool] = {}
        self.log = AccessLog()
        self.faults: list[Stage2Fault] = []
        # Observers of checked accesses (the audit), called before the bytes move:
        # (fn, kinds whose reads it wants, kinds whose writes it wants, every DMA write?,
        # only accesses by the initiator of this name, if given)
        self._watchers: list[tuple[Watcher, KindFilter, KindFilter, bool, str | None]] = []
        self._unfiltered = False  # some watcher wants every access
        self._read_kinds = self._write_kinds = _NO_KINDS  # what the filtered ones want
        # (write, DMA write, label kinds touched, initiator name) -> the watchers such an
        # access goes to; a function of those and of ``_watchers`` alone, so emptied when
        # that changes
        self._chosen: dict[tuple[bool, bool, frozenset[LabelKind], str], tuple] = {}
        # The log's columns, appended to in ``_check``; actor name -> its flag bits
        self._log_time, self._log_who, self._log_addr, self._log_length = self.log.appenders()
        self._actor_bits: dict[str, int] = {}

    def watch(
        self,
        fn: Watcher,
        reads: Iterable[LabelKind] | None = None,
        writes: Iterable[LabelKind] | None = None,
        dma_writes: bool = False,
        by: str | None = None,
    ) -> None:
        """Call ``fn(who, record)`` on checked accesses: every one by default, or, given
        ``reads`` / ``writes``, only reads / writes that touch a page holding one of
        those labels (and, with ``dma_writes``, every DMA write); given ``by``, only
        accesses by the initiator of that name. Filtering by page is exact for a watcher
        that acts only on bytes with those labels, and by initiator for one that acts only
        on that initiator's accesses; it spares every other access the call."""
        r = None if reads is None else frozenset(reads)
        w = None if writes is None else frozenset(writes)
        self._watchers.append((fn, r, w, dma_writes, by))
        self._unfiltered = self._unfiltered or r is None or w is None
        self._read_kinds |= r or _NO_KINDS
        self._write_kinds |= w or _NO_KINDS
        self._chosen.clear()

    def _touched(self, first: int, last: int) -> frozenset[LabelKind]:
        """The label kinds on pages ``first`` to ``last``."""
        page_kinds = self.labels.page_kinds
        if first == last:
            return page_kinds.get(first, _NO_KINDS)
        touched = _NO_KINDS
        for pfn in range(first, last + 1) if last - first < len(page_kinds) else list(page_kinds):
            if first <= pfn <= last and pfn in page_kinds:
                touched = touched | page_kinds[pfn]
        return touched

    def denial(self, who: Initiator, addr: int, length: int, write: bool) -> tuple[int, str] | None:
        """``(pfn, reason)`` of the first page ``who`` may not access, or ``None``."""
        if addr < 0 or length < 0 or addr + length > 1 << PHYS_ADDR_BITS:
            raise ValueError(f"access [{addr:#x}, +{length:#x}) outside the physical space")
        if who.dma:
            domain = self.iommu.get(who.name)
            if domain is None:
                return None
            for p in page_span(addr, length):
                if not domain.allows(p, write):
                    return p, f"not mapped {'writable' if write else 'readable'} in the IOMMU"
            return None
        span = page_span(addr, length)
        for start, _end, state in self.ownership.runs(who.component, span.start, len(span)):
            if state is NOPAGE:
                return start, f"{who.component} {_NOPAGE}"
        return None

    def add_host_dma(self, name: str, mediated: bool = False) -> None:
        """Register a DMA master the host drives (``mediated``: EL2 vets its commands)."""
        for watch in self.iommu.watchers:
            watch(0, _MAX_PFN, False)
        self.host_dma[name] = mediated
        for watch in self.iommu.watchers:
            watch(0, _MAX_PFN, True)

    def dma_reaches(self, pfn: int) -> str | None:
        """How a DMA master the host drives can read or write page ``pfn``, or None.

        A master behind an IOMMU reaches what its domain grants (read or write); one
        with no IOMMU reaches every page, unless EL2 mediates the host's commands to it,
        in which case it reaches host-owned pages only (its_hw.py: EL2 refuses a MAPD
        whose ITT is not host memory; the ITS honours the ITT's size).
        """
        for name, mediated in self.host_dma.items():
            domain = self.iommu.get(name)
            if domain is not None:
                if domain.allows(pfn, write=False) or domain.allows(pfn, write=True):
                    return f"{name}'s IOMMU domain grants the page"
            elif not mediated:
                return f"{name} has no IOMMU in front of it"
            elif self.ownership.state(HOST, pfn) is PageState.OWNED:
                return f"{name} may use host memory (EL2 mediates its commands)"
        return None

    def _select(
        self, write: bool, dma_write: bool, touched: frozenset[LabelKind], name: str
    ) -> tuple:
        """The watchers an access with these properties is shown to, in watch order."""
        wanted = self._write_kinds if write else self._read_kinds
        if not (dma_write or self._unfiltered or not wanted.isdisjoint(touched)):
            return ()
        return tuple(
            fn
            for fn, reads, writes, dma_writes, by in self._watchers
            if (by is None or by == name)
            and (
                (dma_writes and dma_write)
                or (kinds := writes if write else reads) is None
                or not kinds.isdisjoint(touched)
            )
        )

    def _check(self, who: Initiator, addr: int, length: int, write: bool) -> None:
        first = addr >> PAGE_SHIFT
        last = (addr + length - 1) >> PAGE_SHIFT
        if not who.dma and first == last and length and addr >= 0 and last < _MAX_PFN:
            # the common case: a CPU access within one page (IntervalMap.__getitem__,
            # inline)
            view = self._views[who.component]
            i = bisect_right(view._keys, first) - 1
            state = view._vals[i] if i >= 0 else view.default
            denied = None if state is not NOPAGE else (first, f"{who.component} {_NOPAGE}")
        else:
            denied = self.denial(who, addr, length, write)
        allowed = denied is None
        now = self.clock()
        # AccessLog.append, inline
        try:
            bits = self._actor_bits[who.name]
        except KeyError:
            bits = self._actor_bits[who.name] = self.log.actor_bits(who.name)
        self._log_time(now)
        self._log_who(bits | allowed << 1 | write)
        self._log_addr(addr)
        self._log_length(length)
        watchers = ()
        if self._watchers:
            if not length:
                touched = _NO_KINDS
            elif first == last:
                touched = self.labels.page_kinds.get(first, _NO_KINDS)
            else:
                touched = self._touched(first, last)
            key = (write, write and who.dma, touched, who.name)
            try:
                watchers = self._chosen[key]
            except KeyError:
                watchers = self._chosen[key] = self._select(*key)
        if watchers or not allowed:
            # AccessRecord(...), without its generated Python __new__
            record = _new_record(AccessRecord, (now, who.name, addr, length, write, allowed))
            for watch in watchers:
                watch(who, record)
            if denied is not None:
                fault = Stage2Fault(record, *denied)
                self.faults.append(fault)
                raise fault

    def read(self, who: Initiator, addr: int, length: int) -> bytes:
        self._check(who, addr, length, write=False)
        return self._pages.read(addr, length)

    def write(self, who: Initiator, addr: int, data: bytes) -> None:
        self._check(who, addr, len(data), write=True)
        self._pages.write(addr, data)

    def peek(self, addr: int, length: int) -> bytes:
        """The bytes at ``addr`` as they are now, for an observer of the run (the audit).

        Not an access: nothing is checked or logged. No actor may use it; actors read
        through :meth:`read`."""
        return self._pages.read(addr, length)

    def _poison(self, first_pfn: int, nr_pages: int) -> None:
        # pKVM clears a guest page before handing it back to the host.
        self._pages.fill(first_pfn, nr_pages, 0)

    def resident_pfns(self, first_pfn: int, end_pfn: int) -> list[int]:
        """Pages in a range that hold data (metadata for copying, not an access)."""
        return self._pages.resident(first_pfn, end_pfn)

    @property
    def resident_bytes(self) -> int:
        return self._pages.resident_pages * PAGE_SIZE
