"""iommu-gated-its maps every page of the ITS memory the guest sets up, whatever its
shape: the flat device table spans 512 KiB (65,536 DTEs of 8 bytes), so a DeviceID of
0x200 or more has its DTE past the first page (gap 8 of issue 12)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.its import regs as r
from sim.memory.physmem import PAGE_SHIFT
from sim.run import simulate
from tests.sim.test_audit import POOL, scenario


def flat(scen, two_level: bool = False):
    return scen.model_copy(
        update={"guest": scen.guest.model_copy(update={"two_level_device_table": two_level})}
    )


def _devices(ids: list[int]) -> list[dict]:
    return [
        {"name": f"dev{i}", "device_id": dev, "vectors": 3, "rate_hz": 500}
        for i, dev in enumerate(ids)
    ]


@pytest.mark.parametrize("device_id", [0x1FF, 0x200, 0x3FFF, 0xFFFF])
def test_a_flat_device_table_is_mapped_whole_and_migrates(device_id):
    world = simulate(flat(scenario(POOL, devices=_devices([device_id]))), "iommu-gated-its")
    assert world.its_errors == []
    c = world.correctness
    assert c.expected == 3 and c.ok_after == 3
    assert sum(len(m.memory.faults) for m in world.machines.values()) == 0
    guest = world.guest
    table = range(
        guest.device_table >> PAGE_SHIFT, (guest.device_table + (1 << 16) * 8) >> PAGE_SHIFT
    )
    for machine in world.machines.values():
        assert set(table) <= set(machine.lowvisor.its_dma_pages()), machine.name
    dte = guest.device_table + device_id * 8
    assert world.dst.memory.peek(dte, 8)[7] >> 7 == 1  # the saved DTE is valid


def test_a_two_level_device_table_maps_its_level_1_page_only():
    """Two-level: the L1 table is one 64 KiB page of L1 entries; each L2 table is mapped
    when the driver allocates it (on_table_alloc)."""
    world = simulate(flat(scenario(POOL), two_level=True), "iommu-gated-its")
    assert world.its_errors == []
    guest = world.guest
    mapped = set(world.src.lowvisor.its_dma_pages())
    l1 = range(guest.device_table >> PAGE_SHIFT, (guest.device_table + r.SZ_64K) >> PAGE_SHIFT)
    assert set(l1) <= mapped
    for l2 in guest.l2_pages.values():
        assert set(range(l2 >> PAGE_SHIFT, (l2 + r.SZ_64K) >> PAGE_SHIFT)) <= mapped


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=3, unique=True),
    two_level=st.booleans(),
)
def test_iommu_gated_its_keeps_every_translation_whatever_the_device_ids(ids, two_level):
    world = simulate(flat(scenario(POOL, devices=_devices(ids)), two_level), "iommu-gated-its")
    assert world.its_errors == []
    assert world.correctness.ok_after == world.correctness.expected == 3 * len(ids)
