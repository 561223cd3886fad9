"""The raw ITS command queue (read back from guest RAM) decoded, and checked against the trace.

GITS_CBASER (GICv3 spec 12.19.2): Valid bit 63, Physical_Address bits [51:12], Size bits
[7:0] = number of 4 KiB pages - 1. Each command is 32 bytes, four little-endian
doublewords; the fields are those of :mod:`sim.its.commands` (KVM's ``its_cmd_get_*``),
named here as QEMU's trace events name them, so that the two can be compared field by
field (:func:`cross_check`).

Simplification: a queue that wrapped (more commands processed than it has slots) keeps
only the last ``slots`` commands; those are compared, the earlier ones exist only in the
trace and are counted as ``trace_only``. Linux's boot issues 70-300 commands into a
2048-slot queue, so this does not happen for the mixes we ran.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sim.capture.trace import Trace

CMD_SIZE = 32
PAGE = 4096

# opcode -> QEMU's name and the fields its gicv3_its_cmd_<name> event prints
OPCODES: dict[int, tuple[str, tuple[str, ...]]] = {
    0x01: ("MOVI", ("DeviceID", "EventID", "ICID")),
    0x03: ("INT", ("DeviceID", "EventID")),
    0x04: ("CLEAR", ("DeviceID", "EventID")),
    0x05: ("SYNC", ()),
    0x08: ("MAPD", ("DeviceID", "Size", "ITT_addr", "V")),
    0x09: ("MAPC", ("ICID", "RDbase", "V")),
    0x0A: ("MAPTI", ("DeviceID", "EventID", "ICID", "pINTID")),
    0x0B: ("MAPI", ("DeviceID", "EventID", "ICID")),
    0x0C: ("INV", ("DeviceID", "EventID")),
    0x0D: ("INVALL", ()),
    0x0E: ("MOVALL", ("RDbase1", "RDbase2")),
    0x0F: ("DISCARD", ("DeviceID", "EventID")),
}


def _bits(dw: int, lo: int, width: int) -> int:
    return (dw >> lo) & ((1 << width) - 1)


def decode_fields(dwords: tuple[int, int, int, int]) -> tuple[str, dict[str, int]]:
    """(name, fields) of one raw command; every field the command has, per the spec.

    SYNC's RDbase and INVALL's ICID are decoded too, although QEMU's trace prints neither.
    An opcode outside the physical-LPI set gives ("UNKNOWN", {}).
    """
    dw0, dw1, dw2, dw3 = dwords
    op = dw0 & 0xFF
    dev, ev = dw0 >> 32, _bits(dw1, 0, 32)
    icid = _bits(dw2, 0, 16)
    rd = _bits(dw2, 16, 32)
    if op not in OPCODES:
        return "UNKNOWN", {}
    name = OPCODES[op][0]
    f: dict[str, int]
    if name == "MAPD":
        f = {"DeviceID": dev, "Size": _bits(dw1, 0, 5), "ITT_addr": _bits(dw2, 8, 44) << 8}
        f["V"] = dw2 >> 63
    elif name == "MAPC":
        f = {"ICID": icid, "RDbase": rd, "V": dw2 >> 63}
    elif name == "MAPTI":
        f = {"DeviceID": dev, "EventID": ev, "ICID": icid, "pINTID": dw1 >> 32}
    elif name in ("MAPI", "MOVI"):
        f = {"DeviceID": dev, "EventID": ev, "ICID": icid}
    elif name == "SYNC":
        f = {"RDbase": rd}
    elif name == "INVALL":
        f = {"ICID": icid}
    elif name == "MOVALL":
        f = {"RDbase1": rd, "RDbase2": _bits(dw3, 16, 32)}
    else:  # INT CLEAR INV DISCARD
        f = {"DeviceID": dev, "EventID": ev}
    return name, f


@dataclass(frozen=True)
class QueueGeometry:
    base: int  # guest physical address
    size: int  # bytes
    valid: bool

    @property
    def slots(self) -> int:
        return self.size // CMD_SIZE


def geometry(cbaser: int) -> QueueGeometry:
    return QueueGeometry(
        base=_bits(cbaser, 12, 40) << 12,
        size=(_bits(cbaser, 0, 8) + 1) * PAGE,
        valid=bool(cbaser >> 63),
    )


def slots(queue: bytes) -> list[tuple[int, int, int, int]]:
    """The queue's 32-byte slots as doubleword tuples."""
    return [struct.unpack_from("<4Q", queue, i) for i in range(0, len(queue) // CMD_SIZE * 32, 32)]


@dataclass(frozen=True)
class Mismatch:
    seq: int  # processing order
    slot: int
    field: str  # "command", a field name, or "slot"
    trace: int | str | None
    raw: int | str | None

    def describe(self) -> str:
        def show(v):
            return f"{v:#x}" if isinstance(v, int) else str(v)

        return (
            f"command #{self.seq} (slot {self.slot}): {self.field}: trace {show(self.trace)},"
            f" queue {show(self.raw)}"
        )


@dataclass
class CrossCheck:
    compared: int = 0  # commands compared
    fields: int = 0  # fields compared (the opcode counts as one)
    trace_only: int = 0  # overwritten in a wrapped queue
    mismatches: list[Mismatch] = field(default_factory=list)
    stale_slots: list[int] = field(default_factory=list)  # non-zero slots QEMU never processed

    @property
    def ok(self) -> bool:
        return not self.mismatches


def in_queue_order(trace: Trace, n_slots: int) -> list[int]:
    """Indices into ``trace.commands`` whose bytes are still in the queue (the last per slot)."""
    last: dict[int, int] = {}
    for i, c in enumerate(trace.commands):
        last[c.slot] = i
    return sorted(i for s, i in last.items() if s < n_slots)


def cross_check(queue: bytes, trace: Trace) -> CrossCheck:
    """Every traced command against the bytes in its slot: the opcode and each printed field."""
    raw = slots(queue)
    out = CrossCheck()
    keep = set(in_queue_order(trace, len(raw)))
    out.trace_only = len(trace.commands) - len(keep)
    for i, c in enumerate(trace.commands):
        if i not in keep:
            if c.slot >= len(raw):
                out.mismatches.append(Mismatch(c.seq, c.slot, "slot", c.slot, f"< {len(raw)}"))
            continue
        name, fields = decode_fields(raw[c.slot])
        out.compared += 1
        out.fields += 1
        if c.opcode != raw[c.slot][0] & 0xFF:
            out.mismatches.append(
                Mismatch(c.seq, c.slot, "command", c.opcode, raw[c.slot][0] & 0xFF)
            )
            continue
        if c.name and c.name != name:
            out.mismatches.append(Mismatch(c.seq, c.slot, "command", c.name, name))
            continue
        printed = OPCODES.get(c.opcode, ("", ()))[1]
        for f in printed:
            out.fields += 1
            if f not in c.fields:
                out.mismatches.append(Mismatch(c.seq, c.slot, f, None, fields[f]))
            elif c.fields[f] != fields[f]:
                out.mismatches.append(Mismatch(c.seq, c.slot, f, c.fields[f], fields[f]))
        for f in c.fields.keys() - set(printed):
            out.mismatches.append(Mismatch(c.seq, c.slot, f, c.fields[f], None))
    processed = {c.slot for c in trace.commands}
    out.stale_slots = [s for s, dw in enumerate(raw) if s not in processed and any(dw)]
    return out


def commands_in_order(queue: bytes, trace: Trace) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(seq, dwords) of the commands still in the queue, in the order QEMU processed them."""
    raw = slots(queue)
    return [
        (trace.commands[i].seq, raw[trace.commands[i].slot])
        for i in in_queue_order(trace, len(raw))
    ]
