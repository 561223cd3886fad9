"""SAVE/RESTORE_TABLES with ``KVM_DEV_ARM_ITS_ITT_UBUF``: the ITTs in a VMM buffer.

Ilias Stamatis' RFC (14 April 2025, "[RFC PATCH 1/1] KVM: arm64: vgic-its: Add flag for
saving ITTs in userspace buffer"): with the flag, KVM_DEV_ARM_ITS_SAVE_TABLES writes the
ITTs into a userspace buffer whose address travels in the otherwise unused ``addr``
field of ``struct kvm_device_attr``; the device table and the collection table are
still written into guest memory, and RESTORE_TABLES walks them there as ABI revision 0
does (``sim.its.abi``), taking each device's ITEs from the buffer instead of its ITT.

The buffer's byte format is this model's own. The RFC patch describes a format; we have
no primary copy of it (only second-hand digests of the list), so this one is ours::

    "KVMITT\\0\\0"  u32 version (0)  u32 nr_devices
    per device, in DeviceID order:  u32 DeviceID  u32 nr_ites
        nr_ites x (u32 EventID  u32 reserved (0)  ITE (u64, ABI rev 0 encoding, next = 0))

An ITE whose collection MAPC V=0 freed is left out (KVM saves it as a zero entry, which
a restore reads as invalid). Restoring checks each ITE as ``vgic_its_restore_ite`` does,
and also that the buffer is well formed and names only devices the device table in guest
memory holds (an EventID within the DTE's size, no repeats, no trailing bytes): else
-EINVAL, and the ITS is left with no device and no collection, as a failed
RESTORE_TABLES leaves it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from sim.its import regs as r
from sim.its.abi import (
    _Errno,
    _restore_collection_table,
    _restore_device_tables,
    _restore_ite,
    _save_collection_table,
)
from sim.its.errors import ITSError
from sim.its.tables import (
    DTE,
    ITE,
    VITS_DTE_MAX_DEVID_OFFSET,
)
from sim.its.vits import VITS_TYPER_IDBITS, Device, GuestAccessFailed

if TYPE_CHECKING:
    from sim.its.vits import VirtualITS

MAGIC = b"KVMITT\0\0"
VERSION = 0
HEADER = struct.Struct("<8sII")
DEVICE = struct.Struct("<II")
ENTRY = struct.Struct("<IIQ")


def save_tables_ubuf(its: VirtualITS) -> tuple[ITSError | None, bytes]:
    """DTEs and CTEs into guest memory, the ITTs into the returned buffer."""
    out = bytearray()
    count = 0
    try:
        baser = its.baser_device_table
        if baser & r.GITS_BASER_VALID:
            skip = its.behaviour.save_skips_rejected_devices
            devices = sorted(its.devices.values(), key=lambda d: d.device_id)
            for i, dev in enumerate(devices):
                eaddr = its.check_id(baser, dev.device_id)
                if eaddr is None:
                    if skip:
                        continue
                    raise _Errno(ITSError.EINVAL)
                ites = [e for _, e in sorted(dev.ites.items()) if e.collection is not None]
                out += DEVICE.pack(dev.device_id, len(ites))
                for ite in ites:
                    val = ITE.pack(0, ite.lpi.intid, ite.collection.collection_id)
                    out += ENTRY.pack(ite.event_id, 0, val)
                count += 1
                nxt = 0
                for following in devices[i + 1 :]:
                    if not skip or its.check_id(baser, following.device_id) is not None:
                        nxt = min(following.device_id - dev.device_id, VITS_DTE_MAX_DEVID_OFFSET)
                        break
                dte = DTE(True, nxt, dev.itt_addr, dev.num_eventid_bits)
                its._kvm_write_u64(eaddr, dte.encode())
        _save_collection_table(its)
    except GuestAccessFailed:
        return ITSError.EFAULT, b""
    except _Errno as exc:
        return exc.error, b""
    return None, HEADER.pack(MAGIC, VERSION, count) + bytes(out)


def parse(buf: bytes) -> dict[int, list[tuple[int, int]]]:
    """DeviceID -> [(EventID, ITE)], or :class:`_Errno` (-EINVAL) if malformed."""

    def take(offset: int, fmt: struct.Struct) -> tuple:
        if offset + fmt.size > len(buf):
            raise _Errno(ITSError.EINVAL)
        return fmt.unpack_from(buf, offset)

    magic, version, nr_devices = take(0, HEADER)
    if magic != MAGIC or version != VERSION:
        raise _Errno(ITSError.EINVAL)
    offset = HEADER.size
    itts: dict[int, list[tuple[int, int]]] = {}
    for _ in range(nr_devices):
        device_id, nr_ites = take(offset, DEVICE)
        offset += DEVICE.size
        if device_id in itts or nr_ites > 1 << VITS_TYPER_IDBITS:
            raise _Errno(ITSError.EINVAL)
        entries = itts[device_id] = []
        for _ in range(nr_ites):
            event_id, reserved, val = take(offset, ENTRY)
            offset += ENTRY.size
            if reserved:
                raise _Errno(ITSError.EINVAL)
            entries.append((event_id, val))
    if offset != len(buf):
        raise _Errno(ITSError.EINVAL)
    return itts


def restore_tables_ubuf(its: VirtualITS, buf: bytes) -> ITSError | None:
    """Collections and devices from guest memory, each device's ITEs from ``buf``."""
    try:
        itts = parse(buf)
        _restore_collection_table(its)
    except _Errno as exc:
        its._free_collection_list()
        return exc.error
    try:
        _restore_devices(its, itts)
        if set(itts) - set(its.devices):
            raise _Errno(ITSError.EINVAL)  # an ITT for a device the table does not hold
    except _Errno as exc:
        its._free_device_list()
        its._free_collection_list()
        return exc.error
    return None


def _restore_devices(its: VirtualITS, itts: dict[int, list[tuple[int, int]]]) -> None:
    """The device table as ``vgic_its_restore_device_tables`` walks it, each device's
    ITEs from the buffer instead of its ITT."""

    def from_buffer(dev: Device) -> None:
        for event_id, val in itts.get(dev.device_id, ()):
            if event_id >= 1 << dev.num_eventid_bits or event_id in dev.ites:
                raise _Errno(ITSError.EINVAL)
            _restore_ite(its, dev, event_id, val)

    _restore_device_tables(its, from_buffer)


__all__ = ["ENTRY", "MAGIC", "parse", "restore_tables_ubuf", "save_tables_ubuf"]
