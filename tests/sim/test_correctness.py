"""ITS correctness as a result: failed commands, KVM's writes during the queue, honest runs.

KVM zeroes the ITE on DISCARD and the DTE on MAPD V=0 while it runs the queue (real
6.1.192 and 7.3.4 do). A failed command is skipped silently, so a fault there is only
visible if the result says so; each proposal says what its KVM does about those writes.
And a table that says "honest host" must come from runs with an honest host.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.cli import main
from sim.its.tables import ITE_ESZ
from sim.matrix import attack_matrix, audit_run, scenario_row, with_attack
from sim.memory.labels import LabelKind
from sim.memory.ownership import Transition
from sim.report.markdown import render
from sim.report.text import render_text
from sim.run import collect, run, simulate
from sim.scenario import (
    ALL_PROPOSALS,
    ReadEverything,
    Scenario,
    describe_behaviours,
    load_scenario,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"
CLEARS = "host claim: entry KVM clears in the queue"


def _after_migration_removal(allocator: str = "linux-kzalloc") -> Scenario:
    """A device removed on the destination: its ITEs are there in guest memory, written by
    the source's SAVE_TABLES, so a DISCARD that fails to clear one leaves it stale."""
    return Scenario.model_validate(
        {
            "name": "remove-after-migration",
            "question": "does DISCARD on the destination clear the saved ITE?",
            "seed": 5,
            "guest": {"ram_mib": 128, "vcpus": 2, "allocator": allocator},
            "devices": [
                {"name": "net0", "device_id": 8, "vectors": 3, "rate_hz": 500},
                {"name": "blk0", "device_id": 0x10, "vectors": 2, "rate_hz": 500},
            ],
            "workload": {
                "duration_ms": 12,
                "churn": [{"at_ms": 8, "device": "net0", "action": "remove"}],
            },
            "migration": {"at_ms": 4},
        }
    )


@pytest.mark.parametrize("name", ["device-churn-reuse", "kzalloc-dense-secrets"])
def test_no_its_command_fails_in_an_honest_run_of_a_churning_guest(name):
    """Once 20 and 5 -EFAULTs (KVM's DISCARD write on an ITT page the host cannot reach)
    under userspace-serialization and share-host-claims, reported as "kept: yes"."""
    scenario = with_attack(load_scenario(SCENARIOS / f"{name}.yaml"), None)
    for proposal in ALL_PROPOSALS:
        c = run(scenario, proposal).correctness
        assert c.command_errors == {} and c.command_failures == [], (proposal, c)
        assert c.kvm_faults == 0 and c.stage2_faults == 0, proposal
        assert c.its_correct, proposal


@pytest.mark.parametrize(
    "proposal", [p for p in ALL_PROPOSALS if p not in ("userspace-serialization", "itt-ubuf")]
)
def test_discard_on_the_destination_clears_the_saved_ite_in_guest_memory(proposal):
    world = simulate(_after_migration_removal(), proposal)
    dst = world.dst
    net0 = world.guest.devices["net0"]
    ites = dst.memory.read(dst.lowvisor.fixmap, net0.itt_addr, 3 * ITE_ESZ)
    assert ites == bytes(3 * ITE_ESZ)  # zeroed by DISCARD, not stale
    blk0 = world.guest.devices["blk0"]  # the ITEs the save wrote are really there
    assert dst.memory.read(dst.lowvisor.fixmap, blk0.itt_addr, 8) != bytes(8)
    assert collect(world).correctness.its_correct


def test_itt_ubuf_leaves_every_itt_in_guest_memory_untouched_and_keeps_translations():
    """The ITEs went to the VMM buffer and DISCARD has none in guest memory to clear."""
    world = simulate(_after_migration_removal(), "itt-ubuf")
    dst = world.dst
    for name in ("net0", "blk0"):
        dev = world.guest.devices[name]
        assert dst.memory.read(dst.lowvisor.fixmap, dev.itt_addr, 3 * ITE_ESZ) == bytes(3 * ITE_ESZ)
    result = collect(world).correctness
    assert result.its_correct and not result.command_errors


def test_share_host_claims_shares_an_itt_page_only_while_kvm_clears_its_ite():
    world = simulate(_after_migration_removal(), "share-host-claims")
    history = world.dst.memory.ownership.history
    claims = [c for c in history if c.cause == CLEARS]
    itt_page = world.guest.devices["net0"].itt_addr >> 12
    assert {c.first_pfn for c in claims} == {itt_page}
    assert len(claims) == 3  # one DISCARD + SYNC per vector, one claim each
    for claim in claims:
        i = history.index(claim)
        release = history[i + 1]
        assert (release.transition, release.first_pfn) == (
            Transition.GUEST_UNSHARE_HOST,
            itt_page,
        )
        assert release.cause == "host claim released"
        assert 0 < release.time - claim.time < 20  # us: the hypercall and the queue run
    # The cost is shown: co-located secrets on the kzalloc'd ITT's page were exposed.
    labels = world.dst.memory.labels
    page = itt_page << 12
    if any(lab.kind is LabelKind.SECRET for _, _, lab in labels.runs(page, 4096)):
        assert collect(world).exposure.exposed_byte_ms > 0


def test_userspace_serialization_kvm_writes_no_its_entry_to_guest_memory():
    world = simulate(_after_migration_removal(), "userspace-serialization")
    for machine in world.machines.values():
        kvm = machine.host.its.kvm.who.name
        tables = {LabelKind.ITT, LabelKind.DEVICE_TABLE, LabelKind.DEVICE_TABLE_L2}
        for rec in machine.memory.log:
            if rec.actor == kvm and rec.write:
                kinds = machine.memory.labels.kinds(rec.addr, rec.length)
                assert not tables & set(kinds), rec
    assert collect(world).correctness.its_correct


def test_a_failed_command_is_shown_in_the_report_the_summary_and_the_audit(capsys):
    scenario = load_scenario(SCENARIOS / "small-vm.yaml")
    forged = with_attack(scenario, "forge-queued-mapd")
    result = run(forged, "share-enlightened-guest")
    c = result.correctness
    assert c.command_errors and not c.its_correct  # a real failure, from a real attack
    assert "MOVI: E_ITS_MOVI_UNMAPPED_INTERRUPT" in c.command_failures[0]
    report = render([forged], [result], [], None)
    error = next(iter(c.command_errors))
    assert f"**{error} x{c.command_errors[error]}" in report
    assert "**NO** (" in report
    assert c.command_failures[0] in report
    assert "Host: `forge-queued-mapd`." in report
    summary = render_text([forged], [result], {})
    row = next(line for line in summary.splitlines() if "share-enlightened-guest" in line)
    assert row.split()[-2:] == [str(sum(c.command_errors.values()) + len(c.its_errors)), "NO"]
    assert "host: forge-queued-mapd" in summary
    # The audit names a run whose ITS failed and fails with it.
    argv = ["audit", str(SCENARIOS / "small-vm.yaml"), "--proposal", "userspace-serialization"]
    assert main([*argv, "--attack", "tamper-state"]) == 1
    out = capsys.readouterr().out
    assert "ITS failures in 1 run (host: tamper-state)" in out
    assert "translations BROKEN" in out
    argv = ["audit", str(SCENARIOS / "small-vm.yaml"), "--proposal", "iommu-gated-its"]
    assert main(argv) == 0  # small-vm's honest host under an IOMMU: nothing to report
    assert "ITS failures" not in capsys.readouterr().out


def test_composed_behaviours_with_parameters_name_one_matrix_row():
    scenario = load_scenario(SCENARIOS / "malicious-host.yaml")
    own = scenario_row(scenario)
    name = "read-everything(period_ms=2) + write-outside-entries + delay-commands(delay_ms=1)"
    assert describe_behaviours(own) == name
    cells, runs = attack_matrix(scenario, ["share-host-claims"], ["delay-commands", own])
    assert [c.attack for c in cells] == ["delay-commands", name]
    assert [" + ".join(r.behaviours) for r in runs] == ["honest", "delay-commands", name]
    # The composed host is run as composed: its reads and writes are the attack's.
    composed = runs[2]
    assert composed.summary.did_read_bytes > 0 and composed.summary.corrupted_bytes > 0
    assert cells[1].outcome == "succeeded"
    # The baseline is honest, whatever the scenario's file says.
    base = runs[0].summary
    assert base.its_correct and (base.did_read_bytes, base.corrupted_bytes) == (0, 0)
    assert scenario_row(load_scenario(SCENARIOS / "small-vm.yaml")) is None
    # Different parameters, different rows: a name never rounds a parameter away.
    specs = [ReadEverything(kind="read-everything", period_ms=p) for p in (1.0000001, 1.0)]
    assert [describe_behaviours([s]) for s in specs] == [
        "read-everything(period_ms=1.0000001)",
        "read-everything",  # the default
    ]
    single = with_attack(scenario, "its-dma")  # one attack with its defaults: a plain row
    assert scenario_row(single) is None
    assert audit_run(with_attack(scenario, None), "share-host-claims").behaviours == ["honest"]


def test_audit_takes_a_composed_row_with_parameters(capsys):
    path = str(SCENARIOS / "small-vm.yaml")
    row = "read-everything:period_ms=3+delay-commands:delay_ms=0.5"
    argv = ["audit", path, "--proposal", "share-cmdq-snoop", "--attack", row]
    assert main(argv) in (0, 1)
    out = capsys.readouterr().out
    assert "host: read-everything(period_ms=3) + delay-commands(delay_ms=0.5)" in out
    with pytest.raises(SystemExit) as exc:
        main(["audit", path, "--attack", "read-everything:period_ms=-1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--attack" in err and "period_ms" in err and "greater than 0" in err


def test_compare_tables_run_an_honest_host_and_the_scenarios_own_host_is_a_matrix_row(
    tmp_path,
):
    path = SCENARIOS / "malicious-host.yaml"
    assert (
        main(["compare", str(path), "--out", str(tmp_path), "--name", "m", "--cost-samples", "0"])
        == 0
    )
    out = tmp_path / "m"
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())["results"]
    assert {r["host"] for r in results} == {"honest"}
    # The honest baseline keeps the ITS working under every proposal...
    assert all(r["correctness"]["its_correct"] for r in results)
    assert "Host: `honest`." in report and "**NO**" not in report.split("Host behaviours")[0]
    # ...and the attack's damage is the composed row's, in the matrix.
    name = "read-everything(period_ms=2) + write-outside-entries + delay-commands(delay_ms=1)"
    assert f"| `{name}` |" in report
    matrix = json.loads((out / "matrix.json").read_text())["malicious-host"]
    assert {c["attack"] for c in matrix} >= {name, "read-everything"}
    summary = (out / "summary.txt").read_text()
    assert "host: honest" in summary


def test_a_held_queue_runs_up_to_the_last_cwriter_not_round_the_ring():
    """keep-stale-share holds every CWRITER write behind a MAPD V=0; the held runs once
    replayed their own, older CWRITER after a newer one had run, sending KVM round the
    whole 64 KiB ring (1,918 -ENODEV on zeroed slots). And a run held past the VM's
    departure does not run: the vITS went with the VM."""
    scenario = with_attack(
        load_scenario(SCENARIOS / "kzalloc-dense-secrets.yaml"), "keep-stale-share"
    )
    for proposal in ("userspace-serialization", "share-cmdq-snoop"):
        world = simulate(scenario, proposal)
        c = collect(world).correctness
        assert c.command_errors == {}, (proposal, c.command_failures[:3])
        assert world.src.host.vm_destroyed and not world.dst.host.vm_destroyed
        history = world.src.memory.ownership.history
        teardown = min(ch.time for ch in history if ch.cause == "teardown")
        assert all(rec.time <= teardown for rec in world.src.host.its.command_log)
        # Every command the guest queued on the destination ran, each once, in order.
        dst = world.dst.host.its
        assert dst.creadr == dst.cwriter == world.dst.host.cwriter_written
