"""KVM's ITS migration ABI revision 0: save and restore of the tables in guest memory.

The shape follows vgic-its.c: ``vgic_its_save_tables_v0`` writes every ITT, then its
DTE, for devices in DeviceID order, then the collection table; ``restore_tables_v0`` reads
the collection table first, then walks the device table (flat or two-level) with
``scan_its_table``, following ``next`` offsets. A failed restore frees every device and
collection, so a fresh destination ITS is left as it was. Where the two kernels differ
(an ITE without a collection, a device ``vgic_its_check_id`` rejects, an LPI two ITEs
map) the ITS's :class:`~sim.its.kernel.KernelBehaviour` decides.

Modelling notes: ``scan_its_table`` reads the table in page-sized chunks bounded by the
table itself (KVM reads entry by entry, ``kvm_read_guest_lock`` each time); a chunk is
read again after any write KVM makes while restoring an entry (the pending-bit clear of
``vgic_add_lpi`` can land in a table being walked), so every entry is the bytes KVM reads
when it reads them. An all-zero chunk is skipped in one step, which gives the same result
because a zero DTE, ITE or level-1 entry is invalid and steps by one.
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
from sim.its.vits import VITS_TYPER_IDBITS, Collection, Device, GuestAccessFailed, ITTEntry
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
    """``vgic_its_save_device_tables``: devices in DeviceID order, each ITT then its DTE.

    A device ``vgic_its_check_id`` rejects fails the save with -EINVAL on 6.1; 7.3
    skips it, and ``compute_next_devid_offset`` points past it (checking each following
    device again, after this device's ITT is written, as KVM does).
    """
    baser = its.baser_device_table
    if not baser & r.GITS_BASER_VALID:
        return
    skip = its.behaviour.save_skips_rejected_devices
    devices = sorted(its.devices.values(), key=lambda d: d.device_id)
    for i, dev in enumerate(devices):
        eaddr = its.check_id(baser, dev.device_id)
        if eaddr is None:
            if skip:
                continue
            raise _Errno(ITSError.EINVAL)
        _save_itt(its, dev)
        nxt = 0
        for following in devices[i + 1 :]:
            if not skip or its.check_id(baser, following.device_id) is not None:
                nxt = min(following.device_id - dev.device_id, VITS_DTE_MAX_DEVID_OFFSET)
                break
        dte = DTE(True, nxt, dev.itt_addr, dev.num_eventid_bits)
        its._kvm_write_u64(eaddr, dte.encode())


def _save_itt(its: VirtualITS, dev: Device) -> None:
    """``vgic_its_save_itt``: every ITE in EventID order, ``next`` pointing at the next one.

    An ITE whose collection MAPC V=0 freed is saved as a zero entry (``vgic_its_save_ite``,
    both kernels), which a restore reads as invalid. 7.3's ``compute_next_eventid_offset``
    points past such entries; 6.1's points at the next ITE whatever it holds.

    KVM writes each 8-byte entry with its own ``vgic_write_guest_lock()``; the model writes
    each run of adjacent entries within a page as one checked access: the same bytes at
    the same instant, and a page the stage-2 refuses fails at its first entry, as in KVM.
    """
    ites = sorted(dev.ites.values(), key=attrgetter("event_id"))
    # The event ID each ITE's `next` points at (None: it is the last).
    following: list[int | None] = [None] * len(ites)
    nxt_event: int | None = None
    skip_zeroed = its.behaviour.next_ite_skips_zeroed
    for i in range(len(ites) - 1, -1, -1):
        following[i] = nxt_event
        if not skip_zeroed or ites[i].collection is not None:
            nxt_event = ites[i].event_id
    run_addr, run = 0, bytearray()
    for i, ite in enumerate(ites):
        if ite.collection is None:
            entry = bytes(ITE_ESZ)
        else:
            nxt = following[i]
            offset = 0 if nxt is None else min(nxt - ite.event_id, VITS_ITE_MAX_EVENTID_OFFSET)
            val = ITE.pack(offset, ite.lpi.intid, ite.collection.collection_id)
            entry = val.to_bytes(8, "little")
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
        # 7.3 walks the LPI xarray (INTID order), 6.1 the LPI list (creation order): the
        # bytes written are the same, the order shows only where a refused page stops it.
        for lpi in its._lpi_walk():
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
    writes = its._guest_writes
    while True:
        if its._guest_writes != writes:
            # KVM wrote guest memory while handling the last entry: read afresh.
            chunk, writes = b"", its._guest_writes
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


def _restore_device_tables(
    its: VirtualITS, restore_ites: Callable[[Device], None] | None = None
) -> None:
    """``vgic_its_restore_device_tables``: every valid DTE becomes a device, and
    ``restore_ites(device)`` restores its ITEs (default: ``vgic_its_restore_itt``, a scan
    of its ITT in guest memory)."""
    baser = its.baser_device_table
    if not baser & r.GITS_BASER_VALID:
        return
    l1_gpa = r.baser_addr(baser)
    l1_tbl_size = r.baser_nr_pages(baser) * r.SZ_64K
    ites = restore_ites or partial(_restore_itt, its)

    def restore_dte(id_: int, entry: int) -> int:
        return _restore_dte(its, id_, entry, ites)

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


def _restore_dte(
    its: VirtualITS, id_: int, entry: int, restore_ites: Callable[[Device], None]
) -> int:
    dte = DTE.decode(entry)
    if not dte.valid:
        return 1
    # "Mimic the MAPD behaviour and reject invalid EID bits" (both kernels), so KVM never
    # scans an ITT of more than 2^16 entries (scan_its_table's int size cannot wrap).
    if dte.num_eventid_bits > VITS_TYPER_IDBITS:
        raise _Errno(ITSError.EINVAL)
    if its.check_id(its.baser_device_table, id_) is None:
        raise _Errno(ITSError.EINVAL)
    dev = Device(id_, dte.itt_addr, dte.num_eventid_bits)
    its.devices[id_] = dev
    try:
        restore_ites(dev)
    except _Errno:
        its._free_device(dev)
        raise
    return dte.next


def _restore_itt(its: VirtualITS, dev: Device) -> None:
    """``vgic_its_restore_itt``: scan the device's ITT for its ITEs."""
    _scan_its_table(
        its,
        dev.itt_addr,
        (1 << dev.num_eventid_bits) * ITE_ESZ,
        ITE_ESZ,
        0,
        partial(_restore_ite, its, dev),
    )


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
        lpi = its._map_lpi(intid, vcpu)
    except GuestAccessFailed:
        raise _Errno(ITSError.EFAULT) from None
    if lpi is not None:  # 7.3 drops an ITE whose LPI another ITE maps, as MAPTI does
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
        for reg in ("GICR_PENDBASER", "GICR_CTLR"):
            regs[f"{reg}{vcpu.vcpu_id}"] = its.redist_read(vcpu.vcpu_id, reg)
    return regs


def set_regs(its: VirtualITS, regs: dict[str, int]) -> None:
    """Redistributors first, then GITS_CBASER, then the other GITS_* registers.

    GITS_CTLR is left alone: the documented order restores it after RESTORE_TABLES.
    """
    for vcpu in its.vcpus:
        its.write_propbaser(vcpu.vcpu_id, regs["GICR_PROPBASER"])
        its.write_pendbaser(vcpu.vcpu_id, regs[f"GICR_PENDBASER{vcpu.vcpu_id}"])
    for vcpu in its.vcpus:
        ctlr = regs[f"GICR_CTLR{vcpu.vcpu_id}"]
        its.set_lpis_enabled(vcpu.vcpu_id, bool(ctlr & r.GICR_CTLR_ENABLE_LPIS))
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
