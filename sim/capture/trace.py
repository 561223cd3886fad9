"""QEMU's ITS trace events (``-trace 'gicv3_its*' -D FILE``, the log backend), parsed.

Each line is ``PID@SECONDS.MICROS:EVENT MESSAGE`` with the messages of QEMU 7.2's
hw/intc/trace-events. What a capture takes from it:

- ``gicv3_its_process_command ... at offset 0x%x: 0x%x``: one per command QEMU processes,
  in queue order. Quirk: the "offset" is the command's index in the queue (slot), not a
  byte offset; the second number is the command type (DW0[7:0]).
- ``gicv3_its_cmd_<name> FIELD VALUE ...``: the fields QEMU decoded for that command,
  named as QEMU names them (DeviceID, EventID, ICID, pINTID, Size, ITT_addr, RDbase, V).
  Quirk: MAPD's ITT_addr is printed shifted right by 8 (QEMU keeps DW2[51:8] as is);
  :func:`parse_trace` shifts it back. SYNC and INVALL print no fields.
- ``gicv3_its_write offset 0x%lx data 0x%lx size %u``: MMIO writes; GITS_CBASER (0x80)
  and GITS_BASER<n> (0x100 + 8n) are kept, the last value written to each.
- ``gicv3_its_read``: the value the guest read back from those registers (what stuck).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

GITS_IIDR = 0x4
GITS_CBASER = 0x80
GITS_CWRITER = 0x88
GITS_BASER0 = 0x100
N_BASER = 8

_LINE = re.compile(r"^(?:\d+@\d+\.\d+:)?(gicv3_its_\w+) (.*)$")
_PROCESS = re.compile(r"processing command at offset (0x[0-9a-f]+): (0x[0-9a-f]+)")
_CMD = re.compile(r"command (\w+)(.*)$")
_FIELD = re.compile(r"(\w+) (0x[0-9a-fA-F]+|-?\d+)")
_MMIO = re.compile(r"offset (0x[0-9a-f]+) data (0x[0-9a-f]+) size (\d+)")


class TraceError(ValueError):
    """A trace line that claims to be an ITS event but does not parse: names the line."""


@dataclass
class TracedCommand:
    """One command as QEMU processed it."""

    seq: int  # position in processing order (0, 1, ...)
    slot: int  # the "offset" of gicv3_its_process_command: the queue slot
    opcode: int
    name: str = ""  # QEMU's name for it ("MAPD"), "" if no gicv3_its_cmd_* event followed
    fields: dict[str, int] = field(default_factory=dict)
    line: int = 0  # 1-based line of the process event in the trace file


@dataclass
class Trace:
    commands: list[TracedCommand] = field(default_factory=list)
    writes: dict[int, int] = field(default_factory=dict)  # register offset -> last value
    reads: dict[int, int] = field(default_factory=dict)  # register offset -> last value read
    cbaser_writes: list[int] = field(default_factory=list)  # every GITS_CBASER value written
    cwriter_writes: int = 0
    # commands processed before each GITS_IIDR read (the capture payload's phase marker)
    marker_reads: list[int] = field(default_factory=list)
    translations: int = 0  # GITS_TRANSLATER writes: MSIs the devices sent
    lines: int = 0

    @property
    def cbaser(self) -> int | None:
        return self.writes.get(GITS_CBASER)

    def baser(self) -> dict[int, int]:
        """GITS_BASER<n> -> the last value the guest wrote (registers it never wrote: absent)."""
        return {
            n: self.writes[GITS_BASER0 + 8 * n]
            for n in range(N_BASER)
            if GITS_BASER0 + 8 * n in self.writes
        }

    def baser_read(self) -> dict[int, int]:
        return {
            n: self.reads[GITS_BASER0 + 8 * n]
            for n in range(N_BASER)
            if GITS_BASER0 + 8 * n in self.reads
        }


def _int(text: str) -> int:
    return int(text, 16) if text.lower().startswith("0x") else int(text)


def _mmio(off: int, data: int, size: int, into: dict[int, int]) -> None:
    """Record a 4- or 8-byte access into 64-bit register values (low/high halves merge)."""
    if size == 8:
        into[off] = data
    elif size == 4:
        base = off & ~7
        old = into.get(base, 0)
        if off & 4:
            into[base] = (old & 0xFFFF_FFFF) | (data << 32)
        else:
            into[base] = (old & ~0xFFFF_FFFF) | data


def parse_trace(text: str, source: str = "trace") -> Trace:
    """Parse a whole trace log. Non-ITS lines (other events, QEMU messages) are skipped."""
    trace = Trace()
    current: TracedCommand | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        m = _LINE.match(raw.strip())
        if m is None:
            continue
        trace.lines += 1
        event, msg = m.groups()
        where = f"{source}:{lineno}"
        if event == "gicv3_its_process_command":
            p = _PROCESS.search(msg)
            if p is None:
                raise TraceError(f"{where}: {event} without 'offset 0x..: 0x..': {raw!r}")
            current = TracedCommand(
                seq=len(trace.commands),
                slot=_int(p.group(1)),
                opcode=_int(p.group(2)),
                line=lineno,
            )
            trace.commands.append(current)
        elif event.startswith("gicv3_its_cmd_"):
            c = _CMD.search(msg)
            if c is None:
                if event == "gicv3_its_cmd_unknown":
                    continue
                raise TraceError(f"{where}: {event} without 'command NAME': {raw!r}")
            if current is None or current.name:
                raise TraceError(f"{where}: {event} with no gicv3_its_process_command before it")
            current.name = c.group(1)
            current.fields = {k: _int(v) for k, v in _FIELD.findall(c.group(2))}
            if current.name == "MAPD" and "ITT_addr" in current.fields:
                current.fields["ITT_addr"] <<= 8  # printed >> 8 (QEMU quirk)
        elif event in ("gicv3_its_write", "gicv3_its_read"):
            w = _MMIO.search(msg)
            if w is None:
                raise TraceError(f"{where}: {event} without 'offset .. data .. size ..': {raw!r}")
            off, data, size = _int(w.group(1)), _int(w.group(2)), int(w.group(3))
            if event == "gicv3_its_write":
                _mmio(off, data, size, trace.writes)
                if off == GITS_CBASER and size == 8:
                    trace.cbaser_writes.append(data)
                if off & ~7 == GITS_CWRITER:
                    trace.cwriter_writes += 1
            else:
                _mmio(off, data, size, trace.reads)
                if off == GITS_IIDR:
                    trace.marker_reads.append(len(trace.commands))
        elif event == "gicv3_its_translation_write":
            trace.translations += 1
    return trace


def read_trace(path: Path) -> Trace:
    return parse_trace(Path(path).read_text(errors="replace"), str(path))
