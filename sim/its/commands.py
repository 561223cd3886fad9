"""GICv3 ITS commands: typed objects and their exact 32-byte little-endian encoding.

A command is four little-endian 64-bit doublewords DW0..DW3. Field positions are those of
KVM's ``its_cmd_get_*`` accessors (arch/arm64/kvm/vgic/vgic-its.c), which agree with
Linux's ``its_encode_*`` helpers (drivers/irqchip/irq-gic-v3-its.c):

=============  ==============  =============================================
field          position        commands
=============  ==============  =============================================
command        DW0[7:0]        all
DeviceID       DW0[63:32]      MAPD MAPTI MAPI MOVI DISCARD INT CLEAR INV
EventID        DW1[31:0]       MAPTI MAPI MOVI DISCARD INT CLEAR INV
pINTID         DW1[63:32]      MAPTI
Size           DW1[4:0]        MAPD (EventID bits - 1)
ICID           DW2[15:0]       MAPC MAPTI MAPI MOVI INVALL
ITT_addr       DW2[51:8]       MAPD (address >> 8; 256-byte aligned)
RDbase         DW2[47:16]      MAPC SYNC MOVALL (PTA=0: a vCPU number)
RDbase2        DW3[47:16]      MOVALL
V              DW2[63]         MAPD MAPC
=============  ==============  =============================================

Decoding reads only these fields (other bits are RES0 and ignored, as KVM ignores them),
so ``decode(cmd.encode()) == cmd`` for every command.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

CMD_SIZE = 32

GITS_CMD_MOVI = 0x01
GITS_CMD_INT = 0x03
GITS_CMD_CLEAR = 0x04
GITS_CMD_SYNC = 0x05
GITS_CMD_MAPD = 0x08
GITS_CMD_MAPC = 0x09
GITS_CMD_MAPTI = 0x0A
GITS_CMD_MAPI = 0x0B
GITS_CMD_INV = 0x0C
GITS_CMD_INVALL = 0x0D
GITS_CMD_MOVALL = 0x0E
GITS_CMD_DISCARD = 0x0F


_new = object.__new__
_PACK = struct.Struct("<4Q").pack
_UNPACK = struct.Struct("<4Q").unpack


class CommandDecodeError(ValueError):
    """Raw bytes that are not a physical-LPI ITS command KVM handles."""


def _field(dw: int, shift: int, width: int) -> int:
    return (dw >> shift) & ((1 << width) - 1)


def _put(value: int, shift: int, width: int, name: str) -> int:
    if not 0 <= value < 1 << width:
        raise ValueError(f"{name}={value:#x} does not fit in {width} bits")
    return value << shift


@dataclass(frozen=True)
class ITSCommand:
    """Base of every command; subclasses define ``CMD`` and their fields."""

    CMD: ClassVar[int]

    def _dwords(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def encode(self) -> bytes:
        dw0, dw1, dw2, dw3 = self._dwords()
        return _PACK(dw0 | self.CMD, dw1, dw2, dw3)

    @classmethod
    def _from_dwords(cls, dw: tuple[int, int, int, int]) -> ITSCommand:
        raise NotImplementedError


@dataclass(frozen=True)
class MAPD(ITSCommand):
    """Map (V=1) or unmap (V=0) a DeviceID to an ITT of 2^(size+1) events."""

    CMD: ClassVar[int] = GITS_CMD_MAPD
    device_id: int
    size: int  # EventID bits - 1
    itt_addr: int  # 256-byte aligned guest physical address
    valid: bool

    def _dwords(self):
        if self.itt_addr & 0xFF:
            raise ValueError(f"itt_addr={self.itt_addr:#x} is not 256-byte aligned")
        return (
            _put(self.device_id, 32, 32, "device_id"),
            _put(self.size, 0, 5, "size"),
            _put(self.itt_addr >> 8, 8, 44, "itt_addr") | _put(int(self.valid), 63, 1, "valid"),
            0,
        )

    @classmethod
    def _from_dwords(cls, dw):
        return cls(
            _field(dw[0], 32, 32), _field(dw[1], 0, 5), _field(dw[2], 8, 44) << 8, bool(dw[2] >> 63)
        )


@dataclass(frozen=True)
class MAPC(ITSCommand):
    """Map (V=1) or unmap (V=0) a collection to a target redistributor (vCPU)."""

    CMD: ClassVar[int] = GITS_CMD_MAPC
    icid: int
    target: int  # RDbase; with GITS_TYPER.PTA=0 the vCPU number
    valid: bool

    def _dwords(self):
        return (
            0,
            0,
            _put(self.icid, 0, 16, "icid")
            | _put(self.target, 16, 32, "target")
            | _put(int(self.valid), 63, 1, "valid"),
            0,
        )

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[2], 0, 16), _field(dw[2], 16, 32), bool(dw[2] >> 63))


def _mapti_dwords(device_id: int, event_id: int, intid: int, icid: int) -> tuple[int, ...]:
    if not (
        0 <= device_id <= 0xFFFF_FFFF
        and 0 <= event_id <= 0xFFFF_FFFF
        and 0 <= intid <= 0xFFFF_FFFF
        and 0 <= icid <= 0xFFFF
    ):  # (one test for the bulk driver's hot path; _put names the field that fails)
        _put(device_id, 32, 32, "device_id")
        _put(event_id, 0, 32, "event_id")
        _put(intid, 32, 32, "intid")
        _put(icid, 0, 16, "icid")
    return (device_id << 32, event_id | intid << 32, icid, 0)


@dataclass(frozen=True)
class MAPTI(ITSCommand):
    """Map (DeviceID, EventID) to physical LPI ``intid`` in collection ``icid``."""

    CMD: ClassVar[int] = GITS_CMD_MAPTI
    device_id: int
    event_id: int
    intid: int
    icid: int

    def _dwords(self):
        return _mapti_dwords(self.device_id, self.event_id, self.intid, self.icid)

    @classmethod
    def pack(cls, device_id: int, event_id: int, intid: int, icid: int) -> bytes:
        """``MAPTI(...).encode()`` without building the command (a bulk driver's hot path)."""
        dw0, dw1, dw2, dw3 = _mapti_dwords(device_id, event_id, intid, icid)
        return _PACK(dw0 | GITS_CMD_MAPTI, dw1, dw2, dw3)

    @classmethod
    def _from_dwords(cls, dw):  # fields inline: the hot path of a bulk bring-up
        # cls(...) without the frozen dataclass's __init__, which sets each field through
        # object.__setattr__: the same fields, nothing to validate (each is masked)
        cmd = _new(cls)
        cmd.__dict__.update(
            device_id=dw[0] >> 32,
            event_id=dw[1] & 0xFFFF_FFFF,
            intid=dw[1] >> 32,
            icid=dw[2] & 0xFFFF,
        )
        return cmd


@dataclass(frozen=True)
class _DeviceEventICIDCommand(ITSCommand):
    """Commands that name a (DeviceID, EventID) pair and a collection."""

    device_id: int
    event_id: int
    icid: int

    def _dwords(self):
        return (
            _put(self.device_id, 32, 32, "device_id"),
            _put(self.event_id, 0, 32, "event_id"),
            _put(self.icid, 0, 16, "icid"),
            0,
        )

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[0], 32, 32), _field(dw[1], 0, 32), _field(dw[2], 0, 16))


@dataclass(frozen=True)
class MAPI(_DeviceEventICIDCommand):
    """MAPTI with pINTID = EventID."""

    CMD: ClassVar[int] = GITS_CMD_MAPI


@dataclass(frozen=True)
class MOVI(_DeviceEventICIDCommand):
    """Move the LPI of (DeviceID, EventID) to collection ``icid``."""

    CMD: ClassVar[int] = GITS_CMD_MOVI


@dataclass(frozen=True)
class _DeviceEventCommand(ITSCommand):
    """Commands that name only a (DeviceID, EventID) pair."""

    device_id: int
    event_id: int

    def _dwords(self):
        return (
            _put(self.device_id, 32, 32, "device_id"),
            _put(self.event_id, 0, 32, "event_id"),
            0,
            0,
        )

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[0], 32, 32), _field(dw[1], 0, 32))


@dataclass(frozen=True)
class DISCARD(_DeviceEventCommand):
    """Remove the ITE of (DeviceID, EventID) and clear its pending state."""

    CMD: ClassVar[int] = GITS_CMD_DISCARD


@dataclass(frozen=True)
class INT(_DeviceEventCommand):
    """Make the LPI of (DeviceID, EventID) pending, as if the device had sent it."""

    CMD: ClassVar[int] = GITS_CMD_INT


@dataclass(frozen=True)
class CLEAR(_DeviceEventCommand):
    """Clear the pending state of the LPI of (DeviceID, EventID)."""

    CMD: ClassVar[int] = GITS_CMD_CLEAR


@dataclass(frozen=True)
class INV(_DeviceEventCommand):
    """Re-read the configuration (priority, enable) of one LPI from the property table."""

    CMD: ClassVar[int] = GITS_CMD_INV


@dataclass(frozen=True)
class INVALL(ITSCommand):
    """Re-read the configuration of every LPI targeting collection ``icid``."""

    CMD: ClassVar[int] = GITS_CMD_INVALL
    icid: int

    def _dwords(self):
        return (0, 0, _put(self.icid, 0, 16, "icid"), 0)

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[2], 0, 16))


@dataclass(frozen=True)
class SYNC(ITSCommand):
    """Wait for the effects of earlier commands on ``target`` (a no-op in KVM)."""

    CMD: ClassVar[int] = GITS_CMD_SYNC
    target: int

    def _dwords(self):
        return (0, 0, _put(self.target, 16, 32, "target"), 0)

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[2], 16, 32))


@dataclass(frozen=True)
class MOVALL(ITSCommand):
    """Move every LPI targeting ``target1`` to ``target2``."""

    CMD: ClassVar[int] = GITS_CMD_MOVALL
    target1: int
    target2: int

    def _dwords(self):
        return (0, 0, _put(self.target1, 16, 32, "target1"), _put(self.target2, 16, 32, "target2"))

    @classmethod
    def _from_dwords(cls, dw):
        return cls(_field(dw[2], 16, 32), _field(dw[3], 16, 32))


COMMANDS: dict[int, type[ITSCommand]] = {
    cls.CMD: cls
    for cls in (MOVI, INT, CLEAR, SYNC, MAPD, MAPC, MAPTI, MAPI, INV, INVALL, MOVALL, DISCARD)
}


def command_number(raw: bytes) -> int:
    """DW0[7:0] of a raw command."""
    return raw[0]


# Commands decoded lately, by their bytes: a command is a function of its 32 bytes and
# immutable, so the same bytes may share one (the queue repeats SYNCs, and a proposal or
# a host may read a command before KVM does). Emptied when full.
_DECODED: dict[bytes, ITSCommand] = {}
_DECODED_MAX = 1 << 14


def decode(raw: bytes) -> ITSCommand:
    """Decode one raw 32-byte command; unknown command numbers raise ``CommandDecodeError``."""
    cmd = _DECODED.get(raw) if type(raw) is bytes else None
    if cmd is not None:
        return cmd
    if len(raw) != CMD_SIZE:
        raise CommandDecodeError(f"an ITS command is {CMD_SIZE} bytes, got {len(raw)}")
    cls = COMMANDS.get(raw[0])
    if cls is None:
        raise CommandDecodeError(f"unknown ITS command number {raw[0]:#04x}")
    cmd = cls._from_dwords(_UNPACK(raw))
    if type(raw) is bytes:
        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        _DECODED[raw] = cmd
    return cmd
