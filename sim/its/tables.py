"""KVM's ITS migration ABI revision 0: the 8-byte DTE, ITE, CTE and level-1 entries.

Bit layouts from the ``KVM_ITS_*`` definitions in arch/arm64/kvm/vgic/vgic.h and
Documentation/virt/kvm/devices/arm-vgic-its.rst::

    DTE  | 63 V | 62..49 next | 48..5 ITT_addr >> 8 | 4..0 Size (EventID bits - 1) |
    ITE  | 63..48 next | 47..16 pINTID (0: invalid) | 15..0 ICID |
    CTE  | 63 V | 62..48 RES0 | 47..16 RDbase (u32 vCPU id) | 15..0 ICID |
    L1   | 63 V | 51..16 level-2 page address (64 KiB pages) |

``next`` is the distance in IDs to the next valid entry, 0 for the last one, capped at
``VITS_DTE_MAX_DEVID_OFFSET`` / ``VITS_ITE_MAX_EVENTID_OFFSET``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.its.regs import genmask

ABI_REV = 0
DTE_ESZ = ITE_ESZ = CTE_ESZ = 8
VITS_DTE_MAX_DEVID_OFFSET = (1 << 14) - 1
VITS_ITE_MAX_EVENTID_OFFSET = (1 << 16) - 1
L1E_VALID = 1 << 63
L1E_ADDR_MASK = genmask(51, 16)


@dataclass(frozen=True)
class DTE:
    valid: bool
    next: int
    itt_addr: int
    num_eventid_bits: int

    def encode(self) -> int:
        return (
            int(self.valid) << 63
            | self.next << 49
            | (self.itt_addr >> 8) << 5
            | (self.num_eventid_bits - 1)
        )

    @classmethod
    def decode(cls, val: int) -> DTE:
        return cls(
            valid=bool(val >> 63),
            next=(val & genmask(62, 49)) >> 49,
            itt_addr=((val & genmask(48, 5)) >> 5) << 8,
            num_eventid_bits=(val & 0x1F) + 1,
        )


@dataclass(frozen=True)
class ITE:
    next: int
    intid: int  # 0 marks an invalid entry
    icid: int

    def encode(self) -> int:
        return self.pack(self.next, self.intid, self.icid)

    @staticmethod
    def pack(next: int, intid: int, icid: int) -> int:
        """The entry for these fields, without building an ``ITE`` (the save's hot path)."""
        return next << 48 | intid << 16 | icid

    @classmethod
    def decode(cls, val: int) -> ITE:
        return cls(*cls.unpack(val))

    @staticmethod
    def unpack(val: int) -> tuple[int, int, int]:
        """``(next, intid, icid)`` of an entry, without building an ``ITE`` (the restore's
        hot path)."""
        return val >> 48, (val >> 16) & 0xFFFF_FFFF, val & 0xFFFF


@dataclass(frozen=True)
class CTE:
    valid: bool
    target: int  # vCPU id, or COLLECTION_NOT_MAPPED
    icid: int

    def encode(self) -> int:
        return int(self.valid) << 63 | self.target << 16 | self.icid

    @classmethod
    def decode(cls, val: int) -> CTE:
        return cls(valid=bool(val >> 63), target=(val >> 16) & 0xFFFF_FFFF, icid=val & 0xFFFF)


def l1_entry(l2_addr: int) -> int:
    """A valid level-1 device-table entry pointing at a 64 KiB level-2 page."""
    return L1E_VALID | (l2_addr & L1E_ADDR_MASK)
