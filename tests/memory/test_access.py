"""The access check: MemorySystem (CPU stage-2 and DMA/IOMMU) and GuestMemory."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.memory.access import (
    PHYS_ADDR_BITS,
    AccessRecord,
    Initiator,
    IOMMUDomain,
    MemorySystem,
    Perm,
    Stage2Fault,
)
from sim.memory.guest import GuestMemory, NotGuestMemory
from sim.memory.ownership import HOST, HYP, OwnershipError, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE, page_span
from tests.memory.test_ownership import EXPECTED, GUEST, setup_page

T = Transition
NP = PageState.NOPAGE
HOST_CPU = Initiator("host.kvm", HOST)
HYP_CPU = Initiator("hyp.el2", HYP)
GUEST_CPU = Initiator("vm1.vcpu0", GUEST)
CPUS = {HOST: HOST_CPU, HYP: HYP_CPU, GUEST: GUEST_CPU}


def addr(pfn: int) -> int:
    return pfn << PAGE_SHIFT


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def machine(clock: Clock | None = None) -> MemorySystem:
    mem = MemorySystem(clock=clock or Clock())
    mem.ownership.add_guest(GUEST)
    return mem


# --- CPU accesses by page state -----------------------------------------------------------


@pytest.mark.parametrize("state", list(PageState), ids=lambda s: s.name)
@pytest.mark.parametrize("comp", [HOST, HYP, GUEST])
def test_cpu_access_iff_not_nopage(comp: str, state: PageState) -> None:
    clock = Clock()
    mem = machine(clock)
    pfn = 0x41000
    # hyp SHARED_OWNED is unreachable by the model's transitions; setup_page forces it.
    setup_page(mem.ownership, pfn, {comp: state})
    assert mem.ownership.state(comp, pfn) is state
    mem._pages.write(addr(pfn) + 0x10, b"original")  # raw store: not an access
    who = CPUS[comp]
    allowed = state is not NP
    a = addr(pfn) + 0x10

    clock.now = 7.0
    if allowed:
        assert mem.read(who, a, 8) == b"original"
        clock.now = 8.0
        mem.write(who, a, b"written!")
        assert mem._pages.read(a, 8) == b"written!"
        assert mem.log == [
            AccessRecord(7.0, who.name, a, 8, False, True),
            AccessRecord(8.0, who.name, a, 8, True, True),
        ]
        assert mem.faults == []
    else:
        with pytest.raises(Stage2Fault) as rd:
            mem.read(who, a, 8)
        clock.now = 8.0
        with pytest.raises(Stage2Fault) as wr:
            mem.write(who, a, b"written!")
        assert mem._pages.read(a, 8) == b"original"  # denied write wrote nothing
        assert mem.log == [
            AccessRecord(7.0, who.name, a, 8, False, False),
            AccessRecord(8.0, who.name, a, 8, True, False),
        ]
        assert mem.faults == [rd.value, wr.value]
        for fault, record in zip(mem.faults, mem.log, strict=True):
            assert fault.record == record
            assert fault.pfn == pfn
            assert "nopage" in fault.reason
            assert comp in fault.reason
            assert f"{addr(pfn):#x}" in str(fault)
            assert who.name in str(fault)


@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
@pytest.mark.parametrize("bad", ["first", "second", "both"])
def test_access_spanning_two_pages_denied_if_either_is(write: bool, bad: str) -> None:
    mem = machine()
    own = mem.ownership
    lo, hi = 0x100, 0x101
    if bad in ("first", "both"):
        own.apply(T.HOST_DONATE_HYP, lo)
    if bad in ("second", "both"):
        own.apply(T.HOST_DONATE_GUEST, hi, guest=GUEST)
    a = addr(hi) - 4
    mem._pages.write(a, b"ABCDEFGH")
    with pytest.raises(Stage2Fault) as ei:
        if write:
            mem.write(HOST_CPU, a, b"xxxxxxxx")
        else:
            mem.read(HOST_CPU, a, 8)
    assert ei.value.pfn == (lo if bad in ("first", "both") else hi)
    assert "host stage-2 state is nopage" in ei.value.reason
    assert mem._pages.read(a, 8) == b"ABCDEFGH"  # neither page written
    assert mem.log == [AccessRecord(0.0, HOST_CPU.name, a, 8, write, False)]


def test_access_spanning_two_allowed_pages() -> None:
    mem = machine()
    a = addr(0x200) - 3
    mem.write(HOST_CPU, a, b"abcdef")
    assert mem.read(HOST_CPU, a, 6) == b"abcdef"
    assert [r.allowed for r in mem.log] == [True, True]


def test_shared_page_accessible_by_both_sides() -> None:
    mem = machine()
    own = mem.ownership
    own.apply(T.HOST_DONATE_GUEST, 0x300, 2, guest=GUEST)
    own.apply(T.GUEST_SHARE_HOST, 0x300, guest=GUEST)
    mem.write(GUEST_CPU, addr(0x300), b"shared")
    assert mem.read(HOST_CPU, addr(0x300), 6) == b"shared"
    with pytest.raises(Stage2Fault):
        mem.read(HOST_CPU, addr(0x301), 1)
    with pytest.raises(Stage2Fault):
        mem.read(HYP_CPU, addr(0x300), 1)


def test_zero_length_access_is_logged_and_allowed() -> None:
    mem = machine()
    mem.ownership.apply(T.HOST_DONATE_GUEST, 5, guest=GUEST)
    assert mem.read(HOST_CPU, addr(5), 0) == b""
    assert mem.log == [AccessRecord(0.0, HOST_CPU.name, addr(5), 0, False, True)]


@pytest.mark.parametrize(
    ("a", "length"),
    [(-1, 1), (-PAGE_SIZE, 8), ((1 << PHYS_ADDR_BITS) - 4, 8), (1 << PHYS_ADDR_BITS, 1), (0, -1)],
)
@pytest.mark.parametrize("dma", [False, True])
def test_out_of_range_raises_value_error(a: int, length: int, dma: bool) -> None:
    mem = machine()
    who = Initiator("x", HOST, dma=dma)
    with pytest.raises(ValueError):
        mem.read(who, a, length)
    if length >= 0:
        with pytest.raises(ValueError):
            mem.write(who, a, b"z" * length)
    assert mem.faults == []


def test_top_of_physical_space_is_in_range() -> None:
    mem = machine()
    top = (1 << PHYS_ADDR_BITS) - 8
    mem.write(HOST_CPU, top, b"12345678")
    assert mem.read(HOST_CPU, top, 8) == b"12345678"


# --- DMA ----------------------------------------------------------------------------------

ITS = Initiator("vm1.its", HOST, dma=True)


def test_dma_without_iommu_is_unchecked() -> None:
    """The GIC is conceptually DMA: it reads a guest page the host CPU cannot."""
    mem = machine()
    own = mem.ownership
    own.apply(T.HOST_DONATE_GUEST, 0x50, guest=GUEST)
    mem.write(GUEST_CPU, addr(0x50), b"guest-private")
    with pytest.raises(Stage2Fault):
        mem.read(HOST_CPU, addr(0x50), 13)
    assert mem.read(ITS, addr(0x50), 13) == b"guest-private"
    mem.write(ITS, addr(0x50), b"dma")
    assert mem.read(GUEST_CPU, addr(0x50), 3) == b"dma"
    # Even a page nobody but the hyp owns.
    own.apply(T.HOST_DONATE_HYP, 0x51)
    assert mem.read(ITS, addr(0x51), 4) == bytes(4)
    its_records = [r for r in mem.log if r.actor == ITS.name]
    assert [(r.write, r.allowed) for r in its_records] == [
        (False, True),
        (True, True),
        (False, True),
    ]
    assert len(mem.faults) == 1


def test_iommu_domain_restricts_dma() -> None:
    mem = machine()
    domain = IOMMUDomain()
    mem.iommu[ITS.name] = domain
    p = 0x60
    mem._pages.write(addr(p), b"data")

    with pytest.raises(Stage2Fault) as ei:  # nothing mapped yet
        mem.read(ITS, addr(p), 4)
    assert ei.value.pfn == p and "IOMMU" in ei.value.reason and "readable" in ei.value.reason

    domain.map(addr(p) + 100, 1, Perm.R)  # page granular: maps the whole page
    assert mem.read(ITS, addr(p), 4) == b"data"
    assert mem.read(ITS, addr(p) + PAGE_SIZE - 1, 1) == b"\0"
    with pytest.raises(Stage2Fault) as ei:
        mem.write(ITS, addr(p), b"XXXX")
    assert ei.value.pfn == p and "writable" in ei.value.reason
    assert mem._pages.read(addr(p), 4) == b"data"

    # Spanning a mapped and an unmapped page: denied, fault on the unmapped one.
    with pytest.raises(Stage2Fault) as ei:
        mem.read(ITS, addr(p + 1) - 2, 4)
    assert ei.value.pfn == p + 1

    domain.map(addr(p), PAGE_SIZE, Perm.RW)
    mem.write(ITS, addr(p), b"XXXX")
    assert mem._pages.read(addr(p), 4) == b"XXXX"

    domain.unmap(addr(p), PAGE_SIZE)
    with pytest.raises(Stage2Fault):
        mem.read(ITS, addr(p), 4)
    with pytest.raises(Stage2Fault):
        mem.write(ITS, addr(p), b"YYYY")
    assert mem._pages.read(addr(p), 4) == b"XXXX"
    assert [r.allowed for r in mem.log] == [False, True, True, False, False, True, False, False]
    assert len(mem.faults) == 5


def test_iommu_write_only_and_ownership_independent() -> None:
    mem = machine()
    mem.ownership.apply(T.HOST_DONATE_GUEST, 0x70, guest=GUEST)
    domain = IOMMUDomain()
    domain.map(addr(0x70), PAGE_SIZE, Perm.W)
    mem.iommu[ITS.name] = domain
    mem.write(ITS, addr(0x70), b"w")  # IOMMU, not the stage-2, decides for DMA
    with pytest.raises(Stage2Fault):
        mem.read(ITS, addr(0x70), 1)


def test_iommu_of_another_master_does_not_apply() -> None:
    mem = machine()
    mem.iommu["other.smmu-master"] = IOMMUDomain()
    mem.ownership.apply(T.HOST_DONATE_GUEST, 0x80, guest=GUEST)
    assert mem.read(ITS, addr(0x80), 1) == b"\0"


def test_iommu_domain_allows() -> None:
    d = IOMMUDomain()
    d.map(addr(3), 2 * PAGE_SIZE + 1)  # pages 3, 4, 5
    assert [d.allows(p, w) for p in (2, 3, 5, 6) for w in (False, True)] == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    d.unmap(addr(4), 1)
    assert d.allows(3, True) and not d.allows(4, False) and d.allows(5, False)


# --- GuestMemory --------------------------------------------------------------------------

RAM_BASE, RAM_SIZE = 0x40000000, 0x4000  # 4 pages


def test_guest_memory_outside_ram_is_not_an_access() -> None:
    mem = machine()
    gm = GuestMemory(mem, HOST_CPU, RAM_BASE, RAM_SIZE)
    mem._pages.write(RAM_BASE - 8, b"outside!")
    for gpa, length in [
        (RAM_BASE - 1, 1),
        (RAM_BASE - 4, 8),  # straddles the start
        (RAM_BASE + RAM_SIZE - 4, 8),  # straddles the end
        (RAM_BASE + RAM_SIZE, 1),
        (0, 8),
    ]:
        assert not gm.visible(gpa, length)
        with pytest.raises(NotGuestMemory):
            gm.read(gpa, length)
        with pytest.raises(NotGuestMemory):
            gm.write(gpa, b"\xee" * length)
    with pytest.raises(NotGuestMemory):
        gm.read_u64(RAM_BASE + RAM_SIZE - 4)
    with pytest.raises(NotGuestMemory):
        gm.write_u64(RAM_BASE - 8, 1)
    assert mem.log == []
    assert mem.faults == []
    assert mem._pages.read(RAM_BASE - 8, 8) == b"outside!"
    assert gm.visible(RAM_BASE, RAM_SIZE)
    assert gm.visible(RAM_BASE + RAM_SIZE - 1)


def test_guest_memory_inside_ram_goes_through_the_check() -> None:
    clock = Clock()
    mem = machine(clock)
    first = RAM_BASE >> PAGE_SHIFT
    mem.ownership.apply(T.HOST_DONATE_GUEST, first, RAM_SIZE // PAGE_SIZE, guest=GUEST)
    kvm = GuestMemory(mem, HOST_CPU, RAM_BASE, RAM_SIZE)
    vcpu = GuestMemory(mem, GUEST_CPU, RAM_BASE, RAM_SIZE)

    clock.now = 1.0
    vcpu.write_u64(RAM_BASE + 0x1008, 0x0102030405060708)
    assert mem._pages.read(RAM_BASE + 0x1008, 8) == bytes([8, 7, 6, 5, 4, 3, 2, 1])
    assert vcpu.read_u64(RAM_BASE + 0x1008) == 0x0102030405060708

    clock.now = 2.0
    with pytest.raises(Stage2Fault) as ei:
        kvm.read_u64(RAM_BASE + 0x1008)
    assert ei.value.pfn == first + 1
    with pytest.raises(Stage2Fault):
        kvm.write(RAM_BASE, b"\0")
    assert mem.log == [
        AccessRecord(1.0, GUEST_CPU.name, RAM_BASE + 0x1008, 8, True, True),
        AccessRecord(1.0, GUEST_CPU.name, RAM_BASE + 0x1008, 8, False, True),
        AccessRecord(2.0, HOST_CPU.name, RAM_BASE + 0x1008, 8, False, False),
        AccessRecord(2.0, HOST_CPU.name, RAM_BASE, 1, True, False),
    ]
    assert len(mem.faults) == 2

    # After MEM_SHARE the host (KVM) reaches the page.
    mem.ownership.apply(T.GUEST_SHARE_HOST, first + 1, guest=GUEST)
    assert kvm.read_u64(RAM_BASE + 0x1008) == 0x0102030405060708


# --- random sequences: nobody touches a page its state forbids ---------------------------

NPAGES = 6
SPACE = NPAGES * PAGE_SIZE
ACTORS = [HOST, HYP, GUEST]


class AccessMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.mem = machine(self.clock)
        self.shadow = bytearray(SPACE)
        self.attempts = 0

    @rule(
        t=st.sampled_from(list(Transition)),
        first=st.integers(0, NPAGES - 1),
        n=st.integers(1, 3),
    )
    def transition(self, t: Transition, first: int, n: int) -> None:
        n = min(n, NPAGES - first)
        guest = GUEST if any(r == "guest" for r, _, _ in EXPECTED[t].sides) else None
        try:
            self.mem.ownership.apply(t, first, n, guest=guest)
        except OwnershipError:
            return
        if EXPECTED[t].poison:
            self.shadow[addr(first) : addr(first + n)] = bytes(n * PAGE_SIZE)

    @precondition(lambda self: self.attempts < 60)
    @rule(
        actor=st.sampled_from(ACTORS),
        a=st.integers(0, SPACE - 1),
        length=st.integers(0, PAGE_SIZE + 16),
        write=st.booleans(),
        fill=st.integers(1, 255),
    )
    def access(self, actor: str, a: int, length: int, write: bool, fill: int) -> None:
        length = min(length, SPACE - a)
        who = CPUS[actor]
        own = self.mem.ownership
        forbidden = [p for p in page_span(a, length) if own.state(actor, p) is NP]
        self.clock.now += 1.0
        self.attempts += 1
        faults_before = len(self.mem.faults)
        data = bytes([fill]) * length
        try:
            if write:
                self.mem.write(who, a, data)
            else:
                got = self.mem.read(who, a, length)
        except Stage2Fault as fault:
            assert forbidden, "denied although every page is accessible"
            assert fault.pfn == forbidden[0]
            assert "nopage" in fault.reason
            assert self.mem.faults[faults_before:] == [fault]
        else:
            assert not forbidden, f"{actor} touched page(s) {forbidden} in state nopage"
            assert len(self.mem.faults) == faults_before
            if write:
                self.shadow[a : a + length] = data
            else:
                assert got == bytes(self.shadow[a : a + length])
        rec = self.mem.log[-1]
        assert rec == AccessRecord(self.clock.now, who.name, a, length, write, not forbidden)

    @invariant()
    def log_counts_every_attempt(self) -> None:
        assert len(self.mem.log) == self.attempts
        assert len(self.mem.faults) == sum(1 for r in self.mem.log if not r.allowed)

    @invariant()
    def memory_matches_shadow(self) -> None:
        assert self.mem._pages.read(0, SPACE) == bytes(self.shadow)


TestAccessMachine = AccessMachine.TestCase
TestAccessMachine.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
