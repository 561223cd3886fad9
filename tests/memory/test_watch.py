"""MemorySystem.watch (watchers filtered by label kind per page) and LabelMap.page_kinds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory.access import Initiator, IOMMUDomain, MemorySystem, Perm, Stage2Fault
from sim.memory.accesslog import AccessRecord
from sim.memory.intervals import IntervalMap
from sim.memory.labels import FREE, Label, LabelKind, LabelMap
from sim.memory.ownership import HOST
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE, page_span

K = LabelKind
GUEST = "pvm"
BASE = 0x4000_0000  # guest RAM on QEMU virt
WINDOW_PAGES = 16  # labels and accesses land in a small window, so they overlap often
HOST_CPU = Initiator("src.host.vmm", HOST)
ITS_DMA = Initiator("src.its", HOST, dma=True)  # no IOMMU domain: unchecked
SMMU_DMA = Initiator("src.nic", HOST, dma=True)  # an IOMMU domain over part of the window
GUEST_CPU = Initiator("guest.vcpu", GUEST)  # owns no page here: every access faults
INITIATORS = (HOST_CPU, HOST_CPU, ITS_DMA, SMMU_DMA, GUEST_CPU)
KINDS = [k for k in LabelKind if k is not K.FREE]
# Mostly the kinds the watchers below filter on, so filters match often.
LABEL_KINDS = st.one_of(
    st.sampled_from([K.SECRET, K.CMDQ, K.ITT, K.KERNEL]), st.sampled_from(KINDS)
)


class Clock:
    """A clock that ticks on every read, so every access has its own time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def machine() -> MemorySystem:
    mem = MemorySystem(clock=Clock())
    mem.ownership.add_guest(GUEST)
    domain = mem.iommu[SMMU_DMA.name] = IOMMUDomain()
    domain.map(BASE, 8 * PAGE_SIZE, Perm.RW)
    domain.map(BASE + 8 * PAGE_SIZE, 4 * PAGE_SIZE, Perm.R)
    return mem


def kinds_on_pages(labels: LabelMap, addr: int, length: int) -> frozenset[LabelKind]:
    """Brute force: every non-free kind on the pages ``[addr, addr + length)`` touches."""
    span = page_span(addr, length)
    runs = labels.runs(span.start << PAGE_SHIFT, len(span) << PAGE_SHIFT)
    return frozenset(label.kind for _, _, label in runs if label.kind is not K.FREE)


def wants(
    who: Initiator,
    rec: AccessRecord,
    touched: frozenset[LabelKind],
    reads: frozenset[LabelKind] | None,
    writes: frozenset[LabelKind] | None,
    dma: bool,
) -> bool:
    kinds = writes if rec.write else reads
    return (dma and who.dma and rec.write) or kinds is None or bool(kinds & touched)


# (reads, writes, dma) of the filtered watchers: one side unfiltered, both filtered,
# filters that want nothing, a DMA-only one.
FILTERS: list[tuple[frozenset | None, frozenset | None, bool]] = [
    (frozenset({K.SECRET}), frozenset(), False),
    (frozenset(), frozenset({K.CMDQ, K.ITT}), False),
    (frozenset({K.ITT, K.DEVICE_TABLE_L2}), frozenset({K.SECRET}), True),
    (frozenset(), frozenset(), True),
    (frozenset(), frozenset(), False),
    (frozenset({K.PROP_TABLE, K.PEND_TABLE}), frozenset({K.KERNEL}), False),
]
READS_ONLY = (None, frozenset(), False)  # every read, no write


def addresses() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, WINDOW_PAGES * PAGE_SIZE - 1),
        st.integers(0, WINDOW_PAGES - 1).map(lambda p: p * PAGE_SIZE),
        st.integers(1, WINDOW_PAGES).map(lambda p: p * PAGE_SIZE - 8),
    ).map(lambda off: BASE + off)


LABEL_OPS = st.tuples(
    st.just("label"),
    addresses(),
    st.one_of(st.integers(1, 64), st.integers(1, 6 * PAGE_SIZE)),
    LABEL_KINDS,
    st.sampled_from(["", "a", "b"]),
)
CLEAR_OPS = st.one_of(
    st.tuples(st.just("clear"), addresses(), st.integers(1, 6 * PAGE_SIZE)),
    st.just(("clear", 0, 1 << 32)),  # all of the low 4 GiB
)
ACCESS_OPS = st.tuples(
    st.just("access"),
    st.integers(0, len(INITIATORS) - 1),
    addresses(),
    st.one_of(
        st.integers(1, 16),  # within a page, mostly
        st.sampled_from([PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE]),
        st.integers(1, 12 * PAGE_SIZE),  # page-crossing and multi-page
    ),
    st.booleans(),
)
OPS = st.lists(st.one_of(LABEL_OPS, CLEAR_OPS, ACCESS_OPS, ACCESS_OPS), max_size=40)


def run_ops(mem: MemorySystem, ops, before_access=None) -> int:
    """Apply the ops; returns how many accesses faulted."""
    faults = 0
    for op in ops:
        if op[0] == "label":
            _, addr, length, kind, name = op
            mem.labels.set(addr, length, Label(kind, name))
        elif op[0] == "clear":
            _, addr, length = op
            mem.labels.clear(addr, length)
        else:
            _, who_index, addr, length, write = op
            who = INITIATORS[who_index]
            if before_access is not None:
                before_access(who, addr, length, write)
            try:
                if write:
                    mem.write(who, addr, bytes([who_index + 1]) * length)
                else:
                    assert len(mem.read(who, addr, length)) == length
            except Stage2Fault as fault:
                assert fault.record.actor == who.name and not fault.record.allowed
                faults += 1
    return faults


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_filtered_watchers_see_exactly_the_accesses_on_their_kinds(ops) -> None:
    mem = machine()
    seen: list[tuple[Initiator, AccessRecord, frozenset[LabelKind]]] = []
    order: list[int] = []

    def everything(who: Initiator, rec: AccessRecord) -> None:
        assert mem.log[-1] == rec  # logged before the watchers run
        order.append(-1)
        seen.append((who, rec, kinds_on_pages(mem.labels, rec.addr, rec.length)))

    mem.watch(everything)
    filters = [*FILTERS, READS_ONLY]
    got: list[list[tuple[Initiator, AccessRecord]]] = [[] for _ in filters]
    for i, (reads, writes, dma) in enumerate(filters):

        def watcher(who, rec, i=i):
            order.append(i)
            got[i].append((who, rec))

        mem.watch(watcher, reads=reads, writes=writes, dma_writes=dma)

    faults = run_ops(mem, ops)

    assert [rec for _, rec, _ in seen] == list(mem.log)
    assert len(mem.faults) == faults == sum(not rec.allowed for _, rec, _ in seen)
    for i, (reads, writes, dma) in enumerate(filters):
        expected = [(w, r) for w, r, t in seen if wants(w, r, t, reads, writes, dma)]
        assert got[i] == expected, (i, reads, writes, dma)
    # Every access: the unfiltered watcher first, then the others in registration order.
    calls: list[list[int]] = []
    for i in order:
        if i == -1:
            calls.append([])
        else:
            calls[-1].append(i)
    assert len(calls) == len(seen)
    assert all(c == sorted(c) for c in calls)


@settings(max_examples=400, deadline=None)
@given(OPS)
def test_filtered_only_watchers_match_a_reference_taken_before_each_access(ops) -> None:
    """With no unfiltered watcher the memory system skips uninteresting accesses early."""
    mem = machine()
    got: list[list[tuple[Initiator, AccessRecord]]] = [[] for _ in FILTERS]
    for i, (reads, writes, dma) in enumerate(FILTERS):
        mem.watch(lambda who, rec, i=i: got[i].append((who, rec)), reads, writes, dma)
    touched: list[tuple[Initiator, frozenset[LabelKind]]] = []

    def before_access(who, addr, length, write):
        touched.append((who, kinds_on_pages(mem.labels, addr, length)))

    run_ops(mem, ops, before_access)

    log = list(mem.log)
    assert len(log) == len(touched)
    for i, (reads, writes, dma) in enumerate(FILTERS):
        expected = [
            (who, rec)
            for (who, kinds), rec in zip(touched, log, strict=True)
            if wants(who, rec, kinds, reads, writes, dma)
        ]
        assert got[i] == expected, (i, reads, writes, dma)


def test_watch_by_example() -> None:
    mem = machine()
    secret_reads, cmdq_writes, dma_seen = [], [], []
    mem.watch(lambda w, r: secret_reads.append(r.addr), reads=[K.SECRET], writes=[])
    mem.watch(lambda w, r: cmdq_writes.append(r.addr), reads=(), writes=[K.CMDQ])
    mem.watch(lambda w, r: dma_seen.append(r.addr), reads=(), writes=(), dma_writes=True)
    mem.labels.set(BASE + 0x1FF8, 8, Label(K.SECRET, "key"))  # last 8 bytes of page 1
    mem.labels.set(BASE + 0x4000, 3 * PAGE_SIZE, Label(K.CMDQ))  # pages 4, 5, 6

    mem.read(HOST_CPU, BASE + 0x1000, 4)  # page 1 holds the secret: a byte away is enough
    mem.read(HOST_CPU, BASE + 0x0FFC, 8)  # pages 0 and 1
    mem.read(HOST_CPU, BASE, 4)  # page 0: nothing
    mem.write(HOST_CPU, BASE + 0x1000, b"x")  # a write: not wanted by the secret watcher
    mem.write(HOST_CPU, BASE + 0x3000, bytes(PAGE_SIZE + 1))  # pages 3 and 4
    mem.write(HOST_CPU, BASE + 0x7000, bytes(8))  # page 7: past the queue
    mem.write(HOST_CPU, BASE + 0x6FF8, bytes(8))  # page 6: the queue's last page
    mem.read(ITS_DMA, BASE + 0x5000, 8)  # a read of the queue, by DMA: reads are filtered
    mem.write(ITS_DMA, BASE + 0x8000, b"y")
    assert secret_reads == [BASE + 0x1000, BASE + 0x0FFC]
    assert cmdq_writes == [BASE + 0x3000, BASE + 0x6FF8]
    assert dma_seen == [BASE + 0x8000]

    mem.labels.clear(BASE + 0x1FF8, 8)
    mem.labels.set(BASE + 0x4000, 3 * PAGE_SIZE, Label(K.ITT, "dev0"))  # relabelled
    mem.read(HOST_CPU, BASE + 0x1000, 4)
    mem.write(HOST_CPU, BASE + 0x5000, b"z")
    assert secret_reads == [BASE + 0x1000, BASE + 0x0FFC]
    assert cmdq_writes == [BASE + 0x3000, BASE + 0x6FF8]


def test_watch_by_one_initiator_sees_only_its_accesses() -> None:
    """``by`` filters on the initiator's name, on top of the kinds; the choice of watchers
    is cached per access shape, so the same access by another initiator, before and after,
    must not reach it."""
    mem = machine()
    el2 = Initiator("src.lowvisor", HOST)
    mine, every = [], []
    mem.watch(lambda w, r: mine.append((w.name, r.addr)), (K.CMDQ,), (), by=el2.name)
    mem.watch(lambda w, r: every.append((w.name, r.addr)), (K.CMDQ,), ())
    mem.labels.set(BASE, PAGE_SIZE, Label(K.CMDQ))
    mem.read(HOST_CPU, BASE, 32)
    mem.read(el2, BASE + 32, 32)
    mem.read(HOST_CPU, BASE + 64, 32)
    mem.write(el2, BASE, bytes(32))  # a write: reads only
    mem.read(el2, BASE + PAGE_SIZE, 32)  # no queue on the page
    assert mine == [(el2.name, BASE + 32)]
    assert every == [
        (HOST_CPU.name, BASE),
        (el2.name, BASE + 32),
        (HOST_CPU.name, BASE + 64),
    ]


def test_watchers_run_before_the_bytes_move_and_before_the_fault() -> None:
    mem = machine()
    mem.labels.set(BASE, 16, Label(K.SECRET))
    snapshots: list[tuple[bool, bytes, int]] = []

    def watcher(who: Initiator, rec: AccessRecord) -> None:
        snapshots.append((rec.allowed, mem._pages.read(rec.addr, 4), len(mem.faults)))

    mem.watch(watcher, reads=[K.SECRET], writes=[K.SECRET])
    mem.write(HOST_CPU, BASE, b"abcd")
    with pytest.raises(Stage2Fault):
        mem.write(GUEST_CPU, BASE, b"wxyz")
    with pytest.raises(Stage2Fault):
        mem.read(GUEST_CPU, BASE, 4)
    assert snapshots == [(True, bytes(4), 0), (False, b"abcd", 0), (False, b"abcd", 1)]
    assert mem._pages.read(BASE, 4) == b"abcd"
    assert len(mem.faults) == 2


# ---- LabelMap.page_kinds -----------------------------------------------------------------


def brute_page_kinds(labels: LabelMap) -> dict[int, frozenset[LabelKind]]:
    out: dict[int, set[LabelKind]] = {}
    for start, end, label in labels.labelled():
        if label.kind is K.FREE:
            continue
        for pfn in range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1):
            out.setdefault(pfn, set()).add(label.kind)
    return {pfn: frozenset(kinds) for pfn, kinds in out.items()}


LABEL_SETS = st.lists(
    st.one_of(
        st.tuples(
            addresses(),
            st.one_of(st.integers(0, 64), st.integers(1, 6 * PAGE_SIZE)),
            st.one_of(LABEL_KINDS, st.just(K.FREE)),
        ),
        st.tuples(addresses(), st.integers(1, 6 * PAGE_SIZE), st.none()),  # clear
        st.just((0, 1 << 32, None)),  # clear the low 4 GiB
        st.just((BASE - 8, 16, K.KERNEL)),  # straddles the window's first page
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(LABEL_SETS)
def test_page_kinds_is_a_brute_force_recomputation(ops) -> None:
    labels = LabelMap()
    for addr, length, kind in ops:
        if kind is None:
            labels.clear(addr, length)
        else:
            labels.set(addr, length, Label(kind, "n") if kind is K.ITT else Label(kind))
        assert labels.page_kinds == brute_page_kinds(labels)
    # and page by page over the window, straight from the runs
    for pfn in range((BASE >> PAGE_SHIFT) - 1, (BASE >> PAGE_SHIFT) + WINDOW_PAGES + 7):
        kinds = {
            label.kind
            for _, _, label in labels.runs(pfn << PAGE_SHIFT, PAGE_SIZE)
            if label.kind is not K.FREE
        }
        assert labels.page_kinds.get(pfn) == (frozenset(kinds) if kinds else None)


def test_page_kinds_by_example() -> None:
    labels = LabelMap()
    labels.set(0x1FF0, 0x20, Label(K.CMDQ))  # pages 1 and 2
    labels.set(0x2100, 0x10, Label(K.SECRET, "k"))
    assert labels.page_kinds == {1: {K.CMDQ}, 2: {K.CMDQ, K.SECRET}}
    labels.set(0x2000, 0x10, FREE)  # page 2 loses its queue bytes
    assert labels.page_kinds == {1: {K.CMDQ}, 2: {K.SECRET}}
    labels.set(0x2100, 0x10, Label(K.KERNEL))  # relabelled
    assert labels.page_kinds == {1: {K.CMDQ}, 2: {K.KERNEL}}
    labels.set(0x1000, 0, Label(K.ITT))  # empty: no change
    assert labels.page_kinds == {1: {K.CMDQ}, 2: {K.KERNEL}}
    labels.clear(0x2100, 0x10)
    assert labels.page_kinds == {1: {K.CMDQ}}
    labels.clear(0x1000, 0x1000)
    assert labels.page_kinds == {}
    assert list(labels.labelled()) == []


def test_clearing_4_gib_drops_every_entry_visiting_only_labelled_pages(monkeypatch) -> None:
    labels = LabelMap()
    four_gib = 1 << 32
    spots = [
        (0, 16, Label(K.SECRET, "low")),
        (0x1234, 3 * PAGE_SIZE, Label(K.KERNEL)),
        (1 << 30, 16, Label(K.CMDQ)),
        ((3 << 30) + 0x800, 3 * PAGE_SIZE, Label(K.PROP_TABLE)),
        (four_gib - 8, 16, Label(K.SECRET, "edge")),  # 8 bytes on each side of 4 GiB
        (four_gib + 0x5000, 16, Label(K.ITT, "high")),  # past the cleared range
        (BASE, 512 * PAGE_SIZE, Label(K.ITT, "big")),  # 512 pages indexed
    ]
    for addr, length, label in spots:
        labels.set(addr, length, label)
    assert len(labels.page_kinds) > 512
    assert labels.page_kinds == brute_page_kinds(labels)
    recomputed = []  # pages whose kinds were recomputed: never the whole 4 GiB
    values = IntervalMap.values
    monkeypatch.setattr(
        IntervalMap, "values", lambda self, lo, hi: recomputed.append(lo) or values(self, lo, hi)
    )
    labels.clear(0, four_gib)
    labels.clear(0, four_gib)  # again, with nothing left to drop
    labels.set(0, four_gib, FREE)
    edge, high = four_gib >> PAGE_SHIFT, (four_gib + 0x5000) >> PAGE_SHIFT
    assert labels.page_kinds == {edge: {K.SECRET}, high: {K.ITT}}
    assert labels.page_kinds == brute_page_kinds(labels)
    assert len(recomputed) <= 3  # the one page straddling 4 GiB, once per call
    labels.clear(four_gib, four_gib)  # the next 4 GiB
    assert labels.page_kinds == {}
    assert list(labels.labelled()) == []
