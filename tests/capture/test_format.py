"""The capture file format: round trip, the bundled files, and every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.capture.convert import RECORDINGS, convert
from sim.capture.format import (
    FORMAT,
    CaptureError,
    bundled_captures,
    dump_capture,
    load_capture,
    parse_capture,
    resolve_capture,
    write_capture,
)
from sim.its.commands import MAPD, decode


def _text(name: str = "linux-6.1.192") -> str:
    return bundled_captures()[name].read_text()


def test_bundled_files_are_what_the_converter_makes():
    assert set(bundled_captures()) == set(RECORDINGS)
    for name, path in bundled_captures().items():
        assert path.read_text() == dump_capture(convert(name)), name


def test_bundled_61_stream_and_registers():
    cap = load_capture(bundled_captures()["linux-6.1.192"])
    assert cap.format == FORMAT and cap.kernel.generation == "6.1"
    assert len(cap.commands) == 79 and cap.guest.vcpus == 2
    assert cap.registers.gits_cbaser == 0xB80000004258040F
    # The raw bytes are the queue's: index 8 is the first MAPD, DeviceID 8, Size 1.
    assert decode(cap.commands[8].encode()) == MAPD(8, 1, 0x42738400, True)
    assert [c.index for c in cap.commands if c.phase == "shutdown"] == list(range(66, 79))
    nvme = cap.device(0x20)
    assert [(t.addr, t.size) for t in nvme.itts] == [(0x4272BE00, 0), (0x42C56E00, 1)]


def test_round_trip(tmp_path: Path):
    cap = load_capture(bundled_captures()["linux-7.3.4"])
    out = tmp_path / "x.capture.json"
    write_capture(cap, out)
    assert load_capture(out) == cap
    assert [p.name for p in tmp_path.iterdir()] == ["x.capture.json"]


def _bad(text: str) -> str:
    with pytest.raises(CaptureError) as exc:
        parse_capture(text, "bad.capture.json")
    return str(exc.value)


def test_not_json_names_the_line():
    lines = _text().splitlines()
    lines[13] = lines[13].replace('"raw": [', '"raw": [[', 1)
    msg = _bad("\n".join(lines))
    assert msg.startswith("bad.capture.json:14: ") and "not valid JSON" in msg


def test_unknown_format_version():
    msg = _bad(_text().replace(FORMAT, "pkvm-sim-capture/9", 1))
    assert msg == (
        "bad.capture.json:2: format: expected one of 'pkvm-sim-capture/1', got 'pkvm-sim-capture/9'"
    )


def test_field_out_of_range_names_record_line_and_field():
    lines = _text().splitlines()
    row = json.loads(lines[20].rstrip(","))
    assert row["index"] == 7
    row["raw"][2] = "1" * 17
    lines[20] = "  " + json.dumps(row) + ","
    msg = _bad("\n".join(lines))
    assert msg.startswith("bad.capture.json:21: commands[7].raw[2]: expected up to 16 hex digits")


def test_device_id_out_of_range():
    text = _text().replace('"device_id": "0x8"', '"device_id": "0x100000000"', 1)
    msg = _bad(text)
    assert msg.startswith("bad.capture.json:8: devices[0].device_id: Input should be less than")


def test_mapd_of_an_unlisted_itt_is_refused():
    text = _text().replace('"addr": "0x42738400"', '"addr": "0x42738500"', 1)
    msg = _bad(text)
    assert msg.startswith("bad.capture.json:")
    assert (
        "commands[8].raw: MAPD DeviceID 0x8 ITT 0x42738400 Size 1 is not in devices[].itts" in msg
    )


def test_decoded_name_must_match_raw_opcode():
    text = _text().replace('"decoded": {"cmd": "MAPC"', '"decoded": {"cmd": "MAPD"', 1)
    msg = _bad(text)
    assert msg.startswith("bad.capture.json:14: commands[0].decoded.cmd: expected 'MAPC'")


def test_unknown_opcode():
    text = _text().replace('"0000000000000009"', '"0000000000000042"', 1)
    assert "commands[0].raw: unknown ITS command number 0x42" in _bad(text)


def test_missing_file_and_resolution(tmp_path: Path):
    with pytest.raises(CaptureError, match="cannot read"):
        load_capture(tmp_path / "none.capture.json")
    assert resolve_capture("linux-7.3.4") == bundled_captures()["linux-7.3.4"]
    with pytest.raises(CaptureError, match="no such capture file"):
        resolve_capture("nope.capture.json", tmp_path)
