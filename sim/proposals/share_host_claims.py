"""share-host-claims: the host names the pages holding the ITS tables; EL2 shares them.

At save time the host asks the lowvisor to share every page its vITS state says holds a
table entry (device table slots, the collection table, each ITT) and that it cannot yet
reach; the lowvisor has nothing to check the claim against. The same pages are claimed
on the destination before RESTORE_TABLES, and unshared after.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.tables import CTE_ESZ, DTE_ESZ, ITE_ESZ
from sim.memory.ownership import HOST
from sim.memory.physmem import PAGE_SHIFT
from sim.proposals.base import Payload, Proposal, kvm_restore_tables, kvm_save_tables

if TYPE_CHECKING:
    from sim.its.vits import VirtualITS
    from sim.world import Machine, World


def table_pages(its: VirtualITS) -> list[int]:
    """Pages KVM will touch to save this vITS, as the host computes them."""
    spans: list[tuple[int, int]] = []
    for device in its.devices.values():
        gpa = its.check_id(its.baser_device_table, device.device_id)
        if gpa is not None:
            spans.append((gpa, DTE_ESZ))
        spans.append((device.itt_addr, (1 << device.num_eventid_bits) * ITE_ESZ))
    if its.baser_device_table & r.GITS_BASER_INDIRECT:
        spans.append((its.device_table_gpa, r.SZ_64K))
    spans.append((its.collection_table_gpa, (len(its.collections) + 1) * CTE_ESZ))
    pages = set()
    for addr, size in spans:
        pages.update(range(addr >> PAGE_SHIFT, ((addr + size - 1) >> PAGE_SHIFT) + 1))
    return sorted(pages)


class ShareHostClaims(Proposal):
    name = "share-host-claims"
    summary = "the host names the table pages, EL2 shares them on its word"
    el2_loc_cost = "el2_loc_share_host_claims"
    host_claims = True

    def _claim(self, machine: Machine, pages: list[int]) -> Generator[object, object, list]:
        claimed = []
        ownership = machine.memory.ownership
        for pfn in pages:
            if not ownership.state(HOST, pfn).accessible:
                ok = yield from machine.lowvisor.host_share_guest_page(pfn, "host claim: ITS table")
                if ok:
                    claimed.append(pfn)
        for behaviour in machine.host.behaviours:
            behaviour.on_access_gained(claimed)
        return claimed

    def _release(self, machine: Machine, pages: list[int]) -> Generator:
        for pfn in pages:
            yield from machine.lowvisor.host_unshare_guest_page(pfn, "host claim released")

    def _pages(self, machine: Machine, pages: list[int]) -> list[int]:
        """What this host names: the real table pages, plus whatever it chooses to add."""
        extra = [p for b in machine.host.behaviours for p in b.extra_claims()]
        return sorted(set(pages) | set(extra))

    def _keeps(self, machine: Machine) -> bool:
        return any(b.keeps_claims() for b in machine.host.behaviours)

    def save(self, world: World) -> Generator[object, object, Payload]:
        src = world.src
        claimed = yield from self._claim(src, self._pages(src, table_pages(src.host.its)))
        payload = yield from kvm_save_tables(world, src)
        if not self._keeps(src):
            yield from self._release(src, claimed)
        payload.pages = claimed
        return payload

    def restore(self, world: World, payload: Payload) -> Generator:
        dst = world.dst
        claimed = yield from self._claim(dst, self._pages(dst, payload.pages))
        yield from kvm_restore_tables(world, dst, payload)
        if not self._keeps(dst):
            yield from self._release(dst, claimed)
