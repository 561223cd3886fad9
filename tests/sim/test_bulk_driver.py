"""The ``guest.its_driver: bulk`` profile: batched commands, and vectors past the VM's LPIs.

The bulk driver is synthetic (not Linux): it fills the command queue before each CWRITER
write, and with more vectors than the 57,344 LPIs of 16 INTID bits it maps the surplus
onto LPIs already in use (kernel 6.1's KVM refcounts them; 7.3 refuses, so those
scenarios select kernel 6.1) and moves an LPI's ITEs together.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from pydantic import ValidationError

from sim.actors.guest import NR_LPIS
from sim.actors.lowvisor import Lowvisor
from sim.its import regs as r
from sim.run import collect, simulate
from sim.scenario import ALL_PROPOSALS, Scenario, ScenarioError, load_scenario

VCPUS = 4
SMALL = [5, 64, 300]
QUEUE_SLOTS = r.SZ_64K // r.ITS_CMD_SIZE  # the guest's 64 KiB command queue


def scenario(
    vectors: list[int],
    driver: str,
    *,
    moves_per_s: float = 0.0,
    duration_ms: float = 3.0,
    migrate_ms: float = 1.0,
    seed: int = 1,
) -> Scenario:
    return Scenario.model_validate(
        {
            "name": f"bulk-{driver}-{sum(vectors)}",
            "question": "Does the bulk ITS driver leave KVM with the translations it meant?",
            "seed": seed,
            "guest": {"ram_mib": 4096, "vcpus": VCPUS, "its_driver": driver},
            # Surplus vectors share LPIs, which only 6.1's KVM accepts.
            **({"kernel": "6.1"} if sum(vectors) > NR_LPIS else {}),
            "devices": [
                {"name": f"dev{i}", "device_id": 8 * i, "vectors": n, "rate_hz": 1000.0}
                for i, n in enumerate(vectors)
            ],
            "workload": {"duration_ms": duration_ms, "affinity_moves_per_s": moves_per_s},
            "migration": {"at_ms": migrate_ms},
        }
    )


def assert_clean(result) -> None:
    k = result.correctness
    assert k.translations_preserved, k.mismatches
    assert k.ok_before_migration == k.expected_translations
    assert k.its_errors == []
    assert k.command_errors == {}
    assert k.resume_msis == k.resume_msis_delivered > 0


def assert_dst_agrees_with_guest(world) -> None:
    """Every (DeviceID, EventID) the guest believes in translates so on the destination."""
    its = world.dst.host.its
    expected = world.guest.expected_translations()
    got = {key: its.translate(*key) for key in expected}
    assert got == expected


def kvm_state_without_pending(its) -> tuple:
    """VirtualITS.state() less the pending bits (MSIs arrive at different times)."""
    devices, collections, lpis = its.state()
    return devices, collections, tuple(lpi[:4] for lpi in lpis)


@pytest.mark.parametrize("proposal", ALL_PROPOSALS)
def test_small_bulk_guest_migrates_cleanly_and_matches_linux(proposal: str) -> None:
    # With affinity moves: the moves happen between boot and the pause.
    moved = simulate(scenario(SMALL, "bulk", moves_per_s=2000.0), proposal)
    assert_clean(collect(moved))
    assert moved.correctness.expected == sum(SMALL)
    assert_dst_agrees_with_guest(moved)

    # Without: the bulk guest leaves KVM exactly where the Linux driver does.
    bulk = simulate(scenario(SMALL, "bulk"), proposal)
    linux = simulate(scenario(SMALL, "linux"), proposal)
    for world in (bulk, linux):
        assert_clean(collect(world))
        assert_dst_agrees_with_guest(world)
    expected = bulk.guest.expected_translations()
    assert expected == linux.guest.expected_translations()
    assert len(expected) == sum(SMALL)
    assert {intid for intid, _ in expected.values()} == set(range(8192, 8192 + sum(SMALL)))
    assert all(vcpu == intid % VCPUS for intid, vcpu in expected.values())
    for side in ("src", "dst"):
        b, lx = bulk.machines[side].host.its, linux.machines[side].host.its
        assert kvm_state_without_pending(b) == kvm_state_without_pending(lx), side
        assert b.mappings() == lx.mappings() == expected
    # Every LPI the bulk guest mapped is enabled with the default priority, as Linux's.
    lpis = bulk.dst.host.its.lpis
    assert len(lpis) == sum(SMALL)
    assert all(lpi.enabled and lpi.refcount == 1 for lpi in lpis.values())


def test_small_bulk_run_really_moves_vectors() -> None:
    """The moving run above is not vacuous: some LPI left its initial vCPU before the pause."""
    world = simulate(scenario(SMALL, "bulk", moves_per_s=2000.0), "trusted-host")
    src = world.src.host.its
    moved = [lpi for lpi in src.lpis.values() if lpi.target_vcpu != lpi.intid % VCPUS]
    assert moved
    assert world.correctness.ok_before == world.correctness.expected == sum(SMALL)


@pytest.fixture
def cwriter_traps(monkeypatch) -> Counter:
    """Guest GITS_CWRITER writes that trap, per machine."""
    traps: Counter = Counter()
    trap = Lowvisor.guest_mmio_trap

    def counting(self, offset: int, val: int):
        if offset == r.GITS_CWRITER:
            traps[self.machine.name] += 1
        return trap(self, offset, val)

    monkeypatch.setattr(Lowvisor, "guest_mmio_trap", counting)
    return traps


@pytest.mark.parametrize("proposal", ALL_PROPOSALS)
def test_bulk_driver_traps_on_cwriter_far_less_than_linux(cwriter_traps, proposal) -> None:
    probe = 1 + 2 * VCPUS  # CWRITER = 0, then MAPC + SYNC and INVALL + SYNC per vCPU
    counts, logs = {}, {}
    for driver in ("linux", "bulk"):
        cwriter_traps.clear()
        world = simulate(scenario(SMALL, driver), proposal)
        assert_clean(collect(world))
        counts[driver] = dict(cwriter_traps)
        logs[driver] = list(world.src.host.its.command_log)

    # linux: MAPD, then MAPTI + SYNC and INV + SYNC per vector, one CWRITER write each.
    assert counts["linux"] == {"src": probe + sum(1 + 2 * n for n in SMALL)}
    # bulk: MAPD, then one queue-full of MAPTIs, INVs and SYNCs per device.
    assert counts["bulk"] == {"src": probe + 2 * len(SMALL)}
    assert counts["linux"]["src"] >= 50 * counts["bulk"]["src"]

    # KVM ran each batch inside one CWRITER write: all its commands at one time.
    batches = {driver: len({rec.time for rec in log}) for driver, log in logs.items()}
    assert batches == {"linux": counts["linux"]["src"] - 1, "bulk": counts["bulk"]["src"] - 1}

    kinds = {d: Counter(type(rec.command).__name__ for rec in log) for d, log in logs.items()}
    n = sum(SMALL)
    assert kinds["linux"] == {
        "MAPC": VCPUS, "INVALL": VCPUS, "MAPD": 3, "MAPTI": n, "INV": n,
        "SYNC": 2 * VCPUS + 2 * n,
    }  # fmt: skip
    # bulk: one SYNC per target vCPU per device (every device here spans all 4 vCPUs)
    assert kinds["bulk"] == {
        "MAPC": VCPUS, "INVALL": VCPUS, "MAPD": 3, "MAPTI": n, "INV": n,
        "SYNC": 2 * VCPUS + 3 * VCPUS,
    }  # fmt: skip
    assert all(rec.error is None for log in logs.values() for rec in log)


def test_bulk_batches_split_at_the_queue_size(cwriter_traps) -> None:
    """2048 vectors: 2048 MAPTIs + 2048 INVs + 4 SYNCs = 4100 commands, 2047 per write."""
    world = simulate(scenario([2048], "bulk"), "trusted-host")
    assert_clean(collect(world))
    commands = 2 * 2048 + VCPUS
    per_write = QUEUE_SLOTS - 1
    assert cwriter_traps["src"] == 1 + 2 * VCPUS + 1 + -(-commands // per_write)
    log = list(world.src.host.its.command_log)
    sizes = sorted(Counter(rec.time for rec in log).values())
    assert sizes[-3:] == [commands - 2 * per_write, per_write, per_write]
    assert all(rec.error is None for rec in log)


def test_validator_caps_linux_at_57344_vectors_and_lets_bulk_past(tmp_path) -> None:
    full = [2048] * 28  # 57344: every LPI
    assert sum(full) == NR_LPIS == 57344
    scenario(full, "linux")  # exactly all the LPIs: fine
    for extra in ([1], [2048, 952]):
        with pytest.raises(ValidationError, match=r"57344") as exc:
            scenario(full + extra, "linux")
        assert "bulk" in str(exc.value)
        assert f"{sum(full + extra)} vectors" in str(exc.value)
        assert issubclass(exc.type, ValueError)
        bulk = scenario(full + extra, "bulk")
        assert bulk.guest.its_driver == "bulk"
        assert sum(d.vectors for d in bulk.devices) == sum(full + extra)

    # From a file, the error names the field.
    path = tmp_path / "too-many.yaml"
    devices = "\n".join(
        f"  - {{name: d{i}, device_id: {i}, vectors: {n}}}" for i, n in enumerate([*full, 1])
    )
    path.write_text(f"name: too-many\nquestion: q\ndevices:\n{devices}\n")
    with pytest.raises(ScenarioError, match=r"devices: 57345 vectors exceed the 57344 LPIs"):
        load_scenario(path)
    path.write_text(
        f"name: enough\nquestion: q\nguest: {{its_driver: bulk}}\ndevices:\n{devices}\n"
    )
    with pytest.raises(ScenarioError, match=r"only kernel 6.1 accepts.*expected kernel: '6.1'"):
        load_scenario(path)
    path.write_text(
        f"name: enough\nquestion: q\nkernel: '6.1'\nguest: {{its_driver: bulk}}\n"
        f"devices:\n{devices}\n"
    )
    assert load_scenario(path).guest.its_driver == "bulk"


def test_57344_plus_3000_vectors_share_lpis_and_migrate() -> None:
    """29 devices of 2048 vectors and one of 952: the last 3000 wrap onto INTIDs 8192...

    Boot takes about 60 ms of simulated time (118k commands), so migration is at 65 ms,
    with affinity moves in between (and on the destination after resume).
    """
    vectors = [2048] * 29 + [952]
    total = sum(vectors)
    assert total == 57344 + 3000
    world = simulate(
        scenario(vectors, "bulk", moves_per_s=20000.0, duration_ms=70.0, migrate_ms=65.0),
        "trusted-host",
    )
    result = collect(world)
    assert_clean(result)
    assert result.correctness.expected_translations == total

    shared = set(range(8192, 8192 + 3000))  # INTIDs that two ITEs map
    for side in ("src", "dst"):
        its = world.machines[side].host.its
        assert len(its.lpis) == 57344, side
        assert sorted(its.lpis) == list(range(8192, 1 << 16)), side
        refcounts = {intid: lpi.refcount for intid, lpi in its.lpis.items()}
        assert {i for i, n in refcounts.items() if n == 2} == shared, side
        assert Counter(refcounts.values()) == {1: 57344 - 3000, 2: 3000}, side
        assert all(lpi.enabled for lpi in its.lpis.values()), side

    # Some shared LPI moved before the pause (else the rest proves little).
    src = world.src.host.its
    moved_shared = [i for i in shared if src.lpis[i].target_vcpu != i % VCPUS]
    assert moved_shared

    # On both sides, the ITEs of one LPI sit in one collection, the LPI's vCPU
    # (a bulk guest MOVIs every ITE of an LPI), so a restore cannot split them.
    for side in ("src", "dst"):
        its = world.machines[side].host.its
        devices, _, _ = its.state()
        collections: dict[int, set[int]] = defaultdict(set)
        for _dev_id, _itt, _bits, ites in devices:
            for _ev, intid, icid in ites:
                collections[intid].add(icid)
        assert len(collections) == 57344
        assert all(icids == {its.lpis[i].target_vcpu} for i, icids in collections.items()), side

    # What the guest believes now (the destination took the moves after resume).
    expected = world.guest.expected_translations()
    assert len(expected) == total
    dst = world.dst.host.its
    by_intid: dict[int, set[tuple[int, int] | None]] = defaultdict(set)
    users: Counter = Counter()
    for (dev, ev), want in expected.items():
        got = dst.translate(dev, ev)
        assert got == want, (dev, ev)
        by_intid[want[0]].add(got)
        users[want[0]] += 1
    assert all(len(v) == 1 for v in by_intid.values())
    assert {i for i, n in users.items() if n == 2} == shared
    assert set(users.values()) == {1, 2}


def test_shared_lpis_survive_a_device_removed_and_added_back() -> None:
    """dev28 and dev29 map INTIDs 8192..11191 again: dev0's 2048 and 952 of dev1's.
    Removing dev0 leaves its LPIs mapped by dev28; adding it back maps them twice again
    at their current vCPUs; removing dev1 frees only the LPIs nobody else maps."""
    vectors = [2048] * 29 + [952]
    base = scenario(vectors, "bulk", moves_per_s=3000.0, duration_ms=90.0, migrate_ms=80.0)
    data = base.model_dump(mode="json")
    data["workload"]["churn"] = [
        {"at_ms": 66.0, "device": "dev0", "action": "remove"},
        {"at_ms": 70.0, "device": "dev0", "action": "add"},
        {"at_ms": 72.0, "device": "dev1", "action": "remove"},
    ]
    world = simulate(Scenario.model_validate(data), "trusted-host")
    assert_clean(collect(world))
    assert_dst_agrees_with_guest(world)
    assert world.guest.devices["dev0"].mapped and not world.guest.devices["dev1"].mapped
    for machine in (world.src, world.dst):
        lpis = machine.host.its.lpis
        freed = set(range(8192 + 2048 + 952, 8192 + 2 * 2048))  # dev1's, shared with no one
        assert set(lpis) == set(range(8192, 8192 + NR_LPIS)) - freed
        twice = {intid for intid, lpi in lpis.items() if lpi.refcount == 2}
        assert twice == set(range(8192, 8192 + 2048))
        assert all(lpi.refcount == 1 for intid, lpi in lpis.items() if intid not in twice)
