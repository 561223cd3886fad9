"""pKVM page ownership: a page state per component, and the transitions EL2 allows.

Mirrors ``arch/arm64/kvm/hyp/nvhe/mem_protect.c``: every page has, in each component's
view (host, hyp, each guest), one of the states of ``enum pkvm_page_state``. A
transition checks the current state on *both* sides for every page in the range first and
changes nothing if any check fails (``-EPERM``); otherwise it moves every page at once.

Simplifications (documented in the README): a guest's IPA equals the physical address
(the host's stage-2 is an identity map in pKVM; we use the same for guests);
``host_share_guest_count`` is not modelled. The ``struct hyp_page`` refcount that
``hyp_pin_shared_mem`` raises is (:meth:`PageOwnership.pin_shared`): a pinned page
cannot leave the share (``-EBUSY``). ``apply`` over a range is all or nothing, as each
mainline transition is over its own range; mainline guest hypercalls take one page each,
so callers loop per page.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

from sim.memory.intervals import IntervalMap

HOST = "host"
HYP = "hyp"


class PageState(enum.Enum):
    """``enum pkvm_page_state`` (arch/arm64/kvm/hyp/include/nvhe/memory.h)."""

    OWNED = "owned"  # PKVM_PAGE_OWNED
    SHARED_OWNED = "shared-owned"  # PKVM_PAGE_SHARED_OWNED
    SHARED_BORROWED = "shared-borrowed"  # PKVM_PAGE_SHARED_BORROWED
    NOPAGE = "nopage"  # PKVM_NOPAGE

    @property
    def accessible(self) -> bool:
        return self is not PageState.NOPAGE


O, SO, SB, NP = (
    PageState.OWNED,
    PageState.SHARED_OWNED,
    PageState.SHARED_BORROWED,
    PageState.NOPAGE,
)


@dataclass(frozen=True)
class TransitionSpec:
    """One ownership transition: required and resulting state for each side."""

    kernel_name: str
    # (role, state before, state after); role is "host", "hyp" or "guest".
    sides: tuple[tuple[str, PageState, PageState], ...]
    # A valid stage-2 (or hyp stage-1) leaf becomes invalid: EL2 invalidates the TLB.
    tlbi: bool
    # The page contents are wiped before the new owner can see them.
    poison: bool = False
    # Refused with -EBUSY while a page is pinned (``__hyp_check_page_count_range``).
    refcount_check: bool = False


class Transition(enum.Enum):
    """The transitions the model's lowvisor can perform, named after mem_protect.c.

    ``tlbi`` follows mainline v7.1: a TLB invalidation is needed when a valid leaf entry
    becomes invalid (unmap or donation annotation); invalid-to-valid and software-bit-only
    changes (guest MEM_SHARE) need none. Host-hyp shares only update ``struct hyp_page``.
    """

    HOST_SHARE_HYP = TransitionSpec(
        "__pkvm_host_share_hyp", (("host", O, SO), ("hyp", NP, SB)), tlbi=False
    )
    HOST_UNSHARE_HYP = TransitionSpec(
        "__pkvm_host_unshare_hyp",
        (("host", SO, O), ("hyp", SB, NP)),
        tlbi=False,
        refcount_check=True,
    )
    HOST_DONATE_HYP = TransitionSpec(
        "__pkvm_host_donate_hyp", (("host", O, NP), ("hyp", NP, O)), tlbi=True
    )
    HYP_DONATE_HOST = TransitionSpec(
        "__pkvm_hyp_donate_host", (("hyp", O, NP), ("host", NP, O)), tlbi=True, refcount_check=True
    )
    # A non-protected guest's memory stays the host's, shared into the guest.
    HOST_SHARE_GUEST = TransitionSpec(
        "__pkvm_host_share_guest", (("host", O, SO), ("guest", NP, SB)), tlbi=False
    )
    HOST_UNSHARE_GUEST = TransitionSpec(
        "__pkvm_host_unshare_guest", (("host", SO, O), ("guest", SB, NP)), tlbi=True
    )
    # A protected guest faults memory in: the host loses it.
    HOST_DONATE_GUEST = TransitionSpec(
        "__pkvm_host_donate_guest", (("host", O, NP), ("guest", NP, O)), tlbi=True
    )
    # Guest hypercalls MEM_SHARE (3) and MEM_UNSHARE (4).
    GUEST_SHARE_HOST = TransitionSpec(
        "__pkvm_guest_share_host", (("guest", O, SO), ("host", NP, SB)), tlbi=False
    )
    # refcount_check: the model's extension for a guest page EL2 pinned (share-cmdq-shadow);
    # mainline pins only host pages shared with the hyp, so no mainline path trips it here.
    GUEST_UNSHARE_HOST = TransitionSpec(
        "__pkvm_guest_unshare_host",
        (("guest", SO, O), ("host", SB, NP)),
        tlbi=True,
        refcount_check=True,
    )
    # MEM_RELINQUISH (9): Android's common kernel only; the page is poisoned first.
    GUEST_RELINQUISH = TransitionSpec(
        "__pkvm_guest_relinquish_to_host",
        (("guest", O, NP), ("host", NP, O)),
        tlbi=True,
        poison=True,
    )
    # Teardown: the host takes back a dying guest's pages; owned ones are poisoned.
    HOST_RECLAIM_PAGE = TransitionSpec(
        "__pkvm_host_reclaim_page_guest",
        (("guest", O, NP), ("host", NP, O)),
        tlbi=True,
        poison=True,
    )
    HOST_RECLAIM_SHARED_PAGE = TransitionSpec(
        "__pkvm_host_reclaim_page_guest", (("guest", SO, NP), ("host", SB, O)), tlbi=True
    )

    @property
    def spec(self) -> TransitionSpec:
        return self._value_  # .value, without the enum descriptor (a hot path)


class OwnershipError(Exception):
    """A refused transition (pKVM returns -EPERM and changes nothing)."""

    errno = "EPERM"

    def __init__(
        self,
        transition: Transition,
        pfn: int,
        component: str,
        expected: PageState,
        actual: PageState,
    ) -> None:
        # args are the constructor's, so the error survives being re-raised by SimPy.
        super().__init__(transition, pfn, component, expected, actual)
        self.transition = transition
        self.pfn = pfn
        self.component = component
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return (
            f"{self.transition.spec.kernel_name}: page {self.pfn:#x} is {self.actual.value}"
            f" for {self.component}, needs {self.expected.value} (-EPERM)"
        )


class PagePinned(OwnershipError):
    """A transition refused because a page is pinned (``__hyp_check_page_count_range``)."""

    errno = "EBUSY"

    def __init__(self, transition: Transition, pfn: int, count: int) -> None:
        Exception.__init__(self, transition, pfn, count)
        self.transition = transition
        self.pfn = pfn
        self.count = count
        self.component = HYP
        self.expected = self.actual = PageState.SHARED_BORROWED

    def __str__(self) -> str:
        return (
            f"{self.transition.spec.kernel_name}: page {self.pfn:#x} is pinned"
            f" (hyp_page refcount {self.count}) (-EBUSY)"
        )


class OwnershipChange(NamedTuple):
    """One completed transition, kept for the audit (a tuple: one is made per change)."""

    time: float
    transition: Transition
    first_pfn: int
    nr_pages: int
    guest: str | None
    cause: str


class PageOwnership:
    """Per-component page states for one machine, and the only code that changes them.

    The host starts owning every page (as at pKVM boot, before the hyp and guests take
    theirs); every other component starts with no page.
    """

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self._clock = clock
        self._states: dict[str, IntervalMap[PageState]] = {
            HOST: IntervalMap(PageState.OWNED),
            HYP: IntervalMap(PageState.NOPAGE),
        }
        self.history: list[OwnershipChange] = []
        self._resolved_sides: dict[tuple[str, str | None], list] = {}  # _resolved()'s
        self.pins: dict[int, int] = {}  # pfn -> struct hyp_page refcount (pinned shares)
        self.tlb_invalidations = 0
        self.on_poison: Callable[[int, int], None] | None = None
        # Called with (first_pfn, nr_pages, done) before and after each transition.
        self.watchers: list[Callable[[int, int, bool], None]] = []

    @property
    def views(self) -> Mapping[str, IntervalMap[PageState]]:
        """Each component's page states by pfn (read only: change them with ``apply``)."""
        return MappingProxyType(self._states)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self._states)

    def add_guest(self, name: str) -> None:
        if name in self._states:
            raise ValueError(f"component {name!r} already exists")
        self._states[name] = IntervalMap(PageState.NOPAGE)

    def state(self, component: str, pfn: int) -> PageState:
        return self._view(component)[pfn]

    def runs(self, component: str, first_pfn: int, nr_pages: int):
        """``(first, end, state)`` runs of one component's view over a pfn range."""
        return self._view(component).runs(first_pfn, first_pfn + nr_pages)

    def _view(self, component: str) -> IntervalMap[PageState]:
        try:
            return self._states[component]
        except KeyError:
            raise ValueError(f"unknown component {component!r}") from None

    def _side(self, role: str, guest: str | None) -> str:
        if role != "guest":
            return role
        if guest is None or guest in (HOST, HYP):
            raise ValueError(f"transition needs a guest name, got {guest!r}")
        self._view(guest)
        return guest

    def _resolved(
        self, transition: Transition, guest: str | None
    ) -> list[tuple[str, IntervalMap[PageState], PageState, PageState]]:
        """``(component, its view, state before, state after)`` for each side of
        ``transition`` ("guest" resolved to ``guest``), worked out once per pair."""
        key = (transition._name_, guest)  # (an Enum member hashes in Python; its name in C)
        sides = self._resolved_sides.get(key)
        if sides is None:
            sides = []
            for role, before, after in transition.spec.sides:
                component = self._side(role, guest)
                sides.append((component, self._states[component], before, after))
            self._resolved_sides[key] = sides
        return sides

    def check(
        self, transition: Transition, first_pfn: int, nr_pages: int = 1, guest: str | None = None
    ) -> None:
        """Raise :class:`OwnershipError` unless ``transition`` is legal on every page."""
        if nr_pages < 1:
            raise ValueError("nr_pages must be >= 1")
        for component, view, before, _after in self._resolved(transition, guest):
            if nr_pages == 1:  # (the common case: one run, one lookup)
                state = view[first_pfn]
                if state is not before:
                    raise OwnershipError(transition, first_pfn, component, before, state)
                continue
            for start, _end, state in view.run_list(first_pfn, first_pfn + nr_pages):
                if state is not before:
                    raise OwnershipError(transition, start, component, before, state)
        if transition.spec.refcount_check and self.pins:
            for pfn in range(first_pfn, first_pfn + nr_pages):
                if self.pins.get(pfn):
                    raise PagePinned(transition, pfn, self.pins[pfn])

    def pin_shared(self, first_pfn: int, nr_pages: int, owner: str, borrower: str) -> None:
        """``hyp_pin_shared_mem``: every page must be ``owner`` shared-owned and
        ``borrower`` shared-borrowed (else -EPERM, nothing pinned); then each page's
        refcount goes up by one. Mainline pins host pages shared with the hyp
        (``owner="host", borrower="hyp"``); share-cmdq-shadow pins guest pages shared
        with the host the same way."""
        for component, want in (
            (owner, PageState.SHARED_OWNED),
            (borrower, PageState.SHARED_BORROWED),
        ):
            for start, _end, state in self.runs(component, first_pfn, nr_pages):
                if state is not want:
                    raise OwnershipError(Transition.HOST_SHARE_HYP, start, component, want, state)
        for pfn in range(first_pfn, first_pfn + nr_pages):
            self.pins[pfn] = self.pins.get(pfn, 0) + 1

    def unpin_shared(self, first_pfn: int, nr_pages: int) -> None:
        """``hyp_unpin_shared_mem``: each page's refcount down by one (BUG_ON at zero)."""
        for pfn in range(first_pfn, first_pfn + nr_pages):
            count = self.pins.get(pfn, 0)
            if count == 0:
                raise ValueError(f"hyp_page_ref_dec: page {pfn:#x} is not pinned")
            if count == 1:
                del self.pins[pfn]
            else:
                self.pins[pfn] = count - 1

    def apply(
        self,
        transition: Transition,
        first_pfn: int,
        nr_pages: int = 1,
        guest: str | None = None,
        cause: str = "",
    ) -> OwnershipChange:
        """Perform ``transition`` on ``nr_pages`` pages from ``first_pfn``, all or nothing."""
        self.check(transition, first_pfn, nr_pages, guest)
        spec = transition.spec
        for watch in self.watchers:
            watch(first_pfn, nr_pages, False)
        for _component, view, _before, after in self._resolved(transition, guest):
            view.assign(first_pfn, first_pfn + nr_pages, after)
        if spec.tlbi:
            self.tlb_invalidations += 1
        if spec.poison and self.on_poison is not None:
            self.on_poison(first_pfn, nr_pages)
        change = OwnershipChange(self._clock(), transition, first_pfn, nr_pages, guest, cause)
        self.history.append(change)
        for watch in self.watchers:
            watch(first_pfn, nr_pages, True)
        return change

    def last_change(self, pfn: int) -> OwnershipChange | None:
        """The latest transition that covered ``pfn``."""
        for change in reversed(self.history):
            if change.first_pfn <= pfn < change.first_pfn + change.nr_pages:
                return change
        return None
