"""The EL2 lowvisor (pKVM hyp): the only actor that changes page ownership.

It handles the guest's hypercalls (MEM_SHARE, MEM_UNSHARE, and an IOMMU map call for the
IOMMU-gated proposal), the host's hypercalls, and sees every guest MMIO trap before the
host does, which is where a proposal that snoops the ITS command queue hooks in.
EL2 reads guest memory through the guest's own stage-2 (pKVM maps the page in its
fixmap), so its reads pass the same check with the guest's view.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.memory.access import Initiator, IOMMUDomain, Perm
from sim.memory.ownership import OwnershipChange, OwnershipError, PageState, Transition
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from sim.world import Machine, World

ITS_DMA_MASTER = "its-hw"


def share_causes(history: list[OwnershipChange], pfns: set[int]) -> dict[int, str]:
    """The cause of the share in effect on each of ``pfns``: the latest guest-to-host
    share that covered it (each page in ``pfns`` must be shared now)."""
    causes: dict[int, str] = {}
    for change in reversed(history):
        if change.transition is Transition.GUEST_SHARE_HOST:
            for pfn in range(change.first_pfn, change.first_pfn + change.nr_pages):
                if pfn in pfns:
                    causes.setdefault(pfn, change.cause)
            if len(causes) == len(pfns):
                break
    return causes


DRIVER, PROPOSAL = "driver", "proposal"


def part_of(cause: str) -> str:
    """Who a share, unshare or hypercall is for: the guest's ITS driver sharing its own
    tables ("driver:" causes, and their re-share on the destination), or the proposal
    (everything else: an enlightened guest's ITT shares, EL2's snooped shares, host
    claims, IOMMU maps)."""
    inner = cause.split(", ", 1)[1] if cause.startswith("migration: as on ") else cause
    return DRIVER if inner.startswith("driver:") else PROPOSAL


class Lowvisor:
    def __init__(self, world: World, machine: Machine) -> None:
        from sim.world import GUEST

        self.world = world
        self.machine = machine
        self.name = f"{machine.name}.lowvisor"
        self.guest = GUEST
        self.fixmap = Initiator(self.name, GUEST)
        self.mediate_physical_its = world.scenario.lowvisor.mediate_physical_its
        self.refusals: list[str] = []  # host requests EL2 turned down, for the audit
        self.hypercall_log: list[tuple[float, str]] = []  # (time, call), for run --trace
        from sim.proposals.base import hooks_of

        self._hooks = hooks_of(world.proposal)  # the trap hooks that can do something

    # ---- state changes ----------------------------------------------------------------

    def _apply(self, transition: Transition, pfn: int, nr: int, cause: str) -> Generator:
        ownership = self.machine.memory.ownership
        before = ownership.tlb_invalidations
        ownership.apply(transition, pfn, nr, guest=self.guest, cause=cause)
        tlbis = ownership.tlb_invalidations - before
        costs = self.world.costs
        yield self.world.charge(
            self.name, nr * costs.s2_update_us + tlbis * costs.tlbi_us, part_of(cause)
        )

    def create_vm(self, protected: bool) -> None:
        """VM creation: a protected guest's RAM is donated, a normal one's shared in."""
        from sim.world import RAM_BASE

        transition = Transition.HOST_DONATE_GUEST if protected else Transition.HOST_SHARE_GUEST
        if protected and self.world.proposal.its_behind_iommu:
            self._its_domain()  # the ITS sits behind an IOMMU from the start: deny all
        self.machine.memory.ownership.apply(
            transition,
            RAM_BASE >> PAGE_SHIFT,
            self.world.ram_size >> PAGE_SHIFT,
            guest=self.guest,
            cause="VM creation",
        )

    def teardown_vm(self) -> None:
        """The VM left this machine: reclaim its pages (pKVM poisons the private ones).

        ``__pkvm_reclaim_dying_guest_page`` (pkvm.c) calls
        ``__pkvm_host_reclaim_page_guest`` (mem_protect.c), which runs
        ``hyp_poison_page()`` only on a page the guest owned (``PKVM_PAGE_OWNED``); a page
        the guest had shared (``PKVM_PAGE_SHARED_OWNED``) goes back to the host as it is.
        So the guest's bytes on shared pages stay (labels kept: their secrets remain
        exposed, and host reads of them are reads); poisoned pages hold nothing. A normal
        VM's pages simply go back to the host, contents and all.
        """
        from sim.world import RAM_BASE

        ownership = self.machine.memory.ownership
        labels = self.machine.memory.labels
        first = RAM_BASE >> PAGE_SHIFT
        runs = list(ownership.runs(self.guest, first, self.world.ram_size >> PAGE_SHIFT))
        for start, stop, state in runs:
            transition = {
                PageState.OWNED: Transition.HOST_RECLAIM_PAGE,
                PageState.SHARED_OWNED: Transition.HOST_RECLAIM_SHARED_PAGE,
                PageState.SHARED_BORROWED: Transition.HOST_UNSHARE_GUEST,
            }.get(state)
            if transition is None:
                continue
            if transition.spec.poison:
                labels.clear(start << PAGE_SHIFT, (stop - start) << PAGE_SHIFT)
            ownership.apply(transition, start, stop - start, guest=self.guest, cause="teardown")

    def _hypercall(self, call: str, part: str) -> None:
        """Count a hypercall EL2 takes (the ledger, booked to the driver or the proposal)
        and log when (the trace)."""
        self.world.ledger.hypercalls[call] += 1
        self.world.ledger.hypercalls_by_part[part] += 1
        self.hypercall_log.append((self.world.env.now, call))

    def guest_state(self, pfn: int) -> PageState:
        return self.machine.memory.ownership.state(self.guest, pfn)

    # ---- guest hypercalls -----------------------------------------------------------------

    def mem_share(self, pfn: int, cause: str) -> Generator[object, object, bool]:
        """Guest HVC MEM_SHARE (function 3): one page, guest-owned to shared with the host."""
        return (yield from self._guest_hvc("MEM_SHARE", Transition.GUEST_SHARE_HOST, pfn, cause))

    def mem_unshare(self, pfn: int, cause: str) -> Generator[object, object, bool]:
        """Guest HVC MEM_UNSHARE (function 4)."""
        return (
            yield from self._guest_hvc("MEM_UNSHARE", Transition.GUEST_UNSHARE_HOST, pfn, cause)
        )

    def _guest_hvc(self, call: str, transition: Transition, pfn: int, cause: str) -> Generator:
        part = part_of(cause)
        self._hypercall(f"guest {call}", part)
        yield self.world.charge(self.name, self.world.costs.guest_hvc_us, part)
        try:
            yield from self._apply(transition, pfn, 1, cause)
        except OwnershipError:
            return False  # SMCCC_RET_INVALID_PARAMETER to the guest
        return True

    def _its_domain(self) -> IOMMUDomain:
        return self.machine.memory.iommu.setdefault(self._its_dma_name(), IOMMUDomain())

    def iommu_map(self, pfn: int, cause: str, guest: bool = True) -> Generator:
        """Let the ITS reach one page by DMA: a guest HVC, or EL2 itself on migration."""
        costs = self.world.costs
        part = part_of(cause)
        if guest:
            self._hypercall("guest IOMMU_MAP", part)
        yield self.world.charge(
            self.name, costs.iommu_map_us + (costs.guest_hvc_us if guest else 0.0), part
        )
        self._its_domain().map(pfn << PAGE_SHIFT, PAGE_SIZE, Perm.RW)
        self.world.ledger.iommu_maps += 1

    def iommu_unmap(self, pfn: int, cause: str) -> Generator:
        """Guest HVC: take a page out of the ITS's domain; the IOTLB is invalidated."""
        costs = self.world.costs
        part = part_of(cause)
        self._hypercall("guest IOMMU_UNMAP", part)
        self._its_domain().unmap(pfn << PAGE_SHIFT, PAGE_SIZE)
        self.world.ledger.iotlb_invalidations += 1
        yield self.world.charge(
            self.name, costs.guest_hvc_us + costs.iommu_map_us + costs.tlbi_us, part
        )

    def its_dma_mapped(self, pfn: int) -> bool:
        return self._its_domain().allows(pfn, write=False)

    def its_dma_pages(self) -> list[int]:
        return self._its_domain().mapped_pfns()

    def _its_dma_name(self) -> str:
        return f"{self.machine.name}.{ITS_DMA_MASTER}"

    def its_dma_initiator(self) -> Initiator:
        from sim.memory.ownership import HOST

        return Initiator(self._its_dma_name(), HOST, dma=True)

    # ---- EL2 acting on what it parsed itself --------------------------------------------

    def el2_share(self, pfn: int, cause: str) -> Generator:
        yield from self._apply(Transition.GUEST_SHARE_HOST, pfn, 1, cause)

    def el2_unshare(self, pfn: int, cause: str) -> Generator:
        yield from self._apply(Transition.GUEST_UNSHARE_HOST, pfn, 1, cause)

    # ---- host hypercalls -------------------------------------------------------------------

    def host_share_guest_page(self, pfn: int, cause: str) -> Generator[object, object, bool]:
        """Host HVC: share a page of the guest's with the host, on the host's word alone.

        Only a proposal that takes host claims has this hypercall; elsewhere EL2 answers
        -ENOSYS and nothing changes.
        """
        return (yield from self._host_hvc("share", Transition.GUEST_SHARE_HOST, pfn, cause))

    def host_unshare_guest_page(self, pfn: int, cause: str) -> Generator[object, object, bool]:
        return (yield from self._host_hvc("unshare", Transition.GUEST_UNSHARE_HOST, pfn, cause))

    def _host_hvc(self, call: str, transition: Transition, pfn: int, cause: str) -> Generator:
        part = part_of(cause)
        self._hypercall(f"host {call.upper()}_GUEST_PAGE", part)
        yield self.world.charge(self.name, self.world.costs.host_hvc_us, part)
        if not self.world.proposal.host_claims:
            self.refusals.append(f"{self.name}: no host {call} hypercall (-ENOSYS)")
            return False
        try:
            yield from self._apply(transition, pfn, 1, cause)
        except OwnershipError:
            return False
        return True

    # ---- the MMIO trap path -----------------------------------------------------------

    def guest_mmio_trap(self, offset: int, val: int) -> Generator:
        """A guest ITS register write: EL2 first (proposal hook), then the host's vITS."""
        yield self.world.env.timeout(self.world.costs.el2_trap_entry_us)
        proposal = self.world.proposal
        hooks = self._hooks
        forwarded = None
        if "before_mmio" in hooks:
            forwarded = yield from proposal.before_mmio(self.machine, offset, val)
        yield from self.machine.host.handle_mmio(offset, val if forwarded is None else forwarded)
        if "after_mmio" in hooks:
            yield from proposal.after_mmio(self.machine, offset, val)

    def read_guest(self, gpa: int, length: int) -> bytes:
        """EL2 reads guest memory through the guest's stage-2 (fixmap)."""
        return self.machine.memory.read(self.fixmap, gpa, length)

    # ---- migration: guest memory leaves and arrives ---------------------------------------

    def export_private_page(self, pfn: int) -> Generator:
        """Encrypt one guest-private page for the migration stream (the host gets
        ciphertext only): EL2 reads it through the guest's stage-2 and seals it."""
        self.read_guest(pfn << PAGE_SHIFT, PAGE_SIZE)
        costs = self.world.costs
        yield self.world.charge(self.name, PAGE_SIZE / (costs.el2_seal_gbps * 1e3))

    def import_guest(self, src: Machine) -> Generator[object, object, int]:
        """Recreate the guest's memory: same bytes, same labels, same shared pages.

        The RAM contents move as the platform migrates RAM (outside this model's scope,
        read and written by EL2 on both sides); the guest's page attributes must match,
        so every page shared on the source is shared again here, with the cause it was
        shared for there (``migration: as on <source>, <cause>``): a page the host
        obtained on the source is still the host's doing here. Returns the number of
        pages shared.
        """
        from sim.world import RAM_BASE

        first = RAM_BASE >> PAGE_SHIFT
        end = first + (self.world.ram_size >> PAGE_SHIFT)
        src_own = src.memory.ownership
        pfns = [
            pfn
            for start, stop, state in src_own.runs(self.guest, first, end - first)
            if state is PageState.SHARED_OWNED
            for pfn in range(start, stop)
        ]
        causes = share_causes(src_own.history, set(pfns))
        # What the pages hold and their bytes first (RAM was pre-copied), then the
        # page attributes.
        self.machine.memory.labels.copy_from(src.memory.labels, RAM_BASE, self.world.ram_size)
        for pfn in src.memory.resident_pfns(first, end):
            addr = pfn << PAGE_SHIFT
            data = src.memory.read(src.lowvisor.fixmap, addr, PAGE_SIZE)
            self.machine.memory.write(self.fixmap, addr, data)
        for pfn in pfns:
            cause = f"migration: as on {src.name}, {causes[pfn]}"
            yield from self._apply(Transition.GUEST_SHARE_HOST, pfn, 1, cause)
        shared = len(pfns)
        return shared
