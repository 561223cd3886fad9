"""Real captures (``pytest -m oracle``): Debian's kernels under QEMU with four MSI-X devices.

Sets itself up like ``pkvm-sim capture`` (root and Debian's archive on the first run, the
user's cache afterwards). Deselected by default: a capture takes 20-60 s under TCG.
"""

from __future__ import annotations

import pytest

from sim.capture.format import load_capture
from sim.capture.qemu import device_mix, parse_spec
from sim.capture.run import CaptureOptions, run_capture
from sim.scenario import load_scenario

pytestmark = pytest.mark.oracle

MIX = device_mix(
    parse_spec("virtio-net", "6")
    + parse_spec("virtio-blk", "2")
    + parse_spec("virtio-rng", "2")
    + parse_spec("nvme", "1")
)


@pytest.mark.parametrize(
    ("kernel", "cache", "generation"),
    [("newest", "itt_pool", "7.3"), ("bookworm", "kmalloc-512", "6.1")],
)
def test_capture_of_four_devices(tmp_path, kernel, cache, generation):
    out = tmp_path / "guest.capture.json"
    result = run_capture(CaptureOptions(devices=MIX, out=out, kernel=kernel), print)
    cap = load_capture(out)  # what was written reads back
    assert cap.kernel.generation == generation
    assert result.check.ok and result.check.compared == len(cap.commands)
    assert [d.device_id for d in cap.devices] == [0x8, 0x10, 0x18, 0x20]
    assert [d.name for d in cap.devices] == ["virtio-net", "virtio-blk", "virtio-rng", "nvme"]
    names = [c.decoded["cmd"] for c in cap.commands]
    assert names[:8] == ["MAPC", "SYNC", "INVALL", "SYNC"] * 2  # per vCPU
    assert any(c.phase == "shutdown" for c in cap.commands)  # the GITS_IIDR marker was seen
    assert cap.registers.gits_cbaser >> 63 == 1
    assert {p.allocator.cache for p in cap.colocation} == {cache}
    itts = {t.addr for d in cap.devices for t in d.itts}
    assert itts <= {a for p in cap.colocation for a in p.itts}
    if generation == "6.1":  # kmalloc-512: 8 objects on each ITT's page
        assert all(len(p.objects) == 8 for p in cap.colocation)
        assert any(o.kind == "kernel" and o.symbols for p in cap.colocation for o in p.objects)
    else:  # one zeroed pool page holds every ITT
        assert len(cap.colocation) == 1 and len(cap.colocation[0].itts) == 4
    scen = load_scenario(result.scenario_path)
    assert scen.guest.its_driver == "replay" and len(scen.devices) == 4
