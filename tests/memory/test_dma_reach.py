"""What a DMA master the host drives reaches (MemorySystem.dma_reaches), and the
exposure tracker that follows it as IOMMU domains, page states and labels change."""

from __future__ import annotations

from sim.exposure import ExposureInterval, ExposureTracker, union_totals
from sim.memory.access import Initiator, IOMMUDomain, MemorySystem, Perm
from sim.memory.labels import Label, LabelKind
from sim.memory.ownership import HOST, Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

GUEST = "vm1"
ITS = Initiator("m.its-hw", HOST, dma=True)
PFN = 0x40000
SECRET = Label(LabelKind.SECRET, "key")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def machine(mediated: bool = False) -> tuple[MemorySystem, Clock, ExposureTracker]:
    clock = Clock()
    mem = MemorySystem(clock)
    mem.ownership.add_guest(GUEST)
    tracker = ExposureTracker(mem, clock, reach="dma")
    mem.add_host_dma(ITS.name, mediated)
    mem.ownership.apply(Transition.HOST_DONATE_GUEST, PFN, 4, guest=GUEST)
    mem.labels.set(PFN << PAGE_SHIFT, 64, SECRET)
    return mem, clock, tracker


def test_a_master_with_no_iommu_reaches_every_page_until_a_domain_checks_it():
    mem, clock, tracker = machine()
    assert mem.dma_reaches(PFN) == "m.its-hw has no IOMMU in front of it"
    assert tracker.current == 64
    clock.now = 10.0
    domain = mem.iommu.setdefault(ITS.name, IOMMUDomain())  # empty: denies everything
    assert mem.dma_reaches(PFN) is None and tracker.current == 0
    clock.now = 20.0
    domain.map(PFN << PAGE_SHIFT, PAGE_SIZE, Perm.R)  # read only still reaches
    assert "IOMMU domain grants" in mem.dma_reaches(PFN)
    assert tracker.current == 64
    clock.now = 30.0
    domain.unmap(PFN << PAGE_SHIFT, PAGE_SIZE)
    tracker.finish()
    spans = [(i.start, i.end, i.trigger) for i in tracker.intervals]
    assert spans == [(0.0, 10.0, "label"), (20.0, 30.0, "iommu")]
    assert tracker.byte_us == 64 * 20.0


def test_el2_mediation_confines_a_master_to_host_memory():
    mem, clock, tracker = machine(mediated=True)
    assert mem.dma_reaches(PFN) is None and tracker.current == 0
    # Teardown hands a shared page back unpoisoned: host memory, so reachable again.
    mem.ownership.apply(Transition.GUEST_SHARE_HOST, PFN, 1, guest=GUEST)
    assert mem.dma_reaches(PFN) is None
    clock.now = 5.0
    mem.ownership.apply(Transition.HOST_RECLAIM_SHARED_PAGE, PFN, 1, guest=GUEST)
    assert mem.dma_reaches(PFN) == "m.its-hw may use host memory (EL2 mediates its commands)"
    assert tracker.current == 64


def test_a_domain_added_by_assignment_is_watched_too():
    mem, _clock, tracker = machine()
    domain = IOMMUDomain()
    mem.iommu[ITS.name] = domain
    assert tracker.current == 0
    domain.map(PFN << PAGE_SHIFT, 2 * PAGE_SIZE, Perm.W)
    assert tracker.current == 64


def interval(addr: int, length: int, start: float, end: float) -> ExposureInterval:
    return ExposureInterval(addr, length, "s", start, end, None)


def test_union_counts_each_byte_once_per_instant():
    # The same 100 bytes on two machines over [0, 10) and [5, 20): 100 B for 20 us.
    peak, byte_us = union_totals([interval(0, 100, 0, 10), interval(0, 100, 5, 20)])
    assert (peak, byte_us) == (100, 2000.0)
    # Overlapping ranges at once: [0, 100) and [50, 150) is 150 distinct bytes.
    peak, byte_us = union_totals([interval(0, 100, 0, 10), interval(50, 100, 0, 10)])
    assert (peak, byte_us) == (150, 1500.0)


def test_union_respects_the_window_and_ignores_instants_of_no_length():
    spans = [interval(0, 10, 0, 30), interval(100, 1000, 40, 50), interval(0, 500, 7, 7)]
    peak, byte_us = union_totals(spans, window_end=20.0)
    assert (peak, byte_us) == (10, 200.0)
    # One closing as another opens at the same instant: never both at once.
    peak, _ = union_totals([interval(0, 10, 0, 5), interval(10, 10, 5, 9)])
    assert peak == 10
