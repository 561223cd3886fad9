"""Every valid scenario runs to a result, under every proposal.

Hypothesis draws scenarios the schema accepts (small RAM, few devices, short runs, any
allocator, device-table shape, host behaviours composed with their parameters) and runs
each under all six proposals; a crash anywhere is a bug, and so is an honest host's run
whose ITS does not work (a failed command, a SAVE/RESTORE error, a lost translation).
The fixed regressions below are scenarios that once crashed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.actors.alloc import slub_order
from sim.memory.labels import LabelKind
from sim.memory.ownership import HOST, PageState
from sim.memory.physmem import PAGE_SIZE
from sim.run import collect, simulate
from sim.scenario import ALL_PROPOSALS, Scenario

# What each host behaviour may be given, within the schema's bounds and a short run.
BEHAVIOUR_PARAMS = {
    "secret-page-as-itt": {"pages": st.integers(1, 4)},
    "oversized-itt": {"factor": st.sampled_from([2, 16, 1024])},
    "read-everything": {"period_ms": st.sampled_from([0.5, 2.0, 7.0])},
    "write-outside-entries": {"pattern": st.integers(0, 255)},
    "keep-stale-share": {"hold_ms": st.sampled_from([0.5, 3.0, 1200.0])},
    "delay-commands": {"delay_ms": st.sampled_from([0.1, 2.0, 1100.0])},
    "replay-stale-mapd": {},
    "its-dma": {"at_ms": st.floats(0.0, 12.0)},
    "tamper-state": {},
    "redirect-pending-table": {},
    "forge-queued-mapd": {"reaction_us": st.sampled_from([0.0, 0.2, 50.0])},
}


@st.composite
def behaviour(draw) -> dict:
    kind = draw(st.sampled_from(sorted(BEHAVIOUR_PARAMS)))
    params = {k: draw(v) for k, v in BEHAVIOUR_PARAMS[kind].items() if draw(st.booleans())}
    return {"kind": kind, **params}


def possible_churn(events) -> list[dict]:
    """(at_ms, device) in time order, each removing the device if it is up, else adding it
    back: churn the guest can do (sim/scenario.py refuses any other)."""
    up: dict[str, bool] = {}
    churn = []
    for at_ms, device in sorted(events):
        action = "remove" if up.get(device, True) else "add"
        up[device] = action == "add"
        churn.append({"at_ms": at_ms, "device": device, "action": action})
    return churn


@st.composite
def valid_scenarios(draw) -> Scenario:
    n = draw(st.integers(1, 3))
    ids = draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n, unique=True))
    devices = [
        {
            "name": f"dev{i}",
            "device_id": dev_id,
            # across every kmalloc class an ITT can land in, and kmalloc_large
            "vectors": draw(st.sampled_from([1, 2, 5, 33, 100, 257, 300, 512, 700, 1500])),
            "rate_hz": draw(st.sampled_from([0.0, 500.0, 3000.0])),
        }
        for i, dev_id in enumerate(ids)
    ]
    duration = draw(st.sampled_from([4.0, 12.0, 25.0]))
    churn = possible_churn(
        (draw(st.floats(0.0, duration, exclude_max=True)), draw(st.sampled_from(devices))["name"])
        for _ in range(draw(st.integers(0, 4)))
    )
    behaviours = draw(st.lists(behaviour(), max_size=3)) if draw(st.booleans()) else []
    behaviours = behaviours or [{"kind": "honest"}]
    return Scenario.model_validate(
        {
            "name": "drawn",
            "question": "does every valid scenario run?",
            "seed": draw(st.integers(0, 2**16)),
            "guest": {
                "ram_mib": draw(st.sampled_from([64, 128])),
                "vcpus": draw(st.integers(1, 4)),
                "allocator": draw(st.sampled_from(["linux-kzalloc", "linux-shared-pool"])),
                "secret_density": draw(st.sampled_from([0.0, 0.5, 1.0])),
                "two_level_device_table": draw(st.booleans()),
                "its_driver": draw(st.sampled_from(["linux", "linux", "bulk"])),
            },
            "devices": devices,
            "workload": {
                "duration_ms": duration,
                "affinity_moves_per_s": draw(st.sampled_from([0.0, 300.0])),
                "churn": churn,
            },
            "migration": {"at_ms": draw(st.floats(0.5, duration - 0.5))},
            "host": {"behaviours": behaviours},
            "lowvisor": {"mediate_physical_its": draw(st.booleans())},
        }
    )


# A handful in CI; PKVM_SIM_VALID_EXAMPLES=300 for a longer hunt.
EXAMPLES = int(os.environ.get("PKVM_SIM_VALID_EXAMPLES", "6"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=valid_scenarios())
def test_every_valid_scenario_runs_to_a_result_under_every_proposal(scenario):
    honest = all(b.kind == "honest" for b in scenario.host.behaviours)
    for proposal in ALL_PROPOSALS:
        world = simulate(scenario, proposal)
        result = collect(world)
        c = result.correctness
        assert 0 <= c.ok_after_migration <= c.expected_translations
        assert result.exposure.peak_exposed_bytes <= result.exposure.secret_bytes
        if honest:  # an honest host keeps the ITS working under every proposal
            assert c.its_correct, (proposal, c.its_errors, c.command_failures, c.mismatches)
            assert c.kvm_faults == 0, proposal


def _scenario(**fields) -> Scenario:
    return Scenario.model_validate({"name": "regression", "question": "does it run?", **fields})


def test_slub_orders_match_a_real_guests_kmalloc_caches():
    # 4 KiB pages: kmalloc-512 is 8 KiB slabs of 16 on the 2-vCPU 6.1 guest
    # (shared/reference/real-software.md); -4k and -8k are order 3 (8 and 4 objects).
    assert [slub_order(size, 2) for size in (256, 512, 1024, 2048, 4096, 8192)] == [
        0, 1, 2, 3, 3, 3,
    ]  # fmt: skip
    assert slub_order(512, 1) == 0  # one CPU: min_objects 8


def test_a_kzalloc_itt_of_257_to_512_vectors_is_a_kmalloc_8k_object():
    """4096 + 255 bytes: kmalloc-8192, 4 objects per order-3 slab; once IndexError."""
    scen = _scenario(
        guest={"ram_mib": 128, "vcpus": 2, "allocator": "linux-kzalloc"},
        devices=[{"name": "nvme0", "device_id": 0x10, "vectors": 300, "rate_hz": 100}],
        workload={"duration_ms": 8, "churn": [{"at_ms": 5, "device": "nvme0", "action": "remove"}]},
        migration={"at_ms": 3},
    )
    for proposal in ALL_PROPOSALS:
        world = simulate(scen, proposal)
        result = collect(world)
        assert result.correctness.translations_preserved, proposal
        assert result.correctness.expected_translations == 300
        cache = world.guest.kmalloc[8192]
        assert (cache.order, cache.objects_per_slab) == (3, 4)
        slab = cache.slab_pages[0]
        assert slab % (PAGE_SIZE << 3) == 0  # naturally aligned
        # The ITT took the last object: pages 6 and 7 of the slab; its page is its own.
        obj, size = world.guest.devices["nvme0"].itt_object
        assert (obj, size) == (slab + 3 * 8192, 8192)
        labels = world.guest.machine.memory.labels
        kinds = {label.kind for _, _, label in labels.runs(slab, 6 * PAGE_SIZE)}
        assert kinds & {LabelKind.SECRET, LabelKind.KERNEL}  # the three neighbours
        # After removal the slot is someone else's object again (kfree, then reuse).
        assert all(lab.kind is not LabelKind.ITT for _, _, lab in labels.runs(obj, size))


def test_a_held_mapd_v0_run_on_the_source_during_the_import_does_not_crash_it():
    """keep-stale-share holds the queue with MAPD V=0 for 1.5 s; the guest times out after
    1 s and is migrated; the held run lands on the source while the destination re-shares
    the guest's pages. The import once iterated the source's live page states across its
    yields (OwnershipError); it copies the states as they were when it began."""
    scen = _scenario(
        seed=3,
        guest={"ram_mib": 128, "vcpus": 2, "allocator": "linux-kzalloc"},
        devices=[
            {"name": "a", "device_id": 8, "vectors": 4, "rate_hz": 100},
            {"name": "b", "device_id": 9, "vectors": 2, "rate_hz": 100},
        ],
        workload={"duration_ms": 1600, "churn": [{"at_ms": 2, "device": "a", "action": "remove"}]},
        migration={"at_ms": 1502},
        host={"behaviours": [{"kind": "keep-stale-share", "hold_ms": 1500}]},
    )
    world = simulate(scen, "share-cmdq-snoop")
    src, dst = world.src, world.dst
    released = [c for c in src.memory.ownership.history if c.cause == "snooped MAPD: ITT released"]
    imported = [c for c in dst.memory.ownership.history if c.cause.startswith("migration:")]
    assert released and imported
    # The held run ended the share on the source in the middle of the import...
    assert imported[0].time < released[0].time < imported[-1].time
    # ...and the destination shares exactly what the source shared when the import began.
    pfn = released[0].first_pfn
    assert pfn in {c.first_pfn for c in imported}
    assert dst.memory.ownership.state(HOST, pfn) is PageState.SHARED_BORROWED
    assert src.memory.ownership.state(HOST, pfn) is not PageState.SHARED_BORROWED
    assert collect(world).correctness.expected_translations == 2
