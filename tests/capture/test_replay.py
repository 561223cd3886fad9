"""Replay guests: the captured stream, placement and co-location, under every proposal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.capture.format import bundled_captures, load_capture
from sim.its.commands import MAPD, decode
from sim.memory.labels import LabelKind
from sim.run import run, simulate
from sim.scenario import ALL_PROPOSALS, load_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
REAL = {"6.1": "linux-6.1.192", "7.3": "linux-7.3.4"}


def _scenario(gen: str, **guest):
    scenario = load_scenario(SCENARIOS / f"real-guest-{gen}.yaml")
    if guest:
        scenario = scenario.model_copy(update={"guest": scenario.guest.model_copy(update=guest)})
    return scenario


@pytest.mark.parametrize("gen", ["6.1", "7.3"])
def test_the_queue_holds_the_captured_bytes_in_order(gen):
    world = simulate(_scenario(gen), "share-cmdq-snoop")
    cap = load_capture(bundled_captures()[REAL[gen]])
    guest = world.guest
    assert guest.replayed == len(cap.commands) and guest.place.delta == 0
    # The destination's queue (the guest migrated, then powered off there): the boot
    # commands at their captured indexes, then the workload's MOVI + SYNC pairs, then the
    # captured shutdown, ending at CWRITER, which KVM's CREADR reached.
    boot = b"".join(c.encode() for c in cap.commands if c.phase == "boot")
    down = b"".join(c.encode() for c in cap.commands if c.phase == "shutdown")
    queue = world.dst.memory.peek(guest.cmdq, guest.cwriter)
    assert queue.startswith(boot) and queue.endswith(down)
    moves = queue[len(boot) : len(queue) - len(down)]
    assert moves and {moves[i] for i in range(0, len(moves), 32)} == {0x01, 0x05}
    assert world.dst.host.its.creadr == guest.cwriter


@pytest.mark.parametrize("gen", ["6.1", "7.3"])
@pytest.mark.parametrize("proposal", ALL_PROPOSALS)
def test_every_proposal_keeps_the_real_guests_translations(gen, proposal):
    result = run(_scenario(gen), proposal)
    c = result.correctness
    assert c.expected_translations == 11  # 3 + 3 + 2 + 3 events mapped at the pause
    assert c.ok_after_migration == 11 and c.its_correct, c
    assert c.command_errors == {}  # the shutdown after migration found what it unmaps


def test_61_itts_sit_in_the_captured_kmalloc_objects_with_their_neighbours():
    world = simulate(_scenario("6.1", colocated_as="secret"), "share-host-claims")
    labels = world.guest.machine.memory.labels
    cap = load_capture(bundled_captures()["linux-6.1.192"])
    page = next(p for p in cap.colocation if p.page == 0x42738000)
    kinds = [labels.at(o.addr).kind for o in page.objects]
    # Every other live object on the page is guest data, secret as the scenario says;
    # the ITT is 256 bytes of the 512-byte kzalloc object (the rest is slack).
    assert kinds.count(LabelKind.SECRET) == 7 and kinds.count(LabelKind.ITT) == 1
    assert labels.at(0x42738500).kind is LabelKind.KERNEL
    assert "irq descriptor" in labels.at(0x4273F400).name
    # The host claimed the ITT pages: it could read the captured neighbours.
    result = run(_scenario("6.1", colocated_as="secret", secret_density=0.0), "share-host-claims")
    assert result.exposure.exposed_secrets > 0
    quiet = run(
        _scenario("6.1", colocated_as="kernel-data", secret_density=0.0), "share-host-claims"
    )
    assert quiet.exposure.exposed_secrets == 0


def test_73_pool_page_is_shared_by_the_driver_and_holds_only_itts():
    world = simulate(_scenario("7.3", colocated_as="secret"), "share-enlightened-guest")
    pfn = 0x4453B000 >> 12
    assert pfn in world.guest.driver_shared
    runs = [
        (s, e, lab.kind) for s, e, lab in world.guest.machine.memory.labels.runs(0x4453B000, 0x1000)
    ]
    assert [k for _, _, k in runs] == [LabelKind.ITT] * 4 + [LabelKind.FREE]
    assert runs[3][:2] == (0x4453B300, 0x4453B700)  # nvme: 128 events, 1 KiB, first fit


def test_a_capture_outside_the_scenarios_ram_is_moved_by_one_constant():
    scenario = _scenario("7.3", ram_mib=64)  # the capture's tables sit at 0x43a00000..
    world = simulate(scenario, "share-cmdq-snoop")
    guest = world.guest
    delta = guest.place.delta
    assert delta == 0x4100_0000 - 0x43A0_0000
    assert guest.cmdq == 0x43A00000 + delta
    itts = {d.device_id: d.itt_addr for d in world.dst.host.its.devices.values()}
    assert itts[0x8] == 0x4453B000 + delta
    # The MAPD in the queue carries the moved address.
    raw = world.dst.memory.peek(guest.cmdq + 8 * 32, 32)
    assert decode(raw) == MAPD(0x8, 2, 0x4453B000 + delta, True)
    assert run(scenario, "share-cmdq-snoop").correctness.its_correct


def test_replay_is_deterministic():
    a = run(_scenario("6.1"), "share-host-claims")
    b = run(_scenario("6.1"), "share-host-claims")
    assert a.model_dump_json() == b.model_dump_json()


def test_replaying_the_models_own_stream_changes_no_cost(tmp_path: Path):
    """Capture the modelled linux driver's queue, replay it: with the shared pool (no
    co-location to add) every cost and the correctness are the model's, under every
    proposal: the replay changes the driver and nothing else."""
    import yaml

    from sim.capture.format import write_capture
    from sim.capture.from_model import capture_of_world
    from sim.scenario import Scenario

    devices = [
        {"name": f"d{i}", "device_id": 8 * (i + 1), "vectors": 8, "rate_hz": 500} for i in range(4)
    ]
    fields = {
        "name": "own-stream",
        "question": "does a replay change anything but the driver?",
        "guest": {"ram_mib": 256, "vcpus": 4, "allocator": "linux-shared-pool"},
        "devices": devices,
        "workload": {"duration_ms": 12},
        "migration": {"at_ms": 6},
    }
    model = Scenario.model_validate(fields)
    write_capture(capture_of_world(simulate(model, "trusted-host")), tmp_path / "own.capture.json")
    fields["guest"] = {**fields["guest"], "its_driver": "replay", "capture": "own.capture.json"}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(fields))
    replay = load_scenario(tmp_path / "own.yaml")
    for proposal in ALL_PROPOSALS:
        a, b = run(replay, proposal), run(model, proposal)
        assert a.costs == b.costs, proposal
        assert a.correctness == b.correctness, proposal


def test_a_bundled_capture_keeps_its_name_so_provenance_is_machine_independent():
    from sim.provenance import provenance

    root = Path(__file__).resolve().parents[2]
    scenario = load_scenario(root / "scenarios" / "real-guest-6.1.yaml")
    assert scenario.guest.capture == "linux-6.1.192"
    assert str(root) not in json.dumps(provenance([scenario])["scenarios"])
    assert run(scenario, "trusted-host").correctness.its_correct  # it still plays
