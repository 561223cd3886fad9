"""pKVM page ownership: the transition table of mem_protect.c, checked exhaustively.

The expected table below is written out from /work/notes/pkvm-verify.md (section 2 for the
states and check order, section 5 for the TLB invalidations of mainline v7.1), not read
back from ``Transition``; ``test_spec_matches_notes`` compares the two.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import pytest

from sim.memory.access import Initiator, MemorySystem
from sim.memory.ownership import (
    HOST,
    HYP,
    OwnershipChange,
    OwnershipError,
    PageOwnership,
    PageState,
    Transition,
)
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

O, SO, SB, NP = (
    PageState.OWNED,
    PageState.SHARED_OWNED,
    PageState.SHARED_BORROWED,
    PageState.NOPAGE,
)
ALL_STATES = (O, SO, SB, NP)
GUEST = "vm1"
T = Transition


@dataclass(frozen=True)
class Expected:
    kernel_name: str
    # (role, before, after) in the kernel's check order
    sides: tuple[tuple[str, PageState, PageState], ...]
    tlbi: bool
    poison: bool = False


EXPECTED: dict[Transition, Expected] = {
    # Section 5: host_share_hyp / host_unshare_hyp: 0 TLBI (vmemmap only, no hyp mapping).
    T.HOST_SHARE_HYP: Expected("__pkvm_host_share_hyp", (("host", O, SO), ("hyp", NP, SB)), False),
    T.HOST_UNSHARE_HYP: Expected(
        "__pkvm_host_unshare_hyp", (("host", SO, O), ("hyp", SB, NP)), False
    ),
    # host_donate_hyp: 1 (host S2 valid -> annotation).
    T.HOST_DONATE_HYP: Expected("__pkvm_host_donate_hyp", (("host", O, NP), ("hyp", NP, O)), True),
    # hyp_donate_host: 1 (hyp S1 unmap, vale2is). Check order: hyp first, then host.
    T.HYP_DONATE_HOST: Expected("__pkvm_hyp_donate_host", (("hyp", O, NP), ("host", NP, O)), True),
    # host_share_guest (np): 0 (invalid -> valid in the guest S2).
    T.HOST_SHARE_GUEST: Expected(
        "__pkvm_host_share_guest", (("host", O, SO), ("guest", NP, SB)), False
    ),
    # host_unshare_guest (np): 1 (guest S2 unmap).
    T.HOST_UNSHARE_GUEST: Expected(
        "__pkvm_host_unshare_guest", (("host", SO, O), ("guest", SB, NP)), True
    ),
    # host_donate_guest: 1 (host S2 valid -> annotation).
    T.HOST_DONATE_GUEST: Expected(
        "__pkvm_host_donate_guest", (("host", O, NP), ("guest", NP, O)), True
    ),
    # guest_share_host (MEM_SHARE): 0 (host annotation -> valid, guest SW bits only).
    T.GUEST_SHARE_HOST: Expected(
        "__pkvm_guest_share_host", (("guest", O, SO), ("host", NP, SB)), False
    ),
    # guest_unshare_host (MEM_UNSHARE): 1 (host S2 valid -> annotation).
    T.GUEST_UNSHARE_HOST: Expected(
        "__pkvm_guest_unshare_host", (("guest", SO, O), ("host", SB, NP)), True
    ),
    # MEM_RELINQUISH (Android only, section 2): poison, then the guest PTE is zapped
    # (valid -> invalid: 1 TLBI), the page goes back to the host.
    T.GUEST_RELINQUISH: Expected(
        "__pkvm_guest_relinquish_to_host", (("guest", O, NP), ("host", NP, O)), True, True
    ),
    # host_reclaim_page_guest (teardown): 1 (guest S2 unmap) + poison if guest OWNED.
    T.HOST_RECLAIM_PAGE: Expected(
        "__pkvm_host_reclaim_page_guest", (("guest", O, NP), ("host", NP, O)), True, True
    ),
    T.HOST_RECLAIM_SHARED_PAGE: Expected(
        "__pkvm_host_reclaim_page_guest", (("guest", SO, NP), ("host", SB, O)), True, False
    ),
}

COMPONENTS = (HOST, HYP, GUEST)


def component(role: str) -> str:
    return GUEST if role == "guest" else role


def guest_arg(t: Transition) -> str | None:
    return GUEST if any(role == "guest" for role, _, _ in EXPECTED[t].sides) else None


def _reachable() -> dict[tuple[PageState, ...], list[Transition]]:
    """Shortest legal path (by the expected table) to every (host, hyp, guest) triple."""
    start = (O, NP, NP)
    paths: dict[tuple[PageState, ...], list[Transition]] = {start: []}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        for t, exp in EXPECTED.items():
            idx = [COMPONENTS.index(component(r)) for r, _, _ in exp.sides]
            if all(cur[i] == b for i, (_, b, _) in zip(idx, exp.sides, strict=True)):
                nxt = list(cur)
                for i, (_, _, a) in zip(idx, exp.sides, strict=True):
                    nxt[i] = a
                key = tuple(nxt)
                if key not in paths:
                    paths[key] = [*paths[cur], t]
                    queue.append(key)
    return paths


REACHABLE = _reachable()


def test_reachable_set_is_what_pkvm_allows() -> None:
    # Per page, the legal transitions only ever produce these six (host, hyp, guest) views.
    assert set(REACHABLE) == {
        (O, NP, NP),
        (SO, SB, NP),
        (NP, O, NP),
        (SO, NP, SB),
        (NP, NP, O),
        (SB, NP, SO),
    }


def setup_page(own: PageOwnership, pfn: int, want: dict[str, PageState]) -> bool:
    """Put ``pfn`` in the wanted states; return True if done by legal transitions only."""
    for triple, path in sorted(REACHABLE.items(), key=lambda kv: len(kv[1])):
        if all(triple[COMPONENTS.index(c)] == s for c, s in want.items()):
            for t in path:
                own.apply(t, pfn, guest=guest_arg(t), cause="setup")
            return True
    # Unreachable by legal transitions (e.g. host OWNED while the guest also holds the page):
    # forced through the private per-component maps, for the refusal checks only.
    for c, s in want.items():
        own._states[c].assign(pfn, pfn + 1, s)
    return False


def snapshot(own: PageOwnership, first: int, last: int) -> dict[tuple[str, int], PageState]:
    return {(c, p): own.state(c, p) for c in own.components for p in range(first, last)}


def new_ownership(now: list[float]) -> PageOwnership:
    own = PageOwnership(clock=lambda: now[0])
    own.add_guest(GUEST)
    return own


def test_spec_matches_notes() -> None:
    assert set(EXPECTED) == set(Transition)
    for t, exp in EXPECTED.items():
        assert t.spec.kernel_name == exp.kernel_name, t
        assert t.spec.sides == exp.sides, t
        assert t.spec.tlbi is exp.tlbi, t
        assert t.spec.poison is exp.poison, t


def test_initial_states() -> None:
    own = new_ownership([0.0])
    assert own.components == (HOST, HYP, GUEST)
    for p in (0, 1, 0x41000, 1 << 36):
        assert own.state(HOST, p) is O
        assert own.state(HYP, p) is NP
        assert own.state(GUEST, p) is NP
    assert own.history == []
    assert own.tlb_invalidations == 0


CASES = [(t, s1, s2) for t in Transition for s1, s2 in itertools.product(ALL_STATES, repeat=2)]


@pytest.mark.parametrize(
    ("transition", "first_state", "second_state"),
    CASES,
    ids=[f"{t.name}-{a.name}-{b.name}" for t, a, b in CASES],
)
def test_transition_matrix(
    transition: Transition, first_state: PageState, second_state: PageState
) -> None:
    now = [1.0]
    own = new_ownership(now)
    poisoned: list[tuple[int, int]] = []
    own.on_poison = lambda first, n: poisoned.append((first, n))
    exp = EXPECTED[transition]
    (role1, before1, after1), (role2, before2, after2) = exp.sides
    c1, c2 = component(role1), component(role2)
    pfn = 0x40007
    setup_page(own, pfn, {c1: first_state, c2: second_state})
    assert own.state(c1, pfn) is first_state
    assert own.state(c2, pfn) is second_state

    now[0] = 123.5
    poisoned.clear()
    before = snapshot(own, pfn - 2, pfn + 3)
    hist_len = len(own.history)
    tlb = own.tlb_invalidations
    guest = guest_arg(transition)
    legal = first_state is before1 and second_state is before2

    if legal:
        own.check(transition, pfn, guest=guest)  # check() alone changes nothing
        assert snapshot(own, pfn - 2, pfn + 3) == before
        change = own.apply(transition, pfn, guest=guest, cause="matrix")
        after = snapshot(own, pfn - 2, pfn + 3)
        expected_after = dict(before)
        expected_after[(c1, pfn)] = after1
        expected_after[(c2, pfn)] = after2
        assert after == expected_after  # both sides moved, nothing else did
        assert change == OwnershipChange(123.5, transition, pfn, 1, guest, "matrix")
        assert own.history[hist_len:] == [change]
        assert len(own.history) == hist_len + 1
        assert own.tlb_invalidations == tlb + (1 if exp.tlbi else 0)
        assert poisoned == ([(pfn, 1)] if exp.poison else [])
    else:
        # The first side in check order that does not match is the one reported.
        if first_state is not before1:
            bad, want, got = c1, before1, first_state
        else:
            bad, want, got = c2, before2, second_state
        for op in (own.check, own.apply):
            with pytest.raises(OwnershipError) as ei:
                op(transition, pfn, guest=guest)
            err = ei.value
            assert err.transition is transition
            assert err.pfn == pfn
            assert err.component == bad
            assert err.expected is want
            assert err.actual is got
            assert err.errno == "EPERM"
            msg = str(err)
            assert exp.kernel_name in msg
            assert f"{pfn:#x}" in msg
            assert bad in msg
            assert want.value in msg
            assert got.value in msg
        assert snapshot(own, pfn - 2, pfn + 3) == before
        assert len(own.history) == hist_len
        assert own.tlb_invalidations == tlb
        assert poisoned == []


@pytest.mark.parametrize("transition", list(Transition), ids=lambda t: t.name)
def test_every_transition_legal_from_its_before_states(transition: Transition) -> None:
    """Every 'before' pair of the table is reachable by legal transitions alone."""
    own = new_ownership([0.0])
    exp = EXPECTED[transition]
    want = {component(r): b for r, b, _ in exp.sides}
    assert setup_page(own, 3, want)
    own.apply(transition, 3, guest=guest_arg(transition))


# --- multi-page ranges: all or nothing ---------------------------------------------------


def test_multi_page_donation_moves_every_page_one_tlbi() -> None:
    own = new_ownership([0.0])
    change = own.apply(T.HOST_DONATE_GUEST, 10, 5, guest=GUEST)
    assert change.nr_pages == 5 and change.first_pfn == 10
    assert list(own.runs(GUEST, 8, 9)) == [(8, 10, NP), (10, 15, O), (15, 17, NP)]
    assert list(own.runs(HOST, 8, 9)) == [(8, 10, O), (10, 15, NP), (15, 17, O)]
    assert own.tlb_invalidations == 1  # one call, one invalidation in the model


def test_multi_page_first_side_wrong_in_the_middle_changes_nothing() -> None:
    now = [0.0]
    own = new_ownership(now)
    own.apply(T.HOST_SHARE_HYP, 12)  # host SO at pfn 12
    before = snapshot(own, 8, 17)
    hist, tlb = len(own.history), own.tlb_invalidations
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.HOST_DONATE_GUEST, 10, 5, guest=GUEST)
    err = ei.value
    assert (err.pfn, err.component, err.expected, err.actual) == (12, HOST, O, SO)
    assert "0xc" in str(err)
    assert snapshot(own, 8, 17) == before
    assert (len(own.history), own.tlb_invalidations) == (hist, tlb)


def test_multi_page_guest_side_wrong_in_the_middle_changes_nothing() -> None:
    own = new_ownership([0.0])
    own.apply(T.HOST_DONATE_GUEST, 40, 5, guest=GUEST)
    for p in (40, 41, 43, 44):  # 42 stays private
        own.apply(T.GUEST_SHARE_HOST, p, guest=GUEST)
    before = snapshot(own, 38, 47)
    hist, tlb = len(own.history), own.tlb_invalidations
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.GUEST_UNSHARE_HOST, 40, 5, guest=GUEST)
    err = ei.value
    assert (err.pfn, err.component, err.expected, err.actual) == (42, GUEST, SO, O)
    assert snapshot(own, 38, 47) == before
    assert (len(own.history), own.tlb_invalidations) == (hist, tlb)


def test_multi_page_second_side_wrong_in_the_middle_changes_nothing() -> None:
    own = new_ownership([0.0])
    # Host OWNED while hyp holds the page is unreachable legally: forced for this check.
    own._states[HYP].assign(22, 23, SB)
    before = snapshot(own, 18, 27)
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.HOST_DONATE_HYP, 20, 5)
    err = ei.value
    assert (err.pfn, err.component, err.expected, err.actual) == (22, HYP, NP, SB)
    assert snapshot(own, 18, 27) == before
    assert own.history == [] and own.tlb_invalidations == 0


def test_multi_page_reports_first_wrong_page() -> None:
    own = new_ownership([0.0])
    own.apply(T.HOST_DONATE_HYP, 13)
    own.apply(T.HOST_SHARE_HYP, 11)
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.HOST_DONATE_GUEST, 10, 5, guest=GUEST)
    assert (ei.value.pfn, ei.value.actual) == (11, SO)


def test_last_page_of_range_wrong() -> None:
    own = new_ownership([0.0])
    own.apply(T.HOST_DONATE_HYP, 14)
    before = snapshot(own, 9, 16)
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.HOST_DONATE_GUEST, 10, 5, guest=GUEST)
    assert (ei.value.pfn, ei.value.component, ei.value.actual) == (14, HOST, NP)
    assert snapshot(own, 9, 16) == before


# --- argument errors ---------------------------------------------------------------------


GUEST_TRANSITIONS = [t for t in Transition if guest_arg(t)]
BAD_GUESTS = (None, "nosuchvm", HOST, HYP)


def _expect_value_error(own: PageOwnership, transition: Transition, pfn: int) -> None:
    before = snapshot(own, pfn - 1, pfn + 2)
    hist, tlb = len(own.history), own.tlb_invalidations
    for bad in BAD_GUESTS:
        with pytest.raises(ValueError):
            own.apply(transition, pfn, guest=bad)
        with pytest.raises(ValueError):
            own.check(transition, pfn, guest=bad)
    assert snapshot(own, pfn - 1, pfn + 2) == before
    assert (len(own.history), own.tlb_invalidations) == (hist, tlb)


@pytest.mark.parametrize("transition", GUEST_TRANSITIONS, ids=lambda t: t.name)
def test_guest_transitions_need_a_known_guest(transition: Transition) -> None:
    """Host side already in its 'before' state: only the guest name can be wrong."""
    own = new_ownership([0.0])
    host_before = next(b for r, b, _ in EXPECTED[transition].sides if r == "host")
    own._states[HOST].assign(1, 2, host_before)  # forced: no guest to pair it with
    _expect_value_error(own, transition, 1)


@pytest.mark.parametrize("transition", GUEST_TRANSITIONS, ids=lambda t: t.name)
def test_guest_argument_checked_regardless_of_page_state(transition: Transition) -> None:
    """A missing or unknown guest is an argument error whatever the pages' states.

    In pKVM the VM handle is resolved (and rejected) before any page-state check, so a
    bad VM can never come back as -EPERM. Pages here are in the boot state (host OWNED).
    """
    own = new_ownership([0.0])
    _expect_value_error(own, transition, 1)


def test_nr_pages_must_be_positive() -> None:
    own = new_ownership([0.0])
    for n in (0, -1):
        with pytest.raises(ValueError):
            own.apply(T.HOST_DONATE_HYP, 5, n)
    assert own.history == []


def test_unknown_component_and_duplicate_guest() -> None:
    own = new_ownership([0.0])
    with pytest.raises(ValueError):
        own.state("nosuchvm", 0)
    with pytest.raises(ValueError):
        list(own.runs("nosuchvm", 0, 1))
    for name in (GUEST, HOST, HYP):
        with pytest.raises(ValueError):
            own.add_guest(name)


def test_two_guests_are_independent() -> None:
    own = new_ownership([0.0])
    own.add_guest("vm2")
    own.apply(T.HOST_DONATE_GUEST, 5, guest=GUEST)
    assert own.state("vm2", 5) is NP
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.HOST_DONATE_GUEST, 5, guest="vm2")
    assert ei.value.component == HOST
    with pytest.raises(OwnershipError) as ei:
        own.apply(T.GUEST_SHARE_HOST, 5, guest="vm2")
    assert (ei.value.component, ei.value.actual) == ("vm2", NP)


# --- poisoning through a MemorySystem ----------------------------------------------------

HOST_CPU = Initiator("host.kvm", HOST)
GUEST_CPU = Initiator("vm1.vcpu0", GUEST)


def addr(pfn: int) -> int:
    return pfn << PAGE_SHIFT


def protected_memory() -> MemorySystem:
    mem = MemorySystem()
    mem.ownership.add_guest(GUEST)
    return mem


@pytest.mark.parametrize("transition", [T.GUEST_RELINQUISH, T.HOST_RECLAIM_PAGE])
def test_poisoning_transitions_wipe_page(transition: Transition) -> None:
    mem = protected_memory()
    own = mem.ownership
    mem.write(HOST_CPU, addr(5), b"old host data")
    own.apply(T.HOST_DONATE_GUEST, 4, 3, guest=GUEST)  # pfns 4, 5, 6
    for p in (4, 5, 6):
        mem.write(GUEST_CPU, addr(p), b"guest secret %d" % p + b"\xff" * 100)
    mem.write(GUEST_CPU, addr(5) + PAGE_SIZE - 4, b"tail")
    own.apply(transition, 5, guest=GUEST)
    assert own.state(HOST, 5) is O and own.state(GUEST, 5) is NP
    assert mem.read(HOST_CPU, addr(5), PAGE_SIZE) == bytes(PAGE_SIZE)
    # Neighbours keep their contents.
    assert mem.read(GUEST_CPU, addr(4), 14) == b"guest secret 4"
    assert mem.read(GUEST_CPU, addr(6), 14) == b"guest secret 6"


def test_multi_page_reclaim_wipes_every_page() -> None:
    mem = protected_memory()
    own = mem.ownership
    own.apply(T.HOST_DONATE_GUEST, 8, 3, guest=GUEST)
    mem.write(GUEST_CPU, addr(8), b"\x5a" * (3 * PAGE_SIZE))
    own.apply(T.HOST_RECLAIM_PAGE, 8, 3, guest=GUEST)
    assert mem.read(HOST_CPU, addr(8), 3 * PAGE_SIZE) == bytes(3 * PAGE_SIZE)


def test_reclaim_shared_page_is_not_wiped() -> None:
    mem = protected_memory()
    own = mem.ownership
    own.apply(T.HOST_DONATE_GUEST, 7, guest=GUEST)
    own.apply(T.GUEST_SHARE_HOST, 7, guest=GUEST)
    mem.write(GUEST_CPU, addr(7), b"its tables")
    own.apply(T.HOST_RECLAIM_SHARED_PAGE, 7, guest=GUEST)
    assert own.state(HOST, 7) is O and own.state(GUEST, 7) is NP
    assert mem.read(HOST_CPU, addr(7), 10) == b"its tables"


@pytest.mark.parametrize("transition", [t for t in Transition if not t.spec.poison])
def test_non_poisoning_transitions_keep_bytes(transition: Transition) -> None:
    mem = protected_memory()
    own = mem.ownership
    pfn = 9
    mem._pages.write(addr(pfn), b"payload")  # raw store, no access check
    exp = EXPECTED[transition]
    setup_page(own, pfn, {component(r): b for r, b, _ in exp.sides})
    mem._pages.write(addr(pfn), b"payload")
    own.apply(transition, pfn, guest=guest_arg(transition))
    assert mem._pages.read(addr(pfn), 7) == b"payload"


# --- a protected VM's life --------------------------------------------------------------


def test_protected_vm_life_cycle() -> None:
    now = [0.0]
    mem = MemorySystem(clock=lambda: now[0])
    own = mem.ownership
    own.add_guest(GUEST)
    ram = range(0x40000, 0x40008)  # 8 pages of guest RAM
    shared = 0x40003

    # 1. The guest faults its RAM in: the host donates one page per fault.
    for i, p in enumerate(ram):
        now[0] = float(i)
        own.apply(T.HOST_DONATE_GUEST, p, guest=GUEST, cause="stage-2 fault")
    assert own.tlb_invalidations == 8
    assert list(own.runs(GUEST, ram.start, len(ram))) == [(ram.start, ram.stop, O)]
    assert list(own.runs(HOST, ram.start, len(ram))) == [(ram.start, ram.stop, NP)]
    mem.write(GUEST_CPU, addr(ram.start), b"private")
    with pytest.raises(Exception, match="nopage"):
        mem.read(HOST_CPU, addr(shared), 8)

    # 2. MEM_SHARE of one page (set_memory_decrypted): no TLBI.
    now[0] = 10.0
    own.apply(T.GUEST_SHARE_HOST, shared, guest=GUEST, cause="MEM_SHARE")
    assert own.state(GUEST, shared) is SO
    assert own.state(HOST, shared) is SB
    assert own.state(HOST, shared - 1) is NP
    assert own.tlb_invalidations == 8
    mem.write(HOST_CPU, addr(shared), b"host writes the shared page")
    assert mem.read(GUEST_CPU, addr(shared), 27) == b"host writes the shared page"

    # 3. MEM_UNSHARE: the host loses it again, one TLBI.
    now[0] = 11.0
    own.apply(T.GUEST_UNSHARE_HOST, shared, guest=GUEST, cause="MEM_UNSHARE")
    assert own.state(GUEST, shared) is O
    assert own.state(HOST, shared) is NP
    assert own.tlb_invalidations == 9
    with pytest.raises(Exception, match="nopage"):
        mem.read(HOST_CPU, addr(shared), 8)

    # Share it once more and leave it shared at teardown.
    own.apply(T.GUEST_SHARE_HOST, shared, guest=GUEST)
    assert own.tlb_invalidations == 9

    # 4. Teardown: every page reclaimed, owned ones poisoned, one TLBI each.
    now[0] = 20.0
    for p in ram:
        t = T.HOST_RECLAIM_SHARED_PAGE if p == shared else T.HOST_RECLAIM_PAGE
        own.apply(t, p, guest=GUEST, cause="teardown")
    assert own.tlb_invalidations == 17
    assert list(own.runs(HOST, ram.start, len(ram))) == [(ram.start, ram.stop, O)]
    assert list(own.runs(GUEST, ram.start, len(ram))) == [(ram.start, ram.stop, NP)]
    assert mem.read(HOST_CPU, addr(ram.start), 7) == bytes(7)  # private page poisoned
    assert mem.read(HOST_CPU, addr(shared), 27) == b"host writes the shared page"

    kinds = [c.transition for c in own.history]
    assert kinds == (
        [T.HOST_DONATE_GUEST] * 8
        + [T.GUEST_SHARE_HOST, T.GUEST_UNSHARE_HOST, T.GUEST_SHARE_HOST]
        + [T.HOST_RECLAIM_SHARED_PAGE if p == shared else T.HOST_RECLAIM_PAGE for p in ram]
    )
    assert [c.time for c in own.history[:8]] == [float(i) for i in range(8)]
    assert own.history[8] == OwnershipChange(
        10.0, T.GUEST_SHARE_HOST, shared, 1, GUEST, "MEM_SHARE"
    )
    assert own.history[-1].cause == "teardown" and own.history[-1].time == 20.0


def test_np_guest_and_hyp_share_cycle_counts() -> None:
    own = new_ownership([0.0])
    own.apply(T.HOST_SHARE_HYP, 1)
    own.apply(T.HOST_UNSHARE_HYP, 1)
    assert own.tlb_invalidations == 0  # v7.1: hyp_page only
    own.apply(T.HOST_SHARE_GUEST, 2, guest=GUEST)
    assert own.tlb_invalidations == 0
    own.apply(T.HOST_UNSHARE_GUEST, 2, guest=GUEST)
    assert own.tlb_invalidations == 1
    own.apply(T.HOST_DONATE_HYP, 3)
    own.apply(T.HYP_DONATE_HOST, 3)
    assert own.tlb_invalidations == 3
    assert all(own.state(HOST, p) is O for p in (1, 2, 3))
    assert all(own.state(c, p) is NP for c in (HYP, GUEST) for p in (1, 2, 3))
