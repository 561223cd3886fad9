"""Guests at the edges of the schema run (issue 15.1): the VMM's buffer lies outside guest
RAM however large the RAM is."""

from pathlib import Path

import pytest

from sim.run import collect, simulate
from sim.scenario import load_scenario
from sim.world import RAM_BASE

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


@pytest.mark.parametrize("ram_mib", [1024, 130_049, 131_072, 1 << 20])
def test_userspace_serialization_buffer_is_host_memory_past_guest_ram(ram_mib):
    base = load_scenario(SCENARIOS / "small-vm.yaml")
    guest = base.guest.model_copy(update={"ram_mib": ram_mib})
    scenario = base.model_copy(update={"guest": guest})
    world = simulate(scenario, "userspace-serialization")
    result = collect(world)
    assert result.correctness.its_correct
    assert result.correctness.stage2_faults == 0
    ram_end = RAM_BASE + (ram_mib << 20)
    vmm = [
        rec
        for m in world.machines.values()
        for rec in m.memory.log
        if rec.actor.endswith("host.vmm")
    ]
    # The blob was written on both machines and read back on the destination, all of it
    # past the guest's RAM, in memory the host owns.
    assert {rec.write for rec in vmm} == {True, False}
    assert all(rec.allowed and rec.addr >= ram_end for rec in vmm)


@pytest.mark.parametrize("proposal", ["share-cmdq-shadow", "itt-ubuf"])
def test_host_buffers_of_the_upstream_designs_lie_past_a_1_tib_guest(proposal):
    """EL2's queue and KVM's ring (shadow), the ITT buffer (itt-ubuf): no fixed address
    inside guest RAM, so the largest guest the schema allows runs clean."""
    from sim.proposals.share_cmdq_shadow import el2_cmdq_base, kvm_ring_base

    base = load_scenario(SCENARIOS / "small-vm.yaml")
    guest = base.guest.model_copy(update={"ram_mib": 1 << 20})
    world = simulate(base.model_copy(update={"guest": guest}), proposal)
    result = collect(world)
    assert result.correctness.its_correct and result.correctness.stage2_faults == 0
    assert not result.correctness.its_errors
    ram_end = RAM_BASE + (1 << 40)
    assert min(el2_cmdq_base(world.src), kvm_ring_base(world.src)) >= ram_end
