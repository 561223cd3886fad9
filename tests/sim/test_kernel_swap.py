"""hibernate-resume and kexec: KVM keeps the old DTEs, a later SAVE_TABLES writes ITEs
into memory the running kernel uses, and the audit catches it byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.actors.kernel_swap import stale_itts
from sim.its.commands import MAPD
from sim.its.tables import ITE
from sim.report.kernel_events import distinct_bytes
from sim.run import collect, simulate
from sim.scenario import HostSpec, KernelEvent, load_scenario
from tests.sim.test_valid_scenarios import EXAMPLES, valid_scenarios

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def scenario(name: str, kernel: str | None = None, **event):
    s = load_scenario(SCENARIOS / f"{name}.yaml")
    events = [e.model_copy(update=event) for e in s.workload.events]
    s = s.model_copy(update={"workload": s.workload.model_copy(update={"events": events})})
    return s.model_copy(update={"kernel": kernel}) if kernel else s


def without_events(s):
    return s.model_copy(update={"workload": s.workload.model_copy(update={"events": []})})


def written(world):
    return [v for v in world.auditor.all() if v.kind == "integrity"]


def test_hibernate_resume_save_tables_writes_the_boot_kernels_ites_over_resumed_data():
    s = scenario("hibernate-resume")
    world = simulate(s, "trusted-host")
    [event] = world.kernel_events
    assert event["stale_devices"] == ["0x8"]  # virtio-net0 moved its ITT before hibernating
    its = world.src.host.its
    stale = its.devices[0x08]
    assert stale.itt_addr != world.guest.devices["virtio-net0"].itt_addr
    # The resumed kernel sent no MAPD: the only ones the reset vITS ran are the boot kernel's.
    log = its.command_log
    mapds = [log._record(i).command for i in range(len(log))]
    assert [c.device_id for c in mapds if isinstance(c, MAPD)] == [0x08, 0x10]
    # SAVE_TABLES wrote the boot kernel's three ITEs, byte for byte, over a secret the
    # resumed kernel keeps in its old ITT's kmalloc slot.
    [v] = written(world)
    assert (v.addr, v.length, v.actor) == (stale.itt_addr, 24, "src.kvm-vits")
    assert v.victim.startswith("secret:") and "kmalloc-512@" in v.victim, v.victim
    assert v.victim.endswith("(reused)")
    for ev in range(3):
        raw = world.src.memory.peek(stale.itt_addr + 8 * ev, 8)
        entry = ITE.decode(int.from_bytes(raw, "little"))
        assert (entry.next, entry.intid, entry.icid) == (1 if ev < 2 else 0, 8192 + ev, ev % 2)
    # Without the event nothing of the guest's is written.
    assert written(simulate(without_events(s), "trusted-host")) == []


@pytest.mark.parametrize(
    ("proposal", "bytes_written", "writer"),
    [
        ("trusted-host", 24, "src.kvm-vits"),
        ("share-host-claims", 24, "src.kvm-vits"),
        ("share-enlightened-guest", 24, "src.kvm-vits"),
        ("share-cmdq-snoop", 24, "src.kvm-vits"),
        ("userspace-serialization", 0, None),
        ("iommu-gated-its", 24, "src.its-hw"),
    ],
)
def test_hibernate_resume_corrupts_under_every_proposal_keeping_tables_in_guest_memory(
    proposal, bytes_written, writer
):
    world = simulate(scenario("hibernate-resume"), proposal)
    found = written(world)
    assert sum(v.length for v in found) == bytes_written
    assert {v.actor for v in found} == ({writer} if writer else set())
    result = collect(world)
    assert result.correctness.translations_preserved  # the boot kernel's LPIs match here


def test_userspace_serialization_carries_the_stale_dte_in_its_blob():
    world = simulate(scenario("hibernate-resume"), "userspace-serialization")
    src_itt = world.guest.devices["virtio-net0"].itt_addr
    assert world.dst.host.its.devices[0x08].itt_addr != src_itt  # the boot kernel's ITT


def test_moved_tables_7_3_frees_every_dte_and_6_1_keeps_them_at_the_boot_kernels_itts():
    new = simulate(scenario("hibernate-resume", "7.3", tables="moved"), "trusted-host")
    assert new.kernel_events[0]["stale_devices"] == []
    assert new.src.host.its.devices == {}
    assert collect(new).correctness.ok_before_migration == 0  # the resumed kernel's LPIs died
    assert written(new) == []
    old = simulate(scenario("hibernate-resume", "6.1", tables="moved"), "trusted-host")
    assert old.kernel_events[0]["stale_devices"] == ["0x8", "0x10"]
    found = written(old)
    itts = [v for v in found if "resumed kernel's data over a stale ITT" in v.victim]
    assert sum(v.length for v in itts) == 40  # 3 + 2 ITEs, written by SAVE_TABLES
    # The redistributors still point at the boot kernel's pending tables: the pending
    # bytes of INTID 8192 and 8193 (vCPU 0 and 1) are written on both machines.
    pend = [v for v in found if v not in itts]
    assert all("over a stale pending table of vcpu" in v.victim for v in pend)
    tables = old.kernel_events[0]["stale_pending_tables"]
    assert distinct_bytes(pend) == 4
    assert {v.addr for v in pend} == {tables[0][0] + 8192 // 8, tables[1][0] + 8192 // 8}


def test_kexec_keeps_the_dte_of_the_device_the_new_kernel_does_not_map():
    world = simulate(scenario("kexec"), "trusted-host")
    [(dev, addr, size)] = stale_itts(world.guest)  # at the end, as the event found it
    assert world.kernel_events[0]["stale_devices"] == ["0x10"]
    assert (dev, size) == (0x10, 16)
    [v] = written(world)
    assert (v.addr, v.length) == (addr, 16)
    assert v.victim.startswith("kernel-data:kexec: new kernel's data over a stale ITT of dev0x10")
    assert collect(world).correctness.its_correct


def test_kexec_stale_dte_takes_the_new_kernels_lpis_on_7_3_not_on_6_1():
    s = scenario("kexec", remap=["virtio-blk0"])
    r73 = collect(simulate(s, "trusted-host"))
    assert r73.correctness.command_errors == {"-EEXIST": 2, "E_ITS_INV_UNMAPPED_INTERRUPT": 2}
    assert r73.correctness.ok_before_migration == 0
    r61 = collect(simulate(s.model_copy(update={"kernel": "6.1"}), "trusted-host"))
    assert r61.correctness.command_errors == {}
    assert r61.correctness.ok_after_migration == r61.correctness.expected_translations == 2


def test_kexec_with_moved_tables_7_3_frees_the_stale_dte_6_1_does_not():
    new = simulate(scenario("kexec", "7.3", tables="moved"), "trusted-host")
    assert new.kernel_events[0]["stale_devices"] == [] and written(new) == []
    old = simulate(scenario("kexec", "6.1", tables="moved"), "trusted-host")
    assert old.kernel_events[0]["stale_devices"] == ["0x10"]
    assert sum(v.length for v in written(old)) == 16  # virtio-blk0's 2 ITEs


def test_kernel_events_are_deterministic():
    s = scenario("hibernate-resume", "6.1", tables="moved")
    first = simulate(s, "share-cmdq-snoop")
    again = simulate(s, "share-cmdq-snoop")
    assert collect(first) == collect(again)
    assert first.kernel_events == again.kernel_events
    assert first.auditor.all() == again.auditor.all()


@st.composite
def with_kernel_event(draw):
    s = draw(valid_scenarios())
    honest = s.model_copy(update={"host": HostSpec()})
    at = draw(st.floats(0.0, max(0.0, s.migration.at_ms - 0.01)))
    names = [d.name for d in s.devices]
    event = KernelEvent(
        at_ms=at,
        action=draw(st.sampled_from(["hibernate-resume", "kexec"])),
        remap=draw(st.one_of(st.none(), st.lists(st.sampled_from(names), unique=True))),
        tables=draw(st.sampled_from(["same-address", "moved"])),
        moved_mib=draw(st.sampled_from([1, 16, s.guest.ram_mib // 2])),
    )
    workload = honest.workload.model_copy(update={"events": [event]})
    kernel = draw(st.sampled_from(["6.1", "7.3"]))
    return honest.model_copy(update={"workload": workload, "kernel": kernel})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=with_kernel_event())
def test_with_an_honest_host_every_guest_byte_written_lies_in_a_stale_itt(s):
    """Whatever the scenario, the kernel event is the only way an honest host's KVM
    writes guest data: every such byte is inside an ITT KVM kept for a device, or a
    pending table it kept for a redistributor."""
    if s.guest.its_driver == "bulk" and s.kernel != "6.1":
        s = s.model_copy(update={"kernel": "6.1"})  # a bulk guest may need 6.1's LPIs
    for proposal in ("trusted-host", "share-cmdq-snoop", "iommu-gated-its"):
        world = simulate(s, proposal)
        ranges = [
            r for e in world.kernel_events for r in e["stale_ranges"] + e["stale_pending_tables"]
        ]
        for v in written(world):
            assert any(a <= v.addr and v.addr + v.length <= a + n for a, n in ranges), v


def test_a_stale_dte_outside_the_new_kernels_zeroed_level1_table_fails_6_1s_save():
    """A kexec'd kernel that maps nothing allocates no level-2 page: its level-1 table is
    zeroed (__GFP_ZERO), so vgic_its_check_id() rejects the stale device; 6.1's save
    fails with -EINVAL, 7.3's skips it, and no guest byte is written either way."""
    s = scenario("kexec", "6.1", remap=[])
    old = simulate(s, "trusted-host")
    assert old.kernel_events[0]["stale_devices"] == ["0x8", "0x10"]
    assert collect(old).correctness.its_errors == ["src SAVE_TABLES: -EINVAL"]
    assert written(old) == []
    new = simulate(s.model_copy(update={"kernel": "7.3"}), "trusted-host")
    assert collect(new).correctness.its_errors == [] and written(new) == []


def test_a_churn_that_waits_out_a_kexec_acts_on_the_new_kernels_devices():
    """A device removal queued behind a kexec (it waits for the vCPUs the kexec holds)
    looks its device up in the kernel that then runs. The kexec'd kernel here maps no
    device, so the removal sends nothing; acting on the old kernel's mapped device, it
    sent DISCARD and MAPD V=0 for a device the new kernel never mapped and drove the
    LPI's user count to -1."""
    from sim.its.commands import DISCARD
    from sim.scenario import Scenario

    s = Scenario.model_validate(
        {
            "name": "churn-behind-kexec",
            "question": "Whose device does a queued removal remove?",
            "guest": {"ram_mib": 64, "vcpus": 1, "allocator": "linux-kzalloc"},
            "devices": [
                {"name": "dev0", "device_id": 0, "vectors": 1, "rate_hz": 0.0},
                {"name": "dev1", "device_id": 1, "vectors": 100, "rate_hz": 0.0},
            ],
            "workload": {
                "duration_ms": 4.0,
                "affinity_moves_per_s": 0.0,
                "churn": [{"at_ms": 2.0, "device": "dev0", "action": "remove"}],
                "events": [{"at_ms": 0.0, "action": "kexec", "remap": []}],
            },
            "migration": {"at_ms": 1.0},
            "kernel": "6.1",
        }
    )
    world = simulate(s, "share-cmdq-snoop")
    sent = [
        r.command for r in world.dst.host.its.command_log if isinstance(r.command, DISCARD | MAPD)
    ]
    assert sent == []
    assert not world.guest.devices["dev0"].mapped
    assert min(world.guest.lpi_users) == 0
