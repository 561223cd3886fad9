"""share-host-claims: the host names the pages holding the ITS tables; EL2 shares them.

At save time the host asks the lowvisor to share every page its vITS state says holds a
table entry (device table slots, the collection table, each ITT) and that it cannot yet
reach; the lowvisor has nothing to check the claim against. The same pages are claimed
on the destination before RESTORE_TABLES, and unshared after.

KVM also writes guest tables while it runs the queue: it zeroes the ITE on DISCARD and
the DTE on MAPD V=0 (real 6.1.192 and 7.3.4 do). What the host claims includes what KVM
writes: before running the queue the host reads the new commands (the queue is shared)
and claims each page KVM will clear that it cannot reach, runs the queue, then releases
them. Without that the writes fault (-EFAULT, skipped by ``vgic_its_process_commands``)
and the stale entry stays in guest memory for a later restore to resurrect. The cost is
this proposal's to show: a kzalloc'd ITT's page, co-located objects and all, is shared
while each DISCARD runs. The claims are made before the batch, not at each command (the
Linux driver sends DISCARD and SYNC per GITS_CWRITER write, so it is the same window).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.commands import DISCARD, MAPD, MAPI, MAPTI, CommandDecodeError, decode
from sim.its.tables import CTE_ESZ, DTE_ESZ, ITE_ESZ
from sim.memory.access import Stage2Fault
from sim.memory.guest import NotGuestMemory
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


class _LiveITEs:
    """One device's ITT address and which EventIDs have a live ITE (one with a
    collection) as the batch goes: the vITS's ITEs, each looked up when the batch names
    it, under the batch's own changes (a device's whole set, built for every batch that
    names it, made mapping N vectors one at a time cost N^2)."""

    __slots__ = ("changed", "ites", "itt_addr")

    def __init__(self, itt_addr: int, ites: dict) -> None:
        self.itt_addr = itt_addr
        self.ites = ites  # EventID -> ITTEntry, as the vITS holds them (not changed here)
        self.changed: dict[int, bool] = {}  # EventID -> live, as the batch left it

    def live(self, event_id: int) -> bool:
        if event_id in self.changed:
            return self.changed[event_id]
        ite = self.ites.get(event_id)
        return ite is not None and bool(ite.collection)


def command_write_pages(its: VirtualITS, target: int) -> list[int]:
    """Pages KVM will write while it runs the queue from GITS_CREADR to ``target``: the
    ITE of each DISCARD that frees one, the DTE of each MAPD V=0, as the host reads the
    queue against its vITS state (and the MAPD / MAPTI ahead of them in the batch)."""
    if not its.enabled or not its.clears_entries:
        return []
    base, size = r.cbaser_addr(its.cbaser), r.cbaser_size(its.cbaser)
    if target >= size:
        return []
    # DeviceID -> its ITT address and which EventIDs have a live ITE, or None once
    # unmapped; read from the vITS only for the devices and events the batch names.
    itts: dict[int, _LiveITEs | None] = {}

    def itt(device_id: int) -> _LiveITEs | None:
        if device_id not in itts:
            d = its.devices.get(device_id)
            itts[device_id] = None if d is None else _LiveITEs(d.itt_addr, d.ites)
        return itts[device_id]

    addrs = []
    slot = its.creadr
    while slot != target:
        try:
            raw = its.kvm.read(base + slot, r.ITS_CMD_SIZE)
        except (NotGuestMemory, Stage2Fault):
            break  # KVM cannot read the queue either: nothing will run
        slot = (slot + r.ITS_CMD_SIZE) % size
        try:
            cmd = decode(raw)
        except CommandDecodeError:
            continue
        if isinstance(cmd, DISCARD):
            device = itt(cmd.device_id)
            if device is not None and device.live(cmd.event_id):
                device.changed[cmd.event_id] = False
                addrs.append(device.itt_addr + cmd.event_id * ITE_ESZ)
        elif isinstance(cmd, MAPD):
            itts[cmd.device_id] = _LiveITEs(cmd.itt_addr, {}) if cmd.valid else None
            gpa = None if cmd.valid else its.check_id(its.baser_device_table, cmd.device_id)
            if gpa is not None:
                addrs.append(gpa)
        elif isinstance(cmd, MAPTI | MAPI) and (device := itt(cmd.device_id)) is not None:
            device.changed[cmd.event_id] = True
    return sorted({addr >> PAGE_SHIFT for addr in addrs})


class ShareHostClaims(Proposal):
    name = "share-host-claims"
    summary = "the host names the table pages, EL2 shares them on its word"
    el2_loc_cost = "el2_loc_share_host_claims"
    el2_lines_source = "one host hypercall handler over __pkvm_guest_share_host (sim/costs.py)"
    host_claims = True

    def __init__(self) -> None:
        self.writing: dict[str, list[int]] = {}  # pages claimed for KVM's queue writes

    def _claim(
        self, machine: Machine, pages: list[int], what: str = "ITS table"
    ) -> Generator[object, object, list]:
        claimed = []
        ownership = machine.memory.ownership
        for pfn in pages:
            if not ownership.state(HOST, pfn).accessible:
                ok = yield from machine.lowvisor.host_share_guest_page(pfn, f"host claim: {what}")
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

    def before_process(self, machine: Machine, offset: int, val: int) -> Generator:
        pages = command_write_pages(machine.host.its, r.cmd_offset(val))
        if pages:
            claimed = yield from self._claim(machine, pages, "entry KVM clears in the queue")
            self.writing.setdefault(machine.name, []).extend(claimed)

    def after_process(self, machine: Machine) -> Generator:
        claimed = self.writing.pop(machine.name, [])
        if claimed and not self._keeps(machine):
            yield from self._release(machine, claimed)

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
