"""A serialized vITS for the VMM: KVM's state in a buffer instead of guest memory.

The format reuses the ABI's 8-byte entries (``sim.its.tables``) with explicit IDs, so it
can be read back without guest memory::

    "KVMITS\\0\\0"  u32 version (0)  u32 nr_collections  u32 nr_devices  u32 reserved
    nr_collections x CTE (u64)
    per device:  u32 DeviceID  u32 nr_ites  DTE (u64, next = 0)
                 nr_ites x (u32 EventID  u32 flags (bit 0: pending)  ITE (u64, next = 0))

An ITE whose collection MAPC V=0 freed is left out, as KVM's SAVE_TABLES leaves it out
(a zero entry, invalid on restore). The LPIs' pending bits travel in the blob too
(instead of SAVE_PENDING_TABLES writing them into guest memory), so saving touches no
guest page at all.

Deserializing checks every entry the way RESTORE_TABLES checks guest tables (and also the
DTE Size and pINTID bound that MAPD/MAPTI check, and, as both do through
``vgic_its_check_event_id``, that each ITE's ITT slot is guest RAM), and is all or
nothing: on any error the ITS is left with no device and no collection, as a failed
RESTORE_TABLES leaves it. An
ITE whose LPI an earlier ITE maps is shared (6.1) or dropped (7.3), as RESTORE_TABLES does.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.errors import ITSError
from sim.its.tables import CTE, DTE, ITE
from sim.its.vits import Collection, Device, GuestAccessFailed, ITTEntry

if TYPE_CHECKING:
    from sim.its.vits import VirtualITS

MAGIC = b"KVMITS\0\0"
VERSION = 0
_HEADER = struct.Struct("<8sIIII")
_DEVICE = struct.Struct("<IIQ")
_ITE = struct.Struct("<IIQ")
VITS_TYPER_IDBITS = 16


class BlobError(Exception):
    def __init__(self, error: ITSError, why: str) -> None:
        super().__init__(f"{error}: {why}")
        self.error = error


def serialize(its: VirtualITS) -> bytes:
    out = bytearray(_HEADER.pack(MAGIC, VERSION, len(its.collections), len(its.devices), 0))
    for c in its.collections.values():
        out += CTE(True, c.target_addr, c.collection_id).encode().to_bytes(8, "little")
    for dev in sorted(its.devices.values(), key=lambda d: d.device_id):
        ites = [
            ite
            for ite in sorted(dev.ites.values(), key=lambda e: e.event_id)
            if ite.collection is not None
        ]
        out += _DEVICE.pack(
            dev.device_id,
            len(ites),
            DTE(True, 0, dev.itt_addr, dev.num_eventid_bits).encode(),
        )
        for ite in ites:
            out += _ITE.pack(
                ite.event_id,
                int(ite.lpi.pending),
                ITE(0, ite.lpi.intid, ite.collection.collection_id).encode(),
            )
    return bytes(out)


def deserialize(its: VirtualITS, blob: bytes) -> ITSError | None:
    """Rebuild devices and collections from ``blob``; a typed error leaves nothing."""
    try:
        _deserialize(its, blob)
    except BlobError as exc:
        its._free_device_list()
        its._free_collection_list()
        return exc.error
    return None


def _take(blob: bytes, offset: int, fmt: struct.Struct) -> tuple:
    if offset + fmt.size > len(blob):
        raise BlobError(ITSError.EINVAL, f"truncated at byte {offset}")
    return fmt.unpack_from(blob, offset)


def _deserialize(its: VirtualITS, blob: bytes) -> None:
    magic, version, nr_coll, nr_dev, _ = _take(blob, 0, _HEADER)
    if magic != MAGIC or version != VERSION:
        raise BlobError(ITSError.EINVAL, "not a version-0 vITS blob")
    offset = _HEADER.size
    cte_struct = struct.Struct("<Q")
    for _ in range(nr_coll):
        (val,) = _take(blob, offset, cte_struct)
        offset += 8
        cte = CTE.decode(val)
        if not cte.valid:
            raise BlobError(ITSError.EINVAL, "invalid CTE")
        if cte.target != r.COLLECTION_NOT_MAPPED and not its._vcpu_exists(cte.target):
            raise BlobError(ITSError.EINVAL, f"collection {cte.icid} targets no vCPU")
        if cte.icid in its.collections:
            raise BlobError(ITSError.EEXIST, f"collection {cte.icid} twice")
        if its.check_id(its.baser_coll_table, cte.icid) is None:
            raise BlobError(ITSError.EINVAL, f"collection {cte.icid} beyond the table")
        its.collections[cte.icid] = Collection(cte.icid, cte.target)
    for _ in range(nr_dev):
        device_id, nr_ites, val = _take(blob, offset, _DEVICE)
        offset += _DEVICE.size
        dte = DTE.decode(val)
        if not dte.valid or device_id > 0xFFFF or device_id in its.devices:
            raise BlobError(ITSError.EINVAL, f"bad or repeated device {device_id:#x}")
        if dte.num_eventid_bits > VITS_TYPER_IDBITS or nr_ites > 1 << dte.num_eventid_bits:
            raise BlobError(ITSError.EINVAL, f"device {device_id:#x}: bad ITT size")
        device = its.devices[device_id] = Device(device_id, dte.itt_addr, dte.num_eventid_bits)
        for _ in range(nr_ites):
            event_id, flags, ite_val = _take(blob, offset, _ITE)
            offset += _ITE.size
            if flags & ~1:
                raise BlobError(ITSError.EINVAL, f"event {event_id:#x}: unknown flags {flags:#x}")
            _restore_ite(its, device, event_id, ITE.decode(ite_val), bool(flags & 1))
    if offset != len(blob):
        raise BlobError(ITSError.EINVAL, f"{len(blob) - offset} trailing bytes")


def _restore_ite(its: VirtualITS, device: Device, event_id: int, ite: ITE, pending: bool) -> None:
    if event_id >= 1 << device.num_eventid_bits or event_id in device.ites:
        raise BlobError(ITSError.EINVAL, f"bad or repeated event {event_id:#x}")
    if not its._check_event_id(device, event_id):
        # vgic_its_check_event_id(): MAPTI and vgic_its_restore_ite refuse an ITE whose
        # ITT slot is not guest RAM (kvm_is_visible_gfn), both kernels.
        raise BlobError(ITSError.EINVAL, f"event {event_id:#x}: ITT slot outside guest RAM")
    if not r.GIC_LPI_OFFSET <= ite.intid < r.max_lpis_propbaser(its.propbaser):
        raise BlobError(ITSError.EINVAL, f"pINTID {ite.intid} out of range")
    collection = its.collections.get(ite.icid)
    if collection is None:
        raise BlobError(ITSError.EINVAL, f"unknown collection {ite.icid}")
    vcpu = collection.target_addr if collection.mapped else None
    try:
        lpi = its._map_lpi(ite.intid, vcpu)
    except GuestAccessFailed:
        raise BlobError(ITSError.EFAULT, "LPI configuration unreadable") from None
    if lpi is None:
        return  # 7.3: another ITE maps this LPI; vgic_its_restore_ite drops this one
    lpi.pending = lpi.pending or pending
    device.ites[event_id] = ITTEntry(event_id, lpi, collection)
