"""KVM's ITS migration ABI revision 0: save and restore of the tables in guest memory.

The shape follows vgic-its.c: ``vgic_its_save_tables_v0`` writes every ITT, then its
DTE, for devices in DeviceID order, then the collection table; ``restore_tables_v0`` reads
the collection table first, then walks the device table (flat or two-level) with
``scan_its_table``, following ``next`` offsets. A failed restore frees every device and
collection, as KVM since v6.13 does, so a fresh destination ITS is left as it was.

Modelling notes: ``scan_its_table`` reads the table in page-sized chunks bounded by the
table itself (KVM reads entry by entry; the bytes read are the same table bytes), and
skips an all-zero chunk in one step, which gives the same result because a zero DTE,
ITE or level-1 entry is invalid and steps by one. KVM passes the ITT size as an ``int``,
so a restored DTE with 28 or more EventID bits overflows it; Python does not.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.errors import ITSError
from sim.its.tables import (
    CTE,
    CTE_ESZ,
    DTE,
    DTE_ESZ,
    ITE,
    ITE_ESZ,
    L1E_ADDR_MASK,
    L1E_VALID,
    VITS_DTE_MAX_DEVID_OFFSET,
    VITS_ITE_MAX_EVENTID_OFFSET,
)
from sim.its.vits import Collection, Device, GuestAccessFailed, ITTEntry, KernelOops
from sim.memory.physmem import PAGE_SIZE

PAGE_MASK = PAGE_SIZE - 1

if TYPE_CHECKING:
    from sim.its.vits import VirtualITS


class _Errno(Exception):
    def __init__(self, error: ITSError) -> None:
        super().__init__(error)
        self.error = error


# ---- save ---------------------------------------------------------------------------


def save_tables_v0(its: VirtualITS) -> ITSError | None:
    try:
        _save_device_tables(its)
        _save_collection_table(its)
    except GuestAccessFailed:
        return ITSError.EFAULT
    except _Errno as exc:
        return exc.error
    return None


def _save_device_tables(its: VirtualITS) -> None:
    baser = its.baser_device_table
    if not baser & r.GITS_BASER_VALID:
        return
    devices = sorted(its.devices.values(), key=lambda d: d.device_id)
    for i, dev in enumerate(devices):
        eaddr = its.check_id(baser, dev.device_id)
        if eaddr is None:
            raise _Errno(ITSError.EINVAL)
        _save_itt(its, dev)
        nxt = 0
        if i + 1 < len(devices):
            nxt = min(devices[i + 1].device_id - dev.device_id, VITS_DTE_MAX_DEVID_OFFSET)
        dte = DTE(True, nxt, dev.itt_addr, dev.num_eventid_bits)
        its._kvm_write_u64(eaddr, dte.encode())


def _save_itt(its: VirtualITS, dev: Device) -> None:
    """``vgic_its_save_itt``: every ITE in EventID order, ``next`` pointing at the next one.

    KVM writes each 8-byte entry with its own ``vgic_write_guest_lock()``; the model writes
    each run of adjacent entries within a page as one checked access: the same bytes at
    the same instant, and a page the stage-2 refuses fails at its first entry, as in KVM.
    """
    ites = sorted(dev.ites.values(), key=attrgetter("event_id"))
    run_addr, run = 0, bytearray()
    for i, ite in enumerate(ites):
        if ite.collection is None:
            if run:
                its._kvm_write(run_addr, bytes(run))
            raise KernelOops(
                f"vgic_its_save_ite dereferences a NULL collection: device {dev.device_id:#x}"
                f" event {ite.event_id:#x} lost its collection to MAPC V=0"
            )
        nxt = 0
        if i + 1 < len(ites):
            nxt = min(ites[i + 1].event_id - ite.event_id, VITS_ITE_MAX_EVENTID_OFFSET)
        entry = ITE.pack(nxt, ite.lpi.intid, ite.collection.collection_id).to_bytes(8, "little")
        addr = dev.itt_addr + ite.event_id * ITE_ESZ
        if run and addr == run_addr + len(run) and addr & PAGE_MASK:
            run += entry  # adjacent, on the same page
            continue
        if run:
            its._kvm_write(run_addr, bytes(run))
        run_addr, run = addr, bytearray(entry)
    if run:
        its._kvm_write(run_addr, bytes(run))


def _save_collection_table(its: VirtualITS) -> None:
    baser = its.baser_coll_table
    if not baser & r.GITS_BASER_VALID:
        return
    gpa = r.baser_addr(baser)
    max_size = r.baser_nr_pages(baser) * r.SZ_64K
    filled = 0
    for c in its.collections.values():
        its._kvm_write_u64(gpa, CTE(True, c.target_addr, c.collection_id).encode())
        gpa += CTE_ESZ
        filled += CTE_ESZ
    if filled != max_size:
        its._kvm_write_u64(gpa, 0)


def save_pending_tables(its: VirtualITS) -> ITSError | None:
    """``vgic_v3_save_pending_tables``: make each LPI's pending bit in guest memory agree."""
    last_ptr = None
    val = 0
    try:
        for lpi in sorted(its.lpis.values(), key=lambda lpi: lpi.intid):
            if lpi.target_vcpu is None:
                continue
            ptr = its._pend_byte_addr(its.vcpus[lpi.target_vcpu], lpi.intid)
            if ptr != last_ptr:
                val = its._kvm_read(ptr, 1)[0]
                last_ptr = ptr
            bit = 1 << (lpi.intid % 8)
            if bool(val & bit) == lpi.pending:
                continue
            val = val | bit if lpi.pending else val & ~bit
            its._kvm_write(ptr, bytes([val]))
    except GuestAccessFailed:
        return ITSError.EFAULT
    return None


# ---- restore ------------------------------------------------------------------------


def restore_tables_v0(its: VirtualITS) -> ITSError | None:
    try:
        _restore_collection_table(its)
    except _Errno as exc:
        its._free_collection_list()
        return exc.error
    try:
        _restore_device_tables(its)
    except _Errno as exc:
        its._free_device_list()
        its._free_collection_list()
        return exc.error
    return None


def _read_u64(its: VirtualITS, gpa: int) -> int:
    try:
        return its._kvm_read_u64(gpa)
    except GuestAccessFailed:
        raise _Errno(ITSError.EFAULT) from None


def _restore_collection_table(its: VirtualITS) -> None:
    baser = its.baser_coll_table
    if not baser & r.GITS_BASER_VALID:
        return
    gpa = r.baser_addr(baser)
    max_size = r.baser_nr_pages(baser) * r.SZ_64K
    read = 0
    while read < max_size:
        cte = CTE.decode(_read_u64(its, gpa))
        if not cte.valid:
            return
        if cte.target != r.COLLECTION_NOT_MAPPED and not its._vcpu_exists(cte.target):
            raise _Errno(ITSError.EINVAL)
        if cte.icid in its.collections:
            raise _Errno(ITSError.EEXIST)
        if its.check_id(its.baser_coll_table, cte.icid) is None:
            raise _Errno(ITSError.EINVAL)
        its.collections[cte.icid] = Collection(cte.icid, cte.target)
        gpa += CTE_ESZ
        read += CTE_ESZ


EntryFn = Callable[[int, int], int]


def _scan_its_table(
    its: VirtualITS, base: int, size: int, esz: int, start_id: int, fn: EntryFn
) -> int:
    """``scan_its_table``: 1 if the table ran out, 0 if an entry said it was the last."""
    id_, gpa, length = start_id, base, size
    chunk_addr, chunk = base, b""
    while True:
        if not chunk_addr <= gpa < chunk_addr + len(chunk):
            end = min((gpa | 0xFFF) + 1, base + size)
            try:
                chunk = its._kvm_read(gpa, end - gpa)
            except GuestAccessFailed:
                raise _Errno(ITSError.EFAULT) from None
            chunk_addr = gpa
            if not any(chunk):
                # Every entry in the chunk is zero, hence invalid: each steps by one.
                step = (end - gpa) // esz
                if step * esz >= length:
                    return 1
                id_, gpa, length = id_ + step, gpa + step * esz, length - step * esz
                continue
        off = gpa - chunk_addr
        entry = int.from_bytes(chunk[off : off + esz], "little")
        next_offset = fn(id_, entry)
        if next_offset <= 0:
            return next_offset
        byte_offset = next_offset * esz
        if byte_offset >= length:
            return 1
        id_, gpa, length = id_ + next_offset, gpa + byte_offset, length - byte_offset


def _restore_device_tables(its: VirtualITS) -> None:
    baser = its.baser_device_table
    if not baser & r.GITS_BASER_VALID:
        return
    l1_gpa = r.baser_addr(baser)
    l1_tbl_size = r.baser_nr_pages(baser) * r.SZ_64K

    def restore_dte(id_: int, entry: int) -> int:
        return _restore_dte(its, id_, entry)

    def handle_l1_dte(id_: int, entry: int) -> int:
        if not entry & L1E_VALID:
            return 1
        l2_start_id = id_ * (r.SZ_64K // DTE_ESZ)
        # A DTE with next == 0 ends the whole walk, not only this level-2 page.
        return _scan_its_table(
            its, entry & L1E_ADDR_MASK, r.SZ_64K, DTE_ESZ, l2_start_id, restore_dte
        )

    if baser & r.GITS_BASER_INDIRECT:
        _scan_its_table(its, l1_gpa, l1_tbl_size, r.GITS_LVL1_ENTRY_SIZE, 0, handle_l1_dte)
    else:
        _scan_its_table(its, l1_gpa, l1_tbl_size, DTE_ESZ, 0, restore_dte)


def _restore_dte(its: VirtualITS, id_: int, entry: int) -> int:
    dte = DTE.decode(entry)
    if not dte.valid:
        return 1
    if its.check_id(its.baser_device_table, id_) is None:
        raise _Errno(ITSError.EINVAL)
    dev = Device(id_, dte.itt_addr, dte.num_eventid_bits)
    its.devices[id_] = dev
    try:
        _scan_its_table(
            its,
            dev.itt_addr,
            (1 << dev.num_eventid_bits) * ITE_ESZ,
            ITE_ESZ,
            0,
            partial(_restore_ite, its, dev),
        )
    except _Errno:
        its._free_device(dev)
        raise
    return dte.next


def _restore_ite(its: VirtualITS, dev: Device, event_id: int, val: int) -> int:
    nxt, intid, icid = ITE.unpack(val)
    if intid == 0:
        return 1  # invalid entry, no choice but to scan the next one
    if intid < r.GIC_LPI_OFFSET:
        raise _Errno(ITSError.EINVAL)
    if event_id + nxt >= 1 << dev.num_eventid_bits:
        raise _Errno(ITSError.EINVAL)
    collection = its.collections.get(icid)
    if collection is None:
        raise _Errno(ITSError.EINVAL)
    if not its._check_event_id(dev, event_id):
        raise _Errno(ITSError.EINVAL)
    vcpu = (
        collection.target_addr
        if collection.mapped and its._vcpu_exists(collection.target_addr)
        else None
    )
    try:
        lpi = its._add_lpi(intid, vcpu)
    except GuestAccessFailed:
        raise _Errno(ITSError.EFAULT) from None
    dev.ites[event_id] = ITTEntry(event_id, lpi, collection)
    return nxt


# ---- registers a VMM saves and restores ----------------------------------------------------


def get_regs(its: VirtualITS) -> dict[str, int]:
    regs = {
        "GITS_IIDR": its.mmio_read(r.GITS_IIDR),
        "GITS_CBASER": its.cbaser,
        "GITS_CREADR": its.creadr,
        "GITS_CWRITER": its.cwriter,
        "GITS_BASER0": its.baser_device_table,
        "GITS_BASER1": its.baser_coll_table,
        "GITS_CTLR": its.mmio_read(r.GITS_CTLR) & r.GITS_CTLR_ENABLE,
        "GICR_PROPBASER": its.propbaser,
    }
    for vcpu in its.vcpus:
        # KVM reads PENDBASER.PTZ as 0.
        regs[f"GICR_PENDBASER{vcpu.vcpu_id}"] = vcpu.pendbaser & ~r.GICR_PENDBASER_PTZ
        regs[f"GICR_CTLR{vcpu.vcpu_id}"] = int(vcpu.lpis_enabled)
    return regs


def set_regs(its: VirtualITS, regs: dict[str, int]) -> None:
    """Redistributors first, then GITS_CBASER, then the other GITS_* registers.

    GITS_CTLR is left alone: the documented order restores it after RESTORE_TABLES.
    """
    for vcpu in its.vcpus:
        its.write_propbaser(vcpu.vcpu_id, regs["GICR_PROPBASER"])
        its.write_pendbaser(vcpu.vcpu_id, regs[f"GICR_PENDBASER{vcpu.vcpu_id}"])
    for vcpu in its.vcpus:
        its.set_lpis_enabled(vcpu.vcpu_id, bool(regs[f"GICR_CTLR{vcpu.vcpu_id}"]))
    its.mmio_write(r.GITS_CBASER, regs["GITS_CBASER"])
    its.abi_rev = (regs["GITS_IIDR"] >> r.GITS_IIDR_REV_SHIFT) & 0xF
    if its.abi_rev != 0:
        raise ValueError(f"GITS_IIDR.Revision {its.abi_rev}: KVM knows only ABI revision 0")
    size = r.cbaser_size(its.cbaser)
    for name in ("GITS_CREADR", "GITS_CWRITER"):
        offset = r.cmd_offset(regs[name])
        if offset >= size:
            raise ValueError(f"{name}={offset:#x} is beyond the {size:#x}-byte command queue")
    its.creadr = r.cmd_offset(regs["GITS_CREADR"])
    its.cwriter = r.cmd_offset(regs["GITS_CWRITER"])
    its.mmio_write(r.GITS_BASER0, regs["GITS_BASER0"])
    its.mmio_write(r.GITS_BASER1, regs["GITS_BASER1"])
