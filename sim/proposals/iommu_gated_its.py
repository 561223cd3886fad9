"""iommu-gated-its: the ITS sits behind an IOMMU, as if the GIC had been designed so.

The guest maps its ITS memory (tables, queue, LPI tables, ITTs) into an IOMMU domain
for the ITS instead of sharing it with the host; KVM's vITS accesses become the ITS's
DMA, checked page by page by that domain, and the host CPU never needs guest memory.
The destination's EL2 rebuilds the domain from the migrated EL2 state.
KVM's writes while it runs the queue (the ITE of DISCARD, the DTE of MAPD V=0) are ITS
DMA to pages the domain maps for as long as the guest's ITS uses them.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.memory.labels import LabelKind
from sim.memory.physmem import PAGE_SHIFT, PAGE_SIZE
from sim.proposals.base import Payload, Proposal, kvm_restore_tables

if TYPE_CHECKING:
    from sim.actors.guest import Guest
    from sim.memory.access import Initiator
    from sim.world import Machine, World


class IOMMUGatedITS(Proposal):
    name = "iommu-gated-its"
    summary = "the ITS reaches guest memory only through an IOMMU domain the guest sets up"
    el2_loc_cost = "el2_loc_iommu_gated_its"
    el2_lines_source = "an EL2 SMMUv3 driver, after Android's pKVM SMMU driver (sim/costs.py)"
    guest_shares_tables = False
    its_behind_iommu = True

    def its_initiator(self, machine: Machine) -> Initiator:
        return machine.lowvisor.its_dma_initiator()

    def _map(self, guest: Guest, addr: int, size: int) -> Generator:
        lowvisor = guest.machine.lowvisor
        for pfn in range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1):
            if not lowvisor.its_dma_mapped(pfn):
                yield from lowvisor.iommu_map(pfn, "guest maps ITS memory for the ITS")

    def after_probe(self, guest: Guest) -> Generator:
        """Map the tables the probe allocated, each over all it spans (L2 device tables
        come later, through ``on_table_alloc``)."""
        for addr, size in [
            (guest.prop, 1 << 16),
            *[(p, 1 << 16) for p in guest.pend],
            (guest.device_table, guest.device_table_size),  # flat: 512 KiB; 2-level: L1
            (guest.collection_table, 1 << 16),
            (guest.cmdq, guest.cmdq_size),
        ]:
            yield from self._map(guest, addr, size)

    def on_table_alloc(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from self._map(guest, addr, size)

    def on_itt_alloc(self, guest: Guest, addr: int, size: int) -> Generator:
        yield from self._map(guest, addr, size)

    def on_itt_free(self, guest: Guest, addr: int, size: int) -> Generator:
        labels = guest.machine.memory.labels
        lowvisor = guest.machine.lowvisor
        for pfn in range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1):
            page = pfn << PAGE_SHIFT
            others = [
                s
                for s, e, label in labels.runs(page, PAGE_SIZE)
                if label.kind is LabelKind.ITT and not (addr <= s and e <= addr + size)
            ]
            if not others:
                yield from lowvisor.iommu_unmap(pfn, "guest unmaps a freed ITT page")

    def restore(self, world: World, payload: Payload) -> Generator:
        # (A live update keeps the machine's EL2 and its ITS domain: nothing to rebuild.)
        for pfn in world.src.lowvisor.its_dma_pages() if world.dst is not world.src else ():
            yield from world.dst.lowvisor.iommu_map(pfn, "EL2 rebuilds the ITS domain", guest=False)
        yield from kvm_restore_tables(world, world.dst, payload)
