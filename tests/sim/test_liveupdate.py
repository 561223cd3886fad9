"""migration.mode: live-update: the host kernel replaced under N VMs on one machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.liveupdate import PhaseCost
from sim.report import liveupdate as report
from sim.run import collect, simulate
from sim.scenario import ALL_PROPOSALS, HostSpec, load_scenario
from tests.sim.test_valid_scenarios import EXAMPLES, valid_scenarios

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "live-update.yaml"


def test_phase_bounds_waves_of_cpus_and_the_serialised_part_one_vm_at_a_time():
    cost = PhaseCost(wall_us=10.0, serial_us=4.0, hypercalls=0, page_transitions=0, tlbis=0)
    assert cost.bounds(1, 16) == (10.0, 10.0)
    assert cost.bounds(16, 16) == (64.0, 70.0)  # the lock, not the CPUs, bounds 16 VMs
    assert cost.bounds(64, 16) == (256.0, 4 * 6.0 + 256.0)
    free = PhaseCost(wall_us=10.0, serial_us=0.0, hypercalls=0, page_transitions=0, tlbis=0)
    assert free.bounds(33, 16) == (30.0, 30.0)


@pytest.fixture(scope="module")
def worlds():
    s = load_scenario(SCENARIO)
    return {p: simulate(s, p) for p in s.proposals}


def test_live_update_runs_on_one_machine_and_keeps_every_translation(worlds):
    for proposal, world in worlds.items():
        assert list(world.machines) == ["src"] and world.dst is world.src
        result = collect(world)
        assert result.correctness.its_correct, proposal
        assert result.correctness.resume_msis_delivered == result.correctness.resume_msis == 4
        assert result.costs.stream_bytes == 0  # nothing crosses a network


def test_its_downtime_is_the_n_vm_upper_bound(worlds):
    for world in worlds.values():
        cost = world.live_update_cost
        assert cost.vms == 64 and cost.host_cpus == 16
        its_ms = collect(world).costs.its_downtime_ms
        assert its_ms == pytest.approx(cost.blackout_us()[1] / 1000, abs=1e-6)


def test_only_host_claims_change_page_states_and_grow_with_n(worlds):
    claims = worlds["share-host-claims"].live_update_cost
    # 4 pages claimed and released at save, again at restore; a TLBI per release.
    assert (claims.save.page_transitions, claims.restore.page_transitions) == (8, 8)
    assert (claims.save.hypercalls, claims.save.tlbis) == (8, 4)
    costs = load_scenario(SCENARIO).costs
    assert claims.save.serial_us == pytest.approx(8 * costs.s2_update_us + 4 * costs.tlbi_us)
    for proposal, world in worlds.items():
        if proposal == "share-host-claims":
            continue
        c = world.live_update_cost
        assert c.save.serial_us == c.restore.serial_us == 0.0, proposal
        assert c.save.hypercalls + c.restore.hypercalls == 0, proposal
        if proposal not in ("userspace-serialization", "itt-ubuf"):  # today's guest-memory ABI
            assert c.blackout_us(256) == worlds["trusted-host"].live_update_cost.blackout_us(256)
        # no page-state cost: 256 VMs take 16 waves of the 16 CPUs
        assert c.blackout_us(256)[1] == pytest.approx(16 * c.blackout_us(1)[1])
    # The ITTs out of guest memory save part of the ABI's cost, the whole blob more.
    blackout = {p: w.live_update_cost.blackout_us(256)[1] for p, w in worlds.items()}
    assert blackout["userspace-serialization"] < blackout["itt-ubuf"] < blackout["trusted-host"]
    assert (
        claims.blackout_us(256)[1] > 8 * worlds["trusted-host"].live_update_cost.blackout_us(256)[1]
    )


def test_iommu_domain_is_not_rebuilt_across_a_live_update(worlds):
    world = worlds["iommu-gated-its"]
    assert world.ledger.iommu_maps == len(world.src.lowvisor.its_dma_pages())


def test_the_new_host_kernel_has_a_fresh_vits_restored_from_the_save(worlds):
    world = worlds["userspace-serialization"]
    its = world.src.host.its
    assert sorted(its.devices) == sorted(d.spec.device_id for d in world.guest.devices.values())
    assert not world.src.host.vm_destroyed
    log = its.command_log  # the new kernel's vITS ran nothing from before the update
    assert len(log) > 0 and min(log._record(i).time for i in range(len(log))) >= 20_000.0


def test_report_section_and_chart(tmp_path, worlds):
    s = load_scenario(SCENARIO)
    lines, charts = report.write([s], tmp_path)
    assert [c.name for c in charts] == ["liveupdate-live-update.png"]
    assert charts[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(lines)
    for proposal in s.proposals:
        assert f"| `{proposal}` |" in text
    assert "Only `share-host-claims` changes page states" in text


@st.composite
def live_updates(draw):
    s = draw(valid_scenarios())
    migration = s.migration.model_copy(
        update={
            "mode": "live-update",
            "vms": draw(st.sampled_from([1, 7, 256])),
            "host_cpus": draw(st.sampled_from([1, 16])),
        }
    )
    return s.model_copy(update={"migration": migration, "host": HostSpec()})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=live_updates())
def test_every_drawn_live_update_keeps_the_its_and_scales_as_its_bounds_say(s):
    for proposal in ALL_PROPOSALS:
        world = simulate(s, proposal)
        result = collect(world)
        c = result.correctness
        assert c.its_correct, (proposal, c.its_errors, c.command_failures, c.mismatches)
        assert c.kvm_faults == 0, proposal
        cost = world.live_update_cost
        low, high = cost.blackout_us()
        assert low <= high
        assert result.costs.its_downtime_ms == pytest.approx(high / 1000, abs=1e-6)
        assert cost.blackout_us(1)[1] <= high
