"""QEMU's ITS trace parsed, the raw queue decoded, and the field-by-field cross-check.

Synthetic streams are encoded with sim.its.commands (KVM's field positions) and traced in
QEMU 7.2's exact message formats; the real data is a Debian 7.3.4 boot's trace and queue
(tests/capture/data, from `pkvm-sim capture --virtio-net 6 --virtio-blk 2 --virtio-rng
--nvme 1`'s first run).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.capture.queue import (
    commands_in_order,
    cross_check,
    decode_fields,
    geometry,
    slots,
)
from sim.capture.trace import TraceError, parse_trace, read_trace
from sim.its.commands import DISCARD, INV, INVALL, MAPC, MAPD, MAPTI, MOVI, SYNC

DATA = Path(__file__).parent / "data"


def trace_line(cmd, slot: int) -> list[str]:
    """The two events QEMU 7.2 logs for one processed command (hw/intc/trace-events)."""
    name, f = decode_fields(slots(cmd.encode())[0])
    op = cmd.CMD
    head = f"gicv3_its_process_command GICv3 ITS: processing command at offset {slot:#x}: {op:#x}"
    body = {
        "MAPD": f"DeviceID {f.get('DeviceID', 0):#x} Size {f.get('Size', 0):#x}"
        f" ITT_addr {f.get('ITT_addr', 0) >> 8:#x} V {f.get('V', 0)}",
        "MAPC": f"ICID {f.get('ICID', 0):#x} RDbase {f.get('RDbase', 0):#x} V {f.get('V', 0)}",
        "MAPTI": f"DeviceID {f.get('DeviceID', 0):#x} EventID {f.get('EventID', 0):#x}"
        f" ICID {f.get('ICID', 0):#x} pINTID {f.get('pINTID', 0):#x}",
        "MOVI": f"DeviceID {f.get('DeviceID', 0):#x} EventID {f.get('EventID', 0):#x}"
        f" ICID {f.get('ICID', 0):#x}",
        "INV": f"DeviceID {f.get('DeviceID', 0):#x} EventID {f.get('EventID', 0):#x}",
        "DISCARD": f"DeviceID {f.get('DeviceID', 0):#x} EventID {f.get('EventID', 0):#x}",
        "SYNC": "",
        "INVALL": "",
    }[name]
    tail = f"gicv3_its_cmd_{name.lower()} GICv3 ITS: command {name}" + (f" {body}" if body else "")
    return [f"1234@1764597000.{slot:06d}:{head}", f"1234@1764597000.{slot:06d}:{tail}"]


STREAM = [
    MAPC(icid=0, target=0, valid=True),
    SYNC(target=0),
    INVALL(icid=0),
    SYNC(target=0),
    MAPD(device_id=0x8, size=1, itt_addr=0x42738400, valid=True),
    MAPTI(device_id=0x8, event_id=0, intid=8192, icid=0),
    SYNC(target=0),
    MAPTI(device_id=0x8, event_id=1, intid=8193, icid=1),
    SYNC(target=1),
    INV(device_id=0x8, event_id=1),
    MOVI(device_id=0x8, event_id=1, icid=0),
    DISCARD(device_id=0x8, event_id=0),
    MAPD(device_id=0x8, size=1, itt_addr=0x42738400, valid=False),
]


def stream_queue_and_trace(stream=STREAM, queue_pages: int = 16) -> tuple[bytes, str]:
    queue = bytearray(queue_pages * 4096)
    lines = [
        "gicv3_its_write GICv3 ITS write: offset 0x80 data 0xb80000004258040f size 8",
        "gicv3_its_write GICv3 ITS write: offset 0x100 data 0xf907000042590600 size 8",
        "gicv3_its_read GICv3 ITS read: offset 0x100 data 0xf907000042590600 size 8",
        "gicv3_its_read GICv3 ITS read: offset 0x8 data 0x1ef71 size 8",
    ]
    n = len(queue) // 32
    for i, cmd in enumerate(stream):
        queue[(i % n) * 32 : (i % n) * 32 + 32] = cmd.encode()
        lines += trace_line(cmd, i % n)
    lines.append(f"gicv3_its_write GICv3 ITS write: offset 0x88 data {len(stream) * 32:#x} size 8")
    return bytes(queue), "\n".join(lines) + "\n"


def test_trace_fields_slots_and_quirks():
    _, text = stream_queue_and_trace()
    t = parse_trace(text)
    assert [c.name for c in t.commands] == [type(c).__name__ for c in STREAM]
    assert [c.slot for c in t.commands] == list(range(len(STREAM)))  # "offset" is an index
    mapd = t.commands[4]
    assert mapd.fields == {"DeviceID": 8, "Size": 1, "ITT_addr": 0x42738400, "V": 1}  # << 8 back
    assert t.commands[5].fields == {"DeviceID": 8, "EventID": 0, "ICID": 0, "pINTID": 8192}
    assert t.commands[1].fields == {}  # SYNC prints nothing
    assert t.cbaser == 0xB80000004258040F
    assert t.baser() == {0: 0xF907000042590600}
    assert t.baser_read() == {0: 0xF907000042590600}
    assert t.reads[0x8] == 0x1EF71


def test_trace_merges_32_bit_halves_and_counts_marker_reads():
    t = parse_trace(
        "gicv3_its_write GICv3 ITS write: offset 0x80 data 0x4258040f size 4\n"
        "gicv3_its_write GICv3 ITS write: offset 0x84 data 0xb8000000 size 4\n"
        "gicv3_its_read GICv3 ITS read: offset 0x4 data 0x43b size 4\n"
        + "\n".join(trace_line(SYNC(target=0), 0))
        + "\ngicv3_its_read GICv3 ITS read: offset 0x4 data 0x43b size 4\n"
    )
    assert t.writes[0x80] == 0xB80000004258040F
    assert t.marker_reads == [0, 1]


def test_a_malformed_trace_line_is_named():
    with pytest.raises(TraceError, match=r"its\.log:2: gicv3_its_process_command without"):
        parse_trace("unrelated line\ngicv3_its_process_command GICv3 ITS: garbage\n", "its.log")
    with pytest.raises(TraceError, match=r"x:1: gicv3_its_cmd_sync with no gicv3_its_process"):
        parse_trace("gicv3_its_cmd_sync GICv3 ITS: command SYNC\n", "x")


def test_geometry_from_cbaser():
    g = geometry(0xB80000004258040F)
    assert (g.base, g.size, g.valid, g.slots) == (0x42580000, 16 * 4096, True, 2048)


def test_cross_check_agrees_on_every_field():
    queue, text = stream_queue_and_trace()
    check = cross_check(queue, parse_trace(text))
    assert check.ok and check.compared == len(STREAM)
    # opcode + printed fields: MAPC 3, SYNC 0, INVALL 0, MAPD 4, MAPTI 4, INV 2, MOVI 3, ...
    assert check.fields == len(STREAM) + 3 + 0 + 0 + 0 + 4 + 4 + 0 + 4 + 0 + 2 + 3 + 2 + 4
    assert check.stale_slots == [] and check.trace_only == 0
    order = commands_in_order(queue, parse_trace(text))
    assert [dw for _, dw in order] == [slots(c.encode())[0] for c in STREAM]


@pytest.mark.parametrize(
    ("index", "dword", "bit", "field"),
    [
        (4, 2, 8, "ITT_addr"),  # MAPD ITT address bit 8
        (4, 1, 0, "Size"),
        (5, 1, 32, "pINTID"),
        (5, 0, 32, "DeviceID"),
        (0, 2, 16, "RDbase"),
        (10, 2, 0, "ICID"),
        (12, 2, 63, "V"),
        (3, 0, 0, "command"),  # SYNC 0x05 -> 0x04 (CLEAR)
    ],
)
def test_a_changed_byte_is_a_mismatch_naming_the_field(index, dword, bit, field):
    queue, text = stream_queue_and_trace()
    raw = bytearray(queue)
    off = index * 32 + dword * 8 + bit // 8
    raw[off] ^= 1 << (bit % 8)
    check = cross_check(bytes(raw), parse_trace(text))
    assert [m.field for m in check.mismatches] == [field]
    m = check.mismatches[0]
    assert m.seq == index and m.slot == index
    assert f"command #{index} (slot {index}): {field}: trace" in m.describe()


def test_a_field_missing_from_the_trace_is_a_mismatch():
    queue, text = stream_queue_and_trace()
    text = text.replace(" pINTID 0x2000", "")
    check = cross_check(queue, parse_trace(text))
    assert [(m.seq, m.field, m.trace, m.raw) for m in check.mismatches] == [
        (5, "pINTID", None, 0x2000)
    ]


def test_stale_slots_and_a_wrapped_queue():
    queue, text = stream_queue_and_trace()
    raw = bytearray(queue)
    raw[100 * 32] = 0x05  # a SYNC QEMU never processed
    assert cross_check(bytes(raw), parse_trace(text)).stale_slots == [100]
    # 1-page queue (128 slots), 130 commands: the first two are overwritten
    stream = [MAPTI(device_id=8, event_id=i, intid=8192 + i, icid=i % 2) for i in range(130)]
    queue, text = stream_queue_and_trace(stream, queue_pages=1)
    t = parse_trace(text)
    check = cross_check(queue, t)
    assert check.ok and check.trace_only == 2 and check.compared == 128
    order = commands_in_order(queue, t)
    assert [decode_fields(dw)[1]["EventID"] for _, dw in order] == list(range(2, 130))


def test_real_debian_73_boot_queue_and_trace_agree():
    t = read_trace(DATA / "linux-7.3.4.its.trace")
    hexes = (DATA / "linux-7.3.4.queue.hex").read_text().split()
    queue = b"".join(bytes.fromhex(h) for h in hexes).ljust(geometry(t.cbaser).size, b"\0")
    check = cross_check(queue, t)
    assert check.ok, [m.describe() for m in check.mismatches]
    assert (check.compared, check.fields, check.stale_slots) == (68, 168, [])
    names = [decode_fields(dw)[0] for _, dw in commands_in_order(queue, t)]
    assert names[:8] == ["MAPC", "SYNC", "INVALL", "SYNC"] * 2  # per CPU
    assert [names.count(n) for n in ("MAPD", "MAPTI", "INV", "DISCARD")] == [4, 11, 14, 3]
    assert t.cbaser == 0xB800000043A0040F
    assert t.baser() == {0: 0xF907000043A10600, 1: 0xBC07000043A20600} | dict.fromkeys(
        range(2, 8), 0
    )
    mapd = [c.fields for c in t.commands if c.name == "MAPD"]
    assert [m["DeviceID"] for m in mapd] == [0x10, 0x8, 0x18, 0x20]
    assert {m["ITT_addr"] & ~0xFFF for m in mapd} == {0x453FA000}  # one itt_pool page
    # and one flipped bit in the real queue is found
    raw = bytearray(queue)
    raw[8 * 32 + 16 + 1] ^= 0x10  # the first MAPD's ITT_addr, bit 12
    assert [m.field for m in cross_check(bytes(raw), t).mismatches] == ["ITT_addr"]
